//! The verdict on everything that happened to a simulated cluster, computed from the journal alone.
//!
//! The report replays the journal's events (not the current state) and judges, from the outside.
//!
//! **Attribution.** Every journal line carries its actor (`BATON_SIM_ACTOR`): `orchestrator` for Baton's
//! commands, anything else (`environment` for `baton-sim crash`/`restart`/`fault`, `operator` for a human's
//! `promote`) is the environment. Time-driven transitions (a sync completing) have no actor; an election
//! carries the actor of the command that started it (a demote, a stop of the leader...). Violations are
//! charged to the orchestrator only:
//! - a rule about one command (`leader_stopped`, `demote_with_unsynced_follower`, `installed_while_running`,
//!   `leader_upgraded_first`, `failover_on_while_node_out`, `leader_runs_old_version` at an election)
//!   when the orchestrator ran that command (or started that election);
//! - a rule about a condition over time (`too_many_out_of_service`, `write_outage`) when an orchestrator
//!   command started it or extended it while it lasted (took another node out of service, stopped a node,
//!   disabled failover); a condition the environment alone caused is an environment incident;
//! - `failover_blocked_without_leader` always: whoever removed the leader, Baton must give the cluster its
//!   failover back (its emergency exit), so failover off for longer than the tolerance with no leader is
//!   charged to it;
//! - end-state rules (`failover_left_off`, `node_failover_left_off`, `node_down_at_end`) when the
//!   orchestrator caused that state (it set failover off last, it stopped the node last);
//!   `mixed_versions_at_end` and an old leader at the end when the orchestrator installed anything.
//!
//! Everything not charged is listed in `incidents` (with the rule it would have broken, if any), as are
//! the environment's own commands.
//!
//! **Out of service** means not the leader and not a synced follower: stopped, starting, syncing, deposed,
//! waiting for a leader. After every leader change the followers re-sync from the new leader (their role
//! stays `follower` while their postgresql is not synced) and the deposed leader re-syncs too: those
//! re-syncs are the switchover's own price, so nodes out of service *only* for that reason do not make
//! `too_many_out_of_service`; any other node out of service at the same time does (e.g. stopping the
//! deposed leader, or another node, before the others have re-synced).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::journal::{Entry, Event, ORCHESTRATOR};
use crate::model::{Pg, Role};

/// Safe or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Safe,
    Unsafe,
}

/// Which safety rule a violation broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// More than one node out of service at once (beyond a switchover's own re-syncs).
    TooManyOutOfService,
    /// The leader's services were stopped.
    LeaderStopped,
    /// No leader accepted writes outside a planned election window.
    WriteOutage,
    /// A switchover while another node was not a synced follower.
    DemoteWithUnsyncedFollower,
    /// The leader was upgraded before the followers.
    LeaderUpgradedFirst,
    /// A package installed under running services was not followed by `upgrade`.
    InstalledWhileRunning,
    /// Cluster failover disabled at the end.
    FailoverLeftOff,
    /// A node's failover disabled at the end.
    NodeFailoverLeftOff,
    /// A node became leader (by an election the orchestrator caused) while running an older version than
    /// another running node, or leads so at the end.
    LeaderRunsOldVersion,
    /// A node's services are not running at the end.
    NodeDownAtEnd,
    /// Installed or running versions differ between nodes at the end.
    MixedVersionsAtEnd,
    /// Cluster failover off while the cluster had no leader for longer than the tolerance.
    FailoverBlockedWithoutLeader,
    /// A `stop` (or `restart`) took a node out while cluster failover was on (runbook step 1 skipped).
    FailoverOnWhileNodeOut,
}

impl Rule {
    /// The rule's name as in the JSON and the human report (`too_many_out_of_service`).
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|j| j.as_str().map(String::from))
            .unwrap_or_default()
    }
}

/// One violation, naming nodes and times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub at_ms: u64,
    pub nodes: Vec<String>,
    pub message: String,
}

/// Something the environment did or caused: not charged to the orchestrator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub at_ms: u64,
    /// Who acted (`environment`, `operator`, ...); `cluster` for a condition with no single actor.
    pub actor: String,
    /// The rule the condition would have broken had the orchestrator caused it (`None`: a command).
    pub rule: Option<Rule>,
    pub nodes: Vec<String>,
    pub message: String,
}

/// A time interval (unix ms, end exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Interval {
    pub fn duration_ms(&self) -> u64 {
        self.end_ms.saturating_sub(self.start_ms)
    }
}

/// Write availability.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downtime {
    /// All intervals without a leader accepting writes.
    pub intervals: Vec<Interval>,
    pub total_ms: u64,
    pub longest_ms: u64,
    /// Windows of planned elections (demote, upgrade --failover, promote).
    pub election_windows: Vec<Interval>,
    /// Downtime inside planned election windows.
    pub inside_election_ms: u64,
    /// Downtime outside planned election windows (whoever caused it).
    pub outside_election_intervals: Vec<Interval>,
    pub outside_election_ms: u64,
    pub outside_election_longest_ms: u64,
}

/// A package installed while the node's services ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallWhileRunning {
    pub node: String,
    pub at_ms: u64,
    pub version: String,
    /// Whether the node's next restart was `chef-backend-ctl upgrade` (the safe, newer procedure).
    pub followed_by_upgrade: bool,
}

