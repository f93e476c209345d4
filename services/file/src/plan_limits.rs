//! Quota limits that follow identity's plans: an outbox consumer of `SubscriptionChanged` and
//! `PlanUpdated`, and what every change of a limit must also do (the "nearly full" warning).
//!
//! - `SubscriptionChanged` with a `user_id`: that user's quota; without one (a tenant-wide
//!   subscription, or the tenant's default plan changed): the tenant-wide quota. The quota takes
//!   the event's `limits.storage_quota_bytes` with source `plan` and the event's `plan_code`,
//!   unless its limit is an admin override, which stays. A missing quota row is created that way.
//!   Users of the tenant without a quota of source `plan` are not touched by a tenant-level event:
//!   the event does not say which of them have a plan of their own.
//! - `PlanUpdated`: every quota of source `plan` with that `plan_code` takes the new limit.
//!
//! Applying an event twice changes nothing the second time (the outbox delivers at least once).
//! Events that cannot be applied (malformed ids or plan codes) are logged and skipped, so they
//! do not hold back every later event.

use flatrender_kit::outbox::{Consumer, Event, Handler, HandlerError};
use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::events::v1 as ev;
use sqlx::PgTransaction;
use uuid::Uuid;

use crate::error::Result;
use crate::events;
use crate::model::{QUOTA_COLUMNS, QuotaRecord};
use crate::state::State;

/// The consumer's name (its cursor in `platform.outbox_consumers`).
pub const CONSUMER: &str = "file-plan-limits";

/// The largest limit a quota takes (about 92 PB): larger plan limits are capped to it, so that
/// percentages of a limit always fit PostgreSQL's `bigint`.
pub const MAX_LIMIT_BYTES: u64 = (i64::MAX / 100) as u64;

/// Applies plan changes to quota limits until `signal`.
pub async fn run(state: State, signal: ShutdownSignal) {
    Consumer::new(state.pool.clone(), CONSUMER).run(PlanLimits { state }, signal).await;
}

/// The handler of identity's plan events.
pub struct PlanLimits {
    state: State,
}

impl PlanLimits {
    /// The handler over `state`.
    pub fn new(state: State) -> Self {
        Self { state }
    }

    async fn subscription_changed(&self, event: &ev::SubscriptionChanged) -> Result<()> {
        let Some((tenant, user, code, limit)) = subscription_target(event) else { return Ok(()) };
        let mut tx = self.state.pool.begin().await?;
        let changed: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO file_mgr.quotas (tenant_id, user_id, limit_bytes, limit_source, plan_code)
             VALUES ($1, $2, $3, 'plan', $4)
             ON CONFLICT ON CONSTRAINT quotas_scope_key DO UPDATE
                SET limit_bytes = EXCLUDED.limit_bytes, limit_source = 'plan', plan_code = EXCLUDED.plan_code
              WHERE file_mgr.quotas.limit_source IN ('plan', 'default')
                AND (file_mgr.quotas.limit_bytes, file_mgr.quotas.limit_source, file_mgr.quotas.plan_code)
                    IS DISTINCT FROM (EXCLUDED.limit_bytes, 'plan', EXCLUDED.plan_code)
             RETURNING id",
        )
        .bind(tenant)
        .bind(user)
        .bind(limit)
        .bind(code)
        .fetch_all(&mut *tx)
        .await?;
        limits_changed(&mut tx, &changed, self.state.settings.quota_warning_percent).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn plan_updated(&self, event: &ev::PlanUpdated) -> Result<()> {
        let (Some(code), Some(limits)) = (plan_code(&event.plan_code), event.limits.as_ref()) else {
            tracing::warn!(plan = %event.plan_code, "skipping a PlanUpdated event without a valid plan code or limits");
            return Ok(());
        };
        let mut tx = self.state.pool.begin().await?;
        let changed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE file_mgr.quotas SET limit_bytes = $2
              WHERE limit_source = 'plan' AND plan_code = $1 AND limit_bytes <> $2
              RETURNING id",
        )
        .bind(code)
        .bind(capped(limits.storage_quota_bytes))
        .fetch_all(&mut *tx)
        .await?;
        limits_changed(&mut tx, &changed, self.state.settings.quota_warning_percent).await?;
        tx.commit().await?;
        Ok(())
    }
}

impl Handler for PlanLimits {
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

/// The quota scope, plan code and limit a `SubscriptionChanged` event sets; `None` (logged)
/// when it names no valid tenant, user, plan or limits.
fn subscription_target(event: &ev::SubscriptionChanged) -> Option<(Uuid, Option<Uuid>, &str, i64)> {
    let tenant = Uuid::try_parse(&event.tenant_id).ok();
    let user = if event.user_id.is_empty() { Some(None) } else { Uuid::try_parse(&event.user_id).ok().map(Some) };
    let target = match (tenant, user, plan_code(&event.plan_code), event.limits.as_ref()) {
        (Some(tenant), Some(user), Some(code), Some(limits)) => {
            Some((tenant, user, code, capped(limits.storage_quota_bytes)))
        }
        _ => None,
    };
    if target.is_none() {
        tracing::warn!(
            tenant = %event.tenant_id, user = %event.user_id, plan = %event.plan_code,
            "skipping a SubscriptionChanged event without a valid tenant, user, plan code or limits",
        );
    }
    target
}

/// A plan code as `quotas.plan_code` allows it: `[a-z][a-z0-9_-]{0,31}`.
fn plan_code(code: &str) -> Option<&str> {
    let mut chars = code.chars();
    let valid = code.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    valid.then_some(code)
}

/// A limit as stored: at most [`MAX_LIMIT_BYTES`].
pub(crate) fn capped(bytes: u64) -> i64 {
    i64::try_from(bytes.min(MAX_LIMIT_BYTES)).unwrap_or(i64::MAX)
}

/// After the limits of quotas `ids` changed, in the same transaction: a quota now below the
/// warning threshold may warn again later, and one now at or above it warns once (a
/// `QuotaNearlyFull` event), as when usage grows.
pub(crate) async fn limits_changed(tx: &mut PgTransaction<'_>, ids: &[Uuid], warning_percent: u8) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let percent = i64::from(warning_percent);
    sqlx::query(
        "UPDATE file_mgr.quotas SET warned_at = NULL
          WHERE id = ANY($1) AND warned_at IS NOT NULL AND used_bytes::numeric * 100 < limit_bytes::numeric * $2",
    )
    .bind(ids)
    .bind(percent)
    .execute(&mut **tx)
    .await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE file_mgr.quotas SET warned_at = now()
          WHERE id = ANY($1) AND warned_at IS NULL AND limit_bytes > 0
            AND used_bytes::numeric * 100 >= limit_bytes::numeric * $2
          RETURNING {QUOTA_COLUMNS}"
    )))
    .bind(ids)
    .bind(percent)
    .fetch_all(&mut **tx)
    .await?;
    for row in rows {
        events::quota_nearly_full(tx, &QuotaRecord::from_row(&row)?, warning_percent).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_codes_follow_the_column_check() {
        assert_eq!(plan_code("pro"), Some("pro"));
        assert_eq!(plan_code("team_2-x"), Some("team_2-x"));
        for bad in ["", "Pro", "2pro", "pro plan", &"p".repeat(33)] {
            assert_eq!(plan_code(bad), None, "{bad:?}");
        }
        assert_eq!(capped(u64::MAX), (i64::MAX / 100));
        assert_eq!(capped(5), 5);
    }
}
