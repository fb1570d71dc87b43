//! The upgrade loop driven by a profile file: the shipped `profiles/etcd.toml` against a small model of a
//! 3-member etcd cluster that answers each probe in the exact shape real etcd gave (`tests/fixtures/etcd/`:
//! `endpoint status -w json` lists only the members that answer and exits 1 when one does not, `endpoint health`
//! of a stopped member exits 1 with `"health":false`, `etcd --version` prints `etcd Version: X`). The same
//! safety rules as chef-backend's, on the profile's observations: the plan, the leader last after a move to an
//! upgraded follower, one member out at a time, and a halt when a member never comes back.
//! (The real cluster is upgraded by `tests/tests/integration/real_etcd.rs`.)

mod common;

use std::collections::BTreeMap;

use common::Run;
use workflow::core::{
    Action, ClusterFile, Event, Input, Outcome, PlanItem, ScheduledStep, State, Status,
};

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn etcd_profile_text() -> String {
    std::fs::read_to_string(repo().join("profiles/etcd.toml")).expect("profiles/etcd.toml")
}

const IDS: [(&str, &str, u64); 3] = [
    ("m1", "5d14f8b3ac4b6cb1", 6707259195634969777),
    ("m2", "2d19e0210d84b8b5", 3249875038689867957),
    ("m3", "a2e191591bbfb5f7", 11736821915807888887),
];

fn address(i: usize) -> String {
    format!("127.0.0.1:{}", 2379 + 10 * i)
}

/// The cluster file the harness writes, with the profile's text as a submitter sends it.
fn cluster(profile_text: &str) -> ClusterFile {
    let endpoints: Vec<String> = (0..3).map(address).collect();
    let mut toml = String::from("[cluster]\nname = \"etcd-model\"\nprofile = \"etcd.toml\"\n\n");
    for (i, (name, hex, _)) in IDS.iter().enumerate() {
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"{}\"\nexecutor = \"{name}\"\nvars = {{ ctl = \"/srv/{name}/ctl\", \
             etcdctl = \"/srv/{name}/etcdctl\", endpoints = \"{}\", member_id = \"{hex}\" }}\n\n",
            address(i),
            endpoints.join(",")
        ));
    }
    toml.push_str(
        "[upgrade]\npackage = \"/opt/etcd/3.5.1\"\ntarget_version = \"3.5.1\"\npoll_interval_ms = 500\n\
         sync_timeout_ms = 20000\nretries = 1\nbackoff_ms = 500\n",
    );
    let mut c = ClusterFile::parse("cluster.toml", &toml).expect("the model's cluster file parses");
    c.profile_text = Some(profile_text.to_string());
    c
}

fn submit(cluster: ClusterFile) -> Input {
    let mut input = common::submit(cluster, 1_000);
    if let Input::Submit {
        executors_online, ..
    } = &mut input
    {
        *executors_online = IDS.iter().map(|(n, _, _)| n.to_string()).collect();
    }
    input
}

/// One member of the model.
#[derive(Debug, Clone)]
struct Member {
    up: bool,
    installed: String,
    /// Whether a `start` may bring it up (false: it crashes on start, as a broken package would make it).
    starts: bool,
    /// Cut off from the others (its peer port blocked): it still answers `endpoint status` on its client port,
    /// with the leader and raft term it last knew (`seen`), but no quorum read through it succeeds and it counts
    /// for no majority.
    cut_off: bool,
    /// What a cut-off member last knew when it was cut off: `(leader's member id, raft term)`, 0 for no leader.
    /// Taken by `Etcd::run` the first time it sees the member cut off, dropped once it is not.
    seen: Option<(u64, u64)>,
    /// The version its process runs (what was installed when it last started).
    running: String,
    /// `stop` exits 0 but leaves the process running (a wrapper that signals the wrong pid).
    stop_is_a_no_op: bool,
}

/// A 3-member etcd cluster: who runs, what is installed, who leads; and what went wrong.
#[derive(Debug)]
struct Etcd {
    members: Vec<Member>,
    leader: Option<usize>,
    /// The node commands that changed something, in order: `(node, action)`.
    journal: Vec<(String, String)>,
    /// Times the cluster had fewer than a majority of members up (an outage).
    outages: usize,
    /// The raft term: one more at every change of leader.
    term: u64,
}

impl Etcd {
    fn new(leader: usize) -> Etcd {
        Etcd {
            members: (0..3)
                .map(|_| Member {
                    up: true,
                    installed: "3.4.23".into(),
                    starts: true,
                    cut_off: false,
                    seen: None,
                    running: "3.4.23".into(),
                    stop_is_a_no_op: false,
                })
                .collect(),
            leader: Some(leader),
            journal: Vec::new(),
            outages: 0,
            term: 2,
        }
    }

    fn idx(name: &str) -> usize {
        IDS.iter()
            .position(|(n, _, _)| *n == name)
            .expect("a member of the model")
    }

    fn quorum(&self) -> bool {
        self.members.iter().filter(|m| m.up && !m.cut_off).count() >= 2
    }

    /// A leader goes, is cut off from the others (or there is none): the first member up and not cut off leads
    /// if a majority is up. Without a majority nobody leads (a leader that loses its quorum steps down). A member
    /// cut off from the others never leads them: they elect without it.
    fn elect(&mut self) {
        let serves = |m: &Member| m.up && !m.cut_off;
        if self.leader.is_some_and(|l| serves(&self.members[l])) && self.quorum() {
            return;
        }
        let leader = if self.quorum() {
            self.members.iter().position(serves)
        } else {
            None
        };
        if leader != self.leader {
            self.term += 1;
        }
        self.leader = leader;
    }

    /// A member cut off from the others keeps what it knew when it was cut off (taken the first time `run` sees
    /// it, before anything changes); a member no longer cut off forgets it.
    fn freeze_views(&mut self) {
        let now = (self.leader.map_or(0, |l| IDS[l].2), self.term);
        for m in &mut self.members {
            m.seen = if m.cut_off {
                m.seen.or(Some(now))
            } else {
                None
            };
        }
    }

    fn ok(stdout: String) -> (Outcome, Option<i32>, String, String) {
        (Outcome::Succeeded, Some(0), stdout, String::new())
    }

    fn exit1(stdout: String, stderr: &str) -> (Outcome, Option<i32>, String, String) {
        (Outcome::Failed, Some(1), stdout, stderr.to_string())
    }

    fn run(&mut self, step: &ScheduledStep) -> (Outcome, Option<i32>, String, String) {
        let i = Etcd::idx(&step.node);
        let changes = !step.action.is_probe();
        if changes {
            self.journal
                .push((step.node.clone(), step.action.as_str().to_string()));
        }
        self.freeze_views();
        self.elect();
        let result = match step.action {
            // Every member that answers reports its own view: a cut-off one the leader and term it last knew.
            Action::ProbeClusterStatus => {
                let now = (self.leader.map_or(0, |l| IDS[l].2), self.term);
                let rows: Vec<String> = (0..3)
                    .filter(|j| self.members[*j].up)
                    .map(|j| {
                        let (leader_id, term) = self.members[j].seen.unwrap_or(now);
                        format!(
                            r#"{{"Endpoint":"{}","Status":{{"header":{{"cluster_id":3841375391586629848,"member_id":{},"revision":41,"raft_term":{term}}},"version":"{}","dbSize":24576,"leader":{leader_id},"raftIndex":48,"raftTerm":{term},"raftAppliedIndex":48,"dbSizeInUse":24576}}}}"#,
                            address(j),
                            IDS[j].2,
                            self.members[j].installed
                        )
                    })
                    .collect();
                let json = format!("[{}]\n", rows.join(","));
                if rows.len() == 3 {
                    Etcd::ok(json)
                } else {
                    Etcd::exit1(json, "Failed to get the status of endpoint")
                }
            }
            Action::ProbeStatus => {
                if self.members[i].up && !self.members[i].cut_off && self.leader.is_some() {
                    Etcd::ok(format!(
                        r#"[{{"endpoint":"{}","health":true,"took":"3.8ms"}}]"#,
                        address(i)
                    ))
                } else {
                    Etcd::exit1(
                        format!(
                            r#"[{{"endpoint":"{}","health":false,"took":"3.0s","error":"context deadline exceeded"}}]"#,
                            address(i)
                        ),
                        "Error: unhealthy cluster",
                    )
                }
            }
            Action::ProbeVersion => Etcd::ok(format!(
                "etcd Version: {}\nGit SHA: e8732fb5f\nGo Version: go1.16.3\nGo OS/Arch: linux/amd64\n",
                self.members[i].installed
            )),
            Action::ProbePackage => Etcd::ok(
                "etcd Version: 3.5.1\nGit SHA: e8732fb5f\nGo Version: go1.16.3\nGo OS/Arch: linux/amd64\n"
                    .into(),
            ),
            Action::Stop => {
                if !self.members[i].stop_is_a_no_op {
                    self.members[i].up = false;
                    self.elect();
                }
                Etcd::ok(String::new())
            }
            Action::ProbeRunningVersion => {
                if self.members[i].up {
                    Etcd::ok(format!(
                        "{{\"version\":\"{}\",\"dbSize\":24576}}\n",
                        self.members[i].running
                    ))
                } else {
                    Etcd::exit1(String::new(), "etcd is not running")
                }
            }
            Action::Install => {
                self.members[i].installed = "3.5.1".into();
                Etcd::ok(String::new())
            }
            Action::Start => {
                if !self.members[i].starts {
                    return Etcd::exit1(String::new(), "etcd exited at once (see its log)");
                }
                // Already running: nothing starts (the process keeps its binaries).
                if !self.members[i].up {
                    self.members[i].running = self.members[i].installed.clone();
                }
                self.members[i].up = true;
                self.elect();
                Etcd::ok(String::new())
            }
            Action::Demote => {
                // `etcdctl move-leader HEXID`: asks the leader among the endpoints to hand over to the target.
                let target_hex = step.argv.last().cloned().unwrap_or_default();
                let Some(t) = IDS.iter().position(|(_, hex, _)| *hex == target_hex) else {
                    return Etcd::exit1(String::new(), "Error: bad member ID");
                };
                match self.leader {
                    Some(l) if self.members[t].up && !self.members[t].cut_off => {
                        self.leader = Some(t);
                        self.term += 1;
                        Etcd::ok(format!(
                            "Leadership transferred from {} to {}\n",
                            IDS[l].1, IDS[t].1
                        ))
                    }
                    _ => Etcd::exit1(String::new(), "Error: no leader endpoint given"),
                }
            }
            other => panic!("the etcd profile has no action {other}"),
        };
        if !self.quorum() {
            self.outages += 1;
        }
        result
    }

    fn drive(&mut self, run: &mut Run, max: usize) {
        drive(run, max, |step| self.run(step))
    }
}

/// Runs every outstanding step through `model` and ticks through waits until the upgrade rests or ends.
fn drive(
    run: &mut Run,
    max: usize,
    mut model: impl FnMut(&ScheduledStep) -> (Outcome, Option<i32>, String, String),
) {
    for _ in 0..max {
        if run.state.is_terminal() {
            return;
        }
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            let result = model(&step);
            run.finish(&step, result);
            continue;
        }
        if run.state.next_wakeup_ms().is_some() {
            run.tick();
            continue;
        }
        return;
    }
}

fn plan_of(history: &[Event]) -> (workflow::core::Plan, String) {
    history
        .iter()
        .find_map(|e| match e {
            Event::PlanComputed { plan, plan_hash } => Some((plan.clone(), plan_hash.clone())),
            _ => None,
        })
        .expect("a plan was computed")
}

fn runs(plan: &workflow::core::Plan) -> Vec<(String, Action, Vec<String>)> {
    plan.items
        .iter()
        .filter_map(|i| match i {
            PlanItem::Run {
                node, action, argv, ..
            } => Some((node.clone(), *action, argv.clone())),
            _ => None,
        })
        .collect()
}

fn status(state: &State) -> Status {
    state.status()
}

/// The reason of a halted upgrade, and what it says of failover (`None`: not left blocked); panics naming the
/// status if the upgrade is not halted.
fn halted(state: &State) -> (String, Option<String>) {
    match status(state) {
        Status::Halted {
            reason,
            failover_pending,
        } => (reason, failover_pending),
        other => panic!("halted: {other:?}"),
    }
}

/// [`halted`] with failover left blocked: the reason and what it says is pending.
fn halted_failover_pending(state: &State) -> (String, String) {
    match halted(state) {
        (reason, Some(pending)) => (reason, pending),
        (reason, None) => panic!("halted with failover pending: failover not pending: {reason}"),
    }
}

#[test]
fn the_etcd_profile_upgrades_every_member_once_leader_last_after_moving_leadership() {
    let text = etcd_profile_text();
    let mut run = Run::new();
    run.input(submit(cluster(&text)))
        .expect("a profile-file submission is accepted");
    let mut etcd = Etcd::new(1); // m2 leads
    etcd.drive(&mut run, 5_000);
    assert_eq!(
        status(&run.state),
        Status::Completed,
        "{:#?}",
        &run.history[run.history.len().saturating_sub(8)..]
    );

    let (plan, _) = plan_of(&run.history);
    // No fence: nothing to block or unblock. Followers in file order, then the switchover to the first
    // follower (by its member ID), then the old leader.
    let items: Vec<(String, &str)> = runs(&plan)
        .iter()
        .map(|(n, a, _)| (n.clone(), a.as_str()))
        .collect();
    let want: Vec<(String, &str)> = [
        ("m1", "stop"),
        ("m1", "install"),
        ("m1", "start"),
        ("m3", "stop"),
        ("m3", "install"),
        ("m3", "start"),
        ("m2", "demote"),
        ("m2", "stop"),
        ("m2", "install"),
        ("m2", "start"),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), *a))
    .collect();
    assert_eq!(items, want);
    let switchover = runs(&plan)
        .into_iter()
        .find(|(_, a, _)| *a == Action::Demote)
        .expect("a switchover");
    assert_eq!(
        switchover.2.last().map(String::as_str),
        Some(IDS[0].1),
        "move-leader names m1's member ID: {:?}",
        switchover.2
    );
    assert_eq!(
        switchover.2[0], "/srv/m2/etcdctl",
        "runs the leader's etcdctl"
    );
    // The plan records the profile file's hash, so approving a plan hash approves the profile too.
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(plan.profile_sha256.as_deref(), Some(sha.as_str()));

    // What ran on the cluster: each member stopped, installed and started exactly once, the leader moved off
    // m2 before m2 went, and never fewer than a majority up.
    let journal: Vec<(String, String)> = want
        .iter()
        .map(|(n, a)| (n.clone(), a.to_string()))
        .collect();
    assert_eq!(etcd.journal, journal);
    assert_eq!(etcd.outages, 0);
    assert!(etcd.members.iter().all(|m| m.up && m.installed == "3.5.1"));
    assert_eq!(
        etcd.leader,
        Some(0),
        "m1, the first upgraded follower, leads"
    );
    // No failover probe or action: the profile has no fence.
    assert!(!run.history.iter().any(|e| matches!(
        e.scheduled_step(),
        Some(s) if matches!(s.action, Action::ProbeFailover | Action::BlockFailover | Action::UnblockFailover)
    )));
}

#[test]
fn a_profile_plan_hash_changes_with_the_profile_text() {
    let text = etcd_profile_text();
    let hash_of = |text: &str| {
        let mut run = Run::new();
        let mut c = cluster(text);
        c.profile_text = Some(text.to_string());
        let Input::Submit { .. } = submit(c.clone()) else {
            unreachable!()
        };
        let mut input = submit(c);
        if let Input::Submit { plan_only, .. } = &mut input {
            *plan_only = true;
        }
        run.input(input).unwrap();
        Etcd::new(1).drive(&mut run, 100);
        plan_of(&run.history).1
    };
    let one = hash_of(&text);
    // A different timeout for `stop` is a different profile, so a different plan to approve.
    let other = text.replace(
        "timeout_ms = 60000\nshows = \"stopped\"",
        "timeout_ms = 61000\nshows = \"stopped\"",
    );
    assert_ne!(text, other, "the edit applies");
    assert_ne!(one, hash_of(&other));
    assert_eq!(one, hash_of(&text), "the same profile gives the same plan");
}

/// Hostile review #11d: a node var or address that only a probe renders (etcd's node probe renders
/// `{address}`) appears in no planned action, yet decides what the guard sees. The plan hash covers the cluster
/// file's nodes whole, so two plans with the same items but different node fields have different hashes. (The
/// edit here is a var that nothing renders: the model matches members by address, so the address must stay.)
#[test]
fn a_profile_plan_hash_covers_node_fields_that_only_probes_use() {
    let hash_of = |c: ClusterFile| {
        let mut run = Run::new();
        let mut input = submit(c);
        if let Input::Submit { plan_only, .. } = &mut input {
            *plan_only = true;
        }
        run.input(input).unwrap();
        Etcd::new(1).drive(&mut run, 100);
        plan_of(&run.history)
    };
    let text = etcd_profile_text();
    let (plan, one) = hash_of(cluster(&text));
    assert!(plan.nodes_sha256.is_some());
    let mut c = cluster(&text);
    c.nodes[0]
        .vars
        .insert("probe_only".into(), "--endpoints=127.0.0.1:2999".into());
    let (edited, two) = hash_of(c);
    assert_eq!(runs(&plan), runs(&edited), "the same actions");
    assert_ne!(one, two);
}

#[test]
fn a_member_that_never_comes_back_halts_the_upgrade_with_the_others_in_service() {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1);
    etcd.members[0].starts = false; // m1's new binaries crash at once
    etcd.drive(&mut run, 5_000);
    let s = status(&run.state);
    assert!(
        matches!(s, Status::Halted { .. }),
        "the upgrade stops: {s:?}"
    );
    // Nothing else was taken out after m1 failed to come back: m3 and m2 never stopped.
    let stopped: Vec<&str> = etcd
        .journal
        .iter()
        .filter(|(_, a)| a == "stop")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(stopped, vec!["m1"], "{:?}", etcd.journal);
    assert_eq!(etcd.outages, 0);
    assert_eq!(etcd.leader, Some(1), "m2 still leads");
    let reason = run
        .history
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::WindDownStarted { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .expect("a wind-down with a reason");
    assert!(reason.contains("m1"), "the reason names the node: {reason}");
}

#[test]
fn the_guard_waits_while_another_member_is_down_and_acts_once_it_is_back() {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1);
    // Run until the plan is made, then take m3 down behind Baton's back, before the first stop's guard looks.
    for _ in 0..500 {
        if run
            .history
            .iter()
            .any(|e| matches!(e, Event::PlanComputed { .. }))
        {
            break;
        }
        let step = run.outstanding();
        let r = etcd.run(&step);
        run.finish(&step, r);
    }
    etcd.members[2].up = false;
    // For 8 s (well inside the 20 s the guard waits), nothing may be taken out: one more member down would
    // leave etcd without a majority.
    let until = run.now + 8_000;
    while run.now < until && !run.state.is_terminal() {
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            assert!(
                step.action.is_probe(),
                "{} on {} while m3 is down",
                step.action,
                step.node
            );
            let r = etcd.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    assert!(etcd.journal.is_empty(), "nothing ran: {:?}", etcd.journal);
    // m3 comes back by itself; the upgrade then carries on to the end, each action once.
    etcd.members[2].up = true;
    etcd.drive(&mut run, 5_000);
    assert_eq!(status(&run.state), Status::Completed);
    let counts: BTreeMap<(String, String), usize> =
        etcd.journal.iter().fold(BTreeMap::new(), |mut m, k| {
            *m.entry(k.clone()).or_default() += 1;
            m
        });
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(
        counts.values().all(|c| *c == 1),
        "every action once: {counts:?}"
    );
    assert_eq!(etcd.outages, 0);
}

/// Runs `run` against `model` until the plan is made.
fn until_planned(
    run: &mut Run,
    mut model: impl FnMut(&ScheduledStep) -> (Outcome, Option<i32>, String, String),
) {
    for _ in 0..500 {
        if run
            .history
            .iter()
            .any(|e| matches!(e, Event::PlanComputed { .. }))
        {
            return;
        }
        let step = run.outstanding();
        let r = model(&step);
        run.finish(&step, r);
    }
    panic!("no plan after 500 steps");
}

/// Drives `run` for `ms` of model time, asserting that only probes run; returns the guard's reasons seen.
fn only_probes_for(
    run: &mut Run,
    ms: u64,
    mut model: impl FnMut(&ScheduledStep) -> (Outcome, Option<i32>, String, String),
) -> Vec<String> {
    let until = run.now + ms;
    while run.now < until && !run.state.is_terminal() {
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            assert!(
                step.action.is_probe(),
                "{} on {} ran",
                step.action,
                step.node
            );
            let r = model(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    run.history
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated {
                passed: false,
                problems,
                ..
            } => Some(problems.join("; ")),
            _ => None,
        })
        .collect()
}

/// Hostile review, outage #1: a member cut off from the leader still answers `endpoint status` (listed, shown a
/// follower with the leader it last knew), so the topology alone shows three healthy members. Stopping another
/// member then would leave etcd without a majority. The guard also asks every other member's own node probe
/// (`endpoint health`, a quorum read through it) and waits.
#[test]
fn the_guard_does_not_take_a_member_out_while_another_is_cut_off_but_still_listed() {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1);
    until_planned(&mut run, |s| etcd.run(s));
    etcd.members[2].cut_off = true;
    let reasons = only_probes_for(&mut run, 8_000, |s| etcd.run(s));
    assert!(etcd.journal.is_empty(), "nothing ran: {:?}", etcd.journal);
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("m3: listed in the topology, but its own node probe shows it down")),
        "{reasons:?}"
    );
    // Healed: the upgrade carries on to the end without an outage.
    etcd.members[2].cut_off = false;
    etcd.drive(&mut run, 5_000);
    assert_eq!(status(&run.state), Status::Completed);
    assert_eq!(etcd.outages, 0);
}

/// Hostile review #4: the installed version shows only what the next start runs. A `stop` that exits 0 but
/// leaves the process running makes the `start` after it a no-op, so the member keeps serving on the old binary
/// with the new one installed. The running-version probe catches it: the upgrade halts, naming the member and
/// both versions, instead of reporting COMPLETED.
#[test]
fn a_member_still_running_the_old_binary_after_its_restart_halts_the_upgrade() {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1);
    etcd.members[0].stop_is_a_no_op = true;
    etcd.drive(&mut run, 5_000);
    let s = status(&run.state);
    let Status::Halted { reason, .. } = &s else {
        panic!("halted: {s:?}");
    };
    assert!(
        reason.contains("m1") && reason.contains("running version 3.4.23, want 3.5.1"),
        "{reason}"
    );
    assert_eq!(etcd.members[0].running, "3.4.23");
    // Nothing else was touched after m1.
    assert!(
        etcd.journal.iter().all(|(n, _)| n == "m1"),
        "{:?}",
        etcd.journal
    );
}

