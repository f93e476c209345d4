//! `render.nodes` as the agent streams change it: a new stream (its connection epoch), the
//! template cache mirror, crashes, pending commands, `last_seen_at`. Every write for a connected
//! node is fenced by the connection epoch its stream holds.

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::{PgPool, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::facts::NodeFacts;
use crate::error::Result;
use crate::model::text;
use crate::queue::{AdminState, NODES_CHANNEL, events, notify};

/// What a Hello says about the node, checked.
#[derive(Clone, Debug)]
pub struct HelloFacts {
    /// The machine.
    pub facts: NodeFacts,
    /// Agent version.
    pub agent_version: String,
    /// Slots offered.
    pub slots: i32,
    /// The agent's tags.
    pub tags: Vec<String>,
    /// Every template bundle in its cache: digest, size, last use.
    pub cache: Vec<([u8; 32], i64, Option<OffsetDateTime>)>,
    /// The cache's bound.
    pub cache_limit_bytes: i64,
}

/// A node's scheduling state from its `nodes.state`.
pub fn admin_state(state: &str) -> (AdminState, pb::NodeAdminState) {
    let admin = AdminState::from_db(state);
    let wire = match admin {
        AdminState::Draining => pb::NodeAdminState::Draining,
        AdminState::Quarantined => pb::NodeAdminState::Quarantined,
        AdminState::Active => pb::NodeAdminState::Active,
    };
    (admin, wire)
}

/// A new stream's hold on its node.
#[derive(Clone, Debug)]
pub struct Connected {
    /// The stream's connection epoch.
    pub connection_epoch: i64,
    /// Node name.
    pub name: String,
    /// `nodes.state`.
    pub state: String,
    /// `nodes.state_reason`.
    pub state_reason: Option<String>,
    /// Effective tags.
    pub tags: Vec<String>,
}

/// Takes the node for a new stream on replica `orchestrator_id`: increments its connection
/// epoch (older streams, on any replica, are superseded through `render_nodes`), records the
/// Hello's facts and effective tags (the agent's and its join token's), replaces its cache
/// mirror, and writes NodeOnline when it was not connected. `None` for a deleted node.
pub async fn connect(
    pool: &PgPool,
    node: Uuid,
    orchestrator_id: &str,
    hello: &HelloFacts,
) -> Result<Option<Connected>> {
    let mut tx = pool.begin().await?;
    // The replica's liveness row exists before any node names it (a node held by a replica
    // without a row is taken for a dead replica's). DO NOTHING, not a refresh: a refresh would
    // lock the row, and every Hello of a connection storm would queue behind the one before
    // (and the replica's own heartbeat behind them all); the liveness loop keeps it fresh.
    sqlx::query("INSERT INTO render.orchestrators (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(orchestrator_id)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "WITH prev AS (SELECT id, orchestrator_id FROM render.nodes WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE)
         UPDATE render.nodes n
            SET connection_epoch = n.connection_epoch + 1, orchestrator_id = $2, connected_at = now(),
                last_seen_at = now(), silent_since = NULL, state = CASE WHEN n.state = 'offline' THEN 'online' ELSE n.state END,
                hostname = $3, os = $4, os_version = $5, arch = $6, agent_version = $7, ae_versions = $8,
                has_ffmpeg = $9, cpu_cores = $10, ram_bytes = $11, gpus = $12, slots = $13,
                tags = ARRAY(SELECT t FROM (SELECT DISTINCT unnest($14::text[] || coalesce(
                           (SELECT k.tags FROM render.node_enrollment_tokens k WHERE k.used_by_node_id = n.id
                             ORDER BY k.used_at LIMIT 1), '{}')) AS t) u ORDER BY t LIMIT 64),
                cache_limit_bytes = $15, cache_used_bytes = $16
           FROM prev
          WHERE n.id = prev.id
      RETURNING n.connection_epoch, n.name, n.state, n.state_reason, n.tags, prev.orchestrator_id IS NULL AS was_offline",
    )
    .bind(node)
    .bind(orchestrator_id)
    .bind(&hello.facts.hostname)
    .bind(hello.facts.os)
    .bind(hello.facts.os_version.as_deref())
    .bind(hello.facts.arch)
    .bind(&hello.agent_version)
    .bind(&hello.facts.ae_versions)
    .bind(hello.facts.has_ffmpeg)
    .bind(hello.facts.cpu_cores)
    .bind(hello.facts.ram_bytes)
    .bind(&hello.facts.gpus)
    .bind(hello.slots)
    .bind(&hello.tags)
    .bind(hello.cache_limit_bytes)
    .bind(hello.cache.iter().map(|(_, size, _)| *size).sum::<i64>())
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let connected = Connected {
        connection_epoch: row.try_get("connection_epoch")?,
        name: row.try_get("name")?,
        state: row.try_get("state")?,
        state_reason: row.try_get("state_reason")?,
        tags: row.try_get("tags")?,
    };
    let was_offline: bool = row.try_get("was_offline")?;

    let digests: Vec<Vec<u8>> = hello.cache.iter().map(|(d, _, _)| d.to_vec()).collect();
    let sizes: Vec<i64> = hello.cache.iter().map(|(_, s, _)| *s).collect();
    let used: Vec<Option<OffsetDateTime>> = hello.cache.iter().map(|(_, _, u)| *u).collect();
    sqlx::query("DELETE FROM render.node_template_cache WHERE node_id = $1 AND NOT (template_sha256 = ANY($2))")
        .bind(node)
        .bind(&digests)
        .execute(&mut *tx)
        .await?;
    if !digests.is_empty() {
        sqlx::query(
            "INSERT INTO render.node_template_cache (node_id, template_sha256, size_bytes, last_used_at)
             SELECT $1, x.d, x.s, coalesce(x.u, now()) FROM unnest($2::bytea[], $3::bigint[], $4::timestamptz[]) AS x(d, s, u)
                 ON CONFLICT (node_id, template_sha256)
                 DO UPDATE SET size_bytes = EXCLUDED.size_bytes, last_used_at = EXCLUDED.last_used_at",
        )
        .bind(node)
        .bind(&digests)
        .bind(&sizes)
        .bind(&used)
        .execute(&mut *tx)
        .await?;
    }
    if was_offline {
        let (_, admin) = admin_state(&connected.state);
        events::node_online(&mut tx, node, &connected.name, &hello.agent_version, admin).await?;
    }
    // Tells a replica holding an older stream of this node to end it.
    notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    tx.commit().await?;
    Ok(Some(connected))
}

/// Applies cache changes of a stream still holding `connection_epoch`.
pub async fn apply_cache_changes(
    pool: &PgPool,
    node: Uuid,
    connection_epoch: i64,
    added: &[([u8; 32], i64)],
    removed: &[[u8; 32]],
    used_bytes: i64,
) -> Result<bool> {
    let mut tx = pool.begin().await?;
    let held: Option<i64> = sqlx::query_scalar(
        "UPDATE render.nodes SET cache_used_bytes = $3 WHERE id = $1 AND connection_epoch = $2 RETURNING connection_epoch",
    )
    .bind(node)
    .bind(connection_epoch)
    .bind(used_bytes)
    .fetch_optional(&mut *tx)
    .await?;
    if held.is_none() {
        return Ok(false);
    }
    let removed: Vec<Vec<u8>> = removed.iter().map(|d| d.to_vec()).collect();
    sqlx::query("DELETE FROM render.node_template_cache WHERE node_id = $1 AND template_sha256 = ANY($2)")
        .bind(node)
        .bind(&removed)
        .execute(&mut *tx)
        .await?;
    if !added.is_empty() {
        let digests: Vec<Vec<u8>> = added.iter().map(|(d, _)| d.to_vec()).collect();
        let sizes: Vec<i64> = added.iter().map(|(_, s)| *s).collect();
        sqlx::query(
            "INSERT INTO render.node_template_cache (node_id, template_sha256, size_bytes)
             SELECT $1, x.d, x.s FROM unnest($2::bytea[], $3::bigint[]) AS x(d, s)
                 ON CONFLICT (node_id, template_sha256) DO UPDATE SET size_bytes = EXCLUDED.size_bytes, last_used_at = now()",
        )
        .bind(node)
        .bind(&digests)
        .bind(&sizes)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// A crash report's row kind.
fn crash_kind(kind: pb::CrashKind) -> &'static str {
    match kind {
        pb::CrashKind::AeCrash => "ae_crash",
        pb::CrashKind::AeHang => "ae_hang",
        pb::CrashKind::AgentCrash => "agent_crash",
        pb::CrashKind::OutOfMemory => "out_of_memory",
        pb::CrashKind::DiskFull => "disk_full",
        pb::CrashKind::OsCrash => "os_crash",
        pb::CrashKind::Other | pb::CrashKind::Unspecified => "other",
    }
}

/// Records a crash (deduplicated by its id). It names its task only when the task exists;
/// a stale epoch does not keep a crash from being recorded (it is a fact about the node).
pub async fn record_crash(pool: &PgPool, node: Uuid, crash_id: Uuid, report: &agent_pb::CrashReport) -> Result<()> {
    let task = Uuid::try_parse(&report.task_id).ok();
    let file = Uuid::try_parse(&report.crash_report_file_id).ok();
    let occurred = report
        .occurred_at
        .as_ref()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    let details = serde_json::json!({
        "process_name": text::head(&report.process_name, 256),
        "report_text": text::head(&report.report_text, 256 * 1024),
        "lease_epoch": report.lease_epoch,
    });
    let log_tail = text::tail(&report.log_tail, 65_536);
    sqlx::query(
        "INSERT INTO render.node_crashes
                (id, node_id, occurred_at, kind, job_id, frame_job_id, ae_version, exit_code, signal, message,
                 log_tail, crash_report_file_id, details)
         SELECT $1, $2, $3, $4, f.job_id, f.id, $6, $7, $8, $9, $10, $11, $12
           FROM (SELECT NULL::uuid AS none) z
           LEFT JOIN render.frame_jobs f ON f.id = $5
             ON CONFLICT (id) DO NOTHING",
    )
    .bind(crash_id)
    .bind(node)
    .bind(occurred)
    .bind(crash_kind(report.kind()))
    .bind(task)
    .bind(Some(text::head(&report.ae_version, 32)).filter(|v| !v.is_empty()))
    .bind(report.exit_code)
    .bind(report.signal)
    .bind(Some(text::head(&report.message, 500)).filter(|m| !m.is_empty()))
    .bind(Some(log_tail).filter(|t| !t.is_empty()))
    .bind(file)
    .bind(details)
    .execute(pool)
    .await?;
    Ok(())
}

/// The node row as a resync sees it.
#[derive(Clone, Debug)]
pub struct NodeRow {
    /// Current connection epoch.
    pub connection_epoch: i64,
    /// `nodes.state`.
    pub state: String,
    /// `nodes.state_reason`.
    pub state_reason: Option<String>,
    /// Whether it was deleted.
    pub deleted: bool,
}

/// The node's row, if it exists.
pub async fn node_row(pool: &PgPool, node: Uuid) -> Result<Option<NodeRow>> {
    let row: Option<(i64, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT connection_epoch, state, state_reason, deleted_at IS NOT NULL FROM render.nodes WHERE id = $1",
    )
    .bind(node)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(connection_epoch, state, state_reason, deleted)| NodeRow {
        connection_epoch,
        state,
        state_reason,
        deleted,
    }))
}

