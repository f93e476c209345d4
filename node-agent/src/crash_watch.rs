//! Watches After Effects / aerender crash-report folders so that a crash
//! report can be attached to the CrashReport message of the task that crashed.
//!
//! Flow: the agent starts one [`CrashWatch`] for the node. When an aerender run
//! ends abnormally (crash, or a hang killed by the watchdog) it calls
//! [`CrashWatch::reports_since`] with the instant that run started. The watch
//! hands out every report file created or modified since then, once the crash
//! reporter has stopped writing to it. Each file is handed out only once, so two
//! tasks ending together never both claim one report. With several slots, a
//! report goes to the run it names: each run's renderer pid is noted when it
//! starts ([`CrashWatch::note_run`]); a report whose name or text names a pid
//! (`Process: aerender [pid]`, `Parent Process: … [pid]`, `"pid" : pid`,
//! `"parentPid" : pid`, `AfterFX.exe.<pid>.dmp`) goes to the run of that pid,
//! and the earliest one that names no noted run's pid goes to the first crashed
//! run that asks ([`CrashWatch::reports_for`]). Only the renderer's own pid is
//! noted: a report of a process it started (After Effects under aerender on
//! Windows) is attributed only through its parent pid, where the report has one.
//!
//! Default folders (see [`default_dirs`]) and where they come from:
//! - macOS: `~/Library/Logs/DiagnosticReports` (per-user ReportCrash output,
//!   `.crash` before macOS 12, `.ips` from 12 on) and
//!   `/Library/Logs/DiagnosticReports` (processes in the system launchd
//!   context, i.e. an agent run as a LaunchDaemon; admin-readable only) — the
//!   ReportCrash(8) man page, <https://www.unix.com/man-page/osx/8/reportcrash>.
//!   `~/Library/Logs/CrashReporter` is the older place Adobe's Photoshop KB
//!   still names (<https://helpx.adobe.com/dk/photoshop/kb/interpret-crash-report.html>);
//!   on current systems it points at DiagnosticReports, duplicates are removed.
//! - Windows: `%LOCALAPPDATA%\CrashDumps` — Windows Error Reporting's default
//!   `DumpFolder` (`AfterFX.exe.<pid>.dmp`, binary minidumps; only written when
//!   the `LocalDumps` registry key is set), Microsoft "Collecting User-Mode
//!   Dumps", <https://learn.microsoft.com/en-us/windows/win32/wer/collecting-user-mode-dumps>.
//!   `%APPDATA%\Adobe\CRLogs` — Adobe Crash Reporter logs; not in Adobe's docs,
//!   only in Adobe cache-cleanup scripts, so treat it as best effort.
//! - Linux: none (there is no After Effects); the simulator's folder is passed
//!   explicitly.
//!
//! `%APPDATA%\Adobe\After Effects\<ver>` and `~/Library/Logs/Adobe/After Effects`
//! are deliberately not defaults: every file under an "After Effects" folder
//! counts as a report, and those folders hold preferences and ordinary logs
//! that change on every run. Pass them explicitly if a site wants them.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};
use notify::{Event, RecommendedWatcher, RecursiveMode, Watcher};
use tracing::{debug, warn};

/// Most bytes of report text kept in memory and sent (CrashReport.report_text).
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Most characters of the one-line summary (CrashReport.message).
pub const MAX_SUMMARY_CHARS: usize = 500;
/// How many report files are remembered; older ones are forgotten first.
const MAX_TRACKED: usize = 64;
/// `reports_since` never waits longer than `settle` times this.
const MAX_SETTLE_FACTOR: u32 = 10;
/// File-system timestamps come from a coarse clock that can lag the real one
/// by a few milliseconds; the catch-up sweep allows for that.
const MTIME_SLACK: Duration = Duration::from_millis(50);
/// Bounds on the catch-up sweep so a huge folder cannot stall a call.
const SWEEP_MAX_DEPTH: usize = 4;
const SWEEP_MAX_ENTRIES: usize = 4096;
/// Bytes inspected to tell a binary dump from text.
const BINARY_SNIFF: usize = 8192;
/// How many runs' pids are remembered for attributing reports.
const MAX_RUNS: usize = 64;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CrashWatchError {
    /// The platform file watcher could not be created (e.g. inotify instance limit).
    #[error("cannot create the crash-report watcher: {0}")]
    Watcher(#[from] notify::Error),
    /// A report file could not be read.
    #[error("cannot read crash report {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The blocking reader task panicked or was cancelled.
    #[error("crash-report reader task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One crash-report file, read for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashFile {
    pub path: PathBuf,
    /// Full size on disk in bytes (not the size of `text`).
    pub size: u64,
    pub modified: SystemTime,
    /// At most [`MAX_TEXT_BYTES`] bytes of the report, lossy UTF-8 (UTF-16LE with
    /// a BOM is decoded too), cut on a char boundary. Empty for binary dumps.
    pub text: String,
    /// First meaningful line, at most [`MAX_SUMMARY_CHARS`] characters; for a
    /// binary dump a generated line naming the file.
    pub summary: String,
    /// `text` does not hold the whole file: upload the file separately.
    pub truncated: bool,
    /// The file is binary (e.g. a WER `.dmp`); `text` is empty, `truncated` set.
    pub binary: bool,
}

/// Watches crash-report folders; see the module docs.
pub struct CrashWatch {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CrashWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrashWatch").field("dirs", &self.watched_dirs()).finish()
    }
}

