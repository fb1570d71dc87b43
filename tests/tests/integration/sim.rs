//! Integration tests: the simulator driven as processes, the way executors run it.
//!
//! Each test creates a cluster with `baton-sim init`, then runs the runbook's exact commands through the
//! per-node bin folders (`PATH=D/nodes/<node>/bin:$PATH chef-backend-ctl ...`), waits for syncs by polling
//! `chef-backend-ctl status` with a timeout, and asserts on the typed report of `baton-sim report --json`.
//! The `baton-sim` binary is found next to the test executable's folder (target/debug/baton-sim);
//! scripts/test.sh builds it before the tests run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sim::report::Rule;
use sim::{Report, Verdict};

const OLD: &str = "3.0.0-1";
const NEW: &str = "3.1.0-1";
const DEB: &str = "chef-backend_3.1.0-1_amd64.deb";
const RPM: &str = "chef-backend-3.1.0-1.el7.x86_64.rpm";
const WAIT: Duration = Duration::from_secs(20);
/// The workflow core's installed-version probe.
const PROBE: &str = "-f=${db:Status-Status} ${Version}\\n";

fn baton_sim() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("baton-sim");
    assert!(
        bin.is_file(),
        "{} not found: build it first (cargo build -p sim --bins)",
        bin.display()
    );
    bin
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A simulated cluster in a temp dir, with the package copied to every node.
struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    nodes: Vec<String>,
}

