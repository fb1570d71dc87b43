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

fn sim_with(nodes: usize, version: &str, tolerance: Option<u64>) -> (tempfile::TempDir, Sim) {
    let tmp = tempfile::tempdir().unwrap();
    let t = Timings {
        sync_ms: 10,
        election_ms: 10,
        demote_timeout_ms: 2_000,
        upgrade_timeout_ms: 2_000,
        start_ms: 0,
        leaderless_tolerance_ms: tolerance,
    };
    let sim = Sim::init(
        tmp.path().join("c"),
        nodes,
        version,
        t,
        &[],
        Path::new("/usr/bin/false"),
    )
    .unwrap();
    (tmp, sim)
}

/// Polls the report until `done` holds (the sim applies due transitions on every read).
fn report_when(sim: &Sim, done: impl Fn(&crate::Report) -> bool) -> crate::Report {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = sim.report().unwrap();
        if done(&r) {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "{}", r.render());
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Polls node `node`'s state until `done` holds.
fn state_when(sim: &Sim, done: impl Fn(&crate::Cluster) -> bool) -> crate::Cluster {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let c = sim.state().unwrap();
        if done(&c) {
            return c;
        }
        assert!(std::time::Instant::now() < deadline, "{c:?}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn all_synced(c: &crate::Cluster) -> bool {
    c.nodes.iter().all(|n| n.in_service())
}

fn upgrade_by_hand(sim: &Sim, node: &str, path: &str) {
    for argv in [
        vec!["chef-backend-ctl", "stop"],
        vec!["dpkg", "-i", path],
        vec!["chef-backend-ctl", "start"],
    ] {
        let out = cmd(sim, node, &argv);
        assert_eq!(out.code, 0, "{argv:?}: {out:?}");
    }
    state_when(sim, all_synced);
}

#[test]
fn dpkg_query_formats_status_fields_and_escapes() {
    let (_t, sim) = sim();
    let q = |f: &str| cmd(&sim, "backend-2", &["dpkg-query", "-W", f, "chef-backend"]).stdout;
    assert_eq!(
        q("-f=${db:Status-Status} ${Version}\\n"),
        "installed 3.0.0-1\n"
    );
    assert_eq!(q("-f=${Version}"), "3.0.0-1");
    assert_eq!(
        q("-f=${Status}\\t${db:Status-Abbrev}|"),
        "install ok installed\tii |"
    );
    sim.set_fault("backend-2", crate::Fault::InstallFails, true)
        .unwrap();
    let path = deb(&sim);
    assert_eq!(cmd(&sim, "backend-2", &["dpkg", "-i", &path]).code, 1);
    assert_eq!(
        q("-f=${db:Status-Status} ${Version}\\n"),
        "half-configured 3.1.0-1\n"
    );
    assert_eq!(
        q("-f=${Status}|${db:Status-Abbrev}|"),
        "install ok half-configured|iF |"
    );
}

#[test]
fn half_configured_package_blocks_start_until_configured() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    sim.set_fault("backend-3", crate::Fault::InstallFails, true)
        .unwrap();
    cmd(&sim, "backend-3", &["chef-backend-ctl", "stop"]);
    assert_eq!(cmd(&sim, "backend-3", &["dpkg", "-i", &path]).code, 1);
    let out = cmd(&sim, "backend-3", &["chef-backend-ctl", "start"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("half-configured"), "{}", out.stderr);
    // Still failing while the fault fires; fine once the post-install works.
    assert_eq!(
        cmd(&sim, "backend-3", &["dpkg", "--configure", "-a"]).code,
        1
    );
    sim.set_fault("backend-3", crate::Fault::InstallFails, false)
        .unwrap();
    let out = cmd(&sim, "backend-3", &["dpkg", "--configure", "-a"]);
    assert_eq!(out, Output::ok("Setting up chef-backend (3.1.0-1) ...\n"));
    assert_eq!(
        cmd(&sim, "backend-3", &["chef-backend-ctl", "start"]).code,
        0
    );
    assert_eq!(sim.state().unwrap().nodes[2].running, "3.1.0-1");
}

#[test]
fn dpkg_deb_and_rpm_qp_read_the_version_from_the_package_file() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    for flag in ["--field", "-f"] {
        let out = cmd(&sim, "backend-1", &["dpkg-deb", flag, &path, "Version"]);
        assert_eq!(out, Output::ok("3.1.0-1\n"));
    }
    let missing = sim.dir().join("chef-backend_9.9.9-1_amd64.deb");
    let missing = missing.to_string_lossy();
    let out = cmd(
        &sim,
        "backend-1",
        &["dpkg-deb", "--field", &missing, "Version"],
    );
    assert_eq!(
        out,
        Output::fail(
            2,
            format!(
                "dpkg-deb: error: failed to read archive '{missing}': No such file or directory\n"
            )
        )
    );
    let rpm = sim.dir().join("chef-backend-3.1.0-1.el7.x86_64.rpm");
    std::fs::write(&rpm, b"rpm").unwrap();
    let rpm = rpm.to_string_lossy();
    let out = cmd(
        &sim,
        "backend-1",
        &["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", &rpm],
    );
    assert_eq!(out, Output::ok("3.1.0-1.el7"));
    let gone = rpm.replace("3.1.0", "9.9.9");
    let out = cmd(
        &sim,
        "backend-1",
        &["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", &gone],
    );
    assert_eq!(
        out,
        Output::fail(
            1,
            format!("error: open of {gone} failed: No such file or directory\n")
        )
    );
    assert!(sim.bin_dir("backend-1").join("dpkg-deb").is_file());
}

#[test]
fn cluster_status_json_has_each_nodes_failover() {
    let (_t, sim) = sim();
    cmd(
        &sim,
        "backend-2",
        &["chef-backend-ctl", "set-node-failover", "off"],
    );
    let out = cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "cluster-status", "--json"],
    );
    let j: ClusterStatusJson = serde_json::from_str(&out.stdout).unwrap();
    assert!(j.failover, "cluster failover stays at the top");
    let per_node: Vec<bool> = j.nodes.iter().map(|n| n.failover).collect();
    assert_eq!(per_node, vec![true, false, true]);
}

