//! What applications need around push (issue 14): event ids and safe retries (G14), metadata,
//! reading an aggregate as a writer, the version conflict's own SQLSTATE (ES409) with a JSON
//! detail, and PHP's empty payload.

mod common;

use std::thread;

use common::{connect, connect_as, db_error, login_role, pid, tenant, wait_until_blocked};
use postgres::Client;

/// A fresh random event id, as text (the test client binds no uuid type).
fn new_id(client: &mut Client) -> String {
    client.query_one("SELECT gen_random_uuid()::text", &[]).unwrap().get(0)
}

fn count_events(client: &mut Client, tenant: &str) -> i64 {
    client.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id = $1", &[&tenant]).unwrap().get(0)
}

/// Every column push returns, as text, one string per row.
const RETURNED: &str = "SELECT concat_ws('|', instance_id, aggregate_type, aggregate_id, sequence, position,
                               in_tx_order, created_at, owner, id) FROM eventstore.push";

/// A composite push of two events to aggregate `a` with the given ids.
fn push_two(client: &mut Client, t: &str, ids: (&str, &str)) -> Result<Vec<String>, postgres::Error> {
    client.query(&format!("{RETURNED}(ARRAY[
        eventstore.command($1, 'order', 'a', 'placed', '{{\"n\": 1}}', id => $2::text::uuid,
                           metadata => '{{\"correlation_id\": \"c-1\"}}'),
        eventstore.command($1, 'order', 'a', 'paid', id => $3::text::uuid)])"), &[&t, &ids.0, &ids.1])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
}

/// The same two events in the JSON form.
fn push_two_json(client: &mut Client, t: &str, ids: (&str, &str)) -> Result<Vec<String>, postgres::Error> {
    let json = format!(r#"[
        {{"instance_id": "{t}", "aggregate_type": "order", "aggregate_id": "a", "event_type": "placed",
          "payload": {{"n": 1}}, "id": "{}", "metadata": {{"correlation_id": "c-1"}}}},
        {{"instance_id": "{t}", "aggregate_type": "order", "aggregate_id": "a", "event_type": "paid",
          "id": "{}"}}]"#, ids.0, ids.1);
    client.query(&format!("{RETURNED}($1::text::jsonb)"), &[&json])
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
}

#[test]
fn a_retried_push_returns_the_rows_of_the_first_and_writes_nothing_in_both_forms() {
    let mut c = connect();
    let t = tenant("replay");
    let ids = (new_id(&mut c), new_id(&mut c));
    let ids = (ids.0.as_str(), ids.1.as_str());
    let first = push_two(&mut c, &t, ids).unwrap();
    assert_eq!(first.len(), 2);
    assert!(first[0].ends_with(ids.0) && first[1].ends_with(ids.1), "push returns the ids: {first:?}");
    assert_eq!(push_two(&mut c, &t, ids).unwrap(), first, "the composite retry returns the stored rows");
    assert_eq!(push_two_json(&mut c, &t, ids).unwrap(), first, "so does the JSON retry");
    assert_eq!(count_events(&mut c, &t), 2, "and neither wrote anything");

    let t2 = tenant("replay-json");
    let ids2 = ids_for(&mut c);
    let first = push_two_json(&mut c, &t2, ids2.as_tuple()).unwrap();
    assert_eq!(push_two(&mut c, &t2, ids2.as_tuple()).unwrap(), first, "a JSON push retried in the composite form");
    assert_eq!(count_events(&mut c, &t2), 2);
}

struct Ids(String, String);

impl Ids {
    fn as_tuple(&self) -> (&str, &str) {
        (&self.0, &self.1)
    }
}

fn ids_for(c: &mut Client) -> Ids {
    Ids(new_id(c), new_id(c))
}

