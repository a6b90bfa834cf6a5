//! Fuzzed bad input for both push forms (DESIGN.md G9, with G1 and G2 checked on every call).
//!
//! A seeded generator throws thousands of calls at `push(command[])` — built with
//! `eventstore.command(...)`, with `ROW(...)::eventstore.command` and from a composite array
//! literal — and at `push(jsonb)` / `push(text)` (typed text, binary jsonb, untyped parameter):
//! NULLs, missing, extra and repeated fields, wrong JSON types, control characters, identifiers
//! of 513 bytes and of 70 kB, payloads over 1 MiB, 10 000 levels of nesting, invalid escapes
//! and invalid UTF-8 bytes, huge numbers, batches of 10 000 and 10 001 (and 10 000 commands on
//! 10 000 instances: the most locks a valid batch takes), good and bad commands mixed. A fixed
//! prelude of those edge cases runs whatever the seed; random calls follow.
//!
//! The generator knows what each input must do, and every call is checked against it:
//! - bad input fails with one of the SQLSTATEs that input calls for — never XX000, never class
//!   53, 57 or 58 — with a message and a detail when eventstore raised it; the connection still
//!   answers `SELECT 1`; and the call wrote nothing (rows of its instances counted before and
//!   after);
//! - good input succeeds: one row per command, every event in the table as the call returned
//!   it (payload included), sequences continuing gaplessly from what each aggregate had,
//!   positions growing in command order;
//! - good input whose expected_sequence does not match fails with 40001 and writes nothing.
//!
//! A second connection opened first must still answer at the end (a crashed backend makes the
//! postmaster end every session), and the server log, when readable, must show no crash.
//! Violations are collected, printed with their call and the input that caused them, and fail
//! the test at the end.
//!
//! Knobs: EVENTSTORE_FUZZ_SEED (replay a run; the seed is printed), EVENTSTORE_FUZZ_CALLS
//! (random calls after the prelude, default 4000), EVENTSTORE_FUZZ_SECONDS (time cap for the
//! random calls, default 25).

// Built only for the integration layer (also declared with required-features in Cargo.toml).
#![cfg(feature = "integration")]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::error::Error;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// The buffer type of ToSql. postgres-types re-exports it at this path for its own
// `to_sql_checked!` macro; using it spares a dependency on the bytes crate.
use postgres::types::private::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use postgres::{Client, Row, Statement};

const DEFAULT_CALLS: usize = 4000;
const DEFAULT_SECONDS: u64 = 25;

/// The documented limits (README, "Errors").
const MAX_BATCH: usize = 10_000;
const MAX_IDENTIFIER_BYTES: usize = 512;
/// A payload comfortably under 1 MiB of jsonb, and one comfortably over.
const LARGE_PAYLOAD: usize = 900_000;
const TOO_LARGE_PAYLOAD: usize = 1_100_000;
/// Nesting PostgreSQL's own JSON parser accepts (its stack check refuses far deeper).
const DEEP: usize = 10_000;
const TOO_DEEP: usize = 100_000;

// SQLSTATEs a bad input may call for.
const NULL_VALUE: &str = "22004";
const INVALID: &str = "22023";
const TOO_LONG: &str = "22001";
const TOO_LARGE: &str = "54000";
const MISMATCH: &str = "40001";
const BAD_SYNTAX: &str = "22P02";
const UNTRANSLATABLE: &str = "22P05";
const BAD_ENCODING: &str = "22021";
const OUT_OF_RANGE: &str = "22003";
const STACK_DEPTH: &str = "54001";
/// Never acceptable: internal errors (XX), insufficient resources (53), operator
/// intervention (57, which includes a statement timeout: a hang), system errors (58).
const FORBIDDEN_CLASSES: [&str; 4] = ["XX", "53", "57", "58"];

// The fields of eventstore.command, in its order.
const INSTANCE_ID: usize = 0;
const AGGREGATE_TYPE: usize = 1;
const AGGREGATE_ID: usize = 2;
const EVENT_TYPE: usize = 3;
const REVISION: usize = 4;
const PAYLOAD: usize = 5;
const CREATOR: usize = 6;
const OWNER: usize = 7;
const EXPECTED_SEQUENCE: usize = 8;
const FIELD_NAMES: [&str; 9] = [
    "instance_id", "aggregate_type", "aggregate_id", "event_type", "revision", "payload",
    "creator", "owner", "expected_sequence",
];
const IDENTIFIERS: [usize; 6] = [INSTANCE_ID, AGGREGATE_TYPE, AGGREGATE_ID, EVENT_TYPE, CREATOR, OWNER];

/// Identifier text that must still be accepted: quotes and separators of the literal forms,
/// non-ASCII, invisible and unassigned-looking characters (none of them a control character).
const ODD_BUT_VALID: &[&str] = &[
    " ", "'", "\"", "\\", ",", "(", ")", "{", "}", "NULL", "é", "日本語", "😀", "\u{200B}",
    "\u{FEFF}", "\u{2028}", "\u{00A0}", "\u{E000}", "\u{FFFD}", "\u{FFFF}", "\u{10FFFF}",
    "e\u{0301}", "'); DROP TABLE eventstore.events; --", "%_", "/", "\\u0000", "$1",
];
/// Control characters (Unicode Cc) other than NUL, which has its own case.
const CONTROLS: &[char] = &['\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}'];
/// Byte sequences that are not UTF-8: stray continuation, overlong NUL, a surrogate, a
/// truncated sequence, a code point above U+10FFFF, 0xFF.
const NOT_UTF8: &[&[u8]] = &[
    b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xff",
];
const FILLS: [char; 4] = ['x', 'é', '日', '😀'];

// -------------------------------------------------------------------------------------------
// A small deterministic generator

/// SplitMix64: the same sequence for the same seed, everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

// -------------------------------------------------------------------------------------------
// What a call is

/// The six ways a client can call push.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Form {
    /// `push(ARRAY[eventstore.command(...)])`, each field a text cast on the server.
    Constructor,
    /// `push(ARRAY[ROW(...)::eventstore.command])`.
    RowCast,
    /// `push($1::text::eventstore.command[])`, a composite array literal built here.
    ArrayLiteral,
    /// `push($1::text)`, a JSON text.
    JsonText,
    /// `push($1::jsonb)`, jsonb's binary wire format.
    JsonBinary,
    /// `push($1)`, an untyped parameter (resolves to push(text)).
    JsonUntyped,
}

const FORMS: [Form; 6] =
    [Form::Constructor, Form::RowCast, Form::ArrayLiteral, Form::JsonText, Form::JsonBinary, Form::JsonUntyped];

const RETURNED: &str =
    "SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner FROM eventstore.push";

impl Form {
    fn json(self) -> bool {
        matches!(self, Form::JsonText | Form::JsonBinary | Form::JsonUntyped)
    }

    fn sql(self) -> String {
        // $1..$9: the fields as text, $10: which commands are NULL, $11: the array is NULL.
        let composite = |build: &str| format!(
            "{RETURNED}(CASE WHEN $11 THEN NULL ELSE ARRAY(
                SELECT CASE WHEN u.is_null THEN NULL ELSE {build} END
                  FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[])
                       WITH ORDINALITY AS u(i, t, a, e, r, p, c, o, x, is_null, n)
                 ORDER BY u.n) END)");
        match self {
            Form::Constructor => composite(
                "eventstore.command(u.i, u.t, u.a, u.e, u.p::jsonb, u.r::int, u.c, u.o, u.x::bigint)"),
            Form::RowCast => composite(
                "ROW(u.i, u.t, u.a, u.e, u.r::smallint, u.p::jsonb, u.c, u.o, u.x::bigint)::eventstore.command"),
            Form::ArrayLiteral => format!("{RETURNED}($1::text::eventstore.command[])"),
            Form::JsonText => format!("{RETURNED}($1::text)"),
            Form::JsonBinary => format!("{RETURNED}($1::jsonb)"),
            Form::JsonUntyped => format!("{RETURNED}($1)"),
        }
    }
}

