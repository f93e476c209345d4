//! The snapshot cache key (`snapshots.cache_key`, unique per tenant): equal requests get equal
//! keys, and any difference in what is rendered gives a different key.
//!
//! Layout: SHA-256 over seven fields, each written as its length (4 bytes, big-endian) followed
//! by its bytes, so no two different inputs can produce the same byte stream:
//!
//! 1. the version tag `flatrender.snapshot_key.v1` (a layout change changes every key);
//! 2. the template bundle's SHA-256, 32 raw bytes;
//! 3. the composition name, UTF-8;
//! 4. the frame, 4 bytes big-endian;
//! 5. the resolution: empty for "the composition's size", else width then height, 4 bytes
//!    big-endian each;
//! 6. the image format's database text (`png`, `jpeg`, `webp`);
//! 7. the canonical bytes of the scene data ([`SceneData::canonical_bytes`]).

use sha2::{Digest, Sha256};

use crate::model::digest::Sha256Digest;
use crate::model::output::ImageFormat;
use crate::model::resolution::Resolution;
use crate::model::scene::SceneData;

const VERSION: &[u8] = b"flatrender.snapshot_key.v1";

/// What a snapshot renders, borrowed: the inputs of its cache key.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotKeyInput<'a> {
    /// The template bundle's digest.
    pub template_sha256: &'a Sha256Digest,
    /// Composition name.
    pub composition: &'a str,
    /// Comp frame number.
    pub frame: i32,
    /// Image size; `None` is the composition's size.
    pub resolution: Option<Resolution>,
    /// Image format.
    pub format: ImageFormat,
    /// The (merged) scene data.
    pub scene_data: &'a SceneData,
}

/// The cache key of `input` (store [`Sha256Digest::as_bytes`], show [`Sha256Digest::to_hex`]).
pub fn snapshot_cache_key(input: &SnapshotKeyInput<'_>) -> Sha256Digest {
    let resolution = input.resolution.map(|r| [r.width().to_be_bytes(), r.height().to_be_bytes()].concat());
    let mut hasher = Sha256::new();
    for field in [
        VERSION,
        input.template_sha256.as_bytes(),
        input.composition.as_bytes(),
        &input.frame.to_be_bytes(),
        resolution.as_deref().unwrap_or_default(),
        input.format.as_db().as_bytes(),
        &input.scene_data.canonical_bytes(),
    ] {
        write_field(&mut hasher, field);
    }
    Sha256Digest::from_hasher(hasher)
}

/// Writes one length-prefixed field.
pub(crate) fn write_field(hasher: &mut Sha256, bytes: &[u8]) {
    // Fields are far below 4 GiB (scene data is at most a few MiB).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    hasher.update(len.to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use flatrender_proto::flatrender::common::v1 as common_pb;
    use flatrender_proto::flatrender::render::v1 as pb;

    use super::*;

    fn scene(text: &str) -> SceneData {
        let edit = pb::LayerEdit {
            layer: Some(pb::layer_edit::Layer::LayerName("Title".into())),
            edit: Some(pb::layer_edit::Edit::Text(pb::TextEdit { text: text.into(), ..Default::default() })),
            ..Default::default()
        };
        SceneData::from_pb("scene_data", Some(pb::SceneData { edits: vec![edit], custom_data: None })).unwrap()
    }

    fn resolution(width: u32, height: u32) -> Option<Resolution> {
        Some(Resolution::from_pb("r", &common_pb::Resolution { width, height }).unwrap())
    }

    #[test]
    fn each_input_changes_the_key() {
        let template = Sha256Digest::of(b"bundle");
        let other_template = Sha256Digest::of(b"bundle 2");
        let hello = scene("Hello");
        let bye = scene("Bye");
        let base = SnapshotKeyInput {
            template_sha256: &template,
            composition: "Intro",
            frame: 42,
            resolution: resolution(1920, 1080),
            format: ImageFormat::Png,
            scene_data: &hello,
        };
        let key = snapshot_cache_key(&base);
        assert_eq!(key, snapshot_cache_key(&base), "deterministic");
        assert_eq!(key, snapshot_cache_key(&SnapshotKeyInput { scene_data: &scene("Hello"), ..base }));
        let variants = [
            SnapshotKeyInput { template_sha256: &other_template, ..base },
            SnapshotKeyInput { composition: "Outro", ..base },
            SnapshotKeyInput { frame: 43, ..base },
            SnapshotKeyInput { resolution: resolution(1080, 1920), ..base },
            SnapshotKeyInput { resolution: resolution(1920, 1082), ..base },
            SnapshotKeyInput { resolution: None, ..base },
            SnapshotKeyInput { format: ImageFormat::Jpeg, ..base },
            SnapshotKeyInput { scene_data: &bye, ..base },
            SnapshotKeyInput { scene_data: &SceneData::default(), ..base },
        ];
        let mut keys = vec![key];
        for variant in &variants {
            let k = snapshot_cache_key(variant);
            assert!(!keys.contains(&k), "{variant:?}");
            keys.push(k);
        }
    }

    #[test]
    fn framing_keeps_neighbouring_fields_apart() {
        // Without length prefixes "ab" + "c" and "a" + "bc" would hash alike.
        let mut one = Sha256::new();
        write_field(&mut one, b"ab");
        write_field(&mut one, b"c");
        let mut two = Sha256::new();
        write_field(&mut two, b"a");
        write_field(&mut two, b"bc");
        assert_ne!(Sha256Digest::from_hasher(one), Sha256Digest::from_hasher(two));
    }

    #[test]
    fn the_layout_is_stable() {
        // A change of this value invalidates every cached snapshot: do it only on purpose (and
        // bump the version tag).
        let template = Sha256Digest::from([7; 32]);
        let empty = SceneData::default();
        let input = SnapshotKeyInput {
            template_sha256: &template,
            composition: "C",
            frame: 1,
            resolution: None,
            format: ImageFormat::Png,
            scene_data: &empty,
        };
        let mut expected = Vec::new();
        for field in [VERSION, &[7; 32][..], b"C", &[0, 0, 0, 1], b"", b"png", b""] {
            expected.extend((field.len() as u32).to_be_bytes());
            expected.extend(field);
        }
        assert_eq!(snapshot_cache_key(&input), Sha256Digest::of(&expected));
    }
}
