//! Writers: the load. Each writer pushes batches of 1–5 events through `eventstore.push` to
//! a few hot aggregates (every writer contends for them) and many cold ones, across several
//! instances (sometimes several in one batch), rolls back about one push in ten, and holds
//! some transactions open for hundreds of milliseconds after the push — the slow writer that
//! a catch-up without a barrier skips past (G4).
//!
//! With --partitions about three events in a thousand are poison: the payload says
//! `"poison": true`, and the partitioned projections' handler fails on such an event every time
//! (workers.rs), so that it must end up parked (G13).
//!
//! With --citus each push is for one tenant, through push(instance_id, commands) in its JSON text
//! form, the tenant and the commands bound parameters: Citus delegates the call to the node of
//! the tenant's shard.
//!
//! Every push is remembered with what the client knows of its fate: committed (COMMIT
//! succeeded), never committed (rolled back, or failed before COMMIT was sent) or unknown (the
//! connection died during COMMIT). The detector holds the table to it (G1, durability).

use std::time::{Duration, Instant};

use crate::db::{Ended, Link, Tally};
use crate::rng::Rng;
use crate::Run;

/// The instances (tenants); "system" plays the instance of global aggregates.
pub const INSTANCES: [&str; 4] = ["system", "t1", "t2", "t3"];
pub const AGGREGATE_TYPES: [&str; 3] = ["user", "org", "grant"];
pub const EVENT_TYPES: [&str; 3] = ["added", "changed", "removed"];

const HOT_AGGREGATES: u64 = 2;
const COLD_AGGREGATES: u64 = 2000;
const HOT_PERCENT: u64 = 30;
const SAME_AGGREGATE_PERCENT: u64 = 25;
const OTHER_INSTANCE_PERCENT: u64 = 15;
const MAX_BATCH: u64 = 5;
const ROLLBACK_PERCENT: u64 = 10;
const HOLD_OPEN_PERCENT: u64 = 6;
const HOLD_OPEN_MS: (u64, u64) = (100, 500);
/// With --partitions: poison events per thousand.
const POISON_PER_MILLE: u64 = 3;

/// The command[] form, built in SQL from parallel arrays in the batch's order.
const PUSH: &str = "\
SELECT p.instance_id, p.aggregate_type, p.aggregate_id, p.sequence, p.position
  FROM eventstore.push(ARRAY(
       SELECT eventstore.command(c.i, c.t, c.a, c.e, jsonb_build_object('writer', $5::int, 'n', c.n)
                  || CASE WHEN c.p THEN jsonb_build_object('poison', true) ELSE '{}' END)
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $6::bool[])
              WITH ORDINALITY AS c(i, t, a, e, p, n)
        ORDER BY c.n)) AS p";

/// The tenant-first form (--citus): one tenant, its commands as a JSON array. Citus delegates
/// only `SELECT ... FROM f(...)` whose arguments are constants, which bound parameters are.
const TENANT_PUSH: &str = "\
SELECT p.instance_id, p.aggregate_type, p.aggregate_id, p.sequence, p.position
  FROM eventstore.push($1::text, $2::text) AS p";

/// One event as push returned it.
pub struct Written {
    pub position: i64,
    pub aggregate: String,
    pub sequence: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Committed,
    NeverCommitted,
    Unknown,
}

pub struct Push {
    pub events: Vec<Written>,
    pub outcome: Outcome,
    /// How long the push statement took (lock waits included: a barrier stalls writers).
    pub latency: Duration,
}

pub struct WriterReport {
    pub pushes: Vec<Push>,
    pub tally: Tally,
}

/// "instance/type/id": how the harness names an aggregate everywhere.
pub fn aggregate_name(instance_id: &str, aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{instance_id}/{aggregate_type}/{aggregate_id}")
}

pub fn writer(run: &Run, id: usize) -> Result<WriterReport, String> {
    let mut rng = Rng::for_thread(run.options.seed, 100 + id as u64);
    let mut link = Link::new(run, format!("stress-writer-{id}"));
    let mut pushes = Vec::new();
    while !run.stopping() {
        let batch = plan_batch(&mut rng, if run.options.partitions { POISON_PER_MILLE } else { 0 },
                               run.options.citus);
        link.client()?;
        if let Some(push) = push_once(&mut link, &batch, id, &mut rng, run.options.citus) {
            pushes.push(push);
        }
    }
    Ok(WriterReport { pushes, tally: link.tally })
}

/// The commands of one push, as parallel arrays.
#[derive(Default)]
struct Batch {
    instance_ids: Vec<String>,
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<String>,
    event_types: Vec<String>,
    poison: Vec<bool>,
}

