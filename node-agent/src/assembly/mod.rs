//! Assembly: the rendered frames of every segment concatenated, the audio tracks mixed with
//! exact gains, the watermark burnt in, encoded to H.264/AAC MP4 with faststart by ffmpeg, and
//! checked with ffprobe (frame count, duration, audio) before the file appears at its path.
//!
//! ffmpeg runs under [`crate::process::supervise`]: its progress lines reset the no-output
//! watchdog, the run has a maximum time, and cancellation kills it.

mod audio;
mod command;
mod error;
mod escape;
mod frames;
mod plan;
mod probe;
mod progress;
pub mod proto;
mod tools;
mod watermark;

use std::ffi::OsString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

pub use command::{Prepared, ffmpeg_args, filter_graph, output_frames, segment_output_frames};
pub use error::AssemblyError;
pub use frames::{check_frames, concat_list};
pub use plan::{
    Assembly, AudioTrack, Expected, FrameRate, Gain, Mark, OutputSettings, Position, RateControl, Segment, Size,
    TrackKind, Watermark,
};
pub use probe::{Probed, moov_before_mdat};
pub use progress::{Progress, ProgressParser};
pub use tools::{Tools, default_font};

use crate::process::{Activity, Ending, Limits, Program, supervise};

/// What was produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembled {
    pub path: PathBuf,
    /// What ffprobe found (already checked against the plan).
    pub probed: Probed,
    pub size_bytes: u64,
}

/// Assembles `plan` into `plan.output_path`; progress goes to `on_progress`. The output only
/// appears once verified; on any failure nothing is left at the path or beside it.
pub async fn assemble(
    plan: &Assembly,
    tools: &Tools,
    limits: Limits,
    cancel: impl Future<Output = ()>,
    on_progress: impl FnMut(Progress),
) -> Result<Assembled, AssemblyError> {
    plan.validate()?;
    check_frames(&plan.segments)?;
    for track in &plan.audio {
        if !track.source.is_file() {
            return Err(AssemblyError::MissingAudio { path: track.source.clone() });
        }
    }
    let (work, temp_output) = work_paths(&plan.output_path)?;
    std::fs::create_dir_all(&work).map_err(AssemblyError::io(format!("creating {}", work.display())))?;
    let mut cancel = std::pin::pin!(cancel);
    let result = run(plan, tools, limits, &work, &temp_output, cancel.as_mut(), on_progress).await;
    // Whatever happened, the work files go; the partial output too unless it was renamed.
    let _ = std::fs::remove_dir_all(&work);
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_output);
    }
    result
}

/// A work folder and the temporary output, beside the output (same file system: the rename is
/// atomic).
fn work_paths(output: &Path) -> Result<(PathBuf, PathBuf), AssemblyError> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = output.file_name().ok_or_else(|| AssemblyError::InvalidPlan("output has no file name".into()))?;
    let mut work = OsString::from(".");
    work.push(name);
    let mut partial = work.clone();
    work.push(".work");
    partial.push(".partial");
    Ok((dir.join(work), dir.join(partial)))
}

