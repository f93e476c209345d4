//! Applies an injection (the data `-r inject.jsx` carries) to the opened project, as
//! `inject_runtime.jsx` does inside After Effects, with the same error messages.

use std::path::Path;

use crate::injection::{Change, Injection, LayerEdit, LayerRef, PropertyValue, TextChange};
use crate::simulator::project::{Color, Composition, Content, ImageLayer, Layer, Project};

/// A failed edit, worded like the runtime's thrown error: `scene_data.edits[3]: layer not found`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("scene_data.edits[{index}]: {what}")]
pub struct EditError {
    pub index: usize,
    pub what: String,
}

/// The property paths the simulator understands (After Effects' display names or match names,
/// compared case-insensitively); see `SIMULATOR.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KnownProperty {
    Position,
    Opacity,
    FillColor,
    SourceText,
}

fn known_property(path: &[String]) -> Option<KnownProperty> {
    let canonical: Vec<String> = path
        .iter()
        .map(|part| {
            let part = part.trim().to_ascii_lowercase();
            let alias = match part.as_str() {
                "adbe transform group" => "transform",
                "adbe position" => "position",
                "adbe opacity" => "opacity",
                "adbe effect parade" => "effects",
                "adbe fill" => "fill",
                "adbe fill-0002" => "color",
                "adbe text properties" => "text",
                "adbe text document" => "source text",
                other => other,
            };
            alias.to_string()
        })
        .collect();
    let path: Vec<&str> = canonical.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["transform", "position"] => Some(KnownProperty::Position),
        ["transform", "opacity"] => Some(KnownProperty::Opacity),
        ["effects", "fill", "color"] => Some(KnownProperty::FillColor),
        ["text", "source text"] => Some(KnownProperty::SourceText),
        _ => None,
    }
}

/// Applies every edit in order. Returns the warnings of edits skipped by `ignore_missing`
/// (`WARNING:FlatRender: ...`), or the first failure.
pub fn apply(project: &mut Project, bundle: &Path, injection: &Injection) -> Result<Vec<String>, EditError> {
    let mut warnings = Vec::new();
    for edit in &injection.edits {
        let skip = |what: &str| format!("WARNING:FlatRender: scene_data.edits[{}]: {what} (skipped)", edit.index);
        let fail = |what: String| EditError { index: edit.index, what };
        let mut found = 0;
        for comp in &mut project.compositions {
            if edit.composition.as_ref().is_some_and(|name| *name != comp.name) {
                continue;
            }
            let (width, height) = (comp.width, comp.height);
            for (position, layer) in comp.layers.iter_mut().enumerate() {
                let matches = match &edit.layer {
                    LayerRef::Index(index) => *index as usize == position + 1,
                    LayerRef::Name(name) => *name == layer.name,
                };
                if !matches {
                    continue;
                }
                found += 1;
                match change_layer(layer, (width, height), bundle, edit) {
                    Ok(()) => {}
                    Err(Failure::NoProperty(_)) if edit.ignore_missing => warnings.push(skip("no such property")),
                    Err(Failure::NoProperty(path)) => return Err(fail(format!("property not found: {path}"))),
                    Err(Failure::Rejected(why)) => return Err(fail(format!("value rejected: {why}"))),
                }
            }
        }
        if found == 0 {
            if !edit.ignore_missing {
                return Err(fail("layer not found".into()));
            }
            warnings.push(skip("no such layer"));
        }
    }
    Ok(warnings)
}

enum Failure {
    NoProperty(String),
    Rejected(String),
}

