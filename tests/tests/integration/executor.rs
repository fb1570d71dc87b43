//! Integration tests: `baton executor` processes against a real nats-server.
//!
//! Each test starts its own nats-server and real executor processes (the
//! `baton` binary), publishes step requests the way the workflow service
//! does, and counts the commands that actually ran.
//!
//! An executor runs only renderings of its profile's templates (chef-backend:
//! `chef-backend-ctl status`, `dpkg -i PACKAGE`, ...), so each test's
//! executors find fake node tools first in their PATH: a fake tool runs the
//! script the test wrote for that command (`Env::behave`), or else appends
//! the command line to the test's `ran` file. The attacks at the end show
//! that anything else published on a step subject runs nothing.
//!
//! The bus is authenticated by signatures even with NATS auth off (as here):
//! the test plays the workflow service with a service key of its own trust
//! file ([`Keyring`]), signs the requests it publishes as the service, gives
//! each executor a key listed for its group, and accepts only results and
//! presence records signed by those executor keys. The signature tests show
//! that a request the service did not sign, for the subject it arrives on,
//! runs nothing, is answered with nothing and is recorded nowhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use nix::sys::signal::Signal;
use protocol::sign::{ExecutorPeer, Identity, Kind, OperatorPeer, Peer, Role, Trust};
use protocol::{decode_result, subjects, Outcome, Presence, StepRequest, StepResult};
use tempfile::TempDir;
use tests::{wait_until, wait_until_async, workspace_bin, NatsServer, Proc};

/// Generous bound for anything that should take well under a second.
const SOON: Duration = Duration::from_secs(15);
const ACK_WAIT_MS: u64 = 2000;
const PRESENCE_TTL_MS: u64 = 2000;

struct Env {
    nats: NatsServer,
    js: jetstream::Context,
    dir: TempDir,
    keys: Keyring,
}

/// The keys of one test: the service's, an operator's, and one per executor
/// name (with its group), each seed in a 0600 file, and the trust file
/// listing their public keys (rewritten when an executor is added; an
/// executor reads it when it starts).
struct Keyring {
    dir: PathBuf,
    service: Identity,
    operator: Identity,
    executors: Mutex<BTreeMap<String, (Identity, String)>>,
}

impl Keyring {
    fn new(dir: &Path) -> Keyring {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let keys = Keyring {
            dir: dir.to_path_buf(),
            service: Identity::generate(),
            operator: Identity::generate(),
            executors: Mutex::new(BTreeMap::new()),
        };
        keys.write_trust();
        keys
    }

    /// The executor `name` of `group`: its key (made on first use) and seed file.
    fn executor(&self, name: &str, group: &str) -> (Identity, PathBuf) {
        let seed = self.dir.join("keys").join(format!("{name}.seed"));
        let identity = {
            let mut executors = self.executors.lock().unwrap();
            let (identity, known_group) = executors
                .entry(name.to_string())
                .or_insert_with(|| {
                    let identity = Identity::generate();
                    identity.write_seed(&seed).expect("seed written");
                    (identity, group.to_string())
                })
                .clone();
            assert_eq!(
                known_group, group,
                "executor {name} is of group {known_group}"
            );
            identity
        };
        self.write_trust();
        (identity, seed)
    }

    fn trust(&self) -> Trust {
        let executors = self.executors.lock().unwrap();
        Trust {
            service: Peer {
                name: "baton-service".into(),
                key: self.service.public_key(),
            },
            executors: executors
                .iter()
                .map(|(name, (identity, group))| ExecutorPeer {
                    name: name.clone(),
                    key: identity.public_key(),
                    group: group.clone(),
                })
                .collect(),
            operators: vec![OperatorPeer {
                name: "alice".into(),
                key: self.operator.public_key(),
                role: Role::Approver,
            }],
        }
    }

    fn trust_path(&self) -> PathBuf {
        self.dir.join("trust.toml")
    }

    fn write_trust(&self) {
        // Written aside and renamed: an executor starting meanwhile reads a whole file.
        let tmp = self.dir.join("trust.toml.tmp");
        std::fs::write(&tmp, self.trust().to_toml()).unwrap();
        std::fs::rename(&tmp, self.trust_path()).unwrap();
    }

    /// Check a stored result's signature: made by an executor of the trust
    /// file for this subject and payload, and the result names that executor.
    fn check_result(
        &self,
        headers: Option<&HeaderMap>,
        subject: &str,
        payload: &[u8],
    ) -> StepResult {
        let result = decode_result(payload).expect("results are well-formed");
        let verified = protocol::sign::verify_headers(headers, Kind::Result, subject, payload)
            .unwrap_or_else(|e| panic!("result {result:?} is not validly signed: {e}"));
        let trust = self.trust();
        let signer = trust.executor(&verified.key).unwrap_or_else(|| {
            panic!(
                "result {result:?} signed by {}, not an executor",
                verified.key
            )
        });
        assert_eq!(
            signer.name, result.executor,
            "signed by another executor: {result:?}"
        );
        result
    }

    /// Sign `payload` as a step request on `subject` with `signer`.
    fn sign(signer: &Identity, subject: &str, payload: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        signer.sign_headers(&mut headers, Kind::Step, subject, "", payload);
        headers
    }
}

/// The node tools the fake `bin/` provides: each runs `do/<tool>-<first arg>.sh` if the test wrote it,
/// else records `<tool> <args>` in `ran`.
const FAKE_TOOLS: [&str; 4] = ["chef-backend-ctl", "dpkg", "dpkg-deb", "dpkg-query"];
const FAKE_TOOL: &str = r#"#!/bin/sh
t=$(basename "$0")
f="$BATON_TEST_DIR/do/$t-$1.sh"
if [ -f "$f" ]; then exec sh "$f" "$@"; fi
echo "$t $*" >> "$BATON_TEST_DIR/ran"
"#;

/// The stream and bucket options the test's "service" creates them with.
fn service_options() -> protocol::Options {
    protocol::Options {
        presence_ttl: Duration::from_millis(PRESENCE_TTL_MS),
        executor_ack_wait: Duration::from_millis(ACK_WAIT_MS),
        ..Default::default()
    }
}

impl Env {
    /// A nats-server with Baton's streams created, as the service would.
    async fn start() -> Env {
        let env = Env::start_without_streams().await;
        protocol::ensure(&env.js, &service_options())
            .await
            .expect("streams are set up");
        env
    }

