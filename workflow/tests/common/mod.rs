//! Test helpers shared by the core's test binaries: a tiny fake chef-backend cluster that answers the profile's
//! commands in the documented output formats, and a driver that feeds the core's steps to it.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use workflow::core::{
    decide, ClusterFile, Event, Input, Outcome, Procedure, Rejection, ScheduledStep, State,
};

/// The cluster file used by the tests: three nodes, one executor group each.
pub fn cluster_toml(procedure: &str, gates: &str) -> String {
    format!(
        r#"
[cluster]
name = "test"
profile = "chef-backend"

[[nodes]]
name = "backend-1"
address = "192.168.33.215"
executor = "g1"

[[nodes]]
name = "backend-2"
address = "192.168.33.216"
executor = "g2"

[[nodes]]
name = "backend-3"
address = "192.168.33.217"
executor = "g3"

[upgrade]
package = "/var/tmp/chef-backend_3.1.0-1_amd64.deb"
procedure = "{procedure}"
poll_interval_ms = 1000
sync_timeout_ms = 20000
retries = 2
backoff_ms = 500
gates = [{gates}]
"#
    )
}

/// A parsed cluster file.
pub fn cluster(procedure: &str, gates: &str) -> ClusterFile {
    ClusterFile::parse("cluster.toml", &cluster_toml(procedure, gates))
        .expect("test cluster file parses")
}

/// A submission of that cluster.
pub fn submit(cluster: ClusterFile, now_ms: u64) -> Input {
    Input::Submit {
        upgrade: "01JTESTUPGRADE0000000000000".into(),
        cluster,
        package: String::new(),
        target_version: None,
        gates: vec![],
        plan_only: false,
        expected_plan_hash: None,
        executors_online: vec!["g1".into(), "g2".into(), "g3".into()],
        requested_by: "tester".into(),
        now_ms,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeRole {
    Leader,
    Follower,
    Deposed,
    /// `waiting_for_leader`: a leader that lost etcd quorum shows this until an election.
    Waiting,
}

#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub ip: String,
    pub guid: String,
    pub installed: String,
    pub running_version: String,
    pub running: bool,
    /// Status probes (anywhere) left before this node is synced after a restart or a leader change.
    pub syncing: u32,
    pub role: FakeRole,
    /// cluster-status observations left before a deposed leader shows as follower.
    pub deposed_polls: u32,
    /// `set-node-failover`: an election skips a node whose node failover is off, and `demote` refuses on it.
    pub node_failover: bool,
    /// A `dpkg -i` whose configure step failed: dpkg-query says `half-configured`.
    pub half_configured: bool,
    /// Down because the environment crashed it (not because the core stopped it).
    pub crashed_by_env: bool,
}

/// What the fake saw that breaks a safety rule.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub list: Vec<String>,
}

/// A three-node chef-backend cluster, as strict as the reference: etcd quorum (a majority down: no leader, no
/// election, no writes), followers re-sync after every leader change, `status` exits 1 on a stopped node,
/// cluster and node failover settings, package files that may be missing, installs that may half-configure.
///
/// Its own checks (`violations`) judge the core's commands as long as the environment has not acted
/// (`env_faults == 0`); after that, only an oracle that can tell who did what may judge (core_props.rs).
#[derive(Debug, Clone)]
pub struct FakeCluster {
    pub nodes: Vec<FakeNode>,
    pub failover: bool,
    pub ever_blocked: bool,
    pub original_leader: String,
    pub target: String,
    pub violations: Violations,
    /// Commands run, for assertions: (node, argv).
    pub journal: Vec<(String, Vec<String>)>,
    /// Nodes on which the package file is missing (`dpkg -i`, `dpkg-deb`, `rpm -qp` fail there).
    pub missing_package: BTreeSet<String>,
    /// Nodes on which `dpkg -i` unpacks but fails to configure (exit 1, `half-configured`).
    pub install_fails: BTreeSet<String>,
    /// Status probes a follower needs to re-sync after a leader change (0: the old, kinder fake).
    pub resync_polls: u32,
    /// How many times the environment changed the cluster (env_* methods).
    pub env_faults: u32,
}

const ETCD_DOWN: &str =
    "Error: cannot reach the local etcd (is chef-backend running on this node?)";

