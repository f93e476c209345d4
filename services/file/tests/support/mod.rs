//! The file service, running for real: in this process, on an ephemeral port, over a fresh
//! PostgreSQL database and a scratch directory or a moto S3 bucket, behind the same server
//! (auth, health, grpc-web) the binary uses. Clients carry real Ed25519 access tokens.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatrender_file::Settings;
use flatrender_file::storage::{MIN_PART_SIZE, S3Config, SecretAccessKey, Storage, StorageConfig};
use flatrender_kit::auth::{TokenSigner, TokenVerifier};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, Application, ServeOptions, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as pb;
use futures_util::TryStreamExt;
use sqlx::Row;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

use super::moto::MotoServer;

const ISSUER: &str = "flatrender";
const AUDIENCE: &str = "flatrender-api";

/// Where the service under test keeps objects.
pub enum Backend {
    /// A scratch directory.
    Local,
    /// A fresh bucket on the shared moto server.
    S3,
}

pub use flatrender_kit::testing::{Bearer, Principal};

/// A channel that authenticates as one principal.
pub type Authed = InterceptedService<Channel, Bearer>;
/// FileService client.
pub type Files = pb::file_service_client::FileServiceClient<Authed>;
/// FolderService client.
pub type Folders = pb::folder_service_client::FolderServiceClient<Authed>;
/// UploadService client.
pub type Uploads = pb::upload_service_client::UploadServiceClient<Authed>;
/// QuotaService client.
pub type Quotas = pb::quota_service_client::QuotaServiceClient<Authed>;
/// CleanupService client.
pub type Cleanup = pb::cleanup_service_client::CleanupServiceClient<Authed>;

/// The running service and what it runs on.
pub struct Service {
    /// Its database (as the owner, for assertions).
    pub db: TestDatabase,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The same object storage, for assertions.
    pub storage: Storage,
    /// The settings it runs with.
    pub settings: Settings,
    channel: Channel,
    signer: TokenSigner,
    shutdown: Arc<Shutdown>,
    server: Option<tokio::task::JoinHandle<()>>,
    _place: Place,
}

enum Place {
    Directory(tempfile::TempDir),
    Bucket(Arc<MotoServer>),
}

impl Service {
    /// The service on a scratch directory, with default settings.
    pub async fn start() -> Self {
        Self::start_with(Backend::Local, |_| {}).await
    }

    /// The service on `backend`, with settings changed by `tweak` (S3's smallest part size, so
    /// a few megabytes already make multipart uploads; cleanup polling off unless asked).
    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Self {
        let (storage_config, place) = match backend {
            Backend::Local => {
                let dir = tempfile::tempdir().expect("a scratch directory");
                (StorageConfig::local(dir.path().join("objects")), Place::Directory(dir))
            }
            Backend::S3 => {
                let server = MotoServer::shared();
                let bucket = server.create_bucket();
                let config = StorageConfig::s3(S3Config {
                    endpoint: Some(server.endpoint()),
                    region: "us-east-1".into(),
                    bucket,
                    access_key_id: "flatrender-test".into(),
                    secret_access_key: SecretAccessKey::new("flatrender-test-secret"),
                    path_style: true,
                    allow_http: true,
                });
                (config, Place::Bucket(server))
            }
        };
        let mut settings = Settings::new(storage_config.with_part_size(MIN_PART_SIZE));
        settings.cleanup.enabled = false;
        tweak(&mut settings);

        let db = TestDatabase::migrated().await;
        let signer = TokenSigner::generate("test-key").expect("a signing key");
        let verifier = TokenVerifier::new(&signer.jwks().expect("a JWKS"), ISSUER, AUDIENCE).expect("a verifier");
        let shutdown = Arc::new(Shutdown::new());
        let metrics = Metrics::new();
        let mut routes = RoutesBuilder::default();
        let ctx = ServiceContext {
            pool: db.service_pool(flatrender_file::ROLE),
            shutdown: shutdown.stop_signal(),
            metrics: metrics.clone(),
        };
        let module = flatrender_file::module(ctx, settings.clone(), &mut routes).expect("the file module");
        let app = Application { routes, modules: vec![module], forwarded: Vec::new() };
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let options = ServeOptions {
            shutdown_timeout: Duration::from_secs(5),
            health_interval: Duration::from_secs(1),
            tls: None,
            internal: None,
            edge: None,
        };
        let serving = Arc::clone(&shutdown);
        let server = tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, Some(verifier), metrics, &serving, options).await {
                panic!("the file service failed: {e}");
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
            .expect("the service answers");
        let storage = Storage::open(&settings.storage).expect("the same storage");
        Self { db, addr, storage, settings, channel, signer, shutdown, server: Some(server), _place: place }
    }