    /// A nats-server on which the service has not created the streams yet.
    async fn start_without_streams() -> Env {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = async_nats::connect(nats.url())
            .await
            .expect("test client connects");
        let js = jetstream::new(client);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::create_dir(dir.path().join("do")).unwrap();
        for tool in FAKE_TOOLS {
            let path = dir.path().join("bin").join(tool);
            std::fs::write(&path, FAKE_TOOL).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let keys = Keyring::new(dir.path());
        Env {
            nats,
            js,
            dir,
            keys,
        }
    }

    /// What the fake `<tool> <first>` does from now on: `script` (sh, with the tool's argv as `$@`).
    fn behave(&self, tool: &str, first: &str, script: &str) {
        std::fs::write(self.path("do").join(format!("{tool}-{first}.sh")), script).unwrap();
    }

    /// PATH with the fake node tools first.
    fn fake_path(&self) -> String {
        format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start `baton executor` for `group` with its own state dir `state`; it
    /// serves backend-1 and backend-2 unless `extra` names its `--nodes`. Its
    /// key is listed in the trust file as executor `id` of `group` (and
    /// `--id` checks that).
    fn executor(&self, group: &str, id: &str, state: &str, extra: &[&str]) -> Proc {
        let (_, seed) = self.keys.executor(id, group);
        let mut cmd = Command::new(workspace_bin("baton"));
        cmd.env("BATON_NATS_URL", self.nats.url())
            .env("BATON_KEY", &seed)
            .env("BATON_TRUST", self.keys.trust_path())
            .env("RUST_LOG", "info")
            .env("PATH", self.fake_path())
            .env("BATON_TEST_DIR", self.dir.path())
            .arg("executor")
            .args(["--group", group, "--id", id])
            .arg("--state-dir")
            .arg(self.path(state))
            .args(["--heartbeat-ms", "200"])
            .args(["--ack-wait-ms", &ACK_WAIT_MS.to_string()])
            .args(["--fetch-wait-ms", "300"])
            .args(extra);
        if !extra.contains(&"--nodes") {
            cmd.args(["--nodes", "backend-1,backend-2"]);
        }
        Proc::spawn(id, cmd, &self.path(&format!("{id}.log"))).expect("executor starts")
    }

    /// Publish `req` as the workflow service does: signed with the service
    /// key, with its idempotency id.
    async fn publish(&self, req: &StepRequest) {
        let (headers, payload) = req.signed(&self.keys.service);
        self.publish_with(&req.subject(), headers, &payload).await;
    }

    /// Publish `body` on `baton.step.<group>` signed with the service key but
    /// without a msg id (so the stream's de-duplication does not drop it): a
    /// redelivery, or a request the service signed that is wrong in itself.
    async fn publish_raw(&self, group: &str, body: &[u8]) {
        let subject = subjects::step(group);
        let headers = Keyring::sign(&self.keys.service, &subject, body);
        self.publish_with(&subject, headers, body).await;
    }

    /// Publish `body` on `subject` with exactly these headers.
    async fn publish_with(&self, subject: &str, headers: HeaderMap, body: &[u8]) {
        self.js
            .publish_with_headers(subject.to_string(), headers, body.to_vec().into())
            .await
            .expect("request published")
            .await
            .expect("request stored");
    }

    /// Publish `req` on its subject without any signature, as any NATS client can.
    async fn publish_unsigned(&self, req: &StepRequest) {
        self.js
            .publish(req.subject(), req.encode().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Every result stored for `upgrade`, in stream order. Retries while the
    /// test's client is reconnecting (after a server restart).
    async fn results(&self, upgrade: &str) -> Vec<StepResult> {
        let deadline = Instant::now() + SOON;
        loop {
            match self.try_results(upgrade).await {
                Ok(results) => return results,
                Err(e) if Instant::now() >= deadline => panic!("could not read results: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn try_results(&self, upgrade: &str) -> Result<Vec<StepResult>, async_nats::Error> {
        let mut stream = self.js.get_stream(subjects::RESULTS_STREAM).await?;
        let last = stream.info().await?.state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await?;
            if m.subject.as_str() == subjects::result(upgrade) {
                out.push(
                    self.keys
                        .check_result(Some(&m.headers), &m.subject, &m.payload),
                );
            }
        }
        Ok(out)
    }

    /// Wait until at least `n` results exist for `upgrade`, and return them.
    async fn wait_results(&self, upgrade: &str, n: usize, execs: &[&Proc]) -> Vec<StepResult> {
        let deadline = Instant::now() + SOON;
        loop {
            let results = self.results(upgrade).await;
            if results.len() >= n {
                return results;
            }
            if Instant::now() >= deadline {
                let logs: Vec<String> = execs
                    .iter()
                    .map(|p| format!("--- {}\n{}", p.name(), p.log()))
                    .collect();
                panic!(
                    "only {} of {n} results for {upgrade} arrived; executor logs:\n{}",
                    results.len(),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Requests still waiting in the work queue (an acked request is
    /// deleted); `u64::MAX` while the server cannot be asked.
    async fn pending_requests(&self) -> u64 {
        match self.js.get_stream(subjects::STEPS_STREAM).await {
            Ok(mut stream) => stream.info().await.map_or(u64::MAX, |i| i.state.messages),
            Err(_) => u64::MAX,
        }
    }

    async fn presence_bucket(&self) -> kv::Store {
        self.js
            .get_key_value(subjects::PRESENCE_BUCKET)
            .await
            .unwrap()
    }

    /// Executor `id`'s presence record, which must be signed by the key the
    /// trust file gives `id`, for its group (as the service opens it).
    async fn presence_of(&self, kv: &kv::Store, id: &str) -> Option<Presence> {
        let bytes = kv.get(id).await.ok().flatten()?;
        let (presence, name) = protocol::presence::open(&bytes, id, &self.keys.trust())
            .unwrap_or_else(|e| panic!("presence record of {id} refused: {e}"));
        assert_eq!(name, id);
        Some(presence)
    }
}

/// A request for backend-1 to run `chef-backend-ctl <sub>` (a template of
/// the chef-backend profile: `status`, `cluster-status`, `stop`, `start`,
/// `demote`), as the workflow service renders it.
fn request(upgrade: &str, step: u64, group: &str, sub: &str) -> StepRequest {
    let action = match sub {
        "status" => "probe_status",
        "cluster-status" => "probe_cluster_status",
        other => other,
    };
    StepRequest {
        v: protocol::PROTOCOL_VERSION,
        upgrade: upgrade.to_string(),
        step,
        attempt: 1,
        epoch: 1,
        node: "backend-1".into(),
        group: group.to_string(),
        action: action.into(),
        argv: vec!["chef-backend-ctl".into(), sub.into()],
        env: BTreeMap::new(),
        timeout_ms: 10_000,
        deadline_ms: now_ms() + 60_000,
        profile_sha256: None,
    }
}

/// `sh -c '<script>'`: what an attacker would like an executor to run.
fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.to_string()]
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// SIGKILLs the executor, waits until it is gone, then kills the process groups of the commands it had started
/// (each test's command appends its `$$` to `pids`): an orphaned command is the test's to clean up, its group
/// survives the executor.
fn kill_with_its_orphans(exec: &mut Proc, pids: &Path) {
    exec.signal(Signal::SIGKILL);
    exec.wait_exit(SOON).expect("the executor dies on SIGKILL");
    for pid in lines(pids) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid.parse().unwrap()),
            Signal::SIGKILL,
        );
    }
}

fn upgrade_id() -> String {
    ulid::Ulid::new().to_string()
}

#[tokio::test]
async fn a_step_runs_once_and_its_result_carries_exit_code_and_output_tails() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!(
            "echo 1 >> {}; echo \"hello $LANG\"; echo warning >&2; exit 3",
            ran.display()
        ),
    );
    let mut req = request(&up, 1, "g1", "status");
    // An env key of the allow list reaches the command.
    req.env.insert("LANG".into(), "baton".into());
    env.publish(&req).await;

    let results = env.wait_results(&up, 1, &[&exec]).await;
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout_tail, "hello baton\n");
    assert_eq!(r.stderr_tail, "warning\n");
    assert_eq!((r.step, r.attempt, r.executor.as_str()), (1, 1, "ex-a"));
    assert!(r.started_ms.unwrap() <= r.finished_ms.unwrap());

    // Acknowledged (gone from the work queue) and run exactly once.
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(lines(&ran), vec!["1"]);
    assert_eq!(env.results(&up).await.len(), 1);

    // A bounded tail: only the last --max-output bytes come back.
    let exec2 = env.executor("g2", "ex-b", "state-b", &["--max-output", "16"]);
    env.behave("chef-backend-ctl", "cluster-status", "seq 1 10000");
    let mut big = request(&up, 2, "g2", "cluster-status");
    big.node = "backend-2".into();
    env.publish(&big).await;
    let results = env.wait_results(&up, 2, &[&exec2]).await;
    let r = results.iter().find(|r| r.step == 2).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded);
    let full: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert_eq!(r.stdout_tail, full[full.len() - 16..]);

    // The worst output at the largest --max-output: 20 MB on each stream of a
    // byte JSON escapes as `\u0001` (6 bytes). Both tails still fit one NATS
    // message, arrive whole, and are what the service accepts.
    let max = protocol::MAX_OUTPUT.to_string();
    let exec3 = env.executor("g3", "ex-c", "state-c", &["--max-output", &max]);
    env.behave(
        "chef-backend-ctl",
        "status",
        "head -c 20000000 /dev/zero | tr '\\0' '\\1'; head -c 20000000 /dev/zero | tr '\\0' '\\1' >&2",
    );
    let mut huge = request(&up, 3, "g3", "status");
    huge.node = "backend-2".into();
    env.publish(&huge).await;
    let results = env.wait_results(&up, 3, &[&exec3]).await;
    let r = results.iter().find(|r| r.step == 3).unwrap();
    assert_eq!(r.outcome, Outcome::Succeeded, "{:?}", r.reason);
    for tail in [&r.stdout_tail, &r.stderr_tail] {
        assert_eq!(tail.len(), protocol::MAX_OUTPUT);
        assert!(tail.bytes().all(|b| b == 1));
    }
    let encoded = r.encode();
    assert!(
        encoded.len() > 6 * 2 * protocol::MAX_OUTPUT,
        "{}",
        encoded.len()
    );
    assert!(encoded.len() < 1024 * 1024, "{}", encoded.len());
    assert_eq!(&protocol::decode_result(&encoded).unwrap(), r);
}

#[tokio::test]
async fn two_executors_in_one_group_share_100_steps_each_run_exactly_once() {
    let env = Env::start().await;
    let a = env.executor("pool", "ex-a", "state-a", &[]);
    let b = env.executor("pool", "ex-b", "state-b", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    // A short sleep so both executors are busy at once and share the work;
    // each run appends its process id.
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!("echo $$ >> {}; sleep 0.02", ran.display()),
    );
    let started = Instant::now();
    for step in 1..=100u64 {
        env.publish(&request(&up, step, "pool", "status")).await;
    }
    let results = env.wait_results(&up, 100, &[&a, &b]).await;
    let elapsed = started.elapsed();

    let steps: BTreeSet<u64> = results.iter().map(|r| r.step).collect();
    assert_eq!(steps, (1..=100).collect::<BTreeSet<u64>>());
    assert_eq!(results.len(), 100, "one result per step");
    assert!(results.iter().all(|r| r.outcome == Outcome::Succeeded));
    // 100 steps with one result each and 100 runs: none ran twice.
    assert_eq!(lines(&ran).len(), 100, "each step ran exactly once");
    let by: BTreeSet<&str> = results.iter().map(|r| r.executor.as_str()).collect();
    assert_eq!(
        by,
        BTreeSet::from(["ex-a", "ex-b"]),
        "both executors took work"
    );
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    eprintln!("100 steps of ~20 ms over 2 executors: {elapsed:?}");
}

#[tokio::test]
async fn a_redelivered_finished_step_is_answered_from_the_ledger_not_rerun() {
    let env = Env::start().await;
    let mut exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!("echo run >> {}; echo done", ran.display()),
    );
    let req = request(&up, 1, "g1", "status");
    env.publish(&req).await;
    let first = env.wait_results(&up, 1, &[&exec]).await[0].clone();
    assert_eq!(first.outcome, Outcome::Succeeded);
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);

    // The same request again (as JetStream redelivers it: same body; sent
    // without the msg id so the stream's de-duplication does not drop it).
    env.publish_raw("g1", &req.encode()).await;
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(lines(&ran), vec!["run"], "not run again");
    // The replayed answer is the recorded one. Results carry no msg id (a
    // forger could otherwise pre-empt a real result's), so the stream keeps
    // both copies and the service de-duplicates them.
    let results = env.results(&up).await;
    assert_eq!(results, vec![first.clone(), first.clone()]);
    assert!(
        exec.log().contains("replying from the ledger"),
        "{}",
        exec.log()
    );

    // The same state dir served by an executor under another name (a new
    // key): it answers from the ledger, signed with its key, under its name.
    exec.signal(Signal::SIGTERM);
    assert!(exec.wait_exit(SOON).is_some_and(|s| s.success()));
    let exec = env.executor("g1", "ex-a2", "state-a", &[]);
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    // A core subscriber sees the reply as it is published.
    let mut replies = client.subscribe(subjects::result(&up)).await.unwrap();
    client.flush().await.unwrap();
    env.publish_raw("g1", &req.encode()).await;
    use futures::StreamExt as _;
    let msg = tokio::time::timeout(SOON, replies.next())
        .await
        .unwrap_or_else(|_| panic!("no reply from the ledger:\n{}", exec.log()))
        .expect("subscription open");
    let again = env
        .keys
        .check_result(msg.headers.as_ref(), &msg.subject, &msg.payload);
    assert_eq!(again.executor, "ex-a2");
    assert_eq!(
        StepResult {
            executor: first.executor.clone(),
            ..again
        },
        first
    );
    assert_eq!(lines(&ran), vec!["run"], "not run again");
}

/// Two copies of one probe delivered together (JetStream redelivers a
/// request whose ack was late, e.g. while a clustered consumer changes
/// leader: CI saw a `status` run twice in `nats_cluster::`) run it once. The
/// first copy is still claiming the step group-wide when the second arrives;
/// before, the second found the claim its own and ran the probe beside it.
/// Repeated, since the copies' interleaving is the scheduler's.
#[tokio::test]
async fn two_copies_of_one_probe_delivered_together_run_it_once() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!("echo run >> {}; echo done", ran.display()),
    );
    const ROUNDS: u64 = 8;
    for step in 1..=ROUNDS {
        let up = upgrade_id();
        let req = request(&up, step, "g1", "status");
        // Without the msg id, so the stream's de-duplication keeps both.
        env.publish_raw("g1", &req.encode()).await;
        env.publish_raw("g1", &req.encode()).await;
        let results = env.wait_results(&up, 2, &[&exec]).await;
        assert_eq!(results.len(), 2, "{results:#?}");
        assert_eq!(results[0], results[1], "both copies get the one answer");
        assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
        assert_eq!(
            lines(&ran).len() as u64,
            step,
            "round {step}: the probe ran once per request, not per copy\n{}",
            exec.log()
        );
    }
}

