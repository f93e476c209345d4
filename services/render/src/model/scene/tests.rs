use flatrender_proto::flatrender::render::v1 as pb;
use pb::layer_edit::{Edit as PbEdit, Layer};
use pb::property_value::Kind;
use prost::Message;
use prost_types::value::Kind as JsonKind;
use serde_json::json;

use super::*;

const FILE_A: &str = "0b6f0c5e-1c1a-4c3e-9a53-5f0e7a1c2d3b";
const FILE_B: &str = "7d4f6a52-8a53-4c16-a0a5-3f1f3e9b2c41";

fn by_name(name: &str, edit: PbEdit) -> pb::LayerEdit {
    pb::LayerEdit { layer: Some(Layer::LayerName(name.into())), edit: Some(edit), ..Default::default() }
}

fn color(red: f64, green: f64, blue: f64, alpha: Option<f64>) -> pb::Color {
    pb::Color { red, green, blue, alpha }
}

fn property(path: &[&str], kind: Kind) -> PbEdit {
    PbEdit::Property(pb::PropertyEdit {
        property_path: path.iter().map(|s| (*s).to_owned()).collect(),
        value: Some(pb::PropertyValue { kind: Some(kind) }),
    })
}

fn json_value(kind: JsonKind) -> prost_types::Value {
    prost_types::Value { kind: Some(kind) }
}

/// Every edit kind and every optional field, as a request sends them.
fn every_kind() -> pb::SceneData {
    let text = pb::TextEdit {
        text: "Hello\nworld".into(),
        font: "Montserrat-Bold".into(),
        font_size: Some(72.0),
        fill_color: Some(color(1.0, 0.502, 0.0, None)),
        tracking: Some(-25.0),
        justification: pb::TextJustification::Center as i32,
    };
    let custom = prost_types::Struct {
        fields: [
            ("title".to_owned(), json_value(JsonKind::StringValue("Spring".into()))),
            ("count".to_owned(), json_value(JsonKind::NumberValue(3.0))),
            ("ratio".to_owned(), json_value(JsonKind::NumberValue(0.1))),
            ("on".to_owned(), json_value(JsonKind::BoolValue(true))),
            ("none".to_owned(), json_value(JsonKind::NullValue(0))),
            (
                "list".to_owned(),
                json_value(JsonKind::ListValue(prost_types::ListValue {
                    values: vec![json_value(JsonKind::NumberValue(1.5)), json_value(JsonKind::StringValue("x".into()))],
                })),
            ),
            (
                "nested".to_owned(),
                json_value(JsonKind::StructValue(prost_types::Struct {
                    fields: [("deep".to_owned(), json_value(JsonKind::NumberValue(-2.0)))].into(),
                })),
            ),
        ]
        .into(),
    };
    pb::SceneData {
        edits: vec![
            pb::LayerEdit { composition: "Intro".into(), ignore_missing: true, ..by_name("Title", PbEdit::Text(text)) },
            pb::LayerEdit {
                composition: "Intro".into(),
                layer: Some(Layer::LayerIndex(3)),
                edit: Some(PbEdit::Media(pb::MediaReplacement {
                    file_id: FILE_A.into(),
                    fit: pb::MediaFit::Contain as i32,
                })),
                ignore_missing: false,
            },
            by_name(
                "Logo",
                PbEdit::Media(pb::MediaReplacement { file_id: FILE_B.into(), fit: pb::MediaFit::None as i32 }),
            ),
            by_name(
                "Logo",
                PbEdit::Media(pb::MediaReplacement { file_id: FILE_A.into(), fit: pb::MediaFit::Stretch as i32 }),
            ),
            by_name("BG", PbEdit::SolidColor(color(0.0, 0.0, 0.0, Some(0.5)))),
            by_name("Badge", PbEdit::Enabled(false)),
            by_name(
                "Fill",
                property(
                    &["ADBE Effect Parade", "Fill", "ADBE Fill-0002"],
                    Kind::Color(color(0.2, 0.4, 0.6, Some(1.0))),
                ),
            ),
            by_name("Slider", property(&["Effects", "Slider", "Slider"], Kind::Number(42.5))),
            by_name("Box", property(&["Effects", "Checkbox", "Checkbox"], Kind::Boolean(true))),
            by_name(
                "Pos",
                property(
                    &["ADBE Transform Group", "ADBE Position"],
                    Kind::Vector(pb::Vector { components: vec![960.0, 540.0] }),
                ),
            ),
            by_name(
                "Pos3",
                property(
                    &["ADBE Transform Group", "ADBE Position"],
                    Kind::Vector(pb::Vector { components: vec![1.0, 2.0, -3.0] }),
                ),
            ),
            by_name("Label", property(&["ADBE Text Properties", "ADBE Text Document"], Kind::Text("via path".into()))),
            by_name("Menu", property(&["Effects", "Style", "Menu"], Kind::MenuIndex(2))),
        ],
        custom_data: Some(custom),
    }
}

