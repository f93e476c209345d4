//! The leased task queue in PostgreSQL (`render.frame_jobs`; protocol in the header of
//! `migrations/12_render_jobs.sql`).
//!
//! - [`claim`]: candidates in dispatch order (lane, plan priority, fair share between tenants,
//!   submit time) claimed with `FOR UPDATE SKIP LOCKED`, placed on this replica's nodes in
//!   memory ([`placement`]), leased with a new epoch, one attempt row each.
//! - [`report`]: what agents report about a task (progress, frames, results), accepted only for
//!   the current lease (task, epoch, node): the fence. [`batch`]: the common reports of many
//!   agents written together, with the same fence.
//! - [`repair`]: frames a chunk did not deliver or reported bad, rendered again by themselves
//!   (frame repairs, lane 'repair') before the job assembles.
//! - [`requeue`]: tasks back to the queue (lost node, lapsed lease, refused assignment).
//! - [`jobs`]: job transitions the tasks drive (rendering, assembling, completed, failed), with
//!   their outbox events ([`events`]) and notifications in the same transaction; [`snapshots`]:
//!   the same for snapshots (ready, failed).
//! - [`outputs`]: what a snapshot or an assembly delivers (image, video, log), checked against
//!   the task and through the file service before its result is recorded.
//! - [`unplaceable`]: jobs no enrolled node can take fail after a timeout instead of waiting
//!   forever.
//!
//! Every state change notifies (`pg_notify` inside the transaction): `render_queue` when tasks
//! became queued, `render_nodes` with a node id when a task that node holds changed outside its
//! own report, `render_jobs` with a job id when a job or its tasks changed. Why an operator or a
//! drain deadline ended a lease is stored with its attempt (`frame_job_attempts.cancel_reason`),
//! so whichever replica holds the node's stream tells the agent, whenever it learns of it.

pub mod batch;
pub mod claim;
pub mod events;
pub mod jobs;
pub mod outputs;
pub mod placement;
pub mod platform_files;
pub mod probes;
pub mod repair;
pub mod report;
pub mod requeue;
pub mod snapshots;
pub mod spec;
pub mod unplaceable;
pub mod wire;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use sqlx::PgTransaction;
use uuid::Uuid;

pub use crate::model::Lane;
pub use claim::{ClaimRequest, Lease, claim};
pub use placement::{AdminState, NodeOffer};
pub use report::{Fence, Verdict};

/// Notification channel: tasks became queued.
pub const QUEUE_CHANNEL: &str = "render_queue";
/// Notification channel: a connected node must resync (payload: node id).
pub const NODES_CHANNEL: &str = "render_nodes";
/// Notification channel: a job changed (payload: job id).
pub const JOBS_CHANNEL: &str = "render_jobs";

