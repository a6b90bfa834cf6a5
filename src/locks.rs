//! The only module that knows lock keys. Every lock is a transaction-scoped advisory lock in
//! the two-int4 key space of `pg_advisory_xact_lock(int, int)`, so it ends with the
//! transaction whatever happens (safe behind a transaction-pooling PgBouncer), and each family
//! has its own class id as the first key, so families never collide with each other or with an
//! application's own advisory locks that avoid these ids (DESIGN.md trap 7).
//!
//! | family      | class id   | second key                                               | mode      |
//! |-------------|------------|----------------------------------------------------------|-----------|
//! | all writers | 1163067393 | 0                                                        | shared    |
//! | writer      | 1163067394 | hashtext(instance_id)                                    | shared    |
//! | projection  | 1163067395 | hashtext(coalesce(instance_id, '') ‖ '/' ‖ projection)   | exclusive |
//! | aggregate   | 1163067396 | hashtext(instance_id ‖ '/' ‖ aggregate_type ‖ '/' ‖ id) | exclusive |
//! | counter     | 1163067397 | hashtext(tenant ‖ '/' ‖ scope)                           | exclusive |
//! | waiter      | 1163067398 | hashtext(coalesce(instance_id, ''))                      | shared    |
//!
//! Writers share their keys; the barrier (src/horizon/barrier.rs) never takes one, it waits for
//! their holders. Keys are taken in sorted order within a call (trap 11).
//!
//! This module knows keys and the lock manager, nothing else: it calls no other module of
//! eventstore but the mutant switches and the version differences.
//!
//! A bulk push (more than [`MAX_LOCKS_PER_PUSH`] distinct instances and aggregates) takes the
//! all-writers key exclusively instead of one lock each: an import of 10,000 aggregates then
//! holds one lock, not 10,000 (which would exhaust the shared lock table), at the price of
//! running alone among writers. Barriers wait for it as well.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::mutants;

/// Shared by every push, whatever its instance: the key a global barrier waits on.
pub const ALL_WRITERS_CLASS: i32 = 0x4553_0001;
/// Shared by every push to one instance: the key a per-instance barrier waits on.
pub const WRITER_CLASS: i32 = 0x4553_0002;
/// Exclusive: one transaction at a time runs a projection (G6).
pub const PROJECTION_CLASS: i32 = 0x4553_0003;
/// Exclusive: one transaction at a time appends to an aggregate (G2).
pub const AGGREGATE_CLASS: i32 = 0x4553_0004;

/// Exclusive: one transaction at a time draws from a counter (next_number).
pub const COUNTER_CLASS: i32 = 0x4553_0005;
/// Shared, by sessions sleeping in wait_for_events: how a committing writer finds them.
pub const WAITER_CLASS: i32 = 0x4553_0006;

/// An advisory lock key: (class id, hash).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LockKey {
    pub class: i32,
    pub hash: i32,
}

impl LockKey {
    fn tag(self) -> pg_sys::LOCKTAG {
        // SET_LOCKTAG_INT32: the tag pg_advisory_xact_lock(int4, int4) builds.
        pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: self.class as u32,
            locktag_field3: self.hash as u32,
            locktag_field4: 2,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }
}

/// PostgreSQL's `hashtext` (under the default collation), so every key can be computed in SQL
/// as well.
fn hashtext(text: &str) -> i32 {
    #[repr(C)]
    struct OneArgCall {
        base: pg_sys::FunctionCallInfoBaseData,
        arg: pg_sys::NullableDatum,
    }
    let datum = text.into_datum().expect("text is not NULL");
    // SAFETY: a zeroed FunctionCallInfo with room for exactly one argument, filled in as fmgr
    // would for a one-argument call; hashtext reads only its argument and the collation.
    unsafe {
        let mut call: OneArgCall = std::mem::zeroed();
        call.base.nargs = 1;
        call.base.fncollation = pg_sys::DEFAULT_COLLATION_OID;
        call.arg = pg_sys::NullableDatum { value: datum, isnull: false };
        pg_sys::hashtext(&mut call.base).value() as i32
    }
}

pub fn all_writers_key() -> LockKey {
    LockKey { class: ALL_WRITERS_CLASS, hash: 0 }
}

pub fn writer_key(instance_id: &str) -> LockKey {
    LockKey { class: WRITER_CLASS, hash: hashtext(instance_id) }
}

pub fn projection_key(projection: &str, instance_id: Option<&str>) -> LockKey {
    let name = format!("{}/{}", instance_id.unwrap_or(""), projection);
    LockKey { class: PROJECTION_CLASS, hash: hashtext(&name) }
}

