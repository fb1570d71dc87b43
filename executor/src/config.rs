//! Executor configuration: what `baton executor` flags (or `baton dev`) set.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::connect::NatsConfig;
use protocol::sign::{Identity, Trust};
use workflow::core::{ClusterFile, Installer, Procedure};

use crate::allow::{Allowlist, PackageCheck};
use crate::error::ExecutorError;
use crate::runner::RunnerConfig;

/// Everything an executor needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach NATS: URL(s), authentication, TLS.
    pub nats: NatsConfig,
    /// This executor's signing key: it signs its results and its presence
    /// record with it.
    pub identity: Identity,
    /// The trust file. Step requests are run only when signed by its service
    /// key; this executor's own key must be listed in it as an executor of
    /// `group`, and its name there is this executor's id ([`Config::id`]).
    pub trust: Arc<Trust>,
    /// The executor group whose consumer `exec-<group>` it binds.
    pub group: String,
    /// The id this executor is expected to have (`--id`), if given: a check
    /// that the right key was deployed, not a choice. The id is always the
    /// trust file's name for [`Config::identity`]; a different one here
    /// refuses the start.
    pub expected_id: Option<String>,
    /// The nodes this executor serves (at least one); requests for other
    /// nodes are rejected.
    pub nodes: Vec<String>,
    /// Node -> address (`host` or `host:port`), for `{address}` and the ssh
    /// runner; a node without one is reached by its name. From `--nodes
    /// NAME=ADDRESS`, else the cluster file ([`nodes_from_cluster`]); never
    /// taken from a request.
    pub addresses: BTreeMap<String, String>,
    /// The package tool of this executor's profile (as the cluster file's
    /// `upgrade.installer`, default dpkg).
    pub installer: Installer,
    /// The procedure of this executor's profile (as the cluster file's
    /// `upgrade.procedure`, default runbook).
    pub procedure: Procedure,
    /// A cluster file that names a profile file, with that file's text in
    /// `profile_text` (`baton executor --cluster`): this executor then serves
    /// that profile for its nodes (their vars from this file), and
    /// `installer`/`procedure` are not used. `None`: the built-in chef-backend
    /// profile of `installer` and `procedure`.
    pub profile_cluster: Option<Arc<ClusterFile>>,
    /// Where the ledger lives (one executor process per directory).
    pub state_dir: PathBuf,
    /// How many trailing bytes of stdout and of stderr a result carries.
    /// At most [`MAX_OUTPUT`].
    pub max_output: usize,
    /// Accept a relative `state_dir` (tests; by default it must be absolute, so
    /// the ledger does not depend on the working directory).
    pub allow_relative_state_dir: bool,
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
    /// Consumer options used when this executor creates its group consumer
    /// (`executor_ack_wait`); the streams and buckets are the service's.
    pub setup: protocol::Options,
    /// How commands reach their node.
    pub runner: RunnerConfig,
    /// Where the executor counts what it does and says whether it is ready;
    /// the caller registers it in its own registry to serve it (`docs/metrics.md`).
    pub metrics: Arc<crate::metrics::ExecutorMetrics>,
    /// Local runner: a directory put first in `PATH` for the commands of a
    /// node of `group`, `{node}` replaced by the node's name (one host standing
    /// in for several nodes: simulated clusters, containers). `None`: the
    /// process's own `PATH`.
    pub node_bin_dir: Option<String>,
    /// The further groups this process serves besides `group` (`--serve`),
    /// each with its own key, nodes and profile. One connection, consumer,
    /// presence record and claim identity per group; one ledger for all.
    pub more: Vec<Served>,
}

/// One executor group a process serves: its key (the trust file's executor
/// of that group), the nodes it serves there, their addresses and the
/// group's profile. [`Config`]'s own group is the first ([`Config::served`]).
#[derive(Debug, Clone)]
pub struct Served {
    pub group: String,
    pub identity: Identity,
    /// As [`Config::expected_id`].
    pub expected_id: Option<String>,
    pub nodes: Vec<String>,
    pub addresses: BTreeMap<String, String>,
    pub installer: Installer,
    pub procedure: Procedure,
    /// As [`Config::profile_cluster`].
    pub profile_cluster: Option<Arc<ClusterFile>>,
    /// As [`Config::node_bin_dir`].
    pub node_bin_dir: Option<String>,
}

