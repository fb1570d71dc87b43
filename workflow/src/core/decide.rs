//! The Decider: `decide` turns an input into events (a recorded input first, then decisions), `evolve` applies
//! one event, `replay` folds a history. Decisions are made by `next_decisions`, which looks only at the state
//! and the input's time, so every decision can be re-derived from the log (`verify`).

use std::collections::BTreeMap;

use super::event::{
    Event, Input, Observation, Outcome, Rejection, Resolution, WaitPurpose, WindDownCause,
    LATEST_MS,
};
use super::guard::{guard_finding, guard_probes, version_problems, Finding};
use super::health::{cluster_problems, electable_problems, leader_problems, standing_problems};
use super::observe::{MemberRole, Topology};
use super::plan::{compute_plan, PlanInputs, PlanItem};
use super::profile::{render, Action, Profile, RenderContext};
use super::profile_file::version_numbers;
use super::state::{NodePhase, Reobserve, State, StepRecord, Submission, WindDown};
use super::version::normalize_version;

/// Decides what an input means: the events to append, or why it is refused. Results for unknown steps, old
/// attempts, already-recorded results and results after the end are ignored: `Ok(vec![])`.
pub fn decide(state: &State, input: &Input) -> Result<Vec<Event>, Rejection> {
    let mut draft = Draft {
        state: state.clone(),
        events: Vec::new(),
    };
    let now = input.now_ms();
    if now > LATEST_MS {
        return Err(Rejection::ClockOutOfRange { now_ms: now });
    }
    if let Input::Submit { .. } = input {
        draft.emit(submitted(state, input)?);
        draft.drive(now);
        return Ok(draft.events);
    }
    if state.sub.is_none() {
        return Err(Rejection::NotSubmitted);
    }
    let finished = || Rejection::Finished(status_word(state));
    match input {
        // Handled above; kept so the match stays exhaustive without a wildcard.
        Input::Submit { .. } => {}
        Input::StepFinished {
            step,
            attempt,
            outcome,
            exit_code,
            stdout,
            stderr,
            reason,
            executor,
            now_ms,
        } => {
            let Some(record) = state.steps.get(step) else {
                return Ok(vec![]);
            };
            if state.terminal.is_some()
                || record.scheduled.attempt != *attempt
                || record.outcome.is_some()
            {
                return Ok(vec![]);
            }
            draft.emit(Event::StepResultRecorded {
                step: *step,
                attempt: *attempt,
                outcome: *outcome,
                exit_code: *exit_code,
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                reason: reason.clone(),
                executor: executor.clone(),
                at_ms: *now_ms,
            });
        }
        Input::Tick { now_ms } => {
            if state.terminal.is_some() {
                return Ok(vec![]);
            }
            let mut probe = Draft {
                state: state.clone(),
                events: Vec::new(),
            };
            probe.drive(*now_ms);
            if probe.events.is_empty() {
                return Ok(vec![]);
            }
            draft.emit(Event::TimerFired { at_ms: *now_ms });
        }
        Input::Pause { by, reason, now_ms } => {
            if state.terminal.is_some() {
                return Err(finished());
            }
            if let Some(w) = &state.wind_down {
                return Err(Rejection::WindingDown(w.reason.clone()));
            }
            if state.paused.is_some() {
                return Err(Rejection::AlreadyPaused);
            }
            draft.emit(Event::UpgradePaused {
                by: by.clone(),
                reason: reason.clone(),
                at_ms: *now_ms,
            });
        }
        Input::Resume { by, now_ms } => {
            if state.terminal.is_some() {
                return Err(finished());
            }
            if state.paused.is_none() {
                return Err(Rejection::NotPaused);
            }
            draft.emit(Event::UpgradeResumed {
                by: by.clone(),
                at_ms: *now_ms,
            });
        }
        Input::Abort { by, reason, now_ms } => {
            if state.terminal.is_some() {
                return Err(finished());
            }
            if let Some(w) = &state.wind_down {
                return Err(Rejection::WindingDown(w.reason.clone()));
            }
            draft.emit(Event::AbortRequested {
                by: by.clone(),
                reason: reason.clone(),
                at_ms: *now_ms,
            });
            draft.emit(Event::WindDownStarted {
                cause: WindDownCause::Abort,
                reason: format!("aborted by {by}: {reason}"),
                at_ms: *now_ms,
            });
        }
        Input::Approve { gate, by, now_ms } => {
            if state.terminal.is_some() {
                return Err(finished());
            }
            if let Some(w) = &state.wind_down {
                return Err(Rejection::WindingDown(w.reason.clone()));
            }
            if !state.gates().contains(gate) {
                return Err(Rejection::GateNotConfigured(*gate));
            }
            if state.approvals.contains(gate) {
                return Err(Rejection::GateAlreadyApproved(*gate));
            }
            draft.emit(Event::GateApproved {
                gate: *gate,
                by: by.clone(),
                at_ms: *now_ms,
            });
        }
        Input::Resolve {
            step,
            resolution,
            by,
            why,
            now_ms,
        } => {
            if state.terminal.is_some() {
                return Err(finished());
            }
            if !state.steps.contains_key(step) {
                return Err(Rejection::NoSuchStep {
                    step: *step,
                    last: state.steps.keys().next_back().copied().unwrap_or(0),
                });
            }
            match &state.verification {
                Some((s, _)) if s == step => {}
                other => {
                    return Err(Rejection::NothingToResolve {
                        step: *step,
                        in_doubt: other.as_ref().map(|(s, _)| *s),
                    })
                }
            }
            draft.emit(Event::StepResolved {
                step: *step,
                resolution: *resolution,
                by: by.clone(),
                why: why.clone(),
                at_ms: *now_ms,
            });
        }
    }
    draft.drive(now);
    Ok(draft.events)
}

fn status_word(state: &State) -> String {
    match state.status() {
        super::state::Status::Planned => "planned (plan only)".into(),
        super::state::Status::Completed => "completed".into(),
        super::state::Status::Halted { reason, .. } => format!("halted: {reason}"),
        super::state::Status::Aborted { reason, .. } => format!("aborted: {reason}"),
        other => format!("{other:?}"),
    }
}

fn submitted(state: &State, input: &Input) -> Result<Event, Rejection> {
    let Input::Submit {
        upgrade,
        cluster,
        package,
        target_version,
        gates,
        plan_only,
        expected_plan_hash,
        executors_online,
        requested_by,
        now_ms,
    } = input
    else {
        return Err(Rejection::InvalidSubmission("not a submission".into()));
    };
    if let Some(sub) = &state.sub {
        return Err(Rejection::AlreadySubmitted(sub.upgrade.clone()));
    }
    let invalid = |m: String| Rejection::InvalidSubmission(m);
    if upgrade.trim().is_empty() {
        return Err(invalid("the upgrade id is empty".into()));
    }
    let profile = Profile::of_cluster(cluster).map_err(invalid)?;
    if cluster.nodes.is_empty() {
        return Err(invalid("the cluster has no nodes".into()));
    }
    let resolved_package = if !package.trim().is_empty() {
        package.trim().to_string()
    } else {
        cluster.upgrade.package.clone().ok_or_else(|| {
            invalid("no package: pass one or set upgrade.package in the cluster file".into())
        })?
    };
    let wanted = target_version
        .as_deref()
        .or(cluster.upgrade.target_version.as_deref());
    let resolved_target = match wanted {
        // A profile file's versions are the system's own (3.5.17): the leading numbers are compared.
        Some(v) if profile.reader.is_some() => {
            if version_numbers(v).is_none() {
                return Err(invalid(format!(
                    "target version `{v}` does not start with a number (like 3.5.17)"
                )));
            }
            v.trim().to_string()
        }
        None if profile.reader.is_some() => {
            return Err(invalid(format!(
                "no target version: profile `{}` cannot tell it from the package; give target_version",
                profile.name
            )))
        }
        Some(v) => normalize_version(v).ok_or_else(|| invalid(format!("target version `{v}` is not like 3.1.0-1")))?,
        None => super::builtin::version_from_package(&profile.name, &resolved_package).ok_or_else(|| {
            invalid(format!(
                "cannot tell the target version from the package name `{resolved_package}`; give target_version"
            ))
        })?,
    };
    Ok(Event::UpgradeSubmitted {
        upgrade: upgrade.clone(),
        cluster: cluster.clone(),
        package: resolved_package,
        target_version: resolved_target,
        requested_target_version: target_version.clone(),
        requested_package: package.clone(),
        gates: gates.clone(),
        plan_only: *plan_only,
        expected_plan_hash: expected_plan_hash.clone(),
        executors_online: executors_online.clone(),
        requested_by: requested_by.clone(),
        at_ms: *now_ms,
    })
}

/// Applies one event to a state.
pub fn evolve(mut state: State, event: &Event) -> State {
    state.apply(event);
    state
}

/// Folds a history into the state it leads to.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a Event>) -> State {
    let mut state = State::default();
    for event in events {
        state.apply(event);
    }
    state
}

/// The input an event records, if it is a recorded input (`replay --verify` feeds these back to `decide`).
pub fn input_of(event: &Event) -> Option<Input> {
    Some(match event.clone() {
        Event::UpgradeSubmitted {
            upgrade,
            cluster,
            requested_package,
            requested_target_version,
            gates,
            plan_only,
            expected_plan_hash,
            executors_online,
            requested_by,
            at_ms,
            ..
        } => Input::Submit {
            upgrade,
            cluster,
            package: requested_package,
            target_version: requested_target_version,
            gates,
            plan_only,
            expected_plan_hash,
            executors_online,
            requested_by,
            now_ms: at_ms,
        },
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
        } => Input::StepFinished {
            step,
            attempt,
            outcome,
            exit_code,
            stdout,
            stderr,
            reason,
            executor,
            now_ms: at_ms,
        },
        Event::TimerFired { at_ms } => Input::Tick { now_ms: at_ms },
        Event::UpgradePaused { by, reason, at_ms } => Input::Pause {
            by,
            reason,
            now_ms: at_ms,
        },
        Event::UpgradeResumed { by, at_ms } => Input::Resume { by, now_ms: at_ms },
        Event::AbortRequested { by, reason, at_ms } => Input::Abort {
            by,
            reason,
            now_ms: at_ms,
        },
        Event::GateApproved { gate, by, at_ms } => Input::Approve {
            gate,
            by,
            now_ms: at_ms,
        },
        Event::StepResolved {
            step,
            resolution,
            by,
            why,
            at_ms,
        } => Input::Resolve {
            step,
            resolution,
            by,
            why,
            now_ms: at_ms,
        },
        _ => return None,
    })
}

/// Where a re-derivation of a history disagreed with the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {index}: {message}")]
pub struct VerifyMismatch {
    /// Index of the first event that differs.
    pub index: usize,
    /// What differs.
    pub message: String,
}

/// Feeds every recorded input of `events` back to `decide` and checks that it makes exactly the recorded
/// decisions. `Ok(())` means today's core agrees with the log. Takes events or references to them (a caller
/// that holds them elsewhere need not clone them into a slice).
pub fn verify<E: std::borrow::Borrow<Event>>(events: &[E]) -> Result<(), VerifyMismatch> {
    let mut state = State::default();
    let mut i = 0;
    while i < events.len() {
        let Some(input) = input_of(events[i].borrow()) else {
            return Err(VerifyMismatch {
                index: i,
                message: format!(
                    "a decision not preceded by its recorded input: {:?}",
                    events[i].borrow()
                ),
            });
        };
        let decided = decide(&state, &input).map_err(|r| VerifyMismatch {
            index: i,
            message: format!("recorded input is now rejected: {r}"),
        })?;
        for (k, expected) in decided.iter().enumerate() {
            match events.get(i + k).map(std::borrow::Borrow::borrow) {
                Some(actual) if actual == expected => state.apply(actual),
                Some(actual) => {
                    return Err(VerifyMismatch {
                        index: i + k,
                        message: format!("log has {actual:?}, decide makes {expected:?}"),
                    })
                }
                None => {
                    return Err(VerifyMismatch {
                        index: i + k,
                        message: format!("log ends, decide makes {expected:?}"),
                    })
                }
            }
        }
        if decided.is_empty() {
            return Err(VerifyMismatch {
                index: i,
                message: "recorded input now decides nothing".into(),
            });
        }
        i += decided.len();
    }
    Ok(())
}

struct Draft {
    state: State,
    events: Vec<Event>,
}

impl Draft {
    fn emit(&mut self, event: Event) {
        self.state.apply(&event);
        self.events.push(event);
    }

    /// Makes decisions until there is nothing more to decide without a new input.
    fn drive(&mut self, now: u64) {
        // Each decision changes the state; the bound only guards against a bug looping forever.
        for _ in 0..10_000 {
            let next = next_decisions(&self.state, now);
            if next.is_empty() {
                return;
            }
            for event in next {
                self.emit(event);
            }
        }
    }
}

