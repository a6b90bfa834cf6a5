//! Who may touch which tenant, and running eventstore's own statements as the extension owner.
//!
//! A session is **bound to a tenant** when row-level security applies to its role on
//! `eventstore.events` (the role is neither the owner, a superuser nor BYPASSRLS): its tenant is
//! then the setting `eventstore.tenant`, and every function here refuses any other instance with
//! 42501 — before a lock is taken or a row written. For a bound session, "every instance"
//! (`instance_id` NULL: a global catch-up, await_writers, ...) means its own tenant: the same
//! checkpoint, lock and batch as naming the tenant. Other sessions (an operator's BYPASSRLS
//! role, the owner) see every tenant.
//!
//! Push, catch-up and next_number then run their statements as the owner of `eventstore.events`
//! ([`as_owner`]), so the roles need EXECUTE on the functions and no privilege on the tables:
//! the only way to write an event or a checkpoint is through them, with their locks (G3, G4).
//! Direct reads (`SELECT` by `eventstore_reader`) are filtered by the tables' policies on the
//! same setting (sql/eventstore.sql).
//!
//! On Citus (src/citus.rs) the same two checks also refuse a tenant whose shard is on another
//! node, and a call over every instance.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::checks::truncate;
use crate::citus;
use crate::errors;
use crate::mutants;
use crate::query;

/// The setting that binds a session to a tenant.
pub const TENANT_SETTING: &CStr = c"eventstore.tenant";

/// Which instances the calling role may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Not subject to row-level security: every instance.
    Every,
    /// Bound to this tenant (the value of `eventstore.tenant`).
    Tenant(String),
}

/// The calling role's scope. Raises 42501 when the role is subject to row-level security but
/// `eventstore.tenant` is not set: such a session may touch no instance at all.
pub fn caller_scope() -> Scope {
    let events = query::relation(c"events");
    // SAFETY: events is an existing relation; check_enable_rls only reads catalogs.
    let rls = unsafe { pg_sys::check_enable_rls(events, pg_sys::InvalidOid, true) };
    // RLS_NONE_ENV: the owner, a superuser or a BYPASSRLS role, for whom the policies do not
    // apply; RLS_ENABLED: a role the policies filter (whatever row_security says).
    if rls != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32 {
        return Scope::Every;
    }
    match tenant_setting() {
        Some(tenant) => Scope::Tenant(tenant),
        None => errors::raise(errors::NOT_ALLOWED,
            "this session is not bound to a tenant".into(),
            format!("Role \"{}\" is subject to tenant isolation and eventstore.tenant is not set.",
                current_user()),
            "SET eventstore.tenant (or SET LOCAL, behind a transaction pooler) to the tenant's \
             instance_id; an operator role that must see every tenant needs BYPASSRLS."),
    }
}

impl Scope {
    /// Refuses an instance outside the scope (42501), and on Citus one whose shard is on
    /// another node (ES421, src/citus.rs). `what` names the call for the detail.
    pub fn check(&self, instance_id: &str, what: &str) {
        self.check_tenant(instance_id, what);
        // As the owner: Citus's shard lookup checks privileges on the table.
        as_owner(|| citus::require_local(instance_id, what));
    }

    fn check_tenant(&self, instance_id: &str, what: &str) {
        if let Scope::Tenant(tenant) = self {
            if tenant != instance_id && !mutants::NO_TENANT_CHECK {
                errors::raise(errors::NOT_ALLOWED,
                    format!("instance \"{}\" belongs to another tenant",
                        truncate(instance_id, 80)),
                    format!("This session is bound to tenant \"{}\" (eventstore.tenant); {what} \
                             names instance \"{}\".",
                        truncate(tenant, 80), truncate(instance_id, 80)),
                    "A session may only touch the instance of the tenant it is bound to.");
            }
        }
    }

    /// `instance_id` as the call should use it: checked when given; for a bound session,
    /// "every instance" (None) becomes its tenant.
    pub fn resolve<'a>(&'a self, instance_id: Option<&'a str>, what: &str) -> Option<&'a str> {
        match (self, instance_id) {
            (_, Some(instance_id)) => {
                self.check(instance_id, what);
                Some(instance_id)
            }
            (Scope::Tenant(tenant), None) => {
                as_owner(|| citus::require_local(tenant, what));
                Some(tenant.as_str())
            }
            (Scope::Every, None) => {
                as_owner(|| citus::refuse_global(what));
                None
            }
        }
    }
}

/// `eventstore.tenant`, when set and not empty.
fn tenant_setting() -> Option<String> {
    // SAFETY: GetConfigOption returns NULL or a NUL-terminated string owned by the GUC machinery,
    // copied out below before anything could change it.
    let value = unsafe { pg_sys::GetConfigOption(TENANT_SETTING.as_ptr(), true, false) };
    if value.is_null() {
        return None;
    }
    // SAFETY: as above; not NULL.
    let value = unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned();
    (!value.is_empty()).then_some(value)
}


/// Runs `f` with the current user switched to the owner of `eventstore.events`, as a SECURITY
/// DEFINER function would, and switches back. If `f` raises, the transaction's (or the caller's
/// subtransaction's) abort restores the user, as it does for SECURITY DEFINER.
pub fn as_owner<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: events exists (relation() asserts it); the relcache entry is opened and closed
    // around one read of its owner.
    let owner = unsafe {
        let relation = pg_sys::RelationIdGetRelation(query::relation(c"events"));
        let owner = (*(*relation).rd_rel).relowner;
        pg_sys::RelationClose(relation);
        owner
    };
    let (mut saved_user, mut saved_context) = (pg_sys::InvalidOid, 0);
    // SAFETY: the same switch SECURITY DEFINER makes; PostgreSQL's abort restores it on error.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(owner,
            saved_context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let result = f();
    // SAFETY: restores what was saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// The name of the current user, for messages and as push's default creator.
pub fn current_user() -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd copy of the name of an existing role.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy().into_owned()
}
