//! RFC 6238 time-based one-time passwords for MFA.
//!
//! SHA-1, 6 digits and 30-second steps: the only parameters every authenticator app honours
//! (several silently ignore `algorithm`, `digits` and `period` in the enrolment URL).

use std::fmt;

use rand::Rng as _;
use rand::rand_core::UnwrapErr;
use rand::rngs::SysRng;
use subtle::ConstantTimeEq as _;
use totp_rs::{Builder, Totp};

/// Seconds per time step.
pub const PERIOD_SECONDS: u64 = 30;
/// Digits in a code.
pub const DIGITS: usize = 6;
/// Length of a generated secret: 160 bits, the size RFC 4226 §4 recommends.
pub const SECRET_LEN: usize = 20;
/// Shortest secret accepted: RFC 4226 §4 requires at least 128 bits.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted: HMAC-SHA1 hashes longer keys down to 20 bytes, so more adds nothing.
pub const MAX_SECRET_LEN: usize = 64;
/// Steps either side of the current one that are accepted, for clock drift and typing time.
const DRIFT_STEPS: u64 = 1;

/// A shared TOTP secret.
///
/// Holds a generator keyed with the secret and counting in whole steps (a step duration of one),
/// so step numbers never have to be multiplied back into seconds (no overflow for any `u64`).
#[derive(Clone)]
pub struct TotpSecret {
    totp: Totp,
}

impl TotpSecret {
    /// A fresh 160-bit secret from the operating system's generator.
    ///
    /// Panics only if the OS cannot supply randomness at all, where no secret could be made.
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        UnwrapErr(SysRng).fill_bytes(&mut bytes);
        Self::keyed(&bytes)
    }

    /// A secret read back from storage; `None` unless it is 16 to 64 bytes long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return None;
        }
        Some(Self::keyed(bytes))
    }

    /// The builder's own checks (length >= 16, 6..=8 digits, non-zero step) hold by construction
    /// here, so it is built without them rather than through a fallible path that cannot fail.
    fn keyed(bytes: &[u8]) -> Self {
        Self { totp: Builder::new().with_secret(bytes.to_vec()).with_step_duration(1).build_noncompliant() }
    }

    /// The raw secret, for storage (encrypted at rest by the caller).
    pub fn as_bytes(&self) -> &[u8] {
        self.totp.secret().as_bytes()
    }

    /// RFC 4648 base32 without padding, as authenticator apps expect (32 characters for 20 bytes).
    pub fn base32(&self) -> String {
        self.totp.secret().to_base32()
    }

    fn code(&self, step: u64) -> String {
        // With a step duration of one, the "time" passed in is the step counter itself.
        self.totp.generate(step).to_string()
    }
}

/// Redacted: the secret must never reach logs through `{:?}`.
impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpSecret").field("len", &self.as_bytes().len()).finish_non_exhaustive()
    }
}

/// The enrolment URL (Key Uri Format) an authenticator app reads from a QR code.
///
/// The issuer appears both as the label prefix and as the `issuer` parameter, as the format
/// recommends; both label parts are percent-encoded so a colon in either cannot split the label.
pub fn otpauth_url(secret: &TotpSecret, issuer: &str, account: &str) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={PERIOD_SECONDS}",
        account = percent_encode(account),
        secret = secret.base32(),
    )
}

/// Percent-encodes all but RFC 3986 unreserved characters, so the result is safe both in the
/// label (where `:` separates issuer and account) and in a query value (where `+`, `&`, `=` matter).
fn percent_encode(input: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(input.len());
    for byte in input.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    out
}

/// The code for one time step (`unix_time / 30`); for tests and test clients.
pub fn code_at(secret: &TotpSecret, step: u64) -> String {
    secret.code(step)
}

