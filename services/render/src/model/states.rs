//! The lifecycles and task vocabulary of render_job.proto, as stored (lower-case text, the CHECK
//! lists of `migrations/12_render_jobs.sql`) and as sent (protobuf enums).

use crate::model::db_enum::db_enum;

db_enum! {
    /// The lifecycle of a render job (`render_jobs.state`).
    pub enum JobState: JobState {
        /// Accepted, waiting for the scheduler.
        Queued = "queued" => Queued,
        /// Checking the template and splitting segments into chunks.
        Preparing = "preparing" => Preparing,
        /// At least one chunk went to a node.
        Rendering = "rendering" => Rendering,
        /// Every chunk is done; one node assembles the export.
        Assembling = "assembling" => Assembling,
        /// The export exists. Terminal.
        Completed = "completed" => Completed,
        /// Stopped by an error or an operator. Terminal.
        Failed = "failed" => Failed,
        /// Stopped by the customer or the system. Terminal.
        Canceled = "canceled" => Canceled,
    }
}

impl JobState {
    /// COMPLETED, FAILED and CANCELED (`render_jobs.finished_at` is set exactly for these).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

db_enum! {
    /// The lifecycle of a task (`frame_jobs.state`) and of a repair (`frame_repair_jobs.state`,
    /// never LEASED).
    pub enum ChunkState: ChunkState {
        /// Waiting to be claimed.
        Queued = "queued" => Queued,
        /// Claimed and sent to a node under a lease, not yet accepted.
        Leased = "leased" => Leased,
        /// The agent accepted it.
        Running = "running" => Running,
        /// Every frame is uploaded and verified. Terminal.
        Done = "done" => Done,
        /// Failed for good. Terminal.
        Failed = "failed" => Failed,
        /// Its job ended first. Terminal.
        Canceled = "canceled" => Canceled,
    }
}

impl ChunkState {
    /// DONE, FAILED and CANCELED (`finished_at` / `resolved_at` is set exactly for these).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Canceled)
    }

    /// LEASED and RUNNING: a node holds the task under a lease.
    pub fn is_leased(self) -> bool {
        matches!(self, Self::Leased | Self::Running)
    }
}

db_enum! {
    /// The lifecycle of a snapshot (`snapshots.state`).
    pub enum SnapshotState: SnapshotState {
        /// Waiting in the snapshot lane.
        Queued = "queued" => Queued,
        /// A node renders it.
        Rendering = "rendering" => Rendering,
        /// The image exists. Terminal.
        Ready = "ready" => Ready,
        /// Rendering failed. Terminal.
        Failed = "failed" => Failed,
    }
}

impl SnapshotState {
    /// READY and FAILED.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Ready | Self::Failed)
    }
}

db_enum! {
    /// What kind of work a task is (sent to agents; stored as its [`Lane`]).
    pub enum TaskKind: TaskKind {
        /// A chunk of a render job.
        RenderChunk = "render_chunk" => RenderChunk,
        /// One frame as a still.
        Snapshot = "snapshot" => Snapshot,
        /// Re-render of missing or corrupt frames of a chunk.
        FrameRepair = "frame_repair" => FrameRepair,
        /// Concatenate, mix, watermark and encode the export.
        Assemble = "assemble" => Assemble,
        /// A known render that proves a quarantined node healthy.
        Probe = "probe" => Probe,
    }
}

impl TaskKind {
    /// The queue lane of this kind.
    pub fn lane(self) -> Lane {
        match self {
            Self::RenderChunk => Lane::Render,
            Self::Snapshot => Lane::Snapshot,
            Self::FrameRepair => Lane::Repair,
            Self::Assemble => Lane::Assemble,
            Self::Probe => Lane::Probe,
        }
    }
}

/// The queue lane of a task (`frame_jobs.lane`), one per [`TaskKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// Snapshots (a person is waiting).
    Snapshot,
    /// Render chunks.
    Render,
    /// Frame repairs.
    Repair,
    /// Assembly.
    Assemble,
    /// Node health probes.
    Probe,
}

impl Lane {
    /// Every lane.
    pub const ALL: &'static [Self] = &[Self::Snapshot, Self::Render, Self::Repair, Self::Assemble, Self::Probe];

