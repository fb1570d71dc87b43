//! A real 3-member etcd cluster on loopback (tests::real::etcd, docs/real-clusters.md), upgraded 3.4 -> 3.5 while
//! a client writes through etcd's own JSON gateway: by the manual baseline (a plain shell script), and by Baton
//! (a real nats-server, `baton server`, one `baton executor --cluster` per member running the profile file's
//! commands with the local runner), judged by the same checks from the members' own journals and the writer
//! (crate::real_baton, shared with real_patroni).

use tests::real::etcd::{EtcdCluster, TlsMember};

use crate::real_baton::{assert_rolled_leader_last, upgrade_with_baton};

/// The shipped etcd profiles: looks through etcdctl, and looks over etcd's HTTP gateway by the executor itself.
const PROFILES: [&str; 2] = ["etcd.toml", "etcd-http.toml"];

/// Every shipped etcd profile's probes, run for real against `cluster` (`baton profile check --run-here`), show
/// `leader` leading and `version` from each of `probes`.
fn assert_profiles_see(cluster: &EtcdCluster, leader: &str, version: &str, probes: &[&str]) {
    for profile in PROFILES {
        let seen =
            crate::profile::check_live(&crate::profile::shipped(profile), cluster.cluster_file());
        for leaders in crate::profile::leaders_seen(&seen) {
            assert_eq!(leaders, [leader], "{profile}: {seen:#}");
        }
        for probe in probes {
            for (node, seen_version) in crate::profile::observed(&seen, probe) {
                assert_eq!(
                    seen_version, version,
                    "{profile}: {probe} of {node}: {seen:#}"
                );
            }
        }
    }
}

#[test]
fn the_manual_baseline_upgrades_every_member_once_leader_last_and_loses_no_write() {
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    let (old, new) = (cluster.old_version(), cluster.new_version());
    for node in cluster.node_names() {
        assert_eq!(cluster.running_version(&node).unwrap(), old, "{node}");
    }
    let leader = cluster.leader().expect("a member leads");
    // The shipped profiles' probes, run for real (`baton profile check --run-here`; etcd-http's answered by
    // Baton's own HTTP client), see the same cluster.
    assert_profiles_see(&cluster, &leader, old, &["running_version"]);
    let since = tests::real::journal::after_last(&cluster.actions().unwrap());

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

    // The profiles' probes see the upgraded cluster: the new leader, the new version everywhere.
    assert_profiles_see(
        &cluster,
        &run.new_leader,
        new,
        &["version", "running_version"],
    );
    // Every member runs, and has installed, the new version.
    for node in cluster.node_names() {
        assert_eq!(cluster.running_version(&node).unwrap(), new, "{node} runs");
        assert_eq!(cluster.installed_version(&node).unwrap(), new, "{node} has");
    }
    // From the members' own journals: each was stopped, switched to the new version and started exactly once, in
    // that order, the leader last; leadership had moved to an upgraded member.
    let actions = cluster.actions().unwrap();
    assert_rolled_leader_last(&actions, since, new, &leader);
    assert_eq!(run.old_leader, leader);
    assert_eq!(run.order.last(), Some(&leader), "{:?}", run.order);
    assert_ne!(run.new_leader, leader);
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

#[tokio::test(flavor = "multi_thread")]
async fn baton_upgrades_the_real_cluster_every_member_once_leader_last_and_loses_no_write() {
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    upgrade_and_check_the_switchover(&cluster).await;
}

/// Upgrades `cluster` with Baton (`upgrade_with_baton`'s checks), then checks that the plan's move-leader named
/// the target's member ID (etcd moves leadership by member ID).
async fn upgrade_and_check_the_switchover(cluster: &EtcdCluster) {
    let run = upgrade_with_baton(cluster).await;
    let target_id = &cluster.node(&run.target).unwrap().member_id;
    assert!(
        run.switchover_line
            .contains(&format!("move-leader {target_id}`")),
        "{}",
        run.switchover_line
    );
}

/// The same upgrade with the profile whose looks are HTTP requests the executor makes itself (etcd-http.toml):
/// the same checks, and the same plan but for the probes.
#[tokio::test(flavor = "multi_thread")]
async fn baton_upgrades_the_real_cluster_through_the_http_profile_every_member_once_leader_last_and_loses_no_write(
) {
    let cluster = EtcdCluster::start()
        .and_then(|c| c.with_profile("etcd-http.toml"))
        .expect("the etcd cluster starts");
    upgrade_and_check_the_switchover(&cluster).await;
}

/// The members the profile's topology probe (`ctl endpoint-status ENDPOINTS`, run as the profile renders it) lists,
/// its exit code and how long it took.
fn topology_probe(cluster: &EtcdCluster) -> (Vec<String>, Option<i32>, std::time::Duration) {
    topology_probe_of(cluster, cluster.endpoints())
}

/// The same with the endpoints given.
fn topology_probe_of(
    cluster: &EtcdCluster,
    endpoints: &str,
) -> (Vec<String>, Option<i32>, std::time::Duration) {
    let ctl = &cluster.node("m1").unwrap().ctl;
    let started = std::time::Instant::now();
    let out = std::process::Command::new(ctl)
        .args(["endpoint-status", endpoints])
        .output()
        .expect("ctl runs");
    let took = started.elapsed();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let endpoints = listed
        .as_array()
        .expect("an array of members")
        .iter()
        .map(|m| m["Endpoint"].as_str().expect("an Endpoint").to_string())
        .collect();
    (endpoints, out.status.code(), took)
}

/// A loopback port whose connections never complete: a listener that accepts nothing, its accept queue filled
/// until a connection attempt times out (the kernel then drops SYNs). Keep the streams alive while it is used.
fn silent_port() -> (u16, (std::net::TcpListener, Vec<std::net::TcpStream>)) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queue = Vec::new();
    loop {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            Ok(stream) => queue.push(stream),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("connecting to {addr}: {e}"),
        }
        assert!(
            queue.len() < 100_000,
            "the accept queue of {addr} never filled"
        );
    }
    (addr.port(), (listener, queue))
}

