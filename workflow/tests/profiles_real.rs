//! The shipped profiles (`profiles/*.toml`) read the real outputs their probes gave on real clusters
//! (`tests/fixtures/<system>/<state>/`, saved by the harnesses in `scripts/real/`), and what they read is what
//! the cluster was doing: the leader, who is in service and caught up, the versions, the failover fence. Data
//! driven: etcd's expectations are the harness's own `states.json`; Patroni's are the table below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use workflow::core::health::standing_problems;
use workflow::core::profile_file::{
    parse_failover, parse_node, parse_topology, parse_version, NodeReading, ProbeDef, ProfileFile,
};
use workflow::core::{ClusterFile, MemberRole, NodeSpec, Topology};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn profile(name: &str) -> ProfileFile {
    let path = repo().join("profiles").join(format!("{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    ProfileFile::parse(&path.display().to_string(), &text).unwrap_or_else(|e| panic!("{e}"))
}

/// A saved probe run: its stdout and exit code.
struct Saved {
    stdout: String,
    exit: i32,
}

/// What a probe gave: `None` when its exit code is not one whose output the profile reads (the probe is then
/// unavailable, as for the upgrade loop).
fn readable<'a>(probe: &ProbeDef, saved: &'a Saved) -> Option<&'a str> {
    probe
        .read_exit_codes
        .contains(&saved.exit)
        .then_some(saved.stdout.as_str())
}

// ---------------------------------------------------------------------------------------------------------
// etcd: `<probe>.<node>.{stdout,exit}` per state, expectations in states.json.

