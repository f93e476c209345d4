//! What agents report about their tasks, accepted only for the current lease.
//!
//! The fence: a report names (task, epoch) and comes from a node; it changes the task only
//! while `frame_jobs` still says `lease_epoch = epoch AND node_id = node AND state IN
//! ('leased', 'running')`. Otherwise it is STALE_EPOCH when the node held the task under some
//! epoch (a node back from the dead), UNKNOWN_TASK when it never did. Results are deduplicated
//! by (task, epoch) through the attempt row's outcome, frames by (task, epoch, frame): a resend
//! of something recorded is acknowledged again and changes nothing.
//!
//! A SUCCESS of a snapshot or an assembly delivers a file ([`super::outputs`], checked first):
//! its transaction makes the snapshot READY, or stores the export and completes the job; bad
//! outputs make the attempt a machine error instead, retried like any other.
//!
//! Every OK frame of a render chunk or repair names the file its lease stored for that frame
//! through UploadObject (`render.object_uploads`), with the same SHA-256 and size; a report or
//! SUCCESS that names anything else is MALFORMED, and nothing of it is recorded.
//! A probe's result is its node's verdict ([`super::probes`]); its frames are not kept.
//!
//! A SUCCESS of a render chunk is judged by its frames: every frame of its range accepted under
//! its epoch makes it done. Part of them missing or reported bad (MISSING, CORRUPT, WRONG_SIZE)
//! makes it done too, with frame repairs for the rest ([`super::repair`]); none usable makes it
//! a machine error (rendered again whole elsewhere). A repair task's frames are recorded under
//! its chunk, replacing the chunk's rows; a repair missing frames of its own is a machine error.

use std::collections::BTreeMap;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgPool, PgTransaction};
use uuid::Uuid;

use super::batch::{self, LeaseRow};
use super::outputs::{self, Delivery, Output};
use super::requeue::requeue_row;
use super::wire::{digest_from_hex, parse_id};
use super::{QUEUE_CHANNEL, notify};
use super::{jobs, repair, snapshots};
use crate::error::Result;
use crate::files::FileClient;
use crate::model::{
    ErrorClass, ErrorCode, ErrorInfo, Lane, RepairReason, TaskOutcome, TaskPhase, strip_node_names, strip_node_paths,
    text,
};
use crate::settings::Settings;

/// Most frames in one FrameReport.
pub const MAX_FRAMES_PER_REPORT: usize = 1000;
/// Most frames in one TaskResult.
pub const MAX_FRAMES_PER_RESULT: usize = 10_000;
/// Longest log tail kept, bytes.
pub(super) const MAX_LOG_TAIL_BYTES: usize = 65_536;
/// Longest attempt error message kept, characters.
const MAX_ERROR_CHARS: usize = 4096;

/// A report's claim to a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The task.
    pub task_id: Uuid,
    /// The epoch it names.
    pub lease_epoch: i64,
    /// The node it came from.
    pub node_id: Uuid,
    /// The connection epoch of the stream it came on: a replica acts for a node only while its
    /// stream is the node's current one.
    pub connection_epoch: i64,
}

/// Whether `node`'s current stream still is the one of `connection_epoch`. The row stays
/// share-locked until the transaction ends, so a newer stream takes the node only after it.
pub(crate) async fn holds_stream(tx: &mut PgTransaction<'_>, node: Uuid, connection_epoch: i64) -> Result<bool> {
    let stream = (node, connection_epoch);
    Ok(batch::held_streams(tx, [stream]).await?.contains(&stream))
}

/// How a report was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Recorded now or before (a duplicate): acknowledge.
    Accepted,
    /// Not the current lease: Reject(STALE_EPOCH) with this message; drop the work.
    Stale(String),
    /// Not a task this node ever held: Reject(UNKNOWN_TASK).
    Unknown,
    /// A field is missing or invalid: Reject(MALFORMED) with this message.
    Malformed(String),
    /// The stream it came on was superseded: Reject(UNAVAILABLE); the agent resends it on its
    /// current stream.
    Superseded,
}

/// STALE_EPOCH or UNKNOWN_TASK for a report that did not match the current lease.
pub async fn classify(pool: &PgPool, fence: Fence) -> Result<Verdict> {
    let mut conn = pool.acquire().await?;
    classify_on(&mut conn, fence).await
}

