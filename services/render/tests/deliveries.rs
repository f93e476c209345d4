//! What snapshots and assemblies deliver, over the real services (render and file in one
//! process), PostgreSQL and simulated agents: a verified image makes a snapshot READY, a
//! verified video becomes the export that completes its job; outputs that are missing, differ
//! from the stored file, belong to another tenant or do not fit the job are machine errors that
//! write nothing else; a file service that cannot be reached is no one's error (the result is
//! refused UNAVAILABLE, to be resent).

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api_support;
mod support;

use std::time::Duration;

use api_support::*;
use flatrender_kit::auth::{Role, ServiceName, TokenSigner};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1::Resolution;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::files::FileServiceSettings;
use futures_util::StreamExt as _;
use prost::Message as _;
use support::{AgentSpec, Behaviour, Identity, SimAgent};
use tonic::service::interceptor::InterceptedService;
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

const TENANT_A: Uuid = Uuid::from_u128(0xa);
const TENANT_B: Uuid = Uuid::from_u128(0xb);
/// Bytes of a video (an MP4 `ftyp` box, enough for the file service).
const VIDEO: &[u8] = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom an assembled video";

/// Enrols a node for `spec` through the real Enroll RPC and connects a simulated agent to the
/// stack.
async fn agent(stack: &Stack, spec: AgentSpec) -> SimAgent {
    let admin = Principal { role: Role::PlatformAdmin, ..Principal::user(Uuid::new_v4()) };
    let bearer = Bearer(format!("Bearer {}", stack.token(&admin)).parse().unwrap());
    let mut admin =
        pb::node_admin_service_client::NodeAdminServiceClient::new(InterceptedService::new(stack.channel(), bearer));
    let request = pb::CreateEnrollmentTokenRequest { description: "test".into(), ttl: None, tags: Vec::new() };
    let secret = admin.create_enrollment_token(request).await.unwrap().into_inner().secret;
    let mut client = agent_pb::agent_service_client::AgentServiceClient::new(stack.channel());
    let enrolled = client.enroll(spec.enroll_request(&secret)).await.unwrap().into_inner();
    let identity = Identity {
        node_id: enrolled.node_id.parse().unwrap(),
        credential: enrolled.node_credential.clone(),
        name: enrolled.name,
    };
    let authorization = format!("Bearer {}", identity.credential);
    SimAgent::connect_over(client, stack.db.pool(), identity, spec, &authorization).await
}

/// A node with ffmpeg that leaves its tasks to the test.
fn assembler() -> AgentSpec {
    AgentSpec { ffmpeg: true, behaviour: Behaviour::Manual, ..AgentSpec::default() }
}

/// An output of `kind` naming `file` with `media`.
fn output(kind: agent_pb::ObjectKind, file: &file_pb::File, media: agent_pb::MediaInfo) -> agent_pb::TaskOutput {
    agent_pb::TaskOutput {
        kind: kind as i32,
        file_id: file.id.clone(),
        sha256: file.sha256.clone(),
        size_bytes: file.size_bytes,
        content_type: file.content_type.clone(),
        media: Some(media),
    }
}

/// Sends a SUCCESS of `task` with `outputs` and waits for its acknowledgement.
async fn succeed(agent: &SimAgent, task: &agent_pb::AssignTask, outputs: Vec<agent_pb::TaskOutput>) {
    agent.send(support::agent::accepted(task));
    let seq = agent.send(In::TaskResult(agent_pb::TaskResult {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        outcome: pb::TaskOutcome::Success as i32,
        exit_code: Some(0),
        outputs,
        timings: Some(agent_pb::TaskTimings { total_ms: 700, ..Default::default() }),
        ..Default::default()
    }));
    agent.ack_of(seq).await;
}

/// The last attempt of `task`: outcome and error code.
async fn last_attempt(stack: &Stack, task: &str) -> (String, Option<String>, Option<String>) {
    sqlx::query_as(
        "SELECT outcome, error_code, error_message FROM render.frame_job_attempts
          WHERE frame_job_id = $1::uuid ORDER BY attempt DESC LIMIT 1",
    )
    .bind(task)
    .fetch_one(stack.db.pool())
    .await
    .unwrap()
}

