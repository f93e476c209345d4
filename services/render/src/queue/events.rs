//! The orchestrator's outbox events, written in the transaction of the change they report.

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgTransaction;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::wire::{id_text, labels, now};
use crate::error::Result;

const SOURCE: &str = "render";

/// The columns of `render.render_jobs` an event needs; select them with [`JobRow::COLUMNS`].
#[derive(Clone, Debug)]
pub struct JobRow {
    /// Job id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Submitting user.
    pub user_id: Option<Uuid>,
    /// API key it was submitted with.
    pub api_key_id: Option<Uuid>,
    /// Client labels.
    pub labels: serde_json::Value,
    /// Submit time.
    pub created_at: OffsetDateTime,
    /// Node time spent.
    pub render_ms: i64,
    /// Frames accepted.
    pub frames_done: i32,
    /// Frames in all.
    pub frames_total: i32,
    /// Share of frames done.
    pub progress: f32,
    /// When the last progress event was written.
    pub progress_event_at: Option<OffsetDateTime>,
}

impl JobRow {
    /// The column list (for `RETURNING` or `SELECT`), unqualified.
    pub const COLUMNS: &'static str = "id, tenant_id, user_id, api_key_id, labels, created_at, render_ms, \
                                       frames_done, frames_total, progress, progress_event_at";

    /// Reads a row selected with [`JobRow::COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        use sqlx::Row as _;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            user_id: row.try_get("user_id")?,
            api_key_id: row.try_get("api_key_id")?,
            labels: row.try_get("labels")?,
            created_at: row.try_get("created_at")?,
            render_ms: row.try_get("render_ms")?,
            frames_done: row.try_get("frames_done")?,
            frames_total: row.try_get("frames_total")?,
            progress: row.try_get("progress")?,
            progress_event_at: row.try_get("progress_event_at")?,
        })
    }

    fn meta(&self) -> EventMeta<'static> {
        EventMeta {
            source: SOURCE,
            aggregate_type: "render_job",
            aggregate_id: self.id.to_string(),
            tenant_id: Some(self.tenant_id),
        }
    }
}

/// The first task of a job was leased.
pub async fn job_started(tx: &mut PgTransaction<'_>, job: &JobRow) -> Result<()> {
    let waited = OffsetDateTime::now_utc() - job.created_at;
    let event = ev::RenderJobStarted {
        tenant_id: job.tenant_id.to_string(),
        occurred_at: Some(now()),
        render_id: job.id.to_string(),
        user_id: id_text(job.user_id),
        queue_wait_ms: waited.whole_milliseconds().clamp(0, i64::MAX as i128) as i64,
        labels: labels(&job.labels),
    };
    outbox::publish(tx, job.meta(), &event).await?;
    Ok(())
}

/// A job's progress crossed a multiple of 10 %, or it entered `state` ASSEMBLING.
pub async fn job_progressed(tx: &mut PgTransaction<'_>, job: &JobRow, state: pb::JobState) -> Result<()> {
    let event = ev::RenderJobProgressed {
        tenant_id: job.tenant_id.to_string(),
        occurred_at: Some(now()),
        render_id: job.id.to_string(),
        user_id: id_text(job.user_id),
        state: state as i32,
        progress: f64::from(job.frames_done) / f64::from(job.frames_total.max(1)),
        frames_done: job.frames_done,
        frames_total: job.frames_total,
        labels: labels(&job.labels),
    };
    outbox::publish(tx, job.meta(), &event).await?;
    Ok(())
}

/// A job failed with `error`.
pub async fn job_failed(tx: &mut PgTransaction<'_>, job: &JobRow, error: pb::RenderError) -> Result<()> {
    let event = ev::RenderJobFailed {
        tenant_id: job.tenant_id.to_string(),
        occurred_at: Some(now()),
        render_id: job.id.to_string(),
        user_id: id_text(job.user_id),
        api_key_id: id_text(job.api_key_id),
        error: Some(error),
        render_ms: job.render_ms,
        labels: labels(&job.labels),
    };
    outbox::publish(tx, job.meta(), &event).await?;
    Ok(())
}

/// The export of a completed job and the job's facts its event carries beyond [`JobRow`].
#[derive(Clone, Debug)]
pub struct Completion {
    /// The export.
    pub export_id: Uuid,
    /// The video.
    pub file_id: Uuid,
    /// Its size.
    pub size_bytes: u64,
    /// Its duration.
    pub duration_ms: i64,
    /// Its pixel size.
    pub width: u32,
    /// Its pixel size.
    pub height: u32,
    /// Its frame rate.
    pub fps: f64,
    /// Its container.
    pub format: pb::OutputFormat,
    /// Whether the plan's watermark is burnt in.
    pub watermarked: bool,
    /// Whether the job has a voiceover.
    pub has_voiceover: bool,
    /// Catalogue template.
    pub template_id: Option<Uuid>,
    /// Studio project.
    pub saved_project_id: Option<Uuid>,
}

