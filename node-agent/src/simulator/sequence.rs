//! Image-sequence output: frame file names from `name_[#####].png` patterns, and frames
//! written so that a watcher never sees half a file.

use std::io;
use std::path::{Path, PathBuf};

/// The file of comp frame `frame` for an output `pattern`: every `[###…]` becomes the frame
/// number zero-padded to the count of `#`. A pattern without one gets `_[#####]` before its
/// extension, as After Effects does for sequences.
pub fn frame_path(pattern: &str, frame: u32) -> String {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut rest = pattern;
    let mut replaced = false;
    while let Some(open) = rest.find("[#") {
        let after = &rest[open + 1..];
        let hashes = after.len() - after.trim_start_matches('#').len();
        if !after[hashes..].starts_with(']') {
            out.push_str(&rest[..open + 1]);
            rest = after;
            continue;
        }
        out.push_str(&rest[..open]);
        out.push_str(&format!("{frame:0hashes$}"));
        rest = &after[hashes + 1..];
        replaced = true;
    }
    out.push_str(rest);
    if replaced {
        return out;
    }
    let name_start = pattern.rfind(['/', '\\']).map_or(0, |i| i + 1);
    match pattern[name_start..].rfind('.') {
        Some(dot) if dot > 0 => {
            let dot = name_start + dot;
            format!("{}_{frame:05}{}", &pattern[..dot], &pattern[dot..])
        }
        _ => format!("{pattern}_{frame:05}"),
    }
}

/// Writes `bytes` to a hidden temporary name beside `path` (not ending in the frame's
/// extension), then renames it into place.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = temporary_name(path);
    std::fs::write(&temp, bytes)?;
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

fn temporary_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.sim-partial"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_take_the_comp_frame_number() {
        assert_eq!(frame_path("out/frame_[#####].png", 61), "out/frame_00061.png");
        assert_eq!(frame_path("f[###]_[#].png", 7), "f007_7.png");
        assert_eq!(frame_path("f_[##].png", 1234), "f_1234.png", "wider numbers are not cut");
        assert_eq!(frame_path("a[b]/[x#]_[##].png", 3), "a[b]/[x#]_03.png");
        assert_eq!(frame_path("out.v2/frame.png", 3), "out.v2/frame_00003.png");
        assert_eq!(frame_path("out/frame", 3), "out/frame_00003");
    }

    #[test]
    fn atomic_writes_leave_only_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f_00001.png");
        write_atomically(&path, b"data").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("f_00001.png")]);
    }
}