/// The last `max` characters of the last lines of `text`, for reasons.
fn tail(text: &str) -> String {
    const MAX: usize = 400;
    let text = text.trim_end();
    let start = text.len().saturating_sub(MAX);
    let start = (start..=text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    text[start..].replace('\n', " | ")
}

fn describe_step(record: &StepRecord) -> String {
    let s = &record.scheduled;
    let mut out = format!(
        "step {} `{}` on {} (attempt {}): argv {:?}",
        s.step, s.action, s.node, s.attempt, s.argv
    );
    if let Some(o) = &record.outcome {
        let outcome = format!("{:?}", o.outcome).to_lowercase();
        let code = o
            .exit_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "none".into());
        out.push_str(&format!("; outcome {outcome}, exit code {code}"));
        if let Some(r) = &o.reason {
            out.push_str(&format!("; reason: {r}"));
        }
        out.push_str(&format!(
            "; stdout tail: {:?}; stderr tail: {:?}",
            tail(&o.stdout),
            tail(&o.stderr)
        ));
    }
    out
}

fn sub(state: &State) -> &Submission {
    state
        .sub
        .as_ref()
        .expect("decisions are only made after a submission")
}

fn node_count(state: &State) -> u32 {
    sub(state).cluster.nodes.len() as u32
}

fn node_names(state: &State) -> Vec<&str> {
    sub(state)
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .collect()
}

/// A fresh step (new id, attempt 1) of `action` on `node`, or why it cannot be rendered.
fn schedule(
    state: &State,
    action: Action,
    node: &str,
    now: u64,
    argv: Option<&[String]>,
) -> Result<Event, String> {
    let s = sub(state);
    let spec = s
        .profile
        .action(action)
        .ok_or_else(|| format!("profile has no action {action}"))?;
    let n = s
        .cluster
        .node(node)
        .ok_or_else(|| format!("node {node} is not in the cluster file"))?;
    let argv = match argv {
        Some(a) => a.to_vec(),
        None => {
            let ctx = RenderContext {
                package: &s.package,
                node: &n.name,
                address: &n.address,
                vars: Some(&n.vars),
                version: &s.target_version,
                target: None,
            };
            render(&spec.argv, &ctx).map_err(|e| e.to_string())?
        }
    };
    let timeout_ms = s
        .cluster
        .upgrade
        .timeouts_ms
        .get(&action)
        .copied()
        .unwrap_or(spec.timeout_ms);
    Ok(Event::StepScheduled {
        step: state.next_step.max(1),
        attempt: 1,
        node: n.name.clone(),
        group: n.executor.clone(),
        action,
        argv,
        env: BTreeMap::new(),
        timeout_ms,
        deadline_ms: now
            .saturating_add(timeout_ms)
            .saturating_add(s.cluster.upgrade.result_grace_ms),
    })
}

/// The next attempt of an existing step.
fn reschedule(state: &State, step: u64, now: u64) -> Vec<Event> {
    let Some(record) = state.steps.get(&step) else {
        return vec![];
    };
    let s = &record.scheduled;
    vec![Event::StepScheduled {
        step,
        attempt: s.attempt.saturating_add(1),
        node: s.node.clone(),
        group: s.group.clone(),
        action: s.action,
        argv: s.argv.clone(),
        env: s.env.clone(),
        timeout_ms: s.timeout_ms,
        deadline_ms: now
            .saturating_add(s.timeout_ms)
            .saturating_add(sub(state).cluster.upgrade.result_grace_ms),
    }]
}

fn retry_delay(state: &State, attempt: u32) -> u64 {
    let base = sub(state).cluster.upgrade.backoff_ms;
    base.saturating_mul(1u64 << (attempt.saturating_sub(1)).min(16))
}

fn may_retry(state: &State, record: &StepRecord) -> bool {
    record.scheduled.attempt <= sub(state).cluster.upgrade.retries
}

fn wind_down(reason: String, now: u64) -> Event {
    Event::WindDownStarted {
        cause: WindDownCause::Failure,
        reason,
        at_ms: now,
    }
}

/// Reads a probe's result into an observation, with the system's reader: the built-in one named like the
/// profile (`builtin::read_probe`) or a profile file's parsers (`profile_file::read_probe`).
fn observe(state: &State, record: &StepRecord) -> Observation {
    let Some(o) = &record.outcome else {
        return Observation::Unavailable {
            error: "no result".into(),
        };
    };
    let action = record.scheduled.action;
    let sub = state.sub.as_ref();
    let read = match sub.and_then(|s| {
        s.profile
            .reader
            .as_ref()
            .map(|r| (r, &s.cluster.nodes, &s.profile.system))
    }) {
        Some((reader, nodes, system)) => super::profile_file::read_probe(
            &reader.0,
            action,
            o.outcome,
            o.exit_code,
            &o.stdout,
            nodes,
            system,
        ),
        // Without a submission, the default profile's reader (the cluster file's default).
        None => super::builtin::read_probe(
            sub.map_or(super::builtin::DEFAULT, |s| s.profile.name.as_str()),
            action,
            o.outcome,
            &o.stdout,
            &o.stderr,
        ),
    };
    match read {
        Ok(observation) => observation,
        Err(None) => Observation::Unavailable {
            error: describe_step(record),
        },
        Err(Some(e)) => Observation::Unavailable {
            error: format!("{e}; {}", describe_step(record)),
        },
    }
}

/// A node to run cluster-wide commands on (they need the node's etcd): the leader the latest `cluster-status`
/// showed, else a node it showed as a follower, else any node; never `avoid`, a node being upgraded, or one
/// whose last cluster-wide probe could not run (so a dead node is not asked again and again).
pub(crate) fn observer(state: &State, avoid: Option<&str>) -> String {
    let usable = |name: &str| {
        Some(name) != avoid
            && !state.unreachable.contains(name)
            && !matches!(
                state.nodes.get(name).map(|p| p.phase),
                Some(NodePhase::Upgrading | NodePhase::Syncing)
            )
            && state
                .sub
                .as_ref()
                .is_some_and(|s| s.cluster.node(name).is_some())
    };
    let names = node_names(state);
    let last = state.last_cluster.as_ref();
    let leader = last.and_then(|c| c.sole_leader()).map(str::to_string);
    let followers = last
        .into_iter()
        .flat_map(|c| c.followers_in_service().map(|m| m.node.clone()));
    // When every node looks unreachable, ask them in turn: the one given a step least recently first.
    let last_asked = |name: &str| {
        state
            .steps
            .iter()
            .rev()
            .find(|(_, r)| r.scheduled.node == name)
            .map_or(0, |(step, _)| *step)
    };
    leader
        .into_iter()
        .chain(followers)
        .chain(names.iter().map(|n| n.to_string()))
        .find(|n| usable(n))
        .or_else(|| {
            names
                .iter()
                .filter(|n| Some(**n) != avoid)
                .min_by_key(|n| last_asked(n))
                .map(|n| n.to_string())
        })
        .or_else(|| names.first().map(|n| n.to_string()))
        .unwrap_or_default()
}

/// The decisions the state calls for now (empty: wait for an input).
pub(crate) fn next_decisions(state: &State, now: u64) -> Vec<Event> {
    let Some(s) = state.sub.as_ref() else {
        return vec![];
    };
    if state.terminal.is_some() {
        return vec![];
    }
    if let Some(error) = &s.profile_error {
        return vec![profile_error_halt(state, s, error, now)];
    }
    if let Some(exit) = emergency_by_time(state, now) {
        return vec![exit];
    }
    if let Some(decided) = round_decisions(state, now) {
        return decided;
    }
    if let Some(record) = state.current_record() {
        if record.outcome.is_none() {
            if now >= record.scheduled.deadline_ms {
                let s = &record.scheduled;
                return vec![Event::StepDeadlinePassed {
                    step: s.step,
                    attempt: s.attempt,
                    at_ms: now,
                }];
            }
            return vec![];
        }
    }
    if state.wind_down.is_some() {
        return wind_down_decisions(state, now);
    }
    if state.paused.is_some() || state.verification.is_some() {
        // A pause stops new work, not the handling of a result: an action that finished meanwhile completes its
        // item (or starts its retry wait) now, so that the watch is not held up behind it.
        if let Some(record) = state.current_record() {
            let action_done = record.outcome.is_some() && !record.scheduled.action.is_probe();
            if action_done && state.paused.is_some() && state.reobserve.is_none() {
                return handle_result(state, record, now);
            }
        }
        return watch_decisions(state, now);
    }
    if let Some(record) = state.current_record() {
        return handle_result(state, record, now);
    }
    if let Some((step, observation)) = &state.last_observation {
        return judge(state, *step, observation, now);
    }
    if let Some((purpose, until)) = &state.wait {
        if now < *until {
            return vec![];
        }
        if let WaitPurpose::Retry { step } = purpose {
            // An action runs again only after its guard (`item_decisions`); a probe at once.
            let guarded = state
                .cursor
                .as_ref()
                .is_some_and(|c| c.retry == Some(*step));
            if !guarded {
                return reschedule(state, *step, now);
            }
        }
    }
    if let Some((step, resolution)) = state.resolution {
        return match resolution {
            Resolution::Succeeded => match &state.cursor {
                Some(c) => vec![Event::ItemCompleted { index: c.index, at_ms: now }],
                None => vec![],
            },
            Resolution::Failed => {
                let what = state.steps.get(&step).map(describe_step).unwrap_or_default();
                vec![wind_down(format!("an operator resolved step {step} as failed: {what}"), now)]
            }
            Resolution::Retry => vec![Event::ReobservationStarted {
                step,
                attempt: state.steps.get(&step).map(|r| r.scheduled.attempt).unwrap_or(1),
                reason: "an operator asked for a retry; observing the cluster before running it again (S4)".into(),
            }],
        };
    }
    if let Some(re) = &state.reobserve {
        let probes = state
            .steps
            .get(&re.step)
            .map(|r| effect_probes(state, r))
            .unwrap_or_default();
        return match probes.get(re.checks_passed) {
            Some((action, node)) => one(schedule(state, *action, node, now, None), now),
            None => vec![],
        };
    }
    if state.plan.is_none() {
        return preflight_decisions(state, now);
    }
    item_decisions(state, now)
}

/// At most this many probes of one node in one round. Executors run a node's probes side by side up to the
/// same bound (`executor::slots::MAX_PROBES_PER_NODE` is this constant) and hand a further one back for later,
/// so a bigger round would only wait; WaitSynced's node, version and running version, and VerifySwitchover's
/// probes of one node, fit in one round.
pub const ROUND_PROBES_PER_NODE: usize = 4;

/// The probes of `probes[from..]` asked together as one round: the probe at `from`, then the ones after it for as
/// long as each is read-only, is no look at the leader (`names_leader`) and asks no node already asked
/// [`ROUND_PROBES_PER_NODE`] times in it. A look at the leader may open a round but never joins one:
/// - it opens one (where `opens`: `topology_opens_round` on the round it would open) because the probes after it
///   are chosen from the picture before it (the leader's node probe goes to the leader the last topology named,
///   VerifySwitchover's to the switchover's target); if this look shows otherwise, the next probe of the round is
///   not the one a one-at-a-time run would ask after it, and `round_decisions` ends the round's judgment there as a
///   failed check (the checks start again after a poll);
/// - it never joins one because the guard's last look must be the last one *run*, not only the last judged (a
///   round's probes run in any order: a failover probe that names the leader, run before the leader's node probe
///   beside it, would vouch for a leader that has moved since). A look that ends a probe list is therefore alone.
pub(crate) fn round_of(
    probes: &[(Action, String)],
    from: usize,
    opens: bool,
    names_leader: impl Fn(Action) -> bool,
) -> &[(Action, String)] {
    let Some((first, _)) = probes.get(from) else {
        return &[];
    };
    let mut end = from + 1;
    if first.is_probe() && (opens || !names_leader(*first)) {
        while let Some((action, node)) = probes.get(end) {
            let node_asked = probes[from..end].iter().filter(|(_, n)| n == node).count();
            if !action.is_probe() || names_leader(*action) || node_asked >= ROUND_PROBES_PER_NODE {
                break;
            }
            end += 1;
        }
    }
    &probes[from..end]
}

