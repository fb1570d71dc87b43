//! A real 3-member etcd cluster on loopback (scripts/real/etcd/, docs/real-clusters.md): started on the old
//! version of `scripts/real/etcd/versions.env`, a writer through etcd's v3 JSON gateway, the manual baseline, and
//! what a test checks afterwards (who leads, which version each member runs, each member's action journal).
//!
//! ```no_run
//! let cluster = tests::real::etcd::EtcdCluster::start().unwrap();
//! let writer = cluster.start_writer().unwrap();
//! // ... upgrade cluster.cluster_file() (its nodes: cluster.node_names()) ...
//! let report = writer.stop().unwrap();
//! assert_eq!(report.lost, 0);
//! ```
//! Dropping the cluster stops every member (`cluster.sh down`) and removes its directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::process::{workspace_root, Proc};

/// The scripts of the harness.
fn script(name: &str) -> PathBuf {
    workspace_root().join("scripts/real/etcd").join(name)
}

/// Runs a command to its end; its stdout, or an error with its stderr.
fn output(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("could not run {what} ({cmd:?})"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `KEY=VALUE` lines (comments and blank lines skipped).
fn key_values(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Polls `cond` every 50 ms until it yields a value or `timeout` passes.
fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Installs the pinned etcd versions into .tools/etcd if they are not there yet (idempotent; fails with the
/// command that installs a missing dependency).
pub fn install() -> anyhow::Result<()> {
    output(
        Command::new("bash").arg(workspace_root().join("scripts/real/install-etcd.sh")),
        "scripts/real/install-etcd.sh",
    )
    .map(|_| ())
}

/// One member as the cluster file names it.
#[derive(Debug, Clone)]
pub struct EtcdNode {
    /// `m1`, `m2`, `m3`.
    pub name: String,
    /// Its client address, `127.0.0.1:PORT` (the cluster file's `address`).
    pub address: String,
    /// Its directory (data, pid, log, `current`, `actions.log`).
    pub dir: PathBuf,
    /// Its control command (`{var.ctl}`): `ctl stop|start|install PACKAGE|...`.
    pub ctl: PathBuf,
    /// Its member ID in hex, as move-leader takes it.
    pub member_id: String,
}

/// One member's own `endpoint status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub name: String,
    pub version: String,
    pub is_leader: bool,
    pub raft_index: u64,
    pub applied_index: u64,
}

/// One line of a member's `actions.log`: what changed on it, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub at_unix_ms: u64,
    pub node: String,
    /// `stop`, `start`, `install`, `install-unchanged`.
    pub action: String,
    /// The version installed or started (empty for `stop`).
    pub version: String,
}

/// A running 3-member etcd cluster in a temporary directory; stopped and removed on drop.
pub struct EtcdCluster {
    root: tempfile::TempDir,
    cluster_file: PathBuf,
    nodes: Vec<EtcdNode>,
    endpoints: String,
    old_version: String,
    new_version: String,
    new_package: PathBuf,
    down: bool,
}

impl EtcdCluster {
    /// Installs the etcd versions if needed, starts 3 members on the old version on free loopback ports and waits
    /// until they answer.
    /// Tries up to 3 times: the free ports are picked before etcd binds them, so another process may take one in
    /// between.
    pub fn start() -> anyhow::Result<EtcdCluster> {
        install()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once() {
                Ok(cluster) => return Ok(cluster),
                Err(e) if attempt >= 3 => {
                    return Err(e.context("the etcd cluster did not come up in 3 attempts"))
                }
                Err(_) => continue,
            }
        }
    }

    fn start_once() -> anyhow::Result<EtcdCluster> {
        let root = tempfile::Builder::new().prefix("baton-etcd-").tempdir()?;
        let up = output(
            Command::new(script("cluster.sh"))
                .arg("up")
                .arg(root.path()),
            "cluster.sh up",
        );
        if let Err(e) = up {
            let _ = Command::new(script("cluster.sh"))
                .arg("down")
                .arg(root.path())
                .output();
            return Err(e);
        }
        let env = key_values(&std::fs::read_to_string(root.path().join("cluster.env"))?);
        let get = |k: &str| {
            env.get(k)
                .cloned()
                .ok_or_else(|| anyhow!("cluster.env has no {k}"))
        };
        let endpoints = get("endpoints")?;
        let addresses: Vec<&str> = endpoints.split(',').collect();
        let mut nodes = Vec::new();
        for (i, name) in get("members")?.split_whitespace().enumerate() {
            let dir = root.path().join(name);
            nodes.push(EtcdNode {
                name: name.to_string(),
                address: addresses
                    .get(i)
                    .ok_or_else(|| anyhow!("cluster.env: fewer endpoints than members"))?
                    .to_string(),
                ctl: dir.join("ctl"),
                dir,
                member_id: get(&format!("{name}_id"))?,
            });
        }
        Ok(EtcdCluster {
            cluster_file: root.path().join("cluster.toml"),
            nodes,
            endpoints,
            old_version: get("old_version")?,
            new_version: get("new_version")?,
            new_package: PathBuf::from(get("new_package")?),
            root,
            down: false,
        })
    }

    /// The cluster's directory (one subdirectory per member).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The Baton cluster file (`[cluster] profile` names profiles/etcd.toml; `[upgrade] package` the new version).
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    pub fn nodes(&self) -> &[EtcdNode] {
        &self.nodes
    }

    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn node(&self, name: &str) -> anyhow::Result<&EtcdNode> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| anyhow!("no member {name}"))
    }

    /// Every member's client address, comma-separated.
    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    pub fn old_version(&self) -> &str {
        &self.old_version
    }

    pub fn new_version(&self) -> &str {
        &self.new_version
    }

    /// The package directory of the new version (the cluster file's `[upgrade] package`).
    pub fn new_package(&self) -> &Path {
        &self.new_package
    }

    fn etcdctl(&self) -> PathBuf {
        self.new_package.join("bin/etcdctl")
    }

    /// Each reachable member's own status (a stopped member is left out).
    pub fn status(&self) -> anyhow::Result<Vec<MemberStatus>> {
        let out = Command::new(self.etcdctl())
            .args(["--endpoints", &self.endpoints])
            .args(["--dial-timeout=1s", "--command-timeout=3s"])
            .args(["endpoint", "status", "-w", "json"])
            .output()
            .context("could not run etcdctl endpoint status")?;
        // etcdctl exits 1 when a member does not answer, and still prints the others.
        let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "etcdctl endpoint status: not JSON: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        let mut members = Vec::new();
        for m in json.as_array().ok_or_else(|| anyhow!("not an array"))? {
            let endpoint = m["Endpoint"].as_str().unwrap_or_default();
            let node = self
                .nodes
                .iter()
                .find(|n| n.address == endpoint)
                .ok_or_else(|| anyhow!("unknown endpoint {endpoint}"))?;
            let s = &m["Status"];
            let num = |p: &str| {
                s.pointer(p)
                    .and_then(Value::as_u64)
                    .ok_or_else(|| anyhow!("{endpoint}: no {p}"))
            };
            members.push(MemberStatus {
                name: node.name.clone(),
                version: s["version"].as_str().unwrap_or_default().to_string(),
                is_leader: num("/header/member_id")? == num("/leader")?,
                raft_index: num("/raftIndex")?,
                applied_index: num("/raftAppliedIndex")?,
            });
        }
        Ok(members)
    }

    /// The member that leads now, waiting up to 10 s for one.
    pub fn leader(&self) -> anyhow::Result<String> {
        poll(Duration::from_secs(10), || {
            self.status()
                .ok()?
                .into_iter()
                .find(|m| m.is_leader)
                .map(|m| m.name)
        })
        .ok_or_else(|| anyhow!("no member leads after 10 s"))
    }

    /// The version the member's process runs now (`ctl running-version`).
    pub fn running_version(&self, node: &str) -> anyhow::Result<String> {
        let out = output(
            Command::new(&self.node(node)?.ctl).arg("running-version"),
            "ctl running-version",
        )?;
        let json: Value = serde_json::from_str(&out)?;
        json.pointer("/0/Status/version")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: running-version printed no version: {out}"))
    }

    /// The version the member runs after its next start (`ctl installed-version`).
    pub fn installed_version(&self, node: &str) -> anyhow::Result<String> {
        let out = output(
            Command::new(&self.node(node)?.ctl).arg("installed-version"),
            "ctl installed-version",
        )?;
        out.lines()
            .find_map(|l| l.strip_prefix("etcd Version: "))
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: installed-version printed no version: {out}"))
    }

    /// Every member's action journal, merged in time order (the initial install of the old version included).
    pub fn actions(&self) -> anyhow::Result<Vec<Action>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            let path = node.dir.join("actions.log");
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                let (at, action) = match f.as_slice() {
                    [at, action, ..] => (at.parse::<u64>()?, action.to_string()),
                    _ => bail!("{}: bad line {line:?}", path.display()),
                };
                let version = match action.as_str() {
                    "start" => f.get(3),
                    "install" | "install-unchanged" => f.get(2),
                    _ => None,
                };
                all.push(Action {
                    at_unix_ms: at,
                    node: node.name.clone(),
                    action,
                    version: version.map(|v| v.to_string()).unwrap_or_default(),
                });
            }
        }
        all.sort_by_key(|a| a.at_unix_ms);
        Ok(all)
    }

    /// Starts the writer (scripts/real/etcd/writer.py) and waits until its first write is acknowledged.
    pub fn start_writer(&self) -> anyhow::Result<Writer> {
        if Command::new("python3").arg("--version").output().is_err() {
            bail!("the etcd writer needs python3: apt-get install python3");
        }
        let dir = tempfile::Builder::new()
            .prefix("writer-")
            .tempdir_in(self.root())?;
        let dir = dir.keep();
        let stop_file = dir.join("stop");
        let ready_file = dir.join("ready");
        let report_file = dir.join("report.json");
        let mut cmd = Command::new("python3");
        cmd.arg(script("writer.py"))
            .args(["--endpoints", &self.endpoints])
            .arg("--log")
            .arg(dir.join("writes.jsonl"))
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--report")
            .arg(&report_file);
        let mut proc = Proc::spawn("etcd-writer", cmd, &dir.join("writer.out"))?;
        let ready = poll(Duration::from_secs(20), || {
            if ready_file.exists() {
                return Some(true);
            }
            proc.wait_exit(Duration::ZERO).map(|_| false)
        });
        if ready != Some(true) {
            let log = proc.log();
            proc.kill();
            bail!("the writer acknowledged no write in 20 s: {log}");
        }
        Ok(Writer {
            proc,
            stop_file,
            report_file,
            log: dir.join("writes.jsonl"),
        })
    }

    /// Runs the manual baseline (scripts/real/etcd/manual-upgrade.sh) to the new version.
    pub fn run_manual_upgrade(&self) -> anyhow::Result<ManualRun> {
        let started = Instant::now();
        let out = output(
            Command::new(script("manual-upgrade.sh")).arg(self.root()),
            "manual-upgrade.sh",
        )?;
        let wall = started.elapsed();
        let done = out
            .lines()
            .find_map(|l| l.strip_prefix("done "))
            .ok_or_else(|| anyhow!("manual-upgrade.sh printed no done line: {out}"))?;
        let fields: BTreeMap<&str, &str> = done
            .split_whitespace()
            .filter_map(|f| f.split_once('='))
            .collect();
        let field = |k: &str| {
            fields
                .get(k)
                .map(|v| v.to_string())
                .ok_or_else(|| anyhow!("done line without {k}: {done}"))
        };
        Ok(ManualRun {
            wall,
            old_leader: field("leader")?,
            new_leader: field("target")?,
            order: field("order")?.split(',').map(str::to_string).collect(),
            output: out,
        })
    }

    /// Stops every member (idempotent). Drop does it too.
    pub fn down(&mut self) -> anyhow::Result<()> {
        self.down = true;
        output(
            Command::new(script("cluster.sh"))
                .arg("down")
                .arg(self.root()),
            "cluster.sh down",
        )
        .map(|_| ())
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.down();
        }
    }
}

