//! The request/reply API on `baton.api.<verb>` that the CLI (and anybody
//! else) uses to talk to the workflow service.
//!
//! Requests and replies are JSON. Every reply is an [`ApiReply`]: either a
//! body or an error with a kind, so that the CLI can tell a rejection (the
//! service understood and said no: exit code 3) from a failure (exit code 1).

use serde::{Deserialize, Serialize};

pub use crate::core::profile_file::MAX_PROFILE_FILE_BYTES;

/// The subject prefix of the API; the verb follows (`baton.api.submit`).
pub const API_PREFIX: &str = "baton.api";

/// The subject of one verb.
pub fn subject(verb: &str) -> String {
    format!("{API_PREFIX}.{verb}")
}

/// Start an upgrade (or, with `plan_only`, only observe and compute the plan).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The cluster file's name, used in error messages (`cluster.toml:7: ...`).
    pub cluster_file: String,
    /// The cluster file's text (TOML).
    pub cluster_toml: String,
    /// The text of the profile file the cluster file names (`profile = "etcd.toml"`), which the submitter
    /// reads beside the cluster file; at most [`MAX_PROFILE_FILE_BYTES`]. Required for a profile file, refused
    /// for a built-in profile. The log records it with the cluster file, and the plan hash covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_text: Option<String>,
    /// Path of the package on the nodes; overrides the cluster file's.
    #[serde(default)]
    pub package: Option<String>,
    #[serde(default)]
    pub target_version: Option<String>,
    /// Gates to wait at, in addition to the cluster file's.
    #[serde(default)]
    pub approve_before: Vec<String>,
    /// Refuse to start unless the plan computed from the live cluster has this hash.
    #[serde(default)]
    pub plan_hash: Option<String>,
    #[serde(default)]
    pub plan_only: bool,
    /// Ignored: the service records the name the trust file gives the key that signed the request.
    #[serde(default)]
    pub requested_by: String,
}

/// Names one upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeRef {
    pub upgrade: String,
}

/// An operator's command on a running upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub upgrade: String,
    /// Ignored: the service records the name the trust file gives the key that signed the request.
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub reason: Option<String>,
    /// For `approve`: the gate.
    #[serde(default)]
    pub gate: Option<String>,
    /// For `resolve`: the step and the resolution (succeeded|failed|retry).
    #[serde(default)]
    pub step: Option<u64>,
    #[serde(default)]
    pub resolution: Option<String>,
}

/// The largest API request the service reads (bytes): a cluster file and a few fields.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A page of a reply stops growing past this many bytes, well under NATS's
/// default 1 MiB payload limit (a page always holds at least one item).
pub const PAGE_BYTES: usize = 512 * 1024;

/// List upgrades, a page at a time, oldest first: the history. The filters
/// are applied by the service before paging, so a page stays bounded
/// whatever they keep.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListRequest {
    /// Start after this upgrade id (the previous page's `next_after`).
    #[serde(default)]
    pub after: Option<String>,
    /// At most this many (1..=500; default 100).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Also list `plan` runs (hidden by default).
    #[serde(default)]
    pub include_plans: bool,
    /// Only upgrades of this cluster (its name in the cluster file).
    #[serde(default)]
    pub cluster: Option<String>,
    /// Only upgrades in one of these statuses ([`STATUSES`]); empty: any.
    #[serde(default)]
    pub status: Vec<String>,
    /// Only upgrades still going at or after this time (unix ms): started
    /// then or later, or not ended before it.
    #[serde(default)]
    pub since_ms: Option<u64>,
}

/// Every status an upgrade can be in, as views and `list --status` name them.
pub const STATUSES: [&str; 10] = [
    "planning",
    "running",
    "paused",
    "waiting_approval",
    "needs_verification",
    "winding_down",
    "planned",
    "completed",
    "halted",
    "aborted",
];

/// A page of upgrades; `next_after` is set when more may follow (a page
/// filtered down to nothing may still have one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListPage {
    pub upgrades: Vec<UpgradeSummary>,
    pub next_after: Option<String>,
}