    /// The database text.
    pub fn as_db(&self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Render => "render",
            Self::Repair => "repair",
            Self::Assemble => "assemble",
            Self::Probe => "probe",
        }
    }

    /// The lane stored as `text`.
    pub fn from_db(text: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|lane| lane.as_db() == text)
    }

    /// The task kind of this lane.
    pub fn kind(self) -> TaskKind {
        match self {
            Self::Snapshot => TaskKind::Snapshot,
            Self::Render => TaskKind::RenderChunk,
            Self::Repair => TaskKind::FrameRepair,
            Self::Assemble => TaskKind::Assemble,
            Self::Probe => TaskKind::Probe,
        }
    }

    /// Dispatch order, as the generated `frame_jobs.lane_rank` computes it (lower first).
    pub fn rank(self) -> i16 {
        match self {
            Self::Snapshot | Self::Probe => 0,
            Self::Repair => 1,
            Self::Assemble => 2,
            Self::Render => 3,
        }
    }
}

impl From<TaskKind> for Lane {
    fn from(kind: TaskKind) -> Self {
        kind.lane()
    }
}

impl From<Lane> for TaskKind {
    fn from(lane: Lane) -> Self {
        lane.kind()
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_db())
    }
}

db_enum! {
    /// Where a task is on its node (agent `TaskUpdate.phase`; not stored, the text is for logs).
    pub enum TaskPhase: TaskPhase {
        /// Taken into a slot.
        Accepted = "accepted" => Accepted,
        /// Cleaning up, writing the injection script, checking disk.
        Preparing = "preparing" => Preparing,
        /// Fetching the bundle, assets, audio or frames.
        Downloading = "downloading" => Downloading,
        /// aerender runs.
        Rendering = "rendering" => Rendering,
        /// ffmpeg runs (assembly).
        Encoding = "encoding" => Encoding,
        /// Checking the output.
        Verifying = "verifying" => Verifying,
        /// Uploading the rest.
        Uploading = "uploading" => Uploading,
    }
}

db_enum! {
    /// How one attempt of a task ended (`frame_job_attempts.outcome`).
    pub enum TaskOutcome: TaskOutcome {
        /// Produced, uploaded and verified.
        Success = "success" => Success,
        /// The template, data or an input is at fault: the job fails, no retry.
        TemplateError = "template_error" => TemplateError,
        /// The machine is at fault: retried elsewhere, counts against the node.
        MachineError = "machine_error" => MachineError,
        /// The maximum render time passed: retried.
        Timeout = "timeout" => Timeout,
        /// Stopped by CancelTask.
        Canceled = "canceled" => Canceled,
        /// Returned unfinished (shutdown, drain): requeued, no attempt used.
        HandedBack = "handed_back" => HandedBack,
        /// Orchestrator only: the lease lapsed; uses an attempt.
        LeaseLost = "lease_lost" => LeaseLost,
        /// Orchestrator only: the agent refused the assignment; no attempt used.
        Rejected = "rejected" => Rejected,
    }
}

impl TaskOutcome {
    /// Whether an agent may report this outcome (LEASE_LOST and REJECTED are the
    /// orchestrator's own).
    pub fn sent_by_agents(self) -> bool {
        !matches!(self, Self::LeaseLost | Self::Rejected)
    }

    /// Whether the attempt counts toward `max_attempts` (HANDED_BACK and REJECTED give the
    /// claim's increment back).
    pub fn uses_attempt(self) -> bool {
        !matches!(self, Self::HandedBack | Self::Rejected)
    }
}

db_enum! {
    /// Why frames are repaired (`frame_repair_jobs.reason`).
    pub enum RepairReason: RepairReason {
        /// The frame file was not produced.
        Missing = "missing" => Missing,
        /// It does not decode.
        Corrupt = "corrupt" => Corrupt,
        /// The stored bytes differ from the reported digest.
        ChecksumMismatch = "checksum_mismatch" => ChecksumMismatch,
        /// Wrong pixel size.
        WrongSize = "wrong_size" => WrongSize,
    }
}

