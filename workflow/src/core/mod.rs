//! The pure upgrade workflow core: the cluster file, the chef-backend profile, the output parsers and the
//! event-sourced Decider (`decide`, `evolve`, `replay`) that drives a rolling upgrade.
//!
//! Nothing here performs I/O, reads a clock or draws random numbers: time and ids arrive inside [`Input`]s,
//! step ids are a counter in [`State`]. A tidy test (`tests/core_tidy.rs`) enforces that.

pub mod cluster;
pub mod decide;
pub mod error;
pub mod event;
pub mod health;
pub mod parse;
pub mod plan;
pub mod profile;
pub mod state;

pub use cluster::{ClusterFile, Gate, NodeSpec, UpgradeOptions};
pub use decide::{decide, evolve, input_of, replay, verify, VerifyMismatch};
pub use error::CoreError;
pub use event::{
    Event, Input, Observation, Outcome, Rejection, Resolution, ScheduledStep, WaitPurpose,
    WindDownCause,
};
pub use parse::{
    parse_cluster_status, parse_simple_status, parse_status, parse_version_output, ClusterMember,
    ClusterStatus, Role, ServiceRow, ServiceState, SimpleService, StatusReport,
};
pub use plan::{compute_plan, Phase, Plan, PlanInputs, PlanItem};
pub use profile::{Action, ActionSpec, Installer, Procedure, Profile, RenderContext, RunsOn};
pub use state::{NodePhase, NodeProgress, State, Status, StepOutcome, StepRecord};
