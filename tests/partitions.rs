//! Partitioned projections over real connections (G12): set_partitions, partition_catchup,
//! resizes, projection_status per partition; and every bad input refused with its SQLSTATE,
//! writing nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, db_error, pid, tenant, wait_until_blocked};
use postgres::{Client, GenericClient};

/// Pushes one event for each of `aggregates` (one push per aggregate); returns their positions.
fn push_each(client: &mut Client, instance: &str, aggregates: &[String], event: &str) -> Vec<i64> {
    aggregates.iter().map(|a| {
        client.query_one(
            "SELECT position FROM eventstore.push(ARRAY[eventstore.command($1, 'order', $2, $3)])",
            &[&instance, a, &event]).unwrap().get(0)
    }).collect()
}

fn aggregates(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("o{i}")).collect()
}

/// At least `n` aggregate ids, more when needed so that every one of `partitions` partitions
/// has one: the instance ids are random, so `aggregates(n)` alone may leave a partition empty.
fn aggregates_in_every_partition(client: &mut Client, instance: &str, n: usize, partitions: i32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut covered = BTreeSet::new();
    for i in 0.. {
        if ids.len() >= n && covered.len() == partitions as usize {
            break;
        }
        let id = format!("o{i}");
        covered.insert(partition_of(client, instance, &id, partitions));
        ids.push(id);
    }
    ids
}

/// One handed-out event: (partition, aggregate id, sequence, position).
type Handed = (i32, String, i64, i64);

/// One partition_catchup in the client's current transaction.
fn partition_batch(client: &mut impl GenericClient, projection: &str, instance: &str, batch: i32) -> Vec<Handed> {
    client.query(
        "SELECT partition, aggregate_id, sequence, position \
           FROM eventstore.partition_catchup($1, $2, $3)", &[&projection, &instance, &batch])
        .unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect()
}

/// Runs partition_catchup in committed transactions until it hands out nothing.
fn drain(client: &mut Client, projection: &str, instance: &str, batch: i32) -> Vec<Handed> {
    let mut all = Vec::new();
    loop {
        let mut tx = client.transaction().unwrap();
        let got = partition_batch(&mut tx, projection, instance, batch);
        tx.commit().unwrap();
        if got.is_empty() {
            // Every partition may have been tried from a different start: try once more.
            let mut tx = client.transaction().unwrap();
            let again = partition_batch(&mut tx, projection, instance, batch);
            tx.commit().unwrap();
            if again.is_empty() {
                return all;
            }
            all.extend(again);
            continue;
        }
        all.extend(got);
    }
}

fn set_partitions(client: &mut Client, projection: &str, instance: &str, n: i32) -> i64 {
    client.query_one("SELECT eventstore.set_partitions($1, $2, $3)", &[&projection, &instance, &n]).unwrap().get(0)
}

fn partition_of(client: &mut Client, instance: &str, aggregate: &str, n: i32) -> i32 {
    client.query_one("SELECT eventstore.partition_of($1, 'order', $2, $3)", &[&instance, &aggregate, &n])
        .unwrap().get(0)
}

/// Every event handed out exactly once, in sequence order per aggregate.
fn assert_exactly_once_in_order(handed: &[Handed], expected_positions: &BTreeSet<i64>) {
    let positions: Vec<i64> = handed.iter().map(|h| h.3).collect();
    let unique: BTreeSet<i64> = positions.iter().copied().collect();
    assert_eq!(unique.len(), positions.len(), "an event was handed out twice: {positions:?}");
    assert_eq!(&unique, expected_positions, "every event is handed out");
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, aggregate, sequence, _) in handed {
        let previous = last.insert(aggregate.as_str(), *sequence).unwrap_or(0);
        assert_eq!(*sequence, previous + 1, "aggregate {aggregate} out of order");
    }
}

