//! The log's one writer: every append and every flush of the service's log
//! goes through the [`Committer`], which applies them in order on one
//! dedicated OS thread and flushes once per batch (group commit).
//!
//! **Invariant: one writer, one flush at a time.** No other code path of the
//! service appends to the log or flushes it (`workflow/tests/committer.rs`
//! checks the service's source for it). Readers (recovery, the API's reads,
//! `verify` under the append gate) use the `Store` directly.
//!
//! **Why.** sled 0.34 deadlocks when `flush_async` runs concurrently with
//! other flushes and transactions (upstream issue 1308, open on the 0.34
//! line; fixed only on sled's unreleased main branch). A flush holds sled's
//! global concurrency-control lock shared while it waits for the I/O
//! buffers to reach the disk; a transaction (every `Store::append` is one)
//! waits for that lock exclusively, and a waiting writer blocks new shared
//! holders, among them the other flushes sled's own I/O threads are running.
//! The service used to run `append` then `flush_async` in every upgrade loop
//! at once: from about 20 concurrent upgrades it hung for good, leaving
//! clusters with failover off. Here a transaction and a flush never overlap:
//! the same thread does both, one after the other, and the flush is sled's
//! blocking `flush` on that thread (not `flush_async`, whose work runs on
//! sled's thread pool).
//!
//! **A thread, not a task.** sled's API blocks (a transaction, an fsync): on
//! a runtime worker it would stall every task scheduled there, and
//! `spawn_blocking` per batch would hand the write path to an arbitrary pool
//! thread each time. A dedicated thread owns the write path outright, sleeps
//! in `blocking_recv` when idle and never touches the async runtime beyond
//! the channels.
//!
//! **Group commit.** Callers hand their batch (stream, expected head,
//! records) through a bounded channel with a oneshot for the answer. The
//! thread takes the first request, drains whatever else is queued (at most
//! [`MAX_BATCH`]), applies the appends in arrival order in one sled
//! transaction (`Store::append_many`: its fixed cost is paid once per batch),
//! flushes once, and only then answers every caller of the batch: an answer
//! means the records are durable. An append refused on its own (a conflict,
//! corruption) is answered at once with its error (nothing of it was
//! written); the others of the batch are unaffected.
//!
//! **Failure.** A sled error (an append's or a flush's) fails closed: every
//! caller of that batch not yet answered, and every later caller, gets the
//! error; nothing more is written. The service turns it into
//! `ServiceError::FailClosed` and stops.
//!
//! **Shutdown.** [`Committer::close`] queues a stop behind everything already
//! queued: the thread applies those, flushes, answers, and ends; requests
//! arriving after it are refused. Dropping the handle without `close` does
//! the same (the thread sees the channel closed) and joins the thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use store::{AppendOutcome, NewRecord, Store, StoreError, StreamId};
use tokio::sync::{mpsc, oneshot};

use super::metrics::LogMetrics;
use super::ServiceError;

/// How many requests may queue before callers wait.
pub const QUEUE: usize = 1024;

/// At most this many requests are covered by one flush (bounds the latency of
/// the first caller of a batch).
pub const MAX_BATCH: usize = 512;

/// What the thread is asked to do.
enum Request {
    Append {
        stream: StreamId,
        expected_seq: u64,
        records: Vec<NewRecord>,
        reply: Reply,
    },
    /// Apply what is queued before this, flush, answer, end.
    Stop {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// Counters, for tests and benchmarks (how much group commit grouped).
#[derive(Debug, Default)]
struct Counters {
    appends: AtomicU64,
    flushes: AtomicU64,
}

/// What the committer has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Appends applied (refused ones not counted).
    pub appends: u64,
    /// Flushes made (one per batch that applied at least one append, and the last one at stop).
    pub flushes: u64,
}

/// The handle on the log's one writer. Not `Clone`: the service shares it
/// through its `Arc`.
#[derive(Debug)]
pub struct Committer {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Request>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    counters: std::sync::Arc<Counters>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Append {
                stream,
                expected_seq,
                records,
                ..
            } => f
                .debug_struct("Append")
                .field("stream", stream)
                .field("expected_seq", expected_seq)
                .field("records", &records.len())
                .finish(),
            Request::Stop { .. } => f.write_str("Stop"),
        }
    }
}