#[tokio::test]
async fn an_executor_killed_mid_step_reports_unknown_after_restart_and_does_not_rerun() {
    let env = Env::start().await;
    let mut exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let pids = env.path("pids");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "echo $$ >> {}; echo run >> {}; sleep 30",
            pids.display(),
            ran.display()
        ),
    );
    let req = request(&up, 1, "g1", "stop");
    env.publish(&req).await;
    assert!(
        wait_until(SOON, || lines(&ran).len() == 1).await,
        "{}",
        exec.log()
    );
    kill_with_its_orphans(&mut exec, &pids);

    let exec = env.executor("g1", "ex-a2", "state-a", &[]);
    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Unknown);
    assert!(
        r.reason.as_deref().unwrap().contains("not run again"),
        "{r:?}"
    );
    assert!(r.started_ms.is_some());
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(lines(&ran), vec!["run"], "never re-run");
}

#[tokio::test]
async fn a_step_over_its_timeout_is_killed_with_its_process_group() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let pids = env.path("pids");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "echo $$ >> {p}; sleep 30 & echo $! >> {p}; echo started; wait",
            p = pids.display()
        ),
    );
    let req = StepRequest {
        timeout_ms: 500,
        ..request(&up, 1, "g1", "stop")
    };
    env.publish(&req).await;
    let r = env.wait_results(&up, 1, &[&exec]).await[0].clone();
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert_eq!(r.exit_code, None);
    assert_eq!(r.stdout_tail, "started\n");
    assert!(r.reason.unwrap().contains("timeout"));
    let pids: Vec<i32> = lines(&pids).iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "the shell and its background sleep");
    for pid in pids {
        assert!(
            wait_until(SOON, || !alive(pid)).await,
            "process {pid} survived the timeout"
        );
    }
}

/// Whether `pid` is a live process (zombies count as dead).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !(state.starts_with('Z') || state.starts_with('X'))
        }
    }
}

#[tokio::test]
async fn stale_epoch_and_malformed_requests_are_rejected_counted_and_serving_goes_on() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!("echo $TZ >> {}", ran.display()),
    );
    let step = |n: u64, epoch: u64| {
        let mut req = StepRequest {
            epoch,
            ..request(&up, n, "g1", "status")
        };
        req.env.insert("TZ".into(), n.to_string());
        req
    };
    env.publish(&step(1, 5)).await;
    env.wait_results(&up, 1, &[&exec]).await;
    // An older service instance (epoch 3) is fenced off.
    env.publish(&step(2, 3)).await;
    // Readable ids, bad field: answered `rejected` naming the field.
    let bad = format!(
        r#"{{"v":1,"upgrade":"{up}","step":3,"attempt":1,"epoch":5,"node":"backend-1","group":"g1","action":"x","argv":"rm -rf /","timeout_ms":1000,"deadline_ms":{}}}"#,
        now_ms() + 60_000
    );
    env.publish_raw("g1", bad.as_bytes()).await;
    // Unreadable: terminated, no result possible.
    env.publish_raw("g1", b"\x00not json at all").await;
    // And it still serves.
    env.publish(&step(4, 5)).await;

    let results = env.wait_results(&up, 4, &[&exec]).await;
    let by_step: BTreeMap<u64, &StepResult> = results.iter().map(|r| (r.step, r)).collect();
    assert_eq!(by_step[&1].outcome, Outcome::Succeeded);
    assert_eq!(by_step[&2].outcome, Outcome::Rejected);
    assert!(
        by_step[&2]
            .reason
            .as_deref()
            .unwrap()
            .contains("stale epoch 3"),
        "{:?}",
        by_step[&2]
    );
    assert_eq!(by_step[&3].outcome, Outcome::Rejected);
    assert!(
        by_step[&3].reason.as_deref().unwrap().contains("`argv`"),
        "{:?}",
        by_step[&3]
    );
    assert_eq!(by_step[&4].outcome, Outcome::Succeeded);
    assert_eq!(lines(&ran), vec!["1", "4"], "rejected requests ran nothing");
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);

    let kv = env.presence_bucket().await;
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a")
                .await
                .is_some_and(|p| p.rejected == 1 && p.malformed == 2 && p.executed == 2)
        })
        .await,
        "counters: {:?}",
        env.presence_of(&kv, "ex-a").await
    );
    let log = exec.log();
    assert!(log.contains("rejected a step request"), "{log}");
    assert!(
        log.contains("terminated an unreadable step request"),
        "{log}"
    );
}

#[tokio::test]
async fn presence_appears_heartbeats_and_disappears_on_shutdown_and_after_a_kill() {
    let env = Env::start().await;
    let kv = env.presence_bucket().await;
    let mut graceful = env.executor("g1", "ex-a", "state-a", &["--nodes", "backend-1,backend-2"]);
    let mut crashed = env.executor("g2", "ex-b", "state-b", &[]);

    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a").await.is_some()
        })
        .await
    );
    let first = env.presence_of(&kv, "ex-a").await.unwrap();
    assert_eq!(first.group, "g1");
    assert_eq!(first.nodes, vec!["backend-1", "backend-2"]);
    assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
    assert!(!first.host.is_empty());
    assert!(first.started_ms <= first.heartbeat_ms);
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a")
                .await
                .is_some_and(|p| p.heartbeat_ms > first.heartbeat_ms)
        })
        .await,
        "heartbeats refresh the record"
    );
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-b").await.is_some()
        })
        .await
    );

    // Graceful shutdown while a step runs: it finishes, is reported, the
    // executor exits 0 and its presence is removed.
    let ran = env.path("ran");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "start",
        &format!("echo run >> {}; sleep 1; echo finished", ran.display()),
    );
    env.publish(&request(&up, 1, "g1", "start")).await;
    assert!(wait_until(SOON, || lines(&ran).len() == 1).await);
    graceful.signal(Signal::SIGTERM);
    let status = graceful.wait_exit(SOON).expect("exits after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        graceful.log()
    );
    let results = env.results(&up).await;
    assert_eq!(
        results.len(),
        1,
        "the running step was reported before exit"
    );
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    assert_eq!(results[0].stdout_tail, "finished\n");
    assert_eq!(env.pending_requests().await, 0);
    assert!(
        env.presence_of(&kv, "ex-a").await.is_none(),
        "removed on shutdown"
    );

    // A crash leaves the record behind until its TTL runs out.
    crashed.signal(Signal::SIGKILL);
    crashed.wait_exit(SOON).expect("killed");
    assert!(
        env.presence_of(&kv, "ex-b").await.is_some(),
        "still there right after the kill"
    );
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-b").await.is_none()
        })
        .await,
        "expires after the TTL"
    );
}

#[tokio::test]
async fn a_nats_restart_mid_step_still_delivers_the_result_once() {
    let mut env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "start",
        &format!("echo run >> {}; sleep 1.5; echo survived", ran.display()),
    );
    env.publish(&request(&up, 1, "g1", "start")).await;
    assert!(
        wait_until(SOON, || lines(&ran).len() == 1).await,
        "{}",
        exec.log()
    );
    env.nats.restart().await.expect("nats-server restarts");
    // The test's own client reconnects by itself.
    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert_eq!(results[0].outcome, Outcome::Succeeded);
    assert_eq!(results[0].stdout_tail, "survived\n");
    assert!(
        wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await,
        "request acknowledged after the restart; log:\n{}",
        exec.log()
    );
    // The request is acked and so deleted from the work queue: no redelivery
    // can follow, and every result was published before that ack.
    assert_eq!(env.results(&up).await.len(), 1, "exactly one result");
    assert_eq!(lines(&ran), vec!["run"], "ran once");
}

#[tokio::test]
async fn the_ssh_runner_runs_the_argv_on_the_node_through_a_real_sshd() {
    let sshd = tests::Sshd::start().await.expect("sshd starts on loopback");
    let env = Env::start().await;
    // The node's tools are the fake ones: a wrapper around the real ssh puts
    // them first in the remote PATH (a real node has chef-backend-ctl on its
    // own), and passes the test dir to them. Everything else is real: the
    // remote shell, sshd, the process groups.
    let wrapper = env.path("ssh-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/bash\nargs=(\"$@\"); last=${{args[-1]}}; unset 'args[-1]'\n\
             exec ssh \"${{args[@]}}\" \"PATH={bin}:\\$PATH BATON_TEST_DIR={dir}; export PATH BATON_TEST_DIR; $last\"\n",
            bin = env.path("bin").display(),
            dir = env.dir.path().display(),
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let nodes = format!("backend-1={}", sshd.address());
    let mut args: Vec<String> = vec![
        "--runner".into(),
        "ssh".into(),
        "--ssh-program".into(),
        wrapper.display().to_string(),
        "--ssh-user".into(),
        sshd.user(),
        "--nodes".into(),
        nodes,
    ];
    for o in sshd.client_options() {
        args.push("--ssh-option".into());
        args.push(o);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let exec = env.executor("pool", "ex-ssh", "state-ssh", &args);
    let ran = env.path("ran");
    let up = upgrade_id();
    // Quotes, spaces, braces, `$` and a backslash survive the remote shell:
    // the argv of the dpkg version probe arrives intact (the fake prints it).
    env.behave(
        "dpkg-query",
        "-W",
        &format!(
            "echo \"$LANG\" >> {}; printf '%s|' \"$@\"; echo; exit 4",
            ran.display()
        ),
    );
    let probe = [
        "dpkg-query",
        "-W",
        "-f=${db:Status-Status} ${Version}\\n",
        "chef-backend",
    ];
    let mut req = StepRequest {
        action: "probe_version".into(),
        argv: probe.iter().map(|s| s.to_string()).collect(),
        ..request(&up, 1, "pool", "status")
    };
    req.env.insert("LANG".into(), "C.UTF-8".into());
    env.publish(&req).await;
    let r = env.wait_results(&up, 1, &[&exec]).await[0].clone();
    assert_eq!(
        r.outcome,
        Outcome::Failed,
        "{r:?}\nsshd log:\n{}",
        sshd.log()
    );
    assert_eq!(r.exit_code, Some(4), "{r:?}");
    assert_eq!(r.stdout_tail, format!("{}|\n", probe[1..].join("|")));
    assert_eq!(lines(&ran), vec!["C.UTF-8"]);

    // A timeout kills the local ssh, and with it the remote process group.
    let pids = env.path("pids");
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "echo $$ >> {p}; sleep 30 & echo $! >> {p}; echo started; wait",
            p = pids.display()
        ),
    );
    let mut slow = request(&up, 2, "pool", "stop");
    // Long enough for the login and the remote shell to start the command on
    // a loaded machine (the assertions need its output and pids), short
    // enough to keep the test quick: the sleep would take 30 s.
    slow.timeout_ms = 4000;
    env.publish(&slow).await;
    let results = env.wait_results(&up, 2, &[&exec]).await;
    let r = results.iter().find(|r| r.step == 2).unwrap();
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert_eq!(r.stdout_tail, "started\n");
    let remote: Vec<i32> = lines(&pids).iter().map(|p| p.parse().unwrap()).collect();
    assert_eq!(remote.len(), 2, "the remote shell and its background sleep");
    for pid in remote {
        assert!(
            wait_until(SOON, || !alive(pid)).await,
            "remote process {pid} survived the timeout"
        );
    }
}

