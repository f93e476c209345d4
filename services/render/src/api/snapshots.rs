//! Snapshots (`RequestSnapshot`, `GetSnapshot`, `WatchSnapshot`): one-frame stills, cached per
//! tenant by their cache key.
//!
//! A request whose key is READY (and not expired) for the tenant is a hit: answered at once, no
//! task, its `hit_count`, `last_accessed_at` and retention bumped. One equal to a QUEUED or
//! RENDERING snapshot (RENDERING while its task is leased) gets that snapshot. One equal to a
//! FAILED snapshot (or to a READY one whose image expired, not yet deleted by the retention
//! sweep) queues that row again. Anything else makes a snapshot row and a one-frame task in
//! lane `snapshot`, which every dispatcher takes before render chunks. Only requests that queue a
//! task count against the plan's hourly snapshot rate (`render.snapshot_tasks`).

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgConnection, PgTransaction, Row};
use time::OffsetDateTime;
use tonic::codegen::BoxStream;
use uuid::Uuid;

use super::access::Viewer;
use super::changes::Topic;
use super::follow::{self, Follow, Pace};
use super::records::{self, SNAPSHOT_COLUMNS};
use crate::RenderApi;
use crate::error::{RenderError, Result};
use crate::model::{SnapshotRequest, SnapshotState, validate};
use crate::plans::{self, PlanLimits};

/// Attempts to find or make the row of a key; a second is needed only after losing an insert race.
const ROW_ATTEMPTS: usize = 3;

