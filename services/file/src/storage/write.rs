//! Streaming writes that hash as they go and store nothing unless the data is what was expected.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use super::Storage;
use super::digest::Sha256Digest;
use super::error::{BoxError, Result, StorageError};
use super::hashing::BackgroundHasher;
use super::key::ObjectKey;
use super::staged::{LocalTarget, StagedWrite};

/// How many bytes a local staging file is handed at a time. No backend limit applies (S3's
/// 5 MiB minimum part is for multipart uploads), and the fewer held, the less memory: a batch
/// being received, one being hashed and, with direct I/O, one being written.
const STAGING_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// What the written data must be; unset fields are not checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    /// The exact size in bytes.
    pub size: Option<u64>,
    /// The SHA-256 of the whole.
    pub sha256: Option<Sha256Digest>,
}

impl Expected {
    /// No checks: store whatever arrives.
    pub const ANYTHING: Self = Self { size: None, sha256: None };

    /// Exactly `size` bytes with this digest.
    pub fn exactly(size: u64, sha256: Sha256Digest) -> Self {
        Self { size: Some(size), sha256: Some(sha256) }
    }
}

/// What was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredObject {
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256Digest,
    /// The backend's entity tag, when it gives one.
    pub e_tag: Option<String>,
}

impl Storage {
    /// Stores the bytes of `data` under `key`, streaming, and returns their size and SHA-256.
    ///
    /// Memory stays bounded whatever the size (see [`StorageConfig`](super::StorageConfig)).
    /// When the bytes do not match `expected`, or `data` yields an error, nothing is stored and
    /// any object already under `key` is left as it was; too many bytes are noticed as soon as
    /// they arrive, without reading the rest.
    pub async fn put<S, E>(&self, key: &ObjectKey, data: S, expected: Expected) -> Result<StoredObject>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: Into<BoxError>,
    {
        let mut data = std::pin::pin!(data);
        let mut writer = ObjectWriter::new(self, key, expected.size);
        let streamed = async {
            while let Some(chunk) = data.next().await {
                writer.write(chunk.map_err(|e| StorageError::Input(e.into()))?).await?;
            }
            Ok(())
        }
        .await;
        match streamed {
            Ok(()) => writer.finish(expected).await,
            Err(err) => {
                writer.abort().await;
                Err(err)
            }
        }
    }
}

/// Writes one object from chunks: buffers up to one part, then switches to a multipart upload,
/// or on the local backend to a staging file flushed part by part (see [`StagedWrite`]).
///
/// The caller's task only counts the bytes and passes them on; they are hashed elsewhere, beside
/// what else happens to them: by the thread that writes the staging file, on a blocking thread
/// while an S3 upload sends them, or (one request's worth) on a blocking thread before that
/// request (see [`BackgroundHasher`]).
pub(crate) struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    local: Option<LocalTarget>,
    key: ObjectKey,
    path: Path,
    part_size: usize,
    upload_concurrency: usize,
    size: u64,
    size_limit: Option<u64>,
    state: WriteState,
}

enum WriteState {
    /// Nothing sent or hashed yet; the chunks so far (at most about one part).
    Buffering { chunks: Vec<Bytes>, len: usize },
    /// A multipart upload in progress, its hash, and the chunks sent since the last batch was
    /// handed to the hasher.
    Uploading { upload: WriteMultipart, hasher: BackgroundHasher, unhashed: Vec<Bytes>, len: usize },
    /// A local staging file in progress (which hashes what it writes), and the chunks of the
    /// next part.
    Staging { file: StagedWrite, chunks: Vec<Bytes>, len: usize },
}

impl ObjectWriter {
    /// A writer for `key`; more than `size_limit` bytes fail at once.
    pub(crate) fn new(storage: &Storage, key: &ObjectKey, size_limit: Option<u64>) -> Self {
        Self {
            store: Arc::clone(&storage.store),
            local: storage.local.clone(),
            key: key.clone(),
            path: key.to_path(),
            part_size: storage.part_size,
            upload_concurrency: storage.upload_concurrency,
            size: 0,
            size_limit,
            state: WriteState::Buffering { chunks: Vec::new(), len: 0 },
        }
    }

