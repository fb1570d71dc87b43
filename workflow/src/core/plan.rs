//! The plan: the ordered list of items (actions, health waits, gates, checks) computed from the preflight
//! observations. Its hash lets an operator approve exactly the plan they reviewed (`--expect-plan`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cluster::{ClusterFile, Gate};
use super::error::CoreError;
use super::profile::{render, Action, Procedure, Profile, RenderContext, RunsOn};

/// The phases of the procedure (DESIGN.md "Phases").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Observing topology, health and versions.
    #[default]
    Preflight,
    /// Disabling failover.
    BlockFailover,
    /// Upgrading followers one at a time.
    Followers,
    /// Moving leadership to an upgraded follower.
    Switchover,
    /// Upgrading the old leader.
    OldLeader,
    /// Re-enabling failover.
    UnblockFailover,
    /// Checking the cluster is stable.
    Verify,
}

/// One item of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanItem {
    /// Run an action.
    Run {
        /// Phase.
        phase: Phase,
        /// Node it runs on.
        node: String,
        /// Executor group.
        group: String,
        /// Action.
        action: Action,
        /// Rendered argv.
        argv: Vec<String>,
        /// Executor timeout.
        timeout_ms: u64,
        /// Whether it may be retried blindly.
        idempotent: bool,
    },
    /// Poll `status`, `cluster-status` and the version on `node` until healthy, synced and upgraded (S1).
    WaitSynced {
        /// Phase.
        phase: Phase,
        /// The node.
        node: String,
    },
    /// Wait for an operator's approval.
    Gate {
        /// Phase.
        phase: Phase,
        /// The gate.
        gate: Gate,
    },
    /// Poll `cluster-status` on `via` until another, upgraded node leads and `old_leader` is a follower (S2).
    VerifySwitchover {
        /// Phase.
        phase: Phase,
        /// The leader before the switchover.
        old_leader: String,
        /// Where to observe from.
        via: String,
    },
    /// Poll `cluster-status` and `status` on `via` until the cluster is healthy with one leader.
    VerifyStable {
        /// Phase.
        phase: Phase,
        /// Where to observe from.
        via: String,
    },
}

impl PlanItem {
    /// The phase the item belongs to.
    pub fn phase(&self) -> Phase {
        match self {
            PlanItem::Run { phase, .. }
            | PlanItem::WaitSynced { phase, .. }
            | PlanItem::Gate { phase, .. }
            | PlanItem::VerifySwitchover { phase, .. }
            | PlanItem::VerifyStable { phase, .. } => *phase,
        }
    }
}

/// The computed plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Cluster name.
    pub cluster: String,
    /// Target version.
    pub target_version: String,
    /// Procedure.
    pub procedure: Procedure,
    /// The leader observed at preflight.
    pub leader: String,
    /// Node GUIDs observed at preflight.
    pub guids: BTreeMap<String, String>,
    /// Installed versions observed at preflight (`None`: not installed).
    pub versions: BTreeMap<String, Option<String>>,
    /// Nodes already at the target version.
    pub skipped: Vec<String>,
    /// The items, in order.
    pub items: Vec<PlanItem>,
    /// The SHA-256 of the profile file the plan was made from (none for a built-in profile), so that the plan
    /// hash an operator approves covers the profile's commands and parsers too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_sha256: Option<String>,
    /// With a profile file: the SHA-256 of the cluster file's nodes (names, addresses, executor groups, vars) as
    /// canonical JSON. A profile's probes render node vars and addresses that no planned action shows (etcd's
    /// `endpoints`), so the plan hash covers them through this. None for a built-in profile (hashes unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes_sha256: Option<String>,
    /// The versions preflight saw the nodes' processes run (a profile's `running_version` probe; empty for
    /// chef-backend, so its plans and hashes are unchanged): with `versions`, what "already at target" rests on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub running: BTreeMap<String, String>,
}

impl Plan {
    /// SHA-256 of the plan's canonical JSON (struct fields in declaration order, maps sorted), hex.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        hex_lower(&Sha256::digest(&bytes))
    }

    /// Nodes the plan upgrades, in order.
    pub fn nodes_to_upgrade(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for item in &self.items {
            if let PlanItem::WaitSynced { node, .. } = item {
                if !out.contains(&node.as_str()) {
                    out.push(node);
                }
            }
        }
        out
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Everything preflight learned that the plan depends on.
#[derive(Debug, Clone)]
pub struct PlanInputs<'a> {
    /// The cluster file.
    pub cluster: &'a ClusterFile,
    /// The profile.
    pub profile: &'a Profile,
    /// Package path.
    pub package: &'a str,
    /// Target version.
    pub target_version: &'a str,
    /// All gates (file and submission).
    pub gates: &'a [Gate],
    /// The leader observed.
    pub leader: &'a str,
    /// GUIDs observed.
    pub guids: BTreeMap<String, String>,
    /// Versions observed.
    pub versions: BTreeMap<String, Option<String>>,
    /// The versions the nodes' processes run, as preflight observed them (only a profile with a
    /// `running_version` probe shows them; empty otherwise).
    pub running: BTreeMap<String, String>,
}

