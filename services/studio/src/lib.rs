//! The studio service: customers' saved projects: scenes, scene data, music, voiceover and sound effects.
//!
//! Its methods land with its own issue; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database,
//! and is listed by reflection.

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::studio::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the studio service.
pub const ROLE: ServiceRole = ServiceRole::STUDIO;

/// The studio API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct StudioApi;

#[tonic::async_trait]
impl pb::project_service_server::ProjectService for StudioApi {}

/// Adds the studio services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services =
        flatrender_kit::add_services!(routes, pb::project_service_server::ProjectServiceServer::new(StudioApi),);
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks: Vec::new(), http: None }
}
