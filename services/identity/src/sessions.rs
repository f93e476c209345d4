//! Sessions (refresh-token families) and the token pairs issued for them.
//!
//! A login opens a session with an absolute expiry and its first refresh token. Each refresh
//! exchanges the presented token for its child under a row lock, so of concurrent refreshes
//! with one token exactly one wins. A rotated token presented again after the grace period is
//! a replay: the whole session is revoked.

use std::net::IpAddr;
use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, Role};
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::client::ClientInfo;
use crate::credentials::opaque;
use crate::error::{IdentityError, Result};
use crate::keys::KeyRing;
use crate::users::timestamp;

/// Why a session ended (the column's vocabulary).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokeReason {
    Logout,
    LogoutAll,
    ReuseDetected,
    PasswordChanged,
    Admin,
    UserDisabled,
}

impl RevokeReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::LogoutAll => "logout_all",
            Self::ReuseDetected => "reuse_detected",
            Self::PasswordChanged => "password_changed",
            Self::Admin => "admin",
            Self::UserDisabled => "user_disabled",
        }
    }
}

/// What an access token is issued for.
#[derive(Clone, Copy, Debug)]
pub struct Subject {
    pub user_id: Uuid,
    pub tenant_id: Uuid,
    pub role: Role,
}

/// Issues tokens.
#[derive(Clone, Debug)]
pub struct Issuer {
    pub ring: KeyRing,
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub session_ttl: Duration,
    pub reuse_grace: Duration,
}

impl Issuer {
    /// An access token for `subject` in `session`, and when it expires.
    pub async fn access_token(&self, subject: Subject, session: Uuid) -> Result<(String, OffsetDateTime)> {
        let now = OffsetDateTime::now_utc();
        let expires = now + self.access_token_ttl;
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.user_id,
            tid: subject.tenant_id,
            role: subject.role,
            sid: Some(session),
            svc: None,
            akid: None,
            scp: None,
            exp: unix(expires),
            nbf: unix(now),
            iat: unix(now),
            jti: Uuid::new_v4(),
        };
        let token = self.ring.signer().await?.sign(&claims).map_err(|e| IdentityError::Keys(e.to_string()))?;
        Ok((token, expires))
    }

    /// Opens a session for `subject` and issues its first token pair.
    pub async fn open(
        &self,
        conn: &mut PgConnection,
        subject: Subject,
        client: &ClientInfo,
        mfa_verified: bool,
    ) -> Result<pb::TokenPair> {
        let session: (Uuid, OffsetDateTime) = sqlx::query_as(
            "INSERT INTO identity.sessions (tenant_id, user_id, expires_at, mfa_verified, user_agent, ip, last_used_ip)
             VALUES ($1, $2, now() + $3, $4, $5, $6::inet, $6::inet) RETURNING id, expires_at",
        )
        .bind(subject.tenant_id)
        .bind(subject.user_id)
        .bind(self.session_ttl)
        .bind(mfa_verified)
        .bind(client.user_agent.as_deref())
        .bind(client.ip.map(ip_text))
        .fetch_one(&mut *conn)
        .await?;
        let (session_id, expires_at) = session;
        let refresh = opaque::issue();
        sqlx::query(
            "INSERT INTO identity.refresh_tokens (tenant_id, user_id, family_id, token_hash, expires_at, user_agent, ip)
             VALUES ($1, $2, $3, $4, $5, $6, $7::inet)",
        )
        .bind(subject.tenant_id)
        .bind(subject.user_id)
        .bind(session_id)
        .bind(refresh.hash.as_slice())
        .bind(expires_at)
        .bind(client.user_agent.as_deref())
        .bind(client.ip.map(ip_text))
        .execute(&mut *conn)
        .await?;
        self.pair(subject, session_id, refresh.secret, expires_at).await
    }

    async fn pair(
        &self,
        subject: Subject,
        session: Uuid,
        refresh_token: String,
        refresh_expires: OffsetDateTime,
    ) -> Result<pb::TokenPair> {
        let (access_token, access_expires) = self.access_token(subject, session).await?;
        Ok(pb::TokenPair {
            access_token,
            access_token_expires_at: Some(timestamp(access_expires)),
            refresh_token,
            refresh_token_expires_at: Some(timestamp(refresh_expires)),
            token_type: "Bearer".into(),
            session_id: session.to_string(),
        })
    }

    /// Exchanges `presented` for a new pair. Must run in a transaction the caller commits
    /// whatever the outcome: a detected replay revokes the session even though the call fails.
    pub async fn rotate(&self, conn: &mut PgConnection, presented: &str, client: &ClientInfo) -> Result<Rotation> {
        let invalid = || IdentityError::unauthenticated("the refresh token is not valid; log in again");
        let Some(hash) = opaque::parse(presented) else { return Ok(Rotation::Refused(invalid())) };
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT r.id, r.family_id, r.user_id, r.tenant_id, r.expires_at, r.revoked_at IS NOT NULL AS revoked,
                    s.revoked_at IS NOT NULL AS session_revoked,
                    extract(epoch FROM now() - r.rotated_at)::float8 AS rotated_ago
             FROM identity.refresh_tokens r JOIN identity.sessions s ON s.id = r.family_id
             WHERE r.token_hash = $1
             FOR UPDATE OF r",
        )
        .bind(hash.as_slice())
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(Rotation::Refused(invalid())) };
        if row.revoked || row.session_revoked {
            return Ok(Rotation::Refused(invalid()));
        }
        if row.expires_at <= OffsetDateTime::now_utc() {
            return Ok(Rotation::Refused(IdentityError::unauthenticated("the session has expired; log in again")));
        }
        if let Some(ago) = row.rotated_ago {
            if Duration::from_secs_f64(ago.max(0.0)) <= self.reuse_grace {
                // Lost a race with a concurrent refresh of the same token: not a replay.
                return Ok(Rotation::Refused(IdentityError::unauthenticated(
                    "the refresh token was just exchanged by another request; use the newest one",
                )));
            }
            revoke_session(conn, row.family_id, RevokeReason::ReuseDetected).await?;
            tracing::warn!(session = %row.family_id, user = %row.user_id, "a rotated refresh token was replayed; session revoked");
            return Ok(Rotation::Refused(IdentityError::unauthenticated(
                "the refresh token was already used; the session has been ended, log in again",
            )));
        }
        let user: Option<(String, String, String)> = sqlx::query_as(
            "SELECT u.role, u.status, t.status FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
             WHERE u.id = $1",
        )
        .bind(row.user_id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((role, status, tenant_status)) = user else { return Ok(Rotation::Refused(invalid())) };
        if status != "active" || tenant_status != "active" {
            return Ok(Rotation::Refused(IdentityError::PermissionDenied(
                "this account or its organisation is suspended".into(),
            )));
        }
        sqlx::query("UPDATE identity.refresh_tokens SET rotated_at = now() WHERE id = $1")
            .bind(row.id)
            .execute(&mut *conn)
            .await?;
        let child = opaque::issue();
        sqlx::query(
            "INSERT INTO identity.refresh_tokens (tenant_id, user_id, family_id, parent_id, token_hash, expires_at, user_agent, ip)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8::inet)",
        )
        .bind(row.tenant_id)
        .bind(row.user_id)
        .bind(row.family_id)
        .bind(row.id)
        .bind(child.hash.as_slice())
        .bind(row.expires_at)
        .bind(client.user_agent.as_deref())
        .bind(client.ip.map(ip_text))
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE identity.sessions SET last_used_at = now(), last_used_ip = coalesce($2::inet, last_used_ip) WHERE id = $1")
            .bind(row.family_id)
            .bind(client.ip.map(ip_text))
            .execute(&mut *conn)
            .await?;
        let subject =
            Subject { user_id: row.user_id, tenant_id: row.tenant_id, role: crate::users::role_from_db(&role)? };
        Ok(Rotation::Issued(self.pair(subject, row.family_id, child.secret, row.expires_at).await?))
    }
}

