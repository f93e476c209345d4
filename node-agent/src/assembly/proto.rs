//! An `AssembleSpec` from the orchestrator as this module's [`Assembly`], once its inputs are on
//! local disk. Only what the agent encodes is accepted: H.264 in MP4 (MOV, WebM, GIF, HEVC,
//! ProRes and VP9 are refused as a missing capability, so the task goes to a node that has it).

use std::path::PathBuf;
use std::time::Duration;

use flatrender_proto::flatrender::agent::v1 as agent_pb;
use flatrender_proto::flatrender::render::v1 as pb;

use super::plan::{
    Assembly, AudioTrack, Expected, FrameRate, Gain, Mark, OutputSettings, Position, RateControl, Segment, Size,
    TrackKind, Watermark,
};

/// The local files of an assembly's inputs, in the spec's order.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Per segment, its frame files in playback order.
    pub frames: Vec<Vec<PathBuf>>,
    /// Per audio track, its source.
    pub audio: Vec<PathBuf>,
    /// The watermark image, when the mark is one.
    pub watermark_image: Option<PathBuf>,
}

/// Whether this agent can produce what `spec` asks for; the reason when not.
pub fn supported(spec: &agent_pb::AssembleSpec) -> Result<(), String> {
    let output = spec.output.unwrap_or_default();
    if !matches!(output.format(), pb::OutputFormat::Unspecified | pb::OutputFormat::Mp4) {
        return Err(format!("this agent encodes MP4 only, not {}", output.format().as_str_name()));
    }
    if !matches!(output.video_codec(), pb::VideoCodec::Unspecified | pb::VideoCodec::H264) {
        return Err(format!("this agent encodes H.264 only, not {}", output.video_codec().as_str_name()));
    }
    Ok(())
}

