//! The file service's flags: where objects live, upload limits, quota defaults, cleanup, the
//! public URL of download links.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use flatrender_file::storage::{BackendConfig, S3Config, SecretAccessKey, StorageConfig};
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

    /// Local backend: write large uploads with direct I/O where the file system allows it
    /// (`false`: through the page cache, flushed part by part; more CPU per byte, but a fresh
    /// upload stays in the page cache for downloads right after it).
    #[arg(long, env = "FLATRENDER_STORAGE_DIRECT_IO", default_value_t = true, action = clap::ArgAction::Set)]
    pub storage_direct_io: bool,

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

    /// Absolute http(s) URL clients reach this process under (the proxy or ingress in front of
    /// it, if any); download links are `<public-url>/files/v1/links/<token>`. Default: `http://`
    /// and the gRPC address, with 0.0.0.0 / [::] read as 127.0.0.1 / [::1].
    #[arg(long, env = "FLATRENDER_PUBLIC_URL")]
    pub public_url: Option<String>,
}

impl FileArgs {
    /// The configured public URL, checked, without a trailing slash; `None` when not given.
    pub fn public_url(&self) -> Result<Option<String>, Error> {
        self.public_url.as_deref().map(checked_public_url).transpose()
    }

    /// The file service's settings, objects under `data_dir` unless configured otherwise, links
    /// under `public_url` (see [`FileArgs::public_url`] and [`default_public_url`]).
    pub fn settings(&self, data_dir: &Path, public_url: String) -> Result<Settings, Error> {
        let storage = match self.backend {
            StorageBackend::Local => {
                let mut config = match &self.storage_dir {
                    Some(dir) => StorageConfig::local(dir),
                    None => StorageConfig::under_data_dir(data_dir),
                };
                if let BackendConfig::Local(local) = &mut config.backend {
                    local.direct_io = self.storage_direct_io;
                }
                config
            }
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
        settings.public_url = public_url;
        Ok(settings)
    }
}

/// `text` when it is an absolute http(s) URL with a host and nothing after the path, without a
/// trailing slash; a configuration error saying what to give otherwise.
fn checked_public_url(text: &str) -> Result<String, Error> {
    let refuse = |why: &str| {
        Error::Config(format!(
            "--public-url {text:?} {why}; give the absolute http(s) URL clients reach this server under, \
             e.g. https://files.example.com (FLATRENDER_PUBLIC_URL)"
        ))
    };
    let url = url::Url::parse(text).map_err(|e| refuse(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(refuse("is not http or https"));
    }
    if url.host().is_none() {
        return Err(refuse("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("may not carry credentials, a query or a fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The public URL when none is configured: `http://` (`https://` when the port speaks TLS)
/// and the address this process listens on, an unspecified address (all interfaces) read as the
/// loopback one.
pub fn default_public_url(listening: SocketAddr, tls: bool) -> String {
    let ip = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}", SocketAddr::new(ip, listening.port()))
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
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        file: FileArgs,
    }

    #[test]
    fn direct_io_is_on_unless_turned_off() {
        let direct_io = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("flatrender").chain(args.iter().copied())).unwrap();
            let settings = cli.file.settings(Path::new("/tmp/data"), "http://127.0.0.1:50051".into()).unwrap();
            let BackendConfig::Local(local) = settings.storage.backend else { panic!("the local backend") };
            (local.fsync, local.direct_io)
        };
        assert_eq!(direct_io(&[]), (true, true));
        assert_eq!(direct_io(&["--storage-direct-io", "false"]), (true, false));
    }

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

    #[test]
    fn public_urls() {
        assert_eq!(checked_public_url("https://files.example.com/").unwrap(), "https://files.example.com");
        assert_eq!(checked_public_url("http://10.0.0.5:8080/api/").unwrap(), "http://10.0.0.5:8080/api");
        assert_eq!(checked_public_url("HTTP://[::1]:50051").unwrap(), "http://[::1]:50051");
        for (bad, why) in [
            ("files.example.com", "is not a URL"),
            ("ftp://files.example.com", "is not http or https"),
            ("https://user:pw@files.example.com", "may not carry credentials"),
            ("https://files.example.com/?a=b", "may not carry credentials, a query"),
            ("https://files.example.com/#top", "a fragment"),
        ] {
            let message = checked_public_url(bad).unwrap_err().to_string();
            assert!(message.contains(why) && message.contains("--public-url"), "{bad}: {message}");
            assert_eq!(message.lines().count(), 1, "{message}");
        }
    }

    #[test]
    fn the_default_public_url_is_the_listen_address() {
        let url = |addr: &str| default_public_url(addr.parse().unwrap(), false);
        assert_eq!(url("0.0.0.0:50051"), "http://127.0.0.1:50051");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080");
        assert_eq!(url("10.1.2.3:50051"), "http://10.1.2.3:50051");
        assert_eq!(url("[fe80::1]:443"), "http://[fe80::1]:443");
        assert_eq!(default_public_url("0.0.0.0:443".parse().unwrap(), true), "https://127.0.0.1:443");
    }
}
