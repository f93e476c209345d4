//! Traces: a call carrying W3C trace context is exported over OTLP as part of the same trace.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_kit::testing::TestDatabase;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use support::{Flatrender, await_health};
use tokio::sync::mpsc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A minimal OTLP collector that forwards every export to the test.
struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let (tx, mut exports) = mpsc::unbounded_channel();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let db = TestDatabase::migrated().await;
    let endpoint = format!("http://{collector_addr}");
    let server = Flatrender::start(db.url().expose(), &["--otlp-endpoint", &endpoint]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse().unwrap());
    HealthClient::new(channel).check(request).await.unwrap();

    // The batch exporter sends within its schedule delay (5 s by default).
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(export) = exports.recv().await {
            for resource_spans in export.resource_spans {
                let service_name = resource_spans
                    .resource
                    .iter()
                    .flat_map(|r| r.attributes.iter())
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.clone())
                    .map(|v| format!("{v:?}"));
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        if hex(&span.trace_id) == trace_id {
                            return (span.name, hex(&span.parent_span_id), service_name);
                        }
                    }
                }
            }
        }
        panic!("collector channel closed");
    })
    .await
    .expect("a span of the caller's trace is exported");
    assert_eq!(found.0, "grpc.request");
    assert_eq!(found.1, "00f067aa0ba902b7", "the caller's span is the parent");
    assert!(found.2.unwrap_or_default().contains("flatrender"), "resource names the service");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
