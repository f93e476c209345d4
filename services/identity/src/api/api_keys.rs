//! `ApiKeyService`: tenant API keys for resellers' servers, and their exchange for tokens.
//!
//! A key is `<prefix>.<secret>`: the prefix (`fr_` and 12 base62 characters) is stored and
//! shown, the secret (256 random bits) only as its SHA-256. The gateway exchanges a presented
//! key for a five-minute tenant-scoped access token carrying the key's scopes.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::auth::{AccessClaims, Caller, Role};
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::PageResponse;
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use rand::RngExt as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size};
use crate::client::ClientInfo;
use crate::error::{IdentityError, Result};
use crate::service::Identity;
use crate::sessions::{ip_text, unix};
use crate::users::timestamp;
use crate::validate;

/// Active keys a tenant may hold.
const MAX_ACTIVE_KEYS: i64 = 50;
/// Lifetime of the access token an exchange issues.
const KEY_TOKEN_TTL: Duration = Duration::from_secs(300);
/// The scopes in proto order, by their stored names.
const SCOPES: [(pb::ApiKeyScope, &str); 12] = [
    (pb::ApiKeyScope::ContentRead, "content:read"),
    (pb::ApiKeyScope::ContentWrite, "content:write"),
    (pb::ApiKeyScope::ProjectsRead, "projects:read"),
    (pb::ApiKeyScope::ProjectsWrite, "projects:write"),
    (pb::ApiKeyScope::RenderRead, "render:read"),
    (pb::ApiKeyScope::RenderWrite, "render:write"),
    (pb::ApiKeyScope::FilesRead, "files:read"),
    (pb::ApiKeyScope::FilesWrite, "files:write"),
    (pb::ApiKeyScope::UsersRead, "users:read"),
    (pb::ApiKeyScope::UsersWrite, "users:write"),
    (pb::ApiKeyScope::TenantRead, "tenant:read"),
    (pb::ApiKeyScope::TenantWrite, "tenant:write"),
];

type Reply<T> = Result<Response<T>, Status>;

/// A key as stored (never its hash outside this module).
struct KeyRow {
    id: Uuid,
    tenant_id: Uuid,
    name: String,
    prefix: String,
    secret_hash: Vec<u8>,
    scopes: Vec<String>,
    created_by_user_id: Option<Uuid>,
    rate_limit_per_minute: Option<i32>,
    expires_at: Option<OffsetDateTime>,
    revoked_at: Option<OffsetDateTime>,
    last_used_at: Option<OffsetDateTime>,
    last_used_ip: Option<String>,
    created_at: OffsetDateTime,
}

from_row!(KeyRow {
    id,
    tenant_id,
    name,
    prefix,
    secret_hash,
    scopes,
    created_by_user_id,
    rate_limit_per_minute,
    expires_at,
    revoked_at,
    last_used_at,
    last_used_ip,
    created_at
});

const KEY_COLUMNS: &str = "id, tenant_id, name, prefix, secret_hash, scopes, created_by_user_id, rate_limit_per_minute,
    expires_at, revoked_at, last_used_at, host(last_used_ip) AS last_used_ip, created_at";

impl KeyRow {
    fn to_proto(&self) -> pb::ApiKey {
        let now = OffsetDateTime::now_utc();
        let status = if self.revoked_at.is_some() {
            pb::ApiKeyStatus::Revoked
        } else if self.expires_at.is_some_and(|at| at <= now) {
            pb::ApiKeyStatus::Expired
        } else {
            pb::ApiKeyStatus::Active
        };
        pb::ApiKey {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            name: self.name.clone(),
            prefix: self.prefix.clone(),
            scopes: self
                .scopes
                .iter()
                .filter_map(|s| SCOPES.iter().find(|(_, name)| name == s).map(|(scope, _)| *scope as i32))
                .collect(),
            status: status as i32,
            created_by_user_id: self.created_by_user_id.map(|id| id.to_string()).unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            expires_at: self.expires_at.map(timestamp),
            last_used_at: self.last_used_at.map(timestamp),
            last_used_ip: self.last_used_ip.clone().unwrap_or_default(),
            revoked_at: self.revoked_at.map(timestamp),
            rate_limit_per_minute: self.rate_limit_per_minute.and_then(|n| u32::try_from(n).ok()),
        }
    }
}

