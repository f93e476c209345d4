//! RenderService over the real services (render and file in one process) and PostgreSQL:
//! submitting, reading, listing, watching and canceling jobs.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_kit::auth::ServiceName;
use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::file::v1 as file_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use futures_util::StreamExt as _;
use prost::Message as _;
use sqlx::Row;
use support::*;
use tonic::Code;
use uuid::Uuid;

const TENANT_A: Uuid = Uuid::from_u128(0xa);
const TENANT_B: Uuid = Uuid::from_u128(0xb);

async fn job_count(stack: &Orchestrator) -> (i64, i64, i64, i64) {
    (
        stack.count("SELECT count(*) FROM render.render_jobs").await,
        stack.count("SELECT count(*) FROM render.render_job_segments").await,
        stack.count("SELECT count(*) FROM render.frame_jobs").await,
        stack.count("SELECT count(*) FROM platform.outbox WHERE source = 'render'").await,
    )
}

#[tokio::test]
async fn a_submit_stores_the_job_its_segments_chunks_and_event_in_one_go() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let mut queue = stack.listen(&["render_queue"]).await;
    let request = pb::SubmitRenderRequest {
        segments: vec![
            pb::Segment {
                scene_data: Some(pb::SceneData {
                    edits: vec![text_edit("Title", "Hello"), media_edit("Photo", &files.image.id)],
                    custom_data: None,
                }),
                ..segment("Intro", "0-24")
            },
            segment("Main", "1,3,7-9"),
        ],
        scene_data: Some(pb::SceneData { edits: vec![text_edit("Footer", "Bye")], custom_data: None }),
        audio_tracks: vec![track(pb::AudioTrackKind::Music, &files.music.id)],
        labels: [("order".to_owned(), "42".to_owned())].into(),
        ..request(&files.template, "first")
    };
    let response = stack.renders(&alice).submit_render(request).await.unwrap().into_inner();
    assert!(!response.deduplicated);
    let job = response.render.unwrap();
    assert_eq!(job.state, pb::JobState::Queued as i32);
    assert_eq!(
        (job.tenant_id.as_str(), job.user_id.as_str()),
        (TENANT_A.to_string().as_str(), alice.user.to_string().as_str())
    );
    // The free plan (no plan row): priority 0, watermark, default output fitted into 1280x720 at 30 fps.
    assert_eq!((job.priority, job.plan_code.as_str(), job.watermark), (0, "free", true));
    let output = job.output.unwrap();
    assert_eq!(output.resolution, Some(common_pb::Resolution { width: 1280, height: 720 }));
    assert_eq!(
        (output.fps, output.format, output.video_codec),
        (30.0, pb::OutputFormat::Mp4 as i32, pb::VideoCodec::H264 as i32)
    );
    assert_eq!(job.frames_total, 25 + 1 + 1 + 3);
    assert_eq!(job.template_sha256, files.template.sha256);
    assert_eq!(job.labels.get("order").map(String::as_str), Some("42"));
    assert_eq!(job.scene_data.as_ref().unwrap().edits.len(), 1);
    let segments: Vec<_> =
        job.segments.iter().map(|s| (s.index, s.composition.as_str(), s.frame_count, s.chunk_count)).collect();
    assert_eq!(segments, vec![(0, "Intro", 25, 3), (1, "Main", 1, 1), (2, "Main", 1, 1), (3, "Main", 3, 1)]);
    assert_eq!(job.segments[0].scene_data.as_ref().unwrap().edits.len(), 2);
    assert_eq!(job.audio_tracks.len(), 1);

    // The rows: chunks in the queue, copying the job's template, priority and submit time.
    let id: Uuid = job.id.parse().unwrap();
    let chunks = sqlx::query(
        "SELECT f.lane, f.state, s.position, f.composition_name, f.frame_start, f.frame_end, f.frame_step,
                f.template_sha256, f.priority, f.submitted_at = j.created_at AS same_time, f.max_attempts
           FROM render.frame_jobs f JOIN render.render_job_segments s ON s.id = f.segment_id
           JOIN render.render_jobs j ON j.id = f.job_id
          WHERE f.job_id = $1 ORDER BY s.position, f.frame_start",
    )
    .bind(id)
    .fetch_all(stack.db.pool())
    .await
    .unwrap();
    let ranges: Vec<(i32, String, i32, i32)> = chunks
        .iter()
        .map(|r| (r.get("position"), r.get("composition_name"), r.get("frame_start"), r.get("frame_end")))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (0, "Intro".into(), 0, 9),
            (0, "Intro".into(), 10, 19),
            (0, "Intro".into(), 20, 24),
            (1, "Main".into(), 1, 1),
            (2, "Main".into(), 3, 3),
            (3, "Main".into(), 7, 9),
        ]
    );
    for chunk in &chunks {
        assert_eq!(chunk.get::<String, _>("lane"), "render");
        assert_eq!(chunk.get::<String, _>("state"), "queued");
        assert_eq!(hex::encode(chunk.get::<Vec<u8>, _>("template_sha256")), files.template.sha256);
        assert_eq!(chunk.get::<i16, _>("priority"), 0);
        assert!(chunk.get::<bool, _>("same_time"));
        assert_eq!(chunk.get::<i32, _>("max_attempts"), 3);
    }
    let audio = sqlx::query(
        "SELECT kind, position, file_id, file_sha256 FROM render.render_job_audio_tracks WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    assert_eq!(audio.get::<String, _>("kind"), "music");
    assert_eq!(hex::encode(audio.get::<Vec<u8>, _>("file_sha256")), files.music.sha256);
    let (state, chunk_size): (String, i32) =
        sqlx::query_as("SELECT state, chunk_size_frames FROM render.render_jobs WHERE id = $1")
            .bind(id)
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), chunk_size), ("queued", 10));

    // The event and the signal to dispatchers.
    let events = stack.events("flatrender.events.v1.RenderJobQueued").await;
    assert_eq!(events.len(), 1);
    let queued = ev::RenderJobQueued::decode(events[0].as_slice()).unwrap();
    assert_eq!((queued.render_id.as_str(), queued.frames_total, queued.segment_count), (job.id.as_str(), 30, 4));
    assert_eq!(queued.template_sha256, files.template.sha256);
    assert!(!queued.requeued);
    assert_eq!(notification(&mut queue).await, ("render_queue".to_owned(), String::new()));

    // GetRender shows the same job.
    let got = stack.renders(&alice).get_render(pb::GetRenderRequest { render_id: job.id.clone() }).await.unwrap();
    assert_eq!(got.into_inner().render.unwrap(), job);
}

