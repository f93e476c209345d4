//! Many agents' reports in one transaction: the set-based form of the hot reports.
//!
//! One report at a time, every agent message about a task is a handful of statements and a
//! commit, and the farm's reports queue behind each other's commits (NOTIFY takes a
//! database-wide lock at commit). The replica gathers the reports that arrive while a batch is
//! being written ([`crate::agents::reports`]) and writes them together here: the same fence
//! and the same rows as [`super::report`], in a fixed number of statements per batch.
//!
//! Only the common shapes are taken: progress updates, frame reports of render chunks, and
//! SUCCESS results of render chunks that deliver every frame of the chunk. Their frames must
//! name uploads of their lease ([`unrecorded_frames`], one query per batch); a report whose
//! frames do not is answered MALFORMED here, as the one-report path would. Everything else
//! (other lanes, missing or bad frames, outputs, a report that does not match its current
//! lease and so needs its reason worked out, a second report about one task in the same batch)
//! is answered `None`: the caller runs the one-report function of [`super::report`] for it
//! after the batch committed. Rows are locked in id order, so batches do not deadlock with each
//! other.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgPool, PgTransaction};
use uuid::Uuid;

use super::report::{self, Ended, Fence, Frame, MAX_LOG_TAIL_BYTES, Verdict};
use super::{jobs, notify_jobs};
use crate::error::Result;
use crate::model::{Lane, text};

/// A TaskUpdate with its fence.
#[derive(Clone, Debug)]
pub struct Update {
    /// The lease it claims.
    pub fence: Fence,
    /// What it says.
    pub update: agent_pb::TaskUpdate,
}

/// A FrameReport with its fence.
#[derive(Clone, Debug)]
pub struct Frames {
    /// The lease it claims.
    pub fence: Fence,
    /// What it says.
    pub report: agent_pb::FrameReport,
}

/// A TaskResult with its fence.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The lease it claims.
    pub fence: Fence,
    /// What it says.
    pub result: agent_pb::TaskResult,
}

/// The (node, connection epoch) pairs among `streams` that still are their nodes' current
/// streams. The node rows stay share-locked (in id order) until the transaction ends, so a newer
/// stream takes a node only after it.
pub(super) async fn held_streams(
    tx: &mut PgTransaction<'_>,
    streams: impl IntoIterator<Item = (Uuid, i64)>,
) -> Result<HashSet<(Uuid, i64)>> {
    let pairs: BTreeSet<(Uuid, i64)> = streams.into_iter().collect();
    let (ids, epochs): (Vec<Uuid>, Vec<i64>) = pairs.into_iter().unzip();
    let held: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT n.id, n.connection_epoch FROM render.nodes n
           JOIN unnest($1::uuid[], $2::bigint[]) AS x(id, epoch) ON n.id = x.id AND n.connection_epoch = x.epoch
          ORDER BY n.id
            FOR SHARE OF n",
    )
    .bind(&ids)
    .bind(&epochs)
    .fetch_all(&mut **tx)
    .await?;
    Ok(held.into_iter().collect())
}

/// The streams `fences` came on.
fn streams_of(fences: &[Fence]) -> impl Iterator<Item = (Uuid, i64)> + '_ {
    fences.iter().map(|f| (f.node_id, f.connection_epoch))
}

/// A current lease's task row, locked.
pub(super) struct LeaseRow {
    pub(super) lane: Lane,
    pub(super) job_id: Option<Uuid>,
    pub(super) snapshot_id: Option<Uuid>,
    pub(super) range: Option<(i32, i32, i32)>,
    pub(super) attempts: i32,
    pub(super) max_attempts: i32,
    /// The chunk a repair task repairs (its frames are recorded under it).
    pub(super) repair_of: Option<Uuid>,
}

/// id, lane, job_id, snapshot_id, frame_start, frame_end, frame_step, attempts, max_attempts,
/// the chunk repaired.
type LeaseColumns = (Uuid, String, Option<Uuid>, Option<Uuid>, Option<i32>, Option<i32>, i32, i32, i32, Option<Uuid>);

