//! Job transitions driven by task outcomes: the first lease starts a job, accepted frames move
//! its progress, the last render chunk or frame repair moves it to assembling, a failure fails
//! it and its other tasks and open repairs. Each runs in the caller's transaction with its
//! events and notifications.

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgTransaction;
use uuid::Uuid;

use super::events::{self, JobRow};
use super::repair;
use super::{notify, notify_jobs, notify_nodes};
use crate::error::Result;
use crate::model::{ErrorInfo, strip_node_paths};

/// Longest error message a job keeps (render.v1.RenderError.message).
const MAX_JOB_MESSAGE_CHARS: usize = 2000;
/// RenderJobProgressed at most this often per job.
const PROGRESS_EVENT_SECONDS: i64 = 10;

/// Jobs whose first task was just leased become RENDERING (RenderJobStarted).
pub async fn start(tx: &mut PgTransaction<'_>, jobs: &[Uuid]) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    // Only rows still queued or preparing match, so a running job's row is not even locked.
    let sql = format!(
        "UPDATE render.render_jobs
            SET state = 'rendering', started_at = coalesce(started_at, now()),
                rendering_started_at = coalesce(rendering_started_at, now())
          WHERE id = ANY($1) AND state IN ('queued', 'preparing')
      RETURNING {}",
        JobRow::COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(jobs).fetch_all(&mut **tx).await?;
    for row in &rows {
        events::job_started(tx, &JobRow::from_row(row)?).await?;
    }
    notify_jobs(tx, jobs).await?;
    Ok(())
}

/// Adds `new_frames` accepted frames and `render_ms` node time to a job; writes
/// RenderJobProgressed when its progress crossed a multiple of 10 % (at most every 10 s).
pub async fn add_work(tx: &mut PgTransaction<'_>, job: Uuid, new_frames: i64, render_ms: i64) -> Result<()> {
    let sql = format!(
        "UPDATE render.render_jobs
            SET frames_done = least(frames_total, frames_done + $2),
                progress = least(1, (least(frames_total, frames_done + $2))::real / greatest(frames_total, 1)),
                render_ms = render_ms + $3
          WHERE id = $1
      RETURNING state, {}",
        JobRow::COLUMNS
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(job)
        .bind(new_frames.max(0) as i32)
        .bind(render_ms.max(0))
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(());
    };
    let state: String = sqlx::Row::try_get(&row, "state")?;
    let job_row = JobRow::from_row(&row)?;
    if new_frames > 0 {
        let total = f64::from(job_row.frames_total.max(1));
        let before = (f64::from(job_row.frames_done) - new_frames as f64).max(0.0) / total;
        let after = f64::from(job_row.frames_done) / total;
        let crossed = (before * 10.0).floor() < (after * 10.0).floor();
        let due = job_row
            .progress_event_at
            .is_none_or(|at| (time::OffsetDateTime::now_utc() - at).whole_seconds() >= PROGRESS_EVENT_SECONDS);
        if crossed && due && state == "rendering" {
            sqlx::query("UPDATE render.render_jobs SET progress_event_at = now() WHERE id = $1")
                .bind(job)
                .execute(&mut **tx)
                .await?;
            events::job_progressed(tx, &job_row, pb::JobState::Rendering).await?;
        }
    }
    notify_jobs(tx, &[job]).await?;
    Ok(())
}

/// After a render chunk or a frame repair of `job` is done: when every render chunk and every
/// repair is, the job becomes ASSEMBLING and its assemble task is queued.
pub async fn after_chunk_done(tx: &mut PgTransaction<'_>, job: Uuid) -> Result<()> {
    // The job row's lock serializes the last chunks finishing together: whichever commits
    // second counts (in a fresh snapshot) every chunk done.
    let locked: Option<String> =
        sqlx::query_scalar("SELECT state FROM render.render_jobs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(job)
            .fetch_optional(&mut **tx)
            .await?;
    if !matches!(locked.as_deref(), Some("queued" | "preparing" | "rendering")) {
        return Ok(());
    }
    let remaining: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM render.frame_jobs
          WHERE job_id = $1 AND lane IN ('render', 'repair') AND dispatch_state <> 'done'",
    )
    .bind(job)
    .fetch_one(&mut **tx)
    .await?;
    if remaining > 0 {
        return Ok(());
    }
    let sql = format!(
        "UPDATE render.render_jobs SET state = 'assembling', assembling_started_at = now(), progress_event_at = now()
          WHERE id = $1
      RETURNING {}",
        JobRow::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job).fetch_one(&mut **tx).await?;
    let job_row = JobRow::from_row(&row)?;
    sqlx::query(
        "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, priority, submitted_at, max_attempts)
         SELECT tenant_id, 'assemble', id, priority, created_at, max_attempts FROM render.render_jobs WHERE id = $1",
    )
    .bind(job)
    .execute(&mut **tx)
    .await?;
    events::job_progressed(tx, &job_row, pb::JobState::Assembling).await?;
    notify(tx, super::QUEUE_CHANNEL, "").await?;
    notify_jobs(tx, &[job]).await?;
    Ok(())
}

/// Fails `job` with `error` (RenderJobFailed; the message without the node's paths, and without
/// its names where a node reported it, see `report::for_customers`) unless it already ended,
/// and fails its other unfinished tasks, keeping their node and epoch so the replicas holding
/// them send CancelTask(JOB_FAILED) (the nodes are notified), and its open frame repairs.
/// Returns whether the job was failed now.
pub async fn fail(tx: &mut PgTransaction<'_>, job: Uuid, error: &ErrorInfo) -> Result<bool> {
    // The customer's copy (the job and its event): without the node's paths. The attempt and
    // the task keep the agent's message for operators.
    let message = crate::model::text::head(&strip_node_paths(&error.message), MAX_JOB_MESSAGE_CHARS);
    let message = if message.trim().is_empty() { "the render failed".to_owned() } else { message };
    let sql = format!(
        "UPDATE render.render_jobs
            SET state = 'failed', error_class = $2, error_code = $3, error_message = $4, finished_at = now()
          WHERE id = $1 AND state NOT IN ('completed', 'failed', 'canceled')
      RETURNING {}",
        JobRow::COLUMNS
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(job)
        .bind(error.class.as_db())
        .bind(error.code.map(|code| code.as_db()))
        .bind(&message)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(false);
    };
    let job_row = JobRow::from_row(&row)?;
    let holders: Vec<Option<Uuid>> = sqlx::query_scalar(
        "WITH open AS (
             SELECT id, node_id, state FROM render.frame_jobs
              WHERE job_id = $1 AND state IN ('queued', 'leased', 'running') FOR NO KEY UPDATE)
         UPDATE render.frame_jobs f SET state = 'failed', finished_at = now()
           FROM open WHERE f.id = open.id
         RETURNING CASE WHEN open.state IN ('leased', 'running') THEN open.node_id END",
    )
    .bind(job)
    .fetch_all(&mut **tx)
    .await?;
    repair::fail_open(tx, job).await?;
    let nodes: Vec<Uuid> = holders.into_iter().flatten().collect();
    notify_nodes(tx, &nodes).await?;
    events::job_failed(tx, &job_row, ErrorInfo { message, ..error.clone() }.to_pb()).await?;
    notify_jobs(tx, &[job]).await?;
    Ok(true)
}

