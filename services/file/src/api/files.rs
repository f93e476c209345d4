//! File metadata, listing, copy, delete, retention, ranged downloads and download links
//! (`FileService`).

mod copy;
mod download;
mod link;
mod list;
mod protect;

use std::collections::HashSet;

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::PgExecutor;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::folders::tree::{self, Lock, Tree};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FILE_COLUMNS, FileRecord};
use crate::validate;

/// The most ids one `BatchGetFiles` may ask for.
const MAX_BATCH: usize = 100;

#[tonic::async_trait]
impl pb::file_service_server::FileService for FileApi {
    async fn get_file(&self, request: Request<pb::GetFileRequest>) -> Result<Response<pb::GetFileResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let id = validate::id("file_id", &request.get_ref().file_id)?;
        let file = reachable(&self.state.pool, &actor, id, Lock::None).await?;
        Ok(Response::new(pb::GetFileResponse { file: Some(file.to_proto()) }))
    }

    async fn batch_get_files(
        &self,
        request: Request<pb::BatchGetFilesRequest>,
    ) -> Result<Response<pb::BatchGetFilesResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.batch_get(&actor, &request.get_ref().file_ids).await?))
    }

    async fn list_files(
        &self,
        request: Request<pb::ListFilesRequest>,
    ) -> Result<Response<pb::ListFilesResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.file_page(&actor, request.get_ref()).await?))
    }

    async fn update_file(
        &self,
        request: Request<pb::UpdateFileRequest>,
    ) -> Result<Response<pb::UpdateFileResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let file = self.change_file(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::UpdateFileResponse { file: Some(file.to_proto()) }))
    }

    async fn copy_file(&self, request: Request<pb::CopyFileRequest>) -> Result<Response<pb::CopyFileResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let file = self.copy_file_as(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::CopyFileResponse { file: Some(file.to_proto()) }))
    }

    async fn delete_file(
        &self,
        request: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let id = validate::id("file_id", &request.get_ref().file_id)?;
        self.remove_file(&actor, id).await?;
        Ok(Response::new(pb::DeleteFileResponse {}))
    }

    async fn set_file_retention(
        &self,
        request: Request<pb::SetFileRetentionRequest>,
    ) -> Result<Response<pb::SetFileRetentionResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let file = self.protect_file(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::SetFileRetentionResponse { file: Some(file.to_proto()) }))
    }

    async fn download_file(
        &self,
        request: Request<pb::DownloadFileRequest>,
    ) -> Result<Response<BoxStream<pb::DownloadFileResponse>>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.start_download(actor, request.get_ref()).await?))
    }

    async fn create_download_url(
        &self,
        request: Request<pb::CreateDownloadUrlRequest>,
    ) -> Result<Response<pb::CreateDownloadUrlResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.create_link(&actor, request.get_ref()).await?))
    }
}

/// File `id` when the caller may reach it; `NOT_FOUND` otherwise.
pub(crate) async fn reachable<'c>(
    executor: impl PgExecutor<'c>,
    actor: &Actor,
    id: Uuid,
    lock: Lock,
) -> Result<FileRecord> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FILE_COLUMNS} FROM file_mgr.files WHERE id = $1{}",
        lock.clause()
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    let file = row.as_ref().map(FileRecord::from_row).transpose()?;
    file.filter(|file| actor.can_reach(file.tenant_id, file.owner_user_id)).ok_or(FileError::NotFound("file"))
}

/// `FAILED_PRECONDITION` unless `file` is usable.
fn require_active(file: &FileRecord) -> Result<()> {
    if file.state == "active" { Ok(()) } else { Err(FileError::FailedPrecondition("the file is being deleted".into())) }
}

/// The answer to a name taken in the target folder (or a folder gone meanwhile), or the error as
/// it is.
fn name_taken(err: sqlx::Error, name: &str) -> FileError {
    if flatrender_kit::db::is_unique_violation(&err, "files_folder_name_key") {
        FileError::AlreadyExists(format!("a file named {name:?} already exists in that folder"))
    } else if tree::is_missing_reference(&err) {
        FileError::NotFound("folder")
    } else {
        err.into()
    }
}

impl FileApi {
    /// `BatchGetFiles`: the reachable files among `ids`, in request order, and the others.
    async fn batch_get(&self, actor: &Actor, ids: &[String]) -> Result<pb::BatchGetFilesResponse> {
        let mut seen = HashSet::new();
        let mut wanted = Vec::new();
        for (index, text) in ids.iter().enumerate() {
            let id = validate::id(&format!("file_ids[{index}]"), text)?;
            if seen.insert(id) {
                wanted.push(id);
            }
        }
        if wanted.is_empty() || wanted.len() > MAX_BATCH {
            return Err(FileError::invalid("file_ids", format!("must hold 1..={MAX_BATCH} distinct ids")));
        }
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {FILE_COLUMNS} FROM file_mgr.files WHERE id = ANY($1)")))
                .bind(&wanted)
                .fetch_all(&self.state.pool)
                .await?;
        let mut found = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let file = FileRecord::from_row(row)?;
            if actor.can_reach(file.tenant_id, file.owner_user_id) {
                found.insert(file.id, file);
            }
        }
        let mut response = pb::BatchGetFilesResponse::default();
        for id in wanted {
            match found.remove(&id) {
                Some(file) => response.files.push(file.to_proto()),
                None => response.missing_ids.push(id.to_string()),
            }
        }
        Ok(response)
    }

    /// `UpdateFile`: renames, moves within the owner's tree, or replaces the metadata.
    async fn change_file(&self, actor: &Actor, req: &pb::UpdateFileRequest) -> Result<FileRecord> {
        let file = req.file.as_ref().ok_or_else(|| FileError::invalid("file", "is required"))?;
        let id = validate::id("file.id", &file.id)?;
        let paths = tree::mask_paths(req.update_mask.as_ref(), &["name", "folder_id", "metadata"])?;
        let masked = |field: &str| paths.iter().any(|path| path == field);
        let name = if masked("name") { Some(validate::name("file.name", &file.name)?) } else { None };
        let folder =
            if masked("folder_id") { Some(validate::optional_id("file.folder_id", &file.folder_id)?) } else { None };
        let metadata =
            if masked("metadata") { Some(validate::metadata("file.metadata", &file.metadata)?) } else { None };
        let mut tx = self.state.pool.begin().await?;
        let current = reachable(&mut *tx, actor, id, Lock::Update).await?;
        require_active(&current)?;
        if let Some(Some(folder_id)) = folder {
            let target = tree::reachable(&mut *tx, actor, folder_id, Lock::Share).await?;
            if Tree::of(&target) != Tree::of_file(&current) {
                return Err(FileError::invalid("file.folder_id", "is a folder of another owner"));
            }
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.files SET name = COALESCE($2, name), metadata = COALESCE($3, metadata),
                    folder_id = CASE WHEN $4 THEN $5 ELSE folder_id END
              WHERE id = $1 RETURNING {FILE_COLUMNS}"
        )))
        .bind(id)
        .bind(name.as_deref())
        .bind(metadata)
        .bind(folder.is_some())
        .bind(folder.flatten())
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| name_taken(err, name.as_deref().unwrap_or(&current.name)))?;
        let updated = FileRecord::from_row(&row)?;
        tx.commit().await?;
        Ok(updated)
    }
}