impl RenderApi {
    /// `RequestSnapshot` for `viewer`.
    pub(crate) async fn request_snapshot_for(
        &self,
        viewer: &Viewer,
        request: pb::RequestSnapshotRequest,
    ) -> Result<pb::RequestSnapshotResponse> {
        let request = SnapshotRequest::try_from(request)?;
        let key = request.cache_key();
        let api = &self.state.settings.api;
        self.checked_files(viewer.tenant, &request.file_refs(), &request.template_sha256).await?;
        let plan = plans::effective(&self.state.pool, viewer.tenant, Some(viewer.user), &api.default_plan).await?;

        for _ in 0..ROW_ATTEMPTS {
            let mut tx = self.state.pool.begin().await?;
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {SNAPSHOT_COLUMNS}, expires_at IS NOT NULL AND expires_at <= now() AS expired
                   FROM render.snapshots WHERE tenant_id = $1 AND cache_key = $2 FOR UPDATE"
            )))
            .bind(viewer.tenant)
            .bind(key.as_bytes().as_slice())
            .fetch_optional(&mut *tx)
            .await?;
            let answer = match row {
                Some(row) => {
                    let id: Uuid = row.try_get("id")?;
                    let expired: bool = row.try_get("expired")?;
                    match SnapshotState::from_db(row.try_get("state")?) {
                        Some(SnapshotState::Ready) if !expired => {
                            let snapshot = self.hit(&mut tx, id).await?;
                            pb::RequestSnapshotResponse { snapshot: Some(snapshot), cache_hit: true }
                        }
                        Some(SnapshotState::Queued | SnapshotState::Rendering) => {
                            pb::RequestSnapshotResponse { snapshot: Some(records::snapshot(&row)?), cache_hit: false }
                        }
                        _ => {
                            let snapshot = self.requeue(&mut tx, viewer, &plan.limits, id, &request).await?;
                            pb::RequestSnapshotResponse { snapshot: Some(snapshot), cache_hit: false }
                        }
                    }
                }
                None => {
                    let Some(snapshot) = self.create(&mut tx, viewer, &plan.limits, &request).await? else {
                        // Another request made the row first: look again.
                        tx.rollback().await?;
                        continue;
                    };
                    pb::RequestSnapshotResponse { snapshot: Some(snapshot), cache_hit: false }
                }
            };
            tx.commit().await?;
            return Ok(answer);
        }
        Err(RenderError::Database(sqlx::Error::Protocol("the snapshot row kept changing".into())))
    }

    /// A cache hit on `id`: counted, and kept for the retention from now.
    async fn hit(&self, tx: &mut PgTransaction<'_>, id: Uuid) -> Result<pb::Snapshot> {
        let retention = self.state.settings.api.snapshot_retention;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE render.snapshots
                SET hit_count = hit_count + 1, last_accessed_at = now(),
                    expires_at = now() + make_interval(secs => $2)
              WHERE id = $1
              RETURNING {SNAPSHOT_COLUMNS}"
        )))
        .bind(id)
        .bind(retention.as_secs_f64())
        .fetch_one(&mut **tx)
        .await?;
        records::snapshot(&row)
    }

    /// Queues failed (or expired) snapshot `id` again.
    async fn requeue(
        &self,
        tx: &mut PgTransaction<'_>,
        viewer: &Viewer,
        limits: &PlanLimits,
        id: Uuid,
        request: &SnapshotRequest,
    ) -> Result<pb::Snapshot> {
        within_rate(tx, viewer, limits).await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE render.snapshots
                SET state = 'queued', file_id = NULL, rendered_at = NULL, expires_at = NULL, error_class = NULL,
                    error_code = NULL, error_message = NULL, last_accessed_at = now()
              WHERE id = $1
              RETURNING {SNAPSHOT_COLUMNS}"
        )))
        .bind(id)
        .fetch_one(&mut **tx)
        .await?;
        self.queue_task(tx, viewer, limits, id, request).await?;
        sqlx::query("SELECT pg_notify('render_snapshots', $1)").bind(id.to_string()).execute(&mut **tx).await?;
        records::snapshot(&row)
    }

    /// A new snapshot row and its task; `None` when a concurrent request inserted the key first.
    async fn create(
        &self,
        tx: &mut PgTransaction<'_>,
        viewer: &Viewer,
        limits: &PlanLimits,
        request: &SnapshotRequest,
    ) -> Result<Option<pb::Snapshot>> {
        within_rate(tx, viewer, limits).await?;
        let (width, height) = match request.resolution {
            Some(size) => (size.width(), size.height()),
            None => self.state.settings.api.default_snapshot_size,
        };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO render.snapshots (tenant_id, user_id, cache_key, template_version_id, template_file_id,
                 template_sha256, composition_name, frame, width, height, format, scene_data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT ON CONSTRAINT snapshots_tenant_cache_key_key DO NOTHING
             RETURNING {SNAPSHOT_COLUMNS}"
        )))
        .bind(viewer.tenant)
        .bind(viewer.user)
        .bind(request.cache_key().as_bytes().as_slice())
        .bind(request.template_version_id)
        .bind(request.template_file_id)
        .bind(request.template_sha256.as_bytes().as_slice())
        .bind(&request.composition)
        .bind(request.frame)
        .bind(i32::try_from(width).unwrap_or(i32::MAX))
        .bind(i32::try_from(height).unwrap_or(i32::MAX))
        .bind(request.format.as_db())
        .bind(request.scene_data.to_json())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: Uuid = row.try_get("id")?;
        self.queue_task(tx, viewer, limits, id, request).await?;
        Ok(Some(records::snapshot(&row)?))
    }

    /// The one-frame task of snapshot `id` (lane `snapshot`), counted for the caller's rate, and
    /// the signal for dispatchers.
    async fn queue_task(
        &self,
        tx: &mut PgTransaction<'_>,
        viewer: &Viewer,
        limits: &PlanLimits,
        id: Uuid,
        request: &SnapshotRequest,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO render.frame_jobs (tenant_id, lane, snapshot_id, priority, template_sha256, composition_name,
                 frame_start, frame_end, frame_step, max_attempts)
             VALUES ($1, 'snapshot', $2, $3, $4, $5, $6, $6, 1, $7)",
        )
        .bind(viewer.tenant)
        .bind(id)
        .bind(limits.render_priority)
        .bind(request.template_sha256.as_bytes().as_slice())
        .bind(&request.composition)
        .bind(request.frame)
        .bind(i32::try_from(self.state.settings.max_attempts).unwrap_or(1))
        .execute(&mut **tx)
        .await?;
        // Only the last hour counts: older rows of this caller go as new ones come.
        sqlx::query(
            "WITH expired AS (
                 DELETE FROM render.snapshot_tasks
                  WHERE tenant_id = $1 AND user_id = $2 AND created_at <= now() - interval '1 hour')
             INSERT INTO render.snapshot_tasks (tenant_id, user_id, snapshot_id) VALUES ($1, $2, $3)",
        )
        .bind(viewer.tenant)
        .bind(viewer.user)
        .bind(id)
        .execute(&mut **tx)
        .await?;
        sqlx::query("SELECT pg_notify('render_queue', '')").execute(&mut **tx).await?;
        Ok(())
    }

    /// `GetSnapshot` for `viewer`.
    pub(crate) async fn get_snapshot_for(
        &self,
        viewer: &Viewer,
        request: &pb::GetSnapshotRequest,
    ) -> Result<pb::Snapshot> {
        let id = validate::uuid("snapshot_id", &request.snapshot_id)?;
        let mut conn = self.state.pool.acquire().await?;
        visible_snapshot(&mut conn, viewer, id).await
    }

    /// `WatchSnapshot` for `viewer`.
    pub(crate) async fn watch_snapshot_for(
        &self,
        viewer: &Viewer,
        request: &pb::WatchSnapshotRequest,
    ) -> Result<BoxStream<pb::WatchSnapshotResponse>> {
        let id = validate::uuid("snapshot_id", &request.snapshot_id)?;
        let subscription = self.state.changes.subscribe(Topic::Snapshot(id));
        let mut watch = SnapshotWatch { api: self.clone(), viewer: *viewer, id, last: None };
        let snapshot = watch.snapshot().await?;
        let terminal = is_terminal(&snapshot);
        watch.last = Some(snapshot.clone());
        let api = &self.state.settings.api;
        let pace = Pace { min_interval: api.watch_min_interval, keepalive: api.watch_keepalive };
        let first = pb::WatchSnapshotResponse { snapshot: Some(snapshot) };
        Ok(follow::stream(watch, subscription, first, terminal, pace))
    }
}

