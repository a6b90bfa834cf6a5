//! Partitioned projections (G12): `eventstore.partition_catchup` and `eventstore.set_partitions`.
//!
//! A projection of N partitions has N checkpoint rows (partition 0..N-1) and N locks; an event
//! belongs to partition `eventstore.partition_of(instance, aggregate type, aggregate id, N)`, so
//! an aggregate's events stay in one partition, in sequence order. Each partition is run like a
//! whole projection (G4–G7 per partition, through [`super::hand_out`]); workers spread over
//! the partitions by trying their locks in turn from a rotating start, never waiting for a busy
//! one unless asked to.
//!
//! Resizing from M to N partitions takes effect at a position R (the last position drawn when
//! set_partitions runs, with every partition's lock held, so no batch straddles it): events at
//! or below R belong to the old layout, events above R to the new one. An old partition hands
//! out its events up to R; a partition of the new layout hands out events above R only once
//! every old partition's committed checkpoint has reached R. So an aggregate's events before R
//! are all handed out (and committed) before any of its events after R: nothing is skipped,
//! repeated or reordered. Partition p's checkpoint row and lock serve the old partition p until
//! it reaches R and the new partition p after.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::{for_instance, hand_out, Handed, Horizon, Order, Request};
use crate::checks::{optional_identifier, require_identifier, truncate};
use crate::errors;
use crate::horizon;
use crate::locks;
use crate::mutants;
use crate::positions::last_position;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;

/// Most partitions a projection may have (the resize takes every partition's lock at once).
pub const MAX_PARTITIONS: i32 = 256;

/// How a projection is partitioned (a row of eventstore.projections; 1 partition without one).
pub struct Definition {
    pub partitions: i32,
    /// While a resize drains: the partition count before it.
    pub resize_from: Option<i32>,
    /// The position from which `partitions` applies.
    pub resize_position: i64,
    /// Failures recorded for an event before it is parked (G13).
    pub max_attempts: i32,
    /// Whether a parked event's aggregate's later events are parked behind it.
    pub hold_aggregate: bool,
}

/// Which events a partition hands out now.
pub struct Layout {
    /// The partition count its events are chosen by.
    pub partitions: i32,
    /// The last position it may hand out (an old partition stops at the resize position).
    pub until: Option<i64>,
}

const DEFINITION: &str = "SELECT partitions, resize_from, resize_position, max_attempts, hold_aggregate \
     FROM eventstore.projections \
     WHERE projection = $1 AND {instance}";

impl Definition {
    /// The projection's definition, read under a fresh snapshot (after any lock wait, trap 4).
    pub fn read(projection: &str, instance_id: Option<&str>) -> Definition {
        let undefined = Definition {
            partitions: 1, resize_from: None, resize_position: 0, max_attempts: 3, hold_aggregate: true,
        };
        if !super::schema_has_partitions() {
            return undefined;
        }
        let rows = query::run(&for_instance(DEFINITION, instance_id),
            &[Arg::new(projection), Arg::new(instance_id)], Snapshot::Latest);
        if rows.len() == 0 {
            return undefined;
        }
        Definition {
            partitions: rows.get::<i32>(0, 1).expect("partitions is not NULL"),
            resize_from: rows.get::<i32>(0, 2),
            resize_position: rows.get::<i64>(0, 3).unwrap_or(0),
            max_attempts: rows.get::<i32>(0, 4).unwrap_or(3),
            hold_aggregate: rows.get::<bool>(0, 5).unwrap_or(true),
        }
    }

    /// Partition numbers that may have something to hand out: the new layout's and, while a
    /// resize drains, the old one's.
    pub fn slots(&self) -> i32 {
        self.partitions.max(self.resize_from.unwrap_or(0))
    }

    /// What `partition`, at `checkpoint`, hands out now; `None` for nothing (a partition beyond
    /// the count, or a new partition while an old one has not reached the resize position).
    pub fn layout(&self, request: &Request, partition: i32, checkpoint: i64) -> Option<Layout> {
        if let Some(old) = self.resize_from.filter(|_| !mutants::RESIZE_IGNORED) {
            if partition < old && checkpoint < self.resize_position {
                return Some(Layout { partitions: old, until: Some(self.resize_position) });
            }
            if partition >= self.partitions
                || !old_partitions_passed(request.projection, request.instance_id, old, self.resize_position) {
                return None;
            }
        }
        (partition < self.partitions).then_some(Layout { partitions: self.partitions, until: None })
    }
}

const OLD_PARTITIONS_PASSED: &str = "SELECT count(*)::integer FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND partition < $3 AND checkpoint >= $4";

