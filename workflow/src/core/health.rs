//! Health and topology checks on the abstract observations (`observe`), for every system. Each returns the list
//! of problems (empty = passed), so the log can say exactly why a gate did not pass. A node's full health is
//! its reader's [`NodeHealth::problems`]: what "healthy" means in a system's own terms is the reader's to say.

use super::observe::{MemberRole, NodeHealth, Topology};

/// Problems in `cluster-status` against the cluster file's node names: every node listed, none unknown,
/// exactly one leader, every other node a follower.
pub fn cluster_problems(topology: &Topology, names: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    for name in names {
        if topology.member(name).is_none() {
            problems.push(format!("{name}: missing from cluster-status"));
        }
    }
    for m in &topology.members {
        if !m.known || !names.contains(&m.node.as_str()) {
            problems.push(format!(
                "{}: in cluster-status but not in the cluster file",
                m.node
            ));
        }
    }
    problems.extend(leader_problems(topology));
    for m in &topology.members {
        if !matches!(m.role, MemberRole::Leader | MemberRole::Follower) {
            problems.push(format!("{}: role {}", m.node, m.listed));
        }
    }
    problems
}

/// Members a profile's topology shows out of service (its `in_service_when`, e.g. Patroni's state not
/// `running`/`streaming`) or behind the leader (`caught_up_when`, `lag`, `behind_leader`): a rolling step
/// waits for them, as only an in-service, caught-up member keeps the cluster's data if the leader goes.
/// (chef-backend's topology has no such reading: its leader's `status` shows the same.)
pub fn standing_problems(topology: &Topology) -> Vec<String> {
    let mut problems = Vec::new();
    for m in &topology.members {
        if !m.in_service {
            problems.push(format!("{}: {}", m.node, m.shown));
        } else if m.role != MemberRole::Leader && m.caught_up == Some(false) {
            problems.push(format!("{}: not caught up with the leader", m.node));
        }
    }
    problems
}

/// The failover gate's check of `cluster-status` (S3): exactly one leader.
pub fn leader_problems(topology: &Topology) -> Vec<String> {
    let leaders = topology.leaders();
    if leaders.len() == 1 {
        return vec![];
    }
    vec![format!(
        "{} leaders ({}), want exactly one",
        leaders.len(),
        leaders.join(", ")
    )]
}

/// The failover gate's check of the leader's own view (S3): its services run and at least one follower is
/// caught up, because only a caught-up follower can be elected. Weaker than the node's full health on purpose: a
/// wind-down re-enables failover once a leader crash would be survived, even if another node is still stuck.
pub fn electable_problems(health: &NodeHealth) -> Vec<String> {
    let mut problems = Vec::new();
    for s in &health.services {
        match &s.shown {
            None => problems.push(format!("{}: not reported", s.name)),
            Some(_) if !s.running => {
                problems.push(format!("{}: not running ({})", s.name, s.detail))
            }
            Some(_) => {}
        }
    }
    if let Some(r) = &health.replication {
        match (&r.counts, &r.shown) {
            (Some(c), _) if c.caught_up >= 1 => {}
            (Some(c), _) => problems.push(format!(
                "{}: synced: {}, no synced follower to elect",
                r.service, c.caught_up
            )),
            (None, Some(shown)) => problems.push(format!(
                "{}: no synced follower to elect ({shown})",
                r.service
            )),
            (None, None) => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::super::builtin::chef_backend::{parse_cluster_status, parse_status};
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
            parse_status(healthy).unwrap().health(3).problems,
            Vec::<String>::new()
        );
        let syncing = healthy.replace("syncing: 0; synced: 2", "syncing: 1; synced: 1");
        let p = parse_status(&syncing).unwrap().health(3).problems;
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("postgresql"), "{p:?}");
        assert!(!parse_status(healthy).unwrap().health(4).problems.is_empty());
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
        let report = parse_status(stuck).unwrap().health(3);
        assert!(!report.problems.is_empty());
        assert_eq!(electable_problems(&report), Vec::<String>::new());
        let none_synced =
            parse_status(&stuck.replace("syncing: 1; synced: 1", "syncing: 2; synced: 0"))
                .unwrap()
                .health(3);
        assert_eq!(
            electable_problems(&none_synced),
            vec!["postgresql: synced: 0, no synced follower to elect".to_string()]
        );
        let down = parse_status(
            &stuck.replace("etcd           running (pid 6833)", "etcd           down"),
        )
        .unwrap()
        .health(3);
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
        let c = parse_cluster_status(one).unwrap().topology();
        assert_eq!(leader_problems(&c), Vec::<String>::new());
        assert!(!cluster_problems(&c, &["backend-1", "backend-2", "backend-3"]).is_empty());
        let two = parse_cluster_status(
            &one.replace("follower            follower", "leader              leader"),
        )
        .unwrap()
        .topology();
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
        let c = parse_cluster_status(text).unwrap().topology();
        let p = cluster_problems(&c, &["backend-1", "backend-2", "backend-3"]);
        assert_eq!(p, vec!["backend-1: role DeposedLeader".to_string()]);
        let p = cluster_problems(&c, &["backend-1", "backend-2"]);
        assert!(
            p.iter().any(|p| p.contains("not in the cluster file")),
            "{p:?}"
        );
    }
}