async fn job_state(stack: &Stack, job: &str) -> String {
    sqlx::query_scalar("SELECT state FROM render.render_jobs WHERE id = $1::uuid")
        .bind(job)
        .fetch_one(stack.db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_assembled_video_becomes_the_export_that_completes_the_job() {
    let stack = Stack::start_with(|settings| settings.max_attempts = 5).await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "assembled"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let watch = pb::WatchRenderRequest { render_id: job.id.clone(), include_chunks: false };
    let mut stream = stack.renders(&alice).watch_render(watch).await.unwrap().into_inner();

    // The chunks render on a node without ffmpeg; the job then waits for an assembler.
    let _renderer = agent(&stack, AgentSpec::default()).await;
    eventually("the job to reach assembly", || async { job_state(&stack, &job.id).await == "assembling" }).await;

    let wanted = job.output.unwrap();
    let size = wanted.resolution.unwrap();
    let media = |frames: i32| agent_pb::MediaInfo {
        resolution: Some(size),
        fps: wanted.fps,
        frame_count: frames,
        duration_ms: (f64::from(frames) * 1000.0 / wanted.fps).round() as i64,
        video_codec: "h264".into(),
        ..Default::default()
    };
    let render = Principal::service(ServiceName::Render);
    let video = stack.upload(&render, TENANT_A, "render.mp4", file_pb::FileKind::Export, VIDEO).await;
    let elsewhere = stack.upload(&render, TENANT_B, "render.mp4", file_pb::FileKind::Export, VIDEO).await;
    let nothing_written = || async {
        assert_eq!(job_state(&stack, &job.id).await, "assembling");
        assert_eq!(stack.count("SELECT count(*) FROM render.exports").await, 0);
        assert!(stack.events("flatrender.events.v1.RenderJobCompleted").await.is_empty());
    };

    // A video one frame short: OUTPUT_MISMATCH, retried elsewhere.
    let first = agent(&stack, assembler()).await;
    let task = first.next_assign().await;
    assert_eq!(task.kind(), pb::TaskKind::Assemble);
    succeed(&first, &task, vec![output(agent_pb::ObjectKind::Video, &video, media(29))]).await;
    let (outcome, code, message) = last_attempt(&stack, &task.task_id).await;
    assert_eq!((outcome.as_str(), code.as_deref()), ("machine_error", Some("output_mismatch")));
    assert!(message.unwrap().contains("29 frames"));
    nothing_written().await;

    // Another tenant's file: not the task's (UPLOAD_FAILED).
    let second = agent(&stack, assembler()).await;
    let task = second.next_assign().await;
    succeed(&second, &task, vec![output(agent_pb::ObjectKind::Video, &elsewhere, media(30))]).await;
    let (outcome, code, _) = last_attempt(&stack, &task.task_id).await;
    assert_eq!((outcome.as_str(), code.as_deref()), ("machine_error", Some("upload_failed")));
    nothing_written().await;

    // A file of the tenant's that is no export (its template bundle).
    let third = agent(&stack, assembler()).await;
    let task = third.next_assign().await;
    let bundle = file_pb::File { content_type: String::new(), ..files.template.clone() };
    succeed(&third, &task, vec![output(agent_pb::ObjectKind::Video, &bundle, media(30))]).await;
    let (outcome, code, message) = last_attempt(&stack, &task.task_id).await;
    assert_eq!((outcome.as_str(), code.as_deref()), ("machine_error", Some("upload_failed")));
    assert!(message.unwrap().contains("FILE_KIND_TEMPLATE_BUNDLE"));
    nothing_written().await;

    // The video as stored, with the log beside it: the job completes.
    let third = agent(&stack, assembler()).await;
    let task = third.next_assign().await;
    let log = stack.upload(&render, TENANT_A, "assemble.log", file_pb::FileKind::Other, b"ffmpeg log").await;
    let outputs = vec![
        output(agent_pb::ObjectKind::Video, &video, agent_pb::MediaInfo { has_audio: true, ..media(30) }),
        output(agent_pb::ObjectKind::Log, &log, agent_pb::MediaInfo::default()),
    ];
    succeed(&third, &task, outputs).await;
    assert_eq!(job_state(&stack, &job.id).await, "completed");
    let log_file: Option<Uuid> = sqlx::query_scalar(
        "SELECT log_file_id FROM render.frame_job_attempts WHERE frame_job_id = $1::uuid AND outcome = 'success'",
    )
    .bind(&task.task_id)
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    assert_eq!(log_file.map(|id| id.to_string()), Some(log.id.clone()));

    let completed = stack.renders(&alice).get_render(pb::GetRenderRequest { render_id: job.id.clone() }).await;
    let completed = completed.unwrap().into_inner().render.unwrap();
    assert_eq!(completed.state, pb::JobState::Completed as i32);
    assert_eq!(completed.progress, 1.0);
    assert!(completed.finished_at.is_some());
    let export = stack
        .renders(&alice)
        .get_export(pb::GetExportRequest { export_id: completed.export_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .export
        .unwrap();
    assert_eq!((export.render_id.as_str(), export.file_id.as_str()), (job.id.as_str(), video.id.as_str()));
    assert_eq!((export.sha256.as_str(), export.size_bytes), (video.sha256.as_str(), video.size_bytes));
    assert_eq!((export.frame_count, export.resolution), (30, Some(size)));
    assert!(export.has_audio && export.expires_at.is_some());
    let listed = stack
        .renders(&alice)
        .list_exports(pb::ListExportsRequest { render_id: job.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.exports, vec![export.clone()]);

    let events = stack.events("flatrender.events.v1.RenderJobCompleted").await;
    assert_eq!(events.len(), 1);
    let event = ev::RenderJobCompleted::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.render_id.as_str(), event.export_id.as_str()), (job.id.as_str(), export.id.as_str()));
    assert_eq!((event.export_file_id.as_str(), event.frames_total), (video.id.as_str(), 30));

    // The file service keeps the video for as long as the export lasts (set right after).
    eventually("the export's file to be retained", || async {
        let retained: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT retained_until FROM file_mgr.files WHERE id = $1::uuid")
                .bind(&video.id)
                .fetch_one(stack.db.pool())
                .await
                .unwrap();
        retained.is_some()
    })
    .await;

    // The watcher's last message is COMPLETED, then the stream ends.
    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        last = Some(message.unwrap());
    }
    assert_eq!(last.unwrap().render.unwrap().state, pb::JobState::Completed as i32);
}

#[tokio::test]
async fn a_snapshot_image_makes_the_snapshot_ready_and_wakes_its_watchers() {
    let stack = Stack::start_with(|settings| settings.max_attempts = 5).await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let request = pb::RequestSnapshotRequest {
        template_file_id: files.template.id.clone(),
        template_sha256: files.template.sha256.clone(),
        composition: "Main".into(),
        frame: 12,
        resolution: Some(Resolution { width: 640, height: 360 }),
        ..Default::default()
    };
    let snapshot = stack.renders(&alice).request_snapshot(request).await.unwrap().into_inner().snapshot.unwrap();
    let watch = pb::WatchSnapshotRequest { snapshot_id: snapshot.id.clone() };
    let mut stream = stack.renders(&alice).watch_snapshot(watch).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(first.state, pb::SnapshotState::Queued as i32);

    let render = Principal::service(ServiceName::Render);
    let image = stack.upload(&render, TENANT_A, "snapshot.png", file_pb::FileKind::Snapshot, PNG).await;
    let media = agent_pb::MediaInfo { resolution: Some(Resolution { width: 640, height: 360 }), ..Default::default() };
    let manual = AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let still_queued = || async {
        let state: String = sqlx::query_scalar("SELECT state FROM render.snapshots WHERE id = $1::uuid")
            .bind(&snapshot.id)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
        assert_eq!(state, "queued");
        assert!(stack.events("flatrender.events.v1.SnapshotReady").await.is_empty());
    };

    // No image at all.
    let first = agent(&stack, manual.clone()).await;
    let task = first.next_assign().await;
    assert_eq!(task.kind(), pb::TaskKind::Snapshot);
    succeed(&first, &task, Vec::new()).await;
    let (outcome, code, _) = last_attempt(&stack, &task.task_id).await;
    assert_eq!((outcome.as_str(), code.as_deref()), ("machine_error", Some("frames_invalid")));
    still_queued().await;

    // An image whose digest is not the stored file's.
    let second = agent(&stack, manual.clone()).await;
    let task = second.next_assign().await;
    let mut wrong = output(agent_pb::ObjectKind::SnapshotImage, &image, media.clone());
    wrong.sha256 = "ab".repeat(32);
    succeed(&second, &task, vec![wrong]).await;
    let (outcome, code, message) = last_attempt(&stack, &task.task_id).await;
    assert_eq!((outcome.as_str(), code.as_deref()), ("machine_error", Some("upload_failed")));
    assert!(message.unwrap().contains("SHA-256"));
    still_queued().await;

    // The image as stored.
    let third = agent(&stack, manual).await;
    let task = third.next_assign().await;
    succeed(&third, &task, vec![output(agent_pb::ObjectKind::SnapshotImage, &image, media)]).await;

    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        last = Some(message.unwrap().snapshot.unwrap());
    }
    let watched = last.unwrap();
    assert_eq!(watched.state, pb::SnapshotState::Ready as i32);
    assert_eq!(watched.file_id, image.id);
    let read = stack
        .renders(&alice)
        .get_snapshot(pb::GetSnapshotRequest { snapshot_id: snapshot.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(read, watched);
    assert!(read.rendered_at.is_some() && read.expires_at.is_some());
    let events = stack.events("flatrender.events.v1.SnapshotReady").await;
    assert_eq!(events.len(), 1);
    eventually("the image to be retained", || async {
        let retained: Option<time::OffsetDateTime> =
            sqlx::query_scalar("SELECT retained_until FROM file_mgr.files WHERE id = $1::uuid")
                .bind(&image.id)
                .fetch_one(stack.db.pool())
                .await
                .unwrap();
        retained.is_some()
    })
    .await;
    let event = ev::SnapshotReady::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.snapshot_id.as_str(), event.file_id.as_str()), (snapshot.id.as_str(), image.id.as_str()));
}

/// The next state of a watched snapshot that differs from `last` (10 s at most).
async fn next_state(stream: &mut tonic::Streaming<pb::WatchSnapshotResponse>, last: pb::SnapshotState) -> pb::Snapshot {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a change in time");
        let snapshot = message.expect("the stream goes on").unwrap().snapshot.unwrap();
        if snapshot.state() != last {
            return snapshot;
        }
    }
}

