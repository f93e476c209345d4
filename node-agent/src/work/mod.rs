//! The work a node does for the orchestrator: each accepted task runs here, in the background,
//! and reports through the session (progress, frames, one result).

mod assemble;
mod bundles;
mod crash;
mod landing;
mod render;
mod report;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tokio::sync::mpsc;

pub use bundles::BundleSources;
pub use crash::DEFAULT_SETTLE as DEFAULT_CRASH_SETTLE;

use crate::assembly::Tools;
use crate::cache::Cache;
use crate::crash_watch::CrashWatch;
use crate::process::Limits;
use crate::session::tasks::{Executor, StopSignal, TaskEvent};
use crate::strays::Tracker;
use crate::transfer::{TaskLease, Transfers};

/// An After Effects installation (or the simulator standing in for one).
#[derive(Clone, Debug)]
pub struct AeInstall {
    pub version: String,
    pub aerender: PathBuf,
}

/// How work runs on this node.
#[derive(Clone, Debug)]
pub struct WorkConfig {
    /// Each task works in `<work_root>/<task>-<epoch>/`, removed when it ends.
    pub work_root: PathBuf,
    /// Newest first.
    pub installs: Vec<AeInstall>,
    /// Extra environment for aerender (the simulator's knobs, licensing variables).
    pub env: Vec<(OsString, OsString)>,
    /// Watchdog limits when the task sets none.
    pub default_limits: Limits,
    /// How long a task's downloads may take in total when its watchdog sets no limit.
    pub default_download_limit: Duration,
    /// The record of running renderers: what an earlier run left is killed before each task.
    pub tracker: Option<Arc<Tracker>>,
    /// The crash-report folders, watched; `None` sends crash reports without the reporter's file.
    pub crash_watch: Option<Arc<CrashWatch>>,
    /// How long a crash reporter gets to finish writing its report.
    pub crash_settle: Duration,
    /// ffmpeg and ffprobe when they run here: the node then takes assembly tasks.
    pub tools: Option<Tools>,
}

impl WorkConfig {
    /// The aerender of the install the task asks for; the newest when it names none.
    fn aerender_for(&self, version: &str) -> Option<PathBuf> {
        let install = if version.is_empty() {
            self.installs.first()
        } else {
            self.installs.iter().find(|i| i.version == version)
        };
        install.map(|i| i.aerender.clone())
    }

    /// The task's watchdog, filled in from the defaults.
    fn limits(&self, watchdog: Option<&agent_pb::Watchdog>) -> Limits {
        Limits {
            no_output: pick(watchdog.and_then(|w| w.no_output_timeout.as_ref()), self.default_limits.no_output),
            max_run: pick(watchdog.and_then(|w| w.max_render_time.as_ref()), self.default_limits.max_run),
        }
    }

    /// How long the task's downloads may take in total (`Watchdog.max_download_time`).
    fn download_limit(&self, watchdog: Option<&agent_pb::Watchdog>) -> Duration {
        pick(watchdog.and_then(|w| w.max_download_time.as_ref()), self.default_download_limit)
    }
}

/// A watchdog duration the task set, else the node's default; zero or negative counts as unset,
/// and more than a week as a week (a deadline that far must not overflow the clock).
fn pick(set: Option<&prost_types::Duration>, default: Duration) -> Duration {
    const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);
    set.and_then(|d| Duration::try_from(*d).ok()).filter(|d| !d.is_zero()).unwrap_or(default).min(LONGEST)
}

/// What every task shares.
pub struct Resources {
    pub config: WorkConfig,
    pub transfers: Transfers,
    pub cache: Cache<BundleSources>,
    pub bundles: BundleSources,
}

/// Runs the tasks the session accepts.
pub struct Worker {
    resources: Arc<Resources>,
}

impl Worker {
    pub fn new(resources: Resources) -> Self {
        Self { resources: Arc::new(resources) }
    }
}

impl Executor for Worker {
    fn check(&self, task: &agent_pb::AssignTask) -> Result<(), (agent_pb::RejectReason, String)> {
        match &task.spec {
            Some(agent_pb::assign_task::Spec::Render(spec)) => {
                // The protocol's bound; more is a malformed task, not a reason to allocate.
                let frames: u64 = spec
                    .frames
                    .iter()
                    .map(|r| {
                        let span = i64::from(r.end) - i64::from(r.start);
                        u64::try_from(span).map_or(0, |n| n / u64::from(r.step.max(1).unsigned_abs()) + 1)
                    })
                    .sum();
                if frames > 10_000 || frames == 0 {
                    return Err((agent_pb::RejectReason::Malformed, format!("{frames} frames: 1..=10,000 expected")));
                }
                match self.resources.config.aerender_for(&spec.ae_version) {
                    Some(_) => Ok(()),
                    None => Err((
                        agent_pb::RejectReason::CapabilityMissing,
                        format!("After Effects {:?} is not installed here", spec.ae_version),
                    )),
                }
            }
            Some(agent_pb::assign_task::Spec::Assemble(spec)) => {
                if self.resources.config.tools.is_none() {
                    return Err((agent_pb::RejectReason::CapabilityMissing, "ffmpeg is not available here".into()));
                }
                if spec.segments.is_empty() || spec.segments.len() > 100 || spec.audio_tracks.len() > 32 {
                    return Err((agent_pb::RejectReason::Malformed, "1..=100 segments and 0..=32 audio tracks".into()));
                }
                crate::assembly::proto::supported(spec)
                    .map_err(|why| (agent_pb::RejectReason::CapabilityMissing, why))?;
                // The rest of the spec is checked now, not after every frame is fetched.
                for segment in &spec.segments {
                    assemble::frame_numbers(segment).map_err(|why| (agent_pb::RejectReason::Malformed, why))?;
                }
                let placeholders = crate::assembly::proto::Inputs {
                    frames: vec![Vec::new(); spec.segments.len()],
                    audio: vec![PathBuf::new(); spec.audio_tracks.len()],
                    watermark_image: Some(PathBuf::new()),
                };
                crate::assembly::proto::assembly(spec, placeholders, PathBuf::from("check.mp4"))
                    .map(|_| ())
                    .map_err(|why| (agent_pb::RejectReason::Malformed, why))
            }
            None => Err((agent_pb::RejectReason::Malformed, "the task has no specification".into())),
        }
    }

