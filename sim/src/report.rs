//! The verdict on everything that happened to a simulated cluster, computed from the journal alone.
//!
//! The report replays the journal's events (not the current state) and judges, from the outside:
//! - Write availability: intervals with no running leader. Intervals inside the window of a *planned*
//!   election (from `demote`, `upgrade --failover` or `promote` until the election ended) are the price of
//!   the switchover and counted separately; any downtime outside such a window makes the run unsafe.
//! - Nodes out of service at once (stopped, syncing, deposed or waiting): more than one is unsafe (S1).
//! - A leader whose services stopped (planned switchovers demote first): unsafe.
//! - A demote (or promote / upgrade --failover) while another node was not a synced follower: unsafe.
//! - The leader of record getting a package while other nodes lack that version: unsafe (S2, leader
//!   upgraded first).
//! - A package installed while the node's services ran is safe only when the node's next restart is
//!   `chef-backend-ctl upgrade` (the documented newer procedure: install, then `upgrade`, which restarts
//!   onto it and waits for the re-sync). A plain stop/restart after it, or services never restarted onto
//!   the installed package by the end, is unsafe.
//! - Cluster failover (or a node's failover) left disabled at the end: unsafe (S3).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::journal::{Entry, Event};
use crate::model::{Pg, Role};

/// Safe or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Safe,
    Unsafe,
}

/// Which safety rule a violation broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// More than one node out of service at once.
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
}

/// One violation, naming nodes and times.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub rule: Rule,
    pub at_ms: u64,
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
    /// Downtime outside planned election windows (must be 0 for a safe run).
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
}

/// The report of `baton-sim report`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub verdict: Verdict,
    pub violations: Vec<Violation>,
    pub start_ms: u64,
    pub end_ms: u64,
    pub commands: usize,
    pub failed_commands: usize,
    pub downtime: Downtime,
    pub max_out_of_service: usize,
    pub max_out_of_service_at_ms: u64,
    pub max_out_of_service_nodes: Vec<String>,
    pub installed_while_running: Vec<InstallWhileRunning>,
    pub unsynced_demotes: Vec<UnsyncedDemote>,
    pub installs: BTreeMap<String, u32>,
    pub versions: BTreeMap<String, NodeVersions>,
    pub failover_at_end: bool,
    pub node_failover_off_at_end: Vec<String>,
}

#[derive(Clone, Debug)]
struct NodeView {
    up: bool,
    role: Role,
    pg: Pg,
    installed: String,
    running: String,
    failover: bool,
}

impl NodeView {
    fn in_service(&self) -> bool {
        self.up
            && (self.role == Role::Leader || (self.role == Role::Follower && self.pg == Pg::Synced))
    }
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

struct Replay {
    start: u64,
    nodes: BTreeMap<String, NodeView>,
    failover: bool,
    failover_set_at: u64,
    leader_of_record: Option<String>,
    outage_since: Option<u64>,
    outages: Vec<Interval>,
    window_since: Option<u64>,
    windows: Vec<Interval>,
    episode: Option<(u64, Vec<String>)>,
    max_out: (usize, u64, Vec<String>),
    pending_installs: BTreeMap<String, usize>,
    r: Report,
}

impl Replay {
    fn rel(&self, t: u64) -> String {
        let d = t.saturating_sub(self.start);
        format!("+{}.{:03}s", d / 1000, d % 1000)
    }

    fn violate(&mut self, rule: Rule, at_ms: u64, nodes: Vec<String>, message: String) {
        self.r.violations.push(Violation {
            rule,
            at_ms,
            nodes,
            message,
        });
    }

