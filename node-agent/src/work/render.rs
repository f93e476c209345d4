//! One render task (chunk, repair, snapshot or probe) from assignment to result: the template
//! from the cache, the media it needs, the injection script, one aerender run per frame range,
//! the frames verified and uploaded, and a result in the protocol's terms.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tokio::sync::mpsc;

use super::crash::{self, Crash};
use super::landing::{self, Landing, Shipped, Sign};
use super::report::{self, Failed, MAX_MESSAGE_BYTES, downloads_until, truncated, unless_stopped};
use super::{Attempt, Resources, TaskContext};
use crate::aerender::argv::{AerenderCommand, FrameSpan, MemUsage, Mfr};
use crate::aerender::driver::{self, RenderRun, RenderedFrame, RunEvent};
use crate::aerender::outcome::{ErrorCode, Outcome};
use crate::cache::BundleRef;
use crate::process::Activity;
use crate::session::tasks::{StopSignal, TaskEvent};
use crate::transfer::Object;

/// The default output pattern when the task names none: comp frame numbers, five digits.
const DEFAULT_PATTERN: &str = "frame_[#####].png";

/// What a task comes to: its result, its timings, and a crash to report after the result.
struct Ended {
    result: agent_pb::TaskResult,
    timings: agent_pb::TaskTimings,
    crashed: Option<Crash>,
}

/// Runs the task and always ends with exactly one result event.
pub async fn run(
    resources: &Resources,
    task: agent_pb::AssignTask,
    spec: agent_pb::RenderSpec,
    events: mpsc::UnboundedSender<TaskEvent>,
    stop: StopSignal,
) {
    let ctx = TaskContext::new(&task, events.clone());
    let mut attempt = Attempt::begin(resources, &task);
    let work_dir = attempt.work_dir.clone();
    let result = std::mem::take(&mut attempt.result);
    let mut out = Ended { result, timings: agent_pb::TaskTimings::default(), crashed: None };
    if let Err(failed) = render(resources, &ctx, &spec, &work_dir, stop, &mut out).await {
        out.result.outcome = failed.outcome as i32;
        out.result.error = Some(failed.error);
    }
    let Ended { result, timings, crashed } = out;
    attempt.result = result;
    attempt.finish(timings, &events).await;
    if let Some(crash) = crashed {
        crash::report(resources, &ctx, crash).await;
    }
}

