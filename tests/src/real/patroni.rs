//! A real 3-member Patroni + PostgreSQL 15 cluster on loopback (etcd as its DCS), made
//! by `scripts/real/patroni/cluster.sh`, and the writer that commits through it
//! (`scripts/real/patroni/writer.py`). See docs/real-clusters.md.
//!
//! ```no_run
//! let cluster = tests::real::patroni::PatroniCluster::up().unwrap(); // every member on the old prefix
//! let writer = cluster.start_writer().unwrap(); // commits every 5 ms through the leader
//! // ... upgrade, e.g. `baton submit` with cluster.cluster_file(), or cluster.manual_upgrade()
//! let report = writer.stop().unwrap(); // reads every row back from the leader
//! assert_eq!(report.lost, 0);
//! // cluster.starts(node): each PostgreSQL start of a member, with its version, from its log
//! ```
//! Dropping the cluster tears it down (Patroni, PostgreSQL, etcd) and removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::process::workspace_root;

/// The PostgreSQL versions the harness rolls between (scripts/real/install-patroni.sh pins
/// their Debian packages: 15.18-0+deb12u1 and 15.20-0+deb12u1).
pub const OLD_VERSION: &str = "15.18";
pub const NEW_VERSION: &str = "15.20";

fn scripts() -> PathBuf {
    workspace_root().join("scripts/real/patroni")
}

fn run(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs `scripts/real/install-patroni.sh` once per test process (idempotent; it fails with
/// the command to run when a dependency cannot be installed).
pub fn install() -> anyhow::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            run(Command::new("bash").arg(workspace_root().join("scripts/real/install-patroni.sh")))
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow!("the Patroni harness is not installed: {e}"))
}

/// One PostgreSQL start of a member, read from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// PostgreSQL's own log timestamp (`2026-11-29 15:50:14.800 UTC`), ordered as text.
    pub at: String,
    /// `15.18`, `15.20`.
    pub version: String,
}

/// The PostgreSQL starts in a member's log, in order.
fn parse_starts(log: &str) -> Vec<Start> {
    log.lines()
        .filter_map(|line| {
            let (at, rest) = line.split_once(" [")?;
            let version = rest.split_once("LOG:  starting PostgreSQL ")?.1;
            let version = version.split_whitespace().next()?;
            Some(Start {
                at: at.to_string(),
                version: version.to_string(),
            })
        })
        .collect()
}

/// A running cluster; torn down on drop.
pub struct PatroniCluster {
    root: tempfile::TempDir,
    cluster_file: PathBuf,
    nodes: Vec<String>,
    venv: PathBuf,
    new_prefix: PathBuf,
    hosts: String,
    down: bool,
}

