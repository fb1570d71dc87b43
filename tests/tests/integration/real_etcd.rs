//! A real 3-member etcd cluster on loopback (tests::real::etcd, docs/real-clusters.md), upgraded 3.4 -> 3.5 while
//! a client writes through etcd's own JSON gateway. Here by the manual baseline (a plain shell script); the
//! Baton-driven upgrade reuses the same harness and checks.

use std::collections::BTreeMap;

use tests::real::etcd::{Action, EtcdCluster};

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
