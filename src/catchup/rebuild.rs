//! Rebuilds: `eventstore.reset_projection` moves a projection's (or one partition's) checkpoint
//! to a position, so that its events past that position are handed out again to rebuild the read
//! model. It takes the partitions' locks (waiting, in key order), so it never runs beside a
//! batch (G6 per partition), and writes in the caller's transaction: the read model's own reset
//! (TRUNCATE, DELETE) can commit with it.
//!
//! Blue/green (README "Rebuilding a projection"): run the new version under a new name beside
//! the old one; its checkpoints start at 0; switch the readers once it has caught up, then stop
//! the old workers and reset or forget the old name.

use pgrx::prelude::*;

use super::partitions::{lock_every_partition, old_partitions_passed};
use super::for_instance;
use crate::checks::{optional_identifier, require_identifier, truncate};
use crate::errors;
use crate::horizon;
use crate::positions::last_position;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;

const KNOWN: &str = "SELECT (SELECT count(*) FROM eventstore.projection_states WHERE projection = $1 AND {instance}) \
     + (SELECT count(*) FROM eventstore.projections WHERE projection = $1 AND {instance})";

const RESET: &str = "\
INSERT INTO eventstore.projection_states (projection, instance_id, partition, checkpoint, updated_at)
SELECT $1, $2, p, $5, clock_timestamp() FROM generate_series($3, $4 - 1) AS p
ON CONFLICT ON CONSTRAINT projection_states_key
DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at";
const DROP_OTHER_PARTITIONS: &str = "DELETE FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND partition >= $3";
const END_RESIZE: &str = "UPDATE eventstore.projections SET resize_from = NULL, updated_at = clock_timestamp() \
     WHERE projection = $1 AND {instance}";
const FORGET_FAILURES: &str = "DELETE FROM eventstore.projection_failures \
     WHERE projection = $1 AND {instance} AND partition >= $3 AND partition < $4";

/// `eventstore.reset_projection(projection, instance_id, partition, to_position)`: sets the
/// checkpoint of one partition, or of every partition when `partition` is NULL, to
/// `to_position` (0: from the beginning), waiting for running batches, and forgets their
/// recorded failures (parked events stay: discard_parked drops them). Resetting every partition
/// ends a resize that is still draining: all partitions then follow the current count. Returns
/// how many partitions were reset.
#[pg_extern(sql = false)]
fn reset_projection(projection: Option<&str>, instance_id: Option<&str>, partition: Option<i32>,
                    to_position: Option<i64>) -> i32 {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let Some(to_position) = to_position else {
        errors::raise(errors::NULL_VALUE, "to_position must not be NULL".into(), "to_position is NULL.".into(),
            "Pass 0 to rebuild from the beginning.")
    };
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "reset_projection");
    horizon::refuse_while_writing();
    tenancy::as_owner(|| query::with_spi(|| {
        let last = last_position();
        if !(0..=last).contains(&to_position) {
            errors::raise(errors::INVALID_VALUE, "to_position is out of range".into(),
                format!("to_position is {to_position}; it must be between 0 and the last position drawn, {last}."), "");
        }
        let scoped = |sql: &str| for_instance(sql, instance_id);
        let definition = lock_every_partition(projection, instance_id);
        let known = query::run(&scoped(KNOWN), &[Arg::new(projection), Arg::new(instance_id)], Snapshot::Latest)
            .get::<i64>(0, 1).unwrap_or(0);
        if known == 0 {
            errors::raise(errors::INVALID_VALUE, format!("projection \"{}\" is unknown", truncate(projection, 80)),
                format!("Projection \"{}\" has no checkpoint and no definition{}.", truncate(projection, 80),
                    instance_id.map_or(String::new(), |i| format!(" for instance \"{}\"", truncate(i, 80)))),
                "A projection that never ran starts from the beginning anyway.");
        }
        let (first, end) = match partition {
            None => (0, definition.partitions),
            Some(p) if (0..definition.partitions).contains(&p) => (p, p + 1),
            Some(p) => errors::raise(errors::INVALID_VALUE, "partition is out of range".into(),
                format!("partition is {p}; projection \"{}\" has partitions 0 to {}.",
                    truncate(projection, 80), definition.partitions - 1), "Pass NULL for every partition."),
        };
        let pending = definition.resize_from
            .filter(|old| !old_partitions_passed(projection, instance_id, *old, definition.resize_position));
        if partition.is_some() && pending.is_some() {
            errors::raise(errors::WRONG_STATE,
                format!("projection \"{}\" is still resizing", truncate(projection, 80)),
                format!("Partition checkpoints follow two layouts until the resize at position {} drains.",
                    definition.resize_position),
                "Reset every partition (partition => NULL), or wait until the resize has drained.");
        }
        let args = [Arg::new(projection), Arg::new(instance_id), Arg::new(first), Arg::new(end), Arg::new(to_position)];
        query::run(RESET, &args, Snapshot::Statement);
        if partition.is_none() {
            query::run(&scoped(DROP_OTHER_PARTITIONS), &args[..3], Snapshot::Statement);
            query::run(&scoped(END_RESIZE), &args[..2], Snapshot::Statement);
        }
        query::run(&scoped(FORGET_FAILURES), &args[..4], Snapshot::Statement);
        end - first
    }))
}
