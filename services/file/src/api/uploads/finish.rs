//! `CompleteUploadSession` and `AbortUploadSession`.
//!
//! Completing runs in three steps, so that no transaction stays open while bytes are copied:
//! the locked session is checked (every part present) and set COMPLETING; the parts are
//! assembled into the file's own object, which checks the declared size and SHA-256; then one
//! transaction creates the file row, turns the reservation into usage, marks the session
//! COMPLETED and records `FileUploaded`. Only then are the parts removed. A failed size or
//! SHA-256 check aborts the session (parts removed, reservation released); any other failure,
//! a name clash included, puts it back to ACTIVE with its parts, so completing can be retried.

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::file::v1 as pb;
use futures_util::StreamExt;
use uuid::Uuid;

use super::db::{self, NewFile};
use super::sessions::{ensure_active, missing_parts, not_active};
use super::target::ensure_name_free;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::events;
use crate::model::{FileRecord, SessionRecord, SessionState::*};
use crate::sniff::{Head, SNIFF_BYTES};
use crate::state::State;
use crate::storage::{ByteRange, Expected, ObjectKey, StorageError, StoredObject};
use crate::validate;

/// The most missing part numbers a refused completion lists.
const MISSING_LISTED: usize = 10;

/// Runs `CompleteUploadSession`.
pub(super) async fn complete(
    state: &State,
    actor: Actor,
    request: pb::CompleteUploadSessionRequest,
) -> Result<pb::CompleteUploadSessionResponse> {
    let id = validate::id("session_id", &request.session_id)?;
    let session = match begin(state, &actor, id).await? {
        Begun::Completing(session) => session,
        Begun::AlreadyCompleted(session) => return completed_answer(state, session).await,
    };
    let key = ObjectKey::file(session.tenant_id, session.id);
    let stored = assemble(state, &session, &key).await?;
    let finished = async {
        let content_type = sniff(state, session.id).await?;
        record(state, &session, &key, &stored, content_type).await
    }
    .await;
    let (file, completed) = match finished {
        Ok(done) => done,
        Err(err) => {
            remove_object(state, &key).await;
            // Unless the cleanup task ended the session meanwhile (it removed the parts), the
            // session goes back to ACTIVE with its parts. That includes a name taken while the
            // parts were assembled (ALREADY_EXISTS): as when the clash is found before
            // assembling, the other file can be renamed or deleted and completing retried, or
            // the session aborted; nothing the client sent is thrown away for it.
            if !matches!(err, FileError::FailedPrecondition(_)) {
                reopen(state, session.id, &[]).await;
            }
            return Err(err);
        }
    };
    remove_parts(state, session.id).await;
    Ok(pb::CompleteUploadSessionResponse {
        file: Some(file.to_proto()),
        session: Some(completed.to_proto(&[], completed.declared_size)),
    })
}

/// What the first step found.
enum Begun {
    /// The session is now COMPLETING: assemble it.
    Completing(SessionRecord),
    /// It was completed before: answer with its file.
    AlreadyCompleted(SessionRecord),
}

/// Checks the locked session (reachable, ACTIVE, every part present, the name still free) and
/// sets it COMPLETING.
async fn begin(state: &State, actor: &Actor, id: Uuid) -> Result<Begun> {
    let mut tx = state.pool.begin().await?;
    let session = db::reachable_session(&mut *tx, actor, id, true).await?;
    if session.state == Completed {
        return Ok(Begun::AlreadyCompleted(session));
    }
    ensure_active(&session)?;
    let parts = db::parts(&mut *tx, id).await?;
    let missing = missing_parts(&session, &parts, MISSING_LISTED);
    if !missing.is_empty() {
        return Err(FileError::FailedPrecondition(format!("parts missing: {}", list(&missing))));
    }
    // Nothing is lost yet, so a clash found now leaves the session ACTIVE: the other file may
    // be renamed or deleted and completing retried.
    ensure_name_free(&mut *tx, session.folder_id, &session.name).await?;
    db::set_state(&mut *tx, id, Active.as_str(), Completing.as_str()).await?;
    tx.commit().await?;
    Ok(Begun::Completing(SessionRecord { state: Completing, ..session }))
}

/// The answer to completing a COMPLETED session again.
async fn completed_answer(state: &State, session: SessionRecord) -> Result<pb::CompleteUploadSessionResponse> {
    let file = match session.file_id {
        Some(file) => db::file(&state.pool, file).await?,
        None => None,
    };
    let Some(file) = file else {
        return Err(FileError::FailedPrecondition("the file this upload session created was deleted".into()));
    };
    Ok(pb::CompleteUploadSessionResponse {
        file: Some(file.to_proto()),
        session: Some(session.to_proto(&[], session.declared_size)),
    })
}

/// Concatenates the parts into `key`, checking size and SHA-256. A mismatch aborts the session;
/// other failures put it back to ACTIVE.
async fn assemble(state: &State, session: &SessionRecord, key: &ObjectKey) -> Result<StoredObject> {
    let Some(sha256) = session.declared_sha256 else {
        // Impossible under the table's CHECK: only simple sessions lack it.
        reopen(state, session.id, &[]).await;
        return Err(FileError::FailedPrecondition("upload session has no declared sha256".into()));
    };
    let expected = Expected::exactly(session.declared_size, sha256);
    match state.storage.assemble_upload(session.id, session.part_count, key, expected).await {
        Ok(stored) => Ok(stored),
        Err(StorageError::ChecksumMismatch { .. }) => {
            abort_completing(state, session.id, "sha256: mismatch").await;
            Err(FileError::invalid("sha256", "mismatch"))
        }
        Err(StorageError::SizeMismatch { expected, actual }) => {
            let err = FileError::invalid("size_bytes", format!("received {actual} of {expected}"));
            abort_completing(state, session.id, &err.to_string()).await;
            Err(err)
        }
        // Rows said the parts were there but storage lost them: forget those so the client
        // sends them again.
        Err(StorageError::MissingParts { missing }) => {
            reopen(state, session.id, &missing).await;
            Err(FileError::FailedPrecondition(format!("parts missing: {}", list(&missing))))
        }
        Err(other) => {
            reopen(state, session.id, &[]).await;
            Err(other.into())
        }
    }
}