struct Inner {
    watcher: Mutex<RecommendedWatcher>,
    dirs: Mutex<Dirs>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Dirs {
    watched: Vec<PathBuf>,
    /// Not existing yet, gone again, or failed to watch: retried on refresh.
    pending: Vec<PathBuf>,
    /// Folders whose watch failure was already logged at warn level.
    warned: HashSet<PathBuf>,
}

/// State written by the watcher's event thread and read by callers.
struct Shared {
    files: Mutex<VecDeque<Seen>>,
    /// The renderer pids of recent runs, newest last.
    runs: Mutex<VecDeque<u32>>,
    /// The watcher reports errors per event; warn on the first only.
    event_error_logged: AtomicBool,
    #[cfg(test)]
    changed: tokio::sync::watch::Sender<u64>,
}

struct Seen {
    path: PathBuf,
    last_change: Instant,
    handed_out: bool,
}

/// Locks, ignoring poisoning: the guarded data stays consistent between
/// statements, so a panic elsewhere must not disable crash reporting.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The default crash-report folders for this OS, from HOME / APPDATA /
/// LOCALAPPDATA. Folders that do not exist yet are fine: they are watched once
/// they appear (WER creates `CrashDumps` with its first dump).
pub fn default_dirs() -> Vec<PathBuf> {
    let env_dir = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    let mut dirs = Vec::new();
    if cfg!(target_os = "macos") {
        if let Some(home) = env_dir("HOME") {
            dirs.push(home.join("Library/Logs/DiagnosticReports"));
            dirs.push(home.join("Library/Logs/CrashReporter"));
        }
        dirs.push(PathBuf::from("/Library/Logs/DiagnosticReports"));
    } else if cfg!(windows) {
        if let Some(local) = env_dir("LOCALAPPDATA") {
            dirs.push(local.join("CrashDumps"));
        }
        if let Some(roaming) = env_dir("APPDATA") {
            dirs.push(roaming.join("Adobe").join("CRLogs"));
        }
    }
    dirs
}

/// Does this path look like an After Effects / aerender crash report?
/// Case-insensitive: the name contains "afterfx", "after effects" or
/// "aerender", or a parent folder's name contains "after effects" (Adobe nests
/// per version). Hidden, backup and temporary names are skipped: reporters
/// often write those first and rename when done.
pub fn is_crash_report(path: &Path) -> bool {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_lowercase()) else {
        return false;
    };
    let temporary = name.starts_with('.')
        || name.starts_with('~')
        || name.ends_with('~')
        || [".tmp", ".temp", ".part", ".partial", ".lock", ".swp"].iter().any(|ext| name.ends_with(ext));
    if temporary {
        return false;
    }
    if ["afterfx", "after effects", "aerender"].iter().any(|k| name.contains(k)) {
        return true;
    }
    path.parent().is_some_and(|parent| {
        parent.components().any(|c| c.as_os_str().to_string_lossy().to_lowercase().contains("after effects"))
    })
}

