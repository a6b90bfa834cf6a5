//! eventstore.push over real connections: G1 (atomic), G2 (gapless sequences, serialized
//! concurrent pushes, expected_sequence), G3 (unique increasing positions), G9 (bad input).

mod common;

use std::collections::HashMap;
use std::thread;

use common::{connect, db_error, pid, push_one, tenant, wait_until_blocked};

fn count_events(client: &mut postgres::Client, tenant: &str) -> i64 {
    client.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id = $1", &[&tenant]).unwrap().get(0)
}

#[test]
fn batch_push_returns_one_row_per_event_in_order() {
    let mut c = connect();
    let t = tenant("batch");
    let rows = c.query(
        "SELECT aggregate_id, sequence, position, in_tx_order FROM eventstore.push(ARRAY[
            eventstore.command($1, 'order', 'o1', 'order.placed'),
            eventstore.command($1, 'order', 'o2', 'order.placed'),
            eventstore.command($1, 'order', 'o1', 'order.paid')])",
        &[&t],
    ).unwrap();
    let got: Vec<(String, i64, i32)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(3))).collect();
    assert_eq!(got, vec![("o1".into(), 1, 0), ("o2".into(), 1, 1), ("o1".into(), 2, 2)]);
    let positions: Vec<i64> = rows.iter().map(|r| r.get(2)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "positions increase in command order: {positions:?}");
}

#[test]
fn sequence_continues_across_calls() {
    let mut c = connect();
    let t = tenant("continue");
    assert_eq!(push_one(&mut c, &t, "a", "e").0, 1);
    assert_eq!(push_one(&mut c, &t, "a", "e").0, 2);
    assert_eq!(push_one(&mut c, &t, "b", "e").0, 1);
    assert_eq!(push_one(&mut c, &t, "a", "e").0, 3);
}

#[test]
fn a_bad_command_in_a_batch_writes_nothing() {
    let mut c = connect();
    let t = tenant("atomic");
    let error = c.query(
        "SELECT * FROM eventstore.push(ARRAY[
            eventstore.command($1, 'order', 'o1', 'order.placed'),
            eventstore.command($1, 'order', '',   'order.placed')])",
        &[&t],
    ).unwrap_err();
    let (code, message, detail) = db_error(&error);
    assert_eq!(code, "22023");
    assert_eq!(message, "aggregate_id must not be empty");
    assert!(detail.starts_with("Command 2 of the batch"), "{detail}");
    assert_eq!(count_events(&mut c, &t), 0);
}

#[test]
fn expected_sequence_is_accepted_when_it_matches_and_refused_otherwise() {
    let mut c = connect();
    let t = tenant("expected");
    let push = "SELECT sequence FROM eventstore.push(ARRAY[eventstore.command($1, 'order', 'o1', 'e', expected_sequence => $2)])";
    let first: i64 = c.query_one(push, &[&t, &0i64]).unwrap().get(0);
    assert_eq!(first, 1);
    let second: i64 = c.query_one(push, &[&t, &1i64]).unwrap().get(0);
    assert_eq!(second, 2);
    let (code, _, detail) = db_error(&c.query_one(push, &[&t, &1i64]).unwrap_err());
    assert_eq!(code, "ES409");
    let detail: serde_json::Value = serde_json::from_str(&detail).expect("the detail is JSON");
    assert_eq!((detail["command"].as_i64(), detail["expected_sequence"].as_i64(), detail["actual_sequence"].as_i64()),
        (Some(1), Some(1), Some(2)));
    assert_eq!(count_events(&mut c, &t), 2);
}

#[test]
fn concurrent_push_to_one_aggregate_serializes() {
    let t = tenant("serialize");
    let mut first = connect();
    let mut observer = connect();
    let mut tx = first.transaction().unwrap();
    assert_eq!(push_one(&mut tx, &t, "hot", "e").0, 1);

    let mut second = connect();
    let second_pid = pid(&mut second);
    let t2 = t.clone();
    let waiter = thread::spawn(move || push_one(&mut second, &t2, "hot", "e"));
    wait_until_blocked(&mut observer, second_pid);
    tx.commit().unwrap();
    let (sequence, _) = waiter.join().expect("the second push succeeds, with no unique violation");
    assert_eq!(sequence, 2);
}

