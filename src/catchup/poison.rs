//! Poison events (G13): `eventstore.projection_failed`, `set_poison_policy`, `retry_parked`,
//! `discard_parked`, and what a catch-up does with what they record.
//!
//! A worker whose handler failed rolls the batch back (the checkpoint with it) and, in a
//! transaction of its own, calls projection_failed: the failure of the partition's next event
//! (or of the event the worker names) is counted in `eventstore.projection_failures`, which the
//! rollback cannot undo (trap 16; ZITADEL #10726 counted inside the failing transaction). The
//! partition's next batches then stop before that event, hand it out alone, and once it has
//! failed `max_attempts` times park it (`eventstore.parked_events`) and go on past it. With
//! `hold_aggregate` (the default) the same aggregate's later events are parked behind it, in
//! order; without, they go on. Parking happens in the catch-up's transaction, like the
//! checkpoint: a rolled-back batch parks nothing. When the batch that parked an event goes on
//! and fails on a later one, projection_failed parks the earlier one again, for good, before it
//! counts the later failure (one record per partition: else the two would take turns forever);
//! catch-up passes over parked events. No subtransaction anywhere (G8): the worker
//! loop is ROLLBACK, then projection_failed in a new transaction.
//!
//! retry_parked marks parked events to be handed out again: the partition's next catch-up hands
//! them out first, in position order (at most a batch), and deletes them in the caller's
//! transaction (commit: done; roll back: they come again). discard_parked deletes them.

use pgrx::prelude::*;

use super::partitions::Definition;
use super::{for_instance, read_checkpoint, Request};
use crate::checks::{optional_identifier, require_identifier, truncate};
use crate::errors;
use crate::horizon;
use crate::locks;
use crate::mutants;
use crate::query::{self, Arg, Rows, Snapshot};
use crate::tenancy;

/// Most attempts a poison policy may allow.
pub const MAX_ATTEMPTS: i32 = 100;

/// A recorded failure of a partition.
pub struct Failure {
    pub position: i64,
    pub attempts: i32,
}

/// What a partition has recorded, read in one statement so that a catch-up with nothing recorded
/// (the usual case) runs no other statement about poison.
pub struct Recorded {
    /// The projection has parked events.
    pub parked: bool,
    /// The partition has parked events marked for retry.
    pub retries: bool,
    /// The partition has a recorded failure.
    pub failed: bool,
}

const RECORDED: &str = "SELECT \
     EXISTS (SELECT 1 FROM eventstore.parked_events WHERE projection = $1 AND {instance}), \
     EXISTS (SELECT 1 FROM eventstore.parked_events \
              WHERE projection = $1 AND {instance} AND partition = $3 AND retry), \
     EXISTS (SELECT 1 FROM eventstore.projection_failures \
              WHERE projection = $1 AND {instance} AND partition = $3)";

/// What the partition has recorded now (read after its lock was granted).
pub fn recorded(request: &Request, partition: i32) -> Recorded {
    let rows = query::run(&for_instance(RECORDED, request.instance_id),
        &[Arg::new(request.projection), Arg::new(request.instance_id), Arg::new(partition)],
        Snapshot::Latest);
    let flag = |column| rows.get::<bool>(0, column).unwrap_or(false);
    Recorded { parked: flag(1), retries: flag(2), failed: flag(3) }
}

const FAILURE: &str = "SELECT position, attempts FROM eventstore.projection_failures \
     WHERE projection = $1 AND {instance} AND partition = $3";

/// The partition's recorded failure, if it is about an event past the checkpoint.
pub fn failure(request: &Request, partition: i32, checkpoint: i64) -> Option<Failure> {
    let rows = query::run(&for_instance(FAILURE, request.instance_id),
        &[Arg::new(request.projection), Arg::new(request.instance_id), Arg::new(partition)],
        Snapshot::Latest);
    if rows.len() == 0 {
        return None;
    }
    let failure = Failure {
        position: rows.get::<i64>(0, 1).expect("position is not NULL"),
        attempts: rows.get::<i32>(0, 2).expect("attempts is not NULL"),
    };
    (failure.position > checkpoint).then_some(failure)
}