/// RESOURCE_EXHAUSTED when the caller started as many snapshot renders in the last hour as the
/// plan allows. Callers of one subscriber are serialized, so two cannot both take the last one.
async fn within_rate(conn: &mut PgConnection, viewer: &Viewer, limits: &PlanLimits) -> Result<()> {
    let Some(max) = limits.max_snapshots_per_hour else { return Ok(()) };
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("render.snapshot_rate:{}:{}", viewer.tenant, viewer.user))
        .execute(&mut *conn)
        .await?;
    let (count, oldest): (i64, Option<OffsetDateTime>) = sqlx::query_as(
        "SELECT count(*), min(created_at) FROM render.snapshot_tasks
          WHERE tenant_id = $1 AND user_id = $2 AND created_at > now() - interval '1 hour'",
    )
    .bind(viewer.tenant)
    .bind(viewer.user)
    .fetch_one(&mut *conn)
    .await?;
    if count >= i64::from(max) {
        let next = oldest
            .map(|at| at + time::Duration::hours(1))
            .and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_else(|| "within the hour".into());
        return Err(RenderError::ResourceExhausted(format!(
            "snapshot rate: the {} plan allows {max} snapshot renders per hour; the next one is possible at {next}",
            limits.plan_code
        )));
    }
    Ok(())
}

/// Snapshot `id` of the viewer's tenant; NOT_FOUND when unknown or expired ("deleted by
/// retention" even before the sweep deletes it, [`crate::retention`]).
async fn visible_snapshot(conn: &mut PgConnection, viewer: &Viewer, id: Uuid) -> Result<pb::Snapshot> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SNAPSHOT_COLUMNS} FROM render.snapshots
          WHERE id = $1 AND tenant_id = $2 AND (expires_at IS NULL OR expires_at > now())"
    )))
    .bind(id)
    .bind(viewer.tenant)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(RenderError::NotFound("snapshot"))?;
    records::snapshot(&row)
}

fn is_terminal(snapshot: &pb::Snapshot) -> bool {
    SnapshotState::from_pb_i32(snapshot.state).is_some_and(SnapshotState::is_terminal)
}

struct SnapshotWatch {
    api: RenderApi,
    viewer: Viewer,
    id: Uuid,
    last: Option<pb::Snapshot>,
}

impl SnapshotWatch {
    async fn snapshot(&self) -> Result<pb::Snapshot> {
        let mut conn = self.api.state.pool.acquire().await?;
        visible_snapshot(&mut conn, &self.viewer, self.id).await
    }
}

impl Follow for SnapshotWatch {
    type Message = pb::WatchSnapshotResponse;

    async fn read(&mut self, force: bool) -> Result<Option<(pb::WatchSnapshotResponse, bool)>> {
        let snapshot = self.snapshot().await?;
        if !force && self.last.as_ref() == Some(&snapshot) {
            return Ok(None);
        }
        self.last = Some(snapshot.clone());
        let terminal = is_terminal(&snapshot);
        Ok(Some((pb::WatchSnapshotResponse { snapshot: Some(snapshot) }, terminal)))
    }
}
