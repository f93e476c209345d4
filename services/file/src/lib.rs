//! The file service: object storage, folders, quotas, resumable uploads, ranged downloads and
//! scheduled cleanup (`flatrender.file.v1`, schema `file_mgr`).
//!
//! - [`storage`]: the only code that talks to object storage (local disk or S3).
//! - [`model`]: the domain records and their protobuf views; [`validate`]: request fields.
//! - [`access`]: who reaches what; [`ledger`]: quota accounting; [`removal`]: deleting a file's
//!   object and row together; [`events`]: outbox events; [`downloads`]: what a download
//!   records; [`sniff`]: content types from bytes.
//! - `api`: the gRPC services, one module each; [`links`]: download links, served over plain
//!   HTTP on the same listener.

pub mod access;
mod api;
pub mod cleanup;
pub mod downloads;
pub mod error;
pub mod events;
pub mod ledger;
pub mod links;
pub mod model;
pub mod page;
pub mod plan_limits;
pub mod removal;
pub mod settings;
pub mod sniff;
pub mod state;
pub mod storage;
pub mod validate;

use flatrender_kit::db::ServiceRole;
use flatrender_kit::server::{ServiceContext, ServiceModule};
use flatrender_proto::flatrender::file::v1 as pb;
use tonic::service::RoutesBuilder;

pub use error::{FileError, Result};
pub use settings::{CleanupSettings, Settings};
pub use state::State;

/// The database identity of the file service.
pub const ROLE: ServiceRole = ServiceRole::FILE;

/// The gRPC face of the file service; every service of `flatrender.file.v1` is implemented on
/// it, one module of `api` each.
#[derive(Clone)]
pub struct FileApi {
    state: State,
}

impl FileApi {
    /// The API over `state`.
    pub fn new(state: State) -> Self {
        Self { state }
    }
}

/// Opens object storage, adds the file services to `routes` and returns the module the server
/// runs, with the download links' HTTP route. Fails with a configuration error when object storage cannot be opened.
pub fn module(
    ctx: ServiceContext,
    settings: Settings,
    routes: &mut RoutesBuilder,
) -> Result<ServiceModule, flatrender_kit::Error> {
    let state = State::new(ctx.pool.clone(), settings).map_err(|e| flatrender_kit::Error::Config(e.to_string()))?;
    let api = FileApi::new(state.clone());
    let grpc_services = flatrender_kit::add_services!(
        routes,
        pb::cleanup_service_server::CleanupServiceServer::new(api.clone()),
        pb::file_service_server::FileServiceServer::new(api.clone()),
        pb::folder_service_server::FolderServiceServer::new(api.clone()),
        pb::quota_service_server::QuotaServiceServer::new(api.clone()),
        api::upload_server(api),
    );
    let tasks: Vec<(&'static str, flatrender_kit::server::BackgroundTask)> = vec![
        ("file-cleanup", Box::pin(cleanup::run(state.clone(), ctx.shutdown.clone()))),
        ("file-plan-limits", Box::pin(plan_limits::run(state.clone(), ctx.shutdown.clone()))),
    ];
    Ok(ServiceModule { role: ROLE, pool: ctx.pool, grpc_services, tasks, http: Some(links::routes(state)) })
}
