//! A folder (`file_mgr.folders`).

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{id_text, timestamp};

/// The columns [`FolderRecord::from_row`] reads.
pub const FOLDER_COLUMNS: &str = "id, tenant_id, owner_user_id, parent_id, name, created_at, updated_at";

/// A folder row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderRecord {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Owning user; `None` for the tenant's own tree.
    pub owner_user_id: Option<Uuid>,
    /// Parent; `None` at the root.
    pub parent_id: Option<Uuid>,
    /// Name.
    pub name: String,
    /// Created at.
    pub created_at: OffsetDateTime,
    /// Changed at.
    pub updated_at: OffsetDateTime,
}

impl FolderRecord {
    /// Reads a row selected with [`FOLDER_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            owner_user_id: row.try_get("owner_user_id")?,
            parent_id: row.try_get("parent_id")?,
            name: row.try_get("name")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The API's view, with its `path` from the root (e.g. "/Projects/2026").
    pub fn to_proto(&self, path: String) -> pb::Folder {
        pb::Folder {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            owner_user_id: id_text(self.owner_user_id),
            parent_id: id_text(self.parent_id),
            name: self.name.clone(),
            path,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}
