//! The HTML timeline of one upgrade (`baton report`): a pure function from
//! the upgrade's events (and what the command found when it verified them)
//! to one self-contained HTML page.
//!
//! Two steps: [`Timeline::of`] folds the events through the core's own state
//! ([`State::apply`]): step bars (scheduled time to result, deadline or the
//! end), who led when (what `core::observed` says the cluster last showed of
//! each node's role, never the plan's picture), each node's out-of-service
//! interval, the phases, the gates and who approved them, when this upgrade
//! held failover blocked, the operators' inputs and the end. [`html`] draws
//! it: a Gantt chart in hand-written SVG (one lane per node, plus lanes for
//! the phase, the leader, failover and the operators), then tables.
//!
//! Everything that comes from the log is attacker-influenced text (a step's
//! output tail is whatever the node printed; a forged log can hold any node
//! name): every piece of it goes through [`esc`], in text and in attribute
//! values alike (attributes are always double-quoted). As a second wall, the
//! page has no script at all and a Content-Security-Policy that allows none
//! and lets the page fetch nothing (styles inline, no fonts, no images), so a
//! mistake in the escaping could still neither run code nor call home.
//!
//! Stable `data-` attributes name what a test (or a script) looks for:
//! `data-step-id`/`data-attempt` on each step's bar (one per `StepScheduled`),
//! `data-lane` and `data-node` on the lanes, `data-out-of-service`,
//! `data-leader`, `data-phase`, `data-failover`, `data-mark`, `data-gate`,
//! `data-verify`, `data-checkpoint-seq`, and `data-end-status` with
//! `data-end-reason` for how the upgrade ended.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use workflow::core::observe::ShownRole;
use workflow::core::{Action, Event, MemberRole, Outcome, Resolution, State, Sync, WindDownCause};
use workflow::service::api::StatusView;
use workflow::service::view;

use crate::history::utc;
use crate::render::{duration, json_word, readable};

/// How one check of the log came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It holds.
    Ok,
    /// Nothing wrong, but not everything could be checked (no trust file, no checkpoint).
    Partial,
    /// It does not hold.
    Failed,
}

impl Verdict {
    fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Partial => "partial",
            Verdict::Failed => "failed",
        }
    }
}

/// One line of the verification box.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (`chain`, `decisions`, `checkpoint`): the `data-verify` value.
    pub what: &'static str,
    pub verdict: Verdict,
    /// What was found, for people.
    pub detail: String,
}

/// The latest signed checkpoint of the upgrade's chain that held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    pub seq: u64,
    /// Hex chain hash of record `seq`.
    pub hash: String,
    /// The signer's public key.
    pub key: String,
    pub at_ms: u64,
    pub epoch: u64,
    /// Whether the signature was checked against the trust file's service key.
    pub signature_checked: bool,
}

/// What the command found when it verified the events it drew.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    pub findings: Vec<Finding>,
    pub checkpoint: Option<SignedHead>,
}

impl Verification {
    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.verdict == Verdict::Failed)
    }
}

/// How a step attempt's bar ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarEnd {
    /// The executor's result.
    Result(Outcome),
    /// No result before its deadline (the core treats the outcome as unknown).
    DeadlinePassed,
    /// No result yet at the end of the log.
    Pending,
}

impl BarEnd {
    /// The `data-outcome` value, and the CSS class.
    pub fn word(self) -> &'static str {
        match self {
            BarEnd::Result(Outcome::Succeeded) => "succeeded",
            BarEnd::Result(Outcome::Failed) => "failed",
            BarEnd::Result(Outcome::TimedOut) => "timed_out",
            BarEnd::Result(Outcome::Unknown) => "unknown",
            BarEnd::Result(Outcome::Rejected) => "rejected",
            BarEnd::DeadlinePassed => "deadline_passed",
            BarEnd::Pending => "pending",
        }
    }
}

/// One attempt of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bar {
    pub step: u64,
    pub attempt: u32,
    pub node: String,
    pub action: Action,
    pub argv: Vec<String>,
    pub start_ms: u64,
    /// When its result (or its deadline) came; `None`: still pending at the end.
    pub end_ms: Option<u64>,
    pub end: BarEnd,
    pub exit_code: Option<i32>,
    pub executor: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub reason: Option<String>,
    /// What showed that a step in doubt took effect (`OutcomeInferred`).
    pub inferred: Option<String>,
    /// An operator's verdict on it (`StepResolved`): verdict, who, why.
    pub resolved: Option<(Resolution, String, String)>,
}

/// Something that lasted, from `from_ms` to `to_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span<T> {
    pub from_ms: u64,
    pub to_ms: u64,
    /// Still going when the log ends.
    pub open: bool,
    pub value: T,
}

/// Who the cluster showed leading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leader {
    /// Exactly this node.
    Node(String),
    /// More than one node at once.
    Several(Vec<String>),
    /// Roles were shown, and none leads (an election).
    Nobody,
    /// Not known: nothing shown since an action that may move leadership.
    Unknown,
}

impl Leader {
    /// The `data-leader` value.
    fn word(&self) -> String {
        match self {
            Leader::Node(node) => node.clone(),
            Leader::Several(nodes) => nodes.join(","),
            Leader::Nobody => "none".into(),
            Leader::Unknown => "unknown".into(),
        }
    }
}

/// A moment worth a marker on the operators' lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    pub at_ms: u64,
    /// The `data-mark` value (`gate-requested`, `gate-approved`, `paused`, ...).
    pub kind: &'static str,
    pub text: String,
}

/// A gate of this upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateRow {
    pub gate: String,
    /// When the upgrade stopped at it.
    pub requested_ms: Option<u64>,
    /// Who approved it, and when.
    pub approved: Option<(String, u64)>,
}

/// The upgrade as the report draws it.
#[derive(Debug, Clone)]
pub struct Timeline {
    pub upgrade: String,
    /// Who submitted it.
    pub requested_by: String,
    pub events: usize,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The cluster file's nodes, in its order: one lane each.
    pub nodes: Vec<String>,
    pub bars: Vec<Bar>,
    /// Per node: from the action that took it out (stop, upgrade) until the
    /// cluster showed it synced (or leading) again.
    pub out_of_service: Vec<Span<String>>,
    pub leaders: Vec<Span<Leader>>,
    pub phases: Vec<Span<String>>,
    /// While this upgrade owed an unblock (from scheduling the block until an
    /// unblock succeeded).
    pub failover_blocked: Vec<Span<()>>,
    pub gates: Vec<GateRow>,
    pub marks: Vec<Mark>,
    /// The final state as `status` shows it (status word, reason, node table).
    pub view: StatusView,
}

/// Where each open interval stands during the fold.
#[derive(Default)]
struct Open {
    out: BTreeMap<String, u64>,
    leader: Option<(Leader, u64)>,
    phase: Option<(String, u64)>,
    blocked: Option<u64>,
}

