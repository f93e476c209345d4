//! Teaches After Effects' `aerender` to run a script before it renders.
//!
//! Stock `aerender` has no way to run a script: it starts After Effects, which runs
//! `Scripts/Startup/commandLineRenderer.jsx`, and that script parses the command line,
//! opens the project and drives the render queue. To inject job data FlatRender patches
//! that file once per After Effects installation so it accepts `-r <file.jsx>`: the file
//! is evaluated after the project opens and before the render queue item is set up.
//!
//! The patch is a few marked blocks inserted at recognised anchors of Adobe's own text
//! (never a replacement of the whole file), so every other line of the installed version
//! stays as Adobe shipped it. A marker line (`// flatrender-patch: v1`) makes patching
//! idempotent and upgradable; the stock file is kept beside it as
//! `commandLineRenderer.jsx.flatrender-original`; every write goes to a temporary file
//! in the same folder that is then renamed over the target, so After Effects never sees
//! a half-written script. The After Effects folder is usually writable only by an
//! administrator, so the first patch may need the agent to run elevated once.
//!
//! Anchors (all inside the `AECommandLineRenderer` constructor):
//! - `function my_ParseParamStartingAt(`: the `-r` check goes right before its
//!   `if (num_args_parsed == 0)` unknown-flag check and reads its value through the stock
//!   `GetValueForFlag`, so a missing value fails exactly like `-comp` or `-log` do
//!   (`aerender SYNTAX ERROR: no value given for flag: -r`, exit code 3).
//! - `function my_ParseInArgs(`: before `var arg_num = 0;` the previous render's script
//!   path is forgotten (`aerender -reuse` keeps the same renderer object alive).
//! - `function my_ReallyRender(`: before `var rqi = null;`, which follows the project
//!   being opened (`app.open…`), the script is logged (`Running Script: <path>`) and run
//!   with `$.evalFile`. An exception logs `aerender ERROR: Error executing script: <path>`
//!   and `Error: <message>`, then goes through the stock
//!   `SetExitCodeAndThrowException(EXIT_AE_RUNTIME, MSG_AE_RUNTIME)`, so aerender exits
//!   with its "runtime error in After Effects" code (9, or 10 with `-log`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the patch this agent writes. Raise it whenever the inserted JSX changes.
pub const PATCH_VERSION: u32 = 1;

/// File name of Adobe's command line renderer script.
pub const SCRIPT_FILE_NAME: &str = "commandLineRenderer.jsx";

/// Suffix of the untouched stock copy kept next to the script.
pub const BACKUP_SUFFIX: &str = ".flatrender-original";

/// The flag the patch adds to aerender.
pub const SCRIPT_FLAG: &str = "-r";

/// Start of the marker line; the decimal patch version follows directly.
const MARKER_PREFIX: &str = "// flatrender-patch: v";
/// First line of every inserted block.
const BLOCK_BEGIN: &str = "// flatrender-patch begin";
/// Last line of every inserted block.
const BLOCK_END: &str = "// flatrender-patch end";
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Inserted into `my_ParseInArgs` before `var arg_num = 0;`.
/// Four leading spaces stand for one indentation level below the anchor line.
const RESET_BLOCK: &[&str] = &[
    "// flatrender-patch begin: forget the last render's -r (aerender -reuse keeps this object)",
    "this.flatrender_script_path = null;",
    BLOCK_END,
];

/// Inserted into `my_ParseParamStartingAt` before `if (num_args_parsed == 0)`.
const FLAG_BLOCK: &[&str] = &[
    "// flatrender-patch begin: -r <file.jsx>; a missing value fails like every stock flag",
    "if (my_flag == \"-r\") {",
    "    this.flatrender_script_path = this.GetValueForFlag(arg_num + 1, my_flag);",
    "    num_args_parsed = 2;",
    "}",
    BLOCK_END,
];

