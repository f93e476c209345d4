//! The storage layer's one error type, and its mapping to gRPC status codes.
//!
//! Backend failures are logged with a reference and answered without their text: an S3 error
//! body or a filesystem path is for operators, not for callers.

use object_store::Error as StoreError;
use tonic::{Code, Status};

use super::digest::Sha256Digest;
use super::key::{KeyError, ObjectKey};

/// An error from the input stream of an upload (for gRPC, the client's `tonic::Status`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Everything object storage can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key breaks the key rules (see [`ObjectKey`](super::ObjectKey)).
    #[error("invalid object key: {0}")]
    InvalidKey(#[from] KeyError),
    /// No object under this key.
    #[error("object not found: {key}")]
    NotFound {
        /// The missing object's key.
        key: String,
    },
    /// The data's size is not the expected one. The data was not stored. When there was more
    /// than expected, reading stopped as soon as that was clear, so `actual` is a lower bound.
    #[error("size: received {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// The size the caller declared.
        expected: u64,
        /// The bytes received.
        actual: u64,
    },
    /// The data's SHA-256 is not the expected one. The data was not stored.
    #[error("sha256: mismatch (expected {expected}, received {actual})")]
    ChecksumMismatch {
        /// The digest the caller declared.
        expected: Sha256Digest,
        /// The digest of the bytes received.
        actual: Sha256Digest,
    },
    /// A resumable upload cannot be completed: these parts (the first few missing) are absent.
    #[error("parts missing: {missing:?}")]
    MissingParts {
        /// The first missing part numbers, in order (at most ten).
        missing: Vec<u32>,
    },
    /// The range starts past the end of the object.
    #[error("range not satisfiable: offset {offset} is past the end of the {size}-byte object")]
    RangeNotSatisfiable {
        /// The first byte asked for.
        offset: u64,
        /// The object's size.
        size: u64,
    },
    /// The upload's input stream failed; nothing was stored.
    #[error("the upload stream failed: {0}")]
    Input(#[source] BoxError),
    /// Object storage could not be opened (a bad configuration or an unusable directory).
    #[error("cannot open object storage {location}: {source}")]
    Open {
        /// The directory or bucket.
        location: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The backend failed (network, S3 error answer, disk).
    #[error("object storage could not {operation}: {source}")]
    Backend {
        /// What was being done, e.g. `read tenants/…/files/…`.
        operation: String,
        /// The backend's error.
        #[source]
        source: StoreError,
    },
}

impl StorageError {
    /// A backend failure while doing `what` to `key`; a missing object becomes
    /// [`Self::NotFound`] naming the key (the store's own path could be a filesystem path).
    pub(crate) fn backend(what: &str, key: &ObjectKey, source: StoreError) -> Self {
        match source {
            StoreError::NotFound { .. } => Self::NotFound { key: key.to_string() },
            source => Self::Backend { operation: format!("{what} {key}"), source },
        }
    }

    /// The gRPC code this error stands for.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidKey(_) | Self::SizeMismatch { .. } | Self::ChecksumMismatch { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::MissingParts { .. } => Code::FailedPrecondition,
            Self::RangeNotSatisfiable { .. } => Code::OutOfRange,
            Self::Input(source) => source.downcast_ref::<Status>().map_or(Code::Cancelled, Status::code),
            // A network or server failure may pass; a refused credential or an unsupported call
            // will not, and is the operator's to fix.
            Self::Backend { source: StoreError::Generic { .. } | StoreError::JoinError { .. }, .. } => {
                Code::Unavailable
            }
            Self::Open { .. } | Self::Backend { .. } => Code::Internal,
        }
    }
}

impl From<StorageError> for Status {
    fn from(err: StorageError) -> Self {
        let code = err.code();
        match err {
            // The caller's own mistakes: the message helps them and holds nothing internal.
            StorageError::InvalidKey(_)
            | StorageError::SizeMismatch { .. }
            | StorageError::ChecksumMismatch { .. }
            | StorageError::MissingParts { .. }
            | StorageError::RangeNotSatisfiable { .. } => Status::new(code, err.to_string()),
            // The key tells the storage layout (tenant ids); the service names the file instead.
            StorageError::NotFound { .. } => Status::not_found("object not found"),
            StorageError::Input(source) => match source.downcast::<Status>() {
                Ok(status) => *status,
                Err(_) => Status::cancelled("the upload stream ended with an error"),
            },
            StorageError::Backend { .. } if code == Code::Unavailable => {
                let reference = uuid::Uuid::new_v4();
                tracing::warn!(%reference, error = %err, "object storage unavailable");
                Status::unavailable(format!("object storage is unavailable; retry shortly (reference {reference})"))
            }
            StorageError::Open { .. } | StorageError::Backend { .. } => flatrender_kit::error::internal(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ObjectKey {
        ObjectKey::new("tenants/t/files/f").unwrap()
    }

    fn generic(text: &str) -> StoreError {
        StoreError::Generic { store: "S3", source: text.into() }
    }

    #[test]
    fn caller_errors_keep_their_message_and_code() {
        let cases = [
            (StorageError::from(KeyError::DotDot), Code::InvalidArgument),
            (StorageError::SizeMismatch { expected: 10, actual: 9 }, Code::InvalidArgument),
            (
                StorageError::ChecksumMismatch { expected: Sha256Digest::of(b"a"), actual: Sha256Digest::of(b"b") },
                Code::InvalidArgument,
            ),
            (StorageError::MissingParts { missing: vec![2, 3] }, Code::FailedPrecondition),
            (StorageError::RangeNotSatisfiable { offset: 11, size: 10 }, Code::OutOfRange),
        ];
        for (err, code) in cases {
            let text = err.to_string();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn not_found_hides_the_layout() {
        let key = ObjectKey::new("tenants/t/files/f").unwrap();
        let err = StorageError::backend(
            "read",
            &key,
            StoreError::NotFound { path: "/srv/data/objects/tenants/t/files/f".into(), source: "gone".into() },
        );
        assert!(matches!(&err, StorageError::NotFound { key } if key == "tenants/t/files/f"));
        let status = Status::from(err);
        assert_eq!(status.code(), Code::NotFound);
        assert!(!status.message().contains("tenants"), "{}", status.message());
    }

    #[test]
    fn backend_failures_do_not_leak_their_text() {
        let transient = Status::from(StorageError::backend("write", &key(), generic("secret-bucket said 503")));
        assert_eq!(transient.code(), Code::Unavailable);
        assert!(!transient.message().contains("secret"), "{}", transient.message());
        assert!(transient.message().contains("reference"), "{}", transient.message());

        let refused = Status::from(StorageError::backend(
            "write",
            &key(),
            StoreError::PermissionDenied { path: "x".into(), source: "AKIA-secret denied".into() },
        ));
        assert_eq!(refused.code(), Code::Internal);
        assert!(!refused.message().contains("secret"), "{}", refused.message());
    }

    #[test]
    fn input_errors_pass_the_clients_status_through() {
        let status = Status::from(StorageError::Input(Box::new(Status::deadline_exceeded("slow client"))));
        assert_eq!(status.code(), Code::DeadlineExceeded);
        let other = Status::from(StorageError::Input("broken pipe".into()));
        assert_eq!(other.code(), Code::Cancelled);
    }
}
