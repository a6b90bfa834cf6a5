//! The horizon registry (horizon mode "registry", eventstore in shared_preload_libraries): a
//! table in shared memory, one slot per backend, holding for each open write transaction the
//! lowest position it drew (its floor) and the instances it writes. The horizon is the last
//! drawn position, lowered below every floor in scope. Nobody waits: a writer takes an LWLock
//! once per transaction, for a few instructions; a catch-up answers at once with everything below
//! the lowest position still in flight; a transaction that writes no events is never registered,
//! so it holds nothing back (unlike xid-snapshot horizons, trap 6).
//!
//! Why it is exact: a transaction registers before any position of its own can be read back. Its
//! first position is drawn while it holds the registry's lock exclusively, and its slot is
//! filled before the lock is released; a later position is drawn after the slot exists and after
//! the slot's scope was widened to cover it. A reader reads the last drawn position V first, then
//! takes the lock and scans. Every position x <= V was drawn before V was read, so when the scan
//! runs, the transaction that drew x either is registered with a floor <= x and a scope covering
//! x (and the horizon stays below x), or has cleared its slot; it clears only in the commit or
//! abort callback, which runs after its outcome is visible to every snapshot taken later, and
//! the catch-up reads its batch under such a snapshot (query::Snapshot::Latest), or when the
//! subtransaction that registered rolls back, which x then belongs to: it can never commit.
//!
//! The slot is cleared at commit and abort (by eventstore's transaction callback, src/xact.rs,
//! which runs after ProcArrayEndTransaction and clears the slot before it wakes anyone) and when
//! the backend exits. A registration made inside a subtransaction that rolls back (the
//! caller's ROLLBACK TO) is dropped with it, and a widening of the scope made inside
//! one is undone: every position drawn under it was drawn inside that subtransaction and can
//! never commit. PREPARE TRANSACTION is refused for a registered transaction: a prepared
//! transaction outlives its backend, and the registry could not follow it. After a restart the
//! registry is empty (no transaction survives one), and the position sequence, WAL-logged,
//! resumes above every stored position.

use std::cell::Cell;
use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors;
use crate::locks;
use crate::mutants;

/// Which instances an open transaction writes events to: one (by its writer key's hash) or any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scope {
    Instance(u64),
    Every,
}

impl Scope {
    /// The scope of a push to `instance_ids`: one instance, or every instance when several.
    pub fn of(instance_ids: &[&str]) -> Scope {
        match instance_ids.split_first() {
            Some((first, rest)) if rest.iter().all(|i| i == first) => Scope::instance(first),
            _ => Scope::Every,
        }
    }

    pub fn instance(instance_id: &str) -> Scope {
        Scope::Instance(locks::writer_key(instance_id).digest)
    }

    /// The smallest scope covering both.
    fn union(self, other: Scope) -> Scope {
        if self == other { self } else { Scope::Every }
    }

    fn covers(self, other: Scope) -> bool {
        self.union(other) == self
    }

    /// Whether a writer of scope `self` can draw positions a reader of `reader` must wait for.
    fn concerns(self, reader: Option<Scope>) -> bool {
        match (self, reader) {
            (Scope::Instance(mine), Some(Scope::Instance(theirs))) => mine == theirs,
            _ => true,
        }
    }
}

/// One backend's registration; `floor == 0`: none.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    database: pg_sys::Oid,
    floor: i64,
    every_instance: bool,
    instance: u64,
}

const EMPTY: Slot = Slot { database: pg_sys::InvalidOid, floor: 0, every_instance: false, instance: 0 };

impl Slot {
    fn scope(&self) -> Scope {
        if self.every_instance { Scope::Every } else { Scope::Instance(self.instance) }
    }
}

const TRANCHE: &CStr = c"eventstore_horizon";
const SHMEM_NAME: &CStr = c"eventstore horizon registry";
/// The name PostgreSQL gives AddinShmemInitLock among its individual LWLocks.
const ADDIN_SHMEM_INIT_LOCK_NAME: &CStr = c"AddinShmemInit";

