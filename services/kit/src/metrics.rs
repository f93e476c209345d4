//! Prometheus metrics: a registry shared by the process, a tower layer that counts and times
//! every gRPC call, and the `/metrics` HTTP endpoint on its own port.
//!
//! The method label is bounded: only the gRPC methods this binary knows are named, anything
//! else the public port is asked for (it accepts HTTP/1.1, so scanners reach it) is `unknown`.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};
use prost::Message as _;
use tokio::net::TcpListener;

use crate::shutdown::ShutdownSignal;
use crate::{Error, Result};

/// The method label of paths that are not a known gRPC method.
const UNKNOWN_METHOD: &str = "unknown";

/// Reflection is registered by hand in the server, not through a descriptor set of ours.
const REFLECTION_METHODS: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Every full method path the server can answer: FlatRender's services, health and reflection.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut known: HashSet<String> = REFLECTION_METHODS.iter().map(|m| (*m).to_owned()).collect();
    for encoded in [flatrender_proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET] {
        let set = match prost_types::FileDescriptorSet::decode(encoded) {
            Ok(set) => set,
            Err(e) => {
                // A build defect; calls still count, under `unknown`.
                tracing::error!(error = %e, "the compiled API descriptors are unreadable; methods are labelled unknown");
                continue;
            }
        };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                for method in &service.method {
                    let service = service.name();
                    let method = method.name();
                    known.insert(if package.is_empty() {
                        format!("/{service}/{method}")
                    } else {
                        format!("/{package}.{service}/{method}")
                    });
                }
            }
        }
    }
    known
});

/// The method label for a request path: the path itself when it is a known gRPC method,
/// otherwise `unknown`, so arbitrary paths cannot create time series.
fn method_label(path: &str) -> &'static str {
    KNOWN_METHODS.get(path).map_or(UNKNOWN_METHOD, String::as_str)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// The process's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the gRPC call metrics under the `flatrender` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flatrender");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "gRPC calls answered, by method and the status code sent with the response headers",
            calls.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 0.5 ms .. ~16 s
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "grpc_server_handling_seconds",
            "Time until the response headers of a gRPC call were ready",
            latency.clone(),
        );
        Self { registry: Arc::new(Mutex::new(registry)), calls, latency }
    }

    /// Adds a metric of a service or background task.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock().register(name, help, metric);
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail except on a formatting bug.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.lock());
        out
    }

    /// A tower layer recording every call that passes through it.
    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer { metrics: self.clone() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry inconsistent; keep going.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, method: &str, code: &str, started: Instant) {
        let method = method.to_owned();
        self.calls.get_or_create(&CallLabels { method: method.clone(), code: code.to_owned() }).inc();
        self.latency.get_or_create(&MethodLabels { method }).observe(started.elapsed().as_secs_f64());
    }
}

/// Serves `GET /metrics` on `addr` until shutdown. Returns the bound address.
pub async fn serve(
    metrics: Metrics,
    addr: SocketAddr,
    signal: ShutdownSignal,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(format!("cannot listen for metrics on {addr}: {e}; choose another --metrics-addr"))
    })?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route("/metrics", axum::routing::get(render)).with_state(metrics);
    let handle = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal.wait()).await {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    });
    Ok((bound, handle))
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        metrics.encode(),
    )
}

/// Layer form of [`MetricsService`].
#[derive(Clone, Debug)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner, metrics: self.metrics.clone() }
    }
}

/// Counts and times each call, labelled by method (`unknown` for paths that are not a known gRPC
/// method). The code label is the `grpc-status` the response headers carry
/// (errors answered before any message), otherwise `OK`.
#[derive(Clone, Debug)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, R> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let method = method_label(request.uri().path());
        let metrics = self.metrics.clone();
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from(c)))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "TransportError".into(),
            };
            metrics.record(method, &code, started);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_calls_in_text_format() {
        let metrics = Metrics::new();
        metrics.record("/flatrender.render.v1.RenderService/GetRender", "NotFound", Instant::now());
        let text = metrics.encode();
        assert!(
            text.contains(r#"flatrender_grpc_server_handled_total{method="/flatrender.render.v1.RenderService/GetRender",code="NotFound"} 1"#),
            "{text}"
        );
        assert!(text.contains("flatrender_grpc_server_handling_seconds_bucket"), "{text}");
    }

    /// Answers every request with a fixed gRPC status in the headers.
    #[derive(Clone)]
    struct Answer(tonic::Code);

    impl tower::Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<std::result::Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _request: http::Request<()>) -> Self::Future {
            let mut response = http::Response::new(());
            response.headers_mut().insert("grpc-status", (self.0 as i32).into());
            std::future::ready(Ok(response))
        }
    }

    #[tokio::test]
    async fn labels_only_known_methods_by_name() {
        use tower::{Layer as _, Service as _};

        let metrics = Metrics::new();
        let mut service = metrics.layer().layer(Answer(tonic::Code::Unimplemented));
        for path in [
            "/flatrender.render.v1.RenderService/GetRender",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "/wp-login.php",
            "/.env",
            "/flatrender.render.v1.RenderService/NoSuchMethod",
        ] {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            service.call(request).await.unwrap();
        }
        let text = metrics.encode();
        for line in [
            r#"flatrender_grpc_server_handled_total{method="/flatrender.render.v1.RenderService/GetRender",code="Unimplemented"} 1"#,
            r#"flatrender_grpc_server_handled_total{method="/grpc.health.v1.Health/Check",code="Unimplemented"} 1"#,
            r#"flatrender_grpc_server_handled_total{method="/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",code="Unimplemented"} 1"#,
            r#"flatrender_grpc_server_handled_total{method="unknown",code="Unimplemented"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}:\n{text}");
        }
        assert!(!text.contains("wp-login") && !text.contains("NoSuchMethod"), "{text}");
    }

    #[test]
    fn knows_every_served_method() {
        assert_eq!(
            method_label("/flatrender.identity.v1.AuthService/Login"),
            "/flatrender.identity.v1.AuthService/Login"
        );
        assert_eq!(method_label("/grpc.health.v1.Health/Watch"), "/grpc.health.v1.Health/Watch");
        assert_eq!(
            method_label("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        );
        assert_eq!(method_label("/"), "unknown");
        assert_eq!(method_label("/flatrender.identity.v1.AuthService"), "unknown");
    }
}
