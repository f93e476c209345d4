//! Removing a file: its object and its row go together.
//!
//! First the row is marked `deleting` (so a crash leaves a row the `deleting_files` cleanup rule
//! finds), then the object is deleted, then — in one transaction — the row, the quota usage and
//! the `FileDeleted` event. Users, folder deletion and every cleanup rule go through here.

use flatrender_proto::flatrender::events::v1::FileDeletionReason;
use sqlx::PgTransaction;
use uuid::Uuid;

use crate::error::Result;
use crate::events;
use crate::model::{FILE_COLUMNS, FileRecord};
use crate::state::State;

impl State {
    /// Marks file `id` as being deleted and returns it; `None` when it is gone or already being
    /// deleted. The caller has checked access and protection in the same transaction.
    pub async fn mark_deleting(&self, tx: &mut PgTransaction<'_>, id: Uuid) -> Result<Option<FileRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.files SET state = 'deleting' WHERE id = $1 AND state = 'active' RETURNING {FILE_COLUMNS}"
        )))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.as_ref().map(FileRecord::from_row).transpose()?)
    }

    /// Deletes the object of a file marked `deleting`, then its row with the quota usage and the
    /// event. Returns whether this call removed the row (false when another remover got there
    /// first). On a storage failure the row stays `deleting` for the cleanup rule to finish.
    pub async fn finish_removal(
        &self,
        file: &FileRecord,
        reason: FileDeletionReason,
        deleted_by: Option<Uuid>,
    ) -> Result<bool> {
        self.storage.delete(&file.object_key()?).await?;
        let mut tx = self.pool.begin().await?;
        let removed: Option<Uuid> =
            sqlx::query_scalar("DELETE FROM file_mgr.files WHERE id = $1 AND state = 'deleting' RETURNING id")
                .bind(file.id)
                .fetch_optional(&mut *tx)
                .await?;
        if removed.is_none() {
            return Ok(false);
        }
        // Sessions keep their history; their link to the file goes (ON DELETE SET NULL).
        if file.counts_toward_quota {
            self.ledger.refund(&mut tx, file.tenant_id, file.owner_user_id, file.size).await?;
        }
        events::file_deleted(&mut tx, file, reason, deleted_by).await?;
        tx.commit().await?;
        Ok(true)
    }
}
