//! The Decider as data: given a history (events), when an input arrives, then these events (or this
//! rejection). Histories come from driving the core against the fake cluster, so they are real ones.
//! Covers every phase, the failure paths and the safety rules S1-S5 of DESIGN.md.

mod common;

use std::collections::BTreeMap;

use common::*;
use workflow::core::builtin::chef_backend::{
    parse_cluster_status, ClusterMember, ClusterStatus, Role,
};
use workflow::core::{
    decide, replay, verify, Action, ClusterFile, Event, Gate, Input, NodePhase, Observation,
    Outcome, Phase, Rejection, Resolution, State, Status, WaitPurpose, WindDownCause,
};

/// Given `history`, when `input`: the events decided (the state is rebuilt from the history alone).
fn when(history: &[Event], input: Input) -> Result<Vec<Event>, Rejection> {
    decide(&replay(history), &input)
}

fn result_of(
    step: &workflow::core::ScheduledStep,
    r: (Outcome, Option<i32>, String, String),
    now: u64,
) -> Input {
    Input::StepFinished {
        step: step.step,
        attempt: step.attempt,
        outcome: r.0,
        exit_code: r.1,
        stdout: r.2,
        stderr: r.3,
        reason: None,
        executor: "exec-1".into(),
        now_ms: now,
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn started(procedure: &str, gates: &str) -> (Run, FakeCluster) {
    let mut run = Run::new();
    let fake = FakeCluster::new("3.0.0-1");
    run.input(submit(cluster(procedure, gates), run.now))
        .unwrap();
    (run, fake)
}

fn halted_reason(state: &State) -> (String, Option<String>) {
    match state.status() {
        Status::Halted {
            reason,
            failover_pending,
        }
        | Status::Aborted {
            reason,
            failover_pending,
        } => (reason, failover_pending),
        other => panic!("not halted: {other:?}"),
    }
}

// ----- preflight -----

#[test]
fn preflight_submit_schedules_cluster_status_first() {
    let events = when(&[], submit(cluster("runbook", ""), 1_000)).unwrap();
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(
        matches!(&events[0], Event::UpgradeSubmitted { target_version, package, .. }
        if target_version == "3.1.0-1" && package == "/var/tmp/chef-backend_3.1.0-1_amd64.deb")
    );
    assert_eq!(
        events[1],
        Event::StepScheduled {
            step: 1,
            attempt: 1,
            node: "backend-1".into(),
            group: "g1".into(),
            action: Action::ProbeClusterStatus,
            argv: strings(&["chef-backend-ctl", "cluster-status"]),
            env: BTreeMap::new(),
            timeout_ms: 30_000,
            deadline_ms: 1_000 + 30_000 + 10_000,
        }
    );
}

#[test]
fn preflight_refuses_without_an_online_executor() {
    let mut input = submit(cluster("runbook", ""), 1_000);
    if let Input::Submit {
        executors_online, ..
    } = &mut input
    {
        executors_online.retain(|g| g != "g3");
    }
    let events = when(&[], input).unwrap();
    assert_eq!(events.len(), 3, "{events:#?}");
    let reason = "preflight refused: no online executor for backend-3 (group g3)".to_string();
    assert_eq!(
        events[1],
        Event::WindDownStarted {
            cause: WindDownCause::Failure,
            reason: reason.clone(),
            at_ms: 1_000
        }
    );
    assert_eq!(
        events[2],
        Event::UpgradeHalted {
            reason,
            failover_pending: None,
            at_ms: 1_000
        }
    );
}

#[test]
fn preflight_refuses_an_unhealthy_cluster() {
    let (mut run, mut fake) = started("runbook", "");
    // backend-3 is still syncing: the status table shows it.
    fake.nodes[2].syncing = 100;
    run.run_to_rest(&mut fake, 100);
    let (reason, pending) = halted_reason(&run.state);
    assert!(
        reason.starts_with("preflight refused: postgresql: leader: 1; offline: 0; syncing: 1"),
        "{reason}"
    );
    assert!(
        reason.contains("`probe_status` on backend-1") && reason.contains("exit code 0"),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(
        actions_of(&run.history).is_empty(),
        "no action may run: {:?}",
        actions_of(&run.history)
    );
}

#[test]
fn preflight_refuses_without_a_single_leader() {
    let (mut run, mut fake) = started("runbook", "");
    fake.nodes[0].role = FakeRole::Leader;
    run.run_to_rest(&mut fake, 100);
    let (reason, _) = halted_reason(&run.state);
    assert!(
        reason.contains("2 leaders (backend-1, backend-2), want exactly one"),
        "{reason}"
    );
    assert!(actions_of(&run.history).is_empty());

    let (mut run, mut fake) = started("runbook", "");
    fake.nodes[1].role = FakeRole::Follower;
    run.run_to_rest(&mut fake, 100);
    let (reason, _) = halted_reason(&run.state);
    assert!(reason.contains("0 leaders"), "{reason}");
}

#[test]
fn preflight_retries_a_probe_that_failed_then_refuses() {
    let (mut run, _fake) = started("runbook", "");
    for attempt in 1..=3 {
        let step = run.outstanding();
        assert_eq!((step.step, step.attempt), (1, attempt));
        let events = run.finish(&step, failed(1, "cannot reach etcd"));
        if attempt < 3 {
            assert!(matches!(
                events.last(),
                Some(Event::WaitStarted {
                    purpose: WaitPurpose::Retry { step: 1 },
                    ..
                })
            ));
            // Backoff doubles: 500, 1000.
            let Some(Event::WaitStarted { until_ms, .. }) = events.last() else {
                unreachable!()
            };
            assert_eq!(*until_ms, run.now + 500 * (1 << (attempt - 1)));
            assert_eq!(
                run.input(Input::Tick {
                    now_ms: until_ms - 1
                })
                .unwrap(),
                vec![]
            );
            run.tick();
        }
    }
    let (reason, _) = halted_reason(&run.state);
    assert!(
        reason.contains("cannot reach etcd") && reason.contains("attempt 3"),
        "{reason}"
    );
}

/// The fake's own S4 check still assumes preflight skips a node already at the target (a second install there
/// is one the core repeated); since every node is restarted onto its package, an install over the same version
/// is planned. Every other violation still counts.
fn violations_but_reinstalls(fake: &FakeCluster) -> Vec<String> {
    fake.violations
        .list
        .iter()
        .filter(|v| !v.starts_with("S4: install ran again on"))
        .cloned()
        .collect()
}

#[test]
fn preflight_refuses_a_cluster_of_fewer_than_three_nodes_before_any_probe() {
    // Given a cluster file with two nodes.
    let toml = cluster_toml("runbook", "");
    let cut = toml.find("[[nodes]]\nname = \"backend-3\"").unwrap();
    let end = toml.find("[upgrade]").unwrap();
    let two = format!("{}{}", &toml[..cut], &toml[end..]);
    let c = ClusterFile::parse("cluster.toml", &two).unwrap();
    assert_eq!(c.nodes.len(), 2);
    // When it is submitted.
    let events = when(&[], submit(c, 1_000)).unwrap();
    // Then it is refused at once, before any probe: etcd would lose its quorum with one node stopped.
    assert!(scheduled(&events).is_empty(), "{events:#?}");
    let Some(Event::UpgradeHalted {
        reason,
        failover_pending: None,
        ..
    }) = events.last()
    else {
        panic!("{events:#?}")
    };
    assert!(
        reason.starts_with(
            "preflight refused: the cluster has 2 node(s); a rolling upgrade needs at least 3"
        ) && reason.contains("quorum"),
        "{reason}"
    );
}

#[test]
fn preflight_refuses_what_cannot_roll_before_any_action() {
    // Given a cluster that is healthy but that a rolling upgrade to 3.1.0-1 must not touch, when preflight
    // runs, then it is refused before any action, with a reason naming the node and the versions.
    /// What is refused, the version every node runs, the target asked for (else the package's), how the
    /// cluster differs, and what the reason must say.
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        fn(&mut FakeCluster),
        &'static [&'static str],
    );
    let cases: [Case; 8] = [
        (
            "a major-version change",
            "2.4.0-1",
            None,
            |_| {},
            &["backend-1 runs 2.4.0-1 and the target is 3.1.0-1: a major-version change"],
        ),
        (
            "a downgrade",
            "3.0.0-1",
            None,
            |f| {
                f.nodes[2].installed = "3.2.0-1".into();
                f.nodes[2].running_version = "3.2.0-1".into();
            },
            &["backend-3 has 3.2.0-1, newer than the target 3.1.0-1: a downgrade is not an upgrade"],
        ),
        (
            "the whole cluster newer than the target",
            "3.2.0-1",
            None,
            |_| {},
            &["backend-1 has 3.2.0-1, newer than the target 3.1.0-1"],
        ),
        (
            "the package file missing on one node",
            "3.0.0-1",
            None,
            |f| {
                f.missing_package.insert("backend-3".into());
            },
            &["`probe_package` on backend-3", "No such file or directory"],
        ),
        (
            "a package file that is not the target",
            "3.0.0-1",
            Some("3.1.0-2"),
            |_| {},
            &["the package file /var/tmp/chef-backend_3.1.0-1_amd64.deb on backend-1 is version 3.1.0-1, not the target 3.1.0-2"],
        ),
        (
            "cluster failover already off",
            "3.0.0-1",
            None,
            |f| f.failover = false,
            &["cluster failover is already off"],
        ),
        (
            "node failover off on one node",
            "3.0.0-1",
            None,
            |f| f.nodes[0].node_failover = false,
            &["node-level failover is off on backend-1"],
        ),
        (
            "a half-configured package",
            "3.0.0-1",
            None,
            |f| f.nodes[2].half_configured = true,
            &["the chef-backend package on backend-3 is half-configured"],
        ),
    ];
    for (what, version, target, setup, parts) in cases {
        let mut run = Run::new();
        let mut fake = FakeCluster::new(version);
        setup(&mut fake);
        let mut input = submit(cluster("runbook", ""), run.now);
        if let Input::Submit { target_version, .. } = &mut input {
            *target_version = target.map(str::to_string);
        }
        run.input(input).unwrap();
        run.run_to_rest(&mut fake, 200);
        let (reason, pending) = halted_reason(&run.state);
        assert!(
            reason.starts_with("preflight refused: "),
            "{what}: {reason}"
        );
        for part in parts {
            assert!(reason.contains(part), "{what}: missing {part}: {reason}");
        }
        assert_eq!(pending, None, "{what}");
        assert!(run.state.plan().is_none(), "{what}: no plan");
        assert!(
            actions_of(&run.history).is_empty(),
            "{what}: {:?}",
            actions_of(&run.history)
        );
        assert!(!fake.ever_blocked, "{what}");
    }
}

#[test]
fn a_node_already_at_the_target_is_still_restarted_onto_it() {
    // Given backend-1 has the target installed but still runs the old version (an aborted `upgrade` left it
    // so): installed is not running.
    let (mut run, mut fake) = started("runbook", "");
    fake.nodes[0].installed = "3.1.0-1".into();
    // When the upgrade runs.
    run.run_to_rest(&mut fake, 1_000);
    // Then nothing is skipped: backend-1 is stopped, installed and started like any follower, and runs the
    // target at the end.
    assert_eq!(run.state.status(), Status::Completed);
    let plan = run.state.plan().unwrap();
    assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
    assert_eq!(
        plan.nodes_to_upgrade(),
        vec!["backend-1", "backend-3", "backend-2"]
    );
    let on_1: Vec<String> = actions_of(&run.history)
        .into_iter()
        .filter(|(n, _)| n == "backend-1")
        .map(|(_, a)| a)
        .collect();
    assert_eq!(on_1[..3], ["stop", "install", "start"].map(String::from));
    assert_eq!(run.state.nodes()["backend-1"].phase, NodePhase::Upgraded);
    assert_eq!(fake.nodes[0].running_version, "3.1.0-1");
    assert!(fake.all_at_target());
    assert!(
        violations_but_reinstalls(&fake).is_empty(),
        "{:?}",
        fake.violations.list
    );
}

#[test]
fn preflight_with_everything_installed_is_a_full_rolling_restart_that_completes() {
    // Given every node has the target installed, none runs it yet.
    let (mut run, mut fake) = started("runbook", "");
    for n in &mut fake.nodes {
        n.installed = "3.1.0-1".into();
    }
    // When the upgrade runs.
    run.run_to_rest(&mut fake, 1_000);
    // Then it is a whole rolling restart, with failover blocked and restored, a switchover, and every node
    // running the target at the end.
    assert_eq!(run.state.status(), Status::Completed);
    assert!(run.state.plan().unwrap().skipped.is_empty());
    let acts = actions_of(&run.history);
    for node in ["backend-1", "backend-2", "backend-3"] {
        for action in ["stop", "install", "start"] {
            assert_eq!(
                acts.iter()
                    .filter(|(n, a)| n == node && a == action)
                    .count(),
                1,
                "{action} on {node}: {acts:?}"
            );
        }
    }
    assert!(acts.iter().any(|(n, a)| n == "backend-2" && a == "demote"));
    assert!(fake.ever_blocked && fake.failover && !run.state.failover_blocked());
    assert!(fake.all_at_target());
    assert_eq!(fake.leader_name().as_deref(), Some("backend-1"));
    assert!(
        violations_but_reinstalls(&fake).is_empty(),
        "{:?}",
        fake.violations.list
    );
}

#[test]
fn plan_only_stops_after_the_plan() {
    let mut input = submit(cluster("runbook", ""), 1_000);
    if let Input::Submit { plan_only, .. } = &mut input {
        *plan_only = true;
    }
    let mut run = Run::new();
    run.input(input).unwrap();
    let mut fake = FakeCluster::new("3.0.0-1");
    run.run_to_rest(&mut fake, 100);
    assert_eq!(run.state.status(), Status::Planned);
    assert!(run.state.is_terminal());
    assert!(actions_of(&run.history).is_empty());
    let plan = run.state.plan().unwrap();
    assert_eq!(plan.leader, "backend-2");
    assert_eq!(plan.guids["backend-1"], "79d84527cf937f3daa94c1435d0a4249");
    assert_eq!(run.state.plan_hash().unwrap(), plan.hash());
    let runs: Vec<(String, Action)> = plan
        .items
        .iter()
        .filter_map(|i| match i {
            workflow::core::PlanItem::Run { node, action, .. } => Some((node.clone(), *action)),
            _ => None,
        })
        .collect();
    use Action::*;
    let want: Vec<(String, Action)> = [
        ("backend-2", BlockFailover),
        ("backend-1", Stop),
        ("backend-1", Install),
        ("backend-1", Start),
        ("backend-3", Stop),
        ("backend-3", Install),
        ("backend-3", Start),
        ("backend-2", UnblockFailover),
        ("backend-2", Demote),
        ("backend-1", BlockFailover),
        ("backend-2", Stop),
        ("backend-2", Install),
        ("backend-2", Start),
        ("backend-1", UnblockFailover),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), *a))
    .collect();
    assert_eq!(runs, want);
}

