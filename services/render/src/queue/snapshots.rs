//! Snapshot transitions driven by their task: a lease makes a QUEUED snapshot RENDERING and a
//! requeued task makes it QUEUED again; the verified image makes it READY, a task that failed
//! for good makes it FAILED. Each runs in the caller's transaction with the `render_snapshots`
//! notification that wakes WatchSnapshot (and the outbox event of READY and FAILED).

use std::time::Duration;

use sqlx::PgTransaction;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{self, SnapshotRow};
use super::{notify, notify_each};
use crate::api::changes::SNAPSHOTS_CHANNEL;
use crate::error::Result;
use crate::model::{ErrorInfo, strip_node_paths};

/// tenant_id, user_id, cache_key, expires_at of a snapshot made ready.
type ReadyRow = (Uuid, Option<Uuid>, Vec<u8>, Option<OffsetDateTime>);

/// The snapshots of `ids` whose task was just leased are RENDERING (those still QUEUED; a
/// snapshot that ended meanwhile keeps its state).
pub async fn rendering(tx: &mut PgTransaction<'_>, ids: &[Uuid]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let changed: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE render.snapshots SET state = 'rendering' WHERE id = ANY($1) AND state = 'queued' RETURNING id",
    )
    .bind(ids)
    .fetch_all(&mut **tx)
    .await?;
    notify_each(tx, SNAPSHOTS_CHANNEL, &changed).await?;
    Ok(())
}

/// Snapshot `id` is QUEUED again: its task went back to the queue (lost node, lapsed lease,
/// refusal, machine error with attempts left). Nothing changes unless it was RENDERING.
pub async fn requeued(tx: &mut PgTransaction<'_>, id: Uuid) -> Result<()> {
    let changed: Option<Uuid> = sqlx::query_scalar(
        "UPDATE render.snapshots SET state = 'queued' WHERE id = $1 AND state = 'rendering' RETURNING id",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(id) = changed {
        notify(tx, SNAPSHOTS_CHANNEL, &id.to_string()).await?;
    }
    Ok(())
}

/// Snapshot `id` is READY with image `file`, kept for `retention` from now. Returns when the
/// image expires, or `None` when the snapshot was no longer waiting for an image (requeued
/// rows are waiting again; nothing else changes a rendering snapshot).
pub async fn ready(
    tx: &mut PgTransaction<'_>,
    id: Uuid,
    file: Uuid,
    retention: Duration,
    render_ms: i64,
) -> Result<Option<OffsetDateTime>> {
    let row: Option<ReadyRow> = sqlx::query_as(
        "UPDATE render.snapshots
            SET state = 'ready', file_id = $2, rendered_at = now(), last_accessed_at = now(),
                expires_at = now() + make_interval(secs => $3),
                error_class = NULL, error_code = NULL, error_message = NULL
          WHERE id = $1 AND state IN ('queued', 'rendering')
      RETURNING tenant_id, user_id, cache_key, expires_at",
    )
    .bind(id)
    .bind(file)
    .bind(retention.as_secs_f64())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((tenant_id, user_id, cache_key, expires_at)) = row else { return Ok(None) };
    events::snapshot_ready(tx, &SnapshotRow { id, tenant_id, user_id }, file, &cache_key, render_ms).await?;
    notify(tx, SNAPSHOTS_CHANNEL, &id.to_string()).await?;
    Ok(expires_at)
}

/// Snapshot `id` FAILED with `error` (its task failed for good), unless it already ended. The
/// customer's copy of the message (the snapshot and its event) is without the node's paths.
pub async fn fail(tx: &mut PgTransaction<'_>, id: Uuid, error: &ErrorInfo) -> Result<()> {
    let message = strip_node_paths(&error.message);
    let message = if message.trim().is_empty() { "the snapshot failed".to_owned() } else { message };
    let row: Option<(Uuid, Option<Uuid>)> = sqlx::query_as(
        "UPDATE render.snapshots SET state = 'failed', error_class = $2, error_code = $3, error_message = $4
          WHERE id = $1 AND state IN ('queued', 'rendering')
      RETURNING tenant_id, user_id",
    )
    .bind(id)
    .bind(snapshot_class(error))
    .bind(error.code.map(|code| code.as_db()))
    .bind(&message)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((tenant_id, user_id)) = row else { return Ok(()) };
    let shown = ErrorInfo { message, ..error.clone() };
    events::snapshot_failed(tx, &SnapshotRow { id, tenant_id, user_id }, shown.to_pb()).await?;
    notify(tx, SNAPSHOTS_CHANNEL, &id.to_string()).await?;
    Ok(())
}

/// The snapshot's class for `error`: snapshots keep no 'canceled' or 'lost' (those only end an
/// attempt), so anything else reads as internal.
fn snapshot_class(error: &ErrorInfo) -> &'static str {
    match error.class.as_db() {
        class @ ("template" | "machine" | "timeout" | "quota") => class,
        _ => "internal",
    }
}