#[test]
fn a_partial_overlap_or_changed_content_is_refused_with_es422_and_writes_nothing() {
    let mut c = connect();
    let t = tenant("overlap");
    let ids = ids_for(&mut c);
    push_two(&mut c, &t, ids.as_tuple()).unwrap();
    let other = new_id(&mut c);
    let refused = |c: &mut Client, sql: &str| -> (String, String, String) {
        db_error(&c.query(sql, &[]).unwrap_err())
    };
    let cases = [
        ("one stored id and one new one",
         format!("SELECT * FROM eventstore.push(ARRAY[
             eventstore.command('{t}', 'order', 'a', 'placed', '{{\"n\": 1}}', id => '{}',
                                metadata => '{{\"correlation_id\": \"c-1\"}}'),
             eventstore.command('{t}', 'order', 'a', 'paid', id => '{other}')])", ids.0),
         "carries id"),
        ("a stored id and a command without one",
         format!("SELECT * FROM eventstore.push(ARRAY[
             eventstore.command('{t}', 'order', 'a', 'shipped'),
             eventstore.command('{t}', 'order', 'a', 'paid', id => '{}')])", ids.1),
         "carries no id"),
        ("the same id with another payload",
         format!("SELECT * FROM eventstore.push(ARRAY[eventstore.command('{t}', 'order', 'a', 'placed',
             '{{\"n\": 2}}', id => '{}', metadata => '{{\"correlation_id\": \"c-1\"}}')])", ids.0),
         "another payload"),
        ("the same id with other metadata",
         format!("SELECT * FROM eventstore.push(ARRAY[eventstore.command('{t}', 'order', 'a', 'placed',
             '{{\"n\": 1}}', id => '{}')])", ids.0),
         "another metadata"),
        ("the same id for another aggregate",
         format!("SELECT * FROM eventstore.push(ARRAY[eventstore.command('{t}', 'order', 'b', 'paid', id => '{}')])", ids.1),
         "another aggregate_id"),
        ("the stored events in another order",
         format!("SELECT * FROM eventstore.push(ARRAY[
             eventstore.command('{t}', 'order', 'a', 'paid', id => '{}'),
             eventstore.command('{t}', 'order', 'a', 'placed', '{{\"n\": 1}}', id => '{}',
                                metadata => '{{\"correlation_id\": \"c-1\"}}')])", ids.1, ids.0),
         "in its order"),
    ];
    for (what, sql, detail_says) in cases {
        let (code, message, detail) = refused(&mut c, &sql);
        assert_eq!(code, "ES422", "{what}: {message}");
        assert!(message.starts_with("event id ") && message.contains("was already used"), "{what}: {message}");
        assert!(detail.contains(detail_says) && detail.contains("Command "), "{what}: {detail}");
        assert_eq!(count_events(&mut c, &t), 2, "{what}: nothing written");
    }
}

#[test]
fn one_id_twice_in_a_batch_or_a_malformed_id_is_refused_with_22023() {
    let mut c = connect();
    let t = tenant("dup-id");
    let id = new_id(&mut c);
    let (code, message, detail) = db_error(&c.query(
        "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'o', 'a', 'e', id => $2::text::uuid),
                                             eventstore.command($1, 'o', 'b', 'e', id => $2::text::uuid)])",
        &[&t, &id]).unwrap_err());
    assert_eq!((code.as_str(), detail.as_str()), ("22023", "Command 2 of the batch: command 1 carries the same id."), "{message}");
    let json = format!(r#"[{{"instance_id": "{t}", "aggregate_type": "o", "aggregate_id": "a", "event_type": "e", "id": "12345"}}]"#);
    let (code, message, _) = db_error(&c.query("SELECT * FROM eventstore.push($1::text::jsonb)", &[&json]).unwrap_err());
    assert_eq!((code.as_str(), message.as_str()), ("22023", "id must be a UUID"));
    assert_eq!(count_events(&mut c, &t), 0);
}