/// An upgrade as the history (`list`) shows it: a bounded row, never the
/// plan or the per-node detail (`status` has those).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeSummary {
    pub upgrade: String,
    /// `upgrade`, or `plan` for a `baton plan` run.
    pub kind: String,
    pub cluster: String,
    /// One of [`STATUSES`].
    pub status: String,
    /// Why it halted, was aborted, waits or needs verification; at most
    /// [`SUMMARY_REASON_CHARS`] characters (`status` has it whole).
    pub reason: Option<String>,
    /// Who submitted it: the name the trust file gives the key that signed the request.
    pub requested_by: String,
    pub target_version: Option<String>,
    /// When it was submitted (unix ms).
    pub started_ms: Option<u64>,
    /// When it ended (unix ms); none while it goes on.
    pub ended_ms: Option<u64>,
    /// How many events the log holds for it.
    pub events: u64,
}

/// The longest reason a history row carries.
pub const SUMMARY_REASON_CHARS: usize = 200;

/// List the executors online (`executors`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutorsRequest {
    /// Reply with one [`ExecutorView`] per executor; without it the reply is
    /// the sorted group names (what older clients read).
    #[serde(default)]
    pub detail: bool,
}

/// One live executor, from its signed presence record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutorView {
    /// The trust file's name for the key that signed the record.
    pub name: String,
    /// Its id (also its presence key).
    pub id: String,
    pub group: String,
    /// The nodes it serves (empty: whatever its group receives).
    pub nodes: Vec<String>,
    /// Its software version.
    pub version: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: u64,
    /// When it last refreshed its record (unix ms, its clock).
    pub heartbeat_ms: u64,
    /// How long ago that was by the service's clock (ms; 0 if in the future).
    pub heartbeat_age_ms: u64,
    /// The step it runs now (`<upgrade>:<step>:<attempt>`).
    pub running: Option<String>,
    /// Steps it ran, and requests it refused.
    pub executed: u64,
    pub rejected: u64,
}

/// Read a page of an upgrade's log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsRequest {
    pub upgrade: String,
    /// First seq to return (1-based).
    #[serde(default = "one")]
    pub from_seq: u64,
    #[serde(default = "page")]
    pub limit: usize,
}

fn one() -> u64 {
    1
}

fn page() -> usize {
    500
}

/// One record of the log as the API shows it: the same fields as a line of
/// `baton audit export` (the store's JSON-lines format), so a client can
/// recompute the hash chain itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub stream: String,
    pub seq: u64,
    /// Hex SHA-256 chain hash of the previous record (zeros for seq 1).
    pub prev: String,
    /// Hex SHA-256 chain hash of this record.
    pub hash: String,
    /// The event's bytes exactly as stored and hashed (JSON).
    pub event: Box<serde_json::value::RawValue>,
}

/// A page of events; `next_seq` is set when more follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    pub upgrade: String,
    pub events: Vec<LoggedEvent>,
    pub next_seq: Option<u64>,
}

/// What kind of error an [`ApiReply`] carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was understood and refused (invalid input, wrong state).
    Rejected,
    /// The upgrade (or other object) does not exist.
    NotFound,
    /// The service failed (log, NATS); the request may be retried.
    Internal,
}

/// An API error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Every reply of the API. The body is kept as raw JSON text so that events
/// travel byte for byte as they were hashed (a `serde_json::Value` would
/// reorder their keys).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiReply {
    Ok(Box<serde_json::value::RawValue>),
    Err(ApiError),
}

impl ApiReply {
    pub fn ok<T: Serialize>(body: &T) -> ApiReply {
        match serde_json::value::to_raw_value(body) {
            Ok(raw) => ApiReply::Ok(raw),
            Err(err) => ApiReply::error(ErrorKind::Internal, format!("encoding the reply: {err}")),
        }
    }

    pub fn error(kind: ErrorKind, message: impl Into<String>) -> ApiReply {
        ApiReply::Err(ApiError {
            kind,
            message: message.into(),
        })
    }
}

