//! The byte RPCs of the agent protocol over the real services (render and file in one process),
//! PostgreSQL and simulated agents: DownloadObject serves what a task's assignment names (whole
//! or from an offset, an assembly's frames by segment and frame) and nothing else; UploadObject
//! stores a task's outputs in the file service only when they match their header and the lease
//! is still current, and a retry gets the first file. An assembly of a plan with a watermark
//! names the platform's watermark image, which its node may fetch.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::files::CATALOGUE_TENANT;
use support::agent::frame_header;
use support::*;
use tonic::Code;
use uuid::Uuid;

use agent_pb::download_object_request::Object;
use agent_pb::session_request::Payload as In;

const TENANT_A: Uuid = Uuid::from_u128(0xa);
const TENANT_B: Uuid = Uuid::from_u128(0xb);

/// A node with ffmpeg that leaves its tasks to the test.
fn manual() -> AgentSpec {
    AgentSpec { ffmpeg: true, behaviour: Behaviour::Manual, ..AgentSpec::default() }
}

/// Bytes of a frame: a PNG signature, then `len` bytes that differ per `seed`.
fn frame_bytes(seed: u8, len: usize) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

/// A download of `file` for `task` from `offset`.
fn file_request(task: &agent_pb::AssignTask, file: &str, offset: u64) -> agent_pb::DownloadObjectRequest {
    agent_pb::DownloadObjectRequest {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        object: Some(Object::FileId(file.into())),
        offset,
    }
}

fn render_spec(task: &agent_pb::AssignTask) -> &agent_pb::RenderSpec {
    match &task.spec {
        Some(agent_pb::assign_task::Spec::Render(spec)) => spec,
        other => panic!("a render spec, not {other:?}"),
    }
}

/// The code of a failed call.
fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    failure(result).0
}

/// Files of `kind` the file service holds for `tenant`.
async fn files_of(stack: &Orchestrator, tenant: Uuid, kind: &str) -> i64 {
    stack.count(&format!("SELECT count(*) FROM file_mgr.files WHERE tenant_id = '{tenant}' AND kind = '{kind}'")).await
}

/// Waits until the file service has no upload session left open (an abandoned one is aborted).
async fn no_open_sessions(stack: &Orchestrator) {
    let sql = "SELECT count(*) FROM file_mgr.upload_sessions WHERE state NOT IN ('aborted', 'completed', 'expired')";
    eventually("abandoned upload sessions to be aborted", || async { stack.count(sql).await == 0 }).await;
    let aborted = stack.count("SELECT count(*) FROM file_mgr.upload_sessions WHERE state = 'aborted'").await;
    assert!(aborted > 0, "the large upload went through a session, and it was aborted");
}

/// Submits a one-chunk job of `frames` for `who` with a media edit and a music track.
async fn submit(stack: &Orchestrator, who: &Principal, files: &Assets, frames: &str) -> pb::RenderJob {
    let mut request = request(&files.template, "transfers");
    request.segments = vec![segment("Main", frames)];
    request.scene_data = Some(pb::SceneData { edits: vec![media_edit("Logo", &files.image.id)], ..Default::default() });
    request.audio_tracks = vec![track(pb::AudioTrackKind::Music, &files.music.id)];
    stack.renders(who).submit_render(request).await.unwrap().into_inner().render.unwrap()
}

