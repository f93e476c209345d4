//! Expired download links: deleted by the scheduler's hourly housekeeping, beside old runs.
//!
//! An expired link already answers 404 (serving checks `expires_at`), so deleting its row is only
//! about keeping the table small: no rule, schedule or run record is needed, and an hour's delay
//! costs nothing.

use crate::error::Result;
use crate::state::State;

/// Deletes the links that have expired; returns how many.
pub async fn delete_expired_links(state: &State) -> Result<u64> {
    let deleted =
        sqlx::query("DELETE FROM file_mgr.download_links WHERE expires_at <= now()").execute(&state.pool).await?;
    Ok(deleted.rows_affected())
}