pub fn aggregate_key(instance_id: &str, aggregate_type: &str, aggregate_id: &str) -> LockKey {
    let name = format!("{instance_id}/{aggregate_type}/{aggregate_id}");
    LockKey { class: AGGREGATE_CLASS, hash: hashtext(&name) }
}

pub fn counter_key(tenant: &str, scope: &str) -> LockKey {
    LockKey { class: COUNTER_CLASS, hash: hashtext(&format!("{tenant}/{scope}")) }
}

pub fn waiter_key(instance_id: Option<&str>) -> LockKey {
    LockKey { class: WAITER_CLASS, hash: hashtext(instance_id.unwrap_or("")) }
}

pub const SHARED: pg_sys::LOCKMODE = pg_sys::ShareLock as pg_sys::LOCKMODE;
pub const EXCLUSIVE: pg_sys::LOCKMODE = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;

/// Waits for `key` in `mode` until the transaction ends.
fn acquire(key: LockKey, mode: pg_sys::LOCKMODE) {
    let tag = key.tag();
    // SAFETY: a transaction-scoped (sessionLock = false) request for a valid advisory tag.
    unsafe { pg_sys::LockAcquire(&tag, mode, false, false) };
}

/// Takes `key` in `mode` until the transaction ends, if no other transaction holds it.
fn try_acquire(key: LockKey, mode: pg_sys::LOCKMODE) -> bool {
    let tag = key.tag();
    // SAFETY: as in acquire, with dontWait = true.
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

/// Waits for `key` exclusively (only the queued-barrier mutant needs this).
pub fn acquire_exclusive(key: LockKey) {
    acquire(key, EXCLUSIVE);
}

/// Releases one hold of `key` in `mode` taken earlier in this transaction.
pub fn release(key: LockKey, mode: pg_sys::LOCKMODE) {
    // SAFETY: releases a transaction-scoped lock this backend holds (LockRelease only warns
    // when it does not).
    unsafe { pg_sys::LockRelease(&key.tag(), mode, false) };
}

/// Whether this transaction holds `key` in `mode`.
pub fn held_by_me(key: LockKey, mode: pg_sys::LOCKMODE) -> bool {
    crate::pg::lock_held_by_me(&key.tag(), mode)
}

/// Waits until every transaction that holds `key` in a mode conflicting with `mode` now has
/// ended; queues no request, so transactions that take the key meanwhile never wait for us.
pub fn wait_for_lockers(key: LockKey, mode: pg_sys::LOCKMODE) {
    // SAFETY: WaitForLockers reads the lock table and waits on the holders' virtual xids.
    unsafe { pg_sys::WaitForLockers(key.tag(), mode, false) };
}

/// Most distinct instances plus aggregates a push locks one by one; above it, a bulk push.
pub const MAX_LOCKS_PER_PUSH: usize = 64;

/// The locks of a push, before any position is drawn (G2, G3): the writer locks of its
/// instances and the exclusive locks of its aggregates, or for a bulk push the all-writers key
/// exclusively, which excludes every other writer.
pub fn lock_for_push(instance_ids: &[&str], mut aggregates: Vec<LockKey>) {
    let mut instances: Vec<&str> = instance_ids.to_vec();
    instances.sort_unstable();
    instances.dedup();
    aggregates.sort();
    aggregates.dedup();
    if instances.len() + aggregates.len() > MAX_LOCKS_PER_PUSH {
        acquire(all_writers_key(), EXCLUSIVE);
        return;
    }
    lock_writers(instances);
    lock_aggregates(aggregates);
}

/// The writer locks for `instance_ids`: the all-writers key, then each instance's key in key
/// order. Shared: writers never wait for each other.
pub fn lock_writers<'a>(instance_ids: impl IntoIterator<Item = &'a str>) {
    let mut keys: Vec<LockKey> = instance_ids.into_iter().map(writer_key).collect();
    keys.sort();
    keys.dedup();
    acquire(all_writers_key(), SHARED);
    for key in keys {
        acquire(key, SHARED);
    }
}

/// Exclusive aggregate locks, in key order so that two batches never deadlock (trap 11).
fn lock_aggregates(mut keys: Vec<LockKey>) {
    if mutants::NO_AGGREGATE_LOCK {
        return;
    }
    keys.sort();
    keys.dedup();
    for key in keys {
        acquire(key, EXCLUSIVE);
    }
}

