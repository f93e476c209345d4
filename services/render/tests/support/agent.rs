//! A simulated render agent speaking the real Session protocol over tonic.
//!
//! It is configured like a real agent (slots, tags, After Effects versions, ffmpeg, GPU, cache)
//! and behaves as told for each assignment ([`Behaviour`]): complete it with frame reports,
//! fail it with a template or machine error, hang, or leave everything to the test. It
//! heartbeats on the interval the Welcome gives, lists what it holds, acknowledges commands, and
//! refuses assignments beyond its slots (counted, so tests can assert it never happened). Every
//! message it receives is an [`AgentEvent`] the test awaits.
//!
//! Frames are uploaded before they are reported, as a real agent does, in the cheap form: the
//! orchestrator of these tests has no file service, so instead of streaming bytes through
//! UploadObject the agent records what UploadObject records once it stored them
//! (`render.object_uploads`: task, epoch, frame, SHA-256, size, file id) just before it sends a
//! FrameReport or TaskResult naming them. [`ok_frame`] names that simulated upload; a frame with
//! any other file id is sent as it is (tests of refused reports use that).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use uuid::Uuid;

use flatrender_render::agents::reports::{BatchKind, GroupCommit};

use super::api::AgentClient;
use super::{Orchestrator, PATIENCE};

use agent_pb::session_request::Payload as In;
use agent_pb::session_response::Payload as Out;

/// A node's identity from enrolment.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Node id.
    pub node_id: Uuid,
    /// `frn1.<node id>.<secret>`.
    pub credential: String,
    /// Node name.
    pub name: String,
}

/// What the simulated agent does with an assignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Accept, report every frame, succeed.
    Complete,
    /// Accept, fail with a template error.
    TemplateError,
    /// Accept, fail with a machine error.
    MachineError,
    /// Accept and never finish (keeps heartbeating).
    Hang,
    /// Hold the task but send nothing about it; the test drives.
    Manual,
}

/// The simulated machine and its configuration.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// Host name.
    pub hostname: String,
    /// Node name asked for at enrolment (empty: from the host name).
    pub name: String,
    /// Concurrent tasks.
    pub slots: u32,
    /// The agent's tags.
    pub tags: Vec<String>,
    /// Installed After Effects versions.
    pub ae_versions: Vec<String>,
    /// Whether ffmpeg is installed.
    pub ffmpeg: bool,
    /// Whether it has a GPU.
    pub gpu: bool,
    /// Physical memory.
    pub ram_bytes: u64,
    /// Template bundles in its cache.
    pub cache: Vec<[u8; 32]>,
    /// Starts drained.
    pub draining: bool,
    /// What it does with assignments.
    pub behaviour: Behaviour,
    /// Whether it sends Hello first (false: the test sends everything).
    pub hello: bool,
    /// Tasks it says it still holds in Hello.
    pub held: Vec<agent_pb::HeldTask>,
}

impl Default for AgentSpec {
    fn default() -> Self {
        Self {
            hostname: format!("sim-{}", &Uuid::new_v4().simple().to_string()[..8]),
            name: String::new(),
            slots: 1,
            tags: Vec::new(),
            ae_versions: vec!["24.3".into()],
            ffmpeg: false,
            gpu: false,
            ram_bytes: 32 << 30,
            cache: Vec::new(),
            draining: false,
            behaviour: Behaviour::Complete,
            hello: true,
            held: Vec::new(),
        }
    }
}

impl AgentSpec {
    /// The machine facts it reports.
    pub fn facts(&self) -> pb::MachineFacts {
        pb::MachineFacts {
            hostname: self.hostname.clone(),
            os: pb::OperatingSystem::Linux as i32,
            os_version: "Debian 12".into(),
            arch: "x86_64".into(),
            cpu_model: "Simulated CPU".into(),
            cpu_cores: 8,
            ram_bytes: self.ram_bytes,
            gpus: if self.gpu {
                vec![pb::GpuInfo { name: "Simulated GPU".into(), ..Default::default() }]
            } else {
                vec![]
            },
            ae_installs: self
                .ae_versions
                .iter()
                .map(|v| pb::AeInstall { version: v.clone(), ..Default::default() })
                .collect(),
            ffmpeg_version: if self.ffmpeg { "ffmpeg version 6.1".into() } else { String::new() },
            locale: "en_US".into(),
            simulated: true,
        }
    }

