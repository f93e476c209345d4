//! What an assembly produces: the agent's own types, independent of the wire format (see
//! `proto.rs` for the conversion from an `AssembleSpec`).

use std::path::PathBuf;
use std::time::Duration;

use super::AssemblyError;

/// One assembly: segments concatenated in order, audio mixed, watermark burnt in, encoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Assembly {
    /// Segments in playback order (at least one).
    pub segments: Vec<Segment>,
    /// Audio tracks; none means a video without an audio stream.
    pub audio: Vec<AudioTrack>,
    pub watermark: Option<Watermark>,
    pub output: OutputSettings,
    pub expected: Expected,
    /// Where the finished MP4 goes; it only appears there once verified.
    pub output_path: PathBuf,
}

/// One segment's frames, already on local disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// For logs and errors, e.g. the composition name.
    pub label: String,
    /// The frame files in playback order.
    pub frames: Vec<PathBuf>,
    /// The composition's frame rate (the rate the frames were rendered at).
    pub fps: FrameRate,
    pub size: Size,
}

/// Pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

/// An exact frame rate as a fraction (NTSC rates are n×1000/1001).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRate {
    pub num: u32,
    pub den: u32,
}

impl FrameRate {
    pub const fn new(num: u32, den: u32) -> Self {
        Self { num, den }
    }

    /// Reads a rate as the API gives it (at most 3 decimals; 23.976, 29.97, 47.952, 59.94 and
    /// 119.88 mean the exact NTSC rates). `None` unless 0 < fps <= 1000.
    pub fn from_fps(fps: f64) -> Option<Self> {
        if !(fps > 0.0 && fps <= 1000.0) {
            return None;
        }
        for ntsc in [24_u32, 30, 48, 60, 120] {
            if (fps - f64::from(ntsc) * 1000.0 / 1001.0).abs() < 0.0011 {
                return Some(Self::new(ntsc * 1000, 1001));
            }
        }
        // At most 3 decimals: thousandths, reduced.
        let num = (fps * 1000.0).round() as u32;
        let divisor = gcd(num, 1000);
        Some(Self::new(num / divisor, 1000 / divisor))
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.num) / f64::from(self.den)
    }

    /// The length of `frames` frames at this rate.
    pub fn duration_of(self, frames: u64) -> Duration {
        Duration::from_secs_f64(frames as f64 * f64::from(self.den) / f64::from(self.num))
    }

    /// One frame's length.
    pub fn frame(self) -> Duration {
        self.duration_of(1)
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// The role of an audio track (they are mixed alike; the kind is for logs and metering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackKind {
    Music,
    Voiceover,
    Sfx,
}

/// A linear gain, as the API carries it (`AudioTrack.volume`: 1.0 unchanged, 0.5 ≈ -6 dB).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gain(f64);

impl Gain {
    pub const UNITY: Self = Self(1.0);

    /// `None` for a negative or non-finite factor.
    pub fn linear(factor: f64) -> Option<Self> {
        (factor.is_finite() && factor >= 0.0).then_some(Self(factor))
    }

    /// The gain of `db` decibels (amplitude: 20·log10).
    pub fn from_db(db: f64) -> Option<Self> {
        Self::linear(10_f64.powf(db / 20.0))
    }

    pub fn factor(self) -> f64 {
        self.0
    }

    /// In decibels; minus infinity for silence.
    pub fn db(self) -> f64 {
        20.0 * self.0.log10()
    }
}

/// One audio track mixed into the video.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioTrack {
    /// The source file on local disk (anything ffmpeg decodes).
    pub source: PathBuf,
    pub kind: TrackKind,
    pub gain: Gain,
    /// Where the track starts on the video timeline.
    pub offset: Duration,
    /// Source position where playback begins.
    pub trim_start: Duration,
    /// Source position where playback stops; `None` is the source's end.
    pub trim_end: Option<Duration>,
    pub fade_in: Duration,
    /// Ends where the track stops: its (trimmed) end or the video's.
    pub fade_out: Duration,
    /// Repeat the trimmed source until the video ends.
    pub looped: bool,
}

