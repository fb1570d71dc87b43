//! The operator's view (issue 14): what `status` (and `watch`, `replay`, `dev`) shows of each node is what
//! the cluster last showed, never the plan's picture and never a stale value as current. Checked against the
//! simulator's own state (`baton-sim state`) after every phase of an upgrade (at its gates, at the end), after
//! an abort and after a halt; and `watch` as a live display, run in a pseudo-terminal and read back through a
//! VT100 screen.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use workflow::service::api::{NodeView, StatusView};

use crate::e2e::{Env, Setup, TARGET, UPGRADE_TIMEOUT};

/// The simulator's truth about one node, in the view's words.
struct Truth {
    role: String,
    sync: String,
    services: String,
    installed: String,
    package: String,
    up: bool,
    running: String,
}

fn truth(node: &Value) -> Truth {
    let up = node["up"] == true;
    let pids: Vec<bool> = node["services"]
        .as_array()
        .expect("the simulator's services")
        .iter()
        .map(|s| !s["pid"].is_null())
        .collect();
    // The order of `chef-backend-ctl status`, which the view keeps.
    let names = ["leaderl", "etcd", "postgresql", "elasticsearch"];
    let down: Vec<&str> = names
        .iter()
        .zip(&pids)
        .filter(|(_, running)| !**running)
        .map(|(n, _)| *n)
        .collect();
    let services = if down.is_empty() {
        "running".to_string()
    } else if down.len() == names.len() {
        "down".to_string()
    } else {
        format!("down: {}", down.join(", "))
    };
    let role = node["role"].as_str().unwrap_or_default().to_string();
    // `cluster-status` shows a stopped node waiting for a leader, whatever its last role.
    let shown_role = if up {
        role.clone()
    } else {
        "waiting_for_leader".to_string()
    };
    let sync = if !up || !pids[2] {
        "offline".to_string()
    } else if role == "leader" {
        "leader".to_string()
    } else {
        node["pg"].as_str().unwrap_or_default().to_string()
    };
    Truth {
        role: shown_role,
        sync,
        services,
        installed: node["installed"].as_str().unwrap_or_default().to_string(),
        package: node["pkg"]
            .as_str()
            .unwrap_or("installed")
            .replace('_', "-"),
        up,
        running: node["running"].as_str().unwrap_or_default().to_string(),
    }
}

/// Every fact the view claims to know that the simulator contradicts now.
fn contradictions(env: &Env, view: &StatusView) -> Vec<String> {
    let state = env.sim_state();
    let mut wrong = Vec::new();
    for node in &view.nodes {
        let sim = state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node.name.as_str())
            .unwrap_or_else(|| panic!("{} is not in the simulator", node.name));
        let t = truth(sim);
        let mut check = |what: &str, shown: &Option<String>, real: &str| {
            if let Some(shown) = shown {
                if shown != real {
                    wrong.push(format!(
                        "{}: {what} shown {shown}, the simulator has {real}",
                        node.name
                    ));
                }
            }
        };
        check("role", &node.role, &t.role);
        check("sync", &node.sync, &t.sync);
        check("services", &node.services, &t.services);
        check("installed version", &node.installed_version, &t.installed);
        check("package state", &node.package, &t.package);
        match &node.running_version {
            Some(v) if !t.up => wrong.push(format!(
                "{}: shown running {v}, but its services are down",
                node.name
            )),
            Some(v) if *v != t.running => wrong.push(format!(
                "{}: shown running {v}, the simulator runs {}",
                node.name, t.running
            )),
            _ => {}
        }
        if node.last_seen_ms.is_none() && node.role.is_some() {
            wrong.push(format!("{}: facts without a last-seen time", node.name));
        }
    }
    wrong
}

/// The view agrees with the simulator on everything it claims to know.
pub(crate) fn assert_view_true(env: &Env, view: &StatusView, when: &str) {
    let wrong = contradictions(env, view);
    assert!(
        wrong.is_empty(),
        "{when}: the view contradicts the cluster:\n  {}\n{view:#?}\n{}",
        wrong.join("\n  "),
        env.logs()
    );
}

fn node<'a>(view: &'a StatusView, name: &str) -> &'a NodeView {
    view.nodes
        .iter()
        .find(|n| n.name == name)
        .unwrap_or_else(|| panic!("{name} is not in the view: {view:#?}"))
}

/// `name`'s facts in `fields` are known (not `null`).
fn assert_known(view: &StatusView, name: &str, fields: &[&str]) {
    let n = node(view, name);
    for field in fields {
        let value = match *field {
            "role" => &n.role,
            "sync" => &n.sync,
            "services" => &n.services,
            "installed" => &n.installed_version,
            "running" => &n.running_version,
            other => panic!("no field {other}"),
        };
        assert!(
            value.is_some() && n.last_seen_ms.is_some(),
            "{name}: {field} not known: {view:#?}"
        );
    }
}

