//! End to end: a real nats-server, real `baton server` and `baton executor`
//! processes, the `baton` CLI as an operator runs it, and the simulator as
//! the cluster. The simulator's report (computed from its own journal) is the
//! judge of safety; the log is checked through `baton replay` and `baton audit`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use nix::sys::signal::Signal;
use sim::report::Rule;
use sim::{Report, Verdict};
use tempfile::TempDir;
use tests::{workspace_bin, NatsServer, Proc};
use workflow::core::Event;
use workflow::service::api::StatusView;

pub(crate) const TARGET: &str = "3.1.0-1";
const FROM: &str = "3.0.0-1";
/// Generous: CI machines are slow and the tests run two at a time.
pub(crate) const UPGRADE_TIMEOUT: Duration = Duration::from_secs(120);

/// How a test cluster is set up.
pub(crate) struct Setup {
    pub(crate) nodes: usize,
    pub(crate) procedure: &'static str,
    /// `--fault NODE:KIND` values for `baton-sim init`.
    pub(crate) faults: Vec<&'static str>,
    pub(crate) sync_ms: u64,
    /// How long the core waits for a node to be healthy and synced.
    pub(crate) sync_timeout_ms: u64,
    /// Connect the service and the executors to NATS through a [`Proxy`]
    /// (network faults); the operator's CLI connects directly.
    pub(crate) through_proxy: bool,
    /// Where the service's log lives (default: the test's temp dir).
    pub(crate) db: Option<PathBuf>,
    /// The version the cluster runs at first.
    pub(crate) from: &'static str,
    /// The version of the package file (and the target).
    pub(crate) target: &'static str,
    /// The simulator's election delay.
    pub(crate) election_ms: u64,
    /// Run nats-server with authentication and TLS (the shipped least-privilege
    /// configuration); off, every process still signs and verifies.
    pub(crate) nats_auth: bool,
    /// Give the service and each executor an `--http` listener (`metrics::`).
    pub(crate) http: bool,
    /// More than one: a NATS cluster of this many servers (`tests::NatsCluster`,
    /// without authentication), every process given all their URLs.
    pub(crate) nats_servers: usize,
    /// The service's `--nats-replicas`.
    pub(crate) nats_replicas: usize,
    /// Of a NATS cluster, how many servers start only once the service has
    /// said JetStream is not usable yet (a cluster still forming).
    pub(crate) nats_late: usize,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            nodes: 3,
            procedure: "runbook",
            faults: Vec::new(),
            sync_ms: 300,
            sync_timeout_ms: 60_000,
            through_proxy: false,
            db: None,
            from: FROM,
            target: TARGET,
            election_ms: 300,
            nats_auth: true,
            http: false,
            nats_servers: 1,
            nats_replicas: 1,
            nats_late: 0,
        }
    }
}

/// A loopback address whose port was free a moment ago (the OS picks it).
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
}

/// Executor groups beyond the nodes' that every test deployment has keys for
/// (a second cluster's, in `upgrades_of_two_clusters_run_at_the_same_time`).
pub(crate) const EXTRA_GROUPS: [&str; 3] = ["other-1", "other-2", "other-3"];

/// One simulated cluster with its NATS, workflow service and executors.
pub(crate) struct Env {
    /// The NATS server (of a cluster, the first).
    pub(crate) nats: NatsServer,
    /// The cluster's other servers (`Setup::nats_servers`).
    pub(crate) nats_peers: Vec<NatsServer>,
    /// The service's `--nats-replicas`.
    pub(crate) nats_replicas: usize,
    /// The deployment's keys, trust file and TLS files.
    pub(crate) secure: tests::Secure,
    /// Whether nats-server runs with authentication and TLS.
    pub(crate) nats_auth: bool,
    pub(crate) dir: TempDir,
    pub(crate) sim_dir: PathBuf,
    pub(crate) cluster_file: PathBuf,
    pub(crate) nodes: Vec<String>,
    pub(crate) server: Option<Proc>,
    pub(crate) executors: Vec<Proc>,
    pub(crate) server_starts: u32,
    pub(crate) proxy: Option<tests::Proxy>,
    pub(crate) db: PathBuf,
    /// The version the package file names.
    pub(crate) target: String,
    /// The procedure of the cluster file; executors are started with the same profile.
    pub(crate) procedure: &'static str,
    /// With `Setup::http`: the service's `--http` address, and each node's executor's.
    pub(crate) http: Option<(std::net::SocketAddr, Vec<std::net::SocketAddr>)>,
}

impl Env {
    pub(crate) async fn start(setup: Setup) -> Env {
        let mut groups: Vec<String> = (1..=setup.nodes).map(|i| format!("backend-{i}")).collect();
        groups.extend(EXTRA_GROUPS.iter().map(|g| g.to_string()));
        let group_refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        let secure = tests::Secure::new(&group_refs).expect("keys and certificates");
        let (nats, nats_peers) = if setup.nats_servers > 1 {
            assert!(
                !setup.nats_auth,
                "the test NATS cluster runs without authentication"
            );
            let up = setup.nats_servers - setup.nats_late;
            let mut servers = tests::NatsCluster::start_partly(setup.nats_servers, up)
                .await
                .expect("the NATS cluster starts")
                .into_servers();
            (servers.remove(0), servers)
        } else if setup.nats_auth {
            let nats = NatsServer::start_secured(&secure).await;
            (nats.expect("nats-server starts"), Vec::new())
        } else {
            (
                NatsServer::start().await.expect("nats-server starts"),
                Vec::new(),
            )
        };
        let proxy = if setup.through_proxy {
            let upstream = ([127, 0, 0, 1], nats.port()).into();
            Some(
                tests::Proxy::start(upstream)
                    .await
                    .expect("the proxy starts"),
            )
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("baton-e2e-")
            .tempdir()
            .unwrap();
        let sim_dir = dir.path().join("sim");
        let mut init = Command::new(workspace_bin("baton-sim"));
        init.args(["init", "--dir"])
            .arg(&sim_dir)
            .args(["--nodes", &setup.nodes.to_string(), "--version", setup.from])
            .args([
                "--sync-ms",
                &setup.sync_ms.to_string(),
                "--election-ms",
                &setup.election_ms.to_string(),
                "--demote-timeout-ms",
                "2000",
            ]);
        for fault in &setup.faults {
            init.args(["--fault", fault]);
        }
        let out = init.output().unwrap();
        assert!(
            out.status.success(),
            "baton-sim init: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let package = dir
            .path()
            .join(format!("chef-backend_{}_amd64.deb", setup.target));
        std::fs::write(&package, b"package").unwrap();
        let nodes: Vec<String> = (1..=setup.nodes).map(|i| format!("backend-{i}")).collect();
        let mut toml = String::from("[cluster]\nname = \"e2e\"\nprofile = \"chef-backend\"\n\n");
        for (i, node) in nodes.iter().enumerate() {
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{node}\"\naddress = \"10.0.0.{}\"\nexecutor = \"{node}\"\n\n",
                i + 1
            ));
        }
        toml.push_str(&format!(
            "[upgrade]\npackage = \"{}\"\ninstaller = \"dpkg\"\nprocedure = \"{}\"\npoll_interval_ms = 100\nsync_timeout_ms = {}\nbackoff_ms = 100\nelection_window_ms = 500\n",
            package.display(),
            setup.procedure,
            setup.sync_timeout_ms
        ));
        let cluster_file = dir.path().join("cluster.toml");
        std::fs::write(&cluster_file, toml).unwrap();

        let db = setup
            .db
            .clone()
            .unwrap_or_else(|| dir.path().join("baton.db"));
        let mut env = Env {
            nats,
            nats_peers,
            nats_replicas: setup.nats_replicas,
            secure,
            nats_auth: setup.nats_auth,
            dir,
            sim_dir,
            cluster_file,
            nodes,
            server: None,
            executors: Vec::new(),
            server_starts: 0,
            proxy,
            db,
            target: setup.target.to_string(),
            procedure: setup.procedure,
            http: setup
                .http
                .then(|| (free_addr(), (0..setup.nodes).map(|_| free_addr()).collect())),
        };
        env.start_server();
        for index in 0..env.nodes.len() {
            let executor = env.spawn_executor(index, "executor");
            env.executors.push(executor);
        }
        if setup.nats_late > 0 {
            env.start_late_nats_servers().await;
        }
        env.wait_for_executors().await;
        env
    }

    /// Once the service has said JetStream is not usable yet, start the
    /// cluster's servers that were left down (`Setup::nats_late`).
    async fn start_late_nats_servers(&mut self) {
        let waiting = tests::wait_until(Duration::from_secs(60), || {
            let log = self.server.as_ref().map(Proc::log).unwrap_or_default();
            log.contains("JetStream is not usable yet")
        })
        .await;
        assert!(
            waiting,
            "the service never said it waits for JetStream\n{}",
            self.logs()
        );
        for server in self.nats_peers.iter_mut().filter(|s| !s.is_running()) {
            server
                .start_again()
                .await
                .expect("a late cluster member starts");
        }
    }

    /// The `baton` CLI as operator alice (an approver), straight to NATS.
    pub(crate) fn baton_cmd(&self) -> Command {
        self.baton_cmd_as(&self.secure.operator_keys["alice"])
    }

    /// The `baton` CLI (or a service, an executor) with `key` for signing and,
    /// when nats-server has auth on, for NATS (with TLS).
    pub(crate) fn baton_cmd_as(&self, key: &Path) -> Command {
        let mut cmd = Command::new(workspace_bin("baton"));
        cmd.env("BATON_NATS_URL", self.nats_urls())
            .env_remove("BATON_OUTPUT");
        for (name, value) in self.key_env(key) {
            cmd.env(name, value);
        }
        cmd
    }

