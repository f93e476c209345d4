//! `--target all` serves every service: health, reflection, grpc-web, metrics, UNIMPLEMENTED.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use flatrender_kit::testing::TestDatabase;
use prost::Message;
use support::{Flatrender, await_health, http1_exchange};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

/// Every gRPC service FlatRender's protos define.
fn flatrender_services() -> BTreeSet<String> {
    let set = prost_types::FileDescriptorSet::decode(flatrender_proto::FILE_DESCRIPTOR_SET).unwrap();
    set.file
        .iter()
        .filter(|f| f.package().starts_with("flatrender."))
        .flat_map(|f| f.service.iter().map(move |s| format!("{}.{}", f.package(), s.name())))
        .collect()
}

#[tokio::test]
async fn every_service_is_serving_and_listed_by_reflection() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--target", "all"]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;

    let expected = flatrender_services();
    assert!(expected.len() >= 20, "the v1 APIs define many services: {expected:?}");
    let mut health = HealthClient::new(channel.clone());
    for name in &expected {
        let status = health.check(HealthCheckRequest { service: name.clone() }).await.unwrap().into_inner().status();
        assert_eq!(status, ServingStatus::Serving, "{name}");
    }

    let listed = reflected_services(channel.clone()).await;
    for name in
        expected.iter().map(String::as_str).chain(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"])
    {
        assert!(listed.contains(name), "reflection lists {name}: {listed:?}");
    }

    // Identity and render create their upcoming monthly partitions themselves at start.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for parent in ["identity.tenant_api_request_logs", "render.node_health_logs"] {
        loop {
            // The partition three months ahead (UTC) exists once the service has run its maintenance.
            let ahead: bool = sqlx::query_scalar(
                "SELECT to_regclass($1 || to_char((now() AT TIME ZONE 'UTC') + interval '3 months', '_YYYY_MM')) IS NOT NULL",
            )
            .bind(parent)
            .fetch_one(db.pool())
            .await
            .unwrap();
            if ahead {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{parent} lacks the partition three months ahead");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn an_off_the_shelf_client_sees_every_service_serving() {
    let python = std::env::var("FLATRENDER_PROBE_PYTHON")
        .expect("run through `make test`, which installs Python grpcio and sets FLATRENDER_PROBE_PYTHON");
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--target", "all"]);
    await_health(server.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/grpc_probe.py");
    let output = std::process::Command::new(python).arg(script).arg(server.grpc.to_string()).output().unwrap();
    assert!(output.status.success(), "probe: {}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["overall"], "SERVING", "{seen}");
    for name in flatrender_services() {
        let entry = &seen["services"][&name];
        assert_eq!(entry["health"], "SERVING", "{name}: {seen}");
        assert!(entry["methods"].as_u64().unwrap_or(0) > 0, "{name} is described through reflection: {seen}");
    }
}

/// The services a server lists through reflection v1.
async fn reflected_services(channel: tonic::transport::Channel) -> BTreeSet<String> {
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(Ok(response)) = responses.next().await else { panic!("no reflection answer") };
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("not a list") };
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test]
async fn one_target_lists_only_its_own_services() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--target", "render"]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let listed = reflected_services(channel).await;
    assert!(listed.contains("flatrender.render.v1.RenderService"), "{listed:?}");
    assert!(listed.contains("flatrender.agent.v1.AgentService"), "{listed:?}");
    assert!(!listed.iter().any(|s| s.starts_with("flatrender.identity.")), "identity runs elsewhere: {listed:?}");
}

#[tokio::test]
async fn methods_whose_issue_has_not_landed_answer_unimplemented() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &[]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut client =
        flatrender_proto::flatrender::studio::v1::project_service_client::ProjectServiceClient::new(channel);
    let status =
        client.get_project(flatrender_proto::flatrender::studio::v1::GetProjectRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

#[tokio::test]
async fn grpc_web_over_http1_and_metrics_work() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &[]);
    await_health(server.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;

    // A grpc-web call as a browser library sends it: HTTP/1.1 POST, one length-prefixed frame.
    let body = HealthCheckRequest { service: String::new() }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.grpc,
        frame.len()
    );
    let response = http1_exchange(server.grpc, head.as_bytes(), &frame);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.to_ascii_lowercase().contains("application/grpc-web"), "{text}");
    assert!(response.windows(2).any(|w| w == [0x08, 0x01]), "the message says SERVING: {text}");
    assert!(text.to_ascii_lowercase().contains("grpc-status:0"), "trailers in the body: {text}");

    let head = format!("GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", server.metrics);
    let metrics = String::from_utf8(http1_exchange(server.metrics, head.as_bytes(), &[])).unwrap();
    assert!(
        metrics.contains("flatrender_grpc_server_handled_total{method=\"/grpc.health.v1.Health/Check\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn download_links_are_plain_http_on_the_grpc_port_where_the_file_service_runs() {
    let db = TestDatabase::migrated().await;
    let get = |server: &Flatrender| {
        let head = format!(
            "GET /files/v1/links/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            "A".repeat(43),
            server.grpc
        );
        String::from_utf8(http1_exchange(server.grpc, head.as_bytes(), &[])).unwrap()
    };
    let all = Flatrender::start(db.url().expose(), &[]);
    await_health(all.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let text = get(&all);
    assert!(text.starts_with("HTTP/1.1 404"), "an unknown link, answered in plain HTTP: {text}");
    assert!(text.ends_with("This link does not exist or has expired.\n"), "{text}");

    let render = Flatrender::start(db.url().expose(), &["--target", "render"]);
    await_health(render.channel().await, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let text = get(&render);
    assert!(text.starts_with("HTTP/1.1 400"), "no file service, no route (grpc-web's refusal): {text}");
}
