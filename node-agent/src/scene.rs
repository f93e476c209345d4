//! The job's scene data as the orchestrator sends it (`render.v1.SceneData`), turned into the
//! [`Injection`] a render applies: media replacements point at the files the agent fetched into
//! the task's work directory, and the free-form data becomes plain JSON.
//!
//! The orchestrator validated the data when the job was submitted; what is checked again here is
//! only what the agent must rely on — an edit with nothing to change, or media the task did not
//! bring — so a bad assignment fails with a clear message instead of a confusing render.

use std::path::Path;

use flatrender_proto::flatrender::render::v1 as pb;
use prost_types::value::Kind;

use crate::injection::{
    Change, Injection, Justification, LayerEdit, LayerRef, MediaFit, PropertyValue, Rgba, TextChange,
};

/// Scene data the agent cannot apply.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SceneError {
    #[error("scene_data.edits[{index}]: {what}")]
    Edit { index: usize, what: String },
}

/// Builds the injection for `scene`; `media` gives the local path of a fetched file by id.
pub fn injection(
    scene: &pb::SceneData,
    media: impl Fn(&str) -> Option<std::path::PathBuf>,
) -> Result<Injection, SceneError> {
    let edits = scene
        .edits
        .iter()
        .enumerate()
        .map(|(index, edit)| layer_edit(index, edit, &media))
        .collect::<Result<Vec<_>, _>>()?;
    let custom_data = scene.custom_data.as_ref().map_or(serde_json::Value::Null, struct_to_json);
    Ok(Injection { edits, custom_data })
}

fn layer_edit(
    index: usize,
    edit: &pb::LayerEdit,
    media: &impl Fn(&str) -> Option<std::path::PathBuf>,
) -> Result<LayerEdit, SceneError> {
    let fail = |what: &str| SceneError::Edit { index, what: what.to_string() };
    let layer = match &edit.layer {
        Some(pb::layer_edit::Layer::LayerName(name)) => LayerRef::Name(name.clone()),
        Some(pb::layer_edit::Layer::LayerIndex(i)) => LayerRef::Index(*i),
        None => return Err(fail("no layer")),
    };
    let change = match &edit.edit {
        Some(pb::layer_edit::Edit::Text(text)) => Change::Text(TextChange {
            text: text.text.clone(),
            font: Some(text.font.clone()).filter(|f| !f.is_empty()),
            font_size: text.font_size,
            fill_color: text.fill_color.as_ref().map(rgba),
            tracking: text.tracking,
            justification: match pb::TextJustification::try_from(text.justification) {
                Ok(pb::TextJustification::Left) => Some(Justification::Left),
                Ok(pb::TextJustification::Center) => Some(Justification::Center),
                Ok(pb::TextJustification::Right) => Some(Justification::Right),
                _ => None,
            },
        }),
        Some(pb::layer_edit::Edit::Media(replacement)) => {
            let path = media(&replacement.file_id).ok_or_else(|| {
                fail(&format!("the media file {} was not fetched for this task", replacement.file_id))
            })?;
            Change::Media { path: path_text(&path), fit: fit(replacement.fit) }
        }
        Some(pb::layer_edit::Edit::Property(property)) => {
            let value = property.value.as_ref().and_then(|v| v.kind.as_ref()).ok_or_else(|| fail("no value"))?;
            Change::Property { path: property.property_path.clone(), value: property_value(value) }
        }
        Some(pb::layer_edit::Edit::SolidColor(color)) => Change::SolidColor(rgba(color)),
        Some(pb::layer_edit::Edit::Enabled(enabled)) => Change::Enabled(*enabled),
        None => return Err(fail("no edit")),
    };
    Ok(LayerEdit {
        index,
        composition: Some(edit.composition.clone()).filter(|c| !c.is_empty()),
        layer,
        ignore_missing: edit.ignore_missing,
        change,
    })
}

fn rgba(color: &pb::Color) -> Rgba {
    Rgba { red: color.red, green: color.green, blue: color.blue, alpha: color.alpha.unwrap_or(1.0) }
}

fn fit(value: i32) -> MediaFit {
    match pb::MediaFit::try_from(value) {
        Ok(pb::MediaFit::Contain) => MediaFit::Contain,
        Ok(pb::MediaFit::Stretch) => MediaFit::Stretch,
        Ok(pb::MediaFit::None) => MediaFit::None,
        _ => MediaFit::Cover,
    }
}

