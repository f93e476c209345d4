//! One assembly task: every accepted frame of the job and the audio and watermark it names
//! fetched, ffmpeg run by [`crate::assembly`] (concatenate, mix, watermark, H.264/AAC MP4 with
//! faststart, ffprobe-checked), the video uploaded, and one result naming it with its probed facts.

use std::path::{Path, PathBuf};
use std::time::Instant;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1::Resolution;
use flatrender_proto::flatrender::render::v1 as pb;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::report::{Failed, MAX_MESSAGE_BYTES, downloads_until, truncated, unless_stopped};
use super::{Attempt, Resources, TaskContext};
use crate::assembly::proto::Inputs;
use crate::assembly::{self, AssemblyError};
use crate::session::tasks::{StopReason, StopSignal, TaskEvent};
use crate::transfer::Object;

/// Runs the task and always ends with exactly one result event.
pub async fn run(
    resources: &Resources,
    task: agent_pb::AssignTask,
    spec: agent_pb::AssembleSpec,
    events: mpsc::UnboundedSender<TaskEvent>,
    stop: StopSignal,
) {
    let ctx = TaskContext::new(&task, events.clone());
    let mut attempt = Attempt::begin(resources, &task);
    let work_dir = attempt.work_dir.clone();
    let mut timings = agent_pb::TaskTimings::default();
    match assemble(resources, &ctx, &spec, &work_dir, stop, &mut timings).await {
        Ok(output) => {
            attempt.result.outcome = pb::TaskOutcome::Success as i32;
            attempt.result.outputs.push(output);
        }
        Err(failed) => {
            attempt.result.outcome = failed.outcome as i32;
            attempt.result.error = Some(failed.error);
        }
    }
    attempt.finish(timings, &events).await;
}

async fn assemble(
    resources: &Resources,
    ctx: &TaskContext,
    spec: &agent_pb::AssembleSpec,
    work_dir: &Path,
    stop: StopSignal,
    timings: &mut agent_pb::TaskTimings,
) -> Result<agent_pb::TaskOutput, Failed> {
    let tools = resources
        .config
        .tools
        .clone()
        .ok_or_else(|| Failed::machine(pb::ErrorCode::EncodeFailed, "ffmpeg is not available on this node"))?;
    assembly::proto::supported(spec).map_err(|why| Failed::machine(pb::ErrorCode::EncodeFailed, why))?;

    ctx.phase(pb::TaskPhase::Downloading, "fetching the frames and the audio");
    let fetching = Instant::now();
    let deadline = tokio::time::Instant::now() + resources.config.download_limit(spec.watchdog.as_ref());
    let inputs = downloads_until(deadline, unless_stopped(&stop, fetch_inputs(resources, ctx, spec, work_dir))).await?;
    timings.download_ms = fetching.elapsed().as_millis() as u64;

    let name = output_name(&spec.output_file_name);
    let output_path = work_dir.join(&name);
    let plan = assembly::proto::assembly(spec, inputs, output_path)
        .map_err(|why| Failed::machine(pb::ErrorCode::EncodeFailed, why))?;
    ctx.phase(pb::TaskPhase::Encoding, "encoding");
    let encoding = Instant::now();
    let limits = resources.config.limits(spec.watchdog.as_ref());
    let mut stopper = stop.clone();
    let cancel = async move {
        stopper.stopped().await;
    };
    let total = u32::try_from(spec.expected_frame_count).unwrap_or(0);
    let assembled = assembly::assemble(&plan, &tools, limits, cancel, |progress| {
        let done = u32::try_from(progress.frames).unwrap_or(u32::MAX).min(total);
        ctx.encoding(done, total, progress.percent);
    })
    .await
    .map_err(|error| failed(error, &stop))?;
    timings.render_ms = encoding.elapsed().as_millis() as u64;

    ctx.phase(pb::TaskPhase::Uploading, "uploading the video");
    let uploading = Instant::now();
    let video = super::render::upload(resources, ctx, agent_pb::ObjectKind::Video, -1, &assembled.path);
    let stored = unless_stopped(&stop, video).await?;
    timings.upload_ms = uploading.elapsed().as_millis() as u64;
    let probed = &assembled.probed;
    let media = agent_pb::MediaInfo {
        resolution: Some(Resolution { width: probed.width.unwrap_or(0), height: probed.height.unwrap_or(0) }),
        fps: plan.output.fps.as_f64(),
        frame_count: probed.frames.and_then(|f| i32::try_from(f).ok()).unwrap_or(0),
        duration_ms: probed.duration.map_or(0, |d| d.as_millis() as i64),
        video_codec: probed.video_codec.clone().unwrap_or_default(),
        has_audio: probed.audio_codec.is_some(),
        audio_codec: probed.audio_codec.clone().unwrap_or_default(),
    };
    Ok(agent_pb::TaskOutput {
        kind: agent_pb::ObjectKind::Video as i32,
        file_id: stored.file_id,
        sha256: stored.sha256,
        size_bytes: stored.size_bytes,
        content_type: "video/mp4".into(),
        media: Some(media),
    })
}

