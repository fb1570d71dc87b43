//! Test support shared by the integration tests: a real nats-server per test
//! ([`nats::NatsServer`]) or a cluster of them ([`nats_cluster::NatsCluster`]), the workspace's built binaries and child processes
//! stopped on drop ([`process`]), and condition waits with timeouts
//! ([`wait`]) instead of bare sleeps, a loopback OpenSSH server ([`sshd`]), a
//! TCP proxy for network faults ([`proxy`]), an authenticated deployment's
//! keys, trust file and TLS files ([`secure`]), real clusters of other
//! systems on loopback ([`real`]), and headless Chromium for pages that
//! must render in a real browser ([`browser`]), and a fleet of simulated
//! clusters upgraded at once on one service ([`fleet`], the fleet benchmark's core).

pub mod browser;
pub mod fleet;
pub mod nats;
pub mod nats_cluster;
pub mod process;
pub mod proxy;
pub mod real;
pub mod secure;
pub mod sshd;
pub mod wait;

pub use browser::Chromium;
pub use nats::NatsServer;
pub use nats_cluster::NatsCluster;
pub use process::{workspace_bin, workspace_root, Proc};
pub use proxy::{Mode, Proxy};
pub use secure::{Secure, ServerErrors};
pub use sshd::Sshd;
pub use wait::{wait_unlocked, wait_until, wait_until_async};
