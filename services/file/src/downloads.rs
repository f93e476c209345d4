//! What a download leaves behind, whichever way the bytes went (`DownloadFile` or a download
//! link): `last_accessed_at`, updated at most once an hour, and a `FileDownloaded` event unless a
//! service took the bytes.

use uuid::Uuid;

use crate::error::Result;
use crate::events;
use crate::model::FileRecord;
use crate::state::State;

/// Who received a download's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A service or render node: no event.
    Service,
    /// A person: the user when known (the caller of `DownloadFile`, or whoever created the
    /// download link), `None` when a service created the link.
    Person(Option<Uuid>),
}

/// Records that `sent` bytes of `file` went to `recipient` (`complete`: the whole file).
pub async fn record(state: &State, file: &FileRecord, sent: u64, complete: bool, recipient: Recipient) -> Result<()> {
    let mut tx = state.pool.begin().await?;
    sqlx::query(
        "UPDATE file_mgr.files SET last_accessed_at = now()
          WHERE id = $1 AND (last_accessed_at IS NULL OR last_accessed_at < now() - interval '1 hour')",
    )
    .bind(file.id)
    .execute(&mut *tx)
    .await?;
    if let Recipient::Person(user) = recipient {
        events::file_downloaded(&mut tx, file, sent, complete, user).await?;
    }
    tx.commit().await?;
    Ok(())
}
