//! The operator API (RenderAdminService) against the real service and PostgreSQL, with simulated
//! agents where tasks must run: who may call it, how bad requests are answered, searching and
//! inspecting jobs and chunks, requeueing a failed job (and fencing a running lease), failing a
//! running job (its agents told, its watchers woken).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use support::agent::{accepted, frame_report, frames_of, result};
use support::seed::cancel_job;
use support::{AgentEvent, AgentSpec, Behaviour, JobSeed, Orchestrator, Principal, SeededJob, failure, seed_job};
use tonic::Code;
use uuid::Uuid;

fn inspect(id: impl ToString) -> pb::InspectRenderRequest {
    pb::InspectRenderRequest { render_id: id.to_string() }
}

fn chunks_of(id: impl ToString, size: u32, token: &str) -> pb::ListChunksRequest {
    pb::ListChunksRequest {
        render_id: id.to_string(),
        page: Some(common_pb::PageRequest { page_size: size, page_token: token.into() }),
        states: vec![],
    }
}

fn requeue(id: impl ToString, clear: bool) -> pb::RequeueRenderRequest {
    pb::RequeueRenderRequest { render_id: id.to_string(), reason: "node hung".into(), clear_excluded_nodes: clear }
}

fn fail(id: impl ToString, message: &str) -> pb::FailRenderRequest {
    pb::FailRenderRequest { render_id: id.to_string(), message: message.into() }
}

fn search(page: Option<(u32, &str)>) -> pb::SearchRendersRequest {
    pb::SearchRendersRequest {
        page: page.map(|(size, token)| common_pb::PageRequest { page_size: size, page_token: token.into() }),
        ..Default::default()
    }
}

fn ids(renders: &[pb::RenderJob]) -> Vec<String> {
    renders.iter().map(|r| r.id.clone()).collect()
}

