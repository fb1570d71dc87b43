//! `baton`: the operator's command line, and the entry point of the workflow
//! service and of executors.
//!
//! Exit codes scripts can rely on (also in the README; `client::Class`
//! decides them, `tests/tests/integration/cli_exit.rs` checks every command):
//! 0 success; 1 failure (the service, NATS or the log failed); 2 usage error
//! (a bad flag or argument, a malformed upgrade id, a file or setting named
//! on the command line that is missing or unusable); 3 the service rejected
//! the request (bad input, wrong state, conflict, no such upgrade);
//! 4 the upgrade ended halted or aborted (`submit` without `--detach`,
//! `watch`, `plan` when preflight refuses); 5 verification failed
//! (`audit verify`, `replay --verify`, `report`). A failure prints one line on stderr,
//! or one JSON object under `--output json` (`failure.rs`).

/// `println!` for a command's output. A reader that stopped early (`baton plan | head`) ends the command
/// quietly with success, as it would a shell tool, instead of a panic; any other write error ends it with a
/// one-line error (exit 1).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::write_out(format_args!($($arg)*))
    };
}

/// What `outln!` and `out!` do.
fn write_out(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(err) => {
            eprintln!("baton: error: writing to stdout: {err}");
            std::process::exit(1)
        }
    }
}

mod args;
mod client;
mod cmd;
#[cfg(test)]
mod compose_test;
mod config;
mod failure;
mod history;
mod http;
mod identity;
mod procs;
mod render;
mod report;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "baton",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BATON_COMMIT"), ")"),
    about = "Zero-downtime rolling upgrades of HA clusters"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, from flags or the environment.
/// Where the NATS server is unless told otherwise.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

#[derive(clap::Args, Clone, Debug)]
pub struct Global {
    /// The NATS server(s): one URL or a comma-separated list; `nats://user:pass@host` and
    /// `nats://token@host` are accepted (and never logged).
    #[arg(
        long,
        global = true,
        env = "BATON_NATS_URL",
        default_value = DEFAULT_NATS_URL,
        hide_env_values = true
    )]
    pub nats: String,
    /// Text for people, JSON for scripts (where the output is data).
    #[arg(long, global = true, env = "BATON_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How long to wait for the workflow service to answer, in seconds.
    #[arg(long, global = true, env = "BATON_API_TIMEOUT", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_timeout: u64,
    /// This process's signing key (an nkey seed file, mode 0600; `baton keys gen`). The
    /// service signs steps and replies with it, an executor its results and presence, an
    /// operator its API requests. Operators are recorded in the log by the name the trust
    /// file gives this key. Its public key also names the process's NATS inbox
    /// (`_INBOX_<key>`).
    #[arg(long, global = true, env = "BATON_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// The trust file: the public keys of the service, the executors (with their groups)
    /// and the operators (with their roles). See `baton keys`.
    #[arg(long, global = true, env = "BATON_TRUST")]
    pub trust: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub auth: NatsAuth,
    /// How the server and executors write their logs (stderr): text, or JSON lines for a
    /// log collector. Colour only on a terminal, never when NO_COLOR is set.
    #[arg(long, global = true, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// How to authenticate to NATS and secure the connection (see README "Deploying it secured").
#[derive(clap::Args, Clone, Debug, Default)]
pub struct NatsAuth {
    /// NATS creds file (JWT and nkey, as `nsc` writes it).
    #[arg(long, global = true, env = "BATON_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// NATS nkey seed file (may be the same file as --key).
    #[arg(long, global = true, env = "BATON_NATS_NKEY")]
    pub nats_nkey: Option<std::path::PathBuf>,
    /// NATS user (with --nats-password).
    #[arg(long, global = true, env = "BATON_NATS_USER")]
    pub nats_user: Option<String>,
    /// NATS password (prefer the environment variable: flags show in `ps`).
    #[arg(
        long,
        global = true,
        env = "BATON_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    /// NATS token (prefer the environment variable: flags show in `ps`).
    #[arg(long, global = true, env = "BATON_NATS_TOKEN", hide_env_values = true)]
    pub nats_token: Option<String>,
    /// CA certificate (PEM) to verify the NATS server with; implies TLS.
    #[arg(long, global = true, env = "BATON_NATS_CA")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that verifies clients; implies TLS.
    #[arg(long, global = true, env = "BATON_NATS_CERT")]
    pub nats_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, env = "BATON_NATS_CERT_KEY")]
    pub nats_cert_key: Option<std::path::PathBuf>,
    /// Refuse a NATS connection that is not TLS.
    #[arg(long, global = true, env = "BATON_NATS_TLS")]
    pub nats_tls: bool,
}

