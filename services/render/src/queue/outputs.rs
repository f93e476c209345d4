//! The non-frame outputs of a task's result (`TaskResult.outputs`): the snapshot image, the
//! assembled video, the full log.
//!
//! A successful snapshot must deliver exactly one SNAPSHOT_IMAGE of the snapshot's size, and a
//! successful assembly exactly one VIDEO whose probed facts fit the job ([`check_video`]); each
//! file must exist in the file service as a file of its kind (SNAPSHOT, EXPORT), belong to the
//! task's tenant and have the digest and size the agent reported. All of this is checked before the result's transaction (the file service
//! is another process), so that transaction either records the delivery whole or records the
//! attempt as a machine error — never half of it.
//!
//! The file service being unreachable is no fault of the node: the result is then refused
//! UNAVAILABLE (nothing recorded, the lease kept) and the agent resends it after a backoff.
//!
//! Fields that are not even well-formed (an id that is no UUID, a digest that is no hex) make
//! the whole report MALFORMED, as frames do; outputs that are well-formed but wrong make the
//! attempt a machine error (retried on another node, then the task fails).

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::file::v1 as file_pb;
use sqlx::PgPool;
use uuid::Uuid;

use super::report::Fence;
use super::wire::{digest_from_hex, parse_id};
use crate::error::{RenderError, Result};
use crate::files::FileClient;
use crate::model::{ErrorCode, ErrorInfo, FileRef, Lane};

/// Most outputs one result may name.
pub const MAX_OUTPUTS: usize = 16;
/// How far the probed frame rate may be from the job's, fps: NTSC rates are stored rounded
/// (29.97) while ffprobe reports the exact ratio (30000/1001 = 29.97003).
pub const FPS_TOLERANCE: f64 = 0.01;

/// One well-formed output.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Where it is in `outputs` (for messages).
    pub index: usize,
    /// The file.
    pub file_id: Uuid,
    /// Its SHA-256 as the agent computed it.
    pub sha256: [u8; 32],
    /// Its size as the agent reported it.
    pub size_bytes: u64,
    /// Probed facts.
    pub media: agent_pb::MediaInfo,
}

/// The outputs of a result, by kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outputs {
    /// SNAPSHOT_IMAGE outputs.
    pub images: Vec<Output>,
    /// VIDEO outputs.
    pub videos: Vec<Output>,
    /// The full log's file (the first LOG output).
    pub log_file_id: Option<Uuid>,
}

/// The outputs of `outputs`, or why they are malformed.
pub fn parse(outputs: &[agent_pb::TaskOutput]) -> Result<Outputs, String> {
    if outputs.len() > MAX_OUTPUTS {
        return Err(format!("outputs: at most {MAX_OUTPUTS}"));
    }
    let mut parsed = Outputs::default();
    for (index, output) in outputs.iter().enumerate() {
        let at = format!("outputs[{index}]");
        let file_id = parse_id(&output.file_id).ok_or_else(|| format!("{at}.file_id: must be a UUID"))?;
        let kind = output.kind();
        if kind == agent_pb::ObjectKind::Log {
            parsed.log_file_id.get_or_insert(file_id);
            continue;
        }
        let sha256 = digest_from_hex(&output.sha256).ok_or_else(|| format!("{at}.sha256: must be lower-case hex"))?;
        let one = Output {
            index,
            file_id,
            sha256,
            size_bytes: output.size_bytes,
            media: output.media.clone().unwrap_or_default(),
        };
        match kind {
            agent_pb::ObjectKind::SnapshotImage => parsed.images.push(one),
            agent_pb::ObjectKind::Video => parsed.videos.push(one),
            _ => return Err(format!("{at}.kind: must be SNAPSHOT_IMAGE, VIDEO or LOG")),
        }
    }
    Ok(parsed)
}

/// What a snapshot's image must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageWanted {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// What a job's export must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VideoWanted {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Output frame rate.
    pub fps: f64,
    /// Frames over all segments.
    pub frame_count: i32,
}

impl VideoWanted {
    /// The duration the frames make, ms.
    pub fn duration_ms(&self) -> i64 {
        (f64::from(self.frame_count) * 1000.0 / self.fps.max(0.001)).round() as i64
    }