impl Cluster {
    fn new(extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("cluster");
        let mut args = vec![
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--nodes",
            "3",
            "--version",
            OLD,
        ];
        // Small timings keep the suite fast; tests wait on conditions, never on these values. A timing
        // given in `extra` replaces the default.
        for pair in [
            ["--sync-ms", "150"],
            ["--election-ms", "100"],
            ["--start-ms", "50"],
            ["--demote-timeout-ms", "3000"],
            ["--upgrade-timeout-ms", "5000"],
        ] {
            if !extra.contains(&pair[0]) {
                args.extend(pair);
            }
        }
        args.extend(extra);
        let out = Command::new(baton_sim())
            .args(&args)
            .output()
            .expect("run baton-sim init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let nodes: Vec<String> = (1..=3).map(|i| format!("backend-{i}")).collect();
        for n in &nodes {
            for pkg in [DEB, RPM] {
                std::fs::write(dir.join("nodes").join(n).join(pkg), b"package")
                    .expect("copy package");
            }
        }
        Cluster {
            _tmp: tmp,
            dir,
            nodes,
        }
    }

    fn package(&self, node: &str, name: &str) -> String {
        self.dir
            .join("nodes")
            .join(node)
            .join(name)
            .to_string_lossy()
            .into_owned()
    }

    fn command(&self, node: &str, argv: &[&str]) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.join("nodes").join(node).join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).env("PATH", path).stdin(Stdio::null());
        c
    }

    /// Runs a command on a node (argv, resolved through the node's bin folder).
    fn run(&self, node: &str, argv: &[&str]) -> Out {
        let o = self
            .command(node, argv)
            .output()
            .expect("spawn node command");
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Runs a command that must succeed.
    fn ok(&self, node: &str, argv: &[&str]) -> String {
        let o = self.run(node, argv);
        assert_eq!(
            o.code, 0,
            "{node}: {argv:?} failed: {}{}",
            o.stdout, o.stderr
        );
        o.stdout
    }

    fn spawn(&self, node: &str, argv: &[&str]) -> Child {
        self.command(node, argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    /// `(name, role)` rows of `cluster-status` run on `node`.
    fn roles(&self, node: &str) -> Vec<(String, String)> {
        let out = self.ok(node, &["chef-backend-ctl", "cluster-status"]);
        out.lines()
            .skip(1)
            .map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                (cols[0].to_string(), cols[3].to_string())
            })
            .collect()
    }

    fn leader(&self) -> String {
        let roles = self.roles(&self.nodes[0]);
        roles
            .into_iter()
            .find(|(_, r)| r == "leader")
            .map(|(n, _)| n)
            .expect("a leader")
    }

    /// Polls `status` on `node` until the postgresql row reports every other node synced.
    fn wait_synced(&self, node: &str) {
        let want = format!("synced: {}", self.nodes.len() - 1);
        let deadline = Instant::now() + WAIT;
        loop {
            let o = self.run(node, &["chef-backend-ctl", "status"]);
            let pg = o
                .stdout
                .lines()
                .find(|l| l.starts_with("postgresql"))
                .unwrap_or("")
                .to_string();
            if o.code == 0 && pg.ends_with(&want) && pg.contains("leader: 1;") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} not synced in time; last status:\n{}",
                o.stdout
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// After a switchover from `old` to `new`: polls until `old`'s Role is `follower` (not merely its PG
    /// column) and `new`'s `status` shows every other node synced. Only then may `old` be stopped.
    fn wait_switchover_resynced(&self, old: &str, new: &str) {
        self.wait_role(new, old, "follower");
        self.wait_synced(new);
    }

    /// Polls `cluster-status` on `node` until `who` has `role`.
    fn wait_role(&self, node: &str, who: &str, role: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.roles(node).iter().any(|(n, r)| n == who && r == role) {
            assert!(Instant::now() < deadline, "{who} never became {role}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn report(&self) -> Report {
        let o = Command::new(baton_sim())
            .args(["report", "--dir", self.dir.to_str().unwrap(), "--json"])
            .output()
            .expect("run baton-sim report");
        let report: Report = serde_json::from_slice(&o.stdout).expect("report JSON");
        let safe = report.verdict == Verdict::Safe;
        assert_eq!(
            o.status.code(),
            Some(if safe { 0 } else { 1 }),
            "report exit code follows the verdict"
        );
        report
    }

    fn human_report(&self) -> String {
        let o = Command::new(baton_sim())
            .args(["report", "--dir", self.dir.to_str().unwrap()])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn followers(&self, leader: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| *n != leader)
            .cloned()
            .collect()
    }

    /// Step 2 of the runbook on one node: stop, install, start, verify synced.
    fn upgrade_like_a_follower(&self, node: &str) {
        self.ok(node, &["chef-backend-ctl", "stop"]);
        self.ok(node, &["dpkg", "-i", &self.package(node, DEB)]);
        self.ok(node, &["chef-backend-ctl", "start"]);
        self.wait_synced(node);
    }
}

fn assert_all_at(report: &Report, version: &str) {
    for (node, v) in &report.versions {
        assert_eq!(
            (v.installed.as_str(), v.running.as_str()),
            (version, version),
            "{node}"
        );
    }
}

fn violation_nodes(report: &Report, rule: Rule) -> Vec<String> {
    report
        .violations
        .iter()
        .filter(|v| v.rule == rule)
        .flat_map(|v| v.nodes.clone())
        .collect()
}

#[test]
fn seed_runbook_by_hand_is_safe_with_zero_downtime_outside_the_election_window() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    // Step 1: block failover.
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    // Step 2: each follower in turn.
    for f in c.followers(&leader) {
        c.upgrade_like_a_follower(&f);
    }
    // Step 3: unblock, demote, block again; verify another node leads and the old leader is deposed.
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "demote"]);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    let roles = c.roles(&leader);
    let new_leader = roles
        .iter()
        .find(|(_, r)| r == "leader")
        .map(|(n, _)| n.clone())
        .expect("new leader");
    assert_ne!(new_leader, leader);
    assert!(
        roles.contains(&(leader.clone(), "deposed_leader".to_string())),
        "{roles:?}"
    );
    c.wait_switchover_resynced(&leader, &new_leader);
    // Step 4: upgrade the demoted leader like a follower.
    c.upgrade_like_a_follower(&leader);
    // Step 5: re-enable failover. Step 6: check status.
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    let status = c.ok(&leader, &["chef-backend-ctl", "status"]);
    assert!(
        status.contains("leader: 1; waiting: 0; follower: 2; total: 3"),
        "{status}"
    );
    assert!(
        status.contains("leader: 1; offline: 0; syncing: 0; synced: 2"),
        "{status}"
    );
    assert_eq!(
        c.ok(
            &leader,
            &["dpkg-query", "-W", "-f=${Version}", "chef-backend"]
        ),
        NEW
    );

    let r = c.report();
    assert_eq!(r.verdict, Verdict::Safe, "{}", c.human_report());
    assert_eq!(r.downtime.outside_election_ms, 0);
    assert!(
        r.downtime.inside_election_ms > 0,
        "the demote's election window has the only downtime"
    );
    assert_eq!(r.downtime.election_windows.len(), 1);
    // The switchover itself takes the deposed leader and the re-syncing follower out together; nothing
    // else ever is.
    assert_eq!(r.max_out_of_service, 2);
    assert_eq!(r.max_out_of_service_outside_switchover, 1);
    assert!(r.incidents.is_empty(), "{:?}", r.incidents);
    assert!(r.unsynced_demotes.is_empty() && r.installed_while_running.is_empty());
    assert!(r.installs.values().all(|&n| n == 1), "{:?}", r.installs);
    assert_all_at(&r, NEW);
    assert!(r.failover_at_end);
    assert_eq!(r.failed_commands, 0);
}

