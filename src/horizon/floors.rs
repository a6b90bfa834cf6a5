//! Floors (horizon mode "floors", the default without preloading): the registry of writes in
//! flight kept in PostgreSQL's own lock table. Nobody waits.
//!
//! - **A writer**, once per transaction, just before its first position is drawn (with its writer
//!   and aggregate keys already held), reads the last drawn position L and takes a shared
//!   advisory lock whose key is L+1, its *floor* (locks::floor_key; family "floor"). Every
//!   position it draws afterwards is above L. lock_writer takes one too.
//! - **A reader** reads the last drawn position H first, then the lock table once
//!   (GetLockStatusData, never a lock request), and lowers H to just below the lowest floor held
//!   by a transaction that also holds a writer key in its scope: its instance's writer key or the
//!   all-writers key exclusively (a bulk push to many instances); for a global reader, any floor.
//!
//! Why it is exact (G4), for the barrier's reason: a transaction's locks are released only after
//! its commit or abort is visible. A position x <= H was drawn before H was read, by a
//! transaction that then held its floor (<= x) and the writer key of x's instance; when the
//! lock table is read, that transaction has either ended, visibly, or still holds both, and the
//! horizon stays below x. The catch-up reads its batch under a snapshot taken afterwards
//! (query::Snapshot::Latest). Nobody ever asks for a lock that conflicts with a writer's, so no
//! writer waits for a reader (trap 3), and nobody waits at all; a writer still waiting for an
//! aggregate lock has no floor yet and holds nothing back; a transaction that writes no events
//! takes no floor (trap 6).
//!
//! Holders are told apart by (backend, local transaction id), as the lock table reports them.
//! PREPARE TRANSACTION works: the locks move to the prepared transaction's dummy process, which
//! keeps the preparing transaction's virtual transaction id, so it stays the same holder. A
//! prepared transaction recovered after a restart shows no backend (and its xid); its floor
//! holds back every reader of the database, and while such a holder has a reader's writer key
//! but no floor, every floor counts. Both only lower the horizon; they cover a transaction whose
//! locks would show under two holders while they move (one lock-table partition at a time).

use std::cell::Cell;
use std::collections::HashSet;

use pgrx::pg_sys;

use crate::locks::{self, Family, Held, LockKey, SHARED};
use crate::mutants;
use crate::pg;

/// The floor this backend took.
#[derive(Clone, Copy)]
struct Taken {
    /// The transaction's local id.
    transaction: u32,
    /// The subtransaction that took it (1: the top transaction).
    subtransaction: pg_sys::SubTransactionId,
    key: LockKey,
}

thread_local! {
    static TAKEN: Cell<Option<Taken>> = const { Cell::new(None) };
}

/// Whether the current transaction holds its floor. A floor taken in a subtransaction that
/// rolled back is gone (with the writer keys taken there): the next write takes a new one.
fn held() -> bool {
    matches!(TAKEN.get(), Some(taken)
        if taken.transaction == pg::local_transaction_id() && locks::held_by_me(taken.key, SHARED))
}

/// Takes this transaction's floor, one above `last_drawn()`, unless it holds one already. Call
/// with the transaction's writer keys held, before it draws a position.
pub fn take(last_drawn: impl FnOnce() -> i64) {
    if held() {
        return;
    }
    let key = locks::floor_key(last_drawn());
    locks::acquire_shared_for_transaction(key);
    // SAFETY: we are inside a transaction; this only reads its state.
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    TAKEN.set(Some(Taken { transaction: pg::local_transaction_id(), subtransaction, key }));
}

/// At commit or abort (src/xact.rs), once the outcome is visible to every snapshot taken from
/// now on, and before the waiters are woken: releases the floor now. PostgreSQL would release
/// it a moment later, with the transaction's other locks, and a waiter woken meanwhile could
/// still find its event held back by this floor, and sleep on. Raises nothing.
pub fn transaction_ended() {
    // (The local transaction id is already cleared here: the key alone tells.)
    if let Some(taken) = TAKEN.take() {
        if locks::held_by_me(taken.key, SHARED) && !mutants::FLOOR_RELEASED_LATE {
            locks::release_for_transaction(taken.key, SHARED);
        }
    }
}

/// When the subtransaction `rolled_back` rolls back: a floor taken in it (or in one nested in
/// it, whose ids are higher) is released now, before the waiters are woken, for the same
/// reason (every position drawn under it was drawn inside it and can never commit). Raises
/// nothing.
pub fn subtransaction_aborted(rolled_back: pg_sys::SubTransactionId) {
    if let Some(taken) = TAKEN.get().filter(|t| t.subtransaction >= rolled_back) {
        if locks::held_by_me(taken.key, SHARED) {
            locks::release_for_transaction(taken.key, SHARED);
        }
        TAKEN.set(None);
    }
}

