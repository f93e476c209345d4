//! `ListChunks` and `GetChunk`: a job's tasks (render chunks and its assembly) with their
//! attempts and frame repairs. Chunks are listed in segment and frame order (the assembly last)
//! in keyset pages; attempts carry their log tails only in GetChunk (they are up to 64 KiB each).

use std::collections::HashMap;

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RenderApi;
use crate::api::page;
use crate::api::records::{REPAIRING_FRAMES, SHOWN_CHUNK_STATE, id_text, optional_timestamp, shown_chunk, timestamp};
use crate::error::{RenderError, Result};
use crate::model::{ChunkState, ErrorInfo, Lane, RepairReason, TaskOutcome, validate};

/// The keyset position of a chunk: (segment order, first frame, id); the assembly, which has
/// neither, sorts after every segment.
type ChunkKey = (i32, i32, Uuid);

/// The columns [`chunk`] reads, from `render.frame_jobs f` left-joined with its segment `s`
/// (and `repairing`: [`REPAIRING_FRAMES`]).
const CHUNK_COLUMNS: &str = "f.id, f.job_id, f.tenant_id, f.lane, f.segment_id, s.position, f.composition_name, \
     f.frame_start, f.frame_end, f.frame_step, coalesce(f.frame_count, 0) AS frame_count, f.frames_done, f.state, \
     f.attempts, f.max_attempts, f.lease_epoch, f.node_id, f.lease_expires_at, f.error_class, f.error_code, \
     f.error_message, f.created_at, f.updated_at, f.render_ms, f.not_before, \
     coalesce(s.position, 2147483647) AS segment_order, coalesce(f.frame_start, -1) AS frame_order, \
     ARRAY(SELECT DISTINCT x.node_id FROM render.frame_job_excluded_nodes x WHERE x.job_id = f.job_id) \
         AS excluded_node_ids";

/// The lanes shown as chunks (repair tasks appear as their chunk's repairs).
const CHUNK_LANES: &str = "f.lane IN ('render', 'assemble')";

impl RenderApi {
    /// `ListChunks` for a platform admin.
    pub(crate) async fn list_chunks_as_admin(&self, request: &pb::ListChunksRequest) -> Result<pb::ListChunksResponse> {
        let job = validate::uuid("render_id", &request.render_id)?;
        let limit = page::size(request.page.as_ref())?;
        let mut states: Vec<&'static str> = Vec::new();
        for (i, value) in request.states.iter().enumerate() {
            match (*value, ChunkState::from_pb_i32(*value)) {
                (0, _) => {}
                (_, Some(state)) => states.push(state.as_db()),
                (n, None) => return Err(RenderError::invalid(format!("states[{i}]"), format!("unknown value {n}"))),
            }
        }
        states.sort_unstable();
        states.dedup();
        let print = page::fingerprint(&[&"admin-chunks", &job, &states]);
        let after: Option<ChunkKey> = page::decode(&print, page::token(request.page.as_ref()))?;

        let mut conn = self.state.pool.acquire().await?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM render.render_jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(&mut *conn)
            .await?;
        if exists.is_none() {
            return Err(RenderError::NotFound("render"));
        }
        let mut query: QueryBuilder<Postgres> = QueryBuilder::new(format!(
            "SELECT {CHUNK_COLUMNS}, {REPAIRING_FRAMES} AS repairing
               FROM render.frame_jobs f LEFT JOIN render.render_job_segments s ON s.id = f.segment_id
              WHERE {CHUNK_LANES} AND f.job_id = "
        ));
        query.push_bind(job);
        if !states.is_empty() {
            // By the state shown: a chunk with open repairs is RUNNING, not DONE.
            query.push(format!(" AND ({SHOWN_CHUNK_STATE}) = ANY("));
            query.push_bind(states.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            query.push(")");
        }
        if let Some((segment, frame, id)) = after {
            query.push(" AND (coalesce(s.position, 2147483647), coalesce(f.frame_start, -1), f.id) > (");
            query.push_bind(segment).push(", ").push_bind(frame).push(", ").push_bind(id).push(")");
        }
        query.push(" ORDER BY segment_order, frame_order, f.id LIMIT ").push_bind(limit + 1);
        let rows = query.build().fetch_all(&mut *conn).await?;
        let mut keyed = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: ChunkKey = (row.try_get("segment_order")?, row.try_get("frame_order")?, row.try_get("id")?);
            keyed.push((key, chunk(row)?));
        }
        let next = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
        let mut chunks: Vec<pb::Chunk> = keyed.into_iter().map(|(_, chunk)| chunk).collect();
        complete(&mut conn, &mut chunks, false).await?;
        Ok(pb::ListChunksResponse { chunks, page: Some(common_pb::PageResponse { next_page_token: next }) })
    }

