//! Handing out batches: `eventstore.projection_catchup`, and (partitions.rs)
//! `eventstore.partition_catchup` and `eventstore.set_partitions`.
//!
//! One call, inside the caller's transaction:
//! 1. the projection lock (G6) — busy and `wait = false`: zero rows at once (trap 10);
//! 2. the barrier (G4) — the horizon, at or below which every write has finished (refused in
//!    a transaction that is itself writing, which could deadlock); with eventstore preloaded,
//!    the horizon registry gives it without waiting (horizon.rs);
//! 3. the checkpoint and the batch, read under snapshots taken after both waits (trap 4);
//! 4. the checkpoint advanced in the caller's transaction (G5): to the last event handed out
//!    when the batch is full, else to the horizon, past events the filters skipped.
//!
//! A session bound to a tenant (src/tenancy.rs) catches up only its tenant: naming another
//! instance is refused (42501), and its global catch-up (instance NULL) is its tenant's, with
//! the tenant's checkpoint. Statements run as the extension owner.
//!
//! The batch is handed back in one call (materialize mode), straight from the query's rows into
//! the result: the pinned search_path is switched once per batch, not once per row.
//!
//! Events come in position order (G7), paged by position, never by OFFSET (trap 5). Under
//! REPEATABLE READ and SERIALIZABLE the reads still use fresh snapshots, and the checkpoint
//! write fails with 40001 when another worker moved it after the transaction's snapshot (G10).
//!
//! A projection has partitions (partitions.rs), each with its own checkpoint row and lock; one
//! that was never partitioned has one, partition 0, whose checkpoint row and lock are the
//! projection's. Both entry points hand out one partition's batch through [`hand_out`], so G4-G7
//! hold per partition exactly as they hold for a whole projection (G12).

mod partitions;
mod poison;
mod rebuild;

use pgrx::fcinfo::pg_getarg;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::checks::{optional_identifier, require_identifier};
use crate::errors;
use crate::horizon;
use crate::locks;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;

/// Largest batch one call hands out.
pub const MAX_CATCHUP_BATCH: i32 = 100_000;

/// What the caller asked for, checked.
struct Request<'a> {
    projection: &'a str,
    instance_id: Option<&'a str>,
    batch_size: i32,
    aggregate_types: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
}

impl<'a> Request<'a> {
    /// Reads the six arguments the catch-up functions take, checked, with the instance
    /// resolved for the caller's tenant; and `wait`. `Order::TenantFirst` (tenant_catchup):
    /// the instance comes first and is required.
    ///
    /// # Safety
    /// `fcinfo` is a call of a function declared with catch-up's six argument types, the
    /// projection and the instance in `order`.
    unsafe fn from_arguments(fcinfo: pg_sys::FunctionCallInfo, scope: &'a tenancy::Scope, what: &str,
                             order: Order) -> (Self, bool) {
        // SAFETY: by the caller's promise, argument i has the type read here (NULL is None).
        unsafe {
            let (projection, instance_id) = match order {
                Order::ProjectionFirst => (pg_getarg::<&str>(fcinfo, 0),
                    optional_identifier("instance_id", pg_getarg::<&str>(fcinfo, 1))),
                Order::TenantFirst => (pg_getarg::<&str>(fcinfo, 1),
                    Some(require_identifier("instance_id", pg_getarg::<&str>(fcinfo, 0)))),
            };
            let request = Request {
                projection: require_identifier("projection", projection),
                instance_id: scope.resolve(instance_id, what),
                batch_size: check_batch_size(pg_getarg::<i32>(fcinfo, 2)),
                aggregate_types: type_filter("aggregate_types", pg_getarg::<Vec<Option<String>>>(fcinfo, 3)),
                event_types: type_filter("event_types", pg_getarg::<Vec<Option<String>>>(fcinfo, 4)),
            };
            (request, pg_getarg::<bool>(fcinfo, 5).unwrap_or(false))
        }
    }
}

