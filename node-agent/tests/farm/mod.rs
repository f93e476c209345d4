//! A small render farm for whole-system tests: the orchestrator and the file service in this
//! process over a fresh PostgreSQL database, a customer with a template bundle (a zip with a
//! simulator project), and agents running the real session, cache, transfers and worker with the
//! aerender simulator.

// Each test binary uses part of the farm.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use flatrender_agent::assembly::Tools;
use flatrender_agent::cache::{Cache, CacheEvent};
use flatrender_agent::crash_watch::CrashWatch;
use flatrender_agent::process::Limits;
use flatrender_agent::session::credential::NodeCredential;
use flatrender_agent::session::outbox::Outbox;
use flatrender_agent::session::stream::{self, AgentInfo, Session};
use flatrender_agent::session::tasks::TaskTable;
use flatrender_agent::strays::Tracker;
use flatrender_agent::transfer::Transfers;
use flatrender_agent::work::{AeInstall, BundleSources, Resources, WorkConfig, Worker};
use flatrender_proto::flatrender::file::v1 as file_pb;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::common::TestNode;
use crate::support::{AgentSpec, Orchestrator, Principal, test_settings};

pub const SIM: &str = env!("CARGO_BIN_EXE_aerender-sim");

/// The simulator project of the standard bundle: one 1280x720 comp with an editable title;
/// `faults` go into the project (the simulator's per-template faults).
pub fn project(faults: &[&str]) -> String {
    format!(
        r##"{{
    "compositions": [{{
        "name": "Main", "width": 1280, "height": 720, "fps": 30, "duration": 300,
        "background": "#203040",
        "layers": [
            {{"name": "Title", "kind": "text", "text": "Template", "font": "Montserrat-Bold",
             "font_size": 48, "fill": "#ffffff", "position": [40, 60]}}
        ]
    }}],
    "faults": {}
}}"##,
        serde_json::to_string(faults).unwrap()
    )
}

/// A template bundle holding `project`.
pub fn bundle(project: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file("project.aepx.json", options).unwrap();
    zip.write_all(project.as_bytes()).unwrap();
    zip.finish().unwrap().into_inner()
}

/// The orchestrator and the file service with short timings (and `tune` on top), and a customer.
pub async fn stack_with(tune: impl FnOnce(&mut flatrender_render::settings::Settings)) -> (Orchestrator, Principal) {
    let o = Orchestrator::start_with_files_and(|settings| {
        let api = settings.api.clone();
        *settings = test_settings();
        settings.api = api;
        tune(settings);
    })
    .await;
    (o, Principal::user(Uuid::new_v4()))
}

/// [`stack_with`] without changes, and the standard template uploaded as the customer's.
pub async fn stack() -> (Orchestrator, Principal, file_pb::File) {
    let (o, alice) = stack_with(|_| {}).await;
    let template = upload_template(&o, &alice, &[]).await;
    (o, alice, template)
}

/// The standard template with `faults` in its project, uploaded as `owner`'s.
pub async fn upload_template(o: &Orchestrator, owner: &Principal, faults: &[&str]) -> file_pb::File {
    let bytes = bundle(&project(faults));
    o.upload(owner, owner.tenant, "template.zip", file_pb::FileKind::TemplateBundle, &bytes).await
}

/// How a test agent runs.
pub struct AgentOptions<'a> {
    /// Environment for the simulator (its knobs).
    pub env: &'a [(&'a str, &'a str)],
    /// The no-output watchdog.
    pub no_output: Duration,
    /// A crash-report folder to watch.
    pub crash_dir: Option<&'a Path>,
    /// Takes assembly tasks (ffmpeg from PATH, installed by `make test`).
    pub assemble: bool,
    /// How long a task's downloads may take (the orchestrator sets no limit of its own).
    pub download_limit: Duration,
    /// Tasks run at once.
    pub slots: u32,
}

impl Default for AgentOptions<'_> {
    fn default() -> Self {
        Self {
            env: &[],
            no_output: Duration::from_secs(30),
            crash_dir: None,
            assemble: false,
            download_limit: Duration::from_secs(120),
            slots: 1,
        }
    }
}

/// A running agent: its node, its template cache's events, and its stop.
pub struct RunningAgent {
    pub node_id: Uuid,
    pub cache_events: tokio::sync::mpsc::UnboundedReceiver<CacheEvent>,
    stop: Option<oneshot::Sender<()>>,
    ended: Option<tokio::task::JoinHandle<()>>,
}

impl RunningAgent {
    /// Stops the agent (it says goodbye) and waits until its session has ended.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(ended) = self.ended.take() {
            tokio::time::timeout(Duration::from_secs(20), ended)
                .await
                .expect("the agent stops within 20 s")
                .expect("the agent's session ends cleanly");
        }
    }
}

/// Enrols an agent into `state` and runs it with the real worker until stopped.
pub async fn agent(o: &Orchestrator, state: &Path, options: AgentOptions<'_>) -> RunningAgent {
    let spec = AgentSpec {
        name: format!("agent-{}", &Uuid::new_v4().simple().to_string()[..8]),
        ffmpeg: options.assemble,
        slots: options.slots,
        ..AgentSpec::default()
    };
    let token = o.join_token(&[]).await;
    let (credential, _) = stream::enroll(o.channel(), spec.enroll_request(&token)).await.unwrap();
    credential.store(state).unwrap();
    let credential = NodeCredential::load(state).unwrap().unwrap();
    let node_id = credential.node_id().parse().unwrap();
    let channel = stream::endpoint(&format!("http://{}", o.addr), None).unwrap().connect().await.unwrap();
    let transfers = Transfers::new(channel, &credential).unwrap();
    let bundles = BundleSources::new(transfers.clone());
    let (cache, cache_events) = Cache::open(state.join("cache"), 1 << 30, bundles.clone()).await.unwrap();
    let config = WorkConfig {
        work_root: state.join("work"),
        installs: spec.ae_versions.iter().map(|v| AeInstall { version: v.clone(), aerender: SIM.into() }).collect(),
        env: options.env.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        default_limits: Limits { no_output: options.no_output, max_run: Duration::from_secs(120) },
        default_download_limit: options.download_limit,
        tracker: Some(Arc::new(Tracker::open(state.join("renderers.json"), &["aerender-sim"]).unwrap())),
        crash_watch: options.crash_dir.map(|dir| Arc::new(CrashWatch::start(vec![dir.to_path_buf()]).unwrap())),
        crash_settle: Duration::from_millis(300),
        tools: options.assemble.then(Tools::default),
    };
    let worker = Arc::new(Worker::new(Resources { config, transfers, cache, bundles }));
    let info = AgentInfo {
        agent_version: "0.1.0".into(),
        instance_id: Uuid::new_v4().to_string(),
        tags: Vec::new(),
        heartbeat_fallback: Duration::from_secs(5),
    };
    let session = Session::new(
        stream::endpoint(&format!("http://{}", o.addr), None).unwrap(),
        credential,
        info,
        TestNode { facts: spec.facts() },
        worker,
        TaskTable::new(options.slots, false),
        Outbox::open(&state.join("outbox")).unwrap(),
    )
    .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let ended = tokio::spawn(async move {
        session
            .run(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    RunningAgent { node_id, cache_events, stop: Some(stop), ended: Some(ended) }
}
