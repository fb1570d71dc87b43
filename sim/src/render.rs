//! Output formats of `chef-backend-ctl status`, `status --simple` and `cluster-status`, byte for byte as
//! in the reference (columns are as wide as their widest cell plus two spaces; the last is not padded).
//!
//! Everything in the "Distributed Node Status" column is derived here from node states. Choices where the
//! real tool is undocumented:
//! - leaderl counts: `leader` = running leaders, `follower` = running followers, `waiting` = running nodes
//!   that are `waiting_for_leader` or `deposed_leader` (not eligible); stopped nodes are in `total` only.
//! - etcd / elasticsearch health: green when every node runs, yellow with a majority, red without.
//! - postgresql: `offline` counts non-leader nodes whose postgresql is down (stopped nodes and a deposed
//!   leader held down by `no-start-pgsql`); with no leader the column is the documented
//!   `error: could not reach pgsql leader for replication stats`.
//! - On a stopped node every local service is `down` and the distributed column is an `error:` line per
//!   service (the local agents it would ask are not running).
//! - `cluster-status` shows a stopped node as `waiting_for_leader` (not eligible) with PG and ES `offline`.

use serde::Serialize;

use crate::model::{Cluster, Pg, Role, PGSQL, SERVICES};

/// Lays out rows as chef-backend-ctl does.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (k, cell) in r.iter().enumerate() {
            widths[k] = widths[k].max(cell.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (k, cell) in r.iter().enumerate() {
            if k + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{:<w$}", cell, w = widths[k] + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `0d 0h 43m 35s`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{}d {}h {}m {}s",
        s / 86_400,
        s % 86_400 / 3600,
        s % 3600 / 60,
        s % 60
    )
}

fn health(up: usize, total: usize) -> &'static str {
    if up == total {
        "green"
    } else if up * 2 > total {
        "yellow"
    } else {
        "red"
    }
}

/// The distributed column of each service, as seen from a running node.
fn distributed(c: &Cluster) -> [String; 4] {
    let total = c.nodes.len();
    let running = |r: Role| c.nodes.iter().filter(|n| n.up && n.role == r).count();
    let up = c.nodes.iter().filter(|n| n.up).count();
    let leader = running(Role::Leader);
    let waiting = running(Role::WaitingForLeader) + running(Role::DeposedLeader);
    let leaderl = format!(
        "leader: {leader}; waiting: {waiting}; follower: {}; total: {total}",
        running(Role::Follower)
    );
    let etcd = format!("health: {}; healthy nodes: {up}/{total}", health(up, total));
    let pg = if leader == 0 {
        "error: could not reach pgsql leader for replication stats".to_string()
    } else {
        let others = c.nodes.iter().filter(|n| !(n.up && n.role == Role::Leader));
        let (mut offline, mut syncing, mut synced) = (0, 0, 0);
        for n in others {
            if !n.up || n.services[PGSQL].pid.is_none() {
                offline += 1;
            } else if n.pg == Pg::Synced {
                synced += 1;
            } else {
                syncing += 1;
            }
        }
        format!("leader: 1; offline: {offline}; syncing: {syncing}; synced: {synced}")
    };
    let es = format!("state: {}; nodes online: {up}/{total}", health(up, total));
    [leaderl, etcd, pg, es]
}

const STOPPED_NODE_ERRORS: [&str; 4] = [
    "error: could not reach leaderl on this node",
    "error: could not reach etcd on this node",
    "error: could not reach pgsql leader for replication stats",
    "error: could not reach elasticsearch on this node",
];

/// `chef-backend-ctl status` on node `i` at `now`, and its exit code: always 0, as omnibus-ctl's status
/// (the sum of `sv status` exit codes, 0 for a service that is down): the table is the answer, whatever
/// it says (stopped node, deposed leader, no leader).
pub fn status(c: &Cluster, i: usize, now: u64) -> (String, i32) {
    let n = &c.nodes[i];
    let dist: [String; 4] = if n.up {
        distributed(c)
    } else {
        STOPPED_NODE_ERRORS.map(|s| s.to_string())
    };
    let mut rows = vec![vec![
        "Service".to_string(),
        "Local Status".to_string(),
        "Time in State".to_string(),
        "Distributed Node Status".to_string(),
    ]];
    for (k, svc) in SERVICES.iter().enumerate() {
        let s = &n.services[k];
        let local = match s.pid {
            Some(pid) => format!("running (pid {pid})"),
            None => "down".to_string(),
        };
        rows.push(vec![
            svc.to_string(),
            local,
            duration(now.saturating_sub(s.since_ms)),
            dist[k].clone(),
        ]);
    }
    (table(&rows), 0)
}

