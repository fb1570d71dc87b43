//! Integration tests: the SSH runner as on a real cluster. A real `baton
//! executor` takes its node and the node's address from the cluster file
//! (`--cluster`), logs in to a real sshd on loopback as an unprivileged user
//! (made with `useradd`), and runs the commands that need root through `sudo
//! -n`, which a sudoers drop-in allows for exactly those commands. The test
//! plays the workflow service: it signs the step requests with the service
//! key of its trust file and reads the signed results.
//!
//! The node's tools are fakes that record who ran them (`id -u`), their argv
//! and `LANG`; the login finds them through a wrapper around the real ssh that
//! puts them first in the remote PATH, and sudo through the drop-in's
//! `secure_path` (a real node has them in /usr/bin). Everything else is real:
//! sshd, the remote shell, sudo and its policy, process groups. Needs root
//! (`useradd`, `/etc/sudoers.d`), sshd and sudo (`scripts/test.sh` installs
//! them).
//!
//! Last, the systemd units of `packaging/systemd` that docs/real-cluster.md
//! deploys: their commands parse, and `systemd-analyze verify` accepts them.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt as _;
use protocol::sign::{ExecutorPeer, Identity, Peer, Trust};
use protocol::{decode_result, subjects, Outcome, StepRequest, StepResult};
use tempfile::TempDir;
use tests::sshd::SudoUser;
use tests::{wait_until, workspace_bin, NatsServer, Proc, Sshd};

const SOON: Duration = Duration::from_secs(20);
/// Where docs/real-cluster.md keeps packages (the file need not exist: the
/// fake dpkg only records that it ran).
const PACKAGE: &str = "/var/lib/baton/packages/chef-backend_3.1.0-1_amd64.deb";

/// A fake node tool: records `<uid> <tool> <args> LANG=<LANG>`, then runs
/// `do/<tool>-<first arg>.sh` if the test wrote one, else prints `<tool> ok`.
const FAKE_TOOL: &str = r#"#!/bin/sh
t=$(basename "$0")
printf '%s %s %s LANG=%s\n' "$(id -u)" "$t" "$*" "${LANG:-}" >> @DIR@/record
f="@DIR@/do/$t-$1.sh"
if [ -f "$f" ]; then exec sh "$f" "$@"; fi
echo "$t ok"
"#;

/// One test's world: nats-server with Baton's streams, the keys and trust
/// file, a fake node directory every user can read, a loopback sshd that
/// accepts the test key for `user`, and one ssh executor of group `pool`.
struct World {
    _nats: NatsServer,
    client: async_nats::Client,
    dir: TempDir,
    service: Identity,
    sshd: Sshd,
    exec: Proc,
}