db_enum! {
    /// Whether an export can be downloaded (`exports.state`).
    pub enum ExportState: ExportState {
        /// The file exists.
        Available = "available" => Available,
        /// Retention ran out.
        Expired = "expired" => Expired,
        /// Deleted by the customer.
        Deleted = "deleted" => Deleted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::db_enum::assert_matches_pb;
    use crate::model::testing::{MIGRATION, check_values};

    fn db<T: Copy>(all: &[T], as_db: impl Fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|&v| as_db(v).to_owned()).collect()
    }

    #[test]
    fn enums_match_their_protobuf_twins() {
        assert_matches_pb!(JobState, JobState, "JOB_STATE_");
        assert_matches_pb!(ChunkState, ChunkState, "CHUNK_STATE_");
        assert_matches_pb!(SnapshotState, SnapshotState, "SNAPSHOT_STATE_");
        assert_matches_pb!(TaskKind, TaskKind, "TASK_KIND_");
        assert_matches_pb!(TaskPhase, TaskPhase, "TASK_PHASE_");
        assert_matches_pb!(TaskOutcome, TaskOutcome, "TASK_OUTCOME_");
        assert_matches_pb!(RepairReason, RepairReason, "REPAIR_REASON_");
        assert_matches_pb!(ExportState, ExportState, "EXPORT_STATE_");
    }

    #[test]
    fn database_texts_are_exactly_the_check_lists() {
        assert_eq!(db(JobState::ALL, |v| v.as_db()), check_values("render_jobs_state_check"));
        assert_eq!(db(ChunkState::ALL, |v| v.as_db()), check_values("frame_jobs_state_check"));
        for repair_state in check_values("frame_repair_jobs_state_check") {
            assert!(ChunkState::from_db(&repair_state).is_some(), "{repair_state}");
        }
        assert_eq!(db(SnapshotState::ALL, |v| v.as_db()), check_values("snapshots_state_check"));
        assert_eq!(db(TaskOutcome::ALL, |v| v.as_db()), check_values("frame_job_attempts_outcome_check"));
        assert_eq!(db(RepairReason::ALL, |v| v.as_db()), check_values("frame_repair_jobs_reason_check"));
        assert_eq!(db(ExportState::ALL, |v| v.as_db()), check_values("exports_state_check"));
        let mut lanes = db(Lane::ALL, |v| v.as_db());
        let mut checked = check_values("frame_jobs_lane_check");
        lanes.sort();
        checked.sort();
        assert_eq!(lanes, checked);
    }

    #[test]
    fn terminal_states_match_the_finished_checks() {
        assert!(MIGRATION.contains("(state IN ('completed', 'failed', 'canceled')) = (finished_at IS NOT NULL)"));
        let terminal: Vec<_> = JobState::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.as_db()).collect();
        assert_eq!(terminal, ["completed", "failed", "canceled"]);
        assert!(MIGRATION.contains("(state IN ('done', 'failed', 'canceled')) = (finished_at IS NOT NULL)"));
        let terminal: Vec<_> = ChunkState::ALL.iter().filter(|s| s.is_terminal()).map(|s| s.as_db()).collect();
        assert_eq!(terminal, ["done", "failed", "canceled"]);
        let leased: Vec<_> = ChunkState::ALL.iter().filter(|s| s.is_leased()).map(|s| s.as_db()).collect();
        assert_eq!(leased, ["leased", "running"]);
        assert!(SnapshotState::Ready.is_terminal() && !SnapshotState::Rendering.is_terminal());
    }

    #[test]
    fn lanes_and_task_kinds_correspond() {
        for &kind in TaskKind::ALL {
            assert_eq!(TaskKind::from(Lane::from(kind)), kind);
        }
        for &lane in Lane::ALL {
            assert_eq!(Lane::from_db(lane.as_db()), Some(lane));
            assert_eq!(lane.kind().lane(), lane);
            assert_eq!(lane.to_string(), lane.as_db());
            // The generated column's CASE, e.g. "WHEN 'repair' THEN 1"; render is the ELSE.
            let rank = if lane == Lane::Render {
                assert!(MIGRATION.contains("ELSE 3 END"));
                3
            } else {
                let when = format!("WHEN '{}' THEN ", lane.as_db());
                let at = MIGRATION.find(&when).unwrap() + when.len();
                MIGRATION[at..at + 1].parse().unwrap()
            };
            assert_eq!(lane.rank(), rank, "{lane}");
        }
        assert_eq!(Lane::from_db("chunk"), None);
        assert_eq!(Lane::Render.kind(), TaskKind::RenderChunk);
        assert_eq!(TaskKind::FrameRepair.lane(), Lane::Repair);
    }

    #[test]
    fn outcomes_follow_the_protocol() {
        let orchestrator_only: Vec<_> = TaskOutcome::ALL.iter().filter(|o| !o.sent_by_agents()).collect();
        assert_eq!(orchestrator_only, [&TaskOutcome::LeaseLost, &TaskOutcome::Rejected]);
        let free: Vec<_> = TaskOutcome::ALL.iter().filter(|o| !o.uses_attempt()).collect();
        assert_eq!(free, [&TaskOutcome::HandedBack, &TaskOutcome::Rejected]);
    }
}
