//! Logs and traces.
//!
//! Logs go to stderr as text or JSON. Every process also runs an OpenTelemetry tracer so W3C
//! trace context (`traceparent`/`tracestate`) flows through every gRPC hop — gateway, service,
//! agent — whether or not spans are exported; spans are exported over OTLP/gRPC only when an
//! endpoint is configured.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryArgs};
use crate::{Error, Result};

/// Flushes pending spans when dropped; keep it alive for the life of the process.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // Bounded: an unreachable collector must not hold up the exit.
        if let Err(e) = self.provider.shutdown_with_timeout(std::time::Duration::from_secs(1)) {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber and propagator. Call once, early in `main`.
pub fn init(args: &TelemetryArgs, service_name: &'static str) -> Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&args.log)
        .map_err(|e| Error::Config(format!("invalid --log / FLATRENDER_LOG filter `{}`: {e}", args.log)))?;

    let mut provider =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service_name).build());
    if let Some(endpoint) = &args.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
            .map_err(|e| Error::Config(format!("invalid FLATRENDER_OTLP_ENDPOINT `{endpoint}`: {e}")))?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // The log filter only decides what is printed; spans for tracing are kept at INFO and
    // above whatever the log level, so trace context keeps flowing with FLATRENDER_LOG=warn.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flatrender"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(otel);
    // Logs go to stderr; stdout carries only what a command prints as its result.
    let installed = match args.log_format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours only for a person at a terminal, never into files or collectors.
                    .with_ansi(ansi)
                    .with_target(true)
                    .with_filter(filter),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr)
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_filter(filter),
            )
            .try_init(),
    };
    installed.map_err(|e| Error::Config(format!("logging is already initialised: {e}")))?;
    Ok(TelemetryGuard { provider })
}

/// The span for one incoming gRPC call, a child of the caller's trace when the request carries
/// W3C trace context.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc.request",
        otel.kind = "server",
        rpc.method = %request.uri().path(),
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    // Fails only when the span is disabled by the filter; then there is nothing to link.
    let _ = span.set_parent(parent);
    span
}

/// Writes the current span's trace context into outgoing gRPC metadata.
pub fn inject_current(metadata: &mut MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(metadata)));
}

/// The current span's trace context as `(key, value)` pairs, for storing beside an event.
pub fn current_context_fields() -> Vec<(String, String)> {
    let context = tracing::Span::current().context();
    let mut fields = Vec::new();
    TraceContextPropagator::new().inject_context(&context, &mut VecInjector(&mut fields));
    fields
}

/// A tonic interceptor for clients that forwards the current trace context.
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateTraceContext;

impl tonic::service::Interceptor for PropagateTraceContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        inject_current(request.metadata_mut());
        Ok(request)
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

struct VecInjector<'a>(&'a mut Vec<(String, String)>);

impl Injector for VecInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_trace_context_becomes_the_parent() {
        // A subscriber with the OpenTelemetry layer, scoped to this test.
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        tracing::subscriber::with_default(subscriber, || {
            let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
            let request = http::Request::builder()
                .uri("/flatrender.render.v1.RenderService/GetRender")
                .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap();
            let span = server_span(&request);
            let _entered = span.enter();
            let mut metadata = MetadataMap::new();
            inject_current(&mut metadata);
            let outgoing = metadata.get("traceparent").unwrap().to_str().unwrap().to_owned();
            assert!(outgoing.starts_with(&format!("00-{trace_id}-")), "{outgoing}");
            assert!(!outgoing.contains("00f067aa0ba902b7"), "a new span id for the next hop");
        });
    }
}
