//! Cleanup of AfterFX/aerender processes that an earlier agent run started and lost.
//!
//! Every render is spawned in its own process group (Unix) or Job Object (Windows) and its
//! tree is killed when the run ends. If the agent crashed, was SIGKILLed, or a kill failed,
//! processes survive, and After Effects refuses to render while another instance runs. So each
//! spawn is written to a small on-disk [`Ledger`], and [`Ledger::sweep`] kills whatever a
//! recorded run left behind before the next task starts.
//!
//! [`sweep_by_name`] is the blunt fallback (like `taskkill /IM`) for a host whose ledger was
//! lost; the caller decides whether to use it.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// How long a sweep waits for SIGKILLed processes to disappear. The next task must not start
/// while an AfterFX is still exiting, but an unkillable (D-state) process must not hang us.
const KILL_WAIT: Duration = Duration::from_secs(2);
const POLL_EVERY: Duration = Duration::from_millis(20);
const LEDGER_VERSION: u32 = 1;
/// Linux truncates a process name (`comm`) to 15 bytes.
#[cfg(target_os = "linux")]
const COMM_MAX: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum StrayError {
    #[error("cannot read process ledger {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write process ledger {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot encode process ledger: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("process {0} is not running (it exited before it could be recorded)")]
    NotRunning(u32),
    #[error("cannot read the process table: {0}")]
    ProcessTable(#[source] sysinfo::Error),
    #[error("the process ledger is unusable after a panic elsewhere")]
    Poisoned,
}

/// Identifies one recorded run. Keep it while the run is live; pass it to [`Ledger::forget`]
/// when the run ended normally, and list it in `live` for [`Ledger::sweep`] while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunToken {
    pid: u32,
    start_time: u64,
}

