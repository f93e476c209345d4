//! Stored jobs, segments, chunks, exports and snapshots as the API shows them.

use std::collections::HashMap;

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::access::Viewer;
use crate::error::{RenderError, Result};
use crate::model::{
    AudioTrackKind, ChunkState, ErrorInfo, ExportState, FrameRange, ImageFormat, JobState, Labels, OutputFormat,
    Quality, SceneData, Sha256Digest, SnapshotState, VideoCodec,
};

/// A protobuf timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    // Nanoseconds of a second always fit in i32.
    prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: i32::try_from(at.nanosecond()).unwrap_or(0) }
}

/// A protobuf timestamp, or none.
pub fn optional_timestamp(at: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    at.map(timestamp)
}

/// An optional id as the API spells it (empty for none).
pub fn id_text(id: Option<Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

fn digest_hex(bytes: &[u8]) -> String {
    Sha256Digest::from_slice(bytes).map(|d| d.to_hex()).unwrap_or_default()
}

/// Stored data this code did not write (an unreadable jsonb value): an internal error.
fn corrupt(what: &str, error: impl std::fmt::Display) -> RenderError {
    RenderError::Database(sqlx::Error::Decode(format!("stored {what} is unreadable: {error}").into()))
}

fn scene(value: &serde_json::Value) -> Result<SceneData> {
    SceneData::from_json(value).map_err(|e| corrupt("scene data", e))
}

fn resolution(width: i32, height: i32) -> Option<flatrender_proto::flatrender::common::v1::Resolution> {
    Some(flatrender_proto::flatrender::common::v1::Resolution {
        width: u32::try_from(width).unwrap_or(0),
        height: u32::try_from(height).unwrap_or(0),
    })
}

/// How much of a job to show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, scene data included (GetRender, SubmitRender, CancelRender).
    Full,
    /// Without scene data (ListRenders, WatchRender).
    Summary,
}

/// The columns [`job`] reads, from `render.render_jobs j`.
pub const JOB_COLUMNS: &str = "j.id, j.tenant_id, j.user_id, j.api_key_id, j.state, j.template_file_id, \
     j.template_sha256, j.template_id, j.template_version_id, j.saved_project_id, j.scene_data, j.output_width, \
     j.output_height, j.output_fps, j.output_format, j.output_codec, j.output_quality, j.has_voiceover, \
     j.priority, j.plan_code, j.watermark, j.progress, j.frames_total, j.frames_done, j.error_class, \
     j.error_code, j.error_message, j.render_ms, j.idempotency_key, j.labels, j.created_at, j.started_at, \
     j.rendering_started_at, j.assembling_started_at, j.finished_at, j.updated_at, \
     (SELECT e.id FROM render.exports e WHERE e.job_id = j.id) AS export_id";

