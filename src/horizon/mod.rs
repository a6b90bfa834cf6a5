//! The horizon: a position at or below which every write has finished, so that a catch-up may
//! hand out everything up to it and never skip an event that commits later (G4, G7).
//!
//! Two modes, chosen when the server starts; `eventstore.horizon_mode()` says which is active.
//!
//! - **barrier** (the library is loaded on demand, [`barrier`]): read the last drawn position,
//!   then wait for the transactions holding the writer key. Writers never wait for it (trap 3),
//!   but a catch-up waits for the slowest writer of its instance.
//! - **registry** (`shared_preload_libraries = 'eventstore'`, [`registry`]): the last drawn
//!   position, lowered below the lowest position still in flight, from shared memory. Nobody
//!   waits.
//!
//! Writers tell the horizon about themselves through [`draw`] (every position is drawn through
//! it) and [`register_writer`] (lock_writer).

mod barrier;
mod registry;

use pgrx::prelude::*;

use crate::checks::optional_identifier;
use crate::errors;
use crate::locks;
use crate::mutants;
use crate::positions::last_position;
use crate::query;
use crate::tenancy;

pub use registry::{draw, init, refuse_prepare, register_writer, subtransaction_aborted, transaction_ended, Scope};

/// The horizon for readers of `instance_id` (every instance when `None`), reading the last
/// drawn position with `last_drawn`: from the registry at once, or from the barrier after the
/// writers in flight have finished. Call [`refuse_while_writing`] first. Must be called inside
/// an SPI connection.
pub fn horizon(instance_id: Option<&str>) -> i64 {
    if registry::is_active() {
        registry::horizon(instance_id, last_position)
    } else {
        barrier::wait(instance_id, last_position)
    }
}

/// The horizon a catch-up of `instance_id` would get now without waiting for anyone, when the
/// mode can tell: the registry's; `None` with the barrier, which has to wait to know. Must be
/// called inside an SPI connection.
pub fn without_waiting(instance_id: Option<&str>) -> Option<i64> {
    if mutants::WAIT_IGNORES_HORIZON {
        return None;
    }
    registry::is_active().then(|| registry::horizon(instance_id, last_position))
}

/// Refuses to wait for writers in a transaction that is itself writing: a writer waiting on one
/// of our aggregate locks while we wait for it would be a deadlock. Call before any lock is
/// taken.
pub fn refuse_while_writing() {
    if locks::writing() {
        errors::raise(
            errors::WRONG_STATE,
            "cannot wait for writers in a transaction that is itself writing events".into(),
            "This transaction holds the writer lock (it called push or lock_writer); waiting for \
             the other writers could deadlock with them."
                .into(),
            "Commit the writing transaction first; catch up or wait for writers in a transaction \
             of its own.",
        );
    }
}

/// `eventstore.horizon_mode()`: `'registry'` when preloaded, else `'barrier'`.
#[pg_extern(sql = false)]
fn horizon_mode() -> &'static str {
    if registry::is_active() { "registry" } else { "barrier" }
}

/// `eventstore.await_writers(instance_id)`: the horizon, returned (G4). In barrier mode it waits
/// for the writers in flight; with the registry it answers at once, below every write in flight.
#[pg_extern(sql = false)]
fn await_writers(instance_id: Option<&str>) -> i64 {
    let instance_id = optional_identifier("instance_id", instance_id);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "await_writers");
    refuse_while_writing();
    tenancy::as_owner(|| query::with_spi(|| horizon(instance_id)))
}
