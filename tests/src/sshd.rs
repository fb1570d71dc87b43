//! A real OpenSSH server on loopback for one test: a random port, a temporary
//! host key and a temporary client key in its `authorized_keys`, logging in as
//! the current user. Needs `/usr/sbin/sshd` (Debian: `openssh-server`).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::process::Proc;

/// The sshd binary: `$BATON_SSHD`, else `/usr/sbin/sshd`.
pub fn sshd_binary() -> PathBuf {
    std::env::var_os("BATON_SSHD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/sshd"))
}

/// A running sshd that accepts the test's key.
pub struct Sshd {
    proc: Proc,
    port: u16,
    dir: TempDir,
}

impl Sshd {
    /// Start sshd and wait until a `ssh ... true` login succeeds.
    pub async fn start() -> anyhow::Result<Sshd> {
        let bin = sshd_binary();
        anyhow::ensure!(
            bin.is_file(),
            "sshd not found at {} (install openssh-server, or set BATON_SSHD)",
            bin.display()
        );
        let dir = tempfile::Builder::new().prefix("baton-sshd-").tempdir()?;
        let d = dir.path();
        for key in ["host", "client"] {
            let status = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", ""])
                .arg("-f")
                .arg(d.join(key))
                .status()
                .context("could not run ssh-keygen")?;
            anyhow::ensure!(status.success(), "ssh-keygen failed for the {key} key");
        }
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys"))?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").context("could not create /run/sshd")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {auth}\n\
             PermitRootLogin yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             StrictModes no\nUsePAM no\nPidFile {pid}\n",
            host = d.join("host").display(),
            auth = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display(),
        );
        std::fs::write(d.join("sshd_config"), config)?;
        let mut cmd = Command::new(&bin);
        cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config"));
        let proc = Proc::spawn("sshd", cmd, &d.join("sshd.log"))?;
        let sshd = Sshd { proc, port, dir };
        sshd.wait_ready().await?;
        Ok(sshd)
    }

    /// `127.0.0.1:<port>`, the node address to give a request.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The user the test logs in as (the current one).
    pub fn user(&self) -> String {
        std::env::var("USER").unwrap_or_else(|_| "root".into())
    }

    /// The `-o` options a client needs: the test key, a private known_hosts.
    pub fn client_options(&self) -> Vec<String> {
        let d = self.dir.path();
        vec![
            format!("IdentityFile={}", d.join("client").display()),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "StrictHostKeyChecking=no".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let mut cmd = Command::new("ssh");
            cmd.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=2"]);
            for o in self.client_options() {
                cmd.args(["-o", &o]);
            }
            let out = cmd
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-l",
                    &self.user(),
                    "--",
                    "127.0.0.1",
                    "true",
                ])
                .output()
                .context("could not run ssh")?;
            if out.status.success() {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "sshd on port {} does not accept logins: {}; sshd log:\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