/// A switchover while some follower was not synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsyncedDemote {
    pub node: String,
    pub at_ms: u64,
    pub by: String,
    pub unsynced: Vec<String>,
}

/// Versions of a node at the end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVersions {
    pub installed: String,
    pub running: String,
    /// dpkg's state of the installed package: `installed`, or `half-configured` after a failed install.
    #[serde(default)]
    pub package: String,
    /// Whether the node's services run at the end.
    #[serde(default)]
    pub up: bool,
}

/// The report of `baton-sim report`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    /// Rule violations charged to the orchestrator.
    pub violations: Vec<Violation>,
    /// The end state of an unfinished upgrade (mixed versions, the old leader still leading): flagged, named
    /// and shown, but not unsafe by themselves: they are the runbook's own intermediate state, where a halted
    /// upgrade stops. A run that claims completion must have none (the tests check that).
    #[serde(default)]
    pub flags: Vec<Violation>,
    /// What the environment did or caused (not charged), in time order.
    #[serde(default)]
    pub incidents: Vec<Incident>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub commands: usize,
    pub failed_commands: usize,
    pub downtime: Downtime,
    pub max_out_of_service: usize,
    pub max_out_of_service_at_ms: u64,
    pub max_out_of_service_nodes: Vec<String>,
    /// The most nodes out of service at once not counting the switchovers' own re-syncs (the deposed
    /// leader and the followers re-syncing from a new leader): at most 1 in a safe rolling upgrade.
    #[serde(default)]
    pub max_out_of_service_outside_switchover: usize,
    pub installed_while_running: Vec<InstallWhileRunning>,
    pub unsynced_demotes: Vec<UnsyncedDemote>,
    pub installs: BTreeMap<String, u32>,
    pub versions: BTreeMap<String, NodeVersions>,
    pub failover_at_end: bool,
    pub node_failover_off_at_end: Vec<String>,
    /// The tolerance of `failover_blocked_without_leader` (from `init`).
    #[serde(default)]
    pub leaderless_tolerance_ms: u64,
}

#[derive(Clone, Debug)]
struct NodeView {
    up: bool,
    role: Role,
    pg: Pg,
    installed: String,
    running: String,
    package: &'static str,
    failover: bool,
    failover_set_by: Option<String>,
    /// Out of service only because of a switchover's re-sync (the deposed leader, followers re-syncing
    /// from a new leader).
    excused: bool,
    /// Who last took the services down.
    stopped_by: Option<String>,
    /// Why the last attempt to start the services failed, if none succeeded since (a `start-fails` fault, a
    /// half-configured package): the node could not be brought back by anyone's `start`.
    start_failed: Option<String>,
}

impl NodeView {
    fn in_service(&self) -> bool {
        self.up
            && (self.role == Role::Leader || (self.role == Role::Follower && self.pg == Pg::Synced))
    }

