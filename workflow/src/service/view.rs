//! Views of the core's state for the API: what `status`, `list` and `watch`
//! show. Pure functions of the state.

use super::api::{FactTimes, ItemView, NodeView, RoundView, StatusView, StepView};
use crate::core::{NodePhase, NodeProgress, PlanItem, ScheduledStep, State, Status};

/// The `list` row of the upgrade whose whole log is `events`, derived from it
/// (the service keeps its rows as events are appended instead; the tests
/// compare the two).
pub fn list_row(
    upgrade: &str,
    events: &[crate::core::Event],
) -> Option<super::api::UpgradeSummary> {
    super::history::summary(upgrade, events)
}

/// The view of one upgrade; `events` is the number of events in its log.
pub fn status_view(upgrade: &str, state: &State, events: u64) -> StatusView {
    let (status, reason) = status_words(&state.status());
    // The step the upgrade waits on; only when it waits on none, an outstanding one (a probe abandoned by the
    // emergency exit or an abort, whose result may still come), as before.
    let current = state
        .awaited_step()
        .cloned()
        .or_else(|| state.outstanding_steps().into_iter().next())
        .map(|step| step_view(state, &step));
    let round = state.round_steps();
    let round = (!round.is_empty()).then(|| RoundView {
        probes: round.len(),
        out: round
            .iter()
            .filter(|r| r.outcome.is_none())
            .map(|r| step_view(state, &r.scheduled))
            .collect(),
    });
    let plan = state.plan();
    let nodes = state
        .nodes()
        .iter()
        .map(|(name, progress)| node_view(state, name, progress))
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
        round,
        item: item_view(state),
        nodes,
        failover_blocked: state.failover_blocked(),
        plan: plan.and_then(|p| serde_json::to_value(p).ok()),
        plan_hash: state.plan_hash().map(str::to_string),
        submitted_ms: state.submitted_ms(),
        updated_ms: state.updated_ms(),
        events,
    }
}

fn step_view(state: &State, step: &ScheduledStep) -> StepView {
    StepView {
        step: step.step,
        attempt: step.attempt,
        node: step.node.clone(),
        action: step.action.as_str().to_string(),
        argv: step.argv.clone(),
        scheduled_ms: Some(state.scheduled_ms(step)),
        timeout_ms: step.timeout_ms,
        deadline_ms: step.deadline_ms,
    }
}

/// One node: what the cluster last showed of it (never the plan's picture: after the switchover the new
/// leader leads here too), and its progress.
fn node_view(state: &State, name: &str, progress: &NodeProgress) -> NodeView {
    let facts = state.node_facts(name).cloned().unwrap_or_default();
    let services = facts.services_down.as_ref().map(|s| {
        if s.value.is_empty() {
            "running".to_string()
        } else if s.value.len() == state.service_names().len() {
            "down".to_string()
        } else {
            format!("down: {}", s.value.join(", "))
        }
    });
    let package = facts
        .installed
        .as_ref()
        .map(|i| match (&i.value.version, &i.value.state) {
            (None, _) => "not_installed".to_string(),
            (Some(_), Some(state)) => state.clone(),
            (Some(_), None) => "installed".to_string(),
        });
    NodeView {
        name: name.to_string(),
        role: facts.role.as_ref().map(|r| r.value.as_str().to_string()),
        sync: facts.sync.as_ref().map(|s| s.value.as_str().to_string()),
        services,
        installed_version: facts
            .installed
            .as_ref()
            .and_then(|i| i.value.version.clone()),
        package,
        running_version: facts.running.as_ref().and_then(|r| r.value.clone()),
        seen_ms: FactTimes {
            role: facts.role.as_ref().map(|f| f.at_ms),
            sync: facts.sync.as_ref().map(|f| f.at_ms),
            services: facts.services_down.as_ref().map(|f| f.at_ms),
            installed: facts.installed.as_ref().map(|f| f.at_ms),
            running: facts.running.as_ref().map(|f| f.at_ms),
        },
        last_seen_ms: facts.last_seen_ms,
        progress: progress_word(state, name, progress.phase),
        last_action: progress.last_action.map(|a| a.as_str().to_string()),
        last_output: progress.last_output.clone(),
    }
}

/// A node's progress in one word. The phase is the core's; once the upgrade winds down or ended without
/// completing, a node whose upgrade began and did not finish is `interrupted` (or `restoring` while a wind-down
/// brings it back), and one never reached is `not_started`: neither goes on.
fn progress_word(state: &State, name: &str, phase: NodePhase) -> String {
    let status = state.status();
    let stopping = matches!(
        status,
        Status::WindingDown { .. } | Status::Halted { .. } | Status::Aborted { .. }
    );
    if matches!(status, Status::WindingDown { .. }) && state.recovering() == Some(name) {
        return "restoring".into();
    }
    match phase {
        NodePhase::Upgrading | NodePhase::Syncing if stopping => "interrupted".into(),
        NodePhase::Pending if stopping => "not_started".into(),
        NodePhase::Pending => "pending".into(),
        NodePhase::Skipped => "skipped".into(),
        NodePhase::Upgrading => "upgrading".into(),
        NodePhase::Syncing => "syncing".into(),
        NodePhase::Upgraded => "upgraded".into(),
    }
}

/// The plan item in progress, in words, with its bound where it has one.
fn item_view(state: &State) -> Option<ItemView> {
    let (index, item, started_ms) = state.current_plan_item()?;
    let sync_timeout = state.cluster().map(|c| c.upgrade.sync_timeout_ms);
    let (what, timeout_ms) = match item {
        PlanItem::Run { node, action, .. } => (format!("{} on {node}", action.as_str()), None),
        PlanItem::WaitSynced { node, .. } => (
            format!("wait until {node} is healthy and synced"),
            sync_timeout,
        ),
        PlanItem::Gate { gate, .. } => (format!("wait for approval of gate {gate}"), None),
        PlanItem::VerifySwitchover { old_leader, .. } => (
            format!("verify a new upgraded leader and {old_leader} back as follower"),
            sync_timeout,
        ),
        PlanItem::VerifyStable { .. } => ("verify the cluster is stable".to_string(), sync_timeout),
    };
    Some(ItemView {
        number: index.saturating_add(1),
        what,
        started_ms,
        timeout_ms,
    })
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
