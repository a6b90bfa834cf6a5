//! Appending events: `eventstore.push(command[])` and `eventstore.push(jsonb)`.
//!
//! Guarantees: G1 (one INSERT for the whole batch, after every command was checked), G2 (the
//! aggregate's lock is held before its current sequence is read, under a snapshot taken after
//! the wait), G3 (positions drawn from a CACHE 1 sequence only once the writer locks and every
//! aggregate lock of the batch are held), G9 (every bad input is refused before the first lock
//! or write, with a SQLSTATE, message, detail and hint), G14 (a push carrying stored event ids
//! is answered from the store: an exact replay gets the stored rows and writes nothing, anything
//! else is refused with ES422).

use std::collections::HashMap;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::AnyArray;

mod commands;
mod native;

use crate::checks::{require_identifier, truncate};
use crate::citus;
use crate::errors;
use crate::horizon;
use crate::locks;
use crate::positions;
use crate::query::{self, Arg, Snapshot};
use crate::tenancy;
use crate::xact;

use commands::{check_distinct_ids, commands_from_array, commands_from_json, uuid_text, Command, JsonbDatum};

/// One written event, as push returns it (eventstore.pushed).
type Written = (String, String, String, i64, i64, i32, TimestampWithTimeZone, String, Option<pgrx::Uuid>);

/// `eventstore.push(commands eventstore.command[])`.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)] // pgrx reads the result's columns from this signature
fn push_commands(commands: Option<AnyArray>) -> TableIterator<
    'static,
    (
        name!(instance_id, String),
        name!(aggregate_type, String),
        name!(aggregate_id, String),
        name!(sequence, i64),
        name!(position, i64),
        name!(in_tx_order, i32),
        name!(created_at, TimestampWithTimeZone),
        name!(owner, String),
        name!(id, Option<pgrx::Uuid>),
    ),
> {
    let Some(commands) = commands else {
        errors::raise(errors::NULL_VALUE, "commands must not be NULL".into(),
            "push was called with a NULL array.".into(), "Pass an array of eventstore.command.")
    };
    TableIterator::new(append(commands_from_array(commands)))
}

/// `eventstore.push(commands jsonb)`: the same, for drivers that cannot bind composite arrays.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn push_json(commands: Option<JsonbDatum>) -> TableIterator<
    'static,
    (
        name!(instance_id, String),
        name!(aggregate_type, String),
        name!(aggregate_id, String),
        name!(sequence, i64),
        name!(position, i64),
        name!(in_tx_order, i32),
        name!(created_at, TimestampWithTimeZone),
        name!(owner, String),
        name!(id, Option<pgrx::Uuid>),
    ),
> {
    let Some(JsonbDatum(commands)) = commands else {
        errors::raise(errors::NULL_VALUE, "commands must not be NULL".into(),
            "push was called with a NULL jsonb.".into(), "Pass a JSON array of command objects.")
    };
    TableIterator::new(append(commands_from_json(commands)))
}

/// `eventstore.push(instance_id, commands eventstore.command[])`: push for one tenant, the form
/// Citus delegates to the tenant's node by its first argument. A command for another instance
/// is refused (22023) before anything is locked.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn push_tenant_commands(instance_id: Option<&str>, commands: Option<AnyArray>) -> TableIterator<
    'static,
    (
        name!(instance_id, String),
        name!(aggregate_type, String),
        name!(aggregate_id, String),
        name!(sequence, i64),
        name!(position, i64),
        name!(in_tx_order, i32),
        name!(created_at, TimestampWithTimeZone),
        name!(owner, String),
        name!(id, Option<pgrx::Uuid>),
    ),
> {
    let tenant = require_identifier("instance_id", instance_id);
    let Some(commands) = commands else {
        errors::raise(errors::NULL_VALUE, "commands must not be NULL".into(),
            "push was called with a NULL array.".into(), "Pass an array of eventstore.command.")
    };
    TableIterator::new(append(for_tenant(tenant, commands_from_array(commands))))
}