#[test]
fn expected_plan_hash_mismatch_refuses_naming_both_hashes() {
    let mut input = submit(cluster("runbook", ""), 1_000);
    if let Input::Submit {
        expected_plan_hash, ..
    } = &mut input
    {
        *expected_plan_hash = Some("deadbeef".into());
    }
    let mut run = Run::new();
    run.input(input).unwrap();
    let mut fake = FakeCluster::new("3.0.0-1");
    run.run_to_rest(&mut fake, 100);
    let (reason, pending) = halted_reason(&run.state);
    let computed = run.state.plan_hash().unwrap().to_string();
    assert!(
        reason.contains("expected deadbeef") && reason.contains(&computed),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(actions_of(&run.history).is_empty());
}

#[test]
fn matching_plan_hash_proceeds() {
    let mut plan_run = Run::new();
    let mut input = submit(cluster("runbook", ""), 1_000);
    if let Input::Submit { plan_only, .. } = &mut input {
        *plan_only = true;
    }
    plan_run.input(input.clone()).unwrap();
    plan_run.run_to_rest(&mut FakeCluster::new("3.0.0-1"), 100);
    let hash = plan_run.state.plan_hash().unwrap().to_string();
    if let Input::Submit {
        plan_only,
        expected_plan_hash,
        ..
    } = &mut input
    {
        *plan_only = false;
        *expected_plan_hash = Some(hash);
    }
    let mut run = Run::new();
    run.input(input).unwrap();
    let mut fake = FakeCluster::new("3.0.0-1");
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
}

// ----- block failover, followers, S1 -----

/// The probes (action, node) scheduled in `events`, in order.
fn probes_in(events: &[Event]) -> Vec<(Action, String)> {
    scheduled(events)
        .into_iter()
        .filter(|s| s.action.is_probe())
        .map(|s| (s.action, s.node))
        .collect()
}

/// `(action, node)` pairs, for comparing with `probes_in`.
fn pairs(v: &[(Action, &str)]) -> Vec<(Action, String)> {
    v.iter().map(|(a, n)| (*a, n.to_string())).collect()
}

/// The index in `history` of the last `StepScheduled` of `action` on `node`.
fn last_scheduled(history: &[Event], action: Action, node: &str) -> usize {
    history
        .iter()
        .rposition(|e| matches!(e, Event::StepScheduled { action: a, node: n, .. } if *a == action && n == node))
        .unwrap_or_else(|| panic!("{action} on {node} was scheduled"))
}

/// The last of `events` scheduled the first probe of a guard: runs it on the fake until `action` on `node` is
/// outstanding, checks that the guard's probes were exactly `guard`, that they all passed, and returns the action.
fn guard_then(
    run: &mut Run,
    fake: &mut FakeCluster,
    events: &[Event],
    guard: &[(Action, &str)],
    action: Action,
    node: &str,
) -> workflow::core::ScheduledStep {
    assert!(
        matches!(events.last(), Some(Event::StepScheduled { action: a, node: n, .. }) if (*a, n.as_str()) == guard[0]),
        "the guard starts with {:?}: {events:#?}",
        guard[0]
    );
    let from = run.history.len() - 1;
    run.until(fake, "the guarded action", |r| r.next_is(action, node));
    let between = &run.history[from..];
    assert_eq!(probes_in(between), pairs(guard));
    assert!(
        between
            .iter()
            .all(|e| !matches!(e, Event::CheckEvaluated { passed: false, .. })),
        "{between:#?}"
    );
    run.outstanding()
}

#[test]
fn block_failover_is_the_first_action_on_the_leader_after_its_guard() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "block scheduled", |r| {
        r.next_is(Action::BlockFailover, "backend-2")
    });
    let phase = run
        .history
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::PhaseEntered {
                    phase: Phase::BlockFailover,
                    ..
                }
            )
        })
        .unwrap();
    assert!(matches!(
        run.history[phase + 1],
        Event::ItemStarted { index: 0, .. }
    ));
    // The guard ran first: cluster-status from a live node, the leader's own status, then the failover settings
    // (which name the leader again), and all passed.
    let after = &run.history[phase..];
    assert_eq!(
        probes_in(after),
        pairs(&[
            (Action::ProbeClusterStatus, "backend-1"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ])
    );
    let checks: Vec<bool> = after
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated { passed, .. } => Some(*passed),
            _ => None,
        })
        .collect();
    assert_eq!(checks, [true, true, true]);
    assert_eq!(
        actions_of(&run.history),
        vec![("backend-2".to_string(), "block_failover".to_string())],
        "nothing ran before it"
    );
    assert_eq!(
        run.outstanding().argv,
        strings(&["chef-backend-ctl", "set-cluster-failover", "off"])
    );
    assert!(
        run.state.failover_blocked(),
        "the obligation is recorded as soon as blocking is scheduled"
    );
    assert_eq!(run.state.status(), Status::Running);
}

#[test]
fn followers_are_upgraded_one_at_a_time_with_a_fresh_health_check_between() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "second follower stopped", |r| {
        r.next_is(Action::Stop, "backend-3")
    });
    // Between backend-1's start and backend-3's stop, backend-1 was re-observed healthy: cluster-status,
    // status and version probes on backend-1 passed after the start (S1)...
    let start = last_scheduled(&run.history, Action::Start, "backend-1");
    let synced = run.history[start..]
        .iter()
        .position(|e| matches!(e, Event::ItemCompleted { .. }))
        .map(|i| start + i)
        .and_then(|i| {
            run.history[i + 1..]
                .iter()
                .position(|e| matches!(e, Event::ItemCompleted { .. }))
                .map(|j| i + 1 + j)
        })
        .unwrap();
    let checks: Vec<(String, bool)> = run.history[start..synced]
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated { node, passed, .. } => Some((node.clone(), *passed)),
            _ => None,
        })
        .collect();
    assert!(
        checks.iter().any(|(_, p)| !p),
        "the fake syncs slowly, so at least one check failed first: {checks:?}"
    );
    let passed: Vec<&(String, bool)> = checks.iter().rev().take(3).collect();
    assert!(
        passed.iter().all(|(n, p)| n == "backend-1" && *p),
        "{checks:?}"
    );
    let probes = probes_in(&run.history[start..synced]);
    assert_eq!(
        probes[probes.len() - 3..],
        pairs(&[
            (Action::ProbeClusterStatus, "backend-1"),
            (Action::ProbeStatus, "backend-1"),
            (Action::ProbeVersion, "backend-1")
        ])
    );
    // ...and then backend-3's stop had its own guard: cluster-status, the leader's status and the failover
    // settings, all passed, with nothing else between.
    let stop = last_scheduled(&run.history, Action::Stop, "backend-3");
    assert_eq!(
        probes_in(&run.history[synced..stop]),
        pairs(&[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2")
        ])
    );
    assert!(run.history[synced..stop]
        .iter()
        .all(|e| !matches!(e, Event::CheckEvaluated { passed: false, .. })));
    assert_eq!(run.state.nodes()["backend-1"].phase, NodePhase::Upgraded);
    assert!(fake.violations.list.is_empty());
}

#[test]
fn a_poll_waits_for_its_interval() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "first poll wait", |r| {
        r.state.phase() == Phase::Followers
            && matches!(
                r.history.last(),
                Some(Event::WaitStarted {
                    purpose: WaitPurpose::Poll,
                    ..
                })
            )
    });
    let Some(Event::WaitStarted { until_ms, .. }) = run.history.last().cloned() else {
        unreachable!()
    };
    assert_eq!(until_ms, run.now + 1_000);
    assert_eq!(run.state.next_wakeup_ms(), Some(until_ms));
    assert_eq!(
        when(
            &run.history,
            Input::Tick {
                now_ms: until_ms - 1
            }
        )
        .unwrap(),
        vec![]
    );
    let events = when(&run.history, Input::Tick { now_ms: until_ms }).unwrap();
    assert_eq!(events[0], Event::TimerFired { at_ms: until_ms });
    // The sync wait looks again from the top: cluster-status first.
    assert!(
        matches!(&events[1], Event::StepScheduled { action: Action::ProbeClusterStatus, node, .. } if node == "backend-1"),
        "{events:#?}"
    );
}

