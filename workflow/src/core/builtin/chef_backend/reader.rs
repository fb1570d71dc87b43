//! chef-backend's reader: parsers for its command output (`status`, `status --simple`, `cluster-status`, the
//! installed version) and `read_probe`, which turns a probe's result into an observation. Formats follow the
//! reference; rows are found by name (order differs between versions), unknown rows are ignored, and anything
//! that does not look like the expected output is an error, never a panic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::error::CoreError;
use crate::core::event::{Observation, Outcome};
use crate::core::observe::{
    Counts, Member, MemberRole, NodeHealth, Quorum, Replication, Service, Topology,
};
use crate::core::profile::Action;
use crate::core::version::normalize_version;

/// The services whose rows `status` must report and the health checks read.
pub const KNOWN_SERVICES: [&str; 4] = ["leaderl", "etcd", "postgresql", "elasticsearch"];

/// A service's local runit state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    /// `running (pid N)`.
    Running {
        /// The pid, when printed.
        pid: Option<u32>,
    },
    /// `down`.
    Down,
    /// Anything else, verbatim.
    Other(String),
}

/// The "Distributed Node Status" column, typed per service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Distributed {
    /// `leader: 1; waiting: 0; follower: 2; total: 3`.
    Leaderl {
        /// Nodes that see themselves as leader.
        leader: u32,
        /// Nodes waiting for a leader.
        waiting: u32,
        /// Followers.
        follower: u32,
        /// Cluster size.
        total: u32,
    },
    /// `health: green; healthy nodes: 3/3`.
    Etcd {
        /// `green`, `yellow`, `red`...
        health: String,
        /// Healthy members.
        healthy: u32,
        /// Members.
        total: u32,
    },
    /// `leader: 1; offline: 0; syncing: 0; synced: 2`.
    Postgresql {
        /// Leaders.
        leader: u32,
        /// Offline replicas.
        offline: u32,
        /// Replicas still syncing.
        syncing: u32,
        /// Synced replicas.
        synced: u32,
    },
    /// `state: green; nodes online: 3/3`.
    Elasticsearch {
        /// `green`, `yellow`, `red`.
        state: String,
        /// Nodes online.
        online: u32,
        /// Nodes expected.
        total: u32,
    },
    /// `error: ...`.
    Error(String),
    /// A text this parser does not understand, verbatim (treated as unhealthy by the checks).
    Unrecognized(String),
}

/// One row of `chef-backend-ctl status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// The local runit state.
    pub state: ServiceState,
    /// `Time in State`, verbatim (e.g. `0d 0h 43m 35s`).
    pub time_in_state: String,
    /// The distributed status.
    pub distributed: Distributed,
}

/// The parsed output of `chef-backend-ctl status`: the known services by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StatusReport {
    /// Rows of [`KNOWN_SERVICES`] found in the output.
    pub services: BTreeMap<String, ServiceRow>,
}

fn parse_err(what: &'static str, message: impl Into<String>) -> CoreError {
    CoreError::Parse {
        what,
        message: message.into(),
    }
}

fn is_time_token(token: &str) -> bool {
    let Some(last) = token.chars().last() else {
        return false;
    };
    matches!(last, 'd' | 'h' | 'm' | 's')
        && token.len() > 1
        && token[..token.len() - 1].chars().all(|c| c.is_ascii_digit())
}

