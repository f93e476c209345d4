//! Cleanup schedules and their runs (`CleanupService`).

use flatrender_proto::flatrender::file::v1 as pb;

use crate::FileApi;

#[tonic::async_trait]
impl pb::cleanup_service_server::CleanupService for FileApi {}
