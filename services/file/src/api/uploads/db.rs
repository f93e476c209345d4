//! The SQL of uploads: session and part rows, the file row an upload creates, and the state
//! changes of a session. Every function runs inside the caller's transaction (or on the pool
//! for plain reads), so the handlers decide what is atomic.

use std::time::Duration;

use sqlx::{PgExecutor, PgTransaction, Row};
use uuid::Uuid;

use super::target::{Target, name_taken};
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::ledger::Ledger;
use crate::model::{FILE_COLUMNS, FileKind, FileRecord, PartRecord, SESSION_COLUMNS, SessionRecord};
use crate::storage::{ObjectKey, Sha256Digest};
use crate::validate;

/// A part number as the `integer` column (at most 10,000, so it always fits).
fn part_number(number: u32) -> i32 {
    i32::try_from(number).unwrap_or(i32::MAX)
}

/// A byte count as PostgreSQL's `bigint`.
fn big(value: u64) -> Result<i64> {
    validate::bytes_i64("size_bytes", value)
}

/// An optional digest as `bytea`.
fn digest_bytes(digest: Option<Sha256Digest>) -> Option<Vec<u8>> {
    digest.map(|digest| digest.as_bytes().to_vec())
}

/// A session row to insert.
pub(super) struct NewSession<'a> {
    /// Id (also the id of the file it creates).
    pub id: Uuid,
    /// The file to create.
    pub target: &'a Target,
    /// Declared size (>= 1).
    pub declared_size: u64,
    /// Declared SHA-256 (optional only for simple uploads).
    pub declared_sha256: Option<Sha256Digest>,
    /// Size of every part but the last.
    pub part_size: u64,
    /// Quota bytes reserved for it.
    pub reserved: u64,
    /// `local` or `s3`.
    pub backend: &'static str,
    /// The parts' prefix, or a simple upload's final key.
    pub staging_key: &'a ObjectKey,
    /// Idempotency key and request digest.
    pub idempotency: Option<(&'a str, Sha256Digest)>,
    /// How long it lives unfinished.
    pub ttl: Duration,
    /// A simple upload's reservation holder.
    pub simple: bool,
}

/// Inserts a session; the raw error lets the caller recognise a unique violation.
pub(super) async fn insert_session(
    tx: &mut PgTransaction<'_>,
    new: &NewSession<'_>,
) -> Result<SessionRecord, sqlx::Error> {
    let target = new.target;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO file_mgr.upload_sessions (id, tenant_id, owner_user_id, folder_id, name, kind, content_type_hint,
             declared_size, declared_sha256, part_size, reserved_bytes, counts_toward_quota, storage_backend,
             staging_key, idempotency_key, request_sha256, expires_at, simple, metadata, pinned, retained_until,
             retained_by, source_service)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                 now() + make_interval(secs => $17), $18, $19, $20, $21, $22, $23)
         RETURNING {SESSION_COLUMNS}"
    )))
    .bind(new.id)
    .bind(target.tenant)
    .bind(target.owner)
    .bind(target.folder)
    .bind(&target.name)
    .bind(target.kind.as_str())
    .bind(target.content_type_hint.as_deref())
    .bind(i64::try_from(new.declared_size).unwrap_or(i64::MAX))
    .bind(digest_bytes(new.declared_sha256))
    .bind(i64::try_from(new.part_size).unwrap_or(i64::MAX))
    .bind(i64::try_from(new.reserved).unwrap_or(i64::MAX))
    .bind(target.counts_toward_quota)
    .bind(new.backend)
    .bind(new.staging_key.as_str())
    .bind(new.idempotency.map(|(key, _)| key))
    .bind(digest_bytes(new.idempotency.map(|(_, digest)| digest)))
    .bind(new.ttl.as_secs_f64())
    .bind(new.simple)
    .bind(&target.metadata)
    .bind(target.pinned)
    .bind(target.retained_until)
    .bind(target.retained_by())
    .bind(target.service.as_str())
    .fetch_one(&mut **tx)
    .await?;
    SessionRecord::from_row(&row)
}

