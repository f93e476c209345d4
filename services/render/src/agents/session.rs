//! One agent's Session stream: the protocol of `proto/flatrender/agent/v1/agent_service.proto`.
//!
//! Hello within the hello timeout (else FAILED_PRECONDITION), then Welcome — always the first
//! message the orchestrator sends, so messages that came before Hello are answered with their
//! Rejects right after it. The stream takes its node with a new connection epoch (an older
//! stream, on any replica, ends ABORTED "superseded"), settles the leases the agent still
//! holds, and then answers every message in order. A bad message (out of order, oversized,
//! unset, malformed, about an unknown task or a stale epoch) is answered with a Reject naming
//! its seq and logged with the node id; the stream stays up. Heartbeats renew leases in memory.
//! A stream that drops (or says Goodbye RESTART) keeps its node's leases for the reconnect
//! grace; Goodbye SHUTDOWN gives them up at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use prost::Message as _;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::nodes::{self, HelloFacts};
use super::registry::{Connection, HeldTask, NodeView, Outbound};
use super::{Agents, auth, facts, liveness, node_admin, signals};
use crate::error::RenderError;
use crate::queue::batch::{Frames, Outcome, Update};
use crate::queue::report::{self, Fence, Verdict};
use crate::queue::wire::{digest_from_hex, duration, now, parse_id, timestamp};
use crate::queue::{self, requeue};

use agent_pb::RejectReason;
use agent_pb::session_request::Payload as In;
use agent_pb::session_response::Payload as Out;

/// Progress of a task is written at most this often.
const PROGRESS_WRITE_INTERVAL: Duration = Duration::from_secs(2);
/// Most cache entries in a Hello.
const MAX_CACHED_TEMPLATES: usize = 10_000;
/// Most changes in one CacheChange.
const MAX_CACHE_CHANGES: usize = 1000;
/// Longest Reject message.
const MAX_REJECT_CHARS: usize = 1000;

/// The orchestrator's half of the stream.
pub type SessionStream = BoxStream<agent_pb::SessionResponse>;

/// Opens a Session: authenticates the node credential, then runs the stream in its own task.
pub async fn open(
    agents: Arc<Agents>,
    request: Request<Streaming<agent_pb::SessionRequest>>,
) -> Result<Response<SessionStream>, Status> {
    let node = auth::authenticate(&agents.state.pool, request.metadata()).await?;
    let (out, rx) = mpsc::unbounded_channel();
    let inbound = request.into_inner();
    let session = Session { agents, node, out, last_seq: 0, conn: None };
    tokio::spawn(session.run(inbound));
    Ok(Response::new(outbound(rx)))
}

/// The response stream: numbers the messages 1, 2, 3, ... and ends with the status of an
/// [`Outbound::End`] (or OK when every sender is gone).
fn outbound(rx: mpsc::UnboundedReceiver<Outbound>) -> SessionStream {
    Box::pin(futures_util::stream::unfold((rx, 0u64, false), |(mut rx, seq, ended)| async move {
        if ended {
            return None;
        }
        match rx.recv().await? {
            Outbound::Message(payload) => {
                let seq = seq + 1;
                let message = agent_pb::SessionResponse { seq, sent_at: Some(now()), payload: Some(*payload) };
                Some((Ok(message), (rx, seq, false)))
            }
            Outbound::End(status) => Some((Err(status), (rx, seq, true))),
        }
    }))
}

/// How a stream ended.
enum Exit {
    /// Ended by this replica (superseded, node deleted, shutdown).
    Closed,
    /// The agent said Goodbye.
    Goodbye(agent_pb::GoodbyeReason),
    /// The stream dropped.
    Lost,
}

struct Session {
    agents: Arc<Agents>,
    node: Uuid,
    out: mpsc::UnboundedSender<Outbound>,
    last_seq: u64,
    conn: Option<Arc<Connection>>,
}

/// A Reject to send.
fn reject_of(seq: u64, reason: RejectReason, message: &str, task_id: &str) -> agent_pb::Reject {
    agent_pb::Reject {
        seq,
        reason: reason as i32,
        message: message.chars().take(MAX_REJECT_CHARS).collect(),
        task_id: task_id.to_owned(),
    }
}

