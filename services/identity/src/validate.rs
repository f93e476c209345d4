//! Checks of request fields, each naming the field it refuses.

use uuid::Uuid;

use crate::error::{IdentityError, Result};

/// The default FlatRender tenant, for requests that name none.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);

/// A UUID field; `None` when empty.
pub fn optional_uuid(field: &'static str, value: &str) -> Result<Option<Uuid>> {
    if value.is_empty() {
        return Ok(None);
    }
    Uuid::parse_str(value).map(Some).map_err(|_| IdentityError::invalid(field, "must be a UUID"))
}

/// A required UUID field.
pub fn uuid(field: &'static str, value: &str) -> Result<Uuid> {
    optional_uuid(field, value)?.ok_or_else(|| IdentityError::invalid(field, "is required"))
}

/// A tenant field: empty means the default tenant.
pub fn tenant(field: &'static str, value: &str) -> Result<Uuid> {
    Ok(optional_uuid(field, value)?.unwrap_or(DEFAULT_TENANT))
}

/// An email address, trimmed and lower-cased.
pub fn email(field: &'static str, value: &str) -> Result<String> {
    let email = value.trim().to_lowercase();
    if email.is_empty() {
        return Err(IdentityError::invalid(field, "is required"));
    }
    if email.chars().count() > 320 {
        return Err(IdentityError::invalid(field, "must be at most 320 characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(IdentityError::invalid(field, "must look like name@example.com"));
    };
    let plausible = !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !plausible {
        return Err(IdentityError::invalid(field, "must look like name@example.com"));
    }
    Ok(email)
}

/// A display name: trimmed, 1..=200 characters, no control characters.
pub fn display_name(field: &'static str, value: &str) -> Result<String> {
    let name = value.trim();
    let chars = name.chars().count();
    if chars == 0 || chars > 200 {
        return Err(IdentityError::invalid(field, "must have 1 to 200 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(IdentityError::invalid(field, "must not contain control characters"));
    }
    Ok(name.to_owned())
}

/// A BCP 47 language tag such as `en` or `pt-BR`; empty means `en`.
pub fn locale(field: &'static str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Ok("en".into());
    }
    let mut parts = value.split('-');
    let language = parts.next().unwrap_or_default();
    let language_ok = (2..=3).contains(&language.len()) && language.bytes().all(|b| b.is_ascii_lowercase());
    let rest_ok = parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()));
    if !(language_ok && rest_ok) || value.len() > 35 {
        return Err(IdentityError::invalid(field, "must be a language tag such as en or pt-BR"));
    }
    Ok(value.to_owned())
}

/// An IANA time zone name such as `Europe/Berlin`; empty means `UTC`.
pub fn time_zone(field: &'static str, value: &str) -> Result<String> {
    if value.is_empty() {
        return Ok("UTC".into());
    }
    let ok = value.len() <= 64
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && !value.starts_with('/')
        && !value.contains("..");
    if !ok {
        return Err(IdentityError::invalid(field, "must be a time zone name such as Europe/Berlin"));
    }
    Ok(value.to_owned())
}

/// A reason for the audit trail: trimmed, at most 500 characters, required when `required`.
/// An idempotency key: empty means none; at most 200 characters (the columns' limit).
pub fn idempotency_key(value: &str) -> Result<Option<String>> {
    match value {
        "" => Ok(None),
        key if key.chars().count() > 200 => {
            Err(IdentityError::invalid("idempotency_key", "must be at most 200 characters"))
        }
        key => Ok(Some(key.to_owned())),
    }
}

pub fn reason(field: &'static str, value: &str, required: bool) -> Result<String> {
    let value = value.trim();
    if required && value.is_empty() {
        return Err(IdentityError::invalid(field, "is required"));
    }
    if value.chars().count() > 500 {
        return Err(IdentityError::invalid(field, "must be at most 500 characters"));
    }
    Ok(value.to_owned())
}

/// A LIKE pattern matching `query` as a plain substring: its own wildcards are escaped.
pub fn like_pattern(query: &str) -> String {
    format!("%{}%", query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(email("email", "  Ada@Example.COM ").unwrap(), "ada@example.com");
        for bad in
            ["", "ada", "@x.io", "ada@", "a b@x.io", "a@b@c", "a@.io", "a@x.", &format!("{}@x.io", "a".repeat(320))]
        {
            assert!(email("email", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_locales_and_zones() {
        assert_eq!(display_name("n", "  Ada  ").unwrap(), "Ada");
        assert!(display_name("n", "   ").is_err());
        assert!(display_name("n", "a\u{7}").is_err());
        assert!(display_name("n", &"x".repeat(201)).is_err());
        assert_eq!(locale("l", "").unwrap(), "en");
        assert_eq!(locale("l", "pt-BR").unwrap(), "pt-BR");
        assert!(locale("l", "EN").is_err());
        assert!(locale("l", "e").is_err());
        assert_eq!(time_zone("t", "").unwrap(), "UTC");
        assert_eq!(time_zone("t", "America/Argentina/Buenos_Aires").unwrap(), "America/Argentina/Buenos_Aires");
        assert!(time_zone("t", "../etc/passwd").is_err());
        assert_eq!(tenant("t", "").unwrap(), DEFAULT_TENANT);
        assert_eq!(DEFAULT_TENANT.to_string(), "00000000-0000-0000-0000-000000000001");
        assert!(uuid("u", "").is_err());
        assert!(uuid("u", "nope").is_err());
    }
}
