//! Claiming queued tasks for this replica's nodes, in one transaction:
//!
//! 1. The nodes offered are this replica's view of its streams (slots, capabilities, admin
//!    state); the database confirms them in step 3, for the nodes placed on.
//! 2. Candidates in dispatch order — lane, plan priority, fair share between tenants, submit
//!    time — filtered coarsely by what the nodes together can do, and locked with
//!    `FOR UPDATE SKIP LOCKED` (another replica's claim skips them). Fair share: each tenant's
//!    queue is ranked on its own (a LATERAL top-k per tenant over `frame_jobs_tenant_queue_idx`,
//!    tenants found by a loose index scan), each rank shifted by the tasks of that lane rank the
//!    tenant runs now (a running snapshot does not cost its tenant a render slot; a running
//!    probe costs nobody anything), and the queues are interleaved rank by rank; so one
//!    tenant's big job gets no more slots than
//!    another tenant with work waiting, whatever was submitted first. Equal ranks go first to
//!    the tenant whose jobs progressed least recently (none rendering: first), then by submit
//!    time. Why not submit time alone: when the slot a tenant's only running task frees ties
//!    that tenant with one that waits, the older job would win it back every time, and on a
//!    one-slot farm (or when the other slots are busy) a huge job would starve every later one.
//! 3. Placement in memory ([`super::placement`]); a frame repair carries the node it should
//!    avoid if it can ([`super::repair::avoided_nodes`]). The fence: the nodes placed on are
//!    locked (`FOR SHARE`) at the connection epoch this replica holds, with their admin state
//!    as stored; one whose stream moved on, or whose state is not the one it was placed with,
//!    gets nothing. A newer stream's epoch increment (or an operator's drain or quarantine, which
//!    then counts from its commit, not from when this replica's resync learns of it) waits for
//!    the claim to commit, so its Hello sees every lease made here.
//! 4. One statement leases the placed rows (new epoch, one more attempt) and one inserts their
//!    attempt rows; jobs whose first task this is start, snapshots whose task this is render,
//!    leased repairs run; the assignments are read back.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::placement::{self, AdminState, Candidate, NodeOffer};
use super::spec::{self, Inputs, LeaseTerms, SegmentRow, TaskRow};
use super::{jobs, repair, snapshots};
use crate::error::Result;
use crate::model::Lane;
use crate::settings::WatermarkSettings;

/// Most candidates read per claim.
const MAX_CANDIDATES: i64 = 500;

/// What a claim is for.
#[derive(Clone, Debug)]
pub struct ClaimRequest<'a> {
    /// This replica (`nodes.orchestrator_id` of the offered nodes).
    pub orchestrator_id: &'a str,
    /// The lease lifetime written with each lease.
    pub lease_ttl: Duration,
    /// Nodes with free slots.
    pub nodes: &'a [NodeOffer],
    /// The mark of watermarked jobs' assemblies.
    pub watermark: &'a WatermarkSettings,
}

/// A task leased to a node: what to send it.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The node.
    pub node_id: Uuid,
    /// The node's connection epoch the lease was made under (deliver only on that stream).
    pub connection_epoch: i64,
    /// The task.
    pub task_id: Uuid,
    /// Its job, if any.
    pub job_id: Option<Uuid>,
    /// The lease epoch.
    pub lease_epoch: i64,
    /// The assignment.
    pub assign: agent_pb::AssignTask,
}

