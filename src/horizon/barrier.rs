//! The barrier (horizon mode "barrier"): read the last drawn position, then wait for exactly the
//! transactions that held the writer key at that moment (as CREATE INDEX CONCURRENTLY waits for
//! old snapshots).
//!
//! Positions are drawn only by transactions holding the writer key, so every position at or
//! below what was read belongs to a transaction that has finished or still holds the key. No
//! lock request is queued, so writers that start meanwhile never wait for the barrier (trap 3),
//! and nothing can be left behind by an error (trap 2).

use crate::locks::{self, all_writers_key, writer_key, EXCLUSIVE, SHARED};
use crate::mutants;

/// The horizon for `instance_id` (every instance when `None`), once the writers that could
/// still commit at or below it have finished.
pub fn wait(instance_id: Option<&str>, last_drawn: impl FnOnce() -> i64) -> i64 {
    let key = match instance_id {
        Some(instance_id) => writer_key(instance_id),
        None => all_writers_key(),
    };
    if mutants::QUEUED_BARRIER {
        return queued(key, last_drawn);
    }
    let horizon = last_drawn();
    if !mutants::NO_BARRIER {
        locks::wait_for_lockers(key, EXCLUSIVE);
        if instance_id.is_some() {
            // A bulk push holds only the all-writers key (exclusively): wait for it too.
            locks::wait_for_lockers(all_writers_key(), SHARED);
        }
    }
    horizon
}

/// The mutant's naive barrier of trap 3: an exclusive request that new writers queue behind.
fn queued(key: locks::LockKey, last_drawn: impl FnOnce() -> i64) -> i64 {
    locks::acquire_exclusive(key);
    let horizon = last_drawn();
    locks::release(key, EXCLUSIVE);
    horizon
}