struct Builder<'a> {
    inputs: &'a PlanInputs<'a>,
    items: Vec<PlanItem>,
}

impl Builder<'_> {
    fn run(
        &mut self,
        phase: Phase,
        action: Action,
        node: &str,
        any_node: &str,
    ) -> Result<(), CoreError> {
        self.run_to(phase, action, node, any_node, None)
    }

    /// As `run`, for an action that names a target node (a profile's switchover: `{target...}`).
    fn run_to(
        &mut self,
        phase: Phase,
        action: Action,
        node: &str,
        any_node: &str,
        target_node: Option<&str>,
    ) -> Result<(), CoreError> {
        let inputs = self.inputs;
        let spec = inputs
            .profile
            .action(action)
            .ok_or_else(|| CoreError::Template {
                template: action.as_str().to_string(),
                message: format!("profile {} has no action {action}", inputs.profile.name),
            })?;
        let target = match spec.runs_on {
            RunsOn::Leader => inputs.leader,
            RunsOn::TheNode => node,
            RunsOn::AnyNode => any_node,
        };
        let spec_node = inputs
            .cluster
            .node(target)
            .ok_or_else(|| CoreError::Template {
                template: action.as_str().to_string(),
                message: format!("node {target} is not in the cluster file"),
            })?;
        let target_spec = match target_node {
            Some(t) => Some(inputs.cluster.node(t).ok_or_else(|| CoreError::Template {
                template: action.as_str().to_string(),
                message: format!("target node {t} is not in the cluster file"),
            })?),
            None => None,
        };
        let ctx = RenderContext {
            package: inputs.package,
            node: &spec_node.name,
            address: &spec_node.address,
            vars: Some(&spec_node.vars),
            version: inputs.target_version,
            target: target_spec,
        };
        let argv = render(&spec.argv, &ctx)?;
        let timeout_ms = inputs
            .cluster
            .upgrade
            .timeouts_ms
            .get(&action)
            .copied()
            .unwrap_or(spec.timeout_ms);
        self.items.push(PlanItem::Run {
            phase,
            node: spec_node.name.clone(),
            group: spec_node.executor.clone(),
            action,
            argv,
            timeout_ms,
            idempotent: spec.idempotent,
        });
        Ok(())
    }

    fn upgrade_node(&mut self, phase: Phase, node: &str, any_node: &str) -> Result<(), CoreError> {
        match self.inputs.profile.procedure {
            Procedure::Runbook => {
                self.run(phase, Action::Stop, node, any_node)?;
                self.run(phase, Action::Install, node, any_node)?;
                self.run(phase, Action::Start, node, any_node)?;
            }
            Procedure::UpgradeCommand => {
                self.run(phase, Action::Install, node, any_node)?;
                self.run(phase, Action::Upgrade, node, any_node)?;
            }
        }
        self.items.push(PlanItem::WaitSynced {
            phase,
            node: node.to_string(),
        });
        Ok(())
    }
}