/// The library API runs an executor in-process (as `baton dev` may). Also
/// prints the step round trip (publish request -> result stored) measured
/// over sequential steps of the real `dpkg-query` version probe (it exits 1
/// on a machine without chef-backend, or fails to start without dpkg: either
/// way it ran, and was not refused); the figure is informative, not asserted.
#[tokio::test]
async fn an_in_process_executor_answers_sequential_steps() {
    let env = Env::start().await;
    let (identity, _) = env.keys.executor("ex-inproc", "inproc");
    let mut config = executor::Config::new(
        "inproc",
        env.path("state-inproc"),
        identity,
        Arc::new(env.keys.trust()),
    );
    config.nats = protocol::connect::NatsConfig::new(env.nats.url());
    config.nodes = vec!["backend-1".into()];
    config.heartbeat = Duration::from_millis(200);
    config.fetch_wait = Duration::from_millis(300);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(executor::run(config, shutdown.clone()));

    let up = upgrade_id();
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let mut results = client.subscribe(subjects::result(&up)).await.unwrap();
    let mut latencies = Vec::new();
    use futures::StreamExt as _;
    for step in 1..=50u64 {
        let req = StepRequest {
            action: "probe_version".into(),
            argv: [
                "dpkg-query",
                "-W",
                "-f=${db:Status-Status} ${Version}\\n",
                "chef-backend",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..request(&up, step, "inproc", "status")
        };
        let sent = Instant::now();
        env.publish(&req).await;
        let msg = tokio::time::timeout(SOON, results.next())
            .await
            .expect("result in time")
            .expect("subscription open");
        latencies.push(sent.elapsed());
        let r = env
            .keys
            .check_result(msg.headers.as_ref(), &msg.subject, &msg.payload);
        assert_eq!(r.executor, "ex-inproc");
        assert_eq!(r.step, step);
        assert_ne!(r.outcome, Outcome::Rejected, "{r:?}");
    }
    shutdown.cancel();
    task.await.unwrap().expect("executor stops cleanly");
    latencies.sort();
    eprintln!(
        "step round trip over {} sequential steps (`dpkg-query`): p50 {:?}, p90 {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 9 / 10],
        latencies[latencies.len() - 1]
    );
}

#[tokio::test]
async fn a_step_redelivered_to_a_sibling_after_its_executor_died_is_not_run_twice() {
    let env = Env::start().await;
    let kv = env.presence_bucket().await;
    let mut execs = [
        env.executor("pool", "ex-a", "state-a", &[]),
        env.executor("pool", "ex-b", "state-b", &[]),
    ];
    let ran = env.path("ran");
    let pids = env.path("pids");
    let up = upgrade_id();
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "echo $$ >> {}; echo run >> {}; sleep 30",
            pids.display(),
            ran.display()
        ),
    );
    let req = request(&up, 1, "pool", "stop");
    env.publish(&req).await;
    assert!(wait_until(SOON, || lines(&ran).len() == 1).await);

    // Find the executor running it (its presence says so) and kill it.
    let key = req.msg_id();
    let deadline = Instant::now() + SOON;
    let runner = loop {
        if let Some(id) = running_on(&env, &kv, &key).await {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no executor reports running {key}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (dead, alive_one) = if runner == "ex-a" { (0, 1) } else { (1, 0) };
    kill_with_its_orphans(&mut execs[dead], &pids);

    // After ack_wait the sibling gets the redelivery: it must not run it.
    let results = env.wait_results(&up, 1, &[&execs[alive_one]]).await;
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Unknown, "{r:?}");
    assert_ne!(r.executor, runner);
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .contains(&format!("already claimed by executor {runner}/")),
        "{r:?}"
    );
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(lines(&ran), vec!["run"], "never run twice");
}

/// Which of the pool's executors reports `key` as its running step.
async fn running_on(env: &Env, kv: &kv::Store, key: &str) -> Option<&'static str> {
    for id in ["ex-a", "ex-b"] {
        if env
            .presence_of(kv, id)
            .await
            .and_then(|p| p.running)
            .as_deref()
            == Some(key)
        {
            return Some(id);
        }
    }
    None
}

