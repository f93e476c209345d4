//! `BillingService`: plans on sale, the subscription in force and the effective limits other
//! services enforce, and subscriptions as data (put on a plan, cancel, list) with their
//! SubscriptionChanged events. Creating and changing plans and recording payments answer
//! `UNIMPLEMENTED` until they land.

use flatrender_kit::auth::{Caller, Role};
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::{Money, PageResponse, Resolution};
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size};
use crate::error::{IdentityError, Result};
use crate::users::timestamp;
use crate::validate;

type Reply<T> = Result<Response<T>, Status>;

/// How long a service may cache an answer of GetPlanLimits.
const LIMITS_TTL_SECONDS: u32 = 60;
/// Subscription states that are in force.
const LIVE: &str = "('trialing', 'active', 'past_due')";

struct PlanRow {
    id: Uuid,
    code: String,
    name: String,
    description: Option<String>,
    price_minor: i64,
    currency: String,
    billing_interval: String,
    render_priority: i16,
    max_resolution_width: i32,
    max_resolution_height: i32,
    max_fps: i16,
    max_video_duration_seconds: i32,
    storage_quota_bytes: i64,
    watermark: bool,
    export_retention_days: i32,
    monthly_render_seconds: Option<i64>,
    max_concurrent_renders: i32,
    max_snapshots_per_hour: Option<i32>,
    voiceover_enabled: bool,
    api_access: bool,
    is_public: bool,
    is_active: bool,
    sort_order: i32,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

from_row!(PlanRow {
    id,
    code,
    name,
    description,
    price_minor,
    currency,
    billing_interval,
    render_priority,
    max_resolution_width,
    max_resolution_height,
    max_fps,
    max_video_duration_seconds,
    storage_quota_bytes,
    watermark,
    export_retention_days,
    monthly_render_seconds,
    max_concurrent_renders,
    max_snapshots_per_hour,
    voiceover_enabled,
    api_access,
    is_public,
    is_active,
    sort_order,
    created_at,
    updated_at
});

const PLAN_COLUMNS: &str = "id, code, name, description, price_minor, currency, billing_interval, render_priority,
    max_resolution_width, max_resolution_height, max_fps, max_video_duration_seconds, storage_quota_bytes, watermark,
    export_retention_days, monthly_render_seconds, max_concurrent_renders, max_snapshots_per_hour, voiceover_enabled,
    api_access, is_public, is_active, sort_order, created_at, updated_at";

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn unsigned32(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

impl PlanRow {
    fn limits(&self) -> pb::PlanLimits {
        pb::PlanLimits {
            render_priority: unsigned32(i64::from(self.render_priority)),
            max_resolution: Some(Resolution {
                width: unsigned32(i64::from(self.max_resolution_width)),
                height: unsigned32(i64::from(self.max_resolution_height)),
            }),
            max_fps: unsigned32(i64::from(self.max_fps)),
            max_video_duration_seconds: unsigned32(i64::from(self.max_video_duration_seconds)),
            storage_quota_bytes: unsigned(self.storage_quota_bytes),
            watermark: self.watermark,
            export_retention_days: unsigned32(i64::from(self.export_retention_days)),
            monthly_render_seconds: self.monthly_render_seconds.map(unsigned),
            max_concurrent_renders: unsigned32(i64::from(self.max_concurrent_renders)),
            max_snapshots_per_hour: self.max_snapshots_per_hour.map(|n| unsigned32(i64::from(n))),
            voiceover_enabled: self.voiceover_enabled,
            api_access: self.api_access,
        }
    }

    fn to_proto(&self) -> pb::Plan {
        pb::Plan {
            id: self.id.to_string(),
            code: self.code.clone(),
            name: self.name.clone(),
            description: self.description.clone().unwrap_or_default(),
            price: Some(Money { amount_minor: self.price_minor, currency: self.currency.clone() }),
            billing_interval: match self.billing_interval.as_str() {
                "none" => pb::BillingInterval::None,
                "month" => pb::BillingInterval::Month,
                "year" => pb::BillingInterval::Year,
                _ => pb::BillingInterval::Unspecified,
            } as i32,
            limits: Some(self.limits()),
            public: self.is_public,
            active: self.is_active,
            sort_order: self.sort_order,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

struct SubscriptionRow {
    id: Uuid,
    tenant_id: Uuid,
    user_id: Option<Uuid>,
    plan_id: Uuid,
    status: String,
    current_period_start: OffsetDateTime,
    current_period_end: Option<OffsetDateTime>,
    trial_ends_at: Option<OffsetDateTime>,
    cancel_at_period_end: bool,
    canceled_at: Option<OffsetDateTime>,
    ended_at: Option<OffsetDateTime>,
    provider: Option<String>,
    provider_subscription_id: Option<String>,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
}

from_row!(SubscriptionRow {
    id,
    tenant_id,
    user_id,
    plan_id,
    status,
    current_period_start,
    current_period_end,
    trial_ends_at,
    cancel_at_period_end,
    canceled_at,
    ended_at,
    provider,
    provider_subscription_id,
    created_at,
    updated_at
});

impl SubscriptionRow {
    fn to_proto(&self, plan: &PlanRow) -> pb::Subscription {
        pb::Subscription {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            user_id: self.user_id.map(|u| u.to_string()).unwrap_or_default(),
            plan: Some(plan.to_proto()),
            status: match self.status.as_str() {
                "trialing" => pb::SubscriptionStatus::Trialing,
                "active" => pb::SubscriptionStatus::Active,
                "past_due" => pb::SubscriptionStatus::PastDue,
                "canceled" => pb::SubscriptionStatus::Canceled,
                "expired" => pb::SubscriptionStatus::Expired,
                _ => pb::SubscriptionStatus::Unspecified,
            } as i32,
            current_period_start: Some(timestamp(self.current_period_start)),
            current_period_end: self.current_period_end.map(timestamp),
            trial_ends_at: self.trial_ends_at.map(timestamp),
            cancel_at_period_end: self.cancel_at_period_end,
            canceled_at: self.canceled_at.map(timestamp),
            ended_at: self.ended_at.map(timestamp),
            provider: self.provider.clone().unwrap_or_default(),
            provider_subscription_id: self.provider_subscription_id.clone().unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

async fn plan_by(conn: &mut PgConnection, condition: &str, value: impl ToString) -> Result<Option<PlanRow>> {
    Ok(sqlx::query_as::<_, PlanRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {PLAN_COLUMNS} FROM identity.plans WHERE {condition}"
    )))
    .bind(value.to_string())
    .fetch_optional(&mut *conn)
    .await?)
}

/// The plan in force for `user` of `tenant` (or the tenant-wide one when `user` is `None`):
/// its live subscription's, else the tenant's live tenant-wide subscription's, else the
/// tenant's plan, else "free".
async fn effective(
    conn: &mut PgConnection,
    tenant: Uuid,
    user: Option<Uuid>,
) -> Result<(Option<SubscriptionRow>, PlanRow, pb::PlanSource)> {
    let live = |who: &str| {
        format!(
            "SELECT id, tenant_id, user_id, plan_id, status, current_period_start, current_period_end, trial_ends_at,
                    cancel_at_period_end, canceled_at, ended_at, provider, provider_subscription_id, created_at, updated_at
             FROM identity.subscriptions WHERE tenant_id = $1 AND {who} AND status IN {LIVE}
             ORDER BY created_at DESC LIMIT 1"
        )
    };
    if let Some(user) = user {
        let own = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(live("user_id = $2")))
            .bind(tenant)
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(subscription) = own {
            let plan =
                plan_by(conn, "id = $1::uuid", subscription.plan_id).await?.ok_or(IdentityError::NotFound("plan"))?;
            return Ok((Some(subscription), plan, pb::PlanSource::UserSubscription));
        }
    }
    let wide = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(live("user_id IS NULL")))
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?;
    if let Some(subscription) = wide {
        let plan =
            plan_by(conn, "id = $1::uuid", subscription.plan_id).await?.ok_or(IdentityError::NotFound("plan"))?;
        return Ok((Some(subscription), plan, pb::PlanSource::TenantSubscription));
    }
    let tenant_plan: Option<Uuid> = sqlx::query_scalar("SELECT plan_id FROM identity.tenants WHERE id = $1")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(IdentityError::NotFound("tenant"))?;
    if let Some(plan) = tenant_plan {
        let plan = plan_by(conn, "id = $1::uuid", plan).await?.ok_or(IdentityError::NotFound("plan"))?;
        return Ok((None, plan, pb::PlanSource::TenantPlan));
    }
    let free = plan_by(conn, "code = $1", "free").await?.ok_or(IdentityError::NotFound("plan"))?;
    Ok((None, free, pb::PlanSource::Free))
}

/// The user `named` and their tenant, as `caller` may see them (another tenant's is NOT_FOUND).
async fn visible_user(conn: &mut PgConnection, caller: &Caller, named: &str) -> Result<(Uuid, Uuid)> {
    let user = validate::uuid("user_id", named)?;
    let own = user == caller.user_id && caller.api_key_id.is_none();
    if !own && caller.role < Role::TenantAdmin {
        return Err(IdentityError::PermissionDenied("only admins read another user's plan".into()));
    }
    let tenant: Option<Uuid> = sqlx::query_scalar("SELECT tenant_id FROM identity.users WHERE id = $1")
        .bind(user)
        .fetch_optional(&mut *conn)
        .await?;
    match tenant {
        Some(tenant) if own || tenant == caller.tenant_id || caller.role == Role::PlatformAdmin => Ok((tenant, user)),
        _ => Err(IdentityError::NotFound("user")),
    }
}

#[tonic::async_trait]
impl pb::billing_service_server::BillingService for IdentityApi {
    async fn list_plans(&self, request: Request<pb::ListPlansRequest>) -> Reply<pb::ListPlansResponse> {
        let all = request.get_ref().include_all;
        if all {
            super::user(&request)?.require(Role::PlatformAdmin)?;
        }
        let limit = page_size(request.get_ref().page.as_ref())?;
        let print = flatrender_kit::page::fingerprint(&[&"plans", &all]);
        let after: Option<(i32, String)> =
            flatrender_kit::page::decode(&print, request.get_ref().page.as_ref().map_or("", |p| p.page_token.as_str()))
                .map_err(|e| IdentityError::invalid("page.page_token", e.to_string()))?;
        let (after_rank, after_code) = after.unzip();
        let mut rows = sqlx::query_as::<_, PlanRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {PLAN_COLUMNS} FROM identity.plans
             WHERE ($1 OR (is_public AND is_active)) AND ($2::int4 IS NULL OR (sort_order, code) > ($2, $3))
             ORDER BY sort_order, code LIMIT $4"
        )))
        .bind(all)
        .bind(after_rank)
        .bind(after_code)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let next = flatrender_kit::page::next_token(&mut rows, limit, |last| {
            flatrender_kit::page::encode(&print, &(last.sort_order, last.code.clone()))
        });
        Ok(Response::new(pb::ListPlansResponse {
            plans: rows.iter().map(PlanRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn get_plan(&self, request: Request<pb::GetPlanRequest>) -> Reply<pb::GetPlanResponse> {
        // Hidden and retired plans are for platform admins and services only.
        let privileged = flatrender_kit::auth::caller(&request)
            .is_ok_and(|c| c.service.is_some() || (c.role == Role::PlatformAdmin && c.api_key_id.is_none()));
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let plan = match &request.get_ref().lookup {
            Some(pb::get_plan_request::Lookup::PlanId(id)) => {
                plan_by(&mut conn, "id = $1::uuid", validate::uuid("plan_id", id)?).await?
            }
            Some(pb::get_plan_request::Lookup::Code(code)) => plan_by(&mut conn, "code = $1", code).await?,
            None => return Err(IdentityError::invalid("lookup", "give plan_id or code").into()),
        };
        match plan {
            Some(plan) if privileged || (plan.is_public && plan.is_active) => {
                Ok(Response::new(pb::GetPlanResponse { plan: Some(plan.to_proto()) }))
            }
            _ => Err(IdentityError::NotFound("plan").into()),
        }
    }

    async fn get_subscription(
        &self,
        request: Request<pb::GetSubscriptionRequest>,
    ) -> Reply<pb::GetSubscriptionResponse> {
        let caller = super::user(&request)?;
        let request = request.into_inner();
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let (tenant, user) = if request.tenant_wide {
            caller.require(Role::TenantAdmin)?;
            let tenant = super::tenant_scope(&caller, &request.tenant_id, super::Foreign::Hidden("tenant"))?;
            (tenant, None)
        } else if request.user_id.is_empty() {
            if caller.api_key_id.is_some() {
                (caller.tenant_id, None)
            } else {
                (caller.tenant_id, Some(caller.user_id))
            }
        } else {
            let (tenant, user) = visible_user(&mut conn, &caller, &request.user_id).await?;
            (tenant, Some(user))
        };
        let (subscription, plan, source) = effective(&mut conn, tenant, user).await?;
        Ok(Response::new(pb::GetSubscriptionResponse {
            subscription: subscription.map(|s| s.to_proto(&plan)),
            effective_plan: Some(plan.to_proto()),
            source: source as i32,
        }))
    }

    async fn list_subscriptions(
        &self,
        request: Request<pb::ListSubscriptionsRequest>,
    ) -> Reply<pb::ListSubscriptionsResponse> {
        let caller = super::user(&request)?;
        caller.require(Role::TenantAdmin)?;
        Ok(Response::new(self.subscriptions_page(&caller, request.into_inner()).await?))
    }

    async fn change_subscription(
        &self,
        request: Request<pb::ChangeSubscriptionRequest>,
    ) -> Reply<pb::ChangeSubscriptionResponse> {
        let caller = flatrender_kit::auth::caller(&request)?.clone();
        if caller.service.is_none() && (caller.role != Role::PlatformAdmin || caller.api_key_id.is_some()) {
            return Err(Status::permission_denied("only platform admins and the billing integration change plans"));
        }
        Ok(Response::new(self.change_subscription(&caller, request.into_inner()).await?))
    }

    async fn cancel_subscription(
        &self,
        request: Request<pb::CancelSubscriptionRequest>,
    ) -> Reply<pb::CancelSubscriptionResponse> {
        let caller = super::user(&request)?;
        Ok(Response::new(self.cancel_subscription(&caller, request.into_inner()).await?))
    }

    async fn get_plan_limits(&self, request: Request<pb::GetPlanLimitsRequest>) -> Reply<pb::GetPlanLimitsResponse> {
        let caller = flatrender_kit::auth::caller(&request)?.clone();
        let request = request.into_inner();
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let (tenant, user) = if caller.service.is_some() {
            // Services ask on behalf of a caller they already verified.
            let tenant = validate::uuid("tenant_id", &request.tenant_id)?;
            (tenant, validate::optional_uuid("user_id", &request.user_id)?)
        } else if request.user_id.is_empty() {
            (caller.tenant_id, caller.api_key_id.is_none().then_some(caller.user_id))
        } else {
            let (tenant, user) = visible_user(&mut conn, &caller, &request.user_id).await?;
            (tenant, Some(user))
        };
        let (_, plan, source) = effective(&mut conn, tenant, user).await?;
        Ok(Response::new(pb::GetPlanLimitsResponse {
            limits: Some(plan.limits()),
            plan_id: plan.id.to_string(),
            plan_code: plan.code.clone(),
            source: source as i32,
            plan_rank: plan.sort_order,
            cache_ttl_seconds: LIMITS_TTL_SECONDS,
        }))
    }
}

const SUBSCRIPTION_COLUMNS: &str = "id, tenant_id, user_id, plan_id, status, current_period_start, current_period_end,
    trial_ends_at, cancel_at_period_end, canceled_at, ended_at, provider, provider_subscription_id, created_at, updated_at";

async fn plan_of(conn: &mut PgConnection, id: Uuid) -> Result<PlanRow> {
    plan_by(conn, "id = $1::uuid", id).await?.ok_or(IdentityError::NotFound("plan"))
}

async fn subscription_by_id(conn: &mut PgConnection, id: Uuid) -> Result<Option<SubscriptionRow>> {
    Ok(sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM identity.subscriptions WHERE id = $1 FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?)
}

fn time_or(field: &'static str, value: Option<&prost_types::Timestamp>) -> Result<Option<OffsetDateTime>> {
    value
        .map(|t| {
            OffsetDateTime::from_unix_timestamp(t.seconds).map_err(|_| IdentityError::invalid(field, "is out of range"))
        })
        .transpose()
}

/// Who changed a subscription, for its event: a person's id, or empty for a service.
fn changed_by(caller: &Caller) -> String {
    if caller.service.is_some() { String::new() } else { caller.user_id.to_string() }
}

/// Ends the subscriptions whose period is over and that nothing will renew: CANCELED when the
/// subscriber asked for the end, EXPIRED when the payment provider did not extend a provider's
/// subscription. Manual subscriptions (no provider; nothing can renew them yet) and PAST_DUE ones
/// (the provider still retries) are left alone. Each ending writes SubscriptionChanged (ENDED)
/// with the plan the subscriber falls back to. Rows are taken under `SKIP LOCKED` and, one by one,
/// ChangeSubscription's lock on their subscriber (skipped while a change is under way), so
/// replicas and changes never interleave; a row that fails is skipped and retried next time.
/// Returns how many ended.
pub async fn end_lapsed(pool: &sqlx::PgPool) -> Result<usize> {
    let mut ended = 0;
    let mut skipped: Vec<Uuid> = Vec::new();
    loop {
        let mut tx = pool.begin().await?;
        let lapsed: Vec<(Uuid, Uuid, Option<Uuid>)> = sqlx::query_as(
            "SELECT id, tenant_id, user_id FROM identity.subscriptions
              WHERE status IN ('trialing', 'active') AND current_period_end <= now()
                AND (cancel_at_period_end OR provider IS NOT NULL) AND NOT (id = ANY($1))
              ORDER BY current_period_end LIMIT 100 FOR UPDATE SKIP LOCKED",
        )
        .bind(&skipped)
        .fetch_all(&mut *tx)
        .await?;
        if lapsed.is_empty() {
            tx.commit().await?;
            return Ok(ended);
        }
        for (id, tenant, user) in lapsed {
            let free: bool = sqlx::query_scalar(
                "SELECT pg_try_advisory_xact_lock(hashtext('identity.subscriptions'), hashtext($1))",
            )
            .bind(format!("{tenant}/{user:?}"))
            .fetch_one(&mut *tx)
            .await?;
            if !free {
                skipped.push(id);
                continue;
            }
            sqlx::query("SAVEPOINT lapse").execute(&mut *tx).await?;
            match end_one(&mut tx, id).await {
                Ok(()) => {
                    sqlx::query("RELEASE SAVEPOINT lapse").execute(&mut *tx).await?;
                    ended += 1;
                }
                Err(error) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT lapse").execute(&mut *tx).await?;
                    tracing::warn!(subscription = %id, %error, "a lapsed subscription could not be ended; retrying later");
                    skipped.push(id);
                }
            }
        }
        tx.commit().await?;
    }
}

/// Ends the lapsed subscription `id` (locked by the caller) and says so.
async fn end_one(tx: &mut sqlx::PgTransaction<'_>, id: Uuid) -> Result<()> {
    let subscription = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE identity.subscriptions
            SET status = CASE WHEN cancel_at_period_end THEN 'canceled' ELSE 'expired' END,
                ended_at = GREATEST(current_period_end, coalesce(canceled_at, current_period_end))
          WHERE id = $1 RETURNING {SUBSCRIPTION_COLUMNS}"
    )))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    let previous = plan_of(tx, subscription.plan_id).await?;
    let (_, fallback, _) = effective(tx, subscription.tenant_id, subscription.user_id).await?;
    let reason = if subscription.status == "canceled" {
        "canceled at the end of its period"
    } else {
        "its period ended without a renewal from the payment provider"
    };
    publish_change(
        tx,
        &subscription,
        events::SubscriptionChangeKind::Ended,
        &previous.code,
        &fallback,
        String::new(),
        reason.into(),
    )
    .await?;
    tracing::info!(subscription = %subscription.id, tenant = %subscription.tenant_id, status = %subscription.status, "a subscription ended with its period");
    Ok(())
}

/// Writes SubscriptionChanged for a subscriber whose plan is now `plan`; `by_user_id` is empty
/// when no person made the change.
#[allow(clippy::too_many_arguments)]
async fn publish_change(
    tx: &mut sqlx::PgTransaction<'_>,
    subscription: &SubscriptionRow,
    kind: events::SubscriptionChangeKind,
    previous: &str,
    plan: &PlanRow,
    by_user_id: String,
    reason: String,
) -> Result<()> {
    outbox::publish(
        tx,
        EventMeta {
            source: "identity",
            aggregate_type: "subscription",
            aggregate_id: subscription.id.to_string(),
            tenant_id: Some(subscription.tenant_id),
        },
        &events::SubscriptionChanged {
            tenant_id: subscription.tenant_id.to_string(),
            occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
            subscription_id: subscription.id.to_string(),
            user_id: subscription.user_id.map(|u| u.to_string()).unwrap_or_default(),
            kind: kind as i32,
            status: subscription.status.clone(),
            previous_plan_code: previous.to_owned(),
            plan_code: plan.code.clone(),
            limits: Some(plan.limits()),
            by_user_id,
            reason,
        },
    )
    .await?;
    Ok(())
}

impl IdentityApi {
    /// Writes SubscriptionChanged for a subscriber whose plan is now `plan`.
    #[allow(clippy::too_many_arguments)]
    async fn subscription_changed(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        subscription: &SubscriptionRow,
        kind: events::SubscriptionChangeKind,
        previous: &str,
        plan: &PlanRow,
        caller: &Caller,
        reason: String,
    ) -> Result<()> {
        publish_change(tx, subscription, kind, previous, plan, changed_by(caller), reason).await
    }