    /// Its Enroll request with `join_token`.
    pub fn enroll_request(&self, join_token: &str) -> agent_pb::EnrollRequest {
        agent_pb::EnrollRequest {
            join_token: join_token.into(),
            facts: Some(self.facts()),
            agent_version: "0.1.0".into(),
            name: self.name.clone(),
            slots: self.slots,
            tags: self.tags.clone(),
        }
    }

    /// Its Hello as `node`.
    pub fn hello(&self, node: Uuid) -> agent_pb::Hello {
        agent_pb::Hello {
            protocol_version: agent_pb::ProtocolVersion::V1 as i32,
            node_id: node.to_string(),
            agent_version: "0.1.0".into(),
            instance_id: Uuid::new_v4().to_string(),
            facts: Some(self.facts()),
            slots: self.slots,
            tags: self.tags.clone(),
            cached_templates: self
                .cache
                .iter()
                .map(|d| pb::CachedTemplate { sha256: hex(d), size_bytes: 1 << 20, ..Default::default() })
                .collect(),
            cache_limit_bytes: 10 << 30,
            held_tasks: self.held.clone(),
            draining: self.draining,
        }
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    ::hex::encode(bytes)
}

/// What the agent received (or that its stream ended).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant, reason = "a few test events; boxing would only obscure matching")]
pub enum AgentEvent {
    /// Welcome.
    Welcome(agent_pb::Welcome),
    /// AssignTask (with the message's seq).
    Assign(u64, agent_pb::AssignTask),
    /// CancelTask.
    Cancel(agent_pb::CancelTask),
    /// LeaseRenewal.
    Renewal(agent_pb::LeaseRenewal),
    /// Ack of the agent's seq.
    Ack(u64),
    /// Reject of the agent's message.
    Reject(agent_pb::Reject),
    /// Drain.
    Drain(agent_pb::Drain),
    /// EvictTemplate.
    Evict(agent_pb::EvictTemplate),
    /// The stream ended: the status code (None for OK) and message.
    Ended(Option<tonic::Code>, String),
}

/// Numbers and sends the agent's messages, in order; keeps those the orchestrator acknowledges
/// until it does, to resend them after a Reject(UNAVAILABLE) as a real agent's outbox would.
struct Outlet {
    inner: Mutex<(u64, Option<mpsc::UnboundedSender<agent_pb::SessionRequest>>)>,
    unacked: Mutex<HashMap<u64, In>>,
}

impl Outlet {
    fn new(tx: mpsc::UnboundedSender<agent_pb::SessionRequest>) -> Self {
        Self { inner: Mutex::new((0, Some(tx))), unacked: Mutex::new(HashMap::new()) }
    }

    fn send(&self, payload: In) -> u64 {
        let mut inner = self.inner.lock().expect("the outlet");
        inner.0 += 1;
        let seq = inner.0;
        if matches!(payload, In::FrameReport(_) | In::TaskResult(_) | In::CrashReport(_)) {
            self.unacked.lock().expect("the outbox").insert(seq, payload.clone());
        }
        if let Some(tx) = &inner.1 {
            let _ = tx.send(agent_pb::SessionRequest { seq, sent_at: None, payload: Some(payload) });
        }
        seq
    }

    /// The orchestrator answered `seq`: forget it, or resend it when it asked for that.
    fn answered(&self, seq: u64, resend: bool) {
        let message = self.unacked.lock().expect("the outbox").remove(&seq);
        if let (Some(message), true) = (message, resend) {
            self.send(message);
        }
    }

    fn send_raw(&self, message: agent_pb::SessionRequest) {
        let mut inner = self.inner.lock().expect("the outlet");
        inner.0 = inner.0.max(message.seq);
        if let Some(tx) = &inner.1 {
            let _ = tx.send(message);
        }
    }

    fn last_seq(&self) -> u64 {
        self.inner.lock().expect("the outlet").0
    }