#[test]
fn a_follower_that_never_syncs_halts_and_failover_is_restored_naming_it() {
    // Given backend-1 restarted but never syncs, while backend-2 leads and backend-3 is a synced follower.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "backend-1 started", |r| {
        r.next_is(Action::Start, "backend-1")
    });
    let step = run.outstanding();
    let res = fake.run(&step);
    fake.nodes[0].syncing = 1_000_000; // never syncs
    run.finish(&step, res);
    // When the sync timeout passes.
    run.run_to_rest(&mut fake, 2_000);
    // Then the upgrade halts (S5) naming the node, and failover is re-enabled (S3): one healthy leader and a
    // synced follower to elect make leaving it off the more dangerous choice.
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(
        reason.starts_with("backend-1 did not become healthy, synced and upgraded within 20000 ms"),
        "{reason}"
    );
    assert!(
        reason.contains("`probe_status` on backend-1") && reason.contains("syncing: 1"),
        "{reason}"
    );
    assert!(
        reason.contains(
            "failover was re-enabled although: postgresql: leader: 1; offline: 0; syncing: 1"
        ),
        "the problem still there is in the reason: {reason}"
    );
    assert_eq!(pending, None);
    assert!(!run.state.failover_blocked());
    assert!(fake.failover, "S3: failover restored");
    // backend-1 was started, so there is nothing to bring back: the wind-down only unblocks.
    assert_eq!(
        actions_after_wind_down(&run.history),
        vec![("backend-2".to_string(), "unblock_failover".to_string())]
    );
    // The gate read the leader's own status before unblocking.
    let unblock_at = run
        .history
        .iter()
        .rposition(|e| {
            matches!(
                e,
                Event::StepScheduled {
                    action: Action::UnblockFailover,
                    ..
                }
            )
        })
        .unwrap();
    assert!(run.history[..unblock_at]
        .iter()
        .rev()
        .take(3)
        .any(|e| matches!(e,
        Event::CheckEvaluated { node, passed: true, problems, .. }
        if node == "backend-2" && problems.iter().any(|p| p.contains("syncing: 1")))));
    assert!(!run.history.iter().any(|e| matches!(e, Event::StepScheduled { action: Action::Stop, node, .. } if node == "backend-3")),
        "S5: never past a failed health gate");
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

/// The index in `history` of the first emergency wind-down.
fn emergency_at(history: &[Event]) -> usize {
    history
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::WindDownStarted {
                    cause: WindDownCause::Emergency,
                    ..
                }
            )
        })
        .expect("the emergency exit was taken")
}

/// The result time of every `cluster-status` observation with no single leader, in order.
fn leaderless_observations(run: &Run) -> Vec<u64> {
    run.history
        .iter()
        .filter_map(|e| match e {
            Event::ObservationRecorded {
                step,
                observation: Observation::ClusterStatus { status },
                ..
            } if status.sole_leader().is_none() => {
                run.state.step(*step)?.outcome.as_ref().map(|o| o.at_ms)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_leader_lost_while_failover_is_blocked_takes_the_emergency_exit() {
    // Given backend-1 is upgraded and back, failover is blocked by this upgrade, and the guard of backend-3's
    // stop is about to ask the leader backend-2 for cluster-status.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-3's stop", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 5, .. }))
    });
    assert!(run.next_is(Action::ProbeClusterStatus, "backend-2"));
    // When the leader crashes: nobody can be elected while failover is off.
    fake.env_crash("backend-2");
    run.run_to_rest(&mut fake, 2_000);
    // Then the guard polls (the leader's probe could not run, then no leader), and once the cluster has had no
    // leader for longer than the election window, the emergency exit re-enables failover at once, on a live
    // node, with no gate, and halts; backend-3 was never stopped.
    let at = emergency_at(&run.history);
    let Event::WindDownStarted { reason, at_ms, .. } = &run.history[at] else {
        unreachable!()
    };
    assert!(
        reason.starts_with("emergency exit: the cluster has had no single leader for")
            && reason.contains("election window of 10000 ms"),
        "{reason}"
    );
    let leaderless = leaderless_observations(&run);
    assert!(leaderless.len() > 1, "{leaderless:?}");
    assert!(*at_ms >= leaderless[0] + 10_000, "not before the window");
    assert!(
        leaderless[leaderless.len() - 2] < leaderless[0] + 10_000,
        "at the first observation after the window"
    );
    assert_eq!(
        scheduled(&run.history[at..])
            .into_iter()
            .map(|s| (s.action, s.node))
            .collect::<Vec<_>>(),
        vec![(Action::UnblockFailover, "backend-1".to_string())],
        "failover is re-enabled first, on a live node, without a gate"
    );
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(reason.starts_with("emergency exit"), "{reason}");
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert_eq!(fake.leader_name().as_deref(), Some("backend-1"), "elected");
    assert!(!actions_of(&run.history)
        .iter()
        .any(|(n, a)| n == "backend-3" && a == "stop"));
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn a_leader_lost_during_a_pause_takes_the_emergency_exit_although_a_probe_was_out_when_it_paused() {
    // Given the guard of backend-3's stop has asked the leader for cluster-status, and the operator pauses
    // before the answer comes back.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-3's stop", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 5, .. }))
    });
    let probe = run.outstanding();
    assert_eq!(probe.action, Action::ProbeClusterStatus);
    let now = run.now;
    run.input(Input::Pause {
        by: "op".into(),
        reason: "coffee".into(),
        now_ms: now,
    })
    .unwrap();
    let res = fake.run(&probe);
    run.finish(&probe, res);
    // When the leader crashes during the pause.
    fake.env_crash("backend-2");
    run.run_to_rest(&mut fake, 2_000);
    // Then the watch (not blocked by the probe that was out when it paused) sees no leader, and the emergency
    // exit re-enables failover while the upgrade is still paused: nobody had to resume it.
    let at = emergency_at(&run.history);
    assert!(
        run.history[..at]
            .iter()
            .all(|e| !matches!(e, Event::UpgradeResumed { .. })),
        "no resume needed"
    );
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert!(!actions_of(&run.history)
        .iter()
        .any(|(n, a)| n == "backend-3" && a == "stop"));
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn every_unblock_refused_ends_with_failover_pending() {
    // Given an abort right after failover was blocked (nothing is out of service).
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the first stop's guard", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 1, .. }))
    });
    let now = run.now;
    run.input(Input::Abort {
        by: "op".into(),
        reason: "change freeze".into(),
        now_ms: now,
    })
    .unwrap();
    // When every `set-cluster-failover on` is refused, on whichever node it is tried.
    let mut unblocks = Vec::new();
    for _ in 0..500 {
        if run.state.is_terminal() {
            break;
        }
        match run.state.outstanding_steps().first().cloned() {
            Some(step) if step.action == Action::UnblockFailover => {
                unblocks.push(step.node.clone());
                run.finish(&step, failed(1, "Error: etcd refused the write"));
            }
            Some(step) => {
                let res = fake.run(&step);
                run.finish(&step, res);
            }
            None => {
                run.tick();
            }
        }
    }
    // Then it tried more than once, and ends aborted with failover pending, saying why and what to run.
    assert!(unblocks.len() > 1, "{unblocks:?}");
    let (_, pending) = halted_reason(&run.state);
    let pending = pending.expect("failover stays blocked, and the end says so");
    assert!(
        pending.contains("unblocking failover failed")
            && pending.contains("etcd refused the write"),
        "{pending}"
    );
    assert!(run.state.failover_blocked());
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn the_emergency_exit_unblocks_failover_on_a_node_that_is_up() {
    // Given backend-1 restarted but never syncs (its sync wait asks backend-1 itself for cluster-status).
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "backend-1 started", |r| {
        r.next_is(Action::Start, "backend-1")
    });
    let step = run.outstanding();
    let res = fake.run(&step);
    fake.nodes[0].syncing = 1_000_000;
    // When the leader crashes while failover is blocked (cluster-status then shows backend-2 as a follower
    // whose PG is offline).
    assert!(fake.env_crash("backend-2"));
    run.finish(&step, res);
    run.run_to_rest(&mut fake, 2_000);
    // Then the emergency exit re-enables failover on a node that is up, and backend-3 is elected.
    let at = emergency_at(&run.history);
    assert!(
        scheduled(&run.history[at..])
            .iter()
            .all(|s| s.action != Action::UnblockFailover || s.node != "backend-2"),
        "the crashed leader is not asked to unblock failover: {:?}",
        actions_of(&run.history[at..])
    );
    let (reason, pending) = halted_reason(&run.state);
    assert!(reason.starts_with("emergency exit"), "{reason}");
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert_eq!(fake.leader_name().as_deref(), Some("backend-3"));
}

#[test]
fn the_emergency_exit_brings_back_the_node_it_stopped_even_if_unblocking_failed() {
    // Given backend-1 was stopped by this upgrade (its install's guard is about to run).
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-1's install", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 2, .. }))
    });
    // When the leader crashes: with backend-1 stopped too, etcd has lost its quorum, so neither an election
    // nor `set-cluster-failover` can succeed until a second node runs.
    assert!(fake.env_crash("backend-2"));
    assert!(!fake.has_quorum());
    run.run_to_rest(&mut fake, 2_000);
    // Then, after the emergency exit's unblock fails, backend-1 (old version still installed) is started again,
    // which restores quorum.
    let at = emergency_at(&run.history);
    assert!(
        actions_of(&run.history[at..])
            .iter()
            .any(|(n, a)| n == "backend-1" && a == "start"),
        "{:?}",
        actions_of(&run.history[at..])
    );
    assert!(fake.nodes[0].running && fake.has_quorum());
}

/// `cluster-status` as the fake prints it, but with `node`'s PostgreSQL (and Elasticsearch) offline: its
/// database crashed while its etcd runs, so leaderl keeps it as leader while failover is blocked.
fn with_pg_offline(text: &str, node: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(node) {
                let cols: Vec<&str> = l.split_whitespace().collect();
                format!(
                    "{}  {}  {}  {}  offline  offline",
                    cols[0], cols[1], cols[2], cols[3]
                )
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn the_emergency_exit_unblocks_failover_then_brings_back_the_node_it_stopped() {
    // Given backend-1 was stopped by this upgrade (its install's guard is about to run).
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-1's install", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 2, .. }))
    });
    assert_eq!(fake.out_of_service(), vec!["backend-1".to_string()]);
    // When the leader's database crashes (etcd keeps quorum on backend-2 and backend-3, but failover is off,
    // so cluster-status shows backend-2 as a leader whose PG is offline) until failover is re-enabled, after
    // which backend-3 is elected.
    let mut unblocked = false;
    for _ in 0..2_000 {
        if run.state.is_terminal() {
            break;
        }
        let Some(step) = run.state.outstanding_steps().first().cloned() else {
            assert!(run.advance(&mut fake));
            continue;
        };
        let (outcome, code, mut stdout, stderr) = fake.run(&step);
        if step.action == Action::ProbeClusterStatus && !unblocked {
            stdout = with_pg_offline(&stdout, "backend-2");
        }
        if step.action == Action::UnblockFailover && outcome == Outcome::Succeeded {
            unblocked = true;
            assert!(fake.env_promote("backend-3"));
        }
        run.finish(&step, (outcome, code, stdout, stderr));
    }
    // Then: no leader is seen (a leader whose PG is offline is none), the emergency exit re-enables failover at
    // once, then starts backend-1 again (the old version is still installed), checks it is back, and halts.
    assert!(unblocked);
    let at = emergency_at(&run.history);
    assert_eq!(
        actions_of(&run.history[at..]),
        vec![
            ("backend-3".to_string(), "unblock_failover".to_string()),
            ("backend-1".to_string(), "start".to_string()),
        ]
    );
    assert!(!actions_of(&run.history).iter().any(|(_, a)| a == "install"));
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(
        reason.starts_with("emergency exit") && reason.contains("leaders now: []"),
        "{reason}"
    );
    assert!(
        reason.ends_with("; backend-1 is in service (healthy and synced)"),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked());
    assert!(fake.out_of_service().is_empty(), "backend-1 is back");
    assert_eq!(fake.nodes[0].running_version, "3.0.0-1");
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn an_idempotent_step_is_retried_with_backoff_under_the_same_step_id() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-1", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let step = run.outstanding();
    let events = when(
        &run.history,
        result_of(&step, failed(1, "runsv not running"), run.now + 10),
    )
    .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[1],
        Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: step.step },
            until_ms: run.now + 10 + 500
        }
    );
    run.finish(&step, failed(1, "runsv not running"));
    // When the backoff has passed: the retry's guard runs first (what was observed before the first attempt
    // is stale), then the same step runs again as attempt 2.
    let events = run.tick();
    assert!(
        matches!(&events[1], Event::StepScheduled { action: Action::ProbeClusterStatus, node, .. } if node == "backend-2"),
        "{events:#?}"
    );
    let from = run.history.len() - 1;
    run.until(&mut fake, "the retry", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let retry = run.outstanding();
    assert_eq!((retry.step, retry.attempt), (step.step, 2));
    assert_eq!(
        probes_in(&run.history[from..]),
        pairs(&[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2")
        ])
    );
}

