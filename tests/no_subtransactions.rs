//! G8, no subtransactions anywhere (DESIGN.md trap 9): proven twice.
//!
//! 1. Statically: the shipped SQL (`sql/**/*.sql`, the SQL edition included) and Rust
//!    (`src/**/*.rs`) contain no SAVEPOINT, ROLLBACK TO, RELEASE, PL/pgSQL `EXCEPTION WHEN`
//!    handler, no call that opens or ends a subtransaction (`BeginInternalSubTransaction`,
//!    ...), and no catch-and-continue of a database error or panic (`PgTryBuilder`,
//!    `catch_unwind`, `FlushErrorState`, ...). The scan reads code, not prose: comments and SQL
//!    string constants are skipped, PL/pgSQL bodies (dollar-quoted) and SQL inside Rust string
//!    literals are read as SQL. `tests/` is not scanned (the negative control below lives here).
//! 2. At run time: one transaction goes through every push and catch-up path — first and
//!    later checkpoints, a nested and a global catch-up, a busy projection (false, zero rows),
//!    the barrier, a push that waits for a concurrent push to the same aggregate, both push
//!    forms, lock_writer — and then:
//!    - no xid was drawn after its own: every subtransaction that writes draws an xid of its
//!      own, whether it is then released or rolled back (a catch-and-continue); the sessions
//!      the test drives draw theirs before, so only a subtransaction could draw one;
//!    - it holds exactly one transactionid lock, its own: a subtransaction left open would
//!      hold a second. (A finished one does not: PostgreSQL drops a subtransaction's xid lock
//!      at RELEASE as at ROLLBACK TO, which is why the xid count is the main probe.)
//!
//!    A negative control shows each probe seeing a subtransaction that is taken: released,
//!    rolled back, left open, and a PL/pgSQL EXCEPTION block catching a unique violation.

// Built only for the integration layer (also declared with required-features in Cargo.toml).
#![cfg(feature = "integration")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;

use common::{connect, pid, push_one, tenant, wait_until_blocked};
use postgres::{Client, GenericClient};

// -------------------------------------------------------------------------------------------
// 1. The static scan

/// Names in Rust code that open, end or stand in for a subtransaction, or catch an error to
/// carry on.
const RUST_FORBIDDEN: &[&str] = &[
    "BeginInternalSubTransaction", "ReleaseCurrentSubTransaction",
    "RollbackAndReleaseCurrentSubTransaction", "BeginSubTransaction", "DefineSavepoint",
    "ReleaseSavepoint", "RollbackToSavepoint", "PgTryBuilder", "catch_when", "catch_others",
    "catch_rust_panic", "CaughtError", "catch_unwind", "FlushErrorState", "sigsetjmp", "PG_TRY",
    "PG_CATCH",
];

/// A finding: file, line, what.
type Finding = (String, usize, String);

/// The text of a source with its comments removed, and (for Rust) its string literals taken
/// out and listed apart. Offsets are kept, so line numbers stay right: everything removed is
/// replaced by spaces (newlines kept).
struct Lexed {
    code: String,
    strings: Vec<(usize, String)>,
}

fn blank(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
}

