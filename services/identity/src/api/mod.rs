//! The gRPC API: one module per service of `flatrender.identity.v1`.

pub mod api_keys;
pub mod auth;
pub mod billing;
pub mod mfa;
mod paging;
pub mod push;
pub mod signing_keys;
pub mod tenants;
pub mod usage;
pub mod users;
pub mod webhooks;

use flatrender_kit::auth::{Caller, Role};
use flatrender_proto::flatrender::identity::v1 as pb;
use tonic::Status;

use crate::error::IdentityError;
use crate::service::Identity;

/// The identity API over its state.
#[derive(Clone, Debug)]
pub struct IdentityApi {
    pub(crate) identity: Identity,
}

impl IdentityApi {
    /// The API over `identity`.
    pub fn new(identity: Identity) -> Self {
        Self { identity }
    }
}

/// The verified user behind `request` (service credentials are refused).
pub(crate) fn user<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    let caller = flatrender_kit::auth::caller(request)?;
    if caller.service.is_some() {
        return Err(Status::permission_denied("this call is made by a user, not a service"));
    }
    Ok(caller.clone())
}

/// How a caller who is no platform admin is answered for naming another tenant.
pub(crate) enum Foreign {
    /// `PERMISSION_DENIED`: the field is documented as platform admins only.
    Forbidden,
    /// `NOT_FOUND` for the named kind: the other tenant must stay invisible.
    Hidden(&'static str),
}

/// The tenant a call acts on: the caller's own when `named` is empty, or the one named, which
/// only platform admins may name.
pub(crate) fn tenant_scope(caller: &Caller, named: &str, foreign: Foreign) -> Result<uuid::Uuid, IdentityError> {
    match crate::validate::optional_uuid("tenant_id", named)? {
        None => Ok(caller.tenant_id),
        Some(tenant) if tenant == caller.tenant_id || caller.role == Role::PlatformAdmin => Ok(tenant),
        Some(_) => Err(match foreign {
            Foreign::Forbidden => IdentityError::PermissionDenied("only platform admins act on other tenants".into()),
            Foreign::Hidden(what) => IdentityError::NotFound(what),
        }),
    }
}

/// A tenant admin, a platform admin, or an API key (whose scopes the token layer checked).
pub(crate) fn admin<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    let caller = user(request)?;
    caller.require(Role::TenantAdmin)?;
    Ok(caller)
}

/// The verified caller of `request`, a user or a service.
pub(crate) fn user_or_service<T>(request: &tonic::Request<T>) -> Result<Caller, Status> {
    flatrender_kit::auth::caller(request).cloned()
}

/// Page size of a list request: 0 means 50, more than 500 is refused.
pub(crate) fn page_size(
    page: Option<&flatrender_proto::flatrender::common::v1::PageRequest>,
) -> Result<i64, IdentityError> {
    match page.map_or(0, |p| p.page_size) {
        0 => Ok(50),
        n @ 1..=500 => Ok(i64::from(n)),
        _ => Err(IdentityError::invalid("page.page_size", "must be at most 500")),
    }
}

// The services whose methods land later answer UNIMPLEMENTED, the gRPC standard.
#[tonic::async_trait]
impl pb::gamification_service_server::GamificationService for IdentityApi {}
