//! `UserService`: tenant admins (and platform admins, across tenants) administer users.
//!
//! A user id of another tenant is `NOT_FOUND`; only platform admins act on platform admins; no
//! admin changes their own role, suspends or deletes themselves.

use flatrender_kit::auth::{Caller, Role};
use flatrender_kit::outbox::{self, EventMeta};
use flatrender_proto::flatrender::common::v1::{PageResponse, SortDirection};
use flatrender_proto::flatrender::events::v1 as events;
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{IdentityApi, admin, page_size};
use crate::error::{IdentityError, Result};
use crate::sessions::{self, RevokeReason};
use crate::users::{self, USER_COLUMNS, UserRow, timestamp};
use crate::validate;

type Reply<T> = Result<Response<T>, Status>;

/// The user `id` as `caller` may act on it, locked for the change.
async fn target(conn: &mut PgConnection, caller: &Caller, id: &str) -> Result<UserRow> {
    let id = validate::uuid("user_id", id)?;
    let user = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
         WHERE u.id = $1 FOR UPDATE OF u"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match user {
        Some(user) if user.tenant_id == caller.tenant_id || caller.role == Role::PlatformAdmin => {
            if user.role == "platform_admin" && caller.role != Role::PlatformAdmin {
                return Err(IdentityError::PermissionDenied("only platform admins act on platform admins".into()));
            }
            Ok(user)
        }
        // Another tenant's user is indistinguishable from no user.
        _ => Err(IdentityError::NotFound("user")),
    }
}

/// What an API key may not do even with `users:write`: make admins, remove people for good,
/// take away a second factor, or act on an admin (so a leaked key cannot take a tenant over).
fn not_by_key(caller: &Caller, what: &str) -> Result<()> {
    if caller.api_key_id.is_some() {
        return Err(IdentityError::PermissionDenied(format!("API keys cannot {what}")));
    }
    Ok(())
}

fn not_self(caller: &Caller, user: &UserRow, what: &str) -> Result<()> {
    if caller.api_key_id.is_none() && caller.user_id == user.id {
        return Err(IdentityError::FailedPrecondition(format!("you cannot {what} yourself")));
    }
    Ok(())
}

fn meta(user: &UserRow) -> EventMeta<'static> {
    EventMeta {
        source: "identity",
        aggregate_type: "user",
        aggregate_id: user.id.to_string(),
        tenant_id: Some(user.tenant_id),
    }
}

