//! Issue 11's attacks on a running deployment: real nats-server, real
//! `baton server`, executors and CLI, the simulator as the cluster. Each
//! attack runs twice: with nats-server's authentication and TLS on (the
//! shipped least-privilege configuration: most attacks cannot even be sent),
//! and with them off (defence in depth: the signatures and allow lists still
//! refuse them). Either way the upgrade completes safely, nothing forged is
//! recorded as fact, and the refusal is counted and logged with a reason.

use std::path::Path;
use std::time::Duration;

use async_nats::HeaderMap;
use futures::StreamExt;
use protocol::sign::{Identity, Kind};
use protocol::{Outcome, StepResult, PROTOCOL_VERSION};
use workflow::core::Event;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

/// A NATS client for the attacker: with `key` when nats-server has auth on
/// (the attacker stole or holds that identity), anonymous otherwise.
async fn attacker(env: &Env, key: &Path) -> anyhow::Result<async_nats::Client> {
    if env.nats_auth {
        env.secure.connect(&env.nats.url(), Some(key)).await
    } else {
        Ok(async_nats::connect(env.nats.url()).await?)
    }
}

/// The step in flight right now, if it runs on a node other than `not_on`.
fn current_step_not_on(env: &Env, upgrade: &str, not_on: &str) -> Option<(u64, u32, String)> {
    let view = env.status(upgrade)?;
    let current = view.current?;
    (current.node != not_on).then_some((current.step, current.attempt, current.node))
}

