//! The verdict on one aerender run, from how the process ended, what its log said, and whether
//! its frames verified — the treatment table of `docs/aerender.md`:
//!
//! - template errors (comp, template or layer missing, script error, missing font, missing
//!   footage) fail the job with the message and are not retried;
//! - machine errors (crash, hang, output-module failure, another instance, instant exit, bad
//!   frames) are retried on another node;
//! - the maximum render time is a timeout, a cancel is a cancel.
//!
//! Template signals win over the exit code: aerender exits 0 after a missing-footage warning.

use super::driver::BadFrame;
use super::transcript::{RenderStatus, Signal};
use crate::process::Ending;

/// How a task ended, as the orchestrator counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    TemplateError,
    MachineError,
    Timeout,
    Canceled,
}

/// Why a run failed; the names of the render API's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    CompNotFound,
    AeTemplateNotFound,
    ProjectOpenFailed,
    MissingFont,
    MissingFootage,
    ScriptError,
    LayerNotFound,
    PropertyNotFound,
    ValueRejected,
    AeCrash,
    NoOutputTimeout,
    OutputModuleFailed,
    AnotherInstance,
    InstantExit,
    FramesInvalid,
    MaxRenderTime,
    Canceled,
    UnknownFailure,
}

/// The outcome, and for a failure its code and the best line to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub error: Option<(ErrorCode, String)>,
    /// Things worth telling even on success (e.g. a project that must be converted).
    pub warnings: Vec<String>,
}

impl Verdict {
    pub fn is_success(&self) -> bool {
        self.outcome == Outcome::Success
    }

    fn failed(outcome: Outcome, code: ErrorCode, message: impl Into<String>, warnings: Vec<String>) -> Self {
        Self { outcome, error: Some((code, message.into())), warnings }
    }
}

/// Whether the frames on disk can change the verdict (so are worth checking): the process
/// exited or hung after finishing, and the log shows no failure.
pub(super) fn frames_matter(ending: &Ending, status: &RenderStatus, allow_missing_footage: bool) -> bool {
    match ending {
        Ending::Exited(_) => status.log_shows_success(allow_missing_footage),
        Ending::Silent { .. } => status.finished_cleanly(allow_missing_footage),
        Ending::OverTime { .. } | Ending::Canceled => false,
    }
}

/// Decides the verdict. `bad_frame` is the first expected frame that did not verify, when the
/// frames were checked.
pub(super) fn decide(
    ending: &Ending,
    status: &RenderStatus,
    allow_missing_footage: bool,
    bad_frame: Option<BadFrame>,
) -> Verdict {
    let warnings = warnings(status);
    let silent_for = match ending {
        Ending::Canceled => return Verdict::failed(Outcome::Canceled, ErrorCode::Canceled, "canceled", warnings),
        Ending::OverTime { after } => {
            let message = format!("the render passed its maximum time of {} s and was stopped", after.as_secs());
            return Verdict::failed(Outcome::Timeout, ErrorCode::MaxRenderTime, message, warnings);
        }
        Ending::Silent { for_ } => Some(*for_),
        Ending::Exited(_) => None,
    };
    if let Some((outcome, code, message)) = from_signals(status, allow_missing_footage) {
        return Verdict::failed(outcome, code, message, warnings);
    }
    if let Some(for_) = silent_for {
        // A hang after `Finished composition` whose frames all verify is a finished render.
        if status.finished_cleanly(allow_missing_footage) && bad_frame.is_none() {
            let mut warnings = warnings;
            warnings
                .push(format!("aerender hung after finishing and was stopped after {} s of silence", for_.as_secs()));
            return Verdict { outcome: Outcome::Success, error: None, warnings };
        }
        let message = format!("aerender printed nothing for {} s and was stopped", for_.as_secs());
        return Verdict::failed(Outcome::MachineError, ErrorCode::NoOutputTimeout, message, warnings);
    }
    let Ending::Exited(exit) = ending else {
        // Every other ending has returned above.
        return Verdict::failed(Outcome::MachineError, ErrorCode::UnknownFailure, "unknown ending", warnings);
    };
    let Some(code) = exit.code() else {
        let message = format!("aerender crashed ({exit})");
        return Verdict::failed(Outcome::MachineError, ErrorCode::AeCrash, message, warnings);
    };
    let only_banner = !status.comp_started && status.first_error.is_none() && status.frames_reported == 0;
    if code != 0 {
        let (error_code, message) = if only_banner {
            (ErrorCode::InstantExit, format!("aerender exited with code {code} before rendering anything"))
        } else {
            let line = status.first_error.clone().unwrap_or_else(|| "no error line".into());
            (ErrorCode::UnknownFailure, format!("aerender exited with code {code}: {line}"))
        };
        return Verdict::failed(Outcome::MachineError, error_code, message, warnings);
    }
    if !status.log_shows_success(allow_missing_footage) {
        let (error_code, message) = if only_banner {
            (ErrorCode::InstantExit, "aerender exited without rendering anything".to_string())
        } else {
            (ErrorCode::UnknownFailure, "aerender exited 0 but its log shows no finished render".to_string())
        };
        return Verdict::failed(Outcome::MachineError, error_code, message, warnings);
    }
    if let Some(bad) = bad_frame {
        let message = format!("frame {}: {}", bad.frame, bad.problem);
        return Verdict::failed(Outcome::MachineError, ErrorCode::FramesInvalid, message, warnings);
    }
    Verdict { outcome: Outcome::Success, error: None, warnings }
}