/// `key: value; key: value` pairs; keys lower-cased, inner spaces kept.
fn key_values(text: &str) -> BTreeMap<String, String> {
    text.split(';')
        .filter_map(|part| {
            let (k, v) = part.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

fn ratio(value: &str) -> Option<(u32, u32)> {
    let (a, b) = value.split_once('/')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

fn distributed(service: &str, text: &str) -> Distributed {
    let trimmed = text.trim();
    if let Some(rest) = trimmed.strip_prefix("error:") {
        return Distributed::Error(rest.trim().to_string());
    }
    let kv = key_values(trimmed);
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u32>().ok());
    let parsed = match service {
        "leaderl" => (|| {
            Some(Distributed::Leaderl {
                leader: num("leader")?,
                waiting: num("waiting")?,
                follower: num("follower")?,
                total: num("total")?,
            })
        })(),
        "etcd" => (|| {
            let (healthy, total) = ratio(kv.get("healthy nodes")?)?;
            Some(Distributed::Etcd {
                health: kv.get("health")?.clone(),
                healthy,
                total,
            })
        })(),
        "postgresql" => (|| {
            Some(Distributed::Postgresql {
                leader: num("leader")?,
                offline: num("offline")?,
                syncing: num("syncing")?,
                synced: num("synced")?,
            })
        })(),
        "elasticsearch" => (|| {
            let (online, total) = ratio(kv.get("nodes online")?)?;
            Some(Distributed::Elasticsearch {
                state: kv.get("state")?.clone(),
                online,
                total,
            })
        })(),
        _ => None,
    };
    parsed.unwrap_or_else(|| Distributed::Unrecognized(trimmed.to_string()))
}

fn parse_status_row(tokens: &[&str]) -> Result<ServiceRow, CoreError> {
    const WHAT: &str = "chef-backend-ctl status";
    let Some(first) = tokens.get(1) else {
        return Err(parse_err(
            WHAT,
            format!("row `{}` has no local status", tokens.join(" ")),
        ));
    };
    let mut i = 2;
    let state = match *first {
        "running" => {
            let mut pid = None;
            if tokens.get(2).is_some_and(|t| t.starts_with("(pid")) {
                i = 3;
                if let Some(p) = tokens.get(3) {
                    pid = p.trim_end_matches(')').parse().ok();
                    i = 4;
                }
            }
            ServiceState::Running { pid }
        }
        "down" => ServiceState::Down,
        other => ServiceState::Other(other.to_string()),
    };
    let time_start = i;
    while i < tokens.len() && i - time_start < 4 && is_time_token(tokens[i]) {
        i += 1;
    }
    let time_in_state = tokens[time_start.min(tokens.len())..i].join(" ");
    let rest = tokens[i.min(tokens.len())..].join(" ");
    Ok(ServiceRow {
        state,
        time_in_state,
        distributed: distributed(tokens[0], &rest),
    })
}

/// Parses `chef-backend-ctl status`.
pub fn parse_status(text: &str) -> Result<StatusReport, CoreError> {
    const WHAT: &str = "chef-backend-ctl status";
    let mut lines = text.lines();
    let header = lines.by_ref().find(|l| {
        let t: Vec<&str> = l.split_whitespace().collect();
        t.first() == Some(&"Service") && t.contains(&"Status")
    });
    if header.is_none() {
        return Err(parse_err(WHAT, "no `Service ... Status` header line"));
    }
    let mut report = StatusReport::default();
    for line in lines {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = tokens.first() else { continue };
        // Newer versions append a `System  Local Status` section (disks); it ends the service table.
        if *name == "System" {
            break;
        }
        if !KNOWN_SERVICES.contains(name) {
            continue;
        }
        report
            .services
            .insert(name.to_string(), parse_status_row(&tokens)?);
    }
    if report.services.is_empty() {
        return Err(parse_err(
            WHAT,
            "no known service rows (leaderl, etcd, postgresql, elasticsearch)",
        ));
    }
    Ok(report)
}

/// One service line of `chef-backend-ctl status --simple` (runit format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimpleService {
    /// Service name.
    pub name: String,
    /// `run`, `down`, `finish`...
    pub state: String,
    /// The pid when running.
    pub pid: Option<u32>,
    /// Seconds in this state.
    pub seconds: Option<u64>,
}

/// Parses `status --simple` (also the `ok: run: ...` lines of `start`/`stop`); the `log:` part is ignored.
pub fn parse_simple_status(text: &str) -> Result<Vec<SimpleService>, CoreError> {
    const WHAT: &str = "chef-backend-ctl status --simple";
    let mut out = Vec::new();
    for line in text.lines() {
        let main = line.split(';').next().unwrap_or("").trim();
        let main = main.strip_prefix("ok:").map(str::trim).unwrap_or(main);
        if main.is_empty() {
            continue;
        }
        let mut parts = main.splitn(3, ':');
        let (Some(state), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let (state, name) = (state.trim(), name.trim());
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !valid(state) || !valid(name) {
            continue;
        }
        let rest = parts.next().unwrap_or("");
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let mut pid = None;
        let mut seconds = None;
        for (i, t) in tokens.iter().enumerate() {
            if *t == "(pid" {
                pid = tokens
                    .get(i + 1)
                    .and_then(|p| p.trim_end_matches(')').parse().ok());
            } else if seconds.is_none() {
                if let Some(n) = t.trim_end_matches(',').strip_suffix('s') {
                    seconds = n.parse().ok();
                }
            }
        }
        out.push(SimpleService {
            name: name.to_string(),
            state: state.to_string(),
            pid,
            seconds,
        });
    }
    if out.is_empty() {
        return Err(parse_err(WHAT, "no `state: service: ...` lines"));
    }
    Ok(out)
}

/// A `Time in State` such as `0d 0h 43m 35s` in milliseconds; `None` if it is not like that.
pub fn duration_ms(text: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut any = false;
    for token in text.split_whitespace() {
        let unit = match token.chars().last()? {
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1_000,
            _ => return None,
        };
        let n: u64 = token[..token.len() - 1].parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        any = true;
    }
    any.then_some(total)
}

impl StatusReport {
    /// The node's view in the core's terms ([`NodeHealth`]) for a cluster of `nodes` members: the four
    /// services (one not reported is there, not running), PostgreSQL's replication counts, etcd's healthy
    /// members, and [`status_problems`].
    pub fn health(&self, nodes: u32) -> NodeHealth {
        let services = KNOWN_SERVICES
            .iter()
            .map(|name| match self.services.get(*name) {
                Some(row) => Service {
                    name: name.to_string(),
                    running: matches!(row.state, ServiceState::Running { .. }),
                    shown: Some(describe_state(&row.state)),
                    detail: format!("{:?}", row.state),
                    in_state_ms: duration_ms(&row.time_in_state),
                },
                None => Service {
                    name: name.to_string(),
                    running: false,
                    shown: None,
                    detail: "not reported".into(),
                    in_state_ms: None,
                },
            })
            .collect();
        let pg = self.services.get("postgresql").map(|r| &r.distributed);
        let counts = match pg {
            Some(Distributed::Postgresql {
                leader,
                syncing,
                synced,
                ..
            }) => Some(Counts {
                leaders: *leader,
                caught_up: *synced,
                catching_up: *syncing,
            }),
            _ => None,
        };
        let quorum = match self.services.get("etcd").map(|r| &r.distributed) {
            Some(Distributed::Etcd { healthy, .. }) => Some(Quorum {
                service: "etcd".into(),
                healthy: *healthy,
            }),
            _ => None,
        };
        NodeHealth {
            services,
            replication: Some(Replication {
                service: "postgresql".into(),
                counts,
                shown: pg.map(|d| format!("{d:?}")),
            }),
            quorum,
            problems: status_problems(self, nodes),
        }
    }
}

/// Problems in a node's `status`: every known service running, one leader, nobody waiting, every replica
/// synced, etcd and Elasticsearch green with all `nodes` members.
pub fn status_problems(report: &StatusReport, nodes: u32) -> Vec<String> {
    let mut problems = Vec::new();
    for name in KNOWN_SERVICES {
        let Some(row) = report.services.get(name) else {
            problems.push(format!("{name}: not reported"));
            continue;
        };
        if !matches!(row.state, ServiceState::Running { .. }) {
            problems.push(format!("{name}: not running ({:?})", row.state));
        }
        match &row.distributed {
            Distributed::Leaderl {
                leader,
                waiting,
                follower,
                total,
            } => {
                if *leader != 1
                    || *waiting != 0
                    || *total != nodes
                    || follower.checked_add(1) != Some(nodes)
                {
                    problems.push(format!(
                        "leaderl: leader: {leader}; waiting: {waiting}; follower: {follower}; total: {total} \
                         (want 1 leader, {} followers of {nodes})",
                        nodes.saturating_sub(1)
                    ));
                }
            }
            Distributed::Etcd {
                health,
                healthy,
                total,
            } => {
                if health != "green" || *healthy != nodes || *total != nodes {
                    problems.push(format!(
                        "etcd: health: {health}; healthy nodes: {healthy}/{total}"
                    ));
                }
            }
            Distributed::Postgresql {
                leader,
                offline,
                syncing,
                synced,
            } => {
                if *leader != 1
                    || *offline != 0
                    || *syncing != 0
                    || synced.checked_add(1) != Some(nodes)
                {
                    problems.push(format!(
                        "postgresql: leader: {leader}; offline: {offline}; syncing: {syncing}; synced: {synced} \
                         (want {} synced)",
                        nodes.saturating_sub(1)
                    ));
                }
            }
            Distributed::Elasticsearch {
                state,
                online,
                total,
            } => {
                if state != "green" || *online != nodes || *total != nodes {
                    problems.push(format!(
                        "elasticsearch: state: {state}; nodes online: {online}/{total}"
                    ));
                }
            }
            Distributed::Error(e) => problems.push(format!("{name}: error: {e}")),
            Distributed::Unrecognized(t) => {
                problems.push(format!("{name}: unrecognised status `{t}`"))
            }
        }
    }
    problems
}

/// A node's role in `cluster-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The leader.
    Leader,
    /// A follower.
    Follower,
    /// The old leader right after a demotion, before it rejoins as follower.
    DeposedLeader,
    /// Not eligible for leadership (failed sync, healed partition).
    WaitingForLeader,
    /// Anything else, verbatim.
    Other(String),
}

impl Role {
    fn parse(text: &str) -> Role {
        match text {
            "leader" => Role::Leader,
            "follower" => Role::Follower,
            "deposed_leader" => Role::DeposedLeader,
            "waiting_for_leader" => Role::WaitingForLeader,
            other => Role::Other(other.to_string()),
        }
    }

    /// The role as `cluster-status` prints it.
    pub fn as_str(&self) -> &str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::DeposedLeader => "deposed_leader",
            Role::WaitingForLeader => "waiting_for_leader",
            Role::Other(text) => text,
        }
    }
}

