//! SHA-256 digests: 32 raw bytes in the database (`bytea`), 64 lower-case hex characters on the
//! wire.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

/// Why text or bytes are not a SHA-256 digest.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// Not 64 hex characters.
    #[error("a SHA-256 must be 64 hex characters")]
    Hex,
    /// Not 32 bytes.
    #[error("a SHA-256 must be 32 bytes, not {0}")]
    Length(usize),
}

impl Sha256Digest {
    /// The digest of `data`, in one go (small data and tests; uploads hash as they stream).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw bytes (what `files.sha256` stores).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lower-case hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(text: &str) -> Result<Self, DigestError> {
        let mut bytes = [0_u8; 32];
        hex::decode_to_slice(text, &mut bytes).map_err(|_| DigestError::Hex)?;
        Ok(Self(bytes))
    }

    pub(crate) fn from_hasher(hasher: Sha256) -> Self {
        Self(hasher.finalize().into())
    }
}

impl From<[u8; 32]> for Sha256Digest {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl TryFrom<&[u8]> for Sha256Digest {
    type Error = DigestError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 32]>::try_from(bytes).map(Self).map_err(|_| DigestError::Length(bytes.len()))
    }
}

impl FromStr for Sha256Digest {
    type Err = DigestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::from_hex(text)
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
    fn hex_round_trips_and_matches_the_known_digest() {
        let empty = Sha256Digest::of(b"");
        assert_eq!(empty.to_hex(), EMPTY);
        assert_eq!(Sha256Digest::from_hex(EMPTY), Ok(empty));
        assert_eq!(Sha256Digest::from_hex(&EMPTY.to_uppercase()), Ok(empty));
        assert_eq!(Sha256Digest::try_from(&empty.as_bytes()[..]), Ok(empty));
    }

    #[test]
    fn malformed_digests_are_refused() {
        assert_eq!(Sha256Digest::from_hex("abc"), Err(DigestError::Hex));
        assert_eq!(Sha256Digest::from_hex(&"g".repeat(64)), Err(DigestError::Hex));
        assert_eq!(Sha256Digest::try_from(&[0_u8; 31][..]), Err(DigestError::Length(31)));
    }
}