#[tokio::test]
async fn malformed_requests_name_their_field_and_leave_nothing_behind() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let base = request(&files.template, "bad");
    let voiceover = vec![track(pb::AudioTrackKind::Voiceover, &files.voice.id)];
    let cases: Vec<(pb::SubmitRenderRequest, &str)> = vec![
        (pb::SubmitRenderRequest { template_file_id: "nope".into(), ..base.clone() }, "template_file_id: "),
        (pb::SubmitRenderRequest { template_sha256: "abc".into(), ..base.clone() }, "template_sha256: "),
        (pb::SubmitRenderRequest { segments: vec![], ..base.clone() }, "segments: "),
        (
            pb::SubmitRenderRequest { segments: vec![segment("Main", "9-3")], ..base.clone() },
            "segments[0].frames: reversed range 9-3",
        ),
        (
            pb::SubmitRenderRequest { segments: vec![segment("Main", "1"), segment("", "1")], ..base.clone() },
            "segments[1].composition: ",
        ),
        (pb::SubmitRenderRequest { idempotency_key: String::new(), ..base.clone() }, "idempotency_key: is required"),
        (pb::SubmitRenderRequest { has_voiceover: true, ..base.clone() }, "has_voiceover: "),
        (
            pb::SubmitRenderRequest {
                output: Some(pb::OutputSettings {
                    format: pb::OutputFormat::Webm as i32,
                    video_codec: pb::VideoCodec::H264 as i32,
                    ..Default::default()
                }),
                ..base.clone()
            },
            "output.video_codec: ",
        ),
        (
            pb::SubmitRenderRequest {
                scene_data: Some(pb::SceneData { edits: vec![pb::LayerEdit::default()], custom_data: None }),
                ..base.clone()
            },
            "scene_data.edits[0]",
        ),
        (
            pb::SubmitRenderRequest { labels: [("Bad Key".to_owned(), "x".to_owned())].into(), ..base.clone() },
            "labels: ",
        ),
        // Above the free plan's caps: the field and the cap.
        (
            pb::SubmitRenderRequest {
                output: Some(pb::OutputSettings {
                    resolution: Some(common_pb::Resolution { width: 1920, height: 1080 }),
                    ..Default::default()
                }),
                ..base.clone()
            },
            "output.resolution: 1920",
        ),
        (
            pb::SubmitRenderRequest {
                output: Some(pb::OutputSettings { fps: 60.0, ..Default::default() }),
                ..base.clone()
            },
            "output.fps: 60 fps is above the free plan's limit of 30 fps",
        ),
        (
            pb::SubmitRenderRequest { segments: vec![segment("Main", "0-1800")], ..base.clone() },
            "segments: 1801 frames at 30 fps",
        ),
        (
            pb::SubmitRenderRequest { has_voiceover: true, audio_tracks: voiceover, ..base.clone() },
            "has_voiceover: the free plan does not include voiceover",
        ),
    ];
    for (request, expected) in cases {
        let (code, message) = failure(stack.renders(&alice).submit_render(request).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(message.starts_with(expected), "{message:?} should start with {expected:?}");
    }
    stack.renders(&alice).submit_render(base.clone()).await.unwrap();
    assert_eq!(job_count(&stack).await.0, 1, "only the valid submit stored a job");
}

