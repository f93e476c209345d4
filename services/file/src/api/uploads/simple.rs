//! `UploadFile`: a client stream of metadata and chunks, stored straight under the file's own
//! key.
//!
//! The quota is reserved before any byte is read, in a `simple` session row whose id is the
//! file's, so a reservation whose upload died with its process is found by expiry. The bytes
//! stream through storage (hashed and size-checked on the way, the first 512 kept for
//! sniffing); then one transaction creates the file row, turns the reservation into usage,
//! completes the session and records `FileUploaded`. Any failure after the reservation removes
//! the object, the session row and the reservation again.

use bytes::Bytes;
use flatrender_proto::flatrender::file::v1 as pb;
use futures_util::Stream;
use pb::upload_file_request::Payload;
use tonic::{Status, Streaming};
use uuid::Uuid;

use super::db::{self, NewFile, NewSession};
use super::target::{Target, ensure_name_free, key_reused};
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::events;
use crate::ledger::Refusal;
use crate::model::FileRecord;
use crate::sniff::Head;
use crate::state::State;
use crate::storage::{Expected, MAX_CHUNK_BYTES, ObjectKey, Sha256Digest, StorageError};
use crate::validate;

/// A checked `UploadFileMetadata`.
struct Upload {
    target: Target,
    size: u64,
    sha256: Option<Sha256Digest>,
    idempotency: Option<(String, Sha256Digest)>,
}

impl Upload {
    async fn check(state: &State, actor: &Actor, metadata: pb::UploadFileMetadata) -> Result<Self> {
        let target = Target::check(&state.pool, actor, "metadata.target", metadata.target.as_ref()).await?;
        let limit = state.settings.max_simple_upload_bytes;
        if metadata.size_bytes > limit {
            return Err(FileError::invalid(
                "metadata.size_bytes",
                format!("must be at most {limit} bytes for a simple upload; use an upload session"),
            ));
        }
        let sha256 = validate::optional_sha256("metadata.sha256", &metadata.sha256)?;
        let key = validate::idempotency_key("metadata.idempotency_key", &metadata.idempotency_key)?;
        let idempotency = key.map(|key| {
            let extra = serde_json::json!([metadata.size_bytes, sha256.map(|d| d.to_hex())]);
            (key, target.request_digest(actor, "UploadFile", extra))
        });
        Ok(Self { target, size: metadata.size_bytes, sha256, idempotency })
    }

    /// Whether bytes are reserved (and a session row holds them) for this upload.
    fn reserves(&self) -> bool {
        self.size > 0 && self.target.counts_toward_quota
    }

    /// The file an earlier request with the same idempotency key created; `ALREADY_EXISTS`
    /// when that key was used for a different request.
    async fn replay(&self, state: &State) -> Result<Option<FileRecord>> {
        let Some((key, digest)) = &self.idempotency else {
            return Ok(None);
        };
        match db::file_by_key(&state.pool, self.target.tenant, key).await? {
            Some((file, stored)) if stored.as_deref() == Some(digest.as_bytes().as_slice()) => Ok(Some(file)),
            Some(_) => Err(key_reused()),
            None => Ok(None),
        }
    }
}

/// Runs `UploadFile` for `actor` over the request stream.
pub(super) async fn upload(
    state: &State,
    actor: Actor,
    mut stream: Streaming<pb::UploadFileRequest>,
) -> Result<FileRecord> {
    let metadata = match stream.message().await.map_err(input_failed)?.and_then(|message| message.payload) {
        Some(Payload::Metadata(metadata)) => metadata,
        _ => return Err(FileError::invalid("metadata", "the first message must carry the metadata")),
    };
    let upload = Upload::check(state, &actor, metadata).await?;
    // A retry answers with the first call's file without reading a single chunk.
    if let Some(file) = upload.replay(state).await? {
        return Ok(file);
    }
    ensure_name_free(&state.pool, upload.target.folder, &upload.target.name).await?;

    let id = Uuid::new_v4();
    let key = ObjectKey::file(upload.target.tenant, id);
    if upload.reserves() {
        reserve(state, &upload, id, &key).await?;
    }
    match store(state, &upload, id, &key, &mut stream).await {
        Ok(file) => Ok(file),
        Err(err) => {
            undo(state, &upload, id, &key).await;
            // A concurrent request with the same key won the race: answer as its retry would.
            if db::is_key_clash(&err) {
                return upload.replay(state).await?.ok_or(err);
            }
            Err(err)
        }
    }
}

/// Reserves the declared size in a new simple session row, or refuses over quota.
async fn reserve(state: &State, upload: &Upload, id: Uuid, key: &ObjectKey) -> Result<()> {
    let target = &upload.target;
    let mut tx = state.pool.begin().await?;
    let new = NewSession {
        id,
        target,
        declared_size: upload.size,
        declared_sha256: upload.sha256,
        part_size: upload.size,
        reserved: upload.size,
        backend: state.storage.backend().as_str(),
        staging_key: key,
        idempotency: None,
        ttl: state.settings.simple_upload_ttl,
        simple: true,
    };
    db::insert_session(&mut tx, &new).await?;
    match state.ledger.reserve(&mut tx, target.tenant, target.owner, upload.size).await {
        Ok(()) => {}
        Err(Refusal::Exceeded(exceeded)) => {
            tx.rollback().await?;
            return Err(state.ledger.refuse(&state.pool, exceeded).await);
        }
        Err(Refusal::Failed(err)) => return Err(err),
    }
    tx.commit().await?;
    Ok(())
}

