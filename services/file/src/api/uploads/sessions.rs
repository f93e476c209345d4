//! Resumable sessions: `StartUploadSession`, `UploadPart`, `GetUploadSession` and
//! `ListUploadSessions` (completing and aborting are in `finish`).
//!
//! Every part is its own object under `uploads/<session>`; its row in `upload_parts` is written
//! only after the object is stored, in a transaction that first checks, on the locked session
//! row, that the session still accepts parts, so a part racing completion or abort is never
//! counted.

use bytes::Bytes;
use flatrender_proto::flatrender::file::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use super::db::{self, NewSession};
use super::target::{Target, ensure_name_free, key_reused};
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::ledger::Refusal;
use crate::model::{PartRecord, SESSION_COLUMNS, SessionRecord, SessionState};
use crate::settings::{MIB, Settings};
use crate::state::State;
use crate::storage::{Expected, MAX_PART_NUMBER, MIN_PART_SIZE, ObjectKey, Sha256Digest};
use crate::{page, validate};

/// The part size when the client has no preference.
const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// The largest part size a client may prefer.
const MAX_PREFERRED_PART_SIZE: u64 = 64 * MIB;
/// The most missing part numbers `GetUploadSession` lists.
const MISSING_LISTED: usize = 1000;

/// The part size for `size` bytes: the preferred one (0: the default), raised to whole MiB so
/// that there are at most 10,000 parts.
pub(super) fn part_size(size: u64, preferred: u64) -> Result<u64> {
    let min = MIN_PART_SIZE as u64;
    let chosen = match preferred {
        0 => DEFAULT_PART_SIZE,
        p if (min..=MAX_PREFERRED_PART_SIZE).contains(&p) => p,
        _ => {
            return Err(FileError::invalid(
                "preferred_part_size_bytes",
                format!("must be {min}..={MAX_PREFERRED_PART_SIZE} bytes, or 0 for the default"),
            ));
        }
    };
    let needed = size.div_ceil(u64::from(MAX_PART_NUMBER)).div_ceil(MIB) * MIB;
    Ok(chosen.max(needed))
}

/// The largest part any session may have under `settings`: how big one `UploadPart` message
/// can legitimately be.
pub(super) fn largest_part(settings: &Settings) -> u64 {
    part_size(settings.max_session_upload_bytes, 0).unwrap_or(DEFAULT_PART_SIZE).max(MAX_PREFERRED_PART_SIZE)
}

/// `FAILED_PRECONDITION` unless `session` accepts parts (and completion): ACTIVE and not past
/// its expiry.
pub(super) fn ensure_active(session: &SessionRecord) -> Result<()> {
    match session.state {
        SessionState::Active if session.expires_at <= OffsetDateTime::now_utc() => {
            Err(FileError::FailedPrecondition("upload session expired".into()))
        }
        SessionState::Active => Ok(()),
        other => Err(not_active(other)),
    }
}

/// The error for a session in `state` where an ACTIVE one was needed.
pub(super) fn not_active(state: SessionState) -> FileError {
    FileError::FailedPrecondition(format!("upload session is {}", state.as_str()))
}

/// Bytes received so far: the parts' sizes, or all of them once the file exists.
pub(super) fn received_bytes(session: &SessionRecord, parts: &[PartRecord]) -> u64 {
    if session.state == SessionState::Completed {
        session.declared_size
    } else {
        parts.iter().map(|part| part.size).sum()
    }
}

/// Part numbers of `session` not in `parts` (sorted by number), the first `limit` of them.
pub(super) fn missing_parts(session: &SessionRecord, parts: &[PartRecord], limit: usize) -> Vec<u32> {
    (1..=session.part_count)
        .filter(|number| parts.binary_search_by_key(number, |part| part.number).is_err())
        .take(limit)
        .collect()
}

