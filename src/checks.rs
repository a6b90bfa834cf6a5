//! Input checks shared by every SQL entry point (G9): an identifier is present, not empty, not
//! too long and free of control characters, or the call is refused with a SQLSTATE before
//! anything is locked or written.

use crate::errors::{self, Refusal};

/// Longest identifier (instance, aggregate type and id, event type, creator, owner, projection,
/// counter scope), in bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 512;

/// Checks an identifier argument and raises when it is refused.
pub fn require_identifier<'a>(field: &str, value: Option<&'a str>) -> &'a str {
    let Some(value) = value else {
        errors::raise(errors::NULL_VALUE, format!("{field} must not be NULL"),
            format!("{field} is NULL."), "")
    };
    check_identifier(field, value).unwrap_or_else(|r| r.raise())
}

/// [`require_identifier`] for an argument where NULL has a meaning of its own (every instance).
pub fn optional_identifier<'a>(field: &str, value: Option<&'a str>) -> Option<&'a str> {
    value.map(|v| require_identifier(field, Some(v)))
}

/// Checks an identifier; the refusal is returned, so that a batch can name the command.
pub fn check_identifier<'a>(field: &str, value: &'a str) -> Result<&'a str, Refusal> {
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

/// The first `max_chars` characters of `value`, for quoting caller input in a message.
pub fn truncate(value: &str, max_chars: usize) -> String {
    value.chars().take(max_chars).collect()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;
    use pgrx::prelude::*;

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
}
