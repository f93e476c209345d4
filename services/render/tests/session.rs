//! The Session stream's rules: Hello first, Welcome, one stream per node (supersession on one
//! replica and across replicas), held tasks settled, Goodbye, commands reaching the agent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::model::SceneData;
use prost::Message as _;
use support::agent::{accepted, hex, result};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, SimAgent, seed_job, text_edit};
use tonic::Code;
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

#[tokio::test]
async fn welcome_names_the_session() {
    let o = Orchestrator::start().await;
    let token = o.join_token(&["eu"]).await;
    let spec = AgentSpec { tags: vec!["gpu".into()], cache: vec![[1; 32], [2; 32]], ..AgentSpec::default() };
    let enrolled = o.agent_client().enroll(spec.enroll_request(&token)).await.unwrap().into_inner();
    let identity = support::Identity {
        node_id: enrolled.node_id.parse().unwrap(),
        credential: enrolled.node_credential,
        name: enrolled.name,
    };
    let agent = SimAgent::connect(&o, identity.clone(), spec).await;
    let welcome = agent.welcome().await;
    assert_eq!(welcome.protocol_version(), agent_pb::ProtocolVersion::V1);
    assert_eq!(welcome.node_id, identity.node_id.to_string());
    assert_eq!(welcome.node_name, identity.name);
    assert_eq!(welcome.heartbeat_interval.unwrap().seconds, 2);
    assert_eq!(welcome.lease_ttl.unwrap().seconds, 10);
    assert_eq!(welcome.reconnect_grace.unwrap().nanos, 500_000_000);
    assert!(welcome.server_time.is_some());
    assert_eq!(welcome.admin_state(), pb::NodeAdminState::Active);
    assert_eq!(welcome.tags, ["eu", "gpu"], "the agent's tags and its token's");
    assert_eq!(welcome.orchestrator_id, o.settings.orchestrator_id);
    assert_eq!(welcome.max_message_bytes, 4 << 20);
    assert_eq!(welcome.connection_epoch, 1);

    let (state, holder, epoch): (String, Option<String>, i64) =
        sqlx::query_as("SELECT state, orchestrator_id, connection_epoch FROM render.nodes WHERE id = $1")
            .bind(identity.node_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), holder.as_deref(), epoch), ("online", Some(o.settings.orchestrator_id.as_str()), 1));
    let cached: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT template_sha256 FROM render.node_template_cache WHERE node_id = $1 ORDER BY template_sha256",
    )
    .bind(identity.node_id)
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(cached, [vec![1; 32], vec![2; 32]], "Hello's cache list");
    let online = o.events("flatrender.events.v1.NodeOnline").await;
    assert_eq!(ev::NodeOnline::decode(online[0].as_slice()).unwrap().node_id, identity.node_id.to_string());

    // Health is answered by a LeaseRenewal; cache changes apply as deltas.
    agent.heartbeat();
    agent.renewal().await;
    let change = agent.send(In::CacheChange(agent_pb::CacheChange {
        changes: vec![
            agent_pb::CacheChangeEntry {
                kind: agent_pb::CacheChangeKind::EvictedLru as i32,
                sha256: hex(&[1; 32]),
                size_bytes: 1,
            },
            agent_pb::CacheChangeEntry {
                kind: agent_pb::CacheChangeKind::Added as i32,
                sha256: hex(&[3; 32]),
                size_bytes: 7,
            },
        ],
        cache_used_bytes: 8,
    }));
    agent.heartbeat();
    agent.renewal().await;
    assert!(agent.rejects().iter().all(|r| r.seq != change), "a valid CacheChange is not refused");
    let cached: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT template_sha256 FROM render.node_template_cache WHERE node_id = $1 ORDER BY template_sha256",
    )
    .bind(identity.node_id)
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(cached, [vec![2; 32], vec![3; 32]]);
}

