//! The fresh guard: what must be observed, after the last wait, gate, pause, resume, resolve or action, before
//! a disruptive action runs, and how each observation is judged.
//!
//! The rule (ARCHITECTURE.md, "The guard"): before `stop`, `install` on a stopped node, `start`, `demote`,
//! `upgrade`, `upgrade_leader`, `block_failover` and `unblock_failover`, the core asks `cluster-status` of a
//! live node other than the target, then the `status` of the leader that `cluster-status` named (the leader
//! agrees with itself), then the failover settings (`cluster-status --json`), which name the leader again. The
//! action runs only if every one of these shows it is safe now:
//! - exactly one leader, and it is the leader the plan expects (the preflight leader until the switchover is
//!   confirmed, then the new one); the target is not the leader unless this is the switchover itself;
//! - for actions that take a node out or move leadership: every node but the target in service (`follower` or
//!   the leader) and, per the leader's own `status`, every follower synced but the target if it is out; always:
//!   the leader's services running (bringing a node back needs no more than that);
//! - etcd keeps a majority with the target out;
//! - cluster failover is what the plan expects (blocked by this upgrade, or on for the switchover) and every
//!   node's node-level failover is on.
//!
//! A profile file's reader (etcd, Patroni) has the same probes under its own commands, plus two for an action
//! that takes a node out or moves leadership: the node probe of every other member (after the leader's: each
//! must say itself that it is up and not behind, since a topology may list a member that is cut off or dead),
//! and the topology once more, last (its node and fence probes do not name the leader).
//!
//! A finding is one of: it passes; the cluster must settle first (poll, bounded by `sync_timeout`); it has no
//! leader (poll, and the emergency exit of S3 applies if this upgrade has failover blocked); or it changed
//! under the plan (the leader moved, the target now leads, someone else changed failover): then the upgrade
//! halts at once, saying what changed, and does not re-plan.

use super::event::Observation;
use super::observe::{Member, MemberRole, NodeHealth, Replication, Topology};
use super::plan::PlanItem;
use super::profile::{Action, Procedure, Profile};
use super::profile_file::{check_version_change, version_numbers};
use super::state::State;
use super::version::version_key;

/// What an action does to the cluster, for its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Takes a node out of service (`stop`, `upgrade`).
    TakesOut,
    /// Works on a node that is out, or brings it back (`install` after `stop`, `start`): needs the expected
    /// leader, and the target not leading; not every other node synced.
    OnOut,
    /// Moves leadership (`demote`, `upgrade_leader`).
    Switchover,
    /// Sets failover, or installs while the services run (`block_failover`, `unblock_failover`, `install` in
    /// the upgrade-command procedure).
    Settings,
}

fn kind(state: &State, action: Action) -> Option<Kind> {
    let procedure = state.sub.as_ref().map(|s| s.profile.procedure);
    Some(match action {
        Action::Stop | Action::Upgrade => Kind::TakesOut,
        Action::Install if procedure == Some(Procedure::Runbook) => Kind::OnOut,
        Action::Start => Kind::OnOut,
        Action::Demote | Action::UpgradeLeader => Kind::Switchover,
        Action::Install | Action::BlockFailover | Action::UnblockFailover => Kind::Settings,
        Action::ProbeClusterStatus
        | Action::ProbeStatus
        | Action::ProbeVersion
        | Action::ProbeFailover
        | Action::ProbePackage
        | Action::ProbeRunningVersion => return None,
    })
}

/// Who the plan expects to lead now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    /// This node.
    Is(String),
    /// Anyone but the old leader (after the switchover ran, before it was confirmed).
    NotOld(String),
}

fn expected_leader(state: &State) -> Option<Expected> {
    let plan = state.plan.as_ref()?;
    if let Some(l) = &state.new_leader {
        return Some(Expected::Is(l.clone()));
    }
    let switchover = plan.items.iter().position(|i| {
        matches!(
            i,
            PlanItem::Run {
                action: Action::Demote | Action::UpgradeLeader,
                ..
            }
        )
    });
    match switchover {
        Some(at) if state.items_done > at => Some(Expected::NotOld(plan.leader.clone())),
        _ => Some(Expected::Is(plan.leader.clone())),
    }
}

