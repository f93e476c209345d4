//! Liveness, with timers in memory and fenced writes in the database:
//!
//! - a lost stream: after the reconnect grace its node's leases end (unless the node
//!   reconnected: its connection epoch moved on);
//! - a silent node (no Health for 3 intervals) or a lease not renewed within its TTL: the
//!   leases end and the agent gets CancelTask(LEASE_LOST); the node gets no work until its next
//!   Health;
//! - this replica's `render.orchestrators` row, refreshed every few seconds; a replica whose row
//!   is stale is dead, and this one ends the leases of the nodes it held;
//! - on the same tick, the drain deadlines that passed of the nodes it holds (or nobody does);
//! - a node's silence in `nodes.silent_since` (and when it was last heard), written only when it
//!   falls silent or speaks again: while a live replica holds a stream, the replica's own
//!   heartbeat row stands for the node, so an idle farm writes nothing per node.

use std::sync::Arc;
use std::time::Instant;

use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use tonic::Status;
use uuid::Uuid;

use super::nodes;
use super::registry::{Connection, HeldTask};
use super::{Agents, node_admin};
use crate::error::Result;
use crate::queue::{self, requeue};

/// After the reconnect grace, ends the leases of `node` unless it reconnected since
/// (`connection_epoch` is the one of the stream that dropped).
pub fn after_grace(agents: Arc<Agents>, node: Uuid, connection_epoch: i64) {
    tokio::spawn(async move {
        tokio::time::sleep(agents.state.settings.reconnect_grace).await;
        if agents.registry.get(node).is_some_and(|c| c.connection_epoch > connection_epoch) {
            return;
        }
        let (pool, settings) = (&agents.state.pool, &agents.state.settings);
        let lost = queue::retrying(|| {
            requeue::lost_node(
                pool,
                node,
                connection_epoch,
                &settings.orchestrator_id,
                false,
                ev::NodeOfflineReason::StreamLost,
            )
        })
        .await;
        match lost {
            Ok(Some(lost)) => {
                tracing::info!(node = %node, name = %lost.name, tasks = lost.tasks.len(), "node lost; its tasks went back to the queue");
            }
            Ok(None) => tracing::debug!(node = %node, "node reconnected within the grace period"),
            // The node stays assigned to this replica; if it never comes back, the dead-replica
            // scan of a restarted or other replica ends its leases.
            Err(e) => tracing::error!(node = %node, error = %e, "cannot end the leases of a lost node"),
        }
    });
}

/// Runs the liveness timers until `shutdown`, then ends every stream UNAVAILABLE (agents
/// reconnect to another replica within the grace period).
pub async fn run(agents: Arc<Agents>, shutdown: ShutdownSignal) {
    let settings = Arc::clone(&agents.state.settings);
    let sweep_every = (settings.heartbeat_interval / 4).max(std::time::Duration::from_millis(50));
    let mut sweep = tokio::time::interval(sweep_every);
    let mut replica = tokio::time::interval(settings.replica_heartbeat_interval);
    for timer in [&mut sweep, &mut replica] {
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = sweep.tick() => sweep_leases(&agents).await,
            _ = replica.tick() => {
                if let Err(e) = replica_heartbeat(&agents).await {
                    tracing::warn!(error = %e, "cannot refresh this replica's liveness row");
                }
                if let Err(e) = reap_dead_replicas(&agents).await {
                    tracing::warn!(error = %e, "cannot look for dead replicas");
                }
                if let Err(e) = node_admin::control::enforce_drain_deadlines(&agents).await {
                    tracing::warn!(error = %e, "cannot look for drain deadlines that passed");
                }
            }
        }
    }
    for conn in agents.registry.all() {
        conn.end(Status::unavailable("the orchestrator is shutting down; reconnect"));
    }
}