#[test]
fn an_idempotent_step_out_of_retries_halts_with_the_command_exit_code_and_output() {
    // The newer procedure installs while services run, so the cluster stays healthy and failover is restored.
    let (mut run, mut fake) = started("upgrade-command", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    let install = run.outstanding();
    // When every attempt of the install fails.
    fail_every(
        &mut run,
        &mut fake,
        Action::Install,
        "backend-1",
        "dpkg: error: cannot access archive '/var/tmp/x.deb'",
    );
    // Then it ran three times under one step id, each attempt after a fresh guard (cluster-status and the
    // leader's status: an install while the services run only needs the leader's services up).
    let attempts: Vec<usize> = run
        .history
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::StepScheduled { action: Action::Install, step, .. } if *step == install.step))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(attempts.len(), 3);
    for w in attempts.windows(2) {
        assert_eq!(
            probes_in(&run.history[w[0]..w[1]]),
            pairs(&[
                (Action::ProbeClusterStatus, "backend-2"),
                (Action::ProbeStatus, "backend-2"),
                (Action::ProbeFailover, "backend-2"),
            ])
        );
    }
    let (reason, pending) = halted_reason(&run.state);
    assert!(
        reason.starts_with("install failed and its retries are used up: step"),
        "{reason}"
    );
    for part in [
        "on backend-1",
        "attempt 3",
        "\"dpkg\", \"-i\", \"/var/tmp/chef-backend_3.1.0-1_amd64.deb\"",
        "exit code 2",
        "cannot access archive",
    ] {
        assert!(reason.contains(part), "missing {part}: {reason}");
    }
    assert_eq!(pending, None);
    assert!(!run.state.failover_blocked());
    assert!(
        fake.failover,
        "S3: failover restored after a failure that left the cluster healthy"
    );
    assert_eq!(
        actions_after_wind_down(&run.history),
        vec![("backend-2".to_string(), "unblock_failover".to_string())]
    );
}

/// The non-probe steps scheduled from the first wind-down on.
fn actions_after_wind_down(history: &[Event]) -> Vec<(String, String)> {
    let at = history
        .iter()
        .position(|e| matches!(e, Event::WindDownStarted { .. }))
        .expect("wound down");
    actions_of(&history[at..])
}

/// Fails every attempt of the outstanding `action` on `node` (without running it on the fake) until the
/// upgrade ends; every other step runs on the fake.
fn fail_every(run: &mut Run, fake: &mut FakeCluster, action: Action, node: &str, stderr: &str) {
    for _ in 0..1_000 {
        if run.state.is_terminal() {
            return;
        }
        match run.state.outstanding_steps().first() {
            Some(s) if s.action == action && s.node == node => {
                let s = s.clone();
                run.finish(&s, failed(2, stderr));
            }
            Some(_) | None => assert!(run.advance(fake), "stuck: {:?}", run.state.status()),
        }
    }
    panic!("no end: {:?}", run.state.status());
}

#[test]
fn a_failed_install_after_stop_starts_the_node_again_then_halts_with_it_in_service() {
    // Given backend-1 was stopped by the upgrade and its install failed twice (the simulator's install-fails).
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    assert_eq!(fake.out_of_service(), vec!["backend-1".to_string()]);
    let dpkg_error = "dpkg: error: cannot access archive '/var/tmp/x.deb'";
    for _ in 0..2 {
        let install = run.outstanding();
        run.finish(&install, failed(2, dpkg_error));
        run.until(&mut fake, "the retry", |r| {
            r.next_is(Action::Install, "backend-1")
        });
    }
    let install = run.outstanding();
    assert_eq!(install.attempt, 3);
    // When its last attempt fails.
    let events = when(
        &run.history,
        result_of(&install, failed(2, dpkg_error), run.now + 10),
    )
    .unwrap();
    // Then the upgrade winds down on that failure and first schedules backend-1's start: the old version is
    // still installed, so bringing it back is safe (S5), and nothing else of the plan runs.
    assert_eq!(events.len(), 3, "{events:#?}");
    assert!(
        matches!(&events[1], Event::WindDownStarted { cause: WindDownCause::Failure, reason, .. }
        if reason.starts_with("install failed and its retries are used up: step")),
        "{events:#?}"
    );
    assert!(
        matches!(&events[2], Event::StepScheduled { action: Action::Start, node, attempt: 1, argv, .. }
        if node == "backend-1" && *argv == strings(&["chef-backend-ctl", "start"])),
        "{events:#?}"
    );
    run.finish(&install, failed(2, dpkg_error));
    run.run_to_rest(&mut fake, 1_000);
    // Then: backend-1 is checked until healthy and synced, the failover gate passes, failover is re-enabled.
    assert_eq!(
        actions_after_wind_down(&run.history),
        vec![
            ("backend-1".to_string(), "start".to_string()),
            ("backend-2".to_string(), "unblock_failover".to_string()),
        ]
    );
    let start_at = run
        .history
        .iter()
        .rposition(|e| {
            matches!(
                e,
                Event::StepScheduled {
                    action: Action::Start,
                    ..
                }
            )
        })
        .unwrap();
    let restarted_at = run
        .history
        .iter()
        .rposition(|e| matches!(e, Event::WindDownStarted { .. }))
        .unwrap();
    let checked: Vec<&String> = run.history[start_at..restarted_at]
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated { node, .. } => Some(node),
            _ => None,
        })
        .collect();
    // backend-1's own status, and cluster-status asked of a live node (backend-1 may have no etcd to answer).
    assert!(
        checked.iter().any(|n| *n == "backend-1") && checked.iter().any(|n| *n != "backend-1"),
        "{checked:?}"
    );
    // The reason starts with the failed install (node, action, argv, exit code, output) and then says
    // backend-1 is back in service.
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(
        reason.starts_with("install failed and its retries are used up: step"),
        "{reason}"
    );
    for part in [
        "`install` on backend-1 (attempt 3)",
        "\"dpkg\", \"-i\", \"/var/tmp/chef-backend_3.1.0-1_amd64.deb\"",
        "exit code 2",
        "cannot access archive",
    ] {
        assert!(reason.contains(part), "missing {part}: {reason}");
    }
    assert!(
        reason.ends_with("; backend-1 is in service (healthy and synced)"),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert!(fake.out_of_service().is_empty(), "backend-1 is back");
    assert_eq!(fake.nodes[0].running_version, "3.0.0-1");
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn a_start_that_keeps_failing_halts_naming_the_node_and_restores_failover_under_the_leader_rule() {
    // Given backend-1 was stopped and upgraded, and every attempt of its start fails.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "start backend-1", |r| {
        r.next_is(Action::Start, "backend-1")
    });
    let plan_start = run.outstanding();
    // When the plan's start and then the wind-down's own start run out of retries.
    fail_every(
        &mut run,
        &mut fake,
        Action::Start,
        "backend-1",
        "fail: backend-1: runsv not running",
    );
    // Then the wind-down tried backend-1's start once more (a fresh step, retried per policy) and nothing
    // else; failover is re-enabled because backend-2 leads with backend-3 synced.
    let starts: Vec<(u64, u32)> = scheduled(&run.history)
        .into_iter()
        .filter(|s| s.action == Action::Start)
        .map(|s| (s.step, s.attempt))
        .collect();
    assert_eq!(starts.len(), 6, "{starts:?}");
    assert!(starts[..3].iter().all(|(s, _)| *s == plan_start.step));
    assert!(starts[3..]
        .iter()
        .all(|(s, _)| *s > plan_start.step && *s == starts[3].0));
    assert_eq!(
        actions_after_wind_down(&run.history),
        vec![
            ("backend-1".to_string(), "start".to_string()),
            ("backend-1".to_string(), "start".to_string()),
            ("backend-1".to_string(), "start".to_string()),
            ("backend-2".to_string(), "unblock_failover".to_string()),
        ]
    );
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert_eq!(pending, None);
    assert!(
        reason.starts_with(&format!(
            "start failed and its retries are used up: step {} `start` on backend-1 (attempt 3)",
            plan_start.step
        )),
        "{reason}"
    );
    assert!(
        reason.contains("; backend-1 was not brought back into service: step")
            && reason.contains("runsv not running"),
        "{reason}"
    );
    assert!(
        reason.contains("failover was re-enabled although:") && reason.contains("offline: 1"),
        "{reason}"
    );
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert_eq!(fake.out_of_service(), vec!["backend-1".to_string()]);
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

// ----- gates -----

#[test]
fn the_canary_gate_waits_after_the_first_follower() {
    let (mut run, mut fake) = started("runbook", "\"after-first-follower\"");
    run.run_to_rest(&mut fake, 500);
    assert_eq!(
        run.state.status(),
        Status::WaitingApproval {
            gate: Gate::AfterFirstFollower
        }
    );
    assert_eq!(
        run.state.nodes()["backend-1"].phase,
        workflow::core::NodePhase::Upgraded
    );
    assert_eq!(
        run.state.nodes()["backend-3"].phase,
        workflow::core::NodePhase::Pending
    );
    // While it waits with failover blocked, it only watches for a lost leader: a `cluster-status` every poll
    // interval, nothing else.
    assert!(run.state.next_wakeup_ms().is_some());
    let asked = run
        .history
        .iter()
        .rposition(|e| matches!(e, Event::ApprovalRequested { .. }))
        .unwrap();
    let while_waiting = scheduled(&run.history[asked..]);
    assert!(!while_waiting.is_empty());
    assert!(
        while_waiting
            .iter()
            .all(|s| s.action == Action::ProbeClusterStatus),
        "{while_waiting:#?}"
    );
    assert_eq!(
        when(
            &run.history,
            Input::Approve {
                gate: Gate::BeforeSwitchover,
                by: "op".into(),
                now_ms: run.now
            }
        ),
        Err(Rejection::GateNotConfigured(Gate::BeforeSwitchover))
    );
    // Between two looks of the watch (none outstanding), an approval completes the gate at once.
    run.until(&mut fake, "the watch's probe answered", |r| {
        r.state.outstanding_steps().is_empty()
    });
    let events = when(
        &run.history,
        Input::Approve {
            gate: Gate::AfterFirstFollower,
            by: "op".into(),
            now_ms: run.now,
        },
    )
    .unwrap();
    assert!(matches!(
        &events[0],
        Event::GateApproved {
            gate: Gate::AfterFirstFollower,
            ..
        }
    ));
    assert!(matches!(&events[1], Event::ItemCompleted { .. }));
    // backend-3's stop does not run on what was observed before the wait: its guard comes first.
    assert!(!events.iter().any(|e| matches!(
        e,
        Event::StepScheduled {
            action: Action::Stop,
            ..
        }
    )));
    let events = run
        .input(Input::Approve {
            gate: Gate::AfterFirstFollower,
            by: "op".into(),
            now_ms: run.now,
        })
        .unwrap();
    guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Stop,
        "backend-3",
    );
}

