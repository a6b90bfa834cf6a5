//! Appending events: `eventstore.push(command[])` and `eventstore.push(jsonb)`.
//!
//! Guarantees: G1 (one INSERT for the whole batch, after every command was checked), G2 (the
//! aggregate's lock is held before its current sequence is read, under a snapshot taken after
//! the wait), G3 (positions drawn from a CACHE 1 sequence only once the writer locks and every
//! aggregate lock of the batch are held), G9 (every bad input is refused before the first lock
//! or write, with a SQLSTATE, message, detail and hint).

use std::collections::HashMap;
use std::ffi::CStr;

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::AnyArray;

use crate::errors;
use crate::horizon;
use crate::locks;
use crate::tenancy;
use crate::wakeup;
use crate::query::{self, Arg, Snapshot};

/// Most commands one push accepts.
pub const MAX_BATCH: usize = 10_000;
/// Longest identifier (instance, aggregate type and id, event type, creator, owner), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 512;
/// Largest payload, in bytes of its jsonb form.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// One command, checked.
struct Command {
    instance_id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    revision: i16,
    payload: Option<pg_sys::Datum>,
    creator: Option<String>,
    owner: Option<String>,
    expected_sequence: Option<i64>,
}

/// One written event, as push returns it.
type Written = (String, String, String, i64, i64, i32, TimestampWithTimeZone, String);

/// `eventstore.push(commands eventstore.command[])`.
#[pg_extern(sql = false)]
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
    ),
> {
    let Some(JsonbDatum(commands)) = commands else {
        errors::raise(errors::NULL_VALUE, "commands must not be NULL".into(),
            "push was called with a NULL jsonb.".into(), "Pass a JSON array of command objects.")
    };
    TableIterator::new(append(commands_from_json(commands)))
}

// ---------------------------------------------------------------------------------------------
// Appending

