//! Runners: how a step's argv reaches its node.
//!
//! [`local`] runs the argv as a child process on this machine; [`ssh`] wraps
//! it into a call of the system `ssh` binary and then runs that locally, so
//! both share timeouts, process-group kills and output capture. The ssh
//! runner may run the commands that need root through `sudo -n`. A profile's
//! HTTP probe ([`http`]) starts no process: either runner answers it itself.

pub mod http;
pub mod local;
pub mod ssh;
pub mod tail;

use std::time::Duration;

use protocol::{Outcome, StepRequest};

pub use ssh::SshConfig;

/// Why the SSH runner answers no HTTP probe.
pub const SSH_HTTP: &str = "an HTTP probe is asked from the executor's own host, and this executor reaches its \
    nodes over SSH, where the probe's endpoints would mean another host: not asked (serve the profile with the \
    local runner, an executor on each node, or give the probe an argv)";

/// How commands reach their node.
#[derive(Debug, Clone, Default)]
pub enum RunnerConfig {
    /// Run on this machine (one executor per node).
    #[default]
    Local,
    /// Run through `ssh` (a pool of executors reaching nodes remotely).
    Ssh(SshConfig),
}

/// What running a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub stdout_tail: String,
    pub stderr_tail: String,
    pub reason: Option<String>,
    pub started_ms: u64,
    pub finished_ms: u64,
}

impl Ran {
    /// A command that could not run (or an HTTP probe that could not be asked), for `reason`: no exit code, no
    /// output.
    pub fn failed(started_ms: u64, reason: String) -> Ran {
        Ran {
            outcome: Outcome::Failed,
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            reason: Some(reason),
            started_ms,
            finished_ms: crate::now_ms(),
        }
    }
}

impl RunnerConfig {
    /// Answer a profile's HTTP probe (the executor's allow list says which steps are: [`http`]). Only the local
    /// runner does: its executor runs on the node, so the probe's endpoints are asked from where its commands
    /// run. An executor reaching its nodes over SSH would ask them from its own host instead, where a loopback
    /// endpoint is another member: refused (and such an executor is refused at start).
    pub async fn run_http(&self, req: &StepRequest, max_output: usize) -> Ran {
        match self {
            RunnerConfig::Local => {
                http::run(&req.argv, Duration::from_millis(req.timeout_ms), max_output).await
            }
            RunnerConfig::Ssh(_) => Ran::failed(crate::now_ms(), SSH_HTTP.to_string()),
        }
    }

    /// Run the request's command with its env and timeout on the node at
    /// `address` (this executor's own, never the request's), keeping the
    /// last `max_output` bytes of each output stream. The local runner puts
    /// `bin_dir` (the node's, from the executor's configuration) first in `PATH`.
    pub async fn run(
        &self,
        req: &StepRequest,
        address: &str,
        max_output: usize,
        bin_dir: Option<&str>,
    ) -> Ran {
        let timeout = Duration::from_millis(req.timeout_ms);
        if let Some(program) = req.argv.first().filter(|p| http::is_http_program(p)) {
            // Never a program: a profile's HTTP probe goes through `run_http` (the allow list refuses this).
            return Ran::failed(
                crate::now_ms(),
                format!("`{program}` is reserved for a profile's HTTP probes and is never run as a program"),
            );
        }
        match self {
            RunnerConfig::Local => {
                let mut env = req.env.clone();
                let mut argv = req.argv.clone();
                if let Some(dir) = bin_dir {
                    let path = std::env::var("PATH").unwrap_or_default();
                    env.insert("PATH".into(), format!("{dir}:{path}"));
                    // Found in the node's directory: run it by its path. (A
                    // program looked up in a changed PATH makes std fork the
                    // whole executor instead of using posix_spawn.)
                    if let Some(program) = argv.first_mut().filter(|p| !p.contains('/')) {
                        let candidate = std::path::Path::new(dir).join(&*program);
                        if candidate.is_file() {
                            *program = candidate.display().to_string();
                        }
                    }
                }
                local::run(&argv, &env, timeout, max_output, local::Stdin::Null).await
            }
            RunnerConfig::Ssh(cfg) => match cfg.wrap(req, address) {
                Ok(argv) => {
                    let env = Default::default();
                    let ran =
                        local::run(&argv, &env, timeout, max_output, local::Stdin::HeldOpen).await;
                    cfg.interpret(req, address, ran)
                }
                Err(reason) => Ran::failed(crate::now_ms(), reason),
            },
        }
    }
}
