//! The agent's verdicts in the protocol's words: outcomes, error classes and codes.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::aerender::outcome::{ErrorCode, Outcome};

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
