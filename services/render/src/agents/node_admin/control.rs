//! The operator's commands: DrainNode, QuarantineNode, ReleaseNode, EvictNodeTemplate.
//!
//! Each locks the node row, changes `nodes.state` (or queues a `node_commands` row), writes its
//! event, and notifies `render_nodes` in one transaction; the replica holding the node's stream
//! then tells the agent (Drain on and off; EvictTemplate) and placement follows the new state
//! (nothing new for DRAINING, probes only for QUARANTINED). An operator's quarantine is never
//! probed ([`probes`]); ReleaseNode drops a probe still queued for the node.
//!
//! A drain deadline is stored with the node (`nodes.drain_deadline_at`): the replica holding the
//! node's stream (any replica when none does) finds it due on its liveness tick
//! ([`enforce_drain_deadlines`]), so it holds whichever replica took the call and whether that
//! one still runs. When it passes and the node still drains, its remaining tasks are requeued
//! without using an attempt and the agent gets CancelTask(DRAIN_DEADLINE).

use std::time::Duration;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::PgTransaction;
use uuid::Uuid;

use super::events::{self, Quarantine};
use super::{crashes, parse_id, reason, view};
use crate::agents::{Agents, nodes};
use crate::error::{RenderError, Result};
use crate::queue::probes;
use crate::queue::requeue::{lose_in_tx, requeue_row};
use crate::queue::wire::digest_from_hex;
use crate::queue::{NODES_CHANNEL, notify, stored_cancel_reason};
use crate::settings::Settings;

/// The attempt message of a task canceled by QuarantineNode with `cancel_running`.
const QUARANTINE_CANCEL: &str = "canceled: an operator quarantined the node";

/// The locked node row.
pub(super) struct Locked {
    pub name: String,
    pub state: String,
    pub connected: bool,
    pub deleted: bool,
}

/// Locks the node; NOT_FOUND when unknown.
pub(super) async fn lock(tx: &mut PgTransaction<'_>, node: Uuid) -> Result<Locked> {
    let row: Option<(String, String, bool, bool)> = sqlx::query_as(
        "SELECT name, state, orchestrator_id IS NOT NULL, deleted_at IS NOT NULL FROM render.nodes
          WHERE id = $1 FOR NO KEY UPDATE",
    )
    .bind(node)
    .fetch_optional(&mut **tx)
    .await?;
    let (name, state, connected, deleted) = row.ok_or(RenderError::NotFound("node"))?;
    Ok(Locked { name, state, connected, deleted })
}

/// Locks a node that is not deleted.
async fn lock_live(tx: &mut PgTransaction<'_>, node: Uuid) -> Result<Locked> {
    let locked = lock(tx, node).await?;
    if locked.deleted {
        return Err(RenderError::FailedPrecondition("the node was deleted".into()));
    }
    Ok(locked)
}

/// The node as it is now (after the commit).
async fn reload(pool: &sqlx::PgPool, settings: &Settings, node: Uuid) -> Result<pb::Node> {
    view::load(pool, settings, node).await?.ok_or(RenderError::NotFound("node"))
}

/// Hands the node's current leases back to the queue without using an attempt (the node did
/// nothing wrong); their attempts end `handed_back` with `why`, and `reason` for the agent.
/// Returns (task, epoch) of each.
pub(super) async fn hand_back(
    tx: &mut PgTransaction<'_>,
    node: Uuid,
    why: &str,
    reason: agent_pb::CancelReason,
) -> Result<Vec<(Uuid, i64)>> {
    let leases: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT id, lease_epoch FROM render.frame_jobs WHERE node_id = $1 AND dispatch_state = 'leased'
          ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(node)
    .fetch_all(&mut **tx)
    .await?;
    let mut back = Vec::new();
    for (task, epoch) in leases {
        if requeue_row(tx, task, epoch, node, true, None).await? {
            sqlx::query(
                "UPDATE render.frame_job_attempts
                    SET outcome = 'handed_back', error_message = $3, finished_at = now(), cancel_reason = $4
                  WHERE frame_job_id = $1 AND lease_epoch = $2 AND outcome IS NULL",
            )
            .bind(task)
            .bind(epoch)
            .bind(why)
            .bind(stored_cancel_reason(reason))
            .execute(&mut **tx)
            .await?;
            back.push((task, epoch));
        }
    }
    Ok(back)
}