    /// An access token for `who`.
    pub fn token(&self, who: &Principal) -> String {
        flatrender_kit::testing::access_token(&self.signer, ISSUER, AUDIENCE, who)
    }

    fn authed(&self, who: &Principal) -> Authed {
        let value = format!("Bearer {}", self.token(who)).parse().expect("an ASCII header");
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    /// FileService as `who`.
    pub fn files(&self, who: &Principal) -> Files {
        Files::new(self.authed(who)).max_decoding_message_size(8 << 20)
    }

    /// FolderService as `who`.
    pub fn folders(&self, who: &Principal) -> Folders {
        Folders::new(self.authed(who))
    }

    /// UploadService as `who`.
    pub fn uploads(&self, who: &Principal) -> Uploads {
        Uploads::new(self.authed(who)).max_encoding_message_size(80 << 20)
    }

    /// QuotaService as `who`.
    pub fn quotas(&self, who: &Principal) -> Quotas {
        Quotas::new(self.authed(who))
    }

    /// CleanupService as `who`.
    pub fn cleanup(&self, who: &Principal) -> Cleanup {
        Cleanup::new(self.authed(who))
    }

    /// Every object key in storage, sorted.
    pub async fn object_keys(&self) -> Vec<String> {
        let root = flatrender_file::storage::ObjectKey::new("tenants").expect("a key");
        let uploads = flatrender_file::storage::ObjectKey::uploads();
        let mut keys: Vec<String> = Vec::new();
        for prefix in [root, uploads] {
            let found: Vec<_> = self.storage.list(&prefix).try_collect().await.expect("listing objects");
            keys.extend(found.into_iter().map(|info| info.key.to_string()));
        }
        keys.sort();
        keys
    }

    /// Rows of a `file_mgr` table.
    pub async fn rows(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM file_mgr.{table}")))
            .fetch_one(self.db.pool())
            .await
            .expect("counting rows")
    }

    /// What a failed call must leave unchanged: objects, rows of every table, and each quota's
    /// used and reserved bytes and file count.
    pub async fn footprint(&self) -> Footprint {
        let mut rows = Vec::new();
        for table in ["files", "folders", "upload_parts", "cleanup_run_items"] {
            rows.push((table, self.rows(table).await));
        }
        let active: i64 =
            sqlx::query_scalar("SELECT count(*) FROM file_mgr.upload_sessions WHERE state IN ('active', 'completing')")
                .fetch_one(self.db.pool())
                .await
                .expect("counting sessions");
        rows.push(("unfinished upload_sessions", active));
        let quotas = sqlx::query(
            "SELECT tenant_id, user_id, used_bytes, reserved_bytes, file_count FROM file_mgr.quotas
              ORDER BY tenant_id, user_id NULLS FIRST",
        )
        .fetch_all(self.db.pool())
        .await
        .expect("reading quotas")
        .iter()
        .map(|row| {
            (
                row.get::<Uuid, _>("tenant_id"),
                row.get::<Option<Uuid>, _>("user_id"),
                row.get::<i64, _>("used_bytes"),
                row.get::<i64, _>("reserved_bytes"),
                row.get::<i64, _>("file_count"),
            )
        })
        .collect();
        Footprint { objects: self.object_keys().await, rows, quotas }
    }

    /// Outbox events of `event_type` (full proto name), oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM platform.outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(self.db.pool())
            .await
            .expect("reading the outbox")
    }
}

