//! The orchestrator's settings, with the defaults a fresh installation runs on.

use std::time::Duration;

use crate::files::FileServiceSettings;
use crate::plans::PlanLimits;

/// How the orchestrator behaves. Timings follow the agent protocol's defaults
/// (`proto/flatrender/agent/v1/agent_service.proto`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// This replica's name (`nodes.orchestrator_id`, `render.orchestrators.id`); unique per
    /// process.
    pub orchestrator_id: String,
    /// How often agents send Health (`Welcome.heartbeat_interval`).
    pub heartbeat_interval: Duration,
    /// How long a lease lasts past its last renewal (`Welcome.lease_ttl`).
    pub lease_ttl: Duration,
    /// How long a node's tasks survive its stream dropping (`Welcome.reconnect_grace`).
    pub reconnect_grace: Duration,
    /// How long a new stream may take to send Hello.
    pub hello_timeout: Duration,
    /// The largest envelope an agent may send (`Welcome.max_message_bytes`).
    pub max_message_bytes: u32,
    /// Frames per chunk when a job does not say otherwise.
    pub chunk_size_frames: u32,
    /// Attempts per task before it (and its job) fails.
    pub max_attempts: u32,
    /// Crashes within `quarantine_window` that quarantine a node.
    pub quarantine_crashes: u32,
    /// The window crashes are counted in.
    pub quarantine_window: Duration,
    /// At most one `node_health_logs` row per node per this interval (downsampling).
    pub health_log_interval: Duration,
    /// How often the samples due are written, all nodes of the replica in one statement.
    pub health_flush_interval: Duration,
    /// How often this replica refreshes its `render.orchestrators` row (and looks for dead
    /// replicas).
    pub replica_heartbeat_interval: Duration,
    /// How often the dispatcher looks for queued work without being woken (a backstop for
    /// missed notifications).
    pub dispatch_poll_interval: Duration,
    /// Enrol attempts per client address per minute (more are `RESOURCE_EXHAUSTED`).
    pub enroll_attempts_per_minute: u32,
    /// How long a job may have a task no enrolled, non-quarantined node can take (After Effects
    /// version, tags, RAM, GPU, ffmpeg) before it fails with NO_ELIGIBLE_NODE
    /// ([`crate::queue::unplaceable`]); waiting for busy nodes able to take it never fails.
    pub no_eligible_node_timeout: Duration,
    /// Probe renders of nodes quarantined for crashes ([`crate::queue::probes`]).
    pub probes: ProbeSettings,
    /// The mark burnt into the exports of plans with a watermark.
    pub watermark: WatermarkSettings,
    /// The customer API's settings (`RenderService`).
    pub api: ApiSettings,
}

/// The watermark of exports whose plan has one (`render_jobs.watermark`): an image when one is
/// configured and its facts are known, else the text, so a watermarked plan never gets an
/// export without a mark.
#[derive(Clone, Debug, PartialEq)]
pub struct WatermarkSettings {
    /// The text mark: 1..=100 characters (agent.v1 `Watermark.text`).
    pub text: String,
    /// A PNG with alpha: an active platform file of the default tenant.
    pub image_file_id: Option<uuid::Uuid>,
    /// Where the mark sits.
    pub position: WatermarkPosition,
    /// 0.05..=1.0.
    pub opacity: f64,
}

impl WatermarkSettings {
    /// The image's file id as configured (a UUID, surrounding blanks ignored).
    pub fn image_id(file_id: &str) -> Option<uuid::Uuid> {
        uuid::Uuid::try_parse(file_id.trim()).ok()
    }
}

impl Default for WatermarkSettings {
    fn default() -> Self {
        Self { text: "FlatRender".into(), image_file_id: None, position: WatermarkPosition::BottomRight, opacity: 0.5 }
    }
}

/// Where a watermark sits in the video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatermarkPosition {
    /// Top left corner.
    TopLeft,
    /// Top right corner.
    TopRight,
    /// Bottom left corner.
    BottomLeft,
    /// Bottom right corner.
    BottomRight,
    /// Centred.
    Center,
}

impl WatermarkPosition {
    /// Every position with its name in configuration.
    pub const NAMES: [(&'static str, Self); 5] = [
        ("top-left", Self::TopLeft),
        ("top-right", Self::TopRight),
        ("bottom-left", Self::BottomLeft),
        ("bottom-right", Self::BottomRight),
        ("center", Self::Center),
    ];

    /// The position named `name` (`top-left`, ..., `center`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }
}

/// Probe renders: a node quarantined automatically proves itself healthy with a small
/// known-good render; success releases it.
#[derive(Clone, Debug)]
pub struct ProbeSettings {
    /// Whether probes are sent at all (off: only an operator's ReleaseNode ends a quarantine).
    pub enabled: bool,
    /// How long after its quarantine a node gets its first probe.
    pub after: Duration,
    /// The longest wait before the next probe after failed ones (the wait doubles per failure).
    pub max_backoff: Duration,
    /// What a probe renders; `None`: no probes are sent.
    pub template: Option<ProbeTemplate>,
}

impl Default for ProbeSettings {
    fn default() -> Self {
        Self { enabled: true, after: Duration::from_secs(300), max_backoff: Duration::from_secs(3600), template: None }
    }
}

impl ProbeSettings {
    /// How long to wait before the next probe of a node whose probes failed `failures` times:
    /// `after` before the first, doubling per failure, at most `max_backoff` (and never less
    /// than `after`).
    pub fn wait(&self, failures: u32) -> Duration {
        let doubled = self.after.saturating_mul(1u32 << failures.min(20));
        doubled.min(self.max_backoff).max(self.after)
    }

