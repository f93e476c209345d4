//! Probe renders over the real service with simulated agents: a node quarantined for crashes
//! gets a probe (and nothing else) after the delay, a successful probe releases it to normal
//! work, a failed one keeps it quarantined (PROBE_FAILED) until a later probe, a lost probe is
//! no verdict, and nothing is probed without a probe template or after an operator's quarantine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::settings::ProbeTemplate;
use flatrender_render::{Settings, State};
use prost::Message as _;
use support::agent::{accepted, hex, result};
use support::{AgentEvent, AgentSpec, Behaviour, JobSeed, NodeAdmin, Orchestrator, SimAgent, seed_job};
use tonic::Code;
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

/// The probe template's file and digest.
const TEMPLATE: Uuid = Uuid::from_u128(0x7e57_0000_0000_0000_0000_0000_0000_0001);
const TEMPLATE_SHA256: [u8; 32] = [0x9b; 32];
/// The test-short delay before the first probe.
const AFTER: Duration = Duration::from_millis(400);

fn template() -> ProbeTemplate {
    ProbeTemplate { file_id: TEMPLATE, composition: "Probe".into(), frame: 7 }
}

/// Probes after [`AFTER`], rendering [`template`] when `with_template`.
fn probing(settings: &mut Settings, with_template: bool) {
    settings.probes.after = AFTER;
    settings.probes.max_backoff = Duration::from_secs(60);
    settings.probes.template = with_template.then(template);
}

/// A replica probing with the template, whose facts are recorded as a used file's would be.
async fn start() -> Orchestrator {
    let o = Orchestrator::start_with(|s| probing(s, true)).await;
    record_template(&o).await;
    o
}

async fn record_template(o: &Orchestrator) {
    sqlx::query(
        "INSERT INTO render.file_facts (file_id, sha256, size_bytes, content_type) VALUES ($1, $2, 2048, 'application/zip')",
    )
    .bind(TEMPLATE)
    .bind(TEMPLATE_SHA256.as_slice())
    .execute(o.pool())
    .await
    .unwrap();
}

fn manual(slots: u32) -> AgentSpec {
    AgentSpec { slots, behaviour: Behaviour::Manual, ..AgentSpec::default() }
}

fn crash_report() -> In {
    In::CrashReport(agent_pb::CrashReport {
        crash_id: Uuid::new_v4().to_string(),
        kind: pb::CrashKind::AeCrash as i32,
        process_name: "AfterFX".into(),
        exit_code: Some(-11),
        message: "Segmentation fault".into(),
        ..Default::default()
    })
}

/// Three crashes: the node is quarantined automatically.
async fn crash_three_times(o: &Orchestrator, agent: &SimAgent) {
    for _ in 0..3 {
        let seq = agent.send(crash_report());
        agent.ack_of(seq).await;
    }
    let id = agent.identity.node_id;
    o.until("the node is quarantined", &format!("SELECT state = 'quarantined' FROM render.nodes WHERE id = '{id}'"))
        .await;
}

async fn get(admin: &mut NodeAdmin, node: Uuid) -> pb::Node {
    admin.get_node(pb::GetNodeRequest { node_id: node.to_string() }).await.unwrap().into_inner().node.unwrap()
}

/// The next AssignTask, which must be a probe for `agent`'s node, checked as the protocol
/// describes it.
async fn next_probe(agent: &SimAgent) -> agent_pb::AssignTask {
    let task = agent.next_assign().await;
    assert_eq!(task.kind(), pb::TaskKind::Probe, "a probe, not {task:?}");
    assert_eq!(task.tenant_id, "00000000-0000-0000-0000-000000000001", "the default tenant's");
    assert!(task.render_id.is_empty() && task.snapshot_id.is_empty());
    let Some(agent_pb::assign_task::Spec::Render(spec)) = &task.spec else { panic!("a render spec") };
    assert_eq!(spec.composition, "Probe");
    assert_eq!(spec.frames, vec![pb::FrameRange { start: 7, end: 7, step: 1 }], "one single-frame range");
    assert_eq!(spec.segment_index, -1);
    let bundle = spec.template_bundle.as_ref().unwrap();
    assert_eq!(
        (bundle.file_id.as_str(), bundle.sha256.as_str()),
        (TEMPLATE.to_string().as_str(), hex(&TEMPLATE_SHA256).as_str())
    );
    assert_eq!(bundle.size_bytes, 2048);
    assert!(!spec.output.as_ref().unwrap().upload_frames, "a probe keeps nothing");
    task
}

