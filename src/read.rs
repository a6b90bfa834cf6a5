//! Reading one aggregate: `eventstore.read_aggregate` and `eventstore.aggregate_sequence`.
//!
//! An application loads an aggregate to decide its next command, and after a version conflict
//! (ES409) it must load it again; a role with only `eventstore_writer` has no SELECT on
//! `eventstore.events`, so these two functions read for it. They keep tenancy as push does
//! (G11): a session bound to a tenant is refused any other instance with 42501 before anything
//! is read (`Scope::check`), and the statement runs as the owner (`as_owner`). They read with
//! the statement's snapshot, as a SELECT would: under REPEATABLE READ, the transaction's.

use pgrx::fcinfo::pg_getarg;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::checks::require_identifier;
use crate::errors;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;

/// Most events one `read_aggregate` call returns.
pub const MAX_READ_COUNT: i32 = 100_000;

const EVENTS_OF_AGGREGATE: &str = "\
SELECT e.* FROM eventstore.events e
 WHERE e.instance_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3 AND e.sequence >= $4
 ORDER BY e.sequence LIMIT $5";

const SEQUENCE_OF_AGGREGATE: &str = "\
SELECT e.sequence FROM eventstore.events e
 WHERE e.instance_id = $1 AND e.aggregate_type = $2 AND e.aggregate_id = $3
 ORDER BY e.sequence DESC LIMIT 1";

/// The three names of an aggregate, checked, and refused outside the caller's tenant.
fn aggregate<'a>(
    what: &str,
    instance_id: Option<&'a str>,
    aggregate_type: Option<&'a str>,
    aggregate_id: Option<&'a str>,
) -> [&'a str; 3] {
    let names = [
        require_identifier("instance_id", instance_id),
        require_identifier("aggregate_type", aggregate_type),
        require_identifier("aggregate_id", aggregate_id),
    ];
    tenancy::caller_scope().check(names[0], what);
    names
}

#[no_mangle]
#[doc(hidden)]
pub extern "C" fn pg_finfo_read_aggregate_rows() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `eventstore.read_aggregate(instance_id, aggregate_type, aggregate_id, from_sequence,
/// max_count)`: the aggregate's events with `sequence >= from_sequence`, in sequence order, at
/// most `max_count` (1..100000, 22023 otherwise), as a materialized set of eventstore.events.
///
/// # Safety
/// Called by PostgreSQL's function manager with the arguments declared in sql/eventstore.sql.
#[pg_guard]
#[no_mangle]
pub unsafe extern "C-unwind" fn read_aggregate_rows(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: fcinfo is PostgreSQL's call of the SQL function declared with these five argument
    // types (pg_getarg reads each as its type, NULL as None); InitMaterializedSRF sets up the
    // result tuplestore and descriptor (eventstore.events) that the rows are put into.
    unsafe {
        let [instance_id, aggregate_type, aggregate_id] = aggregate("read_aggregate",
            pg_getarg::<&str>(fcinfo, 0), pg_getarg::<&str>(fcinfo, 1), pg_getarg::<&str>(fcinfo, 2));
        let Some(from_sequence) = pg_getarg::<i64>(fcinfo, 3) else {
            errors::raise(errors::NULL_VALUE, "from_sequence must not be NULL".into(),
                "from_sequence is NULL.".into(), "Pass 1 to read from the first event.")
        };
        let max_count = match pg_getarg::<i32>(fcinfo, 4) {
            Some(n) if (1..=MAX_READ_COUNT).contains(&n) => n,
            other => errors::raise(errors::INVALID_VALUE, "max_count is out of range".into(),
                format!("max_count is {}; it must be between 1 and {MAX_READ_COUNT}.",
                    other.map_or("NULL".to_string(), |n| n.to_string())),
                "Read a long aggregate in pages: from_sequence = the last sequence read + 1."),
        };
        pg_sys::InitMaterializedSRF(fcinfo, pg_sys::MAT_SRF_USE_EXPECTED_DESC);
        let result = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        tenancy::as_owner(|| query::with_spi(|| {
            query::run(EVENTS_OF_AGGREGATE, &[
                Arg::new(instance_id), Arg::new(aggregate_type), Arg::new(aggregate_id),
                Arg::new(from_sequence), Arg::new(max_count),
            ], Snapshot::Statement).put_all((*result).setResult, (*result).setDesc, None);
        }));
        pg_sys::Datum::from(0usize)
    }
}

/// `eventstore.aggregate_sequence(instance_id, aggregate_type, aggregate_id)`: the aggregate's
/// current sequence, 0 when it has no event: what `expected_sequence` must say for the next
/// command to be accepted.
#[pg_extern(sql = false)]
fn aggregate_sequence(instance_id: Option<&str>, aggregate_type: Option<&str>, aggregate_id: Option<&str>) -> i64 {
    let [instance_id, aggregate_type, aggregate_id] =
        aggregate("aggregate_sequence", instance_id, aggregate_type, aggregate_id);
    tenancy::as_owner(|| query::with_spi(|| {
        let rows = query::run(SEQUENCE_OF_AGGREGATE,
            &[Arg::new(instance_id), Arg::new(aggregate_type), Arg::new(aggregate_id)],
            Snapshot::Statement);
        if rows.len() == 1 { rows.get::<i64>(0, 1).unwrap_or(0) } else { 0 }
    }))
}