#[tokio::test]
async fn a_task_downloads_what_its_assignment_names_whole_or_resumed() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let elsewhere = stack.assets(&Principal::user(TENANT_B)).await;
    submit(&stack, &alice, &files, "0-9").await;
    let node = stack.agent(manual()).await;
    let task = node.next_assign().await;

    // The assignment names every input with what the agent must verify.
    let spec = render_spec(&task);
    let bundle = spec.template_bundle.as_ref().unwrap();
    assert_eq!(bundle.file_id, files.template.id);
    assert_eq!(bundle.sha256, files.template.sha256);
    assert_eq!(bundle.size_bytes, TEMPLATE.len() as u64);
    assert_eq!(bundle.content_type, files.template.content_type);
    assert_eq!(spec.assets.len(), 1, "the media of the scene data: {:?}", spec.assets);
    assert_eq!(spec.assets[0].file_id, files.image.id);
    assert_eq!(spec.assets[0].sha256, files.image.sha256);
    assert_eq!(spec.assets[0].size_bytes, PNG.len() as u64);
    assert_eq!(spec.assets[0].content_type, "image/png");

    let (info, bytes) = node.download(file_request(&task, &files.template.id, 0)).await.unwrap();
    assert_eq!(bytes, TEMPLATE);
    assert_eq!(sha256_hex(&bytes), info.sha256);
    assert_eq!(
        (info.file_id.as_str(), info.size_bytes, info.offset),
        (files.template.id.as_str(), TEMPLATE.len() as u64, 0)
    );

    // Resumed: the rest, with the facts of the whole object.
    let (info, rest) = node.download(file_request(&task, &files.template.id, 10)).await.unwrap();
    assert_eq!(rest, &TEMPLATE[10..]);
    assert_eq!(
        (info.offset, info.size_bytes, info.sha256.as_str()),
        (10, TEMPLATE.len() as u64, sha256_hex(TEMPLATE).as_str())
    );
    let (_, nothing) = node.download(file_request(&task, &files.template.id, TEMPLATE.len() as u64)).await.unwrap();
    assert!(nothing.is_empty(), "an offset at the end is an empty remainder");
    let (_, image) = node.download(file_request(&task, &files.image.id, 0)).await.unwrap();
    assert_eq!(image, PNG);

    let past_end = node.download(file_request(&task, &files.template.id, TEMPLATE.len() as u64 + 1)).await;
    assert_eq!(code(past_end), Code::OutOfRange);
    // The music is the assembly's input, not this chunk's; another tenant's file is nobody's.
    assert_eq!(code(node.download(file_request(&task, &files.music.id, 0)).await), Code::PermissionDenied);
    assert_eq!(code(node.download(file_request(&task, &elsewhere.template.id, 0)).await), Code::PermissionDenied);
    let stale = agent_pb::DownloadObjectRequest {
        lease_epoch: task.lease_epoch + 1,
        ..file_request(&task, &files.template.id, 0)
    };
    assert_eq!(code(node.download(stale).await), Code::FailedPrecondition);
    let frame = agent_pb::DownloadObjectRequest {
        object: Some(Object::Frame(agent_pb::FrameSelector { segment_index: 0, frame: 0 })),
        ..file_request(&task, "", 0)
    };
    assert_eq!(code(node.download(frame).await), Code::PermissionDenied, "frames are an assembly's inputs");

    // A file that is gone is NOT_FOUND.
    stack.execute(&format!("UPDATE file_mgr.files SET state = 'deleting' WHERE id = '{}'", files.image.id)).await;
    assert_eq!(code(node.download(file_request(&task, &files.image.id, 0)).await), Code::NotFound);

    // Without the node's credential nothing downloads.
    let mut anonymous = agent_pb::agent_service_client::AgentServiceClient::new(stack.channel());
    let refused = anonymous.download_object(file_request(&task, &files.template.id, 0)).await;
    assert_eq!(code(refused), Code::Unauthenticated);
}

#[tokio::test]
async fn a_download_stops_once_its_lease_ends() {
    use flatrender_proto::flatrender::file::v1::FileKind;
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let mut files = stack.assets(&alice).await;
    let big = [TEMPLATE, &vec![7; 24 << 20]].concat();
    files.template = stack.upload(&alice, alice.tenant, "big.zip", FileKind::TemplateBundle, &big).await;
    let job = submit(&stack, &alice, &files, "0-9").await;
    let node = stack.agent(manual()).await;
    let task = node.next_assign().await;

    let mut stream = node.download_stream(file_request(&task, &files.template.id, 0)).await.unwrap();
    stream.message().await.unwrap().expect("the info");
    stream.message().await.unwrap().expect("the first part");
    cancel_job(stack.pool(), Uuid::try_parse(&job.id).unwrap()).await;
    // What was on its way still arrives; the next lease check (every 8 MiB) ends the stream.
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(message)) => match message.part {
                Some(agent_pb::download_object_response::Part::Data(data)) => received += data.len(),
                other => panic!("only data after the info, not {other:?}"),
            },
            Ok(None) => panic!("the whole template ({received} more bytes) came after its lease ended"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(received < big.len() - (1 << 20), "{received} bytes after the lease ended");
}

