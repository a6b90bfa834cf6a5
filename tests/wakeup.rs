//! Waking workers: eventstore.wait_for_events, which sleeps on the latch until a writer's commit
//! (or the end of a writer that held the horizon back) ends the sleep, within milliseconds and
//! every time, in either horizon mode; and the NOTIFY (off by default, channel
//! eventstore_events, payload the highest position and no tenant name), which a push undone by
//! a caller's ROLLBACK TO SAVEPOINT never sends.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::{connect, connect_as, db_error, login_role, pid, push_one, tenant};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;

/// The payloads of the notifications `listener` receives within `within`, as sent.
fn payloads(listener: &mut Client, within: Duration) -> Vec<String> {
    let mut seen = Vec::new();
    let mut n = listener.notifications();
    let mut iter = n.timeout_iter(within);
    while let Some(note) = iter.next().unwrap() {
        assert_eq!(note.channel(), "eventstore_events");
        seen.push(note.payload().to_string());
    }
    seen
}

fn notifications(listener: &mut Client, within: Duration) -> Vec<serde_json::Value> {
    payloads(listener, within).iter().map(|p| serde_json::from_str(p).unwrap()).collect()
}

fn mine(seen: Vec<serde_json::Value>, positions: &[i64]) -> Vec<serde_json::Value> {
    seen.into_iter().filter(|v| positions.contains(&v["position"].as_i64().unwrap_or(-1))).collect()
}

/// A connection listening on eventstore_events, and a writer with eventstore.notify on.
fn listener_and_notifying_writer() -> (Client, Client) {
    let mut listener = connect();
    listener.batch_execute("LISTEN eventstore_events").unwrap();
    let mut writer = connect();
    writer.batch_execute("SET eventstore.notify = on").unwrap();
    (listener, writer)
}

#[test]
fn with_notify_on_a_transaction_that_pushes_notifies_once_with_its_highest_position() {
    let (t, u) = (tenant("notify"), tenant("notify-other"));
    let (mut listener, mut writer) = listener_and_notifying_writer();

    let mut tx = writer.transaction().unwrap();
    let mut positions = Vec::new();
    for aggregate in ["a", "b", "a"] {
        positions.push(push_one(&mut tx, &t, aggregate, "e").1);
    }
    tx.commit().unwrap();
    let highest = *positions.iter().max().unwrap();
    let seen = mine(notifications(&mut listener, Duration::from_millis(500)), &positions);
    assert_eq!(seen, vec![serde_json::json!({"position": highest})]);

    let mut rolled_back = writer.transaction().unwrap();
    let lost = push_one(&mut rolled_back, &t, "c", "e").1;
    rolled_back.rollback().unwrap();
    assert!(mine(notifications(&mut listener, Duration::from_millis(300)), &[lost]).is_empty(),
        "a rolled-back push notifies no one");

    let mut two = writer.transaction().unwrap();
    push_one(&mut two, &t, "d", "e");
    let last = push_one(&mut two, &u, "d", "e").1;
    two.commit().unwrap();
    let seen = mine(notifications(&mut listener, Duration::from_millis(500)), &[last]);
    assert_eq!(seen, vec![serde_json::json!({"position": last})], "several instances: one notification");
}

#[test]
fn notify_is_off_by_default_and_eventstore_notify_turns_it_on() {
    let t = tenant("notify-default");
    let mut listener = connect();
    listener.batch_execute("LISTEN eventstore_events").unwrap();
    let mut writer = connect();
    let quiet = push_one(&mut writer, &t, "a", "e").1;
    writer.batch_execute("SET eventstore.notify = on").unwrap();
    let loud = push_one(&mut writer, &t, "a", "e").1;
    writer.batch_execute("SET eventstore.notify = off").unwrap();
    let off = push_one(&mut writer, &t, "a", "e").1;
    let seen = mine(notifications(&mut listener, Duration::from_millis(500)), &[quiet, loud, off]);
    assert_eq!(seen, vec![serde_json::json!({"position": loud})]);
}

