//! Unpacking a verified bundle, refusing anything that could write outside the entry's directory
//! or blow up the disk. Blocking work: callers run it on `spawn_blocking`.
//!
//! Two steps so that the cache can reserve room in between: [`inspect`] reads only the central
//! directory (names, kinds, declared sizes) and refuses a bad archive before a byte is written;
//! [`extract`] then writes the files, holding each to its declared size.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use zip::ZipArchive;

/// At most this many entries: a bundle is a project and its footage, not a file system.
pub(crate) const MAX_ENTRIES: usize = 100_000;

/// What [`inspect`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Sum of the files' declared uncompressed sizes.
    pub bytes: u64,
    pub files: u64,
}

/// The result of [`extract`]: what is on disk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unpacked {
    pub bytes: u64,
    pub files: u64,
}

/// Why an archive was refused or could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("{0}")]
    Unsafe(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<zip::result::ZipError> for UnpackError {
    fn from(e: zip::result::ZipError) -> Self {
        // A broken archive is the bundle's fault, not the disk's.
        Self::Unsafe(format!("not a readable zip: {e}"))
    }
}

/// Checks every entry of the zip at `zip_path` and totals its declared sizes, refusing entries
/// that escape the directory, links and other non-regular files, encrypted entries, duplicates and
/// totals above `max_bytes`.
pub(crate) fn inspect(zip_path: &Path, max_bytes: u64) -> Result<Plan, UnpackError> {
    let mut archive = ZipArchive::new(File::open(zip_path)?)?;
    if archive.len() > MAX_ENTRIES {
        return Err(UnpackError::Unsafe(format!("{} entries (at most {MAX_ENTRIES})", archive.len())));
    }
    let mut seen = std::collections::HashSet::new();
    let mut plan = Plan { bytes: 0, files: 0 };
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i)?;
        let rel = safe_relative_path(entry.name_raw())?;
        // Case-folded so two names that one file system would merge are not both written.
        if !seen.insert(rel.to_string_lossy().to_lowercase()) {
            return Err(UnpackError::Unsafe(format!("duplicate entry {}", rel.display())));
        }
        if entry.encrypted() {
            return Err(UnpackError::Unsafe(format!("encrypted entry {}", rel.display())));
        }
        if entry.is_symlink() || !(entry.is_dir() || entry.is_file()) {
            return Err(UnpackError::Unsafe(format!("{} is not a plain file", rel.display())));
        }
        if entry.is_file() {
            plan.files += 1;
            plan.bytes = plan.bytes.saturating_add(entry.size());
            if plan.bytes > max_bytes {
                return Err(UnpackError::Unsafe(format!("unpacks to more than {max_bytes} bytes")));
            }
        }
    }
    Ok(plan)
}

/// Turns an entry name into a path relative to the entry's directory, or refuses it. Checked on
/// the raw bytes, before any platform's path parsing can reinterpret them: no absolute paths, no
/// `..`, no backslashes (a separator on Windows), no drive or stream colons, no NULs.
pub(crate) fn safe_relative_path(raw: &[u8]) -> Result<PathBuf, UnpackError> {
    let refuse = |why: &str| Err(UnpackError::Unsafe(format!("entry {:?} {why}", String::from_utf8_lossy(raw))));
    let Ok(name) = std::str::from_utf8(raw) else { return refuse("is not UTF-8") };
    if name.is_empty() || name.starts_with('/') {
        return refuse("is absolute or empty");
    }
    if name.contains(['\\', ':', '\0']) {
        return refuse("has a backslash, colon or NUL");
    }
    let mut out = PathBuf::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return refuse("leaves the directory"),
            p => out.push(p),
        }
    }
    // Belt and braces: whatever the platform makes of it, only plain components remain.
    if out.as_os_str().is_empty() || !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return refuse("is not a plain relative path");
    }
    Ok(out)
}

/// Writes the archive's files under `dest` (which must not exist yet; it is created), holding each
/// file to its declared size. On error `dest` may hold a part: the caller removes it.
pub(crate) fn extract(zip_path: &Path, dest: &Path, plan: &Plan) -> Result<Unpacked, UnpackError> {
    let mut archive = ZipArchive::new(File::open(zip_path)?)?;
    fs::create_dir(dest)?;
    let mut done = Unpacked { bytes: 0, files: 0 };
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        // Checked again: the archive on disk is the one inspected, but this keeps extract safe on
        // its own.
        let rel = safe_relative_path(entry.name_raw())?;
        if entry.is_symlink() || !(entry.is_dir() || entry.is_file()) {
            return Err(UnpackError::Unsafe(format!("{} is not a plain file", rel.display())));
        }
        let target = dest.join(&rel);
        if entry.is_dir() {
            fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let declared = entry.size();
        // create_new: never follow or overwrite something already there.
        let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&target)?;
        // One byte past the declared size tells a lying header from an honest one.
        let written = copy(&mut (&mut entry).take(declared.saturating_add(1)), &mut out)?;
        if written != declared {
            return Err(UnpackError::Unsafe(format!("{} holds {written} bytes, declared {declared}", rel.display())));
        }
        done.bytes += written;
        done.files += 1;
        if done.bytes > plan.bytes {
            return Err(UnpackError::Unsafe("unpacks to more than declared".into()));
        }
    }
    Ok(done)
}

fn copy(from: &mut impl Read, to: &mut File) -> io::Result<u64> {
    let n = io::copy(from, to)?;
    to.flush()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass_and_escaping_ones_are_refused() {
        assert_eq!(safe_relative_path(b"a/b.aep").ok(), Some(PathBuf::from("a").join("b.aep")));
        assert_eq!(safe_relative_path(b"./a//b").ok(), Some(PathBuf::from("a").join("b")));
        for bad in [
            &b"../evil"[..],
            b"a/../../evil",
            b"/abs",
            b"C:/x",
            b"c:evil",
            b"a\\..\\..\\evil",
            b"\\\\server\\share",
            b"",
            b".",
            b"a\0b",
            b"\xff",
        ] {
            assert!(
                matches!(safe_relative_path(bad), Err(UnpackError::Unsafe(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
