//! `MfaService`, and the second step of a login for accounts with MFA.
//!
//! A login challenge is a short-lived JWT of its own type (`mfa-challenge+jwt`, which no access
//! token verifier accepts) signed with identity's current key. It names the login-audit entry
//! of its password check, and its state lives in the audit after that entry: five wrong codes
//! void it, and so does a completed login.

use flatrender_kit::auth::Caller;
use flatrender_proto::flatrender::identity::v1 as pb;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::auth::record_attempt;
use super::{IdentityApi, user};
use crate::client::ClientInfo;
use crate::credentials::recovery;
use crate::credentials::totp::{self, TotpSecret};
use crate::error::{IdentityError, Result};
use crate::sessions::{self, RevokeReason, unix};
use crate::throttle::Subject as Throttled;
use crate::users::{self, UserRow, timestamp};
use crate::validate;

/// The `typ` of a login challenge.
const CHALLENGE_TYPE: &str = "mfa-challenge+jwt";
/// Wrong codes a challenge survives.
const MAX_WRONG_CODES: i64 = 5;
/// How long an unconfirmed enrolment stays valid, in minutes.
const ENROLMENT_MINUTES: i64 = 15;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Debug, Serialize, Deserialize)]
struct ChallengeClaims {
    iss: String,
    aud: String,
    sub: Uuid,
    tid: Uuid,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: Uuid,
    /// The login-audit entry of the password check that opened the challenge.
    aid: i64,
}

/// A code the user typed.
enum Code<'a> {
    Totp(&'a str),
    Recovery(&'a str),
}

#[tonic::async_trait]
impl pb::mfa_service_server::MfaService for IdentityApi {
    async fn get_mfa_status(&self, request: Request<pb::GetMfaStatusRequest>) -> Reply<pb::GetMfaStatusResponse> {
        let caller = user(&request)?;
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let factors = factors_of(&mut conn, caller.user_id).await?;
        let remaining = recovery_codes_left(&mut conn, caller.user_id).await?;
        Ok(Response::new(pb::GetMfaStatusResponse {
            enabled: factors.iter().any(|f| f.confirmed_at.is_some()),
            factors: factors.iter().map(FactorRow::to_proto).collect(),
            recovery_codes_remaining: remaining,
        }))
    }

    async fn enroll_totp(&self, request: Request<pb::EnrollTotpRequest>) -> Reply<pb::EnrollTotpResponse> {
        let caller = user(&request)?;
        Ok(Response::new(self.enroll(&caller, request.into_inner()).await?))
    }

    async fn confirm_totp(&self, request: Request<pb::ConfirmTotpRequest>) -> Reply<pb::ConfirmTotpResponse> {
        let caller = user(&request)?;
        Ok(Response::new(self.confirm(&caller, request.into_inner()).await?))
    }

    async fn disable_mfa(&self, request: Request<pb::DisableMfaRequest>) -> Reply<pb::DisableMfaResponse> {
        let caller = user(&request)?;
        let request = request.into_inner();
        let mut conn = self.identity.pool.acquire().await.map_err(IdentityError::from)?;
        let me = users::by_id(&mut conn, caller.tenant_id, caller.user_id).await?;
        drop(conn);
        self.check_password(&me, &request.password)
            .await
            .map_err(|_| Status::unauthenticated("the password is wrong"))?;
        let code = match &request.code {
            Some(pb::disable_mfa_request::Code::TotpCode(c)) => Code::Totp(c),
            Some(pb::disable_mfa_request::Code::RecoveryCode(c)) => Code::Recovery(c),
            None => return Err(Status::unauthenticated("a current TOTP or recovery code is required")),
        };
        self.reserve_mfa_attempt(me.id).await?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        if !check_code(&mut tx, me.id, &code).await? {
            return Err(Status::unauthenticated("the code is wrong or was already used"));
        }
        self.mfa_attempt_succeeded(&mut tx, me.id).await?;
        sqlx::query("DELETE FROM identity.mfa_factors WHERE user_id = $1")
            .bind(me.id)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        sqlx::query("DELETE FROM identity.mfa_recovery_codes WHERE user_id = $1")
            .bind(me.id)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        sessions::revoke_user_sessions(&mut tx, me.id, caller.session_id, RevokeReason::Admin).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::DisableMfaResponse {}))
    }

    async fn regenerate_recovery_codes(
        &self,
        request: Request<pb::RegenerateRecoveryCodesRequest>,
    ) -> Reply<pb::RegenerateRecoveryCodesResponse> {
        let caller = user(&request)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let enabled: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM identity.mfa_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
        )
        .bind(caller.user_id)
        .fetch_one(&mut *tx)
        .await
        .map_err(IdentityError::from)?;
        if !enabled {
            return Err(Status::failed_precondition("MFA is not enabled"));
        }
        self.reserve_mfa_attempt(caller.user_id).await?;
        if !check_code(&mut tx, caller.user_id, &Code::Totp(&request.get_ref().totp_code)).await? {
            return Err(Status::unauthenticated("the code is wrong or was already used"));
        }
        self.mfa_attempt_succeeded(&mut tx, caller.user_id).await?;
        let codes = replace_recovery_codes(&mut tx, caller.tenant_id, caller.user_id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::RegenerateRecoveryCodesResponse { recovery_codes: codes }))
    }
}

