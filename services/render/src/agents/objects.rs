//! The byte RPCs of the agent protocol: `DownloadObject` (a task's inputs) and `UploadObject`
//! (its outputs), both through the file service with render's service credential.
//!
//! Both authenticate the node credential as Session does and fence on the lease: (task, epoch,
//! node) must be the task's current lease (FAILED_PRECONDITION otherwise). Bytes stream through
//! part by part, never held whole.
//!
//! A download serves only what the task's assignment names (the template bundle and media of
//! an aerender task, the audio sources of an assembly, and an assembly's accepted frames by
//! segment and frame); anything else is PERMISSION_DENIED. A long download checks its lease
//! again every 8 MiB, so a task canceled or reassigned meanwhile stops pulling bytes.
//!
//! An upload checks its header before any byte is stored (INVALID_ARGUMENT naming the field,
//! RESOURCE_EXHAUSTED over the kind's size limit), streams the bytes into the file service while
//! hashing them, and holds back the last part: only when size and SHA-256 match the header
//! (else DATA_LOSS) and the lease is still current (else FAILED_PRECONDITION) does the last part
//! go out and the file service commit. Otherwise the upload to the file service is abandoned
//! (the simple stream reset, a session aborted), and it keeps nothing. A stored output is recorded per (task, epoch, kind, frame)
//! (`render.object_uploads`), so a retry with the same SHA-256 answers the first file id.

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::file::v1 as file_pb;
use prost::bytes::Bytes;
use sha2::Digest as _;
use sqlx::PgPool;
use tonic::Streaming;
use tonic::codegen::BoxStream;
use uuid::Uuid;

use crate::api::records;
use crate::error::{RenderError, Result};
use crate::files::{CATALOGUE_TENANT, FileClient, NewFile};
use crate::model::{Lane, Sha256Digest};
use crate::queue::spec::{Inputs, TaskRow};
use crate::queue::wire::digest_from_hex;
use crate::state::State;

/// The largest `data` part either way.
pub const MAX_PART_BYTES: usize = 1024 * 1024;
/// A download checks its lease again after this many bytes: a template of gigabytes stops
/// soon after its task is canceled or reassigned, at one indexed read per 8 MiB sent.
const LEASE_CHECK_BYTES: u64 = 8 * 1024 * 1024;
/// Longest file name of an upload.
const MAX_FILE_NAME_CHARS: usize = 255;
/// Longest content type of an upload.
const MAX_CONTENT_TYPE_CHARS: usize = 255;

/// The size limit of an object of `kind` (task.proto's ObjectKind); `None` for no valid kind.
pub fn size_limit(kind: agent_pb::ObjectKind) -> Option<u64> {
    const MIB: u64 = 1024 * 1024;
    match kind {
        agent_pb::ObjectKind::Frame => Some(512 * MIB),
        agent_pb::ObjectKind::SnapshotImage => Some(64 * MIB),
        agent_pb::ObjectKind::Video => Some(64 * 1024 * MIB),
        agent_pb::ObjectKind::Log => Some(16 * MIB),
        agent_pb::ObjectKind::CrashReport => Some(256 * MIB),
        agent_pb::ObjectKind::Unspecified => None,
    }
}

/// The `render.object_uploads.kind` of `kind`.
fn kind_text(kind: agent_pb::ObjectKind) -> &'static str {
    match kind {
        agent_pb::ObjectKind::Frame => "frame",
        agent_pb::ObjectKind::SnapshotImage => "snapshot_image",
        agent_pb::ObjectKind::Video => "video",
        agent_pb::ObjectKind::Log => "log",
        agent_pb::ObjectKind::CrashReport | agent_pb::ObjectKind::Unspecified => "crash_report",
    }
}

/// A task's current lease, as the byte RPCs need it.
#[derive(Clone, Copy, Debug)]
struct Lease {
    task: Uuid,
    epoch: i64,
    lane: Lane,
    tenant: Uuid,
    job: Option<Uuid>,
    /// The person who asked for the job or snapshot; `None` for an API key.
    user: Option<Uuid>,
}