async fn run(
    plan: &Assembly,
    tools: &Tools,
    limits: Limits,
    work: &Path,
    temp_output: &Path,
    mut cancel: Pin<&mut impl Future<Output = ()>>,
    mut on_progress: impl FnMut(Progress),
) -> Result<Assembled, AssemblyError> {
    let mut lists = Vec::new();
    for (i, segment) in plan.segments.iter().enumerate() {
        let list = work.join(format!("segment-{i}.ffconcat"));
        write(&list, concat_list(&segment.frames))?;
        lists.push(list);
    }
    let (mut text_file, mut font) = (None, None);
    if let Some(Watermark { mark: Mark::Text(text), .. }) = &plan.watermark {
        let path = work.join("watermark.txt");
        write(&path, text.clone())?;
        text_file = Some(path);
        font = Some(tools.font.clone().ok_or_else(|| {
            AssemblyError::InvalidPlan("a text watermark needs a font file (none configured or found)".into())
        })?);
    }
    let mut source_lengths = Vec::new();
    for (i, track) in plan.audio.iter().enumerate() {
        let length = if audio::needs_source_length(track) {
            let json = work.join(format!("source-{i}.json"));
            let args = probe::duration_args(&track.source, &json);
            run_tool("ffprobe", &tools.ffprobe, args, limits, cancel.as_mut(), |_| {}).await?;
            Some(probe::parse_duration(&read(&json)?)?)
        } else {
            None
        };
        source_lengths.push(length);
    }
    let prepared = Prepared { lists, text_file, font, source_lengths, temp_output: temp_output.to_path_buf() };
    let args = ffmpeg_args(plan, &prepared)?;
    tracing::debug!(args = %command::display(&args), "running ffmpeg");

    let mut parser = ProgressParser::new(output_frames(plan));
    let ending = supervise(&program(&tools.ffmpeg, args), limits, &Activity::default(), cancel.as_mut(), |bytes| {
        parser.feed(bytes, &mut on_progress)
    })
    .await;
    check_ending("ffmpeg", &tools.ffmpeg, ending, || parser.tail())?;

    let json = work.join("output.json");
    let args = probe::output_args(temp_output, &json);
    run_tool("ffprobe", &tools.ffprobe, args, limits, cancel.as_mut(), |_| {}).await?;
    let probed = probe::parse(&read(&json)?)?;
    probe::verify(&probed, &plan.expected, plan.output.fps.frame(), !plan.audio.is_empty())?;
    if !moov_before_mdat(temp_output).map_err(AssemblyError::io("reading the output's atoms"))? {
        return Err(AssemblyError::OutputMismatch("the moov atom is not before mdat (no faststart)".into()));
    }
    std::fs::rename(temp_output, &plan.output_path)
        .map_err(AssemblyError::io(format!("renaming the output to {}", plan.output_path.display())))?;
    let size_bytes = std::fs::metadata(&plan.output_path).map(|m| m.len()).unwrap_or(0);
    Ok(Assembled { path: plan.output_path.clone(), probed, size_bytes })
}

fn program(path: &Path, args: Vec<OsString>) -> Program {
    Program { path: path.to_path_buf(), args, dir: None, env: Vec::new(), tracker: None }
}

/// Runs a tool whose output is not progress; its output is the error tail.
async fn run_tool(
    tool: &'static str,
    path: &Path,
    args: Vec<OsString>,
    limits: Limits,
    cancel: Pin<&mut impl Future<Output = ()>>,
    mut on_output: impl FnMut(&[u8]),
) -> Result<(), AssemblyError> {
    let mut output = Vec::new();
    let ending = supervise(&program(path, args), limits, &Activity::default(), cancel, |bytes| {
        on_output(bytes);
        output.extend_from_slice(bytes);
    })
    .await;
    check_ending(tool, path, ending, || tail_of(&output))
}

fn tail_of(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn check_ending(
    tool: &'static str,
    path: &Path,
    ending: std::io::Result<Ending>,
    tail: impl FnOnce() -> String,
) -> Result<(), AssemblyError> {
    match ending {
        Ok(Ending::Exited(status)) if status.success() => Ok(()),
        Ok(Ending::Exited(status)) => Err(AssemblyError::ToolFailed { tool, code: status.code(), tail: tail() }),
        Ok(Ending::Silent { for_ }) => Err(AssemblyError::Silent { tool, for_ }),
        Ok(Ending::OverTime { after }) => Err(AssemblyError::OverTime { tool, after }),
        Ok(Ending::Canceled) => Err(AssemblyError::Canceled),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            Err(AssemblyError::ToolNotFound { tool, path: path.to_path_buf() })
        }
        Err(error) => Err(AssemblyError::Io { context: format!("running {tool}"), source: error }),
    }
}

fn write(path: &Path, text: String) -> Result<(), AssemblyError> {
    std::fs::write(path, text).map_err(AssemblyError::io(format!("writing {}", path.display())))
}

fn read(path: &Path) -> Result<String, AssemblyError> {
    std::fs::read_to_string(path).map_err(AssemblyError::io(format!("reading {}", path.display())))
}

/// Limits for an assembly when the task gives none: a minute without progress, two hours in all.
pub const DEFAULT_LIMITS: Limits =
    Limits { no_output: Duration::from_secs(60), max_run: Duration::from_secs(2 * 60 * 60) };