const PARK: &str = "\
INSERT INTO eventstore.parked_events (projection, instance_id, partition, position, event_instance_id,
    aggregate_type, aggregate_id, sequence, error, attempts, first_failed_at, last_failed_at, parked_at)
SELECT f.projection, f.instance_id, f.partition, e.position, e.instance_id, e.aggregate_type,
       e.aggregate_id, e.sequence, f.error, f.attempts, f.first_failed_at, f.last_failed_at, clock_timestamp()
  FROM eventstore.projection_failures f JOIN eventstore.events e ON e.position = f.position
 WHERE f.projection = $1 AND f.{instance} AND f.partition = $3
ON CONFLICT ON CONSTRAINT parked_events_key DO NOTHING";
const FORGET_FAILURE: &str = "DELETE FROM eventstore.projection_failures \
     WHERE projection = $1 AND {instance} AND partition = $3";

/// Parks the partition's failing event, in the caller's transaction, and forgets the failure.
pub fn park(request: &Request, partition: i32) {
    let args = [Arg::new(request.projection), Arg::new(request.instance_id), Arg::new(partition)];
    query::run(&for_instance(PARK, request.instance_id), &args, Snapshot::Statement);
    query::run(&for_instance(FORGET_FAILURE, request.instance_id), &args, Snapshot::Statement);
}

/// The condition (on event `e`) of an event held behind a parked event of its aggregate; in the
/// batch statement's parameters: $4 instance, $9 projection.
pub const HELD: &str = "EXISTS (SELECT 1 FROM eventstore.parked_events p \
     WHERE p.projection = $9 AND p.instance_id IS NOT DISTINCT FROM $4 \
       AND p.event_instance_id = e.instance_id AND p.aggregate_type = e.aggregate_type \
       AND p.aggregate_id = e.aggregate_id AND p.position < e.position)";

/// The condition (on event `e`) of a parked event; parameters as [`HELD`]. Served by the
/// parked_events_aggregate index.
pub const PARKED: &str = "EXISTS (SELECT 1 FROM eventstore.parked_events p \
     WHERE p.projection = $9 AND p.event_instance_id = e.instance_id AND p.aggregate_type = e.aggregate_type \
       AND p.aggregate_id = e.aggregate_id AND p.position = e.position \
       AND p.instance_id IS NOT DISTINCT FROM $4)";

/// The statement that parks the held events among `conditions` (the batch's, up to $2).
pub fn park_held_query(conditions: &str) -> String {
    format!("INSERT INTO eventstore.parked_events (projection, instance_id, partition, position, \
         event_instance_id, aggregate_type, aggregate_id, sequence, attempts, parked_at, held_behind) \
         SELECT $9, $4, $8, e.position, e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, 0, \
                clock_timestamp(), \
                (SELECT min(p.position) FROM eventstore.parked_events p \
                  WHERE p.projection = $9 AND p.instance_id IS NOT DISTINCT FROM $4 \
                    AND p.event_instance_id = e.instance_id AND p.aggregate_type = e.aggregate_type \
                    AND p.aggregate_id = e.aggregate_id) \
           FROM eventstore.events e WHERE {conditions} AND {HELD} \
         ON CONFLICT ON CONSTRAINT parked_events_key DO NOTHING")
}

const DUE_RETRIES: &str = "SELECT e.* FROM eventstore.events e WHERE e.position IN \
     (SELECT position FROM eventstore.parked_events \
       WHERE projection = $1 AND {instance} AND partition = $3 AND retry \
       ORDER BY position LIMIT $4) ORDER BY e.position";
const RETRIED: &str = "DELETE FROM eventstore.parked_events \
     WHERE projection = $1 AND {instance} AND position = ANY ($5)";

