//! Reading commands from either form push takes (an `eventstore.command[]`, or a JSON array of
//! command objects) and checking every field (G9): each bad input is refused with a SQLSTATE,
//! message, detail naming the command, and hint, before the first lock or write.

use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::AnyArray;

use crate::checks::{check_identifier, truncate};
use crate::errors::{self, Refusal};
use crate::query::{self, Arg, Snapshot};

/// Most commands one push accepts.
pub const MAX_BATCH: usize = 10_000;
/// Largest payload, in bytes of its jsonb form.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Largest metadata, in bytes of its jsonb form.
pub const MAX_METADATA_BYTES: usize = 64 << 10;

/// An event id: the 16 bytes of a uuid.
pub type EventId = [u8; 16];

/// One command, checked.
pub struct Command {
    pub instance_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub revision: i16,
    pub payload: Option<pg_sys::Datum>,
    pub creator: Option<String>,
    pub owner: Option<String>,
    pub expected_sequence: Option<i64>,
    pub id: Option<EventId>,
    pub metadata: Option<pg_sys::Datum>,
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
    id: Option<EventId>,
    metadata: Option<pg_sys::Datum>,
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
            Some(r) => check_revision(r)?,
        };
        if let Some(e) = self.expected_sequence.filter(|e| *e < 0) {
            return Err(Refusal::new(errors::INVALID_VALUE, "expected_sequence is negative".into(),
                format!("expected_sequence is {e}."),
                "Use 0 for an aggregate that must not exist yet, NULL for no check."));
        }
        let payload = self.payload.map(|p| check_json_object(&PAYLOAD, p)).transpose()?;
        let metadata = self.metadata.map(|m| check_json_object(&METADATA, m)).transpose()?;
        Ok(Command {
            instance_id: required("instance_id", self.instance_id)?,
            aggregate_type: required("aggregate_type", self.aggregate_type)?,
            aggregate_id: required("aggregate_id", self.aggregate_id)?,
            event_type: required("event_type", self.event_type)?,
            revision,
            payload,
            creator: optional("creator", self.creator)?,
            owner: optional("owner", self.owner)?,
            expected_sequence: self.expected_sequence,
            id: self.id,
            metadata,
        })
    }
}

/// A jsonb field that must hold a JSON object: its name and size limit.
struct JsonObjectField {
    name: &'static str,
    max_bytes: usize,
    too_large_hint: &'static str,
}

const PAYLOAD: JsonObjectField = JsonObjectField {
    name: "payload",
    max_bytes: MAX_PAYLOAD_BYTES,
    too_large_hint: "Store large documents elsewhere and put a reference in the event.",
};

const METADATA: JsonObjectField = JsonObjectField {
    name: "metadata",
    max_bytes: MAX_METADATA_BYTES,
    too_large_hint: "Metadata is for ids and short tags (correlation_id, causation_id, trace_id); \
                     put data in the payload.",
};

/// A payload or metadata is a JSON object of at most the field's limit; the empty array `[]`
/// counts as the empty object `{}` and is stored as `{}`: PHP's `json_encode([])`, and other
/// encoders of an empty map without keys, write `[]`, and no event means an empty list.
fn check_json_object(field: &JsonObjectField, value: pg_sys::Datum) -> Result<pg_sys::Datum, Refusal> {
    // SAFETY: value is a non-NULL jsonb datum (the command's payload or metadata field);
    // detoasting it gives a varlena whose header and root container header can be read.
    unsafe {
        let jsonb = pg_sys::pg_detoast_datum(value.cast_mut_ptr());
        let size = pgrx::varsize_any(jsonb as *const pg_sys::varlena);
        let name = field.name;
        if size > field.max_bytes {
            return Err(Refusal::new(errors::TOO_LARGE, format!("{name} is too large"),
                format!("The {name} has {size} bytes; the limit is {}.", field.max_bytes),
                field.too_large_hint));
        }
        let header = jsonb_root_header(jsonb);
        if header & JB_FARRAY != 0 && header & JB_FSCALAR == 0 && header & JB_CMASK == 0 {
            return Ok(empty_object());
        }
        if header & JB_FOBJECT == 0 {
            return Err(Refusal::new(errors::INVALID_VALUE, format!("{name} must be a JSON object"),
                format!("The {name} is an array or a scalar."),
                "Wrap the value in an object, or pass NULL for none."));
        }
    }
    Ok(value)
}

/// A jsonb `{}`, allocated in the transaction's context: it must outlive the SPI connection
/// the JSON form is decoded in.
fn empty_object() -> pg_sys::Datum {
    // SAFETY: only the jsonb is allocated while the transaction's context is current; it lives
    // until the transaction ends, longer than the push that reads it.
    unsafe {
        pgrx::PgMemoryContexts::CurTransactionContext.switch_to(|_| {
            pgrx::JsonB(serde_json::Value::Object(Default::default())).into_datum()
        })
    }.expect("{} is not NULL")
}

