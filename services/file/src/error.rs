//! The file service's error type and its one mapping to `tonic::Status`.
//!
//! Callers' mistakes carry a message that helps them; database and storage failures are logged
//! with a reference and answered without internals (through the kit's and the storage layer's
//! own mappings).

use tonic::Status;

use crate::storage::StorageError;

/// Result with [`FileError`].
pub type Result<T, E = FileError> = std::result::Result<T, E>;

/// Everything the file service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A request field is malformed: `INVALID_ARGUMENT` "field: reason".
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, e.g. `target.name`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object does not exist or the caller may not see it (never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A name or key is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A quota (or another limit) would be exceeded.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A byte range starts past the end.
    #[error("{0}")]
    OutOfRange(String),
    /// The caller's role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// Object storage failed or refused the data.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The kit failed (e.g. writing an outbox event).
    #[error(transparent)]
    Kit(#[from] flatrender_kit::Error),
}

impl FileError {
    /// `INVALID_ARGUMENT` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<FileError> for Status {
    fn from(err: FileError) -> Self {
        match err {
            FileError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            FileError::NotFound(_) => Status::not_found(err.to_string()),
            FileError::AlreadyExists(msg) => Status::already_exists(msg),
            FileError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            FileError::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            FileError::OutOfRange(msg) => Status::out_of_range(msg),
            FileError::PermissionDenied(msg) => Status::permission_denied(msg),
            FileError::Storage(storage) => storage.into(),
            FileError::Database(db) => flatrender_kit::Error::Database(db).into(),
            FileError::Kit(kit) => kit.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn callers_mistakes_keep_their_message() {
        let status = Status::from(FileError::invalid("target.name", "must not contain \"/\""));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "target.name: must not contain \"/\"");
        assert_eq!(Status::from(FileError::NotFound("file")).message(), "file not found");
    }

    #[test]
    fn database_failures_do_not_leak() {
        let status = Status::from(FileError::Database(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (reference "));
    }
}
