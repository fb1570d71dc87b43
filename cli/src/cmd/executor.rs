//! `baton executor`: take the steps of one executor group from NATS and run
//! them on their nodes, until SIGTERM or SIGINT.
//!
//! It runs only what it was built to run: a rendering of its profile's
//! templates (`--installer`, `--procedure`, else those of the cluster file
//! given with `--cluster`, else dpkg and runbook; or the profile file that
//! cluster file names, with its nodes' vars) for one of its nodes (`--nodes`, else the nodes
//! the cluster file given with `--cluster` assigns to `--group`), at the
//! address given there (`--nodes NAME=ADDRESS`, else the cluster file's
//! `address`; see the `executor::allow` module and THREATS.md), and only when
//! the service signed the request.
//!
//! It needs a key (`--key` / `BATON_KEY`) and the trust file (`--trust` /
//! `BATON_TRUST`), which must list that key as an executor of `--group`; its
//! id (presence key, `executor` field of results) is the trust file's name
//! for the key. `--id`, if given, only checks that name. NATS connection
//! settings are the global ones (`--nats`, `--nats-creds`, ...).
//!
//! One process may serve further groups (`--serve`, repeatable): each with
//! its own key (listed for that group in the trust file), its nodes (from its
//! cluster file or `node=`), its own NATS user when the process
//! authenticates with its key (nkey), its consumer and presence record. One
//! ledger (`--state-dir`) serves them all; per node one action runs alone or
//! up to four read-only probes side by side, steps of different nodes at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use anyhow::Context as _;
use executor::{Config, RunnerConfig, SshConfig};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use workflow::core::{Installer as CoreInstaller, Procedure as CoreProcedure};

use crate::Global;

