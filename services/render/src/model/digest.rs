//! SHA-256 digests: 32 raw bytes in the database (`bytea`), 64 lower-case hex characters on the
//! wire.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::error::{RenderError, Result};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// The digest of `data`.
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// A finished hasher's digest.
    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }

    /// A request field: exactly 64 lower-case hex characters (`common.v1`), required.
    pub fn from_field(field: &str, value: &str) -> Result<Self> {
        if value.is_empty() {
            return Err(RenderError::invalid(field, "is required"));
        }
        let lower_hex = value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut bytes = [0_u8; 32];
        if !lower_hex || hex::decode_to_slice(value, &mut bytes).is_err() {
            return Err(RenderError::invalid(field, "must be 64 lower-case hex characters"));
        }
        Ok(Self(bytes))
    }

    /// The stored bytes (a `bytea` of a CHECKed length 32); `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Self)
    }

    /// The raw bytes (what the `bytea` columns store).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn lower_case_hex_round_trips() {
        let empty = Sha256Digest::of(b"");
        assert_eq!(empty.to_hex(), EMPTY);
        assert_eq!(empty.to_string(), EMPTY);
        assert_eq!(Sha256Digest::from_field("f", EMPTY).unwrap(), empty);
        assert_eq!(Sha256Digest::from_slice(empty.as_bytes()), Some(empty));
        assert_eq!(Sha256Digest::from_slice(&[0; 31]), None);
    }

    #[test]
    fn anything_else_is_refused() {
        let err = |v: &str| Sha256Digest::from_field("template_sha256", v).unwrap_err().to_string();
        assert_eq!(err(""), "template_sha256: is required");
        for bad in [EMPTY.to_uppercase(), EMPTY[..63].to_owned(), format!("{EMPTY}0"), "g".repeat(64)] {
            assert_eq!(err(&bad), "template_sha256: must be 64 lower-case hex characters", "{bad}");
        }
    }
}