async fn render(
    resources: &Resources,
    ctx: &TaskContext,
    spec: &agent_pb::RenderSpec,
    work_dir: &Path,
    stop: StopSignal,
    out: &mut Ended,
) -> Result<(), Failed> {
    let disk = |e: std::io::Error| Failed::machine(pb::ErrorCode::DiskFull, format!("the work directory: {e}"));
    tokio::fs::create_dir_all(work_dir.join("out")).await.map_err(disk)?;
    let aerender = resources.config.aerender_for(&spec.ae_version).ok_or_else(|| {
        Failed::machine(pb::ErrorCode::AeUnavailable, format!("After Effects {:?} is not installed", spec.ae_version))
    })?;

    // Inputs: the template (from the cache when it is there), then the media.
    ctx.phase(pb::TaskPhase::Downloading, "fetching the template");
    let fetching = Instant::now();
    let download_deadline = tokio::time::Instant::now() + resources.config.download_limit(spec.watchdog.as_ref());
    let bundle_ref = spec
        .template_bundle
        .as_ref()
        .ok_or_else(|| Failed::template(pb::ErrorCode::BundleInvalid, "the task names no template bundle"))?;
    let key = BundleRef::new(&bundle_ref.sha256, bundle_ref.size_bytes)
        .map_err(|e| Failed::template(pb::ErrorCode::BundleInvalid, e.to_string()))?;
    let claim =
        resources.bundles.register(&bundle_ref.sha256, ctx.lease(), bundle_ref.file_id.clone(), download_deadline);
    let template = resources.cache.acquire(&key).await.map_err(|e| match e {
        crate::cache::CacheError::UnsafeArchive { .. } => Failed::template(pb::ErrorCode::BundleInvalid, e.to_string()),
        crate::cache::CacheError::ChecksumMismatch { .. } => {
            Failed::machine(pb::ErrorCode::ChecksumMismatch, e.to_string())
        }
        _ => Failed::machine(pb::ErrorCode::DownloadFailed, e.to_string()),
    })?;
    drop(claim);
    // The template fill is not interrupted (it resumes and other tasks may wait on it: it ends
    // when it runs past the download limit of every task that needs it); the media and the
    // uploads are.
    let media =
        downloads_until(download_deadline, unless_stopped(&stop, fetch_media(resources, ctx, &spec.assets, work_dir)))
            .await?;
    out.timings.download_ms = fetching.elapsed().as_millis() as u64;

    ctx.phase(pb::TaskPhase::Preparing, "writing the injection script");
    // After Effects will not render while an instance an earlier run lost is still there.
    if let Some(tracker) = resources.config.tracker.clone() {
        match tokio::task::spawn_blocking(move || tracker.sweep()).await {
            Ok(Ok(report)) if !report.is_clean() => {
                return Err(Failed::machine(
                    pb::ErrorCode::AnotherInstance,
                    format!("renderer processes an earlier run left could not be killed: {:?}", report.failed),
                ));
            }
            Ok(Err(error)) => tracing::warn!(%error, "renderer processes left by earlier runs were not looked for"),
            _ => {}
        }
    }
    let project = project_path(template.path(), &spec.project_path)?;
    let scene = spec.scene_data.clone().unwrap_or_default();
    let injection = crate::scene::injection(&scene, |id| media.get(id).cloned())
        .map_err(|e| Failed::template(pb::ErrorCode::ScriptError, e.to_string()))?;
    let script = work_dir.join("inject.jsx");
    tokio::fs::write(&script, injection.to_script()).await.map_err(disk)?;

    let output = spec.output.clone().unwrap_or_default();
    let pattern =
        if output.file_pattern.is_empty() { DEFAULT_PATTERN.to_string() } else { output.file_pattern.clone() };
    if pattern.contains(['/', '\\', ':']) || pattern.contains("..") {
        return Err(Failed::template(
            pb::ErrorCode::BundleInvalid,
            format!("the output pattern {pattern:?} is not a file name"),
        ));
    }
    let frame_size = output.resolution.as_ref().map(|r| (r.width, r.height)).filter(|(w, h)| *w > 0 && *h > 0);
    let limits = resources.config.limits(spec.watchdog.as_ref());
    let spans: Vec<FrameSpan> = spec
        .frames
        .iter()
        .map(|r| FrameSpan { start: r.start.max(0) as u32, end: r.end.max(0) as u32, step: r.step.max(1) as u32 })
        .collect();
    let frames_total: u32 = spans.iter().fold(0_u32, |total, s| total.saturating_add(s.len()));
    // A set output size is the output module's job, so assembly never rescales.
    let mut output_settings: BTreeMap<String, String> = output.output_settings.clone().into_iter().collect();
    if let Some((width, height)) = frame_size {
        output_settings.entry("Resize".into()).or_insert_with(|| "true".into());
        output_settings.entry("Resize to".into()).or_insert_with(|| format!("{width}x{height}"));
    }

    // One aerender run per range; with frames wanted, each is stored as it lands.
    ctx.phase(pb::TaskPhase::Rendering, "rendering");
    let rendering = Instant::now();
    let mut rendered: Vec<RenderedFrame> = Vec::new();
    let mut stored: BTreeMap<u32, agent_pb::FrameOutput> = BTreeMap::new();
    let out_dir = work_dir.join("out");
    for span in spans {
        let command = AerenderCommand {
            project: project.clone(),
            composition: spec.composition.clone(),
            output: work_dir.join("out").join(&pattern),
            frames: span,
            script: Some(script.clone()),
            render_settings_template: Some(output.render_settings_template.clone()).filter(|t| !t.is_empty()),
            output_module_template: Some(output.output_module_template.clone()).filter(|t| !t.is_empty()),
            render_settings: output.render_settings.clone().into_iter().collect(),
            output_settings: output_settings.clone(),
            mfr: spec.mfr.map(|m| Mfr { enabled: m.enabled, max_cpu_percent: m.max_cpu_percent }),
            mem_usage: spec.mem_usage.map(|m| MemUsage {
                image_cache_percent: m.image_cache_percent,
                max_memory_percent: m.max_memory_percent,
            }),
            continue_on_missing_footage: spec.continue_on_missing_footage,
        };
        let run = RenderRun {
            aerender: aerender.clone(),
            command,
            limits,
            frame_size,
            env: resources.config.env.clone(),
            tracker: resources.config.tracker.clone(),
        };
        let done_before = rendered.len() as u32;
        let mut stopper = stop.clone();
        // A frame that cannot be stored fails the task: the render stops then, not at its end.
        let ship_failed = tokio::sync::Notify::new();
        let cancel = async {
            tokio::select! {
                _ = stopper.stopped() => {}
                () = ship_failed.notified() => {}
            }
        };
        let activity = Activity::default();
        let (signs, landed) = mpsc::unbounded_channel();
        let watcher = if output.upload_frames {
            landing::watch(&out_dir, signs.clone(), activity.clone())
                .inspect_err(|error| tracing::warn!(%error, "frames are stored after the run: the output directory cannot be watched"))
                .ok()
        } else {
            None
        };
        let landing = Landing::new(&run.command.output, span.frames());
        let shipping = async {
            if !output.upload_frames {
                return Shipped::default();
            }
            let store = move |frame: u32, path: PathBuf| async move {
                store_frame(resources, ctx, frame, &path, frame_size).await.map_err(|failed| failed.error.message)
            };
            let shipped =
                landing::ship(landing, landed, frame_size, store, |batch| ctx.frames(spec.segment_index, batch)).await;
            if shipped.error.is_some() {
                ship_failed.notify_one();
            }
            shipped
        };
        // The renderer's process id, 0 until it runs.
        let pid = std::sync::atomic::AtomicU32::new(0);
        let driving = async {
            let report = driver::render(&run, &activity, cancel, |event| match event {
                RunEvent::Started(started) => {
                    pid.store(started, std::sync::atomic::Ordering::Relaxed);
                    if let Some(watch) = &resources.config.crash_watch {
                        watch.note_run(started);
                    }
                }
                RunEvent::Progress(progress) => {
                    let done = done_before.saturating_add(u32::try_from(progress.position).unwrap_or(u32::MAX));
                    ctx.progress(done, frames_total, progress.comp_frame.map_or(-1, |f| f as i32));
                    let _ = signs.send(Sign::Progress(progress.position));
                }
                RunEvent::Failing => {
                    let _ = signs.send(Sign::Failing);
                }
            })
            .await;
            // The run is over: no more signs, so shipping finishes what has landed.
            drop(watcher);
            drop(signs);
            report
        };
        let run_started = Instant::now();
        let (report, shipped) = tokio::join!(driving, shipping);
        stored.extend(shipped.frames);
        let report = report.map_err(|e| Failed::machine(pb::ErrorCode::AeUnavailable, e.to_string()))?;
        out.result.exit_code = report.exit_code;
        out.result.log_tail = report.log_tail.clone();
        // The protocol's limits: at most 100 warnings of at most 1,000 characters.
        for warning in &report.verdict.warnings {
            if out.result.warnings.len() < 100 {
                out.result.warnings.push(warning.chars().take(1000).collect());
            }
        }
        // First: a frame that could not be stored canceled the run.
        if let Some(error) = shipped.error {
            out.timings.render_ms = rendering.elapsed().as_millis() as u64;
            return Err(Failed::machine(pb::ErrorCode::UploadFailed, error));
        }
        if let Some((code, message)) = &report.verdict.error {
            let kind = match code {
                ErrorCode::AeCrash => Some(pb::CrashKind::AeCrash),
                ErrorCode::NoOutputTimeout => Some(pb::CrashKind::AeHang),
                _ => None,
            };
            out.crashed = kind.map(|kind| Crash {
                kind,
                run_started,
                pid: Some(pid.load(std::sync::atomic::Ordering::Relaxed)).filter(|p| *p != 0),
                ae_version: report.status.version.clone().unwrap_or_else(|| spec.ae_version.clone()),
                process_name: aerender.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                exit_code: report.exit_code,
                signal: report.signal,
                message: message.clone(),
                log_tail: report.log_tail.clone(),
            });
            out.timings.render_ms = rendering.elapsed().as_millis() as u64;
            // Stopped from outside: handed back on shutdown, canceled otherwise.
            if let (Outcome::Canceled, Some(reason)) = (report.verdict.outcome, stop.reason()) {
                return Err(Failed::stopped(reason));
            }
            let outcome = report::outcome(report.verdict.outcome);
            let error = pb::RenderError {
                error_class: report::class(report.verdict.outcome) as i32,
                code: report::code(*code) as i32,
                message: truncated(message, MAX_MESSAGE_BYTES),
            };
            return Err(Failed { outcome, error });
        }
        rendered.extend(report.frames);
    }
    out.timings.render_ms = rendering.elapsed().as_millis() as u64;

    // Outputs.
    ctx.phase(pb::TaskPhase::Uploading, "uploading");
    let uploading = Instant::now();
    let kind = pb::TaskKind::try_from(ctx.kind).unwrap_or_default();
    if output.upload_frames {
        let rest: Vec<&RenderedFrame> = rendered.iter().filter(|f| !stored.contains_key(&f.frame)).collect();
        let uploading = upload_frames(resources, ctx, spec.segment_index, &rest, frame_size);
        stored.extend(unless_stopped(&stop, uploading).await?);
        out.result.frames = stored.into_values().collect();
    } else if kind == pb::TaskKind::Snapshot {
        let frame =
            rendered.first().ok_or_else(|| Failed::machine(pb::ErrorCode::FramesInvalid, "no frame rendered"))?;
        let uploading = upload(resources, ctx, agent_pb::ObjectKind::SnapshotImage, -1, &frame.path);
        let stored = unless_stopped(&stop, uploading).await?;
        out.result.outputs.push(agent_pb::TaskOutput {
            kind: agent_pb::ObjectKind::SnapshotImage as i32,
            file_id: stored.file_id,
            sha256: stored.sha256,
            size_bytes: stored.size_bytes,
            content_type: content_type(&frame.path).into(),
            media: None,
        });
    }
    out.timings.upload_ms = uploading.elapsed().as_millis() as u64;
    out.result.outcome = pb::TaskOutcome::Success as i32;
    Ok(())
}

