//! Roles, privileges and tenant isolation (README "Security and tenancy"): the three NOLOGIN
//! roles with exactly their documented privileges and nothing for PUBLIC; every function's
//! search_path pinned; a session bound to a tenant (eventstore.tenant) sees, pushes, numbers
//! and catches up only its tenant, and is refused any other with 42501, writing nothing; an
//! operator's BYPASSRLS role sees every tenant.

mod common;

use std::collections::BTreeSet;

use common::{connect, connect_as, db_error, login_role, push_one, tenant};
use postgres::Client;

/// Every privilege on an object of schema eventstore (and on the schema) held by PUBLIC or one
/// of the three roles, as "grantee privilege object".
fn granted(client: &mut Client) -> BTreeSet<String> {
    let rows = client.query(
        "WITH objects AS (
            SELECT 'schema eventstore' AS object, nspacl AS acl, nspowner AS owner
              FROM pg_namespace WHERE nspname = 'eventstore'
            UNION ALL
            SELECT 'relation ' || c.relname, coalesce(c.relacl, acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::\"char\", c.relowner)), c.relowner
              FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('r', 'v', 'S')
            UNION ALL
            SELECT 'function ' || p.oid::regprocedure::text, coalesce(p.proacl, acldefault('f'::\"char\", p.proowner)), p.proowner
              FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace
            UNION ALL
            SELECT 'type ' || t.typname, coalesce(t.typacl, acldefault('T'::\"char\", t.typowner)), t.typowner
              FROM pg_type t WHERE t.typnamespace = 'eventstore'::regnamespace AND t.typtype IN ('c', 'b', 'e', 'd') AND t.typcategory <> 'A'
              AND NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c'))
         SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END || ' '
                || a.privilege_type || ' ' || o.object
           FROM objects o, aclexplode(o.acl) a
          WHERE a.grantee = 0 OR a.grantee::regrole::text LIKE 'eventstore\\_%'",
        &[],
    ).unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

#[test]
fn the_roles_have_exactly_their_documented_privileges_and_public_has_none() {
    let mut admin = connect();
    let roles: Vec<(String, bool)> = admin.query(
        "SELECT rolname::text, rolcanlogin FROM pg_roles WHERE rolname LIKE 'eventstore\\_%' ORDER BY 1", &[],
    ).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(roles, vec![
        ("eventstore_projector".to_string(), false),
        ("eventstore_reader".to_string(), false),
        ("eventstore_writer".to_string(), false),
    ]);
    let expected: BTreeSet<String> = [
        "eventstore_writer USAGE schema eventstore",
        "eventstore_reader USAGE schema eventstore",
        "eventstore_projector USAGE schema eventstore",
        "eventstore_writer EXECUTE function eventstore.horizon_mode()",
        "eventstore_reader EXECUTE function eventstore.horizon_mode()",
        "eventstore_projector EXECUTE function eventstore.horizon_mode()",
        "eventstore_writer EXECUTE function eventstore.read_aggregate(text,text,text,bigint,integer)",
        "eventstore_reader EXECUTE function eventstore.read_aggregate(text,text,text,bigint,integer)",
        "eventstore_projector EXECUTE function eventstore.read_aggregate(text,text,text,bigint,integer)",
        "eventstore_writer EXECUTE function eventstore.aggregate_sequence(text,text,text)",
        "eventstore_reader EXECUTE function eventstore.aggregate_sequence(text,text,text)",
        "eventstore_projector EXECUTE function eventstore.aggregate_sequence(text,text,text)",
        "eventstore_writer USAGE type command",
        "eventstore_writer USAGE type pushed",
        "eventstore_writer EXECUTE function eventstore.command(text,text,text,text,jsonb,integer,text,text,bigint,uuid,jsonb)",
        "eventstore_writer EXECUTE function eventstore.checked_revision(integer)",
        "eventstore_writer EXECUTE function eventstore.push(eventstore.command[])",
        "eventstore_writer EXECUTE function eventstore.push(jsonb)",
        "eventstore_writer EXECUTE function eventstore.push(text)",
        "eventstore_writer EXECUTE function eventstore.push(text,eventstore.command[])",
        "eventstore_writer EXECUTE function eventstore.push(text,jsonb)",
        "eventstore_writer EXECUTE function eventstore.push(text,text)",
        "eventstore_writer EXECUTE function eventstore.lock_writer(text)",
        "eventstore_writer EXECUTE function eventstore.next_number(text,text)",
        "eventstore_reader SELECT relation events",
        "eventstore_reader SELECT relation projection_states",
        "eventstore_reader SELECT relation projection_status",
        "eventstore_projector EXECUTE function eventstore.projection_catchup(text,text,integer,text[],text[],boolean)",
        "eventstore_projector EXECUTE function eventstore.lock_projection(text,text,boolean)",
        "eventstore_projector EXECUTE function eventstore.await_writers(text)",
        "eventstore_projector EXECUTE function eventstore.wait_for_events(text,text,integer)",
        "eventstore_projector EXECUTE function eventstore.tenant_catchup(text,text,integer,text[],text[],boolean)",
        "eventstore_projector EXECUTE function eventstore.tenant_lock_projection(text,text,boolean)",
        "eventstore_projector EXECUTE function eventstore.tenant_await_writers(text)",
        "eventstore_projector EXECUTE function eventstore.tenant_wait_for_events(text,text,integer)",
        "eventstore_projector SELECT relation projection_states",
        "eventstore_projector DELETE relation projection_states",
        // Partitioned projections (G12).
        "eventstore_reader SELECT relation projections",
        "eventstore_reader EXECUTE function eventstore.partition_of(text,text,text,integer)",
        "eventstore_reader EXECUTE function eventstore.projection_lock_key(text,text,integer)",
        "eventstore_projector SELECT relation projections",
        "eventstore_projector EXECUTE function eventstore.partition_of(text,text,text,integer)",
        "eventstore_projector EXECUTE function eventstore.projection_lock_key(text,text,integer)",
        "eventstore_projector EXECUTE function eventstore.set_partitions(text,text,integer)",
        "eventstore_projector EXECUTE function eventstore.partition_catchup(text,text,integer,text[],text[],boolean)",
        // Poison events (G13) and rebuilds.
        "eventstore_reader SELECT relation parked_events",
        "eventstore_reader SELECT relation projection_failures",
        "eventstore_projector SELECT relation parked_events",
        "eventstore_projector SELECT relation projection_failures",
        "eventstore_projector EXECUTE function eventstore.set_poison_policy(text,text,integer,boolean)",
        "eventstore_projector EXECUTE function eventstore.projection_failed(text,text,integer,text,bigint)",
        "eventstore_projector EXECUTE function eventstore.retry_parked(text,text,bigint[])",
        "eventstore_projector EXECUTE function eventstore.discard_parked(text,text,bigint[])",
        "eventstore_projector EXECUTE function eventstore.reset_projection(text,text,integer,bigint)",
    ].iter().map(|s| s.to_string()).collect();
    let actual = granted(&mut admin);
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing: {missing:#?}\nextra: {extra:#?}");
}

#[test]
fn every_function_pins_its_search_path_or_is_bound_at_creation() {
    let mut admin = connect();
    let unpinned: Vec<String> = admin.query(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
          WHERE p.pronamespace = 'eventstore'::regnamespace
            AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
            AND p.prosqlbody IS NULL", &[],
    ).unwrap().iter().map(|r| r.get(0)).collect();
    assert!(unpinned.is_empty(), "functions without a pinned search_path: {unpinned:?}");
    let count: i64 = admin.query_one(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'eventstore'::regnamespace", &[]).unwrap().get(0);
    assert!(count >= 10, "the check saw the functions ({count})");
}

#[test]
fn create_extension_in_a_second_database_reuses_the_roles() {
    let mut admin = connect();
    let database = tenant("second").replace('-', "_");
    admin.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    let url = common::url().replace("dbname=eventstore", &format!("dbname={database}"));
    let mut second = Client::connect(&url, postgres::NoTls).unwrap();
    second.batch_execute("CREATE EXTENSION eventstore").unwrap();
    assert_eq!(granted(&mut second), granted(&mut admin), "the same grants in both databases");
    let roles: i64 = second.query_one(
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'eventstore\\_%'", &[]).unwrap().get(0);
    assert_eq!(roles, 3);
    second.batch_execute("DROP EXTENSION eventstore; CREATE EXTENSION eventstore").unwrap();
    drop(second);
    admin.batch_execute(&format!("DROP DATABASE {database}")).unwrap();
}

/// A login role in all three roles, and two tenants with events in each.
fn tenant_bound_setup() -> (Client, String, String, String) {
    let mut admin = connect();
    let role = login_role(&mut admin, "app",
        &["eventstore_writer", "eventstore_reader", "eventstore_projector"], "");
    let (a, b) = (tenant("iso-a"), tenant("iso-b"));
    for t in [&a, &b] {
        push_one(&mut admin, t, "x", "created");
        push_one(&mut admin, t, "y", "created");
    }
    (admin, role, a, b)
}

fn bind(client: &mut Client, tenant: &str) {
    client.execute("SELECT set_config('eventstore.tenant', $1, false)", &[&tenant]).unwrap();
}

fn instances(client: &mut Client, sql: &str) -> BTreeSet<String> {
    client.query(sql, &[]).unwrap().iter().map(|r| r.get::<_, String>(0)).collect()
}

#[test]
fn a_session_bound_to_a_tenant_reads_only_its_tenant() {
    let (_admin, role, a, b) = tenant_bound_setup();
    let mut app = connect_as(&role);
    let scoped = format!("SELECT instance_id FROM eventstore.events WHERE instance_id IN ('{a}', '{b}')");
    assert!(instances(&mut app, &scoped).is_empty(), "unbound: no rows at all");
    bind(&mut app, &a);
    assert_eq!(instances(&mut app, &scoped), BTreeSet::from([a.clone()]));
    let rows: i64 = app.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id <> $1", &[&a]).unwrap().get(0);
    assert_eq!(rows, 0, "no other tenant's event is visible");
}

#[test]
fn a_push_into_another_tenant_is_refused_with_42501_and_writes_nothing() {
    let (mut admin, role, a, b) = tenant_bound_setup();
    let mut app = connect_as(&role);
    let before: i64 = admin.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id IN ($1, $2)", &[&a, &b]).unwrap().get(0);

    let unbound = app.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'thing', 'z', 'e')])", &[&a]).unwrap_err();
    let (code, message, _) = db_error(&unbound);
    assert_eq!((code.as_str(), message.as_str()), ("42501", "this session is not bound to a tenant"));

    bind(&mut app, &a);
    let mixed = app.query(
        "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'thing', 'z', 'e'), eventstore.command($2, 'thing', 'z', 'e')])",
        &[&a, &b]).unwrap_err();
    let (code, message, detail) = db_error(&mixed);
    assert_eq!(code, "42501");
    assert!(message.contains(&b) && detail.contains("command 2") && detail.contains(&a), "{message} / {detail}");
    let json = format!(r#"[{{"instance_id": "{b}", "aggregate_type": "thing", "aggregate_id": "z", "event_type": "e"}}]"#);
    assert_eq!(db_error(&app.query("SELECT * FROM eventstore.push($1::text::jsonb)", &[&json]).unwrap_err()).0, "42501");
    assert_eq!(db_error(&app.query("SELECT eventstore.lock_writer($1)", &[&b]).unwrap_err()).0, "42501");

    let after: i64 = admin.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id IN ($1, $2)", &[&a, &b]).unwrap().get(0);
    assert_eq!(after, before, "nothing was written");
    assert_eq!(push_one(&mut app, &a, "z", "own tenant").0, 1, "its own tenant is fine");
}

#[test]
fn a_global_catchup_of_a_bound_session_is_its_tenants_catchup() {
    let (mut admin, role, a, b) = tenant_bound_setup();
    let projection = tenant("global-in-tenant");
    let mut app = connect_as(&role);
    bind(&mut app, &a);
    let handed = instances(&mut app, &format!("SELECT instance_id FROM eventstore.projection_catchup('{projection}')"));
    assert_eq!(handed, BTreeSet::from([a.clone()]), "only its tenant's events");
    let states: Vec<(Option<String>, i64)> = admin.query(
        "SELECT instance_id, checkpoint FROM eventstore.projection_states WHERE projection = $1", &[&projection],
    ).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].0.as_deref(), Some(a.as_str()), "the checkpoint is the tenant's, not the global one");

    // The same projection named with the tenant continues from that checkpoint.
    push_one(&mut admin, &a, "x", "later");
    push_one(&mut admin, &b, "x", "later");
    let next: Vec<(String, String)> = app.query(
        "SELECT instance_id, event_type FROM eventstore.projection_catchup($1, $2)", &[&projection, &a],
    ).unwrap().iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(next, vec![(a.clone(), "later".to_string())]);

    // Another tenant's projection is refused; the operator's global catch-up sees both.
    let err = app.query("SELECT * FROM eventstore.projection_catchup($1, $2)", &[&projection, &b]).unwrap_err();
    assert_eq!(db_error(&err).0, "42501");
    assert_eq!(db_error(&app.query("SELECT eventstore.lock_projection($1, $2)", &[&projection, &b]).unwrap_err()).0, "42501");
    let mut seen = BTreeSet::new();
    loop {   // the whole log, batch by batch (other tests write to it too)
        let batch = admin.query(&format!(
            "SELECT instance_id FROM eventstore.projection_catchup('{projection}', NULL, 100000)"), &[]).unwrap();
        if batch.is_empty() {
            break;
        }
        seen.extend(batch.iter().map(|r| r.get::<_, String>(0)).filter(|i| *i == a || *i == b));
    }
    assert_eq!(seen, BTreeSet::from([a.clone(), b.clone()]));

    // Status shows the bound session its own rows only.
    let status = instances(&mut app, &format!(
        "SELECT coalesce(instance_id, 'NULL') FROM eventstore.projection_status WHERE projection = '{projection}'"));
    assert_eq!(status, BTreeSet::from([a.clone()]));
}

#[test]
fn an_operator_role_with_bypassrls_sees_every_tenant() {
    let (mut admin, _role, a, b) = tenant_bound_setup();
    let operator = login_role(&mut admin, "ops", &["eventstore_reader"], "BYPASSRLS");
    let mut ops = connect_as(&operator);
    let seen = instances(&mut ops, &format!("SELECT instance_id FROM eventstore.events WHERE instance_id IN ('{a}', '{b}')"));
    assert_eq!(seen, BTreeSet::from([a, b]));
}

#[test]
fn roles_get_only_what_they_are_granted() {
    let mut admin = connect();
    let t = tenant("grants");
    let writer = login_role(&mut admin, "writer", &["eventstore_writer"], "");
    let stranger = login_role(&mut admin, "stranger", &[], "");

    let mut w = connect_as(&writer);
    bind(&mut w, &t);
    assert_eq!(push_one(&mut w, &t, "a", "e").0, 1, "a writer pushes");
    assert_eq!(w.query_one("SELECT eventstore.next_number('n')", &[]).unwrap().get::<_, i64>(0), 1);
    for refused in [
        "SELECT count(*) FROM eventstore.events",
        "INSERT INTO eventstore.events SELECT * FROM eventstore.events LIMIT 0",
        "SELECT nextval('eventstore.position_seq')",
        "SELECT * FROM eventstore.projection_catchup('p')",
        "UPDATE eventstore.counters SET value = 0",
    ] {
        let err = w.query(refused, &[]).unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{refused}");
    }

    let mut s = connect_as(&stranger);
    bind(&mut s, &t);
    for refused in [
        "SELECT * FROM eventstore.push(ARRAY[eventstore.command('x', 'thing', 'a', 'e')])",
        "SELECT count(*) FROM eventstore.events",
        "SELECT eventstore.next_number('n')",
    ] {
        let err = s.query(refused, &[]).unwrap_err();
        assert_eq!(db_error(&err).0, "42501", "{refused}");
    }
}

#[test]
fn lock_writer_as_the_first_call_of_a_transaction_works_for_a_writer_role() {
    // With eventstore preloaded, lock_writer registers the transaction with the horizon and
    // reads the last position: as the owner, not as the caller (no privilege on the sequence).
    let (_admin, role, a, _) = tenant_bound_setup();
    let mut app = connect_as(&role);
    bind(&mut app, &a);
    let mut tx = app.transaction().unwrap();
    tx.execute("SELECT eventstore.lock_writer($1)", &[&a]).unwrap();
    push_one(&mut tx, &a, "z", "e");
    tx.commit().unwrap();
    drop(app);
}

/// Two sessions bound to the tenants `a` and `b`.
fn two_bound_sessions(a: &str, b: &str) -> (Client, Client, String) {
    let mut admin = connect();
    let role = login_role(&mut admin, "wall",
        &["eventstore_writer", "eventstore_reader", "eventstore_projector"], "");
    let (mut first, mut second) = (connect_as(&role), connect_as(&role));
    bind(&mut first, a);
    bind(&mut second, b);
    (first, second, role)
}

#[test]
fn names_that_join_to_the_same_text_never_share_a_lock_across_tenants() {
    // Tenant "<t>/x" holds projection "y" and aggregate ("y", "z"); tenant "<t>" uses
    // projection "x/y" and aggregate type "x/y" id "z". Joined with '/', both read "<t>/x/y".
    let t = tenant("wall");
    let other = format!("{t}/x");
    let (mut victim, mut attacker, _) = two_bound_sessions(&t, &other);
    victim.batch_execute("SET statement_timeout = '3s'").unwrap();
    let mut held = attacker.transaction().unwrap();
    assert!(held.query_one("SELECT eventstore.lock_projection('y')", &[]).unwrap().get::<_, bool>(0));
    held.query("SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'y', 'z', 'e')])", &[&other]).unwrap();

    let mut tx = victim.transaction().unwrap();
    let got: bool = tx.query_one("SELECT eventstore.lock_projection('x/y')", &[]).unwrap().get(0);
    assert!(got, "the other tenant's lock is not this tenant's");
    tx.rollback().unwrap();
    let pushed = victim.query(
        "SELECT * FROM eventstore.push(ARRAY[eventstore.command($1, 'x/y', 'z', 'e')])", &[&t]).unwrap();
    assert_eq!(pushed.len(), 1, "the push did not wait for the other tenant's aggregate lock");
    held.rollback().unwrap();
}

#[test]
fn a_role_confined_to_its_database_by_connect_privilege_cannot_push_elsewhere() {
    // The documented recipe: roles are cluster-wide, so confine a login role to its database
    // with CONNECT (REVOKE from PUBLIC, GRANT to the roles that may connect).
    let mut admin = connect();
    let other_database = tenant("otherdb").replace('-', "_");
    admin.batch_execute(&format!("CREATE DATABASE {other_database}")).unwrap();
    let role = login_role(&mut admin, "confined", &["eventstore_writer"], "");
    admin.batch_execute(&format!("REVOKE CONNECT ON DATABASE {other_database} FROM PUBLIC")).unwrap();

    let url = common::url();
    let elsewhere = url.split_whitespace()
        .map(|p| if p.starts_with("dbname=") { format!("dbname={other_database}") } else { p.to_string() })
        .map(|p| if p.starts_with("user=") { format!("user={role}") } else { p })
        .collect::<Vec<_>>().join(" ");
    let refused = postgres::Client::connect(&elsewhere, postgres::NoTls).err().expect("connection refused");
    assert_eq!(db_error(&refused).0, "42501", "no CONNECT privilege on the other database");
    let mut home = connect_as(&role);
    let own = tenant("confined");
    bind(&mut home, &own);
    assert_eq!(push_one(&mut home, &own, "a", "e").0, 1, "its own database still works");
    drop(home);
    admin.batch_execute(&format!("DROP DATABASE {other_database}")).unwrap();
    admin.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

