//! What the cluster last showed of each node, for the operator's view (`status`, `watch`, `replay`): folded
//! from the recorded observations, and from the documented effect of a succeeded action, in the order they were
//! recorded. Each fact carries the time of the result that showed it (the core has no clock: times are the
//! events'). A fact that an action scheduled since may have changed is dropped, so the view says "unknown"
//! rather than show it as current. No decision reads any of this; it changes no event.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::Observation;
use super::observe::{MemberRole, ShownRole, Topology};
use super::profile::Action;

/// A value and when (the result's recorded time) the cluster showed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen<T> {
    /// What was shown.
    pub value: T,
    /// When: the recorded time of the result that showed it.
    pub at_ms: u64,
}

/// A node's PostgreSQL replication as the cluster showed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sync {
    /// It is the leader (nothing to sync from).
    Leader,
    /// A follower whose replica is synced.
    Synced,
    /// A follower still syncing.
    Syncing,
    /// Its PostgreSQL is not running (stopped, or held down after a demotion).
    Offline,
}

impl Sync {
    /// The word the views print.
    pub fn as_str(self) -> &'static str {
        match self {
            Sync::Leader => "leader",
            Sync::Synced => "synced",
            Sync::Syncing => "syncing",
            Sync::Offline => "offline",
        }
    }
}

/// The installed package as a version probe showed it (or as a succeeded install left it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    /// The version; `None`: not installed.
    pub version: Option<String>,
    /// The package tool's state when it is not plainly installed (`half-configured`).
    pub state: Option<String>,
}

/// The latest facts about one node; `None` is "not known now" (never shown, or an action since may have
/// changed it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeFacts {
    /// Its role in the latest `cluster-status`.
    pub role: Option<Seen<ShownRole>>,
    /// Its PostgreSQL replication state.
    pub sync: Option<Seen<Sync>>,
    /// The services its own `status` showed not running (empty: all of them run).
    pub services_down: Option<Seen<Vec<String>>>,
    /// The installed package.
    pub installed: Option<Seen<Installed>>,
    /// The version its services run: the installed version when a start (or `upgrade`) of this upgrade
    /// succeeded; `Some(None)` when its services were shown stopped. chef-backend shows only what is
    /// installed, so a node this upgrade has not restarted runs a version nobody observed.
    pub running: Option<Seen<Option<String>>>,
    /// The latest time anything showed this node (a probe of it, a `cluster-status` listing it, an action of
    /// it that succeeded).
    pub last_seen_ms: Option<u64>,
}

/// PostgreSQL's replication counts in a node's `status` (cluster-wide, as that node sees them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    syncing: u32,
    synced: u32,
}

/// The fold: per node facts, plus the cluster-wide observations that per-node sync states are derived from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Facts {
    pub(crate) nodes: BTreeMap<String, NodeFacts>,
    /// The latest look at the whole cluster, until an action that can move roles is scheduled.
    cluster: Option<Seen<Topology>>,
    /// The latest replication counts, with the same validity.
    counts: Option<Seen<Counts>>,
    /// The system's services, as the first node view showed them (chef-backend: its four).
    pub(crate) services: Vec<String>,
}

impl Facts {
    /// The facts of the cluster file's nodes, none known yet.
    pub(crate) fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Facts {
        Facts {
            nodes: names
                .into_iter()
                .map(|n| (n.to_string(), NodeFacts::default()))
                .collect(),
            ..Facts::default()
        }
    }