/// The lease (`task`, `epoch`) when it is the task's current lease on `node`; otherwise
/// FAILED_PRECONDITION.
async fn current_lease(pool: &PgPool, task: Uuid, epoch: i64, node: Uuid) -> Result<Lease> {
    let row: Option<(String, Uuid, Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "SELECT f.lane, f.tenant_id, f.job_id, coalesce(j.user_id, s.user_id)
           FROM render.frame_jobs f
           LEFT JOIN render.render_jobs j ON j.id = f.job_id
           LEFT JOIN render.snapshots s ON s.id = f.snapshot_id
          WHERE f.id = $1 AND f.lease_epoch = $2 AND f.node_id = $3 AND f.state IN ('leased', 'running')",
    )
    .bind(task)
    .bind(epoch)
    .bind(node)
    .fetch_optional(pool)
    .await?;
    let stale = || {
        RenderError::FailedPrecondition(format!(
            "lease epoch {epoch} is not the current lease of task {task} on this node"
        ))
    };
    let Some((lane, tenant, job, user)) = row else { return Err(stale()) };
    let lane = Lane::from_db(&lane).ok_or_else(stale)?;
    Ok(Lease { task, epoch, lane, tenant, job, user })
}

/// The file service, or UNAVAILABLE when render has none configured.
fn file_service(files: Option<&FileClient>) -> Result<&FileClient> {
    files.ok_or_else(|| RenderError::Unavailable("the file service is not configured for the render service".into()))
}

/// The task id and epoch of a request, checked.
fn task_and_epoch(task_id: &str, lease_epoch: u64, prefix: &str) -> Result<(Uuid, i64)> {
    let task = crate::model::validate::uuid(&format!("{prefix}task_id"), task_id)?;
    let epoch = i64::try_from(lease_epoch).ok().filter(|e| *e > 0).ok_or_else(|| {
        RenderError::invalid(format!("{prefix}lease_epoch"), "must be the task's lease epoch (1 or more)")
    })?;
    Ok((task, epoch))
}

// ---------------------------------------------------------------------------------------------
// DownloadObject
// ---------------------------------------------------------------------------------------------

/// The response stream of a download.
pub type DownloadStream = BoxStream<agent_pb::DownloadObjectResponse>;

/// `DownloadObject` for `node`: `info`, then the bytes from `request.offset` in parts of at most
/// 1 MiB, as the file service sends them; the stream ends FAILED_PRECONDITION when the lease
/// ends meanwhile.
pub async fn download(
    state: &State,
    files: Option<&FileClient>,
    node: Uuid,
    request: &agent_pb::DownloadObjectRequest,
) -> Result<DownloadStream> {
    use agent_pb::download_object_request::Object;
    let pool = &state.pool;
    let (task, epoch) = task_and_epoch(&request.task_id, request.lease_epoch, "")?;
    let lease = current_lease(pool, task, epoch, node).await?;
    let (file, expected) = match &request.object {
        Some(Object::FileId(file_id)) => {
            let file = crate::model::validate::uuid("file_id", file_id)?;
            (file, named_input(pool, &lease, file, state.settings.watermark.image_file_id).await?)
        }
        Some(Object::Frame(frame)) => accepted_frame(pool, &lease, frame).await?,
        None => return Err(RenderError::invalid("object", "is required: a file_id or a frame")),
    };
    let (facts, bytes) = file_service(files)?.download(file, request.offset, expected.as_ref()).await?;
    let info = agent_pb::DownloadObjectResponse {
        part: Some(agent_pb::download_object_response::Part::Info(agent_pb::ObjectInfo {
            file_id: file.to_string(),
            sha256: facts.sha256.to_hex(),
            size_bytes: facts.size_bytes,
            content_type: facts.content_type,
            offset: request.offset,
        })),
    };
    let sending = Sending { bytes, pool: pool.clone(), lease, node, unchecked: 0 };
    let parts = futures_util::stream::unfold(Some(sending), |state| async move {
        let mut sending = state?;
        match sending.next_part().await {
            Ok(Some(part)) => Some((Ok(part), Some(sending))),
            Ok(None) => None,
            Err(err) => Some((Err(err.into()), None)),
        }
    });
    let first = futures_util::stream::once(async move { Ok(info) });
    Ok(Box::pin(futures_util::StreamExt::chain(first, parts)))
}