#[tokio::test]
async fn every_file_field_is_checked_and_named() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let base = request(&files.template, "files");
    let unknown = Uuid::new_v4().to_string();
    // Another tenant's files, and the catalogue's (the default tenant's own files).
    let bob = Principal::user(TENANT_B);
    let foreign = stack.assets(&bob).await;
    let catalogue = Principal::service(ServiceName::Content);
    let default_tenant = Uuid::from_u128(1);
    let shared_template = stack
        .upload(&catalogue, default_tenant, "catalogue.zip", file_pb::FileKind::TemplateBundle, b"PK\x03\x04 shared")
        .await;
    let shared_music = stack.upload(&catalogue, default_tenant, "bed.mp3", file_pb::FileKind::Audio, b"ID3 bed").await;
    let shared_image = stack
        .upload(&catalogue, default_tenant, "stock.png", file_pb::FileKind::Asset, b"\x89PNG\r\n\x1a\n stock")
        .await;

    let three_texts = vec![text_edit("A", "a"), text_edit("B", "b"), text_edit("C", "c")];
    let with_media = |file: &str| {
        let mut edits = three_texts.clone();
        edits.push(media_edit("Photo", file));
        pb::Segment { scene_data: Some(pb::SceneData { edits, custom_data: None }), ..segment("Main", "0-9") }
    };
    let tracks = |last: &str| {
        vec![
            track(pb::AudioTrackKind::Music, &files.music.id),
            track(pb::AudioTrackKind::Sfx, &files.music.id),
            track(pb::AudioTrackKind::Sfx, last),
        ]
    };
    let cases: Vec<(pb::SubmitRenderRequest, &str)> = vec![
        (
            pb::SubmitRenderRequest { template_file_id: unknown.clone(), ..base.clone() },
            "template_file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest {
                template_file_id: foreign.template.id.clone(),
                template_sha256: foreign.template.sha256.clone(),
                ..base.clone()
            },
            "template_file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest { audio_tracks: tracks(&unknown), ..base.clone() },
            "audio_tracks[2].file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest { audio_tracks: tracks(&foreign.music.id), ..base.clone() },
            "audio_tracks[2].file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest { segments: vec![with_media(&unknown)], ..base.clone() },
            "segments[0].scene_data.edits[3].media.file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest {
                segments: vec![segment("Intro", "0"), with_media(&foreign.image.id)],
                ..base.clone()
            },
            "segments[1].scene_data.edits[3].media.file_id: file not found",
        ),
        (
            pb::SubmitRenderRequest {
                scene_data: Some(pb::SceneData { edits: vec![media_edit("Logo", &unknown)], custom_data: None }),
                ..base.clone()
            },
            "scene_data.edits[0].media.file_id: file not found",
        ),
        // Catalogue media is not the tenant's own.
        (
            pb::SubmitRenderRequest { segments: vec![with_media(&shared_image.id)], ..base.clone() },
            "segments[0].scene_data.edits[3].media.file_id: file not found",
        ),
    ];
    for (request, expected) in cases {
        let (code, message) = failure(stack.renders(&alice).submit_render(request).await);
        assert_eq!((code, message.as_str()), (Code::NotFound, expected));
    }
    let mismatch = pb::SubmitRenderRequest { template_sha256: sha256_hex(b"other bytes"), ..base.clone() };
    let (code, message) = failure(stack.renders(&alice).submit_render(mismatch).await);
    assert_eq!((code, message.as_str()), (Code::FailedPrecondition, "template_sha256 does not match the file"));
    assert_eq!(job_count(&stack).await, (0, 0, 0, 0), "refused submits leave nothing behind");

    // A catalogue template and catalogue music are fine.
    let catalogue_request = pb::SubmitRenderRequest {
        template_file_id: shared_template.id.clone(),
        template_sha256: shared_template.sha256.clone(),
        audio_tracks: vec![track(pb::AudioTrackKind::Music, &shared_music.id)],
        ..base.clone()
    };
    let job = stack.renders(&alice).submit_render(catalogue_request).await.unwrap().into_inner().render.unwrap();
    assert_eq!(job.template_file_id, shared_template.id);
}