/// The partition's parked events due for retry (at most a batch, in position order), deleted
/// from the parked events in the caller's transaction; `None` when there are none.
pub fn due_retries(request: &Request, partition: i32) -> Option<Rows> {
    let sql = for_instance(DUE_RETRIES, request.instance_id);
    let args = |positions: Vec<i64>| [Arg::new(request.projection), Arg::new(request.instance_id),
        Arg::new(partition), Arg::new(request.batch_size), Arg::new(positions)];
    let rows = query::run(&sql, &args(Vec::new()), Snapshot::Latest);
    if rows.len() == 0 {
        return None;
    }
    let positions = (0..rows.len())
        .map(|row| rows.get_named::<i64>(row, c"position").expect("position is not NULL"))
        .collect();
    query::run(&for_instance(RETRIED, request.instance_id), &args(positions), Snapshot::Statement);
    Some(rows)
}

/// The mutant counts attempts when it hands an event out, in the catch-up's own transaction:
/// the count rolls back with the failing batch (trap 16), so nothing is ever parked.
pub fn count_in_batch_mutant(request: &Request, partition: i32, position: i64) {
    if mutants::FAILURE_IN_BATCH {
        record(request.projection, request.instance_id, partition, position, "");
    }
}

const RECORD_FAILURE: &str = "\
INSERT INTO eventstore.projection_failures AS f (projection, instance_id, partition, position, attempts,
    error, first_failed_at, last_failed_at)
VALUES ($1, $2, $3, $4, 1, $5, clock_timestamp(), clock_timestamp())
ON CONFLICT ON CONSTRAINT projection_failures_key DO UPDATE
SET attempts = CASE WHEN f.position = excluded.position THEN f.attempts + 1 ELSE 1 END,
    first_failed_at = CASE WHEN f.position = excluded.position THEN f.first_failed_at
                           ELSE excluded.first_failed_at END,
    position = excluded.position, error = excluded.error, last_failed_at = excluded.last_failed_at
RETURNING attempts";

fn record(projection: &str, instance_id: Option<&str>, partition: i32, position: i64, error: &str) -> i32 {
    query::run(RECORD_FAILURE, &[Arg::new(projection), Arg::new(instance_id), Arg::new(partition),
        Arg::new(position), Arg::new(error)], Snapshot::Statement).get::<i32>(0, 1).unwrap_or(0)
}

const RETRY_FAILED: &str = "\
UPDATE eventstore.parked_events
   SET attempts = attempts + 1, error = $5, retry = false, last_failed_at = clock_timestamp(),
       first_failed_at = coalesce(first_failed_at, clock_timestamp())
 WHERE projection = $1 AND {instance} AND partition = $3 AND retry
   AND position = coalesce($4, (SELECT min(position) FROM eventstore.parked_events
                                 WHERE projection = $1 AND {instance} AND partition = $3 AND retry))
RETURNING attempts";

const NEXT_EVENT: &str = "SELECT e.position FROM eventstore.events e \
     WHERE e.position > $1 AND ($4::text IS NULL OR e.instance_id = $4) \
       AND ($7 = 1 OR eventstore.partition_of(e.instance_id, e.aggregate_type, e.aggregate_id, $7) = $8) \
     ORDER BY e.position LIMIT 1";

