//! The small record beside each entry (`<root>/<sha256>.json`): written only once the unpacked
//! directory is in place, so an entry without one is unfinished and removed at the next start.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::error::{CacheError, IoContext};

/// Bumped when the layout changes; entries with another version are discarded at open.
pub(crate) const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub version: u32,
    pub sha256: String,
    /// Size of the zip it came from.
    pub zip_bytes: u64,
    /// Sum of the unpacked files' lengths (what counts toward the bound), checked at open.
    pub unpacked_bytes: u64,
    /// Number of unpacked files, checked at open.
    pub files: u64,
    pub added_at_ms: u64,
    pub last_used_ms: u64,
}

pub(crate) fn path(root: &Path, sha256: &str) -> PathBuf {
    root.join(format!("{sha256}.json"))
}

pub(crate) fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A name no other writer in this process or another uses at the same moment.
pub(crate) fn unique_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos:x}-{n}", std::process::id())
}

/// Writes the manifest to a temporary name, syncs it and renames it over the old one, so a crash
/// leaves either the old or the new manifest, never half of one.
pub(crate) async fn write(root: &Path, m: &Manifest) -> Result<(), CacheError> {
    let target = path(root, &m.sha256);
    let tmp = root.join(format!(".{}.json.tmp-{}", m.sha256, unique_suffix()));
    let body = serde_json::to_vec(m).map_err(|e| CacheError::io(&target, e.into()))?;
    let result = async {
        let mut f = tokio::fs::File::create(&tmp).await?;
        f.write_all(&body).await?;
        f.sync_all().await?;
        drop(f);
        tokio::fs::rename(&tmp, &target).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result.at(&target)
}

/// Reads a manifest; `None` when it is missing, unreadable or not for `sha256`.
pub(crate) fn read(root: &Path, sha256: &str) -> Option<Manifest> {
    let bytes = std::fs::read(path(root, sha256)).ok()?;
    let m: Manifest = serde_json::from_slice(&bytes).ok()?;
    (m.version == VERSION && m.sha256 == sha256).then_some(m)
}
