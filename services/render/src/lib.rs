//! The render service (the orchestrator): jobs, chunks, the leased queue, the agent stream, nodes
//! (`flatrender.render.v1`, `flatrender.agent.v1`, schema `render`).
//!
//! - [`settings`]: timings and limits; [`error`]: the one error type and its gRPC mapping;
//!   [`state`]: what handlers and background tasks share.
//! - [`model`]: the domain types, validated at the edge, with their protobuf, database and JSON
//!   forms.
//! - [`queue`]: the leased task queue in PostgreSQL (claim, placement, fencing, results).
//! - [`agents`]: enrolment, node credentials, the Session stream, the byte RPCs (task inputs and
//!   outputs through the file service), the dispatcher, liveness.
//! - [`notifications`]: the process's one `LISTEN` connection, fanned out to the dispatcher,
//!   the node streams and the watchers.
//! - [`api`]: the customer `RenderService`; [`admin`]: the operators' `RenderAdminService`;
//!   [`plans`]: the plan limits it enforces; [`retention`]: expired exports and snapshots
//!   marked; [`files`]: the file service's client.
//!
//! Methods not implemented yet answer `UNIMPLEMENTED`, the gRPC standard, so clients see
//! honestly what is not there yet.

pub mod admin;
pub mod agents;
pub mod api;
pub mod error;
pub mod files;
pub mod model;
pub mod notifications;
pub mod plans;
pub mod queue;
pub mod retention;
pub mod settings;
pub mod state;

use std::sync::Arc;

use flatrender_kit::auth::Role;
use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tonic::codegen::BoxStream;
use tonic::service::RoutesBuilder;
use tonic::{Request, Response, Status};
use uuid::Uuid;

pub use agents::Agents;
use agents::node_admin;
pub use error::{RenderError, Result};
pub use settings::Settings;
pub use state::State;

/// The database identity of the render service.
pub const ROLE: ServiceRole = ServiceRole::RENDER;

/// The largest message either side of an agent stream decodes: larger than the application
/// limit (`Welcome.max_message_bytes`), so an oversized envelope is answered with a Reject
/// rather than a stream error.
pub const AGENT_TRANSPORT_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// The gRPC face of the orchestrator; every service of `flatrender.render.v1` and
/// `flatrender.agent.v1` is implemented on it.
#[derive(Clone, Debug)]
pub struct RenderApi {
    state: State,
    agents: Arc<Agents>,
}

impl RenderApi {
    /// The API over `agents` (and its state).
    pub fn new(agents: Arc<Agents>) -> Self {
        Self { state: agents.state.clone(), agents }
    }
}

/// The calling platform admin's user id, or `UNAUTHENTICATED` / `PERMISSION_DENIED`.
fn platform_admin<T>(request: &Request<T>) -> Result<Uuid, Status> {
    let caller = flatrender_kit::auth::caller(request)?;
    caller.require(Role::PlatformAdmin)?;
    Ok(caller.user_id)
}

#[tonic::async_trait]
impl pb::node_admin_service_server::NodeAdminService for RenderApi {
    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::listing::list(&self.agents, request.get_ref()).await?))
    }

    async fn get_node(&self, request: Request<pb::GetNodeRequest>) -> Result<Response<pb::GetNodeResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::listing::get(&self.agents, &request.get_ref().node_id).await?))
    }

    async fn list_node_health(
        &self,
        request: Request<pb::ListNodeHealthRequest>,
    ) -> Result<Response<pb::ListNodeHealthResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::health::list(&self.agents, request.get_ref()).await?))
    }

    async fn list_node_template_cache(
        &self,
        request: Request<pb::ListNodeTemplateCacheRequest>,
    ) -> Result<Response<pb::ListNodeTemplateCacheResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::listing::cache(&self.agents, request.get_ref()).await?))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::DrainNodeResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(node_admin::control::drain(&self.agents, admin, request.get_ref()).await?))
    }

    async fn quarantine_node(
        &self,
        request: Request<pb::QuarantineNodeRequest>,
    ) -> Result<Response<pb::QuarantineNodeResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(node_admin::control::quarantine(&self.agents, admin, request.get_ref()).await?))
    }

    async fn release_node(
        &self,
        request: Request<pb::ReleaseNodeRequest>,
    ) -> Result<Response<pb::ReleaseNodeResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(node_admin::control::release(&self.agents, admin, request.get_ref()).await?))
    }

    async fn evict_node_template(
        &self,
        request: Request<pb::EvictNodeTemplateRequest>,
    ) -> Result<Response<pb::EvictNodeTemplateResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(node_admin::control::evict(&self.agents, admin, request.get_ref()).await?))
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(node_admin::delete::delete(&self.agents, admin, request.get_ref()).await?))
    }

    async fn list_crashes(
        &self,
        request: Request<pb::ListCrashesRequest>,
    ) -> Result<Response<pb::ListCrashesResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::crashes::list(&self.state.pool, request.get_ref()).await?))
    }

    async fn get_crash(&self, request: Request<pb::GetCrashRequest>) -> Result<Response<pb::GetCrashResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(node_admin::crashes::get(&self.state.pool, &request.get_ref().crash_id).await?))
    }

    async fn create_enrollment_token(
        &self,
        request: Request<pb::CreateEnrollmentTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollmentTokenResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(agents::tokens::create(&self.state.pool, admin, request.get_ref()).await?))
    }

    async fn revoke_enrollment_token(
        &self,
        request: Request<pb::RevokeEnrollmentTokenRequest>,
    ) -> Result<Response<pb::RevokeEnrollmentTokenResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(agents::tokens::revoke(&self.state.pool, admin, &request.get_ref().token_id).await?))
    }

    async fn list_enrollment_tokens(
        &self,
        request: Request<pb::ListEnrollmentTokensRequest>,
    ) -> Result<Response<pb::ListEnrollmentTokensResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(agents::tokens::list(&self.state.pool, request.get_ref()).await?))
    }
}

