//! Checks of request fields. Each returns the typed value or `INVALID_ARGUMENT` naming the field,
//! so handlers read as a list of fields and nothing unchecked reaches SQL or storage.

use std::collections::HashMap;

use uuid::Uuid;

use crate::error::{FileError, Result};
use crate::storage::Sha256Digest;

/// Longest file or folder name, in characters.
pub const MAX_NAME_CHARS: usize = 255;
/// Most metadata entries on a file.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key.
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Longest metadata value, in characters.
pub const MAX_METADATA_VALUE_CHARS: usize = 1024;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;
/// Longest content type (hint or sniffed).
pub const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Longest name search.
pub const MAX_NAME_QUERY_CHARS: usize = 255;

/// A file or folder name: 1..=255 characters, no `/`, `\`, control characters or `..`, no
/// surrounding spaces. The database's CHECK constraints are the backstop of the same rules.
pub fn name(field: &str, value: &str) -> Result<String> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.chars().count() > MAX_NAME_CHARS {
        Some("must be at most 255 characters")
    } else if value.trim() != value {
        Some("must not start or end with whitespace")
    } else if value.contains(['/', '\\']) {
        Some("must not contain \"/\" or \"\\\"")
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if value.contains("..") {
        Some("must not contain \"..\"")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(FileError::invalid(field, reason)),
        None => Ok(value.to_owned()),
    }
}

/// A required id: a canonical lower-case hyphenated UUID.
pub fn id(field: &str, value: &str) -> Result<Uuid> {
    if value.is_empty() {
        return Err(FileError::invalid(field, "is required"));
    }
    match Uuid::try_parse(value) {
        Ok(uuid) if uuid.hyphenated().to_string() == value => Ok(uuid),
        _ => Err(FileError::invalid(field, "must be a UUID in canonical lower-case form")),
    }
}

/// An optional id: empty means none.
pub fn optional_id(field: &str, value: &str) -> Result<Option<Uuid>> {
    if value.is_empty() { Ok(None) } else { id(field, value).map(Some) }
}

/// A required SHA-256: 64 hexadecimal characters.
pub fn sha256(field: &str, value: &str) -> Result<Sha256Digest> {
    if value.is_empty() {
        return Err(FileError::invalid(field, "is required"));
    }
    Sha256Digest::from_hex(value).map_err(|_| FileError::invalid(field, "must be 64 hexadecimal characters"))
}

/// An optional SHA-256: empty means none.
pub fn optional_sha256(field: &str, value: &str) -> Result<Option<Sha256Digest>> {
    if value.is_empty() { Ok(None) } else { sha256(field, value).map(Some) }
}

/// An optional idempotency key: 1..=128 printable ASCII characters; empty means none.
pub fn idempotency_key(field: &str, value: &str) -> Result<Option<String>> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_IDEMPOTENCY_KEY_CHARS || !value.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(FileError::invalid(field, "must be 1..=128 printable ASCII characters"));
    }
    Ok(Some(value.to_owned()))
}

/// An optional content-type hint: at most 255 characters without control characters.
pub fn content_type_hint(field: &str, value: &str) -> Result<Option<String>> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if value.chars().count() > MAX_CONTENT_TYPE_CHARS || value.chars().any(char::is_control) {
        return Err(FileError::invalid(field, "must be at most 255 characters without control characters"));
    }
    Ok(Some(value.to_owned()))
}

/// A name search: at most 255 characters. Returns the lower-cased text and whether it is a
/// substring search (a leading `*`), or `None` for no search.
pub fn name_query(field: &str, value: &str) -> Result<Option<(String, bool)>> {
    if value.chars().count() > MAX_NAME_QUERY_CHARS || value.chars().any(char::is_control) {
        return Err(FileError::invalid(field, "must be at most 255 characters without control characters"));
    }
    let (text, substring) = match value.strip_prefix('*') {
        Some(rest) => (rest, true),
        None => (value, false),
    };
    if text.is_empty() { Ok(None) } else { Ok(Some((text.to_lowercase(), substring))) }
}

/// The `LIKE` pattern (on lower-case names) of a query from [`name_query`]: names that start
/// with its text, or for a substring query contain it.
pub fn name_pattern((text, substring): &(String, bool)) -> String {
    let escaped = like_escape(text);
    if *substring { format!("%{escaped}%") } else { format!("{escaped}%") }
}

