//! Wait on a condition, polling, with a timeout.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

/// Poll `cond` until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for conditions that need to await (e.g. a NATS query).
pub async fn wait_until_async<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until no sled instance holds the log in `db` (sled takes an
/// exclusive `flock` on `db/db`, and lets go of it a moment after the
/// database is dropped, when its flusher thread ends). A test that opened the
/// log in-process calls this before a child process opens it.
pub fn wait_unlocked(db: &std::path::Path) {
    use nix::fcntl::{Flock, FlockArg};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(db.join("db"))
            .expect("the log's db file opens");
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // Unlocked again when dropped.
            Ok(_locked) => return,
            Err((_, errno)) if std::time::Instant::now() < deadline => {
                let _ = errno;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, errno)) => panic!(
                "the log at {} stayed locked for 10 s: {errno}",
                db.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_true_once_the_condition_holds_and_false_on_timeout() {
        let mut n = 0;
        assert!(
            wait_until(Duration::from_secs(5), || {
                n += 1;
                n >= 3
            })
            .await
        );
        assert_eq!(n, 3);
        assert!(!wait_until(Duration::from_millis(50), || false).await);
        assert!(!wait_until_async(Duration::from_millis(50), || async { false }).await);
    }
}
