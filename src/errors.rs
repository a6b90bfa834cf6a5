//! Every error eventstore raises: its SQLSTATE, message, detail and hint (G9).
//!
//! Expected situations (a busy lock, nothing to do) are values, not errors (trap 10). What is
//! left here is input the caller must fix, or a conflict the caller must resolve; each is
//! raised before anything is written, so a failed call leaves nothing behind.

use std::cell::Cell;

use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// 22004: a required field is NULL or missing.
pub const NULL_VALUE: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED;
/// 22023: a value is out of range or malformed (empty identifier, non-object payload, ...).
pub const INVALID_VALUE: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE;
/// 22001: an identifier longer than the documented limit.
pub const TOO_LONG: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_STRING_DATA_RIGHT_TRUNCATION;
/// 54000: a batch or payload over the documented limits.
pub const TOO_LARGE: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED;
/// 42501: the session is bound to another tenant, or to none.
pub const NOT_ALLOWED: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE;
/// 55000: the transaction is in a state where the call could deadlock.
pub const WRONG_STATE: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;

/// 0A000: a feature eventstore cannot offer in this configuration (PREPARE TRANSACTION after
/// writing events, with the horizon registry active).
pub const NOT_SUPPORTED: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED;

/// An SQLSTATE of eventstore's own, class ES: outcomes a driver must tell apart from every
/// PostgreSQL class, so that generic retry code (which retries class 40) never re-sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnState(pub &'static str);

/// ES409: an aggregate is not at the command's `expected_sequence` (a version conflict). Not
/// 40001: re-sending the same command can never succeed; the application must reload the
/// aggregate (`read_aggregate`) and decide again. The detail is a JSON object of fixed keys:
/// `{"command", "instance_id", "aggregate_type", "aggregate_id", "expected_sequence",
/// "actual_sequence"}` ([`version_conflict_detail`]).
pub const VERSION_CONFLICT: OwnState = OwnState("ES409");

/// ES422: a push carries an event id that is already stored, and is not an exact replay of the
/// push that stored it (a partial overlap, or the same id with other content). Nothing is
/// written (G14).
pub const ID_ALREADY_USED: OwnState = OwnState("ES422");

/// ES421: on Citus, a call for a tenant whose shard is on another node (a call that was not
/// delegated to the tenant's worker). Its locks and positions would be another node's, so it
/// is refused before anything is locked or written (DESIGN.md trap 17). Not retryable here:
/// the caller must send the call through the coordinator's delegation (README "Running on
/// Citus").
pub const NOT_LOCAL: OwnState = OwnState("ES421");

impl OwnState {
    /// PostgreSQL's encoding of the five characters (MAKE_SQLSTATE, utils/elog.h).
    fn encoded(self) -> i32 {
        self.0.bytes().enumerate()
            .map(|(i, c)| (((c - b'0') & 0x3F) as i32) << (6 * i))
            .sum()
    }
}

/// The code an own-state error is first reported with; replaced by [`set_own_state`] before
/// PostgreSQL sends it anywhere. Never seen by a client unless the replacement failed, and then
/// as an internal error, which the fuzz test treats as a bug.
const OWN_STATE_PLACEHOLDER: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_INTERNAL_ERROR;

thread_local! {
    static PENDING_OWN_STATE: Cell<Option<OwnState>> = const { Cell::new(None) };
}

extern "C-unwind" {
    /// utils/elog.h: sets the SQLSTATE of the error being reported; never raises. Not in
    /// pgrx's bindings.
    fn errcode(sqlerrcode: std::ffi::c_int) -> std::ffi::c_int;
}

/// The error context callback [`raise_own`] puts on PostgreSQL's stack. PostgreSQL calls every
/// callback on that stack inside `errfinish`, with the error being reported on top of its error
/// stack, before the error is logged or sent: this one gives it the pending own SQLSTATE.
static mut OWN_STATE_CALLBACK: pg_sys::ErrorContextCallback = pg_sys::ErrorContextCallback {
    previous: std::ptr::null_mut(),
    callback: Some(set_own_state),
    arg: std::ptr::null_mut(),
};

unsafe extern "C-unwind" fn set_own_state(_arg: *mut std::ffi::c_void) {
    let Some(state) = PENDING_OWN_STATE.with(Cell::take) else { return };
    // SAFETY: called by errfinish with the error being reported on top of the error stack;
    // geterrcode reads it, errcode sets its SQLSTATE. Only our own placeholder is replaced.
    unsafe {
        if pg_sys::geterrcode() == OWN_STATE_PLACEHOLDER as i32 {
            errcode(state.encoded());
        }
    }
}

/// Raises an ERROR with one of eventstore's own SQLSTATEs; never returns.
///
/// pgrx reports errors with its own list of SQLSTATEs, so the error is raised as pgrx raises
/// every error (a panic unwinding our frames, reported at the function's boundary) with a
/// placeholder code, and a static error context callback, linked onto PostgreSQL's context
/// stack here, sets the real code while the report is finished. PostgreSQL resets the context
/// stack when it recovers from the error, which unlinks the callback again.
#[track_caller]
pub fn raise_own(state: OwnState, message: String, detail: String, hint: &str) -> ! {
    PENDING_OWN_STATE.with(|pending| pending.set(Some(state)));
    // SAFETY: backends are single-threaded; the callback is static, so it outlives the report,
    // and it is linked on top of the current stack exactly once (raise never returns).
    unsafe {
        let callback = &raw mut OWN_STATE_CALLBACK;
        if pg_sys::error_context_stack != callback {
            (*callback).previous = pg_sys::error_context_stack;
            pg_sys::error_context_stack = callback;
        }
    }
    raise(OWN_STATE_PLACEHOLDER, message, detail, hint)
}

/// ES409's detail: one JSON object, keys always in this order, values JSON-escaped.
pub fn version_conflict_detail(command: usize, aggregate: (&str, &str, &str), expected: i64, actual: i64) -> String {
    let quoted = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!("{{\"command\": {command}, \"instance_id\": {}, \"aggregate_type\": {}, \
             \"aggregate_id\": {}, \"expected_sequence\": {expected}, \"actual_sequence\": {actual}}}",
        quoted(aggregate.0), quoted(aggregate.1), quoted(aggregate.2))
}

/// Raises an ERROR; never returns.
#[track_caller]
pub fn raise(code: PgSqlErrorCode, message: String, detail: String, hint: &str) -> ! {
    let mut report = ErrorReport::new(code, message, "eventstore").set_detail(detail);
    if !hint.is_empty() {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// An error not raised yet: input checks return it, so that the caller can name the command
/// it belongs to before raising.
pub struct Refusal {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: String,
    pub hint: &'static str,
}

impl Refusal {
    pub fn new(code: PgSqlErrorCode, message: String, detail: String, hint: &'static str) -> Self {
        Refusal { code, message, detail, hint }
    }

    pub fn raise(self) -> ! {
        raise(self.code, self.message, self.detail, self.hint)
    }

    /// Names the command in the detail: "Command 3 of the batch: the payload ...".
    pub fn at(mut self, n: usize) -> Self {
        let mut detail = self.detail.chars();
        let first = detail.next().map(|c| c.to_lowercase().to_string()).unwrap_or_default();
        self.detail = format!("Command {} of the batch: {first}{}", n + 1, detail.as_str());
        self
    }
}