/// The candidate query: `$1` node ids, `$2` the union of their tags, `$3` their largest RAM,
/// `$4` whether any has a GPU, `$5` any ffmpeg, `$6` any After Effects, `$7` the limit.
///
/// `progressed`, `active` and `chosen` are materialized on purpose. As a lateral of `ranked`,
/// a tenant's latest progress was looked up once per ranked row (1,000 per claim) instead of
/// once per tenant. Inlined, `active` became a subquery run
/// once per ranked row: with 2,000 candidates and 500 running tasks that was 1.5 million
/// buffer reads, about 700 ms per claim. `chosen` feeds an `id = ANY(...)` primary-key lookup.
/// Estimated at 100 rows, it was joined by re-reading a tenant's whole queue for every row.
/// Whether a locked row is still queued is checked by the caller, not here: with `state =
/// 'queued'` in the condition the planner looked the ids up in the partial queue index (whose
/// last column is the id) by scanning all of it, about 200 ms for 500 ids.
const CANDIDATES: &str = "
WITH RECURSIVE tenants AS (
    (SELECT f.tenant_id FROM render.frame_jobs f WHERE f.dispatch_state = 'queued' ORDER BY f.tenant_id LIMIT 1)
    UNION ALL
    SELECT (SELECT f.tenant_id FROM render.frame_jobs f
             WHERE f.dispatch_state = 'queued' AND f.tenant_id > t.tenant_id ORDER BY f.tenant_id LIMIT 1)
      FROM tenants t WHERE t.tenant_id IS NOT NULL
), progressed AS MATERIALIZED (
    SELECT t.tenant_id,
           (SELECT max(j.updated_at) FROM render.render_jobs j
             WHERE j.tenant_id = t.tenant_id AND j.state IN ('rendering', 'assembling')) AS progressed_at
      FROM tenants t WHERE t.tenant_id IS NOT NULL
), active AS MATERIALIZED (
    SELECT f.tenant_id, f.lane_rank, count(*) AS n FROM render.frame_jobs f
     WHERE f.dispatch_state = 'leased' AND f.lane <> 'probe' GROUP BY f.tenant_id, f.lane_rank
), ranked AS (
    SELECT c.id, c.lane_rank, c.priority, c.submitted_at, p.progressed_at,
           row_number() OVER (PARTITION BY p.tenant_id, c.lane_rank, c.priority ORDER BY c.submitted_at, c.id)
             + coalesce(a.n, 0) AS tenant_rank
      FROM progressed p
     CROSS JOIN LATERAL (
        SELECT f.id, f.lane_rank, f.priority, f.submitted_at
          FROM render.frame_jobs f
         WHERE f.tenant_id = p.tenant_id AND f.dispatch_state = 'queued'
           AND (f.not_before IS NULL OR f.not_before <= now())
           AND (f.pinned_node_id IS NULL OR f.pinned_node_id = ANY($1))
           AND f.required_tags <@ $2
           AND (f.min_ram_bytes IS NULL OR f.min_ram_bytes <= $3)
           AND (NOT f.needs_gpu OR $4)
           AND (f.lane <> 'assemble' OR $5)
           AND (f.lane = 'assemble' OR $6)
         ORDER BY f.lane_rank, f.priority DESC, f.submitted_at, f.id
         LIMIT $7) c
      LEFT JOIN active a ON a.tenant_id = p.tenant_id AND a.lane_rank = c.lane_rank
), chosen AS MATERIALIZED (
    SELECT id,
           row_number() OVER (ORDER BY lane_rank, priority DESC, tenant_rank, progressed_at NULLS FIRST, submitted_at, id)
             AS ord
      FROM ranked
     ORDER BY ord
     LIMIT $7
)
SELECT f.id, f.state, f.lane, f.template_sha256, f.min_ae_version, f.required_tags, f.min_ram_bytes,
       f.needs_gpu, f.pinned_node_id, f.job_id
  FROM render.frame_jobs f JOIN chosen ON chosen.id = f.id
 WHERE f.id = ANY(ARRAY(SELECT id FROM chosen))
 ORDER BY chosen.ord
   FOR NO KEY UPDATE OF f SKIP LOCKED";

