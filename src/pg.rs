//! What differs between the PostgreSQL versions eventstore builds for (15, 16, 17, 18: the
//! Cargo features pg15..pg18), in one place. Every other module calls these instead of the
//! internals they wrap.
//!
//! 17 renamed backend ids to proc numbers (`MyBackendId`, counted from 1, became
//! `MyProcNumber`, counted from 0; `BackendIdGetProc` became `ProcNumberGetProc`; PGPROC's
//! `lxid` moved into its `vxid`) and gave `LockHeldByMe` a third argument; 18 moved a tuple descriptor's attributes behind
//! `TupleDescAttr` and gave `index_beginscan` an instrumentation argument; 16 gave
//! `ExecInsertIndexTuples` an `onlySummarizing` argument.

use pgrx::pg_sys;

#[cfg(any(feature = "pg15", feature = "pg16"))]
extern "C-unwind" {
    /// storage/sinvaladt.h; not in pgrx's bindings.
    fn BackendIdGetProc(backend_id: std::ffi::c_int) -> *mut pg_sys::PGPROC;
}

/// This backend's number among all backends, from 1 to MaxBackends.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn my_proc_number() -> usize {
    // SAFETY: MyBackendId is set once when the backend starts and only read afterwards.
    unsafe { pg_sys::MyBackendId as usize }
}

/// This backend's number among all backends, from 1 to MaxBackends (backends, unlike
/// auxiliary processes, have proc numbers from 0 to MaxBackends - 1).
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn my_proc_number() -> usize {
    // SAFETY: MyProcNumber is set once when the backend starts and only read afterwards.
    unsafe { pg_sys::MyProcNumber as usize + 1 }
}

/// The backend a virtual transaction id belongs to, as proc_by_number takes it; `None` for the
/// invalid id that ends the arrays GetLockConflicts returns.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn vxid_proc_number(vxid: &pg_sys::VirtualTransactionId) -> Option<i32> {
    (vxid.backendId != pg_sys::InvalidBackendId).then_some(vxid.backendId)
}

/// As above, from 17 on.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn vxid_proc_number(vxid: &pg_sys::VirtualTransactionId) -> Option<i32> {
    (vxid.procNumber != pg_sys::INVALID_PROC_NUMBER).then_some(vxid.procNumber)
}

/// The PGPROC of the backend `number` (from vxid_proc_number), if it runs.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn proc_by_number(number: i32) -> Option<*mut pg_sys::PGPROC> {
    // SAFETY: BackendIdGetProc looks the number up in shared invalidation state under its own
    // lock and returns NULL for a backend that is not running.
    let proc = unsafe { BackendIdGetProc(number) };
    (!proc.is_null()).then_some(proc)
}

/// As above, from 17 on.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn proc_by_number(number: i32) -> Option<*mut pg_sys::PGPROC> {
    // SAFETY: ProcNumberGetProc checks the number against the proc array's bounds and returns
    // NULL for a number out of range or a slot without a running process.
    let proc = unsafe { pg_sys::ProcNumberGetProc(number) };
    (!proc.is_null()).then_some(proc)
}

/// The transaction holding a lock-table entry: its backend (proc number from 17 on) and local
/// transaction id. A prepared transaction's locks belong to a dummy process with no backend and
/// its xid as local id, so each prepared transaction is a holder of its own.
pub type LockHolder = (i32, u32);

#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn lock_holder(entry: &pg_sys::LockInstanceData) -> LockHolder {
    (entry.backend, entry.lxid)
}

/// As above, from 17 on (where the holder is the entry's virtual transaction id).
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn lock_holder(entry: &pg_sys::LockInstanceData) -> LockHolder {
    (entry.vxid.procNumber, entry.vxid.localTransactionId)
}

/// Whether a lock holder is a prepared transaction (its dummy process has no backend).
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn is_prepared_holder(holder: LockHolder) -> bool {
    holder.0 == pg_sys::InvalidBackendId
}

/// As above, from 17 on.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn is_prepared_holder(holder: LockHolder) -> bool {
    holder.0 == pg_sys::INVALID_PROC_NUMBER
}

