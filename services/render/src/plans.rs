//! The plan limits render enforces (priority, output caps, watermark, allowances), mirrored from
//! identity's plans by an outbox consumer of `SubscriptionChanged` and `PlanUpdated`, and a
//! caller's effective plan.
//!
//! - `SubscriptionChanged` with a `user_id`: that user's row; without one (a tenant-wide
//!   subscription, or the tenant's default plan changed): the tenant's row (`user_id` NULL). The
//!   row takes the event's `plan_code` and `limits`; a missing row is created.
//! - `PlanUpdated`: every row of that `plan_code` takes the new limits.
//! - Effective plan of a caller: their own row, else their tenant's, else the seeded `free` plan
//!   ([`PlanLimits::free`], the service's default).
//!
//! Applying an event twice changes nothing the second time (the outbox delivers at least once).
//! Events that cannot be applied (malformed ids, plan codes or limits) are logged and skipped, so
//! they do not hold back every later event.

use flatrender_kit::outbox::{Consumer, Event, Handler, HandlerError};
use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::identity::v1 as identity_pb;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use crate::error::Result;
use crate::state::State;

/// The consumer's name (its cursor in `platform.outbox_consumers`).
pub const CONSUMER: &str = "render-plan-limits";

/// What a plan allows, as render enforces it (`render.plan_limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// The plan's code, e.g. `free` (`render_jobs.plan_code`).
    pub plan_code: String,
    /// Scheduling priority, 0..=100 (higher first).
    pub render_priority: i16,
    /// Largest output width, pixels.
    pub max_width: u32,
    /// Largest output height, pixels.
    pub max_height: u32,
    /// Highest output frame rate.
    pub max_fps: u32,
    /// Longest video, seconds.
    pub max_video_duration_seconds: u32,
    /// Exports carry the watermark.
    pub watermark: bool,
    /// Days an export is kept.
    pub export_retention_days: u32,
    /// Render-node seconds per calendar month (UTC); `None` is unlimited.
    pub monthly_render_seconds: Option<u64>,
    /// Jobs unfinished at once.
    pub max_concurrent_renders: u32,
    /// Snapshot renders per rolling hour; `None` is unlimited.
    pub max_snapshots_per_hour: Option<u32>,
    /// Voiceover tracks may be used.
    pub voiceover_enabled: bool,
}

impl PlanLimits {
    /// The seeded `free` plan (`migrations/03_identity_billing.sql`): what a caller without a plan
    /// of their own or of their tenant gets.
    pub fn free() -> Self {
        Self {
            plan_code: "free".into(),
            render_priority: 0,
            max_width: 1280,
            max_height: 720,
            max_fps: 30,
            max_video_duration_seconds: 60,
            watermark: true,
            export_retention_days: 7,
            monthly_render_seconds: Some(600),
            max_concurrent_renders: 1,
            max_snapshots_per_hour: Some(60),
            voiceover_enabled: false,
        }
    }

    /// The limits of an event, or why they cannot be stored (the CHECKs of `plan_limits`).
    pub fn from_event(plan_code: &str, limits: &identity_pb::PlanLimits) -> Result<Self, String> {
        if !valid_plan_code(plan_code) {
            return Err(format!("plan code {plan_code:?} is malformed"));
        }
        let resolution = limits.max_resolution.as_ref().ok_or("limits.max_resolution is unset")?;
        let within = |value: u32, min: u32, max: u32, name: &str| {
            if (min..=max).contains(&value) { Ok(value) } else { Err(format!("limits.{name} {value} is out of range")) }
        };
        let render_priority = within(limits.render_priority, 0, 100, "render_priority")?;
        Ok(Self {
            plan_code: plan_code.to_owned(),
            render_priority: i16::try_from(render_priority).unwrap_or(0),
            max_width: within(resolution.width, 16, 16384, "max_resolution.width")?,
            max_height: within(resolution.height, 16, 16384, "max_resolution.height")?,
            max_fps: within(limits.max_fps, 1, 240, "max_fps")?,
            max_video_duration_seconds: within(
                limits.max_video_duration_seconds,
                1,
                i32::MAX as u32,
                "max_video_duration_seconds",
            )?,
            watermark: limits.watermark,
            export_retention_days: within(limits.export_retention_days, 1, 3650, "export_retention_days")?,
            monthly_render_seconds: limits.monthly_render_seconds.map(|s| s.min(i64::MAX as u64)),
            max_concurrent_renders: within(
                limits.max_concurrent_renders,
                1,
                i32::MAX as u32,
                "max_concurrent_renders",
            )?,
            max_snapshots_per_hour: limits.max_snapshots_per_hour.map(|n| n.min(i32::MAX as u32)),
            voiceover_enabled: limits.voiceover_enabled,
        })
    }