async fn classify_on(conn: &mut sqlx::PgConnection, fence: Fence) -> Result<Verdict> {
    let row: Option<(i64, bool)> = sqlx::query_as(
        "SELECT f.lease_epoch,
                EXISTS (SELECT 1 FROM render.frame_job_attempts a WHERE a.frame_job_id = f.id AND a.node_id = $2)
           FROM render.frame_jobs f WHERE f.id = $1",
    )
    .bind(fence.task_id)
    .bind(fence.node_id)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some((current, true)) => {
            Verdict::Stale(format!("lease epoch {} is not current; the task's epoch is {current}", fence.lease_epoch))
        }
        _ => Verdict::Unknown,
    })
}

/// Progress of a current lease, written to the task (the caller bounds how often). The first
/// update turns a leased task into a running one. The batch form with this one update; a lease
/// that is not current is classified.
pub async fn task_update(pool: &PgPool, fence: Fence, update: &agent_pb::TaskUpdate) -> Result<Verdict> {
    let item = batch::Update { fence, update: update.clone() };
    match batch::task_updates(pool, std::slice::from_ref(&item)).await?.pop().flatten() {
        Some(verdict) => Ok(verdict),
        None => classify(pool, fence).await,
    }
}

/// The phase and percent of a TaskUpdate as stored (`frame_jobs.phase`, `percent`).
pub(super) fn progress_of(update: &agent_pb::TaskUpdate) -> (&'static str, f32) {
    let phase = TaskPhase::from_pb(update.phase()).unwrap_or(TaskPhase::Accepted).as_db();
    let percent = update.percent.clamp(0.0, 100.0);
    (phase, if percent.is_finite() { percent as f32 } else { 0.0 })
}

/// A frame checked at the edge.
#[derive(Clone, Debug)]
pub(super) struct Frame {
    pub(super) number: i32,
    pub(super) file_id: Option<Uuid>,
    pub(super) sha256: [u8; 32],
    pub(super) size_bytes: i64,
    pub(super) width: Option<i32>,
    pub(super) height: Option<i32>,
    pub(super) render_ms: Option<i32>,
}

/// The frames of a FrameReport, or why it is malformed.
pub(super) fn reported_frames(report: &agent_pb::FrameReport) -> Result<BTreeMap<i32, Frame>, String> {
    if report.frames.is_empty() || report.frames.len() > MAX_FRAMES_PER_REPORT {
        return Err(format!("frames: 1..={MAX_FRAMES_PER_REPORT} per report"));
    }
    ok_frames("frames", &report.frames)
}

/// The OK frames of `frames` (later entries for the same frame win), or the reason they are
/// malformed.
pub(super) fn ok_frames(field: &str, frames: &[agent_pb::FrameOutput]) -> Result<BTreeMap<i32, Frame>, String> {
    let mut out = BTreeMap::new();
    for (i, frame) in frames.iter().enumerate() {
        if frame.status() != agent_pb::FrameStatus::Ok {
            continue;
        }
        let at = format!("{field}[{i}]");
        if frame.frame < 0 {
            return Err(format!("{at}.frame: must be >= 0"));
        }
        let sha256 = digest_from_hex(&frame.sha256).ok_or_else(|| format!("{at}.sha256: must be lower-case hex"))?;
        let file_id = if frame.file_id.is_empty() {
            None
        } else {
            Some(parse_id(&frame.file_id).ok_or_else(|| format!("{at}.file_id: must be a UUID"))?)
        };
        let resolution = frame.resolution.as_ref();
        let dimension = |v: Option<u32>| v.filter(|v| *v > 0).and_then(|v| i32::try_from(v).ok());
        out.insert(
            frame.frame,
            Frame {
                number: frame.frame,
                file_id,
                sha256,
                size_bytes: i64::try_from(frame.size_bytes).unwrap_or(i64::MAX),
                width: dimension(resolution.map(|r| r.width)),
                height: dimension(resolution.map(|r| r.height)),
                render_ms: i32::try_from(frame.render_ms).ok(),
            },
        );
    }
    Ok(out)
}

/// The lease row of `fence`, locked, when it is current: the batch lock of this one lease.
async fn lock_lease(tx: &mut PgTransaction<'_>, fence: Fence) -> Result<Option<LeaseRow>> {
    Ok(batch::lock_current(tx, &[fence]).await?.remove(&fence.task_id))
}