/// Escapes `%`, `_` and `\` for a `LIKE` pattern (with the default escape character).
pub fn like_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Client metadata: at most 32 entries, keys 1..=64 characters of `[A-Za-z0-9_.-]`, values at
/// most 1,024 characters. Returned as the JSON object the database stores.
pub fn metadata(field: &str, entries: &HashMap<String, String>) -> Result<serde_json::Value> {
    if entries.len() > MAX_METADATA_ENTRIES {
        return Err(FileError::invalid(field, "must have at most 32 entries"));
    }
    let mut object = serde_json::Map::with_capacity(entries.len());
    for (key, value) in entries {
        let key_ok = (1..=MAX_METADATA_KEY_CHARS).contains(&key.len())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !key_ok {
            return Err(FileError::invalid(field, format!("key {key:?} must be 1..=64 characters of [A-Za-z0-9_.-]")));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(FileError::invalid(field, format!("value of {key:?} must be at most 1024 characters")));
        }
        object.insert(key.clone(), serde_json::Value::String(value.clone()));
    }
    Ok(serde_json::Value::Object(object))
}

/// Stored metadata back as the proto map (non-string values, which the service never writes,
/// are skipped).
pub fn metadata_map(value: &serde_json::Value) -> HashMap<String, String> {
    value
        .as_object()
        .map(|object| object.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
        .unwrap_or_default()
}

/// A page size: 1..=500, 0 meaning 50.
pub fn page_size(field: &str, value: u32) -> Result<i64> {
    match value {
        0 => Ok(50),
        1..=500 => Ok(i64::from(value)),
        _ => Err(FileError::invalid(field, "must be at most 500")),
    }
}

/// A byte count as PostgreSQL's `bigint`.
pub fn bytes_i64(field: &str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| FileError::invalid(field, "is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert_eq!(name("n", "Résumé 2026.mp4").unwrap(), "Résumé 2026.mp4");
        assert!(name("n", &"é".repeat(255)).is_ok());
        for bad in ["", " a", "a ", "a/b", "a\\b", "a\nb", "a\u{7f}b", "..", "a..b", &"x".repeat(256)] {
            let err = name("target.name", bad).unwrap_err();
            assert!(err.to_string().starts_with("target.name: "), "{bad:?}: {err}");
        }
        assert!(name("n", ".hidden").is_ok());
    }

    #[test]
    fn ids_are_canonical() {
        let id_text = "0b6f0c5e-1c1a-4c3e-9a53-5f0e7a1c2d3b";
        assert_eq!(id("f", id_text).unwrap().to_string(), id_text);
        assert!(id("f", &id_text.to_uppercase()).is_err());
        assert!(id("f", "0b6f0c5e1c1a4c3e9a535f0e7a1c2d3b").is_err());
        assert!(id("f", "").is_err());
        assert_eq!(optional_id("f", "").unwrap(), None);
    }

    #[test]
    fn metadata_is_bounded() {
        let ok: HashMap<_, _> = [("scene.1".to_owned(), "x".to_owned())].into();
        assert_eq!(metadata("m", &ok).unwrap(), serde_json::json!({"scene.1": "x"}));
        let bad_key: HashMap<_, _> = [("a b".to_owned(), String::new())].into();
        assert!(metadata("m", &bad_key).is_err());
        let too_many: HashMap<_, _> = (0..33).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(metadata("m", &too_many).is_err());
        let long: HashMap<_, _> = [("k".to_owned(), "v".repeat(1025))].into();
        assert!(metadata("m", &long).is_err());
        assert_eq!(metadata_map(&metadata("m", &ok).unwrap()), ok);
    }

    #[test]
    fn searches_and_keys() {
        assert_eq!(name_query("q", "*Clip").unwrap(), Some(("clip".into(), true)));
        assert_eq!(name_query("q", "Clip").unwrap(), Some(("clip".into(), false)));
        assert_eq!(name_query("q", "").unwrap(), None);
        assert_eq!(like_escape("50%_a\\"), "50\\%\\_a\\\\");
        assert_eq!(name_pattern(&("5%".into(), true)), "%5\\%%");
        assert_eq!(name_pattern(&("clip".into(), false)), "clip%");
        assert!(idempotency_key("k", &"k".repeat(129)).is_err());
        assert!(idempotency_key("k", "caf\u{e9}").is_err());
        assert_eq!(idempotency_key("k", "retry-1").unwrap().as_deref(), Some("retry-1"));
        assert_eq!(page_size("p", 0).unwrap(), 50);
        assert!(page_size("p", 501).is_err());
    }
}
