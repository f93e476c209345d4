//! One layer edit of the scene data: the domain types, their checks (the limits of
//! render_job.proto) and their protobuf form. The serde derives give the stored JSON form: proto3
//! JSON names (lowerCamelCase, oneof members flattened into the edit, enums by their full name).

use flatrender_proto::flatrender::render::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{RenderError, Result};
use crate::model::validate::{self, MAX_NAME_CHARS};

/// Longest text (TextEdit.text, PropertyValue.text), in characters.
pub const MAX_TEXT_CHARS: usize = 10_000;
/// Most names in a property path.
pub const MAX_PROPERTY_PATH: usize = 16;

/// One change to one layer (or to every layer matching the name).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerEdit {
    /// Composition holding the layer; empty means every composition with such a layer (only with
    /// a layer name).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub composition: String,
    /// Which layer.
    #[serde(flatten)]
    pub layer: LayerSelector,
    /// Skip (with a warning) instead of failing when the composition, layer or property is
    /// missing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_missing: bool,
    /// The change.
    #[serde(flatten)]
    pub edit: Edit,
}

/// Which layer an edit targets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerSelector {
    /// Exact, case-sensitive layer name, 1..=255 characters.
    #[serde(rename = "layerName")]
    Name(String),
    /// 1-based layer index (needs a composition).
    #[serde(rename = "layerIndex")]
    Index(u32),
}

/// The change an edit makes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Edit {
    /// Replace a text layer's Source Text.
    Text(TextEdit),
    /// Replace footage with an uploaded file.
    Media(MediaReplacement),
    /// Set a property by its path.
    Property(PropertyEdit),
    /// Set a solid's colour.
    SolidColor(Color),
    /// Turn the layer on or off.
    Enabled(bool),
}

/// New Source Text; unset fields keep the template's styling.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TextEdit {
    /// The text, 0..=10,000 characters.
    #[serde(default)]
    pub text: String,
    /// PostScript font name; empty keeps the template's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub font: String,
    /// Points, 1..=5,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub font_size: Option<f64>,
    /// Fill colour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_color: Option<Color>,
    /// Thousandths of an em, -1,000..=10,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<f64>,
    /// Justification; `None` keeps the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<TextJustification>,
}

/// Paragraph justification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextJustification {
    /// Left aligned.
    #[serde(rename = "TEXT_JUSTIFICATION_LEFT")]
    Left,
    /// Centred.
    #[serde(rename = "TEXT_JUSTIFICATION_CENTER")]
    Center,
    /// Right aligned.
    #[serde(rename = "TEXT_JUSTIFICATION_RIGHT")]
    Right,
}

/// Replace a layer's footage with a file of the tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MediaReplacement {
    /// The file.
    pub file_id: Uuid,
    /// How it fills the old footage's frame (UNSPECIFIED is read as COVER).
    #[serde(default)]
    pub fit: MediaFit,
}

/// How replaced media is scaled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaFit {
    /// Cover the frame, cropping the overflow.
    #[default]
    #[serde(rename = "MEDIA_FIT_COVER")]
    Cover,
    /// Fit inside the frame.
    #[serde(rename = "MEDIA_FIT_CONTAIN")]
    Contain,
    /// Stretch to the frame.
    #[serde(rename = "MEDIA_FIT_STRETCH")]
    Stretch,
    /// The media's own pixel size, centred (MEDIA_FIT_NONE).
    #[serde(rename = "MEDIA_FIT_NONE")]
    Unscaled,
}

/// Set a property found by walking a path from the layer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyEdit {
    /// 1..=16 match or display names, each 1..=255 characters.
    pub property_path: Vec<String>,
    /// The value.
    pub value: PropertyValue,
}

/// A value for a property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PropertyValue {
    /// One-dimensional, finite.
    Number(f64),
    /// Checkbox.
    Boolean(bool),
    /// 2 or 3 finite components.
    Vector(Vector),
    /// Colour.
    Color(Color),
    /// Text, 0..=10,000 characters.
    Text(String),
    /// 1-based dropdown item.
    MenuIndex(u32),
}

/// A 2D or 3D vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Vector {
    /// 2 or 3 finite components.
    pub components: Vec<f64>,
}

/// An sRGB colour with straight alpha, components 0.0..=1.0.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Color {
    /// Red.
    #[serde(default)]
    pub red: f64,
    /// Green.
    #[serde(default)]
    pub green: f64,
    /// Blue.
    #[serde(default)]
    pub blue: f64,
    /// Alpha; `None` is opaque.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

