//! Inputs (what happens outside: commands and observed facts), events (facts in the past tense, both recorded
//! inputs and decisions) and rejections. Events are serialized into the log, so their shape is the log format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::builtin::{RecordedFailover, RecordedNodeStatus, RecordedTopology};
use super::cluster::{ClusterFile, Gate};
use super::observe::{NodeHealth, Topology};
use super::plan::{Phase, Plan};
use super::profile::Action;

/// How a step ended, as the executor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Exit code 0.
    Succeeded,
    /// Non-zero exit.
    Failed,
    /// Killed at its timeout.
    TimedOut,
    /// Started but the executor cannot tell how it ended (crash, lost ledger).
    Unknown,
    /// Refused by the executor without running (stale epoch, bad signature, unknown node).
    Rejected,
}

/// The operator's verdict on a step whose outcome could not be verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// The step did take effect: carry on.
    Succeeded,
    /// The step did not take effect and must not be retried: halt.
    Failed,
    /// Run the step again (the operator checked that this is safe).
    Retry,
}

/// Something that happened outside the core. Every input carries the time it was observed.
// Submissions carry the whole cluster file; boxing it would only complicate every match for no measurable gain
// (a handful of inputs per step).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Input {
    /// Start an upgrade (or only compute its plan).
    Submit {
        /// The upgrade's id (a ULID chosen by the service).
        upgrade: String,
        /// The cluster.
        cluster: ClusterFile,
        /// Package path on the nodes; empty means the cluster file's `upgrade.package`.
        package: String,
        /// Target version; by default the cluster file's, else the one the package file names.
        target_version: Option<String>,
        /// Extra approval gates (added to the cluster file's).
        gates: Vec<Gate>,
        /// Stop after computing the plan.
        plan_only: bool,
        /// Refuse to start unless the computed plan has this hash.
        expected_plan_hash: Option<String>,
        /// Executor groups with a live executor, as the service sees them in presence.
        executors_online: Vec<String>,
        /// Who asked.
        requested_by: String,
        /// When.
        now_ms: u64,
    },
    /// An executor reported a step's result.
    StepFinished {
        /// Step id.
        step: u64,
        /// Attempt number (1-based).
        attempt: u32,
        /// How it ended.
        outcome: Outcome,
        /// Exit code, if the process exited.
        exit_code: Option<i32>,
        /// Captured stdout (a tail is fine; probes need the whole table, which is short).
        stdout: String,
        /// Captured stderr tail.
        stderr: String,
        /// Why, for rejected/unknown.
        reason: Option<String>,
        /// Executor id.
        executor: String,
        /// When the service received it.
        now_ms: u64,
    },
    /// The timer armed for [`super::State::next_wakeup_ms`] fired (or any other wake-up).
    Tick {
        /// Now.
        now_ms: u64,
    },
    /// Stop scheduling new steps (the running step finishes).
    Pause {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// When.
        now_ms: u64,
    },
    /// Continue after a pause.
    Resume {
        /// Who.
        by: String,
        /// When.
        now_ms: u64,
    },
    /// Abandon the upgrade, restoring failover when the cluster is healthy.
    Abort {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// When.
        now_ms: u64,
    },
    /// Approve a gate (in advance or while the upgrade waits at it).
    Approve {
        /// Which gate.
        gate: Gate,
        /// Who.
        by: String,
        /// When.
        now_ms: u64,
    },
    /// Settle a step whose outcome needs verification.
    Resolve {
        /// The step the upgrade halted on.
        step: u64,
        /// The verdict.
        resolution: Resolution,
        /// Who.
        by: String,
        /// Why (kept in the log).
        why: String,
        /// When.
        now_ms: u64,
    },
}

impl Input {
    /// The time the input carries.
    pub fn now_ms(&self) -> u64 {
        match self {
            Input::Submit { now_ms, .. }
            | Input::StepFinished { now_ms, .. }
            | Input::Tick { now_ms }
            | Input::Pause { now_ms, .. }
            | Input::Resume { now_ms, .. }
            | Input::Abort { now_ms, .. }
            | Input::Approve { now_ms, .. }
            | Input::Resolve { now_ms, .. } => *now_ms,
        }
    }
}

/// A step as the service publishes it (see `outstanding_steps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledStep {
    /// Step id (a counter per upgrade).
    pub step: u64,
    /// Attempt (1-based; a retry keeps the step id).
    pub attempt: u32,
    /// The node it acts on.
    pub node: String,
    /// The executor group that runs it.
    pub group: String,
    /// Action name.
    pub action: Action,
    /// The command, rendered.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// How long the executor lets it run.
    pub timeout_ms: u64,
    /// Absolute time after which the core treats its outcome as unknown.
    pub deadline_ms: u64,
}