/// The version string a package file's name carries, as the package tools print it:
/// `chef-backend_3.1.0-1_amd64.deb` -> `3.1.0-1`, `chef-backend-3.1.0-1.el7.x86_64.rpm` -> `3.1.0-1.el7`.
pub fn package_file_version(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    if let Some(stem) = file.strip_suffix(".deb") {
        return stem.split('_').nth(1).map(str::to_string);
    }
    let stem = file.strip_suffix(".rpm")?.strip_prefix("chef-backend-")?;
    let (version, _arch) = stem.rsplit_once('.')?;
    Some(version.to_string())
}

/// `3.1.0-1.el7` -> `3.1.0-1` (the fake records versions without the dist tag).
fn without_dist(version: &str) -> String {
    match version.rsplit_once('-') {
        Some((up, rel)) => format!("{up}-{}", rel.split('.').next().unwrap_or(rel)),
        None => version.to_string(),
    }
}

type RunResult = (Outcome, Option<i32>, String, String);

fn ok(out: &str) -> RunResult {
    (Outcome::Succeeded, Some(0), out.to_string(), String::new())
}

fn fail(err: &str) -> RunResult {
    fail_with(1, err)
}

fn fail_with(code: i32, err: &str) -> RunResult {
    (Outcome::Failed, Some(code), String::new(), err.to_string())
}

fn on_off(state: &str) -> Option<bool> {
    match state {
        "on" | "true" | "enabled" => Some(true),
        "off" | "false" | "disabled" => Some(false),
        _ => None,
    }
}

impl FakeCluster {
    pub fn new(version: &str) -> FakeCluster {
        let guids = [
            "79d84527cf937f3daa94c1435d0a4249",
            "c106c88745ef13517874d7301463afb9",
            "4d29bcb5eec25d3674d5b8af132f75b3",
        ];
        let nodes = (1..=3)
            .map(|i| FakeNode {
                name: format!("backend-{i}"),
                ip: format!("192.168.33.{}", 214 + i),
                guid: guids[i - 1].into(),
                installed: version.into(),
                running_version: version.into(),
                running: true,
                syncing: 0,
                role: if i == 2 {
                    FakeRole::Leader
                } else {
                    FakeRole::Follower
                },
                deposed_polls: 0,
                node_failover: true,
                half_configured: false,
                crashed_by_env: false,
            })
            .collect();
        FakeCluster {
            nodes,
            failover: true,
            ever_blocked: false,
            original_leader: "backend-2".into(),
            target: "3.1.0-1".into(),
            violations: Violations::default(),
            journal: Vec::new(),
            missing_package: BTreeSet::new(),
            install_fails: BTreeSet::new(),
            resync_polls: 2,
            env_faults: 0,
        }
    }

    /// A copy without the journal (cheap enough to take before every command).
    pub fn snapshot(&self) -> FakeCluster {
        FakeCluster {
            nodes: self.nodes.clone(),
            failover: self.failover,
            ever_blocked: self.ever_blocked,
            original_leader: self.original_leader.clone(),
            target: self.target.clone(),
            violations: self.violations.clone(),
            journal: Vec::new(),
            missing_package: self.missing_package.clone(),
            install_fails: self.install_fails.clone(),
            resync_polls: self.resync_polls,
            env_faults: self.env_faults,
        }
    }

    pub fn idx(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("known node")
    }