impl Session {
    fn send(&self, payload: Out) {
        match &self.conn {
            Some(conn) => conn.send(payload),
            None => {
                let _ = self.out.send(Outbound::Message(Box::new(payload)));
            }
        }
    }

    fn end(&self, status: Status) {
        match &self.conn {
            Some(conn) => conn.end(status),
            None => {
                let _ = self.out.send(Outbound::End(status));
            }
        }
    }

    fn reject(&self, seq: u64, reason: RejectReason, message: &str, task_id: &str) {
        tracing::warn!(node = %self.node, seq, reason = reason.as_str_name(), task = task_id, "agent message rejected: {message}");
        self.send(Out::Reject(reject_of(seq, reason, message, task_id)));
    }

    fn ack(&self, seq: u64) {
        self.send(Out::Ack(agent_pb::Ack { seq }));
    }

    /// Sequence, size and payload checks every envelope passes first.
    fn check_envelope(&mut self, message: &agent_pb::SessionRequest) -> Option<(RejectReason, String)> {
        if message.seq <= self.last_seq {
            return Some((
                RejectReason::OutOfOrder,
                format!("seq {} is not greater than the previous {}", message.seq, self.last_seq),
            ));
        }
        if message.seq != self.last_seq + 1 {
            tracing::info!(node = %self.node, after = self.last_seq, seq = message.seq, "gap in the agent's sequence numbers");
        }
        self.last_seq = message.seq;
        let limit = self.agents.state.settings.max_message_bytes as usize;
        let size = message.encoded_len();
        if size > limit {
            return Some((RejectReason::Oversized, format!("envelope of {size} bytes is over the limit of {limit}")));
        }
        if message.payload.is_none() {
            return Some((RejectReason::Unsupported, "the payload is unset or of a newer protocol version".into()));
        }
        None
    }