fn forged_result(upgrade: &str, step: u64, attempt: u32, node: &str) -> StepResult {
    StepResult {
        v: PROTOCOL_VERSION,
        upgrade: upgrade.to_string(),
        step,
        attempt,
        epoch: 1,
        node: node.to_string(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        reason: None,
        started_ms: None,
        finished_ms: None,
        executor: "shadow".into(),
    }
}

/// Forged results for the step in flight (signed by a pinned executor of
/// another group; and, with auth off, unsigned and signed by an outsider) are
/// refused; the real result is the one recorded and the upgrade completes.
async fn forged_results_are_refused(nats_auth: bool) {
    let env = Env::start(Setup {
        sync_ms: 1500,
        nats_auth,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    // backend-3's executor key: a pinned identity, allowed to publish results.
    let insider_key = env.executor_key("backend-3");
    let insider = Identity::load(&insider_key).unwrap();
    let client = attacker(&env, &insider_key).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let refusal = "refused a result from an executor that was not sent this step";
    // The step seen in flight may finish before its forgery arrives (the core
    // then ignores a second result, without this refusal): forge again for
    // the next step in flight until one is refused while outstanding.
    let mut forged: Vec<(u64, u32, String)> = Vec::new();
    let result = loop {
        let mut next = None;
        let found = tests::wait_until(UPGRADE_TIMEOUT, || {
            next = current_step_not_on(&env, &upgrade, "backend-3").filter(|s| !forged.contains(s));
            next.is_some()
        })
        .await;
        assert!(
            found,
            "no step on another node was in flight for a forgery (forged {forged:?})\n{}",
            env.logs()
        );
        let (step, attempt, node) = next.expect("found");
        let result = forged_result(&upgrade, step, attempt, &node);
        // Signed by a real executor, but of another group than the step's.
        let (headers, payload) = result.signed(&insider);
        js.publish_with_headers(result.subject(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        forged.push((step, attempt, node));
        let log = || env.server.as_ref().unwrap().log();
        if tests::wait_until(Duration::from_secs(2), || log().contains(refusal)).await {
            break result;
        }
    };
    if !nats_auth {
        // Unsigned, and signed by a key nobody pinned.
        let mut unsigned = result.clone();
        unsigned.reason = Some("unsigned".into());
        js.publish(unsigned.subject(), unsigned.encode().into())
            .await
            .unwrap()
            .await
            .unwrap();
        let outsider = Identity::load(&env.secure.outsider_key).unwrap();
        let mut by_outsider = result.clone();
        by_outsider.reason = Some("outsider".into());
        let (headers, payload) = by_outsider.signed(&outsider);
        js.publish_with_headers(by_outsider.subject(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    env.expect_completed_safely(&upgrade).await;
    // Each forged step's recorded result came from its own executor.
    let events = env.events(&upgrade);
    for (step, attempt, node) in &forged {
        let recorded: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                Event::StepResultRecorded {
                    step: s,
                    attempt: a,
                    executor,
                    ..
                } if s == step && a == attempt => Some(executor),
                _ => None,
            })
            .collect();
        assert_eq!(recorded, vec![node], "step {step} on {node}");
    }
    let log = env.server.as_ref().unwrap().log();
    assert!(log.contains(refusal), "{}", env.logs());
    if !nats_auth {
        assert!(
            log.contains("refused a step result that no pinned executor signed")
                && log.contains("unsigned=2"),
            "{}",
            env.logs()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_results_are_refused_with_nats_auth_on() {
    forged_results_are_refused(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_results_are_refused_with_nats_auth_off() {
    forged_results_are_refused(false).await;
}

/// Operators act within their role, the log names the key's owner, and a
/// captured request cannot be replayed.
async fn operators_act_within_their_role(nats_auth: bool) {
    let env = Env::start(Setup {
        nats_auth,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    let rita = env.secure.operator_keys["rita"].clone();
    let oscar = env.secure.operator_keys["oscar"].clone();
    let as_key = |key: &Path, args: &[&str]| {
        env.baton_cmd_as(key)
            .args(args)
            .output()
            .expect("baton runs")
    };
    for (key, args) in [
        (
            &rita,
            vec!["approve", upgrade.as_str(), "before-switchover"],
        ),
        (&rita, vec!["abort", upgrade.as_str(), "--reason", "x"]),
        (&rita, vec!["pause", upgrade.as_str(), "--reason", "x"]),
        (
            &oscar,
            vec!["approve", upgrade.as_str(), "before-switchover"],
        ),
        (
            &env.secure.outsider_key,
            vec!["approve", upgrade.as_str(), "before-switchover"],
        ),
        (
            &env.secure.service_key,
            vec!["abort", upgrade.as_str(), "--reason", "x"],
        ),
    ] {
        let out = as_key(key, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if nats_auth && (key == &env.secure.outsider_key || key == &env.secure.service_key) {
            // The outsider is not even a NATS user; the service's NATS user may not send API requests.
            assert!(!out.status.success(), "{args:?}: {stderr}");
            continue;
        }
        assert_eq!(out.status.code(), Some(3), "{args:?} as {key:?}: {stderr}");
        assert!(stderr.contains("not allowed"), "{args:?}: {stderr}");
    }
    // A reader may read.
    let out = as_key(&rita, &["status", &upgrade]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.status(&upgrade).unwrap().status, "waiting_approval");

    if !nats_auth {
        // Anyone on an open NATS sees alice's signed requests; re-sending one is refused.
        let client = async_nats::connect(env.nats.url()).await.unwrap();
        let mut sniffed = client.subscribe("baton.api.pause").await.unwrap();
        client.flush().await.unwrap();
        env.baton_ok(&["pause", &upgrade, "--reason", "coffee"]);
        let captured = tokio::time::timeout(Duration::from_secs(10), sniffed.next())
            .await
            .expect("the pause request was seen")
            .unwrap();
        env.baton_ok(&["resume", &upgrade]);
        // Re-sent as it was (its reply into alice's inbox, which the open NATS
        // lets the attacker read): the service answers that it was replayed.
        let alice_key = Identity::load(&env.secure.operator_keys["alice"])
            .unwrap()
            .public_key();
        let inbox = format!("{}.attacker", protocol::subjects::inbox_prefix(&alice_key));
        let mut replies = client.subscribe(inbox.clone()).await.unwrap();
        client
            .publish_with_reply_and_headers(
                "baton.api.pause",
                inbox,
                captured.headers.clone().unwrap(),
                captured.payload.clone(),
            )
            .await
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), replies.next())
            .await
            .expect("the replay was answered")
            .unwrap();
        let text = String::from_utf8_lossy(&reply.payload);
        assert!(text.contains("replayed"), "{text}");
        // The same signature spelled in upper case is not a new request either:
        // refused as not signed, and not answered.
        let mut respelled = captured.headers.clone().unwrap();
        let sig = respelled
            .get(protocol::sign::SIG_HEADER)
            .unwrap()
            .as_str()
            .to_uppercase();
        respelled.insert(protocol::sign::SIG_HEADER, sig.as_str());
        client
            .publish_with_reply_and_headers(
                "baton.api.pause",
                format!("{}.attacker2", protocol::subjects::inbox_prefix(&alice_key)),
                respelled,
                captured.payload.clone(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
        let refused = tests::wait_until(Duration::from_secs(10), || {
            env.server
                .as_ref()
                .unwrap()
                .log()
                .contains("128 lower-case hex digits")
        })
        .await;
        assert!(refused, "{}", env.logs());
        assert_eq!(env.status(&upgrade).unwrap().status, "waiting_approval");
        // An unsigned request claiming to be alice: refused and not even answered
        // (an answer would be the service publishing where the sender chose).
        let answered = tokio::time::timeout(
            Duration::from_secs(3),
            client.request(
                "baton.api.approve",
                serde_json::to_vec(&serde_json::json!({
                    "upgrade": upgrade, "by": "alice", "gate": "before-switchover"
                }))
                .unwrap()
                .into(),
            ),
        )
        .await;
        assert!(
            !matches!(answered, Ok(Ok(_))),
            "an unsigned request was answered: {answered:?}"
        );
        assert_eq!(env.status(&upgrade).unwrap().status, "waiting_approval");
    }

    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;
    let events = env.events(&upgrade);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::GateApproved { by, .. } if by == "alice")));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::AbortRequested { .. })));
    let log = env.server.as_ref().unwrap().log();
    assert!(log.contains("API request refused"), "{}", env.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_act_within_their_role_with_nats_auth_on() {
    operators_act_within_their_role(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn operators_act_within_their_role_with_nats_auth_off() {
    operators_act_within_their_role(false).await;
}

/// A fake API responder (answering `status` with COMPLETED and `audit` with
/// OK) is never believed: unsigned, or signed by any key but the service's,
/// its replies are dropped by the CLI. With auth on it cannot even subscribe.
async fn fake_api_responders_are_not_believed(nats_auth: bool) {
    let env = Env::start(Setup {
        nats_auth,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    let insider_key = env.executor_key("backend-1");
    let (client, server_errors) = if nats_auth {
        env.secure
            .connect_watched(&env.nats.url(), Some(&insider_key))
            .await
            .unwrap()
    } else {
        (
            async_nats::connect(env.nats.url()).await.unwrap(),
            tests::ServerErrors::default(),
        )
    };
    let sub = client
        .queue_subscribe("baton.api.>", "baton-workflow".to_string())
        .await;
    let forger = Identity::load(&insider_key).unwrap();
    let fake = |subscription: async_nats::Subscriber, client: async_nats::Client| async move {
        let mut subscription = subscription;
        let mut answered = 0u32;
        while let Some(request) = subscription.next().await {
            let Some(reply) = request.reply else { continue };
            let body = br#"{"ok":{"upgrade":"x","cluster":"e2e","status":"completed","reason":null,"phase":"done","target_version":null,"current":null,"nodes":[],"failover_blocked":false,"plan":null,"plan_hash":null,"submitted_ms":null,"updated_ms":null,"events":1,"clean":true}}"#;
            let mut headers = HeaderMap::new();
            if answered % 2 == 1 {
                let sig = request
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(protocol::sign::SIG_HEADER))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                forger.sign_headers(
                    &mut headers,
                    Kind::ApiReply,
                    &reply,
                    &format!("re={sig}"),
                    body,
                );
            }
            answered += 1;
            let _ = client
                .publish_with_headers(reply, headers, body.to_vec().into())
                .await;
        }
    };
    let responder = match sub {
        Ok(subscription) => Some(tokio::spawn(fake(subscription, client.clone()))),
        Err(err) => {
            assert!(nats_auth, "subscribing failed with auth off: {err}");
            None
        }
    };
    client.flush().await.ok();
    // Every answer the CLI shows is the service's; a request the fake took
    // from the queue group is lost (the CLI says it refused the replies), never
    // answered with the fake's COMPLETED.
    let mut answered = 0;
    for _ in 0..10 {
        let out = env.baton(&["--output", "json", "--api-timeout", "3", "status", &upgrade]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let view: workflow::service::api::StatusView =
                serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                view.status, "waiting_approval",
                "a forged reply was believed"
            );
            answered += 1;
        } else {
            assert!(
                !nats_auth,
                "with auth on every request reaches the service: {stderr}"
            );
            assert!(stderr.contains("replies refused"), "{stderr}");
        }
    }
    assert!(answered > 0);
    if nats_auth {
        assert_eq!(answered, 10);
        // The server refused the subscription itself.
        assert!(
            server_errors
                .wait_for("Permissions Violation", Duration::from_secs(10))
                .await,
            "{:?}",
            server_errors.all()
        );
    }
    if let Some(responder) = responder {
        responder.abort();
        let _ = responder.await;
    }
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_responders_are_not_believed_with_nats_auth_on() {
    fake_api_responders_are_not_believed(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fake_api_responders_are_not_believed_with_nats_auth_off() {
    fake_api_responders_are_not_believed(false).await;
}

/// Forged presence (a group `ghost`, a group `x y`, another executor's group)
/// never makes a group online.
async fn forged_presence_is_refused(nats_auth: bool) {
    let env = Env::start(Setup {
        nats_auth,
        ..Setup::default()
    })
    .await;
    let insider_key = env.executor_key("backend-3");
    let insider = Identity::load(&insider_key).unwrap();
    let client = attacker(&env, &insider_key).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js
        .get_key_value(protocol::subjects::PRESENCE_BUCKET)
        .await
        .unwrap();
    let record = |group: &str, id: &str| protocol::Presence {
        v: 1,
        id: id.into(),
        group: group.into(),
        nodes: vec![],
        version: "0".into(),
        host: "h".into(),
        pid: 1,
        started_ms: 0,
        heartbeat_ms: 0,
        executed: 0,
        rejected: 0,
        not_allowed: 0,
        conflicts: 0,
        malformed: 0,
        unsigned: 0,
        running: None,
        profile: None,
    };
    // Under another executor's key (auth on: refused by the server).
    let ghost = protocol::presence::seal(&record("ghost", "ghost"), &insider);
    let other = kv.put("ghost", ghost.into()).await;
    if !nats_auth {
        other.expect("open NATS takes the put");
        let unsigned = serde_json::to_vec(&record("x y", "xy")).unwrap();
        kv.put("xy", unsigned.into()).await.unwrap();
    } else {
        assert!(
            other.is_err(),
            "the server let backend-3 write another executor's presence"
        );
    }
    // Signed by backend-3's key, under its own presence key, for another
    // group; the real executor's heartbeat overwrites it, so repeat until the
    // service has read (and refused) it.
    let refused = tests::wait_until_async(Duration::from_secs(20), || async {
        let sealed = protocol::presence::seal(&record("backend-9", "backend-3"), &insider);
        let put = kv.put("backend-3", sealed.into()).await;
        assert!(
            put.is_ok(),
            "an executor may write its own presence: {put:?}"
        );
        let out = env.baton_ok(&["--output", "json", "executors"]);
        let online = crate::e2e::online_groups(out.as_bytes());
        assert!(!online.contains(&"backend-9".to_string()), "{online:?}");
        env.server
            .as_ref()
            .unwrap()
            .log()
            .contains("executor backend-3 serves group backend-3")
    })
    .await;
    assert!(refused, "{}", env.logs());
    let out = env.baton_ok(&["--output", "json", "executors"]);
    let online = crate::e2e::online_groups(out.as_bytes());
    for bad in ["backend-9", "ghost", "x y"] {
        assert!(
            !online.contains(&bad.to_string()),
            "{bad} is online: {online:?}"
        );
    }
    let log = env.server.as_ref().unwrap().log();
    assert!(log.contains("presence record refused"), "{}", env.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_presence_is_refused_with_nats_auth_on() {
    forged_presence_is_refused(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_presence_is_refused_with_nats_auth_off() {
    forged_presence_is_refused(false).await;
}

/// Two `baton server`s with different logs on one NATS: the second refuses to
/// start, naming the holder; every request is answered by the first.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_service_refuses_to_start_naming_the_lease_holder() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    let other_db = env.dir.path().join("other.db");
    let out = env
        .baton_cmd_as(&env.secure.service_key)
        .args(["server", "--db"])
        .arg(&other_db)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("another workflow service holds the lease")
            && stderr.contains(&env.db().display().to_string()),
        "{stderr}"
    );
    for _ in 0..5 {
        let list = env.baton_ok(&["list"]);
        assert!(list.contains(&upgrade), "{list}");
    }
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;
}

/// Forged step requests on a live deployment: a shell command, an allowed
/// `stop` and a probe with `epoch = u64::MAX`, published on backend-1's step
/// subject. Auth on: the server refuses the publish (operator alice's NATS
/// user may only send API requests). Auth off: the executor refuses them
/// unsigned. Either way nothing runs, and the upgrade that follows is not
/// fenced out and completes safely.
async fn forged_step_requests_run_nothing(nats_auth: bool) {
    let env = Env::start(Setup {
        nats_auth,
        ..Setup::default()
    })
    .await;
    let marker = env.dir.path().join("pwned");
    let upgrade = ulid::Ulid::new().to_string();
    let forged = |step: u64, epoch: u64, action: &str, argv: Vec<String>| protocol::StepRequest {
        v: PROTOCOL_VERSION,
        upgrade: upgrade.clone(),
        step,
        attempt: 1,
        epoch,
        node: "backend-1".into(),
        group: "backend-1".into(),
        action: action.into(),
        argv,
        env: Default::default(),
        timeout_ms: 10_000,
        deadline_ms: u64::MAX,
        profile_sha256: None,
    };
    let requests = [
        forged(
            1,
            1,
            "stop",
            vec![
                "sh".into(),
                "-c".into(),
                format!("touch {}", marker.display()),
            ],
        ),
        forged(2, 1, "stop", vec!["chef-backend-ctl".into(), "stop".into()]),
        forged(
            3,
            u64::MAX,
            "probe_status",
            vec!["chef-backend-ctl".into(), "status".into()],
        ),
    ];
    let alice = env.secure.operator_keys["alice"].clone();
    let (client, server_errors) = if nats_auth {
        env.secure
            .connect_watched(&env.nats.url(), Some(&alice))
            .await
            .unwrap()
    } else {
        (
            async_nats::connect(env.nats.url()).await.unwrap(),
            tests::ServerErrors::default(),
        )
    };
    for request in &requests {
        client
            .publish_with_headers(
                request.subject(),
                request.headers(),
                request.encode().into(),
            )
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    if nats_auth {
        assert!(
            server_errors
                .wait_for("Permissions Violation for Publish", Duration::from_secs(10))
                .await,
            "{:?}",
            server_errors.all()
        );
    } else {
        let refused = tests::wait_until(Duration::from_secs(20), || {
            env.executors[0]
                .log()
                .matches("refused a step request the service did not sign")
                .count()
                == requests.len()
        })
        .await;
        assert!(refused, "{}", env.executors[0].log());
    }
    // The real upgrade runs, under the service's own epoch, and nothing forged ran.
    let real = env.submit(&[]);
    env.expect_completed_safely(&real).await;
    assert!(!marker.exists(), "the forged shell command ran");
    let report = env.report();
    assert_eq!(
        report.installs.get("backend-1").copied(),
        Some(1),
        "{}",
        report.render()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_step_requests_run_nothing_with_nats_auth_on() {
    forged_step_requests_run_nothing(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_step_requests_run_nothing_with_nats_auth_off() {
    forged_step_requests_run_nothing(false).await;
}

/// Credentials in the URL and a token from the environment authenticate to a
/// nats-server that wants them, and are never printed, not even in an error.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_url_or_the_environment_work_and_are_never_printed() {
    let secure = tests::Secure::new(&["backend-1"]).unwrap();
    for (server_args, url_creds, env_token) in [
        (
            vec!["--user", "baton", "--pass", "s3cret-pw"],
            "baton:s3cret-pw@",
            None,
        ),
        (vec!["--auth", "t0ken-xyz"], "", Some("t0ken-xyz")),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = std::process::Command::new(tests::nats::server_binary());
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(&server_args);
        let log = secure.dir.path().join(format!("nats-{port}.log"));
        let _nats = tests::Proc::spawn("nats-server", cmd, &log).unwrap();
        let up = tests::wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        assert!(up, "nats-server did not listen");
        let url = format!("nats://{url_creds}127.0.0.1:{port}");
        let run = |url: &str, token: Option<&str>| {
            let mut cmd = std::process::Command::new(tests::workspace_bin("baton"));
            cmd.env("BATON_NATS_URL", url)
                .env_remove("BATON_NATS_TOKEN")
                .args(["--api-timeout", "2", "list"]);
            for (name, value) in secure.env_signing_only(&secure.operator_keys["alice"]) {
                cmd.env(name, value);
            }
            if let Some(token) = token {
                cmd.env("BATON_NATS_TOKEN", token);
            }
            cmd.output().unwrap()
        };
        // Right credentials: connected (no service runs, so "no responders").
        let out = run(&url, env_token);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("no responders"), "{stderr}");
        // Wrong credentials: an authorization error that shows no secret.
        let wrong_url = url.replace("s3cret-pw", "wr0ng-pw");
        let out = run(&wrong_url, env_token.map(|_| "wr0ng-t0ken"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("connecting to NATS"), "{stderr}");
        for secret in ["s3cret-pw", "wr0ng-pw", "t0ken-xyz", "wr0ng-t0ken"] {
            assert!(!stderr.contains(secret), "{secret} printed: {stderr}");
        }
    }
}

/// The hostile review's reflection: a request whose reply subject is the
/// service's lease or a claim key (signed by a reader, and unsigned) must not
/// make the service publish there. Before the fix, one such request deleted
/// the lease (the service stopped and could not restart) and a burst of them
/// halted an upgrade through forged claims.
async fn reply_subjects_cannot_aim_the_service(nats_auth: bool) {
    let env = Env::start(Setup {
        nats_auth,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    let rita = env.secure.operator_keys["rita"].clone();
    let reader = Identity::load(&rita).unwrap();
    let client = attacker(&env, &rita).await.unwrap();
    let body = serde_json::to_vec(&serde_json::json!({ "upgrade": upgrade })).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    for (i, target) in [
        "$KV.baton_lease.service".to_string(),
        format!("$KV.baton_claims.{upgrade}.5.1"),
        format!("$KV.baton_claims.backend-1.{upgrade}.5.1"),
        "baton.step.backend-1".to_string(),
    ]
    .iter()
    .enumerate()
    {
        let mut signed = HeaderMap::new();
        reader.sign_headers(
            &mut signed,
            Kind::ApiRequest,
            "baton.api.status",
            &format!("t={}", now + i as u128),
            &body,
        );
        for headers in [signed, HeaderMap::new()] {
            client
                .publish_with_reply_and_headers(
                    "baton.api.status",
                    target.clone(),
                    headers,
                    body.clone().into(),
                )
                .await
                .unwrap();
        }
    }
    client.flush().await.unwrap();
    let refused = tests::wait_until(Duration::from_secs(10), || {
        env.server
            .as_ref()
            .unwrap()
            .log()
            .matches("reply subject not the signer's inbox")
            .count()
            == 8
    })
    .await;
    let log = env.server.as_ref().unwrap().log();
    assert!(
        refused,
        "{}",
        log.lines()
            .filter(|l| l.contains("API request"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // The lease still names the service, and the upgrade goes on to the end.
    let service = env
        .secure
        .connect(&env.nats.url(), Some(&env.secure.service_key))
        .await;
    let client = match (nats_auth, service) {
        (true, Ok(client)) => client,
        _ => async_nats::connect(env.nats.url()).await.unwrap(),
    };
    let js = async_nats::jetstream::new(client);
    let lease = js.get_key_value("baton_lease").await.unwrap();
    let holder = lease
        .get("service")
        .await
        .unwrap()
        .expect("the lease is held");
    let holder: serde_json::Value = serde_json::from_slice(&holder).unwrap();
    assert_eq!(holder["service_key"], env.secure.trust.service.key);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reply_subjects_cannot_aim_the_service_with_nats_auth_on() {
    reply_subjects_cannot_aim_the_service(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reply_subjects_cannot_aim_the_service_with_nats_auth_off() {
    reply_subjects_cannot_aim_the_service(false).await;
}

/// Three etcd members faked by `fake_member_tool` (the probes answer with a healthy 3.4.23 cluster's captured
/// output; every call is appended to `ran`), and deployments of one cluster file beside a profile file.
struct FakeEtcd {
    dir: tempfile::TempDir,
    ran: std::path::PathBuf,
    cluster: String,
}

impl FakeEtcd {
    const IDS: [(&'static str, &'static str, &'static str); 3] = [
        ("m1", "47069", "5d14f8b3ac4b6cb1"),
        ("m2", "55533", "2d19e0210d84b8b5"),
        ("m3", "57289", "a2e191591bbfb5f7"),
    ];

    fn new() -> FakeEtcd {
        let root = tests::workspace_root();
        let fixtures = root.join("tests/fixtures/etcd/healthy");
        let dir = tempfile::tempdir().unwrap();
        let ran = dir.path().join("ran");
        let package = dir.path().join("etcd-3.5.1");
        std::fs::create_dir(&package).unwrap();
        let mut cluster =
            String::from("[cluster]\nname = \"etcd-faked\"\nprofile = \"etcd.toml\"\n");
        for (node, port, id) in Self::IDS {
            let home = dir.path().join(node);
            std::fs::create_dir(&home).unwrap();
            for tool in ["ctl", "etcdctl"] {
                let path = home.join(tool);
                std::fs::write(&path, fake_member_tool(&ran, &fixtures, node, tool)).unwrap();
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            cluster.push_str(&format!(
                "\n[[nodes]]\nname = \"{node}\"\naddress = \"127.0.0.1:{port}\"\nexecutor = \"{node}\"\n\
                 vars = {{ ctl = \"{h}/ctl\", etcdctl = \"{h}/etcdctl\", \
                 endpoints = \"127.0.0.1:47069,127.0.0.1:55533,127.0.0.1:57289\", member_id = \"{id}\" }}\n",
                h = home.display()
            ));
        }
        // A check that cannot settle (a probe refused) gives up after 10 s, not the default 10 minutes.
        cluster.push_str(&format!(
            "\n[upgrade]\npackage = \"{}\"\ntarget_version = \"3.5.1\"\nsync_timeout_ms = 10000\n",
            package.display()
        ));
        FakeEtcd { dir, ran, cluster }
    }

    /// A directory `name` holding the cluster file and `profile` as `etcd.toml`.
    fn deploy(&self, name: &str, profile: &str) -> std::path::PathBuf {
        let at = self.dir.path().join(name);
        std::fs::create_dir(&at).unwrap();
        std::fs::write(at.join("cluster.toml"), &self.cluster).unwrap();
        std::fs::write(at.join("etcd.toml"), profile).unwrap();
        at
    }

    fn groups(&self) -> Vec<String> {
        Self::IDS.iter().map(|(n, _, _)| n.to_string()).collect()
    }

    /// The commands run so far on `node`'s member, one per line as `fake_member_tool` wrote them.
    fn ran_on(&self, node: &str) -> Vec<String> {
        std::fs::read_to_string(&self.ran)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(node))
            .map(str::to_string)
            .collect()
    }
}

/// `etcdctl` or `ctl` of one member, faked: each call is appended to `ran`, and the probes answer with the real
/// output captured from a healthy 3.4.23 cluster (`tests/fixtures/etcd/healthy`, whose cluster file's addresses
/// and member IDs the test's cluster file copies).
fn fake_member_tool(ran: &Path, fixtures: &Path, node: &str, tool: &str) -> String {
    let cases = match tool {
        "ctl" => {
            "installed-version) p=version.NODE;; running-version) p=running_version.NODE;; \
                  package-version) p=package.NODE;; endpoint-status) p=topology;;"
        }
        _ => "*'endpoint status'*) p=topology;; *'endpoint health'*) p=node.NODE;;",
    }
    .replace("NODE", node);
    let subject = if tool == "ctl" { "$1" } else { "$*" };
    format!(
        "#!/bin/sh\necho \"{tool} {node} $*\" >> '{ran}'\np=\ncase \"{subject}\" in {cases} esac\n\
         [ -n \"$p\" ] || exit 0\nf='{fixtures}'/$p\ncat \"$f.stdout\"; cat \"$f.stderr\" >&2; exit \"$(cat \"$f.exit\")\"\n",
        ran = ran.display(),
        fixtures = fixtures.display()
    )
}

/// Issue 13's hostile review: an operator-role key submits an etcd profile whose commands are exactly the
/// executors' (every argv passes their allow lists) but whose parsers lie: a member that fails its health check
/// counts as up, and no member is ever behind the leader. The service would read every probe with those parsers
/// and the guard would pass on a cluster it cannot see. Each executor serves its own copy of the profile file,
/// says which in its presence record, and runs a step only if the step's `profile_sha256` (the plan's) is its
/// file's: the service refuses the submission at once naming both hashes, nothing runs on any member and nothing
/// is recorded. The same deployment, asked for a plan with the honest profile, does run the probes (the `ran`
/// file can fill).
#[tokio::test(flavor = "multi_thread")]
async fn a_submitted_profile_whose_parsers_differ_from_the_executors_runs_nothing() {
    let root = tests::workspace_root();
    let honest = std::fs::read_to_string(root.join("profiles/etcd.toml")).unwrap();
    let lying = honest
        .replace(
            r#"up_when = { pointer = "/0/health", in = [true] }"#,
            r#"up_when = { pointer = "/0/health", in = [true, false] }"#,
        )
        .replace(
            r#"behind_leader = ["/Status/raftAppliedIndex", "/Status/raftIndex"]"#,
            "",
        )
        .replace("max_lag = 100\n", "");
    assert_ne!(lying, honest);
    let fake = FakeEtcd::new();
    let ran = fake.ran.clone();
    // The executors' deployment: the cluster file and the honest profile beside it. The operator's copy: the
    // same cluster file, the lying profile beside it.
    let (deployed, submitted) = (
        fake.deploy("deployed", &honest),
        fake.deploy("submitted", &lying),
    );
    let sha256sum = |path: &Path| {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum runs (coreutils)");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("sha256sum prints the hash")
            .to_string()
    };
    let ours = sha256sum(&deployed.join("etcd.toml"));
    let theirs = sha256sum(&submitted.join("etcd.toml"));
    let groups = fake.groups();
    let baton = crate::real_baton::Baton::start(&deployed.join("cluster.toml"), &groups).await;

    // oscar holds the operator role: enough to submit, not to approve. The executors' presence records say which
    // profile each serves, so the service refuses the submission before anything is recorded or run, naming
    // both hashes and the executors. (Each executor also refuses any step planned with another profile, for an
    // executor whose record does not say or one restarted mid-upgrade: `executor::allow`'s tests.)
    let out = baton.run_as(
        "oscar",
        &[
            "submit",
            "--cluster",
            &submitted.join("cluster.toml").display().to_string(),
            "--detach",
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}\n{}", baton.logs());
    for needle in [
        format!("this submission's profile is profile `etcd.toml` (sha256 {theirs})"),
        format!("serves profile `etcd` (sha256 {ours})"),
        "executor ".to_string(),
        "they would refuse every step of it".to_string(),
    ] {
        assert!(said.contains(&needle), "{needle}: {said}");
    }
    // Nothing ran on any member, and nothing was recorded.
    assert!(
        !ran.exists(),
        "commands ran: {}\n{}",
        std::fs::read_to_string(&ran).unwrap_or_default(),
        baton.executor_logs()
    );
    let listed = baton.run_as("oscar", &["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(!listed.contains("etcd-faked"), "{listed}");

    // The control: the honest profile's plan runs its probes on the same executors.
    let out = baton.run_as(
        "oscar",
        &[
            "plan",
            "--cluster",
            &deployed.join("cluster.toml").display().to_string(),
        ],
    );
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{plan}{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        baton.logs()
    );
    assert!(
        plan.contains(&format!("profile file sha256: {ours}")),
        "{plan}"
    );
    let calls = std::fs::read_to_string(&ran).unwrap();
    assert!(
        calls.contains("etcdctl m1 ") || calls.contains("etcdctl m2 "),
        "{calls}"
    );
}

/// Hostile review 4 #6: the presence check refuses a submission whose profile is not the executors', but an
/// executor restarted mid-upgrade with an edited profile file (an operator changed it on one host) is only
/// caught by the executor itself: every step planned with the old profile is refused `wrong_profile` before
/// anything runs, and the upgrade stops on that refusal instead of reading the member with another profile's
/// parsers. The pause lands during preflight (which then refuses at once) or after it (the guard's check cannot
/// settle and halts after the fake cluster's 10 s `sync_timeout_ms`; CI saw that path wait out the default
/// 10 minutes before the cluster file set it).
#[tokio::test(flavor = "multi_thread")]
async fn an_executor_restarted_mid_upgrade_with_an_edited_profile_refuses_the_steps_and_runs_nothing(
) {
    let root = tests::workspace_root();
    let honest = std::fs::read_to_string(root.join("profiles/etcd.toml")).unwrap();
    let edited = honest.replace("max_lag = 100\n", "max_lag = 1000\n");
    assert_ne!(edited, honest);
    let fake = FakeEtcd::new();
    let (deployed, edited_at) = (
        fake.deploy("deployed", &honest),
        fake.deploy("edited", &edited),
    );
    let mut baton =
        crate::real_baton::Baton::start(&deployed.join("cluster.toml"), &fake.groups()).await;
    let submitted = baton.run_ok(&[
        "submit",
        "--cluster",
        &deployed.join("cluster.toml").display().to_string(),
        "--detach",
    ]);
    let upgrade = submitted.trim().to_string();
    baton.run_ok(&[
        "pause",
        &upgrade,
        "--reason",
        "m1's profile is being edited",
    ]);
    let paused = tests::wait_until(Duration::from_secs(30), || {
        baton.status(&upgrade).is_some_and(|s| s.status == "paused")
    })
    .await;
    assert!(paused, "paused\n{}", baton.logs());

    baton
        .restart_executor("m1", &edited_at.join("cluster.toml"))
        .await;
    let before = fake.ran_on("m1").len();
    baton.run_ok(&["resume", &upgrade]);
    let ended = tests::wait_until(Duration::from_secs(90), || {
        baton
            .status(&upgrade)
            .is_some_and(|s| s.status == "halted" || s.status == "completed")
    })
    .await;
    let view = baton.status(&upgrade);
    assert!(ended, "the upgrade ended: {view:?}\n{}", baton.logs());
    let view = view.unwrap();
    assert_eq!(view.status, "halted", "{view:?}");
    let reason = view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("m1") && reason.contains("sha256"),
        "the halt names the node and the refusal: {reason}"
    );
    let logs = baton.executor_logs();
    assert!(
        logs.contains("wrong_profile"),
        "the restarted executor refused wrong_profile:\n{logs}"
    );
    let after = fake.ran_on("m1");
    assert_eq!(
        after.len(),
        before,
        "nothing ran on m1 after its executor came back with another profile: {:?}",
        &after[before..]
    );
}
