//! Newest-first keyset pages: most listings order by a time and an id, descending, and resume
//! after the last item's pair.

use flatrender_proto::flatrender::common::v1::PageRequest;
use time::OffsetDateTime;
use uuid::Uuid;

use super::auth::{from_micros, micros};
use crate::error::{IdentityError, Result};

/// The pages of one listing with its filters.
pub(crate) struct NewestFirst {
    print: String,
}

impl NewestFirst {
    /// Pages of the listing named by `parts` (its name and filters: a token of other filters
    /// is refused).
    pub(crate) fn new(parts: &[&dyn std::fmt::Debug]) -> Self {
        Self { print: flatrender_kit::page::fingerprint(parts) }
    }

    /// The (time, id) the requested page starts after; `None` for the first page.
    pub(crate) fn after(&self, page: Option<&PageRequest>) -> Result<Option<(OffsetDateTime, Uuid)>> {
        let after: Option<(i64, Uuid)> =
            flatrender_kit::page::decode(&self.print, page.map_or("", |p| p.page_token.as_str()))
                .map_err(|e| IdentityError::invalid("page.page_token", e.to_string()))?;
        Ok(after.map(|(at, id)| (from_micros(at), id)))
    }

    /// Cuts `rows` (fetched with one extra) to `limit` and returns the next page's token.
    pub(crate) fn next<T>(&self, rows: &mut Vec<T>, limit: i64, key: impl Fn(&T) -> (OffsetDateTime, Uuid)) -> String {
        flatrender_kit::page::next_token(rows, limit, |last| {
            let (at, id) = key(last);
            flatrender_kit::page::encode(&self.print, &(micros(at), id))
        })
    }
}