/// Locks, numbers and inserts checked commands; returns one row per event.
fn append(commands: Vec<Command>) -> Vec<Written> {
    let scope = tenancy::caller_scope();
    for (n, c) in commands.iter().enumerate() {
        scope.check(&c.instance_id, &format!("command {} of the batch", n + 1));
    }
    let default_creator = current_user();
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
    locks::lock_for_push(&instance_ids,
        aggregates.iter().map(|(i, t, a)| locks::aggregate_key(i, t, a)).collect());

    let written = tenancy::as_owner(|| query::with_spi(|| {
        let mut current = current_sequences(&aggregates);
        let mut rows = Vec::with_capacity(commands.len());
        for (n, c) in commands.iter().enumerate() {
            let (sequence, owner) = &mut current[aggregate_of[n]];
            if let Some(expected) = c.expected_sequence {
                if expected != *sequence {
                    errors::raise(
                        errors::SEQUENCE_MISMATCH,
                        format!("aggregate {}/{}/{} is not at the expected sequence",
                            c.instance_id, c.aggregate_type, c.aggregate_id),
                        format!("Command {} expected sequence {expected}, the aggregate is at {}.",
                            n + 1, *sequence),
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
        let sequence_oid = query::relation(c"position_seq");
        let scope = horizon::Scope::of(&instance_ids);
        // The sequence's lock (nextval's) first: a position may be drawn under the horizon
        // registry's LWLock, where nextval must never wait for a heavyweight lock.
        unsafe { pg_sys::LockRelationOid(sequence_oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE) };
        for row in &mut rows {
            row.position = next_position(sequence_oid, scope);
        }
        insert(&rows, created_at, &default_creator);
        rows.iter().enumerate().map(|(n, r)| (
            r.command.instance_id.clone(), r.command.aggregate_type.clone(),
            r.command.aggregate_id.clone(), r.sequence, r.position, n as i32,
            timestamptz(created_at), r.owner.clone(),
        )).collect::<Vec<Written>>()
    }));
    wakeup::pushed(&instance_ids, written.iter().map(|w| w.4).max().unwrap_or(0));
    written
}

struct PendingRow<'a> {
    command: &'a Command,
    sequence: i64,
    owner: String,
    position: i64,
}

const LAST_EVENT_OF_ONE: &str = "\
SELECT sequence, owner FROM eventstore.events
 WHERE instance_id = $1 AND aggregate_type = $2 AND aggregate_id = $3
 ORDER BY sequence DESC LIMIT 1";

const LAST_EVENT_OF_MANY: &str = "\
SELECT a.ord, e.sequence, e.owner
  FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY
       AS a(instance_id, aggregate_type, aggregate_id, ord)
 CROSS JOIN LATERAL (
       SELECT sequence, owner FROM eventstore.events e
        WHERE e.instance_id = a.instance_id AND e.aggregate_type = a.aggregate_type
          AND e.aggregate_id = a.aggregate_id
        ORDER BY sequence DESC LIMIT 1) e";

/// Each aggregate's current sequence (0 when new) and owner, read after its lock is held,
/// under a snapshot taken after the wait (trap 4).
fn current_sequences(aggregates: &[(&str, &str, &str)]) -> Vec<(i64, Option<String>)> {
    let mut current = vec![(0i64, None); aggregates.len()];
    if let [(instance_id, aggregate_type, aggregate_id)] = aggregates {
        let rows = query::run(LAST_EVENT_OF_ONE,
            &[Arg::new(*instance_id), Arg::new(*aggregate_type), Arg::new(*aggregate_id)],
            Snapshot::Latest);
        if rows.len() == 1 {
            current[0] = (rows.get::<i64>(0, 1).unwrap_or(0), rows.get::<String>(0, 2));
        }
        return current;
    }
    let instance_ids: Vec<&str> = aggregates.iter().map(|a| a.0).collect();
    let aggregate_types: Vec<&str> = aggregates.iter().map(|a| a.1).collect();
    let aggregate_ids: Vec<&str> = aggregates.iter().map(|a| a.2).collect();
    let rows = query::run(LAST_EVENT_OF_MANY,
        &[Arg::new(instance_ids), Arg::new(aggregate_types), Arg::new(aggregate_ids)],
        Snapshot::Latest);
    for r in 0..rows.len() {
        let ord = rows.get::<i64>(r, 1).expect("ordinality is not NULL") as usize;
        current[ord - 1] = (rows.get::<i64>(r, 2).unwrap_or(0), rows.get::<String>(r, 3));
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

/// One set-based INSERT for the whole batch (G1).
fn insert(rows: &[PendingRow], created_at: pg_sys::TimestampTz, default_creator: &str) {
    let creator = |r: &PendingRow| r.command.creator.clone().unwrap_or_else(|| default_creator.to_string());
    let created_at = Arg::new(timestamptz(created_at));
    if let [row] = rows {
        let c = row.command;
        query::run(INSERT_ONE, &[
            Arg::new(c.instance_id.as_str()), Arg::new(c.aggregate_type.as_str()),
            Arg::new(c.aggregate_id.as_str()), Arg::new(row.sequence), Arg::new(c.event_type.as_str()),
            Arg::new(c.revision), Arg::raw(pg_sys::JSONBOID, c.payload), Arg::new(creator(row)),
            Arg::new(row.owner.as_str()), created_at, Arg::new(row.position),
        ], Snapshot::Statement);
        return;
    }
    let texts = |f: &dyn Fn(&PendingRow) -> String| -> Vec<String> { rows.iter().map(f).collect() };
    query::run(INSERT_MANY, &[
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
    ], Snapshot::Statement);
}

/// A jsonb[] of raw jsonb datums (NULL elements allowed).
fn jsonb_array(payloads: impl Iterator<Item = Option<pg_sys::Datum>>) -> pg_sys::Datum {
    let (mut values, mut nulls): (Vec<pg_sys::Datum>, Vec<bool>) =
        payloads.map(|p| (p.unwrap_or(pg_sys::Datum::from(0usize)), p.is_none())).unzip();
    let mut dims = [values.len() as i32];
    let mut lower_bounds = [1];
    unsafe {
        let array = pg_sys::construct_md_array(
            values.as_mut_ptr(), nulls.as_mut_ptr(), 1, dims.as_mut_ptr(), lower_bounds.as_mut_ptr(),
            pg_sys::JSONBOID, -1, false, pg_sys::TYPALIGN_INT as std::ffi::c_char,
        );
        pg_sys::Datum::from(array)
    }
}

fn timestamptz(t: pg_sys::TimestampTz) -> TimestampWithTimeZone {
    unsafe { TimestampWithTimeZone::from_datum(pg_sys::Datum::from(t), false) }
        .expect("a timestamp is not NULL")
}

pub fn current_user() -> String {
    unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(pg_sys::GetUserId(), false)) }
        .to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// Positions

/// Draws the next position for a write to `scope`, registered with the horizon (horizon.rs).
/// Call only with the writer and aggregate locks held (G3).
fn next_position(sequence_oid: pg_sys::Oid, scope: horizon::Scope) -> i64 {
    horizon::draw(scope, || {
        unsafe { pgrx::direct_function_call::<i64>(pg_sys::nextval_oid, &[sequence_oid.into_datum()]) }
            .expect("nextval is not NULL")
    })
}

const LAST_POSITION: &str =
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM eventstore.position_seq";

/// The last position drawn by anyone, committed or not (0 before the first push). Must be
/// called inside an SPI connection.
pub fn last_position() -> i64 {
    query::run(LAST_POSITION, &[], Snapshot::Statement).get::<i64>(0, 1).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Reading and checking commands

/// Checks an identifier: present, not empty, not too long, no control characters.
pub fn require_identifier<'a>(field: &str, value: Option<&'a str>) -> &'a str {
    let Some(value) = value else {
        errors::raise(errors::NULL_VALUE, format!("{field} must not be NULL"),
            format!("{field} is NULL."), "")
    };
    check_identifier(field, value).unwrap_or_else(|r| r.raise())
}

/// Why one command was refused.
struct Refusal {
    code: PgSqlErrorCode,
    message: String,
    detail: String,
    hint: &'static str,
}

impl Refusal {
    fn new(code: PgSqlErrorCode, message: String, detail: String, hint: &'static str) -> Self {
        Refusal { code, message, detail, hint }
    }

    fn raise(self) -> ! {
        errors::raise(self.code, self.message, self.detail, self.hint)
    }

    /// Names the command in the detail: "Command 3 of the batch: the payload ...".
    fn at(mut self, n: usize) -> Self {
        let mut detail = self.detail.chars();
        let first = detail.next().map(|c| c.to_lowercase().to_string()).unwrap_or_default();
        self.detail = format!("Command {} of the batch: {first}{}", n + 1, detail.as_str());
        self
    }
}

fn check_identifier<'a>(field: &str, value: &'a str) -> Result<&'a str, Refusal> {
    if value.is_empty() {
        return Err(Refusal::new(errors::INVALID_VALUE, format!("{field} must not be empty"),
            format!("{field} is an empty string."), ""));
    }
    if value.len() > MAX_IDENTIFIER_BYTES {
        return Err(Refusal::new(errors::TOO_LONG,
            format!("{field} is too long"),
            format!("{field} has {} bytes; the limit is {MAX_IDENTIFIER_BYTES}.", value.len()), ""));
    }
    if let Some((at, c)) = value.chars().enumerate().find(|(_, c)| c.is_control()) {
        return Err(Refusal::new(errors::INVALID_VALUE,
            format!("{field} must not contain control characters"),
            format!("{field} has the control character U+{:04X} at character {}.", c as u32, at + 1), ""));
    }
    Ok(value)
}

pub fn truncate(value: &str, max_chars: usize) -> String {
    value.chars().take(max_chars).collect()
}

/// The fields of a command before checking, from either form.
#[derive(Default)]
struct RawCommand {
    instance_id: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_type: Option<String>,
    revision: Option<i64>,
    payload: Option<pg_sys::Datum>,
    creator: Option<String>,
    owner: Option<String>,
    expected_sequence: Option<i64>,
}

impl RawCommand {
    fn check(self) -> Result<Command, Refusal> {
        let required = |field: &str, value: Option<String>| -> Result<String, Refusal> {
            let value = value.ok_or_else(|| Refusal::new(errors::NULL_VALUE,
                format!("{field} must not be NULL"), format!("{field} is NULL or missing."),
                "Every command needs instance_id, aggregate_type, aggregate_id and event_type."))?;
            check_identifier(field, &value)?;
            Ok(value)
        };
        let optional = |field: &str, value: Option<String>| -> Result<Option<String>, Refusal> {
            if let Some(v) = &value {
                check_identifier(field, v)?;
            }
            Ok(value)
        };
        let revision = match self.revision {
            None => 1,
            Some(r) if (1..=i16::MAX as i64).contains(&r) => r as i16,
            Some(r) => return Err(Refusal::new(errors::INVALID_VALUE,
                "revision is out of range".into(),
                format!("revision is {r}; it must be between 1 and {}.", i16::MAX), "")),
        };
        if let Some(e) = self.expected_sequence.filter(|e| *e < 0) {
            return Err(Refusal::new(errors::INVALID_VALUE, "expected_sequence is negative".into(),
                format!("expected_sequence is {e}."),
                "Use 0 for an aggregate that must not exist yet, NULL for no check."));
        }
        if let Some(payload) = self.payload {
            check_payload(payload)?;
        }
        Ok(Command {
            instance_id: required("instance_id", self.instance_id)?,
            aggregate_type: required("aggregate_type", self.aggregate_type)?,
            aggregate_id: required("aggregate_id", self.aggregate_id)?,
            event_type: required("event_type", self.event_type)?,
            revision,
            payload: self.payload,
            creator: optional("creator", self.creator)?,
            owner: optional("owner", self.owner)?,
            expected_sequence: self.expected_sequence,
        })
    }
}

/// A payload is a JSON object of at most MAX_PAYLOAD_BYTES.
fn check_payload(payload: pg_sys::Datum) -> Result<(), Refusal> {
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum(payload.cast_mut_ptr());
        let size = pgrx::varsize_any(jsonb as *const pg_sys::varlena);
        if size > MAX_PAYLOAD_BYTES {
            return Err(Refusal::new(errors::TOO_LARGE, "payload is too large".into(),
                format!("The payload has {size} bytes; the limit is {MAX_PAYLOAD_BYTES}."),
                "Store large documents elsewhere and put a reference in the event."));
        }
        if jsonb_root_header(jsonb) & JB_FOBJECT == 0 {
            return Err(Refusal::new(errors::INVALID_VALUE, "payload must be a JSON object".into(),
                "The payload is an array or a scalar.".into(),
                "Wrap the value in an object, or pass NULL for no payload."));
        }
    }
    Ok(())
}