    fn leads(&self) -> bool {
        self.up && self.role == Role::Leader
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// How a stop is named in messages: `chef-backend-ctl stop`, or a crash.
fn stopped_how(by: &str) -> String {
    if by == "crash" {
        "a crash".to_string()
    } else {
        format!("`chef-backend-ctl {by}`")
    }
}

fn is_orch(actor: Option<&str>) -> bool {
    actor == Some(ORCHESTRATOR)
}

/// Subtracts the union of `windows` from `iv`.
fn outside(iv: Interval, windows: &[Interval]) -> Vec<Interval> {
    let mut parts = vec![iv];
    for w in windows {
        let mut next = Vec::new();
        for p in parts {
            if w.end_ms <= p.start_ms || w.start_ms >= p.end_ms {
                next.push(p);
                continue;
            }
            if w.start_ms > p.start_ms {
                next.push(Interval {
                    start_ms: p.start_ms,
                    end_ms: w.start_ms,
                });
            }
            if w.end_ms < p.end_ms {
                next.push(Interval {
                    start_ms: w.end_ms,
                    end_ms: p.end_ms,
                });
            }
        }
        parts = next;
    }
    parts.retain(|p| p.duration_ms() > 0);
    parts
}

/// An ongoing condition: since when, which nodes, whether the orchestrator started or extended it.
#[derive(Clone, Debug)]
struct Episode {
    since: u64,
    nodes: Vec<String>,
    /// Nodes that were out only for a switchover's re-sync at some point of the episode.
    resync: BTreeSet<String>,
    charged: bool,
}

/// What the events since the last settle point did, for attribution.
#[derive(Clone, Debug, Default)]
struct Batch {
    /// Nodes the orchestrator took (further) out of service.
    worsened: BTreeSet<String>,
    /// The orchestrator removed the leader or kept the cluster from getting one (stop, demote, quorum
    /// loss, failover disabled, a failed election it started).
    disrupted: bool,
}

struct Replay {
    start: u64,
    tolerance: u64,
    nodes: BTreeMap<String, NodeView>,
    failover: bool,
    failover_set_at: u64,
    failover_set_by: Option<String>,
    leader_of_record: Option<String>,
    orchestrator_installed: bool,
    outage: Option<(u64, bool)>,
    outages: Vec<(Interval, bool)>,
    blocked_since: Option<u64>,
    window_since: Option<u64>,
    windows: Vec<Interval>,
    episode: Option<Episode>,
    max_out: (usize, u64, Vec<String>),
    pending_installs: BTreeMap<String, usize>,
    batch: Batch,
    /// When the orchestrator looked at sync state (`status`: the commands' finish times, sorted).
    looks: Vec<u64>,
    /// When the environment (any actor but the orchestrator) last changed the cluster.
    last_env_change: Option<u64>,
    r: Report,
}

/// An orchestrator command that changes the cluster less than this long after its last look, when the
/// environment changed the cluster in between, acted on a picture no orchestrator could have had fresher:
/// a race, listed as an incident, not charged. A stale picture (a look older than this) is charged.
const RACE_MS: u64 = 500;

impl Replay {
    fn rel(&self, t: u64) -> String {
        let d = t.saturating_sub(self.start);
        format!("+{}.{:03}s", d / 1000, d % 1000)
    }

    fn flag(&mut self, rule: Rule, at_ms: u64, nodes: Vec<String>, message: String) {
        self.r.flags.push(Violation {
            rule,
            at_ms,
            nodes,
            message,
        });
    }

    fn violate(&mut self, rule: Rule, at_ms: u64, nodes: Vec<String>, message: String) {
        self.r.violations.push(Violation {
            rule,
            at_ms,
            nodes,
            message,
        });
    }

    /// A violation when `charged`, else an environment incident naming the rule.
    fn charge(
        &mut self,
        charged: bool,
        actor: Option<&str>,
        rule: Rule,
        at_ms: u64,
        nodes: Vec<String>,
        message: String,
    ) {
        if charged {
            self.violate(rule, at_ms, nodes, message);
        } else {
            self.r.incidents.push(Incident {
                at_ms,
                actor: actor.unwrap_or("cluster").to_string(),
                rule: Some(rule),
                nodes,
                message,
            });
        }
    }

    fn has_leader(&self) -> bool {
        self.nodes.values().any(NodeView::leads)
    }

    /// The newest version any running node runs.
    fn newest_running(&self) -> Option<String> {
        self.nodes
            .values()
            .filter(|v| v.up)
            .map(|v| v.running.clone())
            .max_by_key(|v| version_key(v))
    }

    /// Whether an orchestrator event at `at` raced an environment change it could not have seen.
    fn raced(&self, at: u64) -> Option<(u64, u64)> {
        let env = self.last_env_change?;
        let look = self.looks.iter().rev().find(|t| **t <= at).copied()?;
        (env >= look && env <= at && at - look <= RACE_MS).then_some((look, env))
    }

    fn apply(&mut self, at: u64, actor: Option<&str>, e: &Event) {
        if actor.is_some_and(|a| a != ORCHESTRATOR) {
            self.last_env_change = Some(at);
        }
        let raced = if is_orch(actor) { self.raced(at) } else { None };
        if let Some((look, env)) = raced {
            self.r.incidents.push(Incident {
                at_ms: at,
                actor: ORCHESTRATOR.to_string(),
                rule: None,
                nodes: vec![],
                message: format!(
                    "race: the orchestrator acted {} ms after its last look, and the environment changed the \
                     cluster {} ms before: {e:?} is not charged",
                    at - look,
                    at - env
                ),
            });
        }
        let orch = is_orch(actor) && raced.is_none();
        match e {
            Event::ClusterCreated {
                nodes,
                version,
                leader,
                failover,
                leaderless_tolerance_ms,
            } => {
                self.start = at;
                self.r.start_ms = at;
                self.failover = *failover;
                if let Some(t) = leaderless_tolerance_ms {
                    self.tolerance = *t;
                }
                self.leader_of_record = Some(leader.clone());
                for n in nodes {
                    let lead = n == leader;
                    self.nodes.insert(
                        n.clone(),
                        NodeView {
                            up: true,
                            role: if lead { Role::Leader } else { Role::Follower },
                            pg: if lead { Pg::Leader } else { Pg::Synced },
                            installed: version.clone(),
                            running: version.clone(),
                            package: "installed",
                            failover: true,
                            failover_set_by: None,
                            excused: false,
                            stopped_by: None,
                            start_failed: None,
                        },
                    );
                    self.r.installs.insert(n.clone(), 0);
                }
            }
            Event::NodeChanged {
                node, up, role, pg, ..
            } => {
                let Some(v) = self.nodes.get_mut(node) else {
                    return;
                };
                let (was_in, was_excused, was_up, was_leader) =
                    (v.in_service(), v.excused, v.up, v.leads());
                v.up = *up;
                v.role = *role;
                v.pg = *pg;
                if !v.up {
                    v.excused = false;
                }
                let now_out = !v.in_service();
                if orch && now_out && !v.excused && (was_in || was_excused || (was_up && !v.up)) {
                    self.batch.worsened.insert(node.clone());
                }
                if orch && was_leader && !v.leads() {
                    self.batch.disrupted = true;
                }
                if *up && *role == Role::Leader {
                    self.leader_of_record = Some(node.clone());
                }
            }
            Event::ServicesStopped {
                node,
                by,
                was_leader,
                failover,
            } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.stopped_by = actor.map(String::from);
                }
                if orch {
                    self.batch.disrupted |= *was_leader;
                }
                if *was_leader {
                    let what = if *failover {
                        "an unplanned election followed"
                    } else {
                        "cluster failover was off, so no leader until it returns"
                    };
                    let msg = format!(
                        "leader {node} stopped at {} by {}{}: {what}",
                        self.rel(at),
                        stopped_how(by),
                        actor.map(|a| format!(" ({a})")).unwrap_or_default()
                    );
                    self.charge(
                        orch,
                        actor,
                        Rule::LeaderStopped,
                        at,
                        vec![node.clone()],
                        msg,
                    );
                }
                if orch && *failover && (by == "stop" || by == "restart") {
                    let msg = format!(
                        "{node} taken out by `chef-backend-ctl {by}` at {} while cluster failover was on (the runbook blocks failover first)",
                        self.rel(at)
                    );
                    self.violate(Rule::FailoverOnWhileNodeOut, at, vec![node.clone()], msg);
                }
                if let Some(k) = self.pending_installs.remove(node) {
                    let ok = by == "upgrade";
                    self.r.installed_while_running[k].followed_by_upgrade = ok;
                    if !ok {
                        let iw = self.r.installed_while_running[k].clone();
                        let msg = format!(
                            "{node}: package {} installed at {} while its services ran, then restarted by {} at {} instead of `chef-backend-ctl upgrade`",
                            iw.version,
                            self.rel(iw.at_ms),
                            stopped_how(by),
                            self.rel(at)
                        );
                        self.violate(Rule::InstalledWhileRunning, at, vec![node.clone()], msg);
                    }
                }
            }
            Event::ServicesStarted { node, version, .. } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.running = version.clone();
                    v.start_failed = None;
                }
            }
            Event::StartFailed { node, reason, .. } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.start_failed = Some(if reason.is_empty() {
                        "its services failed to start".to_string()
                    } else {
                        reason.clone()
                    });
                }
            }
            Event::PackageInstalled {
                node,
                version,
                services_running,
            } => {
                *self.r.installs.entry(node.clone()).or_default() += 1;
                self.orchestrator_installed |= orch;
                if self.leader_of_record.as_ref() == Some(node) && orch {
                    let behind: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|(n, v)| *n != node && v.installed != *version)
                        .map(|(n, v)| format!("{n} (at {})", v.installed))
                        .collect();
                    if !behind.is_empty() {
                        let msg = format!(
                            "leader {node} upgraded to {version} at {} before the followers: {}",
                            self.rel(at),
                            behind.join(", ")
                        );
                        self.violate(Rule::LeaderUpgradedFirst, at, vec![node.clone()], msg);
                    }
                }
                if let Some(v) = self.nodes.get_mut(node) {
                    v.installed = version.clone();
                    v.package = "installed";
                }
                if *services_running && orch {
                    self.r.installed_while_running.push(InstallWhileRunning {
                        node: node.clone(),
                        at_ms: at,
                        version: version.clone(),
                        followed_by_upgrade: false,
                    });
                    self.pending_installs
                        .insert(node.clone(), self.r.installed_while_running.len() - 1);
                }
            }
            Event::InstallFailed { node, version, .. } => {
                self.orchestrator_installed |= orch;
                if let Some(v) = self.nodes.get_mut(node) {
                    v.installed = version.clone();
                    v.package = "half-configured";
                }
            }
            Event::ClusterFailoverSet { enabled, .. } => {
                self.failover = *enabled;
                self.failover_set_at = at;
                self.failover_set_by = actor.map(String::from);
                if orch && !*enabled {
                    self.batch.disrupted = true;
                }
            }
            Event::NodeFailoverSet { node, enabled } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.failover = *enabled;
                    v.failover_set_by = actor.map(String::from);
                }
                if orch && !*enabled {
                    self.batch.disrupted = true;
                }
            }
            Event::DemoteRequested { node, by, unsynced } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.excused = true;
                }
                if unsynced.is_empty() {
                    return;
                }
                if orch {
                    self.r.unsynced_demotes.push(UnsyncedDemote {
                        node: node.clone(),
                        at_ms: at,
                        by: by.clone(),
                        unsynced: unsynced.clone(),
                    });
                }
                let msg = format!(
                    "`chef-backend-ctl {by}` demoted {node} at {} while {} not a synced follower",
                    self.rel(at),
                    unsynced.join(", ") + if unsynced.len() == 1 { " was" } else { " were" }
                );
                let mut nodes = vec![node.clone()];
                nodes.extend(unsynced.iter().cloned());
                self.charge(
                    orch,
                    actor,
                    Rule::DemoteWithUnsyncedFollower,
                    at,
                    nodes,
                    msg,
                );
            }
            Event::ElectionStarted { trigger, .. } if trigger.planned() => {
                self.window_since.get_or_insert(at);
            }
            Event::LeaderElected { node, trigger } => {
                if trigger.planned() {
                    if let Some(s) = self.window_since.take() {
                        self.windows.push(Interval {
                            start_ms: s,
                            end_ms: at,
                        });
                    }
                }
                // Its followers re-sync from it: out of service for the switchover's sake.
                for (n, v) in self.nodes.iter_mut() {
                    if n != node && v.up && (v.in_service() || v.excused) {
                        v.excused = true;
                    }
                }
                let running = self
                    .nodes
                    .get(node)
                    .map(|v| v.running.clone())
                    .unwrap_or_default();
                if let Some(newest) = self.newest_running() {
                    if version_key(&running) < version_key(&newest) {
                        let msg = format!(
                            "{node} elected leader at {} ({trigger:?} election) while running {running}, older than {newest} on another running node",
                            self.rel(at)
                        );
                        // A switchover the orchestrator ran must pick an upgraded node; an election that only
                        // replaces a lost leader (failover re-enabled, quorum back) takes whoever is synced, as
                        // the cluster would without any orchestrator: reported, not charged.
                        self.charge(
                            orch && trigger.planned(),
                            actor,
                            Rule::LeaderRunsOldVersion,
                            at,
                            vec![node.clone()],
                            msg,
                        );
                    }
                }
            }
            Event::ElectionFailed { trigger, .. } => {
                if trigger.planned() {
                    if let Some(s) = self.window_since.take() {
                        self.windows.push(Interval {
                            start_ms: s,
                            end_ms: at,
                        });
                    }
                }
                if orch {
                    self.batch.disrupted = true;
                }
            }
            Event::QuorumLost { .. } if orch => self.batch.disrupted = true,
            _ => {}
        }
    }

    /// Evaluates the cluster after all events at time `at`.
    fn settle(&mut self, at: u64) {
        let batch = std::mem::take(&mut self.batch);
        for v in self.nodes.values_mut() {
            if v.in_service() {
                v.excused = false;
            }
        }
        let has_leader = self.has_leader();
        match (has_leader, self.outage) {
            (false, None) => self.outage = Some((at, batch.disrupted)),
            (false, Some((s, charged))) => {
                let extended = batch.disrupted || !batch.worsened.is_empty();
                self.outage = Some((s, charged || extended));
            }
            (true, Some((s, charged))) => {
                self.outages.push((
                    Interval {
                        start_ms: s,
                        end_ms: at,
                    },
                    charged,
                ));
                self.outage = None;
            }
            (true, None) => {}
        }
        let blocked = !has_leader && !self.failover;
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(at),
            (false, Some(s)) => {
                self.blocked_since = None;
                self.check_blocked(s, at);
            }
            _ => {}
        }
        let out: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, v)| !v.in_service())
            .map(|(n, _)| n.clone())
            .collect();
        if out.len() > self.max_out.0 {
            self.max_out = (out.len(), at, out.clone());
        }
        let unexcused = out.iter().filter(|n| !self.nodes[*n].excused).count();
        self.r.max_out_of_service_outside_switchover =
            self.r.max_out_of_service_outside_switchover.max(unexcused);
        let too_many = out.len() > 1 && out.iter().any(|n| !self.nodes[n].excused);
        if too_many {
            let charged_now = out.iter().any(|n| batch.worsened.contains(n));
            let resync: BTreeSet<String> = out
                .iter()
                .filter(|n| self.nodes[*n].excused)
                .cloned()
                .collect();
            match &mut self.episode {
                Some(ep) => {
                    ep.charged |= charged_now;
                    ep.resync.extend(resync);
                    for n in out {
                        if !ep.nodes.contains(&n) {
                            ep.nodes.push(n);
                        }
                    }
                }
                None => {
                    self.episode = Some(Episode {
                        since: at,
                        nodes: out,
                        resync,
                        charged: charged_now,
                    })
                }
            }
        } else if let Some(ep) = self.episode.take() {
            self.close_episode(ep, at);
        }
    }

    fn check_blocked(&mut self, s: u64, end: u64) {
        let d = end.saturating_sub(s);
        if d > self.tolerance {
            let msg = format!(
                "cluster failover stayed off with no leader from {} to {} ({d} ms, tolerance {} ms): nobody could be elected",
                self.rel(s),
                self.rel(end),
                self.tolerance
            );
            self.violate(Rule::FailoverBlockedWithoutLeader, s, vec![], msg);
        }
    }

    fn close_episode(&mut self, ep: Episode, end: u64) {
        let mut names = ep.nodes;
        names.sort();
        let resync: Vec<String> = ep.resync.into_iter().collect();
        let msg = format!(
            "{} nodes out of service at once from {} to {} ({} ms): {}{}",
            names.len(),
            self.rel(ep.since),
            self.rel(end),
            end - ep.since,
            names.join(", "),
            if resync.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} still re-syncing after the leader change)",
                    resync.join(", ")
                )
            }
        );
        let actor = (!ep.charged).then_some("environment");
        self.charge(
            ep.charged,
            actor,
            Rule::TooManyOutOfService,
            ep.since,
            names,
            msg,
        );
    }

    fn finish(mut self, end: u64) -> Report {
        if let Some((s, charged)) = self.outage.take() {
            self.outages.push((
                Interval {
                    start_ms: s,
                    end_ms: end,
                },
                charged,
            ));
        }
        if let Some(s) = self.blocked_since.take() {
            self.check_blocked(s, end);
        }
        if let Some(s) = self.window_since.take() {
            self.windows.push(Interval {
                start_ms: s,
                end_ms: end,
            });
        }
        if let Some(ep) = self.episode.take() {
            self.close_episode(ep, end);
        }
        self.outages.retain(|(i, _)| i.duration_ms() > 0);
        let d = &mut self.r.downtime;
        d.intervals = self.outages.iter().map(|(i, _)| *i).collect();
        d.total_ms = d.intervals.iter().map(Interval::duration_ms).sum();
        d.longest_ms = d
            .intervals
            .iter()
            .map(Interval::duration_ms)
            .max()
            .unwrap_or(0);
        d.election_windows = self.windows.clone();
        let outside_parts: Vec<(Interval, bool)> = self
            .outages
            .iter()
            .flat_map(|(i, c)| outside(*i, &self.windows).into_iter().map(|p| (p, *c)))
            .collect();
        d.outside_election_intervals = outside_parts.iter().map(|(i, _)| *i).collect();
        d.outside_election_ms = d
            .outside_election_intervals
            .iter()
            .map(Interval::duration_ms)
            .sum();
        d.outside_election_longest_ms = d
            .outside_election_intervals
            .iter()
            .map(Interval::duration_ms)
            .max()
            .unwrap_or(0);
        d.inside_election_ms = d.total_ms - d.outside_election_ms;
        for (iv, charged) in outside_parts {
            let msg = format!(
                "no leader accepted writes from {} to {} ({} ms), outside any planned election window",
                self.rel(iv.start_ms),
                self.rel(iv.end_ms),
                iv.duration_ms()
            );
            let last = self.leader_of_record.clone().into_iter().collect();
            let actor = (!charged).then_some("environment");
            self.charge(charged, actor, Rule::WriteOutage, iv.start_ms, last, msg);
        }
        for (node, k) in std::mem::take(&mut self.pending_installs) {
            let iw = self.r.installed_while_running[k].clone();
            let running = self
                .nodes
                .get(&node)
                .map(|v| v.running.clone())
                .unwrap_or_default();
            if running != iw.version {
                let msg = format!(
                    "{node}: package {} installed at {} while its services ran; they still run {running} (never restarted onto it with `chef-backend-ctl upgrade`)",
                    iw.version,
                    self.rel(iw.at_ms)
                );
                self.violate(Rule::InstalledWhileRunning, iw.at_ms, vec![node], msg);
            }
        }
        if !self.failover {
            let by = self.failover_set_by.clone();
            let msg = format!(
                "cluster failover left disabled at the end (set off at {}{})",
                self.rel(self.failover_set_at),
                by.as_deref()
                    .map(|a| format!(" by {a}"))
                    .unwrap_or_default()
            );
            let at = self.failover_set_at;
            self.charge(
                is_orch(by.as_deref()),
                by.as_deref(),
                Rule::FailoverLeftOff,
                at,
                vec![],
                msg,
            );
        }
        let off: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, v)| !v.failover)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &off {
            let by = self.nodes[n].failover_set_by.clone();
            let msg = format!("node failover left disabled at the end on {n}");
            self.charge(
                is_orch(by.as_deref()),
                by.as_deref(),
                Rule::NodeFailoverLeftOff,
                end,
                vec![n.clone()],
                msg,
            );
        }
        let down: Vec<(String, Option<String>, Option<String>)> = self
            .nodes
            .iter()
            .filter(|(_, v)| !v.up)
            .map(|(n, v)| (n.clone(), v.stopped_by.clone(), v.start_failed.clone()))
            .collect();
        for (n, by, start_failed) in down {
            let msg = format!(
                "{n}: services not running at the end (last taken down by {}){}",
                by.as_deref().unwrap_or("nobody"),
                start_failed
                    .as_deref()
                    .map(|r| format!("; the last start failed: {r}"))
                    .unwrap_or_default()
            );
            // A node whose start was tried and cannot succeed (a fault of the node itself) is the node's, not
            // the orchestrator's: it tried to bring it back.
            self.charge(
                is_orch(by.as_deref()) && start_failed.is_none(),
                by.as_deref(),
                Rule::NodeDownAtEnd,
                end,
                vec![n],
                msg,
            );
        }
        if self.orchestrator_installed {
            let installed: BTreeSet<&str> =
                self.nodes.values().map(|v| v.installed.as_str()).collect();
            let running: BTreeSet<&str> = self.nodes.values().map(|v| v.running.as_str()).collect();
            if installed.len() > 1 || running.len() > 1 {
                let list: Vec<String> = self
                    .nodes
                    .iter()
                    .map(|(n, v)| format!("{n} installed {} running {}", v.installed, v.running))
                    .collect();
                let msg = format!("versions differ at the end: {}", list.join("; "));
                self.flag(
                    Rule::MixedVersionsAtEnd,
                    end,
                    self.nodes.keys().cloned().collect(),
                    msg,
                );
            }
            let leader = self.nodes.iter().find(|(_, v)| v.leads());
            if let (Some((l, v)), Some(newest)) = (leader, self.newest_running()) {
                if version_key(&v.running) < version_key(&newest) {
                    let msg = format!(
                        "{l} is still the leader at the end, running {} while another running node runs {newest}",
                        v.running
                    );
                    let l = l.clone();
                    self.flag(Rule::LeaderRunsOldVersion, end, vec![l], msg);
                }
            }
        }
        self.r.violations.sort_by_key(|v| v.at_ms);
        self.r.incidents.sort_by_key(|i| i.at_ms);
        self.r.verdict = if self.r.violations.is_empty() {
            Verdict::Safe
        } else {
            Verdict::Unsafe
        };
        self.r.end_ms = end;
        self.r.leaderless_tolerance_ms = self.tolerance;
        self.r.max_out_of_service = self.max_out.0;
        self.r.max_out_of_service_at_ms = self.max_out.1;
        self.r.max_out_of_service_nodes = self.max_out.2.clone();
        self.r.versions = self
            .nodes
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    NodeVersions {
                        installed: v.installed.clone(),
                        running: v.running.clone(),
                        package: v.package.to_string(),
                        up: v.up,
                    },
                )
            })
            .collect();
        self.r.failover_at_end = self.failover;
        self.r.node_failover_off_at_end = off;
        self.r
    }
}

