//! The agent's verdicts in the protocol's words: outcomes, error classes and codes.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::aerender::outcome::{ErrorCode, Outcome};
use crate::session::tasks::{StopReason, StopSignal};

pub fn outcome(outcome: Outcome) -> pb::TaskOutcome {
    match outcome {
        Outcome::Success => pb::TaskOutcome::Success,
        Outcome::TemplateError => pb::TaskOutcome::TemplateError,
        Outcome::MachineError => pb::TaskOutcome::MachineError,
        Outcome::Timeout => pb::TaskOutcome::Timeout,
        Outcome::Canceled => pb::TaskOutcome::Canceled,
    }
}

pub fn class(outcome: Outcome) -> pb::ErrorClass {
    match outcome {
        Outcome::Success | Outcome::MachineError => pb::ErrorClass::Machine,
        Outcome::TemplateError => pb::ErrorClass::Template,
        Outcome::Timeout => pb::ErrorClass::Timeout,
        Outcome::Canceled => pb::ErrorClass::Canceled,
    }
}

pub fn code(code: ErrorCode) -> pb::ErrorCode {
    match code {
        ErrorCode::CompNotFound => pb::ErrorCode::CompNotFound,
        ErrorCode::AeTemplateNotFound => pb::ErrorCode::AeTemplateNotFound,
        ErrorCode::ProjectOpenFailed => pb::ErrorCode::ProjectOpenFailed,
        ErrorCode::MissingFont => pb::ErrorCode::MissingFont,
        ErrorCode::MissingFootage => pb::ErrorCode::MissingFootage,
        ErrorCode::ScriptError => pb::ErrorCode::ScriptError,
        ErrorCode::LayerNotFound => pb::ErrorCode::LayerNotFound,
        ErrorCode::PropertyNotFound => pb::ErrorCode::PropertyNotFound,
        ErrorCode::ValueRejected => pb::ErrorCode::ValueRejected,
        ErrorCode::AeCrash => pb::ErrorCode::AeCrash,
        ErrorCode::NoOutputTimeout => pb::ErrorCode::NoOutputTimeout,
        ErrorCode::OutputModuleFailed => pb::ErrorCode::OutputModuleFailed,
        ErrorCode::AnotherInstance => pb::ErrorCode::AnotherInstance,
        ErrorCode::InstantExit => pb::ErrorCode::InstantExit,
        ErrorCode::FramesInvalid => pb::ErrorCode::FramesInvalid,
        ErrorCode::MaxRenderTime => pb::ErrorCode::MaxRenderTime,
        ErrorCode::Canceled => pb::ErrorCode::Canceled,
        ErrorCode::UnknownFailure => pb::ErrorCode::UnknownFailure,
    }
}

/// A failure of the agent's own part (download, upload, disk) rather than of the render: the
/// machine is at fault and another node may succeed.
pub fn machine_error(code: pb::ErrorCode, message: impl Into<String>) -> pb::RenderError {
    pb::RenderError { error_class: pb::ErrorClass::Machine as i32, code: code as i32, message: message.into() }
}

/// The protocol's limit on an error message.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncated(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Why a task failed: the result's outcome (whether the node or the template is at fault) and error.
pub struct Failed {
    pub outcome: pb::TaskOutcome,
    pub error: pb::RenderError,
}

impl Failed {
    pub fn machine(code: pb::ErrorCode, message: impl Into<String>) -> Self {
        Self { outcome: pb::TaskOutcome::MachineError, error: machine_error(code, message) }
    }

    pub fn template(code: pb::ErrorCode, message: impl Into<String>) -> Self {
        let error = pb::RenderError {
            error_class: pb::ErrorClass::Template as i32,
            code: code as i32,
            message: message.into(),
        };
        Self { outcome: pb::TaskOutcome::TemplateError, error }
    }
}

impl Failed {
    /// A task told to stop before it was done: handed back when the agent shuts down (the work
    /// goes back to the queue without using an attempt), canceled otherwise (a lost lease's
    /// result is dropped, not sent).
    pub fn stopped(reason: StopReason) -> Self {
        let (outcome, message) = match reason {
            StopReason::Shutdown => (pb::TaskOutcome::HandedBack, "the agent is shutting down"),
            StopReason::Canceled => (pb::TaskOutcome::Canceled, "canceled by the orchestrator"),
            StopReason::LeaseExpired | StopReason::LeaseLost => (pb::TaskOutcome::Canceled, "the lease is gone"),
        };
        let error = pb::RenderError {
            error_class: pb::ErrorClass::Canceled as i32,
            code: pb::ErrorCode::Canceled as i32,
            message: message.into(),
        };
        Self { outcome, error }
    }
}

/// `downloads`, given up as DOWNLOAD_FAILED (a machine error: another node may fetch faster) when
/// they are not done by `deadline` (the task's `max_download_time` from when its downloads
/// began): a stalled transfer would otherwise wait for the transport's keepalive, which a slow
/// trickle never trips.
pub async fn downloads_until<T>(
    deadline: tokio::time::Instant,
    downloads: impl Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    tokio::time::timeout_at(deadline, downloads).await.unwrap_or_else(|_| {
        Err(Failed::machine(pb::ErrorCode::DownloadFailed, "the downloads ran past the task's download time limit"))
    })
}

/// `work`, unless the task is told to stop first (a download or an upload is dropped: its
/// partial file goes with the work directory, and the server discards an unfinished upload).
pub async fn unless_stopped<T>(stop: &StopSignal, work: impl Future<Output = Result<T, Failed>>) -> Result<T, Failed> {
    let mut stopper = stop.clone();
    tokio::select! {
        result = work => result,
        reason = stopper.stopped() => Err(Failed::stopped(reason)),
    }
}