/// A key a client presented, checked: what the gateway needs to let the call through.
#[derive(Clone, Debug)]
pub struct AuthenticatedKey {
    /// The key, without its secret.
    pub api_key: pb::ApiKey,
    /// The tenant-scoped access token.
    pub access_token: String,
    /// When that token expires.
    pub expires_at: OffsetDateTime,
    /// How long it stays valid from now.
    pub valid_for: Duration,
    /// The key.
    pub key_id: Uuid,
    /// Its tenant.
    pub tenant_id: Uuid,
    /// Its own per-minute limit, if it has one.
    pub rate_limit_per_minute: Option<u32>,
}

impl Identity {
    /// Checks a presented `<prefix>.<secret>` and issues its access token. Every refusal is the
    /// same `UNAUTHENTICATED`, so a caller cannot tell a revoked key from a mistyped one.
    pub async fn authenticate_api_key(&self, presented: &str, client: &ClientInfo) -> Result<AuthenticatedKey> {
        let refused = || IdentityError::unauthenticated("the API key is not valid");
        let (prefix, secret) = presented.trim().split_once('.').ok_or_else(refused)?;
        let plausible = prefix.len() == 15 && prefix.starts_with("fr_") && secret.len() == 43;
        if !plausible {
            return Err(refused());
        }
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM identity.tenant_api_keys k
             WHERE prefix = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
               AND EXISTS (SELECT 1 FROM identity.tenants t WHERE t.id = k.tenant_id AND t.status = 'active')"
        )))
        .bind(prefix)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(refused)?;
        let hash = Sha256::digest(secret.as_bytes());
        if !bool::from(hash.as_slice().ct_eq(&row.secret_hash)) {
            return Err(refused());
        }
        // Recorded at most once a minute per key: the column's precision, and no write per call.
        sqlx::query(
            "UPDATE identity.tenant_api_keys SET last_used_at = now(), last_used_ip = $2::inet
             WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
        )
        .bind(row.id)
        .bind(client.ip.map(ip_text))
        .execute(&self.pool)
        .await?;
        let now = OffsetDateTime::now_utc();
        let expires_at = row.expires_at.map_or(now + KEY_TOKEN_TTL, |end| end.min(now + KEY_TOKEN_TTL));
        let claims = AccessClaims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: row.id,
            tid: row.tenant_id,
            // Scopes, checked per method, decide what the key may do; the role only admits it to
            // the tenant-level calls its scopes name.
            role: Role::TenantAdmin,
            sid: None,
            svc: None,
            akid: Some(row.id),
            scp: Some(row.scopes.join(" ")),
            exp: unix(expires_at),
            nbf: unix(now),
            iat: unix(now),
            jti: Uuid::new_v4(),
        };
        let access_token = self.ring.signer().await?.sign(&claims).map_err(|e| IdentityError::Keys(e.to_string()))?;
        Ok(AuthenticatedKey {
            api_key: row.to_proto(),
            access_token,
            expires_at,
            valid_for: (expires_at - now).try_into().unwrap_or_default(),
            key_id: row.id,
            tenant_id: row.tenant_id,
            rate_limit_per_minute: row.rate_limit_per_minute.and_then(|n| u32::try_from(n).ok()),
        })
    }
}

/// A tenant admin (of `tenant`) or a platform admin; never an API key.
fn admin(request: &Request<impl Sized>) -> Result<Caller, Status> {
    let caller = super::admin(request)?;
    if caller.api_key_id.is_some() {
        return Err(Status::permission_denied("API keys cannot manage API keys"));
    }
    Ok(caller)
}

/// A key id the caller may see: another tenant's key is NOT_FOUND.
async fn visible_key(identity: &Identity, caller: &Caller, id: &str) -> Result<KeyRow> {
    let id = validate::uuid("api_key_id", id)?;
    let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM identity.tenant_api_keys WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&identity.pool)
    .await?;
    match row {
        Some(row) if row.tenant_id == caller.tenant_id || caller.role == Role::PlatformAdmin => Ok(row),
        _ => Err(IdentityError::NotFound("API key")),
    }
}