#[tokio::test]
async fn retries_find_their_job_and_a_reused_key_is_refused() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let first = stack.renders(&alice).submit_render(request(&files.template, "k1")).await.unwrap().into_inner();
    let before = job_count(&stack).await;
    let retry = stack.renders(&alice).submit_render(request(&files.template, "k1")).await.unwrap().into_inner();
    assert!(retry.deduplicated && !first.deduplicated);
    assert_eq!(retry.render.unwrap().id, first.render.as_ref().unwrap().id);
    assert_eq!(job_count(&stack).await, before, "a retry stores nothing");
    // A normalized equal request is a retry too ("0-29x1" is "0-29").
    let same =
        pb::SubmitRenderRequest { segments: vec![segment("Main", " 0-29x1 ")], ..request(&files.template, "k1") };
    assert!(stack.renders(&alice).submit_render(same).await.unwrap().into_inner().deduplicated);

    let other = pb::SubmitRenderRequest { segments: vec![segment("Main", "0-9")], ..request(&files.template, "k1") };
    let (code, message) = failure(stack.renders(&alice).submit_render(other).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
    assert!(message.starts_with("idempotency_key: "), "{message}");
    // Another user of the tenant cannot learn of Alice's job through her key.
    let carol = Principal::user(TENANT_A);
    let carols_files = stack.assets(&carol).await;
    let (code, _) = failure(stack.renders(&carol).submit_render(request(&carols_files.template, "k1")).await);
    assert_eq!(code, Code::AlreadyExists);
    assert_eq!(job_count(&stack).await, before);
}

#[tokio::test]
async fn sixteen_identical_submits_make_one_job() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let calls = (0..16).map(|_| {
        let mut client = stack.renders(&alice);
        let request = request(&files.template, "burst");
        async move { client.submit_render(request).await.map(|r| r.into_inner()) }
    });
    let answers: Vec<_> = futures_util::future::join_all(calls).await.into_iter().map(Result::unwrap).collect();
    let ids: std::collections::BTreeSet<_> = answers.iter().map(|a| a.render.as_ref().unwrap().id.clone()).collect();
    assert_eq!(ids.len(), 1, "every answer names the one job");
    assert_eq!(answers.iter().filter(|a| !a.deduplicated).count(), 1, "exactly one call made it");
    assert_eq!(stack.count("SELECT count(*) FROM render.render_jobs").await, 1);
    assert_eq!(stack.count("SELECT count(*) FROM render.frame_jobs").await, 3);
    assert_eq!(stack.events("flatrender.events.v1.RenderJobQueued").await.len(), 1);
}

#[tokio::test]
async fn other_tenants_and_other_users_see_nothing() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "mine"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let id = job.id.clone();
    for stranger in [Principal::user(TENANT_B), Principal::tenant_admin(TENANT_B), Principal::user(TENANT_A)] {
        let mut client = stack.renders(&stranger);
        assert_eq!(failure(client.get_render(pb::GetRenderRequest { render_id: id.clone() }).await).0, Code::NotFound);
        let watch = pb::WatchRenderRequest { render_id: id.clone(), include_chunks: true };
        assert_eq!(failure(client.watch_render(watch).await).0, Code::NotFound);
        let cancel = pb::CancelRenderRequest { render_id: id.clone(), reason: String::new() };
        assert_eq!(failure(client.cancel_render(cancel).await).0, Code::NotFound);
    }
    // The tenant's admin sees it.
    let admin = Principal::tenant_admin(TENANT_A);
    let seen = stack.renders(&admin).get_render(pb::GetRenderRequest { render_id: id.clone() }).await.unwrap();
    assert_eq!(seen.into_inner().render.unwrap().id, id);
    // Service credentials are not customers; no token is not a caller.
    let service = Principal::service(ServiceName::Studio);
    assert_eq!(
        failure(stack.renders(&service).get_render(pb::GetRenderRequest { render_id: id.clone() }).await).0,
        Code::PermissionDenied
    );
    let (code, message) =
        failure(stack.renders(&alice).get_render(pb::GetRenderRequest { render_id: "x".into() }).await);
    assert_eq!((code, message.starts_with("render_id: ")), (Code::InvalidArgument, true));
}

