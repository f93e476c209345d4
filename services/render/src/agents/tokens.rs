//! One-time join tokens (`render.node_enrollment_tokens`): NodeAdminService's
//! CreateEnrollmentToken, RevokeEnrollmentToken and ListEnrollmentTokens. Platform admins only;
//! the secret is shown once, only its SHA-256 is stored.

use std::time::Duration;

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{credentials, facts};
use crate::api::page::{self, NewestFirst};
use crate::error::{RenderError, Result};
use crate::queue::wire::{id_text, timestamp};

/// Lifetime of a token when the request sets none.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
const MIN_TTL: Duration = Duration::from_secs(60);
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

const COLUMNS: &str = "id, description, tags, expires_at, used_at, used_by_node_id, revoked_at, created_by_user_id, \
                       created_at, (CASE WHEN revoked_at IS NOT NULL THEN 4 WHEN used_at IS NOT NULL THEN 2 \
                       WHEN expires_at <= now() THEN 3 ELSE 1 END) AS token_state";

fn token_of(row: &PgRow) -> sqlx::Result<pb::EnrollmentToken> {
    let ts = |name: &str| -> sqlx::Result<Option<prost_types::Timestamp>> {
        Ok(row.try_get::<Option<OffsetDateTime>, _>(name)?.map(timestamp))
    };
    Ok(pb::EnrollmentToken {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        description: row.try_get::<Option<String>, _>("description")?.unwrap_or_default(),
        state: row.try_get::<i32, _>("token_state")?,
        tags: row.try_get("tags")?,
        expires_at: ts("expires_at")?,
        used_at: ts("used_at")?,
        used_by_node_id: id_text(row.try_get("used_by_node_id")?),
        revoked_at: ts("revoked_at")?,
        created_by_user_id: id_text(row.try_get("created_by_user_id")?),
        created_at: ts("created_at")?,
    })
}

fn ttl(value: Option<&prost_types::Duration>) -> Result<Duration> {
    let Some(value) = value else { return Ok(DEFAULT_TTL) };
    let ttl = u64::try_from(value.seconds)
        .ok()
        .filter(|_| value.nanos >= 0)
        .map(|s| Duration::new(s, value.nanos as u32))
        .ok_or_else(|| RenderError::invalid("ttl", "must be positive"))?;
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(RenderError::invalid("ttl", "must be 1 minute..=30 days"));
    }
    Ok(ttl)
}

/// Creates a token; the response holds its secret.
pub async fn create(
    pool: &PgPool,
    created_by: Uuid,
    request: &pb::CreateEnrollmentTokenRequest,
) -> Result<pb::CreateEnrollmentTokenResponse> {
    let description = request.description.trim();
    if description.chars().count() > 200 {
        return Err(RenderError::invalid("description", "at most 200 characters"));
    }
    let ttl = ttl(request.ttl.as_ref())?;
    let tags = facts::tags("tags", &request.tags)?;
    let secret = credentials::new_join_token();
    let sql = format!(
        "INSERT INTO render.node_enrollment_tokens (token_hash, description, tags, expires_at, created_by_user_id)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
      RETURNING {COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(credentials::hash(&secret).as_slice())
        .bind(Some(description).filter(|d| !d.is_empty()))
        .bind(&tags)
        .bind(ttl.as_secs_f64())
        .bind(created_by)
        .fetch_one(pool)
        .await?;
    tracing::info!(token = %row.try_get::<Uuid, _>("id")?, by = %created_by, "enrollment token created");
    Ok(pb::CreateEnrollmentTokenResponse { token: Some(token_of(&row)?), secret })
}

/// Revokes an unused token (idempotent). A used token cannot be revoked: the node it enrolled
/// keeps working until it is deleted.
pub async fn revoke(pool: &PgPool, by: Uuid, token_id: &str) -> Result<pb::RevokeEnrollmentTokenResponse> {
    let id = Uuid::try_parse(token_id).map_err(|_| RenderError::invalid("token_id", "must be a UUID"))?;
    let sql = format!(
        "UPDATE render.node_enrollment_tokens SET revoked_at = coalesce(revoked_at, now())
          WHERE id = $1 AND used_at IS NULL
      RETURNING {COLUMNS}"
    );
    if let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? {
        tracing::info!(token = %id, %by, "enrollment token revoked");
        return Ok(pb::RevokeEnrollmentTokenResponse { token: Some(token_of(&row)?) });
    }
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM render.node_enrollment_tokens WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await?;
    if exists {
        Err(RenderError::FailedPrecondition("the token was used; delete the node it enrolled instead".into()))
    } else {
        Err(RenderError::NotFound("enrollment token"))
    }
}

/// Tokens, newest first, optionally of some states.
pub async fn list(
    pool: &PgPool,
    request: &pb::ListEnrollmentTokensRequest,
) -> Result<pb::ListEnrollmentTokensResponse> {
    let size = page::size(request.page.as_ref())?;
    let mut states: Vec<i32> = Vec::new();
    for (i, state) in request.states.iter().enumerate() {
        match pb::EnrollmentTokenState::try_from(*state) {
            Ok(pb::EnrollmentTokenState::Unspecified) | Err(_) => {
                return Err(RenderError::invalid(format!("states[{i}]"), "must be ACTIVE, USED, EXPIRED or REVOKED"));
            }
            Ok(s) => states.push(s as i32),
        }
    }
    states.sort_unstable();
    states.dedup();
    let print = page::fingerprint(&[&states]);
    let after: Option<NewestFirst> = page::decode(&print, page::token(request.page.as_ref()))?;
    let after_time = after.as_ref().map(page::position_time).transpose()?;
    let sql = format!(
        "SELECT * FROM (SELECT {COLUMNS} FROM render.node_enrollment_tokens) t
          WHERE (cardinality($1::int[]) = 0 OR token_state = ANY($1))
            AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
          ORDER BY created_at DESC, id DESC
          LIMIT $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&states)
        .bind(after_time)
        .bind(after.map(|key| key.1))
        .bind(size + 1)
        .fetch_all(pool)
        .await?;
    let mut listed = Vec::with_capacity(rows.len());
    for row in &rows {
        listed.push((token_of(row)?, page::newest_first(row.try_get("created_at")?, row.try_get("id")?)));
    }
    let next_page_token = page::next_token(&mut listed, size, |(_, key)| page::encode(&print, key));
    let tokens = listed.into_iter().map(|(token, _)| token).collect();
    Ok(pb::ListEnrollmentTokensResponse { tokens, page: Some(common_pb::PageResponse { next_page_token }) })
}
