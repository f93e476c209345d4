//! `AuthService`: accounts and tokens.

use flatrender_kit::auth::Role;
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, page_size, user};
use crate::client::ClientInfo;
use crate::credentials::opaque;
use crate::error::{IdentityError, Result};
use crate::keys;
use crate::sessions::{self, RevokeReason, Rotation, Subject};
use crate::throttle::Subject as Throttled;
use crate::users::{self, UserRow, timestamp};
use crate::validate;

/// The same answer for an unknown email and a wrong password, so logins cannot probe accounts.
const BAD_CREDENTIALS: &str = "wrong email or password";

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for IdentityApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        Ok(Response::new(self.register_account(request.into_inner()).await?))
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Reply<pb::VerifyEmailResponse> {
        Ok(Response::new(self.verify_email_token(&request.into_inner().token).await?))
    }

    async fn resend_verification_email(
        &self,
        request: Request<pb::ResendVerificationEmailRequest>,
    ) -> Reply<pb::ResendVerificationEmailResponse> {
        let request = request.into_inner();
        self.resend_verification(&request.email, &request.tenant_id).await?;
        Ok(Response::new(pb::ResendVerificationEmailResponse {}))
    }

    async fn get_pending_verification_token(
        &self,
        request: Request<pb::GetPendingVerificationTokenRequest>,
    ) -> Reply<pb::GetPendingVerificationTokenResponse> {
        user(&request)?.require(Role::PlatformAdmin)?;
        Ok(Response::new(self.pending_verification_token(request.into_inner()).await?))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = ClientInfo::of(&request);
        Ok(Response::new(self.password_login(request.into_inner(), &client).await?))
    }

    async fn complete_mfa_login(
        &self,
        request: Request<pb::CompleteMfaLoginRequest>,
    ) -> Reply<pb::CompleteMfaLoginResponse> {
        let client = ClientInfo::of(&request);
        Ok(Response::new(self.finish_mfa_login(request.into_inner(), &client).await?))
    }

    async fn refresh_token(&self, request: Request<pb::RefreshTokenRequest>) -> Reply<pb::RefreshTokenResponse> {
        let client = ClientInfo::of(&request);
        let presented = request.into_inner().refresh_token;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let rotation = self.identity.issuer.rotate(&mut tx, &presented, &client).await?;
        // Committed either way: a detected replay must stay revoked though the call fails.
        tx.commit().await.map_err(IdentityError::from)?;
        match rotation {
            Rotation::Issued(tokens) => Ok(Response::new(pb::RefreshTokenResponse { tokens: Some(tokens) })),
            Rotation::Refused(err) => Err(err.into()),
        }
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        let presented = request.get_ref().refresh_token.clone();
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let session = if presented.is_empty() {
            let caller = user(&request)?;
            caller.session_id.ok_or_else(|| Status::unauthenticated("this token belongs to no session"))?
        } else {
            // Unknown tokens answer OK: logging out is idempotent and reveals nothing.
            match sessions::session_of(&mut conn, &presented).await? {
                Some((session, _)) => session,
                None => return Ok(Response::new(pb::LogoutResponse {})),
            }
        };
        sessions::revoke_session(&mut conn, session, RevokeReason::Logout).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn logout_everywhere(
        &self,
        request: Request<pb::LogoutEverywhereRequest>,
    ) -> Reply<pb::LogoutEverywhereResponse> {
        let caller = user(&request)?;
        let keep = if request.get_ref().keep_current_session { caller.session_id } else { None };
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let revoked = sessions::revoke_user_sessions(&mut conn, caller.user_id, keep, RevokeReason::LogoutAll).await?;
        Ok(Response::new(pb::LogoutEverywhereResponse { revoked_sessions: revoked }))
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Reply<pb::GetMeResponse> {
        let caller = user(&request)?;
        if let Some(key) = caller.api_key_id {
            // A tenant API key is no person: it names its tenant and itself.
            return Ok(Response::new(pb::GetMeResponse {
                user: None,
                tenant_id: caller.tenant_id.to_string(),
                session_id: String::new(),
                api_key_id: key.to_string(),
            }));
        }
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let me = users::by_id(&mut conn, caller.tenant_id, caller.user_id).await?;
        Ok(Response::new(pb::GetMeResponse {
            user: Some(me.to_proto()),
            tenant_id: caller.tenant_id.to_string(),
            session_id: caller.session_id.map(|s| s.to_string()).unwrap_or_default(),
            api_key_id: String::new(),
        }))
    }

    async fn update_me(&self, request: Request<pb::UpdateMeRequest>) -> Reply<pb::UpdateMeResponse> {
        let caller = user(&request)?;
        let request = request.into_inner();
        Ok(Response::new(pb::UpdateMeResponse { user: Some(self.update_profile(&caller, request).await?) }))
    }

    async fn change_password(&self, request: Request<pb::ChangePasswordRequest>) -> Reply<pb::ChangePasswordResponse> {
        let caller = user(&request)?;
        let request = request.into_inner();
        let revoked = self.change_own_password(&caller, &request.current_password, &request.new_password).await?;
        Ok(Response::new(pb::ChangePasswordResponse { revoked_sessions: revoked }))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Reply<pb::RequestPasswordResetResponse> {
        let client = ClientInfo::of(&request);
        let request = request.into_inner();
        self.issue_password_reset(&request.email, &request.tenant_id, &client).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn confirm_password_reset(
        &self,
        request: Request<pb::ConfirmPasswordResetRequest>,
    ) -> Reply<pb::ConfirmPasswordResetResponse> {
        let request = request.into_inner();
        self.reset_password(&request.token, &request.new_password).await?;
        Ok(Response::new(pb::ConfirmPasswordResetResponse {}))
    }

    async fn list_sessions(&self, request: Request<pb::ListSessionsRequest>) -> Reply<pb::ListSessionsResponse> {
        let caller = user(&request)?;
        Ok(Response::new(self.sessions_of(&caller, request.get_ref().page.as_ref()).await?))
    }

    async fn revoke_session(&self, request: Request<pb::RevokeSessionRequest>) -> Reply<pb::RevokeSessionResponse> {
        let caller = user(&request)?;
        let session = validate::uuid("session_id", &request.get_ref().session_id)?;
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let owner: Option<Uuid> =
            sqlx::query_scalar("SELECT user_id FROM identity.sessions WHERE id = $1 AND tenant_id = $2")
                .bind(session)
                .bind(caller.tenant_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err(IdentityError::from)?;
        if owner != Some(caller.user_id) {
            return Err(IdentityError::NotFound("session").into());
        }
        sessions::revoke_session(&mut conn, session, RevokeReason::Logout).await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        let published = self.identity.ring.published().await?;
        let keys = published.iter().map(jwk).collect();
        let max_age = self.identity.settings.keys.jwks_max_age.as_secs();
        Ok(Response::new(pb::GetJwksResponse {
            keys,
            cache_max_age_seconds: u32::try_from(max_age).unwrap_or(u32::MAX),
        }))
    }
}

/// A published key as the API's JWK.
pub(crate) fn jwk(key: &keys::KeyRecord) -> pb::Jwk {
    pb::Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        x: key.jwk_x(),
        kid: key.kid.clone(),
        alg: "EdDSA".into(),
        r#use: "sig".into(),
    }
}

impl IdentityApi {
    async fn register_account(&self, request: pb::RegisterRequest) -> Result<pb::RegisterResponse> {
        let email = validate::email("email", &request.email)?;
        self.identity.policy.check(&request.password)?;
        let display_name = validate::display_name("display_name", &request.display_name)?;
        let tenant = validate::tenant("tenant_id", &request.tenant_id)?;
        let locale = validate::locale("locale", &request.locale)?;
        let time_zone = validate::time_zone("time_zone", &request.time_zone)?;
        // Hashed before the transaction: no row lock or connection is held for the Argon2 work.
        let password_hash = self.identity.hasher.hash(&request.password).await?;

        let mut tx = self.identity.pool.begin().await?;
        let tenant_active: Option<bool> =
            sqlx::query_scalar("SELECT status = 'active' FROM identity.tenants WHERE id = $1")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        if tenant_active != Some(true) {
            return Err(IdentityError::NotFound("tenant"));
        }
        let inserted = sqlx::query_scalar::<_, Uuid>(
            "INSERT INTO identity.users (tenant_id, email, password_hash, display_name, locale, time_zone, password_changed_at)
             VALUES ($1, $2, $3, $4, $5, $6, now()) RETURNING id",
        )
        .bind(tenant)
        .bind(&email)
        .bind(&password_hash)
        .bind(&display_name)
        .bind(&locale)
        .bind(&time_zone)
        .fetch_one(&mut *tx)
        .await;
        let user_id = match inserted {
            Ok(id) => id,
            Err(e) if flatrender_kit::db::is_unique_violation(&e, "users_tenant_email_key") => {
                return Err(IdentityError::AlreadyExists("an account with this email already exists".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let created = users::by_id(&mut tx, tenant, user_id).await?;
        let now = OffsetDateTime::now_utc();
        outbox::publish(
            &mut tx,
            user_event(&created),
            &events::UserRegistered {
                tenant_id: tenant.to_string(),
                occurred_at: Some(timestamp(now)),
                user_id: user_id.to_string(),
                email: email.clone(),
                display_name: display_name.clone(),
                locale: locale.clone(),
                created_by_user_id: String::new(),
            },
        )
        .await?;
        let expires_at = self.issue_verification(&mut tx, &created).await?;
        tx.commit().await?;
        tracing::info!(user = %user_id, tenant = %tenant, "registered an account");
        Ok(pb::RegisterResponse {
            user: Some(created.to_proto()),
            verification_expires_at: Some(timestamp(expires_at)),
        })
    }

    /// Replaces the user's pending verification token with a new one and asks for the email.
    async fn issue_verification(&self, tx: &mut sqlx::PgTransaction<'_>, user: &UserRow) -> Result<OffsetDateTime> {
        sqlx::query("DELETE FROM identity.email_verification_tokens WHERE user_id = $1 AND used_at IS NULL")
            .bind(user.id)
            .execute(&mut **tx)
            .await?;
        let token = opaque::issue();
        let expires_at: OffsetDateTime = sqlx::query_scalar(
            "INSERT INTO identity.email_verification_tokens (tenant_id, user_id, email, token_hash, expires_at)
             VALUES ($1, $2, $3, $4, now() + $5) RETURNING expires_at",
        )
        .bind(user.tenant_id)
        .bind(user.id)
        .bind(&user.email)
        .bind(token.hash.as_slice())
        .bind(self.identity.settings.verification_ttl)
        .fetch_one(&mut **tx)
        .await?;
        // The token travels only in this event (for the email, and for the operator's
        // GetPendingVerificationToken); the table keeps its hash.
        outbox::publish(
            tx,
            user_event(user),
            &events::EmailVerificationRequested {
                tenant_id: user.tenant_id.to_string(),
                occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                user_id: user.id.to_string(),
                email: user.email.clone(),
                display_name: user.display_name.clone(),
                locale: user.locale.clone(),
                token: token.secret,
                expires_at: Some(timestamp(expires_at)),
            },
        )
        .await?;
        Ok(expires_at)
    }

    async fn verify_email_token(&self, presented: &str) -> Result<pb::VerifyEmailResponse> {
        let hash = opaque::parse(presented).ok_or(IdentityError::NotFound("verification token"))?;
        let mut tx = self.identity.pool.begin().await?;
        let row: Option<(Uuid, Uuid, String, bool, bool)> = sqlx::query_as(
            "SELECT tenant_id, user_id, email, used_at IS NOT NULL, expires_at <= now()
             FROM identity.email_verification_tokens WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(hash.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let (tenant, user_id, email, used, expired) = row.ok_or(IdentityError::NotFound("verification token"))?;
        if used {
            return Err(IdentityError::FailedPrecondition("this verification token was already used".into()));
        }
        if expired {
            return Err(IdentityError::FailedPrecondition(
                "this verification token has expired; ask for a new one".into(),
            ));
        }
        sqlx::query("UPDATE identity.email_verification_tokens SET used_at = now() WHERE token_hash = $1")
            .bind(hash.as_slice())
            .execute(&mut *tx)
            .await?;
        // Only the address the token was sent to is verified, should the email have changed since.
        sqlx::query(
            "UPDATE identity.users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = $1 AND email = $2",
        )
        .bind(user_id)
        .bind(&email)
        .execute(&mut *tx)
        .await?;
        let verified = users::by_id(&mut tx, tenant, user_id).await?;
        tx.commit().await?;
        Ok(pb::VerifyEmailResponse { user: Some(verified.to_proto()) })
    }

    async fn resend_verification(&self, email: &str, tenant: &str) -> Result<()> {
        let email = validate::email("email", email)?;
        let tenant = validate::tenant("tenant_id", tenant)?;
        let mut tx = self.identity.pool.begin().await?;
        let Some(user) = users::by_email(&mut tx, tenant, &email).await? else { return Ok(()) };
        if user.email_verified_at.is_some() || user.may_sign_in().is_err() {
            return Ok(());
        }
        // At most one email a minute per address; the answer is the same either way.
        let recent: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM identity.email_verification_tokens
                            WHERE user_id = $1 AND created_at > now() - interval '1 minute')",
        )
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        if !recent {
            self.issue_verification(&mut tx, &user).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn pending_verification_token(
        &self,
        request: pb::GetPendingVerificationTokenRequest,
    ) -> Result<pb::GetPendingVerificationTokenResponse> {
        let mut conn = self.identity.pool.acquire().await?;
        let user_id = match (validate::optional_uuid("user_id", &request.user_id)?, request.email.is_empty()) {
            (Some(id), true) => id,
            (None, false) => {
                let email = validate::email("email", &request.email)?;
                let tenant = validate::tenant("tenant_id", &request.tenant_id)?;
                users::by_email(&mut conn, tenant, &email).await?.ok_or(IdentityError::NotFound("user"))?.id
            }
            _ => return Err(IdentityError::invalid("user_id", "give exactly one of user_id or email")),
        };
        let pending: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT token_hash FROM identity.email_verification_tokens
             WHERE user_id = $1 AND used_at IS NULL AND expires_at > now()",
        )
        .bind(user_id)
        .fetch_all(&mut *conn)
        .await?;
        if pending.is_empty() {
            return Err(IdentityError::NotFound("pending verification token"));
        }
        // The clear token exists only in the event that asked for the email.
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM platform.outbox
             WHERE event_type = $1 AND aggregate_type = 'user' AND aggregate_id = $2
             ORDER BY created_at DESC, id DESC LIMIT 20",
        )
        .bind(<events::EmailVerificationRequested as prost::Name>::full_name())
        .bind(user_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
        for payload in payloads {
            let Ok(event) = <events::EmailVerificationRequested as prost::Message>::decode(payload.as_slice()) else {
                continue;
            };
            if opaque::parse(&event.token).is_some_and(|h| pending.iter().any(|p| p.as_slice() == h.as_slice())) {
                return Ok(pb::GetPendingVerificationTokenResponse {
                    user_id: user_id.to_string(),
                    token: event.token,
                    expires_at: event.expires_at,
                });
            }
        }
        Err(IdentityError::NotFound("pending verification token"))
    }

    async fn password_login(&self, request: pb::LoginRequest, client: &ClientInfo) -> Result<pb::LoginResponse> {
        let tenant = validate::tenant("tenant_id", &request.tenant_id)?;
        let email = validate::email("email", &request.email)?;
        if request.password.is_empty() || request.password.chars().count() > self.identity.policy.max_chars {
            return Err(IdentityError::unauthenticated(BAD_CREDENTIALS));
        }
        let mut subjects = vec![Throttled::account(tenant, &email)];
        subjects.extend(client.address_key().map(Throttled::Address));
        let throttle = self.identity.settings.throttle;

        let mut conn = self.identity.pool.acquire().await?;
        if let Some(retry_after) = throttle.reserve(&mut conn, &subjects).await? {
            record_attempt(&mut conn, tenant, &email, None, client, Some("throttled")).await?;
            return Err(IdentityError::Throttled { what: "too many failed logins", retry_after });
        }
        let found = users::by_email(&mut conn, tenant, &email).await?;
        // The connection goes back while Argon2 runs, so a burst of logins cannot drain the pool.
        drop(conn);
        let verified = match found.as_ref().and_then(|u| u.password_hash.as_deref()) {
            Some(hash) => Some(self.identity.hasher.verify(hash, &request.password).await?),
            None => {
                self.identity.hasher.verify_dummy(&request.password).await?;
                None
            }
        };
        let mut conn = self.identity.pool.acquire().await?;
        let (user, verified) = match (found, verified) {
            (Some(user), Some(v)) if v.matches => (user, v),
            (found, _) => {
                let reason = if found.is_some() { "bad_credentials" } else { "unknown_user" };
                // The reserved attempt stays counted.
                record_attempt(&mut conn, tenant, &email, found.as_ref().map(|u| u.id), client, Some(reason)).await?;
                return Err(IdentityError::unauthenticated(BAD_CREDENTIALS));
            }
        };
        // The password was right: from here on the answers may say more.
        if let Err(refused) = user.may_sign_in() {
            let reason = if user.tenant_status == "active" { "user_suspended" } else { "tenant_suspended" };
            record_attempt(&mut conn, tenant, &email, Some(user.id), client, Some(reason)).await?;
            return Err(refused);
        }
        if self.identity.settings.require_verified_email && user.email_verified_at.is_none() {
            record_attempt(&mut conn, tenant, &email, Some(user.id), client, Some("email_unverified")).await?;
            return Err(IdentityError::FailedPrecondition("email not verified".into()));
        }
        if verified.needs_rehash {
            // Parameters were raised since this hash was made; upgrade it while the password is at hand.
            let upgraded = self.identity.hasher.hash(&request.password).await?;
            sqlx::query("UPDATE identity.users SET password_hash = $2 WHERE id = $1")
                .bind(user.id)
                .bind(upgraded)
                .execute(&mut *conn)
                .await?;
        }
        throttle.succeed(&mut conn, &subjects).await?;
        if user.mfa_enabled {
            let attempt =
                record_attempt(&mut conn, tenant, &email, Some(user.id), client, Some("mfa_required")).await?;
            let attempt = attempt.ok_or_else(|| IdentityError::Corrupt("the user's tenant is gone".into()))?;
            let challenge = self.mfa_challenge(&user, attempt).await?;
            return Ok(pb::LoginResponse {
                result: Some(pb::login_response::Result::MfaChallenge(challenge)),
                user: Some(user.to_proto()),
            });
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let tokens = self.complete_login(&mut tx, &user, client, false).await?;
        tx.commit().await?;
        Ok(pb::LoginResponse { result: Some(pb::login_response::Result::Tokens(tokens)), user: Some(user.to_proto()) })
    }

    /// Opens the session of a successful login and records it.
    pub(crate) async fn complete_login(
        &self,
        conn: &mut PgConnection,
        user: &UserRow,
        client: &ClientInfo,
        mfa_verified: bool,
    ) -> Result<pb::TokenPair> {
        let subject = Subject { user_id: user.id, tenant_id: user.tenant_id, role: user.role()? };
        let tokens = self.identity.issuer.open(conn, subject, client, mfa_verified).await?;
        sqlx::query("UPDATE identity.users SET last_login_at = now() WHERE id = $1")
            .bind(user.id)
            .execute(&mut *conn)
            .await?;
        record_attempt(conn, user.tenant_id, &user.email, Some(user.id), client, None).await?;
        Ok(tokens)
    }

    async fn update_profile(
        &self,
        caller: &flatrender_kit::auth::Caller,
        request: pb::UpdateMeRequest,
    ) -> Result<pb::User> {
        let paths = request.update_mask.map(|m| m.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(IdentityError::invalid("update_mask", "name at least one field to change"));
        }
        let given = request.user.unwrap_or_default();
        let mut tx = self.identity.pool.begin().await?;
        let mut me = users::by_id(&mut tx, caller.tenant_id, caller.user_id).await?;
        for path in &paths {
            match path.as_str() {
                "display_name" => me.display_name = validate::display_name("user.display_name", &given.display_name)?,
                "avatar_file_id" => {
                    me.avatar_file_id = validate::optional_uuid("user.avatar_file_id", &given.avatar_file_id)?
                }
                "locale" => me.locale = validate::locale("user.locale", &given.locale)?,
                "time_zone" => me.time_zone = validate::time_zone("user.time_zone", &given.time_zone)?,
                other => {
                    return Err(IdentityError::invalid(
                        "update_mask",
                        format!(
                            "`{other}` cannot be changed here; use display_name, avatar_file_id, locale or time_zone"
                        ),
                    ));
                }
            }
        }
        sqlx::query(
            "UPDATE identity.users SET display_name = $2, avatar_file_id = $3, locale = $4, time_zone = $5 WHERE id = $1",
        )
        .bind(me.id)
        .bind(&me.display_name)
        .bind(me.avatar_file_id)
        .bind(&me.locale)
        .bind(&me.time_zone)
        .execute(&mut *tx)
        .await?;
        let updated = users::by_id(&mut tx, caller.tenant_id, caller.user_id).await?;
        tx.commit().await?;
        Ok(updated.to_proto())
    }

    async fn change_own_password(
        &self,
        caller: &flatrender_kit::auth::Caller,
        current: &str,
        new: &str,
    ) -> Result<u32> {
        let mut conn = self.identity.pool.acquire().await?;
        let me = users::by_id(&mut conn, caller.tenant_id, caller.user_id).await?;
        drop(conn);
        self.check_password(&me, current).await?;
        self.identity.policy.check(new)?;
        if current == new {
            return Err(IdentityError::invalid("new_password", "must differ from the current password"));
        }
        let hash = self.identity.hasher.hash(new).await?;
        let mut tx = self.identity.pool.begin().await?;
        sqlx::query("UPDATE identity.users SET password_hash = $2, password_changed_at = now() WHERE id = $1")
            .bind(me.id)
            .bind(hash)
            .execute(&mut *tx)
            .await?;
        let revoked =
            sessions::revoke_user_sessions(&mut tx, me.id, caller.session_id, RevokeReason::PasswordChanged).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// `UNAUTHENTICATED` unless `password` is the user's.
    pub(crate) async fn check_password(&self, user: &UserRow, password: &str) -> Result<()> {
        let matches = match user.password_hash.as_deref() {
            Some(hash) => self.identity.hasher.verify(hash, password).await?.matches,
            None => false,
        };
        if matches { Ok(()) } else { Err(IdentityError::unauthenticated("the current password is wrong")) }
    }

    async fn issue_password_reset(&self, email: &str, tenant: &str, client: &ClientInfo) -> Result<()> {
        let email = validate::email("email", email)?;
        let tenant = validate::tenant("tenant_id", tenant)?;
        let mut tx = self.identity.pool.begin().await?;
        let Some(user) = users::by_email(&mut tx, tenant, &email).await? else { return Ok(()) };
        if user.may_sign_in().is_err() {
            return Ok(());
        }
        let recent: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM identity.password_reset_tokens
                            WHERE user_id = $1 AND created_at > now() - interval '1 minute')",
        )
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        if recent {
            return Ok(());
        }
        let token = opaque::issue();
        let expires_at: OffsetDateTime = sqlx::query_scalar(
            "INSERT INTO identity.password_reset_tokens (tenant_id, user_id, token_hash, requested_ip, expires_at)
             VALUES ($1, $2, $3, $4::inet, now() + $5) RETURNING expires_at",
        )
        .bind(user.tenant_id)
        .bind(user.id)
        .bind(token.hash.as_slice())
        .bind(client.ip.map(sessions::ip_text))
        .bind(self.identity.settings.reset_ttl)
        .fetch_one(&mut *tx)
        .await?;
        outbox::publish(
            &mut tx,
            user_event(&user),
            &events::PasswordResetRequested {
                tenant_id: user.tenant_id.to_string(),
                occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                user_id: user.id.to_string(),
                email: user.email.clone(),
                display_name: user.display_name.clone(),
                locale: user.locale.clone(),
                token: token.secret,
                expires_at: Some(timestamp(expires_at)),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reset_password(&self, presented: &str, new_password: &str) -> Result<()> {
        let hash = opaque::parse(presented).ok_or(IdentityError::NotFound("password reset token"))?;
        self.identity.policy.check(new_password).map_err(|e| match IdentityError::from(e) {
            IdentityError::InvalidArgument { reason, .. } => IdentityError::invalid("new_password", reason),
            other => other,
        })?;
        let password_hash = self.identity.hasher.hash(new_password).await?;
        let mut tx = self.identity.pool.begin().await?;
        let row: Option<(Uuid, bool, bool)> = sqlx::query_as(
            "SELECT user_id, used_at IS NOT NULL, expires_at <= now() FROM identity.password_reset_tokens
             WHERE token_hash = $1 FOR UPDATE",
        )
        .bind(hash.as_slice())
        .fetch_optional(&mut *tx)
        .await?;
        let (user_id, used, expired) = row.ok_or(IdentityError::NotFound("password reset token"))?;
        if used || expired {
            return Err(IdentityError::FailedPrecondition(
                "this reset token was already used or has expired; ask for a new one".into(),
            ));
        }
        // Every outstanding reset token of the user ends with this one.
        sqlx::query("UPDATE identity.password_reset_tokens SET used_at = now() WHERE user_id = $1 AND used_at IS NULL")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE identity.users SET password_hash = $2, password_changed_at = now() WHERE id = $1")
            .bind(user_id)
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        sessions::revoke_user_sessions(&mut tx, user_id, None, RevokeReason::PasswordChanged).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn sessions_of(
        &self,
        caller: &flatrender_kit::auth::Caller,
        page: Option<&flatrender_proto::flatrender::common::v1::PageRequest>,
    ) -> Result<pb::ListSessionsResponse> {
        let limit = page_size(page)?;
        let paging = super::paging::NewestFirst::new(&[&"sessions", &caller.user_id]);
        let (after_at, after_id) = paging.after(page)?.unzip();
        let mut rows: Vec<SessionRow> = sqlx::query_as(
            "SELECT id, host(ip) AS ip, user_agent, host(last_used_ip) AS last_used_ip, created_at, last_used_at,
                    expires_at, mfa_verified
             FROM identity.sessions
             WHERE user_id = $1 AND tenant_id = $2 AND revoked_at IS NULL AND expires_at > now()
               AND ($3::timestamptz IS NULL OR (last_used_at, id) < ($3, $4))
             ORDER BY last_used_at DESC, id DESC LIMIT $5",
        )
        .bind(caller.user_id)
        .bind(caller.tenant_id)
        .bind(after_at)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await?;
        let next = paging.next(&mut rows, limit, |last| (last.last_used_at, last.id));
        let sessions = rows
            .into_iter()
            .map(|s| pb::Session {
                id: s.id.to_string(),
                ip_address: s.ip.unwrap_or_default(),
                user_agent: s.user_agent.unwrap_or_default(),
                last_used_ip: s.last_used_ip.unwrap_or_default(),
                created_at: Some(timestamp(s.created_at)),
                last_used_at: Some(timestamp(s.last_used_at)),
                expires_at: Some(timestamp(s.expires_at)),
                current: caller.session_id == Some(s.id),
                mfa_verified: s.mfa_verified,
            })
            .collect();
        Ok(pb::ListSessionsResponse {
            sessions,
            page: Some(flatrender_proto::flatrender::common::v1::PageResponse { next_page_token: next }),
        })
    }
}

struct SessionRow {
    id: Uuid,
    ip: Option<String>,
    user_agent: Option<String>,
    last_used_ip: Option<String>,
    created_at: OffsetDateTime,
    last_used_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    mfa_verified: bool,
}

from_row!(SessionRow { id, ip, user_agent, last_used_ip, created_at, last_used_at, expires_at, mfa_verified });

/// A time as microseconds since the epoch, the database's precision, for page tokens.
pub(crate) fn micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX)
}

/// The time of [`micros`]; out-of-range values (only from a forged token) clamp to the epoch.
pub(crate) fn from_micros(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The outbox envelope of an event about `user`.
fn user_event(user: &UserRow) -> EventMeta<'static> {
    EventMeta {
        source: "identity",
        aggregate_type: "user",
        aggregate_id: user.id.to_string(),
        tenant_id: Some(user.tenant_id),
    }
}

/// Appends to the login audit (`failure` is `None` for a success); returns the entry's id, or
/// `None` when the tenant does not exist (nothing to audit against).
pub(crate) async fn record_attempt(
    conn: &mut PgConnection,
    tenant: Uuid,
    email: &str,
    user: Option<Uuid>,
    client: &ClientInfo,
    failure: Option<&str>,
) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "INSERT INTO identity.login_attempts (tenant_id, email, user_id, ip, user_agent, succeeded, failure_reason)
         SELECT $1, $2, $3, $4::inet, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM identity.tenants WHERE id = $1)
         RETURNING id",
    )
    .bind(tenant)
    .bind(email)
    .bind(user)
    .bind(client.ip.map(sessions::ip_text))
    .bind(client.user_agent.as_deref())
    .bind(failure.is_none())
    .bind(failure)
    .fetch_optional(&mut *conn)
    .await?)
}
