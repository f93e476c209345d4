//! The aerender stdout parser (`docs/aerender.md`, "What stdout looks like").
//!
//! [`Line::parse`] classifies one line; a [`Transcript`] is fed the process's stdout (bytes or
//! lines) and keeps what the driver decides on: the banner, the composition, the settings block,
//! frame progress, the total time, failure [`Signal`]s, the first error and a bounded tail of the
//! log. Nothing here fails: locale leaks everywhere, so an unknown or garbled line is
//! [`Line::Unknown`] and parsing goes on.

use std::collections::VecDeque;
use std::time::Duration;

/// Lines kept in the log tail unless configured otherwise.
pub const DEFAULT_TAIL_LINES: usize = 200;
/// Bytes kept in the log tail (each line counted with its newline) unless configured otherwise.
pub const DEFAULT_TAIL_BYTES: usize = 64 * 1024;
/// Longer lines are cut: a stream without newlines must not grow memory without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Distinct signals kept; a log repeating one warning with new paths must not grow memory either.
const MAX_SIGNALS: usize = 64;

/// A comp time as aerender prints it: `H:MM:SS:FF`, or `H;MM;SS;FF` for drop-frame. A bare
/// number (projects that display frames instead of timecode) parses as frames only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timecode {
    pub hours: u32,
    pub minutes: u32,
    pub seconds: u32,
    pub frames: u32,
    pub drop_frame: bool,
}

impl Timecode {
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let fields: Vec<u32> = text.split([':', ';']).map(parse_digits).collect::<Option<_>>()?;
        match fields[..] {
            [frames] => Some(Self { hours: 0, minutes: 0, seconds: 0, frames, drop_frame: false }),
            [hours, minutes, seconds, frames] => {
                Some(Self { hours, minutes, seconds, frames, drop_frame: text.contains(';') })
            }
            _ => None,
        }
    }

    /// The comp frame number at `fps`; `None` for a meaningless rate or an overflowing time.
    /// Drop-frame counting applies only at the NTSC rates (29.97, 59.94) it exists for.
    pub fn to_frame(self, fps: f64) -> Option<u64> {
        if !(fps.is_finite() && fps > 0.0 && fps < 1000.0) {
            return None;
        }
        let nominal = (fps.round() as u64).max(1);
        let minutes = u64::from(self.hours).checked_mul(60)?.checked_add(u64::from(self.minutes))?;
        let seconds = minutes.checked_mul(60)?.checked_add(u64::from(self.seconds))?;
        let frames = seconds.checked_mul(nominal)?.checked_add(u64::from(self.frames))?;
        let ntsc = (nominal == 30 || nominal == 60) && (fps - nominal as f64).abs() > 1e-6;
        if self.drop_frame && ntsc {
            // Two (four at 59.94) frame numbers are skipped each minute except every tenth.
            frames.checked_sub(nominal / 15 * (minutes - minutes / 10))
        } else {
            Some(frames)
        }
    }
}

/// One key of the settings block that progress depends on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Setting {
    Start(Timecode),
    End(Timecode),
    Duration(Timecode),
    /// Frames per second, decimal comma accepted (`25,00 (comp)`).
    FrameRate(f64),
}

/// A frame line: `PROGRESS:  0:00:02:01 (2): 0 Seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLine {
    /// The frame's comp time.
    pub timecode: Timecode,
    /// 1-based position within this render, not the comp frame number.
    pub position: u64,
    /// How long the frame took, when readable.
    pub took: Option<Duration>,
}

/// Who reported an error line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// `aerender ERROR: ...`, `aerender ERROR -1701: ...`, `aerender SYNTAX ERROR: ...`.
    Aerender,
    /// `Error: ...` (`Fehler: ...`): After Effects or a script's exception.
    AfterEffects,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorLine {
    pub source: ErrorSource,
    /// The number in `aerender ERROR -1701:` (macOS Apple-event failures).
    pub code: Option<i32>,
    /// The text after the error prefix.
    pub message: String,
}

/// The kind of one stdout line.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    /// Empty, or `PROGRESS:` with nothing after it.
    Blank,
    /// Banner: `aerender version 24.2.1x2`.
    Version(String),
    /// Banner: `PROGRESS: Launching After Effects...`.
    Launching,
    /// Banner: `PROGRESS: ...After Effects successfully launched`.
    Launched,
    /// `Running Script: <path>`.
    RunningScript(String),
    /// `Starting composition <name>.`, quotes stripped.
    StartingComp(String),
    Setting(Setting),
    Frame(FrameLine),
    /// `Finished composition <name>.`, quotes stripped.
    FinishedComp(String),
    /// `Total Time Elapsed: 1 Min, 28 Sec`.
    TotalTime(Duration),
    /// The text after `WARNING:`.
    Warning(String),
    Error(ErrorLine),
    /// The text after `INFO:` (for example a project that must be converted).
    Info(String),
    /// `INFO: Render aborted.`
    RenderAborted,
    /// GPU, DXGI, LoadLibrary and `INFO  Environment` lines.
    Noise,
    /// Anything else, including settings and log lines nobody needs.
    Unknown,
}

impl Line {
    pub fn parse(line: &str) -> Self {
        // A byte-order mark may lead the first line (Windows builds); it is never content.
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            return Self::Blank;
        }
        if let Some(version) = line.strip_prefix("aerender version") {
            return Self::Version(version.trim().to_owned());
        }
        if let Some(error) = parse_aerender_error(line) {
            return Self::Error(error);
        }
        if let Some(text) = strip_any_prefix(line, &["WARNING:", "WARNUNG:"]) {
            return Self::Warning(text.trim().to_owned());
        }
        if let Some(text) = strip_any_prefix(line, &["Error:", "Fehler:"]) {
            let message = text.trim().to_owned();
            return Self::Error(ErrorLine { source: ErrorSource::AfterEffects, code: None, message });
        }
        if is_noise(line) {
            return Self::Noise;
        }
        if let Some(text) = line.strip_prefix("INFO:") {
            return if text.contains("Render aborted") {
                Self::RenderAborted
            } else {
                Self::Info(text.trim().to_owned())
            };
        }
        // The render log is prefixed `PROGRESS:`; a `-log` file may not be, so both parse alike.
        parse_progress_body(line.strip_prefix("PROGRESS:").map_or(line, str::trim))
    }

    pub fn is_banner(&self) -> bool {
        matches!(self, Self::Version(_) | Self::Launching | Self::Launched)
    }
}

