//! Running a call and checking it: bad input fails with a SQLSTATE it calls for (never XX000,
//! never class 53, 57 or 58) and writes nothing; good input writes exactly what was predicted;
//! every aggregate stays gapless; the server log shows no crash.

use std::collections::{BTreeMap, HashMap};

use postgres::{Client, Row, Statement};

use crate::call::*;
use crate::common;
use crate::generate::Generator;
use crate::render::Arguments;

pub(crate) struct Session {
    pub(crate) client: Client,
    pub(crate) push: HashMap<Form, Statement>,
    pub(crate) count: Statement,
    pub(crate) stored: Statement,
}

impl Session {
    pub(crate) fn open() -> Session {
        let mut client = common::connect();
        // A hang becomes a 57014, which the checks refuse.
        client.batch_execute("SET statement_timeout = '60s'").unwrap();
        let push = FORMS.iter().map(|&form| (form, client.prepare(&form.sql()).unwrap())).collect();
        let count = client.prepare("SELECT count(*) FROM eventstore.events WHERE instance_id = ANY($1::text[])").unwrap();
        let stored = client.prepare(
            "SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.revision,
                    e.creator, e.owner, e.in_tx_order, e.payload IS NOT DISTINCT FROM x.payload::jsonb
               FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS x(position, payload, n)
               LEFT JOIN eventstore.events e ON e.position = x.position
              ORDER BY x.n").unwrap();
        Session { client, push, count, stored }
    }

    pub(crate) fn count(&mut self, instance_ids: &[String]) -> i64 {
        self.client.query_one(&self.count, &[&instance_ids]).unwrap().get(0)
    }

    pub(crate) fn push(&mut self, form: Form, arguments: &Arguments) -> Result<Vec<Row>, postgres::Error> {
        let statement = &self.push[&form];
        match arguments {
            Arguments::Composite { fields, nulls, batch_is_null } => self.client.query(statement, &[
                &fields[0], &fields[1], &fields[2], &fields[3], &fields[4], &fields[5], &fields[6],
                &fields[7], &fields[8], nulls, batch_is_null,
            ]),
            Arguments::One(argument) => self.client.query(statement, &[argument]),
        }
    }
}

pub(crate) struct Violation {
    pub(crate) kind: &'static str,
    pub(crate) what: String,
    pub(crate) call: String,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) calls: usize,
    pub(crate) commands: usize,
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
    pub(crate) events_written: i64,
    pub(crate) codes: BTreeMap<String, usize>,
    pub(crate) violations: Vec<Violation>,
}

impl Tally {
    pub(crate) fn violation(&mut self, kind: &'static str, what: String, call: &Call) {
        self.violations.push(Violation { kind, what, call: call.summary() });
    }
}

pub(crate) fn run_one(session: &mut Session, generator: &mut Generator, call: &Call, model: &mut Model, tally: &mut Tally) {
    let arguments = generator.render(call);
    let before = session.count(&call.instance_ids);
    let result = session.push(call.form, &arguments);
    drop(arguments);
    tally.calls += 1;
    tally.commands += call.commands.len();
    match result {
        Ok(rows) => {
            tally.succeeded += 1;
            *tally.codes.entry("ok".into()).or_default() += 1;
            check_success(session, call, &rows, before, model, tally);
        }
        Err(error) => {
            tally.failed += 1;
            check_failure(session, call, &error, before, tally);
        }
    }
}

pub(crate) fn check_success(session: &mut Session, call: &Call, rows: &[Row], before: i64, model: &mut Model, tally: &mut Tally) {
    if let Expect::Failure(codes) = call.expect() {
        tally.violation("bad input accepted", format!("expected one of {codes:?}, the push succeeded"), call);
    }
    let after = session.count(&call.instance_ids);
    tally.events_written += after - before;
    if after - before != call.commands.len() as i64 || rows.len() != call.commands.len() {
        tally.violation("wrong number of events", format!(
            "{} commands, {} rows returned, {} rows written", call.commands.len(), rows.len(), after - before), call);
    }
    let mut problems = Vec::new();
    let positions: Vec<i64> = rows.iter().map(|r| r.get(4)).collect();
    if !positions.windows(2).all(|w| w[0] < w[1]) {
        problems.push("positions do not grow in command order".to_string());
    }
    for (k, row) in rows.iter().enumerate() {
        let in_tx_order: i32 = row.get(5);
        if in_tx_order != k as i32 {
            problems.push(format!("row {k} has in_tx_order {in_tx_order}"));
        }
        let Some(predicted) = call.commands.get(k).and_then(|c| c.predicted.as_ref()) else { continue };
        let returned = (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2), row.get::<_, i64>(3), row.get::<_, String>(6));
        let expected = (predicted.instance_id.clone(), predicted.aggregate_type.clone(), predicted.aggregate_id.clone(),
            predicted.sequence, predicted.owner.clone());
        if returned != expected {
            problems.push(format!("command {}: returned {:?}, expected {:?}", k + 1, abbreviate(&returned), abbreviate(&expected)));
        }
    }
    let payloads: Vec<Option<String>> = call.commands.iter()
        .map(|c| c.predicted.as_ref().and_then(|p| p.payload.clone()))
        .collect();
    let stored = session.client.query(&session.stored, &[&positions, &payloads]).unwrap();
    for (k, row) in stored.iter().enumerate() {
        let Some(predicted) = call.commands.get(k).and_then(|c| c.predicted.as_ref()) else { continue };
        let Some(instance_id) = row.get::<_, Option<String>>(0) else {
            problems.push(format!("command {}: no event at position {}", k + 1, positions[k]));
            continue;
        };
        let got = Predicted {
            instance_id,
            aggregate_type: row.get(1),
            aggregate_id: row.get(2),
            sequence: row.get(3),
            event_type: row.get(4),
            revision: row.get(5),
            creator: row.get(6),
            owner: row.get(7),
            payload: predicted.payload.clone(),
        };
        if &got != predicted {
            problems.push(format!("command {}: stored {:?}, expected {:?}", k + 1, abbreviate(&got), abbreviate(predicted)));
        }
        if row.get::<_, i32>(8) != k as i32 {
            problems.push(format!("command {}: stored in_tx_order {}", k + 1, row.get::<_, i32>(8)));
        }
        if !row.get::<_, bool>(9) {
            problems.push(format!("command {}: the stored payload differs from the one sent", k + 1));
        }
    }
    if !problems.is_empty() {
        let more = if problems.len() > 3 { format!(" (and {} more)", problems.len() - 3) } else { String::new() };
        tally.violation("stored events differ", format!("{}{more}", problems[..problems.len().min(3)].join("; ")), call);
    }
    for row in rows {
        model.insert((row.get(0), row.get(1), row.get(2)), (row.get(3), row.get(6)));
    }
}

