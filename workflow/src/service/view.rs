//! Views of the core's state for the API: what `status`, `list` and `watch`
//! show. Pure functions of the state.

use super::api::{NodeView, StatusView, StepView};
use crate::core::{State, Status};

/// The view of one upgrade; `events` is the number of events in its log.
pub fn status_view(upgrade: &str, state: &State, events: u64) -> StatusView {
    let (status, reason) = status_words(&state.status());
    let current = state
        .outstanding_steps()
        .into_iter()
        .next()
        .map(|step| StepView {
            step: step.step,
            attempt: step.attempt,
            node: step.node.clone(),
            action: step.action.as_str().to_string(),
            argv: step.argv.clone(),
            scheduled_ms: None,
        });
    let plan = state.plan();
    let nodes = state
        .nodes()
        .iter()
        .map(|(name, progress)| NodeView {
            name: name.clone(),
            // What the cluster showed last, not the plan's picture: after the
            // switchover the new leader leads here too.
            role: state
                .last_cluster()
                .and_then(|c| c.members.iter().find(|m| m.name == *name))
                .map(|m| m.role.as_str().to_string())
                .or_else(|| plan.and_then(|p| (p.leader == *name).then(|| "leader".to_string()))),
            version: state
                .observed_version(name)
                .map(str::to_string)
                .or_else(|| plan.and_then(|p| p.versions.get(name).cloned().flatten())),
            progress: format!("{:?}", progress.phase).to_lowercase(),
            last_output: progress.last_output.clone(),
        })
        .collect();
    StatusView {
        upgrade: upgrade.to_string(),
        cluster: state.cluster_name().unwrap_or_default().to_string(),
        status,
        reason,
        phase: serde_json::to_value(state.phase())
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        target_version: state.target_version().map(str::to_string),
        current,
        nodes,
        failover_blocked: state.failover_blocked(),
        plan: plan.and_then(|p| serde_json::to_value(p).ok()),
        plan_hash: state.plan_hash().map(str::to_string),
        submitted_ms: state.submitted_ms(),
        updated_ms: None,
        events,
    }
}

/// The status as one word, and its reason if it has one.
pub fn status_words(status: &Status) -> (String, Option<String>) {
    match status {
        Status::NotSubmitted => ("not_submitted".into(), None),
        Status::Planning => ("planning".into(), None),
        Status::Running => ("running".into(), None),
        Status::Paused { by, reason } => ("paused".into(), Some(format!("by {by}: {reason}"))),
        Status::WaitingApproval { gate } => (
            "waiting_approval".into(),
            Some(format!("waiting for approval of gate {gate}")),
        ),
        Status::NeedsVerification { step, reason } => (
            "needs_verification".into(),
            Some(format!("step {step}: {reason}")),
        ),
        Status::WindingDown { reason } => ("winding_down".into(), Some(reason.clone())),
        Status::Planned => ("planned".into(), None),
        Status::Completed => ("completed".into(), None),
        Status::Halted {
            reason,
            failover_pending,
        } => (
            "halted".into(),
            Some(with_pending(reason, failover_pending)),
        ),
        Status::Aborted {
            reason,
            failover_pending,
        } => (
            "aborted".into(),
            Some(with_pending(reason, failover_pending)),
        ),
    }
}

fn with_pending(reason: &str, pending: &Option<String>) -> String {
    match pending {
        Some(why) => format!("{reason}; FAILOVER IS STILL BLOCKED: {why}"),
        None => reason.to_string(),
    }
}

/// The log verification report as JSON.
pub fn verify_view(report: &store::VerifyReport) -> serde_json::Value {
    serde_json::json!({
        "clean": report.is_clean(),
        "report": report.to_string(),
    })
}