/// The verified video of an assembly, as the export stores it.
#[derive(Clone, Debug)]
pub struct Video {
    /// The file.
    pub file_id: Uuid,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size_bytes: u64,
    /// Probed pixel size.
    pub width: u32,
    /// Probed pixel size.
    pub height: u32,
    /// Probed frame rate.
    pub fps: f64,
    /// Probed frame count.
    pub frame_count: i32,
    /// Probed duration.
    pub duration_ms: i64,
    /// Whether it has an audio stream.
    pub has_audio: bool,
}

/// Stores `video` as the export of assembling `job` (kept for the plan's export retention) and
/// completes the job (RenderJobCompleted). Returns the export's expiry, or `None` when the job
/// was not assembling any more (canceled or failed meanwhile: nothing is stored).
pub async fn complete(
    tx: &mut PgTransaction<'_>,
    job: Uuid,
    video: &Video,
    default_plan: &crate::plans::PlanLimits,
) -> Result<Option<time::OffsetDateTime>> {
    let locked: Option<(String, Uuid, Option<Uuid>)> =
        sqlx::query_as("SELECT state, tenant_id, user_id FROM render.render_jobs WHERE id = $1 FOR NO KEY UPDATE")
            .bind(job)
            .fetch_optional(&mut **tx)
            .await?;
    let Some(("assembling", tenant, user)) = locked.as_ref().map(|(s, t, u)| (s.as_str(), *t, *u)) else {
        return Ok(None);
    };
    let plan = crate::plans::effective(&mut **tx, tenant, user, default_plan).await?;
    let (export_id, expires_at): (Uuid, Option<time::OffsetDateTime>) = sqlx::query_as(
        "INSERT INTO render.exports (tenant_id, user_id, job_id, file_id, format, width, height, fps, frame_count,
             duration_ms, size_bytes, sha256, has_audio, watermarked, expires_at)
         SELECT tenant_id, user_id, id, $2, output_format, $3, $4, $5, $6, $7, $8, $9, $10, watermark,
                now() + make_interval(days => $11)
           FROM render.render_jobs WHERE id = $1
      RETURNING id, expires_at",
    )
    .bind(job)
    .bind(video.file_id)
    .bind(i32::try_from(video.width).unwrap_or(i32::MAX))
    .bind(i32::try_from(video.height).unwrap_or(i32::MAX))
    .bind(video.fps)
    .bind(video.frame_count)
    .bind(video.duration_ms)
    .bind(i64::try_from(video.size_bytes).unwrap_or(i64::MAX))
    .bind(video.sha256.as_slice())
    .bind(video.has_audio)
    .bind(i32::try_from(plan.limits.export_retention_days).unwrap_or(i32::MAX))
    .fetch_one(&mut **tx)
    .await?;
    let sql = format!(
        "UPDATE render.render_jobs
            SET state = 'completed', finished_at = now(), progress = 1, frames_done = frames_total,
                error_class = NULL, error_code = NULL, error_message = NULL
          WHERE id = $1
      RETURNING output_format, watermark, has_voiceover, template_id, saved_project_id, {}",
        JobRow::COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(job).fetch_one(&mut **tx).await?;
    let job_row = JobRow::from_row(&row)?;
    let format: String = sqlx::Row::try_get(&row, "output_format")?;
    let completion = events::Completion {
        export_id,
        file_id: video.file_id,
        size_bytes: video.size_bytes,
        duration_ms: video.duration_ms,
        width: video.width,
        height: video.height,
        fps: video.fps,
        format: crate::model::OutputFormat::from_db(&format)
            .map_or(pb::OutputFormat::Unspecified, |f| pb::OutputFormat::try_from(f.to_pb_i32()).unwrap_or_default()),
        watermarked: sqlx::Row::try_get(&row, "watermark")?,
        has_voiceover: sqlx::Row::try_get(&row, "has_voiceover")?,
        template_id: sqlx::Row::try_get(&row, "template_id")?,
        saved_project_id: sqlx::Row::try_get(&row, "saved_project_id")?,
    };
    events::job_completed(tx, &job_row, &completion).await?;
    notify_jobs(tx, &[job]).await?;
    Ok(expires_at)
}