    /// How far the duration may be off: one frame (rounded up), as AssembleSpec's default.
    pub fn duration_tolerance_ms(&self) -> i64 {
        (1000.0 / self.fps.max(0.001)).ceil() as i64
    }
}

/// The one image of a snapshot's outputs when it is what `wanted` asks, or why not.
pub fn check_image(outputs: &Outputs, wanted: ImageWanted) -> Result<Output, ErrorInfo> {
    let bad = |message: String| ErrorInfo::new(ErrorCode::FramesInvalid, message);
    let [image] = outputs.images.as_slice() else {
        return Err(bad(format!(
            "a snapshot delivers exactly one SNAPSHOT_IMAGE output; the result has {}",
            outputs.images.len()
        )));
    };
    if image.size_bytes == 0 {
        return Err(bad(format!("outputs[{}]: the image is empty", image.index)));
    }
    let size = image.media.resolution.map(|r| (r.width, r.height));
    if size != Some((wanted.width, wanted.height)) {
        let got = size.map_or_else(|| "no resolution".to_owned(), |(w, h)| format!("{w}x{h}"));
        return Err(bad(format!(
            "outputs[{}]: the image is {got}, the snapshot is {}x{}",
            image.index, wanted.width, wanted.height
        )));
    }
    Ok(image.clone())
}

/// The one video of an assembly's outputs when its probed facts fit `wanted`, or why not:
/// resolution exact (the frames were rendered at the output size, assembly never rescales),
/// frame count exact (AssembleSpec asks for `expected_frame_count`), frame rate within
/// [`FPS_TOLERANCE`], duration within one frame.
pub fn check_video(outputs: &Outputs, wanted: VideoWanted) -> Result<Output, ErrorInfo> {
    let bad = |message: String| ErrorInfo::new(ErrorCode::OutputMismatch, message);
    let [video] = outputs.videos.as_slice() else {
        return Err(bad(format!(
            "an assembly delivers exactly one VIDEO output; the result has {}",
            outputs.videos.len()
        )));
    };
    let at = format!("outputs[{}]", video.index);
    let media = &video.media;
    if video.size_bytes == 0 {
        return Err(bad(format!("{at}: the video is empty")));
    }
    let size = media.resolution.map(|r| (r.width, r.height));
    if size != Some((wanted.width, wanted.height)) {
        let got = size.map_or_else(|| "no resolution".to_owned(), |(w, h)| format!("{w}x{h}"));
        return Err(bad(format!("{at}: the video is {got}, the job's output is {}x{}", wanted.width, wanted.height)));
    }
    if media.duration_ms <= 0 {
        return Err(bad(format!("{at}: the video has no duration")));
    }
    if media.frame_count != wanted.frame_count {
        return Err(bad(format!(
            "{at}: the video has {} frames, the job has {}",
            media.frame_count, wanted.frame_count
        )));
    }
    if !media.fps.is_finite() || (media.fps - wanted.fps).abs() > FPS_TOLERANCE {
        return Err(bad(format!("{at}: the video runs at {} fps, the job at {}", media.fps, wanted.fps)));
    }
    if (media.duration_ms - wanted.duration_ms()).abs() > wanted.duration_tolerance_ms() {
        return Err(bad(format!(
            "{at}: the video lasts {} ms, the job {} ms (± {} ms)",
            media.duration_ms,
            wanted.duration_ms(),
            wanted.duration_tolerance_ms()
        )));
    }
    Ok(video.clone())
}

