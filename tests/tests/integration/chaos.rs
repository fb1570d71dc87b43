//! The chaos suite: full upgrades of simulated clusters with one fault per
//! round, injected at a random moment (once the log holds a random number of
//! events), then checked from the outside:
//! - the simulator's report: safe (never two nodes out of service, no write
//!   outage outside an election, nothing unsafe), failover on at the end when
//!   the cluster is healthy;
//! - the simulator's journal: no non-idempotent action twice (demote at most
//!   once, one install per node);
//! - the log: verifies, `replay --verify` re-derives every decision, and every
//!   event the service mirrored to `BATON_EVENTS` (it mirrors only after the
//!   flush) is in the log with the same hash;
//! - the upgrade completed, or halted safely with a reason (environment
//!   rounds: completed or halted, nothing else).
//!
//! The `environment` kind is a busy on-call rather than a failure of Baton's
//! own machinery: it moves the leader (`promote`), crashes a follower or the
//! leader (started again after a while) or restarts a node, at a random
//! point that includes gates and pauses. The simulator charges Baton only
//! with what Baton did; the environment's acts are its incidents.
//!
//! `cargo test` runs one round per fault kind. A longer run:
//! `BATON_CHAOS_ROUNDS=25 BATON_CHAOS_REPORT=chaos.json cargo test -p tests
//! --test integration chaos -- --nocapture` (rounds per kind; the summary is
//! written as JSON and printed), or `BATON_CHAOS_PLAN=service_kill=50,...` for
//! a count per kind (`tests/CHAOS.md` has the last long run). Rounds run two at a time
//! (`BATON_CHAOS_PARALLEL=1` for one after another).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
enum Fault {
    /// SIGKILL the workflow service, restart it.
    ServiceKill,
    /// SIGKILL the executor of a random node, restart it.
    ExecutorKill,
    /// SIGKILL nats-server, restart it on the same port and store.
    NatsKill,
    /// SIGTERM nats-server (clean stop), restart it.
    NatsTerm,
    /// SIGSTOP nats-server for a while, then SIGCONT.
    NatsFreeze,
    /// A simulator fault on a random node: sync never completes, start
    /// fails, install fails, demote times out, status hangs.
    Simulator,
    /// SIGKILL the service, restart it, and SIGKILL it again while it
    /// recovers (within its first 300 ms), then restart it for good.
    ServiceKillInRecovery,
    /// 200-1000 ms added to every chunk between the processes and NATS for 5 s.
    NetLatency,
    /// Every connection to NATS reset (RST) at once.
    NetReset,
    /// Nothing gets through for 3-8 s; then the connections are reset.
    NetBlackhole,
    /// A busy on-call acts on the cluster at a random point (also while
    /// Baton waits at a gate or is paused): moves the leader, crashes a
    /// follower or the leader (started again after a while), or restarts a
    /// node. See [`EnvKind`].
    Environment,
}

const ALL: [Fault; 11] = [
    Fault::ServiceKill,
    Fault::ExecutorKill,
    Fault::NatsKill,
    Fault::NatsTerm,
    Fault::NatsFreeze,
    Fault::Simulator,
    Fault::ServiceKillInRecovery,
    Fault::NetLatency,
    Fault::NetReset,
    Fault::NetBlackhole,
    Fault::Environment,
];

/// What the environment does in an [`Fault::Environment`] round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum EnvKind {
    /// An operator's `chef-backend-ctl promote` of a synced follower.
    MoveLeader,
    /// A follower crashes; the environment starts it again 0.5-4 s later.
    CrashFollower,
    /// The leader crashes; the environment starts it again 1-6 s later.
    KillLeader,
    /// A node crashes and comes back at once (`baton-sim restart`).
    RestartNode,
}

const ENV_KINDS: [EnvKind; 4] = [
    EnvKind::MoveLeader,
    EnvKind::CrashFollower,
    EnvKind::KillLeader,
    EnvKind::RestartNode,
];

/// Where in a step an executor kill lands; executor rounds take them in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    /// The executor is frozen between steps and killed once its next step
    /// has been scheduled: the step was delivered (or waits) but never started.
    BeforeCommand,
    /// A node command of the executor is running.
    DuringCommand,
    /// The command has finished, its result cannot be published (nats-server
    /// is frozen): the outcome is only in the executor's ledger.
    AfterCommandBeforeResult,
    /// The result is in the log (the next step was scheduled).
    AfterResult,
}

