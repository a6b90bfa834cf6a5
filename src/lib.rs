//! eventstore: event sourcing inside PostgreSQL.
//!
//! Wiring only. The schema users see is `sql/eventstore.sql`; each module below starts with
//! the guarantees (DESIGN.md, G1–G15) it keeps. Modules are listed from the SQL entry points
//! down; each uses only modules below it.
#![warn(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

// The SQL entry points, each beside the work it starts.
mod catchup; // projection_catchup, lock_projection
mod counter; // next_number
mod push; // push (both forms), lock_writer
mod read; // read_aggregate, aggregate_sequence
mod xact; // the transaction's end: horizon registration cleared, then NOTIFY and wake-ups
mod wakeup; // wait_for_events, NOTIFY

// The mechanisms they share.
mod horizon; // await_writers, horizon_mode; floors, the barrier and the registry
mod locks; // lock keys and the lock manager
mod tenancy; // who is calling, and on whose behalf statements run
mod citus; // on Citus: the locality guard, no global scope, positions across shard moves
mod positions; // the position sequence

// The ground floor.
mod checks; // input checks
mod errors; // every SQLSTATE
mod query; // statements through SPI, under a chosen snapshot
mod mutants; // the switches scripts/mutants builds with
mod pg; // what differs between PostgreSQL versions

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/eventstore.sql", name = "schema", bootstrap);

/// Runs once per process, when PostgreSQL loads the library.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    wakeup::define_settings();
    horizon::define_settings();
    horizon::init();
    xact::init();
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
