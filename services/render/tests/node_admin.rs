//! NodeAdminService's node operations over the real service with simulated agents: listing and
//! reading nodes, health history, caches and crashes; drain, quarantine, release, evict and
//! delete as operators use them, and what the agents and the scheduler make of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use support::agent::{accepted, frame_report, frames_of, hex, result};
use support::{AgentEvent, AgentSpec, Behaviour, JobSeed, NodeAdmin, Orchestrator, SimAgent, seed_job};
use tonic::Code;
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

fn page(size: u32, token: &str) -> Option<common_pb::PageRequest> {
    Some(common_pb::PageRequest { page_size: size, page_token: token.into() })
}

fn named(name: &str) -> AgentSpec {
    AgentSpec { name: name.into(), ..AgentSpec::default() }
}

async fn get(admin: &mut NodeAdmin, node: Uuid) -> pb::Node {
    admin.get_node(pb::GetNodeRequest { node_id: node.to_string() }).await.unwrap().into_inner().node.unwrap()
}

async fn drain(admin: &mut NodeAdmin, node: Uuid, reason: &str) -> Result<pb::Node, tonic::Status> {
    let request = pb::DrainNodeRequest { node_id: node.to_string(), reason: reason.into(), deadline: None };
    admin.drain_node(request).await.map(|r| r.into_inner().node.unwrap())
}

async fn quarantine(admin: &mut NodeAdmin, node: Uuid, cancel_running: bool) -> pb::Node {
    let request = pb::QuarantineNodeRequest { node_id: node.to_string(), reason: "bad RAM".into(), cancel_running };
    admin.quarantine_node(request).await.unwrap().into_inner().node.unwrap()
}

async fn release(admin: &mut NodeAdmin, node: Uuid) -> pb::Node {
    let request = pb::ReleaseNodeRequest { node_id: node.to_string(), reason: "fixed".into() };
    admin.release_node(request).await.unwrap().into_inner().node.unwrap()
}

fn crash_report(kind: pb::CrashKind) -> In {
    In::CrashReport(agent_pb::CrashReport {
        crash_id: Uuid::new_v4().to_string(),
        kind: kind as i32,
        ae_version: "24.3.0x2".into(),
        process_name: "AfterFX".into(),
        exit_code: Some(-11),
        occurred_at: Some(prost_types::Timestamp {
            seconds: time::OffsetDateTime::now_utc().unix_timestamp(),
            nanos: 0,
        }),
        message: "Segmentation fault".into(),
        report_text: "Thread 0 crashed".into(),
        log_tail: "PROGRESS: 0:00:01:02 (33)".into(),
        ..Default::default()
    })
}

/// Runs an assignment to its end as a healthy agent would.
fn complete(agent: &SimAgent, task: &agent_pb::AssignTask) {
    agent.send(accepted(task));
    agent.send(frame_report(task, &frames_of(task)));
    agent.send(result(task, pb::TaskOutcome::Success));
}

#[tokio::test]
async fn node_operations_are_for_platform_admins_only() {
    let o = Orchestrator::start().await;
    let node = o.agent(AgentSpec::default()).await;
    node.welcome().await;
    let id = node.identity.node_id.to_string();
    for role in [Role::User, Role::TenantAdmin] {
        let mut c = o.node_admin(role);
        let denied = [
            c.list_nodes(pb::ListNodesRequest::default()).await.map(|_| ()),
            c.get_node(pb::GetNodeRequest { node_id: id.clone() }).await.map(|_| ()),
            c.list_node_health(pb::ListNodeHealthRequest { node_id: id.clone(), ..Default::default() })
                .await
                .map(|_| ()),
            c.list_node_template_cache(pb::ListNodeTemplateCacheRequest { node_id: id.clone(), page: None })
                .await
                .map(|_| ()),
            c.drain_node(pb::DrainNodeRequest { node_id: id.clone(), reason: "x".into(), deadline: None })
                .await
                .map(|_| ()),
            c.quarantine_node(pb::QuarantineNodeRequest {
                node_id: id.clone(),
                reason: "x".into(),
                cancel_running: true,
            })
            .await
            .map(|_| ()),
            c.release_node(pb::ReleaseNodeRequest { node_id: id.clone(), reason: String::new() }).await.map(|_| ()),
            c.evict_node_template(pb::EvictNodeTemplateRequest { node_id: id.clone(), sha256: hex(&[1; 32]) })
                .await
                .map(|_| ()),
            c.delete_node(pb::DeleteNodeRequest { node_id: id.clone(), force: true }).await.map(|_| ()),
            c.list_crashes(pb::ListCrashesRequest::default()).await.map(|_| ()),
            c.get_crash(pb::GetCrashRequest { crash_id: Uuid::new_v4().to_string() }).await.map(|_| ()),
        ];
        for (i, outcome) in denied.into_iter().enumerate() {
            assert_eq!(outcome.unwrap_err().code(), Code::PermissionDenied, "call {i} as {role:?}");
        }
    }
    let node = get(&mut o.node_admin(Role::PlatformAdmin), node.identity.node_id).await;
    assert_eq!((node.state(), node.admin_state()), (pb::NodeState::Online, pb::NodeAdminState::Active));
    assert_eq!(o.count("SELECT count(*) FROM render.nodes WHERE deleted_at IS NOT NULL").await, 0);
}