impl Timeline {
    /// Folds the events of `upgrade` (its whole log, in order).
    pub fn of(upgrade: &str, events: &[Event]) -> Timeline {
        let mut state = State::default();
        let mut tl = Timeline {
            upgrade: upgrade.to_string(),
            requested_by: String::new(),
            events: events.len(),
            start_ms: 0,
            end_ms: 0,
            nodes: Vec::new(),
            bars: Vec::new(),
            out_of_service: Vec::new(),
            leaders: Vec::new(),
            phases: Vec::new(),
            failover_blocked: Vec::new(),
            gates: Vec::new(),
            marks: Vec::new(),
            view: view::status_view(upgrade, &state, 0),
        };
        // (step, attempt) -> index in bars; step -> its latest attempt's index.
        let mut attempts: BTreeMap<(u64, u32), usize> = BTreeMap::new();
        let mut latest: BTreeMap<u64, usize> = BTreeMap::new();
        let mut open = Open::default();
        for event in events {
            state.apply(event);
            let now = state.updated_ms().unwrap_or(0);
            if tl.start_ms == 0 {
                tl.start_ms = now;
            }
            tl.record(event, &state, now, &mut attempts, &mut latest, &mut open);
            tl.follow_state(&state, now, &mut open);
        }
        tl.end_ms = state.updated_ms().unwrap_or(tl.start_ms).max(tl.start_ms);
        let end = tl.end_ms;
        for (node, from) in std::mem::take(&mut open.out) {
            tl.out_of_service.push(span(from, end, true, node));
        }
        if let Some((leader, from)) = open.leader.take() {
            tl.leaders.push(span(from, end, true, leader));
        }
        if let Some((phase, from)) = open.phase.take() {
            tl.phases.push(span(from, end, !state.is_terminal(), phase));
        }
        if let Some(from) = open.blocked.take() {
            tl.failover_blocked.push(span(from, end, true, ()));
        }
        tl.view = view::status_view(upgrade, &state, events.len() as u64);
        tl
    }

    /// What one event adds: a bar, a bar's end, a phase, a gate, a mark.
    fn record(
        &mut self,
        event: &Event,
        state: &State,
        now: u64,
        attempts: &mut BTreeMap<(u64, u32), usize>,
        latest: &mut BTreeMap<u64, usize>,
        open: &mut Open,
    ) {
        match event {
            Event::UpgradeSubmitted {
                cluster,
                requested_by,
                ..
            } => {
                self.nodes = cluster.nodes.iter().map(|n| n.name.clone()).collect();
                self.requested_by = requested_by.clone();
                self.gates = state
                    .gates()
                    .iter()
                    .map(|g| GateRow {
                        gate: g.as_str().to_string(),
                        requested_ms: None,
                        approved: None,
                    })
                    .collect();
                // The core starts in preflight without a `PhaseEntered` for it.
                open.phase.get_or_insert((json_word(&state.phase()), now));
                self.mark(now, "submitted", format!("submitted by {requested_by}"));
            }
            Event::StepScheduled { .. } => {
                let Some(scheduled) = event.scheduled_step() else {
                    return;
                };
                let start_ms = state.scheduled_ms(&scheduled);
                let takes_out = matches!(
                    scheduled.action,
                    Action::Stop | Action::Upgrade | Action::UpgradeLeader
                );
                if takes_out && !open.out.contains_key(&scheduled.node) {
                    open.out.insert(scheduled.node.clone(), start_ms);
                }
                if !self.nodes.contains(&scheduled.node) {
                    // A log whose steps name a node its cluster file does not: still drawn.
                    self.nodes.push(scheduled.node.clone());
                }
                attempts.insert((scheduled.step, scheduled.attempt), self.bars.len());
                latest.insert(scheduled.step, self.bars.len());
                self.bars.push(Bar {
                    step: scheduled.step,
                    attempt: scheduled.attempt,
                    node: scheduled.node,
                    action: scheduled.action,
                    argv: scheduled.argv,
                    start_ms,
                    end_ms: None,
                    end: BarEnd::Pending,
                    exit_code: None,
                    executor: None,
                    stdout: String::new(),
                    stderr: String::new(),
                    reason: None,
                    inferred: None,
                    resolved: None,
                });
            }
            Event::StepResultRecorded {
                step,
                attempt,
                outcome,
                exit_code,
                stdout,
                stderr,
                reason,
                executor,
                at_ms,
            } => {
                if let Some(bar) = attempts.get(&(*step, *attempt)).map(|&i| &mut self.bars[i]) {
                    bar.end = BarEnd::Result(*outcome);
                    // A result after the deadline still ends the bar when the step ended.
                    bar.end_ms = Some(*at_ms);
                    bar.exit_code = *exit_code;
                    bar.stdout = stdout.clone();
                    bar.stderr = stderr.clone();
                    bar.reason = reason.clone();
                    bar.executor = Some(executor.clone());
                }
            }
            Event::StepDeadlinePassed {
                step,
                attempt,
                at_ms,
            } => {
                if let Some(bar) = attempts.get(&(*step, *attempt)).map(|&i| &mut self.bars[i]) {
                    if bar.end == BarEnd::Pending {
                        bar.end = BarEnd::DeadlinePassed;
                        bar.end_ms = Some(*at_ms);
                    }
                }
            }
            Event::OutcomeInferred { step, evidence } => {
                if let Some(&i) = latest.get(step) {
                    self.bars[i].inferred = Some(evidence.clone());
                }
                self.mark(
                    now,
                    "outcome-inferred",
                    format!("step {step} took effect: {evidence}"),
                );
            }
            Event::StepResolved {
                step,
                resolution,
                by,
                why,
                ..
            } => {
                if let Some(&i) = latest.get(step) {
                    self.bars[i].resolved = Some((*resolution, by.clone(), why.clone()));
                }
                self.mark(
                    now,
                    "resolved",
                    format!(
                        "step {step} resolved as {} by {by}: {why}",
                        json_word(resolution)
                    ),
                );
            }
            Event::PhaseEntered { phase, .. }
                if open
                    .phase
                    .as_ref()
                    .is_some_and(|(p, _)| *p == json_word(phase)) => {}
            Event::PhaseEntered { phase, at_ms } => {
                if let Some((previous, from)) = open.phase.take() {
                    self.phases.push(span(from, *at_ms, false, previous));
                }
                open.phase = Some((json_word(phase), *at_ms));
            }
            Event::ApprovalRequested { gate } => {
                if let Some(row) = self.gates.iter_mut().find(|r| r.gate == gate.as_str()) {
                    row.requested_ms.get_or_insert(now);
                }
                self.mark(now, "gate-requested", format!("waits at gate {gate}"));
            }
            Event::GateApproved { gate, by, at_ms } => {
                if let Some(row) = self.gates.iter_mut().find(|r| r.gate == gate.as_str()) {
                    row.approved = Some((by.clone(), *at_ms));
                }
                self.mark(
                    *at_ms,
                    "gate-approved",
                    format!("gate {gate} approved by {by}"),
                );
            }
            Event::UpgradePaused { by, reason, at_ms } => {
                self.mark(*at_ms, "paused", format!("paused by {by}: {reason}"))
            }
            Event::UpgradeResumed { by, at_ms } => {
                self.mark(*at_ms, "resumed", format!("resumed by {by}"))
            }
            Event::AbortRequested { by, reason, at_ms } => self.mark(
                *at_ms,
                "abort",
                format!("abort requested by {by}: {reason}"),
            ),
            Event::VerificationRequired { step, reason } => self.mark(
                now,
                "needs-verification",
                format!("step {step} needs verification: {reason}"),
            ),
            Event::WindDownStarted {
                cause,
                reason,
                at_ms,
            } => {
                let cause = match cause {
                    WindDownCause::Abort => "abort",
                    WindDownCause::Failure => "failure",
                    WindDownCause::Emergency => "emergency exit",
                };
                self.mark(
                    *at_ms,
                    "wind-down",
                    format!("winding down ({cause}): {reason}"),
                )
            }
            Event::UpgradeCompleted { at_ms } => self.mark(*at_ms, "end", "completed".into()),
            Event::UpgradeHalted { reason, at_ms, .. } => {
                self.mark(*at_ms, "end", format!("halted: {reason}"))
            }
            Event::UpgradeAborted { reason, at_ms, .. } => {
                self.mark(*at_ms, "end", format!("aborted: {reason}"))
            }
            _ => {}
        }
    }

