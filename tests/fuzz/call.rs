//! What a fuzzed call is: the documented limits and SQLSTATEs it is checked against, the
//! fields of a command, the six forms a client can call push in, and a call with the commands,
//! faults and prediction the generator gave it.

use std::collections::HashMap;

/// The documented limits (README, "Errors").
pub(crate) const MAX_BATCH: usize = 10_000;
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 512;
/// A payload comfortably under 1 MiB of jsonb, and one comfortably over.
pub(crate) const LARGE_PAYLOAD: usize = 900_000;
pub(crate) const TOO_LARGE_PAYLOAD: usize = 1_100_000;
/// Nesting PostgreSQL's own JSON parser accepts (its stack check refuses far deeper).
pub(crate) const DEEP: usize = 10_000;
pub(crate) const TOO_DEEP: usize = 100_000;

// SQLSTATEs a bad input may call for.
pub(crate) const NULL_VALUE: &str = "22004";
pub(crate) const INVALID: &str = "22023";
pub(crate) const TOO_LONG: &str = "22001";
pub(crate) const TOO_LARGE: &str = "54000";
pub(crate) const MISMATCH: &str = "ES409";
pub(crate) const BAD_SYNTAX: &str = "22P02";
pub(crate) const UNTRANSLATABLE: &str = "22P05";
pub(crate) const BAD_ENCODING: &str = "22021";
pub(crate) const OUT_OF_RANGE: &str = "22003";
pub(crate) const STACK_DEPTH: &str = "54001";
/// Never acceptable: internal errors (XX), insufficient resources (53), operator
/// intervention (57, which includes a statement timeout: a hang), system errors (58).
pub(crate) const FORBIDDEN_CLASSES: [&str; 4] = ["XX", "53", "57", "58"];

// The fields of eventstore.command, in its order.
pub(crate) const INSTANCE_ID: usize = 0;
pub(crate) const AGGREGATE_TYPE: usize = 1;
pub(crate) const AGGREGATE_ID: usize = 2;
pub(crate) const EVENT_TYPE: usize = 3;
pub(crate) const REVISION: usize = 4;
pub(crate) const PAYLOAD: usize = 5;
pub(crate) const CREATOR: usize = 6;
pub(crate) const OWNER: usize = 7;
pub(crate) const EXPECTED_SEQUENCE: usize = 8;
pub(crate) const FIELD_NAMES: [&str; 9] = [
    "instance_id", "aggregate_type", "aggregate_id", "event_type", "revision", "payload",
    "creator", "owner", "expected_sequence",
];
pub(crate) const IDENTIFIERS: [usize; 6] = [INSTANCE_ID, AGGREGATE_TYPE, AGGREGATE_ID, EVENT_TYPE, CREATOR, OWNER];

/// Identifier text that must still be accepted: quotes and separators of the literal forms,
/// non-ASCII, invisible and unassigned-looking characters (none of them a control character).
pub(crate) const ODD_BUT_VALID: &[&str] = &[
    " ", "'", "\"", "\\", ",", "(", ")", "{", "}", "NULL", "é", "日本語", "😀", "\u{200B}",
    "\u{FEFF}", "\u{2028}", "\u{00A0}", "\u{E000}", "\u{FFFD}", "\u{FFFF}", "\u{10FFFF}",
    "e\u{0301}", "'); DROP TABLE eventstore.events; --", "%_", "/", "\\u0000", "$1",
];
/// Control characters (Unicode Cc) other than NUL, which has its own case.
pub(crate) const CONTROLS: &[char] = &['\u{1}', '\t', '\n', '\r', '\u{1b}', '\u{1f}', '\u{7f}', '\u{80}', '\u{85}', '\u{9f}'];
/// Byte sequences that are not UTF-8: stray continuation, overlong NUL, a surrogate, a
/// truncated sequence, a code point above U+10FFFF, 0xFF.
pub(crate) const NOT_UTF8: &[&[u8]] = &[
    b"\x80", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xff",
];
pub(crate) const FILLS: [char; 4] = ['x', 'é', '日', '😀'];



/// The six ways a client can call push.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub(crate) enum Form {
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

pub(crate) const FORMS: [Form; 6] =
    [Form::Constructor, Form::RowCast, Form::ArrayLiteral, Form::JsonText, Form::JsonBinary, Form::JsonUntyped];

pub(crate) const RETURNED: &str =
    "SELECT instance_id, aggregate_type, aggregate_id, sequence, position, in_tx_order, owner FROM eventstore.push";