/// Runs `StartUploadSession`.
pub(super) async fn start(
    state: &State,
    actor: Actor,
    request: pb::StartUploadSessionRequest,
) -> Result<pb::UploadSession> {
    let target = Target::check(&state.pool, &actor, "target", request.target.as_ref()).await?;
    let max = state.settings.max_session_upload_bytes;
    if !(1..=max).contains(&request.size_bytes) {
        return Err(FileError::invalid("size_bytes", format!("must be 1..={max}")));
    }
    let size = request.size_bytes;
    let sha256 = validate::sha256("sha256", &request.sha256)?;
    let part_size = part_size(size, request.preferred_part_size_bytes)?;
    let key = validate::idempotency_key("idempotency_key", &request.idempotency_key)?;
    let extra = serde_json::json!([size, sha256.to_hex(), request.preferred_part_size_bytes]);
    let idempotency = key.map(|key| (key, target.request_digest(&actor, "StartUploadSession", extra)));
    let idempotency = idempotency.as_ref().map(|(key, digest)| (key.as_str(), *digest));
    if let Some(session) = replay(state, &target, idempotency).await? {
        return Ok(session);
    }
    ensure_name_free(&state.pool, target.folder, &target.name).await?;

    let id = Uuid::new_v4();
    let reserved = if target.counts_toward_quota { size } else { 0 };
    let staging_key = ObjectKey::upload(id);
    let new = NewSession {
        id,
        target: &target,
        declared_size: size,
        declared_sha256: Some(sha256),
        part_size,
        reserved,
        backend: state.storage.backend().as_str(),
        staging_key: &staging_key,
        idempotency,
        ttl: state.settings.upload_session_ttl,
        simple: false,
    };
    let mut tx = state.pool.begin().await?;
    let session = match db::insert_session(&mut tx, &new).await {
        Ok(session) => session,
        // A concurrent start with the same key won: answer as its retry would.
        Err(err) if flatrender_kit::db::is_unique_violation(&err, "upload_sessions_idempotency_key") => {
            tx.rollback().await?;
            return replay(state, &target, idempotency).await?.ok_or_else(|| err.into());
        }
        Err(err) => return Err(err.into()),
    };
    if reserved > 0 {
        match state.ledger.reserve(&mut tx, target.tenant, target.owner, reserved).await {
            Ok(()) => {}
            Err(Refusal::Exceeded(exceeded)) => {
                tx.rollback().await?;
                return Err(state.ledger.refuse(&state.pool, exceeded).await);
            }
            Err(Refusal::Failed(err)) => return Err(err),
        }
    }
    tx.commit().await?;
    Ok(session.to_proto(&[], 0))
}

/// The unfinished session an earlier start with the same idempotency key created;
/// `ALREADY_EXISTS` when the key was used for a different request.
async fn replay(
    state: &State,
    target: &Target,
    idempotency: Option<(&str, Sha256Digest)>,
) -> Result<Option<pb::UploadSession>> {
    let Some((key, digest)) = idempotency else {
        return Ok(None);
    };
    match db::session_by_key(&state.pool, target.tenant, key).await? {
        Some((session, stored)) if stored.as_deref() == Some(digest.as_bytes().as_slice()) => {
            let parts = db::parts(&state.pool, session.id).await?;
            Ok(Some(session.to_proto(&[], received_bytes(&session, &parts))))
        }
        Some(_) => Err(key_reused()),
        None => Ok(None),
    }
}

/// Runs `UploadPart`.
pub(super) async fn upload_part(
    state: &State,
    actor: Actor,
    request: pb::UploadPartRequest,
) -> Result<pb::UploadPartResponse> {
    let id = validate::id("session_id", &request.session_id)?;
    let session = db::reachable_session(&state.pool, &actor, id, false).await?;
    ensure_active(&session)?;
    let number = request.part_number;
    if !(1..=session.part_count).contains(&number) {
        return Err(FileError::invalid("part_number", format!("must be 1..={}", session.part_count)));
    }
    let size = request.data.len() as u64;
    let expected = session.expected_part_size(number);
    if size != expected {
        return Err(FileError::invalid("data", format!("part {number} must be {expected} bytes, not {size}")));
    }
    let claimed = validate::optional_sha256("sha256", &request.sha256)?;
    let data = request.data;
    let sha256 = digest(data.clone()).await?;
    if claimed.is_some_and(|claimed| claimed != sha256) {
        return Err(FileError::invalid("sha256", "mismatch"));
    }
    // The same bytes again: nothing to store or record.
    if let Some(part) = db::part(&state.pool, id, number).await?
        && part.sha256 == sha256
        && part.size == size
    {
        let parts_received = db::part_count(&state.pool, id).await?;
        return Ok(pb::UploadPartResponse { part: Some(part.to_proto()), parts_received });
    }

    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(data)]);
    state.storage.put_part(id, number, stream, Expected::exactly(size, sha256)).await?;
    let (part, parts_received) = record_part(state, &session, number, size, sha256).await?;
    Ok(pb::UploadPartResponse { part: Some(part.to_proto()), parts_received })
}

