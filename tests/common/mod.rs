//! Shared by the integration tests: connections to the scratch cluster scripts/test starts
//! (EVENTSTORE_TEST_URL), and tenant names unique to each test so that tests never see each
//! other's events.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};

pub fn url() -> String {
    std::env::var("EVENTSTORE_TEST_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5498 user=postgres dbname=eventstore".into())
}

pub fn connect() -> Client {
    Client::connect(&url(), NoTls).expect("scripts/test starts the scratch cluster")
}

/// A connection as another role (trust authentication on the scratch cluster).
pub fn connect_as(role: &str) -> Client {
    let url = url();
    let url = if url.contains("user=") {
        url.split_whitespace()
            .map(|p| if p.starts_with("user=") { format!("user={role}") } else { p.to_string() })
            .collect::<Vec<_>>().join(" ")
    } else {
        format!("{url} user={role}")
    };
    Client::connect(&url, NoTls).expect("the role can log in")
}

/// A new LOGIN role that is a member of `roles`, with a name no other test uses.
pub fn login_role(admin: &mut Client, prefix: &str, roles: &[&str], attributes: &str) -> String {
    let name = tenant(prefix).replace('-', "_");
    let member_of = if roles.is_empty() { String::new() } else { format!("IN ROLE {}", roles.join(", ")) };
    admin.batch_execute(&format!("CREATE ROLE {name} LOGIN {attributes} {member_of}")).unwrap();
    name
}

/// A tenant name no other test (or earlier run) uses.
pub fn tenant(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{nanos}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The SQLSTATE, message and detail of a failed statement.
pub fn db_error(error: &postgres::Error) -> (String, String, String) {
    let db = error.as_db_error().unwrap_or_else(|| panic!("not a database error: {error}"));
    (db.code().code().to_string(), db.message().to_string(), db.detail().unwrap_or("").to_string())
}

/// Pushes one event with the composite form; returns (sequence, position).
pub fn push_one(client: &mut impl postgres::GenericClient, tenant: &str, aggregate: &str, event: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT sequence, position FROM eventstore.push(ARRAY[eventstore.command($1, 'thing', $2, $3)])",
            &[&tenant, &aggregate, &event],
        )
        .expect("push succeeds");
    (row.get(0), row.get(1))
}

/// The pid of the backend behind a client.
pub fn pid(client: &mut Client) -> i32 {
    client.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

/// Waits (up to 10 s) until backend `pid` is blocked on a lock; panics otherwise.
pub fn wait_until_blocked(observer: &mut Client, pid: i32) {
    for _ in 0..1000 {
        let waiting: bool = observer
            .query_one("SELECT wait_event_type IS NOT DISTINCT FROM 'Lock' FROM pg_stat_activity WHERE pid = $1", &[&pid])
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("backend {pid} never waited on a lock");
}