/// Where a catch-up function takes the projection and the instance.
#[derive(Clone, Copy)]
enum Order {
    /// `projection_catchup(projection, instance_id DEFAULT NULL, ...)`.
    ProjectionFirst,
    /// `tenant_catchup(instance_id, projection, ...)`: the tenant-first form, which Citus
    /// delegates to the tenant's node by its first argument (README "Running on Citus").
    TenantFirst,
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_projection_catchup_batch() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `eventstore.projection_catchup(projection, instance_id, batch_size, aggregate_types,
/// event_types, wait)`: the next batch of a projection (G4–G7, G10), as a materialized set.
/// A projection of more than one partition is refused (55000): partition_catchup runs it.
///
/// # Safety
/// Called by PostgreSQL's function manager with the arguments declared in sql/eventstore.sql.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn projection_catchup_batch(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is PostgreSQL's call of the SQL function declared with these six argument
    // types, projection first.
    unsafe { catchup(fcinfo, "projection_catchup", Order::ProjectionFirst) }
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_tenant_catchup_batch() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `eventstore.tenant_catchup(instance_id, projection, batch_size, aggregate_types,
/// event_types, wait)`: projection_catchup for one tenant, the instance first and required.
///
/// # Safety
/// Called by PostgreSQL's function manager with the arguments declared in sql/eventstore.sql.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn tenant_catchup_batch(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is PostgreSQL's call of the SQL function declared with these six argument
    // types, instance first.
    unsafe { catchup(fcinfo, "tenant_catchup", Order::TenantFirst) }
}

/// One catch-up call: the next batch of an unpartitioned projection, as a materialized set.
///
/// # Safety
/// `fcinfo` is a call of a function declared with catch-up's six argument types in `order`.
unsafe fn catchup(fcinfo: pg_sys::FunctionCallInfo, what: &str, order: Order) -> pg_sys::Datum {
    // SAFETY: by the caller's promise; InitMaterializedSRF sets up the result tuplestore and
    // descriptor we then fill, as the function manager expects.
    unsafe {
        let scope = tenancy::caller_scope();
        let (request, wait) = Request::from_arguments(fcinfo, &scope, what, order);
        pg_sys::InitMaterializedSRF(fcinfo, pg_sys::MAT_SRF_USE_EXPECTED_DESC);
        let result = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        horizon::refuse_while_writing();
        if locks::lock_projection_key(request.projection, request.instance_id, wait) {
            tenancy::as_owner(|| query::with_spi(|| {
                let mut horizon = Horizon::new(request.instance_id);
                let definition = partitions::Definition::read(request.projection, request.instance_id);
                partitions::refuse_partitioned(request.projection, &definition);
                hand_out(&request, 0, &mut horizon, false, query::Sink::of(result), Some(definition));
            }));
        }
        pg_sys::Datum::from(0usize)
    }
}

/// `eventstore.lock_projection(projection, instance_id, wait)`: the exclusive projection lock
/// (G6) that catch-up takes; busy and `wait = false` returns false, not an error (trap 10).
/// It is partition 0's lock.
#[pg_extern(sql = false)]
fn lock_projection(projection: Option<&str>, instance_id: Option<&str>, wait: Option<bool>) -> bool {
    let instance_id = optional_identifier("instance_id", instance_id);
    take_projection_lock(projection, instance_id, wait, "lock_projection")
}

/// `eventstore.tenant_lock_projection(instance_id, projection, wait)`: lock_projection for one
/// tenant, the instance first and required.
#[pg_extern(sql = false)]
fn tenant_lock_projection(instance_id: Option<&str>, projection: Option<&str>, wait: Option<bool>) -> bool {
    let instance_id = require_identifier("instance_id", instance_id);
    take_projection_lock(projection, Some(instance_id), wait, "tenant_lock_projection")
}

fn take_projection_lock(projection: Option<&str>, instance_id: Option<&str>, wait: Option<bool>, what: &str) -> bool {
    let projection = require_identifier("projection", projection);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, what);
    let wait = wait.unwrap_or(false);
    if wait {
        // A catch-up holding the projection may be waiting for this transaction's writes.
        horizon::refuse_while_writing();
    }
    locks::lock_projection_key(projection, instance_id, wait)
}

