//! User accounts as stored, and as the API shows them.

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::identity::v1 as pb;
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{IdentityError, Result};

/// A row of `identity.users` with what login and the API need beside it.
#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub email: String,
    pub password_hash: Option<String>,
    pub display_name: String,
    pub avatar_file_id: Option<Uuid>,
    pub role: String,
    pub status: String,
    pub email_verified_at: Option<OffsetDateTime>,
    pub locale: String,
    pub time_zone: String,
    pub last_login_at: Option<OffsetDateTime>,
    pub suspended_at: Option<OffsetDateTime>,
    pub deleted_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Whether a confirmed MFA factor exists.
    pub mfa_enabled: bool,
    /// The tenant's status.
    pub tenant_status: String,
}

from_row!(UserRow {
    id,
    tenant_id,
    email,
    password_hash,
    display_name,
    avatar_file_id,
    role,
    status,
    email_verified_at,
    locale,
    time_zone,
    last_login_at,
    suspended_at,
    deleted_at,
    created_at,
    updated_at,
    mfa_enabled,
    tenant_status
});

/// The columns of [`UserRow`], for `FROM identity.users u JOIN identity.tenants t`.
pub const USER_COLUMNS: &str = "u.id, u.tenant_id, u.email, u.password_hash, u.display_name, u.avatar_file_id, u.role,
    u.status, u.email_verified_at, u.locale, u.time_zone, u.last_login_at, u.suspended_at, u.deleted_at,
    u.created_at, u.updated_at,
    EXISTS (SELECT 1 FROM identity.mfa_factors f WHERE f.user_id = u.id AND f.confirmed_at IS NOT NULL) AS mfa_enabled,
    t.status AS tenant_status";

impl UserRow {
    /// The stored role.
    pub fn role(&self) -> Result<Role> {
        role_from_db(&self.role)
    }

    /// Refuses users who may not sign in: suspended or deleted, or of a suspended tenant.
    pub fn may_sign_in(&self) -> Result<()> {
        match (self.status.as_str(), self.tenant_status.as_str()) {
            ("active", "active") => Ok(()),
            ("suspended", _) => Err(IdentityError::PermissionDenied("this account is suspended".into())),
            ("deleted", _) => Err(IdentityError::PermissionDenied("this account was deleted".into())),
            _ => Err(IdentityError::PermissionDenied("this account's organisation is suspended".into())),
        }
    }

    /// The API's view (never the password hash).
    pub fn to_proto(&self) -> pb::User {
        pb::User {
            id: self.id.to_string(),
            tenant_id: self.tenant_id.to_string(),
            email: self.email.clone(),
            email_verified: self.email_verified_at.is_some(),
            display_name: self.display_name.clone(),
            avatar_file_id: self.avatar_file_id.map(|id| id.to_string()).unwrap_or_default(),
            locale: self.locale.clone(),
            time_zone: self.time_zone.clone(),
            role: role_to_proto(&self.role) as i32,
            status: match self.status.as_str() {
                "active" => pb::UserStatus::Active,
                "suspended" => pb::UserStatus::Suspended,
                "deleted" => pb::UserStatus::Deleted,
                _ => pb::UserStatus::Unspecified,
            } as i32,
            email_verified_at: self.email_verified_at.map(timestamp),
            mfa_enabled: self.mfa_enabled,
            created_at: Some(timestamp(self.created_at)),
            updated_at: Some(timestamp(self.updated_at)),
            last_login_at: self.last_login_at.map(timestamp),
            suspended_at: self.suspended_at.map(timestamp),
            deleted_at: self.deleted_at.map(timestamp),
        }
    }
}

/// The user `id` of `tenant`, or `NOT_FOUND` (also for another tenant's user).
pub async fn by_id(conn: &mut PgConnection, tenant: Uuid, id: Uuid) -> Result<UserRow> {
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
         WHERE u.id = $1 AND u.tenant_id = $2"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(IdentityError::NotFound("user"))
}

/// The user with `email` in `tenant`, if any.
pub async fn by_email(conn: &mut PgConnection, tenant: Uuid, email: &str) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM identity.users u JOIN identity.tenants t ON t.id = u.tenant_id
         WHERE u.tenant_id = $1 AND u.email = $2"
    )))
    .bind(tenant)
    .bind(email)
    .fetch_optional(&mut *conn)
    .await?)
}

/// A stored role name as the kit's role.
pub fn role_from_db(role: &str) -> Result<Role> {
    match role {
        "user" => Ok(Role::User),
        "tenant_admin" => Ok(Role::TenantAdmin),
        "platform_admin" => Ok(Role::PlatformAdmin),
        other => Err(IdentityError::Corrupt(format!("unknown role {other}"))),
    }
}

fn role_to_proto(role: &str) -> pb::Role {
    match role {
        "user" => pb::Role::User,
        "tenant_admin" => pb::Role::TenantAdmin,
        "platform_admin" => pb::Role::PlatformAdmin,
        _ => pb::Role::Unspecified,
    }
}

/// A database time as a protobuf timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    // Nanoseconds of a second always fit in i32.
    prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: at.nanosecond() as i32 }
}
