//! The gateway's edge in the real binary (`--target all`): identity headers a client sends are
//! replaced, API keys become scoped calls, tenants' calls are logged and counted, CORS and
//! rate limits answer as browsers and clients expect, and the JWKS is served.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{Flatrender, await_health, http1_exchange};
use tonic::Request;
use tonic_health::pb::health_check_response::ServingStatus;
use uuid::Uuid;

const PASSWORD: &str = "correct horse battery staple";

/// Registers a verified account with `role` in the default tenant and logs it in through the
/// gateway, claiming to come from 6.6.6.6.
async fn account(server: &Flatrender, db: &TestDatabase, role: &str) -> (String, pb::TokenPair) {
    let email = format!("{}@example.com", Uuid::new_v4().simple());
    let mut auth = pb::auth_service_client::AuthServiceClient::new(server.channel().await);
    let registered = auth
        .register(pb::RegisterRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            display_name: "Edge".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    sqlx::query("UPDATE identity.users SET email_verified_at = now(), role = $2 WHERE id = $1::uuid")
        .bind(registered.user.unwrap().id)
        .bind(role)
        .execute(db.pool())
        .await
        .unwrap();
    let mut login =
        Request::new(pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), tenant_id: String::new() });
    login.metadata_mut().insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
    login.metadata_mut().insert("x-flatrender-tenant", "someone-else".parse().unwrap());
    let tokens = match auth.login(login).await.unwrap().into_inner().result {
        Some(pb::login_response::Result::Tokens(tokens)) => tokens,
        other => panic!("expected tokens, got {other:?}"),
    };
    (email, tokens)
}

fn with_bearer<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-api-key", key.parse().unwrap());
    request
}

/// Polls `query` (a count) until it reaches `want`, for rows the edge writes in batches.
async fn await_count(db: &TestDatabase, query: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned())).fetch_one(db.pool()).await.unwrap();
        if count >= want || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_edge_replaces_client_claims_exchanges_keys_and_logs_calls() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--cors-origin", "http://app.example"]);
    await_health(server.channel().await, "", ServingStatus::Serving, Duration::from_secs(30)).await;
    let (email, user) = account(&server, &db, "tenant_admin").await;

    // The login was recorded from the address the gateway saw, not the one the client claimed.
    let ips: Vec<String> = sqlx::query_scalar("SELECT host(ip) FROM identity.login_attempts WHERE email = $1")
        .bind(&email)
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(ips, ["127.0.0.1"]);

    // A tenant's calls land in the request log and the day's usage, off the request path.
    let channel = server.channel().await;
    let mut auth = pb::auth_service_client::AuthServiceClient::new(channel.clone());
    for _ in 0..3 {
        auth.get_me(with_bearer(pb::GetMeRequest {}, &user.access_token)).await.unwrap();
    }
    let logged = await_count(
        &db,
        "SELECT count(*) FROM identity.tenant_api_request_logs
         WHERE method = '/flatrender.identity.v1.AuthService/GetMe' AND grpc_status = 0 AND client_ip = '127.0.0.1'",
        3,
    )
    .await;
    assert_eq!(logged, 3);
    let calls = await_count(&db, "SELECT coalesce(sum(api_calls), 0)::int8 FROM identity.tenant_usage_daily", 3).await;
    assert!(calls >= 3, "{calls}");

    // An API key becomes a call of its tenant within its scopes; a bearer token beside it is ignored.
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(channel.clone());
    let created = keys
        .create_api_key(with_bearer(
            pb::CreateApiKeyRequest {
                name: "Edge key".into(),
                scopes: vec![pb::ApiKeyScope::RenderRead as i32],
                ..Default::default()
            },
            &user.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    let key = created.secret;
    let mut both = with_key(pb::GetMeRequest {}, &key);
    both.metadata_mut().insert("authorization", format!("Bearer {}", user.access_token).parse().unwrap());
    let me = auth.get_me(both).await.unwrap().into_inner();
    assert_eq!(me.api_key_id, created.api_key.unwrap().id);
    let outside = keys.list_api_keys(with_key(pb::ListApiKeysRequest::default(), &key)).await.unwrap_err();
    assert_eq!(outside.code(), tonic::Code::PermissionDenied, "{outside:?}");
    let wrong = auth.get_me(with_key(pb::GetMeRequest {}, "fr_AAAAAAAAAAAA.nope")).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    let key_logged = await_count(
        &db,
        "SELECT count(*) FROM identity.tenant_api_request_logs WHERE api_key_id IS NOT NULL AND grpc_status = 7",
        1,
    )
    .await;
    assert_eq!(key_logged, 1, "the refused key call is logged with PERMISSION_DENIED");

    // The JWKS is served over plain HTTP, and CORS preflights answer per origin.
    let jwks = http1_exchange(
        server.grpc,
        b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"",
    );
    let jwks = String::from_utf8_lossy(&jwks);
    assert!(jwks.starts_with("HTTP/1.1 200"), "{jwks}");
    assert!(jwks.contains("\"kty\":\"OKP\"") && jwks.contains("max-age="), "{jwks}");
    let preflight = |origin: &str| {
        let head = format!(
            "OPTIONS /flatrender.identity.v1.AuthService/Login HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type,x-grpc-web\r\n\
             Connection: close\r\n\r\n"
        );
        String::from_utf8_lossy(&http1_exchange(server.grpc, head.as_bytes(), b"")).to_lowercase()
    };
    let allowed = preflight("http://app.example");
    assert!(allowed.starts_with("http/1.1 204"), "{allowed}");
    assert!(allowed.contains("access-control-allow-origin: http://app.example"), "{allowed}");
    assert!(preflight("http://evil.example").starts_with("http/1.1 403"));

    // Neither the key's secret nor a password ever reached the log (at the default level).
    let secret = key.split_once('.').unwrap().1;
    let log = server.stderr();
    assert!(log.contains("created an API key"), "the log is captured:\n{log}");
    assert!(!log.contains(secret), "the API key secret is in the log");
    assert!(!log.contains(PASSWORD), "a password is in the log");
}

#[tokio::test]
async fn clients_past_their_rate_get_resource_exhausted_with_a_retry_delay() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--rate-limit-address", "60"]);
    await_health(server.channel().await, "", ServingStatus::Serving, Duration::from_secs(30)).await;
    let mut auth = pb::auth_service_client::AuthServiceClient::new(server.channel().await);
    let mut refused = None;
    // 60 a minute with a burst of 10: the burst passes, the calls after it are refused.
    for _ in 0..20 {
        match auth.get_jwks(pb::GetJwksRequest {}).await {
            Ok(_) => {}
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let status = refused.expect("a client past its rate is refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(status.message().contains("client address"), "{}", status.message());
    let pushback: u64 = status.metadata().get("grpc-retry-pushback-ms").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2000).contains(&pushback), "{pushback}");
}