/// Whether every partition of the old layout (0..old) has committed a checkpoint at or past the
/// resize position.
pub fn old_partitions_passed(projection: &str, instance_id: Option<&str>, old: i32, resize_position: i64) -> bool {
    let rows = query::run(&for_instance(OLD_PARTITIONS_PASSED, instance_id),
        &[Arg::new(projection), Arg::new(instance_id), Arg::new(old), Arg::new(resize_position)],
        Snapshot::Latest);
    rows.get::<i32>(0, 1) == Some(old)
}

/// projection_catchup runs a projection of one partition only.
pub fn refuse_partitioned(projection: &str, definition: &Definition) {
    if definition.partitions > 1 {
        errors::raise(errors::WRONG_STATE,
            format!("projection \"{}\" has {} partitions", truncate(projection, 80), definition.partitions),
            "projection_catchup hands out a whole projection; this one is split into partitions, \
             each with its own checkpoint and lock.".into(),
            "Use eventstore.partition_catchup, which hands out the next batch of a free partition.");
    }
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_partition_catchup_batch() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

thread_local! {
    /// Calls of partition_catchup in this backend: where the next call starts trying partitions.
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

/// Where this call starts trying partitions: rotating per call, and different per backend, so
/// that workers spread over the partitions without a coordinator.
fn first_partition(slots: i32) -> i32 {
    let calls = CALLS.get();
    CALLS.set(calls.wrapping_add(1));
    // SAFETY: MyProcPid is set once when the backend starts and only read afterwards.
    let pid = unsafe { pg_sys::MyProcPid } as u32;
    (pid.wrapping_add(calls) % slots as u32) as i32
}

/// `eventstore.partition_catchup(projection, instance_id, batch_size, aggregate_types,
/// event_types, wait)`: tries the partitions' locks in turn (never waiting) and hands out the
/// next batch of the first free partition that has one, each row led by its partition number;
/// its checkpoint moves in the caller's transaction (G4–G7 per partition, G12). With `wait`,
/// when every partition is busy, waits for the first one tried. Zero rows: nothing for this
/// worker now.
///
/// # Safety
/// Called by PostgreSQL's function manager with the arguments declared in sql/eventstore.sql.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn partition_catchup_batch(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: as for projection_catchup_batch: the six arguments of catch-up, and a
    // materialized result whose descriptor is the partition number and the event's columns.
    unsafe {
        let scope = tenancy::caller_scope();
        let (request, wait) = Request::from_arguments(fcinfo, &scope, "partition_catchup", Order::ProjectionFirst);
        pg_sys::InitMaterializedSRF(fcinfo, pg_sys::MAT_SRF_USE_EXPECTED_DESC);
        let result = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        horizon::refuse_while_writing();
        tenancy::as_owner(|| query::with_spi(|| first_free_batch(&request, wait, query::Sink::of(result))));
        pg_sys::Datum::from(0usize)
    }
}

/// The batch of the first free partition that has one. A partition that had nothing is
/// released at once, unless its checkpoint moved (then its lock is kept until the transaction
/// ends, with the write). The batch goes into `sink`.
fn first_free_batch(request: &Request, wait: bool, sink: query::Sink) {
    let slots = Definition::read(request.projection, request.instance_id).slots();
    let first = first_partition(slots);
    let mut horizon = Horizon::new(request.instance_id);
    let mut any_free = false;
    for i in 0..slots {
        let partition = (first + i) % slots;
        if !locks::lock_partition(request.projection, request.instance_id, partition, false) {
            continue;
        }
        any_free = true;
        match hand_out(request, partition, &mut horizon, true, sink, None) {
            Handed::Rows => return,
            Handed::Moved => {}
            Handed::Nothing => locks::unlock_partition(request.projection, request.instance_id, partition),
        }
    }
    if wait && !any_free {
        locks::lock_partition(request.projection, request.instance_id, first, true);
        hand_out(request, first, &mut horizon, true, sink, None);
    }
}

/// `eventstore.set_partitions(projection, instance_id, partitions)`: defines or resizes a
/// projection's partitions (G12). Waits for every partition's running batch (their locks, in
/// key order), then records the resize position R, the last position drawn: the old partitions
/// hand out up to R, the new ones above R once every old one has passed it. Returns R (0 for a
/// projection that never handed anything out: its partitions all start from the beginning;
/// unchanged count: the current resize position). Refused (55000) while an earlier resize still drains.
#[pg_extern(sql = false)]
fn set_partitions(projection: Option<&str>, instance_id: Option<&str>, partitions: Option<i32>) -> i64 {
    let projection = require_identifier("projection", projection);
    let instance_id = optional_identifier("instance_id", instance_id);
    let partitions = check_partition_count(partitions);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "set_partitions");
    horizon::refuse_while_writing();
    tenancy::as_owner(|| query::with_spi(|| {
        let current = lock_every_partition(projection, instance_id);
        if let Some(old) = current.resize_from {
            if !old_partitions_passed(projection, instance_id, old, current.resize_position) {
                errors::raise(errors::WRONG_STATE,
                    format!("projection \"{}\" is still resizing", truncate(projection, 80)),
                    format!("The resize from {old} to {} partitions at position {} has not drained: \
                             an old partition has not reached that position yet.",
                        current.partitions, current.resize_position),
                    "Run the projection's workers until every old partition has passed the resize \
                     position (projection_status), then resize again.");
            }
        }
        if partitions == current.partitions {
            return current.resize_position;
        }
        let resize_position = if has_run(projection, instance_id) {
            let position = last_position();
            prepare_checkpoints(projection, instance_id, current.partitions, partitions, position);
            Some(position)
        } else {
            prepare_checkpoints(projection, instance_id, partitions, partitions, 0);
            None
        };
        query::run(WRITE_DEFINITION, &[
            Arg::new(projection),
            Arg::new(instance_id),
            Arg::new(partitions),
            Arg::new(resize_position.map(|_| current.partitions)),
            Arg::new(resize_position.unwrap_or(0)),
        ], Snapshot::Statement);
        resize_position.unwrap_or(0)
    }))
}

