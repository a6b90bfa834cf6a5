//! eventstore.projection_catchup over real connections: G4 (never past an in-flight write),
//! G5 (commit = done, rollback = again), G6 (one worker at a time), G7 (position order), G10.

mod common;

use std::thread;

use common::{connect, db_error, pid, push_one, tenant, wait_until_blocked};
use postgres::Client;

/// One catch-up in its own transaction; returns the positions handed out.
fn catch_up(client: &mut Client, projection: &str, instance: Option<&str>, commit: bool) -> Vec<i64> {
    let mut tx = client.transaction().unwrap();
    let positions = tx
        .query("SELECT position FROM eventstore.projection_catchup($1, $2, 10000)", &[&projection, &instance])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    if commit { tx.commit().unwrap() } else { tx.rollback().unwrap() }
    positions
}

/// Whether catch-ups of this cluster wait for the writers in flight (horizon mode "barrier")
/// rather than answering at once below them ("floors", "registry").
fn barrier_waits(client: &mut Client) -> bool {
    client.query_one("SELECT eventstore.horizon_mode() = 'barrier'", &[]).unwrap().get(0)
}

/// A catch-up while `writer` is open: with the barrier, started in a thread, seen waiting, and
/// joined once `end_writer` ran; otherwise answered at once, with nothing of the tenant handed
/// out, and then a second catch-up after `end_writer`. Returns what the last catch-up handed out.
fn catch_up_around_an_open_writer(projection: &str, instance: Option<&str>, end_writer: impl FnOnce()) -> Vec<i64> {
    let mut worker = connect();
    if barrier_waits(&mut worker) {
        let mut observer = connect();
        let worker_pid = pid(&mut worker);
        let (projection, instance) = (projection.to_string(), instance.map(str::to_string));
        let handle = thread::spawn(move || catch_up(&mut worker, &projection, instance.as_deref(), true));
        wait_until_blocked(&mut observer, worker_pid);
        end_writer();
        return handle.join().unwrap();
    }
    let started = std::time::Instant::now();
    let at_once = catch_up(&mut worker, projection, instance, true);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "the catch-up answers without waiting");
    end_writer();
    let mut later = catch_up(&mut worker, projection, instance, true);
    later.splice(0..0, at_once);
    later
}

#[test]
fn an_in_flight_writers_event_is_never_skipped() {
    let t = tenant("inflight");
    let mut slow = connect();
    let mut fast = connect();

    let mut slow_tx = slow.transaction().unwrap();
    let (_, early) = push_one(&mut slow_tx, &t, "a", "drawn-first");
    let (_, late) = push_one(&mut fast, &t, "b", "committed-first");
    assert!(early < late);

    let got = catch_up_around_an_open_writer("inflight", Some(&t), || slow_tx.commit().unwrap());
    assert_eq!(got, vec![early, late], "the early event is handed out before the late one");
}

#[test]
fn a_rolled_back_in_flight_writer_leaves_no_hole_behind() {
    let t = tenant("inflight-rollback");
    let mut slow = connect();
    let mut fast = connect();
    let mut slow_tx = slow.transaction().unwrap();
    push_one(&mut slow_tx, &t, "a", "never");
    let (_, late) = push_one(&mut fast, &t, "b", "kept");

    let got = catch_up_around_an_open_writer("p", Some(&t), || slow_tx.rollback().unwrap());
    assert_eq!(got, vec![late]);
}

#[test]
fn a_busy_projection_returns_zero_rows_at_once() {
    let t = tenant("busy");
    let mut a = connect();
    let mut b = connect();
    push_one(&mut a, &t, "x", "e");
    let mut holder = a.transaction().unwrap();
    let first = holder.query("SELECT position FROM eventstore.projection_catchup('busy', $1)", &[&t]).unwrap();
    assert_eq!(first.len(), 1);
    let started = std::time::Instant::now();
    let second = b.query("SELECT position FROM eventstore.projection_catchup('busy', $1)", &[&t]).unwrap();
    assert!(second.is_empty(), "the second worker backs off");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "and does not wait");
    let free: bool = b.query_one("SELECT eventstore.lock_projection('busy', $1)", &[&t]).unwrap().get(0);
    assert!(!free);
    holder.commit().unwrap();
}