/// What a probe's output said, as recorded in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Observation {
    /// A built-in reader's topology probe (chef-backend's `cluster-status`).
    ClusterStatus {
        /// The parsed table, as the reader records it.
        status: RecordedTopology,
    },
    /// A built-in reader's node probe (chef-backend's `status`).
    NodeStatus {
        /// The parsed table, as the reader records it.
        status: RecordedNodeStatus,
    },
    /// The installed version (`None`: the package is not installed).
    Version {
        /// Normalised `UPSTREAM-RELEASE`.
        version: Option<String>,
        /// The package's state when it is not cleanly installed (`half-configured` after a failed `dpkg -i`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    /// A built-in reader's failover probe: the cluster's and each node's failover settings.
    Failover {
        /// The settings.
        settings: RecordedFailover,
    },
    /// The version inside the package file on a node.
    Package {
        /// Normalised `UPSTREAM-RELEASE`.
        version: String,
    },
    /// A profile file's topology probe: who leads and how each member stands.
    Members {
        /// The members as the profile's parser read them.
        topology: Topology,
    },
    /// A profile file's node probe: the node's own view of itself.
    Node {
        /// The system's name (the node's one service, in reasons).
        service: String,
        /// Its service is up.
        up: bool,
        /// It is caught up with the leader (`None`: the probe does not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caught_up: Option<bool>,
        /// It says it leads (`None`: the probe does not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leads: Option<bool>,
    },
    /// A profile file's failover probe: whether automatic failover is blocked now.
    Fence {
        /// Blocked.
        blocked: bool,
    },
    /// A profile file's `running_version` probe: the version the node's process runs now.
    Running {
        /// The version, as the probe's parser read it.
        version: String,
    },
    /// The probe did not succeed or its output could not be parsed.
    Unavailable {
        /// Why.
        error: String,
    },
}

impl Observation {
    /// The cluster as this observation shows it, if it is a look at the whole cluster.
    pub fn topology(&self) -> Option<Topology> {
        match self {
            Observation::ClusterStatus { status } => Some(status.topology()),
            Observation::Members { topology } => Some(topology.clone()),
            _ => None,
        }
    }

    /// The node's own view as this observation shows it (for a cluster of `nodes` members), if it is one.
    pub fn node_health(&self, nodes: u32) -> Option<NodeHealth> {
        match self {
            Observation::NodeStatus { status } => Some(status.health(nodes)),
            Observation::Node {
                service,
                up,
                caught_up,
                ..
            } => Some(NodeHealth::of_member(service, *up, *caught_up)),
            _ => None,
        }
    }

    /// Whether this is a look at the whole cluster.
    pub fn is_topology(&self) -> bool {
        matches!(
            self,
            Observation::ClusterStatus { .. } | Observation::Members { .. }
        )
    }

    /// Whether this is a node's own view.
    pub fn is_node_health(&self) -> bool {
        matches!(
            self,
            Observation::NodeStatus { .. } | Observation::Node { .. }
        )
    }
}

/// Why a wait was started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WaitPurpose {
    /// Back off before retrying an idempotent step.
    Retry {
        /// The step to run again.
        step: u64,
    },
    /// Wait before polling the cluster again.
    Poll,
}

/// Why the upgrade is winding down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindDownCause {
    /// An operator aborted.
    Abort,
    /// A step or a health gate failed, or the cluster changed under the plan.
    Failure,
    /// The cluster lost its leader while this upgrade had failover blocked (S3's emergency exit): failover is
    /// re-enabled at once, before anything else, then the upgrade halts.
    Emergency,
}

