//! The Baton executor: takes step requests for one executor group from NATS
//! JetStream, runs each command on its node and publishes the result.
//!
//! Safety comes from the durable [`ledger`], not from JetStream: an action is
//! recorded `started` (flushed) before its command runs and `finished` (flushed)
//! before its result is published, so a redelivered request is answered from
//! the ledger and an action whose outcome was lost (the executor died mid-step)
//! is answered `unknown` and never run again (DESIGN.md rule S4). A read-only
//! probe changes nothing, so at most once is moot for it: its ledger writes are
//! not flushed (except one that raises the epoch fence), and a probe whose
//! outcome was lost is run again rather than answered `unknown` ([`ledger`]).
//!
//! It runs only what it was built to run ([`allow`]): a rendering of its
//! profile's templates, for its own nodes, with a validated package and env;
//! and a step id is bound to the command it was first claimed for, so a
//! replay or forgery under that id is refused, not answered from the ledger.
//!
//! The entry point is [`run`]; `baton executor` wraps it, and `baton dev` may
//! run executors in-process through it.

pub mod allow;
pub mod config;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod presence;
pub mod runner;
pub mod service;
pub mod slots;

pub use config::{Config, MAX_OUTPUT};
pub use error::ExecutorError;
pub use runner::{RunnerConfig, SshConfig};
pub use service::run;

/// Milliseconds since the unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