impl LayerEdit {
    /// From a request's edit at `field` (e.g. `scene_data.edits[3]`), checked.
    pub fn from_pb(field: &str, edit: pb::LayerEdit) -> Result<Self> {
        let layer = match edit.layer {
            Some(pb::layer_edit::Layer::LayerName(name)) => LayerSelector::Name(name),
            Some(pb::layer_edit::Layer::LayerIndex(index)) => LayerSelector::Index(index),
            None => return Err(RenderError::invalid(field, "no layer (set layer_name or layer_index)")),
        };
        let change = match edit.edit {
            Some(pb::layer_edit::Edit::Text(text)) => Edit::Text(TextEdit::from_pb(&format!("{field}.text"), text)?),
            Some(pb::layer_edit::Edit::Media(media)) => {
                Edit::Media(MediaReplacement::from_pb(&format!("{field}.media"), &media)?)
            }
            Some(pb::layer_edit::Edit::Property(property)) => {
                Edit::Property(PropertyEdit::from_pb(&format!("{field}.property"), property)?)
            }
            Some(pb::layer_edit::Edit::SolidColor(color)) => Edit::SolidColor(Color::from_pb(&color)),
            Some(pb::layer_edit::Edit::Enabled(enabled)) => Edit::Enabled(enabled),
            None => return Err(RenderError::invalid(field, "no edit")),
        };
        let edit = Self { composition: edit.composition, layer, ignore_missing: edit.ignore_missing, edit: change };
        edit.check(field)?;
        Ok(edit)
    }

    /// Checks the limits of every field (also run on values read back from JSON).
    pub fn check(&self, field: &str) -> Result<()> {
        if !self.composition.is_empty() {
            validate::name(&format!("{field}.composition"), &self.composition, MAX_NAME_CHARS)?;
        }
        match &self.layer {
            LayerSelector::Name(name) => {
                validate::name(&format!("{field}.layer_name"), name, MAX_NAME_CHARS)?;
            }
            LayerSelector::Index(0) => {
                return Err(RenderError::invalid(format!("{field}.layer_index"), "must be at least 1"));
            }
            LayerSelector::Index(_) if self.composition.is_empty() => {
                return Err(RenderError::invalid(format!("{field}.composition"), "is required with layer_index"));
            }
            LayerSelector::Index(_) => {}
        }
        match &self.edit {
            Edit::Text(text) => text.check(&format!("{field}.text")),
            Edit::Media(_) | Edit::Enabled(_) => Ok(()),
            Edit::Property(property) => property.check(&format!("{field}.property")),
            Edit::SolidColor(color) => color.check(&format!("{field}.solid_color")),
        }
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::LayerEdit {
        pb::LayerEdit {
            composition: self.composition.clone(),
            ignore_missing: self.ignore_missing,
            layer: Some(match &self.layer {
                LayerSelector::Name(name) => pb::layer_edit::Layer::LayerName(name.clone()),
                LayerSelector::Index(index) => pb::layer_edit::Layer::LayerIndex(*index),
            }),
            edit: Some(match &self.edit {
                Edit::Text(text) => pb::layer_edit::Edit::Text(text.to_pb()),
                Edit::Media(media) => pb::layer_edit::Edit::Media(media.to_pb()),
                Edit::Property(property) => pb::layer_edit::Edit::Property(property.to_pb()),
                Edit::SolidColor(color) => pb::layer_edit::Edit::SolidColor(color.to_pb()),
                Edit::Enabled(enabled) => pb::layer_edit::Edit::Enabled(*enabled),
            }),
        }
    }
}

impl TextEdit {
    fn from_pb(field: &str, text: pb::TextEdit) -> Result<Self> {
        let justification = match text.justification {
            0 => None,
            1 => Some(TextJustification::Left),
            2 => Some(TextJustification::Center),
            3 => Some(TextJustification::Right),
            n => return Err(RenderError::invalid(format!("{field}.justification"), format!("unknown value {n}"))),
        };
        Ok(Self {
            text: text.text,
            font: text.font,
            font_size: text.font_size,
            fill_color: text.fill_color.as_ref().map(Color::from_pb),
            tracking: text.tracking,
            justification,
        })
    }

    fn check(&self, field: &str) -> Result<()> {
        validate::text(&format!("{field}.text"), &self.text, MAX_TEXT_CHARS)?;
        if !self.font.is_empty() {
            validate::name(&format!("{field}.font"), &self.font, MAX_NAME_CHARS)?;
        }
        if let Some(size) = self.font_size {
            validate::number(&format!("{field}.font_size"), size, 1.0, 5000.0)?;
        }
        if let Some(color) = &self.fill_color {
            color.check(&format!("{field}.fill_color"))?;
        }
        if let Some(tracking) = self.tracking {
            validate::number(&format!("{field}.tracking"), tracking, -1000.0, 10_000.0)?;
        }
        Ok(())
    }

    fn to_pb(&self) -> pb::TextEdit {
        let justification = match self.justification {
            None => pb::TextJustification::Unspecified,
            Some(TextJustification::Left) => pb::TextJustification::Left,
            Some(TextJustification::Center) => pb::TextJustification::Center,
            Some(TextJustification::Right) => pb::TextJustification::Right,
        };
        pb::TextEdit {
            text: self.text.clone(),
            font: self.font.clone(),
            font_size: self.font_size,
            fill_color: self.fill_color.map(|c| c.to_pb()),
            tracking: self.tracking,
            justification: justification as i32,
        }
    }
}

impl MediaReplacement {
    fn from_pb(field: &str, media: &pb::MediaReplacement) -> Result<Self> {
        let file_id = validate::uuid(&format!("{field}.file_id"), &media.file_id)?;
        let fit = match media.fit {
            0 | 1 => MediaFit::Cover,
            2 => MediaFit::Contain,
            3 => MediaFit::Stretch,
            4 => MediaFit::Unscaled,
            n => return Err(RenderError::invalid(format!("{field}.fit"), format!("unknown value {n}"))),
        };
        Ok(Self { file_id, fit })
    }

