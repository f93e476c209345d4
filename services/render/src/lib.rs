//! The render service (the orchestrator): jobs, chunks, the leased queue, the agent stream, nodes
//! (`flatrender.render.v1`, `flatrender.agent.v1`, schema `render`).
//!
//! - [`settings`]: timings and limits; [`error`]: the one error type and its gRPC mapping;
//!   [`state`]: what handlers and background tasks share.
//! - [`model`]: the domain types, validated at the edge, with their protobuf, database and JSON
//!   forms.
//! - [`api`]: the customer `RenderService`; [`plans`]: the plan limits it enforces; [`files`]:
//!   the file service's client.
//!
//! Methods not implemented yet answer `UNIMPLEMENTED`, the gRPC standard, so clients see
//! honestly what is not there yet.

pub mod api;
pub mod error;
pub mod files;
pub mod model;
pub mod plans;
pub mod settings;
pub mod state;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tonic::service::RoutesBuilder;

pub use error::{RenderError, Result};
pub use settings::Settings;
pub use state::State;

/// The database identity of the render service.
pub const ROLE: ServiceRole = ServiceRole::RENDER;

/// The gRPC face of the orchestrator; every service of `flatrender.render.v1` and
/// `flatrender.agent.v1` is implemented on it.
#[derive(Clone, Debug)]
pub struct RenderApi {
    #[allow(dead_code, reason = "read by the methods as they land")]
    state: State,
}

impl RenderApi {
    /// The API over `state`.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl pb::node_admin_service_server::NodeAdminService for RenderApi {}

#[tonic::async_trait]
impl pb::render_admin_service_server::RenderAdminService for RenderApi {}

#[tonic::async_trait]
impl agent_pb::agent_service_server::AgentService for RenderApi {}

/// Adds the render services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, settings: Settings, routes: &mut RoutesBuilder) -> ServiceModule {
    let state = State::new(ctx.pool.clone(), settings);
    let api = RenderApi::new(state.clone());
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::node_admin_service_server::NodeAdminServiceServer::new(api.clone()),
        pb::render_admin_service_server::RenderAdminServiceServer::new(api.clone()),
        pb::render_service_server::RenderServiceServer::new(api.clone()),
        agent_pb::agent_service_server::AgentServiceServer::new(api),
    );
    let mut tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![(
        "partitions",
        Box::pin(flatrender_kit::db::maintain_partitions(
            ctx.pool.clone(),
            "render.ensure_node_health_log_partitions",
            ctx.shutdown.clone(),
        )),
    )];
    tasks.extend(api::background(&state, &ctx));
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks }
}