#[tokio::test]
async fn a_snapshot_renders_while_its_task_is_leased_and_waits_again_when_requeued() {
    let stack = Stack::start_with(|settings| {
        settings.max_attempts = 5;
        settings.reconnect_grace = Duration::from_millis(500);
    })
    .await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let request = pb::RequestSnapshotRequest {
        template_file_id: files.template.id.clone(),
        template_sha256: files.template.sha256.clone(),
        composition: "Main".into(),
        frame: 7,
        resolution: Some(Resolution { width: 640, height: 360 }),
        ..Default::default()
    };
    let snapshot =
        stack.renders(&alice).request_snapshot(request.clone()).await.unwrap().into_inner().snapshot.unwrap();
    let get = pb::GetSnapshotRequest { snapshot_id: snapshot.id.clone() };
    let watch = pb::WatchSnapshotRequest { snapshot_id: snapshot.id.clone() };
    let mut stream = stack.renders(&alice).watch_snapshot(watch).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap().snapshot.unwrap();
    assert_eq!(first.state(), pb::SnapshotState::Queued);

    // Leased: RENDERING, for GetSnapshot (the lease committed before the assignment was sent),
    // for watchers, and for an identical request (no second task).
    let manual = AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let mut first_node = agent(&stack, manual.clone()).await;
    first_node.next_assign().await;
    let got = stack.renders(&alice).get_snapshot(get.clone()).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(got.state(), pb::SnapshotState::Rendering);
    assert_eq!(next_state(&mut stream, pb::SnapshotState::Queued).await.state(), pb::SnapshotState::Rendering);
    let same = stack.renders(&alice).request_snapshot(request).await.unwrap().into_inner();
    assert_eq!((same.snapshot.unwrap().state(), same.cache_hit), (pb::SnapshotState::Rendering, false));
    assert_eq!(stack.count("SELECT count(*) FROM render.frame_jobs").await, 1);

    // The node is lost with attempts left: the task is requeued and the snapshot waits again.
    first_node.disconnect();
    assert_eq!(next_state(&mut stream, pb::SnapshotState::Rendering).await.state(), pb::SnapshotState::Queued);
    let got = stack.renders(&alice).get_snapshot(get.clone()).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(got.state(), pb::SnapshotState::Queued);

    // Another node takes it (RENDERING again) and delivers the image (READY).
    let second_node = agent(&stack, manual).await;
    let task = second_node.next_assign().await;
    assert_eq!(task.lease_epoch, 2);
    assert_eq!(next_state(&mut stream, pb::SnapshotState::Queued).await.state(), pb::SnapshotState::Rendering);
    let render = Principal::service(ServiceName::Render);
    let image = stack.upload(&render, TENANT_A, "snapshot.png", file_pb::FileKind::Snapshot, PNG).await;
    let media = agent_pb::MediaInfo { resolution: Some(Resolution { width: 640, height: 360 }), ..Default::default() };
    succeed(&second_node, &task, vec![output(agent_pb::ObjectKind::SnapshotImage, &image, media)]).await;
    assert_eq!(next_state(&mut stream, pb::SnapshotState::Rendering).await.state(), pb::SnapshotState::Ready);
    let got = stack.renders(&alice).get_snapshot(get).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!((got.state(), got.file_id.as_str()), (pb::SnapshotState::Ready, image.id.as_str()));
}

