//! Rendering a call as a client sends it: the composite forms' field arrays, a composite
//! array literal, a JSON document (with random spacing and escapes), and damage to the
//! rendered argument; `Raw` sends bytes as they are, invalid UTF-8 included.

use std::error::Error;

// The buffer type of ToSql. postgres-types re-exports it at this path for its own
// `to_sql_checked!` macro; using it spares a dependency on the bytes crate.
use postgres::types::private::BytesMut;
use postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use crate::call::{Call, Command, Form, Shape, Value, Whole, FIELD_NAMES, INSTANCE_ID};
use crate::generate::Generator;

impl Generator {
    /// A random, valid JSON object (the payload).
    pub(crate) fn json_object(&mut self, depth: usize) -> Vec<u8> {
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

    pub(crate) fn json_value(&mut self, depth: usize) -> Vec<u8> {
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

    pub(crate) fn random_string(&mut self) -> String {
        const POOL: &[char] = &['a', 'b', 'z', 'A', '0', ' ', '"', '\\', '/', '\u{1}', '\n', '\t', 'é', '日', '😀',
            '\u{7f}', '\u{2028}', '\u{FEFF}', '\u{FFFF}', '\'', '{', '['];
        (0..self.rng.below(12)).map(|_| self.rng.pick(POOL)).collect()
    }

    /// A JSON string for `s`, with escapes chosen at random when `fancy` (every spelling
    /// decodes to `s`: \uXXXX, surrogate pairs, \/).
    pub(crate) fn json_string(&mut self, out: &mut Vec<u8>, s: &str, fancy: bool) {
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

    pub(crate) fn space(&mut self, out: &mut Vec<u8>, fancy: bool) {
        if fancy && self.rng.chance(0.2) {
            out.extend_from_slice(self.rng.pick(&[&b" "[..], b"\n", b"\t", b"\r\n  "]));
        }
    }

    pub(crate) fn json_document(&mut self, call: &Call) -> Vec<u8> {
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

    pub(crate) fn json_command(&mut self, out: &mut Vec<u8>, command: &Command, call: &Call, fancy: bool) {
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

    pub(crate) fn array_literal(&mut self, call: &Call) -> Vec<u8> {
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
                // id and metadata are left empty (NULL); a twelfth field is one too many.
                let value = command.values.get(field).cloned()
                    .unwrap_or(if field < 11 { Value::Absent } else { Value::Text("extra".into()) });
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
    pub(crate) fn render(&mut self, call: &Call) -> Arguments {
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
pub(crate) struct Raw(pub(crate) Vec<u8>);

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

pub(crate) enum Arguments {
    Composite { fields: Vec<Vec<Option<Raw>>>, nulls: Vec<bool>, batch_is_null: bool },
    One(Option<Raw>),
}
