//! Reach a node through the system `ssh` binary.
//!
//! The node's address comes only from this executor's own configuration
//! (`--nodes NAME=ADDRESS`, else the cluster file given with `--cluster`, else
//! the node name); a request naming an address (`BATON_NODE_ADDRESS` in its
//! env) is refused before it gets here. ssh always hands the remote command
//! to the remote user's shell, so every argv element (and `env` assignment)
//! is single-quoted: the remote shell sees exactly the argv.
//!
//! **Privilege escalation.** With [`SshConfig::sudo`], the commands that need
//! root ([`needs_root`]: every `chef-backend-ctl` command and the install; not
//! the read-only package queries) run as `sudo -n -- ARGV...`, so the login
//! user can be an unprivileged account that sudoers lets run exactly those
//! commands without a password. `-n` never prompts: before running anything,
//! the remote script asks `sudo -n -l -- ARGV...` whether sudo would run the
//! command; if not (a password would be needed, no rule allows it, sudo is
//! missing), nothing runs and the step fails with a reason naming the node,
//! the command, sudo's exit code and its output ([`SshConfig::interpret`]).
//!
//! Killing the local `ssh` on a timeout does not stop the remote command by
//! itself. sshd starts every session in its own session and process group;
//! the remote script runs the command beside a watcher that waits for
//! end-of-file on ssh's stdin, which the executor holds open while the step
//! runs: when the local ssh dies, the channel closes and the watcher kills
//! the session's whole process group. Under sudo the command runs as root,
//! which the login user cannot signal: the watcher sends SIGTERM to sudo,
//! which relays it to the command, waits up to 10 s for sudo to end, then
//! kills what the login user may kill. Processes the root command started
//! and that outlive its SIGTERM are not reached (docs/real-cluster.md).

use std::collections::BTreeMap;
use std::path::PathBuf;

use protocol::{Outcome, StepRequest};
use workflow::core::Action;

use super::Ran;

/// The env key that once named the node's address in a request; now refused
/// by the allow list (`crate::allow`), named here for its message.
pub const ADDRESS_ENV: &str = "BATON_NODE_ADDRESS";

/// The exit code of the remote script when sudo would not run the command.
/// The step's result carries sudo's own exit code instead.
const SUDO_REFUSED_EXIT: i32 = 125;
/// The first word of the line the remote script writes to stderr, followed by
/// sudo's exit code, when sudo would not run the command; sudo's output follows.
const SUDO_REFUSED_MARK: &str = "baton-ssh-sudo-refused";

/// How to call ssh.
#[derive(Debug, Clone)]
pub struct SshConfig {
    /// The ssh binary.
    pub program: PathBuf,
    /// Remote user (`-l`); default: ssh's own default.
    pub user: Option<String>,
    /// Extra `-o` options, e.g. `StrictHostKeyChecking=accept-new`, `IdentityFile=...`.
    pub options: Vec<String>,
    /// Run the commands that need root ([`needs_root`]) through `sudo -n`.
    pub sudo: bool,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            program: "ssh".into(),
            user: None,
            options: Vec::new(),
            sudo: false,
        }
    }
}

/// Whether `action`'s command needs root on the node, and so runs through
/// `sudo` when [`SshConfig::sudo`] is set. Every `chef-backend-ctl` command
/// does (the read-only `status` and `cluster-status` too: chef-backend-ctl
/// is an administrator's tool run as root, and which of its subcommands work
/// without root is not something to rely on), and so does the install; the
/// package queries
/// (`dpkg-query`/`rpm -q`, `dpkg-deb --field`/`rpm -qp`) do not, so the
/// package file must be readable by the login user.
pub fn needs_root(action: Action) -> bool {
    match action {
        Action::BlockFailover
        | Action::UnblockFailover
        | Action::Stop
        | Action::Install
        | Action::Start
        | Action::Demote
        | Action::Upgrade
        | Action::UpgradeLeader
        | Action::ProbeClusterStatus
        | Action::ProbeStatus
        | Action::ProbeFailover
        | Action::ProbeRunningVersion => true,
        Action::ProbeVersion | Action::ProbePackage => false,
    }
}

