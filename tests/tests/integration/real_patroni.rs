//! A real Patroni + PostgreSQL 15 cluster (3 members, etcd as DCS, on loopback), rolled
//! from PostgreSQL 15.18 to 15.20 while a client writes throughout (tests::real::patroni).
//! The manual baseline here is what Baton's profile-driven upgrade is measured against.

use tests::real::patroni::{PatroniCluster, NEW_VERSION, OLD_VERSION};

#[test]
fn the_manual_baseline_upgrades_every_member_once_leader_last_and_loses_no_write() {
    let cluster = PatroniCluster::up().expect("the Patroni cluster comes up");
    let leader_before = cluster.leader().expect("one leader");
    for node in cluster.nodes() {
        let running = cluster.running_version(node).unwrap();
        assert!(
            running.starts_with(&format!("{OLD_VERSION} ")),
            "{node} runs {running} before the upgrade"
        );
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
    let writer = cluster.start_writer().expect("the writer connects");
    let run = cluster.manual_upgrade().expect("the manual baseline runs");
    let report = writer.stop().expect("the writer reads everything back");
    println!(
        "patroni manual baseline: wall {} ms, order {:?}, leader {} -> {}; writer: {} acknowledged, {} lost, \
         availability {:.4}, longest gap {} ms at {} ms, {} failed attempts\n{}",
        run.wall_ms,
        run.order,
        run.leader_before,
        run.leader_after,
        report.acknowledged,
        report.lost,
        report.availability,
        report.longest_gap_ms,
        report.longest_gap_at_ms,
        report.failed_attempts,
        run.steps
    );

    // Every member runs the new version now, and the cluster has one leader, not the old one.
    for node in cluster.nodes() {
        let running = cluster.running_version(node).unwrap();
        assert!(
            running.starts_with(&format!("{NEW_VERSION} ")),
            "{node} runs {running} after the upgrade"
        );
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

    // No acknowledged write is lost, and the writer really wrote throughout.
    assert_eq!(report.lost, 0, "acknowledged writes lost: {report:?}");
    assert!(
        report.acknowledged > 100,
        "the writer barely wrote: {report:?}"
    );
}
