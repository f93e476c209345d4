//! Whole-object operations: head, delete, copy, list.

use std::time::SystemTime;

use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStoreExt};
use time::OffsetDateTime;

use super::Storage;
use super::error::{Result, StorageError};
use super::key::ObjectKey;

/// What the backend knows about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Its key.
    pub key: ObjectKey,
    /// Its size in bytes.
    pub size: u64,
    /// The backend's entity tag, when it gives one.
    pub e_tag: Option<String>,
    /// When it was last written.
    pub last_modified: OffsetDateTime,
}

impl Storage {
    /// Size, entity tag and modification time of the object under `key`.
    pub async fn head(&self, key: &ObjectKey) -> Result<ObjectInfo> {
        let meta = self.store.head(&key.to_path()).await.map_err(|e| StorageError::backend("look up", key, e))?;
        Ok(info(key.clone(), meta))
    }

    /// Removes the object under `key`; an object that is not there is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> Result<()> {
        match self.store.delete(&key.to_path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::backend("delete", key, e)),
        }
    }

    /// Copies `from` to `to` inside the backend (the bytes do not pass through this process),
    /// replacing any object under `to`. S3 copies objects of up to 5 GiB this way.
    pub async fn copy(&self, from: &ObjectKey, to: &ObjectKey) -> Result<()> {
        // Only the source can be missing, so a not-found names it.
        self.store
            .copy(&from.to_path(), &to.to_path())
            .await
            .map_err(|e| StorageError::backend(&format!("copy to {to} from"), from, e))
    }

    /// Every object under `prefix`, matched by whole segments (`uploads/a` holds `uploads/a/1`,
    /// not `uploads/ab`), in no particular order. Objects whose names are not valid keys were
    /// not written by this service and are skipped.
    pub fn list(&self, prefix: &ObjectKey) -> BoxStream<'static, Result<ObjectInfo>> {
        let listed_prefix = prefix.clone();
        self.store
            .list(Some(&prefix.to_path()))
            .map_err(move |e| StorageError::backend("list", &listed_prefix, e))
            .try_filter_map(|meta| {
                let key = ObjectKey::new(meta.location.as_ref());
                if let Err(reason) = &key {
                    tracing::warn!(location = %meta.location, %reason, "skipping an object that is not ours");
                }
                futures_util::future::ready(Ok(key.ok().map(|key| info(key, meta))))
            })
            .boxed()
    }
}

fn info(key: ObjectKey, meta: ObjectMeta) -> ObjectInfo {
    ObjectInfo { key, size: meta.size, e_tag: meta.e_tag, last_modified: timestamp(meta.last_modified) }
}

/// The backend's time (a `chrono` value inside `object_store`) as the `time` the database uses.
pub(crate) fn timestamp(at: impl Into<SystemTime>) -> OffsetDateTime {
    OffsetDateTime::from(at.into())
}
