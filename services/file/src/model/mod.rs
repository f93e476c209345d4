//! Domain types of the file service, apart from the generated protobuf types: each record reads
//! itself from a database row and writes itself as its proto message.

mod file;
mod folder;
mod kind;
mod quota;
mod session;

pub use file::{FILE_COLUMNS, FileRecord};
pub use folder::{FOLDER_COLUMNS, FolderRecord};
pub use kind::{FileKind, service_from_proto, service_to_proto};
pub use quota::{QUOTA_COLUMNS, QuotaRecord, QuotaScope};
pub use session::{PartRecord, SESSION_COLUMNS, SessionRecord, SessionState};

use time::OffsetDateTime;

use crate::error::{FileError, Result};
use crate::storage::Sha256Digest;

/// A database time as a protobuf timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    // Nanoseconds of a second always fit in i32.
    prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: at.nanosecond() as i32 }
}

/// An optional database time as an optional protobuf timestamp.
pub fn optional_timestamp(at: Option<OffsetDateTime>) -> Option<prost_types::Timestamp> {
    at.map(timestamp)
}

/// A request timestamp as a time, `INVALID_ARGUMENT` on `field` when out of range.
pub fn from_timestamp(field: &str, at: &prost_types::Timestamp) -> Result<OffsetDateTime> {
    let invalid = || FileError::invalid(field, "is not a valid timestamp");
    if !(0..1_000_000_000).contains(&at.nanos) {
        return Err(invalid());
    }
    let nanos = i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).map_err(|_| invalid())
}

/// A database `bigint` that is never negative (CHECK constraints) as `u64`.
pub(crate) fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The SHA-256 stored (as 32 raw bytes) in `column` of `row`; `None` when NULL.
pub(crate) fn optional_digest(row: &sqlx::postgres::PgRow, column: &str) -> sqlx::Result<Option<Sha256Digest>> {
    use sqlx::Row;
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).map(Sha256Digest::from))
        .transpose()
        .map_err(|_| sqlx::Error::Decode(format!("{column} is not 32 bytes").into()))
}

/// The SHA-256 stored (as 32 raw bytes) in the NOT NULL `column` of `row`.
pub(crate) fn digest(row: &sqlx::postgres::PgRow, column: &str) -> sqlx::Result<Sha256Digest> {
    optional_digest(row, column)?.ok_or_else(|| sqlx::Error::Decode(format!("{column} is NULL").into()))
}

/// An optional id as the proto's string (empty for none).
pub(crate) fn id_text(id: Option<uuid::Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}
