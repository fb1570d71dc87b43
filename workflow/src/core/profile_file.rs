//! Profile files: a leader-based HA system described as data (TOML), so that a new system needs no Rust.
//!
//! A profile names the system's actions (argv templates), its probes (argv templates plus a parser) and its
//! procedure (which actions, in which order, how leadership moves, whether automatic failover can be fenced).
//! Probes are read into Baton's abstract observations, the only things the safety rules need:
//! - [`Topology`]: who leads; each member's role, whether it is in service and caught up;
//! - [`NodeReading`]: one node's own view: its service is up, it is caught up;
//! - a version: installed on the node, running on it, or inside the package.
//!
//! The format is documented in `docs/profiles.md`; `profiles/` ships examples that the test suite runs against
//! real clusters. Loading validates everything a run would need (every error names the file, the line and the
//! key), so a bad profile is refused at `baton profile check`, never half way through an upgrade.
//!
//! Pure like the rest of the core: the text comes in, typed values or errors go out. The parsers are linear
//! in their input: JSON with serde_json, text with the `regex` crate (finite automata, no backtracking).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use toml::Spanned;

use super::cluster::{check_name, NodeSpec, MAX_DURATION_MS};
use super::error::CoreError;
use super::observe::{Member, MemberRole, Topology};
use super::profile::RunsOn;

/// The format version this build reads (`format = 1`).
pub const PROFILE_FORMAT: u64 = 1;

/// The largest profile file accepted, in bytes.
pub const MAX_PROFILE_FILE_BYTES: usize = 64 * 1024;

/// The longest a probe's output may be for the parsers, in bytes (the executor's `--max-output` bound).
pub const MAX_PROBE_OUTPUT: usize = 65_536;

/// A loaded and validated profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileFile {
    /// The profile's name, e.g. `etcd`.
    pub name: String,
    /// One line for the operator.
    pub description: String,
    /// Which actions run in which order.
    pub procedure: ProcedureSpec,
    /// Actions by name.
    pub actions: BTreeMap<String, ActionDef>,
    /// The probes.
    pub probes: ProbeSet,
    /// The system's own commands that reasons ask an operator to run (`[hints]`, optional; keys in
    /// [`HINT_KEYS`]).
    #[serde(default)]
    pub hints: BTreeMap<String, String>,
}

/// The keys of `[hints]`: what an operator runs by hand where a reason asks (the core's `profile::Hints`).
pub const HINT_KEYS: [&str; 5] = [
    "node_failover_on",
    "cluster_failover_on",
    "fix_package",
    "major_change",
    "quorum",
];

/// The procedure: the order of actions per node and how leadership moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcedureSpec {
    /// Actions run on each follower, in order.
    pub follower: Vec<String>,
    /// Actions run on the old leader after the switchover.
    pub leader: Vec<String>,
    /// The action that moves leadership to an upgraded follower (it runs on the leader).
    pub switchover: String,
    /// Whether the system has an automatic-failover fence (`block_failover`/`unblock_failover`).
    pub failover_fence: bool,
    /// Whether the switchover runs with the fence up (Patroni: a switchover to a named candidate is allowed while
    /// paused). `false` (the default) lifts the fence for the switchover and sets it again on the new leader,
    /// as chef-backend's runbook must (leaderl demotes only with failover on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switchover_keeps_fence: bool,
    /// How long the cluster may show no leader before that is an emergency.
    pub election_ms: u64,
    /// Whether read-only probes that do not depend on each other are asked side by side, as a round (one
    /// decision schedules them; the core judges their observations in order, each as it comes). `false`
    /// (the default): one step at a time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub probe_rounds: bool,
    /// Which version changes may roll.
    pub version_change: VersionChange,
    /// Where the cluster's quorum lives, and so how few members can roll.
    #[serde(default)]
    pub quorum: Quorum,
}

/// Where a cluster's quorum lives: what decides the fewest members a rolling upgrade can keep serving with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quorum {
    /// The members are the consensus (etcd, chef-backend's etcd): a majority must stay up while one member is
    /// out, so `n - 1 > n / 2`, at least 3 members.
    #[default]
    Majority,
    /// The consensus lives outside the members (Patroni's DCS): one member may serve while the other is out, so
    /// 2 members can roll. The guard still requires every other member up and caught up before one goes out.
    External,
}

impl Quorum {
    /// The fewest members a rolling upgrade needs under this rule.
    pub fn min_members(self) -> usize {
        match self {
            Quorum::Majority => 3,
            Quorum::External => 2,
        }
    }
}

/// Which version changes a rolling upgrade may make (versions compare as dotted numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionChange {
    /// Only the third number and what follows may change (`15.18` -> `15.20` is a patch in two-number schemes:
    /// everything after the first two numbers).
    Patch,
    /// The first number must stay.
    Minor,
    /// The first number must stay and the second may rise by at most one (etcd: 3.4 -> 3.5 rolls, 3.4 -> 3.6
    /// does not; patch changes within a minor roll).
    NextMinor,
    /// Anything but a downgrade.
    Any,
}

/// What re-observation checks when an action's outcome is unknown (the core's S4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shows {
    /// The node's `node` probe shows it down.
    Stopped,
    /// The node's `node` probe shows it up.
    Running,
    /// The `version` probe shows the target version installed.
    Installed,
    /// The `topology` probe shows another member leading.
    LeaderMoved,
    /// The `failover` probe shows automatic failover blocked.
    FailoverBlocked,
    /// The `failover` probe shows automatic failover allowed.
    FailoverUnblocked,
    /// Nothing shows it: an unknown outcome is retried only if the action is idempotent, else the upgrade halts.
    Nothing,
}

/// One action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionDef {
    /// argv template.
    pub argv: Vec<String>,
    /// Where it runs.
    pub runs_on: RunsOn,
    /// Whether running it twice is harmless.
    pub idempotent: bool,
    /// How long it may run.
    pub timeout_ms: u64,
    /// What shows that it took effect.
    pub shows: Shows,
}

/// The probes of a profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeSet {
    /// Who leads, each member's role and health.
    pub topology: ProbeDef,
    /// One node's own view.
    pub node: ProbeDef,
    /// The version installed on a node.
    pub version: ProbeDef,
    /// The version a node runs now, if the system shows it.
    pub running_version: Option<ProbeDef>,
    /// The version inside the package, if the system has package files.
    pub package: Option<ProbeDef>,
    /// Whether automatic failover is blocked now (required with a failover fence).
    pub failover: Option<ProbeDef>,
}

/// Which probe (each has its own parser keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProbeKind {
    /// `[probes.topology]`.
    Topology,
    /// `[probes.node]`.
    Node,
    /// `[probes.version]`, `[probes.running_version]`, `[probes.package]`.
    Version,
    /// `[probes.failover]`: whether automatic failover is blocked now.
    Failover,
}

/// One probe: a read-only command and its parser.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeDef {
    /// argv template.
    pub argv: Vec<String>,
    /// Where it runs.
    pub runs_on: RunsOn,
    /// How long it may run.
    pub timeout_ms: u64,
    /// The exit codes whose output is read (`[0]` unless given): `etcdctl endpoint status` exits 1 with one
    /// member down and still prints the others.
    pub read_exit_codes: Vec<i32>,
    /// How to read its output.
    pub parse: Parser,
}

/// How a probe's output is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum Parser {
    /// JSON: fields are JSON Pointers (RFC 6901).
    Json(Fields),
    /// Text: a regular expression; fields are its named groups. For a topology, every match is one member.
    Regex {
        /// The pattern (the `regex` crate's syntax).
        pattern: String,
        /// The fields, named by group.
        #[serde(flatten)]
        fields: Fields,
    },
    /// A named built-in reader (`builtin::NAMES`: chef-backend's `cluster-status`, `status`,
    /// `cluster-status --json`, `dpkg-query`/`rpm` and `dpkg-deb` readers, reached through the `builtin` seam),
    /// for outputs that no field path describes.
    Builtin {
        /// The reader's name.
        reader: String,
    },
}

/// The built-in readers a profile file may name.
pub const BUILTIN_READERS: [&str; 1] = super::builtin::NAMES;

/// The fields a parser reads, by probe kind. A field is a JSON Pointer (JSON) or a group name (regex).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Fields {
    /// Topology: the pointer to the array of members (JSON only; `""` is the document).
    pub members: Option<String>,
    /// Topology: the member's identity.
    pub name: Option<String>,
    /// Topology: how the identity names a node.
    pub match_by: MatchBy,
    /// Topology: when a member leads.
    pub leader_when: Option<Condition>,
    /// Topology: when a member follows (default: when it does not lead).
    pub follower_when: Option<Condition>,
    /// Topology: when the member is in service (default: always).
    pub in_service_when: Option<Condition>,
    /// Node: when the node's service is up.
    pub up_when: Option<Condition>,
    /// Topology and node: when it is caught up with the leader (default: unknown).
    pub caught_up_when: Option<Condition>,
    /// Topology and node: a replication lag; caught up when at most `max_lag`.
    pub lag: Option<String>,
    /// The largest lag that counts as caught up.
    pub max_lag: Option<f64>,
    /// Topology: a member's position and the leader's, `[member field, leader field]`: the member is caught up
    /// when the leader's value minus its own is at most `max_lag` (etcd: `raftAppliedIndex` against the
    /// leader's `raftIndex`). The leader is the member `leader_when` picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind_leader: Option<[String; 2]>,
    /// Version probes: the version.
    pub version: Option<String>,
    /// The failover probe: when automatic failover is blocked.
    pub blocked_when: Option<Condition>,
    /// Topology: the member's own ID in its answer, which must be its node's var: a member answering at a node's
    /// address with another ID (another cluster's member, a reused host or port) is not that node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<MemberId>,
}

/// `member_id = { field = "...", var = "NAME", base = 16 }`: the field holds the member's ID; the node's
/// `{var.NAME}` is the same ID written in `base` (10 unless given; etcd's member list writes hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberId {
    /// The field (a JSON Pointer, or a group name).
    pub field: String,
    /// The node var that holds the ID.
    pub var: String,
    /// The base the var writes the ID in (2 to 36).
    pub base: u32,
}

/// How a topology member's identity names a node of the cluster file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchBy {
    /// The identity is the node's name.
    #[default]
    Name,
    /// The identity is the node's address, or a URL whose `host:port` is the node's address.
    Address,
}

/// A condition on one record (a topology member, or a node probe's output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// The field's value is one of these.
    In {
        /// The field.
        field: String,
        /// The accepted values (strings, numbers, booleans).
        values: Vec<Value>,
    },
    /// Two fields are present and equal.
    Equal {
        /// The fields.
        fields: [String; 2],
    },
    /// At least one of these holds.
    Any {
        /// The conditions.
        any: Vec<Condition>,
    },
    /// Every one of these holds.
    All {
        /// The conditions.
        all: Vec<Condition>,
    },
}

/// What a node probe read: the node's own view (the core's [`super::observe::NodeHealth`] is made from it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReading {
    /// Its service is up.
    pub up: bool,
    /// It is caught up with the leader (`None`: the probe does not say).
    pub caught_up: Option<bool>,
    /// It says it leads (`None`: the probe does not say; a node probe's `leader_when`).
    pub leads: Option<bool>,
}

// ---------------------------------------------------------------------------------------------------------
// Loading.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    format: Spanned<u64>,
    name: Spanned<String>,
    #[serde(default)]
    description: Option<Spanned<String>>,
    procedure: Spanned<RawProcedure>,
    #[serde(default)]
    actions: BTreeMap<Spanned<String>, Spanned<RawAction>>,
    probes: Spanned<RawProbes>,
    #[serde(default)]
    hints: Option<Spanned<BTreeMap<Spanned<String>, Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProcedure {
    follower: Vec<Spanned<String>>,
    leader: Vec<Spanned<String>>,
    switchover: Spanned<String>,
    failover_fence: Spanned<bool>,
    switchover_keeps_fence: Option<Spanned<bool>>,
    election_ms: Spanned<u64>,
    version_change: Spanned<String>,
    quorum: Option<Spanned<String>>,
    probe_rounds: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    argv: Spanned<Vec<Spanned<String>>>,
    runs_on: Spanned<String>,
    idempotent: Spanned<bool>,
    timeout_ms: Spanned<u64>,
    shows: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbes {
    topology: Spanned<RawProbe>,
    node: Spanned<RawProbe>,
    version: Spanned<RawProbe>,
    running_version: Option<Spanned<RawProbe>>,
    package: Option<Spanned<RawProbe>>,
    failover: Option<Spanned<RawProbe>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    #[serde(default)]
    argv: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    http: Option<Spanned<RawHttp>>,
    runs_on: Spanned<String>,
    timeout_ms: Spanned<u64>,
    #[serde(default)]
    read_exit_codes: Option<Spanned<Vec<i32>>>,
    parse: Spanned<RawParse>,
}

/// `[probes.NAME.http]`: a probe the executor answers itself, with HTTP requests (no process).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    #[serde(default)]
    method: Option<Spanned<String>>,
    endpoints: Spanned<String>,
    path: Spanned<String>,
    #[serde(default)]
    body: Option<Spanned<String>>,
    #[serde(default)]
    endpoint_timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    ca_file: Option<Spanned<String>>,
    #[serde(default)]
    cert_file: Option<Spanned<String>>,
    #[serde(default)]
    key_file: Option<Spanned<String>>,
}