/// Inserted into `my_ReallyRender` before `var rqi = null;` (the project is open by then).
const RUN_BLOCK: &[&str] = &[
    "// flatrender-patch begin: run the -r script now that the project is open",
    "if (this.flatrender_script_path) {",
    "    var flatrender_script = this.flatrender_script_path;",
    "    this.flatrender_script_path = null;",
    "    if (this.log_file != null) {",
    "        this.log_file.writeln(\"Running Script: \" + flatrender_script);",
    "    }",
    "    try {",
    "        var flatrender_file = new File(flatrender_script);",
    "        if (!flatrender_file.exists) {",
    "            throw new Error(\"script file not found\");",
    "        }",
    "        $.evalFile(flatrender_file);",
    "    } catch (flatrender_error) {",
    "        if (this.log_file != null) {",
    "            this.log_file.writeln(\"aerender ERROR: Error executing script: \" + flatrender_script);",
    "            this.log_file.writeln(\"Error: \" + ((flatrender_error && flatrender_error.message !== undefined) ? flatrender_error.message : String(flatrender_error)));",
    "        }",
    "        this.SetExitCodeAndThrowException(this.EXIT_AE_RUNTIME, this.MSG_AE_RUNTIME);",
    "    }",
    "}",
    BLOCK_END,
];

/// What is beside an `aerender` binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchState {
    /// No `commandLineRenderer.jsx` beside aerender (e.g. a simulator): nothing to patch.
    Missing,
    /// The script carries no FlatRender marker.
    Stock,
    /// The script carries a FlatRender marker of this version.
    Patched { version: u32 },
}

/// What [`ensure_patched`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchOutcome {
    /// The current patch was already in place; nothing was written.
    AlreadyCurrent,
    /// A stock script was patched (and backed up).
    Patched,
    /// An older patch was replaced by the current one, re-applied to the original.
    Upgraded { from: u32 },
    /// No script beside aerender; nothing was written.
    NothingToPatch,
    /// A newer agent patched the script; it was left alone.
    NewerPatchPresent { version: u32 },
}

/// Everything that can go wrong while patching.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(
        "cannot write {}: administrator rights are needed once to patch After Effects' \
         commandLineRenderer.jsx (run the node agent once as Administrator on Windows, \
         or with sudo on macOS)",
        .path.display()
    )]
    NeedsAdmin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} {}: {source}", .path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a commandLineRenderer.jsx this agent recognises; not found: {}; \
         the file was left untouched",
        .path.display(),
        .missing.join("; ")
    )]
    Unrecognised { path: PathBuf, missing: Vec<&'static str> },
    #[error(
        "{} was already modified by another tool ({evidence}); restore Adobe's original \
         script first; the file was left untouched",
        .path.display()
    )]
    ForeignPatch { path: PathBuf, evidence: &'static str },
    #[error("{} has an unreadable flatrender-patch marker: {line:?}", .path.display())]
    MalformedMarker { path: PathBuf, line: String },
    #[error(
        "{} is patched but its original cannot be recovered: no usable backup at {} and \
         the patch blocks cannot be removed cleanly",
        .path.display(),
        .backup.display()
    )]
    OriginalLost { path: PathBuf, backup: PathBuf },
    #[error(
        "internal check failed for {}: the patched text does not strip back to the \
         original; nothing was written",
        .path.display()
    )]
    SelfCheck { path: PathBuf },
}

/// `<aerender's directory>/Scripts/Startup/commandLineRenderer.jsx`, the same layout on
/// Windows (`…\Support Files\aerender.exe`) and macOS (`…/Adobe After Effects 2024/aerender`).
pub fn script_path(aerender: &Path) -> PathBuf {
    let dir = aerender.parent().unwrap_or_else(|| Path::new(""));
    dir.join("Scripts").join("Startup").join(SCRIPT_FILE_NAME)
}

/// Where the untouched stock script is kept: `commandLineRenderer.jsx.flatrender-original`.
pub fn backup_path(aerender: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(SCRIPT_FILE_NAME);
    name.push(BACKUP_SUFFIX);
    script_path(aerender).with_file_name(name)
}

/// Tells whether the script beside `aerender` is missing, stock or patched (and which version).
pub fn inspect(aerender: &Path) -> Result<PatchState, PatchError> {
    let script = script_path(aerender);
    match read_opt(&script)? {
        None => Ok(PatchState::Missing),
        Some(text) => state_of(&script, &text),
    }
}