/// The leader the plan expects now, if it expects one node (not between a switchover and its confirmation).
pub(crate) fn expected_leader_now(state: &State) -> Option<String> {
    match expected_leader(state)? {
        Expected::Is(leader) => Some(leader),
        Expected::NotOld(_) => None,
    }
}

/// The guard's probes before `action` on `node`, in order: `cluster-status` from a live node other than the
/// target, the leader's own `status`, and the failover settings where the action depends on them. The leader is
/// the one the latest `cluster-status` named: the guard's own once it is judged (it is judged first); under probe
/// rounds the leader's probes go out beside it, to the leader the one before named (`decide::round_of`).
pub(crate) fn guard_probes(state: &State, action: Action, node: &str) -> Vec<(Action, String)> {
    if kind(state, action).is_none() {
        return vec![];
    }
    let via = super::decide::observer(state, Some(node));
    let via_last = via.clone();
    let leader = state
        .last_cluster
        .as_ref()
        .and_then(|c| c.sole_leader())
        .map(str::to_string)
        .unwrap_or_else(|| via.clone());
    // The failover settings come last for every action: they also name the leader, which closes the window in
    // which the leader could move between the first probe and the action to the time of one probe.
    let mut probes = vec![
        (Action::ProbeClusterStatus, via),
        (Action::ProbeStatus, leader.clone()),
    ];
    // A profile file's topology is one tool's report (etcd's `endpoint status`, Patroni's DCS keys): a member it
    // lists may be cut off from the leader or already dead (a DCS key lives until its ttl). Before taking a node
    // out or moving leadership, each other member's own node probe must show it up too.
    let wide = matches!(kind(state, action), Some(Kind::TakesOut | Kind::Switchover))
        && file_reader(state);
    if wide {
        if let Some(s) = &state.sub {
            for n in &s.cluster.nodes {
                if n.name != node && n.name != leader {
                    probes.push((Action::ProbeStatus, n.name.clone()));
                }
            }
        }
    }
    probes.push((Action::ProbeFailover, leader));
    // chef-backend's failover settings name the leader again, the last look before the action; a profile file's
    // node and fence probes do not (a member's node probe passes even if someone else's switchover has just
    // made it the leader). So the topology is asked again, last, and judged as the first one was.
    if wide {
        probes.push((Action::ProbeClusterStatus, via_last));
    }
    // A system without a fence has no failover probe: its last look is the leader's own view.
    if let Some(s) = &state.sub {
        probes.retain(|(action, _)| s.profile.action(*action).is_some());
    }
    probes
}

/// How one guard observation is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    /// Safe, as far as this observation shows.
    Pass,
    /// Not safe yet (a node re-syncing, a probe that could not run): look again after a poll.
    Settle(Vec<String>),
    /// No single leader.
    Leaderless(Vec<String>),
    /// The cluster is not what the plan was made for; halt, naming it.
    Changed(String),
}

/// Whether the upgrade's profile reads its probes with a profile file's parsers (not a built-in reader).
fn file_reader(state: &State) -> bool {
    state
        .sub
        .as_ref()
        .is_some_and(|s| s.profile.reader.is_some())
}