/// Session `first` pushes in an open transaction; `second` pushes `second_sql` meanwhile and
/// must wait; then `first` commits or rolls back. Returns both results as text rows.
fn race(t: &str, second_sql: String, commit: bool) -> (Vec<String>, Result<Vec<String>, postgres::Error>) {
    let mut first = connect();
    let mut observer = connect();
    let id = new_id(&mut observer);
    let first_sql = format!("{RETURNED}(ARRAY[eventstore.command('{t}', 'order', 'a', 'placed', id => '{id}')])");
    let second_sql = second_sql.replace("{id}", &id);
    let mut tx = first.transaction().unwrap();
    let written: Vec<String> = tx.query(&first_sql, &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let mut second = connect();
    let second_pid = pid(&mut second);
    let waiter = thread::spawn(move || {
        second.query(&second_sql, &[]).map(|rows| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>())
    });
    wait_until_blocked(&mut observer, second_pid);
    if commit { tx.commit().unwrap() } else { tx.rollback().unwrap() }
    (written, waiter.join().unwrap())
}

#[test]
fn a_retry_racing_the_first_push_waits_and_returns_its_rows() {
    let t = tenant("race-same");
    let same = format!("{RETURNED}(ARRAY[eventstore.command('{t}', 'order', 'a', 'placed', id => '{{id}}')])");
    let (written, retried) = race(&t, same, true);
    assert_eq!(retried.expect("a replay, never 23505"), written);
    assert_eq!(count_events(&mut connect(), &t), 1);
}

#[test]
fn a_push_reusing_an_id_in_flight_for_another_aggregate_waits_and_gets_es422() {
    let t = tenant("race-other");
    let other = format!("{RETURNED}(ARRAY[eventstore.command('{t}', 'order', 'b', 'placed', id => '{{id}}')])");
    let (_, refused) = race(&t, other, true);
    let (code, message, detail) = db_error(&refused.expect_err("the id is taken"));
    assert_eq!(code, "ES422", "never 23505: {message}");
    assert!(detail.contains("concurrent push"), "{detail}");
    assert_eq!(count_events(&mut connect(), &t), 1, "only the first push's event");
}

#[test]
fn an_id_whose_first_push_rolled_back_is_written_by_the_next() {
    let t = tenant("race-rollback");
    let other = format!("{RETURNED}(ARRAY[eventstore.command('{t}', 'order', 'b', 'placed', id => '{{id}}')])");
    let (_, written) = race(&t, other, false);
    let written = written.expect("the id is free again");
    assert_eq!(written.len(), 1);
    assert!(written[0].contains("|b|1|"), "{written:?}");
    assert_eq!(count_events(&mut connect(), &t), 1);
}

#[test]
fn metadata_is_stored_and_handed_out_by_catchup_and_must_be_an_object() {
    let mut c = connect();
    let t = tenant("metadata");
    let id = new_id(&mut c);
    c.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'order', 'a', 'placed', id => $2::text::uuid,
               metadata => '{\"correlation_id\": \"req-7\", \"causation_id\": \"cmd-3\", \"trace_id\": \"t-1\"}')])",
        &[&t, &id]).unwrap();
    let mut tx = c.transaction().unwrap();
    let row = tx.query_one("SELECT id::text, metadata::text FROM eventstore.projection_catchup('m', $1)", &[&t]).unwrap();
    tx.commit().unwrap();
    assert_eq!(row.get::<_, String>(0), id);
    assert_eq!(row.get::<_, String>(1), r#"{"trace_id": "t-1", "causation_id": "cmd-3", "correlation_id": "req-7"}"#);

    let refused = |c: &mut Client, metadata: &str| db_error(&c.query(
        "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'order', 'a', 'e', metadata => $2::text::jsonb)])",
        &[&t, &metadata]).unwrap_err());
    let (code, message, detail) = refused(&mut c, "[1]");
    assert_eq!((code.as_str(), message.as_str()), ("22023", "metadata must be a JSON object"), "{detail}");
    let big = format!(r#"{{"x": "{}"}}"#, "y".repeat(70_000));
    assert_eq!(refused(&mut c, &big).0, "54000");
    assert_eq!(count_events(&mut c, &t), 1);
}

#[test]
fn an_empty_array_payload_is_stored_as_an_empty_object_in_both_forms() {
    let mut c = connect();
    let t = tenant("php");
    c.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'cart', 'a', 'emptied', '[]')])", &[&t]).unwrap();
    let json = format!(r#"[{{"instance_id": "{t}", "aggregate_type": "cart", "aggregate_id": "a", "event_type": "emptied", "payload": []}}]"#);
    c.query("SELECT * FROM eventstore.push($1::text::jsonb)", &[&json]).unwrap();
    let payloads: Vec<String> = c.query(
        "SELECT payload::text FROM eventstore.events WHERE instance_id = $1 ORDER BY position", &[&t])
        .unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(payloads, vec!["{}", "{}"]);
    let error = c.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'cart', 'a', 'e', '[1]')])", &[&t]).unwrap_err();
    assert_eq!(db_error(&error).0, "22023", "any other array is still refused");
}

