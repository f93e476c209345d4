//! Running a renderer (aerender, ffmpeg) under watch: its output handed over as it comes, a
//! no-output watchdog, a maximum run time, cancellation, and the whole process tree killed when
//! any of them ends the run.
//!
//! aerender starts After Effects, which starts helpers of its own; killing only the process we
//! spawned would leave them rendering (and holding licences and memory) after the task is gone.
//! The child therefore leads a process group of its own (Unix) or runs in a Job Object
//! (Windows), and the group or job is what gets killed — also after a normal exit, since a
//! process left behind by a finished render is just as much in the next task's way.

use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use crate::strays::Tracker;

/// How long output is still read after the process exited, while something it left running
/// holds its pipes open.
const EXIT_DRAIN: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Clone, Debug)]
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<OsString>,
    /// Working directory; `None` keeps the agent's.
    pub dir: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// Where the run is recorded while it lives, so a later agent can clean up after a crash.
    pub tracker: Option<Arc<Tracker>>,
}

/// When a run is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// No output and no other sign of progress (see [`Activity`]) for this long.
    pub no_output: Duration,
    /// The run as a whole.
    pub max_run: Duration,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// The process exited by itself (every process of its tree is gone too).
    Exited(ExitStatus),
    /// Killed by the no-output watchdog.
    Silent { for_: Duration },
    /// Killed at the maximum run time.
    OverTime { after: Duration },
    /// Killed because the task was canceled.
    Canceled,
}

/// Signs of progress that are not output, e.g. a frame file landing: each one resets the
/// no-output watchdog. Cheap to clone and share with a file watcher.
#[derive(Clone, Debug, Default)]
pub struct Activity(Arc<Notify>);

impl Activity {
    /// Reports progress.
    pub fn touch(&self) {
        self.0.notify_one();
    }
}

/// Runs `program`, handing each piece of its stdout and stderr (in arrival order, not split into
/// lines) to `on_output`, until it exits, goes silent, runs too long, or `cancel` completes.
/// Returns only once the process tree is gone.
pub async fn supervise(
    program: &Program,
    limits: Limits,
    activity: &Activity,
    cancel: impl Future<Output = ()>,
    on_output: impl FnMut(&[u8]),
) -> io::Result<Ending> {
    supervise_observed(program, limits, activity, cancel, |_| {}, on_output).await
}

/// [`supervise`], telling `on_spawn` the process id once the process runs (crash reports name it).
pub async fn supervise_observed(
    program: &Program,
    limits: Limits,
    activity: &Activity,
    cancel: impl Future<Output = ()>,
    on_spawn: impl FnOnce(u32),
    mut on_output: impl FnMut(&[u8]),
) -> io::Result<Ending> {
    let mut child = TreeGuard(spawn(program)?, true);
    if let Some(pid) = child.0.id() {
        on_spawn(pid);
    }
    let token = match (&program.tracker, child.0.id()) {
        (Some(tracker), Some(pid)) => {
            let tracker = Arc::clone(tracker);
            tokio::task::spawn_blocking(move || tracker.started(pid)).await.ok().flatten()
        }
        _ => None,
    };
    let (Some(mut stdout), Some(mut stderr)) = (child.0.stdout().take(), child.0.stderr().take()) else {
        kill_tree(child.0.as_mut()).await;
        return Err(io::Error::other("the child's output pipes were not set up"));
    };
    let started = Instant::now();
    let deadline = started + limits.max_run;
    let mut silent_until = started + limits.no_output;
    let (mut out_buf, mut err_buf) = (vec![0_u8; 16 * 1024], vec![0_u8; 4 * 1024]);
    let (mut out_open, mut err_open) = (true, true);
    let mut cancel = std::pin::pin!(cancel);

    // Once the process has exited, what it wrote is still read to the end, unless something it
    // left running holds the pipes open: then only for a moment.
    let mut exited: Option<(ExitStatus, Instant)> = None;
    let ending: io::Result<Ending> = loop {
        if let Some((status, _)) = exited
            && !out_open
            && !err_open
        {
            break Ok(Ending::Exited(status));
        }
        let drained_by = exited.map_or(deadline, |(_, at)| at + EXIT_DRAIN);
        tokio::select! {
            read = read_some(&mut stdout, &mut out_buf), if out_open => match read {
                Err(e) => break Err(e),
                Ok(0) => out_open = false,
                Ok(n) => {
                    silent_until = Instant::now() + limits.no_output;
                    on_output(&out_buf[..n]);
                }
            },
            read = read_some(&mut stderr, &mut err_buf), if err_open => match read {
                Err(e) => break Err(e),
                Ok(0) => err_open = false,
                Ok(n) => {
                    silent_until = Instant::now() + limits.no_output;
                    on_output(&err_buf[..n]);
                }
            },
            status = child.0.wait(), if exited.is_none() => match status {
                Ok(status) => exited = Some((status, Instant::now())),
                Err(e) => break Err(e),
            },
            () = activity.0.notified() => silent_until = Instant::now() + limits.no_output,
            () = sleep_until(drained_by), if exited.is_some() => {
                if let Some((status, _)) = exited {
                    break Ok(Ending::Exited(status));
                }
            }
            () = sleep_until(silent_until), if exited.is_none() => break Ok(Ending::Silent { for_: limits.no_output }),
            () = sleep_until(deadline), if exited.is_none() => break Ok(Ending::OverTime { after: limits.max_run }),
            () = &mut cancel, if exited.is_none() => break Ok(Ending::Canceled),
        }
    };
    // Also after a normal exit, and after a failed read: whatever the process left running in
    // its group goes with it.
    kill_tree(child.0.as_mut()).await;
    child.1 = false;
    if let (Some(tracker), Some(token)) = (&program.tracker, token) {
        let tracker = Arc::clone(tracker);
        let _ = tokio::task::spawn_blocking(move || tracker.ended(token)).await;
    }
    ending
}

