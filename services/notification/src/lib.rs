//! The notification service: in-app, push, email, SMS and Telegram notifications and preferences.
//!
//! Its methods land with its own issue; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database,
//! and is listed by reflection.

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::notification::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the notification service.
pub const ROLE: ServiceRole = ServiceRole::NOTIFICATION;

/// The notification API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct NotificationApi;

#[tonic::async_trait]
impl pb::notification_admin_service_server::NotificationAdminService for NotificationApi {}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationApi {}

#[tonic::async_trait]
impl pb::notification_preference_service_server::NotificationPreferenceService for NotificationApi {}

/// Adds the notification services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::notification_admin_service_server::NotificationAdminServiceServer::new(NotificationApi),
        pb::notification_service_server::NotificationServiceServer::new(NotificationApi),
        pb::notification_preference_service_server::NotificationPreferenceServiceServer::new(NotificationApi),
    );
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks: Vec::new(), http: None }
}
