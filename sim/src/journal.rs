//! The journal: one JSON object per line, appended under the state lock, read back by the report.
//!
//! It holds every command invocation (node, argv, exit code, start/end time) and every state change as a
//! past-tense event with its effective timestamp. Because every invocation first materialises the
//! transitions due before its own `now` (under the same lock), the journal is in timestamp order.

use serde::{Deserialize, Serialize};

use crate::model::{ElectionTrigger, Pg, Role};

/// A state change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    ClusterCreated {
        nodes: Vec<String>,
        version: String,
        leader: String,
        failover: bool,
        /// `--leaderless-tolerance-ms` (absent in journals of older simulators).
        #[serde(default)]
        leaderless_tolerance_ms: Option<u64>,
    },
    /// A node's up/role/pg view changed (emitted after every step that changed it).
    NodeChanged {
        node: String,
        up: bool,
        role: Role,
        pg: Pg,
        pgsql_running: bool,
    },
    /// `by` is the command that stopped them (`stop`, `restart`, `upgrade`).
    ServicesStopped {
        node: String,
        by: String,
        was_leader: bool,
        failover: bool,
    },
    ServicesStarted {
        node: String,
        by: String,
        version: String,
    },
    StartFailed {
        node: String,
        by: String,
        /// Why the services could not start (`fault start-fails`, a half-configured package).
        #[serde(default)]
        reason: String,
    },
    SyncCompleted {
        node: String,
    },
    PackageInstalled {
        node: String,
        version: String,
        services_running: bool,
    },
    InstallFailed {
        node: String,
        version: String,
        reason: String,
    },
    ClusterFailoverSet {
        node: String,
        enabled: bool,
    },
    NodeFailoverSet {
        node: String,
        enabled: bool,
    },
    /// A leader was asked to step down; `unsynced` lists the other nodes that were not synced followers.
    DemoteRequested {
        node: String,
        by: String,
        unsynced: Vec<String>,
    },
    ElectionStarted {
        trigger: ElectionTrigger,
        old_leader: Option<String>,
        due_ms: u64,
    },
    LeaderElected {
        node: String,
        trigger: ElectionTrigger,
    },
    ElectionFailed {
        trigger: ElectionTrigger,
        reason: String,
    },
    /// The last leader came back with nobody having replaced it and took leadership again.
    LeaderResumed {
        node: String,
    },
    /// A majority of the nodes is down: etcd has no quorum, the leader (if any) stepped down.
    QuorumLost {
        up: usize,
        total: usize,
        leader: Option<String>,
    },
    FaultSet {
        node: String,
        fault: String,
    },
    FaultCleared {
        node: String,
        fault: String,
    },
}

/// The actor of Baton's own commands (the default of `BATON_SIM_ACTOR` for node tools).
pub const ORCHESTRATOR: &str = "orchestrator";
/// The default actor of `baton-sim crash`, `restart` and `fault`.
pub const ENVIRONMENT: &str = "environment";

fn orchestrator() -> String {
    ORCHESTRATOR.to_string()
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// A command run on a node (`argv[0]` is the tool name, e.g. `chef-backend-ctl`; `baton-sim` for
    /// the environment's `crash` and `restart`).
    Command {
        node: String,
        argv: Vec<String>,
        exit_code: i32,
        started_ms: u64,
        finished_ms: u64,
        /// Who ran it (`BATON_SIM_ACTOR`): `orchestrator`, `environment`, `operator`, ...
        #[serde(default = "orchestrator")]
        actor: String,
    },
    Event {
        at_ms: u64,
        event: Event,
        /// The actor whose command caused the change; absent for the cluster's own time-driven
        /// transitions (a sync completing). An election carries the actor of the command that started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        actor: Option<String>,
    },
}
