//! Text rendering for people: timeline lines, status blocks, plans.

use workflow::core::{Event, Observation, Outcome, PlanItem};
use workflow::service::api::{LoggedEvent, StatusView};

/// The time an event carries, if it carries one.
pub fn event_time(event: &Event) -> Option<u64> {
    match event {
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

/// Follows a log and renders each event as one timeline line, with the time
/// since submission. Polling is folded: a probe that succeeds prints only what
/// it observed, and only when that differs from the last observation of the
/// same kind on the same node; a failing check prints only when its problems
/// change. `--json` output and the log itself keep everything.
#[derive(Default)]
pub struct Timeline {
    start_ms: Option<u64>,
    last_ms: u64,
    /// step -> (node, action, is_probe), to name steps in result lines.
    steps: std::collections::HashMap<u64, (String, String, bool)>,
    /// (node, kind) -> last printed observation.
    observed: std::collections::HashMap<(String, String), String>,
    /// node -> last printed problems of a failing check.
    problems: std::collections::HashMap<String, String>,
}

impl Timeline {
    /// The line for one logged event; `None` for bookkeeping events that
    /// would only add noise (timer ticks).
    pub fn line(&mut self, logged: &LoggedEvent) -> Option<String> {
        let event: Event = match serde_json::from_str(logged.event.get()) {
            Ok(event) => event,
            Err(err) => {
                return Some(format!(
                    "#{:<4} (event this baton cannot read: {err})",
                    logged.seq
                ))
            }
        };
        if let Some(at) = event_time(&event) {
            self.start_ms.get_or_insert(at);
            self.last_ms = self.last_ms.max(at);
        }
        let elapsed = self
            .last_ms
            .saturating_sub(self.start_ms.unwrap_or(self.last_ms));
        let what = terminal_safe(&self.describe(&event)?);
        Some(format!(
            "#{:<4} {:>7.1}s  {what}",
            logged.seq,
            elapsed as f64 / 1000.0
        ))
    }

    fn describe(&mut self, event: &Event) -> Option<String> {
        Some(match event {
            Event::UpgradeSubmitted {
                cluster,
                target_version,
                package,
                requested_by,
                plan_only,
                ..
            } => format!(
                "{} by {requested_by}: cluster {} to {target_version} (package {package})",
                if *plan_only {
                    "plan requested"
                } else {
                    "upgrade submitted"
                },
                cluster.name
            ),
            Event::StepScheduled {
                step,
                attempt,
                node,
                action,
                argv,
                ..
            } => {
                self.steps.insert(
                    *step,
                    (node.clone(), action.as_str().to_string(), action.is_probe()),
                );
                if action.is_probe() {
                    return None;
                }
                format!(
                    "step {step}.{attempt} scheduled on {node}: {} `{}`",
                    action.as_str(),
                    argv.join(" ")
                )
            }
            Event::StepResultRecorded {
                step,
                attempt,
                outcome,
                exit_code,
                stdout,
                stderr,
                reason,
                ..
            } => {
                let (node, action, probe) = self.steps.get(step).cloned().unwrap_or_default();
                if probe && *outcome == Outcome::Succeeded {
                    return None;
                }
                let mut line = format!(
                    "step {step}.{attempt} {} on {node} ({action}){}",
                    outcome_word(*outcome),
                    exit_code.map(|c| format!(", exit {c}")).unwrap_or_default()
                );
                if *outcome != Outcome::Succeeded {
                    if let Some(reason) = reason {
                        line.push_str(&format!(": {reason}"));
                    }
                    if let Some(tail) = last_line(stderr).or_else(|| last_line(stdout)) {
                        line.push_str(&format!(" | {tail}"));
                    }
                }
                line
            }
            Event::TimerFired { .. } | Event::WaitStarted { .. } => return None,
            Event::UpgradePaused { by, reason, .. } => format!("paused by {by}: {reason}"),
            Event::UpgradeResumed { by, .. } => format!("resumed by {by}"),
            Event::AbortRequested { by, reason, .. } => {
                format!("abort requested by {by}: {reason}")
            }
            Event::GateApproved { gate, by, .. } => format!("gate {gate} approved by {by}"),
            Event::StepResolved {
                step,
                resolution,
                by,
                why,
                ..
            } => format!("step {step} resolved as {resolution:?} by {by}: {why}"),
            Event::PhaseEntered { phase, .. } => format!("phase {}", json_word(phase)),
            Event::StepDeadlinePassed { step, attempt, .. } => {
                format!("step {step}.{attempt}: no result before its deadline, outcome unknown")
            }
            Event::ObservationRecorded {
                node, observation, ..
            } => {
                let summary = observation_summary(observation);
                let kind = match observation {
                    Observation::ClusterStatus { .. } => "cluster",
                    Observation::NodeStatus { .. } => "status",
                    Observation::Version { .. } => "version",
                    Observation::Failover { .. } => "failover",
                    Observation::Package { .. } => "package",
                    Observation::Unavailable { .. } => "unavailable",
                };
                let key = (node.clone(), kind.to_string());
                if self.observed.get(&key) == Some(&summary) {
                    return None;
                }
                self.observed.insert(key, summary.clone());
                format!("observed on {node}: {summary}")
            }
            Event::CheckEvaluated {
                node,
                passed,
                problems,
                ..
            } => {
                let text = problems.join("; ");
                let previous = self.problems.insert(node.clone(), text.clone());
                if *passed {
                    if previous.as_deref().is_some_and(|p| !p.is_empty()) {
                        self.problems.insert(node.clone(), String::new());
                        format!("check on {node} passes now")
                    } else {
                        return None;
                    }
                } else if previous.as_deref() == Some(text.as_str()) {
                    return None;
                } else {
                    format!("check on {node} not passing yet: {text}")
                }
            }
            Event::PlanComputed { plan, plan_hash } => format!(
                "plan computed: leader {}, {} items, hash {}",
                plan.leader,
                plan.items.len(),
                &plan_hash[..plan_hash.len().min(16)]
            ),
            Event::ItemStarted { .. } | Event::ItemCompleted { .. } => return None,
            Event::ApprovalRequested { gate } => {
                format!("waiting at gate {gate}: run `baton approve UPGRADE {gate}`")
            }
            Event::ReobservationStarted { step, reason, .. } => {
                format!("step {step} in doubt, observing the cluster before deciding: {reason}")
            }
            Event::OutcomeInferred { step, evidence } => {
                format!("step {step} took effect: {evidence}")
            }
            Event::VerificationRequired { step, reason } => {
                format!("NEEDS VERIFICATION of step {step}: {reason}")
            }
            Event::WindDownStarted { cause, reason, .. } => {
                format!("winding down ({}): {reason}", json_word(cause))
            }
            Event::UpgradeCompleted { .. } => "upgrade COMPLETED".to_string(),
            Event::UpgradeHalted {
                reason,
                failover_pending,
                ..
            } => format!(
                "upgrade HALTED: {reason}{}",
                pending_suffix(failover_pending)
            ),
            Event::UpgradeAborted {
                reason,
                failover_pending,
                ..
            } => format!(
                "upgrade ABORTED: {reason}{}",
                pending_suffix(failover_pending)
            ),
        })
    }
}

fn pending_suffix(pending: &Option<String>) -> String {
    pending
        .as_ref()
        .map(|why| format!("; FAILOVER IS STILL BLOCKED: {why}"))
        .unwrap_or_default()
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "FAILED",
        Outcome::TimedOut => "TIMED OUT",
        Outcome::Unknown => "outcome UNKNOWN",
        Outcome::Rejected => "REJECTED",
    }
}

fn observation_summary(observation: &Observation) -> String {
    match observation {
        Observation::ClusterStatus { status } => status
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, json_word(&m.role)))
            .collect::<Vec<_>>()
            .join(" "),
        Observation::NodeStatus { status } => node_status_summary(status),
        Observation::Version { version, state } => format!(
            "version {}{}",
            version.as_deref().unwrap_or("(not installed)"),
            state
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ),
        Observation::Failover { settings } => {
            let off: Vec<&str> = settings
                .nodes
                .iter()
                .filter(|(_, on)| !**on)
                .map(|(n, _)| n.as_str())
                .collect();
            format!(
                "cluster failover {}{}",
                if settings.cluster { "on" } else { "off" },
                if off.is_empty() {
                    String::new()
                } else {
                    format!("; node failover off on {}", off.join(", "))
                }
            )
        }
        Observation::Package { version } => format!("package file version {version}"),
        Observation::Unavailable { error } => format!("unavailable: {error}"),
    }
}