impl Committer {
    /// Starts the writer thread on `store`. From now on nothing else may
    /// append to `store` or flush it.
    pub fn start(store: Store) -> Result<Committer, ServiceError> {
        Committer::start_measured(store, LogMetrics::default())
    }

    /// [`Committer::start`], counting appends, records and flush times into
    /// `metrics` (the service's, `docs/metrics.md`); `metrics.records` is
    /// counted up from the value it holds.
    pub fn start_measured(store: Store, metrics: LogMetrics) -> Result<Committer, ServiceError> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = std::sync::Arc::new(Counters::default());
        let thread = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name("baton-committer".into())
                .spawn(move || {
                    run(
                        store,
                        rx,
                        &Meters {
                            counters: &counters,
                            metrics: &metrics,
                        },
                    )
                })
                .map_err(|err| {
                    ServiceError::Internal(format!("cannot start the log's committer: {err}"))
                })?
        };
        Ok(Committer {
            tx: Some(tx),
            thread: Mutex::new(Some(thread)),
            counters,
        })
    }

    /// Appends `records` to `stream` if its head is at `expected_seq` (see
    /// `Store::append` for duplicates and conflicts), and answers once a
    /// flush covers them: the records are durable when this returns `Ok`.
    pub async fn append(
        &self,
        stream: StreamId,
        expected_seq: u64,
        records: Vec<NewRecord>,
    ) -> Result<AppendOutcome, ServiceError> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Append {
            stream,
            expected_seq,
            records,
            reply,
        })
        .await?;
        Ok(answer.await.map_err(|_| stopped())??)
    }

    /// Applies everything queued so far, flushes, and stops the thread; later
    /// appends are refused. Returns the last flush's result. Calling it again
    /// answers at once.
    pub async fn close(&self) -> Result<(), ServiceError> {
        let (reply, answer) = oneshot::channel();
        if self.send(Request::Stop { reply }).await.is_err() {
            return Ok(()); // already stopped
        }
        let last = answer.await.map_err(|_| stopped())?;
        let thread = self.thread.lock().expect("not poisoned").take();
        if let Some(thread) = thread {
            // It has answered the stop: it is returning.
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .map_err(|err| ServiceError::Internal(format!("joining the committer: {err}")))?
                .map_err(|_| ServiceError::Internal("the log's committer panicked".into()))?;
        }
        Ok(last?)
    }

    /// Appends and flushes made so far.
    pub fn stats(&self) -> Stats {
        Stats {
            appends: self.counters.appends.load(Ordering::Relaxed),
            flushes: self.counters.flushes.load(Ordering::Relaxed),
        }
    }

    async fn send(&self, request: Request) -> Result<(), ServiceError> {
        let tx = self.tx.as_ref().ok_or_else(stopped)?;
        tx.send(request).await.map_err(|_| stopped())
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // Closing the channel makes the thread apply what is queued, flush
        // and end; wait for it so that the log is flushed when this returns.
        drop(self.tx.take());
        let thread = self.thread.get_mut().map(Option::take).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn stopped() -> ServiceError {
    ServiceError::Internal("the log's committer has stopped; nothing more is written".into())
}

/// The answer channel of one append.
type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// An append taken from the queue, not applied yet.
type Pending = (StreamId, u64, Vec<NewRecord>, Reply);

/// A caller whose records are applied and wait for the batch's flush.
type Waiter = (Reply, AppendOutcome);

/// What the thread counts: its own counters (for `stats`) and the service's metrics.
struct Meters<'a> {
    counters: &'a Counters,
    metrics: &'a LogMetrics,
}

