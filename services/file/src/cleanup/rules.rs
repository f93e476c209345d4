//! What each rule removes, one item at a time, at most `batch_size` per run (removed plus
//! failed items; the next run continues). Candidates are read in pages in a stable order (keyset),
//! and each is checked again under a row lock before anything is removed.
//!
//! - `render_chunks`, `snapshots`, `exports`: active files of the kind created before the cutoff.
//!   Pinned or retained files are kept and counted as `files_skipped_retained` (they do not use
//!   up the batch). Removal: [`State::mark_deleting`] then [`State::finish_removal`] with reason
//!   RETENTION, so object, row, quota usage and the `FileDeleted` event go together.
//! - `exports` with `use_plan_retention`: the file service does not know plans' export retention
//!   yet (identity's `export_retention_days` is not passed to it), so such a schedule removes
//!   exports older than [`DEFAULT_EXPORT_RETENTION_DAYS`]. A schedule with `max_age_seconds`
//!   uses that age.
//! - `abandoned_uploads`: sessions still `active`/`completing` past `expires_at` and unchanged
//!   for `max_age_seconds`. Under the session's row lock: its parts are removed from storage (and
//!   for a simple upload the object at its `staging_key`, unless a file row owns that key), then
//!   in the same transaction the session becomes `expired`, its quota reservation is released and
//!   its part rows are deleted. One item per removed part or object.
//! - `deleting_files`: files left in state `deleting` for `max_age_seconds` (an interrupted
//!   deletion) are finished with [`State::finish_removal`]; the original reason is not known, so
//!   the `FileDeleted` event says SYSTEM.
//! - `orphan_objects`: objects under `tenants/` (and `uploads/` for the platform-wide rule) last
//!   modified before the cutoff whose key belongs to no file row (in any state) and to no
//!   unfinished upload session (its `staging_key`, or a part under it). A tenant's rule lists only
//!   `tenants/<tenant>/files`. Parts left behind by finished sessions are orphans too.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::events::v1::FileDeletionReason;
use futures_util::StreamExt;
use sqlx::Row;
use time::OffsetDateTime;
use uuid::Uuid;

use super::runs::{self, Removed, Tally};
use super::schedule::{Rule, ScheduleRecord};
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileKind, FileRecord, SESSION_COLUMNS, SessionRecord};
use crate::state::State;
use crate::storage::{ObjectInfo, ObjectKey, StorageError};

/// Export retention used by `use_plan_retention` schedules while plan retention is unknown to
/// the file service (see the module documentation).
pub const DEFAULT_EXPORT_RETENTION_DAYS: i64 = 30;

/// Candidates read per query.
const PAGE: i64 = 200;
/// How often a running run's counters are written.
const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Why a run stopped before its end.
#[derive(Debug)]
pub(super) enum Halt {
    /// Shutdown: the run stops between items; the schedule stays due.
    Stopped,
    /// An error that stops the whole run (not an item's).
    Failed(FileError),
}

impl<E: Into<FileError>> From<E> for Halt {
    fn from(err: E) -> Self {
        Self::Failed(err.into())
    }
}

/// One run at work: the schedule, its counters, and when to stop.
pub(super) struct Job<'a> {
    /// The service's state.
    pub state: &'a State,
    /// The schedule being run.
    pub schedule: &'a ScheduleRecord,
    /// Its run.
    pub run_id: Uuid,
    /// Shutdown, for scheduled runs (on-demand runs have none).
    pub signal: Option<&'a ShutdownSignal>,
    /// What the run counted so far.
    pub tally: Tally,
    saved_at: Instant,
}

impl<'a> Job<'a> {
    /// A job for run `run_id` of `schedule`; `signal` stops it between items.
    pub fn new(
        state: &'a State,
        schedule: &'a ScheduleRecord,
        run_id: Uuid,
        signal: Option<&'a ShutdownSignal>,
    ) -> Self {
        Self { state, schedule, run_id, signal, tally: Tally::default(), saved_at: Instant::now() }
    }

    /// Between items: stops on shutdown, and writes the counters now and then.
    async fn checkpoint(&mut self) -> Result<(), Halt> {
        if self.signal.is_some_and(ShutdownSignal::is_started) {
            return Err(Halt::Stopped);
        }
        if self.saved_at.elapsed() >= SAVE_EVERY {
            if let Err(error) = runs::save_tally(&self.state.pool, self.run_id, &self.tally).await {
                tracing::warn!(%error, run = %self.run_id, "could not save a cleanup run's progress");
            }
            self.saved_at = Instant::now();
        }
        Ok(())
    }

