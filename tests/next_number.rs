//! eventstore.next_number: gapless per scope and tenant — callers serialize, a rolled-back
//! number is handed out again, committed numbers are exactly 1..N, under READ COMMITTED and
//! REPEATABLE READ alike, with no error on valid input.

mod common;

use std::thread;

use common::{connect, connect_as, db_error, login_role, pid, tenant, wait_until_blocked};
use postgres::{Client, IsolationLevel};

fn next(client: &mut impl postgres::GenericClient, scope: &str, tenant: &str) -> i64 {
    client.query_one("SELECT eventstore.next_number($1, $2)", &[&scope, &tenant]).unwrap().get(0)
}

#[test]
fn numbers_start_at_one_per_scope_and_tenant_and_a_rollback_is_reused() {
    let (a, b) = (tenant("num-a"), tenant("num-b"));
    let mut c = connect();
    assert_eq!(next(&mut c, "invoice", &a), 1);
    assert_eq!(next(&mut c, "invoice", &a), 2);
    assert_eq!(next(&mut c, "invoice", &b), 1, "another tenant counts on its own");
    assert_eq!(next(&mut c, "order", &a), 1, "another scope counts on its own");
    let mut tx = c.transaction().unwrap();
    assert_eq!(next(&mut tx, "invoice", &a), 3);
    tx.rollback().unwrap();
    assert_eq!(next(&mut c, "invoice", &a), 3, "the rolled-back number is handed out again");
}

#[test]
fn a_second_caller_waits_for_the_first_and_continues_after_its_commit() {
    for level in [IsolationLevel::ReadCommitted, IsolationLevel::RepeatableRead, IsolationLevel::Serializable] {
        let t = tenant("num-wait");
        let mut first = connect();
        let mut second = connect();
        let second_pid = pid(&mut second);
        let mut observer = connect();
        next(&mut observer, "invoice", &t);

        let mut first_tx = first.build_transaction().isolation_level(level).start().unwrap();
        assert_eq!(next(&mut first_tx, "invoice", &t), 2);
        let t2 = t.clone();
        let waiting = thread::spawn(move || {
            let mut tx = second.build_transaction().isolation_level(level).start().unwrap();
            // The snapshot is taken before the first caller commits.
            tx.query_one("SELECT 1", &[]).unwrap();
            let n = tx.query_one("SELECT eventstore.next_number('invoice', $1)", &[&t2]).map(|r| r.get::<_, i64>(0));
            tx.commit().unwrap();
            n
        });
        wait_until_blocked(&mut observer, second_pid);
        first_tx.commit().unwrap();
        let n = waiting.join().unwrap().map_err(|e| db_error(&e));
        assert_eq!(n, Ok(3), "{level:?}: the waiter continues after the committed number, without an error");
    }
}

#[test]
fn concurrent_callers_with_rollbacks_commit_exactly_one_to_n() {
    let t = tenant("num-many");
    let workers: Vec<_> = (0..8).map(|w| {
        let t = t.clone();
        thread::spawn(move || {
            let mut c: Client = connect();
            let mut committed = Vec::new();
            for i in 0..40 {
                let mut tx = c.transaction().unwrap();
                let n = next(&mut tx, "invoice", &t);
                if (w + i) % 5 == 0 {
                    tx.rollback().unwrap();
                } else {
                    tx.commit().unwrap();
                    committed.push(n);
                }
            }
            committed
        })
    }).collect();
    let mut all: Vec<i64> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    all.sort_unstable();
    let expected: Vec<i64> = (1..=all.len() as i64).collect();
    assert_eq!(all.len(), 8 * 40 - 64, "every worker rolled back 8 of its 40 calls");
    assert_eq!(all, expected, "committed numbers are exactly 1..N: no gap, no duplicate");
}

#[test]
fn a_bound_session_numbers_only_its_own_tenant() {
    let mut admin = connect();
    let (own, other) = (tenant("num-own"), tenant("num-other"));
    let role = login_role(&mut admin, "numbers", &["eventstore_writer"], "");
    let mut app = connect_as(&role);
    app.execute("SELECT set_config('eventstore.tenant', $1, false)", &[&own]).unwrap();
    let n: i64 = app.query_one("SELECT eventstore.next_number('invoice')", &[]).unwrap().get(0);
    assert_eq!(n, 1);
    assert_eq!(next(&mut app, "invoice", &own), 2, "naming its own tenant is the same counter");
    let err = app.query("SELECT eventstore.next_number('invoice', $1)", &[&other]).unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    assert_eq!(next(&mut admin, "invoice", &other), 1, "the other tenant's counter was not touched");
}

#[test]
fn bad_arguments_are_refused_clearly() {
    let mut c = connect();
    for (sql, code) in [
        ("SELECT eventstore.next_number(NULL)", "22004"),
        ("SELECT eventstore.next_number('')", "22023"),
        ("SELECT eventstore.next_number('n', NULL)", "22004"),
        ("SELECT eventstore.next_number('n', repeat('x', 600))", "22001"),
    ] {
        assert_eq!(db_error(&c.query(sql, &[]).unwrap_err()).0, code, "{sql}");
    }
}