/// Judges one of the guard's observations, made on node `on`, before `action` on `target`.
pub(crate) fn guard_finding(
    state: &State,
    action: Action,
    target: &str,
    on: &str,
    observation: &Observation,
) -> Finding {
    let Some(kind) = kind(state, action) else {
        return Finding::Pass;
    };
    let Some(sub) = state.sub.as_ref() else {
        return Finding::Pass;
    };
    let names: Vec<&str> = sub.cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let n = names.len() as u32;
    match observation {
        Observation::Unavailable { error } => {
            Finding::Settle(vec![format!("probe unavailable: {error}")])
        }
        Observation::Version { .. } | Observation::Package { .. } | Observation::Running { .. } => {
            Finding::Pass
        }
        other @ (Observation::ClusterStatus { .. }
        | Observation::NodeStatus { .. }
        | Observation::Members { .. }
        | Observation::Node { .. }) => {
            let leader = state.last_cluster.as_ref().and_then(|c| c.sole_leader());
            if let (
                Observation::Node {
                    leads: Some(leads), ..
                },
                Some(leader),
            ) = (other, leader)
            {
                if let Some(finding) = leader_word(on, *leads, leader) {
                    return finding;
                }
            }
            if let Some(topology) = other.topology() {
                topology_finding(state, kind, target, &names, &topology)
            } else if let (Observation::Node { up, caught_up, .. }, true) =
                (other, leader.is_some_and(|l| l != on) && file_reader(state))
            {
                member_finding(on, *up, *caught_up)
            } else if let Some(health) = other.node_health(n) {
                node_finding(state, kind, action, target, n, &health)
            } else {
                Finding::Pass
            }
        }
        Observation::Fence { blocked } => {
            if !matches!(kind, Kind::TakesOut | Kind::Switchover) {
                return Finding::Pass;
            }
            if *blocked != state.failover_blocked {
                return Finding::Changed(format!(
                    "automatic failover is {} but this upgrade expects it {}: someone else may be at work",
                    if *blocked { "blocked" } else { "allowed" },
                    if state.failover_blocked {
                        "blocked"
                    } else {
                        "allowed"
                    }
                ));
            }
            Finding::Pass
        }
        Observation::Failover { settings } => {
            let confirmed = state.last_cluster.as_ref().and_then(|c| c.sole_leader());
            if let (true, Some(confirmed)) = (settings.leader_shown, confirmed) {
                let shown = &settings.leader;
                if shown.as_deref() != Some(confirmed) {
                    return Finding::Changed(format!(
                        "the leader moved while the guard looked: cluster-status showed {confirmed}, the failover \
                         settings now show {}",
                        shown.as_deref().unwrap_or("no leader")
                    ));
                }
            }
            if !matches!(kind, Kind::TakesOut | Kind::Switchover) {
                return Finding::Pass;
            }
            // The last look before the action: nobody else went out since cluster-status.
            let others_out: Vec<&str> = settings
                .out_of_service
                .iter()
                .map(String::as_str)
                .filter(|n| *n != target)
                .collect();
            if !others_out.is_empty() {
                return Finding::Settle(vec![format!(
                    "{} out of service (cluster-status --json)",
                    others_out.join(", ")
                )]);
            }
            let expect_on = !state.failover_blocked;
            if settings.cluster != expect_on {
                return Finding::Changed(format!(
                    "cluster failover is {} but this upgrade expects it {}: someone else may be at work",
                    on_off(settings.cluster),
                    on_off(expect_on)
                ));
            }
            let off: Vec<&str> = names
                .iter()
                .copied()
                .filter(|name| settings.nodes.get(*name) != Some(&true))
                .collect();
            if !off.is_empty() {
                return Finding::Changed(format!(
                    "node-level failover is off or not shown on {}",
                    off.join(", ")
                ));
            }
            Finding::Pass
        }
    }
}

