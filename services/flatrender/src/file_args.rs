//! The file service's flags: where objects live, upload limits, quota defaults, cleanup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use flatrender_file::storage::{S3Config, SecretAccessKey, StorageConfig};
use flatrender_file::{CleanupSettings, Settings};
use flatrender_kit::Error;
use flatrender_kit::config::parse_duration;

/// Which object storage backend holds files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageBackend {
    /// Files under a local directory.
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// File service flags.
#[derive(Debug, Args)]
pub struct FileArgs {
    /// Object storage backend.
    #[arg(long = "storage", env = "FLATRENDER_STORAGE", value_enum, default_value = "local")]
    pub backend: StorageBackend,

    /// Directory of the local backend; default `<data-dir>/objects`.
    #[arg(long, env = "FLATRENDER_STORAGE_DIR")]
    pub storage_dir: Option<PathBuf>,

    /// S3 endpoint, e.g. `http://127.0.0.1:9000`; default: AWS for the region.
    #[arg(long, env = "FLATRENDER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "FLATRENDER_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// S3 bucket (must exist).
    #[arg(long, env = "FLATRENDER_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// S3 access key id.
    #[arg(long, env = "FLATRENDER_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,

    /// S3 secret access key (prefer the environment variable).
    #[arg(long, env = "FLATRENDER_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,

    /// Path-style S3 addressing (MinIO, Ceph, most self-hosted servers).
    #[arg(long, env = "FLATRENDER_S3_PATH_STYLE")]
    pub s3_path_style: bool,

    /// Allow an `http://` S3 endpoint (local test servers only).
    #[arg(long, env = "FLATRENDER_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,

    /// Largest simple upload (bigger files use upload sessions), e.g. `64MiB`.
    #[arg(long, env = "FLATRENDER_MAX_SIMPLE_UPLOAD", value_parser = parse_bytes, default_value = "64MiB")]
    pub max_simple_upload: u64,

    /// Largest file an upload session may declare (at most 10,000 parts, so this also sets the
    /// largest part held in memory: 625GiB keeps parts at 64 MiB).
    #[arg(long, env = "FLATRENDER_MAX_SESSION_UPLOAD", value_parser = parse_bytes, default_value = "625GiB")]
    pub max_session_upload: u64,

    /// A user's storage quota when neither a plan nor an admin sets one.
    #[arg(long, env = "FLATRENDER_DEFAULT_USER_QUOTA", value_parser = parse_bytes, default_value = "5GiB")]
    pub default_user_quota: u64,

    /// A tenant's storage quota when neither a plan nor an admin sets one.
    #[arg(long, env = "FLATRENDER_DEFAULT_TENANT_QUOTA", value_parser = parse_bytes, default_value = "100GiB")]
    pub default_tenant_quota: u64,

    /// How long an unfinished upload session lives after its last part.
    #[arg(long, env = "FLATRENDER_UPLOAD_SESSION_TTL", value_parser = parse_duration, default_value = "24h")]
    pub upload_session_ttl: Duration,

    /// Run due cleanup schedules on this replica (`false` leaves them to others).
    #[arg(long, env = "FLATRENDER_CLEANUP", default_value_t = true, action = clap::ArgAction::Set)]
    pub cleanup: bool,

    /// How often this replica looks for due cleanup schedules.
    #[arg(long, env = "FLATRENDER_CLEANUP_POLL", value_parser = parse_duration, default_value = "30s")]
    pub cleanup_poll: Duration,
}

impl FileArgs {
    /// The file service's settings, objects under `data_dir` unless configured otherwise.
    pub fn settings(&self, data_dir: &Path) -> Result<Settings, Error> {
        let storage = match self.backend {
            StorageBackend::Local => match &self.storage_dir {
                Some(dir) => StorageConfig::local(dir),
                None => StorageConfig::under_data_dir(data_dir),
            },
            StorageBackend::S3 => {
                let required = |value: &Option<String>, flag: &str| {
                    value.clone().filter(|v| !v.is_empty()).ok_or_else(|| {
                        Error::Config(format!(
                            "--storage s3 needs --{flag} (FLATRENDER_{})",
                            flag.replace('-', "_").to_uppercase()
                        ))
                    })
                };
                StorageConfig::s3(S3Config {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    bucket: required(&self.s3_bucket, "s3-bucket")?,
                    access_key_id: required(&self.s3_access_key_id, "s3-access-key-id")?,
                    secret_access_key: SecretAccessKey::new(required(
                        &self.s3_secret_access_key,
                        "s3-secret-access-key",
                    )?),
                    path_style: self.s3_path_style,
                    allow_http: self.s3_allow_http,
                })
            }
        };
        let mut settings = Settings::new(storage);
        settings.max_simple_upload_bytes = self.max_simple_upload;
        settings.max_session_upload_bytes = self.max_session_upload;
        settings.default_user_quota_bytes = self.default_user_quota;
        settings.default_tenant_quota_bytes = self.default_tenant_quota;
        settings.upload_session_ttl = self.upload_session_ttl;
        settings.cleanup =
            CleanupSettings { enabled: self.cleanup, poll_interval: self.cleanup_poll, ..CleanupSettings::default() };
        Ok(settings)
    }
}

/// Parses sizes such as `1048576`, `512KiB`, `64MiB`, `5GiB`, `1TiB` (also `KB`/`MB`/... as
/// powers of 1,000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size such as 64MiB"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB, MiB, GiB or TiB")),
    };
    number.checked_mul(factor).ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("5 GiB"), Ok(5 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