    async fn run(mut self, mut inbound: Streaming<agent_pb::SessionRequest>) {
        let Some((hello, facts, early)) = self.await_hello(&mut inbound).await else { return };
        let Some(conn) = self.take_node(&hello, &facts).await else { return };
        for reject in early {
            self.send(Out::Reject(reject));
        }
        if !self.settle(&hello.held_tasks).await {
            return self.finish(Exit::Closed).await;
        }
        signals::deliver_commands(&self.agents, &conn).await;
        self.agents.wake_dispatcher();
        let exit = loop {
            tokio::select! {
                biased;
                () = conn.closed() => break Exit::Closed,
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Some(reason) = self.handle(message).await {
                            break Exit::Goodbye(reason);
                        }
                    }
                    Ok(None) | Err(_) => break Exit::Lost,
                },
            }
        };
        self.finish(exit).await;
    }

    /// Reads until a valid Hello (or the stream ends); collects the Rejects of what came first.
    async fn await_hello(
        &mut self,
        inbound: &mut Streaming<agent_pb::SessionRequest>,
    ) -> Option<(agent_pb::Hello, HelloFacts, Vec<agent_pb::Reject>)> {
        let timeout = self.agents.state.settings.hello_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut early = Vec::new();
        loop {
            let message = match tokio::time::timeout_at(deadline, inbound.message()).await {
                Err(_) => {
                    tracing::warn!(node = %self.node, "no Hello in time; ending the stream");
                    self.end(Status::failed_precondition(format!(
                        "the first message must be Hello, within {} s",
                        timeout.as_secs_f64()
                    )));
                    return None;
                }
                Ok(Ok(Some(message))) => message,
                Ok(_) => return None,
            };
            let seq = message.seq;
            if let Some((reason, text)) = self.check_envelope(&message) {
                tracing::warn!(node = %self.node, seq, reason = reason.as_str_name(), "agent message before Hello rejected: {text}");
                early.push(reject_of(seq, reason, &text, ""));
                continue;
            }
            let Some(In::Hello(hello)) = message.payload else {
                tracing::warn!(node = %self.node, seq, "agent message before Hello rejected");
                early.push(reject_of(seq, RejectReason::OutOfOrder, "the first message must be Hello", ""));
                continue;
            };
            if parse_id(&hello.node_id) != Some(self.node) {
                tracing::warn!(node = %self.node, claimed = %hello.node_id, "Hello names another node");
                self.end(Status::permission_denied("Hello.node_id is not the node of the credential"));
                return None;
            }
            if hello.protocol_version() != agent_pb::ProtocolVersion::V1 {
                let text =
                    format!("protocol version {} is not supported; this orchestrator speaks 1", hello.protocol_version);
                self.reject(seq, RejectReason::Unsupported, &text, "");
                self.end(Status::failed_precondition(text));
                return None;
            }
            match parse_hello(&hello) {
                Ok(facts) => return Some((hello, facts, early)),
                // No Welcome can follow this Hello, so its Reject goes out at once; a corrected
                // Hello may still come before the deadline.
                Err(e) => self.reject(seq, RejectReason::Malformed, &e.to_string(), ""),
            }
        }
    }

    /// Takes the node for this stream (new connection epoch), registers it and sends Welcome.
    async fn take_node(&mut self, hello: &agent_pb::Hello, facts: &HelloFacts) -> Option<Arc<Connection>> {
        let settings = Arc::clone(&self.agents.state.settings);
        let connected = match nodes::connect(&self.agents.state.pool, self.node, &settings.orchestrator_id, facts).await
        {
            Ok(Some(connected)) => connected,
            Ok(None) => {
                self.end(RenderError::Unauthenticated("invalid node credential".into()).into());
                return None;
            }
            Err(e) => {
                tracing::error!(node = %self.node, error = %e, "cannot take the node for a new stream");
                self.end(Status::unavailable("the orchestrator cannot reach its database; reconnect"));
                return None;
            }
        };
        let (admin, admin_pb) = nodes::admin_state(&connected.state);
        let view = NodeView {
            slots: facts.slots as u32,
            tags: connected.tags.iter().cloned().collect(),
            ae_versions: facts.facts.ae_versions.clone(),
            ram_bytes: facts.facts.ram_bytes,
            has_gpu: facts.facts.has_gpu(),
            has_ffmpeg: facts.facts.has_ffmpeg,
            admin,
            agent_draining: hello.draining,
            responsive: true,
            cache: facts.cache.iter().map(|(d, _, _)| *d).collect(),
            tasks: Default::default(),
            last_health: Instant::now(),
            health: None,
            health_logged: None,
        };
        let conn = Arc::new(Connection::new(
            self.node,
            connected.connection_epoch,
            connected.name.clone(),
            self.out.clone(),
            view,
        ));
        match self.agents.registry.register(Arc::clone(&conn)) {
            Ok(Some(older)) => older.end(RenderError::Aborted("superseded".into()).into()),
            Ok(None) => {}
            Err(conn) => {
                conn.end(RenderError::Aborted("superseded".into()).into());
                return None;
            }
        }
        self.conn = Some(Arc::clone(&conn));
        tracing::info!(node = %self.node, name = %connected.name, epoch = connected.connection_epoch, "agent connected");
        self.send(Out::Welcome(agent_pb::Welcome {
            protocol_version: agent_pb::ProtocolVersion::V1 as i32,
            node_id: self.node.to_string(),
            node_name: connected.name,
            heartbeat_interval: Some(duration(settings.heartbeat_interval)),
            lease_ttl: Some(duration(settings.lease_ttl)),
            reconnect_grace: Some(duration(settings.reconnect_grace)),
            server_time: Some(now()),
            admin_state: admin_pb as i32,
            admin_reason: connected.state_reason.unwrap_or_default(),
            tags: connected.tags,
            orchestrator_id: settings.orchestrator_id.clone(),
            max_message_bytes: settings.max_message_bytes,
            connection_epoch: connected.connection_epoch.max(0) as u64,
        }));
        Some(conn)
    }

    /// Rule 4: a LeaseRenewal for the held tasks still leased to this node at their epoch, a
    /// CancelTask for the rest. Leases of the node the agent no longer holds are lost. False
    /// when the database could not be read (the stream is ended UNAVAILABLE).
    async fn settle(&mut self, held: &[agent_pb::HeldTask]) -> bool {
        let (Some(conn), pool) = (self.conn.clone(), &self.agents.state.pool) else { return false };
        let current = match queue::leases_of_node(pool, self.node).await {
            Ok(current) => current,
            Err(e) => {
                tracing::error!(node = %self.node, error = %e, "cannot settle the held tasks");
                conn.end(Status::unavailable("the orchestrator cannot reach its database; reconnect"));
                return false;
            }
        };
        let ttl = self.agents.state.settings.lease_ttl;
        let expires_at = timestamp(OffsetDateTime::now_utc() + ttl);
        let mut renewed = Vec::new();
        let mut cancel = Vec::new();
        let mut kept: HashSet<Uuid> = HashSet::new();
        for task in held {
            let lease = parse_id(&task.task_id)
                .and_then(|id| current.iter().find(|c| c.task_id == id && c.lease_epoch == task.lease_epoch as i64));
            match lease {
                Some(lease) => {
                    kept.insert(lease.task_id);
                    conn.hold(
                        lease.task_id,
                        HeldTask {
                            epoch: lease.lease_epoch,
                            expires: Instant::now() + ttl,
                            job_id: None,
                            running: lease.state == "running",
                            progress_written: None,
                        },
                    );
                    renewed.push(agent_pb::TaskLease {
                        task_id: task.task_id.clone(),
                        lease_epoch: task.lease_epoch,
                        lease_expires_at: Some(expires_at),
                    });
                }
                None => cancel.push(task),
            }
        }
        let unlisted: Vec<(Uuid, i64)> =
            current.iter().filter(|c| !kept.contains(&c.task_id)).map(|c| (c.task_id, c.lease_epoch)).collect();
        if !unlisted.is_empty() {
            let epoch = conn.connection_epoch;
            match queue::retrying(|| requeue::lease_lost(pool, self.node, epoch, &unlisted)).await {
                Ok(lost) => {
                    tracing::info!(node = %self.node, tasks = lost.len(), "leases the agent no longer holds ended")
                }
                Err(e) => tracing::error!(node = %self.node, error = %e, "cannot end the leases the agent lost"),
            }
        }
        if !held.is_empty() {
            self.send(Out::LeaseRenewal(agent_pb::LeaseRenewal { leases: renewed }));
        }
        if !cancel.is_empty() {
            let leases: Vec<(Uuid, i64)> =
                cancel.iter().filter_map(|t| Some((parse_id(&t.task_id)?, t.lease_epoch as i64))).collect();
            let rows = queue::task_leases(pool, &leases).await.unwrap_or_default();
            for task in cancel {
                let row = parse_id(&task.task_id).and_then(|id| rows.iter().find(|r| r.task_id == id));
                let reason = row
                    .map_or(agent_pb::CancelReason::LeaseLost, |r| r.cancel_reason(task.lease_epoch as i64, self.node));
                self.send(Out::CancelTask(agent_pb::CancelTask {
                    task_id: task.task_id.clone(),
                    lease_epoch: task.lease_epoch,
                    reason: reason as i32,
                    message: "the task is not leased to this node under that epoch".into(),
                }));
            }
        }
        self.agents.wake_dispatcher();
        true
    }

    /// After the stream: a drop (or Goodbye RESTART) keeps the leases for the grace period;
    /// Goodbye SHUTDOWN gives them up now; a stream ended here leaves the node to its new holder.
    async fn finish(self, exit: Exit) {
        let Some(conn) = self.conn.clone() else { return };
        let removed = self.agents.registry.remove(self.node, conn.connection_epoch).is_some();
        let settings = &self.agents.state.settings;
        match exit {
            Exit::Closed => {}
            _ if !removed => {}
            Exit::Goodbye(agent_pb::GoodbyeReason::Shutdown) => {
                tracing::info!(node = %self.node, "agent shut down");
                let pool = &self.agents.state.pool;
                if let Err(e) = nodes::stream_ended(pool, self.node, conn.connection_epoch).await {
                    tracing::warn!(node = %self.node, error = %e, "cannot record when the node was last heard");
                }
                let offline = queue::retrying(|| {
                    requeue::lost_node(
                        pool,
                        self.node,
                        conn.connection_epoch,
                        &settings.orchestrator_id,
                        false,
                        ev::NodeOfflineReason::Shutdown,
                    )
                })
                .await;
                match offline {
                    Ok(Some(lost)) if !lost.tasks.is_empty() => {
                        tracing::info!(node = %self.node, tasks = lost.tasks.len(), "tasks of a node that shut down requeued");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!(node = %self.node, error = %e, "cannot mark the node offline; waiting for the grace period");
                        liveness::after_grace(Arc::clone(&self.agents), self.node, conn.connection_epoch);
                    }
                }
            }
            Exit::Goodbye(_) | Exit::Lost => {
                tracing::info!(node = %self.node, grace = ?settings.reconnect_grace, "agent stream ended; keeping its leases for the grace period");
                if let Err(e) = nodes::stream_ended(&self.agents.state.pool, self.node, conn.connection_epoch).await {
                    tracing::warn!(node = %self.node, error = %e, "cannot record when the node was last heard");
                }
                liveness::after_grace(Arc::clone(&self.agents), self.node, conn.connection_epoch);
            }
        }
        self.agents.wake_dispatcher();
    }

    /// Handles one message; returns the reason of a Goodbye.
    async fn handle(&mut self, message: agent_pb::SessionRequest) -> Option<agent_pb::GoodbyeReason> {
        let seq = message.seq;
        if let Some((reason, text)) = self.check_envelope(&message) {
            self.reject(seq, reason, &text, "");
            return None;
        }
        match message.payload? {
            In::Hello(_) => self.reject(seq, RejectReason::OutOfOrder, "a second Hello on one stream", ""),
            In::Health(health) => self.on_health(&health),
            In::TaskUpdate(update) => self.on_update(seq, &update).await,
            In::FrameReport(frames) => self.on_frames(seq, &frames).await,
            In::TaskResult(result) => self.on_result(seq, &result).await,
            In::CacheChange(change) => self.on_cache(seq, &change).await,
            In::CrashReport(crash) => self.on_crash(seq, &crash).await,
            In::Ack(ack) => tracing::debug!(node = %self.node, seq = ack.seq, "agent acknowledged"),
            In::Reject(reject) => self.on_agent_reject(&reject).await,
            In::Goodbye(goodbye) => {
                tracing::info!(node = %self.node, reason = goodbye.reason().as_str_name(), message = %goodbye.message, "agent says goodbye");
                return Some(goodbye.reason());
            }
        }
        None
    }

    /// Rule 5: Health is the heartbeat; renew the leases it lists that this node holds, cancel
    /// the rest. In memory, except that a sample is stored at most once per
    /// `health_log_interval` (queued for the replica's batched writer).
    fn on_health(&mut self, health: &agent_pb::Health) {
        let Some(conn) = self.conn.clone() else { return };
        let ttl = self.agents.state.settings.lease_ttl;
        let expires_at = timestamp(OffsetDateTime::now_utc() + ttl);
        let mut wake = false;
        let mut back = false;
        let mut log = None;
        {
            let mut renewed = Vec::new();
            let mut cancels = Vec::new();
            // Answered under the view's lock, so the answers keep their order with the
            // CancelTasks of a concurrent resync.
            let mut view = conn.view();
            let now = Instant::now();
            view.last_health = now;
            if health.sample.is_some() {
                view.health = health.sample.clone();
                let interval = self.agents.state.settings.health_log_interval;
                if view.health_logged.is_none_or(|at| now.duration_since(at) >= interval) {
                    view.health_logged = Some(now);
                    log = Some(node_admin::health::HealthRow::of(health, OffsetDateTime::now_utc()));
                }
            }
            if !view.responsive {
                view.responsive = true;
                wake = true;
                back = true;
            }
            if view.agent_draining != health.draining {
                view.agent_draining = health.draining;
                wake |= !health.draining;
            }
            for task in &health.tasks {
                let held = parse_id(&task.task_id).and_then(|id| view.tasks.get_mut(&id));
                match held {
                    Some(held) if held.epoch == task.lease_epoch as i64 => {
                        held.expires = now + ttl;
                        renewed.push(agent_pb::TaskLease {
                            task_id: task.task_id.clone(),
                            lease_epoch: task.lease_epoch,
                            lease_expires_at: Some(expires_at),
                        });
                    }
                    _ => cancels.push(task),
                }
            }
            conn.send(Out::LeaseRenewal(agent_pb::LeaseRenewal { leases: renewed }));
            for task in cancels {
                tracing::debug!(node = %self.node, task = %task.task_id, epoch = task.lease_epoch, "Health lists a task the node does not hold");
                conn.send(Out::CancelTask(agent_pb::CancelTask {
                    task_id: task.task_id.clone(),
                    lease_epoch: task.lease_epoch,
                    reason: agent_pb::CancelReason::LeaseLost as i32,
                    message: "the task is not leased to this node under that epoch".into(),
                }));
            }
        }
        if wake {
            self.agents.wake_dispatcher();
        }
        if back {
            let agents = Arc::clone(&self.agents);
            tokio::spawn(async move { liveness::heard_again(&agents, &conn).await });
        }
        if let Some(row) = log {
            self.agents.health_log.push(self.node, row);
        }
    }

    /// The fence of a task message, or a MALFORMED Reject.
    fn fence(&self, seq: u64, task_id: &str, epoch: u64) -> Option<Fence> {
        let (Some(task), Ok(lease_epoch)) = (parse_id(task_id), i64::try_from(epoch)) else {
            self.reject(seq, RejectReason::Malformed, "task_id must be a UUID and lease_epoch a valid epoch", task_id);
            return None;
        };
        let connection_epoch = self.conn.as_ref().map_or(0, |c| c.connection_epoch);
        Some(Fence { task_id: task, lease_epoch, node_id: self.node, connection_epoch })
    }

    /// Answers a verdict; true when accepted.
    fn answer(&self, seq: u64, task_id: &str, verdict: crate::Result<Verdict>, ack: bool) -> bool {
        match verdict {
            Ok(Verdict::Accepted) => {
                if ack {
                    self.ack(seq);
                }
                true
            }
            Ok(Verdict::Stale(text)) => {
                self.reject(seq, RejectReason::StaleEpoch, &text, task_id);
                false
            }
            Ok(Verdict::Unknown) => {
                self.reject(seq, RejectReason::UnknownTask, "the task is not leased to this node", task_id);
                false
            }
            Ok(Verdict::Malformed(text)) => {
                self.reject(seq, RejectReason::Malformed, &text, task_id);
                false
            }
            Ok(Verdict::Superseded) => {
                self.reject(
                    seq,
                    RejectReason::Unavailable,
                    "this stream was superseded; resend on the current one",
                    task_id,
                );
                false
            }
            Err(RenderError::Unavailable(why)) => {
                // A service it needs is down (the file service verifying a delivery): the
                // agent resends later, its lease kept; the node is not at fault.
                self.reject(seq, RejectReason::Unavailable, &why, task_id);
                false
            }
            Err(e) => {
                tracing::error!(node = %self.node, seq, error = %e, "cannot record an agent message");
                self.reject(
                    seq,
                    RejectReason::Unavailable,
                    "the orchestrator cannot record this now; resend later",
                    task_id,
                );
                false
            }
        }
    }

    async fn on_update(&mut self, seq: u64, update: &agent_pb::TaskUpdate) {
        let Some(conn) = self.conn.clone() else { return };
        let Some(fence) = self.fence(seq, &update.task_id, update.lease_epoch) else { return };
        let now = Instant::now();
        let held = conn.view().tasks.get(&fence.task_id).cloned().filter(|h| h.epoch == fence.lease_epoch);
        let due = held.as_ref().is_none_or(|h| {
            !h.running || h.progress_written.is_none_or(|w| now.duration_since(w) >= PROGRESS_WRITE_INTERVAL)
        });
        if !due {
            return;
        }
        let pool = &self.agents.state.pool;
        let batched = Update { fence, update: update.clone() };
        let verdict = match self.agents.reports.updates.submit(pool, batched).await {
            Some(verdict) => Ok(verdict),
            None => queue::retrying(|| report::task_update(pool, fence, update)).await,
        };
        if matches!(verdict, Ok(Verdict::Accepted)) {
            let mut view = conn.view();
            let ttl = self.agents.state.settings.lease_ttl;
            let entry = view.tasks.entry(fence.task_id).or_insert_with(|| HeldTask {
                epoch: fence.lease_epoch,
                expires: now + ttl,
                job_id: None,
                running: true,
                progress_written: None,
            });
            entry.running = true;
            entry.progress_written = Some(now);
        } else if matches!(verdict, Ok(Verdict::Stale(_))) && held.is_some() {
            // The lease ended elsewhere (a canceled or failed job, a requeue): a resync tells the
            // agent why with a CancelTask and frees the slot, at once: why it ended is in the
            // database already (the report found it ended), whichever replica ended it.
            tokio::spawn(signals::resync(Arc::clone(&self.agents), conn));
        }
        // TaskUpdate is not acknowledged.
        self.answer(seq, &update.task_id, verdict, false);
    }

    async fn on_frames(&mut self, seq: u64, frames: &agent_pb::FrameReport) {
        let Some(fence) = self.fence(seq, &frames.task_id, frames.lease_epoch) else { return };
        let pool = &self.agents.state.pool;
        let batched = Frames { fence, report: frames.clone() };
        let verdict = match self.agents.reports.frames.submit(pool, batched).await {
            Some(verdict) => Ok(verdict),
            None => queue::retrying(|| report::frame_report(pool, fence, frames)).await,
        };
        self.answer(seq, &frames.task_id, verdict, true);
    }

    async fn on_result(&mut self, seq: u64, result: &agent_pb::TaskResult) {
        let Some(conn) = self.conn.clone() else { return };
        let Some(fence) = self.fence(seq, &result.task_id, result.lease_epoch) else { return };
        let state = &self.agents.state;
        let (pool, settings, files) = (&state.pool, &state.settings, state.files.as_ref());
        let batched = Outcome { fence, result: result.clone() };
        let outcome = match self.agents.reports.results.submit(pool, batched).await {
            Some(outcome) => Ok(outcome),
            None => queue::retrying(|| report::task_result(pool, settings, files, fence, result)).await,
        };
        let verdict = outcome.map(|(verdict, ended)| {
            if let Some(ended) = ended {
                tracing::info!(node = %self.node, task = %fence.task_id, epoch = fence.lease_epoch, outcome = result.outcome().as_str_name(), ?ended, "task ended");
            }
            verdict
        });
        if matches!(verdict, Ok(Verdict::Accepted | Verdict::Stale(_) | Verdict::Unknown))
            && conn.release(fence.task_id, fence.lease_epoch)
        {
            self.agents.wake_dispatcher();
        }
        self.answer(seq, &result.task_id, verdict, true);
    }

    async fn on_cache(&mut self, seq: u64, change: &agent_pb::CacheChange) {
        let Some(conn) = self.conn.clone() else { return };
        if change.changes.is_empty() || change.changes.len() > MAX_CACHE_CHANGES {
            self.reject(seq, RejectReason::Malformed, "changes: 1..=1000 per message", "");
            return;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (i, entry) in change.changes.iter().enumerate() {
            let Some(digest) = digest_from_hex(&entry.sha256) else {
                self.reject(seq, RejectReason::Malformed, &format!("changes[{i}].sha256: must be lower-case hex"), "");
                return;
            };
            match entry.kind() {
                agent_pb::CacheChangeKind::Added => {
                    added.retain(|(d, _)| *d != digest);
                    removed.retain(|d| *d != digest);
                    added.push((digest, i64::try_from(entry.size_bytes).unwrap_or(i64::MAX)));
                }
                agent_pb::CacheChangeKind::Unspecified => {
                    self.reject(seq, RejectReason::Malformed, &format!("changes[{i}].kind: is required"), "");
                    return;
                }
                _ => {
                    added.retain(|(d, _)| *d != digest);
                    removed.push(digest);
                }
            }
        }
        let used = i64::try_from(change.cache_used_bytes).unwrap_or(i64::MAX);
        match nodes::apply_cache_changes(
            &self.agents.state.pool,
            self.node,
            conn.connection_epoch,
            &added,
            &removed,
            used,
        )
        .await
        {
            Ok(_) => {
                let mut view = conn.view();
                for (digest, _) in &added {
                    view.cache.insert(*digest);
                }
                for digest in &removed {
                    view.cache.remove(digest);
                }
            }
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "cannot record a cache change; the next Hello replaces it")
            }
        }
    }

    async fn on_crash(&mut self, seq: u64, crash: &agent_pb::CrashReport) {
        let Some(crash_id) = parse_id(&crash.crash_id) else {
            self.reject(seq, RejectReason::Malformed, "crash_id: must be a UUID", &crash.task_id);
            return;
        };
        if crash.report_text.len() > 256 * 1024 || crash.log_tail.len() > 64 * 1024 {
            self.reject(
                seq,
                RejectReason::Oversized,
                "report_text is at most 256 KiB and log_tail 64 KiB",
                &crash.task_id,
            );
            return;
        }
        let (pool, settings) = (&self.agents.state.pool, &self.agents.state.settings);
        let recorded = nodes::record_crash(pool, self.node, crash_id, crash).await;
        let accepted = self.answer(seq, &crash.task_id, recorded.map(|()| Verdict::Accepted), true);
        // Counted after the Ack: the crash is stored either way, and a failed count is retried
        // with the next crash.
        if accepted && let Err(e) = node_admin::crashes::quarantine_if_crashing(pool, settings, self.node).await {
            tracing::error!(node = %self.node, error = %e, "cannot check the node's crashes for quarantine");
        }
    }

    /// The agent refused something; a refused AssignTask goes back to the queue at once.
    async fn on_agent_reject(&mut self, reject: &agent_pb::Reject) {
        let Some(conn) = self.conn.clone() else { return };
        tracing::info!(node = %self.node, seq = reject.seq, reason = reject.reason().as_str_name(), task = %reject.task_id, "agent refused a message: {}", reject.message);
        let Some(task) = parse_id(&reject.task_id) else { return };
        let Some(epoch) = conn.held_epoch(task) else { return };
        let reason = format!("{}: {}", reject.reason().as_str_name(), reject.message);
        let pool = &self.agents.state.pool;
        let stream = conn.connection_epoch;
        match queue::retrying(|| requeue::rejected(pool, self.node, stream, task, epoch, &reason)).await {
            Ok(_) => {
                conn.release(task, epoch);
                self.agents.wake_dispatcher();
            }
            Err(e) => tracing::error!(node = %self.node, task = %task, error = %e, "cannot requeue a refused task"),
        }
    }
}

