//! The file service: object storage, folders, quotas, resumable uploads, ranged downloads, cleanup.
//!
//! Its methods land with issue 3; until then every method answers `UNIMPLEMENTED`, the gRPC
//! standard, so clients see honestly what is not there yet. The service already runs on its own
//! pool and role, reports health from its database,
//! and is listed by reflection.

pub mod storage;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::file::v1 as pb;
use tonic::service::RoutesBuilder;

/// The database identity of the file service.
pub const ROLE: ServiceRole = ServiceRole::FILE;

/// The file API; its state (the pool) arrives with its implementation.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileApi;

#[tonic::async_trait]
impl pb::cleanup_service_server::CleanupService for FileApi {}

#[tonic::async_trait]
impl pb::file_service_server::FileService for FileApi {}

#[tonic::async_trait]
impl pb::folder_service_server::FolderService for FileApi {}

#[tonic::async_trait]
impl pb::quota_service_server::QuotaService for FileApi {}

#[tonic::async_trait]
impl pb::upload_service_server::UploadService for FileApi {}

/// Adds the file services to `routes` and returns the module the server runs.
pub fn module(ctx: ServiceContext, routes: &mut RoutesBuilder) -> ServiceModule {
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::cleanup_service_server::CleanupServiceServer::new(FileApi),
        pb::file_service_server::FileServiceServer::new(FileApi),
        pb::folder_service_server::FolderServiceServer::new(FileApi),
        pb::quota_service_server::QuotaServiceServer::new(FileApi),
        pb::upload_service_server::UploadServiceServer::new(FileApi),
    );
    ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks: Vec::new() }
}
