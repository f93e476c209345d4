//! Plans, the subscription in force and the effective limits, as customers, admins and other
//! services read them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::identity::v1 as pb;
use support::{DEFAULT_TENANT, Service};
use tonic::Code;

fn billing_as(service: &Service, token: &str) -> pb::billing_service_client::BillingServiceClient<support::Authed> {
    pb::billing_service_client::BillingServiceClient::new(service.channel_as(token))
}

#[tokio::test]
async fn the_plan_in_force_follows_user_then_tenant_then_free() {
    let service = Service::start().await;
    let tenant = service.tenant().await;
    let user = service.account(tenant, "user").await;
    let stranger = service.account(service.tenant().await, "tenant_admin").await;

    // Public plans for anyone, by sort order; hidden ones only for platform admins.
    let mut public = billing_as(&service, "");
    let plans = public.list_plans(pb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    assert!(!plans.is_empty() && plans[0].code == "free", "{:?}", plans.iter().map(|p| &p.code).collect::<Vec<_>>());
    let all = public.list_plans(pb::ListPlansRequest { include_all: true, ..Default::default() }).await;
    assert_eq!(all.unwrap_err().code(), Code::Unauthenticated);
    let paid = plans.iter().find(|p| p.code != "free").expect("a paid plan is seeded");

    // No subscription and no tenant plan: the free plan.
    let mut own = billing_as(&service, &user.tokens.access_token);
    let answer = own.get_subscription(pb::GetSubscriptionRequest::default()).await.unwrap().into_inner();
    assert_eq!((answer.source, answer.effective_plan.unwrap().code.as_str()), (pb::PlanSource::Free as i32, "free"));
    assert!(answer.subscription.is_none());

    // A tenant-wide subscription, then the user's own, take over in that order.
    sqlx::query("INSERT INTO identity.subscriptions (tenant_id, user_id, plan_id) VALUES ($1, NULL, $2::uuid)")
        .bind(tenant)
        .bind(&paid.id)
        .execute(service.db.pool())
        .await
        .unwrap();
    let limits = own.get_plan_limits(pb::GetPlanLimitsRequest::default()).await.unwrap().into_inner();
    assert_eq!(
        (limits.source, limits.plan_code.as_str()),
        (pb::PlanSource::TenantSubscription as i32, paid.code.as_str())
    );
    sqlx::query("INSERT INTO identity.subscriptions (tenant_id, user_id, plan_id) VALUES ($1, $2, (SELECT id FROM identity.plans WHERE code = 'free'))")
        .bind(tenant)
        .bind(user.user_id)
        .execute(service.db.pool())
        .await
        .unwrap();
    let answer = own.get_subscription(pb::GetSubscriptionRequest::default()).await.unwrap().into_inner();
    assert_eq!(answer.source, pb::PlanSource::UserSubscription as i32);
    assert_eq!(answer.subscription.unwrap().user_id, user.user_id.to_string());

    // Services ask for any tenant's user; other tenants' admins see nothing of this user.
    let mut render = billing_as(&service, &service.service_token(ServiceName::Render));
    let limits = render
        .get_plan_limits(pb::GetPlanLimitsRequest { tenant_id: tenant.to_string(), user_id: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(limits.source, pb::PlanSource::TenantSubscription as i32, "tenant-wide when no user is named");
    assert_eq!(limits.cache_ttl_seconds, 60);
    let foreign = billing_as(&service, &stranger.tokens.access_token)
        .get_subscription(pb::GetSubscriptionRequest { user_id: user.user_id.to_string(), ..Default::default() })
        .await;
    assert_eq!(foreign.unwrap_err().code(), Code::NotFound);
    let peer = service.account(tenant, "user").await;
    let nosy = billing_as(&service, &peer.tokens.access_token)
        .get_subscription(pb::GetSubscriptionRequest { user_id: user.user_id.to_string(), ..Default::default() })
        .await;
    assert_eq!(nosy.unwrap_err().code(), Code::PermissionDenied);
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let everything = billing_as(&service, &root.tokens.access_token)
        .list_plans(pb::ListPlansRequest { include_all: true, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(everything.plans.len() >= plans.len());
    service.stop().await;
}

#[tokio::test]
async fn platform_admins_put_subscribers_on_plans_and_subscribers_cancel() {
    use flatrender_proto::flatrender::events::v1 as events;
    let service = Service::start().await;
    let tenant = service.tenant().await;
    let user = service.account(tenant, "user").await;
    let admin = service.account(tenant, "tenant_admin").await;
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let plans = billing_as(&service, "").list_plans(pb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    let paid = plans.iter().find(|p| p.code != "free").unwrap().clone();
    let change = |key: &str| pb::ChangeSubscriptionRequest {
        tenant_id: tenant.to_string(),
        user_id: user.user_id.to_string(),
        plan_id: paid.id.clone(),
        idempotency_key: key.into(),
        ..Default::default()
    };

    let refused = billing_as(&service, &user.tokens.access_token).change_subscription(change("")).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);
    let mut billing = billing_as(&service, &root.tokens.access_token);
    let first = billing.change_subscription(change("upgrade-1")).await.unwrap().into_inner();
    let subscription = first.subscription.unwrap();
    assert_eq!(subscription.status, pb::SubscriptionStatus::Active as i32);
    assert!(first.previous.is_none());
    let retry = billing.change_subscription(change("upgrade-1")).await.unwrap().into_inner();
    assert_eq!(retry.subscription.unwrap().id, subscription.id, "a retry returns the same subscription");
    let misuse = billing
        .change_subscription(pb::ChangeSubscriptionRequest { user_id: String::new(), ..change("upgrade-1") })
        .await;
    assert_eq!(misuse.unwrap_err().code(), Code::AlreadyExists);

    // The change is told to the other services with the new plan's limits.
    let changed = service.events("flatrender.events.v1.SubscriptionChanged").await;
    let event = <events::SubscriptionChanged as prost::Message>::decode(changed[0].as_slice()).unwrap();
    assert_eq!((event.previous_plan_code.as_str(), event.plan_code.as_str()), ("free", paid.code.as_str()));
    assert_eq!(event.kind, events::SubscriptionChangeKind::Started as i32);
    assert!(event.limits.is_some());

    // A second change ends the first.
    let free = plans.iter().find(|p| p.code == "free").unwrap();
    let second = billing
        .change_subscription(pb::ChangeSubscriptionRequest { plan_id: free.id.clone(), ..change("") })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.previous.unwrap().status, pb::SubscriptionStatus::Expired as i32);
    sqlx::query("UPDATE identity.plans SET is_active = false WHERE id = $1::uuid")
        .bind(&paid.id)
        .execute(service.db.pool())
        .await
        .unwrap();
    let retired = billing.change_subscription(change("")).await;
    assert_eq!(retired.unwrap_err().code(), Code::FailedPrecondition);

    // The subscriber cancels at the period end; only a platform admin ends it at once.
    let live = second.subscription.unwrap().id;
    let mut own = billing_as(&service, &user.tokens.access_token);
    let now = own
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: live.clone(),
            immediately: true,
            reason: String::new(),
        })
        .await;
    assert_eq!(now.unwrap_err().code(), Code::PermissionDenied);
    let scheduled = own
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: live.clone(),
            immediately: false,
            reason: "too pricey".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert!(scheduled.cancel_at_period_end);
    let ended = billing
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: live.clone(),
            immediately: true,
            reason: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    assert_eq!(ended.status, pb::SubscriptionStatus::Canceled as i32);
    let stranger = service.account(service.tenant().await, "user").await;
    let hidden = billing_as(&service, &stranger.tokens.access_token)
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: live,
            immediately: false,
            reason: String::new(),
        })
        .await;
    assert_eq!(hidden.unwrap_err().code(), Code::NotFound);

    let listed = billing_as(&service, &admin.tokens.access_token)
        .list_subscriptions(pb::ListSubscriptionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .subscriptions;
    assert_eq!(listed.len(), 2, "both, newest first");
    assert_eq!(listed[0].status, pb::SubscriptionStatus::Canceled as i32);
    service.stop().await;
}

/// When a subscription's period is over and nothing renews it, it ends by itself: CANCELED when
/// its end was asked for, EXPIRED when the payment provider did not extend it; each says so once
/// with the plan its subscriber falls back to. A manual subscription (nothing can renew it yet)
/// stays.
#[tokio::test]
async fn subscriptions_end_with_their_period() {
    use flatrender_proto::flatrender::events::v1 as events;
    let service =
        Service::start_with(|settings| settings.subscription_sweep = std::time::Duration::from_millis(100)).await;
    let tenant = service.tenant().await;
    let renewing = service.account(tenant, "user").await;
    let leaving = service.account(tenant, "user").await;
    let manual = service.account(tenant, "user").await;
    let root = service.account(DEFAULT_TENANT, "platform_admin").await;
    let plans = billing_as(&service, "").list_plans(pb::ListPlansRequest::default()).await.unwrap().into_inner().plans;
    let paid = plans.iter().find(|p| p.code != "free").unwrap().clone();
    let mut billing = billing_as(&service, &root.tokens.access_token);
    let mut ids = Vec::new();
    for (user, provider) in [(&renewing, "stripe"), (&leaving, ""), (&manual, "")] {
        let period_end = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        let started = billing
            .change_subscription(pb::ChangeSubscriptionRequest {
                tenant_id: tenant.to_string(),
                user_id: user.user_id.to_string(),
                plan_id: paid.id.clone(),
                current_period_end: Some(period_end.into()),
                provider: provider.into(),
                provider_subscription_id: if provider.is_empty() {
                    String::new()
                } else {
                    format!("sub_{}", user.user_id)
                },
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        ids.push(started.subscription.unwrap().id);
    }
    billing_as(&service, &leaving.tokens.access_token)
        .cancel_subscription(pb::CancelSubscriptionRequest {
            subscription_id: ids[1].clone(),
            immediately: false,
            reason: String::new(),
        })
        .await
        .unwrap();
    // Every period is over now.
    sqlx::query(
        "UPDATE identity.subscriptions SET current_period_start = now() - interval '31 days',
                current_period_end = now() - interval '1 second' WHERE id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .execute(service.db.pool())
    .await
    .unwrap();

    let status_of = |i: usize| {
        let (pool, id) = (service.db.pool().clone(), ids[i].clone());
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM identity.subscriptions WHERE id = $1::uuid")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while status_of(0).await == "active" || status_of(1).await == "active" {
        assert!(std::time::Instant::now() < deadline, "the lapsed subscriptions are still live");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((status_of(0).await, status_of(1).await), ("expired".to_string(), "canceled".to_string()));
    // Several sweeps later the manual one is still there.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(status_of(2).await, "active", "nothing can renew a manual subscription, so it does not lapse");
    let ended: Vec<events::SubscriptionChanged> = service
        .events("flatrender.events.v1.SubscriptionChanged")
        .await
        .iter()
        .map(|bytes| <events::SubscriptionChanged as prost::Message>::decode(bytes.as_slice()).unwrap())
        .filter(|e| e.kind == events::SubscriptionChangeKind::Ended as i32)
        .collect();
    assert_eq!(ended.len(), 2, "each said once: {ended:?}");
    for event in &ended {
        assert_eq!((event.previous_plan_code.as_str(), event.plan_code.as_str()), (paid.code.as_str(), "free"));
        assert!(event.by_user_id.is_empty(), "nobody ended it");
    }
    let ended_at_ok: bool = sqlx::query_scalar(
        "SELECT bool_and(ended_at >= current_period_end AND ended_at < now()) FROM identity.subscriptions WHERE id = ANY($1::uuid[]) AND status <> 'active'",
    )
    .bind(&ids)
    .fetch_one(service.db.pool())
    .await
    .unwrap();
    assert!(ended_at_ok, "they ended when their period (or a later cancellation) did");
    // The plan in force is the fallback again.
    let now = billing_as(&service, &renewing.tokens.access_token)
        .get_subscription(pb::GetSubscriptionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(now.subscription.is_none(), "{now:?}");
    service.stop().await;
}