/// Whether `round`, a round that a look naming the leader opens (`round_of`), may go out as one. Its probes after
/// the look were chosen from the picture before it, so it opens one only where that picture is the one the look
/// will normally show, and where a member that hangs holds up as little as a one-at-a-time run would (a round's
/// probes are judged in step order as each comes, `round_decisions`, but nothing new goes out until all are back):
/// - a checking item's look (not a guard's, not preflight's) whose every later probe asks the node it is asked of
///   (WaitSynced's; VerifySwitchover's, whose look and probes go to the switchover's target); or
/// - a look asked of the leader the last topology named, the one the plan expects now (the guards of `stop`,
///   `install` and `start`; VerifyStable's): the leader's probes go out beside it, and before a `stop` every other
///   member's node probe.
///
/// And never of a node in `State::unreachable`. Preflight (no leader known yet: the fence probe's node follows the
/// look, hostile review 13), the switchover's guard (its look is asked of another member than the leader it moves,
/// 13b) and a guard between a switchover and its confirmation (its leader is meant to move, 13) keep the look alone.
/// Where the look still contradicts the picture, the round ends as a mismatch (`round_decisions`).
fn topology_opens_round(state: &State, round: &[(Action, String)]) -> bool {
    let Some(((_, asked), rest)) = round.split_first() else {
        return false;
    };
    if state.unreachable.contains(asked) {
        return false;
    }
    // A guard's probes after its look go to the leader the picture before it named; a checking item's do not depend
    // on the look (VerifySwitchover's go to the switchover's target until a topology shows the new leader).
    let in_guard = state
        .plan
        .as_ref()
        .zip(state.cursor.as_ref())
        .is_some_and(|(plan, c)| matches!(plan.items.get(c.index), Some(PlanItem::Run { .. })));
    let of_itself = state.plan.is_some() && !in_guard && rest.iter().all(|(_, node)| node == asked);
    let leader = state.last_cluster.as_ref().and_then(|c| c.sole_leader());
    let of_the_leader = leader == Some(asked.as_str())
        && super::guard::expected_leader_now(state).as_deref() == Some(asked.as_str());
    of_itself || of_the_leader
}

/// Whether `action`'s observation names the leader, so that the guard judges the leader by it: the topology, and
/// a failover probe read by a built-in reader (chef-backend's `cluster-status --json` names the leader; a profile
/// file's own fence parsers read only whether failover is blocked).
fn names_leader(state: &State, action: Action) -> bool {
    match action {
        Action::ProbeClusterStatus => true,
        Action::ProbeFailover => sub(state).profile.reader.as_ref().is_none_or(|r| {
            r.0.failover
                .as_ref()
                .is_some_and(|p| matches!(p.parse, super::profile_file::Parser::Builtin { .. }))
        }),
        _ => false,
    }
}

/// Schedules `probes[from]`, or, where the profile asks for rounds, the whole round starting there (one decision,
/// consecutive step ids): S1's "one step outstanding" becomes "one action, or one round of probes".
fn schedule_probes(
    state: &State,
    probes: &[(Action, String)],
    from: usize,
    now: u64,
) -> Vec<Event> {
    try_schedule_probes(state, probes, from, now)
        .unwrap_or_else(|why| vec![wind_down(format!("cannot schedule a step: {why}"), now)])
}

/// `schedule_probes`, or why a probe of it cannot be rendered.
fn try_schedule_probes(
    state: &State,
    probes: &[(Action, String)],
    from: usize,
    now: u64,
) -> Result<Vec<Event>, String> {
    let round = if sub(state).profile.probe_rounds {
        let opened = round_of(probes, from, true, |a| names_leader(state, a));
        let opens = opened
            .first()
            .is_none_or(|(first, _)| !names_leader(state, *first))
            || topology_opens_round(state, opened);
        if opens {
            opened
        } else {
            round_of(probes, from, false, |a| names_leader(state, a))
        }
    } else {
        probes.get(from..from.saturating_add(1)).unwrap_or(&[])
    };
    let mut out = Vec::with_capacity(round.len());
    for (nth, (action, node)) in (0u64..).zip(round) {
        let mut event = schedule(state, *action, node, now, None)?;
        if let Event::StepScheduled { step, .. } = &mut event {
            *step = step.saturating_add(nth);
        }
        out.push(event);
    }
    Ok(out)
}

/// The probe the current checking context would ask next if it asked one at a time: preflight's, the guard's
/// or a checking item's at the count of checks passed.
fn next_probe(state: &State) -> Option<(Action, String)> {
    if let Some(w) = state
        .wind_down
        .as_ref()
        .filter(|w| w.cause == WindDownCause::Emergency)
    {
        // The emergency exit's words (the only round a wind-down asks): one at a time, the member at the current
        // step's place among its asks, every earlier one judged.
        let at = usize::try_from(state.current?.checked_sub(w.first_step)?).ok()?;
        return emergency_probes(state).get(at).cloned();
    }
    let Some(plan) = &state.plan else {
        return preflight_probes(state).get(state.preflight_passed).cloned();
    };
    let c = state.cursor.as_ref()?;
    match plan.items.get(c.index)? {
        PlanItem::Run { action, node, .. } => guard_probes(state, *action, node),
        item => item_probes(state, item),
    }
    .get(c.checks_passed)
    .cloned()
}

/// A round of probes (rules in `core/mod.rs`, S1): nothing new is scheduled while any of its probes is out (each
/// one's deadline passes on its own); they are judged one by one in step order, each as soon as it and every
/// earlier one has an outcome, exactly as if they had run one after another (`State::apply` takes the next one
/// up after a passed check); once the judgment ended before the last one, the rest are recorded unjudged as they
/// come. `None`: no round, or the round's next probe is to be judged the ordinary way.
fn round_decisions(state: &State, now: u64) -> Option<Vec<Event>> {
    // The round's next probe was observed and awaits its judgment (`judge`), whatever is still out after it.
    if state.last_observation.is_some() && !state.round_settled {
        return None;
    }
    let records: Vec<&StepRecord> = state
        .round
        .iter()
        .filter_map(|s| state.steps.get(s))
        .collect();
    let first = records.first()?;
    // Judged in step order as soon as the next one has its outcome, not once all have: a look that shows something
    // decisive (no leader, a leader that moved) never waits behind a later probe of a member that hangs, where a
    // one-at-a-time run would act on it at once (hostile reviews 13b and 13c). Nothing new is scheduled while any
    // probe of the round is out: a check that fails settles the round, and this waits for the rest.
    if first.outcome.is_none() {
        let due = records
            .iter()
            .filter(|r| r.outcome.is_none())
            .map(|r| &r.scheduled)
            .find(|s| now >= s.deadline_ms);
        return Some(
            due.map(|s| {
                vec![Event::StepDeadlinePassed {
                    step: s.step,
                    attempt: s.attempt,
                    at_ms: now,
                }]
            })
            .unwrap_or_default(),
        );
    }
    let s = &first.scheduled;
    if state.round_settled {
        return Some(vec![Event::ObservationRecorded {
            step: s.step,
            node: s.node.clone(),
            observation: observe(state, first),
        }]);
    }
    // The next probe of the round must be the one a step-by-step run would ask now. This decider's rounds are,
    // unless the topology that opened the round showed something else than the picture its later probes were
    // chosen from (a leader that moved: no observation of a node probe changes a later probe's target); and round
    // membership is read from the log: a log another version of Baton wrote may hold a round this one would not
    // ask. Then the round's judgment ends here, as a check that did not pass and names why (never a probe counted
    // for another): the checks start again after a poll, and that counts toward `sync_timeout` like any other
    // unsettled check, so a round that never matches cannot poll forever.
    let asked = next_probe(state);
    if state.current == Some(s.step) && asked.as_ref() != Some(&(s.action, s.node.clone())) {
        let wanted = asked.map_or_else(
            || "no probe".to_string(),
            |(action, node)| format!("{action} on {node}"),
        );
        let problem = format!(
            "round probe mismatch: step {} of the round asks {} on {}, where a one-at-a-time run would ask {wanted} \
             now",
            s.step, s.action, s.node
        );
        return Some(unsettled_check(state, first, problem, now));
    }
    None
}

/// A check that did not pass for `problem`, outside any one observation's finding (a round probe mismatch): in
/// preflight the upgrade is refused; inside an item the checks start again after a poll, and once the item has
/// run for `sync_timeout_ms` it winds down, exactly as an unsettled guard or health check does.
fn unsettled_check(state: &State, record: &StepRecord, problem: String, now: u64) -> Vec<Event> {
    let s = &record.scheduled;
    let check = Event::CheckEvaluated {
        step: s.step,
        node: s.node.clone(),
        passed: false,
        problems: vec![problem.clone()],
    };
    let Some(cursor) = state.cursor.as_ref().filter(|_| state.plan.is_some()) else {
        return vec![
            check,
            wind_down(
                format!("preflight refused: {problem}; {}", describe_step(record)),
                now,
            ),
        ];
    };
    let upgrade = &sub(state).cluster.upgrade;
    if now >= cursor.started_ms.saturating_add(upgrade.sync_timeout_ms) {
        return vec![
            check,
            wind_down(
                format!(
                    "the checks of plan item {} did not pass within {} ms; last: {problem}; {}",
                    cursor.index.saturating_add(1),
                    upgrade.sync_timeout_ms,
                    describe_step(record)
                ),
                now,
            ),
        ];
    }
    vec![
        check,
        Event::WaitStarted {
            purpose: WaitPurpose::Poll,
            until_ms: now.saturating_add(upgrade.poll_interval_ms),
        },
    ]
}

fn one(scheduled: Result<Event, String>, now: u64) -> Vec<Event> {
    match scheduled {
        Ok(e) => vec![e],
        Err(why) => vec![wind_down(format!("cannot schedule a step: {why}"), now)],
    }
}

/// A result came back for the current step (outside a wind-down).
fn handle_result(state: &State, record: &StepRecord, now: u64) -> Vec<Event> {
    let s = &record.scheduled;
    let Some(o) = &record.outcome else {
        return vec![];
    };
    if s.action.is_probe() {
        return vec![Event::ObservationRecorded {
            step: s.step,
            node: s.node.clone(),
            observation: observe(state, record),
        }];
    }
    let Some(cursor) = &state.cursor else {
        return vec![];
    };
    if o.outcome == Outcome::Succeeded {
        return vec![Event::ItemCompleted {
            index: cursor.index,
            at_ms: now,
        }];
    }
    let idempotent = sub(state)
        .profile
        .action(s.action)
        .is_some_and(|a| a.idempotent);
    if o.outcome == Outcome::Rejected {
        // The executor refused it before running anything: nothing is in doubt. It may run again, after its
        // guard, like a failed idempotent step.
        if may_retry(state, record) {
            return vec![Event::WaitStarted {
                purpose: WaitPurpose::Retry { step: s.step },
                until_ms: now.saturating_add(retry_delay(state, s.attempt)),
            }];
        }
        return vec![wind_down(
            format!(
                "{} was refused by the executor and its retries are used up: {}",
                s.action,
                describe_step(record)
            ),
            now,
        )];
    }
    if !idempotent {
        return vec![Event::ReobservationStarted {
            step: s.step,
            attempt: s.attempt,
            reason: format!(
                "outcome of a non-idempotent step is not success (S4): {}",
                describe_step(record)
            ),
        }];
    }
    // The command may have run to the end without us hearing (an executor killed mid-step): look before
    // running it again. A failure or a timeout is the command's own answer and keeps the retry policy.
    if o.outcome == Outcome::Unknown && !effect_probes(state, record).is_empty() {
        return vec![Event::ReobservationStarted {
            step: s.step,
            attempt: s.attempt,
            reason: format!(
                "outcome unknown; observing whether it took effect before deciding (S4): {}",
                describe_step(record)
            ),
        }];
    }
    if may_retry(state, record) {
        let until_ms = now.saturating_add(retry_delay(state, s.attempt));
        return vec![Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: s.step },
            until_ms,
        }];
    }
    vec![wind_down(
        format!(
            "{} failed and its retries are used up: {}",
            s.action,
            describe_step(record)
        ),
        now,
    )]
}

/// Probes preflight runs, in order.
fn preflight_probes(state: &State) -> Vec<(Action, String)> {
    let names = node_names(state);
    let via = observer(state, None);
    let mut out = vec![
        (Action::ProbeClusterStatus, via.clone()),
        (Action::ProbeFailover, via),
    ];
    // The version rule applies to what runs too: with etcd 3.5 staged on every member but 3.4 running, the
    // cluster is at 3.4, and 3.6 does not roll onto it.
    let per_member = [
        Action::ProbeStatus,
        Action::ProbeVersion,
        Action::ProbeRunningVersion,
        Action::ProbePackage,
    ];
    let profile = &sub(state).profile;
    if profile.probe_rounds {
        // Each kind asked of every member in turn, so that a round holds one probe of each member (`round_of`).
        for action in per_member {
            out.extend(names.iter().map(|n| (action, n.to_string())));
        }
    } else {
        for n in names {
            out.extend(per_member.iter().map(|a| (*a, n.to_string())));
        }
    }
    // A profile without a fence has no failover probe, and one without package files no package probe.
    out.retain(|(action, _)| profile.action(*action).is_some());
    out
}