/// Whether this transaction writes events: every push and lock_writer take the all-writers key.
pub fn writing() -> bool {
    held_by_me(all_writers_key(), SHARED)
}

/// A counter's lock, until the transaction ends: callers of next_number serialize, and the
/// value is read after the previous holder committed or rolled back.
pub fn lock_counter(tenant: &str, scope: &str) {
    if mutants::NO_COUNTER_LOCK {
        return;
    }
    acquire(counter_key(tenant, scope), EXCLUSIVE);
}

/// Marks this session as waiting for events of `instance_id` (of any instance when `None`)
/// until [`stop_waiting`]: a committing writer sets the latch of every holder.
pub fn start_waiting(instance_id: Option<&str>) -> LockKey {
    let key = waiter_key(instance_id);
    acquire(key, SHARED);
    key
}

pub fn stop_waiting(key: LockKey) {
    release(key, SHARED);
}

/// Sets the latch of every session waiting on the given waiter keys. Called after a commit, so
/// it must not raise: it only reads the lock table.
pub fn wake_waiters(keys: &[LockKey]) {
    if mutants::NO_WAKEUP {
        return;
    }
    for key in keys {
        let tag = key.tag();
        // SAFETY: GetLockConflicts returns a palloc'd array of virtual transaction ids ended by
        // one whose backend is invalid; we read it up to that end and nothing beyond. A running
        // backend's PGPROC stays valid; setting its latch is what SetLatch is for.
        unsafe {
            let mut count = 0;
            let mut vxid = pg_sys::GetLockConflicts(&tag, EXCLUSIVE, &mut count);
            while let Some(number) = vxid.as_ref().and_then(crate::pg::vxid_proc_number) {
                if let Some(proc) = crate::pg::proc_by_number(number) {
                    pg_sys::SetLatch(&mut (*proc).procLatch);
                }
                vxid = vxid.add(1);
            }
        }
    }
}

/// The projection lock (G6): taken until the transaction ends. Re-entrant within a
/// transaction, so a nested catch-up of the same projection cannot wait on itself (trap 8).
pub fn lock_projection_key(projection: &str, instance_id: Option<&str>, wait: bool) -> bool {
    let key = projection_key(projection, instance_id);
    if mutants::NO_PROJECTION_LOCK {
        return true;
    }
    if wait {
        acquire(key, EXCLUSIVE);
        true
    } else {
        try_acquire(key, EXCLUSIVE)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    fn sql_key(expression: &str) -> i32 {
        Spi::get_one::<i32>(&format!("SELECT {expression}")).unwrap().unwrap()
    }

    #[pg_test]
    fn lock_keys_are_the_documented_sql_expressions() {
        assert_eq!(writer_key("acme").hash, sql_key("hashtext('acme')"));
        assert_eq!(projection_key("totals", Some("acme")).hash, sql_key("hashtext('acme/totals')"));
        assert_eq!(projection_key("totals", None).hash, sql_key("hashtext('/totals')"));
        assert_eq!(aggregate_key("acme", "user", "u1").hash, sql_key("hashtext('acme/user/u1')"));
        assert_eq!(counter_key("acme", "invoice").hash, sql_key("hashtext('acme/invoice')"));
        assert_eq!(waiter_key(Some("acme")).hash, sql_key("hashtext('acme')"));
        assert_eq!(waiter_key(None).hash, sql_key("hashtext('')"));
    }

    #[pg_test]
    fn lock_families_have_distinct_class_ids() {
        let mut classes = [ALL_WRITERS_CLASS, WRITER_CLASS, PROJECTION_CLASS, AGGREGATE_CLASS,
            COUNTER_CLASS, WAITER_CLASS];
        classes.sort();
        assert!(classes.windows(2).all(|w| w[0] != w[1]));
        assert_eq!(ALL_WRITERS_CLASS, 1163067393);
    }

    #[pg_test]
    fn lock_writer_is_visible_as_a_shared_advisory_lock_until_the_transaction_ends() {
        Spi::run("SELECT eventstore.lock_writer('acme')").unwrap();
        let held = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
               AND mode = 'ShareLock' AND classid::bigint = {WRITER_CLASS} AND objid::bigint = (hashtext('acme')::bigint + 4294967296) % 4294967296"
        ));
        assert_eq!(held, Ok(Some(1)));
    }

    #[pg_test]
    fn a_free_projection_lock_is_taken_and_is_reentrant() {
        assert!(lock_projection_key("p", Some("acme"), false));
        assert!(lock_projection_key("p", Some("acme"), false), "the holder may take it again");
    }
}