impl RunToken {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Process start time, seconds since the Unix epoch (as sysinfo reports it).
    pub fn start_time(&self) -> u64 {
        self.start_time
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KilledProcess {
    pub pid: u32,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The pid/group now belongs to something else: leader missing or started at another
    /// time, and no remaining member has one of our names.
    NotOurs,
    /// The recorded group is the agent's own; killing it would kill the agent.
    OwnGroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRun {
    pub pid: u32,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRun {
    pub pid: u32,
    pub error: String,
}

/// Outcome of a sweep. Entries in `failed` stay in the ledger so the next sweep retries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Processes that were sent SIGKILL (or TerminateProcess) and are gone now.
    pub killed: Vec<KilledProcess>,
    /// Recorded runs left alone because they no longer looked like ours (dropped from ledger).
    pub skipped: Vec<SkippedRun>,
    /// Recorded runs (by leader pid) whose processes had all exited already.
    pub gone: Vec<u32>,
    /// Kill refused (e.g. EPERM) or processes still present after the wait.
    pub failed: Vec<FailedRun>,
}

impl SweepReport {
    /// True when nothing that looked like ours is known to be still running.
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    pid: u32,
    start_time: u64,
    /// Process group to kill; `None` if the process was not a group leader when recorded
    /// (then only the pid itself is swept), and always `None` off Unix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pgid: Option<u32>,
}

impl Entry {
    fn token(&self) -> RunToken {
        RunToken { pid: self.pid, start_time: self.start_time }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    runs: Vec<Entry>,
}

/// The on-disk list of runs this agent started and has not yet seen end.
pub struct Ledger {
    path: PathBuf,
    /// Lower-cased executable names that count as ours.
    names: Vec<String>,
    runs: Vec<Entry>,
    was_corrupt: bool,
    /// Reused between calls so refreshes don't reallocate the process table.
    sys: System,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.path)
            .field("names", &self.names)
            .field("runs", &self.runs)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Loads the ledger at `path`. A missing file is an empty ledger; an unparsable one is
    /// logged and treated as empty (see [`Ledger::was_corrupt`]). `names` are the executable
    /// names that count as ours (e.g. configured aerender names, "AfterFX", "AfterFX.exe",
    /// "After Effects"); matching is case-insensitive and ignores a trailing ".exe".
    pub fn open<S: AsRef<str>>(path: impl Into<PathBuf>, names: &[S]) -> Result<Self, StrayError> {
        let path = path.into();
        let sys = System::new().map_err(StrayError::ProcessTable)?;
        let (runs, was_corrupt) = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<LedgerFile>(&bytes) {
                Ok(file) => (file.runs, false),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err,
                        "process ledger is corrupt; starting empty (strays it listed are not swept)");
                    (Vec::new(), true)
                }
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => (Vec::new(), false),
            Err(source) => return Err(StrayError::Read { path, source }),
        };
        Ok(Self { path, names: lower_names(names), runs, was_corrupt, sys })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if the file existed but could not be parsed, i.e. records may have been lost and
    /// the caller may want [`sweep_by_name`] as a fallback.
    pub fn was_corrupt(&self) -> bool {
        self.was_corrupt
    }

    /// Runs currently recorded (live or stray).
    pub fn runs(&self) -> Vec<RunToken> {
        self.runs.iter().map(Entry::token).collect()
    }

    /// Records a freshly spawned run leader and persists the ledger before returning, so a
    /// crash right after still leaves a trace. On error nothing is recorded.
    pub fn record(&mut self, pid: u32) -> Result<RunToken, StrayError> {
        let spid = Pid::from_u32(pid);
        self.sys.refresh_processes_specifics(ProcessesToUpdate::Some(&[spid]), true, refresh_kind());
        let start_time =
            self.sys.process(spid).filter(|p| p.exists()).map(|p| p.start_time()).ok_or(StrayError::NotRunning(pid))?;
        let entry = Entry { pid, start_time, pgid: own_group_of(pid) };
        let token = entry.token();
        let previous = self.runs.clone();
        // A pid can only be one live process; an old entry for it is stale by definition.
        self.runs.retain(|e| e.pid != pid);
        self.runs.push(entry);
        if let Err(err) = self.persist() {
            self.runs = previous;
            return Err(err);
        }
        Ok(token)
    }

    /// Drops a run whose tree was killed normally. Unknown tokens are ignored.
    pub fn forget(&mut self, token: RunToken) -> Result<(), StrayError> {
        let before = self.runs.len();
        self.runs.retain(|e| e.token() != token);
        if self.runs.len() == before {
            return Ok(());
        }
        self.persist()
    }

    /// Kills what every recorded run not in `live` left behind and drops those runs from the
    /// ledger. Waits up to 2 s for killed processes to vanish.
    pub fn sweep(&mut self, live: &[RunToken]) -> Result<SweepReport, StrayError> {
        let live: HashSet<RunToken> = live.iter().copied().collect();
        let stale: Vec<Entry> = self.runs.iter().filter(|e| !live.contains(&e.token())).cloned().collect();
        let mut report = SweepReport::default();
        if stale.is_empty() {
            return Ok(report);
        }
        self.sys.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
        #[cfg(unix)]
        let groups = unix::group_table(&self.sys);

        let mut done = HashSet::new();
        for entry in &stale {
            #[cfg(unix)]
            let finished = match entry.pgid {
                Some(pgid) => self.sweep_group(entry, pgid, &groups, &mut report),
                None => self.sweep_pid(entry, &mut report),
            };
            #[cfg(not(unix))]
            let finished = self.sweep_pid(entry, &mut report);
            if finished {
                done.insert(entry.token());
            }
        }

        self.runs.retain(|e| !done.contains(&e.token()));
        if !done.is_empty()
            && let Err(err) = self.persist()
        {
            // The kills happened; a stale file only means the next sweep re-checks these
            // entries and finds them gone.
            tracing::warn!(%err, "could not persist process ledger after sweep");
        }
        Ok(report)
    }

    /// Kills the recorded group if it still looks like ours. Returns whether the entry is done.
    #[cfg(unix)]
    fn sweep_group(
        &mut self,
        entry: &Entry,
        pgid: u32,
        groups: &std::collections::HashMap<u32, Vec<(Pid, u64, String)>>,
        report: &mut SweepReport,
    ) -> bool {
        if unix::own_pgid() == Some(pgid) || pgid <= 1 {
            tracing::warn!(pid = entry.pid, pgid, "recorded group is the agent's own; not killing");
            report.skipped.push(SkippedRun { pid: entry.pid, reason: SkipReason::OwnGroup });
            return true;
        }
        let members = groups.get(&pgid).map(Vec::as_slice).unwrap_or_default();
        if members.is_empty() {
            report.gone.push(entry.pid);
            return true;
        }
        // A zombie leader still counts: its pid (and so the group id) cannot have been reused.
        let leader_ours =
            self.sys.process(Pid::from_u32(entry.pid)).is_some_and(|p| p.start_time() == entry.start_time);
        // Linux never hands out a pid that is still some group's id, so while any member is
        // alive the group is the original one; the name check is a second guard for when the
        // leader is gone. "Any" rather than "all" so AE's helper processes in the group die too.
        let names_ours = members.iter().any(|(_, _, name)| name_matches(OsStr::new(name), &self.names));
        if !leader_ours && !names_ours {
            tracing::warn!(pid = entry.pid, pgid, "recorded group no longer looks like ours; skipping");
            report.skipped.push(SkippedRun { pid: entry.pid, reason: SkipReason::NotOurs });
            return true;
        }
        if let Err(err) = unix::killpg(pgid) {
            tracing::warn!(pid = entry.pid, pgid, %err, "killing stray process group failed");
            report.failed.push(FailedRun { pid: entry.pid, error: err.to_string() });
            return false;
        }
        self.finish_kill(entry.pid, members, report)
    }

    /// Kills the recorded pid alone if it is still the same process (pid + start time).
    fn sweep_pid(&mut self, entry: &Entry, report: &mut SweepReport) -> bool {
        let spid = Pid::from_u32(entry.pid);
        let Some(process) = self.sys.process(spid) else {
            report.gone.push(entry.pid);
            return true;
        };
        if process.start_time() != entry.start_time {
            tracing::warn!(pid = entry.pid, "recorded pid was reused; skipping");
            report.skipped.push(SkippedRun { pid: entry.pid, reason: SkipReason::NotOurs });
            return true;
        }
        if process.status() == ProcessStatus::Zombie {
            report.gone.push(entry.pid);
            return true;
        }
        let target = (spid, process.start_time(), lossy(process.name()));
        if !process.kill() {
            tracing::warn!(pid = entry.pid, "killing stray process failed");
            report.failed.push(FailedRun { pid: entry.pid, error: "kill failed".to_owned() });
            return false;
        }
        self.finish_kill(entry.pid, &[target], report)
    }

    /// Waits for signalled processes to vanish and reports them. Returns whether all did.
    fn finish_kill(&mut self, run_pid: u32, targets: &[(Pid, u64, String)], report: &mut SweepReport) -> bool {
        let survivors = wait_gone(&mut self.sys, targets);
        for (pid, _, name) in targets {
            if !survivors.contains(pid) {
                tracing::info!(pid = pid.as_u32(), name, run = run_pid, "killed stray process");
                report.killed.push(KilledProcess { pid: pid.as_u32(), name: name.clone() });
            }
        }
        if survivors.is_empty() {
            return true;
        }
        let list: Vec<String> = survivors.iter().map(ToString::to_string).collect();
        let error = format!("still running after {KILL_WAIT:?}: {}", list.join(", "));
        tracing::warn!(run = run_pid, %error, "stray processes survived SIGKILL");
        report.failed.push(FailedRun { pid: run_pid, error });
        false
    }

    fn persist(&self) -> Result<(), StrayError> {
        let file = LedgerFile { version: LEDGER_VERSION, runs: self.runs.clone() };
        let data = serde_json::to_vec_pretty(&file)?;
        write_atomic(&self.path, &data).map_err(|source| StrayError::Write { path: self.path.clone(), source })
    }
}

/// Kills every process named like one of `names` unless it is, or descends from, a pid in
/// `protect` (on Unix also: is in a protected pid's process group, which catches reparented
/// children of a live run). Never kills the agent itself. For hosts whose ledger was lost.
pub fn sweep_by_name<S: AsRef<str>>(names: &[S], protect: &[u32]) -> Result<SweepReport, StrayError> {
    let wanted = lower_names(names);
    let mut sys = System::new().map_err(StrayError::ProcessTable)?;
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, refresh_kind());
    let protect: HashSet<Pid> = protect.iter().map(|p| Pid::from_u32(*p)).collect();
    // Only the agent itself, not its descendants: a child whose kill failed earlier is
    // exactly what this is for, and live runs are covered by `protect`.
    let me = Pid::from_u32(std::process::id());

    let mut report = SweepReport::default();
    let mut targets = Vec::new();
    for (pid, process) in sys.processes() {
        if *pid == me
            || process.thread_kind().is_some()
            || process.status() == ProcessStatus::Zombie
            || !name_matches(process.name(), &wanted)
            || descends_from(&sys, *pid, &protect)
        {
            continue;
        }
        #[cfg(unix)]
        if unix::pgid_of(pid.as_u32()).is_some_and(|g| protect.contains(&Pid::from_u32(g))) {
            continue;
        }
        if process.kill() {
            targets.push((*pid, process.start_time(), lossy(process.name())));
        } else {
            tracing::warn!(pid = pid.as_u32(), "killing process by name failed");
            report.failed.push(FailedRun { pid: pid.as_u32(), error: "kill failed".to_owned() });
        }
    }
    let survivors = wait_gone(&mut sys, &targets);
    for (pid, _, name) in targets {
        if survivors.contains(&pid) {
            report.failed.push(FailedRun { pid: pid.as_u32(), error: format!("still running after {KILL_WAIT:?}") });
        } else {
            tracing::info!(pid = pid.as_u32(), name, "killed process by name");
            report.killed.push(KilledProcess { pid: pid.as_u32(), name });
        }
    }
    Ok(report)
}

/// Name and start time are read from the same stat record on every refresh; everything else
/// (cpu, memory, cmdline, environ, threads) is skipped to keep sweeps cheap.
fn refresh_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().without_tasks()
}