/// The leases among `fences` that are current (task, epoch, node, leased or running), locked
/// in id order, by task.
pub(super) async fn lock_current(tx: &mut PgTransaction<'_>, fences: &[Fence]) -> Result<HashMap<Uuid, LeaseRow>> {
    let tasks: Vec<Uuid> = fences.iter().map(|f| f.task_id).collect();
    let epochs: Vec<i64> = fences.iter().map(|f| f.lease_epoch).collect();
    let nodes: Vec<Uuid> = fences.iter().map(|f| f.node_id).collect();
    let rows: Vec<LeaseColumns> = sqlx::query_as(
        "SELECT f.id, f.lane, f.job_id, f.snapshot_id, f.frame_start, f.frame_end, f.frame_step, f.attempts,
                f.max_attempts,
                CASE WHEN f.repair_job_id IS NOT NULL
                     THEN (SELECT r.frame_job_id FROM render.frame_repair_jobs r WHERE r.id = f.repair_job_id) END
           FROM render.frame_jobs f
           JOIN unnest($1::uuid[], $2::bigint[], $3::uuid[]) AS x(id, epoch, node)
             ON f.id = x.id AND f.lease_epoch = x.epoch AND f.node_id = x.node
          WHERE f.state IN ('leased', 'running')
          ORDER BY f.id
            FOR NO KEY UPDATE OF f",
    )
    .bind(&tasks)
    .bind(&epochs)
    .bind(&nodes)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, lane, job_id, snapshot_id, start, end, step, attempts, max_attempts, repair_of)| {
            let lease = LeaseRow {
                lane: Lane::from_db(&lane)?,
                job_id,
                snapshot_id,
                range: start.zip(end).map(|(s, e)| (s, e, step.max(1))),
                attempts,
                max_attempts,
                repair_of,
            };
            Some((id, lease))
        })
        .collect())
}

/// The indexes of `fences` worth writing: not answered yet, on a held stream (others are
/// answered Superseded in `answers`) and the first report about their task in the batch (later
/// ones stay `None`).
fn admissible<A>(
    fences: &[Fence],
    held: &HashSet<(Uuid, i64)>,
    answers: &mut [Option<A>],
    superseded: impl Fn() -> A,
) -> Vec<usize> {
    let mut seen = HashSet::new();
    let mut live = Vec::new();
    for (i, fence) in fences.iter().enumerate() {
        if answers[i].is_some() {
            continue;
        }
        if !held.contains(&(fence.node_id, fence.connection_epoch)) {
            answers[i] = Some(superseded());
        } else if seen.insert(fence.task_id) {
            live.push(i);
        }
    }
    live
}

/// Progress of current leases; the first update of a lease makes its task running.
pub async fn task_updates(pool: &PgPool, items: &[Update]) -> Result<Vec<Option<Verdict>>> {
    let mut answers = vec![None; items.len()];
    let fences: Vec<Fence> = items.iter().map(|i| i.fence).collect();
    let mut tx = super::begin_hot(pool).await?;
    let held = held_streams(&mut tx, streams_of(&fences)).await?;
    let live = admissible(&fences, &held, &mut answers, || Verdict::Superseded);
    let candidates: Vec<Fence> = live.iter().map(|i| fences[*i]).collect();
    let current = lock_current(&mut tx, &candidates).await?;
    let live: Vec<usize> = live.into_iter().filter(|i| current.contains_key(&fences[*i].task_id)).collect();
    if live.is_empty() {
        return Ok(answers);
    }
    let mut ids = Vec::new();
    let mut epochs = Vec::new();
    let mut phases = Vec::new();
    let mut percents = Vec::new();
    let mut frames = Vec::new();
    for i in &live {
        let (phase, percent) = report::progress_of(&items[*i].update);
        ids.push(fences[*i].task_id);
        epochs.push(fences[*i].lease_epoch);
        phases.push(phase);
        percents.push(percent);
        frames.push(items[*i].update.current_frame);
    }
    sqlx::query(
        "UPDATE render.frame_jobs f
            SET state = 'running', started_at = coalesce(f.started_at, now()), phase = x.phase, percent = x.percent,
                current_frame = CASE WHEN x.frame >= 0 THEN x.frame ELSE f.current_frame END, last_progress_at = now()
           FROM unnest($1::uuid[], $2::text[], $3::real[], $4::int[]) AS x(id, phase, percent, frame)
          WHERE f.id = x.id",
    )
    .bind(&ids)
    .bind(&phases)
    .bind(&percents)
    .bind(&frames)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE render.frame_job_attempts a SET started_at = now()
           FROM unnest($1::uuid[], $2::bigint[]) AS x(id, epoch)
          WHERE a.frame_job_id = x.id AND a.lease_epoch = x.epoch AND a.started_at IS NULL",
    )
    .bind(&ids)
    .bind(&epochs)
    .execute(&mut *tx)
    .await?;
    let jobs: Vec<Uuid> = ids.iter().filter_map(|id| current.get(id).and_then(|c| c.job_id)).collect();
    notify_jobs(&mut tx, &jobs).await?;
    tx.commit().await?;
    for i in live {
        answers[i] = Some(Verdict::Accepted);
    }
    Ok(answers)
}