/// The state of one upgrade as `status`, `list` and `watch` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub upgrade: String,
    pub cluster: String,
    /// planning, running, paused, waiting_approval, needs_verification,
    /// completed, halted, aborted.
    pub status: String,
    /// Why the upgrade halted, was aborted, waits, or needs verification.
    pub reason: Option<String>,
    pub phase: String,
    pub target_version: Option<String>,
    /// The step in flight, if any.
    pub current: Option<StepView>,
    /// The round of read-only probes in flight, if the upgrade waits on one (a profile with `probe_rounds`):
    /// every probe of it still without a result. Absent otherwise, so a view without a round keeps its form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<RoundView>,
    /// The plan item being executed, if any.
    #[serde(default)]
    pub item: Option<ItemView>,
    /// What the cluster last showed of each node.
    pub nodes: Vec<NodeView>,
    pub failover_blocked: bool,
    pub plan: Option<serde_json::Value>,
    pub plan_hash: Option<String>,
    pub submitted_ms: Option<u64>,
    /// The latest time an event of this upgrade carries.
    pub updated_ms: Option<u64>,
    /// How many events the log holds for this upgrade.
    pub events: u64,
}

/// A step as the views show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub step: u64,
    pub attempt: u32,
    pub node: String,
    pub action: String,
    pub argv: Vec<String>,
    /// When the service scheduled it (unix ms).
    pub scheduled_ms: Option<u64>,
    /// How long the command may run on the node.
    #[serde(default)]
    pub timeout_ms: u64,
    /// When its result is given up on (outcome unknown).
    #[serde(default)]
    pub deadline_ms: u64,
}

/// A round of probes as the views show it: several read-only probes out together, judged in step order as each
/// comes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundView {
    /// How many probes of the round are not judged yet (a round is judged in step order as each probe comes).
    pub probes: usize,
    /// Those still without a result, in step order: what the upgrade waits on.
    pub out: Vec<StepView>,
}

/// A plan item as the views show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemView {
    /// Its number in the plan (1-based, as `baton plan` prints it).
    pub number: usize,
    /// What it does, in words.
    pub what: String,
    /// When it started (unix ms).
    pub started_ms: u64,
    /// How long it may take (a wait for a node to sync), if it is bounded.
    pub timeout_ms: Option<u64>,
}

/// One node as the cluster last showed it, and its progress through the upgrade. A fact is `null` when it is
/// not known now: never shown, or an action scheduled since may have changed it (`last_seen_ms` says when the
/// node was last shown at all). Facts come from observations, never from the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    /// Its role in the latest `cluster-status` (leader, follower, deposed_leader, waiting_for_leader).
    pub role: Option<String>,
    /// Its PostgreSQL: leader, synced, syncing or offline.
    #[serde(default)]
    pub sync: Option<String>,
    /// Its services as its own `status` showed them: `running`, `down`, or `down: NAME, ...`.
    #[serde(default)]
    pub services: Option<String>,
    /// The installed package version (`null` with `package` = `not_installed` when there is none).
    #[serde(default)]
    pub installed_version: Option<String>,
    /// The package tool's state: `installed`, `not_installed`, or another (`half-configured`).
    #[serde(default)]
    pub package: Option<String>,
    /// The version its services run: known once a start (or `upgrade`) of this upgrade succeeded with the
    /// installed version known; `null` otherwise, and while its services are down.
    #[serde(default)]
    pub running_version: Option<String>,
    /// When each fact above was shown (unix ms).
    #[serde(default)]
    pub seen_ms: FactTimes,
    /// When anything last showed this node (unix ms).
    #[serde(default)]
    pub last_seen_ms: Option<u64>,
    /// pending, skipped, upgrading, syncing, upgraded; at the end `interrupted` (its upgrade began and did not
    /// finish) or `not_started`; while winding down `restoring` (being brought back into service).
    pub progress: String,
    /// The last action run on this node (not a probe, not a cluster-wide command that merely ran there).
    #[serde(default)]
    pub last_action: Option<String>,
    /// The last non-empty line of that action's output.
    pub last_output: Option<String>,
}

/// When each fact of a [`NodeView`] was shown (unix ms).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FactTimes {
    pub role: Option<u64>,
    pub sync: Option<u64>,
    pub services: Option<u64>,
    pub installed: Option<u64>,
    pub running: Option<u64>,
}