#[test]
fn a_member_lost_while_another_is_out_stops_the_upgrade_after_bringing_that_one_back() {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1);
    // Run until m1 is stopped, then lose m3 too: no majority, no leader.
    for _ in 0..500 {
        if etcd.journal.iter().any(|(n, a)| n == "m1" && a == "stop") {
            break;
        }
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            let r = etcd.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    etcd.members[2].up = false;
    etcd.leader = None;
    etcd.drive(&mut run, 5_000);
    let s = status(&run.state);
    assert!(matches!(s, Status::Halted { .. }), "{s:?}");
    // Baton brought m1 back (which restores the majority), and took nothing else out.
    assert!(etcd.members[0].up, "m1 is back: {:?}", etcd.journal);
    let stops: Vec<&str> = etcd
        .journal
        .iter()
        .filter(|(_, a)| a == "stop")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(stops, vec!["m1"]);
    assert!(etcd.leader.is_some(), "a leader again");
}

#[test]
fn a_profile_file_without_its_text_or_target_version_is_refused_naming_why() {
    let text = etcd_profile_text();
    let mut c = cluster(&text);
    c.profile_text = None;
    let refused = Run::new().input(submit(c)).unwrap_err().to_string();
    assert!(
        refused.contains("did not come with the submission"),
        "{refused}"
    );

    let mut c = cluster(&text);
    c.upgrade.target_version = None;
    let refused = Run::new().input(submit(c)).unwrap_err().to_string();
    assert!(refused.contains("give target_version"), "{refused}");

    // A profile whose procedure the loop does not run yet is refused, saying which shape it runs.
    let odd = text.replace(
        "follower = [\"stop\", \"install\", \"start\"]",
        "follower = [\"install\", \"stop\", \"start\"]",
    );
    assert_ne!(odd, text);
    let refused = Run::new()
        .input(submit(cluster(&odd)))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("one shape so far"), "{refused}");
}

// ---------------------------------------------------------------------------------------------------------
// Patroni: a system with a failover fence (`patronictl pause`/`resume`), shown only by the REST API's
// GET /patroni ("pause": true). The model answers in the shapes of tests/fixtures/patroni/: the topology
// (GET /cluster) keeps a stopped member's key (shown "streaming") until its TTL ends, curl to a stopped
// member's API exits 7, and a member cut off from the DCS serves the picture it had then (`Patroni::picture`).

fn patroni_profile_text() -> String {
    std::fs::read_to_string(repo().join("profiles/patroni.toml")).expect("profiles/patroni.toml")
}

const PG: [&str; 3] = ["pg1", "pg2", "pg3"];

fn patroni_cluster(profile_text: &str) -> ClusterFile {
    patroni_cluster_of(&PG, profile_text, "")
}

/// The model's cluster file for `members`, with `upgrade_extra` appended to its `[upgrade]` table.
fn patroni_cluster_of(members: &[&str], profile_text: &str, upgrade_extra: &str) -> ClusterFile {
    let mut toml =
        String::from("[cluster]\nname = \"patroni-model\"\nprofile = \"patroni.toml\"\n\n");
    for (i, name) in members.iter().enumerate() {
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.1:{}\"\nexecutor = \"{name}\"\nvars = {{ ctl = \"/srv/member.sh\", \
             dir = \"/srv/{name}\", patronictl = \"/srv/venv/bin/patronictl\", config = \"/srv/{name}/patroni.yml\", \
             api = \"http://127.0.0.1:{}\" }}\n\n",
            5432 + i,
            8008 + i
        ));
    }
    toml.push_str(&format!(
        "[upgrade]\npackage = \"/srv/pkg/15.20\"\ntarget_version = \"15.20\"\npoll_interval_ms = 500\n\
         sync_timeout_ms = 20000\nretries = 1\nbackoff_ms = 500\n{upgrade_extra}\n"
    ));
    let mut c = ClusterFile::parse("cluster.toml", &toml).expect("the model's cluster file parses");
    c.profile_text = Some(profile_text.to_string());
    c
}

/// Member `j`'s row in the model's GET /cluster: the leader, running, or a replica streaming with no lag.
fn cluster_row(j: usize, leader: bool) -> String {
    if leader {
        format!(
            r#"{{"name": "{}", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:{}/patroni", "host": "127.0.0.1", "port": {}, "timeline": 1}}"#,
            PG[j],
            8008 + j,
            5432 + j
        )
    } else {
        format!(
            r#"{{"name": "{}", "role": "replica", "state": "streaming", "api_url": "http://127.0.0.1:{}/patroni", "host": "127.0.0.1", "port": {}, "timeline": 1, "replay_lag": 0, "replay_lsn": "0/5000000", "lag": 0, "lsn": "0/5000000"}}"#,
            PG[j],
            8008 + j,
            5432 + j
        )
    }
}

#[derive(Debug)]
struct Patroni {
    up: [bool; 3],
    installed: [&'static str; 3],
    running: [&'static str; 3],
    leader: Option<usize>,
    paused: bool,
    /// Topology probes left during which a stopped member still shows "streaming" (its DCS key's TTL).
    stale: [usize; 3],
    starts: [bool; 3],
    journal: Vec<(String, String)>,
    /// Moments with no leader.
    leaderless: usize,
    /// How the switchover goes wrong, if it does.
    switchover_fault: SwitchoverFault,
    /// The leader GET /cluster shows when its member's cached picture is stale (`None`: the real one).
    cached_leader: Option<usize>,
    /// A member cut off from the DCS but running: its own API still says what it is (a primary keeps serving
    /// under pause), its GET /cluster serves its last picture (`picture`), a write to the DCS through it fails,
    /// and the others' DCS view no longer lists it.
    cut_off: Option<usize>,
    /// What the cut-off member's Patroni serves from its DCS watch cache: the cluster as it was when it lost the
    /// DCS (members, roles, leader, pause flag), taken by `Patroni::run` the first time it sees `cut_off`, dropped
    /// once it heals. Patroni's GET /cluster and GET /patroni's "pause" are read from that cache
    /// (`dcs.get_cluster()`: etcd3's `KVCache`, which a watch on the minority keeps "ready" with no new events);
    /// profiles/patroni.toml: "a member cut off with a minority of the DCS keeps serving its old picture".
    picture: Option<Picture>,
    /// The cut-off member reaches no DCS member at all (rather than a minority of them): its watch cache is not
    /// ready, and GET /cluster fails (Patroni's etcd3 `get_cluster` waits `read_timeout` for a ready `KVCache`,
    /// then raises: curl exit 22, HTTP 503). Its GET /patroni still answers, with the pause it last knew.
    dcs_lost: bool,
    /// The cut-off member's Patroni is dead rather than cut off: its PostgreSQL still runs (an orphan primary
    /// keeps taking writes), and its `node-status` answers from PostgreSQL itself (scripts/real/patroni/member.sh:
    /// `{"state": "no patroni", "role": "primary", ...}` for a primary, exit 1 for a replica).
    patroni_dead: bool,
    /// A member whose PostgreSQL still runs as a primary although the DCS names another leader (a switchover's
    /// old leader that did not demote): its `node-status` says "primary".
    stale_primary: Option<usize>,
    /// Two primaries at once: the others elected while the cut-off primary still served.
    split_brain: bool,
    /// (member, leader): that member lost the DCS too, and its GET /cluster serves its old picture, `leader`
    /// leading (profiles/patroni.toml: "a member cut off with a minority of the DCS keeps serving its old
    /// picture"; hostile review 11).
    old_picture: Option<(usize, usize)>,
}

/// A member's frozen view of the DCS (see `Patroni::picture`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Picture {
    /// Whose picture it is.
    member: usize,
    /// The members it lists, each with whether it leads.
    rows: Vec<(usize, bool)>,
    paused: bool,
}

impl Picture {
    /// GET /cluster served from this picture.
    fn cluster_json(&self) -> String {
        let rows: Vec<String> = self.rows.iter().map(|(j, l)| cluster_row(*j, *l)).collect();
        let pause = if self.paused {
            r#", "pause": true"#
        } else {
            ""
        };
        format!(
            r#"{{"members": [{}]{pause}, "scope": "baton"}}"#,
            rows.join(", ")
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SwitchoverFault {
    None,
    /// Patroni refuses it cleanly (HTTP 412): the old leader keeps leading.
    Refused,
    /// The leader lets go and the candidate never takes over: no leader, and under pause nobody is elected.
    LeavesNoLeader,
}

impl Patroni {
    fn new(leader: usize) -> Patroni {
        Patroni {
            up: [true; 3],
            installed: ["15.18"; 3],
            running: ["15.18"; 3],
            leader: Some(leader),
            paused: false,
            stale: [0; 3],
            starts: [true; 3],
            journal: Vec::new(),
            leaderless: 0,
            switchover_fault: SwitchoverFault::None,
            cached_leader: None,
            cut_off: None,
            picture: None,
            dcs_lost: false,
            patroni_dead: false,
            stale_primary: None,
            split_brain: false,
            old_picture: None,
        }
    }

    fn idx(name: &str) -> usize {
        PG.iter().position(|n| *n == name).expect("a member")
    }

    fn elect(&mut self) {
        if let Some(l) = self
            .leader
            .filter(|l| self.up[*l] && self.cut_off == Some(*l))
        {
            // The others see no leader; unpaused, they elect one while the cut-off primary still serves.
            if !self.paused {
                self.split_brain = true;
                self.leader = (0..3).find(|i| self.up[*i] && *i != l);
            }
            return;
        }
        if self.leader.is_some_and(|l| self.up[l]) {
            return;
        }
        // Paused: Patroni elects nobody (that is what the fence is for). Nor can a member cut off from the DCS
        // take the leader key.
        self.leader = if self.paused {
            None
        } else {
            (0..3).find(|i| self.up[*i] && !self.without_dcs(*i))
        };
    }

    fn node_json(&self, i: usize) -> (Outcome, Option<i32>, String, String) {
        if !self.up[i] {
            return (
                Outcome::Failed,
                Some(7),
                String::new(),
                "curl: (7) Failed to connect to 127.0.0.1 port 8008 after 0 ms: Couldn't connect to server"
                    .into(),
            );
        }
        if self.patroni_dead && self.cut_off == Some(i) {
            if self.leader != Some(i) {
                return Etcd::exit1(
                    String::new(),
                    "no patroni; its PostgreSQL runs as a replica",
                );
            }
            return Etcd::ok(
                r#"{"state": "no patroni", "role": "primary", "source": "postgresql", "patroni": "curl exit 7"}"#
                    .into(),
            );
        }
        // GET /patroni's "pause" is the member's DCS view: a cut-off member's is its picture's.
        let paused = match &self.picture {
            Some(p) if p.member == i => p.paused,
            _ => self.paused,
        };
        let pause = if paused { r#", "pause": true"# } else { "" };
        let body = if self.leader == Some(i) || self.stale_primary == Some(i) {
            format!(
                r#"{{"state": "running", "role": "primary", "timeline": 1{pause}, "patroni": {{"version": "4.1.5", "scope": "baton", "name": "{}"}}}}"#,
                PG[i]
            )
        } else {
            format!(
                r#"{{"state": "running", "role": "replica", "timeline": 1, "replication_state": "streaming"{pause}, "patroni": {{"version": "4.1.5", "scope": "baton", "name": "{}"}}}}"#,
                PG[i]
            )
        };
        Etcd::ok(body)
    }

    /// The cut-off member's picture: taken the first time `run` sees it cut off (before anything changes), kept
    /// while it stays cut off, dropped once it is not.
    fn freeze_picture(&mut self) {
        let Some(m) = self.cut_off else {
            self.picture = None;
            return;
        };
        if self.picture.as_ref().is_some_and(|p| p.member == m) {
            return;
        }
        self.picture = Some(Picture {
            member: m,
            rows: (0..3)
                .filter(|j| self.up[*j] || self.stale[*j] > 0)
                .map(|j| (j, self.leader == Some(j)))
                .collect(),
            paused: self.paused,
        });
    }

    /// Whether member `i` runs but has lost the DCS (cut off, or serving an old picture) or its Patroni: a write to
    /// the DCS through its REST API (PATCH /config, POST /switchover) fails (503, or curl refused).
    fn without_dcs(&self, i: usize) -> bool {
        self.up[i] && (self.cut_off == Some(i) || self.old_picture.is_some_and(|(m, _)| m == i))
    }

    fn run(&mut self, step: &ScheduledStep) -> (Outcome, Option<i32>, String, String) {
        let i = Patroni::idx(&step.node);
        if !step.action.is_probe() {
            self.journal
                .push((step.node.clone(), step.action.as_str().to_string()));
        }
        self.freeze_picture();
        self.elect();
        let r = match step.action {
            Action::BlockFailover | Action::UnblockFailover | Action::Demote
                if self.without_dcs(i) =>
            {
                (
                    Outcome::Failed,
                    Some(22),
                    String::new(),
                    "curl: (22) The requested URL returned error: 503".into(),
                )
            }
            // GET /cluster asks the member's own Patroni: refused (curl exit 7) when it is down.
            Action::ProbeClusterStatus if !self.up[i] => self.node_json(i),
            Action::ProbeClusterStatus if self.old_picture.is_some_and(|(m, _)| m == i) => {
                let leader = self.old_picture.map(|(_, l)| l);
                let rows: Vec<String> = (0..3).map(|j| cluster_row(j, leader == Some(j))).collect();
                Etcd::ok(format!(
                    r#"{{"members": [{}], "pause": true, "scope": "baton"}}"#,
                    rows.join(", ")
                ))
            }
            Action::ProbeClusterStatus
                if self.cut_off == Some(i) && self.dcs_lost && !self.patroni_dead =>
            {
                (
                    Outcome::Failed,
                    Some(22),
                    String::new(),
                    "curl: (22) The requested URL returned error: 503".into(),
                )
            }
            // A member cut off with a minority of the DCS serves its last picture.
            Action::ProbeClusterStatus if self.cut_off == Some(i) && !self.patroni_dead => {
                let picture = self.picture.as_ref().expect("frozen when cut off");
                Etcd::ok(picture.cluster_json())
            }
            // Its Patroni dead (`patroni_dead`): curl to its REST API is refused.
            Action::ProbeClusterStatus if self.cut_off == Some(i) => (
                Outcome::Failed,
                Some(7),
                String::new(),
                "curl: (7) Failed to connect to 127.0.0.1 port 8008 after 0 ms: Couldn't connect to server"
                    .into(),
            ),
            Action::ProbeClusterStatus => {
                let shown = self
                    .cached_leader
                    .or(self.leader)
                    .filter(|l| self.cut_off != Some(*l));
                let rows: Vec<String> = (0..3)
                    .filter(|j| (self.up[*j] || self.stale[*j] > 0) && self.cut_off != Some(*j))
                    .map(|j| cluster_row(j, shown == Some(j)))
                    .collect();
                for s in self.stale.iter_mut() {
                    *s = s.saturating_sub(1);
                }
                let pause = if self.paused {
                    r#", "pause": true"#
                } else {
                    ""
                };
                Etcd::ok(format!(
                    r#"{{"members": [{}]{pause}, "scope": "baton"}}"#,
                    rows.join(", ")
                ))
            }
            Action::ProbeStatus | Action::ProbeFailover => self.node_json(i),
            Action::ProbeVersion => Etcd::ok(format!(
                "postgres (PostgreSQL) {v} (Debian {v}-0+deb12u1)\n",
                v = self.installed[i]
            )),
            Action::ProbePackage => {
                Etcd::ok("postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)\n".into())
            }
            Action::ProbeRunningVersion if self.up[i] => {
                Etcd::ok(format!("{v} (Debian {v}-0+deb12u1)\n", v = self.running[i]))
            }
            Action::ProbeRunningVersion => Etcd::exit1(String::new(), "postgres is not running"),
            Action::BlockFailover => {
                self.paused = true;
                Etcd::ok("Success: cluster management is paused\n".into())
            }
            Action::UnblockFailover => {
                self.paused = false;
                self.elect();
                Etcd::ok("Success: cluster management is resumed\n".into())
            }
            Action::Stop => {
                self.up[i] = false;
                self.stale[i] = 2;
                self.elect();
                Etcd::ok(String::new())
            }
            Action::Install => {
                self.installed[i] = "15.20";
                Etcd::ok(String::new())
            }
            Action::Start => {
                if !self.starts[i] {
                    return (
                        Outcome::Failed,
                        Some(1),
                        String::new(),
                        "postgres exited".into(),
                    );
                }
                if !self.up[i] {
                    self.running[i] = self.installed[i];
                }
                self.up[i] = true;
                self.stale[i] = 0;
                self.elect();
                Etcd::ok(String::new())
            }
            Action::Demote => {
                // `member.sh DIR switchover LEADER CANDIDATE` (the profile's checked switchover).
                let at = step.argv.iter().position(|a| a == "switchover");
                let candidate = at
                    .and_then(|p| step.argv.get(p + 2))
                    .cloned()
                    .unwrap_or_default();
                let Some(c) = PG.iter().position(|n| *n == candidate) else {
                    return (
                        Outcome::Failed,
                        Some(1),
                        String::new(),
                        "Error: candidate required".into(),
                    );
                };
                if self.leader != Some(i) || !self.up[c] {
                    return (
                        Outcome::Failed,
                        Some(1),
                        String::new(),
                        "Error: switchover failed".into(),
                    );
                }
                match self.switchover_fault {
                    SwitchoverFault::None => {}
                    SwitchoverFault::Refused => {
                        return (
                            Outcome::Failed,
                            Some(1),
                            String::new(),
                            "switchover: HTTP 412: no good candidates".into(),
                        )
                    }
                    SwitchoverFault::LeavesNoLeader => {
                        self.leader = None;
                        self.leaderless += 1;
                        return (
                            Outcome::Failed,
                            Some(1),
                            String::new(),
                            format!("switchover: {candidate} does not lead after 15 s"),
                        );
                    }
                }
                self.leader = Some(c);
                Etcd::ok(format!("Successfully switched over to \"{candidate}\"\n"))
            }
            other => panic!("the patroni profile has no action {other}"),
        };
        if self.leader.is_none() {
            self.leaderless += 1;
        }
        r
    }

    fn drive(&mut self, run: &mut Run, max: usize) {
        drive(run, max, |step| self.run(step))
    }
}

/// A Patroni upgrade of the model (pg1 leading) driven until its fence is up: failover paused, nothing else
/// done yet.
fn patroni_until_fenced() -> (Run, Patroni) {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(0);
    for _ in 0..500 {
        if pg.paused {
            break;
        }
        let step = run.outstanding();
        let r = pg.run(&step);
        run.finish(&step, r);
    }
    assert!(pg.paused, "the fence is up: {:?}", pg.journal);
    (run, pg)
}

fn patroni_submit(cluster: ClusterFile) -> Input {
    let mut input = submit(cluster);
    if let Input::Submit {
        executors_online, ..
    } = &mut input
    {
        *executors_online = PG.iter().map(|s| s.to_string()).collect();
    }
    input
}

#[test]
fn the_patroni_profile_fences_failover_for_the_whole_upgrade_and_restores_it() {
    // The default shape (chef-backend's runbook): the fence is lifted for the switchover and set again on the
    // new leader. The shipped profile keeps it up (`a_profile_that_switches_over_under_the_fence_...`).
    let lifting = patroni_profile_text().replace("switchover_keeps_fence = true\n", "");
    assert_ne!(lifting, patroni_profile_text());
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&lifting)))
        .expect("accepted");
    let mut pg = Patroni::new(0); // pg1 leads
    pg.drive(&mut run, 5_000);
    assert_eq!(
        status(&run.state),
        Status::Completed,
        "{:#?}",
        &run.history[run.history.len().saturating_sub(6)..]
    );
    let actions: Vec<(&str, &str)> = pg
        .journal
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("pg1", "block_failover"),
            ("pg2", "stop"),
            ("pg2", "install"),
            ("pg2", "start"),
            ("pg3", "stop"),
            ("pg3", "install"),
            ("pg3", "start"),
            ("pg1", "unblock_failover"),
            ("pg1", "demote"),
            ("pg2", "block_failover"),
            ("pg1", "stop"),
            ("pg1", "install"),
            ("pg1", "start"),
            ("pg2", "unblock_failover"),
        ]
    );
    let (plan, _) = plan_of(&run.history);
    let switchover = runs(&plan)
        .into_iter()
        .find(|(_, a, _)| *a == Action::Demote)
        .expect("a switchover");
    assert!(
        switchover
            .2
            .ends_with(&["switchover".into(), "pg1".into(), "pg2".into()]),
        "the candidate is the first follower: {:?}",
        switchover.2
    );
    assert!(!pg.paused, "failover is allowed again at the end");
    assert_eq!(pg.leader, Some(1));
    assert_eq!(pg.installed, ["15.20"; 3]);
    assert_eq!(pg.leaderless, 0);
}

#[test]
fn a_patroni_cluster_already_paused_is_refused_at_preflight() {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(0);
    pg.paused = true;
    pg.drive(&mut run, 500);
    let (reason, _) = halted(&run.state);
    assert!(reason.contains("already blocked"), "{reason}");
    assert!(pg.journal.is_empty(), "nothing ran: {:?}", pg.journal);
    assert!(pg.paused, "someone else's pause is left as it was");
}

#[test]
fn a_patroni_member_that_never_comes_back_halts_with_failover_allowed_again() {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(0);
    pg.starts[1] = false; // pg2's new binaries do not start
    pg.drive(&mut run, 5_000);
    let (reason, failover_pending) = halted(&run.state);
    assert!(reason.contains("pg2"), "{reason}");
    assert_eq!(failover_pending, None, "failover is not left blocked");
    assert!(!pg.paused, "the fence was lifted: {:?}", pg.journal);
    assert_eq!(
        pg.journal.last().map(|(_, a)| a.as_str()),
        Some("unblock_failover")
    );
    assert!(!pg.journal.iter().any(|(n, a)| n != "pg2" && a == "stop"));
}