#[test]
fn a_listener_without_any_eventstore_grant_learns_no_tenant_name() {
    let t = tenant("secret-tenant");
    let mut admin = connect();
    let snoop = login_role(&mut admin, "snoop", &[], "");
    let mut listener = connect_as(&snoop);
    listener.batch_execute("LISTEN eventstore_events").unwrap();
    let mut writer = connect();
    writer.batch_execute("SET eventstore.notify = on").unwrap();
    let position = push_one(&mut writer, &t, "a", "e").1;

    let seen: Vec<String> = payloads(&mut listener, Duration::from_millis(500)).into_iter()
        .filter(|p| serde_json::from_str::<serde_json::Value>(p).unwrap()["position"] == position)
        .collect();
    assert_eq!(seen.len(), 1, "the listener gets the notification: {seen:?}");
    assert!(!seen[0].contains("secret-tenant"), "no tenant name: {}", seen[0]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&seen[0]).unwrap(),
        serde_json::json!({"position": position}));
}

#[test]
fn a_push_undone_by_rollback_to_savepoint_is_not_notified() {
    let t = tenant("notify-savepoint");
    let (mut listener, mut writer) = listener_and_notifying_writer();

    // caller's SAVEPOINT (G8 concerns eventstore's own code)
    let mut tx = writer.transaction().unwrap();
    let kept = push_one(&mut tx, &t, "a", "kept").1;
    tx.batch_execute("SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    let undone = push_one(&mut tx, &t, "b", "undone").1;
    tx.batch_execute("ROLLBACK TO SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    tx.commit().unwrap();
    assert_eq!(mine(notifications(&mut listener, Duration::from_millis(500)), &[kept, undone]),
        vec![serde_json::json!({"position": kept})], "the undone position does not exist");

    let mut tx = writer.transaction().unwrap();
    tx.batch_execute("SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    let undone = push_one(&mut tx, &t, "c", "undone").1;
    tx.batch_execute("ROLLBACK TO SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    tx.commit().unwrap();
    assert!(mine(notifications(&mut listener, Duration::from_millis(300)), &[undone]).is_empty(),
        "a transaction whose only push was undone notifies no one");
}

/// Issue 15: with eventstore.notify on, a LISTENer hears of each commit within milliseconds.
/// 100 rounds of a single-event push committed by a notifying writer, the listener in a thread
/// of its own. Measured: from the moment the writer's COMMIT returned (the commit is durable and
/// visible; a listener may hear even before the writer's client learns it, counted as 0) to the
/// listener's receipt: the median must be under the 50 ms and the 99th percentile under
/// [`P99_BOUND`] (the wake-up tests' bound: on this shared 2-core machine a busy moment
/// deschedules the listener for tens of milliseconds); and, printed, from just before the COMMIT
/// was sent (that adds the commit's own flush). Every round must be heard within 2 s. Prints the
/// percentiles (README "Performance").
#[test]
fn with_notify_on_a_listener_hears_of_each_commit_within_milliseconds() {
    const NOTIFY_ROUNDS: usize = 100;
    let t = tenant("notify-latency");
    let (mut listener, mut writer) = listener_and_notifying_writer();
    let (heard_tx, heard) = std::sync::mpsc::channel::<(i64, Instant)>();
    let listening = thread::spawn(move || {
        let mut n = listener.notifications();
        let mut iter = n.timeout_iter(Duration::from_secs(2));
        while let Some(note) = iter.next().unwrap() {
            let received = Instant::now();
            let position = serde_json::from_str::<serde_json::Value>(note.payload()).unwrap()["position"]
                .as_i64().unwrap_or(-1);
            if heard_tx.send((position, received)).is_err() {
                break;
            }
        }
    });
    let (mut after_commit, mut from_commit_sent) = (Vec::new(), Vec::new());
    let mut unheard = 0;
    for round in 0..NOTIFY_ROUNDS {
        let mut tx = writer.transaction().unwrap();
        let position = push_one(&mut tx, &t, &format!("a{}", round % 7), "e").1;
        let sending = Instant::now();
        tx.commit().unwrap();
        let committed = Instant::now();
        let deadline = sending + Duration::from_secs(2);
        loop {
            match heard.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((p, received)) if p == position => {
                    after_commit.push(received.saturating_duration_since(committed));
                    from_commit_sent.push(received.saturating_duration_since(sending));
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    unheard += 1;
                    break;
                }
            }
        }
    }
    drop(heard);
    listening.join().unwrap();
    let percentiles = |latencies: &mut Vec<Duration>| {
        latencies.sort();
        let at = |q: f64| latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
        (at(0.5), at(0.99), latencies.last().copied())
    };
    let (after_p50, after_p99, after_max) = percentiles(&mut after_commit);
    let (sent_p50, sent_p99, sent_max) = percentiles(&mut from_commit_sent);
    let summary = format!("NOTIFY latency, {NOTIFY_ROUNDS} rounds, {unheard} unheard: after the writer's \
        COMMIT returned p50 {after_p50:?}, p99 {after_p99:?}, max {after_max:?}; from the COMMIT sent \
        p50 {sent_p50:?}, p99 {sent_p99:?}, max {sent_max:?}");
    println!("{summary}");
    assert_eq!(unheard, 0, "{summary}");
    assert!(after_p50.unwrap() < Duration::from_millis(50), "{summary}");
    assert!(after_p99.unwrap() < P99_BOUND, "{summary}");
}

/// A new tenant with one event, and a connection on which projection `p` of that tenant has
/// caught up to it: a wait then starts with nothing new.
fn caught_up(p: &str) -> (Client, String) {
    let t = tenant(p);
    let mut admin = connect();
    push_one(&mut admin, &t, "a", "before");
    admin.query("SELECT 1 FROM eventstore.projection_catchup($1, $2, 100000)", &[&p, &t]).unwrap();
    (admin, t)
}

#[test]
fn a_commit_ends_the_wait_at_once_and_the_waiter_sleeps_meanwhile() {
    let (mut admin, t) = caught_up("wake");

    let mut waiter = connect();
    let waiter_pid = pid(&mut waiter);
    let t2 = t.clone();
    let handle = thread::spawn(move || {
        let started = Instant::now();
        let found: bool = waiter.query_one("SELECT eventstore.wait_for_events('wake', $1, 30000)", &[&t2]).unwrap().get(0);
        (found, started.elapsed())
    });
    // It sleeps on its latch (wait event type Extension), not in a polling loop.
    let mut sleeping = false;
    for _ in 0..200 {
        let event: Option<String> = admin.query_one(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", &[&waiter_pid]).unwrap().get(0);
        if event.as_deref() == Some("Extension") { sleeping = true; break; }
        thread::sleep(Duration::from_millis(10));
    }
    assert!(sleeping, "the waiter sleeps on its latch");

    let mut writer = connect();
    let mut tx = writer.transaction().unwrap();
    push_one(&mut tx, &t, "a", "new");
    thread::sleep(Duration::from_millis(300));
    assert!(!handle.is_finished(), "an uncommitted push does not end the wait");
    let committed = Instant::now();
    tx.commit().unwrap();
    let (found, _) = handle.join().unwrap();
    assert!(found);
    assert!(committed.elapsed() < Duration::from_secs(3),
        "woken by the commit, not by the 30 s timeout ({:?})", committed.elapsed());
}

#[test]
fn the_wait_ends_false_at_its_timeout_when_nothing_new_commits() {
    let (mut admin, t) = caught_up("timeout");

    let other = tenant("timeout-other");
    let mut waiter = connect();
    let t2 = t.clone();
    let handle = thread::spawn(move || {
        let started = Instant::now();
        let found: bool = waiter.query_one("SELECT eventstore.wait_for_events('timeout', $1, 800)", &[&t2]).unwrap().get(0);
        (found, started.elapsed())
    });
    thread::sleep(Duration::from_millis(200));
    push_one(&mut admin, &other, "a", "another tenant");
    let mut tx = admin.transaction().unwrap();
    push_one(&mut tx, &t, "a", "rolled back");
    tx.rollback().unwrap();
    let (found, waited) = handle.join().unwrap();
    assert!(!found, "another tenant's event and a rolled-back push are nothing new");
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(5), "{waited:?}");

    let mut c = connect();
    assert!(c.query_one("SELECT eventstore.wait_for_events('timeout-fresh', $1, 0)", &[&t]).unwrap().get::<_, bool>(0),
        "a projection that never ran has events waiting");
    let err = c.query("SELECT eventstore.wait_for_events('p', NULL, -1)", &[]).unwrap_err();
    assert_eq!(common::db_error(&err).0, "22023");
}

#[test]
fn a_wait_ends_only_when_a_catchup_could_hand_something_out() {
    let (mut admin, t) = caught_up("reachable");
    let never_waits = admin.query_one("SELECT eventstore.horizon_mode() <> 'barrier'", &[]).unwrap().get::<_, bool>(0);

    // An earlier position in flight, a later one committed.
    let mut slow = connect();
    let mut slow_tx = slow.transaction().unwrap();
    push_one(&mut slow_tx, &t, "b", "drawn first");
    push_one(&mut admin, &t, "c", "committed first");

    let mut waiter = connect();
    let started = Instant::now();
    let found: bool = waiter.query_one("SELECT eventstore.wait_for_events('reachable', $1, 700)", &[&t]).unwrap().get(0);
    if never_waits {
        // A catch-up would hand out nothing yet (the registry's or the floors' horizon is below
        // the open writer): waking now would make a worker spin.
        assert!(!found && started.elapsed() >= Duration::from_millis(700), "registry, floors: sleeps until the timeout");
    } else {
        // The barrier's catch-up waits for the open writer itself: the wait ends at once.
        assert!(found && started.elapsed() < Duration::from_millis(700), "barrier: true at once");
    }
    let handle = thread::spawn(move || {
        waiter.query_one("SELECT eventstore.wait_for_events('reachable', $1, 30000)", &[&t]).unwrap().get::<_, bool>(0)
    });
    thread::sleep(Duration::from_millis(200));
    let committed = Instant::now();
    slow_tx.commit().unwrap();
    assert!(handle.join().unwrap());
    assert!(committed.elapsed() < Duration::from_secs(3));
}

// -------------------------------------------------------------------------------------------
// Wake-ups are never lost: measured over many rounds, in whichever horizon mode the cluster
// runs (scripts/test runs this file against both).

const ROUNDS: usize = 100;
/// Each waiter's timeout: a waiter that reaches it was not woken.
const ROUND_TIMEOUT_MS: i32 = 1500;
/// Enough to show a lost wake-up; stops a broken build's run early.
const TIMEOUTS_BEFORE_GIVING_UP: usize = 5;
const P99_BOUND: Duration = Duration::from_millis(200);

/// One writer's part in a round: `hold` opens its transaction (and may let `other` commit an
/// event meanwhile); `end` (a COMMIT or ROLLBACK, or a whole autocommit push) must then wake the
/// waiter.
struct Round {
    hold: fn(holder: &mut Client, other: &mut Client, tenant: &str),
    end: fn(holder: &mut Client, tenant: &str),
}

fn commit(holder: &mut Client, _: &str) {
    holder.batch_execute("COMMIT").unwrap();
}

fn rollback(holder: &mut Client, _: &str) {
    holder.batch_execute("ROLLBACK").unwrap();
}

/// Runs [`ROUNDS`] rounds of: a caught-up waiter of projection `p` sleeps in wait_for_events
/// while the holder's transaction is open, then the holder's transaction ends. Asserts that
/// no waiter slept to its timeout and that the 99th percentile of the time from just before
/// the end to the waiter's return is under [`P99_BOUND`]. (A waiter that returned before the
/// end, as in barrier mode where a committed event behind an open writer is reachable at once,
/// counts as zero.)
fn assert_every_waiter_wakes_promptly(p: &str, round: Round) {
    let (mut admin, t) = caught_up(p);
    let mode: String = admin.query_one("SELECT eventstore.horizon_mode()", &[]).unwrap().get(0);
    let (mut holder, mut other) = (connect(), connect());
    let mut waiter = Some(connect());
    let waiter_pid = pid(waiter.as_mut().unwrap());
    let mut latencies = Vec::new();
    let mut timeouts = 0;
    for _ in 0..ROUNDS {
        (round.hold)(&mut holder, &mut other, &t);
        let mut client = waiter.take().unwrap();
        let (p2, t2) = (p.to_string(), t.clone());
        let sleeper = thread::spawn(move || {
            let started = Instant::now();
            let found: bool = client.query_one("SELECT eventstore.wait_for_events($1, $2, $3)",
                &[&p2, &t2, &ROUND_TIMEOUT_MS]).unwrap().get(0);
            // Past its timeout the waiter checks once more, and may then find the event.
            let timed_out = !found || started.elapsed() >= Duration::from_millis(ROUND_TIMEOUT_MS as u64);
            (client, timed_out, Instant::now())
        });
        let asleep_by = Instant::now() + Duration::from_secs(1);
        while !sleeper.is_finished() && Instant::now() < asleep_by {
            let event: Option<String> = admin.query_one(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", &[&waiter_pid]).unwrap().get(0);
            if event.as_deref() == Some("Extension") {
                break;
            }
        }
        let ending = Instant::now();
        (round.end)(&mut holder, &t);
        let (client, timed_out, returned) = sleeper.join().unwrap();
        waiter = Some(client);
        if !timed_out {
            latencies.push(returned.saturating_duration_since(ending));
        } else {
            timeouts += 1;
            if timeouts == TIMEOUTS_BEFORE_GIVING_UP {
                break;
            }
        }
        admin.query("SELECT 1 FROM eventstore.projection_catchup($1, $2, 100000)", &[&p, &t]).unwrap();
    }
    latencies.sort();
    let rounds = latencies.len() + timeouts;
    let percentile = |q: f64| latencies.get(((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)).copied();
    let summary = format!("{p} ({mode}): {timeouts} of {rounds} waiters slept to their {ROUND_TIMEOUT_MS} ms \
        timeout; woken: p50 {:?}, p99 {:?}, max {:?}", percentile(0.5), percentile(0.99), latencies.last());
    println!("{summary}");
    assert_eq!(timeouts, 0, "{summary}");
    assert!(percentile(0.99).unwrap() < P99_BOUND, "{summary}");
}

#[test]
fn a_commit_wakes_a_waiter_of_its_instance_within_milliseconds_every_time() {
    assert_every_waiter_wakes_promptly("wake-commit", Round {
        hold: |holder, _, t| {
            holder.batch_execute("BEGIN").unwrap();
            push_one(holder, t, "a", "new");
        },
        end: commit,
    });
}

/// A push in autocommit over the extended protocol (how drivers send a query with parameters):
/// its transaction commits at the protocol's Sync, while the statement's portal still owns the
/// floor lock; the floor must still be gone before the waiter is woken.
#[test]
fn an_autocommit_push_over_the_extended_protocol_wakes_a_waiter_of_its_instance_every_time() {
    assert_every_waiter_wakes_promptly("wake-autocommit", Round {
        hold: |_, _, _| {},
        end: |holder, t| {
            push_one(holder, t, "a", "new");
        },
    });
}

/// The same push sends the client no notice: the commit callback releases the floor as the
/// transaction that owns it (it used to ask as the wrong owner, and every such push got
/// "WARNING: you don't own a lock of type ShareLock").
#[test]
fn an_autocommit_push_over_the_extended_protocol_sends_no_warning() {
    let t = tenant("autocommit-notices");
    let notices = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notices.clone();
    let mut config: postgres::Config = common::url().parse().unwrap();
    config.notice_callback(move |notice| seen.lock().unwrap().push(notice.message().to_string()));
    let mut writer = config.connect(postgres::NoTls).unwrap();
    for aggregate in ["a", "b", "a"] {
        push_one(&mut writer, &t, aggregate, "e");
    }
    writer.execute("SELECT eventstore.lock_writer($1)", &[&t]).unwrap();
    assert_eq!(*notices.lock().unwrap(), Vec::<String>::new());
}

#[test]
fn a_lock_writer_only_transaction_that_held_the_horizon_back_wakes_the_waiter_when_it_commits() {
    assert_every_waiter_wakes_promptly("wake-lock-writer", Round {
        hold: |holder, other, t| {
            holder.batch_execute("BEGIN").unwrap();
            holder.execute("SELECT eventstore.lock_writer($1)", &[&t]).unwrap();
            push_one(other, t, "a", "behind the held writer");
        },
        end: commit,
    });
}

#[test]
fn a_rolled_back_push_that_held_the_horizon_back_wakes_the_waiter() {
    assert_every_waiter_wakes_promptly("wake-rollback", Round {
        hold: |holder, other, t| {
            holder.batch_execute("BEGIN").unwrap();
            push_one(holder, t, "held", "rolled back");
            push_one(other, t, "a", "behind the held writer");
        },
        end: rollback,
    });
}

// -------------------------------------------------------------------------------------------
// A caller's ROLLBACK TO SAVEPOINT undoes a push or lock_writer for the horizon as well.

/// The horizon of `t`, from a session of its own (in barrier mode after the writers of `t`).
fn horizon_of(t: &str) -> i64 {
    let mut c = connect();
    c.batch_execute("SET statement_timeout = '5s'").unwrap();
    c.query_one("SELECT eventstore.await_writers($1)", &[&t]).unwrap().get(0)
}

#[test]
fn a_push_undone_by_rollback_to_savepoint_holds_nothing_back_wakes_waiters_and_may_be_prepared() {
    let (mut admin, t) = caught_up("savepoint");
    let mut holder = connect();
    let mut other = connect();

    // caller's SAVEPOINT (G8 concerns eventstore's own code)
    holder.batch_execute("BEGIN; SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    push_one(&mut holder, &t, "undone", "undone");
    let behind = push_one(&mut other, &t, "a", "committed behind it").1;
    let mut waiter = connect();
    let t2 = t.clone();
    let sleeper = thread::spawn(move || {
        let found: bool = waiter.query_one("SELECT eventstore.wait_for_events('savepoint', $1, 5000)", &[&t2])
            .unwrap().get(0);
        (found, Instant::now())
    });
    thread::sleep(Duration::from_millis(300));
    let undone = Instant::now();
    holder.batch_execute("ROLLBACK TO SAVEPOINT undo").unwrap(); // caller's SAVEPOINT, not ours
    let (found, returned) = sleeper.join().unwrap();
    assert!(found && returned.saturating_duration_since(undone) < Duration::from_secs(1),
        "the waiter is woken when the push is undone ({:?} after)", returned.saturating_duration_since(undone));
    assert!(horizon_of(&t) >= behind, "the undone push no longer holds the horizon back");

    // The same for lock_writer, with the transaction still open.
    holder.batch_execute("SAVEPOINT undo_lock").unwrap(); // caller's SAVEPOINT, not ours
    holder.execute("SELECT eventstore.lock_writer($1)", &[&t]).unwrap();
    holder.batch_execute("ROLLBACK TO SAVEPOINT undo_lock").unwrap(); // caller's SAVEPOINT, not ours
    let behind = push_one(&mut other, &t, "a", "committed after the undone lock_writer").1;
    assert!(horizon_of(&t) >= behind, "the undone lock_writer no longer holds the horizon back");

    // Nothing of eventstore's is left in the transaction: the registry does not refuse PREPARE
    // (PostgreSQL itself may, when max_prepared_transactions is 0).
    match holder.batch_execute("PREPARE TRANSACTION 'eventstore_savepoint_test'") {
        Ok(()) => admin.batch_execute("ROLLBACK PREPARED 'eventstore_savepoint_test'").unwrap(),
        Err(e) => {
            let (code, message, _) = db_error(&e);
            assert_ne!(code, "0A000", "refused by eventstore: {message}");
        }
    }
}

#[test]
fn a_scope_widened_inside_a_rolled_back_savepoint_is_narrowed_again() {
    let (t, u, v) = (tenant("narrow-t"), tenant("narrow-u"), tenant("narrow-v"));
    let mut holder = connect();
    let mut other = connect();

    // caller's SAVEPOINT (G8 concerns eventstore's own code)
    holder.batch_execute("BEGIN").unwrap();
    push_one(&mut holder, &t, "a", "kept, still open");
    holder.batch_execute("SAVEPOINT widen").unwrap(); // caller's SAVEPOINT, not ours
    push_one(&mut holder, &u, "a", "undone");
    holder.batch_execute("ROLLBACK TO SAVEPOINT widen").unwrap(); // caller's SAVEPOINT, not ours
    let unrelated = push_one(&mut other, &v, "a", "another tenant").1;
    assert!(horizon_of(&v) >= unrelated,
        "the open writer writes only to {t} again: a reader of {v} is not held back by it");
    holder.batch_execute("ROLLBACK").unwrap();
}