#[test]
fn the_leader_moved_while_waiting_at_a_gate_halts_naming_both_leaders() {
    // Given the upgrade waits at the canary gate after backend-1, with backend-2 leading.
    let (mut run, mut fake) = started("runbook", "\"after-first-follower\"");
    run.run_to_rest(&mut fake, 500);
    assert_eq!(
        run.state.status(),
        Status::WaitingApproval {
            gate: Gate::AfterFirstFollower
        }
    );
    // When someone else promotes backend-3 (the next node the plan would stop) and then the gate is approved.
    assert!(fake.env_promote("backend-3"));
    run.input(Input::Approve {
        gate: Gate::AfterFirstFollower,
        by: "op".into(),
        now_ms: run.now,
    })
    .unwrap();
    run.run_to_rest(&mut fake, 1_000);
    // Then the guard's cluster-status shows the change and the upgrade halts at once, naming both leaders,
    // without re-planning: nothing is stopped on the new leader (or anywhere else).
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    // The wind-down's own gate then finds one healthy leader (backend-3) with a synced follower: failover is
    // re-enabled (S3).
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked());
    assert!(
        reason.starts_with("the cluster changed under the plan, so `stop` on backend-3 was not run: the leader moved: the plan expects backend-2 to lead, but cluster-status shows backend-3"),
        "{reason}"
    );
    let approved = run
        .history
        .iter()
        .position(|e| matches!(e, Event::GateApproved { .. }))
        .unwrap();
    let halted_at = run
        .history
        .iter()
        .position(|e| matches!(e, Event::WindDownStarted { .. }))
        .unwrap();
    assert_eq!(
        probes_in(&run.history[approved..halted_at]),
        pairs(&[(Action::ProbeClusterStatus, "backend-2")]),
        "one look was enough: no poll, no further probe"
    );
    assert!(
        !actions_of(&run.history[approved..])
            .iter()
            .any(|(_, a)| a == "stop" || a == "install" || a == "start"),
        "{:?}",
        actions_of(&run.history[approved..])
    );
    assert!(fake.nodes[2].running && fake.leader_name().as_deref() == Some("backend-3"));
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn the_switchover_gate_waits_and_can_be_approved_in_advance() {
    let (mut run, mut fake) = started("runbook", "\"before-switchover\"");
    run.run_to_rest(&mut fake, 500);
    assert_eq!(
        run.state.status(),
        Status::WaitingApproval {
            gate: Gate::BeforeSwitchover
        }
    );
    assert_eq!(run.state.phase(), Phase::Switchover);
    assert!(fake
        .nodes
        .iter()
        .filter(|n| n.name != "backend-2")
        .all(|n| n.running_version == "3.1.0-1"));

    let (mut run, mut fake) = started("runbook", "\"before-switchover\"");
    run.input(Input::Approve {
        gate: Gate::BeforeSwitchover,
        by: "op".into(),
        now_ms: run.now,
    })
    .unwrap();
    assert_eq!(
        run.input(Input::Approve {
            gate: Gate::BeforeSwitchover,
            by: "op".into(),
            now_ms: run.now
        }),
        Err(Rejection::GateAlreadyApproved(Gate::BeforeSwitchover))
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
}

// ----- switchover, S2, S4 -----

#[test]
fn switchover_unblocks_demotes_the_leader_reblocks_and_verifies_before_touching_the_old_leader() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "old leader stopped", |r| {
        r.next_is(Action::Stop, "backend-2")
    });
    let acts = actions_of(&run.history);
    let n = acts.len();
    assert_eq!(
        acts[n - 4..],
        [
            ("backend-2".to_string(), "unblock_failover".to_string()),
            ("backend-2".to_string(), "demote".to_string()),
            ("backend-1".to_string(), "block_failover".to_string()),
            ("backend-2".to_string(), "stop".to_string()),
        ]
    );
    // The deposed leader was seen as deposed_leader, polled, then as follower; the new leader's version checked.
    let obs: Vec<&Observation> = run
        .history
        .iter()
        .filter_map(|e| match e {
            Event::ObservationRecorded { observation, .. } => Some(observation),
            _ => None,
        })
        .collect();
    let deposed_seen = obs.iter().any(|o| {
        matches!(o, Observation::ClusterStatus { status }
        if status.member("backend-2").is_some_and(|m| m.role == Role::DeposedLeader))
    });
    assert!(deposed_seen);
    let new_leader_version_probed = run.history.iter().any(|e| {
        matches!(e,
            Event::StepScheduled { action: Action::ProbeVersion, node, .. } if node == "backend-1"
        )
    });
    assert!(new_leader_version_probed);
    assert_eq!(run.state.phase(), Phase::OldLeader);
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
}

#[test]
fn a_failed_demote_is_not_repeated_but_observed_and_inferred_when_a_new_leader_exists() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "demote", |r| {
        r.next_is(Action::Demote, "backend-2")
    });
    let demote = run.outstanding();
    // It did take effect, but the executor reports a failure (e.g. the election was slow to be reported).
    let _ = fake.run(&demote);
    let events = run.finish(&demote, failed(1, "timed out waiting for the election"));
    assert!(
        matches!(&events[1], Event::ReobservationStarted { step, .. } if *step == demote.step),
        "{events:#?}"
    );
    assert!(
        matches!(&events[2], Event::StepScheduled { action: Action::ProbeClusterStatus, node, .. } if node != "backend-2")
    );
    let probe = run.outstanding();
    let res = fake.run(&probe);
    let events = run.finish(&probe, res);
    assert!(
        matches!(&events[2], Event::OutcomeInferred { step, evidence } if *step == demote.step && evidence.contains("backend-1 as the sole leader")),
        "{events:#?}"
    );
    assert!(matches!(&events[3], Event::ItemCompleted { .. }));
    // Re-blocking failover under the new leader runs after its guard: cluster-status from a node other than
    // backend-1, then backend-1's own status.
    guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-3"),
            (Action::ProbeStatus, "backend-1"),
            (Action::ProbeFailover, "backend-1"),
        ],
        Action::BlockFailover,
        "backend-1",
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    let demotes = scheduled(&run.history)
        .iter()
        .filter(|s| s.action == Action::Demote)
        .count();
    assert_eq!(demotes, 1, "S4: demote never repeated blindly");
}

#[test]
fn a_demote_with_unknown_outcome_and_no_new_leader_needs_verification() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "demote", |r| {
        r.next_is(Action::Demote, "backend-2")
    });
    let demote = run.outstanding();
    // No result before the deadline.
    let events = run
        .input(Input::Tick {
            now_ms: demote.deadline_ms,
        })
        .unwrap();
    assert_eq!(
        events[0],
        Event::TimerFired {
            at_ms: demote.deadline_ms
        }
    );
    assert_eq!(
        events[1],
        Event::StepDeadlinePassed {
            step: demote.step,
            attempt: 1,
            at_ms: demote.deadline_ms
        }
    );
    assert!(matches!(&events[2], Event::ReobservationStarted { .. }));
    run.now = demote.deadline_ms;
    run.until(&mut fake, "needs verification", |r| {
        matches!(r.state.status(), Status::NeedsVerification { .. })
    });
    let Status::NeedsVerification { step, reason } = run.state.status() else {
        unreachable!()
    };
    assert_eq!(step, demote.step);
    for part in [
        "`demote` on backend-2",
        "\"chef-backend-ctl\", \"demote\"",
        "outcome unknown",
        "exit code none",
        "does not show a new leader",
    ] {
        assert!(reason.contains(part), "missing {part}: {reason}");
    }
    assert_eq!(run.state.next_wakeup_ms(), None);
    assert!(!run.state.is_terminal());
    // A late result for the demote is ignored.
    assert_eq!(
        when(&run.history, result_of(&demote, succeeded(""), run.now)).unwrap(),
        vec![]
    );
    assert_eq!(
        when(
            &run.history,
            Input::Resolve {
                step: 999,
                resolution: Resolution::Retry,
                by: "op".into(),
                why: "x".into(),
                now_ms: run.now
            }
        ),
        Err(Rejection::NoSuchStep {
            step: 999,
            last: run
                .history
                .iter()
                .filter_map(|e| e.scheduled_step())
                .map(|s| s.step)
                .max()
                .unwrap()
        })
    );

    // Resolve: retry -> the cluster is observed again first, then the demote runs as attempt 2.
    let mut retry = Run {
        state: run.state.clone(),
        history: run.history.clone(),
        now: run.now,
    };
    let mut fake_retry = fake.clone();
    let events = retry
        .input(Input::Resolve {
            step,
            resolution: Resolution::Retry,
            by: "op".into(),
            why: "checked the node".into(),
            now_ms: run.now,
        })
        .unwrap();
    assert!(matches!(&events[1], Event::ReobservationStarted { .. }));
    assert!(matches!(
        &events[2],
        Event::StepScheduled {
            action: Action::ProbeClusterStatus,
            ..
        }
    ));
    let probe = retry.outstanding();
    let res = fake_retry.run(&probe);
    let events = retry.finish(&probe, res);
    // backend-2 still leads: the demote did not take effect, so it is due again, after its guard.
    assert!(
        events.iter().any(|e| matches!(e, Event::WaitStarted { purpose: WaitPurpose::Retry { step: s }, .. } if *s == step)),
        "{events:#?}"
    );
    let demote2 = guard_then(
        &mut retry,
        &mut fake_retry,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-1"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Demote,
        "backend-2",
    );
    assert_eq!((demote2.step, demote2.attempt), (step, 2));
    retry.run_to_rest(&mut fake_retry, 500);
    assert_eq!(retry.state.status(), Status::Completed);

    // Resolve: failed -> winds down; failover was unblocked for the switchover, so nothing is pending.
    let mut fail = Run {
        state: run.state.clone(),
        history: run.history.clone(),
        now: run.now,
    };
    fail.input(Input::Resolve {
        step,
        resolution: Resolution::Failed,
        by: "op".into(),
        why: "no".into(),
        now_ms: run.now,
    })
    .unwrap();
    fail.run_to_rest(&mut fake.clone(), 100);
    let (reason, pending) = halted_reason(&fail.state);
    assert!(
        reason.starts_with(&format!("an operator resolved step {step} as failed")),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(
        actions_after_wind_down(&fail.history)
            .iter()
            .all(|(_, a)| a != "start"),
        "S4 decides a non-idempotent step in doubt; the wind-down starts nothing"
    );
}

#[test]
fn resolving_a_demote_that_elected_nobody_as_succeeded_does_not_block_failover_on_a_leaderless_cluster(
) {
    // Given the demote deposed backend-2 but no leader was elected, and its outcome is unknown.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "demote", |r| {
        r.next_is(Action::Demote, "backend-2")
    });
    let demote = run.outstanding();
    fake.nodes[1].role = FakeRole::Deposed;
    fake.nodes[1].deposed_polls = u32::MAX;
    run.finish(&demote, unknown());
    // The re-observation polls (an election may still be running), then leaves it to an operator.
    run.run_to_rest(&mut fake, 2_000);
    let Status::NeedsVerification { step, reason } = run.state.status() else {
        panic!("{:?}", run.state.status())
    };
    assert_eq!(step, demote.step);
    assert!(
        reason.contains("the old leader is deposed and still no leader was elected"),
        "{reason}"
    );
    assert!(run.history.iter().any(|e| matches!(e,
        Event::CheckEvaluated { passed: false, problems, .. }
        if problems.iter().any(|p| p.contains("no leader is elected yet; looking again")))));
    assert_eq!(attempts_of(&run.history, Action::Demote, "backend-2"), 1);
    // When an operator resolves it as succeeded (wrongly: nobody leads).
    let from = run.history.len();
    run.input(Input::Resolve {
        step,
        resolution: Resolution::Succeeded,
        by: "op".into(),
        why: "the demote ran".into(),
        now_ms: run.now,
    })
    .unwrap();
    run.run_to_rest(&mut fake, 2_000);
    // Then the next action, blocking failover under the new leader, waits for its guard, which sees no
    // leader: it is never run, and the upgrade halts naming it. Failover was on for the switchover, so it is
    // left on (nothing pending): the cluster can still elect.
    let after = &run.history[from..];
    assert!(
        actions_of(after).is_empty(),
        "no action after the resolution: {:?}",
        actions_of(after)
    );
    assert!(after.iter().any(|e| matches!(e,
        Event::CheckEvaluated { passed: false, problems, .. }
        if problems.iter().any(|p| p.contains("0 leaders")))));
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(
        reason.starts_with(
            "`block_failover` on backend-1 was not run: the cluster did not become safe for it"
        ),
        "{reason}"
    );
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked());
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn a_demote_rejected_by_the_executor_is_retried_after_a_fresh_guard() {
    // Given the demote is scheduled.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "demote", |r| {
        r.next_is(Action::Demote, "backend-2")
    });
    let demote = run.outstanding();
    // When the executor rejects it without running anything.
    let events = run.finish(
        &demote,
        (Outcome::Rejected, None, String::new(), String::new()),
    );
    // Then nothing is in doubt: no re-observation, no operator; it is due again after the backoff.
    assert_eq!(
        events[1..],
        [Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: demote.step },
            until_ms: run.now + 500
        }],
        "{events:#?}"
    );
    // And when the backoff has passed, the guard runs afresh before attempt 2 of the same step.
    let events = run.tick();
    let retry = guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-1"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Demote,
        "backend-2",
    );
    assert_eq!((retry.step, retry.attempt), (demote.step, 2));
    run.run_to_rest(&mut fake, 1_000);
    assert_eq!(run.state.status(), Status::Completed);
    assert!(!run.history.iter().any(|e| matches!(
        e,
        Event::VerificationRequired { .. } | Event::ReobservationStarted { .. }
    )));
    let demotes_run = fake
        .journal
        .iter()
        .filter(|(_, argv)| *argv == strings(&["chef-backend-ctl", "demote"]))
        .count();
    assert_eq!(demotes_run, 1, "the rejected attempt never ran");
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
}