async fn job_state(o: &Orchestrator, job: Uuid) -> String {
    sqlx::query_scalar("SELECT state FROM render.render_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(o.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn only_platform_admins_may_call() {
    let o = Orchestrator::start().await;
    let job = seed_job(o.pool(), JobSeed::default()).await;
    let chunk = job.chunks[0].to_string();
    for role in [Role::User, Role::TenantAdmin] {
        let mut c = o.render_admin(role);
        let denied = [
            failure(c.search_renders(search(None)).await).0,
            failure(c.inspect_render(inspect(job.job_id)).await).0,
            failure(c.list_chunks(chunks_of(job.job_id, 0, "")).await).0,
            failure(c.get_chunk(pb::GetChunkRequest { chunk_id: chunk.clone() }).await).0,
            failure(c.requeue_render(requeue(job.job_id, true)).await).0,
            failure(c.fail_render(fail(job.job_id, "stop")).await).0,
        ];
        assert_eq!(denied, [Code::PermissionDenied; 6], "{role:?}");
    }
    let mut anonymous = pb::render_admin_service_client::RenderAdminServiceClient::new(o.channel());
    assert_eq!(failure(anonymous.fail_render(fail(job.job_id, "stop")).await).0, Code::Unauthenticated);
    assert_eq!(job_state(&o, job.job_id).await, "queued", "nothing changed");
    assert_eq!(o.count("SELECT count(*) FROM platform.outbox").await, 0);
}

#[tokio::test]
async fn bad_requests_and_unknown_ids_are_refused() {
    let o = Orchestrator::start().await;
    let job = seed_job(o.pool(), JobSeed::default()).await;
    let mut c = o.render_admin(Role::PlatformAdmin);

    // Malformed ids.
    for (at, (status, message)) in [
        ("inspect", failure(c.inspect_render(inspect("nope")).await)),
        ("chunks", failure(c.list_chunks(chunks_of("nope", 0, "")).await)),
        ("requeue", failure(c.requeue_render(requeue("nope", false)).await)),
        ("fail", failure(c.fail_render(fail("nope", "stop")).await)),
    ] {
        assert_eq!(status, Code::InvalidArgument, "{at}");
        assert!(message.starts_with("render_id: "), "{at}: {message}");
    }
    let (status, message) = failure(c.get_chunk(pb::GetChunkRequest { chunk_id: "NOPE".into() }).await);
    assert_eq!((status, message.starts_with("chunk_id: ")), (Code::InvalidArgument, true));

    // Unknown ids.
    let unknown = Uuid::new_v4();
    assert_eq!(failure(c.inspect_render(inspect(unknown)).await).0, Code::NotFound);
    assert_eq!(failure(c.list_chunks(chunks_of(unknown, 0, "")).await).0, Code::NotFound);
    assert_eq!(failure(c.get_chunk(pb::GetChunkRequest { chunk_id: unknown.to_string() }).await).0, Code::NotFound);
    assert_eq!(failure(c.requeue_render(requeue(unknown, false)).await).0, Code::NotFound);
    assert_eq!(failure(c.fail_render(fail(unknown, "stop")).await).0, Code::NotFound);

    // Reasons and messages.
    let empty = pb::RequeueRenderRequest { reason: " ".into(), ..requeue(job.job_id, false) };
    assert_eq!(failure(c.requeue_render(empty).await), (Code::InvalidArgument, "reason: must not be empty".into()));
    let long = pb::RequeueRenderRequest { reason: "x".repeat(501), ..requeue(job.job_id, false) };
    assert_eq!(failure(c.requeue_render(long).await).0, Code::InvalidArgument);
    assert_eq!(
        failure(c.fail_render(fail(job.job_id, "")).await),
        (Code::InvalidArgument, "message: must not be empty".into())
    );
    assert_eq!(failure(c.fail_render(fail(job.job_id, &"y".repeat(2001))).await).0, Code::InvalidArgument);

    // Filters and pages.
    let bad_searches = [
        ("tenant_id", pb::SearchRendersRequest { tenant_id: "x".into(), ..search(None) }),
        ("node_id", pb::SearchRendersRequest { node_id: "x".into(), ..search(None) }),
        ("states[1]", pb::SearchRendersRequest { states: vec![1, 99], ..search(None) }),
        ("error_class", pb::SearchRendersRequest { error_class: pb::ErrorClass::Lost as i32, ..search(None) }),
        ("error_class", pb::SearchRendersRequest { error_class: 99, ..search(None) }),
        (
            "created",
            pb::SearchRendersRequest {
                created: Some(common_pb::TimeRange {
                    start_time: Some(prost_types::Timestamp { seconds: 2_000_000_000, nanos: 0 }),
                    end_time: Some(prost_types::Timestamp { seconds: 1_000_000_000, nanos: 0 }),
                }),
                ..search(None)
            },
        ),
        ("page.page_token", search(Some((0, "garbage")))),
        ("page.page_size", search(Some((501, "")))),
    ];
    for (field, request) in bad_searches {
        let (status, message) = failure(c.search_renders(request).await);
        assert_eq!(status, Code::InvalidArgument, "{field}");
        assert!(message.starts_with(&format!("{field}: ")) || message.starts_with(&format!("{field}.")), "{message}");
    }
    let (status, message) = failure(c.list_chunks(chunks_of(job.job_id, 0, "garbage")).await);
    assert_eq!((status, message.starts_with("page.page_token: ")), (Code::InvalidArgument, true));
    let bad_state = pb::ListChunksRequest { states: vec![42], ..chunks_of(job.job_id, 0, "") };
    assert_eq!(failure(c.list_chunks(bad_state).await).0, Code::InvalidArgument);

    // A token of one listing is no token of another.
    seed_job(o.pool(), JobSeed::default()).await;
    let page = c.search_renders(search(Some((1, "")))).await.unwrap().into_inner();
    let token = page.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    assert_eq!(failure(c.list_chunks(chunks_of(job.job_id, 1, &token)).await).0, Code::InvalidArgument);
    let filtered = pb::SearchRendersRequest { tenant_id: job.tenant.to_string(), ..search(Some((1, &token))) };
    assert_eq!(failure(c.search_renders(filtered).await).0, Code::InvalidArgument);
    assert_eq!(job_state(&o, job.job_id).await, "queued", "nothing changed");
}

#[tokio::test]
async fn search_spans_tenants_with_filters_and_pages() {
    let o = Orchestrator::start().await;
    let tenant = Uuid::new_v4();
    let first = seed_job(o.pool(), JobSeed { tenant, ..JobSeed::default() }).await;
    let second = seed_job(o.pool(), JobSeed { tenant, ..JobSeed::default() }).await;
    let other = seed_job(o.pool(), JobSeed::default()).await;
    let mut c = o.render_admin(Role::PlatformAdmin);

    // Every tenant, newest first, two per page.
    let page = c.search_renders(search(Some((2, "")))).await.unwrap().into_inner();
    assert_eq!(ids(&page.renders), [other.job_id.to_string(), second.job_id.to_string()]);
    assert!(page.renders.iter().all(|r| r.scene_data.is_none() && r.segments.len() == 1));
    let token = page.page.unwrap().next_page_token;
    let rest = c.search_renders(search(Some((2, &token)))).await.unwrap().into_inner();
    assert_eq!(ids(&rest.renders), [first.job_id.to_string()]);
    assert_eq!(rest.page.unwrap().next_page_token, "");

    let of_tenant = pb::SearchRendersRequest { tenant_id: tenant.to_string(), ..search(None) };
    let found = c.search_renders(of_tenant).await.unwrap().into_inner().renders;
    assert_eq!(ids(&found), [second.job_id.to_string(), first.job_id.to_string()]);

    // By state and error class, after an operator failed one.
    c.fail_render(fail(first.job_id, "bad data")).await.unwrap();
    let failed = pb::SearchRendersRequest { states: vec![pb::JobState::Failed as i32], ..search(None) };
    assert_eq!(ids(&c.search_renders(failed).await.unwrap().into_inner().renders), [first.job_id.to_string()]);
    let queued = pb::SearchRendersRequest { states: vec![pb::JobState::Queued as i32], ..search(None) };
    assert_eq!(c.search_renders(queued).await.unwrap().into_inner().renders.len(), 2);
    let internal = pb::SearchRendersRequest { error_class: pb::ErrorClass::Internal as i32, ..search(None) };
    assert_eq!(ids(&c.search_renders(internal).await.unwrap().into_inner().renders), [first.job_id.to_string()]);
    let template = pb::SearchRendersRequest { error_class: pb::ErrorClass::Template as i32, ..search(None) };
    assert!(c.search_renders(template).await.unwrap().into_inner().renders.is_empty());

    // By creation time and node.
    let later = pb::SearchRendersRequest {
        created: Some(common_pb::TimeRange {
            start_time: Some(prost_types::Timestamp { seconds: 4_000_000_000, nanos: 0 }),
            end_time: None,
        }),
        ..search(None)
    };
    assert!(c.search_renders(later).await.unwrap().into_inner().renders.is_empty());
    let on_node = pb::SearchRendersRequest { node_id: Uuid::new_v4().to_string(), ..search(None) };
    assert!(c.search_renders(on_node).await.unwrap().into_inner().renders.is_empty());
}

/// Runs a two-segment job (three chunks) to assembly on one agent.
async fn rendered_job(o: &Orchestrator) -> (support::SimAgent, SeededJob) {
    let agent = o.agent(AgentSpec::default()).await;
    let job = seed_job(
        o.pool(),
        JobSeed { segments: vec![("Intro".into(), 0, 14), ("Outro".into(), 100, 104)], ..JobSeed::default() },
    )
    .await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    (agent, job)
}

#[tokio::test]
async fn inspect_and_chunks_show_the_attempt_history() {
    let o = Orchestrator::start().await;
    let (agent, job) = rendered_job(&o).await;
    let node = agent.identity.node_id.to_string();
    let mut c = o.render_admin(Role::PlatformAdmin);

    let inspected = c.inspect_render(inspect(job.job_id)).await.unwrap().into_inner();
    let render = inspected.render.unwrap();
    assert_eq!((render.state(), render.segments.len(), render.frames_done), (pb::JobState::Assembling, 2, 20));
    let stats = inspected.stats.unwrap();
    assert_eq!(
        (stats.chunks_done, stats.chunks_queued, stats.chunks_running, stats.attempts, stats.failed_attempts),
        (3, 1, 0, 3, 0)
    );
    assert_eq!((stats.node_ids, stats.node_time_ms, stats.repairs), (vec![node.clone()], 3000, 0));
    assert!(stats.queue_wait_ms >= 0);

    // Segment and frame order, the assembly last, two per page.
    let first = c.list_chunks(chunks_of(job.job_id, 2, "")).await.unwrap().into_inner();
    let token = first.page.unwrap().next_page_token;
    let second = c.list_chunks(chunks_of(job.job_id, 2, &token)).await.unwrap().into_inner();
    assert_eq!(second.page.unwrap().next_page_token, "");
    let chunks: Vec<pb::Chunk> = first.chunks.into_iter().chain(second.chunks).collect();
    let order: Vec<(i32, Option<i32>, pb::TaskKind, pb::ChunkState)> =
        chunks.iter().map(|c| (c.segment_index, c.range.map(|r| r.start), c.kind(), c.state())).collect();
    assert_eq!(
        order,
        [
            (0, Some(0), pb::TaskKind::RenderChunk, pb::ChunkState::Done),
            (0, Some(10), pb::TaskKind::RenderChunk, pb::ChunkState::Done),
            (1, Some(100), pb::TaskKind::RenderChunk, pb::ChunkState::Done),
            (-1, None, pb::TaskKind::Assemble, pb::ChunkState::Queued),
        ]
    );
    let chunk = &chunks[1];
    assert_eq!((chunk.frame_count, chunk.frames_done, chunk.attempt_count, chunk.lease_epoch), (5, 5, 1, 1));
    assert_eq!(
        (chunk.render_id.as_str(), chunk.tenant_id.as_str()),
        (job.job_id.to_string().as_str(), job.tenant.to_string().as_str())
    );
    assert!(chunk.node_id.is_empty() && chunk.lease_expires_at.is_none() && chunk.last_error.is_none());
    let attempt = &chunk.attempts[0];
    assert_eq!((attempt.attempt, attempt.lease_epoch, attempt.node_id.as_str()), (1, 1, node.as_str()));
    assert_eq!((attempt.outcome(), attempt.exit_code, attempt.duration_ms), (pb::TaskOutcome::Success, Some(0), 1000));
    assert!(attempt.log_tail.is_empty(), "no log tails in ListChunks");
    assert!(attempt.started_at.is_some() && attempt.finished_at.is_some());

    let queued = pb::ListChunksRequest { states: vec![pb::ChunkState::Queued as i32], ..chunks_of(job.job_id, 0, "") };
    let only = c.list_chunks(queued).await.unwrap().into_inner().chunks;
    assert_eq!(only.iter().map(|c| c.kind()).collect::<Vec<_>>(), [pb::TaskKind::Assemble]);

    // GetChunk has the log tails.
    let got =
        c.get_chunk(pb::GetChunkRequest { chunk_id: chunk.id.clone() }).await.unwrap().into_inner().chunk.unwrap();
    assert_eq!(got.attempts[0].log_tail, "Finished composition");
    assert_eq!(got.range, chunk.range);

    // The job ran on the node.
    let on_node = pb::SearchRendersRequest { node_id: node, ..search(None) };
    assert_eq!(ids(&c.search_renders(on_node).await.unwrap().into_inner().renders), [job.job_id.to_string()]);
}

#[tokio::test]
async fn a_requeued_failed_job_runs_again() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { behaviour: Behaviour::MachineError, ..AgentSpec::default() }).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], max_attempts: 1, ..JobSeed::default() })
            .await;
    o.until("the job fails", &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", job.job_id))
        .await;
    let mut c = o.render_admin(Role::PlatformAdmin);
    let failed = c.list_chunks(chunks_of(job.job_id, 0, "")).await.unwrap().into_inner().chunks;
    assert_eq!(failed[0].state(), pb::ChunkState::Failed);
    assert_eq!(failed[0].excluded_node_ids, [agent.identity.node_id.to_string()]);

    agent.set_behaviour(Behaviour::Complete);
    let render = c.requeue_render(requeue(job.job_id, true)).await.unwrap().into_inner().render.unwrap();
    assert_eq!(
        (render.state(), render.error.is_none(), render.finished_at.is_none()),
        (pb::JobState::Queued, true, true)
    );
    let queued = o.events("flatrender.events.v1.RenderJobQueued").await;
    let event = ev::RenderJobQueued::decode(queued.last().unwrap().as_slice()).unwrap();
    assert_eq!((event.render_id, event.requeued, event.frames_total), (job.job_id.to_string(), true, 10));

    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    let chunk = c.get_chunk(pb::GetChunkRequest { chunk_id: job.chunks[0].to_string() }).await.unwrap().into_inner();
    let chunk = chunk.chunk.unwrap();
    // The failed lease's epoch was retired by the requeue: the new lease is epoch 3.
    assert_eq!((chunk.state(), chunk.attempt_count, chunk.lease_epoch), (pb::ChunkState::Done, 1, 3));
    assert!(chunk.excluded_node_ids.is_empty(), "forgotten as asked");
    let outcomes: Vec<(u64, pb::TaskOutcome)> = chunk.attempts.iter().map(|a| (a.lease_epoch, a.outcome())).collect();
    assert_eq!(outcomes, [(1, pb::TaskOutcome::MachineError), (3, pb::TaskOutcome::Success)]);
    let stats = c.inspect_render(inspect(job.job_id)).await.unwrap().into_inner().stats.unwrap();
    assert_eq!((stats.attempts, stats.failed_attempts), (2, 1));

    // A job that was canceled cannot be requeued.
    let canceled = seed_job(o.pool(), JobSeed::default()).await;
    cancel_job(o.pool(), canceled.job_id).await;
    assert_eq!(failure(c.requeue_render(requeue(canceled.job_id, false)).await).0, Code::FailedPrecondition);
}