impl World {
    async fn start(user: &SudoUser) -> World {
        let sshd = Sshd::start_as(user.name())
            .await
            .expect("sshd starts on loopback");
        let nats = NatsServer::start().await.expect("nats-server starts");
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        protocol::ensure(&js, &protocol::Options::default())
            .await
            .expect("streams are set up");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // The login user reads the fake tools and appends to the record.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(d.join("bin")).unwrap();
        std::fs::create_dir(d.join("do")).unwrap();
        for tool in ["chef-backend-ctl", "dpkg", "dpkg-query"] {
            let path = d.join("bin").join(tool);
            std::fs::write(&path, FAKE_TOOL.replace("@DIR@", &d.display().to_string())).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(d.join("record"), "").unwrap();
        std::fs::set_permissions(d.join("record"), std::fs::Permissions::from_mode(0o666)).unwrap();

        // Keys: the test is the service; one executor of group pool.
        let service = Identity::generate();
        let executor = Identity::generate();
        executor.write_seed(&d.join("executor.seed")).unwrap();
        let trust = Trust {
            service: Peer {
                name: "baton-service".into(),
                key: service.public_key(),
            },
            executors: vec![ExecutorPeer {
                name: "ex-ssh".into(),
                key: executor.public_key(),
                group: "pool".into(),
            }],
            operators: vec![],
        };
        std::fs::write(d.join("trust.toml"), trust.to_toml()).unwrap();

        // The cluster file, as given to `baton plan`: backend-1 is the
        // pool's, at the sshd's address; the others belong to other groups.
        let cluster = format!(
            "[cluster]\nname = \"prod\"\n\n\
             [[nodes]]\nname = \"backend-1\"\naddress = \"{address}\"\nexecutor = \"pool\"\n\n\
             [[nodes]]\nname = \"backend-2\"\naddress = \"192.0.2.2\"\nexecutor = \"other-2\"\n\n\
             [[nodes]]\nname = \"backend-3\"\naddress = \"192.0.2.3\"\nexecutor = \"other-3\"\n\n\
             [upgrade]\npackage = \"{PACKAGE}\"\ninstaller = \"dpkg\"\nprocedure = \"runbook\"\n",
            address = sshd.address(),
        );
        std::fs::write(d.join("cluster.toml"), cluster).unwrap();

        // A wrapper around the real ssh puts the fake tools first in the
        // remote PATH (a real node has them in /usr/bin).
        let wrapper = d.join("ssh-wrapper");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/bash\nargs=(\"$@\"); last=${{args[-1]}}; unset 'args[-1]'\n\
                 exec ssh \"${{args[@]}}\" \"PATH={bin}:\\$PATH; export PATH; $last\"\n",
                bin = d.join("bin").display(),
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

        let mut cmd = Command::new(workspace_bin("baton"));
        cmd.env("BATON_NATS_URL", nats.url())
            .env("BATON_KEY", d.join("executor.seed"))
            .env("BATON_TRUST", d.join("trust.toml"))
            .env("RUST_LOG", "info")
            .arg("executor")
            .args(["--group", "pool", "--cluster"])
            .arg(d.join("cluster.toml"))
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--heartbeat-ms", "200", "--fetch-wait-ms", "300"])
            .args(["--runner", "ssh", "--ssh-sudo", "--ssh-user", user.name()])
            .arg("--ssh-program")
            .arg(&wrapper);
        for o in sshd.client_options() {
            cmd.args(["--ssh-option", &o]);
        }
        let exec = Proc::spawn("ex-ssh", cmd, &d.join("ex-ssh.log")).expect("executor starts");
        World {
            _nats: nats,
            client,
            dir,
            service,
            sshd,
            exec,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bin(&self) -> PathBuf {
        self.path("bin")
    }

    /// The sudoers lines of a drop-in for `user`: the fake tools are found
    /// by sudo through `secure_path`, and `commands` (each `TOOL ARGS`) may be
    /// run as root without a password.
    fn sudoers(&self, user: &SudoUser, commands: &[&str]) -> String {
        let bin = self.bin().display().to_string();
        let allowed: Vec<String> = commands.iter().map(|c| format!("{bin}/{c}")).collect();
        format!(
            "Defaults:{u} secure_path=\"{bin}:/usr/sbin:/usr/bin:/sbin:/bin\"\n\
             {u} ALL=(root) NOPASSWD: {}\n",
            allowed.join(", "),
            u = user.name(),
        )
    }

    /// The sudoers drop-in of docs/real-cluster.md, for `user`, with the
    /// fake tools' directory for `/usr/bin` (and in sudo's `secure_path`).
    fn documented_sudoers(&self, user: &SudoUser) -> String {
        let doc = std::fs::read_to_string(tests::workspace_root().join("docs/real-cluster.md"))
            .expect("docs/real-cluster.md");
        let start = doc
            .find("\nDefaults:baton ")
            .expect("the page has the sudoers lines");
        let block = &doc[start + 1..];
        let block = &block[..block.find("\n```").expect("the block ends")];
        let bin = self.bin().display().to_string();
        let lines: Vec<String> = block
            .lines()
            .map(|l| {
                let l = l.replace("/usr/bin/", &format!("{bin}/"));
                if let Some(rest) = l.strip_prefix("Defaults:baton ") {
                    format!("Defaults:{} {rest}", user.name())
                } else if let Some(rest) = l.strip_prefix("baton ") {
                    format!("{} {rest}", user.name())
                } else {
                    l
                }
            })
            .collect();
        format!(
            "Defaults:{u} secure_path=\"{bin}:/usr/sbin:/usr/bin:/sbin:/bin\"\n{}\n",
            lines.join("\n"),
            u = user.name()
        )
    }

    /// What the fake `<tool> <first>` does from now on (sh, argv as `$@`).
    fn behave(&self, tool: &str, first: &str, script: &str) {
        let path = self.path("do").join(format!("{tool}-{first}.sh"));
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn record(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("record"))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Publish `req` signed as the service, and return its result (signed by
    /// the executor's key).
    async fn run(&self, req: StepRequest) -> StepResult {
        let mut results = self
            .client
            .subscribe(subjects::result(&req.upgrade))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        let js = jetstream::new(self.client.clone());
        let (headers, payload) = req.signed(&self.service);
        js.publish_with_headers(req.subject(), headers, payload.into())
            .await
            .expect("request published")
            .await
            .expect("request stored");
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            let msg = tokio::time::timeout_at(deadline, results.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no result for step {} in time; executor log:\n{}\nsshd log:\n{}",
                        req.step,
                        self.exec.log(),
                        self.sshd.log()
                    )
                })
                .expect("subscription open");
            protocol::sign::verify_headers(
                msg.headers.as_ref(),
                protocol::sign::Kind::Result,
                &msg.subject,
                &msg.payload,
            )
            .expect("the result is signed");
            let result = decode_result(&msg.payload).expect("a well-formed result");
            if result.step == req.step {
                return result;
            }
        }
    }
}

/// A request for backend-1 as the workflow service renders it.
fn request(step: u64, action: &str, argv: &[&str]) -> StepRequest {
    StepRequest {
        v: protocol::PROTOCOL_VERSION,
        upgrade: ulid::Ulid::new().to_string(),
        step,
        attempt: 1,
        epoch: 1,
        node: "backend-1".into(),
        group: "pool".into(),
        action: action.into(),
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        timeout_ms: 15_000,
        deadline_ms: now_ms() + 60_000,
        profile_sha256: None,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Whether `pid` is a live (non-zombie) process.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !(state.starts_with('Z') || state.starts_with('X'))
        }
    }
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn an_unprivileged_login_runs_the_root_steps_through_sudo_at_the_cluster_files_address() {
    let user = SudoUser::create("baton-ssh-sudo").expect("test user");
    let uid = user.uid().unwrap();
    assert_ne!(uid, 0);
    let w = World::start(&user).await;
    // The drop-in the page tells operators to write: the commands of the
    // runbook procedure, the package by a regular expression that matches
    // one file name and nothing more (sudo 1.9.10+).
    user.allow(&w.documented_sudoers(&user)).unwrap();

    // An upgrade step that needs root: stop, as root through sudo, with the
    // request's LANG (sudo keeps LANG, LC_ALL and TZ).
    let mut stop = request(1, "stop", &["chef-backend-ctl", "stop"]);
    stop.env.insert("LANG".into(), "C.UTF-8".into());
    let r = w.run(stop).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.stdout_tail, "chef-backend-ctl ok\n");
    // The install, of the file name the regular expression allows.
    let r = w.run(request(2, "install", &["dpkg", "-i", PACKAGE])).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    // A read-only package query runs as the login user, not through sudo.
    let probe = [
        "dpkg-query",
        "-W",
        "-f=${db:Status-Status} ${Version}\\n",
        "chef-backend",
    ];
    let r = w.run(request(3, "probe_version", &probe)).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let mut expected = vec![
        "0 chef-backend-ctl stop LANG=C.UTF-8".to_string(),
        format!("0 dpkg -i {PACKAGE} LANG="),
        format!("{uid} dpkg-query {} LANG=", probe[1..].join(" ")),
    ];
    // Every other root command of the runbook procedure is in the page's
    // drop-in and runs as root.
    for (step, (action, argv)) in [
        ("block_failover", "set-cluster-failover off"),
        ("probe_cluster_status", "cluster-status"),
        ("probe_failover", "cluster-status --json"),
        ("probe_status", "status"),
        ("start", "start"),
        ("demote", "demote"),
        ("unblock_failover", "set-cluster-failover on"),
    ]
    .into_iter()
    .enumerate()
    {
        let argv: Vec<&str> = ["chef-backend-ctl"]
            .into_iter()
            .chain(argv.split(' '))
            .collect();
        let r = w.run(request(10 + step as u64, action, &argv)).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{action}: {r:?}");
        expected.push(format!("0 {} LANG=", argv.join(" ")));
    }
    assert_eq!(w.record(), expected, "who ran what (uid first)");

    // A timeout: the login user cannot signal the root command, so the
    // watcher asks sudo, which relays SIGTERM to it.
    let pid_file = w.path("start.pid");
    w.behave(
        "chef-backend-ctl",
        "start",
        &format!("echo $$ > {}; exec sleep 60", pid_file.display()),
    );
    let mut slow = request(20, "start", &["chef-backend-ctl", "start"]);
    // Long enough for the login and sudo to start it on a loaded machine.
    slow.timeout_ms = 4000;
    let r = w.run(slow).await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    let pid = read_pid(&pid_file).expect("the root command ran and wrote its pid");
    let owner = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| s.contains("\nUid:\t0\t"))
        .unwrap_or(true);
    assert!(owner, "the command ran as root");
    assert!(
        wait_until(SOON, || !alive(pid)).await,
        "the root command {pid} survived its step's timeout; executor log:\n{}",
        w.exec.log()
    );
}

#[tokio::test]
async fn a_command_sudo_will_not_run_fails_naming_node_command_exit_code_and_output() {
    let user = SudoUser::create("baton-ssh-nosudo").expect("test user");
    let w = World::start(&user).await;
    // The status probe is allowed; stop is not.
    user.allow(&w.sudoers(&user, &["chef-backend-ctl status"]))
        .unwrap();
    let r = w
        .run(request(1, "probe_status", &["chef-backend-ctl", "status"]))
        .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");

    let r = w
        .run(request(2, "stop", &["chef-backend-ctl", "stop"]))
        .await;
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(1), "sudo's exit code: {r:?}");
    let reason = r.reason.clone().unwrap_or_default();
    let login = format!("{}@{}", user.name(), w.sshd.address());
    for needle in [
        "node backend-1",
        login.as_str(),
        "sudo -n would not run `chef-backend-ctl stop` as root",
        "sudo exit code 1",
        "no sudoers rule lets baton-ssh-nosudo run exactly this command without a password",
        "nothing ran",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
    }

