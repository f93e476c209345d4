//! Snapshots over the real services: the per-tenant cache, pending and failed snapshots, the
//! hourly rate, reading and watching.

// Tests fail loudly by design.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_proto::flatrender::render::v1 as pb;
use futures_util::StreamExt as _;
use support::*;
use tonic::Code;
use uuid::Uuid;

const TENANT: Uuid = Uuid::from_u128(0xa);

/// A snapshot request of frame `frame` that sets the title.
fn titled_snapshot(template: &flatrender_proto::flatrender::file::v1::File, frame: i32) -> pb::RequestSnapshotRequest {
    let scene_data = pb::SceneData { edits: vec![text_edit("Title", "Hello")], custom_data: None };
    pb::RequestSnapshotRequest { scene_data: Some(scene_data), ..snapshot_request(template, frame) }
}

async fn tasks(stack: &Orchestrator, snapshot: &str) -> i64 {
    stack
        .count(&format!(
            "SELECT count(*) FROM render.frame_jobs WHERE lane = 'snapshot' AND snapshot_id = '{snapshot}'"
        ))
        .await
}

async fn ready(stack: &Orchestrator, snapshot: &str) {
    stack
        .execute(&format!(
            "UPDATE render.frame_jobs SET state = 'done', finished_at = now() WHERE snapshot_id = '{snapshot}';
             UPDATE render.snapshots SET state = 'ready', file_id = gen_random_uuid(), rendered_at = now()
              WHERE id = '{snapshot}';
             SELECT pg_notify('render_snapshots', '{snapshot}');"
        ))
        .await;
}

async fn failed(stack: &Orchestrator, snapshot: &str) {
    stack
        .execute(&format!(
            "UPDATE render.frame_jobs SET state = 'failed', finished_at = now() WHERE snapshot_id = '{snapshot}';
             UPDATE render.snapshots SET state = 'failed', error_class = 'machine', error_code = 'ae_crash',
                    error_message = 'After Effects crashed' WHERE id = '{snapshot}';"
        ))
        .await;
}

#[tokio::test]
async fn a_cached_snapshot_costs_no_task_and_a_pending_one_is_shared() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let mut queue = stack.listen(&["render_queue"]).await;

    let first =
        stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 12)).await.unwrap().into_inner();
    assert!(!first.cache_hit);
    let snapshot = first.snapshot.unwrap();
    assert_eq!(snapshot.state, pb::SnapshotState::Queued as i32);
    assert_eq!((snapshot.composition.as_str(), snapshot.frame), ("Main", 12));
    assert_eq!(snapshot.cache_key.len(), 64);
    assert_eq!(tasks(&stack, &snapshot.id).await, 1);
    assert_eq!(notification(&mut queue).await.0, "render_queue");
    let (lane, start, end, sha): (String, i32, i32, Vec<u8>) = sqlx::query_as(
        "SELECT lane, frame_start, frame_end, template_sha256 FROM render.frame_jobs WHERE snapshot_id = $1",
    )
    .bind(Uuid::parse_str(&snapshot.id).unwrap())
    .fetch_one(stack.db.pool())
    .await
    .unwrap();
    assert_eq!((lane.as_str(), start, end, hex::encode(sha)), ("snapshot", 12, 12, files.template.sha256.clone()));

    // The same request while it waits: that snapshot, no second task; also for another user.
    let again =
        stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 12)).await.unwrap().into_inner();
    assert_eq!((again.snapshot.unwrap().id, again.cache_hit), (snapshot.id.clone(), false));
    let bob = Principal::user(TENANT);
    let shared = stack.renders(&bob).request_snapshot(titled_snapshot(&files.template, 12)).await.unwrap().into_inner();
    assert_eq!(shared.snapshot.unwrap().id, snapshot.id);
    assert_eq!(tasks(&stack, &snapshot.id).await, 1);

    // Rendered: a hit answers READY at once and bumps the counters; still no new task.
    ready(&stack, &snapshot.id).await;
    let hit = stack.renders(&bob).request_snapshot(titled_snapshot(&files.template, 12)).await.unwrap().into_inner();
    assert!(hit.cache_hit);
    let hit = hit.snapshot.unwrap();
    assert_eq!((hit.id.as_str(), hit.state, hit.hit_count), (snapshot.id.as_str(), pb::SnapshotState::Ready as i32, 1));
    assert!(!hit.file_id.is_empty() && hit.expires_at.is_some());
    let second_hit = stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 12)).await.unwrap();
    assert_eq!(second_hit.into_inner().snapshot.unwrap().hit_count, 2);
    assert_eq!(stack.count("SELECT count(*) FROM render.frame_jobs").await, 1);
    let accessed: bool = sqlx::query_scalar("SELECT last_accessed_at > created_at FROM render.snapshots WHERE id = $1")
        .bind(Uuid::parse_str(&snapshot.id).unwrap())
        .fetch_one(stack.db.pool())
        .await
        .unwrap();
    assert!(accessed);

    // Different data is a different snapshot; another tenant never hits this tenant's cache.
    let other = pb::RequestSnapshotRequest {
        scene_data: Some(pb::SceneData { edits: vec![text_edit("Title", "Bye")], custom_data: None }),
        ..titled_snapshot(&files.template, 12)
    };
    let other = stack.renders(&alice).request_snapshot(other).await.unwrap().into_inner();
    assert_ne!(other.snapshot.unwrap().id, snapshot.id);
    let stranger = Principal::user(Uuid::from_u128(0xb));
    let stranger_files = stack.assets(&stranger).await;
    let theirs =
        stack.renders(&stranger).request_snapshot(titled_snapshot(&stranger_files.template, 12)).await.unwrap();
    let theirs = theirs.into_inner();
    assert!(!theirs.cache_hit);
    assert_ne!(theirs.snapshot.unwrap().id, snapshot.id);
    let get = pb::GetSnapshotRequest { snapshot_id: snapshot.id.clone() };
    assert_eq!(failure(stack.renders(&stranger).get_snapshot(get.clone()).await).0, Code::NotFound);
    assert_eq!(stack.renders(&bob).get_snapshot(get).await.unwrap().into_inner().snapshot.unwrap().hit_count, 2);
}

