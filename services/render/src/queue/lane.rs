//! The queue's lanes (`frame_jobs.lane`) and task states (`frame_jobs.state`) as the database
//! spells them.

use flatrender_proto::flatrender::render::v1 as pb;

/// A lane of the queue: what kind of task a `frame_jobs` row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// One frame of a snapshot.
    Snapshot,
    /// A chunk of a render job.
    Render,
    /// A re-render of bad frames of a chunk.
    Repair,
    /// The final encode of a job.
    Assemble,
    /// A test render of a quarantined node.
    Probe,
}

impl Lane {
    /// The column value.
    pub fn as_db(self) -> &'static str {
        match self {
            Self::Snapshot => "snapshot",
            Self::Render => "render",
            Self::Repair => "repair",
            Self::Assemble => "assemble",
            Self::Probe => "probe",
        }
    }

    /// The lane of a column value.
    pub fn from_db(text: &str) -> Option<Self> {
        [Self::Snapshot, Self::Render, Self::Repair, Self::Assemble, Self::Probe]
            .into_iter()
            .find(|l| l.as_db() == text)
    }

    /// The agent protocol's task kind.
    pub fn task_kind(self) -> pb::TaskKind {
        match self {
            Self::Snapshot => pb::TaskKind::Snapshot,
            Self::Render => pb::TaskKind::RenderChunk,
            Self::Repair => pb::TaskKind::FrameRepair,
            Self::Assemble => pb::TaskKind::Assemble,
            Self::Probe => pb::TaskKind::Probe,
        }
    }
}

/// `frame_job_attempts.outcome` of a protocol outcome.
pub fn outcome_db(outcome: pb::TaskOutcome) -> Option<&'static str> {
    Some(match outcome {
        pb::TaskOutcome::Unspecified => return None,
        pb::TaskOutcome::Success => "success",
        pb::TaskOutcome::TemplateError => "template_error",
        pb::TaskOutcome::MachineError => "machine_error",
        pb::TaskOutcome::Timeout => "timeout",
        pb::TaskOutcome::Canceled => "canceled",
        pb::TaskOutcome::HandedBack => "handed_back",
        pb::TaskOutcome::LeaseLost => "lease_lost",
        pb::TaskOutcome::Rejected => "rejected",
    })
}

/// `frame_jobs.phase` of a protocol phase.
pub fn phase_db(phase: pb::TaskPhase) -> Option<&'static str> {
    Some(match phase {
        pb::TaskPhase::Unspecified => return None,
        pb::TaskPhase::Accepted => "accepted",
        pb::TaskPhase::Preparing => "preparing",
        pb::TaskPhase::Downloading => "downloading",
        pb::TaskPhase::Rendering => "rendering",
        pb::TaskPhase::Encoding => "encoding",
        pb::TaskPhase::Verifying => "verifying",
        pb::TaskPhase::Uploading => "uploading",
    })
}

/// An error class as the columns spell it; `None` for UNSPECIFIED.
pub fn error_class_db(class: pb::ErrorClass) -> Option<&'static str> {
    Some(match class {
        pb::ErrorClass::Unspecified => return None,
        pb::ErrorClass::Template => "template",
        pb::ErrorClass::Machine => "machine",
        pb::ErrorClass::Timeout => "timeout",
        pb::ErrorClass::Canceled => "canceled",
        pb::ErrorClass::Quota => "quota",
        pb::ErrorClass::Lost => "lost",
        pb::ErrorClass::Internal => "internal",
    })
}

/// An error class from its column value.
pub fn error_class_from_db(text: &str) -> pb::ErrorClass {
    pb::ErrorClass::from_str_name(&format!("ERROR_CLASS_{}", text.to_uppercase())).unwrap_or_default()
}

/// An error code as the columns spell it (`ERROR_CODE_COMP_NOT_FOUND` → `comp_not_found`);
/// `None` for UNSPECIFIED.
pub fn error_code_db(code: pb::ErrorCode) -> Option<String> {
    match code {
        pb::ErrorCode::Unspecified => None,
        code => code.as_str_name().strip_prefix("ERROR_CODE_").map(str::to_lowercase),
    }
}

/// An error code from its column value.
pub fn error_code_from_db(text: &str) -> pb::ErrorCode {
    pb::ErrorCode::from_str_name(&format!("ERROR_CODE_{}", text.to_uppercase())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for lane in [Lane::Snapshot, Lane::Render, Lane::Repair, Lane::Assemble, Lane::Probe] {
            assert_eq!(Lane::from_db(lane.as_db()), Some(lane));
        }
        assert_eq!(Lane::from_db("other"), None);
        assert_eq!(error_code_db(pb::ErrorCode::CompNotFound).as_deref(), Some("comp_not_found"));
        assert_eq!(error_code_from_db("comp_not_found"), pb::ErrorCode::CompNotFound);
        assert_eq!(error_code_db(pb::ErrorCode::Unspecified), None);
        assert_eq!(error_class_from_db(error_class_db(pb::ErrorClass::Machine).unwrap()), pb::ErrorClass::Machine);
        assert_eq!(outcome_db(pb::TaskOutcome::HandedBack), Some("handed_back"));
        assert_eq!(phase_db(pb::TaskPhase::Rendering), Some("rendering"));
    }
}
