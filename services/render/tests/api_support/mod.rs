//! The render service and the file service, running for real in this process on one ephemeral
//! port (as `--target render,file` runs them), over a fresh PostgreSQL database and a scratch
//! directory. Render checks files through the file service over gRPC with its service
//! credential; clients carry real Ed25519 access tokens.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, Role, ServiceName, TokenSigner, TokenVerifier};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, Application, ServeOptions, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::files::FileServiceSettings;
use sha2::Digest as _;
use sqlx::postgres::PgListener;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, RoutesBuilder};
use tonic::transport::Channel;
use uuid::Uuid;

pub const ISSUER: &str = "flatrender";
pub const AUDIENCE: &str = "flatrender-api";

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Tenant (nil for services).
    pub tenant: Uuid,
    /// User (nil for services).
    pub user: Uuid,
    /// Role.
    pub role: Role,
    /// The service of a service credential.
    pub service: Option<ServiceName>,
}

impl Principal {
    /// A new user of `tenant`.
    pub fn user(tenant: Uuid) -> Self {
        Self { tenant, user: Uuid::new_v4(), role: Role::User, service: None }
    }

    /// A new tenant admin of `tenant`.
    pub fn admin(tenant: Uuid) -> Self {
        Self { role: Role::TenantAdmin, ..Self::user(tenant) }
    }

    /// A service credential.
    pub fn service(service: ServiceName) -> Self {
        Self { tenant: Uuid::nil(), user: Uuid::nil(), role: Role::User, service: Some(service) }
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A channel that authenticates as one principal.
pub type Authed = InterceptedService<Channel, Bearer>;
/// RenderService client.
pub type Renders = pb::render_service_client::RenderServiceClient<Authed>;

/// Both services and what they run on.
pub struct Stack {
    /// The database (as its owner, for assertions).
    pub db: TestDatabase,
    /// The gRPC (and grpc-web) address.
    pub addr: SocketAddr,
    /// The process's metrics.
    pub metrics: Metrics,
    channel: Channel,
    signer: TokenSigner,
    shutdown: Arc<Shutdown>,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Stack {
    /// Both services with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Both services, render's settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut flatrender_render::Settings)) -> Self {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let db = TestDatabase::migrated().await;
        let signer = TokenSigner::generate("test-key").expect("a signing key");
        let verifier = TokenVerifier::new(&signer.jwks().expect("a JWKS"), ISSUER, AUDIENCE).expect("a verifier");
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("a port");
        let addr = listener.local_addr().expect("its address");

        let mut files =
            flatrender_file::Settings::new(flatrender_file::storage::StorageConfig::local(dir.path().join("objects")));
        files.cleanup.enabled = false;
        let mut render = flatrender_render::Settings::default();
        render.api.file_service = Some(FileServiceSettings {
            url: format!("http://{addr}"),
            signer: signer.clone(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        });
        tweak(&mut render);

        let shutdown = Arc::new(Shutdown::new());
        let metrics = Metrics::new();
        let mut routes = RoutesBuilder::default();
        let ctx = |role| ServiceContext {
            pool: db.service_pool(role),
            shutdown: shutdown.stop_signal(),
            metrics: metrics.clone(),
        };
        let file = flatrender_file::module(ctx(flatrender_file::ROLE), files, &mut routes).expect("the file module");
        let render = flatrender_render::module(ctx(flatrender_render::ROLE), render, &mut routes);
        let app = Application { routes, modules: vec![file, render], forwarded: Vec::new() };
        let options =
            ServeOptions { shutdown_timeout: Duration::from_secs(5), health_interval: Duration::from_secs(1) };
        let serving = Arc::clone(&shutdown);
        let serving_metrics = metrics.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, Some(verifier), serving_metrics, &serving, options).await {
                panic!("the services failed: {e}");
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
            .expect("the services answer");
        Self { db, addr, metrics, channel, signer, shutdown, server: Some(server), _dir: dir }
    }

    /// A channel to both services (for clients this module does not wrap, such as agents).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// An access token for `who`.
    pub fn token(&self, who: &Principal) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.signer
            .sign(&AccessClaims {
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                sub: who.user,
                tid: who.tenant,
                role: who.role,
                sid: None,
                svc: who.service,
                exp: now + 600,
                nbf: now,
                iat: now,
                jti: Uuid::new_v4(),
            })
            .expect("a token")
    }

    fn authed(&self, who: &Principal) -> Authed {
        let value = format!("Bearer {}", self.token(who)).parse().expect("an ASCII header");
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    /// RenderService as `who`.
    pub fn renders(&self, who: &Principal) -> Renders {
        Renders::new(self.authed(who)).max_decoding_message_size(16 << 20)
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
        let mut uploads = file_pb::upload_service_client::UploadServiceClient::new(self.authed(who));
        let target = file_pb::UploadTarget {
            name: name.into(),
            kind: kind as i32,
            tenant_id: if who.service.is_some() { tenant.to_string() } else { String::new() },
            ..Default::default()
        };
        let metadata = file_pb::UploadFileMetadata {
            target: Some(target),
            size_bytes: data.len() as u64,
            sha256: sha256_hex(data),
            idempotency_key: String::new(),
        };
        let messages = vec![
            file_pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) },
            file_pb::UploadFileRequest { payload: Some(Payload::Chunk(data.to_vec().into())) },
        ];
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

    /// Rows of `sql` (a `SELECT count(*) ...`).
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.db.pool()).await.expect("counting")
    }

