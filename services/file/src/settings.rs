//! The file service's settings, with the defaults a fresh installation runs on.

use std::time::Duration;

use crate::storage::StorageConfig;

/// One mebibyte.
pub const MIB: u64 = 1024 * 1024;
/// One gibibyte.
pub const GIB: u64 = 1024 * MIB;

/// The public URL when none is configured: the default gRPC address.
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:50051";

/// How the file service behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where objects live.
    pub storage: StorageConfig,
    /// The largest simple (single-stream) upload; larger files need an upload session.
    pub max_simple_upload_bytes: u64,
    /// The largest file an upload session may declare. It also bounds the part size (at most
    /// 10,000 parts), and so the largest `UploadPart` message the server accepts into memory:
    /// the default, 625 GiB, keeps parts at 64 MiB.
    pub max_session_upload_bytes: u64,
    /// A user's quota while no plan or admin limit is known.
    pub default_user_quota_bytes: u64,
    /// A tenant's quota while no plan or admin limit is known.
    pub default_tenant_quota_bytes: u64,
    /// Usage share, in percent, at which a quota's "nearly full" event is sent.
    pub quota_warning_percent: u8,
    /// How long an unfinished upload session lives after its last part.
    pub upload_session_ttl: Duration,
    /// How long a simple upload may take before its reservation counts as abandoned.
    pub simple_upload_ttl: Duration,
    /// The cleanup scheduler.
    pub cleanup: CleanupSettings,
    /// The absolute base URL clients reach this service's plain HTTP routes under, e.g.
    /// `https://files.example.com` or `http://127.0.0.1:50051`; download links are
    /// `<public_url>/files/v1/links/<token>`.
    pub public_url: String,
}

/// How the cleanup scheduler runs.
#[derive(Clone, Debug)]
pub struct CleanupSettings {
    /// Whether this replica runs due schedules at all (they still run on demand).
    pub enabled: bool,
    /// How often due schedules are looked for.
    pub poll_interval: Duration,
    /// How long a claimed schedule stays this replica's without being renewed; a replica that
    /// dies mid-run loses the schedule to another one after this.
    pub lease: Duration,
    /// This replica's name in `locked_by` and `cleanup_runs.instance_id`.
    pub instance_id: String,
}

impl Settings {
    /// The defaults, storing objects as configured.
    pub fn new(storage: StorageConfig) -> Self {
        Self {
            storage,
            max_simple_upload_bytes: 64 * MIB,
            max_session_upload_bytes: 10_000 * 64 * MIB,
            default_user_quota_bytes: 5 * GIB,
            default_tenant_quota_bytes: 100 * GIB,
            quota_warning_percent: 90,
            upload_session_ttl: Duration::from_secs(24 * 3600),
            simple_upload_ttl: Duration::from_secs(3600),
            cleanup: CleanupSettings::default(),
            public_url: DEFAULT_PUBLIC_URL.to_owned(),
        }
    }
}

impl Default for CleanupSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            poll_interval: Duration::from_secs(30),
            lease: Duration::from_secs(300),
            instance_id: format!("file-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}