    /// What the state shows after each event: failover, the leader, nodes back in service.
    fn follow_state(&mut self, state: &State, now: u64, open: &mut Open) {
        match (state.failover_blocked(), open.blocked) {
            (true, None) => {
                open.blocked = Some(now);
                self.mark(
                    now,
                    "failover-blocked",
                    "failover blocked by this upgrade".into(),
                );
            }
            (false, Some(from)) => {
                self.failover_blocked.push(span(from, now, false, ()));
                open.blocked = None;
                self.mark(now, "failover-unblocked", "failover restored".into());
            }
            _ => {}
        }
        let leader = leader_shown(state, &self.nodes);
        match &open.leader {
            Some((current, _)) if *current == leader => {}
            _ => {
                if let Some((previous, from)) = open.leader.take() {
                    self.leaders.push(span(from, now, false, previous));
                }
                open.leader = Some((leader, now));
            }
        }
        let back: Vec<(String, u64)> = open
            .out
            .iter()
            .filter_map(|(node, &from)| {
                let sync = state.node_facts(node)?.sync.as_ref()?;
                let back = matches!(sync.value, Sync::Synced | Sync::Leader) && sync.at_ms >= from;
                back.then(|| (node.clone(), sync.at_ms))
            })
            .collect();
        for (node, at_ms) in back {
            if let Some(from) = open.out.remove(&node) {
                self.out_of_service.push(span(from, at_ms, false, node));
            }
        }
    }

    fn mark(&mut self, at_ms: u64, kind: &'static str, text: String) {
        self.marks.push(Mark { at_ms, kind, text });
    }

    /// The end as one word and its reason (`completed` gets one too).
    pub fn end(&self) -> (String, String) {
        let status = self.view.status.clone();
        let reason = match (status.as_str(), &self.view.reason) {
            ("completed", _) => format!(
                "completed: every node runs {}, failover restored",
                self.view.target_version.as_deref().unwrap_or("the target")
            ),
            ("planned", _) => {
                "planned: preflight computed the plan (a plan-only run changes nothing)".into()
            }
            (_, Some(reason)) => format!("{status}: {reason}"),
            (_, None) => format!("{status} (the log ends here)"),
        };
        (status, reason)
    }
}

fn span<T>(from_ms: u64, to_ms: u64, open: bool, value: T) -> Span<T> {
    Span {
        from_ms,
        to_ms: to_ms.max(from_ms),
        open,
        value,
    }
}

/// Who the cluster last showed leading, from the node facts of `core::observed`.
fn leader_shown(state: &State, nodes: &[String]) -> Leader {
    let roles: Vec<(&String, &ShownRole)> = nodes
        .iter()
        .filter_map(|n| Some((n, &state.node_facts(n)?.role.as_ref()?.value)))
        .collect();
    let leaders: Vec<String> = roles
        .iter()
        .filter(|(_, role)| role.role == MemberRole::Leader)
        .map(|(n, _)| (*n).clone())
        .collect();
    match leaders.len() {
        1 => Leader::Node(leaders[0].clone()),
        0 if roles.is_empty() => Leader::Unknown,
        0 => Leader::Nobody,
        _ => Leader::Several(leaders),
    }
}

/// Escapes text for HTML text and double-quoted attribute values; control
/// characters other than newline and tab are shown escaped (`\u{1b}`), not
/// passed on.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push_str(&c.escape_default().to_string()),
            c => out.push(c),
        }
    }
    out
}

/// At most the last `lines` lines and `chars` characters of an output.
fn tail(text: &str, lines: usize, chars: usize) -> String {
    let text = text.trim_end();
    let all: Vec<&str> = text.lines().collect();
    let kept = all[all.len().saturating_sub(lines)..].join("\n");
    let count = kept.chars().count();
    if count <= chars {
        return kept;
    }
    let cut: String = kept.chars().skip(count - chars).collect();
    format!("…{cut}")
}

/// An argv as one line: arguments with spaces or quotes are JSON-quoted.
fn argv_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                serde_json::to_string(a).unwrap_or_default()
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ----- drawing -----

const LABEL_W: f64 = 150.0;
const CHART_W: f64 = 1040.0;
const RIGHT_PAD: f64 = 20.0;
const AXIS_H: f64 = 26.0;
const INFO_LANE_H: f64 = 24.0;
const NODE_LANE_H: f64 = 34.0;

/// Lane colours for the leader lane, by node position.
const NODE_COLOURS: [&str; 8] = [
    "#1565c0", "#6a1b9a", "#00838f", "#ad6800", "#4e342e", "#283593", "#558b2f", "#c2185b",
];

struct Scale {
    start_ms: u64,
    span_ms: u64,
}

impl Scale {
    fn x(&self, at_ms: u64) -> f64 {
        let offset = at_ms.saturating_sub(self.start_ms).min(self.span_ms);
        LABEL_W + offset as f64 * CHART_W / self.span_ms as f64
    }

    /// x and width of an interval, at least `min` pixels wide.
    fn bar(&self, from_ms: u64, to_ms: u64, min: f64) -> (f64, f64) {
        let x = self.x(from_ms);
        let w = (self.x(to_ms) - x).max(min);
        (x.min(LABEL_W + CHART_W - min), w)
    }

    fn rel(&self, at_ms: u64) -> String {
        format!("+{}", duration(at_ms.saturating_sub(self.start_ms)))
    }
}

/// The page.
pub fn html(tl: &Timeline, verification: &Verification) -> String {
    let scale = Scale {
        start_ms: tl.start_ms,
        span_ms: tl.end_ms.saturating_sub(tl.start_ms).max(1),
    };
    let (status, reason) = tl.end();
    let mut page = String::new();
    let mut title = format!("Baton upgrade {} of {}", tl.upgrade, tl.view.cluster);
    if verification.failed() {
        title.insert_str(0, "DOES NOT VERIFY: ");
    }
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; script-src 'none'; base-uri 'none'; form-action 'none'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style></head>\n<body data-upgrade=\"{}\">\n",
        esc(&title),
        esc(&tl.upgrade)
    );
    if verification.failed() {
        // Before the timeline: what follows may be forged, whatever its status says.
        page.push_str(
            "<section id=\"unverified\" class=\"unverified\" data-verified=\"no\"><strong>THIS LOG DOES NOT VERIFY.</strong> \
             The timeline below is drawn from events that failed the checks listed under Verification: \
             do not take its status or its steps as what happened.</section>\n",
        );
    }
    header(&mut page, tl, &status, &reason);
    verification_box(&mut page, verification);
    legend(&mut page);
    chart(&mut page, tl, &scale);
    gates_table(&mut page, tl);
    marks_list(&mut page, tl, &scale);
    actions_table(&mut page, tl, &scale);
    nodes_table(&mut page, tl);
    let _ = write!(
        page,
        "<footer>Written by baton {} from {} events of the log. Hover a bar for its command and output.</footer>\n</body></html>\n",
        esc(env!("CARGO_PKG_VERSION")),
        tl.events
    );
    page
}

fn header(page: &mut String, tl: &Timeline, status: &str, reason: &str) {
    let _ = write!(
        page,
        "<header><h1>Upgrade <code>{}</code> of cluster <code>{}</code></h1>\n\
         <p class=\"meta\">target {} · submitted by {} · from {} to {} UTC ({}) · {} steps on {} nodes · {} events</p>\n\
         <section id=\"end\" class=\"end end-{}\" data-end-status=\"{}\"><strong>{}</strong> \
         <span data-end-reason=\"\">{}</span></section></header>\n",
        esc(&tl.upgrade),
        esc(&tl.view.cluster),
        esc(tl.view.target_version.as_deref().unwrap_or("?")),
        esc(&tl.requested_by),
        esc(&utc(Some(tl.start_ms))),
        esc(&utc(Some(tl.end_ms))),
        esc(&duration(tl.end_ms.saturating_sub(tl.start_ms))),
        tl.bars.len(),
        tl.nodes.len(),
        tl.events,
        esc(status),
        esc(status),
        esc(&status.to_uppercase()),
        esc(&readable(reason)),
    );
}