/// The horizon of one call, found once (the barrier waits for the writers in flight) and then
/// reused for every partition the call looks at: still a position at or below which every
/// write has finished.
struct Horizon<'a> {
    instance_id: Option<&'a str>,
    position: Option<i64>,
}

impl<'a> Horizon<'a> {
    fn new(instance_id: Option<&'a str>) -> Self {
        Horizon { instance_id, position: None }
    }

    fn get(&mut self) -> i64 {
        *self.position.get_or_insert_with(|| horizon::horizon(self.instance_id))
    }
}

/// What one partition had for the caller.
enum Handed {
    /// A batch, put into the result; the checkpoint moved past it.
    Rows,
    /// No event for the caller, but the checkpoint moved past other partitions' (or filtered)
    /// events: the write must commit with the caller's transaction, so the lock stays held.
    Moved,
    /// Nothing, and nothing written.
    Nothing,
}

/// The next batch of partition `partition` of the request's projection, whose lock the caller
/// holds, and the checkpoint advanced (G5): to the last event handed out when the batch is
/// full, else to the horizon (or the end of the partition's layout), past events the filters
/// or the partitioning skipped. `partition_column`: each row starts with the partition number.
/// The batch goes straight into `sink`, the call's result, as the executor reads it; nothing
/// else is ever put there, so a partition that has nothing leaves it empty. `definition`: the
/// projection's, when the caller read it with the partition's lock held; else read here.
fn hand_out(request: &Request, partition: i32, horizon: &mut Horizon, partition_column: bool, sink: query::Sink,
    definition: Option<partitions::Definition>) -> Handed {
    let definition = definition
        .unwrap_or_else(|| partitions::Definition::read(request.projection, request.instance_id));
    let recorded = schema_has_partitions().then(|| poison::recorded(request, partition));
    let (retries, failed, mut parked) = recorded.map_or((false, false, false), |r| (r.retries, r.failed, r.parked));
    if let Some(retried) = retries.then(|| poison::due_retries(request, partition)).flatten() {
        retried.put_all(sink.store, sink.desc, partition_column.then_some(partition));
        return Handed::Rows;
    }
    let mut checkpoint = read_checkpoint(request, partition);
    let Some(layout) = definition.layout(request, partition, checkpoint) else {
        return Handed::Nothing;
    };
    let mut upto = layout.until.map_or(horizon.get(), |until| until.min(horizon.get()));
    if upto <= checkpoint {
        return Handed::Nothing;
    }
    let mut limit = request.batch_size;
    // A recorded failure (G13): the events before the failing one as usual, then the failing
    // one alone, and after max_attempts, parked and passed. Events before it in other
    // partitions or filtered out are passed at once, so that zero rows still means nothing.
    if let Some(failure) = failed.then(|| poison::failure(request, partition, checkpoint)).flatten() {
        if failure.position - 1 > checkpoint
            && has_events(request, &layout, partition, checkpoint, failure.position - 1) {
            upto = upto.min(failure.position - 1);
        } else if failure.attempts >= definition.max_attempts && failure.position <= upto {
            poison::park(request, partition);
            parked = true;
            checkpoint = failure.position;
            if upto <= checkpoint {
                write_checkpoint(request, partition, checkpoint);
                return Handed::Moved;
            }
        } else {
            checkpoint = checkpoint.max(failure.position - 1);
            upto = upto.min(failure.position);
            limit = 1;
        }
    }
    let shape = Shape {
        request,
        partitioned: layout.partitions > 1,
        partition_column,
        parked,
        held: parked && definition.hold_aggregate,
    };
    let args = |upto: i64| [
        Arg::new(checkpoint),
        Arg::new(upto),
        Arg::new(limit),
        Arg::new(request.instance_id),
        Arg::new(request.aggregate_types.clone()),
        Arg::new(request.event_types.clone()),
        Arg::new(layout.partitions),
        Arg::new(partition),
        Arg::new(request.projection),
    ];
    let batch = query::run_into(&shape.batch_query(), &args(upto), Snapshot::Latest, sink,
        sink.live_column(c"position"));
    let full = batch.count == limit as usize;
    let advanced_to = if full { batch.last.expect("position is not NULL") } else { upto };
    if shape.held {
        query::run(&poison::park_held_query(&shape.conditions()), &args(advanced_to), Snapshot::Statement);
    }
    if let Some(first) = batch.first {
        poison::count_in_batch_mutant(request, partition, first);
    }
    write_checkpoint(request, partition, advanced_to);
    if batch.count == 0 { Handed::Moved } else { Handed::Rows }
}

