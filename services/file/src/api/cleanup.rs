//! Cleanup schedules and their runs (`CleanupService`).
//!
//! Platform admins do everything. Tenant admins read their tenant's schedules and the
//! platform-wide ones, and the runs (and removed items) of their tenant's schedules; a
//! platform-wide schedule's runs cover every tenant, so they are the platform admins' only (a
//! tenant admin's GetCleanupSchedule of a platform-wide schedule has no `last_run`). Anyone else
//! gets PERMISSION_DENIED; a schedule or run the caller cannot see is NOT_FOUND.
//!
//! A schedule's `max_age_seconds` is at most [`MAX_AGE_SECONDS`] (100 years), so that its
//! cutoff is always a valid time.

use flatrender_proto::flatrender::common::v1 as common;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::PgExecutor;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::FileApi;
use crate::access::Actor;
use crate::cleanup::{
    self, Claim, ITEM_COLUMNS, ItemRecord, RUN_COLUMNS, Rule, RunRecord, RunState, SCHEDULE_COLUMNS, ScheduleRecord,
};
use crate::error::{FileError, Result};
use crate::model::from_timestamp;
use crate::{page, validate};

/// The longest `max_age_seconds` a schedule may have: 100 years.
pub const MAX_AGE_SECONDS: u64 = 100 * 365 * 86_400;

#[tonic::async_trait]
impl pb::cleanup_service_server::CleanupService for FileApi {
    async fn list_cleanup_schedules(
        &self,
        request: Request<pb::ListCleanupSchedulesRequest>,
    ) -> Result<Response<pb::ListCleanupSchedulesResponse>, Status> {
        let reader = Reader::of(Actor::from_request(&request)?)?;
        Ok(Response::new(self.list_schedules(reader, request.into_inner()).await?))
    }

    async fn get_cleanup_schedule(
        &self,
        request: Request<pb::GetCleanupScheduleRequest>,
    ) -> Result<Response<pb::GetCleanupScheduleResponse>, Status> {
        let reader = Reader::of(Actor::from_request(&request)?)?;
        let id = validate::id("schedule_id", &request.get_ref().schedule_id)?;
        let schedule = visible_schedule(&self.state.pool, reader, id).await?;
        let last_run = if reader.sees_runs_of(&schedule) { latest_run(&self.state.pool, id).await? } else { None };
        Ok(Response::new(pb::GetCleanupScheduleResponse {
            schedule: Some(schedule.to_proto()),
            last_run: last_run.as_ref().map(RunRecord::to_proto),
        }))
    }

    async fn create_cleanup_schedule(
        &self,
        request: Request<pb::CreateCleanupScheduleRequest>,
    ) -> Result<Response<pb::CreateCleanupScheduleResponse>, Status> {
        platform_admin(Actor::from_request(&request)?)?;
        let schedule = request.into_inner().schedule.ok_or_else(|| FileError::invalid("schedule", "is required"))?;
        Ok(Response::new(pb::CreateCleanupScheduleResponse { schedule: Some(self.create_schedule(schedule).await?) }))
    }

    async fn update_cleanup_schedule(
        &self,
        request: Request<pb::UpdateCleanupScheduleRequest>,
    ) -> Result<Response<pb::UpdateCleanupScheduleResponse>, Status> {
        platform_admin(Actor::from_request(&request)?)?;
        let updated = self.update_schedule(request.into_inner()).await?;
        Ok(Response::new(pb::UpdateCleanupScheduleResponse { schedule: Some(updated) }))
    }

    async fn delete_cleanup_schedule(
        &self,
        request: Request<pb::DeleteCleanupScheduleRequest>,
    ) -> Result<Response<pb::DeleteCleanupScheduleResponse>, Status> {
        platform_admin(Actor::from_request(&request)?)?;
        let id = validate::id("schedule_id", &request.get_ref().schedule_id)?;
        // Its runs and their items go with it (ON DELETE CASCADE); a run in progress loses its
        // lease and is cancelled.
        let deleted: Option<Uuid> =
            sqlx::query_scalar("DELETE FROM file_mgr.cleanup_schedules WHERE id = $1 RETURNING id")
                .bind(id)
                .fetch_optional(&self.state.pool)
                .await
                .map_err(FileError::from)?;
        deleted.ok_or(FileError::NotFound("cleanup schedule"))?;
        Ok(Response::new(pb::DeleteCleanupScheduleResponse {}))
    }