fn scene(data: pb::SceneData) -> SceneData {
    SceneData::from_pb("scene_data", Some(data)).unwrap()
}

fn refused(data: pb::SceneData) -> String {
    SceneData::from_pb("scene_data", Some(data)).unwrap_err().to_string()
}

fn refused_edit(edit: pb::LayerEdit) -> String {
    let mut edits = vec![by_name("ok", PbEdit::Enabled(true)); 3];
    edits.push(edit);
    refused(pb::SceneData { edits, custom_data: None })
}

#[test]
fn every_edit_kind_converts_to_and_from_protobuf() {
    let data = scene(every_kind());
    assert_eq!(data.edits().len(), 13);
    assert_eq!(data.to_pb(), every_kind());
    assert_eq!(SceneData::try_from(every_kind()).unwrap(), data);
    assert!(SceneData::from_pb("scene_data", None).unwrap().is_empty());
    assert_eq!(SceneData::default().to_pb_option(), None);
    assert_eq!(data.to_pb_option(), Some(every_kind()));
}

#[test]
fn unspecified_fit_reads_as_cover() {
    let media = pb::MediaReplacement { file_id: FILE_A.into(), fit: 0 };
    let data = scene(pb::SceneData { edits: vec![by_name("Logo", PbEdit::Media(media))], custom_data: None });
    assert_eq!(
        data.edits()[0].edit,
        Edit::Media(MediaReplacement { file_id: FILE_A.parse().unwrap(), fit: MediaFit::Cover })
    );
}

#[test]
fn stored_json_reads_back_equal() {
    let data = scene(every_kind());
    let stored = data.to_json();
    assert_eq!(SceneData::from_json(&stored).unwrap(), data);
    // Through text, as jsonb returns it (integers where the value was whole).
    let text = serde_json::to_string(&stored).unwrap().replace("72.0", "72").replace("3.0", "3");
    let reread: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(SceneData::from_json(&reread).unwrap(), data);
    assert_eq!(SceneData::from_json(&reread).unwrap().canonical_bytes(), data.canonical_bytes());
    assert_eq!(SceneData::default().to_json(), json!({}));
    assert_eq!(SceneData::from_json(&json!({})).unwrap(), SceneData::default());
}

#[test]
fn stored_json_uses_proto3_json_names() {
    let data = scene(pb::SceneData { edits: every_kind().edits[..3].to_vec(), custom_data: None });
    assert_eq!(
        data.to_json(),
        json!({"edits": [
            {"composition": "Intro", "layerName": "Title", "ignoreMissing": true, "text": {
                "text": "Hello\nworld", "font": "Montserrat-Bold", "fontSize": 72.0,
                "fillColor": {"red": 1.0, "green": 0.502, "blue": 0.0},
                "tracking": -25.0, "justification": "TEXT_JUSTIFICATION_CENTER"}},
            {"composition": "Intro", "layerIndex": 3, "media": {"fileId": FILE_A, "fit": "MEDIA_FIT_CONTAIN"}},
            {"layerName": "Logo", "media": {"fileId": FILE_B, "fit": "MEDIA_FIT_NONE"}},
        ]})
    );
    let more = scene(pb::SceneData { edits: every_kind().edits[4..10].to_vec(), custom_data: None }).to_json();
    assert_eq!(more["edits"][0]["solidColor"], json!({"red": 0.0, "green": 0.0, "blue": 0.0, "alpha": 0.5}));
    assert_eq!(more["edits"][1]["enabled"], json!(false));
    assert_eq!(more["edits"][2]["property"]["propertyPath"][2], json!("ADBE Fill-0002"));
    assert_eq!(more["edits"][3]["property"]["value"], json!({"number": 42.5}));
    assert_eq!(more["edits"][5]["property"]["value"], json!({"vector": {"components": [960.0, 540.0]}}));
}