#[derive(clap::Args, Debug)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    /// The executor group whose steps this process takes (consumer `exec-<group>`).
    #[arg(long)]
    pub group: String,
    /// Where the step ledger lives (created 0700, its files 0600); one executor process
    /// per directory. Default: `/var/lib/baton-executor/<group>`. Must be absolute.
    #[arg(long, env = "BATON_EXECUTOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Accept a relative --state-dir (resolved against the working directory).
    #[arg(long)]
    pub allow_relative_state_dir: bool,
    /// The cluster file (as given to `baton plan`): this executor serves the
    /// nodes whose `executor` is `--group`, at their `address`, with the
    /// file's installer and procedure. `--nodes`, `--installer` and
    /// `--procedure` may still be given: nodes must be the group's in the
    /// file, an address there overrides the file's, and an installer or
    /// procedure must agree with the file's. A cluster file whose `profile`
    /// names a profile file (`profiles/etcd.toml`, read relative to the
    /// cluster file's directory) makes this executor serve that profile: the
    /// renderings of its actions and probes for these nodes, with the nodes'
    /// `vars` from this file (`--installer`/`--procedure` do not apply).
    #[arg(long, alias = "cluster-file", env = "BATON_EXECUTOR_CLUSTER")]
    pub cluster: Option<PathBuf>,
    /// The nodes this executor serves, comma separated, each `NAME` or
    /// `NAME=ADDRESS` (`host` or `host:port`; default: the cluster file's
    /// address, else the name). Required without `--cluster`: requests for
    /// other nodes are rejected, and a node's address comes only from here or
    /// the cluster file (for `{address}` and the ssh runner), never from a request.
    #[arg(long, value_delimiter = ',', required_unless_present = "cluster", value_parser = parse_node)]
    pub nodes: Vec<(String, Option<String>)>,
    /// The package tool of this executor's profile: only its install and
    /// version commands are run (the cluster file's `upgrade.installer`;
    /// default: the `--cluster` file's, else dpkg).
    #[arg(long, value_enum, env = "BATON_EXECUTOR_INSTALLER")]
    pub installer: Option<Installer>,
    /// The procedure of this executor's profile: `upgrade-command` adds
    /// `chef-backend-ctl upgrade [--failover]` (the cluster file's
    /// `upgrade.procedure`; default: the `--cluster` file's, else runbook).
    #[arg(long, value_enum, env = "BATON_EXECUTOR_PROCEDURE")]
    pub procedure: Option<Procedure>,
    /// The id this executor is expected to have: a check, not a choice. The id
    /// (presence key, `executor` field of results) is always the trust file's
    /// name for `--key`; if this differs, the executor refuses to start.
    #[arg(long)]
    pub id: Option<String>,
    /// How many trailing bytes of stdout and of stderr a result carries (1 to 65536).
    #[arg(long, default_value_t = 8192, value_parser = parse_max_output)]
    pub max_output: usize,
    /// How commands reach their node.
    #[arg(long, value_enum, default_value_t = Runner::Local)]
    pub runner: Runner,
    /// ssh runner: the ssh binary.
    #[arg(long, default_value = "ssh")]
    pub ssh_program: PathBuf,
    /// ssh runner: the remote user (default: ssh's, i.e. its config or the local user).
    #[arg(long, value_parser = parse_user)]
    pub ssh_user: Option<String>,
    /// ssh runner: run the commands that need root (every `chef-backend-ctl`
    /// command and the install; not the package queries) through `sudo -n`,
    /// so `--ssh-user` can be an unprivileged user with exactly those commands
    /// in sudoers (docs/real-cluster.md). sudo never prompts: a command it
    /// would not run fails the step naming node, command, sudo's exit code and output.
    #[arg(long)]
    pub ssh_sudo: bool,
    /// ssh runner: an `-o` option for ssh (repeatable), e.g. `IdentityFile=/etc/baton/id`.
    #[arg(long = "ssh-option")]
    pub ssh_options: Vec<String>,
    /// ssh runner: `node=host[:port]` (repeatable); the same as `--nodes node=host[:port]`: it
    /// overrides the cluster file's address.
    #[arg(long = "ssh-address", value_parser = parse_pair)]
    pub ssh_addresses: Vec<(String, String)>,
    /// Presence heartbeat interval, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub heartbeat_ms: u64,
    /// Ack wait of the group consumer in milliseconds (used when this executor creates it).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=3_600_000))]
    pub ack_wait_ms: u64,
    /// How long one pull waits for a step, in milliseconds (bounds idle shutdown time).
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub fetch_wait_ms: u64,
    /// Progress interval while a step runs, in milliseconds (50 to 3600000). Default: a third of the ack wait.
    #[arg(long, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    pub progress_ms: Option<u64>,
    /// A further group this process serves (repeatable): comma-separated
    /// `KEY=VALUE` items: `group=NAME` and `key=FILE` (the group's executor key,
    /// listed for that group in the trust file) are required; `cluster=FILE`
    /// (its nodes, addresses, installer and procedure, as `--cluster`),
    /// `node=NAME[=ADDRESS]` (repeatable; required without `cluster`),
    /// `installer=`, `procedure=`, `id=` and `node_bin_dir=` as the flags of
    /// the same names. Example:
    /// `group=c2,key=/etc/baton/keys/c2.seed,cluster=/etc/baton/c2.toml`.
    #[arg(long = "serve", value_name = "SPEC", value_parser = parse_serve)]
    pub serve: Vec<ServeSpec>,
    /// Local runner: a directory put first in PATH for a node's commands,
    /// `{node}` replaced by the node's name (one host standing in for several
    /// nodes: simulated clusters, containers). Absolute, no ':'.
    #[arg(long, value_name = "DIR")]
    pub node_bin_dir: Option<String>,
    /// Serve /healthz, /readyz and /metrics over HTTP on this address (e.g. 127.0.0.1:9601;
    /// docs/metrics.md). Off by default.
    #[arg(long, env = "BATON_EXECUTOR_HTTP", value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Installer {
    /// `dpkg -i PACKAGE.deb`, `dpkg-query`, `dpkg-deb`.
    Dpkg,
    /// `yum install -y PACKAGE.rpm`, `rpm -q`, `rpm -qp`.
    Yum,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Procedure {
    /// stop, install, start; demote for the switchover.
    Runbook,
    /// install while running, then `chef-backend-ctl upgrade [--failover]`.
    UpgradeCommand,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    /// Run commands on this machine.
    Local,
    /// Run commands through the system `ssh` binary.
    Ssh,
}