/// One field as generated.
#[derive(Clone, Debug)]
enum Value {
    /// SQL NULL; in JSON, the key left out.
    Absent,
    /// SQL NULL; in JSON, an explicit null.
    Null,
    Text(String),
    Int(i64),
    /// An integer spelled another way that still means it ("+5", "5.0").
    Spelled(&'static str, i64),
    /// Bytes put in as they are: JSON text, a wrong JSON type, a malformed token, not UTF-8.
    Raw(Vec<u8>),
}

impl Value {
    fn text(&self) -> Option<&str> {
        if let Value::Text(s) = self { Some(s) } else { None }
    }

    fn integer(&self) -> Option<i64> {
        match self {
            Value::Int(n) | Value::Spelled(_, n) => Some(*n),
            _ => None,
        }
    }

    /// The field as the composite forms send it: text, or NULL.
    fn as_text_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::Absent | Value::Null => None,
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            Value::Int(n) => Some(n.to_string().into_bytes()),
            Value::Spelled(s, _) => Some(s.as_bytes().to_vec()),
            Value::Raw(b) => Some(b.clone()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Value::Text(s) if s.len() > 80 => format!("text of {} bytes {:?}…", s.len(), truncate(s, 40)),
            Value::Raw(b) if b.len() > 80 => format!("raw {} bytes {:?}…", b.len(), String::from_utf8_lossy(&b[..40])),
            Value::Raw(b) => format!("raw {:?}", String::from_utf8_lossy(b)),
            other => format!("{other:?}"),
        }
    }
}

/// A command as a whole.
#[derive(Clone)]
enum Shape {
    Object,
    /// A NULL command (composite), `null` (JSON).
    Null,
    /// JSON: this token instead of an object.
    Token(&'static str),
}

/// What the table must hold for a good command.
#[derive(Clone, Debug, PartialEq)]
struct Predicted {
    instance_id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    revision: i16,
    payload: Option<String>,
    creator: String,
    owner: String,
    sequence: i64,
}

struct Command {
    shape: Shape,
    values: Vec<Value>,
    /// JSON: fields written twice, first with a junk value (jsonb keeps the last one).
    decoys: Vec<usize>,
    /// JSON: unknown fields, as raw key and value.
    extra: Vec<(Vec<u8>, &'static str)>,
    /// Composite literal: how many fields the record has (9 when intact).
    literal_fields: usize,
    /// Set when the command is good.
    predicted: Option<Predicted>,
    /// A good command whose expected_sequence will not match.
    mismatch: bool,
}

/// The call as a whole, beyond its commands.
#[derive(Clone, Debug)]
enum Whole {
    Batch,
    /// The argument is SQL NULL.
    SqlNull,
    /// JSON: this document instead of the batch.
    Replaced(Vec<u8>),
    /// The rendered argument, damaged.
    Truncated(usize),
    Prefixed(&'static [u8]),
    Suffixed(&'static [u8]),
}

struct Fault {
    codes: &'static [&'static str],
    note: String,
}

struct Call {
    number: usize,
    form: Form,
    commands: Vec<Command>,
    whole: Whole,
    faults: Vec<Fault>,
    /// Instance ids whose rows this call may change (decoy values included).
    instance_ids: Vec<String>,
    notes: Vec<String>,
}

enum Expect {
    Success,
    Failure(Vec<&'static str>),
}

impl Call {
    fn expect(&self) -> Expect {
        if !self.faults.is_empty() {
            let mut codes: Vec<&'static str> = self.faults.iter().flat_map(|f| f.codes.iter().copied()).collect();
            codes.sort();
            codes.dedup();
            Expect::Failure(codes)
        } else if self.commands.iter().any(|c| c.mismatch) {
            Expect::Failure(vec![MISMATCH])
        } else {
            Expect::Success
        }
    }

    fn summary(&self) -> String {
        let mut s = format!("call {} ({:?}, {} commands, {:?}", self.number, self.form, self.commands.len(),
            match &self.whole { Whole::Replaced(d) if d.len() > 40 => Whole::Replaced(d[..40].to_vec()), w => w.clone() });
        for note in &self.notes {
            s.push_str(&format!(", {note}"));
        }
        s.push(')');
        for fault in self.faults.iter().take(4) {
            s.push_str(&format!("\n      fault {:?}: {}", fault.codes, fault.note));
        }
        if self.faults.len() > 4 {
            s.push_str(&format!("\n      … and {} more faults", self.faults.len() - 4));
        }
        if let Some(k) = self.commands.iter().position(|c| c.mismatch) {
            s.push_str(&format!("\n      command {} has a non-matching expected_sequence", k + 1));
        }
        s
    }
}

/// The heavy feature of a call, at most one.
#[derive(Clone, Copy, Debug)]
enum Heavy {
    None,
    /// A payload nested this deep: 1 arrays, 2 objects, 3 both in turn.
    Deep(usize, u8),
    /// A payload with a string of this many bytes.
    Large(usize),
    /// A 70 kB identifier in this field.
    LongIdentifier(usize),
    /// JSON: the document is arrays nested this deep.
    TopDeep(usize),
    /// The last command has faults.
    BadLast,
    /// Every command on an instance of its own: the most locks a valid batch can take.
    ManyInstances,
}

#[derive(Clone, Copy, Debug)]
struct Plan {
    form: Form,
    size: usize,
    fault_rate: f64,
    heavy: Heavy,
    null_batch: bool,
    damage: bool,
}

/// The sequence and owner of every aggregate this run wrote.
type Model = HashMap<(String, String, String), (i64, String)>;

// -------------------------------------------------------------------------------------------
// Generating calls

struct Generator {
    rng: Rng,
    run_tag: String,
    shared_instance: String,
    current_user: String,
}

/// The state of one call while its commands are generated.
struct CallContext<'m> {
    form: Form,
    tag: String,
    instances: Vec<String>,
    fault_rate: f64,
    heavy: Heavy,
    heavy_at: usize,
    size: usize,
    /// One command of this call may carry an expected_sequence that does not match.
    may_mismatch: bool,
    faults: Vec<Fault>,
    decoy_ids: Vec<String>,
    /// Aggregate states after the commands so far (over the model).
    running: HashMap<(String, String, String), (i64, String)>,
    model: &'m Model,
}

impl CallContext<'_> {
    fn fault(&mut self, codes: &'static [&'static str], note: String) {
        self.faults.push(Fault { codes, note });
    }

    fn big(&self) -> bool {
        self.size > 40
    }
}

fn pad(base: &str, bytes: usize, fill: char) -> String {
    let mut s = base.to_string();
    while s.len() + fill.len_utf8() <= bytes {
        s.push(fill);
    }
    while s.len() < bytes {
        s.push('x');
    }
    s
}

fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}

fn insert_at_char(rng: &mut Rng, base: &str, c: char) -> String {
    let boundaries: Vec<usize> = base.char_indices().map(|(i, _)| i).chain([base.len()]).collect();
    let at = rng.pick(&boundaries);
    format!("{}{c}{}", &base[..at], &base[at..])
}

impl Generator {
    fn new(seed: u64, current_user: String) -> Generator {
        let run_tag = format!("fz{seed:016x}");
        Generator { rng: Rng(seed), shared_instance: format!("{run_tag}-shared"), run_tag, current_user }
    }