    async fn run_cleanup_schedule(
        &self,
        request: Request<pb::RunCleanupScheduleRequest>,
    ) -> Result<Response<pb::RunCleanupScheduleResponse>, Status> {
        platform_admin(Actor::from_request(&request)?)?;
        let id = validate::id("schedule_id", &request.get_ref().schedule_id)?;
        let run = match cleanup::run_now(&self.state, id).await? {
            Claim::Started(run) | Claim::Running(run) => run,
        };
        Ok(Response::new(pb::RunCleanupScheduleResponse { run: Some(run.to_proto()) }))
    }

    async fn list_cleanup_runs(
        &self,
        request: Request<pb::ListCleanupRunsRequest>,
    ) -> Result<Response<pb::ListCleanupRunsResponse>, Status> {
        let reader = Reader::of(Actor::from_request(&request)?)?;
        Ok(Response::new(self.list_runs(reader, request.into_inner()).await?))
    }

    async fn get_cleanup_run(
        &self,
        request: Request<pb::GetCleanupRunRequest>,
    ) -> Result<Response<pb::GetCleanupRunResponse>, Status> {
        let reader = Reader::of(Actor::from_request(&request)?)?;
        let id = validate::id("run_id", &request.get_ref().run_id)?;
        let run = visible_run(&self.state.pool, reader, id).await?;
        Ok(Response::new(pb::GetCleanupRunResponse { run: Some(run.to_proto()) }))
    }

    async fn list_cleanup_run_items(
        &self,
        request: Request<pb::ListCleanupRunItemsRequest>,
    ) -> Result<Response<pb::ListCleanupRunItemsResponse>, Status> {
        let reader = Reader::of(Actor::from_request(&request)?)?;
        Ok(Response::new(self.list_items(reader, request.into_inner()).await?))
    }
}

/// Who reads schedules and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reader {
    /// Everything.
    Platform,
    /// This tenant's schedules and runs, and the platform-wide schedules.
    Tenant(Uuid),
}

impl Reader {
    fn of(actor: Actor) -> Result<Self> {
        match actor {
            Actor::PlatformAdmin { .. } => Ok(Self::Platform),
            Actor::TenantAdmin { tenant, .. } => Ok(Self::Tenant(tenant)),
            Actor::User { .. } | Actor::Service(_) => {
                Err(FileError::PermissionDenied("only tenant admins and platform admins read cleanup schedules".into()))
            }
        }
    }

    fn sees(self, schedule: &ScheduleRecord) -> bool {
        match self {
            Self::Platform => true,
            Self::Tenant(tenant) => schedule.tenant_id.is_none_or(|own| own == tenant),
        }
    }

    fn sees_runs_of(self, schedule: &ScheduleRecord) -> bool {
        match self {
            Self::Platform => true,
            Self::Tenant(tenant) => schedule.tenant_id == Some(tenant),
        }
    }

    /// The only tenant whose runs this reader sees; `None` for all.
    fn run_tenant(self) -> Option<Uuid> {
        match self {
            Self::Platform => None,
            Self::Tenant(tenant) => Some(tenant),
        }
    }
}

fn platform_admin(actor: Actor) -> Result<()> {
    match actor {
        Actor::PlatformAdmin { .. } => Ok(()),
        _ => Err(FileError::PermissionDenied("only platform admins change or run cleanup schedules".into())),
    }
}

async fn load_schedule(db: impl PgExecutor<'_>, id: Uuid, lock: bool) -> Result<ScheduleRecord> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHEDULE_COLUMNS} FROM file_mgr.cleanup_schedules WHERE id = $1{lock}"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    let row = row.ok_or(FileError::NotFound("cleanup schedule"))?;
    Ok(ScheduleRecord::from_row(&row)?)
}