/// Takes `tasks` out of the stream's view if this replica holds the node's stream; call it
/// before committing their requeue, so the resync the commit triggers finds nothing to cancel
/// and the agent hears the right reason from [`tell_canceled`].
pub(super) fn take_from_stream(agents: &Agents, node: Uuid, tasks: &[(Uuid, i64)]) -> Vec<(Uuid, i64)> {
    let Some(conn) = agents.registry.get(node) else { return Vec::new() };
    tasks.iter().filter(|(task, epoch)| conn.release(*task, *epoch)).copied().collect()
}

/// Sends CancelTask with `reason` for the tasks [`take_from_stream`] took (after the commit).
pub(super) fn tell_canceled(agents: &Agents, node: Uuid, taken: &[(Uuid, i64)], reason: agent_pb::CancelReason) {
    let Some(conn) = agents.registry.get(node).filter(|_| !taken.is_empty()) else { return };
    for (task, epoch) in taken {
        conn.send(agent_pb::session_response::Payload::CancelTask(agent_pb::CancelTask {
            task_id: task.to_string(),
            lease_epoch: u64::try_from(*epoch).unwrap_or(0),
            reason: reason as i32,
            message: "an operator took the task off this node".into(),
        }));
    }
    agents.wake_dispatcher();
}

/// The longest drain deadline (stored as a time, so it must fit one).
const MAX_DRAIN_DEADLINE: Duration = Duration::from_secs(30 * 24 * 3600);

fn deadline(value: Option<&prost_types::Duration>) -> Result<Option<Duration>> {
    let Some(value) = value else { return Ok(None) };
    let deadline = u64::try_from(value.seconds)
        .ok()
        .filter(|_| (0..1_000_000_000).contains(&value.nanos))
        .map(|s| Duration::new(s, value.nanos as u32))
        .ok_or_else(|| RenderError::invalid("deadline", "must not be negative"))?;
    if deadline > MAX_DRAIN_DEADLINE {
        return Err(RenderError::invalid("deadline", "must be at most 30 days"));
    }
    Ok(Some(deadline))
}

/// DrainNode.
pub async fn drain(agents: &Agents, by: Uuid, request: &pb::DrainNodeRequest) -> Result<pb::DrainNodeResponse> {
    let (pool, settings) = (&agents.state.pool, &agents.state.settings);
    let node = parse_id("node_id", &request.node_id)?;
    let why = reason(&request.reason, true)?;
    let deadline = deadline(request.deadline.as_ref())?;
    let deadline_secs = deadline.map(|d| d.as_secs_f64());
    let mut tx = pool.begin().await?;
    let locked = lock_live(&mut tx, node).await?;
    match locked.state.as_str() {
        "quarantined" => {
            return Err(RenderError::FailedPrecondition("the node is quarantined; release it first".into()));
        }
        // Draining already: a new deadline replaces the old one; none keeps it.
        "draining" => {
            sqlx::query(
                "UPDATE render.nodes SET drain_deadline_at = now() + make_interval(secs => $2)
                  WHERE id = $1 AND $2::float8 IS NOT NULL",
            )
            .bind(node)
            .bind(deadline_secs)
            .execute(&mut *tx)
            .await?;
        }
        _ => {
            sqlx::query(
                "UPDATE render.nodes
                    SET state = 'draining', state_reason = $2, drain_deadline_at = now() + make_interval(secs => $3)
                  WHERE id = $1",
            )
            .bind(node)
            .bind(&why)
            .bind(deadline_secs)
            .execute(&mut *tx)
            .await?;
            notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
        }
    }
    tx.commit().await?;
    tracing::info!(node = %node, name = %locked.name, %by, reason = %why, ?deadline, "node drained by an operator");
    Ok(pb::DrainNodeResponse { node: Some(reload(pool, settings, node).await?) })
}