fn preflight_decisions(state: &State, now: u64) -> Vec<Event> {
    let s = sub(state);
    // The fewest nodes a rolling upgrade can keep serving with, by the profile's quorum rule: a consensus among
    // the members needs a majority running while one is out (`n - 1 > n / 2`: 3); one kept elsewhere, 2.
    let min = s.profile.min_members;
    if state.steps.is_empty() && s.cluster.nodes.len() < min {
        return vec![wind_down(
            format!(
                "preflight refused: the cluster has {} node(s); a rolling upgrade needs at least {min}, \
                 because {}",
                s.cluster.nodes.len(),
                s.profile.hints.quorum
            ),
            now,
        )];
    }
    if state.steps.is_empty() {
        let missing: Vec<String> = s
            .cluster
            .nodes
            .iter()
            .filter(|n| !s.executors_online.contains(&n.executor))
            .map(|n| format!("{} (group {})", n.name, n.executor))
            .collect();
        if !missing.is_empty() {
            return vec![wind_down(
                format!(
                    "preflight refused: no online executor for {}",
                    missing.join(", ")
                ),
                now,
            )];
        }
    }
    let probes = preflight_probes(state);
    if state.preflight_passed < probes.len() {
        return schedule_probes(state, &probes, state.preflight_passed, now);
    }
    let Some(cluster) = &state.preflight_cluster else {
        return vec![wind_down(
            "preflight refused: no cluster-status observation".into(),
            now,
        )];
    };
    let Some(leader) = cluster.sole_leader() else {
        return vec![wind_down(
            "preflight refused: not exactly one leader".into(),
            now,
        )];
    };
    let guids = cluster
        .members
        .iter()
        .map(|m| (m.node.clone(), m.id.clone()))
        .collect();
    let inputs = PlanInputs {
        cluster: &s.cluster,
        profile: &s.profile,
        package: &s.package,
        target_version: &s.target_version,
        gates: &s.gates,
        leader,
        guids,
        versions: state.versions.clone(),
        running: state.running_versions.clone(),
    };
    let plan = match compute_plan(&inputs) {
        Ok(p) => p,
        Err(e) => {
            return vec![wind_down(
                format!("preflight refused: cannot compute the plan: {e}"),
                now,
            )]
        }
    };
    if plan
        .items
        .iter()
        .any(|i| matches!(i, PlanItem::VerifySwitchover { .. }))
        && s.cluster.nodes.len() < 2
    {
        return vec![wind_down(
            "preflight refused: the leader cannot be upgraded without a follower".into(),
            now,
        )];
    }
    let plan_hash = plan.hash();
    let empty = plan.items.is_empty();
    let mut out = vec![Event::PlanComputed {
        plan,
        plan_hash: plan_hash.clone(),
    }];
    if s.plan_only {
        return out;
    }
    if let Some(expected) = &s.expected_plan_hash {
        if *expected != plan_hash {
            out.push(wind_down(
                format!("plan hash mismatch: expected {expected}, computed {plan_hash}; the cluster changed since the plan was reviewed"),
                now,
            ));
            return out;
        }
    }
    if empty {
        out.push(Event::UpgradeCompleted { at_ms: now });
    }
    out
}

/// The probes a checking item runs, in order. `cluster-status` always comes first, so a lost leader is seen
/// (and the emergency exit can act) even while a node is still syncing; cluster-wide probes are asked of a live
/// node (`observer`), not of the node the plan named when it was made.
fn item_probes(state: &State, item: &PlanItem) -> Vec<(Action, String)> {
    let leader = |fallback: &str| {
        state
            .last_cluster
            .as_ref()
            .and_then(|c| c.sole_leader())
            .unwrap_or(fallback)
            .to_string()
    };
    match item {
        PlanItem::WaitSynced { node, .. } => with_running_version(
            state,
            vec![
                (Action::ProbeClusterStatus, node.clone()),
                (Action::ProbeStatus, node.clone()),
                (Action::ProbeVersion, node.clone()),
            ],
        ),
        PlanItem::VerifySwitchover {
            old_leader,
            via: target,
            ..
        } => {
            let via = observer(state, Some(old_leader));
            // Until this item's own topology is judged, the last one seen named the old leader: the new leader's
            // probes, asked in one round with that topology, go to the switchover's target, which is what the
            // topology must show (if it shows another, the round's next probe no longer matches and the checks
            // start again after a poll, `round_decisions`).
            let leader = match state.last_cluster.as_ref().and_then(|c| c.sole_leader()) {
                Some(l) if l != old_leader => l.to_string(),
                _ => target.clone(),
            };
            // Roles alone are not enough (a follower re-syncing to the new leader shows `follower`): the new
            // leader's own `status` must show every follower synced.
            with_running_version(
                state,
                vec![
                    (Action::ProbeClusterStatus, via),
                    (Action::ProbeVersion, leader.clone()),
                    (Action::ProbeStatus, leader),
                ],
            )
        }
        PlanItem::VerifyStable { .. } => {
            let via = observer(state, None);
            let leader = leader(&via);
            vec![
                (Action::ProbeClusterStatus, via),
                (Action::ProbeStatus, leader),
            ]
        }
        PlanItem::Run { action, node, .. } => guard_probes(state, *action, node),
        PlanItem::Gate { .. } => vec![],
    }
}

/// The halt of an upgrade whose recorded profile no longer loads (a log carried over from another version of
/// Baton, the draft format having changed): no action can be rendered, not even the one that re-enables
/// failover. It names what the operator must look at: a step still without a result, a node this upgrade may
/// have left stopped, and the plan's own rendered `unblock_failover` command if failover is still blocked.
fn profile_error_halt(state: &State, s: &Submission, error: &str, now: u64) -> Event {
    let mut reason = format!(
        "the profile `{}` recorded with this upgrade does not load in this version of Baton ({error}); this \
         version runs nothing more",
        s.cluster.profile
    );
    let in_flight: Vec<String> = state
        .steps
        .values()
        .filter(|r| r.outcome.is_none())
        .map(describe_step)
        .collect();
    if !in_flight.is_empty() {
        reason.push_str(&format!(
            "; still without a result (it may be running or have run): {}",
            in_flight.join("; ")
        ));
    }
    let stopped: Vec<&str> = s
        .cluster
        .nodes
        .iter()
        .map(|n| n.name.as_str())
        .filter(|n| state.left_stopped(n))
        .collect();
    if !stopped.is_empty() {
        reason.push_str(&format!(
            "; this upgrade may have left {} stopped",
            stopped.join(", ")
        ));
    }
    let unblock = state.plan.as_ref().and_then(|p| {
        p.items.iter().find_map(|i| match i {
            PlanItem::Run {
                action: Action::UnblockFailover,
                node,
                argv,
                ..
            } => Some(format!("`{}` on {node}", argv.join(" "))),
            _ => None,
        })
    });
    Event::UpgradeHalted {
        reason,
        failover_pending: state.failover_blocked.then(|| {
            format!(
                "automatic failover is still blocked by this upgrade: re-enable it by hand{}",
                unblock
                    .map(|u| format!(" (the approved plan's unblock_failover: {u})"))
                    .unwrap_or_default()
            )
        }),
        at_ms: now,
    }
}

/// A check of an upgraded node's version also asks the version its process runs, where the profile has that
/// probe: a `stop` that exited 0 but left the process running (or a `start` that found one still running) leaves
/// the old binary serving with the new one installed.
fn with_running_version(state: &State, mut probes: Vec<(Action, String)>) -> Vec<(Action, String)> {
    let has = state
        .sub
        .as_ref()
        .is_some_and(|s| s.profile.action(Action::ProbeRunningVersion).is_some());
    if has {
        if let Some((_, node)) = probes.iter().find(|(a, _)| *a == Action::ProbeVersion) {
            let node = node.clone();
            probes.push((Action::ProbeRunningVersion, node));
        }
    }
    probes
}

fn item_decisions(state: &State, now: u64) -> Vec<Event> {
    let plan = state.plan.as_ref().expect("checked by the caller");
    let Some(cursor) = &state.cursor else {
        let Some(item) = plan.items.get(state.items_done) else {
            return vec![Event::UpgradeCompleted { at_ms: now }];
        };
        let mut out = Vec::new();
        if item.phase() != state.phase {
            out.push(Event::PhaseEntered {
                phase: item.phase(),
                at_ms: now,
            });
        }
        out.push(Event::ItemStarted {
            index: state.items_done,
            at_ms: now,
        });
        return out;
    };
    let Some(item) = plan.items.get(cursor.index) else {
        return vec![];
    };
    match item {
        PlanItem::Run {
            node, action, argv, ..
        } => {
            if let Some(step) = cursor.step {
                let done = state
                    .steps
                    .get(&step)
                    .and_then(|r| r.outcome.as_ref())
                    .map(|o| o.outcome);
                if done == Some(Outcome::Succeeded) {
                    return vec![Event::ItemCompleted {
                        index: cursor.index,
                        at_ms: now,
                    }];
                }
                if cursor.retry != Some(step) {
                    return vec![];
                }
            }
            // The guard: fresh observations showing the action is safe now, then the action (or its next
            // attempt).
            let guard = guard_probes(state, *action, node);
            if cursor.checks_passed < guard.len() {
                return schedule_probes(state, &guard, cursor.checks_passed, now);
            }
            match cursor.step {
                None => one(schedule(state, *action, node, now, Some(argv)), now),
                Some(step) => reschedule(state, step, now),
            }
        }
        PlanItem::Gate { gate, .. } => {
            if state.approvals.contains(gate) {
                vec![Event::ItemCompleted {
                    index: cursor.index,
                    at_ms: now,
                }]
            } else if state.awaiting_gate != Some(*gate) {
                vec![Event::ApprovalRequested { gate: *gate }]
            } else {
                watch_decisions(state, now)
            }
        }
        _ => {
            let probes = item_probes(state, item);
            if cursor.checks_passed < probes.len() {
                return schedule_probes(state, &probes, cursor.checks_passed, now);
            }
            vec![Event::ItemCompleted {
                index: cursor.index,
                at_ms: now,
            }]
        }
    }
}

/// Preflight's refusals beyond health (which `problems_for` checks): versions that cannot roll, a package file
/// that is missing, unreadable or not the target, failover already off on the cluster or a node.
fn preflight_problems(state: &State, node: &str, observation: &Observation) -> Vec<String> {
    let s = sub(state);
    let target = s.target_version.as_str();
    match observation {
        Observation::Version { version, state } => version_problems(
            &s.profile,
            node,
            target,
            version.as_deref(),
            state.as_deref(),
        ),
        Observation::Running { version } => {
            version_problems(&s.profile, node, target, Some(version), None)
                .into_iter()
                .map(|p| format!("{p} (the version it runs now)"))
                .collect()
        }
        Observation::Package { version } if version != target => vec![format!(
            "the package file {} on {node} is version {version}, not the target {target}",
            s.package
        )],
        Observation::Fence { blocked: true } => vec![format!(
            "automatic failover is already blocked: someone else may be at work (Baton blocks it itself and \
             expects to find it allowed; `{}` allows it)",
            s.profile.hints.cluster_failover_on
        )],
        Observation::Failover { settings } => {
            let mut p = Vec::new();
            if !settings.cluster {
                p.push(
                    "cluster failover is already off: someone else may be at work (Baton blocks it itself and \
                     expects to find it on)"
                        .to_string(),
                );
            }
            for n in &s.cluster.nodes {
                match settings.nodes.get(&n.name) {
                    Some(true) => {}
                    Some(false) => p.push(format!(
                        "node-level failover is off on {} ({})",
                        n.name, s.profile.hints.node_failover_on
                    )),
                    None => p.push(format!(
                        "cannot tell whether node-level failover is on for {}",
                        n.name
                    )),
                }
            }
            p
        }
        _ => vec![],
    }
}

/// Problems an observation shows for the probe's purpose.
fn problems_for(
    state: &State,
    item: Option<&PlanItem>,
    action: Action,
    observation: &Observation,
) -> Vec<String> {
    let target = sub(state).target_version.as_str();
    match observation {
        Observation::Unavailable { error } => vec![format!("probe unavailable: {error}")],
        Observation::NodeStatus { .. } | Observation::Node { .. } => observation
            .node_health(node_count(state))
            .map(|h| h.problems)
            .unwrap_or_default(),
        Observation::ClusterStatus { .. } | Observation::Members { .. } => {
            let topology = observation.topology().unwrap_or_default();
            let mut p = cluster_problems(&topology, &node_names(state));
            // A profile's topology is its only cluster-wide view (its node probe sees one node): a member it
            // shows behind the leader is a problem here. chef-backend's leader `status` shows the same.
            if matches!(observation, Observation::Members { .. }) {
                p.extend(standing_problems(&topology));
            }
            if let Some(PlanItem::VerifySwitchover { old_leader, .. }) = item {
                if topology.sole_leader() == Some(old_leader.as_str()) {
                    p.push(format!("{old_leader} still leads: no switchover yet"));
                }
            }
            p
        }
        Observation::Version { version, state } => match item {
            // Preflight judges versions in `preflight_problems`.
            None => vec![],
            Some(_) if version.as_deref() == Some(target) && state.is_none() => vec![],
            Some(_) => vec![format!(
                "installed version {}{}, want {target}",
                version.as_deref().unwrap_or("(not installed)"),
                state
                    .as_deref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default()
            )],
        },
        Observation::Running { version } => match item {
            None => vec![],
            Some(_) if version == target => vec![],
            Some(_) => vec![format!(
                "running version {version}, want {target} (the process still runs the old binaries)"
            )],
        },
        Observation::Failover { .. } | Observation::Fence { .. } | Observation::Package { .. } => {
            vec![]
        }
    }
    .into_iter()
    .chain(match (action, observation) {
        (Action::ProbeVersion, Observation::Version { .. })
        | (Action::ProbeFailover, Observation::Failover { .. } | Observation::Fence { .. })
        | (Action::ProbePackage, Observation::Package { .. })
        | (Action::ProbeRunningVersion, Observation::Running { .. })
        | (Action::ProbeStatus, Observation::NodeStatus { .. } | Observation::Node { .. })
        | (
            Action::ProbeClusterStatus,
            Observation::ClusterStatus { .. } | Observation::Members { .. },
        )
        | (_, Observation::Unavailable { .. }) => None,
        _ => Some(format!("{action} produced an unexpected observation")),
    })
    .collect()
}

