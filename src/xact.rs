//! The end of a transaction that writes events: eventstore's only transaction callback and its
//! only subtransaction callback, so that what happens at commit happens in our order
//! (DESIGN.md trap 14: PostgreSQL runs callbacks newest-first, so two callbacks of ours would
//! run in the reverse order of their registration).
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
//! - **When a subtransaction rolls back** (the caller's ROLLBACK TO: eventstore itself opens no
//!   subtransaction, G8): what it pushed or locked is forgotten: no NOTIFY for it, and a
//!   horizon registration made inside it is dropped, so it no longer holds the horizon back or
//!   refuses PREPARE. Its instances' waiters are woken.
//! - **At PREPARE** the horizon refuses a registered transaction; otherwise it is forgotten: a
//!   prepared transaction notifies and wakes no one when it is committed later.
//!
//! What was written is kept per subtransaction id. Ids grow within a transaction, and every
//! subtransaction that starts while one is open is nested in it, so when the subtransaction
//! with id `s` rolls back, exactly what was noted under an id `>= s` belongs to it.
//!
//! Nothing here raises at commit or abort (an error there becomes a PANIC).

use std::cell::RefCell;
use std::collections::BTreeSet;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::citus;
use crate::horizon;
use crate::wakeup;

/// What one subtransaction (the top transaction: id 1) pushed or locked for writing.
struct Written {
    subtransaction: pg_sys::SubTransactionId,
    instance_ids: BTreeSet<String>,
    /// The highest position it pushed; `None` when it only locked (lock_writer).
    highest_position: Option<i64>,
}

thread_local! {
    /// What the current transaction wrote, in the order noted.
    static WRITTEN: RefCell<Vec<Written>> = const { RefCell::new(Vec::new()) };
}

/// From `_PG_init`: sets the callbacks, once per process (a preloaded library's are inherited
/// by every backend).
pub fn init() {
    // SAFETY: registers plain functions with no argument; _PG_init runs once per process.
    unsafe {
        pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(at_subtransaction_end), std::ptr::null_mut());
    }
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
    // SAFETY: we are inside a transaction; this only reads its state.
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    WRITTEN.with_borrow_mut(|written| {
        if written.last().is_none_or(|w| w.subtransaction != subtransaction) {
            written.push(Written { subtransaction, instance_ids: BTreeSet::new(), highest_position: None });
        }
        let current = written.last_mut().expect("just pushed");
        current.instance_ids.extend(instance_ids.iter().map(|i| i.to_string()));
        current.highest_position = current.highest_position.max(highest_position);
    });
}

/// Every instance in `written`.
fn instances(written: &[Written]) -> BTreeSet<&str> {
    written.iter().flat_map(|w| w.instance_ids.iter().map(String::as_str)).collect()
}

/// Wakes the waiters of `written`'s instances and of every instance, if it wrote anything.
fn wake(written: &[Written]) {
    if !written.is_empty() {
        wakeup::wake(instances(written));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    use pg_sys::XactEvent::*;
    match event {
        XACT_EVENT_PRE_COMMIT => {
            // Queued now, delivered by PostgreSQL only if the commit succeeds.
            let highest = WRITTEN.with_borrow(|w| w.iter().filter_map(|w| w.highest_position).max());
            if let Some(highest) = highest {
                wakeup::notify(highest);
            }
        }
        XACT_EVENT_COMMIT | XACT_EVENT_ABORT | XACT_EVENT_PARALLEL_COMMIT | XACT_EVENT_PARALLEL_ABORT => {
            // The outcome is visible to every snapshot taken from now on.
            horizon::transaction_ended();
            wake(&WRITTEN.take());
            citus::transaction_ended();
        }
        XACT_EVENT_PRE_PREPARE => horizon::refuse_prepare(),
        XACT_EVENT_PREPARE => {
            drop(WRITTEN.take());
            citus::transaction_ended();
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_end(
    event: pg_sys::SubXactEvent::Type,
    subtransaction: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event != pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        return;
    }
    horizon::subtransaction_aborted(subtransaction);
    let rolled_back: Vec<Written> = WRITTEN.with_borrow_mut(|written| {
        let (rolled_back, kept) = std::mem::take(written).into_iter()
            .partition(|w| w.subtransaction >= subtransaction);
        *written = kept;
        rolled_back
    });
    wake(&rolled_back);
}