/// Whether the partition has an event for the request in (`after`, `upto`].
fn has_events(request: &Request, layout: &partitions::Layout, partition: i32, after: i64, upto: i64) -> bool {
    let shape = Shape { request, partitioned: layout.partitions > 1, partition_column: false, parked: false, held: false };
    query::run(&shape.batch_query(), &[
        Arg::new(after),
        Arg::new(upto),
        Arg::new(1i32),
        Arg::new(request.instance_id),
        Arg::new(request.aggregate_types.clone()),
        Arg::new(request.event_types.clone()),
        Arg::new(layout.partitions),
        Arg::new(partition),
        Arg::new(request.projection),
    ], Snapshot::Latest).len() > 0
}

/// The shape of a batch statement.
struct Shape<'a, 'r> {
    request: &'a Request<'r>,
    /// Only the events of one partition among several.
    partitioned: bool,
    /// Each row starts with the partition number.
    partition_column: bool,
    /// Parked events are left out (one may lie past the checkpoint: projection_failed parks
    /// a due failure whose park a failing batch rolled back, poison.rs).
    parked: bool,
    /// Events held behind a parked event of their aggregate are left out (they are parked).
    held: bool,
}

impl Shape<'_, '_> {
    /// The statement for a request's shape. Built only from fixed fragments: no user string is
    /// ever part of SQL text. Parameters: $1 checkpoint, $2 upper bound, $3 batch size,
    /// $4 instance, $5 aggregate types, $6 event types, $7 partition count, $8 partition,
    /// $9 projection.
    fn batch_query(&self) -> String {
        let conditions = self.conditions();
        let conditions = if self.held { format!("{conditions} AND NOT {}", poison::HELD) } else { conditions };
        let conditions = if self.parked { format!("{conditions} AND NOT {}", poison::PARKED) } else { conditions };
        let request = self.request;
        let partition = if self.partition_column { "$8 AS partition, " } else { "" };
        if request.aggregate_types.is_some() {
            // One index range per aggregate type, merged by position: served by the
            // (instance_id, aggregate_type, position) and (aggregate_type, position) indexes.
            format!(
                "SELECT {partition}x.* FROM unnest($5::text[]) AS t(aggregate_type) \
                 CROSS JOIN LATERAL (SELECT e.* FROM eventstore.events e \
                 WHERE e.aggregate_type = t.aggregate_type AND {conditions} \
                 ORDER BY e.position LIMIT $3) x ORDER BY x.position LIMIT $3"
            )
        } else {
            format!(
                "SELECT {partition}e.* FROM eventstore.events e WHERE {conditions} \
                 ORDER BY e.position LIMIT $3"
            )
        }
    }
}

impl Shape<'_, '_> {
    /// The conditions on event `e` (without the aggregate type filter, which the batch statement
    /// applies by index ranges).
    fn conditions(&self) -> String {
        let request = self.request;
        let mut conditions = String::from("e.position > $1 AND e.position <= $2");
        if request.instance_id.is_some() {
            conditions.push_str(" AND e.instance_id = $4");
        }
        if request.event_types.is_some() {
            conditions.push_str(" AND e.event_type = ANY ($6)");
        }
        if request.aggregate_types.is_some() && self.held {
            conditions.push_str(" AND e.aggregate_type = ANY ($5)");
        }
        if self.partitioned {
            conditions.push_str(
                " AND eventstore.partition_of(e.instance_id, e.aggregate_type, e.aggregate_id, $7) = $8");
        }
        conditions
    }
}

