//! A real Patroni + PostgreSQL 15 cluster (3 members, etcd as DCS, on loopback), rolled
//! from PostgreSQL 15.18 to 15.20 while a client writes throughout (tests::real::patroni).
//! The manual baseline here is what Baton's profile-driven upgrade (crate::real_baton, shared with
//! real_etcd) is measured against.

use tests::real::patroni::{PatroniCluster, NEW_VERSION, OLD_VERSION};

use crate::real_baton::{assert_rolled_leader_last, upgrade_with_baton};

/// The machine's load average (1, 5, 15 minutes), printed beside each measured run.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn the_manual_baseline_upgrades_every_member_once_leader_last_and_loses_no_write() {
    let cluster = PatroniCluster::up().expect("the Patroni cluster comes up");
    let leader_before = cluster.leader().expect("one leader");
    for node in cluster.nodes() {
        let running = cluster.running_version(node).unwrap();
        assert_eq!(running, OLD_VERSION, "{node} before the upgrade");
    }
    // The shipped profile's probes, run for real (`baton profile check --run-here`), see the same cluster:
    // one leader, every member in service, the old version, failover not paused.
    let seen = crate::profile::check_live(
        &crate::profile::shipped("patroni.toml"),
        cluster.cluster_file(),
    );
    for leaders in crate::profile::leaders_seen(&seen) {
        assert_eq!(leaders, std::slice::from_ref(&leader_before), "{seen:#}");
    }
    for (node, version) in crate::profile::observed(&seen, "running_version") {
        assert_eq!(version, OLD_VERSION, "{node}: {seen:#}");
    }
    for (node, fence) in crate::profile::observed(&seen, "failover") {
        assert_eq!(fence["blocked"], false, "{node}: {seen:#}");
    }
    let since = tests::real::journal::after_last(&cluster.actions().unwrap());
    let writer = cluster.start_writer().expect("the writer connects");
    let run = cluster.manual_upgrade().expect("the manual baseline runs");
    let report = writer.stop().expect("the writer reads everything back");
    println!(
        "patroni manual baseline {OLD_VERSION} -> {NEW_VERSION}: wall {:.2} s, order {:?}, leadership {} -> {}; \
         writer: {report}; load average {}\n{}",
        run.wall_ms as f64 / 1000.0,
        run.order,
        run.leader_before,
        run.leader_after,
        load_average(),
        run.steps
    );

    // Every member runs the new version now, and the cluster has one leader, not the old one.
    for node in cluster.nodes() {
        let running = cluster.running_version(node).unwrap();
        assert_eq!(running, NEW_VERSION, "{node} after the upgrade");
    }
    let leader_after = cluster.leader().expect("one leader after the upgrade");
    let seen = crate::profile::check_live(
        &crate::profile::shipped("patroni.toml"),
        cluster.cluster_file(),
    );
    for leaders in crate::profile::leaders_seen(&seen) {
        assert_eq!(leaders, std::slice::from_ref(&leader_after), "{seen:#}");
    }
    for probe in ["version", "running_version"] {
        for (node, version) in crate::profile::observed(&seen, probe) {
            assert_eq!(version, NEW_VERSION, "{probe} of {node}: {seen:#}");
        }
    }
    for (node, fence) in crate::profile::observed(&seen, "failover") {
        assert_eq!(
            fence["blocked"], false,
            "{node}: the manual upgrade resumed failover: {seen:#}"
        );
    }
    assert_eq!(run.leader_before, leader_before);
    assert_ne!(
        leader_after, leader_before,
        "leadership moved off the old leader"
    );

    // From the members' own logs: each went from the old version to the new one exactly once
    // (never back), and the old leader first ran the new version after both others did.
    let mut first_new = Vec::new();
    for node in cluster.nodes() {
        let starts = cluster.starts(node).unwrap();
        let versions: Vec<&str> = starts.iter().map(|s| s.version.as_str()).collect();
        let switches = versions.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(versions.first(), Some(&OLD_VERSION), "{node}: {versions:?}");
        assert_eq!(versions.last(), Some(&NEW_VERSION), "{node}: {versions:?}");
        assert_eq!(
            switches, 1,
            "{node} changed version more than once: {versions:?}"
        );
        let at = cluster.first_start_on(node, NEW_VERSION).unwrap().unwrap();
        first_new.push((at, node.clone()));
    }
    first_new.sort();
    assert_eq!(
        first_new.last().map(|(_, node)| node),
        Some(&leader_before),
        "the old leader is upgraded last: {first_new:?}"
    );
    assert_eq!(run.order.last(), Some(&leader_before));
    // And from the journals member.sh keeps: each member stopped, installed and started exactly once.
    assert_rolled_leader_last(
        &cluster.actions().unwrap(),
        since,
        NEW_VERSION,
        &leader_before,
    );

    // No acknowledged write is lost, and the writer really wrote throughout.
    assert_eq!(
        report.lost, 0,
        "acknowledged writes lost: {:?}",
        report.lost_keys
    );
    assert!(
        report.acknowledged > 100,
        "the writer barely wrote: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn baton_upgrades_the_real_cluster_every_member_once_leader_last_and_loses_no_write() {
    let cluster = PatroniCluster::up().expect("the Patroni cluster comes up");
    assert!(
        !cluster.paused().unwrap(),
        "failover is on before the upgrade"
    );
    let run = upgrade_with_baton(&cluster).await;
    // Patroni moves leadership with the checked switchover (member.sh: patronictl switchover, then the
    // candidate must lead), from the leader to the target the plan names.
    assert!(
        run.switchover_line
            .contains(&format!("switchover {} {}`", run.old_leader, run.target)),
        "{}",
        run.switchover_line
    );
    // Failover was paused from the first pause to the last resume: the profile keeps the fence across the
    // switchover (`switchover_keeps_fence`; Patroni switches over to a named candidate while paused), so every
    // stop, install and start, and the switchover itself, ran with failover paused, and nothing could elect on
    // its own meanwhile.
    let fence: Vec<&str> = run
        .actions
        .iter()
        .filter(|a| ["pause", "resume", "switchover"].contains(&a.action.as_str()))
        .map(|a| a.action.as_str())
        .collect();
    assert_eq!(
        fence,
        ["pause", "switchover", "resume"],
        "{:?}",
        run.actions
    );
    let mut paused = false;
    for a in &run.actions {
        match a.action.as_str() {
            "pause" => paused = true,
            "resume" => paused = false,
            _ if a.is_member_change() || a.action == "switchover" => {
                assert!(
                    paused,
                    "{} {} with failover on: {:?}",
                    a.node, a.action, run.actions
                )
            }
            _ => {}
        }
    }
    assert!(!paused, "failover was left paused: {:?}", run.actions);
    assert!(
        !cluster.paused().unwrap(),
        "failover is on after the upgrade"
    );
    println!(
        "RESULT baton patroni {OLD_VERSION} -> {NEW_VERSION} ({}): wall {:.2} s, availability {:.4}, longest gap \
         {:.0} ms, {} acknowledged, {} lost, switchover window {} ms, load average {}",
        run.upgrade,
        run.wall_s,
        run.report.availability,
        run.report.longest_gap_ms,
        run.report.acknowledged,
        run.report.lost,
        run.switchover.1 - run.switchover.0,
        load_average()
    );
}

