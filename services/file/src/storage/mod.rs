//! Object storage: the one place that talks to it, through the `object_store` crate.
//!
//! Two backends: files under a directory (`<data dir>/objects` by default) and an S3-compatible
//! bucket. Both behave the same through [`Storage`]:
//!
//! - **Writes stream** in constant memory (one part buffered, `upload_concurrency` parts in
//!   flight) and hash as they go. A write with an expected size or SHA-256 that the data does not
//!   match, or whose input stream fails, stores nothing: small objects are checked before their
//!   single request; large ones are an S3 multipart upload that is aborted instead of completed,
//!   or on local disk a staging file that is removed instead of renamed into place (flushed part
//!   by part as it is written, so completing has little left to flush). An object already under
//!   the key stays as it was.
//! - **Reads** are ranged streams; a range starting past the end is
//!   [`StorageError::RangeNotSatisfiable`].
//! - **Delete** is idempotent; **copy** is server-side; **list** goes by whole key segments.
//! - **Resumable uploads** keep each part as its own object under `uploads/<session>`; completing
//!   concatenates them in order into the final object (hashing, so the declared size and SHA-256
//!   are checked), then removes them.
//!
//! Keys and their layout: [`ObjectKey`]. Errors map to gRPC codes with
//! `tonic::Status::from(StorageError)`.
//!
//! An S3 multipart upload whose abort fails (the server unreachable at that moment) stays
//! invisible but billed until the bucket's lifecycle rule for incomplete multipart uploads removes
//! it; production buckets should have one.

mod config;
mod digest;
mod direct;
mod error;
mod hashing;
mod key;
mod objects;
mod parts;
mod read;
mod staged;
mod write;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use staged::LocalTarget;

pub use config::{BackendConfig, LocalConfig, MAX_PART_SIZE, MIN_PART_SIZE, S3Config, SecretAccessKey, StorageConfig};
pub use digest::{DigestError, Sha256Digest};
pub use error::{BoxError, Result, StorageError};
pub use key::{KeyError, MAX_KEY_BYTES, MAX_PART_NUMBER, ObjectKey};
pub use objects::ObjectInfo;
pub use parts::UploadedPart;
pub use read::{ByteRange, ByteStream, MAX_CHUNK_BYTES, ObjectRead};
pub use write::{Expected, StoredObject};

/// Which kind of backend holds the objects (`storage_backend` in the `file_mgr` tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The local filesystem.
    Local,
    /// An S3-compatible server.
    S3,
}

impl BackendKind {
    /// The database's name for it: `local` or `s3`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::S3 => "s3",
        }
    }
}

/// Object storage, ready to use; cheap to clone (one connection pool is shared).
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    /// The same store when it is the local one: large writes go around its multipart upload.
    local: Option<LocalTarget>,
    kind: BackendKind,
    part_size: usize,
    upload_concurrency: usize,
}

impl Storage {
    /// Opens the configured backend: creates the local directory, or sets up the S3 client
    /// (which does not contact the server until the first call).
    pub fn open(config: &StorageConfig) -> Result<Self> {
        config.validate()?;
        let open_failed = |source: BoxError| StorageError::Open { location: config.backend.location(), source };
        let (store, local, kind): (Arc<dyn ObjectStore>, _, _) = match &config.backend {
            BackendConfig::Local(local) => {
                std::fs::create_dir_all(&local.root).map_err(|e| open_failed(e.into()))?;
                let store = LocalFileSystem::new_with_prefix(&local.root)
                    .map_err(|e| open_failed(e.into()))?
                    .with_fsync(local.fsync)
                    // Deleting the last part of an upload removes its emptied directory too.
                    .with_automatic_cleanup(true);
                let store = Arc::new(store);
                let target = LocalTarget { store: Arc::clone(&store), fsync: local.fsync, direct_io: local.direct_io };
                (store, Some(target), BackendKind::Local)
            }
            BackendConfig::S3(s3) => {
                (Arc::new(s3_store(s3).map_err(|e| open_failed(e.into()))?), None, BackendKind::S3)
            }
        };
        Ok(Self { store, local, kind, part_size: config.part_size, upload_concurrency: config.upload_concurrency })
    }

    /// The kind of backend.
    pub fn backend(&self) -> BackendKind {
        self.kind
    }
}

fn s3_store(s3: &S3Config) -> object_store::Result<object_store::aws::AmazonS3> {
    // object_store's default 30 s limit covers the whole response body, which would cut off a
    // long download to a slow client; a stall limit per read catches dead connections instead.
    let client = object_store::ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(60));
    // `new`, not `from_env`: only the configured credentials are used, never ambient ones.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(client)
        .with_region(&s3.region)
        .with_bucket_name(&s3.bucket)
        .with_access_key_id(&s3.access_key_id)
        .with_secret_access_key(s3.secret_access_key.expose())
        .with_virtual_hosted_style_request(!s3.path_style)
        .with_allow_http(s3.allow_http);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    builder.build()
}

// By hand: the S3 client's own `Debug` would print its credentials.
impl fmt::Debug for Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .field("part_size", &self.part_size)
            .field("upload_concurrency", &self.upload_concurrency)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_bucket_but_never_the_secret() {
        let storage = Storage::open(&StorageConfig::s3(S3Config {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: "us-east-1".into(),
            bucket: "media".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretAccessKey::new("very-secret-key"),
            path_style: true,
            allow_http: true,
        }))
        .unwrap();
        let text = format!("{storage:?}");
        assert!(text.contains("media"), "{text}");
        assert!(!text.contains("very-secret-key"), "{text}");
        assert_eq!(storage.backend().as_str(), "s3");
    }

    #[test]
    fn the_local_directory_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data").join("objects");
        let storage = Storage::open(&StorageConfig::local(&root)).unwrap();
        assert!(root.is_dir());
        assert_eq!(storage.backend().as_str(), "local");
    }
}