    fn from_row(row: &PgRow) -> Result<Self> {
        let unsigned = |column: &str| -> Result<u32> {
            let value: i32 = row.try_get(column)?;
            Ok(u32::try_from(value).unwrap_or(0))
        };
        let max_fps: i16 = row.try_get("max_fps")?;
        let monthly: Option<i64> = row.try_get("monthly_render_seconds")?;
        let snapshots: Option<i32> = row.try_get("max_snapshots_per_hour")?;
        Ok(Self {
            plan_code: row.try_get("plan_code")?,
            render_priority: row.try_get("render_priority")?,
            max_width: unsigned("max_width")?,
            max_height: unsigned("max_height")?,
            max_fps: u32::try_from(max_fps).unwrap_or(1),
            max_video_duration_seconds: unsigned("max_video_duration_seconds")?,
            watermark: row.try_get("watermark")?,
            export_retention_days: unsigned("export_retention_days")?,
            monthly_render_seconds: monthly.map(|s| u64::try_from(s).unwrap_or(0)),
            max_concurrent_renders: unsigned("max_concurrent_renders")?,
            max_snapshots_per_hour: snapshots.map(|n| u32::try_from(n).unwrap_or(0)),
            voiceover_enabled: row.try_get("voiceover_enabled")?,
        })
    }
}

/// Whose plan applies to a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanSource {
    /// The user's own subscription.
    User,
    /// The tenant's plan (a tenant-wide subscription or its default plan).
    Tenant,
    /// Neither is known: the service's default (`free`).
    Default,
}

/// A caller's plan and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectivePlan {
    /// The limits.
    pub limits: PlanLimits,
    /// Whose they are.
    pub source: PlanSource,
}

impl EffectivePlan {
    /// Whose usage the plan's allowances count: the user's own jobs under a plan of their own
    /// (or the per-user default), the whole tenant's under the tenant's plan or for an API key.
    pub fn usage_user(&self, user: Option<Uuid>) -> Option<Uuid> {
        match self.source {
            PlanSource::Tenant => None,
            PlanSource::User | PlanSource::Default => user,
        }
    }
}

const COLUMNS: &str = "plan_code, render_priority, max_width, max_height, max_fps, max_video_duration_seconds, \
     watermark, export_retention_days, monthly_render_seconds, max_concurrent_renders, max_snapshots_per_hour, \
     voiceover_enabled";

/// The plan of `user` (or of an API key when `None`) in `tenant`: their row, else the tenant's,
/// else `default`.
pub async fn effective<'e>(
    executor: impl PgExecutor<'e>,
    tenant: Uuid,
    user: Option<Uuid>,
    default: &PlanLimits,
) -> Result<EffectivePlan> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, {COLUMNS} FROM render.plan_limits
          WHERE tenant_id = $1 AND (user_id IS NULL OR user_id = $2)
          ORDER BY user_id NULLS LAST LIMIT 1"
    )))
    .bind(tenant)
    .bind(user)
    .fetch_optional(executor)
    .await?;
    Ok(match row {
        Some(row) => {
            let owner: Option<Uuid> = row.try_get("user_id")?;
            let source = if owner.is_some() { PlanSource::User } else { PlanSource::Tenant };
            EffectivePlan { limits: PlanLimits::from_row(&row)?, source }
        }
        None => EffectivePlan { limits: default.clone(), source: PlanSource::Default },
    })
}

/// Applies plan changes until `signal`.
pub async fn run(state: State, signal: ShutdownSignal) {
    Consumer::new(state.pool.clone(), CONSUMER).run(PlanEvents { state }, signal).await;
}

/// The handler of identity's plan events.
pub struct PlanEvents {
    state: State,
}

impl PlanEvents {
    /// The handler over `state`.
    pub fn new(state: State) -> Self {
        Self { state }
    }