#[test]
fn clusters_of_any_size_can_be_created() {
    for n in [1, 2, 5, 60] {
        let (_t, sim) = sim_with(n, "3.0.0-1", None);
        let c = sim.state().unwrap();
        assert_eq!(c.nodes.len(), n);
        assert_eq!(c.leader(), Some(0));
        let mut ips: Vec<&str> = c.nodes.iter().map(|n| n.ip.as_str()).collect();
        ips.dedup();
        assert_eq!(ips.len(), n);
        assert!(c
            .nodes
            .iter()
            .all(|n| n.ip.parse::<std::net::Ipv4Addr>().is_ok()));
    }
}

#[test]
fn a_two_node_cluster_loses_its_leader_when_its_follower_stops() {
    let (_t, sim) = sim_with(2, "3.0.0-1", None);
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    let c = sim.state().unwrap();
    assert_eq!(c.leader(), None, "no etcd quorum, no leader");
    let st = cmd(&sim, "backend-1", &["chef-backend-ctl", "status"]);
    assert!(st.stdout.contains("leader: 0;"), "{}", st.stdout);
    assert!(
        st.stdout.contains("health: red; healthy nodes: 1/2"),
        "{}",
        st.stdout
    );
    // The outage must last at least a millisecond of the simulator's clock to be measured: wait for the
    // clock to move past the stop (in-process commands can all fall within one millisecond).
    let stopped_at = std::time::SystemTime::now();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while stopped_at.elapsed().unwrap_or_default() < std::time::Duration::from_millis(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock does not move"
        );
        std::thread::yield_now();
    }
    cmd(&sim, "backend-2", &["chef-backend-ctl", "start"]);
    let c = state_when(&sim, all_synced);
    assert_eq!(
        c.leader(),
        Some(0),
        "the leader resumes once quorum is back"
    );
    let r = sim.report().unwrap();
    assert!(r.has(Rule::WriteOutage), "{}", r.render());
}