/// `eventstore.push(instance_id, commands jsonb)`: the same with a JSON array of commands.
#[pg_extern(sql = false)]
#[allow(clippy::type_complexity)]
fn push_tenant_json(instance_id: Option<&str>, commands: Option<JsonbDatum>) -> TableIterator<
    'static,
    (
        name!(instance_id, String),
        name!(aggregate_type, String),
        name!(aggregate_id, String),
        name!(sequence, i64),
        name!(position, i64),
        name!(in_tx_order, i32),
        name!(created_at, TimestampWithTimeZone),
        name!(owner, String),
        name!(id, Option<pgrx::Uuid>),
    ),
> {
    let tenant = require_identifier("instance_id", instance_id);
    let Some(JsonbDatum(commands)) = commands else {
        errors::raise(errors::NULL_VALUE, "commands must not be NULL".into(),
            "push was called with a NULL jsonb.".into(), "Pass a JSON array of command objects.")
    };
    TableIterator::new(append(for_tenant(tenant, commands_from_json(commands))))
}

/// The commands of a tenant-first push, each checked to name `tenant` (22023 otherwise).
fn for_tenant(tenant: &str, commands: Vec<Command>) -> Vec<Command> {
    if let Some((n, other)) = commands.iter().enumerate().find(|(_, c)| c.instance_id != tenant) {
        errors::raise(errors::INVALID_VALUE,
            format!("command {} of the batch is for another tenant", n + 1),
            format!("push was called for instance \"{}\"; command {} names instance \"{}\".",
                truncate(tenant, 80), n + 1, truncate(&other.instance_id, 80)),
            "push(instance_id, commands) appends to one tenant: push each tenant's commands in a \
             call of its own.");
    }
    commands
}

// ---------------------------------------------------------------------------------------------
// Appending

/// Locks, numbers and inserts checked commands; returns one row per event.
fn append(commands: Vec<Command>) -> Vec<Written> {
    let scope = tenancy::caller_scope();
    for (n, c) in commands.iter().enumerate() {
        scope.check(&c.instance_id, &format!("command {} of the batch", n + 1));
    }
    check_distinct_ids(&commands);
    // Only pushes that carry ids look them up and insert with ON CONFLICT: the others never
    // touch the id index (its predicate excludes NULL) nor pay for a speculative insertion.
    let carries_ids = commands.iter().any(|c| c.id.is_some());
    if carries_ids && citus::distributed() {
        errors::raise(errors::NOT_SUPPORTED, "event ids are not available on Citus".into(),
            "eventstore's tables are distributed with Citus, where event ids are unique per tenant \
             only, and a retried push is not recognized by them."
                .into(),
            "Push without ids on Citus (README \"Running on Citus\").");
    }
    let default_creator = tenancy::current_user();
    // SAFETY: reads the current transaction's start time; we are inside a transaction.
    let created_at = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    let mut aggregates: Vec<(&str, &str, &str)> = Vec::new();
    let mut aggregate_of: Vec<usize> = Vec::with_capacity(commands.len());
    let mut index: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for c in &commands {
        let key = (c.instance_id.as_str(), c.aggregate_type.as_str(), c.aggregate_id.as_str());
        let next = aggregates.len();
        let i = *index.entry(key).or_insert(next);
        if i == next {
            aggregates.push(key);
        }
        aggregate_of.push(i);
    }
    let instance_ids: Vec<&str> = aggregates.iter().map(|a| a.0).collect();
    let keys = aggregates.iter().map(|(i, t, a)| (*i, locks::aggregate_key(i, t, a))).collect();
    if let Err(locks::PushLockRefusal::TooManyAggregates(taken)) = locks::lock_for_push(&instance_ids, keys) {
        errors::raise(errors::TOO_LARGE,
            "too many aggregates locked in one transaction".into(),
            format!("This transaction already locked {taken} aggregates one by one; this push needs \
                     {} more, over the limit of {}.", aggregates.len(),
                locks::MAX_AGGREGATE_LOCKS_PER_TRANSACTION),
            "Push events for many aggregates in one call as the transaction's first write to \
             their instance (a push of more than 64 aggregates locks the instance once), or \
             commit in smaller transactions.");
    }
    xact::writing(&instance_ids);

    let (written, wrote) = tenancy::as_owner(|| query::with_spi(|| {
        // On Citus, a tenant moved here may have positions above this node's sequence.
        citus::raise_positions(&instance_ids);
        // G14: with the aggregates locked, any earlier push to them has ended, so the stored
        // ids are final: a replay is answered from the store before anything is numbered.
        if carries_ids {
            if let Some(stored) = replay(&commands) {
                return (stored, false);
            }
        }
        let mut current = current_sequences(&aggregates);
        let mut rows = Vec::with_capacity(commands.len());
        for (n, c) in commands.iter().enumerate() {
            let (sequence, owner) = &mut current[aggregate_of[n]];
            if let Some(expected) = c.expected_sequence {
                if expected != *sequence {
                    errors::raise_own(
                        errors::VERSION_CONFLICT,
                        format!("aggregate {}/{}/{} is not at the expected sequence",
                            c.instance_id, c.aggregate_type, c.aggregate_id),
                        errors::version_conflict_detail(n + 1,
                            (&c.instance_id, &c.aggregate_type, &c.aggregate_id), expected, *sequence),
                        "Reload the aggregate and retry the command.",
                    );
                }
            }
            *sequence += 1;
            let row_owner = c.owner.clone().or_else(|| owner.clone())
                .unwrap_or_else(|| c.instance_id.clone());
            *owner = Some(row_owner.clone());
            rows.push(PendingRow { command: c, sequence: *sequence, owner: row_owner, position: 0 });
        }
        // G3: every lock of the batch is held; draw positions in command order.
        let sequence = positions::sequence_locked_for_drawing();
        let scope = horizon::Scope::of(&instance_ids);
        for row in &mut rows {
            row.position = next_position(sequence, scope);
        }
        insert(&rows, created_at, &default_creator, carries_ids);
        (rows.iter().enumerate().map(|(n, r)| (
            r.command.instance_id.clone(), r.command.aggregate_type.clone(),
            r.command.aggregate_id.clone(), r.sequence, r.position, n as i32,
            timestamptz(created_at), r.owner.clone(), r.command.id.map(pgrx::Uuid::from_bytes),
        )).collect::<Vec<Written>>(), true)
    }));
    if wrote {
        xact::pushed(&instance_ids, written.iter().map(|w| w.4).max().unwrap_or(0));
    }
    written
}

