//! The file an upload creates (`UploadTarget`), checked the same way for both kinds of upload,
//! and the checks that depend on where it goes (folder, name clash) and on what was asked
//! (the request digest behind idempotency keys).

use std::collections::BTreeMap;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::file::v1 as pb;
use sqlx::{PgExecutor, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::access::Actor;
use crate::error::{FileError, Result};
use crate::model::{FileKind, from_timestamp};
use crate::storage::Sha256Digest;
use crate::validate;

/// A checked `UploadTarget`: who will own the file, where it goes and what it is.
#[derive(Clone, Debug)]
pub(super) struct Target {
    /// Tenant the file belongs to.
    pub tenant: Uuid,
    /// Owning user; `None` for tenant-owned.
    pub owner: Option<Uuid>,
    /// Destination folder; `None` for the owner's root.
    pub folder: Option<Uuid>,
    /// File name.
    pub name: String,
    /// Kind (UNSPECIFIED became OTHER).
    pub kind: FileKind,
    /// The client's MIME hint, recorded only.
    pub content_type_hint: Option<String>,
    /// Client metadata as stored (a JSON object of strings).
    pub metadata: serde_json::Value,
    /// Whether the file counts towards quotas (always for people's uploads).
    pub counts_toward_quota: bool,
    /// Pinned from the start (services only).
    pub pinned: bool,
    /// Retained until (services only).
    pub retained_until: Option<OffsetDateTime>,
    /// The service recorded as `source_service` (and `retained_by` when protected).
    pub service: ServiceName,
}

impl Target {
    /// Checks `target` (the request field `prefix`) for `actor`: fields, roles, and that the
    /// folder exists, is reachable and belongs to the file's owner.
    pub async fn check(
        pool: impl PgExecutor<'_>,
        actor: &Actor,
        prefix: &str,
        target: Option<&pb::UploadTarget>,
    ) -> Result<Self> {
        let field = |name: &str| format!("{prefix}.{name}");
        let Some(target) = target else {
            return Err(FileError::invalid(prefix, "is required"));
        };
        let name = validate::name(&field("name"), &target.name)?;
        let kind = FileKind::from_proto(&field("kind"), target.kind)?.unwrap_or(FileKind::Other);
        let content_type_hint = validate::content_type_hint(&field("content_type_hint"), &target.content_type_hint)?;
        let metadata = validate::metadata(&field("metadata"), &target.metadata)?;
        let retained_until =
            target.retained_until.as_ref().map(|at| from_timestamp(&field("retained_until"), at)).transpose()?;
        if !actor.is_service() && (target.counts_toward_quota.is_some() || target.pinned || retained_until.is_some()) {
            return Err(FileError::PermissionDenied(format!(
                "only services may set {prefix}.counts_toward_quota, {prefix}.pinned or {prefix}.retained_until"
            )));
        }
        let tenant = actor.tenant(&field("tenant_id"), &target.tenant_id)?;
        let tenant_owned = actor.is_service() && target.owner_user_id.is_empty();
        let owner = actor.owner(&field("owner_user_id"), &target.owner_user_id, tenant_owned)?;
        if !actor.can_reach(tenant, owner) {
            return Err(FileError::NotFound("owner"));
        }
        let folder = validate::optional_id(&field("folder_id"), &target.folder_id)?;
        if let Some(folder) = folder {
            check_folder(pool, actor, &field("folder_id"), folder, tenant, owner).await?;
        }
        Ok(Self {
            tenant,
            owner,
            folder,
            name,
            kind,
            content_type_hint,
            metadata,
            counts_toward_quota: target.counts_toward_quota.unwrap_or(true),
            pinned: target.pinned,
            retained_until,
            service: actor.source_service(),
        })
    }

    /// The service that protects the file, when it is pinned or retained.
    pub fn retained_by(&self) -> Option<&'static str> {
        (self.pinned || self.retained_until.is_some()).then(|| self.service.as_str())
    }

    /// A digest of everything that makes `operation` for `actor` this request (`extra` adds the
    /// fields beyond the target), stored with an idempotency key so that the same key reused
    /// for a different request (or by another caller) is told apart.
    pub fn request_digest(&self, actor: &Actor, operation: &str, extra: serde_json::Value) -> Sha256Digest {
        // Sorted, so the same metadata always hashes the same whatever the map's order.
        let metadata: BTreeMap<&str, &str> = self
            .metadata
            .as_object()
            .map(|object| object.iter().filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))).collect())
            .unwrap_or_default();
        let canonical = serde_json::json!([
            operation,
            format!("{actor:?}"),
            self.tenant,
            self.owner,
            self.folder,
            self.name,
            self.kind.as_str(),
            self.content_type_hint,
            metadata,
            self.counts_toward_quota,
            self.pinned,
            self.retained_until.map(|at| at.unix_timestamp_nanos().to_string()),
            extra,
        ]);
        Sha256Digest::of(canonical.to_string().as_bytes())
    }
}