/// A failure pattern from the table in `docs/aerender.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signal {
    /// `No comp was found with the given name.`: template error, no retry.
    CompNotFound,
    /// `No output module template was found with the given name.` (or a render-settings
    /// template): template error, no retry.
    TemplateNotFound,
    /// `Error executing script: <path>`; `message` is the `Error: ...` line after it.
    ScriptError { script: String, message: Option<String> },
    /// `Runtime error in After Effects.`
    AfterEffectsRuntimeError,
    /// `Font family: X, Font style: Y` in a warning: never ship.
    MissingFont { family: String, style: Option<String> },
    /// `Unable to Render: File Not Found <path>`, often with exit code 0.
    MissingFootage { path: String },
    /// `An output module failed.`: machine error.
    OutputModuleFailed,
    /// `After Effects can not render for aerender. Another instance ...`: kill strays, retry.
    AnotherInstance,
    /// `this project must be converted from version 23.1`: a warning for the template author.
    ProjectNeedsConversion { from_version: Option<String> },
    /// `INFO: Render aborted.`
    RenderAborted,
}

impl Signal {
    /// Whether the render must not be shipped. Missing footage counts; a job that asked for
    /// `-continueOnMissingFootage` overrides that (see [`Transcript::log_shows_success`]).
    pub fn fails_render(&self) -> bool {
        !matches!(self, Self::ProjectNeedsConversion { .. })
    }

    /// Whether the machine, not the template, is to blame, so another try may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::OutputModuleFailed | Self::AnotherInstance)
    }
}

/// The settings block of the render (`Start`, `End`, `Duration`, `Frame Rate`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RenderSettings {
    pub start: Option<Timecode>,
    pub end: Option<Timecode>,
    pub duration: Option<Timecode>,
    pub frame_rate: Option<f64>,
}

impl RenderSettings {
    pub fn start_frame(&self) -> Option<u64> {
        self.start?.to_frame(self.frame_rate?)
    }

    pub fn end_frame(&self) -> Option<u64> {
        self.end?.to_frame(self.frame_rate?)
    }

    pub fn duration_frames(&self) -> Option<u64> {
        self.duration?.to_frame(self.frame_rate?)
    }
}

/// What a frame line tells the caller.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// 1-based position within this render.
    pub position: u64,
    pub timecode: Timecode,
    /// The comp frame, once the frame rate is known.
    pub comp_frame: Option<u64>,
    /// Percent done (0..=100) after this frame, when it can be told.
    pub percent: Option<f64>,
    pub took: Option<Duration>,
}

/// What the log has said so far about one aerender run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RenderStatus {
    /// Lines parsed so far.
    pub lines_seen: u64,
    /// From the `aerender version` line.
    pub version: Option<String>,
    /// Whether any banner line appeared (it may come last, after the render log).
    pub saw_banner: bool,
    /// The composition named by `Starting composition` (or `Finished composition`).
    pub comp: Option<String>,
    pub comp_started: bool,
    pub comp_finished: bool,
    pub settings: RenderSettings,
    /// Frame lines seen.
    pub frames_reported: u64,
    /// The 1-based position of the latest frame line.
    pub last_position: Option<u64>,
    /// The comp frame of the latest frame line, when the frame rate was known.
    pub last_comp_frame: Option<u64>,
    /// The highest percent reported; multi-frame rendering may print frames out of order.
    pub percent: Option<f64>,
    /// From `Total Time Elapsed:`.
    pub total_elapsed: Option<Duration>,
    /// Distinct failure signals, in the order first seen.
    pub signals: Vec<Signal>,
    /// The message of the first error line.
    pub first_error: Option<String>,
}

impl RenderStatus {
    /// What the log alone says: the composition finished, the total time was printed, no error
    /// line and no failure signal. Exit code and output verification are the caller's part.
    pub fn log_shows_success(&self, allow_missing_footage: bool) -> bool {
        self.finished_cleanly(allow_missing_footage) && self.total_elapsed.is_some()
    }

    /// The composition finished with no error line and no failure signal, whether or not the
    /// total time followed (aerender may hang after `Finished composition`).
    pub fn finished_cleanly(&self, allow_missing_footage: bool) -> bool {
        self.comp_finished && !self.failing(allow_missing_footage)
    }

    /// Whether the log already rules success out (an error line or a failure signal): what the
    /// run writes from now on must not be shipped.
    pub fn failing(&self, allow_missing_footage: bool) -> bool {
        let tolerated = |signal: &Signal| {
            !signal.fails_render() || (allow_missing_footage && matches!(signal, Signal::MissingFootage { .. }))
        };
        self.first_error.is_some() || !self.signals.iter().all(tolerated)
    }
}

/// One aerender run's stdout, parsed as it arrives: the [`RenderStatus`] and a bounded log tail.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transcript {
    status: RenderStatus,
    tail: LogTail,
    expected_frames: Option<u64>,
    /// Bytes after the last newline, at most [`MAX_LINE_BYTES`].
    partial: Vec<u8>,
    /// A script error was just printed; its message is on the next `Error:` line.
    awaiting_script_message: bool,
}

impl Transcript {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bounds the log tail to `lines` lines and `bytes` bytes (newlines included).
    pub fn with_tail_limits(mut self, lines: usize, bytes: usize) -> Self {
        self.tail.max_lines = lines;
        self.tail.max_bytes = bytes;
        self
    }

    /// The frames this render should produce: the percent base when no settings block appears.
    pub fn with_expected_frames(mut self, frames: u64) -> Self {
        self.expected_frames = Some(frames);
        self
    }

