//! Two orchestrator replicas on one database, each with its own agents, racing over thousands
//! of chunks: no chunk is ever leased twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{AgentSpec, JobSeed, Orchestrator, seed_job};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_never_assign_a_chunk_twice() {
    let a = Orchestrator::start_with(|s| s.dispatch_poll_interval = Duration::from_millis(100)).await;
    let b = a.replica(|s| s.dispatch_poll_interval = Duration::from_millis(100)).await;
    let mut agents = Vec::new();
    for replica in [&a, &b] {
        for _ in 0..3 {
            agents.push(replica.agent(AgentSpec { slots: 4, ..AgentSpec::default() }).await);
        }
    }
    let jobs = [
        seed_job(a.pool(), JobSeed { segments: vec![("Main".into(), 0, 1499)], chunk_size: 1, ..JobSeed::default() })
            .await,
        seed_job(a.pool(), JobSeed { segments: vec![("Other".into(), 0, 999)], chunk_size: 2, ..JobSeed::default() })
            .await,
    ];
    let chunks: usize = jobs.iter().map(|j| j.chunks.len()).sum();
    assert_eq!(chunks, 2000);
    for job in &jobs {
        a.until_within(
            "every chunk is done",
            &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
            Duration::from_secs(300),
        )
        .await;
    }

    // Each chunk was leased exactly once: one attempt, epoch 1, one attempt row, its frames
    // accepted under that epoch.
    assert_eq!(
        a.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'render' AND attempts = 1 AND lease_epoch = 1")
            .await,
        2000
    );
    assert_eq!(a.count("SELECT count(*) FROM render.frame_job_attempts").await, 2000);
    assert_eq!(
        a.count("SELECT count(DISTINCT frame_job_id) FROM render.frame_job_attempts WHERE outcome = 'success'").await,
        2000
    );
    assert_eq!(a.count("SELECT count(*) FROM render.frame_results WHERE lease_epoch = 1").await, 2500);
    let assigned: usize = agents.iter().map(|agent| agent.assigns().len()).sum();
    assert_eq!(assigned, 2000, "no agent received a chunk twice");
    for agent in &agents {
        assert!(agent.rejects().is_empty(), "{}: {:?}", agent.identity.name, agent.rejects());
        assert!(agent.max_held() <= 4);
    }
    let per_replica = |from: usize| agents[from..from + 3].iter().map(|x| x.assigns().len()).sum::<usize>();
    assert!(per_replica(0) > 0 && per_replica(3) > 0, "both replicas dispatched");
    drop(b);
}

#[tokio::test]
async fn operator_cancels_reach_agents_on_another_replica_with_their_reason() {
    use flatrender_kit::auth::Role;
    use flatrender_proto::flatrender::agent::v1 as agent_pb;
    use flatrender_proto::flatrender::render::v1 as pb;
    use support::Behaviour;

    let a = Orchestrator::start().await;
    let b = a.replica(|_| {}).await;
    // Each agent is held by replica B; the operator's calls go to replica A.
    let quarantined = b.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let deleted = b.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let job = seed_job(a.pool(), JobSeed { segments: vec![("Main".into(), 0, 19)], ..JobSeed::default() }).await;
    let (first, second) = (quarantined.next_assign().await, deleted.next_assign().await);
    let mut admin = a.node_admin(Role::PlatformAdmin);

    let node_id = quarantined.identity.node_id.to_string();
    admin
        .quarantine_node(pb::QuarantineNodeRequest { node_id, reason: "bad RAM".into(), cancel_running: true })
        .await
        .unwrap();
    let cancel = quarantined.cancel_of(&first.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::Operator, "{cancel:?}");

    let node_id = deleted.identity.node_id.to_string();
    admin.delete_node(pb::DeleteNodeRequest { node_id, force: true }).await.unwrap();
    let cancel = deleted.cancel_of(&second.task_id).await;
    assert_eq!(cancel.reason(), agent_pb::CancelReason::Operator, "{cancel:?}");
    let (code, _) = deleted.ended().await;
    assert_eq!(code, Some(tonic::Code::Unauthenticated));

    // The job requeued through replica A while an agent on B runs one of its chunks and reports
    // on it at once: its stale report resyncs the node itself, perhaps before the notification
    // arrives; either way the reason comes from the database.
    let requeued = b.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let third = requeued.next_assign().await;
    let request = pb::RequeueRenderRequest {
        render_id: job.job_id.to_string(),
        reason: "stuck".into(),
        clear_excluded_nodes: false,
    };
    a.render_admin(Role::PlatformAdmin).requeue_render(request).await.unwrap();
    requeued.send(support::agent::accepted(&third));
    let cancel = requeued.cancel_of(&third.task_id).await;
    assert_eq!(
        (cancel.reason(), cancel.lease_epoch),
        (agent_pb::CancelReason::Operator, third.lease_epoch),
        "{cancel:?}"
    );
}