#[tokio::test]
async fn a_snapshot_whose_task_fails_for_good_is_failed() {
    let stack = Stack::start_with(|settings| settings.max_attempts = 1).await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let request = pb::RequestSnapshotRequest {
        template_file_id: files.template.id.clone(),
        template_sha256: files.template.sha256.clone(),
        composition: "Main".into(),
        frame: 3,
        ..Default::default()
    };
    let snapshot = stack.renders(&alice).request_snapshot(request).await.unwrap().into_inner().snapshot.unwrap();
    let watch = pb::WatchSnapshotRequest { snapshot_id: snapshot.id.clone() };
    let mut stream = stack.renders(&alice).watch_snapshot(watch).await.unwrap().into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().snapshot.unwrap().state, pb::SnapshotState::Queued as i32);

    // Its one attempt claims success without an image.
    let node = agent(&stack, AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let task = node.next_assign().await;
    succeed(&node, &task, Vec::new()).await;

    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        last = Some(message.unwrap().snapshot.unwrap());
    }
    let failed = last.unwrap();
    assert_eq!(failed.state, pb::SnapshotState::Failed as i32);
    assert!(failed.file_id.is_empty());
    let error = failed.error.unwrap();
    assert_eq!((error.error_class(), error.code()), (pb::ErrorClass::Machine, pb::ErrorCode::FramesInvalid));
    assert!(error.message.contains("exactly one SNAPSHOT_IMAGE"));
    let events = stack.events("flatrender.events.v1.SnapshotFailed").await;
    assert_eq!(events.len(), 1);
    let event = ev::SnapshotFailed::decode(events[0].as_slice()).unwrap();
    assert_eq!(event.snapshot_id, snapshot.id);
    let task_state: String = sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1::uuid")
        .bind(&task.task_id)
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    assert_eq!(task_state, "failed");
}

