//! Paging of the render service's listings: the platform's page tokens
//! ([`flatrender_kit::page`]) refused as `INVALID_ARGUMENT` on `page.page_token`, page sizes,
//! the "newest first" keyset position and time-range filters.

use flatrender_proto::flatrender::common::v1 as common_pb;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;
use uuid::Uuid;

pub use flatrender_kit::page::{encode, fingerprint, next_token};

use crate::error::{RenderError, Result};

/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page.
pub const MAX_PAGE_SIZE: u32 = 500;

/// The sort key a token carries, or `None` for the first page. `INVALID_ARGUMENT` on
/// `page.page_token` when the token is malformed, expired, or was issued for other filters.
pub fn decode<K: DeserializeOwned>(fingerprint: &str, token: &str) -> Result<Option<K>> {
    flatrender_kit::page::decode(fingerprint, token).map_err(|e| RenderError::invalid("page.page_token", e.to_string()))
}

/// The page size of a request: 0 is the default, at most [`MAX_PAGE_SIZE`].
pub fn size(page: Option<&common_pb::PageRequest>) -> Result<i64> {
    match page.map_or(0, |p| p.page_size) {
        0 => Ok(i64::from(DEFAULT_PAGE_SIZE)),
        n if n <= MAX_PAGE_SIZE => Ok(i64::from(n)),
        _ => Err(RenderError::invalid("page.page_size", format!("must be at most {MAX_PAGE_SIZE}"))),
    }
}

/// The token of a request (empty for the first page).
pub fn token(page: Option<&common_pb::PageRequest>) -> &str {
    page.map_or("", |p| p.page_token.as_str())
}

/// The keyset position "newest first" listings continue after: (created_at in µs, id).
pub type NewestFirst = (i64, Uuid);

/// The position of an item created at `at` with `id`.
pub fn newest_first(at: OffsetDateTime, id: Uuid) -> NewestFirst {
    // PostgreSQL keeps microseconds, so this is exact.
    (i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX), id)
}

/// The timestamp of a stored position.
pub fn position_time(key: &NewestFirst) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(key.0) * 1000)
        .map_err(|_| RenderError::invalid("page.page_token", "is not a page token of this listing"))
}

/// The bounds of a `TimeRange` filter (`field` named in errors); unset bounds are `None`.
pub fn time_range(
    field: &str,
    range: Option<&common_pb::TimeRange>,
) -> Result<(Option<OffsetDateTime>, Option<OffsetDateTime>)> {
    let Some(range) = range else { return Ok((None, None)) };
    let convert = |name: &str, at: Option<&prost_types::Timestamp>| {
        at.map(|at| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos))
                .map_err(|_| RenderError::invalid(format!("{field}.{name}"), "is not a valid time"))
        })
        .transpose()
    };
    let start = convert("start_time", range.start_time.as_ref())?;
    let end = convert("end_time", range.end_time.as_ref())?;
    if let (Some(start), Some(end)) = (start, end)
        && start > end
    {
        return Err(RenderError::invalid(field, "start_time is after end_time"));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_mismatch() {
        let print = fingerprint(&[&"queued", &3]);
        let key = newest_first(OffsetDateTime::now_utc(), Uuid::new_v4());
        let token = encode(&print, &key);
        assert_eq!(decode::<NewestFirst>(&print, &token).unwrap(), Some(key));
        let other = fingerprint(&[&"queued", &4]);
        assert!(decode::<NewestFirst>(&other, &token).is_err());
        assert!(decode::<NewestFirst>(&print, "not-a-token!").is_err());
        assert_eq!(decode::<NewestFirst>(&print, "").unwrap(), None);
        let at = position_time(&key).unwrap();
        assert_eq!(newest_first(at, key.1), key);
    }

    #[test]
    fn sizes_and_ranges() {
        assert_eq!(size(None).unwrap(), 50);
        let page = |n| common_pb::PageRequest { page_size: n, page_token: String::new() };
        assert_eq!(size(Some(&page(500))).unwrap(), 500);
        assert!(size(Some(&page(501))).is_err());
        let ts = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        let range = common_pb::TimeRange { start_time: ts(10), end_time: ts(5) };
        assert!(time_range("created", Some(&range)).is_err());
        let open = common_pb::TimeRange { start_time: ts(10), end_time: None };
        assert!(matches!(time_range("created", Some(&open)).unwrap(), (Some(_), None)));
    }
}