/// `status` in a few words: which services are down, and postgresql's view.
fn node_status_summary(status: &workflow::core::StatusReport) -> String {
    use workflow::core::parse::Distributed;
    use workflow::core::ServiceState;
    let down: Vec<&str> = status
        .services
        .iter()
        .filter(|(_, row)| !matches!(row.state, ServiceState::Running { .. }))
        .map(|(name, _)| name.as_str())
        .collect();
    let services = if down.is_empty() {
        "services running".to_string()
    } else {
        format!("down: {}", down.join(", "))
    };
    let pg = match status
        .services
        .get("postgresql")
        .map(|row| &row.distributed)
    {
        Some(Distributed::Postgresql {
            leader,
            offline,
            syncing,
            synced,
        }) => format!("pg leader {leader}, synced {synced}, syncing {syncing}, offline {offline}"),
        Some(Distributed::Error(error)) => format!("pg error: {error}"),
        _ => "pg ?".to_string(),
    };
    format!("{services}; {pg}")
}

/// A serde enum value as its JSON word (`"old_leader"`).
pub fn json_word<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "?".to_string())
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Text from the cluster, a command's output or a peer, made safe to print:
/// control characters (terminal escape sequences among them) are shown
/// escaped, not sent to the terminal. Newlines inside one line too.
pub fn terminal_safe(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_string();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A status block.
pub fn status_block(view: &StatusView) -> String {
    terminal_safe_lines(&status_block_raw(view))
}

/// Each line made [`terminal_safe`], the line breaks kept.
fn terminal_safe_lines(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|line| match line.strip_suffix('\n') {
            Some(line) => format!("{}\n", terminal_safe(line)),
            None => terminal_safe(line),
        })
        .collect()
}