/// `chef-backend-ctl status --simple`: runit lines, services in alphabetical order; exit 0 (see [`status`]).
pub fn status_simple(c: &Cluster, i: usize, now: u64) -> (String, i32) {
    let n = &c.nodes[i];
    let mut order: Vec<usize> = (0..SERVICES.len()).collect();
    order.sort_by_key(|&k| SERVICES[k]);
    let mut out = String::new();
    for k in order {
        let s = &n.services[k];
        let secs = now.saturating_sub(s.since_ms) / 1000;
        let log_secs = now.saturating_sub(c.created_ms) / 1000;
        let main = match s.pid {
            Some(pid) => format!("run: {}: (pid {pid}) {secs}s", SERVICES[k]),
            None => format!("down: {}: {secs}s, normally up", SERVICES[k]),
        };
        out.push_str(&format!(
            "{main}; run: log: (pid {}) {log_secs}s\n",
            s.log_pid
        ));
    }
    (out, 0)
}

/// One row of `cluster-status` (also the `--json` schema).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterRow {
    pub name: String,
    pub ip: String,
    pub guid: String,
    /// leader | follower | deposed_leader | waiting_for_leader
    pub role: String,
    /// leader | follower | offline
    pub pg: String,
    /// master | not_master | offline
    pub es: String,
    /// Whether the node's services run.
    pub running: bool,
    /// The node's own failover flag (`set-node-failover`).
    pub failover: bool,
}

/// `cluster-status --json`: `{"failover": bool, "leader": name|null, "nodes": [ClusterRow...]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterStatusJson {
    /// Cluster failover (`set-cluster-failover`).
    pub failover: bool,
    pub leader: Option<String>,
    pub nodes: Vec<ClusterRow>,
}

/// The rows of `cluster-status`.
pub fn cluster_rows(c: &Cluster) -> Vec<ClusterRow> {
    let master = c.es_master();
    c.nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (role, pg, es) = if n.up {
                let pg = if n.role == Role::Leader {
                    "leader"
                } else {
                    "follower"
                };
                let es = if master == Some(i) {
                    "master"
                } else {
                    "not_master"
                };
                (n.role.as_str(), pg, es)
            } else {
                (Role::WaitingForLeader.as_str(), "offline", "offline")
            };
            ClusterRow {
                name: n.name.clone(),
                ip: n.ip.clone(),
                guid: n.guid.clone(),
                role: role.to_string(),
                pg: pg.to_string(),
                es: es.to_string(),
                running: n.up,
                failover: n.failover,
            }
        })
        .collect()
}

/// `chef-backend-ctl cluster-status`.
pub fn cluster_status(c: &Cluster) -> String {
    let mut rows = vec![["Name", "IP", "GUID", "Role", "PG", "ES"]
        .map(String::from)
        .to_vec()];
    for r in cluster_rows(c) {
        rows.push(vec![r.name, r.ip, r.guid, r.role, r.pg, r.es]);
    }
    table(&rows)
}