#[tokio::test]
async fn uploaded_frames_are_reported_and_then_assembled_from_downloads() {
    let stack = Orchestrator::start_with_files().await;
    // The platform's watermark image, and a replica marking the exports of plans with a
    // watermark with it (set up once the image has its id); the customer and the node use it.
    let platform = Principal::user(CATALOGUE_TENANT);
    let mark = stack.upload(&platform, CATALOGUE_TENANT, "watermark.png", file_pb::FileKind::Asset, PNG).await;
    let file_service = stack.settings.api.file_service.clone();
    let image = Uuid::parse_str(&mark.id).unwrap();
    let render = stack
        .replica(|s| {
            s.api.file_service = file_service;
            s.watermark.image_file_id = Some(image);
        })
        .await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    // Alice's plan is the free one: a watermark.
    let job = submit(&render, &alice, &files, "0-2").await;
    assert!(job.watermark);
    let node = render.agent(manual()).await;
    let chunk = node.next_assign().await;
    node.send(agent::accepted(&chunk));

    // Frame 1 takes three parts each way.
    let frames: Vec<Vec<u8>> = (0..3).map(|f| frame_bytes(f as u8, if f == 1 { 9 << 20 } else { 100 })).collect();
    let mut outputs = Vec::new();
    for (frame, data) in frames.iter().enumerate() {
        let stored = node.upload(frame_header(&chunk, frame as i32, data), data).await.unwrap();
        assert!(!stored.deduplicated);
        assert_eq!((stored.size_bytes, stored.sha256.as_str()), (data.len() as u64, sha256_hex(data).as_str()));
        outputs.push(agent_pb::FrameOutput {
            frame: frame as i32,
            status: agent_pb::FrameStatus::Ok as i32,
            file_id: stored.file_id,
            sha256: stored.sha256,
            size_bytes: stored.size_bytes,
            resolution: None,
            render_ms: 40,
        });
    }
    assert_eq!(files_of(&stack, TENANT_A, "render_chunk").await, 3, "frames are the tenant's render chunks");
    let seq = node.send(In::FrameReport(agent_pb::FrameReport {
        task_id: chunk.task_id.clone(),
        lease_epoch: chunk.lease_epoch,
        segment_index: 0,
        frames: outputs.clone(),
    }));
    node.ack_of(seq).await;
    let recorded = stack
        .count(&format!(
            "SELECT count(*) FROM render.frame_results r JOIN file_mgr.files f ON f.id = r.file_id
              WHERE r.frame_job_id = '{}' AND f.sha256 = r.sha256 AND f.size_bytes = r.size_bytes",
            chunk.task_id
        ))
        .await;
    assert_eq!(recorded, 3, "the report names the uploaded files");
    let seq = node.send(In::TaskResult(agent_pb::TaskResult {
        task_id: chunk.task_id.clone(),
        lease_epoch: chunk.lease_epoch,
        outcome: pb::TaskOutcome::Success as i32,
        exit_code: Some(0),
        frames: outputs.clone(),
        timings: Some(agent_pb::TaskTimings { total_ms: 700, ..Default::default() }),
        ..Default::default()
    }));
    node.ack_of(seq).await;
    node.drop_task(&chunk.task_id);

    let assembly = node.next_assign().await;
    assert_eq!(assembly.render_id, job.id);
    let Some(agent_pb::assign_task::Spec::Assemble(spec)) = &assembly.spec else { panic!("an assembly") };
    let source = spec.audio_tracks[0].source.as_ref().unwrap();
    assert_eq!(
        (source.file_id.as_str(), source.sha256.as_str()),
        (files.music.id.as_str(), files.music.sha256.as_str())
    );
    assert_eq!(source.size_bytes, files.music.size_bytes);
    let (_, music) = node.download(file_request(&assembly, &files.music.id, 0)).await.unwrap();
    assert_eq!(music, b"ID3 music");
    // The watermark is the image, recorded when the job was submitted, and the node may fetch it.
    let Some(agent_pb::watermark::Mark::Image(object)) = spec.watermark.as_ref().and_then(|w| w.mark.clone()) else {
        panic!("the image as the watermark: {:?}", spec.watermark)
    };
    assert_eq!((object.file_id.as_str(), object.sha256.as_str()), (mark.id.as_str(), mark.sha256.as_str()));
    assert_eq!(object.size_bytes, PNG.len() as u64);
    let (_, bytes) = node.download(file_request(&assembly, &mark.id, 0)).await.unwrap();
    assert_eq!(bytes, PNG);

    let frame = |segment_index, frame| agent_pb::DownloadObjectRequest {
        object: Some(Object::Frame(agent_pb::FrameSelector { segment_index, frame })),
        ..file_request(&assembly, "", 0)
    };
    for (number, data) in frames.iter().enumerate() {
        let (info, bytes) = node.download(frame(0, number as i32)).await.unwrap();
        assert_eq!(info.file_id, outputs[number].file_id);
        assert_eq!(info.sha256, sha256_hex(data));
        assert!(bytes == *data, "frame {number} comes back byte for byte");
    }
    let resumed = agent_pb::DownloadObjectRequest { offset: 1 << 20, ..frame(0, 1) };
    let (_, rest) = node.download(resumed).await.unwrap();
    assert!(rest == frames[1][1 << 20..], "a resumed frame is its remainder");
    assert_eq!(code(node.download(frame(0, 3)).await), Code::PermissionDenied, "not a frame of the segment");
    assert_eq!(code(node.download(frame(1, 0)).await), Code::PermissionDenied, "no such segment");
    assert_eq!(code(node.download(file_request(&assembly, &files.template.id, 0)).await), Code::PermissionDenied);
}

