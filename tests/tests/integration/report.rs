//! `baton report` as an operator runs it: a real simulated upgrade (e2e's
//! `Env`: nats-server, the service, executors, the simulator), its HTML
//! report written through the service, from an export (`--file`) and from
//! the log itself (`--db`), then opened in headless Chromium: a screenshot,
//! and the DOM as the browser built it, checked against the log (one bar per
//! scheduled step attempt, one lane per node, the end and its reason).
//!
//! `BATON_REPORT_SCREENSHOT=docs/report.png` also copies the completed
//! upgrade's screenshot there (the README's picture).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tests::browser::{attr, start_tags, tag_name};
use tests::Chromium;
use workflow::core::Event;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

/// Runs `baton report UPGRADE --out FILE EXTRA...` and returns the file.
fn write_report(env: &Env, upgrade: &str, name: &str, extra: &[&str]) -> PathBuf {
    let out = env.dir.path().join(name);
    let out_arg = out.display().to_string();
    let mut args = vec!["report", upgrade, "--out", &out_arg];
    args.extend_from_slice(extra);
    let said = env.baton_ok(&args);
    assert!(said.contains("written to"), "{said}");
    out
}

/// The (step, attempt) of every `StepScheduled` of the log.
fn scheduled(events: &[Event]) -> BTreeSet<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled { step, attempt, .. } => Some((*step, u64::from(*attempt))),
            _ => None,
        })
        .collect()
}

/// What the browser's DOM shows of a report.
struct Dom {
    text: String,
}

impl Dom {
    fn load(chromium: &Chromium, page: &Path) -> Dom {
        let started = Instant::now();
        let text = chromium
            .dump_dom(page)
            .expect("chromium renders the report");
        eprintln!("chromium --dump-dom took {:?}", started.elapsed());
        Dom { text }
    }

    fn tags(&self) -> Vec<&str> {
        start_tags(&self.text)
    }

    /// The tags that carry attribute `name`.
    fn with(&self, name: &str) -> Vec<&str> {
        self.tags()
            .into_iter()
            .filter(|t| attr(t, name).is_some())
            .collect()
    }

    /// The (step, attempt) of every bar.
    fn bars(&self) -> Vec<(u64, u64)> {
        self.with("data-step-id")
            .iter()
            .map(|t| {
                let number = |name| attr(t, name).and_then(|v| v.parse().ok()).unwrap();
                (number("data-step-id"), number("data-attempt"))
            })
            .collect()
    }

    /// The node of every node lane.
    fn node_lanes(&self) -> Vec<String> {
        self.with("data-lane")
            .iter()
            .filter(|t| attr(t, "data-lane") == Some("node"))
            .map(|t| attr(t, "data-node").unwrap().to_string())
            .collect()
    }

    fn end_status(&self) -> String {
        let tags = self.with("data-end-status");
        assert_eq!(tags.len(), 1, "{}", self.text);
        attr(tags[0], "data-end-status").unwrap().to_string()
    }

    /// The text of the element that carries `data-end-reason`.
    fn end_reason(&self) -> String {
        let at = self.text.find("data-end-reason").expect("an end reason");
        let rest = &self.text[at..];
        let open = rest.find('>').unwrap() + 1;
        let close = rest[open..].find('<').unwrap();
        rest[open..open + close].to_string()
    }

    fn verdict(&self, what: &str) -> String {
        self.with("data-verify")
            .iter()
            .find(|t| attr(t, "data-verify") == Some(what))
            .and_then(|t| attr(t, "data-verdict"))
            .unwrap_or_else(|| panic!("no {what} finding: {}", self.text))
            .to_string()
    }
}

