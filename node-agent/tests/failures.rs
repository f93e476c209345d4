//! Every aerender failure mode through the whole system: the simulator fails as asked, the agent
//! classifies the run and kills its process tree, and the real orchestrator does what DESIGN §4
//! says — a template error fails the job at once with its message and no retry; a machine error
//! (crash, hang, output-module failure, another instance, instant exit) is retried on another
//! node, which completes the job.
//!
//! Template faults travel in the template's project (they belong to the template); machine faults
//! are set on one agent's simulator (they belong to the machine).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod farm;
#[path = "../../services/render/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use farm::{AgentOptions, RunningAgent, agent, stack_with, upload_template};
use flatrender_proto::flatrender::render::v1 as pb;
use support::{Orchestrator, Principal, request, segment};
use uuid::Uuid;

/// Submits ten frames (one chunk) of `template`.
async fn submit(o: &Orchestrator, owner: &Principal, template: &flatrender_proto::flatrender::file::v1::File) -> Uuid {
    let key = Uuid::new_v4().to_string();
    let submit = pb::SubmitRenderRequest { segments: vec![segment("Main", "0-9")], ..request(template, &key) };
    let job = o.renders(owner).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    job.id.parse().unwrap()
}

/// The attempts of the job's render chunk, in order: (node, outcome, error class, error code,
/// seconds from start to finish).
async fn attempts(o: &Orchestrator, job: Uuid) -> Vec<(Option<Uuid>, String, String, String, f64)> {
    sqlx::query_as(
        "SELECT a.node_id, coalesce(a.outcome, ''), coalesce(a.error_class, ''), coalesce(a.error_code, ''),
                coalesce(extract(epoch FROM a.finished_at - coalesce(a.started_at, a.assigned_at))::float8, -1)
           FROM render.frame_job_attempts a JOIN render.frame_jobs t ON t.id = a.frame_job_id
          WHERE a.job_id = $1 AND t.lane = 'render' ORDER BY a.attempt",
    )
    .bind(job)
    .fetch_all(o.pool())
    .await
    .unwrap()
}