/// The guard's judgement of its look at the whole cluster.
fn topology_finding(
    state: &State,
    kind: Kind,
    target: &str,
    names: &[&str],
    topology: &Topology,
) -> Finding {
    let mut settle = Vec::new();
    // Bringing a node back (or installing on it while it is out) with a profile file's reader needs only a
    // leader that is not that node: such a system may not list a stopped member at all (etcd's `endpoint status`
    // leaves it out), and another node missing is a reason to bring this one back, not to wait. chef-backend
    // lists every node, stopped or not, and keeps its rule (every node listed), so its recorded checks replay
    // exactly.
    let listed = if kind == Kind::OnOut && file_reader(state) {
        &[][..]
    } else {
        names
    };
    for name in listed {
        if topology.member(name).is_none() {
            settle.push(format!("{name}: missing from cluster-status"));
        }
    }
    let Some(leader) = topology.sole_leader() else {
        let leaders = topology.leaders();
        return Finding::Leaderless(vec![format!(
            "{} leaders ({}), want exactly one",
            leaders.len(),
            leaders.join(", ")
        )]);
    };
    match expected_leader(state) {
        Some(Expected::Is(l)) if l != leader => {
            return Finding::Changed(format!(
                "the leader moved: the plan expects {l} to lead, but cluster-status shows {leader}"
            ))
        }
        Some(Expected::NotOld(old)) if old == leader => {
            return Finding::Changed(format!(
                "{old} leads again after the switchover away from it"
            ))
        }
        _ => {}
    }
    match kind {
        Kind::TakesOut | Kind::OnOut if leader == target => {
            return Finding::Changed(format!(
                "{target} is now the leader, and the plan has it as a follower"
            ))
        }
        Kind::Switchover if leader != target => {
            return Finding::Changed(format!(
                "{leader} leads, not {target}, the node the switchover would demote"
            ))
        }
        _ => {}
    }
    if matches!(kind, Kind::TakesOut | Kind::Switchover) {
        for m in &topology.members {
            let other = m.node != target && m.node != leader;
            if other && !(m.role == MemberRole::Follower && in_service(m)) {
                settle.push(format!(
                    "{} is {}, not an in-service follower",
                    m.node, m.shown
                ));
            }
        }
    }
    if settle.is_empty() {
        Finding::Pass
    } else {
        Finding::Settle(settle)
    }
}

/// A member's own word on whether it leads, against the topology's leader: the topology may be one member's
/// cached picture (Patroni answers GET /cluster from its DCS watch cache, which a member cut off with a minority
/// of the DCS keeps serving), so a member that says otherwise means the picture cannot be trusted now. Look
/// again after a poll; acting on it could take out the real leader.
fn leader_word(on: &str, leads: bool, leader: &str) -> Option<Finding> {
    match (on == leader, leads) {
        (true, false) => Some(Finding::Settle(vec![format!(
            "the topology shows {on} leading, but {on}'s own node probe says it does not lead (a stale \
             topology, or leadership moving)"
        )])),
        (false, true) => Some(Finding::Settle(vec![format!(
            "{on}'s own node probe says it leads, but the topology shows {leader} leading (a stale topology, \
             or leadership moving)"
        )])),
        _ => None,
    }
}

/// The guard's judgement of a member's own node probe (a profile file's, on a member that does not lead):
/// up, and not behind by its own account.
fn member_finding(on: &str, up: bool, caught_up: Option<bool>) -> Finding {
    match (up, caught_up) {
        (true, Some(false)) => Finding::Settle(vec![format!(
            "{on}: its own node probe shows it behind the leader"
        )]),
        (true, _) => Finding::Pass,
        (false, _) => Finding::Settle(vec![format!(
            "{on}: listed in the topology, but its own node probe shows it down"
        )]),
    }
}

