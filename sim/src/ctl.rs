//! `chef-backend-ctl` as the simulator implements it.
//!
//! Commands that act on the cluster need the local node's services running (they talk to the local
//! etcd/leaderl); on a stopped node they fail with an error naming that. Commands that wait (`demote`,
//! `promote`, `upgrade`, the `status-hang` fault) poll the state with the lock released between polls.
//!
//! Exit codes: 0 on success; 1 on any refused or failed command (`demote` with failover disabled, election
//! timeout, start failure...); 1 with the usage text for an unknown subcommand (as omnibus-ctl does).
//! `status` (and `status --simple`) exits 0 whatever the services' state, as omnibus-ctl does: the table
//! (or the runit lines) is the answer (see sim/README.md for the finding and its sources).

use std::thread::sleep;
use std::time::Duration;

use crate::model::{Cluster, ElectionTrigger, Pg, Role, PGSQL, SERVICES};
use crate::render;
use crate::store::{now_ms, Sim};
use crate::{Error, Output};

const POLL: Duration = Duration::from_millis(20);

/// The help text printed by `chef-backend-ctl help` and after a usage error.
pub const USAGE: &str = "\
chef-backend-ctl: command (subcommand)

Cluster Management Commands:
  cluster-status
    Display the status of the members of the cluster (--json for machine-readable output).
  demote
    Demote the leader of the cluster; a synced follower is elected (needs failover enabled).
  promote
    Promote the named node to leader.
  set-cluster-failover
    Enable or disable automatic failover for the cluster: on|off|true|false|enabled|disabled.
  set-node-failover
    Enable or disable failover for this node: on|off|true|false|enabled|disabled.
  upgrade
    Restart onto the installed package and verify the node rejoined (--failover on the leader).

Service Management Commands:
  restart
    Stop the services if they are running, then start them again.
  start
    Start services if they are down, and restart them if they stop.
  status
    Show the status of all the services (--simple for runit lines).
  stop
    Stop the services, and do not restart them.
";

fn not_running(node: &str) -> Output {
    Output::fail(
        1,
        format!("Error: could not reach etcd on {node}: connection refused (chef-backend services are down; run `chef-backend-ctl start`)\n"),
    )
}

fn parse_state(s: Option<&String>) -> Option<bool> {
    match s.map(|s| s.as_str()) {
        Some("on" | "true" | "enabled") => Some(true),
        Some("off" | "false" | "disabled") => Some(false),
        _ => None,
    }
}

fn index(c: &Cluster, node: &str) -> Result<usize, Error> {
    c.index(node)
        .ok_or_else(|| Error::UnknownNode(node.to_string()))
}

/// Runs `chef-backend-ctl ARGS` on `node`.
pub fn run(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let sub = args.first().map(|s| s.as_str());
    let rest = args.get(1..).unwrap_or(&[]);
    match sub {
        Some("help" | "-h" | "--help") => Ok(Output::ok(USAGE)),
        Some("status") => status(sim, node, rest),
        Some("cluster-status") => cluster_status(sim, node, rest),
        Some("stop") if rest.is_empty() => stop(sim, node),
        Some("start") if rest.is_empty() => start(sim, node, "start"),
        Some("restart") if rest.is_empty() => start(sim, node, "restart"),
        Some("stop" | "start" | "restart") => Ok(Output::fail(
            1,
            format!(
                "{} {}: controlling a single service is not simulated\n",
                args[0], rest[0]
            ),
        )),
        Some("set-cluster-failover") => set_failover(sim, node, rest, true),
        Some("set-node-failover") => set_failover(sim, node, rest, false),
        Some("demote") => demote(sim, node),
        Some("promote") => promote(sim, node, rest),
        Some("upgrade") => upgrade(sim, node, rest),
        Some(_) => Ok(Output {
            stdout: format!("I don't know that command.\n{USAGE}"),
            stderr: String::new(),
            code: 1,
        }),
        None => Ok(Output {
            stdout: USAGE.to_string(),
            stderr: String::new(),
            code: 1,
        }),
    }
}