/// `folder` must exist, be reachable by `actor`, and belong to the file's tenant and owner.
async fn check_folder(
    pool: impl PgExecutor<'_>,
    actor: &Actor,
    field: &str,
    folder: Uuid,
    tenant: Uuid,
    owner: Option<Uuid>,
) -> Result<()> {
    let row = sqlx::query("SELECT tenant_id, owner_user_id FROM file_mgr.folders WHERE id = $1")
        .bind(folder)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Err(FileError::NotFound("folder"));
    };
    let (folder_tenant, folder_owner): (Uuid, Option<Uuid>) =
        (row.try_get("tenant_id")?, row.try_get("owner_user_id")?);
    // Another tenant's folder does not exist for this call, like any unreachable one.
    if folder_tenant != tenant || !actor.can_reach(folder_tenant, folder_owner) {
        return Err(FileError::NotFound("folder"));
    }
    if folder_owner != owner {
        return Err(FileError::invalid(field, "must be a folder of the file's owner"));
    }
    Ok(())
}

/// `ALREADY_EXISTS` when `folder` already holds an active file called `name` (root-level files
/// may share names, as the `files_folder_name_key` index allows).
pub(super) async fn ensure_name_free(pool: impl PgExecutor<'_>, folder: Option<Uuid>, name: &str) -> Result<()> {
    let Some(folder) = folder else {
        return Ok(());
    };
    let taken: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM file_mgr.files WHERE folder_id = $1 AND name = $2 AND state = 'active')",
    )
    .bind(folder)
    .bind(name)
    .fetch_one(pool)
    .await?;
    if taken { Err(name_taken(name)) } else { Ok(()) }
}

/// The error of a name clash in the destination folder.
pub(super) fn name_taken(name: &str) -> FileError {
    FileError::AlreadyExists(format!("a file named {name:?} already exists in the folder"))
}

/// The error of an idempotency key reused for another request.
pub(super) fn key_reused() -> FileError {
    FileError::AlreadyExists("idempotency_key: already used for a different request".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(metadata: serde_json::Value) -> Target {
        Target {
            tenant: Uuid::from_u128(1),
            owner: Some(Uuid::from_u128(2)),
            folder: None,
            name: "a.bin".into(),
            kind: FileKind::Other,
            content_type_hint: None,
            metadata,
            counts_toward_quota: true,
            pinned: false,
            retained_until: None,
            service: ServiceName::File,
        }
    }

    #[test]
    fn the_request_digest_tells_requests_and_callers_apart() {
        let actor = Actor::User { tenant: Uuid::from_u128(1), user: Uuid::from_u128(2) };
        let extra = || serde_json::json!([10]);
        let mut forwards = serde_json::Map::new();
        forwards.insert("a".into(), "1".into());
        forwards.insert("b".into(), "2".into());
        let mut backwards = serde_json::Map::new();
        backwards.insert("b".into(), "2".into());
        backwards.insert("a".into(), "1".into());
        let one = target(forwards.into()).request_digest(&actor, "UploadFile", extra());
        assert_eq!(one, target(backwards.into()).request_digest(&actor, "UploadFile", extra()));

        let plain = target(serde_json::json!({}));
        let base = plain.request_digest(&actor, "UploadFile", extra());
        assert_ne!(base, one);
        assert_ne!(base, plain.request_digest(&actor, "StartUploadSession", extra()));
        assert_ne!(base, plain.request_digest(&actor, "UploadFile", serde_json::json!([11])));
        let colleague = Actor::User { tenant: Uuid::from_u128(1), user: Uuid::from_u128(3) };
        assert_ne!(base, plain.request_digest(&colleague, "UploadFile", extra()));
        let renamed = Target { name: "b.bin".into(), ..plain.clone() };
        assert_ne!(base, renamed.request_digest(&actor, "UploadFile", extra()));
    }
}