impl Served {
    /// A group served with `identity`, no nodes yet, the default profile.
    pub fn new(group: impl Into<String>, identity: Identity) -> Served {
        Served {
            group: group.into(),
            identity,
            expected_id: None,
            nodes: Vec::new(),
            addresses: BTreeMap::new(),
            installer: Installer::default(),
            procedure: Procedure::default(),
            profile_cluster: None,
            node_bin_dir: None,
        }
    }

    /// This group's executor id: the trust file's name for its key ([`Config::id`]).
    pub fn id(&self, trust: &Trust) -> Result<String, ExecutorError> {
        id_of(
            &self.identity,
            trust,
            &self.group,
            self.expected_id.as_deref(),
        )
    }

    /// What this group's executor may run: its profile, for its nodes at their addresses. `Err` when its
    /// profile file cannot be served (checked by [`Config::validate`] before anything starts).
    pub fn allowlist(&self, runner: &RunnerConfig) -> Result<Allowlist, ExecutorError> {
        let nodes = self
            .nodes
            .iter()
            .map(|n| {
                let address = self.addresses.get(n).cloned().unwrap_or_else(|| n.clone());
                (n.clone(), address)
            })
            .collect();
        let package_check = match runner {
            RunnerConfig::Local => PackageCheck::Local,
            RunnerConfig::Ssh(_) => PackageCheck::PathOnly,
        };
        match &self.profile_cluster {
            Some(cluster) => {
                let list = Allowlist::for_profile_file(cluster, nodes, package_check)
                    .map_err(|why| ExecutorError::Config(format!("group {}: {why}", self.group)))?;
                let http = list.http_probes();
                if matches!(runner, RunnerConfig::Ssh(_)) && !http.is_empty() {
                    return Err(ExecutorError::Config(format!(
                        "group {}: the profile's probes {} are HTTP probes, which an executor asks from its own \
                         host; with the SSH runner its nodes are elsewhere, so they would look at the wrong \
                         member: serve this profile with the local runner (an executor on each node), or give \
                         those probes an argv",
                        self.group,
                        http.join(", ")
                    )));
                }
                Ok(list)
            }
            None => Ok(Allowlist::new(
                self.installer,
                self.procedure,
                nodes,
                package_check,
            )),
        }
    }

    /// The directory put first in `PATH` for `node`'s commands, if any.
    pub fn bin_dir(&self, node: &str) -> Option<String> {
        self.node_bin_dir
            .as_ref()
            .map(|template| template.replace("{node}", node))
    }

    fn validate(&self, trust: &Trust) -> Result<(), ExecutorError> {
        protocol::subjects::validate_token(&self.group)
            .map_err(|r| ExecutorError::Config(format!("group {:?}: {r}", self.group)))?;
        self.id(trust)?;
        let group = &self.group;
        if self.nodes.is_empty() {
            return Err(ExecutorError::Config(format!(
                "group {group}: no nodes: an executor serves only the nodes it is told (--nodes NAME[=ADDRESS],...)"
            )));
        }
        for node in &self.nodes {
            protocol::subjects::validate_token(node)
                .map_err(|r| ExecutorError::Config(format!("node {node:?}: {r}")))?;
        }
        let distinct: std::collections::BTreeSet<_> = self.nodes.iter().collect();
        if distinct.len() != self.nodes.len() {
            return Err(ExecutorError::Config(format!(
                "group {group}: a node is listed twice in {:?}",
                self.nodes
            )));
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
        if let Some(dir) = &self.node_bin_dir {
            if !dir.starts_with('/') || dir.contains(':') || dir.chars().any(char::is_control) {
                return Err(ExecutorError::Config(format!(
                    "group {group}: node bin dir {dir:?} must be an absolute path without ':'"
                )));
            }
        }
        Ok(())
    }
}

impl Config {
    /// A configuration with defaults for everything but the group, the state
    /// dir, the key and the trust file.
    pub fn new(
        group: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        identity: Identity,
        trust: Arc<Trust>,
    ) -> Self {
        Config {
            nats: NatsConfig::new("nats://127.0.0.1:4222"),
            identity,
            trust,
            group: group.into(),
            expected_id: None,
            nodes: Vec::new(),
            addresses: BTreeMap::new(),
            installer: Installer::default(),
            procedure: Procedure::default(),
            profile_cluster: None,
            state_dir: state_dir.into(),
            max_output: 8 * 1024,
            allow_relative_state_dir: false,
            heartbeat: Duration::from_secs(5),
            fetch_wait: Duration::from_secs(2),
            progress_interval: None,
            shutdown_publish_timeout: Duration::from_secs(10),
            setup: protocol::Options::default(),
            runner: RunnerConfig::Local,
            metrics: Arc::default(),
            node_bin_dir: None,
            more: Vec::new(),
        }
    }

