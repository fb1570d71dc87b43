//! One module per subcommand; [`run`] dispatches.

pub mod audit;
pub mod dev;
pub mod executor;
pub mod keys;
pub mod ops;
pub mod profile;
pub mod replay;
pub mod report;
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
        Command::Report(args) => report::run(global, args),
        Command::Audit(command) => audit::run(global, command),
        Command::Keys(command) => keys::run(command),
        Command::Profile(command) => profile::run(global.output, command),
        Command::Completions { shell } => {
            let mut cli = <crate::Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut cli, "baton", &mut text);
            write_stdout(&text)
        }
        Command::Man => {
            let cli = <crate::Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_mangen::Man::new(cli).render(&mut text)?;
            write_stdout(&text)
        }
        other => ops::run(global, other),
    }
}

/// Write to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// A multi-threaded runtime for the async commands.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