/// Makes sure the script beside `aerender` carries the current patch.
///
/// A stock script is backed up (the backup is refreshed only from stock text, e.g. after
/// an After Effects update replaced the script) and patched; an older patch is replaced
/// by the current one applied to the original; a newer one is left alone. A script whose
/// anchors are not found is refused and left untouched.
pub fn ensure_patched(aerender: &Path) -> Result<PatchOutcome, PatchError> {
    let script = script_path(aerender);
    let backup = backup_path(aerender);
    let Some(current) = read_opt(&script)? else {
        return Ok(PatchOutcome::NothingToPatch);
    };
    match state_of(&script, &current)? {
        PatchState::Missing => Ok(PatchOutcome::NothingToPatch),
        PatchState::Stock => {
            let patched = build_patched(&script, &current)?;
            if read_opt(&backup)?.as_deref() != Some(current.as_slice()) {
                write_atomic(&backup, &current, &script)?;
            }
            write_atomic(&script, &patched, &script)?;
            Ok(PatchOutcome::Patched)
        }
        PatchState::Patched { version } if version == PATCH_VERSION => Ok(PatchOutcome::AlreadyCurrent),
        PatchState::Patched { version } if version > PATCH_VERSION => Ok(PatchOutcome::NewerPatchPresent { version }),
        PatchState::Patched { version: from } => {
            let (original, from_backup) = original_of(&script, &backup, &current)?;
            let patched = build_patched(&script, &original)?;
            if !from_backup {
                write_atomic(&backup, &original, &script)?;
            }
            write_atomic(&script, &patched, &script)?;
            Ok(PatchOutcome::Upgraded { from })
        }
    }
}

/// Puts the stock script back (for uninstall) and removes the backup.
///
/// Returns `false` when there was nothing to undo (no script, or no FlatRender marker).
/// Without a usable backup the patch blocks are cut out of the patched text instead.
pub fn unpatch(aerender: &Path) -> Result<bool, PatchError> {
    let script = script_path(aerender);
    let backup = backup_path(aerender);
    let Some(current) = read_opt(&script)? else {
        return Ok(false);
    };
    match state_of(&script, &current)? {
        PatchState::Missing | PatchState::Stock => Ok(false),
        PatchState::Patched { .. } => {
            let (original, from_backup) = original_of(&script, &backup, &current)?;
            write_atomic(&script, &original, &script)?;
            if from_backup {
                match fs::remove_file(&backup) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("remove", &backup, e)),
                }
            }
            Ok(true)
        }
    }
}

// ---------------------------------------------------------------------------------------
// Text handling. Everything works on bytes: the anchors and the inserted code are ASCII,
// and whatever encoding Adobe used for the rest of the file is preserved byte for byte.

fn state_of(path: &Path, text: &[u8]) -> Result<PatchState, PatchError> {
    match marker_version(text) {
        Ok(None) => Ok(PatchState::Stock),
        Ok(Some(version)) => Ok(PatchState::Patched { version }),
        Err(line) => Err(PatchError::MalformedMarker { path: path.to_path_buf(), line }),
    }
}

/// The version on the first marker line, `Ok(None)` without one, `Err(line)` if unreadable.
fn marker_version(text: &[u8]) -> Result<Option<u32>, String> {
    for line in text.split(|&b| b == b'\n') {
        let trimmed = trim_line_start(line);
        if let Some(rest) = trimmed.strip_prefix(MARKER_PREFIX.as_bytes()) {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let version = std::str::from_utf8(&rest[..digits]).ok().and_then(|d| d.parse::<u32>().ok());
            return match version {
                Some(v) => Ok(Some(v)),
                None => Err(String::from_utf8_lossy(trimmed).trim_end().to_string()),
            };
        }
    }
    Ok(None)
}

fn trim_line_start(line: &[u8]) -> &[u8] {
    let line = line.strip_prefix(BOM).unwrap_or(line);
    let skip = line.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    &line[skip..]
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// The dominant line ending: CRLF when most lines end with it (Windows installs).
fn line_ending(text: &[u8]) -> &'static str {
    let lf = text.iter().filter(|&&b| b == b'\n').count();
    let crlf = text.windows(2).filter(|w| w == b"\r\n").count();
    if crlf > lf - crlf { "\r\n" } else { "\n" }
}

/// Offset of the start of the line holding `pos` (never inside a leading BOM).
fn line_start(text: &[u8], pos: usize) -> usize {
    let start = text[..pos].iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if text.starts_with(BOM) { start.max(BOM.len()) } else { start }
}