/// A transaction for the agents' hot path (claims, task updates, frame reports, results) that
/// commits without waiting for its WAL flush (`synchronous_commit = off`).
///
/// Why: these transactions NOTIFY, and PostgreSQL serializes notifying commits database-wide,
/// so with a synchronous flush the whole farm's reports would queue behind one fsync each. What
/// it risks: a database crash (not a process crash) can forget the last few hundred
/// milliseconds of them although the agent was answered. Every such loss is repaired by the
/// protocol: a forgotten claim is a lease nobody holds in the database (the agent's reports are
/// refused and it drops the task, which is claimed again); a forgotten result leaves the lease
/// open until it lapses and the chunk is rendered again. Job state changes made by people
/// (submit, cancel, requeue) keep synchronous commits.
///
/// Sequential scans are off in it too: its statements look a batch of rows up by key (an
/// `unnest` of ids joined to a table), and with a few hundred ids against a queue of ten
/// thousand rows the planner chose to hash the ids and scan the whole table, about 8,000 rows
/// read per lookup batch. Index lookups cost the database less CPU at any table size; the
/// dispatch bench measured 4,432–5,074 assignments+completions/s with the scans against
/// 4,784–5,280/s without them (`BENCHMARKS.md`). A statement without a usable index still scans.
pub async fn begin_hot(pool: &sqlx::PgPool) -> sqlx::Result<PgTransaction<'static>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('synchronous_commit', 'off', true), set_config('enable_seqscan', 'off', true)")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Sends `payload` on `channel` when the surrounding transaction commits.
pub async fn notify(tx: &mut PgTransaction<'_>, channel: &str, payload: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

/// Notifies `render_nodes` once for each of `nodes` (duplicates dropped).
pub async fn notify_nodes(tx: &mut PgTransaction<'_>, nodes: &[Uuid]) -> sqlx::Result<()> {
    notify_each(tx, NODES_CHANNEL, nodes).await
}

/// Notifies `render_jobs` once for each of `jobs` (duplicates dropped).
pub async fn notify_jobs(tx: &mut PgTransaction<'_>, jobs: &[Uuid]) -> sqlx::Result<()> {
    notify_each(tx, JOBS_CHANNEL, jobs).await
}

/// One notification on `channel` per distinct id, the id as its payload.
pub(crate) async fn notify_each(tx: &mut PgTransaction<'_>, channel: &str, ids: &[Uuid]) -> sqlx::Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_notify($1, id::text) FROM (SELECT DISTINCT unnest($2::uuid[]) AS id) d")
        .bind(channel)
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Runs `transaction` again (up to three times in all) when PostgreSQL aborted it as a
/// deadlock victim or serialization failure; concurrent reports about one job can cross.
pub async fn retrying<T, F, Fut>(mut transaction: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::Result<T>>,
{
    let mut tries = 1;
    loop {
        match transaction().await {
            Err(e) if e.is_transient() && tries < 3 => {
                tracing::debug!(error = %e, tries, "transaction aborted by the database; running it again");
                tries += 1;
            }
            other => return other,
        }
    }
}

/// A task's row as fencing and resync see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskLease {
    /// Task id.
    pub task_id: Uuid,
    /// `frame_jobs.state`.
    pub state: String,
    /// Its current lease epoch.
    pub lease_epoch: i64,
    /// The node of its current (or last) lease.
    pub node_id: Option<Uuid>,
    /// Why the orchestrator ended the lease asked about, when it stored why
    /// (`frame_job_attempts.cancel_reason`).
    pub ended_by: Option<agent_pb::CancelReason>,
}

impl TaskLease {
    /// Whether the row still is the lease (`epoch`, `node`).
    pub fn is_current(&self, epoch: i64, node: Uuid) -> bool {
        matches!(self.state.as_str(), "leased" | "running") && self.lease_epoch == epoch && self.node_id == Some(node)
    }

    /// What to tell the node holding lease `epoch` when it no longer is current: the stored
    /// reason; else, when the row still is that lease, its job's end; else LEASE_LOST.
    pub fn cancel_reason(&self, epoch: i64, node: Uuid) -> agent_pb::CancelReason {
        if let Some(reason) = self.ended_by {
            return reason;
        }
        let same_lease = self.lease_epoch == epoch && self.node_id == Some(node);
        match self.state.as_str() {
            "canceled" if same_lease => agent_pb::CancelReason::JobCanceled,
            "failed" if same_lease => agent_pb::CancelReason::JobFailed,
            _ => agent_pb::CancelReason::LeaseLost,
        }
    }
}

/// `frame_job_attempts.cancel_reason` for `reason`.
pub fn stored_cancel_reason(reason: agent_pb::CancelReason) -> &'static str {
    match reason {
        agent_pb::CancelReason::Operator => "operator",
        agent_pb::CancelReason::DrainDeadline => "drain_deadline",
        agent_pb::CancelReason::JobCanceled => "job_canceled",
        agent_pb::CancelReason::JobFailed => "job_failed",
        agent_pb::CancelReason::UnknownTask => "unknown_task",
        agent_pb::CancelReason::LeaseLost | agent_pb::CancelReason::Unspecified => "lease_lost",
    }
}

fn parse_cancel_reason(stored: &str) -> Option<agent_pb::CancelReason> {
    agent_pb::CancelReason::from_str_name(&format!("CANCEL_REASON_{}", stored.to_ascii_uppercase()))
}

/// The rows of the tasks of `leases` (task, epoch) that exist, each with why that lease ended
/// if that was stored.
pub async fn task_leases(pool: &sqlx::PgPool, leases: &[(Uuid, i64)]) -> sqlx::Result<Vec<TaskLease>> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    /// id, state, lease_epoch, node_id, the attempt's cancel_reason.
    type Row = (Uuid, String, i64, Option<Uuid>, Option<String>);
    let (tasks, epochs): (Vec<Uuid>, Vec<i64>) = leases.iter().copied().unzip();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT f.id, f.state, f.lease_epoch, f.node_id, a.cancel_reason
           FROM unnest($1::uuid[], $2::bigint[]) AS x(id, epoch)
           JOIN render.frame_jobs f ON f.id = x.id
           LEFT JOIN render.frame_job_attempts a ON a.frame_job_id = x.id AND a.lease_epoch = x.epoch",
    )
    .bind(&tasks)
    .bind(&epochs)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(task_id, state, lease_epoch, node_id, ended_by)| TaskLease {
            task_id,
            state,
            lease_epoch,
            node_id,
            ended_by: ended_by.as_deref().and_then(parse_cancel_reason),
        })
        .collect())
}