impl IdentityApi {
    /// Reserves one MFA code attempt of `user`, or refuses it while the user is locked out.
    async fn reserve_mfa_attempt(&self, user: Uuid) -> Result<()> {
        let mut conn = self.identity.pool.acquire().await?;
        match self.identity.settings.throttle.reserve(&mut conn, &[Throttled::mfa(user)]).await? {
            Some(retry_after) => Err(IdentityError::Throttled { what: "too many wrong codes", retry_after }),
            None => Ok(()),
        }
    }

    /// Gives the reserved attempt back after a right code.
    async fn mfa_attempt_succeeded(&self, conn: &mut PgConnection, user: Uuid) -> Result<()> {
        self.identity.settings.throttle.succeed(conn, &[Throttled::mfa(user)]).await
    }

    /// A challenge for `user`, whose password was right.
    pub(crate) async fn mfa_challenge(&self, user: &UserRow, attempt: i64) -> Result<pb::MfaChallenge> {
        let now = OffsetDateTime::now_utc();
        let expires = now + self.identity.settings.mfa_challenge_ttl;
        let claims = ChallengeClaims {
            iss: self.identity.settings.issuer.clone(),
            aud: self.challenge_audience(),
            sub: user.id,
            tid: user.tenant_id,
            iat: unix(now),
            nbf: unix(now),
            exp: unix(expires),
            jti: Uuid::new_v4(),
            aid: attempt,
        };
        let signer = self.identity.ring.signer().await?;
        let token = signer.sign_typed(CHALLENGE_TYPE, &claims).map_err(|e| IdentityError::Keys(e.to_string()))?;
        Ok(pb::MfaChallenge {
            challenge_token: token,
            expires_at: Some(timestamp(expires)),
            methods: vec![pb::MfaMethod::Totp as i32, pb::MfaMethod::RecoveryCode as i32],
        })
    }

    fn challenge_audience(&self) -> String {
        format!("{}#mfa", self.identity.settings.audience)
    }

