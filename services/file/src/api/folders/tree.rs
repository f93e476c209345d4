//! Folder trees: whose tree a call acts in, reachable folders, paths and depths, and the lock that
//! keeps a tree's shape still while it changes. Files use it too (folders they live in).

use sqlx::{PgExecutor, PgTransaction, Row};
use uuid::Uuid;

use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FOLDER_COLUMNS, FileRecord, FolderRecord};

/// The deepest a folder may be: a folder at the root is at depth 1.
pub(crate) const MAX_DEPTH: usize = 32;

/// A bound on every walk up or down a tree, so rows that were somehow made into a loop can never
/// make a query run forever.
const WALK_LIMIT: i32 = 2 * MAX_DEPTH as i32;

/// One owner's tree: a user's, or the tenant's own (owner `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Tree {
    /// Tenant.
    pub tenant: Uuid,
    /// Owning user; `None` for the tenant's tree.
    pub owner: Option<Uuid>,
}

impl Tree {
    /// The tree `folder` is in.
    pub(crate) fn of(folder: &FolderRecord) -> Self {
        Self { tenant: folder.tenant_id, owner: folder.owner_user_id }
    }

    /// The tree of `file`'s owner.
    pub(crate) fn of_file(file: &FileRecord) -> Self {
        Self { tenant: file.tenant_id, owner: file.owner_user_id }
    }
}

/// The request fields that name a tree.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Scope<'a> {
    /// The `tenant_id` field (name, value), for requests that have one.
    pub tenant: Option<(&'a str, &'a str)>,
    /// The `owner_user_id` field (name, value).
    pub owner: (&'a str, &'a str),
    /// The `tenant_owned` flag.
    pub tenant_owned: bool,
    /// The name of the field of the folder the call starts from (`parent_id`, `folder_id`).
    pub anchor_field: &'a str,
}

/// Whose tree a call acts in. With a folder to start from (`anchor`, already found reachable),
/// its tree, which any tenant or owner the request names must agree with; without one, the tree
/// the caller names (see [`Actor::tenant`] and [`Actor::owner`]).
pub(crate) fn resolve(actor: &Actor, scope: Scope<'_>, anchor: Option<&FolderRecord>) -> Result<Tree> {
    let (owner_field, owner_value) = scope.owner;
    let owner_named = !owner_value.is_empty() || scope.tenant_owned;
    if let Some(folder) = anchor {
        if let Some((field, value)) = scope.tenant.filter(|(_, value)| !value.is_empty())
            && actor.tenant(field, value)? != folder.tenant_id
        {
            return Err(FileError::NotFound("folder"));
        }
        if owner_named && actor.owner(owner_field, owner_value, scope.tenant_owned)? != folder.owner_user_id {
            return Err(FileError::invalid(scope.anchor_field, "is a folder of another owner"));
        }
        return Ok(Tree::of(folder));
    }
    let tenant = match scope.tenant {
        Some((field, value)) => actor.tenant(field, value)?,
        None if actor.is_service() => {
            return Err(FileError::invalid(
                scope.anchor_field,
                "is required with a service credential (the request names no tenant)",
            ));
        }
        None => actor.tenant("tenant_id", "")?,
    };
    let owner = actor.owner(owner_field, owner_value, scope.tenant_owned)?;
    Ok(Tree { tenant, owner })
}

/// How a row is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lock {
    /// Plainly.
    None,
    /// `FOR SHARE`: it may not change or go away until the transaction ends.
    Share,
    /// `FOR UPDATE`: the transaction is about to change it.
    Update,
}

impl Lock {
    /// The SQL clause.
    pub(crate) fn clause(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Share => " FOR SHARE",
            Self::Update => " FOR UPDATE",
        }
    }
}