/// A fact in the past tense: a recorded input or a decision.
// As for `Input`: the submission event carries the cluster file.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Event {
    // ----- recorded inputs -----
    /// The upgrade was submitted (input `Submit`, with the target version resolved).
    UpgradeSubmitted {
        /// Upgrade id.
        upgrade: String,
        /// The cluster.
        cluster: ClusterFile,
        /// Package path on the nodes (resolved).
        package: String,
        /// Target version (resolved, normalised).
        target_version: String,
        /// Target version as given in the input, for replay verification.
        requested_target_version: Option<String>,
        /// The package as given in the input, for replay verification.
        requested_package: String,
        /// Gates from the input.
        gates: Vec<Gate>,
        /// Plan only.
        plan_only: bool,
        /// Expected plan hash.
        expected_plan_hash: Option<String>,
        /// Online executor groups.
        executors_online: Vec<String>,
        /// Who.
        requested_by: String,
        /// When.
        at_ms: u64,
    },
    /// An executor's result was recorded (input `StepFinished`).
    StepResultRecorded {
        /// Step id.
        step: u64,
        /// Attempt.
        attempt: u32,
        /// Outcome.
        outcome: Outcome,
        /// Exit code.
        exit_code: Option<i32>,
        /// stdout.
        stdout: String,
        /// stderr.
        stderr: String,
        /// Reason.
        reason: Option<String>,
        /// Executor id.
        executor: String,
        /// When.
        at_ms: u64,
    },
    /// A timer fired and something was due (input `Tick`).
    TimerFired {
        /// When.
        at_ms: u64,
    },
    /// Paused (input `Pause`).
    UpgradePaused {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// Resumed (input `Resume`).
    UpgradeResumed {
        /// Who.
        by: String,
        /// When.
        at_ms: u64,
    },
    /// Abort requested (input `Abort`).
    AbortRequested {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// A gate was approved (input `Approve`).
    GateApproved {
        /// Gate.
        gate: Gate,
        /// Who.
        by: String,
        /// When.
        at_ms: u64,
    },
    /// An operator settled a step (input `Resolve`).
    StepResolved {
        /// Step.
        step: u64,
        /// Verdict.
        resolution: Resolution,
        /// Who.
        by: String,
        /// Why.
        why: String,
        /// When.
        at_ms: u64,
    },

    // ----- decisions -----
    /// A phase began.
    PhaseEntered {
        /// Phase.
        phase: Phase,
        /// When.
        at_ms: u64,
    },
    /// A step (action or probe) was scheduled; the service publishes it.
    StepScheduled {
        /// Step id.
        step: u64,
        /// Attempt (1-based).
        attempt: u32,
        /// Node it acts on.
        node: String,
        /// Executor group.
        group: String,
        /// Action.
        action: Action,
        /// Rendered argv.
        argv: Vec<String>,
        /// Extra environment.
        env: BTreeMap<String, String>,
        /// Executor timeout.
        timeout_ms: u64,
        /// Absolute deadline for the result.
        deadline_ms: u64,
    },
    /// No result arrived before the step's deadline: its outcome is unknown.
    StepDeadlinePassed {
        /// Step.
        step: u64,
        /// Attempt.
        attempt: u32,
        /// When.
        at_ms: u64,
    },
    /// A probe's output was parsed.
    ObservationRecorded {
        /// The probe step.
        step: u64,
        /// The node it ran on.
        node: String,
        /// What it saw.
        observation: Observation,
    },
    /// A health or topology check was evaluated on an observation.
    CheckEvaluated {
        /// The probe step.
        step: u64,
        /// The node checked.
        node: String,
        /// Whether it passed.
        passed: bool,
        /// What is wrong when it did not.
        problems: Vec<String>,
    },
    /// A wait began (retry backoff or poll interval).
    WaitStarted {
        /// Why.
        purpose: WaitPurpose,
        /// Until when.
        until_ms: u64,
    },
    /// Preflight finished and the plan was computed.
    PlanComputed {
        /// The plan.
        plan: Plan,
        /// SHA-256 of the plan's canonical JSON, hex.
        plan_hash: String,
    },
    /// A plan item began.
    ItemStarted {
        /// Index in the plan.
        index: usize,
        /// When.
        at_ms: u64,
    },
    /// A plan item finished.
    ItemCompleted {
        /// Index in the plan.
        index: usize,
        /// When.
        at_ms: u64,
    },
    /// The upgrade waits at a gate.
    ApprovalRequested {
        /// Gate.
        gate: Gate,
    },
    /// A non-idempotent step's outcome is not known to be success: the cluster is observed before deciding (S4).
    ReobservationStarted {
        /// The step in doubt.
        step: u64,
        /// Its attempt.
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// The observation showed the step in doubt took effect.
    OutcomeInferred {
        /// The step.
        step: u64,
        /// What showed it.
        evidence: String,
    },
    /// The upgrade stopped for an operator to settle a step (non-terminal).
    VerificationRequired {
        /// The step.
        step: u64,
        /// Why (node, action, argv, exit code, output tail).
        reason: String,
    },
    /// The upgrade stopped doing its procedure; it restores failover if it can, then ends.
    WindDownStarted {
        /// Abort or failure.
        cause: WindDownCause,
        /// Why.
        reason: String,
        /// When.
        at_ms: u64,
    },
    /// Terminal: every node is at the target version and failover is restored.
    UpgradeCompleted {
        /// When.
        at_ms: u64,
    },
    /// Terminal: halted on a failure.
    UpgradeHalted {
        /// Why.
        reason: String,
        /// Set when failover is still blocked: why it could not be restored.
        failover_pending: Option<String>,
        /// When.
        at_ms: u64,
    },
    /// Terminal: aborted by an operator.
    UpgradeAborted {
        /// Why.
        reason: String,
        /// Set when failover is still blocked: why it could not be restored.
        failover_pending: Option<String>,
        /// When.
        at_ms: u64,
    },
}

impl Event {
    /// The time the event records, for the events that record one (inputs,
    /// phases, items, the wind-down and the ends).
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Event::UpgradeSubmitted { at_ms, .. }
            | Event::StepResultRecorded { at_ms, .. }
            | Event::TimerFired { at_ms }
            | Event::UpgradePaused { at_ms, .. }
            | Event::UpgradeResumed { at_ms, .. }
            | Event::AbortRequested { at_ms, .. }
            | Event::GateApproved { at_ms, .. }
            | Event::StepResolved { at_ms, .. }
            | Event::PhaseEntered { at_ms, .. }
            | Event::StepDeadlinePassed { at_ms, .. }
            | Event::ItemStarted { at_ms, .. }
            | Event::ItemCompleted { at_ms, .. }
            | Event::WindDownStarted { at_ms, .. }
            | Event::UpgradeCompleted { at_ms }
            | Event::UpgradeHalted { at_ms, .. }
            | Event::UpgradeAborted { at_ms, .. } => Some(*at_ms),
            _ => None,
        }
    }

    /// The step this event schedules, if it is a `StepScheduled`.
    pub fn scheduled_step(&self) -> Option<ScheduledStep> {
        match self {
            Event::StepScheduled {
                step,
                attempt,
                node,
                group,
                action,
                argv,
                env,
                timeout_ms,
                deadline_ms,
            } => Some(ScheduledStep {
                step: *step,
                attempt: *attempt,
                node: node.clone(),
                group: group.clone(),
                action: *action,
                argv: argv.clone(),
                env: env.clone(),
                timeout_ms: *timeout_ms,
                deadline_ms: *deadline_ms,
            }),
            _ => None,
        }
    }
}