#[tokio::test]
async fn lists_page_newest_first_within_what_the_caller_may_see() {
    let stack = Orchestrator::start_with_files().await;
    seed_plan(stack.pool(), TENANT_A, None, &Plan::roomy()).await;
    let alice = Principal::user(TENANT_A);
    let bob = Principal::user(TENANT_A);
    let admin = Principal::tenant_admin(TENANT_A);
    let alice_files = stack.assets(&alice).await;
    let bob_files = stack.assets(&bob).await;
    let project = Uuid::new_v4().to_string();
    let mut alice_ids = Vec::new();
    for i in 0..5 {
        let mut request = request(&alice_files.template, &format!("a{i}"));
        if i == 1 {
            request.saved_project_id = project.clone();
        }
        alice_ids.push(stack.renders(&alice).submit_render(request).await.unwrap().into_inner().render.unwrap().id);
    }
    for i in 0..2 {
        stack.renders(&bob).submit_render(request(&bob_files.template, &format!("b{i}"))).await.unwrap();
    }
    // Someone else's tenant never shows.
    let stranger = Principal::user(TENANT_B);
    let stranger_files = stack.assets(&stranger).await;
    stack.renders(&stranger).submit_render(request(&stranger_files.template, "s")).await.unwrap();

    let page = |size: u32, token: &str| Some(common_pb::PageRequest { page_size: size, page_token: token.into() });
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let response = stack
            .renders(&alice)
            .list_renders(pb::ListRendersRequest { page: page(2, &token), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(response.renders.len() <= 2);
        for job in &response.renders {
            assert!(job.scene_data.is_none(), "lists carry no scene data");
            assert_eq!(job.segments.len(), 1);
        }
        seen.extend(response.renders.into_iter().map(|j| j.id));
        token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let newest_first: Vec<String> = alice_ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first, "a plain user sees only their own, newest first");

    let all = stack.renders(&admin).list_renders(pb::ListRendersRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.renders.len(), 7);
    let bobs = pb::ListRendersRequest { user_id: bob.user.to_string(), ..Default::default() };
    assert_eq!(stack.renders(&admin).list_renders(bobs.clone()).await.unwrap().into_inner().renders.len(), 2);
    assert_eq!(failure(stack.renders(&alice).list_renders(bobs).await).0, Code::PermissionDenied);

    // Filters: state, time, saved project; a token is bound to its filters.
    let cancel = pb::CancelRenderRequest { render_id: alice_ids[0].clone(), reason: String::new() };
    stack.renders(&alice).cancel_render(cancel).await.unwrap();
    let canceled = pb::ListRendersRequest { states: vec![pb::JobState::Canceled as i32], ..Default::default() };
    let found = stack.renders(&alice).list_renders(canceled).await.unwrap().into_inner().renders;
    assert_eq!(found.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![alice_ids[0].clone()]);
    let future = prost_types::Timestamp { seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 3600, nanos: 0 };
    let later = pb::ListRendersRequest {
        created: Some(common_pb::TimeRange { start_time: Some(future), end_time: None }),
        ..Default::default()
    };
    assert!(stack.renders(&admin).list_renders(later).await.unwrap().into_inner().renders.is_empty());
    let by_project = pb::ListRendersRequest { saved_project_id: project, ..Default::default() };
    let found = stack.renders(&admin).list_renders(by_project).await.unwrap().into_inner().renders;
    assert_eq!(found.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), vec![alice_ids[1].clone()]);
    let first = stack
        .renders(&alice)
        .list_renders(pb::ListRendersRequest { page: page(1, ""), ..Default::default() })
        .await
        .unwrap();
    let token = first.into_inner().page.unwrap().next_page_token;
    let other_filter = pb::ListRendersRequest {
        page: page(1, &token),
        states: vec![pb::JobState::Queued as i32],
        ..Default::default()
    };
    let (code, message) = failure(stack.renders(&alice).list_renders(other_filter).await);
    assert_eq!((code, message.starts_with("page.page_token: ")), (Code::InvalidArgument, true), "{message}");
    let unknown_state = pb::ListRendersRequest { states: vec![99], ..Default::default() };
    assert_eq!(failure(stack.renders(&alice).list_renders(unknown_state).await).0, Code::InvalidArgument);
}

/// Sets chunk `chunk` of job `job` running with `done` frames and the job RENDERING, then signals
/// the change as the queue does.
async fn progress(stack: &Orchestrator, job: &str, chunk: &str, done: i32) {
    stack
        .execute(&format!(
            "INSERT INTO render.nodes (id, name, hostname, os, agent_version, cpu_cores, ram_bytes)
               VALUES ('00000000-0000-0000-0000-00000000beef', 'node-1', 'node-1', 'linux', '1.0', 8, 1)
               ON CONFLICT DO NOTHING;
             UPDATE render.frame_jobs SET state = 'running', node_id = '00000000-0000-0000-0000-00000000beef',
                    lease_epoch = 1, leased_at = now(), lease_expires_at = now() + interval '1 minute',
                    attempts = 1, frames_done = {done}
              WHERE id = '{chunk}';
             UPDATE render.render_jobs SET state = 'rendering', started_at = now(), rendering_started_at = now()
              WHERE id = '{job}';
             SELECT pg_notify('render_jobs', '{job}');"
        ))
        .await;
}

