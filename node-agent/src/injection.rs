//! What the agent injects into a render: the customer's scene data, resolved for this machine
//! (media replacements point at the files the agent fetched), carried by a generated
//! `inject.jsx` that After Effects runs with `-r` after the project opens.
//!
//! The script is two parts: one line `var FLATRENDER_INJECTION = <JSON>;` holding an
//! [`Injection`], then a fixed runtime (`inject_runtime.jsx`) that applies it through After
//! Effects' scripting API. The data travels as JSON on its own line so that anything that cannot
//! run JSX — the simulator — reads exactly what After Effects would apply
//! ([`Injection::from_script`]).

use serde::{Deserialize, Serialize};

/// The line prefix that carries the data; the simulator looks for it.
const DATA_PREFIX: &str = "var FLATRENDER_INJECTION = ";

/// The part of the script that applies the data inside After Effects.
const RUNTIME: &str = include_str!("inject_runtime.jsx");

/// The scene data of one render, ready to apply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Injection {
    /// Layer edits, applied in order.
    pub edits: Vec<LayerEdit>,
    /// The job's free-form data, exposed to template scripts as `FLATRENDER_DATA`.
    #[serde(default)]
    pub custom_data: serde_json::Value,
}

/// One change to the layers that match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerEdit {
    /// The edit's position in the job's `scene_data.edits`, named in errors.
    pub index: usize,
    /// The composition holding the layer; `None` means every composition with such a layer.
    pub composition: Option<String>,
    /// Which layer.
    pub layer: LayerRef,
    /// Skip (with a warning) instead of failing when the composition, layer or property is
    /// missing.
    #[serde(default)]
    pub ignore_missing: bool,
    /// What changes.
    pub change: Change,
}

/// A layer by name (every layer of that name) or by 1-based index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerRef {
    Name(String),
    Index(u32),
}

/// The change an edit makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// New Source Text; unset styling keeps the template's.
    Text(TextChange),
    /// New footage from a local file the agent fetched.
    Media { path: String, fit: MediaFit },
    /// A property found by walking `path` from the layer.
    Property { path: Vec<String>, value: PropertyValue },
    /// A solid layer's source colour.
    SolidColor(Rgba),
    /// The layer on or off.
    Enabled(bool),
}

/// New Source Text for a text layer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TextChange {
    /// The text; `\n` breaks lines.
    pub text: String,
    /// PostScript font name; `None` keeps the template's.
    pub font: Option<String>,
    /// Font size in points.
    pub font_size: Option<f64>,
    /// Fill colour.
    pub fill_color: Option<Rgba>,
    /// Tracking in thousandths of an em.
    pub tracking: Option<f64>,
    /// Paragraph justification.
    pub justification: Option<Justification>,
}

/// Paragraph justification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Justification {
    Left,
    Center,
    Right,
}

/// How replaced media fills the old footage's frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaFit {
    #[default]
    Cover,
    Contain,
    Stretch,
    None,
}

/// A property value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropertyValue {
    Number(f64),
    Boolean(bool),
    Vector(Vec<f64>),
    Color(Rgba),
    Text(String),
    MenuIndex(u32),
}

/// An sRGB colour with straight alpha, components 0.0..=1.0 as After Effects takes them.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rgba {
    pub red: f64,
    pub green: f64,
    pub blue: f64,
    #[serde(default = "opaque")]
    pub alpha: f64,
}

fn opaque() -> f64 {
    1.0
}

impl Rgba {
    /// 8-bit components, each clamped to 0..=255.
    pub fn to_rgba8(self) -> [u8; 4] {
        let channel = |c: f64| (c.clamp(0.0, 1.0) * 255.0).round() as u8;
        [channel(self.red), channel(self.green), channel(self.blue), channel(self.alpha)]
    }
}

/// A script that is not an injection script.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("the script has no `{DATA_PREFIX}` line")]
    NoData,
    #[error("the script's injection data is not valid: {0}")]
    BadData(#[from] serde_json::Error),
}

impl Injection {
    /// The `inject.jsx` that applies this data.
    pub fn to_script(&self) -> String {
        // JSON is a JavaScript literal, except that ExtendScript (ECMAScript 3) ends a line at
        // U+2028/U+2029 even inside a string: those are escaped. Serialising a plain data tree
        // cannot fail.
        let json = serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"edits\":[]}"));
        let json = json.replace('\u{2028}', "\\u2028").replace('\u{2029}', "\\u2029");
        format!(
            "// Generated by flatrender-agent: the render's scene data, then the code that applies it.\n{DATA_PREFIX}{json};\n{RUNTIME}"
        )
    }

    /// The data of a script made by [`to_script`](Self::to_script).
    pub fn from_script(script: &str) -> Result<Self, ScriptError> {
        let line = script.lines().find_map(|line| line.strip_prefix(DATA_PREFIX)).ok_or(ScriptError::NoData)?;
        let json = line.trim_end().strip_suffix(';').unwrap_or(line);
        Ok(serde_json::from_str(json)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Injection {
        Injection {
            edits: vec![
                LayerEdit {
                    index: 0,
                    composition: Some("Scene 1".into()),
                    layer: LayerRef::Name("Title".into()),
                    ignore_missing: false,
                    change: Change::Text(TextChange {
                        text: "Hello \"world\"\nline two \u{2028} ; end".into(),
                        fill_color: Some(Rgba { red: 1.0, green: 0.5, blue: 0.0, alpha: 1.0 }),
                        ..TextChange::default()
                    }),
                },
                LayerEdit {
                    index: 1,
                    composition: None,
                    layer: LayerRef::Index(3),
                    ignore_missing: true,
                    change: Change::Property {
                        path: vec!["ADBE Effect Parade".into(), "Fill".into()],
                        value: PropertyValue::Vector(vec![1.0, 2.0]),
                    },
                },
            ],
            custom_data: serde_json::json!({"brand": "Acme"}),
        }
    }

    #[test]
    fn the_script_carries_the_data_on_one_line_and_reads_back() {
        let injection = sample();
        let script = injection.to_script();
        let data_lines: Vec<_> = script.lines().filter(|l| l.starts_with(DATA_PREFIX)).collect();
        assert_eq!(data_lines.len(), 1);
        assert!(!data_lines[0].contains('\u{2028}'), "line separators are escaped for ExtendScript");
        assert!(script.contains("FLATRENDER_DATA"), "the runtime follows the data");
        assert_eq!(Injection::from_script(&script).unwrap(), injection);
    }

    #[test]
    fn other_scripts_are_refused_clearly() {
        assert!(matches!(Injection::from_script("alert(1);"), Err(ScriptError::NoData)));
        let broken = format!("{DATA_PREFIX}{{\"edits\": [}};\n");
        assert!(matches!(Injection::from_script(&broken), Err(ScriptError::BadData(_))));
    }

    #[test]
    fn colours_clamp_to_eight_bits() {
        let c = Rgba { red: 1.2, green: 0.502, blue: -0.1, alpha: 1.0 };
        assert_eq!(c.to_rgba8(), [255, 128, 0, 255]);
    }
}
