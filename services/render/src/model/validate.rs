//! Checks of single request fields. Each returns the typed value or `INVALID_ARGUMENT` naming the
//! field, so the conversions read as a list of fields and nothing unchecked reaches the database.
//!
//! String limits count characters (Unicode scalar values) after trimming surrounding whitespace,
//! as `common.v1` says. No stored string may contain NUL: PostgreSQL refuses it in `text` and
//! `jsonb`, so it is refused here with a message instead of failing the insert.

use uuid::Uuid;

use crate::error::{RenderError, Result};

/// Longest name (composition, layer, property path element, font), in characters.
pub const MAX_NAME_CHARS: usize = 255;

/// A required id: a canonical lower-case hyphenated UUID.
pub fn uuid(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(RenderError::invalid(field, "is required"));
    }
    match Uuid::try_parse(value) {
        Ok(id) if id.hyphenated().to_string() == value => Ok(id),
        _ => Err(RenderError::invalid(field, "must be a UUID in canonical lower-case form")),
    }
}

/// An optional id: empty means none.
pub fn optional_uuid(field: &str, value: &str) -> Result<Option<Uuid>> {
    if value.is_empty() { Ok(None) } else { uuid(field, value).map(Some) }
}

/// Refuses NUL, which PostgreSQL cannot store in `text` or `jsonb`.
pub fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(RenderError::invalid(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// A required name: 1..=`max` characters (counted after trimming), no NUL, kept exactly as given
/// (After Effects names are matched exactly).
pub fn name(field: &str, value: &str, max: usize) -> Result<String> {
    let chars = value.trim().chars().count();
    if chars == 0 {
        return Err(RenderError::invalid(field, "must not be empty"));
    }
    if chars > max {
        return Err(RenderError::invalid(field, format!("must be at most {max} characters")));
    }
    no_nul(field, value)?;
    Ok(value.to_owned())
}

/// Free text: at most `max` characters (counted after trimming), no NUL; empty is allowed.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    if value.trim().chars().count() > max {
        return Err(RenderError::invalid(field, format!("must be at most {max} characters")));
    }
    no_nul(field, value)?;
    Ok(value.to_owned())
}

/// A finite number within `min..=max` (NaN and infinities refused).
pub fn number(field: &str, value: f64, min: f64, max: f64) -> Result<f64> {
    if !value.is_finite() {
        return Err(RenderError::invalid(field, "must be a finite number"));
    }
    if !(min..=max).contains(&value) {
        return Err(RenderError::invalid(field, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

/// An idempotency key: 1..=128 printable ASCII characters (spaces included), required.
pub fn idempotency_key(field: &str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Err(RenderError::invalid(field, "is required"));
    }
    if value.len() > 128 || !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(RenderError::invalid(field, "must be 1..=128 printable ASCII characters"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<impl std::fmt::Debug>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn uuids_are_canonical() {
        let text = "0b6f0c5e-1c1a-4c3e-9a53-5f0e7a1c2d3b";
        assert_eq!(uuid("f", text).unwrap().to_string(), text);
        assert_eq!(reason(uuid("a.b", "")), "a.b: is required");
        for bad in [text.to_uppercase(), text.replace('-', ""), format!("{{{text}}}"), "x".into()] {
            assert_eq!(reason(uuid("a.b", &bad)), "a.b: must be a UUID in canonical lower-case form", "{bad}");
        }
        assert_eq!(optional_uuid("f", "").unwrap(), None);
        assert!(optional_uuid("f", "nope").is_err());
    }

    #[test]
    fn names_count_characters_after_trimming() {
        assert_eq!(name("n", &"é".repeat(255), 255).unwrap().chars().count(), 255);
        assert_eq!(name("n", " Intro ", 255).unwrap(), " Intro ");
        assert_eq!(reason(name("n", &"é".repeat(256), 255)), "n: must be at most 255 characters");
        assert_eq!(reason(name("n", "  ", 255)), "n: must not be empty");
        assert_eq!(reason(name("n", "a\0b", 255)), "n: must not contain NUL characters");
        assert_eq!(text("t", "", 3).unwrap(), "");
        assert_eq!(text("t", " abc\n", 3).unwrap(), " abc\n");
        assert_eq!(reason(text("t", "abcd", 3)), "t: must be at most 3 characters");
    }

    #[test]
    fn numbers_are_finite_and_in_range() {
        assert_eq!(number("x", 1.0, 1.0, 2.0).unwrap(), 1.0);
        assert_eq!(number("x", 2.0, 1.0, 2.0).unwrap(), 2.0);
        assert_eq!(reason(number("x", 2.0001, 1.0, 2.0)), "x: must be between 1 and 2");
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(reason(number("x", bad, f64::MIN, f64::MAX)), "x: must be a finite number");
        }
    }

    #[test]
    fn idempotency_keys_are_printable_ascii() {
        assert_eq!(idempotency_key("k", "retry 1").unwrap(), "retry 1");
        assert_eq!(idempotency_key("k", &"k".repeat(128)).unwrap().len(), 128);
        assert_eq!(reason(idempotency_key("k", "")), "k: is required");
        for bad in ["k".repeat(129), "caf\u{e9}".into(), "a\tb".into(), "\u{7f}".into()] {
            assert_eq!(reason(idempotency_key("k", &bad)), "k: must be 1..=128 printable ASCII characters");
        }
    }
}