    /// Runs `sql` as the database owner.
    pub async fn execute(&self, sql: &str) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned())).execute(self.db.pool()).await.expect("a statement");
    }

    /// Outbox payloads of `event_type` (full proto name), oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM platform.outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(self.db.pool())
            .await
            .expect("reading the outbox")
    }

    /// A listener on `channels`, as the database owner.
    pub async fn listen(&self, channels: &[&str]) -> PgListener {
        let mut listener = PgListener::connect_with(self.db.pool()).await.expect("a listener");
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

    /// Stores a plan row for a subscriber (`user` None: the tenant's).
    pub async fn seed_plan(&self, tenant: Uuid, user: Option<Uuid>, plan: &Plan) {
        sqlx::query(
            "INSERT INTO render.plan_limits (tenant_id, user_id, plan_code, render_priority, max_width, max_height,
                 max_fps, max_video_duration_seconds, watermark, export_retention_days, monthly_render_seconds,
                 max_concurrent_renders, max_snapshots_per_hour, voiceover_enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 30, $10, $11, $12, $13)",
        )
        .bind(tenant)
        .bind(user)
        .bind(plan.code)
        .bind(plan.priority)
        .bind(plan.max_width)
        .bind(plan.max_height)
        .bind(plan.max_fps)
        .bind(plan.max_seconds)
        .bind(plan.watermark)
        .bind(plan.monthly_seconds)
        .bind(plan.concurrent)
        .bind(plan.snapshots_per_hour)
        .bind(plan.voiceover)
        .execute(self.db.pool())
        .await
        .expect("a plan row");
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.stop();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// A plan row for [`Stack::seed_plan`].
#[derive(Clone, Debug)]
pub struct Plan {
    pub code: &'static str,
    pub priority: i16,
    pub max_width: i32,
    pub max_height: i32,
    pub max_fps: i16,
    pub max_seconds: i32,
    pub watermark: bool,
    pub monthly_seconds: Option<i64>,
    pub concurrent: i32,
    pub snapshots_per_hour: Option<i32>,
    pub voiceover: bool,
}

impl Plan {
    /// Like identity's seeded `pro`.
    pub fn pro() -> Self {
        Self {
            code: "pro",
            priority: 50,
            max_width: 1920,
            max_height: 1080,
            max_fps: 60,
            max_seconds: 600,
            watermark: false,
            monthly_seconds: Some(36_000),
            concurrent: 3,
            snapshots_per_hour: Some(600),
            voiceover: true,
        }
    }

    /// Roomy limits for tests that make many jobs.
    pub fn roomy() -> Self {
        Self {
            code: "business",
            priority: 100,
            concurrent: 1000,
            monthly_seconds: None,
            snapshots_per_hour: None,
            ..Self::pro()
        }
    }
}

/// Uploaded files of one principal.
pub struct Assets {
    pub template: file_pb::File,
    pub image: file_pb::File,
    pub music: file_pb::File,
    pub voice: file_pb::File,
}

/// Template bundle bytes (a zip's magic, enough for the file service).
pub const TEMPLATE: &[u8] = b"PK\x03\x04 a template bundle with a project and its footage";
/// Image bytes (PNG magic).
pub const PNG: &[u8] = b"\x89PNG\r\n\x1a\n an image";

/// The lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// One segment of `composition` over `frames`.
pub fn segment(composition: &str, frames: &str) -> pb::Segment {
    pb::Segment { composition: composition.into(), frames: frames.into(), ..Default::default() }
}

/// A text edit of layer `layer`.
pub fn text_edit(layer: &str, text: &str) -> pb::LayerEdit {
    pb::LayerEdit {
        layer: Some(pb::layer_edit::Layer::LayerName(layer.into())),
        edit: Some(pb::layer_edit::Edit::Text(pb::TextEdit { text: text.into(), ..Default::default() })),
        ..Default::default()
    }
}

/// A media edit of layer `layer` with file `file_id`.
pub fn media_edit(layer: &str, file_id: &str) -> pb::LayerEdit {
    pb::LayerEdit {
        layer: Some(pb::layer_edit::Layer::LayerName(layer.into())),
        edit: Some(pb::layer_edit::Edit::Media(pb::MediaReplacement { file_id: file_id.into(), fit: 0 })),
        ..Default::default()
    }
}

/// An audio track of `kind` playing `file_id`.
pub fn track(kind: pb::AudioTrackKind, file_id: &str) -> pb::AudioTrack {
    pb::AudioTrack { kind: kind as i32, file_id: file_id.into(), volume: 1.0, ..Default::default() }
}

/// A small valid request: one 30-frame segment of `template`, keyed `key`.
pub fn request(template: &file_pb::File, key: &str) -> pb::SubmitRenderRequest {
    pb::SubmitRenderRequest {
        template_file_id: template.id.clone(),
        template_sha256: template.sha256.clone(),
        segments: vec![segment("Main", "0-29")],
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// The code and message of a failed call, panicking with the response when it succeeded.
pub fn failure<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (tonic::Code, String) {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Waits for a notification on `listener` (10 s at most) and returns its channel and payload.
pub async fn notification(listener: &mut PgListener) -> (String, String) {
    let received = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification in time")
        .expect("a notification");
    (received.channel().to_owned(), received.payload().to_owned())
}

/// Polls `check` every 20 ms until it holds (10 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
