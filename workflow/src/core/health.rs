//! Health and topology checks on parsed observations. Each returns the list of problems (empty = passed), so
//! the log can say exactly why a gate did not pass.

use super::parse::{ClusterStatus, Distributed, Role, ServiceState, StatusReport, KNOWN_SERVICES};

/// Problems in a node's `status`: every known service running, one leader, nobody waiting, every replica
/// synced, etcd and Elasticsearch green with all `nodes` members.
pub fn status_problems(report: &StatusReport, nodes: u32) -> Vec<String> {
    let mut problems = Vec::new();
    for name in KNOWN_SERVICES {
        let Some(row) = report.services.get(name) else {
            problems.push(format!("{name}: not reported"));
            continue;
        };
        if !matches!(row.state, ServiceState::Running { .. }) {
            problems.push(format!("{name}: not running ({:?})", row.state));
        }
        match &row.distributed {
            Distributed::Leaderl {
                leader,
                waiting,
                follower,
                total,
            } => {
                if *leader != 1
                    || *waiting != 0
                    || *total != nodes
                    || follower.checked_add(1) != Some(nodes)
                {
                    problems.push(format!(
                        "leaderl: leader: {leader}; waiting: {waiting}; follower: {follower}; total: {total} \
                         (want 1 leader, {} followers of {nodes})",
                        nodes.saturating_sub(1)
                    ));
                }
            }
            Distributed::Etcd {
                health,
                healthy,
                total,
            } => {
                if health != "green" || *healthy != nodes || *total != nodes {
                    problems.push(format!(
                        "etcd: health: {health}; healthy nodes: {healthy}/{total}"
                    ));
                }
            }
            Distributed::Postgresql {
                leader,
                offline,
                syncing,
                synced,
            } => {
                if *leader != 1
                    || *offline != 0
                    || *syncing != 0
                    || synced.checked_add(1) != Some(nodes)
                {
                    problems.push(format!(
                        "postgresql: leader: {leader}; offline: {offline}; syncing: {syncing}; synced: {synced} \
                         (want {} synced)",
                        nodes.saturating_sub(1)
                    ));
                }
            }
            Distributed::Elasticsearch {
                state,
                online,
                total,
            } => {
                if state != "green" || *online != nodes || *total != nodes {
                    problems.push(format!(
                        "elasticsearch: state: {state}; nodes online: {online}/{total}"
                    ));
                }
            }
            Distributed::Error(e) => problems.push(format!("{name}: error: {e}")),
            Distributed::Unrecognized(t) => {
                problems.push(format!("{name}: unrecognised status `{t}`"))
            }
        }
    }
    problems
}

/// Problems in `cluster-status` against the cluster file's node names: every node listed, none unknown,
/// exactly one leader, every other node a follower.
pub fn cluster_problems(status: &ClusterStatus, names: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in names {
        if status.member(name).is_none() {
            problems.push(format!("{name}: missing from cluster-status"));
        }
    }
    for m in &status.members {
        if !names.contains(&m.name.as_str()) {
            problems.push(format!(
                "{}: in cluster-status but not in the cluster file",
                m.name
            ));
        }
    }
    problems.extend(leader_problems(status));
    for m in &status.members {
        if !matches!(m.role, Role::Leader | Role::Follower) {
            problems.push(format!("{}: role {:?}", m.name, m.role));
        }
    }
    problems
}

/// The failover gate's check of `cluster-status` (S3): exactly one leader.
pub fn leader_problems(status: &ClusterStatus) -> Vec<String> {
    let leaders = status.leaders();
    if leaders.len() == 1 {
        return vec![];
    }
    vec![format!(
        "{} leaders ({}), want exactly one",
        leaders.len(),
        leaders.join(", ")
    )]
}

