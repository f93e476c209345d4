//! A storage quota (`file_mgr.quotas`).

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{id_text, optional_timestamp, timestamp, unsigned};

/// The columns [`QuotaRecord::from_row`] reads.
pub const QUOTA_COLUMNS: &str = "id, tenant_id, user_id, limit_bytes, used_bytes, reserved_bytes, file_count, \
     limit_source, plan_code, warned_at, exceeded_event_at, updated_at";

/// Whose quota: a tenant's (user `None`) or one of its users'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QuotaScope {
    /// Tenant.
    pub tenant_id: Uuid,
    /// User; `None` for the tenant-wide quota.
    pub user_id: Option<Uuid>,
}

impl QuotaScope {
    /// The quotas a file of `owner` in `tenant` counts against, tenant first (the order rows
    /// are locked in, everywhere, so concurrent writers never deadlock).
    pub fn chargeable(tenant_id: Uuid, owner: Option<Uuid>) -> Vec<Self> {
        let mut scopes = vec![Self { tenant_id, user_id: None }];
        if let Some(user) = owner {
            scopes.push(Self { tenant_id, user_id: Some(user) });
        }
        scopes
    }
}

/// A quota row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaRecord {
    /// Row id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// User; `None` for the tenant-wide quota.
    pub user_id: Option<Uuid>,
    /// Limit in bytes.
    pub limit_bytes: u64,
    /// Bytes of counted files.
    pub used_bytes: u64,
    /// Bytes reserved by unfinished uploads.
    pub reserved_bytes: u64,
    /// Counted files.
    pub file_count: u64,
    /// `plan`, `admin` or `default`.
    pub limit_source: String,
    /// Plan code of a `plan` limit.
    pub plan_code: Option<String>,
    /// When the nearly-full warning went out.
    pub warned_at: Option<OffsetDateTime>,
    /// When the last exceeded event went out.
    pub exceeded_event_at: Option<OffsetDateTime>,
    /// Changed at.
    pub updated_at: OffsetDateTime,
}

impl QuotaRecord {
    /// Reads a row selected with [`QUOTA_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            user_id: row.try_get("user_id")?,
            limit_bytes: unsigned(row.try_get("limit_bytes")?),
            used_bytes: unsigned(row.try_get("used_bytes")?),
            reserved_bytes: unsigned(row.try_get("reserved_bytes")?),
            file_count: unsigned(row.try_get("file_count")?),
            limit_source: row.try_get("limit_source")?,
            plan_code: row.try_get("plan_code")?,
            warned_at: row.try_get("warned_at")?,
            exceeded_event_at: row.try_get("exceeded_event_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// Bytes still free: limit - used - reserved, 0 when over.
    pub fn available_bytes(&self) -> u64 {
        self.limit_bytes.saturating_sub(self.used_bytes.saturating_add(self.reserved_bytes))
    }

    /// Whose quota it is.
    pub fn scope(&self) -> QuotaScope {
        QuotaScope { tenant_id: self.tenant_id, user_id: self.user_id }
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::Quota {
        pb::Quota {
            tenant_id: self.tenant_id.to_string(),
            user_id: id_text(self.user_id),
            limit_bytes: self.limit_bytes,
            used_bytes: self.used_bytes,
            reserved_bytes: self.reserved_bytes,
            available_bytes: self.available_bytes(),
            file_count: self.file_count,
            limit_source: match self.limit_source.as_str() {
                "plan" => pb::QuotaLimitSource::Plan,
                "admin" => pb::QuotaLimitSource::Admin,
                _ => pb::QuotaLimitSource::Default,
            } as i32,
            plan_code: self.plan_code.clone().unwrap_or_default(),
            warned_at: optional_timestamp(self.warned_at),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}
