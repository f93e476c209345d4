//! The gateway target forwards calls to services in other processes.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::identity::v1::auth_service_client::AuthServiceClient;
use flatrender_proto::flatrender::render::v1::render_service_client::RenderServiceClient;
use flatrender_proto::flatrender::render::v1::{GetRenderRequest, WatchRenderRequest};
use support::{Flatrender, await_health, http1_exchange};
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
    let mut client = RenderServiceClient::new(channel.clone());

    // The render process answers through the gateway (a call without a token is refused there),
    // and its metrics show that the calls reached it.
    let status = client.get_render(GetRenderRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_upstream_handled(&render, "/flatrender.render.v1.RenderService/GetRender");

    // Server streaming goes through as well.
    let status = client.watch_render(WatchRenderRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_upstream_handled(&render, "/flatrender.render.v1.RenderService/WatchRender");

    // A service with no upstream is UNAVAILABLE, naming the flag to set.
    let status = AuthServiceClient::new(channel)
        .login(flatrender_proto::flatrender::identity::v1::LoginRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("--upstream identity="), "{}", status.message());

    // An upstream that went away is UNAVAILABLE, promptly, not a hang.
    drop(render);
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(10), client.get_render(GetRenderRequest::default()))
        .await
        .expect("the gateway answers within 10 s when its upstream is gone")
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?} after {:?}", started.elapsed());
    assert!(status.message().contains("cannot be reached"), "{}", status.message());
}

/// Asserts the render process counted exactly one `Unauthenticated` call of `method`.
fn assert_upstream_handled(render: &Flatrender, method: &str) {
    let head = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", render.metrics);
    let metrics = String::from_utf8(http1_exchange(render.metrics, head.as_bytes(), &[])).unwrap();
    let line = format!(r#"flatrender_grpc_server_handled_total{{method="{method}",code="Unauthenticated"}} 1"#);
    assert!(metrics.lines().any(|l| l == line), "the render process did not count `{line}`:\n{metrics}");
}

#[tokio::test]
async fn a_service_in_its_own_process_follows_identitys_keys() {
    let db = TestDatabase::migrated().await;
    let identity = Flatrender::start(db.url().expose(), &["--target", "identity"]);
    await_health(identity.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let upstream = format!("identity={}", identity.endpoint());
    let render = Flatrender::start(db.url().expose(), &["--target", "render", "--upstream", &upstream]);
    await_health(render.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;

    let (_, tokens) = support::verified_account(identity.channel().await, &db, "follow@example.com").await;

    // The render process knows identity's key only by following its JWKS.
    let mut renders = RenderServiceClient::new(render.channel().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        let mut request = tonic::Request::new(GetRenderRequest { render_id: uuid::Uuid::new_v4().to_string() });
        request.metadata_mut().insert("authorization", format!("Bearer {}", tokens.access_token).parse().unwrap());
        let status = renders.get_render(request).await.unwrap_err();
        if status.code() != tonic::Code::Unauthenticated || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
}