/// Frames of render chunks under their current leases.
pub async fn frame_reports(pool: &PgPool, items: &[Frames]) -> Result<Vec<Option<Verdict>>> {
    let mut answers = vec![None; items.len()];
    // Malformed reports are answered without the database.
    let mut parsed: Vec<Option<BTreeMap<i32, Frame>>> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match report::reported_frames(&item.report) {
            Ok(frames) => parsed.push(Some(frames)),
            Err(reason) => {
                answers[i] = Some(Verdict::Malformed(reason));
                parsed.push(None);
            }
        }
    }
    let fences: Vec<Fence> = items.iter().map(|i| i.fence).collect();
    let mut tx = super::begin_hot(pool).await?;
    let held = held_streams(&mut tx, streams_of(&fences)).await?;
    let live = admissible(&fences, &held, &mut answers, || Verdict::Superseded);
    let live: Vec<usize> = live.into_iter().filter(|i| parsed[*i].is_some()).collect();
    let candidates: Vec<Fence> = live.iter().map(|i| fences[*i]).collect();
    let current = lock_current(&mut tx, &candidates).await?;
    let mut accepted = Vec::new();
    for i in live {
        let Some(lease) = current.get(&fences[i].task_id).filter(|c| c.lane == Lane::Render) else { continue };
        let frames = parsed[i].as_ref().map(|f| f.values().cloned().collect::<Vec<_>>()).unwrap_or_default();
        if let Some(bad) = frames.iter().find(|f| !report::in_range(lease.range, f.number)) {
            answers[i] = Some(Verdict::Malformed(format!("frames: frame {} is not in the task's range", bad.number)));
            continue;
        }
        accepted.push((i, frames));
    }
    // Every frame names its upload by this lease; a report that does not is refused whole.
    let refused = {
        let checked: Vec<(Fence, &[Frame])> = accepted.iter().map(|(i, f)| (fences[*i], f.as_slice())).collect();
        unrecorded_frames(&mut tx, &checked).await?
    };
    accepted.retain(|(i, _)| match refused.get(&fences[*i].task_id) {
        Some(reason) => {
            answers[*i] = Some(Verdict::Malformed(reason.clone()));
            false
        }
        None => true,
    });
    if accepted.is_empty() {
        return Ok(answers);
    }
    let written: Vec<(Fence, &[Frame])> = accepted.iter().map(|(i, f)| (fences[*i], f.as_slice())).collect();
    let new = insert_frames(&mut tx, &written).await?;
    let mut work: BTreeMap<Uuid, i64> = BTreeMap::new();
    for (fence, _) in &written {
        if let Some(job) = current.get(&fence.task_id).and_then(|c| c.job_id) {
            *work.entry(job).or_default() += new.get(&fence.task_id).copied().unwrap_or(0);
        }
    }
    for (job, frames) in work {
        jobs::add_work(&mut tx, job, frames, 0).await?;
    }
    tx.commit().await?;
    for (i, _) in accepted {
        answers[i] = Some(Verdict::Accepted);
    }
    Ok(answers)
}