// ---------------------------------------------------------------------------------------------
// Replays (G14)

/// Each command's stored event by id (NULLs when none), and the first field that differs from
/// the command ('' when none). One index look-up per command, whatever the statistics when the
/// plan was cached: a plain join, planned while few ids were stored, read the whole partial
/// index at every push (`tests/ids.rs::a_push_with_ids_reads_only_its_own_ids_...`).
const STORED_BY_ID: &str = "\
SELECT c.n, e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position, e.in_tx_order,
       e.created_at, e.owner, e.id,
       CASE WHEN e.instance_id IS DISTINCT FROM c.i THEN 'instance_id'
            WHEN e.aggregate_type IS DISTINCT FROM c.t THEN 'aggregate_type'
            WHEN e.aggregate_id IS DISTINCT FROM c.a THEN 'aggregate_id'
            WHEN e.event_type IS DISTINCT FROM c.e THEN 'event_type'
            WHEN e.revision IS DISTINCT FROM c.r THEN 'revision'
            WHEN e.payload IS DISTINCT FROM c.p THEN 'payload'
            WHEN e.metadata IS DISTINCT FROM c.m THEN 'metadata'
            ELSE '' END
  FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[],
              $7::jsonb[], $8::jsonb[]) WITH ORDINALITY AS c(id, i, t, a, e, r, p, m, n)
  LEFT JOIN LATERAL (SELECT * FROM eventstore.events e WHERE e.id = c.id LIMIT 1) e ON true
 ORDER BY c.n";

const REPLAY_HINT: &str = "Retry a push only with exactly the commands and ids it was first sent \
                           with; give every new event a new id.";

