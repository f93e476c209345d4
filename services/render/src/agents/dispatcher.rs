//! The dispatcher: whenever woken (tasks queued, a slot freed, a node connected) and at least
//! every poll interval, it claims work for this replica's nodes with free slots and sends each
//! lease as AssignTask on its node's stream.

use std::sync::Arc;
use std::time::Instant;

use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::agent::v1 as agent_pb;

use super::Agents;
use super::registry::HeldTask;
use crate::queue::{self, ClaimRequest, Lease};

/// Runs until `shutdown`.
pub async fn run(agents: Arc<Agents>, shutdown: ShutdownSignal) {
    let poll = agents.state.settings.dispatch_poll_interval;
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = agents.wake.notified() => {}
            () = tokio::time::sleep(poll) => {}
        }
        dispatch(&agents).await;
    }
}

/// Claims until the nodes are full or nothing more can be placed.
pub async fn dispatch(agents: &Agents) {
    let settings = &agents.state.settings;
    loop {
        let offers = agents.registry.offers();
        if offers.is_empty() {
            return;
        }
        let request = ClaimRequest {
            orchestrator_id: &settings.orchestrator_id,
            lease_ttl: settings.lease_ttl,
            nodes: &offers,
            watermark: &settings.watermark,
        };
        match queue::claim(&agents.state.pool, &request).await {
            Ok(leases) if leases.is_empty() => return,
            Ok(leases) => deliver(agents, leases),
            Err(e) => {
                // Claims race (deadlocks with a job's cancellation, a busy pool): the next wake
                // or poll tries again.
                tracing::warn!(error = %e, "claiming tasks failed");
                return;
            }
        }
    }
}

fn deliver(agents: &Agents, leases: Vec<Lease>) {
    let ttl = agents.state.settings.lease_ttl;
    for lease in leases {
        let conn = agents.registry.get(lease.node_id).filter(|c| c.connection_epoch == lease.connection_epoch);
        let Some(conn) = conn.filter(|c| !c.is_closed()) else {
            // The stream went away after the claim: the grace timer (or the new stream's
            // settlement) ends the lease.
            tracing::info!(node = %lease.node_id, task = %lease.task_id, "leased to a node whose stream ended");
            continue;
        };
        conn.hold(
            lease.task_id,
            HeldTask {
                epoch: lease.lease_epoch,
                expires: Instant::now() + ttl,
                job_id: lease.job_id,
                running: false,
                progress_written: None,
            },
        );
        tracing::debug!(node = %lease.node_id, task = %lease.task_id, epoch = lease.lease_epoch, "task assigned");
        conn.send(agent_pb::session_response::Payload::AssignTask(lease.assign));
    }
}