#[tonic::async_trait]
impl pb::render_admin_service_server::RenderAdminService for RenderApi {
    async fn search_renders(
        &self,
        request: Request<pb::SearchRendersRequest>,
    ) -> Result<Response<pb::SearchRendersResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(self.search_renders_as_admin(request.get_ref()).await?))
    }

    async fn inspect_render(
        &self,
        request: Request<pb::InspectRenderRequest>,
    ) -> Result<Response<pb::InspectRenderResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(self.inspect_render_as_admin(request.get_ref()).await?))
    }

    async fn list_chunks(
        &self,
        request: Request<pb::ListChunksRequest>,
    ) -> Result<Response<pb::ListChunksResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(self.list_chunks_as_admin(request.get_ref()).await?))
    }

    async fn get_chunk(&self, request: Request<pb::GetChunkRequest>) -> Result<Response<pb::GetChunkResponse>, Status> {
        platform_admin(&request)?;
        Ok(Response::new(pb::GetChunkResponse { chunk: Some(self.get_chunk_as_admin(request.get_ref()).await?) }))
    }

    async fn requeue_render(
        &self,
        request: Request<pb::RequeueRenderRequest>,
    ) -> Result<Response<pb::RequeueRenderResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(pb::RequeueRenderResponse {
            render: Some(self.requeue_render_as_admin(admin, request.get_ref()).await?),
        }))
    }

    async fn fail_render(
        &self,
        request: Request<pb::FailRenderRequest>,
    ) -> Result<Response<pb::FailRenderResponse>, Status> {
        let admin = platform_admin(&request)?;
        Ok(Response::new(pb::FailRenderResponse {
            render: Some(self.fail_render_as_admin(admin, request.get_ref()).await?),
        }))
    }
}

#[tonic::async_trait]
impl agent_pb::agent_service_server::AgentService for RenderApi {
    async fn enroll(
        &self,
        request: Request<agent_pb::EnrollRequest>,
    ) -> Result<Response<agent_pb::EnrollResponse>, Status> {
        if let Some(addr) = request.remote_addr()
            && !self.agents.enroll_limiter.allow(addr.ip())
        {
            return Err(RenderError::ResourceExhausted("too many enrol attempts; try again in a minute".into()).into());
        }
        Ok(Response::new(agents::enroll::enroll(&self.state.pool, request.get_ref()).await?))
    }

    async fn session(
        &self,
        request: Request<tonic::Streaming<agent_pb::SessionRequest>>,
    ) -> Result<Response<BoxStream<agent_pb::SessionResponse>>, Status> {
        agents::session::open(Arc::clone(&self.agents), request).await
    }

    async fn download_object(
        &self,
        request: Request<agent_pb::DownloadObjectRequest>,
    ) -> Result<Response<BoxStream<agent_pb::DownloadObjectResponse>>, Status> {
        let node = agents::auth::authenticate(&self.state.pool, request.metadata()).await?;
        let files = self.state.files.as_ref();
        Ok(Response::new(agents::objects::download(&self.state, files, node, request.get_ref()).await?))
    }

    async fn upload_object(
        &self,
        request: Request<tonic::Streaming<agent_pb::UploadObjectRequest>>,
    ) -> Result<Response<agent_pb::UploadObjectResponse>, Status> {
        let node = agents::auth::authenticate(&self.state.pool, request.metadata()).await?;
        let files = self.state.files.as_ref();
        Ok(Response::new(agents::objects::upload(&self.state.pool, files, node, request.into_inner()).await?))
    }
}

/// Adds the render services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, settings: Settings, routes: &mut RoutesBuilder) -> ServiceModule {
    let state = State::new(ctx.pool.clone(), settings);
    let agents = Agents::new(state.clone());
    let api = RenderApi::new(Arc::clone(&agents));
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::node_admin_service_server::NodeAdminServiceServer::new(api.clone()),
        pb::render_admin_service_server::RenderAdminServiceServer::new(api.clone()),
        pb::render_service_server::RenderServiceServer::new(api.clone()),
        agent_pb::agent_service_server::AgentServiceServer::new(api)
            .max_decoding_message_size(AGENT_TRANSPORT_LIMIT_BYTES)
            .max_encoding_message_size(AGENT_TRANSPORT_LIMIT_BYTES),
    );
    let mut tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![(
        "partitions",
        Box::pin(flatrender_kit::db::maintain_partitions(
            ctx.pool.clone(),
            "render.ensure_node_health_log_partitions",
            ctx.shutdown.clone(),
        )),
    )];
    tasks.push(("render-notifications", Box::pin(notifications::run(Arc::clone(&agents), ctx.shutdown.clone()))));
    tasks.extend(agents.tasks(&ctx.shutdown));
    tasks.extend(api::background(&state, &ctx));
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks, http: None }
}
