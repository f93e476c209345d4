//! `RequeueRender`: an operator puts a FAILED job, or a stuck non-terminal one, back in the
//! queue. In one transaction:
//!
//! - every task of the job that is not done returns to `queued` with its attempt counter reset
//!   and no backoff; DONE tasks and their frames are kept;
//! - a task that still had a node (a lease, or one a failure ended without its result) gets a
//!   new lease epoch and its open attempt is closed as `lease_lost`, so a late report of the old
//!   lease is rejected (STALE_EPOCH), and OPERATOR is stored as why it ended; the nodes
//!   holding leases are notified and their replicas send CancelTask(OPERATOR);
//! - frame repairs not done are queued again with their tasks (a chunk with repairs is done, so
//!   only its repairs render again);
//! - the job's nodes are forgotten when asked (`clear_excluded_nodes`);
//! - the job becomes QUEUED (it starts again with its next lease), or ASSEMBLING when every
//!   render chunk and frame repair is done (its assembly queued, created if it never was);
//!   RenderJobQueued is emitted with `requeued` set; dispatchers and watchers are woken.

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use uuid::Uuid;

use super::inspect::any_job;
use crate::RenderApi;
use crate::api::records::timestamp;
use crate::error::{RenderError, Result};
use crate::model::{JobState, validate};
use crate::queue::{QUEUE_CHANNEL, notify, notify_jobs, notify_nodes, retrying};

/// Longest requeue reason, in characters.
const MAX_REASON_CHARS: usize = 500;

impl RenderApi {
    /// `RequeueRender` by platform admin `operator`.
    pub(crate) async fn requeue_render_as_admin(
        &self,
        operator: Uuid,
        request: &pb::RequeueRenderRequest,
    ) -> Result<pb::RenderJob> {
        let id = validate::uuid("render_id", &request.render_id)?;
        let reason = validate::name("reason", &request.reason, MAX_REASON_CHARS)?;
        let render = retrying(|| self.requeue_once(id, &reason, request.clear_excluded_nodes)).await?;
        tracing::info!(
            %operator, render = %id, %reason, clear_excluded_nodes = request.clear_excluded_nodes,
            "render requeued by an operator"
        );
        Ok(render)
    }

    async fn requeue_once(&self, id: Uuid, reason: &str, clear_excluded: bool) -> Result<pb::RenderJob> {
        let mut tx = self.state.pool.begin().await?;
        let state: String = sqlx::query_scalar("SELECT state FROM render.render_jobs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(RenderError::NotFound("render"))?;
        if let Some(state @ (JobState::Completed | JobState::Canceled)) = JobState::from_db(&state) {
            return Err(RenderError::FailedPrecondition(format!("the render is {state} and cannot be requeued")));
        }

        // Close the attempts the tasks' last leases left open, before their epochs move on.
        let message = format!("requeued by an operator: {reason}");
        sqlx::query(
            "UPDATE render.frame_job_attempts a
                SET outcome = 'lease_lost', error_class = 'lost', error_code = 'lease_lost', error_message = $2,
                    finished_at = now(), cancel_reason = 'operator'
               FROM render.frame_jobs f
              WHERE f.id = a.frame_job_id AND f.job_id = $1 AND f.state <> 'done' AND a.outcome IS NULL",
        )
        .bind(id)
        .bind(&message)
        .execute(&mut *tx)
        .await?;
        let holders: Vec<Option<Uuid>> = sqlx::query_scalar(
            "WITH open AS (
                 SELECT id, node_id, state FROM render.frame_jobs
                  WHERE job_id = $1 AND state <> 'done' FOR NO KEY UPDATE)
             UPDATE render.frame_jobs f
                SET state = 'queued', lease_epoch = f.lease_epoch + (CASE WHEN f.node_id IS NULL THEN 0 ELSE 1 END),
                    node_id = NULL, leased_at = NULL, lease_expires_at = NULL, started_at = NULL, finished_at = NULL,
                    attempts = 0, not_before = NULL, frames_done = 0, current_frame = NULL, last_progress_at = NULL,
                    phase = NULL, percent = NULL
               FROM open WHERE f.id = open.id
          RETURNING CASE WHEN open.state IN ('leased', 'running') THEN open.node_id END",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE render.frame_repair_jobs SET state = 'queued', resolved_at = NULL
              WHERE job_id = $1 AND state IN ('running', 'failed', 'canceled')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if clear_excluded {
            sqlx::query("DELETE FROM render.frame_job_excluded_nodes WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }

        let render_left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM render.frame_jobs
              WHERE job_id = $1 AND lane IN ('render', 'repair') AND state <> 'done'",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        let next = if render_left > 0 { JobState::Queued } else { JobState::Assembling };
        if next == JobState::Assembling {
            // The assembly task exists once the last chunk was done; a job stuck before that
            // point gets it now.
            sqlx::query(
                "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, priority, submitted_at, max_attempts)
                 SELECT tenant_id, 'assemble', id, priority, created_at, max_attempts FROM render.render_jobs j
                  WHERE id = $1
                    AND NOT EXISTS (SELECT 1 FROM render.frame_jobs f WHERE f.job_id = j.id AND f.lane = 'assemble')",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE render.render_jobs
                SET state = $2, finished_at = NULL, error_class = NULL, error_code = NULL, error_message = NULL,
                    assembling_started_at = CASE WHEN $2 = 'assembling' THEN coalesce(assembling_started_at, now())
                                                 ELSE assembling_started_at END
              WHERE id = $1",
        )
        .bind(id)
        .bind(next.as_db())
        .execute(&mut *tx)
        .await?;

        let render = any_job(&mut tx, id).await?.ok_or(RenderError::NotFound("render"))?;
        queued_again(&mut tx, &render).await?;
        let nodes: Vec<Uuid> = holders.into_iter().flatten().collect();
        notify_nodes(&mut tx, &nodes).await?;
        notify(&mut tx, QUEUE_CHANNEL, "").await?;
        notify_jobs(&mut tx, &[id]).await?;
        tx.commit().await?;
        Ok(render)
    }
}

/// RenderJobQueued for `render` again, marked `requeued`.
async fn queued_again(tx: &mut sqlx::PgTransaction<'_>, render: &pb::RenderJob) -> Result<()> {
    let tenant = Uuid::try_parse(&render.tenant_id).ok();
    let output = render.output.unwrap_or_default();
    let event = ev::RenderJobQueued {
        tenant_id: render.tenant_id.clone(),
        occurred_at: Some(timestamp(time::OffsetDateTime::now_utc())),
        render_id: render.id.clone(),
        user_id: render.user_id.clone(),
        api_key_id: render.api_key_id.clone(),
        template_id: render.template_id.clone(),
        template_sha256: render.template_sha256.clone(),
        saved_project_id: render.saved_project_id.clone(),
        frames_total: render.frames_total,
        segment_count: i32::try_from(render.segments.len()).unwrap_or(i32::MAX),
        resolution: output.resolution,
        format: output.format,
        priority: render.priority,
        has_voiceover: render.has_voiceover,
        requeued: true,
        labels: render.labels.clone(),
    };
    let meta = EventMeta {
        source: "render",
        aggregate_type: "render_job",
        aggregate_id: render.id.clone(),
        tenant_id: tenant,
    };
    outbox::publish(tx, meta, &event).await?;
    Ok(())
}
