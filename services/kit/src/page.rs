//! Opaque page tokens for keyset pagination, one format for every service.
//!
//! A token carries the sort key of the last item returned, a fingerprint of the filters and sort
//! it was issued for, and when it was issued. It is not secret and grants nothing: every query
//! still applies the caller's tenant and owner scope; the key is only a bound. Services map
//! [`InvalidPageToken`] to `INVALID_ARGUMENT` on the request's token field.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// How long a token stays valid (the APIs promise at least an hour).
const LIFETIME_SECONDS: i64 = 24 * 3600;

#[derive(serde::Serialize, serde::Deserialize)]
struct Envelope<F, K> {
    /// Filter fingerprint.
    f: F,
    /// Issued at, Unix seconds.
    t: i64,
    /// The last item's sort key.
    k: K,
}

/// Why a page token was refused; the text completes "page_token ...".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPageToken {
    /// Not a token at all, or one of another listing.
    #[error("is not a page token of this listing")]
    Malformed,
    /// Issued for other filters or another sort.
    #[error("was issued for other filters or another sort")]
    OtherFilters,
    /// Older than a day.
    #[error("has expired; start from the first page")]
    Expired,
}

/// A fingerprint of the filters and sort a listing was asked with; `parts` are their values.
pub fn fingerprint(parts: &[&dyn std::fmt::Debug]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(format!("{part:?}\u{1f}").as_bytes());
    }
    hex::encode(&hasher.finalize()[..12])
}

/// The token for the page after the item whose sort key is `key`.
pub fn encode<K: Serialize>(fingerprint: &str, key: &K) -> String {
    let envelope = Envelope { f: fingerprint, t: OffsetDateTime::now_utc().unix_timestamp(), k: key };
    // Serializing plain keys (numbers, strings, UUIDs) cannot fail.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&envelope).unwrap_or_default())
}

/// The sort key a token carries, or `None` for the first page (an empty token).
pub fn decode<K: DeserializeOwned>(fingerprint: &str, token: &str) -> Result<Option<K>, InvalidPageToken> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| InvalidPageToken::Malformed)?;
    let envelope: Envelope<String, K> = serde_json::from_slice(&bytes).map_err(|_| InvalidPageToken::Malformed)?;
    if envelope.f != fingerprint {
        return Err(InvalidPageToken::OtherFilters);
    }
    if OffsetDateTime::now_utc().unix_timestamp() - envelope.t > LIFETIME_SECONDS {
        return Err(InvalidPageToken::Expired);
    }
    Ok(Some(envelope.k))
}

/// Cuts `items`, fetched with one more than `limit` to tell whether another page follows, to
/// `limit`, and returns the token for the next page made by `token` from the last item kept
/// (empty when no page follows).
pub fn next_token<T>(items: &mut Vec<T>, limit: i64, token: impl FnOnce(&T) -> String) -> String {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if items.len() <= limit {
        return String::new();
    }
    items.truncate(limit);
    items.last().map(token).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let print = fingerprint(&[&"folder", &3]);
        let token = encode(&print, &("b.mp4".to_owned(), 7_i64));
        assert_eq!(decode(&print, &token), Ok(Some(("b.mp4".to_owned(), 7_i64))));
        let other = fingerprint(&[&"folder", &4]);
        assert_eq!(decode::<(String, i64)>(&other, &token), Err(InvalidPageToken::OtherFilters));
        assert_eq!(decode::<(String, i64)>(&print, "not-a-token!"), Err(InvalidPageToken::Malformed));
        assert_eq!(decode::<u8>(&print, &token), Err(InvalidPageToken::Malformed), "another listing's key");
        assert_eq!(decode::<(String, i64)>(&print, ""), Ok(None));
        let old =
            Envelope { f: print.as_str(), t: OffsetDateTime::now_utc().unix_timestamp() - LIFETIME_SECONDS - 1, k: 1 };
        let old = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&old).unwrap());
        assert_eq!(decode::<i32>(&print, &old), Err(InvalidPageToken::Expired));
    }

    #[test]
    fn pages_are_cut_with_a_token() {
        let mut items = vec![1, 2, 3];
        assert_eq!(next_token(&mut items, 2, |last| last.to_string()), "2");
        assert_eq!(items, vec![1, 2]);
        assert_eq!(next_token(&mut items, 2, |last| last.to_string()), "");
        assert_eq!(items, vec![1, 2]);
    }
}