/// Fetches every media file of the task into `<work>/media/`, by file id.
async fn fetch_media(
    resources: &Resources,
    ctx: &TaskContext,
    assets: &[agent_pb::ObjectRef],
    work_dir: &Path,
) -> Result<HashMap<String, PathBuf>, Failed> {
    let mut media = HashMap::new();
    if assets.is_empty() {
        return Ok(media);
    }
    let dir = work_dir.join("media");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Failed::machine(pb::ErrorCode::DiskFull, format!("the media directory: {e}")))?;
    for asset in assets {
        // The file id is a UUID; anything else cannot name a file safely.
        if asset.file_id.is_empty() || !asset.file_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Failed::template(
                pb::ErrorCode::FileNotFound,
                format!("bad media file id {:?}", asset.file_id),
            ));
        }
        let path = dir.join(format!("{}{}", asset.file_id, extension_for(&asset.content_type)));
        resources
            .transfers
            .download_to(&ctx.lease(), &Object::File(asset.file_id.clone()), &path, Some(&asset.sha256))
            .await
            .map_err(|e| Failed::machine(pb::ErrorCode::DownloadFailed, e.to_string()))?;
        media.insert(asset.file_id.clone(), path);
    }
    Ok(media)
}

/// After Effects picks the importer by extension.
fn extension_for(content_type: &str) -> &'static str {
    match content_type {
        "image/png" => ".png",
        "image/jpeg" => ".jpg",
        "image/webp" => ".webp",
        "video/mp4" => ".mp4",
        "video/quicktime" => ".mov",
        "audio/mpeg" => ".mp3",
        "audio/wav" | "audio/x-wav" => ".wav",
        _ => "",
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "image/png",
    }
}

