//! The audio part of the filter graph: one chain per track (trim, loop, exact gain, fades,
//! offset), then an unnormalised mix bounded to the video's length.
//!
//! Per track: `aformat` (float, so `volume` is exact; one rate and layout for the mix) →
//! `atrim`/`asetpts` (source trim) → `aloop` (loop) → `atrim` (where the track stops) →
//! `volume` (linear factor) → `afade` in/out → `adelay` (offset, all channels).
//! Then `amix=normalize=0` (gains stay exactly as asked; a plain amix would divide by the number
//! of inputs) → `apad`/`atrim` to the video's duration.

use std::time::Duration;

use super::escape::{num, secs};
use super::plan::AudioTrack;

/// The filter chain of one track, from input `input` to label `[a<index>]`.
///
/// `source_length` is the source's duration; it is only needed (and only probed) when a fade
/// out must end at the source's own end.
pub fn track_chain(
    index: usize,
    input: usize,
    track: &AudioTrack,
    video: Duration,
    source_length: Option<Duration>,
    sample_rate: u32,
) -> String {
    let mut filters = vec![format!("aformat=sample_fmts=fltp:sample_rates={sample_rate}:channel_layouts=stereo")];
    if !track.trim_start.is_zero() || track.trim_end.is_some() {
        let mut trim = format!("atrim=start={}", secs(track.trim_start));
        if let Some(end) = track.trim_end {
            trim.push_str(&format!(":end={}", secs(end)));
        }
        filters.push(trim);
        filters.push("asetpts=PTS-STARTPTS".into());
    }
    if track.looped {
        // Loops whatever arrived before the source's end; size is only an upper bound.
        filters.push("aloop=loop=-1:size=2147483647".into());
    }
    let stop = stop_at(track, video, source_length);
    if let Some(stop) = stop {
        filters.push(format!("atrim=end={}", secs(stop)));
    }
    filters.push(format!("volume={}", num(track.gain.factor())));
    if !track.fade_in.is_zero() {
        filters.push(format!("afade=t=in:st=0:d={}", secs(track.fade_in)));
    }
    if let Some(stop) = stop
        && !track.fade_out.is_zero()
    {
        let start = stop.saturating_sub(track.fade_out);
        filters.push(format!("afade=t=out:st={}:d={}", secs(start), secs(stop - start)));
    }
    if !track.offset.is_zero() {
        filters.push(format!("adelay=delays={}:all=1", num(track.offset.as_secs_f64() * 1000.0)));
    }
    format!("[{input}:a]{}[a{index}]", filters.join(","))
}

/// Where the track stops, in track time (after trimming): its played length or the rest of the
/// video after its offset, whichever comes first; `None` when unknown (no probe was needed).
pub fn stop_at(track: &AudioTrack, video: Duration, source_length: Option<Duration>) -> Option<Duration> {
    let rest_of_video = video.saturating_sub(track.offset);
    if track.looped {
        return Some(rest_of_video);
    }
    let played = match (track.trim_end, source_length) {
        (Some(end), _) => Some(end.saturating_sub(track.trim_start)),
        (None, Some(length)) => Some(length.saturating_sub(track.trim_start)),
        (None, None) => None,
    };
    Some(played.map_or(rest_of_video, |played| played.min(rest_of_video)))
}

/// Whether the source's length must be probed to place the fade out.
pub fn needs_source_length(track: &AudioTrack) -> bool {
    !track.fade_out.is_zero() && !track.looped && track.trim_end.is_none()
}

/// Mixes `[a0]..[a<n-1>]` into `[aout]`, exactly `video` long.
pub fn mix(tracks: usize, video: Duration) -> String {
    let inputs: String = (0..tracks).map(|i| format!("[a{i}]")).collect();
    let bound = format!("apad=whole_dur={0},atrim=end={0}", secs(video));
    if tracks == 1 {
        return format!("{inputs}{bound}[aout]");
    }
    format!("{inputs}amix=inputs={tracks}:normalize=0:duration=longest:dropout_transition=0,{bound}[aout]")
}

#[cfg(test)]
mod tests {
    use super::super::plan::{Gain, TrackKind};
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn a_full_track_chain() {
        let track = AudioTrack {
            gain: Gain::linear(0.5).unwrap_or(Gain::UNITY),
            offset: ms(500),
            trim_start: ms(1000),
            trim_end: Some(ms(4000)),
            fade_in: ms(200),
            fade_out: ms(300),
            ..AudioTrack::new("/m.mp3", TrackKind::Music)
        };
        // Played 3 s, but the video leaves only 1.5 s after the offset.
        assert_eq!(
            track_chain(0, 3, &track, ms(2000), None, 48_000),
            "[3:a]aformat=sample_fmts=fltp:sample_rates=48000:channel_layouts=stereo,\
             atrim=start=1:end=4,asetpts=PTS-STARTPTS,atrim=end=1.5,volume=0.5,\
             afade=t=in:st=0:d=0.2,afade=t=out:st=1.2:d=0.3,adelay=delays=500:all=1[a0]"
        );
    }

    #[test]
    fn a_looped_track_stops_with_the_video() {
        let track = AudioTrack { looped: true, fade_out: ms(500), ..AudioTrack::new("/m.wav", TrackKind::Music) };
        let chain = track_chain(1, 2, &track, ms(10_000), None, 44_100);
        assert!(chain.contains("aloop=loop=-1:size=2147483647,atrim=end=10,volume=1,afade=t=out:st=9.5:d=0.5"));
        assert!(chain.ends_with("[a1]"), "{chain}");
    }

    #[test]
    fn the_fade_out_ends_at_the_sources_end() {
        let track = AudioTrack { fade_out: ms(1000), ..AudioTrack::new("/v.wav", TrackKind::Voiceover) };
        assert!(needs_source_length(&track));
        assert_eq!(stop_at(&track, ms(10_000), Some(ms(3000))), Some(ms(3000)));
        let chain = track_chain(0, 1, &track, ms(10_000), Some(ms(3000)), 48_000);
        assert!(chain.contains("afade=t=out:st=2:d=1"), "{chain}");
    }

    #[test]
    fn the_mix_is_not_normalised_and_bounded() {
        assert_eq!(
            mix(2, ms(2000)),
            "[a0][a1]amix=inputs=2:normalize=0:duration=longest:dropout_transition=0,\
             apad=whole_dur=2,atrim=end=2[aout]"
        );
        assert_eq!(mix(1, ms(2500)), "[a0]apad=whole_dur=2.5,atrim=end=2.5[aout]");
    }
}
