//! Health: the latest sample of a node (this replica's memory when it holds the stream, else
//! the newest stored row), ListNodeHealth over `render.node_health_logs`, and the writer that
//! stores at most one sample per node per `health_log_interval` (the first one of a stream at
//! once), not every heartbeat.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use flatrender_kit::shutdown::ShutdownSignal;
use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::listing::exists;
use super::parse_id;
use crate::agents::Agents;
use crate::api::page;
use crate::error::{RenderError, Result};
use crate::queue::wire::timestamp;

/// Window of ListNodeHealth when the request sets no start.
const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Longest window of ListNodeHealth.
const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);
/// An agent's sample time further than this from the orchestrator's clock is replaced by it.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

const STORED: &str = "recorded_at, cpu_percent, load_1m, memory_used_bytes, memory_total_bytes, \
                      work_disk_free_bytes, cache_disk_free_bytes, gpus, ae_process_count, ae_memory_bytes, running_tasks";

fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn gpus_of(value: &serde_json::Value) -> Vec<pb::GpuUsage> {
    let Some(gpus) = value.as_array() else { return Vec::new() };
    gpus.iter()
        .map(|gpu| pb::GpuUsage {
            index: gpu.get("index").and_then(|v| v.as_u64()).and_then(|v| u32::try_from(v).ok()).unwrap_or(0),
            name: gpu.get("name").and_then(|v| v.as_str()).unwrap_or_default().to_owned(),
            utilization_percent: gpu.get("utilization_percent").and_then(|v| v.as_f64()),
            memory_used_bytes: gpu.get("memory_used_bytes").and_then(|v| v.as_u64()).unwrap_or(0),
            memory_total_bytes: gpu.get("memory_total_bytes").and_then(|v| v.as_u64()).unwrap_or(0),
            temperature_celsius: gpu.get("temperature_celsius").and_then(|v| v.as_f64()),
        })
        .collect()
}

/// A stored row (columns [`STORED`]) as a sample with the stored fields only.
fn sample_of(row: &PgRow) -> Result<pb::NodeHealthSample> {
    let disk = |role: pb::DiskRole, column: &str| -> sqlx::Result<Option<pb::DiskUsage>> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(|free| pb::DiskUsage {
            role: role as i32,
            free_bytes: non_negative(free),
            ..Default::default()
        }))
    };
    let disks =
        [disk(pb::DiskRole::Work, "work_disk_free_bytes")?, disk(pb::DiskRole::Cache, "cache_disk_free_bytes")?];
    Ok(pb::NodeHealthSample {
        recorded_at: Some(timestamp(row.try_get("recorded_at")?)),
        cpu_percent: f64::from(row.try_get::<f32, _>("cpu_percent")?),
        memory_total_bytes: non_negative(row.try_get("memory_total_bytes")?),
        memory_used_bytes: non_negative(row.try_get("memory_used_bytes")?),
        disks: disks.into_iter().flatten().collect(),
        load_1m: row.try_get::<Option<f32>, _>("load_1m")?.map(f64::from),
        gpus: gpus_of(&row.try_get("gpus")?),
        running_tasks: u32::try_from(row.try_get::<i32, _>("running_tasks")?).unwrap_or(0),
        ae_process_count: u32::try_from(row.try_get::<i32, _>("ae_process_count")?).unwrap_or(0),
        ae_memory_bytes: non_negative(row.try_get("ae_memory_bytes")?),
        ..Default::default()
    })
}

/// The latest sample of each of `nodes` that has one.
pub async fn latest(agents: &Agents, nodes: &[Uuid]) -> Result<HashMap<Uuid, pb::NodeHealthSample>> {
    let mut found = HashMap::new();
    for id in nodes {
        if let Some(sample) = agents.registry.get(*id).and_then(|conn| conn.view().health.clone()) {
            found.insert(*id, sample);
        }
    }
    let rest: Vec<Uuid> = nodes.iter().filter(|id| !found.contains_key(id)).copied().collect();
    if rest.is_empty() {
        return Ok(found);
    }
    let sql = format!(
        "SELECT DISTINCT ON (node_id) node_id, {STORED} FROM render.node_health_logs
          WHERE node_id = ANY($1) ORDER BY node_id, recorded_at DESC"
    );
    for row in sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&rest).fetch_all(&agents.state.pool).await? {
        found.insert(row.try_get("node_id")?, sample_of(&row)?);
    }
    Ok(found)
}