    /// `action` was scheduled on `node`: what it may change is no longer known.
    pub(crate) fn scheduled(&mut self, node: &str, action: Action) {
        let moves_roles = match action {
            Action::Install => {
                if let Some(n) = self.nodes.get_mut(node) {
                    n.installed = None;
                }
                return;
            }
            Action::Stop | Action::Start | Action::Upgrade => {
                // A node known not to lead, stopping or starting while another node is known to lead,
                // changes only itself; anything else may elect (or give a lost quorum back).
                let leads =
                    |n: &NodeFacts| n.role.as_ref().map(|r| r.value.role == MemberRole::Leader);
                let another_leads = self
                    .nodes
                    .iter()
                    .any(|(name, n)| name != node && leads(n) == Some(true));
                let this_leads = self.nodes.get(node).and_then(leads);
                !(another_leads && this_leads == Some(false))
            }
            Action::Demote | Action::UpgradeLeader => true,
            Action::BlockFailover
            | Action::UnblockFailover
            | Action::ProbeClusterStatus
            | Action::ProbeStatus
            | Action::ProbeVersion
            | Action::ProbeFailover
            | Action::ProbePackage
            | Action::ProbeRunningVersion => return,
        };
        self.cluster = None;
        self.counts = None;
        if let Some(n) = self.nodes.get_mut(node) {
            n.services_down = None;
            n.role = None;
            n.sync = None;
            if action != Action::Demote {
                n.running = None;
            }
        }
        if moves_roles {
            for n in self.nodes.values_mut() {
                n.role = None;
                n.sync = None;
            }
        }
    }

    /// A step of `action` on `node` succeeded (or an observation showed it took effect) at `at_ms`: what its
    /// command guarantees. `package_version` is the version of the package file the upgrade installs.
    pub(crate) fn succeeded(
        &mut self,
        node: &str,
        action: Action,
        at_ms: u64,
        package_version: &str,
    ) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        if action.is_probe() {
            return;
        }
        n.last_seen_ms = Some(n.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
        match action {
            Action::Install => {
                n.installed = Some(Seen {
                    value: Installed {
                        version: Some(package_version.to_string()),
                        state: None,
                    },
                    at_ms,
                })
            }
            Action::Stop => {
                // Every service is down; which they are is known once any node's view showed them.
                n.services_down = (!self.services.is_empty()).then(|| Seen {
                    value: self.services.clone(),
                    at_ms,
                });
                n.running = Some(Seen { value: None, at_ms });
                n.sync = Some(Seen {
                    value: Sync::Offline,
                    at_ms,
                });
            }
            Action::Start | Action::Upgrade | Action::UpgradeLeader => {
                // The services run what is installed now, if that is known.
                n.running = n
                    .installed
                    .as_ref()
                    .and_then(|i| i.value.version.clone())
                    .map(|v| Seen {
                        value: Some(v),
                        at_ms,
                    });
            }
            _ => {}
        }
    }

