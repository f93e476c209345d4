//! The agent's control stream against the real orchestrator (the render service in this
//! process over a fresh PostgreSQL database, started by the render service's own test harness):
//! enrolment once, heartbeats, reconnects, work accepted and its results acked through the
//! on-disk outbox, cancels reaching the running task.
//!
//! Tasks here run in a test executor that answers at once (or when stopped): what is under test
//! is the session, not rendering.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../services/render/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestNode;
use flatrender_agent::session::credential::NodeCredential;
use flatrender_agent::session::outbox::Outbox;
use flatrender_agent::session::stream::{self, AgentInfo, Session, enroll};
use flatrender_agent::session::tasks::{Executor, StopReason, StopSignal, TaskEvent, TaskTable};
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use support::{AgentSpec, JobSeed, Orchestrator, cancel_job, seed_job};
use tokio::sync::{mpsc, oneshot};

/// How the test executor ends each task.
#[derive(Clone, Copy)]
enum Answer {
    /// At once, as a template error.
    TemplateError,
    /// Only when stopped, as canceled.
    WhenStopped,
    /// At once, as a template error with this many bytes of log tail.
    TemplateErrorWithLog(usize),
    /// At once, as a template error, then a crash report with this many bytes of report text.
    TemplateErrorAndCrash(usize),
}

struct TestExecutor {
    answer: Answer,
    stops: Arc<Mutex<Vec<StopReason>>>,
}

impl Executor for TestExecutor {
    fn check(&self, _task: &agent_pb::AssignTask) -> Result<(), (agent_pb::RejectReason, String)> {
        Ok(())
    }

    fn start(&self, task: agent_pb::AssignTask, events: mpsc::UnboundedSender<TaskEvent>, mut stop: StopSignal) {
        let (answer, stops) = (self.answer, Arc::clone(&self.stops));
        tokio::spawn(async move {
            let mut log_tail = "test".to_string();
            let (outcome, error) = match answer {
                Answer::TemplateErrorWithLog(bytes) => {
                    log_tail = (0..)
                        .map(|i| format!("PROGRESS: frame {i}\n"))
                        .take_while({
                            let mut total = 0;
                            move |line: &String| {
                                total += line.len();
                                total <= bytes
                            }
                        })
                        .collect();
                    (
                        pb::TaskOutcome::TemplateError,
                        Some(pb::RenderError {
                            error_class: pb::ErrorClass::Template as i32,
                            code: pb::ErrorCode::CompNotFound as i32,
                            message: "aerender ERROR: No comp was found with the given name.".into(),
                        }),
                    )
                }
                Answer::TemplateError | Answer::TemplateErrorAndCrash(_) => (
                    pb::TaskOutcome::TemplateError,
                    Some(pb::RenderError {
                        error_class: pb::ErrorClass::Template as i32,
                        code: pb::ErrorCode::CompNotFound as i32,
                        message: "aerender ERROR: No comp was found with the given name.".into(),
                    }),
                ),
                Answer::WhenStopped => {
                    let reason = stop.stopped().await;
                    stops.lock().unwrap().push(reason);
                    (pb::TaskOutcome::Canceled, None)
                }
            };
            let result = agent_pb::TaskResult {
                task_id: task.task_id,
                lease_epoch: task.lease_epoch,
                outcome: outcome as i32,
                exit_code: Some(1),
                error,
                log_tail,
                timings: Some(agent_pb::TaskTimings { total_ms: 10, ..Default::default() }),
                ..Default::default()
            };
            let (task_id, lease_epoch) = (result.task_id.clone(), result.lease_epoch);
            let _ = events.send(TaskEvent::Result(result));
            if let Answer::TemplateErrorAndCrash(bytes) = answer {
                let report_text = format!("Process: aerender [42]\n{}", "x".repeat(bytes));
                let _ = events.send(TaskEvent::Crash(agent_pb::CrashReport {
                    crash_id: uuid::Uuid::new_v4().to_string(),
                    kind: pb::CrashKind::AeCrash as i32,
                    task_id,
                    lease_epoch,
                    message: "Process: aerender [42]".into(),
                    report_text,
                    ..Default::default()
                }));
            }
        });
    }
}

