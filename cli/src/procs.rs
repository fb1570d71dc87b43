//! Child processes that `baton dev` starts and must never leave behind.
//!
//! Every child runs in its own process group and is owned by a [`Children`]
//! set: dropping the set (normal exit, error, Ctrl-C) sends SIGTERM to every
//! group, waits a grace period, then SIGKILLs what is left.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// A started child and the name it is reported under.
struct Named {
    name: String,
    child: Child,
}

/// The children of one `baton dev` run, stopped in reverse start order on drop.
#[derive(Default)]
pub struct Children {
    started: Vec<Named>,
}

impl Children {
    /// Starts `cmd` in its own process group with stdout and stderr appended
    /// to `log`.
    pub fn spawn(&mut self, name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<u32> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)
            .with_context(|| format!("creating log file {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let pid = child.id();
        self.started.push(Named {
            name: name.to_string(),
            child,
        });
        Ok(pid)
    }

    /// Fails if any child has exited, naming it and its exit status.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for named in &mut self.started {
            if let Some(status) = named.child.try_wait()? {
                bail!("{} exited unexpectedly ({status})", named.name);
            }
        }
        Ok(())
    }

    /// Stops every child: SIGTERM to its group, then SIGKILL after `grace`.
    pub fn stop_all(&mut self, grace: Duration) {
        for named in self.started.iter().rev() {
            let _ = killpg(Pid::from_raw(named.child.id() as i32), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        for named in self.started.iter_mut().rev() {
            loop {
                match named.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = killpg(Pid::from_raw(named.child.id() as i32), Signal::SIGKILL);
                        let _ = named.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.started.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(5));
    }
}

/// The pinned nats-server: `$BATON_NATS_SERVER`, else `.tools/bin/nats-server`
/// of the checkout this binary was built in, else `nats-server` on PATH.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("BATON_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    // target/{debug,release}/baton -> <checkout>/.tools/bin/nats-server
    if let Some(checkout) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
        let candidate = checkout.join(".tools/bin/nats-server");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    bail!(
        "nats-server not found: run `bash scripts/install-nats-server.sh` or set BATON_NATS_SERVER"
    )
}

/// A sibling binary of this one (`baton-sim` next to `baton`).
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .context("the baton binary has no parent directory")?
        .join(name);
    if !path.exists() {
        bail!(
            "{} not found next to {}: build it with `cargo build --bins`",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// A TCP port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
