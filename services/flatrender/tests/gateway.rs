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

/// A gateway in its own process exchanges `x-api-key` at the identity upstream with a gateway
/// service credential, and that credential is good for nothing else.
#[tokio::test]
async fn a_separate_gateway_exchanges_api_keys_at_identity() {
    use flatrender_proto::flatrender::identity::v1 as pb;
    let db = TestDatabase::migrated().await;
    let identity = Flatrender::start(db.url().expose(), &["--target", "identity"]);
    await_health(identity.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let upstream = format!("identity={}", identity.endpoint());
    // The gateway signs its credential with the key identity trusts (here: identity's development key).
    let key_file = identity.data_dir.join("keys").join("dev-signing-key.pem");
    let key_file = key_file.to_string_lossy();
    let gateway = Flatrender::start(
        "postgres://nobody@127.0.0.1:1/none",
        &["--target", "gateway", "--upstream", &upstream, "--service-key-file", &key_file],
    );

    let email = "keys@example.com";
    let (user_id, _) = support::verified_account(identity.channel().await, &db, email).await;
    sqlx::query("UPDATE identity.users SET role = 'tenant_admin' WHERE id = $1::uuid")
        .bind(&user_id)
        .execute(db.pool())
        .await
        .unwrap();
    let login = AuthServiceClient::new(identity.channel().await)
        .login(pb::LoginRequest { email: email.into(), password: support::PASSWORD.into(), tenant_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::login_response::Result::Tokens(admin)) = login.result else { panic!("no tokens") };
    let mut create = tonic::Request::new(pb::CreateApiKeyRequest {
        name: "Reseller".into(),
        scopes: vec![pb::ApiKeyScope::RenderRead as i32],
        ..Default::default()
    });
    create.metadata_mut().insert("authorization", format!("Bearer {}", admin.access_token).parse().unwrap());
    let created = pb::api_key_service_client::ApiKeyServiceClient::new(identity.channel().await)
        .create_api_key(create)
        .await
        .unwrap()
        .into_inner();

    // Through the gateway the key is a call of its tenant (once the gateway follows identity's keys).
    let mut through = AuthServiceClient::new(gateway.channel().await);
    let deadline = Instant::now() + Duration::from_secs(15);
    let me = loop {
        let mut request = tonic::Request::new(pb::GetMeRequest {});
        request.metadata_mut().insert("x-api-key", created.secret.parse().unwrap());
        match through.get_me(request).await {
            Ok(me) => break me.into_inner(),
            Err(status) if status.code() == tonic::Code::Unauthenticated && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("GetMe with the key through the gateway: {status:?}"),
        }
    };
    assert_eq!(me.api_key_id, created.api_key.unwrap().id);
    let mut wrong = tonic::Request::new(pb::GetMeRequest {});
    wrong.metadata_mut().insert("x-api-key", "fr_AAAAAAAAAAAA.nope".parse().unwrap());
    assert_eq!(through.get_me(wrong).await.unwrap_err().code(), tonic::Code::Unauthenticated);

    // The calls made with the key are logged at identity, sent there by the gateway in batches.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let logged: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM identity.tenant_api_request_logs
             WHERE method = '/flatrender.identity.v1.AuthService/GetMe' AND api_key_id IS NOT NULL AND grpc_status = 0",
        )
        .fetch_one(db.pool())
        .await
        .unwrap();
        if logged >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the split gateway's request log never reached identity");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The gateway's credential opens nothing but the exchange and the request log.
    let signer = flatrender_kit::auth::DevKeyFiles::under(&identity.data_dir).signer().unwrap();
    let claims = flatrender_kit::auth::AccessClaims::service(
        flatrender_kit::auth::ServiceName::Gateway,
        "flatrender",
        "flatrender-api",
        Duration::from_secs(60),
    );
    // Plan limits answer any other service for any tenant; not the gateway.
    let mut request = tonic::Request::new(pb::GetPlanLimitsRequest {
        tenant_id: "00000000-0000-0000-0000-000000000001".into(),
        ..Default::default()
    });
    let token = signer.sign(&claims).unwrap();
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let status = pb::billing_service_client::BillingServiceClient::new(identity.channel().await)
        .get_plan_limits(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}
