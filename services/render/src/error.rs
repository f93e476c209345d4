//! The render service's error type and its one mapping to `tonic::Status`.
//!
//! Callers' mistakes carry a message that helps them (the field named first); database
//! failures are logged with a reference and answered without internals (the kit's mapping).

use tonic::Status;

/// Result with [`RenderError`].
pub type Result<T, E = RenderError> = std::result::Result<T, E>;

/// Everything the render service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A request field is malformed: `INVALID_ARGUMENT` "field: reason".
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, e.g. `segments[2].frames`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The object does not exist or the caller may not see it (never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A file a request names does not exist or is not visible to the tenant: `NOT_FOUND`
    /// naming the field, e.g. `audio_tracks[2].file_id: file not found`.
    #[error("{field}: file not found")]
    FileNotFound {
        /// The request field holding the id.
        field: String,
    },
    /// An idempotency key or name is taken by something else.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A plan allowance or rate is used up.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The caller's role does not allow the call.
    #[error("{0}")]
    PermissionDenied(String),
    /// Missing, malformed, unknown or revoked credentials (one message for all).
    #[error("{0}")]
    Unauthenticated(String),
    /// An offset or position lies past the end of the object (a resumed download).
    #[error("{0}")]
    OutOfRange(String),
    /// Bytes arrived that do not match what their sender declared (size, SHA-256); nothing of
    /// them was kept.
    #[error("{0}")]
    DataLoss(String),
    /// A call ended because a newer one took its place (an agent stream superseded).
    #[error("{0}")]
    Aborted(String),
    /// This service or another cannot answer now (shutting down, a dependency down); the caller
    /// retries with backoff.
    #[error("{0}")]
    Unavailable(String),
    /// Another service answered what it should not have (our bug or misconfiguration).
    #[error("{service} answered {status}")]
    Upstream {
        /// The service called.
        service: &'static str,
        /// What it answered.
        status: String,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The kit failed (e.g. writing an outbox event).
    #[error(transparent)]
    Kit(#[from] flatrender_kit::Error),
}

impl RenderError {
    /// `INVALID_ARGUMENT` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), reason: reason.into() }
    }

    /// Whether retrying the same transaction may succeed: PostgreSQL chose it as a deadlock
    /// victim or could not serialize it.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01" | "40001")))
    }
}

impl From<RenderError> for Status {
    fn from(err: RenderError) -> Self {
        match err {
            RenderError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            RenderError::NotFound(_) | RenderError::FileNotFound { .. } => Status::not_found(err.to_string()),
            RenderError::AlreadyExists(msg) => Status::already_exists(msg),
            RenderError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            RenderError::ResourceExhausted(msg) => Status::resource_exhausted(msg),
            RenderError::PermissionDenied(msg) => Status::permission_denied(msg),
            RenderError::Unauthenticated(msg) => Status::unauthenticated(msg),
            RenderError::OutOfRange(msg) => Status::out_of_range(msg),
            RenderError::DataLoss(msg) => Status::data_loss(msg),
            RenderError::Aborted(msg) => Status::aborted(msg),
            RenderError::Unavailable(msg) => Status::unavailable(msg),
            RenderError::Upstream { .. } => flatrender_kit::error::internal(&err),
            RenderError::Database(db) => flatrender_kit::Error::Database(db).into(),
            RenderError::Kit(kit) => kit.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn callers_mistakes_keep_their_message() {
        let status = Status::from(RenderError::invalid("segments[2].frames", "reversed range 9-3"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "segments[2].frames: reversed range 9-3");
        assert_eq!(Status::from(RenderError::NotFound("render")).message(), "render not found");
        let missing = Status::from(RenderError::FileNotFound { field: "audio_tracks[2].file_id".into() });
        assert_eq!(missing.code(), Code::NotFound);
        assert_eq!(missing.message(), "audio_tracks[2].file_id: file not found");
    }

    #[test]
    fn database_failures_do_not_leak() {
        let status = Status::from(RenderError::Database(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().starts_with("internal error (reference "));
        let upstream = Status::from(RenderError::Upstream { service: "file", status: "secret detail".into() });
        assert_eq!(upstream.code(), Code::Internal);
        assert!(!upstream.message().contains("secret"));
        assert_eq!(Status::from(RenderError::Unavailable("retry".into())).code(), Code::Unavailable);
        assert_eq!(Status::from(RenderError::OutOfRange("offset".into())).code(), Code::OutOfRange);
        assert_eq!(Status::from(RenderError::DataLoss("sha256".into())).code(), Code::DataLoss);
    }
}