/// A job row (of [`JOB_COLUMNS`]) without its segments and audio tracks.
pub fn job(row: &PgRow, detail: Detail) -> Result<pb::RenderJob> {
    let state = JobState::from_db(row.try_get("state")?);
    let error_class: Option<String> = row.try_get("error_class")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let scene_data = match detail {
        Detail::Full => scene(&row.try_get::<serde_json::Value, _>("scene_data")?)?.to_pb_option(),
        Detail::Summary => None,
    };
    let labels: serde_json::Value = row.try_get("labels")?;
    let progress: f32 = row.try_get("progress")?;
    let format = OutputFormat::from_db(row.try_get("output_format")?);
    let codec = VideoCodec::from_db(row.try_get("output_codec")?);
    let quality = Quality::from_db(row.try_get("output_quality")?);
    let sha: Vec<u8> = row.try_get("template_sha256")?;
    Ok(pb::RenderJob {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        tenant_id: row.try_get::<Uuid, _>("tenant_id")?.to_string(),
        user_id: id_text(row.try_get("user_id")?),
        api_key_id: id_text(row.try_get("api_key_id")?),
        state: state.map_or(0, JobState::to_pb_i32),
        template_file_id: row.try_get::<Uuid, _>("template_file_id")?.to_string(),
        template_sha256: digest_hex(&sha),
        template_id: id_text(row.try_get("template_id")?),
        template_version_id: id_text(row.try_get("template_version_id")?),
        saved_project_id: id_text(row.try_get("saved_project_id")?),
        segments: Vec::new(),
        scene_data,
        output: Some(pb::OutputSettings {
            resolution: resolution(row.try_get("output_width")?, row.try_get("output_height")?),
            fps: row.try_get("output_fps")?,
            format: format.map_or(0, OutputFormat::to_pb_i32),
            video_codec: codec.map_or(0, VideoCodec::to_pb_i32),
            quality: quality.map_or(0, Quality::to_pb_i32),
        }),
        audio_tracks: Vec::new(),
        has_voiceover: row.try_get("has_voiceover")?,
        priority: i32::from(row.try_get::<i16, _>("priority")?),
        plan_code: row.try_get("plan_code")?,
        watermark: row.try_get("watermark")?,
        progress: f64::from(progress),
        assembly_progress: if state == Some(JobState::Completed) { 1.0 } else { 0.0 },
        frames_total: row.try_get("frames_total")?,
        frames_done: row.try_get("frames_done")?,
        error: ErrorInfo::from_db(error_class.as_deref(), error_code.as_deref(), error_message.as_deref())
            .map(|e| e.to_pb()),
        export_id: id_text(row.try_get("export_id")?),
        render_ms: row.try_get("render_ms")?,
        idempotency_key: row.try_get::<Option<String>, _>("idempotency_key")?.unwrap_or_default(),
        labels: Labels::from_json(&labels).to_pb(),
        created_at: Some(timestamp(row.try_get("created_at")?)),
        started_at: optional_timestamp(row.try_get("started_at")?),
        rendering_started_at: optional_timestamp(row.try_get("rendering_started_at")?),
        assembling_started_at: optional_timestamp(row.try_get("assembling_started_at")?),
        finished_at: optional_timestamp(row.try_get("finished_at")?),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
    })
}

/// Fills in the segments (with progress) and audio tracks of `jobs`.
pub async fn complete(conn: &mut sqlx::PgConnection, jobs: &mut [pb::RenderJob], detail: Detail) -> Result<()> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = jobs.iter().filter_map(|j| Uuid::try_parse(&j.id).ok()).collect();
    let mut segments = segments_of(&mut *conn, &ids, detail).await?;
    let mut audio = audio_of(&mut *conn, &ids).await?;
    for job in jobs {
        let Ok(id) = Uuid::try_parse(&job.id) else { continue };
        job.segments = segments.remove(&id).unwrap_or_default();
        job.audio_tracks = audio.remove(&id).unwrap_or_default();
    }
    Ok(())
}

/// SQL over task `f`: how many frames of a DONE render chunk are under open (queued or running)
/// frame repairs; 0 for any other task. A repair's range has step 1 and holds only frames of its
/// chunk, so its size counts its frames.
pub(crate) const REPAIRING_FRAMES: &str = "CASE WHEN f.state = 'done' THEN (
        SELECT coalesce(sum(r.frame_end - r.frame_start + 1), 0)::int FROM render.frame_repair_jobs r
         WHERE r.frame_job_id = f.id AND r.state IN ('queued', 'running')) ELSE 0 END";

/// SQL over render chunk `f`: its state as shown, a DONE chunk with open frame repairs being
/// RUNNING (see [`shown_chunk`]).
pub(crate) const SHOWN_CHUNK_STATE: &str = "CASE WHEN f.state = 'done' AND EXISTS (
        SELECT 1 FROM render.frame_repair_jobs r WHERE r.frame_job_id = f.id AND r.state IN ('queued', 'running'))
     THEN 'running' ELSE f.state END";

