//! A real nats-server with JetStream for one test: a free random port, a
//! temporary store dir, stopped on drop; restartable on the same port and
//! store, and freezable (SIGSTOP/SIGCONT) for chaos tests.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{workspace_root, Proc};

/// How long a start or restart may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// The nats-server binary: `$BATON_NATS_SERVER`, else `<workspace>/.tools/bin/nats-server`.
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_NATS_SERVER") {
        return PathBuf::from(p);
    }
    workspace_root().join(".tools/bin/nats-server")
}

/// A running nats-server with JetStream.
pub struct NatsServer {
    proc: Option<Proc>,
    port: u16,
    dir: TempDir,
    starts: u32,
    jetstream: bool,
}

impl NatsServer {
    /// Start a server on a free port with a fresh store dir, and wait until
    /// a client can use JetStream on it.
    pub async fn start() -> anyhow::Result<NatsServer> {
        Self::start_with(true).await
    }

    /// Start a server without JetStream (to test that Baton refuses it).
    pub async fn start_without_jetstream() -> anyhow::Result<NatsServer> {
        Self::start_with(false).await
    }

    async fn start_with(jetstream: bool) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("baton-nats-")
            .tempdir()
            .context("could not create the store dir")?;
        let port = free_port()?;
        let mut server = NatsServer {
            proc: None,
            port,
            dir,
            starts: 0,
            jetstream,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kill the server (SIGKILL: a crash, not a clean shutdown) and reap it.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Stop the server cleanly (SIGTERM, as an operator's restart would) and
    /// wait for it to exit; SIGKILL if it has not within 10 s.
    pub fn terminate(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::SIGTERM);
            if p.wait_exit(Duration::from_secs(10)).is_none() {
                p.kill();
            }
        }
    }

    /// Stop it, then start it again on the same port and store dir.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn().await
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing answers.
    pub fn freeze(&self) {
        if let Some(p) = &self.proc {
            p.signal(Signal::SIGSTOP);
        }
    }

    /// Thaw a frozen server (SIGCONT).
    pub fn thaw(&self) {
        if let Some(p) = &self.proc {
            p.signal(Signal::SIGCONT);
        }
    }

    /// The server's log so far (all starts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats-server.log")).unwrap_or_default()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = server_binary();
        anyhow::ensure!(
            bin.is_file(),
            "nats-server not found at {} (set BATON_NATS_SERVER or run scripts/install-nats-server.sh)",
            bin.display()
        );
        let store = self.dir.path().join("store");
        let mut cmd = Command::new(&bin);
        if self.jetstream {
            cmd.arg("-js");
        }
        cmd.args(["-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&store)
            .args(["-a", "127.0.0.1"]);
        self.starts += 1;
        let log = self.dir.path().join("nats-server.log");
        self.proc = Some(Proc::spawn("nats-server", cmd, &log)?);
        self.wait_ready().await
    }

    /// Wait until a client connects and (when enabled) JetStream answers.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                if let Some(p) = self.proc.as_mut() {
                    if let Some(status) = p.wait_exit(Duration::ZERO) {
                        return Err(anyhow::anyhow!("nats-server exited early with {status}"));
                    }
                }
                if let Ok(client) = async_nats::connect(&url).await {
                    if !self.jetstream {
                        return Ok(());
                    }
                    let js = async_nats::jetstream::new(client);
                    if js.query_account().await.is_ok() {
                        return Ok(());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context(format!("log:\n{}", self.log()))),
            Err(_) => anyhow::bail!(
                "nats-server on port {} not ready after {READY_TIMEOUT:?} (start #{}); log:\n{}",
                self.port,
                self.starts,
                self.log()
            ),
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS picks it).
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not find a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_on_the_same_port_and_keeps_its_streams() {
        let mut server = NatsServer::start().await.unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "KEEP".into(),
            subjects: vec!["keep.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("keep.a", "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let port = server.port();
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("KEEP").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
    }
}
