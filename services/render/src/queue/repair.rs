//! Frame repair: frames a render chunk did not deliver, or reported bad, are rendered again by
//! themselves instead of the whole chunk (`render.frame_repair_jobs`, executed by lane 'repair'
//! tasks).
//!
//! - [`bad_frames`] and [`runs`]: a chunk's bad frames, grouped into one repair per run of
//!   consecutive frame numbers with one reason. A repair renders one range with step 1, so a run
//!   never spans frames the chunk does not have: with a segment step above 1 (frames 10, 15,
//!   ...) every bad frame is a run of its own.
//! - [`create`]: the repairs of a chunk that delivered part of its frames, with their tasks (the
//!   chunk's composition, segment, placement needs, priority, submit time and attempts), queued
//!   before render chunks (lane rank 1). The node that made the bad frames is remembered
//!   (`detected_on_node_id`) so placement prefers another ([`avoided_nodes`]).
//! - [`started`], [`resolve`]: a repair is RUNNING once its task was leased, DONE with it. A
//!   failed or canceled job fails or cancels its open repairs with its tasks (`jobs::fail`,
//!   CancelRender, FailRender).
//!
//! The repair task's frames are recorded under the chunk's `frame_job_id`, replacing the
//! chunk's rows (`report::insert_frames`), so every frame of a job is accepted exactly once.

use std::collections::{BTreeMap, HashMap};

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use sqlx::PgTransaction;
use uuid::Uuid;

use super::{QUEUE_CHANNEL, notify};
use crate::error::Result;
use crate::model::RepairReason;

/// A run of bad frames: one repair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First frame.
    pub start: i32,
    /// Last frame (inclusive).
    pub end: i32,
    /// Why.
    pub reason: RepairReason,
}

/// The frames of `range` (start, end, step) that `reported` lists as not usable, with why; the
/// last entry for a frame wins, so a frame listed bad and then OK is not bad.
pub fn bad_frames(reported: &[agent_pb::FrameOutput], range: Option<(i32, i32, i32)>) -> BTreeMap<i32, RepairReason> {
    let Some((start, end, step)) = range else { return BTreeMap::new() };
    let mut bad = BTreeMap::new();
    for frame in reported {
        let n = frame.frame;
        if n < start || n > end || (n - start) % step.max(1) != 0 {
            continue;
        }
        let reason = match frame.status() {
            agent_pb::FrameStatus::Ok | agent_pb::FrameStatus::Unspecified => None,
            agent_pb::FrameStatus::Missing => Some(RepairReason::Missing),
            agent_pb::FrameStatus::Corrupt => Some(RepairReason::Corrupt),
            agent_pb::FrameStatus::WrongSize => Some(RepairReason::WrongSize),
        };
        match reason {
            Some(reason) => bad.insert(n, reason),
            None => bad.remove(&n),
        };
    }
    bad
}

/// `frames` (sorted, with their reasons) as runs of consecutive frame numbers with one reason.
pub fn runs(frames: &BTreeMap<i32, RepairReason>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (&frame, &reason) in frames {
        match runs.last_mut() {
            Some(run) if run.reason == reason && run.end.checked_add(1) == Some(frame) => run.end = frame,
            _ => runs.push(Run { start: frame, end: frame, reason }),
        }
    }
    runs
}

/// Queues a repair (row and task) of chunk `chunk` for each of `runs`, found on `node`'s output;
/// wakes the dispatchers. Returns the repairs' tasks.
pub async fn create(tx: &mut PgTransaction<'_>, chunk: Uuid, node: Uuid, runs: &[Run]) -> Result<Vec<Uuid>> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    let starts: Vec<i32> = runs.iter().map(|r| r.start).collect();
    let ends: Vec<i32> = runs.iter().map(|r| r.end).collect();
    let reasons: Vec<&str> = runs.iter().map(|r| r.reason.as_db()).collect();
    let repairs: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO render.frame_repair_jobs (tenant_id, job_id, frame_job_id, frame_start, frame_end, reason,
                detected_on_node_id)
         SELECT c.tenant_id, c.job_id, c.id, x.frame_start, x.frame_end, x.reason, $2
           FROM unnest($3::int[], $4::int[], $5::text[]) WITH ORDINALITY AS x(frame_start, frame_end, reason, ord)
          CROSS JOIN render.frame_jobs c
          WHERE c.id = $1 AND c.job_id IS NOT NULL
          ORDER BY x.ord
      RETURNING id",
    )
    .bind(chunk)
    .bind(node)
    .bind(&starts)
    .bind(&ends)
    .bind(&reasons)
    .fetch_all(&mut **tx)
    .await?;
    // Step 1 whatever the segment's: a run is consecutive frame numbers ([`runs`]).
    let tasks: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, segment_id, repair_job_id, priority, submitted_at,
                template_sha256, composition_name, frame_start, frame_end, frame_step, min_ae_version, required_tags,
                min_ram_bytes, needs_gpu, max_attempts)
         SELECT c.tenant_id, 'repair', c.job_id, c.segment_id, r.id, c.priority, c.submitted_at, c.template_sha256,
                c.composition_name, r.frame_start, r.frame_end, 1, c.min_ae_version, c.required_tags, c.min_ram_bytes,
                c.needs_gpu, c.max_attempts
           FROM render.frame_repair_jobs r JOIN render.frame_jobs c ON c.id = r.frame_job_id
          WHERE r.id = ANY($1)
          ORDER BY r.frame_start
      RETURNING id",
    )
    .bind(&repairs)
    .fetch_all(&mut **tx)
    .await?;
    notify(tx, QUEUE_CHANNEL, "").await?;
    Ok(tasks)
}