/// The guard's judgement of the leader's own view.
fn node_finding(
    state: &State,
    kind: Kind,
    action: Action,
    target: &str,
    n: u32,
    health: &NodeHealth,
) -> Finding {
    let mut settle = Vec::new();
    for s in &health.services {
        match &s.shown {
            Some(_) if s.running => {}
            Some(shown) => settle.push(format!("the leader's {} is not running ({shown})", s.name)),
            None => settle.push(format!("the leader's status does not report {}", s.name)),
        }
    }
    // Bringing a node back (or installing on it while it is out) never lowers availability: it needs the
    // expected leader and its services, not every other follower synced (another node down is a reason
    // to bring this one back, and the next `stop` waits for it).
    if matches!(kind, Kind::Settings | Kind::OnOut) {
        return if settle.is_empty() {
            Finding::Pass
        } else {
            Finding::Settle(settle)
        };
    }
    // Who is out of service now, per the guard's own look at the cluster (it ran just before).
    let target_out = state
        .last_cluster
        .as_ref()
        .and_then(|c| c.member(target))
        .is_none_or(|m| !in_service(m));
    let want_synced = match kind {
        Kind::Switchover => n - 1,
        _ => n - 1 - u32::from(target_out),
    };
    match &health.replication {
        Some(Replication {
            service,
            counts: Some(c),
            ..
        }) => {
            if c.leaders != 1 {
                settle.push(format!("{service} shows {} leaders", c.leaders));
            }
            if c.caught_up < want_synced || (c.catching_up > 0 && !target_out) {
                settle.push(format!(
                    "the leader's status shows {service} synced: {}, syncing: {}; {} needs \
                     every other follower synced ({want_synced})",
                    c.caught_up, c.catching_up, action
                ));
            }
        }
        // A profile file's node probe sees one node; the others' standing is in the topology the guard
        // just looked at: every other member an in-service follower not shown behind.
        None if file_reader(state) => {
            let caught_up = state.last_cluster.as_ref().map_or(0, |c| {
                c.followers_in_service()
                    .filter(|m| {
                        m.known
                            && state
                                .sub
                                .as_ref()
                                .is_some_and(|s| s.cluster.node(&m.node).is_some())
                    })
                    .filter(|m| m.node != target && m.caught_up != Some(false))
                    .count() as u32
            });
            let want = match kind {
                Kind::Switchover => n.saturating_sub(1),
                _ => n.saturating_sub(2),
            };
            if caught_up < want {
                settle.push(format!(
                    "the topology shows {caught_up} other follower(s) in service and caught up; {action} \
                     needs {want}"
                ));
            }
        }
        other => settle.push(format!(
            "the leader's status shows no replication counts ({})",
            other
                .as_ref()
                .and_then(|r| r.shown.clone())
                .unwrap_or_else(|| "not reported".to_string())
        )),
    }
    if kind == Kind::TakesOut {
        if let Some(q) = &health.quorum {
            let after = q.healthy.saturating_sub(u32::from(!target_out));
            if after < n / 2 + 1 {
                settle.push(format!(
                    "{} would keep {after} of {n} members with {target} out, below a majority",
                    q.service
                ));
            }
        }
    }
    if settle.is_empty() {
        Finding::Pass
    } else {
        Finding::Settle(settle)
    }
}