/// The state and frames done of a render chunk as customers and operators see them. A chunk
/// that delivered part of its frames is DONE in the queue (its lease ended) while repairs render
/// the rest; until they are done it is not finished: it reads RUNNING (ChunkState offers no
/// repairing state, and RUNNING is what the chunk's frames are: being rendered) and its frames
/// under repair are not done. `repairing` is [`REPAIRING_FRAMES`].
pub(crate) fn shown_chunk(
    state: Option<ChunkState>,
    frame_count: i32,
    frames_done: i32,
    repairing: i32,
) -> (Option<ChunkState>, i32) {
    match state {
        Some(ChunkState::Done) if repairing > 0 => {
            (Some(ChunkState::Running), frame_count.saturating_sub(repairing).max(0))
        }
        Some(ChunkState::Done) => (state, frame_count),
        _ => (state, frames_done.min(frame_count)),
    }
}

/// The segments of `jobs` with their progress (from their render chunks), in playback order.
async fn segments_of<'e>(
    executor: impl PgExecutor<'e>,
    jobs: &[Uuid],
    detail: Detail,
) -> Result<HashMap<Uuid, Vec<pb::SegmentProgress>>> {
    // Chunks with open frame repairs are not done, nor their frames under repair
    // ([`shown_chunk`]).
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT s.job_id, s.id, s.position, s.composition_name, s.scene_id, s.frame_start, s.frame_end,
                s.frame_step, s.frame_count, CASE WHEN $2 THEN s.scene_data END AS scene_data,
                count(f.id) AS chunk_count,
                count(f.id) FILTER (WHERE f.state = 'done' AND f.repairing = 0) AS chunks_done,
                COALESCE(sum(CASE WHEN f.state = 'done' THEN GREATEST(f.frame_count - f.repairing, 0)
                                  ELSE LEAST(f.frames_done, f.frame_count) END), 0) AS frames_done
           FROM render.render_job_segments s
           LEFT JOIN LATERAL (
                SELECT f.id, f.state, f.frame_count, f.frames_done,
                       {REPAIRING_FRAMES} AS repairing
                  FROM render.frame_jobs f WHERE f.segment_id = s.id AND f.lane = 'render') f ON true
          WHERE s.job_id = ANY($1)
          GROUP BY s.id
          ORDER BY s.job_id, s.position"
    )))
    .bind(jobs)
    .bind(detail == Detail::Full)
    .fetch_all(executor)
    .await?;
    let mut by_job: HashMap<Uuid, Vec<pb::SegmentProgress>> = HashMap::new();
    for row in rows {
        let range = FrameRange::new(row.try_get("frame_start")?, row.try_get("frame_end")?, row.try_get("frame_step")?)
            .map_err(|e| corrupt("segment range", e))?;
        let scene_data = match row.try_get::<Option<serde_json::Value>, _>("scene_data")? {
            Some(value) => scene(&value)?.to_pb_option(),
            None => None,
        };
        let count =
            |column: &str| -> Result<i32> { Ok(i32::try_from(row.try_get::<i64, _>(column)?).unwrap_or(i32::MAX)) };
        by_job.entry(row.try_get("job_id")?).or_default().push(pb::SegmentProgress {
            id: row.try_get::<Uuid, _>("id")?.to_string(),
            index: row.try_get("position")?,
            composition: row.try_get("composition_name")?,
            scene_id: id_text(row.try_get("scene_id")?),
            range: Some(range.to_pb()),
            frame_count: row.try_get("frame_count")?,
            frames_done: count("frames_done")?,
            chunk_count: count("chunk_count")?,
            chunks_done: count("chunks_done")?,
            scene_data,
        });
    }
    Ok(by_job)
}

