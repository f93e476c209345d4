//! Prometheus metrics: a registry shared by the process, a tower layer that counts and times
//! every gRPC call, and the `/metrics` HTTP endpoint on its own port.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
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
use tokio::net::TcpListener;

use crate::shutdown::ShutdownSignal;
use crate::{Error, Result};

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

/// Counts and times each call. The code label is the `grpc-status` the response headers carry
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
        let method = request.uri().path().to_owned();
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
            metrics.record(&method, &code, started);
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
}
