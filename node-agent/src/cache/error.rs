//! What can go wrong in the template cache.

use std::io;
use std::path::PathBuf;

/// A template cache failure.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Not a SHA-256 in lower-case hex.
    #[error("invalid bundle key {0:?}: expected 64 lower-case hex digits")]
    InvalidKey(String),
    /// The bundle can never fit: its zip and its unpacked files together need more than the bound.
    #[error("bundle {sha256} needs {needed} bytes, more than the cache's bound of {bound}")]
    TooLarge { sha256: String, needed: u64, bound: u64 },
    /// The bundle would fit an empty cache, but the entries running tasks hold leave no room.
    #[error("cache full: {needed} more bytes needed, {pinned} of {bound} held by running tasks")]
    CacheFull { needed: u64, pinned: u64, bound: u64 },
    /// The downloaded bytes are not the bundle asked for (wrong size or SHA-256); discarded.
    #[error("bundle {expected} failed verification: got {actual}")]
    ChecksumMismatch { expected: String, actual: String },
    /// The source ended before the whole bundle arrived; what came is kept for a resume.
    #[error("download of {sha256} ended at {got} of {expected} bytes")]
    Truncated { sha256: String, got: u64, expected: u64 },
    /// The archive is not safe to unpack (escaping paths, links, a zip bomb, not a zip).
    #[error("unsafe or unreadable archive {sha256}: {reason}")]
    UnsafeArchive { sha256: String, reason: String },
    /// The source failed; what came before the failure is kept for a resume.
    #[error("fetching {sha256}: {source}")]
    Fetch { sha256: String, source: io::Error },
    /// The cache directory could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A blocking task (unpacking, scanning, deleting) panicked or was cancelled.
    #[error("cache worker failed: {0}")]
    Worker(String),
}

impl CacheError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }
}

/// Extension for attaching the path to an [`io::Error`].
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, CacheError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, CacheError> {
        self.map_err(|e| CacheError::io(path, e))
    }
}