    /// The environment that makes a process use `key`.
    pub(crate) fn key_env(&self, key: &Path) -> Vec<(String, String)> {
        if self.nats_auth {
            self.secure.env_for(key)
        } else {
            self.secure.env_signing_only(key)
        }
    }

    /// The seed file of the executor of `group`.
    pub(crate) fn executor_key(&self, group: &str) -> PathBuf {
        self.secure.executor_keys[group].clone()
    }

    /// SIGKILLs the workflow service and waits for it to die (a crash: nothing is flushed or released).
    pub(crate) fn kill_server(&mut self) {
        let server = self.server.as_mut().expect("a service runs");
        server.signal(Signal::SIGKILL);
        server
            .wait_exit(Duration::from_secs(10))
            .expect("the service died");
    }

    /// A deployment whose upgrade was in flight, backend-2 installed (the first follower syncing), when its service
    /// was SIGKILLed; returns it and the upgrade's id. Without `nats_auth`, a test may change the streams.
    pub(crate) async fn killed_mid_upgrade(nats_auth: bool) -> (Env, String) {
        let mut env = Env::start(Setup {
            nats_auth,
            sync_ms: 800,
            ..Setup::default()
        })
        .await;
        let upgrade = env.submit(&[]);
        env.wait_installed("backend-2").await;
        env.kill_server();
        (env, upgrade)
    }

    pub(crate) fn start_server(&mut self) {
        self.start_server_with(&[]);
    }

    /// Starts the service with `extra` flags after the usual ones; its log is `server-<start>.log`.
    pub(crate) fn start_server_with(&mut self, extra: &[&str]) {
        self.start_server_with_env(extra, &[]);
    }

