//! The batched report writes (`queue::batch`) on real leases: each report of a mixed batch gets
//! the answer the one-report path would give, or is left to it (`None`) with nothing written.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use flatrender_render::queue::Fence;
use flatrender_render::queue::batch::{self, Frames, Outcome, Update};
use flatrender_render::queue::report::{Ended, Verdict};
use support::agent::{frames_of, ok_frame, record_frames};
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, SimAgent, seed_job};
use uuid::Uuid;

/// The fence of `task` as `agent`'s current stream claims it.
async fn fence(o: &Orchestrator, agent: &SimAgent, task: &agent_pb::AssignTask) -> Fence {
    let connection_epoch: i64 = sqlx::query_scalar("SELECT connection_epoch FROM render.nodes WHERE id = $1")
        .bind(agent.identity.node_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    Fence {
        task_id: task.task_id.parse().unwrap(),
        lease_epoch: task.lease_epoch as i64,
        node_id: agent.identity.node_id,
        connection_epoch,
    }
}

fn success(task: &agent_pb::AssignTask, frames: Vec<i32>) -> agent_pb::TaskResult {
    agent_pb::TaskResult {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        outcome: pb::TaskOutcome::Success as i32,
        exit_code: Some(0),
        log_tail: "Finished composition".into(),
        warnings: vec!["a warning".into()],
        frames: frames.into_iter().map(|f| ok_frame(task, f)).collect(),
        timings: Some(agent_pb::TaskTimings { total_ms: 700, ..Default::default() }),
        ..Default::default()
    }
}

async fn task_state(o: &Orchestrator, task: &agent_pb::AssignTask) -> String {
    sqlx::query_scalar("SELECT state FROM render.frame_jobs WHERE id = $1::uuid")
        .bind(&task.task_id)
        .fetch_one(o.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_mixed_batch_of_results_writes_only_what_matches_its_lease() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { slots: 4, behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 39)], ..JobSeed::default() }).await;
    let tasks =
        [agent.next_assign().await, agent.next_assign().await, agent.next_assign().await, agent.next_assign().await];
    let fences = [fence(&o, &agent, &tasks[0]).await, fence(&o, &agent, &tasks[1]).await];
    let fence_c = fence(&o, &agent, &tasks[2]).await;
    let fence_d = fence(&o, &agent, &tasks[3]).await;
    for task in &tasks {
        record_frames(o.pool(), task, &frames_of(task)).await;
    }

    let whole = |t: &agent_pb::AssignTask| success(t, frames_of(t));
    let mut short = whole(&tasks[1]);
    short.frames.pop();
    let items = vec![
        Outcome { fence: fences[0], result: whole(&tasks[0]) },
        // A frame short: the one-report path decides (a repair, or a rerun).
        Outcome { fence: fences[1], result: short },
        // Another stream's claim: superseded.
        Outcome {
            fence: Fence { connection_epoch: fence_c.connection_epoch - 1, ..fence_c },
            result: whole(&tasks[2]),
        },
        // A stale epoch: its reason is the one-report path's to give.
        Outcome { fence: Fence { lease_epoch: fence_d.lease_epoch + 1, ..fence_d }, result: whole(&tasks[3]) },
        // The same task twice in one batch: only the first is written here.
        Outcome { fence: fences[0], result: whole(&tasks[0]) },
    ];
    let answers = batch::task_results(o.pool(), &items).await.unwrap();
    assert_eq!(
        answers,
        vec![Some((Verdict::Accepted, Some(Ended::Done))), None, Some((Verdict::Superseded, None)), None, None]
    );

    assert_eq!(task_state(&o, &tasks[0]).await, "done");
    for task in &tasks[1..] {
        assert_eq!(task_state(&o, task).await, "leased", "nothing written for {}", task.task_id);
    }
    let (outcome, render_ms, warnings, tail): (String, i64, Vec<String>, String) = sqlx::query_as(
        "SELECT outcome, render_ms, warnings, log_tail FROM render.frame_job_attempts WHERE frame_job_id = $1::uuid",
    )
    .bind(&tasks[0].task_id)
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert_eq!(
        (outcome.as_str(), render_ms, warnings, tail.as_str()),
        ("success", 700, vec!["a warning".to_owned()], "Finished composition")
    );
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_attempts WHERE outcome IS NOT NULL").await, 1);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 10);
    let (frames_done, render_ms): (i32, i64) =
        sqlx::query_as("SELECT frames_done, render_ms FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((frames_done, render_ms), (10, 700));

    // A resend of the accepted result is no longer a current lease: the one-report path
    // acknowledges it as a duplicate.
    let again = batch::task_results(o.pool(), &items[..1]).await.unwrap();
    assert_eq!(again, vec![None]);
}

