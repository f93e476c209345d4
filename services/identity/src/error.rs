//! The identity service's error type and its one mapping to `tonic::Status`.
//!
//! Callers' mistakes carry a message that helps them; failures of the database or of the
//! password workers are logged with a reference and answered without internals.

use std::time::Duration;

use tonic::Status;

use crate::credentials::passwords::PasswordError;

/// Result with [`IdentityError`].
pub type Result<T, E = IdentityError> = std::result::Result<T, E>;

/// Everything the identity service can fail with.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A request field is malformed: `INVALID_ARGUMENT` "field: reason".
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, e.g. `email`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The object does not exist or the caller may not see it (never told apart).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A name or address is taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// Credentials are missing, wrong or no longer valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A limit would be exceeded.
    #[error("{0}")]
    Exhausted(String),
    /// A concurrent request got there first; retrying is safe.
    #[error("{0}")]
    Aborted(String),
    /// Too many attempts; retry after the delay.
    #[error("{what}; retry in {} s", whole_seconds(*retry_after))]
    Throttled {
        /// What was throttled.
        what: &'static str,
        /// When the next attempt may succeed.
        retry_after: Duration,
    },
    /// Hashing or checking a password failed (not a wrong password).
    #[error(transparent)]
    Password(PasswordError),
    /// Signing or reading a key failed.
    #[error("signing keys: {0}")]
    Keys(String),
    /// A stored value this code cannot read (a defect or a manual edit).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The kit failed (e.g. writing an outbox event).
    #[error(transparent)]
    Kit(#[from] flatrender_kit::Error),
}

/// Seconds rounded up, at least one: a client that waits as told is let through.
fn whole_seconds(delay: Duration) -> u128 {
    delay.as_millis().div_ceil(1000).max(1)
}

impl IdentityError {
    /// `INVALID_ARGUMENT` for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field, reason: reason.into() }
    }

    /// `UNAUTHENTICATED` with `message`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::Unauthenticated(message.into())
    }
}

impl From<PasswordError> for IdentityError {
    fn from(err: PasswordError) -> Self {
        match err {
            PasswordError::Policy(reason) => Self::InvalidArgument { field: "password", reason },
            other => Self::Password(other),
        }
    }
}

impl From<IdentityError> for Status {
    fn from(err: IdentityError) -> Self {
        match err {
            IdentityError::InvalidArgument { .. } => Status::invalid_argument(err.to_string()),
            IdentityError::NotFound(_) => Status::not_found(err.to_string()),
            IdentityError::AlreadyExists(msg) => Status::already_exists(msg),
            IdentityError::FailedPrecondition(msg) => Status::failed_precondition(msg),
            IdentityError::Unauthenticated(msg) => Status::unauthenticated(msg),
            IdentityError::PermissionDenied(msg) => Status::permission_denied(msg),
            IdentityError::Exhausted(msg) => Status::resource_exhausted(msg),
            IdentityError::Aborted(msg) => Status::aborted(msg),
            IdentityError::Throttled { .. } => Status::resource_exhausted(err.to_string()),
            IdentityError::Password(_) | IdentityError::Keys(_) | IdentityError::Corrupt(_) => {
                flatrender_kit::error::internal(&err)
            }
            IdentityError::Database(db) => flatrender_kit::Error::Database(db).into(),
            IdentityError::Kit(kit) => kit.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn callers_mistakes_keep_their_message() {
        let status = Status::from(IdentityError::invalid("email", "must contain one @"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "email: must contain one @");
        let policy = Status::from(IdentityError::from(PasswordError::Policy("too short".into())));
        assert_eq!((policy.code(), policy.message()), (Code::InvalidArgument, "password: too short"));
        let throttled = Status::from(IdentityError::Throttled {
            what: "too many failed logins",
            retry_after: Duration::from_millis(1500),
        });
        assert_eq!(throttled.code(), Code::ResourceExhausted);
        assert_eq!(throttled.message(), "too many failed logins; retry in 2 s");
    }

    #[test]
    fn internal_failures_do_not_leak() {
        let status = Status::from(IdentityError::Keys("seed of kid k1 is 31 bytes".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("seed"));
        let status = Status::from(IdentityError::Database(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), Code::Internal);
    }
}