    /// Counts `chunk` and sends it on (or buffers it), waiting while the parts in flight are at
    /// the limit.
    pub(crate) async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.size += chunk.len() as u64;
        if let Some(limit) = self.size_limit
            && self.size > limit
        {
            return Err(StorageError::SizeMismatch { expected: limit, actual: self.size });
        }
        match &mut self.state {
            WriteState::Buffering { chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                // More than one part: too big for a single request, so start a multipart upload.
                if *len > self.part_size {
                    let chunks = std::mem::take(chunks);
                    if let Some(local) = &self.local {
                        let mut file = StagedWrite::new(local, &self.key)?;
                        file.write_part(chunks).await?;
                        self.state = WriteState::Staging { file, chunks: Vec::new(), len: 0 };
                        return Ok(());
                    }
                    let upload = self
                        .store
                        .put_multipart(&self.path)
                        .await
                        .map_err(|e| StorageError::backend("start an upload to", &self.key, e))?;
                    let mut upload = WriteMultipart::new_with_chunk_size(upload, self.part_size);
                    for chunk in &chunks {
                        upload.put(chunk.clone());
                    }
                    // Kept before hashing can fail, so that the abort finds the upload.
                    let mut hasher = BackgroundHasher::default();
                    let hashing = hasher.add(chunks).await;
                    self.state = WriteState::Uploading { upload, hasher, unhashed: Vec::new(), len: 0 };
                    hashing.map_err(|e| hash_failed(&self.key, e))?;
                }
            }
            WriteState::Uploading { upload, hasher, unhashed, len } => {
                upload
                    .wait_for_capacity(self.upload_concurrency)
                    .await
                    .map_err(|e| StorageError::backend("write", &self.key, e))?;
                // The same bytes, shared: hashing holds them at most a part longer than the upload.
                upload.put(chunk.clone());
                *len += chunk.len();
                unhashed.push(chunk);
                if *len >= self.part_size {
                    *len = 0;
                    let batch = std::mem::take(unhashed);
                    hasher.add(batch).await.map_err(|e| hash_failed(&self.key, e))?;
                }
            }
            WriteState::Staging { file, chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                if *len >= STAGING_BATCH_BYTES {
                    *len = 0;
                    file.write_part(std::mem::take(chunks)).await?;
                }
            }
        }
        Ok(())
    }

    /// Checks the data against `expected`, then makes the object visible; or aborts.
    pub(crate) async fn finish(self, expected: Expected) -> Result<StoredObject> {
        let size = self.size;
        // Known without the digest, so checked before waiting for it.
        if let Some(want) = expected.size
            && want != size
        {
            self.abort().await;
            return Err(StorageError::SizeMismatch { expected: want, actual: size });
        }
        let Self { store, key, path, state, .. } = self;
        match state {
            WriteState::Buffering { chunks, .. } => {
                let sha256 =
                    BackgroundHasher::default().finish(chunks.clone()).await.map_err(|e| hash_failed(&key, e))?;
                check_sha256(expected, sha256)?;
                let stored = store
                    .put(&path, PutPayload::from_iter(chunks))
                    .await
                    .map_err(|e| StorageError::backend("store", &key, e))?;
                Ok(StoredObject { size, sha256, e_tag: stored.e_tag })
            }
            WriteState::Uploading { upload, hasher, unhashed, .. } => {
                let checked = match hasher.finish(unhashed).await {
                    Ok(sha256) => check_sha256(expected, sha256).map(|()| sha256),
                    Err(e) => Err(hash_failed(&key, e)),
                };
                let sha256 = match checked {
                    Ok(sha256) => sha256,
                    Err(err) => {
                        abort_upload(upload, &key).await;
                        return Err(err);
                    }
                };
                // Aborts the upload itself when completing fails.
                let stored = upload.finish().await.map_err(|e| StorageError::backend("store", &key, e))?;
                Ok(StoredObject { size, sha256, e_tag: stored.e_tag })
            }
            WriteState::Staging { mut file, chunks, .. } => {
                let checked = match file.finish_writing(chunks).await {
                    Ok(sha256) => check_sha256(expected, sha256).map(|()| sha256),
                    Err(err) => Err(err),
                };
                match checked {
                    Ok(sha256) => Ok(StoredObject { size, sha256, e_tag: Some(file.publish().await?) }),
                    Err(err) => {
                        file.abort().await;
                        Err(err)
                    }
                }
            }
        }
    }

    /// Drops what was written: nothing to do before the first part, else abort the upload or
    /// remove the staging file. A batch still being hashed is left to end on its own.
    pub(crate) async fn abort(self) {
        match self.state {
            WriteState::Buffering { .. } => {}
            WriteState::Uploading { upload, .. } => abort_upload(upload, &self.key).await,
            WriteState::Staging { file, .. } => file.abort().await,
        }
    }
}

/// `ChecksumMismatch` unless `sha256` is the expected digest (or none is expected).
fn check_sha256(expected: Expected, sha256: Sha256Digest) -> Result<()> {
    match expected.sha256 {
        Some(want) if want != sha256 => Err(StorageError::ChecksumMismatch { expected: want, actual: sha256 }),
        _ => Ok(()),
    }
}

/// A hashing task that did not finish (it panicked, or the runtime is shutting down).
fn hash_failed(key: &ObjectKey, source: tokio::task::JoinError) -> StorageError {
    StorageError::backend("hash", key, object_store::Error::JoinError { source })
}

/// Aborts a multipart upload; a failure is only logged.
async fn abort_upload(upload: WriteMultipart, key: &ObjectKey) {
    if let Err(error) = upload.abort().await {
        // Invisible either way: an S3 upload the bucket's lifecycle rule expires.
        tracing::warn!(%key, %error, "could not abort a multipart upload");
    }
}