#[test]
fn an_unpartitioned_projection_keeps_its_checkpoint_row_and_lock() {
    let t = tenant("plain");
    let mut client = connect();
    push_each(&mut client, &t, &aggregates(3), "placed");
    let mut tx = client.transaction().unwrap();
    assert_eq!(partition_batch(&mut tx, "plain", &t, 100).iter().map(|h| h.0).collect::<Vec<_>>(), vec![0, 0, 0]);
    // The lock partition_catchup took is lock_projection's.
    let mut other = connect();
    let free: bool = other.query_one("SELECT eventstore.lock_projection('plain', $1)", &[&t]).unwrap().get(0);
    assert!(!free, "partition 0's lock is the projection's lock");
    tx.commit().unwrap();
    let rows = client.query(
        "SELECT partition, checkpoint FROM eventstore.projection_states WHERE instance_id = $1", &[&t]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 0);
    // projection_catchup continues from the same checkpoint.
    let more = client.query("SELECT * FROM eventstore.projection_catchup('plain', $1)", &[&t]).unwrap();
    assert!(more.is_empty());
}

#[test]
fn every_event_lands_in_its_aggregates_partition_exactly_once_in_order() {
    let t = tenant("spread");
    let mut client = connect();
    assert_eq!(set_partitions(&mut client, "spread", &t, 4), 0, "a projection that never ran starts at 0");
    let ids = aggregates_in_every_partition(&mut client, &t, 20, 4);
    let mut expected = BTreeSet::new();
    for event in ["placed", "paid", "shipped"] {
        expected.extend(push_each(&mut client, &t, &ids, event));
    }
    let handed = drain(&mut client, "spread", &t, 7);
    assert_exactly_once_in_order(&handed, &expected);
    for (partition, aggregate, _, _) in &handed {
        assert_eq!(*partition, partition_of(&mut client, &t, aggregate, 4));
    }
    let used: BTreeSet<i32> = handed.iter().map(|h| h.0).collect();
    assert_eq!(used.len(), 4, "every partition has an aggregate");
}

#[test]
fn wait_for_events_on_a_partitioned_projection_waits_for_events_past_its_lowest_checkpoint() {
    let t = tenant("waitp");
    let mut client = connect();
    set_partitions(&mut client, "waitp", &t, 3);
    let wait = |client: &mut Client| -> bool {
        client.query_one("SELECT eventstore.wait_for_events('waitp', $1, 0)", &[&t]).unwrap().get(0)
    };
    assert!(!wait(&mut client), "nothing pushed: nothing to wait for");
    let expected: BTreeSet<i64> = push_each(&mut client, &t, &aggregates(6), "placed").into_iter().collect();
    assert!(wait(&mut client), "events past every partition's checkpoint");
    let handed = drain(&mut client, "waitp", &t, 100);
    assert_exactly_once_in_order(&handed, &expected);
    assert!(!wait(&mut client), "every partition caught up");
}

#[test]
fn two_workers_in_open_transactions_get_different_partitions() {
    let t = tenant("two");
    let mut a = connect();
    let mut b = connect();
    set_partitions(&mut a, "two", &t, 2);
    let ids = aggregates_in_every_partition(&mut a, &t, 10, 2);
    push_each(&mut a, &t, &ids, "placed");
    let mut tx_a = a.transaction().unwrap();
    let mut tx_b = b.transaction().unwrap();
    let got_a = partition_batch(&mut tx_a, "two", &t, 100);
    let got_b = partition_batch(&mut tx_b, "two", &t, 100);
    assert!(!got_a.is_empty() && !got_b.is_empty(), "both workers get a batch");
    let pa: BTreeSet<i32> = got_a.iter().map(|h| h.0).collect();
    let pb: BTreeSet<i32> = got_b.iter().map(|h| h.0).collect();
    assert_eq!(pa.len(), 1);
    assert_eq!(pb.len(), 1);
    assert_ne!(pa, pb, "never the same partition twice at once");
    // A third worker finds both busy: zero rows, at once.
    let mut c = connect();
    let started = Instant::now();
    assert!(partition_batch(&mut c, "two", &t, 100).is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    // projection_status names the holders.
    let held: Vec<(i32, Option<i32>)> = c.query(
        "SELECT partition, held_by FROM eventstore.projection_status WHERE instance_id = $1 ORDER BY partition",
        &[&t]).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    let (pid_a, pid_b) = (tx_a.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0),
                          tx_b.query_one("SELECT pg_backend_pid()", &[]).unwrap().get::<_, i32>(0));
    let holders: BTreeMap<i32, Option<i32>> = held.into_iter().collect();
    assert_eq!(holders[pa.iter().next().unwrap()], Some(pid_a));
    assert_eq!(holders[pb.iter().next().unwrap()], Some(pid_b));
    tx_a.commit().unwrap();
    tx_b.commit().unwrap();
    let after: Vec<Option<i32>> = c.query(
        "SELECT held_by FROM eventstore.projection_status WHERE instance_id = $1", &[&t])
        .unwrap().iter().map(|r| r.get(0)).collect();
    assert!(after.iter().all(Option::is_none), "free once committed");
}

