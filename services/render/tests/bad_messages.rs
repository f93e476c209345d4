//! "Bad messages never end the stream": each is answered with a Reject naming its seq, and the
//! stream keeps working afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use support::agent::{accepted, frame_report, frames_of, ok_frame, result};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, SimAgent, seed_job};
use uuid::Uuid;

use agent_pb::RejectReason;
use agent_pb::session_request::Payload as In;

fn update(task: &str, epoch: u64) -> In {
    In::TaskUpdate(agent_pb::TaskUpdate {
        task_id: task.into(),
        lease_epoch: epoch,
        phase: pb::TaskPhase::Rendering as i32,
        current_frame: 3,
        ..Default::default()
    })
}

#[tokio::test]
async fn bad_messages_are_rejected_and_the_stream_stays_up() {
    let o = Orchestrator::start().await;
    let spec = AgentSpec { hello: false, behaviour: Behaviour::Manual, ..AgentSpec::default() };
    let identity = o.enroll(&spec).await;
    let agent = SimAgent::connect(&o, identity.clone(), spec.clone()).await;

    // Before Hello: answered right after Welcome, which is always the first message.
    let early = agent.send(In::Health(agent_pb::Health::default()));
    agent.send(In::Hello(spec.hello(identity.node_id)));
    agent.welcome().await;
    assert_eq!(agent.reject_of(early).await.reason(), RejectReason::OutOfOrder);

    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    agent.send(accepted(&task));

    let unknown = Uuid::new_v4().to_string();
    let cases: Vec<(&str, In, RejectReason)> = vec![
        ("an unknown task", update(&unknown, 1), RejectReason::UnknownTask),
        ("a wrong epoch", update(&task.task_id, task.lease_epoch + 6), RejectReason::StaleEpoch),
        (
            "frames under a wrong epoch",
            frame_report(&agent_pb::AssignTask { lease_epoch: 9, ..task.clone() }, &[0]),
            RejectReason::StaleEpoch,
        ),
        (
            "a result under a wrong epoch",
            result(&agent_pb::AssignTask { lease_epoch: 9, ..task.clone() }, pb::TaskOutcome::Success),
            RejectReason::StaleEpoch,
        ),
        ("a malformed task id", update("not-a-uuid", 1), RejectReason::Malformed),
        ("a frame outside the task", frame_report(&task, &[77]), RejectReason::Malformed),
        ("an agent-only outcome", result(&task, pb::TaskOutcome::LeaseLost), RejectReason::Malformed),
        ("a second Hello", In::Hello(spec.hello(identity.node_id)), RejectReason::OutOfOrder),
        (
            "an oversized envelope",
            In::TaskUpdate(agent_pb::TaskUpdate {
                task_id: task.task_id.clone(),
                lease_epoch: task.lease_epoch,
                detail: "x".repeat(5 << 20),
                ..Default::default()
            }),
            RejectReason::Oversized,
        ),
    ];
    for (name, message, reason) in cases {
        let seq = agent.send(message);
        let reject = agent.reject_of(seq).await;
        assert_eq!(reject.reason(), reason, "{name}: {}", reject.message);
    }

    // An unset payload (a newer variant) and a seq that does not increase.
    let seq = agent.last_seq() + 1;
    agent.send_raw(agent_pb::SessionRequest { seq, sent_at: None, payload: None });
    assert_eq!(agent.reject_of(seq).await.reason(), RejectReason::Unsupported);
    agent.send_raw(agent_pb::SessionRequest { seq, sent_at: None, payload: Some(In::Health(Default::default())) });
    let reject = agent.reject_of(seq).await;
    assert_eq!(reject.reason(), RejectReason::OutOfOrder);
    assert!(reject.message.contains("not greater"), "{}", reject.message);

    // A gap is only logged.
    let gap = agent.last_seq() + 5;
    agent.send_raw(agent_pb::SessionRequest { seq: gap, sent_at: None, payload: Some(update(&task.task_id, 1)) });

    // The stream is up and the lease intact: heartbeats renew it and the task completes.
    agent.heartbeat();
    let renewal = agent.renewal().await;
    assert_eq!(renewal.leases.len(), 1);
    assert_eq!(renewal.leases[0].task_id, task.task_id);
    agent.send(frame_report(&task, &frames_of(&task)));
    let seq = agent.send(result(&task, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    let state: String = sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1::uuid")
        .bind(&task.task_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(state, "done");
    // A resent result is a duplicate: acknowledged again, nothing changes.
    let seq = agent.send(result(&task, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_attempts").await, 1);
}

#[tokio::test]
async fn frames_that_name_no_upload_of_their_lease_are_rejected() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    agent.send(accepted(&task));
    let frames_report = |frames: Vec<agent_pb::FrameOutput>| {
        In::FrameReport(agent_pb::FrameReport {
            task_id: task.task_id.clone(),
            lease_epoch: task.lease_epoch,
            segment_index: 0,
            frames,
        })
    };

    let unknown = agent_pb::FrameOutput { file_id: Uuid::new_v4().to_string(), ..ok_frame(&task, 0) };
    let reject = agent.reject_of(agent.send(frames_report(vec![unknown]))).await;
    assert_eq!(reject.reason(), RejectReason::Malformed);
    assert!(reject.message.contains("frame 0: file_id") && reject.message.contains("not an upload"), "{reject:?}");
    // The agent uploaded frame 1, but reports other bytes for it.
    let altered = agent_pb::FrameOutput { sha256: "ab".repeat(32), ..ok_frame(&task, 1) };
    let reject = agent.reject_of(agent.send(frames_report(vec![altered]))).await;
    assert!(reject.message.contains("frame 1: checksum mismatch"), "{reject:?}");

    // A result with a missing frame goes the one-report way, and is checked there too.
    let In::TaskResult(mut partial) = result(&task, pb::TaskOutcome::Success) else { unreachable!() };
    partial.frames[0].file_id = Uuid::new_v4().to_string();
    partial.frames[4] =
        agent_pb::FrameOutput { frame: 4, status: agent_pb::FrameStatus::Missing as i32, ..Default::default() };
    let reject = agent.reject_of(agent.send(In::TaskResult(partial))).await;
    assert_eq!(reject.reason(), RejectReason::Malformed);
    assert!(reject.message.contains("frame 0: file_id"), "{reject:?}");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 0);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_attempts WHERE outcome IS NOT NULL").await, 0);

    // The frames as uploaded are taken.
    agent.ack_of(agent.send(result(&task, pb::TaskOutcome::Success))).await;
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 5);
}