/// Folder `id` when the caller may reach it; `NOT_FOUND` otherwise.
pub(crate) async fn reachable<'c>(
    executor: impl PgExecutor<'c>,
    actor: &Actor,
    id: Uuid,
    lock: Lock,
) -> Result<FolderRecord> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {FOLDER_COLUMNS} FROM file_mgr.folders WHERE id = $1{}",
        lock.clause()
    )))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    let folder = row.as_ref().map(FolderRecord::from_row).transpose()?;
    folder.filter(|folder| actor.can_reach(folder.tenant_id, folder.owner_user_id)).ok_or(FileError::NotFound("folder"))
}

/// Serialises changes to the shape of `tree` within the transaction: moves and deletions take it
/// `exclusive`, creations shared, so depth and cycle checks hold until commit.
pub(crate) async fn lock(tx: &mut PgTransaction<'_>, tree: Tree, exclusive: bool) -> Result<()> {
    let function = if exclusive { "pg_advisory_xact_lock" } else { "pg_advisory_xact_lock_shared" };
    let owner = tree.owner.map(|owner| owner.to_string()).unwrap_or_default();
    sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {function}(hashtextextended($1, 0))")))
        .bind(format!("file_mgr.folders/{}/{owner}", tree.tenant))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Folder `id` and its ancestors, from the root down to it; `NOT_FOUND` when it is gone.
pub(crate) async fn chain<'c>(executor: impl PgExecutor<'c>, id: Uuid) -> Result<Vec<FolderRecord>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE up AS (
             SELECT folders.*, 0 AS hops FROM file_mgr.folders WHERE id = $1
             UNION ALL
             SELECT f.*, up.hops + 1 FROM file_mgr.folders f JOIN up ON f.id = up.parent_id WHERE up.hops < $2
         )
         SELECT {FOLDER_COLUMNS} FROM up ORDER BY hops DESC"
    )))
    .bind(id)
    .bind(WALK_LIMIT)
    .fetch_all(executor)
    .await?;
    let chain = rows.iter().map(FolderRecord::from_row).collect::<sqlx::Result<Vec<_>>>()?;
    if chain.is_empty() { Err(FileError::NotFound("folder")) } else { Ok(chain) }
}

/// The path of the last folder of `chain` (root first), e.g. "/Projects/2026".
pub(crate) fn path(chain: &[FolderRecord]) -> String {
    chain.iter().map(|folder| format!("/{}", folder.name)).collect()
}

/// Folder `id` and every folder beneath it, each with its depth below `id` plus one (`id` is 1),
/// locked `FOR UPDATE`.
pub(crate) async fn lock_subtree(tx: &mut PgTransaction<'_>, id: Uuid) -> Result<Vec<(Uuid, i32)>> {
    let rows = sqlx::query(
        "WITH RECURSIVE down AS (
             SELECT id, 1 AS depth FROM file_mgr.folders WHERE id = $1
             UNION ALL
             SELECT f.id, down.depth + 1 FROM file_mgr.folders f JOIN down ON f.parent_id = down.id
              WHERE down.depth < $2
         )
         SELECT f.id, down.depth FROM file_mgr.folders f JOIN down ON down.id = f.id ORDER BY f.id FOR UPDATE OF f",
    )
    .bind(id)
    .bind(WALK_LIMIT)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter().map(|row| Ok((row.try_get("id")?, row.try_get("depth")?))).collect()
}

/// Whether `err` is a foreign key violation: a folder that a row was to refer to is gone.
pub(crate) fn is_missing_reference(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503"))
}

/// The paths of a field mask, each one of `allowed`; `INVALID_ARGUMENT` on `update_mask` for an
/// empty mask or any other path.
pub(crate) fn mask_paths(mask: Option<&prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|mask| mask.paths.clone()).unwrap_or_default();
    let allowed_list = allowed.join(", ");
    if paths.is_empty() {
        return Err(FileError::invalid("update_mask", format!("must name at least one of: {allowed_list}")));
    }
    if let Some(unknown) = paths.iter().find(|path| !allowed.contains(&path.as_str())) {
        return Err(FileError::invalid("update_mask", format!("unknown path {unknown:?}; allowed: {allowed_list}")));
    }
    Ok(paths)
}