#[tokio::test]
async fn bad_and_unknown_ids_and_tokens_are_refused() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let unknown = Uuid::new_v4().to_string();
    let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();
    for id in ["not-a-uuid", unknown.as_str()] {
        let want = if id == unknown { Code::NotFound } else { Code::InvalidArgument };
        let node_id = id.to_owned();
        assert_eq!(code(admin.get_node(pb::GetNodeRequest { node_id: node_id.clone() }).await.map(|_| ())), want);
        let health = pb::ListNodeHealthRequest { node_id: node_id.clone(), ..Default::default() };
        assert_eq!(code(admin.list_node_health(health).await.map(|_| ())), want);
        let cache = pb::ListNodeTemplateCacheRequest { node_id: node_id.clone(), page: None };
        assert_eq!(code(admin.list_node_template_cache(cache).await.map(|_| ())), want);
        let request = pb::DrainNodeRequest { node_id: node_id.clone(), reason: "x".into(), deadline: None };
        assert_eq!(code(admin.drain_node(request).await.map(|_| ())), want);
        let request = pb::QuarantineNodeRequest { node_id: node_id.clone(), reason: "x".into(), cancel_running: false };
        assert_eq!(code(admin.quarantine_node(request).await.map(|_| ())), want);
        let request = pb::ReleaseNodeRequest { node_id: node_id.clone(), reason: String::new() };
        assert_eq!(code(admin.release_node(request).await.map(|_| ())), want);
        let request = pb::EvictNodeTemplateRequest { node_id: node_id.clone(), sha256: hex(&[1; 32]) };
        assert_eq!(code(admin.evict_node_template(request).await.map(|_| ())), want);
        let request = pb::DeleteNodeRequest { node_id: node_id.clone(), force: false };
        assert_eq!(code(admin.delete_node(request).await.map(|_| ())), want);
        let request = pb::GetCrashRequest { crash_id: node_id.clone() };
        assert_eq!(code(admin.get_crash(request).await.map(|_| ())), want);
    }
    let bad_token = pb::ListNodesRequest { page: page(2, "garbage!"), ..Default::default() };
    let err = admin.list_nodes(bad_token).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "page.page_token: is not a page token of this listing")
    );
    let bad_token = pb::ListCrashesRequest { page: page(2, "garbage!"), ..Default::default() };
    assert_eq!(admin.list_crashes(bad_token).await.unwrap_err().code(), Code::InvalidArgument);
    let bad_filter = pb::ListCrashesRequest { node_id: "nope".into(), ..Default::default() };
    let err = admin.list_crashes(bad_filter).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "node_id: must be a UUID"));
    let bad_state = pb::ListNodesRequest { states: vec![42], ..Default::default() };
    assert_eq!(admin.list_nodes(bad_state).await.unwrap_err().code(), Code::InvalidArgument);
    let bad_digest = pb::ListNodesRequest { cached_template_sha256: "ABC".into(), ..Default::default() };
    assert_eq!(admin.list_nodes(bad_digest).await.unwrap_err().code(), Code::InvalidArgument);

    // A real node: a missing reason or a bad digest changes nothing.
    let agent = o.agent(AgentSpec::default()).await;
    agent.welcome().await;
    let id = agent.identity.node_id;
    let err = drain(&mut admin, id, "  ").await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "reason: is required (1..=500 characters)"));
    let evict = pb::EvictNodeTemplateRequest { node_id: id.to_string(), sha256: "AB".repeat(32) };
    assert_eq!(admin.evict_node_template(evict).await.unwrap_err().code(), Code::InvalidArgument);
    let window = common_pb::TimeRange {
        start_time: Some(prost_types::Timestamp { seconds: 0, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: 40 * 86_400, nanos: 0 }),
    };
    let too_long = pb::ListNodeHealthRequest { node_id: id.to_string(), window: Some(window), ..Default::default() };
    assert_eq!(admin.list_node_health(too_long).await.unwrap_err().code(), Code::InvalidArgument);
    let node = get(&mut admin, id).await;
    assert_eq!(node.admin_state(), pb::NodeAdminState::Active);
    assert_eq!(o.count("SELECT count(*) FROM render.node_commands").await, 0);
}

