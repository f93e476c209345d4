//! The process's one `LISTEN` connection for every render channel, fanned out in memory:
//!
//! - `render_queue`: tasks were queued or a slot freed: wake the dispatcher.
//! - `render_nodes` (payload: node id): resync that node if this replica holds its stream.
//! - `render_jobs` / `render_snapshots` (payload: job / snapshot id): wake that id's watchers.
//!
//! One connection rather than one per concern: a `LISTEN` connection is held for the process's
//! whole life, and the pool must keep enough free for the outbox consumer (which holds one
//! connection while its handler takes another) and for the requests.
//!
//! When the listener (re)connects, notifications may have been missed: every watcher reads
//! again, every held node is resynced and the dispatcher looks for work.

use std::sync::Arc;
use std::time::Duration;

use flatrender_kit::shutdown::ShutdownSignal;
use sqlx::postgres::{PgListener, PgNotification};

use crate::agents::{Agents, signals};
use crate::api::changes::{JOBS_CHANNEL, SNAPSHOTS_CHANNEL, Topic};
use crate::queue::{NODES_CHANNEL, QUEUE_CHANNEL};

/// Every channel the render service listens on.
pub const CHANNELS: [&str; 4] = [QUEUE_CHANNEL, NODES_CHANNEL, JOBS_CHANNEL, SNAPSHOTS_CHANNEL];

const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Listens until `shutdown`, reconnecting with a backoff after failures.
pub async fn run(agents: Arc<Agents>, shutdown: ShutdownSignal) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut backoff = BACKOFF_FIRST;
    loop {
        let connected = tokio::select! {
            () = &mut stop => return,
            connected = listen(&agents) => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?backoff, "cannot LISTEN for render notifications");
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_FIRST;
        caught_up(&agents);
        loop {
            let received = tokio::select! {
                () = &mut stop => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => deliver(&agents, &notification),
                // The connection was lost and re-established: notifications may be lost.
                Ok(None) => {
                    tracing::info!("render notification listener reconnected; catching up");
                    caught_up(&agents);
                }
                Err(error) => {
                    tracing::warn!(%error, "render notification listener failed; listening again");
                    break;
                }
            }
        }
    }
}

async fn listen(agents: &Agents) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(&agents.state.pool).await?;
    listener.listen_all(CHANNELS).await?;
    Ok(listener)
}

/// Hands one notification to whoever waits for it.
fn deliver(agents: &Arc<Agents>, notification: &PgNotification) {
    match notification.channel() {
        QUEUE_CHANNEL => agents.wake_dispatcher(),
        NODES_CHANNEL => signals::node_changed(agents, notification.payload()),
        channel => {
            if let Some(topic) = Topic::of(channel, notification.payload()) {
                agents.state.changes.notify(topic);
            }
        }
    }
}

/// After a (re)connection: whatever changed while nobody listened is read again.
fn caught_up(agents: &Arc<Agents>) {
    agents.state.changes.notify_all();
    signals::resync_all(agents);
}