/// The probes that show whether an action took effect, in order (S4): the version for `install`, `status`
/// for `stop` and `start`, both for `upgrade`, `cluster-status` from another node for `demote` and
/// `upgrade_leader`. Empty: nothing in chef-backend's outputs shows it (`block_failover`, `unblock_failover`).
fn effect_probes(state: &State, record: &StepRecord) -> Vec<(Action, String)> {
    let node = record.scheduled.node.clone();
    match record.scheduled.action {
        Action::Install => vec![(Action::ProbeVersion, node)],
        Action::Stop | Action::Start => vec![(Action::ProbeStatus, node)],
        Action::Upgrade => vec![
            (Action::ProbeVersion, node.clone()),
            (Action::ProbeStatus, node),
        ],
        Action::Demote | Action::UpgradeLeader => vec![(
            Action::ProbeClusterStatus,
            observer(state, Some(node.as_str())),
        )],
        _ => vec![],
    }
}

/// When a step's latest attempt was scheduled (its deadline less its timeout and the result grace).
fn began_ms(state: &State, record: &StepRecord) -> u64 {
    let s = &record.scheduled;
    let grace = sub(state).cluster.upgrade.result_grace_ms;
    s.deadline_ms
        .saturating_sub(s.timeout_ms.saturating_add(grace))
}

/// What an observation says about the effect of the step in doubt: `Some(Ok(evidence))` it took effect,
/// `Some(Err(what))` it did not, `None` the observation cannot tell (the probe failed).
fn effect_shown(
    state: &State,
    doubt: &StepRecord,
    probe: &StepRecord,
    observation: &Observation,
) -> Option<Result<String, String>> {
    let probe_step = probe.scheduled.step;
    let node = doubt.scheduled.node.as_str();
    let target = sub(state).target_version.as_str();
    let nodes = node_count(state);
    let health = observation.node_health(nodes);
    let topology = observation.topology();
    Some(match (doubt.scheduled.action, observation) {
        (Action::Install | Action::Upgrade, Observation::Version { version, state }) => {
            match version.as_deref() {
                Some(v) if v == target && state.is_none() => Ok(format!(
                    "the version probe (step {probe_step}) shows {target} installed on {node}"
                )),
                other => Err(format!(
                    "the version probe (step {probe_step}) shows {} on {node}, want {target}",
                    other.unwrap_or("nothing installed")
                )),
            }
        }
        // Its database may be down as far as the node probe's service goes and still lead: a Patroni member whose
        // manager died mid-stop leaves an orphan primary running. Not stopped.
        (Action::Stop, _) if says_it_leads(observation) => Err(format!(
            "status (step {probe_step}) shows {node} still leading (its service down, its data still served)"
        )),
        (Action::Stop, _) if health.is_some() => {
            let health = health.as_ref()?;
            let down = health.not_running();
            if health.all_down() {
                Ok(format!(
                    "status (step {probe_step}) shows the services of {node} down"
                ))
            } else {
                Err(format!(
                    "status (step {probe_step}) shows services of {node} still running (down: {down:?})"
                ))
            }
        }
        (Action::Upgrade, _) if health.is_some() => {
            let health = health.as_ref()?;
            // The package was installed before `upgrade` ran, so the version alone does not show it: its
            // effect is a restart onto that version, i.e. every service running and in that state for less
            // time than has passed since the attempt began (a second of slack for the rounded output).
            let began = began_ms(state, doubt);
            let probed = began_ms(state, probe);
            let since = probed.saturating_sub(began);
            let down = health.not_running();
            let not_restarted: Vec<&str> = health
                .services
                .iter()
                .filter(|s| {
                    s.in_state_ms
                        .is_none_or(|t| t.saturating_add(1_000) > since)
                })
                .map(|s| s.name.as_str())
                .collect();
            if down.is_empty() && not_restarted.is_empty() {
                Ok(format!(
                    "the version probe showed {target} installed and status (step {probe_step}) shows the \
                     services of {node} running, restarted since the upgrade began"
                ))
            } else {
                Err(format!(
                    "status (step {probe_step}) does not show the services of {node} restarted onto the new \
                     version since the upgrade began {since} ms earlier (not running: {down:?}; not \
                     restarted: {not_restarted:?})"
                ))
            }
        }
        (Action::Start, _) if health.is_some() => {
            let down = health.as_ref()?.not_running();
            if down.is_empty() {
                Ok(format!(
                    "status (step {probe_step}) shows the services of {node} running"
                ))
            } else {
                Err(format!(
                    "status (step {probe_step}) shows services of {node} not running: {down:?}"
                ))
            }
        }
        (Action::Demote | Action::UpgradeLeader, _) if topology.is_some() => {
            let status = topology.as_ref()?;
            match status.sole_leader().filter(|l| *l != node) {
                Some(leader) => Ok(format!(
                    "cluster-status (step {probe_step}) shows {leader} as the sole leader, not {node}"
                )),
                // Deposed with nobody elected yet: the election may still be running. Not a "no effect" (a
                // retry would demote the next leader): `judge_reobservation` looks again.
                None if status.leaders().is_empty()
                    && status
                        .member(node)
                        .is_some_and(|m| m.role == MemberRole::Deposed) =>
                {
                    return None
                }
                None => Err(format!(
                    "the cluster does not show a new leader (leaders now: [{}])",
                    status.leaders().join(", ")
                )),
            }
        }
        _ => return None,
    })
}

/// Decides on an observation of the effect of a step in doubt (S4). Shown: the step is inferred to have
/// succeeded and its item completes. Not shown: an idempotent step is retried per its policy; a
/// non-idempotent one runs again only if an operator asked for a retry, else an operator settles it. A probe
/// that could not run is retried; if it never can, nothing is run again blind: a non-idempotent step goes to
/// an operator, an idempotent one halts.
fn judge_reobservation(
    state: &State,
    re: &Reobserve,
    probe: &StepRecord,
    observation: &Observation,
    now: u64,
) -> Vec<Event> {
    let Some(doubt) = state.steps.get(&re.step) else {
        return vec![];
    };
    let p = &probe.scheduled;
    let shown = effect_shown(state, doubt, probe, observation);
    let seen = match &shown {
        Some(Ok(evidence)) => {
            if re.checks_passed + 1 < effect_probes(state, doubt).len() {
                return vec![Event::CheckEvaluated {
                    step: p.step,
                    node: p.node.clone(),
                    passed: true,
                    problems: vec![],
                }];
            }
            let mut out = vec![Event::OutcomeInferred {
                step: re.step,
                evidence: evidence.clone(),
            }];
            if let Some(c) = &state.cursor {
                out.push(Event::ItemCompleted {
                    index: c.index,
                    at_ms: now,
                });
            }
            return out;
        }
        Some(Err(what)) => what.clone(),
        // The probe ran and the old leader is deposed, but nobody leads yet: an election in progress. Look
        // again after a poll, for as long as a node may take to sync.
        None if observation.is_topology()
            && doubt.outcome.as_ref().is_some_and(|o| {
                now < o
                    .at_ms
                    .saturating_add(sub(state).cluster.upgrade.sync_timeout_ms)
            }) =>
        {
            return vec![
                Event::CheckEvaluated {
                    step: p.step,
                    node: p.node.clone(),
                    passed: false,
                    problems: vec![format!(
                        "{} is deposed and no leader is elected yet; looking again",
                        doubt.scheduled.node
                    )],
                },
                Event::WaitStarted {
                    purpose: WaitPurpose::Poll,
                    until_ms: now.saturating_add(sub(state).cluster.upgrade.poll_interval_ms),
                },
            ];
        }
        None if may_retry(state, probe) => {
            return vec![Event::WaitStarted {
                purpose: WaitPurpose::Retry { step: p.step },
                until_ms: now.saturating_add(retry_delay(state, p.attempt)),
            }];
        }
        None if re.decides_alone => match observation {
            Observation::Unavailable { error } => {
                format!("the cluster could not be observed: {error}")
            }
            _ => "the old leader is deposed and still no leader was elected".to_string(),
        },
        None => {
            return vec![wind_down(
                format!(
                    "{} has an unknown outcome and its effect could not be observed, so it is not run again \
                     blind: {}; last probe: {}",
                    doubt.scheduled.action,
                    describe_step(doubt),
                    describe_step(probe)
                ),
                now,
            )]
        }
    };
    if re.decides_alone {
        if re.retry_if_not && shown.is_some() {
            // The operator asked for a retry and the effect is not there: run it again, after its guard.
            return vec![Event::WaitStarted {
                purpose: WaitPurpose::Retry { step: re.step },
                until_ms: now,
            }];
        }
        return vec![Event::VerificationRequired {
            step: re.step,
            reason: format!(
                "{}; {seen}; settle it with resolve --step {} succeeded|failed|retry",
                describe_step(doubt),
                re.step
            ),
        }];
    }
    if may_retry(state, doubt) {
        return vec![Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: re.step },
            until_ms: now.saturating_add(retry_delay(state, doubt.scheduled.attempt)),
        }];
    }
    vec![wind_down(
        format!(
            "{} failed and its retries are used up: {}; {seen}",
            doubt.scheduled.action,
            describe_step(doubt)
        ),
        now,
    )]
}

/// Decides on an observation just recorded.
fn judge(state: &State, step: u64, observation: &Observation, now: u64) -> Vec<Event> {
    let Some(record) = state.steps.get(&step) else {
        return vec![];
    };
    let s = &record.scheduled;
    if state.watching == Some(step) {
        return watch_judged(state, observation, now);
    }
    if let Some(re) = &state.reobserve {
        return judge_reobservation(state, re, record, observation, now);
    }
    let item = state.current_item().cloned();
    if let Some(PlanItem::Run { action, node, .. }) = &item {
        return judge_guard(state, record, *action, node, observation, now);
    }
    let mut problems = problems_for(state, item.as_ref(), s.action, observation);
    if item.is_none() {
        problems.extend(preflight_problems(state, &s.node, observation));
    }
    let passed = problems.is_empty();
    let check = Event::CheckEvaluated {
        step,
        node: s.node.clone(),
        passed,
        problems: problems.clone(),
    };
    if passed {
        return vec![check];
    }
    let Some(item) = item else {
        // Preflight: a probe that could not run is retried; a cluster that is not fit refuses the upgrade.
        if matches!(observation, Observation::Unavailable { .. }) && may_retry(state, record) {
            return vec![Event::WaitStarted {
                purpose: WaitPurpose::Retry { step },
                until_ms: now.saturating_add(retry_delay(state, s.attempt)),
            }];
        }
        return vec![
            check,
            wind_down(
                format!(
                    "preflight refused: {}; {}",
                    problems.join("; "),
                    describe_step(record)
                ),
                now,
            ),
        ];
    };
    if let Some(exit) = emergency_exit(state, observation, now) {
        return vec![check, exit];
    }
    let cursor = state.cursor.as_ref().expect("an item is in progress");
    let sync_timeout = sub(state).cluster.upgrade.sync_timeout_ms;
    if now >= cursor.started_ms.saturating_add(sync_timeout)
        && !unanswered_grace(state, cursor.started_ms, observation, now)
    {
        let what = match &item {
            PlanItem::WaitSynced { node, .. } => {
                format!("{node} did not become healthy, synced and upgraded")
            }
            PlanItem::VerifySwitchover { old_leader, .. } => {
                format!("the switchover away from {old_leader} was not confirmed")
            }
            _ => "the cluster did not become stable".to_string(),
        };
        return vec![
            check,
            wind_down(
                format!(
                    "{what} within {sync_timeout} ms; last check failed: {}; {}",
                    problems.join("; "),
                    describe_step(record)
                ),
                now,
            ),
        ];
    }
    let until_ms = now.saturating_add(sub(state).cluster.upgrade.poll_interval_ms);
    vec![
        check,
        Event::WaitStarted {
            purpose: WaitPurpose::Poll,
            until_ms,
        },
    ]
}

