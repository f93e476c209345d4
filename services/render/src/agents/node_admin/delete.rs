//! DeleteNode: forgets a node but keeps its rows for history.
//!
//! A node that holds leases is refused (FAILED_PRECONDITION) unless `force`: drain it and wait
//! until its tasks finished, or force, which hands them back to the queue without using an
//! attempt. Deleting sets `deleted_at`, clears the credential (it stops working at once: the
//! holding replica's resync ends the stream UNAUTHENTICATED and Hello is refused), leaves the
//! node OFFLINE with a new connection epoch (fencing anything its old stream still sends), and
//! unlinks its join token. NodeOffline(DELETED) when it was connected. Deleting a deleted node
//! is a no-op.

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::events::v1 as ev;
use flatrender_proto::flatrender::render::v1 as pb;
use uuid::Uuid;

use super::control::{hand_back, lock, take_from_stream, tell_canceled};
use super::parse_id;
use crate::agents::Agents;
use crate::error::{RenderError, Result};
use crate::queue::{events, notify_nodes, probes};

/// DeleteNode.
pub async fn delete(agents: &Agents, by: Uuid, request: &pb::DeleteNodeRequest) -> Result<pb::DeleteNodeResponse> {
    let node = parse_id("node_id", &request.node_id)?;
    let mut tx = agents.state.pool.begin().await?;
    let locked = lock(&mut tx, node).await?;
    if locked.deleted {
        return Ok(pb::DeleteNodeResponse {});
    }
    let running: i64 =
        sqlx::query_scalar("SELECT count(*) FROM render.frame_jobs WHERE node_id = $1 AND dispatch_state = 'leased'")
            .bind(node)
            .fetch_one(&mut *tx)
            .await?;
    if running > 0 && !request.force {
        return Err(RenderError::FailedPrecondition(format!(
            "the node runs {running} task(s); drain it and wait for them, or delete with force"
        )));
    }
    let back = hand_back(&mut tx, node, "the node was deleted", agent_pb::CancelReason::Operator).await?;
    sqlx::query(
        "UPDATE render.nodes
            SET deleted_at = now(), credential_hash = NULL, orchestrator_id = NULL, state = 'offline',
                state_reason = NULL, quarantined_at = NULL, connection_epoch = connection_epoch + 1,
                quarantine_cause = NULL, probe_due_at = NULL, probe_failures = 0
          WHERE id = $1",
    )
    .bind(node)
    .execute(&mut *tx)
    .await?;
    probes::cancel_queued(&mut tx, node).await?;
    sqlx::query("UPDATE render.node_enrollment_tokens SET used_by_node_id = NULL WHERE used_by_node_id = $1")
        .bind(node)
        .execute(&mut *tx)
        .await?;
    if locked.connected {
        events::node_offline(&mut tx, node, &locked.name, ev::NodeOfflineReason::Deleted, back.len()).await?;
    }
    // A replica holding the stream cancels the tasks with OPERATOR (stored with their
    // attempts), then ends the stream.
    notify_nodes(&mut tx, &[node]).await?;
    // Told before the commit: the commit's resync ends the stream, after which nothing more
    // reaches the agent. Should the commit fail, the canceled leases lapse and are requeued.
    let taken = take_from_stream(agents, node, &back);
    tell_canceled(agents, node, &taken, agent_pb::CancelReason::Operator);
    tx.commit().await?;
    tracing::info!(node = %node, name = %locked.name, %by, requeued = back.len(), "node deleted by an operator");
    Ok(pb::DeleteNodeResponse {})
}
