//! The global position (G3): a CACHE 1 sequence, so positions are drawn in exactly the order
//! writers draw them, independent of the clock, and unchanged by pg_dump and restore. Only push
//! draws (under its locks, through the horizon: src/push/mod.rs); everyone may read the last one.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::query;

/// The last position drawn by anyone, committed or not (0 before the first push): the
/// sequence's tuple read natively (`pg_sequence_last_value`, under its buffer lock, as nextval
/// writes it), no statement. The caller must be allowed to read the sequence (the owner: see
/// tenancy::as_owner).
pub fn last_position() -> i64 {
    let sequence = query::relation(c"position_seq");
    // SAFETY: pg_sequence_last_value takes one oid argument and returns an int8, or NULL before
    // the first nextval; the sequence exists (relation() asserted it).
    unsafe { pgrx::direct_function_call::<i64>(pg_sys::pg_sequence_last_value, &[sequence.into_datum()]) }
        .unwrap_or(0)
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
