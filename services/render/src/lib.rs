//! The render service (the orchestrator): jobs, chunks, the leased queue, the agent stream, nodes.
//!
//! Its methods land with issue 4; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database, keeps its monthly partitions created ahead,
//! and is listed by reflection.

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the render service.
pub const ROLE: ServiceRole = ServiceRole::RENDER;

/// The render API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct RenderApi;

#[tonic::async_trait]
impl pb::node_admin_service_server::NodeAdminService for RenderApi {}

#[tonic::async_trait]
impl pb::render_admin_service_server::RenderAdminService for RenderApi {}

#[tonic::async_trait]
impl pb::render_service_server::RenderService for RenderApi {}

#[tonic::async_trait]
impl agent_pb::agent_service_server::AgentService for RenderApi {}

/// Adds the render services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::node_admin_service_server::NodeAdminServiceServer::new(RenderApi),
        pb::render_admin_service_server::RenderAdminServiceServer::new(RenderApi),
        pb::render_service_server::RenderServiceServer::new(RenderApi),
        agent_pb::agent_service_server::AgentServiceServer::new(RenderApi),
    );
    let tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![(
        "partitions",
        Box::pin(flatrender_kit::db::maintain_partitions(
            ctx.pool.clone(),
            "render.ensure_node_health_log_partitions",
            ctx.shutdown.clone(),
        )),
    )];
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks, http: None }
}