/// A download under way: the file service's stream, and the lease it is for.
struct Sending {
    bytes: crate::files::ByteStream,
    pool: PgPool,
    lease: Lease,
    node: Uuid,
    /// Bytes passed on since the lease was last checked.
    unchecked: u64,
}

impl Sending {
    /// The next part from the file service; FAILED_PRECONDITION once the lease has ended
    /// (checked every [`LEASE_CHECK_BYTES`]).
    async fn next_part(&mut self) -> Result<Option<agent_pb::DownloadObjectResponse>> {
        if self.unchecked >= LEASE_CHECK_BYTES {
            current_lease(&self.pool, self.lease.task, self.lease.epoch, self.node).await?;
            self.unchecked = 0;
        }
        match self.bytes.message().await {
            Ok(Some(file_pb::DownloadFileResponse {
                payload: Some(file_pb::download_file_response::Payload::Chunk(chunk)),
            })) => {
                self.unchecked += chunk.len() as u64;
                Ok(Some(agent_pb::DownloadObjectResponse {
                    part: Some(agent_pb::download_object_response::Part::Data(chunk)),
                }))
            }
            Ok(None) => Ok(None),
            Ok(Some(_)) => {
                Err(RenderError::Upstream { service: "file", status: "a download part without bytes".into() })
            }
            Err(status) => {
                tracing::warn!(%status, "a download from the file service broke off");
                Err(RenderError::Unavailable("the file service stopped sending; resume from the last offset".into()))
            }
        }
    }
}

/// The expected digest of `file` when the task's assignment names it (`watermark_image` being
/// the configured watermark's); PERMISSION_DENIED otherwise.
async fn named_input(
    pool: &PgPool,
    lease: &Lease,
    file: Uuid,
    watermark_image: Option<Uuid>,
) -> Result<Option<Sha256Digest>> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query(TaskRow::QUERY).bind([lease.task].as_slice()).fetch_optional(&mut *conn).await?;
    let Some(row) = row else { return Err(RenderError::NotFound("task")) };
    let row = TaskRow::from_row(&row)?;
    let jobs: Vec<Uuid> = if lease.lane == Lane::Assemble { lease.job.into_iter().collect() } else { Vec::new() };
    let mut inputs = Inputs { audio: records::audio_of(&mut *conn, &jobs).await?, ..Inputs::default() };
    inputs.load_facts(&mut conn, &[file]).await?;
    // The assignment names the watermark image only once its facts are recorded (else the text).
    let image = watermark_image.filter(|image| inputs.facts.contains_key(image));
    let audio = lease.job.and_then(|job| inputs.audio.get(&job)).map(Vec::as_slice).unwrap_or_default();
    if !row.input_files(audio, image).contains(&file) {
        return Err(RenderError::PermissionDenied(format!("file {file} is not an input of task {}", lease.task)));
    }
    let recorded = inputs.facts.get(&file).map(|f| f.sha256.clone());
    let template = (row.template_file_id == Some(file)).then(|| row.template_sha256.clone()).flatten();
    Ok(recorded.or(template).and_then(|d| Sha256Digest::from_slice(&d)))
}