/// One `--serve` entry, as given (checked further when the config is built).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeSpec {
    pub group: String,
    pub key: PathBuf,
    pub cluster: Option<PathBuf>,
    pub nodes: Vec<(String, Option<String>)>,
    pub installer: Option<Installer>,
    pub procedure: Option<Procedure>,
    pub id: Option<String>,
    pub node_bin_dir: Option<String>,
}

fn parse_serve(s: &str) -> Result<ServeSpec, String> {
    use clap::ValueEnum as _;
    let mut group = None;
    let mut key = None;
    let mut spec = ServeSpec {
        group: String::new(),
        key: PathBuf::new(),
        cluster: None,
        nodes: Vec::new(),
        installer: None,
        procedure: None,
        id: None,
        node_bin_dir: None,
    };
    for item in s.split(',').filter(|i| !i.is_empty()) {
        let Some((name, value)) = item.split_once('=') else {
            return Err(format!("{item:?}: expected KEY=VALUE"));
        };
        let once = |slot: &Option<String>| match slot {
            Some(_) => Err(format!("{name} given twice in {s:?}")),
            None => Ok(Some(value.to_string())),
        };
        match name {
            "group" => {
                protocol::subjects::validate_token(value)
                    .map_err(|reason| format!("group {value:?}: {reason}"))?;
                group = once(&group)?;
            }
            "key" => key = once(&key)?,
            "cluster" => spec.cluster = Some(PathBuf::from(value)),
            "node" => spec.nodes.push(parse_node(value)?),
            "installer" => spec.installer = Some(Installer::from_str(value, false)?),
            "procedure" => spec.procedure = Some(Procedure::from_str(value, false)?),
            "id" => spec.id = Some(value.to_string()),
            "node_bin_dir" => spec.node_bin_dir = Some(value.to_string()),
            other => {
                return Err(format!(
                    "{other:?} is not a --serve item: group, key, cluster, node, installer, procedure, id, node_bin_dir"
                ))
            }
        }
    }
    spec.group = group.ok_or_else(|| format!("{s:?}: group=NAME is required"))?;
    spec.key = key
        .map(PathBuf::from)
        .ok_or_else(|| format!("{s:?}: key=FILE (the group's executor key) is required"))?;
    if spec.cluster.is_none() && spec.nodes.is_empty() {
        return Err(format!(
            "{s:?}: give the group's nodes: cluster=FILE or node=NAME[=ADDRESS]"
        ));
    }
    Ok(spec)
}

fn parse_max_output(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if n == 0 || n > executor::MAX_OUTPUT {
        return Err(format!(
            "{n} is out of range: 1 to {} bytes (a result must fit NATS's 1 MiB payload)",
            executor::MAX_OUTPUT
        ));
    }
    Ok(n)
}

fn parse_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NODE=ADDRESS, got {s:?}")),
    }
}

/// A login name for `ssh -l` (its own argv element): not empty, not an
/// option, no white space or control characters (`user@REALM` is fine).
fn parse_user(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.len() <= 256
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a user name (1 to 256 characters, no white space or control characters, \
             not starting with '-')"
        ))
    }
}

fn parse_node(s: &str) -> Result<(String, Option<String>), String> {
    let (name, address) = match s.split_once('=') {
        Some((name, address)) if !address.is_empty() => (name, Some(address.to_string())),
        Some(_) => return Err(format!("expected NAME or NAME=ADDRESS, got {s:?}")),
        None => (s, None),
    };
    protocol::subjects::validate_token(name)
        .map_err(|reason| format!("node name {name:?}: {reason}"))?;
    Ok((name.to_string(), address))
}

/// A group's nodes, addresses, installer and procedure: from its cluster file
/// (if any) and what was given (nodes, `--ssh-address`, installer, procedure).
struct Resolved {
    nodes: Vec<String>,
    addresses: BTreeMap<String, String>,
    installer: CoreInstaller,
    procedure: CoreProcedure,
    /// The cluster file with its profile file's text, when it names a profile file.
    profile_cluster: Option<Arc<workflow::core::ClusterFile>>,
}

