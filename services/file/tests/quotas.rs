//! QuotaService over the real service: who sees and sets which quota, listing order and pages,
//! limits below usage, the "nearly full" warning, and limits that follow plan events.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
mod moto;
mod support;

use std::time::Duration;

use flatrender_file::ledger::{Ledger, Refusal};
use flatrender_file::settings::GIB;
use flatrender_kit::auth::ServiceName;
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::PageRequest;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as pb;
use flatrender_proto::flatrender::identity::v1::PlanLimits;
use support::{Principal, Seed, Service, bytes, code};
use tonic::Code;
use uuid::Uuid;

/// The render-chunks platform schedule seeded by the migration.
const RENDER_CHUNKS: &str = "00000000-0000-0000-0013-000000000001";

fn get(tenant: &str, user: &str, tenant_wide: bool) -> pb::GetQuotaRequest {
    pb::GetQuotaRequest { tenant_id: tenant.into(), user_id: user.into(), tenant_wide }
}

fn set(tenant: &str, user: &str, tenant_wide: bool, limit: Option<u64>) -> pb::SetQuotaLimitRequest {
    pb::SetQuotaLimitRequest { tenant_id: tenant.into(), user_id: user.into(), tenant_wide, limit_bytes: limit }
}

fn list(
    tenant: &str,
    tenant_wide: bool,
    ratio: f64,
    sort: pb::QuotaSortField,
    page: PageRequest,
) -> pb::ListQuotasRequest {
    pb::ListQuotasRequest {
        page: Some(page),
        tenant_id: tenant.into(),
        tenant_wide,
        min_usage_ratio: ratio,
        sort_field: sort as i32,
    }
}

async fn seed(service: &Service, tenant: Uuid, owner: Uuid, kind: &str, len: usize) -> Uuid {
    let data = bytes(len as u64, len);
    service
        .seed_file(Seed { tenant, owner: Some(owner), folder: None, name: "f.bin", kind, data: &data, counted: true })
        .await
}

async fn user_quota(service: &Service, who: &Principal) -> pb::Quota {
    service.quotas(who).get_quota(get("", "", false)).await.unwrap().into_inner().quota.unwrap()
}

#[tokio::test]
async fn who_gets_which_quota() {
    let service = Service::start().await;
    let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
    let (user, neighbour, admin) = (Principal::user(tenant), Principal::user(tenant), Principal::tenant_admin(tenant));
    seed(&service, tenant, user.user, "asset", 300).await;

    let own = service.quotas(&user).get_quota(get("", "", false)).await.unwrap().into_inner();
    let quota = own.quota.unwrap();
    assert_eq!((quota.user_id.as_str(), quota.tenant_id.as_str()), (&*user.user.to_string(), &*tenant.to_string()));
    assert_eq!((quota.used_bytes, quota.file_count, quota.reserved_bytes), (300, 1, 0));
    assert_eq!((quota.limit_bytes, quota.available_bytes), (5 * GIB, 5 * GIB - 300));
    assert_eq!(quota.limit_source, pb::QuotaLimitSource::Default as i32);
    assert!(quota.plan_code.is_empty() && quota.warned_at.is_none());
    let tenant_quota = own.tenant_quota.unwrap();
    assert!(tenant_quota.user_id.is_empty());
    assert_eq!((tenant_quota.limit_bytes, tenant_quota.used_bytes), (100 * GIB, 300));

    // Users: only their own, never the tenant's, never another tenant.
    let mut quotas = service.quotas(&user);
    assert_eq!(code(quotas.get_quota(get("", &neighbour.user.to_string(), false)).await), Code::PermissionDenied);
    assert_eq!(code(quotas.get_quota(get("", "", true)).await), Code::PermissionDenied);
    assert_eq!(code(quotas.get_quota(get(&other_tenant.to_string(), "", false)).await), Code::NotFound);
    assert_eq!(code(quotas.get_quota(get("", "not-a-uuid", false)).await), Code::InvalidArgument);

    // Tenant admins: any user of theirs and the tenant's; another tenant does not exist.
    let mut quotas = service.quotas(&admin);
    let seen = quotas.get_quota(get("", &user.user.to_string(), false)).await.unwrap().into_inner();
    assert_eq!(seen.quota.unwrap().used_bytes, 300);
    let wide = quotas.get_quota(get("", "", true)).await.unwrap().into_inner();
    assert_eq!((wide.quota.unwrap().used_bytes, wide.tenant_quota), (300, None));
    assert_eq!(code(quotas.get_quota(get(&other_tenant.to_string(), "", true)).await), Code::NotFound);

    // Services name the tenant (and the user unless tenant-wide).
    let mut quotas = service.quotas(&Principal::service(ServiceName::Render));
    let seen = quotas.get_quota(get(&tenant.to_string(), &user.user.to_string(), false)).await.unwrap();
    assert_eq!(seen.into_inner().quota.unwrap().used_bytes, 300);
    assert_eq!(code(quotas.get_quota(get("", &user.user.to_string(), false)).await), Code::InvalidArgument);
    assert_eq!(code(quotas.get_quota(get(&tenant.to_string(), "", false)).await), Code::InvalidArgument);

    // Platform admins: any tenant.
    let mut quotas = service.quotas(&Principal::platform_admin());
    let wide = quotas.get_quota(get(&tenant.to_string(), "", true)).await.unwrap().into_inner().quota.unwrap();
    assert_eq!(wide.used_bytes, 300);
}