/// Hostile review, outage #2: a replica that just died keeps its DCS key (and so shows `streaming` in the
/// topology, GET /cluster) until the key's ttl runs out. Stopping the other replica then would leave the primary
/// alone with failover paused. The guard asks each other member's own REST API, which does not answer (curl exits
/// 7, not an exit code the profile reads), and waits.
#[test]
fn the_guard_does_not_take_a_patroni_replica_out_while_another_shows_only_a_stale_key() {
    let (mut run, mut pg) = patroni_until_fenced();
    // pg3 dies; its key outlives it for the whole wait below.
    pg.up[2] = false;
    pg.stale[2] = 100_000;
    let reasons = only_probes_for(&mut run, 8_000, |s| pg.run(s));
    assert!(
        !pg.journal.iter().any(|(_, a)| a == "stop"),
        "nothing was stopped: {:?}",
        pg.journal
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("probe unavailable") && r.contains("`probe_status` on pg3")),
        "{reasons:?}"
    );
    pg.up[2] = true;
    pg.stale[2] = 0;
    pg.drive(&mut run, 5_000);
    assert_eq!(status(&run.state), Status::Completed);
    assert!(!pg.paused);
    assert_eq!(pg.leaderless, 0);
}

#[test]
fn a_patroni_leader_lost_while_failover_is_fenced_takes_the_emergency_exit() {
    // Upgrade the first follower, then the leader's host dies while Patroni is paused: nobody is elected.
    let (mut run, mut pg) = upgraded_first_follower();
    pg.up[0] = false;
    pg.leader = None;
    let before = pg.journal.len();
    pg.drive(&mut run, 5_000);
    let (reason, _) = halted(&run.state);
    // The fence was lifted so that Patroni could elect a new leader, and nothing was taken out afterwards.
    assert!(
        !pg.paused,
        "failover allowed again: {:?}",
        &pg.journal[before..]
    );
    assert!(pg.leader.is_some(), "a new leader was elected");
    assert!(
        !pg.journal[before..].iter().any(|(_, a)| a == "stop"),
        "{:?}",
        &pg.journal[before..]
    );
    assert!(
        run.history
            .iter()
            .any(|e| matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)),
        "the emergency exit: {reason}"
    );
}

/// Hostile review 4 #2: the leader is cut off from the DCS under pause. It keeps serving as primary (paused
/// Patroni does not demote it); the others' DCS view shows no leader. Lifting the fence then would let them
/// elect a second primary. The emergency exit asks the expected leader's own node probe first: it says it
/// leads, so the fence stays up and the upgrade halts with `failover_pending` naming it.
#[test]
fn a_leader_cut_off_from_the_dcs_but_serving_keeps_the_fence_up_and_halts_for_an_operator() {
    let (mut run, mut pg) = upgraded_first_follower();
    pg.cut_off = Some(0);
    let before = pg.journal.len();
    pg.drive(&mut run, 5_000);
    assert!(
        !pg.split_brain,
        "no second primary: {:?}",
        &pg.journal[before..]
    );
    assert!(pg.paused, "the fence stays up: {:?}", &pg.journal[before..]);
    let (reason, pending) = halted_failover_pending(&run.state);
    assert!(
        pending.contains("pg1") && pending.contains("second leader"),
        "{pending}"
    );
    assert!(
        reason.contains("emergency exit") && reason.contains("still leads"),
        "{reason}"
    );
    // The word was asked of pg1 itself, after the exit began.
    let exit = run
        .history
        .iter()
        .position(|e| matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency))
        .expect("the emergency exit began");
    assert!(
        run.history[exit..].iter().any(|e| matches!(e,
            Event::StepScheduled { action: Action::ProbeStatus, node, .. } if node == "pg1")),
        "pg1 asked"
    );
    assert!(
        !pg.journal[before..]
            .iter()
            .any(|(_, a)| a == "unblock_failover" || a == "stop"),
        "{:?}",
        &pg.journal[before..]
    );
}

/// The same cut-off leader, once it is really gone (its API refuses), is no reason to keep the fence: the exit
/// lifts it and the others elect, as before the leader's word was asked.
#[test]
fn a_cut_off_leader_that_then_dies_does_not_hold_the_fence() {
    let (mut run, mut pg) = upgraded_first_follower();
    pg.cut_off = Some(0);
    pg.up[0] = false;
    pg.drive(&mut run, 5_000);
    assert!(!pg.paused, "failover allowed again: {:?}", pg.journal);
    assert!(
        pg.leader.is_some_and(|l| l != 0),
        "a new leader was elected"
    );
    assert!(!pg.split_brain);
}

/// A Patroni upgrade of the model (pg1 leading, fenced) driven until the first follower's `start`.
fn upgraded_first_follower() -> (Run, Patroni) {
    patroni_until_journal("pg2", "start")
}

/// A Patroni upgrade of the model (pg1 leading) driven until `node` ran `action`.
fn patroni_until_journal(node: &str, action: &str) -> (Run, Patroni) {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(0);
    for _ in 0..1_000 {
        if pg.journal.iter().any(|(n, a)| n == node && a == action) {
            break;
        }
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            let r = pg.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    assert!(pg.paused, "fenced while the followers are upgraded");
    (run, pg)
}

/// Cut off while this upgrade has a follower stopped: the fence stays up, that follower is started again first,
/// the leader is asked again, and the upgrade halts with the fence pending. pg1 reaches no DCS member at all, so
/// its GET /cluster fails and no topology shows a leader: the plan's own `start` of pg2 never passes its guard,
/// and the wind-down brings pg2 back. (Cut off with a minority of the DCS, pg1 serves its old picture, in which it
/// leads: the plan then starts pg2 itself; `stale_views::` covers that case at every point of the upgrade.)
#[test]
fn a_leader_cut_off_while_a_follower_is_out_brings_the_follower_back_and_keeps_the_fence() {
    let (mut run, mut pg) = patroni_until_journal("pg2", "stop");
    pg.cut_off = Some(0);
    pg.dcs_lost = true;
    let before = pg.journal.len();
    pg.drive(&mut run, 5_000);
    assert!(
        !pg.split_brain,
        "no second primary: {:?}",
        &pg.journal[before..]
    );
    assert!(pg.paused, "the fence stays up: {:?}", &pg.journal[before..]);
    assert!(pg.up[1], "pg2 brought back: {:?}", &pg.journal[before..]);
    let (reason, pending) = halted_failover_pending(&run.state);
    assert!(pending.contains("pg1"), "{pending}");
    // pg2 runs again; with no leader shown it cannot sync, so it is not waited on (hostile review 8 #3: that wait
    // lasted the whole sync_timeout), and the reason says so.
    assert!(
        reason.contains("pg2 was started again") && reason.contains("not waited on to sync"),
        "{reason}"
    );
    let asked = run
        .history
        .iter()
        .filter(|e| matches!(e, Event::StepScheduled { action: Action::ProbeStatus, node, .. } if node == "pg1"))
        .count();
    assert!(asked >= 2, "pg1 asked before and after pg2 came back");
}

/// What happens to a leader cut off from the DCS (pg1, under the fence) once the emergency exit has begun, in one
/// row of `CUT_OFF_CASES`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterTheExit {
    /// Nothing: it stays cut off and keeps serving.
    Nothing,
    /// The partition heals when this upgrade's `start` of pg2 runs (pg2 being brought back).
    HealsAtPg2sStart,
    /// The partition heals when pg1 is asked its own word.
    HealsAtPg1sWord,
    /// pg3's cached picture names pg3 the leader from when pg1 is asked its word (GET /cluster shows pg3).
    OthersShowPg3,
    /// pg2 loses the DCS too when pg1 is asked its word, and its GET /cluster serves its old picture: pg1 leading,
    /// though pg1 is still cut off (hostile review 11's P1: the emergency was declared over on it, the fence lifted,
    /// and the others elected a second primary).
    Pg2ShowsItsOldPicture,
}

/// One case of the emergency exit with a leader cut off: the fault, and how the upgrade must end.
struct CutOffCase {
    name: &'static str,
    /// Where the upgrade is when pg1 is cut off: `("pg2", "stop")` leaves pg2 out (this upgrade stopped it).
    until: (&'static str, &'static str),
    /// pg1 reaches no DCS member at all (`Patroni::dcs_lost`: its GET /cluster fails), rather than a minority of
    /// them (its GET /cluster serves the picture it had when cut off, pg1 leading).
    dcs_lost: bool,
    after: AfterTheExit,
    /// What `failover_pending` must say.
    says: &'static [&'static str],
    /// The halt comes within this long of the exit's start (ms of the model's clock).
    within_ms: u64,
}

/// Hostile review 8 #2 and #3. #2: a partition that heals while the exit brings pg2 back used to end with the
/// fence up and "pg1 still leads while the cluster shows no leader", though the cluster showed pg1 as its one
/// leader again. #3: with the partition not healed, bringing pg2 back waited for it to sync (impossible without
/// a leader the others can reach) for the whole `sync_timeout_ms` (20 s in the model's cluster file) before the
/// halt. The exit now starts pg2, asks everyone again at once, reads the topology again after a member says it
/// leads, and halts with the fence up saying what that topology shows now; a heal is named ("may have healed"),
/// never acted on (hostile review 11: one member's stale view lifted the fence beside a leader still cut off).
const CUT_OFF_CASES: &[CutOffCase] = &[
    CutOffCase {
        name: "heals while pg2 is brought back",
        until: ("pg2", "stop"),
        dcs_lost: true,
        after: AfterTheExit::HealsAtPg2sStart,
        says: &[
            "still leads while the cluster shows pg1 as its leader again in pg",
            "the partition may have healed",
            "pg2, which this upgrade had out, runs again but may not be synced yet",
        ],
        within_ms: 5_000,
    },
    CutOffCase {
        name: "never heals, pg2 out",
        until: ("pg2", "stop"),
        dcs_lost: true,
        after: AfterTheExit::Nothing,
        says: &[
            "pg1's own node probe",
            "still leads while the cluster shows no leader",
            "pg2, which this upgrade had out, runs again but may not be synced yet",
        ],
        within_ms: 5_000,
    },
    CutOffCase {
        name: "heals while asked, nothing out",
        until: ("pg2", "start"),
        dcs_lost: false,
        after: AfterTheExit::HealsAtPg1sWord,
        says: &[
            "still leads while the cluster shows pg1 as its leader again in pg",
            "the partition may have healed",
        ],
        within_ms: 5_000,
    },
    CutOffCase {
        name: "a member's stale view shows the cut-off leader",
        until: ("pg3", "stop"),
        dcs_lost: false,
        after: AfterTheExit::Pg2ShowsItsOldPicture,
        says: &[
            "still leads while the cluster shows pg1 as its leader again in pg2's view",
            "the partition may have healed",
        ],
        within_ms: 5_000,
    },
    CutOffCase {
        name: "the others show another leader",
        until: ("pg2", "start"),
        dcs_lost: false,
        after: AfterTheExit::OthersShowPg3,
        says: &[
            "pg1's own node probe",
            "still leads while the cluster shows pg3 as its leader",
        ],
        within_ms: 5_000,
    },
];

#[test]
fn a_cut_off_leader_keeps_the_fence_up_and_the_halt_says_what_the_cluster_shows_now() {
    // Every row is run, and every failing one named (each prints its own panic).
    let failed: Vec<&str> = CUT_OFF_CASES
        .iter()
        .filter(|case| std::panic::catch_unwind(|| cut_off_case(case)).is_err())
        .map(|case| case.name)
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
}

fn cut_off_case(case: &CutOffCase) {
    let name = case.name;
    let (mut run, mut pg) = patroni_until_journal(case.until.0, case.until.1);
    pg.cut_off = Some(0);
    pg.dcs_lost = case.dcs_lost;
    let before = pg.journal.len();
    let exit_begun = |history: &[Event]| {
        history.iter().any(|e| {
            matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)
        })
    };
    for _ in 0..5_000 {
        if run.state.is_terminal() {
            break;
        }
        let Some(step) = run.state.outstanding_steps().first().cloned() else {
            if run.state.next_wakeup_ms().is_none() {
                break;
            }
            run.tick();
            continue;
        };
        if exit_begun(&run.history) {
            let is = |node: &str, action: Action| step.node == node && step.action == action;
            match case.after {
                AfterTheExit::HealsAtPg2sStart if is("pg2", Action::Start) => pg.cut_off = None,
                AfterTheExit::HealsAtPg1sWord if is("pg1", Action::ProbeStatus) => {
                    pg.cut_off = None
                }
                AfterTheExit::OthersShowPg3 if is("pg1", Action::ProbeStatus) => {
                    pg.cached_leader = Some(2)
                }
                AfterTheExit::Pg2ShowsItsOldPicture if is("pg1", Action::ProbeStatus) => {
                    pg.old_picture = Some((1, 0))
                }
                _ => {}
            }
        }
        let r = pg.run(&step);
        run.finish(&step, r);
    }
    let journal = &pg.journal[before..];
    assert!(!pg.split_brain, "{name}: no second primary: {journal:?}");
    assert!(pg.up[1], "{name}: pg2 runs: {journal:?}");
    let Status::Halted {
        reason,
        failover_pending,
    } = status(&run.state)
    else {
        panic!("{name}: halted: {:?}", status(&run.state));
    };
    let at = |pick: &dyn Fn(&Event) -> Option<u64>| run.history.iter().find_map(pick);
    let exit_at = at(&|e| match e {
        Event::WindDownStarted { cause, at_ms, .. }
            if *cause == workflow::core::WindDownCause::Emergency =>
        {
            Some(*at_ms)
        }
        _ => None,
    })
    .expect("the emergency exit began");
    let halted_at = at(&|e| match e {
        Event::UpgradeHalted { at_ms, .. } => Some(*at_ms),
        _ => None,
    })
    .expect("halted");
    assert!(
        halted_at - exit_at <= case.within_ms,
        "{name}: halted {} ms after the exit began",
        halted_at - exit_at
    );
    // Never lifted on one member's view of the cluster (hostile review 11: a stale view lifted it beside a leader
    // still cut off).
    assert!(pg.paused, "{name}: the fence stays up: {journal:?}");
    assert!(
        !journal.iter().any(|(_, a)| a == "unblock_failover"),
        "{name}: {journal:?}"
    );
    let said = failover_pending.unwrap_or_else(|| panic!("{name}: failover pending: {reason}"));
    for s in case.says {
        assert!(said.contains(s), "{name}: says {s:?}: {said}");
    }
    workflow::core::verify(&run.history).expect("the log re-derives");
}

/// Hostile review 5 #5: the leader's host dies under pause; once a topology has shown no leader, the next one is
/// never answered (that member's executor hangs). The emergency exit abandons it when the election window ends;
/// it stays outstanding, but nothing may wait for its deadline: a wake-up armed on it would decide nothing once
/// it had passed and be armed again at the same moment (the service would spin).
#[test]
fn an_abandoned_probe_wakes_nobody_for_nothing() {
    // Probes may run for a minute: longer than the 10 s election window, so the exit comes with one still out.
    let slow = "timeouts_ms = { probe_status = 60000, probe_cluster_status = 60000, probe_failover = 60000 }";
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster_of(
        &PG,
        &patroni_profile_text(),
        slow,
    )))
    .unwrap();
    let mut pg = Patroni::new(0);
    while !pg.paused {
        let step = run.outstanding();
        let r = pg.run(&step);
        run.finish(&step, r);
    }
    pg.up[0] = false;
    pg.leader = None;
    let mut held: Option<ScheduledStep> = None;
    let mut seen_leaderless = false;
    for _ in 0..5_000 {
        if run.state.is_terminal() {
            break;
        }
        if let Some(h) = &held {
            let abandoned = run.state.step(h.step).is_some_and(|r| r.outcome.is_none())
                && run.history.iter().any(|e| {
                    matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)
                });
            assert!(
                !abandoned || run.state.next_wakeup_ms() != Some(h.deadline_ms),
                "a wake-up armed on abandoned step {}'s deadline",
                h.step
            );
        }
        let next = run
            .state
            .outstanding_steps()
            .into_iter()
            .find(|s| held.as_ref().is_none_or(|h| h.step != s.step));
        if let Some(step) = next {
            if held.is_none() && seen_leaderless && step.action == Action::ProbeClusterStatus {
                held = Some(step);
                continue;
            }
            let r = pg.run(&step);
            seen_leaderless |=
                step.action == Action::ProbeClusterStatus && r.0 == Outcome::Succeeded;
            run.finish(&step, r);
            continue;
        }
        let Some(at) = run.state.next_wakeup_ms() else {
            break;
        };
        let events = run.tick();
        let again = run.state.next_wakeup_ms();
        assert!(
            !events.is_empty() || again.is_none_or(|n| n > at),
            "woken at {at} for nothing, and again at {again:?}"
        );
    }
    assert!(
        matches!(status(&run.state), Status::Halted { .. }),
        "{:?}",
        status(&run.state)
    );
    assert!(!pg.paused, "the fence was lifted: {:?}", pg.journal);
    let held = held.expect("a topology was held");
    assert!(
        run.state
            .step(held.step)
            .is_some_and(|r| r.outcome.is_none()),
        "step {} was abandoned, never answered",
        held.step
    );
}

/// The topology is GET /cluster on one member's Patroni, asked of the leader while it leads. When the leader's
/// host dies under pause its API refuses (curl exit 7: unavailable, not a topology, and a failed cluster-wide probe
/// marks the node unreachable); the looks go to another member, whose DCS view shows no leader, and only that can
/// start the emergency exit.
#[test]
fn a_dead_leaders_refused_topology_is_asked_again_of_another_member() {
    let (mut run, mut pg) = patroni_until_fenced();
    pg.up[0] = false;
    pg.leader = None;
    let events_before = run.history.len();
    pg.drive(&mut run, 5_000);
    let topology_on: Vec<&str> = run.history[events_before..]
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled {
                action: Action::ProbeClusterStatus,
                node,
                ..
            } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        !topology_on.is_empty() && topology_on.iter().all(|n| *n != "pg1"),
        "{topology_on:?}"
    );
    assert!(
        run.history
            .iter()
            .any(|e| matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)),
        "the emergency exit: {:?}",
        status(&run.state)
    );
    assert!(!pg.paused, "failover allowed again: {:?}", pg.journal);
    assert!(
        !pg.journal.iter().any(|(_, a)| a == "stop"),
        "{:?}",
        pg.journal
    );
}

/// Hostile review (this session) #2: a profile's node and fence probes do not name the leader. Someone else's
/// switchover (Patroni allows one under pause) between the guard's first look and the action made pg3 the leader;
/// pg3's own node probe then shows `primary`, which passes. The guard asks the topology again, last, and halts
/// at once, naming the move, instead of stopping pg2.
#[test]
fn a_leader_moved_while_the_guard_looked_halts_before_the_action() {
    let (mut run, mut pg) = patroni_until_fenced();
    let mut moved = false;
    drive(&mut run, 5_000, |step| {
        if !moved && step.action == Action::ProbeStatus && step.node == "pg3" {
            pg.leader = Some(2);
            moved = true;
        }
        pg.run(step)
    });
    assert!(moved, "the guard asked pg3's node probe");
    assert!(
        !pg.journal.iter().any(|(_, a)| a == "stop"),
        "nothing was stopped: {:?}",
        pg.journal
    );
    let (reason, _) = halted(&run.state);
    assert!(
        reason.contains("leader moved") && reason.contains("pg3"),
        "{reason}"
    );
}

/// Hostile review #9: a log whose recorded profile no longer loads (carried over from another version of
/// Baton, the draft format having changed) used to leave the state with a profile without actions, so a
/// service resuming it would act on nothing, not even the action that re-enables failover. It halts at once,
/// naming the load error and that failover is still blocked.
#[test]
fn a_recorded_profile_that_no_longer_loads_halts_and_names_the_fence_left_up() {
    let (run, _pg) = patroni_until_fenced();
    // The same log, its recorded profile text changed the way a newer loader would refuse it.
    let mut state = State::default();
    for e in &run.history {
        let mut e = e.clone();
        if let Event::UpgradeSubmitted { cluster, .. } = &mut e {
            let text = cluster
                .profile_text
                .as_deref()
                .unwrap()
                .replace("format = 1", "format = 2");
            cluster.profile_text = Some(text);
        }
        state.apply(&e);
    }
    let out = workflow::core::decide(
        &state,
        &Input::Tick {
            now_ms: run.now + 1,
        },
    )
    .unwrap();
    let halted = out.iter().find_map(|e| match e {
        Event::UpgradeHalted {
            reason,
            failover_pending,
            ..
        } => Some((reason.clone(), failover_pending.clone())),
        _ => None,
    });
    let (reason, pending) = halted.unwrap_or_else(|| panic!("halted: {out:?}"));
    assert!(reason.contains("does not load"), "{reason}");
    assert!(reason.contains("format"), "{reason}");
    let pending = pending.expect("failover is named as still blocked");
    assert!(pending.contains("still blocked"), "{pending}");
    // The approved plan's own command, rendered for a member.
    assert!(pending.contains("resume"), "{pending}");
    // Nothing was scheduled.
    assert!(
        !out.iter().any(|e| matches!(e, Event::StepScheduled { .. })),
        "{out:?}"
    );
}

/// This session's review #3: the version rule is checked against what runs, not only what is installed. 3.5
/// staged on every member while all run 3.4 is a 3.4 cluster; 3.6 does not roll onto it.
#[test]
fn preflight_applies_the_version_rule_to_the_running_version_too() {
    let mut c = cluster(&etcd_profile_text());
    c.upgrade.package = Some("/opt/etcd/3.6.0".into());
    c.upgrade.target_version = Some("3.6.0".into());
    let mut run = Run::new();
    run.input(submit(c)).unwrap();
    let mut etcd = Etcd::new(1);
    for m in &mut etcd.members {
        m.installed = "3.5.1".into();
    }
    drive(&mut run, 500, |step| {
        if step.action == Action::ProbePackage {
            return Etcd::ok("etcd Version: 3.6.0\n".into());
        }
        etcd.run(step)
    });
    let Status::Halted { reason, .. } = status(&run.state) else {
        panic!("refused: {:?}", status(&run.state));
    };
    assert!(
        reason.contains("preflight refused")
            && reason.contains("m1: 3.4.23 -> 3.6.0 skips a minor version")
            && reason.contains("(the version it runs now)"),
        "{reason}"
    );
    assert!(etcd.journal.is_empty(), "{:?}", etcd.journal);
}

