//! Who may reach which files, folders, sessions and quotas.
//!
//! - A user reaches what they own in their tenant.
//! - A tenant admin reaches everything of their tenant, tenant-owned objects included.
//! - A platform admin reaches everything.
//! - A service (service credential) reaches any tenant's objects; calls that create or list
//!   name the tenant they act for.
//!
//! Whatever a caller cannot reach does not exist for them: `NOT_FOUND`, never
//! `PERMISSION_DENIED`. Only acting beyond one's role (a user naming another owner, a user
//! setting retention) is `PERMISSION_DENIED`, since that says nothing about any object.

use flatrender_kit::auth::{Caller, Role, ServiceName};
use uuid::Uuid;

use crate::error::{FileError, Result};
use crate::validate;

/// The verified caller, as the file service distinguishes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A customer.
    User {
        /// Their tenant.
        tenant: Uuid,
        /// Themselves.
        user: Uuid,
    },
    /// A tenant's administrator.
    TenantAdmin {
        /// The tenant they administer.
        tenant: Uuid,
        /// Themselves.
        user: Uuid,
    },
    /// A platform operator.
    PlatformAdmin {
        /// Their own tenant (the default when a call names none).
        tenant: Uuid,
        /// Themselves.
        user: Uuid,
    },
    /// Another FlatRender service.
    Service(ServiceName),
}

impl Actor {
    /// The actor behind a verified caller.
    pub fn of(caller: &Caller) -> Self {
        let (tenant, user) = (caller.tenant_id, caller.user_id);
        match (caller.service, caller.role) {
            (Some(service), _) => Self::Service(service),
            (None, Role::User) => Self::User { tenant, user },
            (None, Role::TenantAdmin) => Self::TenantAdmin { tenant, user },
            (None, Role::PlatformAdmin) => Self::PlatformAdmin { tenant, user },
        }
    }