/// The SHA-256 of a part, computed off the async threads (a part can be tens of MiB).
async fn digest(data: Bytes) -> Result<Sha256Digest> {
    tokio::task::spawn_blocking(move || Sha256Digest::of(&data))
        .await
        .map_err(|e| FileError::Kit(std::io::Error::other(e).into()))
}

/// Records a stored part, if the session (locked) still accepts parts, and extends its expiry.
async fn record_part(
    state: &State,
    session: &SessionRecord,
    number: u32,
    size: u64,
    sha256: Sha256Digest,
) -> Result<(PartRecord, u32)> {
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM file_mgr.upload_sessions WHERE id = $1 FOR NO KEY UPDATE"
    )))
    .bind(session.id)
    .fetch_one(&mut *tx)
    .await?;
    let locked = SessionRecord::from_row(&row)?;
    if let Err(err) = ensure_active(&locked) {
        tx.rollback().await?;
        // The session finished while the part was stored, so its parts are garbage and this
        // one must not outlive them; while completing, the part replaced one the assembly may
        // be reading and is removed with the others when it ends.
        if locked.state != SessionState::Completing {
            let key = ObjectKey::upload_part(session.id, number).map_err(crate::storage::StorageError::from)?;
            if let Err(error) = state.storage.delete(&key).await {
                tracing::warn!(%key, %error, "could not remove a part that arrived too late");
            }
        }
        return Err(err);
    }
    let part = db::upsert_part(&mut tx, &locked, number, size, sha256).await?;
    db::extend(&mut tx, session.id, state.settings.upload_session_ttl).await?;
    let count = db::part_count(&mut *tx, session.id).await?;
    tx.commit().await?;
    Ok((part, count))
}

/// Runs `GetUploadSession`.
pub(super) async fn get(
    state: &State,
    actor: Actor,
    request: pb::GetUploadSessionRequest,
) -> Result<pb::GetUploadSessionResponse> {
    let id = validate::id("session_id", &request.session_id)?;
    let session = db::reachable_session(&state.pool, &actor, id, false).await?;
    let parts = db::parts(&state.pool, id).await?;
    let missing_part_numbers = match session.state {
        SessionState::Active | SessionState::Completing => missing_parts(&session, &parts, MISSING_LISTED),
        _ => Vec::new(),
    };
    let received = received_bytes(&session, &parts);
    Ok(pb::GetUploadSessionResponse { session: Some(session.to_proto(&parts, received)), missing_part_numbers })
}