/// A push carrying at least one id: `None` when none of its ids is stored (a new push); the
/// stored rows, exactly as the first push returned them, when it repeats an earlier push (every
/// command carries an id, every id is stored, each stored event has the command's instance,
/// aggregate, event type, revision, payload and metadata, in command order); ES422 otherwise.
/// Read with what is committed now: the caller holds the aggregates' locks.
fn replay(commands: &[Command]) -> Option<Vec<Written>> {
    let texts = |f: &dyn Fn(&Command) -> &str| -> Vec<&str> { commands.iter().map(f).collect() };
    let rows = query::run(STORED_BY_ID, &[
        Arg::new(commands.iter().map(|c| c.id.map(pgrx::Uuid::from_bytes)).collect::<Vec<_>>()),
        Arg::new(texts(&|c| &c.instance_id)),
        Arg::new(texts(&|c| &c.aggregate_type)),
        Arg::new(texts(&|c| &c.aggregate_id)),
        Arg::new(texts(&|c| &c.event_type)),
        Arg::new(commands.iter().map(|c| c.revision).collect::<Vec<i16>>()),
        Arg::raw(pg_sys::JSONBARRAYOID, Some(jsonb_array(commands.iter().map(|c| c.payload)))),
        Arg::raw(pg_sys::JSONBARRAYOID, Some(jsonb_array(commands.iter().map(|c| c.metadata)))),
    ], Snapshot::CommittedNow);
    let stored = |n: usize| rows.get::<pgrx::Uuid>(n, 10).is_some();
    let first_stored = (0..commands.len()).find(|&n| stored(n))?;
    let reused = uuid_text(&commands[first_stored].id.expect("a stored event was found by its id"));
    let partial = |n: usize, what: String| -> ! {
        errors::raise_own(errors::ID_ALREADY_USED,
            format!("event id {reused} was already used by an earlier push"),
            format!("Command {} carries id {reused}, which is stored, and command {} {what}: a \
                     retried push must repeat the earlier push exactly.", first_stored + 1, n + 1),
            REPLAY_HINT)
    };
    let mut last_position = 0;
    for (n, c) in commands.iter().enumerate() {
        let Some(id) = c.id else { partial(n, "carries no id".into()) };
        let id = uuid_text(&id);
        if !stored(n) {
            partial(n, format!("carries id {id}, which is not"));
        }
        let differs = rows.get::<String>(n, 11).unwrap_or_default();
        if !differs.is_empty() {
            errors::raise_own(errors::ID_ALREADY_USED,
                format!("event id {id} was already used for another event"),
                format!("Command {} carries id {id}; the stored event with this id has another {differs}.", n + 1),
                REPLAY_HINT);
        }
        let position = rows.get::<i64>(n, 6).expect("a stored event has a position");
        if position <= last_position {
            errors::raise_own(errors::ID_ALREADY_USED,
                format!("event id {id} was already used in another order"),
                format!("Command {} carries id {id}, whose event was stored before the event of \
                         command {}: a retried push must repeat the earlier push in its order.", n + 1, n),
                REPLAY_HINT);
        }
        last_position = position;
    }
    Some((0..commands.len()).map(|n| (
        rows.get::<String>(n, 2).expect("stored"), rows.get::<String>(n, 3).expect("stored"),
        rows.get::<String>(n, 4).expect("stored"), rows.get::<i64>(n, 5).expect("stored"),
        rows.get::<i64>(n, 6).expect("stored"), rows.get::<i32>(n, 7).expect("stored"),
        rows.get::<TimestampWithTimeZone>(n, 8).expect("stored"), rows.get::<String>(n, 9).expect("stored"),
        rows.get::<pgrx::Uuid>(n, 10),
    )).collect())
}

/// The last event of one aggregate (Citus: routed to the tenant's shard by its instance).
const LAST_EVENT_OF_ONE: &str = "\
SELECT sequence, owner FROM eventstore.events
 WHERE instance_id = $1 AND aggregate_type = $2 AND aggregate_id = $3
 ORDER BY sequence DESC LIMIT 1";

struct PendingRow<'a> {
    command: &'a Command,
    sequence: i64,
    owner: String,
    position: i64,
}

