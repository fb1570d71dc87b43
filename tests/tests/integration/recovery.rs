//! Recovery at scale (issue 16): a restarted service reads each unfinished
//! upgrade's mirror in a few round trips, completes what the mirror lacks
//! before the upgrade goes on, resumes every upgrade that was in flight
//! (streamed: each one as soon as it is replayed) and takes their results
//! while the later ones are still being recovered, without running any step
//! twice.

use std::time::Duration;

use nix::sys::signal::Signal;
use tests::fleet::{self, Bins, Executors, Timings};
use tests::NatsServer;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};
use workflow::core::Event;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The start-up read of a subject (`mirror::read_subject`) brings every
/// message of that subject, in stream order, with its stream sequence, and
/// none of another subject's, in a handful of requests (one to create its
/// consumer, one per page of 1,024), not one per message; past its limit it
/// stops and says there was more.
#[tokio::test(flavor = "multi_thread")]
async fn a_subject_is_read_in_pages_in_order_and_within_its_limit() {
    let nats = NatsServer::start().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "READ".into(),
            subjects: vec!["read.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    // 2,500 messages on read.a, interleaved with 500 on read.b.
    let mut acks = Vec::new();
    for i in 0..3_000u64 {
        let subject = if i % 6 == 5 { "read.b" } else { "read.a" };
        acks.push(
            js.publish(subject, format!("{i}").into_bytes().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    let read = workflow::service::mirror::read_subject(
        &stream,
        "read.a",
        u64::MAX,
        |seq, subject, payload| {
            (
                seq,
                subject.to_string(),
                String::from_utf8_lossy(payload).to_string(),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(read.kept.len(), 2_500);
    assert!(!read.more);
    let expected: Vec<(u64, String, String)> = (0..3_000u64)
        .filter(|i| i % 6 != 5)
        .map(|i| (i + 1, "read.a".to_string(), i.to_string()))
        .collect();
    assert_eq!(read.kept, expected);
    // One request for the consumer, three pages, one for the subject's last message: the old read made 2,501.
    assert!(read.requests <= 5, "{} requests", read.requests);

    // Past the limit: the first `limit` messages, and `more`.
    let read = workflow::service::mirror::read_subject(&stream, "read.b", 100, |seq, _, _| seq)
        .await
        .unwrap();
    assert_eq!(read.kept.len(), 100);
    assert!(read.more);
    assert_eq!(read.kept[..2], [6, 12]);

    // A subject with no message: nothing, in two requests (the consumer, and the stream leader's word that the
    // subject has no last message: a consumer's count may come from a peer behind the leader).
    let read = workflow::service::mirror::read_subject(&stream, "read.none", 10, |seq, _, _| seq)
        .await
        .unwrap();
    assert!(
        read.kept.is_empty() && !read.more && read.requests == 2,
        "{} kept, more {}, {} requests",
        read.kept.len(),
        read.more,
        read.requests
    );
}

/// An unfinished upgrade whose mirror lost events (here two in the middle
/// and the last, deleted from `BATON_EVENTS` while the service was down) is
/// not paused at the next start: a gap is no contradiction. The service
/// mirrors the missing events again before the upgrade appends anything, and
/// the upgrade completes safely.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_with_gaps_is_completed_at_recovery_and_its_upgrade_goes_on() {
    let mut env = Env::start(Setup {
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");

    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let stream = js
        .get_stream(protocol::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let subject = protocol::subjects::event(&upgrade);
    // Stream sequences of the upgrade's mirrored events, by event seq.
    let mut mirrored = Vec::new();
    let mut from = 1;
    while let Ok(message) = stream
        .get_first_raw_message_by_subject(&subject, from)
        .await
    {
        from = message.sequence + 1;
        let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        mirrored.push((value["seq"].as_u64().unwrap(), message.sequence));
    }
    assert!(mirrored.len() > 6, "{mirrored:?}");
    let last = mirrored.len() - 1;
    for &i in &[2, 4, last] {
        assert!(stream.delete_message(mirrored[i].1).await.unwrap());
    }

    env.start_server();
    env.wait_for_executors().await;
    // Recovered, not paused: still waiting for its approval.
    let view = env
        .wait_status(&upgrade, &["waiting_approval", "paused"], UPGRADE_TIMEOUT)
        .await;
    assert_eq!(view.status, "waiting_approval", "{view:?}");
    // The gaps were filled before it was resumed: the audit finds no difference.
    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert!(out.status.success(), "{}", text(&out));
    let log = env.server.as_ref().unwrap().log();
    assert!(log.contains("recovered unfinished upgrade"), "{log}");
    assert!(log.contains("remirrored=3"), "{log}");

    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;
}

/// The service SIGKILLed a third of the way through a fleet of four upgrades
/// (one executor process for the twelve nodes) and started again at once on
/// its log: every upgrade that was in flight gets its loop back and every
/// one completes, every simulator verdict SAFE; no step attempt's command
/// ran twice (each `step started` once in the executor's log); and no step
/// result is dropped while the service recovers (results are pulled from the
/// start of recovery, and one for an upgrade not recovered yet is handed back,
/// not acked as a stray). Whether a hand-back happens at all in this run is
/// left to timing (at N = 4 recovery usually claims every upgrade before the
/// pump's first pull): `a_result_for_an_upgrade_not_yet_claimed_is_handed_back_then_applied_once`
/// makes one certain.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_killed_mid_fleet_resumes_every_upgrade_and_runs_no_step_twice() {
    let bins = Bins::beside_current_exe().expect("the workspace's binaries are built");
    let outcome = fleet::run_with(&bins, 4, Timings::Zero, Executors::One, Some(0.3))
        .await
        .expect("the fleet runs");
    let recovery = outcome.recovery.clone().expect("the service was killed");
    assert!(recovery.in_flight >= 1, "{recovery:?}");
    assert_eq!(recovery.loops, recovery.in_flight, "{recovery:?}");
    assert!(recovery.republished >= 1, "{recovery:?}");
    assert!(
        recovery.to_first_step_ms.is_some() && recovery.to_ready_ms.is_some(),
        "{recovery:?}"
    );
    assert_eq!(recovery.stray_results, 0, "{recovery:?}");
    assert_eq!(outcome.ends.len(), 4);
    for end in &outcome.ends {
        assert_eq!(end.status, "completed", "{end:#?}");
        assert_eq!(end.verdict, "SAFE", "{end:#?}");
    }
    assert!(
        outcome.runs_repeated.is_empty(),
        "{:?}",
        outcome.runs_repeated
    );
}

/// Deletes `BATON_EVENTS` (the mirror; the log is the record) and creates it
/// again as the service made it, changed by `change`, with `dummies` messages
/// of no upgrade in it. Answers the stream's config as it was.
async fn recreate_events(
    js: &async_nats::jetstream::Context,
    dummies: usize,
    change: impl FnOnce(&mut async_nats::jetstream::stream::Config),
) -> async_nats::jetstream::stream::Config {
    let name = protocol::subjects::EVENTS_STREAM;
    let mut stream = js.get_stream(name).await.unwrap();
    let original = stream.info().await.unwrap().config.clone();
    assert!(js.delete_stream(name).await.unwrap().success);
    let mut config = original.clone();
    change(&mut config);
    js.create_stream(config).await.unwrap();
    for i in 0..dummies {
        let subject = protocol::subjects::event("no-upgrade");
        js.publish(subject, format!("{i}").into_bytes().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    original
}

/// For [`recreate_events`]: a `BATON_EVENTS` that holds one message and refuses every publish after it (full,
/// discard new).
fn refusing_every_publish(config: &mut async_nats::jetstream::stream::Config) {
    config.max_messages = 1;
    config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
}

/// A publish of recovery's that cannot succeed (the upgrade's mirror must be
/// written again, and `BATON_EVENTS` refuses every publish) is tried for
/// `--recovery-patience-s`, then fails the start: exit non-zero, the error
/// naming the upgrade, the event and the stream's refusal, the service never
/// ready, the lease released (the next start takes it at once, without
/// waiting out its ttl). Before, the service retried until it was stopped,
/// holding the lease without serving. With the mirror writable again, the
/// next start completes the upgrade safely.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_failing_for_the_recovery_patience_fails_the_start_naming_the_upgrade() {
    let (mut env, upgrade) = Env::killed_mid_upgrade(false).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let original = recreate_events(&js, 1, refusing_every_publish).await;

    let started = std::time::Instant::now();
    env.start_server_with(&["--recovery-patience-s", "2"]);
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(Duration::from_secs(60))
        .expect("the start fails once the patience is spent");
    let text = server.log();
    assert!(!status.success(), "{status:?}\n{text}");
    let error = text
        .lines()
        .find(|l| l.contains("baton: error"))
        .unwrap_or_else(|| panic!("no error line:\n{text}"));
    for wanted in [
        upgrade.as_str(),
        "publishing event",
        "while the service recovered it",
        "maximum messages exceeded",
    ] {
        assert!(error.contains(wanted), "{wanted:?} not in: {error}");
    }
    assert!(!text.contains("workflow service ready"), "{text}");
    assert!(text.contains("released the service lease"), "{text}");
    eprintln!(
        "the start failed {:?} after it began: {error}",
        started.elapsed()
    );

    recreate_events(&js, 0, |config| *config = original).await;
    env.start_server();
    env.expect_completed_safely(&upgrade).await;
}

/// An upgrade in flight when the service is SIGKILLed, and a restart whose
/// recovery cannot end on its own: `BATON_EVENTS` was emptied (so the
/// upgrade's events must be mirrored again before its loop may start) and
/// refuses every publish (full, discard new), so the re-mirroring retries
/// for as long as the service runs. SIGTERM then stops the service within
/// seconds, cleanly (exit 0, "recovery stopped because the service is stopping"), without ever
/// going on to serve (no "workflow service ready": before the fix recovery
/// ran on to the end, then the API started, after the SIGTERM). With the
/// mirror writable again, a third start resumes the upgrade, which completes
/// safely with every node installed once (no step ran twice).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_recovery_stops_the_service_promptly_and_a_restart_resumes() {
    let (mut env, upgrade) = Env::killed_mid_upgrade(false).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let original = recreate_events(&js, 1, refusing_every_publish).await;

    env.start_server();
    let log_file = env.dir.path().join("server-2.log");
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let held = tests::wait_until(Duration::from_secs(30), || {
        log().contains("publish failed; retrying")
    })
    .await;
    assert!(held, "recovery never tried to re-mirror:\n{}", log());
    let server = env.server.as_mut().unwrap();
    let signalled = std::time::Instant::now();
    server.signal(Signal::SIGTERM);
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the service stops within 10 s of SIGTERM during recovery");
    let stopped_in = signalled.elapsed();
    let text = log();
    assert!(status.success(), "{status:?}\n{text}");
    assert!(text.contains("signal received, shutting down"), "{text}");
    assert!(
        text.contains("recovery stopped because the service is stopping"),
        "{text}"
    );
    assert!(text.contains("workflow service stopped"), "{text}");
    assert!(!text.contains("workflow service ready"), "{text}");
    assert!(
        !text.contains("every unfinished upgrade recovered"),
        "{text}"
    );
    // Nothing resumed after the SIGTERM, and the re-mirroring given up at once, not tried once more per event
    // (before the fix: once for each of the upgrade's events, then its steps re-published and its loop started).
    assert!(!text.contains("recovered unfinished upgrade"), "{text}");
    let after_signal = &text[text.find("signal received").unwrap()..];
    let tries = after_signal.matches("publish failed; retrying").count();
    assert!(tries <= 2, "{tries} tries after the SIGTERM:\n{text}");
    eprintln!("stopped {stopped_in:?} after SIGTERM during recovery");

    recreate_events(&js, 0, |config| *config = original).await;
    env.start_server();
    env.expect_completed_safely(&upgrade).await;
    let log = std::fs::read_to_string(env.dir.path().join("server-3.log")).unwrap();
    assert!(log.contains("recovered unfinished upgrade"), "{log}");
}

/// A result that comes round while its upgrade's loop queue is full is handed back (a nak with a delay,
/// `pump_results`) and applied later, once. With a loop queue of one command (the hidden `--loop-queue`), the
/// upgrade's recovery is held after it is claimed (its mirror must be written again, and `BATON_EVENTS` refuses
/// every publish): the result of the step in flight at the kill takes the one place in its queue, unacked;
/// redelivered after the results' ack wait (5 s), it finds the queue full, and the service's debug log shows it
/// handed back. Then the mirror takes publishes again: the upgrade completes safely, and no result of its log is
/// recorded twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_finding_its_loop_queue_full_is_handed_back_then_applied_once() {
    let (mut env, upgrade) = Env::killed_mid_upgrade(false).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let original = recreate_events(&js, 1, refusing_every_publish).await;

    env.start_server_with_env(
        &["--loop-queue", "1"],
        &[("RUST_LOG", "info,workflow::service=debug")],
    );
    let log_file = env
        .dir
        .path()
        .join(format!("server-{}.log", env.server_starts));
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let handed_back = tests::wait_until(Duration::from_secs(60), || {
        log().lines().any(|l| {
            l.contains("the upgrade's loop queue is full; result handed back")
                && l.contains(&format!("upgrade={upgrade}"))
        })
    })
    .await;
    assert!(handed_back, "no hand-back from a full queue:\n{}", log());

    recreate_events(&js, 0, |config| *config = original).await;
    env.expect_completed_safely(&upgrade).await;
    let mut recorded = std::collections::BTreeMap::new();
    for event in env.events(&upgrade) {
        if let Event::StepResultRecorded { step, attempt, .. } = event {
            *recorded.entry((step, attempt)).or_insert(0u32) += 1;
        }
    }
    assert!(!recorded.is_empty());
    let twice: Vec<_> = recorded.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "results recorded twice: {twice:?}");
}

/// A NATS error on the mirror read of an unfinished upgrade at start (here
/// `BATON_EVENTS` allows one consumer, and another holds it, so creating the
/// read's consumer is refused) is tried again, each retry logged with its
/// upgrade and attempt, rather than failing the start (before the fix the
/// service stopped at the first refusal). Once the consumer is free the
/// next try reads the mirror, and the upgrade is resumed and completes.
/// (An error that outlasts the retries, 30 s, fails the start by the
/// orderly path: `upgrade::tests`, and `run`'s one stop.)
#[tokio::test(flavor = "multi_thread")]
async fn a_transient_nats_error_on_a_mirror_read_at_start_is_retried() {
    let (mut env, upgrade) = Env::killed_mid_upgrade(false).await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    recreate_events(&js, 0, |config| config.max_consumers = 1).await;
    let events = js
        .get_stream(protocol::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    events
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("blocker".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    env.start_server();
    let log_file = env.dir.path().join("server-2.log");
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    // Two retries logged, each naming the upgrade and its attempt.
    let retried = tests::wait_until(Duration::from_secs(30), || {
        let text = log();
        let retries: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("recovery of an upgrade failed; trying again"))
            .collect();
        // On the retry line itself, not anywhere in the log.
        retries.len() >= 2
            && retries
                .iter()
                .any(|l| l.contains(&format!("upgrade={upgrade}")) && l.contains("attempt=2"))
    })
    .await;
    assert!(retried, "{}", log());
    assert!(
        env.server
            .as_mut()
            .unwrap()
            .wait_exit(Duration::ZERO)
            .is_none(),
        "the service stopped on a transient error:\n{}",
        log()
    );

    assert!(events.delete_consumer("blocker").await.unwrap().success);
    env.expect_completed_safely(&upgrade).await;
    let text = log();
    assert!(text.contains("recovered unfinished upgrade"), "{text}");
    assert!(!text.contains("recovery failed"), "{text}");
}

/// The results pump's hand-back, made certain: a result that reaches the
/// restarted service for an upgrade recovery has not claimed yet is handed
/// back (a delayed nak), not acked as a stray nor lost, and once the upgrade
/// is recovered it is applied, once.
///
/// Two upgrades in flight, A then B (log order); B's executors are frozen
/// while B waits on a step, the service is SIGKILLed, and restarted with
/// `--recover-at-once 1` and a `BATON_EVENTS` that refuses every publish: A,
/// first, takes the one slot and keeps it (its mirror must be written again
/// first), so the pass waits before claiming B. B's executors are thawed: the
/// step runs and its result reaches the pump while B is unclaimed, which the
/// service's debug log shows handed back. Then the mirror takes publishes
/// again, A is resumed, B is claimed and resumed; the result comes round
/// again and B's log records that step's result exactly once; both complete
/// safely.
#[tokio::test(flavor = "multi_thread")]
async fn a_result_for_an_upgrade_not_yet_claimed_is_handed_back_then_applied_once() {
    let mut env = Env::start(Setup {
        nats_auth: false,
        sync_ms: 300,
        ..Setup::default()
    })
    .await;
    let (other_file, other_dir, other_executors) = env.other_cluster(300).await;
    let a = env.submit(&[]);
    let b = env
        .baton_ok(&[
            "submit",
            "--detach",
            "--cluster",
            &other_file.display().to_string(),
        ])
        .trim()
        .to_string();
    assert!(a < b, "A is first in log order: {a} {b}");
    let running = tests::wait_until(UPGRADE_TIMEOUT, || {
        env.status(&b).is_some_and(|v| v.status == "running")
    })
    .await;
    assert!(running, "{}", env.logs());

    // B waits on a step its (frozen) executors cannot answer.
    for executor in &other_executors {
        executor.signal(Signal::SIGSTOP);
    }
    let mut waited = None;
    let stuck = tests::wait_until(Duration::from_secs(30), || {
        let view = env.status(&b);
        waited = view.as_ref().and_then(|v| v.current.clone());
        view.is_some_and(|v| v.status == "running") && waited.is_some()
    })
    .await;
    assert!(stuck, "B never waited on a step: {:?}", env.status(&b));
    let waited = waited.unwrap();
    assert!(
        env.status(&a).is_some_and(|v| v.status == "running"),
        "A is still in flight: {:?}",
        env.status(&a)
    );
    env.kill_server();

    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let original = recreate_events(&js, 1, |config| {
        config.max_messages = 1;
        config.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    })
    .await;
    env.server_starts += 1;
    let log_file = env
        .dir
        .path()
        .join(format!("server-{}.log", env.server_starts));
    let mut cmd = env.baton_cmd_as(&env.secure.service_key.clone());
    cmd.args(["server", "--db"])
        .arg(env.db())
        .args(["--recover-at-once", "1"])
        .env("RUST_LOG", "info,workflow::service=debug");
    env.server = Some(tests::Proc::spawn("baton server", cmd, &log_file).unwrap());
    let log = || std::fs::read_to_string(&log_file).unwrap_or_default();
    let held = tests::wait_until(Duration::from_secs(30), || {
        log().contains("publish failed; retrying")
    })
    .await;
    assert!(held, "A's recovery never held its slot:\n{}", log());

    for executor in &other_executors {
        executor.signal(Signal::SIGCONT);
    }
    let handed_back = tests::wait_until(Duration::from_secs(30), || {
        log()
            .lines()
            .any(|l| l.contains("handed back") && l.contains(&format!("upgrade={b}")))
    })
    .await;
    assert!(handed_back, "no hand-back of B's result:\n{}", log());

    recreate_events(&js, 0, |config| *config = original).await;
    env.expect_completed_safely(&a).await;
    let view = env
        .wait_status(&b, &["completed", "halted", "aborted"], UPGRADE_TIMEOUT)
        .await;
    assert_eq!(view.status, "completed", "{view:#?}");
    let recorded = env
        .events(&b)
        .iter()
        .filter(|e| {
            matches!(e, Event::StepResultRecorded { step, attempt, .. }
                if *step == waited.step && *attempt == waited.attempt)
        })
        .count();
    assert_eq!(
        recorded, 1,
        "step {} attempt {}",
        waited.step, waited.attempt
    );
    // (No check for strays: once an upgrade has ended, a late copy of one of its results is acked as one, which
    // a loaded machine's ack waits can cause; a result dropped instead of applied would leave `recorded` at 0.)
    let out = std::process::Command::new(tests::workspace_bin("baton-sim"))
        .args(["report", "--json", "--dir"])
        .arg(&other_dir)
        .output()
        .unwrap();
    let report: sim::Report = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report.verdict, sim::Verdict::Safe, "{}", report.render());
    drop(other_executors);
}