async fn complete(stack: &Orchestrator, job: &str) {
    stack
        .execute(&format!(
            "UPDATE render.frame_jobs SET state = 'done', finished_at = now() WHERE job_id = '{job}';
             UPDATE render.render_jobs SET state = 'completed', finished_at = now(), progress = 1,
                    frames_done = frames_total WHERE id = '{job}';
             SELECT pg_notify('render_jobs', '{job}');"
        ))
        .await;
}

async fn next<S>(stream: &mut S) -> Option<pb::WatchRenderResponse>
where
    S: futures_util::Stream<Item = Result<pb::WatchRenderResponse, tonic::Status>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a message in time").map(|m| m.unwrap())
}

#[tokio::test]
async fn watching_a_job_follows_it_to_its_end() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "watched"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let watch = pb::WatchRenderRequest { render_id: job.id.clone(), include_chunks: true };
    let mut stream = stack.renders(&alice).watch_render(watch).await.unwrap().into_inner();

    let first = next(&mut stream).await.unwrap();
    assert!(first.full_chunk_list);
    assert_eq!(first.chunks.len(), 3);
    let render = first.render.unwrap();
    assert_eq!(render.state, pb::JobState::Queued as i32);
    assert!(render.scene_data.is_none());
    assert_eq!(stack.watchers(), 1);

    let chunk = first.chunks[1].id.clone();
    progress(&stack, &job.id, &chunk, 4).await;
    let update = next(&mut stream).await.unwrap();
    assert!(!update.full_chunk_list);
    assert_eq!(update.render.as_ref().unwrap().state, pb::JobState::Rendering as i32);
    assert_eq!(update.chunks.len(), 1, "only the chunk that changed");
    assert_eq!(
        (update.chunks[0].id.as_str(), update.chunks[0].frames_done, update.chunks[0].attempt),
        (chunk.as_str(), 4, 1)
    );
    assert_eq!(update.chunks[0].state, pb::ChunkState::Running as i32);
    assert_eq!(update.render.unwrap().segments[0].frames_done, 4);

    complete(&stack, &job.id).await;
    let last = next(&mut stream).await.unwrap();
    assert_eq!(last.render.unwrap().state, pb::JobState::Completed as i32);
    assert_eq!(last.chunks.len(), 3);
    assert!(next(&mut stream).await.is_none(), "the stream ends after a terminal state");
    drop(stream);
    eventually("the watcher to be released", || async { stack.watchers() == 0 }).await;

    // Watching a finished job: its state at once, then the end.
    let watch = pb::WatchRenderRequest { render_id: job.id.clone(), include_chunks: false };
    let mut stream = stack.renders(&alice).watch_render(watch).await.unwrap().into_inner();
    let only = next(&mut stream).await.unwrap();
    assert!(only.chunks.is_empty() && !only.full_chunk_list);
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn watchers_get_coalesced_updates_keepalives_and_let_go() {
    let stack = Orchestrator::start_with_files_and(|settings| {
        settings.api.watch_keepalive = Duration::from_millis(400);
    })
    .await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "busy"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let watch = pb::WatchRenderRequest { render_id: job.id.clone(), include_chunks: false };
    let mut quiet = stack.renders(&alice).watch_render(watch.clone()).await.unwrap().into_inner();
    let mut busy = stack.renders(&alice).watch_render(watch).await.unwrap().into_inner();
    next(&mut quiet).await.unwrap();
    next(&mut busy).await.unwrap();
    assert_eq!(stack.watchers(), 2);
    let listeners = "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%render_jobs%' AND datname = current_database()";
    assert_eq!(stack.count(listeners).await, 1, "watchers share one LISTEN connection");

    // Nothing changes: a keepalive message still comes.
    let started = tokio::time::Instant::now();
    let keepalive = next(&mut quiet).await.unwrap();
    assert_eq!(keepalive.render.unwrap().state, pb::JobState::Queued as i32);
    assert!(started.elapsed() >= Duration::from_millis(300), "{:?}", started.elapsed());

    // A burst of 40 changes within about a second arrives coalesced: at most 4 messages a second.
    let burst_start = tokio::time::Instant::now();
    for i in 0..40 {
        stack
            .execute(&format!(
                "UPDATE render.render_jobs SET render_ms = {i} WHERE id = '{}'; SELECT pg_notify('render_jobs', '{}');",
                job.id, job.id
            ))
            .await;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut messages = 0;
    let mut last_ms = -1;
    while last_ms != 39 {
        let message = next(&mut busy).await.unwrap();
        messages += 1;
        last_ms = message.render.unwrap().render_ms;
    }
    let elapsed = burst_start.elapsed().as_secs_f64();
    assert!(f64::from(messages) <= elapsed * 4.0 + 2.0, "{messages} messages in {elapsed:.2} s");

    // A client that goes away releases its watcher.
    drop(busy);
    eventually("the busy watcher to be released", || async { stack.watchers() == 1 }).await;
    drop(quiet);
    eventually("every watcher to be released", || async { stack.watchers() == 0 }).await;
}

#[tokio::test]
async fn watching_works_over_grpc_web() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "web"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();

    // A browser's grpc-web call: HTTP/1.1 POST with one length-prefixed message.
    let body = pb::WatchRenderRequest { render_id: job.id.clone(), include_chunks: true }.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&body);
    let head = format!(
        "POST /flatrender.render.v1.RenderService/WatchRender HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nAuthorization: Bearer {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        stack.addr,
        stack.token_for(&alice),
        frame.len()
    );
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect(stack.addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&frame).await.unwrap();

    // The first message arrives while the stream stays open.
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let first = loop {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&received));
        received.extend_from_slice(&buffer[..n]);
        if let Some(messages) = grpc_web_messages(&received)
            && let Some(first) = messages.first()
        {
            break pb::WatchRenderResponse::decode(first.as_slice()).unwrap();
        }
    };
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200"));
    assert_eq!(first.render.unwrap().state, pb::JobState::Queued as i32);
    assert_eq!(first.chunks.len(), 3);

    // Finishing the job ends the stream with OK in the trailers.
    complete(&stack, &job.id).await;
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut received)).await.unwrap().unwrap();
    let messages = grpc_web_messages(&received).unwrap();
    let last = pb::WatchRenderResponse::decode(messages.last().unwrap().as_slice()).unwrap();
    assert_eq!(last.render.unwrap().state, pb::JobState::Completed as i32);
    let text = String::from_utf8_lossy(&received).to_ascii_lowercase();
    assert!(text.contains("grpc-status:0"), "trailers in the body: {text}");
}

