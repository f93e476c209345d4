//! Frame repair over the real service, PostgreSQL and simulated agents: a chunk that delivered
//! part of its frames is done and its missing or bad frames are rendered again by repair tasks
//! (FRAME_REPAIR), on another node where there is one, before the job assembles; every frame is
//! accepted exactly once and counted once. A chunk with no usable frame is rendered again whole;
//! repairs retry like chunks, fail their job once out of attempts, are fenced by their epoch, are
//! canceled with their job and are all a requeued job renders again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use support::agent::{accepted, frame_report, frames_of, ok_frame, result};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, Principal, SimAgent, seed_job};
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

/// A node that leaves its tasks to the test.
fn manual(slots: u32) -> AgentSpec {
    AgentSpec { behaviour: Behaviour::Manual, slots, ..AgentSpec::default() }
}

/// A frame listed with `status` (not uploaded).
fn bad_frame(frame: i32, status: agent_pb::FrameStatus) -> agent_pb::FrameOutput {
    agent_pb::FrameOutput { frame, status: status as i32, ..Default::default() }
}

/// A SUCCESS of `task` listing `frames`.
fn success(task: &agent_pb::AssignTask, frames: Vec<agent_pb::FrameOutput>) -> In {
    let In::TaskResult(mut message) = result(task, pb::TaskOutcome::Success) else { unreachable!() };
    message.frames = frames;
    In::TaskResult(message)
}

/// The agent reports `delivered` of `task` in a FrameReport and then a SUCCESS listing `listed`
/// too; both are acknowledged. The agent's slot is free again.
async fn deliver(agent: &SimAgent, task: &agent_pb::AssignTask, delivered: &[i32], listed: Vec<agent_pb::FrameOutput>) {
    agent.send(accepted(task));
    if !delivered.is_empty() {
        let seq = agent.send(frame_report(task, delivered));
        agent.ack_of(seq).await;
    }
    agent.drop_task(&task.task_id);
    let seq = agent.send(success(task, listed));
    agent.ack_of(seq).await;
}

/// The agent renders all of `task` and succeeds.
async fn complete(agent: &SimAgent, task: &agent_pb::AssignTask) {
    deliver(agent, task, &frames_of(task), Vec::new()).await;
}

/// The agent fails `task` with a machine error.
async fn crash(agent: &SimAgent, task: &agent_pb::AssignTask) {
    agent.send(accepted(task));
    agent.drop_task(&task.task_id);
    let seq = agent.send(result(task, pb::TaskOutcome::MachineError));
    agent.ack_of(seq).await;
}

/// The single range of a render assignment and its segment index.
fn range_of(task: &agent_pb::AssignTask) -> (Vec<pb::FrameRange>, i32) {
    match &task.spec {
        Some(agent_pb::assign_task::Spec::Render(spec)) => (spec.frames.clone(), spec.segment_index),
        _ => panic!("a render spec: {task:?}"),
    }
}

/// Repairs of the database as (start, end, reason, detected on, state, resolved), by start.
async fn repairs(o: &Orchestrator) -> Vec<(i32, i32, String, Option<Uuid>, String, bool)> {
    sqlx::query_as(
        "SELECT frame_start, frame_end, reason, detected_on_node_id, state, resolved_at IS NOT NULL
           FROM render.frame_repair_jobs ORDER BY frame_start",
    )
    .fetch_all(o.pool())
    .await
    .unwrap()
}

/// (state, frames_done, frames_total) of `job`.
async fn job_row(o: &Orchestrator, job: Uuid) -> (String, i32, i32) {
    sqlx::query_as("SELECT state, frames_done, frames_total FROM render.render_jobs WHERE id = $1")
        .bind(job)
        .fetch_one(o.pool())
        .await
        .unwrap()
}

/// Every frame of `job` in `frame_results`: (frame, source task, epoch, node), by frame.
async fn frame_sources(o: &Orchestrator, job: Uuid) -> Vec<(i32, Uuid, i64, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT frame_number, source_frame_job_id, lease_epoch, node_id FROM render.frame_results
          WHERE job_id = $1 ORDER BY frame_number",
    )
    .bind(job)
    .fetch_all(o.pool())
    .await
    .unwrap()
}

async fn until_state(o: &Orchestrator, job: Uuid, state: &str) {
    o.until(
        &format!("the job is {state}"),
        &format!("SELECT state = '{state}' FROM render.render_jobs WHERE id = '{job}'"),
    )
    .await;
}

fn id(task: &agent_pb::AssignTask) -> Uuid {
    task.task_id.parse().unwrap()
}