/// SUCCESS of render chunks whose every frame is accepted once the result's frames are: the
/// attempts and tasks end done, the frames are stored, the jobs move on (to assembling after
/// their last chunk).
pub async fn task_results(pool: &PgPool, items: &[Outcome]) -> Result<Vec<Option<(Verdict, Option<Ended>)>>> {
    let mut answers = vec![None; items.len()];
    // The shapes taken here; anything else is the one-report path's.
    let parsed: Vec<Option<BTreeMap<i32, Frame>>> = items
        .iter()
        .map(|item| {
            let result = &item.result;
            let plain = result.outcome() == pb::TaskOutcome::Success
                && result.outputs.is_empty()
                && result.frames.len() <= report::MAX_FRAMES_PER_RESULT
                && result.frames.iter().all(|f| f.status() == agent_pb::FrameStatus::Ok);
            if plain { report::ok_frames("frames", &result.frames).ok() } else { None }
        })
        .collect();
    if parsed.iter().all(Option::is_none) {
        return Ok(answers);
    }
    let fences: Vec<Fence> = items.iter().map(|i| i.fence).collect();
    let mut tx = super::begin_hot(pool).await?;
    let held = held_streams(&mut tx, streams_of(&fences)).await?;
    let live = admissible(&fences, &held, &mut answers, || (Verdict::Superseded, None));
    let live: Vec<usize> = live.into_iter().filter(|i| parsed[*i].is_some()).collect();
    let candidates: Vec<Fence> = live.iter().map(|i| fences[*i]).collect();
    let current = lock_current(&mut tx, &candidates).await?;
    let live: Vec<usize> = live
        .into_iter()
        .filter(|i| current.get(&fences[*i].task_id).is_some_and(|c| c.lane == Lane::Render && c.range.is_some()))
        .collect();
    let open = open_attempts(&mut tx, &live.iter().map(|i| fences[*i]).collect::<Vec<_>>()).await?;
    let live: Vec<usize> = live.into_iter().filter(|i| open.contains(&fences[*i].task_id)).collect();

    // Complete chunks only: every frame of the range accepted before or in this result.
    let before = accepted_frames(&mut tx, &live.iter().map(|i| fences[*i]).collect::<Vec<_>>()).await?;
    let mut complete = Vec::new();
    for i in live {
        let fence = fences[i];
        let Some((start, end, step)) = current.get(&fence.task_id).and_then(|c| c.range) else { continue };
        let Some(frames) = parsed[i].as_ref() else { continue };
        let had = before.get(&fence.task_id);
        let mut range = (start..=end).step_by(usize::try_from(step).unwrap_or(1).max(1));
        if range.all(|n| frames.contains_key(&n) || had.is_some_and(|h| h.contains(&n))) {
            // Frames this lease delivered already (in FrameReports) would not be written again.
            let kept: Vec<Frame> = frames
                .values()
                .filter(|f| report::in_range(Some((start, end, step)), f.number))
                .filter(|f| !had.is_some_and(|h| h.contains(&f.number)))
                .cloned()
                .collect();
            complete.push((i, kept));
        }
    }
    let refused = {
        let checked: Vec<(Fence, &[Frame])> = complete.iter().map(|(i, f)| (fences[*i], f.as_slice())).collect();
        unrecorded_frames(&mut tx, &checked).await?
    };
    complete.retain(|(i, _)| match refused.get(&fences[*i].task_id) {
        Some(reason) => {
            answers[*i] = Some((Verdict::Malformed(reason.clone()), None));
            false
        }
        None => true,
    });
    if complete.is_empty() {
        return Ok(answers);
    }

    let mut ids = Vec::new();
    let mut epochs = Vec::new();
    let mut exit_codes = Vec::new();
    let mut render_ms = Vec::new();
    let mut tails = Vec::new();
    let mut warnings = Vec::new();
    for (i, _) in &complete {
        let result = &items[*i].result;
        ids.push(fences[*i].task_id);
        epochs.push(fences[*i].lease_epoch);
        exit_codes.push(result.exit_code);
        render_ms.push(result.timings.as_ref().map(|t| t.total_ms).unwrap_or(0).min(i64::MAX as u64) as i64);
        tails.push(Some(text::tail(&result.log_tail, MAX_LOG_TAIL_BYTES)).filter(|t| !t.is_empty()));
        warnings.push(serde_json::Value::from(report::warnings_of(result)).to_string());
    }
    sqlx::query(
        "UPDATE render.frame_job_attempts a
            SET outcome = 'success', error_class = NULL, error_code = NULL, error_message = NULL, exit_code = x.exit_code,
                render_ms = x.ms, log_tail = x.tail,
                warnings = ARRAY(SELECT jsonb_array_elements_text(x.warnings::jsonb)),
                log_file_id = NULL, finished_at = now(), started_at = coalesce(a.started_at, now())
           FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::bigint[], $5::text[], $6::text[])
                AS x(id, epoch, exit_code, ms, tail, warnings)
          WHERE a.frame_job_id = x.id AND a.lease_epoch = x.epoch",
    )
    .bind(&ids)
    .bind(&epochs)
    .bind(&exit_codes)
    .bind(&render_ms)
    .bind(&tails)
    .bind(&warnings)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE render.frame_jobs f
            SET state = 'done', finished_at = now(), exit_code = x.exit_code, error_class = NULL, error_code = NULL,
                error_message = NULL, log_tail = x.tail, render_ms = f.render_ms + x.ms, phase = NULL, percent = 100
           FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::text[]) AS x(id, exit_code, ms, tail)
          WHERE f.id = x.id",
    )
    .bind(&ids)
    .bind(&exit_codes)
    .bind(&render_ms)
    .bind(&tails)
    .execute(&mut *tx)
    .await?;
    let written: Vec<(Fence, &[Frame])> = complete.iter().map(|(i, f)| (fences[*i], f.as_slice())).collect();
    let new = insert_frames(&mut tx, &written).await?;
    let mut work: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    for (k, (fence, _)) in written.iter().enumerate() {
        if let Some(job) = current.get(&fence.task_id).and_then(|c| c.job_id) {
            let entry = work.entry(job).or_default();
            entry.0 += new.get(&fence.task_id).copied().unwrap_or(0);
            entry.1 += render_ms[k];
        }
    }
    for (job, (frames, ms)) in &work {
        jobs::add_work(&mut tx, *job, *frames, *ms).await?;
    }
    for job in work.keys() {
        jobs::after_chunk_done(&mut tx, *job).await?;
    }
    tx.commit().await?;
    for (i, _) in complete {
        answers[i] = Some((Verdict::Accepted, Some(Ended::Done)));
    }
    Ok(answers)
}

