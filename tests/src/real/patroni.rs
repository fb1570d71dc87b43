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
//! // cluster.starts(node): each PostgreSQL start of a member, with its version, from its log;
//! // cluster.actions(): what member.sh changed on each member, from its journal
//! ```
//! Dropping the cluster tears it down (Patroni, PostgreSQL, etcd) and removes its directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

pub use super::journal::Action;
pub use super::writer::{Writer, WriterReport};
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

    /// The version of the member's running PostgreSQL, e.g. `15.20` (from `SHOW server_version`:
    /// `15.20 (Debian 15.20-0+deb12u1)`).
    pub fn running_version(&self, node: &str) -> anyhow::Result<String> {
        let out = self.member(node, &["running-version"])?;
        out.split_whitespace()
            .next()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: running-version printed nothing"))
    }

    /// The version the member runs after its next start, e.g. `15.20` (`postgres --version` of
    /// its installed prefix).
    pub fn installed_version(&self, node: &str) -> anyhow::Result<String> {
        let out = self.member(node, &["installed-version"])?;
        out.strip_prefix("postgres (PostgreSQL) ")
            .and_then(|v| v.split_whitespace().next())
            .map(str::to_string)
            .ok_or_else(|| anyhow!("{node}: installed-version printed {out}"))
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
    /// and waits until its first commit is acknowledged.
    pub fn start_writer(&self) -> anyhow::Result<Writer> {
        let dir = tempfile::Builder::new()
            .prefix("writer-")
            .tempdir_in(self.root())?
            .keep();
        let mut cmd = Command::new(self.venv.join("bin/python"));
        cmd.arg(scripts().join("writer.py"))
            .arg("--hosts")
            .arg(&self.hosts)
            .args(["--interval-ms", "5", "--max-seconds", "600"]);
        Writer::start("patroni-writer", cmd, &dir, Duration::from_secs(30))
    }

    /// Every member's action journal (`member.sh` writes it: stop, install, start, pause, resume,
    /// switchover), merged in time order; the cluster's first starts included.
    pub fn actions(&self) -> anyhow::Result<Vec<Action>> {
        let dirs: Vec<(String, PathBuf)> = self
            .nodes
            .iter()
            .map(|n| (n.clone(), self.member_dir(n)))
            .collect();
        super::journal::read(dirs.iter().map(|(n, d)| (n.as_str(), d.as_path())))
    }

    /// Whether `patronictl list` shows the cluster paused (its "Maintenance mode: on" line; the JSON
    /// form does not show it).
    pub fn paused(&self) -> anyhow::Result<bool> {
        let config = self.member_dir(&self.nodes[0]).join("patroni.yml");
        let out = run(Command::new(self.venv.join("bin/patronictl"))
            .arg("-c")
            .arg(config)
            .arg("list"))?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("Maintenance mode: on"))
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
