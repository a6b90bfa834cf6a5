//! The only module that knows lock keys. Every lock is a transaction-scoped advisory lock, so it
//! ends with the transaction whatever happens (safe behind a transaction-pooling PgBouncer).
//!
//! Keys are built natively as advisory lock tags (pg_locks shows them with locktype
//! `advisory`): the database in `field1`, 64 bits of a SHA-256 digest in `field2` (classid) and
//! `field3` (objid), and the family in `field4` (objsubid). `pg_advisory_lock` and friends only
//! ever put 1 or 2 in `field4`, so no application advisory lock can collide with ours (trap 7),
//! and each family has a value of its own.
//!
//! The digest is taken over an unambiguous encoding of the names, tenant first: for each name
//! a marker byte (0 for a name, 1 for "none": a global projection, every instance) and, for a
//! name, its length as 4 bytes big-endian and its UTF-8 bytes. Joining names with a separator
//! would let `a/b` + `c` equal `a` + `b/c` with no search at all; 32-bit hashes of names
//! collide after a few seconds of offline search (trap 13). With 64 bits of SHA-256, finding a
//! name of one tenant whose key equals a given key of another tenant takes about 2^64 digests:
//! one tenant cannot hold another's lock. A collision between names a tenant chooses itself
//! (about 2^32 tries) only makes two of its own keys wait for each other.
//!
//! | family      | field4 (objsubid) | names digested                    | mode                          |
//! |-------------|-------------------|-----------------------------------|-------------------------------|
//! | all writers | 17665             | none (key 0)                      | shared; exclusive for a bulk push to more than 64 instances |
//! | writer      | 17666             | instance                          | shared; exclusive for a bulk push |
//! | projection  | 17667             | instance or none, projection[, partition] | exclusive             |
//! | aggregate   | 17668             | instance, aggregate type, id      | exclusive                     |
//! | counter     | 17669             | tenant, scope                     | exclusive                     |
//! | waiter      | 17670             | instance or none                  | shared                        |
//! | floor       | 17671             | none: the position itself         | shared                        |
//!
//! A floor key (src/horizon/floors.rs) carries no digest: its 64 bits are a position, the
//! lowest a writing transaction may still commit (field2 the high half, field3 the low half).
//!
//! Writers share their keys; the barrier (src/horizon/barrier.rs) never takes one, it waits for
//! their holders, and the floors horizon only reads the lock table ([`held_in_this_database`]).
//! Keys are taken in sorted order within a call (trap 11); a floor is taken last, after every
//! other key of the transaction's first write, and nobody ever asks for one exclusively.
//!
//! This module knows keys and the lock manager, nothing else: it calls no other module of
//! eventstore but the mutant switches and the version differences.
//!
//! A bulk push (more than [`MAX_LOCKS_PER_PUSH`] distinct aggregates) takes its instance's
//! writer key exclusively instead of one lock per aggregate: an import of 10,000 aggregates
//! holds one lock, not 10,000 (which would exhaust the shared lock table), at the price of
//! running alone among the writers of its instance. Other tenants never wait for it (G11).

use sha2::{Digest, Sha256};

use pgrx::pg_sys;

use crate::mutants;

/// A family of keys: the value in the tag's `field4` (pg_locks.objsubid).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[repr(u16)]
pub enum Family {
    /// Shared by every push, whatever its instance: the key a global barrier waits on.
    AllWriters = 0x4501,
    /// Shared by every push to one instance: the key a per-instance barrier waits on.
    Writer = 0x4502,
    /// Exclusive: one transaction at a time runs a projection (G6).
    Projection = 0x4503,
    /// Exclusive: one transaction at a time appends to an aggregate (G2).
    Aggregate = 0x4504,
    /// Exclusive: one transaction at a time draws from a counter (next_number).
    Counter = 0x4505,
    /// Shared, by sessions sleeping in wait_for_events: how a committing writer finds them.
    Waiter = 0x4506,
    /// Shared, once per writing transaction when not preloaded: the lowest position it may
    /// still commit, readable by anyone from the lock table.
    Floor = 0x4507,
}