#[tokio::test]
async fn lists_are_fullest_first_with_filters_and_pages() {
    let service = Service::start().await;
    let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
    let admin = Principal::tenant_admin(tenant);
    let (half, nearly, little) = (Principal::user(tenant), Principal::user(tenant), Principal::user(tenant));
    let mut quotas = service.quotas(&admin);
    for (who, limit) in [(&half, 1000), (&nearly, 1000), (&little, 10_000)] {
        quotas.set_quota_limit(set("", &who.user.to_string(), false, Some(limit))).await.unwrap();
    }
    seed(&service, tenant, half.user, "asset", 500).await;
    seed(&service, tenant, nearly.user, "asset", 950).await;
    for _ in 0..3 {
        seed(&service, tenant, little.user, "asset", 40).await;
    }
    seed(&service, other_tenant, Uuid::new_v4(), "asset", 10).await;

    let users = |quotas: &[pb::Quota]| quotas.iter().map(|q| q.user_id.parse::<Uuid>().unwrap()).collect::<Vec<_>>();
    let all = PageRequest::default();
    let by_ratio = quotas.list_quotas(list("", false, 0.0, pb::QuotaSortField::Unspecified, all.clone())).await;
    assert_eq!(users(&by_ratio.unwrap().into_inner().quotas), vec![nearly.user, half.user, little.user]);
    let by_used = quotas.list_quotas(list("", false, 0.0, pb::QuotaSortField::UsedBytes, all.clone())).await;
    assert_eq!(users(&by_used.unwrap().into_inner().quotas), vec![nearly.user, half.user, little.user]);
    let by_count = quotas.list_quotas(list("", false, 0.0, pb::QuotaSortField::FileCount, all.clone())).await;
    assert_eq!(users(&by_count.unwrap().into_inner().quotas)[0], little.user);
    let full = quotas.list_quotas(list("", false, 0.9, pb::QuotaSortField::Unspecified, all.clone())).await;
    assert_eq!(users(&full.unwrap().into_inner().quotas), vec![nearly.user]);

    // Pages of one, in the same order; a token is tied to its filters.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = PageRequest { page_size: 1, page_token: token.clone() };
        let answer = quotas.list_quotas(list("", false, 0.0, pb::QuotaSortField::Unspecified, page)).await.unwrap();
        let answer = answer.into_inner();
        seen.extend(users(&answer.quotas));
        token = answer.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
        let other = PageRequest { page_size: 1, page_token: token.clone() };
        let mismatch = quotas.list_quotas(list("", false, 0.0, pb::QuotaSortField::UsedBytes, other)).await;
        assert_eq!(code(mismatch), Code::InvalidArgument);
    }
    assert_eq!(seen, vec![nearly.user, half.user, little.user]);

    // Tenant admins list only their users; tenant-wide lists are the platform's.
    let wide = quotas.list_quotas(list("", true, 0.0, pb::QuotaSortField::Unspecified, all.clone())).await;
    assert_eq!(code(wide), Code::PermissionDenied);
    let elsewhere = list(&other_tenant.to_string(), false, 0.0, pb::QuotaSortField::Unspecified, all.clone());
    assert_eq!(code(quotas.list_quotas(elsewhere).await), Code::NotFound);
    let bad_ratio = quotas.list_quotas(list("", false, 1.5, pb::QuotaSortField::Unspecified, all.clone())).await;
    assert_eq!(code(bad_ratio), Code::InvalidArgument);
    let as_user = list("", false, 0.0, pb::QuotaSortField::Unspecified, all.clone());
    assert_eq!(code(service.quotas(&half).list_quotas(as_user).await), Code::PermissionDenied);

    // Platform admins: tenant-wide quotas of every tenant, or of one.
    let mut platform = service.quotas(&Principal::platform_admin());
    let every = platform.list_quotas(list("", true, 0.0, pb::QuotaSortField::UsedBytes, all.clone())).await.unwrap();
    let tenants: Vec<String> = every.into_inner().quotas.iter().map(|q| q.tenant_id.clone()).collect();
    assert_eq!(tenants, vec![tenant.to_string(), other_tenant.to_string()]);
    let one = list(&other_tenant.to_string(), false, 0.0, pb::QuotaSortField::Unspecified, all.clone());
    assert_eq!(platform.list_quotas(one).await.unwrap().into_inner().quotas.len(), 1);
}

