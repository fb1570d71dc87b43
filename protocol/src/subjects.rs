//! Subject, stream, consumer and bucket names (CONTRACTS.md "Wire contract").

use crate::error::ProtocolError;

/// Work-queue stream of step requests.
pub const STEPS_STREAM: &str = "BATON_STEPS";
/// Limits stream of step results.
pub const RESULTS_STREAM: &str = "BATON_RESULTS";
/// Limits stream of appended workflow events (audit anchor, watchers).
pub const EVENTS_STREAM: &str = "BATON_EVENTS";
/// Append-only stream of the service's signed checkpoints (no deletes, no
/// purges): the off-box anchor of the log's hash chains.
pub const CHECKPOINTS_STREAM: &str = "BATON_CHECKPOINTS";
/// KV bucket of executor presence records.
pub const PRESENCE_BUCKET: &str = "baton_executors";
/// KV bucket of step claims: the first executor to claim
/// `<group>.<upgrade>.<step>.<attempt>` is the only one that may run it (see
/// `setup::Options::claims_max_age` and [`claim_key`]).
pub const CLAIMS_BUCKET: &str = "baton_claims";
/// KV bucket of the service lease: one workflow service per NATS account
/// holds it (`workflow::service::lease`); its `max_age` is the lease TTL.
pub const LEASE_BUCKET: &str = "baton_lease";
/// The one key of [`LEASE_BUCKET`]: the holder record of the acting service.
pub const LEASE_KEY: &str = "service";
/// The workflow service's durable consumer on [`RESULTS_STREAM`].
pub const WORKFLOW_CONSUMER: &str = "baton-workflow";

/// Wildcards captured by each stream.
pub const STEPS_WILDCARD: &str = "baton.step.>";
pub const RESULTS_WILDCARD: &str = "baton.result.>";
pub const EVENTS_WILDCARD: &str = "baton.event.>";
pub const API_WILDCARD: &str = "baton.api.>";
pub const CHECKPOINTS_WILDCARD: &str = "baton.checkpoint.>";

/// `baton.step.<group>`.
pub fn step(group: &str) -> String {
    format!("baton.step.{group}")
}

/// `baton.result.<upgrade>`.
pub fn result(upgrade: &str) -> String {
    format!("baton.result.{upgrade}")
}

/// `baton.event.<upgrade>`.
pub fn event(upgrade: &str) -> String {
    format!("baton.event.{upgrade}")
}

/// `baton.checkpoint.<upgrade>`.
pub fn checkpoint(upgrade: &str) -> String {
    format!("baton.checkpoint.{upgrade}")
}

/// `baton.api.<verb>`.
pub fn api(verb: &str) -> String {
    format!("baton.api.{verb}")
}

/// The claim key of a step attempt of `group`:
/// `<group>.<upgrade>.<step>.<attempt>` (KV keys cannot contain `:`).
///
/// The group comes first so that nats-server can confine each executor to
/// its own group's claims (`$KV.baton_claims.<group>.>`, see
/// `natsconf`): an executor cannot pre-claim, read or delete another
/// group's step attempts.
///
/// Upgrading Baton: claims written by a version before the group prefix
/// (`<upgrade>.<step>.<attempt>`) are not found under the new key. An
/// executor restarted onto the new version in the middle of an upgrade could
/// therefore run a step attempt a sibling already claimed (and perhaps ran)
/// under the old key. Finish or abort every upgrade in flight before
/// upgrading Baton's executors; claims expire on their own afterwards.
pub fn claim_key(group: &str, upgrade: &str, step: u64, attempt: u32) -> String {
    format!("{group}.{upgrade}.{step}.{attempt}")
}

/// The prefix of the reply subjects (inboxes) of the process whose key is
/// `public_key`: `_INBOX_<public key>`. nats-server lets each user subscribe
/// only under its own prefix (`natsconf`), so nobody reads another
/// identity's replies or pulled messages. A public key (56 upper-case
/// base32 characters) is a valid subject token.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX_{public_key}")
}

/// The durable consumer name of an executor group: `exec-<group>`.
pub fn group_consumer(group: &str) -> String {
    format!("exec-{group}")
}

/// Check that `value` can be a single subject token and a consumer-name part:
/// non-empty, at most 128 bytes, and only ASCII letters, digits, `-` and `_`
/// (`[A-Za-z0-9_-]+`). So no whitespace, no `.`, `*` or `>`, no control or
/// non-ASCII characters. Executor groups, node names and upgrade ids are all
/// checked with it where they enter (cluster file, API, executor flags, step
/// requests, presence records); the pure core has the same rule in
/// `workflow::core::cluster::check_name`, and a test keeps the two equal.
///
/// Narrower than NATS requires, on purpose: the same names end up in
/// consumer names and KV keys, whose character sets are smaller.
pub fn validate_token(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.len() > 128 {
        return Err("longer than 128 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only ASCII letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

/// [`validate_token`] as a [`ProtocolError`] naming what was checked.
pub fn check_name(what: &'static str, value: &str) -> Result<(), ProtocolError> {
    validate_token(value).map_err(|reason| ProtocolError::InvalidName {
        what,
        value: value.to_string(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(step("g1"), "baton.step.g1");
        assert_eq!(result("U"), "baton.result.U");
        assert_eq!(event("U"), "baton.event.U");
        assert_eq!(api("submit"), "baton.api.submit");
        assert_eq!(group_consumer("g1"), "exec-g1");
        assert_eq!(claim_key("g1", "U", 3, 2), "g1.U.3.2");
        assert_eq!(inbox_prefix("UABC"), "_INBOX_UABC");
    }

    #[test]
    fn tokens_refuse_wildcards_and_separators() {
        for bad in ["", "a.b", "*", ">", "a b", "ü"] {
            assert!(validate_token(bad).is_err(), "{bad:?}");
            assert!(check_name("group", bad).is_err());
        }
        assert!(validate_token("backend-1_a").is_ok());
    }
}