fn status(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let simple = args.iter().any(|a| a == "--simple");
    let hang = {
        let c = sim.state()?;
        c.nodes[index(&c, node)?].faults.status_hang_s
    };
    if hang > 0 {
        sleep(Duration::from_secs(hang));
    }
    sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        let (text, code) = if simple {
            render::status_simple(tx.cluster, i, now)
        } else {
            render::status(tx.cluster, i, now)
        };
        Ok(Output {
            stdout: text,
            stderr: String::new(),
            code,
        })
    })?
}

fn cluster_status(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let json = args.iter().any(|a| a == "--json");
    let c = sim.state()?;
    if !c.nodes[index(&c, node)?].up {
        return Ok(not_running(node));
    }
    Ok(Output::ok(if json {
        render::cluster_status_json(&c)
    } else {
        render::cluster_status(&c)
    }))
}

fn alphabetical() -> Vec<usize> {
    let mut order: Vec<usize> = (0..SERVICES.len()).collect();
    order.sort_by_key(|&k| SERVICES[k]);
    order
}

fn stop(sim: &Sim, node: &str) -> Result<Output, Error> {
    sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        tx.stop(i, now, "stop");
        let n = &tx.cluster.nodes[i];
        let mut out = String::new();
        for k in alphabetical() {
            let secs = now.saturating_sub(n.services[k].since_ms) / 1000;
            out.push_str(&format!(
                "ok: down: {}: {secs}s, normally up\n",
                SERVICES[k]
            ));
        }
        Ok(Output::ok(out))
    })?
}

/// Start lines for a node's services (after a successful start).
fn run_lines(c: &Cluster, i: usize, now: u64) -> String {
    let n = &c.nodes[i];
    let mut out = String::new();
    for k in alphabetical() {
        let s = &n.services[k];
        let secs = now.saturating_sub(s.since_ms) / 1000;
        match s.pid {
            Some(pid) => out.push_str(&format!("ok: run: {}: (pid {pid}) {secs}s\n", SERVICES[k])),
            None if k == PGSQL && n.no_start_pgsql => out.push_str(&format!(
                "ok: down: {}: {secs}s, normally up (held down by the no-start-pgsql sentinel until re-synced)\n",
                SERVICES[k]
            )),
            None => out.push_str(&format!("ok: down: {}: {secs}s, normally up\n", SERVICES[k])),
        }
    }
    out
}

fn failed_start_lines() -> String {
    alphabetical()
        .into_iter()
        .map(|k| format!("timeout: down: {}: 0s, normally up, want up\n", SERVICES[k]))
        .collect()
}

/// The output of a start that could not bring the services up (exit 1); `why` goes to stderr.
fn failed_start(why: Option<String>) -> Output {
    Output {
        stdout: failed_start_lines(),
        stderr: why
            .filter(|w| !w.starts_with("fault "))
            .map(|w| format!("Error: services cannot start: {w}\n"))
            .unwrap_or_default(),
        code: 1,
    }
}

/// `start` or `restart` (`by`).
fn start(sim: &Sim, node: &str, by: &str) -> Result<Output, Error> {
    sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        if by == "restart" {
            tx.stop(i, now, by);
        }
        let blocker = tx.start_blocker(i);
        if !tx.start(i, now, by) {
            return Ok(failed_start(blocker));
        }
        Ok(Output::ok(run_lines(tx.cluster, i, now)))
    })?
}

fn set_failover(sim: &Sim, node: &str, args: &[String], cluster: bool) -> Result<Output, Error> {
    let cmd = if cluster {
        "set-cluster-failover"
    } else {
        "set-node-failover"
    };
    let Some(enabled) = parse_state(args.first()) else {
        let got = args.first().map(|s| s.as_str()).unwrap_or("");
        return Ok(Output::fail(
            1,
            format!("Invalid state {got:?}. Usage: chef-backend-ctl {cmd} on|off|true|false|enabled|disabled\n"),
        ));
    };
    sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        if !tx.cluster.nodes[i].up {
            return Ok(not_running(node));
        }
        let word = if enabled { "enabled" } else { "disabled" };
        if cluster {
            tx.set_cluster_failover(node, now, enabled);
            Ok(Output::ok(format!("Cluster failover {word}.\n")))
        } else {
            tx.set_node_failover(i, now, enabled);
            Ok(Output::ok(format!("Failover {word} for {node}.\n")))
        }
    })?
}