    fn close(&self) {
        self.inner.lock().expect("the outlet").1 = None;
    }
}

/// What the driver and the test share.
struct Shared {
    slots: usize,
    held: Mutex<HashMap<String, agent_pb::AssignTask>>,
    max_held: AtomicUsize,
    capacity_rejects: AtomicUsize,
    behaviour: Mutex<Behaviour>,
    heartbeats: AtomicBool,
    draining: AtomicBool,
    history: Mutex<Vec<AgentEvent>>,
}

/// A connected simulated agent.
pub struct SimAgent {
    /// Its node.
    pub identity: Identity,
    /// Its configuration.
    pub spec: AgentSpec,
    outlet: Arc<Outlet>,
    shared: Arc<Shared>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<AgentEvent>>,
    driver: Option<tokio::task::JoinHandle<()>>,
    /// For the byte RPCs, with the same credential as the stream.
    client: AgentClient,
    authorization: String,
}

impl SimAgent {
    /// Connects `identity` to `orchestrator` and sends Hello (unless `spec.hello` is false).
    pub async fn connect(orchestrator: &Orchestrator, identity: Identity, spec: AgentSpec) -> Self {
        let credential = identity.credential.clone();
        Self::connect_with(orchestrator, identity, spec, &format!("Bearer {credential}")).await
    }

    /// Connects with `authorization` as given (for credential tests).
    pub async fn connect_with(
        orchestrator: &Orchestrator,
        identity: Identity,
        spec: AgentSpec,
        authorization: &str,
    ) -> Self {
        Self::connect_over(orchestrator.agent_client(), &orchestrator.uploads, identity, spec, authorization).await
    }

    /// Connects through `client` (an orchestrator in another process, or many agents sharing
    /// connections) with `authorization` as given; `uploads` records the agent's simulated frame
    /// uploads.
    pub async fn connect_over(
        mut client: AgentClient,
        uploads: &Arc<UploadLedger>,
        identity: Identity,
        spec: AgentSpec,
        authorization: &str,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (outbox, unsent) = mpsc::unbounded_channel();
        tokio::spawn(upload_then_send(unsent, tx, Arc::clone(uploads)));
        let outlet = Arc::new(Outlet::new(outbox));
        let shared = Arc::new(Shared {
            slots: spec.slots as usize,
            held: Mutex::new(HashMap::new()),
            max_held: AtomicUsize::new(0),
            capacity_rejects: AtomicUsize::new(0),
            behaviour: Mutex::new(spec.behaviour),
            heartbeats: AtomicBool::new(true),
            draining: AtomicBool::new(spec.draining),
            history: Mutex::new(Vec::new()),
        });
        if spec.hello {
            outlet.send(In::Hello(spec.hello(identity.node_id)));
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let bytes_client = client.clone();
        let mut request = tonic::Request::new(UnboundedReceiverStream::new(rx));
        request.metadata_mut().insert("authorization", authorization.parse().expect("an ASCII header"));
        let driver = match client.session(request).await {
            Ok(response) => {
                let inbound = response.into_inner();
                Some(tokio::spawn(drive(inbound, Arc::clone(&outlet), Arc::clone(&shared), events_tx)))
            }
            Err(status) => {
                let _ = events_tx.send(AgentEvent::Ended(Some(status.code()), status.message().to_owned()));
                None
            }
        };
        Self {
            identity,
            spec,
            outlet,
            shared,
            events: tokio::sync::Mutex::new(events_rx),
            driver,
            client: bytes_client,
            authorization: authorization.to_owned(),
        }
    }

    /// `request` with this agent's credential.
    fn authed<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.authorization.parse().expect("an ASCII header"));
        request
    }