/// Enforces the drain deadlines that passed for the nodes this replica holds, and for nodes no
/// replica holds (called on every liveness tick).
pub async fn enforce_drain_deadlines(agents: &Agents) -> Result<()> {
    let orchestrator = &agents.state.settings.orchestrator_id;
    let due: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM render.nodes
          WHERE drain_deadline_at <= now() AND state = 'draining'
            AND (orchestrator_id = $1 OR orchestrator_id IS NULL)",
    )
    .bind(orchestrator)
    .fetch_all(&agents.state.pool)
    .await?;
    for node in due {
        if let Err(e) = drain_deadline(agents, node).await {
            tracing::error!(node = %node, error = %e, "cannot requeue the tasks of a node past its drain deadline");
        }
    }
    Ok(())
}

/// The drain deadline of `node` passed: requeues what the node still runs, if it still drains,
/// and clears the deadline — unless another replica took the node's stream meanwhile.
async fn drain_deadline(agents: &Agents, node: Uuid) -> Result<()> {
    let mut tx = agents.state.pool.begin().await?;
    let due: Option<Uuid> = sqlx::query_scalar(
        "UPDATE render.nodes SET drain_deadline_at = NULL
          WHERE id = $1 AND state = 'draining' AND deleted_at IS NULL AND drain_deadline_at <= now()
            AND (orchestrator_id = $2 OR orchestrator_id IS NULL)
      RETURNING id",
    )
    .bind(node)
    .bind(&agents.state.settings.orchestrator_id)
    .fetch_optional(&mut *tx)
    .await?;
    if due.is_none() {
        return Ok(());
    }
    let back =
        hand_back(&mut tx, node, "the node's drain deadline passed", agent_pb::CancelReason::DrainDeadline).await?;
    notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    let taken = take_from_stream(agents, node, &back);
    tx.commit().await?;
    if !back.is_empty() {
        tracing::info!(node = %node, tasks = back.len(), "drain deadline passed; tasks requeued");
    }
    tell_canceled(agents, node, &taken, agent_pb::CancelReason::DrainDeadline);
    Ok(())
}

/// QuarantineNode.
pub async fn quarantine(
    agents: &Agents,
    by: Uuid,
    request: &pb::QuarantineNodeRequest,
) -> Result<pb::QuarantineNodeResponse> {
    let (pool, settings) = (&agents.state.pool, &agents.state.settings);
    let node = parse_id("node_id", &request.node_id)?;
    let why = reason(&request.reason, true)?;
    let mut tx = pool.begin().await?;
    let locked = lock_live(&mut tx, node).await?;
    if locked.state != "quarantined" {
        // An operator's quarantine is never probed: only ReleaseNode ends it.
        sqlx::query(
            "UPDATE render.nodes
                SET state = 'quarantined', quarantined_at = now(), state_reason = $2, quarantine_cause = 'operator',
                    probe_due_at = NULL, probe_failures = 0
              WHERE id = $1",
        )
        .bind(node)
        .bind(&why)
        .execute(&mut *tx)
        .await?;
        let recent = crashes::recent(&mut *tx, settings, node).await?;
        let quarantine =
            Quarantine { cause: pb::QuarantineCause::Operator, reason: &why, recent_crashes: recent, by: Some(by) };
        events::node_quarantined(&mut tx, node, &locked.name, &quarantine).await?;
    } else {
        // Quarantined automatically before: the operator takes it over, so no more probes.
        sqlx::query("UPDATE render.nodes SET quarantine_cause = 'operator', probe_due_at = NULL WHERE id = $1")
            .bind(node)
            .execute(&mut *tx)
            .await?;
        probes::cancel_queued(&mut tx, node).await?;
    }
    let mut canceled = Vec::new();
    if request.cancel_running {
        let leases: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT id, lease_epoch FROM render.frame_jobs WHERE node_id = $1 AND dispatch_state = 'leased'
              ORDER BY id",
        )
        .bind(node)
        .fetch_all(&mut *tx)
        .await?;
        for (task, epoch) in leases {
            // Counts against the task like a machine failure: one attempt used (the last one
            // fails the task and its job, as a lost lease would).
            if lose_in_tx(&mut tx, node, task, epoch).await? {
                sqlx::query(
                    "UPDATE render.frame_job_attempts
                        SET outcome = 'machine_error', error_class = 'machine', error_code = NULL, error_message = $3,
                            cancel_reason = 'operator'
                      WHERE frame_job_id = $1 AND lease_epoch = $2",
                )
                .bind(task)
                .bind(epoch)
                .bind(QUARANTINE_CANCEL)
                .execute(&mut *tx)
                .await?;
                canceled.push((task, epoch));
            }
        }
    }
    // A replica holding the stream tells the agent why its canceled leases ended (OPERATOR,
    // stored with their attempts).
    notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    let taken = take_from_stream(agents, node, &canceled);
    tx.commit().await?;
    tracing::info!(node = %node, name = %locked.name, %by, reason = %why, canceled = canceled.len(), "node quarantined by an operator");
    tell_canceled(agents, node, &taken, agent_pb::CancelReason::Operator);
    Ok(pb::QuarantineNodeResponse { node: Some(reload(pool, settings, node).await?) })
}