/// Ends leases that were not renewed in time, and all leases of nodes silent for 3 heartbeat
/// intervals.
async fn sweep_leases(agents: &Arc<Agents>) {
    let deadline = agents.state.settings.heartbeat_deadline();
    let now = Instant::now();
    for conn in agents.registry.all() {
        let (expired, silent, last_health) = {
            let mut view = conn.view();
            let silent = view.responsive && now.duration_since(view.last_health) > deadline;
            if silent {
                view.responsive = false;
            }
            let ids: Vec<Uuid> =
                view.tasks.iter().filter(|(_, held)| silent || held.expires <= now).map(|(id, _)| *id).collect();
            let expired: Vec<(Uuid, HeldTask)> =
                ids.into_iter().filter_map(|id| view.tasks.remove(&id).map(|held| (id, held))).collect();
            (expired, silent, view.last_health)
        };
        if silent {
            tracing::warn!(node = %conn.node_id, ?deadline, "no Health from the node; revoking its leases");
            record_silence(agents, &conn, now.duration_since(last_health)).await;
        }
        if expired.is_empty() {
            continue;
        }
        let leases: Vec<(Uuid, i64)> = expired.iter().map(|(id, held)| (*id, held.epoch)).collect();
        let pool = &agents.state.pool;
        match queue::retrying(|| requeue::lease_lost(pool, conn.node_id, conn.connection_epoch, &leases)).await {
            Ok(lost) => {
                tracing::info!(node = %conn.node_id, tasks = lost.len(), "lapsed leases ended");
                for (task, epoch) in leases {
                    conn.send(agent_pb::session_response::Payload::CancelTask(agent_pb::CancelTask {
                        task_id: task.to_string(),
                        lease_epoch: epoch.max(0) as u64,
                        reason: agent_pb::CancelReason::LeaseLost as i32,
                        message: "the lease lapsed without renewal".into(),
                    }));
                }
                agents.wake_dispatcher();
            }
            Err(e) => {
                tracing::error!(node = %conn.node_id, error = %e, "cannot end lapsed leases; retrying");
                let mut view = conn.view();
                for (id, held) in expired {
                    view.tasks.entry(id).or_insert(held);
                }
            }
        }
    }
}

async fn replica_heartbeat(agents: &Agents) -> Result<()> {
    sqlx::query(
        "INSERT INTO render.orchestrators (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
    )
    .bind(&agents.state.settings.orchestrator_id)
    .execute(&agents.state.pool)
    .await?;
    Ok(())
}

/// Ends the leases of nodes held by replicas whose liveness row is stale (or gone), moving
/// their connection epochs on so such a replica, if it still runs, stops acting for them.
async fn reap_dead_replicas(agents: &Agents) -> Result<()> {
    let settings = &agents.state.settings;
    let orphans: Vec<(Uuid, i64, String)> = sqlx::query_as(
        "SELECT n.id, n.connection_epoch, n.orchestrator_id FROM render.nodes n
          WHERE n.orchestrator_id IS NOT NULL AND n.orchestrator_id <> $1
            AND NOT EXISTS (SELECT 1 FROM render.orchestrators o
                             WHERE o.id = n.orchestrator_id AND o.heartbeat_at > now() - make_interval(secs => $2))",
    )
    .bind(&settings.orchestrator_id)
    .bind(settings.replica_dead_after().as_secs_f64())
    .fetch_all(&agents.state.pool)
    .await?;
    for (node, epoch, holder) in orphans {
        match requeue::lost_node(&agents.state.pool, node, epoch, &holder, true, ev::NodeOfflineReason::StreamLost)
            .await
        {
            Ok(Some(lost)) => tracing::warn!(
                node = %node, replica = %holder, tasks = lost.tasks.len(),
                "the replica holding the node is dead; its tasks went back to the queue"
            ),
            Ok(None) => {}
            Err(e) => tracing::warn!(node = %node, error = %e, "cannot take over a dead replica's node"),
        }
    }
    sqlx::query(
        "DELETE FROM render.orchestrators o
          WHERE o.heartbeat_at < now() - interval '1 hour'
            AND NOT EXISTS (SELECT 1 FROM render.nodes n WHERE n.orchestrator_id = o.id)",
    )
    .execute(&agents.state.pool)
    .await?;
    Ok(())
}

/// Stores that the node of `conn` fell silent `ago` (so every replica lists it LOST). A Health
/// that arrived while this was written finds nothing to clear yet; so the silence is cleared
/// here too when the node already spoke again.
async fn record_silence(agents: &Agents, conn: &Connection, ago: std::time::Duration) {
    let pool = &agents.state.pool;
    let last_heard = time::OffsetDateTime::now_utc() - ago;
    if let Err(e) = nodes::mark_silent(pool, conn.node_id, conn.connection_epoch, last_heard).await {
        tracing::warn!(node = %conn.node_id, error = %e, "cannot record that the node is silent");
        return;
    }
    if conn.view().responsive {
        heard_again(agents, conn).await;
    }
}

/// Stores that the silent node of `conn` spoke again.
pub async fn heard_again(agents: &Agents, conn: &Connection) {
    if let Err(e) = nodes::heard_again(&agents.state.pool, conn.node_id, conn.connection_epoch).await {
        tracing::warn!(node = %conn.node_id, error = %e, "cannot record that the node speaks again");
    }
}