#[test]
fn malformed_or_unstorable_json_is_refused() {
    assert!(SceneData::from_json(&json!([])).is_err());
    assert!(SceneData::from_json(&json!({"edits": [{"layerName": "T"}]})).is_err(), "no edit");
    assert!(SceneData::from_json(&json!({"edits": [{"enabled": true}]})).is_err(), "no layer");
    let bad_size = json!({"edits": [{"layerName": "T", "text": {"text": "x", "fontSize": 0}}]});
    let err = SceneData::from_json(&bad_size).unwrap_err().to_string();
    assert_eq!(err, "scene_data.edits[0].text.font_size: must be between 1 and 5000");
    let nul = json!({"customData": {"a": ["x\u{0}"]}});
    assert_eq!(
        SceneData::from_json(&nul).unwrap_err().to_string(),
        "scene_data.custom_data.a[0]: must not contain NUL characters"
    );
}

/// Two custom_data entries written on the wire in the given order.
fn wire_with_keys_in_order(first: (&str, f64), second: (&str, f64)) -> Vec<u8> {
    let entry = |(key, n): (&str, f64)| {
        prost_types::Struct { fields: [(key.to_owned(), json_value(JsonKind::NumberValue(n)))].into() }.encode_to_vec()
    };
    // A Struct is its map entries (field 1) back to back, so concatenating two one-entry
    // Structs gives a Struct with both entries in that order.
    let mut structure = entry(first);
    structure.extend(entry(second));
    let mut wire = pb::SceneData { edits: every_kind().edits, custom_data: None }.encode_to_vec();
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut wire);
    prost::encoding::encode_varint(structure.len() as u64, &mut wire);
    wire.extend(structure);
    wire
}

#[test]
fn canonical_bytes_ignore_custom_data_key_order() {
    let ab = wire_with_keys_in_order(("alpha", 1.0), ("beta", 2.0));
    let ba = wire_with_keys_in_order(("beta", 2.0), ("alpha", 1.0));
    assert_ne!(ab, ba, "the requests differ on the wire");
    let from_ab = scene(pb::SceneData::decode(ab.as_slice()).unwrap());
    let from_ba = scene(pb::SceneData::decode(ba.as_slice()).unwrap());
    assert_eq!(from_ab.canonical_bytes(), from_ba.canonical_bytes());
    let from_json =
        SceneData::from_json(&json!({"edits": from_ab.to_json()["edits"], "customData": {"beta": 2, "alpha": 1}}));
    assert_eq!(from_json.unwrap().canonical_bytes(), from_ab.canonical_bytes());
    // Edit order is meaningful.
    let mut reordered = every_kind();
    reordered.edits.swap(0, 1);
    assert_ne!(scene(reordered).canonical_bytes(), scene(every_kind()).canonical_bytes());
}

#[test]
fn media_file_ids_are_distinct_in_order_of_use() {
    let data = scene(every_kind());
    assert_eq!(data.media_file_ids(), [FILE_A.parse::<Uuid>().unwrap(), FILE_B.parse().unwrap()]);
    let uses: Vec<usize> = data.media_files().map(|(i, _)| i).collect();
    assert_eq!(uses, [1, 2, 3]);
    assert!(SceneData::default().media_file_ids().is_empty());
}

