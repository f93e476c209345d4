//! `CancelRender`, per the orchestrator's contract for canceling a job's tasks: in one
//! transaction its queued, leased and running tasks become `canceled` (keeping `node_id` and
//! `lease_epoch`, so the replica holding each node knows whom to tell and under which epoch),
//! every node that held one is told through `render_nodes`, the job becomes CANCELED,
//! RenderJobCanceled goes to the outbox and watchers are woken through `render_jobs`.

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::Row;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::access::Viewer;
use crate::api::records::{self, Detail};
use crate::error::{RenderError, Result};
use crate::model::{JobState, Labels, validate};

/// Longest cancel reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

impl RenderApi {
    /// `CancelRender` for `viewer`.
    pub(crate) async fn cancel_render_for(
        &self,
        viewer: &Viewer,
        request: &pb::CancelRenderRequest,
    ) -> Result<pb::RenderJob> {
        let id = validate::uuid("render_id", &request.render_id)?;
        let reason = validate::text("reason", &request.reason, MAX_REASON_CHARS)?;
        let mut tx = self.state.pool.begin().await?;
        let row = sqlx::query(
            "SELECT state, user_id, labels FROM render.render_jobs
              WHERE id = $1 AND tenant_id = $2 AND ($3::uuid IS NULL OR user_id = $3)
              FOR UPDATE",
        )
        .bind(id)
        .bind(viewer.tenant)
        .bind(viewer.only_owner())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(RenderError::NotFound("render"))?;
        let state = JobState::from_db(row.try_get("state")?);
        match state {
            Some(JobState::Canceled) => {
                // Idempotent: the job as it is.
                let job = records::visible_job(&mut tx, viewer, id, Detail::Full).await?;
                tx.commit().await?;
                return job.ok_or(RenderError::NotFound("render"));
            }
            Some(done @ (JobState::Completed | JobState::Failed)) => {
                return Err(RenderError::FailedPrecondition(format!(
                    "the render is {done} and can no longer be canceled"
                )));
            }
            _ => {}
        }
        let owner: Option<Uuid> = row.try_get("user_id")?;
        let labels = Labels::from_json(&row.try_get::<serde_json::Value, _>("labels")?);

        // Tasks keep node_id and lease_epoch: the replica holding the node sends CancelTask.
        let nodes: Vec<Uuid> = sqlx::query_scalar(
            "WITH canceled AS (
                 UPDATE render.frame_jobs SET state = 'canceled', finished_at = now()
                  WHERE job_id = $1 AND state IN ('queued', 'leased', 'running')
                  RETURNING node_id, state)
             SELECT DISTINCT node_id FROM canceled WHERE node_id IS NOT NULL",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE render.frame_repair_jobs SET state = 'canceled', resolved_at = now()
              WHERE job_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let render_ms: i64 = sqlx::query_scalar(
            "UPDATE render.render_jobs
                SET state = 'canceled', finished_at = now(), cancel_requested_at = now(),
                    canceled_by_user_id = $2, cancel_reason = NULLIF($3, '')
              WHERE id = $1
              RETURNING render_ms",
        )
        .bind(id)
        .bind(viewer.user)
        .bind(&reason)
        .fetch_one(&mut *tx)
        .await?;
        for node in &nodes {
            sqlx::query("SELECT pg_notify('render_nodes', $1)").bind(node.to_string()).execute(&mut *tx).await?;
        }
        sqlx::query("SELECT pg_notify('render_jobs', $1)").bind(id.to_string()).execute(&mut *tx).await?;
        let event = ev::RenderJobCanceled {
            tenant_id: viewer.tenant.to_string(),
            occurred_at: Some(records::timestamp(time::OffsetDateTime::now_utc())),
            render_id: id.to_string(),
            user_id: owner.map(|u| u.to_string()).unwrap_or_default(),
            canceled_by_user_id: viewer.user.to_string(),
            reason,
            render_ms,
            labels: labels.to_pb(),
        };
        let meta = EventMeta {
            source: "render",
            aggregate_type: "render_job",
            aggregate_id: id.to_string(),
            tenant_id: Some(viewer.tenant),
        };
        outbox::publish(&mut tx, meta, &event).await?;
        let job = records::visible_job(&mut tx, viewer, id, Detail::Full).await?;
        tx.commit().await?;
        job.ok_or(RenderError::NotFound("render"))
    }
}
