//! Resumable uploads (`upload_sessions`): each part is its own object under
//! `uploads/<session>`, so parts may arrive in any order, a retried part simply replaces itself,
//! and both backends work alike. Assembling reads the parts in order into the final object
//! through the same hashing writer as any upload, so the declared size and SHA-256 are checked
//! in constant memory.

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use object_store::ObjectStore;
use uuid::Uuid;

use super::Storage;
use super::error::{BoxError, Result, StorageError};
use super::key::{KeyError, MAX_PART_NUMBER, ObjectKey};
use super::read::ByteRange;
use super::write::{Expected, ObjectWriter, StoredObject};

/// The most missing part numbers an error lists.
const MISSING_LISTED: usize = 10;

/// A part found in storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadedPart {
    /// Its number, 1-based.
    pub number: u32,
    /// Its size in bytes.
    pub size: u64,
}

impl Storage {
    /// Stores part `part_number` (1..=10,000) of upload `session` from `data`, replacing an
    /// earlier copy of the same part; checked against `expected` like [`put`](Self::put).
    pub async fn put_part<S, E>(
        &self,
        session: Uuid,
        part_number: u32,
        data: S,
        expected: Expected,
    ) -> Result<StoredObject>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: Into<BoxError>,
    {
        let key = ObjectKey::upload_part(session, part_number)?;
        self.put(&key, data, expected).await
    }

    /// The parts stored for `session`, by part number.
    pub async fn upload_parts(&self, session: Uuid) -> Result<Vec<UploadedPart>> {
        let mut parts: Vec<UploadedPart> = self
            .list(&ObjectKey::upload(session))
            .try_filter_map(|info| {
                let part = info.key.part_number().map(|number| UploadedPart { number, size: info.size });
                futures_util::future::ready(Ok(part))
            })
            .try_collect()
            .await?;
        parts.sort_unstable_by_key(|part| part.number);
        Ok(parts)
    }

    /// Concatenates parts `1..=part_count` of `session`, in order, into `dest` and checks the
    /// whole against `expected`; the parts stay (remove them with
    /// [`abort_upload`](Self::abort_upload) once the file row is committed, so a failed commit
    /// can be retried).
    ///
    /// [`StorageError::MissingParts`] when parts are absent, and a size mismatch from the parts'
    /// sizes, both before any byte is read. On any failure nothing is stored under `dest`.
    pub async fn assemble_upload(
        &self,
        session: Uuid,
        part_count: u32,
        dest: &ObjectKey,
        expected: Expected,
    ) -> Result<StoredObject> {
        if !(1..=MAX_PART_NUMBER).contains(&part_count) {
            return Err(KeyError::PartNumber(part_count).into());
        }
        let parts = self.upload_parts(session).await?;
        let missing: Vec<u32> = (1..=part_count)
            .filter(|number| parts.binary_search_by_key(number, |part| part.number).is_err())
            .take(MISSING_LISTED)
            .collect();
        if !missing.is_empty() {
            return Err(StorageError::MissingParts { missing });
        }
        let total: u64 = parts.iter().filter(|part| part.number <= part_count).map(|part| part.size).sum();
        if let Some(want) = expected.size
            && want != total
        {
            return Err(StorageError::SizeMismatch { expected: want, actual: total });
        }

        let mut writer = ObjectWriter::new(self, dest, expected.size);
        let copied = async {
            for number in 1..=part_count {
                let mut bytes = self.get(&ObjectKey::upload_part(session, number)?, ByteRange::ALL).await?.bytes;
                while let Some(chunk) = bytes.next().await {
                    writer.write(chunk?).await?;
                }
            }
            Ok(())
        }
        .await;
        match copied {
            Ok(()) => writer.finish(expected).await,
            Err(err) => {
                writer.abort().await;
                Err(err)
            }
        }
    }

    /// [`assemble_upload`](Self::assemble_upload), then removes the parts. The object is
    /// complete and checked when this returns, so failing to remove the parts is only logged:
    /// they stay under `uploads/<session>` for a cleanup sweep.
    pub async fn complete_upload(
        &self,
        session: Uuid,
        part_count: u32,
        dest: &ObjectKey,
        expected: Expected,
    ) -> Result<StoredObject> {
        let stored = self.assemble_upload(session, part_count, dest, expected).await?;
        if let Err(error) = self.abort_upload(session).await {
            tracing::warn!(%session, %error, "upload completed, but its parts could not be removed");
        }
        Ok(stored)
    }

    /// Removes every part of `session` and returns how many there were; idempotent.
    pub async fn abort_upload(&self, session: Uuid) -> Result<u64> {
        let prefix = ObjectKey::upload(session);
        let located = self.store.list(Some(&prefix.to_path())).map_ok(|meta| meta.location).boxed();
        let mut deleted = self.store.delete_stream(located);
        let mut removed = 0;
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) => removed += 1,
                // Removed by someone else meanwhile: just as good.
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(StorageError::backend("remove the parts under", &prefix, e)),
            }
        }
        Ok(removed)
    }
}