#[test]
fn merge_puts_job_edits_first_and_lets_segment_keys_override() {
    let custom = |pairs: &[(&str, &str)]| prost_types::Struct {
        fields: pairs.iter().map(|(k, v)| ((*k).to_owned(), json_value(JsonKind::StringValue((*v).into())))).collect(),
    };
    let job = scene(pb::SceneData {
        edits: vec![by_name("A", PbEdit::Enabled(true)), by_name("B", PbEdit::Enabled(true))],
        custom_data: Some(custom(&[("title", "job"), ("brand", "acme")])),
    });
    let segment = scene(pb::SceneData {
        edits: vec![by_name("A", PbEdit::Enabled(false))],
        custom_data: Some(custom(&[("title", "scene 2"), ("extra", "1")])),
    });
    let merged = SceneData::merge(&job, &segment);
    let names: Vec<_> = merged.edits().iter().map(|e| (e.layer.clone(), e.edit.clone())).collect();
    assert_eq!(
        names,
        [
            (LayerSelector::Name("A".into()), Edit::Enabled(true)),
            (LayerSelector::Name("B".into()), Edit::Enabled(true)),
            (LayerSelector::Name("A".into()), Edit::Enabled(false)),
        ]
    );
    assert_eq!(Value::Object(merged.custom_data().clone()), json!({"title": "scene 2", "brand": "acme", "extra": "1"}));
    assert_eq!(SceneData::merge(&job, &SceneData::default()), job);
    assert_eq!(SceneData::merge(&SceneData::default(), &segment), segment);
}

#[test]
fn limits_on_the_whole() {
    let edits = vec![by_name("L", PbEdit::Enabled(true)); MAX_EDITS];
    assert_eq!(scene(pb::SceneData { edits: edits.clone(), custom_data: None }).edits().len(), MAX_EDITS);
    let mut too_many = edits;
    too_many.push(by_name("L", PbEdit::Enabled(true)));
    assert_eq!(
        refused(pb::SceneData { edits: too_many, custom_data: None }),
        "scene_data.edits: must have at most 2000 edits"
    );

    // 64 KiB of custom data as compact JSON: {"k":"..."} is 8 bytes plus the string.
    let sized = |len: usize| pb::SceneData {
        edits: vec![],
        custom_data: Some(prost_types::Struct {
            fields: [("k".to_owned(), json_value(JsonKind::StringValue("x".repeat(len))))].into(),
        }),
    };
    assert_eq!(scene(sized(MAX_CUSTOM_DATA_BYTES - 8)).custom_data()["k"].as_str().unwrap().len(), 65_528);
    assert_eq!(refused(sized(MAX_CUSTOM_DATA_BYTES - 7)), "scene_data.custom_data: must be at most 64 KiB as JSON");

    // 1 MiB encoded: 200 texts of 5,000 three-byte characters.
    let big = |n: usize| pb::SceneData {
        edits: vec![by_name("T", PbEdit::Text(pb::TextEdit { text: "€".repeat(5000), ..Default::default() })); n],
        custom_data: None,
    };
    assert!(big(69).encoded_len() < MAX_ENCODED_BYTES);
    assert_eq!(scene(big(69)).edits().len(), 69);
    assert!(big(70).encoded_len() > MAX_ENCODED_BYTES);
    assert_eq!(refused(big(70)), "scene_data: too large");
}

#[test]
fn edit_structure_is_checked() {
    let no_layer = pb::LayerEdit { edit: Some(PbEdit::Enabled(true)), ..Default::default() };
    assert_eq!(refused_edit(no_layer), "scene_data.edits[3]: no layer (set layer_name or layer_index)");
    let no_edit = pb::LayerEdit { layer: Some(Layer::LayerName("T".into())), ..Default::default() };
    assert_eq!(refused_edit(no_edit), "scene_data.edits[3]: no edit");
    let index_without_comp =
        pb::LayerEdit { layer: Some(Layer::LayerIndex(1)), edit: Some(PbEdit::Enabled(true)), ..Default::default() };
    assert_eq!(refused_edit(index_without_comp), "scene_data.edits[3].composition: is required with layer_index");
    let index_zero = pb::LayerEdit {
        composition: "C".into(),
        layer: Some(Layer::LayerIndex(0)),
        edit: Some(PbEdit::Enabled(true)),
        ..Default::default()
    };
    assert_eq!(refused_edit(index_zero), "scene_data.edits[3].layer_index: must be at least 1");
    assert_eq!(refused_edit(by_name("", PbEdit::Enabled(true))), "scene_data.edits[3].layer_name: must not be empty");
    assert_eq!(
        refused_edit(by_name(&"L".repeat(256), PbEdit::Enabled(true))),
        "scene_data.edits[3].layer_name: must be at most 255 characters"
    );
    assert!(
        scene(pb::SceneData { edits: vec![by_name(&"L".repeat(255), PbEdit::Enabled(true))], custom_data: None })
            .to_json()
            .is_object()
    );
    let long_comp = pb::LayerEdit { composition: "C".repeat(256), ..by_name("L", PbEdit::Enabled(true)) };
    assert_eq!(refused_edit(long_comp), "scene_data.edits[3].composition: must be at most 255 characters");
}