    // No sudo rights at all: sudo asks for a password, which -n refuses;
    // its words are in the reason.
    user.revoke().unwrap();
    let r = w
        .run(request(3, "probe_status", &["chef-backend-ctl", "status"]))
        .await;
    assert_eq!(r.outcome, Outcome::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(1), "{r:?}");
    assert_eq!(r.stderr_tail, "sudo: a password is required", "{r:?}");
    let reason = r.reason.unwrap_or_default();
    for needle in [
        "node backend-1",
        "`chef-backend-ctl status`",
        "sudo exit code 1",
        "output: sudo: a password is required",
    ] {
        assert!(reason.contains(needle), "{needle:?} not in {reason:?}");
    }
    assert_eq!(
        w.record(),
        vec!["0 chef-backend-ctl status LANG=".to_string()],
        "only the allowed command ran"
    );
}

/// The shipped systemd units (packaging/systemd): each `ExecStart` (with
/// the example `BATON_EXECUTOR_ARGS` of the ssh unit) is accepted by this
/// `baton`, and, where `systemd-analyze` is installed, `systemd-analyze
/// verify` finds nothing to say about them (it exits 0 even for an unknown
/// key, so its warnings are failures here). The binary's path is the only
/// change: verify wants an executable there.
#[test]
fn the_shipped_systemd_units_verify_and_their_commands_parse() {
    let dir = tests::workspace_root().join("packaging/systemd");
    let tmp = tempfile::tempdir().unwrap();
    let analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !analyze {
        eprintln!(
            "systemd-analyze is not installed: the units' commands are checked, not the units"
        );
    }
    let baton = workspace_bin("baton");
    for name in [
        "baton-server.service",
        "baton-executor@.service",
        "baton-executor-ssh@.service",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .unwrap_or_else(|| panic!("{name} has no ExecStart"));
        let mut args: Vec<String> = exec
            .split_whitespace()
            .map(|w| w.replace("%i", "pool"))
            .collect();
        assert_eq!(args.remove(0), "/usr/bin/baton", "{name}");
        if args.iter().any(|a| a == "$BATON_EXECUTOR_ARGS") {
            args.retain(|a| a != "$BATON_EXECUTOR_ARGS");
            let example = text
                .lines()
                .find_map(|l| l.strip_prefix("#   BATON_EXECUTOR_ARGS="))
                .unwrap_or_else(|| panic!("{name} uses BATON_EXECUTOR_ARGS without an example"));
            args.extend(example.split_whitespace().map(str::to_string));
        }
        let out = Command::new(&baton)
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: baton {args:?} is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if analyze {
            let unit = tmp.path().join(name.replace("@.service", "@pool.service"));
            std::fs::write(
                &unit,
                text.replace("/usr/bin/baton", &baton.display().to_string()),
            )
            .unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&unit)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            let unit_name = unit.file_name().unwrap().to_string_lossy().into_owned();
            let about: Vec<&str> = said.lines().filter(|l| l.contains(&unit_name)).collect();
            assert!(
                out.status.success() && about.is_empty(),
                "systemd-analyze verify {name}: {said}"
            );
        }
    }
}

