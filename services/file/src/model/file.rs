//! A stored file (`file_mgr.files`).

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{FileKind, digest, id_text, optional_timestamp, service_from_proto, timestamp, unsigned};
use crate::storage::{ObjectKey, Sha256Digest};
use crate::validate::metadata_map;

/// The columns [`FileRecord::from_row`] reads, for `SELECT`/`RETURNING` lists.
pub const FILE_COLUMNS: &str = "id, tenant_id, owner_user_id, folder_id, name, kind, size_bytes, sha256, \
     content_type, storage_key, state, counts_toward_quota, pinned, retained_until, retained_by, source_service, \
     metadata, last_accessed_at, created_at, updated_at";

/// A file row.
#[derive(Clone, Debug, PartialEq)]
pub struct FileRecord {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Owning user; `None` for tenant- or service-owned.
    pub owner_user_id: Option<Uuid>,
    /// Folder; `None` at the root.
    pub folder_id: Option<Uuid>,
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: FileKind,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes.
    pub sha256: Sha256Digest,
    /// Sniffed MIME type.
    pub content_type: String,
    /// Object key.
    pub storage_key: String,
    /// `active` or `deleting`.
    pub state: String,
    /// Charged to quotas.
    pub counts_toward_quota: bool,
    /// Pinned.
    pub pinned: bool,
    /// Retained until.
    pub retained_until: Option<OffsetDateTime>,
    /// The service that set the protection.
    pub retained_by: Option<String>,
    /// The service that created it.
    pub source_service: String,
    /// Client metadata (a JSON object of strings).
    pub metadata: serde_json::Value,
    /// Last download (hourly resolution).
    pub last_accessed_at: Option<OffsetDateTime>,
    /// Stored at.
    pub created_at: OffsetDateTime,
    /// Changed at.
    pub updated_at: OffsetDateTime,
}

impl FileRecord {
    /// Reads a row selected with [`FILE_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let sha256 = digest(row, "sha256")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            owner_user_id: row.try_get("owner_user_id")?,
            folder_id: row.try_get("folder_id")?,
            name: row.try_get("name")?,
            kind: FileKind::parse(row.try_get("kind")?),
            size: unsigned(row.try_get("size_bytes")?),
            sha256,
            content_type: row.try_get("content_type")?,
            storage_key: row.try_get("storage_key")?,
            state: row.try_get("state")?,
            counts_toward_quota: row.try_get("counts_toward_quota")?,
            pinned: row.try_get("pinned")?,
            retained_until: row.try_get("retained_until")?,
            retained_by: row.try_get("retained_by")?,
            source_service: row.try_get("source_service")?,
            metadata: row.try_get("metadata")?,
            last_accessed_at: row.try_get("last_accessed_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// Whether cleanup must keep it and users may not delete it: pinned, or retained until a
    /// time still ahead of `now`.
    pub fn is_protected(&self, now: OffsetDateTime) -> bool {
        self.pinned || self.retained_until.is_some_and(|until| until > now)
    }

    /// The object holding its bytes.
    pub fn object_key(&self) -> Result<ObjectKey, crate::storage::StorageError> {
        Ok(ObjectKey::new(self.storage_key.clone())?)
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::File {
        pb::File {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            owner_user_id: id_text(self.owner_user_id),
            folder_id: id_text(self.folder_id),
            name: self.name.clone(),
            kind: self.kind.to_proto() as i32,
            size_bytes: self.size,
            sha256: self.sha256.to_hex(),
            content_type: self.content_type.clone(),
            state: match self.state.as_str() {
                "active" => pb::FileState::Active,
                _ => pb::FileState::Deleting,
            } as i32,
            counts_toward_quota: self.counts_toward_quota,
            pinned: self.pinned,
            retained_until: optional_timestamp(self.retained_until),
            retained_by: service_from_proto(self.retained_by.as_deref()),
            source_service: service_from_proto(Some(&self.source_service)),
            metadata: metadata_map(&self.metadata),
            last_accessed_at: optional_timestamp(self.last_accessed_at),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}
