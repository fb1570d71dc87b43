//! Where a Baton-driven upgrade's wall time goes, from its log alone (real_etcd, real_patroni): each step's round
//! trip (from the decision that scheduled it to its result's arrival), the waits (poll interval, retry backoff),
//! and the wall time split by what was happening, plus each step's own run time from the executors' logs.
//!
//! Method. The log records the time of every input (a result's arrival, a timer) and the decisions taken on it
//! carry that time: a `StepScheduled` is dispatched at the time of the last timed event before it. A step's round
//! trip is its `StepResultRecorded.at_ms` minus that; it holds NATS both ways, the executor's queueing and the
//! command itself, whose own run time the executor logs (`step finished ... elapsed_ms`). A wait runs from its
//! `WaitStarted` to the next `TimerFired`. Every millisecond between `UpgradeSubmitted` and the end is given to
//! exactly one of: a step in flight (the oldest one, when several are), a wait, or neither ("service": nothing in
//! flight and nothing waited for, i.e. the service itself between a result and its next step).

use std::collections::BTreeMap;

use serde_json::Value;
use workflow::core::Event;

#[derive(Default)]
struct Stat {
    count: u64,
    total_ms: u64,
    max_ms: u64,
}

impl Stat {
    fn add(&mut self, ms: u64) {
        self.count += 1;
        self.total_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }

    fn mean(&self) -> f64 {
        self.total_ms as f64 / self.count.max(1) as f64
    }
}

/// A plan item as a short label: `stop m1`, `wait_synced m1`, `verify_switchover`.
fn item_label(item: &Value) -> String {
    let kind = item["kind"].as_str().unwrap_or("?");
    let subject = item["node"]
        .as_str()
        .or_else(|| item["via"].as_str())
        .unwrap_or("");
    match kind {
        "run" => format!("{} {subject}", item["action"].as_str().unwrap_or("?")),
        _ => format!("{kind} {subject}"),
    }
}

/// The executors' own run time of each step of `upgrade`, by action (`step finished` lines of their logs, whose
/// step key names the upgrade; `baton plan`'s probes are another upgrade's).
fn executor_elapsed(logs: &str, upgrade: &str) -> BTreeMap<String, Stat> {
    let mut by_action: BTreeMap<String, Stat> = BTreeMap::new();
    for line in logs
        .lines()
        .filter(|l| l.contains("step finished") && !upgrade.is_empty() && l.contains(upgrade))
    {
        let field = |name: &str| {
            line.split([' ', '{', '}', ':'])
                .find_map(|w| w.strip_prefix(name))
                .map(str::to_string)
        };
        if let (Some(action), Some(ms)) = (field("action="), field("elapsed_ms=")) {
            if let Ok(ms) = ms.parse() {
                by_action.entry(action).or_default().add(ms);
            }
        }
    }
    by_action
}