// The shared registry, set in the postmaster when preloaded and inherited by every backend.
// Written only by attach_shared_memory (in the postmaster, before any backend exists) and by
// init (in _PG_init, single-threaded); every backend only reads them afterwards. The slots
// themselves are read and written only under LOCK (see Locked).
static mut SLOTS: *mut Slot = std::ptr::null_mut();
static mut SLOT_COUNT: usize = 0;
static mut LOCK: *mut pg_sys::LWLock = std::ptr::null_mut();
static mut PREVIOUS_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREVIOUS_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

thread_local! {
    /// This backend's registration in the current transaction, if any.
    static REGISTERED: Cell<Option<Scope>> = const { Cell::new(None) };
    /// The subtransaction that registered (1: the top transaction).
    static REGISTERED_IN: Cell<pg_sys::SubTransactionId> = const { Cell::new(0) };
    /// When a later write widened the scope: the subtransaction that did, and the scope before.
    /// (A scope widens at most once: from one instance to every instance.)
    static WIDENED: Cell<Option<(pg_sys::SubTransactionId, Scope)>> = const { Cell::new(None) };
    static EXIT_HOOK_SET: Cell<bool> = const { Cell::new(false) };
}

/// From `_PG_init`: asks for the registry's shared memory when preloaded; otherwise nothing,
/// and the floors (or the barrier) stay in charge.
pub fn init() {
    // SAFETY: _PG_init runs once per process, single-threaded, before any hook can be called.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREVIOUS_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(request_shared_memory);
        PREVIOUS_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(attach_shared_memory);
    }
}

fn slot_count() -> usize {
    // Backend numbers run from 1 to MaxBackends.
    // SAFETY: MaxBackends is set before shared memory is sized and never changes afterwards.
    unsafe { pg_sys::MaxBackends as usize + 1 }
}

#[pg_guard]
unsafe extern "C-unwind" fn request_shared_memory() {
    // SAFETY: called by the postmaster while shared memory is being sized; the previous hook is
    // the one we replaced in init.
    unsafe {
        if let Some(previous) = PREVIOUS_REQUEST_HOOK {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| previous());
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Slot>() * slot_count());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 1);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn attach_shared_memory() {
    // SAFETY: called once in the postmaster after shared memory exists, before any backend
    // runs; ShmemInitStruct returns memory of the size we asked for, initialized here once
    // under AddinShmemInitLock as PostgreSQL asks of extensions.
    unsafe {
        if let Some(previous) = PREVIOUS_STARTUP_HOOK {
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| previous());
        }
        let init_lock = addin_shmem_init_lock();
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let count = slot_count();
        let mut found = false;
        let slots = pg_sys::ShmemInitStruct(SHMEM_NAME.as_ptr(), std::mem::size_of::<Slot>() * count,
            &mut found) as *mut Slot;
        if !found {
            for i in 0..count {
                slots.add(i).write(EMPTY);
            }
        }
        SLOTS = slots;
        SLOT_COUNT = count;
        LOCK = &raw mut (*pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr())).lock;
        pg_sys::LWLockRelease(init_lock);
    }
}

/// AddinShmemInitLock, found by its name among PostgreSQL's individual LWLocks (whose tranche
/// id is their index), so that no version's index is hard-coded.
///
/// # Safety
/// Call only after the main LWLock array exists (from a shmem startup hook or later).
unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    for index in 0..pg_sys::NUM_INDIVIDUAL_LWLOCKS {
        // SAFETY: GetLWLockIdentifier returns a static name for every individual LWLock's
        // tranche id; index is within the individual locks of MainLWLockArray.
        unsafe {
            let name = pg_sys::GetLWLockIdentifier(pg_sys::PG_WAIT_LWLOCK, index as u16);
            if !name.is_null() && CStr::from_ptr(name) == ADDIN_SHMEM_INIT_LOCK_NAME {
                return &raw mut (*pg_sys::MainLWLockArray.add(index as usize)).lock;
            }
        }
    }
    panic!("PostgreSQL has no LWLock named {ADDIN_SHMEM_INIT_LOCK_NAME:?}")
}

/// Whether the registry is in charge of the horizon (the library was preloaded).
pub fn is_active() -> bool {
    // SAFETY: SLOTS is written only before any backend runs (see its declaration).
    unsafe { !SLOTS.is_null() }
}

