//! The gateway's work in front of every call: CORS, the client's address, API keys, token
//! verification, rate limits, deadlines, and request logs.

mod api_keys;
mod client;
mod cors;
mod deadlines;
pub mod rate_limit;
pub mod request_log;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use flatrender_kit::auth::{Caller, TokenVerifier};
use flatrender_kit::server::{Edge, EdgeFuture, Next};
use http::header::{self, HeaderValue};
use http::{Request, Response};
use time::OffsetDateTime;
use tonic::body::Body;
use tower::ServiceExt as _;
use uuid::Uuid;

pub use api_keys::{ApiKeys, Exchange, ExchangeFuture, ExchangedKey, RemoteIdentity, remote};
pub use cors::Cors;
pub use deadlines::Deadlines;
use rate_limit::{KeyedLimiter, Quota};
pub use request_log::{RequestLog, Sink, remote_sink};

/// How the edge is configured.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// Origins browsers may call from (`*` for any).
    pub cors_origins: Vec<String>,
    /// Calls per minute from one client address.
    pub address_per_minute: u32,
    /// Calls per minute of one tenant, all its users and keys together.
    pub tenant_per_minute: u32,
    /// Calls per minute of one API key without a limit of its own.
    pub api_key_per_minute: u32,
    /// Deadline set on unary calls that carry none.
    pub default_deadline: Duration,
    /// The longest deadline a unary call may ask for.
    pub max_deadline: Duration,
}

impl Default for EdgeSettings {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            address_per_minute: 6_000,
            tenant_per_minute: 30_000,
            api_key_per_minute: 6_000,
            default_deadline: Duration::from_secs(60),
            max_deadline: Duration::from_secs(600),
        }
    }
}

/// The gateway's [`Edge`].
#[derive(Clone, Debug)]
pub struct GatewayEdge {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cors: Cors,
    keys: Option<ApiKeys>,
    verifier: Option<TokenVerifier>,
    log: Option<RequestLog>,
    deadlines: Deadlines,
    addresses: KeyedLimiter<String>,
    tenants: KeyedLimiter<Uuid>,
    api_keys: KeyedLimiter<Uuid>,
    address_quota: Quota,
    tenant_quota: Quota,
    api_key_per_minute: u32,
}

impl GatewayEdge {
    /// An edge with `settings`; `keys` accepts `x-api-key` (refused without), `log` records
    /// tenants' calls (none without).
    pub fn new(
        settings: &EdgeSettings,
        verifier: Option<TokenVerifier>,
        keys: Option<ApiKeys>,
        log: Option<RequestLog>,
    ) -> Self {
        let inner = Inner {
            cors: Cors::new(&settings.cors_origins),
            keys,
            verifier,
            log,
            deadlines: Deadlines::new(settings.default_deadline, settings.max_deadline),
            addresses: KeyedLimiter::new(),
            tenants: KeyedLimiter::new(),
            api_keys: KeyedLimiter::new(),
            address_quota: Quota::per_minute_with_burst(settings.address_per_minute),
            tenant_quota: Quota::per_minute_with_burst(settings.tenant_per_minute),
            api_key_per_minute: settings.api_key_per_minute,
        };
        Self { inner: Arc::new(inner) }
    }
}

impl Edge for GatewayEdge {
    fn handle(&self, request: Request<Body>, next: Next) -> EdgeFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.handle(request, next).await })
    }
}

impl Inner {
    async fn handle(&self, mut request: Request<Body>, next: Next) -> Response<Body> {
        if let Some(preflight) = self.cors.preflight(&request) {
            return preflight;
        }
        let started = Instant::now();
        let origin = request.headers().get(header::ORIGIN).cloned();
        let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
        let peer = request
            .extensions()
            .get::<tonic::transport::server::TcpConnectInfo>()
            .and_then(tonic::transport::server::TcpConnectInfo::remote_addr)
            .map(|addr| addr.ip());
        // Whatever the request claims to be: tonic serves a gRPC path whatever its content type.
        client::replace_client_claims(request.headers_mut(), peer);
        let grpc = is_grpc_path(request.uri().path());
        let limited = peer.and_then(|address| {
            self.addresses.check(&flatrender_kit::client_address::limit_key(address), self.address_quota, started).err()
        });
        let mut response = match (limited, grpc) {
            (Some(retry), true) => {
                refusal(rate_limit::resource_exhausted("client address", retry.0), content_type.as_ref())
            }
            (Some(retry), false) => too_many_requests(retry.0),
            (None, true) => self.grpc_call(&mut request, next, content_type.as_ref(), peer, started).await,
            // Plain HTTP routes (download links, the JWKS) pass as they are.
            (None, false) => next.oneshot(request).await.unwrap_or_else(|never| match never {}),
        };
        self.cors.decorate(origin.as_ref(), response.headers_mut());
        response
    }