fn check_batch_size(len: usize) {
    if len == 0 {
        errors::raise(errors::INVALID_VALUE, "push needs at least one command".into(),
            "The batch is empty.".into(), "");
    }
    if len > MAX_BATCH {
        errors::raise(errors::TOO_LARGE, "too many commands in one push".into(),
            format!("The batch has {len} commands; the limit is {MAX_BATCH}."),
            "Split the batch; each push is atomic on its own.");
    }
}

/// Reads and checks the elements of an eventstore.command[].
fn commands_from_array(array: AnyArray) -> Vec<Command> {
    unsafe {
        let array_ptr = pg_sys::pg_detoast_datum(array.datum().cast_mut_ptr()) as *mut pg_sys::ArrayType;
        let element_type = (*array_ptr).elemtype;
        let (mut len, mut by_val, mut align) = (0i16, false, 0 as std::ffi::c_char);
        pg_sys::get_typlenbyvalalign(element_type, &mut len, &mut by_val, &mut align);
        let mut elements: *mut pg_sys::Datum = std::ptr::null_mut();
        let mut nulls: *mut bool = std::ptr::null_mut();
        let mut count = 0;
        pg_sys::deconstruct_array(array_ptr, element_type, len.into(), by_val, align,
            &mut elements, &mut nulls, &mut count);
        let count = count as usize;
        check_batch_size(count);
        let mut commands = Vec::with_capacity(count);
        for n in 0..count {
            if *nulls.add(n) {
                Refusal::new(errors::NULL_VALUE, "a command must not be NULL".into(),
                    "The command is NULL.".into(), "").at(n).raise();
            }
            let raw = raw_from_composite(*elements.add(n));
            commands.push(raw.check().unwrap_or_else(|r| r.at(n).raise()));
        }
        commands
    }
}