    /// The edge cases every run covers, whatever the seed.
    fn prelude() -> Vec<Plan> {
        let plan = |form, size, heavy| Plan { form, size, fault_rate: 0.0, heavy, null_batch: false, damage: false };
        let mut plans = Vec::new();
        for form in FORMS {
            plans.push(plan(form, MAX_BATCH, Heavy::None));
            plans.push(plan(form, MAX_BATCH + 1, Heavy::None));
            plans.push(plan(form, MAX_BATCH, Heavy::BadLast));
            plans.push(plan(form, 3, Heavy::Deep(DEEP, 1)));
            plans.push(plan(form, 3, Heavy::Deep(DEEP, 2)));
            plans.push(plan(form, 1, Heavy::Deep(129, 3)));
            plans.push(plan(form, 1, Heavy::Deep(TOO_DEEP, 1)));
            plans.push(plan(form, 2, Heavy::Large(LARGE_PAYLOAD)));
            plans.push(plan(form, 2, Heavy::Large(TOO_LARGE_PAYLOAD)));
            for field in IDENTIFIERS {
                plans.push(plan(form, 2, Heavy::LongIdentifier(field)));
            }
            plans.push(plan(form, 0, Heavy::None));
            plans.push(Plan { null_batch: true, ..plan(form, 1, Heavy::None) });
            if form.json() {
                plans.push(plan(form, 1, Heavy::TopDeep(1000)));
            }
            if form == Form::Constructor || form == Form::JsonBinary {
                plans.push(plan(form, MAX_BATCH, Heavy::ManyInstances));
            }
        }
        plans
    }

    fn random_plan(&mut self) -> Plan {
        let rng = &mut self.rng;
        let form = rng.pick(&FORMS);
        let size = match rng.below(100) {
            0 => 0,
            1..=59 => rng.between(1, 4),
            60..=89 => rng.between(5, 40),
            90..=98 => rng.between(41, 400),
            _ => rng.between(401, 1500),
        };
        let fault_rate = rng.pick(&[0.0, 0.0, 0.0, 0.02, 0.02, 0.1, 0.1, 0.35]);
        let heavy = if size == 0 || size > 40 || !rng.chance(0.02) {
            Heavy::None
        } else {
            match rng.below(5) {
                0 => Heavy::Deep(rng.pick(&[129, 500, 2000]), rng.pick(&[1, 2, 3])),
                1 => Heavy::Large(rng.pick(&[LARGE_PAYLOAD, TOO_LARGE_PAYLOAD])),
                2 => Heavy::LongIdentifier(rng.pick(&IDENTIFIERS)),
                3 if form.json() => Heavy::TopDeep(rng.pick(&[129, 1000])),
                _ => Heavy::BadLast,
            }
        };
        let damage = form != Form::Constructor && form != Form::RowCast && rng.chance(0.03);
        Plan { form, size, fault_rate, heavy, null_batch: rng.chance(0.01), damage }
    }

    fn call(&mut self, number: usize, plan: &Plan, model: &Model) -> Call {
        let tag = format!("{}-{number}", self.run_tag);
        let mut cx = CallContext {
            form: plan.form,
            instances: vec![tag.clone(), format!("{tag}~b"), format!("{tag}~c")],
            tag,
            fault_rate: plan.fault_rate,
            heavy: plan.heavy,
            heavy_at: if plan.size == 0 { 0 } else { self.rng.below(plan.size) },
            size: plan.size,
            may_mismatch: self.rng.chance(0.15),
            faults: Vec::new(),
            decoy_ids: Vec::new(),
            running: HashMap::new(),
            model,
        };
        if let Heavy::BadLast = plan.heavy {
            cx.heavy_at = plan.size.saturating_sub(1);
        }
        let aggregate_pool = (plan.size / 2).clamp(1, 3000);
        let mut commands = Vec::with_capacity(plan.size);
        for k in 0..plan.size {
            commands.push(self.command(&mut cx, k, aggregate_pool));
        }
        let mut notes = Vec::new();
        if !matches!(plan.heavy, Heavy::None) {
            notes.push(format!("{:?}", plan.heavy));
        }
        if plan.fault_rate > 0.0 {
            notes.push(format!("fault rate {}", plan.fault_rate));
        }
        let mut whole = Whole::Batch;
        if plan.size == 0 {
            cx.fault(&[INVALID], "an empty batch".into());
        }
        if plan.size > MAX_BATCH {
            cx.fault(&[TOO_LARGE], format!("a batch of {}", plan.size));
        }
        if let Heavy::TopDeep(depth) = plan.heavy {
            whole = Whole::Replaced([vec![b'['; depth], vec![b']'; depth]].concat());
            cx.fault(&[INVALID], format!("the document is {depth} nested arrays"));
        } else if plan.null_batch {
            whole = Whole::SqlNull;
            cx.fault(&[NULL_VALUE], "the batch is SQL NULL".into());
        } else if plan.damage {
            whole = self.damage(&mut cx, plan.size);
        }
        let mut instance_ids: Vec<String> = commands.iter()
            .filter_map(|c| c.values[INSTANCE_ID].text().map(str::to_string))
            .chain(cx.instances.iter().cloned())
            .chain(cx.decoy_ids.iter().cloned())
            .chain([self.shared_instance.clone()])
            .filter(|s| !s.contains('\0'))
            .collect();
        instance_ids.sort();
        instance_ids.dedup();
        Call { number, form: plan.form, commands, whole, faults: cx.faults, instance_ids, notes }
    }

    /// Damage to the rendered argument (or, in JSON, a document that is not a batch).
    fn damage(&mut self, cx: &mut CallContext, size: usize) -> Whole {
        let whole = match self.rng.below(if cx.form.json() { 7 } else { 4 }) {
            0 => Whole::Truncated(self.rng.below(1 + size * 40)),
            1 => Whole::Prefixed(if cx.form.json() { b"\xef\xbb\xbf" } else { b"x" }),
            2 => Whole::Suffixed(if cx.form.json() { b"]" } else { b"x" }),
            3 => Whole::Prefixed(if cx.form.json() { b"\n\t " } else { b"[1:1]=" }),
            4 => Whole::Replaced(self.rng.pick(&[&b"{}"[..], b"null", b"42", b"\"[]\"", b"true"]).to_vec()),
            5 => Whole::Suffixed(b" \r\n"),
            _ => Whole::Suffixed(b"x"),
        };
        match &whole {
            Whole::Truncated(_) => cx.fault(&[BAD_SYNTAX, BAD_ENCODING], "the argument is cut short".into()),
            Whole::Prefixed(b"\n\t ") | Whole::Suffixed(b" \r\n") => {}
            Whole::Prefixed(b"[1:1]=") if size == 1 => {}
            Whole::Replaced(_) => cx.fault(&[INVALID], "the document is not an array".into()),
            other => cx.fault(&[BAD_SYNTAX], format!("the argument is damaged: {other:?}")),
        }
        whole
    }