    /// The actor of a request, or `UNAUTHENTICATED`.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        flatrender_kit::auth::caller(request).map(Self::of)
    }

    /// The person calling; `None` for a service.
    pub fn user_id(&self) -> Option<Uuid> {
        match *self {
            Self::User { user, .. } | Self::TenantAdmin { user, .. } | Self::PlatformAdmin { user, .. } => Some(user),
            Self::Service(_) => None,
        }
    }

    /// The caller's own tenant; `None` for a service.
    pub fn home_tenant(&self) -> Option<Uuid> {
        match *self {
            Self::User { tenant, .. } | Self::TenantAdmin { tenant, .. } | Self::PlatformAdmin { tenant, .. } => {
                Some(tenant)
            }
            Self::Service(_) => None,
        }
    }

    /// The service recorded as `source_service` of what the caller creates (`file` for people).
    pub fn source_service(&self) -> ServiceName {
        match *self {
            Self::Service(service) => service,
            _ => ServiceName::File,
        }
    }

    /// Whether the caller is another service.
    pub fn is_service(&self) -> bool {
        matches!(self, Self::Service(_))
    }

    /// Whether the caller administers `tenant` (a tenant admin of it, or a platform admin).
    pub fn administers(&self, tenant: Uuid) -> bool {
        match *self {
            Self::TenantAdmin { tenant: own, .. } => own == tenant,
            Self::PlatformAdmin { .. } => true,
            Self::User { .. } | Self::Service(_) => false,
        }
    }

    /// Whether the caller may see an object of `tenant` owned by `owner` (`None`: the tenant's).
    pub fn can_reach(&self, tenant: Uuid, owner: Option<Uuid>) -> bool {
        match *self {
            Self::User { tenant: own, user } => own == tenant && owner == Some(user),
            Self::TenantAdmin { tenant: own, .. } => own == tenant,
            Self::PlatformAdmin { .. } | Self::Service(_) => true,
        }
    }

    /// The tenant a call acts in, from its optional `tenant_id` field (`field` names it).
    ///
    /// People act in their own tenant (naming another is `NOT_FOUND`, except for platform
    /// admins); services must name one.
    pub fn tenant(&self, field: &str, requested: &str) -> Result<Uuid> {
        let requested = validate::optional_id(field, requested)?;
        match (*self, requested) {
            (Self::Service(_), None) => Err(FileError::invalid(field, "is required with a service credential")),
            (Self::Service(_), Some(tenant)) => Ok(tenant),
            (Self::PlatformAdmin { .. }, Some(tenant)) => Ok(tenant),
            (_, None) => Ok(self.home_tenant().unwrap_or_default()),
            (_, Some(tenant)) if Some(tenant) == self.home_tenant() => Ok(tenant),
            (_, Some(_)) => Err(FileError::NotFound("tenant")),
        }
    }

    /// Whose objects a call creates or lists: `Some(user)` or `None` for the tenant's own.
    ///
    /// Users always act for themselves; tenant admins and platform admins for themselves unless
    /// they name a user or `tenant_owned`; services for the tenant unless they name a user.
    pub fn owner(&self, field: &str, owner_user_id: &str, tenant_owned: bool) -> Result<Option<Uuid>> {
        let named = validate::optional_id(field, owner_user_id)?;
        match *self {
            Self::User { user, .. } => {
                if tenant_owned || named.is_some_and(|named| named != user) {
                    Err(FileError::PermissionDenied(
                        "only tenant admins and services may act for another user or the tenant".into(),
                    ))
                } else {
                    Ok(Some(user))
                }
            }
            Self::TenantAdmin { user, .. } | Self::PlatformAdmin { user, .. } => {
                if tenant_owned {
                    Ok(None)
                } else {
                    Ok(Some(named.unwrap_or(user)))
                }
            }
            Self::Service(_) => Ok(if tenant_owned { None } else { named }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uuid, Uuid, Uuid) {
        (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4())
    }

    #[test]
    fn users_reach_only_their_own() {
        let (tenant, user, other) = ids();
        let actor = Actor::User { tenant, user };
        assert!(actor.can_reach(tenant, Some(user)));
        assert!(!actor.can_reach(tenant, Some(other)));
        assert!(!actor.can_reach(tenant, None));
        assert!(!actor.can_reach(other, Some(user)));
        assert_eq!(actor.owner("o", "", false).unwrap(), Some(user));
        assert!(matches!(actor.owner("o", &other.to_string(), false), Err(FileError::PermissionDenied(_))));
        assert!(matches!(actor.owner("o", "", true), Err(FileError::PermissionDenied(_))));
        assert_eq!(actor.tenant("t", "").unwrap(), tenant);
        assert!(matches!(actor.tenant("t", &other.to_string()), Err(FileError::NotFound(_))));
    }

    #[test]
    fn admins_reach_their_tenant() {
        let (tenant, user, other) = ids();
        let admin = Actor::TenantAdmin { tenant, user };
        assert!(admin.can_reach(tenant, None));
        assert!(admin.can_reach(tenant, Some(other)));
        assert!(!admin.can_reach(other, None));
        assert!(admin.administers(tenant) && !admin.administers(other));
        assert_eq!(admin.owner("o", &other.to_string(), false).unwrap(), Some(other));
        assert_eq!(admin.owner("o", "", true).unwrap(), None);
        let platform = Actor::PlatformAdmin { tenant, user };
        assert_eq!(platform.tenant("t", &other.to_string()).unwrap(), other);
    }

    #[test]
    fn services_name_the_tenant() {
        let (tenant, user, _) = ids();
        let service = Actor::Service(ServiceName::Render);
        assert!(service.can_reach(tenant, Some(user)));
        assert!(service.tenant("t", "").is_err());
        assert_eq!(service.tenant("t", &tenant.to_string()).unwrap(), tenant);
        assert_eq!(service.owner("o", "", false).unwrap(), None);
        assert_eq!(service.source_service(), ServiceName::Render);
    }
}