/// A service state as `status` prints it (`running (pid 12)`, `down`).
pub fn describe_state(state: &ServiceState) -> String {
    match state {
        ServiceState::Running { pid: Some(pid) } => format!("running (pid {pid})"),
        ServiceState::Running { pid: None } => "running".into(),
        ServiceState::Down => "down".into(),
        ServiceState::Other(text) => text.clone(),
    }
}

/// One row of `cluster-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Node name.
    pub name: String,
    /// Node IP.
    pub ip: String,
    /// Node GUID.
    pub guid: String,
    /// leaderl role.
    pub role: Role,
    /// PostgreSQL role (`leader`/`follower`), if printed.
    pub pg: Option<String>,
    /// Elasticsearch role (`master`/`not_master`), if printed.
    pub es: Option<String>,
}

/// The parsed output of `cluster-status`, rows in output order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClusterStatus {
    /// The members.
    pub members: Vec<ClusterMember>,
}

impl ClusterStatus {
    /// Members whose role is leader and whose PostgreSQL is not offline (a leader whose database is down
    /// leads nothing: it takes no writes).
    pub fn leaders(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.role == Role::Leader && m.pg.as_deref() != Some("offline"))
            .map(|m| m.name.as_str())
            .collect()
    }

    /// The single leader, if there is exactly one.
    pub fn sole_leader(&self) -> Option<&str> {
        match self.leaders().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The member named `name`.
    pub fn member(&self, name: &str) -> Option<&ClusterMember> {
        self.members.iter().find(|m| m.name == name)
    }
}