#[test]
fn a_majority_down_leaves_no_leader_even_with_failover_on() {
    let (_t, sim) = sim();
    sim.clone()
        .with_actor("environment")
        .crash("backend-1")
        .unwrap();
    sim.clone()
        .with_actor("environment")
        .crash("backend-2")
        .unwrap();
    // The election after the leader's crash needs quorum: it fails.
    let c = state_when(&sim, |c| c.election.is_none());
    assert_eq!(c.leader(), None);
    let r = sim.report().unwrap();
    assert_eq!(
        r.verdict,
        Verdict::Safe,
        "the environment did it: {}",
        r.render()
    );
    assert!(r
        .incidents
        .iter()
        .any(|i| i.rule == Some(Rule::WriteOutage)));
    assert!(r
        .incidents
        .iter()
        .any(|i| i.rule.is_none() && i.message.contains("baton-sim crash")));
}

#[test]
fn followers_resync_after_a_demote_while_cluster_status_says_follower() {
    let (_t, sim) = {
        let tmp = tempfile::tempdir().unwrap();
        let t = Timings {
            sync_ms: 400,
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
    };
    assert_eq!(
        cmd(&sim, "backend-1", &["chef-backend-ctl", "demote"]).code,
        0
    );
    let roles = cmd(&sim, "backend-2", &["chef-backend-ctl", "cluster-status"]).stdout;
    let b3 = roles.lines().find(|l| l.starts_with("backend-3")).unwrap();
    assert!(b3.contains(" follower "), "{roles}");
    let st = cmd(&sim, "backend-2", &["chef-backend-ctl", "status"]).stdout;
    assert!(
        st.contains("leader: 1; offline: 1; syncing: 1; synced: 0"),
        "the deposed leader is held down, backend-3 re-syncs: {st}"
    );
    state_when(&sim, all_synced);
}

#[test]
fn no_replication_across_major_versions() {
    let (_t, sim) = sim_with(3, "2.9.0-1", None);
    let path = deb(&sim);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    cmd(&sim, "backend-2", &["dpkg", "-i", &path]);
    cmd(&sim, "backend-2", &["chef-backend-ctl", "start"]);
    let c = sim.state().unwrap();
    assert_eq!(c.nodes[1].pg, crate::model::Pg::Syncing);
    assert_eq!(c.nodes[1].sync_due_ms, None, "never completes");
}

#[test]
fn environment_crash_is_an_incident_but_stopping_another_node_then_is_a_violation() {
    let (_t, sim) = sim();
    let env = sim.clone().with_actor("environment");
    assert_eq!(env.crash("backend-3").unwrap().code, 0);
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Safe, "{}", r.render());
    let rules: Vec<Option<Rule>> = r.incidents.iter().map(|i| i.rule).collect();
    assert_eq!(
        rules,
        vec![None, Some(Rule::NodeDownAtEnd)],
        "{}",
        r.render()
    );
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    let r = sim.report().unwrap();
    assert!(r.has(Rule::TooManyOutOfService), "{}", r.render());
    // The environment's restart brings it back; it re-syncs.
    assert_eq!(env.restart("backend-3").unwrap().code, 0);
    let journal = sim.journal().unwrap();
    let actors: Vec<&str> = journal
        .iter()
        .filter_map(|e| match e {
            crate::Entry::Command { argv, actor, .. } if argv[0] == "baton-sim" => {
                Some(actor.as_str())
            }
            _ => None,
        })
        .collect();
    assert_eq!(actors, vec!["environment", "environment"]);
}