fn etcd_saved(state: &str, file: &str) -> Saved {
    let dir = repo().join("tests/fixtures/etcd").join(state);
    let stdout = std::fs::read_to_string(dir.join(format!("{file}.stdout"))).unwrap();
    let exit = std::fs::read_to_string(dir.join(format!("{file}.exit")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Saved { stdout, exit }
}

/// What the capture harness knew of each saved state (`states.json`).
fn etcd_states() -> serde_json::Value {
    let path = repo().join("tests/fixtures/etcd/states.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn etcd_nodes() -> Vec<NodeSpec> {
    let path = repo().join("tests/fixtures/etcd/cluster.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    ClusterFile::parse("cluster.toml", &text).unwrap().nodes
}

/// `behind_leader`: a member whose applied index is far behind the leader's raft index is not caught up (the real
/// healthy output, with one member's applied index edited), and one exactly `max_lag` behind still is.
#[test]
fn the_etcd_profile_sees_a_member_behind_the_leader() {
    let p = profile("etcd");
    let nodes = etcd_nodes();
    let saved = etcd_saved("healthy", "topology");
    let t = parse_topology(&p.probes.topology, &saved.stdout, &nodes).unwrap();
    let leader = t.sole_leader().unwrap().to_string();
    let doc: serde_json::Value = serde_json::from_str(&saved.stdout).unwrap();
    let member = |doc: &serde_json::Value, i: usize| {
        let addr = doc[i]["Endpoint"].as_str().unwrap().to_string();
        nodes
            .iter()
            .find(|n| n.address == addr)
            .unwrap()
            .name
            .clone()
    };
    let follower = (0..3).find(|i| member(&doc, *i) != leader).unwrap();
    // The leader's raft index at 10,000 (every member's, as a busy cluster shows), one follower's applied
    // index moved: 0 and 9,899 are more than 100 behind, 9,900 is exactly 100.
    for (applied, want) in [(0u64, false), (9_899, false), (9_900, true), (10_000, true)] {
        let mut edited = doc.clone();
        for i in 0..3 {
            edited[i]["Status"]["raftIndex"] = 10_000u64.into();
            edited[i]["Status"]["raftAppliedIndex"] = 10_000u64.into();
        }
        edited[follower]["Status"]["raftAppliedIndex"] = applied.into();
        let t = parse_topology(&p.probes.topology, &edited.to_string(), &nodes).unwrap();
        let m = t.member(&member(&edited, follower)).unwrap();
        assert_eq!(m.caught_up, Some(want), "applied {applied} of 10000: {m:?}");
        let l = t.member(&leader).unwrap();
        assert_eq!(
            l.caught_up,
            Some(true),
            "the leader is caught up with itself"
        );
    }
}

/// `member_id`: the real healthy output with one member's ID changed (another member answering at its address)
/// lists that node as not in service, not caught up and not leading, whichever it was; the others are read as
/// before. Both etcd profiles check it.
#[test]
fn the_etcd_profile_does_not_take_a_stranger_at_a_members_address_for_it() {
    let p = profile("etcd");
    assert!(profile("etcd-http").probes.topology.parse != p.probes.topology.parse);
    let nodes = etcd_nodes();
    let saved = etcd_saved("healthy", "topology");
    let honest = parse_topology(&p.probes.topology, &saved.stdout, &nodes).unwrap();
    let leader = honest.sole_leader().unwrap().to_string();
    let doc: serde_json::Value = serde_json::from_str(&saved.stdout).unwrap();
    for i in 0..3 {
        let mut edited = doc.clone();
        let was = edited[i]["Status"]["header"]["member_id"].clone();
        edited[i]["Status"]["header"]["member_id"] = 1234567890u64.into();
        if edited[i]["Status"]["leader"] == was {
            // A stranger that says it leads its own cluster.
            edited[i]["Status"]["leader"] = 1234567890u64.into();
        }
        let t = parse_topology(&p.probes.topology, &edited.to_string(), &nodes).unwrap();
        let addr = edited[i]["Endpoint"].as_str().unwrap();
        let node = &nodes.iter().find(|n| n.address == addr).unwrap().name;
        let m = t.member(node).unwrap();
        assert!(!m.in_service && m.caught_up == Some(false), "{m:?}");
        assert!(m.shown.contains("member ID 1234567890 is not"), "{m:?}");
        let leaders = t.leaders();
        if *node == leader {
            assert!(leaders.is_empty(), "{t:?}");
        } else {
            assert_eq!(leaders, [leader.as_str()], "{t:?}");
        }
        for other in nodes.iter().filter(|n| &n.name != node) {
            assert_eq!(t.member(&other.name), honest.member(&other.name), "{t:?}");
        }
    }
    // A node without the var cannot be checked: not in service (fails closed).
    let mut bare = nodes.clone();
    bare[0].vars.remove("member_id");
    let t = parse_topology(&p.probes.topology, &saved.stdout, &bare).unwrap();
    let m = t.member(&bare[0].name).unwrap();
    assert!(
        !m.in_service && m.shown.contains("has no var member_id"),
        "{m:?}"
    );
}

/// `behind_leader` fails closed: a member whose position is missing or not a number is not caught up, and a
/// member is compared with the furthest raft index any member reports, not only the leader's (etcdctl asks the
/// members one after another, so a slow leader's index may be the oldest in the output).
#[test]
fn the_etcd_profile_fails_closed_on_a_missing_or_older_position() {
    let p = profile("etcd");
    let nodes = etcd_nodes();
    let saved = etcd_saved("healthy", "topology");
    let t = parse_topology(&p.probes.topology, &saved.stdout, &nodes).unwrap();
    let leader = t.sole_leader().unwrap().to_string();
    let doc: serde_json::Value = serde_json::from_str(&saved.stdout).unwrap();
    let name = |i: usize| {
        let addr = doc[i]["Endpoint"].as_str().unwrap();
        nodes
            .iter()
            .find(|n| n.address == addr)
            .unwrap()
            .name
            .clone()
    };
    let l = (0..3).find(|i| name(*i) == leader).unwrap();
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (a, b) = (followers[0], followers[1]);
    let read = |edited: &serde_json::Value| {
        parse_topology(&p.probes.topology, &edited.to_string(), &nodes).unwrap()
    };
    // A follower's applied index missing, or not a number: not caught up (it was "unknown", counted as caught up).
    for bad in [serde_json::Value::Null, "soon".into()] {
        let mut edited = doc.clone();
        match &bad {
            serde_json::Value::Null => {
                edited[a]["Status"]
                    .as_object_mut()
                    .unwrap()
                    .remove("raftAppliedIndex");
            }
            v => edited[a]["Status"]["raftAppliedIndex"] = v.clone(),
        }
        let t = read(&edited);
        assert_eq!(
            t.member(&name(a)).unwrap().caught_up,
            Some(false),
            "{bad}: {t:?}"
        );
        assert_eq!(
            t.member(&name(b)).unwrap().caught_up,
            Some(true),
            "{bad}: {t:?}"
        );
    }
    // The leader answered first with raft index 69; follower a, asked later, is at 197; follower b applied 75.
    // b is 122 behind the cluster, though 6 ahead of the leader's older figure.
    let mut edited = doc.clone();
    for (i, index, applied) in [(l, 69u64, 69u64), (a, 197, 197), (b, 80, 75)] {
        edited[i]["Status"]["raftIndex"] = index.into();
        edited[i]["Status"]["raftAppliedIndex"] = applied.into();
    }
    let t = read(&edited);
    assert_eq!(t.member(&name(b)).unwrap().caught_up, Some(false), "{t:?}");
    assert_eq!(t.member(&name(a)).unwrap().caught_up, Some(true), "{t:?}");
    assert_eq!(t.member(&leader).unwrap().caught_up, Some(true), "{t:?}");
    // No member shows a raft index at all: nobody but the leader counts as caught up.
    let mut edited = doc.clone();
    for i in 0..3 {
        edited[i]["Status"]
            .as_object_mut()
            .unwrap()
            .remove("raftIndex");
    }
    let t = read(&edited);
    for f in [a, b] {
        assert_eq!(t.member(&name(f)).unwrap().caught_up, Some(false), "{t:?}");
    }
}

#[test]
fn the_etcd_profile_reads_what_a_real_etcd_cluster_showed() {
    let p = profile("etcd");
    let nodes = etcd_nodes();
    let states = etcd_states();
    let states = states["states"].as_object().unwrap();
    assert!(states.len() >= 5, "{states:?}");
    for (state, want) in states {
        let stopped: Vec<&str> = want["stopped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let saved = etcd_saved(state, "topology");
        let text = readable(&p.probes.topology, &saved)
            .unwrap_or_else(|| panic!("{state}: topology exit {} is not read", saved.exit));
        let t = parse_topology(&p.probes.topology, text, &nodes).unwrap();
        assert_eq!(
            t.leaders(),
            [want["leader"].as_str().unwrap()],
            "{state}: {t:?}"
        );
        // Every member that answered was within `max_lag` of the leader's raft index in these quiet states.
        for m in &t.members {
            assert_eq!(
                m.caught_up,
                Some(true),
                "{state}: {} caught up in {t:?}",
                m.node
            );
        }
        for n in &nodes {
            let down = stopped.contains(&n.name.as_str());
            // A member that is down is not in the status output at all.
            assert_eq!(
                t.member(&n.name).is_none(),
                down,
                "{state}: {} in {t:?}",
                n.name
            );
            let saved = etcd_saved(state, &format!("node.{}", n.name));
            let health = readable(&p.probes.node, &saved)
                .map(|text| parse_node(&p.probes.node, text).unwrap());
            assert_eq!(
                health.map(|h| h.up),
                Some(!down),
                "{state}: node probe of {}",
                n.name
            );
            for (probe, key) in [
                (Some(&p.probes.version), "installed"),
                (p.probes.running_version.as_ref(), "running"),
            ] {
                let probe = probe.unwrap();
                let file = if key == "installed" {
                    "version"
                } else {
                    "running_version"
                };
                let saved = etcd_saved(state, &format!("{file}.{}", n.name));
                let got = readable(probe, &saved).map(|text| parse_version(probe, text));
                match want[key][n.name.as_str()].as_str() {
                    Some(v) => assert_eq!(
                        got.map(|r| r.unwrap()),
                        Some(v.to_string()),
                        "{state}: {key} of {}",
                        n.name
                    ),
                    // Not running: the probe fails (unavailable), or says nothing parseable.
                    None => assert!(
                        !matches!(got, Some(Ok(_))),
                        "{state}: {key} of {} is {got:?}",
                        n.name
                    ),
                }
            }
        }
    }
}

/// etcd's HTTP gateway writes every 64-bit integer of a status as a string (proto3's JSON mapping): the value
/// `v` with each number turned into its text.
fn as_gateway_json(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), as_gateway_json(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(as_gateway_json).collect()),
        other => other.clone(),
    }
}

/// `etcd-http.toml` reads the same real statuses as `etcd.toml` in every saved state, in the shape its HTTP probe
/// prints them: each saved `endpoint status` body as the gateway writes it (integers as text; the same
/// `POST /v3/maintenance/status` behind etcdctl), one element per member in the endpoints' order, and a member
/// that was stopped as the connection error it gives. The same leader; a member that gave no answer is listed,
/// not in service and not caught up; the node probe reads `/health`'s answer, and a 503 is not up.
#[test]
fn the_etcd_http_profile_reads_the_real_statuses_as_its_http_probe_prints_them() {
    use serde_json::json;
    let p = profile("etcd-http");
    let nodes = etcd_nodes();
    let states = etcd_states();
    for (state, want) in states["states"].as_object().unwrap() {
        let saved: serde_json::Value =
            serde_json::from_str(&etcd_saved(state, "topology").stdout).unwrap();
        let stopped: Vec<&str> = want["stopped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let printed: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                match saved
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|m| m["Endpoint"] == n.address.as_str())
                {
                    Some(m) => json!({"endpoint": n.address, "status": 200, "body": as_gateway_json(&m["Status"])}),
                    None => json!({"endpoint": n.address, "error": "connect: Connection refused (os error 111)"}),
                }
            })
            .collect();
        assert_eq!(
            printed.iter().filter(|m| m.get("error").is_some()).count(),
            stopped.len(),
            "{state}"
        );
        let t = parse_topology(
            &p.probes.topology,
            &serde_json::Value::Array(printed).to_string(),
            &nodes,
        )
        .unwrap();
        assert_eq!(
            t.leaders(),
            [want["leader"].as_str().unwrap()],
            "{state}: {t:?}"
        );
        for n in &nodes {
            let m = t.member(&n.name).unwrap();
            let down = stopped.contains(&n.name.as_str());
            assert_eq!(m.in_service, !down, "{state}: {m:?}");
            assert_eq!(m.caught_up, Some(!down), "{state}: {m:?}");
        }
    }
    let up = |answer: serde_json::Value| {
        parse_node(&p.probes.node, &json!([answer]).to_string())
            .unwrap()
            .up
    };
    let address = "127.0.0.1:2379";
    for body in [
        json!({"health": "true"}),
        json!({"health": "true", "reason": ""}),
    ] {
        assert!(up(
            json!({"endpoint": address, "status": 200, "body": body})
        ));
    }
    assert!(!up(
        json!({"endpoint": address, "status": 503, "body": {"health": "false"}})
    ));
    assert!(!up(
        json!({"endpoint": address, "error": "no answer within 3000 ms"})
    ));
    let version = p.probes.running_version.as_ref().unwrap();
    let read = |body: serde_json::Value| {
        parse_version(
            version,
            &json!([{"endpoint": address, "status": 200, "body": body}]).to_string(),
        )
    };
    assert_eq!(
        read(json!({"etcdserver": "3.5.1", "etcdcluster": "3.5.0"})).unwrap(),
        "3.5.1"
    );
    assert!(read(json!({"etcdcluster": "3.5.0"})).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// Patroni: `topology.json` and `<m>.{node.json,version.txt,running_version.txt,package.txt}` per state; a
// probe that failed has its stderr and `# exit N` appended.

fn patroni_saved(state: &str, file: &str) -> Saved {
    let text =
        std::fs::read_to_string(repo().join("tests/fixtures/patroni").join(state).join(file))
            .unwrap();
    let exit = text
        .lines()
        .find_map(|l| l.strip_prefix("# exit "))
        .map_or(0, |code| code.trim().parse().unwrap());
    Saved { stdout: text, exit }
}

fn patroni_nodes() -> Vec<NodeSpec> {
    (1..=3)
        .map(|i| NodeSpec {
            name: format!("pg{i}"),
            address: format!("127.0.0.1:{}", 5430 + i),
            executor: format!("pg{i}"),
            vars: BTreeMap::new(),
        })
        .collect()
}

/// One state: the leader the topology shows, who it shows in service, whose node probe answers `up`, whether
/// failover is blocked (per the leader's REST API), and each node's installed version.
struct PatroniState {
    state: &'static str,
    topology: &'static str,
    leader: Option<&'static str>,
    in_service: [bool; 3],
    up: [Option<bool>; 3],
    blocked: bool,
    installed: [&'static str; 3],
}

const PATRONI: &[PatroniState] = &[
    PatroniState {
        state: "healthy",
        topology: "topology.json",
        leader: Some("pg1"),
        in_service: [true, true, true],
        up: [Some(true), Some(true), Some(true)],
        blocked: false,
        installed: ["15.18", "15.18", "15.18"],
    },
    PatroniState {
        state: "paused",
        topology: "topology.json",
        leader: Some("pg1"),
        in_service: [true, true, true],
        up: [Some(true), Some(true), Some(true)],
        blocked: true,
        installed: ["15.18", "15.18", "15.18"],
    },
    // Paused: a stopped member's DCS key lives on, so the topology still shows pg2 streaming; only its own
    // REST API (refused: curl exit 7, the probe is unavailable) shows it is gone.
    PatroniState {
        state: "stopped",
        topology: "topology.json",
        leader: Some("pg1"),
        in_service: [true, true, true],
        up: [Some(true), None, Some(true)],
        blocked: true,
        installed: ["15.18", "15.18", "15.18"],
    },
    PatroniState {
        state: "stopped-unpaused",
        topology: "topology.json",
        leader: Some("pg1"),
        in_service: [true, false, true],
        up: [Some(true), None, Some(true)],
        blocked: false,
        installed: ["15.18", "15.18", "15.18"],
    },
    PatroniState {
        state: "mixed",
        topology: "topology.json",
        leader: Some("pg1"),
        in_service: [true, true, true],
        up: [Some(true), Some(true), Some(true)],
        blocked: true,
        installed: ["15.18", "15.20", "15.18"],
    },
    PatroniState {
        state: "after-switchover",
        topology: "topology.json",
        leader: Some("pg2"),
        in_service: [true, true, true],
        up: [Some(true), Some(true), Some(true)],
        blocked: true,
        installed: ["15.18", "15.20", "15.20"],
    },
    // The moment the switchover returned: pg1 is stopped, and pg3 shows "running" (not streaming) on the old
    // timeline with lag 0, following no one: neither is in service yet.
    PatroniState {
        state: "after-switchover",
        topology: "topology-immediate.json",
        leader: Some("pg2"),
        in_service: [false, true, false],
        up: [Some(true), Some(true), Some(true)],
        blocked: true,
        installed: ["15.18", "15.20", "15.20"],
    },
];

/// Hostile review #6: a member a profile's topology shows out of service (Patroni's `stopped`, `starting`) is a
/// problem for the checks that wait for the cluster (WaitSynced, VerifyStable), not only one shown behind.
#[test]
fn a_member_the_topology_shows_out_of_service_is_a_standing_problem() {
    let p = profile("patroni");
    let nodes = patroni_nodes();
    for s in PATRONI {
        let saved = patroni_saved(s.state, s.topology);
        let t = parse_topology(
            &p.probes.topology,
            readable(&p.probes.topology, &saved).unwrap(),
            &nodes,
        )
        .unwrap();
        let problems = standing_problems(&t);
        for (i, n) in nodes.iter().enumerate() {
            let named = problems
                .iter()
                .any(|p| p.starts_with(&format!("{}:", n.name)));
            if !s.in_service[i] {
                assert!(
                    named,
                    "{} ({}): {} out of service: {problems:?}",
                    s.state, s.topology, n.name
                );
            }
        }
    }
    let saved = patroni_saved("stopped-unpaused", "topology.json");
    let t = parse_topology(
        &p.probes.topology,
        readable(&p.probes.topology, &saved).unwrap(),
        &nodes,
    )
    .unwrap();
    let problems = standing_problems(&t);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("pg2:") && p.contains("not in service")),
        "{problems:?}"
    );
}

#[test]
fn the_patroni_profile_reads_what_a_real_patroni_cluster_showed() {
    let p = profile("patroni");
    let nodes = patroni_nodes();
    let failover = p.probes.failover.as_ref().expect("the fence has a probe");
    for s in PATRONI {
        let what = format!("{} ({})", s.state, s.topology);
        let saved = patroni_saved(s.state, s.topology);
        let t: Topology = parse_topology(
            &p.probes.topology,
            readable(&p.probes.topology, &saved).unwrap(),
            &nodes,
        )
        .unwrap();
        assert_eq!(
            t.leaders(),
            s.leader.into_iter().collect::<Vec<_>>(),
            "{what}: {t:?}"
        );
        for (i, n) in nodes.iter().enumerate() {
            let m = t
                .member(&n.name)
                .unwrap_or_else(|| panic!("{what}: {} missing", n.name));
            assert_eq!(
                m.in_service, s.in_service[i],
                "{what}: {} in service: {m:?}",
                n.name
            );
            if m.role == MemberRole::Follower && m.in_service {
                assert_eq!(m.caught_up, Some(true), "{what}: {}", n.name);
            }
            let saved = patroni_saved(s.state, &format!("{}.node.json", n.name));
            let health: Option<NodeReading> = readable(&p.probes.node, &saved)
                .map(|text| parse_node(&p.probes.node, text).unwrap());
            assert_eq!(
                health.map(|h| h.up),
                s.up[i],
                "{what}: node probe of {}",
                n.name
            );
            if let Some(h) = health {
                // The primary is caught up by definition, a replica when it streams.
                assert_eq!(h.caught_up, Some(true), "{what}: {} {h:?}", n.name);
            }
            let saved = patroni_saved(s.state, &format!("{}.version.txt", n.name));
            let v = parse_version(
                &p.probes.version,
                readable(&p.probes.version, &saved).unwrap(),
            );
            assert_eq!(
                v.unwrap(),
                s.installed[i],
                "{what}: installed on {}",
                n.name
            );
            let saved = patroni_saved(s.state, &format!("{}.package.txt", n.name));
            let package = p.probes.package.as_ref().unwrap();
            assert_eq!(
                parse_version(package, readable(package, &saved).unwrap()).unwrap(),
                "15.20"
            );
        }
        let leader = s.leader.unwrap();
        let saved = patroni_saved(s.state, &format!("{leader}.node.json"));
        let blocked = parse_failover(failover, readable(failover, &saved).unwrap()).unwrap();
        assert_eq!(blocked, s.blocked, "{what}: failover blocked");
    }
    // The stopped member's running version is unavailable, not a guess.
    let running = p.probes.running_version.as_ref().unwrap();
    let saved = patroni_saved("stopped", "pg2.running_version.txt");
    assert!(readable(running, &saved).is_none());
    let saved = patroni_saved("mixed", "pg2.running_version.txt");
    assert_eq!(
        parse_version(running, readable(running, &saved).unwrap()).unwrap(),
        "15.20"
    );
}

/// Hostile review 8 #8, measured on the real cluster (tests/fixtures/patroni/leader-crashed-paused): under pause,
/// the leader's PostgreSQL killed, its Patroni (still running) releases the leader key, so the topology shows no
/// leader, while its own GET /patroni keeps `role: primary` with `state: stopped`. Nothing serves there: its word
/// must not be "leads" (it would keep the emergency exit's fence up beside no leader at all). A running primary,
/// and the wrapper's orphan primary (Patroni gone, a postmaster running), still lead; a replica does not.
#[test]
fn a_patroni_primary_whose_postgresql_crashed_under_pause_does_not_say_it_leads() {
    let p = profile("patroni");
    let read = |state: &str, file: &str| -> NodeReading {
        let saved = patroni_saved(state, file);
        parse_node(&p.probes.node, readable(&p.probes.node, &saved).unwrap()).unwrap()
    };
    let crashed = read("leader-crashed-paused", "pg1.node.json");
    assert_eq!(
        (crashed.up, crashed.leads),
        (false, Some(false)),
        "{crashed:?}"
    );
    let saved = patroni_saved("leader-crashed-paused", "topology.json");
    let t = parse_topology(&p.probes.topology, &saved.stdout, &patroni_nodes()).unwrap();
    assert!(t.leaders().is_empty(), "{t:?}");

    assert_eq!(read("paused", "pg1.node.json").leads, Some(true));
    assert_eq!(read("after-switchover", "pg2.node.json").leads, Some(true));
    assert_eq!(read("paused", "pg2.node.json").leads, Some(false));
    for orphan in [
        r#"{"state": "no patroni", "role": "primary", "source": "postgresql", "patroni": "curl exit 7"}"#,
        r#"{"state": "no patroni", "role": "primary", "source": "postmaster without standby.signal", "patroni": "curl exit 28"}"#,
    ] {
        let reading = parse_node(&p.probes.node, orphan).unwrap();
        assert_eq!((reading.up, reading.leads), (false, Some(true)), "{orphan}");
    }
}

/// Hostile review 14 (P3 for etcd, P2 for any fenced profile that reads an HTTP topology): when no member answers
/// the executor at all (its host cut off from the cluster, every member refused or silent), etcd.toml's topology
/// is unreadable (`ctl endpoint-status` prints `[]`, exit 1: "no members in the output"), so the look failed. The
/// HTTP probe prints every endpoint with its error and exits 1, the same code as for one member down, which
/// etcd-http.toml (like any HTTP topology that must read a partial answer) reads: a readable topology that shows
/// no leader. "The executor reached nobody" becomes "the cluster shows no leader", the input that starts the
/// emergency clock of a fenced profile (after which asks that fail the same way lift the fence). Fix: the HTTP
/// runner exits with its own code (2, say) when no endpoint gave any HTTP answer, so `read_exit_codes = [0, 1]`
/// does not read it (or the JSON topology parser refuses an output in which no member is in service).
#[test]
fn review14_the_etcd_http_topology_when_no_member_answers_is_unreadable_as_etcd_tomls_is() {
    let nodes = etcd_nodes();
    let etcd = profile("etcd");
    assert!(
        parse_topology(&etcd.probes.topology, "[]\n", &nodes).is_err(),
        "etcd.toml's topology with no member reached"
    );
    let http = profile("etcd-http");
    let nobody: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "endpoint": n.address,
                "error": "connect: Connection refused (os error 111)",
            })
        })
        .collect();
    let output = serde_json::Value::Array(nobody).to_string();
    let topology = &http.probes.topology;
    // The HTTP runner exits 2 when no endpoint gave any HTTP answer (executor/src/runner/http.rs, tested there).
    let read = topology
        .read_exit_codes
        .contains(&2)
        .then(|| parse_topology(topology, &output, &nodes));
    assert!(
        !matches!(read, Some(Ok(_))),
        "etcd-http.toml read an HTTP topology in which no member answered (exit 1) as a cluster: {read:?}"
    );
}