fn lower_names<S: AsRef<str>>(names: &[S]) -> Vec<String> {
    names.iter().map(|n| n.as_ref().to_lowercase()).collect()
}

fn lossy(name: &OsStr) -> String {
    name.to_string_lossy().into_owned()
}

fn strip_exe(name: &str) -> &str {
    name.strip_suffix(".exe").unwrap_or(name)
}

/// Case-insensitive, ignoring ".exe" so "aerender.exe" in config also matches macOS'
/// "aerender". On Linux a 15-byte name may be a truncated longer one.
fn name_matches(process_name: &OsStr, wanted: &[String]) -> bool {
    let name = process_name.to_string_lossy().to_lowercase();
    wanted.iter().any(|w| {
        if strip_exe(w) == strip_exe(&name) {
            return true;
        }
        #[cfg(target_os = "linux")]
        if name.len() == COMM_MAX && w.starts_with(&name) {
            return true;
        }
        false
    })
}

fn descends_from(sys: &System, pid: Pid, protect: &HashSet<Pid>) -> bool {
    let mut current = Some(pid);
    // Bounded: parent links are read at different moments and could in theory form a cycle.
    for _ in 0..256 {
        let Some(p) = current else { return false };
        if protect.contains(&p) {
            return true;
        }
        current = sys.process(p).and_then(|proc_| proc_.parent());
    }
    false
}