    async fn subscription_changed(&self, event: &ev::SubscriptionChanged) -> Result<()> {
        let Some((tenant, user, limits)) = subscription_target(event) else { return Ok(()) };
        sqlx::query(
            "INSERT INTO render.plan_limits (tenant_id, user_id, plan_code, render_priority, max_width, max_height,
                 max_fps, max_video_duration_seconds, watermark, export_retention_days, monthly_render_seconds,
                 max_concurrent_renders, max_snapshots_per_hour, voiceover_enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT ON CONSTRAINT plan_limits_scope_key DO UPDATE
                SET plan_code = EXCLUDED.plan_code, render_priority = EXCLUDED.render_priority,
                    max_width = EXCLUDED.max_width, max_height = EXCLUDED.max_height, max_fps = EXCLUDED.max_fps,
                    max_video_duration_seconds = EXCLUDED.max_video_duration_seconds,
                    watermark = EXCLUDED.watermark, export_retention_days = EXCLUDED.export_retention_days,
                    monthly_render_seconds = EXCLUDED.monthly_render_seconds,
                    max_concurrent_renders = EXCLUDED.max_concurrent_renders,
                    max_snapshots_per_hour = EXCLUDED.max_snapshots_per_hour,
                    voiceover_enabled = EXCLUDED.voiceover_enabled
              WHERE (render.plan_limits.plan_code, render.plan_limits.render_priority, render.plan_limits.max_width,
                     render.plan_limits.max_height, render.plan_limits.max_fps,
                     render.plan_limits.max_video_duration_seconds, render.plan_limits.watermark,
                     render.plan_limits.export_retention_days, render.plan_limits.monthly_render_seconds,
                     render.plan_limits.max_concurrent_renders, render.plan_limits.max_snapshots_per_hour,
                     render.plan_limits.voiceover_enabled)
                    IS DISTINCT FROM
                    (EXCLUDED.plan_code, EXCLUDED.render_priority, EXCLUDED.max_width, EXCLUDED.max_height,
                     EXCLUDED.max_fps, EXCLUDED.max_video_duration_seconds, EXCLUDED.watermark,
                     EXCLUDED.export_retention_days, EXCLUDED.monthly_render_seconds,
                     EXCLUDED.max_concurrent_renders, EXCLUDED.max_snapshots_per_hour, EXCLUDED.voiceover_enabled)",
        )
        .bind(tenant)
        .bind(user)
        .bind(&limits.plan_code)
        .bind(limits.render_priority)
        .bind(db_i32(limits.max_width))
        .bind(db_i32(limits.max_height))
        .bind(i16::try_from(limits.max_fps).unwrap_or(i16::MAX))
        .bind(db_i32(limits.max_video_duration_seconds))
        .bind(limits.watermark)
        .bind(db_i32(limits.export_retention_days))
        .bind(limits.monthly_render_seconds.map(db_i64))
        .bind(db_i32(limits.max_concurrent_renders))
        .bind(limits.max_snapshots_per_hour.map(db_i32))
        .bind(limits.voiceover_enabled)
        .execute(&self.state.pool)
        .await?;
        Ok(())
    }

    async fn plan_updated(&self, event: &ev::PlanUpdated) -> Result<()> {
        let limits = match event
            .limits
            .as_ref()
            .ok_or_else(|| "limits are unset".to_owned())
            .and_then(|limits| PlanLimits::from_event(&event.plan_code, limits))
        {
            Ok(limits) => limits,
            Err(reason) => {
                tracing::warn!(plan = %event.plan_code, %reason, "skipping a PlanUpdated event that cannot be applied");
                return Ok(());
            }
        };
        sqlx::query(
            "UPDATE render.plan_limits
                SET render_priority = $2, max_width = $3, max_height = $4, max_fps = $5,
                    max_video_duration_seconds = $6, watermark = $7, export_retention_days = $8,
                    monthly_render_seconds = $9, max_concurrent_renders = $10, max_snapshots_per_hour = $11,
                    voiceover_enabled = $12
              WHERE plan_code = $1
                AND (render_priority, max_width, max_height, max_fps, max_video_duration_seconds, watermark,
                     export_retention_days, monthly_render_seconds, max_concurrent_renders, max_snapshots_per_hour,
                     voiceover_enabled)
                    IS DISTINCT FROM ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&limits.plan_code)
        .bind(limits.render_priority)
        .bind(db_i32(limits.max_width))
        .bind(db_i32(limits.max_height))
        .bind(i16::try_from(limits.max_fps).unwrap_or(i16::MAX))
        .bind(db_i32(limits.max_video_duration_seconds))
        .bind(limits.watermark)
        .bind(db_i32(limits.export_retention_days))
        .bind(limits.monthly_render_seconds.map(db_i64))
        .bind(db_i32(limits.max_concurrent_renders))
        .bind(limits.max_snapshots_per_hour.map(db_i32))
        .bind(limits.voiceover_enabled)
        .execute(&self.state.pool)
        .await?;
        Ok(())
    }
}

