//! `SceneData.custom_data`: a `google.protobuf.Struct` on the wire, a JSON object in the domain
//! and in the database. Struct numbers are doubles, so every number is kept as an `f64` (a JSON
//! `3` read back from `jsonb` becomes `3.0`, which is what the Struct carried).

use prost_types::value::Kind;
use serde_json::{Map, Number, Value};

use crate::error::{RenderError, Result};

/// Largest custom data, as compact JSON, in bytes.
pub const MAX_CUSTOM_DATA_BYTES: usize = 64 * 1024;

/// The JSON object of a Struct, refusing non-finite numbers and NUL (which `jsonb` cannot
/// store).
pub(super) fn from_pb(field: &str, data: prost_types::Struct) -> Result<Map<String, Value>> {
    let mut object = Map::new();
    for (key, value) in data.fields {
        let path = format!("{field}.{key}");
        if key.contains('\0') {
            return Err(RenderError::invalid(field, "keys must not contain NUL characters"));
        }
        object.insert(key, value_from_pb(&path, value)?);
    }
    Ok(object)
}

fn value_from_pb(field: &str, value: prost_types::Value) -> Result<Value> {
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        Some(Kind::NumberValue(n)) => {
            Value::Number(Number::from_f64(n).ok_or_else(|| RenderError::invalid(field, "must be a finite number"))?)
        }
        Some(Kind::StringValue(s)) => {
            if s.contains('\0') {
                return Err(RenderError::invalid(field, "must not contain NUL characters"));
            }
            Value::String(s)
        }
        Some(Kind::StructValue(s)) => Value::Object(from_pb(field, s)?),
        Some(Kind::ListValue(list)) => Value::Array(
            list.values
                .into_iter()
                .enumerate()
                .map(|(i, v)| value_from_pb(&format!("{field}[{i}]"), v))
                .collect::<Result<_>>()?,
        ),
    })
}

/// The Struct of a JSON object (keys sorted: prost keeps Struct fields in a `BTreeMap`).
pub(super) fn to_pb(object: &Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct { fields: object.iter().map(|(k, v)| (k.clone(), value_to_pb(v))).collect() }
}

fn value_to_pb(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        // Without serde_json's arbitrary_precision every number has an f64 value.
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => {
            Kind::ListValue(prost_types::ListValue { values: items.iter().map(value_to_pb).collect() })
        }
        Value::Object(object) => Kind::StructValue(to_pb(object)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// Turns every number into its `f64` form, as the Struct carries it (JSON read back from the
/// database has integers).
pub(super) fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().and_then(Number::from_f64) {
                *n = f;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        Value::Object(object) => object.values_mut().for_each(normalize_numbers),
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
}

/// Checks what a JSON object read back must satisfy to be stored again: no NUL anywhere.
pub(super) fn check_storable(field: &str, object: &Map<String, Value>) -> Result<()> {
    if object.keys().any(|k| k.contains('\0')) {
        return Err(RenderError::invalid(field, "keys must not contain NUL characters"));
    }
    object.iter().try_for_each(|(k, v)| check_value(&format!("{field}.{k}"), v))
}

fn check_value(field: &str, value: &Value) -> Result<()> {
    match value {
        Value::String(s) if s.contains('\0') => Err(RenderError::invalid(field, "must not contain NUL characters")),
        Value::Array(items) => items.iter().enumerate().try_for_each(|(i, v)| check_value(&format!("{field}[{i}]"), v)),
        Value::Object(object) => check_storable(field, object),
        _ => Ok(()),
    }
}

/// The size of the object as compact JSON.
pub(super) fn json_len(object: &Map<String, Value>) -> usize {
    serde_json::to_vec(object).map_or(usize::MAX, |bytes| bytes.len())
}