fn verification_box(page: &mut String, v: &Verification) {
    page.push_str("<section id=\"verification\"><h2>Verification</h2><ul>\n");
    for f in &v.findings {
        let _ = writeln!(
            page,
            "<li class=\"v-{0}\" data-verify=\"{1}\" data-verdict=\"{0}\"><b>{1}</b>: {2}</li>",
            f.verdict.word(),
            esc(f.what),
            esc(&f.detail)
        );
    }
    page.push_str("</ul>\n");
    if let Some(cp) = &v.checkpoint {
        let _ = writeln!(
            page,
            "<p class=\"checkpoint\" data-checkpoint-seq=\"{}\">Signed checkpoint: event {} has chain hash <code>{}</code>, \
             signed by <code>{}</code> (epoch {}, {} UTC); signature {}.</p>",
            cp.seq,
            cp.seq,
            esc(&cp.hash),
            esc(&cp.key),
            cp.epoch,
            esc(&utc(Some(cp.at_ms))),
            if cp.signature_checked {
                "checked against the trust file's service key"
            } else {
                "NOT checked (no trust file: --trust or BATON_TRUST)"
            }
        );
    }
    page.push_str("</section>\n");
}

fn legend(page: &mut String) {
    page.push_str("<p class=\"legend\">");
    for (class, word) in [
        ("succeeded", "succeeded"),
        ("failed", "failed"),
        ("timed_out", "timed out"),
        ("unknown", "unknown"),
        ("rejected", "rejected"),
        ("deadline_passed", "deadline passed"),
        ("pending", "no result"),
    ] {
        let _ = write!(page, "<span class=\"key o-{class}\"></span>{word} ");
    }
    page.push_str(
        "· thin faint bars are probes · <span class=\"key oos\"></span>out of service \
         · <span class=\"key blocked\"></span>failover blocked</p>\n",
    );
}

fn chart(page: &mut String, tl: &Timeline, scale: &Scale) {
    let info_lanes = 4.0;
    let height = AXIS_H + info_lanes * INFO_LANE_H + tl.nodes.len() as f64 * NODE_LANE_H + 8.0;
    let width = LABEL_W + CHART_W + RIGHT_PAD;
    let _ = writeln!(
        page,
        "<svg id=\"gantt\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"timeline\">\n\
         <defs><pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
         <rect width=\"6\" height=\"6\" fill=\"#eeeeee\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#bdbdbd\" stroke-width=\"2\"/></pattern></defs>"
    );
    axis(page, scale, height);
    let mut y = AXIS_H;
    phase_lane(page, tl, scale, y);
    y += INFO_LANE_H;
    leader_lane(page, tl, scale, y);
    y += INFO_LANE_H;
    failover_lane(page, tl, scale, y);
    y += INFO_LANE_H;
    operator_lane(page, tl, scale, y);
    y += INFO_LANE_H;
    for node in &tl.nodes {
        node_lane(page, tl, scale, node, y);
        y += NODE_LANE_H;
    }
    page.push_str("</svg>\n");
}

fn axis(page: &mut String, scale: &Scale, height: f64) {
    const STEPS_S: [u64; 16] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400,
    ];
    let step_ms = STEPS_S
        .iter()
        .map(|s| s * 1000)
        .find(|s| scale.span_ms / s <= 12)
        .unwrap_or(86_400_000 * ((scale.span_ms / 86_400_000 / 12) + 1));
    page.push_str("<g class=\"axis\" data-lane=\"axis\">");
    let mut t = 0;
    while t <= scale.span_ms {
        let x = scale.x(scale.start_ms + t);
        let _ = write!(
            page,
            "<line x1=\"{x:.1}\" y1=\"{AXIS_H}\" x2=\"{x:.1}\" y2=\"{height:.1}\" class=\"tick\"/>\
             <text x=\"{x:.1}\" y=\"16\" class=\"ticklabel\">+{}</text>",
            esc(&duration(t))
        );
        t += step_ms;
    }
    page.push_str("</g>\n");
}

fn lane_label(page: &mut String, y: f64, h: f64, text: &str, class: &str) {
    let _ = write!(
        page,
        "<rect x=\"0\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{h:.1}\" class=\"lanebg {class}\"/>\
         <text x=\"8\" y=\"{:.1}\" class=\"lanelabel\">{}</text>",
        LABEL_W + CHART_W + RIGHT_PAD,
        y + h / 2.0 + 4.0,
        esc(text)
    );
}

fn phase_lane(page: &mut String, tl: &Timeline, scale: &Scale, y: f64) {
    page.push_str("<g data-lane=\"phase\">");
    lane_label(page, y, INFO_LANE_H, "phase", "info");
    for (i, p) in tl.phases.iter().enumerate() {
        let (x, w) = scale.bar(p.from_ms, p.to_ms, 1.0);
        let _ = write!(
            page,
            "<g data-phase=\"{name}\"><rect x=\"{x:.1}\" y=\"{top:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" class=\"phase p{shade}\">\
             <title>phase {name}: {from} to {to} ({took})</title></rect>",
            name = esc(&p.value),
            shade = i % 2,
            from = esc(&scale.rel(p.from_ms)),
            to = esc(&scale.rel(p.to_ms)),
            took = esc(&duration(p.to_ms - p.from_ms)),
            top = y + 3.0,
            h = INFO_LANE_H - 6.0,
        );
        if w > 8.0 * p.value.len() as f64 {
            let _ = write!(
                page,
                "<text x=\"{:.1}\" y=\"{:.1}\" class=\"inlabel\">{}</text>",
                x + 3.0,
                y + 16.0,
                esc(&p.value)
            );
        }
        page.push_str("</g>");
    }
    page.push_str("</g>\n");
}

fn leader_lane(page: &mut String, tl: &Timeline, scale: &Scale, y: f64) {
    page.push_str("<g data-lane=\"leader\">");
    lane_label(page, y, INFO_LANE_H, "leader (shown)", "info");
    for s in &tl.leaders {
        let (x, w) = scale.bar(s.from_ms, s.to_ms, 1.0);
        let word = s.value.word();
        let (fill, what) = match &s.value {
            Leader::Node(node) => {
                let i = tl.nodes.iter().position(|n| n == node).unwrap_or(0);
                (
                    NODE_COLOURS[i % NODE_COLOURS.len()].to_string(),
                    format!("{node} leads"),
                )
            }
            Leader::Several(nodes) => (
                "#c62828".to_string(),
                format!("several leaders shown: {}", nodes.join(", ")),
            ),
            Leader::Nobody => ("#ef9a9a".to_string(), "no leader shown".to_string()),
            Leader::Unknown => (
                "url(#hatch)".to_string(),
                "not known (nothing shown since an action that may move leadership)".to_string(),
            ),
        };
        let _ = write!(
            page,
            "<g data-leader=\"{}\"><rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"{}\" class=\"leader\">\
             <title>{}: {} to {}{}</title></rect>",
            esc(&word),
            y + 3.0,
            INFO_LANE_H - 6.0,
            esc(&fill),
            esc(&what),
            esc(&scale.rel(s.from_ms)),
            esc(&scale.rel(s.to_ms)),
            if s.open { " (the log ends)" } else { "" },
        );
        if let Leader::Node(node) = &s.value {
            if w > 8.0 * node.len() as f64 {
                let _ = write!(
                    page,
                    "<text x=\"{:.1}\" y=\"{:.1}\" class=\"inlabel light\">{}</text>",
                    x + 3.0,
                    y + 16.0,
                    esc(node)
                );
            }
        }
        page.push_str("</g>");
    }
    page.push_str("</g>\n");
}