/// Moves a line start up over the `//` comment lines directly above it, so an inserted
/// block does not separate Adobe's comment from the code it describes.
fn above_comments(text: &[u8], mut at: usize) -> usize {
    while at > 0 {
        let prev = line_start(text, at - 1);
        if prev >= at || !trim_line_start(&text[prev..at]).starts_with(b"//") {
            break;
        }
        at = prev;
    }
    at
}

/// From `header` to the next `function my_` (the next method of the renderer).
fn function_body(text: &[u8], header: &str) -> Option<(usize, usize)> {
    let start = find(text, header.as_bytes())?;
    let from = start + header.len();
    let end = find(&text[from..], b"function my_").map_or(text.len(), |p| from + p);
    Some((start, end))
}

/// Line starts where the three blocks go.
struct Anchors {
    reset: usize,
    flag: usize,
    run: usize,
}

enum AnchorProblem {
    Missing(Vec<&'static str>),
    Foreign(&'static str),
}

fn locate(text: &[u8]) -> Result<Anchors, AnchorProblem> {
    if contains(text, b"nexrender") {
        return Err(AnchorProblem::Foreign("it mentions nexrender"));
    }
    let mut missing = Vec::new();

    let mut flag = None;
    match function_body(text, "function my_ParseParamStartingAt(") {
        None => missing.push("the argument parser `function my_ParseParamStartingAt(`"),
        Some((s, e)) => {
            let body = &text[s..e];
            if contains(body, b"\"-r\"") {
                return Err(AnchorProblem::Foreign("its argument parser already handles \"-r\""));
            }
            if !contains(body, b"var my_flag") {
                missing.push("`var my_flag` in my_ParseParamStartingAt");
            }
            if !contains(body, b"GetValueForFlag(") {
                missing.push("`GetValueForFlag(` in my_ParseParamStartingAt");
            }
            match find(body, b"num_args_parsed == 0") {
                Some(p) => flag = Some(line_start(text, s + p)),
                None => missing.push("the unknown-flag check `num_args_parsed == 0` in my_ParseParamStartingAt"),
            }
        }
    }

    let mut reset = None;
    match function_body(text, "function my_ParseInArgs(") {
        None => missing.push("the argument loop `function my_ParseInArgs(`"),
        Some((s, e)) => match find(&text[s..e], b"var arg_num = 0;") {
            Some(p) => reset = Some(line_start(text, s + p)),
            None => missing.push("`var arg_num = 0;` in my_ParseInArgs"),
        },
    }

    let mut run = None;
    match function_body(text, "function my_ReallyRender(") {
        None => missing.push("the render function `function my_ReallyRender(`"),
        Some((s, e)) => {
            let body = &text[s..e];
            match find(body, b"var rqi = null;") {
                None => missing.push("the render queue item setup `var rqi = null;` in my_ReallyRender"),
                Some(p) if !contains(&body[..p], b"app.open") => {
                    missing.push("a project being opened (`app.open…`) before `var rqi = null;` in my_ReallyRender")
                }
                Some(p) => run = Some(above_comments(text, line_start(text, s + p))),
            }
        }
    }

    for (needle, what) in [
        ("function my_SetExitCodeAndThrowException(", "the error reporter `function my_SetExitCodeAndThrowException(`"),
        ("this.EXIT_AE_RUNTIME", "the exit code `this.EXIT_AE_RUNTIME`"),
        ("this.MSG_AE_RUNTIME", "the message `this.MSG_AE_RUNTIME`"),
        ("this.log_file", "the log `this.log_file`"),
    ] {
        if !contains(text, needle.as_bytes()) {
            missing.push(what);
        }
    }

    match (reset, flag, run) {
        (Some(reset), Some(flag), Some(run)) if missing.is_empty() => Ok(Anchors { reset, flag, run }),
        _ => Err(AnchorProblem::Missing(missing)),
    }
}

/// `lines` indented like the anchor line at `at`, one more level per four leading spaces.
fn render_block(text: &[u8], at: usize, nl: &str, lines: &[&str]) -> String {
    let indent_len = text[at..].iter().take_while(|&&b| b == b' ' || b == b'\t').count();
    let indent = String::from_utf8_lossy(&text[at..at + indent_len]).into_owned();
    let unit = if indent.contains('\t') { "\t" } else { "    " };
    let mut out = String::new();
    for line in lines {
        let rest = line.trim_start_matches(' ');
        let depth = (line.len() - rest.len()) / 4;
        out.push_str(&indent);
        for _ in 0..depth {
            out.push_str(unit);
        }
        out.push_str(rest);
        out.push_str(nl);
    }
    out
}

fn marker_line() -> String {
    format!(
        "{MARKER_PREFIX}{PATCH_VERSION} (adds `{SCRIPT_FLAG} <file.jsx>`; \
         the original is kept as {SCRIPT_FILE_NAME}{BACKUP_SUFFIX})"
    )
}

fn apply(text: &[u8], anchors: &Anchors) -> Vec<u8> {
    let nl = line_ending(text);
    let top = if text.starts_with(BOM) { BOM.len() } else { 0 };
    let mut inserts = [
        (top, format!("{}{nl}", marker_line())),
        (anchors.reset, render_block(text, anchors.reset, nl, RESET_BLOCK)),
        (anchors.flag, render_block(text, anchors.flag, nl, FLAG_BLOCK)),
        (anchors.run, render_block(text, anchors.run, nl, RUN_BLOCK)),
    ];
    inserts.sort_by_key(|(at, _)| *at);
    let mut out = Vec::with_capacity(text.len() + inserts.iter().map(|(_, s)| s.len()).sum::<usize>());
    let mut last = 0;
    for (at, block) in &inserts {
        out.extend_from_slice(&text[last..*at]);
        out.extend_from_slice(block.as_bytes());
        last = *at;
    }
    out.extend_from_slice(&text[last..]);
    out
}

/// The marker line and every begin…end block removed; `None` if the blocks are unbalanced.
fn strip(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut in_block = false;
    for line in text.split_inclusive(|&b| b == b'\n') {
        let trimmed = trim_line_start(line);
        if in_block {
            if trimmed.starts_with(BLOCK_END.as_bytes()) {
                in_block = false;
            }
        } else if trimmed.starts_with(BLOCK_BEGIN.as_bytes()) {
            in_block = true;
        } else if trimmed.starts_with(BLOCK_END.as_bytes()) {
            return None;
        } else if trimmed.starts_with(MARKER_PREFIX.as_bytes()) {
            if line.starts_with(BOM) {
                out.extend_from_slice(BOM);
            }
        } else {
            out.extend_from_slice(line);
        }
    }
    (!in_block).then_some(out)
}

/// The current patch applied to `original`, checked to strip back to it exactly.
fn build_patched(path: &Path, original: &[u8]) -> Result<Vec<u8>, PatchError> {
    let anchors = locate(original).map_err(|problem| match problem {
        AnchorProblem::Missing(missing) => PatchError::Unrecognised { path: path.to_path_buf(), missing },
        AnchorProblem::Foreign(evidence) => PatchError::ForeignPatch { path: path.to_path_buf(), evidence },
    })?;
    let patched = apply(original, &anchors);
    let round_trips = strip(&patched).as_deref() == Some(original);
    if !round_trips || marker_version(&patched) != Ok(Some(PATCH_VERSION)) {
        return Err(PatchError::SelfCheck { path: path.to_path_buf() });
    }
    Ok(patched)
}

/// The stock text behind a patched script: the backup if it is stock, else the patched
/// text with its blocks cut out. The flag says whether it came from the backup.
fn original_of(script: &Path, backup: &Path, current: &[u8]) -> Result<(Vec<u8>, bool), PatchError> {
    if let Some(saved) = read_opt(backup)?
        && marker_version(&saved) == Ok(None)
    {
        return Ok((saved, true));
    }
    match strip(current) {
        Some(stripped) if marker_version(&stripped) == Ok(None) => Ok((stripped, false)),
        _ => Err(PatchError::OriginalLost { path: script.to_path_buf(), backup: backup.to_path_buf() }),
    }
}

// ---------------------------------------------------------------------------------------
// File system.

fn io_err(op: &'static str, path: &Path, source: io::Error) -> PatchError {
    if source.kind() == io::ErrorKind::PermissionDenied {
        PatchError::NeedsAdmin { path: path.to_path_buf(), source }
    } else {
        PatchError::Io { op, path: path.to_path_buf(), source }
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, PatchError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// Writes `data` to a temporary file beside `target` and renames it over `target`, so
/// readers see either the old or the new text. On Unix the permissions of `like` are kept.
fn write_atomic(target: &Path, data: &[u8], like: &Path) -> Result<(), PatchError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = target.parent().unwrap_or_else(|| Path::new(""));
    let name = target.file_name().map_or_else(|| SCRIPT_FILE_NAME.into(), |n| n.to_string_lossy());
    let tmp =
        dir.join(format!(".{name}.flatrender-tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        drop(file);
        #[cfg(unix)]
        if let Ok(meta) = fs::metadata(like) {
            fs::set_permissions(&tmp, meta.permissions())?;
        }
        #[cfg(not(unix))]
        let _ = like;
        fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", target, e));
    }
    #[cfg(unix)]
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A synthetic stand-in for Adobe's script, written for these tests: same method
    /// names, flag loop and render order as the real one, none of its text.
    const STOCK: &str = include_str!("../../tests/fixtures/commandLineRenderer.synthetic.jsx");

    struct Install {
        _dir: tempfile::TempDir,
        aerender: PathBuf,
    }

    impl Install {
        fn new(script: Option<&[u8]>) -> Install {
            let dir = tempfile::tempdir().expect("tempdir");
            let aerender = dir.path().join("Support Files").join("aerender.exe");
            let install = Install { _dir: dir, aerender };
            if let Some(text) = script {
                let path = install.script();
                fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                fs::write(&path, text).expect("write fixture");
            }
            install
        }
        fn script(&self) -> PathBuf {
            script_path(&self.aerender)
        }
        fn backup(&self) -> PathBuf {
            backup_path(&self.aerender)
        }
        fn read(&self) -> Vec<u8> {
            fs::read(self.script()).expect("read script")
        }
        fn startup_entries(&self) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(self.script().parent().expect("parent"))
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn patched_text_of(original: &[u8]) -> Vec<u8> {
        build_patched(Path::new("x"), original).expect("patchable")
    }

    #[test]
    fn script_sits_beside_aerender() {
        assert_eq!(
            script_path(Path::new("/Applications/Adobe After Effects 2024/aerender")),
            PathBuf::from("/Applications/Adobe After Effects 2024/Scripts/Startup/commandLineRenderer.jsx")
        );
        assert_eq!(
            backup_path(Path::new("/x/aerender")),
            PathBuf::from("/x/Scripts/Startup/commandLineRenderer.jsx.flatrender-original")
        );
    }

    #[test]
    fn missing_script_is_nothing_to_patch() {
        let ae = Install::new(None);
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Missing);
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::NothingToPatch);
        assert!(!unpatch(&ae.aerender).expect("unpatch"));
    }

    #[test]
    fn stock_is_detected() {
        let ae = Install::new(Some(STOCK.as_bytes()));
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Stock);
    }

    #[test]
    fn patches_stock_and_keeps_backup() {
        let ae = Install::new(Some(STOCK.as_bytes()));
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::Patched);
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Patched { version: 1 });
        assert_eq!(fs::read(ae.backup()).expect("backup"), STOCK.as_bytes());
        assert_eq!(
            ae.startup_entries(),
            vec!["commandLineRenderer.jsx".to_string(), "commandLineRenderer.jsx.flatrender-original".to_string()]
        );

        let text = String::from_utf8(ae.read()).expect("utf8");
        assert!(text.starts_with("// flatrender-patch: v1 "));
        // -r goes through the stock value reader, so a missing value is a syntax error.
        let flag = text.find("if (my_flag == \"-r\") {").expect("flag check");
        let value =
            text.find("this.flatrender_script_path = this.GetValueForFlag(arg_num + 1, my_flag);").expect("value read");
        let unknown = text.find("if (num_args_parsed == 0)").expect("unknown");
        assert!(flag < value && value < unknown);
        // The script runs after the project opens and before the RQ item is chosen.
        let open = text.find("app.openFast").expect("open");
        let run = text.find("$.evalFile(flatrender_file);").expect("run");
        let rqi = text.find("var rqi = null;").expect("rqi");
        assert!(open < run && run < rqi);
        assert!(text.contains("\"Running Script: \" + flatrender_script"));
        assert!(text.contains("\"aerender ERROR: Error executing script: \" + flatrender_script"));
        assert!(text.contains("this.SetExitCodeAndThrowException(this.EXIT_AE_RUNTIME, this.MSG_AE_RUNTIME);"));
        // Reset for aerender -reuse, inside the argument loop function.
        let parse_in = text.find("function my_ParseInArgs(").expect("parse in");
        let reset = text.find("this.flatrender_script_path = null;").expect("reset");
        let loop_start = text.find("var arg_num = 0;").expect("loop");
        assert!(parse_in < reset && reset < loop_start);
        // Inserted code takes the anchor's indentation.
        assert!(text.contains("\n        if (my_flag == \"-r\") {\n            this.flatrender"));
        assert!(text.contains("\n            if (this.flatrender_script_path) {\n"));
    }

