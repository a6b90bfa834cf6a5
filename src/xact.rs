//! The end of a transaction that writes events: eventstore's only transaction callback, so
//! that what happens at commit happens in our order (DESIGN.md trap 14: PostgreSQL runs
//! callbacks newest-first, so two callbacks of ours would run in the reverse order of their
//! registration).
//!
//! - **Just before commit**, when the transaction pushed: its NOTIFY (wakeup::notify).
//! - **At commit**, first the horizon forgets the transaction (its registry slot is cleared),
//!   then the waiters of every instance it pushed to or locked for writing, and those waiting
//!   on every instance, are woken. In the other order a woken waiter could still find its event
//!   held back by this very transaction, and sleep on to its timeout.
//! - **At abort** the same: a transaction that was registered with the horizon (lock_writer, or
//!   a push now rolled back) may have held other writers' committed events back. So may a
//!   lock_writer-only transaction that commits. A wake-up with nothing new costs a waiter one
//!   check.
//! - **At PREPARE** the horizon refuses a registered transaction; otherwise it is forgotten: a
//!   prepared transaction notifies and wakes no one when it is committed later.
//!
//! Nothing here raises at commit or abort (an error there becomes a PANIC).

use std::cell::RefCell;
use std::collections::BTreeSet;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::horizon;
use crate::wakeup;

/// What the current transaction pushed or locked for writing.
struct Written {
    instance_ids: BTreeSet<String>,
    /// The highest position it pushed; `None` when it only locked (lock_writer).
    highest_position: Option<i64>,
}

thread_local! {
    /// What the current transaction wrote, once it writes.
    static WRITTEN: RefCell<Option<Written>> = const { RefCell::new(None) };
}

/// From `_PG_init`: sets the callback, once per process (a preloaded library's is inherited by
/// every backend).
pub fn init() {
    // SAFETY: registers a plain function with no argument; _PG_init runs once per process.
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
}

/// Notes that the transaction is about to write to `instance_ids` (push, once its locks are
/// held, before it draws a position; lock_writer): its end wakes their waiters.
pub fn writing(instance_ids: &[&str]) {
    note(instance_ids, None);
}

/// Notes a finished push: its instances and the highest position it wrote, for the NOTIFY.
pub fn pushed(instance_ids: &[&str], highest_position: i64) {
    note(instance_ids, Some(highest_position));
}

fn note(instance_ids: &[&str], highest_position: Option<i64>) {
    WRITTEN.with_borrow_mut(|written| {
        let written = written.get_or_insert_with(|| Written { instance_ids: BTreeSet::new(), highest_position: None });
        written.instance_ids.extend(instance_ids.iter().map(|i| i.to_string()));
        written.highest_position = written.highest_position.max(highest_position);
    });
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // Queued now, delivered by PostgreSQL only if the commit succeeds.
            let highest = WRITTEN.with_borrow(|w| w.as_ref().and_then(|w| w.highest_position));
            if let Some(highest) = highest {
                wakeup::notify(highest);
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT => {
            // The outcome is visible to every snapshot taken from now on.
            horizon::transaction_ended();
            if let Some(written) = WRITTEN.take() {
                wakeup::wake(written.instance_ids.iter().map(String::as_str));
            }
        }
        XACT_EVENT_PRE_PREPARE => horizon::refuse_prepare(),
        XACT_EVENT_PREPARE => drop(WRITTEN.take()),
        _ => {}
    }
}