/// Polls until every target is gone (absent, zombie, or a new process under that pid) or
/// [`KILL_WAIT`] passes. Returns the survivors.
fn wait_gone(sys: &mut System, targets: &[(Pid, u64, String)]) -> Vec<Pid> {
    if targets.is_empty() {
        return Vec::new();
    }
    let pids: Vec<Pid> = targets.iter().map(|t| t.0).collect();
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        sys.refresh_processes_specifics(ProcessesToUpdate::Some(&pids), true, refresh_kind());
        let alive: Vec<Pid> = targets
            .iter()
            .filter(|(pid, start, _)| {
                sys.process(*pid)
                    .is_some_and(|p| p.exists() && p.start_time() == *start && p.status() != ProcessStatus::Zombie)
            })
            .map(|t| t.0)
            .collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Temp file in the same directory + rename, so a crash leaves either the old or the new
/// ledger, never a half-written one.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let file_name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "ledger path has no file name"))?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()
    });
    if let Err(err) = written.and_then(|()| fs::rename(&tmp, path)) {
        // Best effort: don't leave temp files piling up in the work root.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    // Make the rename itself durable; best effort, some filesystems refuse directory fsync.
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The group to record for a run leader: its pid if it leads its own group, as our spawns
/// do. Anything else (e.g. spawned without `process_group(0)`) is swept by pid only, so we
/// can never killpg a group we share with unrelated processes or the agent.
#[cfg(unix)]
fn own_group_of(pid: u32) -> Option<u32> {
    match unix::pgid_of(pid) {
        Some(g) if g == pid => Some(g),
        other => {
            tracing::warn!(pid, pgid = ?other, "run is not a process-group leader; only its pid will be swept");
            None
        }
    }
}

#[cfg(not(unix))]
fn own_group_of(_pid: u32) -> Option<u32> {
    // Windows: the Job Object covers the tree while the agent lives; after a crash we only
    // know the leader pid. Orphaned AfterFX.exe children need `sweep_by_name`.
    None
}

#[cfg(unix)]
mod unix {
    use std::collections::HashMap;
    use std::io;

    use rustix::process::{Pid as RawPid, Signal};
    use sysinfo::{Pid, ProcessStatus, System};

    /// From `/proc` on Linux: in a container a process's group may live outside its pid
    /// namespace and read as 0, which getpgid wrappers do not expect.
    #[cfg(target_os = "linux")]
    pub(super) fn pgid_of(pid: u32) -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After the command name (which may hold anything, parentheses too): state, ppid, pgrp.
        let (_, fields) = stat.rsplit_once(')')?;
        fields.split_whitespace().nth(2)?.parse().ok()
    }

    #[cfg(not(target_os = "linux"))]
    pub(super) fn pgid_of(pid: u32) -> Option<u32> {
        let pid = RawPid::from_raw(i32::try_from(pid).ok()?)?;
        rustix::process::getpgid(Some(pid)).ok().map(|g| g.as_raw_nonzero().get().unsigned_abs())
    }

    pub(super) fn own_pgid() -> Option<u32> {
        pgid_of(std::process::id())
    }

    pub(super) fn killpg(pgid: u32) -> io::Result<()> {
        // killpg(0 or 1) would hit our own group or init's; callers never pass them, but the
        // check is cheap next to the damage.
        let group = i32::try_from(pgid)
            .ok()
            .filter(|g| *g > 1)
            .and_then(RawPid::from_raw)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("refusing process group {pgid}")))?;
        match rustix::process::kill_process_group(group, Signal::KILL) {
            // ESRCH: the group emptied between listing and killing; that is the goal anyway.
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Live (non-zombie) processes by process group: (pid, start time, name).
    pub(super) fn group_table(sys: &System) -> HashMap<u32, Vec<(Pid, u64, String)>> {
        let mut groups: HashMap<u32, Vec<(Pid, u64, String)>> = HashMap::new();
        for (pid, p) in sys.processes() {
            if p.thread_kind().is_some() || p.status() == ProcessStatus::Zombie {
                continue;
            }
            if let Some(g) = pgid_of(pid.as_u32()) {
                groups.entry(g).or_default().push((*pid, p.start_time(), p.name().to_string_lossy().into_owned()));
            }
        }
        groups
    }
}

