//! `baton`: the operator's command line, and the entry point of the workflow
//! service and of executors.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "baton", version, about = "Zero-downtime rolling upgrades of HA clusters")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an executor: take steps for a group from NATS and run them on nodes.
    Executor(cmd::executor::ExecutorArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Executor(args) => cmd::executor::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("baton: error: {err:#}");
            std::process::ExitCode::from(1)
        }
    }
}
