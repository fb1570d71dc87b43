//! A fleet run: one nats-server (authentication and TLS on, as shipped), one
//! `baton server`, N simulated 3-node chef-backend clusters (`baton-sim`) and
//! their executors ([`Executors`]: one `baton executor` process per node, or
//! one process serving every node); N upgrades submitted at once and
//! waited for; then the figures ([`Outcome`]) and every simulator verdict.
//! `cargo bench -p tests --bench fleet` runs it (`tests/FLEET.md` has the
//! method), and the integration test `fleet::` runs it at N = 2 so it cannot rot.
//!
//! Everything lives in temp dirs and child processes owned by [`Fleet`]: a
//! return, an error or a panic drops them (children killed and reaped, dirs
//! removed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::Proc;
use crate::{NatsServer, Secure};

/// The version the clusters run first, and the package's.
const FROM: &str = "3.0.0-1";
const TARGET: &str = "3.1.0-1";
const NODES: usize = 3;
/// Statuses after which an upgrade moves no more on its own.
const ENDED: [&str; 4] = ["completed", "halted", "aborted", "needs_verification"];
/// How often the run asks the service whether every upgrade has ended.
const LIST_EVERY: Duration = Duration::from_millis(250);

/// The simulator's timings and the cluster file's waits that go with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timings {
    /// Commands take no simulated time: `--sync-ms 0 --election-ms 0`; the
    /// cluster file's waits as in the end-to-end tests (poll, backoff 100 ms).
    Zero,
    /// The demo's (`baton dev`): the simulator's defaults (sync 1500 ms,
    /// election 800 ms) and the demo's cluster file (poll 200 ms, election
    /// window 1000 ms).
    Demo,
}

impl Timings {
    pub fn parse(text: &str) -> anyhow::Result<Timings> {
        match text {
            "zero" => Ok(Timings::Zero),
            "demo" => Ok(Timings::Demo),
            other => bail!("timings: `{other}` is neither `zero` nor `demo`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Timings::Zero => "zero",
            Timings::Demo => "demo",
        }
    }

    fn sim_args(self) -> Vec<&'static str> {
        match self {
            Timings::Zero => vec!["--sync-ms", "0", "--election-ms", "0"],
            Timings::Demo => vec![],
        }
    }

    fn upgrade_section(self) -> &'static str {
        match self {
            Timings::Zero => "poll_interval_ms = 100\nbackoff_ms = 100\nelection_window_ms = 500\n",
            Timings::Demo => "poll_interval_ms = 200\nelection_window_ms = 1000\n",
        }
    }
}

/// How the fleet's nodes get their executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executors {
    /// One `baton executor` process per node (3N processes), each with its
    /// node's simulator tools first in `PATH`.
    PerNode,
    /// One `baton executor` process for the whole fleet: the first node's
    /// group by flags, the 3N - 1 others as `serve` entries of its config file,
    /// each with its key, cluster file and `node_bin_dir`.
    One,
}

impl Executors {
    pub fn parse(text: &str) -> anyhow::Result<Executors> {
        match text {
            "per-node" => Ok(Executors::PerNode),
            "one" => Ok(Executors::One),
            other => bail!("executors: `{other}` is neither `per-node` nor `one`"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Executors::PerNode => "per-node",
            Executors::One => "one",
        }
    }
}

/// The `baton` and `baton-sim` binaries a run uses.
#[derive(Debug, Clone)]
pub struct Bins {
    pub baton: PathBuf,
    pub sim: PathBuf,
}

impl Bins {
    /// From `dir` (e.g. `target/release`); an error saying how to build them
    /// when they are missing.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Bins> {
        let bins = Bins {
            baton: dir.join("baton"),
            sim: dir.join("baton-sim"),
        };
        for bin in [&bins.baton, &bins.sim] {
            if !bin.is_file() {
                bail!(
                    "{} not found: build the binaries first (`cargo build --release --workspace --bins` \
                     for target/release, or set BATON_FLEET_BIN_DIR to a directory holding baton and baton-sim)",
                    bin.display()
                );
            }
        }
        Ok(bins)
    }

    /// The binaries built beside the running executable
    /// (`target/<profile>/deps/<exe>` → `target/<profile>`).
    pub fn beside_current_exe() -> anyhow::Result<Bins> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the executable lives in target/<profile>/deps")?;
        Bins::in_dir(dir)
    }

    /// `release` or `debug`: the directory the binaries are in.
    pub fn profile(&self) -> String {
        self.baton
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// One simulated cluster and its cluster file.
struct Cluster {
    name: String,
    sim_dir: PathBuf,
    file: PathBuf,
    /// The executor group of each node (`c<k>-backend-<i>`).
    groups: Vec<String>,
}

/// What one process used: resident memory now and at its peak, CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kb: u64,
    pub peak_rss_kb: u64,
    /// Its own CPU time (user + system), in clock ticks.
    pub cpu_ticks: u64,
    /// The CPU time of its children it waited for (the executors' commands).
    pub children_cpu_ticks: u64,
}