const PHASES: [Phase; 4] = [
    Phase::BeforeCommand,
    Phase::DuringCommand,
    Phase::AfterCommandBeforeResult,
    Phase::AfterResult,
];

fn uses_proxy(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::NetLatency | Fault::NetReset | Fault::NetBlackhole
    )
}

/// The simulator's faults a round may inject (`baton-sim fault` kinds).
/// `election-nobody` is not among them: it leaves the cluster leaderless until
/// an operator promotes a node, which no upgrade tool may do on its own.
const SIM_FAULTS: [&[&str]; 5] = [
    &["sync-never"],
    &["start-fails"],
    &["install-fails"],
    &["demote-timeout"],
    &["status-hang", "3"],
];

#[derive(Debug, Serialize)]
struct Round {
    fault: Fault,
    seed: u64,
    /// The fault was injected once the log held this many events.
    at_events: u64,
    /// For simulator faults: `node kind [arg]`; for executor kills: the node.
    detail: Option<String>,
    /// For executor kills: the phase aimed at, and whether it was reached.
    phase: Option<Phase>,
    phase_reached: Option<bool>,
    /// For environment rounds: what the environment did, and whether the
    /// upgrade waited at a gate or was paused when it did.
    env_kind: Option<EnvKind>,
    env_at: Option<String>,
    /// completed / halted / aborted / needs_verification / timeout.
    outcome: String,
    reason: Option<String>,
    injected_after_end: bool,
    double_executions: u32,
    lost_events: u32,
    simultaneous_outages: u32,
    verification_failures: u32,
    unsafe_verdicts: u32,
    /// Service kills: from the restart to the first new event in the log.
    recovery_ms: Option<u64>,
    problems: Vec<String>,
}

#[derive(Debug, Serialize, Default)]
struct Summary {
    rounds: u32,
    completed: u32,
    halted_safely: BTreeMap<String, u32>,
    failed_rounds: u32,
    double_executions: u32,
    lost_events: u32,
    simultaneous_outages: u32,
    verification_failures: u32,
    unsafe_verdicts: u32,
    rounds_by_fault: BTreeMap<String, u32>,
    /// Executor kills per phase: rounds aimed at it, rounds that reached it.
    executor_kills_by_phase: BTreeMap<String, (u32, u32)>,
    /// Environment rounds per kind of action.
    environment_by_kind: BTreeMap<String, u32>,
    /// Environment rounds per moment (running, at a gate, paused).
    environment_by_moment: BTreeMap<String, u32>,
    service_recovery_ms_median: Option<u64>,
    service_recovery_ms_worst: Option<u64>,
}