/// The file and digest of an accepted frame of the assembly's job: PERMISSION_DENIED unless the
/// task is an assembly and the frame is one of its segment's, NOT_FOUND when no accepted frame
/// has a file.
async fn accepted_frame(
    pool: &PgPool,
    lease: &Lease,
    frame: &agent_pb::FrameSelector,
) -> Result<(Uuid, Option<Sha256Digest>)> {
    let denied = || {
        RenderError::PermissionDenied(format!(
            "frame {} of segment {} is not an input of task {}",
            frame.frame, frame.segment_index, lease.task
        ))
    };
    let Some(job) = lease.job.filter(|_| lease.lane == Lane::Assemble) else { return Err(denied()) };
    let in_job: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM render.render_job_segments
                         WHERE job_id = $1 AND position = $2 AND $3 BETWEEN frame_start AND frame_end
                           AND ($3 - frame_start) % frame_step = 0)",
    )
    .bind(job)
    .bind(frame.segment_index)
    .bind(frame.frame)
    .fetch_one(pool)
    .await?;
    if !in_job {
        return Err(denied());
    }
    let found: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT r.file_id, r.sha256
           FROM render.frame_results r
           JOIN render.frame_jobs c ON c.id = r.frame_job_id
           JOIN render.render_job_segments seg ON seg.id = c.segment_id
          WHERE r.job_id = $1 AND seg.position = $2 AND r.frame_number = $3 AND r.file_id IS NOT NULL
          LIMIT 1",
    )
    .bind(job)
    .bind(frame.segment_index)
    .bind(frame.frame)
    .fetch_optional(pool)
    .await?;
    let (file, sha256) = found.ok_or(RenderError::NotFound("frame"))?;
    Ok((file, Sha256Digest::from_slice(&sha256)))
}

// ---------------------------------------------------------------------------------------------
// UploadObject
// ---------------------------------------------------------------------------------------------

/// A checked `UploadHeader`.
#[derive(Clone, Debug)]
struct Header {
    /// Task and epoch; `None` for a crash report without a task.
    lease: Option<(Uuid, i64)>,
    kind: agent_pb::ObjectKind,
    /// Comp frame number (FRAME), else -1.
    frame: i32,
    file_name: String,
    content_type: String,
    size: u64,
    sha256: Sha256Digest,
}

impl Header {
    fn check(header: &agent_pb::UploadHeader) -> Result<Self> {
        let kind = agent_pb::ObjectKind::try_from(header.kind)
            .ok()
            .filter(|k| *k != agent_pb::ObjectKind::Unspecified)
            .ok_or_else(|| {
                RenderError::invalid("header.kind", "must be FRAME, SNAPSHOT_IMAGE, VIDEO, LOG or CRASH_REPORT")
            })?;
        let lease = if header.task_id.is_empty() && kind == agent_pb::ObjectKind::CrashReport {
            if header.lease_epoch != 0 {
                return Err(RenderError::invalid("header.lease_epoch", "must be 0 without a task"));
            }
            None
        } else {
            Some(task_and_epoch(&header.task_id, header.lease_epoch, "header.")?)
        };
        let frame = match kind {
            agent_pb::ObjectKind::Frame if header.frame >= 0 => header.frame,
            agent_pb::ObjectKind::Frame => {
                return Err(RenderError::invalid("header.frame", "must be the comp frame number (0 or more)"));
            }
            _ if header.frame == -1 => -1,
            _ => return Err(RenderError::invalid("header.frame", "must be -1 unless kind is FRAME")),
        };
        let file_name = file_name(&header.file_name)?;
        if header.content_type.chars().count() > MAX_CONTENT_TYPE_CHARS
            || header.content_type.chars().any(char::is_control)
        {
            return Err(RenderError::invalid(
                "header.content_type",
                format!("must be at most {MAX_CONTENT_TYPE_CHARS} characters without control characters"),
            ));
        }
        let sha256 = digest_from_hex(&header.sha256)
            .and_then(|d| Sha256Digest::from_slice(&d))
            .ok_or_else(|| RenderError::invalid("header.sha256", "must be 64 lower-case hex characters"))?;
        Ok(Self {
            lease,
            kind,
            frame,
            file_name,
            content_type: header.content_type.clone(),
            size: header.size_bytes,
            sha256,
        })
    }
}

