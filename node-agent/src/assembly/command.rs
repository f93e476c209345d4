//! The ffmpeg command line (an argv, no shell) and its filter graph.
//!
//! Inputs: one concat-demuxer list per segment, then the watermark image (if any), then one
//! input per audio track. Video per segment: `setpts=N/(rate*TB)` (each frame stamped by its
//! index at the segment's rate, whatever the demuxer thinks) → `fps` (the output rate,
//! duplicating or dropping) → `tpad`+`trim` (exactly round(frames × out/in) frames, since `fps`
//! at the end of a stream may fall one short) → `scale` when the size differs → concat → the
//! watermark → `format=yuv420p`. Progress goes to stdout as key=value lines (`-progress pipe:1`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::AssemblyError;
use super::audio;
use super::plan::{Assembly, FrameRate, Mark, RateControl, Segment};
use super::watermark;

/// What the agent prepared on disk before building the command.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// The concat list of each segment, in order.
    pub lists: Vec<PathBuf>,
    /// The watermark text, written to a file (drawtext reads it as is).
    pub text_file: Option<PathBuf>,
    /// The font for a text watermark.
    pub font: Option<PathBuf>,
    /// Each audio track's source length where it was needed (see `audio::needs_source_length`).
    pub source_lengths: Vec<Option<Duration>>,
    /// Where ffmpeg writes; renamed to the output path once verified.
    pub temp_output: PathBuf,
}

/// Output frames of one segment: its length at its own rate, in output frames, rounded.
pub fn segment_output_frames(segment: &Segment, out: FrameRate) -> u64 {
    // frames × (out.num/out.den) / (in.num/in.den), rounded half up, in integers.
    let a = u128::from(out.num) * u128::from(segment.fps.den);
    let b = u128::from(out.den) * u128::from(segment.fps.num);
    let n = segment.frames.len() as u128;
    u64::try_from((2 * n * a + b) / (2 * b)).unwrap_or(u64::MAX)
}

/// Output frames of the whole video.
pub fn output_frames(plan: &Assembly) -> u64 {
    plan.segments.iter().map(|s| segment_output_frames(s, plan.output.fps)).sum()
}

/// The `-filter_complex` graph; `[vout]` and (with audio) `[aout]` are mapped.
pub fn filter_graph(plan: &Assembly, prepared: &Prepared) -> Result<String, AssemblyError> {
    let out = plan.output.fps;
    let size = plan.output.size;
    let mut chains = Vec::new();
    for (i, segment) in plan.segments.iter().enumerate() {
        let rate = segment.fps;
        let mut chain = format!(
            "[{i}:v]setpts=N*{den}/({num}*TB),fps={onum}/{oden},tpad=stop=-1:stop_mode=clone,\
             trim=end_frame={frames},setpts=PTS-STARTPTS",
            den = rate.den,
            num = rate.num,
            onum = out.num,
            oden = out.den,
            frames = segment_output_frames(segment, out),
        );
        if segment.size != size {
            chain.push_str(&format!(",scale={}:{}", size.width, size.height));
        }
        chain.push_str(&format!(",setsar=1,format=yuv420p[v{i}]"));
        chains.push(chain);
    }
    let segments: String = (0..plan.segments.len()).map(|i| format!("[v{i}]")).collect();
    chains.push(format!("{segments}concat=n={}:v=1:a=0[vcat]", plan.segments.len()));

    let mut next_input = plan.segments.len();
    match &plan.watermark {
        None => chains.push("[vcat]null[vmark]".into()),
        Some(mark) => match &mark.mark {
            Mark::Image(_) => {
                chains.push(watermark::image_filter(mark, next_input, size, "vcat", "vmark"));
                next_input += 1;
            }
            Mark::Text(text) => {
                let (Some(text_file), Some(font)) = (&prepared.text_file, &prepared.font) else {
                    return Err(AssemblyError::InvalidPlan("a text watermark needs a font file".into()));
                };
                chains.push(watermark::text_filter(mark, text.chars().count(), text_file, font, size, "vcat", "vmark"));
            }
        },
    }
    chains.push("[vmark]format=yuv420p[vout]".into());

    if !plan.audio.is_empty() {
        let video = out.duration_of(output_frames(plan));
        for (i, track) in plan.audio.iter().enumerate() {
            let length = prepared.source_lengths.get(i).copied().flatten();
            chains.push(audio::track_chain(i, next_input + i, track, video, length, plan.output.sample_rate));
        }
        chains.push(audio::mix(plan.audio.len(), video));
    }
    Ok(chains.join(";"))
}

/// The whole argv after the program name.
pub fn ffmpeg_args(plan: &Assembly, prepared: &Prepared) -> Result<Vec<OsString>, AssemblyError> {
    let graph = filter_graph(plan, prepared)?;
    let mut args: Vec<OsString> = Vec::new();
    // Errors only on stderr; progress as key=value lines on stdout.
    push(&mut args, &["-hide_banner", "-nostdin", "-v", "error", "-nostats", "-progress", "pipe:1", "-y"]);
    for list in &prepared.lists {
        push(&mut args, &["-f", "concat", "-safe", "0", "-i"]);
        args.push(list.into());
    }
    if let Some(mark) = &plan.watermark
        && let Mark::Image(path) = &mark.mark
    {
        args.push("-i".into());
        args.push(path.into());
    }
    for track in &plan.audio {
        args.push("-i".into());
        args.push((&track.source).into());
    }
    let output = &plan.output;
    push(&mut args, &["-filter_complex", &graph, "-map", "[vout]"]);
    push(&mut args, &["-c:v", "libx264", "-preset", &output.preset, "-pix_fmt", "yuv420p", "-profile:v", "high"]);
    match output.rate {
        RateControl::Crf(crf) => push(&mut args, &["-crf", &crf.to_string()]),
        RateControl::BitrateKbps(kbps) => push(&mut args, &["-b:v", &format!("{kbps}k")]),
    }
    push(&mut args, &["-r", &format!("{}/{}", output.fps.num, output.fps.den)]);
    if plan.audio.is_empty() {
        push(&mut args, &["-an"]);
    } else {
        push(&mut args, &["-map", "[aout]", "-c:a", "aac", "-b:a", &format!("{}k", output.audio_bitrate_kbps)]);
        push(&mut args, &["-ar", &output.sample_rate.to_string(), "-ac", "2"]);
    }
    // moov first, so players start before the whole file arrived; the temporary name has no
    // .mp4 extension, hence the explicit muxer.
    push(&mut args, &["-movflags", "+faststart", "-f", "mp4"]);
    args.push((&prepared.temp_output).into());
    Ok(args)
}