fn status_block_raw(view: &StatusView) -> String {
    let mut out = format!(
        "upgrade {}  cluster {}  {}{}\n",
        view.upgrade,
        view.cluster,
        view.status.to_uppercase(),
        view.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "phase {}  target {}  failover {}  events {}\n",
        view.phase,
        view.target_version.as_deref().unwrap_or("?"),
        if view.failover_blocked {
            "BLOCKED"
        } else {
            "enabled"
        },
        view.events
    ));
    if let Some(step) = &view.current {
        out.push_str(&format!(
            "current: step {}.{} on {}: {} `{}`\n",
            step.step,
            step.attempt,
            step.node,
            step.action,
            step.argv.join(" ")
        ));
    }
    for node in &view.nodes {
        out.push_str(&format!(
            "  {:<12} {:<9} {:<7} {}\n",
            node.name,
            node.progress,
            node.role.as_deref().unwrap_or(""),
            node.last_output.as_deref().unwrap_or("")
        ));
    }
    out
}

/// A plan, one line per item.
pub fn plan_block(plan: &workflow::core::Plan, hash: &str) -> String {
    let mut out = format!(
        "plan for cluster {} to {} ({} procedure)\nleader: {}\n",
        plan.cluster,
        plan.target_version,
        json_word(&plan.procedure),
        plan.leader
    );
    for (node, guid) in &plan.guids {
        out.push_str(&format!(
            "  {node:<12} guid {guid}  version {}\n",
            plan.versions
                .get(node)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "(not installed)".into())
        ));
    }
    if !plan.skipped.is_empty() {
        out.push_str(&format!(
            "skipped (already at target): {}\n",
            plan.skipped.join(", ")
        ));
    }
    for (i, item) in plan.items.iter().enumerate() {
        let line = match item {
            PlanItem::Run {
                node, action, argv, ..
            } => format!("run on {node}: {} `{}`", action.as_str(), argv.join(" ")),
            PlanItem::WaitSynced { node, .. } => format!("wait until {node} is healthy and synced"),
            PlanItem::Gate { gate, .. } => format!("wait for approval of gate {gate}"),
            PlanItem::VerifySwitchover {
                old_leader, via, ..
            } => format!(
                "verify a new upgraded leader and {old_leader} back as follower (via {via})"
            ),
            PlanItem::VerifyStable { via, .. } => {
                format!("verify the cluster is stable (via {via})")
            }
        };
        out.push_str(&format!(
            "{:>3}. [{}] {line}\n",
            i + 1,
            json_word(&item.phase())
        ));
    }
    out.push_str(&format!("plan hash: {hash}\n"));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn escape_sequences_are_shown_not_sent() {
        assert_eq!(super::terminal_safe("plain text"), "plain text");
        assert_eq!(
            super::terminal_safe("a\u{1b}[31mred\u{7}"),
            "a\\u{1b}[31mred\\u{7}"
        );
        assert_eq!(super::terminal_safe_lines("x\u{1b}\ny\n"), "x\\u{1b}\ny\n");
    }
}
