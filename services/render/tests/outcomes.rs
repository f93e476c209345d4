//! How task outcomes drive tasks and jobs: success to assembling, a template error fails the
//! job at once, machine errors are retried elsewhere (never on the node that failed), refusals
//! and hand-backs cost no attempt, a cancel reaches the agents.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use flatrender_kit::auth::Role;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message as _;
use support::agent::{accepted, frame_report, frames_of, result};
use support::seed::cancel_job;
use support::{AgentSpec, Behaviour, JobSeed, Orchestrator, Principal, seed_job};
use uuid::Uuid;

use agent_pb::session_request::Payload as In;

#[tokio::test]
async fn a_rendered_job_moves_to_assembly() {
    let o = Orchestrator::start().await;
    let renderer = o.agent(AgentSpec { slots: 2, ..AgentSpec::default() }).await;
    let job = seed_job(
        o.pool(),
        JobSeed { segments: vec![("Intro".into(), 0, 14), ("Outro".into(), 100, 114)], ..JobSeed::default() },
    )
    .await;
    assert_eq!(job.chunks.len(), 4);
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    let (frames_done, progress, render_ms): (i32, f32, i64) =
        sqlx::query_as("SELECT frames_done, progress, render_ms FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((frames_done, progress, render_ms), (30, 1.0, 4000));
    assert_eq!(o.count("SELECT count(*) FROM render.frame_results").await, 30);
    assert_eq!(
        o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'render' AND state = 'done' AND attempts = 1")
            .await,
        4
    );
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE lane = 'assemble' AND state = 'queued'").await, 1);
    assert_eq!(o.events("flatrender.events.v1.RenderJobStarted").await.len(), 1);
    let progressed = o.events("flatrender.events.v1.RenderJobProgressed").await;
    let last = ev::RenderJobProgressed::decode(progressed.last().unwrap().as_slice()).unwrap();
    assert_eq!((last.state(), last.frames_done, last.frames_total), (pb::JobState::Assembling, 30, 30));

    // Only a node with ffmpeg takes the assembly; the renderer (no ffmpeg) never does.
    let assembler = o
        .agent(AgentSpec { ffmpeg: true, ae_versions: vec![], behaviour: Behaviour::Hang, ..AgentSpec::default() })
        .await;
    let task = assembler.next_assign().await;
    assert_eq!(task.kind(), pb::TaskKind::Assemble);
    let Some(agent_pb::assign_task::Spec::Assemble(spec)) = task.spec else { panic!("an assemble spec") };
    assert_eq!(spec.expected_frame_count, 30);
    assert_eq!(spec.segments.iter().map(|s| s.composition.as_str()).collect::<Vec<_>>(), ["Intro", "Outro"]);
    assert!(renderer.assigns().iter().all(|t| t.kind() == pb::TaskKind::RenderChunk));
    assert_eq!(renderer.assigns().len(), 4);
}

/// A one-segment job of 10 frames; `marked` as a plan with a watermark makes it.
async fn job_for_assembly(o: &Orchestrator, marked: bool) -> Uuid {
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    o.execute(&format!("UPDATE render.render_jobs SET watermark = {marked} WHERE id = '{}'", job.job_id)).await;
    job.job_id
}

#[tokio::test]
async fn a_watermarked_jobs_assembly_carries_the_mark() {
    let image = Uuid::new_v4();
    let o = Orchestrator::start_with(|s| {
        s.watermark.text = "Made with FlatRender".into();
        s.watermark.image_file_id = Some(image);
    })
    .await;
    let assembler = o
        .agent(AgentSpec {
            ffmpeg: true,
            ae_versions: vec![],
            slots: 3,
            behaviour: Behaviour::Hang,
            ..AgentSpec::default()
        })
        .await;
    let marked = job_for_assembly(&o, true).await;
    let _renderer = o.agent(AgentSpec::default()).await;
    let mark_of = |task: agent_pb::AssignTask| {
        let Some(agent_pb::assign_task::Spec::Assemble(spec)) = task.spec else { panic!("an assemble spec") };
        spec.watermark
    };
    // Whether the node may fetch the image for `task`: PERMISSION_DENIED if not, else the call
    // gets as far as the file service, which this orchestrator has none of.
    let image_code = |task: &agent_pb::AssignTask| {
        let request = agent_pb::DownloadObjectRequest {
            task_id: task.task_id.clone(),
            lease_epoch: task.lease_epoch,
            object: Some(agent_pb::download_object_request::Object::FileId(image.to_string())),
            offset: 0,
        };
        let download = assembler.download(request);
        async move { download.await.map(|_| ()).unwrap_err().code() }
    };

    // The image's facts are not recorded (no watermarked submit recorded them): the text, and
    // the image is no input of the assembly.
    let task = assembler.next_assign().await;
    assert_eq!(task.render_id, marked.to_string());
    assert_eq!(image_code(&task).await, tonic::Code::PermissionDenied);
    let mark = mark_of(task).expect("a watermark");
    assert_eq!(mark.mark, Some(agent_pb::watermark::Mark::Text("Made with FlatRender".into())));
    assert_eq!((mark.position(), mark.opacity), (agent_pb::WatermarkPosition::BottomRight, 0.5));

    // Recorded, the image; a job whose plan has no watermark gets none.
    o.execute(&format!(
        "INSERT INTO render.file_facts (file_id, sha256, size_bytes, content_type)
         VALUES ('{image}', '\\x{}', 4096, 'image/png')",
        "ab".repeat(32)
    ))
    .await;
    let marked = job_for_assembly(&o, true).await;
    let plain = job_for_assembly(&o, false).await;
    let mut marks = std::collections::HashMap::new();
    for _ in 0..2 {
        let task = assembler.next_assign().await;
        let expected =
            if task.render_id == marked.to_string() { tonic::Code::Unavailable } else { tonic::Code::PermissionDenied };
        assert_eq!(image_code(&task).await, expected, "the image is an input of the marked job's assembly only");
        marks.insert(task.render_id.clone(), mark_of(task));
    }
    let Some(agent_pb::watermark::Mark::Image(object)) = marks[&marked.to_string()].clone().expect("a watermark").mark
    else {
        panic!("the image: {marks:?}")
    };
    assert_eq!(
        (object.file_id, object.sha256, object.size_bytes, object.content_type.as_str()),
        (image.to_string(), "ab".repeat(32), 4096, "image/png")
    );
    assert_eq!(marks[&plain.to_string()], None);
}

#[tokio::test]
async fn a_template_error_fails_the_job_without_retries() {
    let o = Orchestrator::start().await;
    let failing = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let task = failing.next_assign().await;
    let busy = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let other = busy.next_assign().await;

    failing.send(accepted(&task));
    let seq = failing.send(result(&task, pb::TaskOutcome::TemplateError));
    failing.ack_of(seq).await;

    // The other node's chunk is canceled as part of the failed job; its CANCELED result is kept.
    let cancel = busy.cancel_of(&other.task_id).await;
    assert_eq!((cancel.reason(), cancel.lease_epoch), (agent_pb::CancelReason::JobFailed, other.lease_epoch));
    o.until(
        "the canceled attempt is recorded",
        &format!(
            "SELECT outcome IS NOT DISTINCT FROM 'canceled' FROM render.frame_job_attempts WHERE frame_job_id = '{}'",
            other.task_id
        ),
    )
    .await;

    let (state, class, code, message): (String, String, String, String) =
        sqlx::query_as("SELECT state, error_class, error_code, error_message FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), class.as_str(), code.as_str(), message.as_str()),
        ("failed", "template", "comp_not_found", "aerender ERROR: No comp was found with the given name.")
    );
    assert_eq!(o.count("SELECT count(*) FROM render.frame_job_attempts").await, 2, "no retry");
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE state = 'failed'").await, 3);
    let failed = o.events("flatrender.events.v1.RenderJobFailed").await;
    let event = ev::RenderJobFailed::decode(failed[0].as_slice()).unwrap();
    assert_eq!(event.error.unwrap().error_class(), pb::ErrorClass::Template);
    // Nobody gets more of the job.
    failing.heartbeat();
    failing.renewal().await;
    assert_eq!(failing.assigns().len() + busy.assigns().len(), 2);
}

#[tokio::test]
async fn customers_see_a_template_error_without_the_node_paths_or_names_operators_see_it_raw() {
    let o = Orchestrator::start().await;
    let node = o
        .agent(AgentSpec {
            behaviour: Behaviour::Manual,
            hostname: "AE-07.farm.internal".into(),
            name: "ae-07".into(),
            ..AgentSpec::default()
        })
        .await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = node.next_assign().await;
    let raw = format!(
        r"After Effects error: missing footage C:\Users\render\cache\{}\footage\logo.png (layer 'Logo'), project /var/lib/flatrender/work/{}/project.aep, scratch \\AE-07\scratch\frame.tmp; ae-07.farm.internal gave up (ae-07)",
        "ab".repeat(32),
        task.task_id
    );
    let In::TaskResult(mut failed) = result(&task, pb::TaskOutcome::TemplateError) else { unreachable!() };
    let error = failed.error.as_mut().unwrap();
    error.code = pb::ErrorCode::MissingFootage as i32;
    error.message = raw.clone();
    node.send(accepted(&task));
    let seq = node.send(In::TaskResult(failed));
    node.ack_of(seq).await;
    const SHOWN: &str = r"After Effects error: missing footage footage\logo.png (layer 'Logo'), project project.aep, scratch frame.tmp; the render node gave up (the render node)";

    // The customer: GetRender and the RenderJobFailed event (webhooks).
    let mut renders = o.renders(&Principal::tenant_admin(job.tenant));
    let render = renders.get_render(pb::GetRenderRequest { render_id: job.job_id.to_string() }).await.unwrap();
    let error = render.into_inner().render.unwrap().error.unwrap();
    assert_eq!((error.code(), error.message.as_str()), (pb::ErrorCode::MissingFootage, SHOWN));
    let failed = o.events("flatrender.events.v1.RenderJobFailed").await;
    let event = ev::RenderJobFailed::decode(failed[0].as_slice()).unwrap();
    assert_eq!(event.error.unwrap().message, SHOWN);

    // Operators: the attempt as the agent reported it.
    let mut admin = o.render_admin(Role::PlatformAdmin);
    let chunk = admin.get_chunk(pb::GetChunkRequest { chunk_id: task.task_id.clone() }).await.unwrap();
    let chunk = chunk.into_inner().chunk.unwrap();
    assert_eq!(chunk.attempts[0].error.as_ref().unwrap().message, raw);
    assert_eq!(chunk.last_error.unwrap().message, raw);
}

#[tokio::test]
async fn a_machine_error_is_retried_on_another_node_never_the_same() {
    let o = Orchestrator::start().await;
    let crashing = o.agent(AgentSpec { behaviour: Behaviour::MachineError, slots: 2, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let first = crashing.next_assign().await;
    o.until("the node is excluded from the job", "SELECT count(*) >= 1 FROM render.frame_job_excluded_nodes").await;
    let healthy = o.agent(AgentSpec::default()).await;
    o.until(
        "the job assembles",
        &format!("SELECT state = 'assembling' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    // The crashing node (two slots, idle) got only the chunks it was given before its failure
    // was recorded; none after, and never the failed one again.
    let crashed: Vec<String> = crashing.assigns().iter().map(|t| t.task_id.clone()).collect();
    assert!(crashed.len() <= 2, "{crashed:?}");
    let retried = healthy.assigns().into_iter().find(|t| t.task_id == first.task_id).expect("retried elsewhere");
    assert_eq!(retried.lease_epoch, 2);
    let excluded: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT node_id, job_id, reason FROM render.frame_job_excluded_nodes WHERE frame_job_id = $1::uuid",
    )
    .bind(&first.task_id)
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(excluded, [(crashing.identity.node_id, job.job_id, "failed".to_owned())]);
    let outcomes: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT outcome, error_code FROM render.frame_job_attempts WHERE frame_job_id = $1::uuid ORDER BY attempt",
    )
    .bind(&first.task_id)
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(outcomes, [(Some("machine_error".into()), Some("ae_crash".into())), (Some("success".into()), None)]);
}

#[tokio::test]
async fn a_task_out_of_attempts_fails_its_job() {
    let o = Orchestrator::start().await;
    let a = o.agent(AgentSpec { behaviour: Behaviour::MachineError, ..AgentSpec::default() }).await;
    let b = o.agent(AgentSpec { behaviour: Behaviour::MachineError, ..AgentSpec::default() }).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], max_attempts: 2, ..JobSeed::default() })
            .await;
    o.until("the job fails", &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", job.job_id))
        .await;
    let (class, message): (String, String) =
        sqlx::query_as("SELECT error_class, error_message FROM render.render_jobs WHERE id = $1")
            .bind(job.job_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((class.as_str(), message.as_str()), ("machine", "After Effects crashed"));
    assert_eq!(a.assigns().len() + b.assigns().len(), 2, "one attempt on each node");
    assert_eq!(a.assigns().len(), 1);
}

#[tokio::test]
async fn refusals_and_hand_backs_use_no_attempt() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], ..JobSeed::default() }).await;

    let task = agent.next_assign().await;
    agent.send(accepted(&task));
    agent.drop_task(&task.task_id);
    let seq = agent.send(result(&task, pb::TaskOutcome::HandedBack));
    agent.ack_of(seq).await;

    let again = agent.next_assign().await;
    assert_eq!((again.task_id.as_str(), again.lease_epoch, again.attempt), (task.task_id.as_str(), 2, 2));
    agent.refuse(&again);

    let third = agent.next_assign().await;
    assert_eq!((third.lease_epoch, third.attempt), (3, 3));
    agent.send(accepted(&third));
    agent.send(frame_report(&third, &frames_of(&third)));
    let seq = agent.send(result(&third, pb::TaskOutcome::Success));
    agent.ack_of(seq).await;
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM render.frame_jobs WHERE id = $1::uuid")
        .bind(&task.task_id)
        .fetch_one(o.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1, "only the successful lease counts");
    let outcomes: Vec<Option<String>> =
        sqlx::query_scalar("SELECT outcome FROM render.frame_job_attempts ORDER BY attempt")
            .fetch_all(o.pool())
            .await
            .unwrap();
    assert_eq!(outcomes, [Some("handed_back".into()), Some("rejected".into()), Some("success".into())]);
}