/// The outcome of a refresh: a refusal still commits (a replay revokes the session).
#[derive(Debug)]
pub enum Rotation {
    Issued(pb::TokenPair),
    Refused(IdentityError),
}

struct TokenRow {
    id: Uuid,
    family_id: Uuid,
    user_id: Uuid,
    tenant_id: Uuid,
    expires_at: OffsetDateTime,
    revoked: bool,
    session_revoked: bool,
    rotated_ago: Option<f64>,
}

from_row!(TokenRow { id, family_id, user_id, tenant_id, expires_at, revoked, session_revoked, rotated_ago });

/// The session of a refresh token, if the token is ours.
pub async fn session_of(conn: &mut PgConnection, presented: &str) -> Result<Option<(Uuid, Uuid)>> {
    let Some(hash) = opaque::parse(presented) else { return Ok(None) };
    Ok(sqlx::query_as("SELECT family_id, user_id FROM identity.refresh_tokens WHERE token_hash = $1")
        .bind(hash.as_slice())
        .fetch_optional(&mut *conn)
        .await?)
}

/// Ends one session; returns whether it was still active.
pub async fn revoke_session(conn: &mut PgConnection, session: Uuid, reason: RevokeReason) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE identity.sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(session)
    .bind(reason.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends every active session of `user` except `keep`; returns how many ended.
pub async fn revoke_user_sessions(
    conn: &mut PgConnection,
    user: Uuid,
    keep: Option<Uuid>,
    reason: RevokeReason,
) -> Result<u32> {
    let done = sqlx::query(
        "UPDATE identity.sessions SET revoked_at = now(), revoked_reason = $3
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() AND ($2::uuid IS NULL OR id <> $2)",
    )
    .bind(user)
    .bind(keep)
    .bind(reason.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(u32::try_from(done.rows_affected()).unwrap_or(u32::MAX))
}

/// Seconds since the Unix epoch (times before it are clamped to zero).
pub fn unix(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp()).unwrap_or(0)
}

/// An address as text for an `$n::inet` parameter (no extra sqlx feature for one column type).
pub fn ip_text(ip: IpAddr) -> String {
    ip.to_string()
}