impl CrashWatch {
    /// Starts watching `dirs` recursively with notify's recommended watcher.
    /// Missing folders are watched once they exist (see [`Self::refresh`]); a
    /// folder that cannot be watched is logged once, skipped, and retried quietly
    /// on later refreshes. Fails only when
    /// the watcher itself cannot be created.
    pub fn start(dirs: Vec<PathBuf>) -> Result<CrashWatch, CrashWatchError> {
        let shared = Arc::new(Shared {
            files: Mutex::new(VecDeque::new()),
            runs: Mutex::new(VecDeque::new()),
            event_error_logged: AtomicBool::new(false),
            #[cfg(test)]
            changed: tokio::sync::watch::Sender::new(0),
        });
        let handler_state = Arc::clone(&shared);
        let watcher = notify::recommended_watcher(move |res: notify::Result<Event>| match res {
            Ok(event) => handler_state.on_event(event),
            Err(err) => handler_state.on_event_error(&err),
        })?;

        // The same folder may be named twice (e.g. CrashReporter linking to
        // DiagnosticReports); watching both would report each file twice.
        let mut seen = HashSet::new();
        let pending =
            dirs.into_iter().filter(|d| seen.insert(std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()))).collect();
        let watch = CrashWatch {
            inner: Arc::new(Inner {
                watcher: Mutex::new(watcher),
                dirs: Mutex::new(Dirs { pending, ..Dirs::default() }),
                shared,
            }),
        };
        watch.refresh();
        Ok(watch)
    }

    /// Watches configured folders that have appeared since the last call, and
    /// re-queues watched ones that were removed. Returns how many folders
    /// started being watched. Blocking file-system work: in async code prefer
    /// letting [`Self::reports_since`] call it (it does, off the async thread).
    pub fn refresh(&self) -> usize {
        self.inner.refresh()
    }

    /// Folders currently watched.
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        lock(&self.inner.dirs).watched.clone()
    }

    /// The report files created or modified after `since` that no earlier call
    /// handed out, once none of them has changed for `settle` (reporters write
    /// in pieces). If no report has shown up yet it waits one `settle` for the
    /// first; it never waits longer than `settle` × 10 in total, returning what
    /// it has then. Files are claimed when returned and never returned again.
    /// Needs a Tokio runtime with time enabled. Unreadable files are logged and
    /// skipped.
    pub async fn reports_since(&self, since: Instant, settle: Duration) -> Vec<CrashFile> {
        self.reports_for(since, settle, None).await
    }

    /// Notes that a renderer run with process id `pid` started: reports that name it go to
    /// that run only.
    pub fn note_run(&self, pid: u32) {
        let mut runs = lock(&self.inner.shared.runs);
        if runs.len() >= MAX_RUNS {
            runs.pop_front();
        }
        runs.push_back(pid);
    }

    /// [`Self::reports_since`] for the run of renderer `pid`: the reports that name `pid`, or
    /// when none does, those that name no other noted run's pid.
    pub async fn reports_for(&self, since: Instant, settle: Duration, pid: Option<u32>) -> Vec<CrashFile> {
        self.settled(since, settle).await;
        let candidates = self.inner.shared.unclaimed(since);
        if candidates.is_empty() {
            return Vec::new();
        }
        let read = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter_map(|path| match read_crash_file_blocking(&path) {
                    Ok(file) => Some(file),
                    Err(err) => {
                        warn!(error = %err, "skipping crash report");
                        None
                    }
                })
                .collect::<Vec<_>>()
        })
        .await;
        let files = match read {
            Ok(files) => files,
            Err(err) => {
                warn!(error = %err, "crash-report reader task failed");
                return Vec::new();
            }
        };
        let others: HashSet<u32> = lock(&self.inner.shared.runs).iter().copied().filter(|p| Some(*p) != pid).collect();
        let named: Vec<HashSet<u32>> = files.iter().map(mentioned_pids).collect();
        let mine: Vec<bool> = named.iter().map(|n| pid.is_some_and(|pid| n.contains(&pid))).collect();
        let unclaimed_by_others: Vec<bool> = named.iter().map(|n| n.is_disjoint(&others)).collect();
        let keep: Vec<bool> = if mine.contains(&true) {
            mine
        } else if pid.is_some() {
            // A crashed run takes only the earliest report that names nobody: another run
            // crashing at the same time may own the next.
            let earliest = (0..files.len()).filter(|i| unclaimed_by_others[*i]).min_by_key(|i| files[*i].modified);
            (0..files.len()).map(|i| Some(i) == earliest).collect()
        } else {
            unclaimed_by_others
        };
        let chosen: Vec<CrashFile> = files.into_iter().zip(keep).filter_map(|(f, keep)| keep.then_some(f)).collect();
        let claimed = self.inner.shared.claim(chosen.iter().map(|f| f.path.as_path()));
        let mut files: Vec<CrashFile> = chosen.into_iter().filter(|f| claimed.contains(&f.path)).collect();
        files.sort_by_key(|f| f.modified);
        files
    }

    /// Waits until no report changed after `since` has changed for `settle` (at most `settle`
    /// × 10, and one `settle` for a first report to show up).
    async fn settled(&self, since: Instant, settle: Duration) {
        let start = Instant::now();
        let hard_deadline = start + settle.saturating_mul(MAX_SETTLE_FACTOR);
        loop {
            // Catches folders that appeared and events the watcher missed
            // (new subfolder races, queue overflow) before deciding to stop.
            self.catch_up(since).await;
            let target = match self.inner.shared.latest_change(since) {
                Some(latest) => latest + settle,
                None => start + settle,
            }
            .min(hard_deadline);
            if Instant::now() >= target {
                return;
            }
            tokio::time::sleep_until(target.into()).await;
        }
    }

    /// Refresh plus sweep, off the async thread.
    async fn catch_up(&self, since: Instant) {
        let inner = Arc::clone(&self.inner);
        if let Err(err) = tokio::task::spawn_blocking(move || {
            inner.refresh();
            inner.sweep(since);
        })
        .await
        {
            warn!(error = %err, "crash-report folder sweep failed");
        }
    }

    /// Test hook: waits until the watcher has recorded `path`.
    #[cfg(test)]
    async fn wait_seen(&self, path: &Path, timeout: Duration) -> bool {
        let mut rx = self.inner.shared.changed.subscribe();
        let known = |p: &Path| lock(&self.inner.shared.files).iter().any(|s| s.path == p);
        tokio::time::timeout(timeout, async {
            loop {
                rx.borrow_and_update();
                if known(path) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
            && known(path)
    }
}

impl Inner {
    fn refresh(&self) -> usize {
        let mut dirs = lock(&self.dirs);
        let mut watcher = lock(&self.watcher);
        let (still, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut dirs.watched).into_iter().partition(|d| d.is_dir());
        dirs.watched = still;
        for dir in gone {
            // The OS watch died with the folder; dropping ours may fail, harmlessly.
            let _ = watcher.unwatch(&dir);
            debug!(dir = %dir.display(), "crash-report folder removed; waiting for it again");
            dirs.pending.push(dir);
        }
        let mut added = 0;
        for dir in std::mem::take(&mut dirs.pending) {
            if !dir.is_dir() {
                dirs.pending.push(dir);
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::Recursive) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "watching crash-report folder");
                    added += 1;
                    dirs.watched.push(dir);
                }
                Err(err) => {
                    if dirs.warned.insert(dir.clone()) {
                        warn!(dir = %dir.display(), error = %err,
                            "cannot watch crash-report folder; skipping it");
                    } else {
                        debug!(dir = %dir.display(), error = %err, "still cannot watch");
                    }
                    dirs.pending.push(dir);
                }
            }
        }
        added
    }

    /// Records reports under the watched folders whose mtime is after `since`
    /// but which no event announced. Stamped "now": they were just seen.
    fn sweep(&self, since: Instant) {
        let roots = lock(&self.dirs).watched.clone();
        let since_wall = SystemTime::now().checked_sub(since.elapsed() + MTIME_SLACK).unwrap_or(SystemTime::UNIX_EPOCH);
        for root in roots {
            let mut stack = vec![(root, 0usize)];
            let mut visited = 0usize;
            while let Some((dir, depth)) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    visited += 1;
                    if visited > SWEEP_MAX_ENTRIES {
                        stack.clear();
                        break;
                    }
                    let path = entry.path();
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        if depth < SWEEP_MAX_DEPTH {
                            stack.push((path, depth + 1));
                        }
                    } else if meta.is_file() && meta.modified().is_ok_and(|m| m >= since_wall) && is_crash_report(&path)
                    {
                        self.shared.record_if_unknown(path);
                    }
                }
            }
        }
    }
}