#[test]
fn a_rolled_back_push_leaves_its_sequence_to_the_next_writer() {
    let t = tenant("rollback");
    let mut first = connect();
    let mut observer = connect();
    let mut tx = first.transaction().unwrap();
    push_one(&mut tx, &t, "hot", "e");

    let mut second = connect();
    let second_pid = pid(&mut second);
    let t2 = t.clone();
    let waiter = thread::spawn(move || push_one(&mut second, &t2, "hot", "e"));
    wait_until_blocked(&mut observer, second_pid);
    tx.rollback().unwrap();
    assert_eq!(waiter.join().unwrap().0, 1);
}

#[test]
fn many_writers_get_gapless_sequences_and_unique_increasing_positions() {
    let t = tenant("many");
    let writers: Vec<_> = (0..8).map(|w| {
        let t = t.clone();
        thread::spawn(move || {
            let mut c = connect();
            for i in 0..40 {
                let aggregate = format!("hot-{}", (w + i) % 3);
                let mut tx = c.transaction().unwrap();
                tx.query(
                    "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'thing', $2, 'a'),
                                                         eventstore.command($1, 'thing', $2, 'b')])",
                    &[&t, &aggregate],
                ).unwrap();
                if i % 7 == 3 { tx.rollback().unwrap() } else { tx.commit().unwrap() }
            }
        })
    }).collect();
    for w in writers {
        w.join().expect("no writer failed: no deadlock, no unique violation");
    }
    let mut c = connect();
    let rows = c.query(
        "SELECT aggregate_id, sequence, position FROM eventstore.events WHERE instance_id = $1 ORDER BY position",
        &[&t],
    ).unwrap();
    let mut sequences: HashMap<String, Vec<i64>> = HashMap::new();
    for r in &rows {
        sequences.entry(r.get(0)).or_default().push(r.get(1));
    }
    for (aggregate, seqs) in &sequences {
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, &expected, "aggregate {aggregate}: in position order, sequences are exactly 1..n");
    }
    let committed_per_writer = (0..40).filter(|i| i % 7 != 3).count();
    assert_eq!(rows.len(), 8 * committed_per_writer * 2, "every committed event is there");
}