    async fn change_subscription(
        &self,
        caller: &Caller,
        request: pb::ChangeSubscriptionRequest,
    ) -> Result<pb::ChangeSubscriptionResponse> {
        let tenant = validate::uuid("tenant_id", &request.tenant_id)?;
        let user = validate::optional_uuid("user_id", &request.user_id)?;
        let plan_id = validate::uuid("plan_id", &request.plan_id)?;
        let now = OffsetDateTime::now_utc();
        let period_end = time_or("current_period_end", request.current_period_end.as_ref())?;
        let trial_end = time_or("trial_ends_at", request.trial_ends_at.as_ref())?;
        if period_end.is_some_and(|end| end <= now) {
            return Err(IdentityError::invalid("current_period_end", "must be in the future"));
        }
        if trial_end.is_some_and(|end| end <= now) {
            return Err(IdentityError::invalid("trial_ends_at", "must be in the future"));
        }
        let provider = match request.provider.as_str() {
            "" => None,
            p if p.len() <= 32
                && p.starts_with(|c: char| c.is_ascii_lowercase())
                && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') =>
            {
                Some(p.to_owned())
            }
            _ => return Err(IdentityError::invalid("provider", "must be a lower-case name such as stripe")),
        };
        let provider_ref = match request.provider_subscription_id.as_str() {
            "" => None,
            _ if provider.is_none() => {
                return Err(IdentityError::invalid("provider_subscription_id", "needs provider"));
            }
            r if r.chars().count() > 200 => {
                return Err(IdentityError::invalid("provider_subscription_id", "must be at most 200 characters"));
            }
            r => Some(r.to_owned()),
        };
        let key = validate::idempotency_key(&request.idempotency_key)?;
        let digest: Vec<u8> = {
            use sha2::Digest as _;
            sha2::Sha256::digest(format!(
                "{tenant}|{user:?}|{plan_id}|{period_end:?}|{trial_end:?}|{provider:?}|{provider_ref:?}"
            ))
            .to_vec()
        };

        let mut tx = self.identity.pool.begin().await?;
        // One change per subscriber at a time: the live-subscription rule holds under races.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.subscriptions'), hashtext($1))")
            .bind(format!("{tenant}/{user:?}"))
            .execute(&mut *tx)
            .await?;
        if let Some(key) = &key {
            let existing: Option<(Uuid, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT id, request_sha256 FROM identity.subscriptions WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some((id, stored)) = existing {
                if stored.as_deref() != Some(digest.as_slice()) {
                    return Err(IdentityError::AlreadyExists(
                        "this idempotency key was used for another change".into(),
                    ));
                }
                let subscription =
                    subscription_by_id(&mut tx, id).await?.ok_or(IdentityError::NotFound("subscription"))?;
                let plan = plan_of(&mut tx, subscription.plan_id).await?;
                tx.commit().await?;
                return Ok(pb::ChangeSubscriptionResponse {
                    subscription: Some(subscription.to_proto(&plan)),
                    previous: None,
                });
            }
        }
        let tenant_ok: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identity.tenants WHERE id = $1 AND status <> 'deleted')")
                .bind(tenant)
                .fetch_one(&mut *tx)
                .await?;
        if !tenant_ok {
            return Err(IdentityError::NotFound("tenant"));
        }
        if let Some(user) = user {
            let member: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identity.users WHERE id = $1 AND tenant_id = $2)")
                    .bind(user)
                    .bind(tenant)
                    .fetch_one(&mut *tx)
                    .await?;
            if !member {
                return Err(IdentityError::NotFound("user"));
            }
        }
        let plan = plan_of(&mut tx, plan_id).await?;
        if !plan.is_active {
            return Err(IdentityError::FailedPrecondition("the plan is retired: no new subscriptions".into()));
        }
        let (_, before, _) = effective(&mut tx, tenant, user).await?;
        let previous = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
            "UPDATE identity.subscriptions SET status = 'expired', ended_at = now()
             WHERE tenant_id = $1 AND user_id IS NOT DISTINCT FROM $2 AND status IN {LIVE}
             RETURNING {SUBSCRIPTION_COLUMNS}"
        )))
        .bind(tenant)
        .bind(user)
        .fetch_optional(&mut *tx)
        .await?;
        // Unset: one billing interval from now (open-ended for plans billed never).
        let end = period_end.or(match plan.billing_interval.as_str() {
            "month" => Some(now + time::Duration::days(30)),
            "year" => Some(now + time::Duration::days(365)),
            _ => None,
        });
        let status = if trial_end.is_some() { "trialing" } else { "active" };
        let subscription = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO identity.subscriptions
                 (tenant_id, user_id, plan_id, status, current_period_end, trial_ends_at, provider, provider_subscription_id,
                  idempotency_key, request_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {SUBSCRIPTION_COLUMNS}"
        )))
        .bind(tenant)
        .bind(user)
        .bind(plan.id)
        .bind(status)
        .bind(end)
        .bind(trial_end)
        .bind(&provider)
        .bind(&provider_ref)
        .bind(&key)
        .bind(&digest)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| {
            if flatrender_kit::db::is_unique_violation(&e, "subscriptions_provider_ref_key") {
                IdentityError::AlreadyExists("the provider's subscription is already recorded".into())
            } else {
                e.into()
            }
        })?;
        self.subscription_changed(
            &mut tx,
            &subscription,
            events::SubscriptionChangeKind::Started,
            &before.code,
            &plan,
            caller,
            String::new(),
        )
        .await?;
        let previous = match previous {
            Some(old) => {
                let old_plan = plan_of(&mut tx, old.plan_id).await?;
                Some(old.to_proto(&old_plan))
            }
            None => None,
        };
        tx.commit().await?;
        Ok(pb::ChangeSubscriptionResponse { subscription: Some(subscription.to_proto(&plan)), previous })
    }

    async fn cancel_subscription(
        &self,
        caller: &Caller,
        request: pb::CancelSubscriptionRequest,
    ) -> Result<pb::CancelSubscriptionResponse> {
        let id = validate::uuid("subscription_id", &request.subscription_id)?;
        let reason = validate::reason("reason", &request.reason, false)?;
        let mut tx = self.identity.pool.begin().await?;
        let subscription = subscription_by_id(&mut tx, id).await?;
        // The subscriber (a user their own; a tenant admin the tenant-wide one) or a platform admin.
        let allowed = |s: &SubscriptionRow| match s.user_id {
            _ if caller.role == Role::PlatformAdmin && caller.api_key_id.is_none() && caller.service.is_none() => true,
            Some(user) => user == caller.user_id && caller.api_key_id.is_none() && s.tenant_id == caller.tenant_id,
            None => s.tenant_id == caller.tenant_id && caller.role >= Role::TenantAdmin && caller.api_key_id.is_none(),
        };
        let subscription = match subscription {
            Some(s) if allowed(&s) => s,
            _ => return Err(IdentityError::NotFound("subscription")),
        };
        if request.immediately && caller.role != Role::PlatformAdmin {
            return Err(IdentityError::PermissionDenied("only platform admins end a subscription at once".into()));
        }
        let live = ["trialing", "active", "past_due"].contains(&subscription.status.as_str());
        let plan = plan_of(&mut tx, subscription.plan_id).await?;
        if !live || (subscription.cancel_at_period_end && !request.immediately) {
            // Idempotent: already ended, or already set to end.
            tx.commit().await?;
            return Ok(pb::CancelSubscriptionResponse { subscription: Some(subscription.to_proto(&plan)) });
        }
        let statement = if request.immediately {
            "UPDATE identity.subscriptions SET status = 'canceled', canceled_at = now(), ended_at = now() WHERE id = $1"
        } else {
            "UPDATE identity.subscriptions SET cancel_at_period_end = true, canceled_at = now() WHERE id = $1"
        };
        sqlx::query(statement).bind(id).execute(&mut *tx).await?;
        let updated = subscription_by_id(&mut tx, id).await?.ok_or(IdentityError::NotFound("subscription"))?;
        let (kind, now_plan) = if request.immediately {
            let (_, fallback, _) = effective(&mut tx, updated.tenant_id, updated.user_id).await?;
            (events::SubscriptionChangeKind::Ended, fallback)
        } else {
            (events::SubscriptionChangeKind::CancelScheduled, plan_of(&mut tx, updated.plan_id).await?)
        };
        self.subscription_changed(&mut tx, &updated, kind, &plan.code, &now_plan, caller, reason).await?;
        tx.commit().await?;
        Ok(pb::CancelSubscriptionResponse { subscription: Some(updated.to_proto(&plan)) })
    }

    async fn subscriptions_page(
        &self,
        caller: &Caller,
        request: pb::ListSubscriptionsRequest,
    ) -> Result<pb::ListSubscriptionsResponse> {
        let tenant = super::tenant_scope(caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let user = validate::optional_uuid("user_id", &request.user_id)?;
        let plan = validate::optional_uuid("plan_id", &request.plan_id)?;
        let status =
            match pb::SubscriptionStatus::try_from(request.status).unwrap_or(pb::SubscriptionStatus::Unspecified) {
                pb::SubscriptionStatus::Unspecified => None,
                pb::SubscriptionStatus::Trialing => Some("trialing"),
                pb::SubscriptionStatus::Active => Some("active"),
                pb::SubscriptionStatus::PastDue => Some("past_due"),
                pb::SubscriptionStatus::Canceled => Some("canceled"),
                pb::SubscriptionStatus::Expired => Some("expired"),
            };
        let limit = page_size(request.page.as_ref())?;
        let paging = super::paging::NewestFirst::new(&[&"subscriptions", &tenant, &user, &plan, &status]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let mut conn = self.identity.pool.acquire().await?;
        let mut rows = sqlx::query_as::<_, SubscriptionRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM identity.subscriptions
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND ($3::uuid IS NULL OR plan_id = $3)
               AND ($4::text IS NULL OR status = $4) AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6))
             ORDER BY created_at DESC, id DESC LIMIT $7"
        )))
        .bind(tenant)
        .bind(user)
        .bind(plan)
        .bind(status)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        let mut subscriptions = Vec::with_capacity(rows.len());
        for row in &rows {
            let plan = plan_of(&mut conn, row.plan_id).await?;
            subscriptions.push(row.to_proto(&plan));
        }
        Ok(pb::ListSubscriptionsResponse { subscriptions, page: Some(PageResponse { next_page_token: next }) })
    }
}