#[tonic::async_trait]
impl pb::user_service_server::UserService for IdentityApi {
    async fn list_users(&self, request: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersResponse> {
        let caller = admin(&request)?;
        Ok(Response::new(self.users_page(&caller, request.into_inner()).await?))
    }

    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let caller = admin(&request)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.get_ref().user_id).await?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user.to_proto()) }))
    }

    async fn update_user_role(&self, request: Request<pb::UpdateUserRoleRequest>) -> Reply<pb::UpdateUserRoleResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let role = match pb::Role::try_from(request.role) {
            Ok(pb::Role::User) => "user",
            Ok(pb::Role::TenantAdmin) => "tenant_admin",
            Ok(pb::Role::PlatformAdmin) if caller.role == Role::PlatformAdmin => "platform_admin",
            Ok(pb::Role::PlatformAdmin) => {
                return Err(IdentityError::PermissionDenied("only platform admins grant PLATFORM_ADMIN".into()).into());
            }
            _ => return Err(IdentityError::invalid("role", "name a role").into()),
        };
        if role != "user" {
            not_by_key(&caller, "grant admin roles")?;
        }
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.user_id).await?;
        not_self(&caller, &user, "change the role of")?;
        if user.role != "user" {
            not_by_key(&caller, "act on admins")?;
        }
        if role == "platform_admin" && user.tenant_id != validate::DEFAULT_TENANT {
            return Err(IdentityError::invalid("role", "PLATFORM_ADMIN is only for users of the default tenant").into());
        }
        sqlx::query("UPDATE identity.users SET role = $2 WHERE id = $1")
            .bind(user.id)
            .bind(role)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
        let user = users::by_id(&mut tx, user.tenant_id, user.id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::UpdateUserRoleResponse { user: Some(user.to_proto()) }))
    }

    async fn suspend_user(&self, request: Request<pb::SuspendUserRequest>) -> Reply<pb::SuspendUserResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let why = validate::reason("reason", &request.reason, false)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.user_id).await?;
        not_self(&caller, &user, "suspend")?;
        if user.role != "user" {
            not_by_key(&caller, "act on admins")?;
        }
        match user.status.as_str() {
            "deleted" => return Err(IdentityError::FailedPrecondition("the user was deleted".into()).into()),
            "suspended" => {}
            _ => {
                sqlx::query("UPDATE identity.users SET status = 'suspended', suspended_at = now() WHERE id = $1")
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(IdentityError::from)?;
                sessions::revoke_user_sessions(&mut tx, user.id, None, RevokeReason::UserDisabled).await?;
                outbox::publish(
                    &mut tx,
                    meta(&user),
                    &events::UserSuspended {
                        tenant_id: user.tenant_id.to_string(),
                        occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                        user_id: user.id.to_string(),
                        by_user_id: caller.user_id.to_string(),
                        reason: why,
                    },
                )
                .await
                .map_err(IdentityError::from)?;
            }
        }
        let user = users::by_id(&mut tx, user.tenant_id, user.id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::SuspendUserResponse { user: Some(user.to_proto()) }))
    }

    async fn reactivate_user(&self, request: Request<pb::ReactivateUserRequest>) -> Reply<pb::ReactivateUserResponse> {
        let caller = admin(&request)?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.get_ref().user_id).await?;
        match user.status.as_str() {
            "deleted" => return Err(IdentityError::FailedPrecondition("the user was deleted".into()).into()),
            "active" => {}
            _ => {
                sqlx::query("UPDATE identity.users SET status = 'active', suspended_at = NULL WHERE id = $1")
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(IdentityError::from)?;
                outbox::publish(
                    &mut tx,
                    meta(&user),
                    &events::UserReactivated {
                        tenant_id: user.tenant_id.to_string(),
                        occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                        user_id: user.id.to_string(),
                        by_user_id: caller.user_id.to_string(),
                    },
                )
                .await
                .map_err(IdentityError::from)?;
            }
        }
        let user = users::by_id(&mut tx, user.tenant_id, user.id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::ReactivateUserResponse { user: Some(user.to_proto()) }))
    }

    async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Reply<pb::DeleteUserResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let why = validate::reason("reason", &request.reason, false)?;
        not_by_key(&caller, "delete users")?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.user_id).await?;
        not_self(&caller, &user, "delete")?;
        if user.status != "deleted" {
            // The row stays for audit (its email stays taken); what lets it act goes.
            sqlx::query(
                "UPDATE identity.users SET status = 'deleted', deleted_at = now(), password_hash = NULL WHERE id = $1",
            )
            .bind(user.id)
            .execute(&mut *tx)
            .await
            .map_err(IdentityError::from)?;
            for statement in [
                "DELETE FROM identity.sessions WHERE user_id = $1",
                "DELETE FROM identity.mfa_factors WHERE user_id = $1",
                "DELETE FROM identity.mfa_recovery_codes WHERE user_id = $1",
                "DELETE FROM identity.push_subscriptions WHERE user_id = $1",
            ] {
                sqlx::query(statement).bind(user.id).execute(&mut *tx).await.map_err(IdentityError::from)?;
            }
            outbox::publish(
                &mut tx,
                meta(&user),
                &events::UserDeleted {
                    tenant_id: user.tenant_id.to_string(),
                    occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                    user_id: user.id.to_string(),
                    by_user_id: caller.user_id.to_string(),
                    reason: why,
                },
            )
            .await
            .map_err(IdentityError::from)?;
        }
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::DeleteUserResponse {}))
    }

    async fn reset_user_mfa(&self, request: Request<pb::ResetUserMfaRequest>) -> Reply<pb::ResetUserMfaResponse> {
        let caller = admin(&request)?;
        let request = request.into_inner();
        let why = validate::reason("reason", &request.reason, true)?;
        not_by_key(&caller, "reset a user's MFA")?;
        let mut tx = self.identity.pool.begin().await.map_err(IdentityError::from)?;
        let user = target(&mut tx, &caller, &request.user_id).await?;
        for statement in [
            "DELETE FROM identity.mfa_factors WHERE user_id = $1",
            "DELETE FROM identity.mfa_recovery_codes WHERE user_id = $1",
        ] {
            sqlx::query(statement).bind(user.id).execute(&mut *tx).await.map_err(IdentityError::from)?;
        }
        sessions::revoke_user_sessions(&mut tx, user.id, None, RevokeReason::Admin).await?;
        outbox::publish(
            &mut tx,
            meta(&user),
            &events::UserMfaReset {
                tenant_id: user.tenant_id.to_string(),
                occurred_at: Some(timestamp(OffsetDateTime::now_utc())),
                user_id: user.id.to_string(),
                by_user_id: caller.user_id.to_string(),
                reason: why,
            },
        )
        .await
        .map_err(IdentityError::from)?;
        let user = users::by_id(&mut tx, user.tenant_id, user.id).await?;
        tx.commit().await.map_err(IdentityError::from)?;
        Ok(Response::new(pb::ResetUserMfaResponse { user: Some(user.to_proto()) }))
    }

    async fn list_login_attempts(
        &self,
        request: Request<pb::ListLoginAttemptsRequest>,
    ) -> Reply<pb::ListLoginAttemptsResponse> {
        let caller = admin(&request)?;
        Ok(Response::new(self.login_attempts_page(&caller, request.into_inner()).await?))
    }
}