impl Family {
    const ALL: [Family; 7] = [Family::AllWriters, Family::Writer, Family::Projection,
        Family::Aggregate, Family::Counter, Family::Waiter, Family::Floor];

    fn of_field4(field4: u16) -> Option<Family> {
        Family::ALL.into_iter().find(|f| *f as u16 == field4)
    }
}

/// An advisory lock key: a family and 64 bits of digest.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub struct LockKey {
    pub family: Family,
    pub digest: u64,
}

impl LockKey {
    /// The key of `family` for `names` (tenant first; `None` for "every instance").
    fn of(family: Family, names: &[Option<&str>]) -> LockKey {
        let mut hasher = Sha256::new();
        for name in names {
            match name {
                Some(name) => {
                    hasher.update([0u8]);
                    hasher.update((name.len() as u32).to_be_bytes());
                    hasher.update(name.as_bytes());
                }
                None => hasher.update([1u8]),
            }
        }
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        LockKey { family, digest: u64::from_be_bytes(first) }
    }

    fn tag(self) -> pg_sys::LOCKTAG {
        pg_sys::LOCKTAG {
            // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
            locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
            locktag_field2: (self.digest >> 32) as u32,
            locktag_field3: self.digest as u32,
            locktag_field4: self.family as u16,
            locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
            locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
        }
    }
}

pub fn all_writers_key() -> LockKey {
    LockKey { family: Family::AllWriters, digest: 0 }
}

pub fn writer_key(instance_id: &str) -> LockKey {
    LockKey::of(Family::Writer, &[Some(instance_id)])
}

pub fn projection_key(projection: &str, instance_id: Option<&str>) -> LockKey {
    LockKey::of(Family::Projection, &[instance_id, Some(projection)])
}

/// Partition `partition` of a projection: partition 0's key is the projection's key (an
/// unpartitioned projection keeps its lock); partition p > 0 adds p, in decimal, as a third name.
pub fn partition_key(projection: &str, instance_id: Option<&str>, partition: i32) -> LockKey {
    if partition == 0 {
        return projection_key(projection, instance_id);
    }
    LockKey::of(Family::Projection, &[instance_id, Some(projection), Some(&partition.to_string())])
}

pub fn aggregate_key(instance_id: &str, aggregate_type: &str, aggregate_id: &str) -> LockKey {
    LockKey::of(Family::Aggregate, &[Some(instance_id), Some(aggregate_type), Some(aggregate_id)])
}

pub fn counter_key(tenant: &str, scope: &str) -> LockKey {
    LockKey::of(Family::Counter, &[Some(tenant), Some(scope)])
}

pub fn waiter_key(instance_id: Option<&str>) -> LockKey {
    LockKey::of(Family::Waiter, &[instance_id])
}