#[tokio::test]
async fn nodes_are_listed_by_name_with_filters_and_pages() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let digest = [0x42; 32];
    let a = o.agent(AgentSpec { tags: vec!["gpu".into()], cache: vec![digest], ..named("alpha") }).await;
    let b = o.agent(named("bravo")).await;
    a.welcome().await;
    b.welcome().await;
    let c = o.enroll(&named("charlie")).await;

    let first = admin.list_nodes(pb::ListNodesRequest { page: page(2, ""), ..Default::default() }).await.unwrap();
    let first = first.into_inner();
    let names: Vec<&str> = first.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["alpha", "bravo"]);
    let token = first.page.unwrap().next_page_token;
    assert!(!token.is_empty());
    let second = admin.list_nodes(pb::ListNodesRequest { page: page(2, &token), ..Default::default() }).await.unwrap();
    let second = second.into_inner();
    assert_eq!(second.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["charlie"]);
    assert_eq!(second.nodes[0].state(), pb::NodeState::New);
    assert!(second.page.unwrap().next_page_token.is_empty());
    let other_filters = pb::ListNodesRequest {
        page: page(2, &token),
        states: vec![pb::NodeState::Online as i32],
        ..Default::default()
    };
    let err = admin.list_nodes(other_filters).await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "page.page_token: was issued for other filters or another sort")
    );

    let lister = admin.clone();
    let list = |request: pb::ListNodesRequest| {
        let mut admin = lister.clone();
        async move {
            let nodes = admin.list_nodes(request).await.unwrap().into_inner().nodes;
            nodes.into_iter().map(|n| n.name).collect::<Vec<_>>()
        }
    };
    let online = pb::ListNodesRequest { states: vec![pb::NodeState::Online as i32], ..Default::default() };
    assert_eq!(list(online).await, ["alpha", "bravo"]);
    let new = pb::ListNodesRequest { states: vec![pb::NodeState::New as i32], ..Default::default() };
    assert_eq!(list(new).await, ["charlie"]);
    assert_eq!(list(pb::ListNodesRequest { tags: vec!["gpu".into()], ..Default::default() }).await, ["alpha"]);
    let cached = pb::ListNodesRequest { cached_template_sha256: hex(&digest), ..Default::default() };
    assert_eq!(list(cached).await, ["alpha"]);
    quarantine(&mut admin, b.identity.node_id, false).await;
    let quarantined =
        pb::ListNodesRequest { admin_states: vec![pb::NodeAdminState::Quarantined as i32], ..Default::default() };
    assert_eq!(list(quarantined).await, ["bravo"]);

    // Latest health only when asked: the sample the agent sent last.
    a.heartbeat();
    a.renewal().await;
    let with_health = pb::ListNodesRequest { include_health: true, tags: vec!["gpu".into()], ..Default::default() };
    let nodes = admin.list_nodes(with_health).await.unwrap().into_inner().nodes;
    assert_eq!(nodes[0].latest_health.as_ref().map(|h| h.cpu_percent), Some(10.0));
    let without = pb::ListNodesRequest { tags: vec!["gpu".into()], ..Default::default() };
    assert!(admin.list_nodes(without).await.unwrap().into_inner().nodes[0].latest_health.is_none());
    assert_eq!(nodes[0].cached_template_count, 1);
    assert_eq!(nodes[0].tags, ["gpu"]);
    assert_eq!(nodes[0].facts.as_ref().unwrap().ae_installs[0].version, "24.3");
    drop(c);
}

