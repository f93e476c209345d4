//! The simulator's project format: a JSON file in the template bundle standing in for the
//! `.aep`, describing compositions and their layers (see `SIMULATOR.md`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::injection::{Justification, MediaFit, Rgba};

/// Largest comp side accepted: keeps a typo from allocating gigabytes per frame.
pub const MAX_SIDE: u32 = 8192;

/// A project: what `-project` points at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub compositions: Vec<Composition>,
    /// PostScript font names this "machine" lacks: text layers using them log the missing-font
    /// warning.
    #[serde(default)]
    pub missing_fonts: Vec<String>,
    /// Least time one frame takes, in milliseconds (`FLATRENDER_SIM_FRAME_MS` wins).
    #[serde(default)]
    pub frame_ms: Option<u64>,
    /// Time After Effects takes to launch, in milliseconds (`FLATRENDER_SIM_STARTUP_MS` wins).
    #[serde(default)]
    pub startup_ms: Option<u64>,
    /// Faults to reproduce, as in `FLATRENDER_SIM_FAULT` (which wins when set).
    #[serde(default)]
    pub faults: Vec<String>,
}

/// A composition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Frames per second, e.g. 25, 30 or 29.97.
    pub fps: f64,
    /// Length in frames; frames are numbered from 0.
    pub duration: u32,
    #[serde(default = "black")]
    pub background: Color,
    /// Timecodes in drop-frame form (`0;00;01;02`); by default for 29.97 and 59.94 fps, as in
    /// After Effects.
    #[serde(default)]
    pub drop_frame: Option<bool>,
    /// The render-queue item's output, used when `-output` is not given.
    #[serde(default)]
    pub output: Option<String>,
    /// Layers top first, as in After Effects' timeline: layer 1 is drawn last, on top.
    #[serde(default)]
    pub layers: Vec<Layer>,
}

/// A layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Layer {
    pub name: String,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Opacity in percent, 0..=100.
    #[serde(default = "full")]
    pub opacity: f64,
    #[serde(flatten)]
    pub content: Content,
}

/// What a layer shows, by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Content {
    Text(TextLayer),
    Solid(SolidLayer),
    #[serde(alias = "footage")]
    Image(ImageLayer),
}

/// A text layer: `position` is the anchor of the text block's top edge — its left end, centre
/// or right end by justification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextLayer {
    pub text: String,
    #[serde(default = "default_font")]
    pub font: String,
    /// In pixels; the bitmap font scales by whole multiples of 8.
    #[serde(default = "default_font_size")]
    pub font_size: f64,
    #[serde(default = "white")]
    pub fill: Color,
    #[serde(default)]
    pub position: [f64; 2],
    #[serde(default = "left")]
    pub justification: Justification,
}

/// A solid: a coloured rectangle, the whole comp when `rect` is absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SolidLayer {
    pub color: Color,
    #[serde(default)]
    pub rect: Option<Rect>,
}

/// Footage: a file of the bundle (relative to the project file's folder) or an absolute path,
/// fitted into `rect` (the whole comp when absent). PNGs are drawn; other files show as a
/// placeholder box.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub path: String,
    #[serde(default)]
    pub rect: Option<Rect>,
    #[serde(default = "stretch")]
    pub fit: MediaFit,
}

/// `[x, y, width, height]` in comp pixels, `x`/`y` the top-left corner.
pub type Rect = [i64; 4];

/// An sRGB colour, written `"#rrggbb"` or `"#rrggbbaa"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Color(pub [u8; 4]);

impl TryFrom<String> for Color {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let hex = text.strip_prefix('#').unwrap_or(&text);
        let bad = || format!("colour {text:?} is not \"#rrggbb\" or \"#rrggbbaa\"");
        if !(hex.len() == 6 || hex.len() == 8) || !hex.is_ascii() {
            return Err(bad());
        }
        let mut rgba = [255u8; 4];
        for (i, channel) in rgba.iter_mut().enumerate().take(hex.len() / 2) {
            *channel = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(Color(rgba))
    }
}

impl From<Color> for String {
    fn from(color: Color) -> String {
        let [r, g, b, a] = color.0;
        if a == 255 { format!("#{r:02x}{g:02x}{b:02x}") } else { format!("#{r:02x}{g:02x}{b:02x}{a:02x}") }
    }
}

impl From<Rgba> for Color {
    fn from(color: Rgba) -> Color {
        Color(color.to_rgba8())
    }
}

fn black() -> Color {
    Color([0, 0, 0, 255])
}
fn white() -> Color {
    Color([255, 255, 255, 255])
}
fn yes() -> bool {
    true
}
fn full() -> f64 {
    100.0
}
fn default_font() -> String {
    String::from("ArialMT")
}
fn default_font_size() -> f64 {
    48.0
}
fn left() -> Justification {
    Justification::Left
}
fn stretch() -> MediaFit {
    MediaFit::Stretch
}

