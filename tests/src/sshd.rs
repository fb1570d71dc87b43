//! A real OpenSSH server on loopback for one test: a random port, a temporary
//! host key and a temporary client key in its `authorized_keys`, logging in as
//! the current user or a given one. Needs `/usr/sbin/sshd` (Debian:
//! `openssh-server`). [`SudoUser`] makes an unprivileged login with sudo rights
//! from a sudoers drop-in (needs root and Debian's `sudo`).

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
    user: String,
}

impl Sshd {
    /// Start sshd and wait until a `ssh ... true` login as the current user succeeds.
    pub async fn start() -> anyhow::Result<Sshd> {
        Sshd::start_as(&std::env::var("USER").unwrap_or_else(|_| "root".into())).await
    }

    /// Start sshd and wait until a `ssh ... true` login as `user` succeeds.
    pub async fn start_as(user: &str) -> anyhow::Result<Sshd> {
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
        // sshd reads authorized_keys as the user logging in; the private keys
        // stay 0600.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
        std::fs::set_permissions(
            d.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o644),
        )?;
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
        let sshd = Sshd {
            proc,
            port,
            dir,
            user: user.to_string(),
        };
        sshd.wait_ready().await?;
        Ok(sshd)
    }

    /// `127.0.0.1:<port>`, the node address to give a request.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The user the test logs in as (the current one unless started with [`Sshd::start_as`]).
    pub fn user(&self) -> String {
        self.user.clone()
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

/// An unprivileged local user for one test, made with `useradd` (reused if a
/// crashed run left it), allowed by a sudoers drop-in
/// (`/etc/sudoers.d/baton-test-<name>`, checked by `visudo -c` before it is
/// installed) to run what the test says; the drop-in and the user are removed
/// on drop. Needs root. Its home is `/`, so a login prints nothing about it.
pub struct SudoUser {
    name: String,
    dropin: PathBuf,
}

/// useradd, usermod and userdel lock /etc/passwd and fail, rather than wait,
/// while another holds it: the tests of this process take turns.
static ACCOUNTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `$BATON_SUDO`, else `/usr/bin/sudo`.
pub fn sudo_binary() -> PathBuf {
    std::env::var_os("BATON_SUDO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/sudo"))
}

impl SudoUser {
    /// Make (or reuse) user `name`, without sudo rights yet.
    pub fn create(name: &str) -> anyhow::Result<SudoUser> {
        anyhow::ensure!(
            {
                use std::os::unix::fs::MetadataExt as _;
                // /proc/self belongs to this process's effective user.
                std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
            },
            "making test user {name} needs root (CI runs the tests as root)"
        );
        anyhow::ensure!(
            sudo_binary().is_file(),
            "sudo not found at {} (install Debian's sudo, as scripts/test.sh does)",
            sudo_binary().display()
        );
        let user = SudoUser {
            name: name.to_string(),
            dropin: PathBuf::from(format!("/etc/sudoers.d/baton-test-{name}")),
        };
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let exists = Command::new("id")
            .args(["-u", name])
            .output()
            .context("could not run id")?
            .status
            .success();
        // `*`: no password can log in, but the account is not locked (sshd
        // without PAM refuses a locked one, even for a key).
        let (tool, args): (&str, Vec<&str>) = if exists {
            ("usermod", vec!["-p", "*", "-d", "/", "-s", "/bin/sh", name])
        } else {
            (
                "useradd",
                vec!["-M", "-p", "*", "-d", "/", "-s", "/bin/sh", name],
            )
        };
        let out = Command::new(tool)
            .args(&args)
            .output()
            .with_context(|| format!("could not run {tool}"))?;
        anyhow::ensure!(
            out.status.success(),
            "{tool} {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        user.revoke()?;
        Ok(user)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's uid.
    pub fn uid(&self) -> anyhow::Result<u32> {
        let out = Command::new("id").args(["-u", &self.name]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    }

    /// Install `lines` as the user's sudoers drop-in (replacing any earlier one).
    pub fn allow(&self, lines: &str) -> anyhow::Result<()> {
        let tmp = tempfile::NamedTempFile::new()?;
        std::fs::write(tmp.path(), lines)?;
        let out = Command::new("visudo")
            .arg("-cf")
            .arg(tmp.path())
            .output()
            .context("could not run visudo")?;
        anyhow::ensure!(
            out.status.success(),
            "visudo refuses the drop-in: {}{}\n{lines}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Written aside and renamed: sudo never reads half a file.
        let aside = self.dropin.with_extension("new");
        std::fs::write(&aside, lines)?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&aside, std::fs::Permissions::from_mode(0o440))?;
        std::fs::rename(&aside, &self.dropin)?;
        Ok(())
    }

    /// Remove the user's sudoers drop-in: no sudo rights at all.
    pub fn revoke(&self) -> anyhow::Result<()> {
        match std::fs::remove_file(&self.dropin) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for SudoUser {
    fn drop(&mut self) {
        let _ = self.revoke();
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        // -f: even while an ended session's process lingers.
        let _ = Command::new("userdel").args(["-f", &self.name]).output();
    }
}
