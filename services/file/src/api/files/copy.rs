//! `CopyFile`: a server-side copy, charged to its owner's quota, idempotent with a key.
//!
//! A copy the quota has no room for is refused before anything is copied (read without a lock).
//! Otherwise the object is copied first (inside the backend), then one transaction charges the
//! quota (the authority: room may have gone meanwhile), inserts the row and writes the
//! `FileUploaded` event. Whatever fails after the object copy deletes the copied object again,
//! so a failed call leaves nothing behind.

use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::{PgTransaction, Row};
use uuid::Uuid;

use super::super::folders::tree::{self, Lock, Tree};
use super::{reachable, require_active};
use crate::FileApi;
use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::events;
use crate::ledger::{Exceeded, Refusal};
use crate::model::{FILE_COLUMNS, FileKind, FileRecord};
use crate::storage::{ObjectKey, Sha256Digest};
use crate::validate::{self, MAX_NAME_CHARS};

/// How often a generated " (copy N)" name is tried again when a concurrent call took it.
const NAME_ATTEMPTS: usize = 5;

/// A copy about to be stored.
struct Copy {
    id: Uuid,
    tree: Tree,
    folder: Option<Uuid>,
    /// The name asked for; `None` for the source's, made unique.
    name: Option<String>,
    kind: FileKind,
    counts_toward_quota: bool,
    /// The backend the object is stored in (`storage_backend`).
    backend: &'static str,
    idempotency_key: Option<String>,
    request_sha256: Sha256Digest,
}

/// Why storing the copy's row failed.
enum Failure {
    /// The owner's or the tenant's quota has no room.
    Quota(Exceeded),
    /// A concurrent call with the same idempotency key stored its copy first.
    KeyTaken,
    /// Anything else.
    Error(FileError),
}

impl From<FileError> for Failure {
    fn from(err: FileError) -> Self {
        Self::Error(err)
    }
}

impl From<sqlx::Error> for Failure {
    fn from(err: sqlx::Error) -> Self {
        Self::Error(err.into())
    }
}

impl FileApi {
    /// `CopyFile` for `actor`.
    pub(super) async fn copy_file_as(&self, actor: &Actor, req: &pb::CopyFileRequest) -> Result<FileRecord> {
        let source_id = validate::id("file_id", &req.file_id)?;
        let folder = validate::optional_id("folder_id", &req.folder_id)?;
        let name = if req.name.is_empty() { None } else { Some(validate::name("name", &req.name)?) };
        let kind = FileKind::from_proto("kind", req.kind)?;
        let idempotency_key = validate::idempotency_key("idempotency_key", &req.idempotency_key)?;
        let request_sha256 = request_digest(req)?;
        let pool = &self.state.pool;
        // A person's copies are in their tenant: a retry finds its copy even if the source has
        // gone since. A service's tenant is the source's.
        if let (Some(key), Some(tenant)) = (&idempotency_key, actor.home_tenant())
            && let Some(earlier) = self.earlier_copy(actor, tenant, key, request_sha256).await?
        {
            return Ok(earlier);
        }
        let source = reachable(pool, actor, source_id, Lock::None).await?;
        require_active(&source)?;
        let owner = match actor {
            Actor::Service(_) if req.owner_user_id.is_empty() => source.owner_user_id,
            Actor::Service(_) => Some(validate::id("owner_user_id", &req.owner_user_id)?),
            _ => actor.owner("owner_user_id", &req.owner_user_id, false)?,
        };
        let tree = Tree { tenant: source.tenant_id, owner };
        if let Some(key) = &idempotency_key
            && let Some(earlier) = self.earlier_copy(actor, tree.tenant, key, request_sha256).await?
        {
            return Ok(earlier);
        }
        if let Some(id) = folder {
            let target = tree::reachable(pool, actor, id, Lock::None).await?;
            if Tree::of(&target) != tree {
                return Err(FileError::invalid("folder_id", "is not a folder of the copy's owner"));
            }
        }
        let copy = Copy {
            id: Uuid::new_v4(),
            tree,
            folder,
            name,
            kind: kind.unwrap_or(source.kind),
            // A person's copy is theirs and counts; a service's counts when its source did.
            counts_toward_quota: source.counts_toward_quota || !actor.is_service(),
            backend: self.state.storage.backend().as_str(),
            idempotency_key,
            request_sha256,
        };
        if copy.counts_toward_quota {
            self.state.ledger.precheck(pool, tree.tenant, tree.owner, source.size).await?;
        }
        let target = ObjectKey::file(tree.tenant, copy.id);
        self.state.storage.copy(&source.object_key()?, &target).await?;
        let stored = self.store_copy(actor, &source, &copy).await;
        if stored.is_err()
            && let Err(error) = self.state.storage.delete(&target).await
        {
            tracing::warn!(%error, key = %target, "the object of a failed copy is left for cleanup");
        }
        match stored {
            Ok(file) => Ok(file),
            Err(Failure::Quota(exceeded)) => Err(self.state.ledger.refuse(pool, exceeded).await),
            Err(Failure::KeyTaken) => {
                let key = copy.idempotency_key.as_deref().unwrap_or_default();
                let earlier = self.earlier_copy(actor, tree.tenant, key, request_sha256).await?;
                earlier.ok_or_else(|| FileError::AlreadyExists("idempotency_key: is already in use".into()))
            }
            Err(Failure::Error(err)) => Err(err),
        }
    }

