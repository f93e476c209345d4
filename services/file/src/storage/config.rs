//! Which backend holds the objects, and how uploads are cut into parts.

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::{Result, StorageError};

/// One mebibyte.
const MIB: usize = 1024 * 1024;

/// S3's smallest part (every part of a multipart upload but the last).
pub const MIN_PART_SIZE: usize = 5 * MIB;

/// S3's largest part.
pub const MAX_PART_SIZE: usize = 5 * 1024 * MIB;

/// Where objects live and how they are written.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The backend.
    pub backend: BackendConfig,
    /// Objects up to this size are written in one request; larger ones as a multipart upload of
    /// parts this size. [`MIN_PART_SIZE`]..=[`MAX_PART_SIZE`]; default 8 MiB. S3 allows 10,000
    /// parts, so this also sets the largest object (78 GiB with 8 MiB parts). On local disk, the
    /// amount written (and with fsync flushed) at a time.
    pub part_size: usize,
    /// Parts of one upload sent at the same time. An upload holds at most
    /// `(upload_concurrency + 1) × part_size` bytes in memory; default 4 (40 MiB with 8 MiB
    /// parts). The local backend writes one part at a time whatever this says (two parts in
    /// memory: one being written, one arriving).
    pub upload_concurrency: usize,
}

/// The backend and its settings.
#[derive(Clone, Debug)]
pub enum BackendConfig {
    /// A directory on the local filesystem.
    Local(LocalConfig),
    /// An S3-compatible server.
    S3(S3Config),
}

/// Objects as files under a directory.
#[derive(Clone, Debug)]
pub struct LocalConfig {
    /// The directory; created when missing.
    pub root: PathBuf,
    /// Flush every written object to disk before reporting it stored, so a power cut cannot
    /// lose a file whose row says it exists. Default on.
    pub fsync: bool,
    /// With fsync, write large uploads with direct I/O where the file system allows it (less
    /// CPU per byte, steady memory); off, through the page cache, flushed part by part, which
    /// leaves a fresh upload in the page cache for the downloads right after it. Default on.
    pub direct_io: bool,
}

/// An S3-compatible bucket.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// The server, e.g. `https://s3.eu-central-1.amazonaws.com` or `http://127.0.0.1:9000`;
    /// `None` means AWS for `region`.
    pub endpoint: Option<String>,
    /// The region (most non-AWS servers accept any, often `us-east-1`).
    pub region: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: SecretAccessKey,
    /// Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted style
    /// (`bucket.endpoint/key`): what MinIO, Ceph, SeaweedFS and most local servers expect.
    pub path_style: bool,
    /// Allow `http://` endpoints (local test servers); otherwise only HTTPS.
    pub allow_http: bool,
}

/// An S3 secret access key that never appears in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretAccessKey(String);

impl SecretAccessKey {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself: pass it to the S3 client, never to a log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretAccessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl StorageConfig {
    /// The default part size.
    pub const DEFAULT_PART_SIZE: usize = 8 * MIB;
    /// The default number of parts in flight per upload.
    pub const DEFAULT_UPLOAD_CONCURRENCY: usize = 4;

    /// Files under `root`, with the default tuning.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self::with_backend(BackendConfig::Local(LocalConfig { root: root.into(), fsync: true, direct_io: true }))
    }

    /// The default: files under `<data dir>/objects`.
    pub fn under_data_dir(data_dir: &Path) -> Self {
        Self::local(data_dir.join("objects"))
    }

    /// An S3-compatible bucket, with the default tuning.
    pub fn s3(config: S3Config) -> Self {
        Self::with_backend(BackendConfig::S3(config))
    }

    fn with_backend(backend: BackendConfig) -> Self {
        Self { backend, part_size: Self::DEFAULT_PART_SIZE, upload_concurrency: Self::DEFAULT_UPLOAD_CONCURRENCY }
    }

    /// The same with another part size.
    pub fn with_part_size(mut self, part_size: usize) -> Self {
        self.part_size = part_size;
        self
    }

    /// Refuses settings that cannot work, saying what to change.
    pub(crate) fn validate(&self) -> Result<()> {
        let problem = if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&self.part_size) {
            format!("part size {} is outside {MIN_PART_SIZE}..={MAX_PART_SIZE} bytes (S3's limits)", self.part_size)
        } else if self.upload_concurrency == 0 {
            "upload concurrency must be at least 1".to_owned()
        } else if let BackendConfig::S3(s3) = &self.backend
            && s3.bucket.is_empty()
        {
            "the S3 bucket name is empty".to_owned()
        } else {
            return Ok(());
        };
        Err(StorageError::Open { location: self.backend.location(), source: problem.into() })
    }
}

impl BackendConfig {
    /// The directory or `s3://bucket` (for messages).
    pub(crate) fn location(&self) -> String {
        match self {
            Self::Local(local) => local.root.display().to_string(),
            Self::S3(s3) => format!("s3://{}", s3.bucket),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> S3Config {
        S3Config {
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: "us-east-1".into(),
            bucket: "flatrender".into(),
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretAccessKey::new("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"),
            path_style: true,
            allow_http: true,
        }
    }

    #[test]
    fn the_secret_never_prints() {
        let config = StorageConfig::s3(s3());
        for text in [format!("{config:?}"), format!("{:?}", s3()), s3().secret_access_key.to_string()] {
            assert!(!text.contains("wJalrXUtnFEMI"), "{text}");
        }
        assert!(format!("{config:?}").contains("AKIDEXAMPLE"));
    }

    #[test]
    fn the_default_lives_under_the_data_dir() {
        let config = StorageConfig::under_data_dir(Path::new("/var/lib/flatrender"));
        assert!(
            matches!(&config.backend, BackendConfig::Local(l) if l.root == Path::new("/var/lib/flatrender/objects") && l.fsync)
        );
        assert!(config.validate().is_ok());
    }

    #[test]
    fn unusable_settings_are_refused() {
        assert!(StorageConfig::local("x").with_part_size(MIN_PART_SIZE - 1).validate().is_err());
        assert!(StorageConfig::local("x").with_part_size(MAX_PART_SIZE + 1).validate().is_err());
        let no_bucket = StorageConfig::s3(S3Config { bucket: String::new(), ..s3() });
        let message = no_bucket.validate().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("bucket"), "{message}");
    }
}