/// Everything is known after a completed upgrade, true, and at the target.
pub(crate) fn assert_completed_view(env: &Env, view: &StatusView) {
    assert_view_true(env, view, "completed");
    for n in &view.nodes {
        assert_known(
            view,
            &n.name,
            &["role", "sync", "services", "installed", "running"],
        );
        assert_eq!(n.progress, "upgraded", "{view:#?}");
        assert_eq!(n.running_version.as_deref(), Some(env.target.as_str()));
        // The last output is of a command about this node, not of a cluster-wide one that ran there.
        assert!(
            matches!(
                n.last_action.as_deref(),
                Some("stop" | "install" | "start" | "demote" | "upgrade" | "upgrade_leader")
            ),
            "{view:#?}"
        );
    }
    assert!(view.updated_ms.is_some(), "{view:#?}");
}

const ALL: [&str; 5] = ["role", "sync", "services", "installed", "running"];
const BUT_RUNNING: [&str; 4] = ["role", "sync", "services", "installed"];

#[tokio::test(flavor = "multi_thread")]
async fn the_node_view_is_the_cluster_after_every_phase() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&[
        "--approve-before",
        "after-first-follower",
        "--approve-before",
        "before-switchover",
    ]);
    // Phase 1: the first follower upgraded; the upgrade waits at the gate.
    let view = env
        .wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    assert_view_true(&env, &view, "after the first follower");
    assert_known(&view, "backend-2", &ALL);
    for untouched in ["backend-1", "backend-3"] {
        assert_known(&view, untouched, &BUT_RUNNING);
        // chef-backend shows what is installed, not what runs: nobody observed it.
        assert_eq!(node(&view, untouched).running_version, None, "{view:#?}");
        assert_eq!(node(&view, untouched).progress, "pending");
    }
    assert_eq!(node(&view, "backend-1").role.as_deref(), Some("leader"));
    assert_eq!(node(&view, "backend-2").progress, "upgraded");
    assert!(view.item.is_some(), "the gate is the item: {view:#?}");
    env.baton_ok(&["approve", &upgrade, "after-first-follower"]);

    // Phase 2: every follower upgraded; before the switchover.
    env.wait_for("the second gate", UPGRADE_TIMEOUT, || {
        env.status(&upgrade).is_some_and(|v| {
            v.status == "waiting_approval"
                && v.reason
                    .as_deref()
                    .unwrap_or("")
                    .contains("before-switchover")
        })
    })
    .await;
    let view = env.status(&upgrade).unwrap();
    assert_view_true(&env, &view, "before the switchover");
    for follower in ["backend-2", "backend-3"] {
        assert_known(&view, follower, &ALL);
        assert_eq!(
            node(&view, follower).running_version.as_deref(),
            Some(TARGET)
        );
    }
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);

    // Mid-run, whatever the moment: a step in flight carries when it was scheduled and its timeout.
    let in_flight = tests::wait_until(UPGRADE_TIMEOUT, || {
        env.status(&upgrade).is_some_and(|v| {
            v.current
                .as_ref()
                .is_some_and(|c| c.scheduled_ms.is_some() && c.timeout_ms > 0)
                || v.status == "completed"
        })
    })
    .await;
    assert!(in_flight, "{}", env.logs());

    // The end: the new leader is the leader, every node at the target, as the simulator has it.
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    assert_completed_view(&env, &view);
    assert_eq!(
        view.nodes
            .iter()
            .find(|n| n.role.as_deref() == Some("leader"))
            .map(|n| n.name.clone()),
        env.leader(),
        "{view:#?}"
    );

    // The text table says the same, and so does `replay` at the last event.
    let text = env.baton_ok(&["status", &upgrade]);
    let leader = env.leader().unwrap();
    let row = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{leader} ")))
        .unwrap_or_else(|| panic!("no row for {leader}:\n{text}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "leader", "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("NODE") && l.contains("LAST SEEN")),
        "{text}"
    );
    let replayed = env.baton_ok(&["replay", &upgrade]);
    // The gate's line names the command to run with this upgrade's id.
    assert!(
        replayed.contains(&format!(
            "run `baton approve {upgrade} after-first-follower`"
        )),
        "{replayed}"
    );
    let replayed_rows: Vec<String> = replayed.lines().map(str::to_string).collect();
    assert_eq!(
        role_on_screen(&replayed_rows, &leader).as_deref(),
        Some("leader"),
        "{replayed}"
    );
    env.assert_completed_safely(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_an_abort_the_view_shows_the_new_version_and_the_true_sync_state() {
    let env = Env::start(Setup {
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    // Abort while the first follower runs the new version and re-syncs.
    env.wait_for(
        "backend-2 to re-sync on the new version",
        UPGRADE_TIMEOUT,
        || env.resyncing_after_upgrade("backend-2"),
    )
    .await;
    env.baton_ok(&["abort", &upgrade, "--reason", "view test"]);
    let view = env
        .wait_status(
            &upgrade,
            &["aborted", "halted", "completed"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "aborted", "{view:#?}");
    assert_view_true(&env, &view, "after the abort");
    let b2 = node(&view, "backend-2");
    assert_known(&view, "backend-2", &ALL);
    assert_eq!(b2.running_version.as_deref(), Some(TARGET), "{view:#?}");
    assert_eq!(b2.sync.as_deref(), Some("synced"), "{view:#?}");
    // The abort may come as its wait for the sync ends: then backend-2 is done and backend-3 was caught.
    if b2.progress == "interrupted" {
        assert_eq!(
            node(&view, "backend-3").progress,
            "not_started",
            "{view:#?}"
        );
    } else {
        assert_eq!(b2.progress, "upgraded", "{view:#?}");
        assert_ne!(node(&view, "backend-3").progress, "upgrading", "{view:#?}");
    }
    for n in &env.nodes {
        assert_known(&view, n, &["role", "sync", "services"]);
    }
    env.assert_log_verifies(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_halt_the_view_shows_what_the_cluster_showed_last() {
    // backend-2 never re-syncs after its restart: the upgrade halts on the sync timeout.
    let env = Env::start(Setup {
        faults: vec!["backend-2:sync-never"],
        sync_timeout_ms: 2000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "halted", "{view:#?}");
    assert_view_true(&env, &view, "after the halt");
    let b2 = node(&view, "backend-2");
    assert_ne!(b2.progress, "upgrading", "{view:#?}");
    assert_ne!(b2.progress, "syncing", "{view:#?}");
    assert_eq!(b2.progress, "interrupted", "{view:#?}");
    assert_eq!(b2.running_version.as_deref(), Some(TARGET), "{view:#?}");
    // The leader's counts (one syncing, one synced) and backend-3 known synced tell it.
    assert_eq!(b2.sync.as_deref(), Some("syncing"), "{view:#?}");
    assert_eq!(node(&view, "backend-1").role.as_deref(), Some("leader"));
    env.assert_log_verifies(&upgrade);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_install_leaves_a_view_that_says_what_is_not_known() {
    // The install fails and leaves the package half-configured; the wind-down cannot start the node again.
    let env = Env::start(Setup {
        faults: vec!["backend-2:install-fails"],
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "halted", "{view:#?}");
    assert_view_true(&env, &view, "after the failed install");
    let b2 = node(&view, "backend-2");
    assert_ne!(b2.progress, "upgrading", "{view:#?}");
    // Nothing observed its version since the failed install: not shown as if known.
    if b2.installed_version.is_some() {
        assert_eq!(b2.package.as_deref(), Some("half-configured"), "{view:#?}");
    }
    assert!(b2.last_seen_ms.is_some(), "{view:#?}");
    env.assert_log_verifies(&upgrade);
}

/// A child process on a pseudo-terminal; killed on drop.
struct OnPty {
    child: Child,
    screen: Arc<Mutex<vt100::Parser>>,
    raw: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for OnPty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const ROWS: u16 = 40;
const COLS: u16 = 220;

/// Runs `baton watch UPGRADE` with a pseudo-terminal (nix's `openpty`, already
/// a dependency) as its stdin, stdout and stderr.
fn watch_on_pty(env: &Env, upgrade: &str, no_color: bool) -> OnPty {
    let size = nix::pty::Winsize {
        ws_row: ROWS,
        ws_col: COLS,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).expect("a pseudo-terminal");
    let mut cmd = env.baton_cmd();
    cmd.args(["watch", upgrade]);
    if no_color {
        cmd.env("NO_COLOR", "1");
    } else {
        cmd.env_remove("NO_COLOR");
    }
    let slave: OwnedFd = pty.slave;
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    let child = cmd.spawn().expect("baton watch starts");
    // Our copies of the slave are closed now (moved into the command and dropped with it below), so the
    // master reads EOF/EIO once the child exits.
    drop(cmd);
    let screen = Arc::new(Mutex::new(vt100::Parser::new(
        std::num::NonZeroU16::new(ROWS).unwrap(),
        std::num::NonZeroU16::new(COLS).unwrap(),
        1000,
    )));
    let raw = Arc::new(Mutex::new(Vec::new()));
    let mut master = std::fs::File::from(pty.master);
    let (s, r) = (screen.clone(), raw.clone());
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match master.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    s.lock().unwrap().process(&buf[..n]);
                    r.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            }
        }
    });
    OnPty {
        child,
        screen,
        raw,
        reader: Some(reader),
    }
}

/// The screen's rows as text.
fn rows(pty: &OnPty) -> Vec<String> {
    pty.screen.lock().unwrap().screen().rows(0, COLS).collect()
}

/// The ROLE cell of `node`'s row in the table on screen.
fn role_on_screen(rows: &[String], node: &str) -> Option<String> {
    rows.iter()
        .map(|r| r.split_whitespace().collect::<Vec<&str>>())
        .find(|cells| cells.first() == Some(&node) && cells.len() > 2)
        .map(|cells| cells[1].to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_on_a_terminal_redraws_the_node_table_in_place() {
    let env = Env::start(Setup {
        // Time to see the screen between the switchover and the end.
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let mut pty = watch_on_pty(&env, &upgrade, false);

    // After the switchover, while the old leader is still being upgraded, the table names the new leader.
    env.wait_for("the switchover", UPGRADE_TIMEOUT, || {
        env.leader().is_some_and(|l| l != "backend-1")
    })
    .await;
    let new_leader = env.leader().unwrap();
    let mut last = Vec::new();
    let named = tests::wait_until(UPGRADE_TIMEOUT, || {
        last = rows(&pty);
        role_on_screen(&last, &new_leader).as_deref() == Some("leader")
    })
    .await;
    assert!(
        named,
        "the live table never named {new_leader} the leader:\n{}",
        last.join("\n")
    );
    assert_ne!(
        role_on_screen(&last, "backend-1").as_deref(),
        Some("leader"),
        "{}",
        last.join("\n")
    );

    // The end: watch exits by itself with the final state on screen.
    let exited = tests::wait_until(UPGRADE_TIMEOUT, || {
        pty.child.try_wait().ok().flatten().is_some()
    })
    .await;
    assert!(exited, "watch did not end\n{}", rows(&pty).join("\n"));
    pty.reader.take().unwrap().join().unwrap();
    assert!(pty.child.try_wait().unwrap().unwrap().success());
    let screen = rows(&pty);
    let text = screen.join("\n");
    // Redrawn, not appended: the header is on the first row, once; nothing scrolled off the top, although
    // many frames were drawn.
    let header = format!("upgrade {upgrade}  cluster e2e  COMPLETED");
    assert!(screen[0].starts_with(&header), "{text}");
    assert_eq!(
        text.matches(&format!("upgrade {upgrade}")).count(),
        1,
        "{text}"
    );
    let raw = String::from_utf8_lossy(&pty.raw.lock().unwrap()).to_string();
    let frames = raw.matches(&format!("upgrade {upgrade}")).count();
    assert!(frames > 3, "only {frames} frames were drawn");
    // Some frame showed a step in flight with its elapsed time and timeout, and the plan item with its bound.
    assert!(
        raw.contains(" (running ") && raw.contains(", timeout "),
        "no step with its time and timeout was shown"
    );
    assert!(
        raw.contains("wait until backend-2 is healthy and synced ("),
        "no plan item was shown"
    );
    assert_eq!(
        pty.screen.lock().unwrap().screen().scrollback_len(),
        0,
        "the display scrolled:\n{text}"
    );
    for n in &env.nodes {
        let row = screen
            .iter()
            .find(|r| r.split_whitespace().next() == Some(n.as_str()))
            .unwrap_or_else(|| panic!("no row for {n}:\n{text}"));
        assert!(
            row.contains("upgraded") && row.contains(TARGET),
            "{n}: {row}\n{text}"
        );
    }
    assert_eq!(
        role_on_screen(&screen, &new_leader).as_deref(),
        Some("leader")
    );
    assert!(
        text.contains("upgrade COMPLETED"),
        "the timeline follows: {text}"
    );
    // Colour without NO_COLOR: the status word is green.
    let col = screen[0].find("COMPLETED").unwrap() as u16;
    let cell = pty
        .screen
        .lock()
        .unwrap()
        .screen()
        .cell(0, col)
        .map(|c| c.fgcolor());
    assert_eq!(cell, Some(vt100::Color::Idx(2)), "{text}");

    // NO_COLOR: the same display without a colour sequence.
    let mut plain = watch_on_pty(&env, &upgrade, true);
    let exited = tests::wait_until(UPGRADE_TIMEOUT, || {
        plain.child.try_wait().ok().flatten().is_some()
    })
    .await;
    assert!(exited);
    plain.reader.take().unwrap().join().unwrap();
    let raw = String::from_utf8_lossy(&plain.raw.lock().unwrap()).to_string();
    assert!(raw.contains("COMPLETED"), "{raw}");
    assert!(
        !raw.contains("\x1b[1;3") && !raw.contains("\x1b[1m"),
        "colour despite NO_COLOR: {raw:?}"
    );

    // Not a terminal: today's appended lines, no cursor movement.
    let out = env.baton_ok(&["watch", &upgrade]);
    assert!(!out.contains('\x1b'), "{out:?}");
    assert!(out.contains("upgrade COMPLETED"), "{out}");
}
