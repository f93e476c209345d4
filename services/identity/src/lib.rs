//! The identity service: accounts, tokens, MFA, tenants, API keys, webhooks, usage, plans.
//!
//! Its methods land with issue 6; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database, keeps its monthly partitions created ahead,
//! and is listed by reflection.

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::identity::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the identity service.
pub const ROLE: ServiceRole = ServiceRole::IDENTITY;

/// The identity API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdentityApi;

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for IdentityApi {}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for IdentityApi {}

#[tonic::async_trait]
impl pb::billing_service_server::BillingService for IdentityApi {}

#[tonic::async_trait]
impl pb::gamification_service_server::GamificationService for IdentityApi {}

#[tonic::async_trait]
impl pb::mfa_service_server::MfaService for IdentityApi {}

#[tonic::async_trait]
impl pb::push_subscription_service_server::PushSubscriptionService for IdentityApi {}

#[tonic::async_trait]
impl pb::signing_key_service_server::SigningKeyService for IdentityApi {}

#[tonic::async_trait]
impl pb::tenant_service_server::TenantService for IdentityApi {}

#[tonic::async_trait]
impl pb::usage_service_server::UsageService for IdentityApi {}

#[tonic::async_trait]
impl pb::user_service_server::UserService for IdentityApi {}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for IdentityApi {}

/// Adds the identity services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::api_key_service_server::ApiKeyServiceServer::new(IdentityApi),
        pb::auth_service_server::AuthServiceServer::new(IdentityApi),
        pb::billing_service_server::BillingServiceServer::new(IdentityApi),
        pb::gamification_service_server::GamificationServiceServer::new(IdentityApi),
        pb::mfa_service_server::MfaServiceServer::new(IdentityApi),
        pb::push_subscription_service_server::PushSubscriptionServiceServer::new(IdentityApi),
        pb::signing_key_service_server::SigningKeyServiceServer::new(IdentityApi),
        pb::tenant_service_server::TenantServiceServer::new(IdentityApi),
        pb::usage_service_server::UsageServiceServer::new(IdentityApi),
        pb::user_service_server::UserServiceServer::new(IdentityApi),
        pb::webhook_service_server::WebhookServiceServer::new(IdentityApi),
    );
    let tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![(
        "partitions",
        Box::pin(flatrender_kit::db::maintain_partitions(
            ctx.pool.clone(),
            "identity.ensure_api_request_log_partitions",
            ctx.shutdown.clone(),
        )),
    )];
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks, http: None }
}
