//! Lost nodes: a stream gone for the grace period, heartbeats missed, a dead replica. Their
//! tasks go back to the queue with a new epoch, and whatever the old holder sends later is
//! fenced off.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use support::agent::{accepted, frame_report, result};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, SimAgent, seed_job};
use uuid::Uuid;

use agent_pb::RejectReason;

fn held(task: &agent_pb::AssignTask, result_pending: bool) -> agent_pb::HeldTask {
    agent_pb::HeldTask {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        kind: task.kind,
        phase: pb::TaskPhase::Rendering as i32,
        result_pending,
    }
}

#[tokio::test]
async fn a_chunk_of_a_lost_stream_is_reassigned_and_its_late_result_fenced() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;
    let mut lost = SimAgent::connect(&o, identity.clone(), spec.clone()).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = lost.next_assign().await;
    assert_eq!(task.lease_epoch, 1);
    lost.send(accepted(&task));
    lost.send(frame_report(&task, &[0, 1, 2]));
    let heir = o.agent(AgentSpec::default()).await;
    heir.welcome().await;

    // The stream dies mid-chunk; after the grace period the chunk goes to the other node.
    lost.disconnect();
    let cut = Instant::now();
    let again = heir.next_assign().await;
    let waited = cut.elapsed();
    assert_eq!(again.task_id, task.task_id);
    assert_eq!((again.lease_epoch, again.attempt), (2, 2), "a new epoch");
    let grace = o.settings.reconnect_grace;
    assert!(waited >= grace - Duration::from_millis(100), "reassigned only after the grace period ({waited:?})");
    assert!(waited < grace + Duration::from_secs(5), "reassigned soon after the grace period ({waited:?})");

    // The old node comes back still holding its finished chunk: its lease is gone, and its late
    // result and frames are refused.
    let back = AgentSpec { held: vec![held(&task, true)], ..spec };
    let late = SimAgent::connect(&o, identity, back).await;
    late.welcome().await;
    let cancel = late.cancel_of(&task.task_id).await;
    assert_eq!((cancel.reason(), cancel.lease_epoch), (agent_pb::CancelReason::LeaseLost, 1));
    let seq = late.send(frame_report(&task, &[3]));
    assert_eq!(late.reject_of(seq).await.reason(), RejectReason::StaleEpoch);
    let seq = late.send(result(&task, pb::TaskOutcome::Success));
    let reject = late.reject_of(seq).await;
    assert_eq!(reject.reason(), RejectReason::StaleEpoch);
    assert_eq!(reject.task_id, task.task_id);

    // The heir's work is what counts.
    o.until(
        "the chunk is done",
        &format!("SELECT state = 'done' FROM render.frame_jobs WHERE id = '{}'", task.task_id),
    )
    .await;
    let epochs: Vec<i64> =
        sqlx::query_scalar("SELECT DISTINCT lease_epoch FROM render.frame_results WHERE frame_job_id = $1")
            .bind(Uuid::parse_str(&task.task_id).unwrap())
            .fetch_all(o.pool())
            .await
            .unwrap();
    assert_eq!(epochs, [2], "only frames of the current lease are kept");
    let outcomes: Vec<(i32, i64, Option<String>)> = sqlx::query_as(
        "SELECT attempt, lease_epoch, outcome FROM render.frame_job_attempts WHERE frame_job_id = $1 ORDER BY attempt",
    )
    .bind(Uuid::parse_str(&task.task_id).unwrap())
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(outcomes, [(1, 1, Some("lease_lost".into())), (2, 2, Some("success".into()))]);
    let offline = o.events("flatrender.events.v1.NodeOffline").await;
    let event = ev::NodeOffline::decode(offline[0].as_slice()).unwrap();
    assert_eq!((event.reason(), event.requeued_tasks), (ev::NodeOfflineReason::StreamLost, 1));
    assert_eq!(job.chunks, [Uuid::parse_str(&task.task_id).unwrap()]);
}

#[tokio::test]
async fn a_node_that_stops_heartbeating_loses_its_tasks() {
    let o = Orchestrator::start().await;
    let silent = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = silent.next_assign().await;
    silent.set_heartbeats(false);
    let heir = o.agent(AgentSpec::default()).await;
    let cancel = silent.cancel_of(&task.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::LeaseLost);
    let again = heir.next_assign().await;
    assert_eq!((again.task_id.as_str(), again.lease_epoch), (task.task_id.as_str(), 2));
    // The silent node's stream stays up; it just got no more work.
    assert_eq!(silent.assigns().len(), 1);
}

#[tokio::test]
async fn a_dead_replicas_nodes_lose_their_tasks_to_a_live_one() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec::default();
    let ghost_node = o.enroll(&spec).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let chunk = job.chunks[0];
    // A replica that died holding the node and a lease of the chunk (its row went stale).
    let mut tx = o.pool().begin().await.unwrap();
    sqlx::query(
        "INSERT INTO render.orchestrators (id, started_at, heartbeat_at) VALUES ('ghost', now() - interval '1 hour', now() - interval '1 hour')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE render.nodes SET orchestrator_id = 'ghost', state = 'online', connection_epoch = 5, connected_at = now()
          WHERE id = $1",
    )
    .bind(ghost_node.node_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE render.frame_jobs SET state = 'running', node_id = $2, lease_epoch = 1, attempts = 1, leased_at = now(),
                lease_expires_at = now() + interval '1 hour'
          WHERE id = $1",
    )
    .bind(chunk)
    .bind(ghost_node.node_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO render.frame_job_attempts (tenant_id, frame_job_id, job_id, attempt, lease_epoch, node_id, node_name)
         VALUES ($1, $2, $3, 1, 1, $4, $5)",
    )
    .bind(job.tenant)
    .bind(chunk)
    .bind(job.job_id)
    .bind(ghost_node.node_id)
    .bind(&ghost_node.name)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let heir = o.agent(AgentSpec::default()).await;
    let task = heir.next_assign().await;
    assert_eq!((task.task_id, task.lease_epoch), (chunk.to_string(), 2));
    let (state, holder, epoch): (String, Option<String>, i64) =
        sqlx::query_as("SELECT state, orchestrator_id, connection_epoch FROM render.nodes WHERE id = $1")
            .bind(ghost_node.node_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), holder, epoch), ("offline", None, 6), "fenced: the dead replica cannot act for it");
}

#[tokio::test]
async fn a_live_replicas_nodes_are_left_alone() {
    let a = Orchestrator::start().await;
    let b = a.replica(|_| {}).await;
    let worker = a.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(a.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = worker.next_assign().await;
    // Long past the dead-replica threshold and the grace period, replica b has scanned many
    // times; the lease on replica a's node stands.
    let waiting = b.settings.replica_dead_after() * 4;
    let started = Instant::now();
    while started.elapsed() < waiting {
        worker.renewal().await;
    }
    let (state, epoch): (String, i64) =
        sqlx::query_as("SELECT state, lease_epoch FROM render.frame_jobs WHERE id = $1::uuid")
            .bind(&task.task_id)
            .fetch_one(a.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), epoch), ("running", 1));
    let holder: Option<String> = sqlx::query_scalar("SELECT orchestrator_id FROM render.nodes WHERE id = $1")
        .bind(worker.identity.node_id)
        .fetch_one(a.pool())
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some(a.settings.orchestrator_id.as_str()));
}