/// The fields of one eventstore.command composite.
unsafe fn raw_from_composite(datum: pg_sys::Datum) -> RawCommand {
    const FIELDS: usize = 9;
    let header = pg_sys::pg_detoast_datum(datum.cast_mut_ptr()) as pg_sys::HeapTupleHeader;
    let type_id = pgrx::heap_tuple_header_get_type_id(header);
    let typmod = pgrx::heap_tuple_header_get_typmod(header);
    let tupdesc = pg_sys::lookup_rowtype_tupdesc(type_id, typmod);
    let mut tuple = pg_sys::HeapTupleData {
        t_len: pgrx::heap_tuple_header_get_datum_length(header) as u32,
        t_self: pg_sys::ItemPointerData::default(),
        t_tableOid: pg_sys::InvalidOid,
        t_data: header,
    };
    let mut values = [pg_sys::Datum::from(0usize); FIELDS];
    let mut nulls = [true; FIELDS];
    assert_eq!((*tupdesc).natts as usize, FIELDS, "eventstore.command has {FIELDS} fields");
    pg_sys::heap_deform_tuple(&mut tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
    pg_sys::DecrTupleDescRefCount(tupdesc);
    let text = |i: usize| String::from_datum(values[i], nulls[i]);
    RawCommand {
        instance_id: text(0),
        aggregate_type: text(1),
        aggregate_id: text(2),
        event_type: text(3),
        revision: i16::from_datum(values[4], nulls[4]).map(i64::from),
        payload: (!nulls[5]).then_some(values[5]),
        creator: text(6),
        owner: text(7),
        expected_sequence: i64::from_datum(values[8], nulls[8]),
    }
}

/// A jsonb argument taken as it is: never converted to text or parsed by us, so payloads keep
/// their exact numbers and any nesting PostgreSQL accepts.
pub struct JsonbDatum(pg_sys::Datum);

impl FromDatum for JsonbDatum {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbDatum {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        unsafe { arg.unbox_arg_using_from_datum().expect("a non-NULL jsonb") }
    }
}

pgrx::impl_sql_translatable!(JsonbDatum, "jsonb");

const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JB_CMASK: u32 = 0x0FFF_FFFF;

/// The header of a jsonb value's root container: its kind flags and element count.
unsafe fn jsonb_root_header(jsonb: *const pg_sys::varlena) -> u32 {
    unsafe { *(jsonb as *const u8).add(pg_sys::VARHDRSZ).cast::<u32>() }
}

/// Every field of every command, one row per (command, field); a command that is not an
/// object, or an empty one, has one row with NULL key.
const JSON_COMMAND_FIELDS: &str = "\
SELECT e.n, jsonb_typeof(e.c), f.key, jsonb_typeof(f.value), f.value #>> '{}', f.value
  FROM jsonb_array_elements($1) WITH ORDINALITY AS e(c, n)
  LEFT JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(e.c) = 'object' THEN e.c END) AS f ON true
 ORDER BY e.n";