impl Form {
    pub(crate) fn json(self) -> bool {
        matches!(self, Form::JsonText | Form::JsonBinary | Form::JsonUntyped)
    }

    pub(crate) fn sql(self) -> String {
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
                "ROW(u.i, u.t, u.a, u.e, u.r::smallint, u.p::jsonb, u.c, u.o, u.x::bigint, NULL, NULL)::eventstore.command"),
            Form::ArrayLiteral => format!("{RETURNED}($1::text::eventstore.command[])"),
            Form::JsonText => format!("{RETURNED}($1::text)"),
            Form::JsonBinary => format!("{RETURNED}($1::jsonb)"),
            Form::JsonUntyped => format!("{RETURNED}($1)"),
        }
    }
}

/// One field as generated.
#[derive(Clone, Debug)]
pub(crate) enum Value {
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
    pub(crate) fn text(&self) -> Option<&str> {
        if let Value::Text(s) = self { Some(s) } else { None }
    }

    pub(crate) fn integer(&self) -> Option<i64> {
        match self {
            Value::Int(n) | Value::Spelled(_, n) => Some(*n),
            _ => None,
        }
    }

    /// The field as the composite forms send it: text, or NULL.
    pub(crate) fn as_text_bytes(&self) -> Option<Vec<u8>> {
        match self {
            Value::Absent | Value::Null => None,
            Value::Text(s) => Some(s.as_bytes().to_vec()),
            Value::Int(n) => Some(n.to_string().into_bytes()),
            Value::Spelled(s, _) => Some(s.as_bytes().to_vec()),
            Value::Raw(b) => Some(b.clone()),
        }
    }

    pub(crate) fn describe(&self) -> String {
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
pub(crate) enum Shape {
    Object,
    /// A NULL command (composite), `null` (JSON).
    Null,
    /// JSON: this token instead of an object.
    Token(&'static str),
}

/// What the table must hold for a good command.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Predicted {
    pub(crate) instance_id: String,
    pub(crate) aggregate_type: String,
    pub(crate) aggregate_id: String,
    pub(crate) event_type: String,
    pub(crate) revision: i16,
    pub(crate) payload: Option<String>,
    pub(crate) creator: String,
    pub(crate) owner: String,
    pub(crate) sequence: i64,
}

pub(crate) struct Command {
    pub(crate) shape: Shape,
    pub(crate) values: Vec<Value>,
    /// JSON: fields written twice, first with a junk value (jsonb keeps the last one).
    pub(crate) decoys: Vec<usize>,
    /// JSON: unknown fields, as raw key and value.
    pub(crate) extra: Vec<(Vec<u8>, &'static str)>,
    /// Composite literal: how many fields the record has (9 when intact).
    pub(crate) literal_fields: usize,
    /// Set when the command is good.
    pub(crate) predicted: Option<Predicted>,
    /// A good command whose expected_sequence will not match.
    pub(crate) mismatch: bool,
}

/// The call as a whole, beyond its commands.
#[derive(Clone, Debug)]
pub(crate) enum Whole {
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

pub(crate) struct Fault {
    pub(crate) codes: &'static [&'static str],
    pub(crate) note: String,
}

pub(crate) struct Call {
    pub(crate) number: usize,
    pub(crate) form: Form,
    pub(crate) commands: Vec<Command>,
    pub(crate) whole: Whole,
    pub(crate) faults: Vec<Fault>,
    /// Instance ids whose rows this call may change (decoy values included).
    pub(crate) instance_ids: Vec<String>,
    pub(crate) notes: Vec<String>,
}

pub(crate) enum Expect {
    Success,
    Failure(Vec<&'static str>),
}

impl Call {
    pub(crate) fn expect(&self) -> Expect {
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

    pub(crate) fn summary(&self) -> String {
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
pub(crate) enum Heavy {
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
pub(crate) struct Plan {
    pub(crate) form: Form,
    pub(crate) size: usize,
    pub(crate) fault_rate: f64,
    pub(crate) heavy: Heavy,
    pub(crate) null_batch: bool,
    pub(crate) damage: bool,
}

/// The sequence and owner of every aggregate this run wrote.
pub(crate) type Model = HashMap<(String, String, String), (i64, String)>;

/// The first `max_chars` characters of `s`, for messages.
pub(crate) fn truncate(s: &str, max_chars: usize) -> String {
    s.chars().take(max_chars).collect()
}