/// `switchover_keeps_fence = true` (Patroni switches over to a named candidate while paused): the plan keeps
/// failover fenced from the first block to the last unblock, with no lift around the switchover.
#[test]
fn a_profile_that_switches_over_under_the_fence_keeps_it_up_throughout() {
    let text = patroni_fenced_switchover_text();
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&text)))
        .expect("accepted");
    let mut pg = Patroni::new(0);
    let mut paused_at_switchover = None;
    for _ in 0..5_000 {
        if run.state.is_terminal() {
            break;
        }
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            if step.action == Action::Demote {
                paused_at_switchover = Some(pg.paused);
            }
            let r = pg.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    assert_eq!(status(&run.state), Status::Completed);
    assert_eq!(
        paused_at_switchover,
        Some(true),
        "switched over while fenced"
    );
    let actions: Vec<(&str, &str)> = pg
        .journal
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("pg1", "block_failover"),
            ("pg2", "stop"),
            ("pg2", "install"),
            ("pg2", "start"),
            ("pg3", "stop"),
            ("pg3", "install"),
            ("pg3", "start"),
            ("pg1", "demote"),
            ("pg1", "stop"),
            ("pg1", "install"),
            ("pg1", "start"),
            ("pg2", "unblock_failover"),
        ]
    );
    assert!(!pg.paused, "failover is allowed again at the end");
    assert_eq!(pg.leader, Some(1));
    assert_eq!(pg.installed, ["15.20"; 3]);
    assert_eq!(pg.leaderless, 0);

    // A switchover without a named target cannot run fenced, and a key without a fence keeps nothing.
    let untargeted = text.replace("{target}", "pg2");
    assert_ne!(untargeted, text);
    let mut c = patroni_cluster(&untargeted);
    c.profile_text = Some(untargeted.clone());
    let refused = Run::new().input(patroni_submit(c)).unwrap_err();
    let refused = refused.to_string();
    assert!(
        refused.contains("patroni.toml:")
            && refused.contains("procedure.switchover_keeps_fence: is true, but the switchover")
            && refused.contains("does not name its target"),
        "{refused}"
    );
    let unfenced = etcd_profile_text().replace(
        "failover_fence = false",
        "failover_fence = false\nswitchover_keeps_fence = true",
    );
    let e = workflow::core::profile_file::ProfileFile::parse("etcd.toml", &unfenced)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("etcd.toml:")
            && e.contains("procedure.switchover_keeps_fence: is true, but failover_fence is false"),
        "{e}"
    );
}

/// Drives a fenced Patroni upgrade to its first follower's start, kills the leader while paused, and returns
/// how long after that the emergency exit began (ms of the model's clock).
fn emergency_after(profile_text: &str, cluster_extra: &str) -> u64 {
    let c = patroni_cluster_of(&PG, profile_text, cluster_extra);
    let mut run = Run::new();
    run.input(patroni_submit(c)).unwrap();
    let mut pg = Patroni::new(0);
    for _ in 0..1_000 {
        if pg.journal.iter().any(|(n, a)| n == "pg2" && a == "start") {
            break;
        }
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            let r = pg.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    assert!(pg.paused, "fenced while the followers are upgraded");
    pg.up[0] = false;
    pg.leader = None;
    let lost = run.now;
    let emergency = |h: &[Event]| {
        h.iter().any(|e| {
            matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)
        })
    };
    for _ in 0..20_000 {
        if emergency(&run.history) {
            return run.now - lost;
        }
        assert!(!run.state.is_terminal(), "{:?}", status(&run.state));
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            let r = pg.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    panic!("no emergency exit: {:?}", status(&run.state));
}

/// The profile's `election_ms` is the emergency window when the cluster file leaves `election_window_ms` unset;
/// the cluster file's own value wins when it sets one.
#[test]
fn the_profile_election_ms_bounds_the_emergency_exit_unless_the_cluster_file_sets_it() {
    let text = patroni_profile_text();
    assert!(text.contains("election_ms = 10000"), "the shipped value");
    let short = text.replace("election_ms = 10000", "election_ms = 3000");
    let after = emergency_after(&short, "");
    assert!(
        (3_000..10_000).contains(&after),
        "the profile's 3 s window (the cluster default is 10 s): {after} ms"
    );
    let long = text.replace("election_ms = 10000", "election_ms = 12000");
    let after = emergency_after(&long, "");
    assert!(
        (12_000..15_000).contains(&after),
        "a profile's 12 s window: {after} ms"
    );
    let after = emergency_after(&short, "election_window_ms = 15000");
    assert!(
        (15_000..20_000).contains(&after),
        "the cluster file's own 15 s window: {after} ms"
    );
}

/// Runs an etcd upgrade of the model whose members start at the given (installed, running) versions; returns
/// the plan, its end and what ran.
fn etcd_from(leader: usize, versions: [(&str, &str); 3]) -> (workflow::core::Plan, Status, Etcd) {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(leader);
    for (m, (installed, running)) in etcd.members.iter_mut().zip(versions) {
        m.installed = installed.into();
        m.running = running.into();
    }
    etcd.drive(&mut run, 5_000);
    let (plan, _) = plan_of(&run.history);
    (plan, status(&run.state), etcd)
}

/// A member that preflight saw both install and run the target is "already done": the plan leaves it out and
/// says so (`skipped`); one that has the target installed but still runs the old version is restarted onto it.
/// Re-running an upgrade that halted half-way therefore picks up where it stopped.
#[test]
fn members_already_installing_and_running_the_target_are_skipped_and_named() {
    let new = ("3.5.1", "3.5.1");
    let old = ("3.4.23", "3.4.23");
    // m1 (a follower) is done; m2 leads.
    let (plan, end, etcd) = etcd_from(1, [new, old, old]);
    assert_eq!(end, Status::Completed);
    assert_eq!(plan.skipped, vec!["m1".to_string()]);
    let ran: Vec<(&str, &str)> = etcd
        .journal
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        ran,
        vec![
            ("m3", "stop"),
            ("m3", "install"),
            ("m3", "start"),
            ("m2", "demote"),
            ("m2", "stop"),
            ("m2", "install"),
            ("m2", "start"),
        ],
        "leadership goes to m1, upgraded before this run"
    );
    // m1 was last seen in preflight: it is checked again right before leadership goes there.
    assert_checked_again_before_the_switchover(&plan, "m1");
    assert_eq!(etcd.leader, Some(0));
    assert_eq!(etcd.outages, 0);

    // The leader is done: the followers roll and it keeps leading, no switchover.
    let (plan, end, etcd) = etcd_from(1, [old, new, old]);
    assert_eq!(end, Status::Completed);
    assert_eq!(plan.skipped, vec!["m2".to_string()]);
    assert!(!etcd.journal.iter().any(|(n, a)| n == "m2" || a == "demote"));
    assert_eq!(etcd.leader, Some(1));
    assert!(etcd.members.iter().all(|m| m.running == "3.5.1"));

    // Everything is done: nothing runs, the end says so.
    let (plan, end, etcd) = etcd_from(0, [new, new, new]);
    assert_eq!(end, Status::Completed, "{:?}", plan.items);
    assert_eq!(plan.skipped.len(), 3);
    assert!(etcd.journal.is_empty(), "{:?}", etcd.journal);

    // `list` tells these ends apart from an upgrade that ran (hostile review 3 #11).
    let note = |versions: [(&str, &str); 3]| {
        let mut run = Run::new();
        run.input(submit(cluster(&etcd_profile_text()))).unwrap();
        let mut etcd = Etcd::new(1);
        for (m, (installed, running)) in etcd.members.iter_mut().zip(versions) {
            m.installed = installed.into();
            m.running = running.into();
        }
        etcd.drive(&mut run, 5_000);
        run.state.skipped_note()
    };
    assert_eq!(
        note([new; 3]).as_deref(),
        Some("nothing to do: every member already ran the target (m1, m2, m3)")
    );
    assert_eq!(
        note([new, old, old]).as_deref(),
        Some("2 of 3 members upgraded; already at the target: m1")
    );
    assert_eq!(note([old; 3]), None);

    // Installed but still running the old binary (a restart never happened): not done, restarted.
    let (plan, end, etcd) = etcd_from(1, [("3.5.1", "3.4.23"), old, old]);
    assert_eq!(end, Status::Completed);
    assert!(plan.skipped.is_empty());
    assert!(etcd.journal.iter().any(|(n, a)| n == "m1" && a == "start"));
}

/// The profile's quorum rule: members that are their own consensus (the default, `majority`) need 3 to roll;
/// a system whose consensus lives elsewhere (`quorum = "external"`, Patroni's DCS) rolls with 2. An unknown
/// rule is refused naming the key and line.
#[test]
fn the_quorum_rule_decides_how_few_members_can_roll() {
    let two = |text: &str| {
        let c = patroni_cluster_of(&PG[..2], text, "");
        let mut run = Run::new();
        run.input(patroni_submit(c)).expect("accepted");
        run
    };
    let majority = two(&patroni_profile_text().replace("quorum = \"external\"\n", ""));
    let Status::Halted { reason, .. } = status(&majority.state) else {
        panic!("refused: {:?}", status(&majority.state));
    };
    assert!(
        reason.contains("the cluster has 2 node(s); a rolling upgrade needs at least 3")
            && reason.contains("majority"),
        "{reason}"
    );
    let text = patroni_profile_text();
    let text = if text.contains("quorum = \"external\"") {
        text
    } else {
        text.replace(
            "failover_fence = true",
            "failover_fence = true\nquorum = \"external\"",
        )
    };
    let external = two(&text);
    assert!(
        !external.state.is_terminal(),
        "a pair rolls: {:?}",
        status(&external.state)
    );
    assert!(
        !external.state.outstanding_steps().is_empty(),
        "preflight asks the cluster"
    );
    let bad = text.replace("quorum = \"external\"", "quorum = \"most\"");
    let e = workflow::core::profile_file::ProfileFile::parse("patroni.toml", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("patroni.toml:")
            && e.contains("procedure.quorum: unknown `most` (expected majority or external)"),
        "{e}"
    );
}

/// The shipped Patroni profile with the fence kept up across the switchover.
fn patroni_fenced_switchover_text() -> String {
    let text = patroni_profile_text();
    if text.contains("switchover_keeps_fence = true") {
        return text;
    }
    let with = text.replace(
        "failover_fence = true",
        "failover_fence = true\nswitchover_keeps_fence = true",
    );
    assert_ne!(with, text);
    with
}

/// Drives a fenced-switchover Patroni upgrade until its switchover is the outstanding step.
fn patroni_at_switchover(fault: SwitchoverFault) -> (Run, Patroni, ScheduledStep) {
    patroni_at_switchover_of(&patroni_fenced_switchover_text(), fault)
}

/// `patroni_at_switchover` with the profile text `text`.
fn patroni_at_switchover_of(text: &str, fault: SwitchoverFault) -> (Run, Patroni, ScheduledStep) {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(text))).unwrap();
    let mut pg = Patroni::new(0);
    pg.switchover_fault = fault;
    for _ in 0..5_000 {
        if let Some(step) = run.state.outstanding_steps().first().cloned() {
            if step.action == Action::Demote {
                assert!(pg.paused, "the switchover runs fenced");
                return (run, pg, step);
            }
            let r = pg.run(&step);
            run.finish(&step, r);
        } else {
            run.tick();
        }
    }
    panic!("no switchover: {:?}", status(&run.state));
}

/// Hostile review (H-REVIEW3 #1): a switchover under the fence that fails after the leader let go leaves no
/// leader, and nobody can elect while fenced. The emergency clock starts when the switchover began, not at the
/// first look after its (possibly long) result: here it took 15 s, longer than the window, so the fence is
/// lifted at the first look that shows no leader.
#[test]
fn a_fenced_switchover_that_leaves_no_leader_lifts_the_fence_at_once() {
    let (mut run, mut pg, step) = patroni_at_switchover(SwitchoverFault::LeavesNoLeader);
    let began = run.now;
    let r = pg.run(&step);
    run.now += 15_000; // the switchover's wrapper waited for the candidate to lead
    run.finish(&step, r);
    let ended = run.now;
    let before = pg.journal.len();
    let mut lifted_at = None;
    for _ in 0..5_000 {
        if !pg.paused {
            lifted_at = Some(run.now);
            break;
        }
        if run.state.is_terminal() {
            break;
        }
        if let Some(s) = run.state.outstanding_steps().first().cloned() {
            let r = pg.run(&s);
            run.finish(&s, r);
        } else {
            run.tick();
        }
    }
    let lifted_at =
        lifted_at.unwrap_or_else(|| panic!("still fenced: {:?}", &pg.journal[before..]));
    assert!(
        lifted_at - ended < 2_000,
        "lifted {} ms after the switchover's result ({} ms after it began)",
        lifted_at - ended,
        lifted_at - began
    );
    pg.drive(&mut run, 5_000);
    assert!(pg.leader.is_some(), "Patroni elected once allowed to");
    assert!(run.history.iter().any(|e| matches!(
        e,
        Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency
    )));
}

/// The node probes the first emergency exit asked (its words: the steps it scheduled first, up to its first
/// action), in step order, and whether they went out as one round (scheduled together: no other event between).
fn emergency_words(history: &[Event]) -> (Vec<String>, bool) {
    let exit = history
        .iter()
        .position(|e| matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency))
        .expect("the emergency exit began");
    let mut asked = Vec::new();
    let mut together = true;
    let mut last: Option<usize> = None;
    for (i, e) in history.iter().enumerate().skip(exit) {
        match e {
            Event::StepScheduled {
                action: Action::ProbeStatus,
                node,
                ..
            } => {
                together &= last.is_none_or(|l| l + 1 == i);
                last = Some(i);
                asked.push(node.clone());
            }
            Event::StepScheduled { .. } => break,
            _ => {}
        }
    }
    (asked, together)
}

/// The switchover's target promoted, then cut off from the DCS (`patroni_dead`: its Patroni died) before
/// VerifySwitchover confirmed it, and driven until the upgrade ends: returns the run, the model and the journal's
/// length before the cut.
fn switchover_target_cut_off(text: &str, patroni_dead: bool) -> (Run, Patroni, usize) {
    let (mut run, mut pg, step) = patroni_at_switchover_of(text, SwitchoverFault::None);
    let r = pg.run(&step);
    run.finish(&step, r);
    assert_eq!(pg.leader, Some(1), "pg2 promoted");
    // pg2's Patroni loses the DCS or dies; its PostgreSQL stays a primary taking writes (paused Patroni demotes
    // nobody), and the others' DCS view, the only topology left, shows no leader. Cut off, it reaches no DCS member
    // (`dcs_lost`): its own GET /cluster fails too. (With a minority of the DCS it would serve the picture it had
    // when cut off, pg2 leading, which confirms the switchover; `stale_views::` covers that case.)
    pg.cut_off = Some(1);
    pg.dcs_lost = true;
    pg.patroni_dead = patroni_dead;
    let before = pg.journal.len();
    pg.drive(&mut run, 5_000);
    (run, pg, before)
}

/// Hostile review 6, P2 (the part left): the emergency exit asked only the leader the plan expects. Here a fenced
/// switchover promoted pg2, whose Patroni then died (or lost the DCS) before VerifySwitchover: the expected leader
/// is still pg1, now a replica that says so, and the others' topology shows no leader. Asking pg1 alone lifted
/// the fence beside pg2's primary (a second one elected). Every member is asked, as one round: pg2 says it leads
/// (from its PostgreSQL when its Patroni is dead), so the fence stays up and the upgrade halts naming pg2.
#[test]
fn a_switchover_target_orphaned_after_its_promotion_keeps_the_fence_up_though_the_old_leader_says_replica(
) {
    for patroni_dead in [true, false] {
        a_switchover_target_orphaned(patroni_dead);
    }
}

fn a_switchover_target_orphaned(patroni_dead: bool) {
    let (run, pg, before) =
        switchover_target_cut_off(&patroni_fenced_switchover_text(), patroni_dead);
    assert!(
        !pg.split_brain,
        "no second primary: {:?}",
        &pg.journal[before..]
    );
    assert!(pg.paused, "the fence stays up: {:?}", &pg.journal[before..]);
    assert!(
        pg.journal[before..].is_empty(),
        "nothing ran after the cut: {:?}",
        &pg.journal[before..]
    );
    let (reason, pending) = halted_failover_pending(&run.state);
    assert!(
        pending.contains("pg2's own node probe") && pending.contains("second leader"),
        "{pending}"
    );
    assert!(
        !pending.contains("pg1's own") && !pending.contains("pg3's own"),
        "only the member that says it leads is named: {pending}"
    );
    assert!(
        reason.contains("emergency exit")
            && reason.contains("expected pg1")
            && reason.contains("still leads"),
        "{reason}"
    );
    let (asked, together) = emergency_words(&run.history);
    assert_eq!(
        asked,
        ["pg1", "pg2", "pg3"],
        "the expected leader first, then every other member"
    );
    assert!(together, "asked as one round");
    // A pure function of the log: every decision, the words' round included, is made again from it.
    workflow::core::verify(&run.history).expect("the log re-derives");
}

/// The same without probe rounds: the members are asked one at a time, every one of them, and the verdict is the
/// same.
#[test]
fn without_probe_rounds_the_emergency_exit_asks_every_member_one_at_a_time() {
    let text =
        patroni_fenced_switchover_text().replace("probe_rounds = true", "probe_rounds = false");
    assert_ne!(text, patroni_fenced_switchover_text());
    let (run, pg, before) = switchover_target_cut_off(&text, true);
    assert!(!pg.split_brain && pg.paused, "{:?}", &pg.journal[before..]);
    let (_, pending) = halted_failover_pending(&run.state);
    assert!(pending.contains("pg2's own node probe"), "{pending}");
    let (asked, together) = emergency_words(&run.history);
    assert_eq!(asked, ["pg1", "pg2", "pg3"]);
    assert!(!together, "one at a time");
    workflow::core::verify(&run.history).expect("the log re-derives");
}

/// Two members say they lead (the orphaned target, and the old leader that never demoted): the fence stays up and
/// the halt names both, not only the first that said so.
#[test]
fn every_member_that_says_it_leads_is_named() {
    let (mut run, mut pg, step) =
        patroni_at_switchover_of(&patroni_fenced_switchover_text(), SwitchoverFault::None);
    let r = pg.run(&step);
    run.finish(&step, r);
    pg.cut_off = Some(1);
    pg.patroni_dead = true;
    pg.stale_primary = Some(0);
    pg.drive(&mut run, 5_000);
    assert!(pg.paused && !pg.split_brain, "{:?}", pg.journal);
    let (_, pending) = halted_failover_pending(&run.state);
    assert!(
        pending.contains("pg1's own node probe")
            && pending.contains("pg2's own node probe")
            && !pending.contains("pg3's own")
            && pending.contains("Check pg1, pg2 (each says it leads"),
        "{pending}"
    );
}

/// Every member answers "not leading" or not at all: the fence is lifted as before. The leader's host and pg3's
/// are dead (their executors never answer): the words go out as one round, so the exit waits for one node
/// probe's deadline, not one per dead member, before it re-enables failover.
#[test]
fn when_no_member_says_it_leads_the_emergency_exit_lifts_the_fence_after_one_probe_deadline_at_most(
) {
    let (mut run, mut pg) = upgraded_first_follower();
    pg.up[0] = false;
    pg.leader = None;
    let dead = ["pg1", "pg3"];
    for _ in 0..5_000 {
        if run.state.is_terminal() {
            break;
        }
        let alive = run
            .state
            .outstanding_steps()
            .into_iter()
            .find(|s| !dead.contains(&s.node.as_str()));
        if let Some(step) = alive {
            let r = pg.run(&step);
            run.finish(&step, r);
        } else if run.state.next_wakeup_ms().is_some() {
            run.tick();
        } else {
            break;
        }
    }
    let (_, failover_pending) = halted(&run.state);
    assert_eq!(failover_pending, None, "failover re-enabled");
    assert!(!pg.paused, "the fence was lifted: {:?}", pg.journal);
    let (asked, together) = emergency_words(&run.history);
    assert_eq!(asked, ["pg1", "pg2", "pg3"]);
    assert!(together, "asked as one round");
    workflow::core::verify(&run.history).expect("the log re-derives");
    let scheduled = |what: &dyn Fn(&Event) -> bool| {
        run.history
            .iter()
            .find_map(|e| match e {
                Event::StepScheduled {
                    deadline_ms,
                    timeout_ms,
                    ..
                } if what(e) => Some((*deadline_ms, *timeout_ms)),
                _ => None,
            })
            .expect("scheduled")
    };
    let exit = run
        .history
        .iter()
        .position(|e| matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency))
        .expect("the emergency exit began");
    let after_exit = |e: &Event| run.history[exit..].iter().any(|x| std::ptr::eq(x, e));
    let (word_deadline, word_timeout) = scheduled(&|e| {
        after_exit(e)
            && matches!(e, Event::StepScheduled { action: Action::ProbeStatus, node, .. } if node == "pg1")
    });
    let (unblock_deadline, unblock_timeout) = scheduled(&|e| {
        matches!(
            e,
            Event::StepScheduled {
                action: Action::UnblockFailover,
                ..
            }
        )
    });
    // Both deadlines carry the same grace (the cluster file's default `result_grace_ms`, 10 s): the unblock went
    // out when the dead members' words' deadline passed (both at once), not one deadline per dead member.
    let grace = 10_000;
    let waited = (unblock_deadline - unblock_timeout) - (word_deadline - word_timeout);
    assert!(
        waited <= word_timeout + grace,
        "the unblock was scheduled {waited} ms after the words were asked (one node probe deadline is {} ms)",
        word_timeout + grace
    );
    // Hostile review 8 #1: and it goes through pg2, the member that answered, not a dead one whose action
    // deadline (60 s + grace) would pass first: the fence is down within one node probe deadline of the asks.
    let unblocks: Vec<(u64, &str)> = run.history[exit..]
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled {
                action: Action::UnblockFailover,
                step,
                node,
                ..
            } => Some((*step, node.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        unblocks.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        ["pg2"],
        "one unblock, through the member that answered"
    );
    let lifted = run.history[exit..]
        .iter()
        .find_map(|e| match e {
            Event::StepResultRecorded {
                step,
                outcome: Outcome::Succeeded,
                at_ms,
                ..
            } if *step == unblocks[0].0 => Some(*at_ms),
            _ => None,
        })
        .expect("the unblock succeeded");
    let asked_at = word_deadline - word_timeout - grace;
    // One deadline, and the unblock's own run (the model answers in 10 ms; a second is a generous bound, far
    // below the 70 s a dead member's unblock deadline would add).
    assert!(
        lifted - asked_at <= word_timeout + grace + 1_000,
        "the fence came down {} ms after the words were asked",
        lifted - asked_at
    );
}