impl ClusterStatus {
    /// The table in the core's terms ([`Topology`]): leaderl's role; in service when leader or follower with
    /// PostgreSQL not offline (a leader whose database is down leads nothing).
    pub fn topology(&self) -> Topology {
        Topology {
            members: self
                .members
                .iter()
                .map(|m| {
                    let offline = m.pg.as_deref() == Some("offline");
                    Member {
                        node: m.name.clone(),
                        known: true,
                        id: m.guid.clone(),
                        role: match m.role {
                            Role::Leader => MemberRole::Leader,
                            Role::Follower => MemberRole::Follower,
                            Role::DeposedLeader => MemberRole::Deposed,
                            Role::WaitingForLeader | Role::Other(_) => MemberRole::Other,
                        },
                        in_service: matches!(m.role, Role::Leader | Role::Follower) && !offline,
                        offline,
                        caught_up: None,
                        label: m.role.as_str().to_string(),
                        listed: format!("{:?}", m.role),
                        shown: format!(
                            "{} (PG {})",
                            m.role.as_str(),
                            m.pg.as_deref().unwrap_or("?")
                        ),
                    }
                })
                .collect(),
        }
    }
}

/// Parses `chef-backend-ctl cluster-status`. Columns are found by the header's names (`Name`, `IP`, `GUID`,
/// `Role`, `PG`, `ES`), not by position; a node row is a line with at least as many fields as the header needs
/// and a hexadecimal GUID. Anything else (a footer, a notice) is ignored, so an extra line does not hide the
/// table; a node missing from the rows is then reported by the health checks, never assumed.
pub fn parse_cluster_status(text: &str) -> Result<ClusterStatus, CoreError> {
    const WHAT: &str = "chef-backend-ctl cluster-status";
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .by_ref()
        .map(|l| l.split_whitespace().collect::<Vec<&str>>())
        .find(|t| t.contains(&"Name") && t.contains(&"Role") && t.contains(&"GUID"))
        .ok_or_else(|| parse_err(WHAT, "no `Name IP GUID Role ...` header line"))?;
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(name_at), Some(guid_at), Some(role_at)) = (col("Name"), col("GUID"), col("Role"))
    else {
        return Err(parse_err(WHAT, "the header lacks Name, GUID or Role"));
    };
    let (ip_at, pg_at, es_at) = (col("IP"), col("PG"), col("ES"));
    let needed = [Some(name_at), Some(guid_at), Some(role_at), ip_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        + 1;
    let mut status = ClusterStatus::default();
    // Linear in the output: a set of the names seen, not a scan of the rows so far.
    let mut seen = std::collections::BTreeSet::new();
    for line in lines {
        let t: Vec<&str> = line.split_whitespace().collect();
        let is_row = t.len() >= needed
            && t[guid_at].len() >= 16
            && t[guid_at].chars().all(|c| c.is_ascii_hexdigit());
        if !is_row {
            continue;
        }
        if !seen.insert(t[name_at]) {
            return Err(parse_err(
                WHAT,
                format!("node `{}` listed twice", t[name_at]),
            ));
        }
        status.members.push(ClusterMember {
            name: t[name_at].to_string(),
            ip: ip_at.map(|i| t[i].to_string()).unwrap_or_default(),
            guid: t[guid_at].to_string(),
            role: Role::parse(t[role_at]),
            pg: pg_at.and_then(|i| t.get(i)).map(|s| s.to_string()),
            es: es_at.and_then(|i| t.get(i)).map(|s| s.to_string()),
        });
    }
    if status.members.is_empty() {
        return Err(parse_err(WHAT, "no node rows"));
    }
    Ok(status)
}