/// Streams the chunks into storage, then records the file in one transaction.
async fn store(
    state: &State,
    upload: &Upload,
    id: Uuid,
    key: &ObjectKey,
    stream: &mut Streaming<pb::UploadFileRequest>,
) -> Result<FileRecord> {
    let mut head = Head::default();
    let expected = Expected { size: Some(upload.size), sha256: upload.sha256 };
    let stored = state.storage.put(key, chunks(stream, &mut head), expected).await.map_err(mismatch)?;

    let target = &upload.target;
    let mut tx = state.pool.begin().await?;
    let new = NewFile {
        id,
        tenant: target.tenant,
        owner: target.owner,
        folder: target.folder,
        name: &target.name,
        kind: target.kind,
        size: stored.size,
        sha256: stored.sha256,
        content_type: head.content_type(),
        backend: state.storage.backend().as_str(),
        key,
        counts_toward_quota: target.counts_toward_quota,
        pinned: target.pinned,
        retained_until: target.retained_until,
        retained_by: target.retained_by(),
        source_service: target.service.as_str(),
        metadata: &target.metadata,
        idempotency: upload.idempotency.as_ref().map(|(key, digest)| (key.as_str(), *digest)),
    };
    let file = db::insert_file(&mut tx, &new).await?;
    if upload.reserves() && !complete_session(&mut tx, id).await? {
        // The cleanup task expired the session (and released its reservation) meanwhile.
        return Err(FileError::FailedPrecondition("the upload took too long and expired".into()));
    }
    if target.counts_toward_quota {
        state.ledger.commit_reservation(&mut tx, target.tenant, target.owner, stored.size).await?;
    }
    events::file_uploaded(&mut tx, &file).await?;
    tx.commit().await?;
    Ok(file)
}

/// Marks the simple session of file `id` completed; `false` when it is no longer active.
async fn complete_session(tx: &mut sqlx::PgTransaction<'_>, id: Uuid) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE file_mgr.upload_sessions
            SET state = 'completed', completed_at = now(), file_id = $1, reserved_bytes = 0
          WHERE id = $1 AND simple AND state = 'active'",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Leaves nothing behind after a failed upload: the object (if any got stored), and the
/// session row with its reservation, in one transaction. Failures are logged: the session's
/// expiry releases the reservation and the orphan sweep removes the object.
async fn undo(state: &State, upload: &Upload, id: Uuid, key: &ObjectKey) {
    if let Err(error) = state.storage.delete(key).await {
        tracing::warn!(%key, %error, "could not remove the object of a failed upload");
    }
    if !upload.reserves() {
        return;
    }
    let released = async {
        let mut tx = state.pool.begin().await?;
        let reserved: Option<i64> = sqlx::query_scalar(
            "DELETE FROM file_mgr.upload_sessions WHERE id = $1 AND simple AND state = 'active'
             RETURNING reserved_bytes",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(reserved) = reserved {
            let target = &upload.target;
            let bytes = u64::try_from(reserved).unwrap_or(0);
            state.ledger.release(&mut tx, target.tenant, target.owner, bytes).await?;
        }
        tx.commit().await?;
        Ok::<_, FileError>(())
    }
    .await;
    if let Err(error) = released {
        tracing::warn!(session = %id, %error, "could not release the reservation of a failed upload");
    }
}

/// The chunks after the metadata, each checked, noting the first bytes in `head` as they pass.
/// A bad message ends the stream with its error, so storage keeps nothing.
fn chunks<'a>(
    stream: &'a mut Streaming<pb::UploadFileRequest>,
    head: &'a mut Head,
) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'a {
    futures_util::stream::unfold((stream, head), |(stream, head)| async move {
        let next = match stream.message().await {
            Ok(Some(message)) => chunk(message),
            Ok(None) => return None,
            Err(status) => Err(status),
        };
        if let Ok(bytes) = &next {
            head.push(bytes);
        }
        Some((next, (stream, head)))
    })
}

/// The bytes of one chunk message.
fn chunk(message: pb::UploadFileRequest) -> Result<Bytes, Status> {
    match message.payload {
        Some(Payload::Chunk(data)) if (1..=MAX_CHUNK_BYTES).contains(&data.len()) => Ok(data),
        Some(Payload::Chunk(_)) => Err(Status::invalid_argument(format!("chunk: must be 1..={MAX_CHUNK_BYTES} bytes"))),
        Some(Payload::Metadata(_)) => Err(Status::invalid_argument("metadata: only the first message may carry it")),
        None => Err(Status::invalid_argument("payload: each message must carry metadata or a chunk")),
    }
}

/// The API's wording for bytes that are not what the metadata declared.
fn mismatch(err: StorageError) -> FileError {
    match err {
        StorageError::SizeMismatch { expected, actual } => {
            FileError::invalid("size_bytes", format!("received {actual} of {expected}"))
        }
        StorageError::ChecksumMismatch { .. } => FileError::invalid("sha256", "mismatch"),
        other => other.into(),
    }
}

/// A failure reading the client's stream, as the storage layer reports it.
fn input_failed(status: Status) -> FileError {
    StorageError::Input(Box::new(status)).into()
}