#[tokio::test]
async fn get_node_shows_tasks_and_health_and_history_is_downsampled() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let agent = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    for _ in 0..3 {
        agent.heartbeat();
        agent.renewal().await;
    }
    let id = agent.identity.node_id;
    o.until(
        "a health sample is stored",
        &format!("SELECT count(*) > 0 FROM render.node_health_logs WHERE node_id = '{id}'"),
    )
    .await;
    let node = get(&mut admin, id).await;
    assert_eq!(node.tasks.len(), 1);
    let held = &node.tasks[0];
    assert_eq!((held.task_id.as_str(), held.lease_epoch), (task.task_id.as_str(), task.lease_epoch));
    assert_eq!(held.render_id, job.job_id.to_string());
    assert_eq!(held.kind(), pb::TaskKind::RenderChunk);
    assert!(node.latest_health.is_some());
    assert_eq!(node.state(), pb::NodeState::Online);
    assert_eq!(node.orchestrator_id, o.settings.orchestrator_id);

    // Several heartbeats within the interval: one stored sample.
    let stored = o.count(&format!("SELECT count(*) FROM render.node_health_logs WHERE node_id = '{id}'")).await;
    assert_eq!(stored, 1, "at most one sample per node per interval");

    // Older samples (as earlier minutes would have stored them), paged oldest first.
    sqlx::query(
        "INSERT INTO render.node_health_logs (recorded_at, node_id, cpu_percent, memory_used_bytes, memory_total_bytes, running_tasks)
         SELECT now() - make_interval(mins => m), $1, m, 1, 2, 1 FROM generate_series(2, 5) AS m",
    )
    .bind(id)
    .execute(o.pool())
    .await
    .unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let request =
            pb::ListNodeHealthRequest { node_id: id.to_string(), page: page(2, &token), ..Default::default() };
        let response = admin.list_node_health(request).await.unwrap().into_inner();
        seen.extend(response.samples.iter().map(|s| s.cpu_percent));
        token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, [5.0, 4.0, 3.0, 2.0, 10.0], "oldest first, all pages");
    let bucketed = pb::ListNodeHealthRequest {
        node_id: id.to_string(),
        bucket: Some(prost_types::Duration { seconds: 3600 * 24, nanos: 0 }),
        ..Default::default()
    };
    let samples = admin.list_node_health(bucketed).await.unwrap().into_inner().samples;
    let total: usize = samples.len();
    assert!((1..=2).contains(&total), "a day's buckets: {samples:?}");
    let too_fine = pb::ListNodeHealthRequest {
        node_id: id.to_string(),
        bucket: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        ..Default::default()
    };
    assert_eq!(admin.list_node_health(too_fine).await.unwrap_err().code(), Code::InvalidArgument);

    // Once the node is gone, its latest health is the newest stored sample.
    let mut agent = agent;
    agent.disconnect();
    o.until("the node is offline", &format!("SELECT orchestrator_id IS NULL FROM render.nodes WHERE id = '{id}'"))
        .await;
    let node = get(&mut admin, id).await;
    assert_eq!(node.state(), pb::NodeState::Offline);
    assert!(node.tasks.is_empty(), "its task went back to the queue");
    assert_eq!(node.latest_health.map(|h| (h.cpu_percent, h.running_tasks)), Some((10.0, 1)));
}

#[tokio::test]
async fn the_template_cache_is_listed_and_evictions_reach_the_agent() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let (one, two) = ([0x11; 32], [0x22; 32]);
    let agent = o.agent(AgentSpec { cache: vec![one, two], ..AgentSpec::default() }).await;
    agent.welcome().await;
    let id = agent.identity.node_id.to_string();
    let request = pb::ListNodeTemplateCacheRequest { node_id: id.clone(), page: page(1, "") };
    let first = admin.list_node_template_cache(request).await.unwrap().into_inner();
    assert_eq!(first.templates.len(), 1);
    let token = first.page.unwrap().next_page_token;
    let request = pb::ListNodeTemplateCacheRequest { node_id: id.clone(), page: page(1, &token) };
    let second = admin.list_node_template_cache(request).await.unwrap().into_inner();
    assert_eq!(second.templates.len(), 1);
    let mut digests = vec![first.templates[0].sha256.clone(), second.templates[0].sha256.clone()];
    digests.sort();
    assert_eq!(digests, [hex(&one), hex(&two)]);
    assert!(!first.templates[0].in_use);

    let evict = pb::EvictNodeTemplateRequest { node_id: id.clone(), sha256: hex(&two) };
    admin.evict_node_template(evict).await.unwrap();
    let evicted = agent
        .expect("an EvictTemplate", |e| match e {
            AgentEvent::Evict(evict) => Some(evict.clone()),
            _ => None,
        })
        .await;
    assert_eq!(evicted.sha256, hex(&two));
    o.until("the command is delivered", "SELECT bool_and(delivered_at IS NOT NULL) FROM render.node_commands").await;

    // Not online: nothing queued.
    let offline = o.enroll(&AgentSpec::default()).await;
    let evict = pb::EvictNodeTemplateRequest { node_id: offline.node_id.to_string(), sha256: hex(&one) };
    let err = admin.evict_node_template(evict).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::FailedPrecondition, "the node is not online"));
    assert_eq!(o.count("SELECT count(*) FROM render.node_commands").await, 1);
}