fn failover_lane(page: &mut String, tl: &Timeline, scale: &Scale, y: f64) {
    page.push_str("<g data-lane=\"failover\">");
    lane_label(page, y, INFO_LANE_H, "failover", "info");
    for s in &tl.failover_blocked {
        let (x, w) = scale.bar(s.from_ms, s.to_ms, 2.0);
        let _ = write!(
            page,
            "<rect data-failover=\"blocked\" data-open=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" class=\"blocked\">\
             <title>failover blocked by this upgrade: {} to {}{}</title></rect>",
            s.open,
            y + 3.0,
            INFO_LANE_H - 6.0,
            esc(&scale.rel(s.from_ms)),
            esc(&scale.rel(s.to_ms)),
            if s.open {
                " (STILL BLOCKED when the log ends)"
            } else {
                ", then restored"
            },
        );
    }
    page.push_str("</g>\n");
}

fn operator_lane(page: &mut String, tl: &Timeline, scale: &Scale, y: f64) {
    page.push_str("<g data-lane=\"operator\">");
    lane_label(page, y, INFO_LANE_H, "operators · gates", "info");
    for m in &tl.marks {
        if matches!(m.kind, "failover-blocked" | "failover-unblocked") {
            continue; // their lane shows them
        }
        let x = scale.x(m.at_ms);
        let cy = y + INFO_LANE_H / 2.0;
        let _ = write!(
            page,
            "<path data-mark=\"{}\" class=\"mark m-{}\" d=\"M{x:.1} {:.1} L{:.1} {cy:.1} L{x:.1} {:.1} L{:.1} {cy:.1} Z\">\
             <title>{}: {}</title></path>",
            m.kind,
            m.kind,
            cy - 7.0,
            x + 6.0,
            cy + 7.0,
            x - 6.0,
            esc(&scale.rel(m.at_ms)),
            esc(&readable(&m.text)),
        );
    }
    page.push_str("</g>\n");
}

fn node_lane(page: &mut String, tl: &Timeline, scale: &Scale, node: &str, y: f64) {
    let _ = write!(
        page,
        "<g class=\"lane\" data-lane=\"node\" data-node=\"{}\">",
        esc(node)
    );
    lane_label(page, y, NODE_LANE_H, node, "node");
    for s in tl.out_of_service.iter().filter(|s| s.value == node) {
        let (x, w) = scale.bar(s.from_ms, s.to_ms, 2.0);
        let _ = write!(
            page,
            "<rect data-out-of-service=\"{}\" data-open=\"{}\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{w:.1}\" height=\"{:.1}\" class=\"oos\">\
             <title>{} out of service: {} to {} ({}){}</title></rect>",
            esc(node),
            s.open,
            y + 1.0,
            NODE_LANE_H - 2.0,
            esc(node),
            esc(&scale.rel(s.from_ms)),
            esc(&scale.rel(s.to_ms)),
            esc(&duration(s.to_ms - s.from_ms)),
            if s.open {
                "; not shown back in service when the log ends"
            } else {
                ", until the cluster showed it synced"
            },
        );
    }
    for bar in tl.bars.iter().filter(|b| b.node == node) {
        let probe = bar.action.is_probe();
        let end = bar.end_ms.unwrap_or(tl.end_ms);
        let (x, w) = scale.bar(bar.start_ms, end, 2.0);
        let (by, h) = if probe {
            (y + 12.0, 10.0)
        } else {
            (y + 5.0, NODE_LANE_H - 10.0)
        };
        let _ = write!(
            page,
            "<g class=\"bar{}\" data-step-id=\"{}\" data-attempt=\"{}\" data-node=\"{}\" data-action=\"{}\" data-outcome=\"{}\" data-probe=\"{probe}\">\
             <rect x=\"{x:.1}\" y=\"{by:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" class=\"o-{}\"/><title>{}</title></g>",
            if probe { " probe" } else { "" },
            bar.step,
            bar.attempt,
            esc(&bar.node),
            esc(bar.action.as_str()),
            bar.end.word(),
            bar.end.word(),
            esc(&tooltip(bar, scale, end)),
        );
    }
    page.push_str("</g>\n");
}

/// The tooltip of a bar: node, action, argv, exit code and the output tail.
fn tooltip(bar: &Bar, scale: &Scale, end: u64) -> String {
    let mut t = format!(
        "step {} (attempt {}): {} on {}\nargv: {}\n{}, exit code {}, {} ({} to {})",
        bar.step,
        bar.attempt,
        bar.action.as_str(),
        bar.node,
        argv_line(&bar.argv),
        bar.end.word().replace('_', " "),
        bar.exit_code
            .map_or_else(|| "none".to_string(), |c| c.to_string()),
        duration(end.saturating_sub(bar.start_ms)),
        scale.rel(bar.start_ms),
        scale.rel(end),
    );
    if let Some(executor) = &bar.executor {
        let _ = write!(t, "\nexecutor: {executor}");
    }
    if let Some(reason) = &bar.reason {
        let _ = write!(t, "\nreason: {reason}");
    }
    if let Some(evidence) = &bar.inferred {
        let _ = write!(t, "\ntook effect, as shown by: {evidence}");
    }
    if let Some((resolution, by, why)) = &bar.resolved {
        let _ = write!(t, "\nresolved as {} by {by}: {why}", json_word(resolution));
    }
    for (name, text) in [("stdout", &bar.stdout), ("stderr", &bar.stderr)] {
        let text = tail(text, 12, 1500);
        if !text.is_empty() {
            let _ = write!(t, "\n{name} (tail):\n{text}");
        }
    }
    t
}