/// The assembly of `spec` from `inputs`, written to `output_path`; why not, when the spec is
/// not one this agent can encode or does not hold together.
pub fn assembly(spec: &agent_pb::AssembleSpec, inputs: Inputs, output_path: PathBuf) -> Result<Assembly, String> {
    supported(spec)?;
    if spec.segments.is_empty() || spec.segments.len() != inputs.frames.len() {
        return Err("the assembly names no segments, or not one frame list per segment".into());
    }
    if spec.audio_tracks.len() != inputs.audio.len() {
        return Err("not one source per audio track".into());
    }
    let segments = spec
        .segments
        .iter()
        .zip(inputs.frames)
        .map(|(segment, frames)| {
            let fps = FrameRate::from_fps(segment.fps).ok_or_else(|| {
                format!("segment {}: frame rate {} is out of range", segment.segment_index, segment.fps)
            })?;
            let size = size(segment.resolution.as_ref())
                .ok_or_else(|| format!("segment {}: no frame size", segment.segment_index))?;
            Ok(Segment { label: segment.composition.clone(), frames, fps, size })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let output = spec.output.unwrap_or_default();
    let first = &segments[0];
    let fps = if output.fps > 0.0 {
        FrameRate::from_fps(output.fps).ok_or_else(|| format!("output frame rate {} is out of range", output.fps))?
    } else {
        first.fps
    };
    let size = size(output.resolution.as_ref()).unwrap_or(first.size);
    let (rate, preset) = match output.quality() {
        pb::Quality::Draft => (RateControl::Crf(28), "veryfast"),
        pb::Quality::High => (RateControl::Crf(18), "slow"),
        pb::Quality::Standard | pb::Quality::Unspecified => (RateControl::Crf(23), "medium"),
    };
    let audio = spec
        .audio_tracks
        .iter()
        .zip(inputs.audio)
        .enumerate()
        .map(|(i, (track, source))| audio_track(i, track, source))
        .collect::<Result<Vec<_>, String>>()?;
    let watermark = spec.watermark.as_ref().map(|mark| watermark(mark, inputs.watermark_image, size)).transpose()?;
    let expected = Expected {
        frames: u64::try_from(spec.expected_frame_count).map_err(|_| "a negative expected frame count")?,
        duration: Duration::from_millis(
            u64::try_from(spec.expected_duration_ms).map_err(|_| "a negative expected duration")?,
        ),
        tolerance: u64::try_from(spec.duration_tolerance_ms).ok().filter(|ms| *ms > 0).map(Duration::from_millis),
    };
    Ok(Assembly {
        segments,
        audio,
        watermark,
        output: OutputSettings { rate, preset: preset.into(), ..OutputSettings::standard(fps, size) },
        expected,
        output_path,
    })
}

fn size(resolution: Option<&flatrender_proto::flatrender::common::v1::Resolution>) -> Option<Size> {
    resolution.filter(|r| r.width > 0 && r.height > 0).map(|r| Size { width: r.width, height: r.height })
}

fn audio_track(index: usize, wrapped: &agent_pb::AssembleAudioTrack, source: PathBuf) -> Result<AudioTrack, String> {
    let track = wrapped.track.clone().unwrap_or_default();
    let ms = |ms: u32| Duration::from_millis(u64::from(ms));
    let gain = Gain::linear(track.volume)
        .filter(|g| g.factor() <= 4.0)
        .ok_or_else(|| format!("audio_tracks[{index}]: volume {} is outside 0.0..=4.0", track.volume))?;
    Ok(AudioTrack {
        source,
        kind: match track.kind() {
            pb::AudioTrackKind::Voiceover => TrackKind::Voiceover,
            pb::AudioTrackKind::Sfx => TrackKind::Sfx,
            pb::AudioTrackKind::Music | pb::AudioTrackKind::Unspecified => TrackKind::Music,
        },
        gain,
        offset: ms(track.offset_ms),
        trim_start: ms(track.trim_start_ms),
        trim_end: (track.trim_end_ms > 0).then(|| ms(track.trim_end_ms)),
        fade_in: ms(track.fade_in_ms),
        fade_out: ms(track.fade_out_ms),
        looped: track.r#loop,
    })
}

/// The plan's watermark with the protocol's defaults filled in.
fn watermark(spec: &agent_pb::Watermark, image: Option<PathBuf>, video: Size) -> Result<Watermark, String> {
    let mark = match &spec.mark {
        Some(agent_pb::watermark::Mark::Text(text)) => Mark::Text(text.clone()),
        Some(agent_pb::watermark::Mark::Image(_)) => Mark::Image(image.ok_or("the watermark image was not fetched")?),
        None => return Err("the watermark has neither a text nor an image".into()),
    };
    let position = match spec.position() {
        agent_pb::WatermarkPosition::TopLeft => Position::TopLeft,
        agent_pb::WatermarkPosition::TopRight => Position::TopRight,
        agent_pb::WatermarkPosition::BottomLeft => Position::BottomLeft,
        agent_pb::WatermarkPosition::Center => Position::Center,
        agent_pb::WatermarkPosition::BottomRight | agent_pb::WatermarkPosition::Unspecified => Position::BottomRight,
    };
    let or = |value: f64, default: f64| if value > 0.0 { value } else { default };
    let margin_px = if spec.margin_px > 0 { spec.margin_px } else { (f64::from(video.height) * 0.02).round() as u32 };
    Ok(Watermark {
        mark,
        position,
        opacity: or(spec.opacity, 0.5).min(1.0),
        scale: or(spec.scale, 0.15).min(1.0),
        margin_px,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use flatrender_proto::flatrender::common::v1::Resolution;

    fn spec() -> agent_pb::AssembleSpec {
        agent_pb::AssembleSpec {
            segments: vec![agent_pb::AssembleSegment {
                segment_index: 0,
                composition: "Main".into(),
                frame_count: 30,
                fps: 29.97,
                resolution: Some(Resolution { width: 640, height: 360 }),
                ..Default::default()
            }],
            audio_tracks: vec![agent_pb::AssembleAudioTrack {
                track: Some(pb::AudioTrack {
                    kind: pb::AudioTrackKind::Voiceover as i32,
                    volume: 0.5,
                    trim_end_ms: 900,
                    fade_out_ms: 200,
                    ..Default::default()
                }),
                source: None,
            }],
            watermark: Some(agent_pb::Watermark {
                mark: Some(agent_pb::watermark::Mark::Text("FlatRender".into())),
                ..Default::default()
            }),
            output: Some(pb::OutputSettings { quality: pb::Quality::High as i32, ..Default::default() }),
            expected_frame_count: 30,
            expected_duration_ms: 1001,
            ..Default::default()
        }
    }

    fn inputs() -> Inputs {
        Inputs { frames: vec![vec!["f0.png".into()]], audio: vec!["vo.wav".into()], watermark_image: None }
    }

    #[test]
    fn defaults_come_from_the_first_segment_and_the_protocol() {
        let plan = assembly(&spec(), inputs(), "out.mp4".into()).unwrap();
        assert_eq!(plan.output.fps, FrameRate::new(30_000, 1001));
        assert_eq!(plan.output.size, Size { width: 640, height: 360 });
        assert_eq!((plan.output.rate, plan.output.preset.as_str()), (RateControl::Crf(18), "slow"));
        let track = &plan.audio[0];
        assert_eq!(
            (track.kind, track.gain.factor(), track.trim_end),
            (TrackKind::Voiceover, 0.5, Some(Duration::from_millis(900)))
        );
        let mark = plan.watermark.unwrap();
        assert_eq!((mark.position, mark.opacity, mark.scale, mark.margin_px), (Position::BottomRight, 0.5, 0.15, 7));
        assert_eq!(plan.expected.tolerance, None);
    }

    #[test]
    fn what_this_agent_cannot_encode_is_refused() {
        let mut webm = spec();
        webm.output = Some(pb::OutputSettings { format: pb::OutputFormat::Webm as i32, ..Default::default() });
        assert!(supported(&webm).unwrap_err().contains("MP4 only"));
        let mut hevc = spec();
        hevc.output = Some(pb::OutputSettings { video_codec: pb::VideoCodec::H265 as i32, ..Default::default() });
        assert!(assembly(&hevc, inputs(), "out.mp4".into()).unwrap_err().contains("H.264 only"));
        let mut loud = spec();
        loud.audio_tracks[0].track.as_mut().unwrap().volume = 5.0;
        assert!(assembly(&loud, inputs(), "out.mp4".into()).unwrap_err().contains("volume"));
        let mut image = spec();
        image.watermark.as_mut().unwrap().mark = Some(agent_pb::watermark::Mark::Image(Default::default()));
        assert!(assembly(&image, inputs(), "out.mp4".into()).unwrap_err().contains("not fetched"));
    }
}
