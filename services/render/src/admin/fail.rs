//! `FailRender`: an operator fails a non-terminal job now. In one transaction its queued tasks
//! and open repairs are canceled, and the queue's own job-failed transition
//! ([`jobs::fail`]) fails it with ERROR_CLASS_INTERNAL / FAILED_BY_OPERATOR: leased and running
//! tasks keep their node and epoch so the replicas holding them send CancelTask(JOB_FAILED),
//! RenderJobFailed goes to the outbox and watchers are woken.

use flatrender_proto::flatrender::render::v1 as pb;
use uuid::Uuid;

use super::inspect::any_job;
use crate::RenderApi;
use crate::error::{RenderError, Result};
use crate::model::{ErrorClass, ErrorCode, ErrorInfo, JobState, validate};
use crate::queue::jobs;
use crate::queue::retrying;

/// Longest operator message (render.v1.RenderError.message).
const MAX_MESSAGE_CHARS: usize = 2000;

impl RenderApi {
    /// `FailRender` by platform admin `operator`.
    pub(crate) async fn fail_render_as_admin(
        &self,
        operator: Uuid,
        request: &pb::FailRenderRequest,
    ) -> Result<pb::RenderJob> {
        let id = validate::uuid("render_id", &request.render_id)?;
        let message = validate::name("message", &request.message, MAX_MESSAGE_CHARS)?;
        let render = retrying(|| self.fail_once(id, &message)).await?;
        tracing::info!(%operator, render = %id, %message, "render failed by an operator");
        Ok(render)
    }

    async fn fail_once(&self, id: Uuid, message: &str) -> Result<pb::RenderJob> {
        let mut tx = self.state.pool.begin().await?;
        let state: String = sqlx::query_scalar("SELECT state FROM render.render_jobs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(RenderError::NotFound("render"))?;
        if let Some(state) = JobState::from_db(&state).filter(|s| s.is_terminal()) {
            return Err(RenderError::FailedPrecondition(format!("the render is {state} and can no longer be failed")));
        }
        // Queued tasks never ran: canceled (no node to tell). The leased and running ones are
        // failed by jobs::fail, which keeps their lease so their nodes are told.
        sqlx::query(
            "UPDATE render.frame_jobs SET state = 'canceled', finished_at = now() WHERE job_id = $1 AND state = 'queued'",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE render.frame_repair_jobs SET state = 'canceled', resolved_at = now()
              WHERE job_id = $1 AND state IN ('queued', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        let error = ErrorInfo {
            class: ErrorClass::Internal,
            code: Some(ErrorCode::FailedByOperator),
            message: message.to_owned(),
        };
        if !jobs::fail(&mut tx, id, &error).await? {
            // Not reachable while the row is locked; said plainly should it ever be.
            return Err(RenderError::FailedPrecondition("the render ended meanwhile".into()));
        }
        let render = any_job(&mut tx, id).await?.ok_or(RenderError::NotFound("render"))?;
        tx.commit().await?;
        Ok(render)
    }
}
