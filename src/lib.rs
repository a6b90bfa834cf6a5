//! eventstore: event sourcing inside PostgreSQL.
//!
//! Wiring only. The schema users see is `sql/eventstore.sql`; each module below starts with
//! the guarantees (DESIGN.md G1–G10) it keeps.

use pgrx::prelude::*;

mod catchup;
mod counter;
mod errors;
mod horizon;
mod locks;
mod push;
mod query;
mod tenancy;
mod wakeup;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/eventstore.sql", name = "schema", bootstrap);

/// Runs once per process, when PostgreSQL loads the library.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    wakeup::define_settings();
    horizon::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
