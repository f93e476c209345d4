//! `InspectRender`: one job of any tenant with its scene data and scheduling statistics.

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::RenderApi;
use crate::api::records::{self, Detail, JOB_COLUMNS};
use crate::error::{RenderError, Result};
use crate::model::validate;

impl RenderApi {
    /// `InspectRender` for a platform admin.
    pub(crate) async fn inspect_render_as_admin(
        &self,
        request: &pb::InspectRenderRequest,
    ) -> Result<pb::InspectRenderResponse> {
        let id = validate::uuid("render_id", &request.render_id)?;
        let mut conn = self.state.pool.acquire().await?;
        let render = any_job(&mut conn, id).await?.ok_or(RenderError::NotFound("render"))?;
        let stats = stats(&mut conn, id).await?;
        Ok(pb::InspectRenderResponse { render: Some(render), stats: Some(stats) })
    }
}

/// Job `id` of whichever tenant, complete with scene data; `None` when unknown.
pub(super) async fn any_job(conn: &mut PgConnection, id: Uuid) -> Result<Option<pb::RenderJob>> {
    let row =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM render.render_jobs j WHERE j.id = $1")))
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else { return Ok(None) };
    let mut jobs = [records::job(&row, Detail::Full)?];
    records::complete(conn, &mut jobs, Detail::Full).await?;
    let [job] = jobs;
    Ok(Some(job))
}

/// Counts over the chunks (render and assembly tasks) and attempts of job `id`.
async fn stats(conn: &mut PgConnection, id: Uuid) -> Result<pb::RenderStats> {
    let row = sqlx::query(
        "SELECT c.queued, c.leased, c.running, c.done, c.failed, c.canceled,
                a.attempts, a.failed_attempts, a.node_time_ms, a.node_ids,
                coalesce((extract(epoch FROM a.first_assigned_at - j.created_at) * 1000)::bigint, 0) AS queue_wait_ms,
                (SELECT count(*) FROM render.frame_repair_jobs r WHERE r.job_id = j.id) AS repairs
           FROM render.render_jobs j,
        LATERAL (SELECT count(*) FILTER (WHERE state = 'queued') AS queued,
                        count(*) FILTER (WHERE state = 'leased') AS leased,
                        count(*) FILTER (WHERE state = 'running') AS running,
                        count(*) FILTER (WHERE state = 'done') AS done,
                        count(*) FILTER (WHERE state = 'failed') AS failed,
                        count(*) FILTER (WHERE state = 'canceled') AS canceled
                   FROM render.frame_jobs WHERE job_id = j.id AND lane IN ('render', 'assemble')) c,
        LATERAL (SELECT count(*) FILTER (WHERE outcome IS DISTINCT FROM 'rejected') AS attempts,
                        count(*) FILTER (WHERE outcome IN ('template_error', 'machine_error', 'timeout', 'lease_lost'))
                            AS failed_attempts,
                        coalesce(sum(render_ms), 0)::bigint AS node_time_ms,
                        coalesce(array_agg(DISTINCT node_id) FILTER (WHERE node_id IS NOT NULL), '{}') AS node_ids,
                        min(assigned_at) AS first_assigned_at
                   FROM render.frame_job_attempts WHERE job_id = j.id) a
          WHERE j.id = $1",
    )
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let count = |column: &str| -> Result<i32> { Ok(i32::try_from(row.try_get::<i64, _>(column)?).unwrap_or(i32::MAX)) };
    let nodes: Vec<Uuid> = row.try_get("node_ids")?;
    Ok(pb::RenderStats {
        chunks_queued: count("queued")?,
        chunks_leased: count("leased")?,
        chunks_running: count("running")?,
        chunks_done: count("done")?,
        chunks_failed: count("failed")?,
        chunks_canceled: count("canceled")?,
        attempts: count("attempts")?,
        failed_attempts: count("failed_attempts")?,
        repairs: count("repairs")?,
        node_ids: nodes.iter().map(Uuid::to_string).collect(),
        queue_wait_ms: row.try_get::<i64, _>("queue_wait_ms")?.max(0),
        node_time_ms: row.try_get("node_time_ms")?,
    })
}