/// Makes `node` active again (online when a replica holds its stream), its drain deadline,
/// quarantine and probe state cleared: ReleaseNode, and a passed probe.
pub(crate) async fn set_active(tx: &mut PgTransaction<'_>, node: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE render.nodes
            SET state = CASE WHEN orchestrator_id IS NOT NULL THEN 'online' ELSE 'offline' END,
                state_reason = NULL, quarantined_at = NULL, drain_deadline_at = NULL,
                quarantine_cause = NULL, probe_due_at = NULL, probe_failures = 0
          WHERE id = $1",
    )
    .bind(node)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// ReleaseNode.
pub async fn release(agents: &Agents, by: Uuid, request: &pb::ReleaseNodeRequest) -> Result<pb::ReleaseNodeResponse> {
    let (pool, settings) = (&agents.state.pool, &agents.state.settings);
    let node = parse_id("node_id", &request.node_id)?;
    let why = reason(&request.reason, false)?;
    let mut tx = pool.begin().await?;
    let locked = lock_live(&mut tx, node).await?;
    let (_, previous) = nodes::admin_state(&locked.state);
    if previous != pb::NodeAdminState::Active {
        set_active(&mut tx, node).await?;
        crashes::reset_window(&mut tx, settings, node).await?;
        probes::cancel_queued(&mut tx, node).await?;
        events::node_released(&mut tx, node, &locked.name, previous, Some(by), &why).await?;
        notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    }
    tx.commit().await?;
    tracing::info!(node = %node, name = %locked.name, %by, reason = %why, previous = previous.as_str_name(), "node released by an operator");
    Ok(pb::ReleaseNodeResponse { node: Some(reload(pool, settings, node).await?) })
}

/// EvictNodeTemplate: queues the command; the replica holding the stream sends it.
pub async fn evict(
    agents: &Agents,
    by: Uuid,
    request: &pb::EvictNodeTemplateRequest,
) -> Result<pb::EvictNodeTemplateResponse> {
    let node = parse_id("node_id", &request.node_id)?;
    if digest_from_hex(&request.sha256).is_none() {
        return Err(RenderError::invalid("sha256", "must be 64 lower-case hex digits"));
    }
    let mut tx = agents.state.pool.begin().await?;
    let locked = lock_live(&mut tx, node).await?;
    if !locked.connected {
        return Err(RenderError::FailedPrecondition("the node is not online".into()));
    }
    let payload = serde_json::json!({ "sha256": request.sha256, "reason": "requested by an operator" });
    sqlx::query("INSERT INTO render.node_commands (node_id, kind, payload) VALUES ($1, 'evict_template', $2)")
        .bind(node)
        .bind(payload)
        .execute(&mut *tx)
        .await?;
    notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    tx.commit().await?;
    tracing::info!(node = %node, name = %locked.name, %by, sha256 = %request.sha256, "template eviction requested by an operator");
    Ok(pb::EvictNodeTemplateResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines() {
        assert_eq!(deadline(None).unwrap(), None);
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(deadline(Some(&d(2, 0))).unwrap(), Some(Duration::from_secs(2)));
        assert!(deadline(Some(&d(-1, 0))).is_err());
        assert!(deadline(Some(&d(31 * 24 * 3600, 0))).is_err());
    }
}