/// Refuses two commands of one batch carrying the same event id (22023), before any lock.
pub fn check_distinct_ids(commands: &[Command]) {
    let mut seen = std::collections::HashMap::new();
    for (n, c) in commands.iter().enumerate() {
        let Some(id) = c.id else { continue };
        if let Some(first) = seen.insert(id, n) {
            Refusal::new(errors::INVALID_VALUE, format!("event id {} appears twice in the batch", uuid_text(&id)),
                format!("Command {} carries the same id.", first + 1),
                "Give every event its own id.").at(n).raise();
        }
    }
}

/// The canonical text of an event id: 8-4-4-4-12 lower-case hex digits.
pub fn uuid_text(id: &EventId) -> String {
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// An event id from JSON text: 32 hex digits, in the canonical 8-4-4-4-12 groups or without
/// hyphens, either case (what uuid libraries write).
fn parse_uuid(text: &str) -> Option<EventId> {
    let canonical = text.len() == 36
        && text.char_indices().all(|(i, c)| (c == '-') == matches!(i, 8 | 13 | 18 | 23));
    let digits: String = if canonical { text.replace('-', "") } else { text.to_string() };
    if digits.len() != 32 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
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
pub fn commands_from_array(array: AnyArray) -> Vec<Command> {
    // SAFETY: array is a non-NULL array datum (SQL declares the argument eventstore.command[]);
    // deconstruct_array fills `count` elements and null flags, read only below that count, and
    // each non-NULL element is a composite datum of eventstore.command.
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
///
/// # Safety
/// `datum` must be a non-NULL composite datum of type eventstore.command.
unsafe fn raw_from_composite(datum: pg_sys::Datum) -> RawCommand {
    // SAFETY: by the caller's promise the datum is a composite of eventstore.command: its
    // header names the row type, whose descriptor (reference-counted, released below) has at
    // most FIELDS attributes (asserted), so heap_deform_tuple fills within the arrays given;
    // the fields it does not fill stay NULL.
    unsafe { raw_from_composite_fields(datum) }
}

/// # Safety
/// As for [`raw_from_composite`].
unsafe fn raw_from_composite_fields(datum: pg_sys::Datum) -> RawCommand {
    // 9 fields up to release 0.2.0, 11 since (id, metadata): the library serves a database
    // whose extension is not updated yet as well.
    const FIELDS: usize = 11;
    const FIELDS_BEFORE_0_3: usize = 9;
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
    let natts = (*tupdesc).natts as usize;
    assert!(natts == FIELDS || natts == FIELDS_BEFORE_0_3, "eventstore.command has {natts} fields");
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
        id: pgrx::Uuid::from_datum(values[9], nulls[9]).map(|u| *u.as_bytes()),
        metadata: (!nulls[10]).then_some(values[10]),
    }
}

/// A jsonb argument taken as it is: never converted to text or parsed by us, so payloads keep
/// their exact numbers and any nesting PostgreSQL accepts.
pub struct JsonbDatum(pub pg_sys::Datum);

impl FromDatum for JsonbDatum {
    // SAFETY (for callers): the datum is kept as it is; nothing is read here.
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(JsonbDatum(datum))
    }
}

// SAFETY: JsonbDatum is declared as jsonb to SQL and unboxed through FromDatum, which only
// wraps the datum; pgrx checks the argument's nullness with the Option around it.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for JsonbDatum {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        // SAFETY: pgrx calls this only for a non-NULL argument.
        unsafe { arg.unbox_arg_using_from_datum().expect("a non-NULL jsonb") }
    }
}

pgrx::impl_sql_translatable!(JsonbDatum, "jsonb");

const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JB_CMASK: u32 = 0x0FFF_FFFF;