#[tokio::test]
async fn an_assembly_without_its_video_fails_the_job_once_out_of_attempts() {
    let stack = Stack::start_with(|settings| settings.max_attempts = 1).await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "no video"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let _renderer = agent(&stack, AgentSpec::default()).await;
    eventually("the job to reach assembly", || async { job_state(&stack, &job.id).await == "assembling" }).await;
    let node = agent(&stack, assembler()).await;
    let task = node.next_assign().await;
    succeed(&node, &task, Vec::new()).await;

    assert_eq!(job_state(&stack, &job.id).await, "failed");
    let failed = stack.renders(&alice).get_render(pb::GetRenderRequest { render_id: job.id.clone() }).await;
    let error = failed.unwrap().into_inner().render.unwrap().error.unwrap();
    assert_eq!((error.error_class(), error.code()), (pb::ErrorClass::Machine, pb::ErrorCode::OutputMismatch));
    assert_eq!(stack.count("SELECT count(*) FROM render.exports").await, 0);
    assert!(stack.events("flatrender.events.v1.RenderJobCompleted").await.is_empty());
    assert_eq!(stack.events("flatrender.events.v1.RenderJobFailed").await.len(), 1);
}

#[tokio::test]
async fn a_snapshot_whose_node_is_lost_on_its_last_attempt_is_failed() {
    let stack = Stack::start_with(|settings| {
        settings.max_attempts = 1;
        settings.reconnect_grace = Duration::from_millis(500);
    })
    .await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let request = pb::RequestSnapshotRequest {
        template_file_id: files.template.id.clone(),
        template_sha256: files.template.sha256.clone(),
        composition: "Main".into(),
        frame: 5,
        ..Default::default()
    };
    let snapshot = stack.renders(&alice).request_snapshot(request).await.unwrap().into_inner().snapshot.unwrap();
    let watch = pb::WatchSnapshotRequest { snapshot_id: snapshot.id.clone() };
    let mut stream = stack.renders(&alice).watch_snapshot(watch).await.unwrap().into_inner();
    assert_eq!(stream.next().await.unwrap().unwrap().snapshot.unwrap().state, pb::SnapshotState::Queued as i32);

    let mut node = agent(&stack, AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    node.next_assign().await;
    node.disconnect();

    let mut last = None;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        last = Some(message.unwrap().snapshot.unwrap());
    }
    let failed = last.unwrap();
    assert_eq!(failed.state, pb::SnapshotState::Failed as i32);
    let error = failed.error.unwrap();
    assert_eq!((error.error_class(), error.code()), (pb::ErrorClass::Internal, pb::ErrorCode::LeaseLost));
    assert_eq!(stack.events("flatrender.events.v1.SnapshotFailed").await.len(), 1);
}