#[test]
fn newer_procedure_install_then_upgrade_is_safe() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    for f in c.followers(&leader) {
        c.ok(&f, &["yum", "install", "-y", &c.package(&f, RPM)]);
        let out = c.ok(&f, &["chef-backend-ctl", "upgrade"]);
        assert!(out.contains("synced"), "{out}");
    }
    c.ok(&leader, &["yum", "install", "-y", &c.package(&leader, RPM)]);
    // `upgrade` without --failover on the leader is refused with a clear message.
    let refused = c.run(&leader, &["chef-backend-ctl", "upgrade"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--failover"), "{}", refused.stderr);
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "upgrade", "--failover"]);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "status"]);
    assert_eq!(
        c.ok(
            &leader,
            &["rpm", "-q", "--qf", "%{VERSION}-%{RELEASE}", "chef-backend"]
        ),
        "3.1.0-1.el7"
    );

    let r = c.report();
    assert_eq!(r.verdict, Verdict::Safe, "{}", c.human_report());
    assert_eq!(r.downtime.outside_election_ms, 0);
    assert_eq!(r.installed_while_running.len(), 3);
    assert!(r
        .installed_while_running
        .iter()
        .all(|i| i.followed_by_upgrade));
    assert_eq!(r.max_out_of_service_outside_switchover, 1);
    assert_all_at(&r, NEW);
}

#[test]
fn unsafe_two_followers_stopped_at_once() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    let fs = c.followers(&leader);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    for f in &fs {
        c.ok(f, &["chef-backend-ctl", "stop"]);
    }
    for f in &fs {
        c.ok(f, &["dpkg", "-i", &c.package(f, DEB)]);
        c.ok(f, &["chef-backend-ctl", "start"]);
    }
    c.wait_synced(&fs[0]);
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    // Two of three nodes down: etcd loses its quorum and the leader steps down too.
    assert_eq!(r.max_out_of_service, 3);
    assert!(r.has(Rule::WriteOutage), "{:?}", r.violations);
    let named = violation_nodes(&r, Rule::TooManyOutOfService);
    assert!(fs.iter().all(|f| named.contains(f)), "{named:?}");
    assert!(c.human_report().contains("3 nodes out of service at once"));
}

#[test]
fn unsafe_leader_stopped_with_failover_off() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    c.ok(&leader, &["chef-backend-ctl", "stop"]);
    // Nobody can take over: the followers see no leader.
    let f = &c.followers(&leader)[0];
    let status = c.ok(f, &["chef-backend-ctl", "status"]);
    assert!(status.contains("leader: 0;"), "{status}");
    assert!(
        status.contains("error: could not reach pgsql leader for replication stats"),
        "{status}"
    );
    c.ok(&leader, &["chef-backend-ctl", "start"]);
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert_eq!(
        violation_nodes(&r, Rule::LeaderStopped),
        vec![leader.clone()]
    );
    assert!(violation_nodes(&r, Rule::WriteOutage).contains(&leader));
    assert!(r.downtime.outside_election_ms > 0);
}

#[test]
fn unsafe_demote_before_followers_synced() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    let fs = c.followers(&leader);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    c.ok(&fs[0], &["chef-backend-ctl", "stop"]);
    c.ok(&fs[0], &["dpkg", "-i", &c.package(&fs[0], DEB)]);
    c.ok(&fs[0], &["chef-backend-ctl", "start"]);
    // No wait for the sync: straight to the switchover.
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "demote"]);
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert_eq!(r.unsynced_demotes.len(), 1);
    assert_eq!(r.unsynced_demotes[0].unsynced, vec![fs[0].clone()]);
    let named = violation_nodes(&r, Rule::DemoteWithUnsyncedFollower);
    assert!(
        named.contains(&leader) && named.contains(&fs[0]),
        "{named:?}"
    );
}