#[test]
fn a_busy_partition_is_passed_over_and_wait_waits_for_it() {
    let t = tenant("busy");
    let mut a = connect();
    set_partitions(&mut a, "busy", &t, 3);
    // Only one partition has events: the one of aggregate "x".
    push_each(&mut a, &t, &["x".to_string()], "placed");
    let mut holder = a.transaction().unwrap();
    let first = partition_batch(&mut holder, "busy", &t, 100);
    assert_eq!(first.len(), 1);
    let mut b = connect();
    assert!(partition_batch(&mut b, "busy", &t, 100).is_empty(), "the holder's partition is passed over");
    // A second event for "x": still not handed to b while the holder runs.
    let mut writer = connect();
    push_each(&mut writer, &t, &["x".to_string()], "paid");
    assert!(partition_batch(&mut b, "busy", &t, 100).is_empty());
    holder.commit().unwrap();
    let second = partition_batch(&mut b, "busy", &t, 100);
    assert_eq!(second.iter().map(|h| h.2).collect::<Vec<_>>(), vec![2], "the next event, once");
}

#[test]
fn wait_true_waits_when_every_partition_is_busy() {
    let t = tenant("wait");
    let mut a = connect();
    // One partition: the holder blocks the only lock.
    push_each(&mut a, &t, &["x".to_string()], "placed");
    let mut holder = a.transaction().unwrap();
    assert_eq!(partition_batch(&mut holder, "wait", &t, 100).len(), 1);
    let mut b = connect();
    let b_pid = pid(&mut b);
    let t2 = t.clone();
    let waiter = thread::spawn(move || {
        b.query("SELECT position FROM eventstore.partition_catchup('wait', $1, 100, NULL, NULL, true)", &[&t2])
            .unwrap().len()
    });
    let mut observer = connect();
    wait_until_blocked(&mut observer, b_pid);
    holder.rollback().unwrap();
    assert_eq!(waiter.join().unwrap(), 1, "the waiter gets the batch the holder rolled back");
}

#[test]
fn projection_catchup_refuses_a_partitioned_projection() {
    let t = tenant("refuse");
    let mut client = connect();
    set_partitions(&mut client, "refuse", &t, 2);
    push_each(&mut client, &t, &aggregates(3), "placed");
    let err = client.query("SELECT * FROM eventstore.projection_catchup('refuse', $1)", &[&t]).unwrap_err();
    let (code, message, _) = db_error(&err);
    assert_eq!(code, "55000");
    assert!(message.contains("2 partitions"), "{message}");
    let moved: i64 = client.query_one(
        "SELECT count(*) FROM eventstore.projection_states WHERE instance_id = $1 AND checkpoint > 0", &[&t])
        .unwrap().get(0);
    assert_eq!(moved, 0, "no checkpoint moved");
}

