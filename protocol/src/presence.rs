//! The presence record an executor keeps alive in the `baton_executors` bucket.
//!
//! The key is the executor id; the bucket's max age is the TTL, so a record
//! that stops being refreshed (the executor crashed) expires by itself, and a
//! graceful shutdown deletes it at once.

use serde::{Deserialize, Serialize};

use crate::decode::DecodeError;

/// One executor's presence record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub v: u32,
    /// The executor id (also the KV key).
    pub id: String,
    /// The executor group it consumes.
    pub group: String,
    /// The nodes it serves (empty: whatever its group receives).
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The executor's software version.
    pub version: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id.
    #[serde(default)]
    pub pid: u32,
    /// When it started (unix ms).
    pub started_ms: u64,
    /// When this record was written (unix ms).
    pub heartbeat_ms: u64,
    /// Steps it ran (a child process was started).
    #[serde(default)]
    pub executed: u64,
    /// Well-formed requests it refused, for any reason (stale epoch, deadline
    /// passed, wrong node or group, not allowed, conflict).
    #[serde(default)]
    pub rejected: u64,
    /// Of those, requests its allow list refused: argv not a rendering of its
    /// profile's templates, a package, env key or value not allowed.
    #[serde(default)]
    pub not_allowed: u64,
    /// Of those, requests whose step id was already claimed or recorded for
    /// another command (a replay or a forgery).
    #[serde(default)]
    pub conflicts: u64,
    /// Requests it could not decode (answered `rejected` when their ids were
    /// readable, otherwise terminated).
    #[serde(default)]
    pub malformed: u64,
    /// Requests refused because the service had not signed them for the
    /// subject they arrived on (unsigned, forged, signed by another key, or
    /// signed for another group's subject): terminated with no result and
    /// nothing recorded. Counted apart from `rejected` and `malformed`.
    #[serde(default)]
    pub unsigned: u64,
    /// The step it is running now (`<upgrade>:<step>:<attempt>`).
    #[serde(default)]
    pub running: Option<String>,
    /// The profile it serves (absent from executors built before it was added: unknown). The service refuses a
    /// submission whose profile is not the one its executors serve, before anything runs; each executor still
    /// refuses every step planned with another profile (`StepRequest::profile_sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<ServedProfile>,
}

/// The profile an executor serves, as its presence record states it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServedProfile {
    /// The profile's name (`chef-backend`, `etcd`).
    pub name: String,
    /// The SHA-256 (hex) of its profile file's text; `None` for a built-in profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Decode a presence record and check that its group and nodes are valid
/// names ([`crate::subjects::validate_token`]): a record naming a group such
/// as `x y` is refused here, so it can never be used to build a subject.
pub fn decode(bytes: &[u8]) -> Result<Presence, DecodeError> {
    const MSG: &str = "presence record";
    let err = |field: &str, reason: String| DecodeError {
        message: MSG,
        field: field.to_string(),
        reason,
    };
    let presence: Presence =
        serde_json::from_slice(bytes).map_err(|e| err("(message)", e.to_string()))?;
    crate::subjects::validate_token(&presence.group).map_err(|r| err("group", r.to_string()))?;
    for node in &presence.nodes {
        crate::subjects::validate_token(node)
            .map_err(|r| err("nodes", format!("node {node:?}: {r}")))?;
    }
    Ok(presence)
}

/// The presence record as an executor writes it: sealed in a signed
/// [`crate::sign::Envelope`] for its KV key.
pub fn seal(presence: &Presence, executor: &crate::sign::Identity) -> Vec<u8> {
    crate::sign::Envelope::seal(
        executor,
        crate::sign::Kind::Presence,
        &key(&presence.id),
        presence,
    )
    .expect("a presence record serialises")
}

/// Open a presence record read under `kv_key`: the signature must be good,
/// made by an executor of the trust file, for the group it names; the record
/// must be for this key and decode ([`decode`]). Returns the record and the
/// executor's trusted name.
pub fn open(
    bytes: &[u8],
    kv_key: &str,
    trust: &crate::sign::Trust,
) -> Result<(Presence, String), DecodeError> {
    let err = |field: &str, reason: String| DecodeError {
        message: "presence record",
        field: field.to_string(),
        reason,
    };
    let (verified, body) = crate::sign::Envelope::open(bytes, crate::sign::Kind::Presence, kv_key)
        .map_err(|e| err("(signature)", e.reason))?;
    let Some(executor) = trust.executor(&verified.key) else {
        return Err(err(
            "(signature)",
            format!(
                "signed by key {}, which is not an executor of the trust file",
                verified.key
            ),
        ));
    };
    let presence = decode(&body)?;
    if presence.group != executor.group {
        return Err(err(
            "group",
            format!(
                "executor {} serves group {} (trust file) but its record claims group {}",
                executor.name, executor.group, presence.group
            ),
        ));
    }
    if key(&presence.id) != kv_key {
        return Err(err(
            "id",
            format!("record for {:?} stored under key {kv_key:?}", presence.id),
        ));
    }
    Ok((presence, executor.name.clone()))
}

/// A KV key made from an executor id: characters outside `[-_=.a-zA-Z0-9]`
/// become `_`.
pub fn key(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(group: &str, nodes: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&Presence {
            v: 1,
            id: "ex".into(),
            group: group.into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            version: "0".into(),
            host: "h".into(),
            pid: 1,
            started_ms: 0,
            heartbeat_ms: 0,
            executed: 0,
            rejected: 0,
            not_allowed: 0,
            conflicts: 0,
            malformed: 0,
            unsigned: 0,
            running: None,
            profile: None,
        })
        .unwrap()
    }

    #[test]
    fn records_with_invalid_names_are_refused_naming_the_field() {
        assert_eq!(decode(&record("g1", &["backend-1"])).unwrap().group, "g1");
        assert_eq!(decode(&record("x y", &[])).unwrap_err().field, "group");
        assert_eq!(decode(&record("a.b", &[])).unwrap_err().field, "group");
        assert_eq!(decode(&record("g1", &["n>"])).unwrap_err().field, "nodes");
        assert_eq!(decode(b"{}").unwrap_err().field, "(message)");
    }

    #[test]
    fn keys_are_sanitised() {
        assert_eq!(super::key("ex 1/host:9"), "ex_1_host_9");
        assert_eq!(super::key("a-b_c.d"), "a-b_c.d");
    }
}