impl SshConfig {
    /// Whether `req` runs through sudo (an unknown action, which the allow
    /// list refuses before this, would).
    pub fn uses_sudo(&self, req: &StepRequest) -> bool {
        self.sudo && Action::from_name(&req.action).is_none_or(needs_root)
    }

    /// The local argv that runs `req` on its node, at `address`, through ssh.
    pub fn wrap(&self, req: &StepRequest, address: &str) -> Result<Vec<String>, String> {
        let (host, port) = split_address(address)?;
        let mut argv = vec![
            self.program.display().to_string(),
            "-o".into(),
            "BatchMode=yes".into(),
        ];
        for opt in &self.options {
            argv.push("-o".into());
            argv.push(opt.clone());
        }
        if let Some(port) = port {
            argv.push("-p".into());
            argv.push(port.to_string());
        }
        if let Some(user) = &self.user {
            argv.push("-l".into());
            argv.push(user.clone());
        }
        argv.push("--".into());
        argv.push(host);
        argv.push(remote_command(&req.env, &req.argv, self.uses_sudo(req)));
        Ok(argv)
    }

    /// The step's result from what the local ssh produced: when the remote
    /// script says sudo would not run the command (nothing ran), the result
    /// carries sudo's exit code and output, and a reason naming the node, the
    /// login, the command, the exit code and the output.
    pub fn interpret(&self, req: &StepRequest, address: &str, mut ran: Ran) -> Ran {
        if !self.uses_sudo(req) || ran.exit_code != Some(SUDO_REFUSED_EXIT) {
            return ran;
        }
        let mut lines = ran.stderr_tail.lines();
        let Some(code) = lines.by_ref().find_map(|l| {
            l.strip_prefix(SUDO_REFUSED_MARK)
                .and_then(|rest| rest.trim().parse::<i32>().ok())
        }) else {
            return ran; // the command itself exited 125
        };
        let output: Vec<&str> = lines.filter(|l| !l.trim().is_empty()).collect();
        let output = output.join("\n");
        let login = match &self.user {
            Some(user) => format!("{user}@{address}"),
            None => address.to_string(),
        };
        let who = self.user.as_deref().unwrap_or("the login user");
        let said = if output.is_empty() {
            format!(
                "no output: no sudoers rule lets {who} run exactly this command without a password"
            )
        } else {
            format!("output: {}", output.replace('\n', " | "))
        };
        ran.outcome = Outcome::Failed;
        ran.exit_code = Some(code);
        ran.reason = Some(format!(
            "node {node} ({login}): sudo -n would not run `{command}` as root (sudo exit code {code}, {said}); \
             nothing ran. Let {who} run it without a password in a sudoers drop-in (docs/real-cluster.md)",
            node = req.node,
            command = display_argv(&req.argv),
        ));
        ran.stderr_tail = output;
        ran
    }
}

/// Split `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_address(address: &str) -> Result<(String, Option<u16>), String> {
    let bad = |why: &str| format!("node address {address:?}: {why}");
    if address.is_empty() {
        return Err(bad("empty"));
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => return Err(bad("unexpected text after ']'")),
        }
    } else if address.matches(':').count() == 1 {
        let (h, p) = address.split_once(':').expect("one colon");
        (h, Some(p))
    } else {
        (address, None)
    };
    if host.is_empty() || host.starts_with('-') || host.chars().any(|c| c.is_whitespace()) {
        return Err(bad("not a host name"));
    }
    let port = port
        .map(|p| p.parse::<u16>().map_err(|_| bad("port is not a number")))
        .transpose()?;
    Ok((host.to_string(), port))
}