    /// DownloadObject: the `info` and every byte after it, checking that `info` comes first and
    /// each part is at most 1 MiB.
    pub async fn download(
        &self,
        request: agent_pb::DownloadObjectRequest,
    ) -> Result<(agent_pb::ObjectInfo, Vec<u8>), tonic::Status> {
        use agent_pb::download_object_response::Part;
        let mut stream = self.download_stream(request).await?;
        let info = match stream.message().await?.and_then(|m| m.part) {
            Some(Part::Info(info)) => info,
            other => panic!("a download starts with its info, not {other:?}"),
        };
        let mut bytes = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(Part::Data(data)) => {
                    assert!(data.len() <= 1 << 20, "a part of {} bytes", data.len());
                    bytes.extend_from_slice(&data);
                }
                other => panic!("only data after the info, not {other:?}"),
            }
        }
        Ok((info, bytes))
    }

    /// DownloadObject's response stream, to read at the test's own pace.
    pub async fn download_stream(
        &self,
        request: agent_pb::DownloadObjectRequest,
    ) -> Result<tonic::Streaming<agent_pb::DownloadObjectResponse>, tonic::Status> {
        let mut client = self.client.clone();
        Ok(client.download_object(self.authed(request)).await?.into_inner())
    }

    /// UploadObject of the messages of `stream`, as given.
    pub async fn upload_stream(
        &self,
        stream: impl futures_util::Stream<Item = agent_pb::UploadObjectRequest> + Send + 'static,
    ) -> Result<agent_pb::UploadObjectResponse, tonic::Status> {
        let mut client = self.client.clone();
        Ok(client.upload_object(self.authed(stream)).await?.into_inner())
    }

    /// UploadObject of `data` under `header`, in parts of at most 1 MiB.
    pub async fn upload(
        &self,
        header: agent_pb::UploadHeader,
        data: &[u8],
    ) -> Result<agent_pb::UploadObjectResponse, tonic::Status> {
        use agent_pb::upload_object_request::Part;
        let mut messages = vec![agent_pb::UploadObjectRequest { part: Some(Part::Header(header)) }];
        for part in data.chunks(1 << 20) {
            messages.push(agent_pb::UploadObjectRequest { part: Some(Part::Data(part.to_vec().into())) });
        }
        let mut client = self.client.clone();
        Ok(client.upload_object(self.authed(futures_util::stream::iter(messages))).await?.into_inner())
    }

    /// Sends a message with the next seq; returns the seq.
    pub fn send(&self, payload: In) -> u64 {
        self.outlet.send(payload)
    }

    /// Sends an envelope exactly as given (any seq, any payload).
    pub fn send_raw(&self, message: agent_pb::SessionRequest) {
        self.outlet.send_raw(message);
    }

    /// The last seq sent.
    pub fn last_seq(&self) -> u64 {
        self.outlet.last_seq()
    }

    /// Waits for the first event `pick` accepts, discarding others (they stay in the history).
    pub async fn expect<T>(&self, what: &str, mut pick: impl FnMut(&AgentEvent) -> Option<T>) -> T {
        let mut events = self.events.lock().await;
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(event)) => {
                    if let Some(found) = pick(&event) {
                        return found;
                    }
                }
                Ok(None) => panic!(
                    "{}: the agent stopped before {what}; received: {:#?}",
                    self.identity.name,
                    self.shared.history.lock().expect("the history")
                ),
                Err(_) => panic!(
                    "{}: timed out waiting for {what}; received: {:#?}",
                    self.identity.name,
                    self.shared.history.lock().expect("the history")
                ),
            }
        }
    }

    /// The next AssignTask.
    pub async fn next_assign(&self) -> agent_pb::AssignTask {
        self.expect("an AssignTask", |e| match e {
            AgentEvent::Assign(_, task) => Some(task.clone()),
            _ => None,
        })
        .await
    }

    /// The Welcome.
    pub async fn welcome(&self) -> agent_pb::Welcome {
        self.expect("Welcome", |e| match e {
            AgentEvent::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await
    }

    /// The Reject of the agent's message `seq`.
    pub async fn reject_of(&self, seq: u64) -> agent_pb::Reject {
        self.expect(&format!("a Reject of seq {seq}"), |e| match e {
            AgentEvent::Reject(r) if r.seq == seq => Some(r.clone()),
            AgentEvent::Ack(s) if *s == seq => panic!("seq {seq} was acknowledged, not rejected"),
            _ => None,
        })
        .await
    }

    /// The Ack of the agent's message `seq`.
    pub async fn ack_of(&self, seq: u64) {
        self.expect(&format!("an Ack of seq {seq}"), |e| match e {
            AgentEvent::Ack(s) if *s == seq => Some(()),
            AgentEvent::Reject(r) if r.seq == seq => panic!("seq {seq} was rejected: {r:?}"),
            _ => None,
        })
        .await;
    }

    /// The next LeaseRenewal.
    pub async fn renewal(&self) -> agent_pb::LeaseRenewal {
        self.expect("a LeaseRenewal", |e| match e {
            AgentEvent::Renewal(r) => Some(r.clone()),
            _ => None,
        })
        .await
    }

    /// The CancelTask of `task`.
    pub async fn cancel_of(&self, task: &str) -> agent_pb::CancelTask {
        self.expect(&format!("a CancelTask of {task}"), |e| match e {
            AgentEvent::Cancel(c) if c.task_id == task => Some(c.clone()),
            _ => None,
        })
        .await
    }

    /// The end of the stream: status code (None for OK) and message.
    pub async fn ended(&self) -> (Option<tonic::Code>, String) {
        self.expect("the end of the stream", |e| match e {
            AgentEvent::Ended(code, message) => Some((*code, message.clone())),
            _ => None,
        })
        .await
    }

    /// Sends a Health now (besides the timer's), listing what the agent holds.
    pub fn heartbeat(&self) -> u64 {
        self.outlet.send(health(&self.shared))
    }

    /// Stops (or resumes) the heartbeats.
    pub fn set_heartbeats(&self, on: bool) {
        self.shared.heartbeats.store(on, Ordering::SeqCst);
    }

    /// Changes what it does with the next assignments.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().expect("the behaviour") = behaviour;
    }

    /// The most tasks it ever held at once.
    pub fn max_held(&self) -> usize {
        self.shared.max_held.load(Ordering::SeqCst)
    }

    /// Assignments it had to refuse for lack of a slot.
    pub fn capacity_rejects(&self) -> usize {
        self.shared.capacity_rejects.load(Ordering::SeqCst)
    }

    /// Every AssignTask it received so far.
    pub fn assigns(&self) -> Vec<agent_pb::AssignTask> {
        self.shared
            .history
            .lock()
            .expect("the history")
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Assign(_, task) => Some(task.clone()),
                _ => None,
            })
            .collect()
    }

    /// Every Reject it received so far.
    pub fn rejects(&self) -> Vec<agent_pb::Reject> {
        self.shared
            .history
            .lock()
            .expect("the history")
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Reject(r) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Forgets a held task (as if it ended without telling).
    pub fn drop_task(&self, task: &str) {
        self.shared.held.lock().expect("the held tasks").remove(task);
    }

    /// Refuses the assignment `task` for lack of disk (and stops holding it).
    pub fn refuse(&self, task: &agent_pb::AssignTask) {
        self.drop_task(&task.task_id);
        self.send(In::Reject(agent_pb::Reject {
            seq: 0,
            reason: agent_pb::RejectReason::InsufficientDisk as i32,
            message: "disk full".into(),
            task_id: task.task_id.clone(),
        }));
    }

    /// The tasks it holds, as Hello/Health list them.
    pub fn held_tasks(&self) -> Vec<agent_pb::HeldTask> {
        held_list(&self.shared)
    }

    /// Cuts the connection as a crash or network loss would (no Goodbye).
    pub fn disconnect(&mut self) {
        self.outlet.close();
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.disconnect();
    }
}

