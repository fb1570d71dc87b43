//! A real nats-server with JetStream for one test: a free random port, a
//! temporary store dir, stopped on drop; restartable on the same port and
//! store, and freezable (SIGSTOP/SIGCONT) for chaos tests. Without
//! authentication ([`NatsServer::start`]), or configured for a [`Secure`]
//! deployment ([`NatsServer::start_secured`]: nkey users with least-privilege
//! permissions, TLS with client certificates). A member of a
//! [`crate::nats_cluster::NatsCluster`] is a `NatsServer` too, started with a
//! `cluster` block and its own server name.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{workspace_root, Proc};
use crate::secure::{connect_config, Secure};

/// How long a start or restart may take before the test fails.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one readiness probe waits for JetStream's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

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
    secured: Option<Secured>,
    member: Option<Member>,
}

/// What a member of a cluster needs across restarts: its name and where the
/// cluster's routes listen.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// `server_name` (JetStream's peers know each other by it; it must stay
    /// the same across restarts).
    pub(crate) name: String,
    /// The cluster's name, the same on every member.
    pub(crate) cluster: String,
    /// This member's route port.
    pub(crate) route_port: u16,
    /// The other members' route ports.
    pub(crate) routes: Vec<u16>,
}

/// What a secured server needs across restarts.
struct Secured {
    /// The rendered configuration file.
    config_file: PathBuf,
    /// How `wait_ready` connects: as the service (its URL is set per probe).
    probe: protocol::connect::NatsConfig,
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
        let mut server = Self::unstarted(jetstream, None)?;
        server.spawn().await?;
        Ok(server)
    }

    /// A server with a free port and a fresh store dir, not started yet.
    pub(crate) fn unstarted(jetstream: bool, member: Option<Member>) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new()
            .prefix("baton-nats-")
            .tempdir()
            .context("could not create the store dir")?;
        Ok(NatsServer {
            proc: None,
            port: free_port()?,
            dir,
            starts: 0,
            jetstream,
            secured: None,
            member,
        })
    }

    /// Start a server for `secure`'s deployment: configured by
    /// `protocol::natsconf::render` (one nkey user per trust entry, TLS with
    /// client certificates, no anonymous access) on a free port with a fresh
    /// store dir. Restarts keep the configuration. Clients connect to
    /// [`NatsServer::url`] with TLS (the server asks for it in its INFO).
    pub async fn start_secured(secure: &Secure) -> anyhow::Result<NatsServer> {
        let mut server = Self::unstarted(true, None)?;
        let config = protocol::natsconf::render(
            &secure.trust,
            &protocol::natsconf::ServerOptions {
                host: "127.0.0.1".into(),
                port: server.port,
                store_dir: server.dir.path().join("store"),
                tls: Some(secure.tls.clone()),
                monitor_port: None,
            },
        );
        let config_file = server.dir.path().join("nats-server.conf");
        std::fs::write(&config_file, config).context("could not write the server config")?;
        server.secured = Some(Secured {
            config_file,
            probe: secure.nats_config("", Some(&secure.service_key)),
        });
        server.spawn().await?;
        Ok(server)
    }

    /// Start a server with JetStream whose `authorization` block is `authorization` (nats-server's config
    /// syntax: a `users` list with their permissions), on a free port with a fresh store dir; `probe` is a user
    /// and password of it that may use JetStream (the readiness check connects as it).
    pub async fn start_with_authorization(
        authorization: &str,
        probe: (&str, &str),
    ) -> anyhow::Result<NatsServer> {
        let mut server = Self::unstarted(true, None)?;
        let config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\nauthorization {{\n{authorization}\n}}\n",
            port = server.port,
            store = server.dir.path().join("store"),
        );
        let config_file = server.dir.path().join("nats-server.conf");
        std::fs::write(&config_file, config).context("could not write the server config")?;
        server.secured = Some(Secured {
            config_file,
            probe: protocol::connect::NatsConfig {
                user: Some(probe.0.to_string()),
                password: Some(probe.1.to_string()),
                ..Default::default()
            },
        });
        server.spawn().await?;
        Ok(server)
    }

    /// The configuration file of a secured server.
    pub fn config_file(&self) -> Option<&std::path::Path> {
        self.secured.as_ref().map(|s| s.config_file.as_path())
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its `server_name` when it is a member of a cluster.
    pub fn server_name(&self) -> Option<&str> {
        self.member.as_ref().map(|m| m.name.as_str())
    }

    /// Whether its process runs (not stopped, not exited).
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<nix::unistd::Pid> {
        self.proc.as_ref().map(Proc::pid)
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

    /// Start it again on the same port and store dir, after [`NatsServer::stop`].
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn().await
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
        self.launch()?;
        self.wait_ready().await
    }

    /// Start the process without waiting for it to be ready (the members of
    /// a cluster are all launched before any can be: JetStream needs a
    /// quorum of them).
    pub(crate) fn launch(&mut self) -> anyhow::Result<()> {
        let bin = server_binary();
        anyhow::ensure!(
            bin.is_file(),
            "nats-server not found at {} (set BATON_NATS_SERVER or run scripts/install-nats-server.sh)",
            bin.display()
        );
        let store = self.dir.path().join("store");
        let mut cmd = Command::new(&bin);
        if let Some(secured) = &self.secured {
            cmd.arg("-c").arg(&secured.config_file);
        } else {
            if self.jetstream {
                cmd.arg("-js");
            }
            cmd.args(["-p", &self.port.to_string()])
                .arg("-sd")
                .arg(&store)
                .args(["-a", "127.0.0.1"]);
        }
        if let Some(member) = &self.member {
            let route = |port: &u16| format!("nats://127.0.0.1:{port}");
            cmd.args(["--server_name", &member.name])
                .args(["--cluster_name", &member.cluster])
                .args(["--cluster", &route(&member.route_port)])
                .args([
                    "--routes",
                    &member
                        .routes
                        .iter()
                        .map(route)
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
        }
        self.starts += 1;
        let log = self.dir.path().join("nats-server.log");
        self.proc = Some(Proc::spawn("nats-server", cmd, &log)?);
        Ok(())
    }

    /// Wait until a client connects and (when enabled) JetStream answers. A
    /// member of a cluster answers JetStream requests only once the cluster
    /// has a meta leader, so this also waits for that.
    pub(crate) async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let url = self.url();
        let ready = tokio::time::timeout(READY_TIMEOUT, async {
            loop {
                if let Some(p) = self.proc.as_mut() {
                    if let Some(status) = p.wait_exit(Duration::ZERO) {
                        return Err(anyhow::anyhow!("nats-server exited early with {status}"));
                    }
                }
                if let Some(client) = self.probe(&url).await {
                    if !self.jetstream {
                        return Ok(());
                    }
                    let js = async_nats::jetstream::new(client);
                    // Without a meta leader nobody answers: ask again soon
                    // rather than wait out the client's request timeout.
                    let answer = tokio::time::timeout(PROBE_TIMEOUT, js.query_account()).await;
                    if matches!(answer, Ok(Ok(_))) {
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

    /// A client for the readiness check (as the service when secured).
    async fn probe(&self, url: &str) -> Option<async_nats::Client> {
        match &self.secured {
            None => async_nats::connect(url).await.ok(),
            Some(secured) => {
                let config = protocol::connect::NatsConfig {
                    url: url.to_string(),
                    ..secured.probe.clone()
                };
                connect_config(&config, None).await.ok()
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that was free a moment ago (the OS picks it).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("could not find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// For the harness's tests: stream `KEEP` (`keep.>`) with `replicas`
/// copies and one message in it.
#[cfg(test)]
pub(crate) async fn keep_one_message(js: &async_nats::jetstream::Context, replicas: usize) {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KEEP".into(),
        subjects: vec!["keep.>".into()],
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .unwrap();
    js.publish("keep.a", "x".into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn starts_restarts_on_the_same_port_and_keeps_its_streams() {
        let mut server = NatsServer::start().await.unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        keep_one_message(&async_nats::jetstream::new(client), 1).await;
        let port = server.port();
        server.restart().await.unwrap();
        assert_eq!(server.port(), port);
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream("KEEP").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.messages, 1);
    }

    #[tokio::test]
    async fn a_secured_server_keeps_its_configuration_across_restarts() {
        let secure = Secure::new(&["g1"]).unwrap();
        let mut server = NatsServer::start_secured(&secure).await.unwrap();
        let config = std::fs::read_to_string(server.config_file().unwrap()).unwrap();
        assert!(config.contains(&secure.trust.service.key), "{config}");
        server.restart().await.unwrap();
        let url = server.url();
        assert!(secure.connect(&url, None).await.is_err(), "anonymous");
        assert!(secure
            .connect(&url, Some(&secure.service_key))
            .await
            .is_ok());
    }
}
