//! Issue 12's bounded inputs and issue 14's interruptions, against a running
//! deployment. Bounded inputs: an oversized
//! request, an oversized cluster file and a huge timeout are refused with an
//! error naming the limit; finished plans are kept out of `list` unless asked;
//! and the upgrade in progress is unharmed throughout.

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn inputs_over_their_limits_are_refused_by_name_and_the_upgrade_goes_on() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    let cluster = std::fs::read_to_string(&env.cluster_file).unwrap();
    let write = |name: &str, text: String| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            write(
                "huge.toml",
                format!("{cluster}\n# {}\n", "x".repeat(300 * 1024)),
            ),
            "the limit is 262144 bytes",
        ),
        (
            write(
                "big.toml",
                format!("{cluster}\n# {}\n", "x".repeat(100 * 1024)),
            ),
            "a cluster file may have at most 65536",
        ),
        (
            write(
                "slow.toml",
                cluster.replace(
                    "sync_timeout_ms = 60000",
                    "sync_timeout_ms = 18446744073709551615",
                ),
            ),
            "upgrade.sync_timeout_ms: must be at most 604800000",
        ),
    ];
    for (file, needle) in &cases {
        let out = env.baton(&["plan", "--cluster", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: {stderr}");
    }

    // The upgrade is where it was, and goes on.
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;

    // A finished plan is kept out of `list` unless asked for.
    let out = env.baton_ok(&["plan", "--cluster", &env.cluster_file.display().to_string()]);
    assert!(!out.is_empty());
    let list = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--output", "json", "list"];
        all.extend_from_slice(args);
        let out = env.baton_ok(&all);
        let views: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        views
            .iter()
            .map(|v| v["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list(&[]), vec!["completed"]);
    let with_plans = list(&["--plans"]);
    assert_eq!(with_plans.len(), 2, "{with_plans:?}");
    assert!(
        with_plans.contains(&"planned".to_string()),
        "{with_plans:?}"
    );
}

/// Ctrl-C on `baton submit` stops only the watch: it says so, names how to
/// follow or stop the upgrade, exits 130, and the upgrade goes on to the end.
/// A malformed `--plan-hash` is a usage error before anything is sent.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_on_submit_says_the_upgrade_goes_on() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::io::{BufRead, BufReader};

    let env = Env::start(Setup {
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    let cluster = env.cluster_file.display().to_string();
    let out = env.baton(&[
        "submit",
        "--cluster",
        &cluster,
        "--detach",
        "--plan-hash",
        "garbage",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a plan hash"));
    assert!(env.baton_ok(&["list"]).contains("no upgrades"));

    let mut child = env
        .baton_cmd()
        .args(["submit", "--cluster", &cluster])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    let upgrade = first
        .trim()
        .strip_prefix("submitted upgrade ")
        .unwrap_or_else(|| panic!("{first}"))
        .to_string();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains(&format!("upgrade {upgrade} goes on"))
            && rest.contains(&format!("baton watch {upgrade}")),
        "{rest}"
    );
    env.expect_completed_safely(&upgrade).await;
}

/// `baton watch` outlives a restart of the service: it says the service does
/// not answer, keeps retrying, and follows on to the end (issue 14).
#[tokio::test(flavor = "multi_thread")]
async fn watch_reattaches_after_the_service_restarts() {
    use std::time::Duration;

    let mut env = Env::start(Setup {
        sync_ms: 800,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let log = env.dir.path().join("watch.log");
    let mut cmd = env.baton_cmd();
    cmd.args(["--api-timeout", "2", "watch", &upgrade]);
    let mut watch = tests::Proc::spawn("baton watch", cmd, &log).unwrap();
    env.wait_installed("backend-2").await;
    env.kill_server();
    let noticed = tests::wait_until(Duration::from_secs(30), || {
        watch.log().contains("does not answer")
    })
    .await;
    assert!(noticed, "{}", watch.log());
    env.start_server();
    let status = watch
        .wait_exit(UPGRADE_TIMEOUT)
        .expect("watch ends with the upgrade");
    assert!(status.success(), "{}", watch.log());
    let text = watch.log();
    assert!(
        text.contains("answers again") && text.contains("upgrade COMPLETED"),
        "{text}"
    );
    env.expect_completed_safely(&upgrade).await;
}

/// A result of about 1 MiB (cluster-status lines) for the step in flight,
/// signed by that step's own executor with its real key (a compromised
/// executor, the strongest sender a result can have), is refused as malformed
/// before the core reads it: no executor may send more than
/// `protocol::MAX_OUTPUT` characters per field. It is counted and logged, the
/// genuine result is the one recorded, and the upgrade completes safely. (Its
/// cost to the service, a signature check and one JSON decode of 1 MB, is
/// measured in `cargo bench -p workflow --bench inputs`.)
#[tokio::test(flavor = "multi_thread")]
async fn a_one_mib_result_from_a_real_executor_is_refused_and_the_upgrade_goes_on() {
    use std::time::Duration;

    use async_nats::jetstream;
    use protocol::sign::Identity;
    use protocol::{Outcome, StepResult, MAX_OUTPUT, PROTOCOL_VERSION};
    use workflow::core::Event;

    let env = Env::start(Setup {
        sync_ms: 1500,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    let mut current = None;
    assert!(
        tests::wait_until(UPGRADE_TIMEOUT, || {
            current = env.status(&upgrade).and_then(|view| view.current);
            current.is_some()
        })
        .await,
        "a step is in flight\n{}",
        env.logs()
    );
    let current = current.expect("found");
    let key = env.executor_key(&current.node);
    let insider = Identity::load(&key).unwrap();
    let client = env
        .secure
        .connect(&env.nats.url(), Some(&key))
        .await
        .unwrap();
    let js = jetstream::new(client);
    let line = "backend-1      leader     running  synced   3.0.0-1  192.168.33.215\n";
    let huge: String = line.chars().cycle().take(1_000_000).collect();
    let forged = StepResult {
        v: PROTOCOL_VERSION,
        upgrade: upgrade.clone(),
        step: current.step,
        attempt: current.attempt,
        epoch: 1,
        node: current.node.clone(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        stdout_tail: huge,
        stderr_tail: String::new(),
        reason: None,
        started_ms: None,
        finished_ms: None,
        executor: current.node.clone(),
    };
    let (headers, payload) = forged.signed(&insider);
    assert!(payload.len() > 1_000_000, "{} bytes", payload.len());
    js.publish_with_headers(forged.subject(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let log = || env.server.as_ref().unwrap().log();
    assert!(
        tests::wait_until(Duration::from_secs(20), || log()
            .contains("rejected a malformed step result"))
        .await,
        "the huge result is refused\n{}",
        env.logs()
    );
    assert!(
        log().contains("stdout_tail") && log().contains("1000000 characters"),
        "the refusal names the field and its size: {}",
        log()
    );
    env.expect_completed_safely(&upgrade).await;
    for event in env.events(&upgrade) {
        if let Event::StepResultRecorded { stdout, .. } = &event {
            assert!(stdout.chars().count() <= MAX_OUTPUT, "{event:?}");
        }
    }
}
