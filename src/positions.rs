//! The global position (G3): a CACHE 1 sequence, so positions are drawn in exactly the order
//! writers draw them, independent of the clock, and unchanged by pg_dump and restore. Only push
//! draws (under its locks, through the horizon: src/push/mod.rs); everyone may read the last one.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::query::{self, Snapshot};

const LAST_POSITION: &str =
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM eventstore.position_seq";

/// The last position drawn by anyone, committed or not (0 before the first push). Must be
/// called inside an SPI connection.
pub fn last_position() -> i64 {
    query::run(LAST_POSITION, &[], Snapshot::Statement).get::<i64>(0, 1).unwrap_or(0)
}

/// The sequence's oid, with nextval's lock on it taken now: a position may be drawn under the
/// horizon registry's LWLock, where nextval must never wait for a heavyweight lock.
pub fn sequence_locked_for_drawing() -> pg_sys::Oid {
    let sequence = query::relation(c"position_seq");
    // SAFETY: a plain lock request on an existing relation, inside a transaction.
    unsafe { pg_sys::LockRelationOid(sequence, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
    sequence
}

/// Draws the next position from `sequence` (see [`sequence_locked_for_drawing`]).
pub fn draw_from(sequence: pg_sys::Oid) -> i64 {
    // SAFETY: nextval_oid takes one oid argument and returns an int8; the sequence exists.
    unsafe { pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence.into_datum()]) }
        .expect("nextval is not NULL")
}
