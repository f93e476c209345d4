//! Assembly with the real ffmpeg: PNG frames and lavfi audio generated here, the MP4 checked
//! with ffprobe (frames, duration, AAC, faststart) and the loudness of each track measured.
//! ffmpeg must be installed (`make test` installs it); these tests fail rather than skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flatrender_agent::assembly::{
    Assembly, AssemblyError, AudioTrack, Expected, FrameRate, Gain, Mark, OutputSettings, Position, Progress, Segment,
    Size, Tools, TrackKind, Watermark, assemble, moov_before_mdat,
};
use flatrender_agent::process::Limits;

const SIZE: Size = Size { width: 320, height: 180 };

fn ffmpeg_present() {
    let found = Command::new("ffmpeg").arg("-version").output().is_ok_and(|o| o.status.success());
    assert!(found, "ffmpeg is not installed: run `make test`, which installs it (apt-get install ffmpeg)");
}

fn limits() -> Limits {
    Limits { no_output: Duration::from_secs(30), max_run: Duration::from_secs(120) }
}

/// `count` PNG frames of a solid colour that changes per frame.
fn frames(dir: &Path, name: &str, count: usize) -> Vec<PathBuf> {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{name}_{i:05}.png"));
            let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            let mut encoder = png::Encoder::new(file, SIZE.width, SIZE.height);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().unwrap();
            let shade = (i * 8 % 256) as u8;
            let pixels: Vec<u8> = (0..SIZE.width * SIZE.height).flat_map(|_| [shade, 64, 255 - shade]).collect();
            writer.write_image_data(&pixels).unwrap();
            writer.finish().unwrap();
            path
        })
        .collect()
}

/// A sine of `frequency` Hz, `seconds` long, as WAV.
fn sine(dir: &Path, frequency: u32, seconds: f64) -> PathBuf {
    let path = dir.join(format!("sine-{frequency}.wav"));
    let source = format!("sine=frequency={frequency}:duration={seconds}:sample_rate=48000");
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", &source])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    path
}

fn two_segments(dir: &Path) -> Vec<Segment> {
    vec![
        Segment { label: "intro".into(), frames: frames(dir, "a", 30), fps: FrameRate::new(30, 1), size: SIZE },
        Segment { label: "outro".into(), frames: frames(dir, "b", 15), fps: FrameRate::new(15, 1), size: SIZE },
    ]
}

fn plan(dir: &Path, segments: Vec<Segment>, audio: Vec<AudioTrack>) -> Assembly {
    Assembly {
        segments,
        audio,
        watermark: None,
        output: OutputSettings { preset: "veryfast".into(), ..OutputSettings::standard(FrameRate::new(30, 1), SIZE) },
        expected: Expected { frames: 60, duration: Duration::from_secs(2), tolerance: None },
        output_path: dir.join("out.mp4"),
    }
}

