//! A real browser: headless Chromium runs a page with a grpc-web client library from npm
//! (Connect's grpc-web transport) against the real binary on another origin. It logs in, calls
//! an authenticated method, reads a server stream and sees an error code come through.
//! `tools/browser/setup.sh` installs Chromium and the page's packages (idempotent, quick when
//! done); this test runs it first.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as file_pb;
use sha2::Digest as _;
use support::{Flatrender, PASSWORD, await_health, verified_account};
use tonic::Request;
use tonic_health::pb::health_check_response::ServingStatus;

fn browser_kit() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/browser")
}

#[tokio::test]
async fn a_browser_logs_in_and_reads_a_stream_over_grpc_web() {
    let kit = browser_kit();
    let setup = Command::new("bash").arg(kit.join("setup.sh")).output().expect("bash runs");
    assert!(setup.status.success(), "tools/browser/setup.sh failed:\n{}", String::from_utf8_lossy(&setup.stderr));

    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--cors-origin", "*"]);
    await_health(server.channel().await, "", ServingStatus::Serving, Duration::from_secs(30)).await;
    let channel = server.channel().await;

    // A verified account, and a file of its own that downloads in several stream messages.
    let email = "browser@example.com";
    let (_, tokens) = verified_account(channel.clone(), &db, email).await;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    use file_pb::upload_file_request::Payload;
    let mut messages = vec![file_pb::UploadFileRequest {
        payload: Some(Payload::Metadata(file_pb::UploadFileMetadata {
            target: Some(file_pb::UploadTarget {
                name: "clip.bin".into(),
                kind: file_pb::FileKind::Asset as i32,
                ..Default::default()
            }),
            size_bytes: data.len() as u64,
            sha256: sha256.clone(),
            idempotency_key: String::new(),
        })),
    }];
    // Chunks of at most 1 MiB, as the upload API takes them.
    messages.extend(
        data.chunks(1 << 20).map(|c| file_pb::UploadFileRequest { payload: Some(Payload::Chunk(c.to_vec().into())) }),
    );
    let mut upload = Request::new(tokio_stream::iter(messages));
    upload.metadata_mut().insert("authorization", format!("Bearer {}", tokens.access_token).parse().unwrap());
    let file = file_pb::upload_service_client::UploadServiceClient::new(channel)
        .upload_file(upload)
        .await
        .unwrap()
        .into_inner()
        .file
        .unwrap();

    let descriptors = std::env::temp_dir().join(format!("flatrender-descriptors-{}.bin", std::process::id()));
    std::fs::write(&descriptors, flatrender_proto::FILE_DESCRIPTOR_SET).unwrap();
    // The server is another process: blocking this test's thread on the browser is harmless.
    // setup.sh leaves a Node 20 in .runtime/bin where the system's is older.
    let path = format!("{}:{}", kit.join(".runtime/bin").display(), std::env::var("PATH").unwrap_or_default());
    let run = Command::new("node")
        .env("PATH", path)
        .arg(kit.join("run.mjs"))
        .args(["--gateway", &server.endpoint()])
        .arg("--descriptors")
        .arg(&descriptors)
        .args(["--email", email, "--password", PASSWORD, "--file-id", &file.id])
        .output()
        .expect("node runs");
    let _ = std::fs::remove_file(&descriptors);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let result: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("the runner printed no JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(result["ok"], true, "{result}\n{stderr}");
    assert_eq!(result["meEmail"], email, "{result}");
    assert_eq!(result["streamBytes"], 2_500_000, "{result}");
    assert!(result["streamMessages"].as_u64().unwrap() > 2, "a stream of several messages: {result}");
    assert_eq!(result["sha256Hex"], sha256, "{result}");
    assert_eq!(result["unauthenticatedCode"], "unauthenticated", "{result}");
}
