//! Issue 12, "A sealed log": an insider rewrites one event of a finished
//! upgrade and re-seals the whole chain and its head without the service's
//! key. The chains alone still verify; the signed checkpoints (in the log and
//! exported off-box from BATON_CHECKPOINTS) do not, and the service refuses
//! to start on that log.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

/// Rewrites record `seq` of `upgrade` and re-seals every later hash and the
/// head, as someone with write access but without the key would.
fn rewrite_and_reseal(raw: &sled::Db, upgrade: &str, seq: u64) {
    let log = store::layout::open_tree(raw).unwrap();
    let stream: store::StreamId = upgrade.parse().unwrap();
    let head_key = store::layout::head_entry_key(&stream);
    let head = store::layout::decode_head(&log.get(head_key).unwrap().unwrap()).unwrap();
    let mut prev = store::ZERO_HASH;
    for n in 1..=head.seq {
        let key = store::layout::record_entry_key(&stream, n);
        let mut value = store::layout::decode_record(&log.get(key).unwrap().unwrap()).unwrap();
        if n == seq {
            let mut event: serde_json::Value = serde_json::from_slice(&value.bytes).unwrap();
            event["rewritten"] = true.into();
            value.bytes = serde_json::to_vec(&event).unwrap();
        }
        let hash = store::chain_hash(&stream, n, &prev, &value.bytes);
        let encoded = store::layout::encode_record(
            &hash,
            &prev,
            value.global_pos,
            value.msg_id.as_deref(),
            &value.bytes,
        );
        log.insert(key, encoded).unwrap();
        prev = hash;
    }
    let sealed = store::Head {
        seq: head.seq,
        hash: prev,
    };
    log.insert(head_key, &store::layout::encode_head(&sealed)[..])
        .unwrap();
    raw.flush().unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewritten_and_resealed_log_fails_its_signed_checkpoints() {
    let mut env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed");

    // The terminal event's checkpoint is published; keep a copy off-box.
    let anchor = env.dir.path().join("anchor.jsonl");
    let anchor_arg = anchor.display().to_string();
    let head = view.events;
    let mut exported = String::new();
    for _ in 0..100 {
        env.baton_ok(&["audit", "checkpoint", "export", "--out", &anchor_arg]);
        exported = std::fs::read_to_string(&anchor).unwrap();
        if exported.contains(&format!("\"seq\":{head},")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let anchored: Vec<serde_json::Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        anchored
            .iter()
            .any(|c| c["stream"] == upgrade.as_str() && c["seq"] == head),
        "a checkpoint of the head {head} is in BATON_CHECKPOINTS: {exported}"
    );
    let out = env.baton(&["audit", "verify", "--anchor", &anchor_arg]);
    assert!(out.status.success(), "through the service: {}", text(&out));

    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");

    // The untouched log passes everything.
    let db = env.db().display().to_string();
    let out = env.baton(&["audit", "verify", "--db", &db, "--anchor", &anchor_arg]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("signed by the service key"),
        "{}",
        text(&out)
    );
    let unsigned = env
        .baton_cmd()
        .env_remove("BATON_TRUST")
        .args(["audit", "verify", "--db", &db])
        .output()
        .unwrap();
    assert!(unsigned.status.success(), "{}", text(&unsigned));
    assert!(
        text(&unsigned).contains("signatures NOT checked"),
        "without a trust file, verify says so: {}",
        text(&unsigned)
    );

    let untouched = env.dir.path().join("untouched.db");
    copy_dir(&env.db(), &untouched);
    rewrite_and_reseal(&sled::open(env.db()).unwrap(), &upgrade, 2);
    tests::wait_unlocked(&env.db());
    {
        let log = store::Store::open(env.db()).unwrap();
        assert!(
            log.verify().unwrap().is_clean(),
            "the re-sealed chains verify on their own"
        );
    }
    tests::wait_unlocked(&env.db());

    // The log's own checkpoints catch it, naming the first bad one.
    let out = env.baton(&["audit", "verify", "--db", &db]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let first_bad = anchored
        .iter()
        .filter(|c| c["stream"] == upgrade.as_str())
        .map(|c| c["seq"].as_u64().unwrap())
        .filter(|seq| *seq >= 2)
        .min()
        .unwrap();
    assert!(
        text(&out).contains(&format!(
            "bad checkpoint of stream {upgrade} at seq {first_bad}"
        )) && text(&out).contains("rewritten"),
        "{}",
        text(&out)
    );

    // An export of the upgrade alone (no checkpoints in it) chains; the
    // off-box anchor catches it.
    let export = env.dir.path().join("export.jsonl");
    let export_arg = export.display().to_string();
    env.baton_ok(&[
        "audit",
        "export",
        &upgrade,
        "--db",
        &db,
        "--out",
        &export_arg,
    ]);
    let out = env.baton(&["audit", "verify", "--file", &export_arg]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.baton(&[
        "audit",
        "verify",
        "--file",
        &export_arg,
        "--anchor",
        &anchor_arg,
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("bad checkpoint of stream {upgrade}")),
        "{}",
        text(&out)
    );
    let out = env.baton(&["audit", "verify", "--db", &db, "--anchor", &anchor_arg]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));

    // The service refuses to start on it.
    env.start_server();
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the service refuses to start on a log with a bad checkpoint");
    assert!(!status.success());
    assert!(
        server.log().contains("signed checkpoint does not hold"),
        "{}",
        server.log()
    );

    // On the untouched copy it starts; the log agrees with its BATON_EVENTS
    // mirror, and the rewritten one does not.
    env.db = untouched;
    env.start_server();
    env.wait_for_executors().await;
    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = env.baton(&["audit", "verify", "--db", &db, "--mirror"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("upgrade {upgrade} seq 2: the mirror has hash")),
        "{}",
        text(&out)
    );
}

/// Removes every checkpoint record from the service stream and re-seals it:
/// the kept records are renumbered, re-chained, and the indexes follow.
fn strip_checkpoints(raw: &sled::Db) {
    let log = store::layout::open_tree(raw).unwrap();
    let service = store::StreamId([0; 16]);
    let head_key = store::layout::head_entry_key(&service);
    let head = store::layout::decode_head(&log.get(head_key).unwrap().unwrap()).unwrap();
    let mut kept = Vec::new();
    for n in 1..=head.seq {
        let key = store::layout::record_entry_key(&service, n);
        let value = store::layout::decode_record(&log.remove(key).unwrap().unwrap()).unwrap();
        let event: serde_json::Value = serde_json::from_slice(&value.bytes).unwrap();
        if event["type"] != "Checkpoint" {
            kept.push(value);
        }
    }
    // The global index holds runs of records of one stream: drop the service stream's, write one per kept record.
    for kv in store::layout::scan_table(&log, store::layout::GLOBAL) {
        let (k, v) = kv.unwrap();
        if store::layout::decode_global_run(&v).unwrap().stream == service {
            log.remove(k).unwrap();
        }
    }
    assert!(
        kept.len() < head.seq as usize,
        "there were checkpoints to strip"
    );
    let mut prev = store::ZERO_HASH;
    for (i, value) in kept.iter().enumerate() {
        let n = i as u64 + 1;
        let hash = store::chain_hash(&service, n, &prev, &value.bytes);
        let encoded = store::layout::encode_record(
            &hash,
            &prev,
            value.global_pos,
            value.msg_id.as_deref(),
            &value.bytes,
        );
        log.insert(store::layout::record_entry_key(&service, n), encoded)
            .unwrap();
        let run = store::layout::GlobalRun {
            stream: service,
            seq: n,
            count: 1,
        };
        log.insert(
            store::layout::global_entry_key(value.global_pos),
            &store::layout::encode_global_run(&run)[..],
        )
        .unwrap();
        prev = hash;
    }
    let sealed = store::Head {
        seq: kept.len() as u64,
        hash: prev,
    };
    log.insert(head_key, &store::layout::encode_head(&sealed)[..])
        .unwrap();
    // The next global position follows the last one left.
    let (last, run) = store::layout::scan_table(&log, store::layout::GLOBAL)
        .next_back()
        .unwrap()
        .unwrap();
    let run = store::layout::decode_global_run(&run).unwrap();
    let next = store::layout::decode_u64(&last[1..]).unwrap() + run.count;
    log.insert(store::layout::META_NEXT_GLOBAL, &next.to_be_bytes()[..])
        .unwrap();
    raw.flush().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_stripped_of_its_checkpoints_is_caught_by_the_off_box_copy() {
    let mut env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&[]);
    let view = env
        .wait_status(
            &upgrade,
            &["completed", "halted", "aborted"],
            UPGRADE_TIMEOUT,
        )
        .await;
    assert_eq!(view.status, "completed");
    let anchor = env.dir.path().join("anchor.jsonl");
    let anchor_arg = anchor.display().to_string();
    let head = view.events;
    for _ in 0..100 {
        env.baton_ok(&["audit", "checkpoint", "export", "--out", &anchor_arg]);
        if std::fs::read_to_string(&anchor)
            .unwrap()
            .contains(&format!("\"seq\":{head},"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");

    // Rewrite an event, re-seal its chain, and remove the checkpoints that
    // would tell (re-sealing the service stream too).
    {
        let raw = sled::open(env.db()).unwrap();
        rewrite_and_reseal(&raw, &upgrade, 2);
        strip_checkpoints(&raw);
    }
    tests::wait_unlocked(&env.db());
    let db = env.db().display().to_string();
    let out = env.baton(&["audit", "verify", "--db", &db]);
    assert!(
        out.status.success(),
        "the log alone cannot tell (a documented limit): {}",
        text(&out)
    );
    assert!(text(&out).contains("0 checkpoints"), "{}", text(&out));

    // The exported anchor tells, and so does BATON_CHECKPOINTS at start.
    let out = env.baton(&["audit", "verify", "--db", &db, "--anchor", &anchor_arg]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("bad checkpoint of stream {upgrade}")),
        "{}",
        text(&out)
    );
    env.start_server();
    let server = env.server.as_mut().unwrap();
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the service refuses to start on a log BATON_CHECKPOINTS contradicts");
    assert!(!status.success());
    assert!(
        server
            .log()
            .contains("BATON_CHECKPOINTS disagrees with the log"),
        "{}",
        server.log()
    );
}

/// Every message of `BATON_EVENTS` for `upgrade`, as JSON, read directly.
async fn mirrored(js: &async_nats::jetstream::Context, upgrade: &str) -> Vec<serde_json::Value> {
    let stream = js
        .get_stream(protocol::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let subject = protocol::subjects::event(upgrade);
    let mut out = Vec::new();
    let mut from = 1;
    while let Ok(message) = stream
        .get_first_raw_message_by_subject(&subject, from)
        .await
    {
        from = message.sequence + 1;
        out.push(serde_json::from_slice(&message.payload).unwrap());
    }
    out
}

/// Issue 12: someone with access to an open NATS purges the `BATON_EVENTS`
/// mirror and republishes it forged (one event's hash changed, one event left
/// out). `baton audit verify --mirror` reports both and exits 5; at its next
/// start the service refuses to act on the unfinished upgrade (it pauses it,
/// naming the first difference), mirrors again what was left out, and goes
/// on only when an operator resumes. With the shipped least-privilege NATS
/// configuration the purge itself is refused, even to an executor's identity.
#[tokio::test(flavor = "multi_thread")]
async fn a_forged_mirror_is_reported_and_its_upgrade_is_not_acted_on() {
    // With authentication on, nobody but nats-server's own account may purge.
    {
        let env = Env::start(Setup::default()).await;
        let key = env.executor_key("backend-1");
        let client = env
            .secure
            .connect(&env.nats.url(), Some(&key))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let purged = match js.get_stream(protocol::subjects::EVENTS_STREAM).await {
            Ok(stream) => stream.purge().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        assert!(
            purged.is_err(),
            "an executor's identity purged BATON_EVENTS"
        );
    }

    let mut env = Env::start(Setup {
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert!(out.status.success(), "{}", text(&out));

    // The forgery: purge, then republish with seq 2's hash changed and seq 3 left out.
    let original = mirrored(&js, &upgrade).await;
    assert!(original.len() > 3, "{original:?}");
    js.get_stream(protocol::subjects::EVENTS_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    let forged_hash = "ab".repeat(32);
    for message in &original {
        let mut message = message.clone();
        match message["seq"].as_u64() {
            Some(3) => continue,
            Some(2) => message["hash"] = serde_json::json!(forged_hash),
            _ => {}
        }
        js.publish(
            protocol::subjects::event(&upgrade),
            message.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    for needle in [
        format!("upgrade {upgrade} seq 2: the mirror has hash {forged_hash}"),
        format!("upgrade {upgrade} seq 3: in the log, not in the mirror"),
    ] {
        assert!(text(&out).contains(&needle), "{needle}\n{}", text(&out));
    }

    // The service restarts: it will not act on the upgrade until an operator says so.
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");
    env.start_server();
    env.wait_for_executors().await;
    let view = env
        .wait_status(&upgrade, &["paused"], UPGRADE_TIMEOUT)
        .await;
    let reason = view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("mirror disagreeing with the log")
            && reason.contains(&format!("upgrade {upgrade} seq 2: the mirror has hash")),
        "{view:?}"
    );
    assert!(
        env.server
            .as_ref()
            .unwrap()
            .log()
            .contains("the BATON_EVENTS mirror disagrees with the log; pausing the upgrade"),
        "{}",
        env.logs()
    );
    // What the mirror lacked is mirrored again; the forged hash stays reported.
    let mut out = env.baton(&["audit", "verify", "--mirror"]);
    for _ in 0..50 {
        if !text(&out).contains("seq 3: in the log, not in the mirror") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = env.baton(&["audit", "verify", "--mirror"]);
    }
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        !text(&out).contains("seq 3: in the log, not in the mirror")
            && text(&out).contains(&format!("upgrade {upgrade} seq 2: the mirror has hash")),
        "{}",
        text(&out)
    );

    // Explained: the operator resumes and approves; the upgrade completes safely.
    env.baton_ok(&["resume", &upgrade]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;

    // A service stopped between a finished upgrade's last appends and their
    // mirroring (here: the mirror's last two messages deleted) mirrors that
    // tail at its next start.
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");
    let stream = js
        .get_stream(protocol::subjects::EVENTS_STREAM)
        .await
        .unwrap();
    let subject = protocol::subjects::event(&upgrade);
    let mut dropped = Vec::new();
    for _ in 0..2 {
        let last = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        let seq: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
        dropped.push(seq["seq"].as_u64().unwrap());
        assert!(stream.delete_message(last.sequence).await.unwrap());
    }
    let gone = |out: &std::process::Output| {
        dropped
            .iter()
            .all(|seq| !text(out).contains(&format!("seq {seq}: in the log, not in the mirror")))
    };
    env.start_server();
    env.wait_for_executors().await;
    let mut out = env.baton(&["audit", "verify", "--mirror"]);
    for _ in 0..50 {
        if gone(&out) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        out = env.baton(&["audit", "verify", "--mirror"]);
    }
    assert!(gone(&out), "{dropped:?} re-mirrored: {}", text(&out));
}

/// Mirror messages of a few hundred KiB each (an event carrying two full
/// output tails is up to ~768 KiB): `baton audit verify --mirror` pages
/// `BATON_EVENTS` through the service, and a page must fit in one NATS
/// message (1 MiB by default). Eight 300 KB messages, forged here on an open
/// NATS for an upgrade the log does not have, are read and reported, not a
/// failed reply.
#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_mirror_pages_large_mirror_messages() {
    let env = Env::start(Setup {
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let upgrade = "01KZZZZZZZZZZZZZZZZZZZZZZZ";
    let pad = "x".repeat(300_000);
    for seq in 1..=8u64 {
        let message = serde_json::json!({
            "upgrade": upgrade, "seq": seq, "hash": "00".repeat(32), "event": {"pad": pad},
        });
        js.publish(
            protocol::subjects::event(upgrade),
            message.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    for seq in 1..=8 {
        let needle = format!("upgrade {upgrade} seq {seq}: mirrored, but not in the log");
        assert!(text(&out).contains(&needle), "{needle}\n{}", text(&out));
    }
}

/// A flooded mirror: someone on an open NATS publishes far more messages on
/// an unfinished upgrade's mirror subject than its log has events (here
/// copies of its true first event, which agree with the log). At start the
/// service reads at most `mirror::start_limit` of them (in pages, but millions
/// would still hold every upgrade's recovery and the service's memory) and
/// pauses the upgrade, naming the flood, instead of reading on.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooded_mirror_is_not_read_to_its_end_at_start_and_its_upgrade_is_paused() {
    let mut env = Env::start(Setup {
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    // With the service stopped the log stands still (a gate's watch keeps
    // adding events): the mirror then holds exactly the log's events.
    let server = env.server.as_mut().unwrap();
    server.signal(Signal::SIGTERM);
    server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops on SIGTERM");
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let original = mirrored(&js, &upgrade).await;
    let limit = workflow::service::mirror::start_limit(original.len() as u64);
    let first = original[0].to_string();
    let mut acks = Vec::new();
    for _ in 0..=limit {
        acks.push(
            js.publish(protocol::subjects::event(&upgrade), first.clone().into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }

    env.start_server();
    env.wait_for_executors().await;
    let view = env
        .wait_status(&upgrade, &["paused"], UPGRADE_TIMEOUT)
        .await;
    let reason = view.reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "more than {limit} messages on baton.event.{upgrade}"
        )),
        "{view:?}"
    );
}

/// What `baton audit verify --mirror` reads of `BATON_EVENTS` is judged as the
/// service's start check judges it: a message that is not JSON, or that names
/// another upgrade than the subject it is on, is a malformed message (it was
/// left out of the page, so the audit said OK).
#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_mirror_reports_a_message_that_is_not_json() {
    let env = Env::start(Setup {
        nats_auth: false,
        ..Setup::default()
    })
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let upgrade = "01KZZZZZZZZZZZZZZZZZZZZZZZ";
    js.publish(protocol::subjects::event(upgrade), "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let out = env.baton(&["audit", "verify", "--mirror"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        text(&out).contains("a mirrored message is malformed") && text(&out).contains("not json"),
        "{}",
        text(&out)
    );
}