impl Usage {
    /// From `/proc/<pid>/status` and `/proc/<pid>/stat`.
    fn of(pid: i32) -> anyhow::Result<Usage> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb = |field: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces, inside parentheses).
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<u64> = rest
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // utime, stime, cutime, cstime are fields 14-17 (1-based); `rest` starts at field 3.
        let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
        Ok(Usage {
            rss_kb: kb("VmRSS:"),
            peak_rss_kb: kb("VmHWM:"),
            cpu_ticks: field(14) + field(15),
            children_cpu_ticks: field(16) + field(17),
        })
    }

    fn add(&mut self, other: Usage) {
        self.rss_kb += other.rss_kb;
        self.peak_rss_kb += other.peak_rss_kb;
        self.cpu_ticks += other.cpu_ticks;
        self.children_cpu_ticks += other.children_cpu_ticks;
    }

    fn cpu_since(&self, before: &Usage) -> (u64, u64) {
        (
            self.cpu_ticks.saturating_sub(before.cpu_ticks),
            self.children_cpu_ticks
                .saturating_sub(before.children_cpu_ticks),
        )
    }
}

/// One cluster's end: its upgrade's status and the simulator's verdict.
#[derive(Debug, Clone)]
pub struct ClusterEnd {
    pub cluster: String,
    pub upgrade: String,
    pub status: String,
    /// `SAFE` or `UNSAFE` (`baton-sim report --json`'s `verdict`, upper case).
    pub verdict: String,
    /// The human report, kept for an unsafe verdict.
    pub report: Option<String>,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub clusters: usize,
    pub timings: Timings,
    pub mode: Executors,
    /// Nodes served by the executors (3 per cluster).
    pub nodes: usize,
    /// From the moment the submits were started to the last upgrade's last
    /// timed event in the log (unix ms, the service's clock).
    pub wall_ms: u64,
    /// Steps with a recorded result, all upgrades.
    pub steps: usize,
    /// Events in the log, all upgrades.
    pub events: usize,
    /// Baton's own time per step, ms (see [`overheads`]), one per step
    /// whose executor reported a run time.
    pub overhead_ms: Vec<u64>,
    /// Steps without a run time in any executor's log (answered from the ledger).
    pub steps_untimed: usize,
    /// Each cluster's `baton submit --detach` process, from its spawn to its exit, ms (the first try; all
    /// were started at once): what a client waited, CLI start-up, TLS handshake and the service's answer.
    pub submit_ms: Vec<u64>,
    /// Step attempts (`<upgrade>:<step>:<attempt>`) whose command the executors' logs show started more
    /// than once (`step started`): none may be, the executors being never killed here.
    pub runs_repeated: Vec<String>,
    /// Measured when every upgrade had ended.
    pub service: Usage,
    pub executors: Usage,
    pub executor_count: usize,
    pub nats: Usage,
    /// CPU seconds spent during the run (from the submits to the end).
    pub cpu_s: CpuSeconds,
    pub ends: Vec<ClusterEnd>,
    /// `/proc/loadavg`'s first three fields before the fleet started and at the end.
    pub load_before: String,
    pub load_after: String,
    /// The service's restart, when the run killed it ([`Fleet::kill_service_at`]).
    pub recovery: Option<Recovery>,
}

/// A SIGKILL of `baton server` in the middle of the run and its restart on the same log, measured from the
/// restarted service's JSON log (its clock, the same machine as the bench's). Every time is from the restart
/// (the new process spawned), ms.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Upgrades listed and not ended at the last `list` before the kill.
    pub in_flight: usize,
    /// `step published` lines of the killed service.
    pub published_before_kill: usize,
    /// To `the log's checkpoints hold`: the log opened and verified (every chain and index).
    pub to_verified_ms: Option<u64>,
    /// To `workflow service starting`: NATS connected, the lease taken over, the start recorded.
    pub to_lease_ms: Option<u64>,
    /// To `JetStream streams and buckets ready` (`protocol::ensure`), when the service logs it.
    pub to_jetstream_ms: Option<u64>,
    /// To `checkpoints reconciled`: `BATON_CHECKPOINTS` read and checked, the heads past their last checkpoint
    /// signed, when the service logs it.
    pub to_reconciled_ms: Option<u64>,
    /// Checkpoints read from `BATON_CHECKPOINTS` and checkpoints signed at that reconciliation.
    pub checkpoints_read: u64,
    pub checkpoints_signed: u64,
    /// To the first `recovered unfinished upgrade`: the first loop's mirror checked, its steps next.
    pub to_first_loop_ms: Option<u64>,
    /// To `every unfinished upgrade recovered`.
    pub to_recovered_ms: Option<u64>,
    /// Sums over the recovered upgrades of their replay (`replay_us`) and mirror read (`mirror_read_us`),
    /// and the mirror messages read and events mirrored again (`mirror_messages`, `remirrored`).
    pub replay_ms_sum: f64,
    pub mirror_read_ms_sum: f64,
    pub mirror_messages: u64,
    pub remirrored: u64,
    /// To the first `step published` of the restarted service: the first re-dispatched step.
    pub to_first_step_ms: Option<u64>,
    /// To `workflow service ready`: every unfinished upgrade's loop running again, the API and the results'
    /// pull started.
    pub to_ready_ms: Option<u64>,
    /// `recovered unfinished upgrade` lines: loops restarted.
    pub loops: usize,
    /// `step published` lines before `ready`: steps re-dispatched during recovery.
    pub republished: usize,
    /// Step results the restarted service acked as strays (`result for an upgrade that is not running`)
    /// before `ready`: none may be, every upgrade in flight being recovered.
    pub stray_results: usize,
}

