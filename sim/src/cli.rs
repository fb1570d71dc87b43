//! `baton-sim`'s command line, in the library so that other crates' tests
//! (the docker-compose check) can parse a command exactly as the binary does.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::Timings;

#[derive(Parser)]
#[command(
    name = "baton-sim",
    version,
    about = "A simulated chef-backend cluster (Baton's test oracle and demo target)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Create a cluster: N nodes at VERSION, backend-1 leader, failover on, one bin folder per node.
    Init {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Installed and running version, X.Y.Z-R.
        #[arg(long)]
        version: String,
        /// Time a (re)started follower spends syncing.
        #[arg(long, default_value_t = Timings::default().sync_ms)]
        sync_ms: u64,
        /// Delay between losing the leader and the election.
        #[arg(long, default_value_t = Timings::default().election_ms)]
        election_ms: u64,
        /// How long demote / upgrade --failover wait for a new leader.
        #[arg(long, default_value_t = Timings::default().demote_timeout_ms)]
        demote_timeout_ms: u64,
        /// How long upgrade waits for the node to rejoin and sync.
        #[arg(long, default_value_t = Timings::default().upgrade_timeout_ms)]
        upgrade_timeout_ms: u64,
        /// After `start`, how long leaderl takes to join the cluster before the node syncs.
        #[arg(long, default_value_t = Timings::default().start_ms)]
        start_ms: u64,
        /// How long the cluster may stay leaderless with cluster failover off before the report flags
        /// `failover_blocked_without_leader` (default: election-ms + 2000).
        #[arg(long)]
        leaderless_tolerance_ms: Option<u64>,
        /// Inject a fault: NODE:KIND or NODE:KIND=ARG (e.g. backend-2:sync-never, backend-1:status-hang=5).
        #[arg(long = "fault")]
        faults: Vec<String>,
        /// Do nothing (exit 0) if DIR already holds a simulated cluster, whatever its size and
        /// version (for a container started again: `docker compose up` a second time).
        #[arg(long)]
        if_absent: bool,
    },
    /// Set a fault on a node (or clear it with --clear; `--clear all` clears every fault).
    Fault {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
        /// Clear the fault instead of setting it.
        #[arg(long)]
        clear: bool,
        /// sync-never | start-fails | install-fails | demote-timeout | election-nobody | status-hang | latency | all
        kind: String,
        /// SECONDS for status-hang, MAX_MS for latency.
        arg: Option<String>,
    },
    /// Crash a node (actor: BATON_SIM_ACTOR, default `environment`): its services die at once like a
    /// power loss and stay down until `chef-backend-ctl start` on it.
    Crash {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Crash a node and start it again at once (actor: BATON_SIM_ACTOR, default `environment`); it
    /// comes back like after `chef-backend-ctl start` and re-syncs.
    Restart {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: String,
    },
    /// Judge the journal: verdict, downtime, nodes out of service, installs, versions, failover.
    /// Exit 0 when safe, 1 when unsafe.
    Report {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Print the current state (JSON), with due transitions applied.
    State {
        #[arg(long)]
        dir: PathBuf,
    },
}
