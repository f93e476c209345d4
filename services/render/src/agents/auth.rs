//! Node credentials on the agent RPCs: `authorization: Bearer frn1.<node id>.<secret>`.
//!
//! The kit's auth layer leaves such a header untouched (it is no JWT); this looks the node up
//! by the credential's SHA-256 and checks the node id inside it. Missing, malformed, unknown or
//! revoked (node deleted) are all UNAUTHENTICATED with one message, so nothing can be probed.

use sqlx::PgPool;
use tonic::metadata::MetadataMap;
use uuid::Uuid;

use super::credentials;
use crate::error::{RenderError, Result};

const INVALID: &str = "invalid node credential";

/// The node id a credential proves, from the request metadata.
pub async fn authenticate(pool: &PgPool, metadata: &MetadataMap) -> Result<Uuid> {
    let credential = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| RenderError::Unauthenticated("this call needs a node credential".into()))?;
    let node =
        credentials::node_of_credential(credential).ok_or_else(|| RenderError::Unauthenticated(INVALID.into()))?;
    let hash = credentials::hash(credential);
    let row: Option<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT id, credential_hash FROM render.nodes WHERE credential_hash = $1 AND deleted_at IS NULL",
    )
    .bind(hash.as_slice())
    .fetch_optional(pool)
    .await?;
    match row {
        Some((id, stored)) if id == node && credentials::constant_time_eq(&stored, &hash) => Ok(id),
        _ => Err(RenderError::Unauthenticated(INVALID.into())),
    }
}