    fn command(&mut self, cx: &mut CallContext, k: usize, aggregate_pool: usize) -> Command {
        let faults_before = cx.faults.len();
        let saved_rate = cx.fault_rate;
        if matches!(cx.heavy, Heavy::BadLast) && k == cx.heavy_at {
            cx.fault_rate = 0.5;
        }
        let instance = match cx.heavy {
            Heavy::ManyInstances => format!("{}~i{k}", cx.tag),
            _ if self.rng.chance(0.2) => self.shared_instance.clone(),
            _ => self.rng.pick(&cx.instances),
        };
        let aggregate_type = self.rng.pick(&["order", "user", "invoice", "ü-type"]).to_string();
        // The shared instance's few aggregates grow long sequences across calls.
        let pool = if instance == self.shared_instance { 6 } else { aggregate_pool };
        let aggregate_id = format!("a{}", self.rng.below(pool));
        let event_type = self.rng.pick(&["created", "renamed", "paid", "order.placed"]).to_string();
        let creator = self.rng.pick(&["alice", "bob", "système"]).to_string();
        let owner = self.rng.pick(&["org-1", "org-2", "ôwner"]).to_string();

        let mut values = vec![Value::Null; 9];
        values[INSTANCE_ID] = self.identifier(cx, k, INSTANCE_ID, &instance);
        values[AGGREGATE_TYPE] = self.identifier(cx, k, AGGREGATE_TYPE, &aggregate_type);
        values[AGGREGATE_ID] = self.identifier(cx, k, AGGREGATE_ID, &aggregate_id);
        values[EVENT_TYPE] = self.identifier(cx, k, EVENT_TYPE, &event_type);
        values[CREATOR] = if self.rng.chance(0.6) { self.unset(cx) } else { self.identifier(cx, k, CREATOR, &creator) };
        values[OWNER] = if self.rng.chance(0.6) { self.unset(cx) } else { self.identifier(cx, k, OWNER, &owner) };
        values[REVISION] = self.revision(cx, k);
        values[PAYLOAD] = self.payload(cx, k);
        if let (Heavy::LongIdentifier(field), true) = (cx.heavy, k == cx.heavy_at) {
            let base = values[field].text().unwrap_or("id").to_string();
            values[field] = Value::Text(pad(&base, 70_000, self.rng.pick(&FILLS)));
            cx.fault(&[TOO_LONG], format!("command {}: {} of 70 000 bytes", k + 1, FIELD_NAMES[field]));
        }

        let key = match (&values[INSTANCE_ID], &values[AGGREGATE_TYPE], &values[AGGREGATE_ID]) {
            (Value::Text(i), Value::Text(t), Value::Text(a)) => Some((i.clone(), t.clone(), a.clone())),
            _ => None,
        };
        let previous = key.as_ref().map(|key| {
            cx.running.get(key).or_else(|| cx.model.get(key)).map_or(0, |(sequence, _)| *sequence)
        });
        let (expected, mismatch) = self.expected_sequence(cx, k, previous);
        values[EXPECTED_SEQUENCE] = expected;

        let mut command = Command {
            shape: Shape::Object, values, decoys: Vec::new(), extra: Vec::new(), literal_fields: 9,
            predicted: None, mismatch,
        };
        self.command_faults(cx, k, &mut command);
        cx.fault_rate = saved_rate;
        if matches!(cx.heavy, Heavy::BadLast) && k == cx.heavy_at && cx.faults.len() == faults_before {
            command.values[EVENT_TYPE] = Value::Text(String::new());
            cx.fault(&[INVALID], format!("command {}: event_type is empty", k + 1));
        }

        if cx.faults.len() == faults_before {
            let key = key.expect("a good command has its identity");
            let (previous_owner, sequence) = match cx.running.get(&key).or_else(|| cx.model.get(&key)) {
                Some((sequence, owner)) => (Some(owner.clone()), *sequence),
                None => (None, 0),
            };
            let v = &command.values;
            let predicted = Predicted {
                instance_id: key.0.clone(),
                aggregate_type: key.1.clone(),
                aggregate_id: key.2.clone(),
                event_type: v[EVENT_TYPE].text().expect("a good event_type").to_string(),
                revision: v[REVISION].integer().map_or(1, |r| r as i16),
                payload: match &v[PAYLOAD] {
                    Value::Raw(json) => Some(String::from_utf8(json.clone()).expect("a good payload is UTF-8")),
                    _ => None,
                },
                creator: v[CREATOR].text().map_or(self.current_user.clone(), str::to_string),
                owner: v[OWNER].text().map(str::to_string).or(previous_owner).unwrap_or_else(|| key.0.clone()),
                sequence: sequence + 1,
            };
            cx.running.insert(key, (predicted.sequence, predicted.owner.clone()));
            command.predicted = Some(predicted);
        }
        command
    }

    /// NULL, or in JSON sometimes a missing key.
    fn unset(&mut self, cx: &CallContext) -> Value {
        if cx.form.json() && self.rng.chance(0.5) { Value::Absent } else { Value::Null }
    }

    fn dress(&mut self, base: &str) -> String {
        match self.rng.below(16) {
            0 | 1 => format!("{base}{}", self.rng.pick(ODD_BUT_VALID)),
            2 => pad(base, MAX_IDENTIFIER_BYTES, self.rng.pick(&FILLS)),
            _ => base.to_string(),
        }
    }

