//! What changes when eventstore's tables are distributed with Citus (`eventstore.distribute()`,
//! README "Running on Citus").
//!
//! Advisory locks, the position sequence and the horizon registry are node-local (DESIGN.md
//! trap 17), so every guarantee that rests on them holds only if each call for a tenant runs on
//! the node that holds the tenant's shard. Citus sends a tenant function's call there
//! (`create_distributed_function` by `instance_id`); this module makes the rest hold:
//! - **the locality guard** ([`require_local`]): a call for a tenant whose shard is not on this
//!   node is refused (ES421) before any lock or write, so a call that was not delegated fails
//!   loudly instead of skipping events (G4) or running a projection twice at once (G6);
//! - **no global scope** ([`refuse_global`]): positions are drawn per node, so no cluster-wide
//!   order exists; a global call (instance NULL) is refused (0A000);
//! - **positions per tenant across shard moves** ([`raise_positions`]): a moved tenant arrives
//!   on a node whose sequence may be below its events and checkpoints; push, under the tenant's
//!   writer lock and before drawing, raises the local sequence past both, so the tenant's
//!   positions keep growing (G3) and no new event lands at or below a checkpoint (G4).
//!
//! Without Citus, or before `distribute()`, each check costs one catalog lookup and nothing
//! changes. What was found is kept until the transaction ends ([`transaction_ended`]).

use std::cell::RefCell;

use pgrx::pg_sys;

use crate::checks::truncate;
use crate::errors;
use crate::positions;
use crate::query::{self, Arg, Snapshot};

/// What this transaction found out: whether the events are distributed, and the tenants whose
/// shard was found local.
#[derive(Default)]
struct Known {
    distributed: Option<bool>,
    local: Vec<String>,
}

thread_local! {
    static KNOWN: RefCell<Known> = RefCell::new(Known::default());
}

/// From the transaction callback: a shard may move between transactions.
pub fn transaction_ended() {
    KNOWN.take();
}

const DISTRIBUTED: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition \
     WHERE logicalrelid = $1)";

/// Whether `eventstore.events` is a Citus distributed table in this database.
pub fn distributed() -> bool {
    if let Some(known) = KNOWN.with_borrow(|k| k.distributed) {
        return known;
    }
    // SAFETY: a catalog lookup by name; missing_ok = true returns InvalidOid.
    let citus = unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) } != pg_sys::InvalidOid;
    let distributed = citus && query::with_spi(|| {
        query::run(DISTRIBUTED, &[Arg::new(query::relation(c"events"))], Snapshot::Statement)
            .get::<bool>(0, 1).unwrap_or(false)
    });
    KNOWN.with_borrow_mut(|k| k.distributed = Some(distributed));
    distributed
}

const SHARD_IS_LOCAL: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_placement p \
     WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column('eventstore.events', $1) \
       AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group))";

/// The locality guard: on Citus, refuses (ES421) a call for `instance_id` when the tenant's
/// shard is not on this node. `what` names the call for the message.
pub fn require_local(instance_id: &str, what: &str) {
    if !distributed() || KNOWN.with_borrow(|k| k.local.iter().any(|l| l == instance_id)) {
        return;
    }
    let local = query::with_spi(|| {
        query::run(SHARD_IS_LOCAL, &[Arg::new(instance_id)], Snapshot::Statement)
            .get::<bool>(0, 1).unwrap_or(false)
    });
    if !local {
        errors::raise_own(errors::NOT_LOCAL,
            format!("tenant \"{}\" is not on this node", truncate(instance_id, 80)),
            format!("eventstore's tables are distributed with Citus and {what} ran on a node that \
                     does not hold tenant \"{}\"'s shard: its locks and positions would not be \
                     the tenant's.", truncate(instance_id, 80)),
            "Call the tenant functions (push(instance_id, commands), tenant_catchup, \
             tenant_lock_projection, tenant_await_writers, tenant_wait_for_events, next_number) \
             through the coordinator as SELECT ... FROM f(...) with a constant instance_id, so \
             that Citus delegates them to the tenant's node (README \"Running on Citus\").");
    }
    KNOWN.with_borrow_mut(|k| k.local.push(instance_id.to_string()));
}

/// On Citus, refuses (0A000) a call over every instance: positions are drawn per node, so
/// there is no cluster-wide order to hand out.
pub fn refuse_global(what: &str) {
    if distributed() {
        errors::raise(errors::NOT_SUPPORTED,
            format!("{what} over every instance is not available on Citus"),
            "eventstore's tables are distributed with Citus: each node draws its own positions, \
             so events have an order within each tenant but none across tenants."
                .into(),
            "Run a global projection as one projection per tenant (tenant_catchup for each \
             tenant, with the tenants listed by the application) (README \"Running on Citus\").");
    }
}

const TENANT_HIGHEST: &str = "SELECT greatest(\
     (SELECT max(position) FROM eventstore.events WHERE instance_id = $1), \
     (SELECT max(checkpoint) FROM eventstore.projection_states WHERE instance_id = $1))";
const RAISE_SEQUENCE: &str = "SELECT pg_catalog.setval('eventstore.position_seq', $1)";

/// On Citus, called by push with the tenant's writer lock held, before the first position is
/// drawn: raises this node's sequence past the tenant's highest position and checkpoint, so
/// that a tenant moved here from a node whose sequence was ahead keeps increasing positions.
/// The sequence is locked against every drawer while it is raised (a self-conflicting lock that
/// nextval's RowExclusiveLock waits for), so it never moves back. Runs as the owner, inside an
/// SPI connection.
pub fn raise_positions(instance_ids: &[&str]) {
    if !distributed() {
        return;
    }
    let tenants: std::collections::BTreeSet<&str> = instance_ids.iter().copied().collect();
    let highest = tenants.into_iter()
        .filter_map(|i| query::run(TENANT_HIGHEST, &[Arg::new(i)], Snapshot::Latest).get::<i64>(0, 1))
        .max();
    let Some(highest) = highest else { return };
    if positions::last_position() >= highest {
        return;
    }
    let sequence = query::relation(c"position_seq");
    // SAFETY: a plain lock request on an existing relation, inside a transaction.
    unsafe { pg_sys::LockRelationOid(sequence, pg_sys::ShareRowExclusiveLock as pg_sys::LOCKMODE) };
    if positions::last_position() < highest {
        query::run(RAISE_SEQUENCE, &[Arg::new(highest)], Snapshot::Statement);
    }
}