    fn to_pb(self) -> pb::MediaReplacement {
        let fit = match self.fit {
            MediaFit::Cover => pb::MediaFit::Cover,
            MediaFit::Contain => pb::MediaFit::Contain,
            MediaFit::Stretch => pb::MediaFit::Stretch,
            MediaFit::Unscaled => pb::MediaFit::None,
        };
        pb::MediaReplacement { file_id: self.file_id.to_string(), fit: fit as i32 }
    }
}

impl PropertyEdit {
    fn from_pb(field: &str, property: pb::PropertyEdit) -> Result<Self> {
        let value = match property.value.and_then(|v| v.kind) {
            Some(pb::property_value::Kind::Number(n)) => PropertyValue::Number(n),
            Some(pb::property_value::Kind::Boolean(b)) => PropertyValue::Boolean(b),
            Some(pb::property_value::Kind::Vector(v)) => PropertyValue::Vector(Vector { components: v.components }),
            Some(pb::property_value::Kind::Color(c)) => PropertyValue::Color(Color::from_pb(&c)),
            Some(pb::property_value::Kind::Text(t)) => PropertyValue::Text(t),
            Some(pb::property_value::Kind::MenuIndex(i)) => PropertyValue::MenuIndex(i),
            None => return Err(RenderError::invalid(format!("{field}.value"), "is required")),
        };
        Ok(Self { property_path: property.property_path, value })
    }

    fn check(&self, field: &str) -> Result<()> {
        if !(1..=MAX_PROPERTY_PATH).contains(&self.property_path.len()) {
            return Err(RenderError::invalid(format!("{field}.property_path"), "must have 1..=16 names"));
        }
        for (i, name) in self.property_path.iter().enumerate() {
            validate::name(&format!("{field}.property_path[{i}]"), name, MAX_NAME_CHARS)?;
        }
        let field = format!("{field}.value");
        match &self.value {
            PropertyValue::Number(n) => validate::number(&format!("{field}.number"), *n, f64::MIN, f64::MAX).map(drop),
            PropertyValue::Boolean(_) => Ok(()),
            PropertyValue::Vector(v) => {
                let field = format!("{field}.vector.components");
                if !(2..=3).contains(&v.components.len()) {
                    return Err(RenderError::invalid(field, "must have 2 or 3 components"));
                }
                for (i, c) in v.components.iter().enumerate() {
                    validate::number(&format!("{field}[{i}]"), *c, f64::MIN, f64::MAX)?;
                }
                Ok(())
            }
            PropertyValue::Color(c) => c.check(&format!("{field}.color")),
            PropertyValue::Text(t) => validate::text(&format!("{field}.text"), t, MAX_TEXT_CHARS).map(drop),
            PropertyValue::MenuIndex(0) => {
                Err(RenderError::invalid(format!("{field}.menu_index"), "must be at least 1 (menu items are 1-based)"))
            }
            PropertyValue::MenuIndex(_) => Ok(()),
        }
    }

    fn to_pb(&self) -> pb::PropertyEdit {
        let kind = match &self.value {
            PropertyValue::Number(n) => pb::property_value::Kind::Number(*n),
            PropertyValue::Boolean(b) => pb::property_value::Kind::Boolean(*b),
            PropertyValue::Vector(v) => {
                pb::property_value::Kind::Vector(pb::Vector { components: v.components.clone() })
            }
            PropertyValue::Color(c) => pb::property_value::Kind::Color(c.to_pb()),
            PropertyValue::Text(t) => pb::property_value::Kind::Text(t.clone()),
            PropertyValue::MenuIndex(i) => pb::property_value::Kind::MenuIndex(*i),
        };
        pb::PropertyEdit {
            property_path: self.property_path.clone(),
            value: Some(pb::PropertyValue { kind: Some(kind) }),
        }
    }
}

impl Color {
    fn from_pb(color: &pb::Color) -> Self {
        Self { red: color.red, green: color.green, blue: color.blue, alpha: color.alpha }
    }

    fn check(&self, field: &str) -> Result<()> {
        validate::number(&format!("{field}.red"), self.red, 0.0, 1.0)?;
        validate::number(&format!("{field}.green"), self.green, 0.0, 1.0)?;
        validate::number(&format!("{field}.blue"), self.blue, 0.0, 1.0)?;
        if let Some(alpha) = self.alpha {
            validate::number(&format!("{field}.alpha"), alpha, 0.0, 1.0)?;
        }
        Ok(())
    }

    fn to_pb(self) -> pb::Color {
        pb::Color { red: self.red, green: self.green, blue: self.blue, alpha: self.alpha }
    }
}