/// A job's export was stored: the job completed.
pub async fn job_completed(tx: &mut PgTransaction<'_>, job: &JobRow, done: &Completion) -> Result<()> {
    let event = ev::RenderJobCompleted {
        tenant_id: job.tenant_id.to_string(),
        occurred_at: Some(now()),
        render_id: job.id.to_string(),
        user_id: id_text(job.user_id),
        api_key_id: id_text(job.api_key_id),
        export_id: done.export_id.to_string(),
        export_file_id: done.file_id.to_string(),
        export_size_bytes: done.size_bytes,
        video_duration_ms: done.duration_ms,
        render_ms: job.render_ms,
        frames_total: job.frames_total,
        resolution: Some(flatrender_proto::flatrender::common::v1::Resolution {
            width: done.width,
            height: done.height,
        }),
        fps: done.fps,
        format: done.format as i32,
        watermarked: done.watermarked,
        has_voiceover: done.has_voiceover,
        template_id: id_text(done.template_id),
        saved_project_id: id_text(done.saved_project_id),
        submitted_at: Some(super::wire::timestamp(job.created_at)),
        labels: labels(&job.labels),
    };
    outbox::publish(tx, job.meta(), &event).await?;
    Ok(())
}

/// The snapshot columns its events need.
#[derive(Clone, Debug)]
pub struct SnapshotRow {
    /// Snapshot id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Requesting user.
    pub user_id: Option<Uuid>,
}

impl SnapshotRow {
    fn meta(&self) -> EventMeta<'static> {
        EventMeta {
            source: SOURCE,
            aggregate_type: "snapshot",
            aggregate_id: self.id.to_string(),
            tenant_id: Some(self.tenant_id),
        }
    }
}

/// A snapshot's image was stored.
pub async fn snapshot_ready(
    tx: &mut PgTransaction<'_>,
    snapshot: &SnapshotRow,
    file: Uuid,
    cache_key: &[u8],
    render_ms: i64,
) -> Result<()> {
    let event = ev::SnapshotReady {
        tenant_id: snapshot.tenant_id.to_string(),
        occurred_at: Some(now()),
        snapshot_id: snapshot.id.to_string(),
        user_id: id_text(snapshot.user_id),
        file_id: file.to_string(),
        cache_key: hex::encode(cache_key),
        render_ms,
    };
    outbox::publish(tx, snapshot.meta(), &event).await?;
    Ok(())
}

/// A snapshot's task failed for good.
pub async fn snapshot_failed(tx: &mut PgTransaction<'_>, snapshot: &SnapshotRow, error: pb::RenderError) -> Result<()> {
    let event = ev::SnapshotFailed {
        tenant_id: snapshot.tenant_id.to_string(),
        occurred_at: Some(now()),
        snapshot_id: snapshot.id.to_string(),
        user_id: id_text(snapshot.user_id),
        error: Some(error),
    };
    outbox::publish(tx, snapshot.meta(), &event).await?;
    Ok(())
}

fn node_meta(node: Uuid) -> EventMeta<'static> {
    // Nodes are platform infrastructure: platform-wide events without a tenant.
    EventMeta { source: SOURCE, aggregate_type: "node", aggregate_id: node.to_string(), tenant_id: None }
}

/// A node enrolled with the join token `token`.
pub async fn node_enrolled(
    tx: &mut PgTransaction<'_>,
    node: Uuid,
    name: &str,
    hostname: &str,
    token: Uuid,
) -> Result<()> {
    let event = ev::NodeEnrolled {
        tenant_id: String::new(),
        occurred_at: Some(now()),
        node_id: node.to_string(),
        node_name: name.to_owned(),
        hostname: hostname.to_owned(),
        enrollment_token_id: token.to_string(),
    };
    outbox::publish(tx, node_meta(node), &event).await?;
    Ok(())
}

/// A node's agent connected after being offline (or for the first time).
pub async fn node_online(
    tx: &mut PgTransaction<'_>,
    node: Uuid,
    name: &str,
    agent_version: &str,
    admin_state: pb::NodeAdminState,
) -> Result<()> {
    let event = ev::NodeOnline {
        tenant_id: String::new(),
        occurred_at: Some(now()),
        node_id: node.to_string(),
        node_name: name.to_owned(),
        agent_version: agent_version.to_owned(),
        admin_state: admin_state as i32,
    };
    outbox::publish(tx, node_meta(node), &event).await?;
    Ok(())
}

/// A node went offline; `requeued` of its tasks went back to the queue.
pub async fn node_offline(
    tx: &mut PgTransaction<'_>,
    node: Uuid,
    name: &str,
    reason: ev::NodeOfflineReason,
    requeued: usize,
) -> Result<()> {
    let event = ev::NodeOffline {
        tenant_id: String::new(),
        occurred_at: Some(now()),
        node_id: node.to_string(),
        node_name: name.to_owned(),
        reason: reason as i32,
        requeued_tasks: i32::try_from(requeued).unwrap_or(i32::MAX),
    };
    outbox::publish(tx, node_meta(node), &event).await?;
    Ok(())
}
