//! The orchestrator, running for real: the render module in this process on an ephemeral port,
//! over a fresh PostgreSQL database, behind the server (auth, health) the binary uses; agents
//! enrolled through the real Enroll RPC with a real join token; simulated agents speaking the
//! real Session protocol over tonic ([`agent::SimAgent`]).

#![allow(dead_code, unused_imports)]

pub mod agent;
pub mod seed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, Role, TokenSigner, TokenVerifier};
use flatrender_kit::db::{self, PoolSettings};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, Application, ServeOptions, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::Settings;
use sqlx::PgPool;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::{Interceptor, RoutesBuilder};
use tonic::transport::Channel;
use uuid::Uuid;

pub use agent::{AgentEvent, AgentSpec, Behaviour, Identity, SimAgent};
pub use seed::{JobSeed, SeededJob, seed_job, seed_snapshot};

const ISSUER: &str = "flatrender";
const AUDIENCE: &str = "flatrender-api";

/// How long a test waits for an event before it fails (a failsafe, never a pause).
pub const PATIENCE: Duration = Duration::from_secs(30);

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

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// NodeAdminService as some person.
pub type NodeAdmin = pb::node_admin_service_client::NodeAdminServiceClient<InterceptedService<Channel, Bearer>>;
/// AgentService without credentials (Enroll).
pub type AgentClient = agent_pb::agent_service_client::AgentServiceClient<Channel>;

/// One orchestrator replica and the database it runs on.
pub struct Orchestrator {
    /// The shared test database (as its owner, for assertions and seeding).
    pub db: Arc<TestDatabase>,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The settings it runs with.
    pub settings: Settings,
    channel: Channel,
    signer: Arc<TokenSigner>,
    shutdown: Arc<Shutdown>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Orchestrator {
    /// A replica with [`test_settings`] on a fresh database.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A replica with settings changed by `tweak`, on a fresh database.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        init_logs();
        let db = Arc::new(TestDatabase::migrated().await);
        let signer = Arc::new(TokenSigner::generate("test-key").expect("a signing key"));
        Self::on(db, signer, tweak).await
    }

    /// Another replica on this one's database (same token keys), settings changed by `tweak`.
    pub async fn replica(&self, tweak: impl FnOnce(&mut Settings)) -> Self {
        Self::on(Arc::clone(&self.db), Arc::clone(&self.signer), tweak).await
    }

    async fn on(db: Arc<TestDatabase>, signer: Arc<TokenSigner>, tweak: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = test_settings();
        tweak(&mut settings);
        let verifier = TokenVerifier::new(&signer.jwks().expect("a JWKS"), ISSUER, AUDIENCE).expect("a verifier");
        let shutdown = Arc::new(Shutdown::new());
        let metrics = Metrics::new();
        let pool_settings =
            PoolSettings { url: db.url().clone(), max_connections: 16, acquire_timeout: Duration::from_secs(20) };
        let pool = db::service_pool(&pool_settings, flatrender_render::ROLE, None).expect("the render pool");
        let mut routes = RoutesBuilder::default();
        let ctx = ServiceContext { pool, shutdown: shutdown.stop_signal(), metrics: metrics.clone() };
        let module = flatrender_render::module(ctx, settings.clone(), &mut routes);
        let app = Application { routes, modules: vec![module], forwarded: Vec::new() };
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("a port");
        let addr = listener.local_addr().expect("its address");
        let options =
            ServeOptions { shutdown_timeout: Duration::from_secs(2), health_interval: Duration::from_secs(1) };
        let serving = Arc::clone(&shutdown);
        let server = tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, Some(verifier), metrics, &serving, options).await {
                panic!("the render service failed: {e}");
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
            .expect("the service answers");
        Self { db, addr, settings, channel, signer, shutdown, server: Some(server) }
    }

    /// The database as its owner.
    pub fn pool(&self) -> &PgPool {
        self.db.pool()
    }

    /// An access token for a person of `role` in a tenant of their own.
    pub fn token(&self, role: Role) -> String {
        self.token_in(Uuid::new_v4(), role)
    }

    /// An access token for a new person of `role` in `tenant`.
    pub fn token_in(&self, tenant: Uuid, role: Role) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.signer
            .sign(&AccessClaims {
                iss: ISSUER.into(),
                aud: AUDIENCE.into(),
                sub: Uuid::new_v4(),
                tid: tenant,
                role,
                sid: None,
                svc: None,
                exp: now + 600,
                nbf: now,
                iat: now,
                jti: Uuid::new_v4(),
            })
            .expect("a token")
    }

    /// NodeAdminService as a person of `role`.
    pub fn node_admin(&self, role: Role) -> NodeAdmin {
        NodeAdmin::new(self.authed(&self.token(role)))
    }

    /// The channel with `token` as the bearer of every call.
    pub fn authed(&self, token: &str) -> InterceptedService<Channel, Bearer> {
        let value = format!("Bearer {token}").parse().expect("an ASCII header");
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    /// AgentService without credentials.
    pub fn agent_client(&self) -> AgentClient {
        AgentClient::new(self.channel.clone())
            .max_decoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
            .max_encoding_message_size(flatrender_render::AGENT_TRANSPORT_LIMIT_BYTES)
    }

    /// A channel to this replica.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
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

    /// Rows of a query that returns one count.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned())).fetch_one(self.pool()).await.expect(sql)
    }

    /// Outbox payloads of `event_type` (full proto name), oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM platform.outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(self.pool())
            .await
            .expect("reading the outbox")
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
