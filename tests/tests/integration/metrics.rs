//! `--http`: `/healthz`, `/readyz` and `/metrics` of a real `baton server`
//! and real `baton executor`s, scraped during and after an upgrade of the
//! simulator; the counters are checked against the log (`baton replay`),
//! and readiness against a real NATS outage (the harness's nats-server
//! killed, then started again on the same port).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use workflow::core::Event;

use crate::e2e::{Env, Setup, UPGRADE_TIMEOUT};

/// One HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET path` over HTTP/1.1 on a fresh connection; `None` if nothing answers.
fn get(addr: SocketAddr, path: &str) -> Option<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    Some(Answer {
        status,
        content_type,
        body: body.to_string(),
    })
}

/// A scrape: every sample as (name, labels) -> value.
#[derive(Debug, Default)]
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn of(addr: SocketAddr) -> Option<Scrape> {
        let answer = get(addr, "/metrics")?;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(
            answer
                .content_type
                .starts_with("application/openmetrics-text"),
            "{answer:?}"
        );
        assert!(answer.body.ends_with("# EOF\n"), "{}", answer.body);
        Some(Scrape::parse(&answer.body))
    }

    fn parse(text: &str) -> Scrape {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').expect("labels end with }");
                    let labels = inner
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label=value");
                            (k.to_string(), v.trim_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.insert((name, labels), value.parse::<f64>().expect("a number"));
        }
        Scrape(samples)
    }

    /// The value of `name` with exactly `labels`, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0.get(&(name.to_string(), labels)).copied()
    }

    fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
            .unwrap_or_else(|| panic!("{name} missing from {self:#?}"))
    }

    /// Every sample of `name`, by the values of two labels.
    fn by(&self, name: &str, a: &str, b: &str) -> BTreeMap<(String, String), f64> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), v)| ((labels[a].clone(), labels[b].clone()), *v))
            .filter(|(_, v)| *v != 0.0)
            .collect()
    }

    /// The sum of every sample of `name`.
    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, v)| v)
            .sum()
    }
}

/// `/readyz`: (status, body).
fn ready(addr: SocketAddr) -> Option<(u16, String)> {
    get(addr, "/readyz").map(|a| (a.status, a.body))
}

