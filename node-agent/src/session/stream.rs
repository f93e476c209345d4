//! The control stream, for the agent's whole life: connect, Hello, Welcome, then heartbeats,
//! work, cancels and acks until the stream breaks — and again, with jittered backoff, until the
//! agent shuts down. The protocol is described in `proto/flatrender/agent/v1/agent_service.proto`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::agent::v1::agent_service_client::AgentServiceClient;
use flatrender_proto::flatrender::agent::v1::session_request::Payload as Out;
use flatrender_proto::flatrender::agent::v1::session_response::Payload as In;
use flatrender_proto::flatrender::render::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::backoff::Backoff;
use super::credential::NodeCredential;
use super::outbox::Outbox;
use super::resend::{self, Resends};
use super::tasks::{Executor, StopReason, TaskEvent, TaskTable};

/// How long the orchestrator has to answer Hello with Welcome.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// How often coalesced task updates go out (the protocol allows 2 per second per task).
const UPDATE_FLUSH: Duration = Duration::from_millis(500);
/// How long a shutdown waits for the running tasks' hand-back to be acked: less than a lease's
/// time to live (15 s by default), as no heartbeat goes out meanwhile.
const HAND_BACK_WAIT: Duration = Duration::from_secs(10);
/// The largest message either side decodes (the protocol's transport limit).
pub const TRANSPORT_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// What the stream needs to know about the machine, asked at each Hello and heartbeat.
pub trait NodeView: Send + 'static {
    fn facts(&mut self) -> pb::MachineFacts;
    fn health(&mut self, running_tasks: u32, slots: u32) -> pb::NodeHealthSample;
    /// The cached templates and the cache's byte bound.
    fn cache(&self) -> (Vec<pb::CachedTemplate>, u64);
    /// Drops a template from the cache (EvictTemplate); an error says why not (e.g. in use).
    fn evict(&mut self, sha256: &str) -> Result<(), String>;
}

/// Who this agent is on the stream.
#[derive(Clone, Debug)]
pub struct AgentInfo {
    pub agent_version: String,
    /// Drawn at process start: a new value tells the orchestrator the agent restarted.
    pub instance_id: String,
    pub tags: Vec<String>,
    /// How often to send Health when the orchestrator's Welcome names no interval.
    pub heartbeat_fallback: Duration,
}

/// Why the session stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the orchestrator refused the node credential ({0}); the node may have been deleted: enrol again")]
    Unauthenticated(String),
    #[error("the orchestrator address {0:?} is not a valid URL")]
    BadAddress(String),
    #[error("TLS cannot be set up: {0}")]
    Tls(String),
    #[error("the outbox could not be written: {0}")]
    Outbox(#[from] std::io::Error),
}

/// One agent's session with the orchestrator.
pub struct Session<N, E> {
    endpoint: Endpoint,
    credential: NodeCredential,
    info: AgentInfo,
    node: N,
    executor: Arc<E>,
    tasks: TaskTable,
    outbox: Outbox,
    events: mpsc::UnboundedReceiver<TaskEvent>,
    events_tx: mpsc::UnboundedSender<TaskEvent>,
    /// The highest seq the orchestrator sent on the current stream.
    inbound_seq: u64,
    /// The largest envelope the current stream takes (`Welcome.max_message_bytes`).
    message_limit: usize,
    /// Outbox messages refused for now on the current stream, and when they go again.
    resends: Resends,
}

/// How one stream ended, when it was not an error.
enum StreamEnd {
    /// The agent is shutting down; Goodbye was sent.
    Shutdown,
    /// The orchestrator closed the stream or the connection broke: reconnect.
    Lost(String),
}