#[test]
fn the_switchover_check_waits_while_the_new_leader_shows_a_follower_syncing() {
    // Given the demote elected backend-1 and the switchover check has seen the roles and its version.
    let (mut run, mut fake) = started("runbook", "");
    run.until(
        &mut fake,
        "the new leader's status in the switchover check",
        |r| {
            matches!(
                r.state.plan().map(|p| &p.items[12]),
                Some(workflow::core::PlanItem::VerifySwitchover { .. })
            ) && r
                .history
                .iter()
                .any(|e| matches!(e, Event::ItemStarted { index: 12, .. }))
                && r.next_is(Action::ProbeStatus, "backend-1")
        },
    );
    // When backend-1's own status shows a follower still syncing to it (cluster-status showed it `follower`).
    let probe = run.outstanding();
    let (outcome, code, stdout, stderr) = fake.run(&probe);
    let at = stdout.find("syncing: ").unwrap();
    let line_end = at + stdout[at..].find('\n').unwrap();
    let syncing = format!(
        "{}syncing: 1; synced: 1{}",
        &stdout[..at],
        &stdout[line_end..]
    );
    let events = run.finish(&probe, (outcome, code, syncing, stderr));
    // Then the check fails on it and polls; the old leader is not touched yet.
    assert!(
        matches!(&events[2..], [Event::CheckEvaluated { node, passed: false, problems, .. }, Event::WaitStarted { purpose: WaitPurpose::Poll, .. }]
        if node == "backend-1" && problems.iter().any(|p| p.contains("syncing: 1"))),
        "{events:#?}"
    );
    // And once backend-1's status shows every follower synced, the old leader's stop follows.
    run.until(&mut fake, "old leader stopped", |r| {
        r.next_is(Action::Stop, "backend-2")
    });
    let stop = last_scheduled(&run.history, Action::Stop, "backend-2");
    let verified = run.history[..stop]
        .iter()
        .rposition(|e| matches!(e, Event::ItemCompleted { index: 12, .. }))
        .unwrap();
    let last_status = run.history[..verified].iter().rev().find_map(|e| match e {
        Event::CheckEvaluated { node, passed, .. } if node == "backend-1" => Some(*passed),
        _ => None,
    });
    assert_eq!(last_status, Some(true));
    run.run_to_rest(&mut fake, 1_000);
    assert_eq!(run.state.status(), Status::Completed);
}

#[test]
fn the_newer_procedure_upgrades_the_leader_with_failover_and_checks_it() {
    let (mut run, mut fake) = started("upgrade-command", "");
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    let acts = actions_of(&run.history);
    let leader: Vec<&str> = acts
        .iter()
        .filter(|(n, _)| n == "backend-2")
        .map(|(_, a)| a.as_str())
        .collect();
    assert_eq!(
        leader,
        [
            "block_failover",
            "install",
            "unblock_failover",
            "upgrade_leader"
        ]
    );
    let upgrade = scheduled(&run.history)
        .into_iter()
        .find(|s| s.action == Action::UpgradeLeader)
        .unwrap();
    assert_eq!(
        upgrade.argv,
        strings(&["chef-backend-ctl", "upgrade", "--failover"])
    );
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
    assert!(fake.all_at_target());
}

// ----- S4 for every action: an unknown outcome is observed before any decision -----

/// The result of an executor that restarted after a SIGKILL and finds the step started but not finished.
fn unknown() -> (Outcome, Option<i32>, String, String) {
    (Outcome::Unknown, None, String::new(), String::new())
}

/// How many times `action` was scheduled on `node` (attempts included).
fn attempts_of(history: &[Event], action: Action, node: &str) -> usize {
    scheduled(history)
        .iter()
        .filter(|s| s.action == action && s.node == node)
        .count()
}

/// The plan item an `ItemStarted` in `events` started.
fn item_started(run: &Run, events: &[Event]) -> workflow::core::PlanItem {
    let index = events
        .iter()
        .find_map(|e| match e {
            Event::ItemStarted { index, .. } => Some(*index),
            _ => None,
        })
        .expect("an item started");
    run.state.plan().expect("a plan").items[index].clone()
}

#[test]
fn an_install_with_unknown_outcome_that_took_effect_is_observed_not_repeated() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    let install = run.outstanding();
    // The executor was killed mid-step; dpkg, in its own process group, finished the install anyway.
    let _ = fake.run(&install);
    // When the restarted executor answers `unknown`: no retry, the node's installed version is probed first.
    let events = when(&run.history, result_of(&install, unknown(), run.now + 10)).unwrap();
    assert!(
        matches!(&events[1], Event::ReobservationStarted { step, attempt: 1, reason } if *step == install.step && reason.contains("outcome unknown")),
        "{events:#?}"
    );
    assert!(
        matches!(&events[2], Event::StepScheduled { action: Action::ProbeVersion, node, .. } if node == "backend-1"),
        "{events:#?}"
    );
    assert_eq!(events.len(), 3);
    run.finish(&install, unknown());
    // Then the probe shows the target version: the install is inferred and the plan goes on to `start`.
    let probe = run.outstanding();
    let res = fake.run(&probe);
    let events = run.finish(&probe, res);
    assert!(
        matches!(&events[2], Event::OutcomeInferred { step, evidence } if *step == install.step && evidence.contains("3.1.0-1 installed on backend-1")),
        "{events:#?}"
    );
    assert!(matches!(&events[3], Event::ItemCompleted { .. }));
    // The start runs after its own guard (backend-1 is out: the leader is asked).
    guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Start,
        "backend-1",
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert_eq!(attempts_of(&run.history, Action::Install, "backend-1"), 1);
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
    verify(&run.history).unwrap();
}

#[test]
fn an_install_with_unknown_outcome_and_the_old_version_still_installed_is_retried() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    let install = run.outstanding();
    // Killed before dpkg did anything.
    run.finish(&install, unknown());
    let probe = run.outstanding();
    assert_eq!(probe.action, Action::ProbeVersion);
    let res = fake.run(&probe);
    let events = when(&run.history, result_of(&probe, res.clone(), run.now + 10)).unwrap();
    assert_eq!(
        events.last(),
        Some(&Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: install.step },
            until_ms: run.now + 10 + 500
        }),
        "{events:#?}"
    );
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::OutcomeInferred { .. })));
    run.finish(&probe, res);
    // After the backoff, the retry's guard, then attempt 2 of the same step.
    let events = run.tick();
    let retry = guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Install,
        "backend-1",
    );
    assert_eq!((retry.step, retry.attempt), (install.step, 2));
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
}

#[test]
fn a_failed_install_keeps_the_retry_policy_without_a_probe() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    let install = run.outstanding();
    let events = when(
        &run.history,
        result_of(
            &install,
            failed(2, "dpkg: error processing archive"),
            run.now + 10,
        ),
    )
    .unwrap();
    assert_eq!(
        events[1..],
        [Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: install.step },
            until_ms: run.now + 10 + 500
        }]
    );
}

#[test]
fn a_stop_whose_deadline_passed_but_took_effect_goes_on_to_install() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-1", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let stop = run.outstanding();
    let _ = fake.run(&stop);
    // No result before the deadline.
    let events = run
        .input(Input::Tick {
            now_ms: stop.deadline_ms,
        })
        .unwrap();
    run.now = stop.deadline_ms;
    assert!(matches!(&events[1], Event::StepDeadlinePassed { .. }));
    assert!(matches!(&events[2], Event::ReobservationStarted { step, .. } if *step == stop.step));
    assert!(
        matches!(&events[3], Event::StepScheduled { action: Action::ProbeStatus, node, .. } if node == "backend-1"),
        "{events:#?}"
    );
    let probe = run.outstanding();
    let res = fake.run(&probe);
    let events = run.finish(&probe, res);
    assert!(
        matches!(&events[2], Event::OutcomeInferred { step, evidence } if *step == stop.step && evidence.contains("services of backend-1 down")),
        "{events:#?}"
    );
    guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Install,
        "backend-1",
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert_eq!(attempts_of(&run.history, Action::Stop, "backend-1"), 1);
    verify(&run.history).unwrap();
}

#[test]
fn a_stop_with_unknown_outcome_and_services_still_running_is_retried() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-1", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let stop = run.outstanding();
    run.finish(&stop, unknown());
    let probe = run.outstanding();
    assert_eq!(probe.action, Action::ProbeStatus);
    let res = fake.run(&probe);
    let events = run.finish(&probe, res);
    assert!(
        matches!(events.last(), Some(Event::WaitStarted { purpose: WaitPurpose::Retry { step }, .. }) if *step == stop.step),
        "{events:#?}"
    );
    // After the backoff, the retry's guard, then attempt 2 of the same step.
    let events = run.tick();
    let retry = guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Stop,
        "backend-1",
    );
    assert_eq!((retry.step, retry.attempt), (stop.step, 2));
}

#[test]
fn a_start_with_unknown_outcome_whose_services_run_goes_on_to_the_sync_wait() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "start backend-1", |r| {
        r.next_is(Action::Start, "backend-1")
    });
    let start = run.outstanding();
    let _ = fake.run(&start);
    let events = run.finish(&start, unknown());
    assert!(
        matches!(&events[2], Event::StepScheduled { action: Action::ProbeStatus, node, .. } if node == "backend-1"),
        "{events:#?}"
    );
    let probe = run.outstanding();
    let res = fake.run(&probe);
    let events = run.finish(&probe, res);
    assert!(
        matches!(&events[2], Event::OutcomeInferred { step, evidence } if *step == start.step && evidence.contains("services of backend-1 running")),
        "{events:#?}"
    );
    // Running is not synced: the plan's own gate still waits for that.
    assert!(
        matches!(item_started(&run, &events), workflow::core::PlanItem::WaitSynced { node, .. } if node == "backend-1")
    );
    assert_eq!(run.state.nodes()["backend-1"].phase, NodePhase::Syncing);
    assert!(
        matches!(events.last(), Some(Event::StepScheduled { action: Action::ProbeClusterStatus, node, .. }) if node == "backend-1"),
        "{events:#?}"
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert_eq!(attempts_of(&run.history, Action::Start, "backend-1"), 1);
}

#[test]
fn an_upgrade_with_unknown_outcome_is_inferred_only_from_services_restarted_since_it_began() {
    let (mut run, mut fake) = started("upgrade-command", "");
    run.until(&mut fake, "upgrade backend-1", |r| {
        r.next_is(Action::Upgrade, "backend-1")
    });
    let upgrade = run.outstanding();
    let _ = fake.run(&upgrade);
    run.input(Input::Tick {
        now_ms: upgrade.deadline_ms,
    })
    .unwrap();
    run.now = upgrade.deadline_ms;
    let version = run.outstanding();
    assert_eq!(version.action, Action::ProbeVersion);
    let res = fake.run(&version);
    let events = run.finish(&version, res);
    assert!(
        matches!(events.last(), Some(Event::StepScheduled { action: Action::ProbeStatus, node, .. }) if node == "backend-1"),
        "{events:#?}"
    );
    let status = run.outstanding();
    let (outcome, code, stdout, stderr) = fake.run(&status);
    // The fake's services have been in their state for 43 minutes: longer than the upgrade has been running
    // (its 30-minute deadline), so this output does not show a restart...
    let stale = when(
        &run.history,
        result_of(
            &status,
            (outcome, code, stdout.clone(), stderr.clone()),
            run.now + 10,
        ),
    )
    .unwrap();
    assert!(
        matches!(stale.last(), Some(Event::WaitStarted { purpose: WaitPurpose::Retry { step }, .. }) if *step == upgrade.step),
        "{stale:#?}"
    );
    // ...while services up for under a minute do.
    let fresh = stdout.replace("0d 0h 43m", "0d 0h 0m");
    let events = run.finish(&status, (outcome, code, fresh, stderr));
    assert!(
        matches!(&events[2], Event::OutcomeInferred { step, evidence } if *step == upgrade.step && evidence.contains("restarted since the upgrade began")),
        "{events:#?}"
    );
    assert!(
        matches!(item_started(&run, &events), workflow::core::PlanItem::WaitSynced { node, .. } if node == "backend-1")
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert_eq!(attempts_of(&run.history, Action::Upgrade, "backend-1"), 1);
}

#[test]
fn failover_blocking_with_unknown_outcome_is_retried_as_before() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "block failover", |r| {
        r.next_is(Action::BlockFailover, "backend-2")
    });
    let block = run.outstanding();
    let events = when(&run.history, result_of(&block, unknown(), run.now + 10)).unwrap();
    assert_eq!(
        events[1..],
        [Event::WaitStarted {
            purpose: WaitPurpose::Retry { step: block.step },
            until_ms: run.now + 10 + 500
        }]
    );
}