    pub fn out_of_service(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| !n.running || n.syncing > 0)
            .map(|n| n.name.clone())
            .collect()
    }

    /// Whether etcd has quorum: a strict majority of the nodes runs.
    pub fn has_quorum(&self) -> bool {
        let running = self.nodes.iter().filter(|n| n.running).count();
        running * 2 > self.nodes.len()
    }

    /// The running leader, if any.
    pub fn leader(&self) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| n.role == FakeRole::Leader && n.running)
    }

    pub fn leader_name(&self) -> Option<String> {
        self.leader().map(|i| self.nodes[i].name.clone())
    }

    /// Whether an election could pick node `i` now.
    pub fn electable(&self, i: usize) -> bool {
        let n = &self.nodes[i];
        n.running
            && n.syncing == 0
            && n.node_failover
            && !matches!(n.role, FakeRole::Deposed | FakeRole::Leader)
    }

    /// The legacy check of the fake's own: a disruptive command on node `i` while another node is out of service
    /// (down or not synced). Only while the environment has not acted: then only an oracle that knows who did
    /// what may judge.
    fn check_s1_before(&mut self, i: usize, what: &str) {
        if self.env_faults > 0 {
            return;
        }
        let out: Vec<String> = self
            .out_of_service()
            .into_iter()
            .filter(|n| *n != self.nodes[i].name)
            .collect();
        if !out.is_empty() {
            self.violations.list.push(format!(
                "S1: {what} on {} while {out:?} out of service",
                self.nodes[i].name
            ));
        }
    }

    /// Every running node but the leader re-syncs (after any leader change).
    fn resync_followers(&mut self) {
        let polls = self.resync_polls;
        for n in &mut self.nodes {
            if n.running && n.role != FakeRole::Leader {
                n.syncing = n.syncing.max(polls);
                if n.role == FakeRole::Waiting {
                    n.role = FakeRole::Follower;
                }
            }
        }
    }

    /// Elects a synced, running node whose node failover is on (not `exclude`); the others re-sync to it.
    fn elect(&mut self, exclude: Option<usize>) -> Option<usize> {
        if !self.has_quorum() {
            return None;
        }
        let c = (0..self.nodes.len()).find(|&i| Some(i) != exclude && self.electable(i))?;
        for n in &mut self.nodes {
            if n.role == FakeRole::Leader {
                n.role = FakeRole::Follower;
            }
        }
        self.nodes[c].role = FakeRole::Leader;
        self.nodes[c].syncing = 0;
        self.resync_followers();
        Some(c)
    }

    /// What leaderl does on its own after a change: without quorum the leader steps down (no leader, no
    /// election); with quorum, no leader and cluster failover on, an election.
    fn settle(&mut self) {
        if !self.has_quorum() {
            if let Some(l) = self.leader() {
                self.nodes[l].role = FakeRole::Waiting;
            }
            return;
        }
        if self.leader().is_none() && self.failover {
            self.elect(None);
        }
    }

    /// The core's switchover (`demote`, `upgrade --failover`) on leader `old`: another node leads, `old` is
    /// deposed and every follower re-syncs. `Err` is the refusal chef-backend-ctl prints.
    fn switch_over(&mut self, old: usize) -> Result<usize, String> {
        if self.nodes[old].role != FakeRole::Leader {
            return Err("this node is not the leader".into());
        }
        if !self.failover {
            return Err("cluster failover is disabled".into());
        }
        if !self.nodes[old].node_failover {
            return Err(format!(
                "node failover is disabled on {}",
                self.nodes[old].name
            ));
        }
        let Some(c) = self.elect(Some(old)) else {
            return Err("election timed out: no eligible follower".into());
        };
        if self.env_faults == 0 && self.nodes[c].running_version != self.target {
            self.violations.list.push(format!(
                "S2: switchover to {} which runs {}",
                self.nodes[c].name, self.nodes[c].running_version
            ));
        }
        self.nodes[old].role = FakeRole::Deposed;
        self.nodes[old].deposed_polls = 1;
        self.nodes[old].syncing = self.nodes[old].syncing.max(self.resync_polls);
        Ok(c)
    }

    fn stop_node(&mut self, i: usize) {
        self.nodes[i].running = false;
        self.nodes[i].syncing = 0;
        if matches!(self.nodes[i].role, FakeRole::Leader | FakeRole::Waiting) {
            self.nodes[i].role = FakeRole::Follower;
        }
        self.settle();
    }

    fn start_node(&mut self, i: usize) {
        if self.nodes[i].running {
            return;
        }
        let n = &mut self.nodes[i];
        n.running = true;
        n.crashed_by_env = false;
        n.running_version = n.installed.clone();
        n.syncing = self.resync_polls.max(2);
        if matches!(n.role, FakeRole::Leader | FakeRole::Waiting) {
            n.role = FakeRole::Follower;
        }
        self.settle();
    }

    // --- The environment: a busy on-call. Each returns whether it changed anything. ---

    /// `promote NODE` by someone else: a running, synced follower replaces the leader.
    pub fn env_promote(&mut self, name: &str) -> bool {
        let c = self.idx(name);
        let Some(old) = self.leader() else {
            return false;
        };
        if old == c || !self.nodes[c].running || self.nodes[c].syncing > 0 {
            return false;
        }
        self.env_faults += 1;
        self.nodes[old].role = FakeRole::Deposed;
        self.nodes[old].deposed_polls = 1;
        self.nodes[c].role = FakeRole::Leader;
        self.resync_followers();
        true
    }

    /// A node crashes: its services are down until something starts them. A leader's crash is followed by an
    /// election if cluster failover is on and quorum holds.
    pub fn env_crash(&mut self, name: &str) -> bool {
        let i = self.idx(name);
        if !self.nodes[i].running {
            return false;
        }
        self.env_faults += 1;
        self.stop_node(i);
        self.nodes[i].crashed_by_env = true;
        true
    }

    /// Someone starts a node the environment crashed; it re-syncs.
    pub fn env_start(&mut self, name: &str) -> bool {
        let i = self.idx(name);
        if self.nodes[i].running || !self.nodes[i].crashed_by_env {
            return false;
        }
        self.env_faults += 1;
        self.start_node(i);
        true
    }

    /// A running node restarts (crash, then start): it re-syncs; a leader loses its role first.
    pub fn env_restart(&mut self, name: &str) -> bool {
        let i = self.idx(name);
        if !self.nodes[i].running {
            return false;
        }
        self.env_faults += 1;
        self.stop_node(i);
        self.start_node(i);
        true
    }

    /// Time passes: every syncing node gets one poll closer to synced, a deposed leader rejoins as follower.
    pub fn env_resync(&mut self) -> bool {
        let mut changed = false;
        for n in &mut self.nodes {
            if n.running && n.syncing > 0 {
                n.syncing -= 1;
                changed = true;
            }
            if n.running && n.role == FakeRole::Deposed {
                n.role = FakeRole::Follower;
                changed = true;
            }
        }
        if changed {
            self.settle();
        }
        changed
    }

    fn package_missing(&self, i: usize, path: &str) -> bool {
        self.missing_package.contains(&self.nodes[i].name) || package_file_version(path).is_none()
    }

    fn install(&mut self, i: usize, path: &str, tool: &str) -> RunResult {
        if self.package_missing(i, path) {
            return match tool {
                "dpkg" => fail_with(
                    2,
                    &format!(
                        "dpkg: error: cannot access archive '{path}': No such file or directory"
                    ),
                ),
                _ => fail_with(
                    1,
                    &format!("No package {path} available.\nError: Nothing to do"),
                ),
            };
        }
        let version = without_dist(&package_file_version(path).unwrap_or_default());
        if self.nodes[i].name == self.original_leader && self.env_faults == 0 {
            let others_done = self
                .nodes
                .iter()
                .filter(|n| n.name != self.original_leader)
                .all(|n| n.running_version == self.target);
            if !others_done {
                self.violations
                    .list
                    .push("S2: the leader was upgraded before every follower".into());
            }
        }
        if self.nodes[i].installed == self.target && !self.nodes[i].half_configured {
            // Preflight skips nodes already at the target: a second install is one the core ran again after
            // the first took effect.
            self.violations.list.push(format!(
                "S4: install ran again on {}, which already has {}",
                self.nodes[i].name, self.target
            ));
        }
        self.nodes[i].installed = version.clone();
        if self.install_fails.contains(&self.nodes[i].name) {
            self.nodes[i].half_configured = true;
            return fail(
                "dpkg: error processing package chef-backend (--install):\n installed chef-backend package \
                 post-installation script subprocess returned error exit status 1\nErrors were encountered \
                 while processing:\n chef-backend"
            );
        }
        self.nodes[i].half_configured = false;
        ok(&format!("Unpacking chef-backend ({version}) ...\n"))
    }

    /// `dpkg-query -W -f=FORMAT chef-backend`: `${Version}`, `${db:Status-Status}` and `\n` substituted.
    fn dpkg_query(&self, i: usize, format: &str) -> RunResult {
        let n = &self.nodes[i];
        let status = if n.half_configured {
            "half-configured"
        } else {
            "installed"
        };
        ok(&format
            .replace("${db:Status-Status}", status)
            .replace("${Version}", &n.installed)
            .replace("\\n", "\n"))
    }

    /// Runs a step's argv as node `step.node`; returns (outcome, exit code, stdout, stderr).
    pub fn run(&mut self, step: &ScheduledStep) -> RunResult {
        let i = self.idx(&step.node);
        self.journal.push((step.node.clone(), step.argv.clone()));
        let argv: Vec<&str> = step.argv.iter().map(String::as_str).collect();
        let up = self.nodes[i].running;
        match argv.as_slice() {
            ["chef-backend-ctl", "set-cluster-failover", state] => {
                let Some(on) = on_off(state) else {
                    return fail(&format!("invalid state {state}"));
                };
                if !up || !self.has_quorum() {
                    return fail(ETCD_DOWN);
                }
                self.failover = on;
                if !on {
                    self.ever_blocked = true;
                }
                self.settle();
                ok("")
            }
            ["chef-backend-ctl", "set-node-failover", state] => {
                let Some(on) = on_off(state) else {
                    return fail(&format!("invalid state {state}"));
                };
                if !up || !self.has_quorum() {
                    return fail(ETCD_DOWN);
                }
                self.nodes[i].node_failover = on;
                self.settle();
                ok("")
            }
            ["chef-backend-ctl", "stop"] => {
                self.check_s1_before(i, "stop");
                if self.leader() == Some(i) {
                    self.violations
                        .list
                        .push(format!("S2: leader {} stopped", self.nodes[i].name));
                }
                self.stop_node(i);
                ok("ok: down: postgresql: 0s, normally up\n")
            }
            ["chef-backend-ctl", "start"] => {
                self.start_node(i);
                ok("ok: run: postgresql: (pid 12345) 1s\n")
            }
            ["chef-backend-ctl", "demote"] => {
                if self.leader() == Some(i) {
                    self.check_s1_before(i, "demote");
                }
                match self.switch_over(i) {
                    Ok(_) => ok("demoted\n"),
                    Err(e) => fail(&e),
                }
            }
            ["chef-backend-ctl", "promote", name] => {
                let Some(c) = self.nodes.iter().position(|n| n.name == *name) else {
                    return fail(&format!("unknown node {name}"));
                };
                if !up || !self.has_quorum() {
                    return fail(ETCD_DOWN);
                }
                if self.env_promote_inner(c) {
                    ok("promoted\n")
                } else {
                    fail("promotion failed: the node is not a synced follower")
                }
            }
            ["chef-backend-ctl", "upgrade"] => {
                if self.leader() == Some(i) {
                    fail("refusing to upgrade the leader without --failover")
                } else if !up {
                    fail(ETCD_DOWN)
                } else {
                    self.check_s1_before(i, "upgrade");
                    self.nodes[i].running_version = self.nodes[i].installed.clone();
                    self.nodes[i].syncing = self.nodes[i].syncing.max(1);
                    ok("upgraded\n")
                }
            }
            ["chef-backend-ctl", "upgrade", "--failover"] => {
                if self.leader() == Some(i) {
                    self.check_s1_before(i, "upgrade --failover");
                }
                match self.switch_over(i) {
                    Ok(_) => {
                        self.nodes[i].running_version = self.nodes[i].installed.clone();
                        ok("upgraded with failover\n")
                    }
                    Err(e) => fail(&e),
                }
            }
            ["chef-backend-ctl", "status"] => {
                let table = self.status_text(i);
                if up {
                    ok(&table)
                } else {
                    (Outcome::Failed, Some(1), table, String::new())
                }
            }
            ["chef-backend-ctl", "cluster-status"] => {
                if !up {
                    fail(ETCD_DOWN)
                } else {
                    ok(&self.cluster_status_text())
                }
            }
            ["chef-backend-ctl", "cluster-status", "--json"] => {
                if !up {
                    fail(ETCD_DOWN)
                } else {
                    ok(&self.cluster_status_json())
                }
            }
            ["dpkg", "-i", path] => self.install(i, path, "dpkg"),
            ["yum", "install", "-y", path] => self.install(i, path, "yum"),
            ["dpkg-deb", "--field", path, "Version"] => {
                if self.package_missing(i, path) {
                    fail_with(
                        2,
                        &format!(
                            "dpkg-deb: error: failed to read archive '{path}': No such file or directory"
                        ),
                    )
                } else {
                    ok(&format!(
                        "{}\n",
                        package_file_version(path).unwrap_or_default()
                    ))
                }
            }
            ["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", path] => {
                if self.package_missing(i, path) {
                    fail(&format!(
                        "error: open of {path} failed: No such file or directory"
                    ))
                } else {
                    ok(&package_file_version(path).unwrap_or_default())
                }
            }
            ["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", "chef-backend"] => {
                ok(&format!("{}.el7", self.nodes[i].installed))
            }
            ["dpkg-query", "-W", format, "chef-backend"] if format.starts_with("-f=") => {
                self.dpkg_query(i, &format["-f=".len()..])
            }
            other => fail(&format!("fake: unknown command {other:?}")),
        }
    }

    fn env_promote_inner(&mut self, c: usize) -> bool {
        let before = self.env_faults;
        let done = self.env_promote(&self.nodes[c].name.clone());
        self.env_faults = before;
        done
    }

    fn status_text(&mut self, i: usize) -> String {
        // Every status probe moves sync along: the fake's notion of time. A follower that got synced may be
        // elected if nobody leads and failover is on.
        for n in &mut self.nodes {
            if n.running && n.syncing > 0 {
                n.syncing -= 1;
            }
        }
        self.settle();
        let total = self.nodes.len();
        let running = self.nodes.iter().filter(|n| n.running).count();
        let leaders = usize::from(self.leader().is_some());
        let syncing = self
            .nodes
            .iter()
            .filter(|n| n.running && n.syncing > 0)
            .count();
        let synced = self
            .nodes
            .iter()
            .filter(|n| n.running && n.syncing == 0 && n.role != FakeRole::Leader)
            .count();
        let local = if self.nodes[i].running {
            "running (pid 6881)"
        } else {
            "down"
        };
        let (waiting, followers) = if leaders == 0 {
            (running, 0)
        } else {
            (0, running - leaders)
        };
        let health = if running == total {
            "green"
        } else if self.has_quorum() {
            "yellow"
        } else {
            "red"
        };
        format!(
            "Service        Local Status        Time in State  Distributed Node Status\n\
             leaderl        {local}  0d 0h 43m 35s  leader: {leaders}; waiting: {waiting}; follower: {followers}; total: {total}\n\
             etcd           {local}  0d 0h 43m 41s  health: {health}; healthy nodes: {running}/{total}\n\
             postgresql     {local}  0d 0h 43m 34s  leader: {leaders}; offline: {}; syncing: {syncing}; synced: {synced}\n\
             elasticsearch  {local}  0d 0h 43m 43s  state: {health}; nodes online: {running}/{total}\n",
            total - running,
        )
    }

    fn role_name(role: &FakeRole) -> &'static str {
        match role {
            FakeRole::Leader => "leader",
            FakeRole::Follower => "follower",
            FakeRole::Deposed => "deposed_leader",
            FakeRole::Waiting => "waiting_for_leader",
        }
    }

    /// A cluster-status observation: a deposed leader that is running rejoins as follower after it.
    fn observe_deposed(&mut self) {
        for n in &mut self.nodes {
            if n.role == FakeRole::Deposed && n.running {
                if n.deposed_polls == 0 {
                    n.role = FakeRole::Follower;
                } else {
                    n.deposed_polls -= 1;
                }
            }
        }
    }

    fn pg_es(n: &FakeNode) -> (&'static str, &'static str) {
        match (n.running, &n.role) {
            (false, _) => ("offline", "offline"),
            (true, FakeRole::Leader) => ("leader", "not_master"),
            (true, _) => ("follower", "not_master"),
        }
    }

    fn cluster_status_text(&mut self) -> String {
        let mut out = String::from(
            "Name       IP              GUID                              Role            PG        ES\n",
        );
        for n in &self.nodes {
            let (pg, es) = Self::pg_es(n);
            out.push_str(&format!(
                "{}  {}  {}  {}  {pg}  {es}\n",
                n.name,
                n.ip,
                n.guid,
                Self::role_name(&n.role)
            ));
        }
        self.observe_deposed();
        out
    }

    fn cluster_status_json(&mut self) -> String {
        let nodes: Vec<serde_json::Value> = self
            .nodes
            .iter()
            .map(|n| {
                let (pg, es) = Self::pg_es(n);
                serde_json::json!({
                    "name": n.name,
                    "ip": n.ip,
                    "guid": n.guid,
                    "role": Self::role_name(&n.role),
                    "pg": pg,
                    "es": es,
                    "running": n.running,
                    "failover": n.node_failover,
                })
            })
            .collect();
        let out = serde_json::json!({
            "failover": self.failover,
            "leader": self.leader_name(),
            "nodes": nodes,
        });
        self.observe_deposed();
        format!("{out}\n")
    }

    pub fn all_at_target(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.running_version == self.target && n.installed == self.target)
    }
}

