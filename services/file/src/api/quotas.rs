//! Quotas and their limits (`QuotaService`).

use flatrender_proto::flatrender::file::v1 as pb;

use crate::FileApi;

#[tonic::async_trait]
impl pb::quota_service_server::QuotaService for FileApi {}