/// CPU seconds over the run, by who spent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSeconds {
    pub service: f64,
    pub executors: f64,
    /// The commands the executors ran (the simulator), reaped by them.
    pub commands: f64,
    pub nats: f64,
}

impl Outcome {
    pub fn steps_per_s(&self) -> f64 {
        self.steps as f64 * 1000.0 / self.wall_ms.max(1) as f64
    }

    pub fn events_per_s(&self) -> f64 {
        self.events as f64 * 1000.0 / self.wall_ms.max(1) as f64
    }

    /// The `q` quantile (0..=1) of the overheads, ms (nearest rank).
    pub fn overhead_quantile(&self, q: f64) -> Option<u64> {
        let mut sorted = self.overhead_ms.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
    }

    /// The executors' resident memory per served node, kB.
    pub fn executor_rss_per_node_kb(&self) -> u64 {
        self.executors.rss_kb / self.nodes.max(1) as u64
    }

    /// The `q` quantile (0..=1) of the submits' times, ms (nearest rank).
    pub fn submit_quantile(&self, q: f64) -> Option<u64> {
        let mut sorted = self.submit_ms.clone();
        sorted.sort_unstable();
        let n = sorted.len();
        (n > 0).then(|| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
    }

    pub fn overhead_mean(&self) -> Option<f64> {
        let n = self.overhead_ms.len();
        (n > 0).then(|| self.overhead_ms.iter().sum::<u64>() as f64 / n as f64)
    }

    /// Clusters whose verdict is not SAFE, or whose upgrade did not complete.
    pub fn failures(&self) -> Vec<&ClusterEnd> {
        self.ends
            .iter()
            .filter(|e| e.verdict != "SAFE" || e.status != "completed")
            .collect()
    }
}

/// The running fleet; dropping it stops every process and removes every dir.
pub struct Fleet {
    bins: Bins,
    timings: Timings,
    mode: Executors,
    // Dropped in declaration order: processes first, then their dirs.
    server: Option<Proc>,
    executors: Vec<Proc>,
    nats: NatsServer,
    secure: Secure,
    dir: TempDir,
    clusters: Vec<Cluster>,
    no_config: PathBuf,
    /// Kill the service once this share of the expected steps was published (`None`: never).
    kill_at: Option<f64>,
}

impl Fleet {
    /// Starts nats-server, the service and `n` clusters with their
    /// executors, and waits until the service sees every executor.
    pub async fn start(
        bins: &Bins,
        n: usize,
        timings: Timings,
        mode: Executors,
    ) -> anyhow::Result<Fleet> {
        anyhow::ensure!(n >= 1, "at least one cluster");
        let groups: Vec<String> = (1..=n)
            .flat_map(|k| (1..=NODES).map(move |i| format!("c{k}-backend-{i}")))
            .collect();
        let group_refs: Vec<&str> = groups.iter().map(String::as_str).collect();
        let secure = Secure::new(&group_refs)?;
        let nats = NatsServer::start_secured(&secure).await?;
        let dir = tempfile::Builder::new().prefix("baton-fleet-").tempdir()?;
        let no_config = dir.path().join("empty.toml");
        std::fs::write(&no_config, "")?;
        let package = dir.path().join(format!("chef-backend_{TARGET}_amd64.deb"));
        std::fs::write(&package, b"simulated package\n")?;
        let mut fleet = Fleet {
            bins: bins.clone(),
            timings,
            mode,
            server: None,
            executors: Vec::new(),
            nats,
            secure,
            dir,
            clusters: Vec::new(),
            no_config,
            kill_at: None,
        };
        for k in 1..=n {
            let cluster = fleet.make_cluster(k, &package)?;
            fleet.clusters.push(cluster);
        }
        fleet.server = Some(fleet.spawn_server()?);
        match mode {
            Executors::PerNode => {
                for c in 0..fleet.clusters.len() {
                    for i in 0..NODES {
                        let executor = fleet.spawn_executor(c, i)?;
                        fleet.executors.push(executor);
                    }
                }
            }
            Executors::One => {
                let executor = fleet.spawn_one_executor()?;
                fleet.executors.push(executor);
            }
        }
        fleet.wait_for_executors(&groups).await?;
        Ok(fleet)
    }

    /// `baton server` on the fleet's log, its output appended to `server.log`.
    fn spawn_server(&self) -> anyhow::Result<Proc> {
        let mut server = self.baton_as(&self.secure.service_key.clone());
        server
            .arg("server")
            .arg("--config")
            .arg(&self.no_config)
            .arg("--db")
            .arg(self.dir.path().join("baton.db"))
            .env("BATON_LOG_FORMAT", "json");
        Proc::spawn("baton server", server, &self.server_log())
    }

    fn server_log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Makes [`Fleet::run`] SIGKILL the service once `share` (0..1) of the run's expected steps were
    /// published, start it again on the same log at once, and measure its recovery ([`Recovery`]).
    pub fn kill_service_at(&mut self, share: f64) {
        self.kill_at = Some(share);
    }

