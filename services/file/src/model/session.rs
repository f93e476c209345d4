//! A resumable upload (`file_mgr.upload_sessions`) and its parts (`file_mgr.upload_parts`).

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use sqlx::postgres::PgRow;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{FileKind, digest, id_text, optional_digest, optional_timestamp, timestamp, unsigned};
use crate::storage::Sha256Digest;

/// The columns [`SessionRecord::from_row`] reads.
pub const SESSION_COLUMNS: &str = "id, tenant_id, owner_user_id, folder_id, name, kind, content_type_hint, \
     declared_size, declared_sha256, part_size, part_count, state, reserved_bytes, counts_toward_quota, simple, \
     metadata, pinned, retained_until, retained_by, source_service, file_id, error_message, expires_at, completed_at, aborted_at, created_at, updated_at";

/// The state of a session (`upload_sessions.state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionState {
    /// Accepting parts.
    Active,
    /// Being assembled and verified.
    Completing,
    /// The file exists.
    Completed,
    /// Aborted by the client or a failed verification.
    Aborted,
    /// Not completed in time.
    Expired,
}

impl SessionState {
    /// The database's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completing => "completing",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
            Self::Expired => "expired",
        }
    }

    /// The state stored as `text`.
    pub fn parse(text: &str) -> Self {
        match text {
            "active" => Self::Active,
            "completing" => Self::Completing,
            "completed" => Self::Completed,
            "aborted" => Self::Aborted,
            _ => Self::Expired,
        }
    }

    /// The proto enum value.
    pub fn to_proto(self) -> pb::UploadSessionState {
        match self {
            Self::Active => pb::UploadSessionState::Active,
            Self::Completing => pb::UploadSessionState::Completing,
            Self::Completed => pb::UploadSessionState::Completed,
            Self::Aborted => pb::UploadSessionState::Aborted,
            Self::Expired => pb::UploadSessionState::Expired,
        }
    }
}

/// A session row.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionRecord {
    /// Id; also the id of the file it creates.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Owner of the file to be.
    pub owner_user_id: Option<Uuid>,
    /// Destination folder.
    pub folder_id: Option<Uuid>,
    /// File name.
    pub name: String,
    /// File kind.
    pub kind: FileKind,
    /// Client's MIME hint.
    pub content_type_hint: Option<String>,
    /// Declared size.
    pub declared_size: u64,
    /// Declared SHA-256 (always set for resumable sessions).
    pub declared_sha256: Option<Sha256Digest>,
    /// Size of every part but the last.
    pub part_size: u64,
    /// Number of parts.
    pub part_count: u32,
    /// State.
    pub state: SessionState,
    /// Quota reservation held.
    pub reserved_bytes: u64,
    /// Whether the file will count towards quotas.
    pub counts_toward_quota: bool,
    /// A simple upload's reservation holder (never listed).
    pub simple: bool,
    /// Client metadata for the file (a JSON object of strings).
    pub metadata: serde_json::Value,
    /// The file will be pinned.
    pub pinned: bool,
    /// The file will be retained until then.
    pub retained_until: Option<OffsetDateTime>,
    /// The service that set `pinned`/`retained_until`.
    pub retained_by: Option<ServiceName>,
    /// The service that started the session, recorded as the file's creator.
    pub source_service: ServiceName,
    /// The created file.
    pub file_id: Option<Uuid>,
    /// Why the server aborted it.
    pub error_message: Option<String>,
    /// Expiry.
    pub expires_at: OffsetDateTime,
    /// Completed at.
    pub completed_at: Option<OffsetDateTime>,
    /// Aborted or expired at.
    pub aborted_at: Option<OffsetDateTime>,
    /// Started at.
    pub created_at: OffsetDateTime,
    /// Changed at.
    pub updated_at: OffsetDateTime,
}