impl Shared {
    fn on_event(&self, event: Event) {
        let now = Instant::now();
        match event.kind {
            // Our own reads and attribute changes (atime) are not writes.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => self.touch_all(&event, now),
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => {}
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                event.paths.iter().for_each(|p| self.forget(p));
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let [from, to, ..] = event.paths.as_slice() {
                    self.forget(from);
                    self.touch(to, now);
                }
            }
            // Other renames (To, Any) carry the path that exists now, or not.
            EventKind::Modify(ModifyKind::Name(_)) => {
                for p in &event.paths {
                    if p.exists() {
                        self.touch(p, now);
                    } else {
                        self.forget(p);
                    }
                }
            }
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => {
                self.touch_all(&event, now)
            }
        }
    }

    fn on_event_error(&self, err: &notify::Error) {
        if self.event_error_logged.swap(true, Ordering::Relaxed) {
            debug!(error = %err, "crash-report watcher error");
        } else {
            warn!(error = %err, "crash-report watcher error (further ones logged at debug)");
        }
    }

    fn touch_all(&self, event: &Event, at: Instant) {
        event.paths.iter().for_each(|p| self.touch(p, at));
    }

    fn touch(&self, path: &Path, at: Instant) {
        // is_file also drops folders that sit under an "After Effects" folder.
        if !is_crash_report(path) || !path.is_file() {
            return;
        }
        {
            let mut files = lock(&self.files);
            if let Some(seen) = files.iter_mut().find(|s| s.path == path) {
                if !seen.handed_out && at > seen.last_change {
                    seen.last_change = at;
                }
            } else {
                push_bounded(&mut files, path.to_path_buf(), at);
            }
        }
        self.notify_changed();
    }

    fn record_if_unknown(&self, path: PathBuf) {
        {
            let mut files = lock(&self.files);
            if files.iter().any(|s| s.path == path) {
                return;
            }
            push_bounded(&mut files, path, Instant::now());
        }
        self.notify_changed();
    }

    fn forget(&self, path: &Path) {
        lock(&self.files).retain(|s| s.path != path);
    }

    #[cfg(test)]
    fn notify_changed(&self) {
        self.changed.send_modify(|g| *g = g.wrapping_add(1));
    }

    #[cfg(not(test))]
    fn notify_changed(&self) {}

    fn latest_change(&self, since: Instant) -> Option<Instant> {
        lock(&self.files).iter().filter(|s| !s.handed_out && s.last_change > since).map(|s| s.last_change).max()
    }

    /// The reports changed after `since` that nobody claimed yet.
    fn unclaimed(&self, since: Instant) -> Vec<PathBuf> {
        lock(&self.files).iter().filter(|s| !s.handed_out && s.last_change > since).map(|s| s.path.clone()).collect()
    }

    /// Marks `paths` handed out and returns those nobody claimed before, under one lock so
    /// concurrent callers never get the same file.
    fn claim<'a>(&self, paths: impl Iterator<Item = &'a Path>) -> HashSet<PathBuf> {
        let mut files = lock(&self.files);
        let mut claimed = HashSet::new();
        for path in paths {
            if let Some(seen) = files.iter_mut().find(|s| s.path == path && !s.handed_out) {
                seen.handed_out = true;
                claimed.insert(seen.path.clone());
            }
        }
        claimed
    }
}