/// The tasks among `fences` whose attempt (task, epoch) by that node has no outcome yet,
/// locked.
async fn open_attempts(tx: &mut PgTransaction<'_>, fences: &[Fence]) -> Result<HashSet<Uuid>> {
    if fences.is_empty() {
        return Ok(HashSet::new());
    }
    let tasks: Vec<Uuid> = fences.iter().map(|f| f.task_id).collect();
    let epochs: Vec<i64> = fences.iter().map(|f| f.lease_epoch).collect();
    let nodes: Vec<Uuid> = fences.iter().map(|f| f.node_id).collect();
    let open: Vec<Uuid> = sqlx::query_scalar(
        "SELECT a.frame_job_id FROM render.frame_job_attempts a
           JOIN unnest($1::uuid[], $2::bigint[], $3::uuid[]) AS x(id, epoch, node)
             ON a.frame_job_id = x.id AND a.lease_epoch = x.epoch AND a.node_id = x.node
          WHERE a.outcome IS NULL
          ORDER BY a.frame_job_id
            FOR NO KEY UPDATE OF a",
    )
    .bind(&tasks)
    .bind(&epochs)
    .bind(&nodes)
    .fetch_all(&mut **tx)
    .await?;
    Ok(open.into_iter().collect())
}

/// The frame numbers already accepted under each of `fences` (task, epoch).
async fn accepted_frames(tx: &mut PgTransaction<'_>, fences: &[Fence]) -> Result<HashMap<Uuid, HashSet<i32>>> {
    if fences.is_empty() {
        return Ok(HashMap::new());
    }
    let tasks: Vec<Uuid> = fences.iter().map(|f| f.task_id).collect();
    let epochs: Vec<i64> = fences.iter().map(|f| f.lease_epoch).collect();
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT r.frame_job_id, r.frame_number FROM render.frame_results r
           JOIN unnest($1::uuid[], $2::bigint[]) AS x(id, epoch)
             ON r.frame_job_id = x.id AND r.source_frame_job_id = x.id AND r.lease_epoch = x.epoch",
    )
    .bind(&tasks)
    .bind(&epochs)
    .fetch_all(&mut **tx)
    .await?;
    let mut accepted: HashMap<Uuid, HashSet<i32>> = HashMap::new();
    for (task, frame) in rows {
        accepted.entry(task).or_default().insert(frame);
    }
    Ok(accepted)
}

