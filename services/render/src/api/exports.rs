//! Exports (`GetExport`, `ListExports`): the finished videos, visible as their jobs are (a user's
//! own, or all of the tenant's for admins), newest first.

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::access::Viewer;
use super::page::{self, NewestFirst};
use super::records::{self, EXPORT_COLUMNS};
use crate::RenderApi;
use crate::error::{RenderError, Result};
use crate::model::validate;

impl RenderApi {
    /// `GetExport` for `viewer`.
    pub(crate) async fn get_export_for(&self, viewer: &Viewer, request: &pb::GetExportRequest) -> Result<pb::Export> {
        let id = validate::uuid("export_id", &request.export_id)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EXPORT_COLUMNS} FROM render.exports
              WHERE id = $1 AND tenant_id = $2 AND ($3::uuid IS NULL OR user_id = $3)"
        )))
        .bind(id)
        .bind(viewer.tenant)
        .bind(viewer.only_owner())
        .fetch_optional(&self.state.pool)
        .await?
        .ok_or(RenderError::NotFound("export"))?;
        records::export(&row)
    }

    /// `ListExports` for `viewer`.
    pub(crate) async fn list_exports_for(
        &self,
        viewer: &Viewer,
        request: &pb::ListExportsRequest,
    ) -> Result<pb::ListExportsResponse> {
        let limit = page::size(request.page.as_ref())?;
        let job = validate::optional_uuid("render_id", &request.render_id)?;
        let (from, until) = page::time_range("created", request.created.as_ref())?;
        let owner = viewer.only_owner();
        let print = page::fingerprint(&[&"exports", &viewer.tenant, &owner, &job, &from, &until]);
        let after: Option<NewestFirst> = page::decode(&print, page::token(request.page.as_ref()))?;

        let mut query: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {EXPORT_COLUMNS} FROM render.exports WHERE tenant_id = "));
        query.push_bind(viewer.tenant);
        if let Some(owner) = owner {
            query.push(" AND user_id = ").push_bind(owner);
        }
        if let Some(job) = job {
            query.push(" AND job_id = ").push_bind(job);
        }
        if let Some(from) = from {
            query.push(" AND created_at >= ").push_bind(from);
        }
        if let Some(until) = until {
            query.push(" AND created_at < ").push_bind(until);
        }
        if let Some(key) = after {
            query.push(" AND (created_at, id) < (").push_bind(page::position_time(&key)?).push(", ");
            query.push_bind(key.1).push(")");
        }
        query.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(limit + 1);
        let rows = query.build().fetch_all(&self.state.pool).await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for row in &rows {
            let id: Uuid = row.try_get("id")?;
            let created: OffsetDateTime = row.try_get("created_at")?;
            keyed.push((page::newest_first(created, id), records::export(row)?));
        }
        let next = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
        Ok(pb::ListExportsResponse {
            exports: keyed.into_iter().map(|(_, export)| export).collect(),
            page: Some(flatrender_proto::flatrender::common::v1::PageResponse { next_page_token: next }),
        })
    }
}
