//! The daemon: the configuration turned into a running agent — the node credential (enrolling
//! once if there is none), the machine sampler, the template cache, the worker and the session,
//! until a shutdown signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tokio::sync::mpsc;

use crate::aerender::script_patch::{self, PatchOutcome};
use crate::assembly::Tools;
use crate::cache::{Cache, CacheEvent, EvictOutcome, EvictReason};
use crate::config::Config;
use crate::crash_watch::CrashWatch;
use crate::machine::ae::{self, AeInstall};
use crate::machine::{Sampler, Software, TaskLoad};
use crate::session::credential::NodeCredential;
use crate::session::outbox::Outbox;
use crate::session::stream::{self, AgentInfo, NodeView, Session};
use crate::session::tasks::{TaskEvent, TaskTable};
use crate::strays::Tracker;
use crate::transfer::Transfers;
use crate::work::{self, BundleSources, Resources, WorkConfig, Worker};

/// The agent's version, reported in Hello and at enrolment.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Session(#[from] stream::SessionError),
}

fn setup(what: &str) -> impl Fn(&dyn std::fmt::Display) -> DaemonError + '_ {
    move |e| DaemonError::Setup(format!("{what}: {e}"))
}

/// The agent's runtime: one thread, as the agent waits on a stream, a timer and a child process,
/// and a small runtime keeps its idle footprint small. Blocking work (hashing, unpacking) goes to
/// tokio's blocking pool.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Runs the agent until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    for dir in [&config.state_dir, &config.work_dir, &config.cache_dir] {
        std::fs::create_dir_all(dir).map_err(|e| setup(&format!("cannot create {}", dir.display()))(&e))?;
    }
    let installs = patched(installs(&config).await);
    if installs.is_empty() {
        tracing::warn!("no After Effects install found: this node will get no render work");
    }
    // The orchestrator sends assembly to nodes that report ffmpeg: only when ffmpeg and ffprobe
    // both run.
    let (tools, ffmpeg_version) = assembly_tools(&config).await;
    let mut sampler =
        Sampler::new(&config.work_dir, &config.cache_dir).map_err(|e| setup("the machine sampler")(&e))?;
    let software = Software { ae_installs: installs.clone(), ffmpeg_version, simulated: config.simulator };
    let facts: pb::MachineFacts = sampler.facts(software.clone()).into();

    let ca_pem = match &config.ca_file {
        Some(path) if config.tls() => {
            let pem = std::fs::read(path).map_err(|e| setup(&format!("the CA file {}", path.display()))(&e))?;
            // Otherwise no root would be trusted and every handshake would fail as unknown issuer.
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(DaemonError::Setup(format!("the CA file {} holds no PEM certificate", path.display())));
            }
            Some(pem)
        }
        Some(_) => {
            tracing::warn!("ca_file is set but the orchestrator address is not https: it is not used");
            None
        }
        None => None,
    };
    let endpoint = stream::endpoint(&config.orchestrator, ca_pem.as_deref())?;
    let credential = credential(&config, &endpoint, &facts).await?;
    tracing::info!(node = credential.node_id(), orchestrator = %config.orchestrator, "starting");

    // The byte RPCs share one lazily connected channel; the session opens its own per stream.
    let transfers = Transfers::new(endpoint.connect_lazy(), &credential).map_err(|e| setup("transfers")(&e))?;
    let bundles = BundleSources::new(transfers.clone());
    let (cache, cache_events) = Cache::open(&config.cache_dir, config.cache_size.bytes(), bundles.clone())
        .await
        .map_err(|e| setup("the template cache")(&e))?;
    let work_config = WorkConfig {
        work_root: config.work_dir.clone(),
        installs: installs
            .iter()
            .map(|i| work::AeInstall { version: i.version.clone(), aerender: i.aerender.clone() })
            .collect(),
        env: Vec::new(),
        default_limits: config.render_limits(),
        default_download_limit: config.max_download_time,
        tracker: Some(tracker(&config, &installs).await?),
        crash_watch: crash_watch(&config),
        crash_settle: work::DEFAULT_CRASH_SETTLE,
        tools,
    };
    let worker = Arc::new(Worker::new(Resources { config: work_config, transfers, cache: cache.clone(), bundles }));
    let info = AgentInfo {
        agent_version: AGENT_VERSION.into(),
        instance_id: uuid::Uuid::new_v4().to_string(),
        tags: config.tags.clone(),
        heartbeat_fallback: config.health_interval,
    };
    let outbox = Outbox::open(&config.state_dir.join("outbox")).map_err(|e| setup("the outbox")(&e))?;
    let node = Machine { sampler, software, cache: cache.clone(), cache_limit: config.cache_size.bytes() };
    let session =
        Session::new(endpoint, credential, info, node, worker, TaskTable::new(config.slots, config.draining), outbox)?;
    tokio::spawn(forward_cache_events(cache_events, session.events(), cache));
    session.run(shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// The configured installs (or those found in the standard places); an `aerender` override
/// (the simulator) stands in for each, or for one reporting its own version when none is found.
async fn installs(config: &Config) -> Vec<AeInstall> {
    let mut installs = ae::installs(config);
    if let Some(aerender) = &config.aerender {
        if installs.is_empty() {
            let build = ae::probe_build(aerender, Duration::from_secs(10)).await;
            let version = build.as_deref().map(major_minor).unwrap_or_else(|| "0.0".into());
            installs.push(AeInstall {
                version,
                install_dir: aerender.parent().map(PathBuf::from).unwrap_or_default(),
                aerender: aerender.clone(),
                build,
                script_patch_version: 0,
            });
        } else {
            for install in &mut installs {
                install.aerender = aerender.clone();
            }
        }
    }
    installs
}

/// The installs whose `commandLineRenderer.jsx` takes `-r` (patched now if it was not): one
/// that cannot be patched could not run a task's injection script, so it is left out, loudly.
fn patched(installs: Vec<AeInstall>) -> Vec<AeInstall> {
    installs
        .into_iter()
        .filter_map(|mut install| match script_patch::ensure_patched(&install.aerender) {
            Ok(outcome) => {
                install.script_patch_version = match outcome {
                    PatchOutcome::NothingToPatch => 0,
                    PatchOutcome::NewerPatchPresent { version } => version,
                    _ => script_patch::PATCH_VERSION,
                };
                if !matches!(outcome, PatchOutcome::AlreadyCurrent | PatchOutcome::NothingToPatch) {
                    tracing::info!(version = %install.version, ?outcome, script = %script_patch::script_path(&install.aerender).display(), "aerender can now run scripts (-r)");
                }
                Some(install)
            }
            Err(error) => {
                tracing::error!(version = %install.version, %error, "this After Effects install is not used: its commandLineRenderer.jsx cannot run injection scripts");
                None
            }
        })
        .collect()
}

/// Patches (or with `undo`, restores) every install's `commandLineRenderer.jsx`, for
/// `flatrender-agent patch-ae` run once with the rights to write into the After Effects folder.
pub async fn patch_installs(config: &Config, undo: bool) -> Result<Vec<String>, DaemonError> {
    let mut done = Vec::new();
    for install in installs(config).await {
        let script = script_patch::script_path(&install.aerender);
        let what = if undo {
            match script_patch::unpatch(&install.aerender) {
                Ok(true) => "restored".to_string(),
                Ok(false) => "not patched".to_string(),
                Err(error) => return Err(DaemonError::Setup(error.to_string())),
            }
        } else {
            match script_patch::ensure_patched(&install.aerender) {
                Ok(outcome) => format!("{outcome:?}"),
                Err(error) => return Err(DaemonError::Setup(error.to_string())),
            }
        };
        done.push(format!("After Effects {}: {} ({what})", install.version, script.display()));
    }
    Ok(done)
}

/// The record of the renderers this agent starts, kept in the state directory so that what a
/// crashed agent left running is found after its restart; swept once now, and before each task.
async fn tracker(config: &Config, installs: &[AeInstall]) -> Result<Arc<Tracker>, DaemonError> {
    let mut names: Vec<String> =
        ["AfterFX", "AfterFX.exe", "After Effects", "aerender", "aerender.exe"].map(String::from).into();
    names.extend(installs.iter().filter_map(|i| Some(i.aerender.file_name()?.to_string_lossy().into_owned())));
    let tracker =
        Tracker::open(config.state_dir.join("renderers.json"), &names).map_err(|e| setup("the renderer ledger")(&e))?;
    let tracker = Arc::new(tracker);
    // Off the runtime's one thread: a sweep waits for the processes it kills.
    let sweeping = Arc::clone(&tracker);
    if let Ok(Err(error)) = tokio::task::spawn_blocking(move || sweeping.sweep()).await {
        tracing::warn!(%error, "renderer processes left by an earlier run were not looked for");
    }
    Ok(tracker)
}

/// The crash-report folders, watched for the whole run (a crash report is written while the
/// crashing process dies, before the agent knows of the crash).
fn crash_watch(config: &Config) -> Option<Arc<CrashWatch>> {
    // None configured (Linux, where After Effects does not run): a crash waits for no report.
    if config.crash_dirs.is_empty() {
        return None;
    }
    match CrashWatch::start(config.crash_dirs.clone()) {
        Ok(watch) => Some(Arc::new(watch)),
        Err(error) => {
            tracing::warn!(%error, "crash-report folders are not watched: crash reports go without the reporter's file");
            None
        }
    }
}

/// ffmpeg and ffprobe as configured, and ffmpeg's version, when both run.
async fn assembly_tools(config: &Config) -> (Option<Tools>, Option<String>) {
    let timeout = Duration::from_secs(10);
    let ffmpeg = crate::machine::probe_ffmpeg(&config.ffmpeg, timeout).await;
    let ffprobe = crate::machine::probe_ffmpeg(&config.ffprobe, timeout).await;
    match (ffmpeg, ffprobe) {
        (Some(version), Some(_)) => {
            let tools = Tools {
                ffmpeg: config.ffmpeg.clone(),
                ffprobe: config.ffprobe.clone(),
                font: crate::assembly::default_font(),
            };
            tracing::info!(%version, "ffmpeg found: this node assembles");
            (Some(tools), Some(version))
        }
        _ => {
            tracing::info!(ffmpeg = %config.ffmpeg.display(), ffprobe = %config.ffprobe.display(), "ffmpeg or ffprobe does not run: this node does not assemble");
            (None, None)
        }
    }
}

/// "24.2.1x2" → "24.2".
fn major_minor(build: &str) -> String {
    build.split(['.', 'x']).take(2).collect::<Vec<_>>().join(".")
}

/// The stored node credential, or a new one from the join token.
async fn credential(
    config: &Config,
    endpoint: &tonic::transport::Endpoint,
    facts: &pb::MachineFacts,
) -> Result<NodeCredential, DaemonError> {
    if let Some(credential) = NodeCredential::load(&config.state_dir).map_err(|e| setup("the node credential")(&e))? {
        return Ok(credential);
    }
    let token = config.join_token.as_ref().ok_or_else(|| {
        DaemonError::Setup(format!(
            "this machine is not enrolled: set a join token (--join-token or FLATRENDER_AGENT_JOIN_TOKEN) once; the node credential is then kept in {}",
            config.state_dir.display()
        ))
    })?;
    let request = agent_pb::EnrollRequest {
        join_token: token.expose().to_string(),
        facts: Some(facts.clone()),
        agent_version: AGENT_VERSION.into(),
        name: config.node_name.clone().unwrap_or_default(),
        slots: config.slots,
        tags: config.tags.clone(),
    };
    let channel = endpoint.connect().await.map_err(|e| setup("cannot reach the orchestrator to enrol")(&e))?;
    let (credential, response) =
        stream::enroll(channel, request).await.map_err(|e| setup("enrolment failed")(&e.message()))?;
    credential.store(&config.state_dir).map_err(|e| setup("the node credential")(&e))?;
    tracing::info!(node = credential.node_id(), name = %response.name, "enrolled");
    Ok(credential)
}

/// The machine as the session reports it.
struct Machine {
    sampler: Sampler,
    software: Software,
    cache: Cache<BundleSources>,
    cache_limit: u64,
}

impl NodeView for Machine {
    fn facts(&mut self) -> pb::MachineFacts {
        self.sampler.facts(self.software.clone()).into()
    }

    fn health(&mut self, running_tasks: u32, slots: u32) -> pb::NodeHealthSample {
        let usage = self.cache.usage();
        let load = TaskLoad {
            running_tasks,
            slots,
            cache_used_bytes: usage.used,
            cache_limit_bytes: usage.bound,
            task_roots: Vec::new(),
        };
        self.sampler.sample(load).into()
    }

    fn cache(&self) -> (Vec<pb::CachedTemplate>, u64) {
        let entries = self
            .cache
            .snapshot()
            .into_iter()
            .map(|e| pb::CachedTemplate { sha256: e.sha256, size_bytes: e.bytes, ..pb::CachedTemplate::default() })
            .collect();
        (entries, self.cache_limit)
    }

    fn evict(&mut self, sha256: &str) -> Result<(), String> {
        // The cache works off the async threads; the outcome is reported as a cache change.
        let cache = self.cache.clone();
        let sha256 = sha256.to_string();
        tokio::spawn(async move {
            match cache.evict(&sha256).await {
                Ok(EvictOutcome::Deferred { pins }) => {
                    tracing::info!(%sha256, pins, "eviction deferred until running tasks release the template")
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%sha256, %error, "could not evict a template"),
            }
        });
        Ok(())
    }
}

/// Cache additions and evictions, as CacheChange messages.
async fn forward_cache_events(
    mut events: mpsc::UnboundedReceiver<CacheEvent>,
    session: mpsc::UnboundedSender<TaskEvent>,
    cache: Cache<BundleSources>,
) {
    while let Some(event) = events.recv().await {
        let (kind, sha256, bytes) = match event {
            CacheEvent::Added { sha256, bytes } => (agent_pb::CacheChangeKind::Added, sha256, bytes),
            CacheEvent::Evicted { sha256, bytes, reason } => {
                let kind = match reason {
                    EvictReason::Lru => agent_pb::CacheChangeKind::EvictedLru,
                    EvictReason::Requested => agent_pb::CacheChangeKind::EvictedByRequest,
                    EvictReason::Corrupt => agent_pb::CacheChangeKind::RemovedCorrupt,
                };
                (kind, sha256, bytes)
            }
        };
        let change = agent_pb::CacheChange {
            changes: vec![agent_pb::CacheChangeEntry { kind: kind as i32, sha256, size_bytes: bytes }],
            cache_used_bytes: cache.usage().used,
        };
        if session.send(TaskEvent::Cache(change)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_name_their_version() {
        assert_eq!(major_minor("24.2.1x2"), "24.2");
        assert_eq!(major_minor("25.0x13"), "25.0");
    }
}