#[test]
fn jsonb_and_composite_forms_write_the_same_events() {
    let mut c = connect();
    let (a, b) = (tenant("composite"), tenant("json"));
    c.query(
        "SELECT * FROM eventstore.push(ARRAY[
            eventstore.command($1, 'user', 'u1', 'user.added', '{\"name\": \"Ada\"}', 2, 'alice', 'org-1'),
            eventstore.command($1, 'user', 'u1', 'user.renamed', expected_sequence => 1)])",
        &[&a],
    ).unwrap();
    let json = format!(r#"[{{"instance_id": "{b}", "aggregate_type": "user", "aggregate_id": "u1",
        "event_type": "user.added", "payload": {{"name": "Ada"}}, "revision": 2, "creator": "alice", "owner": "org-1"}},
        {{"instance_id": "{b}", "aggregate_type": "user", "aggregate_id": "u1", "event_type": "user.renamed",
        "expected_sequence": 1}}]"#);
    c.query("SELECT * FROM eventstore.push($1::text)", &[&json]).unwrap();
    let read = |c: &mut postgres::Client, t: &str| -> Vec<String> {
        c.query(
            "SELECT concat_ws('|', aggregate_type, aggregate_id, sequence, event_type, revision, payload, creator, owner, in_tx_order)
               FROM eventstore.events WHERE instance_id = $1 ORDER BY position",
            &[&t],
        ).unwrap().iter().map(|r| r.get(0)).collect()
    };
    let composite = read(&mut c, &a);
    assert_eq!(composite.len(), 2);
    assert_eq!(composite, read(&mut c, &b));
    // creator defaults to current_user, owner to the aggregate's owner.
    assert_eq!(composite[1], "user|u1|2|user.renamed|1|postgres|org-1|1");
}

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let mut c = connect();
    let cases: &[(&str, &str, &str)] = &[
        ("SELECT * FROM eventstore.push(NULL::eventstore.command[])", "22004", "commands must not be NULL"),
        ("SELECT * FROM eventstore.push(ARRAY[]::eventstore.command[])", "22023", "push needs at least one command"),
        ("SELECT * FROM eventstore.push(ARRAY[NULL::eventstore.command])", "22004", "a command must not be NULL"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command(NULL, 'a', 'b', 'c')])", "22004", "instance_id must not be NULL"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('', 'a', 'b', 'c')])", "22023", "instance_id must not be empty"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('t', NULL, 'b', 'c')])", "22004", "aggregate_type must not be NULL"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('t', 'a', NULL, 'c')])", "22004", "aggregate_id must not be NULL"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('t', 'a', 'b', '')])", "22023", "event_type must not be empty"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('t', 'a', 'b', 'c', '[1, 2]')])", "22023", "payload must be a JSON object"),
        ("SELECT * FROM eventstore.push(ARRAY[eventstore.command('t', 'a', 'b', 'c', '42')])", "22023", "payload must be a JSON object"),
        ("SELECT * FROM eventstore.push('{\"instance_id\": \"t\"}'::jsonb)", "22023", "commands must be a JSON array"),
        ("SELECT * FROM eventstore.push('[]'::jsonb)", "22023", "push needs at least one command"),
        ("SELECT * FROM eventstore.push('[42]'::jsonb)", "22023", "a command must be a JSON object"),
        ("SELECT * FROM eventstore.push('[{\"instance_id\": \"t\", \"aggregate_type\": \"a\", \"aggregate_id\": \"b\"}]'::jsonb)", "22004", "event_type must not be NULL"),
        ("SELECT * FROM eventstore.push('[{\"instance_id\": \"t\", \"aggregate_type\": \"a\", \"aggregate_id\": \"b\", \"event_type\": \"c\", \"expectedSequence\": 3}]'::jsonb)", "22023", "unknown field \"expectedSequence\""),
        ("SELECT * FROM eventstore.push('[{\"instance_id\": 7, \"aggregate_type\": \"a\", \"aggregate_id\": \"b\", \"event_type\": \"c\"}]'::jsonb)", "22023", "instance_id must be a string"),
        ("SELECT * FROM eventstore.push('[{\"instance_id\": \"t\", \"aggregate_type\": \"a\", \"aggregate_id\": \"b\", \"event_type\": \"c\", \"payload\": [1]}]'::jsonb)", "22023", "payload must be a JSON object"),
    ];
    for (sql, code, message) in cases {
        let error = c.query(*sql, &[]).expect_err(sql);
        let (got_code, got_message, detail) = db_error(&error);
        assert_eq!((got_code.as_str(), got_message.as_str()), (*code, *message), "{sql}");
        assert!(!detail.is_empty(), "a detail for: {sql}");
    }
    assert_eq!(count_events(&mut c, "t"), 0, "no bad input wrote anything");
}

/// A push of `count` events to as many aggregates of `tenant`, in `client`'s transaction.
fn push_many(client: &mut impl postgres::GenericClient, tenant: &str, count: i32) -> Result<usize, postgres::Error> {
    client.query(
        "SELECT * FROM eventstore.push(ARRAY(SELECT eventstore.command($1, 'thing', i::text, 'imported')
                                              FROM generate_series(1, $2) i))",
        &[&tenant, &count],
    ).map(|rows| rows.len())
}