/// A resumable session by id (never a simple upload's), locked `FOR UPDATE` when asked.
pub(super) async fn session(ex: impl PgExecutor<'_>, id: Uuid, lock: bool) -> Result<Option<SessionRecord>> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM file_mgr.upload_sessions WHERE id = $1 AND NOT simple{lock}"
    )))
    .bind(id)
    .fetch_optional(ex)
    .await?;
    Ok(row.as_ref().map(SessionRecord::from_row).transpose()?)
}

/// The session `id` when `actor` reaches it; `NOT_FOUND` otherwise.
pub(super) async fn reachable_session(
    ex: impl PgExecutor<'_>,
    actor: &Actor,
    id: Uuid,
    lock: bool,
) -> Result<SessionRecord> {
    match session(ex, id, lock).await? {
        Some(session) if actor.can_reach(session.tenant_id, session.owner_user_id) => Ok(session),
        _ => Err(FileError::NotFound("upload session")),
    }
}

/// The unfinished resumable session of `tenant` holding idempotency `key`, with its request
/// digest.
pub(super) async fn session_by_key(
    ex: impl PgExecutor<'_>,
    tenant: Uuid,
    key: &str,
) -> Result<Option<(SessionRecord, Option<Vec<u8>>)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS}, request_sha256 FROM file_mgr.upload_sessions
          WHERE tenant_id = $1 AND idempotency_key = $2 AND state IN ('active', 'completing') AND NOT simple"
    )))
    .bind(tenant)
    .bind(key)
    .fetch_optional(ex)
    .await?;
    match row {
        Some(row) => Ok(Some((SessionRecord::from_row(&row)?, row.try_get("request_sha256")?))),
        None => Ok(None),
    }
}

/// The received parts of a session, by part number.
pub(super) async fn parts(ex: impl PgExecutor<'_>, session: Uuid) -> Result<Vec<PartRecord>> {
    let rows = sqlx::query(
        "SELECT part_number, size_bytes, sha256, updated_at FROM file_mgr.upload_parts
          WHERE session_id = $1 ORDER BY part_number",
    )
    .bind(session)
    .fetch_all(ex)
    .await?;
    Ok(rows.iter().map(PartRecord::from_row).collect::<sqlx::Result<_>>()?)
}

/// One received part.
pub(super) async fn part(ex: impl PgExecutor<'_>, session: Uuid, number: u32) -> Result<Option<PartRecord>> {
    let row = sqlx::query(
        "SELECT part_number, size_bytes, sha256, updated_at FROM file_mgr.upload_parts
          WHERE session_id = $1 AND part_number = $2",
    )
    .bind(session)
    .bind(part_number(number))
    .fetch_optional(ex)
    .await?;
    Ok(row.as_ref().map(PartRecord::from_row).transpose()?)
}

/// Records part `number` of `session` (replacing an earlier one) and returns it.
pub(super) async fn upsert_part(
    tx: &mut PgTransaction<'_>,
    session: &SessionRecord,
    number: u32,
    size: u64,
    sha256: Sha256Digest,
) -> Result<PartRecord> {
    let key = ObjectKey::upload_part(session.id, number).map_err(crate::storage::StorageError::from)?;
    let row = sqlx::query(
        "INSERT INTO file_mgr.upload_parts (session_id, part_number, tenant_id, size_bytes, sha256, storage_key)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (session_id, part_number) DO UPDATE
            SET size_bytes = EXCLUDED.size_bytes, sha256 = EXCLUDED.sha256, storage_key = EXCLUDED.storage_key
         RETURNING part_number, size_bytes, sha256, updated_at",
    )
    .bind(session.id)
    .bind(part_number(number))
    .bind(session.tenant_id)
    .bind(big(size)?)
    .bind(sha256.as_bytes().as_slice())
    .bind(key.as_str())
    .fetch_one(&mut **tx)
    .await?;
    Ok(PartRecord::from_row(&row)?)
}