/// The failover settings `chef-backend-ctl cluster-status --json` shows: the cluster's and each node's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FailoverSettings {
    /// Cluster-wide automatic failover (`set-cluster-failover`).
    pub cluster: bool,
    /// Node-level failover (`set-node-failover`) per node name; a node the output does not describe is absent.
    pub nodes: BTreeMap<String, bool>,
    /// Whether the output has a `leader` field at all (its schema is undocumented).
    #[serde(default)]
    pub leader_shown: bool,
    /// The leader the output names (`None` for `"leader": null` or no field; see `leader_shown`). Two plain
    /// fields rather than a nested option, so that the log's JSON reads back exactly (`verify`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Nodes the output shows out of service (`"running": false`, or a role other than leader/follower); only
    /// nodes whose entry has those fields are judged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub out_of_service: Vec<String>,
}

/// Parses the failover settings out of `chef-backend-ctl cluster-status --json`. Its schema is not
/// documented, so only what is needed is read: the top-level `failover` (required) and each `nodes[]`
/// entry's `name` and `failover` (a node without it is left out, and the checks then say it is unknown).
pub fn parse_failover_json(text: &str) -> Result<FailoverSettings, CoreError> {
    const WHAT: &str = "chef-backend-ctl cluster-status --json";
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| parse_err(WHAT, format!("not JSON: {e}")))?;
    let cluster = value
        .get("failover")
        .and_then(serde_json::Value::as_bool)
        .ok_or_else(|| parse_err(WHAT, "no boolean `failover` field"))?;
    let mut nodes = BTreeMap::new();
    let mut out_of_service = Vec::new();
    for node in value
        .get("nodes")
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = node.get("name").and_then(serde_json::Value::as_str);
        let failover = node.get("failover").and_then(serde_json::Value::as_bool);
        if let (Some(name), Some(failover)) = (name, failover) {
            nodes.insert(name.to_string(), failover);
        }
        let running = node.get("running").and_then(serde_json::Value::as_bool);
        let role = node.get("role").and_then(serde_json::Value::as_str);
        if let Some(name) = name {
            if running == Some(false) || role.is_some_and(|r| r != "leader" && r != "follower") {
                out_of_service.push(name.to_string());
            }
        }
    }
    let leader_shown = value.get("leader").is_some();
    let leader = value
        .get("leader")
        .and_then(|l| l.as_str())
        .map(str::to_string);
    Ok(FailoverSettings {
        cluster,
        nodes,
        leader_shown,
        leader,
        out_of_service,
    })
}

/// The version a package file names: `chef-backend_3.1.0-1_amd64.deb` or `chef-backend-3.1.0-1.el7.x86_64.rpm`.
pub fn version_from_package(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    if let Some(stem) = file.strip_suffix(".deb") {
        let mut parts = stem.split('_');
        let (_name, version) = (parts.next()?, parts.next()?);
        return normalize_version(version);
    }
    if let Some(stem) = file.strip_suffix(".rpm") {
        let rest = stem.strip_prefix("chef-backend-")?;
        // `3.1.0-1.el7.x86_64`: upstream up to the first '-', release up to the next '.'.
        let (upstream, tail) = rest.split_once('-')?;
        let release = tail.split('.').next()?;
        return normalize_version(&format!("{upstream}-{release}"));
    }
    None
}

/// Parses the installed-version probe's stdout (`3.1.0-1`, `3.1.0-1.el7`) into `UPSTREAM-RELEASE`.
pub fn parse_version_output(stdout: &str) -> Result<String, CoreError> {
    parse_package_state(stdout).map(|(version, _)| version)
}

/// Parses the version probe's output: `VERSION`, or `STATE VERSION` as printed by
/// `dpkg-query -f='${db:Status-Status} ${Version}'` (`installed 3.1.0-1`, `half-configured 3.1.0-1`).
/// Returns the normalised version and the package state when it is not `installed`.
pub fn parse_package_state(stdout: &str) -> Result<(String, Option<String>), CoreError> {
    const WHAT: &str = "installed version";
    let line = stdout.lines().map(str::trim).find(|l| !l.is_empty());
    let Some(line) = line else {
        return Err(parse_err(WHAT, "empty output"));
    };
    let (state, version) = match line.split_once(char::is_whitespace) {
        Some((state, version)) => (Some(state), version.trim()),
        None => (None, line),
    };
    let version = normalize_version(version)
        .ok_or_else(|| parse_err(WHAT, format!("`{line}` is not a version like 3.1.0-1")))?;
    Ok((
        version,
        state.filter(|s| *s != "installed").map(str::to_string),
    ))
}