/// The processes that carry `marker` in their environment (the simulator and any child it
/// started inherit it from the agent's work environment), zombies aside.
fn processes_with(marker: &str) -> Vec<String> {
    let needle = format!("FLATRENDER_TEST_FARM={marker}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| {
            let environ = std::fs::read(e.path().join("environ")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let zombie = stat.rsplit(") ").next().is_some_and(|s| s.starts_with('Z'));
            let ours = environ.split(|b| *b == 0).any(|var| var == needle.as_bytes());
            (ours && !zombie).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// A template error: the job fails on its first attempt with the code, and nothing is retried.
#[tokio::test]
async fn template_errors_fail_the_job_without_a_retry() {
    let (o, alice) = stack_with(|_| {}).await;
    let state = tempfile::tempdir().unwrap();
    let marker = Uuid::new_v4().to_string();
    let env = [("FLATRENDER_TEST_FARM", marker.as_str())];
    let node = agent(&o, state.path(), AgentOptions { env: &env, ..AgentOptions::default() }).await;
    let cases = [
        ("missing-comp", "comp_not_found"),
        ("missing-font", "missing_font"),
        ("missing-footage", "missing_footage"),
        // The simulated script error is a value the injection rejects.
        ("script-error", "value_rejected"),
    ];
    // One at a time: the customer's plan allows one unfinished render.
    for (fault, code) in cases {
        let template = upload_template(&o, &alice, &[fault]).await;
        let job = submit(&o, &alice, &template).await;
        o.until(
            &format!("the {fault} job fails"),
            &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{job}'"),
        )
        .await;
        let (class, job_code): (String, String) =
            sqlx::query_as("SELECT error_class, error_code FROM render.render_jobs WHERE id = $1")
                .bind(job)
                .fetch_one(o.pool())
                .await
                .unwrap();
        assert_eq!((class.as_str(), job_code.as_str()), ("template", code), "{fault}");
        let tried = attempts(&o, job).await;
        assert_eq!(tried.len(), 1, "{fault}: a template error is not retried: {tried:?}");
        assert_eq!((tried[0].1.as_str(), tried[0].3.as_str()), ("template_error", code), "{fault}");
        assert_eq!(o.count(&format!("SELECT count(*) FROM render.frame_results WHERE job_id = '{job}'")).await, 0);
    }
    assert_eq!(processes_with(&marker), Vec::<String>::new(), "no process of a render is left");
    node.stop().await;
}

/// A machine fault on one node: that node's attempt fails with `code` (in `class`) within the
/// watchdog's window where there is one, leaves no process behind, and the chunk is retried on a
/// healthy node that completes the job.
async fn retried_elsewhere(fault: &str, no_output: Duration, class: &str, code: &str) {
    let (o, alice) = stack_with(|settings| settings.max_attempts = 3).await;
    let template = upload_template(&o, &alice, &[]).await;
    let marker = Uuid::new_v4().to_string();
    let faulty_state = tempfile::tempdir().unwrap();
    let crash_dir = faulty_state.path().join("crash-reports");
    let crash_dir_text = crash_dir.to_string_lossy().into_owned();
    let env = [
        ("FLATRENDER_TEST_FARM", marker.as_str()),
        ("FLATRENDER_SIM_FAULT", fault),
        ("FLATRENDER_SIM_CHILD", "1"),
        ("FLATRENDER_SIM_CRASH_DIR", crash_dir_text.as_str()),
    ];
    let options = AgentOptions { env: &env, no_output, crash_dir: Some(&crash_dir), ..AgentOptions::default() };
    let faulty = agent(&o, faulty_state.path(), options).await;
    let job = submit(&o, &alice, &template).await;
    o.until_within(
        &format!("the {fault} node's attempt fails"),
        &format!(
            "SELECT count(*) = 1 FROM render.frame_job_attempts WHERE job_id = '{job}' AND node_id = '{}' AND outcome IS NOT NULL",
            faulty.node_id
        ),
        no_output + Duration::from_secs(30),
    )
    .await;
    let tried = attempts(&o, job).await;
    let (node, outcome, error_class, error_code, seconds) = &tried[0];
    assert_eq!(*node, Some(faulty.node_id));
    assert_eq!(
        (outcome.as_str(), error_class.as_str(), error_code.as_str()),
        (class_outcome(class), class, code),
        "{fault}"
    );
    if code == "no_output_timeout" {
        let window = no_output.as_secs_f64();
        // From acceptance: fetching, starting and two frames come before the silence.
        assert!(
            *seconds >= window && *seconds < window + 30.0,
            "{fault}: stopped after {seconds} s, window {window} s"
        );
    }
    assert_eq!(processes_with(&marker), Vec::<String>::new(), "{fault}: no process of the failed render is left");
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.render_jobs WHERE id = '{job}' AND state IN ('failed', 'canceled')"
        ))
        .await,
        0,
        "{fault}: a machine error does not fail the job"
    );
    // A crash or a hang reaches the orchestrator as the node's crash, with the task; a crash
    // with the report the crash reporter wrote.
    let crash_kind = match code {
        "ae_crash" => Some("ae_crash"),
        "no_output_timeout" => Some("ae_hang"),
        _ => None,
    };
    if let Some(kind) = crash_kind {
        o.until(
            &format!("the {fault} crash is recorded"),
            &format!("SELECT count(*) = 1 FROM render.node_crashes WHERE node_id = '{}'", faulty.node_id),
        )
        .await;
        let (recorded, task_job, signal, message, report): (String, Option<Uuid>, Option<i32>, String, String) =
            sqlx::query_as(
                "SELECT kind, job_id, signal, coalesce(message, ''), coalesce(details->>'report_text', '')
                   FROM render.node_crashes WHERE node_id = $1",
            )
            .bind(faulty.node_id)
            .fetch_one(o.pool())
            .await
            .unwrap();
        assert_eq!((recorded.as_str(), task_job), (kind, Some(job)), "{fault}");
        if kind == "ae_crash" {
            assert_eq!(signal, Some(6), "{fault}: SIGABRT");
            assert!(message.starts_with("Process:") && message.contains("aerender-sim"), "{fault}: {message}");
            assert!(report.contains("Thread 0 Crashed"), "{fault}: {report}");
        }
    } else {
        let crashes = format!("SELECT count(*) FROM render.node_crashes WHERE node_id = '{}'", faulty.node_id);
        assert_eq!(o.count(&crashes).await, 0, "{fault}: not a crash");
    }
    faulty.stop().await;

    let healthy_state = tempfile::tempdir().unwrap();
    let healthy: RunningAgent = agent(&o, healthy_state.path(), AgentOptions::default()).await;
    o.until(
        &format!("the {fault} job's chunk is done on the other node"),
        &format!("SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render'"),
    )
    .await;
    assert_eq!(
        o.count(&format!(
            "SELECT count(*) FROM render.frame_results WHERE job_id = '{job}' AND node_id = '{}'",
            healthy.node_id
        ))
        .await,
        10,
        "{fault}: the retry delivered every frame"
    );
    let tried = attempts(&o, job).await;
    assert_eq!(tried.len(), 2, "{fault}: {tried:?}");
    assert_eq!((tried[1].0, tried[1].1.as_str()), (Some(healthy.node_id), "success"));
    healthy.stop().await;
}

