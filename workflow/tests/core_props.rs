//! Property test: random but legal sequences of step outcomes (success, failure without effect, effect with
//! an unknown or lost result, rejection), delays, pauses, aborts, approvals, resolutions and duplicated or
//! late results, driven against the fake cluster. Every history must keep the invariants below.

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use workflow::core::{
    decide, replay, verify, Action, Event, Gate, Input, NodePhase, Outcome, Resolution,
    ScheduledStep, State, Status,
};

#[derive(Debug, Clone, Copy)]
enum Op {
    Deliver,
    FailNoEffect,
    UnknownAfterEffect,
    LostAfterEffect,
    Rejected,
    Duplicate,
    Tick,
    PauseResume,
    ApproveOrResolve(u8),
    Late,
    Abort,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        60 => Just(Op::Deliver),
        4 => Just(Op::FailNoEffect),
        3 => Just(Op::UnknownAfterEffect),
        3 => Just(Op::LostAfterEffect),
        3 => Just(Op::Rejected),
        4 => Just(Op::Duplicate),
        6 => Just(Op::Tick),
        3 => Just(Op::PauseResume),
        4 => any::<u8>().prop_map(Op::ApproveOrResolve),
        4 => Just(Op::Late),
        1 => Just(Op::Abort),
    ]
}

struct World {
    run: Run,
    fake: FakeCluster,
    delivered: Vec<Input>,
    seen_attempts: BTreeSet<(u64, u32)>,
}

impl World {
    fn input(&mut self, input: Input) -> Result<Vec<Event>, String> {
        let before = self.run.history.len();
        let result = self.run.input(input.clone());
        let events = match result {
            Ok(events) => events,
            Err(r) => match input {
                // Results and ticks are never refused.
                Input::StepFinished { .. } | Input::Tick { .. } | Input::Submit { .. } => {
                    return Err(format!("refused {input:?}: {r}"))
                }
                _ => return Ok(vec![]),
            },
        };
        self.check_batch(before)?;
        if matches!(input, Input::StepFinished { .. }) {
            self.delivered.push(input);
        }
        Ok(events)
    }

    fn result_input(
        &mut self,
        step: &ScheduledStep,
        r: (Outcome, Option<i32>, String, String),
    ) -> Input {
        self.run.now += 7;
        Input::StepFinished {
            step: step.step,
            attempt: step.attempt,
            outcome: r.0,
            exit_code: r.1,
            stdout: r.2,
            stderr: r.3,
            reason: None,
            executor: "exec".into(),
            now_ms: self.run.now,
        }
    }

    fn tick(&mut self) -> Result<(), String> {
        if let Some(at) = self.run.state.next_wakeup_ms() {
            self.run.now = self.run.now.max(at);
        } else {
            self.run.now += 100;
        }
        let now = self.run.now;
        self.input(Input::Tick { now_ms: now }).map(|_| ())
    }