/// Hostile review (H-REVIEW3 #2): a fenced switchover that Patroni refuses cleanly leaves the upgrade waiting
/// for an operator to verify it, with failover still fenced. It keeps watching for a lost leader, a poll
/// interval apart, not back to back.
#[test]
fn a_refused_fenced_switchover_waits_for_the_operator_watching_a_poll_apart() {
    let (mut run, mut pg, step) = patroni_at_switchover(SwitchoverFault::Refused);
    let r = pg.run(&step);
    run.finish(&step, r);
    let mut probes = Vec::new();
    for _ in 0..400 {
        if run.state.is_terminal() {
            break;
        }
        if let Some(s) = run.state.outstanding_steps().first().cloned() {
            if matches!(status(&run.state), Status::NeedsVerification { .. })
                && s.action == Action::ProbeClusterStatus
            {
                probes.push(run.now);
            }
            let r = pg.run(&s);
            run.finish(&s, r);
        } else if run.state.next_wakeup_ms().is_some() {
            run.tick();
        } else {
            break;
        }
        if probes.len() >= 6 {
            break;
        }
    }
    assert!(
        matches!(status(&run.state), Status::NeedsVerification { .. }),
        "{:?}",
        status(&run.state)
    );
    assert!(pg.paused, "the fence stays up while the operator decides");
    assert!(probes.len() >= 3, "the watch probes: {probes:?}");
    for pair in probes.windows(2) {
        assert!(
            pair[1] - pair[0] >= 500,
            "watch probes a poll interval (500 ms) apart: {probes:?}"
        );
    }
}

/// Hostile review (H-REVIEW4 #1): GET /cluster is one member's cached view of the DCS. pg1 was cut off with a
/// minority of the DCS and lost its leadership to pg2, but its cache still shows pg1 leading and pg2 a replica.
/// Acting on it, the plan's next step would stop pg2: the real primary. Each member's own node probe says whether
/// it leads (`leader_when`, from its PostgreSQL); the guard holds that against the topology and waits, and
/// nothing is taken out while the two disagree.
#[test]
fn a_stale_topology_that_names_the_wrong_leader_takes_nobody_out() {
    let (mut run, mut pg) = patroni_until_fenced();
    pg.leader = Some(1); // pg2 leads now
    pg.cached_leader = Some(0); // pg1's cache still says pg1
    let reasons = only_probes_for(&mut run, 4_000, |s| pg.run(s));
    assert!(
        !pg.journal.iter().any(|(_, a)| a == "stop"),
        "nothing was stopped: {:?}",
        pg.journal
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("own node probe says it does not lead")
                || r.contains("own node probe says it leads, but the topology shows pg1")),
        "{reasons:?}"
    );
}

/// "Already done" with a fence (H-REVIEW3 #12): pg2, the first follower and so the switchover's target, already
/// installs and runs the target. The plan leaves it out, records what preflight saw it run, checks it again right
/// before leadership goes to it, and the fence still wraps the rest. With every member done, nothing runs and the
/// fence is never touched.
#[test]
fn a_fenced_upgrade_skips_members_already_done_and_rechecks_a_skipped_target() {
    let run_from = |versions: [&'static str; 3]| {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
            .unwrap();
        let mut pg = Patroni::new(0);
        pg.installed = versions;
        pg.running = versions;
        pg.drive(&mut run, 5_000);
        let (plan, _) = plan_of(&run.history);
        (plan, status(&run.state), pg)
    };
    let (plan, end, pg) = run_from(["15.18", "15.20", "15.18"]);
    assert_eq!(end, Status::Completed);
    assert_eq!(plan.skipped, vec!["pg2".to_string()]);
    assert_eq!(plan.running.get("pg2").map(String::as_str), Some("15.20"));
    assert_eq!(plan.running.get("pg1").map(String::as_str), Some("15.18"));
    let actions: Vec<(&str, &str)> = pg
        .journal
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("pg1", "block_failover"),
            ("pg3", "stop"),
            ("pg3", "install"),
            ("pg3", "start"),
            ("pg1", "demote"),
            ("pg1", "stop"),
            ("pg1", "install"),
            ("pg1", "start"),
            ("pg2", "unblock_failover"),
        ]
    );
    assert_checked_again_before_the_switchover(&plan, "pg2");
    assert!(!pg.paused);
    assert_eq!(pg.leader, Some(1));

    let (plan, end, pg) = run_from(["15.20"; 3]);
    assert_eq!(end, Status::Completed);
    assert_eq!(plan.skipped.len(), 3);
    assert!(pg.journal.is_empty(), "nothing ran: {:?}", pg.journal);
    assert!(!pg.paused);
}

/// The plan item right before the switchover is a WaitSynced of `node` (a skipped target, checked again).
fn assert_checked_again_before_the_switchover(plan: &workflow::core::Plan, node: &str) {
    let demote = plan
        .items
        .iter()
        .position(|i| {
            matches!(
                i,
                PlanItem::Run {
                    action: Action::Demote,
                    ..
                }
            )
        })
        .expect("a switchover");
    assert!(
        matches!(&plan.items[demote - 1], PlanItem::WaitSynced { node: n, .. } if n == node),
        "{:?}",
        plan.items
    );
}

// ---------------------------------------------------------------------------------------------------------
// Probe rounds: `profiles/etcd.toml` sets `[procedure] probe_rounds = true`, so read-only probes that do not
// depend on each other are scheduled together, one round per decision, and judged in step order once all have
// answered (core/mod.rs, S1).

/// `node@m2`: a step's probe (or action) and node, short.
fn label(s: &ScheduledStep) -> String {
    let what = match s.action {
        Action::ProbeClusterStatus => "topology",
        Action::ProbeStatus => "node",
        Action::ProbeVersion => "version",
        Action::ProbeRunningVersion => "running",
        Action::ProbePackage => "package",
        Action::ProbeFailover => "fence",
        other => other.as_str(),
    };
    format!("{what}@{}", s.node)
}

/// The order in which a test answers the steps of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Answer {
    AsScheduled,
    Reversed,
}

/// Drives `run` against `model` until it ends (or `max` inputs): every step outstanding is answered, in `order`,
/// before any tick. Returns the steps each decision from now on schedules (a round, or a single step), labelled.
fn drive_rounds(
    run: &mut Run,
    order: Answer,
    max: usize,
    mut model: impl FnMut(&ScheduledStep) -> (Outcome, Option<i32>, String, String),
) -> Vec<Vec<String>> {
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut note = |events: &[Event]| {
        let labels: Vec<String> = common::scheduled(events).iter().map(label).collect();
        if !labels.is_empty() {
            batches.push(labels);
        }
    };
    for _ in 0..max {
        if run.state.is_terminal() {
            break;
        }
        let mut out = run.state.outstanding_steps();
        if out.is_empty() {
            if run.state.next_wakeup_ms().is_none() {
                break;
            }
            let events = run.tick();
            note(&events);
            continue;
        }
        if order == Answer::Reversed {
            out.reverse();
        }
        // Every answer of a round at one instant: the test varies the order in which they arrive, not when (a
        // topology answered later would start the emergency clock later, a real difference).
        let at = run.now;
        for step in out {
            let result = model(&step);
            run.now = at;
            let events = run.finish(&step, result);
            note(&events);
        }
    }
    batches
}

/// A round as the tests write it.
fn round(labels: &[&str]) -> Vec<String> {
    labels.iter().map(|l| l.to_string()).collect()
}

/// Every decision's steps obey the round rules: an action alone, a topology only first in its round (it may open
/// one, never join one), at most `ROUND_PROBES_PER_NODE` probes of one node.
fn assert_round_rules(batches: &[Vec<String>]) {
    for b in batches {
        let probes = [
            "topology@",
            "node@",
            "version@",
            "running@",
            "package@",
            "fence@",
        ];
        let is_probe = |l: &String| probes.iter().any(|p| l.starts_with(p));
        if b.len() > 1 {
            assert!(
                b.iter().all(is_probe),
                "an action beside another step: {b:?}"
            );
            assert!(
                !b[1..].iter().any(|l| l.starts_with("topology@")),
                "a topology after another probe of its round: {b:?}"
            );
            for l in b {
                let node = l.split('@').nth(1).unwrap_or_default();
                let of_node = b
                    .iter()
                    .filter(|m| m.split('@').nth(1) == Some(node))
                    .count();
                assert!(
                    of_node <= workflow::core::decide::ROUND_PROBES_PER_NODE,
                    "more probes of {node} in a round than an executor runs at once: {b:?}"
                );
            }
        }
    }
}

/// The steps a run of the etcd model schedules, decision by decision, answering each round in `order`.
fn etcd_rounds(order: Answer) -> (Run, Vec<Vec<String>>) {
    let mut run = Run::new();
    let submitted = run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut batches = vec![common::scheduled(&submitted).iter().map(label).collect()];
    let mut etcd = Etcd::new(1); // m2 leads
    batches.extend(drive_rounds(&mut run, order, 5_000, |s| etcd.run(s)));
    assert_eq!(status(&run.state), Status::Completed);
    assert_eq!(etcd.outages, 0);
    assert!(etcd.members.iter().all(|m| m.up && m.installed == "3.5.1"));
    (run, batches)
}

#[test]
fn with_probe_rounds_preflight_and_the_guard_ask_independent_probes_side_by_side() {
    let (run, batches) = etcd_rounds(Answer::AsScheduled);
    assert_round_rules(&batches);
    // Preflight: the topology (alone: no leader is known before it), then every per-member probe of every member
    // at once, four a member (2 rounds, not 13); the `stop` guard: the topology with the leader's and the other
    // member's node probes, then the topology again, last, on its own (2 rounds, not 4); `install` and `start`:
    // the topology with the leader's node probe.
    let want: Vec<Vec<String>> = vec![
        round(&["topology@m1"]),
        round(&[
            "node@m1",
            "node@m2",
            "node@m3",
            "version@m1",
            "version@m2",
            "version@m3",
            "running@m1",
            "running@m2",
            "running@m3",
            "package@m1",
            "package@m2",
            "package@m3",
        ]),
        round(&["topology@m2", "node@m2", "node@m3"]),
        round(&["topology@m2"]),
        round(&["stop@m1"]),
        round(&["topology@m2", "node@m2"]),
        round(&["install@m1"]),
        round(&["topology@m2", "node@m2"]),
        round(&["start@m1"]),
        // WaitSynced: its topology with the member's node, version and running version probes.
        round(&["topology@m1", "node@m1", "version@m1", "running@m1"]),
    ];
    assert_eq!(batches[..want.len()], want[..]);
    // The switchover's guard: 3 rounds, not 5: its first topology is asked of another member than the leader it
    // moves, so it goes out alone (a leader that hung would otherwise hold a "no leader" that look shows until the
    // leader's probes' deadlines, hostile review 13b), then every member's node probe in one round, then the
    // topology again. Then VerifySwitchover asks its topology with the new leader's probes, the switchover's target
    // (the topology before it still named the old leader), all of that one member.
    let at = batches
        .iter()
        .position(|b| *b == round(&["demote@m2"]))
        .expect("a switchover");
    assert_eq!(
        batches[at - 3..at + 2],
        [
            round(&["topology@m1"]),
            round(&["node@m2", "node@m1", "node@m3"]),
            round(&["topology@m1"]),
            round(&["demote@m2"]),
            round(&["topology@m1", "version@m1", "node@m1", "running@m1"]),
        ]
    );
    // 70 steps in 32 decisions (one at a time, they were 70 decisions; 57 with one probe of a node a round; 46
    // with every topology a round of its own).
    let steps: usize = batches.iter().map(Vec::len).sum();
    assert_eq!((batches.len(), steps), (32, 70), "{batches:?}");
    // The log alone re-derives every decision, and replays to the same state.
    workflow::core::verify(&run.history).expect("verify");
    assert_eq!(workflow::core::replay(&run.history), run.state);
}

/// The events of a history but its recorded results (whose order the test chose).
fn decisions(history: &[Event]) -> Vec<Event> {
    history
        .iter()
        .filter(|e| !matches!(e, Event::StepResultRecorded { .. }))
        .cloned()
        .collect()
}

#[test]
fn a_round_answered_in_reverse_order_is_judged_exactly_as_in_order() {
    let (forward, forward_batches) = etcd_rounds(Answer::AsScheduled);
    let (backward, backward_batches) = etcd_rounds(Answer::Reversed);
    assert_eq!(forward_batches, backward_batches);
    assert_eq!(decisions(&forward.history), decisions(&backward.history));
    workflow::core::verify(&backward.history).expect("verify");
    assert_eq!(workflow::core::replay(&backward.history), backward.state);
}

/// Runs the etcd model until the first `stop` guard's round is out and its topology answered (it comes first in
/// step order, so it is judged first and passes); returns the run, the model and that round's two node probes
/// still out (the leader's first).
fn at_the_first_node_round() -> (Run, Etcd, Vec<ScheduledStep>) {
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1); // m2 leads
    until_planned(&mut run, |s| etcd.run(s));
    for _ in 0..20 {
        let out = run.state.outstanding_steps();
        if out.len() == 2 {
            let labels: Vec<String> = out.iter().map(label).collect();
            assert_eq!(labels, round(&["node@m2", "node@m3"]));
            return (run, etcd, out);
        }
        let step = run.outstanding();
        let r = etcd.run(&step);
        run.finish(&step, r);
    }
    panic!("no round of node probes");
}

/// The checks and observations the history holds for `step`.
fn judged(history: &[Event], step: u64) -> (usize, Option<bool>) {
    let recorded = history
        .iter()
        .filter(|e| matches!(e, Event::ObservationRecorded { step: s, .. } if *s == step))
        .count();
    let check = history.iter().find_map(|e| match e {
        Event::CheckEvaluated {
            step: s, passed, ..
        } if *s == step => Some(*passed),
        _ => None,
    });
    (recorded, check)
}

#[test]
fn a_round_whose_first_probe_shows_no_leader_decides_on_it_though_the_later_probes_look_fine() {
    let (mut run, mut etcd, round_steps) = at_the_first_node_round();
    let (leader, other) = (&round_steps[0], &round_steps[1]);
    // The other member answers first and looks fine; the leader's own node probe shows no leader (what
    // `endpoint health` prints when the cluster has none).
    let fine = etcd.run(other);
    run.finish(other, fine);
    let from = run.history.len();
    run.finish(
        leader,
        (
            Outcome::Failed,
            Some(1),
            r#"[{"endpoint":"127.0.0.1:2389","health":false,"took":"3.0s","error":"context deadline exceeded"}]"#
                .into(),
            "Error: unhealthy cluster".into(),
        ),
    );
    let decided = &run.history[from..];
    // The leader's probe decides (a failed check, a poll); the other one is recorded but never judged.
    assert_eq!(judged(decided, leader.step), (1, Some(false)));
    assert_eq!(judged(decided, other.step), (1, None), "{decided:#?}");
    assert!(decided.iter().any(|e| matches!(
        e,
        Event::WaitStarted {
            purpose: workflow::core::WaitPurpose::Poll,
            ..
        }
    )));
    // So the guard starts again from its topology, and `stop` runs only after a whole fresh guard.
    let batches = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| etcd.run(s));
    assert_eq!(
        batches[..3],
        [
            round(&["topology@m2", "node@m2", "node@m3"]),
            round(&["topology@m2"]),
            round(&["stop@m1"]),
        ]
    );
    assert_eq!(status(&run.state), Status::Completed);
    workflow::core::verify(&run.history).expect("verify");
}

#[test]
fn a_round_waits_for_every_probe_and_a_timed_out_one_is_judged_in_its_turn() {
    let (mut run, mut etcd, round_steps) = at_the_first_node_round();
    let (leader, other) = (&round_steps[0], &round_steps[1]);
    // The first probe answers: it is judged at once (it passes), and nothing new is scheduled while the other is
    // out.
    let r = etcd.run(leader);
    let events = run.finish(leader, r);
    assert_eq!(judged(&events, leader.step), (1, Some(true)), "{events:#?}");
    assert!(
        common::scheduled(&events).is_empty(),
        "scheduled while a probe of the round was out: {events:#?}"
    );
    assert_eq!(
        run.input(Input::Tick {
            now_ms: run.now + 1
        })
        .unwrap(),
        vec![],
        "a tick before the deadline decides nothing"
    );
    assert_eq!(run.state.outstanding_steps(), vec![other.clone()]);
    // The other never answers: its own deadline passes, and the round is judged in step order.
    assert_eq!(run.state.next_wakeup_ms(), Some(other.deadline_ms));
    let from = run.history.len();
    run.tick();
    let decided = &run.history[from..];
    assert!(matches!(
        decided.get(1),
        Some(Event::StepDeadlinePassed { step, .. }) if *step == other.step
    ));
    assert_eq!(judged(decided, leader.step), (0, None), "judged before");
    assert_eq!(judged(decided, other.step), (1, Some(false)));
    let stop = decided
        .iter()
        .filter_map(Event::scheduled_step)
        .find(|s| !s.action.is_probe());
    assert_eq!(stop, None, "an action after a timed-out guard probe");
    let batches = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| etcd.run(s));
    assert_eq!(batches[2], round(&["stop@m1"]), "{batches:?}");
    assert_eq!(status(&run.state), Status::Completed);
    workflow::core::verify(&run.history).expect("verify");
}

#[test]
fn a_round_cut_by_a_restart_is_published_again_whole_and_goes_on_from_the_log() {
    let (mut run, mut etcd, round_steps) = at_the_first_node_round();
    // What the service rebuilds from the log when it starts again: every probe of the round is outstanding (it
    // publishes them all again) and the earliest of their deadlines is armed.
    let recovered = workflow::core::replay(&run.history);
    assert_eq!(recovered, run.state);
    assert_eq!(recovered.outstanding_steps(), round_steps);
    assert_eq!(
        recovered.next_wakeup_ms(),
        round_steps.iter().map(|s| s.deadline_ms).min()
    );
    // The results then come back in any order: the same decisions as before the restart, in order.
    let mut again = Run {
        state: recovered,
        history: run.history.clone(),
        now: run.now,
    };
    let mut model = Etcd::new(1);
    model.members = etcd.members.clone();
    let reversed = drive_rounds(&mut again, Answer::Reversed, 5_000, |s| model.run(s));
    let in_order = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| etcd.run(s));
    assert_eq!(reversed, in_order);
    assert_eq!(decisions(&again.history), decisions(&run.history));
    assert_eq!(status(&again.state), Status::Completed);
}

/// What `baton status` shows during a round (hostile review 6 #8): every probe of the round the upgrade still
/// waits on, not only the first; nothing of a round once it is judged.
#[cfg(feature = "service")]
#[test]
fn status_shows_every_probe_of_a_round_still_out() {
    use workflow::service::view::status_view;
    let (mut run, mut etcd, round_steps) = at_the_first_node_round();
    let (leader, other) = (&round_steps[0], &round_steps[1]);
    let out = |run: &Run| {
        let view = status_view("u", &run.state, run.history.len() as u64);
        view.round.map(|r| {
            let out: Vec<(u64, String, String, Option<u64>)> = r
                .out
                .iter()
                .map(|s| (s.step, s.node.clone(), s.action.clone(), s.scheduled_ms))
                .collect();
            (r.probes, out)
        })
    };
    let sent = |s: &ScheduledStep| {
        (
            s.step,
            s.node.clone(),
            s.action.as_str().to_string(),
            Some(run.state.scheduled_ms(s)),
        )
    };
    // Two probes of the round not judged yet: its topology answered and was judged already (a round is judged in
    // step order as each probe comes).
    let both = (2, vec![sent(leader), sent(other)]);
    let only_other = (1, vec![sent(other)]);
    assert_eq!(out(&run), Some(both));
    // The leader's probe answers and is judged: the view shows the round still waiting on the other member.
    let r = etcd.run(leader);
    run.finish(leader, r);
    assert_eq!(out(&run), Some(only_other));
    // Once the round is judged (and the next decision is a topology alone), no round is shown.
    let r = etcd.run(other);
    run.finish(other, r);
    assert_eq!(out(&run), None);
    let view = status_view("u", &run.state, run.history.len() as u64);
    assert_eq!(
        view.current.map(|s| s.action),
        Some("probe_cluster_status".to_string())
    );
    // A view without a round keeps the form it always had: no `round` key at all.
    let json = serde_json::to_value(status_view("u", &run.state, 1)).unwrap();
    assert!(json.get("round").is_none(), "{json}");
}

/// The history with the round of `a` and `b` recorded in the other order (their nodes, groups and argv
/// swapped): a round this decider never asks, as a log of another version of Baton could hold (round membership
/// is read from the log).
fn with_round_swapped(history: &[Event], a: u64, b: u64) -> Vec<Event> {
    let mut history = history.to_vec();
    let at = |h: &[Event], step: u64| {
        h.iter()
            .position(|e| matches!(e, Event::StepScheduled { step: s, .. } if *s == step))
            .expect("scheduled")
    };
    let (ia, ib) = (at(&history, a), at(&history, b));
    let (ea, eb) = (history[ia].clone(), history[ib].clone());
    for (i, from) in [(ia, eb), (ib, ea)] {
        if let (
            Event::StepScheduled {
                node, group, argv, ..
            },
            Event::StepScheduled {
                node: n,
                group: g,
                argv: v,
                ..
            },
        ) = (&mut history[i], from)
        {
            (*node, *group, *argv) = (n, g, v);
        }
    }
    history
}