/// Waits for a LeaseRenewal of `task`: a heartbeat interval passed with it held, during which
/// the dispatcher ran several times.
async fn renewed(agent: &SimAgent, task: &agent_pb::AssignTask) {
    agent
        .expect("a renewal of the probe", |e| match e {
            AgentEvent::Renewal(r) if r.leases.iter().any(|l| l.task_id == task.task_id) => Some(()),
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn a_crashing_node_is_probed_and_released_to_normal_work() {
    let o = start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(manual(2)).await;
    a.welcome().await;
    let id = a.identity.node_id;
    crash_three_times(&o, &a).await;
    // Customer work waits meanwhile; the quarantined node has a free slot for it, yet gets none.
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;

    let probe = next_probe(&a).await;
    let probe_id: Uuid = probe.task_id.parse().unwrap();
    let (pinned, after_delay): (Option<Uuid>, bool) = sqlx::query_as(
        "SELECT f.pinned_node_id, f.created_at >= n.quarantined_at + make_interval(secs => $2)
           FROM render.frame_jobs f, render.nodes n WHERE f.id = $1 AND n.id = f.pinned_node_id",
    )
    .bind(probe_id)
    .bind(AFTER.as_secs_f64())
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!(pinned, Some(id));
    assert!(after_delay, "the probe waited for the delay after the quarantine");

    // Operators see the probe on the node; the render admin views do not list it as a chunk.
    a.send(accepted(&probe));
    renewed(&a, &probe).await;
    let node = get(&mut admin, id).await;
    assert_eq!(node.admin_state(), pb::NodeAdminState::Quarantined);
    assert_eq!(node.tasks.len(), 1);
    assert_eq!((node.tasks[0].kind(), node.tasks[0].task_id.as_str()), (pb::TaskKind::Probe, probe.task_id.as_str()));
    let mut render_admin =
        pb::render_admin_service_client::RenderAdminServiceClient::new(o.authed(&o.token(Role::PlatformAdmin)));
    let err = render_admin.get_chunk(pb::GetChunkRequest { chunk_id: probe.task_id.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(a.assigns().len(), 1, "nothing but the probe while it runs: {:?}", a.assigns());
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.frame_jobs WHERE job_id = '{}' AND state = 'queued'",
            job.job_id
        ))
        .await,
        1
    );

    // It succeeds (frames it reports are not kept): the node is released and takes the job.
    a.send(result(&probe, pb::TaskOutcome::Success));
    a.drop_task(&probe.task_id);
    let chunk = a.next_assign().await;
    assert_eq!(chunk.kind(), pb::TaskKind::RenderChunk);
    assert_eq!(chunk.render_id, job.job_id.to_string());
    let node = get(&mut admin, id).await;
    assert_eq!((node.admin_state(), node.state()), (pb::NodeAdminState::Active, pb::NodeState::Online));
    assert_eq!((node.recent_crashes, node.admin_reason.as_str()), (0, ""), "the crash window was reset");
    assert_eq!(node.quarantine_cause(), pb::QuarantineCause::Unspecified);
    let released = o.events("flatrender.events.v1.NodeReleased").await;
    assert_eq!(released.len(), 1);
    let event = ev::NodeReleased::decode(released[0].as_slice()).unwrap();
    assert_eq!(event.previous_state(), pb::NodeAdminState::Quarantined);
    assert_eq!((event.by_user_id.as_str(), event.reason.as_str()), ("", "probe render succeeded"));
    let state: String = sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1")
        .bind(probe_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(state, "done");
    assert_eq!(
        o.count(&format!("SELECT count(*) FROM render.frame_results WHERE source_frame_job_id = '{probe_id}'")).await,
        0
    );
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'probe'").await, 1, "one probe in all");
}

#[tokio::test]
async fn a_failed_probe_keeps_the_node_quarantined_until_a_later_probe_passes() {
    let o = start().await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(manual(1)).await;
    a.welcome().await;
    let id = a.identity.node_id;
    crash_three_times(&o, &a).await;

    let first = next_probe(&a).await;
    a.send(accepted(&first));
    let seq = a.send(result(&first, pb::TaskOutcome::MachineError));
    a.drop_task(&first.task_id);
    a.ack_of(seq).await;
    let (cause, failures, waits): (Option<String>, i32, bool) =
        sqlx::query_as("SELECT quarantine_cause, probe_failures, probe_due_at > now() FROM render.nodes WHERE id = $1")
            .bind(id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((cause.as_deref(), failures, waits), (Some("probe_failed"), 1, true));
    let node = get(&mut admin, id).await;
    assert_eq!(
        (node.admin_state(), node.quarantine_cause()),
        (pb::NodeAdminState::Quarantined, pb::QuarantineCause::ProbeFailed)
    );
    assert!(
        node.admin_reason
            .starts_with("probe render failed (1 in a row; next probe in 800ms): machine error: After Effects crashed"),
        "{}",
        node.admin_reason
    );
    let quarantines = o.events("flatrender.events.v1.NodeQuarantined").await;
    assert_eq!(quarantines.len(), 2);
    let event = ev::NodeQuarantined::decode(quarantines[1].as_slice()).unwrap();
    assert_eq!(event.cause(), pb::QuarantineCause::ProbeFailed);
    assert!(event.by_user_id.is_empty());
    assert!(o.events("flatrender.events.v1.NodeReleased").await.is_empty());

    // A later probe (after twice the delay) passes.
    let second = next_probe(&a).await;
    assert_ne!(second.task_id, first.task_id);
    let spaced: bool = sqlx::query_scalar(
        "SELECT s.created_at >= f.finished_at + make_interval(secs => $3)
           FROM render.frame_jobs f, render.frame_jobs s WHERE f.id = $1 AND s.id = $2",
    )
    .bind(first.task_id.parse::<Uuid>().unwrap())
    .bind(second.task_id.parse::<Uuid>().unwrap())
    .bind((AFTER * 2).as_secs_f64())
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert!(spaced, "the next probe waited twice the delay");
    a.send(accepted(&second));
    a.send(result(&second, pb::TaskOutcome::Success));
    o.until("the node is released", &format!("SELECT state = 'online' FROM render.nodes WHERE id = '{id}'")).await;
    let (cause, failures): (Option<String>, i32) =
        sqlx::query_as("SELECT quarantine_cause, probe_failures FROM render.nodes WHERE id = $1")
            .bind(id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((cause, failures), (None, 0));
}

#[tokio::test]
async fn a_lost_probe_is_no_verdict_and_is_sent_again() {
    let o = start().await;
    let mut a = o.agent(manual(1)).await;
    a.welcome().await;
    let identity = a.identity.clone();
    crash_three_times(&o, &a).await;
    let first = next_probe(&a).await;
    a.disconnect();
    o.until(
        "the probe's lease is lost",
        &format!(
            "SELECT state = 'failed' AND error_code = 'lease_lost' FROM render.frame_jobs WHERE id = '{}'",
            first.task_id
        ),
    )
    .await;
    let (state, cause, failures): (String, Option<String>, i32) =
        sqlx::query_as("SELECT state, quarantine_cause, probe_failures FROM render.nodes WHERE id = $1")
            .bind(identity.node_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), cause.as_deref(), failures), ("quarantined", Some("crashes"), 0));
    assert!(o.events("flatrender.events.v1.NodeQuarantined").await.len() == 1, "no PROBE_FAILED");

    let b = SimAgent::connect(&o, identity, manual(1)).await;
    let second = next_probe(&b).await;
    assert_ne!(second.task_id, first.task_id);
}

#[tokio::test]
async fn nothing_is_probed_without_a_template_or_after_an_operators_quarantine() {
    let o = Orchestrator::start_with(|s| probing(s, false)).await;
    record_template(&o).await;
    let mut admin = o.node_admin(Role::PlatformAdmin);
    let a = o.agent(manual(1)).await;
    a.welcome().await;
    let id = a.identity.node_id;
    crash_three_times(&o, &a).await;
    o.until("the probe is due", &format!("SELECT probe_due_at <= now() FROM render.nodes WHERE id = '{id}'")).await;

    // Due, online, free, but no template: no probe.
    let mut settings = o.settings.clone();
    let without = State::new(o.pool().clone(), settings.clone());
    assert!(flatrender_render::queue::probes::schedule(&without).await.unwrap().is_empty());
    probing(&mut settings, true);
    settings.probes.enabled = false;
    let off = State::new(o.pool().clone(), settings.clone());
    assert!(flatrender_render::queue::probes::schedule(&off).await.unwrap().is_empty(), "probes turned off");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'probe'").await, 0);

    // With one, the same node would get its probe (so the above means something) ...
    settings.probes.enabled = true;
    let with = State::new(o.pool().clone(), settings);
    assert_eq!(flatrender_render::queue::probes::schedule(&with).await.unwrap(), [id]);
    assert!(flatrender_render::queue::probes::schedule(&with).await.unwrap().is_empty(), "one open probe per node");
    let probe = next_probe(&a).await;

    // ... but an operator who quarantines it takes it over: no further probes, and releasing
    // it drops a probe still queued.
    let request =
        pb::QuarantineNodeRequest { node_id: id.to_string(), reason: "keep it out".into(), cancel_running: true };
    admin.quarantine_node(request).await.unwrap();
    o.until(
        "the probe ended",
        &format!("SELECT state = 'failed' FROM render.frame_jobs WHERE id = '{}'", probe.task_id),
    )
    .await;
    sqlx::query("UPDATE render.nodes SET probe_due_at = now() WHERE id = $1").bind(id).execute(o.pool()).await.unwrap();
    assert!(flatrender_render::queue::probes::schedule(&with).await.unwrap().is_empty(), "an operator's quarantine");
    let cause: Option<String> = sqlx::query_scalar("SELECT quarantine_cause FROM render.nodes WHERE id = $1")
        .bind(id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(cause.as_deref(), Some("operator"));
}
