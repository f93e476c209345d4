//! The file service's domain events, written to the outbox in the caller's transaction.

use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as ev;
use sqlx::PgTransaction;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Result;
use crate::model::{FileRecord, QuotaRecord, id_text, timestamp};

const SOURCE: &str = "file";

fn now() -> Option<prost_types::Timestamp> {
    Some(timestamp(OffsetDateTime::now_utc()))
}

fn file_meta(file: &FileRecord) -> EventMeta<'static> {
    EventMeta {
        source: SOURCE,
        aggregate_type: "file",
        aggregate_id: file.id.to_string(),
        tenant_id: Some(file.tenant_id),
    }
}

fn quota_meta(quota: &QuotaRecord) -> EventMeta<'static> {
    let aggregate = quota.user_id.unwrap_or(quota.tenant_id);
    EventMeta {
        source: SOURCE,
        aggregate_type: "quota",
        aggregate_id: aggregate.to_string(),
        tenant_id: Some(quota.tenant_id),
    }
}

/// A file was stored.
pub async fn file_uploaded(tx: &mut PgTransaction<'_>, file: &FileRecord) -> Result<()> {
    let event = ev::FileUploaded {
        tenant_id: file.tenant_id.to_string(),
        occurred_at: now(),
        file_id: file.id.to_string(),
        owner_user_id: id_text(file.owner_user_id),
        folder_id: id_text(file.folder_id),
        name: file.name.clone(),
        content_type: file.content_type.clone(),
        size_bytes: file.size,
        sha256: file.sha256.to_hex(),
        kind: file.kind.as_str().to_owned(),
        counts_toward_quota: file.counts_toward_quota,
    };
    outbox::publish(tx, file_meta(file), &event).await?;
    Ok(())
}

/// A file was deleted, by `deleted_by` (a person) or the system.
pub async fn file_deleted(
    tx: &mut PgTransaction<'_>,
    file: &FileRecord,
    reason: ev::FileDeletionReason,
    deleted_by: Option<Uuid>,
) -> Result<()> {
    let event = ev::FileDeleted {
        tenant_id: file.tenant_id.to_string(),
        occurred_at: now(),
        file_id: file.id.to_string(),
        owner_user_id: id_text(file.owner_user_id),
        size_bytes: file.size,
        reason: reason as i32,
        deleted_by_user_id: id_text(deleted_by),
        counts_toward_quota: file.counts_toward_quota,
    };
    outbox::publish(tx, file_meta(file), &event).await?;
    Ok(())
}

/// A person downloaded `bytes_sent` bytes of a file.
pub async fn file_downloaded(
    tx: &mut PgTransaction<'_>,
    file: &FileRecord,
    bytes_sent: u64,
    complete: bool,
    downloaded_by: Option<Uuid>,
) -> Result<()> {
    let event = ev::FileDownloaded {
        tenant_id: file.tenant_id.to_string(),
        occurred_at: now(),
        file_id: file.id.to_string(),
        owner_user_id: id_text(file.owner_user_id),
        kind: file.kind.as_str().to_owned(),
        bytes_sent,
        complete,
        downloaded_by_user_id: id_text(downloaded_by),
        api_key_id: String::new(),
    };
    outbox::publish(tx, file_meta(file), &event).await?;
    Ok(())
}

/// A quota's usage crossed the warning threshold.
pub async fn quota_nearly_full(tx: &mut PgTransaction<'_>, quota: &QuotaRecord, threshold_percent: u8) -> Result<()> {
    let event = ev::QuotaNearlyFull {
        tenant_id: quota.tenant_id.to_string(),
        occurred_at: now(),
        user_id: id_text(quota.user_id),
        used_bytes: quota.used_bytes,
        limit_bytes: quota.limit_bytes,
        threshold_percent: u32::from(threshold_percent),
    };
    outbox::publish(tx, quota_meta(quota), &event).await?;
    Ok(())
}

/// A write needing `attempted` bytes was refused by a quota.
pub async fn quota_exceeded(tx: &mut PgTransaction<'_>, quota: &QuotaRecord, attempted: u64) -> Result<()> {
    let event = ev::QuotaExceeded {
        tenant_id: quota.tenant_id.to_string(),
        occurred_at: now(),
        user_id: id_text(quota.user_id),
        used_bytes: quota.used_bytes,
        limit_bytes: quota.limit_bytes,
        attempted_bytes: attempted,
    };
    outbox::publish(tx, quota_meta(quota), &event).await?;
    Ok(())
}
