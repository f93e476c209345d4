//! Runs of a schedule (`file_mgr.cleanup_runs`), what they removed (`cleanup_run_items`), and
//! the counters a run keeps while it works.

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgExecutor, Postgres, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::model::{FileKind, id_text, optional_timestamp, timestamp, unsigned};

/// The columns [`RunRecord::from_row`] reads.
pub const RUN_COLUMNS: &str = "id, schedule_id, tenant_id, instance_id, state, started_at, finished_at, \
     files_scanned, files_removed, bytes_removed, files_skipped_retained, errors, error_message";

/// The columns [`ItemRecord::from_row`] reads.
pub(crate) const ITEM_COLUMNS: &str = "id, tenant_id, file_id, kind, storage_key, size_bytes, removed_at";

/// The state of a run (`cleanup_runs.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// In progress.
    Running,
    /// Finished (items may have failed: `errors`).
    Succeeded,
    /// Stopped by an error.
    Failed,
}

impl RunState {
    /// The database's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// The state stored as `text`.
    pub fn parse(text: &str) -> Self {
        match text {
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            _ => Self::Failed,
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::CleanupRunState {
        match self {
            Self::Running => pb::CleanupRunState::Running,
            Self::Succeeded => pb::CleanupRunState::Succeeded,
            Self::Failed => pb::CleanupRunState::Failed,
        }
    }
}

/// A run row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    /// Id.
    pub id: Uuid,
    /// Its schedule.
    pub schedule_id: Uuid,
    /// The schedule's tenant; `None` for platform-wide.
    pub tenant_id: Option<Uuid>,
    /// The replica that ran it.
    pub instance_id: String,
    /// State.
    pub state: RunState,
    /// Started at.
    pub started_at: OffsetDateTime,
    /// Finished at; `None` while running.
    pub finished_at: Option<OffsetDateTime>,
    /// What it counted.
    pub tally: Tally,
}

impl RunRecord {
    /// Reads a row selected with [`RUN_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let state: String = row.try_get("state")?;
        Ok(Self {
            id: row.try_get("id")?,
            schedule_id: row.try_get("schedule_id")?,
            tenant_id: row.try_get("tenant_id")?,
            instance_id: row.try_get("instance_id")?,
            state: RunState::parse(&state),
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            tally: Tally {
                scanned: unsigned(row.try_get("files_scanned")?),
                removed: unsigned(row.try_get("files_removed")?),
                bytes: unsigned(row.try_get("bytes_removed")?),
                skipped_retained: unsigned(row.try_get("files_skipped_retained")?),
                errors: unsigned(row.try_get("errors")?),
                first_error: row.try_get("error_message")?,
            },
        })
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::CleanupRun {
        pb::CleanupRun {
            id: self.id.to_string(),
            schedule_id: self.schedule_id.to_string(),
            tenant_id: id_text(self.tenant_id),
            instance_id: self.instance_id.clone(),
            state: self.state.to_proto() as i32,
            started_at: Some(timestamp(self.started_at)),
            finished_at: optional_timestamp(self.finished_at),
            files_scanned: self.tally.scanned,
            files_removed: self.tally.removed,
            bytes_removed: self.tally.bytes,
            files_skipped_retained: self.tally.skipped_retained,
            errors: self.tally.errors,
            error_message: self.tally.first_error.clone().unwrap_or_default(),
        }
    }
}

/// One removed thing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemRecord {
    /// Item id (its removal order).
    pub id: i64,
    /// Tenant; `None` for an object of unknown tenant.
    pub tenant_id: Option<Uuid>,
    /// The removed file's id; `None` for orphan objects and upload parts.
    pub file_id: Option<Uuid>,
    /// Its kind, when known.
    pub kind: Option<FileKind>,
    /// The removed object's key.
    pub storage_key: String,
    /// Bytes freed.
    pub size: u64,
    /// Removed at.
    pub removed_at: OffsetDateTime,
}

impl ItemRecord {
    /// Reads a row selected with `ITEM_COLUMNS`.
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let kind: Option<String> = row.try_get("kind")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            file_id: row.try_get("file_id")?,
            kind: kind.as_deref().map(FileKind::parse),
            storage_key: row.try_get("storage_key")?,
            size: unsigned(row.try_get("size_bytes")?),
            removed_at: row.try_get("removed_at")?,
        })
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::CleanupRunItem {
        pb::CleanupRunItem {
            id: u64::try_from(self.id).unwrap_or(0),
            tenant_id: id_text(self.tenant_id),
            file_id: id_text(self.file_id),
            kind: self.kind.map_or(pb::FileKind::Unspecified, FileKind::to_proto) as i32,
            storage_key: self.storage_key.clone(),
            size_bytes: self.size,
            removed_at: Some(timestamp(self.removed_at)),
        }
    }
}

