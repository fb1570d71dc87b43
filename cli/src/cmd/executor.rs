//! `baton executor` (being built).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ExecutorArgs {
    /// The executor group whose steps this process takes.
    #[arg(long)]
    pub group: String,
}

pub fn run(args: ExecutorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("executor for group {} is not built yet", args.group)
}