    /// Before a candidate of a paged scan: stops on shutdown, answers false once the batch is
    /// done, and otherwise counts the candidate as scanned.
    async fn next_candidate(&mut self) -> Result<bool, Halt> {
        self.checkpoint().await?;
        if self.tally.handled() >= u64::try_from(self.schedule.batch_size).unwrap_or(0) {
            return Ok(false);
        }
        self.tally.scanned += 1;
        Ok(true)
    }

    /// Items this run may still handle.
    fn remaining(&self) -> usize {
        let batch = u64::try_from(self.schedule.batch_size).unwrap_or(0);
        usize::try_from(batch.saturating_sub(self.tally.handled())).unwrap_or(usize::MAX)
    }

    /// What is older than this goes: now minus the schedule's age, by the database's clock.
    async fn cutoff(&self) -> Result<OffsetDateTime> {
        let age = self.schedule.max_age_seconds.unwrap_or(DEFAULT_EXPORT_RETENTION_DAYS * 86_400);
        Ok(sqlx::query_scalar("SELECT now() - $1::bigint * interval '1 second'")
            .bind(age)
            .fetch_one(&self.state.pool)
            .await?)
    }

    /// Records a removed item; the removal itself already happened, so a failure is only logged.
    async fn record(&mut self, item: Removed<'_>) {
        self.tally.removed += 1;
        self.tally.bytes += item.size;
        if let Err(error) = runs::record_item(&self.state.pool, self.run_id, &item).await {
            tracing::warn!(%error, run = %self.run_id, key = item.storage_key, "could not record a removed item");
        }
    }
}

/// Runs the schedule's rule.
pub(super) async fn run(job: &mut Job<'_>) -> Result<(), Halt> {
    match job.schedule.rule {
        Rule::RenderChunks => scan_files(job, FileScan::Expired(FileKind::RenderChunk)).await,
        Rule::Snapshots => scan_files(job, FileScan::Expired(FileKind::Snapshot)).await,
        Rule::Exports => scan_files(job, FileScan::Expired(FileKind::Export)).await,
        Rule::AbandonedUploads => abandoned_uploads(job).await,
        Rule::OrphanObjects => orphan_objects(job).await,
        Rule::DeletingFiles => scan_files(job, FileScan::Deleting).await,
    }
}

/// The condition "row of `column`'s tenant is this run's": the schedule's tenant (`$tenant`), or
/// for a platform-wide schedule every tenant without a schedule of its own for rule `$rule`.
fn scope(column: &str, tenant: u8, rule: u8) -> String {
    format!(
        "(({column} = ${tenant}::uuid) OR (${tenant}::uuid IS NULL AND NOT EXISTS (
             SELECT 1 FROM file_mgr.cleanup_schedules o WHERE o.rule = ${rule} AND o.tenant_id = {column})))"
    )
}

/// What became of one expired file.
enum Expired {
    /// Object and row removed.
    Removed(Box<FileRecord>),
    /// Pinned or retained: kept.
    Protected,
    /// Gone meanwhile, or no longer a candidate.
    Gone,
}

/// Removes file `id` unless it is protected, checked under its row lock.
async fn expire_file(state: &State, id: Uuid, cutoff: OffsetDateTime) -> Result<Expired> {
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM file_mgr.files WHERE id = $1 AND state = 'active' AND created_at < $2 FOR UPDATE"
    )))
    .bind(id)
    .bind(cutoff)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(Expired::Gone) };
    if FileRecord::from_row(&row)?.is_protected(OffsetDateTime::now_utc()) {
        return Ok(Expired::Protected);
    }
    let Some(file) = state.mark_deleting(&mut tx, id).await? else { return Ok(Expired::Gone) };
    tx.commit().await?;
    Ok(if state.finish_removal(&file, FileDeletionReason::Retention, None).await? {
        Expired::Removed(Box::new(file))
    } else {
        Expired::Gone
    })
}

fn file_item(file: &FileRecord) -> Removed<'_> {
    Removed {
        tenant_id: Some(file.tenant_id),
        file_id: Some(file.id),
        kind: Some(file.kind),
        storage_key: &file.storage_key,
        size: file.size,
    }
}

/// The files a rule removes, found by a keyset-paged scan (see [`scan_files`]).
#[derive(Clone, Copy)]
enum FileScan {
    /// Active files of the kind created before the cutoff; protected ones are kept.
    Expired(FileKind),
    /// Files left in state `deleting` since before the cutoff.
    Deleting,
}

