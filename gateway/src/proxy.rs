//! Forwarding calls to remote services.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::task::{Context, Poll};

use prost::Message;
use tonic::Status;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};

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
            .map(|u| Endpoint::from(u.uri.clone()).connect_lazy());
        for grpc_service in &file.service {
            let name = format!("{package}.{}", grpc_service.name());
            let forward = Forward { channel: channel.clone(), service };
            routes = Routes::from(routes.into_axum_router().route_service(&format!("/{name}/{{*method}}"), forward));
            forwarded.push(name);
        }
    }
    Ok((routes, forwarded))
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
        // The upstream's span becomes a child of this gateway call, not of the client's.
        let mut metadata = tonic::metadata::MetadataMap::from_headers(std::mem::take(request.headers_mut()));
        flatrender_kit::telemetry::inject_current(&mut metadata);
        *request.headers_mut() = metadata.into_headers();
        Box::pin(async move {
            use tower::ServiceExt as _;
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

fn upstream_failed(service: &str, err: &dyn std::error::Error) -> http::Response<tonic::body::Body> {
    tracing::warn!(service, error = %err, "upstream call failed");
    Status::unavailable(format!("the {service} service cannot be reached right now; retry shortly")).into_http()
}