/// Length in bytes of a nested `/* ... */` comment starting at `s` (or all of `s`).
fn block_comment_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let (mut depth, mut i) = (0, 0);
    while i < bytes.len() {
        if bytes[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if bytes[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// SQL (or a PL/pgSQL body): comments and '...' constants blanked out; dollar-quoted bodies
/// are code and are lexed in turn.
fn lex_sql(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(c) = rest.chars().next() {
        let taken = if rest.starts_with("--") {
            let end = rest.find('\n').unwrap_or(rest.len());
            blank(&mut out, &rest[..end]);
            end
        } else if rest.starts_with("/*") {
            let end = block_comment_len(rest);
            blank(&mut out, &rest[..end]);
            end
        } else if c == '\'' {
            let escapes = out.ends_with('E') || out.ends_with('e');
            let bytes = rest.as_bytes();
            let mut i = 1;
            while i < bytes.len() {
                let escaped = escapes && bytes[i] == b'\\';
                let doubled = bytes[i] == b'\'' && bytes.get(i + 1) == Some(&b'\'');
                if escaped || doubled {
                    i += 2;
                } else if bytes[i] == b'\'' {
                    i += 1;
                    break;
                } else {
                    i += 1;
                }
            }
            let end = i.min(rest.len());
            blank(&mut out, &rest[..end]);
            end
        } else if let Some(tag) = dollar_tag(rest) {
            let body_start = tag.len();
            match rest[body_start..].find(tag) {
                Some(body_len) => {
                    blank(&mut out, tag);
                    out.push_str(&lex_sql(&rest[body_start..body_start + body_len]));
                    blank(&mut out, tag);
                    body_start + body_len + tag.len()
                }
                None => {
                    out.push_str(&rest[..body_start]);
                    body_start
                }
            }
        } else {
            out.push(c);
            c.len_utf8()
        };
        rest = &rest[taken..];
    }
    out
}

/// `$tag$` or `$$` at the start of `s` (not a `$1` parameter).
fn dollar_tag(s: &str) -> Option<&str> {
    if !s.starts_with('$') {
        return None;
    }
    let end = s[1..].find(|c: char| !(c.is_alphanumeric() || c == '_'))? + 1;
    let tag = &s[..=end];
    (s[end..].starts_with('$') && !tag[1..].starts_with(|c: char| c.is_ascii_digit())).then_some(tag)
}

/// Rust: comments blanked; string literals (plain, byte, raw) blanked and listed with their
/// line; char literals and lifetimes told apart.
fn lex_rust(source: &str) -> Lexed {
    let mut code = String::with_capacity(source.len());
    let mut strings = Vec::new();
    let mut rest = source;
    let line_at = |code: &String| code.matches('\n').count() + 1;
    while let Some(c) = rest.chars().next() {
        let raw = raw_string_start(rest);
        let taken = if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            blank(&mut code, &rest[..end]);
            end
        } else if rest.starts_with("/*") {
            let end = block_comment_len(rest);
            blank(&mut code, &rest[..end]);
            end
        } else if let Some((prefix, hashes)) = raw {
            let closing = format!("\"{}", "#".repeat(hashes));
            let body_start = prefix;
            let body_len = rest[body_start..].find(&closing).unwrap_or(rest.len() - body_start);
            strings.push((line_at(&code), rest[body_start..body_start + body_len].to_string()));
            let end = (body_start + body_len + closing.len()).min(rest.len());
            blank(&mut code, &rest[..end]);
            end
        } else if c == '"' || rest.starts_with("b\"") {
            let start = if c == '"' { 1 } else { 2 };
            let bytes = rest.as_bytes();
            let mut i = start;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            let end = (i + 1).min(rest.len());
            strings.push((line_at(&code), rest[start..end.saturating_sub(1).max(start)].to_string()));
            blank(&mut code, &rest[..end]);
            end
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1F600}', '\'') or a lifetime ('a).
            let bytes = rest.as_bytes();
            let end = if bytes.get(1) == Some(&b'\\') {
                rest.get(3..).and_then(|r| r.find('\'')).map(|i| i + 4)
            } else {
                rest[1..].chars().next()
                    .filter(|ch| rest[1 + ch.len_utf8()..].starts_with('\''))
                    .map(|ch| 2 + ch.len_utf8())
            };
            match end {
                Some(end) => {
                    blank(&mut code, &rest[..end]);
                    end
                }
                None => {
                    code.push('\'');
                    1
                }
            }
        } else {
            code.push(c);
            c.len_utf8()
        };
        rest = &rest[taken..];
    }
    Lexed { code, strings }
}

/// `r"`, `r#"`, `br##"`...: the prefix length and the number of hashes.
fn raw_string_start(s: &str) -> Option<(usize, usize)> {
    let after_b = s.strip_prefix('b').unwrap_or(s);
    let after_r = after_b.strip_prefix('r')?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    after_r[hashes..].starts_with('"').then(|| (s.len() - after_r.len() + hashes + 1, hashes))
}

/// The words of lexed code (upper-cased) and its semicolons, with their lines.
fn tokens(code: &str) -> Vec<(usize, String)> {
    let mut tokens = Vec::new();
    let mut line = 1;
    let mut current = String::new();
    for c in code.chars().chain([' ']) {
        if c.is_alphanumeric() || c == '_' {
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            tokens.push((line, std::mem::take(&mut current).to_uppercase()));
        }
        match c {
            ';' => tokens.push((line, ";".into())),
            '\n' => line += 1,
            _ => {}
        }
    }
    tokens
}

/// Subtransaction statements and handlers in lexed SQL code.
///
/// In SQL files any SAVEPOINT, RELEASE or ROLLBACK ... TO keyword is code. In a Rust string
/// literal (`strict`), which may be prose, only a whole statement counts: `SAVEPOINT name`,
/// `RELEASE [SAVEPOINT] name`, `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`, at the
/// start of the text or after a semicolon, and ending there or at a semicolon. An
/// `EXCEPTION WHEN ... THEN` handler counts anywhere.
fn sql_findings(code: &str, strict: bool) -> Vec<(usize, String)> {
    let tokens = tokens(code);
    let word = |i: usize| tokens.get(i).map(|(_, w)| w.as_str()).unwrap_or("");
    let is_name = |i: usize| i < tokens.len() && word(i) != ";";
    let ends = |i: usize| i >= tokens.len() || word(i) == ";";
    // The index after `[SAVEPOINT] name` at i, if that is what is there.
    let savepoint_name = |i: usize| {
        let i = if word(i) == "SAVEPOINT" && is_name(i + 1) { i + 1 } else { i };
        is_name(i).then_some(i + 1)
    };
    let mut findings = Vec::new();
    for (i, (line, _)) in tokens.iter().enumerate() {
        let statement_start = i == 0 || word(i - 1) == ";";
        let found = match word(i) {
            "EXCEPTION" if word(i + 1) == "WHEN" && (!strict || (i + 2..i + 10).any(|k| word(k) == "THEN")) => {
                Some("an EXCEPTION WHEN handler")
            }
            _ if !strict => match word(i) {
                "SAVEPOINT" => Some("SAVEPOINT"),
                "RELEASE" => Some("RELEASE (SAVEPOINT)"),
                "ROLLBACK" if word(i + 1) == "TO" || word(i + 2) == "TO" => Some("ROLLBACK TO (SAVEPOINT)"),
                _ => None,
            },
            _ if !statement_start => None,
            "SAVEPOINT" if is_name(i + 1) && ends(i + 2) => Some("SAVEPOINT"),
            "RELEASE" if savepoint_name(i + 1).is_some_and(ends) => Some("RELEASE (SAVEPOINT)"),
            "ROLLBACK" => {
                let to = if matches!(word(i + 1), "WORK" | "TRANSACTION") { i + 2 } else { i + 1 };
                (word(to) == "TO" && savepoint_name(to + 1).is_some_and(ends)).then_some("ROLLBACK TO (SAVEPOINT)")
            }
            _ => None,
        };
        if let Some(what) = found {
            findings.push((*line, what.to_string()));
        }
    }
    findings
}

/// The identifiers of Rust code, case kept, with their lines.
fn rust_words(code: &str) -> Vec<(usize, String)> {
    code.lines().enumerate()
        .flat_map(|(n, line)| line.split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|w| !w.is_empty())
            .map(move |w| (n + 1, w.to_string())))
        .collect()
}