/// Why a project cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error("Unable to open project file. File not found: {0}")]
    NotFound(String),
    #[error("Unable to open project file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

impl Project {
    /// A project from its JSON text, validated.
    pub fn from_json(json: &str) -> Result<Project, String> {
        let project: Project = serde_json::from_str(json).map_err(|e| e.to_string())?;
        project.validate()?;
        Ok(project)
    }

    /// Opens the project at `path` (a path or a `file://` URI).
    pub fn open(path: &str) -> Result<(Project, PathBuf), ProjectError> {
        let file = Path::new(path.strip_prefix("file://").unwrap_or(path));
        let json = match std::fs::read_to_string(file) {
            Ok(json) => json,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ProjectError::NotFound(path.into())),
            Err(e) => return Err(ProjectError::Invalid { path: path.into(), reason: e.to_string() }),
        };
        let project =
            Project::from_json(&json).map_err(|reason| ProjectError::Invalid { path: path.into(), reason })?;
        // Relative footage is looked up beside the project, in its bundle.
        let bundle = file.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok((project, bundle))
    }

    fn validate(&self) -> Result<(), String> {
        for comp in &self.compositions {
            let name = &comp.name;
            if comp.width == 0 || comp.height == 0 || comp.width > MAX_SIDE || comp.height > MAX_SIDE {
                return Err(format!("composition {name:?}: size must be 1..={MAX_SIDE} on each side"));
            }
            if !comp.fps.is_finite() || comp.fps <= 0.0 || comp.fps > 999.0 {
                return Err(format!("composition {name:?}: fps must be more than 0 and at most 999"));
            }
            if comp.duration == 0 {
                return Err(format!("composition {name:?}: duration must be at least one frame"));
            }
        }
        Ok(())
    }

    /// The composition named `name` (names are compared exactly, as After Effects does).
    pub fn composition(&self, name: &str) -> Option<&Composition> {
        self.compositions.iter().find(|comp| comp.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = r##"{
        "compositions": [{
            "name": "Scene 1", "width": 320, "height": 180, "fps": 29.97, "duration": 90,
            "background": "#102030",
            "layers": [
                {"name": "Title", "kind": "text", "text": "Hello", "font": "Montserrat-Bold",
                 "font_size": 24, "fill": "#ffcc00", "position": [10, 20]},
                {"name": "Logo", "kind": "footage", "path": "logo.png", "rect": [200, 10, 100, 100]},
                {"name": "Panel", "kind": "solid", "color": "#00000080", "opacity": 50, "enabled": false}
            ]
        }],
        "missing_fonts": ["Montserrat-Bold"],
        "frame_ms": 5
    }"##;

    #[test]
    fn the_documented_example_parses_with_defaults() {
        let project = Project::from_json(EXAMPLE).unwrap();
        let comp = project.composition("Scene 1").unwrap();
        assert_eq!((comp.width, comp.height, comp.fps, comp.duration), (320, 180, 29.97, 90));
        assert_eq!(comp.background, Color([0x10, 0x20, 0x30, 255]));
        let Content::Text(title) = &comp.layers[0].content else { panic!("not text") };
        assert_eq!(
            (title.font_size, title.fill, title.justification),
            (24.0, Color([255, 204, 0, 255]), Justification::Left)
        );
        assert!(matches!(&comp.layers[1].content, Content::Image(i) if i.fit == MediaFit::Stretch));
        assert!(!comp.layers[2].enabled && comp.layers[2].opacity == 50.0);
        assert!(
            matches!(&comp.layers[2].content, Content::Solid(s) if s.color.0 == [0, 0, 0, 128] && s.rect.is_none())
        );
        assert_eq!(project.frame_ms, Some(5));
        assert!(project.composition("scene 1").is_none());
    }

    #[test]
    fn bad_projects_are_refused_with_the_reason() {
        let err = Project::from_json(&EXAMPLE.replace("#102030", "blue")).unwrap_err();
        assert!(err.contains("\"blue\""), "{err}");
        let err = Project::from_json(&EXAMPLE.replace("\"fps\": 29.97", "\"fps\": 0")).unwrap_err();
        assert!(err.contains("fps"), "{err}");
        let err = Project::from_json(&EXAMPLE.replace("\"width\": 320", "\"width\": 100000")).unwrap_err();
        assert!(err.contains("size"), "{err}");
        assert!(Project::from_json(&EXAMPLE.replace("\"kind\": \"solid\"", "\"kind\": \"shape\"")).is_err());
        assert!(matches!(Project::open("/no/such/project.json"), Err(ProjectError::NotFound(_))));
    }

    #[test]
    fn colours_print_back_as_hex() {
        assert_eq!(String::from(Color([1, 2, 255, 255])), "#0102ff");
        assert_eq!(String::from(Color([1, 2, 255, 0])), "#0102ff00");
    }
}