/// Hostile review 6 #4: a round whose first probe is not the one a one-at-a-time run would ask now is not judged;
/// it is a check that did not pass, named, and it counts toward `sync_timeout` like any other: a poll a poll
/// interval long within it, a wind-down past it (before: a poll of no length, whatever the time).
#[test]
fn a_round_that_one_at_a_time_would_not_ask_is_a_failed_check_that_counts_toward_sync_timeout() {
    let (run, etcd, round_steps) = at_the_first_node_round();
    let history = with_round_swapped(&run.history, round_steps[0].step, round_steps[1].step);
    let (_, _, item_started) = workflow::core::replay(&history)
        .current_plan_item()
        .expect("an item in progress");
    for late in [false, true] {
        let mut model = Etcd::new(1);
        model.members = etcd.members.clone();
        let mut tampered = Run {
            state: workflow::core::replay(&history),
            history: history.clone(),
            now: if late { item_started + 20_000 } else { run.now },
        };
        let swapped = tampered.state.outstanding_steps();
        assert_eq!(
            swapped.iter().map(label).collect::<Vec<_>>(),
            round(&["node@m3", "node@m2"])
        );
        let from = tampered.history.len();
        for s in &swapped {
            let r = model.run(s);
            tampered.finish(s, r);
        }
        let decided = tampered.history[from..].to_vec();
        let problems = decided
            .iter()
            .find_map(|e| match e {
                Event::CheckEvaluated {
                    passed: false,
                    problems,
                    step,
                    ..
                } if *step == swapped[0].step => Some(problems.join("; ")),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no failed check naming the mismatch: {decided:#?}"));
        assert!(
            problems.contains("round probe mismatch")
                && problems.contains("probe_status on m3")
                && problems.contains("would ask probe_status on m2"),
            "{problems}"
        );
        // Neither probe is judged as a guard observation: both only recorded.
        assert_eq!(judged(&decided, swapped[1].step), (1, None), "{decided:#?}");
        let wind_down = decided.iter().find_map(|e| match e {
            Event::WindDownStarted { reason, .. } => Some(reason.clone()),
            _ => None,
        });
        if late {
            let reason = wind_down.expect("past sync_timeout the upgrade winds down");
            assert!(
                reason.contains("did not pass within 20000 ms")
                    && reason.contains("round probe mismatch"),
                "{reason}"
            );
            drive_rounds(&mut tampered, Answer::AsScheduled, 5_000, |s| model.run(s));
            assert!(
                matches!(status(&tampered.state), Status::Halted { .. }),
                "{:?}",
                status(&tampered.state)
            );
        } else {
            assert_eq!(wind_down, None);
            let poll = decided.iter().find_map(|e| match e {
                Event::WaitStarted {
                    purpose: workflow::core::WaitPurpose::Poll,
                    until_ms,
                } => Some(*until_ms),
                _ => None,
            });
            // Decided on the first answer (its probe is judged, here found not to match, as soon as it comes:
            // `Run::finish` advances the clock 10 ms per answer), a poll interval from then.
            assert_eq!(
                poll,
                Some(tampered.now - 10 + 500),
                "a poll interval: {decided:#?}"
            );
            // Then the checks start again with this decider's own rounds, and the upgrade completes.
            drive_rounds(&mut tampered, Answer::AsScheduled, 5_000, |s| model.run(s));
            assert_eq!(status(&tampered.state), Status::Completed);
        }
    }
}

/// Drives a Patroni upgrade (pg1 leading, fenced) until a round of more than one probe is out; returns it.
fn patroni_at_a_round(text: &str) -> (Run, Patroni, Vec<ScheduledStep>) {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(text))).unwrap();
    let mut pg = Patroni::new(0);
    for _ in 0..1_000 {
        let out = run.state.outstanding_steps();
        if out.len() > 1 && pg.paused {
            return (run, pg, out);
        }
        match out.first() {
            Some(step) => {
                let r = pg.run(step);
                run.finish(step, r);
            }
            None => {
                run.tick();
            }
        }
    }
    panic!("no round after the fence: {:?}", pg.journal);
}

/// Hostile review 6 #6: an operator's abort mid-round does not wait for the round's probes (read-only: nothing
/// they show changes what the wind-down must do first); the wind-down goes on at once, and the results that come
/// later are recorded, never judged. S1 holds for actions: the fence's unblock goes out only beside probes that
/// are abandoned (no round is out).
#[test]
fn an_abort_mid_round_does_not_wait_for_its_probes_whose_late_results_are_only_recorded() {
    let (mut run, mut pg, abandoned) = patroni_at_a_round(&patroni_profile_text());
    assert_eq!(
        abandoned.iter().map(label).collect::<Vec<_>>(),
        round(&["topology@pg1", "node@pg1", "node@pg3", "fence@pg1"])
    );
    let now = run.now + 1;
    let events = run
        .input(Input::Abort {
            by: "op".into(),
            reason: "stop now".into(),
            now_ms: now,
        })
        .unwrap();
    let fresh = common::scheduled(&events);
    assert!(
        !fresh.is_empty(),
        "the abort waited for the round: {events:#?}"
    );
    assert!(run.state.round_steps().is_empty());
    assert_eq!(
        run.state.next_wakeup_ms(),
        fresh.iter().map(|s| s.deadline_ms).min(),
        "only the wind-down's own steps are waited for"
    );
    let is_abandoned = |s: &ScheduledStep| abandoned.iter().any(|a| a.step == s.step);
    let mut late_delivered = false;
    for _ in 0..1_000 {
        if run.state.is_terminal() {
            break;
        }
        let out = run.state.outstanding_steps();
        let live: Vec<&ScheduledStep> = out.iter().filter(|s| !is_abandoned(s)).collect();
        if let Some(action) = live.iter().find(|s| !s.action.is_probe()) {
            // S1: an action is out only alone, or beside abandoned probes; no round is being waited on.
            assert_eq!(live.len(), 1, "an action beside a live step: {live:?}");
            assert!(run.state.round_steps().is_empty());
            if !late_delivered {
                // The abandoned probes answer now, late: recorded, nothing judged or decided on them.
                for s in &abandoned {
                    let r = pg.run(s);
                    let events = run.finish(s, r);
                    assert!(
                        matches!(events[..], [Event::StepResultRecorded { step, .. }] if step == s.step),
                        "a late result of an abandoned probe decided: {events:#?}"
                    );
                }
                late_delivered = true;
            }
            let r = pg.run(action);
            run.finish(action, r);
            continue;
        }
        match live.first() {
            Some(step) => {
                let r = pg.run(step);
                run.finish(step, r);
            }
            None => {
                run.tick();
            }
        }
    }
    assert!(late_delivered, "an action went out during the wind-down");
    assert!(
        matches!(
            status(&run.state),
            Status::Aborted {
                failover_pending: None,
                ..
            }
        ),
        "{:?}",
        status(&run.state)
    );
    assert!(!pg.paused, "the fence was lifted: {:?}", pg.journal);
    for s in &abandoned {
        assert_eq!(judged(&run.history, s.step), (0, None), "step {}", s.step);
    }
    workflow::core::verify(&run.history).expect("verify");
    assert_eq!(workflow::core::replay(&run.history), run.state);
}

/// A pause mid-round (hostile review 6 #6): a pause stops new work, not the handling of results. The round's
/// probes are still awaited (each deadline armed) and their observations recorded, but not judged: the pause
/// ended the round's judgment. Nothing new goes out while paused (etcd has no fence, so no watch); on resume the
/// guard starts again from its topology, and the action runs only after a whole fresh guard.
#[test]
fn a_pause_mid_round_records_the_round_unjudged_and_the_guard_starts_again_on_resume() {
    let (mut run, mut etcd, round_steps) = at_the_first_node_round();
    let now = run.now + 1;
    let events = run
        .input(Input::Pause {
            by: "op".into(),
            reason: "look".into(),
            now_ms: now,
        })
        .unwrap();
    assert!(
        matches!(events[..], [Event::UpgradePaused { .. }]),
        "{events:#?}"
    );
    assert_eq!(run.state.outstanding_steps(), round_steps);
    assert_eq!(
        run.state.next_wakeup_ms(),
        round_steps.iter().map(|s| s.deadline_ms).min()
    );
    let from = run.history.len();
    for s in &round_steps {
        let r = etcd.run(s);
        run.finish(s, r);
    }
    let decided = run.history[from..].to_vec();
    for s in &round_steps {
        assert_eq!(judged(&decided, s.step), (1, None), "{decided:#?}");
    }
    assert!(common::scheduled(&decided).is_empty(), "{decided:#?}");
    assert!(run.state.outstanding_steps().is_empty());
    assert!(matches!(status(&run.state), Status::Paused { .. }));
    let now = run.now + 1;
    let resumed = run
        .input(Input::Resume {
            by: "op".into(),
            now_ms: now,
        })
        .unwrap();
    assert_eq!(
        common::scheduled(&resumed)
            .iter()
            .map(label)
            .collect::<Vec<_>>(),
        round(&["topology@m2", "node@m2", "node@m3"])
    );
    let batches = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| etcd.run(s));
    assert_eq!(
        batches[..2],
        [round(&["topology@m2"]), round(&["stop@m1"]),]
    );
    assert_eq!(status(&run.state), Status::Completed);
    workflow::core::verify(&run.history).expect("verify");
}

/// Hostile review 6 #9: the Patroni profile with its fence up for the whole upgrade, every round answered in
/// reverse order: exactly the decisions of the run answered in order, the fence lifted at the end, the leader
/// last.
#[test]
fn a_fenced_patroni_upgrade_answered_out_of_order_decides_exactly_as_in_order() {
    let run_in = |order: Answer| {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
            .unwrap();
        let mut pg = Patroni::new(0);
        let batches = drive_rounds(&mut run, order, 5_000, |s| pg.run(s));
        assert_eq!(status(&run.state), Status::Completed);
        assert!(!pg.paused, "the fence was lifted: {:?}", pg.journal);
        assert_eq!(pg.installed, ["15.20"; 3]);
        assert_eq!(pg.leaderless, 0);
        assert!(!pg.split_brain);
        workflow::core::verify(&run.history).expect("verify");
        assert_eq!(workflow::core::replay(&run.history), run.state);
        (run, batches, pg.journal)
    };
    let (forward, forward_batches, forward_journal) = run_in(Answer::AsScheduled);
    let (backward, backward_batches, backward_journal) = run_in(Answer::Reversed);
    assert_round_rules(&forward_batches);
    assert!(
        forward_batches
            .iter()
            .any(|b| b.len() > 1 && b.iter().any(|l| l.starts_with("fence@"))),
        "a round with the fence probe in it: {forward_batches:?}"
    );
    assert_eq!(forward_batches, backward_batches);
    assert_eq!(decisions(&forward.history), decisions(&backward.history));
    assert_eq!(forward_journal, backward_journal);
    assert_eq!(
        forward_journal
            .last()
            .map(|(n, a)| (n.as_str(), a.as_str())),
        Some(("pg2", "unblock_failover"))
    );
}

/// The emergency exit's words are one round like any other: answered in reverse order, every decision is the one
/// made when they are answered in order, replay rebuilds the state, and the verdict is the same: pg2 (the promoted,
/// orphaned switchover target) named; and with a follower out, the follower (whose word fails: it is stopped)
/// brought back before the leader that says it leads halts the upgrade.
#[test]
fn the_emergency_exits_words_answered_out_of_order_decide_exactly_as_in_order() {
    type Setup = fn() -> (Run, Patroni);
    let orphaned_target: Setup = || {
        let (mut run, mut pg, step) =
            patroni_at_switchover_of(&patroni_fenced_switchover_text(), SwitchoverFault::None);
        let r = pg.run(&step);
        run.finish(&step, r);
        pg.cut_off = Some(1);
        pg.patroni_dead = true;
        (run, pg)
    };
    let leader_cut_off_with_a_follower_out: Setup = || {
        let (run, mut pg) = patroni_until_journal("pg2", "stop");
        pg.cut_off = Some(0);
        (run, pg)
    };
    for (setup, leader) in [
        (orphaned_target, "pg2"),
        (leader_cut_off_with_a_follower_out, "pg1"),
    ] {
        let run_in = |order: Answer| {
            let (mut run, mut pg) = setup();
            let batches = drive_rounds(&mut run, order, 5_000, |s| pg.run(s));
            assert!(pg.paused && !pg.split_brain, "{:?}", pg.journal);
            workflow::core::verify(&run.history).expect("verify");
            assert_eq!(workflow::core::replay(&run.history), run.state);
            (run, batches, pg.journal)
        };
        let (forward, forward_batches, forward_journal) = run_in(Answer::AsScheduled);
        let (backward, backward_batches, backward_journal) = run_in(Answer::Reversed);
        let words = round(&["node@pg1", "node@pg2", "node@pg3"]);
        assert!(
            forward_batches.contains(&words),
            "the words as one round: {forward_batches:?}"
        );
        assert_eq!(forward_batches, backward_batches);
        assert_eq!(decisions(&forward.history), decisions(&backward.history));
        assert_eq!(forward_journal, backward_journal);
        let (_, pending) = halted_failover_pending(&forward.state);
        assert!(
            pending.contains(&format!("{leader}'s own node probe")),
            "{pending}"
        );
    }
}

/// Hostile review 6 #9: an executor that refuses a probe of a round (`rejected`: it ran nothing) is an answer like
/// any other: the round is judged in step order once every probe has one, the refused probe's check fails (no
/// observation: settle and poll, not unreachable), and a refusal of the first probe leaves the later ones recorded
/// unjudged. The guard then starts again and the upgrade completes.
#[test]
fn a_rejected_probe_in_a_round_is_judged_in_its_turn_and_the_guard_starts_again() {
    let rejected = (Outcome::Rejected, None, String::new(), String::new());
    for refused in [0, 1] {
        let (mut run, mut etcd, round_steps) = at_the_first_node_round();
        let from = run.history.len();
        // Answered in reverse: the refusal of `refused`, the other one answered by the model.
        for (i, s) in round_steps.iter().enumerate().rev() {
            let r = if i == refused {
                rejected.clone()
            } else {
                etcd.run(s)
            };
            run.finish(s, r);
        }
        let decided = run.history[from..].to_vec();
        let (first, second) = (&round_steps[0], &round_steps[1]);
        if refused == 0 {
            assert_eq!(
                judged(&decided, first.step),
                (1, Some(false)),
                "{decided:#?}"
            );
            assert_eq!(judged(&decided, second.step), (1, None), "{decided:#?}");
        } else {
            assert_eq!(
                judged(&decided, first.step),
                (1, Some(true)),
                "{decided:#?}"
            );
            assert_eq!(
                judged(&decided, second.step),
                (1, Some(false)),
                "{decided:#?}"
            );
        }
        let problems = decided
            .iter()
            .find_map(|e| match e {
                Event::CheckEvaluated {
                    passed: false,
                    problems,
                    ..
                } => Some(problems.join("; ")),
                _ => None,
            })
            .expect("a failed check");
        assert!(
            problems.contains("probe unavailable") && problems.contains("outcome rejected"),
            "{problems}"
        );
        assert!(
            decided.iter().any(|e| matches!(
                e,
                Event::WaitStarted {
                    purpose: workflow::core::WaitPurpose::Poll,
                    ..
                }
            )),
            "{decided:#?}"
        );
        assert!(common::scheduled(&decided).is_empty(), "{decided:#?}");
        let batches = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| etcd.run(s));
        assert_eq!(
            batches[..3],
            [
                round(&["topology@m2", "node@m2", "node@m3"]),
                round(&["topology@m2"]),
                round(&["stop@m1"]),
            ]
        );
        assert_eq!(status(&run.state), Status::Completed);
        workflow::core::verify(&run.history).expect("verify");
    }
}

/// After an abort abandons a round, `status` shows the step the wind-down waits on, not an abandoned probe.
#[cfg(feature = "service")]
#[test]
fn after_an_abort_mid_round_status_shows_the_wind_downs_step_not_an_abandoned_probe() {
    use workflow::service::view::status_view;
    let (mut run, _pg, abandoned) = patroni_at_a_round(&patroni_profile_text());
    let now = run.now + 1;
    let events = run
        .input(Input::Abort {
            by: "op".into(),
            reason: "stop now".into(),
            now_ms: now,
        })
        .unwrap();
    let fresh = common::scheduled(&events);
    let view = status_view("u", &run.state, run.history.len() as u64);
    assert!(view.round.is_none());
    assert_eq!(
        view.current.map(|s| s.step),
        fresh.first().map(|s| s.step),
        "abandoned: {:?}",
        abandoned.iter().map(|s| s.step).collect::<Vec<_>>()
    );
}

