//! The customer's scene data (`SceneData`): layer edits applied in order, and free-form custom
//! data for templates with their own binding script.
//!
//! Three forms: the protobuf message (requests, the agent's `RenderSpec`), the JSON object stored
//! in the `scene_data` jsonb columns (proto3 JSON names: lowerCamelCase, oneof members flattened
//! into the edit, enums by name), and the canonical bytes of the snapshot cache key (the prost
//! encoding: fields in number order, edits in request order, `custom_data` keys sorted).

mod custom_data;
mod edit;

use flatrender_proto::flatrender::render::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{RenderError, Result};

pub use custom_data::MAX_CUSTOM_DATA_BYTES;
pub use edit::{
    Color, Edit, LayerEdit, LayerSelector, MAX_PROPERTY_PATH, MAX_TEXT_CHARS, MediaFit, MediaReplacement, PropertyEdit,
    PropertyValue, TextEdit, TextJustification, Vector,
};

/// Most edits in one request's scene data.
pub const MAX_EDITS: usize = 2000;
/// Largest scene data message, encoded.
pub const MAX_ENCODED_BYTES: usize = 1024 * 1024;

/// Validated scene data. An empty `custom_data` is the same as none (both encode as unset).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "StoredSceneData")]
pub struct SceneData {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    edits: Vec<LayerEdit>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    custom_data: Map<String, Value>,
}

/// The JSON as stored, before its checks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSceneData {
    #[serde(default)]
    edits: Vec<LayerEdit>,
    #[serde(default)]
    custom_data: Map<String, Value>,
}

/// Stored values are checked edit by edit as requests are, but not against the request caps
/// (edit count, encoded size): merged scene data may exceed them.
impl TryFrom<StoredSceneData> for SceneData {
    type Error = RenderError;

    fn try_from(stored: StoredSceneData) -> Result<Self> {
        let mut custom_data = stored.custom_data;
        custom_data.values_mut().for_each(custom_data::normalize_numbers);
        custom_data::check_storable("scene_data.custom_data", &custom_data)?;
        for (i, edit) in stored.edits.iter().enumerate() {
            edit.check(&format!("scene_data.edits[{i}]"))?;
        }
        Ok(Self { edits: stored.edits, custom_data })
    }
}

impl SceneData {
    /// Scene data from its parts, with every request check; `field` names it in errors (e.g.
    /// `segments[2].scene_data`).
    pub fn new(field: &str, edits: Vec<LayerEdit>, mut custom_data: Map<String, Value>) -> Result<Self> {
        if edits.len() > MAX_EDITS {
            return Err(RenderError::invalid(format!("{field}.edits"), format!("must have at most {MAX_EDITS} edits")));
        }
        for (i, edit) in edits.iter().enumerate() {
            edit.check(&format!("{field}.edits[{i}]"))?;
        }
        let custom_field = format!("{field}.custom_data");
        custom_data.values_mut().for_each(custom_data::normalize_numbers);
        custom_data::check_storable(&custom_field, &custom_data)?;
        if custom_data::json_len(&custom_data) > MAX_CUSTOM_DATA_BYTES {
            return Err(RenderError::invalid(custom_field, "must be at most 64 KiB as JSON"));
        }
        let data = Self { edits, custom_data };
        if data.to_pb().encoded_len() > MAX_ENCODED_BYTES {
            return Err(RenderError::invalid(field, "too large"));
        }
        Ok(data)
    }

    /// From a request's optional message (unset means none), naming `field` in errors.
    pub fn from_pb(field: &str, data: Option<pb::SceneData>) -> Result<Self> {
        let Some(data) = data else { return Ok(Self::default()) };
        // Refuse the oversized before converting anything.
        if data.encoded_len() > MAX_ENCODED_BYTES {
            return Err(RenderError::invalid(field, "too large"));
        }
        if data.edits.len() > MAX_EDITS {
            return Err(RenderError::invalid(format!("{field}.edits"), format!("must have at most {MAX_EDITS} edits")));
        }
        let edits = data
            .edits
            .into_iter()
            .enumerate()
            .map(|(i, edit)| LayerEdit::from_pb(&format!("{field}.edits[{i}]"), edit))
            .collect::<Result<Vec<_>>>()?;
        let custom = match data.custom_data {
            Some(s) => custom_data::from_pb(&format!("{field}.custom_data"), s)?,
            None => Map::new(),
        };
        Self::new(field, edits, custom)
    }

    /// The protobuf form (custom data unset when empty).
    pub fn to_pb(&self) -> pb::SceneData {
        pb::SceneData {
            edits: self.edits.iter().map(LayerEdit::to_pb).collect(),
            custom_data: (!self.custom_data.is_empty()).then(|| custom_data::to_pb(&self.custom_data)),
        }
    }

    /// The protobuf form for an optional message field: `None` when empty.
    pub fn to_pb_option(&self) -> Option<pb::SceneData> {
        (!self.is_empty()).then(|| self.to_pb())
    }

    /// The canonical form for cache keys and request digests: the prost encoding (fields in
    /// number order, edits in order, custom data keys sorted).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }

    /// The JSON object stored in the `scene_data` jsonb columns (`{}` when empty).
    pub fn to_json(&self) -> Value {
        #[allow(clippy::expect_used, reason = "every map key is a string, so serializing cannot fail")]
        serde_json::to_value(self).expect("scene data serializes")
    }

    /// Scene data stored by [`SceneData::to_json`]; malformed or unstorable values are refused
    /// (their edits are checked as requests are, without the request caps).
    pub fn from_json(value: &Value) -> Result<Self, serde_json::Error> {
        if !value.is_object() {
            // serde would read a struct from an array too.
            return Err(serde::de::Error::custom("scene data must be a JSON object"));
        }
        Self::deserialize(value)
    }

    /// The edits, in order.
    pub fn edits(&self) -> &[LayerEdit] {
        &self.edits
    }

    /// The custom data (empty when none).
    pub fn custom_data(&self) -> &Map<String, Value> {
        &self.custom_data
    }

    /// No edits and no custom data.
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.custom_data.is_empty()
    }

    /// The media files the edits use, with their edit's index, in order (duplicates included).
    pub fn media_files(&self) -> impl Iterator<Item = (usize, Uuid)> + '_ {
        self.edits.iter().enumerate().filter_map(|(i, edit)| match &edit.edit {
            Edit::Media(media) => Some((i, media.file_id)),
            _ => None,
        })
    }

    /// The distinct media files the edits use, in order of first use (existence checks at
    /// submit, the `assets` of a render task).
    pub fn media_file_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = Vec::new();
        for (_, id) in self.media_files() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// What a segment's chunks render with: the job-wide edits, then the segment's; custom data
    /// keys of the segment override the job's. Not checked against the request caps (each part
    /// was).
    pub fn merge(job_wide: &SceneData, segment: &SceneData) -> SceneData {
        let mut merged = job_wide.clone();
        merged.edits.extend(segment.edits.iter().cloned());
        for (key, value) in &segment.custom_data {
            merged.custom_data.insert(key.clone(), value.clone());
        }
        merged
    }
}

impl TryFrom<pb::SceneData> for SceneData {
    type Error = RenderError;

    /// A request's job-wide `scene_data`.
    fn try_from(data: pb::SceneData) -> Result<Self> {
        Self::from_pb("scene_data", Some(data))
    }
}

#[cfg(test)]
mod tests;