/// ffprobe's JSON of a file.
fn ffprobe(path: &Path) -> serde_json::Value {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-show_entries"])
        .args(["stream=codec_type,codec_name,nb_read_frames,sample_rate:format=duration", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Mean volume in dB of the file's audio after `filter` (e.g. a band-pass), from volumedetect.
fn mean_volume(path: &Path, filter: &str) -> f64 {
    let chain = if filter.is_empty() { "volumedetect".to_owned() } else { format!("{filter},volumedetect") };
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostats", "-i"])
        .arg(path)
        .args(["-af", &chain, "-vn", "-f", "null", "-"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr);
    let line = text.lines().find(|l| l.contains("mean_volume:")).unwrap_or_else(|| panic!("{text}"));
    line.split("mean_volume:").nth(1).unwrap().trim().trim_end_matches("dB").trim().parse().unwrap()
}

#[tokio::test]
async fn segments_music_voiceover_and_a_text_watermark() {
    ffmpeg_present();
    let dir = tempfile::tempdir().unwrap();
    let music = AudioTrack {
        gain: Gain::from_db(-6.0).unwrap(),
        fade_out: Duration::from_millis(300),
        looped: true,
        ..AudioTrack::new(sine(dir.path(), 440, 3.0), TrackKind::Music)
    };
    let voiceover = AudioTrack {
        offset: Duration::from_millis(500),
        fade_in: Duration::from_millis(100),
        fade_out: Duration::from_millis(200),
        ..AudioTrack::new(sine(dir.path(), 1000, 1.0), TrackKind::Voiceover)
    };
    let mut plan = plan(dir.path(), two_segments(dir.path()), vec![music, voiceover]);
    plan.watermark = Some(Watermark {
        mark: Mark::Text("FlatRender: it's free".into()),
        position: Position::BottomRight,
        opacity: 0.6,
        scale: 0.3,
        margin_px: 6,
    });
    let mut reports: Vec<Progress> = Vec::new();
    let done = assemble(&plan, &Tools::default(), limits(), std::future::pending(), |p| reports.push(p)).await.unwrap();

    assert_eq!(done.path, plan.output_path);
    let probed = ffprobe(&done.path);
    let streams = probed["streams"].as_array().unwrap();
    let video = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(video["codec_name"], "h264");
    assert_eq!(video["nb_read_frames"], "60");
    let audio = streams.iter().find(|s| s["codec_type"] == "audio").expect("an audio stream");
    assert_eq!(audio["codec_name"], "aac");
    let duration: f64 = probed["format"]["duration"].as_str().unwrap().parse().unwrap();
    assert!((duration - 2.0).abs() <= 1.0 / 30.0 + 1e-6, "duration {duration}");
    assert!(moov_before_mdat(&done.path).unwrap(), "faststart: moov must precede mdat");

    let last = reports.last().expect("progress reports");
    assert!(last.done && last.frames == 60 && (last.percent - 100.0).abs() < 1e-9, "{last:?}");
    // Nothing left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!names.iter().any(|n| n.to_string_lossy().starts_with(".out.mp4")), "{names:?}");

    // The two tracks, told apart by frequency: the voiceover (0 dB) plays 1 s of the 2 s, the
    // music (-6 dB) all of it.
    let music_db = mean_volume(&done.path, "bandpass=f=440:width_type=q:w=8,bandpass=f=440:width_type=q:w=8");
    let voice_db = mean_volume(&done.path, "bandpass=f=1000:width_type=q:w=8,bandpass=f=1000:width_type=q:w=8");
    let music_source = mean_volume(&dir.path().join("sine-440.wav"), "");
    let voice_source = mean_volume(&dir.path().join("sine-1000.wav"), "");
    eprintln!(
        "mix: music band {music_db} dB (source {music_source}), voiceover band {voice_db} dB (source {voice_source})"
    );
    // The mono sources are upmixed to stereo at -3 dB per channel. A linear fade keeps a third
    // of the energy of its length; a track heard for part of the video lowers the mean by its share.
    let share_db = |heard: f64, fades: f64| 10.0 * ((heard - fades * 2.0 / 3.0) / 2.0).log10();
    // Music: -6 dB over the whole 2 s video, 0.3 s fade-out.
    let music_expected = music_source - 3.0 - 6.0 + share_db(2.0, 0.3);
    // Voiceover: 0 dB, 1 s from 0.5 s, fades of 0.1 s and 0.2 s.
    let voice_expected = voice_source - 3.0 + share_db(1.0, 0.3);
    eprintln!("expected: music {music_expected:.2} dB, voiceover {voice_expected:.2} dB");
    assert!((music_db - music_expected).abs() <= 0.5, "music {music_db}, expected {music_expected}");
    assert!((voice_db - voice_expected).abs() <= 0.5, "voiceover {voice_db}, expected {voice_expected}");
}

/// One 440 Hz track at `gain`, the rest as in the plan above; the output's mean volume.
async fn single_track_volume(dir: &Path, gain: Gain) -> f64 {
    let track = AudioTrack { gain, ..AudioTrack::new(sine(dir, 440, 3.0), TrackKind::Music) };
    let segment = Segment { label: "s".into(), frames: frames(dir, "s", 60), fps: FrameRate::new(30, 1), size: SIZE };
    let mut plan = plan(dir, vec![segment], vec![track]);
    plan.output_path = dir.join(format!("gain-{}.mp4", gain.factor()));
    let done = assemble(&plan, &Tools::default(), limits(), std::future::pending(), |_| {}).await.unwrap();
    mean_volume(&done.path, "")
}

#[tokio::test]
async fn loudness_follows_the_requested_gain() {
    ffmpeg_present();
    let dir = tempfile::tempdir().unwrap();
    let unity = single_track_volume(dir.path(), Gain::UNITY).await;
    let minus_12 = single_track_volume(dir.path(), Gain::from_db(-12.0).unwrap()).await;
    let half = single_track_volume(dir.path(), Gain::linear(0.5).unwrap()).await;
    eprintln!("mean volume: 0 dB → {unity} dB, -12 dB → {minus_12} dB, ×0.5 → {half} dB");
    assert!((unity - minus_12 - 12.0).abs() <= 0.5, "0 dB {unity}, -12 dB {minus_12}");
    assert!((unity - half - 6.0206).abs() <= 0.5, "0 dB {unity}, ×0.5 {half}");
}

#[tokio::test]
async fn a_missing_frame_is_refused_before_ffmpeg_runs() {
    ffmpeg_present();
    let dir = tempfile::tempdir().unwrap();
    let segments = two_segments(dir.path());
    let gone = segments[1].frames[7].clone();
    std::fs::remove_file(&gone).unwrap();
    // A bogus ffmpeg path proves ffmpeg is never reached.
    let tools = Tools { ffmpeg: "/nonexistent/ffmpeg".into(), ..Tools::default() };
    let error = assemble(&plan(dir.path(), segments, Vec::new()), &tools, limits(), std::future::pending(), |_| {})
        .await
        .unwrap_err();
    match error {
        AssemblyError::MissingFrame { segment: 1, index: 7, path, .. } => assert_eq!(path, gone),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_frame_count_is_a_mismatch_and_leaves_no_file() {
    ffmpeg_present();
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan(dir.path(), two_segments(dir.path()), Vec::new());
    plan.expected.frames = 61;
    let error = assemble(&plan, &Tools::default(), limits(), std::future::pending(), |_| {}).await.unwrap_err();
    let AssemblyError::OutputMismatch(detail) = &error else { panic!("{error:?}") };
    assert!(detail.contains("Some(60) video frames, expected 61"), "{detail}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| n == "a" || n == "b"), "left behind: {left:?}");
}

#[tokio::test]
async fn cancellation_kills_ffmpeg() {
    ffmpeg_present();
    let dir = tempfile::tempdir().unwrap();
    // A long encode: 600 frames at a slow preset.
    let segment =
        Segment { label: "long".into(), frames: frames(dir.path(), "l", 600), fps: FrameRate::new(30, 1), size: SIZE };
    let mut plan = plan(dir.path(), vec![segment], Vec::new());
    plan.output.preset = "veryslow".into();
    let started = std::time::Instant::now();
    let cancel = tokio::time::sleep(Duration::from_millis(300));
    let error = assemble(&plan, &Tools::default(), limits(), cancel, |_| {}).await.unwrap_err();
    assert!(matches!(error, AssemblyError::Canceled), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!plan.output_path.exists());
}

#[tokio::test]
async fn a_missing_ffmpeg_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let tools = Tools { ffmpeg: "/nonexistent/ffmpeg".into(), ..Tools::default() };
    let plan = plan(dir.path(), two_segments(dir.path()), Vec::new());
    let error = assemble(&plan, &tools, limits(), std::future::pending(), |_| {}).await.unwrap_err();
    assert!(matches!(error, AssemblyError::ToolNotFound { tool: "ffmpeg", .. }), "{error:?}");
}