/// One shell word, single-quoted.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The argv as an operator would type it: plain words bare, others quoted.
fn display_argv(argv: &[String]) -> String {
    let plain = |a: &str| {
        !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_./=:,@%+-".contains(c))
    };
    argv.iter()
        .map(|a| if plain(a) { a.clone() } else { quote(a) })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The remote command: `exec sh -c '<script>'`, where the script runs
/// `env 'K=V'... 'argv0' 'argv1'...` (through `sudo -n --` when `sudo`) in
/// the background and a watcher kills the whole process group (`kill -9 0`)
/// if ssh's stdin reaches end-of-file first. The watcher reads a copy of
/// stdin on fd 4 because an asynchronous list's own stdin is /dev/null in a
/// shell without job control. Under sudo, the script first asks `sudo -n -l`
/// whether sudo would run the command and, if not, reports sudo's exit code
/// and output after [`SUDO_REFUSED_MARK`] and exits [`SUDO_REFUSED_EXIT`];
/// the watcher sends SIGTERM to sudo (which relays it to the root command)
/// and waits up to 10 s for it before its `kill -9 0`.
fn remote_command(env: &BTreeMap<String, String>, argv: &[String], sudo: bool) -> String {
    let quoted: Vec<String> = argv.iter().map(|a| quote(a)).collect();
    let mut words = Vec::new();
    if !env.is_empty() {
        words.push("env".to_string());
        for (k, v) in env {
            words.push(quote(&format!("{k}={v}")));
        }
    }
    let mut check = String::new();
    let watcher = if sudo {
        words.extend(["sudo".to_string(), "-n".into(), "--".into()]);
        check = format!(
            "o=$(sudo -n -l -- {cmd} 2>&1 >/dev/null); r=$?; if [ \"$r\" -ne 0 ]; then \
             printf '%s %s\\n%s\\n' {SUDO_REFUSED_MARK} \"$r\" \"$o\" >&2; exit {SUDO_REFUSED_EXIT}; fi; ",
            cmd = quoted.join(" ")
        );
        "read -r _ <&4; kill -TERM $p 2>/dev/null; i=0; \
         while [ $i -lt 10 ] && kill -0 $p 2>/dev/null; do sleep 1; i=$((i+1)); done; kill -9 0"
    } else {
        "read -r _ <&4; kill -9 0"
    };
    words.extend(quoted);
    let script = format!(
        "{check}exec 4<&0 </dev/null; {} 4<&- & p=$!; ({watcher}) & w=$!; \
         exec 4<&-; wait $p; rc=$?; kill $w; exit $rc",
        words.join(" ")
    );
    format!("exec sh -c {}", quote(&script))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(env: &[(&str, &str)]) -> StepRequest {
        StepRequest {
            v: 1,
            upgrade: "U".into(),
            step: 1,
            attempt: 1,
            epoch: 1,
            node: "backend-1".into(),
            group: "pool".into(),
            action: "status".into(),
            argv: vec!["echo".into(), "it's $HOME; ok".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            timeout_ms: 1000,
            deadline_ms: 0,
            profile_sha256: None,
        }
    }

    #[test]
    fn wraps_argv_with_batch_mode_and_quoting() {
        let cfg = SshConfig {
            user: Some("baton".into()),
            options: vec!["StrictHostKeyChecking=no".into()],
            ..Default::default()
        };
        let argv = cfg
            .wrap(&request(&[("A", "x y")]), "10.0.0.5:2222")
            .unwrap();
        assert_eq!(
            argv,
            vec![
                "ssh",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-p",
                "2222",
                "-l",
                "baton",
                "--",
                "10.0.0.5",
                &remote_command(
                    &BTreeMap::from([("A".to_string(), "x y".to_string())]),
                    &["echo".to_string(), "it's $HOME; ok".to_string()],
                    false,
                ),
            ]
        );
    }

    #[test]
    fn the_remote_command_gives_the_shell_exactly_the_argv_and_env() {
        // Run the remote command through a local sh, as sshd would, with
        // stdin held open like the executor does.
        let remote = remote_command(
            &BTreeMap::from([("A".to_string(), "x y".to_string())]),
            &[
                "sh".to_string(),
                "-c".to_string(),
                "printf '%s|%s\\n' \"$A\" \"$0\"; echo e >&2; exit 5".to_string(),
                "it's $HOME; ok".to_string(),
            ],
            false,
        );
        let dir = tempfile::tempdir().unwrap();
        let (stdout, stderr, code) = run_remote(&remote, dir.path());
        assert_eq!(stdout, "x y|it's $HOME; ok\n");
        assert_eq!(stderr, "e\n", "no job-control noise");
        assert_eq!(code, Some(5));
    }

    /// Hostile review 14 (P2): a profile's probe says where it runs (`runs_on = "the_node"`), and under the SSH
    /// runner an argv probe runs on the node, so `127.0.0.1:PORT` in it means the node's own member. An HTTP probe
    /// is answered from the executor's own host whatever the runner (`RunnerConfig::run` dispatches before the
    /// runner is looked at), so the same endpoint now means the executor host's member: every node's node probe
    /// gets one member's answer, a stopped member looks up, and a profile with `leader_when` hears "replica"
    /// from every member, the real leader included (the emergency exit then lifts a fence beside it). Nothing
    /// refuses or warns: the module doc says it, the profile format does not. Fix: the SSH runner refuses an HTTP
    /// probe (or one whose endpoints are loopback) unless the profile says its HTTP probes are made from the
    /// executor (a `runs_on` of its own), and the executor refuses at start to serve such a profile over SSH.
    #[tokio::test]
    async fn review14_an_http_probe_of_a_node_reached_over_ssh_is_not_answered_by_the_executors_own_host(
    ) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use workflow::core::profile_file::HTTP_PROGRAM;
        // The executor's host runs a member of its own on loopback, healthy.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap().to_string();
        let answering = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{\"health\":\"true\"}",
                    )
                    .await;
            }
        });
        // The node is reached over ssh (which is not even there): its node probe must not be answered here.
        let cfg = SshConfig {
            program: "/nonexistent/ssh".into(),
            ..SshConfig::default()
        };
        let req = StepRequest {
            action: "probe_status".into(),
            argv: [
                HTTP_PROGRAM,
                "GET",
                &local,
                "/health",
                "",
                "1000",
                "",
                "",
                "",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ..request(&[])
        };
        let ssh = crate::runner::RunnerConfig::Ssh(cfg);
        let ran = ssh.run(&req, "node-1.example", 8192, None).await;
        // The executor answers an HTTP probe through `run_http` (its allow list says which steps are).
        let asked = ssh.run_http(&req, 8192).await;
        answering.abort();
        assert_eq!(asked.outcome, Outcome::Failed, "{asked:?}");
        assert_eq!(asked.reason.as_deref(), Some(crate::runner::SSH_HTTP));
        assert_ne!(
            ran.outcome,
            Outcome::Succeeded,
            "node-1.example's node probe, which runs on the node over ssh, was answered by the executor's own \
             host: {}",
            ran.stdout_tail
        );
    }

    #[test]
    fn the_address_is_the_one_given_and_must_be_a_host() {
        let cfg = SshConfig::default();
        let argv = cfg.wrap(&request(&[]), "backend-1").unwrap();
        assert_eq!(argv[argv.len() - 2], "backend-1");
        let argv = cfg.wrap(&request(&[]), "[::1]:22").unwrap();
        assert_eq!(argv[argv.len() - 2], "::1");
        // Even a request carrying an address does not change it.
        let argv = cfg
            .wrap(&request(&[(ADDRESS_ENV, "evil.example")]), "10.0.0.5")
            .unwrap();
        assert_eq!(argv[argv.len() - 2], "10.0.0.5");
        assert!(cfg.wrap(&request(&[]), "-oProxyCommand=x").is_err());
        assert!(cfg.wrap(&request(&[]), "h:notaport").is_err());
    }

    /// Run `remote` through a local sh as sshd would (its own process group,
    /// stdin held open), with `bin` first in PATH: (stdout, stderr, exit code).
    fn run_remote(remote: &str, bin: &std::path::Path) -> (String, String, Option<i32>) {
        use std::os::unix::process::CommandExt;
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut child = std::process::Command::new("sh")
            .args(["-c", remote])
            .env("PATH", path)
            .process_group(0)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _stdin = child.stdin.take();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            out.status.code(),
        )
    }

    /// A `sudo` stand-in: `-n -l -- CMD...` succeeds when `allow` (beside it)
    /// lists CMD's name, else says what sudo -n says; `-n -- CMD...` runs CMD.
    fn fake_sudo(dir: &std::path::Path, allowed: &[&str]) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let sudo = bin.join("sudo");
        std::fs::write(
            &sudo,
            "#!/bin/sh\n[ \"$1\" = -n ] || exit 99; shift\n\
             if [ \"$1\" = -l ]; then shift 2\n\
               if grep -qx \"$1\" \"$(dirname \"$0\")/allow\"; then echo \"/usr/bin/$1\"; exit 0; fi\n\
               echo 'sudo: a password is required' >&2; exit 1\nfi\n\
             [ \"$1\" = -- ] || exit 98; shift\nexec \"$@\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut allow = allowed.join("\n");
        allow.push('\n');
        std::fs::write(bin.join("allow"), allow).unwrap();
        bin
    }

    fn ran_of(stdout: String, stderr: String, code: Option<i32>) -> Ran {
        Ran {
            outcome: if code == Some(0) {
                Outcome::Succeeded
            } else {
                Outcome::Failed
            },
            exit_code: code,
            stdout_tail: stdout,
            stderr_tail: stderr,
            reason: None,
            started_ms: 1,
            finished_ms: 2,
        }
    }

    #[test]
    fn only_the_commands_that_need_root_go_through_sudo() {
        let cfg = SshConfig {
            sudo: true,
            ..Default::default()
        };
        let with = |action: &str| {
            let req = StepRequest {
                action: action.into(),
                ..request(&[])
            };
            let remote = cfg.wrap(&req, "10.0.0.5").unwrap().pop().unwrap();
            remote.contains("sudo -n --")
        };
        for action in Action::ALL {
            assert_eq!(with(action.as_str()), needs_root(action), "{action}");
        }
        assert!(with("stop") && with("install") && with("probe_status"));
        assert!(!with("probe_version") && !with("probe_package"));
        // Without --ssh-sudo nothing does.
        let plain = SshConfig::default();
        let req = StepRequest {
            action: "stop".into(),
            ..request(&[])
        };
        assert!(!plain.wrap(&req, "h").unwrap()[4].contains("sudo"));
    }

    #[test]
    fn through_sudo_the_command_gets_exactly_its_argv_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_sudo(dir.path(), &["sh"]);
        let argv = [
            "sh",
            "-c",
            "printf '%s|%s\\n' \"$A\" \"$0\"; echo e >&2; exit 5",
            "it's $HOME; ok",
        ]
        .map(String::from);
        let remote = remote_command(
            &BTreeMap::from([("A".to_string(), "x y".to_string())]),
            &argv,
            true,
        );
        let (out, err, code) = run_remote(&remote, &bin);
        assert_eq!(out, "x y|it's $HOME; ok\n");
        assert_eq!(err, "e\n");
        assert_eq!(code, Some(5));
        // An exit code of the command itself is not taken for a refusal.
        let cfg = SshConfig {
            sudo: true,
            ..Default::default()
        };
        let req = StepRequest {
            action: "stop".into(),
            argv: argv.to_vec(),
            ..request(&[])
        };
        let ran = cfg.interpret(&req, "h", ran_of(out, err, Some(125)));
        assert_eq!((ran.exit_code, ran.reason), (Some(125), None));
    }

    #[test]
    fn a_command_sudo_will_not_run_fails_naming_node_command_exit_code_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let ran_file = dir.path().join("ran");
        let bin = fake_sudo(dir.path(), &["other"]);
        let argv = [
            "sh".to_string(),
            "-c".into(),
            format!("echo ran > {}", ran_file.display()),
        ];
        let cfg = SshConfig {
            sudo: true,
            user: Some("baton".into()),
            ..Default::default()
        };
        let req = StepRequest {
            action: "stop".into(),
            argv: argv.to_vec(),
            ..request(&[])
        };
        let remote = cfg.wrap(&req, "10.0.0.5:22").unwrap().pop().unwrap();
        let (out, err, code) = run_remote(&remote, &bin);
        assert_eq!(code, Some(SUDO_REFUSED_EXIT), "{err}");
        assert!(!ran_file.exists(), "nothing runs when sudo refuses");
        let ran = cfg.interpret(&req, "10.0.0.5:22", ran_of(out, err, code));
        assert_eq!(ran.outcome, Outcome::Failed);
        assert_eq!(ran.exit_code, Some(1), "sudo's own exit code");
        assert_eq!(ran.stderr_tail, "sudo: a password is required");
        let reason = ran.reason.unwrap();
        for needle in [
            "node backend-1 (baton@10.0.0.5:22)",
            &format!("`sh -c 'echo ran > {}'`", ran_file.display()),
            "sudo exit code 1",
            "output: sudo: a password is required",
            "nothing ran",
        ] {
            assert!(reason.contains(needle), "{needle:?} not in {reason}");
        }
    }
}
