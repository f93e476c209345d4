//! Crashes (`render.node_crashes`): ListCrashes, GetCrash, and auto-quarantine — a node with
//! `quarantine_crashes` crashes within `quarantine_window` is quarantined (NodeQuarantined,
//! cause CRASHES), and its first probe render is due `probes.after` later
//! ([`crate::queue::probes`]). ReleaseNode (or a successful probe) resets the window by marking
//! the window's crashes (`details.window_reset_at`), which keeps them for history but no longer
//! counts them.

use flatrender_proto::flatrender::common::v1 as common_pb;
use flatrender_proto::flatrender::render::v1 as pb;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, PgPool, PgTransaction, Row as _};
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{self, Quarantine};
use super::{parse_id, parse_optional_id};
use crate::api::page;
use crate::error::{RenderError, Result};
use crate::queue::wire::{id_text, timestamp};
use crate::queue::{NODES_CHANNEL, notify};
use crate::settings::Settings;

/// The SQL condition "crash `alias` counts toward quarantine now" (same node is the caller's).
pub fn recent_filter(alias: &str, settings: &Settings) -> String {
    format!(
        "{alias}.occurred_at > now() - make_interval(secs => {}) AND {alias}.details->>'window_reset_at' IS NULL",
        settings.quarantine_window.as_secs_f64()
    )
}

/// Marks the crashes of `node` in the window as no longer counting (ReleaseNode).
pub async fn reset_window(tx: &mut PgTransaction<'_>, settings: &Settings, node: Uuid) -> Result<()> {
    let sql = format!(
        "UPDATE render.node_crashes k SET details = k.details || jsonb_build_object('window_reset_at', now())
          WHERE k.node_id = $1 AND {}",
        recent_filter("k", settings)
    );
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(node).execute(&mut **tx).await?;
    Ok(())
}

/// Crashes of `node` counting toward quarantine now.
pub async fn recent<'e>(db: impl PgExecutor<'e>, settings: &Settings, node: Uuid) -> Result<i64> {
    let sql =
        format!("SELECT count(*) FROM render.node_crashes k WHERE k.node_id = $1 AND {}", recent_filter("k", settings));
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(node).fetch_one(db).await?)
}

/// "3 crashes in 10 minutes".
fn crash_reason(count: i64, settings: &Settings) -> String {
    let secs = settings.quarantine_window.as_secs();
    let window = if secs >= 60 && secs.is_multiple_of(60) {
        format!("{} minutes", secs / 60)
    } else {
        format!("{secs} seconds")
    };
    format!("{count} crashes in {window}")
}