/// (action, outcome) -> how many step attempts the log records as ended so.
fn logged_step_ends(events: &[Event]) -> BTreeMap<(String, String), f64> {
    let mut actions = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for event in events {
        match event {
            Event::StepScheduled { step, action, .. } => {
                actions.insert(*step, action.as_str().to_string());
            }
            Event::StepResultRecorded { step, outcome, .. } => {
                let outcome = serde_json::to_value(outcome).unwrap();
                *ends
                    .entry((actions[step].clone(), outcome.as_str().unwrap().to_string()))
                    .or_insert(0.0) += 1.0;
            }
            Event::StepDeadlinePassed { step, .. } => {
                *ends
                    .entry((actions[step].clone(), "deadline_passed".to_string()))
                    .or_insert(0.0) += 1.0;
            }
            _ => {}
        }
    }
    ends
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_scraped_during_an_upgrade_match_the_log_and_readiness_follows_nats() {
    let mut env = Env::start(Setup {
        http: true,
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    let (server, executors) = env.http.clone().expect("Setup::http gives addresses");
    let all: Vec<SocketAddr> = std::iter::once(server)
        .chain(executors.iter().copied())
        .collect();
    for addr in &all {
        let health = get(*addr, "/healthz").expect("the listener answers");
        assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
        let up = tests::wait_until(Duration::from_secs(30), || {
            ready(*addr).is_some_and(|(status, _)| status == 200)
        })
        .await;
        assert!(up, "{addr} never ready: {:?}\n{}", ready(*addr), env.logs());
    }
    let nothing = get(server, "/nope").unwrap();
    assert_eq!(nothing.status, 404, "{nothing:?}");

    // While it runs: the service counts it as unfinished and has counted
    // steps; an executor has run some.
    let upgrade = env.submit(&[]);
    let mut during = (Scrape::default(), Vec::new());
    let seen = tests::wait_until(UPGRADE_TIMEOUT, || {
        let Some(service) = Scrape::of(server) else {
            return false;
        };
        let running = ["planning", "running"]
            .iter()
            .any(|s| service.get("baton_upgrades", &[("status", s)]) == Some(1.0));
        let execs: Vec<Scrape> = executors.iter().filter_map(|a| Scrape::of(*a)).collect();
        let ran: f64 = execs
            .iter()
            .map(|e| e.sum("baton_executor_steps_run_total"))
            .sum();
        let ok = running && service.sum("baton_steps_total") > 0.0 && ran > 0.0;
        during = (service, execs);
        ok
    })
    .await;
    assert!(
        seen,
        "never saw the upgrade running: {during:#?}\n{}",
        env.logs()
    );
    assert_eq!(ready(server).map(|r| r.0), Some(200), "ready while it runs");

    env.expect_completed_safely(&upgrade).await;

    // After: the counters equal the log.
    let events = env.events(&upgrade);
    let logged = logged_step_ends(&events);
    assert!(!logged.is_empty());
    let service = Scrape::of(server).expect("the service answers");
    assert_eq!(
        service.by("baton_steps_total", "action", "outcome"),
        logged,
        "steps by action and outcome against the log's StepResultRecorded events"
    );
    let recorded = logged.values().sum::<f64>();
    for histogram in [
        "baton_step_queue_wait_seconds_count",
        "baton_step_run_seconds_count",
        "baton_step_overhead_seconds_count",
    ] {
        assert_eq!(service.sum(histogram), recorded, "{histogram}");
    }
    assert_eq!(
        service.get("baton_upgrades", &[("status", "completed")]),
        Some(1.0)
    );
    for status in ["planning", "running"] {
        assert_eq!(
            service.get("baton_upgrades", &[("status", status)]),
            Some(0.0),
            "{status}"
        );
    }
    assert_eq!(service.value("baton_service_epoch"), 1.0);
    assert_eq!(service.value("baton_lease_held"), 1.0);
    assert_eq!(service.value("baton_nats_connected"), 1.0);
    assert_eq!(service.value("baton_log_verified"), 1.0);
    // A fresh log: every record in it was appended by this process, the
    // upgrade's events among them (plus the service stream's start record
    // and checkpoints).
    let records = service.value("baton_log_records");
    assert_eq!(service.value("baton_log_records_appended_total"), records);
    assert!(
        records > events.len() as f64,
        "{records} <= {}",
        events.len()
    );
    let appends = service.value("baton_log_appends_total");
    assert!(appends >= 1.0 && appends <= records, "{appends}");
    let flushes = service.value("baton_log_flush_seconds_count");
    assert!(flushes >= 1.0 && flushes <= appends + 1.0, "{flushes}");
    assert!(service.value("baton_log_size_bytes") > 0.0);

    // The executors together ran exactly the steps the log records, with the same outcomes.
    let mut ran = BTreeMap::new();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for addr in &executors {
        let scrape = Scrape::of(*addr).expect("the executor answers");
        for (key, n) in scrape.by("baton_executor_steps_run_total", "action", "outcome") {
            *ran.entry(key).or_insert(0.0) += n;
        }
        assert_eq!(scrape.value("baton_executor_steps_in_flight"), 0.0);
        assert_eq!(scrape.value("baton_executor_runner_errors_total"), 0.0);
        assert_eq!(scrape.sum("baton_executor_refused_total"), 0.0);
        assert_eq!(scrape.value("baton_executor_consumer_bound"), 1.0);
        let beat = scrape.value("baton_executor_last_heartbeat_timestamp_seconds");
        assert!(
            (now_s - beat).abs() < 60.0,
            "last heartbeat {beat}, now {now_s}"
        );
    }
    assert_eq!(ran, logged, "the executors' runs against the log");

    // NATS goes away: nobody is ready, everybody is alive; it comes back: ready again.
    env.nats.stop();
    for addr in &all {
        let mut last = None;
        let down = tests::wait_until(Duration::from_secs(30), || {
            last = ready(*addr);
            last.as_ref().is_some_and(|(status, body)| {
                *status == 503 && body.contains("NATS is not connected")
            })
        })
        .await;
        assert!(down, "{addr} still ready without NATS: {last:?}");
        assert_eq!(get(*addr, "/healthz").map(|a| a.status), Some(200));
    }
    assert_eq!(
        Scrape::of(server).unwrap().value("baton_nats_connected"),
        0.0
    );
    env.nats
        .start_again()
        .await
        .expect("nats-server starts again on its port");
    for addr in &all {
        let mut last = None;
        let up = tests::wait_until(Duration::from_secs(30), || {
            last = ready(*addr);
            last.as_ref().is_some_and(|(status, _)| *status == 200)
        })
        .await;
        assert!(
            up,
            "{addr} not ready after NATS came back: {last:?}\n{}",
            env.logs()
        );
    }
    let after = Scrape::of(server).unwrap();
    assert_eq!(after.value("baton_nats_connected"), 1.0);
    assert_eq!(
        after.value("baton_lease_held"),
        1.0,
        "the lease outlived the outage"
    );
    assert_eq!(after.by("baton_steps_total", "action", "outcome"), logged);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_service_is_alive_but_not_ready_until_it_holds_the_lease() {
    let mut env = Env::start(Setup {
        http: true,
        ..Setup::default()
    })
    .await;
    let (active, _) = env.http.clone().expect("Setup::http gives addresses");
    let up = tests::wait_until(Duration::from_secs(30), || {
        ready(active).is_some_and(|(status, _)| status == 200)
    })
    .await;
    assert!(
        up,
        "the service never ready: {:?}\n{}",
        ready(active),
        env.logs()
    );

    // A second service, with a log of its own, waits as a standby.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let mut cmd = env.baton_cmd_as(&env.secure.service_key.clone());
    cmd.args(["server", "--standby", "--db"])
        .arg(env.dir.path().join("standby.db"))
        .args(["--http", &addr.to_string()])
        .env("BATON_NATS_URL", env.service_url());
    let mut standby =
        tests::Proc::spawn("standby server", cmd, &env.dir.path().join("standby.log")).unwrap();
    let mut last = None;
    let waiting = tests::wait_until(Duration::from_secs(30), || {
        last = ready(addr);
        last.as_ref().is_some_and(|(status, body)| {
            *status == 503 && body == "not ready: this service does not hold the service lease\n"
        })
    })
    .await;
    assert!(
        waiting,
        "the standby's readiness: {last:?}\n{}",
        standby.log()
    );
    assert_eq!(get(addr, "/healthz").map(|a| a.status), Some(200));
    let scrape = Scrape::of(addr).unwrap();
    assert_eq!(scrape.value("baton_lease_held"), 0.0);
    assert_eq!(scrape.value("baton_nats_connected"), 1.0);
    assert_eq!(scrape.value("baton_log_verified"), 1.0);
    assert_eq!(
        ready(active).map(|r| r.0),
        Some(200),
        "the holder stays ready"
    );

    // The holder stops (SIGTERM releases the lease): the standby takes over and is ready.
    let server = env.server.as_mut().expect("the service runs");
    server.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(30)).is_some());
    let took_over = tests::wait_until(Duration::from_secs(30), || {
        last = ready(addr);
        last.as_ref().is_some_and(|(status, _)| *status == 200)
    })
    .await;
    assert!(
        took_over,
        "the standby's readiness: {last:?}\n{}",
        standby.log()
    );
    let scrape = Scrape::of(addr).unwrap();
    assert_eq!(scrape.value("baton_lease_held"), 1.0);
    assert_eq!(
        scrape.value("baton_service_epoch"),
        1.0,
        "its own log's first start"
    );
    standby.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(standby.wait_exit(Duration::from_secs(30)).is_some());
    // The listener stopped with the service.
    assert!(get(addr, "/healthz").is_none());
}

#[test]
fn an_http_address_in_use_fails_the_command_naming_it() {
    let secure = tests::Secure::new(&["g"]).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut server = std::process::Command::new(tests::workspace_bin("baton"));
    server
        .args(["server", "--db"])
        .arg(dir.path().join("db"))
        .args(["--http", &addr])
        // Nothing listens there: the bind must fail first.
        .env("BATON_NATS_URL", "nats://127.0.0.1:1")
        .envs(secure.env_signing_only(&secure.service_key));
    let mut executor = std::process::Command::new(tests::workspace_bin("baton"));
    executor
        .args(["executor", "--group", "g", "--nodes", "n1", "--state-dir"])
        .arg(dir.path().join("state"))
        .args(["--http", &addr])
        .env("BATON_NATS_URL", "nats://127.0.0.1:1")
        .envs(secure.env_signing_only(&secure.executor_keys["g"]));
    for mut cmd in [server, executor] {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen for HTTP on {addr} (--http)")),
            "{stderr}"
        );
    }
}