    /// Feeds raw stdout. Lines end at `\n` (a trailing `\r` is dropped); a partial last line
    /// waits for the next call or [`Transcript::finish`]. Returns the latest progress, if any.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> Option<Progress> {
        let mut latest = None;
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end);
            self.buffer(line);
            let text = decode(&self.partial);
            self.partial.clear();
            latest = self.push_line(&text).or(latest);
            rest = after.get(1..).unwrap_or_default();
        }
        self.buffer(rest);
        latest
    }

    /// Parses what is left after the last newline, at end of stream.
    pub fn finish(&mut self) -> Option<Progress> {
        if self.partial.is_empty() {
            return None;
        }
        let text = decode(&self.partial);
        self.partial.clear();
        self.push_line(&text)
    }

    /// Feeds one line (without its newline). Returns the progress when it is a frame line.
    pub fn push_line(&mut self, line: &str) -> Option<Progress> {
        let line = line.trim_end();
        self.status.lines_seen += 1;
        self.tail.push(line);
        let parsed = Line::parse(line);
        self.scan_signals(line, &parsed);
        match parsed {
            Line::Version(version) => {
                self.status.saw_banner = true;
                self.status.version = Some(version);
            }
            Line::Launching | Line::Launched => self.status.saw_banner = true,
            Line::StartingComp(name) => {
                self.status.comp = Some(name);
                self.status.comp_started = true;
                self.status.comp_finished = false;
            }
            Line::FinishedComp(name) => {
                self.status.comp_finished = true;
                self.status.comp.get_or_insert(name);
            }
            Line::Setting(setting) => match setting {
                Setting::Start(t) => self.status.settings.start = Some(t),
                Setting::End(t) => self.status.settings.end = Some(t),
                Setting::Duration(t) => self.status.settings.duration = Some(t),
                Setting::FrameRate(fps) => self.status.settings.frame_rate = Some(fps),
            },
            Line::Frame(frame) => return Some(self.on_frame(frame)),
            Line::TotalTime(elapsed) => self.status.total_elapsed = Some(elapsed),
            Line::Error(error) if self.status.first_error.is_none() => {
                let message = if error.message.is_empty() { line.trim() } else { &error.message };
                self.status.first_error = Some(message.to_owned());
            }
            _ => {}
        }
        None
    }

    pub fn status(&self) -> &RenderStatus {
        &self.status
    }

    /// The last lines of the log, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.lines.iter().map(String::as_str)
    }

    /// The log tail as text, each line ending in `\n`; never longer than the byte bound.
    pub fn tail_text(&self) -> String {
        self.tail.lines.iter().fold(String::with_capacity(self.tail.bytes), |mut text, line| {
            text.push_str(line);
            text.push('\n');
            text
        })
    }

    fn buffer(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.partial.len());
        self.partial.extend_from_slice(bytes.get(..room).unwrap_or(bytes));
    }

    fn on_frame(&mut self, frame: FrameLine) -> Progress {
        self.status.frames_reported += 1;
        self.status.last_position = Some(frame.position);
        let comp_frame = self.status.settings.frame_rate.and_then(|fps| frame.timecode.to_frame(fps));
        self.status.last_comp_frame = comp_frame;
        let percent = self.percent_after(comp_frame, frame.position);
        if let Some(p) = percent {
            self.status.percent = Some(self.status.percent.map_or(p, |old| old.max(p)));
        }
        Progress { position: frame.position, timecode: frame.timecode, comp_frame, percent, took: frame.took }
    }

    /// (timecode − Start) / Duration, counting the frame just done; else position / expected.
    fn percent_after(&self, comp_frame: Option<u64>, position: u64) -> Option<f64> {
        let ratio = |done: u64, total: u64| (done as f64 / total as f64 * 100.0).clamp(0.0, 100.0);
        let duration = self.status.settings.duration_frames().filter(|&d| d > 0);
        if let (Some(frame), Some(start), Some(total)) = (comp_frame, self.status.settings.start_frame(), duration) {
            let done = frame.checked_sub(start).map_or(0, |d| d.saturating_add(1));
            return Some(ratio(done, total));
        }
        self.expected_frames.filter(|&e| e > 0).or(duration).map(|total| ratio(position, total))
    }

    fn scan_signals(&mut self, text: &str, line: &Line) {
        if self.awaiting_script_message {
            match line {
                Line::Blank | Line::Noise => {}
                Line::Error(ErrorLine { source: ErrorSource::AfterEffects, message, .. }) => {
                    self.awaiting_script_message = false;
                    let pending = self.status.signals.iter_mut().rev().find_map(|s| match s {
                        Signal::ScriptError { message: slot @ None, .. } => Some(slot),
                        _ => None,
                    });
                    if let Some(slot) = pending {
                        *slot = Some(message.clone());
                    }
                }
                _ => self.awaiting_script_message = false,
            }
        }
        if text.contains("No comp was found with the given name") {
            self.note(Signal::CompNotFound);
        }
        if text.contains("template was found with the given name") {
            self.note(Signal::TemplateNotFound);
        }
        if let Some(script) = after(text, "Error executing script:") {
            self.note(Signal::ScriptError { script: script.trim().to_owned(), message: None });
            self.awaiting_script_message = true;
        }
        if text.contains("Runtime error in After Effects") {
            self.note(Signal::AfterEffectsRuntimeError);
        }
        if matches!(line, Line::Warning(_)) {
            // One grouped warning may name several fonts.
            for entry in text.split("Font family:").skip(1) {
                let (family, style) = match entry.split_once("Font style:") {
                    Some((family, style)) => (family, Some(trim_list_punctuation(style).to_owned())),
                    None => (entry, None),
                };
                self.note(Signal::MissingFont { family: trim_list_punctuation(family).to_owned(), style });
            }
        }
        if let Some(path) = after(text, "File Not Found") {
            let path = path.trim_start_matches(':').trim();
            self.note(Signal::MissingFootage { path: strip_quotes(path).to_owned() });
        }
        if text.contains("An output module failed") {
            self.note(Signal::OutputModuleFailed);
        }
        if text.contains("After Effects can not render for aerender") {
            self.note(Signal::AnotherInstance);
        }
        if let Some(rest) = after(text, "this project must be converted") {
            let from_version = after(rest, "from version")
                .and_then(|v| v.split_whitespace().next())
                .map(|v| v.trim_end_matches(['.', ',']).to_owned());
            self.note(Signal::ProjectNeedsConversion { from_version });
        }
        if *line == Line::RenderAborted {
            self.note(Signal::RenderAborted);
        }
    }

    fn note(&mut self, signal: Signal) {
        if self.status.signals.len() < MAX_SIGNALS && !self.status.signals.contains(&signal) {
            self.status.signals.push(signal);
        }
    }
}