/// A stop whose outcome is unknown (its executor died mid-step) is judged by the node's own probe afterwards. A
/// Patroni member whose manager died mid-stop can leave its PostgreSQL running as a primary: its node probe then
/// says "no patroni" (down) and "primary" (leads). That is not a stopped member: the stop is not taken as done,
/// and nothing is installed on it.
#[test]
fn a_stop_in_doubt_on_a_member_that_still_leads_is_not_taken_as_done() {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(0);
    let mut doubted = None;
    for _ in 0..1_000 {
        let Some(step) = run.state.outstanding_steps().first().cloned() else {
            run.tick();
            continue;
        };
        if step.action == Action::Stop {
            // The stop ran (the model's member is down) but its executor died before it answered.
            pg.run(&step);
            run.finish(
                &step,
                (Outcome::Unknown, None, String::new(), String::new()),
            );
            doubted = Some(step.node.clone());
            break;
        }
        let r = pg.run(&step);
        run.finish(&step, r);
    }
    let node = doubted.expect("a stop was scheduled");
    let orphan = r#"{"state": "no patroni", "role": "primary", "source": "postgresql", "patroni": "curl exit 7"}"#;
    // The orphan stays until a stop runs again (member.sh's stop stops a postmaster left without its Patroni).
    let mut after = Vec::new();
    drive(&mut run, 200, |step| {
        if !step.action.is_probe() {
            after.push((step.node.clone(), step.action));
        }
        let orphaned = !after.iter().any(|(n, a)| *n == node && *a == Action::Stop);
        if orphaned && step.action == Action::ProbeStatus && step.node == node {
            return Etcd::ok(orphan.to_string());
        }
        pg.run(step)
    });
    assert_eq!(
        after.first(),
        Some(&(node.clone(), Action::Stop)),
        "the stop is run again before anything else on {node}, which still led: {after:?}\n{:#?}",
        &run.history[run.history.len().saturating_sub(12)..]
    );
    assert!(
        !run.history
            .iter()
            .any(|e| matches!(e, Event::OutcomeInferred { .. })),
        "the stop in doubt was inferred done: {:#?}",
        run.history
            .iter()
            .filter(|e| matches!(e, Event::OutcomeInferred { .. }))
            .collect::<Vec<_>>()
    );
    assert_eq!(status(&run.state), Status::Completed, "{after:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Stale views: at any point of a fenced Patroni upgrade, one member (the leader or a follower) is cut off from the
// DCS and serves the picture it had then (or, `dcs_lost`, none at all); the partition heals after a while or never;
// an operator may pause the upgrade at that moment and resume it later (the watch runs meanwhile); unpaused, the
// others elect a new leader beside a cut-off one (the model's `elect`), paused nobody. Every history is judged on
// the model's ground truth, never on what the core believed, against the promises of ARCHITECTURE.md ("Invariants",
// "The guard") and core/mod.rs (S1-S3):
// - one member out at a time: a `stop` never runs while another member is down (S1, the guard's "every other node
//   in service"), and no two members are down at once;
// - the member that serves as primary is never stopped (S2: the leader goes last, after a switchover the cluster
//   confirmed);
// - the fence is never lifted beside a primary cut off from the others (S3's emergency exit; hostile review 11: a
//   second primary would be elected);
// - the fence never stays up beside no primary at all for longer than `LEADERLESS_FENCE_MS` (S3: nobody can be
//   elected while it is up);
// - every end honours the failover obligation: failover is on again, or `failover_pending` says why not (S3); a
//   completed upgrade left every member up on the target, a leader, failover on;
// - the log re-derives (`verify`).
// An action decided before an environment's change (the cut, the heal, the leader's death) is not held to the
// ground truth after it: the guard's last look precedes its action by one probe, and no guard closes that window.
mod stale_views {
    use super::*;
    use proptest::prelude::*;

    /// One history: where the cut happens and what follows.
    #[derive(Debug, Clone, Copy)]
    struct Case {
        /// Moves (a result delivered or a timer fired) of the upgrade before the cut.
        at: usize,
        /// The member cut off from the DCS.
        member: usize,
        /// It reaches no DCS member at all: its GET /cluster fails rather than serving its old picture.
        dcs_lost: bool,
        /// Moves after the cut when it heals (`None`: never).
        heal: Option<usize>,
        /// An operator pauses the upgrade at the cut and resumes it this many moves later (or once nothing is
        /// left to watch).
        hold: Option<usize>,
        /// The member that leads dies this many moves after the cut (its host gone: every probe refused).
        kill_leader: Option<usize>,
    }

    /// The longest the fence may stay up beside no primary at all, ms of the model's clock, as S3 bounds it: a
    /// cluster that shows no leader takes the emergency exit after the election window (10 s) and the exit's asks
    /// (a node probe deadline: 10 s + the 10 s result grace); one where no leader can be confirmed at all (every
    /// member asked is dead, stopped or serves no topology) is wound down after the guard's `sync_timeout_ms` (20
    /// s in the model's cluster file), and the wind-down lifts the fence when it cannot confirm a leader within
    /// its own (20 s). Those two waits, the exit's, and room for the polls between.
    const LEADERLESS_FENCE_MS: u64 = 80_000;

    /// The ground truth: the members whose PostgreSQL serves as primary.
    fn primaries(pg: &Patroni) -> Vec<usize> {
        (0..3)
            .filter(|i| pg.up[*i] && (pg.leader == Some(*i) || pg.stale_primary == Some(*i)))
            .collect()
    }

    /// The moves of a Patroni upgrade nothing disturbs.
    fn moves_of_a_clean_upgrade() -> usize {
        let mut pg = Patroni::new(0);
        moves_to_complete(
            patroni_submit(patroni_cluster(&patroni_profile_text())),
            |step| pg.run(step),
        )
    }

    /// The moves (a step answered by `answer`, or a tick) of the upgrade `submit` starts until it completes.
    fn moves_to_complete(
        submit: Input,
        mut answer: impl FnMut(&ScheduledStep) -> (Outcome, Option<i32>, String, String),
    ) -> usize {
        let mut run = Run::new();
        run.input(submit).unwrap();
        let mut moves = 0;
        while !run.state.is_terminal() {
            if let Some(step) = run.state.outstanding_steps().first().cloned() {
                let r = answer(&step);
                run.finish(&step, r);
            } else {
                run.tick();
            }
            moves += 1;
        }
        assert_eq!(status(&run.state), Status::Completed);
        moves
    }

    /// Runs `case`; `Err` names the first promise broken, with the case, the journal and the status.
    fn run_case(case: Case) -> Result<(Run, Patroni), String> {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
            .unwrap();
        let mut pg = Patroni::new(0);
        let mut leaderless_since: Option<u64> = None;
        let mut held = false;
        let mut killed = None;
        // Steps outstanding when the environment last changed: decided on what the cluster showed before.
        let mut decided_before: Vec<(u64, u32)> = Vec::new();
        let fail = |what: String, run: &Run, pg: &Patroni| {
            Err(format!(
                "{case:?}: {what}\n  journal: {:?}\n  status: {:?}",
                pg.journal,
                run.state.status()
            ))
        };
        for mv in 0..4_000 {
            let mut changed = false;
            if mv == case.at {
                pg.cut_off = Some(case.member);
                pg.dcs_lost = case.dcs_lost;
                changed = true;
                if case.hold.is_some() {
                    let now = run.now + 1;
                    held = run
                        .input(Input::Pause {
                            by: "op".into(),
                            reason: "look".into(),
                            now_ms: now,
                        })
                        .is_ok();
                }
            }
            if case.heal.is_some_and(|h| mv == case.at + h) {
                pg.cut_off = None;
                changed = true;
            }
            if case.kill_leader.is_some_and(|k| mv == case.at + k) {
                if let Some(l) = pg.leader {
                    pg.up[l] = false;
                    pg.leader = None;
                    pg.elect();
                    killed = Some(l);
                    changed = true;
                }
            }
            if changed {
                decided_before = run
                    .state
                    .outstanding_steps()
                    .iter()
                    .map(|s| (s.step, s.attempt))
                    .collect();
            }
            if held && case.hold.is_some_and(|h| mv >= case.at + h) {
                let now = run.now + 1;
                let _ = run.input(Input::Resume {
                    by: "op".into(),
                    now_ms: now,
                });
                held = false;
            }
            if run.state.is_terminal() {
                break;
            }
            if pg.paused && primaries(&pg).is_empty() && pg.up.iter().any(|u| *u) {
                let since = *leaderless_since.get_or_insert(run.now);
                if run.now - since > LEADERLESS_FENCE_MS {
                    let what = format!("the fence up beside no primary for {} ms", run.now - since);
                    return fail(what, &run, &pg);
                }
            } else {
                leaderless_since = None;
            }
            if let Some(step) = run.state.outstanding_steps().first().cloned() {
                let i = Patroni::idx(&step.node);
                let judged = !decided_before.contains(&(step.step, step.attempt));
                let down_besides = (0..3).any(|j| j != i && !pg.up[j] && Some(j) != killed);
                let cut_primary = pg.cut_off.is_some_and(|c| primaries(&pg).contains(&c));
                let broken = match step.action {
                    Action::Stop if judged && primaries(&pg).contains(&i) => {
                        Some(format!("stop of {}, which serves as primary", step.node))
                    }
                    Action::Stop if judged && down_besides => {
                        Some(format!("stop of {} while another member is down", step.node))
                    }
                    Action::UnblockFailover if judged && cut_primary && !pg.without_dcs(i) => {
                        Some(format!(
                            "the fence lifted (through {}) beside a primary cut off from the others",
                            step.node
                        ))
                    }
                    _ => None,
                };
                if let Some(what) = broken {
                    return fail(what, &run, &pg);
                }
                let r = pg.run(&step);
                run.finish(&step, r);
                if (0..3).filter(|j| !pg.up[*j] && Some(*j) != killed).count() > 1 {
                    return fail("two members down at once".into(), &run, &pg);
                }
                continue;
            }
            if run.state.next_wakeup_ms().is_some() {
                run.tick();
                continue;
            }
            if held {
                // Paused with nothing to watch: the operator resumes now.
                let now = run.now + 1;
                let _ = run.input(Input::Resume {
                    by: "op".into(),
                    now_ms: now,
                });
                held = false;
                continue;
            }
            break;
        }
        match run.state.status() {
            Status::Completed => {
                // (The leader killed by the case may have died after the last look.)
                let done =
                    (0..3).all(|i| (pg.up[i] || killed == Some(i)) && pg.running[i] == "15.20");
                // (A second primary the environment made after the fence came down is Patroni's own failover: a
                // fence lifted beside a cut-off primary is checked where it happens.)
                if !done || pg.paused || pg.leader.is_none() {
                    return fail("completed, but the cluster is not".into(), &run, &pg);
                }
            }
            Status::Halted {
                failover_pending, ..
            } => {
                if pg.paused && failover_pending.is_none() {
                    return fail("halted with the fence up, unsaid".into(), &run, &pg);
                }
            }
            // A step in doubt waits for an operator, who sees the fence in its status; the watch goes on.
            Status::NeedsVerification { .. } => {}
            other => return fail(format!("the upgrade rests in {other:?}"), &run, &pg),
        }
        if let Err(e) = workflow::core::verify(&run.history) {
            return fail(format!("the log does not re-derive: {e:?}"), &run, &pg);
        }
        Ok((run, pg))
    }

    /// Every point of the upgrade, every member, cut off for good while serving its old picture: the harshest
    /// stale view, since nothing ever corrects it.
    #[test]
    fn a_member_cut_off_for_good_at_any_point_breaks_no_promise() {
        let moves = moves_of_a_clean_upgrade();
        let failed: Vec<String> = (0..moves)
            .flat_map(|at| (0..3).map(move |member| (at, member)))
            .filter_map(|(at, member)| {
                run_case(Case {
                    at,
                    member,
                    dcs_lost: false,
                    heal: None,
                    hold: None,
                    kill_leader: None,
                })
                .err()
            })
            .collect();
        assert!(
            failed.is_empty(),
            "{} failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    /// The running half of finding F1 (H-STALE report), minimised: pg3 is cut off from the DCS just as pg2's `stop`
    /// is scheduled, and serves its picture (pg1 leading); three moves later pg1's host dies. Every topology the
    /// core can read is pg3's, which names the dead pg1: `cluster-status` never shows "no leader", so the emergency
    /// clock does not start while the upgrade runs (`State::leader_vouched`: a lost answer from a live leader must
    /// not halt a running upgrade). The guard waits for pg1's node probe until `sync_timeout_ms`, and the wind-down
    /// lifts the fence once it could not confirm a leader within its own: later than the election window, but
    /// within S3's bound, and never beside a second primary.
    #[test]
    fn a_dead_leader_named_by_a_cut_off_members_old_picture_gets_failover_back_within_the_sync_timeouts(
    ) {
        let case = Case {
            at: 24,
            member: 2,
            dcs_lost: false,
            heal: None,
            hold: None,
            kill_leader: Some(3),
        };
        let (run, pg) = run_case(case).unwrap_or_else(|e| panic!("{e}"));
        assert_halted_with_failover_back(&run, &pg);
    }

    /// F1 while an operator's pause holds for long after the leader died: the watch asked pg3 every poll and was
    /// fooled for as long as the pause lasted (run_case's fence-time check failed with "the fence up beside no
    /// primary"). Waiting for an operator, a leader Baton cannot reach is not vouched for by another member's
    /// picture of it (`State::leader_vouched`): the clock runs from pg3's first such picture, the watch asks pg1
    /// itself every other look, and the emergency exit re-enables failover after the election window.
    #[test]
    fn a_dead_leader_named_by_a_cut_off_members_old_picture_does_not_fool_the_watch_during_a_pause()
    {
        let case = Case {
            at: 24,
            member: 2,
            dcs_lost: false,
            heal: None,
            hold: Some(119),
            kill_leader: Some(3),
        };
        let (run, pg) = run_case(case).unwrap_or_else(|e| panic!("{e}"));
        assert_emergency_gave_failover_back(&run, &pg);
    }

    /// The other side of `State::leader_vouched`: a leader that is alive but whose topology probe failed once
    /// during a pause (a blip of its API) is unreachable, and pg2's picture of it alone would start the emergency
    /// clock. The watch asks the unreachable leader itself every other look, and its answer vouches for it: no
    /// emergency exit, and after the pause the upgrade completes with failover back on.
    #[test]
    fn a_leader_whose_one_topology_probe_failed_during_a_pause_vouches_for_itself_again() {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
            .unwrap();
        let mut pg = Patroni::new(0);
        let mut paused_at = None;
        let mut blipped = false;
        for mv in 0..4_000 {
            if run.state.is_terminal() {
                break;
            }
            if mv == 24 {
                run.input(Input::Pause {
                    by: "op".into(),
                    reason: "look".into(),
                    now_ms: run.now + 1,
                })
                .unwrap();
                paused_at = Some(run.now);
            }
            // Paused for three election windows of model time, then resumed.
            if paused_at.is_some_and(|at| run.now > at + 30_000) {
                run.input(Input::Resume {
                    by: "op".into(),
                    now_ms: run.now + 1,
                })
                .unwrap();
                paused_at = None;
            }
            if let Some(step) = run.state.outstanding_steps().first().cloned() {
                let r = answer_blipping(&mut pg, &step, "pg1", paused_at.is_some(), &mut blipped);
                run.finish(&step, r);
                continue;
            }
            if run.state.next_wakeup_ms().is_some() || paused_at.is_some() {
                run.tick();
                continue;
            }
            break;
        }
        assert!(
            blipped,
            "the watch never asked pg1's topology during the pause"
        );
        assert_eq!(status(&run.state), Status::Completed, "{:?}", pg.journal);
        assert!(!pg.paused);
    }

    /// H-REVIEW12 finding 1: F1 at a gate. `State::leader_vouched`'s doc and the commit say "waiting for an operator
    /// (paused, at a gate, or for a verification)", but the code tests only `paused` and `verification`: at a gate,
    /// a cut-off member's old picture still vouches for a dead leader. The upgrade waits at `after-first-follower`;
    /// pg3 is cut off from the DCS and serves its picture (pg1 leading); three moves later pg1's host dies, and the
    /// first look at pg2 after that fails once (an API blip: pg2 is then `unreachable`, and `observer` never asks it
    /// again). The watch then alternates pg1 (refused) and pg3 (its old picture names pg1): at a gate the clock
    /// never starts, and the fence stays up beside no primary for as long as nobody approves the gate. The same
    /// history under an operator's pause (`review12_..._same_history_under_a_pause`) takes the emergency exit.
    fn dead_leader_behind_a_stale_picture(pause: bool) -> (Run, Patroni, u64) {
        let mut run = Run::new();
        let gates = if pause {
            ""
        } else {
            "gates = [\"after-first-follower\"]"
        };
        let cluster = patroni_cluster_of(&PG, &patroni_profile_text(), gates);
        run.input(patroni_submit(cluster)).unwrap();
        let mut pg = Patroni::new(0);
        let mut killed_at: Option<u64> = None;
        let mut cut_moves: Option<usize> = None;
        let mut blipped = false;
        for _ in 0..4_000 {
            if run.state.is_terminal() {
                break;
            }
            // The point where the gate waits: pg2 upgraded and synced, pg3 not yet started.
            let pg2_done = run
                .state
                .nodes()
                .get("pg2")
                .is_some_and(|n| n.phase == workflow::core::NodePhase::Upgraded);
            let waiting = matches!(status(&run.state), Status::WaitingApproval { .. });
            if cut_moves.is_none() && (waiting || (pause && pg2_done)) {
                if pause {
                    run.input(Input::Pause {
                        by: "op".into(),
                        reason: "look".into(),
                        now_ms: run.now + 1,
                    })
                    .unwrap();
                }
                pg.cut_off = Some(2);
                cut_moves = Some(0);
            }
            if cut_moves == Some(3) && killed_at.is_none() {
                pg.up[0] = false;
                pg.leader = None;
                pg.elect();
                killed_at = Some(run.now);
            }
            if let Some(m) = cut_moves.as_mut() {
                *m += 1;
            }
            // Nobody approves the gate (or resumes) for two minutes of the model's clock.
            if killed_at.is_some_and(|at| run.now > at + 120_000) {
                break;
            }
            if let Some(step) = run.state.outstanding_steps().first().cloned() {
                let r = answer_blipping(&mut pg, &step, "pg2", killed_at.is_some(), &mut blipped);
                run.finish(&step, r);
                continue;
            }
            if run.state.next_wakeup_ms().is_some() {
                run.tick();
                continue;
            }
            break;
        }
        let killed_at = killed_at.expect("the upgrade reached its wait");
        assert!(blipped, "pg2 was never asked after pg1 died");
        (run, pg, killed_at)
    }

    #[test]
    fn review12_a_dead_leader_named_by_a_cut_off_members_old_picture_does_not_fool_the_watch_at_a_gate(
    ) {
        let (run, pg, killed_at) = dead_leader_behind_a_stale_picture(false);
        assert!(
            !pg.paused,
            "the fence still up beside no primary {} ms after pg1 died at the gate; status {:?}; last steps {:?}",
            run.now - killed_at,
            status(&run.state),
            run.history
                .iter()
                .filter_map(Event::scheduled_step)
                .rev()
                .take(6)
                .map(|s| (s.action, s.node))
                .collect::<Vec<_>>()
        );
    }

    /// The control for the test above: the same history under an operator's pause is caught (the fix works there).
    #[test]
    fn review12_a_dead_leader_named_by_a_cut_off_members_old_picture_same_history_under_a_pause() {
        let (run, pg, _) = dead_leader_behind_a_stale_picture(true);
        assert!(!pg.paused && !pg.split_brain, "{:?}", status(&run.state));
        assert_emergency_gave_failover_back(&run, &pg);
    }

    /// Answers `step` from the model, but refuses the first topology probe of `node` once `armed` (a blip of that
    /// member's API: curl exit 7), setting `blipped`.
    fn answer_blipping(
        pg: &mut Patroni,
        step: &ScheduledStep,
        node: &str,
        armed: bool,
        blipped: &mut bool,
    ) -> (Outcome, Option<i32>, String, String) {
        if armed && !*blipped && step.action == Action::ProbeClusterStatus && step.node == node {
            *blipped = true;
            return (
                Outcome::Failed,
                Some(7),
                String::new(),
                "curl: (7) Failed to connect to the member's REST API after 0 ms".to_string(),
            );
        }
        pg.run(step)
    }

    /// The run halted with failover on, in the model (not paused, never two primaries) and in its status; the
    /// halt's reason.
    fn assert_halted_with_failover_back(run: &Run, pg: &Patroni) -> String {
        assert!(
            !pg.paused && !pg.split_brain,
            "{:?}\n{:?}",
            pg.journal,
            status(&run.state)
        );
        let Status::Halted {
            failover_pending: None,
            reason,
        } = status(&run.state)
        else {
            panic!("not halted with failover on: {:?}", status(&run.state));
        };
        reason
    }

    fn assert_emergency_gave_failover_back(run: &Run, pg: &Patroni) {
        let reason = assert_halted_with_failover_back(run, pg);
        assert!(
            reason.starts_with("emergency exit: for ")
                && reason.contains(
                    "the only leader the cluster showed was pg1, named by another member's view"
                ),
            "{reason}"
        );
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            0..100usize,
            0..3usize,
            any::<bool>(),
            proptest::option::of(1..80usize),
            proptest::option::of(1..120usize),
            proptest::option::of(0..20usize),
        )
            .prop_map(|(at, member, dcs_lost, heal, hold, kill_leader)| Case {
                at,
                member,
                dcs_lost,
                heal,
                hold,
                kill_leader,
            })
    }

    /// etcd, which has no fence (so no watch): at every move, every member cut off from the others (its peer port
    /// blocked; it still answers `endpoint status` with the leader and term it last knew), healed six moves later
    /// (at every other move) or never. On the ground truth: a `stop` never takes out the member that leads, nor one while another is down
    /// or cut off (the majority: never an outage), a completed upgrade left every member on the target, and the log
    /// re-derives.
    #[test]
    fn an_etcd_member_cut_off_at_any_point_breaks_no_promise() {
        let clean = {
            let mut etcd = Etcd::new(1);
            moves_to_complete(submit(cluster(&etcd_profile_text())), |step| etcd.run(step))
        };
        let mut failed = Vec::new();
        for at in 0..clean {
            for member in 0..3 {
                // Healed six moves later at every other point, never at the rest.
                let heal = (at % 2 == 1).then_some(6);
                if let Err(e) = etcd_case(at, member, heal) {
                    failed.push(e);
                }
            }
        }
        assert!(
            failed.is_empty(),
            "{} failed:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    fn etcd_case(at: usize, member: usize, heal: Option<usize>) -> Result<(), String> {
        let mut run = Run::new();
        run.input(submit(cluster(&etcd_profile_text()))).unwrap();
        let mut etcd = Etcd::new(1);
        // The members whose own node probe ran since the cut or the heal. A cut-off member still answers `endpoint
        // status` with the leader it knew, so the guard's last look (the topology) cannot show a cut made after
        // the node probes: a `stop` is held to the truth only once every other member's node probe ran since.
        let mut asked_since: Option<Vec<usize>> = None;
        let fail = |what: String, run: &Run, etcd: &Etcd| {
            Err(format!(
                "at {at}, m{} cut off, heal {heal:?}: {what}\n  journal: {:?}\n  status: {:?}",
                member + 1,
                etcd.journal,
                run.state.status()
            ))
        };
        for mv in 0..4_000 {
            if mv == at || heal.is_some_and(|h| mv == at + h) {
                etcd.members[member].cut_off = mv == at;
                asked_since = Some(Vec::new());
            }
            if run.state.is_terminal() {
                break;
            }
            if let Some(step) = run.state.outstanding_steps().first().cloned() {
                let i = Etcd::idx(&step.node);
                let judged = asked_since
                    .as_ref()
                    .is_none_or(|asked| (0..3).all(|j| j == i || asked.contains(&j)));
                if step.action == Action::ProbeStatus {
                    if let Some(asked) = &mut asked_since {
                        asked.push(i);
                    }
                }
                let others_out =
                    (0..3).any(|j| j != i && (!etcd.members[j].up || etcd.members[j].cut_off));
                if judged && step.action == Action::Stop {
                    if etcd.leader == Some(i) {
                        return fail(format!("stop of {}, the leader", step.node), &run, &etcd);
                    }
                    if others_out {
                        let what = format!("stop of {} while another member is out", step.node);
                        return fail(what, &run, &etcd);
                    }
                }
                let r = etcd.run(&step);
                run.finish(&step, r);
                continue;
            }
            if run.state.next_wakeup_ms().is_some() {
                run.tick();
                continue;
            }
            break;
        }
        match run.state.status() {
            Status::Completed => {
                let done = etcd.members.iter().all(|m| m.up && m.running == "3.5.1");
                if !done || etcd.leader.is_none() {
                    return fail("completed, but the cluster is not".into(), &run, &etcd);
                }
            }
            Status::Halted { .. } | Status::NeedsVerification { .. } => {}
            other => return fail(format!("the upgrade rests in {other:?}"), &run, &etcd),
        }
        if let Err(e) = workflow::core::verify(&run.history) {
            return fail(format!("the log does not re-derive: {e:?}"), &run, &etcd);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// A cut anywhere, healed or not, with or without an operator's pause and the leader's death: no promise
        /// broken.
        #[test]
        fn a_stale_view_anywhere_breaks_no_promise(case in case()) {
            if let Err(e) = run_case(case) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}

// Hostile review 13: a topology that opens a round is followed by probes chosen from the picture before it.
#[test]
fn review13_a_patroni_cluster_led_by_its_second_member_passes_preflight() {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&patroni_profile_text())))
        .unwrap();
    let mut pg = Patroni::new(1); // pg2 leads
    pg.drive(&mut run, 5_000);
    assert_eq!(
        status(&run.state),
        Status::Completed,
        "{:#?}",
        &run.history[run.history.len().saturating_sub(6)..]
    );
}

/// Hostile review 13: the leader's host dies (its probes get no answer at all) while this upgrade has Patroni
/// paused; its DCS key has expired, so a live member's topology shows no leader. S3: once a topology shows no
/// leader, failover comes back after the election window (`election_ms`, 10 s in profiles/patroni.toml), even
/// with a probe of the dead node still out (`emergency_by_time`). With the topology asked in one round beside the
/// dead leader's node and fence probes (taken from the picture before it), the leaderless topology is not recorded
/// until those probes' deadlines pass (timeout 10 s + result grace 10 s), so the exit comes about 10 s late.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13_a_leaderless_topology_beside_a_dead_leaders_probes_is_acted_on_within_the_election_window(
) {
    let (mut run, mut pg) = upgraded_first_follower();
    // On to the next guard (before pg3's stop): its first round, with the leader's fence probe, is out.
    for _ in 0..500 {
        let out = run.state.outstanding_steps();
        if out.iter().any(|s| s.action == Action::ProbeFailover) {
            break;
        }
        if let Some(step) = out.first() {
            let r = pg.run(step);
            run.finish(step, r);
        } else {
            run.tick();
        }
    }
    assert!(run
        .state
        .outstanding_steps()
        .iter()
        .any(|s| s.action == Action::ProbeFailover && s.node == "pg1"));
    pg.up[0] = false;
    pg.leader = None;
    let dead = |s: &ScheduledStep| s.node == "pg1";
    let (leaderless_at, exit_at) = leaderless_and_exit_ms(&mut run, &mut pg, dead, None);
    assert!(
        exit_at <= leaderless_at + 10_000 + 100,
        "no leader shown at {leaderless_at}, the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
        exit_at - leaderless_at
    );
}

/// Hostile review 13: with the fence lifted for the switchover (a profile without `switchover_keeps_fence`), the
/// `block_failover` guard after the switchover asks the leader's node probe in one round with its topology, from
/// the picture before it (the old leader): the topology shows the new one, so the round does not match a
/// one-at-a-time run and the check fails, costing a poll while failover is on. A healthy upgrade should have none.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13_a_healthy_switchover_with_the_fence_lifted_has_no_round_probe_mismatch() {
    let lifting = patroni_profile_text().replace("switchover_keeps_fence = true\n", "");
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(&lifting)))
        .unwrap();
    let mut pg = Patroni::new(0);
    pg.drive(&mut run, 5_000);
    assert_eq!(status(&run.state), Status::Completed);
    let mismatches: Vec<&Vec<String>> = run
        .history
        .iter()
        .filter_map(|e| match e {
            Event::CheckEvaluated { problems, .. }
                if problems.iter().any(|p| p.contains("round probe mismatch")) =>
            {
                Some(problems)
            }
            _ => None,
        })
        .collect();
    assert!(mismatches.is_empty(), "{mismatches:?}");
}