/// The processes whose command line contains `needle` (pid and command line).
fn processes_naming(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

/// SIGCONT for a member stopped with SIGSTOP, also when the test fails.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

/// The topology probe skips a member whose port refuses connections at once, where etcdctl alone waits out its whole
/// command timeout (1 s) for it: the guard asks the topology six times per upgrade while a member is out. It still
/// fails closed on a member that takes connections but does not answer (its process stopped with SIGSTOP: hung):
/// left out after etcdctl's own timeout, exit 1, so the guard reads it as not in service.
#[test]
fn the_topology_probe_leaves_out_a_stopped_member_at_once_and_a_hung_one_after_its_timeout() {
    let cluster = EtcdCluster::start().expect("the etcd cluster starts");
    let all: Vec<String> = cluster.endpoints().split(',').map(String::from).collect();
    let (listed, code, _) = topology_probe(&cluster);
    assert_eq!((listed, code), (all.clone(), Some(0)));
    // etcdctl's other endpoint forms: a URL is checked on its host and port and passed on as given; an IPv6
    // address in brackets is tried too (the members listen on 127.0.0.1 only: refused, left out at once), and
    // an endpoint that is no HOST:PORT at all is left out, never passed to etcdctl.
    let urls: Vec<String> = all.iter().map(|e| format!("http://{e}")).collect();
    let port = all[0].rsplit(':').next().unwrap();
    let given = format!("{},[::1]:{port},bogus", urls.join(","));
    let (listed, code, took) = topology_probe_of(&cluster, &given);
    assert_eq!((listed, code), (urls, Some(1)), "{given}");
    assert!(took < std::time::Duration::from_millis(1000), "{took:?}");

    // A port whose connections never complete (a host that drops packets): a listener whose accept queue is
    // full, so the kernel drops further SYNs. Left out after the check's 1 s, the others still listed, and the
    // subshell still in connect() killed, not left behind (it carries the probe's argv, so the port names it).
    let (silent, _queue) = silent_port();
    let given = format!("{},127.0.0.1:{silent}", cluster.endpoints());
    let (listed, code, took) = topology_probe_of(&cluster, &given);
    assert_eq!((listed, code), (all.clone(), Some(1)), "{given}");
    assert!(
        took >= std::time::Duration::from_millis(1000)
            && took < std::time::Duration::from_millis(5000),
        "{took:?}: the connection check's 1 s, then etcdctl"
    );
    let left = processes_naming(&format!("127.0.0.1:{silent}"));
    assert!(left.is_empty(), "left behind: {left:?}");

    let m3 = cluster.node("m3").unwrap();
    let stop = std::process::Command::new(&m3.ctl)
        .arg("stop")
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    let (listed, code, took) = topology_probe(&cluster);
    assert_eq!((listed, code), (all[..2].to_vec(), Some(1)));
    assert!(
        took < std::time::Duration::from_millis(1000),
        "a stopped member cost {took:?}: as much as etcdctl's command timeout"
    );
    println!("topology probe with a stopped member: {took:?}");

    let start = std::process::Command::new(&m3.ctl)
        .arg("start")
        .output()
        .unwrap();
    assert!(start.status.success(), "{start:?}");
    assert_eq!(topology_probe(&cluster).0, all);
    let pid: u32 = std::fs::read_to_string(m3.dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let paused = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(paused.success());
    let resume = Resume(pid);
    let (listed, code, took) = topology_probe(&cluster);
    drop(resume);
    assert_eq!((listed, code), (all[..2].to_vec(), Some(1)));
    assert!(
        took >= std::time::Duration::from_millis(1000),
        "{took:?}: etcdctl's 1 s timeout for the hung member"
    );
    println!("topology probe with a hung member: {took:?}");
}

/// The shipped etcd-http profile with TLS added to each of its three `http` tables (`ca_file` always, `cert_file`
/// and `key_file` when `client_cert`), as node vars of the cluster file; its version probe reads `{var.etcd}
/// --version` (the member of [`TlsMember`] has no `ctl`). Panics if the shipped profile no longer has what it
/// rewrites.
fn etcd_http_over_tls(client_cert: bool) -> String {
    let shipped = std::fs::read_to_string(crate::profile::shipped("etcd-http.toml")).unwrap();
    let mut tls = String::from("ca_file = \"{var.etcd_ca}\"\n");
    if client_cert {
        tls.push_str("cert_file = \"{var.etcd_cert}\"\nkey_file = \"{var.etcd_key}\"\n");
    }
    let mut text = shipped;
    for probe in ["topology", "node", "running_version"] {
        let table = format!("[probes.{probe}.http]\n");
        assert_eq!(text.matches(&table).count(), 1, "etcd-http.toml: {table}");
        text = text.replace(&table, &format!("{table}{tls}"));
    }
    let version = "argv = [\"{var.ctl}\", \"installed-version\"]\n";
    assert_eq!(
        text.matches(version).count(),
        1,
        "etcd-http.toml: {version}"
    );
    text.replace(version, "argv = [\"{var.etcd}\", \"--version\"]\n")
}

/// A cluster file `name` (in the member's directory) of the one member of `member`, naming `profile`; its node
/// vars: the member's etcd, its endpoint as `https://`, `ca` as the CA to trust and the member's client
/// certificate and key.
fn tls_cluster_file(
    member: &TlsMember,
    name: &str,
    profile: &std::path::Path,
    ca: &std::path::Path,
) -> std::path::PathBuf {
    let tls = member.tls();
    let text = format!(
        "[cluster]\nname = \"etcd-tls\"\nprofile = \"{profile}\"\n\n[[nodes]]\nname = \"m1\"\naddress = \"{address}\"\n\
         executor = \"m1\"\nvars = {{ etcd = \"{etcd}\", endpoints = \"https://{address}\", etcd_ca = \"{ca}\", \
         etcd_cert = \"{cert}\", etcd_key = \"{key}\", member_id = \"{id}\" }}\n",
        id = member.member_id().expect("the member's ID"),
        profile = profile.display(),
        address = member.address(),
        etcd = member.package().join("bin/etcd").display(),
        ca = ca.display(),
        cert = tls.client_cert.display(),
        key = tls.client_key.display(),
    );
    let path = member.root().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// The errors of the probes that gave no observation: (probe, error).
fn probe_errors(report: &serde_json::Value) -> Vec<(String, String)> {
    report["probes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            p["error"]
                .as_str()
                .map(|e| (p["probe"].as_str().unwrap().to_string(), e.to_string()))
        })
        .collect()
}

/// etcd-http's HTTP probes over TLS against a real etcd member that serves its clients over TLS only and asks
/// for a client certificate (`--client-cert-auth`): with the CA and the client certificate, `baton profile check
/// --run-here` sees it leading and in service, up, running the old version; without the client certificate, or
/// trusting another CA, it fails closed: the executor reaches nobody, so the topology is unreadable (exit 2), the
/// node not up, no running version (exit 5), each error naming the TLS failure.
#[test]
fn the_http_profile_sees_a_real_tls_member_and_fails_closed_without_its_client_certificate_or_ca() {
    let member = TlsMember::start().expect("the TLS etcd member starts");
    let dir = member.root();
    let with_cert = dir.join("etcd-http-tls.toml");
    std::fs::write(&with_cert, etcd_http_over_tls(true)).unwrap();
    let cluster_file = tls_cluster_file(&member, "cluster.toml", &with_cert, &member.tls().ca);

    let seen = crate::profile::check_live(&with_cert, &cluster_file);
    assert_eq!(
        crate::profile::leaders_seen(&seen),
        [["m1"]],
        "the member leads and is in service: {seen:#}"
    );
    let topology = crate::profile::observed(&seen, "topology");
    assert_eq!(topology[0].1["members"][0]["caught_up"], true, "{seen:#}");
    let up = crate::profile::observed(&seen, "node");
    assert_eq!(up.len(), 1, "{seen:#}");
    assert_eq!(up[0].1["up"], true, "{seen:#}");
    for probe in ["version", "running_version"] {
        assert_eq!(
            crate::profile::observed(&seen, probe),
            [("m1".to_string(), serde_json::json!(member.version()))],
            "{probe}: {seen:#}"
        );
    }
    // Asked as the executor asks (`baton:https`: over TLS), with the CA and the client certificate.
    for p in seen["probes"].as_array().unwrap() {
        if p["probe"] == "version" {
            continue;
        }
        let argv: Vec<&str> = p["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let tls = member.tls();
        assert_eq!(argv[0], "baton:https", "{p:#}");
        assert_eq!(
            argv[6..],
            [
                tls.ca.to_str().unwrap(),
                tls.client_cert.to_str().unwrap(),
                tls.client_key.to_str().unwrap()
            ],
            "{p:#}"
        );
    }
    println!("over TLS with a client certificate: {seen:#}");

    // Fails closed: the executor reached nobody, so the topology is unreadable (exit 2: never read as a cluster
    // with no leader), the node is not up, and there is no running version; each error names `why`.
    let fails_closed = |profile: &std::path::Path, cluster_file: &std::path::Path, why: &[&str]| {
        let (code, report) = crate::profile::check_report(profile, cluster_file);
        assert_eq!(code, Some(5), "{report:#}");
        for (_, node) in crate::profile::observed(&report, "node") {
            assert_eq!(node["up"], false, "{report:#}");
        }
        let errors = probe_errors(&report);
        let failed: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(failed, ["topology", "running_version"], "{report:#}");
        for (probe, error) in &errors {
            assert!(
                error.contains("exit code 2"),
                "{probe}: {error:?}: the executor reached nobody"
            );
            assert!(
                why.iter()
                    .any(|w| error.to_lowercase().contains(&w.to_lowercase())),
                "{probe}: {error:?} names none of {why:?}"
            );
        }
        report
    };

    // Without the client certificate etcd asks for. Over TLS 1.3 the client's handshake ends before the server
    // has checked its certificate: etcd's refusal (alert 42, bad certificate) comes with the first read or write,
    // and the error must still name it, not only a broken connection.
    let without_cert = dir.join("etcd-http-tls-no-client-cert.toml");
    std::fs::write(&without_cert, etcd_http_over_tls(false)).unwrap();
    let no_cert = tls_cluster_file(
        &member,
        "cluster-no-cert.toml",
        &without_cert,
        &member.tls().ca,
    );
    let report = fails_closed(&without_cert, &no_cert, &["certificate"]);
    println!("without a client certificate: {report:#}");

    // Trusting another CA than the one that signed the member's certificate.
    let other_dir = dir.join("other-ca");
    std::fs::create_dir(&other_dir).unwrap();
    let other = protocol::devtls::make(&other_dir, &[]).unwrap().server;
    let wrong_ca = tls_cluster_file(&member, "cluster-other-ca.toml", &with_cert, &other.ca);
    let report = fails_closed(
        &with_cert,
        &wrong_ca,
        &["TLS: invalid peer certificate: UnknownIssuer"],
    );
    println!("trusting another CA: {report:#}");
}
