//! `eventstore.next_number(scope, tenant)`: gapless numbers for humans (invoice 1, 2, 3 per
//! tenant).
//!
//! The counter's lock is taken first and held until the transaction ends, so callers of one
//! counter serialize; the value is then read and raised under a snapshot taken after the wait
//! (trap 4), so the previous holder's commit (or rollback) is seen under any isolation level and
//! no serialization error reaches the caller. A rolled-back number is handed out again; among
//! committed numbers there is no gap and no duplicate. One statement, no subtransaction (G8),
//! nothing that fails on valid input (trap 10).
//!
//! A session bound to a tenant (src/tenancy.rs) draws only from its own tenant's counters; its
//! default tenant '' means its own tenant.

use pgrx::prelude::*;

use crate::errors;
use crate::locks;
use crate::checks::require_identifier;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy::{self, Scope};

const NEXT: &str = "\
INSERT INTO eventstore.counters AS c (scope, tenant, value) VALUES ($1, $2, 1)
ON CONFLICT (scope, tenant) DO UPDATE SET value = c.value + 1
RETURNING value";

#[pg_extern(sql = false)]
fn next_number(scope: Option<&str>, tenant: Option<&str>) -> i64 {
    let scope = require_identifier("scope", scope);
    let Some(tenant) = tenant else {
        errors::raise(errors::NULL_VALUE, "tenant must not be NULL".into(), "tenant is NULL.".into(),
            "Use '' (the default) for a counter that belongs to no tenant.")
    };
    let caller = tenancy::caller_scope();
    let tenant = match (&caller, tenant) {
        (Scope::Tenant(own), "") => own.as_str(),
        (_, "") => {
            tenancy::as_owner(|| crate::citus::require_local("", "next_number"));
            ""
        }
        (_, tenant) => {
            let tenant = require_identifier("tenant", Some(tenant));
            caller.check(tenant, "next_number");
            tenant
        }
    };
    locks::lock_counter(tenant, scope);
    tenancy::as_owner(|| query::with_spi(|| {
        query::run(NEXT, &[Arg::new(scope), Arg::new(tenant)], Snapshot::Latest)
            .get::<i64>(0, 1).expect("RETURNING value is not NULL")
    }))
}