#[test]
fn text_edits_are_bounded() {
    let text = |change: fn(&mut pb::TextEdit)| {
        let mut edit = pb::TextEdit { text: "ok".into(), ..Default::default() };
        change(&mut edit);
        by_name("T", PbEdit::Text(edit))
    };
    assert_eq!(
        refused_edit(text(|t| t.font_size = Some(0.5))),
        "scene_data.edits[3].text.font_size: must be between 1 and 5000"
    );
    assert_eq!(
        refused_edit(text(|t| t.font_size = Some(5000.1))),
        "scene_data.edits[3].text.font_size: must be between 1 and 5000"
    );
    assert_eq!(
        refused_edit(text(|t| t.font_size = Some(f64::NAN))),
        "scene_data.edits[3].text.font_size: must be a finite number"
    );
    assert_eq!(
        refused_edit(text(|t| t.tracking = Some(-1000.5))),
        "scene_data.edits[3].text.tracking: must be between -1000 and 10000"
    );
    assert_eq!(
        refused_edit(text(|t| t.tracking = Some(f64::INFINITY))),
        "scene_data.edits[3].text.tracking: must be a finite number"
    );
    assert_eq!(
        refused_edit(text(|t| t.text = "x".repeat(10_001))),
        "scene_data.edits[3].text.text: must be at most 10000 characters"
    );
    assert_eq!(
        refused_edit(text(|t| t.text = "a\0".into())),
        "scene_data.edits[3].text.text: must not contain NUL characters"
    );
    assert_eq!(refused_edit(text(|t| t.justification = 4)), "scene_data.edits[3].text.justification: unknown value 4");
    assert_eq!(
        refused_edit(text(|t| t.fill_color = Some(color(1.5, 0.0, 0.0, None)))),
        "scene_data.edits[3].text.fill_color.red: must be between 0 and 1"
    );
    assert_eq!(
        refused_edit(text(|t| t.font = "F".repeat(256))),
        "scene_data.edits[3].text.font: must be at most 255 characters"
    );
    let fine = |change: fn(&mut pb::TextEdit)| scene(pb::SceneData { edits: vec![text(change)], custom_data: None });
    fine(|t| {
        t.text = "é".repeat(10_000);
        t.font_size = Some(1.0);
        t.tracking = Some(10_000.0);
    });
    fine(|t| {
        t.text = String::new();
        t.font_size = Some(5000.0);
        t.tracking = Some(-1000.0);
    });
}

#[test]
fn media_and_colours_are_checked() {
    let media =
        |file_id: &str, fit: i32| by_name("M", PbEdit::Media(pb::MediaReplacement { file_id: file_id.into(), fit }));
    assert_eq!(refused_edit(media("", 0)), "scene_data.edits[3].media.file_id: is required");
    assert_eq!(
        refused_edit(media("nope", 0)),
        "scene_data.edits[3].media.file_id: must be a UUID in canonical lower-case form"
    );
    assert_eq!(refused_edit(media(FILE_A, 5)), "scene_data.edits[3].media.fit: unknown value 5");
    let solid = |c: pb::Color| by_name("S", PbEdit::SolidColor(c));
    assert_eq!(
        refused_edit(solid(color(0.0, -0.1, 0.0, None))),
        "scene_data.edits[3].solid_color.green: must be between 0 and 1"
    );
    assert_eq!(
        refused_edit(solid(color(0.0, 0.0, f64::NAN, None))),
        "scene_data.edits[3].solid_color.blue: must be a finite number"
    );
    assert_eq!(
        refused_edit(solid(color(0.0, 0.0, 0.0, Some(1.01)))),
        "scene_data.edits[3].solid_color.alpha: must be between 0 and 1"
    );
}

