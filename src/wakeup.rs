//! Waking workers without polling: `eventstore.wait_for_events`, a sleep on the session's latch
//! that a writer's commit ends, and, when `eventstore.notify` is on, one NOTIFY per writing
//! transaction. When they happen is decided by the transaction callback (src/xact.rs).
//!
//! - **wait_for_events**: the waiting session holds a shared waiter lock for its instance (or
//!   for every instance), checks for new events, and sleeps on its latch. A writer, once its
//!   outcome is visible and its horizon registration cleared, sets the latch of every holder of
//!   its instances' waiter keys and of the every-instance key. The check comes after the lock
//!   and before the sleep, and a latch set meanwhile ends the sleep at once, so no commit is
//!   missed. One statement, no LISTEN connection: it works behind a transaction-pooling
//!   PgBouncer.
//! - **NOTIFY** (off by default: it serializes the commits of notifying writers): when a
//!   transaction that pushed commits, channel [`CHANNEL`] gets one notification, sent just
//!   before the commit (PostgreSQL delivers it only if the commit succeeds):
//!   `{"position": <highest position written>}`. No tenant name: any role that can connect may
//!   LISTEN, and NOTIFY on the channel too, so a payload is an untrusted hint.
//!
//! A prepared transaction (PREPARE TRANSACTION) that pushed sends no notification and wakes
//! nobody when it is committed later; sleepers then wake at their timeout.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use crate::checks::{optional_identifier, require_identifier};
use crate::errors;
use crate::horizon;
use crate::locks::{self, LockKey};
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;

/// `eventstore.notify`: whether a writing transaction sends its NOTIFY (off by default).
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(false);

/// Defines `eventstore.notify`; called once, when the library is loaded.
pub fn define_settings() {
    GucRegistry::define_bool_guc(c"eventstore.notify",
        c"Whether a transaction that pushed sends one NOTIFY on eventstore_events when it commits.",
        c"Off by default. The payload is {\"position\": <highest position written>}, a hint: any \
          role that can connect may LISTEN and NOTIFY on the channel. PostgreSQL serializes the \
          commits of all notifying transactions of a database (a lock held from the \
          notification until the commit is flushed). wait_for_events works either way.",
        &NOTIFY, GucContext::Userset, GucFlags::default());
}

/// The channel push notifies.
pub const CHANNEL: &str = "eventstore_events";
/// Longest wait one call may ask for.
pub const MAX_WAIT_MS: i32 = 3_600_000;

extern "C-unwind" {
    /// commands/async.h; not in pgrx's bindings.
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

/// Queues the NOTIFY of a transaction that pushed, when `eventstore.notify` is on: called by
/// the transaction callback (src/xact.rs) just before the commit; PostgreSQL delivers it only
/// if the commit succeeds.
pub fn notify(highest_position: i64) {
    if !NOTIFY.get() {
        return;
    }
    let channel = CString::new(CHANNEL).expect("no NUL in the channel name");
    let payload = CString::new(notification(highest_position)).expect("JSON has no NUL");
    // SAFETY: both are NUL-terminated strings that live across the call.
    unsafe { Async_Notify(channel.as_ptr(), payload.as_ptr()) };
}

/// The payload, `{"position": <highest position written>}`: no tenant name, since any role
/// that can connect may LISTEN (the global position's growth is shared by every tenant anyway).
fn notification(highest_position: i64) -> String {
    serde_json::json!({ "position": highest_position }).to_string()
}

/// Sets the latch of every session waiting for events of `instance_ids` or of every instance.
/// Called once a transaction's outcome is visible (src/xact.rs); raises nothing.
pub fn wake<'a>(instance_ids: impl IntoIterator<Item = &'a str>) {
    let mut keys: Vec<LockKey> = instance_ids.into_iter().map(|i| locks::waiter_key(Some(i))).collect();
    keys.push(locks::waiter_key(None));
    keys.sort();
    keys.dedup();
    locks::wake_waiters(&keys);
}

