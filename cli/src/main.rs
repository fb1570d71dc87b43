//! `baton`: the operator's command line, and the entry point of the workflow
//! service and of executors.
//!
//! Exit codes scripts can rely on (also in the README):
//! 0 success; 1 failure (the service, NATS or the log failed); 2 usage error;
//! 3 the service rejected the request (bad input, wrong state, conflict);
//! 4 the upgrade ended halted or aborted (`submit` without `--detach`, `watch`);
//! 5 verification failed (`audit verify`, `replay --verify`).

mod client;
mod cmd;
#[cfg(test)]
mod compose_test;
mod procs;
mod render;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "Zero-downtime rolling upgrades of HA clusters"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, from flags or the environment.
#[derive(clap::Args, Clone, Debug)]
pub struct Global {
    /// The NATS server.
    #[arg(
        long,
        global = true,
        env = "BATON_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats: String,
    /// Text for people, JSON for scripts (where the output is data).
    #[arg(long, global = true, env = "BATON_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// How long to wait for the workflow service to answer, in seconds.
    #[arg(long, global = true, env = "BATON_API_TIMEOUT", default_value_t = 10)]
    pub api_timeout: u64,
    /// Who is acting (recorded in the log with pauses, approvals, aborts).
    #[arg(long, global = true, env = "BATON_USER")]
    pub by: Option<String>,
}

impl Global {
    /// The operator's name: `--by`, `$BATON_USER`, `$USER`, or "unknown".
    pub fn who(&self) -> String {
        self.by
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".to_string())
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
    /// List upgrades.
    List,
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
    /// Verify or export the log.
    #[command(subcommand)]
    Audit(cmd::audit::AuditCommand),
    /// Run the demo: NATS, the service, executors and a simulated cluster, then upgrade it.
    Dev(cmd::dev::DevArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.command);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("baton: error: {err:#}");
            ExitCode::from(client::exit_code_of(&err))
        }
    }
}

/// Services log at info by default; operator commands only warn, so their
/// own output stays readable. `RUST_LOG` overrides both.
fn init_tracing(command: &Command) {
    let default = match command {
        Command::Server(_) | Command::Executor(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