impl Handler for PlanEvents {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let applied = if let Some(decoded) = event.decode::<ev::SubscriptionChanged>() {
            match decoded {
                Ok(changed) => self.subscription_changed(&changed).await,
                Err(error) => {
                    tracing::warn!(event = event.id, %error, "skipping an undecodable SubscriptionChanged event");
                    Ok(())
                }
            }
        } else if let Some(decoded) = event.decode::<ev::PlanUpdated>() {
            match decoded {
                Ok(updated) => self.plan_updated(&updated).await,
                Err(error) => {
                    tracing::warn!(event = event.id, %error, "skipping an undecodable PlanUpdated event");
                    Ok(())
                }
            }
        } else {
            Ok(())
        };
        applied.map_err(|error| HandlerError(error.to_string()))
    }
}

/// The subscriber and limits a `SubscriptionChanged` event sets; `None` (logged) when it names
/// no valid tenant, user, plan or limits.
fn subscription_target(event: &ev::SubscriptionChanged) -> Option<(Uuid, Option<Uuid>, PlanLimits)> {
    let tenant = Uuid::try_parse(&event.tenant_id).ok();
    let user = if event.user_id.is_empty() { Some(None) } else { Uuid::try_parse(&event.user_id).ok().map(Some) };
    let limits = event
        .limits
        .as_ref()
        .ok_or_else(|| "limits are unset".to_owned())
        .and_then(|limits| PlanLimits::from_event(&event.plan_code, limits));
    match (tenant, user, limits) {
        (Some(tenant), Some(user), Ok(limits)) => Some((tenant, user, limits)),
        (_, _, limits) => {
            tracing::warn!(
                tenant = %event.tenant_id, user = %event.user_id, plan = %event.plan_code,
                limits = %limits.err().unwrap_or_default(),
                "skipping a SubscriptionChanged event without a valid tenant, user, plan code or limits",
            );
            None
        }
    }
}

/// A plan code as the column allows it: `[a-z][a-z0-9_-]{0,31}`.
fn valid_plan_code(code: &str) -> bool {
    let mut chars = code.chars();
    code.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A validated limit for an `integer` column (the checks above keep it in range).
fn db_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// A validated limit for a `bigint` column.
fn db_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatrender_proto::flatrender::common::v1 as common_pb;

    fn limits() -> identity_pb::PlanLimits {
        identity_pb::PlanLimits {
            render_priority: 50,
            max_resolution: Some(common_pb::Resolution { width: 1920, height: 1080 }),
            max_fps: 60,
            max_video_duration_seconds: 600,
            storage_quota_bytes: 1,
            watermark: false,
            export_retention_days: 30,
            monthly_render_seconds: Some(36_000),
            max_concurrent_renders: 3,
            max_snapshots_per_hour: None,
            voiceover_enabled: true,
            api_access: false,
        }
    }

    #[test]
    fn event_limits_follow_the_column_checks() {
        let pro = PlanLimits::from_event("pro", &limits()).unwrap();
        assert_eq!((pro.render_priority, pro.max_width, pro.max_height, pro.max_fps), (50, 1920, 1080, 60));
        assert_eq!(pro.monthly_render_seconds, Some(36_000));
        assert_eq!(pro.max_snapshots_per_hour, None);
        assert!(PlanLimits::from_event("Pro", &limits()).is_err());
        assert!(PlanLimits::from_event("pro", &identity_pb::PlanLimits { render_priority: 101, ..limits() }).is_err());
        assert!(PlanLimits::from_event("pro", &identity_pb::PlanLimits { max_resolution: None, ..limits() }).is_err());
        assert!(PlanLimits::from_event("pro", &identity_pb::PlanLimits { max_fps: 0, ..limits() }).is_err());
        assert!(
            PlanLimits::from_event("pro", &identity_pb::PlanLimits { max_concurrent_renders: 0, ..limits() }).is_err()
        );
        let huge = identity_pb::PlanLimits { monthly_render_seconds: Some(u64::MAX), ..limits() };
        assert_eq!(PlanLimits::from_event("pro", &huge).unwrap().monthly_render_seconds, Some(i64::MAX as u64));
    }

    #[test]
    fn plan_codes_follow_the_column_check() {
        assert!(valid_plan_code("pro") && valid_plan_code("team_2-x"));
        for bad in ["", "Pro", "2pro", "pro plan", &"p".repeat(33)] {
            assert!(!valid_plan_code(bad), "{bad:?}");
        }
    }

    #[test]
    fn allowances_count_per_subscriber() {
        let user = Some(Uuid::new_v4());
        let plan = |source| EffectivePlan { limits: PlanLimits::free(), source };
        assert_eq!(plan(PlanSource::User).usage_user(user), user);
        assert_eq!(plan(PlanSource::Default).usage_user(user), user);
        assert_eq!(plan(PlanSource::Tenant).usage_user(user), None);
    }
}