#[test]
fn a_resize_hands_out_every_event_once_and_each_aggregate_in_order() {
    let t = tenant("resize");
    let mut client = connect();
    let ids = aggregates(12);
    let mut expected: BTreeSet<i64> = push_each(&mut client, &t, &ids, "placed").into_iter().collect();
    // Half of the old layout's events handed out, then the resize from 1 to 3.
    let mut handed = Vec::new();
    {
        let mut tx = client.transaction().unwrap();
        handed.extend(partition_batch(&mut tx, "resize", &t, 6));
        tx.commit().unwrap();
    }
    let resize_position = set_partitions(&mut client, "resize", &t, 3);
    assert!(resize_position >= *expected.iter().max().unwrap(), "the last position drawn (by any test)");
    expected.extend(push_each(&mut client, &t, &ids, "paid"));
    // The new partitions 1 and 2 hand out nothing while old partition 0 is below the resize
    // position: hold partition 0 so that only they can be tried.
    let mut holder = connect();
    let mut hold = holder.transaction().unwrap();
    let held: bool = hold.query_one("SELECT eventstore.lock_projection('resize', $1)", &[&t]).unwrap().get(0);
    assert!(held);
    let mut other = connect();
    for _ in 0..3 {
        assert!(partition_batch(&mut other, "resize", &t, 100).is_empty(), "new partitions wait for the old one");
    }
    hold.rollback().unwrap();
    handed.extend(drain(&mut client, "resize", &t, 5));
    assert_exactly_once_in_order(&handed, &expected);
    for (partition, aggregate, sequence, _) in &handed {
        // Events at or below the resize position belong to the old layout (1 partition), the
        // later ones to the new (3).
        let expected_partition = if *sequence == 1 { 0 } else { partition_of(&mut client, &t, aggregate, 3) };
        assert_eq!(*partition, expected_partition, "event {sequence} of {aggregate}");
    }
    let checkpoints: Vec<(i32, i64)> = client.query(
        "SELECT partition, checkpoint FROM eventstore.projection_states WHERE instance_id = $1 ORDER BY 1", &[&t])
        .unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(checkpoints.len(), 3);
}

#[test]
fn a_second_resize_before_the_first_drained_is_refused_and_writes_nothing() {
    let t = tenant("drain");
    let mut client = connect();
    push_each(&mut client, &t, &aggregates(4), "placed");
    client.query("SELECT * FROM eventstore.projection_catchup('drain', $1, 1)", &[&t]).unwrap();
    let resize_position = set_partitions(&mut client, "drain", &t, 2);
    assert!(resize_position > 0);
    let before: String = client.query_one(
        "SELECT string_agg(format('%s/%s', partition, checkpoint), ',' ORDER BY partition) \
           FROM eventstore.projection_states WHERE instance_id = $1", &[&t]).unwrap().get(0);
    let err = client.query("SELECT eventstore.set_partitions('drain', $1, 4)", &[&t]).unwrap_err();
    assert_eq!(db_error(&err).0, "55000");
    let definition: (i32, Option<i32>) = client.query_one(
        "SELECT partitions, resize_from FROM eventstore.projections WHERE instance_id = $1", &[&t])
        .map(|r| (r.get(0), r.get(1))).unwrap();
    assert_eq!(definition, (2, Some(1)));
    let after: String = client.query_one(
        "SELECT string_agg(format('%s/%s', partition, checkpoint), ',' ORDER BY partition) \
           FROM eventstore.projection_states WHERE instance_id = $1", &[&t]).unwrap().get(0);
    assert_eq!(before, after);
    // Drained: the next resize is accepted.
    drain(&mut client, "drain", &t, 100);
    set_partitions(&mut client, "drain", &t, 4);
}

#[test]
fn set_partitions_waits_for_a_running_batch() {
    let t = tenant("resize-waits");
    let mut a = connect();
    push_each(&mut a, &t, &aggregates(3), "placed");
    let mut worker = a.transaction().unwrap();
    assert_eq!(partition_batch(&mut worker, "rw", &t, 1).len(), 1);
    let mut b = connect();
    let b_pid = pid(&mut b);
    let t2 = t.clone();
    let resizer = thread::spawn(move || {
        b.query_one("SELECT eventstore.set_partitions('rw', $1, 2)", &[&t2]).unwrap().get::<_, i64>(0)
    });
    let mut observer = connect();
    wait_until_blocked(&mut observer, b_pid);
    worker.commit().unwrap();
    let resize_position = resizer.join().unwrap();
    let checkpoint: i64 = a.query_one(
        "SELECT checkpoint FROM eventstore.projection_states WHERE instance_id = $1 AND partition = 0", &[&t])
        .unwrap().get(0);
    assert!(checkpoint < resize_position, "the resize came after the batch's commit");
    let handed = drain(&mut a, "rw", &t, 100);
    assert_eq!(handed.len(), 2, "the two remaining events, once each");
}

