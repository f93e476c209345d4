//! Why an assembly failed.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("invalid assembly plan: {0}")]
    InvalidPlan(String),
    /// Checked before ffmpeg runs: ffmpeg would silently stop at the first gap.
    #[error("segment {segment} ({label}): frame {index} is missing or empty: {}", path.display())]
    MissingFrame { segment: usize, label: String, index: usize, path: PathBuf },
    #[error("audio source {} is missing", path.display())]
    MissingAudio { path: PathBuf },
    #[error("{tool} not found at {} (install ffmpeg or configure its path)", path.display())]
    ToolNotFound { tool: &'static str, path: PathBuf },
    #[error("{tool} failed (exit code {code:?}): {tail}")]
    ToolFailed { tool: &'static str, code: Option<i32>, tail: String },
    #[error("{tool} produced no output for {for_:?} and was killed")]
    Silent { tool: &'static str, for_: Duration },
    #[error("{tool} ran longer than {after:?} and was killed")]
    OverTime { tool: &'static str, after: Duration },
    #[error("assembly canceled")]
    Canceled,
    #[error("ffprobe output unreadable: {0}")]
    Probe(String),
    /// The encoded file is not what the plan asked for; it is deleted.
    #[error("output mismatch: {0}")]
    OutputMismatch(String),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl AssemblyError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }
}
