//! The Ed25519 keys that sign access tokens: stored in `identity.signing_keys`, rotated with
//! overlap, and published as a JWKS.
//!
//! A key is published from its creation, signs from `not_before` until `retire_after`, and is
//! still published (so its tokens verify) until `expires_at`, which is past the retirement by the
//! longest an access token lives plus the JWKS cache period. A scheduled successor is created a
//! quarter of a lifetime ahead and signs only after one cache period, so every verifier has
//! fetched it first. Replicas agree through the database: whoever refreshes first creates the
//! key, under a transaction-scoped advisory lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flatrender_kit::auth::{TokenSigner, TokenVerifier};
use jsonwebtoken::DecodingKey;
use sqlx::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{IdentityError, Result};

/// How keys live.
#[derive(Clone, Copy, Debug)]
pub struct KeyPolicy {
    /// How long one key signs.
    pub signing_period: Duration,
    /// How long verifiers may cache the JWKS; a new key waits this long before signing.
    pub jwks_max_age: Duration,
    /// The longest an access token lives: retired keys stay published this much longer.
    pub access_token_ttl: Duration,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            signing_period: Duration::from_secs(30 * 24 * 3600),
            jwks_max_age: Duration::from_secs(300),
            access_token_ttl: Duration::from_secs(15 * 60),
        }
    }
}

/// Where a key is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyState {
    /// Published, not signing yet.
    Pending,
    /// Signs new tokens.
    Signing,
    /// Published so its tokens verify; signs nothing.
    Retired,
    /// Past `expires_at`.
    Expired,
    /// Revoked.
    Revoked,
}

/// A stored key without its private half.
#[derive(Clone, Debug)]
pub struct KeyRecord {
    /// Row id.
    pub id: Uuid,
    /// The JWT `kid`.
    pub kid: String,
    /// Raw Ed25519 public key.
    pub public_key: Vec<u8>,
    /// Signs from.
    pub not_before: OffsetDateTime,
    /// Stops signing after.
    pub retire_after: OffsetDateTime,
    /// Stops being published after.
    pub expires_at: OffsetDateTime,
    /// When revoked.
    pub revoked_at: Option<OffsetDateTime>,
    /// When created.
    pub created_at: OffsetDateTime,
    /// Whether this process can sign with it (its private key is present and readable).
    pub usable: bool,
}

from_row!(KeyRecord { id, kid, public_key, not_before, retire_after, expires_at, revoked_at, created_at, usable });

impl KeyRecord {
    /// The key's state at `now`.
    pub fn state(&self, now: OffsetDateTime) -> KeyState {
        if self.revoked_at.is_some() {
            KeyState::Revoked
        } else if now >= self.expires_at {
            KeyState::Expired
        } else if now < self.not_before {
            KeyState::Pending
        } else if now < self.retire_after {
            KeyState::Signing
        } else {
            KeyState::Retired
        }
    }

    /// The public key as JWK members: (kid, x).
    pub fn jwk_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public_key)
    }
}

/// What the service signs and publishes right now.
#[derive(Clone)]
struct Current {
    signer: Arc<TokenSigner>,
    /// Published keys, the signing key first.
    published: Vec<KeyRecord>,
    /// The same keys, for verifying identity's own non-access tokens (MFA challenges).
    decoding: HashMap<String, Arc<DecodingKey>>,
}

/// The signing key and the published set, refreshed from the database.
#[derive(Clone)]
pub struct KeyRing {
    pool: PgPool,
    policy: KeyPolicy,
    current: Arc<RwLock<Option<Current>>>,
    /// In-process verifiers (this process's services) that get every published set at once.
    verifiers: Arc<Vec<TokenVerifier>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("policy", &self.policy).finish_non_exhaustive()
    }
}

const KEY_COLUMNS: &str = "id, kid, public_key, not_before, retire_after, expires_at, revoked_at, created_at,
    (private_key IS NOT NULL AND private_key_format = 'raw') AS usable";

impl KeyRing {
    /// A ring that publishes to `verifiers` whenever it refreshes.
    pub fn new(pool: PgPool, policy: KeyPolicy, verifiers: Vec<TokenVerifier>) -> Self {
        Self { pool, policy, current: Arc::new(RwLock::new(None)), verifiers: Arc::new(verifiers) }
    }

