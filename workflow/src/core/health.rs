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
                if *leader != 1 || *waiting != 0 || *total != nodes || *follower + 1 != nodes {
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
                if *leader != 1 || *offline != 0 || *syncing != 0 || *synced + 1 != nodes {
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
    let leaders = status.leaders();
    if leaders.len() != 1 {
        problems.push(format!(
            "{} leaders ({}), want exactly one",
            leaders.len(),
            leaders.join(", ")
        ));
    }
    for m in &status.members {
        if !matches!(m.role, Role::Leader | Role::Follower) {
            problems.push(format!("{}: role {:?}", m.name, m.role));
        }
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