/// Takes the lock of every partition that may hand out events (waiting, in key order) and
/// returns the definition read after them; again when it grew meanwhile (a concurrent resize).
pub fn lock_every_partition(projection: &str, instance_id: Option<&str>) -> Definition {
    let mut locked = 0;
    loop {
        let definition = Definition::read(projection, instance_id);
        let slots = definition.slots();
        if slots <= locked {
            return definition;
        }
        locks::lock_partitions_waiting(projection, instance_id, locked..slots);
        locked = slots;
    }
}

const HAS_RUN: &str = "SELECT count(*)::integer FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND checkpoint > 0";

/// Whether any partition of the projection has handed out anything (a checkpoint above 0).
fn has_run(projection: &str, instance_id: Option<&str>) -> bool {
    query::run(&for_instance(HAS_RUN, instance_id), &[Arg::new(projection), Arg::new(instance_id)],
        Snapshot::Latest).get::<i32>(0, 1).unwrap_or(0) > 0
}

const DROP_DRAINED_CHECKPOINTS: &str = "DELETE FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND partition >= $3";

const ADD_CHECKPOINTS: &str = "\
INSERT INTO eventstore.projection_states (projection, instance_id, partition, checkpoint, updated_at)
SELECT $1, $2, p, $5, clock_timestamp() FROM generate_series($3, $4 - 1) AS p
ON CONFLICT ON CONSTRAINT projection_states_key DO NOTHING";

/// The checkpoint rows of a resize from `old` to `new` partitions at `resize_position`: rows
/// beyond the old count (left by an earlier, drained shrink) go; every old partition has a row
/// (0 when it never ran); a partition added by the resize starts at the resize position. For a
/// projection that never ran, `old` = `new`: rows 0..new at 0, so that projection_status shows
/// every partition from the start.
fn prepare_checkpoints(projection: &str, instance_id: Option<&str>, old: i32, new: i32, resize_position: i64) {
    let scoped = |sql: &str| for_instance(sql, instance_id);
    query::run(&scoped(DROP_DRAINED_CHECKPOINTS),
        &[Arg::new(projection), Arg::new(instance_id), Arg::new(old)], Snapshot::Statement);
    query::run(ADD_CHECKPOINTS,
        &[Arg::new(projection), Arg::new(instance_id), Arg::new(0i32), Arg::new(old), Arg::new(0i64)],
        Snapshot::Statement);
    query::run(ADD_CHECKPOINTS,
        &[Arg::new(projection), Arg::new(instance_id), Arg::new(old), Arg::new(new), Arg::new(resize_position)],
        Snapshot::Statement);
}

const WRITE_DEFINITION: &str = "\
INSERT INTO eventstore.projections AS d (projection, instance_id, partitions, resize_from, resize_position, updated_at)
VALUES ($1, $2, $3, $4, $5, clock_timestamp())
ON CONFLICT ON CONSTRAINT projections_key DO UPDATE
SET partitions = excluded.partitions, resize_from = excluded.resize_from,
    resize_position = excluded.resize_position, updated_at = excluded.updated_at";

/// A partition count: 1..[`MAX_PARTITIONS`].
fn check_partition_count(partitions: Option<i32>) -> i32 {
    match partitions {
        None => errors::raise(errors::NULL_VALUE, "partitions must not be NULL".into(),
            "partitions is NULL.".into(), "A projection that is not partitioned has 1 partition."),
        Some(n) if (1..=MAX_PARTITIONS).contains(&n) => n,
        Some(n) => errors::raise(errors::INVALID_VALUE, "partitions is out of range".into(),
            format!("partitions is {n}; it must be between 1 and {MAX_PARTITIONS}."), ""),
    }
}