/// The process ids a report names: at the end of its file name as Windows Error
/// Reporting (`AfterFX.exe.4242.dmp`) and the simulator (`aerender-sim_<ms>_4242.crash`)
/// write them, as `[pid]` (`Process: aerender [4242]`, `Parent Process: …`) or as the
/// `"pid"` and `"parentPid"` fields of an `.ips` report. Dates and times in names
/// (`After Effects-2026-12-01-093015.ips`) are not taken for pids.
fn mentioned_pids(file: &CrashFile) -> HashSet<u32> {
    let mut pids = HashSet::new();
    let named = |ext: &str, separator: char| -> Option<u32> {
        if file.path.extension()?.to_str()? != ext {
            return None;
        }
        let (_, last) = file.path.file_stem()?.to_str()?.rsplit_once(separator)?;
        let digits = !last.is_empty() && last.len() <= 7 && last.bytes().all(|b| b.is_ascii_digit());
        if digits { last.parse().ok() } else { None }
    };
    pids.extend(named("dmp", '.'));
    pids.extend(named("crash", '_'));
    let text = file.text.as_str();
    let digits_at = |rest: &str| -> Option<u32> {
        let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    for (at, _) in text.match_indices('[') {
        let rest = &text[at + 1..];
        if let Some(pid) =
            digits_at(rest).filter(|_| rest.trim_start_matches(|c: char| c.is_ascii_digit()).starts_with(']'))
        {
            pids.insert(pid);
        }
    }
    for key in ["\"pid\"", "\"parentPid\""] {
        for (at, _) in text.match_indices(key) {
            let rest = text[at + key.len()..].trim_start();
            if let Some(value) = rest.strip_prefix(':') {
                pids.extend(digits_at(value.trim_start()));
            }
        }
    }
    pids.retain(|pid| *pid > 1);
    pids
}

/// Adds an entry; when full, forgets a handed-out entry first, else the oldest.
fn push_bounded(files: &mut VecDeque<Seen>, path: PathBuf, at: Instant) {
    if files.len() >= MAX_TRACKED {
        let victim = files.iter().position(|s| s.handed_out).unwrap_or(0);
        files.remove(victim);
    }
    files.push_back(Seen { path, last_change: at, handed_out: false });
}

/// Reads one report file (off the async thread) as [`CrashFile`].
pub async fn read_crash_file(path: PathBuf) -> Result<CrashFile, CrashWatchError> {
    tokio::task::spawn_blocking(move || read_crash_file_blocking(&path)).await?
}

fn read_crash_file_blocking(path: &Path) -> Result<CrashFile, CrashWatchError> {
    let io_err = |source| CrashWatchError::Read { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(io_err(std::io::Error::other("not a regular file")));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).map_or(MAX_TEXT_BYTES, |n| n.min(MAX_TEXT_BYTES + 1)));
    // One byte past the limit tells "exactly full" from "cut".
    file.take(MAX_TEXT_BYTES as u64 + 1).read_to_end(&mut buf).map_err(io_err)?;
    let size = meta.len().max(buf.len() as u64);
    let modified = meta.modified().unwrap_or_else(|_| SystemTime::now());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();

    let utf16 = buf.starts_with(&[0xFF, 0xFE]);
    if !utf16 && buf.iter().take(BINARY_SNIFF).any(|&b| b == 0) {
        return Ok(CrashFile {
            path: path.to_path_buf(),
            size,
            modified,
            text: String::new(),
            summary: clip_chars(&format!("binary crash dump {name} ({size} bytes)")),
            truncated: size > 0,
            binary: true,
        });
    }
    let (text, truncated) = decode_text(buf, utf16);
    let summary = summarize(&text).unwrap_or_else(|| clip_chars(&format!("crash report {name}")));
    Ok(CrashFile { path: path.to_path_buf(), size, modified, text, summary, truncated, binary: false })
}