#[tonic::async_trait]
impl pb::api_key_service_server::ApiKeyService for IdentityApi {
    async fn create_api_key(&self, request: Request<pb::CreateApiKeyRequest>) -> Reply<pb::CreateApiKeyResponse> {
        let caller = admin(&request)?;
        Ok(Response::new(self.create_key(&caller, request.into_inner()).await?))
    }

    async fn get_api_key(&self, request: Request<pb::GetApiKeyRequest>) -> Reply<pb::GetApiKeyResponse> {
        let caller = admin(&request)?;
        let row = visible_key(&self.identity, &caller, &request.get_ref().api_key_id).await?;
        Ok(Response::new(pb::GetApiKeyResponse { api_key: Some(row.to_proto()) }))
    }

    async fn list_api_keys(&self, request: Request<pb::ListApiKeysRequest>) -> Reply<pb::ListApiKeysResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let tenant = super::tenant_scope(&caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let limit = page_size(request.page.as_ref())?;
        let paging = super::paging::NewestFirst::new(&[&"api_keys", &tenant, &request.include_inactive]);
        let (after_at, after_id) = paging.after(request.page.as_ref())?.unzip();
        let mut rows = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM identity.tenant_api_keys
             WHERE tenant_id = $1
               AND ($2 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())))
               AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
             ORDER BY created_at DESC, id DESC LIMIT $5"
        )))
        .bind(tenant)
        .bind(request.include_inactive)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await
        .map_err(IdentityError::from)?;
        let next = paging.next(&mut rows, limit, |last| (last.created_at, last.id));
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: rows.iter().map(KeyRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        }))
    }

    async fn revoke_api_key(&self, request: Request<pb::RevokeApiKeyRequest>) -> Reply<pb::RevokeApiKeyResponse> {
        let caller = admin(&request)?;
        let row = visible_key(&self.identity, &caller, &request.get_ref().api_key_id).await?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let revoked =
            sqlx::query("UPDATE identity.tenant_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL")
                .bind(row.id)
                .execute(&mut *tx)
                .await
                .map_err(IdentityError::from)?;
        if revoked.rows_affected() == 1 {
            outbox::publish(
                &mut tx,
                key_event(&row),
                &events::ApiKeyRevoked {
                    tenant_id: row.tenant_id.to_string(),
                    occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                    api_key_id: row.id.to_string(),
                    prefix: row.prefix.clone(),
                    revoked_by_user_id: caller.user_id.to_string(),
                },
            )
            .await
            .map_err(IdentityError::from)?;
        }
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM identity.tenant_api_keys WHERE id = $1"
        )))
        .bind(row.id)
        .fetch_one(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::RevokeApiKeyResponse { api_key: Some(row.to_proto()) }))
    }

    async fn authenticate_api_key(
        &self,
        request: Request<pb::AuthenticateApiKeyRequest>,
    ) -> Reply<pb::AuthenticateApiKeyResponse> {
        let caller = flatrender_kit::auth::caller(&request)?;
        if caller.service != Some(flatrender_kit::auth::ServiceName::Gateway) {
            return Err(Status::permission_denied("only the gateway exchanges API keys"));
        }
        let client = ClientInfo::of(&request);
        let key = self.identity.authenticate_api_key(&request.get_ref().secret, &client).await?;
        Ok(Response::new(pb::AuthenticateApiKeyResponse {
            api_key: Some(key.api_key),
            access_token: key.access_token,
            access_token_expires_at: Some(timestamp(key.expires_at)),
        }))
    }
}

