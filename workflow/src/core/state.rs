//! The upgrade's state, built only by applying events ([`State::apply`], wrapped by `evolve`). Queries here are
//! what the service and the CLI show; the fields stay private so that only events change them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cluster::{ClusterFile, Gate};
use super::event::{
    Event, Observation, Outcome, Resolution, ScheduledStep, WaitPurpose, WindDownCause,
};
use super::observe::Topology;
use super::observed::{Facts, NodeFacts};
use super::plan::{Phase, Plan, PlanItem};
use super::profile::{Action, Profile};

/// Where the upgrade stands, for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Nothing submitted yet.
    NotSubmitted,
    /// Preflight: observing the cluster and computing the plan.
    Planning,
    /// Executing the plan.
    Running,
    /// Paused by an operator (a running step still finishes).
    Paused {
        /// Who.
        by: String,
        /// Why.
        reason: String,
    },
    /// Waiting at a gate.
    WaitingApproval {
        /// The gate.
        gate: Gate,
    },
    /// Stopped until an operator settles a step (`Resolve`) or aborts.
    NeedsVerification {
        /// The step in doubt.
        step: u64,
        /// Why.
        reason: String,
    },
    /// Aborting or halting: restoring failover before ending.
    WindingDown {
        /// Why.
        reason: String,
    },
    /// Terminal: plan-only submission, plan computed.
    Planned,
    /// Terminal: done, failover restored.
    Completed,
    /// Terminal: halted on a failure.
    Halted {
        /// Why.
        reason: String,
        /// Why failover is still blocked, if it is.
        failover_pending: Option<String>,
    },
    /// Terminal: aborted.
    Aborted {
        /// Why.
        reason: String,
        /// Why failover is still blocked, if it is.
        failover_pending: Option<String>,
    },
}

/// A node's progress through the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodePhase {
    /// Not planned yet, or waiting its turn.
    #[default]
    Pending,
    /// Already at the target version.
    Skipped,
    /// Its upgrade actions are running.
    Upgrading,
    /// Waiting for it to be healthy and synced.
    Syncing,
    /// Upgraded, healthy and synced.
    Upgraded,
}

/// Per-node progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NodeProgress {
    /// Phase.
    pub phase: NodePhase,
    /// The last action run on the node (stop, install, start, demote, upgrade; not a probe, not a cluster-wide
    /// command that merely ran there).
    pub last_step: Option<u64>,
    /// Its action.
    pub last_action: Option<Action>,
    /// The last non-empty output line of that action's result.
    pub last_output: Option<String>,
}

/// A recorded outcome of a step attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Outcome.
    pub outcome: Outcome,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Reason.
    pub reason: Option<String>,
    /// When.
    pub at_ms: u64,
}

/// A step and its latest attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// As scheduled (latest attempt).
    pub scheduled: ScheduledStep,
    /// Its outcome, once known.
    pub outcome: Option<StepOutcome>,
}

impl Submission {
    /// How long the cluster may show no leader while failover is blocked before that is an emergency (S3's
    /// exit): the cluster file's `election_window_ms`, or, when it names a profile file and leaves that unset,
    /// the profile's `election_ms`.
    pub(crate) fn election_window_ms(&self) -> u64 {
        match (
            self.cluster.upgrade.election_window_from_profile,
            self.profile.election_ms,
        ) {
            (true, Some(ms)) => ms,
            _ => self.cluster.upgrade.election_window_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Submission {
    pub upgrade: String,
    pub cluster: ClusterFile,
    pub profile: Profile,
    /// Why the recorded profile does not load in this version of the core (a log written by another version,
    /// whose draft profile format has since changed). `decide` halts with it rather than act on a profile
    /// without actions.
    pub profile_error: Option<String>,
    pub package: String,
    pub target_version: String,
    pub gates: Vec<Gate>,
    pub plan_only: bool,
    pub expected_plan_hash: Option<String>,
    pub executors_online: Vec<String>,
    pub requested_by: String,
    pub submitted_ms: u64,
}

/// The plan item being executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub index: usize,
    pub started_ms: u64,
    /// Probes of this item that passed since the last poll wait.
    pub checks_passed: usize,
    /// The action step of a `Run` item.
    pub step: Option<u64>,
    /// That step is due to run again (a retry wait started for it): its guard runs first, then the new attempt.
    pub retry: Option<u64>,
    /// Guard observations of probes numbered below this were asked before the last resume: stale.
    pub fresh_from: u64,
}

/// A step whose effect is being re-observed (S4): a non-idempotent step that did not succeed, or any action
/// with an observable effect whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reobserve {
    pub step: u64,
    /// Run the step again if the observation shows it did not take effect (operator chose `Retry`).
    pub retry_if_not: bool,
    /// The step is not idempotent: only the observation or an operator decides what follows, never the retry
    /// policy, and a wind-down does not bring its node back meanwhile.
    pub decides_alone: bool,
    /// Probes of the step's effect that showed it so far (an `upgrade` needs its version and its `status`).
    pub checks_passed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindDown {
    pub cause: WindDownCause,
    pub reason: String,
    pub started_ms: u64,
    /// Steps below this id were scheduled before the wind-down: their results are only drained.
    pub first_step: u64,
    pub checks_passed: usize,
    pub unblock_step: Option<u64>,
    /// The node a wind-down brings back into service before it restores failover: on an abort the one this
    /// upgrade had out of service, on a failure the one it stopped and did not start again. Cleared when the
    /// wind-down restarts after that (brought back or not).
    pub recover: Option<String>,
    /// Problems the failover gate tolerated in its last passing round (a stuck node), for the end's reason.
    pub left: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Terminal {
    Planned,
    Completed,
    Halted {
        reason: String,
        failover_pending: Option<String>,
    },
    Aborted {
        reason: String,
        failover_pending: Option<String>,
    },
}

/// A value shared between clones of a [`State`] until one of them changes it (copy on write): a clone costs a
/// reference count, and the first change after a clone copies the value once. For the fields that every
/// decision's clone of the state would otherwise copy although most decisions leave them alone.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct Shared<T>(Arc<T>);

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Clone> std::ops::DerefMut for Shared<T> {
    fn deref_mut(&mut self) -> &mut T {
        Arc::make_mut(&mut self.0)
    }
}

impl<T> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared(Arc::new(value))
    }
}

/// Every step's record, by step id: a persistent map (structural sharing), so that cloning a [`State`] costs
/// the same at the end of a long history as at its start, and a change copies only the O(log n) nodes on the
/// path to its key. `decide` works on a clone of the state and `verify` decides once per recorded input: with a
/// plain map each decision copied every record (outputs included), which made `verify` quadratic in the
/// history (tests/FUZZ.md, `cargo bench -p workflow --bench verify`). The methods are the `BTreeMap` ones the
/// core uses, with the same meaning and order.
#[derive(Clone, PartialEq, Eq, Default)]
pub(crate) struct Steps(rpds::RedBlackTreeMapSync<u64, StepRecord>);

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl Steps {
    pub(crate) fn get(&self, step: &u64) -> Option<&StepRecord> {
        self.0.get(step)
    }

    /// The record to change in place; copies only the path to it (and the record) if it is shared.
    pub(crate) fn get_mut(&mut self, step: &u64) -> Option<&mut StepRecord> {
        self.0.get_mut(step)
    }

    /// Inserts or replaces the record of `step`.
    pub(crate) fn insert(&mut self, step: u64, record: StepRecord) {
        self.0.insert_mut(step, record);
    }

    pub(crate) fn contains_key(&self, step: &u64) -> bool {
        self.0.contains_key(step)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// In step order.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (&u64, &StepRecord)> + '_ {
        self.0.iter()
    }

    pub(crate) fn keys(&self) -> impl DoubleEndedIterator<Item = &u64> + '_ {
        self.0.keys()
    }