    /// The copy an earlier call with idempotency `key` made when it was the same request;
    /// `ALREADY_EXISTS` when the key was used for anything else.
    async fn earlier_copy(
        &self,
        actor: &Actor,
        tenant: Uuid,
        key: &str,
        request_sha256: Sha256Digest,
    ) -> Result<Option<FileRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS}, request_sha256 FROM file_mgr.files WHERE tenant_id = $1 AND idempotency_key = $2"
        )))
        .bind(tenant)
        .bind(key)
        .fetch_optional(&self.state.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let file = FileRecord::from_row(&row)?;
        let digest: Option<Vec<u8>> = row.try_get("request_sha256")?;
        let same = digest.as_deref() == Some(request_sha256.as_bytes().as_slice());
        if same && actor.can_reach(file.tenant_id, file.owner_user_id) {
            Ok(Some(file))
        } else {
            Err(FileError::AlreadyExists("idempotency_key: was already used for a different request".into()))
        }
    }

    /// Charges the quota, inserts the row and writes the event, in one transaction.
    async fn store_copy(&self, actor: &Actor, source: &FileRecord, copy: &Copy) -> Result<FileRecord, Failure> {
        let mut tx = self.state.pool.begin().await?;
        if copy.counts_toward_quota {
            match self.state.ledger.charge(&mut tx, copy.tree.tenant, copy.tree.owner, source.size).await {
                Ok(()) => {}
                Err(Refusal::Exceeded(exceeded)) => return Err(Failure::Quota(exceeded)),
                Err(Refusal::Failed(err)) => return Err(Failure::Error(err)),
            }
        }
        let mut file = None;
        for _ in 0..NAME_ATTEMPTS {
            let name = match &copy.name {
                Some(name) => name.clone(),
                None => free_name(&mut tx, copy, &source.name).await?,
            };
            file = insert(&mut tx, actor, source, copy, &name).await?;
            if file.is_some() {
                break;
            }
            if copy.name.is_some() {
                return Err(
                    FileError::AlreadyExists(format!("a file named {name:?} already exists in that folder")).into()
                );
            }
        }
        let file = file.ok_or_else(|| FileError::AlreadyExists("no free name for the copy; name it".into()))?;
        events::file_uploaded(&mut tx, &file).await?;
        tx.commit().await?;
        Ok(file)
    }
}

/// The SHA-256 of the encoded request, kept with an idempotency key.
fn request_digest(req: &pb::CopyFileRequest) -> Result<Sha256Digest> {
    let encoded = prost_types::Any::from_msg(req)
        .map_err(|e| FileError::Kit(flatrender_kit::Error::Io(std::io::Error::other(e))))?;
    Ok(Sha256Digest::of(&encoded.value))
}

/// Inserts the copy's row named `name`; `None` when the folder has an active file of that name.
async fn insert(
    tx: &mut PgTransaction<'_>,
    actor: &Actor,
    source: &FileRecord,
    copy: &Copy,
    name: &str,
) -> Result<Option<FileRecord>, Failure> {
    let key = ObjectKey::file(copy.tree.tenant, copy.id);
    let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO file_mgr.files (id, tenant_id, owner_user_id, folder_id, name, kind, size_bytes, sha256,
             content_type, storage_backend, storage_key, counts_toward_quota, source_service, metadata,
             idempotency_key, request_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (folder_id, name) WHERE folder_id IS NOT NULL AND state = 'active' DO NOTHING
         RETURNING {FILE_COLUMNS}"
    )))
    .bind(copy.id)
    .bind(copy.tree.tenant)
    .bind(copy.tree.owner)
    .bind(copy.folder)
    .bind(name)
    .bind(copy.kind.as_str())
    .bind(i64::try_from(source.size).unwrap_or(i64::MAX))
    .bind(source.sha256.as_bytes().as_slice())
    .bind(&source.content_type)
    .bind(copy.backend)
    .bind(key.as_str())
    .bind(copy.counts_toward_quota)
    .bind(actor.source_service().as_str())
    .bind(&source.metadata)
    .bind(copy.idempotency_key.as_deref())
    .bind(copy.request_sha256.as_bytes().as_slice())
    .fetch_optional(&mut **tx)
    .await;
    match inserted {
        Ok(row) => Ok(row.as_ref().map(FileRecord::from_row).transpose()?),
        Err(err) if flatrender_kit::db::is_unique_violation(&err, "files_tenant_idempotency_key") => {
            Err(Failure::KeyTaken)
        }
        Err(err) if tree::is_missing_reference(&err) => Err(FileError::NotFound("folder").into()),
        Err(err) => Err(err.into()),
    }
}

/// `base`, or `base (copy N)` with the smallest N free, among the active files where the copy
/// goes (in a folder names are unique; at the root a copy still gets a name of its own).
async fn free_name(tx: &mut PgTransaction<'_>, copy: &Copy, base: &str) -> Result<String> {
    let taken: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM file_mgr.files
          WHERE tenant_id = $1 AND owner_user_id IS NOT DISTINCT FROM $2 AND folder_id IS NOT DISTINCT FROM $3
            AND state = 'active' AND (name = $4 OR name LIKE $5)",
    )
    .bind(copy.tree.tenant)
    .bind(copy.tree.owner)
    .bind(copy.folder)
    .bind(base)
    .bind(format!("{} (copy %)", validate::like_escape(base)))
    .fetch_all(&mut **tx)
    .await?;
    let taken: std::collections::HashSet<String> = taken.into_iter().collect();
    if !taken.contains(base) {
        return Ok(base.to_owned());
    }
    let mut n = 1_usize;
    loop {
        let candidate = copy_name(base, n);
        if !taken.contains(&candidate) {
            return Ok(candidate);
        }
        n += 1;
    }
}

/// `base (copy n)`, with `base` shortened so the whole stays within the name limit.
fn copy_name(base: &str, n: usize) -> String {
    let suffix = format!(" (copy {n})");
    let room = MAX_NAME_CHARS.saturating_sub(suffix.chars().count());
    let kept: String = base.chars().take(room).collect();
    format!("{kept}{suffix}")
}