/// An agent process, as far as the session goes: enrolled once into `state`, then running.
struct Agent {
    stop: Option<oneshot::Sender<()>>,
    running: tokio::task::JoinHandle<()>,
    stops: Arc<Mutex<Vec<StopReason>>>,
}

impl Agent {
    async fn start(o: &Orchestrator, state: &Path, answer: Answer) -> (Agent, NodeCredential) {
        let spec = AgentSpec::default();
        let credential = match NodeCredential::load(state).unwrap() {
            Some(credential) => credential,
            None => {
                let token = o.join_token(&[]).await;
                let (credential, _) = enroll(o.channel(), spec.enroll_request(&token)).await.unwrap();
                credential.store(state).unwrap();
                credential
            }
        };
        let info = AgentInfo {
            agent_version: "0.1.0".into(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            tags: Vec::new(),
            heartbeat_fallback: Duration::from_secs(5),
        };
        let stops = Arc::new(Mutex::new(Vec::new()));
        let executor = Arc::new(TestExecutor { answer, stops: Arc::clone(&stops) });
        let outbox = Outbox::open(&state.join("outbox")).unwrap();
        let session = Session::new(
            stream::endpoint(&format!("http://{}", o.addr), None).unwrap(),
            credential.clone(),
            info,
            TestNode { facts: spec.facts() },
            executor,
            TaskTable::new(2, false),
            outbox,
        )
        .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(async move {
            session
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (Agent { stop: Some(stop), running, stops }, credential)
    }

    async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.running).await.unwrap().unwrap();
    }
}

fn outbox_len(state: &Path) -> usize {
    std::fs::read_dir(state.join("outbox")).map_or(0, |d| d.filter(|e| e.is_ok()).count())
}

async fn until_outbox_empty(state: &Path) {
    for _ in 0..500 {
        if outbox_len(state) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the outbox still holds {} messages", outbox_len(state));
}

#[tokio::test]
async fn an_agent_enrols_once_and_comes_back_online_after_a_restart() {
    let o = Orchestrator::start().await;
    let state = tempfile::tempdir().unwrap();
    let (agent, credential) = Agent::start(&o, state.path(), Answer::TemplateError).await;
    let node = credential.node_id().to_string();
    let online = format!("SELECT orchestrator_id IS NOT NULL FROM render.nodes WHERE id = '{node}'");
    o.until("the node is online", &online).await;
    o.until(
        "a heartbeat is recorded",
        &format!("SELECT count(*) >= 1 FROM render.node_health_logs WHERE node_id = '{node}'"),
    )
    .await;
    agent.shut_down().await;
    o.until("the node is offline", &format!("SELECT orchestrator_id IS NULL FROM render.nodes WHERE id = '{node}'"))
        .await;

    // The restarted agent uses its stored credential: no second node, no second token.
    let (agent, again) = Agent::start(&o, state.path(), Answer::TemplateError).await;
    assert_eq!(again.node_id(), node);
    o.until("the node is online again", &online).await;
    assert_eq!(o.count("SELECT count(*) FROM render.nodes").await, 1);
    agent.shut_down().await;
}

#[tokio::test]
async fn work_is_accepted_and_its_result_is_acked_out_of_the_outbox() {
    let o = Orchestrator::start().await;
    let state = tempfile::tempdir().unwrap();
    let (agent, _) = Agent::start(&o, state.path(), Answer::TemplateError).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], chunk_size: 5, ..JobSeed::default() })
            .await;
    o.until(
        "the job failed on the template error",
        &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    until_outbox_empty(state.path()).await;
    agent.shut_down().await;
}

/// A result larger than the orchestrator takes (a long log tail) is cut to fit the limit its
/// Welcome announced, keeping the log's end, and recorded; nothing stays in the outbox.
#[tokio::test]
async fn a_result_over_the_message_limit_is_cut_to_fit_and_recorded() {
    let o = Orchestrator::start_with(|settings| settings.max_message_bytes = 16 * 1024).await;
    let state = tempfile::tempdir().unwrap();
    let (agent, _) = Agent::start(&o, state.path(), Answer::TemplateErrorWithLog(200 * 1024)).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], chunk_size: 5, ..JobSeed::default() })
            .await;
    o.until(
        "the job failed on the template error",
        &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    until_outbox_empty(state.path()).await;
    let tail: String = sqlx::query_scalar(
        "SELECT coalesce(a.log_tail, '') FROM render.frame_job_attempts a WHERE a.job_id = $1 AND a.outcome IS NOT NULL",
    )
    .bind(job.job_id)
    .fetch_one(o.pool())
    .await
    .unwrap();
    assert!(tail.len() > 1024 && tail.len() < 16 * 1024, "{} bytes of log kept", tail.len());
    assert!(tail.ends_with("\n") && tail.lines().last().unwrap().starts_with("PROGRESS: frame "), "the end is kept");
    agent.shut_down().await;
}