/// The last lines of the log, bounded in lines and in bytes (each line counted with its newline).
#[derive(Clone, Debug, PartialEq)]
struct LogTail {
    max_lines: usize,
    max_bytes: usize,
    lines: VecDeque<String>,
    bytes: usize,
}

impl Default for LogTail {
    fn default() -> Self {
        Self { max_lines: DEFAULT_TAIL_LINES, max_bytes: DEFAULT_TAIL_BYTES, lines: VecDeque::new(), bytes: 0 }
    }
}

impl LogTail {
    fn push(&mut self, line: &str) {
        if self.max_lines == 0 || self.max_bytes == 0 {
            return;
        }
        let line = truncate(line, self.max_bytes - 1);
        self.bytes += line.len() + 1;
        self.lines.push_back(line.to_owned());
        while self.lines.len() > self.max_lines || self.bytes > self.max_bytes {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }
}

/// `aerender ERROR: m`, `aerender ERROR -1701: m`, `aerender SYNTAX ERROR: m` (`FEHLER` too).
fn parse_aerender_error(line: &str) -> Option<ErrorLine> {
    let rest = strip_any_prefix(line, &["aerender "])?;
    let (head, message) = rest.split_once(':').unwrap_or((rest, ""));
    let upper = head.trim().to_ascii_uppercase();
    if !["ERROR", "FEHLER", "SYNTAX"].iter().any(|word| upper.starts_with(word)) {
        return None;
    }
    let code = head.split_whitespace().last().and_then(|word| word.parse().ok());
    Some(ErrorLine { source: ErrorSource::Aerender, code, message: message.trim().to_owned() })
}

fn is_noise(line: &str) -> bool {
    line.contains("DXGI")
        || line.starts_with("LoadLibrary")
        || line.contains("GPU Warning")
        || (line.contains("INFO") && line.contains("Environment"))
}

/// A render-log line with its `PROGRESS:` prefix removed.
fn parse_progress_body(body: &str) -> Line {
    if body.is_empty() {
        return Line::Blank;
    }
    if body.starts_with("Launching After Effects") {
        return Line::Launching;
    }
    if body.contains("After Effects successfully launched") {
        return Line::Launched;
    }
    if let Some(path) = body.strip_prefix("Running Script:") {
        return Line::RunningScript(path.trim().to_owned());
    }
    // Dates come in any locale (`7/23/20 2:40:31 PM GMT+5:30`), so find the marker, not the date.
    if let Some(name) = after(body, "Starting composition") {
        return Line::StartingComp(comp_name(name).to_owned());
    }
    if let Some(name) = after(body, "Finished composition") {
        return Line::FinishedComp(comp_name(name).to_owned());
    }
    if let Some(elapsed) = body.strip_prefix("Total Time Elapsed:") {
        return parse_elapsed(elapsed).map_or(Line::Unknown, Line::TotalTime);
    }
    if body.contains("Render aborted") {
        return Line::RenderAborted;
    }
    if let Some(frame) = parse_frame_line(body) {
        return Line::Frame(frame);
    }
    parse_setting(body).map_or(Line::Unknown, Line::Setting)
}

/// `0:00:02:01 (2): 0 Seconds`.
fn parse_frame_line(body: &str) -> Option<FrameLine> {
    let (timecode, rest) = body.split_once('(')?;
    let (position, took) = rest.split_once("):")?;
    Some(FrameLine {
        timecode: Timecode::parse(timecode)?,
        position: parse_digits(position.trim())?,
        took: parse_elapsed(took),
    })
}

fn parse_setting(body: &str) -> Option<Setting> {
    let (key, value) = body.split_once(':')?;
    let first = value.split_whitespace().next()?;
    match key.trim().to_ascii_lowercase().as_str() {
        "start" | "anfang" => Timecode::parse(first).map(Setting::Start),
        "end" | "ende" => Timecode::parse(first).map(Setting::End),
        "duration" | "dauer" => Timecode::parse(first).map(Setting::Duration),
        "frame rate" | "bildrate" | "framerate" => {
            let fps: f64 = first.replace(',', ".").parse().ok()?;
            (fps.is_finite() && fps > 0.0 && fps < 1000.0).then_some(Setting::FrameRate(fps))
        }
        _ => None,
    }
}

/// `17 Seconds`, `1 Min, 28 Sec`, `26 Hr, 15 Min` (German `Std`/`Sek` too).
fn parse_elapsed(text: &str) -> Option<Duration> {
    let words: Vec<&str> = text.split(|c: char| c == ',' || c.is_whitespace()).filter(|w| !w.is_empty()).collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return None;
    }
    let mut total: u64 = 0;
    for pair in words.chunks(2) {
        let [count, unit] = pair else { return None };
        let count: u64 = parse_digits(count)?;
        let unit = unit.trim_end_matches('.').to_ascii_lowercase();
        let scale = if unit.starts_with("std") || unit.starts_with('h') {
            3600
        } else if unit.starts_with("min") {
            60
        } else if unit.starts_with('s') {
            1
        } else {
            return None;
        };
        total = total.checked_add(count.checked_mul(scale)?)?;
    }
    Some(Duration::from_secs(total))
}