/// The audio tracks of `jobs`, in request order.
pub(crate) async fn audio_of<'e>(
    executor: impl PgExecutor<'e>,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, Vec<pb::AudioTrack>>> {
    let rows = sqlx::query(
        "SELECT job_id, kind, file_id, volume, offset_ms, trim_start_ms, trim_end_ms, fade_in_ms, fade_out_ms, looping
           FROM render.render_job_audio_tracks WHERE job_id = ANY($1) ORDER BY job_id, position",
    )
    .bind(jobs)
    .fetch_all(executor)
    .await?;
    let mut by_job: HashMap<Uuid, Vec<pb::AudioTrack>> = HashMap::new();
    for row in rows {
        let ms = |column: &str| -> Result<u32> { Ok(u32::try_from(row.try_get::<i32, _>(column)?).unwrap_or(0)) };
        let trim_end: Option<i32> = row.try_get("trim_end_ms")?;
        let volume: f32 = row.try_get("volume")?;
        by_job.entry(row.try_get("job_id")?).or_default().push(pb::AudioTrack {
            kind: AudioTrackKind::from_db(row.try_get("kind")?).map_or(0, AudioTrackKind::to_pb_i32),
            file_id: row.try_get::<Uuid, _>("file_id")?.to_string(),
            // The column is a real: the nearest double of what was stored.
            volume: f64::from(volume),
            offset_ms: ms("offset_ms")?,
            trim_start_ms: ms("trim_start_ms")?,
            trim_end_ms: trim_end.and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            fade_in_ms: ms("fade_in_ms")?,
            fade_out_ms: ms("fade_out_ms")?,
            r#loop: row.try_get("looping")?,
        });
    }
    Ok(by_job)
}

/// One job as `viewer` may see it, complete; `None` when unknown or not visible.
pub async fn visible_job(
    conn: &mut sqlx::PgConnection,
    viewer: &Viewer,
    id: Uuid,
    detail: Detail,
) -> Result<Option<pb::RenderJob>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM render.render_jobs j
          WHERE j.id = $1 AND j.tenant_id = $2 AND ($3::uuid IS NULL OR j.user_id = $3)"
    )))
    .bind(id)
    .bind(viewer.tenant)
    .bind(viewer.only_owner())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let mut jobs = [job(&row, detail)?];
    complete(conn, &mut jobs, detail).await?;
    let [job] = jobs;
    Ok(Some(job))
}

/// The render chunks of job `id`, in playback order.
pub async fn chunks<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<Vec<pb::ChunkProgress>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT f.id, s.position, f.frame_start, f.frame_end, f.frame_step, f.frame_count, f.state, f.attempts,
                f.frames_done, {REPAIRING_FRAMES} AS repairing
           FROM render.frame_jobs f JOIN render.render_job_segments s ON s.id = f.segment_id
          WHERE f.job_id = $1 AND f.lane = 'render'
          ORDER BY s.position, f.frame_start"
    )))
    .bind(id)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|row| {
            let range =
                FrameRange::new(row.try_get("frame_start")?, row.try_get("frame_end")?, row.try_get("frame_step")?)
                    .map_err(|e| corrupt("chunk range", e))?;
            let frame_count: i32 = row.try_get("frame_count")?;
            let (state, frames_done) = shown_chunk(
                ChunkState::from_db(row.try_get("state")?),
                frame_count,
                row.try_get("frames_done")?,
                row.try_get("repairing")?,
            );
            Ok(pb::ChunkProgress {
                id: row.try_get::<Uuid, _>("id")?.to_string(),
                segment_index: row.try_get("position")?,
                range: Some(range.to_pb()),
                frame_count,
                frames_done,
                state: state.map_or(0, ChunkState::to_pb_i32),
                attempt: row.try_get("attempts")?,
            })
        })
        .collect()
}

/// The columns [`export`] reads. An export past its expiry reads EXPIRED before the retention
/// sweep marks it ([`crate::retention`]).
pub const EXPORT_COLUMNS: &str = "id, tenant_id, user_id, job_id, file_id, \
     CASE WHEN state = 'available' AND expires_at <= now() THEN 'expired' ELSE state END AS state, \
     size_bytes, sha256, format, width, height, fps, frame_count, duration_ms, has_audio, watermarked, \
     download_count, created_at, expires_at";

