//! The only place that reads a `mutant_*` feature. Each switch removes one mechanism that keeps a
//! guarantee, so that `scripts/mutants` can show that the tests which must catch its removal
//! fail (DESIGN.md, "Mutants"). A mutant is a debug build for a private PostgreSQL tree; a
//! release build with any `mutant_*` feature does not compile.

/// The barrier does not wait for the writers in flight (G4).
pub const NO_BARRIER: bool = cfg!(feature = "mutant_no_barrier");
/// The barrier queues an exclusive request that new writers wait behind (trap 3).
pub const QUEUED_BARRIER: bool = cfg!(feature = "mutant_queued_barrier");
/// Catch-up and lock_projection take no projection lock (G6).
pub const NO_PROJECTION_LOCK: bool = cfg!(feature = "mutant_no_projection_lock");
/// Push takes no aggregate lock (G2, G3).
pub const NO_AGGREGATE_LOCK: bool = cfg!(feature = "mutant_no_aggregate_lock");
/// Reads after a lock wait use the statement's snapshot, taken before the wait (trap 4).
pub const STALE_SNAPSHOT: bool = cfg!(feature = "mutant_stale_snapshot");
/// next_number takes no counter lock.
pub const NO_COUNTER_LOCK: bool = cfg!(feature = "mutant_no_counter_lock");
/// A committing push wakes no session sleeping in wait_for_events (G15).
pub const NO_WAKEUP: bool = cfg!(feature = "mutant_no_wakeup");
/// A session bound to a tenant may name any instance (G11).
pub const NO_TENANT_CHECK: bool = cfg!(feature = "mutant_no_tenant_check");
/// The horizon registry is not consulted: the horizon is the last drawn position (G4).
pub const REGISTRY_IGNORED: bool = cfg!(feature = "mutant_registry_ignored");
/// wait_for_events counts events above the horizon, so a worker woken early spins (G15).
pub const WAIT_IGNORES_HORIZON: bool = cfg!(feature = "mutant_wait_ignores_horizon");
/// A writer takes its floor (the right one) just after its first draw instead of just before,
/// paused there for a moment (G4).
pub const FLOOR_AFTER_FIRST_DRAW: bool = cfg!(feature = "mutant_floor_after_first_draw");
/// The floors in the lock table are not consulted: the horizon is the last drawn position (G4).
pub const FLOORS_IGNORED: bool = cfg!(feature = "mutant_floors_ignored");
/// A transaction's floor is released with its other locks, after the waiters were woken (G15).
pub const FLOOR_RELEASED_LATE: bool = cfg!(feature = "mutant_floor_released_late");
/// partition_catchup, set_partitions and reset_projection take no partition lock (G12).
pub const NO_PARTITION_LOCK: bool = cfg!(feature = "mutant_no_partition_lock");
/// A resize takes effect at once: the new partitions ignore the resize position (G12).
pub const RESIZE_IGNORED: bool = cfg!(feature = "mutant_resize_ignored");
/// Handler failures are counted when catch-up hands an event out, in the failing batch's own
/// transaction, so they roll back with it (trap 16, G13); projection_failed records nothing.
pub const FAILURE_IN_BATCH: bool = cfg!(feature = "mutant_failure_in_batch");

#[cfg(all(
    not(debug_assertions),
    any(
        feature = "mutant_no_barrier",
        feature = "mutant_queued_barrier",
        feature = "mutant_no_projection_lock",
        feature = "mutant_no_aggregate_lock",
        feature = "mutant_stale_snapshot",
        feature = "mutant_no_counter_lock",
        feature = "mutant_no_wakeup",
        feature = "mutant_no_tenant_check",
        feature = "mutant_registry_ignored",
        feature = "mutant_wait_ignores_horizon",
        feature = "mutant_floor_after_first_draw",
        feature = "mutant_floors_ignored",
        feature = "mutant_floor_released_late",
        feature = "mutant_no_partition_lock",
        feature = "mutant_resize_ignored",
        feature = "mutant_failure_in_batch",
    )
))]
compile_error!("a mutant_* feature removes a safety mechanism: it builds only in debug, for scripts/mutants");
