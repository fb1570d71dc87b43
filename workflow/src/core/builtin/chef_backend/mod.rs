//! chef-backend, built into the core: everything of it that is its own lives here, and only here may its
//! names appear (`workflow/tests/core_tidy.rs`). The neutral core reaches it through the `builtin` seam, by
//! name ([`BUILTIN`]), never by importing these items.
//!
//! - [`reader`]: its reader, from its command output (`status`, `cluster-status`, `cluster-status --json`,
//!   the package tools) to observations, and those to the abstract `Topology` and `NodeHealth`.
//! - [`profile`]: its built-in profile (`profiles/chef-backend.toml` compiled in) and the cluster file's
//!   variants of it ([`Installer`], and the procedure).

pub mod profile;
pub mod reader;

pub use profile::{Installer, CHEF_BACKEND_PROFILE};
pub use reader::{
    parse_cluster_status, parse_simple_status, parse_status, parse_version_output, ClusterMember,
    ClusterStatus, FailoverSettings, Role, ServiceRow, ServiceState, SimpleService, StatusReport,
};

use super::Builtin;
use crate::core::profile::Profile;

/// The name a cluster file's `profile` and a profile file's `reader` give chef-backend.
pub const NAME: &str = "chef-backend";

/// What chef-backend's reader records in the log: the payload of `Observation::ClusterStatus` (its
/// `cluster-status` table). The log keeps these tables as they are, so recorded upgrades replay.
pub type RecordedTopology = ClusterStatus;
/// The payload of `Observation::NodeStatus`: its `status` table.
pub type RecordedNodeStatus = StatusReport;
/// The payload of `Observation::Failover`: the failover settings of `cluster-status --json`.
pub type RecordedFailover = FailoverSettings;

/// chef-backend as the seam reaches it.
pub const BUILTIN: Builtin = Builtin {
    name: NAME,
    profile: Profile::chef_backend,
    read_probe: reader::read_probe,
    version_from_package: reader::version_from_package,
    topology: |output| parse_cluster_status(output).map(|s| s.topology()),
    // Up when every service runs; its replication counts are the node's view of the others (the upgrade
    // loop reads them through its own observation, not this reading).
    node_up: |output| Ok(parse_status(output)?.health(0).not_running().is_empty()),
    // Blocked when cluster failover is off.
    fence_blocked: |output| Ok(!reader::parse_failover_json(output)?.cluster),
    // `dpkg-query`'s state and version, or a bare version (`dpkg-deb`, `rpm`).
    version: |output| {
        reader::parse_package_state(output)
            .map(|(v, _)| v)
            .or_else(|_| parse_version_output(output))
    },
};