/// After a crash of `node` was recorded: quarantines it when it crashed too often (and is not
/// quarantined or deleted already). Returns whether it was quarantined now.
pub async fn quarantine_if_crashing(pool: &PgPool, settings: &Settings, node: Uuid) -> Result<bool> {
    if settings.quarantine_crashes == 0 {
        return Ok(false);
    }
    let mut tx = pool.begin().await?;
    // Serializes concurrent crash reports of the node (one event).
    let state: Option<String> =
        sqlx::query_scalar("SELECT state FROM render.nodes WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE")
            .bind(node)
            .fetch_optional(&mut *tx)
            .await?;
    if state.is_none_or(|s| s == "quarantined") {
        return Ok(false);
    }
    let count = recent(&mut *tx, settings, node).await?;
    if count < i64::from(settings.quarantine_crashes) {
        return Ok(false);
    }
    let reason = crash_reason(count, settings);
    let name: String = sqlx::query_scalar(
        "UPDATE render.nodes
            SET state = 'quarantined', quarantined_at = now(), state_reason = $2, quarantine_cause = 'crashes',
                probe_due_at = now() + make_interval(secs => $3), probe_failures = 0
          WHERE id = $1 RETURNING name",
    )
    .bind(node)
    .bind(&reason)
    .bind(settings.probes.after.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    let quarantine =
        Quarantine { cause: pb::QuarantineCause::Crashes, reason: &reason, recent_crashes: count, by: None };
    events::node_quarantined(&mut tx, node, &name, &quarantine).await?;
    notify(&mut tx, NODES_CHANNEL, &node.to_string()).await?;
    tx.commit().await?;
    tracing::warn!(node = %node, name = %name, crashes = count, "node quarantined after repeated crashes");
    Ok(true)
}

fn kind_of(text: &str) -> pb::CrashKind {
    pb::CrashKind::from_str_name(&format!("CRASH_KIND_{}", text.to_ascii_uppercase())).unwrap_or(pb::CrashKind::Other)
}

const COLUMNS: &str = "k.id, k.node_id, n.name AS node_name, k.kind, k.frame_job_id, k.job_id, k.ae_version, \
                       k.exit_code, k.signal, k.message, k.crash_report_file_id, k.occurred_at, k.created_at, \
                       k.details->>'process_name' AS process_name";

fn crash_of(row: &PgRow) -> Result<pb::NodeCrash> {
    Ok(pb::NodeCrash {
        id: row.try_get::<Uuid, _>("id")?.to_string(),
        node_id: row.try_get::<Uuid, _>("node_id")?.to_string(),
        node_name: row.try_get("node_name")?,
        kind: kind_of(row.try_get::<&str, _>("kind")?) as i32,
        task_id: id_text(row.try_get("frame_job_id")?),
        render_id: id_text(row.try_get("job_id")?),
        ae_version: row.try_get::<Option<String>, _>("ae_version")?.unwrap_or_default(),
        process_name: row.try_get::<Option<String>, _>("process_name")?.unwrap_or_default(),
        exit_code: row.try_get("exit_code")?,
        signal: row.try_get("signal")?,
        message: row.try_get::<Option<String>, _>("message")?.unwrap_or_default(),
        report_text: String::new(),
        crash_report_file_id: id_text(row.try_get("crash_report_file_id")?),
        log_tail: String::new(),
        occurred_at: Some(timestamp(row.try_get("occurred_at")?)),
        created_at: Some(timestamp(row.try_get("created_at")?)),
    })
}

/// ListCrashes: newest first (by occurrence), without report texts and log tails.
pub async fn list(pool: &PgPool, request: &pb::ListCrashesRequest) -> Result<pb::ListCrashesResponse> {
    let node = parse_optional_id("node_id", &request.node_id)?;
    let render = parse_optional_id("render_id", &request.render_id)?;
    let (from, to) = page::time_range("occurred", request.occurred.as_ref())?;
    let limit = page::size(request.page.as_ref())?;
    let print = page::fingerprint(&[&node as &dyn std::fmt::Debug, &render, &from, &to]);
    let after: Option<page::NewestFirst> = page::decode(&print, page::token(request.page.as_ref()))?;
    let after_time = after.as_ref().map(page::position_time).transpose()?;
    let sql = format!(
        "SELECT {COLUMNS} FROM render.node_crashes k JOIN render.nodes n ON n.id = k.node_id
          WHERE ($1::uuid IS NULL OR k.node_id = $1) AND ($2::uuid IS NULL OR k.job_id = $2)
            AND ($3::timestamptz IS NULL OR k.occurred_at >= $3) AND ($4::timestamptz IS NULL OR k.occurred_at < $4)
            AND ($5::timestamptz IS NULL OR (k.occurred_at, k.id) < ($5, $6))
          ORDER BY k.occurred_at DESC, k.id DESC
          LIMIT $7"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(node)
        .bind(render)
        .bind(from)
        .bind(to)
        .bind(after_time)
        .bind(after.map(|(_, id)| id))
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let mut keyed = Vec::with_capacity(rows.len());
    for row in &rows {
        let at: OffsetDateTime = row.try_get("occurred_at")?;
        keyed.push((page::newest_first(at, row.try_get("id")?), crash_of(row)?));
    }
    let next_page_token = page::next_token(&mut keyed, limit, |(key, _)| page::encode(&print, key));
    Ok(pb::ListCrashesResponse {
        crashes: keyed.into_iter().map(|(_, crash)| crash).collect(),
        page: Some(common_pb::PageResponse { next_page_token }),
    })
}

/// GetCrash: one crash with its report text and log tail.
pub async fn get(pool: &PgPool, crash_id: &str) -> Result<pb::GetCrashResponse> {
    let id = parse_id("crash_id", crash_id)?;
    let sql = format!(
        "SELECT {COLUMNS}, k.log_tail, k.details->>'report_text' AS report_text
           FROM render.node_crashes k JOIN render.nodes n ON n.id = k.node_id WHERE k.id = $1"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or(RenderError::NotFound("crash"))?;
    let mut crash = crash_of(&row)?;
    crash.report_text = row.try_get::<Option<String>, _>("report_text")?.unwrap_or_default();
    crash.log_tail = row.try_get::<Option<String>, _>("log_tail")?.unwrap_or_default();
    Ok(pb::GetCrashResponse { crash: Some(crash) })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn reasons_and_kinds() {
        let settings = Settings::default();
        assert_eq!(crash_reason(3, &settings), "3 crashes in 10 minutes");
        let short = Settings { quarantine_window: Duration::from_secs(90), ..Settings::default() };
        assert_eq!(crash_reason(4, &short), "4 crashes in 90 seconds");
        assert_eq!(kind_of("ae_hang"), pb::CrashKind::AeHang);
        assert_eq!(kind_of("bogus"), pb::CrashKind::Other);
    }
}