fn span(field: &str, value: &prost_types::Duration) -> Result<Duration> {
    u64::try_from(value.seconds)
        .ok()
        .filter(|_| (0..1_000_000_000).contains(&value.nanos))
        .map(|s| Duration::new(s, value.nanos as u32))
        .filter(|d| !d.is_zero())
        .ok_or_else(|| RenderError::invalid(field, "must be positive"))
}

/// ListNodeHealth: stored samples (or bucket averages), oldest first.
pub async fn list(agents: &Agents, request: &pb::ListNodeHealthRequest) -> Result<pb::ListNodeHealthResponse> {
    let (pool, settings) = (&agents.state.pool, &agents.state.settings);
    let id = parse_id("node_id", &request.node_id)?;
    let (start, end) = page::time_range("window", request.window.as_ref())?;
    let end = end.unwrap_or_else(OffsetDateTime::now_utc);
    let start = start.unwrap_or(end - DEFAULT_WINDOW);
    if end - start > MAX_WINDOW {
        return Err(RenderError::invalid("window", "may span at most 31 days"));
    }
    let bucket = request.bucket.as_ref().map(|b| span("bucket", b)).transpose()?;
    if let Some(bucket) = bucket
        && bucket < settings.health_log_interval
    {
        return Err(RenderError::invalid(
            "bucket",
            format!("must be at least the stored interval of {} s", settings.health_log_interval.as_secs_f64()),
        ));
    }
    let limit = page::size(request.page.as_ref())?;
    let print = page::fingerprint(&[&id as &dyn std::fmt::Debug, &request.window, &bucket]);
    // (recorded_at or bucket start in µs, row id or 0).
    let after: Option<(i64, i64)> = page::decode(&print, page::token(request.page.as_ref()))?;
    if !exists(pool, id).await? {
        return Err(RenderError::NotFound("node"));
    }
    let after_time = after
        .map(|(micros, _)| OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000))
        .transpose()
        .map_err(|_| RenderError::invalid("page.page_token", "is not a page token of this listing"))?;
    let sql = match bucket {
        None => format!(
            "SELECT id, {STORED} FROM render.node_health_logs
              WHERE node_id = $1 AND recorded_at >= $2 AND recorded_at <= $3
                AND ($4::timestamptz IS NULL OR (recorded_at, id) > ($4, $5))
              ORDER BY recorded_at, id LIMIT $6"
        ),
        Some(bucket) => format!(
            "SELECT * FROM (
                SELECT 0::bigint AS id,
                       date_bin(make_interval(secs => {secs}), recorded_at, 'epoch'::timestamptz) AS recorded_at,
                       avg(cpu_percent)::real AS cpu_percent, avg(load_1m)::real AS load_1m,
                       max(memory_used_bytes) AS memory_used_bytes, max(memory_total_bytes) AS memory_total_bytes,
                       min(work_disk_free_bytes) AS work_disk_free_bytes,
                       min(cache_disk_free_bytes) AS cache_disk_free_bytes, '[]'::jsonb AS gpus,
                       round(avg(ae_process_count))::int AS ae_process_count,
                       max(ae_memory_bytes) AS ae_memory_bytes, round(avg(running_tasks))::int AS running_tasks
                  FROM render.node_health_logs
                 WHERE node_id = $1 AND recorded_at >= $2 AND recorded_at <= $3
                 GROUP BY 2) b
              WHERE ($4::timestamptz IS NULL OR (recorded_at, id) > ($4, $5))
              ORDER BY recorded_at LIMIT $6",
            secs = bucket.as_secs_f64()
        ),
    };
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(start)
        .bind(end)
        .bind(after_time)
        .bind(after.map_or(0, |(_, row)| row))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let mut keyed = Vec::with_capacity(rows.len());
    for row in &rows {
        let at: OffsetDateTime = row.try_get("recorded_at")?;
        let micros = i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
        keyed.push(((micros, row.try_get::<i64, _>("id")?), sample_of(row)?));
    }
    let next_page_token = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
    Ok(pb::ListNodeHealthResponse {
        samples: keyed.into_iter().map(|(_, s)| s).collect(),
        page: Some(common_pb::PageResponse { next_page_token }),
    })
}

