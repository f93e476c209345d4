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
