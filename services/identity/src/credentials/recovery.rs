//! Single-use MFA recovery codes.
//!
//! Codes are shown once and only a SHA-256 is stored, over the owner's id and the code, so one
//! precomputed table cannot crack every account's codes at once. A fast hash suffices because
//! each code is uniformly random with about 49.5 bits of entropy, not a human-chosen secret.

use std::fmt;

use rand::RngExt as _;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// Codes issued per set.
pub const SET_SIZE: usize = 10;
/// Characters per code, without the dash.
pub const CODE_LEN: usize = 10;
/// Lowercase letters and digits without the look-alikes 0/o, 1/l/i: 31 symbols. Ten of them give
/// 10 × log2(31) ≈ 49.5 bits per code.
pub const ALPHABET: &[u8; 31] = b"abcdefghjkmnpqrstuvwxyz23456789";
const GROUP: usize = CODE_LEN / 2;

/// One issued code: `display` goes to the user once, `hash` to the database.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryCode {
    /// "xxxxx-xxxxx", as shown to the user.
    pub display: String,
    /// SHA-256 of the normalised code (no dash); the only thing stored.
    pub hash: [u8; 32],
}

/// Redacted: the display form is a live credential.
impl fmt::Debug for RecoveryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveryCode").finish_non_exhaustive()
    }
}

/// A set of `count` distinct codes from the operating system's generator.
///
/// Panics only if the OS cannot supply randomness at all.
pub fn generate(owner: Uuid, count: usize) -> Vec<RecoveryCode> {
    let mut rng = UnwrapErr(SysRng);
    let mut codes: Vec<RecoveryCode> = Vec::with_capacity(count);
    while codes.len() < count {
        let normalized: String =
            (0..CODE_LEN).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect();
        let hash = hash(owner, &normalized);
        // A repeat is astronomically unlikely, but a set must never hold the same code twice.
        if codes.iter().any(|c| c.hash == hash) {
            continue;
        }
        let display = format!("{}-{}", &normalized[..GROUP], &normalized[GROUP..]);
        codes.push(RecoveryCode { display, hash });
    }
    codes
}

/// The canonical form of a typed code: lower case, dashes and blanks dropped. `None` unless
/// exactly ten characters of [`ALPHABET`] remain, so a typo fails before any lookup.
pub fn normalize(input: &str) -> Option<String> {
    let normalized: String =
        input.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_lowercase()).collect();
    let valid = normalized.len() == CODE_LEN && normalized.bytes().all(|b| ALPHABET.contains(&b));
    valid.then_some(normalized)
}

/// SHA-256 of the owner's id and a normalised code: the value stored and looked up.
pub fn hash(owner: Uuid, normalized: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(owner.as_bytes());
    hasher.update(normalized.as_bytes());
    hasher.finalize().into()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    const OWNER: Uuid = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);

    #[test]
    fn format_and_alphabet() {
        let codes = generate(OWNER, SET_SIZE);
        assert_eq!(codes.len(), SET_SIZE);
        for code in &codes {
            let d = code.display.as_bytes();
            assert_eq!(d.len(), CODE_LEN + 1, "{}", code.display);
            assert_eq!(d[GROUP], b'-');
            assert!(d.iter().enumerate().all(|(i, b)| i == GROUP || ALPHABET.contains(b)));
            for bad in b"0o1li" {
                assert!(!d.contains(bad));
            }
        }
    }

    #[test]
    fn alphabet_is_unambiguous_and_distinct() {
        let set: HashSet<u8> = ALPHABET.iter().copied().collect();
        assert_eq!(set.len(), ALPHABET.len());
        assert!(b"0o1li".iter().all(|b| !set.contains(b)));
        // At least 45 bits: 31^10 > 2^45.
        assert!(31f64.powi(10).log2() >= 45.0);
    }

    #[test]
    fn unique_within_a_set() {
        let codes = generate(OWNER, 200);
        let displays: HashSet<&str> = codes.iter().map(|c| c.display.as_str()).collect();
        let hashes: HashSet<[u8; 32]> = codes.iter().map(|c| c.hash).collect();
        assert_eq!(displays.len(), 200);
        assert_eq!(hashes.len(), 200);
    }

    #[test]
    fn normalize_accepts_variants() {
        for input in ["ABCDE-FGHJK", "abcde-fghjk", "abcdefghjk", " ABCDE FGHJK ", "AbCdE - fGhJk\t", "ab-cd-ef-gh-jk"]
        {
            assert_eq!(normalize(input).as_deref(), Some("abcdefghjk"), "{input:?}");
        }
    }

    #[test]
    fn normalize_rejects_wrong_length_or_alphabet() {
        for input in [
            "",
            "abcde-fghj",
            "abcde-fghjkm",
            "abcde-fghj0",
            "abcde-fghjo",
            "abcde-fghj1",
            "abcde-fghjl",
            "abcde-fghji",
            "abcde_fghjk",
            "abcdé-fghjk",
            "abcde-fghj!",
        ] {
            assert_eq!(normalize(input), None, "{input:?}");
        }
    }

    #[test]
    fn stored_hash_matches_normalised_display() {
        for code in generate(OWNER, SET_SIZE) {
            let typed = code.display.to_uppercase();
            assert_eq!(hash(OWNER, &normalize(&typed).unwrap()), code.hash);
            assert_ne!(hash(Uuid::nil(), &normalize(&typed).unwrap()), code.hash, "the owner salts the hash");
            assert!(!format!("{code:?}").contains(&code.display));
        }
        // A known value, so a change of hash or normalisation cannot pass unnoticed.
        let expected = "8da66d0bd50f75346937dadd002d1374f814b58b3f3e388edaee5a2b324fbf93";
        let hex: String = hash(OWNER, "abcdefghjk").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }
}
