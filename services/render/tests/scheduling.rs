//! Placement over the real service: slots are never exceeded, draining nodes get nothing,
//! capabilities and cached templates decide where work goes, tenants share the farm, and a job
//! no node can take fails after a while (one waiting for busy nodes does not).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use support::agent::{frame_report, frames_of, result};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, SimAgent, seed_job, seed_snapshot};
use uuid::Uuid;

#[tokio::test]
async fn slots_are_never_exceeded() {
    let o = Orchestrator::start().await;
    let two = o.agent(AgentSpec { slots: 2, ..AgentSpec::default() }).await;
    let three = o.agent(AgentSpec { slots: 3, ..AgentSpec::default() }).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 59)], chunk_size: 1, ..JobSeed::default() })
            .await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    for (agent, slots) in [(&two, 2), (&three, 3)] {
        assert!(agent.max_held() <= slots, "held {} with {slots} slots", agent.max_held());
        assert_eq!(agent.capacity_rejects(), 0, "never offered more than its slots");
    }
    assert_eq!(two.assigns().len() + three.assigns().len(), 60);

    // A node that does not finish holds exactly its slots, no more.
    let o = Orchestrator::start().await;
    let stuck = o.agent(AgentSpec { slots: 2, behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], chunk_size: 1, ..JobSeed::default() }).await;
    stuck.next_assign().await;
    stuck.next_assign().await;
    // Several heartbeats (and dispatcher polls) later it still holds two.
    for _ in 0..3 {
        stuck.renewal().await;
    }
    assert_eq!(stuck.assigns().len(), 2);
    assert_eq!(stuck.capacity_rejects(), 0);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE state IN ('leased', 'running')").await, 2);
}

#[tokio::test]
async fn draining_nodes_get_nothing() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { slots: 4, ..AgentSpec::default() };
    let drained = o.enroll(&spec).await;
    sqlx::query("UPDATE render.nodes SET state = 'draining', state_reason = 'maintenance' WHERE id = $1")
        .bind(drained.node_id)
        .execute(o.pool())
        .await
        .unwrap();
    let operator_drained = SimAgent::connect(&o, drained, spec.clone()).await;
    assert_eq!(operator_drained.welcome().await.admin_state(), pb::NodeAdminState::Draining);
    let self_drained = o.agent(AgentSpec { draining: true, ..spec.clone() }).await;
    let worker = o.agent(AgentSpec::default()).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 19)], chunk_size: 2, ..JobSeed::default() })
            .await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    assert_eq!(worker.assigns().len(), 10);
    assert!(operator_drained.assigns().is_empty());
    assert!(self_drained.assigns().is_empty());
}