/// A file name as the file service takes it: 1..=255 characters, no path separators or control
/// characters, no "..", no leading or trailing spaces.
fn file_name(name: &str) -> Result<String> {
    let bad = |reason: &str| RenderError::invalid("header.file_name", reason);
    let chars = name.chars().count();
    if chars == 0 || chars > MAX_FILE_NAME_CHARS {
        return Err(bad("must be 1 to 255 characters"));
    }
    if name.contains(['/', '\\']) || name.chars().any(char::is_control) {
        return Err(bad("must not contain path separators or control characters"));
    }
    if name.contains("..") || name.trim() != name {
        return Err(bad("must not contain \"..\" or start or end with a space"));
    }
    Ok(name.to_owned())
}

/// Whether a task of `lane` delivers objects of `kind`: frames from chunks and repairs, the image
/// from a snapshot, the video from an assembly; logs and crash reports from any.
fn delivers(lane: Lane, kind: agent_pb::ObjectKind) -> bool {
    use agent_pb::ObjectKind as K;
    match kind {
        K::Frame => matches!(lane, Lane::Render | Lane::Repair),
        K::SnapshotImage => lane == Lane::Snapshot,
        K::Video => lane == Lane::Assemble,
        K::Log | K::CrashReport => true,
        K::Unspecified => false,
    }
}

/// The file an upload of `header` for `lease` creates, with the file service's kind and owner
/// task.proto asks for: frames are the tenant's RENDER_CHUNK files (outside its quota), a
/// snapshot image the tenant's SNAPSHOT, a video the requester's EXPORT (counted in their
/// quota); logs and crash reports are the platform's (the catalogue tenant's) OTHER files.
fn new_file(header: &Header, lease: Option<&Lease>) -> NewFile {
    use agent_pb::ObjectKind as K;
    let (tenant, owner, kind, counted) = match (header.kind, lease) {
        (K::Frame, Some(lease)) => (lease.tenant, None, file_pb::FileKind::RenderChunk, false),
        (K::SnapshotImage, Some(lease)) => (lease.tenant, None, file_pb::FileKind::Snapshot, false),
        (K::Video, Some(lease)) => (lease.tenant, lease.user, file_pb::FileKind::Export, true),
        _ => (CATALOGUE_TENANT, None, file_pb::FileKind::Other, false),
    };
    NewFile {
        tenant,
        owner,
        name: header.file_name.clone(),
        kind,
        content_type_hint: header.content_type.clone(),
        counts_toward_quota: counted,
        size_bytes: header.size,
        sha256: header.sha256,
    }
}

/// A stored output of a lease (`render.object_uploads`).
async fn recorded(pool: &PgPool, lease: &Lease, header: &Header) -> Result<Option<(Uuid, Vec<u8>)>> {
    Ok(sqlx::query_as(
        "SELECT file_id, sha256 FROM render.object_uploads
          WHERE frame_job_id = $1 AND lease_epoch = $2 AND kind = $3 AND frame = $4",
    )
    .bind(lease.task)
    .bind(lease.epoch)
    .bind(kind_text(header.kind))
    .bind(header.frame)
    .fetch_optional(pool)
    .await?)
}

/// The answer for `file` holding the header's bytes.
fn stored(file: Uuid, header: &Header, deduplicated: bool) -> agent_pb::UploadObjectResponse {
    agent_pb::UploadObjectResponse {
        file_id: file.to_string(),
        size_bytes: header.size,
        sha256: header.sha256.to_hex(),
        deduplicated,
    }
}