impl FileScan {
    /// The fixed condition on `f` (literal, so the partial indexes apply; `$7` is the kind).
    fn filter(self) -> &'static str {
        match self {
            Self::Expired(_) => "f.kind = $7 AND f.state = 'active'",
            Self::Deleting => "f.state = 'deleting'",
        }
    }

    /// The time compared with the cutoff, and paged by.
    fn column(self) -> &'static str {
        match self {
            Self::Expired(_) => "created_at",
            Self::Deleting => "updated_at",
        }
    }

    /// The value of [`Self::column`] of `file`.
    fn age(self, file: &FileRecord) -> OffsetDateTime {
        match self {
            Self::Expired(_) => file.created_at,
            Self::Deleting => file.updated_at,
        }
    }

    /// Removes `file` (a candidate) and counts what became of it.
    async fn remove(self, job: &mut Job<'_>, file: &FileRecord, cutoff: OffsetDateTime) {
        let what = || format!("file {}", file.id);
        match self {
            Self::Expired(_) => match expire_file(job.state, file.id, cutoff).await {
                Ok(Expired::Removed(file)) => job.record(file_item(&file)).await,
                Ok(Expired::Protected) => job.tally.skipped_retained += 1,
                Ok(Expired::Gone) => {}
                Err(error) => job.tally.failed(&what(), error),
            },
            Self::Deleting => match job.state.finish_removal(file, FileDeletionReason::System, None).await {
                Ok(true) => job.record(file_item(file)).await,
                Ok(false) => {}
                Err(error) => job.tally.failed(&what(), error),
            },
        }
    }
}

/// Removes the files of `scan` older than the cutoff, oldest first, reading them in keyset
/// pages by (age, id), until they run out or the batch is done.
async fn scan_files(job: &mut Job<'_>, scan: FileScan) -> Result<(), Halt> {
    let cutoff = job.cutoff().await?;
    let column = scan.column();
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM file_mgr.files f
          WHERE {filter} AND f.{column} < $1
            AND ($2::timestamptz IS NULL OR (f.{column}, f.id) > ($2, $3))
            AND {scope}
          ORDER BY f.{column}, f.id LIMIT $6",
        filter = scan.filter(),
        scope = scope("f.tenant_id", 4, 5)
    );
    let mut after: Option<(OffsetDateTime, Uuid)> = None;
    loop {
        let query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(after.map(|(at, _)| at))
            .bind(after.map(|(_, id)| id))
            .bind(job.schedule.tenant_id)
            .bind(job.schedule.rule.as_str())
            .bind(PAGE);
        let query = match scan {
            FileScan::Expired(kind) => query.bind(kind.as_str()),
            FileScan::Deleting => query,
        };
        let page: Vec<FileRecord> =
            query.fetch_all(&job.state.pool).await?.iter().map(FileRecord::from_row).collect::<sqlx::Result<_>>()?;
        for file in &page {
            if !job.next_candidate().await? {
                return Ok(());
            }
            scan.remove(job, file, cutoff).await;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = Some((scan.age(last), last.id)),
            _ => return Ok(()),
        }
    }
}

async fn abandoned_uploads(job: &mut Job<'_>) -> Result<(), Halt> {
    let cutoff = job.cutoff().await?;
    let sql = format!(
        "SELECT s.id, s.expires_at FROM file_mgr.upload_sessions s
          WHERE s.state IN ('active', 'completing') AND s.expires_at < now() AND s.updated_at < $1
            AND ($2::timestamptz IS NULL OR (s.expires_at, s.id) > ($2, $3))
            AND {}
          ORDER BY s.expires_at, s.id LIMIT $6",
        scope("s.tenant_id", 4, 5)
    );
    let mut after: Option<(OffsetDateTime, Uuid)> = None;
    loop {
        let page: Vec<(Uuid, OffsetDateTime)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(cutoff)
            .bind(after.map(|(at, _)| at))
            .bind(after.map(|(_, id)| id))
            .bind(job.schedule.tenant_id)
            .bind(job.schedule.rule.as_str())
            .bind(PAGE)
            .fetch_all(&job.state.pool)
            .await?;
        for &(id, _) in &page {
            if !job.next_candidate().await? {
                return Ok(());
            }
            match expire_session(job.state, id).await {
                Ok(Some(expired)) => {
                    for item in &expired.removed {
                        job.record(Removed {
                            tenant_id: Some(expired.tenant_id),
                            file_id: None,
                            kind: None,
                            storage_key: &item.0,
                            size: item.1,
                        })
                        .await;
                    }
                }
                Ok(None) => {}
                Err(error) => job.tally.failed(&format!("upload session {id}"), error),
            }
        }
        match page.last() {
            Some(&(id, at)) if page.len() == PAGE as usize => after = Some((at, id)),
            _ => return Ok(()),
        }
    }
}