/// The header of a jsonb value's root container: its kind flags and element count
/// (utils/jsonb.h: a varlena header, then the root JsonbContainer's `header` word).
///
/// # Safety
/// `jsonb` must point to a detoasted jsonb value.
unsafe fn jsonb_root_header(jsonb: *const pg_sys::varlena) -> u32 {
    // SAFETY: a detoasted jsonb has a 4-byte varlena header followed by the u32 root header.
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
pub fn commands_from_json(commands: pg_sys::Datum) -> Vec<Command> {
    // SAFETY: commands is a non-NULL jsonb datum (the function's declared argument type).
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
    jsonb: impl FnOnce() -> Option<pg_sys::Datum>,
) -> Result<(), Refusal> {
    let wrong_type = |expected: &str| Refusal::new(errors::INVALID_VALUE,
        format!("{key} must be {expected}"), format!("{key} is {}.", json_kind(kind)), "");
    let string = || match kind {
        "null" => Ok(None),
        "string" => Ok(text.clone()),
        _ => Err(wrong_type("a string")),
    };
    let integer = || {
        let number = text.as_deref().unwrap_or_default();
        match (kind, integral(number)) {
            ("null", _) => Ok(None),
            ("number", Integral::Value(n)) => Ok(Some(n)),
            ("number", Integral::OutOfRange) => Err(Refusal::new(errors::INVALID_VALUE,
                format!("{key} is out of range"),
                format!("{key} is {}; it must fit in a bigint.", truncate(number, 64)), "")),
            ("number", Integral::Fraction) => Err(Refusal::new(errors::INVALID_VALUE,
                format!("{key} must be an integer"), format!("{key} is {}.", truncate(number, 64)), "")),
            _ => Err(wrong_type("an integer")),
        }
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
        "payload" => raw.payload = if kind == "null" { None } else { jsonb() },
        "metadata" => raw.metadata = if kind == "null" { None } else { jsonb() },
        "id" => raw.id = match string()? {
            None => None,
            Some(text) => Some(parse_uuid(&text).ok_or_else(|| Refusal::new(errors::INVALID_VALUE,
                "id must be a UUID".into(), format!("id is \"{}\".", truncate(&text, 64)),
                "Write it as 8-4-4-4-12 hex digits, as uuid libraries do."))?),
        },
        _ => return Err(Refusal::new(errors::INVALID_VALUE,
            format!("unknown field \"{}\"", truncate(key, 64)),
            "A command has the fields instance_id, aggregate_type, aggregate_id, event_type, \
             revision, payload, creator, owner, expected_sequence, id and metadata.".into(),
            "Check the spelling.")),
    }
    Ok(())
}

/// What a JSON number is, read as a bigint field.
#[derive(Debug, PartialEq)]
enum Integral {
    Value(i64),
    /// A whole number that does not fit in a bigint (2^63, 1e1000).
    OutOfRange,
    /// 3.5.
    Fraction,
}

/// A JSON number as a 64-bit integer: 3 and 3.0 alike (some encoders write every number as a
/// float, exact up to 2^53).
fn integral(number: &str) -> Integral {
    if let Ok(n) = number.parse::<i64>() {
        return Integral::Value(n);
    }
    match number.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() != 0.0 => Integral::Fraction,
        Ok(f) if f.abs() <= (1u64 << 53) as f64 => Integral::Value(f as i64),
        _ => Integral::OutOfRange,
    }
}

/// A revision: 1 to 32767 (it is stored as a smallint).
fn check_revision(revision: i64) -> Result<i16, Refusal> {
    match i16::try_from(revision) {
        Ok(r) if r >= 1 => Ok(r),
        _ => Err(Refusal::new(errors::INVALID_VALUE, "revision is out of range".into(),
            format!("revision is {revision}; it must be between 1 and {}.", i16::MAX), "")),
    }
}

/// `eventstore.checked_revision(revision)`: command()'s revision as the smallint it is stored
/// as, refused with 22023 out of 1..32767 as push refuses it (G9); NULL stays NULL (push's
/// default, 1).
#[pg_extern(sql = false)]
fn checked_revision(revision: Option<i32>) -> Option<i16> {
    revision.map(|r| check_revision(r.into()).unwrap_or_else(|refusal| refusal.raise()))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn a_payload_must_be_an_object() {
        let payload = |json: &str| pgrx::JsonB(serde_json::from_str(json).unwrap()).into_datum().unwrap();
        // SAFETY: check_json_object returns a non-NULL jsonb datum.
        let as_text = |d: pg_sys::Datum| unsafe { pgrx::JsonB::from_datum(d, false) }.unwrap().0.to_string();
        let checked = |json: &str| check_json_object(&PAYLOAD, payload(json)).map(as_text);
        assert_eq!(checked(r#"{"a": 1}"#).ok(), Some(r#"{"a":1}"#.to_string()));
        assert_eq!(checked("[]").ok(), Some("{}".to_string()), "[] is taken as {{}}");
        assert!(checked("[1]").is_err());
        assert!(checked("\"text\"").is_err());
        assert!(checked("null").is_err());
    }

    #[pg_test]
    fn event_ids_are_read_in_the_forms_uuid_libraries_write() {
        let id = parse_uuid("0190A6E2-7C4B-7D3A-8F00-0123456789ab").expect("canonical");
        assert_eq!(uuid_text(&id), "0190a6e2-7c4b-7d3a-8f00-0123456789ab");
        assert_eq!(parse_uuid("0190a6e27c4b7d3a8f000123456789ab"), Some(id));
        assert_eq!(parse_uuid("0190a6e2-7c4b-7d3a-8f00-0123456789a"), None);
        assert_eq!(parse_uuid("0190a6e27c4b-7d3a-8f00-0123456789ab"), None);
        assert_eq!(parse_uuid("{0190a6e2-7c4b-7d3a-8f00-0123456789ab}"), None);
        assert_eq!(parse_uuid("zz90a6e2-7c4b-7d3a-8f00-0123456789ab"), None);
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
        assert_eq!(integral("3.0"), Integral::Value(3));
        assert_eq!(integral("3"), Integral::Value(3));
        assert_eq!(integral("3.5"), Integral::Fraction);
        assert_eq!(integral("1e1000"), Integral::OutOfRange);
        assert_eq!(integral("9223372036854775808"), Integral::OutOfRange);
    }
}