    /// SIGKILLs the service, starts it again and waits until it is ready (or exits, or the timeout passes).
    async fn kill_and_restart(
        &mut self,
        in_flight: usize,
        published_before_kill: usize,
    ) -> anyhow::Result<Recovery> {
        let server = self.server.as_mut().context("the service runs")?;
        server.kill();
        let offset = std::fs::metadata(self.server_log()).map_or(0, |m| m.len());
        let restarted_ms = now_ms();
        self.server = Some(self.spawn_server()?);
        let timeout = Duration::from_secs(120 + self.clusters.len() as u64 / 2);
        let log = self.server_log();
        let ready = crate::wait_until(timeout, || {
            self.check_alive().is_ok() && log_since(&log, offset).contains("workflow service ready")
        })
        .await;
        self.check_alive()?;
        if !ready {
            bail!(
                "the restarted service was not ready within {timeout:?}; its log ends:\n{}",
                tail(&log_since(&log, offset), 20)
            );
        }
        let mut recovery = Recovery {
            in_flight,
            published_before_kill,
            ..Recovery::default()
        };
        let since = |at: u64| at.saturating_sub(restarted_ms);
        for line in log_since(&log, offset).lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let at = value["timestamp"].as_str().and_then(unix_ms);
            match value["fields"]["message"].as_str() {
                Some("the log's checkpoints hold") => recovery.to_verified_ms = at.map(since),
                Some("workflow service starting") => recovery.to_lease_ms = at.map(since),
                Some("JetStream streams and buckets ready") => {
                    recovery.to_jetstream_ms = at.map(since)
                }
                Some("the log agrees with BATON_CHECKPOINTS") => {
                    recovery.checkpoints_read = value["fields"]["off_box"].as_u64().unwrap_or(0);
                    recovery.checkpoints_signed = value["fields"]["recorded"].as_u64().unwrap_or(0);
                }
                Some("checkpoints reconciled") => recovery.to_reconciled_ms = at.map(since),
                Some("every unfinished upgrade recovered") => {
                    recovery.to_recovered_ms = at.map(since)
                }
                Some("recovered unfinished upgrade") => {
                    recovery.loops += 1;
                    if recovery.to_first_loop_ms.is_none() {
                        recovery.to_first_loop_ms = at.map(since);
                    }
                    let field = |name: &str| value["fields"][name].as_u64().unwrap_or(0);
                    recovery.replay_ms_sum += field("replay_us") as f64 / 1000.0;
                    recovery.mirror_read_ms_sum += field("mirror_read_us") as f64 / 1000.0;
                    recovery.mirror_messages += field("mirror_messages");
                    recovery.remirrored += field("remirrored");
                }
                Some("step published") => {
                    if recovery.to_first_step_ms.is_none() {
                        recovery.to_first_step_ms = at.map(since);
                    }
                    if recovery.to_ready_ms.is_none() {
                        recovery.republished += 1;
                    }
                }
                Some("result for an upgrade that is not running; acked and ignored")
                    if recovery.to_ready_ms.is_none() =>
                {
                    recovery.stray_results += 1;
                }
                Some("workflow service ready") if recovery.to_ready_ms.is_none() => {
                    recovery.to_ready_ms = at.map(since);
                }
                _ => {}
            }
        }
        // Printed at once: a run that fails later still shows it.
        eprintln!("fleet: service restarted: {recovery:?}");
        Ok(recovery)
    }