/// A result the orchestrator cannot record for now (its database refuses the write: UNAVAILABLE)
/// is sent again on the same stream after a backoff, and recorded once the database takes it.
#[tokio::test]
async fn a_result_refused_as_unavailable_is_sent_again_on_the_same_stream() {
    let o = Orchestrator::start().await;
    let state = tempfile::tempdir().unwrap();
    let (agent, credential) = Agent::start(&o, state.path(), Answer::TemplateError).await;
    let node = credential.node_id().to_string();
    o.until("the node is online", &format!("SELECT orchestrator_id IS NOT NULL FROM render.nodes WHERE id = '{node}'"))
        .await;
    let connected_at = "SELECT connected_at::text FROM render.nodes WHERE id = $1::uuid";
    let first_connection: String = sqlx::query_scalar(connected_at).bind(&node).fetch_one(o.pool()).await.unwrap();
    // Every attempt to record a result fails until the column is back.
    sqlx::query("ALTER TABLE render.frame_job_attempts RENAME COLUMN log_tail TO log_tail_away")
        .execute(o.pool())
        .await
        .unwrap();
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], chunk_size: 5, ..JobSeed::default() })
            .await;
    for _ in 0..500 {
        if outbox_len(state.path()) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(outbox_len(state.path()), 1, "the result waits in the outbox");
    // Refused a few times meanwhile.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(outbox_len(state.path()), 1, "still waiting while the database refuses it");
    sqlx::query("ALTER TABLE render.frame_job_attempts RENAME COLUMN log_tail_away TO log_tail")
        .execute(o.pool())
        .await
        .unwrap();
    o.until(
        "the job failed on the template error",
        &format!("SELECT state = 'failed' FROM render.render_jobs WHERE id = '{}'", job.job_id),
    )
    .await;
    until_outbox_empty(state.path()).await;
    let connection: String = sqlx::query_scalar(connected_at).bind(&node).fetch_one(o.pool()).await.unwrap();
    assert_eq!(connection, first_connection, "sent again on the same stream, not after a reconnect");
    agent.shut_down().await;
}

/// A crash report over the orchestrator's own limit for its text (256 KiB; within the stream's)
/// is refused as OVERSIZED: the agent halves the text, keeping its start, and sends it again.
#[tokio::test]
async fn a_crash_report_refused_as_oversized_is_cut_and_sent_again() {
    let o = Orchestrator::start().await;
    let state = tempfile::tempdir().unwrap();
    let (agent, credential) = Agent::start(&o, state.path(), Answer::TemplateErrorAndCrash(300 * 1024)).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], chunk_size: 5, ..JobSeed::default() })
            .await;
    let node = credential.node_id();
    o.until("the crash is recorded", &format!("SELECT count(*) = 1 FROM render.node_crashes WHERE node_id = '{node}'"))
        .await;
    let (text, crashed_job): (String, Option<uuid::Uuid>) =
        sqlx::query_as("SELECT details->>'report_text', job_id FROM render.node_crashes WHERE node_id = $1::uuid")
            .bind(node)
            .fetch_one(o.pool())
            .await
            .unwrap();
    assert_eq!(crashed_job, Some(job.job_id));
    assert!(text.starts_with("Process: aerender [42]\n"), "the start is kept");
    assert!(text.len() > 100 * 1024 && text.len() <= 256 * 1024, "{} bytes", text.len());
    until_outbox_empty(state.path()).await;
    agent.shut_down().await;
}