/// `eventstore.projection_failed(projection, instance_id, partition, error, position)`: counts a
/// handler failure, in the caller's transaction, which should be a new one after the failing
/// batch rolled back (G13, trap 16). The failing event is `position` when given (it must be
/// past the partition's checkpoint), else the partition's next event after its checkpoint (pass
/// the position when the worker filters by type: the next event may be one it never saw); a
/// retried parked event being handed out again is parked again, with one more attempt. Waits
/// for the partition's running batch. Returns the attempts counted so far.
#[pg_extern(sql = false)]
fn projection_failed(projection: Option<&str>, instance_id: Option<&str>, partition: Option<i32>,
                     error: Option<&str>, position: Option<i64>) -> i32 {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let Some(partition) = partition else {
        errors::raise(errors::NULL_VALUE, "partition must not be NULL".into(), "partition is NULL.".into(),
            "Pass the partition partition_catchup handed out (0 for projection_catchup).")
    };
    let Some(error) = error else {
        errors::raise(errors::NULL_VALUE, "error must not be NULL".into(), "error is NULL.".into(),
            "Pass the handler's error message.")
    };
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "projection_failed");
    horizon::refuse_while_writing();
    tenancy::as_owner(|| query::with_spi(|| {
        let definition = Definition::read(projection, instance_id);
        check_partition(projection, partition, &definition);
        if mutants::FAILURE_IN_BATCH {
            return 0;
        }
        locks::lock_partition(projection, instance_id, partition, true);
        let args = |position: Option<i64>| [Arg::new(projection), Arg::new(instance_id), Arg::new(partition),
            Arg::new(position), Arg::new(error)];
        let retried = query::run(&for_instance(RETRY_FAILED, instance_id), &args(position), Snapshot::Statement);
        if retried.len() > 0 {
            return retried.get::<i32>(0, 1).unwrap_or(0);
        }
        let request = Request { projection, instance_id, batch_size: 1, aggregate_types: None, event_types: None };
        let checkpoint = read_checkpoint(&request, partition);
        let failing = match position {
            Some(position) if position <= checkpoint => errors::raise(errors::INVALID_VALUE,
                "position is not past the partition's checkpoint".into(),
                format!("position is {position}; partition {partition} of projection \"{}\" has committed \
                         everything up to {checkpoint}.", truncate(projection, 80)),
                "Pass the position of an event of the batch that failed and was rolled back."),
            Some(position) => Some(position),
            None => {
                let layout = definition.layout(&request, partition, checkpoint);
                let partitions = layout.map_or(definition.partitions, |l| l.partitions);
                let rows = query::run(NEXT_EVENT, &[Arg::new(checkpoint), Arg::new(0i64), Arg::new(0i32),
                    Arg::new(instance_id), Arg::new(None::<Vec<String>>), Arg::new(None::<Vec<String>>),
                    Arg::new(partitions), Arg::new(partition)], Snapshot::Latest);
                (rows.len() > 0).then(|| rows.get::<i64>(0, 1).expect("position is not NULL"))
            }
        };
        let Some(failing) = failing else {
            errors::raise(errors::WRONG_STATE, "the partition has no event to blame".into(),
                format!("Partition {partition} of projection \"{}\" has no event after its checkpoint {checkpoint}.",
                    truncate(projection, 80)),
                "Call projection_failed after a batch that handed something out failed.")
        };
        // A failure after an earlier event that is due to be parked: the catch-up parked that
        // one and went on in the batch that has just failed, and its rollback undid the park.
        // Counting this failure would replace the record (one per partition) and the two would
        // take turns forever: park the earlier one here, for good. The checkpoint stays (events
        // before it may not have been handed out); catch-up passes over parked events.
        if let Some(due) = failure(&request, partition, checkpoint) {
            if due.position < failing && due.attempts >= definition.max_attempts {
                park(&request, partition);
            }
        }
        record(projection, instance_id, partition, failing, error)
    }))
}

/// A partition number of the projection (of either layout while a resize drains).
fn check_partition(projection: &str, partition: i32, definition: &Definition) {
    if !(0..definition.slots()).contains(&partition) {
        errors::raise(errors::INVALID_VALUE, "partition is out of range".into(),
            format!("partition is {partition}; projection \"{}\" has partitions 0 to {}.",
                truncate(projection, 80), definition.slots() - 1), "");
    }
}

const WRITE_POLICY: &str = "\
INSERT INTO eventstore.projections AS d (projection, instance_id, max_attempts, hold_aggregate, updated_at)
VALUES ($1, $2, $3, $4, clock_timestamp())
ON CONFLICT ON CONSTRAINT projections_key DO UPDATE
SET max_attempts = excluded.max_attempts, hold_aggregate = excluded.hold_aggregate,
    updated_at = excluded.updated_at";

