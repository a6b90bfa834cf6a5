//! Generating calls: a seeded generator (the same calls for the same seed, everywhere), a
//! fixed prelude of edge cases and random plans, and for each call its commands, each field
//! good or faulty, with what a good command must write (`Predicted`) and what a bad one must
//! be refused with (`Fault`).

use std::collections::HashMap;

use crate::call::*;

/// SplitMix64: the same sequence for the same seed, everywhere.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn between(&mut self, low: usize, high: usize) -> usize {
        low + self.below(high - low + 1)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub(crate) fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}



pub(crate) struct Generator {
    pub(crate) rng: Rng,
    pub(crate) run_tag: String,
    pub(crate) shared_instance: String,
    pub(crate) current_user: String,
}

/// The state of one call while its commands are generated.
pub(crate) struct CallContext<'m> {
    pub(crate) form: Form,
    pub(crate) tag: String,
    pub(crate) instances: Vec<String>,
    pub(crate) fault_rate: f64,
    pub(crate) heavy: Heavy,
    pub(crate) heavy_at: usize,
    pub(crate) size: usize,
    /// One command of this call may carry an expected_sequence that does not match.
    pub(crate) may_mismatch: bool,
    pub(crate) faults: Vec<Fault>,
    pub(crate) decoy_ids: Vec<String>,
    /// Aggregate states after the commands so far (over the model).
    pub(crate) running: HashMap<(String, String, String), (i64, String)>,
    pub(crate) model: &'m Model,
}

impl CallContext<'_> {
    pub(crate) fn fault(&mut self, codes: &'static [&'static str], note: String) {
        self.faults.push(Fault { codes, note });
    }

    pub(crate) fn big(&self) -> bool {
        self.size > 40
    }
}

pub(crate) fn pad(base: &str, bytes: usize, fill: char) -> String {
    let mut s = base.to_string();
    while s.len() + fill.len_utf8() <= bytes {
        s.push(fill);
    }
    while s.len() < bytes {
        s.push('x');
    }
    s
}

pub(crate) fn insert_at_char(rng: &mut Rng, base: &str, c: char) -> String {
    let boundaries: Vec<usize> = base.char_indices().map(|(i, _)| i).chain([base.len()]).collect();
    let at = rng.pick(&boundaries);
    format!("{}{c}{}", &base[..at], &base[at..])
}

impl Generator {
    pub(crate) fn new(seed: u64, current_user: String) -> Generator {
        let run_tag = format!("fz{seed:016x}");
        Generator { rng: Rng(seed), shared_instance: format!("{run_tag}-shared"), run_tag, current_user }
    }

    /// The edge cases every run covers, whatever the seed.
    pub(crate) fn prelude() -> Vec<Plan> {
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

    pub(crate) fn random_plan(&mut self) -> Plan {
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

    pub(crate) fn call(&mut self, number: usize, plan: &Plan, model: &Model) -> Call {
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
    pub(crate) fn damage(&mut self, cx: &mut CallContext, size: usize) -> Whole {
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

    pub(crate) fn command(&mut self, cx: &mut CallContext, k: usize, aggregate_pool: usize) -> Command {
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
            shape: Shape::Object, values, decoys: Vec::new(), extra: Vec::new(), literal_fields: 11,
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
    pub(crate) fn unset(&mut self, cx: &CallContext) -> Value {
        if cx.form.json() && self.rng.chance(0.5) { Value::Absent } else { Value::Null }
    }

    pub(crate) fn dress(&mut self, base: &str) -> String {
        match self.rng.below(16) {
            0 | 1 => format!("{base}{}", self.rng.pick(ODD_BUT_VALID)),
            2 => pad(base, MAX_IDENTIFIER_BYTES, self.rng.pick(&FILLS)),
            _ => base.to_string(),
        }
    }

    pub(crate) fn identifier(&mut self, cx: &mut CallContext, k: usize, field: usize, base: &str) -> Value {
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

    pub(crate) fn revision(&mut self, cx: &mut CallContext, k: usize) -> Value {
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
            match rng.below(5) {
                0 => (Value::Int(rng.pick(&[0, -1, -32768])), &[INVALID]),
                // 32768 fits command()'s integer parameter, which checks it as push does (22023);
                // a composite literal's smallint field refuses it on input (22003).
                1 => (Value::Int(32768), &[INVALID, OUT_OF_RANGE]),
                2 => (Value::Int(rng.pick(&[3_000_000_000, i64::MAX, i64::MIN])), &[OUT_OF_RANGE]),
                3 => (Value::Raw(rng.pick(&["abc", "3.0", "", "1e3", "- 1"]).into()), &[BAD_SYNTAX]),
                _ => (Value::Raw([b"1".as_slice(), rng.pick(NOT_UTF8)].concat()), &[BAD_ENCODING]),
            }
        };
        cx.fault(codes, format!("command {}: revision = {}", k + 1, value.describe()));
        value
    }

    pub(crate) fn payload(&mut self, cx: &mut CallContext, k: usize) -> Value {
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
                let scalar = if json { rng.pick(&["[[]]", "[1]", "\"s\"", "42", "true"]) } else { rng.pick(&["[[]]", "[1]", "\"s\"", "42", "true", "null"]) };
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
    pub(crate) fn expected_sequence(&mut self, cx: &mut CallContext, k: usize, previous: Option<i64>) -> (Value, bool) {
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
    pub(crate) fn command_faults(&mut self, cx: &mut CallContext, k: usize, command: &mut Command) {
        let rate = cx.fault_rate;
        if self.rng.chance(rate / 3.0) {
            match (cx.form, self.rng.below(2)) {
                (Form::ArrayLiteral, 0) => {
                    command.literal_fields = self.rng.pick(&[10, 12]);
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
}