/// A member the cluster shows in service: leader or follower, its data service up.
fn in_service(m: &Member) -> bool {
    matches!(m.role, MemberRole::Follower | MemberRole::Leader) && m.in_service
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Preflight's refusals for a node's installed version: not installed, not cleanly installed, a different
/// major version, or newer than the target (a downgrade is not an upgrade).
pub(crate) fn version_problems(
    profile: &Profile,
    node: &str,
    target: &str,
    version: Option<&str>,
    package_state: Option<&str>,
) -> Vec<String> {
    let Some(v) = version else {
        return vec![format!("{} is not installed on {node}", profile.system)];
    };
    let mut out = Vec::new();
    if let Some(st) = package_state {
        out.push(format!(
            "the {} package on {node} is {st}, not installed cleanly (a failed install?); fix it \
             first ({})",
            profile.system, profile.hints.fix_package
        ));
    }
    // A profile file states which changes roll; versions are the system's own, compared by their numbers.
    if let Some(rule) = profile.version_change {
        let same = version_numbers(v).is_some() && version_numbers(v) == version_numbers(target);
        if !same {
            if let Err(why) = check_version_change(rule, v, target) {
                out.push(format!("{node}: {why}"));
            }
        }
        return out;
    }
    match (version_key(v), version_key(target)) {
        (Some(have), Some(want)) => {
            if have.first() != want.first() {
                out.push(format!(
                    "{node} runs {v} and the target is {target}: a major-version change needs downtime \
                     ({}) and is not a rolling upgrade",
                    profile.hints.major_change
                ));
            } else if have > want {
                out.push(format!(
                    "{node} has {v}, newer than the target {target}: a downgrade is not an upgrade"
                ));
            }
        }
        _ => out.push(format!("cannot compare {node}'s version {v} with {target}")),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::builtin::Installer;
    use super::*;

    /// The refusals read the profile's words; for chef-backend on dpkg they are the bytes the core recorded
    /// before the rules moved onto `observe` (so that `replay --verify` of an old log reproduces them).
    #[test]
    fn version_refusals_keep_the_recorded_wording() {
        let dpkg = Profile::chef_backend(Installer::Dpkg, Procedure::default());
        assert_eq!(
            version_problems(&dpkg, "backend-1", "3.1.0-1", None, None),
            vec!["chef-backend is not installed on backend-1".to_string()]
        );
        assert_eq!(
            version_problems(
                &dpkg,
                "backend-1",
                "3.1.0-1",
                Some("2.9.0-1"),
                Some("half-configured")
            ),
            vec![
                "the chef-backend package on backend-1 is half-configured, not installed cleanly (a failed \
                 install?); fix it first (dpkg --configure -a)"
                    .to_string(),
                "backend-1 runs 2.9.0-1 and the target is 3.1.0-1: a major-version change needs downtime \
                 (chef-backend's down-for-upgrade) and is not a rolling upgrade"
                    .to_string(),
            ]
        );
        // On yum the hint names yum's repair: the one wording that differs from before the move (it said
        // `dpkg --configure -a` whatever the installer). `rpm -q --qf '%{VERSION}-%{RELEASE}'` prints no
        // package state, so no recorded yum log can hold the old text.
        let yum = Profile::chef_backend(Installer::Yum, Procedure::default());
        assert_eq!(
            version_problems(&yum, "backend-1", "3.1.0-1", Some("3.1.0-1"), Some("half-configured")),
            vec![
                "the chef-backend package on backend-1 is half-configured, not installed cleanly (a failed \
                 install?); fix it first (yum-complete-transaction)"
                    .to_string()
            ]
        );
    }

    /// The real `endpoint status` of an etcd cluster with m2 stopped (tests/fixtures/etcd/one-member-stopped):
    /// etcd leaves the stopped member out. Installing on it and starting it again must pass the guard; taking
    /// another member out must wait.
    #[test]
    fn a_member_left_out_of_the_topology_because_it_is_out_can_be_brought_back() {
        use super::super::cluster::ClusterFile;
        use super::super::profile_file::{parse_topology, ProfileFile};
        let cluster = ClusterFile::parse(
            "cluster.toml",
            include_str!("../../../tests/fixtures/etcd/cluster.toml"),
        )
        .unwrap();
        let profile =
            ProfileFile::parse("etcd.toml", include_str!("../../../profiles/etcd.toml")).unwrap();
        let topology = parse_topology(
            &profile.probes.topology,
            include_str!("../../../tests/fixtures/etcd/one-member-stopped/topology.stdout"),
            &cluster.nodes,
        )
        .unwrap();
        assert!(topology.member("m2").is_none(), "{topology:?}");
        let leader = topology.sole_leader().unwrap().to_string();
        let names = ["m1", "m2", "m3"];
        // An upgrade of this cluster with the etcd profile file (the rule is a profile reader's).
        let mut submitted = cluster.clone();
        submitted.profile_text = Some(include_str!("../../../profiles/etcd.toml").to_string());
        submitted.upgrade.target_version = Some("3.5.1".into());
        let mut state = State::default();
        let input = super::super::event::Input::Submit {
            upgrade: "01JGUARDTEST00000000000000".into(),
            cluster: submitted,
            package: String::new(),
            target_version: None,
            gates: vec![],
            plan_only: false,
            expected_plan_hash: None,
            executors_online: names.iter().map(|n| n.to_string()).collect(),
            requested_by: "tester".into(),
            now_ms: 1_000,
        };
        for e in super::super::decide::decide(&state, &input).unwrap() {
            state.apply(&e);
        }
        assert_eq!(
            topology_finding(&state, Kind::OnOut, "m2", &names, &topology),
            Finding::Pass
        );
        // chef-backend keeps its rule: every node listed (it lists stopped nodes).
        assert!(matches!(
            topology_finding(&State::default(), Kind::OnOut, "m2", &names, &topology),
            Finding::Settle(_)
        ));
        let other = names.iter().find(|n| **n != "m2" && **n != leader).unwrap();
        match topology_finding(&state, Kind::TakesOut, other, &names, &topology) {
            Finding::Settle(why) => {
                assert!(why.iter().any(|w| w.contains("m2: missing")), "{why:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
