//! The cluster model: node and cluster state, and every transition as a pure function of `now`.
//!
//! Processes are short-lived, so nothing ticks in the background. Time-driven transitions (a follower's
//! sync completing, an election after its delay) are materialised lazily by [`Tx::advance`] at the start
//! of every invocation, each at its *effective* timestamp (when it was due), not at the invocation time.
//! That keeps the journal exact: an election that was due at t=800 ms is journalled at 800 ms even if the
//! next command only arrives at 5 s.
//!
//! Roles and sync states are stored per node; everything "distributed" (leader/follower counts, healthy
//! nodes, synced counts, ES state) is derived from them by the renderer, never stored.

use serde::{Deserialize, Serialize};

pub use crate::fault::{Fault, Faults, FAULT_NAMES};
use crate::journal::Event;

/// Services in the order `chef-backend-ctl status` prints them.
pub const SERVICES: [&str; 4] = ["leaderl", "etcd", "postgresql", "elasticsearch"];
/// Index of postgresql in [`SERVICES`]; it stays down while the `no-start-pgsql` sentinel exists.
pub const PGSQL: usize = 2;

/// leaderl role of a node (the `Role` column of `cluster-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Leader,
    Follower,
    DeposedLeader,
    WaitingForLeader,
}

impl Role {
    /// The spelling chef-backend uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::DeposedLeader => "deposed_leader",
            Role::WaitingForLeader => "waiting_for_leader",
        }
    }
}

/// Replication state of a node's PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pg {
    Leader,
    Syncing,
    Synced,
    Offline,
}

/// Timings of the time-driven transitions, in milliseconds (set at init).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// How long a (re)started follower stays `syncing` before it is `synced`.
    pub sync_ms: u64,
    /// Delay between losing a leader (demote, leader stopped) and the election.
    pub election_ms: u64,
    /// How long `demote` / `upgrade --failover` wait for a new leader before failing.
    pub demote_timeout_ms: u64,
    /// How long `upgrade` waits for the node to rejoin and sync before failing.
    pub upgrade_timeout_ms: u64,
    /// After `start`, how long leaderl takes to join the cluster (the node waits, then syncs).
    #[serde(default)]
    pub start_ms: u64,
    /// How long the cluster may stay leaderless with cluster failover off before the report calls it
    /// `failover_blocked_without_leader` (default: election_ms + 2000).
    #[serde(default)]
    pub leaderless_tolerance_ms: Option<u64>,
}

impl Timings {
    /// The leaderless tolerance in force (`election_ms + 2000` unless set).
    pub fn leaderless_tolerance(&self) -> u64 {
        self.leaderless_tolerance_ms
            .unwrap_or(self.election_ms + 2000)
    }
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            sync_ms: 1500,
            election_ms: 800,
            demote_timeout_ms: 10_000,
            upgrade_timeout_ms: 60_000,
            start_ms: 0,
            leaderless_tolerance_ms: None,
        }
    }
}

/// State of the installed package as dpkg records it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PkgState {
    /// `install ok installed` (`ii `).
    #[default]
    Installed,
    /// `install ok half-configured` (`iF `): unpacked, its post-installation script failed.
    HalfConfigured,
    /// `install ok half-installed` (`iH `): unpacking started and did not finish.
    HalfInstalled,
}

impl PkgState {
    /// dpkg's `${db:Status-Status}` word.
    pub fn status_word(self) -> &'static str {
        match self {
            PkgState::Installed => "installed",
            PkgState::HalfConfigured => "half-configured",
            PkgState::HalfInstalled => "half-installed",
        }
    }

    /// dpkg's `${db:Status-Abbrev}` (three characters).
    pub fn abbrev(self) -> &'static str {
        match self {
            PkgState::Installed => "ii ",
            PkgState::HalfConfigured => "iF ",
            PkgState::HalfInstalled => "iH ",
        }
    }
}

/// The major version of `X.Y.Z-R` (`X`).
pub fn major(version: &str) -> &str {
    version.split('.').next().unwrap_or(version)
}

/// One runit service of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Pid when running, `None` when down.
    pub pid: Option<u32>,
    /// When the service entered its current state (unix ms).
    pub since_ms: u64,
    /// Pid of the service's svlogd (always running).
    pub log_pid: u32,
}