#[test]
fn two_crashes_by_the_environment_alone_are_incidents_only() {
    let (_t, sim) = sim_with(5, "3.0.0-1", None);
    let env = sim.clone().with_actor("environment");
    env.crash("backend-4").unwrap();
    env.crash("backend-5").unwrap();
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Safe, "{}", r.render());
    assert!(r
        .incidents
        .iter()
        .any(|i| i.rule == Some(Rule::TooManyOutOfService)));
    // ... and the environment's out-of-service episode is not charged when Baton then starts them.
    cmd(&sim, "backend-4", &["chef-backend-ctl", "start"]);
    cmd(&sim, "backend-5", &["chef-backend-ctl", "start"]);
    state_when(&sim, all_synced);
    assert_eq!(sim.report().unwrap().verdict, Verdict::Safe);
}

#[test]
fn rule_failover_on_while_node_out() {
    let (_t, sim) = sim();
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    cmd(&sim, "backend-2", &["chef-backend-ctl", "start"]);
    state_when(&sim, all_synced);
    let r = sim.report().unwrap();
    assert_eq!(
        r.rules(),
        vec![Rule::FailoverOnWhileNodeOut],
        "{}",
        r.render()
    );
    assert_eq!(r.violations[0].nodes, vec!["backend-2".to_string()]);
}

#[test]
fn rule_node_down_at_end_only_when_the_orchestrator_stopped_it() {
    let (_t, sim) = sim();
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    let r = sim.report().unwrap();
    assert_eq!(r.rules(), vec![Rule::NodeDownAtEnd], "{}", r.render());
    let (_t2, sim) = self::sim();
    sim.clone()
        .with_actor("environment")
        .crash("backend-3")
        .unwrap();
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Safe, "{}", r.render());
    assert!(r
        .incidents
        .iter()
        .any(|i| i.rule == Some(Rule::NodeDownAtEnd)));
}

#[test]
fn rule_mixed_versions_at_end() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    upgrade_by_hand(&sim, "backend-2", &path);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    let r = sim.report().unwrap();
    // The end state of an unfinished upgrade is flagged, not unsafe by itself (a halt stops there).
    assert!(!r.has(Rule::MixedVersionsAtEnd), "{}", r.render());
    assert!(r.flags_or_has(Rule::MixedVersionsAtEnd), "{}", r.render());
    assert!(
        r.flags_or_has(Rule::LeaderRunsOldVersion),
        "left by Baton at the end: {}",
        r.render()
    );
    assert!(r.render().contains("Flags"), "{}", r.render());
}

#[test]
fn rule_leader_runs_old_version_when_an_old_node_is_elected() {
    let (_t, sim) = sim();
    let path = deb(&sim);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    // Only backend-3 upgraded; the demote elects backend-2, still on the old version.
    upgrade_by_hand(&sim, "backend-3", &path);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    assert_eq!(
        cmd(&sim, "backend-1", &["chef-backend-ctl", "demote"]).code,
        0
    );
    let r = sim.report().unwrap();
    let v = r
        .violations
        .iter()
        .find(|v| v.rule == Rule::LeaderRunsOldVersion)
        .unwrap_or_else(|| panic!("{}", r.render()));
    assert_eq!(v.nodes, vec!["backend-2".to_string()]);
}

