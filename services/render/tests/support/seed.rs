//! Jobs written straight into the database: a job, its segments and their queued chunks, as
//! SubmitRender will write them, then `render_queue` is notified. The seed's shape follows a
//! submit request (tenant, segments with frame ranges, chunk size, plan priority), so tests can
//! move to SubmitRender by swapping this one function. A plan is its `render.plan_limits` row
//! ([`seed_plan`]).

use sqlx::PgPool;
use uuid::Uuid;

/// A job to seed.
#[derive(Clone, Debug)]
pub struct JobSeed {
    /// Tenant.
    pub tenant: Uuid,
    /// Segments: composition and inclusive frame range.
    pub segments: Vec<(String, i32, i32)>,
    /// Frames per chunk.
    pub chunk_size: i32,
    /// Plan priority.
    pub priority: i16,
    /// Attempts per chunk.
    pub max_attempts: i32,
    /// Tags a node must carry.
    pub required_tags: Vec<String>,
    /// The template bundle's digest.
    pub template_sha256: [u8; 32],
    /// Lowest After Effects version.
    pub min_ae_version: Option<String>,
    /// The job-wide scene data (the `scene_data` column's JSON).
    pub scene_data: serde_json::Value,
    /// Every segment's scene data.
    pub segment_scene_data: serde_json::Value,
}

impl Default for JobSeed {
    fn default() -> Self {
        Self {
            tenant: Uuid::new_v4(),
            segments: vec![("Main".into(), 0, 29)],
            chunk_size: 10,
            priority: 0,
            max_attempts: 3,
            required_tags: Vec::new(),
            template_sha256: [0x5a; 32],
            min_ae_version: None,
            scene_data: serde_json::json!({}),
            segment_scene_data: serde_json::json!({}),
        }
    }
}

/// What was seeded.
#[derive(Clone, Debug)]
pub struct SeededJob {
    /// The job.
    pub job_id: Uuid,
    /// Its tenant.
    pub tenant: Uuid,
    /// Its chunks in order.
    pub chunks: Vec<Uuid>,
    /// Frames in all segments.
    pub frames_total: i32,
}

/// Writes `seed` as a queued job with queued chunks and notifies `render_queue`.
pub async fn seed_job(pool: &PgPool, seed: JobSeed) -> SeededJob {
    let mut tx = pool.begin().await.expect("a transaction");
    let frames_total: i32 = seed.segments.iter().map(|(_, s, e)| e - s + 1).sum();
    let job_id: Uuid = sqlx::query_scalar(
        "INSERT INTO render.render_jobs (tenant_id, template_file_id, template_sha256, priority, plan_code,
                output_width, output_height, output_fps, frames_total, chunk_size_frames, max_attempts, scene_data)
         VALUES ($1, gen_random_uuid(), $2, $3, 'pro', 1280, 720, 30, $4, $5, $6, $7)
      RETURNING id",
    )
    .bind(seed.tenant)
    .bind(seed.template_sha256.as_slice())
    .bind(seed.priority)
    .bind(frames_total)
    .bind(seed.chunk_size)
    .bind(seed.max_attempts)
    .bind(&seed.scene_data)
    .fetch_one(&mut *tx)
    .await
    .expect("a job");
    let mut chunks = Vec::new();
    for (position, (composition, start, end)) in seed.segments.iter().enumerate() {
        let segment: Uuid = sqlx::query_scalar(
            "INSERT INTO render.render_job_segments (tenant_id, job_id, position, composition_name, frame_start, frame_end,
                    scene_data)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(seed.tenant)
        .bind(job_id)
        .bind(position as i32)
        .bind(composition)
        .bind(start)
        .bind(end)
        .bind(&seed.segment_scene_data)
        .fetch_one(&mut *tx)
        .await
        .expect("a segment");
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO render.frame_jobs (tenant_id, lane, job_id, segment_id, priority, submitted_at, template_sha256,
                    composition_name, frame_start, frame_end, max_attempts, required_tags, min_ae_version)
             SELECT $1, 'render', $2, $3, $4, j.created_at, $5, $6, s, least(s + $8 - 1, $9), $10, $11, $12
               FROM render.render_jobs j, generate_series($7::int, $9::int, $8::int) AS s
              WHERE j.id = $2
              ORDER BY s
          RETURNING id",
        )
        .bind(seed.tenant)
        .bind(job_id)
        .bind(segment)
        .bind(seed.priority)
        .bind(seed.template_sha256.as_slice())
        .bind(composition)
        .bind(start)
        .bind(seed.chunk_size)
        .bind(end)
        .bind(seed.max_attempts)
        .bind(&seed.required_tags)
        .bind(seed.min_ae_version.as_deref())
        .fetch_all(&mut *tx)
        .await
        .expect("chunks");
        chunks.extend(ids);
    }
    sqlx::query("SELECT pg_notify('render_queue', '')").execute(&mut *tx).await.expect("a notification");
    tx.commit().await.expect("committing the seed");
    SeededJob { job_id, tenant: seed.tenant, chunks, frames_total }
}

