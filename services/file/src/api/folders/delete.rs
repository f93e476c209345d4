//! `DeleteFolder`: an empty folder, or a folder with everything beneath it.
//!
//! A recursive deletion decides everything in one transaction, with the tree locked and every
//! folder and file beneath locked: either nothing happens (a file is protected), or every file is
//! marked `deleting` and every folder row goes. The files' objects and rows are removed after the
//! commit, one by one ([`crate::State::finish_removal`]); one that fails stays `deleting` for the
//! `deleting_files` cleanup rule to finish.

use flatrender_proto::flatrender::events::v1::FileDeletionReason;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::PgTransaction;
use time::OffsetDateTime;
use uuid::Uuid;

use super::tree::{self, Lock, Tree};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileRecord};

impl FileApi {
    /// Deletes folder `id`, with everything beneath it when `recursive`.
    pub(super) async fn remove_folder(
        &self,
        actor: &Actor,
        id: Uuid,
        recursive: bool,
    ) -> Result<pb::DeleteFolderResponse> {
        let mut tx = self.state.pool.begin().await?;
        let folder = tree::reachable(&mut *tx, actor, id, Lock::None).await?;
        tree::lock(&mut tx, Tree::of(&folder), true).await?;
        let subtree = tree::lock_subtree(&mut tx, id).await?;
        if subtree.is_empty() {
            return Err(FileError::NotFound("folder"));
        }
        // Files being deleted are on their way out: they keep no folder from going.
        let ids: Vec<Uuid> = subtree.iter().map(|(id, _)| *id).collect();
        sqlx::query("UPDATE file_mgr.files SET folder_id = NULL WHERE folder_id = ANY($1) AND state = 'deleting'")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        if !recursive {
            return self.remove_empty_folder(tx, id, subtree.len()).await;
        }
        let files = lock_files(&mut tx, &ids).await?;
        let now = OffsetDateTime::now_utc();
        let protected = files.iter().filter(|file| file.is_protected(now)).count();
        if protected > 0 {
            return Err(FileError::FailedPrecondition(format!(
                "{protected} file(s) beneath the folder are pinned or retained; nothing was deleted"
            )));
        }
        let mut doomed = Vec::with_capacity(files.len());
        for file in &files {
            if let Some(marked) = self.state.mark_deleting(&mut tx, file.id).await? {
                doomed.push(marked);
            }
        }
        // Their rows outlive the folders for a moment; the folder key must not hold them back.
        sqlx::query("UPDATE file_mgr.files SET folder_id = NULL WHERE folder_id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        delete_deepest_first(&mut tx, &subtree).await?;
        tx.commit().await?;
        let (reason, by) = removal_reason(actor);
        let mut bytes_freed = 0;
        for file in &doomed {
            bytes_freed += file.size;
            if let Err(error) = self.state.finish_removal(file, reason, by).await {
                tracing::warn!(%error, file = %file.id, "a file of a deleted folder is left for cleanup to remove");
            }
        }
        Ok(pb::DeleteFolderResponse {
            files_deleted: doomed.len() as u64,
            folders_deleted: subtree.len() as u64,
            bytes_freed,
        })
    }

    /// Deletes folder `id` when it has nothing beneath it (`subtree` folders counts itself).
    async fn remove_empty_folder(
        &self,
        mut tx: PgTransaction<'_>,
        id: Uuid,
        subtree: usize,
    ) -> Result<pb::DeleteFolderResponse> {
        if subtree > 1 {
            return Err(FileError::FailedPrecondition("the folder is not empty: it has subfolders".into()));
        }
        let files: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM file_mgr.files WHERE folder_id = $1)")
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
        if files {
            return Err(FileError::FailedPrecondition("the folder is not empty: it has files".into()));
        }
        sqlx::query("DELETE FROM file_mgr.folders WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(pb::DeleteFolderResponse { files_deleted: 0, folders_deleted: 1, bytes_freed: 0 })
    }
}

/// Why a caller's deletion happens, and by whom: people delete as users, services as the system.
pub(crate) fn removal_reason(actor: &Actor) -> (FileDeletionReason, Option<Uuid>) {
    if actor.is_service() { (FileDeletionReason::System, None) } else { (FileDeletionReason::User, actor.user_id()) }
}

/// The active files in folders `ids`, locked `FOR UPDATE`.
async fn lock_files(tx: &mut PgTransaction<'_>, ids: &[Uuid]) -> Result<Vec<FileRecord>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM file_mgr.files WHERE folder_id = ANY($1) AND state = 'active' ORDER BY id FOR UPDATE"
    )))
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.iter().map(FileRecord::from_row).collect::<sqlx::Result<_>>()?)
}

/// Deletes the folders of `subtree`, the deepest level first: each level's parents are still
/// there while it goes (the parent key restricts deletion).
async fn delete_deepest_first(tx: &mut PgTransaction<'_>, subtree: &[(Uuid, i32)]) -> Result<()> {
    let deepest = subtree.iter().map(|(_, depth)| *depth).max().unwrap_or(1);
    for depth in (1..=deepest).rev() {
        let level: Vec<Uuid> = subtree.iter().filter(|(_, d)| *d == depth).map(|(id, _)| *id).collect();
        sqlx::query("DELETE FROM file_mgr.folders WHERE id = ANY($1)").bind(&level).execute(&mut **tx).await?;
    }
    Ok(())
}