#[tokio::test]
async fn a_canceled_job_stops_the_running_task() {
    let o = Orchestrator::start().await;
    let state = tempfile::tempdir().unwrap();
    let (agent, _) = Agent::start(&o, state.path(), Answer::WhenStopped).await;
    let job =
        seed_job(o.pool(), JobSeed { segments: vec![("Main".into(), 0, 4)], chunk_size: 5, ..JobSeed::default() })
            .await;
    o.until(
        "the chunk is running",
        &format!(
            "SELECT count(*) = 1 FROM render.frame_jobs WHERE job_id = '{}' AND state IN ('leased', 'running')",
            job.job_id
        ),
    )
    .await;
    cancel_job(o.pool(), job.job_id).await;
    for _ in 0..500 {
        if !agent.stops.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(agent.stops.lock().unwrap().as_slice(), [StopReason::Canceled]);
    agent.shut_down().await;
}

/// A simulator project with one comp.
const PROJECT: &str = r##"{"compositions": [{"name": "Main", "width": 320, "height": 180, "fps": 30, "duration": 60,
    "layers": [{"name": "Title", "kind": "text", "text": "Over TLS", "font_size": 24, "position": [10, 20]}]}]}"##;

/// A CA and a certificate for `localhost` it signed, as PEM: (CA, certificate, key).
fn private_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "FlatRender test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let certificate = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &issuer).unwrap();
    (ca.pem(), certificate.pem(), key.serialize_pem())
}

/// The agent binary reaches an orchestrator that speaks only TLS, trusting the private CA named
/// by `ca_file`: it enrols, its node comes online, and it renders a job (template fetched,
/// frames stored, all over TLS). Without the CA (the system's roots do not
/// know it) the handshake fails and the agent says so.
#[tokio::test]
async fn the_agent_speaks_tls_to_an_orchestrator_with_a_private_ca() {
    let (ca, cert, key) = private_pki();
    let tls = flatrender_kit::server::ServerTls { cert_pem: cert.into_bytes(), key_pem: key.into_bytes() };
    let o = Orchestrator::start_tls(tls, ca.as_bytes()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let address = format!("https://localhost:{}", o.addr.port());
    let agent = |state: &Path, ca: Option<&Path>| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_flatrender-agent"));
        command
            .env("FLATRENDER_AGENT_ORCHESTRATOR", &address)
            .env("FLATRENDER_AGENT_STATE_DIR", state)
            .env("FLATRENDER_AGENT_AERENDER", env!("CARGO_BIN_EXE_aerender-sim"))
            .env_remove("FLATRENDER_AGENT_CA_FILE")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        if let Some(ca) = ca {
            command.env("FLATRENDER_AGENT_CA_FILE", ca);
        }
        command
    };

    let untrusting = dir.path().join("untrusting");
    let token = o.join_token(&[]).await;
    let output = agent(&untrusting, None).env("FLATRENDER_AGENT_JOIN_TOKEN", &token).output().await.unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(said.contains("cannot reach the orchestrator to enrol"), "{said}");
    assert_eq!(o.count("SELECT count(*) FROM render.nodes").await, 0);

    let state = dir.path().join("trusting");
    let mut running = agent(&state, Some(&ca_file)).env("FLATRENDER_AGENT_JOIN_TOKEN", &token).spawn().unwrap();
    o.until("the node is online over TLS", "SELECT count(*) = 1 FROM render.nodes WHERE orchestrator_id IS NOT NULL")
        .await;
    // The byte RPCs go the same way: the template is fetched and every frame stored.
    let alice = support::Principal::user(uuid::Uuid::new_v4());
    let bundle = {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        zip.start_file("project.aepx.json", zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(PROJECT.as_bytes()).unwrap();
        zip.finish().unwrap().into_inner()
    };
    let kind = flatrender_proto::flatrender::file::v1::FileKind::TemplateBundle;
    let template = o.upload(&alice, alice.tenant, "template.zip", kind, &bundle).await;
    let submit = pb::SubmitRenderRequest {
        segments: vec![support::segment("Main", "0-4")],
        ..support::request(&template, "over-tls")
    };
    let job = o.renders(&alice).submit_render(submit).await.unwrap().into_inner().render.unwrap();
    o.until(
        "every frame is stored over TLS",
        &format!("SELECT count(*) = 5 FROM render.frame_results WHERE job_id = '{}'", job.id),
    )
    .await;
    let pid = running.id().unwrap();
    std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), running.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
}
