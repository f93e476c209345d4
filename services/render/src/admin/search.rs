//! `SearchRenders`: jobs of every tenant, newest first (created_at, then id, descending), without
//! scene data, in keyset pages whose tokens are bound to the filters.

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::page::{self, NewestFirst};
use crate::api::records::{self, Detail, JOB_COLUMNS};
use crate::error::{RenderError, Result};
use crate::model::{ErrorClass, JobState, validate};

impl RenderApi {
    /// `SearchRenders` for a platform admin.
    pub(crate) async fn search_renders_as_admin(
        &self,
        request: &pb::SearchRendersRequest,
    ) -> Result<pb::SearchRendersResponse> {
        let limit = page::size(request.page.as_ref())?;
        let tenant = validate::optional_uuid("tenant_id", &request.tenant_id)?;
        let node = validate::optional_uuid("node_id", &request.node_id)?;
        let mut states: Vec<&'static str> = Vec::new();
        for (i, value) in request.states.iter().enumerate() {
            match (*value, JobState::from_pb_i32(*value)) {
                // UNSPECIFIED means "any state".
                (0, _) => {}
                (_, Some(state)) => states.push(state.as_db()),
                (n, None) => return Err(RenderError::invalid(format!("states[{i}]"), format!("unknown value {n}"))),
            }
        }
        states.sort_unstable();
        states.dedup();
        let class = match (request.error_class, ErrorClass::from_pb_i32(request.error_class)) {
            (0, _) => None,
            (_, Some(class)) if class.allowed_for_jobs() => Some(class.as_db()),
            (_, Some(class)) => {
                return Err(RenderError::invalid("error_class", format!("{class} never applies to a job")));
            }
            (n, None) => return Err(RenderError::invalid("error_class", format!("unknown value {n}"))),
        };
        let (from, until) = page::time_range("created", request.created.as_ref())?;
        let print = page::fingerprint(&[&"admin-renders", &tenant, &states, &from, &until, &node, &class]);
        let after: Option<NewestFirst> = page::decode(&print, page::token(request.page.as_ref()))?;

        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM render.render_jobs j WHERE true"));
        if let Some(tenant) = tenant {
            query.push(" AND j.tenant_id = ").push_bind(tenant);
        }
        if !states.is_empty() {
            query.push(" AND j.state = ANY(").push_bind(states.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            query.push(")");
        }
        if let Some(from) = from {
            query.push(" AND j.created_at >= ").push_bind(from);
        }
        if let Some(until) = until {
            query.push(" AND j.created_at < ").push_bind(until);
        }
        if let Some(node) = node {
            // Every lease has an attempt row: "ran on the node" is "leased to it once".
            query.push(" AND EXISTS (SELECT 1 FROM render.frame_job_attempts a WHERE a.job_id = j.id AND a.node_id = ");
            query.push_bind(node).push(")");
        }
        if let Some(class) = class {
            query.push(" AND j.error_class = ").push_bind(class);
        }
        if let Some(key) = after {
            let at: OffsetDateTime = page::position_time(&key)?;
            query.push(" AND (j.created_at, j.id) < (").push_bind(at).push(", ").push_bind(key.1).push(")");
        }
        query.push(" ORDER BY j.created_at DESC, j.id DESC LIMIT ").push_bind(limit + 1);

        let mut conn = self.state.pool.acquire().await?;
        let rows = query.build().fetch_all(&mut *conn).await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("id")?;
            let created: OffsetDateTime = row.try_get("created_at")?;
            keyed.push((page::newest_first(created, id), records::job(row, Detail::Summary)?));
        }
        let next = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
        let mut renders: Vec<pb::RenderJob> = keyed.into_iter().map(|(_, job)| job).collect();
        records::complete(&mut conn, &mut renders, Detail::Summary).await?;
        Ok(pb::SearchRendersResponse { renders, page: Some(common_pb::PageResponse { next_page_token: next }) })
    }
}
