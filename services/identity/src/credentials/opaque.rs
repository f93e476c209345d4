//! Opaque bearer secrets: refresh tokens, email-verification and password-reset tokens.
//!
//! 256 random bits from the OS, sent as 43 URL-safe base64 characters; only their SHA-256 is
//! stored, so a database leak yields nothing usable. A fast hash suffices for uniformly random
//! secrets of that size.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// Characters of an encoded token.
pub const ENCODED_LEN: usize = 43;

/// A freshly issued token: `secret` goes to the client once, `hash` to the database.
pub struct Issued {
    /// The token as the client presents it.
    pub secret: String,
    /// SHA-256 of the token.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").finish_non_exhaustive()
    }
}

/// A new random token.
pub fn issue() -> Issued {
    let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let hash = hash(&secret);
    Issued { secret, hash }
}

/// The stored hash of a presented token, or `None` when it cannot be one of ours (so a typo or
/// garbage is refused before any lookup).
pub fn parse(presented: &str) -> Option<[u8; 32]> {
    let presented = presented.trim();
    let well_formed = presented.len() == ENCODED_LEN
        && presented.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    well_formed.then(|| hash(presented))
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_to_their_hash() {
        let token = issue();
        assert_eq!(token.secret.len(), ENCODED_LEN);
        assert_eq!(parse(&token.secret), Some(token.hash));
        assert_eq!(parse(&format!(" {} ", token.secret)), Some(token.hash), "blanks around are ignored");
        assert_ne!(issue().hash, token.hash);
        assert!(!format!("{token:?}").contains(&token.secret));
    }

    #[test]
    fn garbage_is_refused() {
        for bad in ["", "short", &"a".repeat(44), &format!("{}=", "a".repeat(42)), &"é".repeat(43)] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
