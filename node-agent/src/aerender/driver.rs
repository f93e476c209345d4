//! One aerender run from start to verdict: the process under watch, its stdout parsed as it
//! comes, and the outcome decided from everything together — the exit code, the log, and the
//! frames on disk. Exit code 0 proves nothing (`docs/aerender.md`): missing footage and failed
//! output modules exit 0 with black or truncated frames, so success also needs a finished
//! composition in the log and every expected frame present, decodable and of the right size.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::argv::{AerenderCommand, ArgvError};
use super::outcome::{self, Verdict};
use super::sequence::frame_path;
use super::transcript::{Progress, RenderStatus, Transcript};
use crate::process::{self, Activity, Ending, Limits, Program};

/// Everything one run needs.
#[derive(Clone, Debug)]
pub struct RenderRun {
    /// The aerender binary (or the simulator).
    pub aerender: PathBuf,
    pub command: AerenderCommand,
    pub limits: Limits,
    /// The size every frame must have; `None` skips the size check.
    pub frame_size: Option<(u32, u32)>,
    /// Extra environment for the process.
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// Where the run is recorded while it lives (see [`crate::strays`]).
    pub tracker: Option<std::sync::Arc<crate::strays::Tracker>>,
}

/// A frame the run left on disk, verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RenderedFrame {
    /// Comp frame number.
    pub frame: u32,
    pub path: PathBuf,
}

/// What a run came to.
#[derive(Debug)]
pub struct RenderReport {
    pub verdict: Verdict,
    /// The exit code, when the process exited by itself with one.
    pub exit_code: Option<i32>,
    /// The signal that ended the process, when one did by itself (Unix; a crash's SIGABRT or
    /// SIGSEGV, not the agent's own kill).
    pub signal: Option<i32>,
    /// The verified frames (all expected ones on success, else those that verified).
    pub frames: Vec<RenderedFrame>,
    /// What the log told.
    pub status: RenderStatus,
    /// The last lines of output, for the report.
    pub log_tail: String,
    pub elapsed: Duration,
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("the render command is invalid: {0}")]
    Argv(#[from] ArgvError),
    #[error("aerender could not be started ({path}): {source}")]
    Spawn { path: PathBuf, source: io::Error },
}

/// What a run says while it goes on.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// The renderer process started with this process id.
    Started(u32),
    /// A frame was rendered.
    Progress(&'a Progress),
    /// The log rules success out (an error, a missing font or footage): once, before any
    /// progress that follows it.
    Failing,
}

/// Runs `run` until it ends, telling `on_event` each rendered frame's progress and whether the
/// run is failing, and decides the outcome. `activity` lets a frame watcher hold off the
/// no-output watchdog; `cancel` stops the run (the whole process tree is killed).
pub async fn render(
    run: &RenderRun,
    activity: &Activity,
    cancel: impl Future<Output = ()>,
    on_event: impl FnMut(RunEvent<'_>),
) -> Result<RenderReport, DriverError> {
    // Told from the spawn hook and the output handler, which never run at the same time.
    let on_event = std::sync::Mutex::new(on_event);
    let tell = |event: RunEvent<'_>| (on_event.lock().unwrap_or_else(std::sync::PoisonError::into_inner))(event);
    let program = Program {
        path: run.aerender.clone(),
        args: run.command.argv()?,
        dir: None,
        env: run.env.clone(),
        tracker: run.tracker.clone(),
    };
    let mut transcript = Transcript::new().with_expected_frames(u64::from(run.command.frames.len()));
    let allow_missing_footage = run.command.continue_on_missing_footage;
    let mut failing = false;
    let mut take = |transcript: &Transcript, progress: Option<Progress>| {
        if !failing && transcript.status().failing(allow_missing_footage) {
            failing = true;
            tell(RunEvent::Failing);
        }
        if let Some(progress) = progress {
            tell(RunEvent::Progress(&progress));
        }
    };
    let started = Instant::now();
    let ending = process::supervise_observed(
        &program,
        run.limits,
        activity,
        cancel,
        |pid| tell(RunEvent::Started(pid)),
        |bytes| {
            let progress = transcript.push_bytes(bytes);
            take(&transcript, progress);
        },
    )
    .await
    .map_err(|source| DriverError::Spawn { path: run.aerender.clone(), source })?;
    let progress = transcript.finish();
    take(&transcript, progress);
    let status = transcript.status().clone();
    let exit_code = match &ending {
        Ending::Exited(exit) => exit.code(),
        _ => None,
    };
    let signal = match &ending {
        #[cfg(unix)]
        Ending::Exited(exit) => std::os::unix::process::ExitStatusExt::signal(exit),
        _ => None,
    };
    // Frames are looked at only when the log leaves success possible: a failed run's frames
    // are not kept either way.
    let checked = if outcome::frames_matter(&ending, &status, run.command.continue_on_missing_footage) {
        Some(verify_frames(run).await)
    } else {
        None
    };
    let (frames, bad_frame) = match checked {
        Some(Ok(frames)) => (frames, None),
        Some(Err((frames, bad))) => (frames, Some(bad)),
        None => (Vec::new(), None),
    };
    let verdict = outcome::decide(&ending, &status, run.command.continue_on_missing_footage, bad_frame);
    let frames = if verdict.is_success() { frames } else { Vec::new() };
    Ok(RenderReport {
        verdict,
        exit_code,
        signal,
        frames,
        status,
        log_tail: transcript.tail_text(),
        elapsed: started.elapsed(),
    })
}

/// A frame that is missing, unreadable or the wrong size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadFrame {
    pub frame: u32,
    pub problem: String,
}

/// Checks every expected frame; on the first bad one, the good ones so far and what is wrong.
async fn verify_frames(run: &RenderRun) -> Result<Vec<RenderedFrame>, (Vec<RenderedFrame>, BadFrame)> {
    let pattern = run.command.output.to_string_lossy().into_owned();
    let expected: Vec<u32> = run.command.frames.frames().collect();
    let size = run.frame_size;
    let checked = tokio::task::spawn_blocking(move || {
        let mut good = Vec::with_capacity(expected.len());
        for frame in expected {
            let path = PathBuf::from(frame_path(&pattern, frame));
            if let Err(problem) = check_frame(&path, size) {
                return Err((good, BadFrame { frame, problem }));
            }
            good.push(RenderedFrame { frame, path });
        }
        Ok(good)
    })
    .await;
    checked.unwrap_or_else(|e| Err((Vec::new(), BadFrame { frame: 0, problem: format!("frame check failed: {e}") })))
}

/// A frame exists, decodes to the end, and (for PNG) has the expected size. Other formats are
/// only checked to exist and be non-empty.
pub fn check_frame(path: &std::path::Path, size: Option<(u32, u32)>) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{} is missing or unreadable: {e}", path.display()))?;
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Ok(());
    }
    let decoder = png::Decoder::new(io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().map_err(|e| format!("{} does not decode: {e}", path.display()))?;
    let (width, height) = (reader.info().width, reader.info().height);
    if let Some((w, h)) = size
        && (w, h) != (width, height)
    {
        return Err(format!("{} is {width}x{height}, not {w}x{h}", path.display()));
    }
    let mut pixels = vec![0; reader.output_buffer_size().unwrap_or(0)];
    reader.next_frame(&mut pixels).map_err(|e| format!("{} does not decode: {e}", path.display()))?;
    Ok(())
}