#[test]
fn bad_inputs_are_refused_with_their_sqlstate_and_write_nothing() {
    let t = tenant("bad");
    let mut client = connect();
    let cases: &[(&str, &str)] = &[
        ("SELECT eventstore.set_partitions('p', $1, NULL)", "22004"),
        ("SELECT eventstore.set_partitions('p', $1, 0)", "22023"),
        ("SELECT eventstore.set_partitions('p', $1, -3)", "22023"),
        ("SELECT eventstore.set_partitions('p', $1, 257)", "22023"),
        ("SELECT eventstore.set_partitions(NULL, $1, 2)", "22004"),
        ("SELECT eventstore.set_partitions('', $1, 2)", "22023"),
        ("SELECT eventstore.set_partitions('p', $1 || repeat('x', 600), 2)", "22001"),
        ("SELECT * FROM eventstore.partition_catchup(NULL, $1)", "22004"),
        ("SELECT * FROM eventstore.partition_catchup('p', $1, 0)", "22023"),
        ("SELECT * FROM eventstore.partition_catchup('p', $1, NULL)", "22023"),
        ("SELECT * FROM eventstore.partition_catchup('p', $1, 10, ARRAY[]::text[])", "22023"),
        ("SELECT * FROM eventstore.partition_catchup('p', $1, 10, NULL, ARRAY[NULL]::text[])", "22023"),
    ];
    for (sql, code) in cases {
        let err = client.query(*sql, &[&t]).unwrap_err();
        assert_eq!(&db_error(&err).0, code, "{sql}");
    }
    let written: i64 = client.query_one(
        "SELECT (SELECT count(*) FROM eventstore.projections WHERE instance_id LIKE $1 || '%') \
              + (SELECT count(*) FROM eventstore.projection_states WHERE instance_id LIKE $1 || '%')", &[&t])
        .unwrap().get(0);
    assert_eq!(written, 0);
}

#[test]
fn a_resize_inside_a_writing_transaction_is_refused() {
    let t = tenant("writing");
    let mut client = connect();
    let mut tx = client.transaction().unwrap();
    tx.query("SELECT eventstore.lock_writer($1)", &[&t]).unwrap();
    let err = tx.query("SELECT eventstore.set_partitions('p', $1, 2)", &[&t]).unwrap_err();
    assert_eq!(db_error(&err).0, "55000");
}

#[test]
fn partition_of_is_stable_and_in_range() {
    let mut client = connect();
    let rows = client.query(
        "SELECT eventstore.partition_of('acme', 'order', 'o' || n, 7) FROM generate_series(1, 200) n", &[]).unwrap();
    let partitions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert!(partitions.iter().all(|p| (0..7).contains(p)));
    assert_eq!(partitions.iter().collect::<BTreeSet<_>>().len(), 7, "200 aggregates reach all 7 partitions");
    // The documented expression: hashtextextended over length-prefixed names, modulo the count.
    let same: bool = client.query_one(
        "SELECT bool_and(eventstore.partition_of('a', 'b:c', 'd', 5) = \
                ((hashtextextended('1:a3:b:c1:d', 0) % 5 + 5) % 5)::int) \
            AND eventstore.partition_of('a', 'b:c', 'd', 5) IS NOT NULL", &[]).unwrap().get(0);
    assert!(same);
}

// ---- Poison events (G13) ----

/// One failing attempt as the documented worker loop makes it: catch-up, the handler fails on
/// the event at `fails_on`, ROLLBACK, then projection_failed in a new transaction. Returns what
/// the batch handed out.
fn failing_attempt(client: &mut Client, projection: &str, instance: &str, fails_on: i64) -> Vec<i64> {
    let mut tx = client.transaction().unwrap();
    let handed: Vec<i64> = partition_batch(&mut tx, projection, instance, 100).iter().map(|h| h.3).collect();
    tx.rollback().unwrap();
    if handed.contains(&fails_on) {
        client.query_one("SELECT eventstore.projection_failed($1, $2, 0, 'handler failed', $3)",
            &[&projection, &instance, &fails_on]).unwrap();
    }
    handed
}