/// A composition name as printed: `“Scene 2”.`, `"Scene 2".`, `Scene 2.` all give `Scene 2`.
fn comp_name(text: &str) -> &str {
    let text = text.trim();
    strip_quotes(text.strip_suffix('.').unwrap_or(text))
}

/// Strips one quote character from each end, whichever the locale chose.
fn strip_quotes(text: &str) -> &str {
    const QUOTES: &[char] = &['"', '\'', '“', '”', '„', '‟', '‘', '’', '‚', '«', '»', '‹', '›'];
    let text = text.strip_prefix(QUOTES).unwrap_or(text);
    text.strip_suffix(QUOTES).unwrap_or(text)
}

fn trim_list_punctuation(text: &str) -> &str {
    text.trim().trim_end_matches([',', ';', '.']).trim()
}

/// The text after the first `marker`.
fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).and_then(|at| text.get(at + marker.len()..))
}

/// `text` without the first of `prefixes` it starts with, ignoring ASCII case.
fn strip_any_prefix<'a>(text: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    prefixes.iter().find_map(|prefix| {
        let head = text.get(..prefix.len())?;
        head.eq_ignore_ascii_case(prefix).then(|| text.get(prefix.len()..)).flatten()
    })
}

/// Plain ASCII digits only (`str::parse` would also take a sign).
fn parse_digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| text.parse().ok()).flatten()
}

/// The longest prefix of `text` within `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    text.get(..text.floor_char_boundary(max)).unwrap_or_default()
}

/// Decodes one line of aerender output. UTF-8 first; Windows aerender may write the system
/// code page (CP-1252: curly quotes, umlauts) or UTF-16 (NUL bytes between ASCII), so invalid
/// UTF-8 decodes as CP-1252 and NULs are dropped. A line cut at [`MAX_LINE_BYTES`] inside a
/// character stays UTF-8.
fn decode(bytes: &[u8]) -> String {
    let without_nul: Vec<u8>;
    let bytes = if bytes.contains(&0) {
        without_nul = bytes.iter().copied().filter(|&b| b != 0).collect();
        &without_nul
    } else {
        bytes
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(error) if error.error_len().is_none() => String::from_utf8_lossy(bytes).into_owned(),
        Err(_) => bytes.iter().map(|&b| cp1252(b)).collect(),
    }
}