/// Judges an observation of the guard before `action` on `target` (see `guard`): pass, poll, halt because the
/// cluster changed under the plan, or take the emergency exit.
fn judge_guard(
    state: &State,
    probe: &StepRecord,
    action: Action,
    target: &str,
    observation: &Observation,
    now: u64,
) -> Vec<Event> {
    let p = &probe.scheduled;
    let cursor = state.cursor.as_ref().expect("a guard runs inside an item");
    if p.step < cursor.fresh_from {
        // Asked before the last resume: stale. The guard starts again.
        return vec![Event::WaitStarted {
            purpose: WaitPurpose::Poll,
            until_ms: now,
        }];
    }
    let finding = guard_finding(state, action, target, &p.node, observation);
    let problems = match &finding {
        Finding::Pass => vec![],
        Finding::Settle(p) | Finding::Leaderless(p) => p.clone(),
        Finding::Changed(what) => vec![what.clone()],
    };
    let check = Event::CheckEvaluated {
        step: p.step,
        node: p.node.clone(),
        passed: problems.is_empty(),
        problems: problems.clone(),
    };
    if finding == Finding::Pass {
        return vec![check];
    }
    if let Finding::Changed(what) = finding {
        return vec![
            check,
            wind_down(
                format!(
                    "the cluster changed under the plan, so `{action}` on {target} was not run: {what} \
                     (observed by {}); halting instead of acting on a stale picture",
                    describe_probe(probe)
                ),
                now,
            ),
        ];
    }
    if let Some(exit) = emergency_exit(state, observation, now) {
        return vec![check, exit];
    }
    let sync_timeout = sub(state).cluster.upgrade.sync_timeout_ms;
    if now >= cursor.started_ms.saturating_add(sync_timeout)
        && !unanswered_grace(state, cursor.started_ms, observation, now)
    {
        return vec![
            check,
            wind_down(
                format!(
                    "`{action}` on {target} was not run: the cluster did not become safe for it within \
                     {sync_timeout} ms: {} (last: {})",
                    problems.join("; "),
                    describe_probe(probe)
                ),
                now,
            ),
        ];
    }
    vec![
        check,
        Event::WaitStarted {
            purpose: WaitPurpose::Poll,
            until_ms: now.saturating_add(sub(state).cluster.upgrade.poll_interval_ms),
        },
    ]
}

/// While the upgrade waits for an operator (paused, at a gate) with failover blocked, it keeps watching
/// `cluster-status` every poll interval, so that a leader lost meanwhile is met by the emergency exit rather than
/// by an outage that lasts until someone comes back. A watch never counts as a guard: the guard runs afresh after
/// the wait.
fn watch_decisions(state: &State, now: u64) -> Vec<Event> {
    if !state.failover_blocked || state.resolution.is_some() {
        return vec![];
    }
    if let Some(current) = state.current {
        if state.watching != Some(current) {
            // A probe that was out when the wait began and has answered since: record what it saw (the guard
            // will not use it: it starts again after the wait) so that the watch can start. An action's result
            // waits for the end of the wait, as it always has.
            return match state.current_record() {
                Some(r) if r.outcome.is_some() && r.scheduled.action.is_probe() => {
                    vec![Event::ObservationRecorded {
                        step: current,
                        node: r.scheduled.node.clone(),
                        observation: observe(state, r),
                    }]
                }
                _ => vec![],
            };
        }
        if let Some(record) = state.current_record().filter(|r| r.outcome.is_some()) {
            return vec![Event::ObservationRecorded {
                step: current,
                node: record.scheduled.node.clone(),
                observation: observe(state, record),
            }];
        }
        return vec![];
    }
    if let Some((step, observation)) = &state.last_observation {
        if state.watching == Some(*step) {
            return watch_judged(state, observation, now);
        }
    }
    if let Some((WaitPurpose::Poll, until)) = &state.wait {
        if now < *until {
            return vec![];
        }
    }
    one(
        schedule(
            state,
            Action::ProbeClusterStatus,
            &watch_observer(state),
            now,
            None,
        ),
        now,
    )
}

/// Whom the watch asks: every other look, the member the latest topology names as leader when Baton could not
/// reach it (`State::leader_vouched`), so that a leader that is alive is reachable again and vouches for itself
/// rather than start the emergency clock; else the usual `observer`, which avoids unreachable members.
fn watch_observer(state: &State) -> String {
    let unvouched = state
        .last_cluster
        .as_ref()
        .and_then(|c| c.sole_leader())
        .filter(|leader| state.unreachable.contains(*leader))
        .filter(|leader| sub(state).cluster.node(leader).is_some());
    let last_asked = state
        .steps
        .values()
        .next_back()
        .map(|r| r.scheduled.node.as_str());
    match unvouched {
        Some(leader) if last_asked != Some(leader) => leader.to_string(),
        _ => observer(state, None),
    }
}

fn watch_judged(state: &State, observation: &Observation, now: u64) -> Vec<Event> {
    if let Some(exit) = emergency_exit(state, observation, now) {
        return vec![exit];
    }
    vec![Event::WaitStarted {
        purpose: WaitPurpose::Poll,
        until_ms: now.saturating_add(sub(state).cluster.upgrade.poll_interval_ms),
    }]
}

/// `probe_cluster_status on backend-2 (step 14)`, for reasons.
fn describe_probe(record: &StepRecord) -> String {
    let s = &record.scheduled;
    format!("{} on {} (step {})", s.action, s.node, s.step)
}

/// S3's emergency exit: this upgrade has failover blocked and `cluster-status` has shown no single leader for
/// longer than the election window. Nobody can be elected while failover is off, so waiting longer only makes
/// the outage longer: re-enable failover at once, on any live node, then halt.
fn emergency_exit(state: &State, observation: &Observation, now: u64) -> Option<Event> {
    emergency_for(state, &observation.topology()?, now)
}

/// The emergency exit when its time comes while a probe is still out (a probe of a dead node can take its whole
/// deadline): the latest `cluster-status` showed no leader, and the election window has passed since then.
fn emergency_by_time(state: &State, now: u64) -> Option<Event> {
    let in_flight_action = state
        .current_record()
        .is_some_and(|r| r.outcome.is_none() && !r.scheduled.action.is_probe());
    if in_flight_action {
        return None;
    }
    emergency_for(state, state.last_cluster.as_ref()?, now)
}

fn emergency_for(state: &State, status: &Topology, now: u64) -> Option<Event> {
    if !state.failover_blocked || state.leader_vouched(status).is_some() {
        return None;
    }
    if state
        .wind_down
        .as_ref()
        .is_some_and(|w| w.cause == WindDownCause::Emergency)
    {
        return None;
    }
    let since = state.leaderless_since?;
    let window = sub(state).election_window_ms();
    if now < state.emergency_due_ms(status)? {
        return None;
    }
    let leaders = status.leaders();
    let old = state
        .new_leader
        .clone()
        .or_else(|| state.plan.as_ref().map(|p| p.leader.clone()))
        .unwrap_or_default();
    // A wind-down already under way keeps its cause at the front of the reason.
    let before = state
        .wind_down
        .as_ref()
        .map(|w| format!("{}; then ", w.reason))
        .unwrap_or_default();
    // A leader that only another member's picture still names (`State::leader_vouched`).
    let reason = match status.sole_leader() {
        Some(leader) => format!(
            "{before}emergency exit: for {} ms, longer than the election window of {window} ms, while this upgrade \
             waited for an operator with failover blocked, the only leader the cluster showed was {leader}, named by \
             another member's view (possibly an old picture: a member cut off from the others keeps serving the one \
             it had), and {leader} itself gave no answer or refused each time it was asked (its host may be down, or \
             only Baton's executor there: check {leader}); failover is re-enabled at once so that the cluster can \
             elect a leader if it has none",
            now.saturating_sub(since)
        ),
        None => format!(
            "{before}emergency exit: the cluster has had no single leader for {} ms (leaders now: [{}]; expected \
             {old}) while this upgrade had failover blocked, longer than the election window of {window} ms; \
             failover is re-enabled at once so that the cluster can elect a leader",
            now.saturating_sub(since),
            leaders.join(", ")
        ),
    };
    Some(Event::WindDownStarted {
        cause: WindDownCause::Emergency,
        reason,
        at_ms: now,
    })
}