    #[test]
    fn second_run_is_already_current_and_byte_identical() {
        let ae = Install::new(Some(STOCK.as_bytes()));
        ensure_patched(&ae.aerender).expect("first");
        let first = ae.read();
        assert_eq!(ensure_patched(&ae.aerender).expect("second"), PatchOutcome::AlreadyCurrent);
        assert_eq!(ae.read(), first);
        assert_eq!(fs::read(ae.backup()).expect("backup"), STOCK.as_bytes());
    }

    fn v0_text() -> String {
        STOCK
            .replacen(
                "// Synthetic",
                "// flatrender-patch: v0\n// Synthetic",
                1,
            )
            .replacen(
                "        if (num_args_parsed == 0) {",
                "        // flatrender-patch begin\n        if (my_flag == \"-r\") { this.old = 1; num_args_parsed = 2; }\n        // flatrender-patch end\n        if (num_args_parsed == 0) {",
                1,
            )
    }

    #[test]
    fn older_patch_is_upgraded_from_the_backup() {
        let ae = Install::new(Some(v0_text().as_bytes()));
        fs::write(ae.backup(), STOCK).expect("backup");
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Patched { version: 0 });
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::Upgraded { from: 0 });
        assert_eq!(ae.read(), patched_text_of(STOCK.as_bytes()));
        assert!(!String::from_utf8(ae.read()).expect("utf8").contains("this.old"));
        assert_eq!(fs::read(ae.backup()).expect("backup"), STOCK.as_bytes());
    }

    #[test]
    fn older_patch_without_backup_is_upgraded_by_stripping() {
        let ae = Install::new(Some(v0_text().as_bytes()));
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::Upgraded { from: 0 });
        assert_eq!(ae.read(), patched_text_of(STOCK.as_bytes()));
        assert_eq!(fs::read(ae.backup()).expect("backup"), STOCK.as_bytes());
    }

    #[test]
    fn crlf_stays_crlf() {
        let crlf = format!("\u{feff}{}", STOCK.replace('\n', "\r\n"));
        let ae = Install::new(Some(crlf.as_bytes()));
        ensure_patched(&ae.aerender).expect("ensure");
        let text = ae.read();
        assert!(text.starts_with(BOM), "BOM stays first");
        let lf = text.iter().filter(|&&b| b == b'\n').count();
        let crlf_count = text.windows(2).filter(|w| w == b"\r\n").count();
        assert_eq!(lf, crlf_count, "every line ends with CRLF");
        assert!(lf > STOCK.lines().count());
        assert!(unpatch(&ae.aerender).expect("unpatch"));
        assert_eq!(ae.read(), crlf.as_bytes());
    }

    #[test]
    fn unrecognised_script_is_refused_and_untouched() {
        let odd = "// some other renderer\nfunction main() { render(); }\nmain();\n";
        let ae = Install::new(Some(odd.as_bytes()));
        let err = ensure_patched(&ae.aerender).expect_err("refused");
        match &err {
            PatchError::Unrecognised { missing, .. } => {
                assert!(missing.iter().any(|m| m.contains("my_ParseParamStartingAt")));
                assert!(missing.iter().any(|m| m.contains("my_ReallyRender")));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("left untouched"));
        assert_eq!(ae.read(), odd.as_bytes());
        assert_eq!(ae.startup_entries(), vec!["commandLineRenderer.jsx".to_string()]);
    }

    #[test]
    fn project_must_open_before_the_script_anchor() {
        let reordered = STOCK.replace("app.openFast(", "app.later(");
        let ae = Install::new(Some(reordered.as_bytes()));
        let err = ensure_patched(&ae.aerender).expect_err("refused");
        assert!(err.to_string().contains("app.open"), "{err}");
        assert_eq!(ae.read(), reordered.as_bytes());
    }

    #[test]
    fn another_tools_patch_is_refused() {
        let foreign = STOCK.replacen(
            "        if (num_args_parsed == 0) {",
            "        if (my_flag == \"-r\") {\n            num_args_parsed = 2;\n        }\n        if (num_args_parsed == 0) {",
            1,
        );
        let ae = Install::new(Some(foreign.as_bytes()));
        let err = ensure_patched(&ae.aerender).expect_err("refused");
        assert!(matches!(err, PatchError::ForeignPatch { .. }), "{err:?}");
        assert_eq!(ae.read(), foreign.as_bytes());
        assert_eq!(ae.startup_entries(), vec!["commandLineRenderer.jsx".to_string()]);
    }

    #[cfg(unix)]
    #[test]
    fn read_only_folder_asks_for_admin_rights() {
        use std::os::unix::fs::PermissionsExt;
        let ae = Install::new(Some(STOCK.as_bytes()));
        let startup = ae.script().parent().expect("parent").to_path_buf();
        fs::set_permissions(&startup, fs::Permissions::from_mode(0o555)).expect("chmod");
        let probe = startup.join("probe");
        if fs::write(&probe, b"").is_ok() {
            // Running as root (or on a file system without permissions): nothing to test.
            let _ = fs::remove_file(&probe);
            fs::set_permissions(&startup, fs::Permissions::from_mode(0o755)).expect("chmod");
            eprintln!("skipped: permissions are not enforced for this user");
            return;
        }
        let result = ensure_patched(&ae.aerender);
        fs::set_permissions(&startup, fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = result.expect_err("denied");
        assert!(matches!(err, PatchError::NeedsAdmin { .. }), "{err:?}");
        assert!(err.to_string().contains("administrator rights are needed once"));
        assert_eq!(ae.read(), STOCK.as_bytes());
        assert_eq!(ae.startup_entries(), vec!["commandLineRenderer.jsx".to_string()]);
    }

    #[test]
    fn unpatch_restores_the_original() {
        let mut stock = STOCK.as_bytes().to_vec();
        stock.extend_from_slice(b"// \xA9 not UTF-8\n");
        let ae = Install::new(Some(&stock));
        ensure_patched(&ae.aerender).expect("ensure");
        assert_ne!(ae.read(), stock);
        assert!(unpatch(&ae.aerender).expect("unpatch"));
        assert_eq!(ae.read(), stock);
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Stock);
        assert_eq!(ae.startup_entries(), vec!["commandLineRenderer.jsx".to_string()]);
        assert!(!unpatch(&ae.aerender).expect("second unpatch"));
    }

    #[test]
    fn unpatch_without_backup_strips_the_blocks() {
        let ae = Install::new(Some(STOCK.as_bytes()));
        ensure_patched(&ae.aerender).expect("ensure");
        fs::remove_file(ae.backup()).expect("rm backup");
        assert!(unpatch(&ae.aerender).expect("unpatch"));
        assert_eq!(ae.read(), STOCK.as_bytes());
    }

    #[test]
    fn newer_patch_is_left_alone() {
        let newer = v0_text().replace("flatrender-patch: v0", "flatrender-patch: v99");
        let ae = Install::new(Some(newer.as_bytes()));
        assert_eq!(inspect(&ae.aerender).expect("inspect"), PatchState::Patched { version: 99 });
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::NewerPatchPresent { version: 99 });
        assert_eq!(ae.read(), newer.as_bytes());
        assert_eq!(ae.startup_entries(), vec!["commandLineRenderer.jsx".to_string()]);
    }

    #[test]
    fn malformed_marker_is_reported() {
        let bad = format!("// flatrender-patch: vX\n{STOCK}");
        let ae = Install::new(Some(bad.as_bytes()));
        assert!(matches!(inspect(&ae.aerender), Err(PatchError::MalformedMarker { .. })));
    }

    #[test]
    fn stock_refresh_after_an_after_effects_update() {
        let ae = Install::new(Some(STOCK.as_bytes()));
        fs::write(ae.backup(), "// an older stock script\n").expect("old backup");
        assert_eq!(ensure_patched(&ae.aerender).expect("ensure"), PatchOutcome::Patched);
        assert_eq!(fs::read(ae.backup()).expect("backup"), STOCK.as_bytes());
    }
}
