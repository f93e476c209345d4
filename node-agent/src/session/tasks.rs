//! The tasks this node holds: what was accepted, under which lease epoch, in which phase, until
//! when its lease runs, and how to stop it. The table outlives any one stream, so a reconnect
//! reports what is still held (Hello.held_tasks) and nothing is lost or run twice.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use tokio::sync::{mpsc, watch};

/// Why a running task is told to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The orchestrator sent CancelTask.
    Canceled,
    /// The lease ran out without renewal (agent clock, corrected by the server's offset).
    LeaseExpired,
    /// The orchestrator says the lease is gone (CancelTask LEASE_LOST or UNKNOWN_TASK): the
    /// task belongs to another node now, and no result is sent.
    LeaseLost,
    /// The agent is shutting down.
    Shutdown,
}

/// What the node's work reports back to the stream.
#[derive(Debug)]
pub enum TaskEvent {
    Update(agent_pb::TaskUpdate),
    Frames(agent_pb::FrameReport),
    Result(agent_pb::TaskResult),
    /// Templates added to or evicted from the cache (not a task's, but sent the same way).
    Cache(agent_pb::CacheChange),
    /// After Effects crashed or hung during a task (sent after the task's result; kept in the
    /// outbox until acked).
    Crash(agent_pb::CrashReport),
}

/// A task's stop signal, as its runner sees it.
#[derive(Clone, Debug)]
pub struct StopSignal(watch::Receiver<Option<StopReason>>);

impl StopSignal {
    /// Why the task was told to stop, if it was.
    pub fn reason(&self) -> Option<StopReason> {
        *self.0.borrow()
    }

    /// Completes once the task is told to stop, with the reason.
    pub async fn stopped(&mut self) -> StopReason {
        loop {
            if let Some(reason) = *self.0.borrow_and_update() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                // The table dropped the task: treat as shutdown.
                return StopReason::Shutdown;
            }
        }
    }
}

/// Runs tasks. The session hands every accepted AssignTask here; the runner reports through
/// `events` and must end with exactly one `TaskEvent::Result`.
pub trait Executor: Send + Sync + 'static {
    /// Whether this node can take the task at all (After Effects version, ffmpeg, disk).
    fn check(&self, task: &agent_pb::AssignTask) -> Result<(), (agent_pb::RejectReason, String)>;
    /// Starts the task in the background.
    fn start(&self, task: agent_pb::AssignTask, events: mpsc::UnboundedSender<TaskEvent>, stop: StopSignal);
}

#[derive(Debug)]
struct Held {
    epoch: u64,
    kind: i32,
    phase: i32,
    /// Agent-clock deadline of the lease.
    lease_until: Option<Instant>,
    stop: watch::Sender<Option<StopReason>>,
    /// The result is in the outbox; the task only waits for its ack.
    result_pending: bool,
}

/// The held tasks and the node's capacity.
#[derive(Debug)]
pub struct TaskTable {
    held: HashMap<String, Held>,
    slots: u32,
    draining: bool,
}