/// A file to seed straight into storage and the database (for tests of calls that need files
/// to exist, independent of the upload API). Charged to quotas through the real ledger.
pub struct Seed<'a> {
    /// Tenant.
    pub tenant: Uuid,
    /// Owner; `None` for tenant-owned.
    pub owner: Option<Uuid>,
    /// Folder.
    pub folder: Option<Uuid>,
    /// Name.
    pub name: &'a str,
    /// Kind as stored (`asset`, `render_chunk`, ...).
    pub kind: &'a str,
    /// Bytes.
    pub data: &'a [u8],
    /// Counts toward quotas.
    pub counted: bool,
}

impl Service {
    /// Stores `seed` and returns its file id.
    pub async fn seed_file(&self, seed: Seed<'_>) -> Uuid {
        let id = Uuid::new_v4();
        let key = flatrender_file::storage::ObjectKey::file(seed.tenant, id);
        let chunk = bytes::Bytes::copy_from_slice(seed.data);
        let stored = self
            .storage
            .put(&key, futures_util::stream::iter([Ok::<_, std::io::Error>(chunk)]), Default::default())
            .await
            .expect("storing a seed object");
        let mut tx = self.db.pool().begin().await.expect("a transaction");
        if seed.counted {
            let ledger = flatrender_file::ledger::Ledger::new(&self.settings);
            if let Err(refusal) = ledger.charge(&mut tx, seed.tenant, seed.owner, stored.size).await {
                panic!("seeding {}: {refusal:?}", seed.name);
            }
        }
        sqlx::query(
            "INSERT INTO file_mgr.files (id, tenant_id, owner_user_id, folder_id, name, kind, size_bytes, sha256,
                 content_type, storage_backend, storage_key, counts_toward_quota)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(id)
        .bind(seed.tenant)
        .bind(seed.owner)
        .bind(seed.folder)
        .bind(seed.name)
        .bind(seed.kind)
        .bind(i64::try_from(stored.size).expect("a small seed"))
        .bind(stored.sha256.as_bytes().as_slice())
        .bind(flatrender_file::sniff::content_type(seed.data))
        .bind(self.storage.backend().as_str())
        .bind(key.as_str())
        .bind(seed.counted)
        .execute(&mut *tx)
        .await
        .expect("inserting a seed file");
        tx.commit().await.expect("committing a seed file");
        id
    }
}

/// Objects, rows and quota usage at one moment (see [`Service::footprint`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Object keys.
    pub objects: Vec<String>,
    /// Row counts per table.
    pub rows: Vec<(&'static str, i64)>,
    /// (tenant, user, used, reserved, files) per quota.
    pub quotas: Vec<(Uuid, Option<Uuid>, i64, i64, i64)>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.stop();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Deterministic test bytes: `len` bytes from `seed`.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// The lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    flatrender_file::storage::Sha256Digest::of(data).to_hex()
}

/// The code and message of a failed call, panicking with the response when it succeeded.
pub fn failure<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (tonic::Code, String) {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// The bytes stored for `file`.
pub async fn stored(service: &Service, file: &pb::File) -> Vec<u8> {
    let key = flatrender_file::storage::ObjectKey::file(file.tenant_id.parse().unwrap(), file.id.parse().unwrap());
    let read = service.storage.get(&key, flatrender_file::storage::ByteRange::ALL).await.expect("reading an object");
    let chunks: Vec<bytes::Bytes> = read.bytes.try_collect().await.expect("reading an object");
    chunks.concat()
}

/// The gRPC code of a failed call, panicking with the response when it succeeded.
pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> tonic::Code {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => status.code(),
    }
}

// -----------------------------------------------------------------------------------------------
// Quotas and cleanup (added with QuotaService and CleanupService)
// -----------------------------------------------------------------------------------------------

