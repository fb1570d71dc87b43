//! Keeps this executor's presence record alive in the `baton_executors` bucket,
//! signed with its key ([`protocol::presence::seal`]) under the key
//! [`protocol::presence::key`] of its id, as the service checks it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use protocol::Presence;
use tokio_util::sync::CancellationToken;

use crate::now_ms;

/// Counters and the running step, shared by the worker and the heartbeat.
#[derive(Debug, Default)]
pub struct Stats {
    /// Steps whose command was started.
    pub executed: AtomicU64,
    /// Well-formed requests refused, for any reason.
    pub rejected: AtomicU64,
    /// Of those, refused by the allow list (`crate::allow`).
    pub not_allowed: AtomicU64,
    /// Of those, refused because the step id was used for another command.
    pub conflicts: AtomicU64,
    /// Requests that could not be decoded (answered `rejected` when their ids
    /// were readable, otherwise terminated).
    pub malformed: AtomicU64,
    /// Requests the service did not sign for their subject (terminated, no
    /// result, nothing recorded).
    pub unsigned: AtomicU64,
    /// The steps running now (an action or up to `MAX_PROBES_PER_NODE` probes per busy node).
    pub running: Mutex<std::collections::BTreeSet<String>>,
    /// The step ids being answered now, from before the ledger is read until
    /// the answer is recorded: one copy of a request at a time ([`Stats::take`]).
    in_hand: Mutex<std::collections::BTreeSet<String>>,
}

/// The one copy of step `key` being answered now; dropping it lets the next
/// copy in.
#[derive(Debug)]
pub(crate) struct InHand<'a> {
    stats: &'a Stats,
    key: String,
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.stats
            .in_hand
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

impl Stats {
    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_running(&self, key: &str, running: bool) {
        let mut all = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running {
            all.insert(key.to_string());
        } else {
            all.remove(key);
        }
    }

    /// Take step `key` in hand, unless another copy of it is being answered
    /// in this process now (`None`). JetStream may deliver a request again
    /// while its first copy is still claiming, running or recording it; the
    /// copies must be answered one after the other, the later ones from the
    /// ledger, or a probe runs twice.
    pub(crate) fn take(&self, key: &str) -> Option<InHand<'_>> {
        let mut all = self.in_hand.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(key.to_string()).then(|| InHand {
            stats: self,
            key: key.to_string(),
        })
    }

    /// `base` with the current counters and heartbeat time.
    fn snapshot(&self, base: &Presence) -> Presence {
        Presence {
            heartbeat_ms: now_ms(),
            executed: self.executed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            not_allowed: self.not_allowed.load(Ordering::Relaxed),
            conflicts: self.conflicts.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            unsigned: self.unsigned.load(Ordering::Relaxed),
            // The record names one step (the protocol's field); with several
            // nodes busy, the first by key.
            running: self
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .first()
                .cloned(),
            ..base.clone()
        }
    }
}

/// Put the signed record every `interval` until `stop`, then delete it.
pub async fn heartbeat(
    kv: kv::Store,
    base: Presence,
    identity: protocol::sign::Identity,
    stats: std::sync::Arc<Stats>,
    metrics: std::sync::Arc<crate::metrics::ExecutorMetrics>,
    interval: Duration,
    stop: CancellationToken,
) {
    let key = protocol::presence::key(&base.id);
    loop {
        let record = protocol::presence::seal(&stats.snapshot(&base), &identity);
        match kv.put(&key, record.into()).await {
            Ok(_) => {
                metrics.heartbeat_at(now_ms());
                tracing::trace!(key = %key, "presence refreshed")
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "could not refresh presence"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    match kv.delete(&key).await {
        Ok(()) => tracing::info!(key = %key, "presence removed"),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "could not remove presence; it will expire")
        }
    }
}
