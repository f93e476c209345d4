//! Tenant webhooks over the real service and a real HTTP receiver: deliveries carry the
//! documented signature, only the tenant's subscribed events go out (never secret-bearing ones),
//! and a receiver that is down gets the event later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use flatrender_identity::webhooks::signature;
use flatrender_proto::flatrender::identity::v1 as pb;
use support::Service;
use tokio::sync::mpsc;
use tonic::Code;

/// One POST as the receiver got it.
#[derive(Debug)]
struct Received {
    signature: String,
    event_type: String,
    body: Vec<u8>,
}

/// An HTTP receiver on `addr` (or a fresh port) that answers 204 and reports every POST.
async fn receiver(
    addr: Option<SocketAddr>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Received>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap())).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let header =
                    |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                let _ = tx.send(Received {
                    signature: header("x-flatrender-signature"),
                    event_type: header("x-flatrender-event-type"),
                    body: body.to_vec(),
                });
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, rx, server)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("the receiver runs")
}

async fn fast_service() -> Service {
    Service::start_with(|settings| {
        settings.webhooks.allow_insecure = true;
        settings.webhooks.backoff_first = Duration::from_millis(200);
        settings.webhooks.poll = Duration::from_millis(100);
    })
    .await
}

fn webhooks_as(service: &Service, token: &str) -> pb::webhook_service_client::WebhookServiceClient<support::Authed> {
    pb::webhook_service_client::WebhookServiceClient::new(service.channel_as(token))
}

