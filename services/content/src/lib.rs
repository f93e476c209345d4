//! The content service: the template catalogue (taxonomy, templates, scenes, characters, presets) and the CMS.
//!
//! Its methods land with its own issue; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database,
//! and is listed by reflection.

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::content::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the content service.
pub const ROLE: ServiceRole = ServiceRole::CONTENT;

/// The content API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContentApi;

#[tonic::async_trait]
impl pb::character_service_server::CharacterService for ContentApi {}

#[tonic::async_trait]
impl pb::cms_service_server::CmsService for ContentApi {}

#[tonic::async_trait]
impl pb::preset_service_server::PresetService for ContentApi {}

#[tonic::async_trait]
impl pb::scene_service_server::SceneService for ContentApi {}

#[tonic::async_trait]
impl pb::svg_preview_service_server::SvgPreviewService for ContentApi {}

#[tonic::async_trait]
impl pb::taxonomy_service_server::TaxonomyService for ContentApi {}

#[tonic::async_trait]
impl pb::template_service_server::TemplateService for ContentApi {}

/// Adds the content services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::character_service_server::CharacterServiceServer::new(ContentApi),
        pb::cms_service_server::CmsServiceServer::new(ContentApi),
        pb::preset_service_server::PresetServiceServer::new(ContentApi),
        pb::scene_service_server::SceneServiceServer::new(ContentApi),
        pb::svg_preview_service_server::SvgPreviewServiceServer::new(ContentApi),
        pb::taxonomy_service_server::TaxonomyServiceServer::new(ContentApi),
        pb::template_service_server::TemplateServiceServer::new(ContentApi),
    );
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks: Vec::new(), http: None }
}