/// Brackets balance in code that was lexed right (a string or comment mistaken for code, or
/// code for a string, would leave one unmatched): the scan's guard that it read the file.
fn brackets_balance(code: &str) -> bool {
    let mut open = Vec::new();
    for c in code.chars() {
        match c {
            '(' | '[' | '{' => open.push(c),
            ')' | ']' | '}' => {
                let expected = match c { ')' => '(', ']' => '[', _ => '{' };
                if open.pop() != Some(expected) {
                    return false;
                }
            }
            _ => {}
        }
    }
    open.is_empty()
}

fn scan_sql(name: &str, source: &str) -> Vec<Finding> {
    let code = lex_sql(source);
    assert!(brackets_balance(&code), "{name}: the SQL was not read right (unbalanced brackets after lexing)");
    sql_findings(&code, false).into_iter().map(|(line, what)| (name.to_string(), line, what)).collect()
}

fn scan_rust(name: &str, source: &str) -> Vec<Finding> {
    let lexed = lex_rust(source);
    assert!(brackets_balance(&lexed.code), "{name}: the Rust was not read right (unbalanced brackets after lexing)");
    let mut findings: Vec<Finding> = rust_words(&lexed.code).into_iter()
        .filter(|(_, word)| RUST_FORBIDDEN.contains(&word.as_str()))
        .map(|(line, word)| (name.to_string(), line, format!("`{word}`")))
        .collect();
    for (line, string) in &lexed.strings {
        for (offset, what) in sql_findings(&lex_sql(string), true) {
            findings.push((name.to_string(), line + offset - 1, format!("{what} in SQL text")));
        }
    }
    findings
}

