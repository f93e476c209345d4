//! Where ffmpeg, ffprobe and the watermark font are: the Debian packages on Linux (`ffmpeg`,
//! `fonts-dejavu-core`), a configured path elsewhere.

use std::path::{Path, PathBuf};

/// Fonts tried, in order, for a text watermark when none is configured.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    /// A path, or a bare name looked up on PATH.
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
    /// For text watermarks; `None` refuses them.
    pub font: Option<PathBuf>,
}

impl Default for Tools {
    /// `ffmpeg`/`ffprobe` on PATH and the first font found of a few well-known ones.
    fn default() -> Self {
        Self { ffmpeg: "ffmpeg".into(), ffprobe: "ffprobe".into(), font: default_font() }
    }
}

/// The first of the well-known fonts present on this machine.
pub fn default_font() -> Option<PathBuf> {
    FONT_CANDIDATES.iter().map(Path::new).find(|path| path.is_file()).map(Path::to_path_buf)
}