#[test]
fn a_waiting_worker_gets_the_next_batch_after_the_holder_commits() {
    let t = tenant("wait");
    let mut a = connect();
    let mut observer = connect();
    let (_, p1) = push_one(&mut a, &t, "x", "e1");
    let mut holder = a.transaction().unwrap();
    let first: Vec<i64> = holder
        .query("SELECT position FROM eventstore.projection_catchup('w', $1)", &[&t]).unwrap()
        .iter().map(|r| r.get(0)).collect();
    assert_eq!(first, vec![p1]);

    let mut pusher = connect();
    let (_, p2) = push_one(&mut pusher, &t, "x", "e2");
    let mut waiter = connect();
    let waiter_pid = pid(&mut waiter);
    let t2 = t.clone();
    let handle = thread::spawn(move || -> Vec<i64> {
        waiter.query("SELECT position FROM eventstore.projection_catchup('w', $1, wait => true)", &[&t2]).unwrap()
            .iter().map(|r| r.get(0)).collect()
    });
    wait_until_blocked(&mut observer, waiter_pid);
    holder.commit().unwrap();
    assert_eq!(handle.join().unwrap(), vec![p2], "the next batch, not the same one (G5)");
}

#[test]
fn rollback_redelivers_the_same_batch_and_commit_moves_on() {
    let t = tenant("redeliver");
    let mut c = connect();
    let pushed: Vec<i64> = (0..3).map(|i| push_one(&mut c, &t, "x", &format!("e{i}")).1).collect();
    assert_eq!(catch_up(&mut c, "r", Some(&t), false), pushed);
    assert_eq!(catch_up(&mut c, "r", Some(&t), false), pushed);
    assert_eq!(catch_up(&mut c, "r", Some(&t), true), pushed);
    assert_eq!(catch_up(&mut c, "r", Some(&t), true), Vec::<i64>::new());
}

#[test]
fn a_global_projection_is_held_back_by_writers_of_every_instance() {
    let (t1, t2) = (tenant("global-a"), tenant("global-b"));
    // A new global projection starts at position 0: bring it to the head first.
    let projection = tenant("global-projection");
    let mut drainer = connect();
    while !catch_up(&mut drainer, &projection, None, true).is_empty() {}
    let mut w1 = connect();
    let mut w2 = connect();
    let mut tx1 = w1.transaction().unwrap();
    let mut tx2 = w2.transaction().unwrap();
    let (_, p1) = push_one(&mut tx1, &t1, "x", "e");
    let (_, p2) = push_one(&mut tx2, &t2, "x", "e");

    let mut got = catch_up_around_an_open_writer(&projection, None, || {
        tx1.commit().unwrap();
        tx2.commit().unwrap();
    });
    // Other tests' writers may still hold the global horizon back for a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !(got.contains(&p1) && got.contains(&p2)) && std::time::Instant::now() < deadline {
        got.extend(catch_up(&mut drainer, &projection, None, true));
    }
    assert!(got.contains(&p1) && got.contains(&p2), "both instances' events: {got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in position order, each once: {got:?}");
}

#[test]
fn catchup_in_a_transaction_that_pushed_is_refused_rather_than_deadlocking() {
    let t = tenant("self");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    push_one(&mut tx, &t, "x", "e");
    let error = tx.query("SELECT * FROM eventstore.projection_catchup('self', $1)", &[&t]).unwrap_err();
    assert_eq!(db_error(&error).0, "55000");
}

#[test]
fn catchup_after_a_bulk_push_in_the_same_transaction_is_refused() {
    let t = tenant("self-bulk");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    tx.query("SELECT * FROM eventstore.push(ARRAY(SELECT eventstore.command($1, 'thing', i::text, 'e')
                                                   FROM generate_series(1, 100) i))", &[&t]).unwrap();
    let error = tx.query("SELECT * FROM eventstore.projection_catchup('self-bulk', $1)", &[&t]).map(|rows| rows.len()).unwrap_err();
    assert_eq!(db_error(&error).0, "55000", "its own uncommitted events are never handed out");
}

#[test]
fn waiting_for_a_projection_lock_in_a_writing_transaction_is_refused_rather_than_deadlocking() {
    // A catch-up holding the projection may be waiting for this transaction's writes (barrier
    // mode): waiting for its lock would close a cycle. Trying without waiting stays allowed.
    let t = tenant("self-lock");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    push_one(&mut tx, &t, "x", "e");
    let tried: bool = tx.query_one("SELECT eventstore.lock_projection('p', $1)", &[&t]).unwrap().get(0);
    assert!(tried);
    let error = tx.query("SELECT eventstore.lock_projection('p', $1, wait => true)", &[&t]).map(|rows| rows.len()).unwrap_err();
    assert_eq!(db_error(&error).0, "55000");
}

