//! Retention: exports and snapshot images whose `expires_at` passed are marked so, in batches,
//! by one replica at a time.
//!
//! - An export past its expiry becomes EXPIRED (`exports.state`); the file service's cleanup
//!   removes the video once render's retention on it (`retained_until`, the same instant) ends.
//! - A snapshot has no EXPIRED state: per the API, an expired snapshot is "deleted by
//!   retention" (GetSnapshot answers NOT_FOUND), so its row goes. Its task and attempts stay
//!   for the operators' record, and its rows of the hourly rate keep counting (their
//!   `snapshot_id` becomes NULL, migration 30). An identical request afterwards renders it again
//!   under a new row.
//! - The hourly snapshot rate's rows (`snapshot_tasks`) older than the hour count for nothing;
//!   they go too.
//!
//! Reads do not wait for the sweep: GetExport and ListExports show an export past its expiry as
//! EXPIRED, GetSnapshot and WatchSnapshot treat an expired snapshot as gone, and a cache hit
//! never answers with an expired image (the request re-renders it). The sweep makes the rows
//! say what the reads already show.
//!
//! Exclusivity: each batch is one transaction that first takes a transaction-scoped advisory
//! lock (`pg_try_advisory_xact_lock`, as the outbox consumers do); a replica that does not get
//! it leaves the round to the one that did. Rows are also locked `FOR UPDATE SKIP LOCKED`, so a
//! snapshot being hit right now (its row locked by RequestSnapshot, which extends its expiry)
//! is left for the next round.

use flatrender_kit::shutdown::ShutdownSignal;
use sqlx::PgPool;
use uuid::Uuid;

use crate::api::changes::SNAPSHOTS_CHANNEL;
use crate::error::Result;
use crate::queue::notify_each;
use crate::state::State;

/// What one sweep marked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Exports now EXPIRED.
    pub exports: u64,
    /// Expired snapshots deleted.
    pub snapshots: u64,
    /// Rows of the hourly snapshot rate older than the hour, deleted.
    pub rate_rows: u64,
    /// Whether another replica held the sweep (this one did nothing).
    pub busy: bool,
}

/// Sweeps every `settings.api.retention_sweep_interval` until `shutdown`.
pub async fn run(state: State, shutdown: ShutdownSignal) {
    let api = &state.settings.api;
    let every = api.retention_sweep_interval.max(std::time::Duration::from_millis(10));
    let pool = &state.pool;
    // The first round one interval after the start: a replica starting does not add a sweep.
    shutdown
        .every(every, every, || async move {
            match sweep(pool, api.retention_batch).await {
                Ok(swept) if swept.exports + swept.snapshots + swept.rate_rows > 0 => {
                    tracing::info!(
                        exports = swept.exports,
                        snapshots = swept.snapshots,
                        rate_rows = swept.rate_rows,
                        "expired exports, snapshots and snapshot-rate rows swept"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot mark expired exports and snapshots; retrying next round"),
            }
        })
        .await;
}

/// Marks everything expired now, `batch` rows of each kind per transaction, until nothing is
/// left or another replica holds the sweep.
pub async fn sweep(pool: &PgPool, batch: u32) -> Result<Swept> {
    let batch = i64::from(batch.max(1));
    let mut swept = Swept::default();
    loop {
        let Some(batch_swept) = sweep_batch(pool, batch).await? else {
            swept.busy = true;
            return Ok(swept);
        };
        swept.exports += batch_swept.exports;
        swept.snapshots += batch_swept.snapshots;
        swept.rate_rows += batch_swept.rate_rows;
        if [batch_swept.exports, batch_swept.snapshots, batch_swept.rate_rows].iter().all(|n| *n < batch as u64) {
            return Ok(swept);
        }
    }
}

/// One batch: `None` when another replica holds the sweep.
async fn sweep_batch(pool: &PgPool, batch: i64) -> Result<Option<Swept>> {
    let mut tx = pool.begin().await?;
    let locked = flatrender_kit::db::try_advisory_xact_lock(&mut tx, "render.retention").await?;
    if !locked {
        return Ok(None);
    }
    let exports = in_batch(
        &mut tx,
        "UPDATE render.exports e SET state = 'expired'
           FROM (SELECT id FROM render.exports
                  WHERE state = 'available' AND expires_at IS NOT NULL AND expires_at <= now()
                  ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
          WHERE e.id = due.id",
        batch,
    )
    .await?;
    // Only READY snapshots carry an expiry (a requeued one loses it until its image is back).
    let snapshots: Vec<Uuid> = sqlx::query_scalar(
        "DELETE FROM render.snapshots s
          USING (SELECT id FROM render.snapshots
                  WHERE state = 'ready' AND expires_at IS NOT NULL AND expires_at <= now()
                  ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
          WHERE s.id = due.id
      RETURNING s.id",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    // Watchers of a snapshot read again (and find it gone).
    notify_each(&mut tx, SNAPSHOTS_CHANNEL, &snapshots).await?;
    // Only the last hour counts toward the rate; a caller's own next snapshot prunes their
    // older rows, and this those of callers who do not come back. Oldest first by id.
    let rate_rows = in_batch(
        &mut tx,
        "DELETE FROM render.snapshot_tasks t
          USING (SELECT id FROM render.snapshot_tasks WHERE created_at <= now() - interval '1 hour'
                  ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) due
          WHERE t.id = due.id",
        batch,
    )
    .await?;
    tx.commit().await?;
    Ok(Some(Swept { exports, snapshots: snapshots.len() as u64, rate_rows, busy: false }))
}

/// Runs `sql`, a statement over at most `$1` rows, in `tx`; returns the rows it changed.
async fn in_batch(tx: &mut sqlx::PgTransaction<'_>, sql: &'static str, batch: i64) -> Result<u64> {
    Ok(sqlx::query(sql).bind(batch).execute(&mut **tx).await?.rows_affected())
}