    pub(crate) fn values(&self) -> impl DoubleEndedIterator<Item = &StepRecord> + '_ {
        self.0.values()
    }

    pub(crate) fn range(
        &self,
        range: std::ops::RangeFrom<u64>,
    ) -> impl DoubleEndedIterator<Item = (&u64, &StepRecord)> + '_ {
        self.0.range(range)
    }
}

/// The state of one upgrade. Built by events only; compare two with `==` (replay checks rely on it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    /// Set once by the submission and never changed: shared between clones (see [`Steps`]).
    pub(crate) sub: Option<Arc<Submission>>,
    pub(crate) phase: Phase,
    pub(crate) next_step: u64,
    pub(crate) steps: Steps,
    /// The step being waited for or taken up: an action, a single probe, or the first probe of a round whose
    /// observation is not recorded yet.
    pub(crate) current: Option<u64>,
    /// The probes of the latest round (several read-only probes scheduled in one decision, `decide::round_of`)
    /// whose observation is not recorded yet, in step order; empty outside a round (a single probe is no round).
    pub(crate) round: Vec<u64>,
    /// The round's judgment ended before its last probe (a check failed, a wait, a wind-down, a pause): the
    /// rest of its observations are recorded (the views and facts stay true) but not judged.
    pub(crate) round_settled: bool,
    /// The last event applied scheduled a fresh probe: a fresh probe scheduled right after it (the same
    /// decision) joins its round.
    pub(crate) round_open: bool,
    /// Preflight probes passed so far.
    pub(crate) preflight_passed: usize,
    pub(crate) versions: BTreeMap<String, Option<String>>,
    /// The versions preflight saw each node's process run (a profile's `running_version` probe).
    pub(crate) running_versions: BTreeMap<String, String>,
    pub(crate) preflight_cluster: Option<Shared<Topology>>,
    /// Set once by preflight and never changed: shared between clones.
    pub(crate) plan: Option<Arc<Plan>>,
    pub(crate) plan_hash: Option<String>,
    pub(crate) items_done: usize,
    pub(crate) cursor: Option<Cursor>,
    pub(crate) wait: Option<(WaitPurpose, u64)>,
    pub(crate) failover_blocked: bool,
    pub(crate) approvals: BTreeSet<Gate>,
    pub(crate) awaiting_gate: Option<Gate>,
    pub(crate) paused: Option<(String, String)>,
    pub(crate) reobserve: Option<Reobserve>,
    pub(crate) verification: Option<(u64, String)>,
    pub(crate) resolution: Option<(u64, Resolution)>,
    pub(crate) wind_down: Option<WindDown>,
    pub(crate) terminal: Option<Terminal>,
    pub(crate) nodes: BTreeMap<String, NodeProgress>,
    /// The latest look at the whole cluster (`cluster-status`).
    pub(crate) last_cluster: Option<Shared<Topology>>,
    /// The latest observation, for deciding right after `ObservationRecorded`.
    pub(crate) last_observation: Option<(u64, Observation)>,
    /// The latest failed check, for halt reasons.
    pub(crate) last_problems: Vec<String>,
    /// Steps whose outcome was unknown and whose effect an observation showed (`OutcomeInferred`).
    pub(crate) inferred: BTreeSet<u64>,
    /// The latest installed version observed on each node (any version probe, not only preflight's).
    pub(crate) observed_versions: BTreeMap<String, String>,
    /// Since when (the probe's result time) the latest `cluster-status` observations show no single leader.
    pub(crate) leaderless_since: Option<u64>,
    /// Nodes whose latest `cluster-status` or failover probe could not run (their etcd is unreachable):
    /// cluster-wide probes are asked of another node.
    pub(crate) unreachable: BTreeSet<String>,
    /// The leader confirmed by the switchover check; until then the plan's leader is expected.
    pub(crate) new_leader: Option<String>,
    /// A `cluster-status` that only watches for a lost leader while the upgrade waits for an operator (paused,
    /// at a gate) with failover blocked: its observation feeds the emergency exit and nothing else.
    pub(crate) watching: Option<u64>,
    /// What the cluster last showed of each node, for the views (no decision reads it).
    pub(crate) facts: Shared<Facts>,
    /// The latest time an event carries (a step's scheduling time included).
    pub(crate) updated_ms: Option<u64>,
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

impl State {
    /// The upgrade id, once submitted.
    pub fn upgrade_id(&self) -> Option<&str> {
        self.sub.as_ref().map(|s| s.upgrade.as_str())
    }

    /// The cluster's name, once submitted.
    pub fn cluster_name(&self) -> Option<&str> {
        self.sub.as_ref().map(|s| s.cluster.name.as_str())
    }

    /// The cluster file, once submitted.
    pub fn cluster(&self) -> Option<&ClusterFile> {
        self.sub.as_ref().map(|s| &s.cluster)
    }