#[tokio::test]
async fn a_drained_node_finishes_its_chunk_and_gets_no_new_work() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..named("drained") }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 19)], ..JobSeed::default() }).await;
    let task = a.next_assign().await;
    let id = a.identity.node_id;

    let node = drain(&mut admin, id, "disk swap").await.unwrap();
    assert_eq!((node.admin_state(), node.admin_reason.as_str()), (pb::NodeAdminState::Draining, "disk swap"));
    let told = a
        .expect("Drain", |e| match e {
            AgentEvent::Drain(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert!(told.enabled);
    assert_eq!(told.reason, "disk swap");
    // Idempotent.
    assert_eq!(drain(&mut admin, id, "again").await.unwrap().admin_reason, "disk swap");

    // The running chunk finishes; the next one goes to another node, not to the drained one.
    complete(&a, &task);
    o.until(
        "the first chunk is done",
        &format!("SELECT state = 'done' FROM render.frame_jobs WHERE id = '{}'", task.task_id),
    )
    .await;
    let b = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..named("other") }).await;
    let next = b.next_assign().await;
    assert_ne!(next.task_id, task.task_id);
    assert!(job.chunks.iter().any(|c| c.to_string() == next.task_id), "the job's other chunk");
    assert_eq!(a.assigns().len(), 1, "the drained node got nothing new");

    // Release: the agent is told, and it takes work again.
    let node = release(&mut admin, id).await;
    assert_eq!((node.admin_state(), node.admin_reason.as_str()), (pb::NodeAdminState::Active, ""));
    a.expect("Drain off", |e| matches!(e, AgentEvent::Drain(d) if !d.enabled).then_some(())).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let again = a.next_assign().await;
    assert_ne!(again.task_id, task.task_id);
    let released = o.events("flatrender.events.v1.NodeReleased").await;
    let event = ev::NodeReleased::decode(released[0].as_slice()).unwrap();
    assert_eq!((event.previous_state(), event.reason.as_str()), (pb::NodeAdminState::Draining, "fixed"));
}

#[tokio::test]
async fn a_drain_deadline_requeues_what_still_runs_without_using_an_attempt() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = a.next_assign().await;
    let request = pb::DrainNodeRequest {
        node_id: a.identity.node_id.to_string(),
        reason: "maintenance".into(),
        deadline: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
    };
    admin.drain_node(request).await.unwrap();
    let cancel = a.cancel_of(&task.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::DrainDeadline);
    let b = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let again = b.next_assign().await;
    assert_eq!((again.task_id.as_str(), again.lease_epoch, again.attempt), (task.task_id.as_str(), 2, 2));
    let attempts =
        o.count(&format!("SELECT attempts::bigint FROM render.frame_jobs WHERE id = '{}'", task.task_id)).await;
    assert_eq!(attempts, 1, "the handed-back attempt is not counted");
}

#[tokio::test]
async fn a_drain_deadline_holds_when_the_replica_that_took_the_call_is_gone() {
    let holder = Orchestrator::start().await;
    let mut taker = holder.replica(|_| {}).await;
    let a = holder.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(holder.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = a.next_assign().await;

    // The drain is asked of the replica that does not hold the node, which then goes away.
    let request = pb::DrainNodeRequest {
        node_id: a.identity.node_id.to_string(),
        reason: "maintenance".into(),
        deadline: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
    };
    taker.node_admin(Role::PlatformAdmin).drain_node(request).await.unwrap();
    let stored = holder
        .count(&format!(
            "SELECT count(*) FROM render.nodes WHERE id = '{}' AND drain_deadline_at > now()",
            a.identity.node_id
        ))
        .await;
    assert_eq!(stored, 1, "the deadline is stored with the node");
    taker.stop();

    // The replica holding the node enforces it, with the drain deadline's reason.
    let cancel = a.cancel_of(&task.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::DrainDeadline);
    let (state, attempts, cleared): (String, i32, bool) = sqlx::query_as(
        "SELECT f.state, f.attempts, n.drain_deadline_at IS NULL FROM render.frame_jobs f, render.nodes n
          WHERE f.id = $1::uuid AND n.id = $2",
    )
    .bind(&task.task_id)
    .bind(a.identity.node_id)
    .fetch_one(holder.pool())
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts, cleared), ("queued", 0, true), "handed back, once");
}