/// The program name of a built-in HTTP probe's argv (`[probes.NAME.http]`): the executor answers such a step
/// itself, with HTTP requests, instead of starting a process. Reserved: an `argv` may not name it.
///
/// The argv, as rendered, signed, checked against the executor's own profile and shown to operators:
/// `[PROGRAM, METHOD, ENDPOINTS, PATH, BODY, ENDPOINT_TIMEOUT_MS, CA_FILE, CERT_FILE, KEY_FILE]`, where PROGRAM
/// is [`HTTP_PROGRAM`], or [`HTTPS_PROGRAM`] for a probe with a `ca_file` (TLS is said by the program's name, never
/// by a file name that a var could render empty), ENDPOINTS is a comma-separated list of `HOST:PORT` (optionally
/// after `http://`, or `https://` over TLS), BODY is empty for none, and the three files (PEM) are empty for plain
/// HTTP: over TLS every endpoint's certificate is verified against CA_FILE; with CERT_FILE and KEY_FILE too, the
/// executor shows that client certificate.
pub const HTTP_PROGRAM: &str = "baton:http";

/// The program name of a built-in HTTP probe asked over TLS (one with `ca_file`). Reserved like [`HTTP_PROGRAM`].
pub const HTTPS_PROGRAM: &str = "baton:https";

/// Whether `program` names the built-in HTTP probe ([`HTTP_PROGRAM`], [`HTTPS_PROGRAM`]).
pub fn is_http_program(program: &str) -> bool {
    program == HTTP_PROGRAM || program == HTTPS_PROGRAM
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParse {
    format: Spanned<String>,
    pattern: Option<Spanned<String>>,
    members: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    #[serde(rename = "match")]
    match_by: Option<Spanned<String>>,
    leader_when: Option<Spanned<RawCondition>>,
    follower_when: Option<Spanned<RawCondition>>,
    in_service_when: Option<Spanned<RawCondition>>,
    caught_up_when: Option<Spanned<RawCondition>>,
    up_when: Option<Spanned<RawCondition>>,
    lag: Option<Spanned<String>>,
    behind_leader: Option<Spanned<Vec<String>>>,
    max_lag: Option<Spanned<f64>>,
    version: Option<Spanned<String>>,
    blocked_when: Option<Spanned<RawCondition>>,
    reader: Option<Spanned<String>>,
    member_id: Option<Spanned<RawMemberId>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemberId {
    #[serde(alias = "pointer", alias = "group")]
    field: String,
    var: String,
    #[serde(default)]
    base: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCondition {
    /// A JSON Pointer (JSON) or a group name (regex); `pointer` and `group` say the same.
    #[serde(default, alias = "pointer", alias = "group")]
    field: Option<String>,
    #[serde(default, rename = "in")]
    values: Option<Vec<toml::Value>>,
    #[serde(default)]
    equal: Option<Vec<String>>,
    #[serde(default)]
    any: Option<Vec<RawCondition>>,
    #[serde(default)]
    all: Option<Vec<RawCondition>>,
}

/// How deep `any`/`all` may nest (a profile needs two levels: "leader and running, or replica and streaming").
const MAX_CONDITION_DEPTH: usize = 4;

/// Errors located by file, line and key: the cluster file's locator (one way to say where a TOML error is).
type Loc<'a> = super::cluster::Locator<'a>;

/// The placeholders a template may use; `{var.NAME}` and `{target.var.NAME}` take any NAME.
const PLACEHOLDERS: [&str; 6] = [
    "node",
    "address",
    "package",
    "version",
    "target",
    "target.address",
];

/// Checks a template element's braces and placeholder names (the values come at render time).
fn check_template(element: &str, probe: bool) -> Result<(), String> {
    let mut rest = element;
    while let Some(pos) = rest.find(['{', '}']) {
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            rest = after;
        } else if tail.starts_with('}') {
            return Err("unmatched `}` (write `}}` for a literal brace)".into());
        } else {
            let Some(end) = tail.find('}') else {
                return Err("unterminated placeholder (write `{{` for a literal brace)".into());
            };
            let name = &tail[1..end];
            let var = name
                .strip_prefix("var.")
                .or_else(|| name.strip_prefix("target.var."));
            let known = PLACEHOLDERS.contains(&name) || var.is_some_and(|v| check_name(v).is_ok());
            if !known {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {{node}} {{address}} {{package}} {{version}} \
                     {{var.NAME}} {{target}} {{target.address}} {{target.var.NAME}})"
                ));
            }
            if probe && name.starts_with("target") {
                return Err(format!("a probe has no target: {{{name}}}"));
            }
            rest = &tail[end + 1..];
        }
    }
    Ok(())
}

fn runs_on(loc: &Loc<'_>, value: &Spanned<String>, key: &str) -> Result<RunsOn, CoreError> {
    match value.get_ref().as_str() {
        "the_node" => Ok(RunsOn::TheNode),
        "leader" => Ok(RunsOn::Leader),
        "any_node" => Ok(RunsOn::AnyNode),
        other => Err(loc.err(
            Some(value.span()),
            key,
            format!("unknown `{other}` (expected the_node, leader or any_node)"),
        )),
    }
}

fn timeout(loc: &Loc<'_>, value: &Spanned<u64>, key: &str) -> Result<u64, CoreError> {
    let v = *value.get_ref();
    if v == 0 || v > MAX_DURATION_MS {
        return Err(loc.err(
            Some(value.span()),
            key,
            format!("must be 1 to {MAX_DURATION_MS} (7 days, in ms)"),
        ));
    }
    Ok(v)
}

fn argv(
    loc: &Loc<'_>,
    value: &Spanned<Vec<Spanned<String>>>,
    key: &str,
    probe: bool,
) -> Result<Vec<String>, CoreError> {
    if value.get_ref().is_empty() || value.get_ref()[0].get_ref().trim().is_empty() {
        return Err(loc.err(
            Some(value.span()),
            key,
            "must name a program as its first element",
        ));
    }
    if is_http_program(value.get_ref()[0].get_ref()) {
        return Err(loc.err(
            Some(value.get_ref()[0].span()),
            key,
            format!(
                "`{}` is reserved for HTTP probes: write them as `http = {{ ... }}`",
                value.get_ref()[0].get_ref()
            ),
        ));
    }
    value
        .get_ref()
        .iter()
        .map(|e| {
            check_template(e.get_ref(), probe)
                .map(|()| e.get_ref().clone())
                .map_err(|m| loc.err(Some(e.span()), key, m))
        })
        .collect()
}

/// The argv of an HTTP probe ([`HTTP_PROGRAM`]), its templates checked as an argv's are.
fn http_argv(
    loc: &Loc<'_>,
    raw: &Spanned<RawHttp>,
    key: &str,
    timeout_ms: u64,
) -> Result<Vec<String>, CoreError> {
    let h = raw.get_ref();
    let k = |name: &str| format!("{key}.{name}");
    let method = match &h.method {
        None => "GET".to_string(),
        Some(m) if matches!(m.get_ref().as_str(), "GET" | "POST") => m.get_ref().clone(),
        Some(m) => {
            return Err(loc.err(
                Some(m.span()),
                k("method"),
                format!("unknown `{}` (expected GET or POST)", m.get_ref()),
            ))
        }
    };
    // An HTTP request names the node and the cluster file's values only: `{package}` and `{version}` come with
    // a submission, and pasted into a JSON body or an endpoint list they could add fields or endpoints.
    let template = |v: &Spanned<String>, name: &str| {
        check_template(v.get_ref(), true)
            .and_then(|()| {
                match ["{package}", "{version}"]
                    .iter()
                    .find(|p| v.get_ref().contains(*p))
                {
                    Some(p) => Err(format!(
                        "an HTTP probe may not use {p} (a submission's value): only the node's {{node}}, \
                         {{address}} and {{var.NAME}}"
                    )),
                    None => Ok(v.get_ref().clone()),
                }
            })
            .map_err(|m| loc.err(Some(v.span()), k(name), m))
    };
    let endpoints = template(&h.endpoints, "endpoints")?;
    if endpoints.trim().is_empty() {
        return Err(loc.err(
            Some(h.endpoints.span()),
            k("endpoints"),
            "must name at least one HOST:PORT (a placeholder such as {address} or {var.NAME})",
        ));
    }
    let tls = h.ca_file.is_some();
    for endpoint in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        endpoint_shape(endpoint, tls).map_err(|m| {
            loc.err(
                Some(h.endpoints.span()),
                k("endpoints"),
                format!("`{endpoint}`: {m}"),
            )
        })?;
    }
    let path = template(&h.path, "path")?;
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(loc.err(
            Some(h.path.span()),
            k("path"),
            "must start with `/` and hold no whitespace",
        ));
    }
    let body = match &h.body {
        None => String::new(),
        Some(b) if method == "GET" => {
            return Err(loc.err(
                Some(b.span()),
                k("body"),
                "a GET has no body: use method = \"POST\"",
            ))
        }
        Some(b) => template(b, "body")?,
    };
    let each = match &h.endpoint_timeout_ms {
        None => timeout_ms,
        Some(t) => {
            let v = timeout(loc, t, &k("endpoint_timeout_ms"))?;
            if v > timeout_ms {
                return Err(loc.err(
                    Some(t.span()),
                    k("endpoint_timeout_ms"),
                    format!("must not exceed the probe's timeout_ms ({timeout_ms})"),
                ));
            }
            v
        }
    };
    let file = |v: &Option<Spanned<String>>, name: &str| match v {
        None => Ok(String::new()),
        Some(v) if v.get_ref().trim().is_empty() => Err(loc.err(
            Some(v.span()),
            k(name),
            "must name a file (leave the key out for none)",
        )),
        Some(v) => template(v, name),
    };
    let (ca, cert, key) = (
        file(&h.ca_file, "ca_file")?,
        file(&h.cert_file, "cert_file")?,
        file(&h.key_file, "key_file")?,
    );
    if let (Some(c), None) | (None, Some(c)) = (&h.cert_file, &h.key_file) {
        return Err(loc.err(
            Some(c.span()),
            key_name(key.is_empty(), &k("cert_file"), &k("key_file")),
            "a client certificate needs both cert_file and key_file",
        ));
    }
    if let (None, Some(c)) = (&h.ca_file, &h.cert_file) {
        return Err(loc.err(
            Some(c.span()),
            k("cert_file"),
            "a client certificate goes with TLS: give ca_file, the CA that signed the server's certificate",
        ));
    }
    Ok(vec![
        if tls { HTTPS_PROGRAM } else { HTTP_PROGRAM }.to_string(),
        method,
        endpoints,
        path,
        body,
        each.to_string(),
        ca,
        cert,
        key,
    ])
}

/// Checks what an endpoint template says literally, as the executor's HTTP runner will check its rendering: an
/// optional `http://` (`https://` with TLS), then `HOST:PORT` with nothing after but a `/`, no user. The parts a
/// placeholder gives are checked when it is rendered, at each look.
fn endpoint_shape(endpoint: &str, tls: bool) -> Result<(), String> {
    let bare = match (
        endpoint.strip_prefix("https://"),
        endpoint.strip_prefix("http://"),
    ) {
        (Some(_), _) if !tls => {
            return Err(
                "https:// needs ca_file, the CA to verify the member's certificate with".into(),
            )
        }
        (_, Some(_)) if tls => return Err("http:// with ca_file: this probe asks over TLS".into()),
        (Some(b), _) | (_, Some(b)) => b,
        (None, None) => endpoint,
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    if bare.contains('@') || bare.contains('/') || bare.contains("://") {
        return Err(
            "an endpoint is HOST:PORT, without a user, a scheme but http(s):// or a path".into(),
        );
    }
    // Without a placeholder it must be HOST:PORT as the runner parses it: a port that fits 16 bits, a host name
    // or IPv4 address, or an IPv6 address in brackets. A placeholder may give any part (`{address}`): its
    // rendering is checked at each look.
    if !bare.contains('{') {
        let Some((host, port)) = bare.rsplit_once(':') else {
            return Err("no :PORT".into());
        };
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("port `{port}` is not 1 to 65535"));
        }
        let bracketed = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .is_some_and(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            });
        let named = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
        if !(bracketed || named) {
            return Err(format!(
                "host `{host}` is not a name or an address (an IPv6 address goes in brackets: [::1]:2379)"
            ));
        }
    }
    Ok(())
}

/// The key an error about a lone `cert_file`/`key_file` names: the one that was given.
fn key_name(key_missing: bool, cert: &str, key: &str) -> String {
    if key_missing { cert } else { key }.to_string()
}

fn pointer(
    loc: &Loc<'_>,
    value: &Spanned<String>,
    key: &str,
    json: bool,
) -> Result<String, CoreError> {
    let text = value.get_ref();
    if json && !(text.is_empty() || text.starts_with('/')) {
        return Err(loc.err(
            Some(value.span()),
            key,
            format!(
                "`{text}` is not a JSON Pointer (it starts with `/`; `\"\"` is the whole document)"
            ),
        ));
    }
    if !json && text.is_empty() {
        return Err(loc.err(Some(value.span()), key, "must name a group of the pattern"));
    }
    Ok(text.clone())
}

fn condition(
    loc: &Loc<'_>,
    value: &Spanned<RawCondition>,
    key: &str,
    json: bool,
) -> Result<Condition, CoreError> {
    condition_at(loc, value.get_ref(), value.span(), key, json, 0)
}