#[test]
fn repeatable_read_catchup_sees_events_committed_after_its_snapshot() {
    let t = tenant("rr");
    let mut c = connect();
    let mut other = connect();
    let mut tx = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.query_one("SELECT 1", &[]).unwrap(); // the transaction's snapshot is taken here
    let (_, p) = push_one(&mut other, &t, "x", "after-snapshot");
    let got: Vec<i64> = tx.query("SELECT position FROM eventstore.projection_catchup('rr', $1)", &[&t]).unwrap()
        .iter().map(|r| r.get(0)).collect();
    assert_eq!(got, vec![p]);
    tx.commit().unwrap();
}

#[test]
fn repeatable_read_catchup_is_refused_when_another_worker_moved_on_after_its_snapshot() {
    let t = tenant("rr-stale");
    let mut c = connect();
    let mut other = connect();
    push_one(&mut other, &t, "x", "e1");
    let mut tx = c.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start().unwrap();
    tx.query_one("SELECT 1", &[]).unwrap();
    catch_up(&mut other, "rr-stale", Some(&t), true); // moves the checkpoint after tx's snapshot
    push_one(&mut other, &t, "x", "e2");
    let error = tx.query("SELECT position FROM eventstore.projection_catchup('rr-stale', $1)", &[&t]).unwrap_err();
    assert_eq!(db_error(&error).0, "40001", "refused, not a stale batch");
}

/// Past position 2^32 a floor is two lock keys, the low and the high 32 bits of the writer's
/// first position, which a catch-up reads back as one position (src/horizon/floors.rs; the SQL
/// edition's push takes them in its lock statement). In a database of its own, so that its
/// positions can start just below 2^32 + 3: an event committed there (2^32 + 3), then a writer
/// held open (its floor and first position 2^32 + 4), then an event committed above it
/// (2^32 + 5). A catch-up hands out exactly the first: the whole floor, high half included,
/// holds back the last one (a floor read without its high half, 4, would hold back the first
/// too; one read too high would let the last one through). Once the writer commits, the other
/// two follow in order. Floors and the registry answer at once; the barrier waits for the
/// writer instead and keeps no floor, so this test has nothing to show there.
#[test]
fn a_writer_in_flight_past_position_2_to_the_32_holds_back_exactly_its_own_positions() {
    let mut admin = connect();
    let mode: String = admin.query_one("SELECT eventstore.horizon_mode()", &[]).unwrap().get(0);
    if mode == "barrier" {
        eprintln!("skipped: the barrier keeps no floors");
        return;
    }
    let database = tenant("floors_high").replace('-', "_");
    admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    let url = common::url().replace("dbname=eventstore", &format!("dbname={database}"));
    let open = || Client::connect(&url, postgres::NoTls).unwrap();
    let mut setup = open();
    if mode == "sql" {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/sql/plpgsql/eventstore.sql");
        setup.batch_execute(&std::fs::read_to_string(script).unwrap()).unwrap();
    } else {
        setup.batch_execute("CREATE EXTENSION eventstore").unwrap();
    }
    setup.batch_execute("SELECT setval('eventstore.position_seq', 4294967298)").unwrap();
    let t = tenant("high");
    let (_, below) = push_one(&mut setup, &t, "a", "committed-before");
    let mut slow = open();
    let slow_pid = pid(&mut slow);
    let mut slow_tx = slow.transaction().unwrap();
    let (_, held) = push_one(&mut slow_tx, &t, "b", "in-flight");
    let (_, above) = push_one(&mut setup, &t, "c", "committed-after");
    assert_eq!((below, held, above), (4294967299, 4294967300, 4294967301));
    if mode == "sql" {
        // The edition's floor keys (tests/regress/sql-edition/sql/locks.sql).
        let floors: Vec<(i64, i64)> = setup.query(
            "SELECT classid::bigint, objid::bigint FROM pg_locks
              WHERE locktype = 'advisory' AND objsubid = 2 AND pid = $1 ORDER BY 1",
            &[&slow_pid]).unwrap()
            .iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(floors, vec![(17671, 4), (17672, 1)], "the floor 2^32 + 4 as two keys");
    }

    let mut worker = open();
    assert_eq!(catch_up(&mut worker, "high", Some(&t), true), vec![below]);
    slow_tx.commit().unwrap();
    assert_eq!(catch_up(&mut worker, "high", Some(&t), true), vec![held, above]);
    drop((setup, slow, worker));
    admin.batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)")).unwrap();
}