#[tokio::test]
async fn work_goes_where_it_can_run_and_its_template_is() {
    let o = Orchestrator::start().await;
    let plain = o.agent(AgentSpec { slots: 4, ..AgentSpec::default() }).await;
    let old_gpu = o.agent(AgentSpec { slots: 4, tags: vec!["gpu".into()], ..AgentSpec::default() }).await;
    let new_gpu = o
        .agent(AgentSpec {
            slots: 4,
            tags: vec!["gpu".into()],
            ae_versions: vec!["25.1".into()],
            ..AgentSpec::default()
        })
        .await;
    let job = seed_job(
        o.pool(),
        JobSeed {
            segments: vec![("Main".into(), 0, 19)],
            chunk_size: 2,
            required_tags: vec!["gpu".into()],
            min_ae_version: Some("25.0".into()),
            ..JobSeed::default()
        },
    )
    .await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    assert_eq!(new_gpu.assigns().len(), 10);
    assert!(plain.assigns().is_empty() && old_gpu.assigns().is_empty());

    // Two idle nodes alike but for the cache: the one holding the template gets the chunk.
    let template = [0x77; 32];
    let cold = o.agent(AgentSpec { slots: 4, behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let warm = o.agent(AgentSpec { behaviour: Behaviour::Hang, cache: vec![template], ..AgentSpec::default() }).await;
    cold.welcome().await;
    warm.welcome().await;
    seed_job(
        o.pool(),
        JobSeed { template_sha256: template, segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() },
    )
    .await;
    let task = warm.next_assign().await;
    assert_eq!(task.lease_epoch, 1);
    assert!(cold.assigns().is_empty());
}

#[tokio::test]
async fn a_big_job_does_not_starve_another_tenant() {
    let o = Orchestrator::start().await;
    let big =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 199)], chunk_size: 10, ..JobSeed::default() })
            .await;
    let small =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], chunk_size: 10, ..JobSeed::default() })
            .await;
    let agent = o.agent(AgentSpec { slots: 4, behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let small_chunks: HashSet<String> = small.chunks.iter().map(Uuid::to_string).collect();
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(agent.next_assign().await);
    }
    let of_small = first.iter().filter(|t| small_chunks.contains(&t.task_id)).count();
    assert_eq!(of_small, 2, "the farm's four slots are shared two and two, though the big job came first");

    // A slot of the small tenant frees: its next chunk comes before the big job's 18 waiting.
    let done = first.iter().find(|t| small_chunks.contains(&t.task_id)).unwrap();
    agent.drop_task(&done.task_id);
    agent.send(frame_report(done, &frames_of(done)));
    let seq = agent.send(result(done, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    let next = agent.next_assign().await;
    assert!(small_chunks.contains(&next.task_id), "the small tenant's last chunk is next");
    assert_eq!(big.chunks.len(), 20);
}

#[tokio::test]
async fn a_job_no_node_can_take_fails_after_the_timeout_while_one_waiting_for_busy_nodes_waits() {
    let o = Orchestrator::start_with(|s| s.no_eligible_node_timeout = std::time::Duration::from_millis(300)).await;
    // The farm's one node is busy for good.
    let busy = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    busy.next_assign().await;
    let waiting = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let unplaceable = seed_job(
        o.pool(),
        JobSeed { segments: vec![("Main".into(), 0, 9)], min_ae_version: Some("99.0".into()), ..JobSeed::default() },
    )
    .await;

    o.until(
        "the job no node can take fails",
        &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", unplaceable.job_id),
    )
    .await;
    let (code, message): (String, String) =
        sqlx::query_as("SELECT error_code, error_message FROM render.render_jobs WHERE id = $1")
            .bind(unplaceable.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(code, "no_eligible_node");
    assert_eq!(message, "no render node can take this render: no node has After Effects 99.0 or later");
    let failed = o.events("flatrender.events.v1.RenderJobFailed").await;
    let event = ev::RenderJobFailed::decode(failed[0].as_slice()).unwrap();
    assert_eq!(event.render_id, unplaceable.job_id.to_string());
    assert_eq!(event.error.unwrap().code(), pb::ErrorCode::NoEligibleNode);
    assert_eq!(failed.len(), 1);

    // The job waiting for the busy node was checked as long, and is neither failed nor marked.
    let (state, marked): (String, bool) =
        sqlx::query_as("SELECT state, unplaceable_since IS NOT NULL FROM render.render_jobs WHERE id = $1")
            .bind(waiting.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), marked), ("queued", false));
}

#[tokio::test]
async fn a_snapshot_no_node_can_take_fails_after_the_timeout_while_one_an_offline_node_can_take_waits() {
    let o = Orchestrator::start_with(|s| s.no_eligible_node_timeout = std::time::Duration::from_millis(300)).await;
    // The farm's one node is enrolled but offline: it may come back, so it counts.
    o.enroll(&AgentSpec::default()).await;
    let tenant = Uuid::new_v4();
    let (waiting, _) = seed_snapshot(o.pool(), tenant, 1).await;
    let (unplaceable, task) = seed_snapshot(o.pool(), tenant, 2).await;
    sqlx::query("UPDATE render.frame_jobs SET min_ae_version = '99.0' WHERE id = $1")
        .bind(task)
        .execute(o.pool())
        .await
        .unwrap();

    o.until(
        "the snapshot no node can take fails",
        &format!("SELECT state = 'failed' FROM render.snapshots WHERE id = '{unplaceable}'"),
    )
    .await;
    let (code, message): (String, String) =
        sqlx::query_as("SELECT error_code, error_message FROM render.snapshots WHERE id = $1")
            .bind(unplaceable)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(code, "no_eligible_node");
    assert_eq!(message, "no render node can take this snapshot: no node has After Effects 99.0 or later");
    let task_state: String = sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1")
        .bind(task)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(task_state, "failed");
    assert_eq!(o.events("flatrender.events.v1.SnapshotFailed").await.len(), 1);

    // The snapshot the offline node could take was checked as long, and is neither failed nor
    // marked.
    let (state, marked): (String, bool) =
        sqlx::query_as("SELECT state, unplaceable_since IS NOT NULL FROM render.snapshots WHERE id = $1")
            .bind(waiting)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), marked), ("queued", false));
}