pub(super) fn in_range(range: Option<(i32, i32, i32)>, frame: i32) -> bool {
    range.is_some_and(|(start, end, step)| frame >= start && frame <= end && (frame - start) % step == 0)
}

/// Whether (task, epoch) of this node already has an agent's result (so its reports are
/// duplicates): `Some(true)`; `Some(false)` when the attempt exists with no agent result;
/// `None` when the node has no such attempt.
async fn agent_result_recorded(tx: &mut PgTransaction<'_>, fence: Fence) -> Result<Option<(bool, Option<String>)>> {
    let row: Option<(Option<Uuid>, Option<String>)> = sqlx::query_as(
        "SELECT node_id, outcome FROM render.frame_job_attempts WHERE frame_job_id = $1 AND lease_epoch = $2 FOR NO KEY UPDATE",
    )
    .bind(fence.task_id)
    .bind(fence.lease_epoch)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(match row {
        Some((Some(node), outcome)) if node == fence.node_id => {
            let by_agent = matches!(
                outcome.as_deref(),
                Some("success" | "template_error" | "machine_error" | "timeout" | "canceled" | "handed_back")
            );
            Some((by_agent, outcome))
        }
        _ => None,
    })
}

/// Inserts the accepted frames of a lease; returns how many frame numbers are new to the task
/// (frames a previous lease delivered are replaced, not counted again).
///
/// A repair task's frames go under the chunk it repairs, so they are new only where the chunk
/// had no row. Epochs of different tasks do not compare: a row is replaced by a later epoch of
/// the task that wrote it, or by a repair when the chunk wrote it; never by the chunk once a
/// repair did.
async fn insert_frames(tx: &mut PgTransaction<'_>, fence: Fence, frames: &[Frame]) -> Result<i64> {
    if frames.is_empty() {
        return Ok(0);
    }
    let new = batch::insert_frames(tx, &[(fence, frames)]).await?;
    Ok(new.get(&fence.task_id).copied().unwrap_or(0))
}

/// Frames uploaded and verified under a lease: recorded in `render.frame_results` with the
/// epoch, the job's progress moved. Acknowledge once this returns `Accepted` (committed).
pub async fn frame_report(pool: &PgPool, fence: Fence, report: &agent_pb::FrameReport) -> Result<Verdict> {
    let frames = match reported_frames(report) {
        Ok(frames) => frames,
        Err(reason) => return Ok(Verdict::Malformed(reason)),
    };
    let mut tx = super::begin_hot(pool).await?;
    if !holds_stream(&mut tx, fence.node_id, fence.connection_epoch).await? {
        return Ok(Verdict::Superseded);
    }
    let Some(lease) = lock_lease(&mut tx, fence).await? else {
        if matches!(agent_result_recorded(&mut tx, fence).await?, Some((true, _))) {
            // Sent before its task's result, which is recorded: a resend.
            return Ok(Verdict::Accepted);
        }
        return classify_on(&mut tx, fence).await;
    };
    if lease.lane == Lane::Probe {
        // A probe keeps nothing.
        return Ok(Verdict::Accepted);
    }
    if let Some(bad) = frames.keys().find(|f| !in_range(lease.range, **f)) {
        return Ok(Verdict::Malformed(format!("frames: frame {bad} is not in the task's range")));
    }
    let list: Vec<Frame> = frames.into_values().collect();
    if let Some(reason) = batch::unrecorded_frames(&mut tx, &[(fence, &list)]).await?.remove(&fence.task_id) {
        return Ok(Verdict::Malformed(reason));
    }
    let new = insert_frames(&mut tx, fence, &list).await?;
    if let (Some(job), Lane::Render | Lane::Repair) = (lease.job_id, lease.lane) {
        jobs::add_work(&mut tx, job, new, 0).await?;
    }
    tx.commit().await?;
    Ok(Verdict::Accepted)
}

/// What ending a lease did to its task (for the caller's bookkeeping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The task is done.
    Done,
    /// The task went back to the queue.
    Requeued,
    /// The task failed (and its job, if any).
    Failed,
    /// Only the attempt was recorded (the task had already been canceled or failed).
    Recorded,
}