/// Whether `output`'s file exists for `tenant` as a file of `kind` with the digest and size the
/// agent reported; why not as a machine error (UPLOAD_FAILED: the node did not store what it
/// claims). When the file service cannot answer now (`UNAVAILABLE`: down, unreachable, too
/// slow), nothing is known about the node's output: that is the outer error, for the agent to
/// resend its result later, not a machine error.
pub async fn check_file(
    files: Option<&FileClient>,
    tenant: Uuid,
    output: &Output,
    kind: file_pb::FileKind,
) -> Result<Result<(), ErrorInfo>> {
    let bad = |message: String| Ok(Err(ErrorInfo::new(ErrorCode::UploadFailed, message)));
    let at = format!("outputs[{}]", output.index);
    let Some(files) = files else {
        return bad(format!(
            "{at}: the file service is not configured for the render service; cannot verify the output"
        ));
    };
    let wanted = FileRef { field: format!("{at}.file_id"), file_id: output.file_id };
    let facts = match files.visible(tenant, std::slice::from_ref(&wanted)).await {
        Ok(mut found) => found.remove(&output.file_id),
        Err(RenderError::FileNotFound { .. }) => None,
        Err(outage @ RenderError::Unavailable(_)) => return Err(outage),
        Err(error) => return bad(format!("{at}: could not verify the output with the file service: {error}")),
    };
    let Some(facts) = facts else {
        return bad(format!("{at}: file {} does not exist for the task's tenant", output.file_id));
    };
    if facts.kind != kind {
        return bad(format!(
            "{at}: file {} is a {}, not a {} file",
            output.file_id,
            facts.kind.as_str_name(),
            kind.as_str_name()
        ));
    }
    if facts.sha256.as_bytes() != &output.sha256 {
        return bad(format!("{at}: the stored file's SHA-256 differs from the reported one"));
    }
    if facts.size_bytes != output.size_bytes {
        return bad(format!(
            "{at}: the stored file has {} bytes, the report says {}",
            facts.size_bytes, output.size_bytes
        ));
    }
    Ok(Ok(()))
}

/// What a successful result delivers, checked.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// Nothing beyond frames (render, repair and probe lanes), or the lease is no longer
    /// current (the result's transaction classifies it).
    Nothing,
    /// A snapshot's image, verified.
    Image(Output),
    /// A job's video, verified, with what the job wanted.
    Video(Output, VideoWanted),
    /// The outputs are not a delivery: the attempt is a machine error.
    Bad(ErrorInfo),
}

/// lane, tenant, snapshot width, height, job width, height, fps, frames.
type TaskFacts = (String, Uuid, Option<i32>, Option<i32>, Option<i32>, Option<i32>, Option<f64>, Option<i32>);

/// Checks what the current lease `fence` delivers with `outputs` (a SUCCESS result);
/// `UNAVAILABLE` while the file service cannot answer (the lease stands, the result is to be
/// resent).
pub async fn delivery(pool: &PgPool, files: Option<&FileClient>, fence: Fence, outputs: &Outputs) -> Result<Delivery> {
    let row: Option<TaskFacts> = sqlx::query_as(
        "SELECT f.lane, f.tenant_id, s.width, s.height, j.output_width, j.output_height, j.output_fps,
                (SELECT sum(g.frame_count) FROM render.render_job_segments g WHERE g.job_id = f.job_id)::int
           FROM render.frame_jobs f
           LEFT JOIN render.snapshots s ON s.id = f.snapshot_id
           LEFT JOIN render.render_jobs j ON j.id = f.job_id
          WHERE f.id = $1 AND f.lease_epoch = $2 AND f.node_id = $3 AND f.state IN ('leased', 'running')",
    )
    .bind(fence.task_id)
    .bind(fence.lease_epoch)
    .bind(fence.node_id)
    .fetch_optional(pool)
    .await?;
    let Some((lane, tenant, s_width, s_height, j_width, j_height, fps, frames)) = row else {
        return Ok(Delivery::Nothing);
    };
    let dimension = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let checked = match Lane::from_db(&lane) {
        Some(Lane::Snapshot) => {
            check_image(outputs, ImageWanted { width: dimension(s_width), height: dimension(s_height) })
                .map(|image| (image, None))
        }
        Some(Lane::Assemble) => {
            let wanted = VideoWanted {
                width: dimension(j_width),
                height: dimension(j_height),
                fps: fps.unwrap_or(0.0),
                frame_count: frames.unwrap_or(0),
            };
            check_video(outputs, wanted).map(|video| (video, Some(wanted)))
        }
        _ => return Ok(Delivery::Nothing),
    };
    let (output, video) = match checked {
        Ok(checked) => checked,
        Err(error) => return Ok(Delivery::Bad(error)),
    };
    let kind = if video.is_some() { file_pb::FileKind::Export } else { file_pb::FileKind::Snapshot };
    if let Err(error) = check_file(files, tenant, &output, kind).await? {
        return Ok(Delivery::Bad(error));
    }
    Ok(match video {
        Some(wanted) => Delivery::Video(output, wanted),
        None => Delivery::Image(output),
    })
}