    /// How often the scheduler looks for nodes due a probe: a quarter of `after`, between 50 ms
    /// and 30 s.
    pub fn check_interval(&self) -> Duration {
        (self.after / 4).clamp(Duration::from_millis(50), Duration::from_secs(30))
    }
}

/// The render a probe does: one frame of one composition of a template bundle in the file
/// service (a platform file of the default tenant).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTemplate {
    /// The template bundle (zip) file.
    pub file_id: uuid::Uuid,
    /// The composition to render.
    pub composition: String,
    /// The frame to render.
    pub frame: i32,
}

impl ProbeTemplate {
    /// The template of file `file_id` (its UUID text); `None` when that is no UUID.
    pub fn new(file_id: &str, composition: &str, frame: i32) -> Option<Self> {
        let file_id = uuid::Uuid::try_parse(file_id.trim()).ok()?;
        Some(Self { file_id, composition: composition.to_owned(), frame })
    }
}

/// What the customer API (`RenderService`) needs beside the protocol timings.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Where the file service is (file checks at submit, and of the images and videos agents
    /// deliver); without it, calls that need it answer `UNAVAILABLE` and deliveries are machine
    /// errors.
    pub file_service: Option<FileServiceSettings>,
    /// The limits of a caller with neither a plan of their own nor one of their tenant: the
    /// seeded `free` plan.
    pub default_plan: PlanLimits,
    /// Output size (width, height) of a job whose request sets none, fitted into the plan's cap
    /// (the template's composition size is not known to the orchestrator yet).
    pub default_output_size: (u32, u32),
    /// Output frame rate of a job whose request sets none, capped by the plan.
    pub default_output_fps: f64,
    /// Image size (width, height) of a snapshot whose request sets none.
    pub default_snapshot_size: (u32, u32),
    /// How long a snapshot image is kept after its last cache hit.
    pub snapshot_retention: Duration,
    /// How often expired exports and snapshots are marked ([`crate::retention`]).
    pub retention_sweep_interval: Duration,
    /// Rows of each kind marked per transaction of that sweep.
    pub retention_batch: u32,
    /// WatchRender / WatchSnapshot: at most one message per this interval.
    pub watch_min_interval: Duration,
    /// WatchRender / WatchSnapshot: a message at least this often, changed or not.
    pub watch_keepalive: Duration,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            file_service: None,
            default_plan: PlanLimits::free(),
            default_output_size: (1920, 1080),
            default_output_fps: 30.0,
            default_snapshot_size: (1920, 1080),
            snapshot_retention: Duration::from_secs(7 * 24 * 3600),
            retention_sweep_interval: Duration::from_secs(60),
            retention_batch: 500,
            watch_min_interval: Duration::from_millis(250),
            watch_keepalive: Duration::from_secs(15),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            orchestrator_id: format!("render-{}", uuid::Uuid::new_v4().simple()),
            heartbeat_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(15),
            reconnect_grace: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            max_message_bytes: 4 * 1024 * 1024,
            chunk_size_frames: 10,
            max_attempts: 3,
            quarantine_crashes: 3,
            quarantine_window: Duration::from_secs(600),
            health_log_interval: Duration::from_secs(120),
            health_flush_interval: Duration::from_secs(5),
            replica_heartbeat_interval: Duration::from_secs(2),
            dispatch_poll_interval: Duration::from_secs(1),
            enroll_attempts_per_minute: 10,
            no_eligible_node_timeout: Duration::from_secs(30 * 60),
            probes: ProbeSettings::default(),
            watermark: WatermarkSettings::default(),
            api: ApiSettings::default(),
        }
    }
}

impl Settings {
    /// Heartbeats an agent may miss before its tasks go back to the queue.
    pub const MISSED_HEARTBEATS: u32 = 3;

    /// How long without Health before a connected node counts as gone.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval * Self::MISSED_HEARTBEATS
    }

    /// How long a replica's `render.orchestrators` row may go without a refresh before other
    /// replicas treat it as dead: the reconnect grace, and never less than three refreshes.
    pub fn replica_dead_after(&self) -> Duration {
        self.reconnect_grace.max(self.replica_heartbeat_interval * 3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_protocol() {
        let s = Settings::default();
        assert_eq!(s.lease_ttl, s.heartbeat_interval * 3);
        assert_eq!(s.heartbeat_deadline(), Duration::from_secs(15));
        assert!(s.reconnect_grace < s.lease_ttl);
        assert_eq!(s.replica_dead_after(), s.reconnect_grace);
        let fast = Settings { reconnect_grace: Duration::from_millis(100), ..Settings::default() };
        assert_eq!(fast.replica_dead_after(), fast.replica_heartbeat_interval * 3);
        assert_ne!(Settings::default().orchestrator_id, s.orchestrator_id);
    }

    #[test]
    fn probe_waits_double_up_to_the_cap() {
        let probes = ProbeSettings::default();
        assert_eq!(probes.wait(0), Duration::from_secs(300));
        assert_eq!(probes.wait(1), Duration::from_secs(600));
        assert_eq!(probes.wait(3), Duration::from_secs(2400));
        assert_eq!(probes.wait(4), Duration::from_secs(3600));
        assert_eq!(probes.wait(u32::MAX), Duration::from_secs(3600));
        let capped_low = ProbeSettings { max_backoff: Duration::from_secs(1), ..ProbeSettings::default() };
        assert_eq!(capped_low.wait(2), capped_low.after, "never sooner than the first");
        assert_eq!(probes.check_interval(), Duration::from_secs(30));
    }
}