    fn start(&self, task: agent_pb::AssignTask, events: mpsc::UnboundedSender<TaskEvent>, stop: StopSignal) {
        let resources = Arc::clone(&self.resources);
        tokio::spawn(async move {
            match task.spec.clone() {
                Some(agent_pb::assign_task::Spec::Render(spec)) => {
                    render::run(&resources, task, spec, events, stop).await;
                }
                Some(agent_pb::assign_task::Spec::Assemble(spec)) => {
                    assemble::run(&resources, task, spec, events, stop).await;
                }
                _ => {
                    let result = agent_pb::TaskResult {
                        task_id: task.task_id,
                        lease_epoch: task.lease_epoch,
                        outcome: pb::TaskOutcome::MachineError as i32,
                        error: Some(report::machine_error(
                            pb::ErrorCode::UnknownFailure,
                            "the task has no specification",
                        )),
                        ..agent_pb::TaskResult::default()
                    };
                    let _ = events.send(TaskEvent::Result(result));
                }
            }
        });
    }
}

/// One task's identity and its line back to the session.
pub(crate) struct TaskContext {
    task_id: String,
    lease_epoch: u64,
    kind: i32,
    events: mpsc::UnboundedSender<TaskEvent>,
}

impl TaskContext {
    fn new(task: &agent_pb::AssignTask, events: mpsc::UnboundedSender<TaskEvent>) -> Self {
        Self { task_id: task.task_id.clone(), lease_epoch: task.lease_epoch, kind: task.kind, events }
    }

    fn lease(&self) -> TaskLease {
        TaskLease { task_id: self.task_id.clone(), lease_epoch: self.lease_epoch }
    }

    fn update(&self, phase: pb::TaskPhase) -> agent_pb::TaskUpdate {
        agent_pb::TaskUpdate {
            task_id: self.task_id.clone(),
            lease_epoch: self.lease_epoch,
            phase: phase as i32,
            current_frame: -1,
            ..agent_pb::TaskUpdate::default()
        }
    }

    fn phase(&self, phase: pb::TaskPhase, detail: &str) {
        let update = agent_pb::TaskUpdate { detail: detail.into(), ..self.update(phase) };
        let _ = self.events.send(TaskEvent::Update(update));
    }

    /// Progress while rendering (the session coalesces to the protocol's rate).
    fn progress(&self, frames_done: u32, frames_total: u32, current_frame: i32) {
        let percent = if frames_total == 0 { 0.0 } else { 100.0 * f64::from(frames_done) / f64::from(frames_total) };
        let update = agent_pb::TaskUpdate {
            current_frame,
            frames_done,
            frames_total,
            percent: percent.min(100.0),
            ..self.update(pb::TaskPhase::Rendering)
        };
        let _ = self.events.send(TaskEvent::Update(update));
    }

    /// Progress while encoding (frames of the output).
    fn encoding(&self, frames_done: u32, frames_total: u32, percent: f64) {
        let update = agent_pb::TaskUpdate {
            frames_done,
            frames_total,
            percent: percent.clamp(0.0, 100.0),
            ..self.update(pb::TaskPhase::Encoding)
        };
        let _ = self.events.send(TaskEvent::Update(update));
    }

    fn frames(&self, segment_index: i32, frames: Vec<agent_pb::FrameOutput>) {
        let report = agent_pb::FrameReport {
            task_id: self.task_id.clone(),
            lease_epoch: self.lease_epoch,
            segment_index,
            frames,
        };
        let _ = self.events.send(TaskEvent::Frames(report));
    }
}

/// What every task shares from start to result: its work directory (`<work_root>/<task>-<epoch>/`,
/// removed at the end), the result's identity and times, and the one result event.
pub(crate) struct Attempt {
    started: std::time::Instant,
    work_dir: PathBuf,
    result: agent_pb::TaskResult,
}

impl Attempt {
    fn begin(resources: &Resources, task: &agent_pb::AssignTask) -> Self {
        Self {
            started: std::time::Instant::now(),
            work_dir: resources.config.work_root.join(format!("{}-{}", task.task_id, task.lease_epoch)),
            result: agent_pb::TaskResult {
                task_id: task.task_id.clone(),
                lease_epoch: task.lease_epoch,
                started_at: Some(std::time::SystemTime::now().into()),
                ..agent_pb::TaskResult::default()
            },
        }
    }

    /// Removes the work directory and sends the result with `timings` completed.
    async fn finish(self, mut timings: agent_pb::TaskTimings, events: &mpsc::UnboundedSender<TaskEvent>) {
        let Self { started, work_dir, mut result } = self;
        timings.total_ms = started.elapsed().as_millis() as u64;
        result.timings = Some(timings);
        result.finished_at = Some(std::time::SystemTime::now().into());
        if let Err(error) = tokio::fs::remove_dir_all(&work_dir).await
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %work_dir.display(), %error, "could not remove a task's work directory");
        }
        let _ = events.send(TaskEvent::Result(result));
    }
}