/// The ledger as the agent shares it between its slots: the runs this agent supervises are live,
/// every other recorded run is a stray. Each call does blocking work (the file, the process
/// table, the wait for kills): call it from a blocking thread.
#[derive(Debug)]
pub struct Tracker {
    /// The ledger and the live runs under one lock: a run is recorded and marked live at once,
    /// so a sweep on another slot never sees it recorded but not live.
    inner: std::sync::Mutex<(Ledger, HashSet<RunToken>)>,
}

impl Tracker {
    /// The ledger at `path`; `names` are the executable names that count as renderers.
    pub fn open<S: AsRef<str>>(path: impl Into<PathBuf>, names: &[S]) -> Result<Self, StrayError> {
        Ok(Self { inner: std::sync::Mutex::new((Ledger::open(path, names)?, HashSet::new())) })
    }

    /// Notes a spawned run. A failure is only logged: the run goes on, and its tree is still
    /// killed when it ends; only a later crash of the agent would leave it unrecorded.
    pub fn started(&self, pid: u32) -> Option<RunToken> {
        let recorded = self.inner.lock().map_err(|_| StrayError::Poisoned).and_then(|mut inner| {
            let token = inner.0.record(pid)?;
            inner.1.insert(token);
            Ok(token)
        });
        recorded
            .inspect_err(
                |error| tracing::warn!(pid, %error, "a renderer process could not be recorded for later cleanup"),
            )
            .ok()
    }