/// The failover gate's check of the leader's own `status` (S3): its services run and at least one follower is
/// synced, because leaderl only elects synced followers. Weaker than [`status_problems`] on purpose: a wind-down
/// re-enables failover once a leader crash would be survived, even if another node is still stuck.
pub fn electable_problems(report: &StatusReport) -> Vec<String> {
    let mut problems = Vec::new();
    for name in KNOWN_SERVICES {
        match report.services.get(name) {
            None => problems.push(format!("{name}: not reported")),
            Some(row) if !matches!(row.state, ServiceState::Running { .. }) => {
                problems.push(format!("{name}: not running ({:?})", row.state))
            }
            Some(_) => {}
        }
    }
    match report.services.get("postgresql").map(|r| &r.distributed) {
        Some(Distributed::Postgresql { synced, .. }) if *synced >= 1 => {}
        Some(Distributed::Postgresql { synced, .. }) => problems.push(format!(
            "postgresql: synced: {synced}, no synced follower to elect"
        )),
        Some(other) => problems.push(format!(
            "postgresql: no synced follower to elect ({other:?})"
        )),
        None => {}
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::parse::{parse_cluster_status, parse_status};
    use super::*;

    #[test]
    fn healthy_golden_status_passes_and_degraded_fails() {
        let healthy = "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3
postgresql     running (pid 6942)  0d 0h 43m 34s  leader: 1; offline: 0; syncing: 0; synced: 2
elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3
";
        assert_eq!(
            status_problems(&parse_status(healthy).unwrap(), 3),
            Vec::<String>::new()
        );
        let syncing = healthy.replace("syncing: 0; synced: 2", "syncing: 1; synced: 1");
        let p = status_problems(&parse_status(&syncing).unwrap(), 3);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("postgresql"), "{p:?}");
        assert!(!status_problems(&parse_status(healthy).unwrap(), 4).is_empty());
    }

    #[test]
    fn the_failover_gate_needs_running_services_and_a_synced_follower_only() {
        let stuck = "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3
postgresql     running (pid 6942)  0d 0h 43m 34s  leader: 1; offline: 0; syncing: 1; synced: 1
elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3
";
        let report = parse_status(stuck).unwrap();
        assert!(!status_problems(&report, 3).is_empty());
        assert_eq!(electable_problems(&report), Vec::<String>::new());
        let none_synced =
            parse_status(&stuck.replace("syncing: 1; synced: 1", "syncing: 2; synced: 0")).unwrap();
        assert_eq!(
            electable_problems(&none_synced),
            vec!["postgresql: synced: 0, no synced follower to elect".to_string()]
        );
        let down = parse_status(
            &stuck.replace("etcd           running (pid 6833)", "etcd           down"),
        )
        .unwrap();
        let p = electable_problems(&down);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("etcd: not running"), "{p:?}");
    }

    #[test]
    fn the_failover_gate_needs_exactly_one_leader() {
        let one = "\
Name       IP              GUID                              Role                PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  waiting_for_leader  offline   offline
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader              leader    not_master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower            follower  master
";
        let c = parse_cluster_status(one).unwrap();
        assert_eq!(leader_problems(&c), Vec::<String>::new());
        assert!(!cluster_problems(&c, &["backend-1", "backend-2", "backend-3"]).is_empty());
        let two = parse_cluster_status(
            &one.replace("follower            follower", "leader              leader"),
        )
        .unwrap();
        assert_eq!(
            leader_problems(&two),
            vec!["2 leaders (backend-2, backend-3), want exactly one".to_string()]
        );
    }

    #[test]
    fn deposed_leader_is_a_problem() {
        let text = "\
Name       IP              GUID                              Role            PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  deposed_leader  follower  not_master
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader          leader    not_master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower        follower  master
";
        let c = parse_cluster_status(text).unwrap();
        let p = cluster_problems(&c, &["backend-1", "backend-2", "backend-3"]);
        assert_eq!(p, vec!["backend-1: role DeposedLeader".to_string()]);
        let p = cluster_problems(&c, &["backend-1", "backend-2"]);
        assert!(
            p.iter().any(|p| p.contains("not in the cluster file")),
            "{p:?}"
        );
    }
}