    /// The policy.
    pub fn policy(&self) -> KeyPolicy {
        self.policy
    }

    /// The key new tokens are signed with; refreshes first when none is loaded yet.
    pub async fn signer(&self) -> Result<Arc<TokenSigner>> {
        if let Some(current) = self.read().as_ref() {
            return Ok(Arc::clone(&current.signer));
        }
        self.refresh().await?;
        self.read().as_ref().map(|c| Arc::clone(&c.signer)).ok_or_else(|| IdentityError::Keys("no signing key".into()))
    }

    /// The published keys, the signing key first; refreshes first when none is loaded yet.
    pub async fn published(&self) -> Result<Vec<KeyRecord>> {
        if self.read().is_none() {
            self.refresh().await?;
        }
        Ok(self.read().as_ref().map(|c| c.published.clone()).unwrap_or_default())
    }

    /// The published key `kid`, for identity's own tokens.
    pub fn decoding_key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.read().as_ref().and_then(|c| c.decoding.get(kid).cloned())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Creates keys the schedule needs, loads the signing key and the published set, and hands
    /// the set to the in-process verifiers.
    pub async fn refresh(&self) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // One replica at a time decides whether a key must be created.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.signing_keys'))").execute(&mut *tx).await?;
        // The clock after the lock: another replica may have created a key while this one waited.
        let now: OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *tx).await?;
        let mut keys = load_published(&mut tx).await?;
        let signing =
            keys.iter().filter(|k| k.usable && k.state(now) == KeyState::Signing).max_by_key(|k| k.not_before);
        let newest_end = keys.iter().map(|k| k.retire_after).max();
        let lead = self.policy.signing_period / 4;
        if signing.is_none() {
            keys.push(self.create(&mut tx, now).await?);
        } else if newest_end.is_some_and(|end| end - now < lead) {
            let starts = now + self.policy.jwks_max_age;
            keys.push(self.create(&mut tx, starts).await?);
        }
        let (kid, seed) = signing_seed(&mut tx, now).await?;
        tx.commit().await?;

        let seed: [u8; 32] =
            seed.as_slice().try_into().map_err(|_| IdentityError::Keys(format!("seed of {kid} is not 32 bytes")))?;
        let signer = TokenSigner::from_seed(kid.clone(), &seed).map_err(|e| IdentityError::Keys(e.to_string()))?;
        keys.sort_by_key(|k| (k.kid != kid, std::cmp::Reverse(k.not_before)));
        let jwks = jwks(&keys)?;
        let mut decoding = HashMap::new();
        for key in &jwks.keys {
            if let Some(kid) = &key.common.key_id {
                let decoded = DecodingKey::from_jwk(key).map_err(|e| IdentityError::Keys(e.to_string()))?;
                decoding.insert(kid.clone(), Arc::new(decoded));
            }
        }
        for verifier in self.verifiers.iter() {
            verifier.publish(&jwks).map_err(|e| IdentityError::Keys(e.to_string()))?;
        }
        let current = Current { signer: Arc::new(signer), published: keys, decoding };
        *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(current);
        Ok(())
    }

    /// Creates a key that signs from `not_before`.
    async fn create(&self, tx: &mut sqlx::PgConnection, not_before: OffsetDateTime) -> Result<KeyRecord> {
        let seed: [u8; 32] = rand::random();
        let signer = TokenSigner::from_seed("new", &seed).map_err(|e| IdentityError::Keys(e.to_string()))?;
        let retire_after = not_before + self.policy.signing_period;
        let expires_at = retire_after + self.policy.access_token_ttl + self.policy.jwks_max_age;
        // Time-ordered and unique, so `kid`s sort by age in logs.
        let kid = format!("k{}", Uuid::now_v7().simple());
        let record = sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO identity.signing_keys (kid, public_key, private_key, not_before, retire_after, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLUMNS}"
        )))
        .bind(&kid)
        .bind(signer.public_key().as_slice())
        .bind(seed.as_slice())
        .bind(not_before)
        .bind(retire_after)
        .bind(expires_at)
        .fetch_one(&mut *tx)
        .await?;
        tracing::info!(kid, %not_before, "created a signing key");
        Ok(record)
    }

    /// Creates a key now, signing after one JWKS cache period or at once.
    pub async fn rotate(&self, immediately: bool) -> Result<KeyRecord> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('identity.signing_keys'))").execute(&mut *tx).await?;
        let now: OffsetDateTime = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *tx).await?;
        let starts = if immediately { now } else { now + self.policy.jwks_max_age };
        let record = self.create(&mut tx, starts).await?;
        tx.commit().await?;
        self.refresh().await?;
        Ok(record)
    }

    /// Revokes `kid` in `tx` (the caller adds its audit event and commits, then calls
    /// [`KeyRing::forget`]). Returns `None` for an unknown kid.
    pub async fn revoke(&self, tx: &mut sqlx::PgConnection, kid: &str) -> Result<Option<KeyRecord>> {
        Ok(sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
            "UPDATE identity.signing_keys SET revoked_at = coalesce(revoked_at, now()), private_key = NULL
             WHERE kid = $1 RETURNING {KEY_COLUMNS}"
        )))
        .bind(kid)
        .fetch_optional(&mut *tx)
        .await?)
    }

    /// Stops trusting and signing with a revoked `kid` in this process at once, then reloads
    /// (which makes a new key sign if it was the signing key). Other replicas and followers drop
    /// it at their next refresh.
    pub async fn forget(&self, kid: &str) {
        {
            let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
            if current.as_ref().is_some_and(|c| c.signer.kid() == kid) {
                // No signer rather than a revoked one: the next signing call reloads.
                *current = None;
            } else if let Some(current) = current.as_mut() {
                current.published.retain(|k| k.kid != kid);
                current.decoding.remove(kid);
            }
        }
        for verifier in self.verifiers.iter() {
            verifier.forget(kid);
        }
        tracing::warn!(kid, "revoked a signing key");
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "cannot reload the signing keys after a revocation; the next call retries");
        }
    }

    /// Keys for ListSigningKeys: newest first, optionally with expired and revoked ones.
    pub async fn list(
        &self,
        include_inactive: bool,
        after: Option<(OffsetDateTime, Uuid)>,
        limit: i64,
    ) -> Result<Vec<KeyRecord>> {
        let (after_at, after_id) = after.unzip();
        Ok(sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM identity.signing_keys
             WHERE ($1 OR (revoked_at IS NULL AND expires_at > now()))
               AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
             ORDER BY created_at DESC, id DESC LIMIT $4"
        )))
        .bind(include_inactive)
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Refreshes every `every` until `signal` fires, so rotation happens without anyone calling.
    pub async fn maintain(self, every: Duration, signal: flatrender_kit::shutdown::ShutdownSignal) {
        signal
            .every(Duration::ZERO, every, || async {
                if let Err(e) = self.refresh().await {
                    tracing::warn!(error = %e, "cannot refresh the signing keys; keeping the current ones");
                }
            })
            .await;
    }
}

async fn load_published(tx: &mut sqlx::PgConnection) -> Result<Vec<KeyRecord>> {
    Ok(sqlx::query_as::<_, KeyRecord>(sqlx::AssertSqlSafe(format!(
        "SELECT {KEY_COLUMNS} FROM identity.signing_keys WHERE revoked_at IS NULL AND expires_at > now()"
    )))
    .fetch_all(&mut *tx)
    .await?)
}

/// The kid and seed of the newest key signing at `now`.
async fn signing_seed(tx: &mut sqlx::PgConnection, now: OffsetDateTime) -> Result<(String, Vec<u8>)> {
    sqlx::query_as(
        "SELECT kid, private_key FROM identity.signing_keys
         WHERE revoked_at IS NULL AND private_key IS NOT NULL AND private_key_format = 'raw'
           AND not_before <= $1 AND retire_after > $1
         ORDER BY not_before DESC LIMIT 1",
    )
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(|| IdentityError::Keys("no key signs now".into()))
}

/// The keys as a JWKS document.
pub fn jwks(keys: &[KeyRecord]) -> Result<jsonwebtoken::jwk::JwkSet> {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": k.kid, "x": k.jwk_x(),
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "keys": keys })).map_err(|e| IdentityError::Keys(e.to_string()))
}