impl Report {
    /// Judges a journal; intervals still open are closed at `end_ms`.
    pub fn from_journal(journal: &[Entry], end_ms: u64) -> Report {
        let mut rp = Replay {
            start: 0,
            tolerance: crate::model::Timings::default().leaderless_tolerance(),
            nodes: BTreeMap::new(),
            failover: true,
            failover_set_at: 0,
            failover_set_by: None,
            leader_of_record: None,
            orchestrator_installed: false,
            outage: None,
            outages: Vec::new(),
            blocked_since: None,
            window_since: None,
            windows: Vec::new(),
            episode: None,
            max_out: (0, 0, Vec::new()),
            pending_installs: BTreeMap::new(),
            batch: Batch::default(),
            looks: Vec::new(),
            last_env_change: None,
            r: Report {
                verdict: Verdict::Safe,
                violations: Vec::new(),
                flags: Vec::new(),
                incidents: Vec::new(),
                start_ms: 0,
                end_ms,
                commands: 0,
                failed_commands: 0,
                downtime: Downtime::default(),
                max_out_of_service: 0,
                max_out_of_service_at_ms: 0,
                max_out_of_service_nodes: Vec::new(),
                max_out_of_service_outside_switchover: 0,
                installed_while_running: Vec::new(),
                unsynced_demotes: Vec::new(),
                installs: BTreeMap::new(),
                versions: BTreeMap::new(),
                failover_at_end: true,
                node_failover_off_at_end: Vec::new(),
                leaderless_tolerance_ms: 0,
            },
        };
        let mut events: Vec<(u64, Option<&str>, &Event)> = Vec::new();
        for e in journal {
            match e {
                Entry::Event {
                    at_ms,
                    event,
                    actor,
                } => events.push((*at_ms, actor.as_deref(), event)),
                Entry::Command {
                    node,
                    argv,
                    exit_code,
                    started_ms,
                    finished_ms,
                    actor,
                    ..
                } => {
                    rp.r.commands += 1;
                    // Only `status` shows sync state (the leader's counts): the look that could have seen a
                    // follower go out of sync. (A moved leader is seen by `cluster-status`, and an
                    // orchestrator that saw it does not act.)
                    let looks = argv.first().map(String::as_str) == Some("chef-backend-ctl")
                        && argv.get(1).map(String::as_str) == Some("status");
                    if actor == ORCHESTRATOR && looks {
                        rp.looks.push(*finished_ms);
                    }
                    if *exit_code != 0 {
                        rp.r.failed_commands += 1;
                    }
                    if actor != ORCHESTRATOR {
                        rp.r.incidents.push(Incident {
                            at_ms: *started_ms,
                            actor: actor.clone(),
                            rule: None,
                            nodes: vec![node.clone()],
                            message: format!(
                                "{actor} ran `{}` on {node} (exit {exit_code})",
                                argv.join(" ")
                            ),
                        });
                    }
                }
            }
        }
        rp.looks.sort_unstable();
        for (k, (at, actor, e)) in events.iter().enumerate() {
            rp.apply(*at, *actor, e);
            if events.get(k + 1).is_none_or(|(next, _, _)| next != at) {
                rp.settle(*at);
            }
        }
        let last = events.last().map(|(t, _, _)| *t).unwrap_or(0);
        // Incidents of commands are timed from the cluster's creation like everything else.
        rp.finish(end_ms.max(last))
    }