/// How a task ended, per its agent. Returns the verdict and, when accepted now, what happened
/// to the task (`None` for a duplicate). A successful snapshot or assembly delivers its image or
/// video ([`outputs`]), checked through `files` before the transaction that records it.
pub async fn task_result(
    pool: &PgPool,
    settings: &Settings,
    files: Option<&FileClient>,
    fence: Fence,
    result: &agent_pb::TaskResult,
) -> Result<(Verdict, Option<Ended>)> {
    let outcome = result.outcome();
    let Some(outcome_text) = TaskOutcome::from_pb(outcome).filter(|o| o.sent_by_agents()).map(|o| o.as_db()) else {
        return Ok((Verdict::Malformed("outcome: must be SUCCESS..HANDED_BACK".into()), None));
    };
    if result.frames.len() > MAX_FRAMES_PER_RESULT {
        return Ok((Verdict::Malformed(format!("frames: at most {MAX_FRAMES_PER_RESULT}")), None));
    }
    let frames = match ok_frames("frames", &result.frames) {
        Ok(frames) => frames,
        Err(reason) => return Ok((Verdict::Malformed(reason), None)),
    };
    let outputs = match outputs::parse(&result.outputs) {
        Ok(outputs) => outputs,
        Err(reason) => return Ok((Verdict::Malformed(reason), None)),
    };
    let delivery = if outcome == pb::TaskOutcome::Success {
        outputs::delivery(pool, files, fence, &outputs).await?
    } else {
        Delivery::Nothing
    };
    let mut tx = super::begin_hot(pool).await?;
    if !holds_stream(&mut tx, fence.node_id, fence.connection_epoch).await? {
        return Ok((Verdict::Superseded, None));
    }
    let lease = lock_lease(&mut tx, fence).await?;
    let attempt = agent_result_recorded(&mut tx, fence).await?;
    match (&lease, &attempt) {
        (_, Some((true, _))) => return Ok((Verdict::Accepted, None)),
        (_, None) | (None, Some((false, Some(_)))) => return Ok((classify_on(&mut tx, fence).await?, None)),
        (None, Some((false, None))) => {
            // Only a task canceled or failed under this very lease still takes its result.
            let ended: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM render.frame_jobs
                                 WHERE id = $1 AND lease_epoch = $2 AND node_id = $3 AND state IN ('canceled', 'failed'))",
            )
            .bind(fence.task_id)
            .bind(fence.lease_epoch)
            .bind(fence.node_id)
            .fetch_one(&mut *tx)
            .await?;
            if !ended {
                return Ok((classify_on(&mut tx, fence).await?, None));
            }
        }
        (Some(_), Some((false, _))) => {}
    }
    if let Some(lease) = lease.as_ref().filter(|l| matches!(l.lane, Lane::Render | Lane::Repair))
        && outcome == pb::TaskOutcome::Success
    {
        // The frames that would be accepted must name their uploads by this lease.
        let bad = repair::bad_frames(&result.frames, lease.range);
        let kept: Vec<Frame> = frames
            .values()
            .filter(|f| in_range(lease.range, f.number) && !bad.contains_key(&f.number))
            .cloned()
            .collect();
        if let Some(reason) = batch::unrecorded_frames(&mut tx, &[(fence, &kept)]).await?.remove(&fence.task_id) {
            return Ok((Verdict::Malformed(reason), None));
        }
    }

    // The attempt, as the agent tells it.
    let error = result.error.clone().unwrap_or_default();
    let error_class = ErrorClass::from_pb(error.error_class());
    let error_code = ErrorCode::from_pb(error.code());
    let message = text::head(&error.message, MAX_ERROR_CHARS);
    let render_ms = result.timings.as_ref().map(|t| t.total_ms).unwrap_or(0).min(i64::MAX as u64) as i64;
    let log_tail = text::tail(&result.log_tail, MAX_LOG_TAIL_BYTES);
    let warnings = warnings_of(result);
    let success = outcome == pb::TaskOutcome::Success;
    let default_class = match outcome {
        pb::TaskOutcome::TemplateError => Some(ErrorClass::Template),
        pb::TaskOutcome::MachineError => Some(ErrorClass::Machine),
        pb::TaskOutcome::Timeout => Some(ErrorClass::Timeout),
        pb::TaskOutcome::Canceled => Some(ErrorClass::Canceled),
        _ => None,
    };
    // The attempts' CHECK allows no quota class; success carries no error.
    let class = if success { None } else { error_class.filter(|c| c.allowed_for_tasks()).or(default_class) };
    let code = class.and(error_code);
    sqlx::query(
        "UPDATE render.frame_job_attempts
            SET outcome = $3, error_class = $4, error_code = $5, error_message = $6, exit_code = $7,
                render_ms = $8, log_tail = $9, warnings = $10, log_file_id = $11, finished_at = now(),
                started_at = coalesce(started_at, now())
          WHERE frame_job_id = $1 AND lease_epoch = $2",
    )
    .bind(fence.task_id)
    .bind(fence.lease_epoch)
    .bind(outcome_text)
    .bind(class.map(|c| c.as_db()))
    .bind(code.map(|c| c.as_db()))
    .bind(class.map(|_| message.as_str()).filter(|m| !m.is_empty()))
    .bind(result.exit_code)
    .bind(render_ms)
    .bind(Some(log_tail.as_str()).filter(|t| !t.is_empty()))
    .bind(&warnings)
    .bind(outputs.log_file_id)
    .execute(&mut *tx)
    .await?;

    let Some(lease) = lease else {
        // The task was canceled or failed meanwhile (same epoch and node): the attempt is all.
        tx.commit().await?;
        return Ok((Verdict::Accepted, Some(Ended::Recorded)));
    };
    sqlx::query(
        "UPDATE render.frame_jobs
            SET exit_code = $2, error_class = $3, error_code = $4, error_message = $5, log_tail = $6,
                render_ms = render_ms + $7
          WHERE id = $1",
    )
    .bind(fence.task_id)
    .bind(result.exit_code)
    .bind(class.map(|c| c.as_db()))
    .bind(code.map(|c| c.as_db()))
    .bind(class.map(|_| message.as_str()).filter(|m| !m.is_empty()))
    .bind(Some(log_tail.as_str()).filter(|t| !t.is_empty()))
    .bind(render_ms)
    .execute(&mut *tx)
    .await?;

    // The file to protect once committed, and until when.
    let mut retain: Option<(Uuid, time::OffsetDateTime)> = None;
    let ended = match outcome {
        // A probe's verdict is about its node (nothing is kept, no job or snapshot moves).
        _ if lease.lane == Lane::Probe => super::probes::ended(&mut tx, settings, fence, outcome, &message).await?,
        pb::TaskOutcome::Success if matches!(lease.lane, Lane::Snapshot | Lane::Assemble) => {
            if let Some(job) = lease.job_id {
                jobs::add_work(&mut tx, job, 0, render_ms).await?;
            }
            match (&delivery, lease.lane, lease.snapshot_id, lease.job_id) {
                (Delivery::Image(image), Lane::Snapshot, Some(snapshot), _) => {
                    mark_done(&mut tx, fence.task_id).await?;
                    let retention = settings.api.snapshot_retention;
                    let until = snapshots::ready(&mut tx, snapshot, image.file_id, retention, render_ms).await?;
                    retain = until.map(|until| (image.file_id, until));
                    Ended::Done
                }
                (Delivery::Video(video, _), Lane::Assemble, _, Some(job)) => {
                    mark_done(&mut tx, fence.task_id).await?;
                    let until = jobs::complete(&mut tx, job, &video_of(video), &settings.api.default_plan).await?;
                    retain = until.map(|until| (video.file_id, until));
                    Ended::Done
                }
                (Delivery::Bad(error), ..) => bad_output(&mut tx, settings, fence, &lease, error).await?,
                _ => {
                    // The outputs were checked while the lease was not (yet) current, which a
                    // lease's fencing rules out; never trust unchecked outputs.
                    let error = ErrorInfo::new(ErrorCode::UploadFailed, "the task's outputs could not be checked");
                    bad_output(&mut tx, settings, fence, &lease, &error).await?
                }
            }
        }
        pb::TaskOutcome::Success => {
            frames_delivered(&mut tx, settings, fence, &lease, &result.frames, &frames, render_ms).await?
        }
        pb::TaskOutcome::TemplateError => {
            fail_task(&mut tx, fence.task_id).await?;
            let error = ErrorInfo { class: ErrorClass::Template, code: error_code, message };
            let error = for_customers(&mut tx, fence.node_id, &error).await?;
            if let Some(job) = lease.job_id {
                jobs::fail(&mut tx, job, &error).await?;
            }
            if let Some(snapshot) = lease.snapshot_id {
                snapshots::fail(&mut tx, snapshot, &error).await?;
            }
            Ended::Failed
        }
        pb::TaskOutcome::MachineError | pb::TaskOutcome::Timeout => {
            let (class, reason) = if outcome == pb::TaskOutcome::Timeout {
                (ErrorClass::Timeout, "timed_out")
            } else {
                (ErrorClass::Machine, "failed")
            };
            let error = ErrorInfo { class, code: error_code, message };
            machine_failure(&mut tx, settings, fence, &lease, reason, &error).await?
        }
        // Handed back, or canceled by the agent itself while the lease stood (e.g. its drain
        // deadline): back to the queue at once without using an attempt.
        _ => {
            requeue_row(&mut tx, fence.task_id, fence.lease_epoch, fence.node_id, true, None).await?;
            Ended::Requeued
        }
    };
    tx.commit().await?;
    if let (Some((file, until)), Some(files)) = (retain, files.cloned()) {
        // Best effort, off the agent's stream: the file service's cleanup rules keep snapshots
        // and exports by kind anyway; the retention makes sure they last as long as render
        // serves them.
        tokio::spawn(async move {
            if let Err(error) = files.retain(file, until).await {
                tracing::warn!(%file, %error, "could not set the retention of a delivered file");
            }
        });
    }
    Ok((Verdict::Accepted, Some(ended)))
}

