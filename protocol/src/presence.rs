//! The presence record an executor keeps alive in the `baton_executors` bucket.
//!
//! The key is the executor id; the bucket's max age is the TTL, so a record
//! that stops being refreshed (the executor crashed) expires by itself, and a
//! graceful shutdown deletes it at once.

use serde::{Deserialize, Serialize};

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
    /// Well-formed requests it refused (stale epoch, deadline passed, wrong node or group).
    #[serde(default)]
    pub rejected: u64,
    /// Requests it could not decode (answered `rejected` when their ids were
    /// readable, otherwise terminated).
    #[serde(default)]
    pub malformed: u64,
    /// The step it is running now (`<upgrade>:<step>:<attempt>`).
    #[serde(default)]
    pub running: Option<String>,
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
    #[test]
    fn keys_are_sanitised() {
        assert_eq!(super::key("ex 1/host:9"), "ex_1_host_9");
        assert_eq!(super::key("a-b_c.d"), "a-b_c.d");
    }
}
