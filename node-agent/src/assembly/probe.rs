//! ffprobe: the length of an audio source, and the check of the encoded file (frame count by
//! decoding, duration, codecs) before it counts as done; and the MP4 atom order (faststart).

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::AssemblyError;
use super::plan::Expected;

/// ffprobe's arguments for the output check; the JSON goes to `json_path` (`-o`), so that
/// stderr cannot garble it.
pub fn output_args(file: &Path, json_path: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-hide_banner", "-v", "error", "-count_frames", "-show_entries"].iter().map(Into::into).collect();
    args.push("stream=index,codec_type,codec_name,width,height,nb_read_frames:format=duration".into());
    args.extend(["-of", "json", "-o"].iter().map(Into::into));
    args.push(json_path.into());
    args.push(file.into());
    args
}

/// ffprobe's arguments for a source's duration (JSON to `json_path`).
pub fn duration_args(file: &Path, json_path: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> =
        ["-hide_banner", "-v", "error", "-show_entries", "format=duration", "-of", "json", "-o"]
            .iter()
            .map(Into::into)
            .collect();
    args.push(json_path.into());
    args.push(file.into());
    args
}

#[derive(Debug, Deserialize)]
struct Json {
    #[serde(default)]
    streams: Vec<JsonStream>,
    format: Option<JsonFormat>,
}

#[derive(Debug, Deserialize)]
struct JsonStream {
    codec_type: Option<String>,
    codec_name: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    // ffprobe writes counts and durations as strings.
    nb_read_frames: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonFormat {
    duration: Option<String>,
}

/// What ffprobe found in a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Probed {
    pub video_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Decoded video frames.
    pub frames: Option<u64>,
    pub duration: Option<Duration>,
    pub audio_codec: Option<String>,
}

pub fn parse(json: &str) -> Result<Probed, AssemblyError> {
    let parsed: Json = serde_json::from_str(json).map_err(|e| AssemblyError::Probe(format!("{e}: {json}")))?;
    let video = parsed.streams.iter().find(|s| s.codec_type.as_deref() == Some("video"));
    let audio = parsed.streams.iter().find(|s| s.codec_type.as_deref() == Some("audio"));
    Ok(Probed {
        video_codec: video.and_then(|v| v.codec_name.clone()),
        width: video.and_then(|v| v.width),
        height: video.and_then(|v| v.height),
        frames: video.and_then(|v| v.nb_read_frames.as_deref()?.parse().ok()),
        duration: parsed.format.and_then(|f| seconds(f.duration.as_deref()?)),
        audio_codec: audio.and_then(|a| a.codec_name.clone()),
    })
}

/// The duration of a source from ffprobe's `format=duration` JSON.
pub fn parse_duration(json: &str) -> Result<Duration, AssemblyError> {
    parse(json)?.duration.ok_or_else(|| AssemblyError::Probe(format!("no duration in {json}")))
}

fn seconds(text: &str) -> Option<Duration> {
    text.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64)
}

/// The output is what the plan asked for: H.264 video with exactly the expected frames, the
/// duration within the tolerance (`one_frame` when unset), and AAC audio when tracks were mixed.
pub fn verify(probed: &Probed, expected: &Expected, one_frame: Duration, audio: bool) -> Result<(), AssemblyError> {
    let mut problems = Vec::new();
    if probed.video_codec.as_deref() != Some("h264") {
        problems.push(format!("video codec {:?}, expected h264", probed.video_codec));
    }
    if probed.frames != Some(expected.frames) {
        problems.push(format!("{:?} video frames, expected {}", probed.frames, expected.frames));
    }
    let tolerance = expected.tolerance.unwrap_or(one_frame);
    match probed.duration {
        Some(duration) if duration.abs_diff(expected.duration) <= tolerance => {}
        duration => problems.push(format!("duration {duration:?}, expected {:?} ± {tolerance:?}", expected.duration)),
    }
    match (&probed.audio_codec, audio) {
        (Some(codec), true) if codec == "aac" => {}
        (None, false) => {}
        (codec, true) => problems.push(format!("audio codec {codec:?}, expected aac")),
        (Some(codec), false) => problems.push(format!("an unexpected {codec} audio stream")),
    }
    if problems.is_empty() { Ok(()) } else { Err(AssemblyError::OutputMismatch(problems.join("; "))) }
}

/// Whether the file's top-level `moov` atom comes before its `mdat` (faststart).
pub fn moov_before_mdat(path: &Path) -> io::Result<bool> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut at = 0_u64;
    while at + 8 <= length {
        let mut header = [0_u8; 16];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut header[..8])?;
        let mut size = u64::from(u32::from_be_bytes([header[0], header[1], header[2], header[3]]));
        match &header[4..8] {
            b"moov" => return Ok(true),
            b"mdat" => return Ok(false),
            _ => {}
        }
        // 1: a 64-bit size follows; 0: the atom runs to the end of the file.
        if size == 1 {
            file.read_exact(&mut header[8..16])?;
            let mut wide = [0_u8; 8];
            wide.copy_from_slice(&header[8..16]);
            size = u64::from_be_bytes(wide);
        } else if size == 0 {
            break;
        }
        if size < 8 {
            break;
        }
        at += size;
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"programs":[],"streams":[
        {"codec_name":"h264","codec_type":"video","width":320,"height":180,"nb_read_frames":"60"},
        {"codec_name":"aac","codec_type":"audio","nb_read_frames":"94"}],
        "format":{"duration":"2.000000"}}"#;

    fn expected(frames: u64) -> Expected {
        Expected { frames, duration: Duration::from_secs(2), tolerance: None }
    }

    #[test]
    fn parses_ffprobe_json() {
        let probed = parse(JSON).unwrap();
        assert_eq!(probed.frames, Some(60));
        assert_eq!(probed.duration, Some(Duration::from_secs(2)));
        assert_eq!((probed.width, probed.height), (Some(320), Some(180)));
        assert_eq!(probed.audio_codec.as_deref(), Some("aac"));
    }

    #[test]
    fn verification_names_the_figures() {
        let frame = Duration::from_secs_f64(1.0 / 30.0);
        let probed = parse(JSON).unwrap();
        verify(&probed, &expected(60), frame, true).unwrap();
        let error = verify(&probed, &expected(61), frame, true).unwrap_err().to_string();
        assert!(error.contains("Some(60) video frames, expected 61"), "{error}");
        let error = verify(&probed, &expected(60), frame, false).unwrap_err().to_string();
        assert!(error.contains("unexpected aac audio"), "{error}");
        let late = Expected { duration: Duration::from_millis(2100), ..expected(60) };
        assert!(matches!(verify(&probed, &late, frame, true), Err(AssemblyError::OutputMismatch(_))));
    }

    #[test]
    fn atom_order() {
        let dir = tempfile::tempdir().unwrap();
        let atom = |name: &[u8; 4], len: u32| {
            let mut bytes = len.to_be_bytes().to_vec();
            bytes.extend_from_slice(name);
            bytes.resize(len as usize, 0);
            bytes
        };
        let fast = dir.path().join("fast.mp4");
        std::fs::write(&fast, [atom(b"ftyp", 16), atom(b"moov", 24), atom(b"mdat", 40)].concat()).unwrap();
        assert!(moov_before_mdat(&fast).unwrap());
        let slow = dir.path().join("slow.mp4");
        std::fs::write(&slow, [atom(b"ftyp", 16), atom(b"mdat", 40), atom(b"moov", 24)].concat()).unwrap();
        assert!(!moov_before_mdat(&slow).unwrap());
    }
}