/// The thread: batch, apply in order, flush once, answer; until stopped.
fn run(store: Store, mut rx: mpsc::Receiver<Request>, meters: &Meters<'_>) {
    // Set by the first sled error: from then on every caller gets it.
    let mut broken: Option<StoreError> = None;
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut waiting: Vec<Waiter> = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = rx.blocking_recv() else {
            // Every handle is gone: nothing is queued; make what was applied
            // durable and end.
            if broken.is_none() {
                if let Err(err) = flush(&store, meters) {
                    tracing::error!(error = %err, "the log's last flush failed");
                }
            }
            return;
        };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let mut stop = None;
        let mut appends = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            if stop.is_some() {
                // Behind a stop: refused (its caller sees the channel closed).
                continue;
            }
            match request {
                Request::Append {
                    stream,
                    expected_seq,
                    records,
                    reply,
                } => match &broken {
                    Some(err) => {
                        let _ = reply.send(Err(err.clone()));
                    }
                    None => appends.push((stream, expected_seq, records, reply)),
                },
                Request::Stop { reply } => stop = Some(reply),
            }
        }
        if !appends.is_empty() {
            apply(&store, appends, &mut waiting, &mut broken, meters);
        }
        // One flush covers every append of the batch.
        let flushed = match &broken {
            Some(err) => Err(err.clone()),
            None if !waiting.is_empty() || stop.is_some() => flush(&store, meters),
            None => Ok(()),
        };
        if let Err(err) = &flushed {
            if broken.is_none() {
                tracing::error!(error = %err, "flushing the log failed; failing closed");
                broken = Some(err.clone());
            }
        }
        for (reply, outcome) in waiting.drain(..) {
            let _ = reply.send(flushed.clone().map(|()| outcome));
        }
        if let Some(reply) = stop {
            let _ = reply.send(flushed);
            return;
        }
    }
}

/// Applies a batch's appends in order, in one atomic store batch: an append refused
/// on its own is answered at once; the others wait in `waiting` for the flush.
fn apply(
    store: &Store,
    appends: Vec<Pending>,
    waiting: &mut Vec<Waiter>,
    broken: &mut Option<StoreError>,
    meters: &Meters<'_>,
) {
    let items: Vec<(StreamId, u64, &[NewRecord])> = appends
        .iter()
        .map(|(stream, expected, records, _)| (*stream, *expected, records.as_slice()))
        .collect();
    let results = store.append_many(&items);
    drop(items);
    match results {
        Ok(results) => {
            for ((stream, _, _, reply), result) in appends.into_iter().zip(results) {
                match result {
                    Ok(outcome) => {
                        meters.counters.appends.fetch_add(1, Ordering::Relaxed);
                        let records = outcome.appended().count() as u64;
                        meters.metrics.appends.inc();
                        meters.metrics.records_appended.inc_by(records);
                        meters
                            .metrics
                            .records
                            .inc_by(i64::try_from(records).unwrap_or(i64::MAX));
                        waiting.push((reply, outcome));
                    }
                    // Refused on its own (a conflict, a torn tail): nothing
                    // of it was written.
                    Err(refused) => {
                        tracing::warn!(%stream, error = %refused, "an append was refused");
                        let _ = reply.send(Err(refused));
                    }
                }
            }
        }
        Err(err) => {
            tracing::error!(error = %err, "appending to the log failed; failing closed");
            for (_, _, _, reply) in appends {
                let _ = reply.send(Err(err.clone()));
            }
            *broken = Some(err);
        }
    }
}

/// Flushes, timing it; then samples the log's size on disk (a `stat`, off the
/// answer's path only by that much).
fn flush(store: &Store, meters: &Meters<'_>) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    store.flush()?;
    meters
        .metrics
        .flush
        .observe(started.elapsed().as_secs_f64());
    meters.counters.flushes.fetch_add(1, Ordering::Relaxed);
    match store.size_on_disk() {
        Ok(bytes) => {
            meters
                .metrics
                .bytes
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        Err(err) => tracing::debug!(error = %err, "could not read the log's size on disk"),
    }
    Ok(())
}
