//! A real 3-member etcd cluster on loopback (tests::real::etcd, docs/real-clusters.md), upgraded 3.4 -> 3.5 while
//! a client writes through etcd's own JSON gateway: by the manual baseline (a plain shell script), and by Baton
//! (a real nats-server, `baton server`, one `baton executor --cluster` per member running the profile file's
//! commands with the local runner), judged by the same checks from the members' own journals and the writer.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tests::real::etcd::{Action, EtcdCluster, WriterReport};
use tests::{workspace_bin, NatsServer, Proc, Secure};
use workflow::core::Event;
use workflow::service::api::StatusView;

/// Each member's actions after `since_ms`, by member.
fn by_member(actions: &[Action], since_ms: u64) -> BTreeMap<String, Vec<&Action>> {
    let mut map: BTreeMap<String, Vec<&Action>> = BTreeMap::new();
    for a in actions.iter().filter(|a| a.at_unix_ms >= since_ms) {
        map.entry(a.node.clone()).or_default().push(a);
    }
    map
}

#[test]
fn the_manual_baseline_upgrades_every_member_once_leader_last_and_loses_no_write() {
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    let (old, new) = (cluster.old_version(), cluster.new_version());
    for node in cluster.node_names() {
        assert_eq!(cluster.running_version(&node).unwrap(), old, "{node}");
    }
    let leader = cluster.leader().expect("a member leads");
    // The shipped profile's probes, run for real (`baton profile check --run-here`), see the same cluster.
    let seen = crate::profile::check_live(
        &crate::profile::shipped("etcd.toml"),
        cluster.cluster_file(),
    );
    for leaders in crate::profile::leaders_seen(&seen) {
        assert_eq!(leaders, std::slice::from_ref(&leader), "{seen:#}");
    }
    for (node, version) in crate::profile::observed(&seen, "running_version") {
        assert_eq!(version, old, "{node}: {seen:#}");
    }
    let since = cluster
        .actions()
        .unwrap()
        .last()
        .map_or(0, |a| a.at_unix_ms + 1);

    let writer = cluster.start_writer().expect("the writer starts");
    let run = cluster
        .run_manual_upgrade()
        .expect("the manual upgrade runs");
    let report = writer.stop().expect("the writer reports");
    println!(
        "manual baseline etcd {old} -> {new}: wall {:.2} s, order {:?}, leadership {} -> {}; writer: {report}",
        run.wall.as_secs_f64(),
        run.order,
        run.old_leader,
        run.new_leader
    );
    println!("manual baseline steps:\n{}", run.output);

    // The profile's probes see the upgraded cluster: the new leader, the new version everywhere.
    let seen = crate::profile::check_live(
        &crate::profile::shipped("etcd.toml"),
        cluster.cluster_file(),
    );
    for leaders in crate::profile::leaders_seen(&seen) {
        assert_eq!(leaders, std::slice::from_ref(&run.new_leader), "{seen:#}");
    }
    for probe in ["version", "running_version"] {
        for (node, version) in crate::profile::observed(&seen, probe) {
            assert_eq!(version, new, "{probe} of {node}: {seen:#}");
        }
    }
    // Every member runs, and has installed, the new version.
    for node in cluster.node_names() {
        assert_eq!(cluster.running_version(&node).unwrap(), new, "{node} runs");
        assert_eq!(cluster.installed_version(&node).unwrap(), new, "{node} has");
    }
    // Each member was stopped, switched to the new version and started exactly once, in that order.
    let actions = cluster.actions().unwrap();
    let per_member = by_member(&actions, since);
    assert_eq!(per_member.len(), 3, "{actions:?}");
    for (node, acts) in &per_member {
        let kinds: Vec<(&str, &str)> = acts
            .iter()
            .map(|a| (a.action.as_str(), a.version.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [("stop", ""), ("install", new), ("start", new)],
            "{node}"
        );
    }
    // The leader went last: it was stopped only after both followers had started on the new version, and
    // leadership had moved to an upgraded member.
    assert_eq!(run.old_leader, leader);
    assert_eq!(run.order.last(), Some(&leader), "{:?}", run.order);
    assert_ne!(run.new_leader, leader);
    let leader_stop = per_member[&leader][0].at_unix_ms;
    for (node, acts) in per_member.iter().filter(|(n, _)| **n != leader) {
        assert!(
            acts[2].at_unix_ms <= leader_stop,
            "{node} started on {new} after the leader {leader} stopped: {actions:?}"
        );
    }
    // No acknowledged write was lost, and the writer wrote through the whole upgrade (writes acknowledged while
    // each member was out or being restarted, i.e. between the first stop and the last start).
    assert_eq!(report.lost, 0, "lost writes: {:?}", report.lost_keys);
    assert!(report.acknowledged > 0);
    let first_stop = actions.iter().find(|a| a.at_unix_ms >= since).unwrap();
    let last_start = actions.last().unwrap();
    assert!(
        report
            .acknowledged_between(first_stop.at_unix_ms, last_start.at_unix_ms)
            .unwrap()
            > 0,
        "no write acknowledged during the upgrade: {report}"
    );
}

#[test]
fn the_writer_counts_an_acknowledged_write_that_is_gone_as_lost() {
    // The loss check can fail: delete one acknowledged key behind the writer's back.
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    let writer = cluster.start_writer().expect("the writer starts");
    let etcdctl = cluster.new_package().join("bin/etcdctl");
    let deleted = std::process::Command::new(&etcdctl)
        .args(["--endpoints", cluster.endpoints()])
        .args(["del", "--prefix", "baton-writer/"])
        .output()
        .expect("etcdctl runs");
    assert!(deleted.status.success(), "{deleted:?}");
    let count: u64 = String::from_utf8_lossy(&deleted.stdout)
        .trim()
        .parse()
        .expect("etcdctl del prints how many keys it deleted");
    assert!(count > 0, "the writer had acknowledged a write");
    let report = writer.stop().expect("the writer reports");
    assert!(report.lost >= count, "{report}, {count} deleted");
    assert!(!report.lost_keys.is_empty());
}

/// Baton deployed for a real cluster whose executor groups are its members' names: an authenticated nats-server
/// (TLS, nkeys), `baton server`, and one `baton executor --group NODE --cluster FILE` per member with the local
/// runner (the member's commands run on this machine, as the cluster file's vars say).
/// Dropped in field order: the processes first, then nats-server, then their files. Also the deployment of
/// `attacks::a_submitted_profile_whose_parsers_differ_from_the_executors_runs_nothing`.
pub(crate) struct Baton {
    server: Proc,
    executors: Vec<Proc>,
    nats: NatsServer,
    secure: Secure,
    _dir: tempfile::TempDir,
}

impl Baton {
    pub(crate) async fn start(cluster_file: &Path, groups: &[String]) -> Baton {
        let refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        let secure = Secure::new(&refs).expect("keys and certificates");
        let nats = NatsServer::start_secured(&secure)
            .await
            .expect("nats-server starts");
        let dir = tempfile::Builder::new()
            .prefix("baton-real-")
            .tempdir()
            .unwrap();
        let mut cmd = cli(&secure, &nats, &secure.service_key);
        cmd.args(["server", "--db"])
            .arg(dir.path().join("baton.db"));
        let server = Proc::spawn("baton server", cmd, &dir.path().join("server.log")).unwrap();
        let mut executors = Vec::new();
        for group in groups {
            let mut cmd = cli(&secure, &nats, secure.executor_key(group));
            cmd.args(["executor", "--group", group, "--cluster-file"])
                .arg(cluster_file)
                .args(["--heartbeat-ms", "500"])
                .arg("--state-dir")
                .arg(dir.path().join("executors").join(group));
            let log = dir.path().join(format!("executor-{group}.log"));
            executors.push(Proc::spawn(&format!("executor {group}"), cmd, &log).unwrap());
        }
        let baton = Baton {
            server,
            executors,
            nats,
            secure,
            _dir: dir,
        };
        let online = tests::wait_until(Duration::from_secs(60), || {
            let out = baton.run(&["--output", "json", "--api-timeout", "2", "executors"]);
            let online = crate::e2e::online_groups(&out.stdout);
            groups.iter().all(|g| online.contains(g))
        })
        .await;
        assert!(
            online,
            "the service or the executors did not come up\n{}",
            baton.logs()
        );
        baton
    }

    /// The CLI as operator alice (an approver).
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.run_as("alice", args)
    }

    /// The CLI as the trust file's operator `name` (tests::Secure: alice approver, oscar operator, rita reader).
    pub(crate) fn run_as(&self, name: &str, args: &[&str]) -> Output {
        cli(&self.secure, &self.nats, self.secure.operator_key(name))
            .args(args)
            .output()
            .expect("baton runs")
    }

    pub(crate) fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "baton {args:?} failed ({}): {}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn status(&self, upgrade: &str) -> Option<StatusView> {
        let out = self.run(&["--output", "json", "--api-timeout", "5", "status", upgrade]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    pub(crate) fn events(&self, upgrade: &str) -> Vec<Event> {
        let out = self.run_ok(&["replay", upgrade, "--json"]);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        value["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| serde_json::from_value(e["event"].clone()).unwrap())
            .collect()
    }

    /// Every executor's whole log.
    pub(crate) fn executor_logs(&self) -> String {
        self.executors
            .iter()
            .map(|e| format!("--- {} ---\n{}\n", e.name(), e.log()))
            .collect()
    }

    pub(crate) fn logs(&self) -> String {
        let mut text = format!("--- server ---\n{}\n", tail(&self.server.log(), 40));
        for e in &self.executors {
            text.push_str(&format!("--- {} ---\n{}\n", e.name(), tail(&e.log(), 15)));
        }
        text
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `baton` with `key` for signing and for NATS.
fn cli(secure: &Secure, nats: &NatsServer, key: &Path) -> Command {
    let mut cmd = Command::new(workspace_bin("baton"));
    cmd.env("BATON_NATS_URL", nats.url())
        .env_remove("BATON_OUTPUT");
    for (name, value) in secure.env_for(key) {
        cmd.env(name, value);
    }
    cmd
}

/// The gaps above the writer's threshold, each with what the members' journals show around it.
fn describe_gaps(report: &WriterReport, actions: &[&Action]) -> String {
    report
        .gaps
        .iter()
        .map(|(from, to)| {
            let near: Vec<String> = actions
                .iter()
                .filter(|a| a.at_unix_ms + 1000 >= *from && a.at_unix_ms <= *to)
                .map(|a| {
                    format!(
                        "{} {} at {:+} ms",
                        a.node,
                        a.action,
                        a.at_unix_ms as i64 - *from as i64
                    )
                })
                .collect();
            format!("{} ms from {from} ({})", to - from, near.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test(flavor = "multi_thread")]
async fn baton_upgrades_the_real_cluster_every_member_once_leader_last_and_loses_no_write() {
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    let (old, new) = (
        cluster.old_version().to_string(),
        cluster.new_version().to_string(),
    );
    let leader = cluster.leader().expect("a member leads");
    let baton = Baton::start(cluster.cluster_file(), &cluster.node_names()).await;
    let file = cluster.cluster_file().display().to_string();

    // The plan an operator reviews: the leader last, after a switchover that names its target, and the hash of
    // the profile file the plan was made from.
    let plan = baton.run_ok(&["plan", "--cluster", &file]);
    println!("{plan}");
    let sum = Command::new("sha256sum")
        .arg(crate::profile::shipped("etcd.toml"))
        .output()
        .expect("sha256sum runs (coreutils)");
    let profile_sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints the hash")
        .to_string();
    assert!(
        plan.contains(&format!("profile file sha256: {profile_sha}")),
        "{plan}"
    );
    assert!(plan.contains(&format!("leader: {leader}")), "{plan}");
    let switchover = plan
        .lines()
        .find(|l| l.contains("demote"))
        .unwrap_or_else(|| panic!("no switchover in the plan: {plan}"));
    let target = switchover
        .rsplit_once("(leadership to ")
        .and_then(|(_, t)| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("the switchover names no target: {switchover}"));
    assert_ne!(target, leader, "{switchover}");
    let target_id = &cluster.node(target).unwrap().member_id;
    assert!(
        switchover.contains(&format!("move-leader {target_id}`")),
        "{switchover}"
    );
    let hash = plan
        .lines()
        .find_map(|l| l.strip_prefix("plan hash: "))
        .expect("the plan's hash")
        .trim()
        .to_string();

    let since = cluster
        .actions()
        .unwrap()
        .last()
        .map_or(0, |a| a.at_unix_ms + 1);
    let writer = cluster.start_writer().expect("the writer starts");
    let started = Instant::now();
    let upgrade = baton
        .run_ok(&[
            "submit",
            "--cluster",
            &file,
            "--plan-hash",
            &hash,
            "--detach",
        ])
        .trim()
        .to_string();
    let mut last = None;
    let ended = tests::wait_until(Duration::from_secs(300), || {
        last = baton.status(&upgrade);
        last.as_ref().is_some_and(|v| {
            ["completed", "halted", "aborted", "needs_verification"].contains(&v.status.as_str())
        })
    })
    .await;
    let outer_wall = started.elapsed();
    let report = writer.stop().expect("the writer reports");
    let view = last.unwrap_or_else(|| panic!("no status of {upgrade}\n{}", baton.logs()));
    assert!(
        ended,
        "upgrade {upgrade} did not end in 300 s: {view:#?}\n{}",
        baton.logs()
    );
    assert_eq!(
        view.status,
        "completed",
        "{:?}\n{}",
        view.reason,
        baton.logs()
    );

    // Wall time as the log records it: from the submission to the completion.
    let events = baton.events(&upgrade);
    let submitted_ms = events.iter().find_map(|e| match e {
        Event::UpgradeSubmitted { at_ms, .. } => Some(*at_ms),
        _ => None,
    });
    let completed_ms = events.iter().find_map(|e| match e {
        Event::UpgradeCompleted { at_ms } => Some(*at_ms),
        _ => None,
    });
    let (submitted_ms, completed_ms) = (submitted_ms.unwrap(), completed_ms.unwrap());
    let wall_s = (completed_ms - submitted_ms) as f64 / 1000.0;
    let steps = events
        .iter()
        .filter(|e| matches!(e, Event::StepScheduled { .. }))
        .count();
    let actions = cluster.actions().unwrap();
    let upgrade_actions: Vec<&Action> = actions.iter().filter(|a| a.at_unix_ms >= since).collect();
    println!(
        "baton etcd {old} -> {new}: wall {wall_s:.2} s (submitted -> completed in the log; {:.2} s as the \
         operator waited), {steps} steps, leadership {leader} -> {target}; writer: {report}",
        outer_wall.as_secs_f64()
    );
    println!(
        "gaps above {} ms: {}",
        report.gap_threshold_ms,
        describe_gaps(&report, &upgrade_actions)
    );
    let mut previous = submitted_ms;
    for a in &upgrade_actions {
        println!(
            "  +{:>6} ms {} {} {}",
            a.at_unix_ms.saturating_sub(previous),
            a.node,
            a.action,
            a.version
        );
        previous = a.at_unix_ms;
    }

    // Every member runs, and has installed, the new version.
    for node in cluster.node_names() {
        assert_eq!(cluster.running_version(&node).unwrap(), new, "{node} runs");
        assert_eq!(cluster.installed_version(&node).unwrap(), new, "{node} has");
    }
    // Each member was stopped, switched to the new version and started exactly once, in that order.
    let per_member = by_member(&actions, since);
    assert_eq!(per_member.len(), 3, "{actions:?}");
    for (node, acts) in &per_member {
        let kinds: Vec<(&str, &str)> = acts
            .iter()
            .map(|a| (a.action.as_str(), a.version.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("stop", ""),
                ("install", new.as_str()),
                ("start", new.as_str())
            ],
            "{node}"
        );
    }
    // The leader went last, after leadership moved to the upgraded member the plan named.
    assert_eq!(
        cluster.leader().unwrap(),
        target,
        "leadership is where the plan put it"
    );
    let leader_stop = per_member[&leader][0].at_unix_ms;
    for (node, acts) in per_member.iter().filter(|(n, _)| **n != leader) {
        assert!(
            acts[2].at_unix_ms <= leader_stop,
            "{node} started on {new} after the leader {leader} stopped: {actions:?}"
        );
    }
    // No acknowledged write was lost, and the writer wrote through the upgrade.
    assert_eq!(report.lost, 0, "lost writes: {:?}", report.lost_keys);
    let (first_stop, last_start) = (
        upgrade_actions.first().unwrap().at_unix_ms,
        upgrade_actions.last().unwrap().at_unix_ms,
    );
    assert!(
        report.acknowledged_between(first_stop, last_start).unwrap() > 0,
        "{report}"
    );
    // Unavailable only inside the switchover window (from the switchover phase until the new leader is
    // verified): no write stalls for half of etcd's election timeout (1 s) anywhere else. Shorter gaps over the
    // writer's 100 ms threshold happen on this loaded machine whatever runs (the baseline's runs had them around
    // a member's stop, and this test's before the first stop); they are printed above, not judged.
    let phase_at = |wanted: workflow::core::Phase| {
        events.iter().find_map(|e| match e {
            Event::PhaseEntered { phase, at_ms } if *phase == wanted => Some(*at_ms),
            _ => None,
        })
    };
    let switchover = (
        phase_at(workflow::core::Phase::Switchover).expect("a switchover phase"),
        phase_at(workflow::core::Phase::OldLeader).expect("an old-leader phase"),
    );
    println!(
        "switchover window {}..{} ({} ms)",
        switchover.0,
        switchover.1,
        switchover.1 - switchover.0
    );
    for (from, to) in report.gaps.iter().filter(|(from, to)| to - from >= 500) {
        assert!(
            *from >= switchover.0 && *to <= switchover.1 + 500,
            "a write stall {from}..{to} ({} ms) outside the switchover window {switchover:?}: {}",
            to - from,
            describe_gaps(&report, &upgrade_actions)
        );
    }
    assert!(report.longest_gap_ms < 5000.0, "{report}");
    // The log verifies: its chain, and every decision re-derived from the recorded inputs.
    let out = baton.run_ok(&["audit", "verify"]);
    assert!(out.contains("audit verify: OK"), "{out}");
    let out = baton.run_ok(&["replay", &upgrade, "--verify"]);
    assert!(out.contains("exactly the recorded decisions"), "{out}");
}
