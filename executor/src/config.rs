//! Executor configuration: what `baton executor` flags (or `baton dev`) set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use workflow::core::{Installer, Procedure};

use crate::allow::{Allowlist, PackageCheck};
use crate::error::ExecutorError;
use crate::runner::RunnerConfig;

/// Everything an executor needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// The executor group whose consumer `exec-<group>` it binds.
    pub group: String,
    /// This executor's id (presence key, `executor` field of results).
    pub id: String,
    /// The nodes this executor serves (at least one); requests for other
    /// nodes are rejected.
    pub nodes: Vec<String>,
    /// Node -> address (`host` or `host:port`), for `{address}` and the ssh
    /// runner; a node without one is reached by its name. Never taken from a
    /// request.
    pub addresses: BTreeMap<String, String>,
    /// The package tool of this executor's profile (as the cluster file's
    /// `upgrade.installer`, default dpkg).
    pub installer: Installer,
    /// The procedure of this executor's profile (as the cluster file's
    /// `upgrade.procedure`, default runbook).
    pub procedure: Procedure,
    /// Where the ledger lives (one executor process per directory).
    pub state_dir: PathBuf,
    /// How many trailing bytes of stdout and of stderr a result carries.
    pub max_output: usize,
    /// How often the presence record is refreshed.
    pub heartbeat: Duration,
    /// How long one pull request waits for a step; also bounds how long a
    /// shutdown waits for an idle executor to notice.
    pub fetch_wait: Duration,
    /// How often `AckKind::Progress` is sent while a step runs. `None`: a
    /// third of the consumer's `ack_wait`.
    pub progress_interval: Option<Duration>,
    /// After a shutdown was requested, how long to keep retrying to publish
    /// the last result before leaving it to the ledger and a redelivery.
    pub shutdown_publish_timeout: Duration,
    /// Stream, consumer and bucket options used when this executor creates them.
    pub setup: protocol::Options,
    /// How commands reach their node.
    pub runner: RunnerConfig,
}

impl Config {
    /// A configuration with defaults for everything but the group and state dir.
    pub fn new(group: impl Into<String>, state_dir: impl Into<PathBuf>) -> Self {
        let group = group.into();
        let host = host_name();
        Config {
            nats_url: "nats://127.0.0.1:4222".into(),
            id: protocol::presence::key(&format!("{group}-{host}-{}", std::process::id())),
            group,
            nodes: Vec::new(),
            addresses: BTreeMap::new(),
            installer: Installer::default(),
            procedure: Procedure::default(),
            state_dir: state_dir.into(),
            max_output: 8 * 1024,
            heartbeat: Duration::from_secs(5),
            fetch_wait: Duration::from_secs(2),
            progress_interval: None,
            shutdown_publish_timeout: Duration::from_secs(10),
            setup: protocol::Options::default(),
            runner: RunnerConfig::Local,
        }
    }

    /// Refuse configurations that cannot work, with the reason.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        protocol::subjects::validate_token(&self.group)
            .map_err(|r| ExecutorError::Config(format!("group {:?}: {r}", self.group)))?;
        if self.nodes.is_empty() {
            return Err(ExecutorError::Config(
                "no nodes: an executor serves only the nodes it is told (--nodes NAME[=ADDRESS],...)".into(),
            ));
        }
        for node in &self.nodes {
            protocol::subjects::validate_token(node)
                .map_err(|r| ExecutorError::Config(format!("node {node:?}: {r}")))?;
        }
        for (node, address) in &self.addresses {
            if !self.nodes.contains(node) {
                return Err(ExecutorError::Config(format!(
                    "address given for node {node:?}, which is not one of this executor's nodes"
                )));
            }
            if address.is_empty()
                || address.starts_with('-')
                || address.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(ExecutorError::Config(format!(
                    "node {node:?}: address {address:?} is not a host name or address"
                )));
            }
        }
        if self.id.is_empty() || protocol::presence::key(&self.id) != self.id {
            return Err(ExecutorError::Config(format!(
                "id {:?}: only ASCII letters, digits, '-', '_', '=' and '.' are allowed",
                self.id
            )));
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.setup.presence_ttl {
            return Err(ExecutorError::Config(format!(
                "heartbeat {:?} must be positive and shorter than the presence TTL {:?}",
                self.heartbeat, self.setup.presence_ttl
            )));
        }
        if self.fetch_wait < Duration::from_millis(100) {
            return Err(ExecutorError::Config(
                "fetch wait must be at least 100ms".into(),
            ));
        }
        if self.max_output == 0 {
            return Err(ExecutorError::Config("max output must be positive".into()));
        }
        Ok(())
    }
}

impl Config {
    /// What this executor may run: its profile, for its nodes at their addresses.
    pub fn allowlist(&self) -> Allowlist {
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let address = self.addresses.get(n).cloned().unwrap_or_else(|| n.clone());
                (n.clone(), address)
            })
            .collect();
        let package_check = match self.runner {
            RunnerConfig::Local => PackageCheck::Local,
            RunnerConfig::Ssh(_) => PackageCheck::PathOnly,
        };
        Allowlist::new(self.installer, self.procedure, nodes, package_check)
    }
}

/// This machine's host name, or `unknown`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