/// The stored admin state of each of `nodes` whose stream (connection epoch) this replica
/// holds, the rows share-locked in id order.
async fn held_nodes(
    tx: &mut sqlx::PgTransaction<'_>,
    orchestrator_id: &str,
    nodes: impl Iterator<Item = &NodeOffer>,
) -> Result<HashMap<Uuid, AdminState>> {
    let (ids, epochs): (Vec<Uuid>, Vec<i64>) = nodes.map(|n| (n.node_id, n.connection_epoch)).unzip();
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT n.id, n.state FROM render.nodes n
           JOIN unnest($1::uuid[], $2::bigint[]) AS x(id, epoch) ON n.id = x.id
          WHERE n.connection_epoch = x.epoch AND n.orchestrator_id = $3 AND n.deleted_at IS NULL
          ORDER BY n.id
            FOR SHARE OF n",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(orchestrator_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(id, state)| (id, AdminState::from_db(&state))).collect())
}

/// Claims and leases as many queued tasks as the offered nodes can take now.
pub async fn claim(pool: &PgPool, request: &ClaimRequest<'_>) -> Result<Vec<Lease>> {
    let free: u32 = request.nodes.iter().map(|n| n.free_slots).sum();
    if free == 0 {
        return Ok(Vec::new());
    }
    let mut tx = super::begin_hot(pool).await?;

    // 1. The offered nodes, as this replica sees them; checked in step 3.
    let nodes: Vec<NodeOffer> =
        request.nodes.iter().filter(|n| n.free_slots > 0 && n.admin != AdminState::Draining).cloned().collect();
    if nodes.is_empty() {
        return Ok(Vec::new());
    }

    // 2. Candidates, locked. Index scans only (sequential scans are off in every hot
    // transaction, see `begin_hot`): the planner otherwise reads and sorts a tenant's whole
    // queue for its top-k (the placement filters are not in the index), ~20 ms per claim with
    // 10,000 queued against ~4 ms in index order, and growing with the queue.
    sqlx::query("SELECT set_config('enable_bitmapscan', 'off', true)").execute(&mut *tx).await?;
    let node_ids: Vec<Uuid> = nodes.iter().map(|n| n.node_id).collect();
    let all_tags: Vec<String> =
        nodes.iter().flat_map(|n| n.tags.iter().cloned()).collect::<BTreeSet<_>>().into_iter().collect();
    let free: u32 = nodes.iter().map(|n| n.free_slots).sum();
    // Twice the free slots leave placement room to pass over tasks no offered node takes (the
    // dispatcher claims again while claims lease something); each candidate is ranked, sorted
    // and locked, so more cost every claim.
    let limit = (i64::from(free) * 2 + 16).min(MAX_CANDIDATES);
    let rows = sqlx::query(CANDIDATES)
        .bind(&node_ids)
        .bind(&all_tags)
        .bind(nodes.iter().map(|n| n.ram_bytes).max().unwrap_or(0))
        .bind(nodes.iter().any(|n| n.has_gpu))
        .bind(nodes.iter().any(|n| n.has_ffmpeg))
        .bind(nodes.iter().any(|n| !n.ae_versions.is_empty()))
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut candidates = Vec::with_capacity(rows.len());
    let mut jobs_of: HashMap<Uuid, Option<Uuid>> = HashMap::new();
    for row in &rows {
        // Leased by another replica between the ranking and the lock (see CANDIDATES).
        if row.try_get::<&str, _>("state")? != "queued" {
            continue;
        }
        let id: Uuid = row.try_get("id")?;
        let lane: String = row.try_get("lane")?;
        let Some(lane) = Lane::from_db(&lane) else { continue };
        let digest: Option<Vec<u8>> = row.try_get("template_sha256")?;
        let job_id: Option<Uuid> = row.try_get("job_id")?;
        jobs_of.insert(id, job_id);
        candidates.push(Candidate {
            id,
            lane,
            template_sha256: digest.and_then(|d| <[u8; 32]>::try_from(d.as_slice()).ok()),
            min_ae_version: row.try_get("min_ae_version")?,
            required_tags: row.try_get("required_tags")?,
            min_ram_bytes: row.try_get("min_ram_bytes")?,
            needs_gpu: row.try_get("needs_gpu")?,
            pinned_node_id: row.try_get("pinned_node_id")?,
            excluded: HashSet::new(),
            avoid_node: None,
        });
    }

    // Exclusions of these nodes from these tasks or their jobs.
    let task_ids: Vec<Uuid> = candidates.iter().map(|c| c.id).collect();
    let job_ids: Vec<Uuid> = jobs_of.values().flatten().copied().collect::<HashSet<_>>().into_iter().collect();
    let exclusions: Vec<(Uuid, Option<Uuid>, Uuid)> = sqlx::query_as(
        "SELECT frame_job_id, job_id, node_id FROM render.frame_job_excluded_nodes
          WHERE node_id = ANY($1) AND (frame_job_id = ANY($2) OR job_id = ANY($3))",
    )
    .bind(&node_ids)
    .bind(&task_ids)
    .bind(&job_ids)
    .fetch_all(&mut *tx)
    .await?;
    for candidate in &mut candidates {
        let job = jobs_of.get(&candidate.id).copied().flatten();
        candidate.excluded = exclusions
            .iter()
            .filter(|(task, excluded_job, _)| *task == candidate.id || (job.is_some() && *excluded_job == job))
            .map(|(_, _, node)| *node)
            .collect();
    }

    // Repairs prefer another node than the one whose frames were bad (read only when a repair
    // is among the candidates).
    let repairs: Vec<Uuid> = candidates.iter().filter(|c| c.lane == Lane::Repair).map(|c| c.id).collect();
    if !repairs.is_empty() {
        let avoided = repair::avoided_nodes(&mut tx, &repairs).await?;
        for candidate in &mut candidates {
            candidate.avoid_node = avoided.get(&candidate.id).copied();
        }
    }

    // 3. Placement, then the fence. Only the nodes placed on are read and locked: reading every
    // offered node cost more than any other statement of the claim, and the reports of the
    // whole farm share-lock the same rows, so each lock is a multixact.
    let placed = placement::place(&candidates, &nodes);
    let placed_on: BTreeSet<usize> = placed.iter().map(|(_, n)| *n).collect();
    let fenced = held_nodes(&mut tx, request.orchestrator_id, placed_on.iter().map(|n| &nodes[*n])).await?;
    let placed: Vec<(usize, usize)> =
        placed.into_iter().filter(|(_, n)| fenced.get(&nodes[*n].node_id) == Some(&nodes[*n].admin)).collect();
    if placed.is_empty() {
        return Ok(Vec::new());
    }
    let lease_ids: Vec<Uuid> = placed.iter().map(|(t, _)| candidates[*t].id).collect();
    let lease_nodes: Vec<Uuid> = placed.iter().map(|(_, n)| nodes[*n].node_id).collect();
    let lease_names: Vec<String> = placed.iter().map(|(_, n)| nodes[*n].name.clone()).collect();

    // 4. Lease, attempts, job starts.
    let leased: Vec<(Uuid, i64, OffsetDateTime, Option<Uuid>)> = sqlx::query_as(
        "UPDATE render.frame_jobs f
            SET state = 'leased', node_id = x.node_id, lease_epoch = f.lease_epoch + 1, attempts = f.attempts + 1,
                leased_at = now(), lease_expires_at = now() + make_interval(secs => $3),
                started_at = NULL, not_before = NULL, frames_done = 0, current_frame = NULL,
                last_progress_at = NULL, phase = NULL, percent = NULL
           FROM unnest($1::uuid[], $2::uuid[]) AS x(id, node_id)
          WHERE f.id = x.id AND f.state = 'queued'
      RETURNING f.id, f.lease_epoch, f.lease_expires_at, f.snapshot_id",
    )
    .bind(&lease_ids)
    .bind(&lease_nodes)
    .bind(request.lease_ttl.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    let attempts: HashMap<Uuid, i32> = sqlx::query_as::<_, (Uuid, i32)>(
        "INSERT INTO render.frame_job_attempts (tenant_id, frame_job_id, job_id, attempt, lease_epoch, node_id, node_name)
         SELECT f.tenant_id, f.id, f.job_id,
                coalesce((SELECT max(a.attempt) FROM render.frame_job_attempts a WHERE a.frame_job_id = f.id), 0) + 1,
                f.lease_epoch, f.node_id, x.node_name
           FROM unnest($1::uuid[], $2::text[]) AS x(id, node_name)
           JOIN render.frame_jobs f ON f.id = x.id
      RETURNING frame_job_id, attempt",
    )
    .bind(&lease_ids)
    .bind(&lease_names)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    let started_jobs: Vec<Uuid> = lease_ids
        .iter()
        .filter_map(|id| jobs_of.get(id).copied().flatten())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    jobs::start(&mut tx, &started_jobs).await?;
    let rendered_snapshots: Vec<Uuid> = leased.iter().filter_map(|(_, _, _, snapshot)| *snapshot).collect();
    snapshots::rendering(&mut tx, &rendered_snapshots).await?;
    if placed.iter().any(|(t, _)| candidates[*t].lane == Lane::Repair) {
        repair::started(&mut tx, &lease_ids).await?;
    }

    let task_rows: HashMap<Uuid, TaskRow> = sqlx::query(TaskRow::QUERY)
        .bind(&lease_ids)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| TaskRow::from_row(row).map(|t| (t.id, t)))
        .collect::<sqlx::Result<_>>()?;
    let mut segments: HashMap<Uuid, Vec<SegmentRow>> = HashMap::new();
    for row in task_rows.values().filter(|r| r.lane == Lane::Assemble) {
        let Some(job) = row.job_id else { continue };
        let list: Vec<(i32, String, i32, i32, i32, i32)> = sqlx::query_as(
            "SELECT position, composition_name, frame_start, frame_end, frame_step, frame_count
               FROM render.render_job_segments WHERE job_id = $1 ORDER BY position",
        )
        .bind(job)
        .fetch_all(&mut *tx)
        .await?;
        segments.insert(
            job,
            list.into_iter()
                .map(|(position, composition_name, frame_start, frame_end, frame_step, frame_count)| SegmentRow {
                    position,
                    composition_name,
                    frame_start,
                    frame_end,
                    frame_step,
                    frame_count,
                })
                .collect(),
        );
    }
    let assembled: Vec<Uuid> =
        task_rows.values().filter(|r| r.lane == Lane::Assemble).filter_map(|r| r.job_id).collect();
    let mut inputs = Inputs { audio: crate::api::records::audio_of(&mut *tx, &assembled).await?, ..Inputs::default() };
    let named: Vec<Uuid> = task_rows
        .values()
        .flat_map(|row| {
            let audio = row.job_id.and_then(|job| inputs.audio.get(&job)).map(Vec::as_slice).unwrap_or_default();
            row.input_files(audio, request.watermark.image_file_id)
        })
        .collect();
    inputs.load_facts(&mut tx, &named).await?;
    tx.commit().await?;

    let node_of: HashMap<Uuid, (Uuid, i64)> =
        placed.iter().map(|(t, n)| (candidates[*t].id, (nodes[*n].node_id, nodes[*n].connection_epoch))).collect();
    let mut leases = Vec::with_capacity(leased.len());
    for (task_id, lease_epoch, expires_at, _) in leased {
        let (Some(row), Some((node_id, connection_epoch))) = (task_rows.get(&task_id), node_of.get(&task_id)) else {
            continue;
        };
        let attempt = attempts.get(&task_id).copied().unwrap_or(1);
        let job_segments = row.job_id.and_then(|j| segments.get(&j)).map(Vec::as_slice).unwrap_or(&[]);
        let terms = LeaseTerms { lease_epoch, expires_at, attempt };
        leases.push(Lease {
            node_id: *node_id,
            connection_epoch: *connection_epoch,
            task_id,
            job_id: row.job_id,
            lease_epoch,
            assign: spec::assign_task(row, terms, job_segments, &inputs, request.watermark),
        });
    }
    Ok(leases)
}