/// `UploadObject` for `node` over the agent's stream.
pub async fn upload(
    pool: &PgPool,
    files: Option<&FileClient>,
    node: Uuid,
    mut inbound: Streaming<agent_pb::UploadObjectRequest>,
) -> Result<agent_pb::UploadObjectResponse> {
    use agent_pb::upload_object_request::Part;
    let header = match inbound.message().await.map_err(broken)?.and_then(|m| m.part) {
        Some(Part::Header(header)) => Header::check(&header)?,
        _ => return Err(RenderError::invalid("header", "the first message must carry the header")),
    };
    let limit = size_limit(header.kind).unwrap_or(0);
    if header.size > limit {
        return Err(RenderError::ResourceExhausted(format!(
            "header.size_bytes: {} bytes is over the limit of {limit} bytes for {}",
            header.size,
            header.kind.as_str_name()
        )));
    }
    let lease = match header.lease {
        Some((task, epoch)) => Some(current_lease(pool, task, epoch, node).await?),
        None => None,
    };
    if let Some(lease) = &lease {
        if !delivers(lease.lane, header.kind) {
            return Err(RenderError::invalid(
                "header.kind",
                format!("a {} task does not deliver {}", lease.lane.as_db(), header.kind.as_str_name()),
            ));
        }
        // A retry of a stored upload answers without reading a byte.
        if let Some((file, sha256)) = recorded(pool, lease, &header).await?
            && sha256.as_slice() == header.sha256.as_bytes()
        {
            return Ok(stored(file, &header, true));
        }
    }
    let files = file_service(files)?;
    let mut upload = files.upload(&new_file(&header, lease.as_ref())).await?;

    let mut hasher = sha2::Sha256::new();
    let mut received: u64 = 0;
    // The last part waits until everything is checked: without it the file service cannot
    // complete the file, so an abort leaves nothing.
    let mut held: Option<Bytes> = None;
    while let Some(message) = inbound.message().await.map_err(broken)? {
        let data = match message.part {
            Some(Part::Data(data)) => data,
            Some(Part::Header(_)) => return Err(RenderError::invalid("header", "only the first message carries it")),
            None => return Err(RenderError::invalid("part", "is unset")),
        };
        if data.len() > MAX_PART_BYTES {
            return Err(RenderError::invalid("data", format!("parts are at most {MAX_PART_BYTES} bytes")));
        }
        received += data.len() as u64;
        if received > header.size {
            return Err(RenderError::DataLoss(format!(
                "size_bytes: more than the header's {} bytes arrived",
                header.size
            )));
        }
        hasher.update(&data);
        if let Some(previous) = held.replace(data) {
            upload.send(previous).await?;
        }
    }
    if received != header.size {
        return Err(RenderError::DataLoss(format!(
            "size_bytes: {received} bytes arrived, the header says {}",
            header.size
        )));
    }
    let actual = hex::encode(hasher.finalize());
    if actual != header.sha256.to_hex() {
        return Err(RenderError::DataLoss(format!(
            "sha256: the bytes hash to {actual}, the header says {}",
            header.sha256.to_hex()
        )));
    }
    if let Some(lease) = &lease {
        current_lease(pool, lease.task, lease.epoch, node).await?;
    }
    if let Some(last) = held {
        upload.send(last).await?;
    }
    let file = upload.finish().await?;
    let file_id = Uuid::try_parse(&file.id)
        .map_err(|_| RenderError::Upstream { service: "file", status: "an upload answered a malformed id".into() })?;
    let Some(lease) = lease else {
        tracing::info!(%node, file = %file_id, "crash report stored");
        return Ok(stored(file_id, &header, false));
    };
    record(pool, files, node, &lease, &header, file_id).await
}

/// Records the stored `file` for its lease and answers; when a concurrent identical upload was
/// recorded first, answers that one's file (deduplicated) and deletes this one.
async fn record(
    pool: &PgPool,
    files: &FileClient,
    node: Uuid,
    lease: &Lease,
    header: &Header,
    file: Uuid,
) -> Result<agent_pb::UploadObjectResponse> {
    let kept: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO render.object_uploads (frame_job_id, lease_epoch, kind, frame, sha256, size_bytes, file_id, node_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (frame_job_id, lease_epoch, kind, frame) DO UPDATE
            SET sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes, file_id = EXCLUDED.file_id,
                node_id = EXCLUDED.node_id, created_at = now()
          WHERE render.object_uploads.sha256 <> EXCLUDED.sha256
      RETURNING file_id",
    )
    .bind(lease.task)
    .bind(lease.epoch)
    .bind(kind_text(header.kind))
    .bind(header.frame)
    .bind(header.sha256.as_bytes().as_slice())
    .bind(i64::try_from(header.size).unwrap_or(i64::MAX))
    .bind(file)
    .bind(node)
    .fetch_optional(pool)
    .await?;
    if kept.is_some() {
        tracing::debug!(%node, task = %lease.task, epoch = lease.epoch, file = %file, kind = header.kind.as_str_name(), "task output stored");
        return Ok(stored(file, header, false));
    }
    let Some((first, _)) = recorded(pool, lease, header).await? else {
        return Err(RenderError::Unavailable("the upload could not be recorded; send it again".into()));
    };
    if let Err(error) = files.delete(file).await {
        tracing::warn!(%error, file = %file, "could not delete a duplicate upload");
    }
    Ok(stored(first, header, true))
}