/// Whatever member leads at the start, and whatever order a round's answers come in, a healthy upgrade of the etcd
/// and Patroni models (fence kept through the switchover, and lifted for it) completes without a single round
/// probe mismatch: the probes that go out beside a topology are always the ones it then shows were right (hostile
/// review 13 found a fence probe sent to the wrong member when the leader was not the first node, which refused
/// preflight).
#[test]
fn a_topology_that_opens_a_round_never_mismatches_in_a_healthy_upgrade_whoever_leads() {
    let mismatches = |run: &Run| -> Vec<String> {
        run.history
            .iter()
            .filter_map(|e| match e {
                Event::CheckEvaluated { problems, .. } => problems
                    .iter()
                    .find(|p| p.contains("round probe mismatch"))
                    .cloned(),
                _ => None,
            })
            .collect()
    };
    let lifting = patroni_profile_text().replace("switchover_keeps_fence = true\n", "");
    assert_ne!(lifting, patroni_profile_text());
    for leader in 0..3 {
        for order in [Answer::AsScheduled, Answer::Reversed] {
            let mut run = Run::new();
            run.input(submit(cluster(&etcd_profile_text()))).unwrap();
            let mut etcd = Etcd::new(leader);
            let batches = drive_rounds(&mut run, order, 5_000, |s| etcd.run(s));
            assert_eq!(
                status(&run.state),
                Status::Completed,
                "etcd, leader {leader}"
            );
            assert_eq!(
                mismatches(&run),
                Vec::<String>::new(),
                "etcd, leader {leader}"
            );
            assert_round_rules(&batches);
            for text in [patroni_profile_text(), lifting.clone()] {
                let mut run = Run::new();
                run.input(patroni_submit(patroni_cluster(&text))).unwrap();
                let mut pg = Patroni::new(leader);
                let batches = drive_rounds(&mut run, order, 5_000, |s| pg.run(s));
                assert_eq!(
                    status(&run.state),
                    Status::Completed,
                    "patroni, leader {leader}"
                );
                assert_eq!(
                    mismatches(&run),
                    Vec::<String>::new(),
                    "patroni, leader {leader}"
                );
                assert!(!pg.paused && !pg.split_brain && pg.leaderless == 0);
                assert_round_rules(&batches);
                workflow::core::verify(&run.history).expect("verify");
            }
        }
    }
}

/// Hostile review 13b: the emergency exit of a leader lost *during* a round that a topology opened. The fix for
/// review 13's P2-b keeps a topology alone only while the expected leader is already `unreachable`; a leader
/// whose host stalls (its executor's probes hang, not refused) and whose Patroni loses its leader key at the same
/// time (paused: nobody is elected) is not yet known to be gone when the round is scheduled. The topology, asked
/// of a live member, shows no leader at once; a one-at-a-time run judges it at once and lifts the fence one
/// election window (10 s) later. Here it is recorded only when the hung member's probes beside it pass their
/// deadlines (timeout 10 s + result grace), so the exit comes that much late. `pick` chooses the round and the
/// member that hangs in it.
fn review13b_exit_delay_with_a_member_hung_in_a_round(
    text: &str,
    first_leader: usize,
    pick: impl Fn(&Run, &Patroni, &[ScheduledStep]) -> Option<usize>,
) -> (u64, u64) {
    let mut run = Run::new();
    run.input(patroni_submit(patroni_cluster(text))).unwrap();
    let mut pg = Patroni::new(first_leader);
    let mut hung = None;
    for _ in 0..2_000 {
        let out = run.state.outstanding_steps();
        if let Some(m) = pick(&run, &pg, &out) {
            hung = Some(m);
            break;
        }
        if let Some(step) = out.first() {
            let r = pg.run(step);
            run.finish(step, r);
        } else {
            run.tick();
        }
    }
    let hung = hung.expect("the round was scheduled");
    assert!(pg.paused, "the fence is up");
    // The member's host stalls: its Patroni no longer renews the leader key (paused: nobody takes it), and its
    // executor answers nothing (its probes pass their deadlines).
    pg.leader = None;
    let stalled = |s: &ScheduledStep| s.node == PG[hung];
    leaderless_and_exit_ms(&mut run, &mut pg, stalled, None)
}

/// Hostile review 13b (P2): the switchover's guard (fence kept): its first topology is asked of a follower, in one
/// round with the leader's node and fence probes. The leader stalls as the round goes out.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13b_a_leader_that_stalls_during_the_switchover_guards_round_gets_the_exit_within_the_election_window(
) {
    for text in [review13b_one_at_a_time(), patroni_profile_text()] {
        let (leaderless_at, exit_at) =
            review13b_exit_delay_with_a_member_hung_in_a_round(&text, 0, |run, pg, out| {
                let demote_guard = matches!(
                    run.state.current_plan_item(),
                    Some((
                        _,
                        PlanItem::Run {
                            action: Action::Demote,
                            ..
                        },
                        _
                    ))
                );
                let topology = out.iter().any(|s| s.action == Action::ProbeClusterStatus);
                (demote_guard && topology).then_some(pg.leader?)
            });
        assert!(
        exit_at <= leaderless_at + 10_000 + 100,
        "probe_rounds {}: no leader shown at {leaderless_at}, the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
        text.contains("probe_rounds = true"),
        exit_at - leaderless_at
    );
    }
}

/// The Patroni profile without probe rounds: the control (one step at a time, as before the fourteenth session).
fn review13b_one_at_a_time() -> String {
    let text = patroni_profile_text().replace("probe_rounds = true\n", "");
    assert_ne!(text, patroni_profile_text());
    text
}

/// Hostile review 13b (P2): VerifySwitchover (fence kept): its topology goes out with the switchover target's
/// version, node and running-version probes. The new leader stalls as the round goes out.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13b_a_new_leader_that_stalls_during_verify_switchovers_round_gets_the_exit_within_the_election_window(
) {
    for first_leader in 0..3 {
        for text in [review13b_one_at_a_time(), patroni_profile_text()] {
            let (leaderless_at, exit_at) = review13b_exit_delay_with_a_member_hung_in_a_round(
                &text,
                first_leader,
                |run, pg, out| {
                    let verify = matches!(
                        run.state.current_plan_item(),
                        Some((_, PlanItem::VerifySwitchover { .. }, _))
                    );
                    let topology = out.iter().any(|s| s.action == Action::ProbeClusterStatus);
                    (verify && topology).then_some(pg.leader?)
                },
            );
            assert!(
        exit_at <= leaderless_at + 10_000 + 100,
        "first leader {first_leader}, probe_rounds {}: no leader shown at {leaderless_at}, the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
        text.contains("probe_rounds = true"),
        exit_at - leaderless_at
    );
        }
    }
}

/// Hostile review 13b (P3): the same round, the leader's executor stalled, and leadership moved meanwhile (an
/// operator's switchover to pg3: Patroni allows one under pause). A one-at-a-time run halts on the topology at once
/// ("changed under the plan"); with the topology opening the round, the halt waits for the stalled member's probe
/// deadlines. Nothing runs meanwhile (no action is at stake), but the halt, and the wind-down that re-enables
/// failover after it, come one probe deadline late.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13b_a_leader_moved_while_the_old_one_stalls_halts_as_soon_as_the_topology_shows_it() {
    for text in [review13b_one_at_a_time(), patroni_profile_text()] {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&text))).unwrap();
        let mut pg = Patroni::new(0);
        let armed = patroni_until_a_look_in(&mut run, &mut pg, |run| {
            let demote_guard = matches!(
                run.state.current_plan_item(),
                Some((
                    _,
                    PlanItem::Run {
                        action: Action::Demote,
                        ..
                    },
                    _
                ))
            );
            demote_guard
        });
        assert!(armed, "the switchover's guard began");
        pg.leader = Some(2);
        let stalled = |s: &ScheduledStep| s.node == "pg1";
        for _ in 0..5_000 {
            if run.state.is_terminal()
                || run
                    .history
                    .iter()
                    .any(|e| matches!(e, Event::WindDownStarted { .. }))
            {
                break;
            }
            if let Some(step) = run
                .state
                .outstanding_steps()
                .into_iter()
                .find(|s| !stalled(s))
            {
                let r = pg.run(&step);
                run.finish(&step, r);
                continue;
            }
            if run.state.next_wakeup_ms().is_none() {
                break;
            }
            run.tick();
        }
        let answered_at = |step: u64| {
            run.history.iter().find_map(|e| match e {
                Event::StepResultRecorded { step: s, at_ms, .. } if *s == step => Some(*at_ms),
                _ => None,
            })
        };
        let moved_at = run
            .history
            .iter()
            .filter_map(|e| match e {
                Event::ObservationRecorded {
                    step, observation, ..
                } => observation
                    .topology()
                    .filter(|t| t.sole_leader() == Some("pg3"))
                    .and_then(|_| answered_at(*step)),
                _ => None,
            })
            .min()
            .expect("a topology showed pg3 leading");
        let (halt_at, reason) = run
            .history
            .iter()
            .find_map(|e| match e {
                Event::WindDownStarted { at_ms, reason, .. } => Some((*at_ms, reason.clone())),
                _ => None,
            })
            .expect("the upgrade winds down");
        assert!(reason.contains("changed under the plan"), "{reason}");
        assert!(
            halt_at <= moved_at + 100,
            "probe_rounds {}: pg3 shown leading at {moved_at}, the halt only at {halt_at} ({} ms later)",
            text.contains("probe_rounds = true"),
            halt_at - moved_at
        );
    }
}

/// Hostile review 13b (P3, cost only): one failed `endpoint status` asked of the etcd leader (exit 2: the ctl
/// wrapper itself failed, once) puts it in `view_failed`. etcd has no fence probe, and the observer never asks an
/// unreachable member's topology while another is usable, so nothing cluster-wide is asked of the leader again
/// until its own WaitSynced after the switchover: its node probe answers in every guard meanwhile, yet every later
/// topology stays alone (`topology_opens_round`: the expected leader is unreachable). A healthy upgrade takes 31
/// decisions; this asks the leader for the rest of the followers' upgrade as if it were gone.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13b_one_failed_topology_of_the_etcd_leader_does_not_keep_it_unreachable_while_it_answers()
{
    let mut run = Run::new();
    run.input(submit(cluster(&etcd_profile_text()))).unwrap();
    let mut etcd = Etcd::new(1); // m2 leads
    let mut failed = false;
    let mut planned = false;
    let batches = drive_rounds(&mut run, Answer::AsScheduled, 5_000, |s| {
        planned |= s.action == Action::Stop;
        if !failed
            && !planned
            && s.step > 5
            && s.action == Action::ProbeClusterStatus
            && s.node == "m2"
        {
            failed = true;
            return (
                Outcome::Failed,
                Some(2),
                String::new(),
                "ctl: endpoint-status: killed".into(),
            );
        }
        etcd.run(s)
    });
    assert!(failed, "the leader's topology was asked");
    assert_eq!(status(&run.state), Status::Completed);
    // One failed check costs a poll and the guard's first round again: a decision or two, not every round after.
    assert!(
        batches.len() <= 31 + 3,
        "{} decisions: {batches:?}",
        batches.len()
    );
}

/// Hostile review 13c: the `stop` guard of a follower (a `TakesOut` guard: its first topology, asked of the leader
/// the plan expects, opens a round with the leader's node and fence probes AND every other member's node probe).
/// The *other* follower's executor stalls as the round goes out, and an operator moves leadership (Patroni allows a
/// switchover under pause) while the old leader stays up and answers. A one-at-a-time run asks the topology first,
/// sees the moved leader at once and halts ("changed under the plan"), never asking the stalled member. With the
/// round, the topology's observation is judged only after the stalled member's node probe passes its deadline:
/// the halt, and the wind-down that re-enables failover, come one probe deadline late. `topology_opens_round`
/// rule (b) assumes "the other members' node probes beside it only add what a one-at-a-time run would have waited
/// for after it", which holds only when the topology shows nothing decisive.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13c_a_leader_moved_while_another_follower_stalls_in_a_stop_guard_round_halts_at_once() {
    for (stopped, stalled, new_leader) in
        [(1usize, 2usize, 2usize), (1, 2, 1), (2, 1, 1), (2, 1, 2)]
    {
        for text in [review13b_one_at_a_time(), patroni_profile_text()] {
            let mut run = Run::new();
            run.input(patroni_submit(patroni_cluster(&text))).unwrap();
            let mut pg = Patroni::new(0);
            let armed = patroni_until_a_look_in(&mut run, &mut pg, |run| {
                let stop_guard = matches!(
                    run.state.current_plan_item(),
                    Some((_, PlanItem::Run { action: Action::Stop, node, .. }, _)) if node == PG[stopped]
                );
                stop_guard
            });
            assert!(armed, "the stop guard of {} began", PG[stopped]);
            let rounds = text.contains("probe_rounds = true");
            if rounds {
                let out = run.state.outstanding_steps();
                assert!(
                    out.iter()
                        .any(|s| s.node == PG[stalled] && s.action == Action::ProbeStatus),
                    "the stalled member's node probe goes out with the topology: {out:?}"
                );
            }
            pg.leader = Some(new_leader);
            let stalled_node = PG[stalled];
            for _ in 0..5_000 {
                if run.state.is_terminal()
                    || run
                        .history
                        .iter()
                        .any(|e| matches!(e, Event::WindDownStarted { .. }))
                {
                    break;
                }
                if let Some(step) = run
                    .state
                    .outstanding_steps()
                    .into_iter()
                    .find(|s| s.node != stalled_node)
                {
                    let r = pg.run(&step);
                    run.finish(&step, r);
                    continue;
                }
                if run.state.next_wakeup_ms().is_none() {
                    break;
                }
                run.tick();
            }
            let answered_at = |step: u64| {
                run.history.iter().find_map(|e| match e {
                    Event::StepResultRecorded { step: s, at_ms, .. } if *s == step => Some(*at_ms),
                    _ => None,
                })
            };
            let moved_at = run
                .history
                .iter()
                .filter_map(|e| match e {
                    Event::ObservationRecorded {
                        step, observation, ..
                    } => observation
                        .topology()
                        .filter(|t| t.sole_leader() == Some(PG[new_leader]))
                        .and_then(|_| answered_at(*step)),
                    _ => None,
                })
                .min()
                .expect("a topology showed the new leader");
            let (halt_at, reason) = run
                .history
                .iter()
                .find_map(|e| match e {
                    Event::WindDownStarted { at_ms, reason, .. } => Some((*at_ms, reason.clone())),
                    _ => None,
                })
                .expect("the upgrade winds down");
            assert!(
                halt_at <= moved_at + 100,
                "stop {}, {} stalled, leader moved to {}, probe_rounds {rounds}: the new leader shown at {moved_at}, the halt only at {halt_at} ({} ms later): {reason}",
                PG[stopped],
                PG[stalled],
                PG[new_leader],
                halt_at - moved_at
            );
        }
    }
}

/// Hostile review 13c: the same `stop` guard round (topology asked of the leader, opening a round with every other
/// member's node probe), the other follower's host stalls and the leader key is lost meanwhile (paused: nobody is
/// elected). The leader's own GET /cluster shows no leader at once; a one-at-a-time run judges it at once and
/// lifts the fence one election window later. With the round it is recorded only when the stalled follower's
/// node probe passes its deadline, and `leaderless_since` (the emergency exit's clock) starts that much late.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13c_a_follower_that_stalls_in_a_stop_guards_round_does_not_delay_the_exit() {
    for (stopped, stalled) in [(1usize, 2usize), (2, 1)] {
        for text in [review13b_one_at_a_time(), patroni_profile_text()] {
            let (leaderless_at, exit_at) = review13b_exit_delay_with_a_member_hung_in_a_round(
                &text,
                0,
                |run, _pg, out| {
                    let stop_guard = matches!(
                        run.state.current_plan_item(),
                        Some((_, PlanItem::Run { action: Action::Stop, node, .. }, _)) if node == PG[stopped]
                    );
                    let topology = out.iter().any(|s| s.action == Action::ProbeClusterStatus);
                    (stop_guard && topology).then_some(stalled)
                },
            );
            assert!(
                exit_at <= leaderless_at + 10_000 + 100,
                "stop {}, {} stalled, probe_rounds {}: no leader shown at {leaderless_at}, the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
                PG[stopped],
                PG[stalled],
                text.contains("probe_rounds = true"),
                exit_at - leaderless_at
            );
        }
    }
}

/// Hostile review 13c (P3): WaitSynced's round `[topology@N, node@N, version@N, running@N]` opens under rule (a)
/// ("a member that hangs would hang the look itself"), which holds for a member whose host or executor stalls, not
/// for one probe command of it that hangs (here the running-version probe, a SQL query to a PostgreSQL just
/// started) while its Patroni API answers. The leader key is lost meanwhile (paused: nobody is elected): the
/// topology, asked of N, shows no leader at once; a one-at-a-time run judges it at once, the round only when the
/// hung probe passes its deadline, and the emergency exit's clock starts that much late.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13c_a_hung_running_version_probe_in_wait_synced_does_not_delay_the_exit() {
    for text in [review13b_one_at_a_time(), patroni_profile_text()] {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&text))).unwrap();
        let mut pg = Patroni::new(0);
        let armed = patroni_until_a_look_in(&mut run, &mut pg, |run| {
            let wait_synced = matches!(
                run.state.current_plan_item(),
                Some((_, PlanItem::WaitSynced { node, .. }, _)) if node == "pg2"
            );
            wait_synced
        });
        assert!(armed, "pg2's WaitSynced began");
        assert!(pg.paused, "the fence is up");
        pg.leader = None;
        let hung = |s: &ScheduledStep| s.node == "pg2" && s.action == Action::ProbeRunningVersion;
        let (leaderless_at, exit_at) = leaderless_and_exit_ms(&mut run, &mut pg, hung, None);
        assert!(
            exit_at <= leaderless_at + 10_000 + 100,
            "probe_rounds {}: no leader shown at {leaderless_at}, the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
            text.contains("probe_rounds = true"),
            exit_at - leaderless_at
        );
    }
}

/// Hostile review 13c: the stronger form. pg3's host hangs (its probes pass their deadlines) from the moment pg2's
/// `stop` guard begins, and stays hung: both runs keep polling the guard (pg3's node probe must show it up before a
/// member is taken out). pg3 is in `State::unreachable` after the first round, yet `topology_opens_round` checks
/// only the node the look is asked of, so every later round again holds the leader's topology behind pg3's
/// probe. The leader key is lost 30 s later, not as a round goes out: a one-at-a-time run judges the next topology
/// at once; the round judges it only when pg3's probe beside it passes its deadline.
/// The review found this on the commit it attacked; the test asserts the behaviour the fix gave.
#[test]
fn review13c_a_member_known_unreachable_still_holds_every_later_stop_guard_round() {
    for text in [review13b_one_at_a_time(), patroni_profile_text()] {
        let mut run = Run::new();
        run.input(patroni_submit(patroni_cluster(&text))).unwrap();
        let mut pg = Patroni::new(0);
        let armed = patroni_until_a_look_in(&mut run, &mut pg, |run| {
            let stop_guard = matches!(
                run.state.current_plan_item(),
                Some((_, PlanItem::Run { action: Action::Stop, node, .. }, _)) if node == "pg2"
            );
            stop_guard
        });
        assert!(armed, "pg2's stop guard began");
        assert!(pg.paused, "the fence is up");
        let lose_at = run.now + 30_000;
        let (leaderless_at, exit_at) =
            leaderless_and_exit_ms(&mut run, &mut pg, |s| s.node == "pg3", Some(lose_at));
        assert!(leaderless_at >= lose_at, "the loss came after {lose_at}");
        assert!(
            exit_at <= leaderless_at + 10_000 + 100,
            "probe_rounds {}: no leader shown at {leaderless_at} (lost at {lose_at}), the emergency exit only at {exit_at} ({} ms later, the window is 10000)",
            text.contains("probe_rounds = true"),
            exit_at - leaderless_at
        );
    }
}

/// Drives `run` against `pg`, never answering the steps `hung` picks (they pass their deadlines; the leader key is
/// lost from `lose_leader_at` on, if given), until the emergency
/// exit begins or nothing is left to decide. Returns when a live member's topology first showed no leader (its
/// answer's time) and when the exit began.
fn leaderless_and_exit_ms(
    run: &mut Run,
    pg: &mut Patroni,
    hung: impl Fn(&ScheduledStep) -> bool,
    lose_leader_at: Option<u64>,
) -> (u64, u64) {
    for _ in 0..10_000 {
        if run.state.is_terminal()
            || run.history.iter().any(|e| {
                matches!(e, Event::WindDownStarted { cause, .. } if *cause == workflow::core::WindDownCause::Emergency)
            })
        {
            break;
        }
        if lose_leader_at.is_some_and(|at| run.now >= at) {
            pg.leader = None;
        }
        if let Some(step) = run.state.outstanding_steps().into_iter().find(|s| !hung(s)) {
            let r = pg.run(&step);
            run.finish(&step, r);
            continue;
        }
        if run.state.next_wakeup_ms().is_none() {
            break;
        }
        run.tick();
    }
    let answered_at = |step: u64| {
        run.history.iter().find_map(|e| match e {
            Event::StepResultRecorded { step: s, at_ms, .. } if *s == step => Some(*at_ms),
            _ => None,
        })
    };
    let leaderless_at = run
        .history
        .iter()
        .filter_map(|e| match e {
            Event::ObservationRecorded {
                step, observation, ..
            } => observation
                .topology()
                .filter(|t| t.sole_leader().is_none())
                .and_then(|_| answered_at(*step)),
            _ => None,
        })
        .min()
        .expect("a live member's topology showed no leader");
    let exit_at = run
        .history
        .iter()
        .find_map(|e| match e {
            Event::WindDownStarted { cause, at_ms, .. }
                if *cause == workflow::core::WindDownCause::Emergency =>
            {
                Some(*at_ms)
            }
            _ => None,
        })
        .expect("the emergency exit began");
    (leaderless_at, exit_at)
}

/// Answers `run`'s steps in order from `pg` until a topology of the plan item `at` picks is out (its round, or
/// alone), at most 2,000 inputs; whether it got there.
fn patroni_until_a_look_in(run: &mut Run, pg: &mut Patroni, at: impl Fn(&Run) -> bool) -> bool {
    for _ in 0..2_000 {
        let out = run.state.outstanding_steps();
        if at(run) && out.iter().any(|s| s.action == Action::ProbeClusterStatus) {
            return true;
        }
        if let Some(step) = out.first() {
            let r = pg.run(step);
            run.finish(step, r);
        } else {
            run.tick();
        }
    }
    false
}