impl IdentityApi {
    async fn create_key(&self, caller: &Caller, request: pb::CreateApiKeyRequest) -> Result<pb::CreateApiKeyResponse> {
        let tenant = super::tenant_scope(caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let name = validate::display_name("name", &request.name)?;
        let mut scopes: Vec<&str> = Vec::new();
        for value in &request.scopes {
            let name = SCOPES
                .iter()
                .find(|(scope, _)| *scope as i32 == *value)
                .map(|(_, name)| *name)
                .ok_or_else(|| IdentityError::invalid("scopes", format!("{value} is not a scope")))?;
            if scopes.contains(&name) {
                return Err(IdentityError::invalid("scopes", format!("{name} is listed twice")));
            }
            scopes.push(name);
        }
        if scopes.is_empty() {
            return Err(IdentityError::invalid("scopes", "name at least one scope"));
        }
        let now = OffsetDateTime::now_utc();
        let expires_at = match request.expires_at {
            None => None,
            Some(at) => {
                let at = OffsetDateTime::from_unix_timestamp(at.seconds)
                    .map_err(|_| IdentityError::invalid("expires_at", "is out of range"))?;
                if at <= now || at > now + time::Duration::days(731) {
                    return Err(IdentityError::invalid(
                        "expires_at",
                        "must be in the future and at most 2 years ahead",
                    ));
                }
                Some(at)
            }
        };
        let rate_limit = match request.rate_limit_per_minute {
            None => None,
            Some(n @ 1..=100_000) => Some(i32::try_from(n).unwrap_or(i32::MAX)),
            Some(_) => return Err(IdentityError::invalid("rate_limit_per_minute", "must be 1 to 100,000")),
        };
        let idempotency_key = validate::idempotency_key(&request.idempotency_key)?;

        let mut tx = self.identity.pool.begin().await?;
        // Counting and inserting under one lock per tenant, so parallel creations cannot pass 50.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.tenant_api_keys'), hashtext($1))")
            .bind(tenant.to_string())
            .execute(&mut *tx)
            .await?;
        if let Some(key) = &idempotency_key {
            let existing: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM identity.tenant_api_keys WHERE tenant_id = $1 AND idempotency_key = $2",
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await?;
            if existing.is_some() {
                // Only the hash of the secret is kept, so a retry cannot be shown it again.
                return Err(IdentityError::AlreadyExists(
                    "a key was already created with this idempotency key; its secret was shown once".into(),
                ));
            }
        }
        let active: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM identity.tenant_api_keys
             WHERE tenant_id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
        if active >= MAX_ACTIVE_KEYS {
            return Err(IdentityError::Exhausted(format!(
                "a tenant holds at most {MAX_ACTIVE_KEYS} active API keys; revoke one first"
            )));
        }
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM identity.tenants WHERE id = $1)")
            .bind(tenant)
            .fetch_one(&mut *tx)
            .await?;
        if !exists {
            return Err(IdentityError::NotFound("tenant"));
        }
        let prefix = new_prefix();
        let secret = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let request_digest = Sha256::digest(format!("{name}\u{1f}{scopes:?}\u{1f}{expires_at:?}\u{1f}{rate_limit:?}"));
        let row = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO identity.tenant_api_keys
                 (tenant_id, name, prefix, secret_hash, scopes, created_by_user_id, rate_limit_per_minute, expires_at,
                  idempotency_key, request_sha256)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {KEY_COLUMNS}"
        )))
        .bind(tenant)
        .bind(&name)
        .bind(&prefix)
        .bind(Sha256::digest(secret.as_bytes()).as_slice())
        .bind(&scopes)
        .bind((caller.tenant_id == tenant).then_some(caller.user_id))
        .bind(rate_limit)
        .bind(expires_at)
        .bind(&idempotency_key)
        .bind(request_digest.as_slice())
        .fetch_one(&mut *tx)
        .await?;
        outbox::publish(
            &mut tx,
            key_event(&row),
            &events::ApiKeyCreated {
                tenant_id: tenant.to_string(),
                occurred_at: Some(timestamp(now)),
                api_key_id: row.id.to_string(),
                name: row.name.clone(),
                prefix: row.prefix.clone(),
                created_by_user_id: caller.user_id.to_string(),
                expires_at: row.expires_at.map(timestamp),
            },
        )
        .await?;
        tx.commit().await?;
        tracing::info!(api_key = %row.id, prefix = %row.prefix, tenant = %tenant, "created an API key");
        Ok(pb::CreateApiKeyResponse { api_key: Some(row.to_proto()), secret: format!("{prefix}.{secret}") })
    }
}

/// `fr_` and 12 base62 characters (71 bits: collisions are left to the unique constraint).
fn new_prefix() -> String {
    const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let tail: String = (0..12).map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())])).collect();
    format!("fr_{tail}")
}

fn key_event(row: &KeyRow) -> EventMeta<'static> {
    EventMeta {
        source: "identity",
        aggregate_type: "api_key",
        aggregate_id: row.id.to_string(),
        tenant_id: Some(row.tenant_id),
    }
}
