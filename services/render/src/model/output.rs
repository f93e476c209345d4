//! Output settings of a render (`render_jobs.output_*`) and the still image formats of snapshots.

use flatrender_proto::flatrender::render::v1 as pb;

use crate::error::{RenderError, Result};
use crate::model::db_enum::db_enum;
use crate::model::resolution::Resolution;

/// Highest output frame rate.
pub const MAX_FPS: f64 = 240.0;

db_enum! {
    /// The container of the export (`render_jobs.output_format`, `exports.format`).
    pub enum OutputFormat: OutputFormat {
        /// MP4 with faststart; H.264 or H.265.
        Mp4 = "mp4" => Mp4,
        /// QuickTime; ProRes, H.264 or H.265.
        Mov = "mov" => Mov,
        /// WebM; VP9.
        Webm = "webm" => Webm,
        /// Animated GIF; no audio.
        Gif = "gif" => Gif,
    }
}

db_enum! {
    /// The video codec (`render_jobs.output_codec`).
    pub enum VideoCodec: VideoCodec {
        /// H.264 / AVC.
        H264 = "h264" => H264,
        /// H.265 / HEVC.
        H265 = "h265" => H265,
        /// ProRes 422 HQ (MOV only).
        Prores422 = "prores_422" => Prores422,
        /// ProRes 4444 with alpha (MOV only).
        Prores4444 = "prores_4444" => Prores4444,
        /// VP9 (WebM only).
        Vp9 = "vp9" => Vp9,
        /// GIF palette encoding (GIF only).
        Gif = "gif" => Gif,
    }
}

db_enum! {
    /// Render and encoding quality (`render_jobs.output_quality`).
    pub enum Quality: Quality {
        /// Fast preview.
        Draft = "draft" => Draft,
        /// The default.
        Standard = "standard" => Standard,
        /// Best.
        High = "high" => High,
    }
}

db_enum! {
    /// A still image format (`snapshots.format`; chunks and repairs are always PNG).
    pub enum ImageFormat: ImageFormat {
        /// PNG, lossless; the default.
        Png = "png" => Png,
        /// JPEG, quality 90.
        Jpeg = "jpeg" => Jpeg,
        /// WebP, quality 90 (rendered as PNG, converted by the agent).
        Webp = "webp" => Webp,
    }
}

impl OutputFormat {
    /// The codec an unset `video_codec` means.
    pub fn default_codec(self) -> VideoCodec {
        match self {
            Self::Mp4 | Self::Mov => VideoCodec::H264,
            Self::Webm => VideoCodec::Vp9,
            Self::Gif => VideoCodec::Gif,
        }
    }

    /// Whether `codec` suits this container, exactly as `render_jobs_output_codec_format_check`.
    pub fn allows(self, codec: VideoCodec) -> bool {
        use VideoCodec::*;
        match self {
            Self::Mp4 => matches!(codec, H264 | H265),
            Self::Mov => matches!(codec, H264 | H265 | Prores422 | Prores4444),
            Self::Webm => codec == Vp9,
            Self::Gif => codec == Gif,
        }
    }

    /// Whether the container carries audio (GIF does not).
    pub fn has_audio(self) -> bool {
        self != Self::Gif
    }
}

impl Quality {
    /// The After Effects render-settings template (`aerender -RStemplate`).
    pub fn render_settings_template(self) -> &'static str {
        match self {
            Self::Draft => "Draft Settings",
            Self::Standard | Self::High => "Best Settings",
        }
    }

    /// x264/x265 constant rate factor.
    pub fn crf(self) -> u8 {
        match self {
            Self::Draft => 28,
            Self::Standard => 23,
            Self::High => 18,
        }
    }

    /// x264/x265 preset.
    pub fn preset(self) -> &'static str {
        match self {
            Self::Draft => "veryfast",
            Self::Standard => "medium",
            Self::High => "slow",
        }
    }
}

impl ImageFormat {
    /// A request's format: UNSPECIFIED is PNG; unknown numbers are refused.
    pub fn from_field(field: &str, value: i32) -> Result<Self> {
        if value == 0 { Ok(Self::Png) } else { Self::from_pb_i32(value).ok_or_else(|| unknown(field, value)) }
    }
}

