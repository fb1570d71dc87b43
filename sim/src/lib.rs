//! A simulated chef-backend cluster: the test oracle and demo target of Baton.
//!
//! The `baton-sim` binary acts as `chef-backend-ctl`, `dpkg`, `dpkg-query`, `dpkg-deb`, `yum` and `rpm` for one node
//! of a cluster kept in a directory (see [`store`]), journals every command and state change
//! ([`journal`]), and judges the journal from the outside ([`report`]). The library exposes the same
//! pieces so tests can build clusters, run commands in-process and assert on a typed [`Report`].
//!
//! Modules: [`model`] (state and pure transitions over time), [`fault`] (fault injection), [`store`] (the locked state file),
//! [`ctl`] (chef-backend-ctl commands), [`pkg`] (package tools), [`render`] (output formats),
//! [`report`] (verdict).

pub mod cli;
pub mod ctl;
pub mod fault;
pub mod journal;
pub mod model;
pub mod pkg;
pub mod render;
pub mod report;
pub mod store;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use journal::{Entry, Event, ENVIRONMENT, ORCHESTRATOR};
pub use model::{Cluster, Fault, Faults, PkgState, Role, Timings};
pub use report::{Incident, Report, Rule, Verdict, Violation};
pub use store::Sim;

/// The result of one simulated command: what it printed and its exit code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Output {
    /// Success with stdout.
    pub fn ok(stdout: impl Into<String>) -> Output {
        Output {
            stdout: stdout.into(),
            stderr: String::new(),
            code: 0,
        }
    }

    /// Failure with stderr and an exit code.
    pub fn fail(code: i32, stderr: impl Into<String>) -> Output {
        Output {
            stdout: String::new(),
            stderr: stderr.into(),
            code,
        }
    }
}

/// Errors of the simulator itself (not of the simulated commands, which return an [`Output`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid state file: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} line {line}: invalid journal entry: {source}")]
    Journal {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("no simulated cluster at {0} (create one with `baton-sim init --dir ...`)")]
    NoCluster(PathBuf),
    #[error("{0} already holds a simulated cluster")]
    Exists(PathBuf),
    #[error("unknown node {0:?}")]
    UnknownNode(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// Runs `tool ARGS` (`chef-backend-ctl`, `dpkg`, `dpkg-query`, `dpkg-deb`, `yum`, `rpm`) as `node`: applies
/// the node's latency fault, runs the command, journals it (argv, exit code, start and end time, and the
/// sim's actor, see [`Sim::with_actor`]) and returns what it printed. The binary is a thin wrapper
/// around this.
pub fn run(sim: &Sim, node: &str, tool: &str, args: &[String]) -> Result<Output, Error> {
    let started = store::now_ms();
    let latency = {
        let c = sim.state()?;
        let i = c
            .index(node)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
        c.nodes[i].faults.latency_ms
    };
    if latency > 0 {
        // Slept without the lock held, so other nodes are not delayed.
        std::thread::sleep(std::time::Duration::from_millis(rand::random_range(
            0..=latency,
        )));
    }
    let out = match tool {
        "chef-backend-ctl" => ctl::run(sim, node, args)?,
        "dpkg" => pkg::dpkg(sim, node, args)?,
        "dpkg-query" => pkg::dpkg_query(sim, node, args)?,
        "dpkg-deb" => pkg::dpkg_deb(args)?,
        "yum" => pkg::yum(sim, node, args)?,
        "rpm" => pkg::rpm(sim, node, args)?,
        other => {
            return Err(Error::Invalid(format!(
                "unknown tool {other:?} (known: {})",
                store::TOOLS.join(", ")
            )))
        }
    };
    let mut argv = vec![tool.to_string()];
    argv.extend(args.iter().cloned());
    sim.record_command(node, &argv, out.code, started)?;
    Ok(out)
}
