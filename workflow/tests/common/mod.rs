//! Test helpers shared by the core's test binaries: a tiny fake chef-backend cluster that answers the profile's
//! commands in the documented output formats, and a driver that feeds the core's steps to it.

#![allow(dead_code)]

use std::collections::BTreeMap;

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
}

#[derive(Debug, Clone)]
pub struct FakeNode {
    pub name: String,
    pub ip: String,
    pub guid: String,
    pub installed: String,
    pub running_version: String,
    pub running: bool,
    /// Status probes (anywhere) left before this node is synced after a restart.
    pub syncing: u32,
    pub role: FakeRole,
    /// cluster-status observations left before a deposed leader shows as follower.
    pub deposed_polls: u32,
}

/// What the fake saw that breaks a safety rule.
#[derive(Debug, Default, Clone)]
pub struct Violations {
    pub list: Vec<String>,
}

/// A three-node chef-backend cluster.
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
        }
    }

    fn idx(&self, name: &str) -> usize {
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

    fn check_s1(&mut self) {
        let out = self.out_of_service();
        if out.len() > 1 {
            self.violations
                .list
                .push(format!("S1: two nodes out of service: {out:?}"));
        }
    }

    fn leader(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.role == FakeRole::Leader)
    }

    fn elect_other(&mut self, old: usize) -> bool {
        let candidate = (0..self.nodes.len())
            .find(|&i| i != old && self.nodes[i].running && self.nodes[i].syncing == 0);
        match candidate {
            Some(c) => {
                if self.nodes[c].running_version != self.target {
                    self.violations.list.push(format!(
                        "S2: switchover to {} which runs {}",
                        self.nodes[c].name, self.nodes[c].running_version
                    ));
                }
                self.nodes[old].role = FakeRole::Deposed;
                self.nodes[old].deposed_polls = 1;
                self.nodes[c].role = FakeRole::Leader;
                true
            }
            None => false,
        }
    }

    /// Runs a step's argv as node `step.node`; returns (outcome, exit code, stdout, stderr).
    pub fn run(&mut self, step: &ScheduledStep) -> (Outcome, Option<i32>, String, String) {
        let i = self.idx(&step.node);
        self.journal.push((step.node.clone(), step.argv.clone()));
        let argv: Vec<&str> = step.argv.iter().map(String::as_str).collect();
        let ok = |out: &str| (Outcome::Succeeded, Some(0), out.to_string(), String::new());
        let fail = |err: &str| (Outcome::Failed, Some(1), String::new(), err.to_string());
        let result = match argv.as_slice() {
            ["chef-backend-ctl", "set-cluster-failover", state] => {
                self.failover = matches!(*state, "on" | "true" | "enabled");
                if !self.failover {
                    self.ever_blocked = true;
                }
                ok("")
            }
            ["chef-backend-ctl", "stop"] => {
                if self.nodes[i].role == FakeRole::Leader {
                    self.violations
                        .list
                        .push(format!("S2: leader {} stopped", self.nodes[i].name));
                }
                self.nodes[i].running = false;
                ok("ok: down: postgresql: 0s, normally up\n")
            }
            ["chef-backend-ctl", "start"] => {
                if !self.nodes[i].running {
                    self.nodes[i].running = true;
                    self.nodes[i].running_version = self.nodes[i].installed.clone();
                    self.nodes[i].syncing = 2;
                }
                ok("ok: run: postgresql: (pid 12345) 1s\n")
            }
            ["chef-backend-ctl", "demote"] => {
                if self.nodes[i].role != FakeRole::Leader {
                    fail("this node is not the leader")
                } else if !self.failover {
                    fail("cluster failover is disabled")
                } else if self.elect_other(i) {
                    ok("demoted\n")
                } else {
                    fail("election timed out")
                }
            }
            ["chef-backend-ctl", "upgrade"] => {
                if self.nodes[i].role == FakeRole::Leader {
                    fail("refusing to upgrade the leader without --failover")
                } else {
                    self.nodes[i].running_version = self.nodes[i].installed.clone();
                    self.nodes[i].syncing = 1;
                    self.check_s1();
                    ok("upgraded\n")
                }
            }
            ["chef-backend-ctl", "upgrade", "--failover"] => {
                if self.nodes[i].role != FakeRole::Leader {
                    fail("not the leader")
                } else if !self.failover {
                    fail("cluster failover is disabled")
                } else if self.elect_other(i) {
                    self.nodes[i].running_version = self.nodes[i].installed.clone();
                    self.nodes[i].syncing = 1;
                    self.check_s1();
                    ok("upgraded with failover\n")
                } else {
                    fail("election timed out")
                }
            }
            ["chef-backend-ctl", "status"] => ok(&self.status_text(i)),
            ["chef-backend-ctl", "cluster-status"] => {
                if !self.nodes[i].running {
                    fail("cannot reach etcd")
                } else {
                    ok(&self.cluster_status_text())
                }
            }
            ["dpkg", "-i", path] => {
                if !path.ends_with("chef-backend_3.1.0-1_amd64.deb") {
                    fail("dpkg: error: cannot access archive")
                } else {
                    if self.nodes[i].name == self.original_leader {
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
                    if self.nodes[i].installed == self.target {
                        // Preflight skips nodes already at the target: a second install is one the core ran
                        // again after the first took effect.
                        self.violations.list.push(format!(
                            "S4: install ran again on {}, which already has {}",
                            self.nodes[i].name, self.target
                        ));
                    }
                    self.nodes[i].installed = "3.1.0-1".into();
                    ok("Unpacking chef-backend (3.1.0-1) ...\n")
                }
            }
            ["dpkg-query", "-W", "-f=${Version}", "chef-backend"] => {
                ok(&self.nodes[i].installed.clone())
            }
            other => fail(&format!("fake: unknown command {other:?}")),
        };
        self.check_s1();
        result
    }

    fn status_text(&mut self, i: usize) -> String {
        // Every status probe moves sync along: the fake's notion of time.
        for n in &mut self.nodes {
            if n.running && n.syncing > 0 {
                n.syncing -= 1;
            }
        }
        let total = self.nodes.len();
        let running = self.nodes.iter().filter(|n| n.running).count();
        let leaders = self
            .nodes
            .iter()
            .filter(|n| n.running && n.role == FakeRole::Leader)
            .count();
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
        let health = if running == total { "green" } else { "yellow" };
        format!(
            "Service        Local Status        Time in State  Distributed Node Status\n\
             leaderl        {local}  0d 0h 43m 35s  leader: {leaders}; waiting: 0; follower: {}; total: {total}\n\
             etcd           {local}  0d 0h 43m 41s  health: {health}; healthy nodes: {running}/{total}\n\
             postgresql     {local}  0d 0h 43m 34s  leader: {leaders}; offline: {}; syncing: {syncing}; synced: {synced}\n\
             elasticsearch  {local}  0d 0h 43m 43s  state: {health}; nodes online: {running}/{total}\n",
            running - leaders,
            total - running,
        )
    }

    fn cluster_status_text(&mut self) -> String {
        let mut out = String::from(
            "Name       IP              GUID                              Role            PG        ES\n",
        );
        for n in &mut self.nodes {
            let role = match n.role {
                FakeRole::Leader => "leader",
                FakeRole::Follower => "follower",
                FakeRole::Deposed => "deposed_leader",
            };
            let pg = if n.role == FakeRole::Leader {
                "leader"
            } else {
                "follower"
            };
            out.push_str(&format!(
                "{}  {}  {}  {role}  {pg}  not_master\n",
                n.name, n.ip, n.guid
            ));
            if n.role == FakeRole::Deposed && n.running {
                if n.deposed_polls == 0 {
                    n.role = FakeRole::Follower;
                } else {
                    n.deposed_polls -= 1;
                }
            }
        }
        out
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