#[tokio::test]
async fn hello_must_come_first_and_in_time() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { hello: false, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;

    let silent = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    let started = std::time::Instant::now();
    let (code, message) = silent.ended().await;
    assert_eq!(code, Some(Code::FailedPrecondition), "{message}");
    assert!(started.elapsed() >= o.settings.hello_timeout - std::time::Duration::from_millis(200));

    let impostor = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    impostor.send(In::Hello(spec.hello(Uuid::new_v4())));
    assert_eq!(impostor.ended().await.0, Some(Code::PermissionDenied));

    let future = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    let seq = future.send(In::Hello(agent_pb::Hello { protocol_version: 2, ..spec.hello(identity.node_id) }));
    assert_eq!(future.reject_of(seq).await.reason(), agent_pb::RejectReason::Unsupported);
    assert_eq!(future.ended().await.0, Some(Code::FailedPrecondition));

    // A malformed Hello is refused; a corrected one is welcome.
    let careless = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    let seq = careless.send(In::Hello(agent_pb::Hello { slots: 0, ..spec.hello(identity.node_id) }));
    let reject = careless.reject_of(seq).await;
    assert_eq!(reject.reason(), agent_pb::RejectReason::Malformed);
    assert!(reject.message.starts_with("hello.slots"), "{}", reject.message);
    careless.send(In::Hello(spec.hello(identity.node_id)));
    assert_eq!(careless.welcome().await.node_id, identity.node_id.to_string());
}

#[tokio::test]
async fn a_newer_stream_supersedes_the_older_on_any_replica() {
    let a = Orchestrator::start().await;
    let b = a.replica(|_| {}).await;
    let spec = AgentSpec::default();
    let identity = a.enroll(&spec).await;

    let first = SimAgent::connect(&a, identity.clone(), spec.clone()).await;
    assert_eq!(first.welcome().await.connection_epoch, 1);
    let second = SimAgent::connect(&a, identity.clone(), spec.clone()).await;
    assert_eq!(second.welcome().await.connection_epoch, 2);
    assert_eq!(first.ended().await, (Some(Code::Aborted), "superseded".to_owned()));

    let third = SimAgent::connect(&b, identity.clone(), spec.clone()).await;
    let welcome = third.welcome().await;
    assert_eq!((welcome.connection_epoch, welcome.orchestrator_id.as_str()), (3, b.settings.orchestrator_id.as_str()));
    assert_eq!(second.ended().await, (Some(Code::Aborted), "superseded".to_owned()));

    // The superseded streams' grace timers leave the node to its holder: heartbeats go on for
    // longer than the grace period and the node stays online on replica b.
    for _ in 0..3 {
        third.renewal().await;
    }
    let (state, holder): (String, Option<String>) =
        sqlx::query_as("SELECT state, orchestrator_id FROM render.nodes WHERE id = $1")
            .bind(identity.node_id)
            .fetch_one(a.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), holder.as_deref()), ("online", Some(b.settings.orchestrator_id.as_str())));
    assert_eq!(a.events("flatrender.events.v1.NodeOnline").await.len(), 1, "reconnects are no events");
    assert!(a.events("flatrender.events.v1.NodeOffline").await.is_empty());
}

#[tokio::test]
async fn held_tasks_are_settled_after_welcome() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;
    let mut agent = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    assert_eq!((task.lease_epoch, task.attempt), (1, 1));
    agent.send(accepted(&task));
    agent.disconnect();

    // Back within the grace period, holding the task and one it never had.
    let stranger = agent_pb::HeldTask { task_id: Uuid::new_v4().to_string(), lease_epoch: 3, ..Default::default() };
    let held = agent_pb::HeldTask {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        kind: pb::TaskKind::RenderChunk as i32,
        phase: pb::TaskPhase::Rendering as i32,
        result_pending: false,
    };
    let back = AgentSpec { held: vec![held, stranger.clone()], ..spec };
    let agent = SimAgent::connect(&o, identity, back).await;
    assert_eq!(agent.welcome().await.connection_epoch, 2);
    let renewal = agent.renewal().await;
    assert_eq!(renewal.leases.len(), 1);
    assert_eq!((renewal.leases[0].task_id.as_str(), renewal.leases[0].lease_epoch), (task.task_id.as_str(), 1));
    let cancel = agent.cancel_of(&stranger.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::LeaseLost);

    // The lease survived: finishing it is acknowledged and counts as the only attempt.
    agent.send(support::agent::frame_report(&task, &(0..10).collect::<Vec<_>>()));
    let seq = agent.send(result(&task, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    let (state, attempts, epoch): (String, i32, i64) =
        sqlx::query_as("SELECT state, attempts, lease_epoch FROM render.frame_jobs WHERE id = $1::uuid")
            .bind(&task.task_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts, epoch), ("done", 1, 1));
    assert_eq!(job.chunks.len(), 1);
}