impl SessionRecord {
    /// Reads a row selected with [`SESSION_COLUMNS`].
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let declared_sha256 = optional_digest(row, "declared_sha256")?;
        let part_count: i32 = row.try_get("part_count")?;
        Ok(Self {
            id: row.try_get("id")?,
            tenant_id: row.try_get("tenant_id")?,
            owner_user_id: row.try_get("owner_user_id")?,
            folder_id: row.try_get("folder_id")?,
            name: row.try_get("name")?,
            kind: FileKind::parse(row.try_get("kind")?),
            content_type_hint: row.try_get("content_type_hint")?,
            declared_size: unsigned(row.try_get("declared_size")?),
            declared_sha256,
            part_size: unsigned(row.try_get("part_size")?),
            part_count: u32::try_from(part_count).unwrap_or(0),
            state: SessionState::parse(row.try_get("state")?),
            reserved_bytes: unsigned(row.try_get("reserved_bytes")?),
            counts_toward_quota: row.try_get("counts_toward_quota")?,
            simple: row.try_get("simple")?,
            metadata: row.try_get("metadata")?,
            pinned: row.try_get("pinned")?,
            retained_until: row.try_get("retained_until")?,
            retained_by: row.try_get::<Option<&str>, _>("retained_by")?.map(service).transpose()?,
            source_service: service(row.try_get("source_service")?)?,
            file_id: row.try_get("file_id")?,
            error_message: row.try_get("error_message")?,
            expires_at: row.try_get("expires_at")?,
            completed_at: row.try_get("completed_at")?,
            aborted_at: row.try_get("aborted_at")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// The size part `number` (1-based) must have.
    pub fn expected_part_size(&self, number: u32) -> u64 {
        if number < self.part_count {
            self.part_size
        } else {
            self.declared_size - self.part_size * u64::from(self.part_count.saturating_sub(1))
        }
    }

    /// The API's view, with `parts` (empty in lists) and the bytes received so far.
    pub fn to_proto(&self, parts: &[PartRecord], received_bytes: u64) -> pb::UploadSession {
        pb::UploadSession {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            owner_user_id: id_text(self.owner_user_id),
            folder_id: id_text(self.folder_id),
            name: self.name.clone(),
            kind: self.kind.to_proto() as i32,
            content_type_hint: self.content_type_hint.clone().unwrap_or_default(),
            declared_size_bytes: self.declared_size,
            declared_sha256: self.declared_sha256.map(|d| d.to_hex()).unwrap_or_default(),
            part_size_bytes: self.part_size,
            part_count: self.part_count,
            state: self.state.to_proto() as i32,
            parts: parts.iter().map(PartRecord::to_proto).collect(),
            received_bytes,
            file_id: id_text(self.file_id),
            error_message: self.error_message.clone().unwrap_or_default(),
            expires_at: Some(timestamp(self.expires_at)),
            completed_at: optional_timestamp(self.completed_at),
            aborted_at: optional_timestamp(self.aborted_at),
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
        }
    }
}

/// A service stored as text (the table's CHECKs allow only known names).
fn service(text: &str) -> sqlx::Result<ServiceName> {
    ServiceName::parse(text)
        .ok_or_else(|| sqlx::Error::Decode(format!("upload_sessions: unknown service {text:?}").into()))
}

/// A received part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartRecord {
    /// 1-based number.
    pub number: u32,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256.
    pub sha256: Sha256Digest,
    /// When it was (last) stored.
    pub received_at: OffsetDateTime,
}

impl PartRecord {
    /// Reads a row of `part_number, size_bytes, sha256, updated_at`.
    pub fn from_row(row: &PgRow) -> sqlx::Result<Self> {
        let sha256 = digest(row, "sha256")?;
        let number: i32 = row.try_get("part_number")?;
        Ok(Self {
            number: u32::try_from(number).unwrap_or(0),
            size: unsigned(row.try_get("size_bytes")?),
            sha256,
            received_at: row.try_get("updated_at")?,
        })
    }

    /// The API's view.
    pub fn to_proto(&self) -> pb::UploadedPart {
        pb::UploadedPart {
            part_number: self.number,
            size_bytes: self.size,
            sha256: self.sha256.to_hex(),
            received_at: Some(timestamp(self.received_at)),
        }
    }
}