/// `one_tenant`: every command for the batch's home instance (a tenant-first push).
fn plan_batch(rng: &mut Rng, poison_per_mille: u64, one_tenant: bool) -> Batch {
    let mut batch = Batch::default();
    let home = *rng.pick(&INSTANCES);
    for n in 0..rng.between(1, MAX_BATCH) {
        if n > 0 && rng.chance(SAME_AGGREGATE_PERCENT) {
            let last = n as usize - 1;
            batch.instance_ids.push(batch.instance_ids[last].clone());
            batch.aggregate_types.push(batch.aggregate_types[last].clone());
            batch.aggregate_ids.push(batch.aggregate_ids[last].clone());
        } else {
            let instance = if !one_tenant && rng.chance(OTHER_INSTANCE_PERCENT) { *rng.pick(&INSTANCES) } else { home };
            let id = if rng.chance(HOT_PERCENT) {
                format!("hot-{}", rng.between(1, HOT_AGGREGATES))
            } else {
                format!("cold-{}", rng.between(1, COLD_AGGREGATES))
            };
            batch.instance_ids.push(instance.to_string());
            batch.aggregate_types.push(rng.pick(&AGGREGATE_TYPES).to_string());
            batch.aggregate_ids.push(id);
        }
        batch.event_types.push(rng.pick(&EVENT_TYPES).to_string());
        batch.poison.push(poison_per_mille > 0 && rng.between(1, 1000) <= poison_per_mille);
    }
    batch
}

impl Batch {
    /// The commands as a JSON array of command objects (push(instance_id, commands)), with the
    /// payload the command[] form builds.
    fn to_json(&self, writer: usize) -> String {
        let commands: Vec<String> = (0..self.event_types.len()).map(|n| {
            let poison = if self.poison[n] { r#", "poison": true"# } else { "" };
            format!(r#"{{"instance_id": {}, "aggregate_type": {}, "aggregate_id": {}, "event_type": {}, "#,
                    json_string(&self.instance_ids[n]), json_string(&self.aggregate_types[n]),
                    json_string(&self.aggregate_ids[n]), json_string(&self.event_types[n]))
                + &format!(r#""payload": {{"writer": {writer}, "n": {}{poison}}}}}"#, n + 1)
        }).collect();
        format!("[{}]", commands.join(", "))
    }
}

/// A JSON string literal (the harness's names are plain, but quote them properly anyway).
fn json_string(text: &str) -> String {
    let mut quoted = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 => quoted.push_str(&format!("\\u{:04x}", c as u32)),
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// One transaction: BEGIN, push, perhaps a long pause, then COMMIT or ROLLBACK. Returns the
/// push and its fate, or None when the push itself never returned.
fn push_once(link: &mut Link, batch: &Batch, writer: usize, rng: &mut Rng, tenant_first: bool) -> Option<Push> {
    let mut push = Push { events: Vec::new(), outcome: Outcome::NeverCommitted, latency: Duration::ZERO };
    let hold_open = rng.chance(HOLD_OPEN_PERCENT).then(|| rng.between(HOLD_OPEN_MS.0, HOLD_OPEN_MS.1));
    let roll_back = rng.chance(ROLLBACK_PERCENT);
    let result = (|| {
        let client = link.client().expect("connected before the push");
        client.batch_execute("BEGIN")?;
        let sent = Instant::now();
        let rows = if tenant_first {
            client.query(TENANT_PUSH, &[&batch.instance_ids[0], &batch.to_json(writer)])?
        } else {
            client.query(PUSH, &[&batch.instance_ids, &batch.aggregate_types,
                &batch.aggregate_ids, &batch.event_types, &(writer as i32), &batch.poison])?
        };
        push.latency = sent.elapsed();
        push.events = rows.iter().map(|r| Written {
            aggregate: aggregate_name(r.get(0), r.get(1), r.get(2)),
            sequence: r.get(3),
            position: r.get(4),
        }).collect();
        if let Some(ms) = hold_open {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if roll_back {
            return client.batch_execute("ROLLBACK");
        }
        push.outcome = Outcome::Unknown;
        client.batch_execute("COMMIT")?;
        push.outcome = Outcome::Committed;
        Ok(())
    })();
    if let Err(error) = result {
        if let Ended::RolledBack { .. } = link.failed(&error) {
            push.outcome = Outcome::NeverCommitted;
        }
    }
    (!push.events.is_empty()).then_some(push)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_commands_carry_the_payload_of_the_command_array_form() {
        let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let batch = Batch {
            instance_ids: strings(&["t1", "t1"]), aggregate_types: strings(&["user", "org"]),
            aggregate_ids: strings(&["hot-1", "cold-7"]), event_types: strings(&["added", "removed"]),
            poison: vec![false, true],
        };
        assert_eq!(batch.to_json(3), concat!(
            r#"[{"instance_id": "t1", "aggregate_type": "user", "aggregate_id": "hot-1", "event_type": "added", "#,
            r#""payload": {"writer": 3, "n": 1}}, "#,
            r#"{"instance_id": "t1", "aggregate_type": "org", "aggregate_id": "cold-7", "event_type": "removed", "#,
            r#""payload": {"writer": 3, "n": 2, "poison": true}}]"#));
    }

    #[test]
    fn a_json_string_escapes_quotes_backslashes_and_control_characters() {
        assert_eq!(json_string("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
    }
}
