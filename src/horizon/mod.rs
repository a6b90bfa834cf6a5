//! The horizon: a position at or below which every write has finished, so that a catch-up may
//! hand out everything up to it and never skip an event that commits later (G4, G7).
//!
//! Three modes; `eventstore.horizon_mode()` says which is active.
//!
//! - **registry** (`shared_preload_libraries = 'eventstore'`, [`registry`]): the last drawn
//!   position, lowered below the lowest position still in flight, from shared memory. Nobody
//!   waits. The setting `eventstore.horizon` is ignored.
//! - **floors** (not preloaded, the default, [`floors`]): the same, from the writers' floor locks
//!   in PostgreSQL's lock table. Nobody waits.
//! - **barrier** (not preloaded, `eventstore.horizon = 'barrier'`, [`barrier`]): read the last
//!   drawn position, then wait for the transactions holding the writer key. Writers never wait
//!   for it (trap 3), but a catch-up waits for the slowest writer of its instance.
//!
//! Writers tell the horizon about themselves through [`draw`] (every position is drawn through
//! it) and [`register_writer`] (lock_writer). Without preloading, every writer takes its floor,
//! whatever the setting: the setting is the reader's alone, and says only how the reader
//! computes its horizon.

mod barrier;
mod floors;
mod registry;

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};

use crate::checks::optional_identifier;
use crate::errors;
use crate::locks;
use crate::mutants;
use crate::positions::last_position;
use crate::query;
use crate::tenancy;

pub use registry::{init, refuse_prepare, Scope};

/// `eventstore.horizon` without preloading: how a reader computes its horizon.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Setting {
    #[name = c"floors"]
    Floors,
    #[name = c"barrier"]
    Barrier,
}

/// `eventstore.horizon`: 'floors' (the default) or 'barrier'; ignored when preloaded.
pub static SETTING: GucSetting<Setting> = GucSetting::<Setting>::new(Setting::Floors);

/// Defines `eventstore.horizon`; called once, when the library is loaded.
pub fn define_settings() {
    GucRegistry::define_enum_guc(c"eventstore.horizon",
        c"How a catch-up finds its horizon when eventstore is not preloaded: floors or barrier.",
        c"floors (the default) reads the writers' floors from the lock table and never waits; \
          barrier waits for the writers in flight of the catch-up's instance. Writers take their \
          floor in both, so each session may choose. Ignored when eventstore is in \
          shared_preload_libraries (the horizon registry).",
        &SETTING, GucContext::Userset, GucFlags::default());
}

/// The horizon mode in effect for this session.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Registry,
    Floors,
    Barrier,
}

fn mode() -> Mode {
    if registry::is_active() {
        return Mode::Registry;
    }
    match SETTING.get() {
        Setting::Floors => Mode::Floors,
        Setting::Barrier => Mode::Barrier,
    }
}

/// The horizon for readers of `instance_id` (every instance when `None`): from the registry or
/// the floors at once, or from the barrier after the writers in flight have finished. Call
/// [`refuse_while_writing`] first. Must be called inside an SPI connection.
pub fn horizon(instance_id: Option<&str>) -> i64 {
    match mode() {
        Mode::Registry => registry::horizon(instance_id, last_position),
        Mode::Floors => floors::horizon(instance_id, last_position),
        Mode::Barrier => barrier::wait(instance_id, last_position),
    }
}

/// The horizon a catch-up of `instance_id` would get now without waiting for anyone, when the
/// mode can tell: the registry's or the floors'; `None` with the barrier, which has to wait to
/// know. Must be called inside an SPI connection.
pub fn without_waiting(instance_id: Option<&str>) -> Option<i64> {
    if mutants::WAIT_IGNORES_HORIZON {
        return None;
    }
    match mode() {
        Mode::Registry => Some(registry::horizon(instance_id, last_position)),
        Mode::Floors => Some(floors::horizon(instance_id, last_position)),
        Mode::Barrier => None,
    }
}

/// Draws a position with `draw` for a write to `scope` (G3: with the writer and aggregate locks
/// held), registered first: in the registry when preloaded, else by the transaction's floor,
/// taken before its first draw. Must be called inside an SPI connection.
pub fn draw(scope: Scope, draw: impl FnOnce() -> i64) -> i64 {
    if registry::is_active() {
        registry::draw(scope, draw)
    } else {
        floors::draw(draw, last_position)
    }
}

/// At commit or abort (src/xact.rs), once the outcome is visible and before any waiter is
/// woken: the transaction holds nothing back any more. Raises nothing.
pub fn transaction_ended() {
    if registry::is_active() {
        registry::transaction_ended()
    } else {
        floors::transaction_ended()
    }
}

/// When the subtransaction `rolled_back` rolls back (the caller's ROLLBACK TO), before its
/// waiters are woken: what it registered holds nothing back any more. Raises nothing.
pub fn subtransaction_aborted(rolled_back: pgrx::pg_sys::SubTransactionId) {
    if registry::is_active() {
        registry::subtransaction_aborted(rolled_back)
    } else {
        floors::subtransaction_aborted(rolled_back)
    }
}

/// Registers a transaction that holds the writer key for `scope` without drawing (lock_writer):
/// every position it draws later is above `last_drawn()`, read now.
pub fn register_writer(scope: Scope, last_drawn: impl FnOnce() -> i64) {
    if registry::is_active() {
        registry::register_writer(scope, last_drawn)
    } else {
        floors::take(last_drawn)
    }
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

/// `eventstore.horizon_mode()`: `'registry'` when preloaded, else the setting
/// `eventstore.horizon`: `'floors'` (the default) or `'barrier'`.
#[pg_extern(sql = false)]
fn horizon_mode() -> &'static str {
    match mode() {
        Mode::Registry => "registry",
        Mode::Floors => "floors",
        Mode::Barrier => "barrier",
    }
}

/// `eventstore.await_writers(instance_id)`: the horizon, returned (G4). In barrier mode it waits
/// for the writers in flight; with the registry or the floors it answers at once, below every
/// write in flight.
#[pg_extern(sql = false)]
fn await_writers(instance_id: Option<&str>) -> i64 {
    writers_awaited(optional_identifier("instance_id", instance_id), "await_writers")
}

/// `eventstore.tenant_await_writers(instance_id)`: await_writers for one tenant, the instance
/// required.
#[pg_extern(sql = false)]
fn tenant_await_writers(instance_id: Option<&str>) -> i64 {
    writers_awaited(Some(crate::checks::require_identifier("instance_id", instance_id)), "tenant_await_writers")
}

fn writers_awaited(instance_id: Option<&str>, what: &str) -> i64 {
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, what);
    refuse_while_writing();
    tenancy::as_owner(|| query::with_spi(|| horizon(instance_id)))
}
