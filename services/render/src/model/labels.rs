//! Client labels (`SubmitRenderRequest.labels`, `render_jobs.labels`): at most 16; keys 1..=63
//! characters of `[a-z0-9_.-]`, values at most 256 characters.

use std::collections::{BTreeMap, HashMap};

use crate::error::{RenderError, Result};
use crate::model::validate;

/// Most labels on a job.
pub const MAX_LABELS: usize = 16;
/// Longest key.
pub const MAX_KEY_CHARS: usize = 63;
/// Longest value, in characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// Validated labels, sorted by key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// From a request's map, naming `field` in errors.
    pub fn from_pb(field: &str, labels: &HashMap<String, String>) -> Result<Self> {
        if labels.len() > MAX_LABELS {
            return Err(RenderError::invalid(field, format!("must have at most {MAX_LABELS} entries")));
        }
        let mut sorted = BTreeMap::new();
        for (key, value) in labels {
            let key_ok = (1..=MAX_KEY_CHARS).contains(&key.len())
                && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
            if !key_ok {
                return Err(RenderError::invalid(
                    field,
                    format!("key {key:?} must be 1..=63 characters of [a-z0-9_.-]"),
                ));
            }
            let value = validate::text(&format!("{field}.{key}"), value, MAX_VALUE_CHARS)?;
            sorted.insert(key.clone(), value);
        }
        Ok(Self(sorted))
    }

    /// The protobuf map.
    pub fn to_pb(&self) -> HashMap<String, String> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The stored JSON object of strings.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect(),
        )
    }

    /// Stored labels back; anything but a string value (never written) is skipped.
    pub fn from_json(value: &serde_json::Value) -> Self {
        let entries = value.as_object().into_iter().flatten();
        Self(entries.filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
    }

    /// The labels in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> HashMap<String, String> {
        entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn labels_follow_the_rules_and_round_trip() {
        let labels = Labels::from_pb("labels", &map(&[("campaign.id", "spring-26"), ("a_b-1", "")])).unwrap();
        assert_eq!(labels.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a_b-1", "campaign.id"]);
        assert_eq!(Labels::from_json(&labels.to_json()), labels);
        assert_eq!(labels.to_json(), serde_json::json!({"campaign.id": "spring-26", "a_b-1": ""}));
        assert_eq!(Labels::from_pb("labels", &labels.to_pb()).unwrap(), labels);
        assert_eq!(labels.len(), 2);
        assert!(Labels::default().is_empty());
        assert!(Labels::from_pb("labels", &map(&[(&"k".repeat(63), &"é".repeat(256))])).is_ok());
    }

    #[test]
    fn bad_labels_are_refused() {
        let err = |entries: &[(&str, &str)]| Labels::from_pb("labels", &map(entries)).unwrap_err().to_string();
        let rule = "must be 1..=63 characters of [a-z0-9_.-]";
        assert_eq!(err(&[("Env", "x")]), format!("labels: key \"Env\" {rule}"));
        assert_eq!(err(&[("", "x")]), format!("labels: key \"\" {rule}"));
        assert_eq!(err(&[(&"k".repeat(64), "x")]), format!("labels: key \"{}\" {rule}", "k".repeat(64)));
        assert_eq!(err(&[("a b", "x")]), format!("labels: key \"a b\" {rule}"));
        assert_eq!(err(&[("env", &"v".repeat(257))]), "labels.env: must be at most 256 characters");
        assert_eq!(err(&[("env", "a\0")]), "labels.env: must not contain NUL characters");
        let many: Vec<(String, String)> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        let many: HashMap<_, _> = many.into_iter().collect();
        assert_eq!(Labels::from_pb("labels", &many).unwrap_err().to_string(), "labels: must have at most 16 entries");
    }
}
