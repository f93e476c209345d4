//! A cleanup schedule (`file_mgr.cleanup_schedules`) and its rule.

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{FileError, Result};
use crate::model::{id_text, optional_timestamp, timestamp};

/// The columns [`ScheduleRecord::from_row`] reads.
pub const SCHEDULE_COLUMNS: &str = "id, tenant_id, name, rule, max_age_seconds, use_plan_retention, \
     interval_seconds, batch_size, enabled, next_run_at, last_run_at, locked_by, locked_until, created_at, updated_at";

/// What a schedule removes (`cleanup_schedules.rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// `render_chunk` files older than the age.
    RenderChunks,
    /// `snapshot` files older than the age.
    Snapshots,
    /// `export` files older than the age (or the plan's retention).
    Exports,
    /// Upload sessions unfinished past their expiry.
    AbandonedUploads,
    /// Objects without a file row or an unfinished upload.
    OrphanObjects,
    /// Deletions interrupted in state `deleting`.
    DeletingFiles,
}

impl Rule {
    /// Every rule.
    pub const ALL: [Self; 6] = [
        Self::RenderChunks,
        Self::Snapshots,
        Self::Exports,
        Self::AbandonedUploads,
        Self::OrphanObjects,
        Self::DeletingFiles,
    ];

    /// The database's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RenderChunks => "render_chunks",
            Self::Snapshots => "snapshots",
            Self::Exports => "exports",
            Self::AbandonedUploads => "abandoned_uploads",
            Self::OrphanObjects => "orphan_objects",
            Self::DeletingFiles => "deleting_files",
        }
    }

    /// The rule stored as `text`; `None` for text the CHECK constraint does not allow.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|rule| rule.as_str() == text)
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::CleanupRule {
        match self {
            Self::RenderChunks => pb::CleanupRule::RenderChunks,
            Self::Snapshots => pb::CleanupRule::Snapshots,
            Self::Exports => pb::CleanupRule::Exports,
            Self::AbandonedUploads => pb::CleanupRule::AbandonedUploads,
            Self::OrphanObjects => pb::CleanupRule::OrphanObjects,
            Self::DeletingFiles => pb::CleanupRule::DeletingFiles,
        }
    }

    /// A rule from a request; `None` for UNSPECIFIED, `INVALID_ARGUMENT` on `field` for values
    /// that are not rules.
    pub fn from_proto(field: &str, value: i32) -> Result<Option<Self>> {
        let rule = pb::CleanupRule::try_from(value).map_err(|_| FileError::invalid(field, "is not a cleanup rule"))?;
        Ok(match rule {
            pb::CleanupRule::Unspecified => None,
            pb::CleanupRule::RenderChunks => Some(Self::RenderChunks),
            pb::CleanupRule::Snapshots => Some(Self::Snapshots),
            pb::CleanupRule::Exports => Some(Self::Exports),
            pb::CleanupRule::AbandonedUploads => Some(Self::AbandonedUploads),
            pb::CleanupRule::OrphanObjects => Some(Self::OrphanObjects),
            pb::CleanupRule::DeletingFiles => Some(Self::DeletingFiles),
        })
    }
}

/// A schedule row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleRecord {
    /// Id.
    pub id: Uuid,
    /// The tenant it applies to; `None` for the platform-wide rule.
    pub tenant_id: Option<Uuid>,
    /// Name, unique in its scope.
    pub name: String,
    /// What it removes.
    pub rule: Rule,
    /// Remove what is older than this many seconds; `None` with `use_plan_retention`.
    pub max_age_seconds: Option<i64>,
    /// Exports: each owner's plan retention.
    pub use_plan_retention: bool,
    /// Seconds between runs.
    pub interval_seconds: i32,
    /// Most items removed per run.
    pub batch_size: i32,
    /// Runs on its interval.
    pub enabled: bool,
    /// When it is due.
    pub next_run_at: OffsetDateTime,
    /// When it last ran.
    pub last_run_at: Option<OffsetDateTime>,
    /// The replica holding its lease.
    pub locked_by: Option<String>,
    /// Until when the lease holds.
    pub locked_until: Option<OffsetDateTime>,
    /// Created at.
    pub created_at: OffsetDateTime,
    /// Changed at.
    pub updated_at: OffsetDateTime,
}

impl ScheduleRecord {
    /// Reads a row selected with [`SCHEDULE_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let rule: String = row.try_get("rule")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            name: row.try_get("name")?,
            rule: Rule::parse(&rule)
                .ok_or_else(|| sqlx::Error::Decode(format!("unknown cleanup rule {rule:?}").into()))?,
            max_age_seconds: row.try_get("max_age_seconds")?,
            use_plan_retention: row.try_get("use_plan_retention")?,
            interval_seconds: row.try_get("interval_seconds")?,
            batch_size: row.try_get("batch_size")?,
            enabled: row.try_get("enabled")?,
            next_run_at: row.try_get("next_run_at")?,
            last_run_at: row.try_get("last_run_at")?,
            locked_by: row.try_get("locked_by")?,
            locked_until: row.try_get("locked_until")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The replica running it now: the lease holder while the lease has not lapsed.
    pub fn running_on(&self, now: OffsetDateTime) -> Option<&str> {
        match (&self.locked_by, self.locked_until) {
            (Some(holder), Some(until)) if until > now => Some(holder),
            _ => None,
        }
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::CleanupSchedule {
        pb::CleanupSchedule {
            id: self.id.to_string(),
            tenant_id: id_text(self.tenant_id),
            name: self.name.clone(),
            rule: self.rule.to_proto() as i32,
            max_age_seconds: self.max_age_seconds.and_then(|age| u64::try_from(age).ok()),
            use_plan_retention: self.use_plan_retention,
            interval_seconds: u32::try_from(self.interval_seconds).unwrap_or(0),
            batch_size: u32::try_from(self.batch_size).unwrap_or(0),
            enabled: self.enabled,
            next_run_at: Some(timestamp(self.next_run_at)),
            last_run_at: optional_timestamp(self.last_run_at),
            running_on: self.running_on(OffsetDateTime::now_utc()).unwrap_or_default().to_owned(),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip() {
        for rule in Rule::ALL {
            assert_eq!(Rule::parse(rule.as_str()), Some(rule));
            assert_eq!(Rule::from_proto("r", rule.to_proto() as i32).unwrap(), Some(rule));
        }
        assert_eq!(Rule::from_proto("r", 0).unwrap(), None);
        assert!(Rule::from_proto("r", 42).is_err());
        assert_eq!(Rule::parse("everything"), None);
    }
}