/// Cancels a job as CancelRender will (the contract of RENDER_CONTRACTS.md): the job and its
/// unfinished tasks canceled in one transaction, keeping node and epoch, the holders notified.
pub async fn cancel_job(pool: &PgPool, job: Uuid) {
    let mut tx = pool.begin().await.expect("a transaction");
    let nodes: Vec<Option<Uuid>> = sqlx::query_scalar(
        "WITH open AS (SELECT id, node_id, state FROM render.frame_jobs
                        WHERE job_id = $1 AND state IN ('queued', 'leased', 'running') FOR NO KEY UPDATE)
         UPDATE render.frame_jobs f SET state = 'canceled', finished_at = now() FROM open WHERE f.id = open.id
      RETURNING CASE WHEN open.state IN ('leased', 'running') THEN open.node_id END",
    )
    .bind(job)
    .fetch_all(&mut *tx)
    .await
    .expect("canceling the tasks");
    sqlx::query(
        "UPDATE render.frame_repair_jobs SET state = 'canceled', resolved_at = now()
          WHERE job_id = $1 AND state IN ('queued', 'running')",
    )
    .bind(job)
    .execute(&mut *tx)
    .await
    .expect("canceling the repairs");
    sqlx::query(
        "UPDATE render.render_jobs SET state = 'canceled', cancel_requested_at = now(), finished_at = now(),
                cancel_reason = 'test'
          WHERE id = $1",
    )
    .bind(job)
    .execute(&mut *tx)
    .await
    .expect("canceling the job");
    let nodes: Vec<Uuid> = nodes.into_iter().flatten().collect();
    sqlx::query("SELECT pg_notify('render_nodes', n::text) FROM (SELECT DISTINCT unnest($1::uuid[]) AS n) d")
        .bind(&nodes)
        .execute(&mut *tx)
        .await
        .expect("notifying the nodes");
    sqlx::query("SELECT pg_notify('render_jobs', $1::text)")
        .bind(job.to_string())
        .execute(&mut *tx)
        .await
        .expect("notifying");
    tx.commit().await.expect("committing the cancel");
}

/// Writes a queued snapshot of `tenant` (frame `frame` of `Main`) and its one-frame task in lane
/// `snapshot`, as RequestSnapshot does on a cache miss, and notifies `render_queue`. Returns the
/// snapshot and its task.
pub async fn seed_snapshot(pool: &PgPool, tenant: Uuid, frame: i32) -> (Uuid, Uuid) {
    let mut tx = pool.begin().await.expect("a transaction");
    let snapshot: Uuid = sqlx::query_scalar(
        "INSERT INTO render.snapshots (tenant_id, cache_key, template_file_id, template_sha256, composition_name, frame,
                width, height)
         VALUES ($1, sha256(gen_random_uuid()::text::bytea), gen_random_uuid(), $2, 'Main', $3, 640, 360)
      RETURNING id",
    )
    .bind(tenant)
    .bind([0x5a_u8; 32].as_slice())
    .bind(frame)
    .fetch_one(&mut *tx)
    .await
    .expect("a snapshot");
    let task: Uuid = sqlx::query_scalar(
        "INSERT INTO render.frame_jobs (tenant_id, lane, snapshot_id, template_sha256, composition_name, frame_start,
                frame_end)
         VALUES ($1, 'snapshot', $2, $3, 'Main', $4, $4)
      RETURNING id",
    )
    .bind(tenant)
    .bind(snapshot)
    .bind([0x5a_u8; 32].as_slice())
    .bind(frame)
    .fetch_one(&mut *tx)
    .await
    .expect("a snapshot task");
    sqlx::query("SELECT pg_notify('render_queue', '')").execute(&mut *tx).await.expect("a notification");
    tx.commit().await.expect("committing the snapshot");
    (snapshot, task)
}

/// Stores a plan row for a subscriber (`user` None: the tenant's).
pub async fn seed_plan(pool: &PgPool, tenant: Uuid, user: Option<Uuid>, plan: &Plan) {
    sqlx::query(
        "INSERT INTO render.plan_limits (tenant_id, user_id, plan_code, render_priority, max_width, max_height,
             max_fps, max_video_duration_seconds, watermark, export_retention_days, monthly_render_seconds,
             max_concurrent_renders, max_snapshots_per_hour, voiceover_enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 30, $10, $11, $12, $13)",
    )
    .bind(tenant)
    .bind(user)
    .bind(plan.code)
    .bind(plan.priority)
    .bind(plan.max_width)
    .bind(plan.max_height)
    .bind(plan.max_fps)
    .bind(plan.max_seconds)
    .bind(plan.watermark)
    .bind(plan.monthly_seconds)
    .bind(plan.concurrent)
    .bind(plan.snapshots_per_hour)
    .bind(plan.voiceover)
    .execute(pool)
    .await
    .expect("a plan row");
}

/// A plan row for [`seed_plan`].
#[derive(Clone, Debug)]
pub struct Plan {
    pub code: &'static str,
    pub priority: i16,
    pub max_width: i32,
    pub max_height: i32,
    pub max_fps: i16,
    pub max_seconds: i32,
    pub watermark: bool,
    pub monthly_seconds: Option<i64>,
    pub concurrent: i32,
    pub snapshots_per_hour: Option<i32>,
    pub voiceover: bool,
}

impl Plan {
    /// Like identity's seeded `pro`.
    pub fn pro() -> Self {
        Self {
            code: "pro",
            priority: 50,
            max_width: 1920,
            max_height: 1080,
            max_fps: 60,
            max_seconds: 600,
            watermark: false,
            monthly_seconds: Some(36_000),
            concurrent: 3,
            snapshots_per_hour: Some(600),
            voiceover: true,
        }
    }

    /// Roomy limits for tests that make many jobs.
    pub fn roomy() -> Self {
        Self {
            code: "business",
            priority: 100,
            concurrent: 1000,
            monthly_seconds: None,
            snapshots_per_hour: None,
            ..Self::pro()
        }
    }
}