/// The tasks leased to `node` now (`leased` or `running`).
pub async fn leases_of_node(pool: &sqlx::PgPool, node: Uuid) -> sqlx::Result<Vec<TaskLease>> {
    let rows: Vec<(Uuid, String, i64, Option<Uuid>)> = sqlx::query_as(
        "SELECT id, state, lease_epoch, node_id FROM render.frame_jobs
          WHERE node_id = $1 AND dispatch_state = 'leased'",
    )
    .bind(node)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(task_id, state, lease_epoch, node_id)| TaskLease {
            task_id,
            state,
            lease_epoch,
            node_id,
            ended_by: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_current_only_for_its_epoch_and_node() {
        let node = Uuid::new_v4();
        let lease = TaskLease {
            task_id: Uuid::new_v4(),
            state: "running".into(),
            lease_epoch: 4,
            node_id: Some(node),
            ended_by: None,
        };
        assert!(lease.is_current(4, node));
        assert!(!lease.is_current(3, node));
        assert!(!lease.is_current(4, Uuid::new_v4()));
        assert!(!TaskLease { state: "queued".into(), ..lease.clone() }.is_current(4, node));
        assert!(!TaskLease { state: "canceled".into(), ..lease }.is_current(4, node));
    }

    #[test]
    fn an_ended_lease_is_told_the_stored_reason_else_its_jobs_end_else_lease_lost() {
        use agent_pb::CancelReason::{DrainDeadline, JobCanceled, JobFailed, LeaseLost, Operator};
        let node = Uuid::new_v4();
        let row = |state: &str, epoch, ended_by| TaskLease {
            task_id: Uuid::nil(),
            state: state.into(),
            lease_epoch: epoch,
            node_id: Some(node),
            ended_by,
        };
        assert_eq!(row("canceled", 4, None).cancel_reason(4, node), JobCanceled);
        assert_eq!(row("failed", 4, None).cancel_reason(4, node), JobFailed);
        // The row moved on to another lease: its state says nothing about this one.
        assert_eq!(row("canceled", 5, None).cancel_reason(4, node), LeaseLost);
        assert_eq!(row("failed", 4, None).cancel_reason(4, Uuid::new_v4()), LeaseLost);
        assert_eq!(row("queued", 4, None).cancel_reason(4, node), LeaseLost);
        // A stored reason holds whatever the row did since.
        assert_eq!(row("queued", 4, Some(Operator)).cancel_reason(4, node), Operator);
        assert_eq!(row("running", 6, Some(DrainDeadline)).cancel_reason(4, node), DrainDeadline);
    }

    #[test]
    fn stored_reasons_read_back() {
        use agent_pb::CancelReason::*;
        for reason in [JobCanceled, JobFailed, LeaseLost, DrainDeadline, Operator, UnknownTask] {
            assert_eq!(parse_cancel_reason(stored_cancel_reason(reason)), Some(reason));
        }
        assert_eq!(parse_cancel_reason("nonsense"), None);
    }
}
