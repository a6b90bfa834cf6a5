//! The race detector: after the load has stopped and every projection was drained to the
//! head, holds what the clients saw and what `stress_applied` recorded against
//! `eventstore.events`, the ground truth.
//!
//! Its queries name the tables without a schema; [`read_tables`] sets where they are: on one
//! node eventstore's own and the harness's. On Citus (--citus) they read a snapshot taken after
//! the drain, when nothing moves any more: local copies on the coordinator, in the schema
//! `stress_truth`, with `stress_applied` and `stress_batches` unfolded from the tenants' batch
//! rows (workers.rs). The checks join across tenants and by batch, which Citus cannot push down;
//! the copies hold the same rows.
//!
//! | count           | violation                                                          | guarantee |
//! |-----------------|--------------------------------------------------------------------|-----------|
//! | skipped         | a committed event in a projection's scope that it never applied    | G4, G13   |
//! |                 | (nor parked)                                                       |           |
//! | dup             | an event applied (and committed) twice by one projection, or both  | G5, G13   |
//! |                 | applied and parked                                                 |           |
//! | order           | a committed batch not above every earlier one of its partition in  | G7, G12   |
//! |                 | commit order, not in position order itself, or an aggregate's      |           |
//! |                 | events applied out of sequence order, or (hold_aggregate) applied  |           |
//! |                 | after a poison event of its aggregate                              |           |
//! | overlap         | two workers inside one projection (partition) at once (trace.rs)   | G6, G12   |
//! | lost            | a push or a batch whose COMMIT succeeded, missing from the tables  | G1        |
//! | gaps            | an aggregate whose sequences are not exactly 1..n                  | G2        |
//! | aggregate_order | within an aggregate, a later sequence at a lower position          | G3        |
//! | phantom         | a push never committed (rolled back) whose events are there, or a  | G1, G5    |
//! |                 | batch killed mid-batch (before COMMIT) that is there               |           |
//! | partial         | a push of unknown fate (died in COMMIT) only partly there          | G1        |
//! | stray           | an applied row that matches no event of the projection's scope     | G11, G4   |
//! | dropped         | a connection lost without a fault of ours (a crashed backend?)     | G9        |
//! | errors          | an unexpected error (deadlock, unique violation...)                | G2, G9    |
//! | parked          | a parked event that is not poison (nor, with hold_aggregate,       | G13       |
//! |                 | behind a poison event of its aggregate), a poison event parked     |           |
//! |                 | before max_attempts failures, anything parked by a projection      |           |
//! |                 | whose handler never fails                                          |           |
//! | unparked        | a poison event that kept failing and was never parked (the drain   | G13       |
//! |                 | gave up)                                                           |           |
//!
//! A partitioned target's poison events (load.rs) are never applied (its handler fails on
//! them): "skipped" then proves each was parked, "parked" that nothing else was.

use std::collections::{HashMap, HashSet};

use postgres::types::ToSql;
use postgres::Client;

use crate::load::{Outcome, Push};
use crate::trace::{overlaps, Interval};
use crate::workers::{in_scope, Target};

/// Examples printed per kind of violation.
const EXAMPLES: usize = 5;

#[derive(Default)]
pub struct Findings {
    pub events: i64,
    pub skipped: u64,
    pub dup: u64,
    pub order: u64,
    pub overlap: u64,
    pub lost: u64,
    pub gaps: u64,
    pub aggregate_order: u64,
    pub phantom: u64,
    pub partial: u64,
    pub stray: u64,
    pub dropped: u64,
    pub errors: u64,
    pub parked: u64,
    pub unparked: u64,
}

impl Findings {
    pub fn violations(&self) -> u64 {
        self.skipped + self.dup + self.order + self.overlap + self.lost + self.gaps
            + self.aggregate_order + self.phantom + self.partial + self.stray + self.dropped + self.errors
            + self.parked + self.unparked
    }
}

/// What the clients know, gathered from every thread.
pub struct Observed<'a> {
    pub pushes: &'a [Push],
    pub committed_batches: &'a [i64],
    pub intervals: &'a [Interval],
    /// The targets the run used.
    pub targets: &'a [Target],
    /// Batches killed mid-batch, before their COMMIT.
    pub killed_batches: &'a [i64],
    /// Targets whose drain gave up on a poison event that was never parked.
    pub never_parked: &'a [String],
}

