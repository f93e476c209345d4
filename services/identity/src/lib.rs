//! The identity service: accounts, tokens, MFA, tenants, API keys, webhooks, usage, plans.
//!
//! Implemented: accounts and tokens (`AuthService`), MFA (`MfaService`) and the signing keys
//! (`SigningKeyService`). The other services of `flatrender.identity.v1` answer `UNIMPLEMENTED`,
//! the gRPC standard, until they land.

/// Implements `sqlx::FromRow` for a struct whose fields are named like its columns (the
/// workspace builds sqlx without its derive macros).
macro_rules! from_row {
    ($ty:ident { $($field:ident),* $(,)? }) => {
        impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for $ty {
            fn from_row(row: &'r sqlx::postgres::PgRow) -> sqlx::Result<Self> {
                use sqlx::Row as _;
                Ok(Self { $($field: row.try_get(stringify!($field))?),* })
            }
        }
    };
}

pub mod api;
pub mod client;
pub mod credentials;
pub mod error;
pub mod jwks;
pub mod keys;
pub mod request_logs;
pub mod service;
pub mod sessions;
pub mod settings;
pub mod throttle;
pub mod users;
pub mod validate;
pub mod webhooks;

use std::time::Duration;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::identity::v1 as pb;
use tonic::service::RoutesBuilder;

pub use api::IdentityApi;
pub use service::Identity;
pub use settings::Settings;

/// The database identity of the identity service.
pub const ROLE: ServiceRole = ServiceRole::IDENTITY;

/// Adds the identity services to `routes` and returns the module the server runs.
pub fn module(
    ctx: ServiceContext,
    settings: Settings,
    routes: &mut RoutesBuilder,
) -> flatrender_kit::Result<ServiceModule> {
    module_with_state(ctx, settings, routes).map(|(module, _)| module)
}

/// [`module`], and the service's state for others in the process (the gateway exchanges API
/// keys and writes request logs through it).
pub fn module_with_state(
    ctx: ServiceContext,
    settings: Settings,
    routes: &mut RoutesBuilder,
) -> flatrender_kit::Result<(ServiceModule, Identity)> {
    let refresh_every = settings.key_refresh_interval;
    let identity = Identity::new(ctx.pool.clone(), settings)
        .map_err(|e| flatrender_kit::Error::Config(format!("the identity service cannot start: {e}")))?;
    let api = IdentityApi::new(identity.clone());
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::api_key_service_server::ApiKeyServiceServer::new(api.clone()),
        pb::auth_service_server::AuthServiceServer::new(api.clone()),
        pb::billing_service_server::BillingServiceServer::new(api.clone()),
        pb::gamification_service_server::GamificationServiceServer::new(api.clone()),
        pb::mfa_service_server::MfaServiceServer::new(api.clone()),
        pb::push_subscription_service_server::PushSubscriptionServiceServer::new(api.clone()),
        pb::signing_key_service_server::SigningKeyServiceServer::new(api.clone()),
        pb::tenant_service_server::TenantServiceServer::new(api.clone()),
        pb::usage_service_server::UsageServiceServer::new(api.clone()),
        pb::user_service_server::UserServiceServer::new(api.clone()),
        pb::webhook_service_server::WebhookServiceServer::new(api),
    );
    let tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![
        (
            "partitions",
            Box::pin(flatrender_kit::db::maintain_partitions(
                ctx.pool.clone(),
                "identity.ensure_api_request_log_partitions",
                ctx.shutdown.clone(),
            )),
        ),
        ("signing-keys", Box::pin(identity.ring.clone().maintain(refresh_every, ctx.shutdown.clone()))),
        ("identity-pruning", Box::pin(prune(identity.clone(), ctx.shutdown.clone()))),
        (
            "subscription-expiry",
            Box::pin(end_lapsed_subscriptions(
                identity.pool.clone(),
                identity.settings.subscription_sweep,
                ctx.shutdown.clone(),
            )),
        ),
        ("webhook-fanout", Box::pin(webhook_fanout(identity.clone(), ctx.shutdown.clone()))),
        (
            "webhook-sender",
            Box::pin(webhooks::sender::run(
                identity.pool.clone(),
                identity.http.clone(),
                identity.settings.webhooks.clone(),
                ctx.shutdown.clone(),
            )),
        ),
    ];
    let http = Some(jwks::routes(identity.clone()));
    Ok((ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks, http }, identity))
}

/// Turns the tenants' outbox events into webhook deliveries. A new installation starts from
/// now: webhooks receive what happens after they exist, not the history.
async fn webhook_fanout(identity: Identity, signal: flatrender_kit::shutdown::ShutdownSignal) {
    let fanout =
        webhooks::fanout::Fanout { pool: identity.pool.clone(), envelopes: identity.webhook_envelopes.clone() };
    flatrender_kit::outbox::Consumer::new(identity.pool.clone(), webhooks::fanout::CONSUMER)
        .start_from_now()
        .run(fanout, signal)
        .await;
}

/// Ends the subscriptions whose period is over (see [`api::billing::end_lapsed`]).
async fn end_lapsed_subscriptions(
    pool: sqlx::PgPool,
    every: Duration,
    signal: flatrender_kit::shutdown::ShutdownSignal,
) {
    signal
        .every(Duration::from_secs(1), every, || async {
            if let Err(e) = api::billing::end_lapsed(&pool).await {
                tracing::warn!(error = %e, "ending lapsed subscriptions failed; retrying");
            }
        })
        .await;
}

/// Forgets what has stopped mattering, hourly: stale throttle rows, login attempts past their
/// 90 days, and used or expired one-time tokens after a week.
async fn prune(identity: Identity, signal: flatrender_kit::shutdown::ShutdownSignal) {
    signal
        .every(Duration::from_secs(60), Duration::from_secs(3600), || async {
            if let Err(e) = prune_once(&identity).await {
                tracing::warn!(error = %e, "identity pruning failed; retrying in an hour");
            }
        })
        .await;
}

async fn prune_once(identity: &Identity) -> error::Result<()> {
    let mut conn = identity.pool.acquire().await?;
    throttle::prune(&mut conn, time::OffsetDateTime::now_utc() - time::Duration::days(1)).await?;
    for statement in [
        "DELETE FROM identity.login_attempts WHERE attempted_at < now() - interval '90 days'",
        "DELETE FROM identity.email_verification_tokens WHERE expires_at < now() - interval '7 days'",
        "DELETE FROM identity.password_reset_tokens WHERE expires_at < now() - interval '7 days'",
        "DELETE FROM identity.mfa_factors WHERE confirmed_at IS NULL AND created_at < now() - interval '1 day'",
        // Finished webhook deliveries are kept 30 days.
        "DELETE FROM identity.tenant_webhook_deliveries WHERE status <> 'pending' AND updated_at < now() - interval '30 days'",
    ] {
        sqlx::query(statement).execute(&mut *conn).await?;
    }
    Ok(())
}
