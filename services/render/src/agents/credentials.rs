//! Join tokens and node credentials: 256 random bits each, shown once, stored only as the
//! SHA-256 of the whole string.
//!
//! - Join token: `frj1.<43 URL-safe base64 characters>` (NodeAdminService.CreateEnrollmentToken).
//! - Node credential: `frn1.<node id>.<43 URL-safe base64 characters>` (AgentService.Enroll).
//!
//! Both are looked up by their hash, so a lookup reveals nothing about a secret it did not
//! find; where a stored hash is compared with a computed one the comparison is constant-time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Prefix of join tokens.
pub const JOIN_TOKEN_PREFIX: &str = "frj1.";
/// Prefix of node credentials (the kit's `NODE_CREDENTIAL_PREFIX`).
pub const NODE_CREDENTIAL_PREFIX: &str = flatrender_kit::auth::NODE_CREDENTIAL_PREFIX;
/// Characters of an encoded 256-bit secret.
const SECRET_CHARS: usize = 43;

/// The SHA-256 of a token or credential string: what the database keeps.
pub fn hash(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Whether two byte strings are equal, in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn new_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn is_secret(text: &str) -> bool {
    text.len() == SECRET_CHARS
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        // 43 characters carry 258 bits; the last one may only hold 2 bits (canonical encoding).
        && URL_SAFE_NO_PAD.decode(text).is_ok_and(|bytes| bytes.len() == 32)
}

/// A fresh join token (the secret to show once).
pub fn new_join_token() -> String {
    format!("{JOIN_TOKEN_PREFIX}{}", new_secret())
}

/// Whether `text` has the shape of a join token (the hash decides whether it exists).
pub fn is_join_token(text: &str) -> bool {
    text.strip_prefix(JOIN_TOKEN_PREFIX).is_some_and(is_secret)
}

/// A fresh credential for `node`.
pub fn new_node_credential(node: Uuid) -> String {
    format!("{NODE_CREDENTIAL_PREFIX}{}.{}", node.hyphenated(), new_secret())
}

/// The node id inside a well-formed node credential; `None` for anything else.
pub fn node_of_credential(text: &str) -> Option<Uuid> {
    let rest = text.strip_prefix(NODE_CREDENTIAL_PREFIX)?;
    let (node, secret) = rest.split_once('.')?;
    // Only the canonical hyphenated form, so one node has one credential spelling.
    let id = Uuid::try_parse(node).ok()?;
    (node.len() == 36 && node == id.hyphenated().to_string() && is_secret(secret)).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_have_their_shape() {
        let token = new_join_token();
        assert!(token.starts_with("frj1."));
        assert_eq!(token.len(), 5 + 43);
        assert!(is_join_token(&token));
        assert_ne!(token, new_join_token(), "random");
        assert!(!is_join_token(&token[..token.len() - 1]));
        assert!(!is_join_token(&format!("{token}A")));
        assert!(!is_join_token(&token.replace("frj1.", "frn1.")));
        assert!(!is_join_token(&format!("frj1.{}", "!".repeat(43))));
    }

    #[test]
    fn credentials_name_their_node() {
        let node = Uuid::new_v4();
        let credential = new_node_credential(node);
        assert_eq!(node_of_credential(&credential), Some(node));
        assert_eq!(credential.len(), 5 + 36 + 1 + 43);
        assert_eq!(node_of_credential(&credential.to_uppercase()), None);
        assert_eq!(node_of_credential(&credential.replacen('.', "", 2)), None);
        assert_eq!(node_of_credential(&format!("frn1.{}.{}", node.simple(), "A".repeat(43))), None);
        assert_eq!(node_of_credential(&new_join_token()), None);
        assert_eq!(node_of_credential(""), None);
    }

    #[test]
    fn hashes_and_comparison() {
        let token = new_join_token();
        assert_eq!(hash(&token), hash(&token.clone()));
        assert_ne!(hash(&token), hash(&new_join_token()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