/// The checks every report of a finished upgrade must pass in the browser.
fn assert_drawn(dom: &Dom, env: &Env, events: &[Event]) {
    let bars = dom.bars();
    let want = scheduled(events);
    assert_eq!(bars.len(), want.len(), "one bar per scheduled step attempt");
    assert_eq!(bars.iter().copied().collect::<BTreeSet<_>>(), want);
    let mut lanes = dom.node_lanes();
    lanes.sort();
    assert_eq!(lanes, env.nodes, "one lane per node");
    assert_eq!(dom.verdict("chain"), "ok", "{}", dom.text);
    assert_eq!(dom.verdict("decisions"), "ok", "{}", dom.text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_completed_upgrade_renders_in_chromium_with_one_bar_per_step() {
    let chromium = Chromium::find();
    let mut env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let events = env.events(&upgrade);

    // Through the service.
    let page = write_report(&env, &upgrade, "upgrade.html", &[]);
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("https:") && !html.contains("<link"),
        "the page is self-contained and runs no script"
    );
    let dom = Dom::load(&chromium, &page);
    assert_drawn(&dom, &env, &events);
    assert_eq!(dom.end_status(), "completed");
    let reason = dom.end_reason();
    assert!(
        reason.contains("completed") && reason.contains(&env.target),
        "{reason}"
    );
    // Who approved the gate.
    assert!(
        dom.with("data-gate")
            .iter()
            .any(|t| attr(t, "data-gate") == Some("before-switchover")
                && attr(t, "data-approved-by") == Some("alice")),
        "{}",
        dom.text
    );
    // The leader lane shows the switchover: the plan's leader, then another.
    let leaders: Vec<String> = dom
        .with("data-leader")
        .iter()
        .filter_map(|t| attr(t, "data-leader"))
        .filter(|l| env.nodes.iter().any(|n| n == l))
        .map(str::to_string)
        .collect();
    let old_leader = view
        .plan
        .as_ref()
        .and_then(|p| p["leader"].as_str())
        .unwrap();
    assert_eq!(
        leaders.first().map(String::as_str),
        Some(old_leader),
        "{leaders:?}"
    );
    assert!(
        leaders.last().is_some_and(|l| l != old_leader),
        "the last leader shown is the new one: {leaders:?}"
    );
    // Every node was taken out of service and shown back.
    for node in &env.nodes {
        let spans: Vec<&str> = dom
            .with("data-out-of-service")
            .into_iter()
            .filter(|t| attr(t, "data-out-of-service") == Some(node.as_str()))
            .collect();
        assert!(!spans.is_empty(), "{node} was never shown out of service");
        assert!(
            spans.iter().all(|t| attr(t, "data-open") == Some("false")),
            "{node} is shown back in service: {spans:?}"
        );
    }
    // Failover blocked twice (the runbook unblocks it for the demote and
    // blocks it again on the new leader), restored both times; the service's
    // signed checkpoint checked.
    let failover = dom.with("data-failover");
    assert_eq!(failover.len(), 2, "{failover:?}");
    assert!(failover
        .iter()
        .all(|t| attr(t, "data-open") == Some("false")));
    assert_eq!(dom.verdict("checkpoint"), "ok", "{}", dom.text);
    let sealed: u64 = attr(dom.with("data-checkpoint-seq")[0], "data-checkpoint-seq")
        .unwrap()
        .parse()
        .unwrap();
    assert!(sealed >= 1 && sealed <= events.len() as u64);

    let png = env.dir.path().join("upgrade.png");
    let started = Instant::now();
    chromium
        .screenshot(&page, &png, 1280, 760)
        .expect("chromium takes a screenshot");
    eprintln!("chromium --screenshot took {:?}", started.elapsed());
    let size = std::fs::metadata(&png).unwrap().len();
    assert!(
        size > 10_000,
        "a real picture, not a blank page: {size} bytes"
    );
    if let Some(keep) = std::env::var_os("BATON_REPORT_SCREENSHOT") {
        std::fs::copy(&png, &keep).expect("the screenshot is copied");
    }

    // From an export, offline: the same bars; an export holds no checkpoint.
    let export = env.dir.path().join("export.jsonl");
    let export_arg = export.display().to_string();
    env.baton_ok(&["audit", "export", &upgrade, "--out", &export_arg]);
    let page = write_report(&env, &upgrade, "from-file.html", &["--file", &export_arg]);
    let dom = Dom::load(&chromium, &page);
    assert_drawn(&dom, &env, &events);
    assert_eq!(dom.verdict("checkpoint"), "partial");

    // Log text is attacker-influenced: a node's output that tries markup is
    // shown as text, and nothing of it becomes an element or runs.
    let evil = forge_log(&env, &upgrade);
    let evil_arg = evil.display().to_string();
    let page = write_report(&env, &upgrade, "forged.html", &["--db", &evil_arg]);
    let dom = Dom::load(&chromium, &page);
    assert_drawn(&dom, &env, &events);
    let names: BTreeSet<&str> = dom.tags().into_iter().map(tag_name).collect();
    for element in ["script", "img", "iframe", "object"] {
        assert!(
            !names.contains(element),
            "a <{element}> reached the DOM: {names:?}"
        );
    }
    assert!(
        dom.tags().iter().all(|t| attr(t, "data-pwned").is_none()),
        "injected code ran"
    );
    assert!(dom
        .text
        .contains("&lt;script&gt;document.body.setAttribute"));
    assert!(dom.text.contains("\"&gt;&lt;img src=x onerror="));

    // From the log itself once the service has stopped: the checkpoint comes
    // from its service stream.
    let server = env.server.as_mut().unwrap();
    server.signal(nix::sys::signal::Signal::SIGTERM);
    server
        .wait_exit(std::time::Duration::from_secs(20))
        .expect("the service stops on SIGTERM");
    tests::wait_unlocked(&env.db());
    let db = env.db().display().to_string();
    let page = write_report(&env, &upgrade, "from-db.html", &["--db", &db]);
    let dom = Dom::load(&chromium, &page);
    assert_drawn(&dom, &env, &events);
    assert_eq!(dom.verdict("checkpoint"), "ok", "{}", dom.text);
}

/// A copy of the upgrade's log in a new log directory, with markup in the
/// output of its first install, chained like any log (a node, or whoever
/// controls its output, can print anything).
fn forge_log(env: &Env, upgrade: &str) -> PathBuf {
    const PAYLOAD: &str = "<script>document.body.setAttribute('data-pwned','script')</script>\n\
        \"><img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">\n\
        </title><script>document.body.setAttribute('data-pwned','title')</script>";
    let out = env.baton_ok(&["replay", upgrade, "--json"]);
    let value: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut events: Vec<serde_json::Value> = value["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].clone())
        .collect();
    let install = events
        .iter()
        .find(|e| e["type"] == "StepScheduled" && e["action"] == "install")
        .map(|e| e["step"].clone())
        .expect("the upgrade installed");
    let result = events
        .iter_mut()
        .find(|e| e["type"] == "StepResultRecorded" && e["step"] == install)
        .expect("the install has a result");
    result["stdout"] = PAYLOAD.into();
    let dir = env.dir.path().join("forged.db");
    {
        let store = store::Store::open(&dir).unwrap();
        let stream: store::StreamId = upgrade.parse().unwrap();
        let records: Vec<store::NewRecord> = events
            .iter()
            .map(|e| store::NewRecord::new(serde_json::to_vec(e).unwrap()))
            .collect();
        store.append(stream, 0, &records).unwrap();
        store.flush().unwrap();
    }
    tests::wait_unlocked(&dir);
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_halted_upgrades_report_shows_the_halt_reason() {
    let chromium = Chromium::find();
    // backend-2, the first follower, never syncs after its restart.
    let env = Env::start(Setup {
        faults: vec!["backend-2:sync-never"],
        sync_timeout_ms: 2000,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let view = env.finish(&upgrade).await;
    assert_eq!(view.status, "halted", "{view:#?}");
    let events = env.events(&upgrade);
    let page = write_report(&env, &upgrade, "halted.html", &[]);
    let dom = Dom::load(&chromium, &page);
    assert_drawn(&dom, &env, &events);
    assert_eq!(dom.end_status(), "halted");
    let reason = dom.end_reason();
    let logged = view.reason.unwrap_or_default();
    assert!(reason.starts_with("halted: "), "{reason}");
    assert!(reason.contains("backend-2"), "{reason}");
    // The halt reason as the log words it (escaped as HTML: compare its first words).
    let head: String = logged.chars().take(40).collect();
    assert!(
        !head.contains(['<', '>', '&', '"']) && reason.contains(&head),
        "{reason} / {logged}"
    );
    // backend-2 never came back: out of service until the log ends.
    assert!(
        dom.with("data-out-of-service").iter().any(|t| {
            attr(t, "data-out-of-service") == Some("backend-2")
                && attr(t, "data-open") == Some("true")
        }),
        "{}",
        dom.text
    );
}