    async fn grpc_call(
        &self,
        request: &mut Request<Body>,
        next: Next,
        content_type: Option<&HeaderValue>,
        peer: Option<IpAddr>,
        started: Instant,
    ) -> Response<Body> {
        let requested_at = OffsetDateTime::now_utc();
        let path = request.uri().path().to_owned();
        let mut key_limit = None;
        if let Some(presented) = request.headers_mut().remove("x-api-key") {
            // A key replaces any bearer token; it never adds to one.
            request.headers_mut().remove(header::AUTHORIZATION);
            let Some(keys) = &self.keys else {
                return refusal(tonic::Status::unauthenticated("this gateway does not accept API keys"), content_type);
            };
            let presented = presented.to_str().unwrap_or_default().to_owned();
            match keys.token_for(&presented, peer).await {
                Ok(exchanged) => {
                    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {}", exchanged.access_token)) else {
                        return refusal(tonic::Status::internal("the exchanged token is not a header"), content_type);
                    };
                    request.headers_mut().insert(header::AUTHORIZATION, bearer);
                    key_limit =
                        Some((exchanged.key_id, exchanged.rate_limit_per_minute.unwrap_or(self.api_key_per_minute)));
                }
                Err(status) => return refusal(status, content_type),
            }
        }
        flatrender_kit::auth::identify(request, self.verifier.as_ref());
        // A key outside its scopes is refused by the service; its call is still the tenant's.
        let caller = request
            .extensions()
            .get::<Caller>()
            .or_else(|| request.extensions().get::<flatrender_kit::auth::OutOfScope>().map(|o| &o.caller))
            .cloned();
        if let Some((key, per_minute)) = key_limit
            && let Err(retry) = self.api_keys.check(&key, Quota::per_minute_with_burst(per_minute), started)
        {
            return refusal(rate_limit::resource_exhausted("API key", retry.0), content_type);
        }
        let tenant = caller.as_ref().filter(|c| c.service.is_none() && !c.tenant_id.is_nil()).map(|c| c.tenant_id);
        if let Some(tenant) = tenant
            && let Err(retry) = self.tenants.check(&tenant, self.tenant_quota, started)
        {
            return refusal(rate_limit::resource_exhausted("tenant", retry.0), content_type);
        }
        let deadline = self.deadlines.apply(&path, request.headers_mut());

        let request_bytes = Arc::new(AtomicU64::new(0));
        let entry = match (&self.log, &caller, tenant) {
            (Some(_), Some(caller), Some(tenant)) => Some(request_log::Entry {
                requested_at,
                tenant_id: tenant,
                api_key_id: caller.api_key_id,
                user_id: caller.api_key_id.is_none().then_some(caller.user_id),
                method: path,
                grpc_status: 0,
                duration_us: 0,
                request_bytes: 0,
                response_bytes: 0,
                client_ip: peer,
                user_agent: user_agent(request.headers()),
                trace_id: trace_id(request.headers()),
            }),
            _ => None,
        };
        let request = std::mem::take(request);
        let request = match &entry {
            Some(_) => request.map(|body| Body::new(request_log::CountedBody::new(body, Arc::clone(&request_bytes)))),
            None => request,
        };
        // tonic reads `grpc-timeout` before the edge runs, so the edge enforces its own.
        let call = next.oneshot(request);
        let response = match deadline {
            Some(deadline) => match tokio::time::timeout(deadline, call).await {
                Ok(answer) => answer.unwrap_or_else(|never| match never {}),
                Err(_) => refusal(tonic::Status::deadline_exceeded("the call ran past its deadline"), content_type),
            },
            None => call.await.unwrap_or_else(|never| match never {}),
        };
        match (entry, &self.log) {
            (Some(mut entry), Some(log)) => {
                // A trailers-only answer carries its status in the headers.
                entry.grpc_status = request_log::grpc_status(response.headers()).unwrap_or(0);
                response.map(|body| {
                    Body::new(request_log::LoggedBody::new(body, log.clone(), entry, started, request_bytes))
                })
            }
            _ => response,
        }
    }
}

/// Whether `path` names a gRPC method (`/package.Service/Method`), which tonic serves whatever
/// content type the request declares; every other path is a plain HTTP route.
fn is_grpc_path(path: &str) -> bool {
    let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else { return false };
    service.starts_with(|c: char| c.is_ascii_alphabetic())
        && service.contains('.')
        && !method.is_empty()
        && !method.contains('/')
}

/// A plain HTTP client past its rate.
fn too_many_requests(retry_after: Duration) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
    let seconds = retry_after.as_millis().div_ceil(1000).max(1);
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// An error answered by the gateway itself, in the protocol the client spoke: a trailers-only
/// gRPC response, labelled grpc-web for grpc-web clients.
fn refusal(status: tonic::Status, content_type: Option<&HeaderValue>) -> Response<Body> {
    let mut response: Response<Body> = status.into_http();
    if let Some(content_type) = content_type.filter(|v| v.to_str().is_ok_and(|v| v.starts_with("application/grpc-web")))
    {
        response.headers_mut().insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

fn user_agent(headers: &http::HeaderMap) -> Option<String> {
    ["user-agent", "x-user-agent"]
        .iter()
        .find_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
        .map(|ua| ua.chars().take(1024).collect())
}

/// The trace id of a W3C `traceparent` header.
fn trace_id(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let id = value.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) && id != "0".repeat(32))
        .then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_are_told_from_plain_routes() {
        assert!(is_grpc_path("/flatrender.identity.v1.AuthService/Login"));
        assert!(is_grpc_path("/grpc.health.v1.Health/Check"));
        assert!(!is_grpc_path("/.well-known/jwks.json"));
        assert!(!is_grpc_path("/files/v1/abc/def"));
        assert!(!is_grpc_path("/"));
        assert!(!is_grpc_path("/flatrender.identity.v1.AuthService/"));
    }
}
