//! Folder trees (`FolderService`).
//!
//! Every change to a tree's shape runs in one transaction under the tree's lock
//! ([`tree::lock`]): creations share it, moves and deletions hold it alone, so the depth limit and
//! the cycle check cannot be raced.

pub(super) mod delete;
mod list;
pub(crate) mod tree;

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::Row;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use self::tree::{Lock, MAX_DEPTH, Scope, Tree};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FOLDER_COLUMNS, FolderRecord};
use crate::validate;

#[tonic::async_trait]
impl pb::folder_service_server::FolderService for FileApi {
    async fn create_folder(
        &self,
        request: Request<pb::CreateFolderRequest>,
    ) -> Result<Response<pb::CreateFolderResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let folder = self.insert_folder(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::CreateFolderResponse { folder: Some(folder) }))
    }

    async fn get_folder(
        &self,
        request: Request<pb::GetFolderRequest>,
    ) -> Result<Response<pb::GetFolderResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let id = validate::id("folder_id", &request.get_ref().folder_id)?;
        Ok(Response::new(self.describe_folder(&actor, id).await?))
    }

    async fn list_folders(
        &self,
        request: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        Ok(Response::new(self.folder_page(&actor, request.get_ref()).await?))
    }

    async fn update_folder(
        &self,
        request: Request<pb::UpdateFolderRequest>,
    ) -> Result<Response<pb::UpdateFolderResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let folder = self.change_folder(&actor, request.get_ref()).await?;
        Ok(Response::new(pb::UpdateFolderResponse { folder: Some(folder) }))
    }

    async fn delete_folder(
        &self,
        request: Request<pb::DeleteFolderRequest>,
    ) -> Result<Response<pb::DeleteFolderResponse>, Status> {
        let actor = Actor::from_request(&request)?;
        let id = validate::id("folder_id", &request.get_ref().folder_id)?;
        Ok(Response::new(self.remove_folder(&actor, id, request.get_ref().recursive).await?))
    }
}

/// The refusal of a folder deeper than [`MAX_DEPTH`].
fn too_deep() -> FileError {
    FileError::FailedPrecondition(format!("folders may be at most {MAX_DEPTH} levels deep"))
}

/// The answer to a name taken among the siblings, or the error as it is.
fn name_taken(err: sqlx::Error, name: &str) -> FileError {
    if flatrender_kit::db::is_unique_violation(&err, "folders_sibling_name_key") {
        FileError::AlreadyExists(format!("a folder named {name:?} already exists there"))
    } else if tree::is_missing_reference(&err) {
        FileError::NotFound("folder")
    } else {
        err.into()
    }
}

