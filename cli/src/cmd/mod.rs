//! One module per subcommand; [`run`] dispatches.

pub mod audit;
pub mod dev;
pub mod executor;
pub mod keys;
pub mod ops;
pub mod replay;
pub mod server;

use std::process::ExitCode;

use crate::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Server(args) => server::run(&global, args),
        Command::Executor(args) => executor::run(&global, args),
        Command::Dev(args) => dev::run(global, args),
        Command::Replay(args) => replay::run(global, args),
        Command::Audit(command) => audit::run(global, command),
        Command::Keys(command) => keys::run(command),
        other => ops::run(global, other),
    }
}

/// A multi-threaded runtime for the async commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