#[test]
fn unsafe_leader_upgraded_first() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    c.upgrade_like_a_follower(&leader);
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert_eq!(
        violation_nodes(&r, Rule::LeaderUpgradedFirst),
        vec![leader.clone()]
    );
    let msg = &r
        .violations
        .iter()
        .find(|v| v.rule == Rule::LeaderUpgradedFirst)
        .unwrap()
        .message;
    assert!(
        c.followers(&leader)
            .iter()
            .all(|f| msg.contains(f.as_str())),
        "{msg}"
    );
}

#[test]
fn unsafe_failover_left_off() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    for f in c.followers(&leader) {
        c.upgrade_like_a_follower(&f);
    }
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "demote"]);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    c.wait_role(&leader, &leader, "follower");
    c.upgrade_like_a_follower(&leader);
    // Step 5 forgotten.
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert!(!r.failover_at_end);
    let rules: Vec<Rule> = r.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, vec![Rule::FailoverLeftOff], "the only violation");
    assert_eq!(r.downtime.outside_election_ms, 0);
    assert!(c
        .human_report()
        .contains("Cluster failover at the end: off"));
}

#[test]
fn demote_refused_with_failover_off_and_unknown_commands_are_usage_errors() {
    let c = Cluster::new(&[]);
    let leader = c.leader();
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    let o = c.run(&leader, &["chef-backend-ctl", "demote"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("failover is disabled"), "{}", o.stderr);
    assert_eq!(c.leader(), leader, "nothing changed");
    let o = c.run(&leader, &["chef-backend-ctl", "frobnicate"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stdout.starts_with("I don't know that command.\n"),
        "{}",
        o.stdout
    );
    let o = c.run(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "maybe"],
    );
    assert_ne!(o.code, 0);
    // Missing file and unparsable names fail like the real tools.
    let o = c.run(
        &leader,
        &["dpkg", "-i", "/nonexistent/chef-backend_3.1.0-1_amd64.deb"],
    );
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("cannot access archive"), "{}", o.stderr);
    let bad = c
        .dir
        .join("nodes")
        .join(&leader)
        .join("chef-backend_latest.deb");
    std::fs::write(&bad, b"x").unwrap();
    let o = c.run(&leader, &["dpkg", "-i", bad.to_str().unwrap()]);
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("is not a Debian format archive"),
        "{}",
        o.stderr
    );
    assert_eq!(
        c.ok(
            &leader,
            &["dpkg-query", "-W", "-f=${Version}", "chef-backend"]
        ),
        OLD
    );
}