/// Stores the frames of each lease (one task at most once per call) and sets the tasks'
/// `frames_done`; returns per task how many frame numbers are new to it (frames a previous
/// lease delivered are replaced, not counted again). A repair's frames are stored under its
/// chunk; a row is replaced by a later epoch of the task that wrote it, or by a repair over
/// its chunk's row, never by a chunk over a repair's.
pub(super) async fn insert_frames(
    tx: &mut PgTransaction<'_>,
    leases: &[(Fence, &[Frame])],
) -> Result<HashMap<Uuid, i64>> {
    let count: usize = leases.iter().map(|(_, frames)| frames.len()).sum();
    if count == 0 {
        return Ok(HashMap::new());
    }
    let mut tasks = Vec::with_capacity(count);
    let mut epochs = Vec::with_capacity(count);
    let mut nodes = Vec::with_capacity(count);
    let mut numbers = Vec::with_capacity(count);
    let mut files = Vec::with_capacity(count);
    let mut digests = Vec::with_capacity(count);
    let mut sizes = Vec::with_capacity(count);
    let mut widths = Vec::with_capacity(count);
    let mut heights = Vec::with_capacity(count);
    let mut times = Vec::with_capacity(count);
    for (fence, frames) in leases {
        for frame in *frames {
            tasks.push(fence.task_id);
            epochs.push(fence.lease_epoch);
            nodes.push(fence.node_id);
            numbers.push(frame.number);
            files.push(frame.file_id);
            digests.push(frame.sha256.to_vec());
            sizes.push(frame.size_bytes);
            widths.push(frame.width);
            heights.push(frame.height);
            times.push(frame.render_ms);
        }
    }
    let inserted: Vec<(Uuid, bool)> = sqlx::query_as(
        "INSERT INTO render.frame_results AS r
                (frame_job_id, frame_number, tenant_id, job_id, source_frame_job_id, lease_epoch, node_id,
                 file_id, sha256, size_bytes, width, height, render_ms)
         SELECT CASE WHEN t.repair_job_id IS NULL THEN t.id
                     ELSE (SELECT p.frame_job_id FROM render.frame_repair_jobs p WHERE p.id = t.repair_job_id) END,
                x.frame, t.tenant_id, t.job_id, x.task, x.epoch, x.node, x.file_id, x.sha256, x.size,
                x.width, x.height, x.ms
           FROM unnest($1::uuid[], $2::bigint[], $3::uuid[], $4::int[], $5::uuid[], $6::bytea[], $7::bigint[],
                       $8::int[], $9::int[], $10::int[])
                AS x(task, epoch, node, frame, file_id, sha256, size, width, height, ms)
           JOIN render.frame_jobs t ON t.id = x.task
             ON CONFLICT (frame_job_id, frame_number) DO UPDATE
            SET lease_epoch = EXCLUDED.lease_epoch, node_id = EXCLUDED.node_id, file_id = EXCLUDED.file_id,
                sha256 = EXCLUDED.sha256, size_bytes = EXCLUDED.size_bytes, width = EXCLUDED.width,
                height = EXCLUDED.height, render_ms = EXCLUDED.render_ms,
                source_frame_job_id = EXCLUDED.source_frame_job_id, accepted_at = now()
          WHERE (r.source_frame_job_id = EXCLUDED.source_frame_job_id AND r.lease_epoch < EXCLUDED.lease_epoch)
             OR (r.source_frame_job_id = r.frame_job_id AND EXCLUDED.source_frame_job_id <> EXCLUDED.frame_job_id)
      RETURNING r.source_frame_job_id, (r.xmax::text = '0')",
    )
    .bind(&tasks)
    .bind(&epochs)
    .bind(&nodes)
    .bind(&numbers)
    .bind(&files)
    .bind(&digests)
    .bind(&sizes)
    .bind(&widths)
    .bind(&heights)
    .bind(&times)
    .fetch_all(&mut **tx)
    .await?;
    // Every row returned is one this lease did not hold before (inserted, or taken over from an
    // earlier lease or the chunk a repair mends), so it adds one to the lease's `frames_done`,
    // which the lease started at 0.
    let mut new: HashMap<Uuid, i64> = HashMap::new();
    let mut gained: BTreeMap<Uuid, i32> = BTreeMap::new();
    for (task, fresh) in inserted {
        *new.entry(task).or_default() += i64::from(fresh);
        *gained.entry(task).or_default() += 1;
    }
    if !gained.is_empty() {
        let (ids, counts): (Vec<Uuid>, Vec<i32>) = gained.into_iter().unzip();
        sqlx::query(
            "UPDATE render.frame_jobs f SET frames_done = f.frames_done + x.n
               FROM unnest($1::uuid[], $2::int[]) AS x(id, n)
              WHERE f.id = x.id",
        )
        .bind(&ids)
        .bind(&counts)
        .execute(&mut **tx)
        .await?;
    }
    Ok(new)
}

