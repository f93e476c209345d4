//! One page of jobs, newest first (created_at, then id, descending), without scene data: the
//! shared part of the customer's `ListRenders` and the operators' `SearchRenders`, which differ
//! only in their filters.

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::page::{self, NewestFirst};
use super::records::{self, Detail, JOB_COLUMNS};
use crate::error::{RenderError, Result};
use crate::model::JobState;

/// The job states of a `states` filter, database spelling, sorted and deduplicated;
/// UNSPECIFIED means "any state".
pub fn states(values: &[i32]) -> Result<Vec<&'static str>> {
    let mut states = Vec::new();
    for (i, value) in values.iter().enumerate() {
        match (*value, JobState::from_pb_i32(*value)) {
            (0, _) => {}
            (_, Some(state)) => states.push(state.as_db()),
            (n, None) => return Err(RenderError::invalid(format!("states[{i}]"), format!("unknown value {n}"))),
        }
    }
    states.sort_unstable();
    states.dedup();
    Ok(states)
}

/// The query's start: every job column of `render_jobs j`, then the caller's ` AND ...`
/// conditions.
pub fn select() -> QueryBuilder<Postgres> {
    QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM render.render_jobs j WHERE true"))
}

/// What every job listing filters and pages by.
pub struct Window<'a> {
    /// Job states (database spelling); empty: any.
    pub states: &'a [&'static str],
    /// Created at or after.
    pub from: Option<OffsetDateTime>,
    /// Created before.
    pub until: Option<OffsetDateTime>,
    /// The request's page.
    pub page: Option<&'a common_pb::PageRequest>,
    /// The fingerprint of every filter (tokens are bound to it).
    pub fingerprint: &'a str,
}

/// Runs `query` (from [`select`] with the caller's conditions) with the window's filters, and
/// returns a page of jobs and the next page's token.
pub async fn fetch(
    pool: &PgPool,
    mut query: QueryBuilder<Postgres>,
    window: &Window<'_>,
) -> Result<(Vec<pb::RenderJob>, common_pb::PageResponse)> {
    let limit = page::size(window.page)?;
    let after: Option<NewestFirst> = page::decode(window.fingerprint, page::token(window.page))?;
    if !window.states.is_empty() {
        query.push(" AND j.state = ANY(").push_bind(window.states.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        query.push(")");
    }
    if let Some(from) = window.from {
        query.push(" AND j.created_at >= ").push_bind(from);
    }
    if let Some(until) = window.until {
        query.push(" AND j.created_at < ").push_bind(until);
    }
    if let Some(key) = after {
        let at: OffsetDateTime = page::position_time(&key)?;
        query.push(" AND (j.created_at, j.id) < (").push_bind(at).push(", ").push_bind(key.1).push(")");
    }
    query.push(" ORDER BY j.created_at DESC, j.id DESC LIMIT ").push_bind(limit + 1);

    let mut conn = pool.acquire().await?;
    let rows = query.build().fetch_all(&mut *conn).await?;
    let mut keyed = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get("id")?;
        let created: OffsetDateTime = row.try_get("created_at")?;
        keyed.push((page::newest_first(created, id), records::job(row, Detail::Summary)?));
    }
    let next_page_token = page::next_token(&mut keyed, limit, |(key, _)| page::encode(window.fingerprint, key));
    let mut renders: Vec<pb::RenderJob> = keyed.into_iter().map(|(_, job)| job).collect();
    records::complete(&mut conn, &mut renders, Detail::Summary).await?;
    Ok((renders, common_pb::PageResponse { next_page_token }))
}
