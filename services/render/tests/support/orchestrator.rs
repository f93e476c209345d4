//! The orchestrator, running for real: the render module in this process on an ephemeral port,
//! over a fresh PostgreSQL database, behind the server (auth, health) the binary uses. Either
//! render alone with short timings ([`Orchestrator::start`]), or render and the file service on
//! one port as `--target render,file` runs them, render checking files through the file service
//! over gRPC with its service credential ([`Orchestrator::start_with_files`]). Clients carry
//! real Ed25519 access tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, Role, TokenSigner, TokenVerifier};
use flatrender_kit::db::{self, PoolSettings};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, Application, ServeOptions, ServerTls, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::Settings;
use flatrender_render::files::FileServiceSettings;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use uuid::Uuid;

use super::PATIENCE;
use super::agent::{AgentSpec, Identity, SimAgent, UploadLedger};
use super::api::{AgentClient, Assets, Authed, Bearer, NodeAdmin, PNG, Principal, RenderAdmin, Renders, TEMPLATE};

/// The issuer of the test access tokens.
pub const ISSUER: &str = "flatrender";
/// The audience of the test access tokens.
pub const AUDIENCE: &str = "flatrender-api";

/// Settings with short timings, so lost nodes are noticed within a test's patience (and
/// heartbeats with room to spare on a busy machine).
pub fn test_settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_secs(2),
        lease_ttl: Duration::from_secs(10),
        reconnect_grace: Duration::from_millis(1500),
        hello_timeout: Duration::from_secs(2),
        replica_heartbeat_interval: Duration::from_millis(300),
        dispatch_poll_interval: Duration::from_millis(500),
        health_flush_interval: Duration::from_millis(200),
        enroll_attempts_per_minute: 10_000,
        ..Settings::default()
    }
}

/// One orchestrator replica (with the file service beside it, or not) and the database it runs
/// on.
pub struct Orchestrator {
    /// The shared test database (as its owner, for assertions and seeding).
    pub db: Arc<TestDatabase>,
    /// Its gRPC (and grpc-web) address.
    pub addr: SocketAddr,
    /// The render settings it runs with.
    pub settings: Settings,
    /// The process's metrics.
    pub metrics: Metrics,
    /// Where its simulated agents record their frame uploads.
    pub uploads: Arc<UploadLedger>,
    channel: Channel,
    signer: Arc<TokenSigner>,
    shutdown: Arc<Shutdown>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The file service's storage, while it runs.
    _files: Option<tempfile::TempDir>,
}

