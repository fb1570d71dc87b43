//! Baton on a NATS cluster: three nats-servers (`tests::NatsCluster`), every
//! stream and bucket with three replicas (`baton server --nats-replicas 3`),
//! the service, the executors and the CLI given all three URLs. A simulated
//! three-node cluster is upgraded while
//! - the server leading `BATON_STEPS` is killed (SIGKILL) once the first
//!   steps have finished, and stays down: the other two elect new leaders for
//!   every stream, consumer and bucket and the upgrade goes on;
//! - once more steps have finished, another server is stopped (SIGTERM) and
//!   started again on its ports and store: while it is down one server of
//!   three runs, JetStream has no quorum and the upgrade waits; it goes on
//!   when the server is back.
//!
//! Nothing may be lost and nothing run twice: the upgrade completes, the
//! simulator's verdict is SAFE with each node installed once, the log
//! verifies, every step attempt the log scheduled has its result recorded
//! (none given up on), and the simulator's journal shows each of those
//! commands run exactly once on its node, none more.
//!
//! The test can fail: with `BATON_NATS_CLUSTER_REPLICAS=1` the streams have
//! one copy each, the killed server took `BATON_STEPS` with it, and the
//! upgrade never takes another step (the wait for progress after the kill
//! fails: tests/FLEET.md, "Clustered NATS", has the run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use protocol::subjects;
use tests::NatsServer;
use workflow::core::Event;

use super::e2e::{Env, Setup};

