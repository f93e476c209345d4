//! A `render.nodes` row as the API shows it (`flatrender.render.v1.Node`).
//!
//! Connectivity is not a column: ONLINE while a live replica (its `render.orchestrators` row
//! fresh) holds the stream and has not marked the node silent, LOST when it has or when that
//! replica is dead, NEW before the first stream, OFFLINE otherwise and always once deleted.
//! Every replica answers alike from the rows. While ONLINE, the holder's heartbeat stands for
//! `last_seen_at` (nothing is written per heartbeat).

use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::crashes;
use crate::error::Result;
use crate::queue::Lane;
use crate::queue::wire::{id_text, timestamp};
use crate::settings::Settings;

/// The node columns with the derived `conn_state`, `admin` (both as protobuf numbers),
/// `cached_template_count` and `recent_crashes`, from `render.nodes n`; wrap it as a subquery
/// to filter on them.
pub fn select(settings: &Settings) -> String {
    let dead_after = settings.replica_dead_after().as_secs_f64();
    format!(
        "SELECT n.id, n.name, n.hostname, n.os, n.os_version, n.arch, n.agent_version, n.ae_versions, n.has_ffmpeg,
                n.cpu_cores, n.ram_bytes, n.gpus, n.slots, n.tags, n.cache_used_bytes, n.state, n.state_reason,
                n.quarantined_at, n.quarantine_cause, n.connection_epoch, n.connected_at, n.orchestrator_id,
                CASE WHEN n.silent_since IS NULL THEN greatest(n.last_seen_at, holder.heartbeat_at)
                     ELSE n.last_seen_at END AS last_seen_at,
                n.deleted_at, n.created_at, n.updated_at,
                CASE WHEN n.deleted_at IS NOT NULL THEN {offline}
                     WHEN n.orchestrator_id IS NOT NULL THEN
                          CASE WHEN n.silent_since IS NULL AND holder.id IS NOT NULL THEN {online} ELSE {lost} END
                     WHEN n.connected_at IS NULL THEN {new}
                     ELSE {offline} END AS conn_state,
                CASE n.state WHEN 'draining' THEN {draining} WHEN 'quarantined' THEN {quarantined} ELSE {active} END
                  AS admin,
                (SELECT count(*) FROM render.node_template_cache c WHERE c.node_id = n.id) AS cached_template_count,
                (SELECT count(*) FROM render.node_crashes k WHERE k.node_id = n.id AND {recent}) AS recent_crashes
           FROM render.nodes n
           LEFT JOIN render.orchestrators holder
                  ON holder.id = n.orchestrator_id AND holder.heartbeat_at >= now() - make_interval(secs => {dead_after})",
        online = pb::NodeState::Online as i32,
        lost = pb::NodeState::Lost as i32,
        offline = pb::NodeState::Offline as i32,
        new = pb::NodeState::New as i32,
        active = pb::NodeAdminState::Active as i32,
        draining = pb::NodeAdminState::Draining as i32,
        quarantined = pb::NodeAdminState::Quarantined as i32,
        recent = crashes::recent_filter("k", settings),
    )
}

