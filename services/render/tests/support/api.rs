//! The API side of the harness: who calls ([`Principal`]), the authenticated clients
//! [`super::Orchestrator`] hands out, request builders for the customer API, and small waiting
//! helpers.

use std::time::Duration;

use flatrender_kit::auth::{Role, ServiceName};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sha2::Digest as _;
use sqlx::postgres::PgListener;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use uuid::Uuid;

pub use flatrender_kit::testing::{Bearer, Principal};

/// A channel that authenticates as one principal.
pub type Authed = InterceptedService<Channel, Bearer>;
/// RenderService client.
pub type Renders = pb::render_service_client::RenderServiceClient<Authed>;
/// NodeAdminService client.
pub type NodeAdmin = pb::node_admin_service_client::NodeAdminServiceClient<Authed>;
/// RenderAdminService client.
pub type RenderAdmin = pb::render_admin_service_client::RenderAdminServiceClient<Authed>;
/// AgentService without credentials (Enroll; the agents' own calls carry their credential).
pub type AgentClient = agent_pb::agent_service_client::AgentServiceClient<Channel>;

/// Uploaded files of one principal.
pub struct Assets {
    pub template: file_pb::File,
    pub image: file_pb::File,
    pub music: file_pb::File,
    pub voice: file_pb::File,
}

/// Template bundle bytes (a zip's magic, enough for the file service).
pub const TEMPLATE: &[u8] = b"PK\x03\x04 a template bundle with a project and its footage";
/// Image bytes (PNG magic).
pub const PNG: &[u8] = b"\x89PNG\r\n\x1a\n an image";

/// The lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// One segment of `composition` over `frames`.
pub fn segment(composition: &str, frames: &str) -> pb::Segment {
    pb::Segment { composition: composition.into(), frames: frames.into(), ..Default::default() }
}

/// A text edit of layer `layer`.
pub fn text_edit(layer: &str, text: &str) -> pb::LayerEdit {
    pb::LayerEdit {
        layer: Some(pb::layer_edit::Layer::LayerName(layer.into())),
        edit: Some(pb::layer_edit::Edit::Text(pb::TextEdit { text: text.into(), ..Default::default() })),
        ..Default::default()
    }
}

/// A media edit of layer `layer` with file `file_id`.
pub fn media_edit(layer: &str, file_id: &str) -> pb::LayerEdit {
    pb::LayerEdit {
        layer: Some(pb::layer_edit::Layer::LayerName(layer.into())),
        edit: Some(pb::layer_edit::Edit::Media(pb::MediaReplacement { file_id: file_id.into(), fit: 0 })),
        ..Default::default()
    }
}

/// An audio track of `kind` playing `file_id`.
pub fn track(kind: pb::AudioTrackKind, file_id: &str) -> pb::AudioTrack {
    pb::AudioTrack { kind: kind as i32, file_id: file_id.into(), volume: 1.0, ..Default::default() }
}

/// A small valid request: one 30-frame segment of `template`, keyed `key`.
pub fn request(template: &file_pb::File, key: &str) -> pb::SubmitRenderRequest {
    pb::SubmitRenderRequest {
        template_file_id: template.id.clone(),
        template_sha256: template.sha256.clone(),
        segments: vec![segment("Main", "0-29")],
        idempotency_key: key.into(),
        ..Default::default()
    }
}

/// A snapshot request of frame `frame` of `Main` in `template`, without scene data.
pub fn snapshot_request(template: &file_pb::File, frame: i32) -> pb::RequestSnapshotRequest {
    pb::RequestSnapshotRequest {
        template_file_id: template.id.clone(),
        template_sha256: template.sha256.clone(),
        composition: "Main".into(),
        frame,
        ..Default::default()
    }
}

/// The code and message of a failed call, panicking with the response when it succeeded.
pub fn failure<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (tonic::Code, String) {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(status) => (status.code(), status.message().to_owned()),
    }
}

/// Waits for a notification on `listener` (10 s at most) and returns its channel and payload.
pub async fn notification(listener: &mut PgListener) -> (String, String) {
    let received = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification in time")
        .expect("a notification");
    (received.channel().to_owned(), received.payload().to_owned())
}

/// Polls `check` every 20 ms until it holds (10 s at most).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