#[tokio::test]
async fn a_quarantined_node_gets_no_work_until_released() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..named("suspect") }).await;
    a.welcome().await;
    let id = a.identity.node_id;
    let node = quarantine(&mut admin, id, false).await;
    assert_eq!(
        (node.admin_state(), node.quarantine_cause()),
        (pb::NodeAdminState::Quarantined, pb::QuarantineCause::Operator)
    );
    assert!(node.quarantined_at.is_some());
    // A quarantined node cannot be drained.
    assert_eq!(drain(&mut admin, id, "x").await.unwrap_err().code(), Code::FailedPrecondition);

    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let b = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..named("healthy") }).await;
    assert_eq!(b.next_assign().await.task_id, job.chunks[0].to_string());
    assert!(a.assigns().is_empty(), "the quarantined node got nothing");

    release(&mut admin, id).await;
    let second = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    assert_eq!(a.next_assign().await.task_id, second.chunks[0].to_string(), "released: it takes work again");

    let events = o.events("flatrender.events.v1.NodeQuarantined").await;
    let event = ev::NodeQuarantined::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.cause(), event.reason.as_str()), (pb::QuarantineCause::Operator, "bad RAM"));
    assert!(!event.by_user_id.is_empty());
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn quarantine_with_cancel_takes_the_running_tasks_away() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = a.next_assign().await;
    quarantine(&mut admin, a.identity.node_id, true).await;
    assert_eq!(a.cancel_of(&task.task_id).await.reason(), agent_pb::CancelReason::Operator);
    let b = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let again = b.next_assign().await;
    assert_eq!((again.task_id.as_str(), again.attempt), (task.task_id.as_str(), 2), "an attempt was used");
    let (outcome, message): (String, String) = sqlx::query_as(
        "SELECT outcome, error_message FROM render.frame_job_attempts WHERE frame_job_id = $1::uuid AND attempt = 1",
    )
    .bind(&task.task_id)
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!((outcome.as_str(), message.as_str()), ("machine_error", "canceled: an operator quarantined the node"));
}

#[tokio::test]
async fn three_crashes_quarantine_a_node_and_are_listed() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(AgentSpec::default()).await;
    a.welcome().await;
    let id = a.identity.node_id;
    for kind in [pb::CrashKind::AeCrash, pb::CrashKind::AeHang] {
        let seq = a.send(crash_report(kind));
        a.ack_of(seq).await;
    }
    assert_eq!(get(&mut admin, id).await.recent_crashes, 2);
    assert_eq!(get(&mut admin, id).await.admin_state(), pb::NodeAdminState::Active, "two are not enough");
    let seq = a.send(crash_report(pb::CrashKind::OutOfMemory));
    a.ack_of(seq).await;
    o.until("the node is quarantined", &format!("SELECT state = 'quarantined' FROM render.nodes WHERE id = '{id}'"))
        .await;
    let node = get(&mut admin, id).await;
    assert_eq!(node.admin_reason, "3 crashes in 10 minutes");
    assert_eq!(node.quarantine_cause(), pb::QuarantineCause::Crashes);
    let events = o.events("flatrender.events.v1.NodeQuarantined").await;
    let event = ev::NodeQuarantined::decode(events[0].as_slice()).unwrap();
    assert_eq!((event.cause(), event.recent_crashes), (pb::QuarantineCause::Crashes, 3));
    assert!(event.by_user_id.is_empty());

    let request = pb::ListCrashesRequest { node_id: id.to_string(), page: page(2, ""), ..Default::default() };
    let first = admin.list_crashes(request).await.unwrap().into_inner();
    assert_eq!(first.crashes.len(), 2);
    assert!(first.crashes.iter().all(|c| c.report_text.is_empty() && c.log_tail.is_empty()));
    let token = first.page.unwrap().next_page_token;
    let request = pb::ListCrashesRequest { node_id: id.to_string(), page: page(2, &token), ..Default::default() };
    let second = admin.list_crashes(request).await.unwrap().into_inner();
    assert_eq!(second.crashes.len(), 1);
    let crash = admin.get_crash(pb::GetCrashRequest { crash_id: second.crashes[0].id.clone() }).await.unwrap();
    let crash = crash.into_inner().crash.unwrap();
    assert_eq!(
        (crash.report_text.as_str(), crash.log_tail.as_str()),
        ("Thread 0 crashed", "PROGRESS: 0:00:01:02 (33)")
    );
    assert_eq!((crash.process_name.as_str(), crash.exit_code), ("AfterFX", Some(-11)));
    assert_eq!(crash.node_name, a.identity.name);
    let other = pb::ListCrashesRequest { node_id: Uuid::new_v4().to_string(), ..Default::default() };
    assert!(admin.list_crashes(other).await.unwrap().into_inner().crashes.is_empty());

    // Release resets the window: the crashes stay listed but no longer count.
    let node = release(&mut admin, id).await;
    assert_eq!((node.admin_state(), node.recent_crashes), (pb::NodeAdminState::Active, 0));
    let seq = a.send(crash_report(pb::CrashKind::AeCrash));
    a.ack_of(seq).await;
    assert_eq!(get(&mut admin, id).await.recent_crashes, 1);
    assert_eq!(get(&mut admin, id).await.admin_state(), pb::NodeAdminState::Active);
    let all = admin.list_crashes(pb::ListCrashesRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.crashes.len(), 4);
}