/// Each aggregate's current sequence (0 when new) and owner, read after its lock is held, with
/// what is committed now (trap 4): the last entry of the aggregate's range in the primary key,
/// found by one backward index scan per aggregate, natively (no statement, no executor). Read
/// under SnapshotSelf, not an MVCC snapshot, so under SERIALIZABLE it takes no predicate locks:
/// the aggregate's lock already orders its writers, and predicate locks on the index pages would
/// make pushes to unrelated aggregates fail with 40001.
fn current_sequences(aggregates: &[(&str, &str, &str)]) -> Vec<(i64, Option<String>)> {
    let mut current = vec![(0i64, None); aggregates.len()];
    // On Citus one statement per aggregate, each routed to the tenant's shard: the table here
    // may be only the distributed table's empty shell, which a native scan would read.
    if citus::distributed() {
        for (n, (instance_id, aggregate_type, aggregate_id)) in aggregates.iter().enumerate() {
            let rows = query::run(LAST_EVENT_OF_ONE,
                &[Arg::new(*instance_id), Arg::new(*aggregate_type), Arg::new(*aggregate_id)],
                Snapshot::CommittedNow);
            if rows.len() == 1 {
                current[n] = (rows.get::<i64>(0, 1).unwrap_or(0), rows.get::<String>(0, 2));
            }
        }
        return current;
    }
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let events = query::relation(c"events");
    // SAFETY: the relations exist (relation() asserted it) and stay open and locked for the
    // scan; the scan keys are built for the primary key's first three columns (text, compared
    // with texteq under the index's own collations) from text datums alive during the scan; the
    // slot fits the heap; everything opened here is closed here (an error ends the transaction,
    // which releases it all).
    unsafe {
        let heap = pg_sys::table_open(events, lock);
        let index = pg_sys::index_open(query::relation(c"events_pkey"), lock);
        let (sequence_column, owner_column) = (
            pg_sys::get_attnum(events, c"sequence".as_ptr()),
            pg_sys::get_attnum(events, c"owner".as_ptr()),
        );
        // The mutant reads with the statement's snapshot, taken before the lock wait (trap 4).
        let snapshot = if crate::mutants::STALE_SNAPSHOT {
            pg_sys::GetActiveSnapshot()
        } else {
            &raw mut pg_sys::SnapshotSelfData
        };
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let scan = crate::pg::index_beginscan(heap, index, snapshot, 3);
        let mut keys: [pg_sys::ScanKeyData; 3] = std::mem::zeroed();
        for (n, (instance_id, aggregate_type, aggregate_id)) in aggregates.iter().enumerate() {
            for (column, name) in [*instance_id, *aggregate_type, *aggregate_id].into_iter().enumerate() {
                pg_sys::ScanKeyEntryInitialize(&mut keys[column], 0, column as i16 + 1,
                    pg_sys::BTEqualStrategyNumber as u16, pg_sys::InvalidOid,
                    *(*index).rd_indcollation.add(column), pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                    name.into_datum().expect("text is not NULL"));
            }
            pg_sys::index_rescan(scan, keys.as_mut_ptr(), 3, std::ptr::null_mut(), 0);
            if pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::BackwardScanDirection, slot) {
                let mut is_null = false;
                let sequence = pg_sys::slot_getattr(slot, sequence_column.into(), &mut is_null);
                let sequence = if is_null { 0 } else { sequence.value() as i64 };
                let owner = pg_sys::slot_getattr(slot, owner_column.into(), &mut is_null);
                current[n] = (sequence, String::from_datum(owner, is_null));
            }
        }
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::table_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
    }
    current
}

const INSERT_ONE: &str = "\
INSERT INTO eventstore.events (instance_id, aggregate_type, aggregate_id, sequence, event_type,
       revision, payload, creator, owner, created_at, position, in_tx_order)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0)";

const INSERT_MANY: &str = "\
INSERT INTO eventstore.events (instance_id, aggregate_type, aggregate_id, sequence, event_type,
       revision, payload, creator, owner, created_at, position, in_tx_order)
SELECT i, t, a, s, e, r, p, c, o, $10, pos, (n - 1)::int
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::smallint[],
              $7::jsonb[], $8::text[], $9::text[], $11::bigint[]) WITH ORDINALITY
       AS b(i, t, a, s, e, r, p, c, o, pos, n)";

// The same with the event id and metadata ($12, $13): for pushes that carry either.
macro_rules! insert_one_extended { () => { "\
INSERT INTO eventstore.events (instance_id, aggregate_type, aggregate_id, sequence, event_type,
       revision, payload, creator, owner, created_at, position, in_tx_order, id, metadata)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12, $13)" } }