#[test]
fn upgrades_survive_one_fault_per_round() {
    let per_kind: u32 = std::env::var("BATON_CHAOS_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let base_seed: u64 = std::env::var("BATON_CHAOS_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20261125);
    // BATON_CHAOS_PLAN=service_kill=50,net_reset=10,... sets rounds per kind;
    // otherwise every kind gets BATON_CHAOS_ROUNDS (default 1).
    let plan: Vec<(Fault, u32)> = match std::env::var("BATON_CHAOS_PLAN") {
        Ok(text) => text
            .split(',')
            .map(|item| {
                let (name, n) = item.split_once('=').expect("BATON_CHAOS_PLAN: kind=N,...");
                let fault = ALL
                    .iter()
                    .copied()
                    .find(|f| serde_json::to_value(f).unwrap() == name.trim())
                    .unwrap_or_else(|| panic!("BATON_CHAOS_PLAN: unknown kind {name}"));
                (fault, n.trim().parse().expect("BATON_CHAOS_PLAN: a count"))
            })
            .collect(),
        Err(_) => ALL.iter().map(|f| (*f, per_kind)).collect(),
    };
    // Rounds side by side (default 2): each has its own NATS server, service, executors and simulator (Env), and
    // a round is mostly waiting (sync times, freezes, restarts, timeouts). Three at once took 112 s against 152 s
    // one after another (load 10-13), but the rounds then compete for the 2 cores with each other and with the
    // tests beside them (each status poll starts a `baton status`); two keep more headroom for every timeout. A
    // round's seed, and so what it injects and when (counted in the upgrade's events), does not depend on its
    // neighbours.
    let parallel: usize = std::env::var("BATON_CHAOS_PARALLEL")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2);
    let most = plan.iter().map(|(_, n)| *n).max().unwrap_or(0);
    // Interleave the kinds, so that a long run is spread evenly over time.
    let mut order = Vec::new();
    for i in 0..most {
        for (k, (fault, n)) in plan.iter().enumerate() {
            if i < *n {
                order.push((
                    *fault,
                    base_seed + u64::from(i) * 100 + k as u64,
                    i as usize,
                ));
            }
        }
    }
    // Each round on its own thread and runtime, as when they ran one after another: a round's helpers block their
    // thread while they wait for a process, and a round's in-process proxy must not wait behind another round.
    let mut rounds = Vec::new();
    for batch in order.chunks(parallel) {
        let threads: Vec<_> = batch
            .iter()
            .map(|&(fault, seed, i)| {
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("a runtime for the round");
                    let round = runtime.block_on(run_round(fault, seed, i));
                    eprintln!("chaos round: {}", serde_json::to_string(&round).unwrap());
                    round
                })
            })
            .collect();
        // Every round of the batch is joined before any failure is raised: a round left running would outlive the
        // test with its processes, and its own failure would go unreported.
        let joined: Vec<_> = threads.into_iter().map(|t| t.join()).collect();
        for (n, round) in joined.into_iter().enumerate() {
            match round {
                Ok(round) => rounds.push(round),
                Err(_) => panic!("chaos round {:?} panicked (its output is above)", batch[n]),
            }
        }
    }
    let summary = summarise(&rounds);
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "summary": summary,
        "rounds": rounds,
    }))
    .unwrap();
    if let Ok(path) = std::env::var("BATON_CHAOS_REPORT") {
        std::fs::write(path, &text).unwrap();
    }
    eprintln!(
        "chaos summary: {}",
        serde_json::to_string_pretty(&summary).unwrap()
    );
    let failed: Vec<&Round> = rounds.iter().filter(|r| !r.problems.is_empty()).collect();
    assert!(failed.is_empty(), "rounds with problems: {failed:#?}");
    assert_eq!(summary.double_executions, 0);
    assert_eq!(summary.lost_events, 0);
    assert_eq!(summary.simultaneous_outages, 0);
    assert_eq!(summary.verification_failures, 0);
}

