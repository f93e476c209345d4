//! The gateway target forwards calls to services in other processes.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::identity::v1::auth_service_client::AuthServiceClient;
use flatrender_proto::flatrender::render::v1::GetRenderRequest;
use flatrender_proto::flatrender::render::v1::render_service_client::RenderServiceClient;
use support::{Flatrender, await_health};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn the_gateway_forwards_to_remote_services() {
    let db = TestDatabase::migrated().await;
    let render = Flatrender::start(db.url().expose(), &["--target", "render"]);
    await_health(render.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;

    // The gateway alone needs no database: give it one that does not exist.
    let upstream = format!("render={}", render.endpoint());
    let gateway =
        Flatrender::start("postgres://nobody@127.0.0.1:1/none", &["--target", "gateway", "--upstream", &upstream]);
    let channel = gateway.channel().await;

    // The render process answers through the gateway (its methods are not implemented yet).
    let status = RenderServiceClient::new(channel.clone()).get_render(GetRenderRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");

    // A service with no upstream is UNAVAILABLE, naming the flag to set.
    let status = AuthServiceClient::new(channel)
        .login(flatrender_proto::flatrender::identity::v1::LoginRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("--upstream identity="), "{}", status.message());
}
