//! This replica's connected nodes: each stream's outbound queue and the node as the dispatcher
//! sees it (free slots, capabilities, cached templates, admin state) with the leases it holds,
//! their in-memory expiry and the last heartbeat. Heartbeats and renewals live here, not in the
//! database; the database is written only when something changes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use uuid::Uuid;

use crate::queue::{AdminState, NodeOffer};

/// What the stream's writer sends next.
#[derive(Debug)]
pub enum Outbound {
    /// A message (the writer stamps seq and time); boxed, as messages vary much in size.
    Message(Box<agent_pb::session_response::Payload>),
    /// The stream's end with this status.
    End(Status),
}

/// A lease the node holds, as this replica keeps it.
#[derive(Clone, Debug)]
pub struct HeldTask {
    /// The lease epoch.
    pub epoch: i64,
    /// When the lease lapses unless renewed (this replica's clock).
    pub expires: Instant,
    /// The task's job.
    pub job_id: Option<Uuid>,
    /// Whether the agent accepted it (a TaskUpdate was recorded).
    pub running: bool,
    /// When progress was last written to the database.
    pub progress_written: Option<Instant>,
}

/// A connected node, as placement and the session see it.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Concurrent tasks offered.
    pub slots: u32,
    /// Effective tags.
    pub tags: BTreeSet<String>,
    /// Installed After Effects versions.
    pub ae_versions: Vec<String>,
    /// Physical memory.
    pub ram_bytes: i64,
    /// Whether it has a GPU.
    pub has_gpu: bool,
    /// Whether it has ffmpeg.
    pub has_ffmpeg: bool,
    /// Scheduling state (`nodes.state`).
    pub admin: AdminState,
    /// The agent drains itself (Hello/Health `draining`).
    pub agent_draining: bool,
    /// False once heartbeats stopped for three intervals (its leases were revoked); true again
    /// with the next Health.
    pub responsive: bool,
    /// Template bundles in its cache.
    pub cache: HashSet<[u8; 32]>,
    /// Leases it holds.
    pub tasks: HashMap<Uuid, HeldTask>,
    /// When its last Health arrived.
    pub last_health: Instant,
    /// The latest health sample (GetNode, ListNodes).
    pub health: Option<flatrender_proto::flatrender::render::v1::NodeHealthSample>,
    /// When a sample was last stored in `node_health_logs` (bounded rate).
    pub health_logged: Option<Instant>,
}

/// One agent stream held by this replica.
#[derive(Debug)]
pub struct Connection {
    /// The node.
    pub node_id: Uuid,
    /// The stream's connection epoch (`nodes.connection_epoch`).
    pub connection_epoch: i64,
    /// The node's name.
    pub name: String,
    out: mpsc::UnboundedSender<Outbound>,
    closed: watch::Sender<bool>,
    view: Mutex<NodeView>,
}

impl Connection {
    /// A connection writing to `out`.
    pub fn new(
        node_id: Uuid,
        connection_epoch: i64,
        name: String,
        out: mpsc::UnboundedSender<Outbound>,
        view: NodeView,
    ) -> Self {
        Self { node_id, connection_epoch, name, out, closed: watch::Sender::new(false), view: Mutex::new(view) }
    }

    /// The node as this replica sees it (held briefly; never across an await).
    pub fn view(&self) -> MutexGuard<'_, NodeView> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a message for the agent; a no-op once the stream ended.
    pub fn send(&self, payload: agent_pb::session_response::Payload) {
        if !*self.closed.borrow() {
            let _ = self.out.send(Outbound::Message(Box::new(payload)));
        }
    }

    /// Ends the stream with `status` (superseded, deleted, shutdown); the session stops reading.
    pub fn end(&self, status: Status) {
        if !self.closed.send_replace(true) {
            let _ = self.out.send(Outbound::End(status));
        }
    }

    /// Whether the stream was ended by [`Connection::end`].
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Completes once [`Connection::end`] was called.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Records a lease the node now holds.
    pub fn hold(&self, task: Uuid, task_lease: HeldTask) {
        self.view().tasks.insert(task, task_lease);
    }

    /// Forgets the lease of `task` if it is the one of `epoch`; returns whether it was held.
    pub fn release(&self, task: Uuid, epoch: i64) -> bool {
        let mut view = self.view();
        if view.tasks.get(&task).is_some_and(|held| held.epoch == epoch) {
            view.tasks.remove(&task);
            true
        } else {
            false
        }
    }

    /// The epoch under which the node holds `task`, per this replica.
    pub fn held_epoch(&self, task: Uuid) -> Option<i64> {
        self.view().tasks.get(&task).map(|held| held.epoch)
    }

    /// What placement may give this node now; `None` when it takes nothing.
    pub fn offer(&self) -> Option<NodeOffer> {
        if self.is_closed() {
            return None;
        }
        let view = self.view();
        let free = (view.slots as usize).saturating_sub(view.tasks.len()) as u32;
        if free == 0 || !view.responsive || view.agent_draining || view.admin == AdminState::Draining {
            return None;
        }
        Some(NodeOffer {
            node_id: self.node_id,
            connection_epoch: self.connection_epoch,
            name: self.name.clone(),
            free_slots: free,
            admin: view.admin,
            tags: view.tags.clone(),
            ae_versions: view.ae_versions.clone(),
            ram_bytes: view.ram_bytes,
            has_gpu: view.has_gpu,
            has_ffmpeg: view.has_ffmpeg,
            cached: view.cache.clone(),
        })
    }
}