/// How many parts a session has received.
pub(super) async fn part_count(ex: impl PgExecutor<'_>, session: Uuid) -> Result<u32> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM file_mgr.upload_parts WHERE session_id = $1")
        .bind(session)
        .fetch_one(ex)
        .await?;
    Ok(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Sets a session's state (for `completing` and back to `active`).
pub(super) async fn set_state(ex: impl PgExecutor<'_>, session: Uuid, from: &str, to: &str) -> Result<bool> {
    let changed = sqlx::query("UPDATE file_mgr.upload_sessions SET state = $3 WHERE id = $1 AND state = $2")
        .bind(session)
        .bind(from)
        .bind(to)
        .execute(ex)
        .await?;
    Ok(changed.rows_affected() == 1)
}

/// Pushes an active session's expiry to `ttl` from now (a part arrived).
pub(super) async fn extend(tx: &mut PgTransaction<'_>, session: Uuid, ttl: Duration) -> Result<()> {
    sqlx::query("UPDATE file_mgr.upload_sessions SET expires_at = now() + make_interval(secs => $2) WHERE id = $1")
        .bind(session)
        .bind(ttl.as_secs_f64())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Marks a session completed with `file` and forgets its parts; returns the row.
pub(super) async fn mark_completed(tx: &mut PgTransaction<'_>, session: Uuid, file: Uuid) -> Result<SessionRecord> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE file_mgr.upload_sessions
            SET state = 'completed', completed_at = now(), file_id = $2, reserved_bytes = 0
          WHERE id = $1
         RETURNING {SESSION_COLUMNS}"
    )))
    .bind(session)
    .bind(file)
    .fetch_one(&mut **tx)
    .await?;
    delete_part_rows(tx, session).await?;
    Ok(SessionRecord::from_row(&row)?)
}

/// Aborts an unfinished session (locked by the caller): releases its reservation, marks it
/// ABORTED with `error_message` and forgets its parts. The part objects are the caller's to
/// remove once this commits.
pub(super) async fn abort(
    tx: &mut PgTransaction<'_>,
    ledger: &Ledger,
    session: &SessionRecord,
    error_message: Option<&str>,
) -> Result<SessionRecord> {
    ledger.release(tx, session.tenant_id, session.owner_user_id, session.reserved_bytes).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE file_mgr.upload_sessions
            SET state = 'aborted', aborted_at = now(), error_message = $2, reserved_bytes = 0
          WHERE id = $1
         RETURNING {SESSION_COLUMNS}"
    )))
    .bind(session.id)
    .bind(error_message)
    .fetch_one(&mut **tx)
    .await?;
    delete_part_rows(tx, session.id).await?;
    Ok(SessionRecord::from_row(&row)?)
}

/// Forgets every part of a session.
pub(super) async fn delete_part_rows(tx: &mut PgTransaction<'_>, session: Uuid) -> Result<()> {
    sqlx::query("DELETE FROM file_mgr.upload_parts WHERE session_id = $1").bind(session).execute(&mut **tx).await?;
    Ok(())
}

/// Forgets parts `numbers` of a session (their objects turned out to be missing).
pub(super) async fn forget_parts(ex: impl PgExecutor<'_>, session: Uuid, numbers: &[u32]) -> Result<()> {
    let numbers: Vec<i32> = numbers.iter().map(|&n| part_number(n)).collect();
    sqlx::query("DELETE FROM file_mgr.upload_parts WHERE session_id = $1 AND part_number = ANY($2)")
        .bind(session)
        .bind(numbers)
        .execute(ex)
        .await?;
    Ok(())
}

