//! Jobs and snapshots no node can take. A queued task waits for a node with a free slot; but when no
//! enrolled, non-quarantined node could ever take it — none has its After Effects version, tags,
//! RAM, GPU or ffmpeg, or every node that has them failed the job before — it would wait
//! forever. So, periodically and on one replica at a time (a transaction-scoped advisory lock),
//! the placement requirements of the queued tasks are matched against every such node, busy,
//! draining or offline alike (placement's own [`eligible`] rule, slots aside):
//!
//! - a job with a task none of them can take is marked (`render_jobs.unplaceable_since`), and
//!   unmarked as soon as one could; a snapshot the same way (`snapshots.unplaceable_since`);
//! - a job or snapshot marked for longer than the timeout fails with NO_ELIGIBLE_NODE and a
//!   message naming the requirement nobody meets (RenderJobFailed or SnapshotFailed, like any
//!   failure).
//!
//! Offline nodes count: one able to take the work may come back, and a customer should not lose
//! a render because the only capable machine is rebooting (the timeout is for nodes that never
//! come). A job that merely waits for busy nodes able to take it is never marked. Cost per
//! check: the enrolled nodes, and the distinct requirement sets of the queued tasks of jobs and
//! snapshots (one index scan of the queue), at most once a minute.

use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use flatrender_kit::shutdown::ShutdownSignal;
use sqlx::PgPool;
use uuid::Uuid;

use super::placement::{AdminState, Candidate, NodeOffer, compare_versions, eligible};
use super::{jobs, snapshots};
use crate::error::Result;
use crate::model::{ErrorCode, ErrorInfo, Lane};
use crate::state::State;

/// The advisory lock one replica's check holds (`hashtextextended` of this).
const LOCK: &str = "flatrender.render.unplaceable";

/// How often the check runs for `timeout`: a quarter of it, at least every minute.
pub fn check_interval(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(60))
}

/// Runs the check until `shutdown`.
pub async fn run(state: State, shutdown: ShutdownSignal) {
    let timeout = state.settings.no_eligible_node_timeout;
    let pool = &state.pool;
    shutdown
        .every(Duration::ZERO, check_interval(timeout), || async move {
            match super::retrying(|| check(pool, timeout)).await {
                Ok(failed) if !failed.jobs.is_empty() || !failed.snapshots.is_empty() => {
                    tracing::warn!(jobs = ?failed.jobs, snapshots = ?failed.snapshots, "work no node can take failed");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot look for jobs no node can take"),
            }
        })
        .await;
}

/// What a check failed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failed {
    /// Jobs failed with NO_ELIGIBLE_NODE.
    pub jobs: Vec<Uuid>,
    /// Snapshots failed with NO_ELIGIBLE_NODE.
    pub snapshots: Vec<Uuid>,
}

/// What queued work belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Owner {
    Job(Uuid),
    Snapshot(Uuid),
}