#[tokio::test]
async fn a_file_service_outage_while_verifying_a_delivery_uses_no_attempt_and_blames_no_node() {
    // A file service nobody answers for: connections are refused.
    let unreachable = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let o = support::Orchestrator::start_with(|settings| {
        settings.max_attempts = 1;
        settings.api.file_service = Some(FileServiceSettings {
            url: format!("http://{unreachable}"),
            signer: TokenSigner::generate("test-key").unwrap(),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
        });
    })
    .await;
    let job =
        support::seed_job(o.pool(), support::JobSeed { segments: vec![("Main".into(), 0, 9)], ..Default::default() })
            .await;
    let _renderer = o.agent(AgentSpec::default()).await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    let node = o.agent(assembler()).await;
    let task = node.next_assign().await;
    node.send(support::agent::accepted(&task));
    // A video that fits the job (seeded at 1280x720, 30 fps, 10 frames), in a file render
    // cannot look at now.
    let video = agent_pb::TaskOutput {
        kind: agent_pb::ObjectKind::Video as i32,
        file_id: Uuid::new_v4().to_string(),
        sha256: "ab".repeat(32),
        size_bytes: VIDEO.len() as u64,
        content_type: "video/mp4".into(),
        media: Some(agent_pb::MediaInfo {
            resolution: Some(Resolution { width: 1280, height: 720 }),
            fps: 30.0,
            frame_count: 10,
            duration_ms: 333,
            video_codec: "h264".into(),
            ..Default::default()
        }),
    };
    let success = || {
        In::TaskResult(agent_pb::TaskResult {
            task_id: task.task_id.clone(),
            lease_epoch: task.lease_epoch,
            outcome: pb::TaskOutcome::Success as i32,
            exit_code: Some(0),
            outputs: vec![video.clone()],
            ..Default::default()
        })
    };

    // Refused UNAVAILABLE, however often the agent resends it; the lease stands.
    for _ in 0..2 {
        let reject = node.reject_of(node.send(success())).await;
        assert_eq!(reject.reason(), agent_pb::RejectReason::Unavailable, "{}", reject.message);
    }
    let (state, attempts, open): (String, i32, bool) = sqlx::query_as(
        "SELECT f.state, f.attempts, a.outcome IS NULL FROM render.frame_jobs f
           JOIN render.frame_job_attempts a ON a.frame_job_id = f.id AND a.lease_epoch = f.lease_epoch
          WHERE f.id = $1::uuid",
    )
    .bind(&task.task_id)
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert!(["leased", "running"].contains(&state.as_str()), "the lease stands: {state}");
    assert_eq!((attempts, open), (1, true), "no attempt used up or closed");
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.render_jobs WHERE id = '{}' AND state = 'assembling'",
            job.job_id
        ))
        .await,
        1,
        "the job did not fail on its only attempt"
    );
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_excluded_nodes").await, 0, "no node blamed");
    assert_eq!(o.count("SELECT count(*) FROM render.node_crashes").await, 0);
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.nodes WHERE id = '{}' AND state = 'online'",
            node.identity.node_id
        ))
        .await,
        1
    );
}