/// The node each of the repair tasks `tasks` should avoid if it can (the one whose output was
/// bad), by task.
pub async fn avoided_nodes(tx: &mut PgTransaction<'_>, tasks: &[Uuid]) -> Result<HashMap<Uuid, Uuid>> {
    if tasks.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT f.id, r.detected_on_node_id FROM render.frame_jobs f
           JOIN render.frame_repair_jobs r ON r.id = f.repair_job_id
          WHERE f.id = ANY($1) AND r.detected_on_node_id IS NOT NULL",
    )
    .bind(tasks)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The repairs of the just leased tasks `tasks` (of any lane) are RUNNING.
pub async fn started(tx: &mut PgTransaction<'_>, tasks: &[Uuid]) -> Result<()> {
    sqlx::query(
        "UPDATE render.frame_repair_jobs r SET state = 'running'
           FROM render.frame_jobs f
          WHERE f.id = ANY($1) AND r.id = f.repair_job_id AND r.state = 'queued'",
    )
    .bind(tasks)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The repair that task `task` executes is DONE (its task delivered every frame).
pub async fn resolve(tx: &mut PgTransaction<'_>, task: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE render.frame_repair_jobs r SET state = 'done', resolved_at = now()
           FROM render.frame_jobs f
          WHERE f.id = $1 AND r.id = f.repair_job_id AND r.state IN ('queued', 'running')",
    )
    .bind(task)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The open repairs of `job` fail with it.
pub async fn fail_open(tx: &mut PgTransaction<'_>, job: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE render.frame_repair_jobs SET state = 'failed', resolved_at = now()
          WHERE job_id = $1 AND state IN ('queued', 'running')",
    )
    .bind(job)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(frame: i32, status: agent_pb::FrameStatus) -> agent_pb::FrameOutput {
        agent_pb::FrameOutput { frame, status: status as i32, ..Default::default() }
    }

    #[test]
    fn bad_frames_are_those_of_the_range_listed_bad_last() {
        use agent_pb::FrameStatus::{Corrupt, Missing, Ok, WrongSize};
        let reported = [
            output(1, Missing),
            output(2, Corrupt),
            output(2, Ok),
            output(3, Ok),
            output(3, WrongSize),
            output(4, Corrupt),
            output(99, Missing),
        ];
        let bad = bad_frames(&reported, Some((0, 9, 1)));
        assert_eq!(
            bad.into_iter().collect::<Vec<_>>(),
            [(1, RepairReason::Missing), (3, RepairReason::WrongSize), (4, RepairReason::Corrupt)]
        );
        let stepped = bad_frames(&[output(10, Missing), output(12, Missing), output(15, Corrupt)], Some((10, 30, 5)));
        assert_eq!(stepped.keys().copied().collect::<Vec<_>>(), [10, 15], "12 is not a frame of the chunk");
        assert!(bad_frames(&reported, None).is_empty());
    }

    #[test]
    fn runs_are_consecutive_frames_with_one_reason() {
        let frames: BTreeMap<i32, RepairReason> = [
            (3, RepairReason::Missing),
            (4, RepairReason::Missing),
            (5, RepairReason::Corrupt),
            (6, RepairReason::Corrupt),
            (8, RepairReason::Corrupt),
        ]
        .into();
        assert_eq!(
            runs(&frames),
            [
                Run { start: 3, end: 4, reason: RepairReason::Missing },
                Run { start: 5, end: 6, reason: RepairReason::Corrupt },
                Run { start: 8, end: 8, reason: RepairReason::Corrupt },
            ]
        );
        assert!(runs(&BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_stepped_chunk_repairs_frame_by_frame() {
        // Frames 10 and 15 of a step-5 chunk are neighbours in the chunk but not in a step-1
        // range: rendering 10-15 would make frames the job does not have.
        let frames: BTreeMap<i32, RepairReason> = [(10, RepairReason::Missing), (15, RepairReason::Missing)].into();
        assert_eq!(
            runs(&frames),
            [
                Run { start: 10, end: 10, reason: RepairReason::Missing },
                Run { start: 15, end: 15, reason: RepairReason::Missing },
            ]
        );
    }
}