impl FileApi {
    async fn insert_folder(&self, actor: &Actor, req: &pb::CreateFolderRequest) -> Result<pb::Folder> {
        let name = validate::name("name", &req.name)?;
        let parent_id = validate::optional_id("parent_id", &req.parent_id)?;
        let mut tx = self.state.pool.begin().await?;
        let parent = match parent_id {
            Some(id) => Some(tree::reachable(&mut *tx, actor, id, Lock::None).await?),
            None => None,
        };
        let scope = Scope {
            tenant: None,
            owner: ("owner_user_id", &req.owner_user_id),
            tenant_owned: req.tenant_owned,
            anchor_field: "parent_id",
        };
        let tree = tree::resolve(actor, scope, parent.as_ref())?;
        tree::lock(&mut tx, tree, false).await?;
        // Read under the lock: the parent's depth cannot change until commit.
        let mut chain = match parent_id {
            Some(id) => tree::chain(&mut *tx, id).await?,
            None => Vec::new(),
        };
        if chain.len() + 1 > MAX_DEPTH {
            return Err(too_deep());
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO file_mgr.folders (tenant_id, owner_user_id, parent_id, name) VALUES ($1, $2, $3, $4)
             RETURNING {FOLDER_COLUMNS}"
        )))
        .bind(tree.tenant)
        .bind(tree.owner)
        .bind(parent_id)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| name_taken(err, &name))?;
        let folder = FolderRecord::from_row(&row)?;
        tx.commit().await?;
        chain.push(folder);
        Ok(folder_view(&chain))
    }

    async fn describe_folder(&self, actor: &Actor, id: Uuid) -> Result<pb::GetFolderResponse> {
        let pool = &self.state.pool;
        tree::reachable(pool, actor, id, Lock::None).await?;
        let chain = tree::chain(pool, id).await?;
        let counts = sqlx::query(
            "SELECT (SELECT count(*) FROM file_mgr.files WHERE folder_id = $1 AND state = 'active') AS files,
                    (SELECT count(*) FROM file_mgr.folders WHERE parent_id = $1) AS folders",
        )
        .bind(id)
        .fetch_one(pool)
        .await?;
        let count = |column: &str| counts.try_get::<i64, _>(column).map(|n| u64::try_from(n).unwrap_or(0));
        let ancestors = (0..chain.len().saturating_sub(1)).map(|end| folder_view(&chain[..=end])).collect();
        Ok(pb::GetFolderResponse {
            folder: Some(folder_view(&chain)),
            ancestors,
            file_count: count("files")?,
            folder_count: count("folders")?,
        })
    }

    async fn change_folder(&self, actor: &Actor, req: &pb::UpdateFolderRequest) -> Result<pb::Folder> {
        let folder = req.folder.as_ref().ok_or_else(|| FileError::invalid("folder", "is required"))?;
        let id = validate::id("folder.id", &folder.id)?;
        let paths = tree::mask_paths(req.update_mask.as_ref(), &["name", "parent_id"])?;
        let masked = |field: &str| paths.iter().any(|path| path == field);
        let name = if masked("name") { Some(validate::name("folder.name", &folder.name)?) } else { None };
        let new_parent = if masked("parent_id") {
            Some(validate::optional_id("folder.parent_id", &folder.parent_id)?)
        } else {
            None
        };
        let mut tx = self.state.pool.begin().await?;
        let current = tree::reachable(&mut *tx, actor, id, Lock::None).await?;
        let tree = Tree::of(&current);
        tree::lock(&mut tx, tree, new_parent.is_some()).await?;
        let current = tree::reachable(&mut *tx, actor, id, Lock::Update).await?;
        if let Some(parent) = new_parent {
            self.check_folder_move(&mut tx, actor, &current, parent).await?;
        }
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE file_mgr.folders SET name = COALESCE($2, name), parent_id = CASE WHEN $3 THEN $4 ELSE parent_id END
              WHERE id = $1 RETURNING {FOLDER_COLUMNS}"
        )))
        .bind(id)
        .bind(name.as_deref())
        .bind(new_parent.is_some())
        .bind(new_parent.flatten())
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| name_taken(err, name.as_deref().unwrap_or(&current.name)))?;
        let updated = FolderRecord::from_row(&row)?;
        let chain = tree::chain(&mut *tx, updated.id).await?;
        tx.commit().await?;
        Ok(folder_view(&chain))
    }

    /// Whether `folder` may move under `parent` (`None`: the root) of the same tree, with the tree
    /// locked: not into itself or a descendant, and no deeper than [`MAX_DEPTH`] with everything
    /// beneath it.
    async fn check_folder_move(
        &self,
        tx: &mut sqlx::PgTransaction<'_>,
        actor: &Actor,
        folder: &FolderRecord,
        parent: Option<Uuid>,
    ) -> Result<()> {
        let cycle = || FileError::invalid("parent_id", "would create a cycle");
        let parent_depth = match parent {
            None => 0,
            Some(parent) if parent == folder.id => return Err(cycle()),
            Some(parent) => {
                let target = tree::reachable(&mut **tx, actor, parent, Lock::Share).await?;
                if Tree::of(&target) != Tree::of(folder) {
                    return Err(FileError::invalid("folder.parent_id", "is a folder of another owner"));
                }
                let chain = tree::chain(&mut **tx, parent).await?;
                if chain.iter().any(|ancestor| ancestor.id == folder.id) {
                    return Err(cycle());
                }
                chain.len()
            }
        };
        let subtree = tree::lock_subtree(tx, folder.id).await?;
        let height = subtree.iter().map(|(_, depth)| usize::try_from(*depth).unwrap_or(0)).max().unwrap_or(1);
        if parent_depth + height > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(())
    }
}

/// The API's view of the last folder of `chain` (root first).
fn folder_view(chain: &[FolderRecord]) -> pb::Folder {
    match chain.last() {
        Some(folder) => folder.to_proto(tree::path(chain)),
        None => pb::Folder::default(),
    }
}