fn files(dir: &Path, extension: &str, recursive: bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() && recursive {
            found.extend(files(&path, extension, true));
        } else if path.extension().is_some_and(|e| e == extension) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn shipped_sql_and_rust_open_no_subtransaction_and_catch_no_error() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sql = files(&root.join("sql"), "sql", true);
    let rust = files(&root.join("src"), "rs", true);
    let name = |p: &Path| p.strip_prefix(root).unwrap().display().to_string();
    assert!(sql.iter().any(|p| p.ends_with("sql/eventstore.sql")), "the schema is scanned: {sql:?}");
    assert!(sql.iter().any(|p| p.ends_with("sql/plpgsql/eventstore.sql")), "the SQL edition is scanned: {sql:?}");
    assert!(rust.iter().any(|p| p.ends_with("src/push/mod.rs")) && rust.iter().any(|p| p.ends_with("src/catchup/mod.rs")),
        "the native code is scanned: {rust:?}");
    let mut findings = Vec::new();
    for path in &sql {
        findings.extend(scan_sql(&name(path), &std::fs::read_to_string(path).unwrap()));
    }
    for path in &rust {
        findings.extend(scan_rust(&name(path), &std::fs::read_to_string(path).unwrap()));
    }
    println!("scanned {} SQL and {} Rust files", sql.len(), rust.len());
    assert!(findings.is_empty(), "subtransactions or error catching in shipped code (G8):\n{}",
        findings.iter().map(|(f, l, w)| format!("  {f}:{l}: {w}")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn the_scan_reads_code_not_prose() {
    let flagged = |findings: Vec<Finding>| findings.into_iter().map(|(_, line, what)| (line, what)).collect::<Vec<_>>();
    // SQL: statements and handlers are found, in plain SQL and in PL/pgSQL bodies.
    assert_eq!(flagged(scan_sql("t", "BEGIN;\nsavepoint s1;\nINSERT INTO t VALUES (1);\nRELEASE s1;")),
        vec![(2, "SAVEPOINT".into()), (4, "RELEASE (SAVEPOINT)".into())]);
    assert_eq!(flagged(scan_sql("t", "ROLLBACK TO SAVEPOINT s;")).len(), 2);
    assert_eq!(flagged(scan_sql("t", "rollback work to s;")), vec![(1, "ROLLBACK TO (SAVEPOINT)".into())]);
    let plpgsql = "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $body$\nBEGIN\n  INSERT INTO t VALUES (1);\n\
                   EXCEPTION WHEN unique_violation THEN\n  NULL;\nEND $body$;";
    assert_eq!(flagged(scan_sql("t", plpgsql)), vec![(4, "an EXCEPTION WHEN handler".into())]);
    assert_eq!(flagged(scan_sql("t", "DO $$ BEGIN PERFORM 1; exception when others then null; END $$;")).len(), 1);
    // ...but not in comments, string constants, raised errors or identifiers.
    let prose = "-- no SAVEPOINT, no EXCEPTION WHEN block here\n/* ROLLBACK TO s; /* nested */ RELEASE s */\n\
                 COMMENT ON TABLE t IS 'uses no SAVEPOINT; ROLLBACK TO nothing; EXCEPTION WHEN never';\n\
                 CREATE FUNCTION g() RETURNS void LANGUAGE plpgsql AS $$ BEGIN\n\
                 -- EXCEPTION WHEN others THEN\n  RAISE EXCEPTION 'when % fails', 1; END $$;\n\
                 SELECT release_date, $1 FROM savepoints_table;";
    assert_eq!(flagged(scan_sql("t", prose)), vec![]);
    // Rust: calls and catching are found in code, and SQL statements in string literals.
    let rust = "fn f() {\n    let r = std::panic::catch_unwind(|| 1);\n    PgTryBuilder::new(|| g()).catch_others(|e| h(e)).execute();\n\
                Spi::run(\"SAVEPOINT s\");\n    Spi::run(r#\"INSERT INTO t VALUES (1); RELEASE s\"#);\n\
                unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };\n}";
    assert_eq!(flagged(scan_rust("t", rust)), vec![
        (2, "`catch_unwind`".into()), (3, "`PgTryBuilder`".into()), (3, "`catch_others`".into()),
        (6, "`BeginInternalSubTransaction`".into()), (4, "SAVEPOINT in SQL text".into()),
        (5, "RELEASE (SAVEPOINT) in SQL text".into()),
    ]);
    // ...but not in comments, doc comments, prose in strings, lifetimes or char literals.
    let rust_prose = "//! No subtransactions: no SAVEPOINT, no catch_unwind, no PgTryBuilder.\n\
                      /// We never call BeginInternalSubTransaction.\n\
                      fn f<'a>(x: &'a str) -> char {\n    /* catch_unwind /* nested */ PgTryBuilder */\n\
                      let hint = \"release the savepoint? we use none; an exception when the lock is busy\";\n\
                      let q = \"SELECT * FROM t WHERE note = 'SAVEPOINT s'\";\n    '\\''\n}";
    assert_eq!(flagged(scan_rust("t", rust_prose)), vec![]);
}

// -------------------------------------------------------------------------------------------
// 2. At run time

/// The run-time tests count xids drawn in the cluster: run them one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What the probes see of a transaction whose own xid is `top`: the transactionid locks its
/// backend holds, and how many xids were drawn after `top`, by anyone. The next xid is drawn by
/// `observer` in a transaction of its own (a snapshot's xmax would not do: it follows the
/// latest *completed* xid).
fn probe(client: &mut impl GenericClient, observer: &mut Client, top: i64) -> (i64, i64) {
    let locks = client.query_one(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' AND pid = pg_backend_pid() AND granted",
        &[],
    ).unwrap().get(0);
    let next = own_xid(observer);
    (locks, next - top - 1)
}

fn own_xid(client: &mut impl GenericClient) -> i64 {
    client.query_one("SELECT pg_current_xact_id()::text::bigint", &[]).unwrap().get(0)
}

/// One transaction through every push and catch-up path; returns the probe's view just
/// before it commits.
fn every_path_in_one_transaction() -> (i64, i64) {
    let t = tenant("g8");
    let mut setup = connect();
    for aggregate in ["a", "b", "a"] {
        push_one(&mut setup, &t, aggregate, "seeded");
    }
    // Another worker holds projection "busy".
    let mut other_worker = connect();
    let mut busy = other_worker.transaction().unwrap();
    assert!(busy.query_one("SELECT eventstore.lock_projection('busy', $1)", &[&t]).unwrap().get::<_, bool>(0));

    // A rival writer, whose xid is drawn now, before the measured transaction's.
    let mut rival = connect();
    let mut rival_tx = rival.transaction().unwrap();
    own_xid(&mut rival_tx);

    let mut c = connect();
    let c_pid = pid(&mut c);
    let mut tx = c.transaction().unwrap();
    let top = own_xid(&mut tx);
    // Catch-up: the first checkpoint (an insert), then a later one (an update), the same
    // projection nested, a busy projection (false, zero rows), the barrier.
    let handed: Vec<i64> = tx.query("SELECT position FROM eventstore.projection_catchup('g8', $1, 2)", &[&t])
        .unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(handed.len(), 2);
    assert_eq!(tx.query("SELECT 1 FROM eventstore.projection_catchup('g8', $1, 2)", &[&t]).unwrap().len(), 1);
    assert_eq!(tx.query("SELECT 1 FROM eventstore.projection_catchup('g8', $1, 2)", &[&t]).unwrap().len(), 0);
    assert!(tx.query("SELECT 1 FROM eventstore.projection_catchup('g8-global', NULL, 10)", &[]).unwrap().len() >= 3);
    let nested: i64 = tx.query_one(
        "SELECT count(*) FROM eventstore.projection_catchup('g8-nested', $1, 1) AS outer_batch,
                LATERAL eventstore.projection_catchup('g8-nested', $1, 1) AS inner_batch",
        &[&t]).unwrap().get(0);
    assert_eq!(nested, 1, "a nested catch-up of the same projection returns the next batch");
    assert!(!tx.query_one("SELECT eventstore.lock_projection('busy', $1)", &[&t]).unwrap().get::<_, bool>(0));
    assert_eq!(tx.query("SELECT 1 FROM eventstore.projection_catchup('busy', $1)", &[&t]).unwrap().len(), 0);
    tx.query_one("SELECT eventstore.await_writers($1)", &[&t]).unwrap();

    // A push that must wait for a concurrent push to the same aggregate, and then continues
    // its sequence: no unique violation caught and retried.
    assert_eq!(push_one(&mut rival_tx, &t, "contended", "first").0, 1);
    let mut observer = connect();
    let waiter = thread::scope(|scope| {
        let waiting = scope.spawn(|| push_one(&mut tx, &t, "contended", "second"));
        wait_until_blocked(&mut observer, c_pid);
        rival_tx.commit().unwrap();
        waiting.join().unwrap()
    });
    assert_eq!(waiter.0, 2, "the waiting push continues the sequence");

    // Both push forms, a batch over several aggregates, expected_sequence checks, lock_writer.
    let rows = tx.query(
        "SELECT sequence FROM eventstore.push(ARRAY[
            eventstore.command($1, 'thing', 'a', 'e', '{\"n\": 1}', expected_sequence => 2),
            eventstore.command($1, 'thing', 'new', 'e', expected_sequence => 0),
            eventstore.command($1, 'thing', 'a', 'e')])",
        &[&t],
    ).unwrap();
    assert_eq!(rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>(), vec![3, 1, 4]);
    let json = format!(r#"[{{"instance_id": "{t}", "aggregate_type": "thing", "aggregate_id": "b", "event_type": "e",
        "expected_sequence": 1}}, {{"instance_id": "{t}", "aggregate_type": "thing", "aggregate_id": "json", "event_type": "e"}}]"#);
    assert_eq!(tx.query("SELECT * FROM eventstore.push($1::text)", &[&json]).unwrap().len(), 2);
    tx.query_one("SELECT eventstore.lock_writer($1)", &[&t]).unwrap();
    push_one(&mut tx, &t, "b", "last");
    // A counter, first inserted then raised, and a wait that finds events at once.
    assert_eq!(tx.query_one("SELECT eventstore.next_number('g8', $1)", &[&t]).unwrap().get::<_, i64>(0), 1);
    assert_eq!(tx.query_one("SELECT eventstore.next_number('g8', $1)", &[&t]).unwrap().get::<_, i64>(0), 2);
    assert!(tx.query_one("SELECT eventstore.wait_for_events('g8-wait', $1, 0)", &[&t]).unwrap().get::<_, bool>(0));

    let seen = probe(&mut tx, &mut observer, top);
    tx.commit().unwrap();
    busy.rollback().unwrap();
    let stored: i64 = setup.query_one("SELECT count(*) FROM eventstore.events WHERE instance_id = $1", &[&t]).unwrap().get(0);
    assert_eq!(stored, 3 + 2 + 3 + 2 + 1, "every push of the transaction committed");
    seen
}