/// The first failure signal of the log, classified.
fn from_signals(status: &RenderStatus, allow_missing_footage: bool) -> Option<(Outcome, ErrorCode, String)> {
    use Outcome::{MachineError, TemplateError};
    let line = |fallback: &str| status.first_error.clone().unwrap_or_else(|| fallback.to_string());
    status.signals.iter().find_map(|signal| match signal {
        Signal::CompNotFound => {
            Some((TemplateError, ErrorCode::CompNotFound, line("No comp was found with the given name.")))
        }
        Signal::TemplateNotFound => Some((TemplateError, ErrorCode::AeTemplateNotFound, line("template not found"))),
        Signal::ScriptError { script, message } => {
            let message = message.clone().unwrap_or_else(|| format!("error executing script {script}"));
            Some((TemplateError, script_error_code(&message), message))
        }
        Signal::AfterEffectsRuntimeError => {
            Some((TemplateError, ErrorCode::ScriptError, line("Runtime error in After Effects.")))
        }
        Signal::MissingFont { family, style } => {
            let style = style.as_deref().map(|s| format!(" {s}")).unwrap_or_default();
            Some((TemplateError, ErrorCode::MissingFont, format!("the font {family}{style} is not installed")))
        }
        Signal::MissingFootage { path } if !allow_missing_footage => {
            Some((TemplateError, ErrorCode::MissingFootage, format!("footage not found: {path}")))
        }
        Signal::OutputModuleFailed => Some((
            MachineError,
            ErrorCode::OutputModuleFailed,
            "an output module failed; the file may be damaged or corrupted".to_string(),
        )),
        Signal::AnotherInstance => Some((
            MachineError,
            ErrorCode::AnotherInstance,
            line("After Effects can not render for aerender: another instance is running"),
        )),
        Signal::RenderAborted => Some((MachineError, ErrorCode::UnknownFailure, "the render was aborted".to_string())),
        Signal::MissingFootage { .. } | Signal::ProjectNeedsConversion { .. } => None,
    })
}

/// The injection script names the failed edit and what went wrong (`inject_runtime.jsx`).
fn script_error_code(message: &str) -> ErrorCode {
    if message.contains("layer not found") {
        ErrorCode::LayerNotFound
    } else if message.contains("property not found") {
        ErrorCode::PropertyNotFound
    } else if message.contains("value rejected") {
        ErrorCode::ValueRejected
    } else {
        ErrorCode::ScriptError
    }
}

fn warnings(status: &RenderStatus) -> Vec<String> {
    status
        .signals
        .iter()
        .filter_map(|signal| match signal {
            Signal::ProjectNeedsConversion { from_version } => Some(match from_version {
                Some(version) => format!("the project must be converted from After Effects {version}"),
                None => "the project must be converted from an older After Effects".to_string(),
            }),
            _ => None,
        })
        .collect()
}
