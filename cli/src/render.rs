//! Text rendering for people: timeline lines, status blocks, plans.

use std::io::Write;

use workflow::core::{Event, Observation, Outcome, PlanItem};
use workflow::service::api::{LoggedEvent, StatusView, StepView};

/// Follows a log and renders each event as one timeline line, with the time
/// since submission. Polling is folded: a probe that succeeds prints only what
/// it observed, and only when that differs from the last observation of the
/// same kind on the same node; a failing check prints only when its problems
/// change. `--json` output and the log itself keep everything.
#[derive(Default)]
pub struct Timeline {
    start_ms: Option<u64>,
    /// The upgrade the events belong to (their stream), for the commands a line suggests.
    upgrade: String,
    last_ms: u64,
    /// step -> (node, action, is_probe), to name steps in result lines.
    steps: std::collections::HashMap<u64, (String, String, bool)>,
    /// (node, kind) -> last printed observation.
    observed: std::collections::HashMap<(String, String), String>,
    /// node/probe -> last printed problems of a failing check.
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
        if self.upgrade.is_empty() {
            self.upgrade = terminal_safe(&logged.stream);
        }
        if let Some(at) = event.at_ms() {
            self.start_ms.get_or_insert(at);
            self.last_ms = self.last_ms.max(at);
        }
        let elapsed = self
            .last_ms
            .saturating_sub(self.start_ms.unwrap_or(self.last_ms));
        let what = terminal_safe(&readable(&self.describe(&event)?));
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
                    Observation::ClusterStatus { .. } | Observation::Members { .. } => "cluster",
                    Observation::NodeStatus { .. } | Observation::Node { .. } => "status",
                    Observation::Version { .. } => "version",
                    Observation::Running { .. } => "running",
                    Observation::Failover { .. } | Observation::Fence { .. } => "failover",
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
                step,
                node,
                passed,
                problems,
            } => {
                // Folded per node and probe: a wait's `cluster-status` passing between two failing `status`
                // checks is not news.
                let probe = self
                    .steps
                    .get(step)
                    .map(|(_, action, _)| action.clone())
                    .unwrap_or_default();
                let key = format!("{node}/{probe}");
                let text = problems.join("; ");
                let previous = self.problems.insert(key.clone(), text.clone());
                if *passed {
                    if previous.as_deref().is_some_and(|p| !p.is_empty()) {
                        self.problems.insert(key, String::new());
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
                format!(
                    "waiting at gate {gate}: run `baton approve {} {gate}`",
                    self.upgrade
                )
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
        Observation::Members { topology } => topology
            .members
            .iter()
            .map(|m| format!("{}={}", m.node, m.shown))
            .collect::<Vec<_>>()
            .join(" "),
        Observation::Node {
            service,
            up,
            caught_up,
            leads,
        } => format!(
            "{service} {}{}{}",
            if *up { "up" } else { "down" },
            match caught_up {
                Some(true) => ", caught up",
                Some(false) => ", NOT caught up",
                None => "",
            },
            match leads {
                Some(true) => ", says it leads",
                Some(false) => ", says it follows",
                None => "",
            }
        ),
        Observation::Fence { blocked } => format!(
            "automatic failover {}",
            if *blocked { "blocked" } else { "allowed" }
        ),
        Observation::Running { version } => format!("running {version}"),
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
fn node_status_summary(status: &workflow::core::builtin::chef_backend::StatusReport) -> String {
    use workflow::core::builtin::chef_backend::reader::Distributed;
    use workflow::core::builtin::chef_backend::ServiceState;
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

/// Recorded problem texts in the words chef-backend prints: the log keeps
/// the core's spelling of roles and service states (`role DeposedLeader`,
/// `not running (Down)`), and changing what is recorded would make older logs
/// fail `replay --verify`; only what is shown changes.
pub fn readable(text: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        ("role DeposedLeader", "role deposed_leader"),
        ("role WaitingForLeader", "role waiting_for_leader"),
        ("role Leader", "role leader"),
        ("role Follower", "role follower"),
        ("not running (Down)", "not running (down)"),
        ("not running (Running { pid: None })", "not running"),
    ];
    let mut out = text.to_string();
    for (debug, shown) in WORDS {
        if out.contains(debug) {
            out = out.replace(debug, shown);
        }
    }
    // `role Other("x")` and `not running (Other("x"))`: the verbatim text.
    for (open, close) in [("role Other(\"", "\")"), ("(Other(\"", "\"))")] {
        while let Some(at) = out.find(open) {
            let rest = &out[at + open.len()..];
            let Some(end) = rest.find(close) else { break };
            let word = rest[..end].to_string();
            let prefix = if open.starts_with("role") {
                "role "
            } else {
                "("
            };
            let suffix = if open.starts_with("role") { "" } else { ")" };
            out = format!(
                "{}{prefix}{word}{suffix}{}",
                &out[..at],
                &rest[end + close.len()..]
            );
        }
    }
    out
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

/// A status block, ages counted to the wall clock (`status`, `watch`, the
/// answers of `pause`, `approve`...).
pub fn status_block(view: &StatusView) -> String {
    status_block_at(view, now_ms())
}

/// A status block, ages counted to `now_ms` (`replay` passes the time of the
/// state it shows).
pub fn status_block_at(view: &StatusView, now_ms: u64) -> String {
    terminal_safe_lines(&status_block_raw(view, now_ms))
}

/// The wall clock in unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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

/// A duration for people: `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1_000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60),
    }
}

/// How long ago `at_ms` was, seen from `now_ms`.
fn ago(at_ms: u64, now_ms: u64) -> String {
    if at_ms >= now_ms {
        "just now".to_string()
    } else {
        format!("{} ago", duration(now_ms - at_ms))
    }
}

fn status_block_raw(view: &StatusView, now_ms: u64) -> String {
    let mut out = format!(
        "upgrade {}  cluster {}  {}{}\n",
        view.upgrade,
        view.cluster,
        view.status.to_uppercase(),
        view.reason
            .as_ref()
            .map(|r| format!(": {}", readable(r)))
            .unwrap_or_default()
    );
    out.push_str(&format!(
        "phase {}  target {}  failover {}  events {}{}\n",
        view.phase,
        view.target_version.as_deref().unwrap_or("?"),
        if view.failover_blocked {
            "BLOCKED"
        } else {
            "enabled"
        },
        view.events,
        view.updated_ms
            .map(|t| format!("  updated {}", ago(t, now_ms)))
            .unwrap_or_default()
    ));
    if let Some(item) = &view.item {
        let elapsed = now_ms.saturating_sub(item.started_ms);
        out.push_str(&format!(
            "item {}: {} ({}{})\n",
            item.number,
            item.what,
            duration(elapsed),
            item.timeout_ms
                .map(|t| format!(" of {}", duration(t)))
                .unwrap_or_default()
        ));
    }
    match (&view.round, &view.current) {
        // A round of probes: every probe of it the upgrade still waits on, each on its own line.
        (Some(round), _) => {
            out.push_str(&format!(
                "round of {} probes, {} out:\n",
                round.probes,
                round.out.len()
            ));
            for step in &round.out {
                out.push_str(&format!("  {}", step_line(step, "out", now_ms)));
            }
        }
        (None, Some(step)) => out.push_str(&step_line(step, "running", now_ms)),
        (None, None) => {}
    }
    out.push_str(&node_table(view, now_ms));
    out
}

/// One step in flight: `step 7.1 on n1: probe_status `argv` (running 1.2s, timeout 30.0s)`; `since` says how
/// its time so far is worded.
fn step_line(step: &StepView, since: &str, now_ms: u64) -> String {
    let elapsed = step
        .scheduled_ms
        .map(|t| format!("{since} {}, ", duration(now_ms.saturating_sub(t))))
        .unwrap_or_default();
    format!(
        "step {}.{} on {}: {} `{}` ({elapsed}timeout {})\n",
        step.step,
        step.attempt,
        step.node,
        step.action,
        step.argv.join(" "),
        duration(step.timeout_ms)
    )
}

/// The per-node table: what the cluster last showed of each node (`unknown`
/// where nothing shown since the last action that could change it), when it
/// was last seen, its progress and the last output of an action on it.
pub fn node_table(view: &StatusView, now_ms: u64) -> String {
    const UNKNOWN: &str = "unknown";
    let header = [
        "NODE",
        "ROLE",
        "SYNC",
        "SERVICES",
        "INSTALLED",
        "RUNNING",
        "PROGRESS",
        "LAST SEEN",
        "LAST OUTPUT",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for node in &view.nodes {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_string());
        let installed = match (node.package.as_deref(), &node.installed_version) {
            (Some("not_installed"), _) => "none".to_string(),
            (Some(state), Some(v)) if state != "installed" => format!("{v} ({state})"),
            (_, v) => or_unknown(v),
        };
        let stopped = node.services.as_deref() == Some("down");
        let running = match &node.running_version {
            Some(v) => v.clone(),
            None if stopped => "stopped".to_string(),
            None => UNKNOWN.to_string(),
        };
        let output = match (&node.last_action, &node.last_output) {
            (Some(action), Some(line)) => format!("{action}: {line}"),
            (Some(action), None) => format!("{action}: -"),
            (None, _) => String::new(),
        };
        rows.push(vec![
            node.name.clone(),
            or_unknown(&node.role),
            or_unknown(&node.sync),
            or_unknown(&node.services),
            installed,
            running,
            node.progress.clone(),
            node.last_seen_ms
                .map(|t| ago(t, now_ms))
                .unwrap_or_else(|| "never".to_string()),
            output,
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            line.push(' ');
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$} ", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `watch`'s live display on a terminal: each frame is drawn over the last
/// one from the top left (no scrolling), cut to the terminal's size. Colour
/// (the status word, the table's header) unless `NO_COLOR` is set.
pub struct LiveScreen {
    colour: bool,
    cleared: bool,
}

impl Default for LiveScreen {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveScreen {
    /// How many timeline lines are kept for the display.
    pub const KEPT_LINES: usize = 500;

    pub fn new() -> LiveScreen {
        LiveScreen {
            colour: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            cleared: false,
        }
    }

    /// The terminal's size (columns, rows); 80x24 when it does not say.
    fn size() -> (usize, usize) {
        match rustix::termios::tcgetwinsize(std::io::stdout()) {
            Ok(ws) if ws.ws_col > 0 && ws.ws_row > 0 => (ws.ws_col as usize, ws.ws_row as usize),
            _ => (80, 24),
        }
    }

    /// Draws one frame: the status block, then as many of the latest
    /// timeline lines as fit.
    pub fn draw(
        &mut self,
        view: &StatusView,
        timeline: &[String],
        now_ms: u64,
    ) -> std::io::Result<()> {
        let (width, height) = Self::size();
        let frame = self.frame(view, timeline, now_ms, width, height);
        let mut out = std::io::stdout().lock();
        if !self.cleared {
            out.write_all(b"\x1b[H\x1b[2J")?;
            self.cleared = true;
        }
        out.write_all(frame.as_bytes())?;
        out.flush()
    }

    /// Leaves the last frame on the screen and the cursor below it.
    pub fn finish(&mut self) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(b"\n")?;
        out.flush()
    }

    /// The bytes of one frame for a `width` x `height` terminal: cursor home,
    /// every line cut to the width and cleared to its end, the rest of the
    /// screen cleared. At most `height - 1` lines, so that nothing scrolls.
    pub fn frame(
        &self,
        view: &StatusView,
        timeline: &[String],
        now_ms: u64,
        width: usize,
        height: usize,
    ) -> String {
        let block = terminal_safe_lines(&status_block_raw(view, now_ms));
        let mut lines: Vec<String> = block.lines().map(str::to_string).collect();
        let room = height.saturating_sub(1);
        lines.push(format!("-- timeline ({} events) --", view.events));
        let left = room.saturating_sub(lines.len());
        let start = timeline.len().saturating_sub(left);
        lines.extend(timeline[start..].iter().cloned());
        lines.truncate(room);
        let mut out = String::from("\x1b[H");
        for (i, line) in lines.iter().enumerate() {
            let cut: String = line.chars().take(width).collect();
            let cut = if !self.colour {
                cut
            } else if i == 0 {
                colour_status(&cut, &view.status)
            } else if cut.trim_start().starts_with("NODE ") {
                format!("\x1b[1m{cut}\x1b[0m")
            } else {
                cut
            };
            out.push_str(&cut);
            out.push_str("\x1b[K");
            if i + 1 < lines.len() {
                out.push_str("\r\n");
            }
        }
        out.push_str("\x1b[J");
        out
    }
}

/// The status word of a block's first line in colour: green when completed,
/// red when it failed or needs someone, yellow when it waits.
fn colour_status(line: &str, status: &str) -> String {
    let word = status.to_uppercase();
    let code = match status {
        "completed" | "planned" => "32",
        "halted" | "aborted" | "needs_verification" => "31",
        "paused" | "waiting_approval" | "winding_down" => "33",
        _ => return line.to_string(),
    };
    match line.find(&format!("  {word}")) {
        Some(at) => {
            let at = at + 2;
            format!(
                "{}\x1b[1;{code}m{word}\x1b[0m{}",
                &line[..at],
                &line[at + word.len()..]
            )
        }
        None => line.to_string(),
    }
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
    if let Some(sha) = &plan.profile_sha256 {
        // The plan hash covers the profile file's text through this hash: the reviewer sees which one.
        out.push_str(&format!("profile file sha256: {sha}\n"));
    }
    if let Some(sha) = &plan.nodes_sha256 {
        // And the cluster file's nodes (addresses and vars that only probes render) through this one.
        out.push_str(&format!("cluster nodes sha256: {sha}\n"));
    }
    for (node, guid) in &plan.guids {
        out.push_str(&format!(
            "  {node:<12} guid {guid}  version {}{}\n",
            plan.versions
                .get(node)
                .cloned()
                .flatten()
                .unwrap_or_else(|| "(not installed)".into()),
            // What the process runs, when the profile shows it: "already at target" needs both.
            plan.running
                .get(node)
                .map(|r| format!(", running {r}"))
                .unwrap_or_default()
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
            } => {
                let mut line = format!("run on {node}: {} `{}`", action.as_str(), argv.join(" "));
                // A profile file's switchover hands leadership to a named node: the one the switchover is
                // then verified through (the plan renders `{target...}` for it).
                if *action == workflow::core::Action::Demote && plan.profile_sha256.is_some() {
                    let target = plan.items[i..].iter().find_map(|later| match later {
                        PlanItem::VerifySwitchover { via, .. } => Some(via),
                        _ => None,
                    });
                    if let Some(target) = target {
                        line.push_str(&format!(" (leadership to {target})"));
                    }
                }
                line
            }
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
    use workflow::service::api::{FactTimes, NodeView, RoundView, StatusView, StepView};

    fn view() -> StatusView {
        let node = |name: &str, role: Option<&str>, services: Option<&str>| NodeView {
            name: name.into(),
            role: role.map(String::from),
            sync: None,
            services: services.map(String::from),
            installed_version: Some("3.0.0-1".into()),
            package: Some("installed".into()),
            running_version: None,
            seen_ms: FactTimes::default(),
            last_seen_ms: Some(9_000),
            progress: "pending".into(),
            last_action: None,
            last_output: None,
        };
        StatusView {
            upgrade: "01UPGRADE".into(),
            cluster: "c".into(),
            status: "halted".into(),
            reason: Some("why".into()),
            phase: "followers".into(),
            target_version: Some("3.1.0-1".into()),
            current: None,
            round: None,
            item: None,
            nodes: vec![
                node("backend-1", Some("leader"), Some("running")),
                node("backend-2", None, Some("down")),
            ],
            failover_blocked: false,
            plan: None,
            plan_hash: None,
            submitted_ms: Some(1_000),
            updated_ms: Some(9_000),
            events: 12,
        }
    }

    fn step(step: u64, node: &str, scheduled_ms: u64) -> StepView {
        StepView {
            step,
            attempt: 1,
            node: node.into(),
            action: "probe_status".into(),
            argv: vec!["etcdctl".into(), "endpoint".into(), "health".into()],
            scheduled_ms: Some(scheduled_ms),
            timeout_ms: 10_000,
            deadline_ms: scheduled_ms + 15_000,
        }
    }

    #[test]
    fn a_single_step_in_flight_is_one_line() {
        let mut v = view();
        v.current = Some(step(7, "m1", 8_000));
        let block = super::status_block_at(&v, 10_000);
        let lines: Vec<&str> = block.lines().filter(|l| l.contains("step ")).collect();
        assert_eq!(
            lines,
            ["step 7.1 on m1: probe_status `etcdctl endpoint health` (running 2.0s, timeout 10.0s)"],
            "{block}"
        );
        assert!(!block.contains("round"), "{block}");
    }

    #[test]
    fn a_round_in_flight_shows_every_probe_it_waits_on() {
        let mut v = view();
        // The first of the round answered; the view's `current` is the first still out.
        v.current = Some(step(8, "m2", 8_000));
        v.round = Some(RoundView {
            probes: 3,
            out: vec![step(8, "m2", 8_000), step(9, "m3", 8_500)],
        });
        let block = super::status_block_at(&v, 10_000);
        assert!(block.contains("round of 3 probes, 2 out:\n"), "{block}");
        assert!(
            block.contains(
                "  step 8.1 on m2: probe_status `etcdctl endpoint health` (out 2.0s, timeout 10.0s)\n"
            ),
            "{block}"
        );
        assert!(
            block.contains(
                "  step 9.1 on m3: probe_status `etcdctl endpoint health` (out 1.5s, timeout 10.0s)\n"
            ),
            "{block}"
        );
        // Not a second time as the single step in flight.
        assert_eq!(block.matches("step 8.1").count(), 1, "{block}");
    }

    #[test]
    fn the_node_table_says_what_is_not_known() {
        let table = super::node_table(&view(), 10_000);
        let row = table.lines().find(|l| l.contains("backend-2")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            &cells[..7],
            [
                "backend-2",
                "unknown",
                "unknown",
                "down",
                "3.0.0-1",
                "stopped",
                "pending"
            ],
            "{table}"
        );
        assert!(row.contains("1.0s ago"), "{table}");
    }

    #[test]
    fn a_live_frame_fits_the_terminal_and_colours_only_when_asked() {
        let timeline: Vec<String> = (0..100).map(|i| format!("#{i} line")).collect();
        let plain = super::LiveScreen {
            colour: false,
            cleared: true,
        };
        let frame = plain.frame(&view(), &timeline, 10_000, 30, 12);
        assert!(frame.starts_with("\x1b[H"), "{frame:?}");
        assert!(!frame.contains("\x1b[1"), "{frame:?}");
        let lines: Vec<&str> = frame.split("\r\n").collect();
        assert_eq!(lines.len(), 11, "{frame:?}");
        assert!(lines.last().unwrap().contains("#99 line"), "{frame:?}");
        for line in &lines {
            let text = line
                .replace("\x1b[H", "")
                .replace("\x1b[K", "")
                .replace("\x1b[J", "");
            assert!(text.chars().count() <= 30, "{text:?}");
        }
        let colour = super::LiveScreen {
            colour: true,
            cleared: true,
        };
        let frame = colour.frame(&view(), &timeline, 10_000, 80, 12);
        assert!(frame.contains("\x1b[1;31mHALTED\x1b[0m"), "{frame:?}");
    }

    #[test]
    fn recorded_debug_words_are_shown_as_chef_backend_prints_them() {
        assert_eq!(
            super::readable("backend-1: role DeposedLeader; etcd: not running (Down)"),
            "backend-1: role deposed_leader; etcd: not running (down)"
        );
        assert_eq!(
            super::readable(r#"b: role Other("candidate"); pg: not running (Other("finish"))"#),
            "b: role candidate; pg: not running (finish)"
        );
        assert_eq!(super::readable("plain"), "plain");
    }

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
