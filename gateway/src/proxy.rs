//! Forwarding calls to remote services.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use prost::Message;
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tower::ServiceExt as _;

use crate::upstreams::{Upstream, UpstreamError, service_of_package};

/// Adds a forwarding route for every gRPC service of every FlatRender service not in `local`:
/// to its upstream when one is configured, otherwise to an `UNAVAILABLE` answer naming the
/// flag to set. Returns the gRPC service names that are forwarded.
pub fn add_proxy_routes(
    mut routes: Routes,
    local: &BTreeSet<&str>,
    upstreams: &[Upstream],
) -> Result<(Routes, Vec<String>), UpstreamError> {
    let descriptors = prost_types::FileDescriptorSet::decode(flatrender_proto::FILE_DESCRIPTOR_SET)
        .map_err(|e| UpstreamError::Descriptors(e.to_string()))?;
    let mut forwarded = Vec::new();
    for file in &descriptors.file {
        let package = file.package();
        let Some(service) = service_of_package(package) else { continue };
        if local.contains(service) {
            continue;
        }
        let channel = upstreams
            .iter()
            .rev() // the last flag for a service wins
            .find(|u| u.service == service)
            .map(|u| endpoint(u.uri.clone()).connect_lazy());
        for grpc_service in &file.service {
            let name = format!("{package}.{}", grpc_service.name());
            let forward = Forward { channel: channel.clone(), service };
            routes = Routes::from(routes.into_axum_router().route_service(&format!("/{name}/{{*method}}"), forward));
            forwarded.push(name);
        }
    }
    Ok((routes, forwarded))
}

/// How the gateway reaches an upstream: connecting gives up after a while instead of hanging a
/// call, and keep-alives notice an upstream that vanished without closing its connections.
pub fn endpoint(uri: http::Uri) -> Endpoint {
    Endpoint::from(uri)
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_keepalive(Some(Duration::from_secs(60)))
}

/// Forwards one call to the upstream channel, or answers `UNAVAILABLE` when there is none.
#[derive(Clone, Debug)]
struct Forward {
    channel: Option<Channel>,
    service: &'static str,
}

impl tower::Service<http::Request<axum::body::Body>> for Forward {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The channel is polled for readiness inside `call`, on a clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<axum::body::Body>) -> Self::Future {
        let service = self.service;
        let Some(mut channel) = self.channel.clone() else {
            return Box::pin(async move {
                Ok(Status::unavailable(format!(
                    "the {service} service is not in this process and has no upstream; set --upstream {service}=http://HOST:PORT"
                ))
                .into_http())
            });
        };
        let mut request = request.map(tonic::body::Body::new);
        Box::pin(async move {
            strip_hop_by_hop(request.headers_mut());
            // The upstream speaks HTTP/2 whatever the client spoke to the gateway.
            *request.version_mut() = http::Version::HTTP_2;
            // The upstream's span becomes a child of this gateway call, not of the client's. This
            // runs when the future is polled, inside the call's span.
            let mut metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(request.headers_mut()));
            flatrender_kit::telemetry::inject_current(&mut metadata);
            *request.headers_mut() = metadata.into_headers();
            match channel.ready().await {
                Ok(ready) => match ready.call(request).await {
                    Ok(response) => Ok(response),
                    Err(e) => Ok(upstream_failed(service, &e)),
                },
                Err(e) => Ok(upstream_failed(service, &e)),
            }
        })
    }
}

/// Removes what describes the client's connection to the gateway rather than the call: `host`
/// (the upstream call carries its own authority), the hop-by-hop headers and those `connection`
/// names, and `te` unless it is `trailers`, which gRPC requires.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // HTTP/1.1 clients list `te` in `connection`; decide on it before that removes it.
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers")));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [header::HOST, header::CONNECTION, header::TE, header::TRANSFER_ENCODING, header::UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers.keys().filter(|name| name.as_str().starts_with("proxy-")).cloned().collect();
    for name in proxy {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn upstream_failed(service: &str, err: &dyn std::error::Error) -> http::Response<tonic::body::Body> {
    tracing::warn!(service, error = %err, "upstream call failed");
    Status::unavailable(format!("the {service} service cannot be reached right now; retry shortly")).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_host_and_hop_by_hop_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("host", "gateway.example:443"),
            ("connection", "keep-alive, x-hop, te"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic eA=="),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("authorization", "Bearer t"),
            ("grpc-timeout", "5S"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["authorization", "content-type", "grpc-timeout", "te"]);
        assert_eq!(headers[header::TE], "trailers");

        let mut headers = HeaderMap::new();
        headers.insert(header::TE, HeaderValue::from_static("gzip, deflate;q=0.5"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.is_empty(), "{headers:?}");
    }
}
