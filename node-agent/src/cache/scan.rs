//! Rebuilding the cache's state from its directory after a restart, trusting nothing: an entry
//! counts only if its manifest is valid and its unpacked files add up to what the manifest says.
//! Leftovers of interrupted work are removed; partial downloads are kept for a resume unless
//! stale. Blocking work: run on `spawn_blocking`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

use super::bundle::Sha256Hex;
use super::download::PARTIAL_DIR;
use super::error::{CacheError, IoContext};
use super::manifest::{self, Manifest};

/// Partial downloads untouched for longer are deleted at open: the bundle is likely gone from
/// the schedule, and its bytes count against the bound.
pub(crate) const PARTIAL_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Prefix of the directories bundles are unpacked into before the rename that commits them.
pub(crate) const UNPACK_PREFIX: &str = ".unpack-";

#[derive(Debug, Default)]
pub(crate) struct Scan {
    pub entries: Vec<Manifest>,
    /// (sha256, bytes, last modified ms)
    pub partials: Vec<(String, u64, u64)>,
    /// Entries that had a manifest but failed the checks, with the bytes the manifest claimed.
    pub corrupt: Vec<(String, u64)>,
}

pub(crate) fn scan(root: &Path) -> Result<Scan, CacheError> {
    let partial_dir = root.join(PARTIAL_DIR);
    fs::create_dir_all(&partial_dir).at(&partial_dir)?;
    let mut keys = BTreeSet::new();
    for item in fs::read_dir(root).at(root)? {
        let item = item.at(root)?;
        let name = item.file_name().to_string_lossy().into_owned();
        let path = item.path();
        let key = name.strip_suffix(".json").unwrap_or(&name);
        if name.starts_with(UNPACK_PREFIX) || name.contains(".json.tmp-") {
            remove_any(&path).at(&path)?;
        } else if Sha256Hex::parse(key).is_ok() {
            keys.insert(key.to_owned());
        } else if name != PARTIAL_DIR {
            tracing::warn!(path = %path.display(), "unknown file in the template cache; left alone");
        }
    }
    let mut out = Scan::default();
    for key in keys {
        let manifest_path = manifest::path(root, &key);
        let had_manifest = manifest_path.exists();
        let found = manifest::read(root, &key);
        let ok = found.as_ref().is_some_and(|m| measure(&root.join(&key)) == Some((m.unpacked_bytes, m.files)));
        match found {
            Some(m) if ok => out.entries.push(m),
            _ => {
                // The manifest goes first: without it, a half-removed entry is never trusted.
                if had_manifest {
                    remove_any(&manifest_path).at(&manifest_path)?;
                }
                let dir = root.join(&key);
                remove_any(&dir).at(&dir)?;
                // A directory without a manifest was never announced (Added follows the
                // manifest), so only entries with one are reported.
                if had_manifest {
                    let claimed = found.map_or(0, |m| m.unpacked_bytes);
                    out.corrupt.push((key, claimed));
                }
            }
        }
    }
    let now = SystemTime::now();
    for item in fs::read_dir(&partial_dir).at(&partial_dir)? {
        let item = item.at(&partial_dir)?;
        let path = item.path();
        let name = item.file_name().to_string_lossy().into_owned();
        let meta = fs::symlink_metadata(&path).at(&path)?;
        let key = name.strip_suffix(".zip").filter(|k| Sha256Hex::parse(k).is_ok());
        let modified = meta.modified().unwrap_or(now);
        let stale = now.duration_since(modified).is_ok_and(|age| age > PARTIAL_MAX_AGE);
        let done = key.is_some_and(|k| out.entries.iter().any(|m| m.sha256 == k));
        match key {
            Some(k) if meta.is_file() && !stale && !done => {
                out.partials.push((k.to_owned(), meta.len(), manifest::to_ms(modified)));
            }
            _ => remove_any(&path).at(&path)?,
        }
    }
    Ok(out)
}

/// Total bytes and number of regular files under `dir`; `None` if it is missing or holds
/// anything but directories and regular files (a link planted there would lead elsewhere).
pub(crate) fn measure(dir: &Path) -> Option<(u64, u64)> {
    let meta = fs::symlink_metadata(dir).ok()?;
    if !meta.is_dir() {
        return None;
    }
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for item in fs::read_dir(&d).ok()? {
            let item = item.ok()?;
            let meta = fs::symlink_metadata(item.path()).ok()?;
            if meta.is_dir() {
                stack.push(item.path());
            } else if meta.is_file() {
                bytes += meta.len();
                files += 1;
            } else {
                return None;
            }
        }
    }
    Some((bytes, files))
}

/// Removes a file or a directory tree; missing is fine.
pub(crate) fn remove_any(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
