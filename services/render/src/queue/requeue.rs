//! Leases that end without a result: the node was lost or its lease lapsed (uses an attempt;
//! the last one fails the task and its job), or the agent refused the assignment (does not).
//! Every write is fenced by the lease (task, epoch, node) and, for a lost node, by its
//! connection epoch, so a node that reconnected in time keeps its tasks.

use flatrender_proto::flatrender::events::v1 as ev;
use sqlx::{PgPool, PgTransaction};
use uuid::Uuid;

use super::report::holds_stream;
use super::{QUEUE_CHANNEL, events, notify, notify_jobs, notify_nodes};
use super::{jobs, snapshots};
use crate::error::Result;
use crate::model::{ErrorCode, ErrorInfo};

/// Puts a current lease back to `queued` (a snapshot it renders with it). `uncount` gives the attempt back (refusals and
/// hand-backs); `not_before_secs` delays the next claim (retry backoff). Returns whether the
/// lease was current.
pub(crate) async fn requeue_row(
    tx: &mut PgTransaction<'_>,
    task: Uuid,
    epoch: i64,
    node: Uuid,
    uncount: bool,
    not_before_secs: Option<f64>,
) -> Result<bool> {
    let row: Option<(Option<Uuid>, Option<Uuid>)> = sqlx::query_as(
        "UPDATE render.frame_jobs
            SET state = 'queued', node_id = NULL, leased_at = NULL, lease_expires_at = NULL, started_at = NULL,
                attempts = attempts - (CASE WHEN $4 THEN 1 ELSE 0 END),
                not_before = CASE WHEN $5::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $5) END,
                frames_done = 0, current_frame = NULL, last_progress_at = NULL, phase = NULL, percent = NULL
          WHERE id = $1 AND lease_epoch = $2 AND node_id = $3 AND state IN ('leased', 'running')
      RETURNING job_id, snapshot_id",
    )
    .bind(task)
    .bind(epoch)
    .bind(node)
    .bind(uncount)
    .bind(not_before_secs)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((job, snapshot)) = row else { return Ok(false) };
    notify(tx, QUEUE_CHANNEL, "").await?;
    if let Some(job) = job {
        notify_jobs(tx, &[job]).await?;
    }
    if let Some(snapshot) = snapshot {
        snapshots::requeued(tx, snapshot).await?;
    }
    Ok(true)
}

/// Ends the lease (task, epoch, node) as lost: the attempt is recorded `lease_lost`; the task
/// is requeued, or fails with its job (or snapshot) when that was its last attempt. Returns
/// whether the lease was current.
pub(crate) async fn lose_in_tx(tx: &mut PgTransaction<'_>, node: Uuid, task: Uuid, epoch: i64) -> Result<bool> {
    /// attempts, max_attempts, job_id, snapshot_id, frame_start, frame_end.
    type Columns = (i32, i32, Option<Uuid>, Option<Uuid>, Option<i32>, Option<i32>);
    let row: Option<Columns> = sqlx::query_as(
        "SELECT attempts, max_attempts, job_id, snapshot_id, frame_start, frame_end FROM render.frame_jobs
          WHERE id = $1 AND lease_epoch = $2 AND node_id = $3 AND state IN ('leased', 'running')
            FOR NO KEY UPDATE",
    )
    .bind(task)
    .bind(epoch)
    .bind(node)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((attempts, max_attempts, job, snapshot, start, end)) = row else { return Ok(false) };
    const MESSAGE: &str = "the node's lease lapsed (stream lost or heartbeats missed)";
    sqlx::query(
        "UPDATE render.frame_job_attempts
            SET outcome = 'lease_lost', error_class = 'lost', error_code = 'lease_lost', error_message = $3,
                finished_at = now()
          WHERE frame_job_id = $1 AND lease_epoch = $2 AND outcome IS NULL",
    )
    .bind(task)
    .bind(epoch)
    .bind(MESSAGE)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE render.frame_jobs SET error_class = 'lost', error_code = 'lease_lost', error_message = $2 WHERE id = $1",
    )
    .bind(task)
    .bind(MESSAGE)
    .execute(&mut **tx)
    .await?;
    if attempts < max_attempts {
        return requeue_row(tx, task, epoch, node, false, None).await;
    }
    sqlx::query("UPDATE render.frame_jobs SET state = 'failed', finished_at = now() WHERE id = $1")
        .bind(task)
        .execute(&mut **tx)
        .await?;
    if let Some(job) = job {
        let frames = match (start, end) {
            (Some(s), Some(e)) => format!("frames {s}-{e}"),
            _ => "the assembly".to_owned(),
        };
        let error = ErrorInfo::new(
            ErrorCode::LeaseLost,
            format!("{frames}: the nodes working on them were lost {attempts} times"),
        );
        jobs::fail(tx, job, &error).await?;
    }
    if let Some(snapshot) = snapshot {
        let error = ErrorInfo::new(
            ErrorCode::LeaseLost,
            format!("the nodes rendering the snapshot were lost {attempts} times"),
        );
        snapshots::fail(tx, snapshot, &error).await?;
    }
    Ok(true)
}