#[tokio::test]
async fn missing_and_corrupt_frames_are_repaired_on_another_node_before_assembly() {
    let o = Orchestrator::start().await;
    // The node that loses the frames has a slot free meanwhile and holds the template, which
    // placement would otherwise prefer.
    let a = o.agent(AgentSpec { cache: vec![JobSeed::default().template_sha256], ..manual(2) }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    assert_eq!(frames_of(&chunk), (0..=9).collect::<Vec<_>>());
    let b = o.agent(manual(2)).await;
    b.welcome().await;

    // Frames 3 and 4 never come; 7 was uploaded, then found corrupt.
    let listed = vec![ok_frame(&chunk, 8), ok_frame(&chunk, 9), bad_frame(7, agent_pb::FrameStatus::Corrupt)];
    deliver(&a, &chunk, &[0, 1, 2, 5, 6, 7], listed).await;

    let found: Vec<(i32, i32, String, Option<Uuid>)> =
        repairs(&o).await.into_iter().map(|(s, e, reason, node, _, _)| (s, e, reason, node)).collect();
    let node_a = Some(a.identity.node_id);
    assert_eq!(found, [(3, 4, "missing".to_owned(), node_a), (7, 7, "corrupt".to_owned(), node_a)]);
    let chunk_state: String = sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1")
        .bind(id(&chunk))
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(chunk_state, "done", "the chunk delivered what it could");
    // Frame 7 was accepted (and counted) before it was found bad; its repair replaces it.
    assert_eq!(job_row(&o, job.job_id).await, ("rendering".to_owned(), 8, 10), "the job waits for its repairs");

    // Both repairs go to the other node: one range each, step 1, the chunk's segment.
    let mut tasks = [b.next_assign().await, b.next_assign().await];
    tasks.sort_by_key(|t| frames_of(t)[0]);
    for task in &tasks {
        assert_eq!(task.kind(), pb::TaskKind::FrameRepair);
        assert_eq!(task.render_id, job.job_id.to_string());
        let Some(agent_pb::assign_task::Spec::Render(spec)) = &task.spec else { panic!("a render spec") };
        assert_eq!(spec.composition, "Main");
        assert!(spec.output.as_ref().unwrap().upload_frames);
    }
    assert_eq!(range_of(&tasks[0]), (vec![pb::FrameRange { start: 3, end: 4, step: 1 }], 0));
    assert_eq!(range_of(&tasks[1]), (vec![pb::FrameRange { start: 7, end: 7, step: 1 }], 0));
    assert_eq!(a.assigns().len(), 1, "the node that lost the frames gets no repair");
    assert!(repairs(&o).await.iter().all(|r| r.4 == "running" && !r.5), "leased repairs run");

    complete(&b, &tasks[1]).await;
    assert_eq!(job_row(&o, job.job_id).await, ("rendering".to_owned(), 8, 10), "a replaced frame is not new");
    complete(&b, &tasks[0]).await;
    until_state(&o, job.job_id, "assembling").await;

    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
    let sources = frame_sources(&o, job.job_id).await;
    assert_eq!(sources.iter().map(|s| s.0).collect::<Vec<_>>(), (0..=9).collect::<Vec<_>>(), "each frame once");
    for (frame, source, epoch, node) in sources {
        let (task, agent) = match frame {
            3 | 4 => (&tasks[0], &b),
            7 => (&tasks[1], &b),
            _ => (&chunk, &a),
        };
        assert_eq!((source, epoch, node), (id(task), task.lease_epoch as i64, Some(agent.identity.node_id)), "{frame}");
    }
    assert!(repairs(&o).await.iter().all(|r| r.4 == "done" && r.5), "{:?}", repairs(&o).await);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'repair' AND state = 'done'").await, 2);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'assemble'").await, 1);

    // Operators see the repairs on their chunk, each with its task and attempt.
    let mut admin = o.render_admin(Role::PlatformAdmin);
    let shown = admin.get_chunk(pb::GetChunkRequest { chunk_id: chunk.task_id.clone() }).await.unwrap();
    let mut shown: Vec<(String, Option<pb::FrameRange>, pb::RepairReason, pb::ChunkState, String, usize)> = shown
        .into_inner()
        .chunk
        .unwrap()
        .repairs
        .iter()
        .map(|r| (r.task_id.clone(), r.range, r.reason(), r.state(), r.detected_on_node_id.clone(), r.attempts.len()))
        .collect();
    // Repairs found together are listed in id order.
    shown.sort_by_key(|r| r.1.map(|range| range.start));
    let node_a = a.identity.node_id.to_string();
    assert_eq!(
        shown,
        [
            (
                tasks[0].task_id.clone(),
                Some(pb::FrameRange { start: 3, end: 4, step: 1 }),
                pb::RepairReason::Missing,
                pb::ChunkState::Done,
                node_a.clone(),
                1
            ),
            (
                tasks[1].task_id.clone(),
                Some(pb::FrameRange { start: 7, end: 7, step: 1 }),
                pb::RepairReason::Corrupt,
                pb::ChunkState::Done,
                node_a,
                1
            ),
        ]
    );
}