#[tokio::test]
async fn goodbye_shutdown_gives_the_tasks_back_at_once() {
    let o = Orchestrator::start_with(|s| s.reconnect_grace = std::time::Duration::from_secs(60)).await;
    let leaving = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = leaving.next_assign().await;
    leaving.send(In::Goodbye(agent_pb::Goodbye {
        reason: agent_pb::GoodbyeReason::Shutdown as i32,
        message: "service stopped".into(),
    }));
    // Another node gets it long before the (one minute) grace period would end.
    let taker = o.agent(AgentSpec::default()).await;
    let again = taker.next_assign().await;
    assert_eq!((again.task_id.as_str(), again.lease_epoch), (task.task_id.as_str(), 2));
    let state: String = sqlx::query_scalar("SELECT state FROM render.nodes WHERE id = $1")
        .bind(leaving.identity.node_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(state, "offline");
    let offline = o.events("flatrender.events.v1.NodeOffline").await;
    let event = ev::NodeOffline::decode(offline[0].as_slice()).unwrap();
    assert_eq!((event.reason(), event.requeued_tasks), (ev::NodeOfflineReason::Shutdown, 1));
}

#[tokio::test]
async fn admin_states_and_commands_reach_the_agent() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec::default()).await;
    agent.welcome().await;
    let node = agent.identity.node_id;

    sqlx::query("UPDATE render.nodes SET state = 'draining', state_reason = 'maintenance' WHERE id = $1")
        .bind(node)
        .execute(o.pool())
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('render_nodes', $1::text)").bind(node.to_string()).execute(o.pool()).await.unwrap();
    let drain = agent
        .expect("Drain", |e| match e {
            support::AgentEvent::Drain(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert!(drain.enabled);
    assert_eq!(drain.reason, "maintenance");

    sqlx::query(
        "INSERT INTO render.node_commands (node_id, kind, payload)
         VALUES ($1, 'evict_template', jsonb_build_object('sha256', $2::text, 'reason', 'withdrawn'))",
    )
    .bind(node)
    .bind(hex(&[9; 32]))
    .execute(o.pool())
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('render_nodes', $1::text)").bind(node.to_string()).execute(o.pool()).await.unwrap();
    let evict = agent
        .expect("EvictTemplate", |e| match e {
            support::AgentEvent::Evict(x) => Some(x.clone()),
            _ => None,
        })
        .await;
    assert_eq!((evict.sha256, evict.reason.as_str()), (hex(&[9; 32]), "withdrawn"));
    o.until(
        "the command is marked delivered",
        "SELECT count(*) = 1 FROM render.node_commands WHERE delivered_at IS NOT NULL",
    )
    .await;

    sqlx::query("UPDATE render.nodes SET state = 'online', state_reason = NULL WHERE id = $1")
        .bind(node)
        .execute(o.pool())
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('render_nodes', $1::text)").bind(node.to_string()).execute(o.pool()).await.unwrap();
    let release = agent
        .expect("Drain released", |e| match e {
            support::AgentEvent::Drain(d) => Some(d.clone()),
            _ => None,
        })
        .await;
    assert!(!release.enabled);
}

fn scene_json(edits: Vec<pb::LayerEdit>, custom: serde_json::Value) -> serde_json::Value {
    let mut data =
        SceneData::from_pb("scene_data", Some(pb::SceneData { edits, custom_data: None })).unwrap().to_json();
    data["customData"] = custom;
    SceneData::from_json(&data).unwrap().to_json()
}

#[tokio::test]
async fn an_assignment_carries_the_merged_scene_data() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;
    let agent = SimAgent::connect(&o, identity, spec).await;
    agent.welcome().await;
    let seed = JobSeed {
        segments: vec![("Main".into(), 0, 9)],
        scene_data: scene_json(vec![text_edit("Title", "Hello")], serde_json::json!({"theme": "dark", "size": 1})),
        segment_scene_data: scene_json(vec![text_edit("Footer", "Bye")], serde_json::json!({"size": 2})),
        ..JobSeed::default()
    };
    seed_job(o.pool(), seed).await;

    let task = agent.next_assign().await;
    let Some(agent_pb::assign_task::Spec::Render(render)) = task.spec else { panic!("a render spec") };
    let data = render.scene_data.expect("scene data");
    let texts: Vec<String> = data
        .edits
        .iter()
        .map(|edit| match &edit.edit {
            Some(pb::layer_edit::Edit::Text(text)) => text.text.clone(),
            other => panic!("a text edit, not {other:?}"),
        })
        .collect();
    assert_eq!(texts, ["Hello", "Bye"], "the job's edits, then the segment's");
    let custom = SceneData::from_pb("scene_data", Some(data)).unwrap().custom_data().clone();
    assert_eq!(serde_json::Value::Object(custom), serde_json::json!({"theme": "dark", "size": 2.0}));
}