/// Ends the leases `tasks` (task, epoch) of `node` as lost (a lapsed lease, heartbeats missed,
/// a task the agent no longer holds), if the stream of `connection_epoch` still is the node's
/// current one. Returns the tasks whose lease was current.
pub async fn lease_lost(pool: &PgPool, node: Uuid, connection_epoch: i64, tasks: &[(Uuid, i64)]) -> Result<Vec<Uuid>> {
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = pool.begin().await?;
    if !holds_stream(&mut tx, node, connection_epoch).await? {
        return Ok(Vec::new());
    }
    let mut lost = Vec::new();
    for (task, epoch) in tasks {
        if lose_in_tx(&mut tx, node, *task, *epoch).await? {
            lost.push(*task);
        }
    }
    tx.commit().await?;
    Ok(lost)
}

/// The agent refused the assignment (task, epoch) on its stream of `connection_epoch`: the
/// attempt is recorded `rejected` and the task requeued at once without using an attempt.
/// Returns whether the lease (and the stream) was current.
pub async fn rejected(
    pool: &PgPool,
    node: Uuid,
    connection_epoch: i64,
    task: Uuid,
    epoch: i64,
    reason: &str,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    if !holds_stream(&mut tx, node, connection_epoch).await?
        || !requeue_row(&mut tx, task, epoch, node, true, None).await?
    {
        return Ok(false);
    }
    let message = crate::model::text::head(reason, 1000);
    sqlx::query(
        "UPDATE render.frame_job_attempts SET outcome = 'rejected', error_message = $3, finished_at = now()
          WHERE frame_job_id = $1 AND lease_epoch = $2 AND outcome IS NULL",
    )
    .bind(task)
    .bind(epoch)
    .bind(message)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// What declaring a node gone did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostNode {
    /// The node's name.
    pub name: String,
    /// Its tasks whose leases ended.
    pub tasks: Vec<Uuid>,
}

/// Declares `node` gone — unless it reconnected: only while its connection epoch still is
/// `connection_epoch` and `holder` still holds it. Its leases end as lost, it becomes offline
/// (NodeOffline), and with `bump` its connection epoch moves on so the holder — a replica
/// thought dead that may still be running — stops acting for it (the node is notified).
pub async fn lost_node(
    pool: &PgPool,
    node: Uuid,
    connection_epoch: i64,
    holder: &str,
    bump: bool,
    reason: ev::NodeOfflineReason,
) -> Result<Option<LostNode>> {
    let mut tx = pool.begin().await?;
    let name: Option<String> = sqlx::query_scalar(
        "UPDATE render.nodes
            SET orchestrator_id = NULL, silent_since = NULL, state = CASE WHEN state = 'online' THEN 'offline' ELSE state END,
                connection_epoch = connection_epoch + (CASE WHEN $4 THEN 1 ELSE 0 END)
          WHERE id = $1 AND connection_epoch = $2 AND orchestrator_id = $3
      RETURNING name",
    )
    .bind(node)
    .bind(connection_epoch)
    .bind(holder)
    .bind(bump)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(name) = name else { return Ok(None) };
    let leases: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT id, lease_epoch FROM render.frame_jobs WHERE node_id = $1 AND dispatch_state = 'leased'",
    )
    .bind(node)
    .fetch_all(&mut *tx)
    .await?;
    let mut tasks = Vec::new();
    for (task, epoch) in leases {
        if lose_in_tx(&mut tx, node, task, epoch).await? {
            tasks.push(task);
        }
    }
    events::node_offline(&mut tx, node, &name, reason, tasks.len()).await?;
    if bump {
        notify_nodes(&mut tx, &[node]).await?;
    }
    tx.commit().await?;
    Ok(Some(LostNode { name, tasks }))
}