    fn make_cluster(&self, k: usize, package: &Path) -> anyhow::Result<Cluster> {
        let name = format!("fleet-{k}");
        let sim_dir = self.dir.path().join(&name);
        let out = Command::new(&self.bins.sim)
            .args(["init", "--dir"])
            .arg(&sim_dir)
            .args(["--nodes", &NODES.to_string(), "--version", FROM])
            .args(self.timings.sim_args())
            .output()?;
        if !out.status.success() {
            bail!(
                "baton-sim init: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let groups: Vec<String> = (1..=NODES).map(|i| format!("c{k}-backend-{i}")).collect();
        let mut toml = format!("[cluster]\nname = \"{name}\"\nprofile = \"chef-backend\"\n\n");
        for (i, group) in groups.iter().enumerate() {
            // Addresses differ between clusters (the service refuses the same
            // nodes under two clusters).
            toml.push_str(&format!(
                "[[nodes]]\nname = \"backend-{}\"\naddress = \"10.{}.{}.{}\"\nexecutor = \"{group}\"\n\n",
                i + 1,
                k >> 8,
                k & 0xff,
                i + 1
            ));
        }
        toml.push_str(&format!(
            "[upgrade]\npackage = \"{}\"\ninstaller = \"dpkg\"\nprocedure = \"runbook\"\n{}",
            package.display(),
            self.timings.upgrade_section()
        ));
        let file = sim_dir.join("cluster.toml");
        std::fs::write(&file, toml)?;
        Ok(Cluster {
            name,
            sim_dir,
            file,
            groups,
        })
    }

    /// `baton` with `key` for signing and for NATS (nkey, TLS).
    fn baton_as(&self, key: &Path) -> Command {
        let mut cmd = Command::new(&self.bins.baton);
        cmd.env("BATON_NATS_URL", self.nats.url())
            .env_remove("BATON_OUTPUT")
            .env_remove("RUST_LOG");
        for (name, value) in self.secure.env_for(key) {
            cmd.env(name, value);
        }
        cmd
    }

    /// The CLI as operator alice.
    fn cli(&self, args: &[&str]) -> anyhow::Result<Output> {
        let alice = self.secure.operator_key("alice").to_path_buf();
        Ok(self.baton_as(&alice).args(args).output()?)
    }

    /// The executor of node `i` of cluster `c`, that node's simulator tools first in PATH.
    fn spawn_executor(&self, c: usize, i: usize) -> anyhow::Result<Proc> {
        let cluster = &self.clusters[c];
        let group = &cluster.groups[i];
        let node = format!("backend-{}", i + 1);
        let path = format!(
            "{}:{}",
            cluster
                .sim_dir
                .join("nodes")
                .join(&node)
                .join("bin")
                .display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = self.baton_as(self.secure.executor_key(group));
        cmd.args(["executor", "--group", group, "--nodes", &node])
            .arg("--config")
            .arg(&self.no_config)
            .args(["--procedure", "runbook"])
            .arg("--state-dir")
            .arg(self.dir.path().join("executors").join(group))
            .env("PATH", path)
            .env("BATON_LOG_FORMAT", "json");
        let log = self.executor_log(group);
        Proc::spawn(&format!("executor {group}"), cmd, &log)
    }

    /// One executor for every node of every cluster: the first group by
    /// flags (its key from the environment, as a per-node executor's), every
    /// other group a `serve` entry of its config file.
    fn spawn_one_executor(&self) -> anyhow::Result<Proc> {
        let bin_dir =
            |cluster: &Cluster| format!("{}/nodes/{{node}}/bin", cluster.sim_dir.display());
        let first = &self.clusters[0];
        let mut serve = Vec::new();
        for cluster in &self.clusters {
            for group in &cluster.groups {
                if *group == first.groups[0] {
                    continue;
                }
                serve.push(format!(
                    "group={group},key={},cluster={},node_bin_dir={}",
                    self.secure.executor_key(group).display(),
                    cluster.file.display(),
                    bin_dir(cluster)
                ));
            }
        }
        let config = self.dir.path().join("executor.toml");
        let list: Vec<String> = serve.iter().map(|s| format!("  {s:?},")).collect();
        std::fs::write(&config, format!("serve = [\n{}\n]\n", list.join("\n")))?;
        let group = &first.groups[0];
        let mut cmd = self.baton_as(self.secure.executor_key(group));
        cmd.args(["executor", "--group", group])
            .arg("--cluster")
            .arg(&first.file)
            .arg("--config")
            .arg(&config)
            .arg("--node-bin-dir")
            .arg(bin_dir(first))
            .arg("--state-dir")
            .arg(self.dir.path().join("executors").join("all"))
            .env("BATON_LOG_FORMAT", "json");
        Proc::spawn("executor (all nodes)", cmd, &self.executor_log("all"))
    }

    fn executor_log(&self, group: &str) -> PathBuf {
        self.dir.path().join(format!("executor-{group}.log"))
    }

    /// Every executor's log file.
    fn executor_logs(&self) -> Vec<PathBuf> {
        match self.mode {
            Executors::One => vec![self.executor_log("all")],
            Executors::PerNode => self
                .clusters
                .iter()
                .flat_map(|c| c.groups.iter().map(|g| self.executor_log(g)))
                .collect(),
        }
    }

    async fn wait_for_executors(&self, groups: &[String]) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(60 + groups.len() as u64 / 2);
        let mut missing = groups.len();
        let up = crate::wait_until(timeout, || {
            self.check_alive().is_ok() && {
                let online = self
                    .cli(&["--output", "json", "--api-timeout", "5", "executors"])
                    .map(|out| online_groups(&out.stdout))
                    .unwrap_or_default();
                missing = groups.iter().filter(|g| !online.contains(*g)).count();
                missing == 0
            }
        })
        .await;
        self.check_alive()?;
        if !up {
            bail!(
                "{missing} of {} executors were not online within {timeout:?}",
                groups.len()
            );
        }
        Ok(())
    }

    /// An error naming the first child that has exited (a zombie: nothing
    /// reaps it but its [`Proc`]).
    fn check_alive(&self) -> anyhow::Result<()> {
        for proc in self.server.iter().chain(&self.executors) {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", proc.pid())).unwrap_or_default();
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if matches!(state, None | Some("Z") | Some("X")) {
                bail!(
                    "{} exited; its log ends:\n{}",
                    proc.name(),
                    tail(&proc.log(), 20)
                );
            }
        }
        Ok(())
    }

    fn usage(&self) -> anyhow::Result<(Usage, Usage, Usage)> {
        let server = self.server.as_ref().context("the service runs")?;
        let service = Usage::of(server.pid().as_raw())?;
        let mut executors = Usage::default();
        for executor in &self.executors {
            executors.add(Usage::of(executor.pid().as_raw())?);
        }
        let nats = self
            .nats
            .pid()
            .map(|pid| Usage::of(pid.as_raw()))
            .transpose()?
            .unwrap_or_default();
        Ok((service, executors, nats))
    }

    /// Submits every cluster's upgrade at once (one `baton submit` process
    /// each, started together), waits until all have ended, and measures.
    pub async fn run(&mut self) -> anyhow::Result<Outcome> {
        let load_before = loadavg();
        let (service0, executors0, nats0) = self.usage()?;
        let submitted_ms = now_ms();
        let mut submits = Vec::new();
        for cluster in &self.clusters {
            let alice = self.secure.operator_key("alice").to_path_buf();
            let mut cmd = self.baton_as(&alice);
            cmd.args(["--api-timeout", "60", "submit", "--detach", "--cluster"])
                .arg(&cluster.file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            submits.push((cmd.spawn()?, std::time::Instant::now()));
        }
        // One waiting thread per submit, so that each is timed when it exits, not when its turn to be read comes.
        let waited: Vec<std::io::Result<(Output, u64)>> = std::thread::scope(|scope| {
            let waiters: Vec<_> = submits
                .into_iter()
                .map(|(child, spawned)| {
                    scope.spawn(move || {
                        let out = child.wait_with_output()?;
                        let took = u64::try_from(spawned.elapsed().as_millis()).unwrap_or(u64::MAX);
                        Ok((out, took))
                    })
                })
                .collect();
            waiters
                .into_iter()
                .map(|waiter| {
                    waiter
                        .join()
                        .expect("a submit's waiting thread does not panic")
                })
                .collect()
        });
        let mut upgrades = Vec::new();
        let mut submit_ms = Vec::new();
        for (submit, cluster) in waited.into_iter().zip(&self.clusters) {
            let (mut out, took) = submit?;
            submit_ms.push(took);
            // Hundreds of CLI processes shaking hands over TLS at once: nats-server drops some
            // (from N = 100 up under load). Such a submit never reached the service; it is run
            // again, at most twice, on its own.
            for _ in 0..2 {
                if out.status.success()
                    || !String::from_utf8_lossy(&out.stderr).contains("connecting to NATS")
                {
                    break;
                }
                let alice = self.secure.operator_key("alice").to_path_buf();
                out = self
                    .baton_as(&alice)
                    .args(["--api-timeout", "60", "submit", "--detach", "--cluster"])
                    .arg(&cluster.file)
                    .output()?;
            }
            if !out.status.success() {
                bail!(
                    "submit of {} failed ({}): {}",
                    cluster.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            upgrades.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
        }

        // Poll `baton list` (one request for all, every LIST_EVERY: each call replays
        // every upgrade's log in the service) until every upgrade has ended.
        let timeout = match self.timings {
            Timings::Zero => Duration::from_secs(60 + 2 * upgrades.len() as u64),
            Timings::Demo => Duration::from_secs(120 + 2 * upgrades.len() as u64),
        } + if self.kill_at.is_some() {
            // The restart: verification, recovery, the executors' redeliveries.
            Duration::from_secs(120 + upgrades.len() as u64)
        } else {
            Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut poll = tokio::time::interval(LIST_EVERY);
        let mut statuses: BTreeMap<String, String> = BTreeMap::new();
        let mut recovery = None;
        // With zero-time commands each upgrade publishes 81 steps (more with the demo's timings).
        let kill_after = self
            .kill_at
            .map(|share| (share * (81 * upgrades.len()) as f64) as usize);
        let ended = loop {
            poll.tick().await;
            self.check_alive()?;
            if let Ok(out) = self.cli(&["--output", "json", "--api-timeout", "10", "list"]) {
                let rows: Vec<serde_json::Value> =
                    serde_json::from_slice(&out.stdout).unwrap_or_default();
                for row in rows {
                    if let (Some(u), Some(s)) = (row["upgrade"].as_str(), row["status"].as_str()) {
                        statuses.insert(u.to_string(), s.to_string());
                    }
                }
            }
            if let (Some(after), None) = (kill_after, &recovery) {
                let published = log_since(&self.server_log(), 0)
                    .matches("\"step published\"")
                    .count();
                if published >= after {
                    let in_flight = upgrades
                        .iter()
                        .filter(|u| {
                            statuses
                                .get(*u)
                                .is_some_and(|s| !ENDED.contains(&s.as_str()))
                        })
                        .count();
                    recovery = Some(self.kill_and_restart(in_flight, published).await?);
                    continue;
                }
            }
            let all = upgrades
                .iter()
                .all(|u| statuses.get(u).is_some_and(|s| ENDED.contains(&s.as_str())));
            if all || tokio::time::Instant::now() >= deadline {
                break all;
            }
        };
        let (service, executors, nats) = self.usage()?;
        let load_after = loadavg();
        if !ended {
            let open = upgrades
                .iter()
                .filter(|u| {
                    !statuses
                        .get(*u)
                        .is_some_and(|s| ENDED.contains(&s.as_str()))
                })
                .count();
            bail!(
                "{open} of {} upgrades had not ended after {timeout:?}; the service's log ends:\n{}",
                upgrades.len(),
                self.server.as_ref().map(|s| tail(&s.log(), 20)).unwrap_or_default()
            );
        }

        // The log of every upgrade, through the service.
        let mut run_ms = BTreeMap::new();
        let mut starts: BTreeMap<String, usize> = BTreeMap::new();
        for log in self.executor_logs() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            run_ms.extend(reported_run_times(&text));
            for key in started_steps(&text) {
                *starts.entry(key).or_default() += 1;
            }
        }
        let runs_repeated: Vec<String> = starts
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(key, _)| key)
            .collect();
        let mut steps = 0;
        let mut events = 0;
        let mut last_ms = submitted_ms;
        let mut overhead_ms = Vec::new();
        let mut steps_untimed = 0;
        for upgrade in &upgrades {
            let out = self.cli(&["--api-timeout", "60", "replay", upgrade, "--json"])?;
            if !out.status.success() {
                bail!(
                    "replay of {upgrade} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let value: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let logged: Vec<serde_json::Value> = value["events"]
                .as_array()
                .context("replay --json has events")?
                .iter()
                .map(|e| e["event"].clone())
                .collect();
            events += logged.len();
            last_ms = last_ms.max(logged.iter().filter_map(at_ms).max().unwrap_or(0));
            let per_step = overheads(upgrade, &logged, &run_ms);
            steps += per_step.len();
            for overhead in per_step {
                match overhead {
                    Some(ms) => overhead_ms.push(ms),
                    None => steps_untimed += 1,
                }
            }
        }

        let mut ends = Vec::new();
        for (cluster, upgrade) in self.clusters.iter().zip(&upgrades) {
            let (verdict, report) = self.verdict(cluster)?;
            ends.push(ClusterEnd {
                cluster: cluster.name.clone(),
                upgrade: upgrade.clone(),
                status: statuses.get(upgrade).cloned().unwrap_or_default(),
                verdict,
                report,
            });
        }
        let tick = ticks_per_s();
        let secs = |t: u64| t as f64 / tick;
        let (service_cpu, _) = service.cpu_since(&service0);
        let (executors_cpu, commands_cpu) = executors.cpu_since(&executors0);
        let (nats_cpu, _) = nats.cpu_since(&nats0);
        Ok(Outcome {
            clusters: self.clusters.len(),
            timings: self.timings,
            mode: self.mode,
            nodes: self.clusters.len() * NODES,
            wall_ms: last_ms.saturating_sub(submitted_ms),
            steps,
            events,
            overhead_ms,
            steps_untimed,
            submit_ms,
            runs_repeated,
            service,
            executors,
            executor_count: self.executors.len(),
            nats,
            cpu_s: CpuSeconds {
                service: secs(service_cpu),
                executors: secs(executors_cpu),
                commands: secs(commands_cpu),
                nats: secs(nats_cpu),
            },
            ends,
            load_before,
            load_after,
            recovery,
        })
    }

    /// `baton-sim report --json`'s verdict, with the human report when unsafe.
    fn verdict(&self, cluster: &Cluster) -> anyhow::Result<(String, Option<String>)> {
        let report = |json: bool| {
            let mut cmd = Command::new(&self.bins.sim);
            cmd.args(["report", "--dir"]).arg(&cluster.sim_dir);
            if json {
                cmd.arg("--json");
            }
            cmd.output()
        };
        let out = report(true)?;
        let value: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "baton-sim report of {}: {}",
                cluster.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        let verdict = value["verdict"]
            .as_str()
            .context("the report has a verdict")?
            .to_uppercase();
        let human = (verdict != "SAFE")
            .then(|| report(false).map(|o| String::from_utf8_lossy(&o.stdout).into_owned()))
            .transpose()?;
        Ok((verdict, human))
    }

    /// With `BATON_FLEET_KEEP_LOGS=<dir>`, copies the service's, the executors' and nats-server's logs into a
    /// new `<dir>/fleet-<unix ms>/` (the fleet's own dir is removed when it drops), whatever the run's outcome:
    /// a failed run's logs, or a passing run's to compare with. Said on stderr; a copy that fails is said too,
    /// and does not hide the run's own error.
    pub fn keep_logs(&self) {
        let Some(root) = std::env::var_os("BATON_FLEET_KEEP_LOGS") else {
            return;
        };
        let into = PathBuf::from(root).join(format!("fleet-{}", now_ms()));
        let copied = std::fs::create_dir_all(&into).and_then(|()| {
            for log in std::iter::once(self.server_log()).chain(self.executor_logs()) {
                if let Some(name) = log.file_name() {
                    std::fs::copy(&log, into.join(name))?;
                }
            }
            std::fs::write(into.join("nats-server.log"), self.nats.log())
        });
        match copied {
            Ok(()) => eprintln!("fleet: the run's logs are kept in {}", into.display()),
            Err(err) => eprintln!(
                "fleet: could not keep the run's logs in {}: {err}",
                into.display()
            ),
        }
    }

    /// Stops the executors and the service with SIGTERM (SIGKILL after 10 s);
    /// dropping the fleet afterwards removes its dirs.
    pub fn stop(&mut self) {
        for proc in self.executors.iter().chain(&self.server) {
            proc.signal(Signal::SIGTERM);
        }
        for proc in self.executors.iter_mut().chain(&mut self.server) {
            if proc.wait_exit(Duration::from_secs(10)).is_none() {
                proc.kill();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a fleet of `n` clusters, runs it, stops it.
pub async fn run(
    bins: &Bins,
    n: usize,
    timings: Timings,
    mode: Executors,
) -> anyhow::Result<Outcome> {
    run_with(bins, n, timings, mode, None).await
}

/// [`run`], killing the service once `kill_at` (0..1) of the expected steps were published and restarting it
/// ([`Fleet::kill_service_at`]); `None`: as [`run`].
pub async fn run_with(
    bins: &Bins,
    n: usize,
    timings: Timings,
    mode: Executors,
    kill_at: Option<f64>,
) -> anyhow::Result<Outcome> {
    let mut fleet = Fleet::start(bins, n, timings, mode).await?;
    if let Some(share) = kill_at {
        fleet.kill_service_at(share);
    }
    let outcome = fleet.run().await;
    fleet.stop();
    fleet.keep_logs();
    outcome
}

/// The run time each executor reported, by request key (`<upgrade>:<step>:<attempt>`):
/// `elapsed_ms` (its `finished_ms - started_ms`) of the `step finished`
/// lines of an executor's JSON log.
pub fn reported_run_times(log: &str) -> BTreeMap<String, u64> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "step finished")
        .filter_map(|v| {
            Some((
                v["span"]["key"].as_str()?.to_string(),
                v["fields"]["elapsed_ms"].as_u64()?,
            ))
        })
        .collect()
}

/// The `<upgrade>:<step>:<attempt>` of every `step started` line of an
/// executor's JSON log (the command about to run), once per line.
pub fn started_steps(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["fields"]["message"] == "step started")
        .filter_map(|v| Some(v["span"]["key"].as_str()?.to_string()))
        .collect()
}

/// Baton's own time for each step of `upgrade` with a recorded result, ms
/// (`None` when no executor log reported its run time):
///
/// `StepResultRecorded.at_ms` (the service received the result) minus the
/// step's decision time (the `at_ms` of the input its `StepScheduled` was
/// decided on: the nearest earlier event of the log that carries a time, as
/// every decision's batch starts with its recorded input) minus the run time
/// the executor reported. It covers the decision batch's append and flush,
/// the publish and its ack, the delivery, the executor's checks, claim and
/// ledger writes, the result's publish and the service's pull; not the
/// command itself, nor any wait the core chose (polls, timers).
pub fn overheads(
    upgrade: &str,
    events: &[serde_json::Value],
    run_ms: &BTreeMap<String, u64>,
) -> Vec<Option<u64>> {
    let mut decided: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    let mut last_time = None;
    let mut out = Vec::new();
    for event in events {
        let (step, attempt) = (event["step"].as_u64(), event["attempt"].as_u64());
        if event["type"] == "StepScheduled" {
            if let (Some(step), Some(attempt), Some(at)) = (step, attempt, last_time) {
                decided.insert((step, attempt), at);
            }
        }
        if event["type"] == "StepResultRecorded" {
            let (Some(step), Some(attempt), Some(at)) = (step, attempt, at_ms(event)) else {
                continue;
            };
            let total = decided
                .remove(&(step, attempt))
                .map(|d| at.saturating_sub(d));
            let run = run_ms.get(&format!("{upgrade}:{step}:{attempt}"));
            out.push(total.zip(run).map(|(t, r)| t.saturating_sub(*r)));
        }
        if let Some(at) = at_ms(event) {
            last_time = Some(at);
        }
    }
    out
}

/// The `at_ms` of an event that records a time (`{"type": "...", "at_ms": ..}`).
fn at_ms(event: &serde_json::Value) -> Option<u64> {
    event.get("at_ms")?.as_u64()
}

/// The groups in `baton --output json executors`.
fn online_groups(json: &[u8]) -> Vec<String> {
    let executors: Vec<serde_json::Value> = serde_json::from_slice(json).unwrap_or_default();
    executors
        .iter()
        .filter_map(|e| e["group"].as_str().map(str::to_string))
        .collect()
}

/// The first three fields of `/proc/loadavg`.
/// The text of a log file from byte `offset` on (empty when unreadable).
fn log_since(path: &Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let from = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

/// Unix ms of an RFC 3339 UTC time as tracing writes it (`2026-11-30T01:16:47.123456Z`).
pub fn unix_ms(text: &str) -> Option<u64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    let ms: i64 = format!("{:0<3}", &frac[..frac.len().min(3)]).parse().ok()?;
    // Days from the civil date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60 + sec)
        .ok()
        .map(|s| s * 1000 + ms as u64)
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn ticks_per_s() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_overhead_is_decision_to_result_minus_the_reported_run() {
        let events = vec![
            json!({"type": "UpgradeSubmitted", "at_ms": 1000}),
            json!({"type": "PhaseEntered", "at_ms": 1001}),
            json!({"type": "StepScheduled", "step": 1, "attempt": 1}),
            json!({"type": "StepResultRecorded", "step": 1, "attempt": 1, "at_ms": 1010}),
            json!({"type": "StepScheduled", "step": 2, "attempt": 1}),
            json!({"type": "StepResultRecorded", "step": 2, "attempt": 1, "at_ms": 1030}),
        ];
        let runs = BTreeMap::from([("u:1:1".to_string(), 4)]);
        // Step 1: decided at 1001, received at 1010, ran 4 ms: 5 ms. Step 2: no run time.
        assert_eq!(overheads("u", &events, &runs), vec![Some(5), None]);
    }

    #[test]
    fn log_times_are_unix_ms() {
        assert_eq!(unix_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            unix_ms("2026-11-30T01:16:47.123456Z"),
            Some(1_796_001_407_123)
        );
        assert_eq!(unix_ms("2024-02-29T23:59:59.5Z"), Some(1_709_251_199_500));
        assert_eq!(unix_ms("yesterday"), None);
    }

    #[test]
    fn run_times_come_from_the_step_finished_lines() {
        let log = concat!(
            r#"{"fields":{"message":"step started"},"span":{"key":"u:1:1"}}"#,
            "\n",
            r#"{"fields":{"message":"step finished","elapsed_ms":7},"span":{"key":"u:1:1"}}"#,
            "\nnot json\n"
        );
        assert_eq!(
            reported_run_times(log),
            BTreeMap::from([("u:1:1".to_string(), 7)])
        );
    }
}