    fn open_challenge(&self, token: &str) -> Result<ChallengeClaims> {
        let refused = || IdentityError::unauthenticated("the MFA challenge is not valid; log in again");
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused())?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(CHALLENGE_TYPE) {
            return Err(refused());
        }
        let key = header.kid.as_deref().and_then(|kid| self.identity.ring.decoding_key(kid)).ok_or_else(refused)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = flatrender_kit::auth::LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.identity.settings.issuer]);
        validation.set_audience(&[self.challenge_audience()]);
        let data = jsonwebtoken::decode::<ChallengeClaims>(token, &key, &validation).map_err(|_| refused())?;
        Ok(data.claims)
    }

    pub(crate) async fn finish_mfa_login(
        &self,
        request: pb::CompleteMfaLoginRequest,
        client: &ClientInfo,
    ) -> Result<pb::CompleteMfaLoginResponse> {
        let claims = self.open_challenge(&request.challenge_token)?;
        let code = match &request.code {
            Some(pb::complete_mfa_login_request::Code::TotpCode(c)) => Code::Totp(c),
            Some(pb::complete_mfa_login_request::Code::RecoveryCode(c)) => Code::Recovery(c),
            None => return Err(IdentityError::invalid("code", "give a TOTP code or a recovery code")),
        };
        self.reserve_mfa_attempt(claims.sub).await?;
        let mut tx = self.identity.pool.begin().await?;
        // Serialises the attempts of one user, so the wrong-code count and the single use hold.
        let user = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {} FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
             WHERE u.id = $1 AND u.tenant_id = $2 FOR UPDATE OF u",
            users::USER_COLUMNS
        )))
        .bind(claims.sub)
        .bind(claims.tid)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| IdentityError::unauthenticated("the MFA challenge is not valid; log in again"))?;
        user.may_sign_in()?;
        let (wrong, completed): (i64, bool) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE failure_reason = 'bad_mfa_code'), bool_or(succeeded)
             FROM identity.login_attempts WHERE user_id = $1 AND id > $2",
        )
        .bind(user.id)
        .bind(claims.aid)
        .fetch_one(&mut *tx)
        .await
        .map(|(w, c): (i64, Option<bool>)| (w, c.unwrap_or(false)))?;
        if wrong >= MAX_WRONG_CODES || completed {
            return Err(IdentityError::FailedPrecondition("this MFA challenge is used up; log in again".into()));
        }
        if !check_code(&mut tx, user.id, &code).await? {
            record_attempt(&mut tx, user.tenant_id, &user.email, Some(user.id), client, Some("bad_mfa_code")).await?;
            tx.commit().await?;
            return Err(IdentityError::unauthenticated("the code is wrong or was already used"));
        }
        self.mfa_attempt_succeeded(&mut tx, user.id).await?;
        let tokens = self.complete_login(&mut tx, &user, client, true).await?;
        let remaining = recovery_codes_left(&mut tx, user.id).await?;
        tx.commit().await?;
        Ok(pb::CompleteMfaLoginResponse {
            tokens: Some(tokens),
            user: Some(user.to_proto()),
            recovery_codes_remaining: remaining,
        })
    }

    async fn enroll(&self, caller: &Caller, request: pb::EnrollTotpRequest) -> Result<pb::EnrollTotpResponse> {
        let label = match request.label.trim() {
            "" => "Authenticator".to_owned(),
            l if l.chars().count() > 100 || l.chars().any(char::is_control) => {
                return Err(IdentityError::invalid("label", "must be at most 100 printable characters"));
            }
            l => l.to_owned(),
        };
        let mut conn = self.identity.pool.acquire().await?;
        let me = users::by_id(&mut conn, caller.tenant_id, caller.user_id).await?;
        drop(conn);
        self.check_password(&me, &request.password)
            .await
            .map_err(|_| IdentityError::unauthenticated("the password is wrong"))?;
        let mut tx = self.identity.pool.begin().await?;
        if me.mfa_enabled {
            return Err(IdentityError::AlreadyExists("a TOTP factor is already active; disable MFA first".into()));
        }
        sqlx::query("DELETE FROM identity.mfa_factors WHERE user_id = $1 AND confirmed_at IS NULL")
            .bind(me.id)
            .execute(&mut *tx)
            .await?;
        let secret = TotpSecret::generate();
        let (factor_id, created_at): (Uuid, OffsetDateTime) = sqlx::query_as(
            "INSERT INTO identity.mfa_factors (tenant_id, user_id, label, secret) VALUES ($1, $2, $3, $4)
             RETURNING id, created_at",
        )
        .bind(me.tenant_id)
        .bind(me.id)
        .bind(&label)
        .bind(secret.as_bytes())
        .fetch_one(&mut *tx)
        .await?;
        let issuer: String = sqlx::query_scalar(
            "SELECT coalesce(b.display_name, t.name) FROM identity.tenants t
             LEFT JOIN identity.tenant_branding b ON b.tenant_id = t.id WHERE t.id = $1",
        )
        .bind(me.tenant_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(pb::EnrollTotpResponse {
            factor_id: factor_id.to_string(),
            secret: secret.base32(),
            otpauth_url: totp::otpauth_url(&secret, &issuer, &me.email),
            expires_at: Some(timestamp(created_at + time::Duration::minutes(ENROLMENT_MINUTES))),
        })
    }

    async fn confirm(&self, caller: &Caller, request: pb::ConfirmTotpRequest) -> Result<pb::ConfirmTotpResponse> {
        let factor_id = validate::uuid("factor_id", &request.factor_id)?;
        let mut tx = self.identity.pool.begin().await?;
        let factor: Option<(Vec<u8>, Option<OffsetDateTime>, bool)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT secret, confirmed_at, created_at < now() - interval '{ENROLMENT_MINUTES} minutes'
             FROM identity.mfa_factors WHERE id = $1 AND user_id = $2 AND tenant_id = $3 FOR UPDATE"
        )))
        .bind(factor_id)
        .bind(caller.user_id)
        .bind(caller.tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        let (secret, confirmed_at, expired) = factor.ok_or(IdentityError::NotFound("factor"))?;
        if confirmed_at.is_some() {
            return Err(IdentityError::FailedPrecondition("this factor is already confirmed".into()));
        }
        if expired {
            return Err(IdentityError::FailedPrecondition("this enrolment has expired; start again".into()));
        }
        let secret =
            TotpSecret::from_bytes(&secret).ok_or_else(|| IdentityError::Corrupt("TOTP secret length".into()))?;
        let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
        let step = totp::verify(&secret, &request.code, now, None)
            .ok_or_else(|| IdentityError::invalid("code", "is wrong; check the time on the device"))?;
        let confirmed = sqlx::query(
            "UPDATE identity.mfa_factors SET confirmed_at = now(), last_used_step = $2, last_used_at = now() WHERE id = $1",
        )
        .bind(factor_id)
        .bind(i64::try_from(step).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await;
        match confirmed {
            Ok(_) => {}
            Err(e) if flatrender_kit::db::is_unique_violation(&e, "mfa_factors_user_kind_confirmed_key") => {
                return Err(IdentityError::AlreadyExists("a TOTP factor is already active".into()));
            }
            Err(e) => return Err(e.into()),
        }
        let codes = replace_recovery_codes(&mut tx, caller.tenant_id, caller.user_id).await?;
        let factor = factors_of(&mut tx, caller.user_id)
            .await?
            .into_iter()
            .find(|f| f.id == factor_id)
            .ok_or(IdentityError::NotFound("factor"))?;
        tx.commit().await?;
        Ok(pb::ConfirmTotpResponse { factor: Some(factor.to_proto()), recovery_codes: codes })
    }
}

