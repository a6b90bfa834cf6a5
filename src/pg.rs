//! What differs between the PostgreSQL versions eventstore builds for, in one place. Every other
//! module calls these instead of the internals they wrap.

use pgrx::pg_sys;

extern "C-unwind" {
    /// storage/sinvaladt.h; not in pgrx's bindings.
    fn BackendIdGetProc(backend_id: std::ffi::c_int) -> *mut pg_sys::PGPROC;
}

/// This backend's number among all backends, from 1 to MaxBackends.
pub fn my_proc_number() -> usize {
    // SAFETY: MyBackendId is set once when the backend starts and only read afterwards.
    unsafe { pg_sys::MyBackendId as usize }
}

/// The backend number a virtual transaction id belongs to; `None` for the invalid id that ends
/// the arrays GetLockConflicts returns.
pub fn vxid_proc_number(vxid: &pg_sys::VirtualTransactionId) -> Option<i32> {
    (vxid.backendId != pg_sys::InvalidBackendId).then_some(vxid.backendId)
}

/// The PGPROC of backend `number`, if it runs.
pub fn proc_by_number(number: i32) -> Option<*mut pg_sys::PGPROC> {
    // SAFETY: BackendIdGetProc looks the number up in shared invalidation state under its own
    // lock and returns NULL for a backend that is not running.
    let proc = unsafe { BackendIdGetProc(number) };
    (!proc.is_null()).then_some(proc)
}

/// The transaction holding a lock-table entry: its backend and local transaction id. A prepared
/// transaction's locks belong to a dummy process with no backend and its xid as local id, so
/// each prepared transaction is a holder of its own.
pub type LockHolder = (i32, u32);

pub fn lock_holder(entry: &pg_sys::LockInstanceData) -> LockHolder {
    (entry.backend, entry.lxid)
}

/// Whether a lock holder is a prepared transaction (its dummy process has no backend).
pub fn is_prepared_holder(holder: LockHolder) -> bool {
    holder.0 == pg_sys::InvalidBackendId
}

/// Whether this transaction holds the lock `tag` in `mode`.
pub fn lock_held_by_me(tag: &pg_sys::LOCKTAG, mode: pg_sys::LOCKMODE) -> bool {
    // SAFETY: LockHeldByMe only reads this backend's local lock table.
    unsafe { pg_sys::LockHeldByMe(tag, mode) }
}

/// The attributes of a tuple descriptor.
///
/// # Safety
/// `desc` must point to a valid tuple descriptor that outlives the returned slice.
pub unsafe fn tuple_desc_attrs<'a>(desc: pg_sys::TupleDesc) -> &'a [pg_sys::FormData_pg_attribute] {
    // SAFETY: by the caller's promise; natts attributes follow the header.
    unsafe { (*desc).attrs.as_slice((*desc).natts as usize) }
}

/// This backend's local number for its current transaction: different for every transaction
/// the backend runs, without assigning a transaction id.
pub fn local_transaction_id() -> u32 {
    // SAFETY: MyProc is this backend's own PGPROC, valid while the backend runs.
    unsafe { (*pg_sys::MyProc).lxid }
}