impl PatroniCluster {
    /// Installs what is missing, then `cluster.sh up` in a fresh directory under /tmp
    /// (reachable by the `postgres` user, unlike a directory in root's home).
    pub fn up() -> anyhow::Result<PatroniCluster> {
        install()?;
        let root = tempfile::Builder::new()
            .prefix("baton-patroni-")
            .tempdir_in("/tmp")?;
        let mut cluster = PatroniCluster {
            cluster_file: root.path().join("cluster.toml"),
            root,
            nodes: Vec::new(),
            venv: PathBuf::new(),
            new_prefix: PathBuf::new(),
            hosts: String::new(),
            down: false,
        };
        // From here on, Drop tears down whatever came up.
        run(Command::new("bash")
            .arg(scripts().join("cluster.sh"))
            .arg("up")
            .arg(cluster.root.path()))?;
        let env = std::fs::read_to_string(cluster.root.path().join("env"))?;
        let mut hosts = Vec::new();
        for line in env.lines() {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "venv" => cluster.venv = PathBuf::from(value),
                "new_prefix" => cluster.new_prefix = PathBuf::from(value),
                "members" => cluster.nodes = value.split(' ').map(str::to_string).collect(),
                _ if key.starts_with("pg") => {
                    let pg = value.split(',').next().unwrap_or_default();
                    hosts.push(pg.to_string());
                }
                _ => {}
            }
        }
        cluster.hosts = hosts.join(",");
        if cluster.nodes.len() != 3 || hosts.len() != 3 {
            bail!("cluster.sh wrote an unexpected env file:\n{env}");
        }
        Ok(cluster)
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The Baton cluster file (`profile` = profiles/patroni.toml, node vars ctl, dir,
    /// patronictl, config, api; `[upgrade] package` = the new prefix).
    pub fn cluster_file(&self) -> &Path {
        &self.cluster_file
    }

    /// The members' names, in file order (pg1, pg2, pg3).
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    pub fn member_dir(&self, node: &str) -> PathBuf {
        self.root().join("members").join(node)
    }

    /// The prefix of the new version (the cluster file's package).
    pub fn new_prefix(&self) -> &Path {
        &self.new_prefix
    }

    /// `patronictl list -f json`, parsed.
    pub fn topology(&self) -> anyhow::Result<Vec<Value>> {
        let config = self.member_dir(&self.nodes[0]).join("patroni.yml");
        let out = run(Command::new(self.venv.join("bin/patronictl"))
            .arg("-c")
            .arg(config)
            .args(["list", "-f", "json"]))?;
        match serde_json::from_slice(&out.stdout)? {
            Value::Array(members) => Ok(members),
            other => bail!("patronictl list -f json printed {other}"),
        }
    }

    /// The member the topology shows as Leader (exactly one).
    pub fn leader(&self) -> anyhow::Result<String> {
        let leaders: Vec<String> = self
            .topology()?
            .iter()
            .filter(|m| m["Role"] == "Leader")
            .filter_map(|m| m["Member"].as_str().map(str::to_string))
            .collect();
        match leaders.as_slice() {
            [one] => Ok(one.clone()),
            _ => bail!("not one leader: {leaders:?}"),
        }
    }

    fn member(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = run(Command::new(scripts().join("member.sh"))
            .arg(self.member_dir(node))
            .args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `SHOW server_version` of the member's running PostgreSQL, e.g. `15.20 (Debian 15.20-0+deb12u1)`.
    pub fn running_version(&self, node: &str) -> anyhow::Result<String> {
        self.member(node, &["running-version"])
    }

    /// Runs `member.sh DIR ARGS...` (stop, start, install PREFIX, installed-version, ...).
    pub fn member_command(&self, node: &str, args: &[&str]) -> anyhow::Result<String> {
        self.member(node, args)
    }

    /// Every PostgreSQL start of the member, in order, from the log Patroni and PostgreSQL
    /// share (`LOG:  starting PostgreSQL 15.20 (Debian ...)`): an upgrade's record that
    /// does not depend on what the upgrading tool says it did.
    pub fn starts(&self, node: &str) -> anyhow::Result<Vec<Start>> {
        let log = std::fs::read_to_string(self.member_dir(node).join("patroni.log"))?;
        Ok(parse_starts(&log))
    }

    /// When the member first started on `version`, if it did.
    pub fn first_start_on(&self, node: &str, version: &str) -> anyhow::Result<Option<String>> {
        Ok(self
            .starts(node)?
            .into_iter()
            .find(|s| s.version == version)
            .map(|s| s.at))
    }

    /// Starts the writer (one committed INSERT every 5 ms through the read-write member)
    /// and waits until it has connected.
    pub fn start_writer(&self) -> anyhow::Result<Writer> {
        let dir = self.root().join("writer");
        std::fs::create_dir_all(&dir)?;
        let ready = dir.join("ready");
        let log = std::fs::File::create(dir.join("writer.log"))?;
        let child = Command::new(self.venv.join("bin/python"))
            .arg(scripts().join("writer.py"))
            .arg("--hosts")
            .arg(&self.hosts)
            .arg("--report")
            .arg(dir.join("report.json"))
            .arg("--ready")
            .arg(&ready)
            .arg("--acks")
            .arg(dir.join("acks.txt"))
            .args(["--interval-ms", "5", "--max-seconds", "600"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("could not start the writer")?;
        let mut writer = Writer {
            child: Some(child),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(status) = writer
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("the writer exited ({status}): {}", writer.log());
            }
            if Instant::now() >= deadline {
                bail!("the writer did not connect in 30 s: {}", writer.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(writer)
    }

    /// Runs the manual baseline (`manual-upgrade.sh`) and parses its summary line.
    pub fn manual_upgrade(&self) -> anyhow::Result<ManualRun> {
        let out = run(Command::new("bash")
            .arg(scripts().join("manual-upgrade.sh"))
            .arg(self.root()))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let last = text.lines().last().unwrap_or_default();
        let field = |name: &str| {
            last.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
                .ok_or_else(|| anyhow!("manual-upgrade.sh printed no {name}: {text}"))
        };
        Ok(ManualRun {
            wall_ms: field("wall_ms")?.parse()?,
            order: field("order")?.split(',').map(str::to_string).collect(),
            leader_before: field("leader_before")?,
            leader_after: field("leader_after")?,
            steps: text,
        })
    }

    /// `cluster.sh down`: stops every process of the cluster; an error when one was left.
    pub fn down(&mut self) -> anyhow::Result<()> {
        if self.down {
            return Ok(());
        }
        self.down = true;
        run(Command::new("bash")
            .arg(scripts().join("cluster.sh"))
            .arg("down")
            .arg(self.root.path()))
        .map(drop)
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        if let Err(e) = self.down() {
            eprintln!(
                "tearing down the Patroni cluster at {}: {e:#}",
                self.root().display()
            );
        }
    }
}

/// What `manual-upgrade.sh` reported.
#[derive(Debug, Clone)]
pub struct ManualRun {
    pub wall_ms: u64,
    /// The members in the order they were upgraded.
    pub order: Vec<String>,
    pub leader_before: String,
    pub leader_after: String,
    /// Its output: one line per step with the time since its start.
    pub steps: String,
}

/// The running writer; killed on drop if not stopped.
pub struct Writer {
    child: Option<Child>,
    dir: PathBuf,
}

/// The writer's report (scripts/real/patroni/writer.py).
#[derive(Debug, Clone)]
pub struct WriterReport {
    pub acknowledged: u64,
    pub attempts: u64,
    pub failed_attempts: u64,
    /// Acknowledged commits missing when read back from the leader: must be 0.
    pub lost: u64,
    pub present_unacknowledged: u64,
    pub duration_ms: u64,
    /// The share of 100 ms windows holding at least one acknowledged commit.
    pub availability: f64,
    pub longest_gap_ms: u64,
    /// When the longest gap began, in ms since the writer started.
    pub longest_gap_at_ms: u64,
}

impl Writer {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("writer.log")).unwrap_or_default()
    }

    /// SIGTERM, then waits (up to 90 s) while it reads every row back, and parses its report.
    pub fn stop(mut self) -> anyhow::Result<WriterReport> {
        let mut child = self.child.take().expect("a writer is stopped once");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the writer did not finish reading back in 90 s: {}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            bail!("the writer failed ({status}): {}", self.log());
        }
        let report: Value = serde_json::from_slice(&std::fs::read(self.dir.join("report.json"))?)?;
        let int = |k: &str| {
            report[k]
                .as_u64()
                .ok_or_else(|| anyhow!("the writer's report has no {k}: {report}"))
        };
        Ok(WriterReport {
            acknowledged: int("acknowledged")?,
            attempts: int("attempts")?,
            failed_attempts: int("failed_attempts")?,
            lost: int("lost")?,
            present_unacknowledged: int("present_unacknowledged")?,
            duration_ms: int("duration_ms")?,
            availability: report["availability"]
                .as_f64()
                .ok_or_else(|| anyhow!("the writer's report has no availability: {report}"))?,
            longest_gap_ms: int("longest_gap_ms")?,
            longest_gap_at_ms: int("longest_gap_at_ms")?,
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_read_from_postgresql_lines_only() {
        // Lines as a member's patroni.log has them (Patroni's own and PostgreSQL's, interleaved).
        let log = "\
2026-11-29 15:50:13,881 INFO: PAUSE: restart in progress
2026-11-29 15:49:35.011 UTC [9538] LOG:  starting PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu
2026-11-29 15:50:14,100 INFO: Lock owner: pg1; I am pg2 [starting PostgreSQL 9.9 in a Patroni line]
2026-11-29 15:50:14.800 UTC [13991] LOG:  starting PostgreSQL 15.20 (Debian 15.20-0+deb12u1) on x86_64-pc-linux-gnu
";
        assert_eq!(
            parse_starts(log),
            vec![
                Start {
                    at: "2026-11-29 15:49:35.011 UTC".into(),
                    version: "15.18".into()
                },
                Start {
                    at: "2026-11-29 15:50:14.800 UTC".into(),
                    version: "15.20".into()
                },
            ]
        );
    }
}