// ----- pause, resume, abort -----

#[test]
fn pause_holds_decisions_until_resume() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-1", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let step = run.outstanding();
    let events = run
        .input(Input::Pause {
            by: "op".into(),
            reason: "lunch".into(),
            now_ms: run.now,
        })
        .unwrap();
    assert_eq!(
        events,
        vec![Event::UpgradePaused {
            by: "op".into(),
            reason: "lunch".into(),
            at_ms: run.now
        }]
    );
    assert_eq!(
        run.state.status(),
        Status::Paused {
            by: "op".into(),
            reason: "lunch".into()
        }
    );
    assert_eq!(
        run.input(Input::Pause {
            by: "op".into(),
            reason: "again".into(),
            now_ms: run.now
        }),
        Err(Rejection::AlreadyPaused)
    );
    assert_eq!(
        Rejection::AlreadyPaused.to_string(),
        "upgrade is already paused"
    );
    // The running step's result is recorded and completes its item (a pause stops new work, not the handling
    // of a result), but no action is scheduled: with failover blocked, only the watch's cluster-status.
    let res = fake.run(&step);
    let events = run.finish(&step, res);
    assert!(matches!(events[0], Event::StepResultRecorded { .. }));
    assert!(
        matches!(events[1], Event::ItemCompleted { .. }),
        "{events:#?}"
    );
    assert!(
        scheduled(&events)
            .iter()
            .all(|s| s.action == Action::ProbeClusterStatus),
        "{events:#?}"
    );
    let paused_at = run.history.len();
    for _ in 0..20 {
        if let Some(probe) = run.state.outstanding_steps().first().cloned() {
            let res = fake.run(&probe);
            run.finish(&probe, res);
        } else {
            run.tick();
        }
    }
    // Between two looks of the watch (none out), as an operator would resume.
    run.until(&mut fake, "the watch's probe answered", |r| {
        r.state.outstanding_steps().is_empty()
    });
    let while_paused = scheduled(&run.history[paused_at..]);
    assert!(!while_paused.is_empty(), "the watch keeps looking");
    assert!(
        while_paused
            .iter()
            .all(|s| s.action == Action::ProbeClusterStatus),
        "nothing but the watch while paused: {while_paused:#?}"
    );
    let events = run
        .input(Input::Resume {
            by: "op".into(),
            now_ms: run.now,
        })
        .unwrap();
    assert!(matches!(events[0], Event::UpgradeResumed { .. }));
    // What was observed before the pause is stale: the install's guard runs after the resume, then the
    // install.
    guard_then(
        &mut run,
        &mut fake,
        &events,
        &[
            (Action::ProbeClusterStatus, "backend-2"),
            (Action::ProbeStatus, "backend-2"),
            (Action::ProbeFailover, "backend-2"),
        ],
        Action::Install,
        "backend-1",
    );
    assert_eq!(
        run.input(Input::Resume {
            by: "op".into(),
            now_ms: run.now
        }),
        Err(Rejection::NotPaused)
    );
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
}

/// Given the guard of backend-3's stop had asked backend-2 for cluster-status when the operator paused, and
/// that probe's result (the cluster as it was then) arrived during the pause.
fn paused_during_the_guard_of_backend_3s_stop() -> (Run, FakeCluster) {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-3's stop", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 5, .. }))
    });
    let probe = run.outstanding();
    assert_eq!(
        (probe.action, probe.node.as_str()),
        (Action::ProbeClusterStatus, "backend-2")
    );
    run.input(Input::Pause {
        by: "op".into(),
        reason: "lunch".into(),
        now_ms: run.now,
    })
    .unwrap();
    let res = fake.run(&probe);
    run.finish(&probe, res);
    (run, fake)
}

#[test]
fn a_follower_that_crashed_during_a_pause_stops_the_plan_after_resume() {
    let (mut run, mut fake) = paused_during_the_guard_of_backend_3s_stop();
    // When backend-1 (upgraded, back in service) crashes during the pause, and the operator resumes.
    assert!(fake.env_crash("backend-1"));
    run.now += 60_000;
    run.input(Input::Resume {
        by: "op".into(),
        now_ms: run.now,
    })
    .unwrap();
    run.run_to_rest(&mut fake, 2_000);
    // Then the guard does not let backend-3 be stopped with backend-1 down (S1): it waits for the cluster to
    // settle, then halts naming the action and the node that is out.
    assert!(
        !actions_of(&run.history)
            .iter()
            .any(|(n, a)| n == "backend-3" && a == "stop"),
        "{:?}",
        actions_of(&run.history)
    );
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Halted { .. }));
    assert!(
        reason.starts_with("`stop` on backend-3 was not run: the cluster did not become safe for it within 20000 ms"),
        "{reason}"
    );
    assert!(reason.contains("backend-1"), "{reason}");
    // backend-1 was not stopped by this upgrade: the wind-down does not start it, and failover is re-enabled
    // (backend-2 leads with backend-3 synced to elect).
    assert!(!actions_after_wind_down(&run.history)
        .iter()
        .any(|(_, a)| a == "start"));
    assert_eq!(pending, None);
    assert!(fake.failover && !run.state.failover_blocked());
    assert!(
        !fake.violations.list.iter().any(|v| v.starts_with("S2")),
        "{:?}",
        fake.violations.list
    );
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn the_leader_moved_during_a_pause_is_not_stopped_after_resume() {
    let (mut run, mut fake) = paused_during_the_guard_of_backend_3s_stop();
    // When someone else promotes backend-3 during the pause (followers re-sync to it), and the operator
    // resumes.
    assert!(fake.env_promote("backend-3"));
    while fake.env_resync() {}
    run.now += 60_000;
    run.input(Input::Resume {
        by: "op".into(),
        now_ms: run.now,
    })
    .unwrap();
    run.run_to_rest(&mut fake, 2_000);
    // Then the guard, observing afresh after the resume, sees the leader moved and halts: backend-3, now the
    // leader, is never stopped.
    assert!(
        !actions_of(&run.history)
            .iter()
            .any(|(n, a)| n == "backend-3" && a == "stop"),
        "{:?}; fake: {:?}",
        actions_of(&run.history),
        fake.violations.list
    );
    let (reason, _) = halted_reason(&run.state);
    assert!(reason.contains("the leader moved"), "{reason}");
}

/// Given a history where backend-3's `stop` was scheduled and the operator aborted while it ran.
fn aborted_during_stop() -> (Run, FakeCluster, workflow::core::ScheduledStep) {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-3", |r| {
        r.next_is(Action::Stop, "backend-3")
    });
    let stop = run.outstanding();
    run.input(Input::Abort {
        by: "op".into(),
        reason: "change window closed".into(),
        now_ms: run.now,
    })
    .unwrap();
    (run, fake, stop)
}

/// The non-probe steps scheduled after the abort.
fn actions_after_abort(history: &[Event]) -> Vec<(String, String)> {
    let at = history
        .iter()
        .position(|e| matches!(e, Event::AbortRequested { .. }))
        .expect("aborted");
    actions_of(&history[at..])
}

#[test]
fn abort_after_stop_starts_the_node_checks_it_then_unblocks_and_ends_aborted() {
    let (run, mut fake, stop) = aborted_during_stop();
    assert_eq!(
        run.state.status(),
        Status::WindingDown {
            reason: "aborted by op: change window closed".into()
        }
    );
    // When the stop's result arrives (it ran: backend-3 is down).
    let result = fake.run(&stop);
    assert!(fake.out_of_service().contains(&"backend-3".to_string()));
    let events = when(&run.history, result_of(&stop, result.clone(), run.now + 10)).unwrap();
    // Then the node's start is scheduled, nothing of the plan.
    assert_eq!(events.len(), 2, "{events:#?}");
    assert!(matches!(&events[0], Event::StepResultRecorded { step, .. } if *step == stop.step));
    assert!(
        matches!(&events[1], Event::StepScheduled { action: Action::Start, node, attempt: 1, argv, .. }
        if node == "backend-3" && *argv == strings(&["chef-backend-ctl", "start"])),
        "{events:#?}"
    );
    let mut run = run;
    run.finish(&stop, result);
    run.run_to_rest(&mut fake, 1_000);
    // Then: checks on backend-3 until healthy and synced, then the failover gate, the unblock, Aborted.
    assert_eq!(
        actions_after_abort(&run.history),
        vec![
            ("backend-3".to_string(), "start".to_string()),
            ("backend-2".to_string(), "unblock_failover".to_string()),
        ]
    );
    let start_at = run
        .history
        .iter()
        .position(|e| matches!(e, Event::StepScheduled { action: Action::Start, node, .. } if node == "backend-3"))
        .unwrap();
    let restarted_at = run
        .history
        .iter()
        .rposition(|e| matches!(e, Event::WindDownStarted { .. }))
        .unwrap();
    let checks: Vec<(String, bool)> = run.history[start_at..restarted_at]
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated { node, passed, .. } => Some((node.clone(), *passed)),
            _ => None,
        })
        .collect();
    assert!(
        checks.iter().any(|(n, _)| n == "backend-3") && checks.iter().any(|(_, p)| !p),
        "backend-3 is checked (its status; cluster-status from a live node) until synced, polling while it \
         syncs: {checks:?}"
    );
    assert_eq!(
        &checks[checks.len() - 2..],
        &[
            ("backend-2".to_string(), true),
            ("backend-3".to_string(), true)
        ],
        "cluster-status (asked of the leader backend-2) and backend-3's status both passed last"
    );
    assert_eq!(
        run.state.status(),
        Status::Aborted {
            reason:
                "aborted by op: change window closed; backend-3 is in service (healthy and synced)"
                    .into(),
            failover_pending: None,
        }
    );
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert!(fake.out_of_service().is_empty(), "backend-3 is back");
    assert!(
        fake.violations.list.is_empty(),
        "{:?}",
        fake.violations.list
    );
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn abort_after_stop_whose_start_fails_still_restores_failover_and_names_the_node() {
    let (mut run, mut fake, stop) = aborted_during_stop();
    let result = fake.run(&stop);
    run.finish(&stop, result);
    // When every attempt of the start fails.
    for _ in 0..1_000 {
        if run.state.is_terminal() {
            break;
        }
        match run.state.outstanding_steps().first() {
            Some(s) if s.action == Action::Start => {
                let s = s.clone();
                run.finish(&s, failed(1, "fail: backend-3: runsv not running"));
            }
            Some(_) | None => assert!(run.advance(&mut fake), "stuck: {:?}", run.state.status()),
        }
    }
    // Then: three attempts (two retries), then the failover gate passes on the leader with backend-1 synced,
    // failover is re-enabled and the abort's reason names backend-3 and its failed start.
    let starts = scheduled(&run.history)
        .into_iter()
        .filter(|s| s.action == Action::Start && s.node == "backend-3")
        .map(|s| (s.step, s.attempt))
        .collect::<Vec<_>>();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert!(starts.iter().all(|(step, _)| *step == starts[0].0));
    assert_eq!(
        actions_after_abort(&run.history),
        vec![
            ("backend-3".to_string(), "start".to_string()),
            ("backend-3".to_string(), "start".to_string()),
            ("backend-3".to_string(), "start".to_string()),
            ("backend-2".to_string(), "unblock_failover".to_string()),
        ]
    );
    let (reason, pending) = halted_reason(&run.state);
    assert!(matches!(run.state.status(), Status::Aborted { .. }));
    assert_eq!(pending, None);
    assert!(
        reason.starts_with("aborted by op: change window closed; backend-3 was not brought back into service: step"),
        "{reason}"
    );
    assert!(
        reason.contains("`start` on backend-3 (attempt 3)")
            && reason.contains("exit code 1")
            && reason.contains("runsv not running"),
        "{reason}"
    );
    assert!(
        reason.contains("failover was re-enabled although:") && reason.contains("offline: 1"),
        "{reason}"
    );
    assert!(fake.failover && !run.state.failover_blocked(), "S3");
    assert_eq!(fake.out_of_service(), vec!["backend-3".to_string()]);
    assert_eq!(replay(&run.history), run.state);
    verify(&run.history).unwrap();
}