fn held_list(shared: &Shared) -> Vec<agent_pb::HeldTask> {
    shared
        .held
        .lock()
        .expect("the held tasks")
        .values()
        .map(|t| agent_pb::HeldTask {
            task_id: t.task_id.clone(),
            lease_epoch: t.lease_epoch,
            kind: t.kind,
            phase: pb::TaskPhase::Rendering as i32,
            result_pending: false,
        })
        .collect()
}

fn health(shared: &Shared) -> In {
    In::Health(agent_pb::Health {
        sample: Some(pb::NodeHealthSample { cpu_percent: 10.0, ..Default::default() }),
        tasks: held_list(shared),
        draining: shared.draining.load(Ordering::SeqCst),
    })
}

/// The frames of a render assignment, in order.
pub fn frames_of(task: &agent_pb::AssignTask) -> Vec<i32> {
    match &task.spec {
        Some(agent_pb::assign_task::Spec::Render(spec)) => {
            spec.frames.iter().flat_map(|r| (r.start..=r.end).step_by(r.step.max(1) as usize)).collect()
        }
        _ => Vec::new(),
    }
}

/// Size of a simulated frame upload.
const SIMULATED_FRAME_BYTES: u64 = 1000;

/// The file id of the simulated upload of `frame` by lease (`task_id`, `epoch`).
pub fn upload_id(task_id: &str, epoch: u64, frame: i32) -> Uuid {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{task_id}/{epoch}/{frame}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The SHA-256 of the simulated upload of `frame`.
fn frame_digest(frame: i32) -> [u8; 32] {
    let mut digest = [0u8; 32];
    digest[24..].copy_from_slice(&(i64::from(frame) + 1).to_be_bytes());
    digest
}

/// An OK frame output of `task`, naming the simulated upload the agent records before it sends
/// the output.
pub fn ok_frame(task: &agent_pb::AssignTask, frame: i32) -> agent_pb::FrameOutput {
    agent_pb::FrameOutput {
        frame,
        status: agent_pb::FrameStatus::Ok as i32,
        file_id: upload_id(&task.task_id, task.lease_epoch, frame).to_string(),
        sha256: hex(&frame_digest(frame)),
        size_bytes: SIMULATED_FRAME_BYTES,
        resolution: None,
        render_ms: 50,
    }
}

/// The simulated uploads `message` names: its OK frames whose file ids are [`upload_id`]s.
fn simulated_uploads(message: &agent_pb::SessionRequest) -> Vec<(Uuid, u64, i32)> {
    let (task_id, epoch, frames) = match &message.payload {
        Some(In::FrameReport(r)) => (&r.task_id, r.lease_epoch, &r.frames),
        Some(In::TaskResult(r)) => (&r.task_id, r.lease_epoch, &r.frames),
        _ => return Vec::new(),
    };
    let Ok(task) = Uuid::try_parse(task_id) else { return Vec::new() };
    frames
        .iter()
        .filter(|f| f.status() == agent_pb::FrameStatus::Ok && f.frame >= 0)
        .filter(|f| f.file_id == upload_id(task_id, epoch, f.frame).to_string())
        .map(|f| (task, epoch, f.frame))
        .collect()
}

/// Records the simulated uploads of `frames` (task, epoch, frame) as UploadObject records a
/// stored frame; frames of tasks that do not exist are skipped.
pub async fn record_uploads(pool: &PgPool, frames: &[(Uuid, u64, i32)]) -> Result<(), sqlx::Error> {
    if frames.is_empty() {
        return Ok(());
    }
    let tasks: Vec<Uuid> = frames.iter().map(|f| f.0).collect();
    let epochs: Vec<i64> = frames.iter().map(|f| i64::try_from(f.1).unwrap_or(0)).collect();
    let numbers: Vec<i32> = frames.iter().map(|f| f.2).collect();
    let files: Vec<Uuid> = frames.iter().map(|f| upload_id(&f.0.to_string(), f.1, f.2)).collect();
    let digests: Vec<Vec<u8>> = frames.iter().map(|f| frame_digest(f.2).to_vec()).collect();
    sqlx::query(
        "INSERT INTO render.object_uploads (frame_job_id, lease_epoch, kind, frame, sha256, size_bytes, file_id)
         SELECT x.task, x.epoch, 'frame', x.frame, x.sha256, $6, x.file_id
           FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::uuid[], $5::bytea[])
                AS x(task, epoch, frame, file_id, sha256)
           JOIN render.frame_jobs f ON f.id = x.task
          WHERE x.epoch > 0
             ON CONFLICT DO NOTHING",
    )
    .bind(&tasks)
    .bind(&epochs)
    .bind(&numbers)
    .bind(&files)
    .bind(&digests)
    .bind(SIMULATED_FRAME_BYTES as i64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the simulated uploads of `frames` of `task` (for tests that hand reports to the
/// queue directly rather than through an agent).
pub async fn record_frames(pool: &PgPool, task: &agent_pb::AssignTask, frames: &[i32]) {
    let task_id = Uuid::try_parse(&task.task_id).expect("a task id");
    let list: Vec<(Uuid, u64, i32)> = frames.iter().map(|f| (task_id, task.lease_epoch, *f)).collect();
    record_uploads(pool, &list).await.expect("the simulated uploads are recorded");
}

/// The simulated uploads of many agents, written together by the orchestrator's own group
/// commit ([`GroupCommit`]): each agent waits for its own, and every record that arrives while
/// a batch is written goes in the next one. Without it the agents' per-frame commits queued on
/// their small pool and a benchmark measured that queue rather than the orchestrator.
pub struct UploadLedger {
    pool: PgPool,
    batches: Arc<GroupCommit<SimulatedUploads>>,
}

/// A simulated upload: task, lease epoch, frame.
type Upload = (Uuid, u64, i32);

/// One message's simulated uploads, as a kind of batched write.
struct SimulatedUploads;

impl BatchKind for SimulatedUploads {
    type Item = Vec<Upload>;
    type Answer = ();
    fn frames(item: &Vec<Upload>) -> usize {
        item.len()
    }
    async fn write(pool: &PgPool, items: &[Vec<Upload>]) -> flatrender_render::Result<Vec<Option<()>>> {
        let all: Vec<Upload> = items.iter().flatten().copied().collect();
        record_uploads(pool, &all).await?;
        Ok(vec![Some(()); items.len()])
    }
}

impl UploadLedger {
    /// A ledger writing through `pool` (the database as its owner).
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self { pool, batches: Arc::default() })
    }

    /// Records `uploads` (task, epoch, frame) with the next batch; whether it was written.
    pub async fn record(&self, uploads: Vec<Upload>) -> bool {
        self.batches.submit(&self.pool, uploads).await.is_some()
    }
}

/// Passes the agent's messages on in order, recording the simulated uploads a message names
/// before it goes (once per frame and lease): what a real agent's uploads do before it reports.
async fn upload_then_send(
    mut outbox: mpsc::UnboundedReceiver<agent_pb::SessionRequest>,
    stream: mpsc::UnboundedSender<agent_pb::SessionRequest>,
    ledger: Arc<UploadLedger>,
) {
    let mut recorded: HashSet<(Uuid, u64, i32)> = HashSet::new();
    while let Some(message) = outbox.recv().await {
        let uploads: Vec<_> = simulated_uploads(&message).into_iter().filter(|u| !recorded.contains(u)).collect();
        if !uploads.is_empty() {
            // Not written: the database went away (the test is ending; the batch's writer
            // logged why), and the report will say so.
            if ledger.record(uploads.clone()).await {
                recorded.extend(uploads);
            }
        }
        if stream.send(message).is_err() {
            return;
        }
    }
}

/// The header of frame `frame` of `task` holding `data`.
pub fn frame_header(task: &agent_pb::AssignTask, frame: i32, data: &[u8]) -> agent_pb::UploadHeader {
    agent_pb::UploadHeader {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        kind: agent_pb::ObjectKind::Frame as i32,
        frame,
        file_name: format!("frame_{frame:05}.png"),
        content_type: "image/png".into(),
        size_bytes: data.len() as u64,
        sha256: super::api::sha256_hex(data),
    }
}

/// TaskUpdate(ACCEPTED) for `task`.
pub fn accepted(task: &agent_pb::AssignTask) -> In {
    In::TaskUpdate(agent_pb::TaskUpdate {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        phase: pb::TaskPhase::Accepted as i32,
        current_frame: -1,
        ..Default::default()
    })
}

/// A FrameReport of `frames` of `task`.
pub fn frame_report(task: &agent_pb::AssignTask, frames: &[i32]) -> In {
    let segment_index = match &task.spec {
        Some(agent_pb::assign_task::Spec::Render(spec)) => spec.segment_index,
        _ => -1,
    };
    In::FrameReport(agent_pb::FrameReport {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        segment_index,
        frames: frames.iter().map(|f| ok_frame(task, *f)).collect(),
    })
}

/// A TaskResult of `task` with `outcome` (every frame OK on success).
pub fn result(task: &agent_pb::AssignTask, outcome: pb::TaskOutcome) -> In {
    let (frames, error) = match outcome {
        pb::TaskOutcome::Success => (frames_of(task).into_iter().map(|f| ok_frame(task, f)).collect(), None),
        pb::TaskOutcome::TemplateError => (
            Vec::new(),
            Some(pb::RenderError {
                error_class: pb::ErrorClass::Template as i32,
                code: pb::ErrorCode::CompNotFound as i32,
                message: "aerender ERROR: No comp was found with the given name.".into(),
            }),
        ),
        pb::TaskOutcome::MachineError => (
            Vec::new(),
            Some(pb::RenderError {
                error_class: pb::ErrorClass::Machine as i32,
                code: pb::ErrorCode::AeCrash as i32,
                message: "After Effects crashed".into(),
            }),
        ),
        _ => (Vec::new(), None),
    };
    In::TaskResult(agent_pb::TaskResult {
        task_id: task.task_id.clone(),
        lease_epoch: task.lease_epoch,
        outcome: outcome as i32,
        exit_code: Some(if outcome == pb::TaskOutcome::Success { 0 } else { 1 }),
        error,
        log_tail: "Finished composition".into(),
        frames,
        timings: Some(agent_pb::TaskTimings { total_ms: 1000, ..Default::default() }),
        ..Default::default()
    })
}

async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn drive(
    mut inbound: tonic::Streaming<agent_pb::SessionResponse>,
    outlet: Arc<Outlet>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<AgentEvent>,
) {
    let mut heartbeat: Option<tokio::time::Interval> = None;
    let record = |event: AgentEvent| {
        shared.history.lock().expect("the history").push(event.clone());
        let _ = events.send(event);
    };
    loop {
        let message = tokio::select! {
            message = inbound.message() => message,
            () = tick(&mut heartbeat) => {
                if shared.heartbeats.load(Ordering::SeqCst) {
                    outlet.send(health(&shared));
                }
                continue;
            }
        };
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => {
                record(AgentEvent::Ended(None, String::new()));
                return;
            }
            Err(status) => {
                record(AgentEvent::Ended(Some(status.code()), status.message().to_owned()));
                return;
            }
        };
        let seq = message.seq;
        match message.payload {
            Some(Out::Welcome(welcome)) => {
                let every = welcome
                    .heartbeat_interval
                    .map(|d| std::time::Duration::new(d.seconds as u64, d.nanos as u32))
                    .unwrap_or(std::time::Duration::from_secs(5));
                let mut interval = tokio::time::interval(every);
                interval.reset();
                heartbeat = Some(interval);
                record(AgentEvent::Welcome(welcome));
            }
            Some(Out::AssignTask(task)) => {
                record(AgentEvent::Assign(seq, task.clone()));
                on_assign(&outlet, &shared, seq, task);
            }
            Some(Out::CancelTask(cancel)) => {
                record(AgentEvent::Cancel(cancel.clone()));
                let held = {
                    let mut held = shared.held.lock().expect("the held tasks");
                    match held.get(&cancel.task_id) {
                        Some(t) if t.lease_epoch == cancel.lease_epoch => held.remove(&cancel.task_id),
                        _ => None,
                    }
                };
                outlet.send(In::Ack(agent_pb::Ack { seq }));
                let silent =
                    matches!(cancel.reason(), agent_pb::CancelReason::LeaseLost | agent_pb::CancelReason::UnknownTask);
                if let (Some(task), false) = (held, silent) {
                    outlet.send(result(&task, pb::TaskOutcome::Canceled));
                }
            }
            Some(Out::Drain(drain)) => {
                shared.draining.store(drain.enabled, Ordering::SeqCst);
                record(AgentEvent::Drain(drain));
                outlet.send(In::Ack(agent_pb::Ack { seq }));
            }
            Some(Out::EvictTemplate(evict)) => {
                record(AgentEvent::Evict(evict));
                outlet.send(In::Ack(agent_pb::Ack { seq }));
            }
            Some(Out::LeaseRenewal(renewal)) => record(AgentEvent::Renewal(renewal)),
            Some(Out::Ack(ack)) => {
                outlet.answered(ack.seq, false);
                record(AgentEvent::Ack(ack.seq));
            }
            Some(Out::Reject(reject)) => {
                outlet.answered(reject.seq, reject.reason() == agent_pb::RejectReason::Unavailable);
                record(AgentEvent::Reject(reject));
            }
            None => {
                outlet.send(In::Reject(agent_pb::Reject {
                    seq,
                    reason: agent_pb::RejectReason::Unsupported as i32,
                    message: "unset payload".into(),
                    task_id: String::new(),
                }));
            }
        }
    }
}