#[tokio::test]
async fn a_one_node_farm_repairs_on_the_node_that_lost_the_frames() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    let delivered: Vec<i32> = (0..=9).filter(|f| *f != 5).collect();
    deliver(&a, &chunk, &delivered, Vec::new()).await;

    let repair = a.next_assign().await;
    assert_eq!(repair.kind(), pb::TaskKind::FrameRepair);
    assert_eq!(range_of(&repair).0, [pb::FrameRange { start: 5, end: 5, step: 1 }]);
    assert_eq!(job_row(&o, job.job_id).await, ("rendering".to_owned(), 9, 10));
    // A repair reports only frames of its own range.
    let seq = a.send(frame_report(&repair, &[4]));
    assert_eq!(a.reject_of(seq).await.reason(), agent_pb::RejectReason::Malformed);
    complete(&a, &repair).await;
    until_state(&o, job.job_id, "assembling").await;
    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
    let five = frame_sources(&o, job.job_id).await.into_iter().find(|s| s.0 == 5).unwrap();
    assert_eq!(five.1, id(&repair));
}

#[tokio::test]
async fn a_chunk_without_a_usable_frame_is_rendered_again_whole() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    let corrupt = (0..=9).map(|f| bad_frame(f, agent_pb::FrameStatus::Corrupt)).collect();
    deliver(&a, &chunk, &[], corrupt).await;

    assert!(repairs(&o).await.is_empty(), "no repairs of a chunk with nothing usable");
    let (outcome, code): (String, String) =
        sqlx::query_as("SELECT outcome, error_code FROM render.frame_job_attempts WHERE frame_job_id = $1")
            .bind(id(&chunk))
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((outcome.as_str(), code.as_str()), ("machine_error", "frames_invalid"));

    let b = o.agent(AgentSpec::default()).await;
    until_state(&o, job.job_id, "assembling").await;
    let again = &b.assigns()[0];
    assert_eq!(
        (again.task_id.as_str(), again.lease_epoch, again.kind()),
        (chunk.task_id.as_str(), 2, pb::TaskKind::RenderChunk)
    );
    assert_eq!(a.assigns().len(), 1, "never again on the node that failed it");
    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'repair'").await, 0);
}

#[tokio::test]
async fn a_repair_retried_elsewhere_replaces_its_earlier_frames_and_counts_them_once() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    let b = o.agent(manual(1)).await;
    b.welcome().await;
    deliver(&a, &chunk, &[0, 1, 2, 3, 6, 7, 8, 9], Vec::new()).await;

    // The first lease of the repair uploads frame 4 and claims success without frame 5: a
    // machine error of the repair (not a repair of the repair).
    let first = b.next_assign().await;
    assert_eq!(range_of(&first).0, [pb::FrameRange { start: 4, end: 5, step: 1 }]);
    deliver(&b, &first, &[4], Vec::new()).await;
    assert_eq!(job_row(&o, job.job_id).await.1, 9);
    let (outcome, code): (String, String) = sqlx::query_as(
        "SELECT outcome, error_code FROM render.frame_job_attempts WHERE frame_job_id = $1 AND lease_epoch = 1",
    )
    .bind(id(&first))
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), code.as_str()), ("machine_error", "frames_invalid"));
    assert_eq!(repairs(&o).await.len(), 1);

    // The node that failed it is excluded from the job; the one that lost the frames remains.
    let second = a.next_assign().await;
    assert_eq!((second.task_id.as_str(), second.lease_epoch), (first.task_id.as_str(), 2));
    a.send(accepted(&second));
    let seq = a.send(frame_report(&second, &[4]));
    a.ack_of(seq).await;
    assert_eq!(job_row(&o, job.job_id).await.1, 9, "frame 4 again is not new");
    let seq = a.send(frame_report(&second, &[5]));
    a.ack_of(seq).await;
    assert_eq!(job_row(&o, job.job_id).await.1, 10);
    a.drop_task(&second.task_id);
    let seq = a.send(result(&second, pb::TaskOutcome::Success));
    a.ack_of(seq).await;
    until_state(&o, job.job_id, "assembling").await;
    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
    let sources = frame_sources(&o, job.job_id).await;
    assert_eq!(sources.len(), 10);
    let four = sources.iter().find(|s| s.0 == 4).unwrap();
    assert_eq!(*four, (4, id(&second), 2, Some(a.identity.node_id)), "the later epoch replaced the frame");
}

