//! `DeleteFile` and `SetFileRetention`: deleting a file unless it is protected, and protecting it.

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::file::v1 as pb;
use time::OffsetDateTime;
use uuid::Uuid;

use super::super::folders::delete::removal_reason;
use super::super::folders::tree::Lock;
use super::{reachable, require_active};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileRecord, from_timestamp};
use crate::validate;

/// Whether `actor` is the service that protected `file`.
fn is_retaining_service(actor: &Actor, file: &FileRecord) -> bool {
    matches!(actor, Actor::Service(service) if file.retained_by.as_deref() == Some(service.as_str()))
}

impl FileApi {
    /// `DeleteFile`: marks the file `deleting` unless it is protected, then removes its object,
    /// row and quota usage. A file left `deleting` by an interrupted deletion is finished.
    pub(super) async fn remove_file(&self, actor: &Actor, id: Uuid) -> Result<()> {
        let mut tx = self.state.pool.begin().await?;
        let file = reachable(&mut *tx, actor, id, Lock::Update).await?;
        let doomed = if file.state == "active" {
            if file.is_protected(OffsetDateTime::now_utc()) && !is_retaining_service(actor, &file) {
                let by = file.retained_by.as_deref().unwrap_or("another service");
                return Err(FileError::FailedPrecondition(format!(
                    "the file is pinned or retained; only the service that protects it ({by}) may delete it"
                )));
            }
            self.state.mark_deleting(&mut tx, id).await?.ok_or(FileError::NotFound("file"))?
        } else {
            file
        };
        tx.commit().await?;
        let (reason, by) = removal_reason(actor);
        // False only when a concurrent deletion removed the row first: gone either way.
        self.state.finish_removal(&doomed, reason, by).await?;
        Ok(())
    }

    /// `SetFileRetention`: pins or unpins the file and sets or clears its retention time,
    /// recording the caller's service.
    pub(super) async fn protect_file(&self, actor: &Actor, req: &pb::SetFileRetentionRequest) -> Result<FileRecord> {
        let setter = match actor {
            Actor::User { .. } => {
                return Err(FileError::PermissionDenied("only services and tenant admins may set retention".into()));
            }
            Actor::Service(service) => *service,
            Actor::TenantAdmin { .. } | Actor::PlatformAdmin { .. } => ServiceName::File,
        };
        let id = validate::id("file_id", &req.file_id)?;
        let until = req.retained_until.as_ref().map(|at| from_timestamp("retained_until", at)).transpose()?;
        let mut tx = self.state.pool.begin().await?;
        let file = reachable(&mut *tx, actor, id, Lock::Update).await?;
        require_active(&file)?;
        let now = OffsetDateTime::now_utc();
        // Unpinning, or ending a running retention sooner, gives up protection.
        let releasing = (file.pinned && !req.pinned)
            || file.retained_until.is_some_and(|old| old > now && until.is_none_or(|new| new < old));
        let owner = file.retained_by.as_deref();
        let platform_admin = matches!(actor, Actor::PlatformAdmin { .. });
        if releasing && owner.is_some_and(|owner| owner != setter.as_str()) && !platform_admin {
            return Err(FileError::FailedPrecondition(format!(
                "the file is protected by {}; only that service or a platform admin may release it",
                owner.unwrap_or_default()
            )));
        }
        let retained_by = (req.pinned || until.is_some()).then_some(setter.as_str());
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.files SET pinned = $2, retained_until = $3, retained_by = $4 WHERE id = $1
             RETURNING {FILE_COLUMNS}"
        )))
        .bind(id)
        .bind(req.pinned)
        .bind(until)
        .bind(retained_by)
        .fetch_one(&mut *tx)
        .await?;
        let updated = FileRecord::from_row(&row)?;
        tx.commit().await?;
        Ok(updated)
    }
}