#[tokio::test]
async fn a_job_failed_in_assembly_is_requeued_to_assembly() {
    let o = Orchestrator::start().await;
    let (_renderer, job) = rendered_job(&o).await;
    let mut c = o.render_admin(Role::PlatformAdmin);
    c.fail_render(fail(job.job_id, "the encoder is broken")).await.unwrap();
    let assembly = c.list_chunks(chunks_of(job.job_id, 0, "")).await.unwrap().into_inner().chunks.pop().unwrap();
    assert_eq!((assembly.kind(), assembly.state()), (pb::TaskKind::Assemble, pb::ChunkState::Canceled));

    // Every frame is kept: only the assembly is left to do.
    let render = c.requeue_render(requeue(job.job_id, false)).await.unwrap().into_inner().render.unwrap();
    assert_eq!((render.state(), render.frames_done, render.error.is_none()), (pb::JobState::Assembling, 20, true));
    let chunks = c.list_chunks(chunks_of(job.job_id, 0, "")).await.unwrap().into_inner().chunks;
    let states: Vec<(pb::ChunkState, i32)> = chunks.iter().map(|c| (c.state(), c.attempts.len() as i32)).collect();
    use pb::ChunkState::{Done, Queued};
    assert_eq!(states, [(Done, 1), (Done, 1), (Done, 1), (Queued, 0)]);
    assert_eq!(chunks[3].id, assembly.id, "the same assembly task, not a second one");

    let assembler = o
        .agent(AgentSpec { ffmpeg: true, ae_versions: vec![], behaviour: Behaviour::Hang, ..AgentSpec::default() })
        .await;
    let task = assembler.next_assign().await;
    assert_eq!((task.kind(), task.task_id.as_str()), (pb::TaskKind::Assemble, assembly.id.as_str()));
}