#[test]
fn abort_in_the_newer_procedure_waits_for_the_upgraded_node_without_starting_anything() {
    // Given `chef-backend-ctl upgrade` on backend-1 is running (nothing was stopped).
    let (mut run, mut fake) = started("upgrade-command", "");
    run.until(&mut fake, "upgrade backend-1", |r| {
        r.next_is(Action::Upgrade, "backend-1")
    });
    let upgrade = run.outstanding();
    // When the operator aborts and the upgrade then finishes (backend-1 resyncs).
    run.input(Input::Abort {
        by: "op".into(),
        reason: "stop".into(),
        now_ms: run.now,
    })
    .unwrap();
    let result = fake.run(&upgrade);
    let events = run.finish(&upgrade, result);
    // Then the wind-down checks backend-1 first (cluster-status from a live node, then its own status), starts
    // nothing, and unblocks once it is synced.
    assert!(
        matches!(events.last(), Some(Event::StepScheduled { action: Action::ProbeClusterStatus, node, .. }) if node != "backend-1"),
        "{events:#?}"
    );
    run.run_to_rest(&mut fake, 1_000);
    assert_eq!(
        actions_after_abort(&run.history),
        vec![("backend-2".to_string(), "unblock_failover".to_string())]
    );
    assert_eq!(
        run.state.status(),
        Status::Aborted {
            reason: "aborted by op: stop; backend-1 is in service (healthy and synced)".into(),
            failover_pending: None,
        }
    );
    assert!(fake.failover && fake.out_of_service().is_empty());
}

#[test]
fn abort_restores_failover_when_the_cluster_is_healthy() {
    // Abort as backend-3's stop is published, which the executor rejects without running it: backend-3 never
    // left service, its checks pass at once and failover is re-enabled.
    let mut before = Run {
        state: State::default(),
        history: Vec::new(),
        now: 1_000,
    };
    before.input(submit(cluster("runbook", ""), 1_000)).unwrap();
    let mut fake2 = FakeCluster::new("3.0.0-1");
    before.until(&mut fake2, "stop backend-3", |r| {
        r.next_is(Action::Stop, "backend-3")
    });
    // Drop the outstanding stop: the executor rejects it without running (it was aborted first).
    let stop = before.outstanding();
    before
        .input(Input::Abort {
            by: "op".into(),
            reason: "enough".into(),
            now_ms: before.now,
        })
        .unwrap();
    before.finish(
        &stop,
        (Outcome::Rejected, None, String::new(), String::new()),
    );
    before.run_to_rest(&mut fake2, 200);
    assert_eq!(
        before.state.status(),
        Status::Aborted {
            reason: "aborted by op: enough; backend-3 is in service (healthy and synced)".into(),
            failover_pending: None
        }
    );
    assert!(
        !actions_after_abort(&before.history)
            .iter()
            .any(|(_, a)| a == "start"),
        "the rejected stop never ran: nothing to start"
    );
    assert!(fake2.failover, "S3: failover restored on abort");
    assert!(!before.state.failover_blocked());
    let last_actions = actions_of(&before.history);
    assert_eq!(last_actions.last().unwrap().1, "unblock_failover");
    assert_eq!(
        before.input(Input::Abort {
            by: "op".into(),
            reason: "again".into(),
            now_ms: before.now
        }),
        Err(Rejection::Finished(
            "aborted: aborted by op: enough; backend-3 is in service (healthy and synced)".into()
        ))
    );
}

// ----- idempotent handling of duplicate and late inputs -----

#[test]
fn duplicate_old_and_unknown_results_are_ignored() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "stop backend-1", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
    let step = run.outstanding();
    run.finish(&step, failed(1, "x"));
    // Duplicate of the recorded result.
    assert_eq!(
        when(&run.history, result_of(&step, failed(1, "x"), run.now)).unwrap(),
        vec![]
    );
    run.tick(); // the retry's guard starts
                // A late result of attempt 1.
    assert_eq!(
        when(&run.history, result_of(&step, succeeded(""), run.now)).unwrap(),
        vec![]
    );
    // A step that never existed.
    let mut bogus = step.clone();
    bogus.step = 9_999;
    assert_eq!(
        when(&run.history, result_of(&bogus, succeeded(""), run.now)).unwrap(),
        vec![]
    );
}

#[test]
fn inputs_before_a_submission_and_after_the_end_are_refused() {
    assert_eq!(
        when(&[], Input::Tick { now_ms: 1 }),
        Err(Rejection::NotSubmitted)
    );
    let (mut run, mut fake) = started("runbook", "");
    assert!(matches!(
        run.input(submit(cluster("runbook", ""), 5)),
        Err(Rejection::AlreadySubmitted(_))
    ));
    run.run_to_rest(&mut fake, 500);
    assert_eq!(run.state.status(), Status::Completed);
    assert_eq!(
        run.input(Input::Tick {
            now_ms: run.now + 1
        })
        .unwrap(),
        vec![]
    );
    assert!(matches!(
        run.input(Input::Pause {
            by: "o".into(),
            reason: "r".into(),
            now_ms: 1
        }),
        Err(Rejection::Finished(_))
    ));
    let first = scheduled(&run.history)[0].clone();
    assert_eq!(
        run.input(result_of(&first, succeeded(""), run.now))
            .unwrap(),
        vec![]
    );
}

/// `chef-backend-ctl cluster-status` with a footer line after the table (a notice, as newer releases print).
const CLUSTER_STATUS_WITH_FOOTER: &str = "\
Name       IP              GUID                              Role      PG        ES
backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  follower  follower  not_master
backend-2  192.168.33.216  c106c88745ef13517874d7301463afb9  leader    leader    master
backend-3  192.168.33.217  4d29bcb5eec25d3674d5b8af132f75b3  follower  follower  not_master

Cluster failover is enabled; 3 of 3 nodes have node failover enabled.
";

#[test]
fn a_cluster_status_with_an_extra_footer_line_still_parses() {
    // Given cluster-status output with a footer, when it is parsed, then the table is read as it is and the
    // footer ignored (golden).
    let member = |name: &str, ip: &str, guid: &str, role: Role, pg: &str, es: &str| ClusterMember {
        name: name.into(),
        ip: ip.into(),
        guid: guid.into(),
        role,
        pg: Some(pg.into()),
        es: Some(es.into()),
    };
    let want = ClusterStatus {
        members: vec![
            member(
                "backend-1",
                "192.168.33.215",
                "79d84527cf937f3daa94c1435d0a4249",
                Role::Follower,
                "follower",
                "not_master",
            ),
            member(
                "backend-2",
                "192.168.33.216",
                "c106c88745ef13517874d7301463afb9",
                Role::Leader,
                "leader",
                "master",
            ),
            member(
                "backend-3",
                "192.168.33.217",
                "4d29bcb5eec25d3674d5b8af132f75b3",
                Role::Follower,
                "follower",
                "not_master",
            ),
        ],
    };
    let got = parse_cluster_status(CLUSTER_STATUS_WITH_FOOTER).unwrap();
    assert_eq!(got, want);
    assert_eq!(got.sole_leader(), Some("backend-2"));
    // And when the guard of backend-1's stop gets it, it passes like the bare table: the stop follows.
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "the guard of backend-1's stop", |r| {
        r.history
            .iter()
            .any(|e| matches!(e, Event::ItemStarted { index: 1, .. }))
    });
    let probe = run.outstanding();
    assert_eq!(probe.action, Action::ProbeClusterStatus);
    let _ = fake.run(&probe);
    let events = run.finish(&probe, succeeded(CLUSTER_STATUS_WITH_FOOTER));
    assert!(
        matches!(&events[1], Event::ObservationRecorded { observation: Observation::ClusterStatus { status }, .. } if *status == want),
        "{events:#?}"
    );
    assert!(matches!(
        &events[2],
        Event::CheckEvaluated { passed: true, .. }
    ));
    run.until(&mut fake, "the stop", |r| {
        r.next_is(Action::Stop, "backend-1")
    });
}

#[test]
fn a_submission_without_a_derivable_target_is_invalid() {
    let mut c = cluster("runbook", "");
    c.upgrade.package = Some("/tmp/chef-backend.deb".into());
    let e = when(&[], submit(c, 1)).unwrap_err();
    assert!(
        e.to_string().contains("cannot tell the target version"),
        "{e}"
    );
}

// ----- the whole thing, replay and verification -----

#[test]
fn complete_upgrades_replay_and_verify() {
    for procedure in ["runbook", "upgrade-command"] {
        let (mut run, mut fake) =
            started(procedure, "\"before-switchover\", \"after-first-follower\"");
        for _ in 0..3 {
            run.run_to_rest(&mut fake, 1_000);
            if let Status::WaitingApproval { gate } = run.state.status() {
                run.input(Input::Approve {
                    gate,
                    by: "op".into(),
                    now_ms: run.now,
                })
                .unwrap();
            }
        }
        assert_eq!(run.state.status(), Status::Completed, "{procedure}");
        assert!(fake.all_at_target() && fake.failover && fake.violations.list.is_empty());
        assert_eq!(replay(&run.history), run.state);
        verify(&run.history).unwrap();
        // The log format round-trips through JSON.
        let json = serde_json::to_string(&run.history).unwrap();
        let back: Vec<Event> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, run.history);
        // Phases in order.
        let phases: Vec<Phase> = run
            .history
            .iter()
            .filter_map(|e| match e {
                Event::PhaseEntered { phase, .. } => Some(*phase),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases,
            [
                Phase::BlockFailover,
                Phase::Followers,
                Phase::Switchover,
                Phase::OldLeader,
                Phase::UnblockFailover,
                Phase::Verify
            ]
        );
    }
}

#[test]
fn verify_catches_a_decision_that_today_s_core_would_not_make() {
    let (mut run, mut fake) = started("runbook", "");
    run.run_to_rest(&mut fake, 500);
    let mut tampered = run.history.clone();
    let i = tampered
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::StepScheduled {
                    action: Action::Stop,
                    ..
                }
            )
        })
        .unwrap();
    if let Event::StepScheduled { argv, .. } = &mut tampered[i] {
        argv.push("--force".into());
    }
    let err = verify(&tampered).unwrap_err();
    assert_eq!(err.index, i);
    let mut truncated = run.history.clone();
    truncated.remove(1);
    assert!(verify(&truncated).is_err());
}

#[test]
fn outstanding_steps_are_what_a_restarted_service_republishes() {
    let (mut run, mut fake) = started("runbook", "");
    run.until(&mut fake, "install backend-1", |r| {
        r.next_is(Action::Install, "backend-1")
    });
    let replayed = replay(&run.history);
    let out = replayed.outstanding_steps();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].action, Action::Install);
    assert_eq!(
        out[0].argv,
        strings(&["dpkg", "-i", "/var/tmp/chef-backend_3.1.0-1_amd64.deb"])
    );
    assert_eq!(replayed.next_wakeup_ms(), Some(out[0].deadline_ms));
    assert_eq!(
        replayed.nodes()["backend-1"].phase,
        workflow::core::NodePhase::Upgrading
    );
    assert_eq!(
        replayed.nodes()["backend-1"].last_action,
        Some(Action::Install)
    );
}
