//! The identity service, running for real: in this process, on an ephemeral port, over a fresh
//! PostgreSQL database, behind the same server (token layer, health, grpc-web) the binary uses.
//! The server's token verifier trusts exactly what identity publishes, as in `--target all`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flatrender_identity::Settings;
use flatrender_kit::auth::{ServiceName, TokenSigner, TokenVerifier};
use flatrender_kit::metrics::Metrics;
use flatrender_kit::server::{self, Application, ServeOptions, ServiceContext};
use flatrender_kit::shutdown::Shutdown;
use flatrender_kit::testing::{Bearer, TestDatabase};
use flatrender_proto::flatrender::identity::v1 as pb;
use tonic::service::RoutesBuilder;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

pub const ISSUER: &str = "flatrender";
pub const AUDIENCE: &str = "flatrender-api";
/// The default tenant.
pub const DEFAULT_TENANT: Uuid = Uuid::from_u128(1);
/// A password every test account uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// A channel that sends one bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// The running service.
pub struct Service {
    /// Its database (as the owner, for assertions and set-up).
    pub db: TestDatabase,
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The verifier the server checks tokens with.
    pub verifier: TokenVerifier,
    /// Signs service credentials the server trusts (a fixed key beside identity's).
    service_signer: TokenSigner,
    channel: Channel,
    shutdown: Arc<Shutdown>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// An account with its tokens.
pub struct Account {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub tokens: pb::TokenPair,
}

impl Service {
    /// The service with default settings.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// The service with settings changed by `tweak`.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Self {
        let db = TestDatabase::migrated().await;
        let service_signer = TokenSigner::generate("test-services").expect("a key");
        let verifier =
            TokenVerifier::new(&service_signer.jwks().expect("a JWKS"), ISSUER, AUDIENCE).expect("a verifier");
        let mut settings = Settings::new(ISSUER, AUDIENCE);
        settings.verifiers.push(verifier.clone());
        tweak(&mut settings);
        let shutdown = Arc::new(Shutdown::new());
        let metrics = Metrics::new();
        let mut routes = RoutesBuilder::default();
        let ctx = ServiceContext {
            pool: db.service_pool(flatrender_identity::ROLE),
            shutdown: shutdown.stop_signal(),
            metrics: metrics.clone(),
        };
        let module = flatrender_identity::module(ctx, settings, &mut routes).expect("the identity module");
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
        let server_verifier = verifier.clone();
        let server = tokio::spawn(async move {
            if let Err(e) = server::serve(listener, app, Some(server_verifier), metrics, &serving, options).await {
                panic!("the identity service failed: {e}");
            }
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("a URI")
            .connect()
            .await
            .expect("the service answers");
        Self { db, addr, verifier, service_signer, channel, shutdown, server: Some(server) }
    }

    fn authed(&self, token: &str) -> Authed {
        let value = format!("Bearer {token}").parse().expect("an ASCII header");
        InterceptedService::new(self.channel.clone(), Bearer(value))
    }

    /// AuthService without a token.
    pub fn auth(&self) -> pb::auth_service_client::AuthServiceClient<Channel> {
        pb::auth_service_client::AuthServiceClient::new(self.channel.clone())
    }

    /// AuthService with `token`.
    pub fn auth_as(&self, token: &str) -> pb::auth_service_client::AuthServiceClient<Authed> {
        pb::auth_service_client::AuthServiceClient::new(self.authed(token))
    }

    /// MfaService with `token`.
    pub fn mfa_as(&self, token: &str) -> pb::mfa_service_client::MfaServiceClient<Authed> {
        pb::mfa_service_client::MfaServiceClient::new(self.authed(token))
    }

    /// A service credential of `service`.
    pub fn service_token(&self, service: ServiceName) -> String {
        let who = flatrender_kit::testing::Principal::service(service);
        flatrender_kit::testing::access_token(&self.service_signer, ISSUER, AUDIENCE, &who)
    }

    /// ApiKeyService with `token`.
    pub fn api_keys_as(&self, token: &str) -> pb::api_key_service_client::ApiKeyServiceClient<Authed> {
        pb::api_key_service_client::ApiKeyServiceClient::new(self.authed(token))
    }

    /// A channel that sends `token`, for any client.
    pub fn channel_as(&self, token: &str) -> Authed {
        self.authed(token)
    }

    /// UserService with `token`.
    pub fn users_as(&self, token: &str) -> pb::user_service_client::UserServiceClient<Authed> {
        pb::user_service_client::UserServiceClient::new(self.authed(token))
    }

    /// SigningKeyService with `token`.
    pub fn keys_as(&self, token: &str) -> pb::signing_key_service_client::SigningKeyServiceClient<Authed> {
        pb::signing_key_service_client::SigningKeyServiceClient::new(self.authed(token))
    }

    /// Registers `email` in `tenant` and returns the user id.
    pub async fn register(&self, tenant: Uuid, email: &str) -> Uuid {
        let response = self
            .auth()
            .register(pb::RegisterRequest {
                email: email.into(),
                password: PASSWORD.into(),
                display_name: "Test User".into(),
                tenant_id: tenant.to_string(),
                ..Default::default()
            })
            .await
            .expect("registering")
            .into_inner();
        response.user.expect("the user").id.parse().expect("a UUID")
    }

    /// Marks the user's email verified, as VerifyEmail would.
    pub async fn mark_verified(&self, user: Uuid) {
        sqlx::query("UPDATE identity.users SET email_verified_at = now() WHERE id = $1")
            .bind(user)
            .execute(self.db.pool())
            .await
            .expect("verifying");
    }

    /// Logs `email` in and returns the token pair (no MFA).
    pub async fn login(&self, tenant: Uuid, email: &str) -> pb::TokenPair {
        let response = self
            .auth()
            .login(pb::LoginRequest { email: email.into(), password: PASSWORD.into(), tenant_id: tenant.to_string() })
            .await
            .expect("logging in")
            .into_inner();
        match response.result {
            Some(pb::login_response::Result::Tokens(tokens)) => tokens,
            other => panic!("expected tokens, got {other:?}"),
        }
    }

    /// A registered, verified, logged-in account with `role` in `tenant`.
    pub async fn account(&self, tenant: Uuid, role: &str) -> Account {
        let email = format!("{}@example.com", Uuid::new_v4().simple());
        let user_id = self.register(tenant, &email).await;
        self.mark_verified(user_id).await;
        sqlx::query("UPDATE identity.users SET role = $2 WHERE id = $1")
            .bind(user_id)
            .bind(role)
            .execute(self.db.pool())
            .await
            .expect("setting the role");
        let tokens = self.login(tenant, &email).await;
        Account { user_id, tenant_id: tenant, email, tokens }
    }

    /// A new active tenant.
    pub async fn tenant(&self) -> Uuid {
        let slug = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        sqlx::query_scalar("INSERT INTO identity.tenants (slug, name) VALUES ($1, 'Tenant') RETURNING id")
            .bind(slug)
            .fetch_one(self.db.pool())
            .await
            .expect("creating a tenant")
    }

    /// Outbox events of `event_type` (full proto name), oldest first.
    pub async fn events(&self, event_type: &str) -> Vec<Vec<u8>> {
        sqlx::query_scalar("SELECT payload FROM platform.outbox WHERE event_type = $1 ORDER BY id")
            .bind(event_type)
            .fetch_all(self.db.pool())
            .await
            .expect("reading the outbox")
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}