/// The breakdown as text tables (see the module's docs for the method).
pub(crate) fn breakdown(events: &[Event], executor_logs: &str) -> String {
    let events: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).expect("an event serializes"))
        .collect();
    let mut items: Vec<String> = Vec::new();
    let mut context = "preflight".to_string();
    let mut now: Option<u64> = None;
    // (step, attempt) -> (dispatched at, action, context)
    let mut in_flight: BTreeMap<(u64, u64), (u64, String, String)> = BTreeMap::new();
    let mut wait: Option<(u64, String)> = None;
    let mut by_action: BTreeMap<String, Stat> = BTreeMap::new();
    let mut by_context: BTreeMap<(String, String), Stat> = BTreeMap::new();
    let mut waits: BTreeMap<String, Stat> = BTreeMap::new();
    let mut wall: BTreeMap<String, u64> = BTreeMap::new();
    let mut item_wall: Vec<(String, u64)> = Vec::new();
    let mut item_started: Option<u64> = None;
    let (mut first, mut last) = (None, 0);
    // Decisions that sent steps (a round's steps are consecutive `StepScheduled` events of one decision), the steps
    // they sent, and the rounds whose judgment ended on a probe that a one-at-a-time run would not ask.
    let (mut decisions, mut steps, mut mismatches) = (0u32, 0u32, 0u32);
    let mut previous_kind = "";
    for e in &events {
        let kind = e["type"].as_str().unwrap_or("");
        if kind == "StepScheduled" {
            steps += 1;
            if previous_kind != "StepScheduled" {
                decisions += 1;
            }
        }
        if kind == "CheckEvaluated"
            && e["problems"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p.as_str()
                        .is_some_and(|p| p.contains("round probe mismatch"))
                })
            })
        {
            mismatches += 1;
        }
        previous_kind = kind;
        if let Some(at) = e["at_ms"].as_u64() {
            if let Some(prev) = now {
                let span = at.saturating_sub(prev);
                let what = match in_flight.values().min_by_key(|(t, _, _)| *t) {
                    Some((_, action, _)) => format!("step in flight: {action}"),
                    None => match &wait {
                        Some((_, purpose)) => format!("wait: {purpose}"),
                        None => "service (nothing in flight)".to_string(),
                    },
                };
                *wall.entry(what).or_default() += span;
            }
            first.get_or_insert(at);
            last = at;
            now = Some(at);
        }
        match kind {
            "PlanComputed" => {
                items = e["plan"]["items"]
                    .as_array()
                    .map(|a| a.iter().map(item_label).collect())
                    .unwrap_or_default();
            }
            "ItemStarted" => {
                let i = e["index"].as_u64().unwrap_or(0) as usize;
                context = items.get(i).cloned().unwrap_or_else(|| format!("item {i}"));
                item_started = now;
            }
            "ItemCompleted" => {
                if let (Some(s), Some(n)) = (item_started, now) {
                    item_wall.push((context.clone(), n - s));
                }
                context = "between items".to_string();
            }
            "StepScheduled" => {
                let key = (
                    e["step"].as_u64().unwrap_or(0),
                    e["attempt"].as_u64().unwrap_or(0),
                );
                let action = e["action"].as_str().unwrap_or("?").to_string();
                in_flight.insert(key, (now.unwrap_or(0), action, context.clone()));
            }
            "StepResultRecorded" | "StepDeadlinePassed" => {
                let key = (
                    e["step"].as_u64().unwrap_or(0),
                    e["attempt"].as_u64().unwrap_or(0),
                );
                if let Some((at, action, ctx)) = in_flight.remove(&key) {
                    let ms = now.unwrap_or(at).saturating_sub(at);
                    by_action.entry(action.clone()).or_default().add(ms);
                    let ctx_kind = ctx.split(' ').next().unwrap_or("").to_string();
                    by_context.entry((ctx_kind, action)).or_default().add(ms);
                }
            }
            "WaitStarted" => {
                let purpose = e["purpose"]["kind"].as_str().unwrap_or("?").to_string();
                wait = Some((now.unwrap_or(0), purpose));
            }
            "TimerFired" => {
                if let Some((at, purpose)) = wait.take() {
                    waits
                        .entry(purpose)
                        .or_default()
                        .add(now.unwrap_or(at) - at);
                }
            }
            _ => {}
        }
    }
    let total = last - first.unwrap_or(last);
    let upgrade = events
        .iter()
        .find_map(|e| e["upgrade"].as_str())
        .unwrap_or_default();
    let exec = executor_elapsed(executor_logs, upgrade);
    let mut out = format!(
        "time breakdown ({total} ms from submission to the last event; {steps} steps sent by {decisions} decisions; \
         {mismatches} round probe mismatches):\n"
    );
    out.push_str(
        "| action/probe | count | round trip total ms | mean ms | max ms | executor run total ms | mean ms | \
         overhead (round trip - run) ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (action, s) in &by_action {
        let (et, em) = exec
            .get(action)
            .map_or((0, 0.0), |x| (x.total_ms, x.mean()));
        out.push_str(&format!(
            "| {action} | {} | {} | {:.0} | {} | {et} | {em:.0} | {} |\n",
            s.count,
            s.total_ms,
            s.mean(),
            s.max_ms,
            s.total_ms as i64 - et as i64
        ));
    }
    out.push_str("| wait | count | total ms | mean ms | max ms |\n|---|---|---|---|---|\n");
    for (purpose, s) in &waits {
        out.push_str(&format!(
            "| {purpose} | {} | {} | {:.0} | {} |\n",
            s.count,
            s.total_ms,
            s.mean(),
            s.max_ms
        ));
    }
    out.push_str("| wall time spent on | ms | share |\n|---|---|---|\n");
    let mut spent: Vec<(&String, &u64)> = wall.iter().collect();
    spent.sort_by(|a, b| b.1.cmp(a.1));
    for (what, ms) in spent {
        out.push_str(&format!(
            "| {what} | {ms} | {:.1}% |\n",
            *ms as f64 * 100.0 / total.max(1) as f64
        ));
    }
    out.push_str("| plan item kind | step | count | total ms | mean ms |\n|---|---|---|---|---|\n");
    for ((ctx, action), s) in &by_context {
        out.push_str(&format!(
            "| {ctx} | {action} | {} | {} | {:.0} |\n",
            s.count,
            s.total_ms,
            s.mean()
        ));
    }
    out.push_str("items (ms from start to completion): ");
    out.push_str(
        &item_wall
            .iter()
            .map(|(l, ms)| format!("{l} {ms}"))
            .collect::<Vec<_>>()
            .join(", "),
    );
    out.push('\n');
    out
}