    /// [`Env::start_server_with`], with `env` set for the service too (e.g. `RUST_LOG`).
    pub(crate) fn start_server_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) {
        self.server_starts += 1;
        let mut cmd = self.baton_cmd_as(&self.secure.service_key.clone());
        cmd.args(["server", "--db"])
            .arg(self.db())
            .args(["--nats-replicas", &self.nats_replicas.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .env("BATON_NATS_URL", self.service_url());
        if let Some((addr, _)) = &self.http {
            cmd.arg("--http").arg(addr.to_string());
        }
        let log = self
            .dir
            .path()
            .join(format!("server-{}.log", self.server_starts));
        self.server = Some(Proc::spawn("baton server", cmd, &log).unwrap());
    }

    /// The NATS URL of the service and the executors (through the proxy if any).
    pub(crate) fn service_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => proxy.url(),
            None => self.nats_urls(),
        }
    }

    /// Every NATS server's URL, comma-separated.
    pub(crate) fn nats_urls(&self) -> String {
        std::iter::once(&self.nats)
            .chain(&self.nats_peers)
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub(crate) fn db(&self) -> PathBuf {
        self.db.clone()
    }

    /// Runs the CLI; returns its output.
    pub(crate) fn baton(&self, args: &[&str]) -> Output {
        self.baton_cmd().args(args).output().expect("baton runs")
    }

    /// Runs the CLI and expects success; returns stdout.
    pub(crate) fn baton_ok(&self, args: &[&str]) -> String {
        stdout_of_success(args, self.baton(args), || self.logs())
    }

    pub(crate) fn logs(&self) -> String {
        let mut text = String::new();
        if let Some(server) = &self.server {
            text.push_str(&format!(
                "--- server log ---\n{}\n",
                tail(&server.log(), 40)
            ));
        }
        for (index, executor) in self.executors.iter().enumerate() {
            text.push_str(&format!(
                "--- executor {} log ---\n{}\n",
                self.nodes.get(index).map_or("?", String::as_str),
                tail(&executor.log(), 15)
            ));
        }
        text
    }

    /// Waits until the service answers and every node's executor is present.
    pub(crate) async fn wait_for_executors(&self) {
        self.wait_for_groups(&self.nodes).await;
    }

    /// Waits until the service answers and shows a live executor for every
    /// group in `groups` (the demo's groups are the node names).
    pub(crate) async fn wait_for_groups(&self, groups: &[String]) {
        // A NATS cluster that has just formed elects a leader for each replicated stream and bucket before
        // executors can bind and report presence: give it longer (2 of about 55 clustered starts took more
        // than 30 s on the loaded 2-core machine; none of the single-server starts did; one took more than 90 s at
        // load 10, beside two helpers' builds).
        let limit = if self.nats_peers.is_empty() { 30 } else { 150 };
        let online = tests::wait_until(Duration::from_secs(limit), || {
            let out = self.baton(&["--output", "json", "--api-timeout", "2", "executors"]);
            let online = online_groups(&out.stdout);
            groups.iter().all(|g| online.contains(g))
        })
        .await;
        assert!(
            online,
            "the service or the executors of {groups:?} did not come up\n{}",
            self.logs()
        );
    }

    /// A second simulated cluster ("other", groups other-N, its simulator's sync taking `sync_ms`) beside this
    /// one, with its three executors (owned by the returned `Proc`s) online. Answers its cluster file and
    /// simulator dir.
    pub(crate) async fn other_cluster(&self, sync_ms: u64) -> (PathBuf, PathBuf, Vec<Proc>) {
        let other = self.dir.path().join("other");
        let out = Command::new(workspace_bin("baton-sim"))
            .args(["init", "--dir"])
            .arg(&other)
            .args(["--nodes", "3", "--version", FROM])
            .args(["--sync-ms", &sync_ms.to_string(), "--election-ms", "300"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton-sim init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut executors = Vec::new();
        let mut toml = String::from("[cluster]\nname = \"other\"\nprofile = \"chef-backend\"\n\n");
        for i in 1..=3 {
            let node = format!("backend-{i}");
            let group = format!("other-{i}");
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{node}\"\naddress = \"10.0.1.{i}\"\nexecutor = \"{group}\"\n\n"
            ));
            let mut cmd = self.baton_cmd_as(&self.executor_key(&group));
            cmd.args(["executor", "--group", &group, "--nodes", &node])
                .args(["--heartbeat-ms", "500"])
                .arg("--state-dir")
                .arg(other.join("executors").join(&group))
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        other.join("nodes").join(&node).join("bin").display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                );
            let log = other.join(format!("executor-{group}.log"));
            executors.push(Proc::spawn(&group, cmd, &log).unwrap());
        }
        let package = self
            .dir
            .path()
            .join(format!("chef-backend_{TARGET}_amd64.deb"));
        toml.push_str(&format!(
            "[upgrade]\npackage = \"{}\"\npoll_interval_ms = 100\nsync_timeout_ms = 60000\nelection_window_ms = 500\n",
            package.display()
        ));
        let file = other.join("cluster.toml");
        std::fs::write(&file, toml).unwrap();
        let groups: Vec<String> = (1..=3).map(|i| format!("other-{i}")).collect();
        self.wait_for_groups(&groups).await;
        (file, other, executors)
    }

    pub(crate) fn submit(&self, extra: &[&str]) -> String {
        let cluster = self.cluster_file.display().to_string();
        let mut args = vec!["submit", "--cluster", &cluster, "--detach"];
        args.extend_from_slice(extra);
        self.baton_ok(&args).trim().to_string()
    }

    pub(crate) fn status(&self, upgrade: &str) -> Option<StatusView> {
        let out = self.baton(&["--output", "json", "status", upgrade]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the upgrade's status is one of `wanted`; panics with the
    /// status and the logs otherwise.
    pub(crate) async fn wait_status(
        &self,
        upgrade: &str,
        wanted: &[&str],
        timeout: Duration,
    ) -> StatusView {
        let mut last = None;
        let reached = tests::wait_until(timeout, || {
            last = self.status(upgrade);
            last.as_ref()
                .is_some_and(|v| wanted.contains(&v.status.as_str()))
        })
        .await;
        assert!(
            reached,
            "upgrade {upgrade} did not reach {wanted:?}; last status: {last:#?}\n{}",
            self.logs()
        );
        last.unwrap()
    }

    /// The upgrade's events, decoded, through `baton replay --json`.
    pub(crate) fn events(&self, upgrade: &str) -> Vec<Event> {
        events_of(&self.baton_ok(&["replay", upgrade, "--json"]))
    }

    pub(crate) fn report(&self) -> Report {
        let out = Command::new(workspace_bin("baton-sim"))
            .args(["report", "--json", "--dir"])
            .arg(&self.sim_dir)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "baton-sim report: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// Waits until the simulator has installed the package on `node`.
    pub(crate) async fn wait_installed(&self, node: &str) {
        let installed = tests::wait_until(UPGRADE_TIMEOUT, || {
            self.report().installs.get(node).copied() == Some(1)
        })
        .await;
        assert!(installed, "{node} was never installed\n{}", self.logs());
    }

    /// seq -> chain hash of every event of `upgrade` in the log.
    pub(crate) fn logged_hashes(&self, upgrade: &str) -> std::collections::HashMap<u64, String> {
        let out = self.baton_ok(&["replay", upgrade, "--json"]);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        value["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap(),
                    e["hash"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Whether `chef-backend-ctl status` on `node` says its services run
    /// (the simulator exits non-zero for a stopped node).
    pub(crate) fn node_runs(&self, node: &str) -> bool {
        Command::new("chef-backend-ctl")
            .arg("status")
            .env("PATH", self.node_path(node))
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    pub(crate) fn failover_on(&self) -> bool {
        self.report().failover_at_end
    }

    /// Checks everything a completed upgrade must show.
    pub(crate) fn assert_completed_safely(&self, upgrade: &str) {
        let report = self.report();
        assert_eq!(
            report.verdict,
            Verdict::Safe,
            "simulator says unsafe: {}",
            report.render()
        );
        for node in &self.nodes {
            let versions = &report.versions[node];
            assert_eq!(
                versions.running, self.target,
                "{node} runs {}",
                versions.running
            );
            assert_eq!(
                report.installs.get(node).copied(),
                Some(1),
                "{node} installed once"
            );
        }
        assert!(report.failover_at_end, "failover left off");
        assert!(
            report.flags.is_empty(),
            "completed with an unfinished end state: {}",
            report.render()
        );
        assert_eq!(
            report.downtime.outside_election_ms,
            0,
            "{}",
            report.render()
        );
        // The switchover's own re-syncs (the deposed leader and the
        // followers re-syncing from the new leader) are its price.
        assert!(
            report.max_out_of_service_outside_switchover <= 1,
            "{}",
            report.render()
        );
        self.assert_log_verifies(upgrade);
    }

    /// Waits for the upgrade to end and checks it completed safely.
    pub(crate) async fn expect_completed_safely(&self, upgrade: &str) {
        let view = self
            .wait_status(
                upgrade,
                &["completed", "halted", "aborted", "needs_verification"],
                UPGRADE_TIMEOUT,
            )
            .await;
        assert_eq!(view.status, "completed", "{view:#?}\n{}", self.logs());
        assert!(!view.failover_blocked, "{view:#?}");
        // The operator's view is the cluster as last seen, not the plan's
        // picture: one leader, not the one before the switchover; every node
        // at the target (issue 14's "stale truth").
        let old_leader = view
            .plan
            .as_ref()
            .and_then(|p| p["leader"].as_str().map(str::to_string));
        let leaders: Vec<&str> = view
            .nodes
            .iter()
            .filter(|n| n.role.as_deref() == Some("leader"))
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(leaders.len(), 1, "{view:#?}");
        assert_ne!(Some(leaders[0].to_string()), old_leader, "{view:#?}");
        for node in &view.nodes {
            assert_eq!(
                node.running_version.as_deref(),
                Some(self.target.as_str()),
                "{view:#?}"
            );
            assert_eq!(
                node.installed_version.as_deref(),
                Some(self.target.as_str()),
                "{view:#?}"
            );
        }
        // And every fact of every node is known and is what the simulator has.
        crate::view::assert_completed_view(self, &view);
        self.assert_completed_safely(upgrade);
    }

    pub(crate) fn assert_log_verifies(&self, upgrade: &str) {
        let out = self.baton_ok(&["audit", "verify"]);
        assert!(out.contains("audit verify: OK"), "{out}");
        let out = self.baton_ok(&["replay", upgrade, "--verify"]);
        assert!(out.contains("exactly the recorded decisions"), "{out}");
    }
}

/// The groups in `baton --output json executors` (one object per executor).
pub(crate) fn online_groups(json: &[u8]) -> Vec<String> {
    let executors: Vec<serde_json::Value> = serde_json::from_slice(json).unwrap_or_default();
    executors
        .iter()
        .filter_map(|e| e["group"].as_str().map(str::to_string))
        .collect()
}

/// The events in `baton replay ID --json`'s output, decoded.
pub(crate) fn events_of(replay_json: &str) -> Vec<Event> {
    let value: serde_json::Value = serde_json::from_str(replay_json).unwrap();
    value["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_value(e["event"].clone()).unwrap())
        .collect()
}

/// `out`'s stdout when `baton ARGS` succeeded; else a test failure with its output and `logs()`.
pub(crate) fn stdout_of_success(
    args: &[&str],
    out: Output,
    logs: impl FnOnce() -> String,
) -> String {
    assert!(
        out.status.success(),
        "baton {args:?} failed ({}): {}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    String::from_utf8(out.stdout).unwrap()
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn has<F: Fn(&Event) -> bool>(events: &[Event], f: F) -> bool {
    events.iter().any(f)
}

async fn upgrade_completes(setup: Setup) {
    let env = Env::start(setup).await;
    let upgrade = env.submit(&[]);
    env.expect_completed_safely(&upgrade).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_runbook_upgrade_completes_safely() {
    upgrade_completes(Setup::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_five_node_runbook_upgrade_completes_safely() {
    upgrade_completes(Setup {
        nodes: 5,
        ..Setup::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_node_upgrade_command_upgrade_completes_safely() {
    upgrade_completes(Setup {
        procedure: "upgrade-command",
        ..Setup::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_never_syncs_halts_before_any_other_node_is_touched() {
    // backend-1 leads; backend-2 is the first follower in the plan.
    let env = Env::start(Setup {
        faults: vec!["backend-2:sync-never"],
        // A short sync timeout so the halt comes quickly.
        sync_timeout_ms: 2000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "halted", "{view:#?}");
    let reason = view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("backend-2"),
        "the reason names the node: {reason}"
    );
    assert!(
        reason.contains("status"),
        "the reason names the probe: {reason}"
    );

    let report = env.report();
    assert_eq!(report.verdict, Verdict::Safe, "{}", report.render());
    assert_eq!(report.installs.get("backend-2").copied(), Some(1));
    for other in ["backend-1", "backend-3"] {
        assert_eq!(
            report.installs.get(other).copied().unwrap_or(0),
            0,
            "{other} was touched"
        );
        assert_eq!(report.versions[other].running, FROM);
    }
    // The cluster is still healthy with a leader and a synced follower, so
    // failover must have been restored on the way out.
    assert!(
        report.failover_at_end,
        "failover not restored: {}",
        report.render()
    );
    assert!(!view.failover_blocked);
    env.assert_log_verifies(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn gate_pause_and_resume_work_and_are_logged() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    let view = env
        .wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    assert!(view
        .reason
        .unwrap_or_default()
        .contains("before-switchover"));
    // Followers are done, the leader is untouched while we wait.
    let report = env.report();
    assert_eq!(report.installs.get("backend-1").copied().unwrap_or(0), 0);
    assert_eq!(report.installs.get("backend-2").copied(), Some(1));
    assert_eq!(report.installs.get("backend-3").copied(), Some(1));

    // Pause while waiting; approval is taken but nothing moves until resume.
    env.baton_ok(&["pause", &upgrade, "--reason", "lunch"]);
    let out = env.baton(&["pause", &upgrade]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "pausing twice is a rejection (exit 3)"
    );
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    let view = env.status(&upgrade).unwrap();
    assert_eq!(view.status, "paused", "{view:#?}");
    assert_eq!(
        env.report().installs.get("backend-1").copied().unwrap_or(0),
        0
    );
    env.baton_ok(&["resume", &upgrade]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    env.assert_completed_safely(&upgrade);

    let events = env.events(&upgrade);
    let pos = |f: &dyn Fn(&Event) -> bool| events.iter().position(f).unwrap();
    let asked = pos(&|e| matches!(e, Event::ApprovalRequested { .. }));
    let paused = pos(
        &|e| matches!(e, Event::UpgradePaused { by, reason, .. } if by == "alice" && reason == "lunch"),
    );
    let approved = pos(&|e| matches!(e, Event::GateApproved { by, .. } if by == "alice"));
    let resumed = pos(&|e| matches!(e, Event::UpgradeResumed { .. }));
    let demote =
        pos(&|e| matches!(e, Event::StepScheduled { action, .. } if action.as_str() == "demote"));
    assert!(asked < paused && paused < approved && approved < resumed && resumed < demote);
}

#[tokio::test(flavor = "multi_thread")]
async fn abort_stops_the_upgrade_and_restores_failover() {
    let env = Env::start(Setup {
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    // Abort once the first follower is being upgraded (failover is blocked).
    let reached = tests::wait_until(UPGRADE_TIMEOUT, || {
        env.status(&upgrade).is_some_and(|v| v.failover_blocked)
    })
    .await;
    assert!(reached, "failover was never blocked\n{}", env.logs());
    let out = env.baton(&["abort", &upgrade]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "abort without --reason is a usage error"
    );
    env.baton_ok(&["abort", &upgrade, "--reason", "change freeze"]);
    let view = env
        .wait_status(
            &upgrade,
            &["aborted", "halted", "completed"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "aborted", "{view:#?}");
    assert!(!view.failover_blocked, "{view:#?}");
    assert!(env.failover_on(), "failover is off after the abort");
    let report = env.report();
    assert_eq!(report.verdict, Verdict::Safe, "{}", report.render());
    assert_eq!(
        report.installs.get("backend-1").copied().unwrap_or(0),
        0,
        "the leader was touched"
    );
    // The node the abort caught out of service was brought back.
    for node in &env.nodes {
        assert!(env.node_runs(node), "{node} is not running after the abort");
    }
    let events = env.events(&upgrade);
    assert!(has(
        &events,
        |e| matches!(e, Event::AbortRequested { reason, .. } if reason == "change freeze")
    ));
    assert!(has(&events, |e| matches!(
        e,
        Event::UpgradeAborted {
            failover_pending: None,
            ..
        }
    )));
    env.assert_log_verifies(&upgrade);
    // A second upgrade of the same cluster is possible once this one ended.
    let out = env.baton(&["abort", &upgrade, "--reason", "again"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "aborting a finished upgrade is a rejection"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_upgrade_of_a_busy_cluster_is_rejected() {
    let env = Env::start(Setup {
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let cluster = env.cluster_file.display().to_string();
    let out = env.baton(&["submit", "--cluster", &cluster, "--detach"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&upgrade) && stderr.contains("in progress"),
        "{stderr}"
    );
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_service_killed_mid_upgrade_resumes_and_runs_no_step_twice() {
    // Killed while the first follower syncs (after its install).
    let (mut env, upgrade) = Env::killed_mid_upgrade(true).await;
    env.start_server();
    env.expect_completed_safely(&upgrade).await;
    let log = std::fs::read_to_string(env.dir.path().join("server-2.log")).unwrap();
    assert!(log.contains("recovered unfinished upgrade"), "{log}");
    assert!(log.contains("epoch=2"), "{log}");
}

#[test]
fn baton_dev_runs_the_demo_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(workspace_bin("baton"))
        .args(["dev", "--dir"])
        .arg(dir.path().join("demo"))
        .arg("--report")
        .arg(dir.path().join("demo-report.html"))
        .env("BATON_NATS_SERVER", tests::nats::server_binary())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "baton dev failed ({}): {stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("upgrade COMPLETED"), "{stdout}");
    assert!(stdout.contains("audit verify: OK"), "{stdout}");
    assert!(stdout.contains("Verdict: SAFE"), "{stdout}");
    // The demo's HTML timeline (the report's own tests check what it draws).
    assert!(
        stdout.contains("completed; ") && stdout.contains("log verified) written to"),
        "{stdout}"
    );
    let page = std::fs::read_to_string(dir.path().join("demo-report.html")).unwrap();
    assert!(
        page.contains("data-step-id") && page.contains("data-end-status"),
        "{page:.300}"
    );
    // It ran secured: nats-server with nkey users, TLS verifying clients, no anonymous user.
    let conf = std::fs::read_to_string(dir.path().join("demo/nats-server.conf")).unwrap();
    assert!(
        conf.contains("nkey:") && conf.contains("verify: true") && !conf.contains("no_auth_user"),
        "{conf}"
    );
    assert_no_children_left(&dir.path().join("demo"));
}

/// No process still runs with a command line pointing into `dir`.
fn assert_no_children_left(dir: &Path) {
    let needle = dir.display().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            left.push(cmdline);
        }
    }
    assert!(left.is_empty(), "processes left running: {left:?}");
}

impl Env {
    /// Restarts the executor of node `index` (after a crash), same state dir.
    pub(crate) fn restart_executor(&mut self, index: usize) {
        self.executors[index] = self.spawn_executor(index, "executor-restarted");
    }

    /// Starts the executor of node `index` with that node's simulator tools
    /// first in PATH. A short ack_wait so a step held by a killed executor
    /// is redelivered quickly.
    pub(crate) fn spawn_executor(&self, index: usize, log_name: &str) -> Proc {
        let node = &self.nodes[index];
        let path = format!(
            "{}:{}",
            self.sim_dir.join("nodes").join(node).join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = self.baton_cmd_as(&self.executor_key(node));
        cmd.args(["executor", "--group", node, "--nodes", node])
            .args(["--procedure", self.procedure])
            .args(["--heartbeat-ms", "500", "--ack-wait-ms", "2000"])
            .arg("--state-dir")
            .arg(self.dir.path().join("executors").join(node))
            .env("PATH", path)
            .env("BATON_NATS_URL", self.service_url());
        if let Some((_, executors)) = &self.http {
            cmd.arg("--http").arg(executors[index].to_string());
        }
        let log = self.dir.path().join(format!("{log_name}-{node}.log"));
        Proc::spawn(&format!("executor {node}"), cmd, &log).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_executor_killed_mid_upgrade_is_restarted_and_nothing_runs_twice() {
    let mut env = Env::start(Setup {
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    // backend-2 is the first follower: kill its executor right after its install.
    env.wait_installed("backend-2").await;
    env.executors[1].signal(Signal::SIGKILL);
    env.executors[1]
        .wait_exit(Duration::from_secs(10))
        .expect("the executor died");
    env.restart_executor(1);
    env.expect_completed_safely(&upgrade).await;
}

/// A probe whose executor is SIGKILLed mid-run: the restarted executor runs it again (a probe changes
/// nothing; an action would be answered `unknown`), the upgrade completes, and the log holds one result for
/// that step attempt, the re-run's.
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_killed_mid_probe_runs_it_again_and_the_upgrade_completes() {
    let mut env = Env::start(Setup::default()).await;
    // backend-2's first `chef-backend-ctl status` hangs until it is killed; every other run is the simulator's.
    let tool = env
        .sim_dir
        .join("nodes")
        .join("backend-2")
        .join("bin")
        .join("chef-backend-ctl");
    let real = std::fs::read_to_string(&tool).unwrap();
    let once = env.dir.path().join("hung-once");
    let pid_file = env.dir.path().join("hung-pid");
    let body = real
        .strip_prefix("#!/bin/sh\n")
        .expect("the simulator's wrapper is a sh script");
    std::fs::write(
        &tool,
        format!(
            "#!/bin/sh\nif [ \"$1\" = status ] && mkdir {once} 2>/dev/null; then echo $$ > {pid}; exec sleep 60; fi\n{body}",
            once = once.display(),
            pid = pid_file.display(),
        ),
    )
    .unwrap();
    let upgrade = env.submit(&[]);
    let hung = tests::wait_until(UPGRADE_TIMEOUT, || {
        std::fs::read_to_string(&pid_file).is_ok_and(|p| p.trim().parse::<i32>().is_ok())
    })
    .await;
    assert!(hung, "backend-2's status never ran\n{}", env.logs());
    env.executors[1].signal(Signal::SIGKILL);
    env.executors[1]
        .wait_exit(Duration::from_secs(10))
        .expect("the executor died");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The hung command outlived its executor (its own process group): the test's to end.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    env.restart_executor(1);
    env.expect_completed_safely(&upgrade).await;

    let events = env.events(&upgrade);
    let (step, attempt) = events
        .iter()
        .find_map(|e| match e {
            Event::StepScheduled {
                step,
                attempt,
                node,
                action,
                ..
            } if node == "backend-2" && action.as_str() == "probe_status" => {
                Some((*step, *attempt))
            }
            _ => None,
        })
        .expect("backend-2's status was scheduled");
    let recorded: Vec<&workflow::core::Outcome> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepResultRecorded {
                step: s,
                attempt: a,
                outcome,
                ..
            } if (*s, *a) == (step, attempt) => Some(outcome),
            _ => None,
        })
        .collect();
    assert_eq!(
        recorded,
        vec![&workflow::core::Outcome::Succeeded],
        "step {step} attempt {attempt}: one result, the re-run's\n{}",
        env.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_server_restart_mid_upgrade_loses_nothing() {
    let mut env = Env::start(Setup {
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    env.wait_installed("backend-2").await;
    env.nats
        .restart()
        .await
        .expect("nats-server restarts on the same port and store");
    env.expect_completed_safely(&upgrade).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_the_steps_and_its_hash_guards_submit() {
    let env = Env::start(Setup::default()).await;
    let cluster = env.cluster_file.display().to_string();
    let plan = env.baton_ok(&["plan", "--cluster", &cluster]);
    assert!(plan.contains("leader: backend-1"), "{plan}");
    for line in [
        "run on backend-2: stop `chef-backend-ctl stop`",
        "run on backend-1: demote `chef-backend-ctl demote`",
        "wait until backend-3 is healthy and synced",
    ] {
        assert!(plan.contains(line), "missing `{line}` in:\n{plan}");
    }
    let hash = plan
        .lines()
        .find_map(|l| l.strip_prefix("plan hash: "))
        .expect("the plan prints its hash")
        .to_string();
    // The leader's demote comes after both followers are done (S2).
    let pos = |needle: &str| plan.find(needle).unwrap();
    assert!(pos("wait until backend-3 is healthy") < pos("demote `"));
    assert!(pos("demote `") < pos("run on backend-1: stop"));
    // Nothing was changed by planning.
    assert_eq!(env.report().installs.values().sum::<u32>(), 0);
    assert!(env.failover_on());

    let wrong = "0".repeat(64);
    let out = env.baton(&["submit", "--cluster", &cluster, "--plan-hash", &wrong]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "a plan-hash mismatch ends the upgrade"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&wrong) && stderr.contains(&hash),
        "{stderr}"
    );
    assert_eq!(
        env.report().installs.values().sum::<u32>(),
        0,
        "nothing ran"
    );

    let out = env.baton(&["submit", "--cluster", &cluster, "--plan-hash", &hash]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("upgrade COMPLETED"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_log_is_detected_and_the_service_refuses_to_act_on_it() {
    let mut env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed");
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");

    // An auditor works on a copy; the copy verifies before anybody touches it.
    let db = env.db().display().to_string();
    let out = env.baton(&["audit", "verify", "--db", &db]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Change one byte inside one recorded event, as an attacker with disk access would.
    {
        let raw = sled::open(env.db()).unwrap();
        let records = store::layout::open_tree(&raw).unwrap();
        let stream: store::StreamId = upgrade.parse().unwrap();
        let key = store::layout::record_entry_key(&stream, 3);
        let mut value = records.get(key).unwrap().expect("record 3 exists").to_vec();
        let last = value.len() - 2;
        value[last] ^= 0x01;
        records.insert(key, value).unwrap();
        raw.flush().unwrap();
    }
    tests::wait_unlocked(&env.db());
    let out = env.baton(&["audit", "verify", "--db", &db]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "a tampered log fails verification with exit 5"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("FAILED"), "{stdout}");

    env.start_server();
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the service refuses to start on a log that does not verify");
    assert!(!status.success());
    assert!(server.log().contains("does not verify"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_export_replays_and_verifies_offline_and_replay_shows_any_event() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed");
    let file = env.dir.path().join("export.jsonl");
    let file_arg = file.display().to_string();
    env.baton_ok(&["audit", "export", &upgrade, "--out", &file_arg]);
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines.lines().count() as u64, view.events);

    // Offline, from the file alone (no service needed for these).
    let out = env.baton_ok(&["audit", "verify", "--file", &file_arg]);
    assert!(out.contains("audit verify: OK"), "{out}");
    let out = env.baton_ok(&["replay", &upgrade, "--file", &file_arg, "--verify"]);
    assert!(out.contains("exactly the recorded decisions"), "{out}");

    // The state at an early event: still planning, nothing installed.
    let out = env.baton_ok(&[
        "replay", &upgrade, "--file", &file_arg, "--at", "3", "--json",
    ]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(value["events"].as_array().unwrap().len(), 3);
    assert_eq!(value["state"]["status"], "planning");
    let out = env.baton_ok(&["replay", &upgrade, "--file", &file_arg]);
    assert!(out.contains("upgrade COMPLETED"), "{out}");

    // One edited character in the file breaks the chain, naming the line.
    let tampered = lines.replacen("backend-2", "backend-9", 1);
    std::fs::write(&file, tampered).unwrap();
    let out = env.baton(&["audit", "verify", "--file", &file_arg]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("line "),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demote_that_elects_nobody_stops_for_the_operator_and_resolve_carries_on() {
    // The switchover's election fails: the cluster is left without a leader.
    let env = Env::start(Setup {
        faults: vec!["backend-1:election-nobody"],
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["needs_verification", "completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "needs_verification", "{view:#?}");
    let reason = view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("demote"),
        "the reason names the action: {reason}"
    );
    let step: u64 = reason
        .strip_prefix("step ")
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the reason starts with the step: {reason}"));
    // S4: the demote was not repeated blindly.
    let demotes = || {
        std::fs::read_to_string(env.sim_dir.join("journal.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"command\"") && l.contains("\"demote\""))
            .count()
    };
    assert_eq!(demotes(), 1);

    // The operator fixes the cluster by hand, then tells Baton what they found.
    let out = Command::new("chef-backend-ctl")
        .args(["promote", "backend-2"])
        .env("PATH", env.node_path("backend-2"))
        .env("BATON_SIM_ACTOR", "operator")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.baton_ok(&[
        "resolve",
        &upgrade,
        &step.to_string(),
        "--as",
        "succeeded",
        "--why",
        "promoted backend-2 by hand",
    ]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    assert_eq!(demotes(), 1, "no second demote after the resolution");
    let report = env.report();
    for node in &env.nodes {
        assert_eq!(report.versions[node].running, TARGET);
        assert_eq!(report.installs.get(node).copied(), Some(1));
    }
    assert!(report.failover_at_end);
    // The fault left the cluster leaderless (no write leader, no follower
    // in sync) until the operator's promote: the simulator reports exactly
    // that, and nothing Baton did.
    assert!(
        report.violations.iter().all(|v| matches!(
            v.rule,
            sim::report::Rule::WriteOutage | sim::report::Rule::TooManyOutOfService
        )),
        "{}",
        report.render()
    );
    // Baton touched the old leader only after the operator's promote.
    let journal = std::fs::read_to_string(env.sim_dir.join("journal.jsonl")).unwrap();
    let position = |needle: &str| {
        journal
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in journal"))
    };
    assert!(
        position("\"promote\"")
            < position("\"node\":\"backend-1\",\"argv\":[\"chef-backend-ctl\",\"stop\"]"),
        "backend-1 was stopped before the operator promoted backend-2"
    );
    let events = env.events(&upgrade);
    assert!(has(&events, |e| matches!(
        e,
        Event::StepResolved { by, why, .. } if by == "alice" && why == "promoted backend-2 by hand"
    )));
    env.assert_log_verifies(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_of_two_clusters_run_at_the_same_time() {
    let env = Env::start(Setup {
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    // A second simulated cluster with its own executors (groups other-N).
    let (other_file, other, executors) = env.other_cluster(800).await;

    let first = env.submit(&[]);
    let other_arg = other_file.display().to_string();
    let second = env
        .baton_ok(&["submit", "--cluster", &other_arg, "--detach"])
        .trim()
        .to_string();
    // Both are in flight together.
    let both_running = tests::wait_until(UPGRADE_TIMEOUT, || {
        let running = |u: &str| env.status(u).is_some_and(|v| v.status == "running");
        running(&first) && running(&second)
    })
    .await;
    assert!(both_running, "the two upgrades never ran at the same time");
    for upgrade in [&first, &second] {
        let view = env
            .wait_status(
                upgrade,
                &["completed", "halted", "aborted"],
                UPGRADE_TIMEOUT,
            )
            .await;
        assert_eq!(view.status, "completed", "{view:#?}");
    }
    env.assert_completed_safely(&first);
    let out = Command::new(workspace_bin("baton-sim"))
        .args(["report", "--json", "--dir"])
        .arg(&other)
        .output()
        .unwrap();
    let report: Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.verdict, Verdict::Safe, "{}", report.render());
    assert!(report.versions.values().all(|v| v.running == TARGET));
    drop(executors);
}

/// A small tmpfs for the log, unmounted on drop.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs for the log needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path }
    }

    /// Fills the disk to the last byte.
    fn fill(&self) {
        let mut filler = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        use std::io::Write;
        while filler.write_all(&block).is_ok() {}
        let _ = filler.write_all(&[0u8; 512]);
        let _ = filler.sync_all();
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_log_disk_stops_the_service_which_says_why_and_resumes_once_freed() {
    let mount = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(mount.path().join("disk"), "32M");
    let mut env = Env::start(Setup {
        sync_ms: 1500,
        db: Some(disk.path.join("baton.db")),
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    env.wait_installed("backend-2").await;
    disk.fill();
    // The next append's flush fails: the service must stop acting and say why.
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(UPGRADE_TIMEOUT)
        .expect("the service stops when its log cannot be written");
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains("the log"),
        "the service says why it stopped: {log}"
    );
    // Fail closed: nothing more happens to the cluster (an in-flight step may
    // finish; nothing new is started).
    let commands = || {
        std::fs::read_to_string(env.sim_dir.join("journal.jsonl"))
            .unwrap()
            .lines()
            .filter(|l| l.contains("\"kind\":\"command\""))
            .count()
    };
    let settled = commands();
    let quiet = tests::wait_until(Duration::from_secs(3), || commands() > settled + 1).await;
    assert!(!quiet, "commands kept running after the service stopped");

    // Space back, service back: the upgrade resumes from the durable log.
    disk.free();
    env.start_server();
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    env.assert_completed_safely(&upgrade);
}

impl Env {
    /// A copy of the cluster file under another cluster name (same nodes,
    /// addresses and executor groups).
    pub(crate) fn cluster_file_named(&self, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.cluster_file).unwrap();
        let renamed = text.replacen("name = \"e2e\"", &format!("name = \"{name}\""), 1);
        assert_ne!(text, renamed, "the cluster file names the cluster e2e");
        let file = self.dir.path().join(format!("cluster-{name}.toml"));
        std::fs::write(&file, renamed).unwrap();
        file
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_nodes_under_another_cluster_name_are_refused_while_an_upgrade_runs() {
    let env = Env::start(Setup {
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let running = tests::wait_until(UPGRADE_TIMEOUT, || {
        env.status(&upgrade).is_some_and(|v| v.status == "running")
    })
    .await;
    assert!(running, "the first upgrade never ran\n{}", env.logs());
    let again = env.cluster_file_named("e2e-again");
    let out = env.baton(&[
        "submit",
        "--cluster",
        &again.display().to_string(),
        "--detach",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the same nodes under another name must be rejected (exit 3): {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("backend-1") && stderr.contains(&upgrade),
        "the rejection names the node and the upgrade holding it: {stderr}"
    );
    env.expect_completed_safely(&upgrade).await;
    // Once it ended, the nodes are free again under either name.
    let out = env.baton(&["plan", "--cluster", &again.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The cluster changes under Baton (issue 10): the environment (an operator's
// `promote`, a crash, a restart) acts at a chosen moment, and Baton must act
// only on what the cluster shows now. Each test ends COMPLETED and safe, or
// HALTED/ABORTED with a reason naming what changed, failover not left off,
// and the simulator's verdict SAFE. The reason checks are loose (any of a few
// words): the core's wording is not settled.
// ---------------------------------------------------------------------------

/// Whether `text` contains any of `words`, ignoring case.
fn mentions_any(text: &str, words: &[&str]) -> bool {
    let text = text.to_lowercase();
    words.iter().any(|w| text.contains(&w.to_lowercase()))
}

/// Statuses at which an upgrade waits for nobody but the operator, or ended.
const SETTLED: [&str; 5] = [
    "completed",
    "halted",
    "aborted",
    "needs_verification",
    "waiting_approval",
];

impl Env {
    /// PATH with `node`'s simulator tools first.
    pub(crate) fn node_path(&self, node: &str) -> String {
        format!(
            "{}:{}",
            self.sim_dir.join("nodes").join(node).join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Runs a node tool (`chef-backend-ctl`, `dpkg`, ...) on `node` as
    /// `actor` (`operator`, `environment`): the simulator charges Baton only
    /// with what Baton did.
    pub(crate) fn tool_as(&self, actor: &str, node: &str, argv: &[&str]) -> Output {
        Command::new(argv[0])
            .args(&argv[1..])
            .env("PATH", self.node_path(node))
            .env("BATON_SIM_ACTOR", actor)
            .output()
            .unwrap_or_else(|e| panic!("{argv:?} on {node}: {e}"))
    }

    /// [`Env::tool_as`], expecting success; returns stdout.
    pub(crate) fn tool_ok(&self, actor: &str, node: &str, argv: &[&str]) -> String {
        let out = self.tool_as(actor, node, argv);
        assert!(
            out.status.success(),
            "{actor} ran {argv:?} on {node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `baton-sim VERB --dir D --node NODE [ARGS]` as the environment
    /// (`crash`, `restart`, `fault`).
    pub(crate) fn sim_on(&self, verb: &str, node: &str, args: &[&str]) {
        let out = Command::new(workspace_bin("baton-sim"))
            .arg(verb)
            .arg("--dir")
            .arg(&self.sim_dir)
            .args(["--node", node])
            .args(args)
            .env("BATON_SIM_ACTOR", "environment")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "baton-sim {verb} {node} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The simulator's state now (its due transitions applied).
    pub(crate) fn sim_state(&self) -> serde_json::Value {
        let out = Command::new(workspace_bin("baton-sim"))
            .args(["state", "--dir"])
            .arg(&self.sim_dir)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "baton-sim state: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// One node of [`Env::sim_state`].
    pub(crate) fn sim_node(&self, node: &str) -> serde_json::Value {
        self.sim_state()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .cloned()
            .unwrap_or_else(|| panic!("{node} is not in the simulator's state"))
    }

    /// The running leader, if any.
    pub(crate) fn leader(&self) -> Option<String> {
        self.sim_state()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["up"] == true && n["role"] == "leader")
            .and_then(|n| n["name"].as_str().map(String::from))
    }

    /// Whether `node` runs the target version and re-syncs (its services
    /// started after its upgrade, its postgresql not yet synced).
    pub(crate) fn resyncing_after_upgrade(&self, node: &str) -> bool {
        let n = self.sim_node(node);
        n["up"] == true && n["running"] == self.target.as_str() && n["pg"] == "syncing"
    }

    /// Waits for `cond`; panics naming `what` (with the logs) on timeout.
    pub(crate) async fn wait_for(&self, what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
        let held = tests::wait_until(timeout, cond).await;
        assert!(held, "timed out waiting for: {what}\n{}", self.logs());
    }

    /// Whether a simulator command of `node` is running (its process exists).
    pub(crate) fn command_running(&self, node: &str) -> bool {
        let dir = self.sim_dir.display().to_string();
        let node_arg = format!("--node\0{node}\0");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return false;
        };
        entries.flatten().any(|entry| {
            std::fs::read(entry.path().join("cmdline"))
                .map(|raw| {
                    let cmdline = String::from_utf8_lossy(&raw);
                    cmdline.contains("baton-sim")
                        && cmdline.contains(&dir)
                        && cmdline.contains(&node_arg)
                })
                .unwrap_or(false)
        })
    }

    /// The journal's command lines that `keep` selects.
    pub(crate) fn journal_commands(
        &self,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.sim_dir.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "command")
            .filter(|v| keep(v))
            .collect()
    }

    /// Baton's own `chef-backend-ctl WORD` commands (the simulator journals
    /// a command without an actor as the orchestrator's).
    pub(crate) fn batons_ctl(&self, word: &str) -> Vec<serde_json::Value> {
        self.journal_commands(|v| {
            v["actor"].as_str().unwrap_or("orchestrator") == "orchestrator"
                && v["argv"][0] == "chef-backend-ctl"
                && v["argv"][1] == word
        })
    }

    /// Waits until the upgrade ended or waits for the operator; approves a
    /// gate asked for (again: a re-plan may ask for a fresh approval) up to
    /// four times.
    pub(crate) async fn finish(&self, upgrade: &str) -> StatusView {
        for _ in 0..4 {
            let view = self.wait_status(upgrade, &SETTLED, UPGRADE_TIMEOUT).await;
            if view.status != "waiting_approval" {
                return view;
            }
            let reason = view.reason.unwrap_or_default();
            let gate = if reason.contains("after-first-follower") {
                "after-first-follower"
            } else {
                "before-switchover"
            };
            self.baton_ok(&["approve", upgrade, gate]);
            // The approval is taken; wait for the loop to move on.
            self.wait_for("the approval to be taken", UPGRADE_TIMEOUT, || {
                self.status(upgrade)
                    .is_some_and(|v| v.status != "waiting_approval" || v.events > view.events + 1)
            })
            .await;
        }
        panic!("upgrade {upgrade} asked for approval more than four times");
    }

    /// The simulator's verdict is SAFE.
    pub(crate) fn assert_verdict_safe(&self) {
        let report = self.report();
        assert_eq!(
            report.verdict,
            Verdict::Safe,
            "simulator says unsafe: {}\n{}",
            report.render(),
            self.logs()
        );
    }

    /// Waits for the end and checks it: COMPLETED with every node running
    /// the target, or HALTED/ABORTED with a reason mentioning one of
    /// `words`; failover not left blocked (Baton's view) nor off (the
    /// simulator's); the log verifies. Returns the final view.
    pub(crate) async fn finish_safely(&self, upgrade: &str, words: &[&str]) -> StatusView {
        let view = self.finish(upgrade).await;
        let report = self.report();
        match view.status.as_str() {
            "completed" => {
                for node in &self.nodes {
                    assert_eq!(
                        report.versions[node].running,
                        self.target,
                        "completed, but {node} runs {}: {}",
                        report.versions[node].running,
                        report.render()
                    );
                }
            }
            "halted" | "aborted" => {
                let reason = view.reason.clone().unwrap_or_default();
                assert!(
                    mentions_any(&reason, words),
                    "the reason names what changed (any of {words:?}): {reason}"
                );
            }
            _ => panic!(
                "upgrade {upgrade} ended {}: {view:#?}\n{}",
                view.status,
                self.logs()
            ),
        }
        assert!(!view.failover_blocked, "failover left blocked: {view:#?}");
        assert!(
            report.failover_at_end,
            "failover left off: {}",
            report.render()
        );
        self.assert_log_verifies(upgrade);
        view
    }

    /// After a halt: the environment is repaired (every node started again,
    /// as an operator would) and, if Baton installed anything, the operator
    /// runs the upgrade again, which must complete. The simulator judges the
    /// whole journal: SAFE.
    pub(crate) async fn repair_and_rerun(&self, view: &StatusView) {
        self.repair_and_rerun_allowing(view, &[]).await;
    }

    /// [`Env::repair_and_rerun`], where the test's own fault caused violations of `allowed` (and only those).
    pub(crate) async fn repair_and_rerun_allowing(&self, view: &StatusView, allowed: &[Rule]) {
        if view.status != "completed" {
            for node in &self.nodes {
                if self.sim_node(node)["up"] != true {
                    self.tool_ok("operator", node, &["chef-backend-ctl", "start"]);
                }
            }
            self.wait_for(
                "a leader and every node in service",
                UPGRADE_TIMEOUT,
                || {
                    let state = self.sim_state();
                    let nodes = state["nodes"].as_array().unwrap();
                    nodes.iter().any(|n| n["role"] == "leader")
                        && nodes.iter().all(|n| {
                            n["up"] == true
                                && (n["role"] == "leader"
                                    || (n["role"] == "follower" && n["pg"] == "synced"))
                        })
                },
            )
            .await;
            if self.report().installs.values().sum::<u32>() > 0 {
                let again = self.submit(&[]);
                let end = self.finish(&again).await;
                assert_eq!(
                    end.status,
                    "completed",
                    "the upgrade run again after the repair: {end:#?}\n{}",
                    self.logs()
                );
                let report = self.report();
                for node in &self.nodes {
                    assert_eq!(report.versions[node].running, self.target);
                }
                self.assert_log_verifies(&again);
            }
        }
        if allowed.is_empty() {
            self.assert_verdict_safe();
        } else {
            let report = self.report();
            let other: Vec<Rule> = report
                .rules()
                .into_iter()
                .filter(|r| !allowed.contains(r))
                .collect();
            assert!(
                other.is_empty(),
                "violations beyond {allowed:?}: {}",
                report.render()
            );
        }
    }

    /// [`Env::finish_safely`], the simulator's verdict on the run as it ended (a halt is judged on its own: its
    /// unfinished end state is flagged, not unsafe), then [`Env::repair_and_rerun`].
    pub(crate) async fn expect_safe_end(&self, upgrade: &str, words: &[&str]) {
        let view = self.finish_safely(upgrade, words).await;
        self.assert_verdict_safe();
        if view.status == "completed" {
            assert!(
                self.report().flags.is_empty(),
                "completed with an unfinished end state: {}",
                self.report().render()
            );
        }
        self.repair_and_rerun(&view).await;
    }

    /// Submits (with `extra`) and expects a refusal before anything changes:
    /// either the submission is rejected (exit 3) or the upgrade ends without
    /// completing; the rejection or reason mentions one of `words`; Baton
    /// installed nothing and changed nothing. The caller judges the verdict
    /// (after undoing what it did to the cluster itself).
    pub(crate) async fn expect_refused(&self, extra: &[&str], words: &[&str]) {
        let cluster = self.cluster_file.display().to_string();
        let mut args = vec!["submit", "--cluster", &cluster, "--detach"];
        args.extend_from_slice(extra);
        let out = self.baton(&args);
        let text = if out.status.code() == Some(3) {
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            assert!(
                out.status.success(),
                "submit failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let upgrade = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let view = self.finish(&upgrade).await;
            assert!(
                matches!(view.status.as_str(), "halted" | "aborted"),
                "expected a refusal, the upgrade ended {}: {view:#?}\n{}",
                view.status,
                self.report().render()
            );
            assert!(!view.failover_blocked, "{view:#?}");
            view.reason.unwrap_or_default()
        };
        assert!(
            mentions_any(&text, words),
            "the refusal says why (any of {words:?}): {text}"
        );
        let report = self.report();
        assert_eq!(
            report.installs.values().sum::<u32>(),
            0,
            "installed before refusing: {}",
            report.render()
        );
        for word in ["stop", "start", "demote", "upgrade", "set-cluster-failover"] {
            let ran = self.batons_ctl(word);
            assert!(ran.is_empty(), "Baton ran {word} before refusing: {ran:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_promoted_by_the_operator_at_the_canary_gate_is_never_stopped() {
    // Issue 10 #1: the leader moves while Baton waits at a gate; its plan
    // still calls the new leader a follower.
    let env = Env::start(Setup {
        sync_timeout_ms: 15_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "after-first-follower"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.tool_ok(
        "operator",
        "backend-3",
        &["chef-backend-ctl", "promote", "backend-3"],
    );
    env.wait_for("backend-3 leads", UPGRADE_TIMEOUT, || {
        env.leader().as_deref() == Some("backend-3")
    })
    .await;
    env.expect_safe_end(&upgrade, &["backend-3", "leader", "moved"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_promoted_by_the_operator_before_the_switchover_is_seen() {
    // Issue 10 #1: at the before-switchover gate the operator hands the lead
    // to an upgraded follower; the planned demote of the old leader would
    // fail ("not the leader") and must not count as a success.
    let env = Env::start(Setup {
        sync_ms: 1000,
        sync_timeout_ms: 15_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.tool_ok(
        "operator",
        "backend-2",
        &["chef-backend-ctl", "promote", "backend-2"],
    );
    env.wait_for("backend-2 leads", UPGRADE_TIMEOUT, || {
        env.leader().as_deref() == Some("backend-2")
    })
    .await;
    let view = env
        .finish_safely(&upgrade, &["backend-2", "backend-1", "leader", "moved"])
        .await;
    if view.status == "completed" {
        let failed: Vec<_> = env
            .batons_ctl("demote")
            .into_iter()
            .filter(|v| v["exit_code"] != 0)
            .collect();
        assert!(
            failed.is_empty(),
            "completed after a failed demote: {failed:?}"
        );
    }
    env.repair_and_rerun(&view).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_moved_while_a_follower_resyncs_is_never_stopped() {
    // Issue 10 #1: an unplanned change of leader while the first follower
    // re-syncs after its upgrade; the next follower in the plan now leads.
    let env = Env::start(Setup {
        sync_ms: 1500,
        sync_timeout_ms: 15_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    env.wait_for(
        "backend-2 re-syncs after its upgrade",
        UPGRADE_TIMEOUT,
        || env.resyncing_after_upgrade("backend-2"),
    )
    .await;
    env.tool_ok(
        "operator",
        "backend-3",
        &["chef-backend-ctl", "promote", "backend-3"],
    );
    env.expect_safe_end(&upgrade, &["backend-3", "leader", "moved"])
        .await;
}

/// Issue 10 #2: pause at `gate`, crash `node` (the environment), approve,
/// resume; a few seconds later the environment starts the node again.
async fn crash_while_paused_then_resume(gate: &str, node: &str) {
    let env = Env::start(Setup {
        sync_timeout_ms: 15_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", gate]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["pause", &upgrade, "--reason", "on-call looks"]);
    env.baton_ok(&["approve", &upgrade, gate]);
    env.sim_on("crash", node, &[]);
    env.baton_ok(&["resume", &upgrade]);
    // Give Baton the time to act on the resume with the node down (it may
    // halt, or wait for the node), then the environment brings it back.
    let ended = tests::wait_until(Duration::from_secs(4), || {
        env.status(&upgrade)
            .is_some_and(|v| SETTLED.contains(&v.status.as_str()))
    })
    .await;
    if !ended {
        env.tool_ok("environment", node, &["chef-backend-ctl", "start"]);
    }
    env.expect_safe_end(&upgrade, &[node]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_crashed_while_paused_at_the_canary_gate_is_seen_on_resume() {
    // backend-2 is upgraded, backend-3 is next: stopping it now would take
    // two of three out.
    crash_while_paused_then_resume("after-first-follower", "backend-2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_crashed_while_paused_before_the_switchover_blocks_the_demote() {
    // Demoting the leader with a follower down leaves one synced node.
    crash_while_paused_then_resume("before-switchover", "backend-3").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_old_leader_is_stopped_only_once_the_new_leaders_followers_resynced() {
    // Issue 10 #4: after the demote backend-3 re-syncs to the new leader
    // (backend-2) while `cluster-status` still calls it a follower; here its
    // re-sync never completes, so stopping the old leader takes two out.
    let env = Env::start(Setup {
        sync_timeout_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.sim_on("fault", "backend-3", &["sync-never"]);
    let view = env.finish_safely(&upgrade, &["backend-3", "sync"]).await;
    env.sim_on("fault", "backend-3", &["--clear", "sync-never"]);
    env.repair_and_rerun(&view).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_installed_but_still_running_the_old_version_is_not_skipped() {
    // Issue 10 #5: what an aborted upgrade-command run leaves behind: the
    // package installed on backend-2, its services still on the old version.
    let env = Env::start(Setup {
        procedure: "upgrade-command",
        sync_timeout_ms: 15_000,
        ..Setup::default()
    })
    .await;
    let package = env
        .dir
        .path()
        .join(format!("chef-backend_{}_amd64.deb", env.target));
    env.tool_ok(
        "operator",
        "backend-2",
        &["dpkg", "-i", &package.display().to_string()],
    );
    let node = env.sim_node("backend-2");
    assert_eq!(node["installed"], env.target.as_str());
    assert_eq!(node["running"], FROM);
    let upgrade = env.submit(&[]);
    env.expect_safe_end(&upgrade, &["backend-2", "running", "old"])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_node_cluster_is_refused_before_anything_changes() {
    // Issue 10 #6: stopping the follower of a 2-node cluster loses etcd quorum.
    let env = Env::start(Setup {
        nodes: 2,
        ..Setup::default()
    })
    .await;
    env.expect_refused(&[], &["quorum", "3 nodes", "three nodes", "at least"])
        .await;
    env.assert_verdict_safe();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_major_version_change_is_refused_before_anything_changes() {
    // Issue 10 #6: 2.4 -> 3.1 needs downtime; out of scope.
    let env = Env::start(Setup {
        from: "2.4.0-1",
        ..Setup::default()
    })
    .await;
    env.expect_refused(&[], &["major"]).await;
    env.assert_verdict_safe();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downgrade_is_refused_before_anything_changes() {
    // Issue 10 #6: 3.2 -> 3.1 is not an upgrade.
    let env = Env::start(Setup {
        from: "3.2.0-1",
        ..Setup::default()
    })
    .await;
    env.expect_refused(&[], &["downgrade", "older"]).await;
    env.assert_verdict_safe();
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_are_compared_as_numbers_not_strings() {
    // 3.9 -> 3.10 is a minor upgrade, whatever "3.10" < "3.9" says as text.
    upgrade_completes(Setup {
        from: "3.9.0-1",
        target: "3.10.0-1",
        ..Setup::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_is_restored_on_abort_although_the_leader_baton_last_saw_is_dead() {
    // Issue 10 #7: the operator moved the lead to backend-2 at the gate, then
    // backend-1 (the leader Baton last saw) crashed; the operator aborts. A
    // healthy leader and a synced follower exist: the wind-down must find
    // them rather than ask the dead node, and re-enable failover.
    let env = Env::start(Setup {
        sync_timeout_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.tool_ok(
        "operator",
        "backend-2",
        &["chef-backend-ctl", "promote", "backend-2"],
    );
    env.wait_for(
        "backend-2 leads and backend-3 re-synced",
        UPGRADE_TIMEOUT,
        || {
            env.leader().as_deref() == Some("backend-2")
                && env.sim_node("backend-3")["pg"] == "synced"
        },
    )
    .await;
    env.sim_on("crash", "backend-1", &[]);
    env.baton_ok(&["abort", &upgrade, "--reason", "change freeze"]);
    env.expect_safe_end(&upgrade, &["change freeze"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_as_succeeded_after_a_demote_that_elected_nobody_is_checked_before_acting() {
    // Issue 10 #8: the operator claims the demote succeeded without fixing
    // anything; the cluster has no leader. Nothing may be blocked on it.
    let env = Env::start(Setup {
        faults: vec!["backend-1:election-nobody"],
        sync_timeout_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env.wait_status(&upgrade, &SETTLED, UPGRADE_TIMEOUT).await;
    assert_eq!(view.status, "needs_verification", "{view:#?}");
    let reason = view.reason.clone().unwrap_or_default();
    let step = reason
        .strip_prefix("step ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("the reason starts with the step: {reason}"))
        .to_string();
    assert_eq!(env.leader(), None, "the fault elected nobody");
    env.baton_ok(&[
        "resolve",
        &upgrade,
        &step,
        "--as",
        "succeeded",
        "--why",
        "looked fine to me",
    ]);
    let stops_before = env.batons_ctl("stop").len();
    let blocks_before = env
        .batons_ctl("set-cluster-failover")
        .iter()
        .filter(|c| c["argv"][2] == "off")
        .count();
    let view = env.finish_safely(&upgrade, &["leader"]).await;
    assert_eq!(view.status, "halted", "{view:#?}");
    assert_eq!(
        env.batons_ctl("stop").len(),
        stops_before,
        "nothing stopped after the claim"
    );
    assert_eq!(
        env.batons_ctl("set-cluster-failover")
            .iter()
            .filter(|c| c["argv"][2] == "off")
            .count(),
        blocks_before,
        "failover not blocked on the leaderless cluster"
    );
    if env.leader().is_none() {
        // Baton gave the cluster its failover back; the fault still elects
        // nobody, so the operator promotes by hand before running it again.
        env.tool_ok(
            "operator",
            "backend-2",
            &["chef-backend-ctl", "promote", "backend-2"],
        );
    }
    // The fault's failed election is an outage Baton's demote started and nobody could end but a promote; what
    // this test holds Baton to is everything else: no failover blocked on the leaderless cluster
    // (`failover_blocked_without_leader`), no node taken out, a halt that says why.
    env.repair_and_rerun_allowing(&view, &[Rule::WriteOutage, Rule::TooManyOutOfService])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_while_failover_is_blocked_gets_failover_back() {
    // Issue 10 #9: failover is blocked (Baton upgrades backend-2) and the
    // leader dies: nobody can be elected until failover is on again.
    let env = Env::start(Setup {
        sync_ms: 1500,
        sync_timeout_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    env.wait_for(
        "backend-2 re-syncs after its upgrade",
        UPGRADE_TIMEOUT,
        || env.resyncing_after_upgrade("backend-2"),
    )
    .await;
    env.sim_on("crash", "backend-1", &[]);
    // Baton must give failover back within a few seconds (its emergency
    // exit); a new leader is elected then.
    let view = env
        .finish_safely(&upgrade, &["leader", "backend-1", "quorum"])
        .await;
    env.repair_and_rerun(&view).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_whose_executor_was_killed_is_re_observed_and_the_upgrade_goes_on() {
    // Issue 10, also wrong: `status` exits 1 on a stopped node; its output
    // still says what happened.
    let mut env = Env::start(Setup::default()).await;
    env.sim_on("fault", "backend-2", &["latency", "2000"]);
    let upgrade = env.submit(&[]);
    env.wait_for(
        "backend-2's stop running in its executor",
        UPGRADE_TIMEOUT,
        || {
            env.status(&upgrade)
                .and_then(|v| v.current)
                .is_some_and(|c| c.node == "backend-2" && c.action == "stop")
                && env.command_running("backend-2")
        },
    )
    .await;
    env.executors[1].signal(Signal::SIGKILL);
    env.executors[1].wait_exit(Duration::from_secs(10));
    env.restart_executor(1);
    env.sim_on("fault", "backend-2", &["--clear", "latency"]);
    env.expect_completed_safely(&upgrade).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_taken_down_by_a_failed_upgrade_command_is_started_again() {
    // Issue 10, also wrong: `chef-backend-ctl upgrade` stops the node and its
    // start fails; once the cause is gone, Baton brings it back.
    let env = Env::start(Setup {
        procedure: "upgrade-command",
        faults: vec!["backend-2:start-fails"],
        sync_timeout_ms: 10_000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let failed_upgrades = || {
        env.batons_ctl("upgrade")
            .into_iter()
            .filter(|v| v["node"] == "backend-2" && v["exit_code"] != 0)
            .map(|v| v["finished_ms"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    let view = env.finish(&upgrade).await;
    let first_failure = failed_upgrades()
        .into_iter()
        .min()
        .unwrap_or_else(|| panic!("backend-2's upgrade never failed: {view:#?}"));
    // Baton tried to bring the node back (the fault makes that start fail
    // too; the operator clears it below).
    let starts: Vec<_> = env
        .batons_ctl("start")
        .into_iter()
        .filter(|v| {
            v["node"] == "backend-2" && v["started_ms"].as_u64().unwrap_or(0) >= first_failure
        })
        .collect();
    assert!(
        !starts.is_empty(),
        "backend-2 was left down after its failed upgrade, never started again: {view:#?}"
    );
    env.sim_on("fault", "backend-2", &["--clear", "start-fails"]);
    let view = env.finish_safely(&upgrade, &["backend-2"]).await;
    env.repair_and_rerun(&view).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_demote_rechecked_during_the_election_is_not_judged_without_effect() {
    // Issue 10, also wrong: the demote times out (2 s) before the election
    // (3 s) ends; "old leader deposed, no leader yet" is not "no effect",
    // and an operator told to retry would demote twice.
    let env = Env::start(Setup {
        election_ms: 3000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env.finish(&upgrade).await;
    let view = if view.status == "needs_verification" {
        // What an operator does when Baton says the demote had no effect.
        let reason = view.reason.clone().unwrap_or_default();
        let step = reason
            .strip_prefix("step ")
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("the reason starts with the step: {reason}"))
            .to_string();
        env.baton_ok(&[
            "resolve",
            &upgrade,
            &step,
            "--as",
            "retry",
            "--why",
            "Baton says no effect",
        ]);
        env.finish(&upgrade).await
    } else {
        view
    };
    let demotes = env.batons_ctl("demote");
    assert_eq!(demotes.len(), 1, "demoted more than once: {demotes:?}");
    assert_eq!(view.status, "completed", "{view:#?}\n{}", env.logs());
    env.assert_completed_safely(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_package_whose_version_is_not_the_target_is_refused_before_any_install() {
    // Issue 10, also wrong: the package file is 3.1.0-1, the operator asked
    // for 3.1.1-1; this was noticed only after a node was upgraded and a
    // full sync timeout passed.
    let env = Env::start(Setup {
        sync_timeout_ms: 5_000,
        ..Setup::default()
    })
    .await;
    env.expect_refused(&["--target-version", "3.1.1-1"], &["version"])
        .await;
    env.assert_verdict_safe();
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_already_off_is_refused_before_anything_changes() {
    // Issue 10, also wrong: someone else may be at work; Baton must not turn
    // failover back on behind their back either.
    let env = Env::start(Setup::default()).await;
    env.tool_ok(
        "operator",
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "off"],
    );
    env.expect_refused(&[], &["failover"]).await;
    assert!(!env.sim_state()["failover"].as_bool().unwrap());
    env.tool_ok(
        "operator",
        "backend-1",
        &["chef-backend-ctl", "set-cluster-failover", "on"],
    );
    env.assert_verdict_safe();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_failover_is_off_is_refused_before_anything_changes() {
    // Issue 10, also wrong: backend-2 cannot be elected; preflight must say so.
    let env = Env::start(Setup::default()).await;
    env.tool_ok(
        "operator",
        "backend-2",
        &["chef-backend-ctl", "set-node-failover", "off"],
    );
    env.expect_refused(&[], &["backend-2"]).await;
    env.tool_ok(
        "operator",
        "backend-2",
        &["chef-backend-ctl", "set-node-failover", "on"],
    );
    env.assert_verdict_safe();
}

/// `baton dev --serve` runs until stopped, its children each in a process
/// group of their own (so a terminal's signals do not reach them). Stopped
/// by SIGTERM (`kill`, a CI timeout) or SIGHUP (the terminal closed) rather
/// than Ctrl-C, it must still stop them: nats-server, the service and the
/// executors were left running, orphaned.
#[tokio::test(flavor = "multi_thread")]
async fn baton_dev_serve_stops_everything_on_sigterm_and_sighup() {
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let dir = tempfile::tempdir().unwrap();
        let demo = dir.path().join("demo");
        let mut cmd = Command::new(workspace_bin("baton"));
        cmd.args(["dev", "--serve", "--dir"])
            .arg(&demo)
            .env("BATON_NATS_SERVER", tests::nats::server_binary());
        let mut dev = Proc::spawn("baton dev --serve", cmd, &dir.path().join("dev.log")).unwrap();
        let ready =
            tests::wait::wait_until(Duration::from_secs(120), || dev.log().contains("ready:"))
                .await;
        assert!(ready, "not ready: {}", dev.log());
        dev.signal(signal);
        let status = dev.wait_exit(Duration::from_secs(30));
        let left = kill_processes_under(&demo);
        assert!(status.is_some(), "{signal}: baton dev did not exit");
        assert!(
            left.is_empty(),
            "{signal}: processes left running (now killed): {left:?}"
        );
    }
}

/// Kills every process whose command line points into `dir`; returns their
/// command lines.
fn kill_processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            left.push(cmdline);
        }
    }
    left
}

/// The service keeps the live executors from a watch of the presence bucket (issue 16): an executor that
/// stops cleanly drops out of `baton executors` (and a submission needing it is refused) without waiting for
/// any TTL, and one that starts again is back as soon as its first heartbeat is put.
#[tokio::test(flavor = "multi_thread")]
async fn executors_leave_and_rejoin_the_services_watched_view_at_once() {
    let mut env = Env::start(Setup::default()).await;
    env.wait_for_executors().await;
    env.executors[1].signal(Signal::SIGTERM);
    assert!(env.executors[1]
        .wait_exit(Duration::from_secs(20))
        .is_some());
    let gone = tests::wait_until(Duration::from_secs(10), || {
        let out = env.baton(&["--output", "json", "executors"]);
        !online_groups(&out.stdout).contains(&env.nodes[1])
    })
    .await;
    assert!(
        gone,
        "{} still online after a clean stop\n{}",
        env.nodes[1],
        env.logs()
    );
    env.expect_refused(&[], &[&env.nodes[1], "offline", "online"])
        .await;
    env.restart_executor(1);
    env.wait_for_executors().await;
    let upgrade = env.submit(&[]);
    env.expect_completed_safely(&upgrade).await;
}