#[test]
fn property_edits_are_checked() {
    let path = ["Effects", "Fill", "Color"];
    assert_eq!(
        refused_edit(by_name("P", property(&[], Kind::Boolean(true)))),
        "scene_data.edits[3].property.property_path: must have 1..=16 names"
    );
    let seventeen = ["n"; 17];
    assert_eq!(
        refused_edit(by_name("P", property(&seventeen, Kind::Boolean(true)))),
        "scene_data.edits[3].property.property_path: must have 1..=16 names"
    );
    scene(pb::SceneData { edits: vec![by_name("P", property(&["n"; 16], Kind::Boolean(true)))], custom_data: None });
    assert_eq!(
        refused_edit(by_name("P", property(&["Effects", ""], Kind::Boolean(true)))),
        "scene_data.edits[3].property.property_path[1]: must not be empty"
    );
    let no_value = PbEdit::Property(pb::PropertyEdit { property_path: vec!["x".into()], value: None });
    assert_eq!(refused_edit(by_name("P", no_value)), "scene_data.edits[3].property.value: is required");
    let empty_value = PbEdit::Property(pb::PropertyEdit {
        property_path: vec!["x".into()],
        value: Some(pb::PropertyValue { kind: None }),
    });
    assert_eq!(refused_edit(by_name("P", empty_value)), "scene_data.edits[3].property.value: is required");
    let vector = |components: Vec<f64>| by_name("P", property(&path, Kind::Vector(pb::Vector { components })));
    assert_eq!(
        refused_edit(vector(vec![1.0])),
        "scene_data.edits[3].property.value.vector.components: must have 2 or 3 components"
    );
    assert_eq!(
        refused_edit(vector(vec![1.0, 2.0, 3.0, 4.0])),
        "scene_data.edits[3].property.value.vector.components: must have 2 or 3 components"
    );
    assert_eq!(
        refused_edit(vector(vec![1.0, f64::NEG_INFINITY])),
        "scene_data.edits[3].property.value.vector.components[1]: must be a finite number"
    );
    assert_eq!(
        refused_edit(by_name("P", property(&path, Kind::Number(f64::NAN)))),
        "scene_data.edits[3].property.value.number: must be a finite number"
    );
    assert_eq!(
        refused_edit(by_name("P", property(&path, Kind::Color(color(0.0, 0.0, 2.0, None))))),
        "scene_data.edits[3].property.value.color.blue: must be between 0 and 1"
    );
    assert_eq!(
        refused_edit(by_name("P", property(&path, Kind::Text("t".repeat(10_001))))),
        "scene_data.edits[3].property.value.text: must be at most 10000 characters"
    );
    assert_eq!(
        refused_edit(by_name("P", property(&path, Kind::MenuIndex(0)))),
        "scene_data.edits[3].property.value.menu_index: must be at least 1 (menu items are 1-based)"
    );
}

#[test]
fn custom_data_is_finite_and_storable() {
    let with = |value: prost_types::Value| pb::SceneData {
        edits: vec![],
        custom_data: Some(prost_types::Struct {
            fields: [(
                "outer".to_owned(),
                json_value(JsonKind::ListValue(prost_types::ListValue {
                    values: vec![json_value(JsonKind::NullValue(0)), value],
                })),
            )]
            .into(),
        }),
    };
    for bad in [f64::NAN, f64::INFINITY] {
        assert_eq!(
            refused(with(json_value(JsonKind::NumberValue(bad)))),
            "scene_data.custom_data.outer[1]: must be a finite number"
        );
    }
    assert_eq!(
        refused(with(json_value(JsonKind::StringValue("\0".into())))),
        "scene_data.custom_data.outer[1]: must not contain NUL characters"
    );
    let kindless = scene(with(prost_types::Value { kind: None }));
    assert_eq!(kindless.custom_data()["outer"], json!([null, null]));
}