/// A wind-down: drain what is outstanding; bring back the node this upgrade had out of service
/// (`recovery_decisions`); then re-enable failover once the failover gate passes (`failover_gate`), or end with
/// `failover_pending` saying why not. Nothing of the plan runs any more.
fn wind_down_decisions(state: &State, now: u64) -> Vec<Event> {
    let w = state.wind_down.as_ref().expect("checked by the caller");
    let s = sub(state);
    let sync_timeout = s.cluster.upgrade.sync_timeout_ms;
    let end = |pending: Option<String>| {
        let reason = if pending.is_none() && !w.left.is_empty() {
            format!(
                "{}; failover was re-enabled although: {}",
                w.reason,
                w.left.join("; ")
            )
        } else {
            w.reason.clone()
        };
        match w.cause {
            WindDownCause::Abort => Event::UpgradeAborted {
                reason,
                failover_pending: pending,
                at_ms: now,
            },
            WindDownCause::Failure | WindDownCause::Emergency => Event::UpgradeHalted {
                reason,
                failover_pending: pending,
                at_ms: now,
            },
        }
    };
    if let Some(record) = state.current_record() {
        let r = &record.scheduled;
        if r.action.is_probe() {
            return vec![Event::ObservationRecorded {
                step: r.step,
                node: r.node.clone(),
                observation: observe(state, record),
            }];
        }
        let ok = record
            .outcome
            .as_ref()
            .is_some_and(|o| o.outcome == Outcome::Succeeded);
        if r.action == Action::Start {
            // Bringing a node back: a success goes on to its checks, a failure out of retries ends the
            // recovery (`recovery_decisions`); neither ends the wind-down here.
            if !ok && may_retry(state, record) {
                return vec![Event::WaitStarted {
                    purpose: WaitPurpose::Retry { step: r.step },
                    until_ms: now.saturating_add(retry_delay(state, r.attempt)),
                }];
            }
        } else {
            // The emergency exit re-enabled failover first; the node it had out is brought back next.
            let recovery_next = w.cause == WindDownCause::Emergency && w.recover.is_some();
            if ok && !recovery_next {
                return vec![end(None)];
            }
            if ok {
                return recovery_decisions(state, w, w.recover.as_deref().unwrap_or_default(), now);
            }
            // A failed unblock is tried again as a new step on a node picked afresh (the one that failed may be
            // the dead leader), after the failover gate has looked again; the tries are counted across steps.
            let tries = state
                .steps
                .range(w.first_step..)
                .filter(|(_, r)| r.scheduled.action == Action::UnblockFailover)
                .count() as u32;
            // The emergency exit keeps trying for as long as a node may take to sync (etcd may be without its
            // quorum until someone brings a node back); otherwise the retry policy.
            let emergency_time_left = w.cause == WindDownCause::Emergency
                && now
                    < w.started_ms
                        .saturating_add(s.cluster.upgrade.sync_timeout_ms);
            if tries <= s.cluster.upgrade.retries || emergency_time_left {
                return vec![Event::WaitStarted {
                    purpose: WaitPurpose::Poll,
                    until_ms: now.saturating_add(retry_delay(state, tries.min(4))),
                }];
            }
            if recovery_next {
                // Failover could not be re-enabled (etcd may have lost its quorum with our node out): bring
                // that node back first; the emergency exit then tries again.
                return recovery_decisions(state, w, w.recover.as_deref().unwrap_or_default(), now);
            }
            return vec![end(Some(format!(
                "unblocking failover failed: {}",
                describe_step(record)
            )))];
        }
    }
    if let Some((step, observation)) = &state.last_observation {
        let Some(record) = state.steps.get(step) else {
            return vec![];
        };
        if let Some(events) = emergency_word_judged(state, w, record, observation) {
            return events;
        }
        if let Some(events) = emergency_look_judged(state, w, record, observation, now) {
            return events;
        }
        let action = record.scheduled.action;
        let (blocking, other) = match &w.recover {
            Some(_) => (problems_for(state, None, action, observation), vec![]),
            None => failover_gate(state, action, observation),
        };
        let passed = blocking.is_empty();
        let check = Event::CheckEvaluated {
            step: *step,
            node: record.scheduled.node.clone(),
            passed,
            problems: blocking.iter().chain(&other).cloned().collect(),
        };
        if passed {
            return vec![check];
        }
        if let Some(exit) = emergency_exit(state, observation, now) {
            return vec![check, exit];
        }
        if let Some(node) = &w.recover {
            let began = recovery_started_ms(state, w, node);
            if now >= began.saturating_add(sync_timeout)
                && !unanswered_grace(state, began, observation, now)
            {
                return vec![
                    check,
                    wind_down_again(
                        w,
                        format!(
                            "{node} was not brought back into service: not healthy and synced within \
                             {sync_timeout} ms: {}",
                            blocking.join("; ")
                        ),
                        now,
                    ),
                ];
            }
        } else if now >= w.started_ms.saturating_add(sync_timeout)
            && !keep_looking(state, w, observation, now)
        {
            // No leader could be confirmed at all (none shown, or the cluster could not be observed): holding
            // failover off any longer only keeps the cluster from electing one. Re-enable it, as the emergency
            // exit does. With a leader but nobody electable, it stays off and the end says why.
            let no_leader_seen = match observation {
                Observation::Unavailable { .. } => true,
                other => other
                    .topology()
                    .is_some_and(|status| status.sole_leader().is_none()),
            };
            if no_leader_seen && state.failover_blocked && w.cause != WindDownCause::Emergency {
                return vec![
                    check,
                    Event::WindDownStarted {
                        cause: WindDownCause::Emergency,
                        reason: format!(
                            "{}; then no leader could be confirmed within {sync_timeout} ms ({}), so failover is \
                             re-enabled rather than left off",
                            w.reason,
                            blocking.join("; ")
                        ),
                        at_ms: now,
                    },
                ];
            }
            return vec![
                check,
                end(Some(format!(
                    "failover is still blocked: the cluster was not healthy enough within {sync_timeout} ms to \
                     re-enable it (it needs exactly one leader, that leader's services running and a synced \
                     follower to elect), so it was not re-enabled (run `{}` once it is): {}",
                    sub(state).profile.hints.cluster_failover_on,
                    blocking.iter().chain(&other).cloned().collect::<Vec<_>>().join("; ")
                ))),
            ];
        }
        return vec![
            check,
            Event::WaitStarted {
                purpose: WaitPurpose::Poll,
                until_ms: now.saturating_add(s.cluster.upgrade.poll_interval_ms),
            },
        ];
    }
    if let Some((purpose, until)) = &state.wait {
        if now < *until {
            return vec![];
        }
        if let WaitPurpose::Retry { step } = purpose {
            return reschedule(state, *step, now);
        }
    }
    if w.cause == WindDownCause::Emergency && state.failover_blocked {
        // No gate: the cluster has no leader and cannot elect one while failover is off. Only the members' own
        // word, if the profile's node probe gives it, is asked first (`emergency_word`).
        match emergency_word(state, w) {
            Word::Ask(from) => {
                // One round where the profile asks for rounds, else one member at a time.
                match try_schedule_probes(state, &emergency_probes(state), from, now) {
                    Ok(events) => return events,
                    // Cannot ask the rest (not reachable today: preflight rendered the same probe for every
                    // member). Fail safe: a member that already said it leads keeps the fence up.
                    Err(_) => {
                        let leaders = words_asked(state, w)
                            .into_iter()
                            .filter(|r| r.outcome.is_some() && says_it_leads(&observe(state, r)))
                            .collect::<Vec<_>>();
                        if !leaders.is_empty() {
                            let shown = shown_leaders(state.last_cluster.as_deref());
                            return vec![emergency_halt(state, w, &leaders, &shown, now)];
                        }
                    }
                }
            }
            Word::Awaited => return vec![],
            // Every member answered, nobody leads, and the words counted as the wind-down's passed checks: count
            // from zero again (a poll of no length) before what follows checks by that count (a recovery's probes
            // after the unblock).
            Word::NotNeeded if w.checks_passed > 0 && words_last(state, w) => {
                return vec![Event::WaitStarted {
                    purpose: WaitPurpose::Poll,
                    until_ms: now,
                }];
            }
            // A member said it leads: the fence stays up for now (`emergency_leads`).
            Word::Leads(leaders) => return emergency_leads(state, w, &leaders, now),
            Word::NotNeeded => {}
        }
        // Through a member that has just answered its ask, when the usual observer is one that did not (its
        // host may be dead, and the unblock would wait out a whole action deadline there first).
        let mut via = observer(state, None);
        if state.unreachable.contains(&via) {
            if let Some(r) = words_asked(state, w)
                .into_iter()
                .find(|r| !state.unreachable.contains(&r.scheduled.node))
            {
                via = r.scheduled.node.clone();
            }
        }
        return match schedule(state, Action::UnblockFailover, &via, now, None) {
            Ok(e) => vec![e],
            Err(why) => vec![end(Some(format!(
                "cannot schedule unblocking failover: {why}"
            )))],
        };
    }
    if let Some(node) = &w.recover {
        return recovery_decisions(state, w, node, now);
    }
    if !state.failover_blocked {
        return vec![end(None)];
    }
    let via = observer(state, None);
    let action = match w.checks_passed {
        0 => Some((Action::ProbeClusterStatus, via.clone())),
        // The leader's own `status`: the leader the gate's `cluster-status` just showed.
        1 => Some((
            Action::ProbeStatus,
            gate_leader(state).unwrap_or(via.clone()),
        )),
        _ => None,
    };
    if let Some((action, node)) = action {
        return match schedule(state, action, &node, now, None) {
            Ok(e) => vec![e],
            Err(why) => vec![end(Some(format!("cannot observe the cluster: {why}")))],
        };
    }
    match schedule(state, Action::UnblockFailover, &via, now, None) {
        Ok(e) => vec![e],
        Err(why) => vec![end(Some(format!(
            "cannot schedule unblocking failover: {why}"
        )))],
    }
}

/// The members whose own word the emergency exit asks before it lifts the fence, in the order asked: the leader
/// the plan expects now first, then every other member of the cluster file. Empty unless the profile's node probe
/// says whether a member leads (`leader_when`). Every member, not only the expected leader: leadership may have
/// moved where the plan does not know yet (a switchover's target promoted, then its cluster manager dead while
/// its database still takes writes: the expected leader, still the old one, says "replica"). A member this
/// upgrade stopped is asked too: "stopped" is this upgrade's belief, and its probe fails fast if it holds.
fn emergency_asks(state: &State) -> Vec<String> {
    if !sub(state).profile.node_probe_says_leader() {
        return vec![];
    }
    let expected = state
        .new_leader
        .clone()
        .or_else(|| state.plan.as_ref().map(|p| p.leader.clone()))
        .filter(|n| sub(state).cluster.node(n).is_some());
    let others = node_names(state)
        .into_iter()
        .filter(|n| expected.as_deref() != Some(*n))
        .map(str::to_string)
        .collect::<Vec<_>>();
    expected.into_iter().chain(others).collect()
}

/// The emergency exit's asks as probes (`emergency_asks`).
fn emergency_probes(state: &State) -> Vec<(Action, String)> {
    emergency_asks(state)
        .into_iter()
        .map(|n| (Action::ProbeStatus, n))
        .collect()
}

/// The words asked in this wind-down so far: its first steps, for as long as each is the node probe of the member
/// `emergency_asks` names at its place (a round keeps that order: consecutive step ids), in step order.
fn words_asked<'a>(state: &'a State, w: &WindDown) -> Vec<&'a StepRecord> {
    let asks = emergency_asks(state);
    state
        .steps
        .range(w.first_step..)
        .map(|(_, r)| r)
        .zip(&asks)
        .take_while(|(r, node)| {
            r.scheduled.action == Action::ProbeStatus && r.scheduled.node == **node
        })
        .map(|(r, _)| r)
        .collect()
}

/// Whether this wind-down asked words and scheduled nothing after them.
fn words_last(state: &State, w: &WindDown) -> bool {
    let words = words_asked(state, w).len();
    words > 0 && state.steps.range(w.first_step..).count() == words
}

/// Before the emergency exit lifts the fence: what it still needs of the members' own word. A leader cut off
/// from the others (Patroni's primary from its DCS, while paused) still serves, and the topology, read from the
/// others' side, shows no leader: lifting the fence then lets the others elect a second one. So when the
/// profile's node probe says whether a member leads (`leader_when`), every member (`emergency_asks`) is asked
/// before failover is re-enabled, all at once where the profile asks for probe rounds, and each answer is judged
/// (`emergency_word_judged`); the verdict waits for every answer. A member that is really gone costs its probe's
/// time (a refused connection at once; a dead host its deadline, once for the whole round).
fn emergency_word<'a>(state: &'a State, w: &WindDown) -> Word<'a> {
    let asks = emergency_asks(state);
    if asks.is_empty() {
        return Word::NotNeeded;
    }
    let words = words_asked(state, w);
    if words.is_empty() {
        // The wind-down began with something else (another version's log): the members were not asked in it.
        return if state.steps.range(w.first_step..).next().is_some() {
            Word::NotNeeded
        } else {
            Word::Ask(0)
        };
    }
    if words.iter().any(|r| r.outcome.is_none()) {
        return Word::Awaited;
    }
    if words.len() < asks.len() && words_last(state, w) {
        return Word::Ask(words.len());
    }
    let leaders: Vec<&StepRecord> = words
        .into_iter()
        .filter(|r| says_it_leads(&observe(state, r)))
        .collect();
    if leaders.is_empty() {
        Word::NotNeeded
    } else {
        Word::Leads(leaders)
    }
}

/// What the emergency exit still needs of the members' own word (`emergency_word`).
enum Word<'a> {
    /// Ask the members of `emergency_asks` from this place on (the wind-down's first steps).
    Ask(usize),
    /// A word is still out.
    Awaited,
    /// Every member was asked, and these said they lead: failover stays blocked.
    Leads(Vec<&'a StepRecord>),
    /// Asked and nobody leads (no answer, a failed probe, not leading), or the profile cannot tell.
    NotNeeded,
}

fn says_it_leads(observation: &Observation) -> bool {
    matches!(
        observation,
        Observation::Node {
            leads: Some(true),
            ..
        }
    )
}

/// What a member's word that it leads means, for the check and the halt; `shown` is what the cluster's topology
/// shows (`shown_leaders`).
fn leads_problem(record: &StepRecord, shown: &str) -> String {
    format!(
        "{node}'s own node probe ({probe}) says it still leads while {shown}: it may be serving while cut off \
         from the others or without its cluster manager, and re-enabling failover now could elect a second leader",
        node = record.scheduled.node,
        probe = describe_probe(record)
    )
}

/// What a topology shows of the leader, for `leads_problem`: "the cluster shows no leader" (also when there is
/// none to read), "the cluster shows pg3 as its leader", "the cluster shows 2 leaders (pg1, pg3)".
fn shown_leaders(topology: Option<&Topology>) -> String {
    let leaders = topology.map(Topology::leaders).unwrap_or_default();
    match leaders.as_slice() {
        [] => "the cluster shows no leader".to_string(),
        [one] => format!("the cluster shows {one} as its leader"),
        many => format!(
            "the cluster shows {} leaders ({})",
            many.len(),
            many.join(", ")
        ),
    }
}

/// A member said it leads (`Word::Leads`), so failover stays blocked for now. Two things come before the halt.
///
/// First, a node this upgrade left stopped is started (bringing it back is right whatever happens next), and the
/// wind-down restarts and asks every member again as soon as the `start` has run (`wind_down_again`), without
/// waiting for the node to sync: syncing needs a leader the others can reach, which a cut-off leader is not, so
/// that wait would last the whole `sync_timeout_ms` (600 s by default) with the status "winding down" and then
/// halt anyway; the operator learns now, and the halt says the node may not be synced yet (`started_unsynced`).
/// (The ordinary recovery, with its sync wait, still follows an unblock: `recovery_decisions`.)
///
/// Then, when exactly one member says it leads, the topology is read again, from another live member
/// (`emergency_look`), so that the halt says what the cluster shows now (a partition may have healed meanwhile:
/// `emergency_look_judged`); it never lifts the fence. When several say they lead, the halt comes at once.
fn emergency_leads(state: &State, w: &WindDown, leaders: &[&StepRecord], now: u64) -> Vec<Event> {
    if let Some(node) = w.recover.as_deref() {
        let note = match recovery_start(state, w, node) {
            None if state.left_stopped(node) => {
                return match schedule(state, Action::Start, node, now, None) {
                    Ok(e) => vec![e],
                    Err(why) => vec![wind_down_again(
                        w,
                        format!("{node} was not brought back into service: cannot schedule its start: {why}"),
                        now,
                    )],
                };
            }
            Some(r) if r.outcome.as_ref().map(|o| o.outcome) == Some(Outcome::Succeeded) => Some(format!(
                "{node} was started again (step {}) and not waited on to sync: a member says it leads while the \
                 cluster shows no leader, and syncing needs a leader the others can reach",
                r.scheduled.step
            )),
            Some(r) => Some(format!(
                "{node} was not brought back into service: {}",
                describe_step(r)
            )),
            // Not stopped (it was already starting again): nothing to start; the halt names it unconfirmed.
            None => None,
        };
        if let Some(note) = note {
            return vec![wind_down_again(w, note, now)];
        }
    }
    let [one] = leaders else {
        let shown = shown_leaders(state.last_cluster.as_deref());
        return vec![emergency_halt(state, w, leaders, &shown, now)];
    };
    let via = observer(state, Some(&one.scheduled.node));
    match schedule(state, Action::ProbeClusterStatus, &via, now, None) {
        Ok(e) => vec![e],
        Err(_) => {
            let shown = shown_leaders(state.last_cluster.as_deref());
            vec![emergency_halt(state, w, leaders, &shown, now)]
        }
    }
}