/// Holds the registry's lock until dropped (also released by PostgreSQL when an error aborts).
struct Locked;

impl Locked {
    fn exclusive() -> Locked {
        // SAFETY: LOCK is the registry's LWLock, set when the registry is active (every caller
        // checks is_active first); PostgreSQL releases it if an error aborts meanwhile.
        unsafe { pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Locked
    }

    fn shared() -> Locked {
        // SAFETY: as in exclusive.
        unsafe { pg_sys::LWLockAcquire(LOCK, pg_sys::LWLockMode::LW_SHARED) };
        Locked
    }

    /// This backend's slot. Only this backend writes it, and only while it holds the lock
    /// exclusively; `&mut` from `&self` is sound because the guard proves the lock is held and
    /// each caller keeps the reference only while it holds the guard.
    #[allow(clippy::mut_from_ref)]
    fn my_slot(&self) -> &mut Slot {
        let number = crate::pg::my_proc_number();
        // SAFETY: SLOT_COUNT is fixed before any backend runs.
        let count = unsafe { SLOT_COUNT };
        assert!(number >= 1 && number < count, "backend number {number} outside the horizon registry");
        // SAFETY: number is within the SLOT_COUNT slots of the shared array, and the slot is
        // only touched under the lock this guard holds.
        unsafe { &mut *SLOTS.add(number) }
    }

    fn slots(&self) -> &[Slot] {
        // SAFETY: SLOTS points to SLOT_COUNT initialized slots; they change only under the
        // exclusive lock, which no one holds while this guard holds the lock.
        unsafe { std::slice::from_raw_parts(SLOTS, SLOT_COUNT) }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: the guard exists only while this backend holds LOCK.
        unsafe { pg_sys::LWLockRelease(LOCK) };
    }
}

/// Draws a position with `draw` for a write to `scope` (G3: with the writer and aggregate locks
/// held), registering the transaction first when needed: its first position is drawn under the
/// registry's exclusive lock and becomes its floor; a position for an instance outside its scope
/// is drawn after the scope was widened. Every other draw takes no lock.
pub fn draw(scope: Scope, draw: impl FnOnce() -> i64) -> i64 {
    if !is_active() {
        return draw();
    }
    let registered = REGISTERED.get();
    if registered.is_some_and(|mine| mine.covers(scope)) {
        return draw();
    }
    set_exit_hook();
    let locked = Locked::exclusive();
    let slot = locked.my_slot();
    let position = match registered {
        Some(mine) => {
            widen(slot, mine, scope);
            draw()
        }
        None => {
            let position = draw();
            register(slot, position, scope);
            position
        }
    };
    drop(locked);
    position
}

/// Registers the transaction for `scope` without drawing, as `lock_writer` does: its floor is
/// one above `last_drawn`, read before the call, so every position it draws later is above it.
pub fn register_writer(scope: Scope, last_drawn: impl FnOnce() -> i64) {
    if !is_active() {
        return;
    }
    match REGISTERED.get() {
        Some(mine) if mine.covers(scope) => {}
        Some(mine) => {
            let locked = Locked::exclusive();
            widen(locked.my_slot(), mine, scope);
        }
        None => {
            let floor = last_drawn() + 1;
            set_exit_hook();
            let locked = Locked::exclusive();
            register(locked.my_slot(), floor, scope);
        }
    }
}

fn register(slot: &mut Slot, floor: i64, scope: Scope) {
    // SAFETY: MyDatabaseId is set once at backend start and only read afterwards.
    slot.database = unsafe { pg_sys::MyDatabaseId };
    slot.floor = floor;
    set_scope(slot, scope);
    REGISTERED.set(Some(scope));
    REGISTERED_IN.set(current_subtransaction());
    WIDENED.set(None);
}

/// Widens the registration of scope `mine` to cover `scope` as well.
fn widen(slot: &mut Slot, mine: Scope, scope: Scope) {
    let widened = mine.union(scope);
    set_scope(slot, widened);
    REGISTERED.set(Some(widened));
    WIDENED.set(Some((current_subtransaction(), mine)));
}

fn current_subtransaction() -> pg_sys::SubTransactionId {
    // SAFETY: we are inside a transaction; this only reads its state.
    unsafe { pg_sys::GetCurrentSubTransactionId() }
}

fn set_scope(slot: &mut Slot, scope: Scope) {
    match scope {
        Scope::Every => slot.every_instance = true,
        Scope::Instance(hash) => {
            slot.every_instance = false;
            slot.instance = hash;
        }
    }
}

/// The horizon for readers of `instance_id` (every instance when `None`): `last_drawn()`, read
/// first, lowered to just below the lowest floor of a registered transaction of this database
/// whose scope concerns the reader. Never waits (beyond the registry's LWLock).
pub fn horizon(instance_id: Option<&str>, last_drawn: impl FnOnce() -> i64) -> i64 {
    let last = last_drawn();
    if mutants::REGISTRY_IGNORED {
        return last;
    }
    let reader = instance_id.map(Scope::instance);
    // SAFETY: as in register.
    let database = unsafe { pg_sys::MyDatabaseId };
    let locked = Locked::shared();
    let lowest_floor = locked.slots().iter()
        .filter(|s| s.floor > 0 && s.database == database && s.scope().concerns(reader))
        .map(|s| s.floor)
        .min();
    drop(locked);
    match lowest_floor {
        Some(floor) => last.min(floor - 1),
        None => last,
    }
}

/// The exit hook, set once per backend.
fn set_exit_hook() {
    if EXIT_HOOK_SET.get() {
        return;
    }
    // SAFETY: registers a plain function with no argument, once per backend.
    unsafe { pg_sys::before_shmem_exit(Some(at_exit), pg_sys::Datum::from(0usize)) };
    EXIT_HOOK_SET.set(true);
}

/// Clears this backend's slot. Raises nothing: it runs in the commit callback, where an ERROR
/// would become a PANIC.
fn clear() {
    if REGISTERED.get().is_none() {
        return;
    }
    let locked = Locked::exclusive();
    *locked.my_slot() = EMPTY;
    drop(locked);
    REGISTERED.set(None);
    WIDENED.set(None);
}

/// At commit or abort (src/xact.rs), once the outcome is visible to every snapshot taken from
/// now on: the transaction holds nothing back any more. Raises nothing.
pub fn transaction_ended() {
    clear();
}

/// When the subtransaction `rolled_back` rolls back: drops a registration made in it (or in a
/// subtransaction nested in it, whose ids are higher), or undoes a widening of the scope made
/// there. Every position drawn under either was drawn inside it and can never commit.
/// Raises nothing.
pub fn subtransaction_aborted(rolled_back: pg_sys::SubTransactionId) {
    if REGISTERED.get().is_none() {
        return;
    }
    if REGISTERED_IN.get() >= rolled_back {
        clear();
    } else if let Some((widened_in, before)) = WIDENED.get() {
        if widened_in >= rolled_back {
            let locked = Locked::exclusive();
            set_scope(locked.my_slot(), before);
            drop(locked);
            REGISTERED.set(Some(before));
            WIDENED.set(None);
        }
    }
}

/// Before PREPARE TRANSACTION: refused for a registered transaction (its slot could not follow
/// it out of this backend).
pub fn refuse_prepare() {
    if REGISTERED.get().is_some() {
        errors::raise(
            errors::NOT_SUPPORTED,
            "cannot prepare a transaction that writes events while the eventstore horizon registry is active".into(),
            "eventstore is in shared_preload_libraries (horizon_mode() = 'registry'), which tracks \
             write transactions per backend; a prepared transaction would leave its backend."
                .into(),
            "Commit the events in a transaction of their own, or run without preloading eventstore.",
        );
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_exit(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    // A backend exits with its transaction aborted (prepared ones are refused), so its positions
    // never commit: no reader can skip one of them. A FATAL error may come while we hold the lock
    // (the transaction's abort, which would release it, runs after this hook).
    // SAFETY: LOCK is valid when the registry is active; we release it only if we hold it.
    unsafe {
        if is_active() && pg_sys::LWLockHeldByMe(LOCK) {
            pg_sys::LWLockRelease(LOCK);
        }
    }
    clear();
}