/// Scheduled steps in a batch of events.
pub fn scheduled(events: &[Event]) -> Vec<ScheduledStep> {
    events.iter().filter_map(Event::scheduled_step).collect()
}

/// A history under construction: applies decisions as the service would.
pub struct Run {
    pub state: State,
    pub history: Vec<Event>,
    pub now: u64,
}

impl Run {
    pub fn new() -> Run {
        Run {
            state: State::default(),
            history: Vec::new(),
            now: 1_000,
        }
    }

    pub fn input(&mut self, input: Input) -> Result<Vec<Event>, Rejection> {
        let events = decide(&self.state, &input)?;
        for e in &events {
            self.state.apply(e);
        }
        self.history.extend(events.iter().cloned());
        Ok(events)
    }

    pub fn finish(
        &mut self,
        step: &ScheduledStep,
        result: (Outcome, Option<i32>, String, String),
    ) -> Vec<Event> {
        self.now += 10;
        let (outcome, exit_code, stdout, stderr) = result;
        self.input(Input::StepFinished {
            step: step.step,
            attempt: step.attempt,
            outcome,
            exit_code,
            stdout,
            stderr,
            reason: None,
            executor: format!("exec-{}", step.group),
            now_ms: self.now,
        })
        .expect("results are never rejected")
    }