    /// The resolved target version.
    pub fn target_version(&self) -> Option<&str> {
        self.sub.as_ref().map(|s| s.target_version.as_str())
    }

    /// The resolved package path.
    pub fn package(&self) -> Option<&str> {
        self.sub.as_ref().map(|s| s.package.as_str())
    }

    /// Who submitted it.
    pub fn requested_by(&self) -> Option<&str> {
        self.sub.as_ref().map(|s| s.requested_by.as_str())
    }

    /// When it was submitted.
    pub fn submitted_ms(&self) -> Option<u64> {
        self.sub.as_ref().map(|s| s.submitted_ms)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Where the upgrade stands.
    pub fn status(&self) -> Status {
        if let Some(t) = &self.terminal {
            return match t {
                Terminal::Planned => Status::Planned,
                Terminal::Completed => Status::Completed,
                Terminal::Halted {
                    reason,
                    failover_pending,
                } => Status::Halted {
                    reason: reason.clone(),
                    failover_pending: failover_pending.clone(),
                },
                Terminal::Aborted {
                    reason,
                    failover_pending,
                } => Status::Aborted {
                    reason: reason.clone(),
                    failover_pending: failover_pending.clone(),
                },
            };
        }
        if self.sub.is_none() {
            return Status::NotSubmitted;
        }
        if let Some(w) = &self.wind_down {
            return Status::WindingDown {
                reason: w.reason.clone(),
            };
        }
        if let Some((by, reason)) = &self.paused {
            return Status::Paused {
                by: by.clone(),
                reason: reason.clone(),
            };
        }
        if let Some((step, reason)) = &self.verification {
            return Status::NeedsVerification {
                step: *step,
                reason: reason.clone(),
            };
        }
        if let Some(gate) = self.awaiting_gate {
            return Status::WaitingApproval { gate };
        }
        if self.plan.is_none() {
            Status::Planning
        } else {
            Status::Running
        }
    }

    /// Whether the upgrade has ended (planned, completed, halted or aborted).
    pub fn is_terminal(&self) -> bool {
        self.terminal.is_some()
    }

    /// Per-node progress, by node name.
    pub fn nodes(&self) -> &BTreeMap<String, NodeProgress> {
        &self.nodes
    }

    /// The latest `cluster-status` observed: who leads now, each member's role.
    pub fn last_cluster(&self) -> Option<&Topology> {
        self.last_cluster.as_deref()
    }

    /// The latest installed version observed on `node`.
    pub fn observed_version(&self, node: &str) -> Option<&str> {
        self.observed_versions.get(node).map(String::as_str)
    }

    /// What the cluster last showed of `node` (role, sync state, services, installed and running version, when
    /// last seen), each fact with its time; a fact an action since may have changed is not known.
    pub fn node_facts(&self, node: &str) -> Option<&NodeFacts> {
        self.facts.nodes.get(node)
    }

    /// The system's services, as the first node view showed them (empty until one did).
    pub fn service_names(&self) -> &[String] {
        &self.facts.services
    }

    /// The latest time any event of this upgrade carries (its last change).
    pub fn updated_ms(&self) -> Option<u64> {
        self.updated_ms
    }

    /// When `step` was scheduled: its deadline less its timeout and the result grace.
    pub fn scheduled_ms(&self, step: &ScheduledStep) -> u64 {
        self.scheduled_at(step.deadline_ms, step.timeout_ms)
    }

    fn scheduled_at(&self, deadline_ms: u64, timeout_ms: u64) -> u64 {
        let grace = self
            .sub
            .as_ref()
            .map_or(0, |s| s.cluster.upgrade.result_grace_ms);
        deadline_ms.saturating_sub(timeout_ms).saturating_sub(grace)
    }

    /// The node a wind-down is bringing back into service, if any.
    pub fn recovering(&self) -> Option<&str> {
        self.wind_down.as_ref().and_then(|w| w.recover.as_deref())
    }

    /// The plan item being executed, with its index and when it started.
    pub fn current_plan_item(&self) -> Option<(usize, &PlanItem, u64)> {
        let c = self.cursor.as_ref()?;
        let item = self.plan.as_ref()?.items.get(c.index)?;
        Some((c.index, item, c.started_ms))
    }

    /// The plan, once preflight computed it.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_deref()
    }

    /// What the plan left out because those members already ran the target, for `list`'s row of a completed
    /// upgrade: "completed" with nothing done must not read like an upgrade that ran. `None`: nobody was left out.
    pub fn skipped_note(&self) -> Option<String> {
        let plan = self.plan()?;
        if plan.skipped.is_empty() {
            return None;
        }
        let nodes = self.nodes.len();
        let upgraded = nodes.saturating_sub(plan.skipped.len());
        Some(if upgraded == 0 {
            format!(
                "nothing to do: every member already ran the target ({})",
                plan.skipped.join(", ")
            )
        } else {
            format!(
                "{upgraded} of {nodes} members upgraded; already at the target: {}",
                plan.skipped.join(", ")
            )
        })
    }

    /// The SHA-256 of the profile file this upgrade runs (`None` for a built-in profile): the hash of the very
    /// text whose parsers read the probes' output (the plan records the same value, and its hash covers it).
    /// Every step request carries it, and an executor runs a step only if it is its own profile file's.
    pub fn profile_sha256(&self) -> Option<&str> {
        self.sub.as_ref()?.profile.source_sha256.as_deref()
    }

    /// The plan's hash.
    pub fn plan_hash(&self) -> Option<&str> {
        self.plan_hash.as_deref()
    }

    /// Whether failover may currently be blocked by this upgrade (set when blocking is scheduled, cleared when
    /// unblocking succeeded): the obligation to restore it.
    pub fn failover_blocked(&self) -> bool {
        self.failover_blocked
    }

    /// Why failover was left blocked at the end, if it was.
    pub fn failover_pending(&self) -> Option<&str> {
        match &self.terminal {
            Some(Terminal::Halted {
                failover_pending, ..
            })
            | Some(Terminal::Aborted {
                failover_pending, ..
            }) => failover_pending.as_deref(),
            _ => None,
        }
    }

    /// Approved gates.
    pub fn approvals(&self) -> &BTreeSet<Gate> {
        &self.approvals
    }