#[cfg(test)]
mod tests {
    use flatrender_proto::flatrender::common::v1::Resolution;

    use super::*;

    fn output(kind: agent_pb::ObjectKind, media: agent_pb::MediaInfo) -> agent_pb::TaskOutput {
        agent_pb::TaskOutput {
            kind: kind as i32,
            file_id: Uuid::new_v4().to_string(),
            sha256: "ab".repeat(32),
            size_bytes: 100,
            content_type: String::new(),
            media: Some(media),
        }
    }

    fn video_media(frames: i32, fps: f64, duration_ms: i64) -> agent_pb::MediaInfo {
        agent_pb::MediaInfo {
            resolution: Some(Resolution { width: 1280, height: 720 }),
            fps,
            frame_count: frames,
            duration_ms,
            ..Default::default()
        }
    }

    const WANTED: VideoWanted = VideoWanted { width: 1280, height: 720, fps: 29.97, frame_count: 90 };

    #[test]
    fn malformed_fields_are_named() {
        let mut bad = output(agent_pb::ObjectKind::Video, agent_pb::MediaInfo::default());
        bad.sha256 = "XY".into();
        assert!(parse(&[bad]).unwrap_err().starts_with("outputs[0].sha256"));
        let mut bad = output(agent_pb::ObjectKind::Video, agent_pb::MediaInfo::default());
        bad.file_id = "nope".into();
        assert!(parse(&[bad]).unwrap_err().starts_with("outputs[0].file_id"));
        let frame = output(agent_pb::ObjectKind::Frame, agent_pb::MediaInfo::default());
        assert!(parse(&[frame]).unwrap_err().starts_with("outputs[0].kind"));
        let many = vec![output(agent_pb::ObjectKind::Log, Default::default()); MAX_OUTPUTS + 1];
        assert!(parse(&many).is_err());
    }

    #[test]
    fn outputs_are_sorted_by_kind_and_the_log_needs_no_digest() {
        let mut log = output(agent_pb::ObjectKind::Log, Default::default());
        log.sha256.clear();
        let parsed = parse(&[output(agent_pb::ObjectKind::Video, Default::default()), log.clone()]).unwrap();
        assert_eq!((parsed.videos.len(), parsed.images.len()), (1, 0));
        assert_eq!(parsed.log_file_id, Some(log.file_id.parse().unwrap()));
    }

    #[test]
    fn a_video_must_fit_the_job() {
        let check = |media| {
            let parsed = parse(&[output(agent_pb::ObjectKind::Video, media)]).unwrap();
            check_video(&parsed, WANTED)
        };
        assert!(check(video_media(90, 30000.0 / 1001.0, 3003)).is_ok(), "NTSC rates match their rounding");
        assert!(check(video_media(90, 29.97, 3003 + 34)).is_ok(), "within one frame");
        for wrong in [video_media(89, 29.97, 2970), video_media(90, 30.0, 3003), video_media(90, 29.97, 3100)] {
            assert_eq!(check(wrong).unwrap_err().code, Some(ErrorCode::OutputMismatch));
        }
        let small = agent_pb::MediaInfo {
            resolution: Some(Resolution { width: 640, height: 360 }),
            ..video_media(90, 29.97, 3003)
        };
        assert!(check(small).unwrap_err().message.contains("640x360"));
        assert!(check_video(&Outputs::default(), WANTED).unwrap_err().message.contains("exactly one VIDEO"));
    }

    #[test]
    fn an_image_must_be_the_snapshot_size() {
        let media =
            agent_pb::MediaInfo { resolution: Some(Resolution { width: 64, height: 32 }), ..Default::default() };
        let parsed = parse(&[output(agent_pb::ObjectKind::SnapshotImage, media)]).unwrap();
        assert!(check_image(&parsed, ImageWanted { width: 64, height: 32 }).is_ok());
        let error = check_image(&parsed, ImageWanted { width: 64, height: 64 }).unwrap_err();
        assert_eq!(error.code, Some(ErrorCode::FramesInvalid));
        let two = Outputs { images: vec![parsed.images[0].clone(), parsed.images[0].clone()], ..Outputs::default() };
        assert!(check_image(&two, ImageWanted { width: 64, height: 32 }).is_err());
    }
}