    /// A probe (`action`) run on `node` showed `observation`; its result was recorded at `at_ms`.
    pub(crate) fn observed(
        &mut self,
        node: &str,
        action: Action,
        observation: &Observation,
        at_ms: u64,
    ) {
        match observation {
            Observation::ClusterStatus { .. } | Observation::Members { .. } => {
                if let Some(topology) = observation.topology() {
                    self.cluster_status(topology, at_ms)
                }
            }
            Observation::NodeStatus { .. } | Observation::Node { .. } => {
                let Some(health) = observation.node_health(self.nodes.len() as u32) else {
                    return;
                };
                if self.services.is_empty() {
                    self.services = health.services.iter().map(|s| s.name.clone()).collect();
                }
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                n.last_seen_ms = Some(n.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
                let down: Vec<String> = health
                    .not_running()
                    .into_iter()
                    .map(str::to_string)
                    .collect();
                let all_down = health.all_down();
                let pg_down = health.data_down();
                n.services_down = Some(Seen { value: down, at_ms });
                if all_down {
                    n.running = Some(Seen { value: None, at_ms });
                } else if matches!(n.running, Some(Seen { value: None, .. })) {
                    // Shown stopped before, running now: started by someone else, onto a version nobody saw.
                    n.running = None;
                }
                if pg_down {
                    n.sync = Some(Seen {
                        value: Sync::Offline,
                        at_ms,
                    });
                }
                if let Some(c) = health
                    .replication
                    .as_ref()
                    .and_then(|r| r.counts)
                    .filter(|c| c.leaders == 1)
                {
                    self.counts = Some(Seen {
                        value: Counts {
                            syncing: c.catching_up,
                            synced: c.caught_up,
                        },
                        at_ms,
                    });
                    self.derive_sync();
                }
            }
            Observation::Version { version, state } => {
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                n.last_seen_ms = Some(n.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
                n.installed = Some(Seen {
                    value: Installed {
                        version: version.clone(),
                        state: state.clone(),
                    },
                    at_ms,
                });
            }
            Observation::Unavailable { .. } => {
                // The node did not answer (the caller passes only such): its host or executor may be gone, so
                // what it showed before may no longer hold.
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                match action {
                    Action::ProbeStatus | Action::ProbeClusterStatus | Action::ProbeFailover => {
                        n.services_down = None;
                        n.running = None;
                        n.sync = None;
                    }
                    Action::ProbeVersion => n.installed = None,
                    _ => {}
                }
            }
            Observation::Running { version } => {
                let Some(n) = self.nodes.get_mut(node) else {
                    return;
                };
                n.last_seen_ms = Some(n.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
                n.running = Some(Seen {
                    value: Some(version.clone()),
                    at_ms,
                });
            }
            Observation::Failover { .. }
            | Observation::Fence { .. }
            | Observation::Package { .. } => {}
        }
    }

    fn cluster_status(&mut self, status: Topology, at_ms: u64) {
        // A new leader makes every follower re-sync: what was known of their replicas no longer holds.
        let known_leader = self
            .nodes
            .iter()
            .find(|(_, n)| {
                n.role
                    .as_ref()
                    .is_some_and(|r| r.value.role == MemberRole::Leader)
            })
            .map(|(name, _)| name.clone());
        if known_leader
            .as_deref()
            .is_some_and(|l| status.sole_leader() != Some(l))
        {
            for n in self.nodes.values_mut() {
                n.sync = None;
            }
            // Counts taken under the old leader tell nothing about the new one's followers.
            self.counts = None;
        }
        for m in &status.members {
            let Some(n) = self.nodes.get_mut(&m.node).filter(|_| m.known) else {
                continue;
            };
            n.last_seen_ms = Some(n.last_seen_ms.map_or(at_ms, |t| t.max(at_ms)));
            let value = ShownRole {
                role: m.role.clone(),
                label: m.label.clone(),
            };
            let changed = n.role.as_ref().is_none_or(|r| r.value != value);
            n.role = Some(Seen { value, at_ms });
            let sync = if m.offline {
                Some(Sync::Offline)
            } else if m.role == MemberRole::Leader {
                Some(Sync::Leader)
            } else {
                match m.caught_up {
                    Some(true) => Some(Sync::Synced),
                    Some(false) => Some(Sync::Syncing),
                    None => None,
                }
            };
            match sync {
                Some(value) => n.sync = Some(Seen { value, at_ms }),
                // What was derived for another role no longer holds.
                None if changed => n.sync = None,
                None => {}
            }
        }
        self.cluster = Some(Seen {
            value: status,
            at_ms,
        });
        self.derive_sync();
    }

    /// Each follower's sync state from the latest counts, where they tell it: none syncing (all synced), all
    /// syncing, or, the followers whose state is still known taken out, the rest all one way. The counts must
    /// account for exactly the followers `cluster-status` shows, otherwise they are read as telling nothing;
    /// counts that contradict what is known make it unknown.
    fn derive_sync(&mut self) {
        let (Some(cluster), Some(counts)) = (&self.cluster, &self.counts) else {
            return;
        };
        let followers: Vec<String> = cluster
            .value
            .members
            .iter()
            .filter(|m| m.role == MemberRole::Follower && !m.offline)
            .map(|m| m.node.clone())
            .collect();
        let (c, at_ms) = (counts.value, counts.at_ms);
        if u64::from(c.syncing) + u64::from(c.synced) != followers.len() as u64 {
            return;
        }
        let known = |value: Sync| {
            followers
                .iter()
                .filter(|f| {
                    self.nodes
                        .get(f.as_str())
                        .and_then(|n| n.sync.as_ref())
                        .is_some_and(|s| s.value == value)
                })
                .count() as u64
        };
        let (synced, syncing) = (known(Sync::Synced), known(Sync::Syncing));
        let (c_synced, c_syncing) = (u64::from(c.synced), u64::from(c.syncing));
        let set = |facts: &mut Facts, only_unknown: bool, value: Sync| {
            for name in &followers {
                if let Some(n) = facts.nodes.get_mut(name) {
                    let is_known = n
                        .sync
                        .as_ref()
                        .is_some_and(|s| matches!(s.value, Sync::Synced | Sync::Syncing));
                    if !only_unknown || !is_known {
                        n.sync = Some(Seen { value, at_ms });
                    }
                }
            }
        };
        if c.syncing == 0 {
            set(self, false, Sync::Synced);
        } else if c.synced == 0 {
            set(self, false, Sync::Syncing);
        } else if synced > c_synced || syncing > c_syncing {
            // What was known no longer holds: who is which is unknown now.
            for name in &followers {
                if let Some(n) = self.nodes.get_mut(name) {
                    n.sync = None;
                }
            }
        } else if c_syncing == syncing {
            set(self, true, Sync::Synced);
        } else if c_synced == synced {
            set(self, true, Sync::Syncing);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::builtin::chef_backend::{parse_cluster_status, parse_status};

    const CLUSTER: &str = "\
Name       IP              GUID                              Role      PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  leader    leader    master
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  follower  follower  not_master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower  follower  not_master
";

    fn status(syncing: u32, synced: u32) -> Observation {
        let text = format!(
            "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3
postgresql     running (pid 6942)  0d 0h 43m 34s  leader: 1; offline: 0; syncing: {syncing}; synced: {synced}
elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3
"
        );
        Observation::NodeStatus {
            status: parse_status(&text).unwrap(),
        }
    }

    fn cluster(text: &str) -> Observation {
        Observation::ClusterStatus {
            status: parse_cluster_status(text).unwrap(),
        }
    }

    fn sync(f: &Facts, node: &str) -> Option<Sync> {
        f.nodes[node].sync.as_ref().map(|s| s.value)
    }

    #[test]
    fn facts_come_from_observations_and_an_action_makes_them_unknown() {
        let mut f = Facts::new(["backend-1", "backend-2", "backend-3"]);
        assert_eq!(f.nodes["backend-2"], NodeFacts::default());
        f.observed(
            "backend-1",
            Action::ProbeClusterStatus,
            &cluster(CLUSTER),
            10,
        );
        f.observed("backend-1", Action::ProbeStatus, &status(0, 2), 20);
        assert_eq!(sync(&f, "backend-1"), Some(Sync::Leader));
        assert_eq!(sync(&f, "backend-2"), Some(Sync::Synced));
        assert_eq!(f.nodes["backend-2"].last_seen_ms, Some(10));
        assert_eq!(f.nodes["backend-1"].last_seen_ms, Some(20));
        // Stopping a follower while the leader is known: only that follower is unknown now.
        f.scheduled("backend-2", Action::Stop);
        assert_eq!(f.nodes["backend-2"].role, None);
        assert_eq!(sync(&f, "backend-2"), None);
        assert_eq!(sync(&f, "backend-3"), Some(Sync::Synced));
        assert!(f.nodes["backend-1"].role.is_some());
        // A node that cannot be asked: what it showed is not known now.
        f.observed(
            "backend-1",
            Action::ProbeStatus,
            &Observation::Unavailable {
                error: "no answer".into(),
            },
            30,
        );
        assert_eq!(f.nodes["backend-1"].services_down, None);
        assert_eq!(sync(&f, "backend-1"), None);
        // A demotion moves every role.
        f.scheduled("backend-1", Action::Demote);
        assert!(f
            .nodes
            .values()
            .all(|n| n.role.is_none() && n.sync.is_none()));
    }

    #[test]
    fn running_version_is_known_only_from_a_start_with_the_installed_version_known() {
        let mut f = Facts::new(["backend-1", "backend-2", "backend-3"]);
        let version = |v: &str| Observation::Version {
            version: Some(v.into()),
            state: None,
        };
        f.observed("backend-2", Action::ProbeVersion, &version("3.0.0-1"), 5);
        assert_eq!(f.nodes["backend-2"].running, None);
        f.scheduled("backend-2", Action::Stop);
        f.succeeded("backend-2", Action::Stop, 6, "3.1.0-1");
        assert_eq!(
            f.nodes["backend-2"]
                .running
                .as_ref()
                .map(|r| r.value.clone()),
            Some(None)
        );
        f.scheduled("backend-2", Action::Install);
        assert_eq!(f.nodes["backend-2"].installed, None);
        f.succeeded("backend-2", Action::Install, 7, "3.1.0-1");
        f.scheduled("backend-2", Action::Start);
        f.succeeded("backend-2", Action::Start, 8, "3.1.0-1");
        let running = f.nodes["backend-2"].running.clone().unwrap();
        assert_eq!(running.value.as_deref(), Some("3.1.0-1"));
        assert_eq!(running.at_ms, 8);
    }

    #[test]
    fn counts_name_a_follower_only_when_they_can() {
        let mut f = Facts::new(["backend-1", "backend-2", "backend-3"]);
        f.observed(
            "backend-1",
            Action::ProbeClusterStatus,
            &cluster(CLUSTER),
            10,
        );
        // One of two syncing, neither known: who is which is not told.
        f.observed("backend-1", Action::ProbeStatus, &status(1, 1), 20);
        assert_eq!(sync(&f, "backend-2"), None);
        assert_eq!(sync(&f, "backend-3"), None);
        // All synced: both known; then backend-2 restarts and one is syncing: it is backend-2.
        f.observed("backend-1", Action::ProbeStatus, &status(0, 2), 30);
        f.scheduled("backend-2", Action::Start);
        f.observed(
            "backend-1",
            Action::ProbeClusterStatus,
            &cluster(CLUSTER),
            40,
        );
        f.observed("backend-2", Action::ProbeStatus, &status(1, 1), 50);
        assert_eq!(sync(&f, "backend-2"), Some(Sync::Syncing));
        assert_eq!(sync(&f, "backend-3"), Some(Sync::Synced));
        // Counts that contradict what is known make it unknown.
        f.observed("backend-1", Action::ProbeStatus, &status(2, 0), 60);
        assert_eq!(sync(&f, "backend-3"), Some(Sync::Syncing));
        f.observed("backend-1", Action::ProbeStatus, &status(1, 1), 70);
        assert_eq!(sync(&f, "backend-2"), None);
        assert_eq!(sync(&f, "backend-3"), None);
        // A new leader makes every follower re-sync: what was known of them is gone.
        f.observed("backend-1", Action::ProbeStatus, &status(0, 2), 80);
        let moved = CLUSTER
            .replace("leader    leader    master", "follower  follower  master")
            .replace(
                "backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  follower  follower",
                "backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader    leader  ",
            );
        f.observed(
            "backend-3",
            Action::ProbeClusterStatus,
            &cluster(&moved),
            90,
        );
        assert_eq!(sync(&f, "backend-2"), Some(Sync::Leader));
        assert_eq!(sync(&f, "backend-1"), None);
        assert_eq!(sync(&f, "backend-3"), None);
    }
}