/// Sleeps in the open (lock released) until `deadline`.
fn sleep_until(deadline: u64) {
    loop {
        let now = now_ms();
        if now >= deadline {
            return;
        }
        sleep(POLL.min(Duration::from_millis(deadline - now)));
    }
}

/// Polls (lock released between polls) until `check` answers or `deadline` passes.
fn poll<R>(
    sim: &Sim,
    deadline: u64,
    check: impl Fn(&Cluster) -> Option<R>,
) -> Result<Option<R>, Error> {
    loop {
        let c = sim.state()?;
        if let Some(r) = check(&c) {
            return Ok(Some(r));
        }
        if now_ms() >= deadline {
            return Ok(None);
        }
        sleep(POLL);
    }
}

/// Waits for the election started by a demote of `node`; `Ok(Ok(new_leader))` or `Ok(Err(message))`.
fn await_election(sim: &Sim, node: &str, started: u64) -> Result<Result<String, String>, Error> {
    let c = sim.state()?;
    let i = index(&c, node)?;
    let timeout = c.timings.demote_timeout_ms;
    let deadline = started + timeout;
    if c.nodes[i].faults.demote_times_out {
        sleep_until(deadline);
        return Ok(Err(format!(
            "Timed out after {timeout} ms waiting for a new leader to be elected.\n"
        )));
    }
    let outcome = poll(sim, deadline, |c| {
        if c.election.is_some() {
            return None;
        }
        Some(match c.leader() {
            Some(l) if l != i => Ok(c.nodes[l].name.clone()),
            _ => Err("No new leader was elected: no synced follower was eligible (the cluster has no leader).\n".to_string()),
        })
    })?;
    Ok(outcome.unwrap_or_else(|| {
        Err(format!(
            "Timed out after {timeout} ms waiting for a new leader to be elected.\n"
        ))
    }))
}

/// Checks the local node is the leader and failover allows a switchover; demotes it.
fn begin_demote(
    sim: &Sim,
    node: &str,
    trigger: ElectionTrigger,
    by: &str,
) -> Result<Result<u64, Output>, Error> {
    sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        let n = &tx.cluster.nodes[i];
        if !n.up {
            return Ok(Err(not_running(node)));
        }
        if n.role != Role::Leader {
            return Ok(Err(Output::fail(1, format!("{node} is not the leader (role: {}); nothing to demote.\n", n.role.as_str()))));
        }
        if !tx.cluster.failover || !n.failover {
            let which = if !tx.cluster.failover { "cluster failover" } else { "node failover" };
            return Ok(Err(Output::fail(
                1,
                format!("Cannot demote {node}: {which} is disabled. Enable it with `chef-backend-ctl set-cluster-failover on` (and set-node-failover on).\n"),
            )));
        }
        tx.demote(i, now, trigger, by, None);
        Ok(Ok(now))
    })?
}

fn demote(sim: &Sim, node: &str) -> Result<Output, Error> {
    let started = match begin_demote(sim, node, ElectionTrigger::Demote, "demote")? {
        Ok(t) => t,
        Err(out) => return Ok(out),
    };
    Ok(match await_election(sim, node, started)? {
        Ok(leader) => Output::ok(format!("Demoted {node}; {leader} was elected leader.\n")),
        Err(msg) => Output::fail(1, msg),
    })
}

fn promote(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let Some(target) = args.first().cloned() else {
        return Ok(Output::fail(
            1,
            "Usage: chef-backend-ctl promote NODE_NAME\n",
        ));
    };
    let begun = sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        if !tx.cluster.nodes[i].up {
            return Ok(Err(not_running(node)));
        }
        let Some(t) = tx.cluster.index(&target) else {
            return Ok(Err(Output::fail(1, format!("Unknown node {target:?}.\n"))));
        };
        let tn = &tx.cluster.nodes[t];
        if tn.up && tn.role == Role::Leader {
            return Ok(Err(Output::ok(format!(
                "{target} is already the leader.\n"
            ))));
        }
        if !(tn.up
            && tn.pg == Pg::Synced
            && matches!(tn.role, Role::Follower | Role::WaitingForLeader))
        {
            return Ok(Err(Output::fail(
                1,
                format!(
                    "{target} is not eligible for leadership (role {}, not a synced follower).\n",
                    tn.role.as_str()
                ),
            )));
        }
        match tx.cluster.leader() {
            Some(l) => tx.demote(
                l,
                now,
                ElectionTrigger::Promote,
                "promote",
                Some(target.clone()),
            ),
            None => tx.promote_leaderless(&target, now),
        }
        Ok(Ok(now))
    })??;
    let started = match begun {
        Ok(t) => t,
        Err(out) => return Ok(out),
    };
    let deadline = started + sim.state()?.timings.demote_timeout_ms;
    let elected = poll(sim, deadline, |c| {
        c.election
            .is_none()
            .then(|| c.leader().map(|l| c.nodes[l].name.clone()))
    })?;
    Ok(match elected.flatten() {
        Some(l) if l == target => Output::ok(format!("{target} was promoted to leader.\n")),
        _ => Output::fail(1, format!("{target} was not elected leader.\n")),
    })
}