    /// All gates of this upgrade (cluster file and submission).
    pub fn gates(&self) -> &[Gate] {
        self.sub.as_ref().map(|s| s.gates.as_slice()).unwrap_or(&[])
    }

    /// A step's record.
    pub fn step(&self, step: u64) -> Option<&StepRecord> {
        self.steps.get(&step)
    }

    /// Steps scheduled whose outcome is not recorded (to re-publish after a service restart).
    pub fn outstanding_steps(&self) -> Vec<ScheduledStep> {
        self.steps
            .values()
            .filter(|r| r.outcome.is_none())
            .map(|r| r.scheduled.clone())
            .collect()
    }

    /// The probes of the round the core waits on (scheduled together in one decision, `decide::round_of`), in
    /// step order, each with its outcome once it came: empty outside a round (a single step is no round) and
    /// once the round is abandoned (an emergency exit or an abort no longer waits on it). What `status` shows,
    /// so that an operator sees every probe the upgrade waits on, not only the first.
    pub fn round_steps(&self) -> Vec<&StepRecord> {
        self.round
            .iter()
            .filter_map(|s| self.steps.get(s))
            .collect()
    }

    /// The step the core waits on now, if any: the current step or the first of its round still without a
    /// result; never a probe an emergency exit or an abort abandoned (still outstanding, but nothing waits on it).
    pub fn awaited_step(&self) -> Option<&ScheduledStep> {
        self.current
            .iter()
            .chain(&self.round)
            .filter_map(|s| self.steps.get(s))
            .filter(|r| r.outcome.is_none())
            .min_by_key(|r| r.scheduled.step)
            .map(|r| &r.scheduled)
    }