/// Reads and checks a JSON array of command objects with PostgreSQL's own jsonb functions.
/// Payloads stay jsonb datums: no conversion, no depth limit, numbers exactly as given.
fn commands_from_json(commands: pg_sys::Datum) -> Vec<Command> {
    let header = unsafe { jsonb_root_header(pg_sys::pg_detoast_datum(commands.cast_mut_ptr())) };
    if header & JB_FARRAY == 0 || header & JB_FSCALAR != 0 {
        let kind = query::with_spi(|| {
            query::run("SELECT jsonb_typeof($1)", &[Arg::raw(pg_sys::JSONBOID, Some(commands))],
                Snapshot::Statement).get::<String>(0, 1).unwrap_or_default()
        });
        errors::raise(errors::INVALID_VALUE, "commands must be a JSON array".into(),
            format!("The jsonb is {}.", json_kind(&kind)), "Pass [{\"instance_id\": ...}, ...].")
    }
    check_batch_size((header & JB_CMASK) as usize);
    query::with_spi(|| {
        let rows = query::run(JSON_COMMAND_FIELDS, &[Arg::raw(pg_sys::JSONBOID, Some(commands))],
            Snapshot::Statement);
        let mut commands = Vec::new();
        let mut raw = RawCommand::default();
        for r in 0..rows.len() {
            let n = rows.get::<i64>(r, 1).expect("ordinality") as usize - 1;
            let refused = |refusal: Refusal| -> ! { refusal.at(n).raise() };
            let kind = rows.get::<String>(r, 2).unwrap_or_default();
            if kind != "object" {
                refused(Refusal::new(errors::INVALID_VALUE, "a command must be a JSON object".into(),
                    format!("The command is {}.", json_kind(&kind)), ""));
            }
            if let Some(key) = rows.get::<String>(r, 3) {
                let value_kind = rows.get::<String>(r, 4).unwrap_or_default();
                let text = rows.get::<String>(r, 5);
                read_json_field(&mut raw, &key, &value_kind, text, || rows.transfer(r, 6))
                    .unwrap_or_else(|refusal| refused(refusal));
            }
            let last_of_command = r + 1 == rows.len() || rows.get::<i64>(r + 1, 1) != Some(n as i64 + 1);
            if last_of_command {
                commands.push(std::mem::take(&mut raw).check().unwrap_or_else(|refusal| refused(refusal)));
            }
        }
        commands
    })
}

/// "an object", "a string", ... for jsonb_typeof's answer.
fn json_kind(kind: &str) -> String {
    match kind {
        "array" | "object" => format!("an {kind}"),
        "null" => "null".into(),
        other => format!("a {other}"),
    }
}