/// What the manual baseline did.
#[derive(Debug, Clone)]
pub struct ManualRun {
    pub wall: Duration,
    /// The member that led when it started (upgraded last).
    pub old_leader: String,
    /// The upgraded member it moved leadership to.
    pub new_leader: String,
    /// The members in the order it upgraded them.
    pub order: Vec<String>,
    /// Its output: one line per step.
    pub output: String,
}

/// The writer's report (scripts/real/etcd/writer.py documents each field).
#[derive(Debug, Clone)]
pub struct WriterReport {
    pub attempts: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Acknowledged writes missing or different on read-back: must be 0.
    pub lost: u64,
    pub failed_but_present: u64,
    pub duration_ms: f64,
    pub longest_gap_ms: f64,
    pub longest_gap_from_unix_ms: u64,
    pub longest_gap_to_unix_ms: u64,
    /// The sum of the gaps between acknowledgements longer than `gap_threshold_ms`.
    pub unavailable_ms: f64,
    pub availability: f64,
    pub gap_threshold_ms: f64,
    /// Each gap above the threshold: (from, to) in Unix ms.
    pub gaps: Vec<(u64, u64)>,
    pub writes_per_s: f64,
    pub lost_keys: Vec<String>,
    /// When the writer started, in Unix ms (its log's times count from there).
    pub started_unix_ms: u64,
    /// Its log: one JSON line per write attempt.
    pub log: PathBuf,
    /// The report as the writer printed it.
    pub raw: String,
}

