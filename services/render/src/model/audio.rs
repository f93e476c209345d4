//! Audio tracks mixed at assembly (`render_job_audio_tracks`) and the has_voiceover rule.

use flatrender_proto::flatrender::render::v1 as pb;
use uuid::Uuid;

use crate::error::{RenderError, Result};
use crate::model::db_enum::db_enum;
use crate::model::validate;

/// Most audio tracks in a job.
pub const MAX_AUDIO_TRACKS: usize = 32;
/// Highest effective linear gain (studio track volume 0..=2 × master volume 0..=2).
pub const MAX_VOLUME: f64 = 4.0;
/// Longest fade, in ms.
pub const MAX_FADE_MS: u32 = 60_000;
/// Largest time in ms the `integer` columns hold.
pub const MAX_TIME_MS: u32 = i32::MAX as u32;

db_enum! {
    /// The role of a track (`render_job_audio_tracks.kind`).
    pub enum AudioTrackKind: AudioTrackKind {
        /// Background music.
        Music = "music" => Music,
        /// Spoken voiceover.
        Voiceover = "voiceover" => Voiceover,
        /// A sound effect.
        Sfx = "sfx" => Sfx,
    }
}

/// One validated audio track (a `render_job_audio_tracks` row; its `position` is its index in
/// the request, unique per job and so per kind).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AudioTrack {
    /// Role.
    pub kind: AudioTrackKind,
    /// The audio file.
    pub file_id: Uuid,
    /// Effective linear gain, 0.0..=4.0.
    pub volume: f64,
    /// Start on the video timeline, ms.
    pub offset_ms: u32,
    /// Source position where playback begins, ms.
    pub trim_start_ms: u32,
    /// Source position where playback stops, ms, above `trim_start_ms`; `None` is the source's
    /// end (the request's 0, the column's NULL).
    pub trim_end_ms: Option<u32>,
    /// Fade-in, 0..=60,000 ms.
    pub fade_in_ms: u32,
    /// Fade-out, 0..=60,000 ms.
    pub fade_out_ms: u32,
    /// Repeat the trimmed source until the video ends (`looping`).
    pub looping: bool,
}