#[test]
fn push_and_catchup_take_no_subtransaction() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Sessions the test does not drive may draw xids meanwhile (autovacuum's ANALYZE does); a
    // subtransaction would draw one in every attempt, so one clean attempt of three suffices.
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let (locks, drawn_after) = every_path_in_one_transaction();
        assert_eq!(locks, 1, "only the transaction's own xid lock: no subtransaction left open");
        attempts.push(drawn_after);
        if drawn_after == 0 {
            return;
        }
    }
    panic!("xids were drawn after the transaction's own in every attempt: {attempts:?}; a subtransaction \
            that writes, released or rolled back (catch-and-continue), draws one");
}

/// The negative control: each probe sees a subtransaction when one IS taken. (SAVEPOINT and
/// an EXCEPTION block are allowed here: tests/ is not shipped, and the static scan skips it.)
#[test]
fn the_probes_see_a_subtransaction_when_one_is_taken() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = connect();
    let mut observer = connect();
    c.batch_execute("CREATE TEMP TABLE control (n int PRIMARY KEY)").unwrap();
    let mut measure = |steps: &str| -> (i64, i64) {
        let mut tx = c.transaction().unwrap();
        let top = own_xid(&mut tx);
        tx.batch_execute(steps).unwrap();
        let seen = probe(&mut tx, &mut observer, top);
        tx.rollback().unwrap();
        seen
    };

    // Left open: its xid lock is held beside the top transaction's.
    let (locks, drawn_after) = measure("SAVEPOINT s; INSERT INTO control VALUES (1)");
    assert_eq!(locks, 2, "an open subtransaction holds its own xid lock");
    assert!(drawn_after >= 1);

    // Released: the lock goes, the xid drawn stays counted.
    let (locks, drawn_after) = measure("SAVEPOINT s; INSERT INTO control VALUES (1); RELEASE SAVEPOINT s");
    assert_eq!(locks, 1, "PostgreSQL drops a subtransaction's xid lock when it is released");
    assert!(drawn_after >= 1, "a released subtransaction drew an xid after the top transaction's");

    // Rolled back: likewise.
    let (locks, drawn_after) = measure("SAVEPOINT s; INSERT INTO control VALUES (1); ROLLBACK TO SAVEPOINT s");
    assert_eq!(locks, 1);
    assert!(drawn_after >= 1, "a rolled-back subtransaction drew an xid after the top transaction's");

    // Catch-and-continue, the way a PL/pgSQL EXCEPTION block does it.
    let (locks, drawn_after) = measure(
        "INSERT INTO control VALUES (1);
         DO $$ BEGIN INSERT INTO control VALUES (1); EXCEPTION WHEN unique_violation THEN NULL; END $$;
         INSERT INTO control VALUES (2)");
    assert_eq!(locks, 1);
    assert!(drawn_after >= 1, "the EXCEPTION block's subtransaction drew an xid");

    // The same writes without a subtransaction: the baseline (retried, as above, for xids
    // other sessions may draw meanwhile).
    let clean = (0..3).map(|_| measure("INSERT INTO control VALUES (1); INSERT INTO control VALUES (2)"))
        .find(|&(_, drawn_after)| drawn_after == 0);
    assert_eq!(clean, Some((1, 0)), "without a subtransaction: one xid lock, no xid drawn after ours");
}
