//! Run an argv as a local child process: no shell, its own process group,
//! a timeout that kills the whole group, bounded output tails.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use protocol::Outcome;
use tokio::process::Command;

use super::tail::read_tail;
use super::Ran;
use crate::now_ms;

/// How long output readers may lag behind the child's exit before leftover
/// processes of its group (which hold the pipes open) are killed.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What the child's stdin is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdin {
    /// `/dev/null`.
    Null,
    /// A pipe held open until the child ends and never written: its
    /// end-of-file tells a remote watcher (see `ssh`) that the step ended.
    HeldOpen,
}

/// Run `argv` with `env` added to this process's environment.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
    max_output: usize,
    stdin: Stdin,
) -> Ran {
    let started_ms = now_ms();
    let failed = |reason: String| Ran::failed(started_ms, reason);
    let Some((program, args)) = argv.split_first() else {
        return failed("empty argv".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env)
        .stdin(match stdin {
            Stdin::Null => Stdio::null(),
            Stdin::HeldOpen => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return failed(format!("could not start {program:?}: {e}")),
    };
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    // Dropped only when this function returns, after the child ended.
    let _held_stdin = child.stdin.take();
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let mut out_task = tokio::spawn(read_tail(stdout, max_output));
    let mut err_task = tokio::spawn(read_tail(stderr, max_output));

    let status = tokio::select! {
        status = child.wait() => Some(status),
        _ = tokio::time::sleep(timeout) => None,
    };
    let timed_out = status.is_none();
    if timed_out {
        kill_group(pgid);
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().await,
    };

    // Wait for the pipes to close; a straggler of the group keeping them open
    // past the grace period is killed.
    let grace = tokio::time::Instant::now() + DRAIN_GRACE;
    let (mut stdout_tail, mut stderr_tail) = (None, None);
    let mut killed = timed_out;
    while stdout_tail.is_none() || stderr_tail.is_none() {
        tokio::select! {
            r = &mut out_task, if stdout_tail.is_none() => stdout_tail = Some(r.unwrap_or_default()),
            r = &mut err_task, if stderr_tail.is_none() => stderr_tail = Some(r.unwrap_or_default()),
            _ = tokio::time::sleep_until(grace), if !killed => {
                kill_group(pgid);
                killed = true;
            }
        }
    }
    let (stdout_tail, stderr_tail) = (
        stdout_tail.unwrap_or_default(),
        stderr_tail.unwrap_or_default(),
    );
    let finished_ms = now_ms();

    let mut ran = Ran {
        outcome: Outcome::Failed,
        exit_code: None,
        stdout_tail,
        stderr_tail,
        reason: None,
        started_ms,
        finished_ms,
    };
    match status {
        _ if timed_out => {
            ran.outcome = Outcome::TimedOut;
            ran.reason = Some(format!(
                "ran longer than its timeout of {} ms; its process group was killed",
                timeout.as_millis()
            ));
        }
        Err(e) => ran.reason = Some(format!("could not wait for the command: {e}")),
        Ok(st) => match st.code() {
            Some(0) => {
                ran.outcome = Outcome::Succeeded;
                ran.exit_code = Some(0);
            }
            Some(code) => ran.exit_code = Some(code),
            None => {
                use std::os::unix::process::ExitStatusExt;
                ran.reason = Some(format!(
                    "killed by signal {}",
                    st.signal().map_or("?".into(), |s| s.to_string())
                ));
            }
        },
    }
    ran
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        // ESRCH (already gone) is fine: nothing is left to kill.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn reports_exit_codes_env_and_tails() {
        let env = BTreeMap::from([("GREETING".to_string(), "hi there".to_string())]);
        let ran = run(
            &argv(&["sh", "-c", "echo \"$GREETING\"; echo oops >&2; exit 3"]),
            &env,
            Duration::from_secs(10),
            1024,
            Stdin::Null,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Failed);
        assert_eq!(ran.exit_code, Some(3));
        assert_eq!(ran.stdout_tail, "hi there\n");
        assert_eq!(ran.stderr_tail, "oops\n");

        let ran = run(
            &argv(&["true"]),
            &BTreeMap::new(),
            Duration::from_secs(10),
            10,
            Stdin::Null,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Succeeded);
        assert_eq!(ran.exit_code, Some(0));
    }

    #[tokio::test]
    async fn argv_is_not_interpreted_by_a_shell() {
        let ran = run(
            &argv(&["echo", "$HOME; rm -rf /tmp/nothing"]),
            &BTreeMap::new(),
            Duration::from_secs(10),
            1024,
            Stdin::Null,
        )
        .await;
        assert_eq!(ran.stdout_tail, "$HOME; rm -rf /tmp/nothing\n");
    }

    #[tokio::test]
    async fn a_missing_program_fails_with_a_reason() {
        let ran = run(
            &argv(&["/nonexistent/baton-test-program"]),
            &BTreeMap::new(),
            Duration::from_secs(10),
            1024,
            Stdin::Null,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Failed);
        assert!(ran.reason.unwrap().contains("could not start"));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let ran = run(
            &argv(&["sh", "-c", &script]),
            &BTreeMap::new(),
            Duration::from_millis(300),
            1024,
            Stdin::Null,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::TimedOut);
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SIGKILL is delivered asynchronously: give the kernel a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(pid) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            !alive(pid),
            "the background sleep {pid} survived the timeout"
        );
    }

    /// Whether `pid` is a live (non-zombie) process.
    pub(crate) fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => false,
            Ok(stat) => {
                let state = stat.rsplit(')').next().unwrap_or("").trim_start();
                !state.starts_with('Z') && !state.starts_with('X')
            }
        }
    }
}