impl TaskTable {
    pub fn new(slots: u32, draining: bool) -> Self {
        Self { held: HashMap::new(), slots, draining }
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Tasks still running (a task whose result waits for its ack no longer uses a slot).
    pub fn running(&self) -> u32 {
        self.held.values().filter(|t| !t.result_pending).count() as u32
    }

    /// Whether `(task, epoch)` is held.
    pub fn holds(&self, task_id: &str, epoch: u64) -> bool {
        self.held.get(task_id).is_some_and(|t| t.epoch == epoch)
    }

    /// Takes a task if there is room: returns its stop signal, or why not.
    pub fn admit(
        &mut self,
        task: &agent_pb::AssignTask,
        lease_until: Option<Instant>,
    ) -> Result<StopSignal, (agent_pb::RejectReason, String)> {
        if self.held.get(&task.task_id).is_some_and(|t| t.epoch >= task.lease_epoch) {
            let message = format!("task {} is already held at this or a newer epoch", task.task_id);
            return Err((agent_pb::RejectReason::StaleEpoch, message));
        }
        if self.draining {
            return Err((agent_pb::RejectReason::Draining, "the node is draining".into()));
        }
        let replacing = self.held.get(&task.task_id).is_some_and(|t| !t.result_pending);
        if self.running() - u32::from(replacing) >= self.slots {
            return Err((agent_pb::RejectReason::NoCapacity, format!("all {} slots are busy", self.slots)));
        }
        let (stop, signal) = watch::channel(None);
        let held = Held {
            epoch: task.lease_epoch,
            kind: task.kind,
            phase: pb::TaskPhase::Accepted as i32,
            lease_until,
            stop,
            result_pending: false,
        };
        // A newer epoch of a task held before replaces it: the old run is told to stop.
        if let Some(old) = self.held.insert(task.task_id.clone(), held) {
            let _ = old.stop.send_replace(Some(StopReason::Canceled));
        }
        Ok(StopSignal(signal))
    }

    /// A task whose result an earlier run of the agent left in the outbox: held, not running,
    /// until the result is acked, so that Hello lists it and the orchestrator settles it.
    pub fn restore_pending(&mut self, task_id: &str, epoch: u64) {
        let (stop, _) = watch::channel(None);
        let held = Held {
            epoch,
            kind: pb::TaskKind::Unspecified as i32,
            phase: pb::TaskPhase::Unspecified as i32,
            lease_until: None,
            stop,
            result_pending: true,
        };
        self.held.entry(task_id.to_string()).or_insert(held);
    }

    /// Notes a task's phase (for Health and Hello).
    pub fn set_phase(&mut self, task_id: &str, epoch: u64, phase: i32) {
        if let Some(task) = self.held.get_mut(task_id).filter(|t| t.epoch == epoch) {
            task.phase = phase;
        }
    }

    /// The task ended and its result waits in the outbox.
    pub fn result_pending(&mut self, task_id: &str, epoch: u64) {
        if let Some(task) = self.held.get_mut(task_id).filter(|t| t.epoch == epoch) {
            task.result_pending = true;
        }
    }

    /// The result was acked (or refused for good): the task is no longer held.
    pub fn forget(&mut self, task_id: &str, epoch: u64) {
        if self.holds(task_id, epoch) {
            self.held.remove(task_id);
        }
    }

    /// Tells a task to stop (CancelTask); returns whether it was held at that epoch.
    pub fn stop(&mut self, task_id: &str, epoch: u64, reason: StopReason) -> bool {
        match self.held.get(task_id).filter(|t| t.epoch == epoch) {
            Some(task) => {
                let _ = task.stop.send_replace(Some(reason));
                true
            }
            None => false,
        }
    }

    /// Extends a lease (LeaseRenewal), `ttl` from now on the agent's clock.
    pub fn renew(&mut self, task_id: &str, epoch: u64, ttl: Duration) {
        if let Some(task) = self.held.get_mut(task_id).filter(|t| t.epoch == epoch) {
            task.lease_until = Some(Instant::now() + ttl);
        }
    }

    /// Stops every running task whose lease has run out; returns their ids. Fencing keeps the
    /// results of such tasks out anyway; stopping them only saves the work.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut expired = Vec::new();
        for (id, task) in &self.held {
            if !task.result_pending && task.lease_until.is_some_and(|until| until < now) {
                let _ = task.stop.send_replace(Some(StopReason::LeaseExpired));
                expired.push(id.clone());
            }
        }
        expired
    }

    /// Whether a result of this task must be dropped rather than sent: its lease is gone, so
    /// fencing would refuse it anyway (the protocol says to send none). The task is forgotten.
    pub fn drop_result(&mut self, task_id: &str, epoch: u64) -> bool {
        let lost = self
            .held
            .get(task_id)
            .filter(|t| t.epoch == epoch)
            .is_some_and(|t| matches!(*t.stop.borrow(), Some(StopReason::LeaseLost | StopReason::LeaseExpired)));
        if lost {
            self.held.remove(task_id);
        }
        lost
    }