fn in_doubt_words(in_doubt: Option<u64>) -> String {
    match in_doubt {
        Some(step) => format!("step {step} does"),
        None => "no step does".into(),
    }
}

/// Why the core refused an input. Not an infrastructure error: the service replies with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Any input but `Submit` before a submission.
    #[error("no upgrade has been submitted")]
    NotSubmitted,
    /// `Submit` twice.
    #[error("upgrade {0} was already submitted")]
    AlreadySubmitted(String),
    /// `Submit` with inconsistent data.
    #[error("invalid submission: {0}")]
    InvalidSubmission(String),
    /// The upgrade has ended.
    #[error("upgrade is {0}")]
    Finished(String),
    /// `Pause` while paused.
    #[error("upgrade is already paused")]
    AlreadyPaused,
    /// `Resume` while not paused.
    #[error("upgrade is not paused")]
    NotPaused,
    /// `Pause`/`Resume`/`Approve` while winding down.
    #[error("upgrade is winding down: {0}")]
    WindingDown(String),
    /// `Approve` of a gate this upgrade does not have.
    #[error("gate {0} is not configured for this upgrade")]
    GateNotConfigured(Gate),
    /// `Approve` twice.
    #[error("gate {0} is already approved")]
    GateAlreadyApproved(Gate),
    /// `Resolve` of a step this upgrade never ran.
    #[error("upgrade has no step {step} (its steps are 1 to {last}; `baton status` shows the one in doubt)")]
    NoSuchStep { step: u64, last: u64 },
    /// `Resolve` when nothing needs verification, or for another step.
    #[error("step {step} does not need verification ({})", in_doubt_words(*in_doubt))]
    NothingToResolve { step: u64, in_doubt: Option<u64> },
    /// An input whose time is past [`LATEST_MS`]: no clock gives it, and
    /// deadlines computed from it would saturate (every step scheduled at it
    /// would be overdue at once).
    #[error("input time {now_ms} ms is past the latest time the core accepts ({LATEST_MS} ms, the end of year 9999)")]
    ClockOutOfRange { now_ms: u64 },
}

/// The latest input time the core accepts: 9999-12-31T23:59:59.999Z in ms
/// since the Unix epoch. With every duration at most
/// [`crate::core::cluster::MAX_DURATION_MS`], no deadline computed from an
/// accepted time comes near `u64::MAX`, so a step scheduled now is never
/// overdue at once and a late tick costs decisions in proportion to what is
/// outstanding, not thousands of rounds of a saturated clock.
pub const LATEST_MS: u64 = 253_402_300_799_999;