fn property_value(kind: &pb::property_value::Kind) -> PropertyValue {
    use pb::property_value::Kind as K;
    match kind {
        K::Number(n) => PropertyValue::Number(*n),
        K::Boolean(b) => PropertyValue::Boolean(*b),
        K::Vector(v) => PropertyValue::Vector(v.components.clone()),
        K::Color(c) => PropertyValue::Color(rgba(c)),
        K::Text(t) => PropertyValue::Text(t.clone()),
        K::MenuIndex(i) => PropertyValue::MenuIndex(*i),
    }
}

/// After Effects' ExtendScript takes forward slashes on every platform.
fn path_text(path: &Path) -> String {
    path.to_string_lossy().replace('\\', "/")
}

/// `google.protobuf.Struct` as JSON.
fn struct_to_json(data: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(data.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => struct_to_json(s),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(value_to_json).collect()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use super::*;

    fn edit(layer: pb::layer_edit::Layer, change: pb::layer_edit::Edit) -> pb::LayerEdit {
        pb::LayerEdit { composition: String::new(), layer: Some(layer), ignore_missing: false, edit: Some(change) }
    }

    #[test]
    fn every_kind_of_edit_converts() {
        let red = pb::Color { red: 1.0, green: 0.0, blue: 0.0, alpha: None };
        let scene = pb::SceneData {
            edits: vec![
                edit(
                    pb::layer_edit::Layer::LayerName("Title".into()),
                    pb::layer_edit::Edit::Text(pb::TextEdit {
                        text: "Hello".into(),
                        fill_color: Some(red),
                        justification: pb::TextJustification::Center as i32,
                        ..pb::TextEdit::default()
                    }),
                ),
                edit(
                    pb::layer_edit::Layer::LayerIndex(2),
                    pb::layer_edit::Edit::Media(pb::MediaReplacement {
                        file_id: "f-1".into(),
                        fit: pb::MediaFit::Contain as i32,
                    }),
                ),
                edit(
                    pb::layer_edit::Layer::LayerName("BG".into()),
                    pb::layer_edit::Edit::Property(pb::PropertyEdit {
                        property_path: vec!["Effects".into(), "Fill".into(), "Color".into()],
                        value: Some(pb::PropertyValue { kind: Some(pb::property_value::Kind::Color(red)) }),
                    }),
                ),
                edit(pb::layer_edit::Layer::LayerName("Logo".into()), pb::layer_edit::Edit::Enabled(false)),
            ],
            custom_data: Some(prost_types::Struct {
                fields: BTreeMap::from([
                    ("brand".to_string(), prost_types::Value { kind: Some(Kind::StringValue("Acme".into())) }),
                    ("n".to_string(), prost_types::Value { kind: Some(Kind::NumberValue(2.5)) }),
                ]),
            }),
        };
        let injection =
            injection(&scene, |id| (id == "f-1").then(|| PathBuf::from(r"C:\work\t-1\media\f-1.png"))).unwrap();
        assert_eq!(injection.edits.len(), 4);
        let Change::Text(text) = &injection.edits[0].change else { panic!() };
        assert_eq!((text.text.as_str(), text.justification), ("Hello", Some(Justification::Center)));
        assert_eq!(text.fill_color.unwrap().alpha, 1.0, "an unset alpha is opaque");
        assert_eq!(
            injection.edits[1].change,
            Change::Media { path: "C:/work/t-1/media/f-1.png".into(), fit: MediaFit::Contain }
        );
        assert_eq!(injection.edits[1].layer, LayerRef::Index(2));
        assert!(matches!(&injection.edits[2].change, Change::Property { value: PropertyValue::Color(_), .. }));
        assert_eq!(injection.edits[3].change, Change::Enabled(false));
        assert_eq!(injection.custom_data, serde_json::json!({"brand": "Acme", "n": 2.5}));
    }

    #[test]
    fn what_cannot_be_applied_names_the_edit() {
        let scene = pb::SceneData {
            edits: vec![
                edit(pb::layer_edit::Layer::LayerName("A".into()), pb::layer_edit::Edit::Enabled(true)),
                edit(
                    pb::layer_edit::Layer::LayerName("B".into()),
                    pb::layer_edit::Edit::Media(pb::MediaReplacement { file_id: "missing".into(), fit: 0 }),
                ),
            ],
            custom_data: None,
        };
        let error = injection(&scene, |_| None).unwrap_err();
        assert_eq!(error.to_string(), "scene_data.edits[1]: the media file missing was not fetched for this task");
        let empty = pb::SceneData {
            edits: vec![pb::LayerEdit {
                layer: None,
                edit: Some(pb::layer_edit::Edit::Enabled(true)),
                ..Default::default()
            }],
            custom_data: None,
        };
        assert_eq!(injection(&empty, |_| None).unwrap_err().to_string(), "scene_data.edits[0]: no layer");
    }
}