    /// Notes that a run's tree was killed and reaped.
    pub fn ended(&self, token: RunToken) {
        let forgotten = self.inner.lock().map_err(|_| StrayError::Poisoned).and_then(|mut inner| {
            inner.1.remove(&token);
            inner.0.forget(token)
        });
        if let Err(error) = forgotten {
            tracing::warn!(pid = token.pid(), %error, "a finished renderer process stays in the ledger");
        }
    }

    /// Kills whatever recorded runs that are not live left behind, and says what it did.
    pub fn sweep(&self) -> Result<SweepReport, StrayError> {
        let report = {
            let mut inner = self.inner.lock().map_err(|_| StrayError::Poisoned)?;
            let live: Vec<RunToken> = inner.1.iter().copied().collect();
            inner.0.sweep(&live)?
        };
        for killed in &report.killed {
            tracing::warn!(pid = killed.pid, name = %killed.name, "killed a renderer process an earlier run left behind");
        }
        for failed in &report.failed {
            tracing::error!(pid = failed.pid, error = %failed.error, "could not kill a renderer process an earlier run left behind");
        }
        Ok(report)
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// A spawned process (group) that is SIGKILLed and reaped on drop, even if a test fails.
    struct Spawned {
        child: Child,
        group: bool,
    }

    impl Spawned {
        /// `sh -c 'sleep 300 & sleep 300'` in its own group: a leader plus a `sleep` child.
        fn group() -> Self {
            let child = Command::new("sh")
                .args(["-c", "sleep 300 & sleep 300"])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn sh");
            let s = Self { child, group: true };
            let pid = s.pid();
            // Both sleeps started (whether or not sh exec'd the last one), so the group's
            // membership is settled before a test snapshots it.
            wait_until("two `sleep`s in the group", || {
                group_members(pid).iter().filter(|&&m| comm(m).as_deref() == Some("sleep")).count() >= 2
            });
            s
        }

        /// A plain child that shares the test runner's process group.
        fn plain(program: &str) -> Self {
            let child = Command::new(program).arg("300").stdin(Stdio::null()).spawn().expect("spawn");
            Self { child, group: false }
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn members(&self) -> Vec<u32> {
            group_members(self.pid())
        }

        /// Waits (max 2 s) until none of `pids` is alive, reaping our own child meanwhile.
        fn assert_all_gone(&mut self, pids: &[u32]) {
            wait_until("processes to be gone", || {
                let _ = self.child.try_wait();
                pids.iter().all(|&p| !alive(p))
            });
        }
    }

    fn kill_one(pid: u32) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }

    impl Drop for Spawned {
        fn drop(&mut self) {
            if let Some(pid) = rustix::process::Pid::from_raw(self.pid() as i32) {
                let signal = rustix::process::Signal::KILL;
                let _ = if self.group {
                    rustix::process::kill_process_group(pid, signal)
                } else {
                    rustix::process::kill_process(pid, signal)
                };
            }
            let _ = self.child.wait();
        }
    }

    /// (state, pgrp) from /proc/<pid>/stat; parsed after the last ')' since comm may hold any byte.
    fn stat(pid: u32) -> Option<(char, u32)> {
        let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some((state, pgrp))
    }

    fn alive(pid: u32) -> bool {
        stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
    }

    fn comm(pid: u32) -> Option<String> {
        fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_owned())
    }