#[test]
fn a_poison_event_is_isolated_then_parked_and_the_projection_goes_on() {
    let t = tenant("poison");
    let mut client = connect();
    client.execute("SELECT eventstore.set_poison_policy('poison', $1, 3, false)", &[&t]).unwrap();
    let positions = push_each(&mut client, &t, &aggregates(5), "placed");
    let poison = positions[2];
    // Attempt 1: the whole batch, rolled back.
    assert_eq!(failing_attempt(&mut client, "poison", &t, poison), positions);
    // The record survived the rollback.
    let attempts: i32 = client.query_one(
        "SELECT attempts FROM eventstore.projection_failures WHERE instance_id = $1", &[&t]).unwrap().get(0);
    assert_eq!(attempts, 1);
    // The events before it come as usual (and commit); then it comes alone, twice.
    let mut tx = client.transaction().unwrap();
    assert_eq!(partition_batch(&mut tx, "poison", &t, 100).iter().map(|h| h.3).collect::<Vec<_>>(), &positions[..2]);
    tx.commit().unwrap();
    assert_eq!(failing_attempt(&mut client, "poison", &t, poison), vec![poison]);
    assert_eq!(failing_attempt(&mut client, "poison", &t, poison), vec![poison]);
    // Third failure recorded: parked, and the projection goes on past it.
    let mut tx = client.transaction().unwrap();
    assert_eq!(partition_batch(&mut tx, "poison", &t, 100).iter().map(|h| h.3).collect::<Vec<_>>(), &positions[3..]);
    tx.commit().unwrap();
    let parked: Vec<(i64, i32, String)> = client.query(
        "SELECT position, attempts, error FROM eventstore.parked_events WHERE instance_id = $1", &[&t])
        .unwrap().iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert_eq!(parked, vec![(poison, 3, "handler failed".to_string())]);
    let failures: i64 = client.query_one(
        "SELECT count(*) FROM eventstore.projection_failures WHERE instance_id = $1", &[&t]).unwrap().get(0);
    assert_eq!(failures, 0);
    // Retried: handed out again first, once; then nothing is parked any more.
    let marked: i64 = client.query_one("SELECT eventstore.retry_parked('poison', $1)", &[&t]).unwrap().get(0);
    assert_eq!(marked, 1);
    let mut tx = client.transaction().unwrap();
    assert_eq!(partition_batch(&mut tx, "poison", &t, 100).iter().map(|h| h.3).collect::<Vec<_>>(), vec![poison]);
    tx.commit().unwrap();
    let left: i64 = client.query_one(
        "SELECT count(*) FROM eventstore.parked_events WHERE instance_id = $1", &[&t]).unwrap().get(0);
    assert_eq!(left, 0);
    assert!(drain(&mut client, "poison", &t, 100).is_empty());
}

#[test]
fn two_poison_events_in_a_row_are_both_parked_and_the_rest_handled_once() {
    // The catch-up that parks the first one goes on in the same batch, which then fails on the
    // second: its rollback undoes the park, and the second's failure must not replace the
    // first's record (the two would take turns forever); projection_failed parks it for good.
    let t = tenant("poison2");
    let mut client = connect();
    client.execute("SELECT eventstore.set_poison_policy('poison2', $1, 2, false)", &[&t]).unwrap();
    let positions = push_each(&mut client, &t, &aggregates(5), "placed");
    let poison = BTreeSet::from([positions[1], positions[2]]);
    let mut committed = Vec::new();
    for _ in 0..30 {
        let mut tx = client.transaction().unwrap();
        let handed: Vec<i64> = partition_batch(&mut tx, "poison2", &t, 100).iter().map(|h| h.3).collect();
        match handed.iter().find(|p| poison.contains(p)) {
            Some(&fails_on) => {
                tx.rollback().unwrap();
                client.query_one("SELECT eventstore.projection_failed('poison2', $1, 0, 'handler failed', $2)",
                    &[&t, &fails_on]).unwrap();
            }
            None => {
                tx.commit().unwrap();
                committed.extend(handed);
            }
        }
    }
    let expected: Vec<i64> = positions.iter().copied().filter(|p| !poison.contains(p)).collect();
    assert_eq!(committed, expected, "every other event handled once, in order");
    let parked: Vec<(i64, i32)> = client.query(
        "SELECT position, attempts FROM eventstore.parked_events WHERE instance_id = $1 ORDER BY position", &[&t])
        .unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(parked, vec![(positions[1], 2), (positions[2], 2)]);
}