#[tokio::test]
async fn the_last_chunks_in_one_batch_move_the_job_to_assembly() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { slots: 3, behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let tasks = [agent.next_assign().await, agent.next_assign().await, agent.next_assign().await];
    let mut items = Vec::new();
    for task in &tasks {
        record_frames(o.pool(), task, &frames_of(task)).await;
        // Half the frames come first in a batched FrameReport, the rest with the result.
        let frames = frames_of(task);
        let (early, late) = frames.split_at(frames.len() / 2);
        let report = agent_pb::FrameReport {
            task_id: task.task_id.clone(),
            lease_epoch: task.lease_epoch,
            segment_index: 0,
            frames: early.iter().map(|f| ok_frame(task, *f)).collect(),
        };
        let f = fence(&o, &agent, task).await;
        assert_eq!(
            batch::frame_reports(o.pool(), &[Frames { fence: f, report }]).await.unwrap(),
            vec![Some(Verdict::Accepted)]
        );
        items.push(Outcome { fence: f, result: success(task, late.to_vec()) });
    }
    let answers = batch::task_results(o.pool(), &items).await.unwrap();
    assert!(answers.iter().all(|a| *a == Some((Verdict::Accepted, Some(Ended::Done)))), "{answers:?}");
    let (state, frames_done): (String, i32) =
        sqlx::query_as("SELECT state, frames_done FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), frames_done), ("assembling", 30));
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'assemble'").await, 1);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 30);
}

#[tokio::test]
async fn batched_frame_reports_and_updates_are_fenced() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { slots: 2, behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 19)], ..JobSeed::default() }).await;
    let (a, b) = (agent.next_assign().await, agent.next_assign().await);
    let (fa, fb) = (fence(&o, &agent, &a).await, fence(&o, &agent, &b).await);
    record_frames(o.pool(), &a, &frames_of(&a)).await;
    record_frames(o.pool(), &b, &frames_of(&b)).await;
    let first_of = |t: &agent_pb::AssignTask| frames_of(t)[0];
    let report = |t: &agent_pb::AssignTask, frames: Vec<i32>| agent_pb::FrameReport {
        task_id: t.task_id.clone(),
        lease_epoch: t.lease_epoch,
        segment_index: 0,
        frames: frames.into_iter().map(|f| ok_frame(t, f)).collect(),
    };
    let items = vec![
        Frames { fence: fa, report: report(&a, vec![first_of(&a)]) },
        // A frame outside the chunk's range.
        Frames { fence: fb, report: report(&b, vec![first_of(&b) + 1000]) },
        // No frames at all.
        Frames { fence: fb, report: report(&b, vec![]) },
        Frames { fence: Fence { lease_epoch: fb.lease_epoch + 1, ..fb }, report: report(&b, vec![first_of(&b)]) },
    ];
    let answers = batch::frame_reports(o.pool(), &items).await.unwrap();
    assert_eq!(answers[0], Some(Verdict::Accepted));
    assert!(matches!(&answers[1], Some(Verdict::Malformed(m)) if m.contains("not in the task's range")), "{answers:?}");
    assert!(matches!(&answers[2], Some(Verdict::Malformed(_))), "{answers:?}");
    // The second report about task b in this batch waits for the one-report path.
    assert_eq!(answers[3], None);
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 1);

    let update = |t: &agent_pb::AssignTask, frame: i32| agent_pb::TaskUpdate {
        task_id: t.task_id.clone(),
        lease_epoch: t.lease_epoch,
        phase: pb::TaskPhase::Rendering as i32,
        percent: 50.0,
        current_frame: frame,
        ..Default::default()
    };
    let items = vec![
        Update { fence: fa, update: update(&a, first_of(&a) + 3) },
        Update { fence: Fence { node_id: Uuid::new_v4(), ..fb }, update: update(&b, 0) },
        Update { fence: Fence { lease_epoch: fb.lease_epoch - 1, ..fb }, update: update(&b, 0) },
    ];
    let answers = batch::task_updates(o.pool(), &items).await.unwrap();
    assert_eq!(answers, vec![Some(Verdict::Accepted), Some(Verdict::Superseded), None]);
    let (state, frame, percent): (String, Option<i32>, Option<f32>) =
        sqlx::query_as("SELECT state, current_frame, percent FROM render.frame_jobs WHERE id = $1::uuid")
            .bind(&a.task_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((state.as_str(), frame, percent), ("running", Some(first_of(&a) + 3), Some(50.0)));
    assert_eq!(task_state(&o, &b).await, "leased");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_attempts WHERE started_at IS NOT NULL").await, 1);
}