/// Every stream this replica holds, by node.
#[derive(Debug, Default)]
pub struct Registry {
    nodes: Mutex<HashMap<Uuid, Arc<Connection>>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Connection>>> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `conn`. Returns the older stream of the same node it replaces (the caller ends it),
    /// or `Err(conn)` when a newer stream of the node is registered already.
    pub fn register(&self, conn: Arc<Connection>) -> Result<Option<Arc<Connection>>, Arc<Connection>> {
        let mut nodes = self.lock();
        if let Some(existing) = nodes.get(&conn.node_id)
            && existing.connection_epoch > conn.connection_epoch
        {
            return Err(conn);
        }
        Ok(nodes.insert(conn.node_id, conn))
    }

    /// Removes the stream of `node` if it is the one of `connection_epoch`.
    pub fn remove(&self, node: Uuid, connection_epoch: i64) -> Option<Arc<Connection>> {
        let mut nodes = self.lock();
        if nodes.get(&node).is_some_and(|c| c.connection_epoch == connection_epoch) {
            nodes.remove(&node)
        } else {
            None
        }
    }

    /// The stream of `node`, if this replica holds one.
    pub fn get(&self, node: Uuid) -> Option<Arc<Connection>> {
        self.lock().get(&node).cloned()
    }

    /// Every stream held.
    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    /// What placement may give the nodes now.
    pub fn offers(&self) -> Vec<NodeOffer> {
        self.all().iter().filter_map(|c| c.offer()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn view(slots: u32) -> NodeView {
        NodeView {
            slots,
            tags: BTreeSet::new(),
            ae_versions: vec!["24.0".into()],
            ram_bytes: 1 << 30,
            has_gpu: false,
            has_ffmpeg: false,
            admin: AdminState::Active,
            agent_draining: false,
            responsive: true,
            cache: HashSet::new(),
            tasks: HashMap::new(),
            last_health: Instant::now(),
            health: None,
            health_logged: None,
        }
    }

    fn conn(node: Uuid, epoch: i64, slots: u32) -> (Arc<Connection>, mpsc::UnboundedReceiver<Outbound>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Connection::new(node, epoch, "n".into(), tx, view(slots))), rx)
    }

    fn held(epoch: i64) -> HeldTask {
        HeldTask {
            epoch,
            expires: Instant::now() + Duration::from_secs(15),
            job_id: None,
            running: false,
            progress_written: None,
        }
    }

    #[test]
    fn newer_streams_replace_older_ones() {
        let registry = Registry::default();
        let node = Uuid::new_v4();
        let (first, _rx1) = conn(node, 1, 2);
        let (second, _rx2) = conn(node, 2, 2);
        assert!(registry.register(first.clone()).unwrap().is_none());
        let replaced = registry.register(second.clone()).unwrap().unwrap();
        assert_eq!(replaced.connection_epoch, 1);
        assert!(registry.register(first).is_err(), "an older stream never replaces a newer one");
        assert!(registry.remove(node, 1).is_none(), "only the current stream is removed");
        assert_eq!(registry.get(node).unwrap().connection_epoch, 2);
        assert!(registry.remove(node, 2).is_some());
        assert!(registry.get(node).is_none());
    }

    #[test]
    fn offers_respect_slots_and_states() {
        let (c, _rx) = conn(Uuid::new_v4(), 1, 2);
        assert_eq!(c.offer().unwrap().free_slots, 2);
        c.hold(Uuid::new_v4(), held(1));
        assert_eq!(c.offer().unwrap().free_slots, 1);
        let task = Uuid::new_v4();
        c.hold(task, held(3));
        assert!(c.offer().is_none(), "full");
        assert!(!c.release(task, 2), "another epoch");
        assert!(c.release(task, 3));
        assert!(c.offer().is_some());
        c.view().agent_draining = true;
        assert!(c.offer().is_none());
        c.view().agent_draining = false;
        c.view().admin = AdminState::Draining;
        assert!(c.offer().is_none());
        c.view().admin = AdminState::Quarantined;
        assert!(c.offer().is_some(), "quarantined nodes still take probes");
        c.view().admin = AdminState::Active;
        c.view().responsive = false;
        assert!(c.offer().is_none());
    }

    #[test]
    fn ending_sends_one_status_and_stops_messages() {
        let (c, mut rx) = conn(Uuid::new_v4(), 1, 1);
        c.send(agent_pb::session_response::Payload::Ack(agent_pb::Ack { seq: 1 }));
        c.end(Status::aborted("superseded"));
        c.end(Status::aborted("again"));
        c.send(agent_pb::session_response::Payload::Ack(agent_pb::Ack { seq: 2 }));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Message(_))));
        assert!(matches!(rx.try_recv(), Ok(Outbound::End(s)) if s.message() == "superseded"));
        assert!(rx.try_recv().is_err());
        assert!(c.is_closed());
    }
}