/// Decodes up to [`MAX_TEXT_BYTES`] (+1 sentinel) bytes into at most
/// [`MAX_TEXT_BYTES`] bytes of UTF-8, never splitting a character.
fn decode_text(mut buf: Vec<u8>, utf16: bool) -> (String, bool) {
    let mut truncated = buf.len() > MAX_TEXT_BYTES;
    buf.truncate(MAX_TEXT_BYTES);
    let mut text = if utf16 {
        let units = buf[2..].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]));
        let mut s: String = char::decode_utf16(units).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER)).collect();
        // A cut surrogate pair decodes to one replacement char at the end.
        if truncated && s.ends_with(char::REPLACEMENT_CHARACTER) {
            s.pop();
        }
        s
    } else {
        if truncated {
            // Drop a character the cut split, instead of turning it into U+FFFD.
            let keep = buf.len() - incomplete_utf8_tail(&buf);
            buf.truncate(keep);
        }
        match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    };
    if text.starts_with('\u{feff}') {
        text.drain(..'\u{feff}'.len_utf8());
    }
    // Replacement chars (3 bytes for 1 bad byte) or UTF-16 expansion can grow it.
    if text.len() > MAX_TEXT_BYTES {
        let cut = text.floor_char_boundary(MAX_TEXT_BYTES);
        text.truncate(cut);
        truncated = true;
    }
    (text, truncated)
}

/// Length of an unfinished multi-byte sequence at the end of `bytes` (0..=3).
fn incomplete_utf8_tail(bytes: &[u8]) -> usize {
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if needed > back { back } else { 0 };
    }
    0
}

/// First line with a letter or digit (skips blanks, rules, lone braces).
fn summarize(text: &str) -> Option<String> {
    text.lines().map(str::trim).find(|l| l.chars().any(char::is_alphanumeric)).map(clip_chars)
}

