//! What re-deriving a history costs (`cargo bench -p workflow --bench verify`), issues 12 and 16: `replay`
//! (fold the events into a state) and `verify` (feed every recorded input back to `decide` and compare), on the
//! real histories the fuzz test uses (complete runs of both procedures against the fake cluster, one stopped at
//! a gate, one whose install fails), and the per-input cost of the fuzz property `replay -> verify -> decide`
//! done on those histories unedited.
//!
//! It also prints `verify` on prefixes of the longest history, in microseconds per event: flat when the cost of
//! a decision does not grow with the history, rising when it does (each decision used to clone the whole
//! state, which holds every step's record).
//!
//! `BATON_BENCH_SECONDS` sets how long each figure is measured (2 s unless set).

#[allow(unused_imports)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use workflow::core::{decide, input_of, replay, verify, Event, Input, Outcome};

/// The fuzz test's histories (`workflow/tests/fuzz_core.rs` `histories`).
fn histories() -> Vec<Vec<Event>> {
    let mut out = Vec::new();
    for (procedure, gates, fail) in [
        ("runbook", "", false),
        ("upgrade-command", "", false),
        ("runbook", "\"before-switchover\"", false),
        ("runbook", "", true),
    ] {
        let mut run = Run::new();
        let mut fake = FakeCluster::new("3.0.0-1");
        if fail {
            fake.install_fails.insert("backend-2".into());
        }
        run.input(submit(cluster(procedure, gates), run.now))
            .expect("a submission of the test cluster is accepted");
        run.run_to_rest(&mut fake, 2_000);
        out.push(run.history);
    }
    out
}

fn budget() -> Duration {
    let s = std::env::var("BATON_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

/// Runs `f` repeatedly for the budget; returns (calls, elapsed).
fn measure(mut f: impl FnMut()) -> (u64, Duration) {
    f();
    let budget = budget();
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < budget {
        f();
        calls += 1;
    }
    (calls, started.elapsed())
}

/// What one fuzz input does, on an unedited history: the JSON round trip of an import, replay, the queries,
/// verify, and `decide` of a tick and a late result on the replayed state.
fn property(history: &[Event]) {
    let values: Vec<serde_json::Value> = history
        .iter()
        .map(|e| serde_json::to_value(e).expect("an event encodes"))
        .collect();
    let events: Vec<Event> = values
        .into_iter()
        .filter_map(|v| serde_json::from_value(v).ok())
        .collect();
    let state = replay(&events);
    black_box((
        state.status(),
        state.next_wakeup_ms(),
        state.outstanding_steps(),
    ));
    verify(&events).expect("a real history verifies");
    let now = state.updated_ms().unwrap_or(0) + 1_000;
    for input in [
        Input::Tick { now_ms: now },
        Input::StepFinished {
            step: 1,
            attempt: 1,
            outcome: Outcome::Unknown,
            exit_code: Some(i32::MIN),
            stdout: String::new(),
            stderr: String::new(),
            reason: None,
            executor: "exec-g1".into(),
            now_ms: now,
        },
    ] {
        if let Ok(new) = decide(&state, &input) {
            let mut after = state.clone();
            for e in &new {
                after.apply(e);
            }
            black_box(after.status());
        }
    }
}

fn main() {
    let histories = histories();
    let total: usize = histories.iter().map(Vec::len).sum();
    let inputs = histories
        .iter()
        .flatten()
        .filter(|e| input_of(e).is_some())
        .count();
    println!(
        "histories: {} ({} events in all, {} recorded inputs; lengths {:?})",
        histories.len(),
        total,
        inputs,
        histories.iter().map(Vec::len).collect::<Vec<_>>()
    );
    for h in &histories {
        verify(h).expect("a real history verifies");
    }

    let (calls, took) = measure(|| {
        for h in &histories {
            black_box(replay(h));
        }
    });
    let replay_rate = (calls as f64 * total as f64) / took.as_secs_f64();
    println!(
        "replay:  {:>10.0} events/s ({:.1} us per history on average)",
        replay_rate,
        took.as_secs_f64() * 1e6 / (calls as f64 * histories.len() as f64)
    );

    let (calls, took) = measure(|| {
        for h in &histories {
            black_box(verify(h)).expect("verifies");
        }
    });
    let verify_rate = (calls as f64 * total as f64) / took.as_secs_f64();
    println!(
        "verify:  {:>10.0} events/s ({:.1} us per history on average, {:.2} us per recorded input)",
        verify_rate,
        took.as_secs_f64() * 1e6 / (calls as f64 * histories.len() as f64),
        took.as_secs_f64() * 1e6 / (calls as f64 * inputs as f64)
    );

    let (calls, took) = measure(|| {
        for h in &histories {
            property(h);
        }
    });
    println!(
        "fuzz property on an unedited history: {:.2} ms per input",
        took.as_secs_f64() * 1e3 / (calls as f64 * histories.len() as f64)
    );

    // Per-event cost of verify on prefixes of the longest history, cut before a recorded input (a whole
    // decision): flat if a decision's cost does not grow with the history.
    let longest = histories
        .iter()
        .max_by_key(|h| h.len())
        .expect("four histories");
    println!(
        "verify on prefixes of the longest history ({} events):",
        longest.len()
    );
    for quarter in 1..=4 {
        let mut cut = longest.len() * quarter / 4;
        while cut < longest.len() && input_of(&longest[cut]).is_none() {
            cut += 1;
        }
        let prefix = &longest[..cut];
        let (calls, took) = measure(|| {
            black_box(verify(prefix)).expect("a prefix cut before an input verifies");
        });
        println!(
            "  {:>4} events: {:>7.3} us per event",
            cut,
            took.as_secs_f64() * 1e6 / (calls as f64 * cut as f64)
        );
    }
}
