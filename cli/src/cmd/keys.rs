//! `baton keys`: make and inspect the keys and the trust file.
//!
//! Every process has one key (an nkey user seed in a 0600 file): it signs the
//! process's messages and can authenticate it to nats-server. The trust file
//! holds public keys only and is the same for every process.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
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
            println!("{}", identity.public_key());
        }
        KeysCommand::Show { file } => println!("{}", Identity::load(&file)?.public_key()),
        KeysCommand::Init {
            dir,
            groups,
            operators,
        } => {
            let trust = init(&dir, &groups, &operators)?;
            println!("{}", trust.display());
        }
        KeysCommand::Check { trust } => {
            let parsed = Trust::load(&trust)?;
            println!("service  {}  {}", parsed.service.name, parsed.service.key);
            for e in &parsed.executors {
                println!("executor {}  {}  group {}", e.name, e.key, e.group);
            }
            for o in &parsed.operators {
                println!("operator {}  {}  role {}", o.name, o.key, o.role.as_str());
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