    fn apply(&mut self, at: u64, e: &Event) {
        match e {
            Event::ClusterCreated {
                nodes,
                version,
                leader,
                failover,
            } => {
                self.start = at;
                self.r.start_ms = at;
                self.failover = *failover;
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
                            failover: true,
                        },
                    );
                    self.r.installs.insert(n.clone(), 0);
                }
            }
            Event::NodeChanged {
                node, up, role, pg, ..
            } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.up = *up;
                    v.role = *role;
                    v.pg = *pg;
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
                if *was_leader {
                    let what = if *failover {
                        "an unplanned election followed"
                    } else {
                        "cluster failover was off, so no leader until it returns"
                    };
                    let msg = format!(
                        "leader {node} stopped at {} by `chef-backend-ctl {by}`: {what}",
                        self.rel(at)
                    );
                    self.violate(Rule::LeaderStopped, at, vec![node.clone()], msg);
                }
                if let Some(k) = self.pending_installs.remove(node) {
                    let ok = by == "upgrade";
                    self.r.installed_while_running[k].followed_by_upgrade = ok;
                    if !ok {
                        let iw = self.r.installed_while_running[k].clone();
                        let msg = format!(
                            "{node}: package {} installed at {} while its services ran, then restarted by `chef-backend-ctl {by}` at {} instead of `chef-backend-ctl upgrade`",
                            iw.version,
                            self.rel(iw.at_ms),
                            self.rel(at)
                        );
                        self.violate(Rule::InstalledWhileRunning, at, vec![node.clone()], msg);
                    }
                }
            }
            Event::ServicesStarted { node, version, .. } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.running = version.clone();
                }
            }
            Event::PackageInstalled {
                node,
                version,
                services_running,
            } => {
                *self.r.installs.entry(node.clone()).or_default() += 1;
                if self.leader_of_record.as_ref() == Some(node) {
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
                }
                if *services_running {
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
            Event::ClusterFailoverSet { enabled, .. } => {
                self.failover = *enabled;
                self.failover_set_at = at;
            }
            Event::NodeFailoverSet { node, enabled } => {
                if let Some(v) = self.nodes.get_mut(node) {
                    v.failover = *enabled;
                }
            }
            Event::DemoteRequested { node, by, unsynced } if !unsynced.is_empty() => {
                self.r.unsynced_demotes.push(UnsyncedDemote {
                    node: node.clone(),
                    at_ms: at,
                    by: by.clone(),
                    unsynced: unsynced.clone(),
                });
                let msg = format!(
                    "`chef-backend-ctl {by}` demoted {node} at {} while {} not a synced follower",
                    self.rel(at),
                    unsynced.join(", ") + if unsynced.len() == 1 { " was" } else { " were" }
                );
                let mut nodes = vec![node.clone()];
                nodes.extend(unsynced.iter().cloned());
                self.violate(Rule::DemoteWithUnsyncedFollower, at, nodes, msg);
            }
            Event::ElectionStarted { trigger, .. } if trigger.planned() => {
                self.window_since.get_or_insert(at);
            }
            Event::LeaderElected { trigger, .. } | Event::ElectionFailed { trigger, .. }
                if trigger.planned() =>
            {
                if let Some(s) = self.window_since.take() {
                    self.windows.push(Interval {
                        start_ms: s,
                        end_ms: at,
                    });
                }
            }
            _ => {}
        }
    }

    /// Evaluates the cluster after all events at time `at`.
    fn settle(&mut self, at: u64) {
        let has_leader = self.nodes.values().any(|v| v.up && v.role == Role::Leader);
        match (has_leader, self.outage_since) {
            (false, None) => self.outage_since = Some(at),
            (true, Some(s)) => {
                self.outages.push(Interval {
                    start_ms: s,
                    end_ms: at,
                });
                self.outage_since = None;
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
        if out.len() > 1 {
            match &mut self.episode {
                Some((_, names)) => {
                    for n in out {
                        if !names.contains(&n) {
                            names.push(n);
                        }
                    }
                }
                None => self.episode = Some((at, out)),
            }
        } else if let Some((s, names)) = self.episode.take() {
            self.close_episode(s, at, names);
        }
    }

    fn close_episode(&mut self, s: u64, end: u64, mut names: Vec<String>) {
        names.sort();
        let msg = format!(
            "{} nodes out of service at once from {} to {} ({} ms): {}",
            names.len(),
            self.rel(s),
            self.rel(end),
            end - s,
            names.join(", ")
        );
        self.violate(Rule::TooManyOutOfService, s, names, msg);
    }

    fn finish(mut self, end: u64) -> Report {
        if let Some(s) = self.outage_since.take() {
            self.outages.push(Interval {
                start_ms: s,
                end_ms: end,
            });
        }
        if let Some(s) = self.window_since.take() {
            self.windows.push(Interval {
                start_ms: s,
                end_ms: end,
            });
        }
        if let Some((s, names)) = self.episode.take() {
            self.close_episode(s, end, names);
        }
        self.outages.retain(|i| i.duration_ms() > 0);
        let d = &mut self.r.downtime;
        d.intervals = self.outages.clone();
        d.total_ms = d.intervals.iter().map(Interval::duration_ms).sum();
        d.longest_ms = d
            .intervals
            .iter()
            .map(Interval::duration_ms)
            .max()
            .unwrap_or(0);
        d.election_windows = self.windows.clone();
        d.outside_election_intervals = self
            .outages
            .iter()
            .flat_map(|i| outside(*i, &self.windows))
            .collect();
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
        for iv in d.outside_election_intervals.clone() {
            let msg = format!(
                "no leader accepted writes from {} to {} ({} ms), outside any planned election window",
                self.rel(iv.start_ms),
                self.rel(iv.end_ms),
                iv.duration_ms()
            );
            let last = self.leader_of_record.clone().into_iter().collect();
            self.violate(Rule::WriteOutage, iv.start_ms, last, msg);
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
            let msg = format!(
                "cluster failover left disabled at the end (set off at {})",
                self.rel(self.failover_set_at)
            );
            self.violate(Rule::FailoverLeftOff, self.failover_set_at, vec![], msg);
        }
        let off: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, v)| !v.failover)
            .map(|(n, _)| n.clone())
            .collect();
        if !off.is_empty() {
            let msg = format!(
                "node failover left disabled at the end on {}",
                off.join(", ")
            );
            self.violate(Rule::NodeFailoverLeftOff, end, off.clone(), msg);
        }
        self.r.violations.sort_by_key(|v| v.at_ms);
        self.r.verdict = if self.r.violations.is_empty() {
            Verdict::Safe
        } else {
            Verdict::Unsafe
        };
        self.r.end_ms = end;
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
            nodes: BTreeMap::new(),
            failover: true,
            failover_set_at: 0,
            leader_of_record: None,
            outage_since: None,
            outages: Vec::new(),
            window_since: None,
            windows: Vec::new(),
            episode: None,
            max_out: (0, 0, Vec::new()),
            pending_installs: BTreeMap::new(),
            r: Report {
                verdict: Verdict::Safe,
                violations: Vec::new(),
                start_ms: 0,
                end_ms,
                commands: 0,
                failed_commands: 0,
                downtime: Downtime::default(),
                max_out_of_service: 0,
                max_out_of_service_at_ms: 0,
                max_out_of_service_nodes: Vec::new(),
                installed_while_running: Vec::new(),
                unsynced_demotes: Vec::new(),
                installs: BTreeMap::new(),
                versions: BTreeMap::new(),
                failover_at_end: true,
                node_failover_off_at_end: Vec::new(),
            },
        };
        let events: Vec<(u64, &Event)> = journal
            .iter()
            .filter_map(|e| match e {
                Entry::Event { at_ms, event } => Some((*at_ms, event)),
                Entry::Command { exit_code, .. } => {
                    rp.r.commands += 1;
                    if *exit_code != 0 {
                        rp.r.failed_commands += 1;
                    }
                    None
                }
            })
            .collect();
        for (k, (at, e)) in events.iter().enumerate() {
            rp.apply(*at, e);
            if events.get(k + 1).is_none_or(|(next, _)| next != at) {
                rp.settle(*at);
            }
        }
        rp.finish(end_ms.max(events.last().map(|(t, _)| *t).unwrap_or(0)))
    }

    /// Whether some violation broke `rule`.
    pub fn has(&self, rule: Rule) -> bool {
        self.violations.iter().any(|v| v.rule == rule)
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
            o.push_str(&format!(
                "  - [{}] {}\n",
                serde_json::to_value(v.rule)
                    .ok()
                    .and_then(|j| j.as_str().map(String::from))
                    .unwrap_or_default(),
                v.message
            ));
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
            o.push_str(&format!(
                "  {n}: installed {}, running {}\n",
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
