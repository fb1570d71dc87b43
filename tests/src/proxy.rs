//! A user-space TCP proxy between Baton's processes and nats-server, for
//! network faults: added latency, connection resets and a blackhole.
//!
//! Every connection is a pair of copy loops owned by the proxy's [`JoinSet`];
//! dropping the proxy (or [`Proxy::reset`]) aborts them, which closes both
//! sockets with an RST (linger 0).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// What the proxy does with the bytes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward as they come.
    Pass,
    /// Hold every chunk this long before forwarding it.
    Latency(Duration),
    /// Swallow everything (connections stay open, nothing arrives).
    Blackhole,
}

/// A running proxy on a random loopback port.
pub struct Proxy {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    connections: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Starts forwarding 127.0.0.1:<random port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let connections = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let acceptor = {
            let mode = mode.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    let mut set = connections.lock().await;
                    // Reap finished connections as new ones arrive.
                    while set.try_join_next().is_some() {}
                    set.spawn(pump(client_read, server_write, mode.clone()));
                    set.spawn(pump(server_read, client_write, mode.clone()));
                }
            })
        };
        Ok(Proxy {
            port,
            mode,
            connections,
            acceptor,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Changes what happens to the bytes from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    /// Closes every current connection with an RST; clients reconnect.
    pub async fn reset(&self) {
        let mut set = self.connections.lock().await;
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        if let Ok(mut set) = self.connections.try_lock() {
            set.abort_all();
        }
    }
}

/// Copies one direction of a connection, applying the current mode.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<Mutex<Mode>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.lock().unwrap_or_else(|p| p.into_inner());
        match current {
            Mode::Pass => {}
            Mode::Latency(delay) => tokio::time::sleep(delay).await,
            Mode::Blackhole => continue,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