    fn identifier(&mut self, cx: &mut CallContext, k: usize, field: usize, base: &str) -> Value {
        if !self.rng.chance(cx.fault_rate) {
            return Value::Text(self.dress(base));
        }
        let required = field <= EVENT_TYPE;
        let json = cx.form.json();
        let rng = &mut self.rng;
        let (value, codes): (Value, &'static [&'static str]) = match rng.below(if json { 11 } else { 7 }) {
            0 => (if json && rng.chance(0.5) { Value::Absent } else { Value::Null },
                  if required { &[NULL_VALUE] } else { &[] }),
            1 => (Value::Text(String::new()), &[INVALID]),
            2 => (Value::Text(pad(base, MAX_IDENTIFIER_BYTES + 1, rng.pick(&FILLS))), &[TOO_LONG]),
            3 => {
                let bytes = if cx.big() { MAX_IDENTIFIER_BYTES + 1 } else { rng.between(69_000, 71_000) };
                (Value::Text(pad(base, bytes, rng.pick(&FILLS))), &[TOO_LONG])
            }
            4 => {
                let control = rng.pick(CONTROLS);
                (Value::Text(insert_at_char(rng, base, control)), &[INVALID])
            }
            // NUL: a text parameter cannot carry it; JSON's \u0000 cannot become text.
            5 => (Value::Text(insert_at_char(rng, base, '\0')), if json { &[UNTRANSLATABLE] } else { &[BAD_ENCODING] }),
            6 => {
                let bad = rng.pick(NOT_UTF8);
                let bytes = if json { [b"\"", base.as_bytes(), bad, b"\""].concat() } else { [base.as_bytes(), bad].concat() };
                (Value::Raw(bytes), &[BAD_ENCODING])
            }
            7 => (Value::Raw(rng.pick(&["7", "true", "[]", "{}", "1.5", "[\"a\"]", "{\"a\": 1}"]).into()), &[INVALID]),
            8 => (Value::Raw(format!("\"{base}\u{1}\"").into_bytes()), &[BAD_SYNTAX]),
            9 => (Value::Raw(format!("\"{base}{}\"", rng.pick(&["\\x41", "\\u12", "\\uZZZZ", "\\ud800", "\\udc00", "\\ud800\\u0041", "\\"])).into_bytes()),
                  &[BAD_SYNTAX]),
            _ => (Value::Raw([b"\"", base.as_bytes(), b"\0\""].concat()), &[BAD_ENCODING]),
        };
        if !codes.is_empty() {
            cx.fault(codes, format!("command {}: {} = {}", k + 1, FIELD_NAMES[field], value.describe()));
        }
        value
    }

    fn revision(&mut self, cx: &mut CallContext, k: usize) -> Value {
        let json = cx.form.json();
        if !self.rng.chance(cx.fault_rate) {
            return match self.rng.below(10) {
                0 => self.unset(cx),
                1 => Value::Int(1),
                2 => Value::Int(i16::MAX as i64),
                3 if json => self.rng.pick(&[Value::Spelled("5.0", 5), Value::Spelled("5e0", 5), Value::Spelled("50e-1", 5), Value::Spelled("0.5E1", 5)]),
                3 => self.rng.pick(&[Value::Spelled(" 5", 5), Value::Spelled("+5", 5), Value::Spelled("05", 5), Value::Spelled("5 ", 5)]),
                _ => Value::Int(self.rng.between(1, 5) as i64),
            };
        }
        let rng = &mut self.rng;
        let (value, codes): (Value, &'static [&'static str]) = if json {
            match rng.below(3) {
                0 => (Value::Int(rng.pick(&[0, -1, 32768, i64::MAX, i64::MIN])), &[INVALID]),
                _ => (Value::Raw(rng.pick(&["1.5", "\"1\"", "true", "[1]", "{}", "1e30", "1e1000", "-0.0", "32767.5"]).into()), &[INVALID]),
            }
        } else {
            match rng.below(4) {
                0 => (Value::Int(rng.pick(&[0, -1, -32768])), &[INVALID]),
                1 => (Value::Int(rng.pick(&[32768, 3_000_000_000, i64::MAX, i64::MIN])), &[OUT_OF_RANGE]),
                2 => (Value::Raw(rng.pick(&["abc", "3.0", "", "1e3", "- 1"]).into()), &[BAD_SYNTAX]),
                _ => (Value::Raw([b"1".as_slice(), rng.pick(NOT_UTF8)].concat()), &[BAD_ENCODING]),
            }
        };
        cx.fault(codes, format!("command {}: revision = {}", k + 1, value.describe()));
        value
    }

    fn payload(&mut self, cx: &mut CallContext, k: usize) -> Value {
        if k == cx.heavy_at {
            match cx.heavy {
                Heavy::Deep(depth, kind) => {
                    let mut json = b"{\"deep\": ".to_vec();
                    for level in 0..depth {
                        let array = kind == 1 || (kind == 3 && level % 2 == 0);
                        json.extend_from_slice(if array { b"[" } else { b"{\"a\": " });
                    }
                    json.extend_from_slice(b"1");
                    for level in (0..depth).rev() {
                        let array = kind == 1 || (kind == 3 && level % 2 == 0);
                        json.push(if array { b']' } else { b'}' });
                    }
                    json.push(b'}');
                    if depth > DEEP {
                        cx.fault(&[STACK_DEPTH], format!("command {}: payload nested {depth} deep", k + 1));
                    }
                    return Value::Raw(json);
                }
                Heavy::Large(bytes) => {
                    let blob: String = (0..bytes).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                    if bytes > LARGE_PAYLOAD {
                        cx.fault(&[TOO_LARGE], format!("command {}: payload of {bytes} bytes", k + 1));
                    }
                    return Value::Raw(format!("{{\"blob\": \"{blob}\"}}").into_bytes());
                }
                _ => {}
            }
        }
        if !self.rng.chance(cx.fault_rate) {
            return if self.rng.chance(0.25) { self.unset(cx) } else { Value::Raw(self.json_object(0)) };
        }
        let rng = &mut self.rng;
        let json = cx.form.json();
        let (value, codes): (Value, &'static [&'static str]) = match rng.below(7) {
            0 => {
                let scalar = if json { rng.pick(&["[]", "[1]", "\"s\"", "42", "true"]) } else { rng.pick(&["[]", "[1]", "\"s\"", "42", "true", "null"]) };
                (Value::Raw(scalar.into()), &[INVALID])
            }
            1 => (Value::Raw(rng.pick(&["{", "{\"a\":}", "{'a':1}", "{\"a\":1,}", "{\"a\":NaN}", "{\"a\":Infinity}", "{\"a\":01}",
                                        "{\"a\":.5}", "{a:1}", "{\"a\":\"\\x\"}", "{\"a\":\"\\ud800\"}", "{\"a\":\"x\u{1}y\"}", "{\"a\" 1}"]).into()),
                  &[BAD_SYNTAX]),
            2 if !json => (Value::Raw(rng.pick(&["", " ", "nul"]).into()), &[BAD_SYNTAX]),
            3 => (Value::Raw("{\"a\": \"\\u0000\"}".into()), &[UNTRANSLATABLE]),
            4 => (Value::Raw([b"{\"a\": \"".as_slice(), rng.pick(NOT_UTF8), b"\"}"].concat()), &[BAD_ENCODING]),
            _ => (Value::Raw(rng.pick(&["{\"a\": 1e1000000}", "{\"a\": 1e-20000}", "{\"a\": -1e200000}"]).into()), &[OUT_OF_RANGE]),
        };
        cx.fault(codes, format!("command {}: payload = {}", k + 1, value.describe()));
        value
    }

    /// Returns the value and whether a good command would not match.
    fn expected_sequence(&mut self, cx: &mut CallContext, k: usize, previous: Option<i64>) -> (Value, bool) {
        let json = cx.form.json();
        if !self.rng.chance(cx.fault_rate) {
            return match (self.rng.below(40), previous) {
                (0..=23, _) | (_, None) => (self.unset(cx), false),
                (24..=35, Some(p)) => (Value::Int(p), false),
                (36, Some(0)) if json => (Value::Spelled("-0", 0), false),
                (36, Some(0)) => (Value::Spelled("+0", 0), false),
                (37 | 38, Some(p)) if cx.may_mismatch => {
                    cx.may_mismatch = false;
                    let wrong = self.rng.pick(&[p + 1, p + 2, i64::MAX, if p > 0 { 0 } else { 1 }]);
                    (Value::Int(wrong), true)
                }
                (_, Some(p)) => (Value::Int(p), false),
            };
        }
        let rng = &mut self.rng;
        let (value, codes): (Value, &'static [&'static str]) = if json {
            match rng.below(2) {
                0 => (Value::Int(rng.pick(&[-1, i64::MIN])), &[INVALID]),
                _ => (Value::Raw(rng.pick(&["1.5", "\"3\"", "1e30", "9223372036854775808", "true", "[0]"]).into()), &[INVALID]),
            }
        } else {
            match rng.below(4) {
                0 => (Value::Int(rng.pick(&[-1, i64::MIN])), &[INVALID]),
                1 => (Value::Raw(rng.pick(&["9223372036854775808", "-9223372036854775809"]).into()), &[OUT_OF_RANGE]),
                2 => (Value::Raw(rng.pick(&["x", "1.0", "", "1e3"]).into()), &[BAD_SYNTAX]),
                _ => (Value::Raw([b"0".as_slice(), rng.pick(NOT_UTF8)].concat()), &[BAD_ENCODING]),
            }
        };
        cx.fault(codes, format!("command {}: expected_sequence = {}", k + 1, value.describe()));
        (value, false)
    }

    /// Faults of the command as a whole, unknown fields, and (good) repeated keys.
    fn command_faults(&mut self, cx: &mut CallContext, k: usize, command: &mut Command) {
        let rate = cx.fault_rate;
        if self.rng.chance(rate / 3.0) {
            match (cx.form, self.rng.below(2)) {
                (Form::ArrayLiteral, 0) => {
                    command.literal_fields = self.rng.pick(&[8, 10]);
                    cx.fault(&[BAD_SYNTAX], format!("command {}: a record literal of {} fields", k + 1, command.literal_fields));
                }
                (form, _) if form.json() && self.rng.chance(0.7) => {
                    let token = self.rng.pick(&["null", "42", "\"x\"", "[]", "[{}]", "true"]);
                    command.shape = if token == "null" { Shape::Null } else { Shape::Token(token) };
                    cx.fault(&[INVALID], format!("command {}: {token} instead of an object", k + 1));
                }
                (form, _) => {
                    command.shape = Shape::Null;
                    cx.fault(if form.json() { &[INVALID] } else { &[NULL_VALUE] }, format!("command {}: NULL", k + 1));
                }
            }
        }
        if !cx.form.json() {
            return;
        }
        if self.rng.chance(rate / 3.0) {
            let key = match self.rng.below(4) {
                0 => self.rng.pick(&["expectedSequence", "Instance_id", "instance_id ", "", "sequence", "position", "__proto__", "日本", "a\u{1}b"]).to_string(),
                1 => pad("k", if cx.big() { 600 } else { 70_000 }, 'k'),
                2 => "payload2".into(),
                _ => "aggregateId".into(),
            };
            let mut raw = Vec::new();
            self.json_string(&mut raw, &key, true);
            cx.fault(&[INVALID], format!("command {}: unknown field {:?}", k + 1, truncate(&key, 30)));
            command.extra.push((raw, self.rng.pick(&["1", "null", "\"x\"", "{}", "[]"])));
        }
        if self.rng.chance(0.05) {
            let field = self.rng.below(9);
            if field == INSTANCE_ID {
                cx.decoy_ids.push(format!("{}-decoy", cx.tag));
            }
            command.decoys.push(field);
        }
    }

    // ---- rendering

    /// A random, valid JSON object (the payload).
    fn json_object(&mut self, depth: usize) -> Vec<u8> {
        let mut out = b"{".to_vec();
        for i in 0..self.rng.below(5) {
            if i > 0 {
                out.push(b',');
            }
            let key = self.random_string();
            self.json_string(&mut out, &key, true);
            out.extend_from_slice(b": ");
            let value = self.json_value(depth + 1);
            out.extend_from_slice(&value);
        }
        out.push(b'}');
        out
    }

    fn json_value(&mut self, depth: usize) -> Vec<u8> {
        match self.rng.below(8) {
            0 if depth < 4 => self.json_object(depth),
            1 if depth < 4 => {
                let mut out = b"[".to_vec();
                for i in 0..self.rng.below(4) {
                    if i > 0 {
                        out.push(b',');
                    }
                    let value = self.json_value(depth + 1);
                    out.extend_from_slice(&value);
                }
                out.push(b']');
                out
            }
            2 | 3 => {
                let s = self.random_string();
                let mut out = Vec::new();
                self.json_string(&mut out, &s, true);
                out
            }
            4 | 5 => self.rng.pick(&[
                "0", "-0", "1", "-1", "3.14", "1e10", "1E-10", "-2.5e+300", "9223372036854775807",
                "9223372036854775808", "-9223372036854775809", "18446744073709551616", "1.0", "1.00",
                "123456789012345678901234567890.123456789012345678901234567890", "0.000001", "1e-16383",
                "1e1000", "-0.0",
            ]).into(),
            6 => self.rng.pick(&["true", "false"]).into(),
            _ => b"null".to_vec(),
        }
    }

    fn random_string(&mut self) -> String {
        const POOL: &[char] = &['a', 'b', 'z', 'A', '0', ' ', '"', '\\', '/', '\u{1}', '\n', '\t', 'é', '日', '😀',
            '\u{7f}', '\u{2028}', '\u{FEFF}', '\u{FFFF}', '\'', '{', '['];
        (0..self.rng.below(12)).map(|_| self.rng.pick(POOL)).collect()
    }

    /// A JSON string for `s`, with escapes chosen at random when `fancy` (every spelling
    /// decodes to `s`: \uXXXX, surrogate pairs, \/).
    fn json_string(&mut self, out: &mut Vec<u8>, s: &str, fancy: bool) {
        out.push(b'"');
        for c in s.chars() {
            let escape = fancy && (self.rng.chance(0.02) || (!c.is_ascii() && self.rng.chance(0.3)));
            match c {
                '"' if !escape => out.extend_from_slice(b"\\\""),
                '\\' if !escape => out.extend_from_slice(b"\\\\"),
                '\n' if !escape => out.extend_from_slice(b"\\n"),
                '/' if fancy && self.rng.chance(0.3) => out.extend_from_slice(b"\\/"),
                c if escape || (c as u32) < 0x20 || c == '"' || c == '\\' => {
                    let mut units = [0u16; 2];
                    let upper = self.rng.chance(0.5);
                    for unit in c.encode_utf16(&mut units) {
                        let hex = if upper { format!("\\u{unit:04X}") } else { format!("\\u{unit:04x}") };
                        out.extend_from_slice(hex.as_bytes());
                    }
                }
                c => {
                    let mut buffer = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                }
            }
        }
        out.push(b'"');
    }

    fn space(&mut self, out: &mut Vec<u8>, fancy: bool) {
        if fancy && self.rng.chance(0.2) {
            out.extend_from_slice(self.rng.pick(&[&b" "[..], b"\n", b"\t", b"\r\n  "]));
        }
    }

    fn json_document(&mut self, call: &Call) -> Vec<u8> {
        let fancy = self.rng.chance(0.3);
        let mut out = b"[".to_vec();
        for (k, command) in call.commands.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            self.space(&mut out, fancy);
            match &command.shape {
                Shape::Null => out.extend_from_slice(b"null"),
                Shape::Token(token) => out.extend_from_slice(token.as_bytes()),
                Shape::Object => self.json_command(&mut out, command, call, fancy),
            }
            self.space(&mut out, fancy);
        }
        out.push(b']');
        out
    }

    fn json_command(&mut self, out: &mut Vec<u8>, command: &Command, call: &Call, fancy: bool) {
        let mut decoys = Vec::new();
        for &field in &command.decoys {
            if let Value::Absent = command.values[field] {
                continue; // a decoy alone would be the value
            }
            let mut entry = Vec::new();
            self.json_string(&mut entry, FIELD_NAMES[field], fancy);
            entry.extend_from_slice(b": ");
            if field == INSTANCE_ID {
                let decoy = format!("{}-{}-decoy", self.run_tag, call.number);
                self.json_string(&mut entry, &decoy, false);
            } else {
                entry.extend_from_slice(self.rng.pick(&["\"junk\"", "-7", "null", "[1]", "{\"a\": 1}", "true"]).as_bytes());
            }
            decoys.push(entry);
        }
        let mut entries = Vec::new();
        for (field, value) in command.values.iter().enumerate() {
            let mut entry = Vec::new();
            self.json_string(&mut entry, FIELD_NAMES[field], fancy);
            entry.extend_from_slice(b": ");
            match value {
                Value::Absent => continue,
                Value::Null => entry.extend_from_slice(b"null"),
                Value::Text(s) => self.json_string(&mut entry, s, fancy),
                Value::Int(n) => entry.extend_from_slice(n.to_string().as_bytes()),
                Value::Spelled(s, _) => entry.extend_from_slice(s.as_bytes()),
                Value::Raw(bytes) => entry.extend_from_slice(bytes),
            }
            entries.push(entry);
        }
        for (key, value) in &command.extra {
            entries.push([key.as_slice(), b": ", value.as_bytes()].concat());
        }
        if self.rng.chance(0.3) {
            for i in (1..entries.len()).rev() {
                let j = self.rng.below(i + 1);
                entries.swap(i, j);
            }
        }
        out.push(b'{');
        for (i, entry) in decoys.iter().chain(entries.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            self.space(out, fancy);
            out.extend_from_slice(entry);
        }
        out.push(b'}');
    }

    fn array_literal(&mut self, call: &Call) -> Vec<u8> {
        fn quoted(out: &mut Vec<u8>, bytes: &[u8]) {
            out.push(b'"');
            for &b in bytes {
                if b == b'"' || b == b'\\' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        }
        let fancy = self.rng.chance(0.3);
        let mut out = b"{".to_vec();
        for (k, command) in call.commands.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            self.space(&mut out, fancy);
            if let Shape::Null = command.shape {
                out.extend_from_slice(b"NULL");
                continue;
            }
            let mut record = b"(".to_vec();
            for field in 0..command.literal_fields {
                if field > 0 {
                    record.push(b',');
                }
                let value = command.values.get(field).cloned().unwrap_or(Value::Text("extra".into()));
                if let Some(bytes) = value.as_text_bytes() {
                    quoted(&mut record, &bytes);
                }
            }
            record.push(b')');
            quoted(&mut out, &record);
            self.space(&mut out, fancy);
        }
        out.push(b'}');
        out
    }

    /// The call's arguments as sent.
    fn render(&mut self, call: &Call) -> Arguments {
        if !matches!(call.form, Form::ArrayLiteral) && !call.form.json() {
            let mut fields: Vec<Vec<Option<Raw>>> = (0..9).map(|_| Vec::with_capacity(call.commands.len())).collect();
            for command in &call.commands {
                for (field, value) in command.values.iter().enumerate() {
                    fields[field].push(value.as_text_bytes().map(Raw));
                }
            }
            let nulls = call.commands.iter().map(|c| matches!(c.shape, Shape::Null)).collect();
            return Arguments::Composite { fields, nulls, batch_is_null: matches!(call.whole, Whole::SqlNull) };
        }
        let rendered = match &call.whole {
            Whole::SqlNull => return Arguments::One(None),
            Whole::Replaced(document) => return Arguments::One(Some(Raw(document.clone()))),
            _ if call.form.json() => self.json_document(call),
            _ => self.array_literal(call),
        };
        let damaged = match &call.whole {
            Whole::Truncated(at) => rendered[..(*at).min(rendered.len().saturating_sub(1))].to_vec(),
            Whole::Prefixed(prefix) if *prefix == b"[1:1]=" && call.commands.len() != 1 => [*prefix, &rendered[..]].concat(),
            Whole::Prefixed(prefix) => [*prefix, &rendered[..]].concat(),
            Whole::Suffixed(suffix) => [&rendered[..], *suffix].concat(),
            _ => rendered,
        };
        Arguments::One(Some(Raw(damaged)))
    }
}