/// Checks `code` for `user` and uses it up: a TOTP step is recorded, a recovery code spent.
async fn check_code(conn: &mut PgConnection, user: Uuid, code: &Code<'_>) -> Result<bool> {
    match code {
        Code::Totp(code) => {
            let factor: Option<(Uuid, Vec<u8>, Option<i64>)> = sqlx::query_as(
                "SELECT id, secret, last_used_step FROM identity.mfa_factors
                 WHERE user_id = $1 AND confirmed_at IS NOT NULL FOR UPDATE",
            )
            .bind(user)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((id, secret, last)) = factor else { return Ok(false) };
            let secret =
                TotpSecret::from_bytes(&secret).ok_or_else(|| IdentityError::Corrupt("TOTP secret length".into()))?;
            let now = u64::try_from(OffsetDateTime::now_utc().unix_timestamp()).unwrap_or(0);
            let last = last.and_then(|l| u64::try_from(l).ok());
            let Some(step) = totp::verify(&secret, code, now, last) else { return Ok(false) };
            sqlx::query("UPDATE identity.mfa_factors SET last_used_step = $2, last_used_at = now() WHERE id = $1")
                .bind(id)
                .bind(i64::try_from(step).unwrap_or(i64::MAX))
                .execute(&mut *conn)
                .await?;
            Ok(true)
        }
        Code::Recovery(code) => {
            let Some(normalized) = recovery::normalize(code) else { return Ok(false) };
            let spent = sqlx::query(
                "UPDATE identity.mfa_recovery_codes SET used_at = now()
                 WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
            )
            .bind(user)
            .bind(recovery::hash(user, &normalized).as_slice())
            .execute(&mut *conn)
            .await?;
            Ok(spent.rows_affected() == 1)
        }
    }
}

/// Replaces the user's recovery codes with a new set and returns it for display, this once.
async fn replace_recovery_codes(conn: &mut PgConnection, tenant: Uuid, user: Uuid) -> Result<Vec<String>> {
    sqlx::query("DELETE FROM identity.mfa_recovery_codes WHERE user_id = $1").bind(user).execute(&mut *conn).await?;
    let codes = recovery::generate(user, recovery::SET_SIZE);
    let hashes: Vec<Vec<u8>> = codes.iter().map(|c| c.hash.to_vec()).collect();
    sqlx::query(
        "INSERT INTO identity.mfa_recovery_codes (tenant_id, user_id, code_hash) SELECT $1, $2, h FROM unnest($3::bytea[]) AS h",
    )
    .bind(tenant)
    .bind(user)
    .bind(hashes)
    .execute(&mut *conn)
    .await?;
    Ok(codes.into_iter().map(|c| c.display).collect())
}

async fn recovery_codes_left(conn: &mut PgConnection, user: Uuid) -> Result<u32> {
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM identity.mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL")
            .bind(user)
            .fetch_one(&mut *conn)
            .await?;
    Ok(u32::try_from(left).unwrap_or(0))
}

struct FactorRow {
    id: Uuid,
    label: Option<String>,
    created_at: OffsetDateTime,
    confirmed_at: Option<OffsetDateTime>,
    last_used_at: Option<OffsetDateTime>,
}

from_row!(FactorRow { id, label, created_at, confirmed_at, last_used_at });

impl FactorRow {
    fn to_proto(&self) -> pb::MfaFactor {
        pb::MfaFactor {
            id: self.id.to_string(),
            r#type: pb::MfaFactorType::Totp as i32,
            label: self.label.clone().unwrap_or_default(),
            created_at: Some(timestamp(self.created_at)),
            confirmed_at: self.confirmed_at.map(timestamp),
            last_used_at: self.last_used_at.map(timestamp),
        }
    }
}

async fn factors_of(conn: &mut PgConnection, user: Uuid) -> Result<Vec<FactorRow>> {
    Ok(sqlx::query_as(
        "SELECT id, label, created_at, confirmed_at, last_used_at FROM identity.mfa_factors
         WHERE user_id = $1 ORDER BY created_at",
    )
    .bind(user)
    .fetch_all(&mut *conn)
    .await?)
}