/// A file row to insert.
pub(super) struct NewFile<'a> {
    /// Id (the upload's session id).
    pub id: Uuid,
    /// Tenant.
    pub tenant: Uuid,
    /// Owner.
    pub owner: Option<Uuid>,
    /// Folder.
    pub folder: Option<Uuid>,
    /// Name.
    pub name: &'a str,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// Sniffed content type.
    pub content_type: &'a str,
    /// `local` or `s3`.
    pub backend: &'static str,
    /// Where the bytes are.
    pub key: &'a ObjectKey,
    /// Counts towards quotas.
    pub counts_toward_quota: bool,
    /// Pinned.
    pub pinned: bool,
    /// Retained until.
    pub retained_until: Option<time::OffsetDateTime>,
    /// The protecting service.
    pub retained_by: Option<&'static str>,
    /// The creating service.
    pub source_service: &'static str,
    /// Client metadata.
    pub metadata: &'a serde_json::Value,
    /// Idempotency key and request digest.
    pub idempotency: Option<(&'a str, Sha256Digest)>,
}

/// Inserts a file row. A name clash in the folder is `ALREADY_EXISTS`, a folder deleted
/// meanwhile `NOT_FOUND`; the unique violation of the idempotency key stays a database error
/// for the caller to recognise with [`is_key_clash`].
pub(super) async fn insert_file(tx: &mut PgTransaction<'_>, new: &NewFile<'_>) -> Result<FileRecord> {
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO file_mgr.files (id, tenant_id, owner_user_id, folder_id, name, kind, size_bytes, sha256,
             content_type, storage_backend, storage_key, counts_toward_quota, pinned, retained_until, retained_by,
             source_service, metadata, idempotency_key, request_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)
         RETURNING {FILE_COLUMNS}"
    )))
    .bind(new.id)
    .bind(new.tenant)
    .bind(new.owner)
    .bind(new.folder)
    .bind(new.name)
    .bind(new.kind.as_str())
    .bind(big(new.size)?)
    .bind(new.sha256.as_bytes().as_slice())
    .bind(new.content_type)
    .bind(new.backend)
    .bind(new.key.as_str())
    .bind(new.counts_toward_quota)
    .bind(new.pinned)
    .bind(new.retained_until)
    .bind(new.retained_by)
    .bind(new.source_service)
    .bind(new.metadata)
    .bind(new.idempotency.map(|(key, _)| key))
    .bind(digest_bytes(new.idempotency.map(|(_, digest)| digest)))
    .fetch_one(&mut **tx)
    .await;
    match inserted {
        Ok(row) => Ok(FileRecord::from_row(&row)?),
        Err(err) if flatrender_kit::db::is_unique_violation(&err, "files_folder_name_key") => Err(name_taken(new.name)),
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23503") => Err(FileError::NotFound("folder")),
        Err(err) => Err(err.into()),
    }
}

/// Whether `err` is the unique violation of a file's idempotency key (a concurrent request
/// with the same key won).
pub(super) fn is_key_clash(err: &FileError) -> bool {
    matches!(err, FileError::Database(db) if flatrender_kit::db::is_unique_violation(db, "files_tenant_idempotency_key"))
}

/// The file of `tenant` created with idempotency `key`, with its request digest.
pub(super) async fn file_by_key(
    ex: impl PgExecutor<'_>,
    tenant: Uuid,
    key: &str,
) -> Result<Option<(FileRecord, Option<Vec<u8>>)>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS}, request_sha256 FROM file_mgr.files WHERE tenant_id = $1 AND idempotency_key = $2"
    )))
    .bind(tenant)
    .bind(key)
    .fetch_optional(ex)
    .await?;
    match row {
        Some(row) => Ok(Some((FileRecord::from_row(&row)?, row.try_get("request_sha256")?))),
        None => Ok(None),
    }
}

/// A file by id.
pub(super) async fn file(ex: impl PgExecutor<'_>, id: Uuid) -> Result<Option<FileRecord>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {FILE_COLUMNS} FROM file_mgr.files WHERE id = $1")))
        .bind(id)
        .fetch_optional(ex)
        .await?;
    Ok(row.as_ref().map(FileRecord::from_row).transpose()?)
}
