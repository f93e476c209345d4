//! Simple and resumable uploads (`UploadService`).

use flatrender_proto::flatrender::file::v1 as pb;

use crate::FileApi;

#[tonic::async_trait]
impl pb::upload_service_server::UploadService for FileApi {}
