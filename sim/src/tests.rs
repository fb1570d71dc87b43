//! In-process tests: commands run through [`crate::run`] against a cluster in a temp dir, and the
//! report's rules that the process-level tests do not reach.

use std::path::Path;

use crate::render::ClusterStatusJson;
use crate::report::Rule;
use crate::{run, Output, Sim, Timings, Verdict};

fn sim() -> (tempfile::TempDir, Sim) {
    let tmp = tempfile::tempdir().unwrap();
    let t = Timings {
        sync_ms: 10,
        election_ms: 10,
        demote_timeout_ms: 2_000,
        upgrade_timeout_ms: 2_000,
        start_ms: 0,
        leaderless_tolerance_ms: None,
    };
    let sim = Sim::init(
        tmp.path().join("c"),
        3,
        "3.0.0-1",
        t,
        &[],
        Path::new("/usr/bin/false"),
    )
    .unwrap();
    (tmp, sim)
}

fn cmd(sim: &Sim, node: &str, argv: &[&str]) -> Output {
    let args: Vec<String> = argv[1..].iter().map(|s| s.to_string()).collect();
    run(sim, node, argv[0], &args).unwrap()
}

fn deb(sim: &Sim) -> String {
    let p = sim.dir().join("chef-backend_3.1.0-1_amd64.deb");
    std::fs::write(&p, b"deb").unwrap();
    p.to_string_lossy().into_owned()
}

#[test]
fn dpkg_install_prints_dpkg_lines_and_changes_installed_not_running_version() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    let out = cmd(&sim, "backend-2", &["dpkg", "-i", &path]);
    let expected = format!(
        "(Reading database ... 18231 files and directories currently installed.)\nPreparing to unpack {path} ...\nUnpacking chef-backend (3.1.0-1) over (3.0.0-1) ...\nSetting up chef-backend (3.1.0-1) ...\n"
    );
    assert_eq!(out, Output::ok(expected));
    assert_eq!(
        cmd(
            &sim,
            "backend-2",
            &["dpkg-query", "-W", "-f=${Version}", "chef-backend"]
        )
        .stdout,
        "3.1.0-1"
    );
    let q = cmd(
        &sim,
        "backend-2",
        &["dpkg-query", "-W", "-f=${Version}", "chef-server"],
    );
    assert_eq!(
        (q.code, q.stderr.as_str()),
        (1, "dpkg-query: no packages found matching chef-server\n")
    );
    let st = sim.state().unwrap();
    assert_eq!(
        (st.nodes[1].installed.as_str(), st.nodes[1].running.as_str()),
        ("3.1.0-1", "3.0.0-1")
    );
}

#[test]
fn cluster_status_json_follows_the_documented_schema() {
    let (_t, sim) = sim();
    cmd(&sim, "backend-3", &["chef-backend-ctl", "stop"]);
    let out = cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "cluster-status", "--json"],
    );
    let j: ClusterStatusJson = serde_json::from_str(&out.stdout).unwrap();
    assert!(j.failover);
    assert_eq!(j.leader.as_deref(), Some("backend-1"));
    let roles: Vec<(&str, &str, bool)> = j
        .nodes
        .iter()
        .map(|n| (n.role.as_str(), n.pg.as_str(), n.running))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("leader", "leader", true),
            ("follower", "follower", true),
            ("waiting_for_leader", "offline", false)
        ]
    );
    // On the stopped node itself, cluster-status cannot reach etcd.
    let out = cmd(&sim, "backend-3", &["chef-backend-ctl", "cluster-status"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("could not reach etcd"),
        "{}",
        out.stderr
    );
}

#[test]
fn install_while_running_then_upgrade_is_safe() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    cmd(&sim, "backend-2", &["dpkg", "-i", &path]);
    let out = cmd(&sim, "backend-2", &["chef-backend-ctl", "upgrade"]);
    assert_eq!(out.code, 0, "{out:?}");
    let r = sim.report().unwrap();
    assert!(!r.has(Rule::InstalledWhileRunning), "{:?}", r.violations);
    assert!(r.installed_while_running[0].followed_by_upgrade);
    assert_eq!(r.versions["backend-2"].running, "3.1.0-1");
}

#[test]
fn install_while_running_then_plain_restart_is_unsafe() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    cmd(&sim, "backend-2", &["dpkg", "-i", &path]);
    cmd(&sim, "backend-2", &["chef-backend-ctl", "restart"]);
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Unsafe);
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == Rule::InstalledWhileRunning)
        .unwrap();
    assert_eq!(v.nodes, vec!["backend-2".to_string()]);
    assert!(
        v.message.contains("`chef-backend-ctl restart`"),
        "{}",
        v.message
    );
}

#[test]
fn install_while_running_never_restarted_is_unsafe() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    cmd(&sim, "backend-3", &["dpkg", "-i", &path]);
    let r = sim.report().unwrap();
    assert!(r.has(Rule::InstalledWhileRunning));
    assert!(!r.installed_while_running[0].followed_by_upgrade);
}

#[test]
fn node_failover_left_off_is_named() {
    let (_t, sim) = sim();
    assert_eq!(
        cmd(
            &sim,
            "backend-2",
            &["chef-backend-ctl", "set-node-failover", "disabled"]
        )
        .code,
        0
    );
    let r = sim.report().unwrap();
    assert_eq!(r.node_failover_off_at_end, vec!["backend-2".to_string()]);
    assert!(r.has(Rule::NodeFailoverLeftOff));
    // A node with failover off cannot be demoted.
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-node-failover", "off"],
    );
    let out = cmd(&sim, "backend-1", &["chef-backend-ctl", "demote"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("node failover is disabled"),
        "{}",
        out.stderr
    );
}

#[test]
fn untouched_cluster_is_safe_and_healthy() {
    let (_t, sim) = sim();
    let out = cmd(
        &sim,
        "backend-2",
        &["chef-backend-ctl", "status", "--simple"],
    );
    assert_eq!(out.code, 0);
    assert_eq!(out.stdout.lines().count(), 4);
    assert!(out
        .stdout
        .lines()
        .all(|l| l.starts_with("run: ") && l.contains("; run: log: (pid ")));
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Safe);
    assert_eq!(
        (r.downtime.total_ms, r.max_out_of_service, r.commands),
        (0, 0, 1)
    );
}

#[test]
fn every_command_is_journalled_with_its_exit_code() {
    let (_t, sim) = sim();
    cmd(&sim, "backend-1", &["chef-backend-ctl", "bogus"]);
    let commands: Vec<(String, Vec<String>, i32)> = sim
        .journal()
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            crate::Entry::Command {
                node,
                argv,
                exit_code,
                started_ms,
                finished_ms,
                actor,
            } => {
                assert!(finished_ms >= started_ms);
                assert_eq!(actor, crate::ORCHESTRATOR);
                Some((node, argv, exit_code))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        commands,
        vec![(
            "backend-1".into(),
            vec!["chef-backend-ctl".into(), "bogus".into()],
            1
        )]
    );
}

#[test]
fn malformed_journal_line_is_reported_with_its_line_number() {
    let (_t, sim) = sim();
    let path = sim.dir().join("journal.jsonl");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("{not json\n");
    std::fs::write(&path, text).unwrap();
    let err = sim.journal().unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
}