#[tokio::test]
async fn a_requeue_fences_the_running_lease() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    agent.send(accepted(&task));
    let seq = agent.send(frame_report(&task, &[0, 1, 2]));
    agent.ack_of(seq).await;
    o.until(
        "the chunk runs",
        &format!("SELECT state = 'running' FROM render.frame_jobs WHERE id = '{}'", task.task_id),
    )
    .await;

    let mut c = o.render_admin(Role::PlatformAdmin);
    let render = c.requeue_render(requeue(job.job_id, false)).await.unwrap().into_inner().render.unwrap();
    assert_eq!(render.state(), pb::JobState::Queued);

    // What the node sends under the old epoch is refused; it is told an operator took the task
    // (CancelTask OPERATOR, not LEASE_LOST), and the chunk is leased again under a newer epoch.
    // Events are collected in whatever order they come.
    let stale_frames = agent.send(frame_report(&task, &[3]));
    let stale_result = agent.send(result(&task, pb::TaskOutcome::Success));
    let (mut cancel, mut rejects, mut again) = (None, Vec::new(), None);
    agent
        .expect("the cancel, two rejects and the new lease", |event| {
            match event {
                AgentEvent::Cancel(c) if c.task_id == task.task_id => cancel = Some(c.clone()),
                AgentEvent::Reject(r) if [stale_frames, stale_result].contains(&r.seq) => rejects.push(r.reason()),
                AgentEvent::Ack(seq) if [stale_frames, stale_result].contains(seq) => panic!("seq {seq} was accepted"),
                AgentEvent::Assign(_, t) if t.task_id == task.task_id => again = Some(t.clone()),
                _ => {}
            }
            (cancel.is_some() && rejects.len() == 2 && again.is_some()).then_some(())
        })
        .await;
    let cancel = cancel.unwrap();
    assert_eq!((cancel.reason(), cancel.lease_epoch), (agent_pb::CancelReason::Operator, task.lease_epoch));
    assert_eq!(rejects, [agent_pb::RejectReason::StaleEpoch; 2]);
    let again = again.unwrap();
    assert_eq!((again.lease_epoch, again.attempt), (task.lease_epoch + 2, 2));
    agent.send(accepted(&again));
    agent.send(frame_report(&again, &frames_of(&again)));
    let seq = agent.send(result(&again, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;

    let chunk = c.get_chunk(pb::GetChunkRequest { chunk_id: task.task_id.clone() }).await.unwrap().into_inner();
    let attempts: Vec<(u64, pb::TaskOutcome, Option<pb::ErrorCode>)> = chunk
        .chunk
        .unwrap()
        .attempts
        .iter()
        .map(|a| (a.lease_epoch, a.outcome(), a.error.as_ref().map(|e| e.code())))
        .collect();
    assert_eq!(
        attempts,
        [
            (task.lease_epoch, pb::TaskOutcome::LeaseLost, Some(pb::ErrorCode::LeaseLost)),
            (task.lease_epoch + 2, pb::TaskOutcome::Success, None),
        ]
    );
    let frames_done: i32 = sqlx::query_scalar("SELECT frames_done FROM render.render_jobs WHERE id = $1")
        .bind(job.job_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(frames_done, 10, "frames of the old lease are not counted twice");
}

#[tokio::test]
async fn failing_a_running_job_stops_its_agents_and_wakes_watchers() {
    let o = Orchestrator::start().await;
    let a = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let b = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let task_a = a.next_assign().await;
    let task_b = b.next_assign().await;
    o.until(
        "both chunks run",
        &format!("SELECT count(*) = 2 FROM render.frame_jobs WHERE job_id = '{}' AND state = 'running'", job.job_id),
    )
    .await;

    let mut watch = o
        .renders(&Principal::tenant_admin(job.tenant))
        .watch_render(pb::WatchRenderRequest { render_id: job.job_id.to_string(), include_chunks: false })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().render.unwrap();
    assert_eq!(first.state(), pb::JobState::Rendering);

    let mut c = o.render_admin(Role::PlatformAdmin);
    let render = c.fail_render(fail(job.job_id, "the template is broken")).await.unwrap().into_inner().render.unwrap();
    assert_eq!(render.state(), pb::JobState::Failed);
    let error = render.error.unwrap();
    assert_eq!(
        (error.error_class(), error.code(), error.message.as_str()),
        (pb::ErrorClass::Internal, pb::ErrorCode::FailedByOperator, "the template is broken")
    );

    for (agent, task) in [(&a, &task_a), (&b, &task_b)] {
        let cancel = agent.cancel_of(&task.task_id).await;
        assert_eq!((cancel.reason(), cancel.lease_epoch), (agent_pb::CancelReason::JobFailed, task.lease_epoch));
    }
    // The watcher sees the job fail.
    let seen = loop {
        let change = tokio::time::timeout(support::PATIENCE, watch.message()).await.unwrap().unwrap().unwrap();
        let render = change.render.unwrap();
        if render.state() == pb::JobState::Failed {
            break render;
        }
    };
    assert_eq!(seen.error.unwrap().code(), pb::ErrorCode::FailedByOperator);

    // The running chunks failed (their CANCELED results recorded), the queued one was canceled.
    o.until(
        "both canceled attempts are recorded",
        "SELECT count(*) = 2 FROM render.frame_job_attempts WHERE outcome = 'canceled'",
    )
    .await;
    let stats = c.inspect_render(inspect(job.job_id)).await.unwrap().into_inner().stats.unwrap();
    assert_eq!((stats.chunks_failed, stats.chunks_canceled, stats.chunks_running), (2, 1, 0));
    let failed = o.events("flatrender.events.v1.RenderJobFailed").await;
    assert_eq!(failed.len(), 1);
    let event = ev::RenderJobFailed::decode(failed[0].as_slice()).unwrap();
    assert_eq!(event.error.unwrap().code(), pb::ErrorCode::FailedByOperator);

    // Failing it again is refused and changes nothing.
    assert_eq!(failure(c.fail_render(fail(job.job_id, "again")).await).0, Code::FailedPrecondition);
    assert_eq!(o.events("flatrender.events.v1.RenderJobFailed").await.len(), 1);
    a.heartbeat();
    a.renewal().await;
    assert_eq!(a.assigns().len() + b.assigns().len(), 2, "nothing more of a failed job");
}
