//! File metadata, listing, copy, delete, retention and ranged downloads (`FileService`).

use flatrender_proto::flatrender::file::v1 as pb;

use crate::FileApi;

#[tonic::async_trait]
impl pb::file_service_server::FileService for FileApi {}