fn gates_table(page: &mut String, tl: &Timeline) {
    page.push_str("<section id=\"gates\"><h2>Gates</h2>");
    if tl.gates.is_empty() {
        page.push_str("<p>This upgrade had no approval gate.</p></section>\n");
        return;
    }
    page.push_str(
        "<table><tr><th>gate</th><th>waited from</th><th>approved by</th><th>at</th></tr>\n",
    );
    for g in &tl.gates {
        let (by, at) = match &g.approved {
            Some((by, at)) => (by.clone(), utc(Some(*at))),
            None => ("not approved".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            page,
            "<tr data-gate=\"{}\" data-approved-by=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.gate),
            esc(g.approved.as_ref().map_or("", |(by, _)| by.as_str())),
            esc(&g.gate),
            esc(&g.requested_ms.map_or_else(
                || "never waited (approved in advance, or not reached)".to_string(),
                |ms| utc(Some(ms))
            )),
            esc(&by),
            esc(&at),
        );
    }
    page.push_str("</table></section>\n");
}

fn marks_list(page: &mut String, tl: &Timeline, scale: &Scale) {
    page.push_str("<section id=\"moments\"><h2>Operators, gates, failover and the end</h2><ol>\n");
    for m in &tl.marks {
        let _ = writeln!(
            page,
            "<li data-moment=\"{}\"><span class=\"t\">{}</span> {}</li>",
            m.kind,
            esc(&scale.rel(m.at_ms)),
            esc(&readable(&m.text))
        );
    }
    page.push_str("</ol></section>\n");
}

fn actions_table(page: &mut String, tl: &Timeline, scale: &Scale) {
    page.push_str(
        "<section id=\"actions\"><h2>Actions</h2><p>Every step that changes the cluster (probes are in the chart).</p>\
         <table><tr><th>step</th><th>at</th><th>node</th><th>action</th><th>argv</th><th>outcome</th><th>exit</th><th>took</th><th>last output</th></tr>\n",
    );
    for bar in tl.bars.iter().filter(|b| !b.action.is_probe()) {
        let end = bar.end_ms.unwrap_or(tl.end_ms);
        let last = tail(&format!("{}\n{}", bar.stdout, bar.stderr), 1, 200);
        let _ = writeln!(
            page,
            "<tr class=\"o-row-{}\"><td>{}.{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            bar.end.word(),
            bar.step,
            bar.attempt,
            esc(&scale.rel(bar.start_ms)),
            esc(&bar.node),
            esc(bar.action.as_str()),
            esc(&argv_line(&bar.argv)),
            bar.end.word().replace('_', " "),
            bar.exit_code.map_or_else(|| "-".to_string(), |c| c.to_string()),
            esc(&duration(end.saturating_sub(bar.start_ms))),
            esc(&last),
        );
    }
    page.push_str("</table></section>\n");
}

fn nodes_table(page: &mut String, tl: &Timeline) {
    page.push_str(
        "<section id=\"nodes\"><h2>Nodes when the log ends</h2><p>What the cluster last showed of each node.</p>\
         <table><tr><th>node</th><th>role</th><th>sync</th><th>services</th><th>installed</th><th>running</th><th>progress</th></tr>\n",
    );
    let unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".to_string());
    for n in &tl.view.nodes {
        let _ = writeln!(
            page,
            "<tr data-node-row=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&n.name),
            esc(&n.name),
            esc(&unknown(&n.role)),
            esc(&unknown(&n.sync)),
            esc(&unknown(&n.services)),
            esc(&unknown(&n.installed_version)),
            esc(&unknown(&n.running_version)),
            esc(&n.progress),
        );
    }
    page.push_str("</table></section>\n");
}

const CSS: &str = "
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:16px 24px;color:#212121;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:18px 0 6px}
code{font:12px ui-monospace,monospace}
.meta{color:#555;margin:0 0 8px}
.end{padding:8px 12px;border-radius:4px;margin:6px 0}
.end-completed{background:#e8f5e9;border-left:6px solid #2e7d32}
.end-halted,.end-aborted{background:#ffebee;border-left:6px solid #c62828}
.end-running,.end-paused,.end-waiting_approval,.end-needs_verification,.end-winding_down,.end-planning{background:#fff8e1;border-left:6px solid #f9a825}
#verification ul{margin:4px 0;padding-left:20px}
.v-ok b{color:#2e7d32}.v-partial b{color:#ad6800}.v-failed b{color:#c62828}
.v-failed{font-weight:bold}
.unverified{padding:10px 12px;margin:6px 0;background:#c62828;color:#fff;font-size:1.2em;border-radius:4px}
.checkpoint{margin:4px 0;color:#333}
.legend{color:#444;font-size:12px}
.key{display:inline-block;width:14px;height:10px;margin:0 4px 0 8px;vertical-align:middle}
svg{max-width:100%;height:auto;display:block;margin:6px 0 10px}
svg text{font:11px system-ui,sans-serif;fill:#333}
.tick{stroke:#e0e0e0;stroke-width:1}
.ticklabel{text-anchor:middle}
.lanebg.info{fill:#fafafa}.lanebg.node{fill:#fff;stroke:#eeeeee}
.lanelabel{font-weight:600}
.inlabel{font-size:10px;pointer-events:none}.inlabel.light{fill:#fff}
.phase.p0{fill:#e3f2fd}.phase.p1{fill:#bbdefb}
.blocked{fill:#ffab91}
.oos{fill:#ffcdd2;opacity:.7}
.bar rect{stroke:#fff;stroke-width:.5}
.bar.probe rect{opacity:.35}
.o-succeeded{fill:#2e7d32;background:#2e7d32}
.o-failed{fill:#c62828;background:#c62828}
.o-timed_out{fill:#ef6c00;background:#ef6c00}
.o-unknown{fill:#6a1b9a;background:#6a1b9a}
.o-rejected{fill:#ad1457;background:#ad1457}
.o-deadline_passed{fill:#8d6e63;background:#8d6e63}
.o-pending{fill:#9e9e9e;background:#9e9e9e}
.key.oos{background:#ffcdd2}.key.blocked{background:#ffab91}
.mark{fill:#455a64;stroke:#fff}
.m-gate-requested{fill:#f9a825}.m-gate-approved{fill:#2e7d32}.m-paused,.m-abort,.m-wind-down,.m-needs-verification{fill:#c62828}
.m-end{fill:#000}
table{border-collapse:collapse;font-size:12px;margin:4px 0}
th,td{border:1px solid #e0e0e0;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f5f5f5}
.o-row-failed td,.o-row-timed_out td,.o-row-unknown td,.o-row-rejected td{background:#ffebee}
#moments ol{padding-left:20px;margin:4px 0}.t{color:#666;font:12px ui-monospace,monospace}
footer{color:#777;font-size:12px;margin-top:18px}
";

#[cfg(test)]
mod tests {
    use super::*;
    use workflow::core::{ClusterFile, Gate, Observation, Phase};

    const CLUSTER: &str = r#"
[cluster]
name = "prod"
profile = "chef-backend"

[[nodes]]
name = "n1"
address = "10.0.0.1"
executor = "n1"

[[nodes]]
name = "n2"
address = "10.0.0.2"
executor = "n2"

[[nodes]]
name = "n3"
address = "10.0.0.3"
executor = "n3"

[upgrade]
package = "/tmp/chef-backend_3.1.0-1_amd64.deb"
gates = ["before-switchover"]
"#;

    fn cluster() -> ClusterFile {
        ClusterFile::parse("cluster.toml", CLUSTER).expect("the test's cluster file parses")
    }

    fn submitted() -> Event {
        Event::UpgradeSubmitted {
            upgrade: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            cluster: cluster(),
            package: "/tmp/chef-backend_3.1.0-1_amd64.deb".into(),
            target_version: "3.1.0-1".into(),
            requested_target_version: None,
            requested_package: String::new(),
            gates: vec![],
            plan_only: false,
            expected_plan_hash: None,
            executors_online: vec!["n1".into(), "n2".into(), "n3".into()],
            requested_by: "alice".into(),
            at_ms: 1_000,
        }
    }

    fn scheduled(step: u64, attempt: u32, node: &str, action: Action, at_ms: u64) -> Event {
        Event::StepScheduled {
            step,
            attempt,
            node: node.into(),
            group: node.into(),
            action,
            argv: vec!["chef-backend-ctl".into(), action.as_str().into()],
            env: Default::default(),
            timeout_ms: 10_000,
            // scheduled_ms = deadline - timeout - grace
            deadline_ms: at_ms + 10_000 + cluster().upgrade.result_grace_ms,
        }
    }

    fn result(step: u64, attempt: u32, outcome: Outcome, stdout: &str, at_ms: u64) -> Event {
        Event::StepResultRecorded {
            step,
            attempt,
            outcome,
            exit_code: Some(if outcome == Outcome::Succeeded { 0 } else { 1 }),
            stdout: stdout.into(),
            stderr: String::new(),
            reason: None,
            executor: "n1".into(),
            at_ms,
        }
    }

    fn cluster_status(leader: &str, step: u64) -> Event {
        let mut table = String::from("Name  IP  GUID  Role  PG  ES\n");
        for n in ["n1", "n2", "n3"] {
            let role = if n == leader { "leader" } else { "follower" };
            table.push_str(&format!(
                "{n}  10.0.0.1  79d84527cf937f3daa94c1435d0a4249  {role}  {role}  not_master\n"
            ));
        }
        let status = workflow::core::builtin::chef_backend::parse_cluster_status(&table)
            .expect("the table parses");
        Event::ObservationRecorded {
            step,
            node: "n1".into(),
            observation: Observation::ClusterStatus { status },
        }
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn one_bar_per_scheduled_attempt_coloured_by_outcome_probes_faint() {
        let events = vec![
            submitted(),
            Event::PhaseEntered {
                phase: Phase::Preflight,
                at_ms: 1_000,
            },
            scheduled(1, 1, "n1", Action::ProbeClusterStatus, 1_000),
            result(1, 1, Outcome::Succeeded, "table", 1_200),
            scheduled(2, 1, "n2", Action::Install, 1_300),
            result(2, 1, Outcome::Failed, "dpkg: error", 2_000),
            scheduled(2, 2, "n2", Action::Install, 2_100),
            result(2, 2, Outcome::Succeeded, "ok", 2_900),
            scheduled(3, 1, "n3", Action::Stop, 3_000),
        ];
        let tl = Timeline::of("01ARZ3NDEKTSV4RRFFQ69G5FAV", &events);
        assert_eq!(tl.bars.len(), 4);
        assert_eq!(tl.nodes, ["n1", "n2", "n3"]);
        let page = html(&tl, &Verification::default());
        assert_eq!(count(&page, "data-step-id=\""), 4);
        assert_eq!(count(&page, "data-lane=\"node\""), 3);
        assert!(page.contains(
            "data-step-id=\"2\" data-attempt=\"1\" data-node=\"n2\" data-action=\"install\" data-outcome=\"failed\" data-probe=\"false\""
        ));
        assert!(page.contains("data-step-id=\"2\" data-attempt=\"2\" data-node=\"n2\" data-action=\"install\" data-outcome=\"succeeded\""));
        assert!(page.contains(
            "data-step-id=\"1\" data-attempt=\"1\" data-node=\"n1\" data-action=\"probe_cluster_status\" data-outcome=\"succeeded\" data-probe=\"true\""
        ));
        assert!(page.contains("class=\"bar probe\" data-step-id=\"1\""));
        assert!(page.contains("submitted by alice"));
        // The stop has no result when the log ends: pending, drawn to the end.
        assert_eq!(tl.bars[3].end, BarEnd::Pending);
        assert!(page.contains("data-step-id=\"3\" data-attempt=\"1\" data-node=\"n3\" data-action=\"stop\" data-outcome=\"pending\""));
        // The tooltip names node, action, argv, exit code and output.
        let failed = tooltip(
            &tl.bars[1],
            &Scale {
                start_ms: 1_000,
                span_ms: 2_000,
            },
            2_000,
        );
        assert!(failed.contains("install on n2"), "{failed}");
        assert!(
            failed.contains("argv: chef-backend-ctl install"),
            "{failed}"
        );
        assert!(failed.contains("exit code 1"), "{failed}");
        assert!(failed.contains("stdout (tail):\ndpkg: error"), "{failed}");
        // The node taken out by the stop is still out at the end.
        assert_eq!(tl.out_of_service.len(), 1);
        assert_eq!(tl.out_of_service[0].value, "n3");
        assert!(tl.out_of_service[0].open);
        assert_eq!(tl.out_of_service[0].from_ms, 3_000);
    }

    #[test]
    fn log_text_is_escaped_everywhere_it_is_shown() {
        let evil_out = "<script>document.body.dataset.pwned=1</script>\n\"><img src=x onerror=\"document.body.dataset.pwned=2\">";
        let mut events = vec![
            submitted(),
            scheduled(1, 1, "n1", Action::Install, 1_000),
            result(1, 1, Outcome::Failed, evil_out, 1_500),
            Event::UpgradePaused {
                by: "<b>mallory</b>".into(),
                reason: "'\"><script>x()</script>".into(),
                at_ms: 1_600,
            },
        ];
        if let Event::StepScheduled { argv, .. } = &mut events[1] {
            argv.push("\"><svg onload=alert(1)>".into());
        }
        let tl = Timeline::of("01ARZ3NDEKTSV4RRFFQ69G5FAV", &events);
        let page = html(
            &tl,
            &Verification {
                findings: vec![Finding {
                    what: "chain",
                    verdict: Verdict::Failed,
                    detail: "<img src=x onerror=alert(3)>".into(),
                }],
                checkpoint: None,
            },
        );
        for raw in ["<script", "<img", "<svg onload", "onerror=\"", "<b>mallory"] {
            assert!(!page.contains(raw), "{raw} reached the page unescaped");
        }
        assert!(page.contains("&lt;script&gt;document.body.dataset.pwned=1&lt;/script&gt;"));
        assert!(page.contains(
            "&quot;&gt;&lt;img src=x onerror=&quot;document.body.dataset.pwned=2&quot;&gt;"
        ));
        // The only <svg is the chart's own.
        assert_eq!(count(&page, "<svg"), 1);
        assert!(page.contains("script-src 'none'"));
        assert!(page.contains("default-src 'none'"));
    }

    #[test]
    fn escaping_covers_attributes_and_control_characters() {
        assert_eq!(esc(r#"a"b'c<d>e&f"#), "a&quot;b&#39;c&lt;d&gt;e&amp;f");
        assert_eq!(esc("x\u{1b}[31my\n"), "x\\u{1b}[31my\n");
        // A node name is an attribute value too.
        let mut events = vec![submitted()];
        events.push(scheduled(1, 1, "n\"9 onmouseover=\"x", Action::Stop, 1_000));
        let page = html(&Timeline::of("u", &events), &Verification::default());
        assert!(!page.contains("onmouseover=\"x"));
        assert!(page.contains("data-node=\"n&quot;9 onmouseover=&quot;x\""));
    }

    #[test]
    fn the_leader_lane_follows_what_the_cluster_showed() {
        let events = vec![
            submitted(),
            scheduled(1, 1, "n1", Action::ProbeClusterStatus, 1_000),
            result(1, 1, Outcome::Succeeded, "", 1_100),
            cluster_status("n1", 1),
            // A demote may move leadership: not known until shown again.
            scheduled(2, 1, "n1", Action::Demote, 2_000),
            result(2, 1, Outcome::Succeeded, "", 3_000),
            scheduled(3, 1, "n2", Action::ProbeClusterStatus, 3_100),
            result(3, 1, Outcome::Succeeded, "", 3_200),
            cluster_status("n2", 3),
        ];
        let tl = Timeline::of("u", &events);
        let leaders: Vec<(Leader, u64)> = tl
            .leaders
            .iter()
            .map(|s| (s.value.clone(), s.from_ms))
            .collect();
        assert_eq!(
            leaders,
            [
                (Leader::Unknown, 1_000),
                (Leader::Node("n1".into()), 1_100),
                (Leader::Unknown, 2_000),
                (Leader::Node("n2".into()), 3_200),
            ]
        );
        assert!(tl.leaders.last().unwrap().open);
        let page = html(&tl, &Verification::default());
        assert_eq!(count(&page, "data-leader=\"n1\""), 1);
        assert_eq!(count(&page, "data-leader=\"n2\""), 1);
    }

    #[test]
    fn a_node_is_out_of_service_until_the_cluster_shows_it_synced() {
        let leader_status = |syncing: u32, synced: u32| {
            Event::ObservationRecorded {
            step: 0,
            node: "n1".into(),
            observation: Observation::NodeStatus {
                status: workflow::core::builtin::chef_backend::parse_status(&format!(
                    "Service        Local Status        Time in State  Distributed Node Status\n\
                     leaderl        running (pid 1)  0d 0h 1m 0s  leader: 1; waiting: 0; follower: 2; total: 3\n\
                     etcd           running (pid 2)  0d 0h 1m 0s  health: green; healthy nodes: 3/3\n\
                     postgresql     running (pid 3)  0d 0h 1m 0s  leader: 1; offline: 0; syncing: {syncing}; synced: {synced}\n\
                     elasticsearch  running (pid 4)  0d 0h 1m 0s  state: green; nodes online: 3/3\n"
                ))
                .expect("the status parses"),
            },
        }
        };
        let with_step = |event: Event, step: u64| match event {
            Event::ObservationRecorded {
                node, observation, ..
            } => Event::ObservationRecorded {
                step,
                node,
                observation,
            },
            other => other,
        };
        let events = vec![
            submitted(),
            scheduled(1, 1, "n1", Action::ProbeClusterStatus, 900),
            result(1, 1, Outcome::Succeeded, "", 950),
            cluster_status("n1", 1),
            scheduled(2, 1, "n2", Action::Stop, 1_000),
            result(2, 1, Outcome::Succeeded, "", 1_500),
            scheduled(3, 1, "n2", Action::Start, 2_000),
            result(3, 1, Outcome::Succeeded, "", 2_500),
            scheduled(4, 1, "n1", Action::ProbeClusterStatus, 2_600),
            result(4, 1, Outcome::Succeeded, "", 2_700),
            cluster_status("n1", 4),
            // The leader still counts a replica syncing: not back yet.
            scheduled(5, 1, "n1", Action::ProbeStatus, 2_800),
            result(5, 1, Outcome::Succeeded, "", 2_900),
            with_step(leader_status(1, 1), 5),
            scheduled(6, 1, "n1", Action::ProbeStatus, 3_000),
            result(6, 1, Outcome::Succeeded, "", 3_100),
            with_step(leader_status(0, 2), 6),
        ];
        let tl = Timeline::of("u", &events);
        let oos: Vec<_> = tl
            .out_of_service
            .iter()
            .map(|s| (s.value.as_str(), s.from_ms, s.to_ms, s.open))
            .collect();
        assert_eq!(oos, [("n2", 1_000, 3_100, false)]);
        let page = html(&tl, &Verification::default());
        assert_eq!(
            count(&page, "data-out-of-service=\"n2\" data-open=\"false\""),
            1
        );
        assert_eq!(count(&page, "data-out-of-service=\"n1\""), 0);
    }

    #[test]
    fn gates_approvals_failover_and_the_end_are_shown() {
        let events = vec![
            submitted(),
            scheduled(1, 1, "n1", Action::BlockFailover, 1_000),
            result(1, 1, Outcome::Succeeded, "", 1_100),
            Event::ApprovalRequested {
                gate: Gate::BeforeSwitchover,
            },
            Event::GateApproved {
                gate: Gate::BeforeSwitchover,
                by: "bob".into(),
                at_ms: 5_000,
            },
            scheduled(2, 1, "n1", Action::UnblockFailover, 6_000),
            result(2, 1, Outcome::Succeeded, "", 6_100),
            Event::UpgradeHalted {
                reason: "n2: status shows <postgresql> down".into(),
                failover_pending: None,
                at_ms: 7_000,
            },
        ];
        let tl = Timeline::of("u", &events);
        assert_eq!(tl.failover_blocked.len(), 1);
        let blocked = &tl.failover_blocked[0];
        assert_eq!(
            (blocked.from_ms, blocked.to_ms, blocked.open),
            (1_000, 6_100, false)
        );
        assert_eq!(tl.gates.len(), 1);
        assert_eq!(tl.gates[0].approved, Some(("bob".into(), 5_000)));
        assert_eq!(tl.gates[0].requested_ms, Some(1_100));
        let page = html(&tl, &Verification::default());
        assert!(page.contains("data-gate=\"before-switchover\" data-approved-by=\"bob\""));
        assert!(page.contains("data-failover=\"blocked\" data-open=\"false\""));
        assert!(page.contains("data-end-status=\"halted\""));
        assert!(page.contains("halted: n2: status shows &lt;postgresql&gt; down"));
        for mark in ["gate-requested", "gate-approved", "end", "submitted"] {
            assert!(page.contains(&format!("data-mark=\"{mark}\"")), "{mark}");
        }
        assert!(page.contains("data-moment=\"failover-unblocked\""));
    }

    #[test]
    fn verification_findings_and_the_checkpoint_are_shown() {
        let tl = Timeline::of("u", &[submitted()]);
        let v = Verification {
            findings: vec![
                Finding {
                    what: "chain",
                    verdict: Verdict::Ok,
                    detail: "1 event chains".into(),
                },
                Finding {
                    what: "decisions",
                    verdict: Verdict::Failed,
                    detail: "at event 1: differs".into(),
                },
            ],
            checkpoint: Some(SignedHead {
                seq: 1,
                hash: "ab".repeat(32),
                key: "UKEY".into(),
                at_ms: 2_000,
                epoch: 3,
                signature_checked: false,
            }),
        };
        assert!(v.failed());
        let page = html(&tl, &v);
        assert!(page.contains("data-verify=\"chain\" data-verdict=\"ok\""));
        assert!(page.contains("data-verify=\"decisions\" data-verdict=\"failed\""));
        assert!(page.contains("data-checkpoint-seq=\"1\""));
        assert!(page.contains("signature NOT checked"));
        // Still running when the log ends: said so.
        assert!(page.contains("data-end-status=\"planning\""), "{page}");
        assert!(page.contains("(the log ends here)"));
    }

    /// A forged log's page must not read as a clean "COMPLETED": whoever is
    /// sent the file sees that it does not verify before anything else.
    #[test]
    fn a_log_that_does_not_verify_says_so_first() {
        let tl = Timeline::of("u", &[submitted()]);
        let failed = Verification {
            findings: vec![Finding {
                what: "chain",
                verdict: Verdict::Failed,
                detail: "event 2: hash mismatch".into(),
            }],
            checkpoint: None,
        };
        let page = html(&tl, &failed);
        let warning = page
            .find("data-verified=\"no\"")
            .expect("a does-not-verify banner");
        let headline = page.find("<header>").expect("the header");
        assert!(
            warning < headline,
            "the banner comes before the timeline's header"
        );
        assert!(
            page.contains("<title>DOES NOT VERIFY: "),
            "and in the title"
        );
        let clean = html(&tl, &Verification::default());
        assert!(!clean.contains("data-verified=\"no\""));
        assert!(!clean.contains("DOES NOT VERIFY"));
    }

    #[test]
    fn a_page_fetches_nothing() {
        let tl = Timeline::of(
            "u",
            &[submitted(), scheduled(1, 1, "n1", Action::Stop, 1_000)],
        );
        let page = html(&tl, &Verification::default());
        // The SVG namespace is an identifier, not a fetch; nothing else names a URL.
        let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for needle in [
            "http:", "https:", "src=", "<link", "@import", "url(http", "<script",
        ] {
            assert!(!without_ns.contains(needle), "{needle}");
        }
    }

    #[test]
    fn tails_keep_the_end_of_the_output() {
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let t = tail(&long, 3, 1_000);
        assert_eq!(t, "line 97\nline 98\nline 99");
        let t = tail(&"x".repeat(5_000), 12, 100);
        assert_eq!(t.chars().count(), 101);
        assert_eq!(
            argv_line(&["a".into(), "b c".into(), "".into()]),
            "a \"b c\" \"\""
        );
    }
}