/// A run's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Candidates examined.
    pub scanned: u64,
    /// Things removed.
    pub removed: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Candidates kept because pinned or retained.
    pub skipped_retained: u64,
    /// Items that failed.
    pub errors: u64,
    /// The first item error (or the error that stopped the run).
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts a failed item, keeping the first message.
    pub(crate) fn failed(&mut self, what: &str, error: impl std::fmt::Display) {
        self.errors += 1;
        tracing::warn!(%error, what, "cleanup could not remove an item; the next run retries");
        if self.first_error.is_none() {
            self.first_error = Some(format!("{what}: {error}"));
        }
    }

    /// Removed plus failed items: what a run's batch size bounds.
    pub(crate) fn handled(&self) -> u64 {
        self.removed + self.errors
    }
}

/// A removed thing, before it is recorded.
pub(crate) struct Removed<'a> {
    /// Tenant, when known.
    pub tenant_id: Option<Uuid>,
    /// The file's id, for files.
    pub file_id: Option<Uuid>,
    /// Kind, for files.
    pub kind: Option<FileKind>,
    /// Object key.
    pub storage_key: &'a str,
    /// Bytes freed.
    pub size: u64,
}

/// Records `item` as removed by run `run`.
pub(crate) async fn record_item(db: impl PgExecutor<'_>, run: Uuid, item: &Removed<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO file_mgr.cleanup_run_items (run_id, tenant_id, file_id, kind, storage_key, size_bytes)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(run)
    .bind(item.tenant_id)
    .bind(item.file_id)
    .bind(item.kind.map(FileKind::as_str))
    .bind(item.storage_key)
    .bind(i64::try_from(item.size).unwrap_or(i64::MAX))
    .execute(db)
    .await?;
    Ok(())
}

/// The counters of a run, set from `$2` to `$7` as [`with_tally`] binds them.
const SET_TALLY: &str = "files_scanned = $2, files_removed = $3, bytes_removed = $4, \
     files_skipped_retained = $5, errors = $6, error_message = $7";

/// `sql`, an update of run `$1` that uses [`SET_TALLY`], with the run and the counters bound.
fn with_tally<'q>(sql: String, run: Uuid, tally: &Tally) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(run)
        .bind(bigint(tally.scanned))
        .bind(bigint(tally.removed))
        .bind(bigint(tally.bytes))
        .bind(bigint(tally.skipped_retained))
        .bind(bigint(tally.errors))
        .bind(tally.first_error.clone())
}

/// Writes the counters of a running run (progress shows while it works).
pub(crate) async fn save_tally(db: impl PgExecutor<'_>, run: Uuid, tally: &Tally) -> Result<()> {
    let sql = format!("UPDATE file_mgr.cleanup_runs SET {SET_TALLY} WHERE id = $1 AND state = 'running'");
    with_tally(sql, run, tally).execute(db).await?;
    Ok(())
}

/// Finishes a running run with its final counters; false when it was no longer running (a
/// replica that reclaimed the schedule declared it abandoned).
pub(crate) async fn finish(db: impl PgExecutor<'_>, run: Uuid, state: RunState, tally: &Tally) -> Result<bool> {
    let sql = format!(
        "UPDATE file_mgr.cleanup_runs SET {SET_TALLY}, state = $8, finished_at = clock_timestamp()
          WHERE id = $1 AND state = 'running'
          RETURNING id"
    );
    let finished = with_tally(sql, run, tally).bind(state.as_str()).fetch_optional(db).await?;
    Ok(finished.is_some())
}

fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_the_first_error_stays() {
        for state in [RunState::Running, RunState::Succeeded, RunState::Failed] {
            assert_eq!(RunState::parse(state.as_str()), state);
        }
        let mut tally = Tally { removed: 2, ..Tally::default() };
        tally.failed("object a", "gone wrong");
        tally.failed("object b", "also wrong");
        assert_eq!(tally.errors, 2);
        assert_eq!(tally.handled(), 4);
        assert_eq!(tally.first_error.as_deref(), Some("object a: gone wrong"));
    }
}