/// How the export is encoded, as requested: unset size and rate are `None` (the first
/// segment's composition decides them once the template's metadata is known); the enums are
/// filled in with their defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutputSettings {
    /// Output size; `None` means the first segment's composition size.
    pub resolution: Option<Resolution>,
    /// Frames per second, 0 < fps <= 240 with at most 3 decimals; `None` means the first
    /// segment's composition rate.
    pub fps: Option<f64>,
    /// Container.
    pub format: OutputFormat,
    /// Video codec; always suits `format`.
    pub video_codec: VideoCodec,
    /// Quality.
    pub quality: Quality,
}

impl Default for OutputSettings {
    fn default() -> Self {
        Self {
            resolution: None,
            fps: None,
            format: OutputFormat::Mp4,
            video_codec: VideoCodec::H264,
            quality: Quality::Standard,
        }
    }
}

impl OutputSettings {
    /// From a request's `output` (unset means every default), naming `field` in errors.
    pub fn from_pb(field: &str, output: Option<&pb::OutputSettings>) -> Result<Self> {
        let Some(output) = output else { return Ok(Self::default()) };
        let resolution =
            output.resolution.as_ref().map(|r| Resolution::from_pb(&format!("{field}.resolution"), r)).transpose()?;
        let fps = fps(&format!("{field}.fps"), output.fps)?;
        let format = match output.format {
            0 => OutputFormat::Mp4,
            n => OutputFormat::from_pb_i32(n).ok_or_else(|| unknown(&format!("{field}.format"), n))?,
        };
        let video_codec = match output.video_codec {
            0 => format.default_codec(),
            n => VideoCodec::from_pb_i32(n).ok_or_else(|| unknown(&format!("{field}.video_codec"), n))?,
        };
        if !format.allows(video_codec) {
            let allowed: Vec<_> =
                VideoCodec::ALL.iter().filter(|&&c| format.allows(c)).map(VideoCodec::as_db).collect();
            return Err(RenderError::invalid(
                format!("{field}.video_codec"),
                format!("{video_codec} does not suit the {format} format (allowed: {})", allowed.join(", ")),
            ));
        }
        let quality = match output.quality {
            0 => Quality::Standard,
            n => Quality::from_pb_i32(n).ok_or_else(|| unknown(&format!("{field}.quality"), n))?,
        };
        Ok(Self { resolution, fps, format, video_codec, quality })
    }

    /// The protobuf form (enums always filled in; unset size and rate stay unset/0).
    pub fn to_pb(&self) -> pb::OutputSettings {
        pb::OutputSettings {
            resolution: self.resolution.map(Resolution::to_pb),
            fps: self.fps.unwrap_or(0.0),
            format: self.format.to_pb_i32(),
            video_codec: self.video_codec.to_pb_i32(),
            quality: self.quality.to_pb_i32(),
        }
    }
}

/// A requested frame rate: 0 means unset; otherwise 0 < fps <= 240 with at most 3 decimals.
pub fn fps(field: &str, value: f64) -> Result<Option<f64>> {
    if value == 0.0 {
        return Ok(None);
    }
    if !(value.is_finite() && value > 0.0 && value <= MAX_FPS) {
        return Err(RenderError::invalid(field, "must be above 0 and at most 240"));
    }
    let millis = value * 1000.0;
    if (millis - millis.round()).abs() > 1e-6 {
        return Err(RenderError::invalid(field, "must have at most 3 decimals"));
    }
    Ok(Some(value))
}