/// `baton executor --cluster`: flags that contradict the cluster file are
/// refused before anything starts, naming the file, the node or the flag.
#[test]
fn executor_flags_that_contradict_the_cluster_file_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = Identity::generate();
    key.write_seed(&d.join("executor.seed")).unwrap();
    let trust = Trust {
        service: Peer {
            name: "baton-service".into(),
            key: Identity::generate().public_key(),
        },
        executors: vec![ExecutorPeer {
            name: "ex".into(),
            key: key.public_key(),
            group: "pool".into(),
        }],
        operators: vec![],
    };
    std::fs::write(d.join("trust.toml"), trust.to_toml()).unwrap();
    let cluster = d.join("cluster.toml");
    std::fs::write(
        &cluster,
        "[cluster]\nname = \"prod\"\n\n\
         [[nodes]]\nname = \"backend-1\"\naddress = \"192.0.2.1\"\nexecutor = \"pool\"\n\n\
         [[nodes]]\nname = \"backend-2\"\naddress = \"192.0.2.2\"\nexecutor = \"other\"\n\n\
         [[nodes]]\nname = \"backend-3\"\naddress = \"192.0.2.3\"\nexecutor = \"other\"\n",
    )
    .unwrap();
    let file = cluster.display().to_string();
    for (args, needle) in [
        (
            vec!["--installer", "yum"],
            format!("--installer yum disagrees with cluster file {file}, whose upgrade.installer is dpkg"),
        ),
        (
            vec!["--procedure", "upgrade-command"],
            format!("--procedure upgrade-command disagrees with cluster file {file}, whose upgrade.procedure is runbook"),
        ),
        (
            vec!["--nodes", "backend-2"],
            format!("node backend-2 (--nodes) belongs to executor group other in cluster file {file}, not to pool"),
        ),
        (
            vec!["--nodes", "backend-9"],
            format!("node backend-9 (--nodes) is not in cluster file {file}"),
        ),
        (
            vec!["--ssh-sudo"],
            "--ssh-sudo is for the ssh runner (--runner ssh)".to_string(),
        ),
    ] {
        let out = Command::new(workspace_bin("baton"))
            .env("BATON_KEY", d.join("executor.seed"))
            .env("BATON_TRUST", d.join("trust.toml"))
            .env("BATON_NATS_URL", "nats://127.0.0.1:1")
            .args(["executor", "--group", "pool", "--cluster", &file])
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(&needle), "{args:?}: {needle:?} not in {err}");
    }
}
