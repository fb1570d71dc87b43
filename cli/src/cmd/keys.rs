//! `baton keys`: make and inspect the keys and the trust file.
//!
//! Every process has one key (an nkey user seed in a 0600 file): it signs the
//! process's messages and can authenticate it to nats-server. The trust file
//! holds public keys only and is the same for every process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use protocol::natsconf::{self, TlsFiles};
use protocol::sign::{ExecutorPeer, Identity, OperatorPeer, Peer, Role, Trust};

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate a key: write its seed to a new 0600 file, print its public key.
    Gen {
        /// Where to write the seed (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a seed file.
    Show { file: PathBuf },
    /// Generate a whole deployment's keys and its trust file in a new directory:
    /// `service.seed`, `executor-<group>.seed`, `operator-<name>.seed`, `trust.toml`.
    Init {
        /// The directory to create (must not exist, or be empty).
        #[arg(long)]
        dir: PathBuf,
        /// Executor groups, comma separated (one executor key per group, named after it).
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
        /// Operators as NAME=ROLE (reader, operator, approver), comma separated.
        #[arg(long, value_delimiter = ',', required = true, value_parser = parse_operator)]
        operators: Vec<(String, Role)>,
        /// Do nothing (exit 0) if DIR already holds a trust file (for a container started again).
        #[arg(long)]
        if_absent: bool,
    },
    /// Write the least-privilege nats-server configuration for a trust file: one nkey user
    /// per entry, no anonymous access, TLS verifying client certificates when given.
    NatsConfig {
        #[arg(long)]
        trust: PathBuf,
        /// Where nats-server keeps JetStream's data.
        #[arg(long)]
        store_dir: PathBuf,
        #[arg(long, default_value = "0.0.0.0")]
        host: String,
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// The server's certificate (PEM); with --tls-key and --tls-ca.
        #[arg(long, requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        #[arg(long)]
        tls_key: Option<PathBuf>,
        /// The CA that signed the clients' certificates.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Monitoring port (HTTP), if wanted.
        #[arg(long)]
        monitor_port: Option<u16>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Make throw-away TLS files for a trial (a CA, a server certificate for 127.0.0.1 and
    /// localhost, one client certificate) in a new directory. Production brings its own PKI.
    DevTls {
        #[arg(long)]
        dir: PathBuf,
        /// Do nothing (exit 0) if DIR already holds ca.pem.
        #[arg(long)]
        if_absent: bool,
        /// More names for the server certificate (e.g. the NATS host's name), comma separated.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
    },
    /// Check a trust file and list who it trusts for what.
    Check { trust: PathBuf },
}

fn parse_operator(s: &str) -> Result<(String, Role), String> {
    let (name, role) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=ROLE, got {s:?}"))?;
    protocol::subjects::validate_token(name)
        .map_err(|reason| format!("operator name {name:?}: {reason}"))?;
    let role = match role {
        "reader" => Role::Reader,
        "operator" => Role::Operator,
        "approver" => Role::Approver,
        other => {
            return Err(format!(
                "unknown role {other:?} (reader, operator, approver)"
            ))
        }
    };
    Ok((name.to_string(), role))
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Gen { out } => {
            let identity = Identity::generate();
            identity.write_seed(&out)?;
            outln!("{}", identity.public_key());
        }
        KeysCommand::Show { file } => outln!("{}", Identity::load(&file)?.public_key()),
        KeysCommand::Init {
            dir,
            groups,
            operators,
            if_absent,
        } => {
            if if_absent && dir.join("trust.toml").is_file() {
                outln!("{}", dir.join("trust.toml").display());
                return Ok(ExitCode::SUCCESS);
            }
            let trust = init(&dir, &groups, &operators)?;
            outln!("{}", trust.display());
        }
        KeysCommand::NatsConfig {
            trust,
            store_dir,
            host,
            port,
            tls_cert,
            tls_key,
            tls_ca,
            monitor_port,
            out,
        } => {
            let parsed = Trust::load(&trust)?;
            let tls = match (tls_cert, tls_key, tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
                _ => None,
            };
            let text = natsconf::render(
                &parsed,
                &natsconf::ServerOptions {
                    host,
                    port,
                    store_dir,
                    tls,
                    monitor_port,
                },
            );
            match out {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => out!("{text}"),
            }
        }
        KeysCommand::DevTls {
            dir,
            if_absent,
            san,
        } => {
            if if_absent && dir.join("ca.pem").is_file() {
                return Ok(ExitCode::SUCCESS);
            }
            create_private_dir(&dir)?;
            let names: Vec<&str> = san.iter().map(String::as_str).collect();
            let made = protocol::devtls::make(&dir, &names)?;
            outln!("CA {}", made.server.ca.display());
            outln!(
                "server {} (key {})",
                made.server.cert.display(),
                made.server.key.display()
            );
            outln!(
                "client {} (key {})",
                made.client_cert.display(),
                made.client_key.display()
            );
        }
        KeysCommand::Check { trust } => {
            let parsed = Trust::load(&trust)?;
            outln!("service  {}  {}", parsed.service.name, parsed.service.key);
            for e in &parsed.executors {
                outln!("executor {}  {}  group {}", e.name, e.key, e.group);
            }
            for o in &parsed.operators {
                outln!("operator {}  {}  role {}", o.name, o.key, o.role.as_str());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Generate the keys and the trust file of a deployment in `dir`; returns the trust file's path.
pub fn init(
    dir: &Path,
    groups: &[String],
    operators: &[(String, Role)],
) -> anyhow::Result<PathBuf> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty; keys are never overwritten",
            dir.display()
        );
    }
    create_private_dir(dir)?;
    let make = |file: String| -> anyhow::Result<Identity> {
        let identity = Identity::generate();
        identity.write_seed(&dir.join(file))?;
        Ok(identity)
    };
    let service = make("service.seed".into())?;
    let mut executors = Vec::new();
    for group in groups {
        protocol::subjects::validate_token(group)
            .map_err(|reason| anyhow::anyhow!("executor group {group:?}: {reason}"))?;
        let key = make(format!("executor-{group}.seed"))?;
        executors.push(ExecutorPeer {
            name: group.clone(),
            key: key.public_key(),
            group: group.clone(),
        });
    }
    let mut operator_peers = Vec::new();
    for (name, role) in operators {
        let key = make(format!("operator-{name}.seed"))?;
        operator_peers.push(OperatorPeer {
            name: name.clone(),
            key: key.public_key(),
            role: *role,
        });
    }
    let trust = Trust {
        service: Peer {
            name: "baton-service".into(),
            key: service.public_key(),
        },
        executors,
        operators: operator_peers,
    };
    let path = dir.join("trust.toml");
    std::fs::write(&path, trust.to_toml())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A directory only its owner may enter (0700).
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}