/// Runs `baton server` (with `extra` flags) against `nats` and expects it to fail at once, not after the wait for
/// a forming cluster (`while_jetstream_forms`: 2 minutes, "trying again" per try); returns its stderr.
fn service_refused_at_once(
    nats: &NatsServer,
    keys: &Keyring,
    dir: &Path,
    extra: &[&str],
) -> String {
    let service_seed = dir.join("keys").join("service.seed");
    keys.service
        .write_seed(&service_seed)
        .expect("seed written");
    let started = Instant::now();
    let out = Command::new(workspace_bin("baton"))
        .env("BATON_NATS_URL", nats.url())
        .env("BATON_KEY", &service_seed)
        .env("BATON_TRUST", keys.trust_path())
        .arg("server")
        .arg("--db")
        .arg(dir.join("baton.db"))
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("trying again"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    stderr
}

/// [`service_refused_at_once`] as a NATS user `svc` that may publish to anything but `denied` (a subject pattern);
/// returns its stderr.
async fn service_denied_publishing_to(denied: &str) -> String {
    let nats = NatsServer::start_with_authorization(
        &format!(
            r#"users = [
  {{ user: admin, password: admin }}
  {{ user: svc, password: svc, permissions: {{ publish: {{ deny: ["{denied}"] }} }} }}
]"#
        ),
        ("admin", "admin"),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    service_refused_at_once(
        &nats,
        &keys,
        dir.path(),
        &["--nats-user", "svc", "--nats-password", "svc"],
    )
}

/// A replicated bucket asked of a server that is not clustered (nats-server's error code 10074) is an answer that
/// waiting does not change: the service stops at once naming it, rather than taking it for a cluster still forming.
#[tokio::test]
async fn a_service_asking_a_single_server_for_replicas_is_refused_at_once() {
    let nats = NatsServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    let stderr = service_refused_at_once(&nats, &keys, dir.path(), &["--nats-replicas", "3"]);
    assert!(stderr.contains("error code 10074"), "{stderr}");
}

/// A service whose NATS user may not call the JetStream API: the server refuses each call (`Permissions
/// Violation`), which the caller sees only as a timeout. The service stops at once naming the refusal, rather than
/// waiting 2 minutes for a cluster it takes to be forming.
#[tokio::test]
async fn a_service_refused_the_jetstream_api_stops_at_once_naming_the_refusal() {
    let stderr = service_denied_publishing_to("$JS.API.>").await;
    assert!(
        stderr.contains("refused the service a JetStream call")
            && stderr.contains("Permissions Violation")
            && stderr.contains("$JS.API"),
        "{stderr}"
    );
}

/// A service whose NATS user may not publish to one of the service's subjects other than the JetStream API (here
/// the lease key, its first publish): the server refuses the publish (`Permissions Violation`), which the caller sees
/// only as a timeout. The service stops at once naming the subject and the permission to grant, rather than waiting
/// 2 minutes for a cluster it takes to be forming (or, for recovery's publishes, its recovery patience).
#[tokio::test]
async fn a_service_refused_a_publish_stops_at_once_naming_the_subject_and_the_permission() {
    let stderr = service_denied_publishing_to("$KV.baton_lease.>").await;
    let subject = format!(
        "$KV.{}.{}",
        protocol::subjects::LEASE_BUCKET,
        protocol::subjects::LEASE_KEY
    );
    assert!(
        stderr.contains(&format!("refused the service a publish to {subject}"))
            && stderr.contains(&format!(
                "allow the service's NATS user to publish to {subject}"
            ))
            && stderr.contains("Permissions Violation"),
        "{stderr}"
    );
}

#[tokio::test]
async fn setup_refuses_a_server_without_jetstream_and_a_conflicting_stream_clearly() {
    let nats = NatsServer::start_without_jetstream().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let err = protocol::ensure(&jetstream::new(client), &Default::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, protocol::ProtocolError::JetStreamUnavailable { .. }),
        "{err:#}"
    );
    // The executor binary stops with that message and a failure status.
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    let (_, seed) = keys.executor("ex-a", "g1");
    let out = Command::new(workspace_bin("baton"))
        .env("BATON_NATS_URL", nats.url())
        .env("BATON_KEY", &seed)
        .env("BATON_TRUST", keys.trust_path())
        .args([
            "executor",
            "--group",
            "g1",
            "--nodes",
            "backend-1",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("JetStream is not available"), "{stderr}");
    // So does the service, at once: a server without JetStream is not a cluster still forming, whose JetStream the
    // service waits for (`nats_cluster::a_service_started_before_its_nats_cluster_has_formed...`).
    let stderr = service_refused_at_once(&nats, &keys, dir.path(), &[]);
    assert!(stderr.contains("JetStream is not available"), "{stderr}");

    // A stream of ours created with other semantics is refused, not reused.
    let nats = NatsServer::start().await.unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: subjects::STEPS_STREAM.into(),
        subjects: vec![subjects::STEPS_WILDCARD.into()],
        retention: jetstream::stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .unwrap();
    let err = protocol::ensure(&js, &Default::default())
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("BATON_STEPS") && msg.contains("retention"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_step_longer_than_ack_wait_keeps_its_executor_through_progress_acks() {
    let env = Env::start().await;
    let a = env.executor("pool", "ex-a", "state-a", &[]);
    let b = env.executor("pool", "ex-b", "state-b", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    // Without progress acks the request would be redelivered to the idle
    // sibling after ack_wait, which would answer `unknown` first.
    env.behave(
        "chef-backend-ctl",
        "start",
        &format!(
            "echo run >> {}; sleep {}; echo done",
            ran.display(),
            ACK_WAIT_MS as f64 / 1000.0 * 1.5
        ),
    );
    env.publish(&request(&up, 1, "pool", "start")).await;
    let r = env.wait_results(&up, 1, &[&a, &b]).await[0].clone();
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.stdout_tail, "done\n");
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(env.results(&up).await.len(), 1);
    assert_eq!(lines(&ran), vec!["run"]);
    let other = if r.executor == "ex-a" { &b } else { &a };
    assert!(
        !other.log().contains("claimed by another executor"),
        "{}",
        other.log()
    );
}

#[tokio::test]
async fn an_executor_started_before_nats_waits_for_it_then_serves() {
    let mut env = Env::start().await;
    env.nats.stop();
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    assert!(
        wait_until(SOON, || exec
            .log()
            .contains("could not connect to NATS; retrying"))
        .await,
        "{}",
        exec.log()
    );
    env.nats.restart().await.expect("nats-server starts again");
    let ran = env.path("ran");
    let up = upgrade_id();
    env.publish(&request(&up, 1, "g1", "status")).await;
    let r = env.wait_results(&up, 1, &[&exec]).await[0].clone();
    assert_eq!(r.outcome, Outcome::Succeeded);
    assert_eq!(lines(&ran), vec!["chef-backend-ctl status"]);
}

#[tokio::test]
async fn concurrent_setups_with_different_tunables_all_succeed() {
    let nats = NatsServer::start().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..4u64 {
        let url = nats.url();
        tasks.spawn(async move {
            let js = jetstream::new(async_nats::connect(url).await.unwrap());
            let opts = protocol::Options {
                steps_duplicate_window: Duration::from_secs(60 + i),
                presence_ttl: Duration::from_secs(10 + i),
                executor_ack_wait: Duration::from_secs(5 + i),
                ..Default::default()
            };
            protocol::ensure(&js, &opts).await?;
            protocol::ensure_group_consumer(&js, "g1", &opts).await?;
            // Executors attaching at once share the one group consumer.
            protocol::setup::attach_executor(&js, "g2", &opts).await?;
            Ok::<_, protocol::ProtocolError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Publish `req` on `baton.step.<group>` with a valid service signature but
/// no msg id (so the stream's de-duplication does not interfere): what a
/// compromised or buggy service could send. Unsigned attacks never get this
/// far (see the signature tests below).
async fn attack(env: &Env, req: &StepRequest) {
    env.publish_raw(&req.group, &req.encode()).await;
}

/// Issue 11's attacks on an executor, each published on its step subject and
/// signed with the service key (defence in depth: the allow list, claims,
/// epoch, deadline and ledger checks hold even for a signed request): none
/// runs anything (the marker file that the attack's argv would create stays
/// absent, the fake node tools record no call), each is answered `rejected`
/// with its reason, counted by kind in the presence record and logged; and
/// legitimate steps, before and after, still run.
#[tokio::test]
async fn attacks_published_on_a_step_subject_run_nothing_and_are_refused_counted_and_logged() {
    let env = Env::start().await;
    let exec = env.executor(
        "g1",
        "ex-a",
        "state-a",
        &["--nodes", "backend-1=10.0.0.1", "--installer", "dpkg"],
    );
    let ran = env.path("ran");
    let marker = env.path("pwned");
    let package = env.path("chef-backend_3.1.0-1_amd64.deb");
    std::fs::write(&package, b"package").unwrap();
    let package = package.display().to_string();
    let up = upgrade_id();
    let touch = sh(&format!("id > {}", marker.display()));

    let install = |step: u64, pkg: &str| StepRequest {
        action: "install".into(),
        argv: vec!["dpkg".into(), "-i".into(), pkg.to_string()],
        ..request(&up, step, "g1", "status")
    };
    let with_env = |step: u64, key: &str, value: &str| {
        let mut req = request(&up, step, "g1", "stop");
        req.env.insert(key.into(), value.into());
        req
    };
    // (request, the reason it must be refused with, counted as not_allowed)
    let mut attacks: Vec<(StepRequest, &str, bool)> = vec![
        (
            StepRequest {
                argv: touch.clone(),
                ..request(&up, 1, "g1", "stop")
            },
            "is not action stop's template",
            true,
        ),
        (install(2, "-x.deb"), "starts with '-'", true),
        (install(3, "--force-all"), "starts with '-'", true),
        (
            install(4, "http://evil.example/chef-backend_9.9.9-1_amd64.deb"),
            "a URL",
            true,
        ),
        (
            install(5, "chef-backend_3.1.0-1_amd64.deb"),
            "not an absolute path",
            true,
        ),
        (
            install(6, "/nonexistent/chef-backend_3.1.0-1_amd64.deb"),
            "cannot be read",
            true,
        ),
        (
            with_env(7, "-S", "id"),
            "env key \"-S\" is not allowed",
            true,
        ),
        (
            with_env(8, "BATON_NODE_ADDRESS", "evil.example"),
            "comes only from the executor's own --nodes",
            true,
        ),
        (
            with_env(9, "LD_PRELOAD", "/tmp/evil.so"),
            "env key \"LD_PRELOAD\" is not allowed",
            true,
        ),
        (
            StepRequest {
                node: "backend-2".into(),
                ..request(&up, 10, "g1", "stop")
            },
            "node \"backend-2\" is not served by this executor (it serves backend-1)",
            false,
        ),
        // The label must match the template it renders.
        (
            StepRequest {
                argv: vec!["chef-backend-ctl".into(), "stop".into()],
                ..request(&up, 11, "g1", "status")
            },
            "is not action probe_status's template",
            true,
        ),
        // Not in this executor's runbook profile.
        (request(&up, 12, "g1", "upgrade"), "procedure runbook", true),
    ];
    // A new upgrade id with the highest epoch passes the epoch fence, and
    // still runs nothing that is not a template.
    let other_up = upgrade_id();
    attacks.push((
        StepRequest {
            argv: touch.clone(),
            epoch: u64::MAX,
            ..request(&other_up, 1, "g1", "stop")
        },
        "is not action stop's template",
        true,
    ));
    for (req, _, _) in &attacks {
        attack(&env, req).await;
    }

    // A legitimate step still runs after all that.
    let legit = request(&up, 20, "g1", "status");
    env.publish(&legit).await;
    let results = env.wait_results(&up, attacks.len(), &[&exec]).await;
    let other_results = env.wait_results(&other_up, 1, &[&exec]).await;
    let by_step: BTreeMap<u64, &StepResult> = results.iter().map(|r| (r.step, r)).collect();
    for (req, why, _) in &attacks {
        let r = if req.upgrade == other_up {
            &other_results[0]
        } else {
            by_step[&req.step]
        };
        assert_eq!(r.outcome, Outcome::Rejected, "{req:?}: {r:?}");
        let reason = r.reason.as_deref().unwrap_or_default();
        assert!(reason.contains(why), "step {}: {reason}", req.step);
    }
    assert_eq!(
        by_step[&20].outcome,
        Outcome::Succeeded,
        "{:?}",
        by_step[&20]
    );

    // Replays: the step id 20 again, with other argv (a real template), is a
    // conflict; nothing is answered from the ledger as if it were step 20.
    let replay = StepRequest {
        argv: vec!["chef-backend-ctl".into(), "stop".into()],
        action: "stop".into(),
        ..legit.clone()
    };
    attack(&env, &replay).await;
    // A step id pre-published with an attacker's argv is refused and does not
    // keep the real request under that id from running, nor its result from
    // being stored.
    attack(
        &env,
        &StepRequest {
            argv: touch.clone(),
            ..install(21, &package)
        },
    )
    .await;
    env.publish(&install(21, &package)).await;
    // A request past its deadline.
    attack(
        &env,
        &StepRequest {
            deadline_ms: now_ms() - 1000,
            ..request(&up, 22, "g1", "stop")
        },
    )
    .await;
    // A step id another executor of the group claimed for another command.
    let claims = env.js.get_key_value(subjects::CLAIMS_BUCKET).await.unwrap();
    claims
        .put(
            subjects::claim_key("g1", &up, 23, 1),
            br#"{"token":"ex-other/1/1","digest":"0000"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    attack(&env, &request(&up, 23, "g1", "stop")).await;

    let n = attacks.len() - 1 + 1 + 4; // this upgrade's attacks, step 20, then 20 again, 21 x2, 22, 23
    let results = env.wait_results(&up, n + 1, &[&exec]).await;
    let of =
        |step: u64| -> Vec<&StepResult> { results.iter().filter(|r| r.step == step).collect() };
    let twenty = of(20);
    assert_eq!(twenty.len(), 2, "{twenty:?}");
    assert_eq!(twenty[0].outcome, Outcome::Succeeded);
    assert_eq!(twenty[1].outcome, Outcome::Rejected);
    assert!(
        twenty[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("was already used here for another command"),
        "{:?}",
        twenty[1]
    );
    let outcomes: Vec<Outcome> = of(21).iter().map(|r| r.outcome).collect();
    assert_eq!(outcomes, vec![Outcome::Rejected, Outcome::Succeeded]);
    assert!(of(22)[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("deadline passed"));
    assert_eq!(of(23)[0].outcome, Outcome::Rejected);
    assert!(
        of(23)[0]
            .reason
            .as_deref()
            .unwrap()
            .contains("already claimed by executor ex-other/1/1 for another command"),
        "{:?}",
        of(23)[0]
    );

    // Nothing ran but the two legitimate steps.
    assert!(!marker.exists(), "an attack ran");
    assert_eq!(
        lines(&ran),
        vec![
            "chef-backend-ctl status".to_string(),
            format!("dpkg -i {package}")
        ]
    );
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);

    // Counted by kind, and logged with the reason.
    let not_allowed = attacks.iter().filter(|a| a.2).count() as u64 + 1;
    let rejected = attacks.len() as u64 + 1 + 1 + 1 + 1; // + 20 again, 21 attack, 22, 23
    let kv = env.presence_bucket().await;
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a").await.is_some_and(|p| {
                p.executed == 2
                    && p.rejected == rejected
                    && p.not_allowed == not_allowed
                    && p.conflicts == 2
            })
        })
        .await,
        "counters: {:?}, expected rejected {rejected}, not_allowed {not_allowed}",
        env.presence_of(&kv, "ex-a").await
    );
    let log = exec.log();
    for needle in [
        "kind=not_allowed",
        "kind=conflict",
        "kind=wrong_target",
        "kind=stale",
        "rejected a step request",
        "starts with '-'",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
}

/// An executor refuses flags that name nodes or groups that are not subject
/// tokens, or no nodes at all, before connecting anywhere.
#[test]
fn executor_flags_with_invalid_names_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    let (_, seed) = keys.executor("ex-a", "g1");
    for (args, needle) in [
        (
            vec!["--group", "x y", "--nodes", "backend-1"],
            "group \"x y\"",
        ),
        (
            vec!["--group", "g.1", "--nodes", "backend-1"],
            "group \"g.1\"",
        ),
        (
            vec!["--group", "g1", "--nodes", "backend 1"],
            "node name \"backend 1\"",
        ),
        (vec!["--group", "g1", "--nodes", "b>"], "node name \"b>\""),
        (vec!["--group", "g1"], "--nodes"),
    ] {
        let out = Command::new(workspace_bin("baton"))
            .env("BATON_NATS_URL", "nats://127.0.0.1:1")
            .env("BATON_KEY", &seed)
            .env("BATON_TRUST", keys.trust_path())
            .arg("executor")
            .args(&args)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// Waits until executor `id` has counted `n` unsigned requests (and still
/// `rejected == 0`: an unsigned request is not answered).
async fn wait_unsigned(env: &Env, id: &str, n: u64) -> bool {
    let kv = env.presence_bucket().await;
    wait_until_async(SOON, || async {
        env.presence_of(&kv, id)
            .await
            .is_some_and(|p| p.unsigned == n && p.rejected == 0 && p.executed > 0)
    })
    .await
}

/// Stop an executor gracefully and open its ledger (sled allows one process).
fn stopped_ledger(env: &Env, exec: &mut Proc, state: &str) -> executor::ledger::Ledger {
    exec.signal(Signal::SIGTERM);
    let status = exec.wait_exit(SOON).expect("exits after SIGTERM");
    assert!(status.success(), "{status}: {}", exec.log());
    executor::ledger::Ledger::open(&env.path(state)).expect("the ledger opens")
}

/// Issue 11, auth off: a request without the service's signature runs
/// nothing, whether its argv is a shell or a command the allow list would
/// accept; no result is published; it is terminated (gone from the work
/// queue), recorded nowhere, counted as `unsigned` and logged.
#[tokio::test]
async fn unsigned_requests_run_nothing_publish_nothing_and_are_only_counted() {
    let env = Env::start().await;
    let mut exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let marker = env.path("pwned");
    let up = upgrade_id();
    env.publish_unsigned(&StepRequest {
        argv: sh(&format!("id > {}", marker.display())),
        ..request(&up, 1, "g1", "stop")
    })
    .await;
    env.publish_unsigned(&request(&up, 2, "g1", "status")).await;
    // A signed request after them: the one executor of the group takes the
    // queue in order, so once this is answered both were handled.
    env.publish(&request(&up, 3, "g1", "status")).await;

    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert!(wait_unsigned(&env, "ex-a", 2).await, "{}", exec.log());
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    let results_now = env.results(&up).await;
    assert_eq!(results_now, results, "no result for the unsigned requests");
    assert_eq!(
        (results[0].step, results[0].outcome),
        (3, Outcome::Succeeded)
    );
    assert_eq!(
        lines(&ran),
        vec!["chef-backend-ctl status"],
        "only step 3 ran"
    );
    assert!(!marker.exists(), "the shell ran");
    let log = exec.log();
    for needle in [
        "refused a step request the service did not sign",
        "subject=baton.step.g1",
        "reason=unsigned (no Baton-Key/Baton-Sig headers)",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    let ledger = stopped_ledger(&env, &mut exec, "state-a");
    for step in [1, 2] {
        assert_eq!(ledger.get(&format!("{up}:{step}:1")).unwrap(), None);
    }
    assert!(ledger.get(&format!("{up}:3:1")).unwrap().is_some());
}

/// Issue 11, auth off: a request signed by a key that is not the service's
/// (an outsider, another group's executor, this group's own executor, an
/// operator), a service-signed request for another group re-published on
/// this group's subject, and a service signature over another body are all
/// refused like unsigned ones: nothing runs, no result, counted, logged.
#[tokio::test]
async fn requests_signed_by_another_key_or_for_another_subject_are_refused_like_unsigned_ones() {
    let env = Env::start().await;
    let (ex_b, _) = env.keys.executor("ex-b", "g2");
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let (ex_a, _) = env.keys.executor("ex-a", "g1");
    let outsider = Identity::generate();
    let ran = env.path("ran");
    let marker = env.path("pwned");
    let up = upgrade_id();
    let g1 = subjects::step("g1");
    let signed_by = |signer: &Identity, req: &StepRequest| {
        let payload = req.encode();
        (Keyring::sign(signer, &g1, &payload), payload)
    };
    let mut forged = vec![
        signed_by(&outsider, &request(&up, 1, "g1", "status")),
        signed_by(&ex_b, &request(&up, 2, "g1", "status")),
        signed_by(&ex_a, &request(&up, 3, "g1", "status")),
        signed_by(&env.keys.operator, &request(&up, 4, "g1", "status")),
    ];
    // The service's own request for group g2, replayed on g1's subject.
    let (headers, payload) = request(&up, 5, "g2", "status").signed(&env.keys.service);
    forged.push((headers, payload));
    // The service's signature of a real request, over another body.
    let (headers, _) = request(&up, 6, "g1", "status").signed(&env.keys.service);
    let other = StepRequest {
        argv: sh(&format!("id > {}", marker.display())),
        ..request(&up, 6, "g1", "stop")
    };
    forged.push((headers, other.encode()));
    let n = forged.len() as u64;
    for (mut headers, payload) in forged {
        // A fresh msg id each: the stream's de-duplication must not be what stops them.
        headers.insert(protocol::messages::MSG_ID_HEADER, upgrade_id().as_str());
        env.publish_with(&g1, headers, &payload).await;
    }
    env.publish(&request(&up, 7, "g1", "status")).await;

    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert!(wait_unsigned(&env, "ex-a", n).await, "{}", exec.log());
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(
        env.results(&up).await,
        results,
        "no result for the forgeries"
    );
    assert_eq!(
        (results[0].step, results[0].outcome),
        (7, Outcome::Succeeded)
    );
    assert_eq!(
        lines(&ran),
        vec!["chef-backend-ctl status"],
        "only step 7 ran"
    );
    assert!(!marker.exists(), "the shell ran");
    let log = exec.log();
    for needle in [
        "signed by a key that is not in the trust file".to_string(),
        "signed by executor ex-b of group g2".to_string(),
        "signed by executor ex-a of group g1".to_string(),
        "signed by operator alice (approver)".to_string(),
        format!("bad signature for key {}", env.keys.service.public_key()),
        format!("signer={}", outsider.public_key()),
    ] {
        assert!(log.contains(&needle), "{needle:?} not in the log:\n{log}");
    }
    assert_eq!(
        log.matches("bad signature for key").count(),
        2,
        "the replay from g2 and the other body: {log}"
    );
}

/// Issue 11, auth off: a forged request with the highest epoch does not
/// raise the epoch fence (it is refused before the ledger is touched), so
/// the real service's request with epoch 1 for that upgrade still runs.
#[tokio::test]
async fn a_forged_request_with_the_highest_epoch_does_not_fence_the_service_out() {
    let env = Env::start().await;
    let mut exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let up = upgrade_id();
    let forged = StepRequest {
        epoch: u64::MAX,
        ..request(&up, 1, "g1", "status")
    };
    env.publish_unsigned(&forged).await;
    let outsider = Identity::generate();
    let forged = StepRequest { step: 2, ..forged };
    let payload = forged.encode();
    let subject = forged.subject();
    env.publish_with(
        &subject,
        Keyring::sign(&outsider, &subject, &payload),
        &payload,
    )
    .await;
    env.publish(&request(&up, 3, "g1", "status")).await;

    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert_eq!(
        (results[0].step, results[0].epoch, results[0].outcome),
        (3, 1, Outcome::Succeeded),
        "{results:?}"
    );
    assert!(wait_unsigned(&env, "ex-a", 2).await, "{}", exec.log());
    assert_eq!(env.results(&up).await, results);
    assert_eq!(lines(&ran), vec!["chef-backend-ctl status"]);
    let ledger = stopped_ledger(&env, &mut exec, "state-a");
    assert_eq!(ledger.highest_epoch(&up).unwrap(), Some(1), "the fence");
    assert_eq!(ledger.get(&format!("{up}:1:1")).unwrap(), None);
    assert_eq!(ledger.get(&format!("{up}:2:1")).unwrap(), None);
}

/// Issue 11, auth off: requests forged ahead under step ids the service will
/// use, with other commands (one the allow list would accept, one a shell),
/// run nothing and take nothing from the real requests with those ids: no
/// claim, no ledger entry, so the real ones run and are answered.
#[tokio::test]
async fn requests_forged_under_future_step_ids_neither_run_nor_block_the_real_ones() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let marker = env.path("pwned");
    let up = upgrade_id();
    env.publish_unsigned(&request(&up, 5, "g1", "stop")).await;
    let shell = StepRequest {
        argv: sh(&format!("id > {}", marker.display())),
        ..request(&up, 6, "g1", "stop")
    };
    let payload = shell.encode();
    let subject = shell.subject();
    let (ex_a, _) = env.keys.executor("ex-a", "g1");
    env.publish_with(&subject, Keyring::sign(&ex_a, &subject, &payload), &payload)
        .await;
    // The real requests with those ids, signed by the service.
    env.publish(&request(&up, 5, "g1", "status")).await;
    env.publish(&request(&up, 6, "g1", "status")).await;

    let mut results = env.wait_results(&up, 2, &[&exec]).await;
    // Two probes of one node may run side by side: their results come in either order.
    results.sort_by_key(|r| r.step);
    let got: Vec<(u64, Outcome)> = results.iter().map(|r| (r.step, r.outcome)).collect();
    assert_eq!(
        got,
        vec![(5, Outcome::Succeeded), (6, Outcome::Succeeded)],
        "{results:?}"
    );
    assert_eq!(
        lines(&ran),
        vec!["chef-backend-ctl status", "chef-backend-ctl status"],
        "the forged stop never ran"
    );
    assert!(!marker.exists(), "the shell ran");
    let kv = env.presence_bucket().await;
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a")
                .await
                .is_some_and(|p| p.unsigned == 2 && p.executed == 2 && p.conflicts == 0)
        })
        .await,
        "{:?}",
        env.presence_of(&kv, "ex-a").await
    );
}

/// Issue 11: an executor whose key the trust file does not list as an
/// executor of its `--group` refuses to start, naming the key and the group,
/// before it connects anywhere or opens its ledger.
#[test]
fn an_executor_whose_key_is_not_an_executor_of_its_group_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    let (_, ex_a) = keys.executor("ex-a", "g1");
    let (ex_b_identity, ex_b) = keys.executor("ex-b", "g2");
    let outsider = Identity::generate();
    let outsider_seed = dir.path().join("keys").join("outsider.seed");
    outsider.write_seed(&outsider_seed).unwrap();
    let service_seed = dir.path().join("keys").join("service.seed");
    keys.service.write_seed(&service_seed).unwrap();
    let public = |seed: &Path| Identity::load(seed).unwrap().public_key();
    assert_eq!(public(&ex_b), ex_b_identity.public_key());
    let cases: [(&Path, &[&str], &str); 4] = [
        (&outsider_seed, &[], "is not in the trust file"),
        (
            &ex_b,
            &[],
            "is listed in the trust file as executor ex-b of group g2, not of group g1 (--group)",
        ),
        (&service_seed, &[], "is the service's key"),
        (&ex_a, &["--id", "ex-z"], "named ex-a in the trust file"),
    ];
    for (i, (seed, extra, needle)) in cases.into_iter().enumerate() {
        let state = dir.path().join(format!("state-{i}"));
        let mut cmd = Command::new(workspace_bin("baton"));
        // Nothing listens there: a start that got as far as NATS would hang retrying.
        cmd.env("BATON_NATS_URL", "nats://127.0.0.1:1")
            .env("BATON_KEY", seed)
            .env("BATON_TRUST", keys.trust_path())
            .args(["executor", "--group", "g1", "--nodes", "backend-1"])
            .args(extra)
            .arg("--state-dir")
            .arg(&state);
        let mut proc = Proc::spawn("executor", cmd, &dir.path().join(format!("{i}.log"))).unwrap();
        let status = proc.wait_exit(SOON);
        let log = proc.log();
        let status = status.unwrap_or_else(|| panic!("case {i} did not refuse to start:\n{log}"));
        assert!(!status.success(), "case {i}: {log}");
        assert!(log.contains(needle), "case {i}: {needle:?} not in:\n{log}");
        assert!(
            log.contains(&public(seed)),
            "case {i}: key not named:\n{log}"
        );
        assert!(log.contains("g1"), "case {i}: group not named:\n{log}");
        assert!(!state.exists(), "case {i}: opened its ledger");
    }
}

/// An executor never creates streams or buckets (the service does): started
/// first, it waits for them, saying so, then serves.
#[tokio::test]
async fn an_executor_started_before_the_service_waits_for_its_streams_then_serves() {
    let env = Env::start_without_streams().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    assert!(
        wait_until(SOON, || exec
            .log()
            .matches("waiting for the workflow service to create the streams")
            .count()
            >= 2)
        .await,
        "{}",
        exec.log()
    );
    use futures::StreamExt as _;
    let names: Vec<String> = env
        .js
        .stream_names()
        .map(|n| n.expect("stream names"))
        .collect()
        .await;
    assert!(names.is_empty(), "the executor created {names:?}");
    protocol::ensure(&env.js, &service_options())
        .await
        .expect("streams are set up");
    let up = upgrade_id();
    env.publish(&request(&up, 1, "g1", "status")).await;
    let r = env.wait_results(&up, 1, &[&exec]).await[0].clone();
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
}

/// The publish permissions an executor named `name` of `group` needs, and
/// nothing more (as `protocol::setup` documents them); it subscribes only to
/// its own inbox, `_INBOX_<its key>.>`, for replies.
fn executor_publish_permissions(name: &str, group: &str) -> Vec<String> {
    vec![
        "$JS.API.INFO".into(),
        "$JS.API.STREAM.INFO.BATON_STEPS".into(),
        "$JS.API.STREAM.INFO.KV_baton_executors".into(),
        "$JS.API.STREAM.INFO.KV_baton_claims".into(),
        format!("$JS.API.CONSUMER.INFO.BATON_STEPS.exec-{group}"),
        format!("$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-{group}.baton.step.{group}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.BATON_STEPS.exec-{group}"),
        format!("$JS.ACK.BATON_STEPS.exec-{group}.>"),
        "baton.result.>".into(),
        format!("$KV.baton_executors.{name}"),
        format!("$KV.baton_claims.{group}.>"),
        format!("$JS.API.DIRECT.GET.KV_baton_claims.$KV.baton_claims.{group}.>"),
    ]
}

/// Issue 11, least privilege: on a nats-server where the executor's nkey may
/// publish only [`executor_publish_permissions`] (no stream create or update,
/// no workflow consumer), it attaches, serves a step, reads a claim, keeps
/// and removes its presence record, and the server records no permission
/// violation. Its credentials cannot create a stream there.
#[tokio::test]
async fn an_executor_serves_with_least_privilege_nats_permissions() {
    let mut env = Env::start().await;
    let (identity, seed) = env.keys.executor("ex-a", "g1");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let quoted = |subjects: Vec<String>| {
        subjects
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let conf = format!(
        "listen: \"127.0.0.1:{port}\"\n\
         jetstream {{ store_dir: \"{store}\" }}\n\
         authorization {{ users = [\n\
           {{ user: \"admin\", password: \"admin-secret\" }}\n\
           {{ nkey: \"{key}\", permissions: {{ publish: {{ allow: [{publish}] }}, subscribe: {{ allow: [\"{inbox}.>\"] }} }} }}\n\
         ] }}\n",
        store = env.path("auth-store").display(),
        key = identity.public_key(),
        inbox = subjects::inbox_prefix(&identity.public_key()),
        publish = quoted(executor_publish_permissions("ex-a", "g1")),
    );
    std::fs::write(env.path("auth.conf"), conf).unwrap();
    let mut cmd = Command::new(tests::nats::server_binary());
    cmd.arg("-c").arg(env.path("auth.conf"));
    let server = Proc::spawn("nats-server", cmd, &env.path("auth-server.log")).unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let admin_url = format!("nats://admin:admin-secret@127.0.0.1:{port}");
    let deadline = Instant::now() + SOON;
    let admin = loop {
        let (options, addrs) = protocol::connect::NatsConfig::new(admin_url.clone())
            .options("test-service")
            .await
            .unwrap();
        match options.connect(addrs.as_slice()).await {
            Ok(client) => break client,
            Err(e) if Instant::now() >= deadline => {
                panic!("nats-server with auth not ready: {e}\n{}", server.log())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // The test is the service (all rights) on this server from now on.
    env.js = jetstream::new(admin);
    protocol::ensure(&env.js, &service_options())
        .await
        .expect("the service sets up");

    // The executor's own credentials cannot create a stream.
    let (options, addrs) = protocol::connect::NatsConfig {
        nkey: Some(seed.clone()),
        inbox_prefix: Some(subjects::inbox_prefix(&identity.public_key())),
        ..protocol::connect::NatsConfig::new(url.clone())
    }
    .options("probe")
    .await
    .unwrap();
    let probe = jetstream::new(options.connect(addrs.as_slice()).await.unwrap());
    let created = tokio::time::timeout(
        Duration::from_secs(1),
        probe.create_stream(jetstream::stream::Config {
            name: "NOT_ALLOWED".into(),
            subjects: vec!["not.allowed".into()],
            ..Default::default()
        }),
    )
    .await;
    assert!(
        !matches!(created, Ok(Ok(_))),
        "the executor's key created a stream"
    );
    assert!(
        wait_until(SOON, || server.log().contains(
            "Publish Violation - Subject \"$JS.API.STREAM.CREATE.NOT_ALLOWED\""
        ))
        .await,
        "{}",
        server.log()
    );
    assert!(env.js.get_stream("NOT_ALLOWED").await.is_err());
    let violations_before = server.log().matches("Violation").count();

    let seed = seed.display().to_string();
    let mut exec = env.executor(
        "g1",
        "ex-a",
        "state-a",
        &["--nats", &url, "--nats-nkey", &seed],
    );
    let up = upgrade_id();
    env.publish(&request(&up, 1, "g1", "status")).await;
    // A step id another executor claimed for another command: reading that
    // claim is allowed too.
    let claims = env.js.get_key_value(subjects::CLAIMS_BUCKET).await.unwrap();
    claims
        .put(
            subjects::claim_key("g1", &up, 2, 1),
            br#"{"token":"ex-other/1/1","digest":"0000"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    env.publish(&request(&up, 2, "g1", "status")).await;
    let mut results = env.wait_results(&up, 2, &[&exec]).await;
    // Two probes of one node may run side by side: their results come in either order.
    results.sort_by_key(|r| r.step);
    let got: Vec<(u64, Outcome)> = results.iter().map(|r| (r.step, r.outcome)).collect();
    assert_eq!(got, vec![(1, Outcome::Succeeded), (2, Outcome::Rejected)]);
    assert!(
        results[1]
            .reason
            .as_deref()
            .unwrap()
            .contains("already claimed by executor ex-other/1/1"),
        "{results:?}"
    );
    let kv = env.presence_bucket().await;
    assert!(
        wait_until_async(SOON, || async {
            env.presence_of(&kv, "ex-a").await.is_some()
        })
        .await
    );
    exec.signal(Signal::SIGTERM);
    let status = exec.wait_exit(SOON).expect("exits after SIGTERM");
    assert!(status.success(), "{status}: {}", exec.log());
    assert!(
        env.presence_of(&kv, "ex-a").await.is_none(),
        "presence removed"
    );
    let log = server.log();
    assert_eq!(
        log.matches("Violation").count(),
        violations_before,
        "the executor needed more than its permissions:\n{log}"
    );
    drop(server);
}

/// The `--serve` entry of a further group `group` served with executor `id`'s key, for `nodes`.
fn serve_spec(env: &Env, group: &str, id: &str, nodes: &[&str]) -> String {
    let (_, seed) = env.keys.executor(id, group);
    let mut spec = format!("group={group},key={},id={id}", seed.display());
    for node in nodes {
        spec.push_str(&format!(",node={node}"));
    }
    spec
}

/// `[started_ms, finished_ms]` of a result that ran.
fn interval(r: &StepResult) -> (u64, u64) {
    (
        r.started_ms.expect("the step ran"),
        r.finished_ms.expect("the step ran"),
    )
}

#[tokio::test]
async fn one_executor_of_two_groups_runs_steps_of_different_nodes_at_once_and_one_per_node() {
    let env = Env::start().await;
    let serve = serve_spec(&env, "m2", "ex-m2", &["backend-1"]);
    // Group m1: backend-1 and backend-2; group m2 (its own key): its own backend-1.
    let exec = env.executor("m1", "ex-m1", "state-m", &["--serve", &serve]);
    let kv = env.presence_bucket().await;
    for (id, group) in [("ex-m1", "m1"), ("ex-m2", "m2")] {
        let online = wait_until_async(SOON, || async {
            env.presence_of(&kv, id)
                .await
                .is_some_and(|p| p.group == group && p.pid == exec.pid().as_raw() as u32)
        })
        .await;
        assert!(online, "{id} online in group {group}: {}", exec.log());
    }
    env.behave("chef-backend-ctl", "stop", "sleep 1");
    let up = upgrade_id();
    let on = |step: u64, group: &str, node: &str| StepRequest {
        node: node.into(),
        ..request(&up, step, group, "stop")
    };
    // Two steps for m1's backend-1, one for m1's backend-2, one for m2's backend-1.
    for req in [
        on(1, "m1", "backend-1"),
        on(2, "m1", "backend-1"),
        on(3, "m1", "backend-2"),
        on(4, "m2", "backend-1"),
    ] {
        env.publish(&req).await;
    }
    let results = env.wait_results(&up, 4, &[&exec]).await;
    assert_eq!(results.len(), 4, "{results:#?}");
    let by_step: BTreeMap<u64, &StepResult> = results.iter().map(|r| (r.step, r)).collect();
    for r in by_step.values() {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    }
    assert_eq!(
        by_step[&4].executor, "ex-m2",
        "signed and named by m2's key"
    );
    assert_eq!(by_step[&1].executor, "ex-m1");
    // The same node: one after the other.
    let (a, b) = (interval(by_step[&1]), interval(by_step[&2]));
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    assert!(
        second.0 >= first.1,
        "two steps of m1's backend-1 overlapped: {first:?} and {second:?}"
    );
    // Other nodes (of the same group, and of the other group): at the same time as the first.
    for step in [3, 4] {
        let other = interval(by_step[&step]);
        assert!(
            other.0 < first.1 && first.0 < other.1,
            "step {step} {other:?} did not run beside backend-1's first step {first:?}"
        );
    }
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
}

#[tokio::test]
async fn an_executor_of_two_groups_killed_mid_steps_answers_both_unknown_and_reruns_nothing() {
    let env = Env::start().await;
    let serve = serve_spec(&env, "k2", "ex-k2", &["backend-1"]);
    let args = ["--serve", serve.as_str()];
    let mut exec = env.executor("k1", "ex-k1", "state-k", &args);
    let ran = env.path("ran");
    let pids = env.path("pids");
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "echo $$ >> {}; echo run >> {}; sleep 30",
            pids.display(),
            ran.display()
        ),
    );
    let up = upgrade_id();
    env.publish(&request(&up, 1, "k1", "stop")).await;
    env.publish(&request(&up, 2, "k2", "stop")).await;
    assert!(
        wait_until(SOON, || lines(&ran).len() == 2).await,
        "both steps started: {}",
        exec.log()
    );
    kill_with_its_orphans(&mut exec, &pids);

    // The same process again, on the same ledger.
    let exec = env.executor("k1", "ex-k1", "state-k", &args);
    let results = env.wait_results(&up, 2, &[&exec]).await;
    assert_eq!(results.len(), 2, "{results:#?}");
    for r in &results {
        assert_eq!(r.outcome, Outcome::Unknown, "{r:?}");
        assert!(
            r.reason.as_deref().unwrap().contains("not run again"),
            "{r:?}"
        );
    }
    let executors: BTreeSet<&str> = results.iter().map(|r| r.executor.as_str()).collect();
    assert_eq!(executors, BTreeSet::from(["ex-k1", "ex-k2"]));
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    assert_eq!(lines(&ran), vec!["run", "run"], "never re-run");
}

#[test]
fn serve_entries_that_cannot_work_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keyring::new(dir.path());
    let (_, seed1) = keys.executor("ex-1", "g1");
    let (_, seed2) = keys.executor("ex-2", "g2");
    let run = |serve: &str| {
        Command::new(workspace_bin("baton"))
            .env("BATON_KEY", &seed1)
            .env("BATON_TRUST", keys.trust_path())
            .env("BATON_NATS_URL", "nats://127.0.0.1:1")
            .args(["executor", "--group", "g1", "--nodes", "backend-1"])
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--serve", serve])
            .output()
            .unwrap()
    };
    let key2 = seed2.display().to_string();
    let key1 = seed1.display().to_string();
    for (serve, needle) in [
        (format!("group=g2,key={key2}"), "cluster=FILE or node=NAME"),
        ("group=g2,node=backend-1".to_string(), "key=FILE"),
        (
            format!("group=g2,key={key2},node=b,colour=red"),
            "not a --serve item",
        ),
        (
            format!("group=g1,key={key1},node=backend-2"),
            "group g1 is served twice",
        ),
        (
            format!("group=g3,key={key2},node=backend-1"),
            "executor ex-2 of group g2, not of group g3",
        ),
        (
            format!("group=g2,key={key2},node=backend-1,node_bin_dir=relative/{{node}}"),
            "must be an absolute path",
        ),
    ] {
        let out = run(&serve);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{serve}: {stderr}");
        assert!(stderr.contains(needle), "{serve}: {stderr}");
    }
}

/// `sh` lines that wait up to `seconds` for the file `path` to exist: true if it appeared.
fn wait_for_file(path: &Path, seconds: u32) -> String {
    format!(
        "i=0; while [ ! -e {p} ] && [ $i -lt {n} ]; do sleep 0.05; i=$((i+1)); done; [ -e {p} ]",
        p = path.display(),
        n = seconds * 20
    )
}

#[tokio::test]
async fn two_probes_of_one_node_run_at_the_same_time() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let (a, b) = (env.path("status-ran"), env.path("cluster-status-ran"));
    // Each probe marks that it runs, then waits for the other's mark: run one after the other, the first
    // gives up after 5 s and fails.
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!(
            "touch {}; {} && echo met",
            a.display(),
            wait_for_file(&b, 5)
        ),
    );
    env.behave(
        "chef-backend-ctl",
        "cluster-status",
        &format!(
            "touch {}; {} && echo met",
            b.display(),
            wait_for_file(&a, 5)
        ),
    );
    let up = upgrade_id();
    env.publish(&request(&up, 1, "g1", "status")).await;
    env.publish(&request(&up, 2, "g1", "cluster-status")).await;
    let results = env.wait_results(&up, 2, &[&exec]).await;
    assert_eq!(results.len(), 2, "{results:#?}");
    for r in &results {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}\n{}", exec.log());
        assert_eq!(r.stdout_tail.trim(), "met", "{r:#?}");
    }
    let (x, y) = (interval(&results[0]), interval(&results[1]));
    assert!(x.0 < y.1 && y.0 < x.1, "not side by side: {x:?} {y:?}");
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
}

#[tokio::test]
async fn an_action_never_runs_beside_a_probe_of_its_node_nor_a_probe_beside_an_action() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &[]);
    let overlap = env.path("overlap");
    let mark = |name: &str| env.path(name);
    // The probe waits up to 3 s for the action to start: one that starts beside it is seen and recorded.
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!(
            "touch {started}; if {wait}; then echo probe-saw-action >> {o}; fi; touch {ended}",
            started = mark("probe-started").display(),
            wait = wait_for_file(&mark("action-started"), 3),
            o = overlap.display(),
            ended = mark("probe-ended").display(),
        ),
    );
    // The action checks the probe is over, then waits up to 3 s for the second probe to start beside it.
    env.behave(
        "chef-backend-ctl",
        "stop",
        &format!(
            "touch {started}; [ -e {probe_ended} ] || echo action-beside-probe >> {o}; \
             if {wait}; then echo action-saw-probe >> {o}; fi; touch {ended}",
            started = mark("action-started").display(),
            probe_ended = mark("probe-ended").display(),
            o = overlap.display(),
            wait = wait_for_file(&mark("probe2-started"), 3),
            ended = mark("action-ended").display(),
        ),
    );
    env.behave(
        "chef-backend-ctl",
        "cluster-status",
        &format!(
            "touch {started}; [ -e {action_ended} ] || echo probe-beside-action >> {o}",
            started = mark("probe2-started").display(),
            action_ended = mark("action-ended").display(),
            o = overlap.display(),
        ),
    );
    let up = upgrade_id();
    env.publish(&request(&up, 1, "g1", "status")).await;
    assert!(
        wait_until(SOON, || mark("probe-started").exists()).await,
        "{}",
        exec.log()
    );
    env.publish(&request(&up, 2, "g1", "stop")).await;
    // The action is pulled while the probe runs (and handed back); the second probe once the action runs.
    assert!(
        wait_until(SOON, || mark("action-started").exists()).await,
        "{}",
        exec.log()
    );
    env.publish(&request(&up, 3, "g1", "cluster-status")).await;
    let results = env.wait_results(&up, 3, &[&exec]).await;
    assert_eq!(lines(&overlap), Vec::<String>::new(), "{results:#?}");
    let by_step: BTreeMap<u64, &StepResult> = results.iter().map(|r| (r.step, r)).collect();
    for r in by_step.values() {
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}");
    }
    let (probe, action, probe2) = (
        interval(by_step[&1]),
        interval(by_step[&2]),
        interval(by_step[&3]),
    );
    assert!(action.0 >= probe.1, "{probe:?} {action:?}");
    assert!(probe2.0 >= action.1, "{action:?} {probe2:?}");
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
}