/// This backend's eventstore locks: (pg_locks.objsubid, mode).
fn my_advisory_locks(client: &mut impl postgres::GenericClient) -> Vec<(i32, String)> {
    client.query(
        "SELECT objsubid::int, mode FROM pg_locks
          WHERE locktype = 'advisory' AND pid = pg_backend_pid() ORDER BY 1, 2",
        &[],
    ).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect()
}

const ALL_WRITERS: i32 = 0x4501;
const WRITER: i32 = 0x4502;
const FLOOR: i32 = 0x4507;

#[test]
fn a_bulk_push_locks_only_its_instance_and_stalls_no_other_tenant() {
    let t = tenant("bulk");
    let other = tenant("bulk-other");
    let mut bulk = connect();
    let mut observer = connect();
    let mut tx = bulk.transaction().unwrap();
    assert_eq!(push_many(&mut tx, &t, 1000).unwrap(), 1000);
    // Another tenant pushes and catches up while the bulk push is open (G11).
    let mut neighbour = connect();
    neighbour.batch_execute("SET statement_timeout = '3s'").unwrap();
    assert_eq!(push_one(&mut neighbour, &other, "a", "e").0, 1);
    let handed_out = neighbour.query("SELECT * FROM eventstore.projection_catchup('bulk', $1)", &[&other]).unwrap();
    assert_eq!(handed_out.len(), 1, "the other tenant's catch-up does not wait for the bulk push");
    let mode: String = observer.query_one("SELECT eventstore.horizon_mode()", &[]).unwrap().get(0);
    let mut expected = vec![(ALL_WRITERS, "ShareLock".to_string()), (WRITER, "ExclusiveLock".to_string())];
    if mode != "registry" {
        expected.push((FLOOR, "ShareLock".to_string()));
    }
    assert_eq!(my_advisory_locks(&mut tx), expected,
        "a few locks, not a thousand: the instance's writer key exclusively (and the floor, not preloaded)");

    // The bulk push's own tenant: its writers wait for it; its catch-up waits for it (barrier)
    // or answers at once below it (floors, registry).
    let mut writer = connect();
    let writer_pid = pid(&mut writer);
    let t1 = t.clone();
    let waiter = thread::spawn(move || push_one(&mut writer, &t1, "1", "e"));
    wait_until_blocked(&mut observer, writer_pid);
    let mut worker = connect();
    let catch_up = move |worker: &mut postgres::Client, t: &str| -> usize {
        worker.query("SELECT * FROM eventstore.projection_catchup('bulk', $1, 5000)", &[&t]).unwrap().len()
    };
    if mode == "barrier" {
        let worker_pid = pid(&mut worker);
        let t2 = t.clone();
        let catchup = thread::spawn(move || catch_up(&mut worker, &t2));
        wait_until_blocked(&mut observer, worker_pid);
        tx.commit().unwrap();
        assert_eq!(waiter.join().unwrap().0, 2, "the tenant's next writer continued the sequence");
        assert!(catchup.join().unwrap() >= 1000, "the per-instance barrier waited for the bulk push");
    } else {
        assert_eq!(catch_up(&mut worker, &t), 0, "nothing of the tenant below the bulk push's floor, at once");
        tx.commit().unwrap();
        assert_eq!(waiter.join().unwrap().0, 2, "the tenant's next writer continued the sequence");
        assert!(catch_up(&mut worker, &t) >= 1000, "the bulk push's events once it committed");
    }
}

#[test]
fn pushing_then_bulk_pushing_in_two_transactions_never_deadlocks() {
    // Disjoint tenants: each bulk push takes only its own instance. Same tenant: the second
    // push of a transaction that already wrote to the instance locks aggregates one by one
    // instead of upgrading its shared lock (two upgrades would deadlock).
    for same_tenant in [false, true] {
        let (a, b) = (tenant("upgrade-a"), tenant("upgrade-b"));
        let tenants = if same_tenant { [a.clone(), a.clone()] } else { [a, b] };
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = tenants.into_iter().enumerate().map(|(n, t)| {
            let barrier = barrier.clone();
            thread::spawn(move || -> Result<(), String> {
                let mut c = connect();
                let mut tx = c.transaction().unwrap();
                push_one(&mut tx, &t, &format!("first-{n}"), "e");
                barrier.wait();
                tx.query(
                    "SELECT * FROM eventstore.push(ARRAY(SELECT eventstore.command($1, 'thing', $2 || '-' || i, 'e')
                                                          FROM generate_series(1, 100) i))",
                    &[&t, &n.to_string()],
                ).map_err(|e| db_error(&e).0)?;
                tx.commit().map_err(|e| e.to_string())
            })
        }).collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap(), Ok(()), "same tenant: {same_tenant}");
        }
    }
}

