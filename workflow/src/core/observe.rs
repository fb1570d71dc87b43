//! The observations every safety rule is stated on, whatever the system: who leads and how each member stands
//! ([`Topology`]) and one node's own view of itself and of the cluster ([`NodeHealth`]). A system's readers
//! produce them: the named built-in readers of chef-backend (`builtin/chef_backend/reader.rs`, reached through
//! the `builtin` seam, from `cluster-status` and `status`) and a profile file's JSON and regex parsers
//! (`profile_file`). The decisions, the guard and the health checks read
//! nothing else, so the rules are written once (ARCHITECTURE.md, "Profiles").

use serde::{Deserialize, Serialize};

/// A member's role in a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Leads.
    Leader,
    /// Follows.
    Follower,
    /// Led and stepped down, and has not rejoined as a follower yet (an election may be running).
    Deposed,
    /// Neither (waiting for a leader, not eligible, or a role the reader does not know).
    Other,
}

/// One member of a [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name from the cluster file, or the raw identity when it names no node (`known` false).
    pub node: String,
    /// Whether the reader could name the member as a node (`false`: `node` is the raw identity). It does not
    /// say the node is in the cluster file: chef-backend's reader names every row by its `Name` column and sets
    /// it for all of them, so a check against the cluster file must compare `node` with the file's names too
    /// (as `health::cluster_problems` does).
    pub known: bool,
    /// The member's identity as the system shows it (chef-backend's GUID, etcd's endpoint); the plan records it.
    #[serde(default)]
    pub id: String,
    /// Its role.
    pub role: MemberRole,
    /// Whether it is in service: it leads or follows and its data service is up.
    pub in_service: bool,
    /// Whether its data service is down (it serves nothing, whatever its role says).
    #[serde(default)]
    pub offline: bool,
    /// Whether it is caught up with the leader (`None`: the probe does not say).
    pub caught_up: Option<bool>,
    /// The role as the system names it (`deposed_leader`), for the views.
    #[serde(default)]
    pub label: String,
    /// The role in problem lists (`DeposedLeader`: the spelling recorded reasons have, so that replaying an
    /// existing log reproduces them byte for byte).
    #[serde(default)]
    pub listed: String,
    /// How the system shows the member, in the guard's reasons (`deposed_leader (PG follower)`).
    #[serde(default)]
    pub shown: String,
}

/// A member's role with the system's name for it, as the views show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShownRole {
    /// The role.
    pub role: MemberRole,
    /// The system's name for it (`deposed_leader`).
    pub label: String,
}

impl ShownRole {
    /// The system's name for the role.
    pub fn as_str(&self) -> &str {
        &self.label
    }
}

/// Who leads and how each member stands, as one look at the cluster showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The members, in output order.
    pub members: Vec<Member>,
}

impl Topology {
    /// The in-service members that lead (more than one is a split brain; none is an election).
    pub fn leaders(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Leader && m.in_service)
            .map(|m| m.node.as_str())
            .collect()
    }

    /// The single leader, if there is exactly one.
    pub fn sole_leader(&self) -> Option<&str> {
        match self.leaders().as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The member for `node`.
    pub fn member(&self, node: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.known && m.node == node)
    }

    /// The followers in service, in output order.
    pub fn followers_in_service(&self) -> impl Iterator<Item = &Member> {
        self.members
            .iter()
            .filter(|m| m.role == MemberRole::Follower && m.in_service)
    }
}

/// One of a node's services, as the node's own probe shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Whether it runs.
    pub running: bool,
    /// Its state as the system prints it (`running (pid 12)`, `down`); `None`: the probe did not report it.
    pub shown: Option<String>,
    /// Its state in problem lists.
    pub detail: String,
    /// How long it has been in that state, where the probe says.
    pub in_state_ms: Option<u64>,
}

/// Replication counts as one node sees them (on the leader: its followers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Members that see themselves as leader.
    pub leaders: u32,
    /// Followers caught up with the leader.
    pub caught_up: u32,
    /// Followers still catching up.
    pub catching_up: u32,
}

/// The replicated data service of a node and what it shows of replication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replication {
    /// The service that replicates (its name in reasons).
    pub service: String,
    /// The counts, when the probe shows them.
    pub counts: Option<Counts>,
    /// What the probe showed instead of counts; `None`: the service was not reported at all.
    pub shown: Option<String>,
}

/// The consensus store's health as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quorum {
    /// The store (its name in reasons).
    pub service: String,
    /// Its healthy members.
    pub healthy: u32,
}

/// One node's own view: its services, and what it sees of replication and quorum.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Its services, every one the system has (one not reported is there, not running).
    pub services: Vec<Service>,
    /// Replication, where the probe shows it.
    pub replication: Option<Replication>,
    /// The consensus store's health, where the probe shows it.
    pub quorum: Option<Quorum>,
    /// What keeps the cluster, as this node sees it, from being fully healthy: every service running, one
    /// leader, every follower caught up (empty: healthy). The reader states it in the system's own terms.
    pub problems: Vec<String>,
}

impl NodeHealth {
    /// One member's own view as a profile file's node probe reads it: its one service (named after the
    /// system) up or down, and whether it is caught up. It says nothing of the other members: a profile's
    /// cluster-wide facts come from its topology probe.
    pub fn of_member(service: &str, up: bool, caught_up: Option<bool>) -> NodeHealth {
        let shown = if up { "up" } else { "down" };
        let mut problems = Vec::new();
        if !up {
            problems.push(format!("{service}: down on this node"));
        }
        if caught_up == Some(false) {
            problems.push(format!("{service}: not caught up with the leader"));
        }
        NodeHealth {
            services: vec![Service {
                name: service.to_string(),
                running: up,
                shown: Some(shown.to_string()),
                detail: shown.to_string(),
                in_state_ms: None,
            }],
            replication: None,
            quorum: None,
            problems,
        }
    }

    /// The services not running (one not reported counts as not running).
    pub fn not_running(&self) -> Vec<&str> {
        self.services
            .iter()
            .filter(|s| !s.running)
            .map(|s| s.name.as_str())
            .collect()
    }

    /// Whether every service is down.
    pub fn all_down(&self) -> bool {
        self.services.iter().all(|s| !s.running)
    }

    /// Whether the replicated data service is down (or not reported).
    pub fn data_down(&self) -> bool {
        self.replication.as_ref().is_some_and(|r| {
            self.services
                .iter()
                .any(|s| s.name == r.service && !s.running)
        })
    }
}