#[tokio::test]
async fn deleting_a_busy_node_needs_force_and_ends_its_stream() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let spec = AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;
    let a = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = a.next_assign().await;
    let id = identity.node_id.to_string();

    let err = admin.delete_node(pb::DeleteNodeRequest { node_id: id.clone(), force: false }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(get(&mut admin, identity.node_id).await.deleted_at.is_none());

    admin.delete_node(pb::DeleteNodeRequest { node_id: id.clone(), force: true }).await.unwrap();
    assert_eq!(a.cancel_of(&task.task_id).await.reason(), agent_pb::CancelReason::Operator);
    assert_eq!(a.ended().await.0, Some(Code::Unauthenticated));
    let node = get(&mut admin, identity.node_id).await;
    assert!(node.deleted_at.is_some());
    assert_eq!((node.state(), node.orchestrator_id.as_str()), (pb::NodeState::Offline, ""));
    let offline = o.events("flatrender.events.v1.NodeOffline").await;
    let event = ev::NodeOffline::decode(offline.last().unwrap().as_slice()).unwrap();
    assert_eq!((event.reason(), event.requeued_tasks), (ev::NodeOfflineReason::Deleted, 1));
    assert_eq!(
        o.count(&format!("SELECT attempts::bigint FROM render.frame_jobs WHERE id = '{}'", task.task_id)).await,
        0
    );

    // Listed only when asked; the credential is dead; deleting again is a no-op; it cannot be
    // drained.
    assert!(admin.list_nodes(pb::ListNodesRequest::default()).await.unwrap().into_inner().nodes.is_empty());
    let all = pb::ListNodesRequest { include_deleted: true, ..Default::default() };
    assert_eq!(admin.list_nodes(all).await.unwrap().into_inner().nodes.len(), 1);
    let back = SimAgent::connect(&o, identity.clone(), spec).await;
    assert_eq!(back.ended().await.0, Some(Code::Unauthenticated));
    admin.delete_node(pb::DeleteNodeRequest { node_id: id.clone(), force: false }).await.unwrap();
    assert_eq!(drain(&mut admin, identity.node_id, "x").await.unwrap_err().code(), Code::FailedPrecondition);

    // Its task goes to another node.
    let b = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    assert_eq!(b.next_assign().await.task_id, task.task_id);
}

#[tokio::test]
async fn commands_reach_an_agent_held_by_another_replica() {
    let o = Orchestrator::start().await;
    let other = o.replica(|_| {}).await;
    let mut admin = other.node_admin(Role::PlatformAdmin);
    let agent = o.agent(AgentSpec { cache: vec![[0x33; 32]], ..AgentSpec::default() }).await;
    agent.welcome().await;
    let id = agent.identity.node_id;

    let node = drain(&mut admin, id, "rack move").await.unwrap();
    assert_eq!(node.orchestrator_id, o.settings.orchestrator_id);
    agent.expect("Drain", |e| matches!(e, AgentEvent::Drain(d) if d.enabled).then_some(())).await;
    let evict = pb::EvictNodeTemplateRequest { node_id: id.to_string(), sha256: hex(&[0x33; 32]) };
    admin.evict_node_template(evict).await.unwrap();
    agent.expect("EvictTemplate", |e| matches!(e, AgentEvent::Evict(_)).then_some(())).await;
    release(&mut admin, id).await;
    agent.expect("Drain off", |e| matches!(e, AgentEvent::Drain(d) if !d.enabled).then_some(())).await;
    admin.delete_node(pb::DeleteNodeRequest { node_id: id.to_string(), force: false }).await.unwrap();
    assert_eq!(agent.ended().await.0, Some(Code::Unauthenticated));
}

