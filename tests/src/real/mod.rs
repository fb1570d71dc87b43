//! Real clusters of systems that no one here wrote, on loopback, for the profile-driven upgrade tests
//! (docs/real-clusters.md): each module starts one, writes to it through the system's own client ([`writer`]),
//! records what changed on each member ([`journal`]), and stops every process it started on drop.

use std::time::{Duration, Instant};

pub mod etcd;
pub mod journal;
pub mod patroni;
pub mod writer;

/// Polls `cond` every 50 ms until it yields a value or `timeout` passes.
pub(crate) fn poll<T>(timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