async fn visible_schedule(pool: &sqlx::PgPool, reader: Reader, id: Uuid) -> Result<ScheduleRecord> {
    let schedule = load_schedule(pool, id, false).await?;
    if reader.sees(&schedule) { Ok(schedule) } else { Err(FileError::NotFound("cleanup schedule")) }
}

async fn latest_run(pool: &sqlx::PgPool, schedule: Uuid) -> Result<Option<RunRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM file_mgr.cleanup_runs WHERE schedule_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1"
    )))
    .bind(schedule)
    .fetch_optional(pool)
    .await?;
    Ok(row.as_ref().map(RunRecord::from_row).transpose()?)
}

async fn visible_run(pool: &sqlx::PgPool, reader: Reader, id: Uuid) -> Result<RunRecord> {
    let row =
        sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {RUN_COLUMNS} FROM file_mgr.cleanup_runs WHERE id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let run = row.as_ref().map(RunRecord::from_row).transpose()?;
    match run {
        Some(run) if reader.run_tenant().is_none_or(|tenant| run.tenant_id == Some(tenant)) => Ok(run),
        _ => Err(FileError::NotFound("cleanup run")),
    }
}

/// A schedule name: 1..=63 characters of `[a-z0-9_-]`, starting with a letter or digit.
fn schedule_name(field: &str, name: &str) -> Result<String> {
    let mut chars = name.chars();
    let valid = (1..=63).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(FileError::invalid(field, "must be 1..=63 characters of [a-z0-9_-], starting with a letter or digit"))
    }
}

/// A schedule's age and timing, checked together.
#[derive(Debug, PartialEq, Eq)]
struct Timing {
    max_age_seconds: Option<i64>,
    use_plan_retention: bool,
    interval_seconds: i32,
    batch_size: i32,
}

impl Timing {
    fn check(rule: Rule, schedule: &pb::CleanupSchedule) -> Result<Self> {
        let max_age_seconds = match (schedule.use_plan_retention, schedule.max_age_seconds) {
            (true, _) if rule != Rule::Exports => {
                return Err(FileError::invalid("schedule.use_plan_retention", "applies only to the EXPORTS rule"));
            }
            (true, Some(_)) => {
                return Err(FileError::invalid("schedule.max_age_seconds", "must be unset with use_plan_retention"));
            }
            (true, None) => None,
            (false, None) => {
                return Err(FileError::invalid("schedule.max_age_seconds", "is required without use_plan_retention"));
            }
            (false, Some(0)) => return Err(FileError::invalid("schedule.max_age_seconds", "must be greater than 0")),
            (false, Some(age)) if age > MAX_AGE_SECONDS => {
                return Err(FileError::invalid(
                    "schedule.max_age_seconds",
                    format!("must be at most {MAX_AGE_SECONDS} (100 years)"),
                ));
            }
            (false, Some(age)) => Some(i64::try_from(age).unwrap_or(i64::MAX)),
        };
        let interval_seconds = match schedule.interval_seconds {
            seconds @ 10..=2_592_000 => i32::try_from(seconds).unwrap_or(i32::MAX),
            _ => return Err(FileError::invalid("schedule.interval_seconds", "must be between 10 and 2592000")),
        };
        let batch_size = match schedule.batch_size {
            size @ 1..=100_000 => i32::try_from(size).unwrap_or(i32::MAX),
            _ => return Err(FileError::invalid("schedule.batch_size", "must be between 1 and 100000")),
        };
        Ok(Self { max_age_seconds, use_plan_retention: schedule.use_plan_retention, interval_seconds, batch_size })
    }
}

fn name_taken(err: sqlx::Error, name: &str) -> FileError {
    if flatrender_kit::db::is_unique_violation(&err, "cleanup_schedules_name_key") {
        FileError::AlreadyExists(format!("a cleanup schedule named {name:?} exists in this scope"))
    } else {
        err.into()
    }
}