impl AudioTrack {
    /// A track that plays `source` once from the video's start, unchanged.
    pub fn new(source: impl Into<PathBuf>, kind: TrackKind) -> Self {
        Self {
            source: source.into(),
            kind,
            gain: Gain::UNITY,
            offset: Duration::ZERO,
            trim_start: Duration::ZERO,
            trim_end: None,
            fade_in: Duration::ZERO,
            fade_out: Duration::ZERO,
            looped: false,
        }
    }
}

/// The plan's watermark.
#[derive(Clone, Debug, PartialEq)]
pub struct Watermark {
    pub mark: Mark,
    pub position: Position,
    /// 0.0..=1.0.
    pub opacity: f64,
    /// Width of the mark as a share of the video width, 0.0 < scale <= 1.0.
    pub scale: f64,
    /// Distance from the edges in output pixels.
    pub margin_px: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mark {
    /// Drawn in white with a soft shadow.
    Text(String),
    /// A PNG (with alpha) on local disk.
    Image(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    TopLeft,
    TopRight,
    BottomLeft,
    BottomRight,
    Center,
}

/// How the MP4 is encoded: H.264 (libx264, yuv420p) and AAC.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputSettings {
    pub fps: FrameRate,
    pub size: Size,
    pub rate: RateControl,
    /// x264 preset, e.g. "veryfast", "medium", "slow".
    pub preset: String,
    pub audio_bitrate_kbps: u32,
    pub sample_rate: u32,
}

impl OutputSettings {
    /// Standard quality (CRF 23, preset medium), AAC 192 kb/s at 48 kHz.
    pub fn standard(fps: FrameRate, size: Size) -> Self {
        Self {
            fps,
            size,
            rate: RateControl::Crf(23),
            preset: "medium".into(),
            audio_bitrate_kbps: 192,
            sample_rate: 48_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateControl {
    /// Constant quality, 0..=51.
    Crf(u8),
    /// Average video bitrate in kb/s.
    BitrateKbps(u32),
}

/// What ffprobe must find in the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expected {
    pub frames: u64,
    pub duration: Duration,
    /// Allowed duration difference; `None` means one output frame.
    pub tolerance: Option<Duration>,
}

impl Assembly {
    /// Refuses plans ffmpeg would misread or that could never verify.
    pub fn validate(&self) -> Result<(), AssemblyError> {
        let invalid = |why: String| Err(AssemblyError::InvalidPlan(why));
        if self.segments.is_empty() {
            return invalid("no segments".into());
        }
        let valid_rate = |r: FrameRate| r.num > 0 && r.den > 0;
        let valid_size =
            |s: Size| s.width >= 2 && s.height >= 2 && s.width.is_multiple_of(2) && s.height.is_multiple_of(2);
        if !valid_rate(self.output.fps) || !valid_size(self.output.size) {
            return invalid(format!("bad output rate or size (even sizes only): {:?}", self.output));
        }
        for (i, segment) in self.segments.iter().enumerate() {
            if segment.frames.is_empty() || !valid_rate(segment.fps) || segment.size.width == 0 {
                return invalid(format!("segment {i} ({}) has no frames, rate or size", segment.label));
            }
        }
        for (i, track) in self.audio.iter().enumerate() {
            if track.trim_end.is_some_and(|end| end <= track.trim_start) {
                return invalid(format!("audio track {i}: trim end is not after trim start"));
            }
        }
        if let Some(mark) = &self.watermark
            && !((0.0..=1.0).contains(&mark.opacity) && mark.scale > 0.0 && mark.scale <= 1.0)
        {
            return invalid(format!("watermark opacity or scale out of range: {mark:?}"));
        }
        if self.output_path.file_name().is_none() {
            return invalid(format!("output path {} has no file name", self.output_path.display()));
        }
        Ok(())
    }
}