/// Kills the whole tree if the supervising future is dropped mid-run (the agent shutting down,
/// a task dropped): the child's own kill-on-drop reaches only the process we spawned, not the
/// After Effects it started.
/// The second field is whether the tree may still be running (not yet killed and reaped).
struct TreeGuard(Box<dyn ChildWrapper>, bool);

impl Drop for TreeGuard {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        #[cfg(unix)]
        let _ = self.0.signal(libc::SIGKILL);
        #[cfg(not(unix))]
        let _ = self.0.start_kill();
    }
}

async fn read_some(pipe: &mut (impl AsyncRead + Unpin), buf: &mut [u8]) -> io::Result<usize> {
    pipe.read(buf).await
}

fn spawn(program: &Program) -> io::Result<Box<dyn ChildWrapper>> {
    let mut command = tokio::process::Command::new(&program.path);
    command.args(&program.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(dir) = &program.dir {
        command.current_dir(dir);
    }
    command.envs(program.env.iter().map(|(k, v)| (k, v)));
    let mut wrapped = CommandWrap::from(command);
    wrapped.wrap(KillOnDrop);
    #[cfg(unix)]
    wrapped.wrap(process_wrap::tokio::ProcessGroup::leader());
    #[cfg(windows)]
    wrapped.wrap(process_wrap::tokio::JobObject);
    wrapped.spawn()
}

/// Kills every process of the child's group (Unix) or job (Windows) and reaps the child.
async fn kill_tree(child: &mut dyn ChildWrapper) {
    #[cfg(unix)]
    {
        // SIGKILL to the group, whether or not its leader is still running: an After Effects
        // left behind by an exited aerender is in the group too. No such group is fine.
        let _ = child.signal(libc::SIGKILL);
    }
    #[cfg(not(unix))]
    {
        let _ = child.start_kill();
    }
    if let Err(error) = child.wait().await {
        tracing::warn!(%error, "could not reap a renderer process");
    }
}

#[cfg(all(test, unix))]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        Program {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            dir: None,
            env: Vec::new(),
            tracker: None,
        }
    }

    fn limits(no_output_ms: u64, max_run_ms: u64) -> Limits {
        Limits { no_output: Duration::from_millis(no_output_ms), max_run: Duration::from_millis(max_run_ms) }
    }

    /// Whether `pid` still runs a second after the run ended: SIGKILL is delivered
    /// asynchronously, and a killed orphan is a zombie until its new parent reaps it (a zombie
    /// runs nothing, so it counts as gone).
    fn alive(pid: i32) -> bool {
        let running = || {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.is_empty() && !stat.rsplit(") ").next().unwrap_or("").starts_with('Z')
        };
        let until = std::time::Instant::now() + Duration::from_secs(1);
        while running() {
            if std::time::Instant::now() > until {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[tokio::test]
    async fn output_arrives_and_the_exit_status_is_kept() {
        let mut output = Vec::new();
        let ending = supervise(
            &sh("echo one; echo two >&2; exit 3"),
            limits(5_000, 10_000),
            &Activity::default(),
            std::future::pending(),
            |bytes| output.extend_from_slice(bytes),
        )
        .await
        .unwrap();
        let Ending::Exited(status) = ending else { panic!("{ending:?}") };
        assert_eq!(status.code(), Some(3));
        let text = String::from_utf8(output).unwrap();
        assert!(text.contains("one\n") && text.contains("two\n"), "{text:?}");
    }

    /// The pid a test script printed as `pid=<n>`.
    fn printed_pid(text: &str) -> i32 {
        text.lines().find_map(|l| l.strip_prefix("pid=")).unwrap().trim().parse().unwrap()
    }

    /// Starts a shell that leaves a background grandchild and prints its pid, then behaves as
    /// `rest` says; returns the run's ending and the grandchild's pid.
    async fn run_with_grandchild(rest: &str, limits: Limits, cancel_after: Option<Duration>) -> (Ending, i32) {
        let mut output = Vec::new();
        let script = format!("sleep 600 & echo pid=$!; {rest}");
        let cancel = async move {
            match cancel_after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        let ending =
            supervise(&sh(&script), limits, &Activity::default(), cancel, |bytes| output.extend_from_slice(bytes))
                .await
                .unwrap();
        let text = String::from_utf8(output).unwrap();
        let pid = printed_pid(&text);
        (ending, pid)
    }

    #[tokio::test]
    async fn silence_kills_the_whole_tree() {
        let started = std::time::Instant::now();
        let (ending, grandchild) = run_with_grandchild("sleep 600", limits(300, 60_000), None).await;
        assert_eq!(ending, Ending::Silent { for_: Duration::from_millis(300) });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!alive(grandchild), "the grandchild {grandchild} survived");
    }

    #[tokio::test]
    async fn the_run_time_limit_holds_even_with_steady_output() {
        let (ending, grandchild) =
            run_with_grandchild("while true; do echo tick; sleep 0.05; done", limits(1_000, 400), None).await;
        assert_eq!(ending, Ending::OverTime { after: Duration::from_millis(400) });
        assert!(!alive(grandchild));
    }

    #[tokio::test]
    async fn cancel_kills_the_tree() {
        let (ending, grandchild) =
            run_with_grandchild("sleep 600", limits(60_000, 60_000), Some(Duration::from_millis(200))).await;
        assert_eq!(ending, Ending::Canceled);
        assert!(!alive(grandchild));
    }

    #[tokio::test]
    async fn what_a_finished_process_left_behind_is_killed() {
        // The grandchild holds no pipe, so the leader's exit ends the run.
        let mut output = Vec::new();
        let ending = supervise(
            &sh("sleep 600 >/dev/null 2>&1 & echo pid=$!; exit 0"),
            limits(5_000, 10_000),
            &Activity::default(),
            std::future::pending(),
            |bytes| output.extend_from_slice(bytes),
        )
        .await
        .unwrap();
        assert!(matches!(ending, Ending::Exited(status) if status.success()));
        let text = String::from_utf8(output).unwrap();
        let pid = printed_pid(&text);
        assert!(!alive(pid), "the left-behind process {pid} survived");
    }

    #[tokio::test]
    async fn dropping_a_run_midway_kills_the_tree() {
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&output);
        let (program, activity) = (sh("sleep 600 & echo pid=$!; sleep 600"), Activity::default());
        let run = supervise(&program, limits(60_000, 60_000), &activity, std::future::pending(), move |bytes| {
            seen.lock().unwrap().extend_from_slice(bytes)
        });
        // The agent shutting down drops the task running this future.
        assert!(tokio::time::timeout(Duration::from_millis(500), run).await.is_err());
        let text = String::from_utf8(output.lock().unwrap().clone()).unwrap();
        let pid = printed_pid(&text);
        assert!(!alive(pid), "the grandchild {pid} outlived the dropped run");
    }

    #[tokio::test]
    async fn activity_keeps_a_quiet_run_alive() {
        let activity = Activity::default();
        let toucher = activity.clone();
        let touching = tokio::spawn(async move {
            for _ in 0..8 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                toucher.touch();
            }
        });
        let ending =
            supervise(&sh("sleep 0.6; exit 0"), limits(300, 10_000), &activity, std::future::pending(), |_| {})
                .await
                .unwrap();
        touching.await.unwrap();
        assert!(matches!(ending, Ending::Exited(status) if status.success()), "{ending:?}");
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let program = Program {
            path: "/nonexistent/aerender".into(),
            args: Vec::new(),
            dir: None,
            env: Vec::new(),
            tracker: None,
        };
        let result = supervise(&program, limits(100, 100), &Activity::default(), std::future::pending(), |_| {}).await;
        assert_eq!(result.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