    /// `GetChunk` for a platform admin.
    pub(crate) async fn get_chunk_as_admin(&self, request: &pb::GetChunkRequest) -> Result<pb::Chunk> {
        let id = validate::uuid("chunk_id", &request.chunk_id)?;
        let mut conn = self.state.pool.acquire().await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CHUNK_COLUMNS}, {REPAIRING_FRAMES} AS repairing
               FROM render.frame_jobs f LEFT JOIN render.render_job_segments s ON s.id = f.segment_id
              WHERE {CHUNK_LANES} AND f.id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(RenderError::NotFound("chunk"))?;
        let mut chunks = [chunk(&row)?];
        complete(&mut conn, &mut chunks, true).await?;
        let [chunk] = chunks;
        Ok(chunk)
    }
}

/// A chunk row (of [`CHUNK_COLUMNS`]) without its attempts and repairs.
fn chunk(row: &PgRow) -> Result<pb::Chunk> {
    let lane = Lane::from_db(row.try_get("lane")?);
    let frame_count: i32 = row.try_get("frame_count")?;
    let (state, frames_done) = shown_chunk(
        ChunkState::from_db(row.try_get("state")?),
        frame_count,
        row.try_get("frames_done")?,
        row.try_get("repairing")?,
    );
    // A chunk shown RUNNING for its repairs holds no lease of its own.
    let leased = state.is_some_and(ChunkState::is_leased) && row.try_get::<i32, _>("repairing")? == 0;
    let range = match (row.try_get::<Option<i32>, _>("frame_start")?, row.try_get::<Option<i32>, _>("frame_end")?) {
        (Some(start), Some(end)) => Some(pb::FrameRange { start, end, step: row.try_get("frame_step")? }),
        _ => None,
    };
    let error_class: Option<String> = row.try_get("error_class")?;
    let error_code: Option<String> = row.try_get("error_code")?;
    let error_message: Option<String> = row.try_get("error_message")?;
    let excluded: Vec<Uuid> = row.try_get("excluded_node_ids")?;
    let not_before: Option<OffsetDateTime> = row.try_get("not_before")?;
    let lease_epoch: i64 = row.try_get("lease_epoch")?;
    Ok(pb::Chunk {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        render_id: id_text(row.try_get("job_id")?),
        tenant_id: row.try_get::<Uuid, _>("tenant_id")?.to_string(),
        kind: lane.map_or(0, |lane| lane.kind().to_pb_i32()),
        segment_id: id_text(row.try_get("segment_id")?),
        segment_index: row.try_get::<Option<i32>, _>("position")?.unwrap_or(-1),
        composition: row.try_get::<Option<String>, _>("composition_name")?.unwrap_or_default(),
        range,
        frame_count,
        frames_done,
        state: state.map_or(0, ChunkState::to_pb_i32),
        attempt_count: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        lease_epoch: u64::try_from(lease_epoch).unwrap_or(0),
        node_id: if leased { id_text(row.try_get("node_id")?) } else { String::new() },
        lease_expires_at: if leased { optional_timestamp(row.try_get("lease_expires_at")?) } else { None },
        excluded_node_ids: excluded.iter().map(Uuid::to_string).collect(),
        last_error: ErrorInfo::from_db(error_class.as_deref(), error_code.as_deref(), error_message.as_deref())
            .map(|e| e.to_pb()),
        attempts: Vec::new(),
        repairs: Vec::new(),
        created_at: Some(timestamp(row.try_get("created_at")?)),
        updated_at: Some(timestamp(row.try_get("updated_at")?)),
        render_ms: row.try_get("render_ms")?,
        not_before: not_before.filter(|at| *at > OffsetDateTime::now_utc()).map(timestamp),
    })
}