#[tokio::test]
async fn a_probe_whose_executor_was_killed_mid_run_is_run_again_and_answered_once() {
    let env = Env::start().await;
    let mut exec = env.executor("g1", "ex-a", "state-a", &[]);
    let ran = env.path("ran");
    let pids = env.path("pids");
    let release = env.path("release");
    // The first run hangs until the test kills it; a run after the release answers at once.
    env.behave(
        "chef-backend-ctl",
        "status",
        &format!(
            "echo $$ >> {pids}; echo run >> {ran}; if [ ! -e {release} ]; then sleep 30; fi; echo observed",
            pids = pids.display(),
            ran = ran.display(),
            release = release.display(),
        ),
    );
    let up = upgrade_id();
    let req = request(&up, 1, "g1", "status");
    env.publish(&req).await;
    assert!(
        wait_until(SOON, || lines(&ran).len() == 1).await,
        "{}",
        exec.log()
    );
    kill_with_its_orphans(&mut exec, &pids);
    std::fs::write(&release, "").unwrap();

    // The same state dir, a new process (a new claim token: the dead one's claim is not its own).
    let exec = env.executor("g1", "ex-a2", "state-a", &[]);
    let results = env.wait_results(&up, 1, &[&exec]).await;
    assert!(wait_until_async(SOON, || async { env.pending_requests().await == 0 }).await);
    let results_now = env.results(&up).await;
    assert_eq!(results_now, results, "answered once");
    let r = &results[0];
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:#?}\n{}", exec.log());
    assert_eq!(r.stdout_tail.trim(), "observed", "{r:#?}");
    assert_eq!(r.executor, "ex-a2");
    assert_eq!(lines(&ran), vec!["run", "run"], "run again after the kill");
    assert!(
        exec.log().contains("a probe changes nothing"),
        "{}",
        exec.log()
    );

    // A redelivery now is answered from the ledger: not run a third time.
    env.publish_raw("g1", &req.encode()).await;
    let both = env.wait_results(&up, 2, &[&exec]).await;
    assert_eq!(both[1], both[0]);
    assert_eq!(lines(&ran), vec!["run", "run"]);
}