#[test]
fn a_transaction_locking_too_many_aggregates_one_by_one_is_refused_and_writes_nothing_more() {
    let t = tenant("budget");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    push_one(&mut tx, &t, "first", "e");
    for round in 0..4 {
        tx.query(
            "SELECT * FROM eventstore.push(ARRAY(SELECT eventstore.command($1, 'thing', $2 || '-' || i, 'e')
                                                  FROM generate_series(1, 60) i))",
            &[&t, &round.to_string()],
        ).unwrap();
    }
    let error = tx.query(
        "SELECT * FROM eventstore.push(ARRAY(SELECT eventstore.command($1, 'thing', 'last-' || i, 'e')
                                              FROM generate_series(1, 60) i))",
        &[&t],
    ).unwrap_err();
    let (code, message, detail) = db_error(&error);
    assert_eq!(code, "54000");
    assert_eq!(message, "too many aggregates locked in one transaction");
    assert!(detail.contains("already locked 241 aggregates"), "{detail}");
    drop(tx);
    assert_eq!(count_events(&mut c, &t), 0, "the transaction rolled back whole");
}

#[test]
fn pushes_to_disjoint_aggregates_under_serializable_never_fail() {
    let t = tenant("serializable");
    let failures: Vec<String> = (0..4).map(|n| {
        let t = t.clone();
        thread::spawn(move || -> Vec<String> {
            let mut c = connect();
            let mut failed = Vec::new();
            for round in 0..60 {
                let mut tx = c.build_transaction()
                    .isolation_level(postgres::IsolationLevel::Serializable).start().unwrap();
                let pushed = tx.query(
                    "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'thing', $2, 'e')])",
                    &[&t, &format!("{n}-{}", round % 7)],
                ).map_err(|e| db_error(&e).0).and_then(|_| tx.commit().map_err(|e| db_error(&e).0));
                if let Err(e) = pushed {
                    failed.push(e);
                }
            }
            failed
        })
    }).collect::<Vec<_>>().into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(failures.is_empty(), "{} of 240 pushes failed: {:?}", failures.len(), failures);
}

#[test]
fn a_revision_out_of_range_is_refused_with_22023_in_both_forms() {
    let mut c = connect();
    let error = c.query("SELECT eventstore.command('t', 'a', '1', 'e', revision => 40000)", &[]).unwrap_err();
    let (code, message, _) = db_error(&error);
    assert_eq!((code.as_str(), message.as_str()), ("22023", "revision is out of range"));
    let error = c.query(
        r#"SELECT * FROM eventstore.push('[{"instance_id": "t", "aggregate_type": "a", "aggregate_id": "1",
              "event_type": "e", "revision": 40000}]'::jsonb)"#, &[]).unwrap_err();
    assert_eq!(db_error(&error).0, "22023");
}

#[test]
fn a_json_expected_sequence_beyond_bigint_is_out_of_range() {
    let mut c = connect();
    let error = c.query(
        r#"SELECT * FROM eventstore.push('[{"instance_id": "t", "aggregate_type": "a", "aggregate_id": "1",
              "event_type": "e", "expected_sequence": 92233720368547758070}]'::jsonb)"#, &[]).unwrap_err();
    let (code, message, _) = db_error(&error);
    assert_eq!((code.as_str(), message.as_str()), ("22023", "expected_sequence is out of range"));
}
