//! The watchers of jobs and snapshots, woken in memory by the process's listener
//! ([`crate::notifications`]): `render_jobs` (payload: job id) and `render_snapshots` (payload:
//! snapshot id) wake the watchers of that id, whichever replica wrote the change.
//!
//! A watcher subscribes before it reads, so a change committed after its read always wakes it.
//! When the listener (re)connects, notifications may have been missed, so every watcher is
//! woken to read again. Dropping a [`Subscription`] releases it; the last one of an id removes
//! the id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use uuid::Uuid;

/// The channel of job changes (payload: the job id).
pub const JOBS_CHANNEL: &str = "render_jobs";
/// The channel of snapshot changes (payload: the snapshot id).
pub const SNAPSHOTS_CHANNEL: &str = "render_snapshots";

/// What a watcher follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// A render job.
    Job(Uuid),
    /// A snapshot.
    Snapshot(Uuid),
}

impl Topic {
    /// The topic of a notification on `channel` with `payload`; `None` for anything else.
    pub(crate) fn of(channel: &str, payload: &str) -> Option<Self> {
        let id = Uuid::try_parse(payload.trim()).ok()?;
        match channel {
            JOBS_CHANNEL => Some(Self::Job(id)),
            SNAPSHOTS_CHANNEL => Some(Self::Snapshot(id)),
            _ => None,
        }
    }
}

struct Entry {
    /// Bumped on every change; receivers wake on a new value.
    sender: watch::Sender<u64>,
    subscribers: usize,
}

#[derive(Default)]
struct Inner {
    topics: Mutex<HashMap<Topic, Entry>>,
    /// Subscriptions alive (exported as `flatrender_render_watchers`).
    watchers: Gauge,
}

/// The process's fan-out of change notifications. Cheap to clone.
#[derive(Clone, Default)]
pub struct Changes {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes").field("topics", &self.topics().len()).finish()
    }
}

/// A watcher's registration: woken by changes of its topic until dropped.
pub struct Subscription {
    changes: Changes,
    topic: Topic,
    receiver: watch::Receiver<u64>,
}

impl Subscription {
    /// Waits for the next change (or returns at once when one came since the last wait).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as any subscription of the topic; never reached.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut topics = self.changes.topics();
        if let Some(entry) = topics.get_mut(&self.topic) {
            entry.subscribers = entry.subscribers.saturating_sub(1);
            if entry.subscribers == 0 {
                topics.remove(&self.topic);
            }
        }
        self.changes.inner.watchers.dec();
    }
}

impl Changes {
    fn topics(&self) -> MutexGuard<'_, HashMap<Topic, Entry>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.inner.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows `topic` from now on.
    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let mut topics = self.topics();
        let entry = topics.entry(topic).or_insert_with(|| Entry { sender: watch::Sender::new(0), subscribers: 0 });
        entry.subscribers += 1;
        let receiver = entry.sender.subscribe();
        drop(topics);
        self.inner.watchers.inc();
        Subscription { changes: self.clone(), topic, receiver }
    }

    /// Subscriptions alive.
    pub fn watchers(&self) -> i64 {
        self.inner.watchers.get()
    }

    /// The gauge of subscriptions alive, for the metrics registry.
    pub fn watchers_gauge(&self) -> Gauge {
        self.inner.watchers.clone()
    }

    /// Wakes the watchers of `topic`.
    pub fn notify(&self, topic: Topic) {
        if let Some(entry) = self.topics().get(&topic) {
            entry.sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }

    /// Wakes every watcher (notifications may have been missed).
    pub fn notify_all(&self) {
        for entry in self.topics().values() {
            entry.sender.send_modify(|version| *version = version.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn subscribers_are_woken_and_released() {
        let changes = Changes::default();
        let id = Uuid::new_v4();
        let mut first = changes.subscribe(Topic::Job(id));
        let mut second = changes.subscribe(Topic::Job(id));
        let other = changes.subscribe(Topic::Snapshot(id));
        assert_eq!(changes.watchers(), 3);
        changes.notify(Topic::Job(id));
        tokio::time::timeout(Duration::from_secs(1), first.changed()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), second.changed()).await.unwrap();
        let mut other = other;
        assert!(tokio::time::timeout(Duration::from_millis(20), other.changed()).await.is_err());
        drop((first, second));
        assert_eq!(changes.topics().len(), 1, "the last subscriber removes its topic");
        changes.notify_all();
        tokio::time::timeout(Duration::from_secs(1), other.changed()).await.unwrap();
        drop(other);
        assert_eq!(changes.watchers(), 0);
        assert!(changes.topics().is_empty());
    }

    #[test]
    fn notifications_name_their_topic() {
        let id = Uuid::new_v4();
        assert_eq!(Topic::of(JOBS_CHANNEL, &id.to_string()), Some(Topic::Job(id)));
        assert_eq!(Topic::of(SNAPSHOTS_CHANNEL, &id.to_string()), Some(Topic::Snapshot(id)));
        assert_eq!(Topic::of(JOBS_CHANNEL, "nope"), None);
        assert_eq!(Topic::of("render_queue", &id.to_string()), None);
    }
}