fn on_assign(outlet: &Outlet, shared: &Shared, seq: u64, task: agent_pb::AssignTask) {
    {
        let mut held = shared.held.lock().expect("the held tasks");
        if held.len() >= shared.slots {
            shared.capacity_rejects.fetch_add(1, Ordering::SeqCst);
            outlet.send(In::Reject(agent_pb::Reject {
                seq,
                reason: agent_pb::RejectReason::NoCapacity as i32,
                message: "no free slot".into(),
                task_id: task.task_id.clone(),
            }));
            return;
        }
        held.insert(task.task_id.clone(), task.clone());
        shared.max_held.fetch_max(held.len(), Ordering::SeqCst);
    }
    let behaviour = *shared.behaviour.lock().expect("the behaviour");
    if behaviour == Behaviour::Manual {
        return;
    }
    outlet.send(accepted(&task));
    let outcome = match behaviour {
        Behaviour::Complete => {
            let frames = frames_of(&task);
            for batch in frames.chunks(1000) {
                outlet.send(frame_report(&task, batch));
            }
            pb::TaskOutcome::Success
        }
        Behaviour::TemplateError => pb::TaskOutcome::TemplateError,
        Behaviour::MachineError => pb::TaskOutcome::MachineError,
        Behaviour::Hang | Behaviour::Manual => return,
    };
    // The slot frees when the result is sent.
    shared.held.lock().expect("the held tasks").remove(&task.task_id);
    outlet.send(result(&task, outcome));
}