/// One chef-backend node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub ip: String,
    pub guid: String,
    /// Services were started (`start`) and not stopped since.
    pub up: bool,
    pub role: Role,
    pub pg: Pg,
    /// When the current sync completes; `None` while it is stalled (no leader) or never completes.
    pub sync_due_ms: Option<u64>,
    /// The demoted-leader sentinel: postgresql stays down until the node re-synced as a follower.
    pub no_start_pgsql: bool,
    /// Started, but leaderl has not joined the cluster yet (until this time).
    #[serde(default)]
    pub joins_at_ms: Option<u64>,
    /// Installed package version (`X.Y.Z-R`).
    pub installed: String,
    /// dpkg's state of the installed package (a failed post-install leaves it half-configured).
    #[serde(default)]
    pub pkg: PkgState,
    /// rpm dist tag of the installed package (`el7`); shown by `rpm -q`.
    pub dist: String,
    /// Version the services run (changes when services start).
    pub running: String,
    /// Node-level failover (`set-node-failover`).
    pub failover: bool,
    pub services: Vec<Service>,
    pub faults: Faults,
}

impl Node {
    /// In service: able to serve (the leader, or a synced follower).
    pub fn in_service(&self) -> bool {
        self.up
            && (self.role == Role::Leader || (self.role == Role::Follower && self.pg == Pg::Synced))
    }
}

/// What started an election.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionTrigger {
    /// `chef-backend-ctl demote` on the leader.
    Demote,
    /// `chef-backend-ctl upgrade --failover` on the leader.
    UpgradeFailover,
    /// `chef-backend-ctl promote NODE`.
    Promote,
    /// The leader's services stopped while failover was enabled.
    LeaderLost,
    /// Failover was enabled while the cluster had no leader.
    FailoverEnabled,
    /// etcd regained its quorum while the cluster had no leader (and failover is on).
    QuorumRestored,
}

impl ElectionTrigger {
    /// A planned switchover: the downtime inside its window is the price of the switchover itself.
    pub fn planned(self) -> bool {
        matches!(
            self,
            ElectionTrigger::Demote | ElectionTrigger::UpgradeFailover | ElectionTrigger::Promote
        )
    }
}

/// An election that is due.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Election {
    pub due_ms: u64,
    pub trigger: ElectionTrigger,
    /// The leader being replaced, if any.
    pub old_leader: Option<String>,
    /// `promote NODE`: only this node may win.
    pub preferred: Option<String>,
    /// Whose command started the election (`None`: the cluster itself); its events are charged to it.
    #[serde(default)]
    pub actor: Option<String>,
}

/// The whole simulated cluster (the JSON state file).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub created_ms: u64,
    /// Latest time any invocation saw; `now` never goes backwards below it.
    pub last_ms: u64,
    pub timings: Timings,
    /// Cluster-level failover (`set-cluster-failover`).
    pub failover: bool,
    /// The node that most recently was leader (it resumes leadership on start if nobody replaced it).
    pub last_leader: Option<String>,
    pub election: Option<Election>,
    pub next_pid: u32,
    pub nodes: Vec<Node>,
}

/// A `(role, pg, up, postgresql running)` view used to detect node changes worth journalling.
type NodeView = (bool, Role, Pg, bool);

fn view(n: &Node) -> NodeView {
    (n.up, n.role, n.pg, n.services[PGSQL].pid.is_some())
}

impl Cluster {
    /// A new cluster: all nodes running `version`, `backend-1` leader, the others synced followers.
    pub fn new(nodes: usize, version: &str, timings: Timings, now: u64) -> Cluster {
        let mut c = Cluster {
            created_ms: now,
            last_ms: now,
            timings,
            failover: true,
            last_leader: Some("backend-1".to_string()),
            election: None,
            next_pid: 6796,
            nodes: Vec::new(),
        };
        for i in 1..=nodes {
            let name = format!("backend-{i}");
            let guid = guid_for(&name, now);
            let mut services = Vec::new();
            for _ in SERVICES {
                let pid = c.alloc_pid();
                let log_pid = c.alloc_pid();
                services.push(Service {
                    pid: Some(pid),
                    since_ms: now,
                    log_pid,
                });
            }
            let leader = i == 1;
            let k = 214 + i;
            c.nodes.push(Node {
                ip: format!("192.168.{}.{}", 33 + k / 256, k % 256),
                guid,
                up: true,
                role: if leader { Role::Leader } else { Role::Follower },
                pg: if leader { Pg::Leader } else { Pg::Synced },
                sync_due_ms: None,
                no_start_pgsql: false,
                joins_at_ms: None,
                installed: version.to_string(),
                pkg: PkgState::Installed,
                dist: "el7".to_string(),
                running: version.to_string(),
                failover: true,
                services,
                faults: Faults::default(),
                name,
            });
        }
        c
    }

    fn alloc_pid(&mut self) -> u32 {
        let p = self.next_pid;
        self.next_pid += 1;
        p
    }