/// The warnings of a result as kept: at most 100, each at most 1,000 characters.
pub(super) fn warnings_of(result: &agent_pb::TaskResult) -> Vec<String> {
    result.warnings.iter().take(100).map(|w| text::head(w, 1000)).collect()
}

pub(super) async fn mark_done(tx: &mut PgTransaction<'_>, task: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE render.frame_jobs
            SET state = 'done', finished_at = now(), error_class = NULL, error_code = NULL,
                error_message = NULL, phase = NULL, percent = 100
          WHERE id = $1",
    )
    .bind(task)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A SUCCESS of a task that renders frames (a render chunk, a frame repair, a probe): the OK
/// frames of its range are recorded and the job's progress moved. Every frame there: the task
/// is done (a repair with its repair row), and the job may assemble. Otherwise a render chunk
/// that delivered some usable frame is done too, its missing and bad frames queued as frame
/// repairs the job waits for.
async fn frames_delivered(
    tx: &mut PgTransaction<'_>,
    settings: &Settings,
    fence: Fence,
    lease: &LeaseRow,
    reported: &[agent_pb::FrameOutput],
    frames: &BTreeMap<i32, Frame>,
    render_ms: i64,
) -> Result<Ended> {
    let renders = matches!(lease.lane, Lane::Render | Lane::Repair);
    // A frame reported bad is not accepted, even where an earlier entry or report said OK.
    let mut bad = if renders { repair::bad_frames(reported, lease.range) } else { BTreeMap::new() };
    let list: Vec<Frame> =
        frames.values().filter(|f| in_range(lease.range, f.number) && !bad.contains_key(&f.number)).cloned().collect();
    let new = insert_frames(tx, fence, &list).await?;
    if let Some(job) = lease.job_id {
        jobs::add_work(tx, job, if renders { new } else { 0 }, render_ms).await?;
    }
    for frame in missing_frames(tx, fence, lease).await? {
        bad.entry(frame).or_insert(RepairReason::Missing);
    }
    if bad.is_empty() {
        mark_done(tx, fence.task_id).await?;
        if lease.lane == Lane::Repair {
            repair::resolve(tx, fence.task_id).await?;
        }
        if let (Some(job), true) = (lease.job_id, renders) {
            jobs::after_chunk_done(tx, job).await?;
        }
        return Ok(Ended::Done);
    }
    let frame_count = lease.range.map_or(0, |(start, end, step)| (end - start) / step + 1);
    if lease.lane == Lane::Render && i32::try_from(bad.len()).unwrap_or(i32::MAX) < frame_count {
        // Partial loss: the chunk delivered what it could; only the rest is rendered again.
        repair::create(tx, fence.task_id, fence.node_id, &repair::runs(&bad)).await?;
        mark_done(tx, fence.task_id).await?;
        return Ok(Ended::Done);
    }
    // Nothing usable: the node failed the chunk, which is rendered again whole elsewhere (repair
    // is for partial loss). A repair missing frames of its own is retried elsewhere the same
    // way rather than repaired in turn.
    let numbers: Vec<i32> = bad.keys().copied().collect();
    let message = format!("frames not delivered or not valid: {}", describe_frames(&numbers));
    let error = ErrorInfo::new(ErrorCode::FramesInvalid, message);
    bad_output(tx, settings, fence, lease, &error).await
}