#[tokio::test]
async fn a_repair_out_of_attempts_fails_the_job() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], max_attempts: 2, ..JobSeed::default() })
            .await;
    let chunk = a.next_assign().await;
    let b = o.agent(manual(1)).await;
    b.welcome().await;
    deliver(&a, &chunk, &[0, 1, 2, 3, 4, 6, 7, 8, 9], Vec::new()).await;

    let first = b.next_assign().await;
    assert_eq!(first.kind(), pb::TaskKind::FrameRepair);
    crash(&b, &first).await;
    let second = a.next_assign().await;
    assert_eq!((second.task_id.as_str(), second.lease_epoch), (first.task_id.as_str(), 2));
    crash(&a, &second).await;

    until_state(&o, job.job_id, "failed").await;
    let (class, message): (String, String) =
        sqlx::query_as("SELECT error_class, error_message FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((class.as_str(), message.as_str()), ("machine", "After Effects crashed"));
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM render.frame_jobs WHERE id = $1")
            .bind(id(&first))
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("failed", 2));
    let found = repairs(&o).await;
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].4.as_str(), found[0].5), ("failed", true));
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'assemble'").await, 0);
}

#[tokio::test]
async fn a_stale_report_of_a_repair_is_rejected() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    deliver(&a, &chunk, &[0, 1, 2, 3, 4, 6, 7, 8, 9], Vec::new()).await;

    // The node refuses the repair's first lease; it gets the repair again under a new epoch.
    let first = a.next_assign().await;
    a.refuse(&first);
    let second = a.next_assign().await;
    assert_eq!((second.task_id.as_str(), second.lease_epoch), (first.task_id.as_str(), 2));

    // Reports of the first lease change nothing.
    let seq = a.send(frame_report(&first, &[5]));
    assert_eq!(a.reject_of(seq).await.reason(), agent_pb::RejectReason::StaleEpoch);
    let seq = a.send(result(&first, pb::TaskOutcome::Success));
    assert_eq!(a.reject_of(seq).await.reason(), agent_pb::RejectReason::StaleEpoch);
    assert!(frame_sources(&o, job.job_id).await.iter().all(|s| s.0 != 5));
    assert_eq!(job_row(&o, job.job_id).await, ("rendering".to_owned(), 9, 10));

    complete(&a, &second).await;
    until_state(&o, job.job_id, "assembling").await;
    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
}

#[tokio::test]
async fn canceling_a_job_cancels_its_repairs() {
    let o = Orchestrator::start().await;
    let node = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let chunk = node.next_assign().await;
    let frames = frames_of(&chunk);
    let delivered: Vec<i32> = frames.iter().copied().filter(|f| *f != frames[1] && *f != frames[3]).collect();
    deliver(&node, &chunk, &delivered, Vec::new()).await;

    // One repair runs on the node (repairs go before the job's other chunks), one waits.
    let running = node.next_assign().await;
    assert_eq!(running.kind(), pb::TaskKind::FrameRepair);
    node.send(accepted(&running));
    assert_eq!(o.count("SELECT count(*) FROM render.frame_repair_jobs").await, 2);

    let mut renders = o.renders(&Principal::tenant_admin(job.tenant));
    let cancel = pb::CancelRenderRequest { render_id: job.job_id.to_string(), reason: String::new() };
    renders.cancel_render(cancel).await.unwrap();
    let told = node.cancel_of(&running.task_id).await;
    assert_eq!((told.reason(), told.lease_epoch), (agent_pb::CancelReason::JobCanceled, running.lease_epoch));
    let canceled = "SELECT count(*) FROM render.frame_repair_jobs WHERE state = 'canceled' AND resolved_at IS NOT NULL";
    assert_eq!(o.count(canceled).await, 2);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'repair' AND state = 'canceled'").await, 2);
    assert_eq!(
        o.count("SELECT count(*) FROM render.frame_jobs WHERE state IN ('queued', 'leased', 'running')").await,
        0
    );
    assert_eq!(node.assigns().len(), 2, "nothing more of a canceled job");
}