fn gpus(value: &serde_json::Value) -> Vec<pb::GpuInfo> {
    let text =
        |gpu: &serde_json::Value, key: &str| gpu.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    value
        .as_array()
        .map(|gpus| {
            gpus.iter()
                .enumerate()
                .map(|(i, gpu)| pb::GpuInfo {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    name: text(gpu, "name"),
                    vendor: String::new(),
                    memory_bytes: gpu.get("memory_bytes").and_then(|v| v.as_u64()).unwrap_or(0),
                    driver_version: text(gpu, "driver"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn os(text: &str) -> pb::OperatingSystem {
    match text {
        "windows" => pb::OperatingSystem::Windows,
        "macos" => pb::OperatingSystem::Macos,
        "linux" => pb::OperatingSystem::Linux,
        _ => pb::OperatingSystem::Unspecified,
    }
}

/// The node of a row read with [`select`], without tasks and health.
pub fn node_of(row: &PgRow) -> Result<pb::Node> {
    let ts = |name: &str| -> sqlx::Result<Option<prost_types::Timestamp>> {
        Ok(row.try_get::<Option<OffsetDateTime>, _>(name)?.map(timestamp))
    };
    let admin: i32 = row.try_get("admin")?;
    let has_ffmpeg: bool = row.try_get("has_ffmpeg")?;
    let ae_versions: Vec<String> = row.try_get("ae_versions")?;
    let facts = pb::MachineFacts {
        hostname: row.try_get("hostname")?,
        os: os(row.try_get::<&str, _>("os")?) as i32,
        os_version: row.try_get::<Option<String>, _>("os_version")?.unwrap_or_default(),
        arch: row.try_get("arch")?,
        cpu_model: String::new(),
        cpu_cores: u32::try_from(row.try_get::<i32, _>("cpu_cores")?).unwrap_or(0),
        ram_bytes: u64::try_from(row.try_get::<i64, _>("ram_bytes")?).unwrap_or(0),
        gpus: gpus(&row.try_get("gpus")?),
        ae_installs: ae_versions.into_iter().map(|version| pb::AeInstall { version, ..Default::default() }).collect(),
        // Only presence is stored.
        ffmpeg_version: if has_ffmpeg { "ffmpeg".into() } else { String::new() },
        locale: String::new(),
        simulated: false,
    };
    let quarantined = admin == pb::NodeAdminState::Quarantined as i32;
    Ok(pb::Node {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        name: row.try_get("name")?,
        state: row.try_get("conn_state")?,
        admin_state: admin,
        quarantined_at: if quarantined { ts("quarantined_at")? } else { None },
        admin_reason: if admin == pb::NodeAdminState::Active as i32 {
            String::new()
        } else {
            row.try_get::<Option<String>, _>("state_reason")?.unwrap_or_default()
        },
        agent_version: row.try_get("agent_version")?,
        facts: Some(facts),
        slots: u32::try_from(row.try_get::<i32, _>("slots")?).unwrap_or(0),
        tags: row.try_get("tags")?,
        tasks: Vec::new(),
        latest_health: None,
        cached_template_count: u32::try_from(row.try_get::<i64, _>("cached_template_count")?).unwrap_or(u32::MAX),
        cache_used_bytes: u64::try_from(row.try_get::<i64, _>("cache_used_bytes")?).unwrap_or(0),
        recent_crashes: u32::try_from(row.try_get::<i64, _>("recent_crashes")?).unwrap_or(u32::MAX),
        orchestrator_id: row.try_get::<Option<String>, _>("orchestrator_id")?.unwrap_or_default(),
        connection_epoch: u64::try_from(row.try_get::<i64, _>("connection_epoch")?).unwrap_or(0),
        enrolled_at: ts("created_at")?,
        connected_at: ts("connected_at")?,
        last_seen_at: ts("last_seen_at")?,
        updated_at: ts("updated_at")?,
        deleted_at: ts("deleted_at")?,
        quarantine_cause: if quarantined {
            quarantine_cause(row.try_get::<Option<&str>, _>("quarantine_cause")?) as i32
        } else {
            pb::QuarantineCause::Unspecified as i32
        },
    })
}

/// The protobuf form of `nodes.quarantine_cause`.
fn quarantine_cause(stored: Option<&str>) -> pb::QuarantineCause {
    match stored {
        Some("crashes") => pb::QuarantineCause::Crashes,
        Some("operator") => pb::QuarantineCause::Operator,
        Some("probe_failed") => pb::QuarantineCause::ProbeFailed,
        _ => pb::QuarantineCause::Unspecified,
    }
}

/// The node `id` (deleted ones included), without tasks and health; `None` when unknown.
pub async fn load<'e>(db: impl PgExecutor<'e>, settings: &Settings, id: Uuid) -> Result<Option<pb::Node>> {
    let sql = format!("{} WHERE n.id = $1", select(settings));
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(db).await?;
    row.as_ref().map(node_of).transpose()
}

/// The tasks leased to `node` now, oldest lease first.
pub async fn tasks<'e>(db: impl PgExecutor<'e>, node: Uuid) -> Result<Vec<pb::NodeTask>> {
    type Columns = (
        Uuid,
        String,
        Option<Uuid>,
        Option<Uuid>,
        Uuid,
        i64,
        Option<OffsetDateTime>,
        Option<String>,
        Option<f32>,
        Option<OffsetDateTime>,
    );
    let rows: Vec<Columns> = sqlx::query_as(
        "SELECT id, lane, job_id, snapshot_id, tenant_id, lease_epoch, lease_expires_at, phase, percent, leased_at
           FROM render.frame_jobs WHERE node_id = $1 AND dispatch_state = 'leased'
          ORDER BY leased_at, id",
    )
    .bind(node)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, lane, job, snapshot, tenant, epoch, expires, phase, percent, leased)| pb::NodeTask {
            task_id: id.to_string(),
            kind: Lane::from_db(&lane).map_or(0, |lane| lane.kind().to_pb_i32()),
            render_id: id_text(job),
            snapshot_id: id_text(snapshot),
            tenant_id: tenant.to_string(),
            lease_epoch: u64::try_from(epoch).unwrap_or(0),
            lease_expires_at: expires.map(timestamp),
            phase: phase
                .and_then(|p| pb::TaskPhase::from_str_name(&format!("TASK_PHASE_{}", p.to_ascii_uppercase())))
                .unwrap_or(pb::TaskPhase::Unspecified) as i32,
            percent: percent.map_or(0.0, f64::from),
            assigned_at: leased.map(timestamp),
        })
        .collect())
}