/// Runs `ListUploadSessions`: the caller's own sessions, or every session of the tenant for
/// its admins; newest first.
pub(super) async fn list(
    state: &State,
    actor: Actor,
    request: pb::ListUploadSessionsRequest,
) -> Result<pb::ListUploadSessionsResponse> {
    let (tenant, owner) = match actor {
        Actor::User { tenant, user } => (tenant, Some(user)),
        Actor::TenantAdmin { tenant, .. } | Actor::PlatformAdmin { tenant, .. } => (tenant, None),
        Actor::Service(_) => {
            return Err(FileError::PermissionDenied(
                "service credentials have no upload sessions of their own to list".into(),
            ));
        }
    };
    let states: Vec<&str> = match pb::UploadSessionState::try_from(request.state) {
        Ok(pb::UploadSessionState::Unspecified) => vec!["active", "completing"],
        Ok(pb::UploadSessionState::Active) => vec!["active"],
        Ok(pb::UploadSessionState::Completing) => vec!["completing"],
        Ok(pb::UploadSessionState::Completed) => vec!["completed"],
        Ok(pb::UploadSessionState::Aborted) => vec!["aborted"],
        Ok(pb::UploadSessionState::Expired) => vec!["expired"],
        Err(_) => return Err(FileError::invalid("state", "is not an upload session state")),
    };
    let page_request = request.page.unwrap_or_default();
    let size = validate::page_size("page.page_size", page_request.page_size)?;
    let fingerprint = page::fingerprint(&[&"upload_sessions", &tenant, &owner, &states]);
    let after: Option<(i64, Uuid)> = page::decode("page.page_token", &fingerprint, &page_request.page_token)?;
    let after_at = after
        .map(|(micros, _)| OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000))
        .transpose()
        .map_err(|_| FileError::invalid("page.page_token", "is not a page token of this listing"))?;

    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SESSION_COLUMNS} FROM file_mgr.upload_sessions
          WHERE tenant_id = $1 AND ($2::uuid IS NULL OR owner_user_id = $2) AND NOT simple AND state = ANY($3)
            AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
          ORDER BY created_at DESC, id DESC
          LIMIT $6"
    )))
    .bind(tenant)
    .bind(owner)
    .bind(&states)
    .bind(after_at)
    .bind(after.map(|(_, id)| id))
    .bind(size + 1)
    .fetch_all(&state.pool)
    .await?;
    let mut sessions = rows.iter().map(SessionRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
    let next_page_token = page::next_token(&mut sessions, size, |last| {
        let micros = i64::try_from(last.created_at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
        page::encode(&fingerprint, &(micros, last.id))
    });
    let received = received_totals(state, &sessions).await?;
    Ok(pb::ListUploadSessionsResponse {
        sessions: sessions.iter().zip(received).map(|(session, received)| session.to_proto(&[], received)).collect(),
        page: Some(flatrender_proto::flatrender::common::v1::PageResponse { next_page_token }),
    })
}

/// Bytes received by each of `sessions` (one query for the page).
async fn received_totals(state: &State, sessions: &[SessionRecord]) -> Result<Vec<u64>> {
    let ids: Vec<Uuid> = sessions.iter().map(|session| session.id).collect();
    let rows: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT session_id, sum(size_bytes)::bigint FROM file_mgr.upload_parts
          WHERE session_id = ANY($1) GROUP BY session_id",
    )
    .bind(&ids)
    .fetch_all(&state.pool)
    .await?;
    Ok(sessions
        .iter()
        .map(|session| {
            if session.state == SessionState::Completed {
                return session.declared_size;
            }
            let sum = rows.iter().find(|(id, _)| *id == session.id).map_or(0, |(_, sum)| *sum);
            u64::try_from(sum).unwrap_or(0)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes() {
        assert_eq!(part_size(1, 0).unwrap(), 8 * MIB);
        assert_eq!(part_size(100 * MIB, 5 * MIB).unwrap(), 5 * MIB);
        assert_eq!(part_size(100 * MIB, 64 * MIB).unwrap(), 64 * MIB);
        assert!(part_size(100 * MIB, 5 * MIB - 1).is_err());
        assert!(part_size(100 * MIB, 64 * MIB + 1).is_err());
        // 10,000 parts of 8 MiB hold 80,000 MiB; one byte more raises the part size.
        assert_eq!(part_size(80_000 * MIB, 0).unwrap(), 8 * MIB);
        let raised = part_size(80_000 * MIB + 1, 0).unwrap();
        assert_eq!(raised, 9 * MIB);
        let five_tib = 5 * 1024 * 1024 * MIB;
        let largest = part_size(five_tib, 0).unwrap();
        assert!(five_tib.div_ceil(largest) <= u64::from(MAX_PART_NUMBER));
        assert_eq!(largest % MIB, 0);
    }
}