    /// Invariants checked on every new batch of events.
    fn check_batch(&mut self, from: usize) -> Result<(), String> {
        let state = &self.run.state;
        // No action scheduled twice for the same step attempt.
        for e in &self.run.history[from..] {
            if let Event::StepScheduled { step, attempt, .. } = e {
                if !self.seen_attempts.insert((*step, *attempt)) {
                    return Err(format!("step {step} attempt {attempt} scheduled twice"));
                }
            }
        }
        // No install scheduled on a node after an install there that succeeded or whose effect was observed
        // (S4 for outcome-unknown steps: re-observed, never re-run blind).
        for (i, e) in self.run.history.iter().enumerate().skip(from) {
            let Event::StepScheduled {
                action: Action::Install,
                node,
                step,
                ..
            } = e
            else {
                continue;
            };
            let install_on_node = |s: &u64| {
                state.step(*s).is_some_and(|r| {
                    r.scheduled.action == Action::Install && r.scheduled.node == *node
                })
            };
            let done = self.run.history[..i].iter().any(|p| match p {
                Event::StepResultRecorded {
                    step: s,
                    outcome: Outcome::Succeeded,
                    ..
                }
                | Event::OutcomeInferred { step: s, .. } => install_on_node(s),
                _ => false,
            });
            if done {
                return Err(format!(
                    "install (step {step}) scheduled on {node} after an install there took effect"
                ));
            }
        }
        // The cluster's own view first: the outside oracle.
        if !self.fake.violations.list.is_empty() {
            return Err(format!("cluster saw: {:?}", self.fake.violations.list));
        }
        // Never two nodes out of service, as the core sees it and as the cluster does (S1).
        let out: Vec<&String> = state
            .nodes()
            .iter()
            .filter(|(_, p)| matches!(p.phase, NodePhase::Upgrading | NodePhase::Syncing))
            .map(|(n, _)| n)
            .collect();
        if out.len() > 1 {
            return Err(format!("two nodes in progress: {out:?}"));
        }
        // Leader last (S2): an upgrade action on the original leader only once every other node is done.
        if let Some(plan) = state.plan() {
            for e in &self.run.history[from..] {
                if let Event::StepScheduled { node, action, .. } = e {
                    let upgrades = matches!(
                        action,
                        Action::Stop | Action::Install | Action::Upgrade | Action::UpgradeLeader
                    );
                    if upgrades && *node == plan.leader {
                        let others_done = state
                            .nodes()
                            .iter()
                            .filter(|(n, _)| **n != plan.leader)
                            .all(|(_, p)| {
                                matches!(p.phase, NodePhase::Upgraded | NodePhase::Skipped)
                            });
                        if !others_done {
                            return Err(format!(
                                "{action} on the leader before every follower was upgraded"
                            ));
                        }
                    }
                    if *action == Action::Stop && *node == plan.leader {
                        let verified = self.run.history.iter().any(|e| matches!(e, Event::ItemCompleted { index, .. }
                            if matches!(plan.items.get(*index), Some(workflow::core::PlanItem::VerifySwitchover { .. }))));
                        if !verified {
                            return Err(
                                "the old leader was stopped before the switchover was verified"
                                    .into(),
                            );
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn check_terminal(&self) -> Result<(), String> {
        let state = &self.run.state;
        // Failover restored, or explicitly pending with the reason (S3).
        match state.status() {
            Status::Completed | Status::Planned => {
                if state.failover_blocked() {
                    return Err("completed with failover blocked".into());
                }
                if !self.fake.failover {
                    return Err("completed but the cluster has failover off".into());
                }
                if !self.fake.all_at_target() {
                    return Err(format!(
                        "completed but not every node is upgraded: {:?}",
                        self.fake.nodes
                    ));
                }
            }
            Status::Halted {
                failover_pending, ..
            }
            | Status::Aborted {
                failover_pending, ..
            } => match failover_pending {
                None => {
                    if state.failover_blocked() {
                        return Err("ended with failover blocked and no pending reason".into());
                    }
                    if !self.fake.failover {
                        return Err(format!(
                            "ended claiming failover restored, cluster has it off: {:?}",
                            state.status()
                        ));
                    }
                }
                Some(reason) => {
                    if !state.failover_blocked() {
                        return Err("pending reason without the obligation".into());
                    }
                    if !(reason.contains("not healthy")
                        || reason.contains("unblocking failover failed"))
                    {
                        return Err(format!(
                            "pending without an unhealthy-cluster reason: {reason}"
                        ));
                    }
                }
            },
            other => return Err(format!("not terminal: {other:?}")),
        }
        // A wind-down (abort or failure) runs nothing of the plan: only a `start` bringing back the one node
        // this upgrade had stopped before it began, and the unblock.
        let history = &self.run.history;
        let Some(at) = history
            .iter()
            .position(|e| matches!(e, Event::WindDownStarted { .. }))
        else {
            return Ok(());
        };
        let stopped_before: BTreeSet<&String> = history[..at]
            .iter()
            .filter_map(|e| match e {
                Event::StepScheduled {
                    action: Action::Stop,
                    node,
                    ..
                } => Some(node),
                _ => None,
            })
            .collect();
        let mut started: BTreeSet<&String> = BTreeSet::new();
        for e in &history[at..] {
            if let Event::StepScheduled { action, node, .. } = e {
                if *action == Action::Start {
                    if !stopped_before.contains(node) {
                        return Err(format!(
                            "start on {node}, which this upgrade never stopped, during a wind-down"
                        ));
                    }
                    started.insert(node);
                } else if !(action.is_probe() || *action == Action::UnblockFailover) {
                    return Err(format!("{action} on {node} scheduled during a wind-down"));
                }
            }
        }
        if started.len() > 1 {
            return Err(format!("a wind-down started several nodes: {started:?}"));
        }
        let (reason, halted) = match state.status() {
            Status::Aborted { reason, .. } => (reason, false),
            Status::Halted { reason, .. } => (reason, true),
            _ => return Ok(()),
        };
        // The end's reason still begins with what caused the wind-down, and a bring-back's outcome follows it.
        if let Event::WindDownStarted { reason: first, .. } = &history[at] {
            if !reason.starts_with(first.as_str()) {
                return Err(format!(
                    "the end's reason lost its cause `{first}`: {reason}"
                ));
            }
        }
        for n in &started {
            let told = reason.contains(&format!("{n} is in service"))
                || reason.contains(&format!("{n} was not brought back into service"));
            if !told {
                return Err(format!(
                    "{n} was started but the reason does not say how it went: {reason}"
                ));
            }
        }
        // An abort or a failure tries to bring back a node it left stopped: a node still stopped at the end had
        // its `start` scheduled after the wind-down began, and the reason says it was not brought back.
        for n in self.fake.nodes.iter().filter(|n| !n.running) {
            let tried = started.contains(&n.name);
            let named = reason.contains(&format!("{} was not brought back into service", n.name));
            if !tried || !named {
                return Err(format!(
                    "{} leaving {} stopped (start tried: {tried}): {reason}",
                    if halted { "halted" } else { "aborted" },
                    n.name
                ));
            }
        }
        Ok(())
    }
}

fn apply_op(w: &mut World, op: Op) -> Result<(), String> {
    let outstanding = w.run.state.outstanding_steps().first().cloned();
    match (op, outstanding) {
        (Op::Deliver | Op::Duplicate, Some(step)) => {
            let r = w.fake.run(&step);
            let input = w.result_input(&step, r);
            w.input(input.clone())?;
            if matches!(op, Op::Duplicate) {
                let again = w.input(input)?;
                if !again.is_empty() {
                    return Err(format!("a duplicate result decided {again:?}"));
                }
            }
        }
        (Op::FailNoEffect, Some(step)) => {
            w.fake
                .journal
                .push((step.node.clone(), vec!["(not run)".into()]));
            let input = w.result_input(
                &step,
                (
                    Outcome::Failed,
                    Some(1),
                    String::new(),
                    "injected failure".into(),
                ),
            );
            w.input(input)?;
        }
        (Op::UnknownAfterEffect, Some(step)) => {
            let _ = w.fake.run(&step);
            let input = w.result_input(
                &step,
                (Outcome::Unknown, None, String::new(), String::new()),
            );
            w.input(input)?;
        }
        (Op::LostAfterEffect, Some(step)) => {
            let _ = w.fake.run(&step);
            // No result: the deadline passes.
            w.run.now = w.run.now.max(step.deadline_ms);
            let now = w.run.now;
            w.input(Input::Tick { now_ms: now })?;
        }
        (Op::Rejected, Some(step)) => {
            let input = w.result_input(
                &step,
                (Outcome::Rejected, None, String::new(), String::new()),
            );
            w.input(input)?;
        }
        (Op::Late, _) => {
            if let Some(old) = w.delivered.first().cloned() {
                let events = w.input(old)?;
                if !events.is_empty() {
                    return Err(format!("a late result decided {events:?}"));
                }
            }
        }
        (Op::PauseResume, _) => {
            let now = w.run.now;
            let input = if matches!(w.run.state.status(), Status::Paused { .. }) {
                Input::Resume {
                    by: "op".into(),
                    now_ms: now,
                }
            } else {
                Input::Pause {
                    by: "op".into(),
                    reason: "checking".into(),
                    now_ms: now,
                }
            };
            w.input(input)?;
        }
        (Op::ApproveOrResolve(n), _) => {
            let now = w.run.now;
            match w.run.state.status() {
                Status::NeedsVerification { step, .. } => {
                    let resolution = [Resolution::Succeeded, Resolution::Failed, Resolution::Retry]
                        [n as usize % 3];
                    w.input(Input::Resolve {
                        step,
                        resolution,
                        by: "op".into(),
                        why: "prop".into(),
                        now_ms: now,
                    })?;
                }
                _ => {
                    let gate = if n % 2 == 0 {
                        Gate::BeforeSwitchover
                    } else {
                        Gate::AfterFirstFollower
                    };
                    w.input(Input::Approve {
                        gate,
                        by: "op".into(),
                        now_ms: now,
                    })?;
                }
            }
        }
        (Op::Abort, _) => {
            let now = w.run.now;
            w.input(Input::Abort {
                by: "op".into(),
                reason: "prop".into(),
                now_ms: now,
            })?;
        }
        (Op::Tick, _) | (_, None) => w.tick()?,
    }
    Ok(())
}

/// After the random part: deliver everything, resume, approve, settle doubts as failed, until the end.
fn finish(w: &mut World) -> Result<(), String> {
    for _ in 0..3_000 {
        if w.run.state.is_terminal() {
            return Ok(());
        }
        let now = w.run.now;
        match w.run.state.status() {
            Status::Paused { .. } => {
                w.input(Input::Resume {
                    by: "op".into(),
                    now_ms: now,
                })?;
            }
            Status::WaitingApproval { gate } => {
                w.input(Input::Approve {
                    gate,
                    by: "op".into(),
                    now_ms: now,
                })?;
            }
            Status::NeedsVerification { step, .. } => {
                w.input(Input::Resolve {
                    step,
                    resolution: Resolution::Failed,
                    by: "op".into(),
                    why: "end".into(),
                    now_ms: now,
                })?;
            }
            _ => apply_op(w, Op::Deliver)?,
        }
    }
    Err(format!(
        "no end after 3000 inputs: {:?}",
        w.run.state.status()
    ))
}

fn scenario(procedure: &str, gates: &str, ops: &[Op]) -> Result<(), String> {
    let mut w = World {
        run: Run::new(),
        fake: FakeCluster::new("3.0.0-1"),
        delivered: Vec::new(),
        seen_attempts: BTreeSet::new(),
    };
    let now = w.run.now;
    w.input(submit(cluster(procedure, gates), now))?;
    for (i, op) in ops.iter().enumerate() {
        apply_op(&mut w, *op)?;
        if i % 25 == 0 && replay(&w.run.history) != w.run.state {
            return Err(format!(
                "replay differs from the incremental state after op {i}"
            ));
        }
    }
    finish(&mut w)?;
    w.check_terminal()?;
    if replay(&w.run.history) != w.run.state {
        return Err("replay(history) differs from the incremental state".into());
    }
    verify(&w.run.history).map_err(|e| format!("verify: {e}"))?;
    // Every decision made from a state rebuilt from the log equals the one made live.
    let _ = decide(&State::default(), &Input::Tick { now_ms: 0 });
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_keep_the_invariants(
        procedure in prop_oneof![Just("runbook"), Just("upgrade-command")],
        gates in prop_oneof![Just(""), Just("\"before-switchover\""), Just("\"after-first-follower\", \"before-switchover\"")],
        ops in proptest::collection::vec(op(), 0..250),
    ) {
        if let Err(e) = scenario(procedure, gates, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn without_faults_both_procedures_complete() {
    for procedure in ["runbook", "upgrade-command"] {
        let ops = vec![Op::Deliver; 10];
        scenario(procedure, "", &ops).unwrap();
    }
}

/// The generator must reach every kind of ending, or the property above proves little.
#[test]
fn the_generator_reaches_every_kind_of_ending() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        prop_oneof![Just("runbook"), Just("upgrade-command")],
        prop_oneof![Just(""), Just("\"before-switchover\"")],
        proptest::collection::vec(op(), 0..250),
    );
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        let (procedure, gates, ops) = strategy.new_tree(&mut runner).unwrap().current();
        let mut w = World {
            run: Run::new(),
            fake: FakeCluster::new("3.0.0-1"),
            delivered: vec![],
            seen_attempts: BTreeSet::new(),
        };
        let now = w.run.now;
        w.input(submit(cluster(procedure, gates), now)).unwrap();
        for op in &ops {
            apply_op(&mut w, *op).unwrap();
        }
        finish(&mut w).unwrap();
        seen.insert(match w.run.state.status() {
            Status::Completed => "completed",
            Status::Halted {
                failover_pending: None,
                ..
            } => "halted, failover restored",
            Status::Halted {
                failover_pending: Some(_),
                ..
            } => "halted, failover pending",
            Status::Aborted {
                failover_pending: None,
                ..
            } => "aborted, failover restored",
            Status::Aborted {
                failover_pending: Some(_),
                ..
            } => "aborted, failover pending",
            _ => "other",
        });
        let h = &w.run.history;
        if h.iter()
            .any(|e| matches!(e, Event::VerificationRequired { .. }))
        {
            seen.insert("needed verification");
        }
        if h.iter().any(|e| matches!(e, Event::OutcomeInferred { .. })) {
            seen.insert("inferred an outcome");
        }
        if h.iter().any(|e| matches!(e, Event::WindDownStarted { reason, .. } if reason.contains("is in service"))) {
            seen.insert("brought a node back after an abort");
        }
    }
    let want = [
        "completed",
        "halted, failover restored",
        "halted, failover pending",
        "aborted, failover restored",
        "aborted, failover pending",
        "needed verification",
        "inferred an outcome",
        "brought a node back after an abort",
    ];
    for w in want {
        assert!(seen.contains(w), "never reached: {w}; seen {seen:?}");
    }
}

/// The fake's own safety oracle must be able to fail, or the property leans on the core's view alone.
#[test]
fn the_fake_cluster_reports_two_nodes_out_of_service_and_a_stopped_leader() {
    let mut fake = FakeCluster::new("3.0.0-1");
    let stop = |node: &str| ScheduledStep {
        step: 1,
        attempt: 1,
        node: node.into(),
        group: "g".into(),
        action: Action::Stop,
        argv: vec!["chef-backend-ctl".into(), "stop".into()],
        env: Default::default(),
        timeout_ms: 1,
        deadline_ms: 1,
    };
    fake.run(&stop("backend-1"));
    assert!(fake.violations.list.is_empty());
    fake.run(&stop("backend-3"));
    assert!(
        fake.violations.list.iter().any(|v| v.starts_with("S1")),
        "{:?}",
        fake.violations.list
    );
    let mut fake = FakeCluster::new("3.0.0-1");
    fake.run(&stop("backend-2"));
    assert!(
        fake.violations.list.iter().any(|v| v.starts_with("S2")),
        "{:?}",
        fake.violations.list
    );
}

/// Found by this property: an `upgrade` whose result was lost must not be inferred from the installed version
/// (the install before it already put that there), or the leader is upgraded while a follower runs the old one.
#[test]
fn a_lost_upgrade_result_is_not_taken_for_its_effect() {
    use Op::*;
    let ops = [
        Deliver,
        Deliver,
        Deliver,
        Deliver,
        Deliver,
        Deliver,
        Deliver,
        PauseResume,
        Deliver,
        PauseResume,
        Deliver,
        Tick,
    ];
    scenario("upgrade-command", "", &ops).unwrap();
}

/// A step running `argv` on `node`, for driving the fake by hand.
fn step_on(node: &str, argv: &[&str]) -> ScheduledStep {
    ScheduledStep {
        step: 1,
        attempt: 1,
        node: node.into(),
        group: "g".into(),
        action: Action::ProbeStatus,
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: Default::default(),
        timeout_ms: 1,
        deadline_ms: 1,
    }
}

/// The probes the guarded core will use, answered as the reference (and the lead's brief) says.
#[test]
fn the_fake_answers_the_new_probes_as_chef_backend_does() {
    let deb = "/var/tmp/chef-backend_3.1.0-1_amd64.deb";
    let mut fake = FakeCluster::new("3.0.0-1");
    fake.missing_package.insert("backend-3".into());
    // cluster-status --json
    let (o, _, out, _) = fake.run(&step_on(
        "backend-1",
        &["chef-backend-ctl", "cluster-status", "--json"],
    ));
    assert_eq!(o, Outcome::Succeeded);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["failover"], true);
    assert_eq!(v["leader"], "backend-2");
    assert_eq!(v["nodes"][1]["role"], "leader");
    assert_eq!(v["nodes"][0]["failover"], true);
    assert_eq!(v["nodes"][0]["running"], true);
    // the package's own version, or the file is missing
    let r = fake.run(&step_on(
        "backend-1",
        &["dpkg-deb", "--field", deb, "Version"],
    ));
    assert_eq!(
        (r.0, r.1, r.2.as_str()),
        (Outcome::Succeeded, Some(0), "3.1.0-1\n")
    );
    let r = fake.run(&step_on(
        "backend-3",
        &["dpkg-deb", "--field", deb, "Version"],
    ));
    assert_eq!((r.0, r.1), (Outcome::Failed, Some(2)));
    assert!(r.3.contains("failed to read archive"), "{r:?}");
    let rpm = "/var/tmp/chef-backend-3.1.0-1.el7.x86_64.rpm";
    let r = fake.run(&step_on(
        "backend-1",
        &["rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE}", rpm],
    ));
    assert_eq!(r.2, "3.1.0-1.el7");
    // installed state and version, both forms
    let q = |fake: &mut FakeCluster, f: &str| {
        fake.run(&step_on(
            "backend-1",
            &["dpkg-query", "-W", f, "chef-backend"],
        ))
        .2
    };
    assert_eq!(q(&mut fake, "-f=${Version}"), "3.0.0-1");
    assert_eq!(
        q(&mut fake, "-f=${db:Status-Status} ${Version}\\n"),
        "installed 3.0.0-1\n"
    );
    fake.install_fails.insert("backend-1".into());
    let r = fake.run(&step_on("backend-1", &["dpkg", "-i", deb]));
    assert_eq!(r.0, Outcome::Failed);
    assert_eq!(
        q(&mut fake, "-f=${db:Status-Status} ${Version}\\n"),
        "half-configured 3.1.0-1\n"
    );
    // status on a stopped node: exit 1, full table
    fake.run(&step_on("backend-3", &["chef-backend-ctl", "stop"]));
    let r = fake.run(&step_on("backend-3", &["chef-backend-ctl", "status"]));
    assert_eq!((r.0, r.1), (Outcome::Failed, Some(1)));
    assert!(r.2.contains("postgresql     down"), "{}", r.2);
    let r = fake.run(&step_on(
        "backend-3",
        &["chef-backend-ctl", "cluster-status", "--json"],
    ));
    assert_eq!(r.1, Some(1));
}

#[test]
fn the_fake_keeps_quorum_node_failover_and_resyncs_after_leader_changes() {
    fn ctl<'a>(a: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["chef-backend-ctl"];
        v.extend_from_slice(a);
        v
    }
    // A demote refused with the leader's node failover off; an election skips a node whose is off.
    let mut fake = FakeCluster::new("3.0.0-1");
    fake.run(&step_on("backend-2", &ctl(&["set-node-failover", "off"])));
    let r = fake.run(&step_on("backend-2", &ctl(&["demote"])));
    assert_eq!(r.1, Some(1), "{r:?}");
    fake.run(&step_on("backend-2", &ctl(&["set-node-failover", "on"])));
    fake.run(&step_on("backend-1", &ctl(&["set-node-failover", "off"])));
    let r = fake.run(&step_on("backend-2", &ctl(&["demote"])));
    assert_eq!(r.0, Outcome::Succeeded);
    assert_eq!(fake.leader_name().as_deref(), Some("backend-3"));
    // Every follower re-syncs, shown by the leader's status, while cluster-status says follower.
    assert!(fake.nodes[0].syncing > 0 && fake.nodes[1].syncing > 0);
    let r = fake.run(&step_on("backend-3", &ctl(&["status"])));
    assert!(r.2.contains("syncing: 2; synced: 0"), "{}", r.2);
    let r = fake.run(&step_on("backend-3", &ctl(&["cluster-status"])));
    assert!(
        r.2.contains("backend-1  192.168.33.215  79d84527cf937f3daa94c1435d0a4249  follower"),
        "{}",
        r.2
    );
    // Quorum: two of three down, no leader and no election, even with failover on.
    let mut fake = FakeCluster::new("3.0.0-1");
    assert!(fake.env_crash("backend-1"));
    assert!(fake.env_crash("backend-2"));
    assert_eq!(fake.leader(), None);
    assert!(fake.env_start("backend-1"));
    // Quorum is back: the synced follower is elected, the restarted node re-syncs to it.
    assert_eq!(fake.leader_name().as_deref(), Some("backend-3"));
    assert!(fake.nodes[0].syncing > 0);
    // The leader killed with failover off: nobody leads until failover is back on.
    let mut fake = FakeCluster::new("3.0.0-1");
    fake.run(&step_on(
        "backend-1",
        &ctl(&["set-cluster-failover", "off"]),
    ));
    fake.env_crash("backend-2");
    assert_eq!(fake.leader(), None);
    fake.run(&step_on("backend-1", &ctl(&["set-cluster-failover", "on"])));
    assert_eq!(fake.leader_name().as_deref(), Some("backend-1"));
}
