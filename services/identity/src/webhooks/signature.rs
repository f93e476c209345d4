//! `X-FlatRender-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.

use hmac::{Hmac, KeyInit, Mac as _};
use sha2::Sha256;

/// The header value for `body` signed with `secret` at `unix_seconds`.
pub fn sign(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    format!("t={unix_seconds},v1={}", hex(&mac(secret, unix_seconds, body)))
}

/// Whether `header` is a valid signature of `body` with `secret`, made at most `max_age_seconds`
/// before `now`: what a receiver does (the tests use it as one).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: i64, max_age_seconds: i64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<i64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return false };
    if now - t > max_age_seconds || t - now > max_age_seconds {
        return false;
    }
    let Some(given) = unhex(v1) else { return false };
    let mut check = keyed(secret);
    check.update(format!("{t}.").as_bytes());
    check.update(body);
    check.verify_slice(&given).is_ok()
}

fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this never falls back.
    <Hmac<Sha256>>::new_from_slice(secret).unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()))
}

fn mac(secret: &[u8], unix_seconds: i64, body: &[u8]) -> Vec<u8> {
    let mut mac = keyed(secret);
    mac.update(format!("{unix_seconds}.").as_bytes());
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_fails() {
        let header = sign(b"whsec_test", 1_700_000_000, b"{\"id\":\"1\"}");
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify(b"whsec_test", &header, b"{\"id\":\"1\"}", 1_700_000_100, 300));
        assert!(!verify(b"whsec_other", &header, b"{\"id\":\"1\"}", 1_700_000_100, 300), "another secret");
        assert!(!verify(b"whsec_test", &header, b"{\"id\":\"2\"}", 1_700_000_100, 300), "another body");
        assert!(!verify(b"whsec_test", &header, b"{\"id\":\"1\"}", 1_700_000_400, 300), "too old");
        assert!(!verify(b"whsec_test", "t=1,v1=zz", b"", 1, 300));
        // A known value (Python: hmac.new(b"k", b"1700000000.{}", sha256)), so the scheme cannot drift.
        assert_eq!(
            sign(b"k", 1_700_000_000, b"{}"),
            "t=1700000000,v1=c6ef4734033cee2367414a0939385eca0397754aa7a59716da7463a9298b5146"
        );
    }
}