#[tokio::test]
async fn uploads_must_match_their_header_and_a_retry_gets_the_first_file() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    submit(&stack, &alice, &files, "0-9").await;
    let node = stack.agent(manual()).await;
    let task = node.next_assign().await;
    let data = frame_bytes(7, 3000);
    let nothing_stored = || async {
        files_of(&stack, TENANT_A, "render_chunk").await == 0
            && stack.count("SELECT count(*) FROM render.object_uploads").await == 0
    };

    let wrong = agent_pb::UploadHeader { sha256: sha256_hex(b"other bytes"), ..frame_header(&task, 3, &data) };
    let (status, message) = failure(node.upload(wrong, &data).await);
    assert_eq!(status, Code::DataLoss, "{message}");
    assert!(message.starts_with("sha256"), "{message}");
    let short = frame_header(&task, 3, &data);
    assert_eq!(code(node.upload(short, &data[..1000]).await), Code::DataLoss);
    let long = frame_header(&task, 3, &data[..1000]);
    assert_eq!(code(node.upload(long, &data).await), Code::DataLoss);
    assert!(nothing_stored().await, "a refused upload leaves nothing in the file service");
    // The same for an object large enough for an upload session: it is aborted.
    let large = frame_bytes(8, 9 << 20);
    let wrong = agent_pb::UploadHeader { sha256: sha256_hex(b"other bytes"), ..frame_header(&task, 3, &large) };
    assert_eq!(code(node.upload(wrong, &large).await), Code::DataLoss);
    no_open_sessions(&stack).await;
    assert!(nothing_stored().await);

    let huge = agent_pb::UploadHeader { size_bytes: (512 << 20) + 1, ..frame_header(&task, 3, &data) };
    assert_eq!(code(node.upload(huge, &[]).await), Code::ResourceExhausted);
    let (status, message) = failure(
        node.upload(agent_pb::UploadHeader { file_name: "a/b.png".into(), ..frame_header(&task, 3, &data) }, &data)
            .await,
    );
    assert_eq!((status, message.starts_with("header.file_name")), (Code::InvalidArgument, true), "{message}");
    let video =
        agent_pb::UploadHeader { kind: agent_pb::ObjectKind::Video as i32, frame: -1, ..frame_header(&task, 3, &data) };
    assert_eq!(code(node.upload(video, &data).await), Code::InvalidArgument, "a chunk delivers no video");
    assert!(nothing_stored().await);

    let first = node.upload(frame_header(&task, 3, &data), &data).await.unwrap();
    assert!(!first.deduplicated);
    let again = node.upload(frame_header(&task, 3, &data), &data).await.unwrap();
    assert_eq!((again.file_id.as_str(), again.deduplicated), (first.file_id.as_str(), true));
    assert_eq!(files_of(&stack, TENANT_A, "render_chunk").await, 1, "the retry stored nothing");
    // Another frame is another object.
    let other = node.upload(frame_header(&task, 4, &data), &data).await.unwrap();
    assert_ne!(other.file_id, first.file_id);

    // A stale epoch is refused before a byte is read.
    let stale = agent_pb::UploadHeader { lease_epoch: task.lease_epoch + 1, ..frame_header(&task, 5, &data) };
    assert_eq!(code(node.upload(stale, &data).await), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_upload_after_the_lease_moved_is_refused_and_leaves_nothing() {
    use agent_pb::upload_object_request::Part;
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = submit(&stack, &alice, &files, "0-9").await;
    let node = stack.agent(manual()).await;
    let task = node.next_assign().await;
    node.send(agent::accepted(&task));
    const PARTS: usize = 8;
    let data = frame_bytes(1, PARTS << 20);
    let mut operators = stack.render_admin(Role::PlatformAdmin);

    // One part waits in the channel at a time, and HTTP/2 lets 2 MiB wait unread: once the
    // eighth part is taken, render has read the header, checked the lease and is streaming.
    let (parts, queued) = tokio::sync::mpsc::channel(1);
    let upload = node.upload_stream(tokio_stream::wrappers::ReceiverStream::new(queued));
    let operator = async {
        let header = frame_header(&task, 0, &data);
        parts.send(agent_pb::UploadObjectRequest { part: Some(Part::Header(header)) }).await.unwrap();
        let mut chunks = data.chunks(1 << 20);
        for part in chunks.by_ref().take(PARTS) {
            let message = agent_pb::UploadObjectRequest { part: Some(Part::Data(part.to_vec().into())) };
            parts.send(message).await.expect("render is still taking the upload");
        }
        let request = pb::RequeueRenderRequest {
            render_id: job.id.clone(),
            reason: "the lease moves mid-upload".into(),
            clear_excluded_nodes: false,
        };
        operators.requeue_render(request).await.unwrap();
        for part in chunks {
            let message = agent_pb::UploadObjectRequest { part: Some(Part::Data(part.to_vec().into())) };
            parts.send(message).await.expect("render is still taking the upload");
        }
        drop(parts);
    };
    let (result, ()) = tokio::join!(upload, operator);
    let (status, message) = failure(result);
    assert_eq!(status, Code::FailedPrecondition, "{message}");
    no_open_sessions(&stack).await;
    assert_eq!(files_of(&stack, TENANT_A, "render_chunk").await, 0, "nothing was committed");

    // Under the old epoch nothing more is taken, the header is refused at once.
    let small = frame_bytes(2, 10);
    assert_eq!(code(node.upload(frame_header(&task, 1, &small), &small).await), Code::FailedPrecondition);
    assert_eq!(stack.count("SELECT count(*) FROM render.object_uploads").await, 0);
}

#[tokio::test]
async fn an_uploaded_snapshot_image_and_log_are_what_the_result_delivers() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let size = flatrender_proto::flatrender::common::v1::Resolution { width: 640, height: 360 };
    let request = pb::RequestSnapshotRequest {
        template_file_id: files.template.id.clone(),
        template_sha256: files.template.sha256.clone(),
        composition: "Main".into(),
        frame: 12,
        resolution: Some(size),
        ..Default::default()
    };
    let snapshot = stack.renders(&alice).request_snapshot(request).await.unwrap().into_inner().snapshot.unwrap();
    let node = stack.agent(manual()).await;
    let task = node.next_assign().await;
    assert_eq!(task.kind(), pb::TaskKind::Snapshot);
    let (_, bundle) = node.download(file_request(&task, &files.template.id, 0)).await.unwrap();
    assert_eq!(bundle, TEMPLATE);
    node.send(agent::accepted(&task));

    let header = |kind: agent_pb::ObjectKind, name: &str, content_type: &str, data: &[u8]| agent_pb::UploadHeader {
        kind: kind as i32,
        frame: -1,
        file_name: name.into(),
        content_type: content_type.into(),
        ..frame_header(&task, 0, data)
    };
    let image = frame_bytes(3, 500);
    let log = b"Finished composition\n".to_vec();
    let stored = node.upload(header(agent_pb::ObjectKind::SnapshotImage, "snapshot.png", "image/png", &image), &image);
    let stored = stored.await.unwrap();
    let logged = node.upload(header(agent_pb::ObjectKind::Log, "aerender.log", "text/plain", &log), &log);
    let logged = logged.await.unwrap();
    let frame = agent_pb::UploadHeader { frame: 0, ..frame_header(&task, 0, &image) };
    assert_eq!(code(node.upload(frame, &image).await), Code::InvalidArgument, "a snapshot delivers no frames");
    let output = |kind: agent_pb::ObjectKind, stored: &agent_pb::UploadObjectResponse, media| agent_pb::TaskOutput {
        kind: kind as i32,
        file_id: stored.file_id.clone(),
        sha256: stored.sha256.clone(),
        size_bytes: stored.size_bytes,
        content_type: String::new(),
        media,
    };
    let media = agent_pb::MediaInfo { resolution: Some(size), ..Default::default() };
    let seq = node.send(In::TaskResult(agent_pb::TaskResult {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        outcome: pb::TaskOutcome::Success as i32,
        exit_code: Some(0),
        outputs: vec![
            output(agent_pb::ObjectKind::SnapshotImage, &stored, Some(media)),
            output(agent_pb::ObjectKind::Log, &logged, None),
        ],
        timings: Some(agent_pb::TaskTimings { total_ms: 300, ..Default::default() }),
        ..Default::default()
    }));
    node.ack_of(seq).await;

    let ready = format!(
        "SELECT count(*) FROM render.snapshots WHERE id = '{}' AND state = 'ready' AND file_id = '{}'",
        snapshot.id, stored.file_id
    );
    assert_eq!(stack.count(&ready).await, 1, "the uploaded image is the snapshot's");
    assert_eq!(files_of(&stack, TENANT_A, "snapshot").await, 1);
    let log_row = format!(
        "SELECT count(*) FROM render.frame_job_attempts a JOIN file_mgr.files f ON f.id = a.log_file_id
          WHERE a.frame_job_id = '{}' AND f.kind = 'other' AND f.tenant_id = '{}' AND f.owner_user_id IS NULL",
        task.task_id, CATALOGUE_TENANT
    );
    assert_eq!(stack.count(&log_row).await, 1, "the log is the platform's");
}