fn cp1252(byte: u8) -> char {
    // 0x80..=0x9F differ from Latin-1; the rest map to the same code point.
    const HIGH: [char; 32] = [
        '€', '\u{fffd}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{fffd}', 'Ž', '\u{fffd}',
        '\u{fffd}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{fffd}', 'ž', 'Ÿ',
    ];
    match byte {
        0x80..=0x9f => HIGH[usize::from(byte - 0x80)],
        _ => char::from(byte),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    const SUCCESS: &str = "aerender version 24.2.1x2
PROGRESS: Launching After Effects...
PROGRESS: ...After Effects successfully launched
Running Script: /var/lib/flatrender/work/t-81/inject.jsx
PROGRESS: Adding specified comp to Render Queue
PROGRESS:  11/29/26 7:40:02 PM: Starting composition “Scene 2”.
PROGRESS:  
PROGRESS:  Render Settings: Best Settings
PROGRESS:  Time Span: Custom
PROGRESS:  Start: 0:00:02:00
PROGRESS:  End: 0:00:02:02
PROGRESS:  Duration: 0:00:00:03
PROGRESS:  Frame Rate: 30.00 (comp)
PROGRESS:  Output To: /var/lib/flatrender/work/t-81/out/frame_[#####].png
PROGRESS:  Format: PNG
PROGRESS:  
PROGRESS:  0:00:02:00 (1): 1 Seconds
PROGRESS:  0:00:02:01 (2): 0 Seconds
PROGRESS:  0:00:02:02 (3): 0 Seconds
PROGRESS:  11/29/26 7:40:05 PM: Finished composition “Scene 2”.
PROGRESS:  
PROGRESS:  Total Time Elapsed: 3 Seconds
";

    const TEMPLATE_ERROR: &str = "aerender version 24.2.1x2
PROGRESS: Launching After Effects...
WARNING:After Effects warning: Grouped_Message_{some layers have missing dependencies.|||a layer has missing dependencies.###@0 dependencies are missing:}Text Layer: Font family: Montserrat, Font style: Bold
Running Script: C:\\flatrender\\work\\t-7\\inject.jsx
aerender ERROR: No comp was found with the given name.
";

    const SILENT_FAILURE: &str = "PROGRESS:  Total Time Elapsed: 0 Seconds
WARNING:After Effects warning: logged one error  error: Unable to Render: File Not Found D:\\assets\\logo.png
";

    fn feed(text: &str) -> (RenderStatus, Vec<Progress>) {
        let mut transcript = Transcript::new();
        let progress = text.lines().filter_map(|line| transcript.push_line(line)).collect();
        (transcript.status().clone(), progress)
    }

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() < 1e-9)
    }

    #[test]
    fn successful_chunk_reports_progress_by_timecode() {
        let (s, progress) = feed(SUCCESS);
        let percents: Vec<_> = progress.iter().map(|p| p.percent).collect();
        assert_eq!(progress.len(), 3);
        assert!(close(percents[0], 100.0 / 3.0) && close(percents[1], 200.0 / 3.0), "{percents:?}");
        assert!(close(percents[2], 100.0));
        assert_eq!(
            progress.iter().map(|p| (p.position, p.comp_frame)).collect::<Vec<_>>(),
            [(1, Some(60)), (2, Some(61)), (3, Some(62))]
        );
        assert_eq!(progress[0].took, Some(Duration::from_secs(1)));
        assert!(s.saw_banner && s.comp_started && s.comp_finished);
        assert_eq!((s.version.as_deref(), s.comp.as_deref()), (Some("24.2.1x2"), Some("Scene 2")));
        let settings = s.settings;
        assert_eq!(
            (settings.start_frame(), settings.end_frame(), settings.duration_frames()),
            (Some(60), Some(62), Some(3))
        );
        assert_eq!(settings.frame_rate, Some(30.0));
        assert_eq!((s.frames_reported, s.last_position, s.last_comp_frame), (3, Some(3), Some(62)));
        assert!(close(s.percent, 100.0));
        assert_eq!(s.total_elapsed, Some(Duration::from_secs(3)));
        assert_eq!((s.signals.len(), s.first_error.as_deref(), s.lines_seen), (0, None, 22));
        assert!(s.log_shows_success(false));
        assert_eq!(
            Line::parse("Running Script: /var/lib/flatrender/work/t-81/inject.jsx"),
            Line::RunningScript("/var/lib/flatrender/work/t-81/inject.jsx".into())
        );
    }

    #[test]
    fn template_error_gives_font_and_comp_signals() {
        let (s, progress) = feed(TEMPLATE_ERROR);
        assert!(progress.is_empty());
        assert_eq!(
            s.signals,
            [Signal::MissingFont { family: "Montserrat".into(), style: Some("Bold".into()) }, Signal::CompNotFound]
        );
        assert_eq!(s.first_error.as_deref(), Some("No comp was found with the given name."));
        assert!(s.saw_banner && !s.comp_started && !s.comp_finished);
        assert!(!s.log_shows_success(true));
        assert!(s.signals.iter().all(|s| s.fails_render() && !s.is_retryable()));
        let (s, _) = feed("WARNING: x: Font family: Arial, Font style: Bold Italic; Font family: Inter.");
        assert_eq!(
            s.signals,
            [
                Signal::MissingFont { family: "Arial".into(), style: Some("Bold Italic".into()) },
                Signal::MissingFont { family: "Inter".into(), style: None }
            ]
        );
    }

    #[test]
    fn silent_failure_with_exit_zero_is_not_success() {
        let (s, _) = feed(SILENT_FAILURE);
        assert_eq!(s.total_elapsed, Some(Duration::ZERO));
        assert_eq!(s.signals, [Signal::MissingFootage { path: "D:\\assets\\logo.png".into() }]);
        assert!(!s.saw_banner && !s.comp_finished);
        assert!(!s.log_shows_success(false) && !s.log_shows_success(true));

        // After a finished render, missing footage fails unless the job allowed it.
        let (s, _) = feed(&format!("{SUCCESS}{}", SILENT_FAILURE.lines().nth(1).unwrap()));
        assert!(!s.log_shows_success(false) && s.log_shows_success(true));
    }

    #[test]
    fn banner_printed_last_still_counts() {
        let body: Vec<&str> = SUCCESS.lines().skip(3).collect();
        let (s, _) = feed(&format!("{}\n{}", body.join("\n"), SUCCESS.lines().take(3).collect::<Vec<_>>().join("\n")));
        assert!(s.saw_banner && s.comp_finished && s.log_shows_success(false));
        assert_eq!(s.version.as_deref(), Some("24.2.1x2"));
        let (s, _) = feed("PROGRESS: ...After Effects successfully launched");
        assert!(s.saw_banner && s.version.as_deref().is_none());
    }

    #[test]
    fn german_keys_decimal_comma_and_european_date() {
        let (s, progress) = feed(
            "PROGRESS:  19.05.2022 15:23:11: Starting composition „Szene 1“.
PROGRESS:  Anfang: 0:00:01:00
PROGRESS:  Ende: 0:00:01:09
PROGRESS:  Dauer: 0:00:00:10
PROGRESS:  Bildrate: 25,00 (comp)
PROGRESS:  0:00:01:04 (5): 2 Sek
Fehler: After Effects error: nicht genug Speicher",
        );
        assert_eq!(s.comp.as_deref(), Some("Szene 1"));
        assert_eq!(s.settings.frame_rate, Some(25.0));
        assert_eq!((s.settings.start_frame(), s.settings.duration_frames()), (Some(25), Some(10)));
        assert_eq!(progress[0].comp_frame, Some(29));
        assert!(close(progress[0].percent, 50.0));
        assert_eq!(progress[0].took, Some(Duration::from_secs(2)));
        assert_eq!(s.first_error.as_deref(), Some("After Effects error: nicht genug Speicher"));
    }

    #[test]
    fn drop_frame_timecodes() {
        let tc = Timecode::parse("1;34;40;09").unwrap();
        assert!(tc.drop_frame);
        assert_eq!(tc.to_frame(29.97), Some(170_239));
        assert_eq!(Timecode::parse("0;01;00;02").unwrap().to_frame(29.97), Some(1800));
        assert_eq!(Timecode::parse("0;01;00;04").unwrap().to_frame(59.94), Some(3600));
        assert_eq!(Timecode::parse("0;10;00;00").unwrap().to_frame(29.97), Some(17_982));
        // Non-drop rates count every frame whatever the separator.
        assert_eq!(Timecode::parse("0:01:00:02").unwrap().to_frame(29.97), Some(1802));
        assert_eq!(Timecode::parse("0;01;00;02").unwrap().to_frame(25.0), Some(1502));
        assert_eq!(Timecode::parse("0:00:01:00").unwrap().to_frame(23.976), Some(24));
        assert_eq!(Timecode::parse("00125").unwrap().to_frame(30.0), Some(125));
        assert_eq!(Timecode::parse("0:00:01:00").unwrap().to_frame(0.0), None);
        for bad in ["", "1:2:3", "a:00:00:00", "-1:00:00:00", "0:00:00:+1", "1:2:3:4:5"] {
            assert_eq!(Timecode::parse(bad), None, "{bad}");
        }

        let (s, progress) = feed(
            "PROGRESS:  Start: 0;00;59;28\nPROGRESS:  Duration: 0;00;00;04\nPROGRESS:  Frame Rate: 29.97 (comp)
PROGRESS:  0;01;00;02 (3): 0 Seconds",
        );
        assert_eq!(s.settings.start_frame(), Some(1798));
        assert_eq!(progress[0].comp_frame, Some(1800));
        assert!(close(s.percent, 75.0));
    }

    #[test]
    fn comp_names_lose_any_quotes_and_dates_any_form() {
        let cases = [
            ("PROGRESS:  11/29/26 7:40:02 PM: Starting composition “Scene 2”.", "Scene 2"),
            ("PROGRESS:  19.05.2022 15:23:11: Starting composition \"Scene 2\".", "Scene 2"),
            ("PROGRESS:  7/23/20 2:40:31 PM GMT+5:30: Starting composition Scene 2.", "Scene 2"),
            ("PROGRESS:  2022-05-19 15:23:11: Starting composition 'Main.v2'.", "Main.v2"),
            ("PROGRESS:  7/23/20 2:40:31 PM GMT-07:00: Starting composition “Ends with dot.”.", "Ends with dot."),
        ];
        for (line, name) in cases {
            assert_eq!(Line::parse(line), Line::StartingComp(name.into()), "{line}");
        }
        assert_eq!(
            Line::parse("PROGRESS:  7/23/20 2:40:35 PM GMT+5:30: Finished composition “Scene 2”."),
            Line::FinishedComp("Scene 2".into())
        );
    }

    #[test]
    fn total_time_forms() {
        for (text, secs) in [("17 Seconds", 17), ("1 Min, 28 Sec", 88), ("26 Hr, 15 Min", 94_500), ("1 Second", 1)] {
            let line = format!("PROGRESS:  Total Time Elapsed: {text}");
            assert_eq!(Line::parse(&line), Line::TotalTime(Duration::from_secs(secs)), "{text}");
        }
        assert_eq!(Line::parse("PROGRESS:  Total Time Elapsed: soon"), Line::Unknown);
        assert_eq!(Line::parse("PROGRESS:  Total Time Elapsed: 99999999999999999 Hr"), Line::Unknown);
    }

    #[test]
    fn error_forms() {
        let aerender = |code, message: &str| {
            Line::Error(ErrorLine { source: ErrorSource::Aerender, code, message: message.into() })
        };
        let line = Line::parse("aerender ERROR -1701: AEGetParamPt failed at line 894");
        assert_eq!(line, aerender(Some(-1701), "AEGetParamPt failed at line 894"));
        let line = Line::parse("aerender SYNTAX ERROR: Illegal argument flag: -foo");
        assert_eq!(line, aerender(None, "Illegal argument flag: -foo"));
        let (s, _) = feed("aerender ERROR: After Effects can not render for aerender. Another instance is running.");
        assert_eq!(s.signals, [Signal::AnotherInstance]);
        assert!(s.signals[0].is_retryable());
        let (s, _) = feed("INFO: Render aborted.\naerender ERROR: An output module failed. The file may be damaged.");
        assert_eq!(s.signals, [Signal::RenderAborted, Signal::OutputModuleFailed]);
        let (s, _) = feed("aerender ERROR: No output module template was found with the given name.");
        assert_eq!(s.signals, [Signal::TemplateNotFound]);
        let (s, _) = feed("INFO:After Effects: this project must be converted from version 23.1 to 24.2.");
        assert_eq!(s.signals, [Signal::ProjectNeedsConversion { from_version: Some("23.1".into()) }]);
        assert!(!s.signals[0].fails_render());
    }

    #[test]
    fn script_error_message_comes_from_the_next_error_line() {
        let (s, _) = feed(
            "aerender ERROR: Error executing script: C:\\work\\inject.jsx
Using DXGI: Device: \"NVIDIA\" has dedicated video RAM (MB): 6052
Error: ReferenceError: FLATRENDER_DATA is undefined
Error: Runtime error in After Effects.",
        );
        let message = Some("ReferenceError: FLATRENDER_DATA is undefined".into());
        let script = Signal::ScriptError { script: "C:\\work\\inject.jsx".into(), message };
        assert_eq!(s.signals, [script, Signal::AfterEffectsRuntimeError]);
        assert_eq!(s.first_error.as_deref(), Some("Error executing script: C:\\work\\inject.jsx"));
        // Another line in between: the message is unknown rather than wrong.
        let (s, _) = feed("aerender ERROR: Error executing script: a.jsx\nPROGRESS:  x\nError: late");
        assert_eq!(s.signals, [Signal::ScriptError { script: "a.jsx".into(), message: None }]);
    }

    #[test]
    fn classifies_banner_noise_and_unknown() {
        assert_eq!(Line::parse("aerender version 24.2.1x2"), Line::Version("24.2.1x2".into()));
        assert!(Line::parse("PROGRESS: Launching After Effects...").is_banner());
        assert_eq!(Line::parse("PROGRESS: ...After Effects successfully launched"), Line::Launched);
        for noise in [
            "Using DXGI: Device: \"Intel(R) UHD\" has dedicated video RAM (MB): 128",
            "LoadLibrary \"n\" failed!",
            "*** GPU Warning: The GPU driver is out of date ***",
            "[2026-11-29 19:40:01.123] INFO  Environment: AE_PLUGIN_PATH=/x",
        ] {
            assert_eq!(Line::parse(noise), Line::Noise, "{noise}");
        }
        assert_eq!(Line::parse("PROGRESS:  "), Line::Blank);
        assert_eq!(Line::parse("PROGRESS: Adding specified comp to Render Queue"), Line::Unknown);
        assert_eq!(Line::parse("PROGRESS:  Frame Rate: lots (comp)"), Line::Unknown);
        assert_eq!(Line::parse("WARNING:After Effects warning: x"), Line::Warning("After Effects warning: x".into()));
    }

    #[test]
    fn bytes_with_crlf_split_lines_and_other_encodings() {
        let crlf = SUCCESS.replace('\n', "\r\n");
        let bytes = crlf.as_bytes();
        let cut = crlf.find("0:00:02:01 (2)").unwrap() + 4;
        let mut t = Transcript::new();
        assert_eq!(t.push_bytes(&bytes[..cut]).map(|p| p.position), Some(1));
        assert_eq!(t.push_bytes(&bytes[cut..]).map(|p| p.position), Some(3));
        assert_eq!(t.finish(), None);
        assert!(t.status().log_shows_success(false) && t.status().comp.as_deref() == Some("Scene 2"));
        assert_eq!(t.status(), &feed(SUCCESS).0);
        assert!(t.tail().all(|line| !line.ends_with('\r')));

        // The last line without a newline is parsed at the end.
        let mut t = Transcript::new();
        t.push_bytes(b"PROGRESS:  Total Time Elapsed: 1 Min, 28 Sec");
        assert_eq!(t.status().total_elapsed, None);
        t.finish();
        assert_eq!(t.status().total_elapsed, Some(Duration::from_secs(88)));

        // CP-1252 curly quotes and UTF-16LE text decode.
        let mut t = Transcript::new();
        t.push_bytes(b"PROGRESS:  1.2.2022 1:00:00: Starting composition \x93Sz\xe9ne\x94.\n");
        let utf16: Vec<u8> = "aerender ERROR: No comp was found with the given name.\r\n"
            .encode_utf16()
            .flat_map(u16::to_le_bytes)
            .collect();
        t.push_bytes(&utf16);
        assert_eq!(t.status().comp.as_deref(), Some("Széne"));
        assert_eq!(t.status().signals, [Signal::CompNotFound]);
    }

    #[test]
    fn log_tail_is_bounded() {
        let mut t = Transcript::new().with_tail_limits(3, 1024);
        for i in 0..10 {
            t.push_line(&format!("line {i}"));
        }
        assert_eq!(t.tail().collect::<Vec<_>>(), ["line 7", "line 8", "line 9"]);
        assert_eq!(t.tail_text(), "line 7\nline 8\nline 9\n");

        let mut t = Transcript::new().with_tail_limits(100, 16);
        t.push_line("0123456789ab");
        t.push_line("abc");
        assert_eq!(t.tail().collect::<Vec<_>>(), ["abc"]);
        t.push_line(&"é".repeat(20));
        assert_eq!(t.tail().collect::<Vec<_>>(), ["é".repeat(7)]);
        assert_eq!(t.status().lines_seen, 3);

        let mut t = Transcript::new();
        t.push_bytes(&vec![b'x'; 3 * MAX_LINE_BYTES]);
        t.push_bytes(b"x\nok\n");
        assert_eq!(t.tail().map(str::len).collect::<Vec<_>>(), [MAX_LINE_BYTES, 2]);
    }

    #[test]
    fn percent_falls_back_to_expected_frames() {
        let mut t = Transcript::new().with_expected_frames(4);
        let progress = t.push_line("PROGRESS:  0:00:02:00 (1): 0 Seconds").unwrap();
        assert_eq!((progress.comp_frame, progress.percent), (None, Some(25.0)));
        assert_eq!(Transcript::new().push_line("PROGRESS:  0:00:02:00 (1): 0 Seconds").unwrap().percent, None);
        // Multi-frame rendering may report frames out of order; the overall percent never drops.
        let late_first =
            SUCCESS.replace("0:00:02:00 (1)", "0:00:02:02 (1)").replace("0:00:02:02 (3)", "0:00:02:00 (3)");
        let (s, progress) = feed(&late_first);
        assert!(close(progress[2].percent, 100.0 / 3.0) && close(s.percent, 100.0));
    }

    /// Random inputs through random split points: no panic, bounded tail, and the state depends
    /// only on the bytes, not on how they were split.
    #[test]
    fn random_input_never_breaks_the_parser() {
        const INTERESTING: &[u8] = b"\n\r\n:;()0123456789 ,.\x00\x93\x94\xff\xe2\x80";
        let corpus = [
            SUCCESS,
            TEMPLATE_ERROR,
            SILENT_FAILURE,
            "PROGRESS:  Start: 0;00;59;28\nPROGRESS:  Frame Rate: 29,97\nPROGRESS:  Dauer: 0;00;00;04\n",
            "PROGRESS:  4294967295:4294967295:99:99 (18446744073709551615): 18446744073709551615 Hr\n",
            "aerender ERROR: Error executing script: x.jsx\nError: boom\n",
        ];
        let mut rng = StdRng::seed_from_u64(0x5eed);
        for round in 0..3000 {
            let mut input: Vec<u8> = if round % 3 == 0 {
                (0..rng.random_range(0..600)).map(|_| rng.random::<u8>()).collect()
            } else {
                corpus[rng.random_range(0..corpus.len())].as_bytes().to_vec()
            };
            for _ in 0..rng.random_range(0..8) {
                let at = rng.random_range(0..=input.len());
                match rng.random_range(0..5) {
                    0 => input.truncate(at),
                    1 => input.insert(at, INTERESTING[rng.random_range(0..INTERESTING.len())]),
                    2 if at < input.len() => input[at] = rng.random(),
                    3 => input.splice(at..(at + 5).min(input.len()), []).for_each(drop),
                    _ => {
                        let copy = input[at..(at + 40).min(input.len())].to_vec();
                        input.splice(at..at, copy).for_each(drop);
                    }
                }
            }
            let (lines, bytes) = (rng.random_range(0..20), rng.random_range(0..300));
            let mut whole = Transcript::new().with_tail_limits(lines, bytes);
            whole.push_bytes(&input);
            let mut split = Transcript::new().with_tail_limits(lines, bytes);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (chunk, after) = rest.split_at(rng.random_range(0..=rest.len().min(64)));
                split.push_bytes(chunk);
                rest = after;
            }
            assert_eq!(split, whole, "round {round}: {input:?}");
            whole.finish();
            assert!(whole.tail().count() <= lines && whole.tail_text().len() <= bytes, "round {round}");
            assert!(whole.status().percent.is_none_or(|p| (0.0..=100.0).contains(&p)));
            if let Ok(text) = std::str::from_utf8(&input) {
                let mut by_line = Transcript::new();
                for line in text.lines() {
                    by_line.push_line(line);
                }
            }
        }
    }
}