/// The floor of a transaction whose first position will be above `last_drawn`.
pub fn floor_key(last_drawn: i64) -> LockKey {
    LockKey { family: Family::Floor, digest: (last_drawn + 1) as u64 }
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

/// Takes `key` shared until the transaction ends (a floor: nobody ever holds it exclusively, so
/// this never waits), owned by the transaction itself rather than by the statement's portal, so
/// that [`release_shared`] can release it at commit: an unnamed portal of the extended protocol
/// (or of Citus delegating a call to a worker) still owns its locks when the commit callbacks
/// run, and releasing them from there would only warn "you don't own a lock".
pub fn acquire_shared(key: LockKey) {
    as_transaction_owner(|| acquire(key, SHARED));
}

/// Releases a hold taken with [`acquire_shared`].
pub fn release_shared(key: LockKey) {
    as_transaction_owner(|| release(key, SHARED));
}

fn as_transaction_owner(f: impl FnOnce()) {
    // SAFETY: TopTransactionResourceOwner lives until the transaction's resources are released,
    // after every callback; the current owner is restored at once (on error, the abort resets it).
    unsafe {
        let saved = pg_sys::CurrentResourceOwner;
        if !pg_sys::TopTransactionResourceOwner.is_null() {
            pg_sys::CurrentResourceOwner = pg_sys::TopTransactionResourceOwner;
        }
        f();
        pg_sys::CurrentResourceOwner = saved;
    }
}

/// One of our keys held by a transaction, as the lock table reports it.
pub struct Held {
    /// The holding transaction (a prepared one included: see [`crate::pg::lock_holder`]).
    pub holder: crate::pg::LockHolder,
    pub key: LockKey,
    pub exclusive: bool,
}

/// The keys of `families` held in this database now, read from the lock table in one pass
/// (GetLockStatusData: every partition of the lock table locked shared for the copy, never a
/// lock request), waiting requests left out.
pub fn held_in_this_database(families: &[Family]) -> Vec<Held> {
    // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let mut held = Vec::new();
    // SAFETY: GetLockStatusData returns a palloc'd copy of the lock table: nelements entries at
    // locks, read here and freed afterwards.
    unsafe {
        let data = pg_sys::GetLockStatusData();
        let entries = std::slice::from_raw_parts((*data).locks, (*data).nelements as usize);
        for entry in entries {
            let tag = &entry.locktag;
            if tag.locktag_type != pg_sys::LockTagType::LOCKTAG_ADVISORY as u8
                || tag.locktag_field1 != database || entry.holdMask == 0 {
                continue;
            }
            let Some(family) = Family::of_field4(tag.locktag_field4).filter(|f| families.contains(f)) else {
                continue;
            };
            let digest = (u64::from(tag.locktag_field2) << 32) | u64::from(tag.locktag_field3);
            held.push(Held {
                holder: crate::pg::lock_holder(entry),
                key: LockKey { family, digest },
                exclusive: entry.holdMask & (1 << EXCLUSIVE) != 0,
            });
        }
        pg_sys::pfree((*data).locks.cast());
        pg_sys::pfree(data.cast());
    }
    held
}

/// Waits until every transaction that holds `key` in a mode conflicting with `mode` now has
/// ended; queues no request, so transactions that take the key meanwhile never wait for us.
pub fn wait_for_lockers(key: LockKey, mode: pg_sys::LOCKMODE) {
    // SAFETY: WaitForLockers reads the lock table and waits on the holders' virtual xids.
    unsafe { pg_sys::WaitForLockers(key.tag(), mode, false) };
}

/// Most distinct aggregates one push locks one by one; above it, a bulk push locks its
/// instances instead.
pub const MAX_LOCKS_PER_PUSH: usize = 64;
/// Most aggregate locks one transaction takes one by one, over all its pushes, so that no
/// transaction can fill the lock table PostgreSQL shares between all sessions (its size is
/// max_locks_per_transaction, 64 by default, times the number of connections).
pub const MAX_AGGREGATE_LOCKS_PER_TRANSACTION: usize = 256;

thread_local! {
    /// Aggregate locks taken one by one in the current transaction: (its local id, count).
    static AGGREGATE_LOCKS_TAKEN: std::cell::Cell<(u32, usize)> = const { std::cell::Cell::new((0, 0)) };
}

/// Why a push cannot take its locks.
pub enum PushLockRefusal {
    /// The transaction already locked this many aggregates one by one.
    TooManyAggregates(usize),
}

/// The locks of a push, before any position is drawn (G2, G3), in one canonical order (trap 11):
/// the all-writers key shared, then each instance's writer key, then the aggregates.
///
/// - A push of at most [`MAX_LOCKS_PER_PUSH`] aggregates takes the writer keys shared and each
///   aggregate's key exclusively.
/// - A bulk push (more aggregates) takes each of its instances' writer keys exclusively instead
///   of the aggregate keys (or, for more than [`MAX_LOCKS_PER_PUSH`] instances, the all-writers
///   key exclusively): it runs alone among the writers of its instances, and no other tenant
///   waits for it.
/// - A writer key this transaction already holds exclusively covers its aggregates.
/// - A lock is never upgraded from shared to exclusive (two transactions doing so would
///   deadlock): a bulk push to an instance this transaction already wrote to locks its
///   aggregates one by one, within [`MAX_AGGREGATE_LOCKS_PER_TRANSACTION`].
pub fn lock_for_push(instance_ids: &[&str], aggregates: Vec<(&str, LockKey)>) -> Result<(), PushLockRefusal> {
    let mut instances: Vec<&str> = instance_ids.to_vec();
    instances.sort_unstable();
    instances.dedup();
    let owned = |instance: &str| held_by_me(writer_key(instance), EXCLUSIVE)
        || held_by_me(all_writers_key(), EXCLUSIVE);
    let mut keys: Vec<LockKey> = aggregates.iter()
        .filter(|(instance, _)| !owned(instance))
        .map(|(_, key)| *key)
        .collect();
    keys.sort();
    keys.dedup();
    if keys.len() > MAX_LOCKS_PER_PUSH {
        let mut writers: Vec<LockKey> = instances.iter().map(|i| writer_key(i)).collect();
        writers.sort();
        let upgrade = |key: &LockKey| held_by_me(*key, SHARED) && !held_by_me(*key, EXCLUSIVE);
        if writers.len() > MAX_LOCKS_PER_PUSH && !upgrade(&all_writers_key()) {
            acquire(all_writers_key(), EXCLUSIVE);
            return Ok(());
        }
        if writers.len() <= MAX_LOCKS_PER_PUSH && !writers.iter().any(upgrade) {
            acquire(all_writers_key(), SHARED);
            for key in writers {
                acquire(key, EXCLUSIVE);
            }
            return Ok(());
        }
    }
    let taken = aggregate_locks_taken();
    if taken + keys.len() > MAX_AGGREGATE_LOCKS_PER_TRANSACTION {
        return Err(PushLockRefusal::TooManyAggregates(taken));
    }
    lock_writers(instances);
    lock_aggregates(&keys);
    AGGREGATE_LOCKS_TAKEN.set((crate::pg::local_transaction_id(), taken + keys.len()));
    Ok(())
}

/// Aggregate locks this transaction took one by one so far (an upper bound: a key locked by
/// two pushes counts twice).
fn aggregate_locks_taken() -> usize {
    let (transaction, count) = AGGREGATE_LOCKS_TAKEN.get();
    if transaction == crate::pg::local_transaction_id() { count } else { 0 }
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

/// Exclusive aggregate locks, in key order (sorted by the caller) so that two batches never
/// deadlock (trap 11).
fn lock_aggregates(keys: &[LockKey]) {
    if mutants::NO_AGGREGATE_LOCK {
        return;
    }
    for key in keys {
        acquire(*key, EXCLUSIVE);
    }
}

/// Whether this transaction writes events: every push and lock_writer take the all-writers key,
/// shared, or exclusively for a bulk push to many instances.
pub fn writing() -> bool {
    held_by_me(all_writers_key(), SHARED) || held_by_me(all_writers_key(), EXCLUSIVE)
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

/// A partition's lock (G6 per partition, G12), until the transaction ends; re-entrant like the
/// projection lock.
pub fn lock_partition(projection: &str, instance_id: Option<&str>, partition: i32, wait: bool) -> bool {
    if mutants::NO_PARTITION_LOCK {
        return true;
    }
    let key = partition_key(projection, instance_id, partition);
    if wait {
        acquire(key, EXCLUSIVE);
        true
    } else {
        try_acquire(key, EXCLUSIVE)
    }
}

/// Gives back one hold of a partition's lock taken by [`lock_partition`] in this transaction,
/// before anything was written under it.
pub fn unlock_partition(projection: &str, instance_id: Option<&str>, partition: i32) {
    if mutants::NO_PARTITION_LOCK {
        return;
    }
    release(partition_key(projection, instance_id, partition), EXCLUSIVE);
}

/// The locks of partitions `partitions`, waiting for each, in key order (trap 11): what a
/// resize or a reset takes so that no batch runs beside it.
pub fn lock_partitions_waiting(projection: &str, instance_id: Option<&str>, partitions: std::ops::Range<i32>) {
    if mutants::NO_PARTITION_LOCK {
        return;
    }
    let mut keys: Vec<LockKey> = partitions.map(|p| partition_key(projection, instance_id, p)).collect();
    keys.sort();
    for key in keys {
        acquire(key, EXCLUSIVE);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

    /// The documented SQL for a key's digest: the first 8 bytes of sha256 over the encoded names.
    fn sql_digest(encoded_names: &str) -> u64 {
        Spi::get_one::<i64>(&format!(
            "SELECT ('x' || encode(substring(sha256({encoded_names}) FROM 1 FOR 8), 'hex'))::bit(64)::bigint"
        )).unwrap().unwrap() as u64
    }

    fn name(text: &str) -> String {
        format!("('\\x00'::bytea || int4send(octet_length('{text}')) || convert_to('{text}', 'UTF8'))")
    }

    const NONE: &str = "'\\x01'::bytea";

    #[pg_test]
    fn lock_keys_are_the_documented_sql_expressions() {
        assert_eq!(writer_key("acme").digest, sql_digest(&name("acme")));
        assert_eq!(projection_key("totals", Some("acme")).digest,
            sql_digest(&format!("{} || {}", name("acme"), name("totals"))));
        assert_eq!(projection_key("totals", None).digest, sql_digest(&format!("{NONE} || {}", name("totals"))));
        assert_eq!(aggregate_key("acme", "user", "u1").digest,
            sql_digest(&format!("{} || {} || {}", name("acme"), name("user"), name("u1"))));
        assert_eq!(counter_key("acme", "invoice").digest,
            sql_digest(&format!("{} || {}", name("acme"), name("invoice"))));
        assert_eq!(waiter_key(None).digest, sql_digest(NONE));
        assert_eq!(partition_key("totals", Some("acme"), 0), projection_key("totals", Some("acme")));
        assert_eq!(partition_key("totals", Some("acme"), 12).digest,
            sql_digest(&format!("{} || {} || {}", name("acme"), name("totals"), name("12"))));
        assert_eq!(partition_key("totals", None, 3).digest,
            sql_digest(&format!("{NONE} || {} || {}", name("totals"), name("3"))));
    }

    #[pg_test]
    fn projection_lock_key_in_sql_is_the_partition_key() {
        for (instance, partition) in [(Some("acme"), 0), (Some("acme"), 7), (None, 0), (None, 255)] {
            let sql = Spi::get_one_with_args::<i64>(
                "SELECT eventstore.projection_lock_key('totals', $1, $2)",
                &[instance.into(), partition.into()]).unwrap().unwrap();
            assert_eq!(sql as u64, partition_key("totals", instance, partition).digest);
        }
    }

    #[pg_test]
    fn names_that_join_to_the_same_text_get_different_keys() {
        assert_ne!(aggregate_key("a/b", "c", "d"), aggregate_key("a", "b/c", "d"));
        assert_ne!(projection_key("b/p", Some("a")), projection_key("p", Some("a/b")));
        assert_ne!(projection_key("p", None), projection_key("p", Some("")));
        assert_ne!(counter_key("", "a"), counter_key("a", ""));
    }

    #[pg_test]
    fn lock_families_never_share_field4_with_pg_advisory_lock() {
        let mut families = Family::ALL.map(|f| f as u16);
        families.sort();
        assert!(families.windows(2).all(|w| w[0] != w[1]));
        assert!(families.iter().all(|f| *f != 1 && *f != 2), "pg_advisory_lock uses 1 and 2");
    }

    #[pg_test]
    fn lock_writer_is_visible_as_a_shared_advisory_lock_until_the_transaction_ends() {
        Spi::run("SELECT eventstore.lock_writer('acme')").unwrap();
        let key = writer_key("acme");
        let held = Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()
               AND mode = 'ShareLock' AND objsubid = {} AND classid::bigint = {} AND objid::bigint = {}",
            Family::Writer as u16, key.digest >> 32, key.digest & 0xFFFF_FFFF));
        assert_eq!(held, Ok(Some(1)));
    }

    #[pg_test]
    fn a_free_projection_lock_is_taken_and_is_reentrant() {
        assert!(lock_projection_key("p", Some("acme"), false));
        assert!(lock_projection_key("p", Some("acme"), false), "the holder may take it again");
    }
}