/// A SUCCESS whose outputs are not what the task had to deliver: the attempt and the task
/// record `error` (a machine error: the node made the bad output) and the task is retried
/// elsewhere, or fails with its job or snapshot once its attempts are used up.
async fn bad_output(
    tx: &mut PgTransaction<'_>,
    settings: &Settings,
    fence: Fence,
    lease: &LeaseRow,
    error: &ErrorInfo,
) -> Result<Ended> {
    let code = error.code.map(|code| code.as_db());
    sqlx::query(
        "UPDATE render.frame_job_attempts
            SET outcome = 'machine_error', error_class = $3, error_code = $4, error_message = $5
          WHERE frame_job_id = $1 AND lease_epoch = $2",
    )
    .bind(fence.task_id)
    .bind(fence.lease_epoch)
    .bind(error.class.as_db())
    .bind(code)
    .bind(&error.message)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE render.frame_jobs SET error_class = $2, error_code = $3, error_message = $4 WHERE id = $1")
        .bind(fence.task_id)
        .bind(error.class.as_db())
        .bind(code)
        .bind(&error.message)
        .execute(&mut **tx)
        .await?;
    machine_failure(tx, settings, fence, lease, "corrupt_output", error).await
}

/// The export facts of a verified video output.
fn video_of(output: &Output) -> jobs::Video {
    let size = output.media.resolution.unwrap_or_default();
    jobs::Video {
        file_id: output.file_id,
        sha256: output.sha256,
        size_bytes: output.size_bytes,
        width: size.width,
        height: size.height,
        fps: output.media.fps,
        frame_count: output.media.frame_count,
        duration_ms: output.media.duration_ms,
        has_audio: output.media.has_audio,
    }
}