    /// Every group this process serves: its own (`group`, `identity`,
    /// `nodes`, ...) first, then [`Config::more`].
    pub fn served(&self) -> Vec<Served> {
        let first = Served {
            group: self.group.clone(),
            identity: self.identity.clone(),
            expected_id: self.expected_id.clone(),
            nodes: self.nodes.clone(),
            addresses: self.addresses.clone(),
            installer: self.installer,
            procedure: self.procedure,
            profile_cluster: self.profile_cluster.clone(),
            node_bin_dir: self.node_bin_dir.clone(),
        };
        std::iter::once(first).chain(self.more.clone()).collect()
    }

    /// This executor's id (presence key, `executor` field of its results):
    /// the name the trust file gives its key. Refused, naming the key and the
    /// group, when the key is not listed as an executor, is listed for another
    /// group, or has another name than `expected_id`.
    pub fn id(&self) -> Result<String, ExecutorError> {
        id_of(
            &self.identity,
            &self.trust,
            &self.group,
            self.expected_id.as_deref(),
        )
    }

    /// Refuse configurations that cannot work, with the reason.
    pub fn validate(&self) -> Result<(), ExecutorError> {
        let served = self.served();
        let mut groups = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        for one in &served {
            one.validate(&self.trust)?;
            one.allowlist(&self.runner)?;
            if !groups.insert(one.group.as_str()) {
                return Err(ExecutorError::Config(format!(
                    "group {} is served twice: list all of its nodes in one entry",
                    one.group
                )));
            }
            keys.insert(one.identity.public_key());
        }
        if keys.len() != served.len() {
            return Err(ExecutorError::Config(
                "two served groups have the same key: the trust file gives a key to one group"
                    .into(),
            ));
        }
        if !matches!(self.runner, RunnerConfig::Local)
            && served.iter().any(|s| s.node_bin_dir.is_some())
        {
            return Err(ExecutorError::Config(
                "a node bin dir is for the local runner; the ssh runner runs commands on the node"
                    .into(),
            ));
        }
        if self.heartbeat.is_zero() {
            return Err(ExecutorError::Config("heartbeat must be positive".into()));
        }
        if self.fetch_wait < Duration::from_millis(100) {
            return Err(ExecutorError::Config(
                "fetch wait must be at least 100ms".into(),
            ));
        }
        if self.max_output == 0 || self.max_output > MAX_OUTPUT {
            return Err(ExecutorError::Config(format!(
                "max output must be between 1 and {MAX_OUTPUT} bytes (a result carries the tails of stdout and stderr, \
                 JSON-escaped, and must fit NATS's 1 MiB payload), got {}",
                self.max_output
            )));
        }
        if self.state_dir.is_relative() && !self.allow_relative_state_dir {
            return Err(ExecutorError::Config(format!(
                "state dir {} is relative: give an absolute path (default /var/lib/baton-executor/<group>), \
                 or --allow-relative-state-dir",
                self.state_dir.display()
            )));
        }
        Ok(())
    }
}

/// The largest `max_output` (bytes per stream): the protocol's bound, which the
/// service enforces on every result.
pub use protocol::messages::MAX_OUTPUT;

impl Config {
    /// What this executor may run for its own group: its profile, for its nodes at their addresses.
    pub fn allowlist(&self) -> Result<Allowlist, ExecutorError> {
        self.served()[0].allowlist(&self.runner)
    }
}

/// The nodes an executor of `group` serves, with their addresses, from a
/// cluster file (`--cluster`) and the `--nodes` flag (`given`, each `NAME` or
/// `NAME=ADDRESS`):
/// - without `--nodes`: every node whose `executor` is `group`, at the
///   cluster file's `address`;
/// - with `--nodes`: those nodes, each of which the cluster file must give to
///   `group`; an address given there overrides the cluster file's.
///
/// Refused, naming the file and the node: a group with no node in the file, a
/// node the file does not list or gives to another group.
pub fn nodes_from_cluster(
    cluster: &ClusterFile,
    file: &str,
    group: &str,
    given: &[(String, Option<String>)],
) -> Result<(Vec<String>, BTreeMap<String, String>), ExecutorError> {
    let ours: Vec<_> = cluster
        .nodes
        .iter()
        .filter(|n| n.executor == group)
        .collect();
    if ours.is_empty() {
        return Err(ExecutorError::Config(format!(
            "cluster file {file} gives no node to executor group {group} (no [[nodes]] with executor = \"{group}\")"
        )));
    }
    if given.is_empty() {
        let nodes = ours.iter().map(|n| n.name.clone()).collect();
        let addresses = ours
            .iter()
            .map(|n| (n.name.clone(), n.address.clone()))
            .collect();
        return Ok((nodes, addresses));
    }
    let mut nodes = Vec::new();
    let mut addresses = BTreeMap::new();
    for (name, address) in given {
        let Some(spec) = cluster.nodes.iter().find(|n| n.name == *name) else {
            return Err(ExecutorError::Config(format!(
                "node {name} (--nodes) is not in cluster file {file}"
            )));
        };
        if spec.executor != group {
            return Err(ExecutorError::Config(format!(
                "node {name} (--nodes) belongs to executor group {} in cluster file {file}, not to {group} (--group)",
                spec.executor
            )));
        }
        nodes.push(name.clone());
        addresses.insert(
            name.clone(),
            address.clone().unwrap_or_else(|| spec.address.clone()),
        );
    }
    Ok((nodes, addresses))
}

/// The executor id of `identity` serving `group`: the trust file's name for the key ([`Config::id`]).
fn id_of(
    identity: &Identity,
    trust: &Trust,
    group: &str,
    expected_id: Option<&str>,
) -> Result<String, ExecutorError> {
    let key = identity.public_key();
    let from = match &identity.path {
        Some(path) => format!(" (from {})", path.display()),
        None => String::new(),
    };
    let refuse = |why: String| {
        Err(ExecutorError::Config(format!(
            "refusing to start: this executor's key {key}{from} {why}"
        )))
    };
    let Some(peer) = trust.executor(&key) else {
        let role = if trust.is_service(&key) {
            "is the service's key in the trust file, not an executor's".to_string()
        } else if let Some(op) = trust.operator(&key) {
            format!(
                "is operator {}'s key in the trust file, not an executor's",
                op.name
            )
        } else {
            "is not in the trust file".to_string()
        };
        return refuse(format!(
            "{role}: list it there as an executor of group {group} \
             ([[executor]] name = \"...\" key = \"{key}\" group = \"{group}\"), \
             or give this executor the key the trust file lists for group {group}",
        ));
    };
    if peer.group != group {
        return refuse(format!(
            "is listed in the trust file as executor {} of group {}, not of group {} (--group): \
             an executor serves only the group the trust file gives its key",
            peer.name, peer.group, group
        ));
    }
    match expected_id {
        Some(expected) if expected != peer.name => refuse(format!(
            "is named {} in the trust file (an executor of group {}), not {expected} (--id): \
             the id is the trust file's name for the key; is this the right key file?",
            peer.name, peer.group
        )),
        _ => Ok(peer.name.clone()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::sign::{ExecutorPeer, OperatorPeer, Peer, Role};

    struct Keys {
        service: Identity,
        ex_a: Identity,
        ex_b: Identity,
        op: Identity,
        trust: Arc<Trust>,
    }

    fn keys() -> Keys {
        let (service, ex_a, ex_b, op) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let executor = |name: &str, key: &Identity, group: &str| ExecutorPeer {
            name: name.into(),
            key: key.public_key(),
            group: group.into(),
        };
        let trust = Arc::new(Trust {
            service: Peer {
                name: "baton-service".into(),
                key: service.public_key(),
            },
            executors: vec![executor("ex-a", &ex_a, "g1"), executor("ex-b", &ex_b, "g2")],
            operators: vec![OperatorPeer {
                name: "alice".into(),
                key: op.public_key(),
                role: Role::Approver,
            }],
        });
        Keys {
            service,
            ex_a,
            ex_b,
            op,
            trust,
        }
    }

    fn config(identity: &Identity, trust: &Arc<Trust>, group: &str) -> Config {
        let mut config = Config::new(group, "/nonexistent", identity.clone(), trust.clone());
        config.nodes = vec!["backend-1".into()];
        config
    }

    /// A profile with HTTP probes is served by the local runner only: the SSH runner is refused at start, naming
    /// the probes, and the same group with the local runner serves (hostile review 14).
    #[test]
    fn a_profile_with_http_probes_is_refused_under_the_ssh_runner_at_start() {
        let k = keys();
        let mut toml = String::from("[cluster]\nname = \"etcd\"\nprofile = \"etcd-http.toml\"\n");
        for i in 1..=3 {
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"m{i}\"\naddress = \"127.0.0.1:237{i}\"\nexecutor = \"g1\"\n\
                 vars = {{ ctl = \"/m{i}/ctl\", etcdctl = \"/m{i}/etcdctl\", \
                 endpoints = \"127.0.0.1:2371,127.0.0.1:2372,127.0.0.1:2373\", member_id = \"{i}\" }}\n"
            ));
        }
        toml.push_str("\n[upgrade]\ntarget_version = \"3.5.1\"\n");
        let mut cluster = ClusterFile::parse("cluster.toml", &toml).unwrap();
        cluster.profile_text = Some(include_str!("../../profiles/etcd-http.toml").to_string());
        let mut served = Served::new("g1", k.ex_a.clone());
        served.nodes = vec!["m1".into()];
        served.profile_cluster = Some(Arc::new(cluster));
        let list = served.allowlist(&RunnerConfig::Local).unwrap();
        assert_eq!(
            list.http_probes(),
            [
                "probe_cluster_status",
                "probe_status",
                "probe_running_version"
            ]
        );
        let why = served
            .allowlist(&RunnerConfig::Ssh(Default::default()))
            .unwrap_err()
            .to_string();
        for needle in [
            "group g1",
            "probe_cluster_status, probe_status, probe_running_version are HTTP probes",
            "local runner",
        ] {
            assert!(why.contains(needle), "{needle}: {why}");
        }
    }

    #[test]
    fn output_bounds_and_a_relative_state_dir_are_refused_with_the_limit() {
        let k = keys();
        let ok = config(&k.ex_a, &k.trust, "g1");
        for (c, needle) in [
            (
                Config {
                    max_output: 0,
                    ..ok.clone()
                },
                "between 1 and 65536",
            ),
            (
                Config {
                    max_output: MAX_OUTPUT + 1,
                    ..ok.clone()
                },
                "between 1 and 65536",
            ),
            (
                Config {
                    state_dir: "state".into(),
                    ..ok.clone()
                },
                "is relative",
            ),
        ] {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(Config {
            max_output: MAX_OUTPUT,
            ..ok.clone()
        }
        .validate()
        .is_ok());
        assert!(Config {
            state_dir: "state".into(),
            allow_relative_state_dir: true,
            ..ok
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn the_id_is_the_trust_files_name_for_the_key() {
        let k = keys();
        let c = config(&k.ex_a, &k.trust, "g1");
        assert_eq!(c.id().unwrap(), "ex-a");
        assert!(c.validate().is_ok());
        let c = Config {
            expected_id: Some("ex-a".into()),
            ..c
        };
        assert_eq!(c.id().unwrap(), "ex-a");
    }

    #[test]
    fn a_key_not_listed_for_this_group_refuses_the_start_naming_key_and_group() {
        let k = keys();
        let outsider = Identity::generate();
        let cases = [
            (
                config(&outsider, &k.trust, "g1"),
                "is not in the trust file",
            ),
            (
                config(&k.ex_b, &k.trust, "g1"),
                "executor ex-b of group g2, not of group g1",
            ),
            (config(&k.service, &k.trust, "g1"), "the service's key"),
            (config(&k.op, &k.trust, "g1"), "operator alice's key"),
            (
                Config {
                    expected_id: Some("ex-z".into()),
                    ..config(&k.ex_a, &k.trust, "g1")
                },
                "named ex-a in the trust file (an executor of group g1), not ex-z (--id)",
            ),
        ];
        for (c, needle) in cases {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            assert!(err.contains(&c.identity.public_key()), "{err}");
            assert!(err.contains("g1"), "{err}");
        }
    }

    #[test]
    fn further_groups_are_checked_like_the_first_and_must_differ() {
        let k = keys();
        let mut second = Served::new("g2", k.ex_b.clone());
        second.nodes = vec!["backend-1".into()];
        let ok = Config {
            more: vec![second.clone()],
            ..config(&k.ex_a, &k.trust, "g1")
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.served().len(), 2);
        assert_eq!(ok.served()[1].id(&k.trust).unwrap(), "ex-b");
        let cases = [
            (
                Config {
                    more: vec![Served {
                        group: "g1".into(),
                        identity: k.ex_a.clone(),
                        ..second.clone()
                    }],
                    ..ok.clone()
                },
                "group g1 is served twice",
            ),
            (
                Config {
                    more: vec![Served {
                        identity: k.ex_a.clone(),
                        ..second.clone()
                    }],
                    ..ok.clone()
                },
                "executor ex-a of group g1, not of group g2",
            ),
            (
                Config {
                    more: vec![Served {
                        nodes: vec![],
                        ..second.clone()
                    }],
                    ..ok.clone()
                },
                "group g2: no nodes",
            ),
            (
                Config {
                    more: vec![Served {
                        nodes: vec!["a".into(), "a".into()],
                        ..second.clone()
                    }],
                    ..ok.clone()
                },
                "listed twice",
            ),
            (
                Config {
                    node_bin_dir: Some("bin/{node}".into()),
                    ..ok.clone()
                },
                "must be an absolute path",
            ),
            (
                Config {
                    node_bin_dir: Some("/sim/{node}/bin".into()),
                    runner: RunnerConfig::Ssh(Default::default()),
                    ..ok.clone()
                },
                "for the local runner",
            ),
        ];
        for (c, needle) in cases {
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
        let with_dir = Served {
            node_bin_dir: Some("/sim/nodes/{node}/bin".into()),
            ..second
        };
        assert_eq!(
            with_dir.bin_dir("backend-2").as_deref(),
            Some("/sim/nodes/backend-2/bin")
        );
    }

    const CLUSTER: &str = r#"
[cluster]
name = "prod"

[[nodes]]
name = "backend-1"
address = "10.0.0.1"
executor = "pool"

[[nodes]]
name = "backend-2"
address = "10.0.0.2:2222"
executor = "pool"

[[nodes]]
name = "backend-3"
address = "10.0.0.3"
executor = "other"
"#;

    #[test]
    fn the_cluster_files_addresses_are_the_default_and_nodes_override_them() {
        let cluster = ClusterFile::parse("cluster.toml", CLUSTER).unwrap();
        let (nodes, addresses) = nodes_from_cluster(&cluster, "cluster.toml", "pool", &[]).unwrap();
        assert_eq!(nodes, ["backend-1", "backend-2"]);
        assert_eq!(
            addresses,
            BTreeMap::from([
                ("backend-1".to_string(), "10.0.0.1".to_string()),
                ("backend-2".to_string(), "10.0.0.2:2222".to_string()),
            ])
        );
        let given = [
            ("backend-2".to_string(), Some("192.0.2.7".to_string())),
            ("backend-1".to_string(), None),
        ];
        let (nodes, addresses) =
            nodes_from_cluster(&cluster, "cluster.toml", "pool", &given).unwrap();
        assert_eq!(nodes, ["backend-2", "backend-1"]);
        assert_eq!(addresses["backend-2"], "192.0.2.7", "--nodes overrides");
        assert_eq!(addresses["backend-1"], "10.0.0.1", "else the file's");
    }

    #[test]
    fn a_node_the_cluster_file_does_not_give_the_group_is_refused_by_name() {
        let cluster = ClusterFile::parse("cluster.toml", CLUSTER).unwrap();
        for (group, given, needle) in [
            ("nobody", vec![], "cluster file cluster.toml gives no node to executor group nobody"),
            (
                "pool",
                vec![("backend-9".to_string(), None)],
                "node backend-9 (--nodes) is not in cluster file cluster.toml",
            ),
            (
                "pool",
                vec![("backend-3".to_string(), None)],
                "node backend-3 (--nodes) belongs to executor group other in cluster file cluster.toml, not to pool",
            ),
        ] {
            let err = nodes_from_cluster(&cluster, "cluster.toml", group, &given)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