/// Bytes sent as they are, as text (or in jsonb's binary format: a version byte, then the
/// text), so that invalid UTF-8 reaches the server, as a careless driver could send it.
#[derive(Debug, Clone)]
struct Raw(Vec<u8>);

impl ToSql for Raw {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.extend_from_slice(&[1]);
        }
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TEXT || *ty == Type::JSONB
    }

    to_sql_checked!();
}

enum Arguments {
    Composite { fields: Vec<Vec<Option<Raw>>>, nulls: Vec<bool>, batch_is_null: bool },
    One(Option<Raw>),
}

// -------------------------------------------------------------------------------------------
// Running and checking

struct Session {
    client: Client,
    push: HashMap<Form, Statement>,
    count: Statement,
    stored: Statement,
}

impl Session {
    fn open() -> Session {
        let mut client = common::connect();
        // A hang becomes a 57014, which the checks refuse.
        client.batch_execute("SET statement_timeout = '60s'").unwrap();
        let push = FORMS.iter().map(|&form| (form, client.prepare(&form.sql()).unwrap())).collect();
        let count = client.prepare("SELECT count(*) FROM eventstore.events WHERE instance_id = ANY($1::text[])").unwrap();
        let stored = client.prepare(
            "SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.revision,
                    e.creator, e.owner, e.in_tx_order, e.payload IS NOT DISTINCT FROM x.payload::jsonb
               FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS x(position, payload, n)
               LEFT JOIN eventstore.events e ON e.position = x.position
              ORDER BY x.n").unwrap();
        Session { client, push, count, stored }
    }

    fn count(&mut self, instance_ids: &[String]) -> i64 {
        self.client.query_one(&self.count, &[&instance_ids]).unwrap().get(0)
    }

    fn push(&mut self, form: Form, arguments: &Arguments) -> Result<Vec<Row>, postgres::Error> {
        let statement = &self.push[&form];
        match arguments {
            Arguments::Composite { fields, nulls, batch_is_null } => self.client.query(statement, &[
                &fields[0], &fields[1], &fields[2], &fields[3], &fields[4], &fields[5], &fields[6],
                &fields[7], &fields[8], nulls, batch_is_null,
            ]),
            Arguments::One(argument) => self.client.query(statement, &[argument]),
        }
    }
}

struct Violation {
    kind: &'static str,
    what: String,
    call: String,
}

#[derive(Default)]
struct Tally {
    calls: usize,
    commands: usize,
    succeeded: usize,
    failed: usize,
    events_written: i64,
    codes: BTreeMap<String, usize>,
    violations: Vec<Violation>,
}

impl Tally {
    fn violation(&mut self, kind: &'static str, what: String, call: &Call) {
        self.violations.push(Violation { kind, what, call: call.summary() });
    }
}

fn run_one(session: &mut Session, generator: &mut Generator, call: &Call, model: &mut Model, tally: &mut Tally) {
    let arguments = generator.render(call);
    let before = session.count(&call.instance_ids);
    let result = session.push(call.form, &arguments);
    drop(arguments);
    tally.calls += 1;
    tally.commands += call.commands.len();
    match result {
        Ok(rows) => {
            tally.succeeded += 1;
            *tally.codes.entry("ok".into()).or_default() += 1;
            check_success(session, call, &rows, before, model, tally);
        }
        Err(error) => {
            tally.failed += 1;
            check_failure(session, call, &error, before, tally);
        }
    }
}

fn check_success(session: &mut Session, call: &Call, rows: &[Row], before: i64, model: &mut Model, tally: &mut Tally) {
    if let Expect::Failure(codes) = call.expect() {
        tally.violation("bad input accepted", format!("expected one of {codes:?}, the push succeeded"), call);
    }
    let after = session.count(&call.instance_ids);
    tally.events_written += after - before;
    if after - before != call.commands.len() as i64 || rows.len() != call.commands.len() {
        tally.violation("wrong number of events", format!(
            "{} commands, {} rows returned, {} rows written", call.commands.len(), rows.len(), after - before), call);
    }
    let mut problems = Vec::new();
    let positions: Vec<i64> = rows.iter().map(|r| r.get(4)).collect();
    if !positions.windows(2).all(|w| w[0] < w[1]) {
        problems.push("positions do not grow in command order".to_string());
    }
    for (k, row) in rows.iter().enumerate() {
        let in_tx_order: i32 = row.get(5);
        if in_tx_order != k as i32 {
            problems.push(format!("row {k} has in_tx_order {in_tx_order}"));
        }
        let Some(predicted) = call.commands.get(k).and_then(|c| c.predicted.as_ref()) else { continue };
        let returned = (row.get::<_, String>(0), row.get::<_, String>(1), row.get::<_, String>(2), row.get::<_, i64>(3), row.get::<_, String>(6));
        let expected = (predicted.instance_id.clone(), predicted.aggregate_type.clone(), predicted.aggregate_id.clone(),
            predicted.sequence, predicted.owner.clone());
        if returned != expected {
            problems.push(format!("command {}: returned {:?}, expected {:?}", k + 1, abbreviate(&returned), abbreviate(&expected)));
        }
    }
    let payloads: Vec<Option<String>> = call.commands.iter()
        .map(|c| c.predicted.as_ref().and_then(|p| p.payload.clone()))
        .collect();
    let stored = session.client.query(&session.stored, &[&positions, &payloads]).unwrap();
    for (k, row) in stored.iter().enumerate() {
        let Some(predicted) = call.commands.get(k).and_then(|c| c.predicted.as_ref()) else { continue };
        let Some(instance_id) = row.get::<_, Option<String>>(0) else {
            problems.push(format!("command {}: no event at position {}", k + 1, positions[k]));
            continue;
        };
        let got = Predicted {
            instance_id,
            aggregate_type: row.get(1),
            aggregate_id: row.get(2),
            sequence: row.get(3),
            event_type: row.get(4),
            revision: row.get(5),
            creator: row.get(6),
            owner: row.get(7),
            payload: predicted.payload.clone(),
        };
        if &got != predicted {
            problems.push(format!("command {}: stored {:?}, expected {:?}", k + 1, abbreviate(&got), abbreviate(predicted)));
        }
        if row.get::<_, i32>(8) != k as i32 {
            problems.push(format!("command {}: stored in_tx_order {}", k + 1, row.get::<_, i32>(8)));
        }
        if !row.get::<_, bool>(9) {
            problems.push(format!("command {}: the stored payload differs from the one sent", k + 1));
        }
    }
    if !problems.is_empty() {
        let more = if problems.len() > 3 { format!(" (and {} more)", problems.len() - 3) } else { String::new() };
        tally.violation("stored events differ", format!("{}{more}", problems[..problems.len().min(3)].join("; ")), call);
    }
    for row in rows {
        model.insert((row.get(0), row.get(1), row.get(2)), (row.get(3), row.get(6)));
    }
}

fn abbreviate(value: &impl std::fmt::Debug) -> String {
    let text = format!("{value:?}");
    if text.len() > 300 { format!("{}…", truncate(&text, 300)) } else { text }
}

fn check_failure(session: &mut Session, call: &Call, error: &postgres::Error, before: i64, tally: &mut Tally) {
    let Some(db) = error.as_db_error() else {
        *tally.codes.entry("connection lost".into()).or_default() += 1;
        tally.violation("connection lost", error.to_string(), call);
        *session = Session::open();
        if session.count(&call.instance_ids) != before {
            tally.violation("failed call wrote rows", "rows appeared after the connection was lost".into(), call);
        }
        return;
    };
    let code = db.code().code();
    *tally.codes.entry(code.to_string()).or_default() += 1;
    let what = format!("{code}: {} (detail: {})", truncate(db.message(), 200), truncate(db.detail().unwrap_or(""), 200));
    if FORBIDDEN_CLASSES.iter().any(|class| code.starts_with(class)) {
        tally.violation("forbidden SQLSTATE", what.clone(), call);
    } else {
        match call.expect() {
            Expect::Success => tally.violation("good input refused", what.clone(), call),
            Expect::Failure(codes) if !codes.contains(&code) => {
                tally.violation("unexpected SQLSTATE", format!("expected one of {codes:?}, got {what}"), call)
            }
            Expect::Failure(_) => {}
        }
    }
    if db.routine() == Some("eventstore") && (db.message().is_empty() || db.detail().unwrap_or("").is_empty()) {
        tally.violation("error without message or detail", what.clone(), call);
    }
    if code == MISMATCH && !db.detail().unwrap_or("").contains("expected sequence") {
        tally.violation("40001 without the expected and actual sequence", what.clone(), call);
    }
    if let Err(e) = session.client.query_one("SELECT 1", &[]) {
        tally.violation("connection lost after the error", e.to_string(), call);
        *session = Session::open();
    }
    let after = session.count(&call.instance_ids);
    if after != before {
        tally.violation("failed call wrote rows", format!("{} rows before, {after} after: {what}", before), call);
    }
}

/// Every aggregate this run wrote has sequences 1..n in position order.
fn check_gapless(session: &mut Session, run_tag: &str) -> (i64, i64, i64) {
    let row = session.client.query_one(
        "SELECT count(*), count(*) FILTER (WHERE sequence <> rank),
                count(DISTINCT (instance_id, aggregate_type, aggregate_id))
           FROM (SELECT instance_id, aggregate_type, aggregate_id, sequence,
                        row_number() OVER (PARTITION BY instance_id, aggregate_type, aggregate_id ORDER BY position) AS rank
                   FROM eventstore.events WHERE starts_with(instance_id, $1)) s",
        &[&run_tag],
    ).unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// The server log's size, when the cluster writes `server.log` in its data directory (as
/// scripts/cluster.sh does) and we may read it.
fn server_log_size(client: &mut Client) -> Option<i64> {
    client.query_one("SELECT (pg_stat_file('server.log', true)).size", &[]).ok()?.get(0)
}

fn server_log_crashes(client: &mut Client, from: i64) -> Option<Vec<String>> {
    let size = server_log_size(client)?;
    let bytes: Vec<u8> = client
        .query_one("SELECT pg_read_binary_file('server.log', $1, $2)", &[&from, &(size - from)])
        .ok()?
        .get(0);
    let text = String::from_utf8_lossy(&bytes);
    Some(text.lines()
        .filter(|l| ["terminated by signal", "PANIC:", "was terminated by exception", "server processes terminated",
                     "database system was interrupted", "in recovery mode"].iter().any(|m| l.contains(m)))
        .map(|l| truncate(l, 200))
        .collect())
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn fuzzed_input_never_crashes_never_writes_partially_and_always_gets_a_clean_error() {
    let seed: u64 = env_number("EVENTSTORE_FUZZ_SEED").unwrap_or_else(|| {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        Rng(nanos).next()
    });
    let random_calls: usize = env_number("EVENTSTORE_FUZZ_CALLS").unwrap_or(DEFAULT_CALLS);
    let budget = Duration::from_secs(env_number("EVENTSTORE_FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS));
    println!("fuzz seed: {seed} (replay with EVENTSTORE_FUZZ_SEED={seed})");

    let mut sentinel = common::connect();
    let log_start = server_log_size(&mut sentinel);
    let mut session = Session::open();
    let current_user: String = session.client.query_one("SELECT current_user::text", &[]).unwrap().get(0);
    let mut generator = Generator::new(seed, current_user);
    let mut model = Model::new();
    let mut tally = Tally::default();
    let started = Instant::now();

    let prelude = Generator::prelude();
    for (number, plan) in prelude.iter().enumerate() {
        let call = generator.call(number, plan, &model);
        run_one(&mut session, &mut generator, &call, &mut model, &mut tally);
    }
    let prelude_time = started.elapsed();
    let random_started = Instant::now();
    let mut random_done = 0;
    for number in prelude.len()..prelude.len() + random_calls {
        if random_started.elapsed() > budget {
            println!("time budget of {budget:?} reached after {random_done} random calls");
            break;
        }
        let plan = generator.random_plan();
        let call = generator.call(number, &plan, &model);
        run_one(&mut session, &mut generator, &call, &mut model, &mut tally);
        random_done += 1;
    }

    let (events, out_of_order, aggregates) = check_gapless(&mut session, &generator.run_tag);
    if out_of_order != 0 {
        tally.violations.push(Violation { kind: "sequence gap", call: "(whole run)".into(),
            what: format!("{out_of_order} of {events} events are not at sequence = their rank in position order") });
    }
    if events != tally.events_written {
        tally.violations.push(Violation { kind: "stray events", call: "(whole run)".into(),
            what: format!("{events} events under this run's instances, {} written by successful calls", tally.events_written) });
    }
    if let Err(e) = sentinel.query_one("SELECT 1", &[]) {
        tally.violations.push(Violation { kind: "connection lost", call: "(sentinel)".into(),
            what: format!("the connection opened first no longer answers, a backend crashed: {e}") });
    }
    let crashes = log_start.and_then(|from| server_log_crashes(&mut sentinel, from));
    if let Some(lines) = &crashes {
        if !lines.is_empty() {
            tally.violations.push(Violation { kind: "crash in the server log", call: "(server log)".into(), what: lines.join("\n      ") });
        }
    }

    println!(
        "{} calls ({} prelude in {:.1?}, {random_done} random) with {} commands in {:.1?}: {} succeeded, {} failed",
        tally.calls, prelude.len(), prelude_time, tally.commands, started.elapsed(), tally.succeeded, tally.failed,
    );
    println!("outcomes: {:?}", tally.codes);
    println!("{events} events in {aggregates} aggregates written, sequences checked gapless; server log {}",
        match crashes { Some(_) => "checked", None => "not readable, skipped" });
    if tally.violations.is_empty() {
        return;
    }
    let mut kinds: BTreeMap<&str, Vec<&Violation>> = BTreeMap::new();
    for v in &tally.violations {
        kinds.entry(v.kind).or_default().push(v);
    }
    for (kind, list) in &kinds {
        println!("\nVIOLATION {kind}: {} calls", list.len());
        for v in list.iter().take(3) {
            println!("  {}\n    {}", v.call, v.what);
        }
    }
    panic!("{} violations (seed {seed}): {}", tally.violations.len(),
        kinds.iter().map(|(k, l)| format!("{k} ×{}", l.len())).collect::<Vec<_>>().join(", "));
}