/// `sql` with `{instance}` replaced by the condition on `instance_id` (`$2`): equal, or NULL for
/// a global projection, so that the unique index serves both.
fn for_instance(sql: &str, instance_id: Option<&str>) -> String {
    sql.replace("{instance}", if instance_id.is_some() { "instance_id = $2" } else { "instance_id IS NULL" })
}

const CHECKPOINT: &str = "SELECT checkpoint FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND partition = $3";
/// Before release 0.3.0's schema (a database not yet updated with ALTER EXTENSION ... UPDATE
/// runs this library too): one checkpoint per projection and instance, partition 0.
const CHECKPOINT_BEFORE_PARTITIONS: &str = "SELECT checkpoint FROM eventstore.projection_states \
     WHERE projection = $1 AND {instance} AND $3 = 0";

/// Whether the schema has partitions (release 0.3.0 on): a database not yet updated keeps
/// working with this library, unpartitioned.
pub fn schema_has_partitions() -> bool {
    query::relation_exists(c"projections")
}

/// The partition's checkpoint, read after its lock was granted, so that it includes the commit
/// of the worker we may have waited for (trap 4).
fn read_checkpoint(request: &Request, partition: i32) -> i64 {
    let sql = if schema_has_partitions() { CHECKPOINT } else { CHECKPOINT_BEFORE_PARTITIONS };
    let rows = query::run(&for_instance(sql, request.instance_id),
        &[Arg::new(request.projection), Arg::new(request.instance_id), Arg::new(partition)],
        Snapshot::Latest);
    if rows.len() == 0 { 0 } else { rows.get::<i64>(0, 1).unwrap_or(0) }
}

const ADVANCE_CHECKPOINT: &str = "\
INSERT INTO eventstore.projection_states AS s (projection, instance_id, partition, checkpoint, updated_at)
VALUES ($1, $2, $3, $4, clock_timestamp())
ON CONFLICT ON CONSTRAINT projection_states_key
DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at";
const ADVANCE_CHECKPOINT_BEFORE_PARTITIONS: &str = "\
INSERT INTO eventstore.projection_states AS s (projection, instance_id, checkpoint, updated_at)
VALUES ($1, $2, $4, clock_timestamp())
ON CONFLICT ON CONSTRAINT projection_states_key
DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at";

/// Moves the partition's checkpoint in the caller's transaction (G5): commit and the batch is
/// done, roll back and it comes again.
fn write_checkpoint(request: &Request, partition: i32, checkpoint: i64) {
    let sql = if schema_has_partitions() { ADVANCE_CHECKPOINT } else { ADVANCE_CHECKPOINT_BEFORE_PARTITIONS };
    query::run(sql,
        &[Arg::new(request.projection), Arg::new(request.instance_id), Arg::new(partition), Arg::new(checkpoint)],
        Snapshot::Statement);
}

fn check_batch_size(batch_size: Option<i32>) -> i32 {
    match batch_size {
        Some(n) if (1..=MAX_CATCHUP_BATCH).contains(&n) => n,
        other => errors::raise(errors::INVALID_VALUE, "batch_size is out of range".into(),
            format!("batch_size is {}; it must be between 1 and {MAX_CATCHUP_BATCH}.",
                other.map_or("NULL".to_string(), |n| n.to_string())), ""),
    }
}

/// NULL means every type; otherwise a non-empty list of identifiers, without repeats.
fn type_filter(field: &str, types: Option<Vec<Option<String>>>) -> Option<Vec<String>> {
    let types = types?;
    if types.is_empty() {
        errors::raise(errors::INVALID_VALUE, format!("{field} must not be empty"),
            format!("{field} is an empty array, which would match no event."),
            "Pass NULL for every type.");
    }
    let mut checked = Vec::with_capacity(types.len());
    for t in types {
        match t {
            Some(t) if !t.is_empty() => checked.push(t),
            _ => errors::raise(errors::INVALID_VALUE,
                format!("{field} must not contain NULL or an empty string"),
                format!("{field} has an element that is {}.", if t.is_none() { "NULL" } else { "empty" }),
                "Pass NULL instead of the array for every type."),
        }
    }
    checked.sort();
    checked.dedup();
    Some(checked)
}
