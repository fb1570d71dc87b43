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
