//! Request/reply envelope for the CLI's `baton.api.<verb>` calls.
//!
//! The request body is verb-specific JSON; every reply uses [`ApiReply`], so a
//! client can always tell success from a refusal and show the reason.

use serde::{Deserialize, Serialize};

/// The verbs the workflow service answers (DESIGN.md "Transport").
pub const VERBS: &[&str] = &[
    "submit", "plan", "status", "list", "pause", "resume", "abort", "approve", "events",
];

/// A request to the service: the verb-specific `body` with a protocol version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiRequest {
    pub v: u32,
    #[serde(default)]
    pub body: serde_json::Value,
}

/// Every reply of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiReply {
    pub v: u32,
    pub ok: bool,
    /// Why the request was refused or failed (with its chain), when `ok` is false.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub body: serde_json::Value,
}

impl ApiRequest {
    pub fn new(body: serde_json::Value) -> Self {
        ApiRequest {
            v: crate::PROTOCOL_VERSION,
            body,
        }
    }
}

impl ApiReply {
    /// A successful reply.
    pub fn ok(body: serde_json::Value) -> Self {
        ApiReply {
            v: crate::PROTOCOL_VERSION,
            ok: true,
            error: None,
            body,
        }
    }

    /// A refusal or failure with its reason.
    pub fn error(reason: impl Into<String>) -> Self {
        ApiReply {
            v: crate::PROTOCOL_VERSION,
            ok: false,
            error: Some(reason.into()),
            body: serde_json::Value::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip_and_tolerate_unknown_fields() {
        let r = ApiReply::error("no such upgrade");
        let back: ApiReply = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let back: ApiReply =
            serde_json::from_str(r#"{"v":1,"ok":true,"body":{"a":1},"extra":true}"#).unwrap();
        assert!(back.ok && back.error.is_none());
        for verb in VERBS {
            assert!(crate::subjects::validate_token(verb).is_ok());
        }
    }
}