/// `eventstore.wait_for_events(projection, instance_id, timeout_ms)`: true as soon as events
/// past the projection's checkpoint (in its instance, or any when NULL; for a partitioned
/// projection, the lowest of its partitions' checkpoints) are committed, false when
/// `timeout_ms` passes first. Sleeps on the latch, never polls.
#[pg_extern(sql = false)]
fn wait_for_events(projection: Option<&str>, instance_id: Option<&str>, timeout_ms: Option<i32>) -> bool {
    sleep_for_events(projection, optional_identifier("instance_id", instance_id), timeout_ms, "wait_for_events")
}

/// `eventstore.tenant_wait_for_events(instance_id, projection, timeout_ms)`: wait_for_events
/// for one tenant, the instance first and required.
#[pg_extern(sql = false)]
fn tenant_wait_for_events(instance_id: Option<&str>, projection: Option<&str>, timeout_ms: Option<i32>) -> bool {
    let instance_id = require_identifier("instance_id", instance_id);
    sleep_for_events(projection, Some(instance_id), timeout_ms, "tenant_wait_for_events")
}

fn sleep_for_events(projection: Option<&str>, instance_id: Option<&str>, timeout_ms: Option<i32>, what: &str) -> bool {
    let projection = require_identifier("projection", projection);
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, what);
    let timeout_ms = match timeout_ms {
        Some(t) if (0..=MAX_WAIT_MS).contains(&t) => t as i64,
        other => errors::raise(errors::INVALID_VALUE, "timeout_ms is out of range".into(),
            format!("timeout_ms is {}; it must be between 0 and {MAX_WAIT_MS}.",
                other.map_or("NULL".to_string(), |t| t.to_string())), ""),
    };
    let started = std::time::Instant::now();
    let key = locks::start_waiting(instance_id);
    let found = loop {
        // SAFETY: MyLatch is this backend's own latch.
        unsafe { pg_sys::ResetLatch(pg_sys::MyLatch) };
        if tenancy::as_owner(|| query::with_spi(|| new_events(projection, instance_id))) {
            break true;
        }
        let remaining = timeout_ms - started.elapsed().as_millis() as i64;
        if remaining <= 0 {
            break false;
        }
        // SAFETY: waits on this backend's own latch, with a timeout and exit on postmaster death.
        unsafe {
            pg_sys::WaitLatch(pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                remaining as std::ffi::c_long, pg_sys::PG_WAIT_EXTENSION);
        }
        pg_sys::check_for_interrupts!();
    };
    locks::stop_waiting(key);
    found
}

const NEW_EVENTS_OF_INSTANCE: &str = "\
SELECT EXISTS (SELECT FROM eventstore.events e
                WHERE e.instance_id = $2 AND e.position <= $3 AND e.position > coalesce(
                      (SELECT min(checkpoint) FROM eventstore.projection_states
                        WHERE projection = $1 AND instance_id = $2), 0))";
const NEW_EVENTS_OF_ALL: &str = "\
SELECT EXISTS (SELECT FROM eventstore.events e
                WHERE e.position <= $3 AND e.position > coalesce(
                      (SELECT min(checkpoint) FROM eventstore.projection_states
                        WHERE projection = $1 AND instance_id IS NULL), 0))";

/// Whether committed events lie past the projection's checkpoint and no higher than a catch-up
/// could hand out now without waiting (so that a worker woken early does not spin), under a
/// snapshot taken now.
fn new_events(projection: &str, instance_id: Option<&str>) -> bool {
    let sql = if instance_id.is_some() { NEW_EVENTS_OF_INSTANCE } else { NEW_EVENTS_OF_ALL };
    let reachable = horizon::without_waiting(instance_id).unwrap_or(i64::MAX);
    let rows = query::run(sql, &[Arg::new(projection), Arg::new(instance_id), Arg::new(reachable)],
        Snapshot::Latest);
    rows.get::<bool>(0, 1).unwrap_or(false)
}