fn push(args: &mut Vec<OsString>, items: &[&str]) {
    args.extend(items.iter().map(OsString::from));
}

/// For logs: the argv as one line.
pub fn display(args: &[OsString]) -> String {
    args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::plan::*;
    use super::*;

    fn segment(frames: usize, fps: u32) -> Segment {
        Segment {
            label: "comp".into(),
            frames: (0..frames).map(|i| PathBuf::from(format!("/f/{i}.png"))).collect(),
            fps: FrameRate::new(fps, 1),
            size: Size { width: 320, height: 180 },
        }
    }

    fn plan() -> Assembly {
        let size = Size { width: 320, height: 180 };
        Assembly {
            segments: vec![segment(30, 30), segment(15, 15)],
            audio: vec![AudioTrack {
                gain: Gain::from_db(-6.0).unwrap(),
                ..AudioTrack::new("/a/music.wav", TrackKind::Music)
            }],
            watermark: None,
            output: OutputSettings::standard(FrameRate::new(30, 1), size),
            expected: Expected { frames: 60, duration: Duration::from_secs(2), tolerance: None },
            output_path: "/out/render.mp4".into(),
        }
    }

    fn prepared() -> Prepared {
        Prepared {
            lists: vec!["/w/0.txt".into(), "/w/1.txt".into()],
            text_file: None,
            font: None,
            source_lengths: vec![None],
            temp_output: "/out/.render.mp4.partial".into(),
        }
    }

    #[test]
    fn frame_counts_follow_the_rates() {
        assert_eq!(segment_output_frames(&segment(15, 15), FrameRate::new(30, 1)), 30);
        assert_eq!(segment_output_frames(&segment(30, 30), FrameRate::new(24, 1)), 24);
        // 100 frames at 29.97 to 25 fps: 83.4 → 83.
        let ntsc = Segment { fps: FrameRate::new(30_000, 1001), ..segment(100, 30) };
        assert_eq!(segment_output_frames(&ntsc, FrameRate::new(25, 1)), 83);
        assert_eq!(output_frames(&plan()), 60);
    }

    #[test]
    fn the_graph() {
        let graph = filter_graph(&plan(), &prepared()).unwrap();
        let chains: Vec<&str> = graph.split(';').collect();
        assert_eq!(
            chains[0],
            "[0:v]setpts=N*1/(30*TB),fps=30/1,tpad=stop=-1:stop_mode=clone,trim=end_frame=30,\
             setpts=PTS-STARTPTS,setsar=1,format=yuv420p[v0]"
        );
        assert!(chains[1].starts_with("[1:v]setpts=N*1/(15*TB),fps=30/1,"), "{}", chains[1]);
        assert_eq!(chains[2], "[v0][v1]concat=n=2:v=1:a=0[vcat]");
        assert_eq!(chains[3], "[vcat]null[vmark]");
        assert_eq!(chains[4], "[vmark]format=yuv420p[vout]");
        // The audio input follows the two segment lists; -6 dB exactly as a linear factor.
        assert!(chains[5].starts_with("[2:a]aformat="), "{}", chains[5]);
        assert!(chains[5].ends_with(",atrim=end=2,volume=0.501187[a0]"), "{}", chains[5]);
        assert_eq!(chains[6], "[a0]apad=whole_dur=2,atrim=end=2[aout]");
    }

    #[test]
    fn the_argv() {
        let args = ffmpeg_args(&plan(), &prepared()).unwrap();
        let line = display(&args);
        assert!(line.starts_with("-hide_banner -nostdin -v error -nostats -progress pipe:1 -y "), "{line}");
        assert!(line.contains("-f concat -safe 0 -i /w/0.txt -f concat -safe 0 -i /w/1.txt -i /a/music.wav "));
        assert!(line.contains("-map [vout] -c:v libx264 -preset medium -pix_fmt yuv420p -profile:v high -crf 23"));
        assert!(line.contains("-r 30/1 -map [aout] -c:a aac -b:a 192k -ar 48000 -ac 2"));
        assert!(line.ends_with("-movflags +faststart -f mp4 /out/.render.mp4.partial"), "{line}");
    }

    #[test]
    fn without_audio_there_is_no_audio_stream() {
        let plan = Assembly { audio: Vec::new(), ..plan() };
        let line = display(&ffmpeg_args(&plan, &prepared()).unwrap());
        assert!(line.contains(" -an ") && !line.contains("[aout]"), "{line}");
    }

    #[test]
    fn a_text_watermark_needs_a_font() {
        let mark = Watermark {
            mark: Mark::Text("x".into()),
            position: Position::BottomRight,
            opacity: 0.5,
            scale: 0.15,
            margin_px: 4,
        };
        let plan = Assembly { watermark: Some(mark), ..plan() };
        assert!(matches!(filter_graph(&plan, &prepared()), Err(AssemblyError::InvalidPlan(_))));
    }
}