fn change_layer(layer: &mut Layer, comp_size: (u32, u32), bundle: &Path, edit: &LayerEdit) -> Result<(), Failure> {
    match &edit.change {
        Change::Enabled(enabled) => layer.enabled = *enabled,
        Change::Text(change) => set_text(layer, change)?,
        Change::SolidColor(color) => match &mut layer.content {
            Content::Solid(solid) => solid.color = Color::from(*color),
            _ => return Err(Failure::Rejected("not a solid layer".into())),
        },
        Change::Media { path, fit } => {
            let resolved = bundle.join(path); // an absolute `path` replaces `bundle`
            if !resolved.is_file() {
                return Err(Failure::Rejected(format!("Unable to import file \"{path}\": the file does not exist")));
            }
            let rect = match &layer.content {
                Content::Solid(solid) => solid.rect,
                Content::Image(image) => image.rect,
                Content::Text(_) => return Err(Failure::Rejected("a text layer has no footage to replace".into())),
            };
            let path = resolved.to_string_lossy().into_owned();
            layer.content = Content::Image(ImageLayer { path, rect, fit: *fit });
        }
        Change::Property { path, value } => {
            let Some(property) = known_property(path) else {
                return Err(Failure::NoProperty(path.join(" > ")));
            };
            set_property(layer, comp_size, property, value)?;
        }
    }
    Ok(())
}

fn set_text(layer: &mut Layer, change: &TextChange) -> Result<(), Failure> {
    let Content::Text(text) = &mut layer.content else {
        return Err(Failure::Rejected("not a text layer".into()));
    };
    text.text = change.text.clone();
    if let Some(font) = &change.font {
        text.font = font.clone();
    }
    if let Some(size) = change.font_size {
        if !size.is_finite() || size <= 0.0 {
            return Err(Failure::Rejected(format!("font size {size} is out of range")));
        }
        text.font_size = size;
    }
    if let Some(fill) = change.fill_color {
        text.fill = Color::from(fill);
    }
    if let Some(justification) = change.justification {
        text.justification = justification;
    }
    Ok(())
}

fn set_property(
    layer: &mut Layer,
    (width, height): (u32, u32),
    property: KnownProperty,
    value: &PropertyValue,
) -> Result<(), Failure> {
    let rejected = |expected: &str| Failure::Rejected(format!("expected {expected}, got {value:?}"));
    match property {
        KnownProperty::Position => {
            let PropertyValue::Vector(v) = value else { return Err(rejected("[x, y]")) };
            let (Some(x), Some(y)) = (v.first().copied(), v.get(1).copied()) else { return Err(rejected("[x, y]")) };
            if !x.is_finite() || !y.is_finite() {
                return Err(rejected("finite [x, y]"));
            }
            match &mut layer.content {
                Content::Text(text) => text.position = [x, y],
                Content::Solid(_) | Content::Image(_) => {
                    let rect = rect_of(layer).unwrap_or([0, 0, i64::from(width), i64::from(height)]);
                    set_rect(layer, [x.round() as i64, y.round() as i64, rect[2], rect[3]]);
                }
            }
        }
        KnownProperty::Opacity => {
            let PropertyValue::Number(n) = value else { return Err(rejected("a number 0..100")) };
            if !n.is_finite() {
                return Err(rejected("a number 0..100"));
            }
            layer.opacity = n.clamp(0.0, 100.0);
        }
        KnownProperty::FillColor => {
            let color = match value {
                PropertyValue::Color(c) => Color::from(*c),
                _ => return Err(rejected("a colour")),
            };
            match &mut layer.content {
                Content::Text(text) => text.fill = color,
                Content::Solid(solid) => solid.color = color,
                Content::Image(_) => return Err(Failure::NoProperty("Effects > Fill > Color".into())),
            }
        }
        KnownProperty::SourceText => {
            let PropertyValue::Text(new) = value else { return Err(rejected("text")) };
            let Content::Text(text) = &mut layer.content else {
                return Err(Failure::NoProperty("Text > Source Text".into()));
            };
            text.text = new.clone();
        }
    }
    Ok(())
}

fn rect_of(layer: &Layer) -> Option<[i64; 4]> {
    match &layer.content {
        Content::Solid(solid) => solid.rect,
        Content::Image(image) => image.rect,
        Content::Text(_) => None,
    }
}