/// The topology the emergency exit read after the members' words (`emergency_leads`): the step right after them.
fn emergency_look<'a>(state: &'a State, w: &WindDown) -> Option<&'a StepRecord> {
    if w.cause != WindDownCause::Emergency || !state.failover_blocked {
        return None;
    }
    let words = words_asked(state, w).len();
    if words == 0 {
        return None;
    }
    state
        .steps
        .range(w.first_step..)
        .nth(words)
        .map(|(_, r)| r)
        .filter(|r| r.scheduled.action == Action::ProbeClusterStatus)
}

/// Judges the emergency exit's last look (`emergency_look`), the topology read again after one member said it
/// leads: a failed check and the halt, with the fence up, saying what the cluster shows now. The look never ends
/// the emergency: it is one member's view of the cluster (Patroni's GET /cluster is its own DCS cache, and a
/// member cut off with the leader keeps showing the old picture), so a view that shows the member that says it
/// leads as the one leader again (the partition may have healed) is not proof that the others follow it, and
/// lifting the fence on it could let them elect a second leader beside one still cut off (hostile review 11).
/// The halt says so, and the operator, who can look from every side, re-enables failover.
fn emergency_look_judged(
    state: &State,
    w: &WindDown,
    record: &StepRecord,
    observation: &Observation,
    now: u64,
) -> Option<Vec<Event>> {
    let look = emergency_look(state, w)?;
    if look.scheduled.step != record.scheduled.step {
        return None;
    }
    let Word::Leads(leaders) = emergency_word(state, w) else {
        return None;
    };
    let topology = observation.topology();
    let s = &record.scheduled;
    let healed = match (
        topology.as_ref().and_then(Topology::sole_leader),
        leaders.as_slice(),
    ) {
        (Some(leader), [one]) => one.scheduled.node == leader,
        _ => false,
    };
    let shown = match &topology {
        Some(t) if healed => format!(
            "{} again in {}'s view (the partition may have healed, but one member's view does not show that the \
             others follow it)",
            shown_leaders(Some(t)),
            s.node
        ),
        Some(t) => shown_leaders(Some(t)),
        None => format!(
            "the cluster shows no leader (and {} could not read it again)",
            describe_probe(record)
        ),
    };
    let problems = leaders.iter().map(|r| leads_problem(r, &shown)).collect();
    Some(vec![
        Event::CheckEvaluated {
            step: s.step,
            node: s.node.clone(),
            passed: false,
            problems,
        },
        emergency_halt(state, w, &leaders, &shown, now),
    ])
}

/// The node of this upgrade's that runs again unconfirmed when the emergency exit halts: the one this wind-down
/// was to bring back and found running, or the one the wind-down before it started just before this one began
/// (`emergency_leads`: the step before this wind-down's first is that successful `start`). Nobody waited for it
/// to sync.
fn started_unsynced<'a>(state: &'a State, w: &'a WindDown) -> Option<&'a str> {
    if let Some(node) = w.recover.as_deref() {
        return (!state.left_stopped(node)).then_some(node);
    }
    w.first_step
        .checked_sub(1)
        .and_then(|before| state.steps.get(&before))
        .filter(|r| {
            r.scheduled.action == Action::Start
                && r.outcome.as_ref().map(|o| o.outcome) == Some(Outcome::Succeeded)
        })
        .map(|r| r.scheduled.node.as_str())
}

/// Judges one member's word asked by `emergency_word` (one of the first steps of an emergency wind-down): a check
/// that passes unless it says it leads. The verdict comes once every member has answered (`emergency_word`):
/// a round's judgment goes on after a passed check, and after a failed one its other answers are recorded.
fn emergency_word_judged(
    state: &State,
    w: &WindDown,
    record: &StepRecord,
    observation: &Observation,
) -> Option<Vec<Event>> {
    let s = &record.scheduled;
    let is_word = w.cause == WindDownCause::Emergency
        && state.failover_blocked
        && words_asked(state, w)
            .iter()
            .any(|r| r.scheduled.step == s.step);
    if !is_word {
        return None;
    }
    let leads = says_it_leads(observation);
    Some(vec![Event::CheckEvaluated {
        step: s.step,
        node: s.node.clone(),
        passed: !leads,
        problems: if leads {
            vec![leads_problem(
                record,
                &shown_leaders(state.last_cluster.as_deref()),
            )]
        } else {
            vec![]
        },
    }])
}

/// The emergency exit's halt when members said they lead and no node of this upgrade's is to be brought back:
/// failover stays blocked, and `failover_pending` names every member that said it leads (`shown`: what the
/// cluster's topology shows, `shown_leaders`) and a node of this upgrade's started again but not confirmed
/// synced (`started_unsynced`).
fn emergency_halt(
    state: &State,
    w: &WindDown,
    leaders: &[&StepRecord],
    shown: &str,
    now: u64,
) -> Event {
    let problem = leaders
        .iter()
        .map(|r| leads_problem(r, shown))
        .collect::<Vec<_>>()
        .join("; ");
    let unsynced = started_unsynced(state, w)
        .map(|node| {
            format!(
                ". {node}, which this upgrade had out, runs again but may not be synced yet (it was not waited \
                 on: syncing needs a leader the others can reach); check it too"
            )
        })
        .unwrap_or_default();
    let nodes = leaders
        .iter()
        .map(|r| r.scheduled.node.as_str())
        .collect::<Vec<_>>();
    let check = match nodes.as_slice() {
        [one] => format!(
            "Check {one} (is it cut off from the others, or is its cluster manager down?); once the cluster \
             shows one leader again, or {one} is stopped"
        ),
        many => format!(
            "Check {} (each says it leads: which is cut off from the others?); once the cluster shows one leader \
             again and no other member says it leads",
            many.join(", ")
        ),
    };
    Event::UpgradeHalted {
        reason: format!("{}; not taken: {problem}", w.reason),
        failover_pending: Some(format!(
            "failover is still blocked: {problem}. {check}, run `{hint}`{unsynced}",
            hint = sub(state).profile.hints.cluster_failover_on
        )),
        at_ms: now,
    }
}

/// The failover gate of a wind-down (S3): `(blocking, other)` problems of one observation. Failover is
/// re-enabled when `cluster-status` shows exactly one leader and that leader's own `status` shows its services
/// running and a synced follower to elect; leaving it off would then be the more dangerous choice. Other
/// problems (a node still stuck) do not block it but are kept for the end's reason.
fn failover_gate(
    state: &State,
    action: Action,
    observation: &Observation,
) -> (Vec<String>, Vec<String>) {
    let all = problems_for(state, None, action, observation);
    let gate = match (action, observation) {
        (
            Action::ProbeClusterStatus,
            Observation::ClusterStatus { .. } | Observation::Members { .. },
        ) => observation
            .topology()
            .map(|t| leader_problems(&t))
            .unwrap_or_default(),
        (Action::ProbeStatus, Observation::NodeStatus { .. } | Observation::Node { .. }) => {
            observation
                .node_health(node_count(state))
                .map(|h| electable_problems(&h))
                .unwrap_or_default()
        }
        _ => return (all, vec![]),
    };
    let other = all.into_iter().filter(|p| !gate.contains(p)).collect();
    (gate, other)
}

/// Whether the wind-down's failover gate looks again although its time is up: a probe that got no answer (a
/// dead node) gets one more round through another node, for up to two probe deadlines; a cluster seen without
/// a leader while failover is blocked is watched until the emergency exit acts (within the election window).
fn keep_looking(state: &State, w: &WindDown, observation: &Observation, now: u64) -> bool {
    match observation {
        Observation::Unavailable { .. } => unanswered_grace(state, w.started_ms, observation, now),
        other => other
            .topology()
            .is_some_and(|status| state.failover_blocked && status.sole_leader().is_none()),
    }
}

/// Whether a wait that began at `started` and whose time is up gets one more round because its last probe could
/// not be answered (a lost result, a dead node): a probe's own deadline can be longer than the wait, and one lost
/// answer must not decide a halt. Up to two probe deadlines past the wait.
fn unanswered_grace(state: &State, started: u64, observation: &Observation, now: u64) -> bool {
    // Only a probe that got no answer at all (its deadline passed, or the executor could not tell): a probe
    // that answered with a failure (a node without etcd) is an answer, and the next round asks elsewhere.
    let unanswered = state
        .last_observation
        .as_ref()
        .and_then(|(step, _)| state.steps.get(step))
        .and_then(|r| r.outcome.as_ref())
        .is_some_and(|o| matches!(o.outcome, Outcome::Unknown | Outcome::TimedOut));
    if !matches!(observation, Observation::Unavailable { .. }) || !unanswered {
        return false;
    }
    let u = &sub(state).cluster.upgrade;
    let probe = sub(state)
        .profile
        .action(Action::ProbeStatus)
        .map_or(0, |a| a.timeout_ms)
        .saturating_add(u.result_grace_ms);
    now < started
        .saturating_add(u.sync_timeout_ms)
        .saturating_add(probe.saturating_mul(2))
}

/// The sole leader of the latest `cluster-status`, if it is in the cluster file.
fn gate_leader(state: &State) -> Option<String> {
    let leader = state.last_cluster.as_ref()?.sole_leader()?;
    sub(state).cluster.node(leader).map(|n| n.name.clone())
}

/// Restarts the wind-down with a longer reason: the recovery of a node is over (brought back or not), and the
/// failover gate gets its own `sync_timeout` from here.
fn wind_down_again(w: &WindDown, note: String, now: u64) -> Event {
    Event::WindDownStarted {
        cause: w.cause,
        reason: format!("{}; {note}", w.reason),
        at_ms: now,
    }
}

/// The `start` this wind-down scheduled for `node`, if any.
fn recovery_start<'a>(state: &'a State, w: &WindDown, node: &str) -> Option<&'a StepRecord> {
    state
        .steps
        .range(w.first_step..)
        .map(|(_, r)| r)
        .find(|r| r.scheduled.action == Action::Start && r.scheduled.node == node)
}

/// When the wait for `node` to be healthy and synced began: its successful recovery `start`, else the start of
/// the wind-down.
fn recovery_started_ms(state: &State, w: &WindDown, node: &str) -> u64 {
    recovery_start(state, w, node)
        .and_then(|r| r.outcome.as_ref())
        .filter(|o| o.outcome == Outcome::Succeeded)
        .map_or(w.started_ms, |o| o.at_ms)
}

/// A wind-down brings back the node this upgrade had out of service (S1 after the end; on a failure only a
/// node it stopped, see `WindDown::recover`): its `start` if it was stopped and not started (a fresh step, even
/// if the failure was that node's own `start`: it is idempotent and retried per policy), then `status` and
/// `cluster-status` on it until healthy and synced (a `WaitSynced` without the version check: it may still run
/// the old version), bounded by `sync_timeout`. Either way the wind-down then restarts, with the outcome after
/// the original reason, to restore failover.
fn recovery_decisions(state: &State, w: &WindDown, node: &str, now: u64) -> Vec<Event> {
    let gave_up = |why: String| {
        vec![wind_down_again(
            w,
            format!("{node} was not brought back into service: {why}"),
            now,
        )]
    };
    match recovery_start(state, w, node) {
        None if state.left_stopped(node) => {
            return match schedule(state, Action::Start, node, now, None) {
                Ok(e) => vec![e],
                Err(why) => gave_up(format!("cannot schedule its start: {why}")),
            }
        }
        Some(r) if r.outcome.as_ref().map(|o| o.outcome) != Some(Outcome::Succeeded) => {
            return gave_up(describe_step(r));
        }
        _ => {}
    }
    // `cluster-status` from a live node (the recovering node may have no etcd quorum to answer it), then the
    // node's own `status`.
    let via = observer(state, Some(node));
    let probes = [
        (Action::ProbeClusterStatus, via.as_str()),
        (Action::ProbeStatus, node),
    ];
    match probes.get(w.checks_passed) {
        Some((action, on)) => match schedule(state, *action, on, now, None) {
            Ok(e) => vec![e],
            Err(why) => gave_up(format!("cannot observe it: {why}")),
        },
        None => vec![wind_down_again(
            w,
            format!("{node} is in service (healthy and synced)"),
            now,
        )],
    }
}
