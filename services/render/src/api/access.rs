//! Who calls the customer API and what they may see.
//!
//! - A user sees their own jobs and exports in their tenant.
//! - A tenant admin (and a platform admin, in their own tenant) sees all of the tenant's.
//! - Snapshots are a tenant-wide cache (a hit serves whoever asked first), so every person of
//!   the tenant sees the tenant's snapshots.
//! - Service credentials are refused: this API is for people and their API keys.
//!
//! Whatever a caller may not see does not exist for them: `NOT_FOUND`.

use flatrender_kit::auth::{Caller, Role};
use uuid::Uuid;

use crate::error::{RenderError, Result};

/// The verified person calling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// Their tenant: every query is scoped to it.
    pub tenant: Uuid,
    /// Themselves.
    pub user: Uuid,
    /// Whether they see all of the tenant's jobs and exports (admins), not only their own.
    pub admin: bool,
}

impl Viewer {
    /// The viewer behind `caller`; `PERMISSION_DENIED` for a service credential.
    pub fn of(caller: &Caller) -> Result<Self> {
        caller.require(Role::User).map_err(|status| RenderError::PermissionDenied(status.message().to_owned()))?;
        Ok(Self { tenant: caller.tenant_id, user: caller.user_id, admin: caller.role >= Role::TenantAdmin })
    }

    /// The viewer of a request, or `UNAUTHENTICATED` / `PERMISSION_DENIED`.
    pub fn from_request<T>(request: &tonic::Request<T>) -> Result<Self, tonic::Status> {
        let caller = flatrender_kit::auth::caller(request)?;
        Ok(Self::of(caller)?)
    }

    /// The owner the viewer is limited to: `None` for admins (the whole tenant), themselves for
    /// plain users. Bound as `($n::uuid IS NULL OR user_id = $n)`.
    pub fn only_owner(&self) -> Option<Uuid> {
        (!self.admin).then_some(self.user)
    }

    /// Whether the viewer may see an object of their tenant owned by `owner`.
    pub fn sees(&self, owner: Option<Uuid>) -> bool {
        self.admin || owner == Some(self.user)
    }

    /// The owner filter of a listing from its optional `user_id` field: admins may name anyone
    /// of the tenant (or nobody: all); plain users only themselves (`PERMISSION_DENIED`
    /// otherwise).
    pub fn owner_filter(&self, field: &str, named: Option<Uuid>) -> Result<Option<Uuid>> {
        match (self.admin, named) {
            (true, named) => Ok(named),
            (false, None) => Ok(Some(self.user)),
            (false, Some(named)) if named == self.user => Ok(Some(named)),
            (false, Some(_)) => Err(RenderError::PermissionDenied(format!(
                "{field}: only tenant admins may list another user's renders"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flatrender_kit::auth::ServiceName;

    fn caller(role: Role) -> Caller {
        Caller {
            tenant_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            role,
            session_id: None,
            service: None,
            api_key_id: None,
            scopes: Vec::new(),
        }
    }

    #[test]
    fn users_see_their_own_and_admins_all() {
        let user = Viewer::of(&caller(Role::User)).unwrap();
        let other = Uuid::new_v4();
        assert!(user.sees(Some(user.user)) && !user.sees(Some(other)) && !user.sees(None));
        assert_eq!(user.only_owner(), Some(user.user));
        assert_eq!(user.owner_filter("user_id", None).unwrap(), Some(user.user));
        assert!(matches!(user.owner_filter("user_id", Some(other)), Err(RenderError::PermissionDenied(_))));
        let admin = Viewer::of(&caller(Role::TenantAdmin)).unwrap();
        assert!(admin.sees(Some(other)) && admin.sees(None));
        assert_eq!(admin.only_owner(), None);
        assert_eq!(admin.owner_filter("user_id", Some(other)).unwrap(), Some(other));
        assert!(Viewer::of(&caller(Role::PlatformAdmin)).unwrap().admin);
    }

    #[test]
    fn services_are_refused() {
        let service = Caller { service: Some(ServiceName::Studio), ..caller(Role::User) };
        assert!(matches!(Viewer::of(&service), Err(RenderError::PermissionDenied(_))));
    }
}