/// One check (see the module): marks and unmarks jobs and snapshots, fails those marked for
/// longer than `timeout`, and returns them. Does nothing while another replica checks.
pub async fn check(pool: &PgPool, timeout: Duration) -> Result<Failed> {
    let mut tx = pool.begin().await?;
    let ours = flatrender_kit::db::try_advisory_xact_lock(&mut tx, LOCK).await?;
    if !ours {
        return Ok(Failed::default());
    }

    type NodeRow = (Uuid, Vec<String>, bool, i64, bool, Vec<String>);
    let nodes: Vec<NodeOffer> = sqlx::query_as::<_, NodeRow>(
        "SELECT id, ae_versions, has_ffmpeg, ram_bytes, jsonb_array_length(gpus) > 0, tags FROM render.nodes
          WHERE deleted_at IS NULL AND state <> 'quarantined'",
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|(node_id, ae_versions, has_ffmpeg, ram_bytes, has_gpu, tags)| NodeOffer {
        node_id,
        connection_epoch: 0,
        name: String::new(),
        free_slots: 1,
        admin: AdminState::Active,
        tags: tags.into_iter().collect(),
        ae_versions,
        ram_bytes,
        has_gpu,
        has_ffmpeg,
        cached: HashSet::new(),
    })
    .collect();

    type NeedsRow = (Option<Uuid>, Option<Uuid>, String, Option<String>, Vec<String>, Option<i64>, bool);
    let needs: Vec<NeedsRow> = sqlx::query_as(
        "SELECT DISTINCT f.job_id, f.snapshot_id, f.lane, f.min_ae_version, f.required_tags, f.min_ram_bytes,
                f.needs_gpu
           FROM render.frame_jobs f
          WHERE f.dispatch_state = 'queued' AND (f.job_id IS NOT NULL OR f.snapshot_id IS NOT NULL)
            AND f.pinned_node_id IS NULL",
    )
    .fetch_all(&mut *tx)
    .await?;
    let owner_of = |job: Option<Uuid>, snapshot: Option<Uuid>| match (job, snapshot) {
        (Some(job), _) => Some(Owner::Job(job)),
        (None, Some(snapshot)) => Some(Owner::Snapshot(snapshot)),
        (None, None) => None,
    };
    let job_ids: Vec<Uuid> = needs.iter().filter_map(|n| n.0).collect::<BTreeSet<_>>().into_iter().collect();
    let snapshot_ids: Vec<Uuid> =
        needs.iter().filter(|n| n.0.is_none()).filter_map(|n| n.1).collect::<BTreeSet<_>>().into_iter().collect();
    // A job's nodes that failed any of its tasks; a snapshot's that failed its task.
    let mut excluded: HashMap<Owner, HashSet<Uuid>> = HashMap::new();
    for (job, snapshot, node) in sqlx::query_as::<_, (Option<Uuid>, Option<Uuid>, Uuid)>(
        "SELECT e.job_id, NULL::uuid, e.node_id FROM render.frame_job_excluded_nodes e WHERE e.job_id = ANY($1)
         UNION ALL
         SELECT NULL, f.snapshot_id, e.node_id FROM render.frame_job_excluded_nodes e
           JOIN render.frame_jobs f ON f.id = e.frame_job_id
          WHERE f.snapshot_id = ANY($2)",
    )
    .bind(&job_ids)
    .bind(&snapshot_ids)
    .fetch_all(&mut *tx)
    .await?
    {
        if let Some(owner) = owner_of(job, snapshot) {
            excluded.entry(owner).or_default().insert(node);
        }
    }

    let mut why: HashMap<Owner, String> = HashMap::new();
    for (job, snapshot, lane, min_ae_version, required_tags, min_ram_bytes, needs_gpu) in needs {
        let (Some(owner), Some(lane)) = (owner_of(job, snapshot), Lane::from_db(&lane)) else { continue };
        let task = Candidate {
            id: Uuid::nil(),
            lane,
            template_sha256: None,
            min_ae_version,
            required_tags,
            min_ram_bytes,
            needs_gpu,
            pinned_node_id: None,
            excluded: excluded.get(&owner).cloned().unwrap_or_default(),
            avoid_node: None,
        };
        if let Entry::Vacant(vacant) = why.entry(owner)
            && let Some(reason) = unmet(&task, &nodes)
        {
            vacant.insert(reason);
        }
    }

    let unplaceable: Vec<Uuid> =
        why.keys().filter_map(|o| if let Owner::Job(job) = o { Some(*job) } else { None }).collect();
    sqlx::query(
        "UPDATE render.render_jobs SET unplaceable_since = NULL
          WHERE unplaceable_since IS NOT NULL AND NOT (id = ANY($1))",
    )
    .bind(&unplaceable)
    .execute(&mut *tx)
    .await?;
    let expired: Vec<Uuid> = sqlx::query_scalar::<_, Option<Uuid>>(
        "UPDATE render.render_jobs SET unplaceable_since = coalesce(unplaceable_since, now())
          WHERE id = ANY($1) AND state IN ('queued', 'preparing', 'rendering', 'assembling')
      RETURNING CASE WHEN unplaceable_since <= now() - make_interval(secs => $2) THEN id END",
    )
    .bind(&unplaceable)
    .bind(timeout.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    let mut failed = Failed::default();
    for job in expired {
        let Some(reason) = why.get(&Owner::Job(job)) else { continue };
        let error = ErrorInfo::new(ErrorCode::NoEligibleNode, format!("no render node can take this render: {reason}"));
        if jobs::fail(&mut tx, job, &error).await? {
            failed.jobs.push(job);
        }
    }
    if !failed.jobs.is_empty() {
        // A requeued job starts unmarked.
        sqlx::query("UPDATE render.render_jobs SET unplaceable_since = NULL WHERE id = ANY($1)")
            .bind(&failed.jobs)
            .execute(&mut *tx)
            .await?;
    }
    failed.snapshots = check_snapshots(&mut tx, &why, timeout).await?;
    tx.commit().await?;
    Ok(failed)
}

/// Marks and unmarks snapshots by `why`, and fails those marked for longer than `timeout` with
/// their queued task; returns them.
async fn check_snapshots(
    tx: &mut sqlx::PgTransaction<'_>,
    why: &HashMap<Owner, String>,
    timeout: Duration,
) -> Result<Vec<Uuid>> {
    let unplaceable: Vec<Uuid> =
        why.keys().filter_map(|o| if let Owner::Snapshot(s) = o { Some(*s) } else { None }).collect();
    sqlx::query(
        "UPDATE render.snapshots SET unplaceable_since = NULL
          WHERE unplaceable_since IS NOT NULL AND NOT (id = ANY($1))",
    )
    .bind(&unplaceable)
    .execute(&mut **tx)
    .await?;
    let expired: Vec<Uuid> = sqlx::query_scalar::<_, Option<Uuid>>(
        "UPDATE render.snapshots SET unplaceable_since = coalesce(unplaceable_since, now())
          WHERE id = ANY($1) AND state IN ('queued', 'rendering')
      RETURNING CASE WHEN unplaceable_since <= now() - make_interval(secs => $2) THEN id END",
    )
    .bind(&unplaceable)
    .bind(timeout.as_secs_f64())
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .flatten()
    .collect();
    let mut failed = Vec::new();
    for snapshot in expired {
        let Some(reason) = why.get(&Owner::Snapshot(snapshot)) else { continue };
        let message = format!("no render node can take this snapshot: {reason}");
        let error = ErrorInfo::new(ErrorCode::NoEligibleNode, message);
        sqlx::query(
            "UPDATE render.frame_jobs SET state = 'failed', finished_at = now(), error_class = $2, error_code = $3,
                    error_message = $4
              WHERE snapshot_id = $1 AND state = 'queued'",
        )
        .bind(snapshot)
        .bind(error.class.as_db())
        .bind(error.code.map(|c| c.as_db()))
        .bind(&error.message)
        .execute(&mut **tx)
        .await?;
        snapshots::fail(tx, snapshot, &error).await?;
        failed.push(snapshot);
    }
    if !failed.is_empty() {
        sqlx::query("UPDATE render.snapshots SET unplaceable_since = NULL WHERE id = ANY($1)")
            .bind(&failed)
            .execute(&mut **tx)
            .await?;
    }
    Ok(failed)
}

/// Why none of `nodes` can take `task`, for the customer; `None` when one can.
pub fn unmet(task: &Candidate, nodes: &[NodeOffer]) -> Option<String> {
    if nodes.iter().any(|node| eligible(task, node)) {
        return None;
    }
    if nodes.is_empty() {
        return Some("no render node is enrolled".into());
    }
    // Each requirement on its own, and whether any node meets it.
    let mut needs: Vec<(String, bool)> = Vec::new();
    let some = |meets: &dyn Fn(&NodeOffer) -> bool| nodes.iter().any(meets);
    if task.lane == Lane::Assemble {
        needs.push(("ffmpeg for the final assembly".into(), some(&|n| n.has_ffmpeg)));
    } else {
        match &task.min_ae_version {
            Some(min) => needs.push((
                format!("After Effects {min} or later"),
                some(&|n| n.ae_versions.iter().any(|v| compare_versions(v, min) != Ordering::Less)),
            )),
            None => needs.push(("After Effects".into(), some(&|n| !n.ae_versions.is_empty()))),
        }
    }
    for tag in &task.required_tags {
        needs.push((format!("the tag \"{tag}\""), some(&|n| n.tags.contains(tag))));
    }
    if let Some(ram) = task.min_ram_bytes {
        needs.push((format!("{} of memory", gib(ram)), some(&|n| n.ram_bytes >= ram)));
    }
    if task.needs_gpu {
        needs.push(("a GPU".into(), some(&|n| n.has_gpu)));
    }
    let nobody: Vec<&str> = needs.iter().filter(|(_, met)| !met).map(|(what, _)| what.as_str()).collect();
    if !nobody.is_empty() {
        return Some(format!("no node has {}", nobody.join(", ")));
    }
    let capable = Candidate { excluded: HashSet::new(), ..task.clone() };
    if nodes.iter().any(|node| eligible(&capable, node)) {
        return Some("every node able to take it failed it before".into());
    }
    let all: Vec<&str> = needs.iter().map(|(what, _)| what.as_str()).collect();
    Some(format!("no node has all of {}", all.join(", ")))
}

/// `bytes` in GiB, as people write it ("64 GiB", "1.5 GiB").
fn gib(bytes: i64) -> String {
    let gib = bytes as f64 / f64::from(1u32 << 30);
    if gib.fract() == 0.0 { format!("{gib:.0} GiB") } else { format!("{gib:.1} GiB") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> NodeOffer {
        NodeOffer {
            node_id: Uuid::new_v4(),
            connection_epoch: 0,
            name: String::new(),
            free_slots: 1,
            admin: AdminState::Active,
            tags: ["eu".to_owned()].into(),
            ae_versions: vec!["24.2".into()],
            ram_bytes: 32 << 30,
            has_gpu: false,
            has_ffmpeg: false,
            cached: HashSet::new(),
        }
    }

    fn task() -> Candidate {
        Candidate {
            id: Uuid::nil(),
            lane: Lane::Render,
            template_sha256: None,
            min_ae_version: None,
            required_tags: Vec::new(),
            min_ram_bytes: None,
            needs_gpu: false,
            pinned_node_id: None,
            excluded: HashSet::new(),
            avoid_node: None,
        }
    }

    #[test]
    fn names_what_nobody_has() {
        let nodes = [node(), node()];
        assert_eq!(unmet(&task(), &nodes), None);
        assert_eq!(unmet(&task(), &[]).unwrap(), "no render node is enrolled");
        let demanding = Candidate {
            min_ae_version: Some("25.1".into()),
            required_tags: vec!["eu".into(), "gpu".into()],
            min_ram_bytes: Some(64 << 30),
            needs_gpu: true,
            ..task()
        };
        assert_eq!(
            unmet(&demanding, &nodes).unwrap(),
            "no node has After Effects 25.1 or later, the tag \"gpu\", 64 GiB of memory, a GPU"
        );
        let assemble = Candidate { lane: Lane::Assemble, ..task() };
        assert_eq!(unmet(&assemble, &nodes).unwrap(), "no node has ffmpeg for the final assembly");
    }

    #[test]
    fn every_need_met_somewhere_but_not_together() {
        let mut gpu = node();
        gpu.has_gpu = true;
        let mut big = node();
        big.ram_bytes = 128 << 30;
        let both = Candidate { needs_gpu: true, min_ram_bytes: Some(96 << 30), ..task() };
        assert_eq!(unmet(&both, &[gpu, big]).unwrap(), "no node has all of After Effects, 96 GiB of memory, a GPU");
    }

    #[test]
    fn nodes_that_failed_the_job_do_not_count() {
        let only = node();
        let mut failed = task();
        failed.excluded.insert(only.node_id);
        assert_eq!(unmet(&failed, std::slice::from_ref(&only)).unwrap(), "every node able to take it failed it before");
        assert_eq!(unmet(&failed, &[only, node()]), None, "another node can");
    }

    #[test]
    fn checks_follow_the_timeout() {
        assert_eq!(check_interval(Duration::from_secs(1800)), Duration::from_secs(60));
        assert_eq!(check_interval(Duration::from_secs(20)), Duration::from_secs(5));
        assert_eq!(check_interval(Duration::from_millis(10)), Duration::from_millis(50));
    }
}