/// `chef-backend-ctl cluster-status --json`.
pub fn cluster_status_json(c: &Cluster) -> String {
    let j = ClusterStatusJson {
        failover: c.failover,
        leader: c.leader().map(|i| c.nodes[i].name.clone()),
        nodes: cluster_rows(c),
    };
    // A struct of strings and bools always serialises.
    serde_json::to_string_pretty(&j).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Timings, Tx};

    const T0: u64 = 1_700_000_000_000;

    /// The reference's healthy 3-node cluster, pids and times as documented.
    fn reference_cluster() -> Cluster {
        let mut c = Cluster::new(3, "3.0.0-1", Timings::default(), T0);
        let pids = [6881, 6833, 6942, 6796];
        let ages = [43 * 60 + 35, 43 * 60 + 41, 43 * 60 + 34, 43 * 60 + 43];
        for k in 0..4 {
            c.nodes[0].services[k].pid = Some(pids[k]);
            c.nodes[0].services[k].since_ms = T0 - ages[k] * 1000;
        }
        c
    }

    #[test]
    fn healthy_status_matches_reference_byte_for_byte() {
        let c = reference_cluster();
        let expected = "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6881)  0d 0h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3
etcd           running (pid 6833)  0d 0h 43m 41s  health: green; healthy nodes: 3/3
postgresql     running (pid 6942)  0d 0h 43m 34s  leader: 1; offline: 0; syncing: 0; synced: 2
elasticsearch  running (pid 6796)  0d 0h 43m 43s  state: green; nodes online: 3/3
";
        assert_eq!(status(&c, 0, T0), (expected.to_string(), 0));
    }

    #[test]
    fn leaderless_status_matches_degraded_reference_rows() {
        let mut c = reference_cluster();
        for n in c.nodes.iter_mut() {
            n.role = Role::WaitingForLeader;
            n.pg = Pg::Synced;
        }
        c.nodes[0].services[0].pid = Some(22080);
        c.nodes[0].services[0].since_ms = T0 - ((27 * 24 + 9) * 3600 + 51 * 60 + 38) * 1000;
        c.nodes[0].services[PGSQL].pid = None;
        c.nodes[0].services[PGSQL].since_ms = T0 - (10 * 60 + 27) * 1000;
        let (out, code) = status(&c, 0, T0);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "leaderl        running (pid 22080)  27d 9h 51m 38s  leader: 0; waiting: 3; follower: 0; total: 3");
        assert_eq!(lines[3], "postgresql     down                 0d 0h 10m 27s   error: could not reach pgsql leader for replication stats");
        assert_eq!(code, 0, "leaderl runs: the table is the answer");
    }

    #[test]
    fn follower_stopped_and_restarting_shows_in_counts() {
        let mut c = Cluster::new(3, "3.0.0-1", Timings::default(), T0);
        let mut tx = Tx::new(&mut c);
        tx.stop(2, T0 + 5_000, "stop");
        let (out, _) = status(tx.cluster, 0, T0 + 9_000);
        let expected = "\
Service        Local Status        Time in State  Distributed Node Status
leaderl        running (pid 6796)  0d 0h 0m 9s    leader: 1; waiting: 0; follower: 1; total: 3
etcd           running (pid 6798)  0d 0h 0m 9s    health: yellow; healthy nodes: 2/3
postgresql     running (pid 6800)  0d 0h 0m 9s    leader: 1; offline: 1; syncing: 0; synced: 1
elasticsearch  running (pid 6802)  0d 0h 0m 9s    state: yellow; nodes online: 2/3
";
        assert_eq!(out, expected);
        // The stopped node itself.
        let (out, code) = status(tx.cluster, 2, T0 + 9_000);
        let expected = "\
Service        Local Status  Time in State  Distributed Node Status
leaderl        down          0d 0h 0m 4s    error: could not reach leaderl on this node
etcd           down          0d 0h 0m 4s    error: could not reach etcd on this node
postgresql     down          0d 0h 0m 4s    error: could not reach pgsql leader for replication stats
elasticsearch  down          0d 0h 0m 4s    error: could not reach elasticsearch on this node
";
        assert_eq!(
            (out.as_str(), code),
            (expected, 0),
            "exit 0: the table tells"
        );
        assert!(tx.start(2, T0 + 10_000, "start"));
        let (out, _) = status(tx.cluster, 0, T0 + 10_500);
        assert!(
            out.contains("leader: 1; offline: 0; syncing: 1; synced: 1\n"),
            "{out}"
        );
    }

    #[test]
    fn cluster_status_matches_reference_byte_for_byte() {
        let mut c = Cluster::new(3, "3.0.0-1", Timings::default(), T0);
        let guids = [
            "79d84527cf937f3daa94c1435d0a4249",
            "c106c88745ef13517874d7301463afb9",
            "4d29bcb5eec25d3674d5b8af132f75b3",
        ];
        for (n, g) in c.nodes.iter_mut().zip(guids) {
            n.guid = g.to_string();
        }
        // backend-3's elasticsearch has run longest: it is the ES master.
        c.nodes[2].services[3].since_ms = T0 - 1;
        let mut tx = Tx::new(&mut c);
        tx.demote(
            0,
            T0 + 1,
            crate::model::ElectionTrigger::Demote,
            "demote",
            None,
        );
        tx.advance(T0 + 801);
        let expected = "\
Name       IP              GUID                              Role            PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  deposed_leader  follower  not_master
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader          leader    not_master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower        follower  master
";
        assert_eq!(cluster_status(tx.cluster), expected);
        tx.stop(2, T0 + 900, "stop");
        let out = cluster_status(tx.cluster);
        assert!(out.ends_with("backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  waiting_for_leader  offline   offline\n"), "{out}");
    }

    #[test]
    fn simple_status_prints_runit_lines() {
        let mut c = Cluster::new(1, "3.0.0-1", Timings::default(), T0);
        let mut tx = Tx::new(&mut c);
        tx.stop(0, T0 + 1_000, "stop");
        let (out, code) = status_simple(tx.cluster, 0, T0 + 394_000);
        assert_eq!(
            code, 0,
            "omnibus-ctl: `sv status` of a down service exits 0"
        );
        let expected = "\
down: elasticsearch: 393s, normally up; run: log: (pid 6803) 394s
down: etcd: 393s, normally up; run: log: (pid 6799) 394s
down: leaderl: 393s, normally up; run: log: (pid 6797) 394s
down: postgresql: 393s, normally up; run: log: (pid 6801) 394s
";
        assert_eq!(out, expected);
        assert!(tx.start(0, T0 + 400_000, "start"));
        let (out, code) = status_simple(tx.cluster, 0, T0 + 506_983);
        assert_eq!(code, 0);
        assert_eq!(
            out.lines().next(),
            Some("run: elasticsearch: (pid 6807) 106s; run: log: (pid 6803) 506s")
        );
    }
}