impl<N: NodeView, E: Executor> Session<N, E> {
    pub fn new(
        endpoint: Endpoint,
        credential: NodeCredential,
        info: AgentInfo,
        node: N,
        executor: Arc<E>,
        tasks: TaskTable,
        outbox: Outbox,
    ) -> Result<Self, SessionError> {
        let mut tasks = tasks;
        // Results an earlier run could not get acked: their tasks are still held (Hello lists
        // them; the orchestrator renews or cancels each) until the resent result is acked.
        for (key, _) in outbox.waiting() {
            if let Some((task, epoch)) = result_key(key) {
                tasks.restore_pending(task, epoch);
            }
        }
        let (events_tx, events) = mpsc::unbounded_channel();
        Ok(Self {
            endpoint,
            credential,
            info,
            node,
            executor,
            tasks,
            outbox,
            events,
            events_tx,
            inbound_seq: 0,
            message_limit: TRANSPORT_LIMIT_BYTES,
            resends: Resends::default(),
        })
    }

    /// A sender for reports that do not come from a task runner (cache changes).
    pub fn events(&self) -> mpsc::UnboundedSender<TaskEvent> {
        self.events_tx.clone()
    }

    /// Keeps a stream up until `shutdown` completes: reconnecting with jittered backoff, the held
    /// tasks and unacked messages carried across.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), SessionError> {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            match self.serve_stream(&mut shutdown).await? {
                StreamEnd::Shutdown => {
                    self.tasks.stop_all();
                    return Ok(());
                }
                StreamEnd::Lost(why) => {
                    // A stream that lived a while was a working connection: start over fast.
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(%why, delay_ms = delay.as_millis() as u64, "the control stream ended; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = &mut shutdown => {
                            self.tasks.stop_all();
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    async fn serve_stream(
        &mut self,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<StreamEnd, SessionError> {
        let opened = tokio::select! {
            opened = self.open_stream() => opened?,
            () = &mut *shutdown => return Ok(StreamEnd::Shutdown),
        };
        let (mut out, mut inbound, welcome) = match opened {
            Ok(opened) => opened,
            Err(why) => return Ok(StreamEnd::Lost(why)),
        };
        let clock = ServerClock::from_welcome(&welcome);
        // Each stream counts from 1 again (the Welcome took one).
        self.inbound_seq = 1;
        self.message_limit = match usize::try_from(welcome.max_message_bytes) {
            Ok(limit) if limit > 0 => limit.min(TRANSPORT_LIMIT_BYTES),
            _ => TRANSPORT_LIMIT_BYTES,
        };
        let heartbeat_every = duration(welcome.heartbeat_interval.as_ref()).unwrap_or(self.info.heartbeat_fallback);
        tracing::info!(node = %welcome.node_name, orchestrator = %welcome.orchestrator_id, "connected");

        // Whatever waited for an ack goes again (the orchestrator deduplicates).
        self.outbox.new_stream();
        self.resends.clear();
        let waiting: Vec<(String, Out)> = self.outbox.waiting().map(|(k, p)| (k.to_string(), p.clone())).collect();
        for (key, payload) in waiting {
            let seq = out.send(payload).await;
            self.outbox.sent(&key, seq);
        }

        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut flush = tokio::time::interval(UPDATE_FLUSH);
        let mut updates: HashMap<String, agent_pb::TaskUpdate> = HashMap::new();
        loop {
            tokio::select! {
                _ = heartbeat.tick() => {
                    for task in self.tasks.expire(Instant::now()) {
                        tracing::warn!(%task, "the lease ran out without renewal; the task is stopped");
                    }
                    out.send(Out::Health(self.health())).await;
                }
                _ = flush.tick() => {
                    for (_, update) in updates.drain() {
                        out.send(Out::TaskUpdate(update)).await;
                    }
                }
                Some(event) = self.events.recv() => self.on_event(event, &mut out, &mut updates).await,
                () = due(self.resends.next_due()) => self.resend_due(&mut out).await,
                message = inbound.next() => match message {
                    Some(Ok(message)) => self.on_message(message, &mut out, &clock).await,
                    Some(Err(status)) => return lost_or_fatal(status),
                    None => return Ok(StreamEnd::Lost("the orchestrator closed the stream".into())),
                },
                () = &mut *shutdown => {
                    let message = self.hand_back(&mut out, &mut inbound, &clock, &mut updates).await;
                    let goodbye = agent_pb::Goodbye { reason: agent_pb::GoodbyeReason::Shutdown as i32, message };
                    out.send(Out::Goodbye(goodbye)).await;
                    return Ok(StreamEnd::Shutdown);
                }
            }
        }
    }

    /// Before a Goodbye for good: every running task is stopped, and its result (HANDED_BACK,
    /// or whatever it came to first) is sent and waited for until acked, so the orchestrator
    /// requeues the work at once instead of after the grace period, without counting an attempt.
    /// Bounded by [`HAND_BACK_WAIT`]; what is not acked by then stays in the outbox for the
    /// next start. Returns a word for the Goodbye's message.
    async fn hand_back(
        &mut self,
        out: &mut Outlet,
        inbound: &mut tonic::Streaming<agent_pb::SessionResponse>,
        clock: &ServerClock,
        updates: &mut HashMap<String, agent_pb::TaskUpdate>,
    ) -> String {
        if self.tasks.held_list().is_empty() {
            return String::new();
        }
        // Nothing new while handing back: the orchestrator hears the node drains before it hears
        // of the first handed-back task (which it would otherwise offer to this node again), and
        // an AssignTask already on its way is refused as DRAINING.
        self.tasks.set_draining(true);
        out.send(Out::Health(self.health())).await;
        self.tasks.stop_all();
        let deadline = tokio::time::sleep(HAND_BACK_WAIT);
        tokio::pin!(deadline);
        while !self.tasks.held_list().is_empty() {
            tokio::select! {
                Some(event) = self.events.recv() => self.on_event(event, out, updates).await,
                () = due(self.resends.next_due()) => self.resend_due(out).await,
                message = inbound.next() => match message {
                    Some(Ok(message)) => self.on_message(message, out, clock).await,
                    _ => return "the stream ended while tasks were handed back".into(),
                },
                () = &mut deadline => {
                    let left = self.tasks.held_list().len();
                    tracing::warn!(left, "tasks were not all handed back in time; their results wait in the outbox");
                    return format!("{left} task(s) not handed back in time");
                }
            }
        }
        "running tasks handed back".into()
    }

    /// The machine's state, the tasks held and whether the node drains.
    fn health(&mut self) -> agent_pb::Health {
        agent_pb::Health {
            sample: Some(self.node.health(self.tasks.running(), self.tasks.slots())),
            tasks: self.tasks.held_list(),
            draining: self.tasks.draining(),
        }
    }

    /// Connects, sends Hello and waits for Welcome.
    async fn open_stream(&mut self) -> Result<Result<Opened, String>, SessionError> {
        let channel = match self.endpoint.connect().await {
            Ok(channel) => channel,
            Err(e) => return Ok(Err(format!("cannot connect: {e}"))),
        };
        let (tx, rx) = mpsc::channel::<agent_pb::SessionRequest>(256);
        let mut out = Outlet { tx, seq: 0 };
        let (cached, cache_limit) = self.node.cache();
        let hello = agent_pb::Hello {
            protocol_version: agent_pb::ProtocolVersion::V1 as i32,
            node_id: self.credential.node_id().to_string(),
            agent_version: self.info.agent_version.clone(),
            instance_id: self.info.instance_id.clone(),
            facts: Some(self.node.facts()),
            slots: self.tasks.slots(),
            tags: self.info.tags.clone(),
            cached_templates: cached,
            cache_limit_bytes: cache_limit,
            held_tasks: self.tasks.held_list(),
            draining: self.tasks.draining(),
        };
        out.send(Out::Hello(hello)).await;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        match self.credential.authorization().parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => return Err(SessionError::Unauthenticated("the credential is not a valid header".into())),
        }
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(TRANSPORT_LIMIT_BYTES)
            .max_encoding_message_size(TRANSPORT_LIMIT_BYTES);
        let mut inbound = match client.session(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return opening_failed(status),
        };

        let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, inbound.next()).await {
            Ok(Some(Ok(agent_pb::SessionResponse { payload: Some(In::Welcome(welcome)), .. }))) => welcome,
            Ok(Some(Ok(other))) => return Ok(Err(format!("the first message was not Welcome: {other:?}"))),
            Ok(Some(Err(status))) => return opening_failed(status),
            Ok(None) => return Ok(Err("the stream closed before Welcome".into())),
            Err(_) => return Ok(Err("no Welcome within 10 s".into())),
        };
        Ok(Ok((out, inbound, welcome)))
    }

    async fn on_event(
        &mut self,
        event: TaskEvent,
        out: &mut Outlet,
        updates: &mut HashMap<String, agent_pb::TaskUpdate>,
    ) {
        match event {
            TaskEvent::Update(update) => {
                self.tasks.set_phase(&update.task_id, update.lease_epoch, update.phase);
                // The latest update of a task replaces one not yet sent.
                updates.insert(update.task_id.clone(), update);
            }
            TaskEvent::Frames(report) => {
                // Unique per report: two reports of one task never replace each other.
                let key = format!("frames.{}.{}.{}", report.task_id, report.lease_epoch, uuid::Uuid::new_v4().simple());
                self.send_kept(key, Out::FrameReport(report), out).await;
            }
            TaskEvent::Cache(change) => {
                out.send(Out::CacheChange(change)).await;
            }
            TaskEvent::Crash(crash) => {
                let key = format!("crash.{}", crash.crash_id);
                self.send_kept(key, Out::CrashReport(crash), out).await;
            }
            TaskEvent::Result(result) if self.tasks.drop_result(&result.task_id, result.lease_epoch) => {
                tracing::info!(task = %result.task_id, "the lease is gone; the result is dropped");
            }
            TaskEvent::Result(result) => {
                if updates.get(&result.task_id).is_some_and(|u| u.lease_epoch == result.lease_epoch) {
                    updates.remove(&result.task_id);
                }
                let key = format!("result.{}.{}", result.task_id, result.lease_epoch);
                self.tasks.result_pending(&result.task_id, result.lease_epoch);
                self.send_kept(key, Out::TaskResult(result), out).await;
            }
        }
    }

    /// Keeps `payload` in the outbox under `key` until acked, and sends it: made to fit the
    /// stream's message limit first (a long log cut, a large frame report split, parts of a split
    /// under `<key>-<n>`).
    async fn send_kept(&mut self, key: String, payload: Out, out: &mut Outlet) {
        let parts = resend::fit(payload.clone(), self.message_limit).unwrap_or_else(|| {
            tracing::warn!(%key, limit = self.message_limit, "a message cannot be made to fit the orchestrator's limit; sent as it is");
            vec![payload]
        });
        for (i, part) in parts.into_iter().enumerate() {
            let key = if i == 0 { key.clone() } else { format!("{key}-{i}") };
            self.keep(&key, part.clone());
            let seq = out.send(part).await;
            self.outbox.sent(&key, seq);
        }
    }

    /// Sends again the refused messages whose backoff has passed. A task's result waits while
    /// a frame report of the same task is still unacked: the orchestrator takes no frames after
    /// the result, so the result must not overtake them.
    async fn resend_due(&mut self, out: &mut Outlet) {
        let now = Instant::now();
        for key in self.resends.take_due(now) {
            if let Some((task, epoch)) = result_key(&key)
                && self.outbox.has_prefix(&format!("frames.{task}.{epoch}."))
            {
                self.resends.schedule(&key, now);
                continue;
            }
            if let Some(payload) = self.outbox.get(&key).cloned() {
                let seq = out.send(payload).await;
                self.outbox.sent(&key, seq);
            }
        }
    }

    /// The orchestrator refused the message sent as `seq`: for now (rate limited, unavailable:
    /// sent again after its backoff), as too large (made smaller and sent again at once), or for
    /// good (dropped).
    async fn on_reject(&mut self, reject: agent_pb::Reject, out: &mut Outlet) {
        let reason = agent_pb::RejectReason::try_from(reject.reason).unwrap_or_default();
        tracing::warn!(seq = reject.seq, ?reason, message = %reject.message, "the orchestrator refused a message");
        match reason {
            agent_pb::RejectReason::RateLimited | agent_pb::RejectReason::Unavailable => {
                if let Some(key) = self.outbox.unsend(reject.seq) {
                    let delay = self.resends.schedule(&key, Instant::now());
                    tracing::info!(%key, delay_ms = delay.as_millis() as u64, "sending the message again later");
                }
            }
            agent_pb::RejectReason::Oversized => {
                let Some(key) = self.outbox.unsend(reject.seq) else { return };
                let Some(payload) = self.outbox.get(&key).cloned() else { return };
                match resend::shrink(&payload) {
                    Some(parts) => {
                        for (i, part) in parts.into_iter().enumerate() {
                            let key = if i == 0 { key.clone() } else { format!("{key}-s{i}") };
                            self.send_kept(key, part, out).await;
                        }
                    }
                    None => {
                        tracing::error!(%key, "a refused message cannot be made smaller; it is dropped");
                        self.drop_kept(&key);
                    }
                }
            }
            _ => self.settle(reject.seq),
        }
    }

    /// Puts a message in the outbox. A full or failing state disk must not stop the agent: the
    /// message is kept in memory and sent now; only a restart before its ack would lose it.
    fn keep(&mut self, key: &str, payload: Out) {
        if let Err(error) = self.outbox.put(key, payload) {
            tracing::error!(%key, %error, "could not keep a message in the outbox; sending it unkept");
        }
    }

    async fn on_message(&mut self, message: agent_pb::SessionResponse, out: &mut Outlet, clock: &ServerClock) {
        let seq = message.seq;
        // A seq that does not increase is refused and not acted on (the protocol's rule).
        let before = self.inbound_seq;
        if !in_order(&mut self.inbound_seq, seq) {
            let reject = agent_pb::Reject {
                seq,
                reason: agent_pb::RejectReason::OutOfOrder as i32,
                message: format!("seq {seq} does not follow {before}"),
                task_id: String::new(),
            };
            out.send(Out::Reject(reject)).await;
            return;
        }
        match message.payload {
            Some(In::AssignTask(task)) => self.on_assign(seq, task, out, clock).await,
            Some(In::CancelTask(cancel)) => {
                let reason = match agent_pb::CancelReason::try_from(cancel.reason) {
                    Ok(agent_pb::CancelReason::LeaseLost | agent_pb::CancelReason::UnknownTask) => {
                        StopReason::LeaseLost
                    }
                    _ => StopReason::Canceled,
                };
                if !self.tasks.stop(&cancel.task_id, cancel.lease_epoch, reason) {
                    tracing::debug!(task = %cancel.task_id, "cancel for a task not held");
                }
                out.send(Out::Ack(agent_pb::Ack { seq })).await;
            }
            Some(In::LeaseRenewal(renewal)) => {
                for lease in renewal.leases {
                    if let Some(at) = lease.lease_expires_at.as_ref() {
                        self.tasks.renew(&lease.task_id, lease.lease_epoch, clock.remaining(at));
                    }
                }
            }
            Some(In::Drain(drain)) => {
                self.tasks.set_draining(drain.enabled);
                out.send(Out::Ack(agent_pb::Ack { seq })).await;
            }
            Some(In::EvictTemplate(evict)) => match self.node.evict(&evict.sha256) {
                Ok(()) => {
                    out.send(Out::Ack(agent_pb::Ack { seq })).await;
                }
                Err(why) => {
                    let reject = agent_pb::Reject {
                        seq,
                        reason: agent_pb::RejectReason::Unavailable as i32,
                        message: why,
                        task_id: String::new(),
                    };
                    out.send(Out::Reject(reject)).await;
                }
            },
            Some(In::Ack(ack)) => self.settle(ack.seq),
            Some(In::Reject(reject)) => self.on_reject(reject, out).await,
            Some(In::Welcome(_)) => tracing::debug!("a second Welcome; ignored"),
            None => {
                let reject = agent_pb::Reject {
                    seq,
                    reason: agent_pb::RejectReason::Unsupported as i32,
                    message: "unknown message".into(),
                    task_id: String::new(),
                };
                out.send(Out::Reject(reject)).await;
            }
        };
    }

    async fn on_assign(&mut self, seq: u64, task: agent_pb::AssignTask, out: &mut Outlet, clock: &ServerClock) {
        let lease_until = task.lease_expires_at.as_ref().map(|at| Instant::now() + clock.remaining(at));
        // The same assignment again (a resend): it is running already; say so again.
        if self.tasks.holds(&task.task_id, task.lease_epoch) {
            let accepted = agent_pb::TaskUpdate {
                task_id: task.task_id,
                lease_epoch: task.lease_epoch,
                phase: pb::TaskPhase::Accepted as i32,
                ..agent_pb::TaskUpdate::default()
            };
            out.send(Out::TaskUpdate(accepted)).await;
            return;
        }
        // Task ids name work directories and outbox files: only a UUID is taken.
        let well_formed = uuid::Uuid::parse_str(&task.task_id)
            .map(|_| ())
            .map_err(|_| (agent_pb::RejectReason::Malformed, format!("the task id {:?} is not a UUID", task.task_id)));
        let admitted =
            well_formed.and_then(|()| self.executor.check(&task)).and_then(|()| self.tasks.admit(&task, lease_until));
        match admitted {
            Ok(stop) => {
                let accepted = agent_pb::TaskUpdate {
                    task_id: task.task_id.clone(),
                    lease_epoch: task.lease_epoch,
                    phase: pb::TaskPhase::Accepted as i32,
                    ..agent_pb::TaskUpdate::default()
                };
                out.send(Out::TaskUpdate(accepted)).await;
                self.executor.start(task, self.events_tx.clone(), stop);
            }
            Err((reason, message)) => {
                let reject = agent_pb::Reject { seq, reason: reason as i32, message, task_id: task.task_id };
                out.send(Out::Reject(reject)).await;
            }
        }
    }

    /// An outbox message was recorded (or refused for good): drop it, and forget a task whose
    /// result it was.
    fn settle(&mut self, seq: u64) {
        match self.outbox.settle(seq) {
            Ok(Some(key)) => self.settled(&key),
            Ok(None) => {}
            Err(error) => tracing::error!(%error, "could not remove an acked message from the outbox"),
        }
    }

    /// Drops the outbox message of `key` without an ack.
    fn drop_kept(&mut self, key: &str) {
        if let Err(error) = self.outbox.remove(key) {
            tracing::error!(%error, "could not remove a message from the outbox");
        }
        self.settled(key);
    }

    fn settled(&mut self, key: &str) {
        self.resends.forget(key);
        if let Some((task, epoch)) = result_key(key) {
            self.tasks.forget(task, epoch);
        }
    }
}

/// Completes at `at`, or never.
async fn due(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Whether `seq` follows `last` (it must increase); if so it becomes the last.
fn in_order(last: &mut u64, seq: u64) -> bool {
    if seq > *last {
        *last = seq;
        true
    } else {
        false
    }
}

/// The task and epoch of an outbox key `result.<task>.<epoch>`.
fn result_key(key: &str) -> Option<(&str, u64)> {
    let (task, epoch) = key.strip_prefix("result.")?.rsplit_once('.')?;
    Some((task, epoch.parse().ok()?))
}

/// An open stream: the sending half, the receiving half and the Welcome.
type Opened = (Outlet, tonic::Streaming<agent_pb::SessionResponse>, agent_pb::Welcome);

/// A stream that could not open: try again later, unless the credential was refused.
fn opening_failed(status: tonic::Status) -> Result<Result<Opened, String>, SessionError> {
    match lost_or_fatal(status)? {
        StreamEnd::Lost(why) => Ok(Err(why)),
        StreamEnd::Shutdown => Ok(Err("shutting down".into())),
    }
}

/// The sending half of one stream, numbering what it sends.
struct Outlet {
    tx: mpsc::Sender<agent_pb::SessionRequest>,
    seq: u64,
}

impl Outlet {
    /// Sends `payload` with the next sequence number and returns it. A broken stream shows on
    /// the receiving side, so a failed send is not an error here.
    async fn send(&mut self, payload: Out) -> u64 {
        self.seq += 1;
        let message =
            agent_pb::SessionRequest { seq: self.seq, sent_at: Some(SystemTime::now().into()), payload: Some(payload) };
        let _ = self.tx.send(message).await;
        self.seq
    }
}

/// The server's clock as seen from here: leases are judged on it.
struct ServerClock {
    /// Server time minus agent time, in seconds.
    offset_secs: f64,
}

impl ServerClock {
    fn from_welcome(welcome: &agent_pb::Welcome) -> Self {
        let offset_secs = welcome.server_time.as_ref().map_or(0.0, |server| seconds(server) - now_secs());
        Self { offset_secs }
    }

    /// How long until `at` (server clock): zero if already past, at most a day (a lease is
    /// seconds long; a wild timestamp must not overflow the agent's clock).
    fn remaining(&self, at: &prost_types::Timestamp) -> Duration {
        let left = seconds(at) - (now_secs() + self.offset_secs);
        if left.is_finite() && left > 0.0 { Duration::from_secs_f64(left.min(86_400.0)) } else { Duration::ZERO }
    }
}

fn seconds(t: &prost_types::Timestamp) -> f64 {
    t.seconds as f64 + f64::from(t.nanos) / 1e9
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let total = d.seconds as f64 + f64::from(d.nanos) / 1e9;
    (total > 0.0).then(|| Duration::from_secs_f64(total))
}

/// A broken stream means reconnect, except a refused credential, which no retry fixes.
fn lost_or_fatal(status: tonic::Status) -> Result<StreamEnd, SessionError> {
    match status.code() {
        tonic::Code::Unauthenticated => Err(SessionError::Unauthenticated(status.message().to_string())),
        _ => Ok(StreamEnd::Lost(format!("{}: {}", status.code(), status.message()))),
    }
}

/// The orchestrator endpoint: HTTP/2 keepalive every 10 s (the protocol's rule), so a dead peer
/// behind a silent network is noticed. An `https://` address speaks TLS (rustls), checking the
/// orchestrator's certificate against `ca_pem` when given (a private CA), else the system's roots.
pub fn endpoint(address: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, SessionError> {
    let mut endpoint =
        Endpoint::from_shared(address.to_string()).map_err(|_| SessionError::BadAddress(address.into()))?;
    if address.starts_with("https://") {
        let tls = match ca_pem {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|e| SessionError::Tls(e.to_string()))?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true))
}

/// Exchanges a one-time join token for the node's credential (`AgentService.Enroll`).
pub async fn enroll(
    channel: Channel,
    request: agent_pb::EnrollRequest,
) -> Result<(NodeCredential, agent_pb::EnrollResponse), tonic::Status> {
    let response = AgentServiceClient::new(channel).enroll(request).await?.into_inner();
    let credential = NodeCredential::parse(&response.node_credential)
        .ok_or_else(|| tonic::Status::internal("the orchestrator answered a malformed node credential"))?;
    Ok((credential, response))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_seq_must_increase() {
        let mut last = 1;
        assert!(super::in_order(&mut last, 2));
        assert!(super::in_order(&mut last, 5), "gaps are allowed");
        assert!(!super::in_order(&mut last, 5), "a repeat is not");
        assert!(!super::in_order(&mut last, 3), "nor going back");
        assert_eq!(last, 5);
    }

    #[test]
    fn outbox_keys_name_their_task_and_epoch() {
        assert_eq!(super::result_key("result.t-1.7"), Some(("t-1", 7)));
        assert_eq!(super::result_key("frames.t-1.7.x"), None);
    }
}