/// `eventstore.set_poison_policy(projection, instance_id, max_attempts, hold_aggregate)`: after
/// `max_attempts` (1..100) recorded failures an event is parked; `hold_aggregate`: its
/// aggregate's later events are parked behind it (true) or go on (false).
#[pg_extern(sql = false)]
fn set_poison_policy(projection: Option<&str>, instance_id: Option<&str>, max_attempts: Option<i32>,
                     hold_aggregate: Option<bool>) {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let max_attempts = match max_attempts {
        None => errors::raise(errors::NULL_VALUE, "max_attempts must not be NULL".into(),
            "max_attempts is NULL.".into(), ""),
        Some(n) if (1..=MAX_ATTEMPTS).contains(&n) => n,
        Some(n) => errors::raise(errors::INVALID_VALUE, "max_attempts is out of range".into(),
            format!("max_attempts is {n}; it must be between 1 and {MAX_ATTEMPTS}."), ""),
    };
    let Some(hold_aggregate) = hold_aggregate else {
        errors::raise(errors::NULL_VALUE, "hold_aggregate must not be NULL".into(),
            "hold_aggregate is NULL.".into(), "")
    };
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "set_poison_policy");
    tenancy::as_owner(|| query::with_spi(|| {
        query::run(WRITE_POLICY, &[Arg::new(projection), Arg::new(instance_id), Arg::new(max_attempts),
            Arg::new(hold_aggregate)], Snapshot::Statement);
    }));
}

const MARK_RETRY: &str = "\
UPDATE eventstore.parked_events AS p
   SET retry = true,
       partition = CASE WHEN coalesce(d.partitions, 1) = 1 THEN 0
                        ELSE eventstore.partition_of(p.event_instance_id, p.aggregate_type,
                                                     p.aggregate_id, d.partitions) END
  FROM (SELECT NULL) x LEFT JOIN eventstore.projections d
    ON d.projection = $1 AND d.instance_id IS NOT DISTINCT FROM $2
 WHERE p.projection = $1 AND p.instance_id IS NOT DISTINCT FROM $2
   AND ($3::bigint[] IS NULL OR p.position = ANY ($3))";
const DISCARD: &str = "DELETE FROM eventstore.parked_events \
     WHERE projection = $1 AND instance_id IS NOT DISTINCT FROM $2 AND ($3::bigint[] IS NULL OR position = ANY ($3))";

/// The checked positions of retry_parked and discard_parked (NULL: every parked event).
fn checked_positions(positions: Option<Vec<Option<i64>>>) -> Option<Vec<i64>> {
    positions.map(|positions| positions.into_iter().map(|p| p.unwrap_or_else(||
        errors::raise(errors::NULL_VALUE, "positions must not contain NULL".into(),
            "positions has an element that is NULL.".into(),
            "Pass NULL instead of the array for every parked event.")
    )).collect())
}

/// `eventstore.retry_parked(projection, instance_id, positions)`: marks parked events (all when
/// `positions` is NULL) to be handed out again, first, by their partition's next catch-up
/// (partitioned by the current count). Returns how many.
#[pg_extern(sql = false)]
fn retry_parked(projection: Option<&str>, instance_id: Option<&str>, positions: Option<Vec<Option<i64>>>) -> i64 {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let positions = checked_positions(positions);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "retry_parked");
    tenancy::as_owner(|| query::with_spi(|| {
        query::run(MARK_RETRY, &[Arg::new(projection), Arg::new(instance_id), Arg::new(positions)],
            Snapshot::Statement).len() as i64
    }))
}

/// `eventstore.discard_parked(projection, instance_id, positions)`: deletes parked events (all
/// when `positions` is NULL). Returns how many.
#[pg_extern(sql = false)]
fn discard_parked(projection: Option<&str>, instance_id: Option<&str>, positions: Option<Vec<Option<i64>>>) -> i64 {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let positions = checked_positions(positions);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "discard_parked");
    tenancy::as_owner(|| query::with_spi(|| {
        query::run(DISCARD, &[Arg::new(projection), Arg::new(instance_id), Arg::new(positions)],
            Snapshot::Statement).len() as i64
    }))
}
