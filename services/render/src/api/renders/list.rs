//! `ListRenders`: the tenant's jobs, newest first (created_at, then id, descending), without scene
//! data, in keyset pages whose tokens are bound to the filters.

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::page::{self, NewestFirst};
use crate::api::records::{self, Detail, JOB_COLUMNS};
use crate::error::{RenderError, Result};
use crate::model::{JobState, validate};

impl RenderApi {
    /// `ListRenders` for `viewer`.
    pub(crate) async fn list_renders_for(
        &self,
        viewer: &Viewer,
        request: &pb::ListRendersRequest,
    ) -> Result<pb::ListRendersResponse> {
        let limit = page::size(request.page.as_ref())?;
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
        let (from, until) = page::time_range("created", request.created.as_ref())?;
        let named = validate::optional_uuid("user_id", &request.user_id)?;
        let owner = viewer.owner_filter("user_id", named)?;
        let project = validate::optional_uuid("saved_project_id", &request.saved_project_id)?;
        let print = page::fingerprint(&[&"renders", &viewer.tenant, &owner, &states, &from, &until, &project]);
        let after: Option<NewestFirst> = page::decode(&print, page::token(request.page.as_ref()))?;

        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM render.render_jobs j WHERE j.tenant_id = "));
        query.push_bind(viewer.tenant);
        if let Some(owner) = owner {
            query.push(" AND j.user_id = ").push_bind(owner);
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
        if let Some(project) = project {
            query.push(" AND j.saved_project_id = ").push_bind(project);
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
        Ok(pb::ListRendersResponse {
            renders,
            page: Some(flatrender_proto::flatrender::common::v1::PageResponse { next_page_token: next }),
        })
    }
}
