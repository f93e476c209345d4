//! Folder trees (`FolderService`).

use flatrender_proto::flatrender::file::v1 as pb;

use crate::FileApi;

#[tonic::async_trait]
impl pb::folder_service_server::FolderService for FileApi {}