/// Checks a Hello's facts.
fn parse_hello(hello: &agent_pb::Hello) -> crate::Result<HelloFacts> {
    let facts = facts::machine_facts("hello.facts", hello.facts.as_ref())?;
    let agent_version = facts::agent_version("hello.agent_version", &hello.agent_version)?;
    let slots = facts::slots("hello.slots", hello.slots)?;
    let tags = facts::tags("hello.tags", &hello.tags)?;
    if hello.cached_templates.len() > MAX_CACHED_TEMPLATES {
        return Err(RenderError::invalid("hello.cached_templates", "at most 10,000 entries"));
    }
    let mut cache = Vec::with_capacity(hello.cached_templates.len());
    let mut seen = HashSet::new();
    for (i, entry) in hello.cached_templates.iter().enumerate() {
        let digest = digest_from_hex(&entry.sha256).ok_or_else(|| {
            RenderError::invalid(format!("hello.cached_templates[{i}].sha256"), "must be lower-case hex")
        })?;
        if !seen.insert(digest) {
            continue;
        }
        let used = entry.last_used_at.as_ref().and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok());
        cache.push((digest, i64::try_from(entry.size_bytes).unwrap_or(i64::MAX), used));
    }
    Ok(HelloFacts {
        facts,
        agent_version,
        slots,
        tags,
        cache,
        cache_limit_bytes: i64::try_from(hello.cache_limit_bytes).unwrap_or(i64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_are_bounded() {
        let reject = reject_of(3, RejectReason::Malformed, &"x".repeat(5000), "t");
        assert_eq!(reject.message.len(), MAX_REJECT_CHARS);
        assert_eq!((reject.seq, reject.reason()), (3, RejectReason::Malformed));
    }
}