#[test]
fn a_version_conflict_is_es409_with_a_json_detail() {
    let mut c = connect();
    let t = tenant("conflict");
    let push = "SELECT sequence FROM eventstore.push(ARRAY[eventstore.command($1, 'o', 'x', 'e'),
                                                       eventstore.command($1, 'order', 'a\"b', 'e', expected_sequence => $2)])";
    c.query(push, &[&t, &0i64]).unwrap();
    c.query(push, &[&t, &1i64]).unwrap();
    let (code, message, detail) = db_error(&c.query(push, &[&t, &1i64]).unwrap_err());
    assert_eq!(code, "ES409");
    assert_eq!(message, format!("aggregate {t}/order/a\"b is not at the expected sequence"));
    let detail: serde_json::Value = serde_json::from_str(&detail).expect("the detail is JSON");
    assert_eq!(detail, serde_json::json!({
        "command": 2, "instance_id": t, "aggregate_type": "order", "aggregate_id": "a\"b",
        "expected_sequence": 1, "actual_sequence": 2,
    }));
    assert_eq!(count_events(&mut c, &t), 4);
}

/// A login role with eventstore_writer only, bound to `t`.
fn writer_bound_to(admin: &mut Client, t: &str) -> Client {
    let role = login_role(admin, "writer", &["eventstore_writer"], "");
    let mut app = connect_as(&role);
    app.execute("SELECT set_config('eventstore.tenant', $1, false)", &[&t]).unwrap();
    app
}

#[test]
fn a_writer_reads_its_aggregate_forward_from_a_sequence_and_limited() {
    let mut admin = connect();
    let t = tenant("read");
    admin.query("SELECT * FROM eventstore.push(ARRAY(
                   SELECT eventstore.command($1, 'order', CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 'e' || i)
                     FROM generate_series(1, 10) i))", &[&t]).unwrap();
    let mut app = writer_bound_to(&mut admin, &t);
    let read = |app: &mut Client, sql: &str| -> Vec<String> {
        app.query(sql, &[&t]).unwrap().iter().map(|r| r.get(0)).collect()
    };
    assert_eq!(read(&mut app, "SELECT sequence || ':' || event_type FROM eventstore.read_aggregate($1, 'order', 'a')"),
        vec!["1:e2", "2:e4", "3:e6", "4:e8", "5:e10"]);
    assert_eq!(read(&mut app, "SELECT sequence || ':' || event_type FROM eventstore.read_aggregate($1, 'order', 'a', 2, 2)"),
        vec!["2:e4", "3:e6"]);
    assert_eq!(read(&mut app, "SELECT sequence::text FROM eventstore.read_aggregate($1, 'order', 'a', from_sequence => 6)"),
        Vec::<String>::new());
    assert_eq!(read(&mut app, "SELECT eventstore.aggregate_sequence($1, 'order', 'a')::text"), vec!["5"]);
    assert_eq!(read(&mut app, "SELECT eventstore.aggregate_sequence($1, 'order', 'new')::text"), vec!["0"]);
    let direct = app.query("SELECT * FROM eventstore.events", &[]).unwrap_err();
    assert_eq!(db_error(&direct).0, "42501", "the writer still has no SELECT on the table");
}