/// Draws a position with `draw`, the transaction's floor taken first.
pub fn draw(draw: impl FnOnce() -> i64, last_drawn: impl FnOnce() -> i64) -> i64 {
    if mutants::FLOOR_AFTER_FIRST_DRAW && !held() {
        // The right floor, taken a moment too late: natively the gap between the draw and the
        // lock is a few microseconds, shorter than a reader's look, so the mutant stands for a
        // writer the scheduler pauses right there (2 ms), as it may on a busy server.
        let last = last_drawn();
        let position = draw();
        std::thread::sleep(std::time::Duration::from_millis(2));
        take(|| last);
        return position;
    }
    take(last_drawn);
    draw()
}

/// The horizon for readers of `instance_id` (every instance when `None`): `last_drawn()`, read
/// first, lowered to just below the lowest floor in scope in the lock table.
pub fn horizon(instance_id: Option<&str>, last_drawn: impl FnOnce() -> i64) -> i64 {
    let last = last_drawn();
    if mutants::FLOORS_IGNORED {
        return last;
    }
    let held = locks::held_in_this_database(&[Family::Floor, Family::Writer, Family::AllWriters]);
    match lowest_floor(&held, instance_id.map(locks::writer_key)) {
        Some(floor) => last.min(floor - 1),
        None => last,
    }
}

/// The lowest floor among `held` that a reader of the instance whose writer key is `reader`
/// (every instance when `None`) must stay below.
fn lowest_floor(held: &[Held], reader: Option<LockKey>) -> Option<i64> {
    let floors = held.iter().filter(|h| h.key.family == Family::Floor);
    let position = |h: &Held| h.key.digest as i64;
    let Some(reader) = reader else {
        // Every floor holder is a writer of some instance.
        return floors.map(position).min();
    };
    let in_scope = |h: &Held| h.key == reader || (h.key.family == Family::AllWriters && h.exclusive);
    let prepared = |h: &Held| pg::is_prepared_holder(h.holder);
    let writers: HashSet<pg::LockHolder> = held.iter().filter(|h| in_scope(h)).map(|h| h.holder).collect();
    let floor_holders: HashSet<pg::LockHolder> = floors.clone().map(|h| h.holder).collect();
    let moving = held.iter().any(|h| prepared(h) && in_scope(h) && !floor_holders.contains(&h.holder));
    floors.filter(|h| moving || prepared(h) || writers.contains(&h.holder)).map(position).min()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// This backend's floors, as `pg_locks` shows them (the position from classid and objid).
    const MY_FLOORS: &str = "SELECT array_agg((classid::bigint << 32) | objid::bigint ORDER BY 1)
        FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
         AND objsubid = 17671 AND mode = 'ShareLock'";
    const LAST_DRAWN: &str =
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM eventstore.position_seq";

    // Other in-process tests push in parallel on the same cluster, so the last drawn position
    // may move between reading it and the call: the floor is checked against the last drawn
    // position read before and after the call.

    #[pg_test]
    fn a_writing_transaction_holds_one_floor_one_above_the_position_drawn_before_it() {
        assert_eq!(Spi::get_one::<Vec<i64>>(MY_FLOORS), Ok(None), "no floor before writing");
        let before = Spi::get_one::<i64>(LAST_DRAWN).unwrap().unwrap();
        let first = Spi::get_one::<i64>(
            "SELECT position FROM eventstore.push(ARRAY[eventstore.command('acme', 't', 'a', 'e')])")
            .unwrap().unwrap();
        Spi::run("SELECT eventstore.push(ARRAY[eventstore.command('other', 't', 'b', 'e')])").unwrap();
        let floors = Spi::get_one::<Vec<i64>>(MY_FLOORS).unwrap().unwrap();
        assert_eq!(floors.len(), 1, "one floor per transaction: {floors:?}");
        assert!((before + 1..=first).contains(&floors[0]),
            "the floor {} is above the position drawn before the push ({before}) and at most its first ({first})",
            floors[0]);
    }

    #[pg_test]
    fn lock_writer_takes_a_floor_above_the_last_drawn_position() {
        let before = Spi::get_one::<i64>(LAST_DRAWN).unwrap().unwrap();
        Spi::run("SELECT eventstore.lock_writer('acme')").unwrap();
        let after = Spi::get_one::<i64>(LAST_DRAWN).unwrap().unwrap();
        let floors = Spi::get_one::<Vec<i64>>(MY_FLOORS).unwrap().unwrap();
        assert_eq!(floors.len(), 1, "one floor: {floors:?}");
        assert!((before + 1..=after + 1).contains(&floors[0]),
            "the floor {} is one above the last drawn position at the call ({before} before, {after} after)",
            floors[0]);
    }
}