impl Service {
    /// Polls GetCleanupRun as a platform admin until run `id` has finished (20 s deadline).
    pub async fn finished_run(&self, id: &str) -> pb::CleanupRun {
        let mut cleanup = self.cleanup(&Principal::platform_admin());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let request = pb::GetCleanupRunRequest { run_id: id.to_owned() };
            let run = cleanup.get_cleanup_run(request).await.expect("the run").into_inner().run.expect("a run");
            if run.state != pb::CleanupRunState::Running as i32 {
                return run;
            }
            assert!(tokio::time::Instant::now() < deadline, "cleanup run {id} did not finish in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Runs cleanup schedule `schedule` now (as a platform admin) and waits for the run's end.
    pub async fn run_cleanup(&self, schedule: &str) -> pb::CleanupRun {
        let request = pb::RunCleanupScheduleRequest { schedule_id: schedule.to_owned() };
        let mut cleanup = self.cleanup(&Principal::platform_admin());
        let run = cleanup.run_cleanup_schedule(request).await.expect("a started run").into_inner().run.expect("a run");
        self.finished_run(&run.id).await
    }
}

// -----------------------------------------------------------------------------
// Uploads (tests/uploads.rs, tests/upload_sessions.rs)
// -----------------------------------------------------------------------------

/// A mebibyte.
pub const MIB: usize = 1024 * 1024;

/// `UploadFile` metadata for `data` called `name`, with its SHA-256.
pub fn metadata(name: &str, data: &[u8]) -> pb::UploadFileMetadata {
    pb::UploadFileMetadata {
        target: Some(pb::UploadTarget { name: name.into(), ..Default::default() }),
        size_bytes: data.len() as u64,
        sha256: sha256_hex(data),
        idempotency_key: String::new(),
    }
}

/// The messages of an upload: `metadata`, then `data` in chunks of `chunk` bytes.
pub fn messages(metadata: pb::UploadFileMetadata, data: &[u8], chunk: usize) -> Vec<pb::UploadFileRequest> {
    use pb::upload_file_request::Payload;
    let mut all = vec![pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) }];
    all.extend(data.chunks(chunk).map(|c| pb::UploadFileRequest { payload: Some(Payload::Chunk(c.to_vec().into())) }));
    all
}

/// Sends `messages` as one upload.
pub async fn send(client: &mut Uploads, messages: Vec<pb::UploadFileRequest>) -> Result<pb::File, tonic::Status> {
    let response = client.upload_file(futures_util::stream::iter(messages)).await?;
    Ok(response.into_inner().file.expect("a file"))
}

/// Uploads `data` as `name` in 1 MiB chunks.
pub async fn upload(client: &mut Uploads, name: &str, data: &[u8]) -> Result<pb::File, tonic::Status> {
    send(client, messages(metadata(name, data), data, MIB)).await
}

impl Service {
    /// Inserts a folder straight into the database and returns its id.
    pub async fn seed_folder(&self, tenant: Uuid, owner: Option<Uuid>, name: &str) -> Uuid {
        sqlx::query_scalar(
            "INSERT INTO file_mgr.folders (tenant_id, owner_user_id, name) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(tenant)
        .bind(owner)
        .bind(name)
        .fetch_one(self.db.pool())
        .await
        .expect("inserting a folder")
    }

    /// (used, reserved, file count) of a quota; zeros when it does not exist yet.
    pub async fn quota_usage(&self, tenant: Uuid, user: Option<Uuid>) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT used_bytes, reserved_bytes, file_count FROM file_mgr.quotas
              WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2",
        )
        .bind(tenant)
        .bind(user)
        .fetch_optional(self.db.pool())
        .await
        .expect("reading a quota")
        .unwrap_or((0, 0, 0))
    }
}

// -----------------------------------------------------------------------------
// Download links (tests/download_links.rs)
// -----------------------------------------------------------------------------

impl Service {
    /// A download link's URL on this test server: its path on [`Service::addr`] (the URL's
    /// origin is the configured public URL, where clients would reach the server).
    pub fn on_this_server(&self, url: &str) -> String {
        let at = url.find("/files/v1/links/").unwrap_or_else(|| panic!("{url} is not a download link"));
        format!("http://{}{}", self.addr, &url[at..])
    }
}