/// How ListUsers sorts: the key as text (so one keyset query serves every order) and whether
/// the order is descending.
fn sort_key(field: pb::UserSortField) -> &'static str {
    match field {
        pb::UserSortField::Email => "u.email COLLATE \"C\"",
        pb::UserSortField::DisplayName => "lower(u.display_name) COLLATE \"C\"",
        pb::UserSortField::LastLoginAt => {
            "lpad(coalesce((extract(epoch FROM u.last_login_at) * 1000000)::bigint, 0)::text, 20, '0') COLLATE \"C\""
        }
        pb::UserSortField::Unspecified => {
            "lpad((extract(epoch FROM u.created_at) * 1000000)::bigint::text, 20, '0') COLLATE \"C\""
        }
    }
}

impl IdentityApi {
    async fn users_page(&self, caller: &Caller, request: pb::ListUsersRequest) -> Result<pb::ListUsersResponse> {
        let tenant = super::tenant_scope(caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let limit = page_size(request.page.as_ref())?;
        let query = request.query.trim().to_lowercase();
        if query.chars().count() > 100 {
            return Err(IdentityError::invalid("query", "must be at most 100 characters"));
        }
        let role = match pb::Role::try_from(request.role).unwrap_or(pb::Role::Unspecified) {
            pb::Role::Unspecified => None,
            pb::Role::User => Some("user"),
            pb::Role::TenantAdmin => Some("tenant_admin"),
            pb::Role::PlatformAdmin => Some("platform_admin"),
        };
        let statuses: Vec<&str> = match pb::UserStatus::try_from(request.status).unwrap_or(pb::UserStatus::Unspecified)
        {
            pb::UserStatus::Unspecified => vec!["active", "suspended"],
            pb::UserStatus::Active => vec!["active"],
            pb::UserStatus::Suspended => vec!["suspended"],
            pb::UserStatus::Deleted => vec!["deleted"],
        };
        let field = pb::UserSortField::try_from(request.sort_field).unwrap_or(pb::UserSortField::Unspecified);
        let text_sort = matches!(field, pb::UserSortField::Email | pb::UserSortField::DisplayName);
        let descending = match SortDirection::try_from(request.sort_direction).unwrap_or(SortDirection::Unspecified) {
            SortDirection::Ascending => false,
            SortDirection::Descending => true,
            SortDirection::Unspecified => !text_sort,
        };
        let print =
            flatrender_kit::page::fingerprint(&[&"users", &tenant, &query, &role, &statuses, &field, &descending]);
        let after: Option<(String, Uuid)> =
            flatrender_kit::page::decode(&print, request.page.as_ref().map_or("", |p| p.page_token.as_str()))
                .map_err(|e| IdentityError::invalid("page.page_token", e.to_string()))?;
        let (after_key, after_id) = after.unzip();
        let key = sort_key(field);
        let (cmp, order) = if descending { ("<", "DESC") } else { (">", "ASC") };
        // `query` matches as a plain substring: LIKE's wildcards in it are escaped.
        let pattern = validate::like_pattern(&query);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS}, {key} AS sort_key FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
             WHERE u.tenant_id = $1 AND u.status = ANY($2)
               AND ($3::text IS NULL OR u.role = $3)
               AND ($4 = '%%' OR lower(u.email) LIKE $4 OR lower(u.display_name) LIKE $4)
               AND ($5::text IS NULL OR ({key}, u.id) {cmp} ($5 COLLATE \"C\", $6))
             ORDER BY {key} {order}, u.id {order} LIMIT $7"
        )))
        .bind(tenant)
        .bind(&statuses)
        .bind(role)
        .bind(&pattern)
        .bind(after_key)
        .bind(after_id)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await?;
        let mut page = Vec::with_capacity(rows.len());
        for row in &rows {
            use sqlx::{FromRow as _, Row as _};
            page.push((UserRow::from_row(row)?, row.try_get::<String, _>("sort_key")?));
        }
        let next = flatrender_kit::page::next_token(&mut page, limit, |(user, key)| {
            flatrender_kit::page::encode(&print, &(key.clone(), user.id))
        });
        Ok(pb::ListUsersResponse {
            users: page.iter().map(|(user, _)| user.to_proto()).collect(),
            page: Some(PageResponse { next_page_token: next }),
        })
    }

    async fn login_attempts_page(
        &self,
        caller: &Caller,
        request: pb::ListLoginAttemptsRequest,
    ) -> Result<pb::ListLoginAttemptsResponse> {
        let tenant = super::tenant_scope(caller, &request.tenant_id, super::Foreign::Forbidden)?;
        let limit = page_size(request.page.as_ref())?;
        let user = validate::optional_uuid("user_id", &request.user_id)?;
        let email = (!request.email.is_empty()).then(|| request.email.trim().to_lowercase());
        let ip = match request.ip_address.as_str() {
            "" => None,
            text => Some(
                text.parse::<std::net::IpAddr>()
                    .map_err(|_| IdentityError::invalid("ip_address", "must be an IPv4 or IPv6 address"))?
                    .to_string(),
            ),
        };
        let range = request.attempted.unwrap_or_default();
        let since = range
            .start_time
            .map(|t| OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let until = range
            .end_time
            .map(|t| OffsetDateTime::from_unix_timestamp(t.seconds).unwrap_or(OffsetDateTime::UNIX_EPOCH));
        let print = flatrender_kit::page::fingerprint(&[
            &"attempts",
            &tenant,
            &user,
            &email,
            &ip,
            &request.failures_only,
            &since,
            &until,
        ]);
        let after: Option<i64> =
            flatrender_kit::page::decode(&print, request.page.as_ref().map_or("", |p| p.page_token.as_str()))
                .map_err(|e| IdentityError::invalid("page.page_token", e.to_string()))?;
        let mut rows: Vec<AttemptRow> = sqlx::query_as(
            "SELECT id, tenant_id, email, user_id, host(ip) AS ip, user_agent, succeeded, failure_reason, attempted_at
             FROM identity.login_attempts
             WHERE tenant_id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND ($3::text IS NULL OR email = $3)
               AND ($4::inet IS NULL OR ip = $4::inet) AND (NOT $5 OR NOT succeeded)
               AND ($6::timestamptz IS NULL OR attempted_at >= $6) AND ($7::timestamptz IS NULL OR attempted_at < $7)
               AND ($8::int8 IS NULL OR id < $8)
             ORDER BY id DESC LIMIT $9",
        )
        .bind(tenant)
        .bind(user)
        .bind(email)
        .bind(ip)
        .bind(request.failures_only)
        .bind(since)
        .bind(until)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(&self.identity.pool)
        .await?;
        let next =
            flatrender_kit::page::next_token(&mut rows, limit, |last| flatrender_kit::page::encode(&print, &last.id));
        Ok(pb::ListLoginAttemptsResponse {
            attempts: rows.iter().map(AttemptRow::to_proto).collect(),
            page: Some(PageResponse { next_page_token: next }),
        })
    }
}