#[tokio::test]
async fn a_silent_node_is_listed_as_lost_until_it_speaks_again() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let agent = o.agent(AgentSpec::default()).await;
    agent.welcome().await;
    let id = agent.identity.node_id;
    agent.set_heartbeats(false);
    let lost = pb::ListNodesRequest { states: vec![pb::NodeState::Lost as i32], ..Default::default() };
    let deadline = tokio::time::Instant::now() + support::PATIENCE;
    while admin.list_nodes(lost.clone()).await.unwrap().into_inner().nodes.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for the node to be LOST");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(get(&mut admin, id).await.state(), pb::NodeState::Lost);
    agent.set_heartbeats(true);
    agent.heartbeat();
    o.until(
        "last_seen_at is written again",
        &format!("SELECT last_seen_at > now() - interval '2 seconds' FROM render.nodes WHERE id = '{id}'"),
    )
    .await;
    assert_eq!(get(&mut admin, id).await.state(), pb::NodeState::Online);
}

#[tokio::test]
async fn heartbeats_write_nothing_to_the_node_row() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let agent = o.agent(AgentSpec::default()).await;
    agent.welcome().await;
    let id = agent.identity.node_id;
    let version = format!("SELECT xmin::text FROM render.nodes WHERE id = '{id}'");
    let before: String = sqlx::query_scalar(sqlx::AssertSqlSafe(version.clone())).fetch_one(o.pool()).await.unwrap();
    for _ in 0..5 {
        agent.heartbeat();
        agent.expect("a LeaseRenewal", |e| matches!(e, AgentEvent::Renewal(_)).then_some(())).await;
    }
    let after: String = sqlx::query_scalar(sqlx::AssertSqlSafe(version)).fetch_one(o.pool()).await.unwrap();
    assert_eq!(before, after, "the node row was rewritten by heartbeats");
    // Its holder's heartbeat stands for when it was last seen.
    let node = get(&mut admin, id).await;
    assert_eq!(node.state(), pb::NodeState::Online);
    let seen = node.last_seen_at.unwrap();
    let holder: time::OffsetDateTime =
        sqlx::query_scalar("SELECT heartbeat_at FROM render.orchestrators WHERE id = $1")
            .bind(&o.settings.orchestrator_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert!(seen.seconds >= holder.unix_timestamp() - 2, "last seen {seen:?}, holder {holder}");
}

#[tokio::test]
async fn the_nodes_of_a_dead_replica_are_lost() {
    let o = Orchestrator::start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let agent = o.agent(AgentSpec::default()).await;
    agent.welcome().await;
    let id = agent.identity.node_id;
    assert_eq!(get(&mut admin, id).await.state(), pb::NodeState::Online);
    // The holder looks dead to every reader: its row is stale, and stays so while `hold` keeps
    // it locked (the replica's next refresh waits). The refresh may slip in between the two
    // statements; then again.
    let mut tries = 0;
    let hold = loop {
        tries += 1;
        assert!(tries <= 20, "could not make the replica's row stale");
        sqlx::query(
            "UPDATE render.orchestrators SET started_at = now() - interval '1 hour', heartbeat_at = now() - interval '1 hour'
              WHERE id = $1",
        )
        .bind(&o.settings.orchestrator_id)
        .execute(o.pool())
        .await
        .unwrap();
        let mut hold = o.pool().begin().await.unwrap();
        let stale: bool = sqlx::query_scalar(
            "SELECT heartbeat_at < now() - interval '1 minute' FROM render.orchestrators WHERE id = $1 FOR UPDATE",
        )
        .bind(&o.settings.orchestrator_id)
        .fetch_one(&mut *hold)
        .await
        .unwrap();
        if stale {
            break hold;
        }
    };
    let node = get(&mut admin, id).await;
    assert_eq!(
        (node.state(), node.orchestrator_id.as_str()),
        (pb::NodeState::Lost, o.settings.orchestrator_id.as_str())
    );
    hold.rollback().await.unwrap();
}