impl Orchestrator {
    /// Render alone with [`test_settings`] on a fresh database.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Render alone with [`test_settings`] changed by `tweak`, on a fresh database.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::launch(Arc::new(TestDatabase::migrated().await), None, test_settings(), None, tweak).await
    }

    /// Render and the file service on a fresh database and a scratch directory, render with
    /// default settings (production timings) checking files through the file service.
    pub async fn start_with_files() -> Self {
        Self::start_with_files_and(|_| {}).await
    }

    /// [`Orchestrator::start_with_files`], render's settings changed by `tweak` (after the file
    /// service is set, so `tweak` may replace it).
    pub async fn start_with_files_and(tweak: impl FnOnce(&mut Settings)) -> Self {
        let files = tempfile::tempdir().expect("a scratch directory");
        let db = Arc::new(TestDatabase::migrated().await);
        Self::launch(db, None, Settings::default(), Some(files), tweak).await
    }

    /// Render and the file service with [`test_settings`], the port speaking TLS only with
    /// `tls`; the harness's own channel trusts `ca_pem`.
    pub async fn start_tls(tls: ServerTls, ca_pem: &[u8]) -> Self {
        let files = tempfile::tempdir().expect("a scratch directory");
        let db = Arc::new(TestDatabase::migrated().await);
        Self::launch_with(db, None, test_settings(), Some(files), Some((tls, ca_pem.to_vec())), |_| {}).await
    }

    /// Another replica (render alone) on this one's database, with the same token keys and
    /// [`test_settings`] changed by `tweak`.
    pub async fn replica(&self, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::launch(Arc::clone(&self.db), Some(Arc::clone(&self.signer)), test_settings(), None, tweak).await
    }

    /// Serves render (`base` changed by `tweak`) on `db`, with the file service when `files`
    /// gives it a storage directory; a new signing key unless `signer` is given.
    async fn launch(
        db: Arc<TestDatabase>,
        signer: Option<Arc<TokenSigner>>,
        base: Settings,
        files: Option<tempfile::TempDir>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        Self::launch_with(db, signer, base, files, None, tweak).await
    }

    /// [`Orchestrator::launch`], serving TLS with `tls` (an identity and the CA that signed it).
    async fn launch_with(
        db: Arc<TestDatabase>,
        signer: Option<Arc<TokenSigner>>,
        base: Settings,
        files: Option<tempfile::TempDir>,
        tls: Option<(ServerTls, Vec<u8>)>,
        tweak: impl FnOnce(&mut Settings),
    ) -> Self {
        init_logs();
        let signer = signer.unwrap_or_else(|| Arc::new(TokenSigner::generate("test-key").expect("a signing key")));
        let verifier = TokenVerifier::new(&signer.jwks().expect("a JWKS"), ISSUER, AUDIENCE).expect("a verifier");
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        // With TLS, render reaches the file service on a plain loopback listener, as the
        // `flatrender` binary does.
        let internal = match &tls {
            Some(_) => Some(server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("a port")),
            None => None,
        };
        let file_addr = internal.as_ref().map_or(addr, |l| l.local_addr().expect("its address"));

        let mut settings = base;
        if files.is_some() {
            settings.api.file_service = Some(FileServiceSettings {
                url: format!("http://{file_addr}"),
                signer: (*signer).clone(),
                issuer: ISSUER.into(),
                audience: AUDIENCE.into(),
            });
        }
        tweak(&mut settings);

        let shutdown = Arc::new(Shutdown::new());
        let metrics = Metrics::new();
        let mut routes = RoutesBuilder::default();
        let mut modules = Vec::new();
        if let Some(dir) = &files {
            let mut file_settings = flatrender_file::Settings::new(flatrender_file::storage::StorageConfig::local(
                dir.path().join("objects"),
            ));
            file_settings.cleanup.enabled = false;
            let ctx = ServiceContext {
                pool: db.service_pool(flatrender_file::ROLE),
                shutdown: shutdown.stop_signal(),
                metrics: metrics.clone(),
            };
            modules.push(flatrender_file::module(ctx, file_settings, &mut routes).expect("the file module"));
        }
        // Room for many agents' reports at once (the benchmark connects thousands).
        let pool_settings =
            PoolSettings { url: db.url().clone(), max_connections: 16, acquire_timeout: Duration::from_secs(20) };
        let pool = db::service_pool(&pool_settings, flatrender_render::ROLE, None).expect("the render pool");
        let ctx = ServiceContext { pool, shutdown: shutdown.stop_signal(), metrics: metrics.clone() };
        modules.push(flatrender_render::module(ctx, settings.clone(), &mut routes));
        let app = Application { routes, modules, forwarded: Vec::new() };
        let (server_tls, ca_pem) = tls.map_or((None, None), |(identity, ca)| (Some(identity), Some(ca)));
        let options = ServeOptions {
            shutdown_timeout: Duration::from_secs(2),
            health_interval: Duration::from_secs(1),
            tls: server_tls,
            internal,
            edge: None,
        };
        let serving = Arc::clone(&shutdown);
        let serving_metrics = metrics.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, Some(verifier), serving_metrics, &serving, options).await {
                panic!("the services failed: {e}");
            }
        });
        let endpoint = match &ca_pem {
            Some(ca) => Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .expect("a URI")
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))
                .expect("a TLS configuration"),
            None => Channel::from_shared(format!("http://{addr}")).expect("a URI"),
        };
        let channel = endpoint.connect().await.expect("the services answer");
        let uploads = UploadLedger::new(db.pool().clone());
        Self { db, addr, settings, metrics, uploads, channel, signer, shutdown, server: Some(server), _files: files }
    }

    /// The database as its owner.
    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// A channel to this replica (for clients this harness does not wrap).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// An access token for `who`.
    pub fn token_for(&self, who: &Principal) -> String {
        flatrender_kit::testing::access_token(&self.signer, ISSUER, AUDIENCE, who)
    }

    /// An access token for a person of `role` in a tenant of their own.
    pub fn token(&self, role: Role) -> String {
        self.token_in(Uuid::new_v4(), role)
    }

    /// An access token for a new person of `role` in `tenant`.
    pub fn token_in(&self, tenant: Uuid, role: Role) -> String {
        self.token_for(&Principal { role, ..Principal::user(tenant) })
    }

    /// The channel with `token` as the bearer of every call.
    pub fn authed(&self, token: &str) -> Authed {
        let value = format!("Bearer {token}").parse().expect("an ASCII header");
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    /// RenderService as `who`.
    pub fn renders(&self, who: &Principal) -> Renders {
        Renders::new(self.authed(&self.token_for(who))).max_decoding_message_size(16 << 20)
    }

    /// NodeAdminService as a person of `role`.
    pub fn node_admin(&self, role: Role) -> NodeAdmin {
        NodeAdmin::new(self.authed(&self.token(role)))
    }

    /// RenderAdminService as a person of `role`.
    pub fn render_admin(&self, role: Role) -> RenderAdmin {
        RenderAdmin::new(self.authed(&self.token(role)))
    }

    /// AgentService without credentials.
    pub fn agent_client(&self) -> AgentClient {
        AgentClient::new(self.channel.clone())
            .max_decoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
            .max_encoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
    }

    /// A fresh join token (created by a platform admin through the API) giving `tags`.
    pub async fn join_token(&self, tags: &[&str]) -> String {
        let request = pb::CreateEnrollmentTokenRequest {
            description: "test".into(),
            ttl: None,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        };
        self.node_admin(Role::PlatformAdmin)
            .create_enrollment_token(request)
            .await
            .expect("a join token")
            .into_inner()
            .secret
    }

    /// Enrols a node for `spec` through the real Enroll RPC with a fresh join token.
    pub async fn enroll(&self, spec: &AgentSpec) -> Identity {
        let token = self.join_token(&[]).await;
        let response = self.agent_client().enroll(spec.enroll_request(&token)).await.expect("enrolment").into_inner();
        Identity {
            node_id: response.node_id.parse().expect("a node id"),
            credential: response.node_credential,
            name: response.name,
        }
    }

    /// Enrols a node for `spec` and connects a simulated agent for it.
    pub async fn agent(&self, spec: AgentSpec) -> SimAgent {
        let identity = self.enroll(&spec).await;
        SimAgent::connect(self, identity, spec).await
    }

    /// Uploads `data` as `name` of `kind` through the file service, as `who` (a service
    /// credential stores a tenant-owned file of `tenant`).
    pub async fn upload(
        &self,
        who: &Principal,
        tenant: Uuid,
        name: &str,
        kind: file_pb::FileKind,
        data: &[u8],
    ) -> file_pb::File {
        use file_pb::upload_file_request::Payload;
        let mut uploads = file_pb::upload_service_client::UploadServiceClient::new(self.authed(&self.token_for(who)));
        let target = file_pb::UploadTarget {
            name: name.into(),
            kind: kind as i32,
            tenant_id: if who.service.is_some() { tenant.to_string() } else { String::new() },
            ..Default::default()
        };
        let metadata = file_pb::UploadFileMetadata {
            target: Some(target),
            size_bytes: data.len() as u64,
            sha256: super::api::sha256_hex(data),
            idempotency_key: String::new(),
        };
        // In parts of 1 MiB, as clients must (a message is at most 4 MiB).
        let parts = data
            .chunks(1 << 20)
            .map(|part| file_pb::UploadFileRequest { payload: Some(Payload::Chunk(part.to_vec().into())) });
        let messages: Vec<_> =
            std::iter::once(file_pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) })
                .chain(parts)
                .collect();
        let response = uploads.upload_file(futures_util::stream::iter(messages)).await.expect("an upload");
        response.into_inner().file.expect("a file")
    }

    /// The files a job of `who` needs: a template bundle, an image and two audio tracks.
    pub async fn assets(&self, who: &Principal) -> Assets {
        let template = self.upload(who, who.tenant, "template.zip", file_pb::FileKind::TemplateBundle, TEMPLATE).await;
        let image = self.upload(who, who.tenant, "photo.png", file_pb::FileKind::Asset, PNG).await;
        let music = self.upload(who, who.tenant, "music.mp3", file_pb::FileKind::Audio, b"ID3 music").await;
        let voice = self.upload(who, who.tenant, "voice.mp3", file_pb::FileKind::Voiceover, b"ID3 voice").await;
        Assets { template, image, music, voice }
    }

    /// Rows of a query that returns one count.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.pool()).await.expect(sql)
    }

    /// Runs `sql` (one or more statements) as the database owner.
    pub async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(self.pool()).await.expect(sql);
    }

    /// Outbox payloads of `event_type` (full proto name), oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM platform.outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(self.pool())
            .await
            .expect("reading the outbox")
    }

    /// A listener on `channels`, as the database owner.
    pub async fn listen(&self, channels: &[&str]) -> PgListener {
        let mut listener = PgListener::connect_with(self.pool()).await.expect("a listener");
        listener.listen_all(channels.iter().copied()).await.expect("LISTEN");
        listener
    }

    /// The value of gauge `flatrender_render_watchers`.
    pub fn watchers(&self) -> i64 {
        let text = self.metrics.encode();
        text.lines()
            .find_map(|line| line.strip_prefix("flatrender_render_watchers "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the watchers gauge")
    }

    /// Waits (polling the database, as an operator would) until `sql` returns true.
    pub async fn until(&self, what: &str, sql: &str) {
        self.until_within(what, sql, PATIENCE).await;
    }

    /// [`Orchestrator::until`] with its own patience.
    pub async fn until_within(&self, what: &str, sql: &str, patience: Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let done: bool =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.pool()).await.expect(sql);
            if done {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops this replica: its background work ends (its streams end UNAVAILABLE) and the
    /// server stops.
    pub fn stop(&mut self) {
        self.shutdown.stop();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for Orchestrator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