/// The content type of the upload, from the first bytes of part 1.
async fn sniff(state: &State, session: Uuid) -> Result<&'static str> {
    let first = ObjectKey::upload_part(session, 1).map_err(StorageError::from)?;
    let mut bytes = state.storage.get(&first, ByteRange::new(0, SNIFF_BYTES as u64)).await?.bytes;
    let mut head = Head::default();
    while let Some(chunk) = bytes.next().await {
        head.push(&chunk?);
    }
    Ok(head.content_type())
}

/// Creates the file row and completes the session in one transaction.
async fn record(
    state: &State,
    session: &SessionRecord,
    key: &ObjectKey,
    stored: &StoredObject,
    content_type: &str,
) -> Result<(FileRecord, SessionRecord)> {
    let mut tx = state.pool.begin().await?;
    let locked = db::session(&mut *tx, session.id, true).await?;
    match locked.as_ref().map(|locked| locked.state) {
        Some(Completing) => {}
        Some(other) => return Err(not_active(other)),
        None => return Err(FileError::NotFound("upload session")),
    }
    let new = NewFile {
        id: session.id,
        tenant: session.tenant_id,
        owner: session.owner_user_id,
        folder: session.folder_id,
        name: &session.name,
        kind: session.kind,
        size: stored.size,
        sha256: stored.sha256,
        content_type,
        backend: state.storage.backend().as_str(),
        key,
        counts_toward_quota: session.counts_toward_quota,
        pinned: session.pinned,
        retained_until: session.retained_until,
        retained_by: session.retained_by.map(ServiceName::as_str),
        // The service that started the session created the file, whoever completes it.
        source_service: session.source_service.as_str(),
        metadata: &session.metadata,
        idempotency: None,
    };
    let file = db::insert_file(&mut tx, &new).await?;
    let completed = db::mark_completed(&mut tx, session.id, file.id).await?;
    if session.counts_toward_quota {
        state.ledger.commit_reservation(&mut tx, session.tenant_id, session.owner_user_id, stored.size).await?;
    }
    events::file_uploaded(&mut tx, &file).await?;
    tx.commit().await?;
    Ok((file, completed))
}

/// Runs `AbortUploadSession`: idempotent; a COMPLETED or COMPLETING session cannot be aborted.
pub(super) async fn abort(
    state: &State,
    actor: Actor,
    request: pb::AbortUploadSessionRequest,
) -> Result<pb::UploadSession> {
    let id = validate::id("session_id", &request.session_id)?;
    let mut tx = state.pool.begin().await?;
    let session = db::reachable_session(&mut *tx, &actor, id, true).await?;
    let aborted = match session.state {
        Aborted | Expired => session,
        Completed => return Err(not_active(Completed)),
        Completing => return Err(FileError::FailedPrecondition("upload session is being completed".into())),
        Active => {
            let aborted = db::abort(&mut tx, &state.ledger, &session, None).await?;
            tx.commit().await?;
            remove_parts(state, id).await;
            aborted
        }
    };
    Ok(aborted.to_proto(&[], 0))
}

/// Aborts a COMPLETING session whose upload failed a check, with `message`; logged on failure
/// (the session then expires, which does the same).
async fn abort_completing(state: &State, id: Uuid, message: &str) {
    let aborted = async {
        let mut tx = state.pool.begin().await?;
        if let Some(session) = db::session(&mut *tx, id, true).await?
            && session.state == Completing
        {
            db::abort(&mut tx, &state.ledger, &session, Some(message)).await?;
        }
        tx.commit().await?;
        Ok::<_, FileError>(())
    }
    .await;
    match aborted {
        Ok(()) => remove_parts(state, id).await,
        Err(error) => tracing::warn!(session = %id, %error, "could not abort a failed upload session"),
    }
}

/// Puts a COMPLETING session back to ACTIVE after a failure that is not the client's, forgetting
/// parts found `missing` in storage; logged on failure (the session then expires).
async fn reopen(state: &State, id: Uuid, missing: &[u32]) {
    let reopened = async {
        let mut tx = state.pool.begin().await?;
        if db::set_state(&mut *tx, id, Completing.as_str(), Active.as_str()).await? && !missing.is_empty() {
            db::forget_parts(&mut *tx, id, missing).await?;
        }
        tx.commit().await?;
        Ok::<_, FileError>(())
    }
    .await;
    if let Err(error) = reopened {
        tracing::warn!(session = %id, %error, "could not reopen an upload session after a failure");
    }
}

/// Removes the part objects of a finished session; a failure is only logged (the parts are
/// garbage now, and the cleanup sweep finds leftovers under `uploads/`).
async fn remove_parts(state: &State, id: Uuid) {
    if let Err(error) = state.storage.abort_upload(id).await {
        tracing::warn!(session = %id, %error, "could not remove the parts of an upload session");
    }
}

/// Removes an assembled object that got no file row.
async fn remove_object(state: &State, key: &ObjectKey) {
    if let Err(error) = state.storage.delete(key).await {
        tracing::warn!(%key, %error, "could not remove the object of a failed completion");
    }
}

/// Part numbers as "3, 4, 7".
fn list(numbers: &[u32]) -> String {
    numbers.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}
