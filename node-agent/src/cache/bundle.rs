//! What identifies a template bundle: its SHA-256 and its size.

use std::fmt;

use super::error::CacheError;

/// A bundle's SHA-256, lower-case hex (the cache's key and the entry's directory name, so it is
/// checked before it ever becomes part of a path).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Checks `s` is exactly 64 lower-case hex digits.
    pub fn parse(s: &str) -> Result<Self, CacheError> {
        let ok = s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if ok { Ok(Self(s.to_owned())) } else { Err(CacheError::InvalidKey(s.to_owned())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A template bundle (a zip file) as the orchestrator names it in an assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleRef {
    pub sha256: Sha256Hex,
    /// Size of the zip in bytes.
    pub size: u64,
}

impl BundleRef {
    pub fn new(sha256: &str, size: u64) -> Result<Self, CacheError> {
        Ok(Self { sha256: Sha256Hex::parse(sha256)?, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_64_lower_case_hex_digits() {
        assert!(Sha256Hex::parse(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", &"A".repeat(64), &"a".repeat(63), &"g".repeat(64)] {
            assert!(matches!(Sha256Hex::parse(bad), Err(CacheError::InvalidKey(_))), "{bad}");
        }
    }
}