#[test]
fn hold_aggregate_parks_the_same_aggregates_later_events_behind_the_poison_one() {
    let t = tenant("hold");
    let mut client = connect();
    client.execute("SELECT eventstore.set_poison_policy('hold', $1, 1, true)", &[&t]).unwrap();
    let x = vec!["x".to_string()];
    let y = vec!["y".to_string()];
    let x1 = push_each(&mut client, &t, &x, "placed")[0];
    let y1 = push_each(&mut client, &t, &y, "placed")[0];
    let x2 = push_each(&mut client, &t, &x, "paid")[0];
    failing_attempt(&mut client, "hold", &t, x1);
    // max_attempts 1: parked at once; x's later event is held behind it, y goes on.
    let mut tx = client.transaction().unwrap();
    assert_eq!(partition_batch(&mut tx, "hold", &t, 100).iter().map(|h| h.3).collect::<Vec<_>>(), vec![y1]);
    tx.commit().unwrap();
    let parked: Vec<(i64, Option<i64>)> = client.query(
        "SELECT position, held_behind FROM eventstore.parked_events WHERE instance_id = $1 ORDER BY position", &[&t])
        .unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(parked, vec![(x1, None), (x2, Some(x1))]);
    // A new event of x is held too; retrying every parked event hands them out in order.
    let x3 = push_each(&mut client, &t, &x, "shipped")[0];
    assert!(drain(&mut client, "hold", &t, 100).is_empty());
    client.execute("SELECT eventstore.retry_parked('hold', $1)", &[&t]).unwrap();
    let handed: Vec<i64> = drain(&mut client, "hold", &t, 100).iter().map(|h| h.3).collect();
    assert_eq!(handed, vec![x1, x2, x3]);
}

#[test]
fn discard_parked_drops_them_for_good() {
    let t = tenant("discard");
    let mut client = connect();
    client.execute("SELECT eventstore.set_poison_policy('discard', $1, 1, false)", &[&t]).unwrap();
    let positions = push_each(&mut client, &t, &aggregates(2), "placed");
    failing_attempt(&mut client, "discard", &t, positions[0]);
    assert_eq!(drain(&mut client, "discard", &t, 100).iter().map(|h| h.3).collect::<Vec<_>>(), &positions[1..]);
    let dropped: i64 = client.query_one("SELECT eventstore.discard_parked('discard', $1, ARRAY[$2::bigint])",
        &[&t, &positions[0]]).unwrap().get(0);
    assert_eq!(dropped, 1);
    assert_eq!(client.query_one("SELECT eventstore.retry_parked('discard', $1)", &[&t]).unwrap().get::<_, i64>(0), 0);
    assert!(drain(&mut client, "discard", &t, 100).is_empty());
}

#[test]
fn poison_functions_refuse_bad_input_and_write_nothing() {
    let t = tenant("poison-bad");
    let mut client = connect();
    push_each(&mut client, &t, &aggregates(1), "placed");
    let cases: &[(&str, &str)] = &[
        ("SELECT eventstore.projection_failed('p', $1, NULL, 'e')", "22004"),
        ("SELECT eventstore.projection_failed('p', $1, 0, NULL)", "22004"),
        ("SELECT eventstore.projection_failed(NULL, $1, 0, 'e')", "22004"),
        ("SELECT eventstore.projection_failed('p', $1, 1, 'e')", "22023"),
        ("SELECT eventstore.projection_failed('p', $1, -1, 'e')", "22023"),
        ("SELECT eventstore.projection_failed('p', $1, 0, 'e', 0)", "22023"),
        ("SELECT eventstore.projection_failed('p', $1 || '-empty', 0, 'e')", "55000"),
        ("SELECT eventstore.set_poison_policy('p', $1, 0, true)", "22023"),
        ("SELECT eventstore.set_poison_policy('p', $1, 101, true)", "22023"),
        ("SELECT eventstore.set_poison_policy('p', $1, NULL, true)", "22004"),
        ("SELECT eventstore.set_poison_policy('p', $1, 3, NULL)", "22004"),
        ("SELECT eventstore.retry_parked('p', $1, ARRAY[NULL]::bigint[])", "22004"),
        ("SELECT eventstore.discard_parked(NULL, $1)", "22004"),
        ("SELECT eventstore.reset_projection('p', $1)", "22023"),
        ("SELECT eventstore.reset_projection('p', $1, NULL, NULL)", "22004"),
    ];
    for (sql, code) in cases {
        let err = client.query(*sql, &[&t]).unwrap_err();
        assert_eq!(&db_error(&err).0, code, "{sql}");
    }
    let written: i64 = client.query_one(
        "SELECT (SELECT count(*) FROM eventstore.projections WHERE instance_id LIKE $1 || '%') \
              + (SELECT count(*) FROM eventstore.projection_failures WHERE instance_id LIKE $1 || '%') \
              + (SELECT count(*) FROM eventstore.parked_events WHERE instance_id LIKE $1 || '%') \
              + (SELECT count(*) FROM eventstore.projection_states WHERE instance_id LIKE $1 || '%')", &[&t])
        .unwrap().get(0);
    assert_eq!(written, 0);
}