/// Whether this transaction holds the lock `tag` in exactly `mode`.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn lock_held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: LockHeldByMe only reads this backend's local lock table.
    unsafe { pg_sys::LockHeldByMe(tag, mode) }
}

/// As above, from 17 on.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn lock_held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: LockHeldByMe only reads this backend's local lock table; orstronger = false asks
    // for exactly `mode`, as before 17.
    unsafe { pg_sys::LockHeldByMe(tag, mode, false) }
}

/// The attributes of a tuple descriptor.
///
/// # Safety
/// `desc` must point to a valid tuple descriptor that outlives the returned slice.
#[cfg(not(feature = "pg18"))]
pub unsafe fn tuple_desc_attrs<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: by the caller's promise; natts attributes follow the header.
    unsafe { (*desc).attrs.as_slice((*desc).natts as usize) }
}

/// As above, from 18 on.
///
/// # Safety
/// As above.
#[cfg(feature = "pg18")]
pub unsafe fn tuple_desc_attrs<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: by the caller's promise. The natts attributes lie one after another from the
    // first, which TupleDescAttr finds after the descriptor's compact attributes.
    unsafe {
        match (*desc).natts as usize {
            0 => &[],
            natts => std::slice::from_raw_parts(pg_sys::TupleDescAttr(desc, 0), natts),
        }
    }
}

/// This backend's local number for its current transaction: different for every transaction
/// the backend runs, without assigning a transaction id.
#[cfg(any(feature = "pg15", feature = "pg16"))]
pub fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is this backend's own PGPROC, valid while the backend runs.
    unsafe { (*pg_sys::MyProc).lxid }
}

/// As above, from 17 on (where the number moved into PGPROC's vxid).
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is this backend's own PGPROC, valid while the backend runs.
    unsafe { (*pg_sys::MyProc).vxid.lxid }
}

/// Starts an index scan of `index` over `heap` with `keys` scan keys and no ordering operator.
///
/// # Safety
/// Both relations must be open and locked, `snapshot` valid for the scan's life.
#[cfg(not(feature = "pg18"))]
pub unsafe fn index_beginscan(heap: pg_sys::Relation, index: pg_sys::Relation, snapshot: pg_sys::Snapshot,
    keys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: by the caller's promise.
    unsafe { pg_sys::index_beginscan(heap, index, snapshot, keys, 0) }
}

/// As above, from 18 on (which takes an instrumentation pointer, NULL for none).
///
/// # Safety
/// As above.
#[cfg(feature = "pg18")]
pub unsafe fn index_beginscan(heap: pg_sys::Relation, index: pg_sys::Relation, snapshot: pg_sys::Snapshot,
    keys: i32) -> pg_sys::IndexScanDesc {
    // SAFETY: by the caller's promise.
    unsafe { pg_sys::index_beginscan(heap, index, snapshot, std::ptr::null_mut(), keys, 0) }
}

/// Inserts the index entries of the heap row in `slot` (its tid set) into every index of
/// `result`'s relation, unique ones checked as an INSERT checks them; returns the list
/// PostgreSQL gives back (recheck indexes, empty without deferred constraints).
///
/// # Safety
/// `result` has its indexes open (ExecOpenIndices); `slot` holds a row just inserted into its
/// relation; `estate` is an executor state for the call.
#[cfg(feature = "pg15")]
pub unsafe fn insert_index_entries(result: *mut pg_sys::ResultRelInfo, slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState) -> *mut pg_sys::List {
    // SAFETY: by the caller's promise.
    unsafe { pg_sys::ExecInsertIndexTuples(result, slot, estate, false, false, std::ptr::null_mut(), std::ptr::null_mut()) }
}

/// As above, from 16 on (which asks whether only summarizing indexes are to be updated: no).
///
/// # Safety
/// As above.
#[cfg(not(feature = "pg15"))]
pub unsafe fn insert_index_entries(result: *mut pg_sys::ResultRelInfo, slot: *mut pg_sys::TupleTableSlot,
    estate: *mut pg_sys::EState) -> *mut pg_sys::List {
    // SAFETY: by the caller's promise.
    unsafe { pg_sys::ExecInsertIndexTuples(result, slot, estate, false, false, std::ptr::null_mut(), std::ptr::null_mut(), false) }
}
