//! Page tokens of the file service's listings: the platform's format ([`flatrender_kit::page`])
//! with its refusals as `INVALID_ARGUMENT` on the request's token field.

use serde::de::DeserializeOwned;

pub use flatrender_kit::page::{encode, fingerprint, next_token};

use crate::error::{FileError, Result};

/// The sort key a token carries, or `None` for the first page. `INVALID_ARGUMENT` on `field`
/// when the token is malformed, expired, or was issued for other filters.
pub fn decode<K: DeserializeOwned>(field: &str, fingerprint: &str, token: &str) -> Result<Option<K>> {
    flatrender_kit::page::decode(fingerprint, token).map_err(|e| FileError::invalid(field, e.to_string()))
}