fn class_outcome(class: &str) -> &'static str {
    match class {
        "timeout" => "timeout",
        _ => "machine_error",
    }
}

#[tokio::test]
async fn a_crash_mid_render_is_retried_on_another_node() {
    retried_elsewhere("crash:2", Duration::from_secs(30), "machine", "ae_crash").await;
}

#[tokio::test]
async fn a_hang_is_stopped_by_the_watchdog_and_retried_on_another_node() {
    retried_elsewhere("hang:2", Duration::from_secs(2), "machine", "no_output_timeout").await;
}

#[tokio::test]
async fn an_output_module_failure_is_retried_on_another_node() {
    retried_elsewhere("output-module", Duration::from_secs(30), "machine", "output_module_failed").await;
}

#[tokio::test]
async fn another_instance_and_an_instant_exit_are_retried_on_another_node() {
    retried_elsewhere("another-instance", Duration::from_secs(30), "machine", "another_instance").await;
    retried_elsewhere("instant-exit", Duration::from_secs(30), "machine", "instant_exit").await;
}

/// After Effects refuses to render while an instance an earlier run lost is still there: a
/// renderer recorded by an agent that then died (here: started by hand and recorded in the
/// ledger) is killed before the next task renders, and the task succeeds.
#[tokio::test]
async fn a_renderer_an_earlier_agent_lost_is_killed_before_the_next_task() {
    use std::os::unix::process::CommandExt;

    let (o, alice) = stack_with(|_| {}).await;
    let template = upload_template(&o, &alice, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let project = state.path().join("lost.aepx.json");
    std::fs::write(&project, farm::project(&[])).unwrap();
    let output = state.path().join("lost/frame_[#####].png");
    let stray = std::process::Command::new(farm::SIM)
        .arg("-project")
        .arg(&project)
        .args(["-comp", "Main", "-output"])
        .arg(&output)
        .env("FLATRENDER_SIM_FAULT", "hang:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Whatever the test's fate, the stray does not outlive it.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut stray = Reaped(stray);
    let mut ledger =
        flatrender_agent::strays::Ledger::open(state.path().join("renderers.json"), &["aerender-sim"]).unwrap();
    ledger.record(stray.0.id()).unwrap();
    drop(ledger);
    assert!(stray.0.try_wait().unwrap().is_none(), "the stray runs");

    let node = agent(&o, state.path(), AgentOptions::default()).await;
    let job = submit(&o, &alice, &template).await;
    o.until(
        "the job's chunk is done",
        &format!("SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render'"),
    )
    .await;
    let status = stray.0.try_wait().unwrap();
    assert!(status.is_some_and(|s| !s.success()), "the stray was killed: {status:?}");
    node.stop().await;
}

/// An agent stopped mid-render hands its task back before it says goodbye: the render's process
/// tree is killed, the attempt is recorded as handed back without using up an attempt, and
/// another node takes the chunk at once.
#[tokio::test]
async fn a_stopping_agent_hands_its_task_back() {
    let (o, alice) = stack_with(|_| {}).await;
    let template = upload_template(&o, &alice, &[]).await;
    let marker = Uuid::new_v4().to_string();
    let first_state = tempfile::tempdir().unwrap();
    let env = [("FLATRENDER_TEST_FARM", marker.as_str()), ("FLATRENDER_SIM_FRAME_MS", "1000")];
    let first = agent(&o, first_state.path(), AgentOptions { env: &env, ..AgentOptions::default() }).await;
    let job = submit(&o, &alice, &template).await;
    o.until(
        "the chunk is rendering",
        &format!(
            "SELECT count(*) = 1 FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render' AND phase = 'rendering'"
        ),
    )
    .await;
    let stopping = std::time::Instant::now();
    first.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "stopped in {:?}", stopping.elapsed());
    assert_eq!(processes_with(&marker), Vec::<String>::new(), "the render's tree is gone");
    let tried = attempts(&o, job).await;
    assert_eq!(tried.len(), 1);
    assert_eq!(tried[0].1, "handed_back", "{tried:?}");
    o.until(
        "the chunk is back in the queue without using an attempt",
        &format!(
            "SELECT count(*) = 1 FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render' AND state = 'queued' AND attempts = 0"
        ),
    )
    .await;

    let second_state = tempfile::tempdir().unwrap();
    let second = agent(&o, second_state.path(), AgentOptions::default()).await;
    o.until(
        "the chunk is done on the other node",
        &format!("SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render'"),
    )
    .await;
    second.stop().await;
}

/// A node whose downloads take longer than the task's download time limit gives the task up as
/// a machine error (DOWNLOAD_FAILED) instead of waiting on a slow or stalled transfer; another
/// node completes the chunk.
#[tokio::test]
async fn a_download_past_its_time_limit_is_given_up_and_retried_elsewhere() {
    let (o, alice) = stack_with(|settings| settings.max_attempts = 3).await;
    // 4 MiB that do not compress, so that the transfer cannot finish within the 1 ms limit
    // (which in practice has passed before the download even opens).
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("project.aepx.json", options).unwrap();
    std::io::Write::write_all(&mut zip, farm::project(&[]).as_bytes()).unwrap();
    zip.start_file("footage/noise.bin", options).unwrap();
    let mut noise = vec![0_u8; 4 << 20];
    rand::RngExt::fill(&mut rand::rng(), &mut noise[..]);
    std::io::Write::write_all(&mut zip, &noise).unwrap();
    let bytes = zip.finish().unwrap().into_inner();
    let template = o
        .upload(
            &alice,
            alice.tenant,
            "template.zip",
            flatrender_proto::flatrender::file::v1::FileKind::TemplateBundle,
            &bytes,
        )
        .await;

    let slow_state = tempfile::tempdir().unwrap();
    let options = AgentOptions { download_limit: Duration::from_millis(1), ..AgentOptions::default() };
    let slow = agent(&o, slow_state.path(), options).await;
    let job = submit(&o, &alice, &template).await;
    o.until(
        "the slow node's attempt fails",
        &format!(
            "SELECT count(*) = 1 FROM render.frame_job_attempts WHERE job_id = '{job}' AND node_id = '{}' AND outcome IS NOT NULL",
            slow.node_id
        ),
    )
    .await;
    let tried = attempts(&o, job).await;
    assert_eq!(
        (tried[0].0, tried[0].1.as_str(), tried[0].2.as_str(), tried[0].3.as_str()),
        (Some(slow.node_id), "machine_error", "machine", "download_failed"),
    );
    slow.stop().await;

    let healthy_state = tempfile::tempdir().unwrap();
    let healthy = agent(&o, healthy_state.path(), AgentOptions::default()).await;
    o.until(
        "the chunk is done on the other node",
        &format!("SELECT bool_and(state = 'done') FROM render.frame_jobs WHERE job_id = '{job}' AND lane = 'render'"),
    )
    .await;
    healthy.stop().await;
}

/// Two slots crashing at once: each task's crash report is the one its own renderer wrote (the
/// simulator names its pid in the report, and the frame it crashed on), not whichever the first
/// crash to ask found first.
#[tokio::test]
async fn two_renders_crashing_together_each_get_their_own_crash_report() {
    let (o, alice) = stack_with(|settings| settings.max_attempts = 3).await;
    let template = upload_template(&o, &alice, &[]).await;
    let state = tempfile::tempdir().unwrap();
    let crash_dir = state.path().join("crash-reports");
    let crash_dir_text = crash_dir.to_string_lossy().into_owned();
    let env = [("FLATRENDER_SIM_FAULT", "crash:2"), ("FLATRENDER_SIM_CRASH_DIR", crash_dir_text.as_str())];
    let options = AgentOptions { env: &env, crash_dir: Some(&crash_dir), slots: 2, ..AgentOptions::default() };
    let node = agent(&o, state.path(), options).await;
    // Two chunks of ten frames, one per slot.
    let key = Uuid::new_v4().to_string();
    let submit = pb::SubmitRenderRequest { segments: vec![segment("Main", "0-19")], ..request(&template, &key) };
    let job: Uuid =
        o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap().id.parse().unwrap();
    o.until(
        "both crashes are recorded",
        &format!("SELECT count(*) = 2 FROM render.node_crashes WHERE node_id = '{}'", node.node_id),
    )
    .await;
    let crashes: Vec<(i32, i32, String)> = sqlx::query_as(
        "SELECT t.frame_start, t.frame_end, coalesce(c.details->>'report_text', '')
           FROM render.node_crashes c JOIN render.frame_jobs t ON t.id = c.frame_job_id
          WHERE c.node_id = $1 AND c.job_id = $2",
    )
    .bind(node.node_id)
    .bind(job)
    .fetch_all(o.pool())
    .await
    .unwrap();
    assert_eq!(crashes.len(), 2, "{crashes:?}");
    for (start, end, report) in &crashes {
        // The third frame of the chunk: crash:2 aborts after two frames.
        let frame = start + 2;
        assert!(
            report.contains(&format!("rendering frame {frame} of composition")) && frame <= *end,
            "the task of frames {start}-{end} got: {report}"
        );
    }
    node.stop().await;
}