fn resolve(
    group: &str,
    cluster: Option<&std::path::Path>,
    given: &[(String, Option<String>)],
    ssh_addresses: Vec<(String, String)>,
    installer: Option<Installer>,
    procedure: Option<Procedure>,
) -> anyhow::Result<Resolved> {
    let mut profile_cluster = None;
    let (nodes, mut addresses, from_file) = match cluster {
        Some(path) => {
            let text = read_cluster(path)?;
            let file = path.display().to_string();
            let mut cluster = workflow::core::ClusterFile::parse(&file, &text)?;
            let (nodes, addresses) =
                executor::config::nodes_from_cluster(&cluster, &file, group, given)?;
            let upgrade = &cluster.upgrade;
            let from_file = (file.clone(), upgrade.installer, upgrade.procedure);
            if cluster.profile_is_file() {
                if installer.is_some() || procedure.is_some() {
                    bail!(
                        "--installer and --procedure choose the built-in chef-backend profile; cluster file {file} \
                         names the profile file {}",
                        cluster.profile
                    );
                }
                cluster.profile_text = super::profile::profile_text_of(path, &cluster)?;
                workflow::core::Profile::of_cluster(&cluster).map_err(|why| {
                    anyhow::anyhow!("cluster file {file}: profile {}: {why}", cluster.profile)
                })?;
                profile_cluster = Some(Arc::new(cluster));
            }
            (nodes, addresses, Some(from_file))
        }
        None => {
            let addresses = given
                .iter()
                .filter_map(|(n, a)| Some((n.clone(), a.clone()?)))
                .collect();
            let nodes = given.iter().map(|(n, _)| n.clone()).collect();
            (nodes, addresses, None)
        }
    };
    let explicit: BTreeMap<&str, &str> = given
        .iter()
        .filter_map(|(n, a)| Some((n.as_str(), a.as_deref()?)))
        .collect();
    for (node, address) in ssh_addresses {
        match explicit.get(node.as_str()) {
            Some(known) if *known != address => {
                bail!("node {node}: --nodes says address {known}, --ssh-address says {address}")
            }
            _ => {
                // Overrides the cluster file's address.
                addresses.insert(node, address);
            }
        }
    }
    let installer = installer.map(|i| match i {
        Installer::Dpkg => CoreInstaller::Dpkg,
        Installer::Yum => CoreInstaller::Yum,
    });
    let procedure = procedure.map(|p| match p {
        Procedure::Runbook => CoreProcedure::Runbook,
        Procedure::UpgradeCommand => CoreProcedure::UpgradeCommand,
    });
    let (installer, procedure) = match from_file {
        None => (installer.unwrap_or_default(), procedure.unwrap_or_default()),
        Some((file, file_installer, file_procedure)) => {
            // The service renders the file's templates: an executor of
            // another profile would refuse every step.
            if let Some(i) = installer.filter(|i| *i != file_installer) {
                bail!(
                    "--installer {} disagrees with cluster file {file}, whose upgrade.installer is {}",
                    installer_name(i),
                    installer_name(file_installer)
                );
            }
            if let Some(p) = procedure.filter(|p| *p != file_procedure) {
                bail!(
                    "--procedure {} disagrees with cluster file {file}, whose upgrade.procedure is {}",
                    procedure_name(p),
                    procedure_name(file_procedure)
                );
            }
            (file_installer, file_procedure)
        }
    };
    Ok(Resolved {
        nodes,
        addresses,
        installer,
        procedure,
        profile_cluster,
    })
}