/// An expired session and the objects removed with it (key, size).
struct ExpiredSession {
    tenant_id: Uuid,
    removed: Vec<(String, u64)>,
}

/// Expires session `id` if it is still unfinished past its expiry: removes its objects, then
/// marks it expired, releases its reservation and deletes its part rows in one transaction,
/// all under its row lock (so it cannot be completed meanwhile).
async fn expire_session(state: &State, id: Uuid) -> Result<Option<ExpiredSession>> {
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS}, staging_key, storage_backend FROM file_mgr.upload_sessions
          WHERE id = $1 AND state IN ('active', 'completing') AND expires_at < now() FOR UPDATE"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let session = SessionRecord::from_row(&row)?;
    let staging_key: String = row.try_get("staging_key")?;
    let backend: String = row.try_get("storage_backend")?;

    let mut removed = Vec::new();
    // A session of another backend (the service was moved) has nothing this one can remove.
    if backend == state.storage.backend().as_str() {
        let parts = sqlx::query(
            "SELECT part_number, size_bytes, storage_key FROM file_mgr.upload_parts WHERE session_id = $1
              ORDER BY part_number",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        state.storage.abort_upload(id).await?;
        for part in &parts {
            let number: i32 = part.try_get("part_number")?;
            let size: i64 = part.try_get("size_bytes")?;
            let key: Option<String> = part.try_get("storage_key")?;
            let key = match key {
                Some(key) => key,
                None => ObjectKey::upload_part(id, u32::try_from(number).unwrap_or(0))
                    .map_or_else(|_| format!("{staging_key}/{number:05}"), |key| key.to_string()),
            };
            removed.push((key, u64::try_from(size).unwrap_or(0)));
        }
        if session.simple
            && let Some(object) = remove_simple_object(state, &mut tx, &staging_key).await?
        {
            removed.push(object);
        }
    }

    sqlx::query(
        "UPDATE file_mgr.upload_sessions
            SET state = 'expired', aborted_at = now(), reserved_bytes = 0,
                error_message = COALESCE(error_message, 'the upload was not completed in time')
          WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    state.ledger.release(&mut tx, session.tenant_id, session.owner_user_id, session.reserved_bytes).await?;
    sqlx::query("DELETE FROM file_mgr.upload_parts WHERE session_id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(Some(ExpiredSession { tenant_id: session.tenant_id, removed }))
}

/// Removes the object a simple upload was streaming into, unless a file row owns it (the upload
/// did finish). Returns its key and size when there was one.
async fn remove_simple_object(
    state: &State,
    tx: &mut sqlx::PgTransaction<'_>,
    staging_key: &str,
) -> Result<Option<(String, u64)>> {
    let owned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM file_mgr.files WHERE storage_backend = $1 AND storage_key = $2)",
    )
    .bind(state.storage.backend().as_str())
    .bind(staging_key)
    .fetch_one(&mut **tx)
    .await?;
    if owned {
        return Ok(None);
    }
    let key = ObjectKey::new(staging_key).map_err(StorageError::from)?;
    let size = match state.storage.head(&key).await {
        Ok(info) => info.size,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(err) => return Err(err.into()),
    };
    state.storage.delete(&key).await?;
    Ok(Some((key.to_string(), size)))
}

/// Keys checked against the database at once.
const CHECK_CHUNK: usize = 200;