/// One line of at most [`MAX_SUMMARY_CHARS`] characters, control chars blanked.
fn clip_chars(line: &str) -> String {
    let clean = line.chars().map(|c| if c.is_control() { ' ' } else { c });
    if line.chars().count() <= MAX_SUMMARY_CHARS {
        clean.collect()
    } else {
        clean.take(MAX_SUMMARY_CHARS - 1).chain(std::iter::once('…')).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const SETTLE: Duration = Duration::from_millis(300);
    const SEEN_TIMEOUT: Duration = Duration::from_secs(5);

    fn start(dir: &Path) -> CrashWatch {
        let watch = CrashWatch::start(vec![dir.to_path_buf()]).expect("start watch");
        assert_eq!(watch.watched_dirs(), vec![dir.to_path_buf()]);
        watch
    }

    #[test]
    fn crash_watch_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<CrashWatch>();
    }

    #[test]
    fn name_filter() {
        assert!(is_crash_report(Path::new("/x/After Effects_2024-03-01-101010_mac.crash")));
        assert!(is_crash_report(Path::new("/x/aerender-2024-03-01-101010.ips")));
        assert!(is_crash_report(Path::new(r"C:\d\AfterFX.exe.4242.dmp")));
        assert!(is_crash_report(Path::new("/x/After Effects/24.2/log.txt")));
        assert!(!is_crash_report(Path::new("/x/notes.txt")));
        assert!(!is_crash_report(Path::new("/x/aerender.crash.tmp")));
        assert!(!is_crash_report(Path::new("/x/.aerender.ips")));
    }

    #[test]
    fn summary_skips_noise_and_clips() {
        assert_eq!(
            summarize("\n  \n-----\n{\n  Exception Type: EXC_BAD_ACCESS \r\nmore").as_deref(),
            Some("Exception Type: EXC_BAD_ACCESS")
        );
        let long = "é".repeat(800);
        let s = summarize(&long).expect("summary");
        assert_eq!(s.chars().count(), MAX_SUMMARY_CHARS);
        assert!(s.ends_with('…'));
    }

    // 1. After `since` returned with text and summary; before `since` not.
    #[tokio::test]
    async fn report_after_since_returned_and_before_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let staging = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());

        // Renamed in whole from outside: one event, so nothing about it can
        // arrive after `since` below.
        let staged = staging.path().join("old");
        std::fs::write(&staged, "Process: old crash\n").expect("write");
        let old = dir.path().join("After Effects_old.crash");
        std::fs::rename(&staged, &old).expect("rename");
        assert!(watch.wait_seen(&old, SEEN_TIMEOUT).await, "old report seen");

        let since = Instant::now();
        let path = dir.path().join("After Effects_2024-03-01-101010_node.crash");
        let body = "\n\n-------------------------------------\nProcess: After Effects [4242]\nPath: /Applications/x\n";
        std::fs::write(&path, body).expect("write");

        let files = watch.reports_since(since, SETTLE).await;
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].path, path);
        assert_eq!(files[0].text, body);
        assert_eq!(files[0].summary, "Process: After Effects [4242]");
        assert_eq!(files[0].size, body.len() as u64);
        assert!(!files[0].truncated && !files[0].binary);
    }

    // 2. Written in two parts with a pause shorter than settle: whole text.
    #[tokio::test]
    async fn report_written_in_two_parts_is_complete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        let path = dir.path().join("aerender_2024-03-01.ips");
        let writer_path = path.clone();
        let writer = tokio::spawn(async move {
            let mut f = File::create(&writer_path).expect("create");
            f.write_all(b"{\"app_name\":\"aerender\"}\n").expect("write 1");
            f.flush().expect("flush");
            // The pause is the scenario under test (a reporter writing in pieces).
            tokio::time::sleep(SETTLE / 2).await;
            f.write_all(b"{\"exception\":{\"type\":\"EXC_BAD_ACCESS\"}}\n").expect("write 2");
        });
        let files = watch.reports_since(since, SETTLE).await;
        writer.await.expect("writer");
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].text, "{\"app_name\":\"aerender\"}\n{\"exception\":{\"type\":\"EXC_BAD_ACCESS\"}}\n");
        assert_eq!(files[0].summary, "{\"app_name\":\"aerender\"}");
    }

    // 3. Non-crash file ignored; nested "After Effects/24.2" file taken.
    #[tokio::test]
    async fn filters_names_and_takes_nested_after_effects_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        let nested = dir.path().join("After Effects").join("24.2");
        std::fs::create_dir_all(&nested).expect("mkdir");
        std::fs::write(dir.path().join("notes.txt"), "not a crash\n").expect("write");
        let report = nested.join("crash_log.txt");
        std::fs::write(&report, "Crash in render thread\n").expect("write");

        let files = watch.reports_since(since, SETTLE).await;
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].path, report);
        assert_eq!(files[0].summary, "Crash in render thread");
    }

    // 4. A folder created after start is picked up after refresh().
    #[tokio::test]
    async fn folder_created_later_is_watched_after_refresh() {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("CrashDumps");
        let watch = CrashWatch::start(vec![dir.clone()]).expect("start");
        assert!(watch.watched_dirs().is_empty());
        assert_eq!(watch.refresh(), 0);

        std::fs::create_dir(&dir).expect("mkdir");
        assert_eq!(watch.refresh(), 1);
        assert_eq!(watch.watched_dirs(), vec![dir.clone()]);

        let path = dir.join("AfterFX.exe.4242.log");
        std::fs::write(&path, "AfterFX.exe faulted\n").expect("write");
        assert!(watch.wait_seen(&path, SEEN_TIMEOUT).await, "event from new folder");
        let files = watch.reports_since(Instant::now() - SETTLE, SETTLE).await;
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].summary, "AfterFX.exe faulted");
    }

    // 5. Larger than 256 KiB: cut on a char boundary, truncated, full size.
    #[tokio::test]
    async fn large_report_is_cut_on_char_boundary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        // "€" is 3 bytes; after the 1-byte header line the 256 KiB limit falls
        // inside a "€" (262_144 - 12 is not a multiple of 3).
        let mut body = String::from("Crash here\n");
        while body.len() < MAX_TEXT_BYTES + 10_000 {
            body.push('€');
        }
        let path = dir.path().join("After Effects_big.crash");
        std::fs::write(&path, &body).expect("write");

        let files = watch.reports_since(since, SETTLE).await;
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert!(f.truncated);
        assert_eq!(f.size, body.len() as u64);
        assert!(f.text.len() <= MAX_TEXT_BYTES);
        assert!(f.text.len() > MAX_TEXT_BYTES - 4);
        assert!(body.starts_with(&f.text), "prefix of the original, no U+FFFD");
        assert!(!f.text.contains(char::REPLACEMENT_CHARACTER));
        assert_eq!(f.summary, "Crash here");
    }

    // 6. Each file is handed out once.
    #[tokio::test]
    async fn report_is_handed_out_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        std::fs::write(dir.path().join("aerender.crash"), "boom\n").expect("write");
        let first = watch.reports_since(since, SETTLE).await;
        assert_eq!(first.len(), 1);
        let (a, b) = tokio::join!(watch.reports_since(since, SETTLE), watch.reports_since(since, SETTLE));
        assert!(a.is_empty() && b.is_empty(), "{a:?} {b:?}");
    }

    // 6b. Two callers racing for one fresh report: exactly one gets it.
    #[tokio::test]
    async fn concurrent_callers_split_reports() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        std::fs::write(dir.path().join("aerender.crash"), "boom\n").expect("write");
        let (a, b) = tokio::join!(watch.reports_since(since, SETTLE), watch.reports_since(since, SETTLE));
        assert_eq!(a.len() + b.len(), 1, "{a:?} {b:?}");
    }

    // 6c. Two runs crashing together (two slots): each gets the report naming
    // its process, whoever asks first; a report naming neither goes to the first.
    #[tokio::test]
    async fn reports_go_to_the_run_whose_process_they_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        watch.note_run(4101);
        watch.note_run(4202);
        let since = Instant::now();
        std::fs::write(dir.path().join("aerender-sim_1764600000_4101.crash"), "Process: aerender-sim [4101]\n")
            .expect("write");
        std::fs::write(
            dir.path().join("After Effects-2026-12-01-101010.ips"),
            "{\"app_name\":\"After Effects\"}\n{\n  \"pid\" : 5150,\n  \"parentPid\" : 4202,\n  \"parentProc\" : \"aerender\"\n}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("AfterFX.exe.crash"), "no process named\n").expect("write");
        // 4202 asks first but does not get 4101's report.
        let second = watch.reports_for(since, SETTLE, Some(4202)).await;
        let names = |files: &[CrashFile]| -> Vec<String> {
            files.iter().map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned()).collect()
        };
        assert_eq!(names(&second), ["After Effects-2026-12-01-101010.ips"], "named by its parent pid");
        let first = watch.reports_for(since, SETTLE, Some(4101)).await;
        assert_eq!(names(&first), ["aerender-sim_1764600000_4101.crash"]);
        // A third crash that no report names takes the anonymous one.
        let third = watch.reports_for(since, SETTLE, Some(4303)).await;
        assert_eq!(names(&third), ["AfterFX.exe.crash"]);
    }

    #[test]
    fn pids_are_read_from_names_and_texts() {
        let file = |name: &str, text: &str| CrashFile {
            path: PathBuf::from(name),
            size: 0,
            modified: SystemTime::UNIX_EPOCH,
            text: text.into(),
            summary: String::new(),
            truncated: false,
            binary: false,
        };
        let pids = |f: CrashFile| -> Vec<u32> {
            let mut v: Vec<u32> = mentioned_pids(&f).into_iter().collect();
            v.sort_unstable();
            v
        };
        assert_eq!(pids(file("AfterFX.exe.4242.dmp", "")), [4242]);
        assert_eq!(pids(file("x.crash", "Process: aerender [77]\nParent Process: launchd [1]\nlist [a]")), [77]);
        assert_eq!(pids(file("x.ips", "{\"pid\":123,\"parentPid\" :  456}")), [123, 456]);
        assert_eq!(pids(file("aerender_20261201101010.crash", "[0]")), Vec::<u32>::new(), "dates and 0/1 are not pids");
        assert_eq!(pids(file("After Effects-2026-12-01-093015.ips", "")), Vec::<u32>::new(), "nor times");
        assert_eq!(pids(file("aerender-sim_1764600000000_4101.crash", "")), [4101]);
    }

    // 7. No report: returns empty within a bounded time.
    #[tokio::test]
    async fn no_report_returns_empty_in_bounded_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let t0 = Instant::now();
        let files = tokio::time::timeout(SETTLE * (MAX_SETTLE_FACTOR + 2), watch.reports_since(t0, SETTLE))
            .await
            .expect("bounded");
        assert!(files.is_empty());
        assert!(t0.elapsed() >= SETTLE);
    }

    // A report that keeps changing is still returned after settle × 10.
    #[tokio::test]
    async fn endless_writer_is_cut_off_at_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let watch = start(dir.path());
        let since = Instant::now();
        let path = dir.path().join("aerender.log");
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (path.clone(), Arc::clone(&stop));
        let writer = tokio::spawn(async move {
            let mut f = File::create(&p).expect("create");
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                f.write_all(b"x\n").expect("write");
            }
        });
        let settle = Duration::from_millis(100);
        let t0 = Instant::now();
        let files = watch.reports_since(since, settle).await;
        let took = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        writer.await.expect("writer");
        assert_eq!(files.len(), 1);
        assert!(took >= settle * MAX_SETTLE_FACTOR, "{took:?}");
        assert!(took < settle * (MAX_SETTLE_FACTOR + 5), "{took:?}");
    }

    #[tokio::test]
    async fn binary_dump_and_utf16_text() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dump = dir.path().join("AfterFX.exe.77.dmp");
        std::fs::write(&dump, b"MDMP\x93\xa7\x00\x00rest").expect("write");
        let f = read_crash_file(dump).await.expect("read");
        assert!(f.binary && f.truncated && f.text.is_empty());
        assert_eq!(f.summary, "binary crash dump AfterFX.exe.77.dmp (12 bytes)");

        let log = dir.path().join("AfterFX.log");
        let mut bytes = vec![0xFF, 0xFE];
        bytes.extend("Fehler: Absturz\r\n".encode_utf16().flat_map(u16::to_le_bytes));
        std::fs::write(&log, bytes).expect("write");
        let f = read_crash_file(log).await.expect("read");
        assert!(!f.binary && !f.truncated);
        assert_eq!(f.text, "Fehler: Absturz\r\n");
        assert_eq!(f.summary, "Fehler: Absturz");
    }

    #[test]
    fn utf8_tail_detection() {
        assert_eq!(incomplete_utf8_tail("a€".as_bytes()), 0);
        assert_eq!(incomplete_utf8_tail(&"a€".as_bytes()[..3]), 2);
        assert_eq!(incomplete_utf8_tail(&"a€".as_bytes()[..2]), 1);
        assert_eq!(incomplete_utf8_tail(&"😀".as_bytes()[..3]), 3);
        assert_eq!(incomplete_utf8_tail(b"abc"), 0);
    }
}