#[tokio::test]
async fn a_watermark_image_that_is_no_platform_file_refuses_no_submit() {
    let alice = Principal::user(TENANT_A);
    // An id the file service does not know.
    let unknown = Uuid::new_v4();
    let stack = Orchestrator::start_with_files_and(|s| s.watermark.image_file_id = Some(unknown)).await;
    let files = stack.assets(&alice).await;
    let job = submit(&stack, &alice, &files, "0-2").await;
    assert!(job.watermark);
    let recorded = |file: &str| format!("SELECT count(*) FROM render.file_facts WHERE file_id = '{file}'");
    assert_eq!(stack.count(&recorded(&unknown.to_string())).await, 0, "the assembly will carry the text");

    // A customer's file (one no submit names) is not the platform's either.
    let file_service = stack.settings.api.file_service.clone();
    let voice = Uuid::parse_str(&files.voice.id).unwrap();
    let render = stack
        .replica(|s| {
            s.api.file_service = file_service;
            s.watermark.image_file_id = Some(voice);
        })
        .await;
    let job = submit(&render, &alice, &files, "0-2").await;
    assert!(job.watermark);
    assert_eq!(stack.count(&recorded(&files.voice.id)).await, 0);
    assert_eq!(stack.count(&recorded(&files.music.id)).await, 1, "what the submits name is recorded");
}