/// The frames of the lease's range not accepted from it under its epoch (render and repair
/// lanes; a repair's frames are under its chunk).
async fn missing_frames(tx: &mut PgTransaction<'_>, fence: Fence, lease: &LeaseRow) -> Result<Vec<i32>> {
    let (Some((start, end, step)), Lane::Render | Lane::Repair) = (lease.range, lease.lane) else {
        return Ok(Vec::new());
    };
    let missing: Vec<i32> = sqlx::query_scalar(
        "SELECT n FROM generate_series($4::int, $5::int, $6::int) AS n
          WHERE NOT EXISTS (SELECT 1 FROM render.frame_results r
                             WHERE r.frame_job_id = $1 AND r.frame_number = n
                               AND r.source_frame_job_id = $2 AND r.lease_epoch = $3)
          ORDER BY n",
    )
    .bind(lease.repair_of.unwrap_or(fence.task_id))
    .bind(fence.task_id)
    .bind(fence.lease_epoch)
    .bind(start)
    .bind(end)
    .bind(step)
    .fetch_all(&mut **tx)
    .await?;
    Ok(missing)
}

/// "3, 5-9, 12" for the sorted frame numbers `frames` (at most 20 runs, then "...").
fn describe_frames(frames: &[i32]) -> String {
    let mut runs: Vec<(i32, i32)> = Vec::new();
    for &f in frames {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == f => *end = f,
            _ => runs.push((f, f)),
        }
    }
    let mut parts: Vec<String> =
        runs.iter().take(20).map(|(s, e)| if s == e { s.to_string() } else { format!("{s}-{e}") }).collect();
    if runs.len() > 20 {
        parts.push("...".into());
    }
    parts.join(", ")
}

