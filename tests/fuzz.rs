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
//! - good input whose expected_sequence does not match fails with ES409 and writes nothing.
//!
//! A second connection opened first must still answer at the end (a crashed backend makes the
//! postmaster end every session), and the server log, when readable, must show no crash.
//! Violations are collected, printed with their call and the input that caused them, and fail
//! the test at the end.
//!
//! Knobs: EVENTSTORE_FUZZ_SEED (replay a run; the seed is printed), EVENTSTORE_FUZZ_CALLS
//! (random calls after the prelude, default 4000), EVENTSTORE_FUZZ_SECONDS (time cap for the
//! random calls, default 25).
//!
//! The pieces, in tests/fuzz/: `call.rs` (the limits and SQLSTATEs, what a call is),
//! `generate.rs` (the seeded generator and what each input must do), `render.rs` (the call as a
//! client sends it), `check.rs` (running a call and checking the outcome).

// Built only for the integration layer (also declared with required-features in Cargo.toml).
#![cfg(feature = "integration")]

mod common;

#[path = "fuzz/call.rs"]
mod call;
#[path = "fuzz/check.rs"]
mod check;
#[path = "fuzz/generate.rs"]
mod generate;
#[path = "fuzz/render.rs"]
mod render;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use call::Model;
use check::{check_gapless, run_one, server_log_crashes, server_log_size, Session, Tally, Violation};
use generate::{Generator, Rng};

const DEFAULT_CALLS: usize = 4000;
const DEFAULT_SECONDS: u64 = 25;

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