fn set_rect(layer: &mut Layer, rect: [i64; 4]) {
    match &mut layer.content {
        Content::Solid(solid) => solid.rect = Some(rect),
        Content::Image(image) => image.rect = Some(rect),
        Content::Text(_) => {}
    }
}

/// The fonts of the enabled text layers of `comps`, in layer order, without repeats.
pub fn fonts_used<'a>(comps: impl IntoIterator<Item = &'a Composition>) -> Vec<String> {
    let mut fonts: Vec<String> = Vec::new();
    for comp in comps {
        for layer in &comp.layers {
            if let Content::Text(text) = &layer.content
                && layer.enabled
                && !fonts.contains(&text.font)
            {
                fonts.push(text.font.clone());
            }
        }
    }
    fonts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::injection::{Justification, MediaFit, Rgba};

    fn project() -> Project {
        Project::from_json(
            r##"{"compositions": [
                {"name": "A", "width": 100, "height": 50, "fps": 30, "duration": 10, "layers": [
                    {"name": "Title", "kind": "text", "text": "old"},
                    {"name": "Bg", "kind": "solid", "color": "#000000"},
                    {"name": "Logo", "kind": "image", "path": "logo.png"}]},
                {"name": "B", "width": 100, "height": 50, "fps": 30, "duration": 10, "layers": [
                    {"name": "Title", "kind": "text", "text": "old"}]}]}"##,
        )
        .unwrap()
    }

    fn edit(index: usize, composition: Option<&str>, layer: LayerRef, change: Change) -> LayerEdit {
        LayerEdit { index, composition: composition.map(String::from), layer, ignore_missing: false, change }
    }

    fn red() -> Rgba {
        Rgba { red: 1.0, green: 0.0, blue: 0.0, alpha: 1.0 }
    }

    fn text_of(project: &Project, comp: usize) -> &crate::simulator::project::TextLayer {
        match &project.compositions[comp].layers[0].content {
            Content::Text(text) => text,
            _ => panic!("not text"),
        }
    }

    #[test]
    fn text_colour_and_properties_apply() {
        let mut project = project();
        let name = |n: &str| LayerRef::Name(n.into());
        let injection = Injection {
            edits: vec![
                edit(
                    0,
                    Some("A"),
                    name("Title"),
                    Change::Text(TextChange {
                        text: "Hi".into(),
                        font: Some("Inter-Bold".into()),
                        font_size: Some(16.0),
                        fill_color: Some(red()),
                        justification: Some(Justification::Center),
                        ..TextChange::default()
                    }),
                ),
                edit(1, None, LayerRef::Index(2), Change::SolidColor(red())),
                edit(2, Some("A"), name("Bg"), Change::Enabled(false)),
                edit(
                    3,
                    Some("A"),
                    name("Bg"),
                    Change::Property {
                        path: vec!["ADBE Transform Group".into(), "ADBE Position".into()],
                        value: PropertyValue::Vector(vec![5.0, 6.0, 0.0]),
                    },
                ),
                edit(
                    4,
                    None,
                    name("Title"),
                    Change::Property {
                        path: vec!["ADBE Effect Parade".into(), "Fill".into(), "Color".into()],
                        value: PropertyValue::Color(Rgba { red: 0.0, green: 1.0, blue: 0.0, alpha: 1.0 }),
                    },
                ),
                edit(
                    5,
                    Some("B"),
                    name("Title"),
                    Change::Property {
                        path: vec!["Transform".into(), "Opacity".into()],
                        value: PropertyValue::Number(40.0),
                    },
                ),
            ],
            custom_data: serde_json::Value::Null,
        };
        assert_eq!(apply(&mut project, Path::new("."), &injection), Ok(vec![]));
        let title = text_of(&project, 0);
        assert_eq!((title.text.as_str(), title.font.as_str(), title.font_size), ("Hi", "Inter-Bold", 16.0));
        assert_eq!((title.fill, title.justification), (Color([0, 255, 0, 255]), Justification::Center));
        assert_eq!(text_of(&project, 1).fill, Color([0, 255, 0, 255]), "no composition: every comp");
        let bg = &project.compositions[0].layers[1];
        assert!(!bg.enabled);
        assert!(
            matches!(&bg.content, Content::Solid(s) if s.color == Color([255, 0, 0, 255]) && s.rect == Some([5, 6, 100, 50]))
        );
        assert_eq!(project.compositions[1].layers[0].opacity, 40.0);
        assert_eq!(fonts_used(&project.compositions), ["Inter-Bold", "ArialMT"]);
    }

    #[test]
    fn missing_layers_fail_unless_ignored() {
        let mut project = project();
        let mut missing = edit(7, Some("A"), LayerRef::Name("Nope".into()), Change::Enabled(false));
        let injection = Injection { edits: vec![missing.clone()], custom_data: serde_json::Value::Null };
        let err = apply(&mut project, Path::new("."), &injection).unwrap_err();
        assert_eq!(err.to_string(), "scene_data.edits[7]: layer not found");
        let other_comp = edit(8, Some("Z"), LayerRef::Name("Title".into()), Change::Enabled(false));
        let injection = Injection { edits: vec![other_comp], custom_data: serde_json::Value::Null };
        assert_eq!(apply(&mut project, Path::new("."), &injection).unwrap_err().what, "layer not found");
        missing.ignore_missing = true;
        let bad_path = LayerEdit {
            index: 9,
            composition: None,
            layer: LayerRef::Index(1),
            ignore_missing: false,
            change: Change::Property { path: vec!["Masks".into()], value: PropertyValue::Number(1.0) },
        };
        let injection = Injection { edits: vec![missing, bad_path.clone()], custom_data: serde_json::Value::Null };
        let err = apply(&mut project, Path::new("."), &injection).unwrap_err();
        assert_eq!(err.to_string(), "scene_data.edits[9]: property not found: Masks");
        let ignored = LayerEdit { ignore_missing: true, ..bad_path };
        let injection = Injection { edits: vec![ignored], custom_data: serde_json::Value::Null };
        let warnings = apply(&mut project, Path::new("."), &injection).unwrap();
        assert_eq!(warnings.len(), 2, "one per comp with a layer 1: {warnings:?}");
        assert!(warnings[0].starts_with("WARNING:FlatRender: scene_data.edits[9]: no such property"));
    }

    #[test]
    fn wrong_kinds_and_missing_media_are_rejected() {
        let mut project = project();
        let text_on_solid = edit(0, Some("A"), LayerRef::Name("Bg".into()), Change::Text(TextChange::default()));
        let injection = Injection { edits: vec![text_on_solid], custom_data: serde_json::Value::Null };
        assert_eq!(
            apply(&mut project, Path::new("."), &injection).unwrap_err().what,
            "value rejected: not a text layer"
        );
        let media = edit(
            1,
            Some("A"),
            LayerRef::Name("Logo".into()),
            Change::Media { path: "/no/such/file.png".into(), fit: MediaFit::Contain },
        );
        let injection = Injection { edits: vec![media], custom_data: serde_json::Value::Null };
        let err = apply(&mut project, Path::new("."), &injection).unwrap_err();
        assert!(err.what.starts_with("value rejected: Unable to import file"), "{err}");
    }

    #[test]
    fn media_replaces_a_solid_with_footage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("new.png"), b"x").unwrap();
        let mut project = project();
        let media = edit(
            0,
            Some("A"),
            LayerRef::Name("Bg".into()),
            Change::Media { path: "new.png".into(), fit: MediaFit::Cover },
        );
        let injection = Injection { edits: vec![media], custom_data: serde_json::Value::Null };
        apply(&mut project, dir.path(), &injection).unwrap();
        let Content::Image(image) = &project.compositions[0].layers[1].content else { panic!("not footage") };
        assert_eq!((image.path.as_str(), image.fit), (dir.path().join("new.png").to_str().unwrap(), MediaFit::Cover));
    }
}