#[tokio::test]
async fn deliveries_are_signed_and_only_the_tenants_subscribed_events_go_out() {
    let service = fast_service().await;
    let (a, b) = (service.tenant().await, service.tenant().await);
    let admin = service.account(a, "tenant_admin").await;
    let (addr, mut received, _server) = receiver(None).await;
    let mut hooks = webhooks_as(&service, &admin.tokens.access_token);
    let types =
        hooks.list_webhook_event_types(pb::ListWebhookEventTypesRequest {}).await.unwrap().into_inner().event_types;
    let registered = types.iter().find(|t| t.r#type == "flatrender.events.v1.UserRegistered").unwrap();
    assert_eq!(registered.description, "A user account was created.", "described by its proto comment");
    assert!(types.iter().all(|t| !t.description.is_empty()), "every type is described: {types:?}");
    assert!(
        types.iter().all(|t| t.r#type != "flatrender.events.v1.EmailVerificationRequested"),
        "secrets are never offered"
    );
    let created = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: format!("http://{addr}/hook"),
            event_types: vec!["flatrender.events.v1.UserRegistered".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let secret = created.secret;
    assert!(secret.starts_with("whsec_") && secret.len() == 49, "{secret}");
    let webhook = created.webhook.unwrap();
    assert_eq!(webhook.secret_prefix, &secret[..10]);

    // Tenant B's registration is not A's business; A's is, and comes signed.
    service.register(b, "someone@b.example").await;
    service.register(a, "newcomer@a.example").await;
    let delivery = next(&mut received).await;
    assert_eq!(delivery.event_type, "flatrender.events.v1.UserRegistered");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        signature::verify(secret.as_bytes(), &delivery.signature, &delivery.body, now, 300),
        "{}",
        delivery.signature
    );
    assert!(!signature::verify(b"whsec_wrong", &delivery.signature, &delivery.body, now, 300));
    let body: serde_json::Value = serde_json::from_slice(&delivery.body).unwrap();
    assert_eq!(body["payload"]["email"], "newcomer@a.example");
    assert_eq!(body["tenantId"], a.to_string());
    // Nothing else arrives: not B's event, not the verification email's secret.
    assert!(tokio::time::timeout(Duration::from_millis(800), received.recv()).await.is_err(), "one delivery only");

    // The test event is signed the same way and reports how the endpoint answered.
    let test =
        hooks.test_webhook(pb::TestWebhookRequest { webhook_id: webhook.id.clone() }).await.unwrap().into_inner();
    assert!(test.success, "{test:?}");
    assert_eq!(test.status_code, 204);
    let probe = next(&mut received).await;
    assert_eq!(probe.event_type, "flatrender.webhook.test");
    assert!(signature::verify(secret.as_bytes(), &probe.signature, &probe.body, now, 300));

    // Another tenant's admin sees no such webhook.
    let other = service.account(b, "tenant_admin").await;
    let foreign = webhooks_as(&service, &other.tokens.access_token)
        .get_webhook(pb::GetWebhookRequest { webhook_id: webhook.id.clone() })
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
    service.stop().await;
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_event_later() {
    let service = fast_service().await;
    let tenant = service.tenant().await;
    let admin = service.account(tenant, "tenant_admin").await;
    // A port with nothing listening yet.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut hooks = webhooks_as(&service, &admin.tokens.access_token);
    let webhook = hooks
        .create_webhook(pb::CreateWebhookRequest { url: format!("http://{addr}/hook"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    service.register(tenant, "late@a.example").await;

    // The first attempt fails and is scheduled again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let deliveries = hooks
            .list_webhook_deliveries(pb::ListWebhookDeliveriesRequest {
                webhook_id: webhook.id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .deliveries;
        if let Some(d) = deliveries.into_iter().find(|d| d.attempts >= 1) {
            break d;
        }
        assert!(tokio::time::Instant::now() < deadline, "no attempt was made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(failed.status, pb::WebhookDeliveryStatus::Pending as i32);
    assert!(!failed.last_error.is_empty());

    // The receiver comes up; a retry delivers.
    let (_, mut received, _server) = receiver(Some(addr)).await;
    let delivery = next(&mut received).await;
    assert_eq!(delivery.event_type, "flatrender.events.v1.UserRegistered");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let webhook = hooks
            .get_webhook(pb::GetWebhookRequest { webhook_id: webhook.id.clone() })
            .await
            .unwrap()
            .into_inner()
            .webhook
            .unwrap();
        if webhook.failure_count == 0 && webhook.last_success_at.is_some() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the success was not recorded: {webhook:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    service.stop().await;
}

#[tokio::test]
async fn endpoints_must_be_public_https() {
    let service = Service::start().await;
    let admin = service.account(service.tenant().await, "tenant_admin").await;
    let mut hooks = webhooks_as(&service, &admin.tokens.access_token);
    for url in [
        "http://example.com/hook",
        "https://10.0.0.7/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "https://localhost./hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://100.100.100.200/latest/meta-data",
        "https://intranet/hook",
        "ftp://x/y",
        "nope",
    ] {
        let refused = hooks.create_webhook(pb::CreateWebhookRequest { url: url.into(), ..Default::default() }).await;
        assert_eq!(refused.unwrap_err().code(), Code::InvalidArgument, "{url}");
    }
    let unknown = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: "https://hooks.example.com/x".into(),
            event_types: vec!["flatrender.events.v1.PasswordResetRequested".into()],
            ..Default::default()
        })
        .await;
    assert_eq!(unknown.unwrap_err().code(), Code::InvalidArgument, "secret-bearing types cannot be subscribed to");
    hooks
        .create_webhook(pb::CreateWebhookRequest { url: "https://hooks.example.com/x".into(), ..Default::default() })
        .await
        .expect("a public https endpoint is accepted");
    service.stop().await;
}

/// A webhook whose deliveries keep failing is disabled, its pending deliveries dropped, and a
/// `WebhookDisabled` event is written once, so the tenant's admins can be told.
#[tokio::test]
async fn a_failing_webhook_is_disabled_and_says_so_once() {
    let service = Service::start_with(|settings| {
        settings.webhooks.allow_insecure = true;
        settings.webhooks.backoff_first = Duration::from_millis(10);
        settings.webhooks.backoff_max = Duration::from_millis(20);
        settings.webhooks.poll = Duration::from_millis(50);
        settings.webhooks.disable_after = 1;
    })
    .await;
    let tenant = service.tenant().await;
    let admin = service.account(tenant, "tenant_admin").await;
    // Nothing listens there.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let mut hooks = webhooks_as(&service, &admin.tokens.access_token);
    let webhook = hooks
        .create_webhook(pb::CreateWebhookRequest { url: format!("http://{addr}/hook"), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    service.register(tenant, "first@a.example").await;
    service.register(tenant, "second@a.example").await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got =
            hooks.get_webhook(pb::GetWebhookRequest { webhook_id: webhook.id.clone() }).await.unwrap().into_inner();
        if got.webhook.is_some_and(|w| !w.enabled) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the webhook was never disabled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM platform.outbox WHERE event_type = 'flatrender.events.v1.WebhookDisabled' AND aggregate_id = $1",
    )
    .bind(&webhook.id)
    .fetch_all(service.db.pool())
    .await
    .unwrap();
    assert_eq!(payloads.len(), 1, "said once, however many deliveries failed");
    let event =
        <flatrender_proto::flatrender::events::v1::WebhookDisabled as prost::Message>::decode(payloads[0].as_slice())
            .unwrap();
    assert_eq!((event.webhook_id.as_str(), event.tenant_id.clone()), (webhook.id.as_str(), tenant.to_string()));
    assert!(event.url.contains(&addr.to_string()) && event.failure_count >= 1, "{event:?}");
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM identity.tenant_webhook_deliveries WHERE webhook_id = $1::uuid AND status = 'pending'",
    )
    .bind(&webhook.id)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    assert_eq!(pending, 0, "its pending deliveries were dropped");
}

/// A retried CreateWebhook with the same idempotency key gets the same webhook and secret; the
/// key reused for another webhook is ALREADY_EXISTS; nothing is created twice.
#[tokio::test]
async fn a_retried_create_returns_the_same_webhook_and_secret() {
    let service = fast_service().await;
    let tenant = service.tenant().await;
    let admin = service.account(tenant, "tenant_admin").await;
    let mut hooks = webhooks_as(&service, &admin.tokens.access_token);
    let request = pb::CreateWebhookRequest {
        url: "http://127.0.0.1:9/hook".into(),
        idempotency_key: "create-hook-1".into(),
        ..Default::default()
    };
    let first = hooks.create_webhook(request.clone()).await.unwrap().into_inner();
    let again = hooks.create_webhook(request.clone()).await.unwrap().into_inner();
    assert_eq!(again.webhook.unwrap().id, first.webhook.unwrap().id);
    assert_eq!(again.secret, first.secret, "the retry shows the secret the first call made");
    let other = pb::CreateWebhookRequest { url: "http://127.0.0.1:10/hook".into(), ..request };
    let status = hooks.create_webhook(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let listed = hooks.list_webhooks(pb::ListWebhooksRequest::default()).await.unwrap().into_inner().webhooks;
    assert_eq!(listed.len(), 1);
}
