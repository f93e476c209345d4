//! `--target all`: render checks a submit's files through the file service of its own process,
//! signing its service credential with the development key.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_kit::auth::{AccessClaims, DevKeyFiles, Role};
use flatrender_kit::testing::TestDatabase;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sha2::Digest as _;
use support::{Flatrender, await_health};
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_check_response::ServingStatus;

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

#[tokio::test]
async fn a_submit_is_checked_by_the_file_service_of_the_same_process() {
    let db = TestDatabase::migrated().await;
    let server = Flatrender::start(db.url().expose(), &["--target", "all"]);
    let channel = server.channel().await;
    await_health(channel.clone(), "", ServingStatus::Serving, Duration::from_secs(20)).await;

    let now = jsonwebtoken::get_current_timestamp();
    let claims = AccessClaims {
        iss: "flatrender".into(),
        aud: "flatrender-api".into(),
        sub: uuid::Uuid::new_v4(),
        tid: uuid::Uuid::new_v4(),
        role: Role::User,
        sid: None,
        svc: None,
        akid: None,
        scp: None,
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: uuid::Uuid::new_v4(),
    };
    let token = DevKeyFiles::under(&server.data_dir).signer().unwrap().sign(&claims).unwrap();

    let bundle = b"PK\x03\x04 a template bundle".to_vec();
    let sha256 = hex::encode(sha2::Sha256::digest(&bundle));
    let target = file_pb::UploadTarget {
        name: "template.zip".into(),
        kind: file_pb::FileKind::TemplateBundle as i32,
        ..Default::default()
    };
    let metadata = file_pb::UploadFileMetadata {
        target: Some(target),
        size_bytes: bundle.len() as u64,
        sha256: sha256.clone(),
        idempotency_key: String::new(),
    };
    use file_pb::upload_file_request::Payload;
    let messages = vec![
        file_pb::UploadFileRequest { payload: Some(Payload::Metadata(metadata)) },
        file_pb::UploadFileRequest { payload: Some(Payload::Chunk(bundle.into())) },
    ];
    let mut uploads = file_pb::upload_service_client::UploadServiceClient::new(channel.clone());
    let file = uploads.upload_file(authorized(tokio_stream::iter(messages), &token)).await.unwrap();
    let file = file.into_inner().file.unwrap();

    let mut renders = pb::render_service_client::RenderServiceClient::new(channel);
    let request = pb::SubmitRenderRequest {
        template_file_id: file.id.clone(),
        template_sha256: sha256,
        segments: vec![pb::Segment { composition: "Main".into(), frames: "0-9".into(), ..Default::default() }],
        idempotency_key: "e2e".into(),
        ..Default::default()
    };
    let job = renders.submit_render(authorized(request.clone(), &token)).await.unwrap().into_inner();
    assert_eq!(job.render.unwrap().state, pb::JobState::Queued as i32);

    let unknown = pb::SubmitRenderRequest {
        template_file_id: uuid::Uuid::new_v4().to_string(),
        idempotency_key: "e2e-unknown".into(),
        ..request
    };
    let status = renders.submit_render(authorized(unknown, &token)).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::NotFound, "template_file_id: file not found"));
}