/// The data frames of a grpc-web response read so far (HTTP/1.1, chunked or not); `None` until
/// the headers are complete.
fn grpc_web_messages(response: &[u8]) -> Option<Vec<Vec<u8>>> {
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let mut body = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut plain = Vec::new();
        let mut rest = body.as_slice();
        while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).ok()?.trim(), 16).ok()?;
            let start = line_end + 2;
            if size == 0 || rest.len() < start + size {
                break;
            }
            plain.extend_from_slice(&rest[start..start + size]);
            rest = &rest[(start + size + 2).min(rest.len())..];
        }
        body = plain;
    }
    let mut messages = Vec::new();
    let mut at = 0;
    while body.len() >= at + 5 {
        let len = u32::from_be_bytes(body[at + 1..at + 5].try_into().ok()?) as usize;
        if body.len() < at + 5 + len {
            break;
        }
        if body[at] == 0 {
            messages.push(body[at + 5..at + 5 + len].to_vec());
        }
        at += 5 + len;
    }
    Some(messages)
}

#[tokio::test]
async fn canceling_drops_tasks_tells_their_nodes_and_is_idempotent() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "cancel"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    let chunks: Vec<Uuid> =
        sqlx::query_scalar("SELECT id FROM render.frame_jobs WHERE job_id = $1 ORDER BY frame_start")
            .bind(Uuid::parse_str(&job.id).unwrap())
            .fetch_all(stack.db.pool())
            .await
            .unwrap();
    progress(&stack, &job.id, &chunks[0].to_string(), 2).await;
    let mut listener = stack.listen(&["render_nodes", "render_jobs"]).await;

    let cancel = pb::CancelRenderRequest { render_id: job.id.clone(), reason: "changed my mind".into() };
    let canceled = stack.renders(&alice).cancel_render(cancel.clone()).await.unwrap().into_inner().render.unwrap();
    assert_eq!(canceled.state, pb::JobState::Canceled as i32);
    assert!(canceled.finished_at.is_some());

    let rows = sqlx::query("SELECT id, state, node_id, lease_epoch, finished_at IS NOT NULL AS finished FROM render.frame_jobs WHERE job_id = $1")
        .bind(Uuid::parse_str(&job.id).unwrap())
        .fetch_all(stack.db.pool())
        .await
        .unwrap();
    for row in &rows {
        assert_eq!(row.get::<String, _>("state"), "canceled");
        assert!(row.get::<bool, _>("finished"));
        if row.get::<Uuid, _>("id") == chunks[0] {
            assert_eq!(row.get::<Option<Uuid>, _>("node_id"), Some(Uuid::from_u128(0xbeef)), "the node is kept");
            assert_eq!(row.get::<i64, _>("lease_epoch"), 1, "the epoch is kept");
        }
    }
    let (reason, by): (Option<String>, Option<Uuid>) =
        sqlx::query_as("SELECT cancel_reason, canceled_by_user_id FROM render.render_jobs WHERE id = $1")
            .bind(Uuid::parse_str(&job.id).unwrap())
            .fetch_one(stack.db.pool())
            .await
            .unwrap();
    assert_eq!((reason.as_deref(), by), (Some("changed my mind"), Some(alice.user)));
    let mut signals = vec![notification(&mut listener).await, notification(&mut listener).await];
    signals.sort();
    assert_eq!(
        signals,
        vec![
            ("render_jobs".to_owned(), job.id.clone()),
            ("render_nodes".to_owned(), Uuid::from_u128(0xbeef).to_string())
        ]
    );
    let events = stack.events("flatrender.events.v1.RenderJobCanceled").await;
    assert_eq!(events.len(), 1);
    let event = ev::RenderJobCanceled::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.render_id.as_str(), event.reason.as_str()), (job.id.as_str(), "changed my mind"));
    assert_eq!(event.canceled_by_user_id, alice.user.to_string());

    // Again: the job unchanged, nothing new.
    let again = stack.renders(&alice).cancel_render(cancel).await.unwrap().into_inner().render.unwrap();
    assert_eq!(again, canceled);
    assert_eq!(stack.events("flatrender.events.v1.RenderJobCanceled").await.len(), 1);

    // A finished job cannot be canceled; a long reason is refused.
    let done = stack
        .renders(&alice)
        .submit_render(request(&files.template, "done"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    complete(&stack, &done.id).await;
    let cancel_done = pb::CancelRenderRequest { render_id: done.id.clone(), reason: String::new() };
    let (code, message) = failure(stack.renders(&alice).cancel_render(cancel_done).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    let long = pb::CancelRenderRequest { render_id: done.id.clone(), reason: "x".repeat(501) };
    let (code, message) = failure(stack.renders(&alice).cancel_render(long).await);
    assert_eq!((code, message.starts_with("reason: ")), (Code::InvalidArgument, true));
}

#[tokio::test]
async fn exports_are_visible_like_their_jobs() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT_A);
    let files = stack.assets(&alice).await;
    let job = stack
        .renders(&alice)
        .submit_render(request(&files.template, "export"))
        .await
        .unwrap()
        .into_inner()
        .render
        .unwrap();
    complete(&stack, &job.id).await;
    let export: Uuid = sqlx::query_scalar(
        "INSERT INTO render.exports (tenant_id, user_id, job_id, file_id, width, height, fps, frame_count,
             duration_ms, size_bytes, sha256, watermarked)
         VALUES ($1, $2, $3, $4, 1280, 720, 30, 30, 1000, 1234, $5, true) RETURNING id",
    )
    .bind(TENANT_A)
    .bind(alice.user)
    .bind(Uuid::parse_str(&job.id).unwrap())
    .bind(Uuid::new_v4())
    .bind(vec![7u8; 32])
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    let got = stack.renders(&alice).get_export(pb::GetExportRequest { export_id: export.to_string() }).await.unwrap();
    let got = got.into_inner().export.unwrap();
    assert_eq!((got.render_id.as_str(), got.size_bytes, got.watermarked), (job.id.as_str(), 1234, true));
    assert_eq!(got.state, pb::ExportState::Available as i32);
    let render = stack.renders(&alice).get_render(pb::GetRenderRequest { render_id: job.id.clone() }).await.unwrap();
    assert_eq!(render.into_inner().render.unwrap().export_id, export.to_string());

    let listed = stack
        .renders(&alice)
        .list_exports(pb::ListExportsRequest { render_id: job.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.exports.len(), 1);
    let other_job = pb::ListExportsRequest { render_id: Uuid::new_v4().to_string(), ..Default::default() };
    assert!(stack.renders(&alice).list_exports(other_job).await.unwrap().into_inner().exports.is_empty());
    for stranger in [Principal::user(TENANT_A), Principal::tenant_admin(TENANT_B)] {
        let (code, _) =
            failure(stack.renders(&stranger).get_export(pb::GetExportRequest { export_id: export.to_string() }).await);
        assert_eq!(code, Code::NotFound);
        let listed = stack.renders(&stranger).list_exports(pb::ListExportsRequest::default()).await.unwrap();
        assert!(listed.into_inner().exports.is_empty());
    }
}