macro_rules! insert_many_extended { () => { "\
INSERT INTO eventstore.events (instance_id, aggregate_type, aggregate_id, sequence, event_type,
       revision, payload, creator, owner, created_at, position, in_tx_order, id, metadata)
SELECT i, t, a, s, e, r, p, c, o, $10, pos, (n - 1)::int, id, m
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::smallint[],
              $7::jsonb[], $8::text[], $9::text[], $11::bigint[], $12::uuid[], $13::jsonb[])
       WITH ORDINALITY AS b(i, t, a, s, e, r, p, c, o, pos, id, m, n)" } }

// With ids: an id a concurrent push stored meanwhile (in flight when `replay` looked, for
// other aggregates) is skipped instead of raising a unique violation, and `insert` refuses the
// push with ES422. PostgreSQL's speculative insertion waits for that push to end first.
macro_rules! on_conflict { () => { "\n ON CONFLICT (id) WHERE id IS NOT NULL DO NOTHING RETURNING id" } }

const INSERT_ONE_EXTENDED: &str = insert_one_extended!();
const INSERT_MANY_EXTENDED: &str = insert_many_extended!();
const INSERT_ONE_WITH_ID: &str = concat!(insert_one_extended!(), on_conflict!());
const INSERT_MANY_WITH_IDS: &str = concat!(insert_many_extended!(), on_conflict!());

/// The whole batch in one go (G1): natively when the push carries no event id and the table
/// allows it (src/push/native.rs), else one set-based INSERT. Pushes without ids and metadata
/// use the statements that never mention them.
fn insert(rows: &[PendingRow], created_at: pg_sys::TimestampTz, default_creator: &str, carries_ids: bool) {
    // (Not on Citus: there the table may be the distributed table's empty shell.)
    if !carries_ids && !citus::distributed() && native::insert(rows, created_at, default_creator) {
        return;
    }
    let creator = |r: &PendingRow| r.command.creator.clone().unwrap_or_else(|| default_creator.to_string());
    let created_at = Arg::new(timestamptz(created_at));
    let extended = carries_ids || rows.iter().any(|r| r.command.metadata.is_some());
    let inserted = if let [row] = rows {
        let c = row.command;
        let mut args = vec![
            Arg::new(c.instance_id.as_str()), Arg::new(c.aggregate_type.as_str()),
            Arg::new(c.aggregate_id.as_str()), Arg::new(row.sequence), Arg::new(c.event_type.as_str()),
            Arg::new(c.revision), Arg::raw(pg_sys::JSONBOID, c.payload), Arg::new(creator(row)),
            Arg::new(row.owner.as_str()), created_at, Arg::new(row.position),
        ];
        if !extended {
            query::run(INSERT_ONE, &args, Snapshot::Statement);
            return;
        }
        args.push(Arg::new(c.id.map(pgrx::Uuid::from_bytes)));
        args.push(Arg::raw(pg_sys::JSONBOID, c.metadata));
        query::run(if carries_ids { INSERT_ONE_WITH_ID } else { INSERT_ONE_EXTENDED }, &args,
            Snapshot::Statement)
    } else {
        let texts = |f: &dyn Fn(&PendingRow) -> String| -> Vec<String> { rows.iter().map(f).collect() };
        let mut args = vec![
            Arg::new(texts(&|r| r.command.instance_id.clone())),
            Arg::new(texts(&|r| r.command.aggregate_type.clone())),
            Arg::new(texts(&|r| r.command.aggregate_id.clone())),
            Arg::new(rows.iter().map(|r| r.sequence).collect::<Vec<i64>>()),
            Arg::new(texts(&|r| r.command.event_type.clone())),
            Arg::new(rows.iter().map(|r| r.command.revision).collect::<Vec<i16>>()),
            Arg::raw(pg_sys::JSONBARRAYOID, Some(jsonb_array(rows.iter().map(|r| r.command.payload)))),
            Arg::new(texts(&creator)),
            Arg::new(texts(&|r| r.owner.clone())),
            created_at,
            Arg::new(rows.iter().map(|r| r.position).collect::<Vec<i64>>()),
        ];
        if !extended {
            query::run(INSERT_MANY, &args, Snapshot::Statement);
            return;
        }
        args.push(Arg::new(rows.iter().map(|r| r.command.id.map(pgrx::Uuid::from_bytes)).collect::<Vec<_>>()));
        args.push(Arg::raw(pg_sys::JSONBARRAYOID, Some(jsonb_array(rows.iter().map(|r| r.command.metadata)))));
        query::run(if carries_ids { INSERT_MANY_WITH_IDS } else { INSERT_MANY_EXTENDED }, &args,
            Snapshot::Statement)
    };
    if carries_ids && inserted.len() < rows.len() {
        refuse_ids_stored_meanwhile(rows, &inserted);
    }
}