/// A command queued for a node.
#[derive(Clone, Debug)]
pub struct Command {
    /// Row id.
    pub id: i64,
    /// What to send.
    pub payload: agent_pb::session_response::Payload,
}

/// The node's undelivered commands, oldest first (unknown kinds are skipped).
pub async fn pending_commands(pool: &PgPool, node: Uuid) -> Result<Vec<Command>> {
    let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
        "SELECT id, kind, payload FROM render.node_commands WHERE node_id = $1 AND delivered_at IS NULL ORDER BY id",
    )
    .bind(node)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, kind, payload)| {
            let text = |key: &str| payload.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
            match kind.as_str() {
                "evict_template" => Some(Command {
                    id,
                    payload: agent_pb::session_response::Payload::EvictTemplate(agent_pb::EvictTemplate {
                        sha256: text("sha256"),
                        reason: text("reason"),
                    }),
                }),
                _ => None,
            }
        })
        .collect())
}

/// Marks commands delivered.
pub async fn mark_delivered(pool: &PgPool, ids: &[i64]) -> Result<()> {
    if !ids.is_empty() {
        sqlx::query("UPDATE render.node_commands SET delivered_at = now() WHERE id = ANY($1) AND delivered_at IS NULL")
            .bind(ids)
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The node of stream `connection_epoch` missed its heartbeats: it is LOST from now on (until
/// [`heard_again`]), last heard at `last_heard`.
pub async fn mark_silent(pool: &PgPool, node: Uuid, connection_epoch: i64, last_heard: OffsetDateTime) -> Result<()> {
    sqlx::query(
        "UPDATE render.nodes SET silent_since = now(), last_seen_at = $3
          WHERE id = $1 AND connection_epoch = $2 AND silent_since IS NULL",
    )
    .bind(node)
    .bind(connection_epoch)
    .bind(last_heard)
    .execute(pool)
    .await?;
    Ok(())
}

/// The silent node of stream `connection_epoch` spoke again.
pub async fn heard_again(pool: &PgPool, node: Uuid, connection_epoch: i64) -> Result<()> {
    sqlx::query(
        "UPDATE render.nodes SET silent_since = NULL, last_seen_at = now()
          WHERE id = $1 AND connection_epoch = $2 AND silent_since IS NOT NULL",
    )
    .bind(node)
    .bind(connection_epoch)
    .execute(pool)
    .await?;
    Ok(())
}

/// The stream `connection_epoch` of `node` ended now: the last time the node was heard.
pub async fn stream_ended(pool: &PgPool, node: Uuid, connection_epoch: i64) -> Result<()> {
    sqlx::query("UPDATE render.nodes SET last_seen_at = now() WHERE id = $1 AND connection_epoch = $2")
        .bind(node)
        .bind(connection_epoch)
        .execute(pool)
        .await?;
    Ok(())
}
