//! A render from submission to accepted frames through the real pieces: the orchestrator and the
//! file service in this process over a fresh PostgreSQL database, the agent's session, cache,
//! transfers and driver, and the aerender simulator writing real frames. The template is a real
//! bundle (a zip with a simulator project) uploaded to the file service.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod farm;
#[path = "../../services/render/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use farm::{AgentOptions, agent, stack};
use flatrender_agent::simulator::raster::Frame;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use support::{Principal, request, segment, text_edit};
use uuid::Uuid;

const SIM: &str = farm::SIM;

#[tokio::test]
async fn a_submitted_render_is_rendered_and_every_frame_accepted() {
    let (o, alice, template) = stack().await;
    let state = tempfile::tempdir().unwrap();
    let agent = agent(&o, state.path(), AgentOptions::default()).await;

    let submit = pb::SubmitRenderRequest {
        segments: vec![segment("Main", "0-9")],
        scene_data: Some(pb::SceneData { edits: vec![text_edit("Title", "Hello FlatRender")], custom_data: None }),
        ..request(&template, "agent-e2e")
    };
    let job = o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    o.until(
        "every frame of the job is accepted",
        &format!("SELECT count(*) = 10 FROM render.frame_results WHERE job_id = '{}'", job.id),
    )
    .await;
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.frame_results WHERE job_id = '{}' AND width = 1280 AND height = 720 AND file_id IS NOT NULL",
            job.id
        ))
        .await,
        10
    );
    // The customer's text is in the pixels of a stored frame.
    let job_id: Uuid = job.id.parse().unwrap();
    let file_id: Uuid =
        sqlx::query_scalar("SELECT file_id FROM render.frame_results WHERE job_id = $1 ORDER BY frame_number LIMIT 1")
            .bind(job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    // Frames belong to the tenant, not to the person: its admin may read them.
    let admin = Principal { role: flatrender_kit::auth::Role::TenantAdmin, ..Principal::user(alice.tenant) };
    let png = download(&o, &admin, file_id).await;
    let frame = Frame::decode_png(&png).unwrap();
    assert!(frame.find_text("Hello FlatRender", 48.0, [255, 255, 255]).is_some(), "the injected title is drawn");
    assert!(frame.find_text("Template", 48.0, [255, 255, 255]).is_none(), "the template's text is replaced");

    // The chunks are done and the job waits for a node that assembles (this one does not).
    o.until(
        "the chunks are done",
        &format!(
            "SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{}' AND lane <> 'assemble'",
            job.id
        ),
    )
    .await;
    o.until(
        "the job is assembling",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.id),
    )
    .await;
    // Nothing is left behind: the outbox is empty once the result is acked, and the task's work
    // directory is gone.
    for _ in 0..250 {
        if std::fs::read_dir(state.path().join("outbox")).unwrap().count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(std::fs::read_dir(state.path().join("outbox")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(state.path().join("work")).unwrap().count(), 0);
    agent.stop().await;
}

/// A stored file's bytes, read through the file service as `who`.
async fn download(o: &support::Orchestrator, who: &Principal, file_id: Uuid) -> Vec<u8> {
    let mut files = file_pb::file_service_client::FileServiceClient::new(o.authed(&o.token_for(who)));
    let request = file_pb::DownloadFileRequest { file_id: file_id.to_string(), ..Default::default() };
    let mut parts = files.download_file(request).await.unwrap().into_inner();
    let mut bytes = Vec::new();
    while let Some(part) = parts.message().await.unwrap() {
        if let Some(file_pb::download_file_response::Payload::Chunk(chunk)) = part.payload {
            bytes.extend_from_slice(&chunk);
        }
    }
    bytes
}

/// The whole pipeline on one node that renders and assembles: a 30-frame job with music at half
/// volume becomes an export whose MP4 ffprobe confirms (H.264, 30 frames, one second, an
/// AAC stream).
#[tokio::test]
async fn a_job_is_rendered_and_assembled_into_a_checked_mp4() {
    let (o, alice, template) = stack().await;
    let state = tempfile::tempdir().unwrap();
    let agent = agent(&o, state.path(), AgentOptions { assemble: true, ..AgentOptions::default() }).await;
    let wav = state.path().join("music.wav");
    let made = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-f", "lavfi", "-i", "sine=frequency=1000:duration=1:sample_rate=48000"])
        .arg(&wav)
        .status()
        .expect("ffmpeg is installed by make test");
    assert!(made.success());
    let music =
        o.upload(&alice, alice.tenant, "music.wav", file_pb::FileKind::Audio, &std::fs::read(&wav).unwrap()).await;
    let submit = pb::SubmitRenderRequest {
        segments: vec![segment("Main", "0-29")],
        audio_tracks: vec![pb::AudioTrack { volume: 0.5, ..support::track(pb::AudioTrackKind::Music, &music.id) }],
        ..request(&template, "assembled")
    };
    let job = o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    o.until(
        "the job is completed",
        &format!("SELECT state = 'completed' FROM render.render_jobs WHERE id = '{}'", job.id),
    )
    .await;
    let job_id: Uuid = job.id.parse().unwrap();
    let (file_id, frames, has_audio): (Uuid, i32, bool) =
        sqlx::query_as("SELECT file_id, frame_count, has_audio FROM render.exports WHERE job_id = $1")
            .bind(job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((frames, has_audio), (30, true));
    let mp4 = state.path().join("export.mp4");
    std::fs::write(&mp4, download(&o, &alice, file_id).await).unwrap();
    let probe = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries", "stream=codec_type,codec_name,nb_read_frames"])
        .args(["-show_entries", "format=duration", "-of", "json"])
        .arg(&mp4)
        .output()
        .unwrap();
    let probed: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
    let streams = probed["streams"].as_array().unwrap();
    let stream = |kind: &str| streams.iter().find(|s| s["codec_type"] == kind).unwrap();
    assert_eq!(
        (stream("video")["codec_name"].as_str(), stream("video")["nb_read_frames"].as_str()),
        (Some("h264"), Some("30"))
    );
    assert_eq!(stream("audio")["codec_name"].as_str(), Some("aac"));
    let duration: f64 = probed["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 1.0).abs() < 0.05, "{duration} s");
    agent.stop().await;
}

#[tokio::test]
async fn frames_are_stored_while_the_chunk_still_renders() {
    let (o, alice, template) = stack().await;
    let state = tempfile::tempdir().unwrap();
    // One chunk of ten frames at 300 ms each: three seconds of rendering.
    let options = AgentOptions { env: &[("FLATRENDER_SIM_FRAME_MS", "300")], ..AgentOptions::default() };
    let agent = agent(&o, state.path(), options).await;
    let submit = pb::SubmitRenderRequest { segments: vec![segment("Main", "0-9")], ..request(&template, "landing") };
    let job = o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    // Stored after the run, the chunk's frames would arrive in one report, all ten at once.
    o.until(
        "some but not all frames are accepted while the chunk renders",
        &format!(
            "SELECT count(*) BETWEEN 1 AND 8 FROM render.frame_results WHERE job_id = '{}' \
             AND NOT EXISTS (SELECT 1 FROM render.frame_jobs WHERE job_id = '{0}' AND lane <> 'assemble' AND state = 'done')",
            job.id
        ),
    )
    .await;
    o.until(
        "every frame of the job is accepted",
        &format!("SELECT count(*) = 10 FROM render.frame_results WHERE job_id = '{}'", job.id),
    )
    .await;
    o.until(
        "the chunk is done",
        &format!(
            "SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{}' AND lane <> 'assemble'",
            job.id
        ),
    )
    .await;
    agent.stop().await;
}

/// The `flatrender-agent` binary itself, configured only through its environment as a service
/// manager would: it enrols with the join token, keeps its credential, and renders.
#[tokio::test]
async fn the_agent_binary_enrols_and_renders() {
    let (o, alice, template) = stack().await;
    let state = tempfile::tempdir().unwrap();
    let token = o.join_token(&[]).await;
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_flatrender-agent"))
        .env("FLATRENDER_AGENT_ORCHESTRATOR", format!("http://{}", o.addr))
        .env("FLATRENDER_AGENT_JOIN_TOKEN", token)
        .env("FLATRENDER_AGENT_STATE_DIR", state.path())
        .env("FLATRENDER_AGENT_AERENDER", SIM)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    o.until("the agent's node is online", "SELECT count(*) = 1 FROM render.nodes WHERE orchestrator_id IS NOT NULL")
        .await;
    let submit =
        pb::SubmitRenderRequest { segments: vec![segment("Main", "0-4")], ..request(&template, "agent-binary") };
    let job = o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    o.until(
        "every frame of the job is accepted",
        &format!("SELECT count(*) = 5 FROM render.frame_results WHERE job_id = '{}'", job.id),
    )
    .await;
    assert!(state.path().join("node-credential").is_file(), "the credential is kept for the next start");
    // ffmpeg is installed here (make test installs it): the node offers assembly.
    assert_eq!(o.count("SELECT count(*) FROM render.nodes WHERE has_ffmpeg").await, 1);
    // A service manager's stop: the agent says goodbye and exits cleanly.
    let pid = agent.id().unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), agent.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    o.until("the node is offline", "SELECT count(*) = 0 FROM render.nodes WHERE orchestrator_id IS NOT NULL").await;
}