    /// Index of a node by name.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node currently accepting writes (up and leader).
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.up && n.role == Role::Leader)
    }

    /// etcd has a quorum: a strict majority of the nodes run their services.
    pub fn quorum(&self) -> bool {
        self.nodes.iter().filter(|n| n.up).count() * 2 > self.nodes.len()
    }

    /// The Elasticsearch master: the up node whose elasticsearch has run longest (sticky, like ES).
    pub fn es_master(&self) -> Option<usize> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.up)
            .min_by_key(|(_, n)| (n.services[3].since_ms, n.name.clone()))
            .map(|(i, _)| i)
    }
}

fn guid_for(name: &str, now: u64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{name}/{now}").as_bytes());
    hex::encode(&digest[..16])
}

/// One event a transaction produced: effective time, the actor it is charged to, the event.
pub type Emitted = (u64, Option<String>, Event);

/// A transaction on the cluster: mutations plus the events they produced, with effective timestamps.
#[derive(Debug)]
pub struct Tx<'a> {
    pub cluster: &'a mut Cluster,
    pub events: Vec<Emitted>,
    /// Whose command the mutations belong to (`None`: the cluster's own time-driven transitions).
    pub actor: Option<String>,
    seen: Vec<NodeView>,
}

impl<'a> Tx<'a> {
    /// Starts a transaction; call [`Tx::advance`] before acting so due transitions happen first.
    pub fn new(cluster: &'a mut Cluster) -> Tx<'a> {
        let seen = cluster.nodes.iter().map(view).collect();
        Tx {
            cluster,
            events: Vec::new(),
            actor: None,
            seen,
        }
    }

    fn emit(&mut self, at: u64, e: Event) {
        self.events.push((at, self.actor.clone(), e));
    }

    /// Journals a `node_changed` event for every node whose up/role/pg changed since the last call.
    fn observe(&mut self, at: u64) {
        for i in 0..self.cluster.nodes.len() {
            let v = view(&self.cluster.nodes[i]);
            if v != self.seen[i] {
                self.seen[i] = v;
                let n = &self.cluster.nodes[i];
                self.events.push((
                    at,
                    self.actor.clone(),
                    Event::NodeChanged {
                        node: n.name.clone(),
                        up: n.up,
                        role: n.role,
                        pg: n.pg,
                        pgsql_running: v.3,
                    },
                ));
            }
        }
    }

    /// Materialises every transition due at or before `now`, in time order, at its effective time.
    pub fn advance(&mut self, now: u64) {
        let actor = self.actor.take();
        self.advance_inner(now);
        self.actor = actor;
    }

    fn advance_inner(&mut self, now: u64) {
        loop {
            let mut next: Option<(u64, Option<usize>)> = None;
            for (i, n) in self.cluster.nodes.iter().enumerate() {
                if let (true, Pg::Syncing, Some(due)) = (n.up, n.pg, n.sync_due_ms) {
                    if due <= now && next.is_none_or(|(t, _)| due < t) {
                        next = Some((due, Some(i)));
                    }
                }
            }
            let mut join: Option<(u64, usize)> = None;
            for (i, n) in self.cluster.nodes.iter().enumerate() {
                if let Some(at) = n.joins_at_ms.filter(|at| *at <= now) {
                    if join.is_none_or(|(t, _)| at < t) {
                        join = Some((at, i));
                    }
                }
            }
            if let Some(e) = &self.cluster.election {
                // Ties go to syncs: a follower that finishes syncing at the election instant is eligible.
                if e.due_ms <= now && next.is_none_or(|(t, _)| e.due_ms < t) {
                    next = Some((e.due_ms, None));
                }
            }
            // Joins come first at equal times: a joining node may be the leader that resumes.
            if let Some((t, i)) = join.filter(|(t, _)| next.is_none_or(|(n, _)| *t <= n)) {
                self.join(i, t);
                self.observe(t);
                continue;
            }
            match next {
                Some((t, Some(i))) => {
                    self.complete_sync(i, t);
                    self.observe(t);
                }
                Some((t, None)) => {
                    self.actor = self.cluster.election.as_ref().and_then(|e| e.actor.clone());
                    self.run_election(t);
                    self.observe(t);
                    self.actor = None;
                }
                None => break,
            }
        }
        self.cluster.last_ms = self.cluster.last_ms.max(now);
    }

    fn complete_sync(&mut self, i: usize, t: u64) {
        let sync_never = self.cluster.nodes[i].faults.sync_never;
        let pid = if self.cluster.nodes[i].no_start_pgsql && !sync_never {
            Some(self.cluster.alloc_pid())
        } else {
            None
        };
        let n = &mut self.cluster.nodes[i];
        n.sync_due_ms = None;
        if sync_never {
            return;
        }
        n.pg = Pg::Synced;
        if let Some(pid) = pid {
            n.no_start_pgsql = false;
            n.services[PGSQL] = Service {
                pid: Some(pid),
                since_ms: t,
                log_pid: n.services[PGSQL].log_pid,
            };
        }
        n.role = Role::Follower;
        let name = n.name.clone();
        self.emit(t, Event::SyncCompleted { node: name });
    }

    fn run_election(&mut self, t: u64) {
        let Some(e) = self.cluster.election.take() else {
            return;
        };
        let c = &*self.cluster;
        // An explicit `promote NODE` is not an automatic election: the fault does not apply to it.
        let blocked_by_fault = e.trigger != ElectionTrigger::Promote
            && e.old_leader
                .as_deref()
                .and_then(|o| c.index(o))
                .is_some_and(|o| c.nodes[o].faults.election_elects_nobody);
        let failover_off = !c.failover && e.trigger != ElectionTrigger::Promote;
        let up = c.nodes.iter().filter(|n| n.up).count();
        let winner = c
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.up && n.pg == Pg::Synced
                    && n.joins_at_ms.is_none()
                    && matches!(n.role, Role::Follower | Role::WaitingForLeader)
                    // A demoted leader is not re-elected; a leader that only stepped down (etcd lost its
                    // quorum) and kept its data may lead again when failover is re-enabled or quorum returns.
                    && (Some(&n.name) != e.old_leader.as_ref()
                        || !matches!(
                            e.trigger,
                            ElectionTrigger::Demote | ElectionTrigger::UpgradeFailover
                        ))
            })
            .filter(|(_, n)| match &e.preferred {
                Some(p) => &n.name == p,
                None => n.failover,
            })
            .map(|(i, _)| i)
            .next();
        let reason = if !c.quorum() {
            Some(format!(
                "no etcd quorum ({up} of {} nodes up): nobody can be elected",
                c.nodes.len()
            ))
        } else if blocked_by_fault {
            Some("fault election-nobody: no candidate was elected".to_string())
        } else if failover_off {
            Some("failover is disabled".to_string())
        } else if winner.is_none() {
            Some("no synced follower eligible for leadership".to_string())
        } else {
            None
        };
        match (reason, winner) {
            (None, Some(w)) => {
                let n = &mut self.cluster.nodes[w];
                n.role = Role::Leader;
                n.pg = Pg::Leader;
                n.sync_due_ms = None;
                let name = n.name.clone();
                let changed = self.cluster.last_leader.as_deref() != Some(name.as_str());
                self.cluster.last_leader = Some(name.clone());
                self.emit(
                    t,
                    Event::LeaderElected {
                        node: name,
                        trigger: e.trigger,
                    },
                );
                self.on_new_leader(w, t, changed);
            }
            (reason, _) => {
                for n in self
                    .cluster
                    .nodes
                    .iter_mut()
                    .filter(|n| n.up && n.role == Role::Follower)
                {
                    n.role = Role::WaitingForLeader;
                }
                let reason = reason.unwrap_or_default();
                self.emit(
                    t,
                    Event::ElectionFailed {
                        trigger: e.trigger,
                        reason,
                    },
                );
            }
        }
    }

    /// When the node `i`'s sync from the current leader completes, if it can: `None` without a leader,
    /// with the `sync-never` fault, or when the leader runs another major version (replication across
    /// major versions is not possible: the node stays `syncing`).
    fn sync_due(&self, i: usize, t: u64) -> Option<u64> {
        let c = &*self.cluster;
        let l = c.leader()?;
        let n = &c.nodes[i];
        if n.faults.sync_never || major(&c.nodes[l].running) != major(&n.running) {
            return None;
        }
        Some(t + c.timings.sync_ms)
    }

    /// Every other running node follows the new leader. After a leader *change* every one of them
    /// re-syncs from it (replication restarts against the new primary), synced or not: its role is
    /// `follower` at once, its postgresql is `syncing` until the sync completes. When the same leader
    /// resumes, synced followers stay synced and only unsynced ones (re)start syncing.
    fn on_new_leader(&mut self, leader: usize, t: u64, changed: bool) {
        for i in 0..self.cluster.nodes.len() {
            let n = &self.cluster.nodes[i];
            if i == leader || !n.up || n.joins_at_ms.is_some() {
                continue;
            }
            if n.pg == Pg::Synced && !changed {
                self.cluster.nodes[i].role = Role::Follower;
                continue;
            }
            let due = self.sync_due(i, t);
            let n = &mut self.cluster.nodes[i];
            n.pg = Pg::Syncing;
            n.sync_due_ms = due;
            n.role = if n.no_start_pgsql {
                Role::DeposedLeader
            } else {
                Role::Follower
            };
        }
    }

    /// Without a leader nobody can replicate: syncs in progress stall until a leader exists.
    fn stall_syncs(&mut self) {
        for n in self.cluster.nodes.iter_mut() {
            if n.pg == Pg::Syncing {
                n.sync_due_ms = None;
            }
        }
    }

    fn schedule_election(
        &mut self,
        t: u64,
        trigger: ElectionTrigger,
        old: Option<String>,
        preferred: Option<String>,
    ) {
        let due_ms = t + self.cluster.timings.election_ms;
        self.cluster.election = Some(Election {
            due_ms,
            trigger,
            old_leader: old.clone(),
            preferred,
            actor: self.actor.clone(),
        });
        self.emit(
            t,
            Event::ElectionStarted {
                trigger,
                old_leader: old,
                due_ms,
            },
        );
    }

    /// After a node went down: without an etcd quorum the leader cannot hold its lease and steps down,
    /// every node waits for a leader and syncs stall.
    fn check_quorum_lost(&mut self, t: u64) {
        if self.cluster.quorum() {
            return;
        }
        let leader = self.cluster.leader();
        if let Some(l) = leader {
            let n = &mut self.cluster.nodes[l];
            n.role = Role::WaitingForLeader;
            n.pg = Pg::Synced;
        }
        for n in self.cluster.nodes.iter_mut().filter(|n| n.up) {
            if n.role == Role::Follower {
                n.role = Role::WaitingForLeader;
            }
        }
        self.stall_syncs();
        let up = self.cluster.nodes.iter().filter(|n| n.up).count();
        let total = self.cluster.nodes.len();
        self.emit(
            t,
            Event::QuorumLost {
                up,
                total,
                leader: leader.map(|l| self.cluster.nodes[l].name.clone()),
            },
        );
    }

    /// After a node joined: if etcd has a quorum again and nobody leads, the last leader resumes if it
    /// runs with its data intact (it never stepped down for another leader); otherwise, with cluster
    /// failover on, an election follows after the election delay.
    fn check_quorum_regained(&mut self, t: u64) {
        if !self.cluster.quorum()
            || self.cluster.leader().is_some()
            || self.cluster.election.is_some()
        {
            return;
        }
        let last = self
            .cluster
            .last_leader
            .as_deref()
            .and_then(|l| self.cluster.index(l));
        if let Some(l) = last {
            let n = &self.cluster.nodes[l];
            if n.up && n.joins_at_ms.is_none() && !n.no_start_pgsql && n.pg == Pg::Synced {
                let n = &mut self.cluster.nodes[l];
                n.role = Role::Leader;
                n.pg = Pg::Leader;
                let name = n.name.clone();
                self.emit(t, Event::LeaderResumed { node: name });
                self.on_new_leader(l, t, false);
                return;
            }
        }
        if self.cluster.failover {
            let old = self.cluster.last_leader.clone();
            self.schedule_election(t, ElectionTrigger::QuorumRestored, old, None);
        }
    }

    /// Stops the node's services (`by` names the command, for the report): `stop`, `restart`,
    /// `upgrade`, or `crash` (power loss: same effect on the cluster, no clean shutdown).
    pub fn stop(&mut self, i: usize, t: u64, by: &str) {
        let n = &mut self.cluster.nodes[i];
        if !n.up {
            return;
        }
        let was_leader = n.role == Role::Leader;
        n.up = false;
        n.joins_at_ms = None;
        n.role = Role::WaitingForLeader;
        n.pg = Pg::Offline;
        n.sync_due_ms = None;
        for s in n.services.iter_mut() {
            s.pid = None;
            s.since_ms = t;
        }
        let name = n.name.clone();
        let failover = self.cluster.failover;
        self.emit(
            t,
            Event::ServicesStopped {
                node: name.clone(),
                by: by.to_string(),
                was_leader,
                failover,
            },
        );
        if was_leader {
            self.stall_syncs();
            if failover {
                self.schedule_election(t, ElectionTrigger::LeaderLost, Some(name), None);
            }
        }
        self.check_quorum_lost(t);
        self.observe(t);
    }

    /// Why the node's services cannot start, if they cannot.
    pub fn start_blocker(&self, i: usize) -> Option<String> {
        let n = &self.cluster.nodes[i];
        if n.pkg != PkgState::Installed {
            return Some(format!(
                "package chef-backend {} is {}: run `dpkg --configure -a` or reinstall it",
                n.installed,
                n.pkg.status_word()
            ));
        }
        n.faults
            .start_fails
            .then(|| "fault start-fails".to_string())
    }

    /// Starts the node's services onto the installed version. Returns false when they cannot start
    /// (the start fault, or a half-configured package).
    pub fn start(&mut self, i: usize, t: u64, by: &str) -> bool {
        if self.cluster.nodes[i].up {
            return true;
        }
        let name = self.cluster.nodes[i].name.clone();
        if let Some(reason) = self.start_blocker(i) {
            self.emit(
                t,
                Event::StartFailed {
                    node: name,
                    by: by.to_string(),
                    reason,
                },
            );
            return false;
        }
        let no_pgsql = self.cluster.nodes[i].no_start_pgsql;
        let mut pids = Vec::new();
        for k in 0..SERVICES.len() {
            pids.push(if k == PGSQL && no_pgsql {
                None
            } else {
                Some(self.cluster.alloc_pid())
            });
        }
        let start_ms = self.cluster.timings.start_ms;
        let n = &mut self.cluster.nodes[i];
        n.up = true;
        n.running = n.installed.clone();
        for (s, pid) in n.services.iter_mut().zip(pids) {
            s.pid = pid;
            s.since_ms = t;
        }
        // Until leaderl has joined, the node neither leads nor syncs.
        n.pg = Pg::Syncing;
        n.sync_due_ms = None;
        n.role = if no_pgsql {
            Role::DeposedLeader
        } else {
            Role::WaitingForLeader
        };
        let version = n.running.clone();
        self.emit(
            t,
            Event::ServicesStarted {
                node: name,
                by: by.to_string(),
                version,
            },
        );
        if start_ms > 0 {
            self.cluster.nodes[i].joins_at_ms = Some(t + start_ms);
            self.observe(t);
        } else {
            self.join(i, t);
        }
        true
    }

    /// leaderl of a started node joins the cluster: it resumes leadership if it was the last leader,
    /// nobody replaced it and etcd has a quorum; else it follows (and syncs from) the current leader, or
    /// waits for one. Its joining may give etcd its quorum back.
    fn join(&mut self, i: usize, t: u64) {
        let name = self.cluster.nodes[i].name.clone();
        let no_pgsql = self.cluster.nodes[i].no_start_pgsql;
        self.cluster.nodes[i].joins_at_ms = None;
        let leader = self.cluster.leader();
        let resumes = leader.is_none()
            && !no_pgsql
            && self.cluster.quorum()
            && self.cluster.last_leader.as_deref() == Some(name.as_str())
            && !self
                .cluster
                .election
                .as_ref()
                .is_some_and(|e| e.trigger.planned());
        let due = self.sync_due(i, t);
        let n = &mut self.cluster.nodes[i];
        if resumes {
            n.role = Role::Leader;
            n.pg = Pg::Leader;
            n.sync_due_ms = None;
        } else {
            n.pg = Pg::Syncing;
            n.role = if no_pgsql {
                Role::DeposedLeader
            } else if leader.is_some() {
                Role::Follower
            } else {
                Role::WaitingForLeader
            };
            n.sync_due_ms = due;
        }
        if resumes {
            if let Some(e) = self.cluster.election.take() {
                let reason = format!("{name} resumed leadership");
                self.emit(
                    t,
                    Event::ElectionFailed {
                        trigger: e.trigger,
                        reason,
                    },
                );
            }
            self.emit(t, Event::LeaderResumed { node: name });
            self.on_new_leader(i, t, false);
        } else {
            self.check_quorum_regained(t);
        }
        self.observe(t);
    }

    /// Demotes the leader `i`: it steps down at once (deposed, postgresql held down by the sentinel) and
    /// an election is due after the election delay.
    pub fn demote(
        &mut self,
        i: usize,
        t: u64,
        trigger: ElectionTrigger,
        by: &str,
        preferred: Option<String>,
    ) {
        let unsynced = self
            .cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(k, n)| *k != i && !(n.up && n.role == Role::Follower && n.pg == Pg::Synced))
            .map(|(_, n)| n.name.clone())
            .collect();
        let n = &mut self.cluster.nodes[i];
        n.role = Role::DeposedLeader;
        n.no_start_pgsql = true;
        n.pg = Pg::Syncing;
        n.sync_due_ms = None;
        n.services[PGSQL].pid = None;
        n.services[PGSQL].since_ms = t;
        let name = n.name.clone();
        self.emit(
            t,
            Event::DemoteRequested {
                node: name.clone(),
                by: by.to_string(),
                unsynced,
            },
        );
        self.stall_syncs();
        self.schedule_election(t, trigger, Some(name), preferred);
        self.observe(t);
    }

    /// `promote NODE` when the cluster has no leader: an election restricted to that node.
    pub fn promote_leaderless(&mut self, target: &str, t: u64) {
        let old = self.cluster.last_leader.clone();
        self.schedule_election(t, ElectionTrigger::Promote, old, Some(target.to_string()));
    }

    /// Records a package installation (the package ends fully installed).
    pub fn install(&mut self, i: usize, t: u64, version: &str, dist: &str) {
        let n = &mut self.cluster.nodes[i];
        n.installed = version.to_string();
        n.pkg = PkgState::Installed;
        n.dist = dist.to_string();
        let e = Event::PackageInstalled {
            node: n.name.clone(),
            version: version.to_string(),
            services_running: n.up,
        };
        self.emit(t, e);
    }

    /// Records a failed package installation: like dpkg, the new version is unpacked but its
    /// post-installation script failed, so the package is left half-configured (the services cannot
    /// start until a successful install or `dpkg --configure -a`).
    pub fn install_failed(&mut self, i: usize, t: u64, version: &str, dist: &str, reason: &str) {
        let n = &mut self.cluster.nodes[i];
        n.installed = version.to_string();
        if !dist.is_empty() {
            n.dist = dist.to_string();
        }
        n.pkg = PkgState::HalfConfigured;
        let node = n.name.clone();
        self.emit(
            t,
            Event::InstallFailed {
                node,
                version: version.to_string(),
                reason: reason.to_string(),
            },
        );
    }

    /// `dpkg --configure -a`: configures a half-configured package, unless the install fault still fires.
    /// Returns whether the package is (now) installed.
    pub fn configure(&mut self, i: usize, t: u64) -> bool {
        let n = &self.cluster.nodes[i];
        if n.pkg == PkgState::Installed {
            return true;
        }
        if n.faults.install_fails {
            return false;
        }
        let (version, dist) = (n.installed.clone(), n.dist.clone());
        self.install(i, t, &version, &dist);
        true
    }

    /// Sets cluster failover; enabling it while leaderless starts an election (leaderl would).
    pub fn set_cluster_failover(&mut self, node: &str, t: u64, enabled: bool) {
        self.cluster.failover = enabled;
        self.emit(
            t,
            Event::ClusterFailoverSet {
                node: node.to_string(),
                enabled,
            },
        );
        if enabled && self.cluster.leader().is_none() && self.cluster.election.is_none() {
            let old = self.cluster.last_leader.clone();
            self.schedule_election(t, ElectionTrigger::FailoverEnabled, old, None);
        }
    }

    /// Sets a node's failover flag.
    pub fn set_node_failover(&mut self, i: usize, t: u64, enabled: bool) {
        self.cluster.nodes[i].failover = enabled;
        let node = self.cluster.nodes[i].name.clone();
        self.emit(t, Event::NodeFailoverSet { node, enabled });
    }

    /// Sets or clears a fault on a node.
    pub fn set_fault(&mut self, i: usize, t: u64, fault: Fault, on: bool) {
        fault.apply(&mut self.cluster.nodes[i].faults, on);
        let n = &self.cluster.nodes[i];
        // Clearing sync-never resumes a stalled sync (if there is a leader to sync from).
        if fault == Fault::SyncNever
            && !on
            && n.up
            && n.joins_at_ms.is_none()
            && n.pg == Pg::Syncing
            && n.sync_due_ms.is_none()
        {
            self.cluster.nodes[i].sync_due_ms = self.sync_due(i, t);
        }
        let node = self.cluster.nodes[i].name.clone();
        let fault = match fault {
            Fault::StatusHangs(s) if on => format!("status-hang={s}"),
            Fault::Latency(ms) if on => format!("latency={ms}"),
            f => f.name().to_string(),
        };
        self.emit(
            t,
            if on {
                Event::FaultSet { node, fault }
            } else {
                Event::FaultCleared { node, fault }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let t = Timings {
            sync_ms: 100,
            election_ms: 50,
            demote_timeout_ms: 1000,
            upgrade_timeout_ms: 1000,
            start_ms: 0,
            leaderless_tolerance_ms: None,
        };
        Cluster::new(3, "3.0.0-1", t, 1_000)
    }

    #[test]
    fn stopped_follower_syncs_after_sync_time_at_its_effective_time() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.stop(1, 1_010, "stop");
        assert!(tx.start(1, 1_020, "start"));
        tx.advance(1_119);
        assert_eq!(tx.cluster.nodes[1].pg, Pg::Syncing);
        tx.advance(5_000);
        assert_eq!(tx.cluster.nodes[1].pg, Pg::Synced);
        let synced_at = tx
            .events
            .iter()
            .find(|(_, _, e)| matches!(e, Event::SyncCompleted { .. }))
            .map(|(t, _, _)| *t);
        assert_eq!(synced_at, Some(1_120));
    }

    #[test]
    fn demote_elects_synced_follower_and_deposes_old_leader_until_resynced() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.demote(0, 2_000, ElectionTrigger::Demote, "demote", None);
        assert_eq!(tx.cluster.leader(), None);
        tx.advance(2_050);
        assert_eq!(tx.cluster.leader(), Some(1));
        assert_eq!(tx.cluster.nodes[0].role, Role::DeposedLeader);
        assert!(tx.cluster.nodes[0].services[PGSQL].pid.is_none());
        tx.advance(2_150);
        assert_eq!(tx.cluster.nodes[0].role, Role::Follower);
        assert!(!tx.cluster.nodes[0].no_start_pgsql);
        assert!(tx.cluster.nodes[0].services[PGSQL].pid.is_some());
    }

    #[test]
    fn leader_stopped_with_failover_off_leaves_no_leader_until_it_returns() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.set_cluster_failover("backend-1", 1_000, false);
        tx.stop(0, 1_100, "stop");
        tx.advance(10_000);
        assert_eq!(tx.cluster.leader(), None);
        assert!(tx.start(0, 10_000, "start"));
        assert_eq!(tx.cluster.leader(), Some(0));
    }

    #[test]
    fn leader_stopped_with_failover_on_triggers_election() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.stop(0, 1_100, "stop");
        tx.advance(1_149);
        assert_eq!(tx.cluster.leader(), None);
        tx.advance(1_150);
        assert_eq!(tx.cluster.leader(), Some(1));
    }

    #[test]
    fn election_nobody_fault_leaves_cluster_leaderless() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.set_fault(0, 1_000, Fault::ElectionElectsNobody, true);
        tx.demote(0, 1_000, ElectionTrigger::Demote, "demote", None);
        tx.advance(5_000);
        assert_eq!(tx.cluster.leader(), None);
        assert!(tx
            .events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::ElectionFailed { .. })));
    }

    #[test]
    fn sync_never_fault_keeps_node_syncing() {
        let mut c = cluster();
        let mut tx = Tx::new(&mut c);
        tx.set_fault(2, 1_000, Fault::SyncNever, true);
        tx.stop(2, 1_000, "stop");
        tx.start(2, 1_000, "start");
        tx.advance(100_000);
        assert_eq!(tx.cluster.nodes[2].pg, Pg::Syncing);
        tx.set_fault(2, 100_000, Fault::SyncNever, false);
        tx.advance(100_100);
        assert_eq!(tx.cluster.nodes[2].pg, Pg::Synced);
    }

    #[test]
    fn started_node_joins_after_start_delay_then_syncs() {
        let mut c = cluster();
        c.timings.start_ms = 30;
        let mut tx = Tx::new(&mut c);
        tx.stop(1, 1_000, "stop");
        assert!(tx.start(1, 1_000, "start"));
        assert_eq!(tx.cluster.nodes[1].role, Role::WaitingForLeader);
        tx.advance(1_029);
        assert_eq!(tx.cluster.nodes[1].sync_due_ms, None, "not joined yet");
        tx.advance(1_030);
        assert_eq!(tx.cluster.nodes[1].role, Role::Follower);
        assert_eq!(tx.cluster.nodes[1].sync_due_ms, Some(1_130));
        // A stopped leader (failover off) resumes only once it has joined.
        tx.set_cluster_failover("backend-1", 2_000, false);
        tx.stop(0, 2_000, "stop");
        assert!(tx.start(0, 2_100, "start"));
        assert_eq!(tx.cluster.leader(), None);
        tx.advance(2_130);
        assert_eq!(tx.cluster.leader(), Some(0));
    }

    #[test]
    fn fault_names_round_trip() {
        for (k, a) in [
            ("sync-never", None),
            ("status-hang", Some("3")),
            ("latency", Some("20")),
        ] {
            assert_eq!(Fault::parse(k, a).unwrap().name(), k);
        }
        assert!(Fault::parse("status-hang", None).is_err());
        assert!(Fault::parse("nope", None).is_err());
    }
}