/// Why frames of the leases do not name their uploads, per task (the first such frame): each
/// OK frame must name the file that task's lease stored for that frame through UploadObject
/// (`render.object_uploads`), with the same SHA-256 and size. Frames of another lease of the
/// task do not count: a lease reports only what it rendered, and an earlier lease's file may
/// be from a different render of the frame. One query for all frames of `leases`.
pub(super) async fn unrecorded_frames(
    tx: &mut PgTransaction<'_>,
    leases: &[(Fence, &[Frame])],
) -> Result<HashMap<Uuid, String>> {
    let mut reasons: HashMap<Uuid, String> = HashMap::new();
    let mut tasks = Vec::new();
    let mut epochs = Vec::new();
    let mut numbers = Vec::new();
    let mut files = Vec::new();
    let mut digests = Vec::new();
    let mut sizes = Vec::new();
    for (fence, frames) in leases {
        for frame in *frames {
            let Some(file) = frame.file_id else {
                reasons.entry(fence.task_id).or_insert_with(|| {
                    format!("frames: frame {} has no file_id; an OK frame names its UploadObject file", frame.number)
                });
                continue;
            };
            tasks.push(fence.task_id);
            epochs.push(fence.lease_epoch);
            numbers.push(frame.number);
            files.push(file);
            digests.push(frame.sha256.to_vec());
            sizes.push(frame.size_bytes);
        }
    }
    if tasks.is_empty() {
        return Ok(reasons);
    }
    type Row = (Uuid, i32, Uuid, Option<Vec<u8>>, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT x.task, x.frame, x.file_id, u.sha256, u.size_bytes
           FROM unnest($1::uuid[], $2::bigint[], $3::int[], $4::uuid[], $5::bytea[], $6::bigint[])
                AS x(task, epoch, frame, file_id, sha256, size)
           LEFT JOIN render.object_uploads u
                  ON u.frame_job_id = x.task AND u.lease_epoch = x.epoch AND u.kind = 'frame'
                 AND u.frame = x.frame AND u.file_id = x.file_id
          WHERE u.file_id IS NULL OR u.sha256 <> x.sha256 OR u.size_bytes <> x.size
          ORDER BY x.task, x.frame",
    )
    .bind(&tasks)
    .bind(&epochs)
    .bind(&numbers)
    .bind(&files)
    .bind(&digests)
    .bind(&sizes)
    .fetch_all(&mut **tx)
    .await?;
    for (task, frame, file, sha256, size) in rows {
        let reason = match (sha256, size) {
            (Some(sha256), _) if !digests_match(&sha256, leases, task, frame) => format!(
                "frames: frame {frame}: checksum mismatch, its sha256 is not the one of its upload {file} ({})",
                hex::encode(&sha256)
            ),
            (Some(_), Some(size)) => {
                format!("frames: frame {frame}: size_bytes is not the {size} bytes of its upload {file}")
            }
            _ => format!("frames: frame {frame}: file_id {file} is not an upload of this frame by this lease"),
        };
        reasons.entry(task).or_insert(reason);
    }
    Ok(reasons)
}

/// Whether the frame `frame` of `task` among `leases` reports `sha256`.
fn digests_match(sha256: &[u8], leases: &[(Fence, &[Frame])], task: Uuid, frame: i32) -> bool {
    leases
        .iter()
        .filter(|(fence, _)| fence.task_id == task)
        .flat_map(|(_, frames)| frames.iter())
        .any(|f| f.number == frame && f.sha256.as_slice() == sha256)
}