/// A primary whose Patroni process died or hangs (a crash, an OOM kill, a stuck process) leaves its PostgreSQL
/// running and taking writes. Its node probe is what the emergency exit asks ("does any member say it
/// leads?" before lifting the fence): it must still say it leads, from PostgreSQL itself, or Baton would resume
/// failover and the replicas would elect a second primary beside it. The shipped profile reads it as leading and
/// not in service; a replica without its Patroni gives no observation (not in service, not leading).
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_whose_patroni_died_still_says_it_leads_through_its_node_probe() {
    let cluster = PatroniCluster::up().expect("the Patroni cluster comes up");
    let leader = cluster.leader().expect("one leader");
    let replica = cluster
        .nodes()
        .iter()
        .find(|n| **n != leader)
        .unwrap()
        .clone();
    // The upgrade's fence: nobody elects while the leader's Patroni is gone.
    cluster.member_command(&leader, &["pause"]).unwrap();
    let patroni_pid = |node: &str| {
        std::fs::read_to_string(cluster.member_dir(node).join("patroni.pid"))
            .unwrap()
            .trim()
            .to_string()
    };
    let signal = |pid: &str, sig: &str| {
        let sent = std::process::Command::new("kill")
            .args([sig, pid])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {sig} {pid}");
    };
    let node_status = |node: &str| {
        cluster
            .member_command(node, &["node-status"])
            .map(|out| serde_json::from_str::<serde_json::Value>(&out).unwrap())
    };

    // Hung (SIGSTOP): its REST API takes the connection and never answers; PostgreSQL answers for it.
    let pid = patroni_pid(&leader);
    signal(&pid, "-STOP");
    let word = node_status(&leader).expect("the leader's node-status while its Patroni hangs");
    assert_eq!(word["role"], "primary", "{word}");
    assert_eq!(word["source"], "postgresql", "{word}");

    // Dead (SIGKILL: Patroni gets no chance to stop its PostgreSQL), on the leader and on a replica.
    signal(&pid, "-KILL");
    let replica_pid = patroni_pid(&replica);
    signal(&replica_pid, "-KILL");
    for pid in [&pid, &replica_pid] {
        let gone = tests::wait::wait_until(std::time::Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
        })
        .await;
        assert!(gone, "Patroni ({pid}) still runs after SIGKILL");
    }
    // Their PostgreSQL still runs.
    assert_eq!(cluster.running_version(&leader).unwrap(), OLD_VERSION);
    assert_eq!(cluster.running_version(&replica).unwrap(), OLD_VERSION);
    let word = node_status(&leader).expect("the leader's node-status once its Patroni died");
    assert_eq!(word["role"], "primary", "{word}");
    assert_eq!(word["state"], "no patroni", "{word}");
    let refused =
        node_status(&replica).expect_err("a replica without Patroni gives no observation");
    assert!(
        format!("{refused:#}").contains("runs as a replica"),
        "{refused:#}"
    );

    // The shipped profile's node probe, run for real: the orphan primary leads and is not in service; the replica
    // with its Patroni is in service and does not lead. (Exit 5: the dead members' probes fail.)
    let (code, seen) = crate::profile::check_report(
        &crate::profile::shipped("patroni.toml"),
        cluster.cluster_file(),
    );
    assert_eq!(code, Some(5), "{seen:#}");
    let nodes: std::collections::BTreeMap<String, serde_json::Value> =
        crate::profile::observed(&seen, "node")
            .into_iter()
            .collect();
    assert_eq!(nodes[&leader]["leads"], true, "{leader}: {seen:#}");
    assert_eq!(nodes[&leader]["up"], false, "{leader}: {seen:#}");
    assert!(nodes[&replica].is_null(), "{replica}: {seen:#}");
    for (node, reading) in &nodes {
        if *node != leader && *node != replica {
            assert_eq!(reading["leads"], false, "{node}: {seen:#}");
            assert_eq!(reading["up"], true, "{node}: {seen:#}");
        }
    }
}