/// Every input on local disk: the accepted frames of each segment in playback order, each audio
/// source, the watermark image.
async fn fetch_inputs(
    resources: &Resources,
    ctx: &TaskContext,
    spec: &agent_pb::AssembleSpec,
    work_dir: &Path,
) -> Result<Inputs, Failed> {
    let disk = |e: std::io::Error| Failed::machine(pb::ErrorCode::DiskFull, format!("the work directory: {e}"));
    let lease = ctx.lease();
    let fetch = |e: crate::transfer::TransferError| Failed::machine(pb::ErrorCode::DownloadFailed, e.to_string());
    let total: usize = spec.segments.iter().map(|s| usize::try_from(s.frame_count).unwrap_or(0)).sum();
    let mut inputs = Inputs::default();
    let mut fetched = 0_usize;
    for segment in &spec.segments {
        let dir = work_dir.join("frames").join(segment.segment_index.to_string());
        tokio::fs::create_dir_all(&dir).await.map_err(disk)?;
        let extension = match segment.format() {
            pb::ImageFormat::Jpeg => "jpg",
            pb::ImageFormat::Webp => "webp",
            pb::ImageFormat::Png | pb::ImageFormat::Unspecified => "png",
        };
        let numbers = frame_numbers(segment).map_err(|why| Failed::machine(pb::ErrorCode::FramesInvalid, why))?;
        // A few at a time over the one connection: each frame is a small download whose round
        // trip would otherwise dominate; `buffered` keeps them in playback order.
        let lease = &lease;
        let mut downloads = futures_util::stream::iter(numbers.into_iter().map(|frame| {
            let path = dir.join(format!("{frame:06}.{extension}"));
            let object = Object::Frame { segment_index: segment.segment_index, frame };
            async move { resources.transfers.download_to(lease, &object, &path, None).await.map(|_| path) }
        }))
        .buffered(FRAME_FETCHES);
        let mut frames = Vec::new();
        while let Some(path) = downloads.next().await {
            frames.push(path.map_err(fetch)?);
            fetched += 1;
            if fetched.is_multiple_of(50) {
                ctx.phase(pb::TaskPhase::Downloading, &format!("fetched {fetched} of {total} frames"));
            }
        }
        inputs.frames.push(frames);
    }
    let dir = work_dir.join("audio");
    tokio::fs::create_dir_all(&dir).await.map_err(disk)?;
    for (i, track) in spec.audio_tracks.iter().enumerate() {
        let source = track.source.as_ref().ok_or_else(|| {
            Failed::machine(pb::ErrorCode::FileNotFound, format!("audio_tracks[{i}] names no source"))
        })?;
        let path = dir.join(format!("track-{i}"));
        fetch_file(resources, ctx, source, &path).await?;
        inputs.audio.push(path);
    }
    if let Some(agent_pb::Watermark { mark: Some(agent_pb::watermark::Mark::Image(image)), .. }) = &spec.watermark {
        let path = work_dir.join("watermark.png");
        fetch_file(resources, ctx, image, &path).await?;
        inputs.watermark_image = Some(path);
    }
    Ok(inputs)
}

async fn fetch_file(
    resources: &Resources,
    ctx: &TaskContext,
    source: &agent_pb::ObjectRef,
    path: &Path,
) -> Result<(), Failed> {
    let expected = Some(source.sha256.as_str()).filter(|s| !s.is_empty());
    resources
        .transfers
        .download_to(&ctx.lease(), &Object::File(source.file_id.clone()), path, expected)
        .await
        .map(|_| ())
        .map_err(|e| Failed::machine(pb::ErrorCode::DownloadFailed, e.to_string()))
}

/// Frame downloads in flight at once.
const FRAME_FETCHES: usize = 8;