    fn group_members(pgid: u32) -> Vec<u32> {
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").expect("read /proc").flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if stat(pid).is_some_and(|(state, g)| g == pgid && state != 'Z' && state != 'X') {
                out.push(pid);
            }
        }
        out
    }

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    const OUR_NAMES: &[&str] = &["AfterFX", "AfterFX.exe", "After Effects", "aerender"];

    fn ledger_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("processes.json")
    }

    #[test]
    fn lost_run_is_swept_after_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Spawned::group();
        let members = run.members();
        assert!(members.len() >= 2, "leader and child: {members:?}");
        {
            let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
            ledger.record(run.pid()).expect("record");
        } // agent "crashes": in-memory state gone, only the file remains

        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("reopen");
        assert_eq!(ledger.runs().len(), 1);
        let report = ledger.sweep(&[]).expect("sweep");
        run.assert_all_gone(&members);

        let mut killed: Vec<u32> = report.killed.iter().map(|k| k.pid).collect();
        killed.sort_unstable();
        let mut expected = members.clone();
        expected.sort_unstable();
        assert_eq!(killed, expected, "{report:?}");
        assert!(report.is_clean() && report.skipped.is_empty());
        assert!(ledger.runs().is_empty());
        let reread = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("reopen");
        assert!(reread.runs().is_empty(), "swept entry persisted as removed");
    }

    #[test]
    fn live_run_is_not_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = Spawned::group();
        let mut lost = Spawned::group();
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
        let live_token = ledger.record(live.pid()).expect("record");
        ledger.record(lost.pid()).expect("record");
        let lost_members = lost.members();

        let report = ledger.sweep(&[live_token]).expect("sweep");
        lost.assert_all_gone(&lost_members);
        assert!(live.members().iter().all(|&p| alive(p)) && live.members().len() >= 2);
        assert!(report.killed.iter().all(|k| !live.members().contains(&k.pid)));
        assert_eq!(ledger.runs(), vec![live_token]);
    }

    #[test]
    fn forgotten_run_is_not_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = Spawned::group();
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
        let token = ledger.record(run.pid()).expect("record");
        ledger.forget(token).expect("forget");
        drop(ledger);

        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("reopen");
        assert!(ledger.runs().is_empty());
        let report = ledger.sweep(&[]).expect("sweep");
        assert_eq!(report, SweepReport::default());
        assert!(run.members().iter().all(|&p| alive(p)));
    }

    #[test]
    fn reused_pid_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = Spawned::group();
        {
            let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
            ledger.record(run.pid()).expect("record");
        }
        // Pretend the recorded process started at another time: same pid, different process.
        let text = fs::read_to_string(ledger_path(&dir)).expect("read");
        let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
        let st = json["runs"][0]["start_time"].as_u64().expect("start_time");
        json["runs"][0]["start_time"] = serde_json::json!(st - 1000);
        fs::write(ledger_path(&dir), json.to_string()).expect("write");

        let before = run.members();
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("reopen");
        let report = ledger.sweep(&[]).expect("sweep");
        assert!(report.killed.is_empty(), "{report:?}");
        assert_eq!(report.skipped, vec![SkippedRun { pid: run.pid(), reason: SkipReason::NotOurs }]);
        assert!(before.iter().all(|&p| alive(p)));
        assert!(ledger.runs().is_empty(), "a skipped entry is no longer ours to track");
    }

    #[test]
    fn orphaned_member_with_our_name_is_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Spawned::group();
        let leader = run.pid();
        let mut ledger = Ledger::open(ledger_path(&dir), &["sleep"]).expect("open");
        ledger.record(leader).expect("record");

        // Kill and reap only the leader; its `sleep` child stays in the group, reparented.
        kill_one(leader);
        run.child.wait().expect("reap leader");
        let orphans = run.members();
        assert!(!orphans.is_empty() && !orphans.contains(&leader));
        assert!(orphans.iter().all(|&p| comm(p).as_deref() == Some("sleep")));

        let report = ledger.sweep(&[]).expect("sweep");
        run.assert_all_gone(&orphans);
        assert_eq!(report.killed.len(), orphans.len(), "{report:?}");
        assert!(report.killed.iter().all(|k| k.name == "sleep"));
    }

    #[test]
    fn leader_gone_and_member_names_foreign_is_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Spawned::group();
        let leader = run.pid();
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
        ledger.record(leader).expect("record");
        kill_one(leader);
        run.child.wait().expect("reap leader");
        let orphans = run.members();

        let report = ledger.sweep(&[]).expect("sweep");
        assert!(report.killed.is_empty(), "{report:?}");
        assert_eq!(report.skipped.len(), 1);
        assert!(orphans.iter().all(|&p| alive(p)));
    }

    #[test]
    fn non_leader_is_swept_by_pid_only() {
        // Shares the test runner's group: a killpg here would kill the test itself.
        let dir = tempfile::tempdir().expect("tempdir");
        let mut run = Spawned::plain("sleep");
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
        ledger.record(run.pid()).expect("record");
        let report = ledger.sweep(&[]).expect("sweep");
        run.assert_all_gone(&[run.pid()]);
        assert_eq!(report.killed.len(), 1, "{report:?}");
        assert_eq!(report.killed[0].pid, run.pid());
    }

    #[test]
    fn corrupt_or_missing_ledger_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open missing");
        assert!(missing.runs().is_empty() && !missing.was_corrupt());

        fs::write(ledger_path(&dir), b"{\"runs\": [oops").expect("write");
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open corrupt");
        assert!(ledger.runs().is_empty() && ledger.was_corrupt());
        assert_eq!(ledger.sweep(&[]).expect("sweep"), SweepReport::default());

        // The next write replaces the garbage atomically and leaves no temp file.
        let run = Spawned::group();
        let token = ledger.record(run.pid()).expect("record");
        let reread = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("reopen");
        assert_eq!(reread.runs(), vec![token]);
        let files: Vec<_> = fs::read_dir(dir.path()).expect("ls").flatten().collect();
        assert_eq!(files.len(), 1, "{files:?}");
    }

    #[test]
    fn recording_an_exited_pid_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let mut ledger = Ledger::open(ledger_path(&dir), OUR_NAMES).expect("open");
        assert!(matches!(ledger.record(pid), Err(StrayError::NotRunning(p)) if p == pid));
        assert!(!ledger_path(&dir).exists());
    }

    #[test]
    fn name_matching() {
        let wanted = lower_names(&["AfterFX.exe", "aerender", "Adobe After Effects Render"]);
        for yes in ["afterfx", "AFTERFX.EXE", "aerender.exe", "Adobe After Eff"] {
            assert!(name_matches(OsStr::new(yes), &wanted), "{yes}");
        }
        for no in ["AfterFX2", "sleep", "aerende", "Adobe After Ef", ""] {
            assert!(!name_matches(OsStr::new(no), &wanted), "{no}");
        }
    }

    #[test]
    fn sweep_by_name_spares_protected_descendants() {
        // A unique name, so this can't hit other tests' processes. A symlink (not a copy)
        // because exec of a freshly written file races with concurrent forks (ETXTBSY).
        let dir = tempfile::tempdir().expect("tempdir");
        let name = format!("frsweep{}", std::process::id() % 10_000_000);
        let exe = dir.path().join(&name);
        std::os::unix::fs::symlink("/bin/sleep", &exe).expect("symlink");
        let exe = exe.to_str().expect("utf-8 path");

        let mut stray = Spawned::plain(exe);
        let protected = Spawned {
            child: Command::new("sh")
                .args(["-c", "\"$0\" 300 & wait", exe])
                .process_group(0)
                .spawn()
                .expect("spawn sh"),
            group: true,
        };
        let stray_pid = stray.pid();
        wait_until("both named processes", || {
            comm(stray_pid).as_deref() == Some(name.as_str())
                && protected.members().iter().any(|&p| comm(p).as_deref() == Some(name.as_str()))
        });

        let report = sweep_by_name(&[name.to_uppercase()], &[protected.pid()]).expect("sweep");
        stray.assert_all_gone(&[stray_pid]);
        assert_eq!(report.killed, vec![KilledProcess { pid: stray_pid, name: name.clone() }]);
        assert!(protected.members().len() >= 2, "protected run untouched");
    }
}