impl ExecutorArgs {
    fn config(self, global: &Global) -> anyhow::Result<Config> {
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/baton-executor").join(&self.group));
        let identity = global.identity("the executor")?;
        let trust = Arc::new(global.trust("the executor")?);
        let mut config = Config::new(self.group.clone(), state_dir, identity, trust);
        config.nats = global.nats_config()?;
        config.expected_id = self.id;
        let own = resolve(
            &self.group,
            self.cluster.as_deref(),
            &self.nodes,
            self.ssh_addresses,
            self.installer,
            self.procedure,
        )?;
        config.nodes = own.nodes;
        config.addresses = own.addresses;
        config.installer = own.installer;
        config.procedure = own.procedure;
        config.profile_cluster = own.profile_cluster;
        config.node_bin_dir = self.node_bin_dir;
        for spec in self.serve {
            let identity = protocol::sign::Identity::load(&spec.key).with_context(|| {
                format!(
                    "--serve group={}: could not load key={}",
                    spec.group,
                    spec.key.display()
                )
            })?;
            let r = resolve(
                &spec.group,
                spec.cluster.as_deref(),
                &spec.nodes,
                Vec::new(),
                spec.installer,
                spec.procedure,
            )
            .with_context(|| format!("--serve group={}", spec.group))?;
            config.more.push(executor::config::Served {
                group: spec.group,
                identity,
                expected_id: spec.id,
                nodes: r.nodes,
                addresses: r.addresses,
                installer: r.installer,
                procedure: r.procedure,
                profile_cluster: r.profile_cluster,
                node_bin_dir: spec.node_bin_dir,
            });
        }
        config.max_output = self.max_output;
        config.allow_relative_state_dir = self.allow_relative_state_dir;
        config.heartbeat = Duration::from_millis(self.heartbeat_ms);
        config.fetch_wait = Duration::from_millis(self.fetch_wait_ms);
        config.progress_interval = self.progress_ms.map(Duration::from_millis);
        config.setup.executor_ack_wait = Duration::from_millis(self.ack_wait_ms);
        config.runner = match self.runner {
            Runner::Local => RunnerConfig::Local,
            Runner::Ssh => RunnerConfig::Ssh(SshConfig {
                program: self.ssh_program,
                user: self.ssh_user,
                options: self.ssh_options,
                sudo: self.ssh_sudo,
            }),
        };
        if self.ssh_sudo && self.runner != Runner::Ssh {
            bail!("--ssh-sudo is for the ssh runner (--runner ssh); a local executor runs as the user it is started as");
        }
        Ok(config)
    }
}

fn installer_name(i: CoreInstaller) -> &'static str {
    match i {
        CoreInstaller::Dpkg => "dpkg",
        CoreInstaller::Yum => "yum",
    }
}

fn procedure_name(p: CoreProcedure) -> &'static str {
    match p {
        CoreProcedure::Runbook => "runbook",
        CoreProcedure::UpgradeCommand => "upgrade-command",
    }
}

/// The cluster file's text, read no further than its size limit.
fn read_cluster(path: &std::path::Path) -> anyhow::Result<String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .with_context(|| format!("could not open cluster file {} (--cluster)", path.display()))?;
    let mut text = String::new();
    file.take(workflow::core::cluster::MAX_CLUSTER_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("could not read cluster file {} (--cluster)", path.display()))?;
    Ok(text)
}

/// Run the executor until SIGTERM or SIGINT; exit 0 after a graceful shutdown.
pub fn run(global: &Global, args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    // main installed the subscriber (info for executors, --log-format, NO_COLOR).
    let http = args.http;
    let config = args.config(global)?;
    // Refused before any runtime or connection: a key the trust file does not
    // give this group, invalid nodes, ...
    config.validate()?;
    let group = config
        .served()
        .iter()
        .map(|s| s.group.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let runtime = tokio::runtime::Runtime::new().context("could not start the async runtime")?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let metrics = config.metrics.clone();
        let listener = crate::http::start(
            http,
            || {
                let mut registry = prometheus_client::registry::Registry::default();
                metrics.register(&mut registry);
                crate::http::Endpoints {
                    registry,
                    ready: Box::new(move || metrics.readiness()),
                }
            },
            &shutdown,
        )
        .await;
        let listener = match listener {
            Ok(listener) => listener,
            Err(err) => {
                shutdown.cancel();
                let _ = signals.await;
                return Err(err);
            }
        };
        let served = executor::run(config, shutdown.clone()).await;
        shutdown.cancel();
        crate::http::join(listener).await;
        signals
            .await
            .context("signal handler failed")?
            .context("could not install signal handlers")?;
        served.with_context(|| format!("executor for group {group} failed"))?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Cancel `shutdown` on the first SIGTERM or SIGINT (or when it is cancelled).
async fn cancel_on_signal(shutdown: CancellationToken) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down: finishing the running step"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down: finishing the running step"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
    Ok(())
}