    /// The sole leader `topology` shows, as far as the emergency clock (S3) is concerned: while the upgrade waits
    /// for an operator (paused, at a gate, or for a verification) with failover blocked, not a leader Baton cannot
    /// reach (`unreachable`: its own cluster-wide probe failed, or a probe of it got no answer). A member cut off
    /// from the others serves the picture it had then (Patroni's DCS cache, etcd's last known leader): once the
    /// leader's host dies, such a picture still names it, and may be the only topology left to read. Taken at its
    /// word, the watch would keep failover off beside no leader for as long as the wait lasts; instead the clock
    /// runs, the watch asks the unreachable leader itself every other look (`decide::watch_observer`: alive, it
    /// vouches for itself again), and the emergency exit follows (a profile with `leader_when` asks every member
    /// first, and a live leader that answers keeps the fence up; chef-backend re-enables failover at once, which
    /// beside a live leader whose executor is only silent costs the upgrade, not the cluster: ARCHITECTURE.md's
    /// failure table). Running, the guard asks the leader's own node probe before every action, and a
    /// leader that stays unanswered ends it within the guard's and the wind-down's `sync_timeout_ms`; a lost answer
    /// there must not start the clock.
    pub(crate) fn leader_vouched<'t>(&self, topology: &'t Topology) -> Option<&'t str> {
        let waiting =
            self.paused.is_some() || self.awaiting_gate.is_some() || self.verification.is_some();
        topology
            .sole_leader()
            .filter(|leader| !(waiting && self.unreachable.contains(*leader)))
    }

    /// When the emergency clock may act on `topology`: the election window after `leaderless_since`, and, when the
    /// topology names a leader Baton could not reach (not `leader_vouched`), not before the deadline of an ask of
    /// that leader still out: a live leader's late answer vouches for it and stops the clock, so a lost answer and
    /// a slow one do not end a pause with an emergency exit.
    pub(crate) fn emergency_due_ms(&self, topology: &Topology) -> Option<u64> {
        let window = self.sub.as_ref()?.election_window_ms();
        let due = self.leaderless_since?.saturating_add(window);
        let asked = topology.sole_leader().and_then(|leader| {
            self.steps
                .values()
                .rev()
                .find(|r| r.scheduled.node == leader)
                .filter(|r| r.outcome.is_none())
                .map(|r| r.scheduled.deadline_ms)
        });
        Some(asked.map_or(due, |deadline| due.max(deadline)))
    }

    /// When the service should wake the core with `Tick`: the outstanding step's deadline, or the end of a
    /// retry/poll wait (not while paused). `None`: nothing is timed.
    pub fn next_wakeup_ms(&self) -> Option<u64> {
        if self.terminal.is_some() {
            return None;
        }
        // Only the steps the core waits for: the current one and its round's. A probe the emergency exit
        // abandoned stays outstanding until (if ever) its result comes, but nothing decides on its deadline:
        // arming it would wake the service for nothing, again and again, once it had passed.
        let deadline = self
            .current
            .iter()
            .chain(&self.round)
            .filter_map(|s| self.steps.get(s))
            .filter(|r| r.outcome.is_none())
            .map(|r| r.scheduled.deadline_ms)
            .min();
        // While paused only the watch for a lost leader polls (`decide::watch_decisions`). While a round whose
        // judgment ended early (a failed check) still has a probe out, nothing but its deadlines and the emergency
        // exit decides (`decide::round_decisions`): a poll that came due meanwhile waits for the round, and arming
        // it would wake the service again and again for nothing.
        let watching = self.failover_blocked && self.resolution.is_none();
        let round_out = self
            .round
            .iter()
            .filter_map(|s| self.steps.get(s))
            .any(|r| r.outcome.is_none());
        let wait = if (self.paused.is_some() && !watching) || round_out {
            None
        } else {
            self.wait.as_ref().map(|(_, until)| *until)
        };
        // The emergency exit's moment, if the cluster was last seen without a leader while failover is blocked.
        let emergency = self
            .last_cluster
            .as_ref()
            .and_then(|c| self.emergency_due_ms(c))
            .filter(|_| {
                let action_in_flight = self
                    .current_record()
                    .is_some_and(|r| r.outcome.is_none() && !r.scheduled.action.is_probe());
                !action_in_flight
                    && self.failover_blocked
                    && self
                        .last_cluster
                        .as_ref()
                        .is_some_and(|c| self.leader_vouched(c).is_none())
                    && !self
                        .wind_down
                        .as_ref()
                        .is_some_and(|w| w.cause == WindDownCause::Emergency)
            });
        [deadline, wait, emergency].into_iter().flatten().min()
    }

    /// When the latest action began, if it is a switchover that did not succeed while failover is blocked
    /// (`switchover_keeps_fence`: chef-backend's runbook lifts the fence for it, so this never holds there).
    fn fenced_switchover_failed_since(&self) -> Option<u64> {
        if !self.failover_blocked {
            return None;
        }
        let last = self
            .steps
            .values()
            .rev()
            .find(|r| !r.scheduled.action.is_probe())?;
        let switchover = matches!(
            last.scheduled.action,
            Action::Demote | Action::UpgradeLeader
        );
        let failed = last
            .outcome
            .as_ref()
            .is_some_and(|o| o.outcome != Outcome::Succeeded);
        let grace = self.sub.as_ref()?.cluster.upgrade.result_grace_ms;
        let s = &last.scheduled;
        (switchover && failed).then(|| {
            s.deadline_ms
                .saturating_sub(s.timeout_ms.saturating_add(grace))
        })
    }

    pub(crate) fn current_record(&self) -> Option<&StepRecord> {
        self.current.and_then(|s| self.steps.get(&s))
    }

    /// Whether `event` carries a round on (a result, a recorded observation, a passed check, a timer); any
    /// other event is a decision of its own, and the round's remaining observations are no longer judged.
    fn continues_round(event: &Event) -> bool {
        matches!(
            event,
            Event::StepScheduled { .. }
                | Event::StepResultRecorded { .. }
                | Event::StepDeadlinePassed { .. }
                | Event::TimerFired { .. }
                | Event::ObservationRecorded { .. }
                | Event::CheckEvaluated { passed: true, .. }
                | Event::GateApproved { .. }
                | Event::PhaseEntered { .. }
        )
    }

    /// Whether this upgrade's `stop` may have taken `node` down with no successful `start` since. A stop that
    /// the executor rejected on its first attempt never ran; any other outcome may have had its effect.
    pub(crate) fn left_stopped(&self, node: &str) -> bool {
        let mut stopped = false;
        for r in self.steps.values().filter(|r| r.scheduled.node == node) {
            let outcome = r.outcome.as_ref().map(|o| o.outcome);
            match r.scheduled.action {
                Action::Stop => {
                    stopped = !(outcome == Some(Outcome::Rejected) && r.scheduled.attempt == 1)
                }
                // `chef-backend-ctl upgrade` restarts the services: one that did not succeed may have left
                // them down.
                Action::Upgrade
                    if outcome != Some(Outcome::Succeeded)
                        && !self.inferred.contains(&r.scheduled.step)
                        && !(outcome == Some(Outcome::Rejected) && r.scheduled.attempt == 1) =>
                {
                    stopped = true
                }
                Action::Upgrade => stopped = false,
                Action::Start
                    if outcome == Some(Outcome::Succeeded)
                        || self.inferred.contains(&r.scheduled.step) =>
                {
                    stopped = false
                }
                _ => {}
            }
        }
        stopped
    }

    /// Whether a non-idempotent step is in doubt (S4): being re-observed, waiting for an operator, or just
    /// resolved by one. An idempotent step being re-observed is not: the retry policy still applies to it.
    fn in_doubt(&self) -> bool {
        self.reobserve.as_ref().is_some_and(|r| r.decides_alone)
            || self.verification.is_some()
            || self.resolution.is_some()
    }

    pub(crate) fn current_item(&self) -> Option<&PlanItem> {
        let c = self.cursor.as_ref()?;
        self.plan.as_ref()?.items.get(c.index)
    }

    fn record_outcome(&mut self, step: u64, attempt: u32, outcome: StepOutcome) {
        let Some(record) = self.steps.get_mut(&step) else {
            return;
        };
        if record.scheduled.attempt != attempt || record.outcome.is_some() {
            return;
        }
        let node = record.scheduled.node.clone();
        let line = last_line(&outcome.stdout)
            .or_else(|| last_line(&outcome.stderr))
            .or_else(|| outcome.reason.clone());
        if record.scheduled.action == Action::UnblockFailover
            && outcome.outcome == Outcome::Succeeded
        {
            // The obligation is met only by a confirmed unblock.
            self.failover_blocked = false;
        }
        if matches!(
            record.scheduled.action,
            Action::BlockFailover | Action::UnblockFailover
        ) && outcome.outcome != Outcome::Succeeded
        {
            // A cluster-wide command that failed there: ask another node next time.
            self.unreachable.insert(node.clone());
        }
        let (action, at_ms, succeeded) = (
            record.scheduled.action,
            outcome.at_ms,
            outcome.outcome == Outcome::Succeeded,
        );
        record.outcome = Some(outcome);
        if let Some(progress) = self.nodes.get_mut(&node) {
            if progress.last_step == Some(step) {
                progress.last_output = line;
            }
        }
        if succeeded {
            let version = self
                .sub
                .as_ref()
                .map(|s| s.target_version.clone())
                .unwrap_or_default();
            self.facts.succeeded(&node, action, at_ms, &version);
        }
        // Results of steps scheduled before a wind-down are only drained: nothing is decided on them.
        if let Some(w) = &self.wind_down {
            if self.current == Some(step) && step < w.first_step {
                self.current = None;
            }
        }
    }

    /// The time `event` carries; a step's is when it was scheduled.
    fn event_ms(&self, event: &Event) -> Option<u64> {
        match event {
            Event::StepScheduled {
                deadline_ms,
                timeout_ms,
                ..
            } => Some(self.scheduled_at(*deadline_ms, *timeout_ms)),
            other => other.at_ms(),
        }
    }

    /// Applies one event. Unknown or out-of-order facts are ignored rather than panicking.
    pub fn apply(&mut self, event: &Event) {
        if let Some(at) = self.event_ms(event) {
            self.updated_ms = Some(self.updated_ms.map_or(at, |u| u.max(at)));
        }
        let round_open = std::mem::take(&mut self.round_open);
        if !self.round.is_empty() && !Self::continues_round(event) {
            self.round_settled = true;
        }
        match event {
            Event::UpgradeSubmitted {
                upgrade,
                cluster,
                package,
                target_version,
                gates,
                plan_only,
                expected_plan_hash,
                executors_online,
                requested_by,
                at_ms,
                ..
            } => {
                let mut all_gates = cluster.upgrade.gates.clone();
                for g in gates {
                    if !all_gates.contains(g) {
                        all_gates.push(*g);
                    }
                }
                let (profile, profile_error) = match Profile::of_cluster(cluster) {
                    Ok(p) => (p, None),
                    Err(e) => (Profile::without_actions(&cluster.profile), Some(e)),
                };
                self.sub = Some(Arc::new(Submission {
                    upgrade: upgrade.clone(),
                    cluster: cluster.clone(),
                    profile,
                    profile_error,
                    package: package.clone(),
                    target_version: target_version.clone(),
                    gates: all_gates,
                    plan_only: *plan_only,
                    expected_plan_hash: expected_plan_hash.clone(),
                    executors_online: executors_online.clone(),
                    requested_by: requested_by.clone(),
                    submitted_ms: *at_ms,
                }));
                self.next_step = 1;
                self.phase = Phase::Preflight;
                self.nodes = cluster
                    .nodes
                    .iter()
                    .map(|n| (n.name.clone(), NodeProgress::default()))
                    .collect();
                self.facts = Facts::new(cluster.nodes.iter().map(|n| n.name.as_str())).into();
            }
            Event::StepResultRecorded {
                step,
                attempt,
                outcome,
                exit_code,
                stdout,
                stderr,
                reason,
                at_ms,
                ..
            } => {
                let o = StepOutcome {
                    outcome: *outcome,
                    exit_code: *exit_code,
                    stdout: stdout.clone(),
                    stderr: stderr.clone(),
                    reason: reason.clone(),
                    at_ms: *at_ms,
                };
                self.record_outcome(*step, *attempt, o);
            }
            Event::StepDeadlinePassed {
                step,
                attempt,
                at_ms,
            } => {
                let o = StepOutcome {
                    outcome: Outcome::Unknown,
                    exit_code: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    reason: Some("no result before the deadline".into()),
                    at_ms: *at_ms,
                };
                self.record_outcome(*step, *attempt, o);
            }
            Event::TimerFired { .. } => {}
            Event::UpgradePaused { by, reason, .. } => {
                self.paused = Some((by.clone(), reason.clone()))
            }
            Event::UpgradeResumed { at_ms, .. } => {
                self.paused = None;
                // A poll (the watch's, or one started before the pause) does not delay what follows a resume.
                if matches!(self.wait, Some((WaitPurpose::Poll, _))) {
                    self.wait = None;
                }
                // A pause is the operator's time, not the node's: the sync timeout restarts on resume.
                if let Some(c) = &mut self.cursor {
                    c.started_ms = *at_ms;
                    // What was observed before the pause is stale: a guard starts again.
                    c.checks_passed = 0;
                    c.fresh_from = self.next_step;
                }
            }
            Event::AbortRequested { .. } => {}
            Event::GateApproved { gate, .. } => {
                self.approvals.insert(*gate);
                if self.awaiting_gate == Some(*gate) {
                    self.awaiting_gate = None;
                    // The watch's poll is over: the plan goes on now.
                    if matches!(self.wait, Some((WaitPurpose::Poll, _))) {
                        self.wait = None;
                    }
                }
            }
            Event::StepResolved {
                step, resolution, ..
            } => {
                self.verification = None;
                self.resolution = Some((*step, *resolution));
            }
            Event::PhaseEntered { phase, .. } => self.phase = *phase,
            Event::StepScheduled {
                step,
                node,
                action,
                attempt,
                ..
            } => {
                let scheduled = event
                    .scheduled_step()
                    .expect("a StepScheduled event schedules a step");
                let fresh_probe = action.is_probe() && *attempt == 1;
                // A fresh probe scheduled right after another, in one decision, joins its round (only where the
                // profile asks for rounds: an old log never has two such steps in a row).
                let rounds = self.sub.as_ref().is_some_and(|s| s.profile.probe_rounds);
                let joins =
                    round_open && fresh_probe && rounds && self.current.is_some_and(|c| c < *step);
                self.steps.insert(
                    *step,
                    StepRecord {
                        scheduled,
                        outcome: None,
                    },
                );
                // Waiting for an operator (paused, at a gate, or to verify a step in doubt): the watch's
                // probes are a poll interval apart.
                self.watching = (action.is_probe()
                    && self.wind_down.is_none()
                    && (self.paused.is_some()
                        || self.awaiting_gate.is_some()
                        || self.verification.is_some()))
                .then_some(*step);
                self.next_step = self.next_step.max(step.saturating_add(1));
                if joins {
                    if self.round.is_empty() {
                        self.round.extend(self.current);
                    }
                    self.round.push(*step);
                } else {
                    self.current = Some(*step);
                    self.round.clear();
                    self.round_settled = false;
                }
                self.round_open = fresh_probe;
                self.wait = None;
                self.resolution = None;
                if *action == Action::BlockFailover {
                    self.failover_blocked = true;
                }
                if let Some(c) = &mut self.cursor {
                    if !action.is_probe() && self.wind_down.is_none() && self.reobserve.is_none() {
                        c.step = Some(*step);
                        c.retry = None;
                        c.checks_passed = 0;
                    }
                }
                if let Some(w) = &mut self.wind_down {
                    if *action == Action::UnblockFailover {
                        w.unblock_step = Some(*step);
                    }
                }
                if !action.is_probe() {
                    self.reobserve = None;
                }
                self.facts.scheduled(node, *action);
                // Only an action that concerns this node: a cluster-wide command (failover, cluster-status)
                // merely runs somewhere, and its output is about the cluster.
                let concerns_node = !action.is_probe()
                    && !matches!(action, Action::BlockFailover | Action::UnblockFailover);
                if let Some(progress) = self.nodes.get_mut(node) {
                    if concerns_node {
                        progress.last_step = Some(*step);
                        progress.last_action = Some(*action);
                        progress.last_output = None;
                    }
                    let upgrading = matches!(
                        action,
                        Action::Stop
                            | Action::Install
                            | Action::Start
                            | Action::Upgrade
                            | Action::UpgradeLeader
                    );
                    if upgrading && progress.phase == NodePhase::Pending && self.wind_down.is_none()
                    {
                        progress.phase = NodePhase::Upgrading;
                    }
                }
            }
            Event::ObservationRecorded {
                step,
                node,
                observation,
            } => {
                let probe = self.steps.get(step).map(|r| {
                    (
                        r.scheduled.action,
                        r.scheduled.node.clone(),
                        r.outcome.as_ref().map_or(0, |o| o.at_ms),
                        r.outcome.as_ref().map(|o| o.outcome),
                    )
                });
                // A round's observation recorded after its judgment ended: a fact, not a decision's input.
                let unjudged = self.round_settled && self.round.contains(step);
                // Built once: it formats every member's role (a third build is `Facts::observed`'s).
                let topology = observation.topology();
                if let Some((action, node, at_ms, outcome)) = probe.clone() {
                    // A node is unreachable when its cluster-wide probe failed (its etcd) or any probe got no
                    // answer at all (its host or executor is gone); an answer from it makes it reachable again.
                    // Under probe rounds, where a node's topology and its node probe go out side by side, not any
                    // answer: one recorded after its round's judgment ended (the look before it failed) never
                    // vouches for a node (a Patroni member cut off from the DCS fails GET /cluster and answers its
                    // node and fence probes beside it: the next look would go back to it every time). Built-in
                    // profiles (no rounds) keep the first rule, so their recorded logs replay as before.
                    let unavailable = matches!(observation, Observation::Unavailable { .. });
                    let no_answer = matches!(outcome, Some(Outcome::Unknown | Outcome::TimedOut));
                    let cluster_wide =
                        matches!(action, Action::ProbeClusterStatus | Action::ProbeFailover);
                    let rounds = self.sub.as_ref().is_some_and(|s| s.profile.probe_rounds);
                    if unavailable && (cluster_wide || no_answer) {
                        self.unreachable.insert(node);
                    } else if !unavailable {
                        let vouches = !(rounds && unjudged);
                        if vouches {
                            self.unreachable.remove(&node);
                        }
                    }
                    if let Some(topology) = &topology {
                        if self.leader_vouched(topology).is_some() {
                            self.leaderless_since = None;
                        } else if self.leaderless_since.is_none() {
                            // A switchover that ran under the fence and did not succeed may have left the cluster
                            // leaderless since it began, and nobody can elect while fenced: the emergency clock
                            // starts then, not at this first look after it.
                            let since = self
                                .fenced_switchover_failed_since()
                                .filter(|began| *began < at_ms)
                                .unwrap_or(at_ms);
                            self.leaderless_since = Some(since);
                        }
                    }
                }
                if let Some(topology) = topology {
                    self.last_cluster = Some(topology.into());
                }
                if let Some((action, _, at_ms, outcome)) = &probe {
                    // A probe that answered with a failure (no etcd there, a missing file) tells nothing of the
                    // node's services; one that got no answer at all says the node may be gone.
                    let no_answer = matches!(outcome, Some(Outcome::Unknown | Outcome::TimedOut));
                    if no_answer || !matches!(observation, Observation::Unavailable { .. }) {
                        self.facts.observed(node, *action, observation, *at_ms);
                    }
                }
                if let (
                    Some((_, node, _, _)),
                    Observation::Version {
                        version: Some(version),
                        ..
                    },
                ) = (&probe, observation)
                {
                    self.observed_versions.insert(node.clone(), version.clone());
                }
                if !unjudged {
                    self.last_observation = Some((*step, observation.clone()));
                }
                if self.current == Some(*step) {
                    self.current = None;
                }
                self.round.retain(|s| s != step);
                if self.round.is_empty() {
                    self.round_settled = false;
                }
            }
            Event::CheckEvaluated {
                node,
                passed,
                problems,
                ..
            } => {
                let judged = self.last_observation.take();
                if !*passed {
                    self.last_problems = problems.clone();
                    return;
                }
                // A round goes on: its next probe is taken up as if it had been asked only now.
                if !self.round_settled {
                    if let Some(next) = self.round.first() {
                        self.current = Some(*next);
                    }
                }
                if let Some(w) = &mut self.wind_down {
                    w.checks_passed += 1;
                    for p in problems {
                        if !w.left.contains(p) {
                            w.left.push(p.clone());
                        }
                    }
                } else if let Some(re) = &mut self.reobserve {
                    re.checks_passed += 1;
                } else if self.plan.is_none() {
                    self.preflight_passed += 1;
                    match &judged {
                        Some((_, Observation::Version { version, .. })) => {
                            self.versions.insert(node.clone(), version.clone());
                        }
                        Some((_, Observation::Running { version })) => {
                            self.running_versions.insert(node.clone(), version.clone());
                        }
                        Some((_, observation)) if observation.is_topology() => {
                            self.preflight_cluster = observation.topology().map(Into::into);
                        }
                        _ => {}
                    }
                } else if let Some(c) = &mut self.cursor {
                    c.checks_passed += 1;
                }
            }
            Event::WaitStarted { purpose, until_ms } => {
                if let WaitPurpose::Retry { step } = purpose {
                    // An action due to run again gets a fresh guard first; its re-observation, if any, is over.
                    let action = self.steps.get(step).map(|r| r.scheduled.action);
                    if let Some(c) = &mut self.cursor {
                        if c.step == Some(*step)
                            && self.wind_down.is_none()
                            && action.is_some_and(|a| !a.is_probe())
                        {
                            c.retry = Some(*step);
                            c.checks_passed = 0;
                            self.reobserve = None;
                        }
                    }
                }
                if *purpose == WaitPurpose::Poll {
                    if let Some(c) = &mut self.cursor {
                        c.checks_passed = 0;
                    }
                    if let Some(w) = &mut self.wind_down {
                        w.checks_passed = 0;
                        w.left.clear();
                    }
                }
                self.wait = Some((purpose.clone(), *until_ms));
                self.current = None;
                self.last_observation = None;
            }
            Event::PlanComputed { plan, plan_hash } => {
                for node in &plan.skipped {
                    if let Some(p) = self.nodes.get_mut(node) {
                        p.phase = NodePhase::Skipped;
                    }
                }
                self.plan = Some(Arc::new(plan.clone()));
                self.plan_hash = Some(plan_hash.clone());
                if self.sub.as_ref().is_some_and(|s| s.plan_only) {
                    self.terminal = Some(Terminal::Planned);
                }
            }
            Event::ItemStarted { index, at_ms } => {
                self.cursor = Some(Cursor {
                    index: *index,
                    started_ms: *at_ms,
                    checks_passed: 0,
                    step: None,
                    retry: None,
                    fresh_from: 0,
                });
                if let Some(PlanItem::WaitSynced { node, .. }) =
                    self.plan.as_ref().and_then(|p| p.items.get(*index))
                {
                    if let Some(p) = self.nodes.get_mut(node) {
                        p.phase = NodePhase::Syncing;
                    }
                }
            }
            Event::ItemCompleted { index, .. } => {
                match self.plan.as_ref().and_then(|p| p.items.get(*index)) {
                    Some(PlanItem::WaitSynced { node, .. }) => {
                        if let Some(p) = self.nodes.get_mut(node) {
                            p.phase = NodePhase::Upgraded;
                        }
                    }
                    Some(PlanItem::VerifySwitchover { .. }) => {
                        self.new_leader = self
                            .last_cluster
                            .as_ref()
                            .and_then(|c| c.sole_leader())
                            .map(str::to_string);
                    }
                    _ => {}
                }
                self.items_done = index.saturating_add(1);
                self.cursor = None;
                self.current = None;
                self.awaiting_gate = None;
                self.resolution = None;
                self.reobserve = None;
            }
            Event::ApprovalRequested { gate } => self.awaiting_gate = Some(*gate),
            Event::ReobservationStarted { step, .. } => {
                let retry_if_not =
                    matches!(self.resolution, Some((s, Resolution::Retry)) if s == *step);
                let idempotent = self
                    .steps
                    .get(step)
                    .zip(self.sub.as_ref())
                    .and_then(|(r, s)| s.profile.action(r.scheduled.action))
                    .is_some_and(|spec| spec.idempotent);
                self.reobserve = Some(Reobserve {
                    step: *step,
                    retry_if_not,
                    decides_alone: !idempotent,
                    checks_passed: 0,
                });
                self.resolution = None;
                self.current = None;
            }
            Event::OutcomeInferred { step, .. } => {
                self.inferred.insert(*step);
                if let Some(r) = self.steps.get(step) {
                    // Shown by the observation just recorded: the latest time so far.
                    let at_ms = self.updated_ms.unwrap_or_default();
                    let (node, action) = (r.scheduled.node.clone(), r.scheduled.action);
                    let version = self
                        .sub
                        .as_ref()
                        .map(|s| s.target_version.clone())
                        .unwrap_or_default();
                    self.facts.succeeded(&node, action, at_ms, &version);
                }
                self.reobserve = None;
                self.last_observation = None;
                self.resolution = None;
            }
            Event::VerificationRequired { step, reason } => {
                self.verification = Some((*step, reason.clone()));
                self.reobserve = None;
                self.last_observation = None;
                self.current = None;
            }
            Event::WindDownStarted {
                cause,
                reason,
                at_ms,
            } => {
                // A second `WindDownStarted` restarts the wind-down after bringing a node back (or failing to):
                // only the first one looks for a node to bring back. An abort brings back the node in
                // progress whatever it was doing; a failure only one this upgrade stopped and did not start
                // again (S5's safe state: a stopped node leaves the cluster degraded, and `start` is
                // idempotent), and never while a non-idempotent step is in doubt, where S4 alone decides.
                let in_progress = self
                    .nodes
                    .iter()
                    .find(|(_, p)| matches!(p.phase, NodePhase::Upgrading | NodePhase::Syncing))
                    .map(|(n, _)| n.clone());
                let first_wind_down = self.wind_down.is_none();
                let recover = match (&self.wind_down, cause) {
                    // The emergency exit re-enables failover first, then still brings back a node it stopped.
                    (Some(w), WindDownCause::Emergency) if w.cause != WindDownCause::Emergency => w
                        .recover
                        .clone()
                        .or(in_progress.filter(|n| self.left_stopped(n))),
                    (None, WindDownCause::Emergency) => {
                        in_progress.filter(|n| !self.in_doubt() && self.left_stopped(n))
                    }
                    (Some(_), _) => None,
                    (None, WindDownCause::Abort) => in_progress,
                    (None, WindDownCause::Failure) => {
                        in_progress.filter(|n| !self.in_doubt() && self.left_stopped(n))
                    }
                };
                self.wind_down = Some(WindDown {
                    cause: *cause,
                    reason: reason.clone(),
                    started_ms: *at_ms,
                    first_step: self.next_step,
                    checks_passed: 0,
                    unblock_step: None,
                    recover,
                    left: Vec::new(),
                });
                // The emergency exit does not wait for a probe still out (it may be asking a dead node); nor does
                // an operator's abort under a profile with probe rounds (a round may wait on a dead node for a
                // whole deadline). Probes are read-only: nothing they could show changes what a wind-down must do
                // first, and an abandoned probe's result, if it comes, is recorded, never judged (no observation
                // of it is made: only the current step's and the round's are). Built-in profiles' aborts keep
                // waiting for their one probe, as their logs record.
                let rounds = self.sub.as_ref().is_some_and(|s| s.profile.probe_rounds);
                let drops_probes = *cause == WindDownCause::Emergency
                    || (*cause == WindDownCause::Abort && rounds && first_wind_down);
                let round_out = self
                    .round
                    .iter()
                    .any(|s| self.steps.get(s).is_some_and(|r| r.outcome.is_none()));
                let abandon = drops_probes
                    && (round_out
                        || self
                            .current_record()
                            .is_some_and(|r| r.scheduled.action.is_probe()));
                if abandon || self.current_record().is_some_and(|r| r.outcome.is_some()) {
                    self.current = None;
                }
                if abandon {
                    // The whole round is abandoned with it: its results, if they come, are only recorded.
                    self.round.clear();
                    self.round_settled = false;
                }
                self.wait = None;
                self.paused = None;
                self.reobserve = None;
                self.verification = None;
                self.resolution = None;
                self.awaiting_gate = None;
                self.last_observation = None;
            }
            Event::UpgradeCompleted { .. } => {
                self.terminal = Some(Terminal::Completed);
                self.current = None;
                self.wait = None;
            }
            Event::UpgradeHalted {
                reason,
                failover_pending,
                ..
            } => self.end(Terminal::Halted {
                reason: reason.clone(),
                failover_pending: failover_pending.clone(),
            }),
            Event::UpgradeAborted {
                reason,
                failover_pending,
                ..
            } => self.end(Terminal::Aborted {
                reason: reason.clone(),
                failover_pending: failover_pending.clone(),
            }),
        }
    }

    fn end(&mut self, terminal: Terminal) {
        self.terminal = Some(terminal);
        self.current = None;
        self.wait = None;
    }
}