#[tokio::test]
async fn admins_set_limits_within_their_reach() {
    let service = Service::start().await;
    let (tenant, other_tenant) = (Uuid::new_v4(), Uuid::new_v4());
    let (user, admin, platform) =
        (Principal::user(tenant), Principal::tenant_admin(tenant), Principal::platform_admin());
    let user_id = user.user.to_string();

    let wide = service.quotas(&platform).set_quota_limit(set(&tenant.to_string(), "", true, Some(10_000))).await;
    let wide = wide.unwrap().into_inner().quota.unwrap();
    assert_eq!((wide.limit_bytes, wide.limit_source), (10_000, pb::QuotaLimitSource::Admin as i32));

    // Never above the tenant's own limit; the refused call leaves nothing behind.
    let before = service.footprint().await;
    let mut quotas = service.quotas(&admin);
    assert_eq!(code(quotas.set_quota_limit(set("", &user_id, false, Some(10_001))).await), Code::FailedPrecondition);
    assert_eq!(service.footprint().await, before);
    assert_eq!(service.rows("quotas").await, 1, "only the tenant-wide row exists");
    let set_ok = quotas.set_quota_limit(set("", &user_id, false, Some(10_000))).await.unwrap().into_inner();
    assert_eq!(set_ok.quota.unwrap().limit_source, pb::QuotaLimitSource::Admin as i32);

    // Beyond their role or tenant.
    assert_eq!(code(quotas.set_quota_limit(set("", "", true, Some(1))).await), Code::PermissionDenied);
    let elsewhere = set(&other_tenant.to_string(), &user_id, false, Some(1));
    assert_eq!(code(quotas.set_quota_limit(elsewhere).await), Code::NotFound);
    let mut as_user = service.quotas(&user);
    assert_eq!(code(as_user.set_quota_limit(set("", &user_id, false, Some(1))).await), Code::PermissionDenied);
    let mut as_service = service.quotas(&Principal::service(ServiceName::Render));
    let by_service = set(&tenant.to_string(), &user_id, false, Some(1));
    assert_eq!(code(as_service.set_quota_limit(by_service).await), Code::PermissionDenied);
    assert_eq!(code(quotas.set_quota_limit(set("", &user_id, false, Some(u64::MAX))).await), Code::InvalidArgument);

    // A limit below usage is allowed; nothing is deleted, and new writes are refused.
    seed(&service, tenant, user.user, "asset", 600).await;
    let lowered = quotas.set_quota_limit(set("", &user_id, false, Some(100))).await.unwrap().into_inner();
    let lowered = lowered.quota.unwrap();
    assert_eq!((lowered.limit_bytes, lowered.used_bytes, lowered.available_bytes), (100, 600, 0));
    assert_eq!(service.rows("files").await, 1);
    let ledger = Ledger::new(&service.settings);
    let mut tx = service.db.pool().begin().await.unwrap();
    let refused = ledger.charge(&mut tx, tenant, Some(user.user), 1).await;
    assert!(
        matches!(refused, Err(Refusal::Exceeded(ref exceeded)) if exceeded.quota.limit_bytes == 100),
        "{refused:?}"
    );
    tx.rollback().await.unwrap();

    // Clearing the override goes back to the configured default.
    let cleared = quotas.set_quota_limit(set("", &user_id, false, None)).await.unwrap().into_inner().quota.unwrap();
    assert_eq!((cleared.limit_bytes, cleared.limit_source), (5 * GIB, pb::QuotaLimitSource::Default as i32));
    assert_eq!(user_quota(&service, &user).await.limit_bytes, 5 * GIB);
    let tenant_cleared = service.quotas(&platform).set_quota_limit(set(&tenant.to_string(), "", true, None)).await;
    assert_eq!(tenant_cleared.unwrap().into_inner().quota.unwrap().limit_bytes, 100 * GIB);
}