/// How long the upgrade may take to take its next steps after a fault.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// The first fault once this many steps have finished.
const KILL_AFTER_STEPS: u64 = 3;
/// The second fault once this many more have finished with a server down.
const RESTART_AFTER_MORE_STEPS: u64 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_loses_nothing_and_runs_nothing_twice_while_nats_servers_fail() {
    // BATON_NATS_CLUSTER_REPLICAS=1 is the negative run of the module's docs.
    let replicas: usize = match std::env::var("BATON_NATS_CLUSTER_REPLICAS") {
        Ok(n) => n
            .parse()
            .expect("BATON_NATS_CLUSTER_REPLICAS: a replica count"),
        Err(_) => 3,
    };
    let mut env = Env::start(Setup {
        nats_servers: 3,
        nats_replicas: replicas,
        nats_auth: false,
        sync_ms: 400,
        ..Setup::default()
    })
    .await;
    assert_replicas(&env, replicas).await;
    let started = Instant::now();
    let upgrade = env.submit(&[]);

    // The first fault: the server leading the steps stream dies for good.
    let killed_at = wait_for_steps(&env, &upgrade, KILL_AFTER_STEPS).await;
    let killed = tests::nats_cluster::stream_leader(members(&env), subjects::STEPS_STREAM)
        .await
        .expect("BATON_STEPS has a leader");
    member_mut(&mut env, killed).stop();
    let kill_ms = now_ms();
    let after_kill = wait_for_steps(&env, &upgrade, killed_at + 1).await;

    // The second: another server stopped and started again; with the first
    // still down, the cluster has no quorum until it is back.
    wait_for_steps(&env, &upgrade, after_kill + RESTART_AFTER_MORE_STEPS).await;
    let restarted = (killed + 1) % 3;
    let at_restart = wait_for_steps(&env, &upgrade, 0).await;
    let (stop, stop_ms) = (Instant::now(), now_ms());
    member_mut(&mut env, restarted).terminate();
    member_mut(&mut env, restarted)
        .start_again()
        .await
        .expect("the stopped server starts again on its ports and store");
    let down = stop.elapsed();
    wait_for_steps(&env, &upgrade, at_restart + 1).await;

    env.expect_completed_safely(&upgrade).await;
    let events = env.events(&upgrade);
    assert_every_result_came_back(&events);
    assert_each_command_ran_once(&env, &events);
    // What the faults cost, from the log's own times (tests/FLEET.md).
    let mut results = Vec::new();
    for event in &events {
        if let Event::StepResultRecorded { at_ms, .. } = event {
            results.push(*at_ms);
        }
    }
    let mut gaps: Vec<u64> = results.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.sort_unstable();
    let next_three = |from: u64| -> Vec<u64> {
        results
            .iter()
            .filter(|t| **t >= from)
            .take(3)
            .map(|t| t - from)
            .collect()
    };
    eprintln!(
        "clustered NATS: replicas {replicas}; {} step results in {:.1} s, gap between results \
         median {} ms, longest {} ms; n{} (BATON_STEPS' leader) killed after {killed_at} results, \
         the next three came {:?} ms after the kill; n{} stopped after {at_restart} results and \
         ready again {} ms later, the next three came {:?} ms after its stop",
        results.len(),
        started.elapsed().as_secs_f64(),
        gaps.get(gaps.len() / 2).copied().unwrap_or(0),
        gaps.last().copied().unwrap_or(0),
        killed + 1,
        next_three(kill_ms),
        restarted + 1,
        down.as_millis(),
        next_three(stop_ms),
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The cluster's servers in order (`n1`, `n2`, `n3`).
fn members(env: &Env) -> impl Iterator<Item = &NatsServer> {
    std::iter::once(&env.nats).chain(&env.nats_peers)
}

fn member_mut(env: &mut Env, index: usize) -> &mut NatsServer {
    match index {
        0 => &mut env.nats,
        i => &mut env.nats_peers[i - 1],
    }
}

/// Every stream and bucket the service created has `replicas` copies.
async fn assert_replicas(env: &Env, replicas: usize) {
    let addrs: Vec<async_nats::ServerAddr> =
        members(env).map(|s| s.url().parse().unwrap()).collect();
    let js = jetstream::new(async_nats::connect(addrs).await.unwrap());
    for name in [
        subjects::STEPS_STREAM.to_string(),
        subjects::RESULTS_STREAM.to_string(),
        subjects::EVENTS_STREAM.to_string(),
        subjects::CHECKPOINTS_STREAM.to_string(),
        format!("KV_{}", subjects::PRESENCE_BUCKET),
        format!("KV_{}", subjects::CLAIMS_BUCKET),
        format!("KV_{}", subjects::LEASE_BUCKET),
    ] {
        let mut stream = js.get_stream(&name).await.unwrap();
        let info = stream.info().await.unwrap();
        assert_eq!(info.config.num_replicas, replicas, "{name}");
        let copies = info.cluster.as_ref().map_or(0, |c| c.replicas.len() + 1);
        assert_eq!(copies, replicas, "{name}: {:?}", info.cluster);
    }
}

/// How many step results the log holds, through the API (`None` while it
/// does not answer).
fn finished_steps(env: &Env, upgrade: &str) -> Option<u64> {
    let out = env.baton(&["replay", upgrade, "--json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let events = value["events"].as_array()?;
    let results = events
        .iter()
        .filter_map(|e| serde_json::from_value::<Event>(e["event"].clone()).ok())
        .filter(|e| matches!(e, Event::StepResultRecorded { .. }))
        .count();
    Some(results as u64)
}

/// Waits until the log holds at least `n` step results; returns how many.
async fn wait_for_steps(env: &Env, upgrade: &str, n: u64) -> u64 {
    let mut seen = None;
    let reached = tests::wait_until(PROGRESS_TIMEOUT, || {
        seen = finished_steps(env, upgrade).or(seen);
        seen.is_some_and(|seen| seen >= n)
    })
    .await;
    assert!(
        reached,
        "the upgrade did not get to {n} step results within {PROGRESS_TIMEOUT:?} (it has {seen:?}); \
         status: {:#?}\n{}",
        env.status(upgrade),
        env.logs()
    );
    seen.unwrap_or_default()
}

/// Every step attempt the log scheduled has exactly one result recorded,
/// and none was given up on.
fn assert_every_result_came_back(events: &[Event]) {
    let mut results: BTreeMap<(u64, u32), u32> = BTreeMap::new();
    for event in events {
        match event {
            Event::StepScheduled { step, attempt, .. } => {
                results.entry((*step, *attempt)).or_default();
            }
            Event::StepResultRecorded { step, attempt, .. } => {
                *results.entry((*step, *attempt)).or_default() += 1;
            }
            Event::StepDeadlinePassed { step, attempt, .. } => {
                panic!("step {step} attempt {attempt}: its result never came back")
            }
            _ => {}
        }
    }
    let wrong: Vec<_> = results.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        wrong.is_empty(),
        "(step, attempt) -> results recorded: {wrong:?}"
    );
}

/// The simulator's journal shows each scheduled command run exactly once on
/// its node: the commands Baton ran, per node, are the steps it scheduled.
fn assert_each_command_ran_once(env: &Env, events: &[Event]) {
    let mut scheduled: BTreeMap<(String, Vec<String>), u32> = BTreeMap::new();
    for event in events {
        if let Event::StepScheduled { node, argv, .. } = event {
            *scheduled.entry((node.clone(), argv.clone())).or_default() += 1;
        }
    }
    let mut ran: BTreeMap<(String, Vec<String>), u32> = BTreeMap::new();
    for command in
        env.journal_commands(|v| v["actor"].as_str().unwrap_or("orchestrator") == "orchestrator")
    {
        let node = command["node"].as_str().unwrap_or_default().to_string();
        let argv: Vec<String> = serde_json::from_value(command["argv"].clone()).unwrap();
        *ran.entry((node, argv)).or_default() += 1;
    }
    assert!(!ran.is_empty(), "the journal shows no command");
    assert_eq!(
        ran, scheduled,
        "commands run per node (left) vs steps scheduled (right)"
    );
}

/// The replica count is fixed when the streams and buckets are created: a
/// service restarted with another one stops at once and says which object
/// has how many and which flag to change (the lease bucket is checked first).
#[tokio::test(flavor = "multi_thread")]
async fn a_service_given_another_replica_count_than_the_streams_refuses_to_start_naming_the_flag() {
    let mut env = Env::start(Setup {
        nats_servers: 3,
        nats_replicas: 3,
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let server = env.server.as_mut().unwrap();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(10))
        .expect("the service stops");
    env.nats_replicas = 1;
    env.start_server();
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the service refuses to start");
    assert!(!status.success());
    let log = server.log();
    assert!(
        log.contains("3 replicas, expected 1") && log.contains("--nats-replicas"),
        "{log}"
    );
}

/// A service started while its NATS cluster is still forming (one server of
/// three not up yet, so a replicated bucket has no place to go: "no suitable
/// peers for placement") waits for JetStream, saying why, instead of exiting;
/// once the last server is up it starts and the upgrade completes. Before it
/// waited, such a start ended the service (seen in CI's clustered starts).
#[tokio::test(flavor = "multi_thread")]
async fn a_service_started_before_its_nats_cluster_has_formed_waits_for_it_then_upgrades() {
    let env = Env::start(Setup {
        nats_servers: 3,
        nats_replicas: 3,
        nats_late: 1,
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let log = env.server.as_ref().unwrap().log();
    let waited = log
        .lines()
        .find(|line| line.contains("JetStream is not usable yet"))
        .expect("the service said it waits");
    assert!(
        waited.contains("what=") && waited.contains("error="),
        "the retry names what failed and why: {waited}"
    );
    eprintln!("the service waited: {waited}");
    assert_replicas(&env, 3).await;
    let upgrade = env.submit(&[]);
    env.expect_completed_safely(&upgrade).await;
}
