//! The gateway: FlatRender's one public edge.
//!
//! Every process already speaks gRPC and grpc-web (HTTP/1.1 and HTTP/2) on its port, so under
//! `--target all` the gateway is that listener. When services run in other processes (one
//! target per Kubernetes Deployment), the gateway forwards each call, by its proto package, to
//! the upstream that serves it: `flatrender.render.v1.*` and `flatrender.agent.v1.*` to render,
//! and so on. Calls stream through unchanged in both directions; only the trace context is
//! rewritten so the upstream's span is a child of the gateway's, and the headers that describe
//! the client's connection rather than the call (`host`, hop-by-hop headers) are dropped.
//! Upstreams are reached over plain HTTP/2 (`http://`) until upstream TLS lands.

pub mod edge;
pub mod proxy;
mod upstreams;

pub use proxy::add_proxy_routes;
pub use upstreams::{Upstream, UpstreamError};