impl FileApi {
    async fn list_schedules(
        &self,
        reader: Reader,
        request: pb::ListCleanupSchedulesRequest,
    ) -> Result<pb::ListCleanupSchedulesResponse> {
        let tenant = validate::optional_id("tenant_id", &request.tenant_id)?;
        if request.platform_only && tenant.is_some() {
            return Err(FileError::invalid("platform_only", "cannot be combined with tenant_id"));
        }
        let rule = Rule::from_proto("rule", request.rule)?;
        // (only this tenant's, the platform-wide ones, every tenant's)
        let (only_tenant, platform, all_tenants) = match (reader, tenant, request.platform_only) {
            (_, None, true) => (None, true, false),
            (Reader::Platform, Some(tenant), _) => (Some(tenant), false, false),
            (Reader::Platform, None, false) => (None, true, true),
            (Reader::Tenant(own), Some(tenant), _) if tenant == own => (Some(own), false, false),
            (Reader::Tenant(_), Some(_), _) => return Err(FileError::NotFound("tenant")),
            (Reader::Tenant(own), None, false) => (Some(own), true, false),
        };
        let page_request = request.page.unwrap_or_default();
        let size = validate::page_size("page.page_size", page_request.page_size)?;
        let print = page::fingerprint(&[&"schedules", &only_tenant, &platform, &all_tenants, &rule]);
        let after: Option<(String, Uuid)> = page::decode("page.page_token", &print, &page_request.page_token)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {SCHEDULE_COLUMNS} FROM file_mgr.cleanup_schedules
              WHERE (($2 AND tenant_id IS NULL) OR ($3 AND tenant_id IS NOT NULL) OR tenant_id = $1::uuid)
                AND ($4::text IS NULL OR rule = $4)
                AND ($6::uuid IS NULL OR (name, id) > ($5, $6))
              ORDER BY name, id LIMIT $7"
        )))
        .bind(only_tenant)
        .bind(platform)
        .bind(all_tenants)
        .bind(rule.map(Rule::as_str))
        .bind(after.as_ref().map(|(name, _)| name.as_str()))
        .bind(after.as_ref().map(|&(_, id)| id))
        .bind(size + 1)
        .fetch_all(&self.state.pool)
        .await?;
        let mut schedules = rows.iter().map(ScheduleRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next_page_token =
            page::next_token(&mut schedules, size, |last| page::encode(&print, &(&last.name, last.id)));
        Ok(pb::ListCleanupSchedulesResponse {
            schedules: schedules.iter().map(ScheduleRecord::to_proto).collect(),
            page: Some(common::PageResponse { next_page_token }),
        })
    }

    async fn create_schedule(&self, schedule: pb::CleanupSchedule) -> Result<pb::CleanupSchedule> {
        let tenant = validate::optional_id("schedule.tenant_id", &schedule.tenant_id)?;
        let name = schedule_name("schedule.name", &schedule.name)?;
        let rule = Rule::from_proto("schedule.rule", schedule.rule)?
            .ok_or_else(|| FileError::invalid("schedule.rule", "is required"))?;
        let timing = Timing::check(rule, &schedule)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO file_mgr.cleanup_schedules
                 (tenant_id, name, rule, max_age_seconds, use_plan_retention, interval_seconds, batch_size, enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(tenant)
        .bind(&name)
        .bind(rule.as_str())
        .bind(timing.max_age_seconds)
        .bind(timing.use_plan_retention)
        .bind(timing.interval_seconds)
        .bind(timing.batch_size)
        .bind(schedule.enabled)
        .fetch_one(&self.state.pool)
        .await
        .map_err(|err| name_taken(err, &name))?;
        Ok(ScheduleRecord::from_row(&row)?.to_proto())
    }

    async fn update_schedule(&self, request: pb::UpdateCleanupScheduleRequest) -> Result<pb::CleanupSchedule> {
        let changes = request.schedule.ok_or_else(|| FileError::invalid("schedule", "is required"))?;
        let id = validate::id("schedule.id", &changes.id)?;
        let paths = request.update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(FileError::invalid("update_mask", "must name at least one field"));
        }
        let mut tx = self.state.pool.begin().await?;
        let current = load_schedule(&mut *tx, id, true).await?;
        let mut merged = current.to_proto();
        // `None`: now (next_run_at named but unset).
        let mut next_run_at = Some(current.next_run_at);
        for path in &paths {
            match path.as_str() {
                "name" => merged.name = schedule_name("schedule.name", &changes.name)?,
                "max_age_seconds" => merged.max_age_seconds = changes.max_age_seconds,
                "use_plan_retention" => merged.use_plan_retention = changes.use_plan_retention,
                "interval_seconds" => merged.interval_seconds = changes.interval_seconds,
                "batch_size" => merged.batch_size = changes.batch_size,
                "enabled" => merged.enabled = changes.enabled,
                "next_run_at" => {
                    next_run_at = changes
                        .next_run_at
                        .as_ref()
                        .map(|at| from_timestamp("schedule.next_run_at", at))
                        .transpose()?;
                }
                "rule" | "tenant_id" => return Err(FileError::invalid("update_mask", format!("{path} is immutable"))),
                other => {
                    return Err(FileError::invalid("update_mask", format!("{other:?} is not a field that can change")));
                }
            }
        }
        let timing = Timing::check(current.rule, &merged)?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.cleanup_schedules
                SET name = $2, max_age_seconds = $3, use_plan_retention = $4, interval_seconds = $5,
                    batch_size = $6, enabled = $7, next_run_at = COALESCE($8, now())
              WHERE id = $1
              RETURNING {SCHEDULE_COLUMNS}"
        )))
        .bind(id)
        .bind(&merged.name)
        .bind(timing.max_age_seconds)
        .bind(timing.use_plan_retention)
        .bind(timing.interval_seconds)
        .bind(timing.batch_size)
        .bind(merged.enabled)
        .bind(next_run_at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| name_taken(err, &merged.name))?;
        tx.commit().await?;
        Ok(ScheduleRecord::from_row(&row)?.to_proto())
    }

    async fn list_runs(
        &self,
        reader: Reader,
        request: pb::ListCleanupRunsRequest,
    ) -> Result<pb::ListCleanupRunsResponse> {
        let schedule = validate::optional_id("schedule_id", &request.schedule_id)?;
        if let Some(id) = schedule {
            visible_schedule(&self.state.pool, reader, id).await?;
        }
        let state = match pb::CleanupRunState::try_from(request.state) {
            Ok(pb::CleanupRunState::Unspecified) => None,
            Ok(pb::CleanupRunState::Running) => Some(RunState::Running),
            Ok(pb::CleanupRunState::Succeeded) => Some(RunState::Succeeded),
            Ok(pb::CleanupRunState::Failed) => Some(RunState::Failed),
            Err(_) => return Err(FileError::invalid("state", "is not a cleanup run state")),
        };
        let range = request.started.unwrap_or_default();
        let from = range.start_time.as_ref().map(|at| from_timestamp("started.start_time", at)).transpose()?;
        let until = range.end_time.as_ref().map(|at| from_timestamp("started.end_time", at)).transpose()?;
        let page_request = request.page.unwrap_or_default();
        let size = validate::page_size("page.page_size", page_request.page_size)?;
        let print = page::fingerprint(&[&"runs", &reader.run_tenant(), &schedule, &state, &from, &until]);
        let after: Option<(i64, Uuid)> = page::decode("page.page_token", &print, &page_request.page_token)?;
        let after = after
            .map(|(micros, id)| {
                OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .map(|at| (at, id))
                    .map_err(|_| FileError::invalid("page.page_token", "is not a page token of this listing"))
            })
            .transpose()?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM file_mgr.cleanup_runs
              WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::uuid IS NULL OR schedule_id = $2)
                AND ($3::text IS NULL OR state = $3)
                AND ($4::timestamptz IS NULL OR started_at >= $4) AND ($5::timestamptz IS NULL OR started_at < $5)
                AND ($7::uuid IS NULL OR (started_at, id) < ($6, $7))
              ORDER BY started_at DESC, id DESC LIMIT $8"
        )))
        .bind(reader.run_tenant())
        .bind(schedule)
        .bind(state.map(RunState::as_str))
        .bind(from)
        .bind(until)
        .bind(after.map(|(at, _)| at))
        .bind(after.map(|(_, id)| id))
        .bind(size + 1)
        .fetch_all(&self.state.pool)
        .await?;
        let mut runs = rows.iter().map(RunRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next_page_token = page::next_token(&mut runs, size, |last| {
            let micros = i64::try_from(last.started_at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
            page::encode(&print, &(micros, last.id))
        });
        Ok(pb::ListCleanupRunsResponse {
            runs: runs.iter().map(RunRecord::to_proto).collect(),
            page: Some(common::PageResponse { next_page_token }),
        })
    }

    async fn list_items(
        &self,
        reader: Reader,
        request: pb::ListCleanupRunItemsRequest,
    ) -> Result<pb::ListCleanupRunItemsResponse> {
        let run = validate::id("run_id", &request.run_id)?;
        visible_run(&self.state.pool, reader, run).await?;
        let page_request = request.page.unwrap_or_default();
        let size = validate::page_size("page.page_size", page_request.page_size)?;
        let print = page::fingerprint(&[&"run-items", &run]);
        let after: Option<i64> = page::decode("page.page_token", &print, &page_request.page_token)?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {ITEM_COLUMNS} FROM file_mgr.cleanup_run_items
              WHERE run_id = $1 AND ($2::bigint IS NULL OR id > $2)
              ORDER BY id LIMIT $3"
        )))
        .bind(run)
        .bind(after)
        .bind(size + 1)
        .fetch_all(&self.state.pool)
        .await?;
        let mut items = rows.iter().map(ItemRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
        let next_page_token = page::next_token(&mut items, size, |last| page::encode(&print, &last.id));
        Ok(pb::ListCleanupRunItemsResponse {
            items: items.iter().map(ItemRecord::to_proto).collect(),
            page: Some(common::PageResponse { next_page_token }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_names_follow_the_column_check() {
        for good in ["a", "render-chunks", "0_x", &"a".repeat(63)] {
            assert!(schedule_name("n", good).is_ok(), "{good:?}");
        }
        for bad in ["", "-a", "_a", "A", "a b", "é", &"a".repeat(64)] {
            assert!(schedule_name("n", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timing_rules() {
        let base = pb::CleanupSchedule {
            max_age_seconds: Some(60),
            interval_seconds: 10,
            batch_size: 1,
            ..pb::CleanupSchedule::default()
        };
        assert!(Timing::check(Rule::Snapshots, &base).is_ok());
        let plan = pb::CleanupSchedule { max_age_seconds: None, use_plan_retention: true, ..base.clone() };
        assert!(Timing::check(Rule::Exports, &plan).is_ok());
        assert!(Timing::check(Rule::Snapshots, &plan).is_err());
        let both = pb::CleanupSchedule { use_plan_retention: true, ..base.clone() };
        assert!(Timing::check(Rule::Exports, &both).is_err());
        for bad in [
            pb::CleanupSchedule { max_age_seconds: None, ..base.clone() },
            pb::CleanupSchedule { max_age_seconds: Some(0), ..base.clone() },
            pb::CleanupSchedule { max_age_seconds: Some(MAX_AGE_SECONDS + 1), ..base.clone() },
            pb::CleanupSchedule { interval_seconds: 9, ..base.clone() },
            pb::CleanupSchedule { interval_seconds: 2_592_001, ..base.clone() },
            pb::CleanupSchedule { batch_size: 0, ..base.clone() },
            pb::CleanupSchedule { batch_size: 100_001, ..base.clone() },
        ] {
            assert!(Timing::check(Rule::Snapshots, &bad).is_err(), "{bad:?}");
        }
    }
}