#[tokio::test]
async fn batched_frames_must_name_uploads_of_their_own_lease() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { slots: 4, behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 39)], ..JobSeed::default() }).await;
    let tasks =
        [agent.next_assign().await, agent.next_assign().await, agent.next_assign().await, agent.next_assign().await];
    let mut fences = Vec::new();
    for task in &tasks {
        record_frames(o.pool(), task, &frames_of(task)).await;
        fences.push(fence(&o, &agent, task).await);
    }
    // The frame's upload by a later lease of the task, which this lease does not own.
    let later = agent_pb::AssignTask { lease_epoch: tasks[3].lease_epoch + 1, ..tasks[3].clone() };
    record_frames(o.pool(), &later, &frames_of(&later)).await;

    let first = |t: &agent_pb::AssignTask| ok_frame(t, frames_of(t)[0]);
    let report = |t: &agent_pb::AssignTask, frame: agent_pb::FrameOutput| agent_pb::FrameReport {
        task_id: t.task_id.clone(),
        lease_epoch: t.lease_epoch,
        segment_index: 0,
        frames: vec![frame],
    };
    let items = vec![
        Frames { fence: fences[0], report: report(&tasks[0], first(&tasks[0])) },
        Frames {
            fence: fences[1],
            report: report(
                &tasks[1],
                agent_pb::FrameOutput { file_id: Uuid::new_v4().to_string(), ..first(&tasks[1]) },
            ),
        },
        Frames {
            fence: fences[2],
            report: report(&tasks[2], agent_pb::FrameOutput { sha256: "ab".repeat(32), ..first(&tasks[2]) }),
        },
        Frames { fence: fences[3], report: report(&tasks[3], first(&later)) },
    ];
    let answers = batch::frame_reports(o.pool(), &items).await.unwrap();
    assert_eq!(answers[0], Some(Verdict::Accepted));
    let refused =
        |answer: &Option<Verdict>, why: &str| matches!(answer, Some(Verdict::Malformed(m)) if m.contains(why));
    assert!(refused(&answers[1], "is not an upload of this frame by this lease"), "{answers:?}");
    assert!(refused(&answers[2], "checksum mismatch"), "{answers:?}");
    assert!(refused(&answers[3], "is not an upload of this frame by this lease"), "{answers:?}");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 1);

    // A whole result with one frame that names no upload is refused whole; the others are not.
    let mut bad = success(&tasks[1], frames_of(&tasks[1]));
    bad.frames[4].file_id = Uuid::new_v4().to_string();
    let items = vec![
        Outcome { fence: fences[1], result: bad },
        Outcome { fence: fences[2], result: success(&tasks[2], frames_of(&tasks[2])) },
    ];
    let answers = batch::task_results(o.pool(), &items).await.unwrap();
    assert!(
        matches!(&answers[0], Some((Verdict::Malformed(m), None)) if m.contains("is not an upload")),
        "{answers:?}"
    );
    assert_eq!(answers[1], Some((Verdict::Accepted, Some(Ended::Done))));
    assert_eq!(task_state(&o, &tasks[1]).await, "leased");
    assert_eq!(task_state(&o, &tasks[2]).await, "done");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 11);
}
