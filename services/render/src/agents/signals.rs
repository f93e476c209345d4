//! What a `render_nodes` notification does (the listener is [`crate::notifications`]): this
//! replica resyncs the node if it holds its stream — supersede an older stream,
//! end a deleted node's stream, pass on admin-state changes (Drain), cancel tasks whose lease
//! ended elsewhere (a canceled or failed job, an operator's action) with the reason the
//! database holds, and deliver queued commands.

use std::sync::Arc;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use tonic::Status;
use uuid::Uuid;

use super::registry::Connection;
use super::{Agents, nodes};
use crate::queue::{self, AdminState};

use agent_pb::session_response::Payload as Out;

/// A `render_nodes` notification (payload: the node id): resyncs the node if this replica
/// holds its stream.
pub fn node_changed(agents: &Arc<Agents>, payload: &str) {
    if let Some(conn) = node_of(payload).and_then(|node| agents.registry.get(node)) {
        tokio::spawn(resync(Arc::clone(agents), conn));
    }
}

/// The node id of a `render_nodes` payload. An older replica's payload names a reason after
/// the id; that reason is read from the database now.
fn node_of(payload: &str) -> Option<Uuid> {
    payload.split_whitespace().next().and_then(|id| Uuid::try_parse(id).ok())
}

/// Wakes the dispatcher and resyncs every node this replica holds (notifications may have
/// been missed).
pub fn resync_all(agents: &Arc<Agents>) {
    agents.wake_dispatcher();
    for conn in agents.registry.all() {
        tokio::spawn(resync(Arc::clone(agents), conn));
    }
}

/// Brings a connected node up to date with its row and its tasks' rows.
pub async fn resync(agents: Arc<Agents>, conn: Arc<Connection>) {
    if conn.is_closed() {
        return;
    }
    let pool = &agents.state.pool;
    let row = match nodes::node_row(pool, conn.node_id).await {
        Ok(row) => row,
        Err(e) => {
            tracing::warn!(node = %conn.node_id, error = %e, "cannot resync the node");
            return;
        }
    };
    let Some(row) = row.filter(|r| !r.deleted) else {
        // The tasks first, with why their leases ended (an operator's DeleteNode on another
        // replica), so the agent stops them before its stream ends.
        cancel_ended_leases(&agents, &conn).await;
        tracing::info!(node = %conn.node_id, "node deleted; ending its stream");
        conn.end(Status::unauthenticated("invalid node credential"));
        return;
    };
    if row.connection_epoch > conn.connection_epoch {
        tracing::info!(node = %conn.node_id, epoch = conn.connection_epoch, newer = row.connection_epoch, "stream superseded");
        conn.end(Status::aborted("superseded"));
        return;
    }

    // Admin state: DRAINING is told to the agent; QUARANTINED only changes what it is given.
    let (admin, _) = nodes::admin_state(&row.state);
    let before = std::mem::replace(&mut conn.view().admin, admin);
    if before != admin {
        let reason = row.state_reason.clone().unwrap_or_default();
        if admin == AdminState::Draining {
            conn.send(Out::Drain(agent_pb::Drain { enabled: true, reason, deadline: None }));
        } else if before == AdminState::Draining {
            conn.send(Out::Drain(agent_pb::Drain { enabled: false, reason, deadline: None }));
        }
        agents.wake_dispatcher();
    }

    cancel_ended_leases(&agents, &conn).await;
    deliver_commands(&agents, &conn).await;
}

/// CancelTask for each task the stream holds whose lease ended outside it (canceled, failed,
/// requeued), with why it ended ([`queue::TaskLease::cancel_reason`]).
async fn cancel_ended_leases(agents: &Arc<Agents>, conn: &Connection) {
    let pool = &agents.state.pool;
    let held: Vec<(Uuid, i64)> = conn.view().tasks.iter().map(|(id, held)| (*id, held.epoch)).collect();
    if !held.is_empty() {
        match queue::task_leases(pool, &held).await {
            Ok(rows) => {
                let mut freed = false;
                for (task, epoch) in held {
                    let row = rows.iter().find(|r| r.task_id == task);
                    if row.is_some_and(|r| r.is_current(epoch, conn.node_id)) {
                        continue;
                    }
                    let reason =
                        row.map_or(agent_pb::CancelReason::LeaseLost, |r| r.cancel_reason(epoch, conn.node_id));
                    tracing::debug!(node = %conn.node_id, task = %task, epoch, ?row, ?reason, "lease ended elsewhere");
                    // Released and told under the view's lock, so a Health handled meanwhile
                    // cannot answer with another reason first.
                    let mut view = conn.view();
                    if view.tasks.get(&task).is_some_and(|held| held.epoch == epoch) {
                        view.tasks.remove(&task);
                        freed = true;
                        conn.send(Out::CancelTask(agent_pb::CancelTask {
                            task_id: task.to_string(),
                            lease_epoch: epoch.max(0) as u64,
                            reason: reason as i32,
                            message: "the task's lease ended".into(),
                        }));
                    }
                }
                if freed {
                    agents.wake_dispatcher();
                }
            }
            Err(e) => tracing::warn!(node = %conn.node_id, error = %e, "cannot resync the node's tasks"),
        }
    }
}

/// Sends the node's undelivered commands and marks them delivered.
pub async fn deliver_commands(agents: &Agents, conn: &Connection) {
    let pool = &agents.state.pool;
    match nodes::pending_commands(pool, conn.node_id).await {
        Ok(commands) if !commands.is_empty() => {
            let ids: Vec<i64> = commands.iter().map(|c| c.id).collect();
            for command in commands {
                conn.send(command.payload);
            }
            if let Err(e) = nodes::mark_delivered(pool, &ids).await {
                tracing::warn!(node = %conn.node_id, error = %e, "commands sent but not marked delivered");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(node = %conn.node_id, error = %e, "cannot read the node's commands"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_the_node() {
        let node = Uuid::new_v4();
        assert_eq!(node_of(&node.to_string()), Some(node));
        assert_eq!(node_of(&format!("{node} CANCEL_REASON_OPERATOR")), Some(node));
        assert_eq!(node_of("nope"), None);
        assert_eq!(node_of(""), None);
    }
}