#[tokio::test]
async fn a_cancel_reaches_the_agents() {
    let o = Orchestrator::start().await;
    let a = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let b = o.agent(AgentSpec { behaviour: Behaviour::Hang, ..AgentSpec::default() }).await;
    let job = seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 29)], ..JobSeed::default() }).await;
    let task_a = a.next_assign().await;
    let task_b = b.next_assign().await;

    cancel_job(o.pool(), job.job_id).await;
    for (agent, task) in [(&a, &task_a), (&b, &task_b)] {
        let cancel = agent.cancel_of(&task.task_id).await;
        assert_eq!((cancel.reason(), cancel.lease_epoch), (agent_pb::CancelReason::JobCanceled, task.lease_epoch));
    }
    // Each agent answers TaskResult(CANCELED), which is recorded on its attempt.
    o.until(
        "both canceled attempts are recorded",
        "SELECT count(*) = 2 FROM render.frame_job_attempts WHERE outcome = 'canceled'",
    )
    .await;
    assert_eq!(o.count("SELECT count(*) FROM render.frame_jobs WHERE state = 'canceled'").await, 3);
    a.heartbeat();
    a.renewal().await;
    assert_eq!(a.assigns().len() + b.assigns().len(), 2, "nothing more of a canceled job");
}

#[tokio::test]
async fn agent_text_with_nul_characters_is_stored() {
    let o = Orchestrator::start().await;
    let agent = o.agent(AgentSpec { behaviour: Behaviour::Manual, ..AgentSpec::default() }).await;
    seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 9)], ..JobSeed::default() }).await;
    let task = agent.next_assign().await;
    agent.send(accepted(&task));

    // PostgreSQL refuses NUL in text and jsonb; a dying process may print it all the same.
    let crash = agent_pb::CrashReport {
        crash_id: Uuid::new_v4().to_string(),
        kind: pb::CrashKind::AeCrash as i32,
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        process_name: "AfterFX\0.exe".into(),
        message: "segfault\0at 0x0".into(),
        report_text: "frame #0\0".into(),
        log_tail: "last\0line".into(),
        ..Default::default()
    };
    let seq = agent.send(In::CrashReport(crash));
    agent.ack_of(seq).await;
    let In::TaskResult(mut failed) = result(&task, pb::TaskOutcome::MachineError) else { unreachable!() };
    failed.error.as_mut().unwrap().message = "After Effects\0crashed".into();
    failed.log_tail = "tail\0".into();
    let seq = agent.send(In::TaskResult(failed));
    agent.ack_of(seq).await;

    let (message, log_tail, details): (String, String, serde_json::Value) =
        sqlx::query_as("SELECT message, log_tail, details FROM render.node_crashes").fetch_one(o.pool()).await.unwrap();
    assert_eq!((message.as_str(), log_tail.as_str()), ("segfault\u{FFFD}at 0x0", "last\u{FFFD}line"));
    assert_eq!(details["process_name"], "AfterFX\u{FFFD}.exe");
    assert_eq!(details["report_text"], "frame #0\u{FFFD}");
    let (message, log_tail): (String, String) =
        sqlx::query_as("SELECT error_message, log_tail FROM render.frame_job_attempts WHERE frame_job_id = $1::uuid")
            .bind(&task.task_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!((message.as_str(), log_tail.as_str()), ("After Effects\u{FFFD}crashed", "tail\u{FFFD}"));
}