    pub fn tick(&mut self) -> Vec<Event> {
        if let Some(at) = self.state.next_wakeup_ms() {
            self.now = self.now.max(at);
        }
        self.input(Input::Tick { now_ms: self.now })
            .expect("ticks are never rejected")
    }

    /// Runs every outstanding step against the fake and ticks through waits until nothing is outstanding
    /// and no timer is armed, or the upgrade ends.
    pub fn run_to_rest(&mut self, fake: &mut FakeCluster, max: usize) {
        for _ in 0..max {
            if self.state.is_terminal() {
                return;
            }
            let outstanding = self.state.outstanding_steps();
            if let Some(step) = outstanding.first() {
                let result = fake.run(step);
                self.finish(step, result);
                continue;
            }
            if self.state.next_wakeup_ms().is_some() {
                self.tick();
                continue;
            }
            return;
        }
    }
}

impl Default for Run {
    fn default() -> Self {
        Run::new()
    }
}

pub fn procedure_name(p: Procedure) -> &'static str {
    match p {
        Procedure::Runbook => "runbook",
        Procedure::UpgradeCommand => "upgrade-command",
    }
}

pub fn actions_of(history: &[Event]) -> Vec<(String, String)> {
    scheduled(history)
        .into_iter()
        .filter(|s| !s.action.is_probe())
        .map(|s| (s.node, s.action.as_str().to_string()))
        .collect()
}