impl WriterReport {
    /// How many writes were acknowledged between two instants (Unix ms), from the writer's log.
    pub fn acknowledged_between(
        &self,
        from_unix_ms: u64,
        to_unix_ms: u64,
    ) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("{}", self.log.display()))?;
        let mut n = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}: not JSON: {line}", self.log.display()))?;
            if let Some(acked) = v["acked_ms"].as_f64() {
                let at = self.started_unix_ms as f64 + acked;
                if at >= from_unix_ms as f64 && at <= to_unix_ms as f64 {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn parse(raw: &str, log: PathBuf) -> anyhow::Result<WriterReport> {
        let v: Value = serde_json::from_str(raw).context("the writer's report is not JSON")?;
        let u = |k: &str| v[k].as_u64().ok_or_else(|| anyhow!("report: no {k}"));
        let f = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("report: no {k}"));
        let gaps = v["gaps"]
            .as_array()
            .ok_or_else(|| anyhow!("report: no gaps"))?
            .iter()
            .map(|g| Some((g["from_unix_ms"].as_u64()?, g["to_unix_ms"].as_u64()?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow!("report: bad gaps"))?;
        Ok(WriterReport {
            attempts: u("attempts")?,
            acknowledged: u("acknowledged")?,
            failed: u("failed")?,
            lost: u("lost")?,
            failed_but_present: u("failed_but_present")?,
            duration_ms: f("duration_ms")?,
            longest_gap_ms: f("longest_gap_ms")?,
            longest_gap_from_unix_ms: u("longest_gap_from_unix_ms")?,
            longest_gap_to_unix_ms: u("longest_gap_to_unix_ms")?,
            unavailable_ms: f("unavailable_ms")?,
            availability: f("availability")?,
            gap_threshold_ms: f("gap_threshold_ms")?,
            gaps,
            writes_per_s: f("writes_per_s")?,
            lost_keys: v["lost_keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            started_unix_ms: u("started_unix_ms")?,
            log,
            raw: raw.to_string(),
        })
    }
}

impl std::fmt::Display for WriterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes acknowledged of {} ({} failed, {} lost), availability {:.4}, longest gap {:.0} ms, \
             unavailable {:.0} ms in {:.1} s, {:.0} writes/s",
            self.acknowledged,
            self.attempts,
            self.failed,
            self.lost,
            self.availability,
            self.longest_gap_ms,
            self.unavailable_ms,
            self.duration_ms / 1000.0,
            self.writes_per_s
        )
    }
}

/// The running writer; killed on drop if not stopped.
pub struct Writer {
    proc: Proc,
    stop_file: PathBuf,
    report_file: PathBuf,
    log: PathBuf,
}

impl Writer {
    /// Tells the writer to stop, waits for its read-back and returns its report.
    pub fn stop(mut self) -> anyhow::Result<WriterReport> {
        std::fs::write(&self.stop_file, b"")?;
        let status = self
            .proc
            .wait_exit(Duration::from_secs(60))
            .ok_or_else(|| anyhow!("the writer did not finish in 60 s: {}", self.proc.log()))?;
        if !status.success() {
            bail!("the writer failed ({status}): {}", self.proc.log());
        }
        WriterReport::parse(
            std::fs::read_to_string(&self.report_file)?.trim(),
            self.log.clone(),
        )
    }
}