/// The agent's stream broke off: nothing is stored.
fn broken(status: tonic::Status) -> RenderError {
    RenderError::Aborted(format!("the upload stream broke off: {}", status.message()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> agent_pb::UploadHeader {
        agent_pb::UploadHeader {
            task_id: Uuid::new_v4().to_string(),
            lease_epoch: 3,
            kind: agent_pb::ObjectKind::Frame as i32,
            frame: 60,
            file_name: "frame_00060.png".into(),
            content_type: "image/png".into(),
            size_bytes: 10,
            sha256: "ab".repeat(32),
        }
    }

    fn refused(change: impl FnOnce(&mut agent_pb::UploadHeader)) -> String {
        let mut h = header();
        change(&mut h);
        Header::check(&h).unwrap_err().to_string()
    }

    #[test]
    fn headers_are_checked_field_by_field() {
        assert!(Header::check(&header()).is_ok());
        assert!(refused(|h| h.task_id = "nope".into()).starts_with("header.task_id"));
        assert!(refused(|h| h.lease_epoch = 0).starts_with("header.lease_epoch"));
        assert!(refused(|h| h.kind = 0).starts_with("header.kind"));
        assert!(refused(|h| h.kind = 99).starts_with("header.kind"));
        assert!(refused(|h| h.frame = -1).starts_with("header.frame"));
        assert!(refused(|h| h.kind = agent_pb::ObjectKind::Log as i32).starts_with("header.frame"));
        for name in ["", "a/b.png", "a\\b.png", "bad\n.png", "..", " x.png", &"x".repeat(256)] {
            assert!(refused(|h| h.file_name = name.into()).starts_with("header.file_name"), "{name:?}");
        }
        assert!(refused(|h| h.sha256 = "AB".repeat(32)).starts_with("header.sha256"));
        assert!(refused(|h| h.sha256 = "ab".into()).starts_with("header.sha256"));
        assert!(refused(|h| h.content_type = "x\u{7}".into()).starts_with("header.content_type"));
        let crash = agent_pb::UploadHeader {
            task_id: String::new(),
            lease_epoch: 0,
            kind: agent_pb::ObjectKind::CrashReport as i32,
            frame: -1,
            ..header()
        };
        assert!(Header::check(&crash).unwrap().lease.is_none());
        assert!(Header::check(&agent_pb::UploadHeader { kind: agent_pb::ObjectKind::Log as i32, ..crash }).is_err());
    }

    #[test]
    fn limits_and_kinds_follow_the_protocol() {
        assert_eq!(size_limit(agent_pb::ObjectKind::Frame), Some(512 << 20));
        assert_eq!(size_limit(agent_pb::ObjectKind::Video), Some(64 << 30));
        assert_eq!(size_limit(agent_pb::ObjectKind::Unspecified), None);
        assert!(delivers(Lane::Render, agent_pb::ObjectKind::Frame));
        assert!(!delivers(Lane::Assemble, agent_pb::ObjectKind::Frame));
        assert!(delivers(Lane::Assemble, agent_pb::ObjectKind::Video));
        assert!(delivers(Lane::Snapshot, agent_pb::ObjectKind::SnapshotImage));
    }
}