pub fn count<T: Ord + Clone>(items: &[T]) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i.clone()).or_insert(0) += 1;
    }
    m
}

impl Run {
    /// Advances one thing (a result or a tick); false when there is nothing to do.
    pub fn advance(&mut self, fake: &mut FakeCluster) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        if let Some(step) = self.state.outstanding_steps().first() {
            let result = fake.run(step);
            self.finish(step, result);
            return true;
        }
        if self.state.next_wakeup_ms().is_some() {
            self.tick();
            return true;
        }
        false
    }

    /// Advances until `pred` holds; panics if it never does.
    pub fn until(&mut self, fake: &mut FakeCluster, what: &str, pred: impl Fn(&Run) -> bool) {
        for _ in 0..1_000 {
            if pred(self) {
                return;
            }
            if !self.advance(fake) {
                break;
            }
        }
        assert!(
            pred(self),
            "never reached: {what}; status {:?}; last events {:#?}",
            self.state.status(),
            &self.history[self.history.len().saturating_sub(6)..]
        );
    }

    /// The outstanding step, which a test expects.
    pub fn outstanding(&self) -> ScheduledStep {
        self.state
            .outstanding_steps()
            .first()
            .cloned()
            .expect("a step is outstanding")
    }

    /// Whether the outstanding step is `action` on `node`.
    pub fn next_is(&self, action: workflow::core::Action, node: &str) -> bool {
        self.state
            .outstanding_steps()
            .first()
            .is_some_and(|s| s.action == action && s.node == node)
    }
}

/// The result tuple of a failed command.
pub fn failed(code: i32, stderr: &str) -> (Outcome, Option<i32>, String, String) {
    (
        Outcome::Failed,
        Some(code),
        String::new(),
        stderr.to_string(),
    )
}

/// The result tuple of a succeeded command.
pub fn succeeded(stdout: &str) -> (Outcome, Option<i32>, String, String) {
    (
        Outcome::Succeeded,
        Some(0),
        stdout.to_string(),
        String::new(),
    )
}
