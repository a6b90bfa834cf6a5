//! The race detector: after the load has stopped and every projection was drained to the
//! head, holds what the clients saw and what `stress_applied` recorded against
//! `eventstore.events`, the ground truth.
//!
//! | count           | violation                                                          | guarantee |
//! |-----------------|--------------------------------------------------------------------|-----------|
//! | skipped         | a committed event in a projection's scope that it never applied    | G4        |
//! | dup             | an event applied (and committed) twice by one projection           | G5        |
//! | order           | a committed batch not above every earlier one of its partition in  | G7, G12   |
//! |                 | commit order, not in position order itself, or an aggregate's      |           |
//! |                 | events applied out of sequence order                               |           |
//! | overlap         | two workers inside one projection (partition) at once (trace.rs)   | G6, G12   |
//! | lost            | a push or a batch whose COMMIT succeeded, missing from the tables  | G1        |
//! | gaps            | an aggregate whose sequences are not exactly 1..n                  | G2        |
//! | aggregate_order | within an aggregate, a later sequence at a lower position          | G3        |
//! | phantom         | a push never committed (rolled back) whose events are there        | G1        |
//! | partial         | a push of unknown fate (died in COMMIT) only partly there          | G1        |
//! | stray           | an applied row that matches no event of the projection's scope     | G11, G4   |
//! | dropped         | a connection lost without a fault of ours (a crashed backend?)     | G9        |
//! | errors          | an unexpected error (deadlock, unique violation...)                | G2, G9    |

use std::collections::{HashMap, HashSet};

use postgres::types::ToSql;
use postgres::Client;

use crate::load::{Outcome, Push};
use crate::trace::{overlaps, Interval};
use crate::workers::{in_scope, Target, TARGETS};

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
}

impl Findings {
    pub fn violations(&self) -> u64 {
        self.skipped + self.dup + self.order + self.overlap + self.lost + self.gaps
            + self.aggregate_order + self.phantom + self.partial + self.stray + self.dropped + self.errors
    }
}

/// What the clients know, gathered from every thread.
pub struct Observed<'a> {
    pub pushes: &'a [Push],
    pub committed_batches: &'a [i64],
    pub intervals: &'a [Interval],
    /// The targets the run used.
    pub targets: &'a [Target],
}

pub fn detect(client: &mut Client, observed: &Observed) -> Result<Findings, postgres::Error> {
    client.batch_execute("CREATE INDEX ON stress_applied (projection, instance_key, position); ANALYZE")?;
    let mut findings = Findings {
        events: client.query_one("SELECT count(*) FROM eventstore.events", &[])?.get(0),
        ..Findings::default()
    };
    for target in observed.targets {
        let scope = target.scope_params();
        findings.skipped += count(client, &format!("skipped in {}", target.name()), SKIPPED, &scope)?;
        findings.stray += count(client, &format!("stray in {}", target.name()), STRAY, &scope)?;
    }
    findings.dup = count(client, "applied twice", DUPLICATES, &[])?;
    findings.order = count(client, "batch not above the earlier ones", BATCHES_OUT_OF_ORDER, &[])?
        + count(client, "batch not in position order", EVENTS_OUT_OF_ORDER, &[])?
        + count(client, "aggregate applied out of sequence order", AGGREGATE_APPLIED_OUT_OF_ORDER, &[])?;
    findings.gaps = count(client, "aggregate sequence not 1..n", SEQUENCE_GAPS, &[])?;
    findings.aggregate_order = count(client, "aggregate sequence against position", AGGREGATE_ORDER, &[])?;
    findings.overlap = overlap(observed.intervals);
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
  FROM eventstore.events e
 WHERE ", in_scope!(), "
   AND NOT EXISTS (SELECT 1 FROM stress_applied a
                    WHERE a.projection = $1 AND a.instance_key = $2 AND a.position = e.position)");

const STRAY: &str = concat!("\
SELECT count(*), (array_agg(a.position || ' ' || a.aggregate || '#' || a.sequence))[1:5]
  FROM stress_applied a
 WHERE a.projection = $1 AND a.instance_key = $2
   AND NOT EXISTS (SELECT 1 FROM eventstore.events e
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
          FROM eventstore.events GROUP BY instance_id, aggregate_type, aggregate_id
        HAVING min(sequence) <> 1 OR max(sequence) <> count(*)) g";

const AGGREGATE_ORDER: &str = "\
SELECT count(*), (array_agg(aggregate || '#' || sequence || ' at ' || position))[1:5]
  FROM (SELECT instance_id || '/' || aggregate_type || '/' || aggregate_id AS aggregate, sequence, position,
               position < lag(position) OVER (PARTITION BY instance_id, aggregate_type, aggregate_id
                                              ORDER BY sequence) AS behind
          FROM eventstore.events) e
 WHERE behind";

fn overlap(intervals: &[Interval]) -> u64 {
    let found = overlaps(intervals);
    if !found.is_empty() {
        let examples: Vec<String> = found.iter().take(EXAMPLES).map(|(a, b)| format!(
            "{}: worker {} [{}, {}] and worker {} [{}, {}]",
            TARGETS[a.target].name(), a.worker, a.open, a.close, b.worker, b.open, b.close)).collect();
        println!("stress: VIOLATION {} overlapping runs of a projection, e.g. {}", found.len(), examples.join("; "));
    }
    found.len() as u64
}

/// position -> (aggregate, sequence) of every event in the table.
fn all_events(client: &mut Client) -> Result<HashMap<i64, (String, i64)>, postgres::Error> {
    let rows = client.query("SELECT position, instance_id || '/' || aggregate_type || '/' || aggregate_id, \
                             sequence FROM eventstore.events", &[])?;
    Ok(rows.iter().map(|r| (r.get(0), (r.get(1), r.get(2)))).collect())
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
fn check_push(push: &Push, events: &HashMap<i64, (String, i64)>, findings: &mut Findings) {
    let present = push.events.iter()
        .filter(|w| events.get(&w.position).is_some_and(|(a, s)| *a == w.aggregate && *s == w.sequence))
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

    fn table(positions: &[i64]) -> HashMap<i64, (String, i64)> {
        positions.iter().map(|&p| (p, ("t1/user/a".to_string(), p))).collect()
    }

    fn findings_for(push: Push, table: &HashMap<i64, (String, i64)>) -> Findings {
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
    fn a_push_of_unknown_fate_must_be_all_or_nothing() {
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[4])).partial, 1);
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[4, 5])).violations(), 0);
        assert_eq!(findings_for(push(Outcome::Unknown, &[4, 5]), &table(&[])).violations(), 0);
    }
}