fn nearly_full_events(payloads: Vec<Vec<u8>>) -> Vec<ev::QuotaNearlyFull> {
    payloads
        .into_iter()
        .map(|payload| {
            let event = outbox::Event {
                id: 0,
                event_type: "flatrender.events.v1.QuotaNearlyFull".into(),
                source: "file".into(),
                aggregate_type: "quota".into(),
                aggregate_id: String::new(),
                tenant_id: None,
                payload,
                trace_context: serde_json::Value::Null,
                created_at: time::OffsetDateTime::now_utc(),
            };
            event.decode::<ev::QuotaNearlyFull>().unwrap().unwrap()
        })
        .collect()
}

#[tokio::test]
async fn nearly_full_warns_once_per_crossing() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let (user, admin) = (Principal::user(tenant), Principal::tenant_admin(tenant));
    let limit = set("", &user.user.to_string(), false, Some(1000));
    service.quotas(&admin).set_quota_limit(limit).await.unwrap();
    let events = || service.events("flatrender.events.v1.QuotaNearlyFull");

    seed(&service, tenant, user.user, "asset", 500).await;
    assert!(events().await.is_empty());
    let chunk = seed(&service, tenant, user.user, "render_chunk", 400).await;
    let warned = nearly_full_events(events().await);
    assert_eq!(warned.len(), 1, "crossing 90 % warns");
    assert_eq!(warned[0].user_id, user.user.to_string());
    assert_eq!((warned[0].used_bytes, warned[0].limit_bytes, warned[0].threshold_percent), (900, 1000, 90));
    assert!(user_quota(&service, &user).await.warned_at.is_some());
    seed(&service, tenant, user.user, "asset", 50).await;
    assert_eq!(events().await.len(), 1, "no second warning while still above");

    // Drop below (cleanup removes the chunk), then cross again.
    sqlx::query("UPDATE file_mgr.files SET created_at = now() - interval '2 days' WHERE id = $1")
        .bind(chunk)
        .execute(service.db.pool())
        .await
        .unwrap();
    let run = service.run_cleanup(RENDER_CHUNKS).await;
    assert_eq!(run.files_removed, 1);
    let quota = user_quota(&service, &user).await;
    assert_eq!((quota.used_bytes, quota.warned_at), (550, None));
    seed(&service, tenant, user.user, "asset", 400).await;
    let warned = nearly_full_events(events().await);
    assert_eq!(warned.len(), 2, "warns again after dropping below");
    assert_eq!(warned[1].used_bytes, 950);
}

/// Publishes `event` into the outbox as identity would, in a transaction of its own.
async fn publish(service: &Service, tenant: Option<Uuid>, event: &impl IdentityEvent) {
    let mut tx = service.db.pool().begin().await.unwrap();
    event.publish(&mut tx, tenant).await;
    tx.commit().await.unwrap();
}