/// Fills in the attempts (with log tails when `log_tails`) and repairs of `chunks`.
async fn complete(conn: &mut PgConnection, chunks: &mut [pb::Chunk], log_tails: bool) -> Result<()> {
    if chunks.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = chunks.iter().filter_map(|c| Uuid::try_parse(&c.id).ok()).collect();
    let repair_rows = sqlx::query(
        "SELECT r.id, r.frame_job_id, r.frame_start, r.frame_end, r.reason, r.state, r.detected_on_node_id,
                r.created_at, r.resolved_at,
                (SELECT t.id FROM render.frame_jobs t WHERE t.repair_job_id = r.id ORDER BY t.created_at LIMIT 1) AS task_id
           FROM render.frame_repair_jobs r WHERE r.frame_job_id = ANY($1) ORDER BY r.created_at, r.id",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let tasks: Vec<Uuid> = ids
        .iter()
        .copied()
        .chain(repair_rows.iter().filter_map(|r| r.try_get::<Option<Uuid>, _>("task_id").ok().flatten()))
        .collect();
    let mut attempts = attempts_of(conn, &tasks, log_tails).await?;
    let mut repairs: HashMap<Uuid, Vec<pb::FrameRepair>> = HashMap::new();
    for row in &repair_rows {
        let task: Option<Uuid> = row.try_get("task_id")?;
        let state = ChunkState::from_db(row.try_get("state")?);
        repairs.entry(row.try_get("frame_job_id")?).or_default().push(pb::FrameRepair {
            id: row.try_get::<Uuid, _>("id")?.to_string(),
            task_id: id_text(task),
            range: Some(pb::FrameRange { start: row.try_get("frame_start")?, end: row.try_get("frame_end")?, step: 1 }),
            reason: RepairReason::from_db(row.try_get("reason")?).map_or(0, RepairReason::to_pb_i32),
            state: state.map_or(0, ChunkState::to_pb_i32),
            detected_on_node_id: id_text(row.try_get("detected_on_node_id")?),
            attempts: task.and_then(|t| attempts.remove(&t)).unwrap_or_default(),
            created_at: Some(timestamp(row.try_get("created_at")?)),
            resolved_at: optional_timestamp(row.try_get("resolved_at")?),
        });
    }
    for chunk in chunks {
        let Ok(id) = Uuid::try_parse(&chunk.id) else { continue };
        chunk.attempts = attempts.remove(&id).unwrap_or_default();
        chunk.repairs = repairs.remove(&id).unwrap_or_default();
    }
    Ok(())
}

/// The attempts of `tasks`, oldest first, by task.
async fn attempts_of(
    conn: &mut PgConnection,
    tasks: &[Uuid],
    log_tails: bool,
) -> Result<HashMap<Uuid, Vec<pb::ChunkAttempt>>> {
    let rows = sqlx::query(
        "SELECT frame_job_id, attempt, lease_epoch, node_id, node_name, assigned_at, started_at, finished_at, outcome,
                error_class, error_code, error_message, exit_code, render_ms, warnings,
                CASE WHEN $2 THEN log_tail END AS log_tail
           FROM render.frame_job_attempts WHERE frame_job_id = ANY($1) ORDER BY frame_job_id, attempt",
    )
    .bind(tasks)
    .bind(log_tails)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_task: HashMap<Uuid, Vec<pb::ChunkAttempt>> = HashMap::new();
    for row in &rows {
        let outcome: Option<String> = row.try_get("outcome")?;
        let error_class: Option<String> = row.try_get("error_class")?;
        let error_code: Option<String> = row.try_get("error_code")?;
        let error_message: Option<String> = row.try_get("error_message")?;
        let epoch: i64 = row.try_get("lease_epoch")?;
        by_task.entry(row.try_get("frame_job_id")?).or_default().push(pb::ChunkAttempt {
            attempt: row.try_get("attempt")?,
            lease_epoch: u64::try_from(epoch).unwrap_or(0),
            node_id: id_text(row.try_get("node_id")?),
            node_name: row.try_get("node_name")?,
            assigned_at: Some(timestamp(row.try_get("assigned_at")?)),
            started_at: optional_timestamp(row.try_get("started_at")?),
            finished_at: optional_timestamp(row.try_get("finished_at")?),
            outcome: outcome.as_deref().and_then(TaskOutcome::from_db).map_or(0, TaskOutcome::to_pb_i32),
            error: ErrorInfo::from_db(error_class.as_deref(), error_code.as_deref(), error_message.as_deref())
                .map(|e| e.to_pb()),
            exit_code: row.try_get("exit_code")?,
            duration_ms: row.try_get("render_ms")?,
            log_tail: row.try_get::<Option<String>, _>("log_tail")?.unwrap_or_default(),
            warnings: row.try_get("warnings")?,
        });
    }
    Ok(by_task)
}