async fn orphan_objects(job: &mut Job<'_>) -> Result<(), Halt> {
    let cutoff = job.cutoff().await?;
    let (prefixes, exempt) = match job.schedule.tenant_id {
        Some(tenant) => (vec![ObjectKey::tenant_files(tenant)], HashSet::new()),
        None => {
            let tenants = ObjectKey::new("tenants").map_err(StorageError::from)?;
            (vec![tenants, ObjectKey::uploads()], tenants_with_own_rule(job).await?)
        }
    };
    let mut orphans: Vec<ObjectInfo> = Vec::new();
    'prefixes: for prefix in prefixes {
        let mut listing = job.state.storage.list(&prefix);
        let mut pending = Vec::with_capacity(CHECK_CHUNK);
        while let Some(info) = listing.next().await {
            job.checkpoint().await?;
            let info = info?;
            if info.last_modified >= cutoff || tenant_of(&info.key).is_some_and(|tenant| exempt.contains(&tenant)) {
                continue;
            }
            job.tally.scanned += 1;
            pending.push(info);
            if pending.len() == CHECK_CHUNK {
                orphans.extend(unreferenced(job.state, std::mem::take(&mut pending)).await?);
                if orphans.len() >= job.remaining() {
                    break 'prefixes;
                }
            }
        }
        orphans.extend(unreferenced(job.state, pending).await?);
        if orphans.len() >= job.remaining() {
            break;
        }
    }
    orphans.truncate(job.remaining());
    for info in orphans {
        job.checkpoint().await?;
        match job.state.storage.delete(&info.key).await {
            Ok(()) => {
                let item = Removed {
                    tenant_id: tenant_of(&info.key),
                    file_id: None,
                    kind: None,
                    storage_key: info.key.as_str(),
                    size: info.size,
                };
                job.record(item).await;
            }
            Err(error) => job.tally.failed(&format!("object {}", info.key), error),
        }
    }
    Ok(())
}

/// Tenants with a schedule of their own for the orphan rule (the platform-wide run skips them).
async fn tenants_with_own_rule(job: &Job<'_>) -> Result<HashSet<Uuid>> {
    let tenants: Vec<Uuid> = sqlx::query_scalar(
        "SELECT DISTINCT tenant_id FROM file_mgr.cleanup_schedules WHERE rule = $1 AND tenant_id IS NOT NULL",
    )
    .bind(job.schedule.rule.as_str())
    .fetch_all(&job.state.pool)
    .await?;
    Ok(tenants.into_iter().collect())
}

/// The tenant of a key under `tenants/<tenant>/`.
fn tenant_of(key: &ObjectKey) -> Option<Uuid> {
    let rest = key.as_str().strip_prefix("tenants/")?;
    Uuid::try_parse(rest.split('/').next()?).ok()
}

/// The staging key an object would belong to: `uploads/<session>` for a part, else itself (a
/// simple upload streams into its file's key).
fn staging_key_of(key: &ObjectKey) -> String {
    let mut segments = key.as_str().splitn(3, '/');
    match (segments.next(), segments.next()) {
        (Some("uploads"), Some(session)) => format!("uploads/{session}"),
        _ => key.to_string(),
    }
}

/// The objects of `infos` that no file row and no unfinished upload session refers to.
async fn unreferenced(state: &State, infos: Vec<ObjectInfo>) -> Result<Vec<ObjectInfo>> {
    if infos.is_empty() {
        return Ok(infos);
    }
    let keys: Vec<String> = infos.iter().map(|info| info.key.to_string()).collect();
    let staging: Vec<String> = infos.iter().map(|info| staging_key_of(&info.key)).collect();
    let referenced: HashSet<String> = sqlx::query_scalar(
        "SELECT t.k FROM unnest($1::text[], $2::text[]) AS t(k, staging)
          WHERE EXISTS (SELECT 1 FROM file_mgr.files f WHERE f.storage_backend = $3 AND f.storage_key = t.k)
             OR EXISTS (SELECT 1 FROM file_mgr.upload_sessions s
                         WHERE s.storage_backend = $3 AND s.staging_key IN (t.k, t.staging)
                           AND s.state IN ('active', 'completing'))",
    )
    .bind(&keys)
    .bind(&staging)
    .bind(state.storage.backend().as_str())
    .fetch_all(&state.pool)
    .await?
    .into_iter()
    .collect();
    Ok(infos.into_iter().filter(|info| !referenced.contains(info.key.as_str())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_tenant_and_staging() {
        let tenant = Uuid::new_v4();
        let file = ObjectKey::file(tenant, Uuid::new_v4());
        assert_eq!(tenant_of(&file), Some(tenant));
        assert_eq!(staging_key_of(&file), file.to_string());
        let session = Uuid::new_v4();
        let part = ObjectKey::upload_part(session, 3).unwrap();
        assert_eq!(tenant_of(&part), None);
        assert_eq!(staging_key_of(&part), format!("uploads/{session}"));
        assert_eq!(tenant_of(&ObjectKey::new("tenants/not-a-uuid/x").unwrap()), None);
    }

    #[test]
    fn the_scope_binds_tenant_and_rule() {
        let sql = scope("f.tenant_id", 5, 6);
        assert!(sql.contains("f.tenant_id = $5::uuid") && sql.contains("o.rule = $6"), "{sql}");
    }
}