/// An export row (of [`EXPORT_COLUMNS`]).
pub fn export(row: &PgRow) -> Result<pb::Export> {
    let sha: Vec<u8> = row.try_get("sha256")?;
    Ok(pb::Export {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        tenant_id: row.try_get::<Uuid, _>("tenant_id")?.to_string(),
        user_id: id_text(row.try_get("user_id")?),
        render_id: row.try_get::<Uuid, _>("job_id")?.to_string(),
        file_id: row.try_get::<Uuid, _>("file_id")?.to_string(),
        state: ExportState::from_db(row.try_get("state")?).map_or(0, ExportState::to_pb_i32),
        size_bytes: u64::try_from(row.try_get::<i64, _>("size_bytes")?).unwrap_or(0),
        sha256: digest_hex(&sha),
        format: OutputFormat::from_db(row.try_get("format")?).map_or(0, OutputFormat::to_pb_i32),
        resolution: resolution(row.try_get("width")?, row.try_get("height")?),
        fps: row.try_get("fps")?,
        frame_count: row.try_get("frame_count")?,
        duration_ms: row.try_get("duration_ms")?,
        has_audio: row.try_get("has_audio")?,
        watermarked: row.try_get("watermarked")?,
        download_count: row.try_get("download_count")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        expires_at: optional_timestamp(row.try_get("expires_at")?),
    })
}

/// The columns [`snapshot`] reads.
pub const SNAPSHOT_COLUMNS: &str = "id, tenant_id, user_id, state, cache_key, template_file_id, template_sha256, \
     template_version_id, composition_name, frame, width, height, format, file_id, error_class, error_code, \
     error_message, hit_count, created_at, rendered_at, expires_at";

/// A snapshot row (of [`SNAPSHOT_COLUMNS`]).
pub fn snapshot(row: &PgRow) -> Result<pb::Snapshot> {
    let key: Vec<u8> = row.try_get("cache_key")?;
    let sha: Vec<u8> = row.try_get("template_sha256")?;
    let error_class: Option<String> = row.try_get("error_class")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    Ok(pb::Snapshot {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        tenant_id: row.try_get::<Uuid, _>("tenant_id")?.to_string(),
        user_id: id_text(row.try_get("user_id")?),
        state: SnapshotState::from_db(row.try_get("state")?).map_or(0, SnapshotState::to_pb_i32),
        cache_key: digest_hex(&key),
        template_file_id: row.try_get::<Uuid, _>("template_file_id")?.to_string(),
        template_sha256: digest_hex(&sha),
        template_version_id: id_text(row.try_get("template_version_id")?),
        composition: row.try_get("composition_name")?,
        frame: row.try_get("frame")?,
        resolution: resolution(row.try_get("width")?, row.try_get("height")?),
        format: ImageFormat::from_db(row.try_get("format")?).map_or(0, ImageFormat::to_pb_i32),
        file_id: id_text(row.try_get("file_id")?),
        error: ErrorInfo::from_db(error_class.as_deref(), error_code.as_deref(), error_message.as_deref())
            .map(|e| e.to_pb()),
        hit_count: row.try_get("hit_count")?,
        created_at: Some(timestamp(row.try_get("created_at")?)),
        rendered_at: optional_timestamp(row.try_get("rendered_at")?),
        expires_at: optional_timestamp(row.try_get("expires_at")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_with_open_repairs_are_not_finished() {
        assert_eq!(shown_chunk(Some(ChunkState::Done), 10, 8, 2), (Some(ChunkState::Running), 8));
        assert_eq!(shown_chunk(Some(ChunkState::Done), 10, 3, 0), (Some(ChunkState::Done), 10));
        assert_eq!(shown_chunk(Some(ChunkState::Running), 10, 12, 0), (Some(ChunkState::Running), 10));
        assert_eq!(shown_chunk(Some(ChunkState::Done), 1, 0, 5), (Some(ChunkState::Running), 0));
    }
}