/// ES422 for the first command whose id a concurrent push stored while this one waited.
fn refuse_ids_stored_meanwhile(rows: &[PendingRow], inserted: &query::Rows) -> ! {
    let written: std::collections::HashSet<Option<[u8; 16]>> =
        (0..inserted.len()).map(|r| inserted.get::<pgrx::Uuid>(r, 1).map(|u| *u.as_bytes())).collect();
    let (n, id) = rows.iter().enumerate()
        .find_map(|(n, r)| r.command.id.filter(|id| !written.contains(&Some(*id))).map(|id| (n, id)))
        .expect("a row was skipped, so one id was not written");
    let id = uuid_text(&id);
    errors::raise_own(errors::ID_ALREADY_USED,
        format!("event id {id} was already used for another event"),
        format!("Command {} carries id {id}, which a concurrent push stored for another event \
                 while this push waited.", n + 1),
        REPLAY_HINT)
}

/// A jsonb[] of raw jsonb datums (NULL elements allowed).
fn jsonb_array(payloads: impl Iterator<Item = Option<pg_sys::Datum>>) -> pg_sys::Datum {
    let (mut values, mut nulls): (Vec<pg_sys::Datum>, Vec<bool>) =
        payloads.map(|p| (p.unwrap_or(pg_sys::Datum::from(0usize)), p.is_none())).unzip();
    let mut dims = [values.len() as i32];
    let mut lower_bounds = [1];
    // SAFETY: values and nulls have one entry per element, dims and lower bounds describe one
    // dimension of that length, and JSONBOID's storage is varlena, not by value, int-aligned.
    unsafe {
        let array = pg_sys::construct_md_array(
            values.as_mut_ptr(), nulls.as_mut_ptr(), 1, dims.as_mut_ptr(), lower_bounds.as_mut_ptr(),
            pg_sys::JSONBOID, -1, false, pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        pg_sys::Datum::from(array)
    }
}

fn timestamptz(t: pg_sys::TimestampTz) -> TimestampWithTimeZone {
    // SAFETY: a TimestampTz is the datum of a timestamptz.
    unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) }
        .expect("a timestamp is not NULL")
}


/// Draws the next position for a write to `scope`, registered with the horizon. Call only with
/// the writer and aggregate locks held (G3).
fn next_position(sequence: pg_sys::Oid, scope: horizon::Scope) -> i64 {
    horizon::draw(scope, || positions::draw_from(sequence))
}

/// `eventstore.lock_writer(instance_id)`: the shared writer lock push takes, for applications
/// that write related rows and want the same protection from catch-up (G4). With the horizon
/// registry active it also registers the transaction, so horizons stay below what it writes.
#[pg_extern(sql = false)]
fn lock_writer(instance_id: Option<&str>) {
    let instance_id = require_identifier("instance_id", instance_id);
    tenancy::caller_scope().check(instance_id, "lock_writer");
    locks::lock_writers([instance_id]);
    xact::writing(&[instance_id]);
    // The last position is read as the owner: the caller has no privilege on the sequence.
    horizon::register_writer(horizon::Scope::instance(instance_id),
        || tenancy::as_owner(|| query::with_spi(positions::last_position)));
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn positions_are_drawn_in_command_order() {
        let increasing = Spi::get_one::<bool>(
            "SELECT bool_and(position > prev) FROM (
               SELECT position, lag(position, 1, 0::bigint) OVER (ORDER BY in_tx_order) AS prev
                 FROM eventstore.push(ARRAY(SELECT eventstore.command('t', 'a', (i % 3)::text, 'e')
                                              FROM generate_series(1, 50) i))) p",
        );
        assert_eq!(increasing, Ok(Some(true)));
    }
}
