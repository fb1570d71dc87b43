//! Field-by-field JSON decoding that names the offending field.
//!
//! serde's derived decoder reports type errors by line and column only; an
//! operator reading "invalid type: string, expected u64 at column 57" cannot
//! tell which field of a step request was wrong. These helpers decode a JSON
//! object one named field at a time, so every error says which field.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Why a message was refused: the field (or `(message)` for the whole body)
/// and a human-readable reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {message}: field `{field}`: {reason}")]
pub struct DecodeError {
    /// Which message type was being decoded, e.g. `step request`.
    pub message: &'static str,
    /// The field at fault; `(message)` when the body itself is not an object.
    pub field: String,
    /// What was wrong with it.
    pub reason: String,
}

/// A JSON object being decoded into a message type.
pub(crate) struct Fields<'a> {
    message: &'static str,
    obj: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    /// Parse `bytes` as a JSON object.
    pub(crate) fn parse(
        message: &'static str,
        bytes: &[u8],
    ) -> Result<Map<String, Value>, DecodeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError {
            message,
            field: "(message)".into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        match value {
            Value::Object(obj) => Ok(obj),
            other => Err(DecodeError {
                message,
                field: "(message)".into(),
                reason: format!("expected a JSON object, got {}", kind(&other)),
            }),
        }
    }

    pub(crate) fn new(message: &'static str, obj: &'a Map<String, Value>) -> Self {
        Fields { message, obj }
    }

    /// A field that must be present and non-null.
    pub(crate) fn required<T: DeserializeOwned>(&self, name: &str) -> Result<T, DecodeError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Err(self.error(name, "missing".into())),
            Some(v) => T::deserialize(v).map_err(|e| self.error(name, e.to_string())),
        }
    }

    /// A field that may be absent or null.
    pub(crate) fn optional<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, DecodeError> {
        match self.obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => T::deserialize(v)
                .map(Some)
                .map_err(|e| self.error(name, e.to_string())),
        }
    }

    pub(crate) fn error(&self, field: &str, reason: String) -> DecodeError {
        DecodeError {
            message: self.message,
            field: field.to_string(),
            reason,
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