pub(crate) fn abbreviate(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    if text.len() > 300 { format!("{}…", truncate(&text, 300)) } else { text }
}

pub(crate) fn check_failure(session: &mut Session, call: &Call, error: &postgres::Error, before: i64, tally: &mut Tally) {
    let Some(db) = error.as_db_error() else {
        *tally.codes.entry("connection lost".into()).or_default() += 1;
        tally.violation("connection lost", error.to_string(), call);
        *session = Session::open();
        if session.count(&call.instance_ids) != before {
            tally.violation("failed call wrote rows", "rows appeared after the connection was lost".into(), call);
        }
        return;
    };
    let code = db.code().code();
    *tally.codes.entry(code.to_string()).or_default() += 1;
    let what = format!("{code}: {} (detail: {})", truncate(db.message(), 200), truncate(db.detail().unwrap_or(""), 200));
    if FORBIDDEN_CLASSES.iter().any(|class| code.starts_with(class)) {
        tally.violation("forbidden SQLSTATE", what.clone(), call);
    } else {
        match call.expect() {
            Expect::Success => tally.violation("good input refused", what.clone(), call),
            Expect::Failure(codes) if !codes.contains(&code) => {
                tally.violation("unexpected SQLSTATE", format!("expected one of {codes:?}, got {what}"), call)
            }
            Expect::Failure(_) => {}
        }
    }
    if db.routine() == Some("eventstore") && (db.message().is_empty() || db.detail().unwrap_or("").is_empty()) {
        tally.violation("error without message or detail", what.clone(), call);
    }
    if code == MISMATCH && !db.detail().unwrap_or("").contains("\"actual_sequence\"") {
        tally.violation("ES409 without the expected and actual sequence", what.clone(), call);
    }
    if let Err(e) = session.client.query_one("SELECT 1", &[]) {
        tally.violation("connection lost after the error", e.to_string(), call);
        *session = Session::open();
    }
    let after = session.count(&call.instance_ids);
    if after != before {
        tally.violation("failed call wrote rows", format!("{} rows before, {after} after: {what}", before), call);
    }
}

/// Every aggregate this run wrote has sequences 1..n in position order.
pub(crate) fn check_gapless(session: &mut Session, run_tag: &str) -> (i64, i64, i64) {
    let row = session.client.query_one(
        "SELECT count(*), count(*) FILTER (WHERE sequence <> rank),
                count(DISTINCT (instance_id, aggregate_type, aggregate_id))
           FROM (SELECT instance_id, aggregate_type, aggregate_id, sequence,
                        row_number() OVER (PARTITION BY instance_id, aggregate_type, aggregate_id ORDER BY position) AS rank
                   FROM eventstore.events WHERE starts_with(instance_id, $1)) s",
        &[&run_tag],
    ).unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The server log's size, when the cluster writes `server.log` in its data directory (as
/// scripts/cluster.sh does) and we may read it.
pub(crate) fn server_log_size(client: &mut Client) -> Option<i64> {
    client.query_one("SELECT (pg_stat_file('server.log', true)).size", &[]).ok()?.get(0)
}

pub(crate) fn server_log_crashes(client: &mut Client, from: i64) -> Option<Vec<String>> {
    let size = server_log_size(client)?;
    let bytes: Vec<u8> = client
        .query_one("SELECT pg_read_binary_file('server.log', $1, $2)", &[&from, &(size - from)])
        .ok()?
        .get(0);
    let text = String::from_utf8_lossy(&bytes);
    Some(text.lines()
        .filter(|l| ["terminated by signal", "PANIC:", "was terminated by exception", "server processes terminated",
                     "database system was interrupted", "in recovery mode"].iter().any(|m| l.contains(m)))
        .map(|l| truncate(l, 200))
        .collect())
}