#[tokio::test]
async fn requeuing_a_job_failed_by_its_repair_renders_only_the_repair_again() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], max_attempts: 1, ..JobSeed::default() })
            .await;
    let chunk = a.next_assign().await;
    deliver(&a, &chunk, &[0, 1, 2, 3, 4, 6, 7, 8, 9], Vec::new()).await;
    let repair = a.next_assign().await;
    crash(&a, &repair).await;
    until_state(&o, job.job_id, "failed").await;
    assert_eq!(repairs(&o).await[0].4, "failed");

    let mut admin = o.render_admin(Role::PlatformAdmin);
    let request = pb::RequeueRenderRequest {
        render_id: job.job_id.to_string(),
        reason: "retry".into(),
        clear_excluded_nodes: true,
    };
    let render = admin.requeue_render(request).await.unwrap().into_inner().render.unwrap();
    assert_eq!(render.state(), pb::JobState::Queued, "not assembling: a repair is open");
    let found = repairs(&o).await;
    assert_eq!((found[0].4.as_str(), found[0].5), ("queued", false));

    let again = a.next_assign().await;
    assert_eq!(again.task_id, repair.task_id);
    assert!(again.lease_epoch > repair.lease_epoch);
    complete(&a, &again).await;
    until_state(&o, job.job_id, "assembling").await;
    assert_eq!(job_row(&o, job.job_id).await, ("assembling".to_owned(), 10, 10));
    assert_eq!(a.assigns().len(), 3, "the done chunk is not rendered again");
    assert_eq!(repairs(&o).await[0].4, "done");
}

#[tokio::test]
async fn a_chunk_with_open_repairs_is_shown_running_without_its_frames_under_repair() {
    let o = Orchestrator::start().await;
    let a = o.agent(manual(1)).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = a.next_assign().await;
    // Frames 3 and 4 never come: the chunk is done in the queue, and a repair renders them.
    deliver(&a, &chunk, &[0, 1, 2, 5, 6, 7, 8, 9], Vec::new()).await;
    let repair = a.next_assign().await;
    assert_eq!(repair.kind(), pb::TaskKind::FrameRepair);

    // Operators: GetChunk and ListChunks by state.
    let mut admin =
        pb::render_admin_service_client::RenderAdminServiceClient::new(o.authed(&o.token(Role::PlatformAdmin)));
    let shown = admin.get_chunk(pb::GetChunkRequest { chunk_id: chunk.task_id.clone() }).await.unwrap().into_inner();
    let shown = shown.chunk.unwrap();
    assert_eq!((shown.state(), shown.frames_done, shown.frame_count), (pb::ChunkState::Running, 8, 10));
    let listed = |state: pb::ChunkState| pb::ListChunksRequest {
        render_id: job.job_id.to_string(),
        states: vec![state as i32],
        page: None,
    };
    let done = admin.list_chunks(listed(pb::ChunkState::Done)).await.unwrap().into_inner().chunks;
    assert!(done.is_empty(), "{done:?}");
    let running = admin.list_chunks(listed(pb::ChunkState::Running)).await.unwrap().into_inner().chunks;
    assert_eq!(running.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), [chunk.task_id.as_str()]);

    // The customer: the segment's progress and the chunk list of WatchRender.
    let token = o.token_in(job.tenant, Role::TenantAdmin);
    let mut renders = pb::render_service_client::RenderServiceClient::new(o.authed(&token));
    let render = renders.get_render(pb::GetRenderRequest { render_id: job.job_id.to_string() }).await.unwrap();
    let segment = render.into_inner().render.unwrap().segments[0].clone();
    assert_eq!((segment.frames_done, segment.chunks_done, segment.chunk_count), (8, 0, 1));
    let watch = pb::WatchRenderRequest { render_id: job.job_id.to_string(), include_chunks: true };
    let mut stream = renders.watch_render(watch).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let progress = &first.chunks[0];
    assert_eq!((progress.state(), progress.frames_done), (pb::ChunkState::Running, 8));
    drop(stream);

    // The repair done, so is the chunk.
    complete(&a, &repair).await;
    until_state(&o, job.job_id, "assembling").await;
    let shown = admin.get_chunk(pb::GetChunkRequest { chunk_id: chunk.task_id.clone() }).await.unwrap().into_inner();
    let shown = shown.chunk.unwrap();
    assert_eq!((shown.state(), shown.frames_done), (pb::ChunkState::Done, 10));
}