/// A sample as the columns of `node_health_logs`, clamped to what they accept (the agent's
/// numbers are not trusted to keep the table's CHECKs).
#[derive(Clone, Debug, PartialEq)]
pub struct HealthRow {
    /// When the sample was taken (the agent's clock unless it is far off).
    pub recorded_at: OffsetDateTime,
    /// 0..=100.
    pub cpu_percent: f32,
    /// Non-negative or unset.
    pub load_1m: Option<f32>,
    /// At most the total.
    pub memory_used_bytes: i64,
    /// Physical memory.
    pub memory_total_bytes: i64,
    /// Free bytes of the work disk.
    pub work_disk_free_bytes: Option<i64>,
    /// Free bytes of the cache disk.
    pub cache_disk_free_bytes: Option<i64>,
    /// GPU load as JSON.
    pub gpus: serde_json::Value,
    /// After Effects processes.
    pub ae_process_count: i32,
    /// Their memory.
    pub ae_memory_bytes: i64,
    /// Tasks running.
    pub running_tasks: i32,
}

fn bytes(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn count(value: usize) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

impl HealthRow {
    /// The row of a Health message received at `now`.
    pub fn of(health: &agent_pb::Health, now: OffsetDateTime) -> Self {
        let sample = health.sample.clone().unwrap_or_default();
        let recorded_at = sample
            .recorded_at
            .as_ref()
            .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
            .filter(|at| (*at - now).unsigned_abs() <= MAX_CLOCK_SKEW)
            .unwrap_or(now);
        let cpu = if sample.cpu_percent.is_finite() { sample.cpu_percent.clamp(0.0, 100.0) } else { 0.0 };
        let free = |role: pb::DiskRole| sample.disks.iter().find(|d| d.role() == role).map(|d| bytes(d.free_bytes));
        let total = bytes(sample.memory_total_bytes);
        let gpus: Vec<serde_json::Value> = sample
            .gpus
            .iter()
            .take(64)
            .map(|g| {
                serde_json::json!({
                    "index": g.index,
                    "name": crate::model::text::head(&g.name, 200),
                    "utilization_percent": g.utilization_percent.filter(|u| u.is_finite()),
                    "memory_used_bytes": g.memory_used_bytes,
                    "memory_total_bytes": g.memory_total_bytes,
                    "temperature_celsius": g.temperature_celsius.filter(|t| t.is_finite()),
                })
            })
            .collect();
        let ae_memory = if sample.ae_memory_bytes > 0 {
            sample.ae_memory_bytes
        } else {
            sample.ae_processes.iter().map(|p| p.resident_bytes).fold(0u64, u64::saturating_add)
        };
        Self {
            recorded_at,
            cpu_percent: cpu as f32,
            load_1m: sample.load_1m.filter(|l| l.is_finite() && *l >= 0.0).map(|l| l as f32),
            memory_used_bytes: bytes(sample.memory_used_bytes).min(total),
            memory_total_bytes: total,
            work_disk_free_bytes: free(pb::DiskRole::Work),
            cache_disk_free_bytes: free(pb::DiskRole::Cache),
            gpus: serde_json::Value::Array(gpus),
            ae_process_count: count((sample.ae_process_count as usize).max(sample.ae_processes.len())),
            ae_memory_bytes: bytes(ae_memory),
            running_tasks: count(health.tasks.len().max(sample.running_tasks as usize)),
        }
    }
}

/// Samples due for `node_health_logs`, written together by [`run_writer`]: one INSERT per flush
/// for every node of this replica, so thousands of agents cost one statement every few
/// seconds, not one per node.
#[derive(Debug, Default)]
pub struct HealthLog {
    pending: Mutex<VecDeque<(Uuid, HealthRow)>>,
}

/// Samples kept while the database cannot take them; older ones are dropped beyond this.
const MAX_PENDING: usize = 100_000;

impl HealthLog {
    fn pending(&self) -> MutexGuard<'_, VecDeque<(Uuid, HealthRow)>> {
        // Every update is one push or one take: a panic elsewhere cannot leave it half-done.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a sample of `node` for the next flush.
    pub fn push(&self, node: Uuid, row: HealthRow) {
        let mut pending = self.pending();
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
        }
        pending.push_back((node, row));
    }

    fn take(&self) -> Vec<(Uuid, HealthRow)> {
        std::mem::take(&mut *self.pending()).into()
    }

    /// Puts back samples a failed flush could not store (newest kept when over the bound).
    fn restore(&self, rows: Vec<(Uuid, HealthRow)>) {
        let mut pending = self.pending();
        let mut restored: VecDeque<_> = rows.into();
        restored.append(&mut pending);
        let excess = restored.len().saturating_sub(MAX_PENDING);
        restored.drain(..excess);
        *pending = restored;
    }

    /// Stores what is queued; on failure keeps it for the next flush.
    pub async fn flush(&self, pool: &PgPool) {
        let rows = self.take();
        if rows.is_empty() {
            return;
        }
        if let Err(e) = record_many(pool, &rows).await {
            tracing::warn!(samples = rows.len(), error = %e, "cannot store health samples; retrying at the next flush");
            self.restore(rows);
        }
    }
}