impl AudioTrack {
    /// From a request's track, naming `field` (e.g. `audio_tracks[1]`) in errors. The offset
    /// against the video's duration and the played length against the source's duration are
    /// checked once those are known; here a fade is checked against the trimmed length when it is
    /// known (trim end set, not looping).
    pub fn from_pb(field: &str, track: &pb::AudioTrack) -> Result<Self> {
        let kind = match track.kind {
            0 => return Err(RenderError::invalid(format!("{field}.kind"), "is required")),
            n => AudioTrackKind::from_pb_i32(n)
                .ok_or_else(|| RenderError::invalid(format!("{field}.kind"), format!("unknown value {n}")))?,
        };
        let file_id = validate::uuid(&format!("{field}.file_id"), &track.file_id)?;
        let volume = validate::number(&format!("{field}.volume"), track.volume, 0.0, MAX_VOLUME)?;
        let time = |name: &str, value: u32| {
            if value > MAX_TIME_MS {
                Err(RenderError::invalid(format!("{field}.{name}"), format!("must be at most {MAX_TIME_MS}")))
            } else {
                Ok(value)
            }
        };
        let offset_ms = time("offset_ms", track.offset_ms)?;
        let trim_start_ms = time("trim_start_ms", track.trim_start_ms)?;
        let trim_end_ms = match time("trim_end_ms", track.trim_end_ms)? {
            0 => None,
            end if end <= trim_start_ms => {
                return Err(RenderError::invalid(
                    format!("{field}.trim_end_ms"),
                    format!("must be above trim_start_ms ({trim_start_ms}), or 0 for the source's end"),
                ));
            }
            end => Some(end),
        };
        let fade = |name: &str, value: u32| {
            if value > MAX_FADE_MS {
                Err(RenderError::invalid(format!("{field}.{name}"), format!("must be at most {MAX_FADE_MS}")))
            } else {
                Ok(value)
            }
        };
        let fade_in_ms = fade("fade_in_ms", track.fade_in_ms)?;
        let fade_out_ms = fade("fade_out_ms", track.fade_out_ms)?;
        let audio = Self {
            kind,
            file_id,
            volume,
            offset_ms,
            trim_start_ms,
            trim_end_ms,
            fade_in_ms,
            fade_out_ms,
            looping: track.r#loop,
        };
        if let Some(played) = audio.played_ms().filter(|_| !audio.looping)
            && fade_in_ms + fade_out_ms > played
        {
            return Err(RenderError::invalid(
                format!("{field}.fade_out_ms"),
                format!(
                    "fade_in_ms + fade_out_ms ({}) exceed the played length ({played} ms)",
                    fade_in_ms + fade_out_ms
                ),
            ));
        }
        Ok(audio)
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::AudioTrack {
        pb::AudioTrack {
            kind: self.kind.to_pb_i32(),
            file_id: self.file_id.to_string(),
            volume: self.volume,
            offset_ms: self.offset_ms,
            trim_start_ms: self.trim_start_ms,
            trim_end_ms: self.trim_end_ms.unwrap_or(0),
            fade_in_ms: self.fade_in_ms,
            fade_out_ms: self.fade_out_ms,
            r#loop: self.looping,
        }
    }

    /// Length of the trimmed source in ms, when the trim end is set.
    pub fn played_ms(&self) -> Option<u32> {
        self.trim_end_ms.map(|end| end - self.trim_start_ms)
    }

    /// The gain as the `real` column stores it (0..=4 stays within 0..=4).
    pub fn volume_f32(&self) -> f32 {
        self.volume as f32
    }

    /// A time for an `integer` column (validated to at most `i32::MAX`).
    pub fn ms_i32(ms: u32) -> i32 {
        i32::try_from(ms).unwrap_or(i32::MAX)
    }
}

/// `has_voiceover` must agree with the tracks: true requires a voiceover track, false allows
/// none.
pub fn check_voiceover(has_voiceover: bool, tracks: &[AudioTrack]) -> Result<()> {
    let first_voiceover = tracks.iter().position(|t| t.kind == AudioTrackKind::Voiceover);
    match (has_voiceover, first_voiceover) {
        (true, None) => Err(RenderError::invalid("has_voiceover", "is true but no audio track is a voiceover")),
        (false, Some(index)) => {
            Err(RenderError::invalid("has_voiceover", format!("is false but audio_tracks[{index}] is a voiceover")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::db_enum::assert_matches_pb;
    use crate::model::testing::{MIGRATION, check_values};

    const FILE: &str = "0b6f0c5e-1c1a-4c3e-9a53-5f0e7a1c2d3b";

    fn track() -> pb::AudioTrack {
        pb::AudioTrack {
            kind: pb::AudioTrackKind::Music as i32,
            file_id: FILE.into(),
            volume: 1.0,
            ..Default::default()
        }
    }

    fn refused(change: impl FnOnce(&mut pb::AudioTrack)) -> String {
        let mut t = track();
        change(&mut t);
        AudioTrack::from_pb("audio_tracks[1]", &t).unwrap_err().to_string()
    }

    fn accepted(change: impl FnOnce(&mut pb::AudioTrack)) -> AudioTrack {
        let mut t = track();
        change(&mut t);
        AudioTrack::from_pb("audio_tracks[1]", &t).unwrap()
    }

    #[test]
    fn kinds_match_protobuf_and_the_check() {
        assert_matches_pb!(AudioTrackKind, AudioTrackKind, "AUDIO_TRACK_KIND_");
        let db: Vec<_> = AudioTrackKind::ALL.iter().map(|k| k.as_db().to_owned()).collect();
        assert_eq!(db, check_values("render_job_audio_tracks_kind_check"));
    }

    #[test]
    fn a_track_round_trips() {
        let t = pb::AudioTrack {
            kind: pb::AudioTrackKind::Voiceover as i32,
            file_id: FILE.into(),
            volume: 4.0,
            offset_ms: 1500,
            trim_start_ms: 1000,
            trim_end_ms: 9000,
            fade_in_ms: 4000,
            fade_out_ms: 4000,
            r#loop: false,
        };
        let audio = AudioTrack::from_pb("audio_tracks[0]", &t).unwrap();
        assert_eq!(audio.played_ms(), Some(8000));
        assert_eq!(audio.volume_f32(), 4.0);
        assert_eq!(audio.to_pb(), t);
        assert_eq!(accepted(|t| t.trim_end_ms = 0).trim_end_ms, None);
    }

    #[test]
    fn ranges_follow_the_proto_and_the_checks() {
        assert!(MIGRATION.contains("CHECK (volume BETWEEN 0 AND 4)"));
        assert!(MIGRATION.contains("(trim_end_ms IS NULL OR trim_end_ms > trim_start_ms)"));
        assert_eq!(refused(|t| t.kind = 0), "audio_tracks[1].kind: is required");
        assert_eq!(refused(|t| t.kind = 7), "audio_tracks[1].kind: unknown value 7");
        assert_eq!(
            refused(|t| t.file_id = "x".into()),
            "audio_tracks[1].file_id: must be a UUID in canonical lower-case form"
        );
        assert_eq!(accepted(|t| t.volume = 0.0).volume, 0.0);
        assert_eq!(refused(|t| t.volume = 4.000001), "audio_tracks[1].volume: must be between 0 and 4");
        assert_eq!(refused(|t| t.volume = -0.1), "audio_tracks[1].volume: must be between 0 and 4");
        assert_eq!(refused(|t| t.volume = f64::NAN), "audio_tracks[1].volume: must be a finite number");
        assert_eq!(accepted(|t| t.offset_ms = MAX_TIME_MS).offset_ms, MAX_TIME_MS);
        assert_eq!(refused(|t| t.offset_ms = MAX_TIME_MS + 1), "audio_tracks[1].offset_ms: must be at most 2147483647");
        assert_eq!(
            refused(|t| t.trim_start_ms = u32::MAX),
            "audio_tracks[1].trim_start_ms: must be at most 2147483647"
        );
        assert_eq!(
            refused(|t| {
                t.trim_start_ms = 500;
                t.trim_end_ms = 500;
            }),
            "audio_tracks[1].trim_end_ms: must be above trim_start_ms (500), or 0 for the source's end"
        );
        assert_eq!(accepted(|t| t.fade_in_ms = 60_000).fade_in_ms, 60_000);
        assert_eq!(refused(|t| t.fade_in_ms = 60_001), "audio_tracks[1].fade_in_ms: must be at most 60000");
        assert_eq!(refused(|t| t.fade_out_ms = 60_001), "audio_tracks[1].fade_out_ms: must be at most 60000");
    }

    #[test]
    fn fades_fit_the_played_length_when_it_is_known() {
        let fades = |t: &mut pb::AudioTrack| {
            t.trim_start_ms = 1000;
            t.trim_end_ms = 3000;
            t.fade_in_ms = 1000;
            t.fade_out_ms = 1001;
        };
        assert_eq!(
            refused(fades),
            "audio_tracks[1].fade_out_ms: fade_in_ms + fade_out_ms (2001) exceed the played length (2000 ms)"
        );
        accepted(|t| {
            fades(t);
            t.fade_out_ms = 1000;
        });
        // Looping plays until the video ends, and an open trim end leaves the length unknown.
        accepted(|t| {
            fades(t);
            t.r#loop = true;
        });
        accepted(|t| {
            fades(t);
            t.trim_end_ms = 0;
        });
    }

    #[test]
    fn has_voiceover_must_agree_with_the_tracks() {
        let music = accepted(|_| {});
        let voice = accepted(|t| t.kind = pb::AudioTrackKind::Voiceover as i32);
        assert!(check_voiceover(false, &[]).is_ok());
        assert!(check_voiceover(false, &[music]).is_ok());
        assert!(check_voiceover(true, &[music, voice]).is_ok());
        assert_eq!(
            check_voiceover(true, &[music]).unwrap_err().to_string(),
            "has_voiceover: is true but no audio track is a voiceover"
        );
        assert_eq!(
            check_voiceover(false, &[music, voice]).unwrap_err().to_string(),
            "has_voiceover: is false but audio_tracks[1] is a voiceover"
        );
    }
}
