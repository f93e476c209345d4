//! The kit's error type and its single mapping to `tonic::Status`.
//!
//! Internal failures are logged with a reference id and answered as `INTERNAL` carrying only
//! that reference, so no database text or stack detail ever reaches a caller.

use tonic::{Code, Status};

/// Result with the kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the kit can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration that cannot work; the message says what to change.
    #[error("{0}")]
    Config(String),
    /// PostgreSQL could not be reached or refused a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed or the database's migration history does not match this binary.
    #[error("migration: {0}")]
    Migration(String),
    /// A listener could not be bound or served.
    #[error("network: {0}")]
    Io(#[from] std::io::Error),
    /// The caller's credentials are missing or invalid.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but not allowed to do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// An outbox event could not be decoded.
    #[error("event decoding: {0}")]
    Decode(#[from] prost::DecodeError),
    /// Signing keys could not be read, written or parsed.
    #[error("keys: {0}")]
    Keys(String),
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::Unauthenticated(msg) => Status::unauthenticated(msg),
            Error::PermissionDenied(msg) => Status::permission_denied(msg),
            Error::Database(db) => database_status(db),
            other => internal(&other),
        }
    }
}

/// Database failures a client can retry are `UNAVAILABLE` (the database is away or the
/// process is shutting down) or `ABORTED` (a serialization failure or deadlock); the rest
/// are internal.
fn database_status(err: sqlx::Error) -> Status {
    match &err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
            Status::unavailable("the database is not reachable right now; retry shortly")
        }
        sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40001" | "40P01")) => {
            Status::aborted("the operation conflicted with another one; retry it")
        }
        _ => internal(&err),
    }
}

/// Logs `err` with a fresh reference id and returns an `INTERNAL` status that carries only the
/// reference, for any crate's internal failures.
pub fn internal(err: &dyn std::error::Error) -> Status {
    let reference = uuid::Uuid::new_v4();
    tracing::error!(%reference, error = %err, "internal error");
    Status::new(Code::Internal, format!("internal error (reference {reference})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(Error::Migration("relation \"secret\" exists".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
        assert!(status.message().starts_with("internal error (reference "));
    }

    #[test]
    fn transient_database_failures_are_retryable() {
        assert_eq!(Status::from(Error::Database(sqlx::Error::PoolClosed)).code(), Code::Unavailable);
        assert_eq!(Status::from(Error::Database(sqlx::Error::PoolTimedOut)).code(), Code::Unavailable);
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(Status::from(Error::Database(sqlx::Error::Io(io))).code(), Code::Unavailable);
        assert_eq!(Status::from(Error::Database(sqlx::Error::RowNotFound)).code(), Code::Internal);
    }

    #[test]
    fn auth_errors_keep_their_codes() {
        assert_eq!(Status::from(Error::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(Status::from(Error::PermissionDenied("x".into())).code(), Code::PermissionDenied);
    }
}