// ---- Rebuilds ----

#[test]
fn reset_projection_hands_a_partition_or_all_of_them_out_again() {
    let t = tenant("reset");
    let mut client = connect();
    set_partitions(&mut client, "reset", &t, 2);
    let ids = aggregates_in_every_partition(&mut client, &t, 10, 2);
    let expected: BTreeSet<i64> = push_each(&mut client, &t, &ids, "placed").into_iter().collect();
    assert_eq!(drain(&mut client, "reset", &t, 100).len(), ids.len());
    // One partition: only its events again.
    let reset: i32 = client.query_one("SELECT eventstore.reset_projection('reset', $1, 1)", &[&t]).unwrap().get(0);
    assert_eq!(reset, 1);
    let again = drain(&mut client, "reset", &t, 100);
    assert!(!again.is_empty() && again.iter().all(|h| h.0 == 1));
    // Every partition: everything again, exactly once.
    assert_eq!(client.query_one("SELECT eventstore.reset_projection('reset', $1)", &[&t]).unwrap().get::<_, i32>(0), 2);
    assert_exactly_once_in_order(&drain(&mut client, "reset", &t, 3), &expected);
    let err = client.query("SELECT eventstore.reset_projection('reset', $1, 2)", &[&t]).unwrap_err();
    assert_eq!(db_error(&err).0, "22023", "partition out of range");
}

#[test]
fn reset_projection_waits_for_a_running_batch() {
    let t = tenant("reset-waits");
    let mut a = connect();
    push_each(&mut a, &t, &aggregates(3), "placed");
    let mut worker = a.transaction().unwrap();
    assert_eq!(partition_batch(&mut worker, "rw", &t, 100).len(), 3);
    let mut b = connect();
    let b_pid = pid(&mut b);
    let t2 = t.clone();
    let resetter = thread::spawn(move || b.query_one("SELECT eventstore.reset_projection('rw', $1)", &[&t2]).unwrap().get::<_, i32>(0));
    let mut observer = connect();
    wait_until_blocked(&mut observer, b_pid);
    worker.commit().unwrap();
    assert_eq!(resetter.join().unwrap(), 1);
    assert_eq!(drain(&mut a, "rw", &t, 100).len(), 3, "the reset came after the batch's commit");
}

#[test]
fn blue_green_a_new_version_catches_up_beside_the_old_one() {
    let t = tenant("bluegreen");
    let mut client = connect();
    let ids = aggregates(6);
    let mut expected: BTreeSet<i64> = push_each(&mut client, &t, &ids, "placed").into_iter().collect();
    // The old version runs unpartitioned; the new one, under its own name, with 3 partitions.
    assert_eq!(drain(&mut client, "totals", &t, 100).len(), 6);
    set_partitions(&mut client, "totals_v2", &t, 3);
    expected.extend(push_each(&mut client, &t, &ids, "paid"));
    let old = drain(&mut client, "totals", &t, 100);
    let new = drain(&mut client, "totals_v2", &t, 4);
    assert_eq!(old.len(), 6, "the old version goes on with the new events only");
    assert_exactly_once_in_order(&new, &expected);
    // Caught up: both at the head; readers switch to totals_v2.
    let behind: Vec<(String, i64)> = client.query(
        "SELECT projection, sum(events_behind)::bigint FROM eventstore.projection_status \
          WHERE instance_id = $1 GROUP BY projection ORDER BY projection", &[&t])
        .unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(behind, vec![("totals".to_string(), 0), ("totals_v2".to_string(), 0)]);
}