/// Computes the plan. Followers go in cluster-file order; the leader last, after a switchover (S2).
///
/// A node is left out (`skipped`, "already at target") only when preflight saw it both *install* and *run* the
/// target: a profile with a `running_version` probe shows both. chef-backend shows only what is installed (after
/// an aborted `upgrade`, a node can have the new package installed and still run the old version), so every one
/// of its nodes is in the plan: restarting such a node onto its package is one more rolling step, and skipping it
/// could later elect a leader that runs the old version. A leader already at target needs no switchover: the
/// followers roll and it keeps leading.
pub fn compute_plan(inputs: &PlanInputs<'_>) -> Result<Plan, CoreError> {
    // Exactly the target, as the checks after each node's restart compare it (not by numbers: "v3.5.1" or a
    // "3.5.1-rc.0" a profile reads is not the target and is rolled).
    let at_target = |v: &str| v == inputs.target_version;
    let needs_upgrade = |name: &str| {
        let installed = inputs.versions.get(name).and_then(|v| v.as_deref());
        let running = inputs.running.get(name).map(String::as_str);
        !(inputs.profile.version_change.is_some()
            && installed.is_some_and(at_target)
            && running.is_some_and(at_target))
    };
    let followers: Vec<&str> = inputs
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| *n != inputs.leader)
        .collect();
    let to_upgrade: Vec<&str> = followers
        .iter()
        .copied()
        .filter(|n| needs_upgrade(n))
        .collect();
    let leader_needs = needs_upgrade(inputs.leader);
    let skipped: Vec<String> = inputs
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| !needs_upgrade(n))
        .collect();
    let mut b = Builder {
        inputs,
        items: Vec::new(),
    };

    if !to_upgrade.is_empty() || leader_needs {
        let leader = inputs.leader;
        // After the switchover the old leader goes out of service; cluster-wide commands then run on the first
        // follower, which is upgraded (or already was) by then.
        let after = followers.first().copied().unwrap_or(leader);
        // A system without an automatic-failover fence (etcd) has nothing to block or restore.
        let fence = inputs.profile.fence;
        if fence {
            b.run(Phase::BlockFailover, Action::BlockFailover, leader, leader)?;
        }
        for (i, node) in to_upgrade.iter().enumerate() {
            b.upgrade_node(Phase::Followers, node, leader)?;
            if i == 0 && inputs.gates.contains(&Gate::AfterFirstFollower) {
                b.items.push(PlanItem::Gate {
                    phase: Phase::Followers,
                    gate: Gate::AfterFirstFollower,
                });
            }
        }
        // Every follower was already done: the gate the operator asked for still stops the upgrade where the
        // first follower's would have, before anything else runs.
        if to_upgrade.is_empty() && inputs.gates.contains(&Gate::AfterFirstFollower) {
            b.items.push(PlanItem::Gate {
                phase: Phase::Followers,
                gate: Gate::AfterFirstFollower,
            });
        }
        if leader_needs {
            if inputs.gates.contains(&Gate::BeforeSwitchover) {
                b.items.push(PlanItem::Gate {
                    phase: Phase::Switchover,
                    gate: Gate::BeforeSwitchover,
                });
            }
            let demote = match inputs.profile.procedure {
                Procedure::Runbook => Action::Demote,
                Procedure::UpgradeCommand => {
                    // The newer procedure installs first (services keep running), then `upgrade --failover`
                    // demotes, restarts and rejoins in one command.
                    b.run(Phase::Switchover, Action::Install, leader, leader)?;
                    Action::UpgradeLeader
                }
            };
            // A switchover that names its target (a profile's `{target...}`) hands leadership to the first
            // follower, upgraded by now; the guard checks it is in service and caught up before it runs.
            let target = inputs.profile.switchover_has_target().then_some(after);
            // A target left out as already done was last looked at in preflight (maybe hours ago, with gates):
            // it is checked again, healthy, caught up and running the target, right before leadership goes there.
            if skipped.iter().any(|s| s == after) {
                b.items.push(PlanItem::WaitSynced {
                    phase: Phase::Switchover,
                    node: after.to_string(),
                });
            }
            // chef-backend's leaderl demotes only with failover on, so its runbook lifts the fence for the
            // switchover and sets it again on the new leader; a system that switches over to a named target
            // while fenced (Patroni, paused) keeps it up throughout.
            let lift = fence && !inputs.profile.switchover_keeps_fence;
            if lift {
                b.run(Phase::Switchover, Action::UnblockFailover, leader, leader)?;
            }
            b.run_to(Phase::Switchover, demote, leader, leader, target)?;
            if lift {
                b.run(Phase::Switchover, Action::BlockFailover, after, after)?;
            }
            b.items.push(PlanItem::VerifySwitchover {
                phase: Phase::Switchover,
                old_leader: leader.to_string(),
                via: after.to_string(),
            });
            match inputs.profile.procedure {
                Procedure::Runbook => b.upgrade_node(Phase::OldLeader, leader, after)?,
                Procedure::UpgradeCommand => b.items.push(PlanItem::WaitSynced {
                    phase: Phase::OldLeader,
                    node: leader.to_string(),
                }),
            }
        }
        let via = if leader_needs { after } else { leader };
        if fence {
            b.run(Phase::UnblockFailover, Action::UnblockFailover, via, via)?;
        }
        b.items.push(PlanItem::VerifyStable {
            phase: Phase::Verify,
            via: via.to_string(),
        });
    }

    Ok(Plan {
        cluster: inputs.cluster.name.clone(),
        target_version: inputs.target_version.to_string(),
        procedure: inputs.profile.procedure,
        leader: inputs.leader.to_string(),
        guids: inputs.guids.clone(),
        versions: inputs.versions.clone(),
        skipped,
        items: b.items,
        profile_sha256: inputs.profile.source_sha256.clone(),
        nodes_sha256: inputs.profile.source_sha256.as_ref().map(|_| {
            let bytes = serde_json::to_vec(&inputs.cluster.nodes).unwrap_or_default();
            hex_lower(&Sha256::digest(&bytes))
        }),
        running: inputs.running.clone(),
    })
}
