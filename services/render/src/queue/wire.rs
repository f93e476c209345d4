//! Conversions between database values and protobuf wire types.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

/// A database time as a protobuf timestamp.
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    // Nanoseconds of a second always fit in i32.
    prost_types::Timestamp { seconds: at.unix_timestamp(), nanos: at.nanosecond() as i32 }
}

/// Now, as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    timestamp(OffsetDateTime::now_utc())
}

/// A duration as a protobuf duration.
pub fn duration(span: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(span.as_secs()).unwrap_or(i64::MAX),
        nanos: span.subsec_nanos() as i32,
    }
}

/// An optional id as the empty-or-UUID text the protos use.
pub fn id_text(id: Option<Uuid>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

/// A 32-byte digest from lower-case hex; `None` for anything else.
pub fn digest_from_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// A UUID in a protobuf string field, or `None` when it is not one.
pub fn parse_id(text: &str) -> Option<Uuid> {
    Uuid::try_parse(text).ok()
}

/// The labels column (`{"key": "value"}`) as a map; non-string values are skipped.
pub fn labels(value: &serde_json::Value) -> std::collections::HashMap<String, String> {
    value
        .as_object()
        .map(|map| map.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_000_000).unwrap();
        assert_eq!(timestamp(at), prost_types::Timestamp { seconds: 1_700_000_000, nanos: 123_000_000 });
        assert_eq!(duration(Duration::from_millis(1500)), prost_types::Duration { seconds: 1, nanos: 500_000_000 });
        assert_eq!(digest_from_hex(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(digest_from_hex(&"AB".repeat(32)), None);
        assert_eq!(digest_from_hex("abc"), None);
        assert_eq!(id_text(None), "");
        let labels = labels(&serde_json::json!({"a": "x", "b": 3}));
        assert_eq!(labels.len(), 1);
        assert_eq!(labels["a"], "x");
    }
}