/// The exact rate as a fraction for ffmpeg: the NTSC rates 23.976, 29.97, 47.952, 59.94 and
/// 119.88 are N×1000/1001; any other rate is its thousandths, reduced.
pub fn fps_fraction(fps: f64) -> (u32, u32) {
    // Rates are validated to at most 240 with 3 decimals, so this is exact and fits.
    let millis = (fps * 1000.0).round().clamp(0.0, f64::from(u32::MAX)) as u32;
    if let Some(whole) = [24_u32, 30, 48, 60, 120].into_iter().find(|n| n * 1000 * 1000 / 1001 == millis) {
        return (whole * 1000, 1001);
    }
    let divisor = gcd(millis, 1000).max(1);
    (millis / divisor, 1000 / divisor)
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn unknown(field: &str, value: i32) -> RenderError {
    RenderError::invalid(field, format!("unknown value {value}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::db_enum::assert_matches_pb;
    use crate::model::testing::{MIGRATION, check_values};
    use flatrender_proto::flatrender::common::v1 as common_pb;

    fn settings(format: pb::OutputFormat, codec: pb::VideoCodec) -> Result<OutputSettings> {
        let output = pb::OutputSettings { format: format as i32, video_codec: codec as i32, ..Default::default() };
        OutputSettings::from_pb("output", Some(&output))
    }

    fn db<T: Copy>(all: &[T], as_db: impl Fn(T) -> &'static str) -> Vec<String> {
        all.iter().map(|&v| as_db(v).to_owned()).collect()
    }

    #[test]
    fn enums_match_protobuf_and_the_check_lists() {
        assert_matches_pb!(OutputFormat, OutputFormat, "OUTPUT_FORMAT_");
        assert_matches_pb!(VideoCodec, VideoCodec, "VIDEO_CODEC_");
        assert_matches_pb!(Quality, Quality, "QUALITY_");
        assert_matches_pb!(ImageFormat, ImageFormat, "IMAGE_FORMAT_");
        assert_eq!(db(OutputFormat::ALL, |v| v.as_db()), check_values("render_jobs_output_format_check"));
        assert_eq!(db(OutputFormat::ALL, |v| v.as_db()), check_values("exports_format_check"));
        assert_eq!(db(VideoCodec::ALL, |v| v.as_db()), check_values("render_jobs_output_codec_check"));
        assert_eq!(db(Quality::ALL, |v| v.as_db()), check_values("render_jobs_output_quality_check"));
        assert_eq!(db(ImageFormat::ALL, |v| v.as_db()), check_values("snapshots_format_check"));
    }

    #[test]
    fn codecs_suit_formats_exactly_as_the_check() {
        // The CHECK's clauses: "(output_format = 'mp4' AND output_codec IN ('h264', 'h265'))" ...
        let marker = "CONSTRAINT render_jobs_output_codec_format_check CHECK (";
        let body = &MIGRATION[MIGRATION.find(marker).unwrap() + marker.len()..];
        let body = &body[..body.find("CONSTRAINT").unwrap()];
        for &format in OutputFormat::ALL {
            let clause = body.split("OR").find(|c| c.contains(&format!("output_format = '{format}'"))).unwrap();
            for &codec in VideoCodec::ALL {
                let in_check = clause.contains(&format!("'{codec}'"));
                assert_eq!(format.allows(codec), in_check, "{format} {codec}");
                assert_eq!(settings(format.to_pb(), codec.to_pb()).is_ok(), in_check, "{format} {codec}");
            }
            assert!(format.allows(format.default_codec()));
        }
        let err = settings(pb::OutputFormat::Mp4, pb::VideoCodec::Prores422).unwrap_err();
        assert_eq!(
            err.to_string(),
            "output.video_codec: prores_422 does not suit the mp4 format (allowed: h264, h265)"
        );
    }

    #[test]
    fn unset_fields_take_defaults() {
        assert_eq!(OutputSettings::from_pb("output", None).unwrap(), OutputSettings::default());
        let empty = OutputSettings::from_pb("output", Some(&pb::OutputSettings::default())).unwrap();
        assert_eq!(empty, OutputSettings::default());
        let webm = settings(pb::OutputFormat::Webm, pb::VideoCodec::Unspecified).unwrap();
        assert_eq!(
            (webm.format, webm.video_codec, webm.quality),
            (OutputFormat::Webm, VideoCodec::Vp9, Quality::Standard)
        );
        let gif = settings(pb::OutputFormat::Gif, pb::VideoCodec::Unspecified).unwrap();
        assert_eq!(gif.video_codec, VideoCodec::Gif);
        assert!(!gif.format.has_audio());
        let pb_form = webm.to_pb();
        assert_eq!(OutputSettings::from_pb("output", Some(&pb_form)).unwrap(), webm);
        assert_eq!(pb_form.format, pb::OutputFormat::Webm as i32);
        assert_eq!(pb_form.quality, pb::Quality::Standard as i32);
    }

    #[test]
    fn unknown_enum_numbers_are_refused() {
        let output = pb::OutputSettings { format: 9, ..Default::default() };
        assert_eq!(
            OutputSettings::from_pb("output", Some(&output)).unwrap_err().to_string(),
            "output.format: unknown value 9"
        );
        let output = pb::OutputSettings { video_codec: 42, ..Default::default() };
        assert_eq!(
            OutputSettings::from_pb("output", Some(&output)).unwrap_err().to_string(),
            "output.video_codec: unknown value 42"
        );
        let output = pb::OutputSettings { quality: -1, ..Default::default() };
        assert_eq!(
            OutputSettings::from_pb("output", Some(&output)).unwrap_err().to_string(),
            "output.quality: unknown value -1"
        );
        assert_eq!(ImageFormat::from_field("format", 0).unwrap(), ImageFormat::Png);
        assert_eq!(ImageFormat::from_field("format", 3).unwrap(), ImageFormat::Webp);
        assert_eq!(ImageFormat::from_field("format", 4).unwrap_err().to_string(), "format: unknown value 4");
    }

    #[test]
    fn frame_rates_are_bounded_with_three_decimals() {
        assert_eq!(fps("output.fps", 0.0).unwrap(), None);
        for ok in [0.001, 1.0, 23.976, 29.97, 59.94, 119.88, 239.999, 240.0, 12.345] {
            assert_eq!(fps("output.fps", ok).unwrap(), Some(ok), "{ok}");
        }
        for bad in [-1.0, 240.001, f64::NAN, f64::INFINITY, -0.001] {
            assert_eq!(fps("output.fps", bad).unwrap_err().to_string(), "output.fps: must be above 0 and at most 240");
        }
        assert_eq!(fps("output.fps", 29.9701).unwrap_err().to_string(), "output.fps: must have at most 3 decimals");
        assert_eq!(fps("output.fps", 0.0001).unwrap_err().to_string(), "output.fps: must have at most 3 decimals");
        assert_eq!(fps("output.fps", 239.9999).unwrap_err().to_string(), "output.fps: must have at most 3 decimals");
        let output = pb::OutputSettings {
            fps: 25.0,
            resolution: Some(common_pb::Resolution { width: 1280, height: 720 }),
            ..Default::default()
        };
        let parsed = OutputSettings::from_pb("output", Some(&output)).unwrap();
        assert_eq!((parsed.fps, parsed.resolution.map(|r| r.width())), (Some(25.0), Some(1280)));
        let output = pb::OutputSettings {
            resolution: Some(common_pb::Resolution { width: 1, height: 720 }),
            ..Default::default()
        };
        assert!(
            OutputSettings::from_pb("output", Some(&output))
                .unwrap_err()
                .to_string()
                .starts_with("output.resolution.width: ")
        );
    }

    #[test]
    fn ntsc_rates_are_exact_fractions() {
        assert_eq!(fps_fraction(23.976), (24000, 1001));
        assert_eq!(fps_fraction(29.97), (30000, 1001));
        assert_eq!(fps_fraction(47.952), (48000, 1001));
        assert_eq!(fps_fraction(59.94), (60000, 1001));
        assert_eq!(fps_fraction(119.88), (120000, 1001));
        assert_eq!(fps_fraction(25.0), (25, 1));
        assert_eq!(fps_fraction(12.5), (25, 2));
        assert_eq!(fps_fraction(0.001), (1, 1000));
    }

    #[test]
    fn quality_names_the_render_settings() {
        assert_eq!(Quality::Draft.render_settings_template(), "Draft Settings");
        assert_eq!(Quality::Standard.render_settings_template(), "Best Settings");
        assert_eq!(Quality::High.render_settings_template(), "Best Settings");
        assert_eq!((Quality::Draft.crf(), Quality::Draft.preset()), (28, "veryfast"));
        assert_eq!((Quality::High.crf(), Quality::High.preset()), (18, "slow"));
    }
}
