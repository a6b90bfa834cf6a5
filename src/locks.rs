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
//! Writers share their keys. The barrier never takes a writer key: it reads the horizon, then
//! waits for the transactions holding the key at that moment (as CREATE INDEX CONCURRENTLY
//! waits for old snapshots), so a new writer never queues behind a waiting barrier (trap 3).
//! Keys are taken in sorted order within a call (trap 11).
//!
//! A bulk push (more than [`MAX_LOCKS_PER_PUSH`] distinct instances and aggregates) takes the
//! all-writers key exclusively instead of one lock each: an import of 10,000 aggregates then
//! holds one lock, not 10,000 (which would exhaust the shared lock table), at the price of
//! running alone among writers. Barriers wait for it as well.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors;
use crate::tenancy;

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

const SHARED: pg_sys::LOCKMODE = pg_sys::ShareLock as pg_sys::LOCKMODE;
const EXCLUSIVE: pg_sys::LOCKMODE = pg_sys::ExclusiveLock as pg_sys::LOCKMODE;

/// Waits for `key` in `mode` until the transaction ends.
fn acquire(key: LockKey, mode: pg_sys::LOCKMODE) {
    let tag = key.tag();
    unsafe { pg_sys::LockAcquire(&tag, mode, false, false) };
}

/// Takes `key` in `mode` until the transaction ends, if no other transaction holds it.
fn try_acquire(key: LockKey, mode: pg_sys::LOCKMODE) -> bool {
    let tag = key.tag();
    let result = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
    result != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

fn held_by_me(key: LockKey, mode: pg_sys::LOCKMODE) -> bool {
    let tag = key.tag();
    unsafe { pg_sys::LockHeldByMe(&tag, mode) }
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
    if cfg!(feature = "mutant_no_aggregate_lock") {
        return;
    }
    keys.sort();
    keys.dedup();
    for key in keys {
        acquire(key, EXCLUSIVE);
    }
}

/// A counter's lock, until the transaction ends: callers of next_number serialize, and the
/// value is read after the previous holder committed or rolled back.
pub fn lock_counter(tenant: &str, scope: &str) {
    if cfg!(feature = "mutant_no_counter_lock") {
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
    unsafe { pg_sys::LockRelease(&key.tag(), SHARED, false) };
}

extern "C-unwind" {
    /// storage/sinvaladt.h; not in pgrx's bindings.
    fn BackendIdGetProc(backend_id: std::ffi::c_int) -> *mut pg_sys::PGPROC;
}

/// Sets the latch of every session waiting on the given waiter keys. Called after a commit, so
/// it must not raise: it only reads the lock table.
pub fn wake_waiters(keys: &[LockKey]) {
    if cfg!(feature = "mutant_no_wakeup") {
        return;
    }
    for key in keys {
        let tag = key.tag();
        unsafe {
            let mut count = 0;
            let mut vxid = pg_sys::GetLockConflicts(&tag, EXCLUSIVE, &mut count);
            while !vxid.is_null() && (*vxid).backendId != pg_sys::InvalidBackendId {
                let proc = BackendIdGetProc((*vxid).backendId);
                if !proc.is_null() {
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
    if cfg!(feature = "mutant_no_projection_lock") {
        return true;
    }
    if wait {
        acquire(key, EXCLUSIVE);
        true
    } else {
        try_acquire(key, EXCLUSIVE)
    }
}

/// Refuses to wait for writers in a transaction that is itself writing (it holds the
/// all-writers key, which every push and lock_writer take): a writer waiting on one of our
/// aggregate locks while we wait for it would be a deadlock. Call before any lock is taken.
pub fn refuse_while_writing() {
    if held_by_me(all_writers_key(), SHARED) {
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

/// The barrier (G4): returns a horizon such that every position at or below it belongs to a
/// finished transaction, for `instance_id` (for every instance when `None`).
///
/// Positions are drawn only by transactions holding the writer key, so every position at or
/// below the horizon read first belongs to a transaction that has finished or still holds the
/// key; we then wait for exactly those holders. No lock request is queued, so writers that
/// start meanwhile never wait for us (trap 3), and nothing can be left behind by an error
/// (trap 2). Call [`refuse_while_writing`] first.
///
/// With the horizon registry active (eventstore preloaded), nothing waits: the horizon comes
/// from the registry of writes in flight (horizon.rs).
pub fn barrier(instance_id: Option<&str>, read_horizon: impl FnOnce() -> i64) -> i64 {
    if crate::horizon::is_active() {
        return crate::horizon::horizon(instance_id, read_horizon);
    }
    let key = match instance_id {
        Some(instance_id) => writer_key(instance_id),
        None => all_writers_key(),
    };
    if cfg!(feature = "mutant_queued_barrier") {
        // The naive barrier of trap 3: an exclusive request that new writers queue behind.
        acquire(key, EXCLUSIVE);
        let horizon = read_horizon();
        unsafe { pg_sys::LockRelease(&key.tag(), EXCLUSIVE, false) };
        return horizon;
    }
    let horizon = read_horizon();
    if !cfg!(feature = "mutant_no_barrier") {
        unsafe { pg_sys::WaitForLockers(key.tag(), EXCLUSIVE, false) };
        if instance_id.is_some() {
            // A bulk push holds only the all-writers key (exclusively): wait for it too.
            unsafe { pg_sys::WaitForLockers(all_writers_key().tag(), SHARED, false) };
        }
    }
    horizon
}

/// The horizon a catch-up of `instance_id` would get now without waiting for anyone, when the
/// mode can tell: the registry's; `None` with the barrier, which has to wait to know. Must be
/// called inside an SPI connection.
pub fn horizon_without_waiting(instance_id: Option<&str>) -> Option<i64> {
    if cfg!(feature = "mutant_wait_ignores_horizon") {
        return None;
    }
    crate::horizon::is_active().then(|| crate::horizon::horizon(instance_id, crate::push::last_position))
}

/// `eventstore.lock_writer(instance_id)`: the shared writer lock push takes, for applications
/// that write related rows and want the same protection from catch-up (G4). With the horizon
/// registry active it also registers the transaction, so horizons stay below what it writes.
#[pg_extern(sql = false)]
fn lock_writer(instance_id: Option<&str>) {
    let instance_id = crate::push::require_identifier("instance_id", instance_id);
    tenancy::caller_scope().check(instance_id, "lock_writer");
    lock_writers([instance_id]);
    crate::horizon::register_writer(crate::horizon::Scope::instance(instance_id),
        || crate::query::with_spi(crate::push::last_position));
}

/// `eventstore.lock_projection(projection, instance_id, wait)`: the exclusive projection lock
/// (G6); busy and `wait = false` returns false, not an error (trap 10).
#[pg_extern(sql = false)]
fn lock_projection(projection: Option<&str>, instance_id: Option<&str>, wait: Option<bool>) -> bool {
    let projection = crate::push::require_identifier("projection", projection);
    let instance_id = instance_id.map(|i| crate::push::require_identifier("instance_id", Some(i)));
    let scope = tenancy::caller_scope();
    lock_projection_key(projection, scope.resolve(instance_id, "lock_projection"), wait.unwrap_or(false))
}

/// `eventstore.await_writers(instance_id)`: the barrier; returns the safe horizon (G4). With the
/// horizon registry active (eventstore preloaded) it returns at once, below every write in flight.
#[pg_extern(sql = false)]
fn await_writers(instance_id: Option<&str>) -> i64 {
    let instance_id = instance_id.map(|i| crate::push::require_identifier("instance_id", Some(i)));
    let scope = tenancy::caller_scope();
    let instance_id = scope.resolve(instance_id, "await_writers");
    refuse_while_writing();
    tenancy::as_owner(|| crate::query::with_spi(|| barrier(instance_id, crate::push::last_position)))
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