#[test]
fn rule_failover_blocked_without_leader_is_charged_even_when_the_environment_killed_the_leader() {
    let (_t, sim) = sim_with(3, "3.0.0-1", Some(50));
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    sim.clone()
        .with_actor("environment")
        .crash("backend-1")
        .unwrap();
    let r = report_when(&sim, |r| r.has(Rule::FailoverBlockedWithoutLeader));
    assert_eq!(r.leaderless_tolerance_ms, 50);
    assert!(
        !r.has(Rule::LeaderStopped),
        "the crash is the environment's"
    );
    // Giving failover back in time is the emergency exit: no violation then.
    let (_t, sim) = sim_with(3, "3.0.0-1", Some(5_000));
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    sim.clone()
        .with_actor("environment")
        .crash("backend-1")
        .unwrap();
    cmd(
        &sim,
        "backend-2",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    let c = state_when(&sim, |c| c.leader().is_some());
    assert_eq!(c.nodes[c.leader().unwrap()].name, "backend-2");
    let r = sim.report().unwrap();
    assert!(!r.has(Rule::FailoverBlockedWithoutLeader), "{}", r.render());
}

#[test]
fn an_operator_promote_is_an_incident_not_a_violation() {
    let (_t, sim) = sim();
    let op = sim.clone().with_actor("operator");
    let out = run(
        &op,
        "backend-1",
        "chef-backend-ctl",
        &["promote".into(), "backend-3".into()],
    )
    .unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    state_when(&sim, all_synced);
    let r = sim.report().unwrap();
    assert_eq!(r.verdict, Verdict::Safe, "{}", r.render());
    assert!(r
        .incidents
        .iter()
        .any(|i| i.actor == "operator" && i.message.contains("promote backend-3")));
}

#[test]
fn a_node_whose_start_was_tried_and_cannot_succeed_is_an_incident_not_a_violation() {
    let (_t, sim) = sim();
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    // Left down without trying: the orchestrator's violation.
    assert!(sim.report().unwrap().has(Rule::NodeDownAtEnd));
    // Tried, and the node itself cannot start (a fault of the node): an incident naming why.
    sim.set_fault("backend-2", crate::Fault::StartFails, true)
        .unwrap();
    assert_ne!(
        cmd(&sim, "backend-2", &["chef-backend-ctl", "start"]).code,
        0
    );
    let r = sim.report().unwrap();
    assert!(!r.has(Rule::NodeDownAtEnd), "{}", r.render());
    assert!(
        r.incidents
            .iter()
            .any(|i| i.rule == Some(Rule::NodeDownAtEnd)
                && i.message.contains("the last start failed")),
        "{}",
        r.render()
    );
}

/// Waits (on the clock, bounded) until `ms` milliseconds have passed since `from`.
fn clock_past(from: std::time::Instant, ms: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while from.elapsed() < std::time::Duration::from_millis(ms) {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock does not move"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_leader_that_only_lost_quorum_leads_again_when_failover_is_re_enabled() {
    let (_t, sim) = sim();
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    sim.clone()
        .with_actor("environment")
        .crash("backend-3")
        .unwrap();
    assert_eq!(sim.state().unwrap().leader(), None, "no quorum, no leader");
    // The emergency exit: failover on, then the stopped node back; the old leader kept its data.
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    cmd(&sim, "backend-2", &["chef-backend-ctl", "start"]);
    let c = state_when(&sim, |c| c.leader().is_some());
    assert_eq!(c.leader(), Some(0), "backend-1 leads again");
}

#[test]
fn an_action_racing_an_environment_change_it_could_not_see_is_an_incident_a_stale_one_a_violation()
{
    // Raced: the orchestrator looked, the environment crashed a follower within milliseconds, the
    // orchestrator stopped another node.
    let (_t, sim) = sim();
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-1", &["chef-backend-ctl", "status"]);
    sim.clone()
        .with_actor("environment")
        .crash("backend-3")
        .unwrap();
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    let r = sim.report().unwrap();
    assert!(!r.has(Rule::TooManyOutOfService), "{}", r.render());
    assert!(
        r.incidents.iter().any(|i| i.message.starts_with("race:")),
        "{}",
        r.render()
    );
    // Stale: the same, but the orchestrator's last look was long before it acted: charged.
    let (_t2, sim) = self::sim();
    cmd(
        &sim,
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    cmd(&sim, "backend-1", &["chef-backend-ctl", "status"]);
    let looked = std::time::Instant::now();
    sim.clone()
        .with_actor("environment")
        .crash("backend-3")
        .unwrap();
    clock_past(looked, 700);
    cmd(&sim, "backend-2", &["chef-backend-ctl", "stop"]);
    let r = sim.report().unwrap();
    assert!(r.has(Rule::TooManyOutOfService), "{}", r.render());
}