#[tokio::test]
async fn a_failed_snapshot_is_queued_again() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let snapshot = stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 3)).await.unwrap();
    let snapshot = snapshot.into_inner().snapshot.unwrap();
    failed(&stack, &snapshot.id).await;
    let got = stack.renders(&alice).get_snapshot(pb::GetSnapshotRequest { snapshot_id: snapshot.id.clone() }).await;
    let got = got.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(got.state, pb::SnapshotState::Failed as i32);
    assert_eq!(got.error.unwrap().message, "After Effects crashed");

    let retried =
        stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 3)).await.unwrap().into_inner();
    let retried = retried.snapshot.unwrap();
    assert_eq!(retried.id, snapshot.id, "one row per tenant and cache key");
    assert_eq!(retried.state, pb::SnapshotState::Queued as i32);
    assert!(retried.error.is_none());
    assert_eq!(tasks(&stack, &snapshot.id).await, 2, "a new task beside the failed one");
    assert_eq!(
        stack
            .count(&format!(
                "SELECT count(*) FROM render.frame_jobs WHERE snapshot_id = '{}' AND state = 'queued'",
                snapshot.id
            ))
            .await,
        1
    );
}

#[tokio::test]
async fn the_snapshot_rate_counts_renders_not_hits() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let mut plan = Plan::pro();
    plan.snapshots_per_hour = Some(2);
    seed_plan(stack.pool(), TENANT, Some(alice.user), &plan).await;
    let one = stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 1)).await.unwrap();
    stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 2)).await.unwrap();
    let (code, message) = failure(stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 3)).await);
    assert_eq!(code, Code::ResourceExhausted);
    assert!(message.starts_with("snapshot rate: the pro plan allows 2 snapshot renders per hour"), "{message}");
    assert_eq!(stack.count("SELECT count(*) FROM render.snapshots").await, 2, "a refused request leaves nothing");
    // An hour later the first render no longer counts (and its record goes).
    let first_id = one.get_ref().snapshot.as_ref().unwrap().id.clone();
    stack
        .execute(&format!(
            "UPDATE render.snapshot_tasks SET created_at = now() - interval '61 minutes' WHERE snapshot_id = '{first_id}'"
        ))
        .await;
    stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 3)).await.unwrap();
    assert_eq!(stack.count("SELECT count(*) FROM render.snapshot_tasks").await, 2);
    let (code, _) = failure(stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 4)).await);
    assert_eq!(code, Code::ResourceExhausted);
    // A pending or cached snapshot is still answered.
    let pending = stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 1)).await.unwrap();
    assert_eq!(pending.into_inner().snapshot.unwrap().id, one.get_ref().snapshot.as_ref().unwrap().id);
    ready(&stack, &one.into_inner().snapshot.unwrap().id).await;
    assert!(
        stack
            .renders(&alice)
            .request_snapshot(titled_snapshot(&files.template, 1))
            .await
            .unwrap()
            .into_inner()
            .cache_hit
    );
    // Another user has their own rate.
    let bob = Principal::user(TENANT);
    stack.renders(&bob).request_snapshot(titled_snapshot(&files.template, 4)).await.unwrap();
}