/// The tables on Citus: copies, and the projection in the shape of one node's.
const CITUS_SNAPSHOT: &str = "\
DROP SCHEMA IF EXISTS stress_truth CASCADE;
CREATE SCHEMA stress_truth;
CREATE TABLE stress_truth.events AS SELECT * FROM eventstore.events;
CREATE INDEX ON stress_truth.events (position);
CREATE TABLE stress_truth.parked_events AS SELECT * FROM eventstore.parked_events;
CREATE TABLE stress_truth.tenant_batches AS SELECT * FROM stress_tenant_batches;
CREATE TABLE stress_truth.stress_batches AS
SELECT batch, projection, instance_key, worker, low, high, cardinality(positions) AS events, commit_order, partition
  FROM stress_truth.tenant_batches;
CREATE TABLE stress_truth.stress_applied AS
SELECT b.projection, b.instance_key, b.batch, u.ord, u.position, u.aggregate, u.sequence
  FROM stress_truth.tenant_batches b,
       unnest(b.positions, b.aggregates, b.sequences) WITH ORDINALITY AS u(position, aggregate, sequence, ord);
SET search_path = stress_truth";

/// Points the detector's session at the tables it checks: eventstore's and the harness's on one
/// node, a snapshot of them on Citus (`citus`).
pub fn read_tables(client: &mut Client, citus: bool) -> Result<(), postgres::Error> {
    client.batch_execute(if citus { CITUS_SNAPSHOT } else { "SET search_path = eventstore, public" })
}

pub fn detect(client: &mut Client, observed: &Observed) -> Result<Findings, postgres::Error> {
    client.batch_execute("CREATE INDEX ON stress_applied (projection, instance_key, position); ANALYZE")?;
    let mut findings = Findings {
        events: client.query_one("SELECT count(*) FROM events", &[])?.get(0),
        ..Findings::default()
    };
    for target in observed.targets {
        let scope = target.scope_params();
        findings.skipped += count(client, &format!("skipped in {}", target.name()), SKIPPED, &scope)?;
        findings.stray += count(client, &format!("stray in {}", target.name()), STRAY, &scope)?;
        findings.dup += count(client, &format!("applied and parked in {}", target.name()), APPLIED_AND_PARKED,
            &scope[..3])?;
        // A target whose handler never fails parks nothing: checked as a policy no event meets.
        let (max_attempts, hold) = target.poison.map_or((i32::MAX, false), |p| (p.max_attempts, p.hold_aggregate));
        let policy: [&(dyn ToSql + Sync); 7] = [scope[0], scope[1], scope[2], scope[3], scope[4], &max_attempts, &hold];
        findings.parked += count(client, &format!("parked wrongly in {}", target.name()), WRONGLY_PARKED, &policy)?;
        if hold {
            findings.order += count(client, &format!("applied behind a poison event in {}", target.name()),
                APPLIED_BEHIND_POISON, &policy[..6])?;
        }
        if let Some(policy) = target.poison {
            print_parked(client, target, policy, &scope)?;
        }
    }
    for name in observed.never_parked {
        println!("stress: VIOLATION {name}: a poison event failed {} times in a row and was never parked",
            crate::workers::MAX_FAILURES_IN_A_ROW);
        findings.unparked += 1;
    }
    findings.phantom += count(client, "batch killed before its COMMIT is there", KILLED_BATCH_THERE,
        &[&observed.killed_batches])?;
    findings.dup = count(client, "applied twice", DUPLICATES, &[])?;
    findings.order = count(client, "batch not above the earlier ones", BATCHES_OUT_OF_ORDER, &[])?
        + count(client, "batch not in position order", EVENTS_OUT_OF_ORDER, &[])?
        + count(client, "aggregate applied out of sequence order", AGGREGATE_APPLIED_OUT_OF_ORDER, &[])?;
    findings.gaps = count(client, "aggregate sequence not 1..n", SEQUENCE_GAPS, &[])?;
    findings.aggregate_order = count(client, "aggregate sequence against position", AGGREGATE_ORDER, &[])?;
    findings.overlap = overlap(observed.intervals, observed.targets);
    let events = all_events(client)?;
    findings.lost = lost_batches(client, observed.committed_batches)?;
    for push in observed.pushes {
        check_push(push, &events, &mut findings);
    }
    Ok(findings)
}