/// The project inside the unpacked template: the path the template names (relative, no `..`),
/// or the only project file at its root.
fn project_path(root: &Path, named: &str) -> Result<PathBuf, Failed> {
    let bad = |why: String| Failed::template(pb::ErrorCode::ProjectOpenFailed, why);
    if !named.is_empty() {
        // Only plain names: no root, drive, `..` or `.` anywhere, on any platform.
        let plain = !named.contains(['\\', ':'])
            && named.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
        if !plain {
            return Err(bad(format!("the project path {named:?} is not a relative path inside the template")));
        }
        let path = root.join(named);
        return if path.is_file() { Ok(path) } else { Err(bad(format!("the template has no project {named:?}"))) };
    }
    let is_project = |name: &str| {
        let name = name.to_ascii_lowercase();
        name.ends_with(".aep") || name.ends_with(".aepx") || name.ends_with(".aepx.json")
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| bad(format!("the template cannot be read: {e}")))?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.path().is_file() && is_project(&entry.file_name().to_string_lossy()))
        .map(|entry| entry.path())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(bad("the template has no .aep or .aepx project at its root".into())),
        n => Err(bad(format!("the template has {n} projects at its root and names none"))),
    }
}

/// Uploads frames the run left that were not stored as they landed, reporting them in batches.
async fn upload_frames(
    resources: &Resources,
    ctx: &TaskContext,
    segment_index: i32,
    frames: &[&RenderedFrame],
    size: Option<(u32, u32)>,
) -> Result<Vec<(u32, agent_pb::FrameOutput)>, Failed> {
    const BATCH: usize = 32;
    let mut all = Vec::with_capacity(frames.len());
    let mut batch = Vec::new();
    for frame in frames {
        let output = store_frame(resources, ctx, frame.frame, &frame.path, size).await?;
        batch.push(output.clone());
        all.push((frame.frame, output));
        if batch.len() == BATCH {
            ctx.frames(segment_index, std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        ctx.frames(segment_index, batch);
    }
    Ok(all)
}

/// Uploads one verified frame.
async fn store_frame(
    resources: &Resources,
    ctx: &TaskContext,
    frame: u32,
    path: &Path,
    size: Option<(u32, u32)>,
) -> Result<agent_pb::FrameOutput, Failed> {
    let stored = upload(resources, ctx, agent_pb::ObjectKind::Frame, frame as i32, path).await?;
    Ok(agent_pb::FrameOutput {
        frame: frame as i32,
        status: agent_pb::FrameStatus::Ok as i32,
        file_id: stored.file_id,
        sha256: stored.sha256,
        size_bytes: stored.size_bytes,
        resolution: size.map(|(width, height)| flatrender_proto::flatrender::common::v1::Resolution { width, height }),
        render_ms: 0,
    })
}

pub(super) async fn upload(
    resources: &Resources,
    ctx: &TaskContext,
    kind: agent_pb::ObjectKind,
    frame: i32,
    path: &Path,
) -> Result<agent_pb::UploadObjectResponse, Failed> {
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let header = agent_pb::UploadHeader {
        task_id: ctx.task_id.clone(),
        lease_epoch: ctx.lease_epoch,
        kind: kind as i32,
        frame,
        file_name,
        content_type: content_type(path).into(),
        size_bytes: 0,
        sha256: String::new(),
    };
    resources
        .transfers
        .upload_file(header, path)
        .await
        .map_err(|e| Failed::machine(pb::ErrorCode::UploadFailed, e.to_string()))
}