    /// Stops everything (shutdown).
    pub fn stop_all(&mut self) {
        for task in self.held.values() {
            let _ = task.stop.send_replace(Some(StopReason::Shutdown));
        }
    }

    /// What Hello and Health list.
    pub fn held_list(&self) -> Vec<agent_pb::HeldTask> {
        let mut list: Vec<_> = self
            .held
            .iter()
            .map(|(id, t)| agent_pb::HeldTask {
                task_id: id.clone(),
                lease_epoch: t.epoch,
                kind: t.kind,
                phase: t.phase,
                result_pending: t.result_pending,
            })
            .collect();
        list.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        list
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn assign(id: &str, epoch: u64) -> agent_pb::AssignTask {
        agent_pb::AssignTask { task_id: id.into(), lease_epoch: epoch, ..agent_pb::AssignTask::default() }
    }

    #[tokio::test]
    async fn slots_draining_and_epochs_decide_admission() {
        let mut table = TaskTable::new(1, false);
        let mut first = table.admit(&assign("a", 5), None).unwrap();
        assert_eq!(table.admit(&assign("b", 1), None).unwrap_err().0, agent_pb::RejectReason::NoCapacity);
        assert_eq!(table.admit(&assign("a", 5), None).unwrap_err().0, agent_pb::RejectReason::StaleEpoch);
        // A newer lease of the same task replaces the old run, which is told to stop.
        let _second = table.admit(&assign("a", 6), None).unwrap();
        assert!(table.holds("a", 6) && !table.holds("a", 5));
        assert_eq!(first.stopped().await, StopReason::Canceled);
        // A result waiting for its ack frees the slot.
        table.result_pending("a", 6);
        assert!(table.admit(&assign("b", 1), None).is_ok());
        table.set_draining(true);
        assert_eq!(table.admit(&assign("c", 1), None).unwrap_err().0, agent_pb::RejectReason::Draining);
        let held = table.held_list();
        assert_eq!(
            held.iter().map(|t| (t.task_id.as_str(), t.result_pending)).collect::<Vec<_>>(),
            [("a", true), ("b", false)]
        );
        table.forget("a", 6);
        assert!(!table.holds("a", 6));
    }

    #[test]
    fn results_left_by_an_earlier_run_are_held_without_a_slot() {
        let mut table = TaskTable::new(1, false);
        table.restore_pending("old", 3);
        assert!(table.holds("old", 3));
        assert_eq!(table.running(), 0, "a result waiting for its ack uses no slot");
        assert!(table.held_list()[0].result_pending);
        assert!(table.admit(&assign("new", 1), None).is_ok());
        table.forget("old", 3);
        assert!(!table.holds("old", 3));
    }

    #[tokio::test]
    async fn leases_expire_unless_renewed() {
        let mut table = TaskTable::new(2, false);
        let now = Instant::now();
        let mut a = table.admit(&assign("a", 1), Some(now + Duration::from_millis(10))).unwrap();
        let _b = table.admit(&assign("b", 1), Some(now + Duration::from_millis(10))).unwrap();
        table.renew("b", 1, Duration::from_secs(60));
        assert_eq!(table.expire(now + Duration::from_millis(20)), ["a"]);
        assert_eq!(a.stopped().await, StopReason::LeaseExpired);
        assert!(table.drop_result("a", 1), "an expired task's result is not sent");
        assert!(!table.holds("a", 1));
        assert!(table.stop("b", 1, StopReason::Canceled));
        assert!(!table.drop_result("b", 1), "a canceled task still reports CANCELED");
        assert!(!table.stop("b", 2, StopReason::Canceled), "another epoch is not this task");
        assert!(table.stop("b", 1, StopReason::LeaseLost));
        assert!(table.drop_result("b", 1));
    }
}