    /// Whether some violation broke `rule`.
    pub fn has(&self, rule: Rule) -> bool {
        self.violations.iter().any(|v| v.rule == rule)
    }

    /// Whether `rule` is flagged (an unfinished end state) or violated.
    pub fn flags_or_has(&self, rule: Rule) -> bool {
        self.has(rule) || self.flags.iter().any(|v| v.rule == rule)
    }

    /// The rules broken, in order of first violation, each once.
    pub fn rules(&self) -> Vec<Rule> {
        let mut out = Vec::new();
        for v in &self.violations {
            if !out.contains(&v.rule) {
                out.push(v.rule);
            }
        }
        out
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let rel = |t: u64| {
            let d = t.saturating_sub(self.start_ms);
            format!("+{}.{:03}s", d / 1000, d % 1000)
        };
        let mut o = String::new();
        let verdict = match self.verdict {
            Verdict::Safe => "SAFE",
            Verdict::Unsafe => "UNSAFE",
        };
        o.push_str(&format!("Verdict: {verdict}\n"));
        for v in &self.violations {
            o.push_str(&format!("  - [{}] {}\n", v.rule.name(), v.message));
        }
        if !self.flags.is_empty() {
            o.push_str("Flags (an unfinished upgrade's end state, not unsafe by itself):\n");
            for v in &self.flags {
                o.push_str(&format!("  - [{}] {}\n", v.rule.name(), v.message));
            }
        }
        if !self.incidents.is_empty() {
            o.push_str(&format!(
                "Environment incidents (not charged to the orchestrator): {}\n",
                self.incidents.len()
            ));
            for i in &self.incidents {
                let rule = i
                    .rule
                    .map(|r| format!("[{}] ", r.name()))
                    .unwrap_or_default();
                o.push_str(&format!(
                    "  - {} {}: {rule}{}\n",
                    rel(i.at_ms),
                    i.actor,
                    i.message
                ));
            }
        }
        o.push_str(&format!(
            "Journal: {} commands ({} failed), {} to {} (times relative to cluster creation)\n",
            self.commands,
            self.failed_commands,
            rel(self.start_ms),
            rel(self.end_ms)
        ));
        let d = &self.downtime;
        o.push_str(&format!(
            "Write availability: downtime {} ms in {} interval(s), longest {} ms\n",
            d.total_ms,
            d.intervals.len(),
            d.longest_ms
        ));
        o.push_str(&format!(
            "  inside planned election windows: {} ms ({} window(s))\n",
            d.inside_election_ms,
            d.election_windows.len()
        ));
        o.push_str(&format!(
            "  outside planned election windows: {} ms, longest {} ms\n",
            d.outside_election_ms, d.outside_election_longest_ms
        ));
        for iv in &d.intervals {
            o.push_str(&format!(
                "    no leader {} .. {} ({} ms)\n",
                rel(iv.start_ms),
                rel(iv.end_ms),
                iv.duration_ms()
            ));
        }
        o.push_str(&format!(
            "Most nodes out of service at once: {}",
            self.max_out_of_service
        ));
        if self.max_out_of_service > 0 {
            o.push_str(&format!(
                " at {} ({})",
                rel(self.max_out_of_service_at_ms),
                self.max_out_of_service_nodes.join(", ")
            ));
        }
        o.push('\n');
        o.push_str(&format!(
            "  not counting switchover re-syncs: {}\n",
            self.max_out_of_service_outside_switchover
        ));
        o.push_str("Installed while services ran: ");
        if self.installed_while_running.is_empty() {
            o.push_str("none\n");
        } else {
            let items: Vec<String> = self
                .installed_while_running
                .iter()
                .map(|i| {
                    let then = if i.followed_by_upgrade {
                        "then upgrade"
                    } else {
                        "not followed by upgrade"
                    };
                    format!("{} {} at {} ({then})", i.node, i.version, rel(i.at_ms))
                })
                .collect();
            o.push_str(&format!("{}\n", items.join("; ")));
        }
        o.push_str("Demotes with an unsynced follower: ");
        if self.unsynced_demotes.is_empty() {
            o.push_str("none\n");
        } else {
            let items: Vec<String> = self
                .unsynced_demotes
                .iter()
                .map(|u| {
                    format!(
                        "{} at {} (unsynced: {})",
                        u.node,
                        rel(u.at_ms),
                        u.unsynced.join(", ")
                    )
                })
                .collect();
            o.push_str(&format!("{}\n", items.join("; ")));
        }
        let installs: Vec<String> = self
            .installs
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        o.push_str(&format!("Installs per node: {}\n", installs.join(", ")));
        o.push_str("Versions at the end:\n");
        for (n, v) in &self.versions {
            let pkg = if v.package.is_empty() || v.package == "installed" {
                String::new()
            } else {
                format!(" ({})", v.package)
            };
            let down = if v.up { "" } else { ", services down" };
            o.push_str(&format!(
                "  {n}: installed {}{pkg}, running {}{down}\n",
                v.installed, v.running
            ));
        }
        o.push_str(&format!(
            "Cluster failover at the end: {}\n",
            if self.failover_at_end { "on" } else { "off" }
        ));
        if !self.node_failover_off_at_end.is_empty() {
            o.push_str(&format!(
                "Node failover off at the end: {}\n",
                self.node_failover_off_at_end.join(", ")
            ));
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_subtracts_windows() {
        let iv = Interval {
            start_ms: 0,
            end_ms: 100,
        };
        let w = [
            Interval {
                start_ms: 10,
                end_ms: 20,
            },
            Interval {
                start_ms: 90,
                end_ms: 200,
            },
        ];
        assert_eq!(
            outside(iv, &w),
            vec![
                Interval {
                    start_ms: 0,
                    end_ms: 10
                },
                Interval {
                    start_ms: 20,
                    end_ms: 90
                }
            ]
        );
        assert!(outside(
            Interval {
                start_ms: 12,
                end_ms: 18
            },
            &w
        )
        .is_empty());
    }
}