/// The comp frame numbers of a segment in playback order; never more than it says it has.
pub(super) fn frame_numbers(segment: &agent_pb::AssembleSegment) -> Result<Vec<i32>, String> {
    let limit = usize::try_from(segment.frame_count).unwrap_or(0);
    let mut numbers = Vec::with_capacity(limit.min(100_000));
    for range in &segment.frames {
        let step = usize::try_from(range.step.max(1)).unwrap_or(1);
        for frame in (range.start..=range.end).step_by(step) {
            if numbers.len() == limit {
                return Err(format!("segment {}: its ranges hold more than its {limit} frames", segment.segment_index));
            }
            numbers.push(frame);
        }
    }
    if numbers.len() != limit {
        return Err(format!(
            "segment {}: its ranges hold {} frames, not {limit}",
            segment.segment_index,
            numbers.len()
        ));
    }
    Ok(numbers)
}

/// The output's file name: the one the task names when it is a plain `.mp4` name.
fn output_name(named: &str) -> PathBuf {
    let plain = !named.is_empty()
        && named.ends_with(".mp4")
        && !named.starts_with('.')
        && named.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    PathBuf::from(if plain { named } else { "output.mp4" })
}

/// An assembly error in the protocol's terms. ffmpeg and the checks are the machine's part: the
/// frames were verified when they were accepted, so another node may well succeed.
fn failed(error: AssemblyError, stop: &StopSignal) -> Failed {
    let message = truncated(&error.to_string(), MAX_MESSAGE_BYTES);
    let (outcome, code) = match &error {
        AssemblyError::Canceled => return Failed::stopped(stop.reason().unwrap_or(StopReason::Canceled)),
        AssemblyError::Silent { .. } => (pb::TaskOutcome::MachineError, pb::ErrorCode::NoOutputTimeout),
        AssemblyError::OverTime { .. } => (pb::TaskOutcome::Timeout, pb::ErrorCode::MaxRenderTime),
        AssemblyError::MissingFrame { .. } => (pb::TaskOutcome::MachineError, pb::ErrorCode::FramesInvalid),
        AssemblyError::MissingAudio { .. } => (pb::TaskOutcome::MachineError, pb::ErrorCode::FileNotFound),
        AssemblyError::OutputMismatch(_) | AssemblyError::Probe(_) => {
            (pb::TaskOutcome::MachineError, pb::ErrorCode::OutputMismatch)
        }
        AssemblyError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull => {
            (pb::TaskOutcome::MachineError, pb::ErrorCode::DiskFull)
        }
        _ => (pb::TaskOutcome::MachineError, pb::ErrorCode::EncodeFailed),
    };
    let class = match outcome {
        pb::TaskOutcome::Timeout => pb::ErrorClass::Timeout,
        pb::TaskOutcome::Canceled | pb::TaskOutcome::HandedBack => pb::ErrorClass::Canceled,
        _ => pb::ErrorClass::Machine,
    };
    Failed { outcome, error: pb::RenderError { error_class: class as i32, code: code as i32, message } }
}

#[cfg(test)]
mod tests {
    use flatrender_proto::flatrender::agent::v1 as agent_pb;
    use flatrender_proto::flatrender::render::v1 as pb;

    #[test]
    fn a_segments_frames_are_its_ranges_in_order_and_no_more_than_it_says() {
        let range = |start, end, step| pb::FrameRange { start, end, step };
        let segment = |count, frames| agent_pb::AssembleSegment { frame_count: count, frames, ..Default::default() };
        let numbers = super::frame_numbers(&segment(6, vec![range(10, 12, 1), range(20, 24, 2)]));
        assert_eq!(numbers, Ok(vec![10, 11, 12, 20, 22, 24]));
        assert!(super::frame_numbers(&segment(3, vec![range(0, i32::MAX, 1)])).unwrap_err().contains("more than"));
        assert!(super::frame_numbers(&segment(4, vec![range(0, 1, 1)])).unwrap_err().contains("not 4"));
    }

    #[test]
    fn the_output_name_is_a_plain_mp4_name() {
        assert_eq!(super::output_name("render-1f2e.mp4"), std::path::Path::new("render-1f2e.mp4"));
        for bad in ["", "../x.mp4", "a/b.mp4", ".hidden.mp4", "x.mov"] {
            assert_eq!(super::output_name(bad), std::path::Path::new("output.mp4"), "{bad}");
        }
    }
}