pub(super) async fn fail_task(tx: &mut PgTransaction<'_>, task: Uuid) -> Result<()> {
    sqlx::query("UPDATE render.frame_jobs SET state = 'failed', finished_at = now() WHERE id = $1")
        .bind(task)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The node failed the task: it gets no more of the task's job; the task is retried after a
/// short backoff while attempts remain, else it fails with its job.
async fn machine_failure(
    tx: &mut PgTransaction<'_>,
    settings: &Settings,
    fence: Fence,
    lease: &LeaseRow,
    reason: &str,
    error: &ErrorInfo,
) -> Result<Ended> {
    sqlx::query(
        "INSERT INTO render.frame_job_excluded_nodes (frame_job_id, node_id, job_id, tenant_id, reason)
         SELECT id, $2, job_id, tenant_id, $3 FROM render.frame_jobs WHERE id = $1
             ON CONFLICT (frame_job_id, node_id) DO UPDATE SET reason = EXCLUDED.reason",
    )
    .bind(fence.task_id)
    .bind(fence.node_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    let max_attempts = lease.max_attempts.min(i32::try_from(settings.max_attempts).unwrap_or(i32::MAX)).max(1);
    if lease.attempts < max_attempts {
        requeue_row(tx, fence.task_id, fence.lease_epoch, fence.node_id, false, Some(retry_backoff(lease.attempts)))
            .await?;
        notify(tx, QUEUE_CHANNEL, "").await?;
        return Ok(Ended::Requeued);
    }
    fail_task(tx, fence.task_id).await?;
    let error = for_customers(tx, fence.node_id, error).await?;
    if let Some(job) = lease.job_id {
        jobs::fail(tx, job, &error).await?;
    }
    if let Some(snapshot) = lease.snapshot_id {
        snapshots::fail(tx, snapshot, &error).await?;
    }
    Ok(Ended::Failed)
}

/// `error` as customers may read it: without the node's paths and without its names (host
/// name and enrolled name of `node`, the one that reported it). Paths go first: a UNC path
/// starts with the host name. (`jobs::fail` and `snapshots::fail` strip paths again, for the
/// orchestrator's own messages; on this text that changes nothing.)
async fn for_customers(tx: &mut PgTransaction<'_>, node: Uuid, error: &ErrorInfo) -> Result<ErrorInfo> {
    let names: Option<(String, String)> = sqlx::query_as("SELECT name, hostname FROM render.nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    let message = strip_node_paths(&error.message);
    let message = match &names {
        Some((name, hostname)) => strip_node_names(&message, &[name, hostname]),
        None => message,
    };
    Ok(ErrorInfo { message, ..error.clone() })
}

/// Seconds before a failed task may be claimed again: 0.5 s after the first failure, doubling,
/// at most 30 s (another node usually takes it at once anyway).
pub fn retry_backoff(attempts: i32) -> f64 {
    let exponent = attempts.saturating_sub(1).clamp(0, 10);
    (0.5 * f64::from(1u32 << exponent)).min(30.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_described_as_runs() {
        assert_eq!(describe_frames(&[3, 5, 6, 7, 9]), "3, 5-7, 9");
        assert_eq!(describe_frames(&[]), "");
        let many: Vec<i32> = (0..100).step_by(2).collect();
        assert!(describe_frames(&many).ends_with("..."));
    }

    #[test]
    fn ranges_respect_the_step() {
        assert!(in_range(Some((10, 20, 5)), 15));
        assert!(!in_range(Some((10, 20, 5)), 16));
        assert!(!in_range(Some((10, 20, 5)), 25));
        assert!(!in_range(None, 0));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(retry_backoff(1), 0.5);
        assert_eq!(retry_backoff(2), 1.0);
        assert_eq!(retry_backoff(50), 30.0);
    }

    #[test]
    fn only_ok_frames_are_taken() {
        let ok = agent_pb::FrameOutput {
            frame: 4,
            status: agent_pb::FrameStatus::Ok as i32,
            sha256: "ab".repeat(32),
            file_id: Uuid::new_v4().to_string(),
            ..Default::default()
        };
        let missing = agent_pb::FrameOutput { frame: 5, status: agent_pb::FrameStatus::Missing as i32, ..ok.clone() };
        let frames = ok_frames("frames", &[ok.clone(), missing]).unwrap();
        assert_eq!(frames.keys().copied().collect::<Vec<_>>(), [4]);
        let bad = agent_pb::FrameOutput { sha256: "xyz".into(), ..ok };
        assert!(ok_frames("frames", &[bad]).unwrap_err().starts_with("frames[0].sha256"));
    }
}
