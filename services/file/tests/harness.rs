//! The harness itself: the service starts, checks tokens, and seeds files that count.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use flatrender_proto::flatrender::file::v1 as pb;
use support::{Seed, Service};
use uuid::Uuid;

#[tokio::test]
async fn calls_without_a_token_are_unauthenticated_and_seeds_count() {
    let service = Service::start().await;
    let (tenant, owner) = (Uuid::new_v4(), Uuid::new_v4());
    let data = b"\x89PNG\r\n\x1a\n seed";
    let seed = Seed { tenant, owner: Some(owner), folder: None, name: "a.png", kind: "asset", data, counted: true };
    service.seed_file(seed).await;
    let footprint = service.footprint().await;
    assert_eq!(footprint.objects.len(), 1);
    let used: Vec<i64> = footprint.quotas.iter().map(|q| q.2).collect();
    assert_eq!(used, vec![data.len() as i64; 2], "tenant and user quotas both charged");

    let addr = format!("http://{}", service.addr);
    let mut files = pb::file_service_client::FileServiceClient::connect(addr).await.unwrap();
    let status = files.get_file(pb::GetFileRequest { file_id: Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
}
