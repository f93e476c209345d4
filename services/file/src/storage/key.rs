//! Object keys: which names an object may have, and where the service keeps what.
//!
//! # Layout
//!
//! | key | what |
//! | --- | --- |
//! | `tenants/<tenant id>/files/<file id>` | a stored file's bytes, one object per `files` row |
//! | `uploads/<session id>/<part number>` | one part of a resumable upload; the number has five digits (`00001`..`10000`) so a listing returns parts in order |
//!
//! `uploads/<session id>` is a session's `staging_key`: abort and expiry remove everything under it.
//! Ids are UUIDs in their hyphenated lower-case form.
//!
//! # Rules
//!
//! A key is 1..=1024 bytes (S3's limit), made of `/`-separated segments: no leading or trailing
//! `/`, no empty segment, no `.` segment and no `..` anywhere (the `files.storage_key` CHECK
//! refuses it), no control characters. Only ASCII letters, digits, `-`, `_` and `.` are allowed:
//! they mean the same on every backend (S3's "safe characters", no percent-encoding by
//! `object_store`, no `#`, which `LocalFileSystem` reserves for uploads in progress).

use std::fmt;
use std::str::FromStr;

use object_store::path::Path;
use uuid::Uuid;

/// The longest key, in bytes (S3's limit; also the `files.storage_key` CHECK).
pub const MAX_KEY_BYTES: usize = 1024;

/// The most parts a resumable upload may have (S3's limit, and the `upload_sessions` CHECK).
pub const MAX_PART_NUMBER: u32 = 10_000;

/// Why a string is not an object key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("the key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_BYTES`].
    #[error("the key is {0} bytes long; at most {MAX_KEY_BYTES} are allowed")]
    TooLong(usize),
    /// The key starts with `/`.
    #[error("the key starts with `/`")]
    LeadingSlash,
    /// The key ends with `/`.
    #[error("the key ends with `/`")]
    TrailingSlash,
    /// Two `/` in a row.
    #[error("the key has an empty segment (`//`)")]
    EmptySegment,
    /// `..` somewhere in the key.
    #[error("the key contains `..`")]
    DotDot,
    /// A segment that is just `.`.
    #[error("the key has a `.` segment")]
    DotSegment,
    /// A control character at this byte offset.
    #[error("the key has a control character at byte {0}")]
    ControlCharacter(usize),
    /// A character outside ASCII letters, digits, `-`, `_`, `.` and `/`.
    #[error("the key has the character {0:?}; only ASCII letters, digits, `-`, `_`, `.` and `/` are allowed")]
    Character(char),
    /// A part number outside `1..=MAX_PART_NUMBER`.
    #[error("part number {0} is outside 1..={MAX_PART_NUMBER}")]
    PartNumber(u32),
}

/// A validated object key (see the module documentation for the rules and the layout).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// Checks `key` against the rules.
    pub fn new(key: impl Into<String>) -> Result<Self, KeyError> {
        let key = key.into();
        validate(&key)?;
        Ok(Self(key))
    }

    /// Where a file's bytes live: `tenants/<tenant>/files/<file>`.
    pub fn file(tenant: Uuid, file: Uuid) -> Self {
        Self(format!("tenants/{tenant}/files/{file}"))
    }

    /// Everything of one tenant's files: `tenants/<tenant>/files`, for [`list`](super::Storage::list).
    pub fn tenant_files(tenant: Uuid) -> Self {
        Self(format!("tenants/{tenant}/files"))
    }

    /// The parts of one resumable upload: `uploads/<session>` (its `staging_key`).
    pub fn upload(session: Uuid) -> Self {
        Self(format!("uploads/{session}"))
    }

    /// All resumable uploads: `uploads`, for sweeps that look for leftovers.
    pub fn uploads() -> Self {
        Self("uploads".to_owned())
    }

    /// One part of a resumable upload: `uploads/<session>/<part number, five digits>`.
    pub fn upload_part(session: Uuid, part_number: u32) -> Result<Self, KeyError> {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(KeyError::PartNumber(part_number));
        }
        Ok(Self(format!("uploads/{session}/{part_number:05}")))
    }

    /// The part number when this is the key of an upload part.
    pub fn part_number(&self) -> Option<u32> {
        let mut segments = self.0.split('/');
        match (segments.next(), segments.next(), segments.next(), segments.next()) {
            (Some("uploads"), Some(_session), Some(number), None) if number.len() == 5 => {
                number.parse().ok().filter(|n| (1..=MAX_PART_NUMBER).contains(n))
            }
            _ => None,
        }
    }

    /// The key as text (what `files.storage_key` stores).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `object_store` path; the allowed characters need no encoding, so it reads the same.
    pub(crate) fn to_path(&self) -> Path {
        Path::from(self.0.as_str())
    }
}

fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong(key.len()));
    }
    if key.starts_with('/') {
        return Err(KeyError::LeadingSlash);
    }
    if key.ends_with('/') {
        return Err(KeyError::TrailingSlash);
    }
    if key.contains("..") {
        return Err(KeyError::DotDot);
    }
    if let Some((at, _)) = key.char_indices().find(|(_, c)| c.is_control()) {
        return Err(KeyError::ControlCharacter(at));
    }
    if let Some(c) = key.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))) {
        return Err(KeyError::Character(c));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(KeyError::EmptySegment),
            "." => return Err(KeyError::DotSegment),
            _ => {}
        }
    }
    Ok(())
}

impl FromStr for ObjectKey {
    type Err = KeyError;

    fn from_str(key: &str) -> Result<Self, Self::Err> {
        Self::new(key)
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = KeyError;

    fn try_from(key: String) -> Result<Self, Self::Error> {
        Self::new(key)
    }
}

impl AsRef<str> for ObjectKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectKey({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_keys_are_valid_keys() {
        let tenant = Uuid::new_v4();
        let id = Uuid::new_v4();
        let session = Uuid::new_v4();
        let built = [
            ObjectKey::file(tenant, id),
            ObjectKey::tenant_files(tenant),
            ObjectKey::upload(session),
            ObjectKey::uploads(),
            ObjectKey::upload_part(session, 1).unwrap_or_else(|e| panic!("{e}")),
            ObjectKey::upload_part(session, MAX_PART_NUMBER).unwrap_or_else(|e| panic!("{e}")),
        ];
        for key in built {
            assert_eq!(ObjectKey::new(key.as_str()), Ok(key.clone()), "{key}");
        }
        assert_eq!(ObjectKey::file(tenant, id).as_str(), format!("tenants/{tenant}/files/{id}"));
    }

    #[test]
    fn part_keys_sort_in_part_order_and_parse_back() {
        let session = Uuid::new_v4();
        let keys: Vec<ObjectKey> =
            [1, 2, 10, 999, 10_000].iter().filter_map(|&n| ObjectKey::upload_part(session, n).ok()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, keys);
        assert_eq!(keys[2].as_str(), format!("uploads/{session}/00010"));
        let numbers: Vec<Option<u32>> = keys.iter().map(ObjectKey::part_number).collect();
        assert_eq!(numbers, [Some(1), Some(2), Some(10), Some(999), Some(10_000)]);
        assert_eq!(ObjectKey::file(session, session).part_number(), None);
        assert_eq!(ObjectKey::upload(session).part_number(), None);
    }

    #[test]
    fn part_numbers_outside_the_range_are_refused() {
        let session = Uuid::new_v4();
        assert_eq!(ObjectKey::upload_part(session, 0), Err(KeyError::PartNumber(0)));
        assert_eq!(ObjectKey::upload_part(session, 10_001), Err(KeyError::PartNumber(10_001)));
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        let long = "a".repeat(MAX_KEY_BYTES + 1);
        let cases: &[(&str, KeyError)] = &[
            ("", KeyError::Empty),
            (&long, KeyError::TooLong(MAX_KEY_BYTES + 1)),
            ("/tenants/a", KeyError::LeadingSlash),
            ("tenants/a/", KeyError::TrailingSlash),
            ("tenants//a", KeyError::EmptySegment),
            ("tenants/../a", KeyError::DotDot),
            ("..", KeyError::DotDot),
            ("a..b", KeyError::DotDot),
            ("tenants/./a", KeyError::DotSegment),
            (".", KeyError::DotSegment),
            ("tenants/a\nb", KeyError::ControlCharacter(9)),
            ("tenants/\u{0}", KeyError::ControlCharacter(8)),
            ("tenants/\u{7f}", KeyError::ControlCharacter(8)),
            ("tenants/a b", KeyError::Character(' ')),
            ("tenants/a\\b", KeyError::Character('\\')),
            ("tenants/a#1", KeyError::Character('#')),
            ("tenants/a%2F", KeyError::Character('%')),
            ("tenants/é", KeyError::Character('é')),
        ];
        for (key, reason) in cases {
            assert_eq!(ObjectKey::new(*key).as_ref().err(), Some(reason), "{key:?}");
        }
    }

    #[test]
    fn the_longest_key_and_ordinary_names_are_accepted() {
        let longest = "a".repeat(MAX_KEY_BYTES);
        for key in [longest.as_str(), "a", "a.b", "x/y_z-1.tar.gz", ".hidden", "v1/.x"] {
            assert!(ObjectKey::new(key).is_ok(), "{key:?}");
        }
    }

    #[test]
    fn the_store_path_reads_like_the_key() {
        let key = ObjectKey::file(Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(key.to_path().as_ref(), key.as_str());
    }

    #[test]
    fn errors_name_the_problem() {
        let message = ObjectKey::new("a/../b").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains(".."), "{message}");
    }
}