struct AttemptRow {
    id: i64,
    tenant_id: Uuid,
    email: String,
    user_id: Option<Uuid>,
    ip: Option<String>,
    user_agent: Option<String>,
    succeeded: bool,
    failure_reason: Option<String>,
    attempted_at: OffsetDateTime,
}

from_row!(AttemptRow { id, tenant_id, email, user_id, ip, user_agent, succeeded, failure_reason, attempted_at });

impl AttemptRow {
    fn to_proto(&self) -> pb::LoginAttempt {
        use pb::LoginFailureReason as R;
        let reason = match self.failure_reason.as_deref() {
            Some("bad_credentials") => R::BadCredentials,
            Some("unknown_user") => R::UnknownUser,
            Some("throttled") => R::Throttled,
            Some("mfa_required") => R::MfaRequired,
            Some("bad_mfa_code") => R::BadMfaCode,
            Some("user_suspended") => R::UserSuspended,
            Some("tenant_suspended") => R::TenantSuspended,
            Some("email_unverified") => R::EmailUnverified,
            _ => R::Unspecified,
        };
        pb::LoginAttempt {
            id: u64::try_from(self.id).unwrap_or(0),
            tenant_id: self.tenant_id.to_string(),
            email: self.email.clone(),
            user_id: self.user_id.map(|u| u.to_string()).unwrap_or_default(),
            ip_address: self.ip.clone().unwrap_or_default(),
            user_agent: self.user_agent.clone().unwrap_or_default(),
            succeeded: self.succeeded,
            failure_reason: reason as i32,
            attempted_at: Some(timestamp(self.attempted_at)),
        }
    }
}
