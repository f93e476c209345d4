//! Web Push subscriptions: users register and list their own browsers (without keys); the
//! notification service reads them with keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, Service};
use tonic::Code;

fn subscription(n: u32) -> pb::RegisterPushSubscriptionRequest {
    let mut point = vec![4u8];
    point.extend((0..64).map(|i| (i as u8).wrapping_mul(7).wrapping_add(n as u8)));
    pb::RegisterPushSubscriptionRequest {
        endpoint: format!("https://push.example.com/send/{n}"),
        p256dh: URL_SAFE_NO_PAD.encode(point),
        auth: URL_SAFE_NO_PAD.encode([n as u8; 16]),
        expires_at: None,
    }
}

fn push_as(
    service: &Service,
    token: &str,
) -> pb::push_subscription_service_client::PushSubscriptionServiceClient<support::Authed> {
    pb::push_subscription_service_client::PushSubscriptionServiceClient::new(service.channel_as(token))
}

#[tokio::test]
async fn users_register_their_browsers_and_the_notification_service_reads_the_keys() {
    let service = Service::start().await;
    let user = service.account(DEFAULT_TENANT, "user").await;
    let mut own = push_as(&service, &user.tokens.access_token);
    let vapid = own.get_vapid_public_key(pb::GetVapidPublicKeyRequest {}).await;
    assert_eq!(vapid.unwrap_err().code(), Code::FailedPrecondition, "no VAPID key configured");

    let registered = own.register_push_subscription(subscription(1)).await.unwrap().into_inner().subscription.unwrap();
    assert!(registered.p256dh.is_empty() && registered.auth.is_empty(), "keys are not echoed to the browser");
    own.register_push_subscription(subscription(1)).await.expect("registering again is idempotent");
    for (request, field) in [
        (
            pb::RegisterPushSubscriptionRequest { endpoint: "http://push.example.com/x".into(), ..subscription(2) },
            "endpoint",
        ),
        (pb::RegisterPushSubscriptionRequest { p256dh: "short".into(), ..subscription(2) }, "p256dh"),
        (pb::RegisterPushSubscriptionRequest { auth: URL_SAFE_NO_PAD.encode([1u8; 8]), ..subscription(2) }, "auth"),
    ] {
        let refused = own.register_push_subscription(request).await.unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{field}");
        assert!(refused.message().starts_with(field), "{}", refused.message());
    }
    for n in 2..=21 {
        own.register_push_subscription(subscription(n)).await.unwrap();
    }
    let listed = own.list_push_subscriptions(pb::ListPushSubscriptionsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.subscriptions.len(), 20, "the least recently used beyond 20 is replaced");

    // The notification service reads them with their keys; another user cannot.
    let mut notification = push_as(&service, &service.service_token(ServiceName::Notification));
    let with_keys = notification
        .list_push_subscriptions(pb::ListPushSubscriptionsRequest {
            tenant_id: DEFAULT_TENANT.to_string(),
            user_id: user.user_id.to_string(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(with_keys.subscriptions.iter().all(|s| s.p256dh.len() == 87 && !s.auth.is_empty()));
    let other = service.account(DEFAULT_TENANT, "user").await;
    let nosy = push_as(&service, &other.tokens.access_token)
        .list_push_subscriptions(pb::ListPushSubscriptionsRequest {
            user_id: user.user_id.to_string(),
            ..Default::default()
        })
        .await;
    assert_eq!(nosy.unwrap_err().code(), Code::PermissionDenied);
    let render = push_as(&service, &service.service_token(ServiceName::Render))
        .list_push_subscriptions(pb::ListPushSubscriptionsRequest {
            tenant_id: DEFAULT_TENANT.to_string(),
            user_id: user.user_id.to_string(),
            ..Default::default()
        })
        .await;
    assert_eq!(render.unwrap_err().code(), Code::PermissionDenied);

    // Unregistering is idempotent; another user's id changes nothing.
    use pb::unregister_push_subscription_request::Lookup;
    let first = listed.subscriptions[0].clone();
    push_as(&service, &other.tokens.access_token)
        .unregister_push_subscription(pb::UnregisterPushSubscriptionRequest {
            lookup: Some(Lookup::SubscriptionId(first.id.clone())),
        })
        .await
        .unwrap();
    for _ in 0..2 {
        own.unregister_push_subscription(pb::UnregisterPushSubscriptionRequest {
            lookup: Some(Lookup::Endpoint(first.endpoint.clone())),
        })
        .await
        .unwrap();
    }
    let left = own.list_push_subscriptions(pb::ListPushSubscriptionsRequest::default()).await.unwrap().into_inner();
    assert_eq!(left.subscriptions.len(), 19);
    service.stop().await;
}
