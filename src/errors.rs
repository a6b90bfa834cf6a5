//! Every error eventstore raises: its SQLSTATE, message, detail and hint (G9).
//!
//! Expected situations (a busy lock, nothing to do) are values, not errors (trap 10). What is
//! left here is input the caller must fix, or a conflict the caller must resolve; each is
//! raised before anything is written, so a failed call leaves nothing behind.

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
/// 40001: an aggregate is not at the sequence the command expected. Retrying the whole
/// transaction (reload the aggregate, decide again) is the right response, as for any
/// serialization failure.
pub const SEQUENCE_MISMATCH: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE;
/// 42501: the session is bound to another tenant, or to none.
pub const NOT_ALLOWED: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE;
/// 55000: the transaction is in a state where the call could deadlock.
pub const WRONG_STATE: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE;

/// 0A000: a feature eventstore cannot offer in this configuration (PREPARE TRANSACTION after
/// writing events, with the horizon registry active).
pub const NOT_SUPPORTED: PgSqlErrorCode = PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED;

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