/// Flushes `agents`' health log every `health_flush_interval` until `shutdown`, and once more
/// then.
pub async fn run_writer(agents: Arc<Agents>, shutdown: ShutdownSignal) {
    let agents = &agents;
    shutdown
        .every(Duration::ZERO, agents.state.settings.health_flush_interval, || {
            agents.health_log.flush(&agents.state.pool)
        })
        .await;
    agents.health_log.flush(&agents.state.pool).await;
}

/// Stores samples in one statement.
async fn record_many(pool: &PgPool, rows: &[(Uuid, HealthRow)]) -> Result<()> {
    let column = |f: fn(&(Uuid, HealthRow)) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO render.node_health_logs
                (recorded_at, node_id, cpu_percent, load_1m, memory_used_bytes, memory_total_bytes,
                 work_disk_free_bytes, cache_disk_free_bytes, gpus, ae_process_count, ae_memory_bytes, running_tasks)
         SELECT * FROM unnest($1::timestamptz[], $2::uuid[], $3::real[], $4::real[], $5::bigint[], $6::bigint[],
                              $7::bigint[], $8::bigint[], $9::jsonb[], $10::int[], $11::bigint[], $12::int[])",
    )
    .bind(rows.iter().map(|(_, r)| r.recorded_at).collect::<Vec<_>>())
    .bind(rows.iter().map(|(node, _)| *node).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.cpu_percent).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.load_1m).collect::<Vec<_>>())
    .bind(column(|(_, r)| r.memory_used_bytes))
    .bind(column(|(_, r)| r.memory_total_bytes))
    .bind(rows.iter().map(|(_, r)| r.work_disk_free_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.cache_disk_free_bytes).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.gpus.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.ae_process_count).collect::<Vec<_>>())
    .bind(column(|(_, r)| r.ae_memory_bytes))
    .bind(rows.iter().map(|(_, r)| r.running_tasks).collect::<Vec<_>>())
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_flush_keeps_its_samples_before_newer_ones() {
        let log = HealthLog::default();
        let row = HealthRow::of(&agent_pb::Health::default(), OffsetDateTime::now_utc());
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        log.push(a, row.clone());
        log.push(b, row.clone());
        let taken = log.take();
        log.push(c, row);
        log.restore(taken);
        let order: Vec<Uuid> = log.take().into_iter().map(|(node, _)| node).collect();
        assert_eq!(order, [a, b, c]);
        assert!(log.take().is_empty());
    }

    #[test]
    fn rows_keep_the_tables_checks() {
        let now = OffsetDateTime::now_utc();
        let health = agent_pb::Health {
            sample: Some(pb::NodeHealthSample {
                recorded_at: Some(timestamp(now - Duration::from_secs(3600))),
                cpu_percent: f64::NAN,
                memory_total_bytes: 100,
                memory_used_bytes: 500,
                load_1m: Some(-1.0),
                disks: vec![pb::DiskUsage {
                    role: pb::DiskRole::Cache as i32,
                    free_bytes: u64::MAX,
                    ..Default::default()
                }],
                ae_processes: vec![pb::AeProcess { resident_bytes: 7, ..Default::default() }],
                ..Default::default()
            }),
            tasks: vec![agent_pb::HeldTask::default()],
            draining: false,
        };
        let row = HealthRow::of(&health, now);
        assert_eq!(row.recorded_at, now, "a far-off agent clock is replaced");
        assert_eq!((row.cpu_percent, row.load_1m), (0.0, None));
        assert_eq!((row.memory_used_bytes, row.memory_total_bytes), (100, 100));
        assert_eq!((row.work_disk_free_bytes, row.cache_disk_free_bytes), (None, Some(i64::MAX)));
        assert_eq!((row.ae_process_count, row.ae_memory_bytes, row.running_tasks), (1, 7, 1));
    }
}