/// Identity's events, published as identity would.
trait IdentityEvent {
    async fn publish(&self, tx: &mut sqlx::PgTransaction<'_>, tenant: Option<Uuid>);
}

impl IdentityEvent for ev::SubscriptionChanged {
    async fn publish(&self, tx: &mut sqlx::PgTransaction<'_>, tenant: Option<Uuid>) {
        let meta = EventMeta {
            source: "identity",
            aggregate_type: "subscription",
            aggregate_id: "s".into(),
            tenant_id: tenant,
        };
        outbox::publish(tx, meta, self).await.unwrap();
    }
}

impl IdentityEvent for ev::PlanUpdated {
    async fn publish(&self, tx: &mut sqlx::PgTransaction<'_>, tenant: Option<Uuid>) {
        let meta =
            EventMeta { source: "identity", aggregate_type: "plan", aggregate_id: "p".into(), tenant_id: tenant };
        outbox::publish(tx, meta, self).await.unwrap();
    }
}

fn subscription(tenant: Uuid, user: Option<Uuid>, plan: &str, bytes: u64) -> ev::SubscriptionChanged {
    ev::SubscriptionChanged {
        tenant_id: tenant.to_string(),
        user_id: user.map(|user| user.to_string()).unwrap_or_default(),
        kind: ev::SubscriptionChangeKind::Started as i32,
        plan_code: plan.into(),
        limits: Some(PlanLimits { storage_quota_bytes: bytes, ..PlanLimits::default() }),
        ..ev::SubscriptionChanged::default()
    }
}

/// Polls `who`'s quota (as a platform admin) until `done` holds (20 s deadline).
async fn quota_once(
    service: &Service,
    tenant: Uuid,
    user: Option<Uuid>,
    done: impl Fn(&pb::Quota) -> bool,
) -> pb::Quota {
    let mut quotas = service.quotas(&Principal::platform_admin());
    let request = get(&tenant.to_string(), &user.map(|u| u.to_string()).unwrap_or_default(), user.is_none());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let quota = quotas.get_quota(request.clone()).await.unwrap().into_inner().quota.unwrap();
        if done(&quota) {
            return quota;
        }
        assert!(tokio::time::Instant::now() < deadline, "the quota never got there: {quota:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn limits_follow_plan_events_and_overrides_stay() {
    let service = Service::start().await;
    let tenant = Uuid::new_v4();
    let (fresh, overridden, marker) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let admin = Principal::tenant_admin(tenant);
    let override_limit = set("", &overridden.to_string(), false, Some(1234));
    service.quotas(&admin).set_quota_limit(override_limit).await.unwrap();

    // The user's event creates its quota from the plan; the tenant-wide one is published last.
    let mut tx = service.db.pool().begin().await.unwrap();
    subscription(tenant, Some(fresh), "pro", 50_000).publish(&mut tx, Some(tenant)).await;
    subscription(tenant, Some(overridden), "pro", 50_000).publish(&mut tx, Some(tenant)).await;
    subscription(tenant, None, "team", 1_000_000).publish(&mut tx, Some(tenant)).await;
    tx.commit().await.unwrap();
    let wide = quota_once(&service, tenant, None, |q| q.limit_source == pb::QuotaLimitSource::Plan as i32).await;
    assert_eq!((wide.limit_bytes, wide.plan_code.as_str()), (1_000_000, "team"));
    let user = quota_once(&service, tenant, Some(fresh), |_| true).await;
    assert_eq!((user.limit_bytes, user.plan_code.as_str()), (50_000, "pro"));
    assert_eq!(user.limit_source, pb::QuotaLimitSource::Plan as i32);
    let kept = quota_once(&service, tenant, Some(overridden), |_| true).await;
    assert_eq!((kept.limit_bytes, kept.limit_source), (1234, pb::QuotaLimitSource::Admin as i32));

    // The plan's limits change for every quota on it; delivered twice, nothing changes again.
    let updated = ev::PlanUpdated {
        plan_code: "pro".into(),
        limits: Some(PlanLimits { storage_quota_bytes: 70_000, ..PlanLimits::default() }),
        ..ev::PlanUpdated::default()
    };
    publish(&service, None, &updated).await;
    let user = quota_once(&service, tenant, Some(fresh), |q| q.limit_bytes == 70_000).await;
    publish(&service, None, &updated).await;
    publish(&service, Some(tenant), &subscription(tenant, Some(marker), "pro", 1)).await;
    quota_once(&service, tenant, Some(marker), |q| q.limit_source == pb::QuotaLimitSource::Plan as i32).await;
    let again = quota_once(&service, tenant, Some(fresh), |_| true).await;
    assert_eq!(again, user, "a redelivered event changes nothing");
    let kept = quota_once(&service, tenant, Some(overridden), |_| true).await;
    assert_eq!(kept.limit_bytes, 1234);
}