/// Runs a check that returns (count, examples) and prints the examples when there are any.
fn count(client: &mut Client, what: &str, sql: &str, params: &[&(dyn ToSql + Sync)])
    -> Result<u64, postgres::Error>
{
    let row = client.query_one(sql, params)?;
    let (n, examples): (i64, Option<Vec<String>>) = (row.get(0), row.get(1));
    if n > 0 {
        println!("stress: VIOLATION {n} {what}, e.g. {}", examples.unwrap_or_default().join("; "));
    }
    Ok(n as u64)
}

const SKIPPED: &str = concat!("\
SELECT count(*), (array_agg(e.position::text ORDER BY e.position))[1:5]
  FROM events e
 WHERE ", in_scope!(), "
   AND NOT EXISTS (SELECT 1 FROM stress_applied a
                    WHERE a.projection = $1 AND a.instance_key = $2 AND a.position = e.position)
   AND NOT EXISTS (SELECT 1 FROM parked_events p
                    WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $3
                      AND p.position = e.position)");

/// Parameters: $1 projection, $2 instance key, $3 instance_id.
const APPLIED_AND_PARKED: &str = "\
SELECT count(*), (array_agg(a.position || ' ' || a.aggregate || '#' || a.sequence))[1:5]
  FROM stress_applied a JOIN parked_events p
    ON p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $3::text AND p.position = a.position
 WHERE a.projection = $1 AND a.instance_key = $2";

/// The first poison event of each aggregate in a target's scope.
macro_rules! first_poison {
    () => {
        concat!("first_poison AS (
    SELECT e.instance_id || '/' || e.aggregate_type || '/' || e.aggregate_id AS aggregate, min(e.position) AS position
      FROM events e
     WHERE coalesce(e.payload ? 'poison', false) AND ", in_scope!(), "
     GROUP BY 1)")
    };
}

/// Parked events that should not be: not of the scope; a poison event parked before
/// max_attempts ($6) failures (unless, with hold_aggregate ($7), it was held behind an earlier
/// one); an event that is not poison, unless held behind a poison event of its aggregate.
const WRONGLY_PARKED: &str = concat!("\
WITH ", first_poison!(), ",
parked AS (
    SELECT p.position, p.attempts, e.position IS NOT NULL AS in_scope,
           coalesce(e.payload ? 'poison', false) AS poison,
           $7 AND coalesce(f.position < p.position, false) AS held
      FROM parked_events p
      LEFT JOIN events e ON e.position = p.position AND ", in_scope!(), "
      LEFT JOIN first_poison f ON f.aggregate = p.event_instance_id || '/' || p.aggregate_type || '/' || p.aggregate_id
     WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $3 AND $2::text IS NOT NULL)
SELECT count(*), (array_agg(position || ': ' || why ORDER BY position))[1:5]
  FROM (SELECT position, CASE WHEN NOT in_scope THEN 'not an event of the projection'
                              WHEN poison AND NOT held AND attempts < $6 THEN 'parked after ' || attempts || ' failures'
                              WHEN NOT poison AND NOT held THEN 'not poison, nor behind a poison event'
                         END AS why
          FROM parked) w
 WHERE why IS NOT NULL");

/// With hold_aggregate: events applied after a poison event of their aggregate (they should
/// have been parked behind it). Parameters $1-$5 as in_scope!, $6 unused (max_attempts).
const APPLIED_BEHIND_POISON: &str = concat!("\
WITH ", first_poison!(), "
SELECT count(*), (array_agg(a.aggregate || '#' || a.sequence || ' at ' || a.position || ' applied after poison at '
                            || f.position))[1:5]
  FROM stress_applied a JOIN first_poison f ON f.aggregate = a.aggregate AND a.position > f.position
 WHERE a.projection = $1 AND a.instance_key = $2 AND $6::int IS NOT NULL");

const KILLED_BATCH_THERE: &str = "\
SELECT count(*), (array_agg(batch::text))[1:5] FROM stress_batches WHERE batch = ANY ($1::bigint[])";

/// Poison events of the scope, parked events and those held behind them.
const PARKED_FIGURES: &str = concat!("\
SELECT (SELECT count(*) FROM events e WHERE coalesce(e.payload ? 'poison', false) AND ", in_scope!(), "),
       count(*), count(*) FILTER (WHERE p.held_behind IS NOT NULL)
  FROM parked_events p
 WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $3 AND $2::text IS NOT NULL");

fn print_parked(client: &mut Client, target: &Target, policy: crate::workers::Policy,
                scope: &[&(dyn ToSql + Sync); 5]) -> Result<(), postgres::Error> {
    let row = client.query_one(PARKED_FIGURES, scope)?;
    let (poison, parked, held): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!("stress: {} (max_attempts={} hold_aggregate={}): poison events={poison} parked={parked} \
              (held behind them={held})", target.name(), policy.max_attempts, policy.hold_aggregate);
    Ok(())
}

const STRAY: &str = concat!("\
SELECT count(*), (array_agg(a.position || ' ' || a.aggregate || '#' || a.sequence))[1:5]
  FROM stress_applied a
 WHERE a.projection = $1 AND a.instance_key = $2
   AND NOT EXISTS (SELECT 1 FROM events e
                    WHERE e.position = a.position AND e.sequence = a.sequence
                      AND e.instance_id || '/' || e.aggregate_type || '/' || e.aggregate_id = a.aggregate
                      AND ", in_scope!(), ")");

const DUPLICATES: &str = "\
SELECT coalesce(sum(n - 1), 0)::bigint,
       (array_agg(projection || '@' || instance_key || ' position ' || position || ' x' || n))[1:5]
  FROM (SELECT projection, instance_key, position, count(*) AS n
          FROM stress_applied GROUP BY 1, 2, 3 HAVING count(*) > 1) d";

const BATCHES_OUT_OF_ORDER: &str = "\
SELECT count(*),
       (array_agg(projection || '@' || instance_key || ' batch ' || batch || ' [' || low || ', ' || high
                  || '] committed after one reaching ' || earlier_high))[1:5]
  FROM (SELECT *, max(high) OVER (PARTITION BY projection, instance_key, partition ORDER BY commit_order
                                  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS earlier_high
          FROM stress_batches) b
 WHERE low <= earlier_high";

/// Per projection, each aggregate's events applied in sequence order, in commit order (G7; for
/// a partitioned projection across partitions and resizes, G12).
const AGGREGATE_APPLIED_OUT_OF_ORDER: &str = "\
SELECT count(*), (array_agg(projection || '@' || instance_key || ' ' || aggregate || '#' || sequence
                            || ' applied after #' || previous))[1:5]
  FROM (SELECT a.projection, a.instance_key, a.aggregate, a.sequence,
               lag(a.sequence) OVER (PARTITION BY a.projection, a.instance_key, a.aggregate
                                     ORDER BY b.commit_order, a.ord) AS previous
          FROM stress_applied a JOIN stress_batches b USING (batch)) s
 WHERE sequence <= previous";

const EVENTS_OUT_OF_ORDER: &str = "\
SELECT count(*), (array_agg('batch ' || batch || ' position ' || position))[1:5]
  FROM (SELECT batch, position, position <= lag(position) OVER (PARTITION BY batch ORDER BY ord) AS behind
          FROM stress_applied) a
 WHERE behind";

const SEQUENCE_GAPS: &str = "\
SELECT count(*), (array_agg(aggregate))[1:5]
  FROM (SELECT instance_id || '/' || aggregate_type || '/' || aggregate_id || ' has ' || count(*)
               || ' events, sequences ' || min(sequence) || '..' || max(sequence) AS aggregate
          FROM events GROUP BY instance_id, aggregate_type, aggregate_id
        HAVING min(sequence) <> 1 OR max(sequence) <> count(*)) g";

const AGGREGATE_ORDER: &str = "\
SELECT count(*), (array_agg(aggregate || '#' || sequence || ' at ' || position))[1:5]
  FROM (SELECT instance_id || '/' || aggregate_type || '/' || aggregate_id AS aggregate, sequence, position,
               position < lag(position) OVER (PARTITION BY instance_id, aggregate_type, aggregate_id
                                              ORDER BY sequence) AS behind
          FROM events) e
 WHERE behind";

fn overlap(intervals: &[Interval], targets: &[Target]) -> u64 {
    let found = overlaps(intervals);
    if !found.is_empty() {
        let examples: Vec<String> = found.iter().take(EXAMPLES).map(|(a, b)| format!(
            "{}: worker {} [{}, {}] and worker {} [{}, {}]",
            targets[a.target].name(), a.worker, a.open, a.close, b.worker, b.open, b.close)).collect();
        println!("stress: VIOLATION {} overlapping runs of a projection, e.g. {}", found.len(), examples.join("; "));
    }
    found.len() as u64
}

/// (position, aggregate) -> sequence of every event in the table. The aggregate is part of the
/// key: on Citus each node draws its own positions, so tenants on two nodes may share one.
type Events = HashMap<(i64, String), i64>;

fn all_events(client: &mut Client) -> Result<Events, postgres::Error> {
    let rows = client.query("SELECT position, instance_id || '/' || aggregate_type || '/' || aggregate_id, \
                             sequence FROM events", &[])?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
}

/// Batches whose COMMIT succeeded but that are not in stress_batches.
fn lost_batches(client: &mut Client, committed: &[i64]) -> Result<u64, postgres::Error> {
    let stored: HashSet<i64> = client.query("SELECT batch FROM stress_batches", &[])?
        .iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i64> = committed.iter().filter(|b| !stored.contains(b)).collect();
    if !lost.is_empty() {
        println!("stress: VIOLATION {} committed batches lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(EXAMPLES)]);
    }
    Ok(lost.len() as u64)
}

/// A push against the table, by what its client knows of its fate (G1).
fn check_push(push: &Push, events: &Events, findings: &mut Findings) {
    let present = push.events.iter()
        .filter(|w| events.get(&(w.position, w.aggregate.clone())) == Some(&w.sequence))
        .count();
    let (kind, counter) = match push.outcome {
        Outcome::Committed if present < push.events.len() => ("committed push lost", &mut findings.lost),
        Outcome::NeverCommitted if present > 0 => ("rolled-back push visible", &mut findings.phantom),
        Outcome::Unknown if present > 0 && present < push.events.len() => ("push partly there", &mut findings.partial),
        _ => return,
    };
    *counter += 1;
    if *counter <= EXAMPLES as u64 {
        let written: Vec<String> = push.events.iter()
            .map(|w| format!("{}#{} at {}", w.aggregate, w.sequence, w.position)).collect();
        println!("stress: VIOLATION {kind}: {present} of {} there: {}", push.events.len(), written.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::Written;

    fn push(outcome: Outcome, positions: &[i64]) -> Push {
        let events = positions.iter()
            .map(|&position| Written { position, aggregate: "t1/user/a".into(), sequence: position })
            .collect();
        Push { events, outcome, latency: std::time::Duration::ZERO }
    }

    fn table(positions: &[i64]) -> Events {
        positions.iter().map(|&p| ((p, "t1/user/a".to_string()), p)).collect()
    }

    fn findings_for(push: Push, table: &Events) -> Findings {
        let mut findings = Findings::default();
        check_push(&push, table, &mut findings);
        findings
    }

    #[test]
    fn a_committed_push_missing_an_event_is_lost() {
        assert_eq!(findings_for(push(Outcome::Committed, &[1, 2]), &table(&[1])).lost, 1);
        assert_eq!(findings_for(push(Outcome::Committed, &[1, 2]), &table(&[1, 2])).violations(), 0);
    }

    #[test]
    fn a_rolled_back_push_that_is_visible_is_a_phantom() {
        assert_eq!(findings_for(push(Outcome::NeverCommitted, &[3]), &table(&[3])).phantom, 1);
        assert_eq!(findings_for(push(Outcome::NeverCommitted, &[3]), &table(&[])).violations(), 0);
    }

    #[test]
    fn an_event_of_another_tenant_at_the_same_position_is_not_the_push() {
        let other_tenant = ((1, "t2/user/a".to_string()), 1);
        assert_eq!(findings_for(push(Outcome::Committed, &[1]), &[other_tenant.clone()].into()).lost, 1);
        let both: Events = [other_tenant, ((1, "t1/user/a".to_string()), 1)].into();
        assert_eq!(findings_for(push(Outcome::Committed, &[1]), &both).violations(), 0);
    }

    #[test]
    fn a_push_of_unknown_fate_must_be_all_or_nothing() {
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[4])).partial, 1);
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[4, 5])).violations(), 0);
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[])).violations(), 0);
    }
}