#[test]
fn injected_faults_fail_commands_and_can_be_cleared() {
    let c = Cluster::new(&["--fault", "backend-2:install-fails"]);
    let fault = |args: &[&str]| {
        let mut a = vec!["fault", "--dir", c.dir.to_str().unwrap()];
        a.extend(args);
        let o = Command::new(baton_sim()).args(&a).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let o = c.run("backend-2", &["dpkg", "-i", &c.package("backend-2", DEB)]);
    assert_eq!(o.code, 1);
    // As dpkg: the new version is unpacked, its post-install failed, the package is half-configured.
    assert_eq!(
        c.ok("backend-2", &["dpkg-query", "-W", PROBE, "chef-backend"]),
        "half-configured 3.1.0-1\n"
    );
    fault(&["--node", "backend-2", "--clear", "install-fails"]);
    c.ok("backend-2", &["dpkg", "-i", &c.package("backend-2", DEB)]);
    assert_eq!(
        c.ok("backend-2", &["dpkg-query", "-W", PROBE, "chef-backend"]),
        "installed 3.1.0-1\n"
    );

    fault(&["--node", "backend-3", "start-fails"]);
    c.ok("backend-3", &["chef-backend-ctl", "stop"]);
    let o = c.run("backend-3", &["chef-backend-ctl", "start"]);
    assert_eq!(o.code, 1);
    assert!(
        o.stdout.contains("timeout: down: postgresql"),
        "{}",
        o.stdout
    );
    fault(&["--node", "backend-3", "--clear", "all"]);
    c.ok("backend-3", &["chef-backend-ctl", "start"]);
    c.wait_synced("backend-3");

    // demote-timeout: the command fails without knowing the outcome, but the election went ahead.
    fault(&["--node", "backend-1", "demote-timeout"]);
    let o = c.run("backend-1", &["chef-backend-ctl", "demote"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("Timed out"), "{}", o.stderr);
    assert_ne!(
        c.leader(),
        "backend-1",
        "re-observing shows the switchover happened"
    );

    let r = c.report();
    assert_eq!(
        r.installs["backend-2"], 1,
        "the failed install is not counted"
    );
}

#[test]
fn election_that_elects_nobody_is_an_outage_in_the_report() {
    let c = Cluster::new(&["--fault", "backend-1:election-nobody"]);
    let o = c.run("backend-1", &["chef-backend-ctl", "demote"]);
    assert_ne!(o.code, 0);
    let status = c.ok("backend-2", &["chef-backend-ctl", "status"]);
    assert!(status.contains("leader: 0;"), "{status}");
    // Recovery by hand: promote a synced node.
    c.ok("backend-2", &["chef-backend-ctl", "promote", "backend-2"]);
    assert_eq!(c.leader(), "backend-2");
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe);
    assert!(r.has(Rule::WriteOutage), "{:?}", r.violations);
}

#[test]
fn concurrent_commands_from_many_processes_lose_no_update() {
    let c = Cluster::new(&[]);
    let mut children = Vec::new();
    for _ in 0..6 {
        for n in &c.nodes {
            children.push(c.spawn(n, &["dpkg", "-i", &c.package(n, DEB)]));
            children.push(c.spawn(n, &["chef-backend-ctl", "status"]));
        }
    }
    for ch in children {
        let o = ch.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let r = c.report();
    assert!(r.installs.values().all(|&n| n == 6), "{:?}", r.installs);
    assert_eq!(r.commands, 36);
}

#[test]
fn a_hanging_status_does_not_block_other_nodes() {
    let c = Cluster::new(&["--fault", "backend-1:status-hang=4"]);
    let mut hanging = c.spawn("backend-1", &["chef-backend-ctl", "status"]);
    // Give the hanging process time to start its hang: poll until the journal lock is free and the
    // other node answers; the hanging one must still be running then.
    c.ok("backend-2", &["chef-backend-ctl", "stop"]);
    c.ok("backend-2", &["chef-backend-ctl", "start"]);
    c.wait_synced("backend-2");
    assert!(
        hanging.try_wait().unwrap().is_none(),
        "status on backend-1 is still hanging"
    );
    assert!(hanging.wait().unwrap().success());
}

/// The old `scripts/runbook-by-hand.sh` waited for the demoted leader with
/// `grep -q "backend-1 .* follower "` on `cluster-status`, which the deposed leader's PG column matches at
/// once: it stopped the old leader while the other follower was still re-syncing from the new leader.
#[test]
fn unsafe_old_runbook_script_wait_stops_the_deposed_leader_before_the_resync() {
    let c = Cluster::new(&["--sync-ms", "1500"]);
    let leader = c.leader();
    assert_eq!(leader, "backend-1");
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    for f in c.followers(&leader) {
        c.upgrade_like_a_follower(&f);
    }
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    c.ok(&leader, &["chef-backend-ctl", "demote"]);
    c.ok(
        &leader,
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    // The broken wait: any line with `backend-1 <anything> follower `.
    let deadline = Instant::now() + WAIT;
    loop {
        let out = c.ok("backend-2", &["chef-backend-ctl", "cluster-status"]);
        let matched = out.lines().any(|l| {
            l.find("backend-1 ")
                .is_some_and(|k| l[k + "backend-1 ".len()..].contains(" follower "))
        });
        if matched {
            let line = out.lines().find(|l| l.starts_with("backend-1")).unwrap();
            assert!(
                line.contains("deposed_leader"),
                "the pattern matched before the Role column said follower: {line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "pattern never matched:\n{out}");
        std::thread::sleep(Duration::from_millis(25));
    }
    c.upgrade_like_a_follower(&leader);
    c.ok(&leader, &["chef-backend-ctl", "set-cluster-failover", "on"]);
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Unsafe, "{}", c.human_report());
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == Rule::TooManyOutOfService)
        .unwrap_or_else(|| panic!("{}", c.human_report()));
    assert!(
        v.nodes.contains(&leader)
            && v.message
                .contains("backend-3 still re-syncing after the leader change"),
        "{}",
        v.message
    );
    assert!(c.human_report().contains("[too_many_out_of_service]"));
}

#[test]
fn the_fixed_runbook_script_is_safe() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("runbook-by-hand.sh");
    let o = Command::new("bash")
        .arg(&script)
        .env("BATON_SIM", baton_sim())
        .env(
            "BATON_SIM_INIT_ARGS",
            "--sync-ms 600 --election-ms 100 --start-ms 50",
        )
        .output()
        .expect("run scripts/runbook-by-hand.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("Verdict: SAFE"), "{stdout}");
    assert!(
        stdout.contains("not counting switchover re-syncs: 1"),
        "{stdout}"
    );
}

/// Runs `baton-sim SUBCOMMAND --dir D --node X` with an optional `BATON_SIM_ACTOR`.
fn sim_cmd(c: &Cluster, sub: &str, node: &str, actor: Option<&str>) -> Out {
    let mut cmd = Command::new(baton_sim());
    cmd.args([sub, "--dir", c.dir.to_str().unwrap(), "--node", node]);
    match actor {
        Some(a) => cmd.env("BATON_SIM_ACTOR", a),
        None => cmd.env_remove("BATON_SIM_ACTOR"),
    };
    let o = cmd.output().expect("run baton-sim");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn crash_and_restart_are_the_environments_and_baton_must_react() {
    let c = Cluster::new(&[]);
    // A crashed follower stays down until someone starts it; `status` still exits 0 (the table tells).
    let o = sim_cmd(&c, "crash", "backend-3", None);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let st = c.run("backend-3", &["chef-backend-ctl", "status"]);
    assert_eq!(st.code, 0);
    assert!(st.stdout.contains("leaderl        down"), "{}", st.stdout);
    c.ok("backend-3", &["chef-backend-ctl", "start"]);
    c.wait_synced("backend-3");
    // restart: crash and start at once; it re-syncs.
    assert_eq!(sim_cmd(&c, "restart", "backend-2", None).code, 0);
    c.wait_synced("backend-2");
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Safe, "{}", c.human_report());
    let env: Vec<&str> = r
        .incidents
        .iter()
        .filter(|i| i.rule.is_none())
        .map(|i| i.actor.as_str())
        .collect();
    assert_eq!(env, vec!["environment", "environment"]);

    // The leader crashes while failover is off (as in the runbook): Baton must turn failover back on.
    c.ok(
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    assert_eq!(sim_cmd(&c, "crash", "backend-1", Some("chaos")).code, 0);
    c.ok(
        "backend-2",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    c.wait_role("backend-2", "backend-2", "leader");
    c.ok("backend-1", &["chef-backend-ctl", "start"]);
    c.wait_synced("backend-2");
    let r = c.report();
    assert_eq!(r.verdict, Verdict::Safe, "{}", c.human_report());
    assert!(r
        .incidents
        .iter()
        .any(|i| i.actor == "chaos" && i.rule == Some(Rule::LeaderStopped)));
    assert!(c.human_report().contains("Environment incidents"));
}

#[test]
fn an_operator_promote_is_journalled_with_its_actor() {
    let c = Cluster::new(&[]);
    let o = c
        .command("backend-2", &["chef-backend-ctl", "promote", "backend-2"])
        .env("BATON_SIM_ACTOR", "operator")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(c.leader(), "backend-2");
    let journal = std::fs::read_to_string(c.dir.join("journal.jsonl")).unwrap();
    let promote = journal
        .lines()
        .find(|l| l.contains("\"promote\"") && l.contains("\"kind\":\"command\""))
        .expect("the promote is journalled");
    assert!(promote.contains("\"actor\":\"operator\""), "{promote}");
    let r = c.report();
    assert!(r.incidents.iter().any(|i| i.actor == "operator"));
    assert!(!r.has(Rule::DemoteWithUnsyncedFollower));
}

/// `docker compose up` a second time runs `sim-init` again: with `--if-absent` it
/// leaves the cluster as it is (state and journal untouched, exit 0); without it, a
/// second init is refused.
#[test]
fn init_if_absent_leaves_an_existing_cluster_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sim");
    let init = |extra: &[&str]| {
        Command::new(baton_sim())
            .args(["init", "--dir", dir.to_str().unwrap(), "--nodes", "3"])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = init(&["--version", OLD, "--if-absent"]);
    assert!(first.status.success(), "{first:?}");
    let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut all: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        all.sort();
        all
    };
    let before = files(&dir);
    assert!(
        before.iter().any(|(p, _)| p.ends_with("state.json")),
        "{before:?}"
    );
    // Another version: still left alone.
    let again = init(&["--version", "3.1.0-1", "--if-absent"]);
    assert!(again.status.success(), "{again:?}");
    assert!(String::from_utf8_lossy(&again.stdout).contains("left as it is"));
    assert_eq!(files(&dir), before, "nothing rewritten");
    let refused = init(&["--version", OLD]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already holds a simulated cluster"),
        "{refused:?}"
    );
}