/// The service sends a node's next step as soon as it has the previous one's result: an action right after a
/// probe of its node must find the probe's slot free, not be handed back for a later delivery (which cost
/// 50-160 ms per action in the fleet bench before slots were given back on answering).
#[tokio::test]
async fn an_action_right_after_a_probe_of_its_node_starts_on_its_first_delivery() {
    let env = Env::start().await;
    let exec = env.executor("g1", "ex-a", "state-a", &["--nodes", "backend-1"]);
    let up = upgrade_id();
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let mut results = client.subscribe(subjects::result(&up)).await.unwrap();
    client.flush().await.unwrap();
    use futures::StreamExt as _;
    for step in 1..=20u64 {
        let sub = if step % 2 == 0 { "stop" } else { "status" };
        env.publish(&request(&up, step, "g1", sub)).await;
        // Published only after the previous step's result, as the service does.
        let msg = tokio::time::timeout(SOON, results.next())
            .await
            .unwrap_or_else(|_| panic!("no result for step {step}:\n{}", exec.log()))
            .expect("subscription open");
        let r = env
            .keys
            .check_result(msg.headers.as_ref(), &msg.subject, &msg.payload);
        assert_eq!((r.step, r.outcome), (step, Outcome::Succeeded), "{r:#?}");
    }
    let log = exec.log();
    let started: Vec<&str> = log.lines().filter(|l| l.contains("step started")).collect();
    assert_eq!(started.len(), 20, "{log}");
    for line in started {
        assert!(
            line.contains("delivered=1"),
            "started on a later delivery: {line}"
        );
    }
}