fn summarise(rounds: &[Round]) -> Summary {
    let mut s = Summary::default();
    let mut recoveries = Vec::new();
    for r in rounds {
        s.rounds += 1;
        *s.rounds_by_fault
            .entry(
                serde_json::to_value(r.fault)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
            .or_default() += 1;
        if r.outcome == "completed" {
            s.completed += 1;
        } else if r.problems.is_empty() {
            let why = r.reason.clone().unwrap_or_default();
            let key = format!(
                "{}: {}",
                r.outcome,
                why.chars().take(80).collect::<String>()
            );
            *s.halted_safely.entry(key).or_default() += 1;
        }
        if !r.problems.is_empty() {
            s.failed_rounds += 1;
        }
        s.double_executions += r.double_executions;
        s.lost_events += r.lost_events;
        s.simultaneous_outages += r.simultaneous_outages;
        s.verification_failures += r.verification_failures;
        s.unsafe_verdicts += r.unsafe_verdicts;
        recoveries.extend(r.recovery_ms);
        if let Some(kind) = r.env_kind {
            let name = serde_json::to_value(kind)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            *s.environment_by_kind.entry(name).or_default() += 1;
        }
        if let Some(at) = &r.env_at {
            *s.environment_by_moment.entry(at.clone()).or_default() += 1;
        }
        if let Some(phase) = r.phase {
            let name = serde_json::to_value(phase)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let entry = s.executor_kills_by_phase.entry(name).or_default();
            entry.0 += 1;
            entry.1 += u32::from(r.phase_reached == Some(true));
        }
    }
    recoveries.sort_unstable();
    s.service_recovery_ms_median = recoveries.get(recoveries.len() / 2).copied();
    s.service_recovery_ms_worst = recoveries.last().copied();
    s
}

async fn run_round(fault: Fault, seed: u64, index: usize) -> Round {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut env = Env::start(Setup {
        sync_ms: 400,
        // Short only where a simulator fault may keep a node from syncing, so
        // that those rounds halt quickly; elsewhere long enough to ride out a
        // frozen broker or a blackholed network.
        sync_timeout_ms: if fault == Fault::Simulator {
            8_000
        } else {
            60_000
        },
        through_proxy: uses_proxy(fault),
        ..Setup::default()
    })
    .await;
    let at_events = rng.random_range(4..160u64);
    if fault == Fault::ExecutorKill {
        // Slow commands (up to 600 ms extra each) give the kill a window
        // inside a command and between the command and its result.
        for node in &env.nodes {
            sim_fault(&env, node, &["latency", "600"]);
        }
    }
    // Environment rounds wait at a gate half of the time, so that the
    // environment may act while Baton waits for an approval.
    let gate = (fault == Fault::Environment)
        .then(|| match rng.random_range(0..4) {
            0 => Some("before-switchover"),
            1 => Some("after-first-follower"),
            _ => None,
        })
        .flatten();
    let upgrade = match gate {
        Some(gate) => env.submit(&["--approve-before", gate]),
        None => env.submit(&[]),
    };
    let mut round = Round {
        fault,
        seed,
        at_events,
        detail: None,
        phase: None,
        phase_reached: None,
        env_kind: None,
        env_at: None,
        outcome: String::new(),
        reason: None,
        injected_after_end: false,
        double_executions: 0,
        lost_events: 0,
        simultaneous_outages: 0,
        verification_failures: 0,
        unsafe_verdicts: 0,
        recovery_ms: None,
        problems: Vec::new(),
    };

    // Wait for the moment, then inject.
    let mut ended = false;
    tests::wait_until(UPGRADE_TIMEOUT, || match env.status(&upgrade) {
        Some(view) => {
            ended = matches!(view.status.as_str(), "completed" | "halted" | "aborted");
            ended || view.events >= at_events || view.status == "waiting_approval"
        }
        None => false,
    })
    .await;
    round.injected_after_end = ended;
    match fault {
        Fault::ServiceKill => {
            let before = env.status(&upgrade).map(|v| v.events).unwrap_or(0);
            env.kill_server();
            env.start_server();
            let restarted = Instant::now();
            let progressed = tests::wait_until(UPGRADE_TIMEOUT, || {
                env.status(&upgrade).is_some_and(|v| {
                    v.events > before
                        || matches!(v.status.as_str(), "completed" | "halted" | "aborted")
                })
            })
            .await;
            if progressed && !ended {
                round.recovery_ms = Some(restarted.elapsed().as_millis() as u64);
            }
        }
        Fault::ServiceKillInRecovery => {
            env.kill_server();
            env.start_server();
            let early = Duration::from_millis(rng.random_range(0..300));
            // The fault is the moment: somewhere in the first 300 ms of recovery.
            tokio::time::sleep(early).await;
            env.kill_server();
            env.start_server();
        }
        Fault::NetLatency => {
            let proxy = env.proxy.as_ref().unwrap();
            let delay = Duration::from_millis(rng.random_range(200..1000));
            proxy.set_mode(tests::Mode::Latency(delay));
            // The fault is the passage of time with a slow network.
            tokio::time::sleep(Duration::from_secs(5)).await;
            proxy.set_mode(tests::Mode::Pass);
        }
        Fault::NetReset => env.proxy.as_ref().unwrap().reset().await,
        Fault::NetBlackhole => {
            let proxy = env.proxy.as_ref().unwrap();
            proxy.set_mode(tests::Mode::Blackhole);
            tokio::time::sleep(Duration::from_millis(rng.random_range(3_000..8_000))).await;
            proxy.set_mode(tests::Mode::Pass);
            proxy.reset().await;
        }
        Fault::ExecutorKill => {
            let phase = PHASES[index % PHASES.len()];
            let (node, reached) = kill_executor_in_phase(&mut env, &upgrade, phase).await;
            round.phase = Some(phase);
            round.phase_reached = Some(reached);
            round.detail = Some(node);
        }
        Fault::NatsKill => {
            if let Err(err) = env.nats.restart().await {
                round
                    .problems
                    .push(format!("nats-server did not restart: {err:#}"));
            }
        }
        Fault::NatsTerm => {
            env.nats.terminate();
            if let Err(err) = env.nats.restart().await {
                round
                    .problems
                    .push(format!("nats-server did not restart: {err:#}"));
            }
        }
        Fault::NatsFreeze => {
            env.nats.freeze();
            let frozen = Duration::from_millis(rng.random_range(5_000..8_000));
            // The fault itself is the passage of time with NATS frozen.
            tokio::time::sleep(frozen).await;
            env.nats.thaw();
        }
        Fault::Environment => {
            let kind = ENV_KINDS[rng.random_range(0..ENV_KINDS.len())];
            round.env_kind = Some(kind);
            environment_acts(&env, &upgrade, kind, &mut rng, &mut round).await;
        }
        Fault::Simulator => {
            let node = env.nodes[rng.random_range(0..env.nodes.len())].clone();
            let kind = SIM_FAULTS[rng.random_range(0..SIM_FAULTS.len())];
            let out = std::process::Command::new(tests::workspace_bin("baton-sim"))
                .args(["fault", "--dir"])
                .arg(&env.sim_dir)
                .args(["--node", &node])
                .args(kind)
                .output()
                .unwrap();
            if !out.status.success() {
                round.problems.push(format!(
                    "baton-sim fault {node} {kind:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            round.detail = Some(format!("{node} {}", kind.join(" ")));
        }
    }

    let mut last = None;
    let done = tests::wait_until(UPGRADE_TIMEOUT, || {
        last = env.status(&upgrade);
        if let (Some(gate), Some(v)) = (gate, &last) {
            if v.status == "waiting_approval" {
                // Approve every gate asked for (a re-plan may ask again).
                let _ = env.baton(&["approve", &upgrade, gate]);
            }
        }
        last.as_ref().is_some_and(|v| {
            matches!(
                v.status.as_str(),
                "completed" | "halted" | "aborted" | "needs_verification"
            )
        })
    })
    .await;
    let Some(view) = last.filter(|_| done) else {
        round.outcome = "timeout".into();
        round.problems.push(format!(
            "the upgrade did not end within {UPGRADE_TIMEOUT:?}\n{}",
            env.logs()
        ));
        return round;
    };
    round.outcome = view.status.clone();
    round.reason = view.reason.clone();
    if view.status != "completed" && view.reason.as_deref().unwrap_or("").is_empty() {
        round.problems.push("ended without a reason".into());
    }
    if fault == Fault::Environment && !matches!(view.status.as_str(), "completed" | "halted") {
        round.problems.push(format!(
            "an environment round must end completed or halted, not {}",
            view.status
        ));
    }

    check_outside(&env, &upgrade, &view, &mut round).await;
    round
}

/// Names of the nodes whose simulator state satisfies `pick`.
fn nodes_where(env: &Env, pick: impl Fn(&serde_json::Value) -> bool) -> Vec<String> {
    env.sim_state()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| pick(n))
        .filter_map(|n| n["name"].as_str().map(String::from))
        .collect()
}

/// A busy on-call: at this moment (the upgrade runs, waits at a gate, or is
/// paused by the on-call first), does `kind` to the cluster; a crashed node
/// is started again by the environment after a random while. Paused
/// upgrades are resumed (and gates approved by the round's final wait).
async fn environment_acts(
    env: &Env,
    upgrade: &str,
    kind: EnvKind,
    rng: &mut rand::rngs::StdRng,
    round: &mut Round,
) {
    let status = env.status(upgrade).map(|v| v.status).unwrap_or_default();
    let paused = status == "running" && rng.random_range(0..3) == 0 && {
        env.baton(&["pause", upgrade, "--reason", "on-call looks"])
            .status
            .success()
    };
    round.env_at = Some(if paused {
        "paused".into()
    } else if status == "waiting_approval" {
        "gate".into()
    } else {
        status
    });
    let pick = |names: Vec<String>, rng: &mut rand::rngs::StdRng| {
        (!names.is_empty()).then(|| names[rng.random_range(0..names.len())].clone())
    };
    let synced_followers = nodes_where(env, |n| {
        n["up"] == true && n["role"] == "follower" && n["pg"] == "synced"
    });
    let followers = nodes_where(env, |n| n["up"] == true && n["role"] != "leader");
    let up = nodes_where(env, |n| n["up"] == true);
    let (node, back_after) = match kind {
        EnvKind::MoveLeader => {
            let node = pick(synced_followers, rng);
            if let Some(node) = &node {
                let out = env.tool_as("operator", node, &["chef-backend-ctl", "promote", node]);
                if !out.status.success() {
                    round.detail = Some(format!(
                        "promote {node} refused: {}",
                        String::from_utf8_lossy(&out.stdout).trim()
                    ));
                }
            }
            (node, None)
        }
        EnvKind::CrashFollower => {
            let node = pick(followers, rng);
            if let Some(node) = &node {
                env.sim_on("crash", node, &[]);
            }
            (node, Some(rng.random_range(500..4_000)))
        }
        EnvKind::KillLeader => {
            let node = env.leader();
            if let Some(node) = &node {
                env.sim_on("crash", node, &[]);
            }
            (node, Some(rng.random_range(1_000..6_000)))
        }
        EnvKind::RestartNode => {
            let node = pick(up, rng);
            if let Some(node) = &node {
                env.sim_on("restart", node, &[]);
            }
            (node, None)
        }
    };
    if round.detail.is_none() {
        round.detail = Some(node.clone().unwrap_or_else(|| "no node fit".into()));
    }
    if paused {
        // The on-call looks around for a moment before resuming.
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..2_000))).await;
        let _ = env.baton(&["resume", upgrade]);
    }
    if let (Some(node), Some(ms)) = (node, back_after) {
        // The crash lasts this long (the fault is the passage of time).
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let out = env.tool_as("environment", &node, &["chef-backend-ctl", "start"]);
        if !out.status.success() {
            round.problems.push(format!(
                "the environment could not start {node} again: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
}

fn sim_fault(env: &Env, node: &str, kind: &[&str]) {
    let out = std::process::Command::new(tests::workspace_bin("baton-sim"))
        .args(["fault", "--dir"])
        .arg(&env.sim_dir)
        .args(["--node", node])
        .args(kind)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baton-sim fault {node} {kind:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills (and restarts) the executor of a node at `phase` of one of its
/// steps. Returns the node and whether the phase was reached before a bounded
/// wait ran out (the kill happens either way).
async fn kill_executor_in_phase(env: &mut Env, upgrade: &str, phase: Phase) -> (String, bool) {
    const WINDOW: Duration = Duration::from_secs(20);
    // The node of a command that runs now.
    let mut running: Option<usize> = None;
    let found = tests::wait_until(WINDOW, || {
        running = (0..env.nodes.len()).find(|i| env.command_running(&env.nodes[*i]));
        running.is_some()
    })
    .await;
    let index = running.unwrap_or(0);
    let node = env.nodes[index].clone();
    let reached = match phase {
        Phase::DuringCommand => {
            let reached = found && env.command_running(&node);
            kill_and_restart(env, index);
            reached
        }
        Phase::AfterCommandBeforeResult => {
            env.nats.freeze();
            let finished = tests::wait_until(WINDOW, || !env.command_running(&node)).await;
            kill_and_restart_frozen(env, index);
            found && finished
        }
        Phase::BeforeCommand => {
            let current = env.status(upgrade).and_then(|v| v.current.map(|c| c.step));
            let finished = tests::wait_until(WINDOW, || !env.command_running(&node)).await;
            // Freeze the executor between steps; kill it once its node's
            // next step is scheduled.
            env.executors[index].signal(Signal::SIGSTOP);
            let scheduled = tests::wait_until(WINDOW, || {
                env.status(upgrade)
                    .and_then(|v| v.current)
                    .is_some_and(|c| c.node == node && Some(c.step) != current)
            })
            .await;
            kill_and_restart(env, index);
            found && finished && scheduled
        }
        Phase::AfterResult => {
            let current = env.status(upgrade).and_then(|v| v.current.map(|c| c.step));
            let finished = tests::wait_until(WINDOW, || !env.command_running(&node)).await;
            // The result is in the log once another step is current.
            let recorded = tests::wait_until(WINDOW, || {
                env.status(upgrade).and_then(|v| v.current.map(|c| c.step)) != current
            })
            .await;
            kill_and_restart(env, index);
            found && finished && recorded
        }
    };
    (node, reached)
}

fn kill_and_restart(env: &mut Env, index: usize) {
    env.executors[index].signal(Signal::SIGKILL);
    env.executors[index].wait_exit(Duration::from_secs(10));
    env.restart_executor(index);
}

/// Kills the executor while nats-server is frozen, thaws it, restarts the
/// executor.
fn kill_and_restart_frozen(env: &mut Env, index: usize) {
    env.executors[index].signal(Signal::SIGKILL);
    env.executors[index].wait_exit(Duration::from_secs(10));
    env.nats.thaw();
    env.restart_executor(index);
}

/// The checks that do not trust Baton: the simulator's report and journal,
/// the log re-verified by the CLI, the mirror compared with the log.
async fn check_outside(
    env: &Env,
    upgrade: &str,
    view: &workflow::service::api::StatusView,
    round: &mut Round,
) {
    let report = env.report();
    if report.verdict != sim::Verdict::Safe {
        round.unsafe_verdicts += 1;
        round.problems.push(format!("unsafe: {}", report.render()));
    }
    // Two nodes out at once by Baton's doing: the simulator charges it
    // (a switchover's own re-syncs and what the environment alone caused
    // are not; those are listed as incidents).
    if let Some(v) = report
        .violations
        .iter()
        .find(|v| v.rule == sim::report::Rule::TooManyOutOfService)
    {
        round.simultaneous_outages += 1;
        round
            .problems
            .push(format!("nodes out of service at once: {}", v.message));
    }
    for (node, count) in &report.installs {
        if *count > 1 {
            round.double_executions += 1;
            round
                .problems
                .push(format!("{node} installed {count} times"));
        }
    }
    let journal = std::fs::read_to_string(env.sim_dir.join("journal.jsonl")).unwrap_or_default();
    let demotes = journal
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "command")
        .filter(|v| {
            let argv = v["argv"].as_array().cloned().unwrap_or_default();
            argv.iter().any(|a| a == "demote")
        })
        .count();
    if demotes > 1 {
        round.double_executions += 1;
        round.problems.push(format!("demote ran {demotes} times"));
    }
    if view.status == "completed" && !report.failover_at_end {
        round.problems.push("completed with failover off".into());
    }
    if view.status != "completed" && !view.failover_blocked && !report.failover_at_end {
        round
            .problems
            .push("the log says failover is restored, the cluster says it is off".into());
    }

    let audit = env.baton(&["audit", "verify"]);
    let replay = env.baton(&["replay", upgrade, "--verify"]);
    if !audit.status.success() || !replay.status.success() {
        round.verification_failures += 1;
        round.problems.push(format!(
            "verification: audit {} {} / replay {} {}",
            audit.status,
            String::from_utf8_lossy(&audit.stdout),
            replay.status,
            String::from_utf8_lossy(&replay.stdout)
        ));
    }

    // Every mirrored event (published only after its flush) is in the log.
    let logged = env.logged_hashes(upgrade);
    match mirrored(env, upgrade).await {
        Ok(mirror) => {
            for (seq, hash) in mirror {
                if logged.get(&seq) != Some(&hash) {
                    round.lost_events += 1;
                    round.problems.push(format!(
                        "mirrored event {seq} is not in the log as published"
                    ));
                }
            }
        }
        Err(err) => round
            .problems
            .push(format!("reading BATON_EVENTS: {err:#}")),
    }
}

/// (seq, hash) of every event of `upgrade` in `BATON_EVENTS`.
async fn mirrored(env: &Env, upgrade: &str) -> anyhow::Result<Vec<(u64, String)>> {
    use async_nats::jetstream::consumer::{pull, DeliverPolicy};
    // As the service (the role that may read BATON_EVENTS).
    let client = if env.nats_auth {
        env.secure
            .connect(&env.nats.url(), Some(&env.secure.service_key))
            .await?
    } else {
        async_nats::connect(env.nats.url()).await?
    };
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream(protocol::subjects::EVENTS_STREAM).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: protocol::subjects::event(upgrade),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending as usize;
    let mut out = Vec::new();
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.fetch().max_messages(pending).messages().await?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let value: serde_json::Value = serde_json::from_slice(&message.payload)?;
        out.push((
            value["seq"].as_u64().unwrap_or(0),
            value["hash"].as_str().unwrap_or_default().to_string(),
        ));
        let _ = message.ack().await;
    }
    Ok(out)
}