fn upgrade(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let failover = args.iter().any(|a| a == "--failover");
    if let Some(bad) = args.iter().find(|a| *a != "--failover") {
        return Ok(Output::fail(
            1,
            format!("Unknown option {bad}. Usage: chef-backend-ctl upgrade [--failover]\n"),
        ));
    }
    let c = sim.state()?;
    let i = index(&c, node)?;
    let n = &c.nodes[i];
    let mut stdout = String::new();
    if n.up && n.role == Role::Leader {
        if n.installed == n.running {
            return Ok(Output::ok(format!(
                "{node} already runs {}; nothing to upgrade.\n",
                n.running
            )));
        }
        if !failover {
            return Ok(Output::fail(
                1,
                format!("{node} is the leader. Run `chef-backend-ctl upgrade --failover` to hand leadership to a synced follower first.\n"),
            ));
        }
        let started = match begin_demote(sim, node, ElectionTrigger::UpgradeFailover, "upgrade")? {
            Ok(t) => t,
            Err(out) => return Ok(out),
        };
        match await_election(sim, node, started)? {
            Ok(leader) => stdout.push_str(&format!("Failed over: {leader} is the leader.\n")),
            Err(msg) => return Ok(Output::fail(1, msg)),
        }
        // The other nodes re-sync from the new leader: restarting this one before they are synced
        // would leave the new leader without a synced follower, so wait for them first.
        let deadline = now_ms() + c.timings.upgrade_timeout_ms;
        let resynced = poll(sim, deadline, |c| {
            c.nodes
                .iter()
                .enumerate()
                .all(|(k, n)| k == i || n.in_service())
                .then_some(())
        })?;
        if resynced.is_none() {
            return Ok(Output {
                stdout,
                stderr: format!(
                    "Timed out after {} ms waiting for the other nodes to re-sync from the new leader; {node} was not restarted.\n",
                    c.timings.upgrade_timeout_ms
                ),
                code: 1,
            });
        }
        stdout.push_str("The other nodes re-synced from the new leader.\n");
    }
    let restarted = sim.transact(|tx, now| {
        let i = index(tx.cluster, node)?;
        let n = &tx.cluster.nodes[i];
        if n.up && n.installed == n.running {
            return Ok(Ok(now));
        }
        tx.stop(i, now, "upgrade");
        let blocker = tx.start_blocker(i);
        if !tx.start(i, now, "upgrade") {
            return Ok(Err(failed_start(blocker)));
        }
        Ok(Ok(now))
    })??;
    let started = match restarted {
        Ok(t) => t,
        Err(out) => return Ok(out),
    };
    let deadline = started + c.timings.upgrade_timeout_ms;
    let synced = poll(sim, deadline, |c| {
        let n = &c.nodes[i];
        // A stopped leader nobody replaced resumes leadership on start: that also counts as rejoined.
        (n.in_service() && n.running == n.installed).then(|| n.running.clone())
    })?;
    Ok(match synced {
        Some(v) => {
            Output::ok(stdout + &format!("{node} runs {v}, rejoined the cluster and is synced.\n"))
        }
        None => Output {
            stdout,
            stderr: format!(
                "Timed out after {} ms waiting for {node} to rejoin the cluster and sync.\n",
                c.timings.upgrade_timeout_ms
            ),
            code: 1,
        },
    })
}