#[tokio::test]
async fn snapshot_requests_are_checked_like_submits() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let base = titled_snapshot(&files.template, 0);
    let cases = vec![
        (pb::RequestSnapshotRequest { frame: -1, ..base.clone() }, Code::InvalidArgument, "frame: "),
        (
            pb::RequestSnapshotRequest { composition: String::new(), ..base.clone() },
            Code::InvalidArgument,
            "composition: ",
        ),
        (
            pb::RequestSnapshotRequest { template_file_id: Uuid::new_v4().to_string(), ..base.clone() },
            Code::NotFound,
            "template_file_id: file not found",
        ),
        (
            pb::RequestSnapshotRequest {
                scene_data: Some(pb::SceneData {
                    edits: vec![media_edit("Photo", &Uuid::new_v4().to_string())],
                    custom_data: None,
                }),
                ..base.clone()
            },
            Code::NotFound,
            "scene_data.edits[0].media.file_id: file not found",
        ),
        (
            pb::RequestSnapshotRequest { template_sha256: sha256_hex(b"else"), ..base.clone() },
            Code::FailedPrecondition,
            "template_sha256 does not match the file",
        ),
    ];
    for (request, code, prefix) in cases {
        let (got, message) = failure(stack.renders(&alice).request_snapshot(request).await);
        assert_eq!(got, code, "{message}");
        assert!(message.starts_with(prefix), "{message:?} should start with {prefix:?}");
    }
    assert_eq!(stack.count("SELECT count(*) FROM render.snapshots").await, 0);
    assert_eq!(stack.count("SELECT count(*) FROM render.frame_jobs").await, 0);
}

async fn next(stream: &mut tonic::Streaming<pb::WatchSnapshotResponse>) -> Option<pb::WatchSnapshotResponse> {
    tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("a message in time").map(|m| m.unwrap())
}

#[tokio::test]
async fn watching_a_snapshot_ends_when_it_is_ready() {
    let stack = Orchestrator::start_with_files().await;
    let alice = Principal::user(TENANT);
    let files = stack.assets(&alice).await;
    let snapshot = stack.renders(&alice).request_snapshot(titled_snapshot(&files.template, 5)).await.unwrap();
    let id = snapshot.into_inner().snapshot.unwrap().id;
    let mut stream = stack
        .renders(&alice)
        .watch_snapshot(pb::WatchSnapshotRequest { snapshot_id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await.unwrap();
    assert_eq!(first.snapshot.unwrap().state, pb::SnapshotState::Queued as i32);
    ready(&stack, &id).await;
    let done = next(&mut stream).await.unwrap();
    assert_eq!(done.snapshot.unwrap().state, pb::SnapshotState::Ready as i32);
    assert!(next(&mut stream).await.is_none());
    let stranger = Principal::user(Uuid::from_u128(0xb));
    let (code, _) =
        failure(stack.renders(&stranger).watch_snapshot(pb::WatchSnapshotRequest { snapshot_id: id }).await);
    assert_eq!(code, Code::NotFound);
}