impl Global {
    /// The NATS connection settings of this process. Its replies come to its
    /// own inbox, `_INBOX_<public key>`, named after its signing key (`--key`;
    /// without one, after `--nats-nkey`): the least-privilege nats-server
    /// configuration (`baton keys nats-config`) lets each key subscribe only
    /// to its own inbox. An unreadable key file is an error here.
    pub fn nats_config(&self) -> anyhow::Result<protocol::connect::NatsConfig> {
        let a = &self.auth;
        let inbox_prefix = match self.key.as_ref().or(a.nats_nkey.as_ref()) {
            Some(path) => {
                let identity = protocol::sign::Identity::load(path)?;
                Some(protocol::subjects::inbox_prefix(&identity.public_key()))
            }
            None => None,
        };
        Ok(protocol::connect::NatsConfig {
            url: self.nats.clone(),
            creds: a.nats_creds.clone(),
            nkey: a.nats_nkey.clone(),
            user: a.nats_user.clone(),
            password: a.nats_password.clone(),
            token: a.nats_token.clone(),
            ca: a.nats_ca.clone(),
            cert: a.nats_cert.clone(),
            cert_key: a.nats_cert_key.clone(),
            require_tls: a.nats_tls,
            inbox_prefix,
        })
    }

    /// This process's signing key (`--key` / `BATON_KEY`), required.
    pub fn identity(&self, role: &str) -> anyhow::Result<protocol::sign::Identity> {
        let Some(path) = &self.key else {
            return Err(client::Exit::of(
                client::Class::Usage,
                format!("{role} needs a signing key: --key FILE or BATON_KEY"),
            )
            .hint("baton keys gen --out FILE")
            .into());
        };
        Ok(protocol::sign::Identity::load(path)?)
    }

    /// The trust file (`--trust` / `BATON_TRUST`), required.
    pub fn trust(&self, role: &str) -> anyhow::Result<protocol::sign::Trust> {
        let Some(path) = &self.trust else {
            return Err(client::Exit::of(
                client::Class::Usage,
                format!("{role} needs the trust file: --trust FILE or BATON_TRUST"),
            )
            .hint("baton keys init --help")
            .into());
        };
        Ok(protocol::sign::Trust::load(path)?)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the workflow service: owns the log, drives upgrades.
    Server(cmd::server::ServerArgs),
    /// Run an executor: take steps for a group from NATS and run them on nodes.
    Executor(cmd::executor::ExecutorArgs),
    /// Start an upgrade of a cluster and follow it (unless --detach).
    Submit(cmd::ops::SubmitArgs),
    /// Observe the live cluster and show the exact steps an upgrade would run.
    Plan(cmd::ops::PlanArgs),
    /// Follow an upgrade live: per-node progress, current step, last output.
    Watch(cmd::ops::UpgradeArg),
    /// Show the state of an upgrade.
    Status(cmd::ops::UpgradeArg),
    /// List upgrades (not finished `plan` runs, unless --plans).
    List(cmd::ops::ListArgs),
    /// List the executor groups that are online (signed presence records).
    Executors,
    /// Pause an upgrade after the step in flight.
    Pause(cmd::ops::ReasonArgs),
    /// Resume a paused upgrade.
    Resume(cmd::ops::UpgradeArg),
    /// Abort an upgrade: stop after the step in flight and restore failover.
    Abort(cmd::ops::AbortArgs),
    /// Approve a gate the upgrade waits at.
    Approve(cmd::ops::ApproveArgs),
    /// Resolve a step whose outcome could not be verified.
    Resolve(cmd::ops::ResolveArgs),
    /// Show an upgrade's timeline and its state at any event; verify decisions.
    Replay(cmd::replay::ReplayArgs),
    /// Write an upgrade's timeline as one self-contained HTML page (a Gantt chart per node).
    Report(cmd::report::ReportArgs),
    /// Verify or export the log.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Make and inspect signing keys and the trust file.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Check a profile file (a leader-based HA system described as data) and try its probes.
    #[command(subcommand)]
    Profile(cmd::profile::ProfileCommand),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to stdout: `baton man > baton.1`.
    Man,
    /// Run the demo: NATS, the service, executors and a simulated cluster, then upgrade it.
    Dev(cmd::dev::DevArgs),
}

fn main() -> ExitCode {
    let cli = match config::parse_from(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(config::ParseError::Config(err)) => {
            let json =
                failure::json_requested(std::env::args_os(), std::env::var_os("BATON_OUTPUT"));
            return failure::Report::of(&err).print(json);
        }
        Err(config::ParseError::Clap(err)) => {
            let json =
                failure::json_requested(std::env::args_os(), std::env::var_os("BATON_OUTPUT"));
            let args: Vec<String> = std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            // One line (or one JSON object) like every other error; a bare
            // group command (`baton audit`) still gets clap's help.
            let help =
                err.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
            match failure::Report::of_clap(&err, &args) {
                Some(report) if json || !help => return report.print(json),
                _ => err.exit(),
            }
        }
    };
    let json = cli.global.output == Output::Json;
    init_tracing(&cli.command, cli.global.log_format, json);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => failure::Report::of(&err).print(json),
    }
}

/// Services log at info by default; operator commands only warn, so their
/// own output stays readable, and under `--output json` log nothing, so
/// that stderr holds only the JSON error, if any. `RUST_LOG` overrides all.
/// Colour only on a terminal and never with `NO_COLOR` set (<https://no-color.org>).
fn init_tracing(command: &Command, format: LogFormat, json_output: bool) {
    let default = match command {
        Command::Server(_) | Command::Executor(_) => "info",
        _ if json_output => "off",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.with_ansi(use_colour()).try_init(),
    };
}

/// Colour on stderr: a terminal, and no `NO_COLOR` (any non-empty value).
pub fn use_colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