/// Hostile review 14 (P2, carried over from etcd.toml into etcd-http.toml): a member is named by the endpoint
/// that answered, never by who answered. When a member's address is answered by a member of another etcd cluster
/// (its host or port re-used after the member was moved, a copy-pasted endpoints var), that stranger is read as
/// the node: in service, a follower, caught up whenever its raft index is near ours; and the guard's node probe
/// of the node (GET /health on the same address) hears the stranger's "true" too. The guard would take out
/// another member while the real one is gone, and the cluster would lose its quorum. The answer says who it is
/// (`header.cluster_id`, `header.member_id`; the cluster file gives each node's `member_id`), but a profile has
/// no way to say "this field must be this node's var" or "every member must show the same cluster id". Fix: a
/// parse key binding a member's answer to its node (e.g. `member_id = "/body/header/member_id"` against
/// `{var.member_id}`) and one that the members agree on (`same_cluster = "/body/header/cluster_id"`), a member
/// failing either not in service; use them in both etcd profiles.
#[test]
fn review14_a_member_of_another_cluster_answering_at_a_members_address_is_not_taken_for_it() {
    let nodes = etcd_nodes();
    let http = profile("etcd-http");
    // etcd's gateway writes its u64s as decimal strings; the cluster file's member_id is hex.
    let id = |node: &NodeSpec| {
        u64::from_str_radix(&node.vars["member_id"], 16)
            .unwrap()
            .to_string()
    };
    let status = |cluster: &str, member: &str, leader: &str, index: u64| {
        serde_json::json!({
            "header": {"cluster_id": cluster, "member_id": member, "revision": "40", "raft_term": "2"},
            "version": "3.4.23", "dbSize": "20480", "leader": leader, "raftIndex": index.to_string(),
            "raftTerm": "2", "raftAppliedIndex": index.to_string(), "dbSizeInUse": "20480",
        })
    };
    let ours = "14841639068965178418";
    let (m1, m2) = (id(&nodes[0]), id(&nodes[1]));
    let output = serde_json::json!([
        {"endpoint": nodes[0].address, "status": 200, "body": status(ours, &m1, &m1, 5000)},
        {"endpoint": nodes[1].address, "status": 200, "body": status(ours, &m2, &m1, 5000)},
        // m3's address, answered by a follower of another cluster.
        {"endpoint": nodes[2].address, "status": 200,
         "body": status("999999999", "1234567890", "9876543210", 5040)},
    ])
    .to_string();
    let t = parse_topology(&http.probes.topology, &output, &nodes).unwrap();
    assert_eq!(t.sole_leader(), Some("m1"), "{t:?}");
    let m3 = t.member("m3").unwrap();
    assert!(
        !(m3.role == MemberRole::Follower && m3.in_service && m3.caught_up == Some(true)),
        "a member of another cluster (cluster_id 999999999, member_id 1234567890) answering at m3's address is \
         read as m3, an in-service caught-up follower: {m3:?}"
    );
}