fn condition_at(
    loc: &Loc<'_>,
    c: &RawCondition,
    at: Range<usize>,
    key: &str,
    json: bool,
    depth: usize,
) -> Result<Condition, CoreError> {
    let span = Some(at.clone());
    let nested = |list: &[RawCondition], word: &str| -> Result<Vec<Condition>, CoreError> {
        if depth >= MAX_CONDITION_DEPTH {
            return Err(loc.err(
                span.clone(),
                key,
                format!("`any`/`all` nest at most {MAX_CONDITION_DEPTH} deep"),
            ));
        }
        if list.is_empty() {
            return Err(loc.err(
                span.clone(),
                key,
                format!("`{word}` must list at least one condition"),
            ));
        }
        list.iter()
            .map(|c| condition_at(loc, c, at.clone(), key, json, depth + 1))
            .collect()
    };
    match (&c.field, &c.values, &c.equal, &c.any, &c.all) {
        (Some(field), Some(values), None, None, None) => {
            if values.is_empty() {
                return Err(loc.err(span, key, "`in` must list at least one value"));
            }
            let field = pointer(loc, &Spanned::new(at.clone(), field.clone()), key, json)?;
            let values = values
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(Value::String(s.clone())),
                    toml::Value::Boolean(b) => Ok(Value::Bool(*b)),
                    toml::Value::Integer(i) => Ok(Value::from(*i)),
                    other => Err(loc.err(
                        span.clone(),
                        key,
                        format!(
                            "`in` takes strings, integers and booleans, not {}",
                            other.type_str()
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?;
            Ok(Condition::In { field, values })
        }
        (None, None, Some(fields), None, None) if fields.len() == 2 => {
            let mut out = [String::new(), String::new()];
            for (slot, f) in out.iter_mut().zip(fields) {
                *slot = pointer(loc, &Spanned::new(at.clone(), f.clone()), key, json)?;
            }
            Ok(Condition::Equal { fields: out })
        }
        (None, None, None, Some(list), None) => Ok(Condition::Any {
            any: nested(list, "any")?,
        }),
        (None, None, None, None, Some(list)) => Ok(Condition::All {
            all: nested(list, "all")?,
        }),
        _ => Err(loc.err(
            span,
            key,
            "expected one of { field = \"...\", in = [...] }, { equal = [\"...\", \"...\"] }, \
             { any = [conditions] }, { all = [conditions] }",
        )),
    }
}

fn probe(
    loc: &Loc<'_>,
    raw: &Spanned<RawProbe>,
    key: &str,
    kind: ProbeKind,
) -> Result<ProbeDef, CoreError> {
    let p = raw.get_ref();
    let timeout_ms = timeout(loc, &p.timeout_ms, &format!("{key}.timeout_ms"))?;
    let argv =
        match (&p.argv, &p.http) {
            (Some(a), None) => argv(loc, a, &format!("{key}.argv"), true)?,
            (None, Some(h)) => http_argv(loc, h, &format!("{key}.http"), timeout_ms)?,
            (Some(a), Some(_)) => return Err(loc.err(
                Some(a.span()),
                key,
                "give `argv` (a command) or `http` (requests the executor makes itself), not both",
            )),
            (None, None) => {
                return Err(loc.err(
                    Some(raw.span()),
                    key,
                    "give `argv` (a command) or `http` (requests the executor makes itself)",
                ))
            }
        };
    let runs_on = runs_on(loc, &p.runs_on, &format!("{key}.runs_on"))?;
    let parse = parser(loc, &p.parse, &format!("{key}.parse"), kind)?;
    let read_exit_codes = match &p.read_exit_codes {
        None => vec![0],
        Some(codes) if codes.get_ref().is_empty() => {
            return Err(loc.err(
                Some(codes.span()),
                format!("{key}.read_exit_codes"),
                "must list at least one exit code",
            ))
        }
        Some(codes) => codes.get_ref().clone(),
    };
    Ok(ProbeDef {
        argv,
        runs_on,
        timeout_ms,
        read_exit_codes,
        parse,
    })
}

fn parser(
    loc: &Loc<'_>,
    raw: &Spanned<RawParse>,
    key: &str,
    kind: ProbeKind,
) -> Result<Parser, CoreError> {
    let p = raw.get_ref();
    let k = |name: &str| format!("{key}.{name}");
    let json = match p.format.get_ref().as_str() {
        "json" => true,
        "regex" => false,
        "builtin" => return builtin_parser(loc, raw, key),
        other => {
            return Err(loc.err(
                Some(p.format.span()),
                k("format"),
                format!("unknown format `{other}` (expected json, regex or builtin)"),
            ))
        }
    };
    if let Some(r) = &p.reader {
        return Err(loc.err(
            Some(r.span()),
            k("reader"),
            "`reader` names a built-in reader: it goes with format = \"builtin\"",
        ));
    }
    // Which keys each probe kind reads; any other is refused by name, so a typo cannot go unnoticed.
    let present = field_keys(p);
    let allowed: &[&str] = match kind {
        ProbeKind::Topology => &[
            "members",
            "name",
            "match",
            "leader_when",
            "follower_when",
            "in_service_when",
            "caught_up_when",
            "lag",
            "max_lag",
            "behind_leader",
            "member_id",
        ],
        ProbeKind::Node => &["up_when", "caught_up_when", "leader_when", "lag", "max_lag"],
        ProbeKind::Version => &["version"],
        ProbeKind::Failover => &["blocked_when"],
    };
    for (name, span) in &present {
        if span.is_some() && !allowed.contains(name) {
            return Err(loc.err(
                span.clone(),
                k(name),
                format!(
                    "this probe's parser does not read `{name}` (it reads: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let required = |name: &str, value: &Option<Spanned<String>>| -> Result<String, CoreError> {
        match value {
            Some(v) => pointer(loc, v, &k(name), json),
            None => Err(loc.err(Some(raw.span()), k(name), "missing")),
        }
    };
    let cond = |name: &str,
                value: &Option<Spanned<RawCondition>>|
     -> Result<Option<Condition>, CoreError> {
        value
            .as_ref()
            .map(|v| condition(loc, v, &k(name), json))
            .transpose()
    };
    let mut fields = Fields::default();
    match kind {
        ProbeKind::Topology => {
            if json {
                fields.members = Some(required("members", &p.members)?);
            } else if let Some(m) = &p.members {
                return Err(loc.err(
                    Some(m.span()),
                    k("members"),
                    "a regex topology has one member per match; `members` is for JSON",
                ));
            }
            fields.name = Some(required("name", &p.name)?);
            fields.match_by = match p
                .match_by
                .as_ref()
                .map(|m| (m.get_ref().as_str(), m.span()))
            {
                None | Some(("name", _)) => MatchBy::Name,
                Some(("address", _)) => MatchBy::Address,
                Some((other, span)) => {
                    return Err(loc.err(
                        Some(span),
                        k("match"),
                        format!("unknown `{other}` (expected name or address)"),
                    ))
                }
            };
            fields.leader_when = cond("leader_when", &p.leader_when)?;
            if fields.leader_when.is_none() {
                return Err(loc.err(
                    Some(raw.span()),
                    k("leader_when"),
                    "missing: how does a member show that it leads?",
                ));
            }
            fields.follower_when = cond("follower_when", &p.follower_when)?;
            fields.in_service_when = cond("in_service_when", &p.in_service_when)?;
            fields.caught_up_when = cond("caught_up_when", &p.caught_up_when)?;
        }
        ProbeKind::Node => {
            fields.up_when = cond("up_when", &p.up_when)?;
            if fields.up_when.is_none() {
                return Err(loc.err(
                    Some(raw.span()),
                    k("up_when"),
                    "missing: how does the node show that it is up?",
                ));
            }
            fields.caught_up_when = cond("caught_up_when", &p.caught_up_when)?;
            // The member's own word on whether it leads: the guard holds it against the topology, which may be
            // one member's cached picture (Patroni's GET /cluster).
            fields.leader_when = cond("leader_when", &p.leader_when)?;
        }
        ProbeKind::Version if !json && p.version.is_none() => {
            // A regex names its version group `version` unless told otherwise.
            fields.version = Some("version".to_string());
        }
        ProbeKind::Version => {
            fields.version = Some(required("version", &p.version)?);
        }
        ProbeKind::Failover => {
            fields.blocked_when = cond("blocked_when", &p.blocked_when)?;
            if fields.blocked_when.is_none() {
                return Err(loc.err(
                    Some(raw.span()),
                    k("blocked_when"),
                    "missing: how does the output show automatic failover blocked?",
                ));
            }
        }
    }
    // `lag` and `behind_leader` each need the largest lag that counts as caught up.
    let max_lag = |at: Range<usize>, by: &str| -> Result<f64, CoreError> {
        match &p.max_lag {
            Some(m) if m.get_ref().is_finite() && *m.get_ref() >= 0.0 => Ok(*m.get_ref()),
            Some(m) => Err(loc.err(Some(m.span()), k("max_lag"), "must be a number at least 0")),
            None => Err(loc.err(
                Some(at),
                k("max_lag"),
                format!("missing: `{by}` needs the largest lag that counts as caught up"),
            )),
        }
    };
    if let Some(lag) = &p.lag {
        if let Some(b) = &p.behind_leader {
            return Err(loc.err(
                Some(b.span()),
                k("behind_leader"),
                "give `lag` or `behind_leader`, not both: they say the same thing two ways",
            ));
        }
        fields.lag = Some(pointer(loc, lag, &k("lag"), json)?);
        fields.max_lag = Some(max_lag(lag.span(), "lag")?);
    } else if let Some(behind) = &p.behind_leader {
        let fields_of = behind.get_ref();
        if fields_of.len() != 2 {
            return Err(loc.err(
                Some(behind.span()),
                k("behind_leader"),
                "must name two fields: the member's position and the leader's",
            ));
        }
        let field = |i: usize| {
            pointer(
                loc,
                &Spanned::new(behind.span(), fields_of[i].clone()),
                &k("behind_leader"),
                json,
            )
        };
        fields.behind_leader = Some([field(0)?, field(1)?]);
        fields.max_lag = Some(max_lag(behind.span(), "behind_leader")?);
    } else if let Some(m) = &p.max_lag {
        return Err(loc.err(Some(m.span()), k("max_lag"), "given without `lag`"));
    }
    if let Some(id) = &p.member_id {
        let raw = id.get_ref();
        let field = pointer(
            loc,
            &Spanned::new(id.span(), raw.field.clone()),
            &k("member_id"),
            json,
        )?;
        check_name(&raw.var).map_err(|m| loc.err(Some(id.span()), k("member_id.var"), m))?;
        let base = raw.base.unwrap_or(10);
        if !(2..=36).contains(&base) {
            return Err(loc.err(Some(id.span()), k("member_id.base"), "must be 2 to 36"));
        }
        fields.member_id = Some(MemberId {
            field,
            var: raw.var.clone(),
            base,
        });
    }
    if json {
        if let Some(pat) = &p.pattern {
            return Err(loc.err(
                Some(pat.span()),
                k("pattern"),
                "a JSON parser has no pattern",
            ));
        }
        return Ok(Parser::Json(fields));
    }
    let Some(pattern) = &p.pattern else {
        return Err(loc.err(
            Some(raw.span()),
            k("pattern"),
            "missing: a regex parser needs its pattern",
        ));
    };
    let re = Regex::new(pattern.get_ref()).map_err(|e| {
        loc.err(
            Some(pattern.span()),
            k("pattern"),
            format!("not a valid pattern: {e}"),
        )
    })?;
    let groups: BTreeSet<&str> = re.capture_names().flatten().collect();
    for field in field_names(&fields) {
        if !groups.contains(field.as_str()) {
            return Err(loc.err(
                Some(pattern.span()),
                k("pattern"),
                format!("has no group named `{field}` (write `(?P<{field}>...)`)"),
            ));
        }
    }
    Ok(Parser::Regex {
        pattern: pattern.get_ref().clone(),
        fields,
    })
}

/// The parser keys that name fields (every key but `format`, `pattern` and `reader`), with where each was given.
fn field_keys(p: &RawParse) -> [(&'static str, Option<Range<usize>>); 14] {
    [
        ("member_id", p.member_id.as_ref().map(|v| v.span())),
        ("behind_leader", p.behind_leader.as_ref().map(|v| v.span())),
        ("blocked_when", p.blocked_when.as_ref().map(|v| v.span())),
        ("members", p.members.as_ref().map(|v| v.span())),
        ("name", p.name.as_ref().map(|v| v.span())),
        ("match", p.match_by.as_ref().map(|v| v.span())),
        ("leader_when", p.leader_when.as_ref().map(|v| v.span())),
        ("follower_when", p.follower_when.as_ref().map(|v| v.span())),
        (
            "in_service_when",
            p.in_service_when.as_ref().map(|v| v.span()),
        ),
        (
            "caught_up_when",
            p.caught_up_when.as_ref().map(|v| v.span()),
        ),
        ("up_when", p.up_when.as_ref().map(|v| v.span())),
        ("lag", p.lag.as_ref().map(|v| v.span())),
        ("max_lag", p.max_lag.as_ref().map(|v| v.span())),
        ("version", p.version.as_ref().map(|v| v.span())),
    ]
}

/// `format = "builtin"`: a named reader and nothing else.
fn builtin_parser(loc: &Loc<'_>, raw: &Spanned<RawParse>, key: &str) -> Result<Parser, CoreError> {
    let p = raw.get_ref();
    let k = |name: &str| format!("{key}.{name}");
    let pattern = ("pattern", p.pattern.as_ref().map(|v| v.span()));
    let others = std::iter::once(pattern).chain(field_keys(p));
    if let Some((name, span)) = others.into_iter().find(|(_, s)| s.is_some()) {
        return Err(loc.err(
            span,
            k(name),
            "a built-in reader reads its output itself: it takes only `reader`",
        ));
    }
    let Some(reader) = &p.reader else {
        return Err(loc.err(
            Some(raw.span()),
            k("reader"),
            "missing: which built-in reader?",
        ));
    };
    if !BUILTIN_READERS.contains(&reader.get_ref().as_str()) {
        return Err(loc.err(
            Some(reader.span()),
            k("reader"),
            format!(
                "unknown built-in reader `{}` (built in: {})",
                reader.get_ref(),
                BUILTIN_READERS.join(", ")
            ),
        ));
    }
    Ok(Parser::Builtin {
        reader: reader.get_ref().clone(),
    })
}

/// Every field (group or pointer) the parser reads, besides `members`.
fn field_names(f: &Fields) -> Vec<String> {
    let mut out: Vec<String> = [&f.name, &f.lag, &f.version]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    out.extend(f.behind_leader.iter().flatten().cloned());
    out.extend(f.member_id.iter().map(|id| id.field.clone()));
    for c in [
        &f.leader_when,
        &f.follower_when,
        &f.in_service_when,
        &f.up_when,
        &f.caught_up_when,
        &f.blocked_when,
    ]
    .into_iter()
    .flatten()
    {
        condition_fields(c, &mut out);
    }
    out
}

fn condition_fields(c: &Condition, out: &mut Vec<String>) {
    match c {
        Condition::In { field, .. } => out.push(field.clone()),
        Condition::Equal { fields } => out.extend(fields.iter().cloned()),
        Condition::Any { any: list } | Condition::All { all: list } => {
            for c in list {
                condition_fields(c, out);
            }
        }
    }
}

impl ProfileFile {
    /// Parses and validates a profile file; `file_name` is only used in error messages.
    pub fn parse(file_name: &str, text: &str) -> Result<ProfileFile, CoreError> {
        let loc = Loc {
            file: file_name,
            text,
        };
        if text.len() > MAX_PROFILE_FILE_BYTES {
            return Err(loc.err(
                None,
                "(file)",
                format!(
                    "the file is {} bytes; a profile may have at most {MAX_PROFILE_FILE_BYTES}",
                    text.len()
                ),
            ));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let key = super::cluster::toml_field(&message);
            // serde names the key only; an unknown key's table is the nearest `[header]` above it. (A missing
            // key's span is its table's, which may be a sub-table's header: only the line is given then.)
            let unknown = message.starts_with("unknown field");
            let message = if ["unknown field `cluster`", "unknown field `nodes`"]
                .iter()
                .any(|m| message.starts_with(m))
            {
                format!("{message} (this looks like a cluster file; a profile starts with `format = 1`)")
            } else {
                message
            };
            let key = match (e.span(), key.as_str()) {
                (Some(span), k) if unknown => match loc.table_at(&span) {
                    Some(table) => format!("{table}.{k}"),
                    None => key,
                },
                _ => key,
            };
            loc.err(e.span(), &key, message)
        })?;
        if *raw.format.get_ref() != PROFILE_FORMAT {
            return Err(loc.err(
                Some(raw.format.span()),
                "format",
                format!(
                    "format {} is not read by this build of baton (it reads format {PROFILE_FORMAT})",
                    raw.format.get_ref()
                ),
            ));
        }
        let name = raw.name.get_ref().clone();
        check_name(&name)
            .map_err(|why| loc.err(Some(raw.name.span()), "name", format!("`{name}`: {why}")))?;
        let description = raw
            .description
            .as_ref()
            .map(|d| d.get_ref().trim().to_string())
            .unwrap_or_default();

        let mut actions = BTreeMap::new();
        for (action_name, action) in &raw.actions {
            let key = format!("actions.{}", action_name.get_ref());
            check_name(action_name.get_ref())
                .map_err(|why| loc.err(Some(action_name.span()), &key, why))?;
            let a = action.get_ref();
            let shows = match a.shows.get_ref().as_str() {
                "stopped" => Shows::Stopped,
                "running" => Shows::Running,
                "installed" => Shows::Installed,
                "leader_moved" => Shows::LeaderMoved,
                "failover_blocked" => Shows::FailoverBlocked,
                "failover_unblocked" => Shows::FailoverUnblocked,
                "nothing" => Shows::Nothing,
                other => {
                    return Err(loc.err(
                        Some(a.shows.span()),
                        format!("{key}.shows"),
                        format!(
                        "unknown `{other}` (expected stopped, running, installed, leader_moved, \
                             failover_blocked, failover_unblocked or nothing)"
                    ),
                    ))
                }
            };
            actions.insert(
                action_name.get_ref().clone(),
                ActionDef {
                    argv: argv(&loc, &a.argv, &format!("{key}.argv"), false)?,
                    runs_on: runs_on(&loc, &a.runs_on, &format!("{key}.runs_on"))?,
                    idempotent: *a.idempotent.get_ref(),
                    timeout_ms: timeout(&loc, &a.timeout_ms, &format!("{key}.timeout_ms"))?,
                    shows,
                },
            );
        }

        let p = raw.procedure.get_ref();
        let defined = |value: &Spanned<String>, key: &str| -> Result<String, CoreError> {
            if actions.contains_key(value.get_ref()) {
                Ok(value.get_ref().clone())
            } else {
                Err(loc.err(
                    Some(value.span()),
                    key,
                    format!("no action `{}` is defined under [actions]", value.get_ref()),
                ))
            }
        };
        let list = |values: &[Spanned<String>], key: &str| -> Result<Vec<String>, CoreError> {
            if values.is_empty() {
                return Err(loc.err(
                    Some(raw.procedure.span()),
                    key,
                    "must list at least one action",
                ));
            }
            values.iter().map(|v| defined(v, key)).collect()
        };
        let follower = list(&p.follower, "procedure.follower")?;
        let leader = list(&p.leader, "procedure.leader")?;
        let switchover = defined(&p.switchover, "procedure.switchover")?;
        if actions[&switchover].runs_on != RunsOn::Leader {
            return Err(loc.err(
                Some(p.switchover.span()),
                "procedure.switchover",
                format!("action `{switchover}` must run on the leader (runs_on = \"leader\")"),
            ));
        }
        let failover_fence = *p.failover_fence.get_ref();
        for fence in ["block_failover", "unblock_failover"] {
            match (failover_fence, actions.contains_key(fence)) {
                (true, false) => {
                    return Err(loc.err(
                        Some(p.failover_fence.span()),
                        "procedure.failover_fence",
                        format!("is true, but no action `{fence}` is defined"),
                    ))
                }
                (false, true) => {
                    return Err(loc.err(
                        Some(p.failover_fence.span()),
                        "procedure.failover_fence",
                        format!("is false, but action `{fence}` is defined: say which is meant"),
                    ))
                }
                _ => {}
            }
        }
        for used in follower.iter().chain(&leader) {
            if actions[used].runs_on == RunsOn::Leader {
                return Err(loc.err(
                    Some(raw.procedure.span()),
                    "procedure",
                    format!(
                        "action `{used}` runs on the leader; a node's own actions run on the_node"
                    ),
                ));
            }
        }
        let switchover_keeps_fence = p
            .switchover_keeps_fence
            .as_ref()
            .is_some_and(|k| *k.get_ref());
        if switchover_keeps_fence && !failover_fence {
            let key = p.switchover_keeps_fence.as_ref().map(|k| k.span());
            return Err(loc.err(
                key,
                "procedure.switchover_keeps_fence",
                "is true, but failover_fence is false: there is no fence to keep",
            ));
        }
        // A fenced system picks no candidate itself (Patroni refuses a paused switchover without one).
        let targeted = actions
            .get(&switchover)
            .is_some_and(|a| a.argv.iter().any(|e| e.contains("{target")));
        if switchover_keeps_fence && !targeted {
            let key = p.switchover_keeps_fence.as_ref().map(|k| k.span());
            return Err(loc.err(
                key,
                "procedure.switchover_keeps_fence",
                format!(
                    "is true, but the switchover `{switchover}` does not name its target ({{target}} or \
                     {{target.var.NAME}}): a switchover under the fence must say where leadership goes"
                ),
            ));
        }
        let election_ms = timeout(&loc, &p.election_ms, "procedure.election_ms")?;
        let probe_rounds = p.probe_rounds.as_ref().is_some_and(|k| *k.get_ref());
        let version_change = match p.version_change.get_ref().as_str() {
            "patch" => VersionChange::Patch,
            "minor" => VersionChange::Minor,
            "next_minor" => VersionChange::NextMinor,
            "any" => VersionChange::Any,
            other => {
                return Err(loc.err(
                    Some(p.version_change.span()),
                    "procedure.version_change",
                    format!("unknown `{other}` (expected patch, next_minor, minor or any)"),
                ))
            }
        };

        let quorum = match p.quorum.as_ref().map(|q| (q.get_ref().as_str(), q.span())) {
            None | Some(("majority", _)) => Quorum::Majority,
            Some(("external", _)) => Quorum::External,
            Some((other, span)) => {
                return Err(loc.err(
                    Some(span),
                    "procedure.quorum",
                    format!("unknown `{other}` (expected majority or external)"),
                ))
            }
        };

        let pr = raw.probes.get_ref();
        let probes = ProbeSet {
            topology: probe(&loc, &pr.topology, "probes.topology", ProbeKind::Topology)?,
            node: probe(&loc, &pr.node, "probes.node", ProbeKind::Node)?,
            version: probe(&loc, &pr.version, "probes.version", ProbeKind::Version)?,
            running_version: pr
                .running_version
                .as_ref()
                .map(|p| probe(&loc, p, "probes.running_version", ProbeKind::Version))
                .transpose()?,
            package: pr
                .package
                .as_ref()
                .map(|p| probe(&loc, p, "probes.package", ProbeKind::Version))
                .transpose()?,
            failover: pr
                .failover
                .as_ref()
                .map(|p| probe(&loc, p, "probes.failover", ProbeKind::Failover))
                .transpose()?,
        };
        // A fence Baton cannot see is a fence it cannot confirm: the guard and the wind-down read it.
        if failover_fence && probes.failover.is_none() {
            return Err(loc.err(
                Some(p.failover_fence.span()),
                "procedure.failover_fence",
                "is true, but there is no [probes.failover] to show whether failover is blocked",
            ));
        }
        for (name, action) in &actions {
            let needs = match action.shows {
                Shows::FailoverBlocked | Shows::FailoverUnblocked => probes.failover.is_some(),
                _ => true,
            };
            if !needs {
                return Err(loc.err(
                    Some(raw.probes.span()),
                    format!("actions.{name}.shows"),
                    "a failover state needs a [probes.failover] to show it",
                ));
            }
        }
        let mut hints = BTreeMap::new();
        for (key, value) in raw.hints.iter().flat_map(|h| h.get_ref()) {
            if !HINT_KEYS.contains(&key.get_ref().as_str()) {
                return Err(loc.err(
                    Some(key.span()),
                    format!("hints.{}", key.get_ref()),
                    format!("unknown hint (known: {})", HINT_KEYS.join(", ")),
                ));
            }
            hints.insert(key.get_ref().clone(), value.get_ref().trim().to_string());
        }
        Ok(ProfileFile {
            name,
            description,
            hints,
            procedure: ProcedureSpec {
                follower,
                leader,
                switchover,
                failover_fence,
                switchover_keeps_fence,
                election_ms,
                probe_rounds,
                version_change,
                quorum,
            },
            actions,
            probes,
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Rendering.

/// The values of a template's placeholders for one node.
#[derive(Debug, Clone, Copy)]
pub struct Placeholders<'a> {
    /// `{node}`, `{address}`, `{var.NAME}`.
    pub node: &'a NodeSpec,
    /// `{package}` (empty when the upgrade has none).
    pub package: &'a str,
    /// `{version}`: the target version (empty when not known yet).
    pub version: &'a str,
    /// `{target}`, `{target.address}`, `{target.var.NAME}`: the switchover's target.
    pub target: Option<&'a NodeSpec>,
}

fn var_of(node: &NodeSpec, var: &str, name: &str) -> Result<String, String> {
    node.vars.get(var).cloned().ok_or_else(|| {
        format!(
            "placeholder {{{name}}}: node {} has no variable `{var}`",
            node.name
        )
    })
}

/// Renders an argv template element by element (never a shell string).
pub fn render_argv(argv: &[String], p: &Placeholders<'_>) -> Result<Vec<String>, CoreError> {
    let value_of = |name: &str| -> Result<String, String> {
        let target = || {
            p.target
                .ok_or_else(|| format!("placeholder {{{name}}}: this step has no target"))
        };
        match name {
            "node" => Ok(p.node.name.clone()),
            "address" => Ok(p.node.address.clone()),
            "package" => Ok(p.package.to_string()),
            "version" => Ok(p.version.to_string()),
            "target" => Ok(target()?.name.clone()),
            "target.address" => Ok(target()?.address.clone()),
            _ => {
                if let Some(var) = name.strip_prefix("target.var.") {
                    var_of(target()?, var, name)
                } else if let Some(var) = name.strip_prefix("var.") {
                    var_of(p.node, var, name)
                } else {
                    Err(format!("unknown placeholder {{{name}}}"))
                }
            }
        }
    };
    argv.iter()
        .map(|e| super::profile::render_element(e, &value_of))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Reading probe output.

fn parse_err(message: impl Into<String>) -> CoreError {
    CoreError::Parse {
        what: "profile probe output",
        message: message.into(),
    }
}

/// One record: a JSON value (fields are pointers) or a regex match (fields are groups).
enum Record<'a> {
    Json(&'a Value),
    Text(regex::Captures<'a>),
}

impl Record<'_> {
    fn get(&self, field: &str) -> Option<Value> {
        match self {
            Record::Json(v) => v.pointer(field).cloned(),
            Record::Text(c) => c.name(field).map(|m| Value::String(m.as_str().to_string())),
        }
    }

    fn holds(&self, condition: &Condition) -> bool {
        match condition {
            Condition::In { field, values } => self
                .get(field)
                .is_some_and(|v| values.iter().any(|want| same(&v, want))),
            Condition::Equal { fields: [a, b] } => match (self.get(a), self.get(b)) {
                (Some(a), Some(b)) => same(&a, &b) && !a.is_null(),
                _ => false,
            },
            Condition::Any { any } => any.iter().any(|c| self.holds(c)),
            Condition::All { all } => all.iter().all(|c| self.holds(c)),
        }
    }

    /// `caught_up_when` and `lag`: `None` when the profile reads neither; a missing lag is not caught up.
    fn caught_up(&self, f: &Fields) -> Option<bool> {
        let by_condition = f.caught_up_when.as_ref().map(|c| self.holds(c));
        let by_lag = f.lag.as_ref().map(|field| {
            let max = f.max_lag.unwrap_or(0.0);
            self.get(field)
                .and_then(|v| number(&v))
                .is_some_and(|lag| lag <= max)
        });
        match (by_condition, by_lag) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(true) && b.unwrap_or(true)),
        }
    }
}

/// JSON equality, except that a string and a number or boolean with the same text are the same (a regex
/// group is always text; `in = [true]` must match a group `true`).
fn same(a: &Value, b: &Value) -> bool {
    if a == b {
        return true;
    }
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    matches!((text(a), text(b)), (Some(x), Some(y)) if x == y)
}

/// A position as an integer: a JSON number, or a number as text (etcd's HTTP gateway writes its u64 raft
/// indexes as strings).
fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Whether `member` is at most `max` behind `leader` (numbers, or numbers as text; integers compared exactly,
/// as etcd's raft indexes are u64). `None` when either is not a number.
fn lag_within(leader: &Value, member: &Value, max: f64) -> Option<bool> {
    if let (Some(l), Some(m)) = (int(leader), int(member)) {
        return Some(l <= m || ((l - m) as f64) <= max);
    }
    Some(number(leader)? - number(member)? <= max)
}

/// Orders two positions (numbers, or numbers as text): integers exactly, as etcd's raft indexes are u64.
fn position_order(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (int(a), int(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => number(a)
            .unwrap_or(f64::NAN)
            .total_cmp(&number(b).unwrap_or(f64::NAN)),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bounded(output: &str) -> Result<(), CoreError> {
    if output.len() > MAX_PROBE_OUTPUT {
        return Err(parse_err(format!(
            "output is {} bytes; probe output may have at most {MAX_PROBE_OUTPUT}",
            output.len()
        )));
    }
    Ok(())
}

/// `host:port` of a URL (`http://127.0.0.1:2379/x` -> `127.0.0.1:2379`), or the text itself.
fn host_port(identity: &str) -> &str {
    let rest = identity.split_once("://").map_or(identity, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

fn node_of<'n>(identity: &str, by: MatchBy, nodes: &'n [NodeSpec]) -> Option<&'n NodeSpec> {
    nodes.iter().find(|n| match by {
        MatchBy::Name => n.name == identity,
        MatchBy::Address => n.address == identity || n.address == host_port(identity),
    })
}

fn json_document(output: &str) -> Result<Value, CoreError> {
    serde_json::from_str(output.trim()).map_err(|e| parse_err(format!("not JSON: {e}")))
}

/// Reads a topology probe's output; `nodes` are the cluster file's nodes (members are matched to them).
pub fn parse_topology(
    probe: &ProbeDef,
    output: &str,
    nodes: &[NodeSpec],
) -> Result<Topology, CoreError> {
    bounded(output)?;
    let (records, fields): (Vec<Record<'_>>, &Fields) = match &probe.parse {
        Parser::Builtin { reader } => return super::builtin::topology(reader, output),
        Parser::Json(fields) => {
            // A borrowed document cannot outlive this arm, so the JSON case is finished here.
            let doc = json_document(output)?;
            let at = fields.members.as_deref().unwrap_or("");
            let array = doc
                .pointer(at)
                .and_then(Value::as_array)
                .ok_or_else(|| parse_err(format!("no array of members at `{at}`")))?;
            return members(array.iter().map(Record::Json).collect(), fields, nodes);
        }
        Parser::Regex { pattern, fields } => {
            let re = Regex::new(pattern).map_err(|e| parse_err(format!("pattern: {e}")))?;
            (re.captures_iter(output).map(Record::Text).collect(), fields)
        }
    };
    members(records, fields, nodes)
}

fn members(
    records: Vec<Record<'_>>,
    f: &Fields,
    nodes: &[NodeSpec],
) -> Result<Topology, CoreError> {
    if records.is_empty() {
        return Err(parse_err("no members in the output"));
    }
    let name_field = f.name.as_deref().unwrap_or_default();
    let mut out = Vec::with_capacity(records.len());
    // `member_id`: whether each record is its node's own member (`None`: not checked). One that is not answered
    // at the node's address for another member: it is not that node, and its positions are not the cluster's.
    let identities: Vec<Result<String, CoreError>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.get(name_field).as_ref().and_then(text_of).ok_or_else(|| {
                parse_err(format!("member {}: no identity at `{name_field}`", i + 1))
            })
        })
        .collect();
    let stranger: Vec<Option<String>> = records
        .iter()
        .zip(&identities)
        .map(|(r, identity)| {
            let id = f.member_id.as_ref()?;
            let node = identity
                .as_ref()
                .ok()
                .and_then(|i| node_of(i, f.match_by, nodes));
            member_id_mismatch(r, id, node)
        })
        .collect();
    // `behind_leader`: the furthest position any member reports in the leader's field. Not the leader's own
    // value: a tool that asks the members one after another (etcdctl) may show a slow leader's older index, and a
    // member compared with that would look caught up when it is not.
    let leader_position = f.behind_leader.as_ref().and_then(|[_, leader_field]| {
        records
            .iter()
            .zip(&stranger)
            .filter(|(_, stranger)| stranger.is_none())
            .filter_map(|(r, _)| r.get(leader_field))
            .filter(|v| number(v).is_some())
            .max_by(position_order)
    });
    for ((r, identity), stranger) in records.iter().zip(identities).zip(&stranger) {
        let identity = identity?;
        let node = node_of(&identity, f.match_by, nodes);
        let leads = stranger.is_none() && f.leader_when.as_ref().is_some_and(|c| r.holds(c));
        let role = if leads {
            MemberRole::Leader
        } else if f.follower_when.as_ref().is_none_or(|c| r.holds(c)) {
            MemberRole::Follower
        } else {
            MemberRole::Other
        };
        let in_service = f.in_service_when.as_ref().is_none_or(|c| r.holds(c));
        let mut caught_up = r.caught_up(f);
        if let Some([member_field, _]) = &f.behind_leader {
            // Fails closed: a member whose position is missing or not a number, or an output in which no member
            // shows the leader's, is not caught up.
            let behind = match (&leader_position, r.get(member_field)) {
                _ if leads => Some(true),
                (Some(l), Some(m)) => {
                    Some(lag_within(l, &m, f.max_lag.unwrap_or(0.0)).unwrap_or(false))
                }
                _ => Some(false),
            };
            caught_up = match (caught_up, behind) {
                (None, b) => b,
                (a, None) => a,
                (Some(a), Some(b)) => Some(a && b),
            };
        }
        let (role, in_service, caught_up) = match stranger {
            None => (role, in_service, caught_up),
            Some(_) => (MemberRole::Other, false, Some(false)),
        };
        let label = match role {
            MemberRole::Leader => "leader",
            MemberRole::Follower => "follower",
            MemberRole::Deposed => "deposed",
            MemberRole::Other => "other",
        };
        let shown = match (stranger, in_service, caught_up) {
            (Some(why), _, _) => format!("{label} (not in service: {why})"),
            (None, false, _) => format!("{label} (not in service)"),
            (None, true, Some(false)) => format!("{label} (not caught up)"),
            (None, true, _) => label.to_string(),
        };
        out.push(Member {
            node: node.map_or_else(|| identity.clone(), |n| n.name.clone()),
            known: node.is_some(),
            id: identity,
            role,
            in_service,
            offline: !in_service,
            caught_up,
            label: label.to_string(),
            listed: label.to_string(),
            shown,
        });
    }
    Ok(Topology { members: out })
}

/// Why `r` is not `node`'s own member by its `member_id` (`None`: it is): its ID missing, the node unknown or
/// without the var, or another ID.
fn member_id_mismatch(r: &Record<'_>, id: &MemberId, node: Option<&NodeSpec>) -> Option<String> {
    let Some(node) = node else {
        return Some("no node of the cluster file".into());
    };
    let Some(want) = node.vars.get(&id.var) else {
        return Some(format!(
            "node {} has no var {} to check its member ID with",
            node.name, id.var
        ));
    };
    let Some(got) = r.get(&id.field) else {
        return Some(format!("no member ID at `{}`", id.field));
    };
    let same = match (int(&got), u64::from_str_radix(want.trim(), id.base)) {
        (Some(g), Ok(w)) => g == w,
        _ => text_of(&got).is_some_and(|g| g == *want),
    };
    (!same).then(|| {
        format!(
            "member ID {} is not {}'s ({} = {want})",
            text_of(&got).unwrap_or_else(|| got.to_string()),
            node.name,
            id.var
        )
    })
}

/// Reads a node probe's output.
pub fn parse_node(probe: &ProbeDef, output: &str) -> Result<NodeReading, CoreError> {
    bounded(output)?;
    let health = |r: &Record<'_>, f: &Fields| NodeReading {
        up: f.up_when.as_ref().is_some_and(|c| r.holds(c)),
        caught_up: r.caught_up(f),
        leads: f.leader_when.as_ref().map(|c| r.holds(c)),
    };
    match &probe.parse {
        Parser::Builtin { reader } => Ok(NodeReading {
            up: super::builtin::node_up(reader, output)?,
            caught_up: None,
            leads: None,
        }),
        Parser::Json(fields) => {
            let doc = json_document(output)?;
            Ok(health(&Record::Json(&doc), fields))
        }
        Parser::Regex { pattern, fields } => {
            let re = Regex::new(pattern).map_err(|e| parse_err(format!("pattern: {e}")))?;
            match re.captures(output) {
                Some(c) => Ok(health(&Record::Text(c), fields)),
                // No match says nothing about the node: an error, not "down".
                None => Err(parse_err("the pattern does not match the output")),
            }
        }
    }
}

/// Reads the failover probe's output: whether automatic failover is blocked.
pub fn parse_failover(probe: &ProbeDef, output: &str) -> Result<bool, CoreError> {
    bounded(output)?;
    let blocked = |r: &Record<'_>, f: &Fields| f.blocked_when.as_ref().is_some_and(|c| r.holds(c));
    match &probe.parse {
        Parser::Builtin { reader } => super::builtin::fence_blocked(reader, output),
        Parser::Json(fields) => Ok(blocked(&Record::Json(&json_document(output)?), fields)),
        Parser::Regex { pattern, fields } => {
            let re = Regex::new(pattern).map_err(|e| parse_err(format!("pattern: {e}")))?;
            match re.captures(output) {
                Some(c) => Ok(blocked(&Record::Text(c), fields)),
                None => Err(parse_err("the pattern does not match the output")),
            }
        }
    }
}

/// Reads a version probe's output (installed, running or package version).
pub fn parse_version(probe: &ProbeDef, output: &str) -> Result<String, CoreError> {
    bounded(output)?;
    let (value, field) = match &probe.parse {
        Parser::Builtin { reader } => return super::builtin::version(reader, output),
        Parser::Json(fields) => {
            let field = fields.version.as_deref().unwrap_or_default();
            (
                json_document(output)?.pointer(field).cloned(),
                field.to_string(),
            )
        }
        Parser::Regex { pattern, fields } => {
            let re = Regex::new(pattern).map_err(|e| parse_err(format!("pattern: {e}")))?;
            let field = fields.version.as_deref().unwrap_or_default();
            let value = re.captures(output).and_then(|c| Record::Text(c).get(field));
            (value, field.to_string())
        }
    };
    let version = value
        .as_ref()
        .and_then(text_of)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| parse_err(format!("no version at `{field}`")))?;
    if version_numbers(&version).is_none() {
        return Err(parse_err(format!(
            "`{version}` does not start with a number"
        )));
    }
    Ok(version)
}

/// A profile file's reader: turns a probe step's result into an observation, as `builtin::read_probe` does for
/// a built-in system. Output is read only for an exit code in the probe's `read_exit_codes`; anything else makes the
/// probe unavailable (`Err(None)`), never a guess. `nodes` are the cluster file's nodes, `system` the profile's
/// name (a node's one service in reasons).
#[allow(clippy::too_many_arguments)]
pub fn read_probe(
    probes: &ProbeSet,
    action: super::profile::Action,
    outcome: super::event::Outcome,
    exit_code: Option<i32>,
    stdout: &str,
    nodes: &[NodeSpec],
    system: &str,
) -> Result<super::event::Observation, Option<CoreError>> {
    use super::event::{Observation, Outcome};
    use super::profile::Action;
    let probe = match action {
        Action::ProbeClusterStatus => Some(&probes.topology),
        Action::ProbeStatus => Some(&probes.node),
        Action::ProbeVersion => Some(&probes.version),
        Action::ProbePackage => probes.package.as_ref(),
        Action::ProbeFailover => probes.failover.as_ref(),
        Action::ProbeRunningVersion => probes.running_version.as_ref(),
        _ => None,
    };
    let Some(probe) = probe else {
        return Ok(Observation::Unavailable {
            error: format!("{action} is not a probe of this profile"),
        });
    };
    let readable = matches!(outcome, Outcome::Succeeded | Outcome::Failed)
        && exit_code.is_some_and(|c| probe.read_exit_codes.contains(&c));
    if !readable {
        return Err(None);
    }
    let observation = match action {
        Action::ProbeClusterStatus => Observation::Members {
            topology: parse_topology(probe, stdout, nodes)?,
        },
        Action::ProbeStatus => {
            let reading = parse_node(probe, stdout)?;
            Observation::Node {
                service: system.to_string(),
                up: reading.up,
                caught_up: reading.caught_up,
                leads: reading.leads,
            }
        }
        Action::ProbeVersion => Observation::Version {
            version: Some(parse_version(probe, stdout)?),
            state: None,
        },
        Action::ProbePackage => Observation::Package {
            version: parse_version(probe, stdout)?,
        },
        Action::ProbeRunningVersion => Observation::Running {
            version: parse_version(probe, stdout)?,
        },
        _ => Observation::Fence {
            blocked: parse_failover(probe, stdout)?,
        },
    };
    Ok(observation)
}

/// The leading dotted numbers of a version (`3.5.1` -> [3, 5, 1]; `15.20-0+deb12u1` -> [15, 20]).
pub fn version_numbers(version: &str) -> Option<Vec<u64>> {
    let v = version.trim().trim_start_matches('v');
    let mut out = Vec::new();
    for part in v.split('.') {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() {
            break;
        }
        out.push(digits.parse().ok()?);
        if digits.len() != part.len() {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether `from` -> `to` may roll under `rule`: `Err` says why not. Equal versions are not an upgrade.
pub fn check_version_change(rule: VersionChange, from: &str, to: &str) -> Result<(), String> {
    let (Some(a), Some(b)) = (version_numbers(from), version_numbers(to)) else {
        return Err(format!("cannot compare `{from}` with `{to}`"));
    };
    if b <= a {
        return Err(format!("{from} -> {to} is not an upgrade"));
    }
    let same_prefix = |n: usize| a.iter().take(n).eq(b.iter().take(n));
    match rule {
        VersionChange::Any => Ok(()),
        VersionChange::Minor if same_prefix(1) => Ok(()),
        VersionChange::NextMinor
            if same_prefix(1)
                && b.get(1).copied().unwrap_or(0)
                    <= a.get(1).copied().unwrap_or(0).saturating_add(1) =>
        {
            Ok(())
        }
        VersionChange::NextMinor if same_prefix(1) => Err(format!(
            "{from} -> {to} skips a minor version; the profile rolls one minor version at a time"
        )),
        VersionChange::NextMinor => Err(format!(
            "{from} -> {to} changes the major version; the profile rolls one minor version at a time"
        )),
        VersionChange::Patch if same_prefix(2) && a.len() > 2 => Ok(()),
        // Two-number schemes (PostgreSQL 15.18 -> 15.20): the second number is the patch level.
        VersionChange::Patch if a.len() == 2 && same_prefix(1) => Ok(()),
        VersionChange::Minor => Err(format!(
            "{from} -> {to} changes the major version; the profile rolls minor changes only"
        )),
        VersionChange::Patch => Err(format!(
            "{from} -> {to} is more than a patch; the profile rolls patch changes only"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete profile in the shape of the shipped etcd one; tests edit one line of it at a time.
    const ETCD: &str = r#"format = 1
name = "etcd"
description = "etcd 3.x"

[procedure]
follower = ["stop", "install", "start"]
leader = ["stop", "install", "start"]
switchover = "move_leader"
failover_fence = false
election_ms = 10000
version_change = "minor"

[actions.stop]
argv = ["{var.ctl}", "stop"]
runs_on = "the_node"
idempotent = true
timeout_ms = 60000
shows = "stopped"

[actions.install]
argv = ["{var.ctl}", "install", "{package}"]
runs_on = "the_node"
idempotent = true
timeout_ms = 60000
shows = "installed"

[actions.start]
argv = ["{var.ctl}", "start"]
runs_on = "the_node"
idempotent = true
timeout_ms = 60000
shows = "running"

[actions.move_leader]
argv = ["etcdctl", "--endpoints", "{address}", "move-leader", "{target.var.member_id}"]
runs_on = "leader"
idempotent = false
timeout_ms = 30000
shows = "leader_moved"

[probes.topology]
argv = ["etcdctl", "--endpoints", "{var.endpoints}", "endpoint", "status", "-w", "json"]
runs_on = "any_node"
timeout_ms = 10000
[probes.topology.parse]
format = "json"
members = ""
name = "/Endpoint"
match = "address"
leader_when = { equal = ["/Status/header/member_id", "/Status/leader"] }

[probes.node]
argv = ["etcdctl", "--endpoints", "{address}", "endpoint", "health", "-w", "json"]
runs_on = "the_node"
timeout_ms = 10000
[probes.node.parse]
format = "json"
up_when = { field = "/0/health", in = [true] }

[probes.version]
argv = ["{var.ctl}", "installed-version"]
runs_on = "the_node"
timeout_ms = 10000
[probes.version.parse]
format = "regex"
pattern = 'etcd Version: (?P<version>\d+\.\d+\.\d+)'
version = "version"
"#;

    fn nodes() -> Vec<NodeSpec> {
        (1..=3)
            .map(|i| NodeSpec {
                name: format!("m{i}"),
                address: format!("127.0.0.1:{}", 2378 + i * 2 - 1),
                executor: format!("m{i}"),
                vars: BTreeMap::new(),
            })
            .collect()
    }

    fn load(text: &str) -> Result<ProfileFile, CoreError> {
        ProfileFile::parse("etcd.toml", text)
    }

    /// The error of `ETCD` with `from` replaced by `to`, as `file:line: key: message`.
    fn error_after(from: &str, to: &str) -> String {
        assert!(ETCD.contains(from), "the test's profile has no `{from}`");
        load(&ETCD.replacen(from, to, 1)).unwrap_err().to_string()
    }

    #[test]
    fn the_example_loads_with_everything_it_says() {
        let p = load(ETCD).unwrap();
        assert_eq!(p.name, "etcd");
        assert_eq!(p.procedure.follower, ["stop", "install", "start"]);
        assert_eq!(p.procedure.switchover, "move_leader");
        assert!(!p.procedure.failover_fence);
        assert_eq!(p.procedure.version_change, VersionChange::Minor);
        let mv = &p.actions["move_leader"];
        assert_eq!(
            (mv.runs_on, mv.idempotent, mv.shows),
            (RunsOn::Leader, false, Shows::LeaderMoved)
        );
        assert!(p.probes.package.is_none());
        assert!(matches!(p.probes.version.parse, Parser::Regex { .. }));
    }

    #[test]
    fn every_error_names_the_file_the_line_and_the_key() {
        let cases = [
            (
                "format = 1",
                "format = 2",
                "etcd.toml:1: format: format 2 is not read",
            ),
            (
                "switchover = \"move_leader\"",
                "switchover = \"move\"",
                "etcd.toml:8: procedure.switchover: no action `move`",
            ),
            (
                "follower = [\"stop\", \"install\", \"start\"]",
                "follower = [\"stop\", \"instal\"]",
                "etcd.toml:6: procedure.follower: no action `instal`",
            ),
            (
                "failover_fence = false",
                "failover_fence = true",
                "etcd.toml:9: procedure.failover_fence: is true, but no action `block_failover`",
            ),
            (
                "version_change = \"minor\"",
                "version_change = \"major\"",
                "etcd.toml:11: procedure.version_change: unknown `major`",
            ),
            (
                "shows = \"stopped\"",
                "shows = \"halted\"",
                "etcd.toml:18: actions.stop.shows: unknown `halted`",
            ),
            (
                "\"{var.ctl}\", \"stop\"",
                "\"{ctl}\", \"stop\"",
                "etcd.toml:14: actions.stop.argv: unknown placeholder {ctl}",
            ),
            (
                "runs_on = \"the_node\"",
                "runs_on = \"node\"",
                "etcd.toml:15: actions.stop.runs_on: unknown `node`",
            ),
            (
                "timeout_ms = 60000",
                "timeout_ms = 0",
                "etcd.toml:17: actions.stop.timeout_ms: must be 1 to",
            ),
            (
                "match = \"address\"",
                "match = \"ip\"",
                "etcd.toml:49: probes.topology.parse.match: unknown `ip`",
            ),
            (
                "name = \"/Endpoint\"",
                "name = \"Endpoint\"",
                "etcd.toml:48: probes.topology.parse.name: `Endpoint` is not a JSON Pointer",
            ),
            (
                "up_when = { field = \"/0/health\", in = [true] }",
                "caught_up_when = { field = \"/0/health\", in = [true] }",
                "probes.node.parse.up_when: missing",
            ),
            (
                "(?P<version>\\d+\\.\\d+\\.\\d+)",
                "(\\d+)",
                "etcd.toml:66: probes.version.parse.pattern: has no group named `version`",
            ),
            (
                "(?P<version>\\d+\\.\\d+\\.\\d+)",
                "(?P<version>\\d+",
                "etcd.toml:66: probes.version.parse.pattern: not a valid pattern",
            ),
            (
                "version = \"version\"",
                "version = \"version\"\nlag = \"x\"",
                "etcd.toml:68: probes.version.parse.lag: this probe's parser does not read `lag`",
            ),
            (
                "timeout_ms = 30000\nshows",
                "timeout_ms = 30000\nshow",
                "etcd.toml:39: actions.move_leader.show: unknown field `show`",
            ),
            (
                "description = ",
                "descripton = ",
                "etcd.toml:3: descripton: unknown field `descripton`",
            ),
            (
                "version_change = \"minor\"",
                "version_change = \"minor\"\nprobe_rounds = \"yes\"",
                "etcd.toml:12: (file): invalid type: string \"yes\", expected a boolean",
            ),
            (
                "[probes.node]\n",
                "[probes.node]\nargs = []\n",
                "etcd.toml:53: probes.node.args: unknown field `args`",
            ),
        ];
        for (from, to, want) in cases {
            let got = error_after(from, to);
            assert!(
                got.contains(want),
                "after `{from}` -> `{to}`:\n got: {got}\nwant: {want}"
            );
        }
    }

    /// `ETCD` with its node probe written as an HTTP probe whose `http` table is `http`.
    fn review14_with_http_node_probe(http: &str) -> String {
        let from = "[probes.node]\nargv = [\"etcdctl\", \"--endpoints\", \"{address}\", \"endpoint\", \"health\", \"-w\", \"json\"]\n";
        assert!(ETCD.contains(from), "the test's profile has no `{from}`");
        ETCD.replacen(from, &format!("[probes.node]\nhttp = {http}\n"), 1)
    }

    /// Hostile review 14 (P3): an HTTP probe's `body` is a JSON document built by pasting placeholder values
    /// into text, the very thing argv templates exist to avoid ("never a shell string built from data"). `{package}`
    /// is the submission's free parameter, and the executor's package rules (absolute, no `..`, no `://`, no
    /// control characters: executor/src/allow.rs `path_rules`) let quotes through, so a package path adds or
    /// overrides fields of the body the executor POSTs (here `dir` is overridden). Fix: render placeholders into a
    /// body JSON-escaped (or allow them only as whole JSON string values), or refuse `{package}` and `{var.NAME}`
    /// in `body` (and in `endpoints`, where a comma adds an endpoint) at load.
    #[test]
    fn review14_a_package_rendered_into_an_http_body_stays_one_json_string() {
        let text = review14_with_http_node_probe(
            r#"{ method = "POST", endpoints = "{address}", path = "/check", body = '{{"dir":"{package}"}}' }"#,
        );
        // Fixed by refusing the submission's values in an HTTP probe at load (a probe has no use for them).
        let got = load(&text).unwrap_err().to_string();
        assert!(
            got.contains("probes.node.http.body: an HTTP probe may not use {package}"),
            "{got}"
        );
        for (key, table) in [
            (
                "endpoints",
                r#"{ endpoints = "{address},{version}", path = "/x" }"#,
            ),
            (
                "path",
                r#"{ endpoints = "{address}", path = "/v/{version}" }"#,
            ),
        ] {
            let got = load(&review14_with_http_node_probe(table))
                .unwrap_err()
                .to_string();
            assert!(
                got.contains(&format!(
                    "probes.node.http.{key}: an HTTP probe may not use {{version}}"
                )),
                "{got}"
            );
        }
    }

    /// Hostile review 14 (P3): the loader checks an HTTP probe's path but not the literal text of its endpoints,
    /// so an endpoint the executor will refuse on every run (`https://`, no port, a path, `user@`) loads, is
    /// planned and approved, and only then fails every look (the topology then never shows a member in service).
    /// Fix: check the literal parts of `endpoints` at load as `runner::http::authority` checks them at run time
    /// (no scheme but `http://`, a `:PORT` after the last placeholder or host, no `/` or `@`), naming the key.
    #[test]
    fn review14_an_http_endpoint_that_can_never_be_asked_is_refused_at_load() {
        for endpoints in [
            "https://{address}",
            "localhost",
            "http://{address}/v3",
            "root@{address}",
        ] {
            let text = review14_with_http_node_probe(&format!(
                r#"{{ endpoints = "{endpoints}", path = "/health" }}"#
            ));
            let loaded = load(&text);
            let got = loaded
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                got.contains("probes.node.http.endpoints"),
                "endpoints = {endpoints:?} loaded ({:?}); the executor refuses it at every run",
                loaded.as_ref().map(|p| &p.probes.node.argv).ok()
            );
        }
    }

    /// Hostile review 14b (P2, security): `ca_file` is what makes an HTTP probe TLS ("With `ca_file`, every
    /// endpoint is asked over TLS", docs/profiles.md; "With `ca_file`, only that CA is trusted", THREATS.md), but
    /// only the key's literal text is checked at load (`http_argv` refuses `ca_file = ""`); the runner decides TLS
    /// from the rendered CA_FILE being non-empty (runner/http.rs `run`). A `ca_file = "{var.etcd_ca}"` whose node
    /// var is empty (a cluster-file template left blank, a var meant for another node) renders CA_FILE `""`, which
    /// the allow list accepts (it renders the same) and the runner asks in plain HTTP with no certificate checked:
    /// whoever answers at the endpoint (a man in the middle) writes the topology the guard acts on. Fix: refuse a
    /// rendered empty (or blank) CA_FILE/CERT_FILE/KEY_FILE where the template is not empty (`render_argv` for an
    /// HTTP probe, and the allow list), or carry "TLS" in the argv apart from the file's name.
    #[test]
    fn review14b_an_http_probe_with_ca_file_never_renders_to_a_plain_http_request() {
        let text = review14_with_http_node_probe(
            r#"{ endpoints = "{address}", path = "/health", ca_file = "{var.etcd_ca}" }"#,
        );
        let p = load(&text).unwrap();
        let mut node = nodes()[0].clone();
        node.vars.insert("etcd_ca".into(), String::new());
        let rendered = render_argv(
            &p.probes.node.argv,
            &Placeholders {
                node: &node,
                package: "",
                version: "",
                target: None,
            },
        );
        assert!(
            !matches!(&rendered, Ok(argv) if argv[0] == HTTP_PROGRAM && argv[6].trim().is_empty()),
            "a probe whose profile names ca_file rendered to an HTTP probe argv without a CA file, which the \
             executor asks in plain HTTP: {rendered:?}"
        );
    }

    /// Hostile review 14b (P3): `member_id.field` of a regex topology is not checked against the pattern's
    /// groups (`field_names` lists every field key but `member_id`), so a typo loads and is planned, and then
    /// every member reads "not in service: no member ID at `mid`" at every look: the upgrade waits on a cluster
    /// that is healthy, and the error names no file, line or key. Every other field of a regex parser is refused
    /// at load ("has no group named ..."). Fix: add `member_id.field` to `field_names`.
    #[test]
    fn review14b_a_regex_topologys_member_id_names_a_group_of_its_pattern() {
        let from = "[probes.topology.parse]\nformat = \"json\"\nmembers = \"\"\nname = \"/Endpoint\"\nmatch = \"address\"\nleader_when = { equal = [\"/Status/header/member_id\", \"/Status/leader\"] }\n";
        assert!(ETCD.contains(from), "the test's profile has no `{from}`");
        let regex = |id_field: &str| {
            ETCD.replacen(
                from,
                &format!(
                    "[probes.topology.parse]\nformat = \"regex\"\npattern = '(?P<ep>\\S+) (?P<id>\\d+) (?P<leader>\\d+)'\n\
                     name = \"ep\"\nmatch = \"address\"\nleader_when = {{ equal = [\"id\", \"leader\"] }}\n\
                     member_id = {{ field = \"{id_field}\", var = \"member_id\" }}\n"
                ),
                1,
            )
        };
        load(&regex("id")).expect("a regex topology with member_id on one of its groups");
        let got = load(&regex("mid"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            got.contains("etcd.toml:") && got.contains("probes.topology.parse") && got.contains("mid"),
            "member_id.field `mid`, a group the pattern does not have, loaded (every member would then read \
             \"no member ID at `mid`\"): {got:?}"
        );
    }

    /// The node probe of `ETCD` written as an HTTP probe with the `http` table `table`.
    const NODE_ARGV: &str =
        "argv = [\"etcdctl\", \"--endpoints\", \"{address}\", \"endpoint\", \"health\", \"-w\", \"json\"]";

    fn with_node_http(table: &str) -> String {
        assert!(ETCD.contains(NODE_ARGV));
        ETCD.replacen(NODE_ARGV, &format!("http = {table}"), 1)
    }

    #[test]
    fn an_http_probe_loads_as_its_reserved_argv() {
        let p = load(&with_node_http(
            r#"{ method = "POST", endpoints = "{address},{var.peer}", path = "/v3/status", body = "{{}}", endpoint_timeout_ms = 700 }"#,
        ))
        .unwrap();
        assert_eq!(
            p.probes.node.argv,
            [
                HTTP_PROGRAM,
                "POST",
                "{address},{var.peer}",
                "/v3/status",
                "{{}}",
                "700",
                "",
                "",
                ""
            ]
        );
        // Rendered like any argv: `{{}}` is a literal `{}`.
        let node = &nodes()[0];
        let node = NodeSpec {
            vars: BTreeMap::from([("peer".to_string(), "127.0.0.1:9".to_string())]),
            ..node.clone()
        };
        let rendered = render_argv(
            &p.probes.node.argv,
            &Placeholders {
                node: &node,
                package: "",
                version: "",
                target: None,
            },
        )
        .unwrap();
        assert_eq!(
            rendered,
            [
                HTTP_PROGRAM,
                "POST",
                "127.0.0.1:2379,127.0.0.1:9",
                "/v3/status",
                "{}",
                "700",
                "",
                "",
                ""
            ]
        );
        // GET, no body, and the probe's own timeout per endpoint when none is given.
        let p = load(&with_node_http(
            r#"{ endpoints = "{address}", path = "/health" }"#,
        ))
        .unwrap();
        assert_eq!(
            p.probes.node.argv,
            [
                HTTP_PROGRAM,
                "GET",
                "{address}",
                "/health",
                "",
                "10000",
                "",
                "",
                ""
            ]
        );
        // Over TLS: the CA file, and a client certificate and its key, each a template.
        let p = load(&with_node_http(
            r#"{ endpoints = "{address}", path = "/health", ca_file = "{var.ca}", cert_file = "/etc/etcd/{node}.pem", key_file = "/etc/etcd/{node}-key.pem" }"#,
        ))
        .unwrap();
        assert_eq!(
            p.probes.node.argv[6..],
            [
                "{var.ca}",
                "/etc/etcd/{node}.pem",
                "/etc/etcd/{node}-key.pem"
            ]
        );
        let p = load(&with_node_http(
            r#"{ endpoints = "{address}", path = "/health", ca_file = "/ca.pem" }"#,
        ))
        .unwrap();
        assert_eq!(p.probes.node.argv[6..], ["/ca.pem", "", ""]);
    }

    #[test]
    fn a_bad_http_probe_is_refused_naming_its_line_and_key() {
        let cases = [
            (
                r#"{ method = "PUT", endpoints = "{address}", path = "/x" }"#,
                "etcd.toml:53: probes.node.http.method: unknown `PUT` (expected GET or POST)",
            ),
            (
                r#"{ endpoints = "{address}", path = "x" }"#,
                "etcd.toml:53: probes.node.http.path: must start with `/` and hold no whitespace",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x y" }"#,
                "probes.node.http.path: must start with `/` and hold no whitespace",
            ),
            (
                r#"{ endpoints = " ", path = "/x" }"#,
                "probes.node.http.endpoints: must name at least one HOST:PORT",
            ),
            (
                r#"{ endpoints = "{target.address}", path = "/x" }"#,
                "probes.node.http.endpoints: a probe has no target",
            ),
            (
                r#"{ endpoints = "{address}", path = "/{nope}" }"#,
                "probes.node.http.path: unknown placeholder {nope}",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", body = "{{}}" }"#,
                "probes.node.http.body: a GET has no body",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", endpoint_timeout_ms = 20000 }"#,
                "probes.node.http.endpoint_timeout_ms: must not exceed the probe's timeout_ms (10000)",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", endpoint_timeout_ms = 0 }"#,
                "probes.node.http.endpoint_timeout_ms: must be 1 to",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", headers = "a" }"#,
                "unknown field `headers`",
            ),
            (
                r#"{ endpoints = "{address}" }"#,
                "missing field `path`",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", ca_file = "/ca.pem", cert_file = "/c.pem" }"#,
                "probes.node.http.cert_file: a client certificate needs both cert_file and key_file",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", ca_file = "/ca.pem", key_file = "/k.pem" }"#,
                "probes.node.http.key_file: a client certificate needs both cert_file and key_file",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", cert_file = "/c.pem", key_file = "/k.pem" }"#,
                "probes.node.http.cert_file: a client certificate goes with TLS: give ca_file",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", ca_file = " " }"#,
                "probes.node.http.ca_file: must name a file",
            ),
            (
                r#"{ endpoints = "{address}", path = "/x", ca_file = "{var.ca" }"#,
                "probes.node.http.ca_file: unterminated placeholder",
            ),
        ];
        for (table, want) in cases {
            let got = load(&with_node_http(table)).unwrap_err().to_string();
            assert!(got.contains(want), "{table}:\n got: {got}\nwant: {want}");
        }
        // Both forms, or neither.
        let both = ETCD.replacen(
            NODE_ARGV,
            &format!("{NODE_ARGV}\nhttp = {{ endpoints = \"{{address}}\", path = \"/x\" }}"),
            1,
        );
        let got = load(&both).unwrap_err().to_string();
        assert!(
            got.contains("etcd.toml:53: probes.node: give `argv`"),
            "{got}"
        );
        assert!(got.contains("not both"), "{got}");
        let got = load(&ETCD.replacen(NODE_ARGV, "", 1))
            .unwrap_err()
            .to_string();
        assert!(
            got.contains("probes.node: give `argv` (a command) or `http`"),
            "{got}"
        );
        // The reserved program cannot be named by an argv, of a probe or an action.
        let got = error_after(
            NODE_ARGV,
            &NODE_ARGV.replace("\"etcdctl\"", &format!("\"{HTTP_PROGRAM}\"")),
        );
        assert!(
            got.contains("probes.node.argv: `baton:http` is reserved"),
            "{got}"
        );
        let got = error_after(
            "argv = [\"{var.ctl}\", \"stop\"]",
            &format!("argv = [\"{HTTP_PROGRAM}\", \"stop\"]"),
        );
        assert!(
            got.contains("actions.stop.argv: `baton:http` is reserved"),
            "{got}"
        );
    }

    #[test]
    fn member_id_is_checked_on_load() {
        let from = "leader_when = { equal = [\"/Status/header/member_id\", \"/Status/leader\"] }";
        let p = load(&ETCD.replacen(
            from,
            &format!("{from}\nmember_id = {{ field = \"/Status/header/member_id\", var = \"member_id\", base = 16 }}"),
            1,
        ))
        .unwrap();
        let Parser::Json(f) = &p.probes.topology.parse else {
            panic!("json")
        };
        assert_eq!(
            f.member_id,
            Some(MemberId {
                field: "/Status/header/member_id".into(),
                var: "member_id".into(),
                base: 16
            })
        );
        for (to, want) in [
            (
                "member_id = { field = \"x\", var = \"member_id\" }",
                "probes.topology.parse.member_id: `x` is not a JSON Pointer",
            ),
            (
                "member_id = { field = \"/a\", var = \"member_id\", base = 40 }",
                "probes.topology.parse.member_id.base: must be 2 to 36",
            ),
            (
                "member_id = { field = \"/a\", var = \"a b\" }",
                "probes.topology.parse.member_id.var",
            ),
            ("member_id = { field = \"/a\" }", "missing field `var`"),
        ] {
            let got = error_after(from, &format!("{from}\n{to}"));
            assert!(got.contains(want), "{to}:\n got: {got}\nwant: {want}");
        }
        // A node probe has no member list to check.
        let got = error_after(
            "up_when = { field = \"/0/health\", in = [true] }",
            "up_when = { field = \"/0/health\", in = [true] }\nmember_id = { field = \"/a\", var = \"id\" }",
        );
        assert!(
            got.contains(
                "probes.node.parse.member_id: this probe's parser does not read `member_id`"
            ),
            "{got}"
        );
    }

    #[test]
    fn a_probe_cannot_name_a_target_and_a_node_action_cannot_run_on_the_leader() {
        let got = error_after(
            "\"{address}\", \"endpoint\", \"health\"",
            "\"{target.address}\", \"endpoint\", \"health\"",
        );
        assert!(
            got.contains("probes.node.argv: a probe has no target"),
            "{got}"
        );
        let got = error_after("switchover = \"move_leader\"", "switchover = \"stop\"");
        assert!(got.contains("must run on the leader"), "{got}");
        let got = error_after(
            "leader = [\"stop\", \"install\", \"start\"]",
            "leader = [\"move_leader\"]",
        );
        assert!(
            got.contains("runs on the leader; a node's own actions run on the_node"),
            "{got}"
        );
    }

    #[test]
    fn behind_leader_is_checked_on_load() {
        let leader = "leader_when = { equal = [\"/Status/header/member_id\", \"/Status/leader\"] }";
        let with = |extra: &str| format!("{leader}\n{extra}");
        let ok = load(&ETCD.replacen(
            leader,
            &with("behind_leader = [\"/Status/raftAppliedIndex\", \"/Status/raftIndex\"]\nmax_lag = 10"),
            1,
        ))
        .unwrap();
        let Parser::Json(f) = &ok.probes.topology.parse else {
            panic!("json")
        };
        assert_eq!(
            f.behind_leader,
            Some([
                "/Status/raftAppliedIndex".to_string(),
                "/Status/raftIndex".to_string()
            ])
        );
        for (extra, says) in [
            (
                "behind_leader = [\"/Status/raftAppliedIndex\"]",
                "probes.topology.parse.behind_leader: must name two fields",
            ),
            (
                "behind_leader = [\"/a\", \"/b\"]",
                "probes.topology.parse.max_lag: missing",
            ),
            (
                "behind_leader = [\"/a\", \"/b\"]\nlag = \"/c\"\nmax_lag = 1",
                "give `lag` or `behind_leader`, not both",
            ),
            (
                "behind_leader = [\"a\", \"/b\"]\nmax_lag = 1",
                "probes.topology.parse.behind_leader",
            ),
        ] {
            let err = load(&ETCD.replacen(leader, &with(extra), 1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(says), "{extra}: {err}");
            assert!(err.starts_with("etcd.toml:"), "{err}");
        }
    }

    #[test]
    fn a_large_file_is_refused_by_its_size() {
        let big = format!("{ETCD}\n#{}", "x".repeat(MAX_PROFILE_FILE_BYTES));
        let got = load(&big).unwrap_err().to_string();
        assert!(got.contains("a profile may have at most 65536"), "{got}");
    }

    #[test]
    fn a_json_topology_names_the_leader_by_comparing_two_fields_and_matches_members_by_address() {
        let p = load(ETCD).unwrap();
        let out = r#"[
 {"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"member_id":11},"leader":22,"version":"3.4.23"}},
 {"Endpoint":"http://127.0.0.1:2381","Status":{"header":{"member_id":22},"leader":22,"version":"3.4.23"}},
 {"Endpoint":"http://127.0.0.1:9999","Status":{"header":{"member_id":33},"leader":22,"version":"3.4.23"}}]"#;
        let t = parse_topology(&p.probes.topology, out, &nodes()).unwrap();
        assert_eq!(t.leaders(), ["m2"]);
        assert_eq!(t.member("m1").unwrap().role, MemberRole::Follower);
        assert!(t.member("m3").is_none());
        let stranger = &t.members[2];
        assert_eq!(
            (stranger.node.as_str(), stranger.known),
            ("http://127.0.0.1:9999", false)
        );
        // Two members that both say they lead are both shown leading: a split brain is not hidden.
        let split = out.replace(
            "\"leader\":22,\"version\":\"3.4.23\"}},\n {\"Endpoint\":\"http://127.0.0.1:2381\"",
            "\"leader\":11,\"version\":\"3.4.23\"}},\n {\"Endpoint\":\"http://127.0.0.1:2381\"",
        );
        assert_eq!(
            parse_topology(&p.probes.topology, &split, &nodes())
                .unwrap()
                .leaders(),
            ["m1", "m2"]
        );
        // No leader field at all (an election) leads nobody; a null leader is not equal to a null id.
        let none = out.replace("\"leader\":22,", "");
        assert!(parse_topology(&p.probes.topology, &none, &nodes())
            .unwrap()
            .leaders()
            .is_empty());
    }

    #[test]
    fn a_json_topology_reads_roles_service_and_lag_by_value() {
        let text = ETCD
            .replace("match = \"address\"\nleader_when = { equal = [\"/Status/header/member_id\", \"/Status/leader\"] }",
                "leader_when = { field = \"/Role\", in = [\"Leader\"] }\nfollower_when = { field = \"/Role\", in = [\"Replica\", \"Sync Standby\"] }\nin_service_when = { field = \"/State\", in = [\"running\", \"streaming\"] }\nlag = \"/Lag in MB\"\nmax_lag = 0")
            .replace("name = \"/Endpoint\"", "name = \"/Member\"");
        let p = load(&text).unwrap();
        let out = r#"[{"Cluster":"c","Member":"m1","Host":"127.0.0.1:5432","Role":"Leader","State":"running","TL":2},
{"Cluster":"c","Member":"m2","Host":"127.0.0.1:5433","Role":"Replica","State":"streaming","TL":2,"Lag in MB":0},
{"Cluster":"c","Member":"m3","Host":"127.0.0.1:5434","Role":"Replica","State":"stopped","TL":2,"Lag in MB":12}]"#;
        let t = parse_topology(&p.probes.topology, out, &nodes()).unwrap();
        assert_eq!(t.leaders(), ["m1"]);
        let m2 = t.member("m2").unwrap();
        assert_eq!(
            (m2.role.clone(), m2.in_service, m2.caught_up),
            (MemberRole::Follower, true, Some(true))
        );
        let m3 = t.member("m3").unwrap();
        assert_eq!((m3.in_service, m3.caught_up), (false, Some(false)));
        // The leader has no lag field: not shown caught up (it needs none; the rules ask followers only).
        assert_eq!(t.member("m1").unwrap().caught_up, Some(false));
        let weird = out.replace(
            "\"Role\":\"Replica\",\"State\":\"streaming\"",
            "\"Role\":\"Uninitialized\",\"State\":\"streaming\"",
        );
        assert_eq!(
            parse_topology(&p.probes.topology, &weird, &nodes())
                .unwrap()
                .member("m2")
                .unwrap()
                .role,
            MemberRole::Other
        );
    }

    #[test]
    fn bad_output_is_an_error_that_says_what_is_wrong() {
        let p = load(ETCD).unwrap();
        let err = |out: &str| {
            parse_topology(&p.probes.topology, out, &nodes())
                .unwrap_err()
                .to_string()
        };
        assert!(err("Error: context deadline exceeded").contains("not JSON"));
        assert!(err("{}").contains("no array of members at ``"));
        assert!(err("[]").contains("no members"));
        assert!(err(r#"[{"Status":{}}]"#).contains("member 1: no identity at `/Endpoint`"));
        let huge = format!("[{}]", " ".repeat(MAX_PROBE_OUTPUT));
        assert!(err(&huge).contains("at most 65536"));
        let v = parse_version(
            &p.probes.version,
            "etcd Version: 3.5.1\nGit SHA: e8732fb5f\n",
        )
        .unwrap();
        assert_eq!(v, "3.5.1");
        assert!(parse_version(&p.probes.version, "command not found")
            .unwrap_err()
            .to_string()
            .contains("no version at `version`"));
    }

    #[test]
    fn a_node_probe_is_up_only_when_its_condition_holds_and_a_regex_miss_is_not_down() {
        let p = load(ETCD).unwrap();
        let up = parse_node(
            &p.probes.node,
            r#"[{"endpoint":"http://127.0.0.1:2379","health":true,"took":"1ms"}]"#,
        )
        .unwrap();
        assert_eq!(
            up,
            NodeReading {
                up: true,
                caught_up: None,
                leads: None,
            }
        );
        let down = parse_node(
            &p.probes.node,
            r#"[{"endpoint":"http://127.0.0.1:2379","health":false,"error":"x"}]"#,
        )
        .unwrap();
        assert!(!down.up);
        let text = ETCD.replace(
            "format = \"json\"\nup_when = { field = \"/0/health\", in = [true] }",
            "format = \"regex\"\npattern = 'is (?P<health>healthy|unhealthy)'\nup_when = { field = \"health\", in = [\"healthy\"] }",
        );
        let p = load(&text).unwrap();
        assert!(
            parse_node(&p.probes.node, "127.0.0.1:2379 is healthy: took = 1ms")
                .unwrap()
                .up
        );
        assert!(
            !parse_node(&p.probes.node, "127.0.0.1:2379 is unhealthy: failed")
                .unwrap()
                .up
        );
        assert!(parse_node(&p.probes.node, "Error: connection refused").is_err());
    }

    #[test]
    fn version_changes_follow_the_profiles_rule() {
        use VersionChange::*;
        assert!(check_version_change(Minor, "3.4.23", "3.5.1").is_ok());
        assert!(check_version_change(Minor, "3.5.1", "4.0.0")
            .unwrap_err()
            .contains("major"));
        assert!(check_version_change(Patch, "3.4.23", "3.5.1")
            .unwrap_err()
            .contains("more than a patch"));
        assert!(check_version_change(Patch, "3.4.22", "3.4.23").is_ok());
        // etcd's rule (hostile review #5): one minor version at a time; "minor" alone allowed 3.4 -> 3.6.
        assert!(check_version_change(Minor, "3.4.23", "3.6.0").is_ok());
        assert!(check_version_change(NextMinor, "3.4.23", "3.5.1").is_ok());
        assert!(check_version_change(NextMinor, "3.4.22", "3.4.23").is_ok());
        assert!(check_version_change(NextMinor, "3.4.23", "3.6.0")
            .unwrap_err()
            .contains("skips a minor version"));
        assert!(check_version_change(NextMinor, "3.5.1", "4.0.0")
            .unwrap_err()
            .contains("major"));
        assert!(check_version_change(Patch, "15.18", "15.20").is_ok());
        assert!(check_version_change(Patch, "15.18-0+deb12u1", "15.20-0+deb12u1").is_ok());
        assert!(check_version_change(Patch, "15.18", "16.1").is_err());
        assert!(check_version_change(Any, "3.5.1", "3.4.23")
            .unwrap_err()
            .contains("not an upgrade"));
        assert!(check_version_change(Any, "3.5.1", "3.5.1")
            .unwrap_err()
            .contains("not an upgrade"));
        assert!(check_version_change(Any, "x", "1")
            .unwrap_err()
            .contains("cannot compare"));
        assert_eq!(version_numbers("v3.5.1"), Some(vec![3, 5, 1]));
        assert_eq!(version_numbers("15.20-0+deb12u1"), Some(vec![15, 20]));
    }

    #[test]
    fn templates_render_the_node_its_vars_and_the_switchovers_target() {
        let p = load(ETCD).unwrap();
        let mut ns = nodes();
        ns[0].vars.insert("ctl".into(), "/x/member.sh".into());
        ns[1]
            .vars
            .insert("member_id".into(), "8e9e05c52164694d".into());
        let at = |node, target| Placeholders {
            node,
            package: "/pkg/etcd 3.5",
            version: "3.5.1",
            target,
        };
        let argv = render_argv(&p.actions["install"].argv, &at(&ns[0], None)).unwrap();
        assert_eq!(argv, ["/x/member.sh", "install", "/pkg/etcd 3.5"]);
        let argv = render_argv(&p.actions["move_leader"].argv, &at(&ns[0], Some(&ns[1]))).unwrap();
        assert_eq!(
            argv,
            [
                "etcdctl",
                "--endpoints",
                "127.0.0.1:2379",
                "move-leader",
                "8e9e05c52164694d"
            ]
        );
        let err = render_argv(&p.actions["move_leader"].argv, &at(&ns[0], None)).unwrap_err();
        assert!(
            err.to_string()
                .contains("{target.var.member_id}: this step has no target"),
            "{err}"
        );
        let err = render_argv(&p.actions["stop"].argv, &at(&ns[2], None)).unwrap_err();
        assert!(
            err.to_string().contains("node m3 has no variable `ctl`"),
            "{err}"
        );
    }

    #[test]
    fn conditions_combine_and_a_fence_needs_a_probe_that_shows_it() {
        let both = ETCD.replace(
            "up_when = { field = \"/0/health\", in = [true] }",
            "up_when = { all = [{ pointer = \"/0/health\", in = [true] }, { any = [{ field = \"/0/took\", in = [\"1ms\"] }, { field = \"/0/took\", in = [\"2ms\"] }] }] }",
        );
        let p = load(&both).unwrap();
        let up = |took: &str| {
            parse_node(
                &p.probes.node,
                &format!(r#"[{{"health":true,"took":"{took}"}}]"#),
            )
            .unwrap()
            .up
        };
        assert!(up("1ms") && up("2ms") && !up("3ms"));
        let got = error_after(
            "up_when = { field = \"/0/health\", in = [true] }",
            "up_when = { any = [] }",
        );
        assert!(
            got.contains("probes.node.parse.up_when: `any` must list at least one condition"),
            "{got}"
        );
        let deep = format!(
            "up_when = {}{{ field = \"/0/health\", in = [true] }}{}",
            "{ any = [".repeat(5),
            "] }".repeat(5)
        );
        let got = error_after("up_when = { field = \"/0/health\", in = [true] }", &deep);
        assert!(got.contains("nest at most 4 deep"), "{got}");
        let got = error_after(
            "runs_on = \"any_node\"\ntimeout_ms = 10000",
            "runs_on = \"any_node\"\ntimeout_ms = 10000\nread_exit_codes = []",
        );
        assert!(
            got.contains("probes.topology.read_exit_codes: must list at least one exit code"),
            "{got}"
        );
        // A fence: both actions and a probe that shows it.
        let fenced = ETCD.replace("failover_fence = false", "failover_fence = true")
            + "\n[actions.block_failover]\nargv = [\"x\", \"pause\"]\nruns_on = \"any_node\"\nidempotent = true\ntimeout_ms = 1000\nshows = \"failover_blocked\"\n"
            + "\n[actions.unblock_failover]\nargv = [\"x\", \"resume\"]\nruns_on = \"any_node\"\nidempotent = true\ntimeout_ms = 1000\nshows = \"failover_unblocked\"\n";
        let got = load(&fenced).unwrap_err().to_string();
        assert!(
            got.contains("procedure.failover_fence: is true, but there is no [probes.failover]"),
            "{got}"
        );
        let with_probe = fenced
            + "\n[probes.failover]\nargv = [\"x\", \"show\"]\nruns_on = \"any_node\"\ntimeout_ms = 1000\n[probes.failover.parse]\nformat = \"json\"\nblocked_when = { pointer = \"/pause\", in = [true] }\n";
        let p = load(&with_probe).unwrap();
        let probe = p.probes.failover.as_ref().unwrap();
        assert!(parse_failover(probe, r#"{"state":"running","pause":true}"#).unwrap());
        assert!(!parse_failover(probe, r#"{"state":"running"}"#).unwrap());
        assert_eq!(p.probes.topology.read_exit_codes, [0]);
    }
}
