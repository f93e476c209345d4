//! `BillingService`, the reads: plans on sale, a customer's subscription in force, and the
//! effective limits other services enforce. Changing plans and subscriptions and recording
//! payments answer `UNIMPLEMENTED` until they land.

use flatrender_kit::auth::{Caller, Role};
use flatrender_proto::flatrender::common::v1::{Money, PageResponse, Resolution};
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
            let tenant = match validate::optional_uuid("tenant_id", &request.tenant_id)? {
                None => caller.tenant_id,
                Some(t) if t == caller.tenant_id || caller.role == Role::PlatformAdmin => t,
                Some(_) => return Err(IdentityError::NotFound("tenant").into()),
            };
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