/// chef-backend's reader: a probe's result (`action` ended with `outcome`) as an observation. `Err(None)`: the
/// probe did not succeed and its output shows nothing; `Err(Some(e))`: the output could not be read.
pub fn read_probe(
    action: Action,
    outcome: Outcome,
    stdout: &str,
    stderr: &str,
) -> Result<Observation, Option<CoreError>> {
    // `status` exits non-zero on a node whose services are stopped but still prints its table, which is
    // exactly what shows a `stop` took effect: read it whenever the command ran to its end.
    if action == Action::ProbeStatus && outcome == Outcome::Failed {
        if let Ok(status) = parse_status(stdout) {
            return Ok(Observation::NodeStatus { status });
        }
    }
    if outcome != Outcome::Succeeded {
        let text = format!("{stdout}\n{stderr}");
        if action == Action::ProbeVersion
            && outcome == Outcome::Failed
            && (text.contains("no packages found") || text.contains("is not installed"))
        {
            return Ok(Observation::Version {
                version: None,
                state: None,
            });
        }
        return Err(None);
    }
    let parsed = match action {
        Action::ProbeClusterStatus => {
            parse_cluster_status(stdout).map(|status| Observation::ClusterStatus { status })
        }
        Action::ProbeStatus => {
            parse_status(stdout).map(|status| Observation::NodeStatus { status })
        }
        Action::ProbeVersion => {
            parse_package_state(stdout).map(|(v, state)| Observation::Version {
                version: Some(v),
                state,
            })
        }
        Action::ProbeFailover => {
            parse_failover_json(stdout).map(|settings| Observation::Failover { settings })
        }
        Action::ProbePackage => {
            parse_version_output(stdout).map(|version| Observation::Package { version })
        }
        other => {
            return Ok(Observation::Unavailable {
                error: format!("{other} is not a probe"),
            })
        }
    };
    parsed.map_err(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HEALTHY_STATUS: &str = "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3
postgresql     running (pid 6942)  0d 0h 43m 34s  leader: 1; offline: 0; syncing: 0; synced: 2
elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3
";

    const CLUSTER_STATUS: &str = "\
Name       IP              GUID                              Role            PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  deposed_leader  follower  not_master
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader          leader    not_master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower        follower  master
";

    #[test]
    fn golden_healthy_status() {
        let r = parse_status(HEALTHY_STATUS).unwrap();
        let l = &r.services["leaderl"];
        assert_eq!(l.state, ServiceState::Running { pid: Some(6881) });
        assert_eq!(l.time_in_state, "0d 0h 43m 35s");
        assert_eq!(
            l.distributed,
            Distributed::Leaderl {
                leader: 1,
                waiting: 0,
                follower: 2,
                total: 3
            }
        );
        assert_eq!(
            r.services["etcd"].distributed,
            Distributed::Etcd {
                health: "green".into(),
                healthy: 3,
                total: 3
            }
        );
        assert_eq!(
            r.services["postgresql"].distributed,
            Distributed::Postgresql {
                leader: 1,
                offline: 0,
                syncing: 0,
                synced: 2
            }
        );
        assert_eq!(
            r.services["elasticsearch"].distributed,
            Distributed::Elasticsearch {
                state: "green".into(),
                online: 3,
                total: 3
            }
        );
    }

    #[test]
    fn golden_degraded_rows_any_order_with_extras() {
        let text = "\
Service        Local Status        Time in State  Distributed Node Status
postgresql     down                 0d 0h 10m 27s   error: could not reach pgsql leader for replication stats
epmd           running (pid 100)   1d 0h 0m 1s
leaderl        running (pid 22080)  27d 9h 51m 38s  leader: 0; waiting: 3; follower: 0; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3

System         Local Status         Time in State  Distributed Node Status
disks          /var/opt/chef-backend  OK
";
        let r = parse_status(text).unwrap();
        assert_eq!(r.services.len(), 3);
        assert_eq!(r.services["postgresql"].state, ServiceState::Down);
        assert_eq!(
            r.services["postgresql"].distributed,
            Distributed::Error("could not reach pgsql leader for replication stats".into())
        );
        assert_eq!(
            r.services["leaderl"].distributed,
            Distributed::Leaderl {
                leader: 0,
                waiting: 3,
                follower: 0,
                total: 3
            }
        );
        assert_eq!(r.services["leaderl"].time_in_state, "27d 9h 51m 38s");
    }

    #[test]
    fn golden_stopped_node_status() {
        // A stopped node cannot reach its local agents: every service is down with an `error:` column.
        let text = "\
Service        Local Status  Time in State  Distributed Node Status
leaderl        down          0d 0h 0m 4s    error: could not reach leaderl on this node
etcd           down          0d 0h 0m 4s    error: could not reach etcd on this node
postgresql     down          0d 0h 0m 4s    error: could not reach pgsql leader for replication stats
elasticsearch  down          0d 0h 0m 4s    error: could not reach elasticsearch on this node
";
        let r = parse_status(text).unwrap();
        assert_eq!(r.services.len(), 4);
        assert!(r
            .services
            .values()
            .all(|row| row.state == ServiceState::Down));
        assert_eq!(
            r.services["etcd"].distributed,
            Distributed::Error("could not reach etcd on this node".into())
        );
        assert_eq!(r.services["etcd"].time_in_state, "0d 0h 0m 4s");
    }

    #[test]
    fn status_garbage_is_an_error() {
        assert!(parse_status("").is_err());
        assert!(parse_status("hello world").is_err());
        assert!(parse_status("Service Local Status\nfoo bar\n").is_err());
        let e = parse_status("Service Local Status\nleaderl\n").unwrap_err();
        assert!(e.to_string().contains("leaderl"), "{e}");
    }

    #[test]
    fn golden_simple_status() {
        let text = "run: elasticsearch: (pid 6661) 106983s; run: log: (pid 6667) 106983s\n\
                    ok: down: etcd: 393s, normally up\nok: run: postgresql: (pid 12345) 1s\n";
        let s = parse_simple_status(text).unwrap();
        assert_eq!(
            s[0],
            SimpleService {
                name: "elasticsearch".into(),
                state: "run".into(),
                pid: Some(6661),
                seconds: Some(106983)
            }
        );
        assert_eq!(
            s[1],
            SimpleService {
                name: "etcd".into(),
                state: "down".into(),
                pid: None,
                seconds: Some(393)
            }
        );
        assert_eq!(s[2].pid, Some(12345));
        assert!(parse_simple_status("nothing to see").is_err());
    }

    #[test]
    fn golden_cluster_status() {
        let c = parse_cluster_status(CLUSTER_STATUS).unwrap();
        assert_eq!(c.members.len(), 3);
        assert_eq!(c.members[0].role, Role::DeposedLeader);
        assert_eq!(c.members[0].guid, "79d84527cf937f3daa94c1435d0a4249");
        assert_eq!(c.sole_leader(), Some("backend-2"));
        assert_eq!(c.members[2].es.as_deref(), Some("master"));
        let waiting = CLUSTER_STATUS.replace(
            "follower        follower  master",
            "waiting_for_leader follower master",
        );
        assert_eq!(
            parse_cluster_status(&waiting).unwrap().members[2].role,
            Role::WaitingForLeader
        );
        assert!(parse_cluster_status("").is_err());
        assert!(parse_cluster_status("Name IP GUID Role PG ES\n").is_err());
        assert!(parse_cluster_status("Name IP GUID Role PG ES\nbackend-1 1.2.3.4\n").is_err());
    }

    #[test]
    fn cluster_status_columns_are_found_by_the_header_and_footers_are_ignored() {
        let with_footer = format!(
            "{CLUSTER_STATUS}\nCluster failover: enabled (set at 2026-11-01)\nNotice: 3 nodes\n"
        );
        assert_eq!(
            parse_cluster_status(&with_footer).unwrap(),
            parse_cluster_status(CLUSTER_STATUS).unwrap()
        );
        // Columns in another order are read by their names.
        let reordered = "\
Role            Name       GUID                              IP              PG        ES
deposed_leader  backend-1  79d84527cf937f3daa94c1435d0a4249  192.168.33.215  follower  not_master
leader          backend-2  c106c88745ef13517874d7301463afb9  192.168.33.216  leader    not_master
follower        backend-3  4d29bcb5eec25d3674d5b8af132f75b3  192.168.33.217  follower  master
";
        let c = parse_cluster_status(reordered).unwrap();
        assert_eq!(c, parse_cluster_status(CLUSTER_STATUS).unwrap());
        assert_eq!(c.sole_leader(), Some("backend-2"));
        assert!(parse_cluster_status("Name IP\n").is_err());
    }

    #[test]
    fn a_forged_mebibyte_of_cluster_status_is_parsed_in_one_pass() {
        // Issue 12: 1 MiB of rows (about 13,000) used to cost 2.4 s of CPU (every row was compared with every
        // row before it). Now a set of names: the duplicate at the very end is still found.
        let mut text = String::from(
            "Role      Name           GUID                              IP        PG        ES\n",
        );
        let mut i = 0u64;
        while text.len() < (1 << 20) {
            text.push_str(&format!(
                "follower  node-{i:08}  {i:032x}  10.0.0.1  follower  not_master\n"
            ));
            i += 1;
        }
        let rows = parse_cluster_status(&text).unwrap().members.len() as u64;
        assert_eq!(rows, i);
        text.push_str(&format!(
            "leader  node-{:08}  {:032x}  10.0.0.1  leader  master\n",
            0, 1
        ));
        let err = parse_cluster_status(&text).unwrap_err().to_string();
        assert!(err.contains("node `node-00000000` listed twice"), "{err}");
    }

    #[test]
    fn a_leader_whose_database_is_offline_leads_nothing() {
        let text = CLUSTER_STATUS.replace(
            "leader          leader    not_master",
            "leader          offline   offline",
        );
        let c = parse_cluster_status(&text).unwrap();
        assert_eq!(c.leaders(), Vec::<&str>::new());
        assert_eq!(c.sole_leader(), None);
    }

    #[test]
    fn failover_settings_come_from_the_json_cluster_status() {
        let json = r#"{"failover": false, "leader": "backend-2", "nodes": [
            {"name": "backend-1", "role": "follower", "failover": true},
            {"name": "backend-2", "role": "leader", "failover": false},
            {"name": "backend-3", "role": "follower"}]}"#;
        let f = parse_failover_json(json).unwrap();
        assert!(!f.cluster);
        assert_eq!(f.nodes.get("backend-1"), Some(&true));
        assert_eq!(f.nodes.get("backend-2"), Some(&false));
        assert_eq!(
            f.nodes.get("backend-3"),
            None,
            "a node without the field is unknown"
        );
        let e = parse_failover_json(r#"{"leader": null}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("failover"), "{e}");
        assert!(parse_failover_json("Name IP GUID").is_err());
        // The settings read back from the log's JSON exactly as recorded (`verify` re-derives them).
        for json in [
            r#"{"failover": true, "leader": null, "nodes": []}"#,
            r#"{"failover": true, "leader": "backend-2", "nodes": []}"#,
            r#"{"failover": true, "nodes": [{"name": "backend-1", "running": false}]}"#,
        ] {
            let f = parse_failover_json(json).unwrap();
            let back: FailoverSettings =
                serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
            assert_eq!(back, f, "{json}");
        }
    }

    #[test]
    fn the_version_probe_shows_a_half_configured_package() {
        assert_eq!(
            parse_package_state("installed 3.1.0-1\n").unwrap(),
            ("3.1.0-1".to_string(), None)
        );
        assert_eq!(
            parse_package_state("half-configured 3.1.0-1").unwrap(),
            ("3.1.0-1".to_string(), Some("half-configured".to_string()))
        );
        assert_eq!(
            parse_package_state("3.1.0-1.el7").unwrap(),
            ("3.1.0-1".to_string(), None)
        );
        assert!(parse_package_state("installed").is_err());
    }

    #[test]
    fn versions_are_normalised() {
        assert_eq!(parse_version_output("3.1.0-1").unwrap(), "3.1.0-1");
        assert_eq!(parse_version_output("3.1.0-1.el7\n").unwrap(), "3.1.0-1");
        assert!(parse_version_output("").is_err());
        assert!(
            parse_version_output("dpkg-query: no packages found matching chef-backend").is_err()
        );
        assert_eq!(
            version_from_package("/tmp/chef-backend_3.1.0-1_amd64.deb").as_deref(),
            Some("3.1.0-1")
        );
        assert_eq!(
            version_from_package("chef-backend-3.1.0-1.el7.x86_64.rpm").as_deref(),
            Some("3.1.0-1")
        );
        assert_eq!(version_from_package("/tmp/chef-backend.deb"), None);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(text in ".{0,400}") {
                let _ = parse_status(&text);
                let _ = parse_simple_status(&text);
                let _ = parse_cluster_status(&text);
                let _ = parse_version_output(&text);
                let _ = version_from_package(&text);
            }

            #[test]
            fn table_like_input_never_panics(
                rows in proptest::collection::vec(
                    proptest::collection::vec("(leaderl|etcd|postgresql|running|\\(pid|[0-9]+\\)|[0-9]+[dhms]|down|error:|leader:|[0-9/]+;|x|\\s)", 0..10),
                    0..6),
            ) {
                let body: Vec<String> = rows.iter().map(|r| r.join(" ")).collect();
                let status = format!("Service Local Status\n{}", body.join("\n"));
                let _ = parse_status(&status);
                let cluster = format!("Name IP GUID Role PG ES\n{}", body.join("\n"));
                let _ = parse_cluster_status(&cluster);
            }
        }
    }
}
