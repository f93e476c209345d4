//! Streaming writes that hash as they go and store nothing unless the data is what was expected.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};

use super::Storage;
use super::digest::Sha256Digest;
use super::error::{BoxError, Result, StorageError};
use super::key::ObjectKey;
use super::staged::{LocalTarget, StagedWrite};

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
pub(crate) struct ObjectWriter {
    store: Arc<dyn ObjectStore>,
    local: Option<LocalTarget>,
    key: ObjectKey,
    path: Path,
    part_size: usize,
    upload_concurrency: usize,
    hasher: Sha256,
    size: u64,
    size_limit: Option<u64>,
    state: WriteState,
}

enum WriteState {
    /// Nothing sent yet; the chunks so far (at most about one part).
    Buffering { chunks: Vec<Bytes>, len: usize },
    /// A multipart upload in progress.
    Uploading(WriteMultipart),
    /// A local staging file in progress, and the chunks of the next part.
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
            hasher: Sha256::new(),
            size: 0,
            size_limit,
            state: WriteState::Buffering { chunks: Vec::new(), len: 0 },
        }
    }

    /// Hashes `chunk` and sends it on (or buffers it), waiting while the parts in flight are
    /// at the limit.
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
        self.hasher.update(&chunk);
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
                    for chunk in chunks {
                        upload.put(chunk);
                    }
                    self.state = WriteState::Uploading(upload);
                }
            }
            WriteState::Uploading(upload) => {
                upload
                    .wait_for_capacity(self.upload_concurrency)
                    .await
                    .map_err(|e| StorageError::backend("write", &self.key, e))?;
                upload.put(chunk);
            }
            WriteState::Staging { file, chunks, len } => {
                *len += chunk.len();
                chunks.push(chunk);
                if *len >= self.part_size {
                    *len = 0;
                    file.write_part(std::mem::take(chunks)).await?;
                }
            }
        }
        Ok(())
    }

    /// The size and digest so far.
    fn summary(&self) -> (u64, Sha256Digest) {
        (self.size, Sha256Digest::from_hasher(self.hasher.clone()))
    }

    /// Checks the data against `expected`, then makes the object visible; or aborts.
    pub(crate) async fn finish(self, expected: Expected) -> Result<StoredObject> {
        let (size, sha256) = self.summary();
        let mismatch = if let Some(want) = expected.size
            && want != size
        {
            Some(StorageError::SizeMismatch { expected: want, actual: size })
        } else if let Some(want) = expected.sha256
            && want != sha256
        {
            Some(StorageError::ChecksumMismatch { expected: want, actual: sha256 })
        } else {
            None
        };
        if let Some(err) = mismatch {
            self.abort().await;
            return Err(err);
        }
        let stored = match self.state {
            WriteState::Buffering { chunks, .. } => self.store.put(&self.path, PutPayload::from_iter(chunks)).await,
            // Aborts the upload itself when completing fails.
            WriteState::Uploading(upload) => upload.finish().await,
            WriteState::Staging { file, chunks, .. } => {
                let e_tag = file.finish(chunks).await?;
                return Ok(StoredObject { size, sha256, e_tag: Some(e_tag) });
            }
        }
        .map_err(|e| StorageError::backend("store", &self.key, e))?;
        Ok(StoredObject { size, sha256, e_tag: stored.e_tag })
    }

    /// Drops what was written: nothing to do before the first part, else abort the upload or
    /// remove the staging file.
    pub(crate) async fn abort(self) {
        match self.state {
            WriteState::Buffering { .. } => {}
            WriteState::Uploading(upload) => {
                if let Err(error) = upload.abort().await {
                    // Invisible either way: an S3 upload the bucket's lifecycle rule expires.
                    tracing::warn!(key = %self.key, %error, "could not abort a multipart upload");
                }
            }
            WriteState::Staging { file, .. } => file.abort().await,
        }
    }
}