#[test]
fn reading_another_tenants_aggregate_or_with_bad_arguments_is_refused() {
    let mut admin = connect();
    let (t, other) = (tenant("read-own"), tenant("read-other"));
    admin.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'order', 'a', 'e')])", &[&other]).unwrap();
    let mut app = writer_bound_to(&mut admin, &t);
    for sql in ["SELECT * FROM eventstore.read_aggregate($1, 'order', 'a')",
                "SELECT eventstore.aggregate_sequence($1, 'order', 'a')"] {
        let (code, message, _) = db_error(&app.query(sql, &[&other]).unwrap_err());
        assert_eq!(code, "42501", "{sql}: {message}");
        assert!(message.contains("belongs to another tenant"), "{message}");
    }
    for (sql, expected) in [
        ("SELECT * FROM eventstore.read_aggregate($1, 'order', 'a', 1, 0)", ("22023", "max_count is out of range")),
        ("SELECT * FROM eventstore.read_aggregate($1, 'order', 'a', 1, 100001)", ("22023", "max_count is out of range")),
        ("SELECT * FROM eventstore.read_aggregate($1, 'order', 'a', NULL)", ("22004", "from_sequence must not be NULL")),
        ("SELECT * FROM eventstore.read_aggregate($1, 'order', '')", ("22023", "aggregate_id must not be empty")),
        ("SELECT eventstore.aggregate_sequence($1, NULL, 'a')", ("22004", "aggregate_type must not be NULL")),
    ] {
        let (code, message, _) = db_error(&app.query(sql, &[&t]).unwrap_err());
        assert_eq!((code.as_str(), message.as_str()), expected, "{sql}");
    }
}

/// A push with ids looks each id up in the index, however many ids are stored and whatever
/// plan its session cached while the index was small (the bench's pushes with ids ran 20 to 60
/// times slower than without: every push read every stored id).
#[test]
fn a_push_with_ids_reads_only_its_own_ids_from_the_index_however_many_are_stored() {
    let mut c = connect();
    let t = tenant("id-lookup");
    // The session's first pushes with ids plan the look-up while few ids are stored...
    for n in 0..8 {
        let id = new_id(&mut c);
        c.execute("SELECT count(*) FROM eventstore.push(ARRAY[
                       eventstore.command($1, 'order', 'warm', 'placed', id => $2::text::uuid)])",
                  &[&t, &id]).unwrap_or_else(|e| panic!("push {n}: {e}"));
    }
    // ...then the store gains 2000 more.
    c.execute("SELECT count(*) FROM eventstore.push(ARRAY(
                   SELECT eventstore.command($1, 'order', 'bulk-' || (g % 40), 'placed', id => gen_random_uuid())
                     FROM generate_series(1, 2000) g))", &[&t]).unwrap();
    let id = new_id(&mut c);
    let mut tx = c.transaction().unwrap();
    for form in ["ARRAY[eventstore.command($1, 'order', 'late', 'placed', id => $2::text::uuid)]",
                 "jsonb_build_array(jsonb_build_object('instance_id', $1::text, 'aggregate_type', 'order',
                      'aggregate_id', 'late', 'event_type', 'placed', 'id', $2::text))"] {
        let before: i64 = tx.query_one(
            "SELECT pg_stat_get_xact_tuples_returned('eventstore.events_id_key'::regclass)", &[]).unwrap().get(0);
        tx.execute(&format!("SELECT count(*) FROM eventstore.push({form})"), &[&t, &id]).unwrap();
        let read: i64 = tx.query_one(
            "SELECT pg_stat_get_xact_tuples_returned('eventstore.events_id_key'::regclass)", &[]).unwrap().get::<_, i64>(0) - before;
        assert!(read <= 4, "a push of one id read {read} entries of the id index ({form})");
    }
}
