//! The pure upgrade workflow core: the cluster file, profiles (profile files, and the systems built in behind
//! the [`builtin`] seam), the abstract observations and the event-sourced Decider (`decide`, `evolve`, `replay`)
//! that drives a rolling upgrade.
//!
//! Nothing here performs I/O, reads a clock or draws random numbers: time and ids arrive inside [`Input`]s,
//! step ids are a counter in [`State`]. A tidy test (`tests/core_tidy.rs`) enforces that.
//!
//! Map for a newcomer:
//! - [`cluster`]: the TOML cluster file; [`profile`]: argv templates for actions and probes;
//!   [`profile_file`]: a system as a TOML file, with its parsers; [`observe`]: the abstract observations every
//!   rule reads ([`Topology`], [`NodeHealth`]); [`health`]: checks on the abstract ones; [`version`]: package
//!   versions (`UPSTREAM-RELEASE`), normalised and ordered.
//! - [`builtin`]: the seam to the systems built into the core, reached by name only (`builtin::read_probe`,
//!   `builtin::profile`). Everything that is chef-backend's own (its reader: command output to observations;
//!   its built-in profile and the cluster file's variants of it) lives in `builtin/chef_backend/`, and its
//!   names appear nowhere else in the core: the tidy test (`tests/core_tidy.rs`) scans every other file,
//!   with three lines of the seam as its only, listed, exceptions.
//! - [`plan`]: preflight's observations to an ordered plan (block, followers, switchover, old leader, unblock,
//!   verify) and its hash.
//! - [`event`]: inputs, events, rejections; [`state`]: the state events build; [`mod@decide`]: the decisions;
//!   [`observed`]: what the cluster last showed of each node, for the views only.
//!
//! Before any disruptive action runs, [`guard`] asks the cluster again (S1-S3 checked on what it shows *now*,
//! never on the plan's picture); see its module docs and ARCHITECTURE.md "The guard".
//!
//! Where the safety rules of DESIGN.md live:
//! - S1: one action outstanding at a time, never beside any other step; and a `WaitSynced` plan item after every
//!   node that re-probes `status`, `cluster-status` and the version before the next item starts. Read-only
//!   probes may be outstanding together only as one *round*, scheduled in one decision, and only where the
//!   profile says `probe_rounds = true` (built-in profiles: one step at a time, as always). A round is the
//!   longest run of the next probes a step-by-step run would ask in which a look that names the leader
//!   (`decide::names_leader`: the topology, and a failover probe read by a built-in reader) comes only first
//!   (it may open a round, with the probes chosen from the picture before it, never join one; so the guard's
//!   last look is alone and the last one run, not only judged) and at most `decide::ROUND_PROBES_PER_NODE`
//!   probes of one node, as many as an executor runs side by side (`decide::round_of`). Nothing new is
//!   scheduled while any probe of the round is out; each one's deadline passes on its own. Whatever the order of
//!   their results, the core judges the observations in step order exactly as if the probes had run one after
//!   another, each as soon as it and every earlier one has an outcome (answered, failed, timed out, unknown), so
//!   a look that shows no leader is acted on at once (`decide::round_decisions`, `State::apply` taking the next
//!   one up after a passed check). Once one of them decides (a failed check, a
//!   poll, a halt, the emergency exit), the rest are recorded (`ObservationRecorded`, so the views and facts stay
//!   true) but not judged (`State::round_settled`). The emergency exit and an operator's abort abandon a round
//!   still out (the abort only under a profile with rounds): the wind-down goes on at once, and an abandoned
//!   probe's late result is recorded, never observed or judged, so an action never goes out beside a probe whose
//!   result could still be judged. A pause does not: the round is still awaited, recorded unjudged, and the
//!   guard starts again on resume. Old logs never have a round: two fresh probes in a row join one only under a
//!   profile that asks for rounds (why inferring membership from the log is sound: ARCHITECTURE.md, "Probe
//!   rounds"); a round a one-at-a-time run would not ask is a failed check, never judged.
//! - S2: `compute_plan` puts the leader last, after `VerifySwitchover` (new leader upgraded, old one follower).
//! - S3: `State::failover_blocked` is set when blocking is scheduled and cleared only by a confirmed unblock.
//!   Every wind-down (abort, failure) re-enables failover once `cluster-status` shows exactly one leader and that
//!   leader's own `status` shows its services running and at least one synced follower (leaderl elects only
//!   synced followers), even if another node is still stuck: leaving failover off would then be the more
//!   dangerous choice. What is still wrong goes into the end's reason. If that never holds within
//!   `sync_timeout`, it ends with `failover_pending` saying why (`decide::wind_down_decisions`,
//!   `health::leader_problems`, `health::electable_problems`). The emergency exit overrides that gate: no
//!   leader for longer than the election window (`Submission::election_window_ms`: the cluster file's, or a
//!   profile file's `election_ms`) while failover is blocked re-enables it at once (`decide::emergency_for`;
//!   after a switchover that failed under the fence, counted from when it began), also while paused, at a gate
//!   or awaiting verification (`decide::watch_decisions`); with a node probe that says whether a member leads,
//!   every member is asked first (the expected leader first, as one round where the profile asks for rounds,
//!   `decide::emergency_asks`), and any that says it still leads (cut off but serving, or an orphaned primary)
//!   keeps the fence up and halts the upgrade with `failover_pending` naming it (`decide::emergency_word`):
//!   first a node this upgrade left stopped is started and everyone asked again at once, with no wait for it to
//!   sync (it cannot without a leader the others reach), and with one member saying it leads the topology is
//!   read again, for the halt to say what the cluster shows now, never to lift the fence on one member's view
//!   (`decide::emergency_leads`, `decide::emergency_look_judged`); a wind-down that cannot confirm any leader at
//!   all within its time re-enables it too.
//!   A wind-down first brings back the node this upgrade had out of service (an abort: the node in progress; a
//!   failure: the node it stopped and did not start again): its `start` if it was stopped and not started
//!   (idempotent, retried per policy), then `status`/`cluster-status` on it until healthy and synced (bounded
//!   by `sync_timeout`, no version check); then a second `WindDownStarted` appends the outcome to the reason
//!   (`<node> is in service` or `<node> was not brought back into service: ...`) and the failover gate runs.
//!   Nothing else of the plan runs and no other node is started (`State::left_stopped`,
//!   `decide::recovery_decisions`).
//! - S4: a non-idempotent step that did not succeed starts `ReobservationStarted`; only the observation (or an
//!   operator's `Resolve`, itself checked by a new observation before a retry) decides what follows. Every
//!   other action whose outcome is unknown (executor reply `unknown`, `StepDeadlinePassed`) is re-observed
//!   too before anything is run again (a killed executor's command may have finished): the probes of
//!   `decide::effect_probes` (`install`: the version; `stop`/`start`: `status`; `upgrade`: the version, then
//!   `status` showing every service restarted since the attempt began). Shown: `OutcomeInferred` and the plan
//!   goes on; not shown: the retry policy; never observable: a halt, not a blind re-run. Failed or timed-out
//!   idempotent steps, and `block_failover`/`unblock_failover` (nothing shows them), keep the retry policy.
//! - S5: a failed step (after retries, idempotent ones only) or a failed health gate starts a wind-down whose
//!   reason names the node, action, argv, exit code and output tail. It ends `Halted` in a safe state: a node
//!   left stopped (e.g. `install` failed after `stop`; the old version is still installed) is started and
//!   waited for as under S3, and the reason goes on to say whether it is back in service. Not while a
//!   non-idempotent step is in doubt: then S4 alone decides.

pub mod builtin;
pub mod cluster;
pub mod decide;
pub mod error;
pub mod event;
pub mod guard;
pub mod health;
pub mod observe;
pub mod observed;
pub mod plan;
pub mod profile;
pub mod profile_file;
pub mod state;
pub mod version;

pub use builtin::Installer;
pub use cluster::{ClusterFile, Gate, NodeSpec, UpgradeOptions};
pub use decide::{decide, evolve, input_of, replay, verify, VerifyMismatch};
pub use error::CoreError;
pub use event::{
    Event, Input, Observation, Outcome, Rejection, Resolution, ScheduledStep, WaitPurpose,
    WindDownCause, LATEST_MS,
};
pub use observe::{Member, MemberRole, NodeHealth, Topology};
pub use observed::{Installed, NodeFacts, Seen, Sync};
pub use plan::{compute_plan, Phase, Plan, PlanInputs, PlanItem};
pub use profile::{Action, ActionSpec, Procedure, Profile, RenderContext, RunsOn};
pub use state::{NodePhase, NodeProgress, State, Status, StepOutcome, StepRecord};