/// One field of a JSON command into the raw command, checked for its JSON type.
fn read_json_field(
    raw: &mut RawCommand,
    key: &str,
    kind: &str,
    text: Option<String>,
    payload: impl FnOnce() -> Option<pg_sys::Datum>,
) -> Result<(), Refusal> {
    let wrong_type = |expected: &str| Refusal::new(errors::INVALID_VALUE,
        format!("{key} must be {expected}"), format!("{key} is {}.", json_kind(kind)), "");
    let string = || match kind {
        "null" => Ok(None),
        "string" => Ok(text.clone()),
        _ => Err(wrong_type("a string")),
    };
    let integer = || match kind {
        "null" => Ok(None),
        "number" => integral(text.as_deref().unwrap_or_default()).map(Some).ok_or_else(|| Refusal::new(
            errors::INVALID_VALUE, format!("{key} must be an integer"),
            format!("{key} is {}.", truncate(text.as_deref().unwrap_or_default(), 64)), "")),
        _ => Err(wrong_type("an integer")),
    };
    match key {
        "instance_id" => raw.instance_id = string()?,
        "aggregate_type" => raw.aggregate_type = string()?,
        "aggregate_id" => raw.aggregate_id = string()?,
        "event_type" => raw.event_type = string()?,
        "creator" => raw.creator = string()?,
        "owner" => raw.owner = string()?,
        "revision" => raw.revision = integer()?,
        "expected_sequence" => raw.expected_sequence = integer()?,
        "payload" => raw.payload = if kind == "null" { None } else { payload() },
        _ => return Err(Refusal::new(errors::INVALID_VALUE,
            format!("unknown field \"{}\"", truncate(key, 64)),
            "A command has the fields instance_id, aggregate_type, aggregate_id, event_type, \
             revision, payload, creator, owner and expected_sequence.".into(), "Check the spelling.")),
    }
    Ok(())
}

/// A JSON number that is a 64-bit integer: 3 and 3.0 alike (some encoders write every number
/// as a float); 3.5, 1e1000 and 2^63 are not.
fn integral(number: &str) -> Option<i64> {
    number.parse::<i64>().ok().or_else(|| {
        number.parse::<f64>().ok()
            .filter(|f| f.fract() == 0.0 && f.abs() <= (1u64 << 53) as f64)
            .map(|f| f as i64)
    })
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn identifiers_are_checked_for_emptiness_length_and_control_characters() {
        assert!(check_identifier("instance_id", "acme").is_ok());
        assert!(check_identifier("instance_id", &"x".repeat(MAX_IDENTIFIER_BYTES)).is_ok());
        let refused = |value: &str| check_identifier("instance_id", value).err().map(|r| (r.code, r.message));
        assert_eq!(refused(""), Some((errors::INVALID_VALUE, "instance_id must not be empty".into())));
        assert_eq!(refused(&"x".repeat(MAX_IDENTIFIER_BYTES + 1)),
            Some((errors::TOO_LONG, "instance_id is too long".into())));
        assert_eq!(refused("a\u{7f}b").map(|r| r.0), Some(errors::INVALID_VALUE));
    }

    #[pg_test]
    fn a_payload_must_be_an_object() {
        let payload = |json: &str| pgrx::JsonB(serde_json::from_str(json).unwrap()).into_datum().unwrap();
        assert!(check_payload(payload(r#"{"a": 1}"#)).is_ok());
        assert!(check_payload(payload("[1]")).is_err());
        assert!(check_payload(payload("\"text\"")).is_err());
        assert!(check_payload(payload("null")).is_err());
    }

    #[pg_test]
    fn json_numbers_pass_through_exactly() {
        let position = Spi::get_one::<i64>(
            r#"SELECT position FROM eventstore.push('[{"instance_id": "t", "aggregate_type": "a",
                 "aggregate_id": "1", "event_type": "e", "payload": {"n": 12345678901234567890.50}}]'::jsonb)"#,
        ).unwrap().unwrap();
        let payload = Spi::get_one::<String>(
            &format!("SELECT payload::text FROM eventstore.events WHERE position = {position}"));
        assert_eq!(payload, Ok(Some(r#"{"n": 12345678901234567890.50}"#.to_string())));
    }

    #[pg_test]
    fn json_integers_may_be_written_as_floats() {
        assert_eq!(integral("3.0"), Some(3));
        assert_eq!(integral("3"), Some(3));
        assert_eq!(integral("3.5"), None);
        assert_eq!(integral("1e1000"), None);
        assert_eq!(integral("9223372036854775808"), None);
    }

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