/// Checks a code typed by the user and returns the step it belongs to.
///
/// Accepts the current step and one either side. Only a step strictly after `last_used_step` is
/// accepted, so each code works once (RFC 6238 §5.2) and an older code cannot follow a newer one;
/// the caller stores the returned step as the new `last_used_step`. When several steps match, the
/// current one wins, then the earlier one (which uses up fewer future steps).
pub fn verify(secret: &TotpSecret, code: &str, unix_time: u64, last_used_step: Option<u64>) -> Option<u64> {
    // Apps display codes as "123 456"; people paste them with surrounding blanks.
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = unix_time / PERIOD_SECONDS;
    let candidates = [Some(now), now.checked_sub(DRIFT_STEPS), now.checked_add(DRIFT_STEPS)];
    let mut matched = None;
    // Every candidate is computed and compared, in constant time, whatever matched before.
    for step in candidates.into_iter().flatten() {
        let equal = bool::from(secret.code(step).as_bytes().ct_eq(code.as_bytes()));
        let fresh = last_used_step.is_none_or(|last| step > last);
        if equal && fresh && matched.is_none() {
            matched = Some(step);
        }
    }
    matched
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    #[test]
    fn rfc6238_sha1_vectors() {
        // RFC 6238 appendix B, SHA-1 column; the 6-digit code is the last 6 of the 8 digits.
        let vectors: [(u64, &str); 6] = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        let secret = rfc_secret();
        for (time, eight) in vectors {
            let step = time / PERIOD_SECONDS;
            assert_eq!(code_at(&secret, step), eight[2..], "T={time}");
            assert_eq!(verify(&secret, &eight[2..], time, None), Some(step), "T={time}");
        }
    }

    #[test]
    fn drift_of_one_step_accepted_two_refused() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = now / PERIOD_SECONDS;
        for offset in [-1i64, 0, 1] {
            let s = step.checked_add_signed(offset).unwrap();
            assert_eq!(verify(&secret, &code_at(&secret, s), now, None), Some(s), "offset {offset}");
        }
        for s in [step - 2, step + 2] {
            let code = code_at(&secret, s);
            // Guard against an accidental collision with a code inside the window.
            assert!((step - 1..=step + 1).all(|w| code_at(&secret, w) != code));
            assert_eq!(verify(&secret, &code, now, None), None, "step {s}");
        }
    }

    #[test]
    fn reuse_and_rollback_refused() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = now / PERIOD_SECONDS;
        let current = code_at(&secret, step);
        let used = verify(&secret, &current, now, None).unwrap();
        assert_eq!(verify(&secret, &current, now, Some(used)), None, "same code twice");
        // The next step's code used early, then the current one is refused.
        let next = verify(&secret, &code_at(&secret, step + 1), now, Some(used)).unwrap();
        assert_eq!(next, step + 1);
        assert_eq!(verify(&secret, &code_at(&secret, step - 1), now, Some(step)), None);
        assert_eq!(verify(&secret, &current, now + PERIOD_SECONDS, Some(next)), None);
    }

    #[test]
    fn garbage_refused_and_blanks_tolerated() {
        let secret = rfc_secret();
        let now = 59;
        assert_eq!(verify(&secret, " 287 082 ", now, None), Some(1));
        for bad in ["", "28708", "2870822", "28708a", "+28708", "-28708", "２８７０８２", "287082\0"] {
            assert_eq!(verify(&secret, bad, now, None), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_secret_base32() {
        let secret = TotpSecret::generate();
        assert_eq!(secret.as_bytes().len(), SECRET_LEN);
        let b32 = secret.base32();
        assert_eq!(b32.len(), 32);
        assert!(b32.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)));
        assert_ne!(TotpSecret::generate().as_bytes(), secret.as_bytes());
        assert_eq!(rfc_secret().base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn secret_length_bounds_and_debug_redacted() {
        assert!(TotpSecret::from_bytes(&[7; 15]).is_none());
        assert!(TotpSecret::from_bytes(&[7; 16]).is_some());
        assert!(TotpSecret::from_bytes(&[7; 64]).is_some());
        assert!(TotpSecret::from_bytes(&[7; 65]).is_none());
        let debug = format!("{:?}", rfc_secret());
        assert!(!debug.contains("1234") && !debug.contains("GEZDG") && !debug.contains("49"), "{debug}");
    }

    #[test]
    fn otpauth_url_format() {
        let secret = rfc_secret();
        assert_eq!(
            otpauth_url(&secret, "ACME: Inc", "a+b@x.io"),
            "otpauth://totp/ACME%3A%20Inc:a%2Bb%40x.io?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=ACME%3A%20Inc&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(
            otpauth_url(&secret, "FlatRender", "ünï"),
            "otpauth://totp/FlatRender:%C3%BCn%C3%AF?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=FlatRender&algorithm=SHA1&digits=6&period=30"
        );
    }
}
