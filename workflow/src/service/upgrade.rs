//! One upgrade's single-writer loop, and recovery of every unfinished upgrade
//! at start.
//!
//! The loop is the only writer of its stream. For every input it calls the
//! core's `decide`; a rejection is answered and nothing is written. Otherwise
//! it appends all the resulting events in one batch through the log's
//! committer, which answers after the flush that covers them (so a crash
//! after this point replays them), folds them into its state, publishes the
//! steps they schedule and mirrors them to `BATON_EVENTS` (both under
//! idempotent ids, so a re-publish after a crash is harmless), and only then
//! acks the result or answers the request that caused them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use store::{NewRecord, StreamId};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::metrics::{outcome_label, status_label, StepTimes};
use super::registry::{Handle, NodeIdentity};
use super::{now_ms, ServiceError, Shared, SERVICE_STREAM};
use crate::core::{self, Event, Input, Rejection, ScheduledStep, State};

/// How many commands may queue for one upgrade before senders wait (the results pump does not wait: it hands a
/// result back): `Config::loop_queue`'s default.
pub const LOOP_QUEUE: usize = 64;

/// How many queued commands a loop takes in a row, while its wake-up is due,
/// before it handles the timer first once ([`Loop::serve`]).
const TIMER_AFTER: usize = 16;

/// What a loop is asked to do.
pub enum Command {
    /// A step result pulled from `BATON_RESULTS`; acked once it is in the log.
    Result {
        result: Box<protocol::StepResult>,
        /// The pinned executor whose signature the result carries.
        signer: Box<protocol::sign::ExecutorPeer>,
        message: Box<jetstream::Message>,
    },
    /// An operator's input (submit, pause, resume, abort, approve, resolve).
    Input {
        input: Box<Input>,
        reply: oneshot::Sender<Result<(), Rejection>>,
    },
    /// A copy of the current state.
    Snapshot {
        reply: oneshot::Sender<(State, u64)>,
    },
}

struct Loop {
    shared: Arc<Shared>,
    upgrade: String,
    stream: StreamId,
    state: State,
    /// Seq of the last event of this upgrade in the log.
    head: u64,
    /// Seq of this upgrade's last signed checkpoint (0: none yet).
    checkpointed: u64,
    rx: mpsc::Receiver<Command>,
    /// When each outstanding step attempt was decided (the time of the input
    /// whose decision scheduled it): the start of its durations (`metrics`).
    decided: BTreeMap<(u64, u32), u64>,
    /// The status this upgrade is counted under in `baton_upgrades` (`None`:
    /// not in the log yet).
    counted: Option<&'static str>,
    /// What its `list` row needs beyond the state (`history::Summaries`).
    tracker: super::history::Tracker,
    /// No tick before this instant (a recovered upgrade whose step deadline passed while the service was down:
    /// see `PARKED_RESULT_GRACE`).
    ticks_from: Option<tokio::time::Instant>,
}

/// How long a recovered loop whose step deadline has already passed waits before its first tick. The step's
/// result may be parked: handed back while the upgrade was not claimed yet (redelivered after at most 4 s,
/// `RECOVERING_RETRY` doubled four times) or delivered before the kill and never acked (redelivered after the
/// results consumer's ack wait, 5 s). Re-publishing the step brings no new copy (the executor answers from its
/// ledger under the same message id, which the stream deduplicates), so a tick first would record the step as
/// `unknown` and the result, once it comes, would be dropped: a step re-observed, or run again, for nothing.
const PARKED_RESULT_GRACE: Duration = Duration::from_secs(10);

/// The executor's times of the result being applied (for the step durations).
#[derive(Debug, Clone, Copy)]
struct RanAt {
    step: u64,
    attempt: u32,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
}

/// Starts a loop for `upgrade` (new: empty state) and claims its cluster.
/// Fails with the id of the upgrade that holds the cluster.
pub(crate) async fn start_new(
    shared: &Arc<Shared>,
    upgrade: &str,
    cluster: &str,
) -> Result<Handle, String> {
    let (tx, rx) = mpsc::channel(shared.loop_queue);
    let handle = Handle {
        tx,
        cluster: cluster.to_string(),
    };
    shared.registry.claim(upgrade, handle.clone())?;
    let stream = stream_of(upgrade).expect("the service makes ULID upgrade ids");
    let worker = Loop {
        shared: shared.clone(),
        upgrade: upgrade.to_string(),
        stream,
        state: State::default(),
        head: 0,
        checkpointed: 0,
        rx,
        decided: BTreeMap::new(),
        counted: None,
        tracker: super::history::Tracker::default(),
        ticks_from: None,
    };
    shared.registry.track(worker.run()).await;
    Ok(handle)
}

/// The stream of an upgrade id.
pub(crate) fn stream_of(upgrade: &str) -> Option<StreamId> {
    upgrade.parse().ok()
}

/// Reads an upgrade's events from the log.
pub(crate) fn load_events(
    shared: &Shared,
    stream: StreamId,
) -> Result<Vec<(store::Record, Event)>, ServiceError> {
    let mut events = Vec::new();
    for record in shared.store.read(stream, 1)? {
        let record = record?;
        let event: Event = serde_json::from_slice(&record.bytes).map_err(|source| {
            ServiceError::UndecodableEvent {
                upgrade: stream.to_string(),
                seq: record.seq,
                source,
            }
        })?;
        events.push((record, event));
    }
    Ok(events)
}

/// How many upgrades do their NATS work of recovery at once (reading the
/// mirror, re-mirroring, re-publishing steps); the replays and claims stay
/// one at a time, in log order.
pub const RECOVER_AT_ONCE: usize = 32;

/// How recovery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovered {
    /// Every unfinished upgrade's loop runs again.
    All,
    /// The service's token was cancelled (SIGTERM, a lost lease, a loop that
    /// failed closed) before every upgrade was recovered: what was started
    /// is joined, the rest is left for the next start.
    Stopped,
}

/// Replays every upgrade in the log and restarts the unfinished ones: compares
/// their mirror with the log (pausing one it contradicts, `mirror.rs`),
/// re-mirrors their events NATS may have missed and re-publishes their steps
/// that have no recorded outcome (same ids; executors answer from their
/// ledger). A finished upgrade gets the tail its mirror lacks, if any.
/// `checkpointed`: each stream's last checkpoint (`checkpoint::reconcile`).
///
/// Streamed: the upgrades are replayed and claimed one after the other in
/// log order (the first of two unfinished upgrades of a cluster keeps it),
/// and each unfinished one that can act on its own (a step in flight,
/// failover blocked, a timer: [`starts_at_once`]) goes on to its NATS work
/// and its loop (a task of its own, up to [`RECOVER_AT_ONCE`] at a time) as
/// soon as it is replayed, while the next ones are replayed: the first step
/// goes out after one replay, not after every upgrade's (or a batch's). The
/// ones waiting only on an operator come next, then the finished upgrades'
/// mirror tails.
///
/// Stoppable: the service's token is looked at between two upgrades and
/// every wait (a free slot, a mirror read, a publish) gives up on it, so a
/// SIGTERM during recovery stops it within one NATS round trip rather than
/// after every upgrade ([`Recovered::Stopped`]). The first error cancels the
/// token (the loops already started stop, the other tasks give up). Either
/// way every task started is joined before this returns: nothing is left
/// running, and the caller stops the service in its usual order.
pub(crate) async fn recover_all(
    shared: &Arc<Shared>,
    checkpointed: &BTreeMap<StreamId, u64>,
) -> Result<Recovered, ServiceError> {
    let started = std::time::Instant::now();
    let mut resuming: JoinSet<Result<(), ServiceError>> = JoinSet::new();
    let mut outcome = recover_pass(shared, checkpointed, &mut resuming).await;
    if let Err(err) = &outcome {
        tracing::error!(error = %super::anyhow_chain(err), "recovery failed; stopping what it started");
        shared.shutdown.cancel();
    }
    while let Some(joined) = resuming.join_next().await {
        if let Err(err) = joined_ok(joined) {
            if outcome.is_ok() {
                tracing::error!(error = %super::anyhow_chain(&err), "recovery failed; stopping what it started");
                shared.shutdown.cancel();
                outcome = Err(err);
            } else {
                tracing::warn!(error = %super::anyhow_chain(&err), "another recovery task failed while recovery stopped");
            }
        }
    }
    let loops = outcome?;
    let elapsed_ms = super::elapsed_ms(started);
    if shared.shutdown.is_cancelled() {
        tracing::info!(
            loops,
            elapsed_ms,
            "recovery stopped because the service is stopping (a signal, the lease lost or a loop failed: the log says which); the next start resumes what it did not recover"
        );
        return Ok(Recovered::Stopped);
    }
    tracing::info!(loops, elapsed_ms, "every unfinished upgrade recovered");
    Ok(Recovered::All)
}

/// [`recover_all`]'s pass over the log: replays and claims, and starts the
/// tasks of `resuming`. Answers how many unfinished upgrades it claimed, or
/// the first error (its own, or of a task already joined); ends early, with
/// no error, once the service's token is cancelled.
async fn recover_pass(
    shared: &Arc<Shared>,
    checkpointed: &BTreeMap<StreamId, u64>,
    resuming: &mut JoinSet<Result<(), ServiceError>>,
) -> Result<u64, ServiceError> {
    let streams = shared.store.streams()?;
    tracing::info!(streams = streams.len(), "recovering the log's upgrades");
    let slots = Arc::new(tokio::sync::Semaphore::new(shared.recover_at_once.max(1)));
    let mut idle = Vec::new();
    let mut finished = Vec::new();
    let mut loops = 0u64;
    for (stream, head) in streams {
        if shared.shutdown.is_cancelled() {
            return Ok(loops);
        }
        while let Some(joined) = resuming.try_join_next() {
            joined_ok(joined)?;
        }
        match prepare(shared, stream, head, checkpointed)? {
            None => continue,
            Some(Prepared::Finished { stream, head }) => finished.push((stream, head)),
            Some(Prepared::Unfinished(recovery)) => {
                if !starts_at_once(&recovery.worker.state) {
                    if claim(shared, &recovery) {
                        loops += 1;
                        idle.push(recovery);
                    }
                    continue;
                }
                // The slot first, then the claim: while the pass waits for a slot, this upgrade's results are
                // handed back (a delayed nak; the pump goes on), not queued for a loop that does not run yet.
                // Claims stay in log order (the pass is one at a time).
                let Some(slot) = acquire(shared, &slots).await else {
                    return Ok(loops);
                };
                if claim(shared, &recovery) {
                    loops += 1;
                    spawn_resume(shared, slot, resuming, recovery);
                }
            }
        }
        // The resumes under way run between two replays, even on one thread.
        tokio::task::yield_now().await;
    }
    for recovery in idle {
        let Some(slot) = acquire(shared, &slots).await else {
            return Ok(loops);
        };
        spawn_resume(shared, slot, resuming, recovery);
    }
    for (stream, head) in finished {
        let Some(slot) = acquire(shared, &slots).await else {
            return Ok(loops);
        };
        let shared = shared.clone();
        resuming.spawn(async move {
            let _slot = slot;
            // A finished upgrade's mirror tail is for readers of the mirror (the log is the record): a NATS error
            // here is logged and left for the next start, not a reason to stop a service whose loops already run.
            let tail = tokio::select! {
                _ = shared.shutdown.cancelled() => return Ok(()),
                tail = remirror_tail(&shared, stream, head) => tail,
            };
            if let Err(error) = tail {
                tracing::warn!(?stream, %error, "could not complete a finished upgrade's mirror; the next start tries again");
            }
            Ok(())
        });
        while let Some(joined) = resuming.try_join_next() {
            joined_ok(joined)?;
        }
    }
    Ok(loops)
}

/// Whether a replayed unfinished upgrade is resumed as soon as it is claimed,
/// rather than after the pass over the whole log: when it has a step in
/// flight (its result may be waiting), when failover is blocked on its
/// cluster (while it waits, a lost leader must meet the emergency exit, and
/// the watch that looks for one runs only in its loop), or when anything is
/// timed (a retry, a poll, a deadline: it acts on its own at that time). What
/// is left waits only on an operator (a gate, a pause with failover on),
/// which cannot act before the API answers, after recovery: resuming it
/// later costs nothing and leaves the slots to those that act first.
fn starts_at_once(state: &State) -> bool {
    !state.outstanding_steps().is_empty()
        || state.failover_blocked()
        || state.next_wakeup_ms().is_some()
}

/// One of the [`RECOVER_AT_ONCE`] slots (the semaphore is never closed);
/// `None` once the service's token is cancelled.
async fn acquire(
    shared: &Shared,
    slots: &Arc<tokio::sync::Semaphore>,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    tokio::select! {
        _ = shared.shutdown.cancelled() => None,
        slot = slots.clone().acquire_owned() => Some(slot.expect("the recovery's semaphore is never closed")),
    }
}

/// Starts [`resume`] of one replayed and claimed upgrade as a task of
/// `resuming`, holding `slot` until it ends.
fn spawn_resume(
    shared: &Arc<Shared>,
    slot: tokio::sync::OwnedSemaphorePermit,
    resuming: &mut JoinSet<Result<(), ServiceError>>,
    recovery: Box<Recovery>,
) {
    let shared = shared.clone();
    resuming.spawn(async move {
        let _slot = slot;
        resume(&shared, *recovery).await
    });
}

/// A recovery task's end: its error, or a panic as an error.
fn joined_ok(
    joined: Result<Result<(), ServiceError>, tokio::task::JoinError>,
) -> Result<(), ServiceError> {
    joined.map_err(|join| ServiceError::Internal(format!("a recovery task failed: {join}")))?
}

/// An upgrade replayed at start.
enum Prepared {
    /// Finished: only its mirror's tail may need mirroring (to `head`).
    Finished {
        stream: StreamId,
        head: u64,
    },
    Unfinished(Box<Recovery>),
}

/// An unfinished upgrade replayed and claimed, its loop not started yet. Its
/// events are not kept (only re-read should the mirror lack some).
struct Recovery {
    worker: Loop,
    cluster: String,
    /// What the registry routes its commands through, once claimed ([`claim`]).
    handle: Handle,
    nodes: Vec<NodeIdentity>,
    head: u64,
    /// How long its replay took (reading, decoding, folding).
    replay_us: u64,
}

/// Replays one upgrade, counts it and keeps its summary; an unfinished one
/// is claimed next ([`claim`]). `None`: the service's own stream.
fn prepare(
    shared: &Arc<Shared>,
    stream: StreamId,
    head: store::Head,
    checkpointed: &BTreeMap<StreamId, u64>,
) -> Result<Option<Prepared>, ServiceError> {
    if stream == SERVICE_STREAM {
        return Ok(None);
    }
    let replaying = std::time::Instant::now();
    let events = load_events(shared, stream)?;
    let state = core::replay(events.iter().map(|(_, e)| e));
    let status = status_label(&state.status());
    shared.metrics.upgrade_entered(status);
    let mut tracker = super::history::Tracker::default();
    tracker.fold(events.iter().map(|(_, e)| e));
    shared
        .summaries
        .update(&stream.to_string(), &tracker, &state);
    let upgrade = stream.to_string();
    if state.is_terminal() {
        return Ok(Some(Prepared::Finished {
            stream,
            head: head.seq,
        }));
    }
    let cluster = state.cluster_name().unwrap_or_default().to_string();
    let (tx, rx) = mpsc::channel(shared.loop_queue);
    let handle = Handle {
        tx,
        cluster: cluster.clone(),
    };
    let nodes: Vec<NodeIdentity> = state
        .cluster()
        .map(|c| c.nodes.iter().map(NodeIdentity::from).collect())
        .unwrap_or_default();
    let worker = Loop {
        shared: shared.clone(),
        upgrade,
        stream,
        state,
        head: head.seq,
        checkpointed: checkpointed.get(&stream).copied().unwrap_or(0),
        rx,
        decided: decided_times(events.iter().map(|(_, e)| e)),
        counted: Some(status),
        tracker,
        ticks_from: None,
    };
    Ok(Some(Prepared::Unfinished(Box::new(Recovery {
        worker,
        cluster,
        handle,
        nodes,
        head: head.seq,
        replay_us: u64::try_from(replaying.elapsed().as_micros()).unwrap_or(u64::MAX),
    }))))
}

/// Claims a replayed unfinished upgrade's cluster and nodes, in log order
/// (the pass is one at a time); from then on the pump routes its results to
/// its loop's queue. `false`: an earlier upgrade holds its cluster (it is
/// not recovered).
fn claim(shared: &Shared, recovery: &Recovery) -> bool {
    let (upgrade, cluster) = (&recovery.worker.upgrade, &recovery.cluster);
    if let Err(holder) = shared.registry.claim(upgrade, recovery.handle.clone()) {
        tracing::error!(%upgrade, %cluster, %holder, "two unfinished upgrades of one cluster in the log; recovering only the first");
        return false;
    }
    // Hold its nodes too (the lock is on node identity); two unfinished
    // upgrades of the same nodes can only come from before that lock:
    // both are driven on, the second without holding the nodes.
    if let Err(held) = shared
        .registry
        .claim_nodes(upgrade, cluster, &recovery.nodes)
    {
        tracing::error!(%upgrade, %cluster, %held, "two unfinished upgrades of the same nodes in the log");
    }
    true
}

/// Checks a claimed upgrade's mirror, re-mirrors what it lacks, pauses it if
/// the mirror contradicts the log, re-publishes its outstanding steps and
/// starts its loop. The mirror is complete (up to the log's head) before the
/// loop may append anything. Once the service's token is cancelled it gives
/// up where it is (its loop not started: the next start does it all again).
async fn resume(shared: &Arc<Shared>, recovery: Recovery) -> Result<(), ServiceError> {
    let Recovery {
        mut worker,
        cluster,
        head,
        replay_us,
        ..
    } = recovery;
    let upgrade = worker.upgrade.clone();
    let checking = std::time::Instant::now();
    // The mirror must agree with the log before anything is acted on;
    // what it lacks is mirrored again.
    // A NATS error here (a consumer refused, a pull timed out: a server restarting, a stream leader elected) is
    // retried for a while rather than stopping the whole start; only one that lasts fails it.
    let read = retrying(
        &shared.shutdown,
        MIRROR_READ_RETRY,
        &upgrade,
        "reading its mirror",
        || super::mirror::of_upgrade(shared, &upgrade, super::mirror::start_limit(head)),
    )
    .await?;
    let Some(mirrored) = read else {
        return Ok(());
    };
    let unmirrored = mirrored.is_empty();
    let mirror_messages = mirrored.len();
    let mirror_read_us = u64::try_from(checking.elapsed().as_micros()).unwrap_or(u64::MAX);
    // Nothing appends to it meanwhile: its whole log is compared.
    let found = super::mirror::differences(
        mirrored,
        |s, q| super::checkpoint::hash_in(&shared.store, s, q),
        |_| true,
    );
    let missing: std::collections::BTreeSet<u64> = found
        .iter()
        .filter_map(|d| match d {
            super::mirror::Difference::NotMirrored { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    let mut remirrored = 0;
    if unmirrored || !missing.is_empty() {
        let events = load_events(shared, worker.stream)?;
        let wanted = |seq: u64| unmirrored || missing.contains(&seq);
        remirrored = events.iter().filter(|(r, _)| wanted(r.seq)).count();
        worker.remirror(&events, wanted).await?;
    }
    // A publish gives up on shutdown: the mirror may lack events yet, and nothing may act before it is whole.
    if shared.shutdown.is_cancelled() {
        return Ok(());
    }
    let contradictions: Vec<_> = found.iter().filter(|d| d.contradicts()).collect();
    if let Some(first) = contradictions.first() {
        tracing::error!(
            %upgrade,
            %cluster,
            differences = contradictions.len(),
            first = %first,
            "the BATON_EVENTS mirror disagrees with the log; pausing the upgrade"
        );
        let reason = format!(
            "the service found the BATON_EVENTS mirror disagreeing with the log at start \
             ({} difference(s); first: {first}): run `baton audit verify --mirror`, and \
             `baton resume {upgrade}` only once it is explained",
            contradictions.len()
        );
        let pause = Input::Pause {
            by: format!("{} (the service)", shared.trust.service.name),
            reason,
            now_ms: now_ms(),
        };
        if let Err(rejection) = worker.apply(pause).await? {
            tracing::error!(%upgrade, %rejection, "could not pause the upgrade whose mirror disagrees");
        }
    }
    let outstanding = worker.state.outstanding_steps();
    tracing::info!(
        %upgrade,
        %cluster,
        events = head,
        outstanding = outstanding.len(),
        replay_us,
        mirror_read_us,
        mirror_messages,
        remirrored,
        "recovered unfinished upgrade"
    );
    // Nothing is published or started once the service is stopping (a step published now would go out under a
    // service that no longer acts on its result).
    if shared.shutdown.is_cancelled() {
        return Ok(());
    }
    let now = now_ms();
    if outstanding.iter().any(|s| s.deadline_ms <= now) {
        tracing::info!(%upgrade, grace_ms = PARKED_RESULT_GRACE.as_millis() as u64, "a step's deadline passed while the service was down; waiting for a parked result before the first tick");
        worker.ticks_from = Some(tokio::time::Instant::now() + PARKED_RESULT_GRACE);
    }
    for step in &outstanding {
        worker
            .publish_step_within(step, Some(shared.recovery_patience))
            .await?;
    }
    shared.registry.track(worker.run()).await;
    Ok(())
}

/// How a failing call is tried again: first after `first`, each wait twice
/// the last up to `max`, no new try that would start after `total`, and, with
/// `bound_tries`, a try still running at `total` abandoned: `total` bounds the
/// whole time spent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub first: Duration,
    pub max: Duration,
    pub total: Duration,
    /// Whether each try is bounded by the time left of `total`; without it a
    /// try may take as long as it takes (a standby's wait for the lease is one
    /// try of any length).
    pub bound_tries: bool,
}

/// The mirror read at start: a NATS server restarting or a stream leader
/// elected takes seconds; 30 s of trying is past both, and short enough that
/// a NATS that does not answer is reported rather than waited on for ever.
pub(crate) const MIRROR_READ_RETRY: Retry = Retry {
    first: Duration::from_millis(100),
    max: Duration::from_secs(2),
    total: Duration::from_secs(30),
    bound_tries: true,
};

/// What [`retry`] gave up on, after `attempts` tries in `elapsed_ms`.
pub(crate) struct GaveUp<E> {
    /// The last try's error; `None` if the last try had not ended when
    /// `Retry::total` was spent (it was abandoned).
    pub error: Option<E>,
    pub attempts: u32,
    pub elapsed_ms: u64,
}

impl<E: Into<ServiceError>> GaveUp<E> {
    /// The last error as a [`ServiceError`]: the last try's own, or
    /// [`ServiceError::OutOfTime`] naming `what` if it was abandoned.
    pub(crate) fn last_error(self, what: &'static str, policy: Retry) -> ServiceError {
        match self.error {
            Some(error) => error.into(),
            None => ServiceError::OutOfTime {
                what,
                attempt: self.attempts,
                total_ms: u64::try_from(policy.total.as_millis()).unwrap_or(u64::MAX),
            },
        }
    }
}

/// Runs `attempt` until it succeeds, fails with an error `may_pass` does not
/// let pass, the next try would start after `retry.total`, or a try is still
/// running at `retry.total` ([`GaveUp`]; with `retry.bound_tries` each try is
/// bounded by the time left, so `retry.total` is the most time spent). Each retry is first told to
/// `on_retry` (the error, the attempt, the wait) to log. `Ok(None)` once
/// `stop` is cancelled (before a try, during one, or during a wait).
pub(crate) async fn retry<T, E, F, Fut>(
    stop: &tokio_util::sync::CancellationToken,
    retry: Retry,
    may_pass: impl Fn(&E) -> bool,
    on_retry: impl Fn(&E, u32, Duration),
    mut attempt: F,
) -> Result<Option<T>, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut wait = retry.first;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let elapsed_ms = |elapsed: Duration| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let time_left = if retry.bound_tries {
            retry.total.saturating_sub(started.elapsed())
        } else {
            Duration::MAX
        };
        let error = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            tried = tokio::time::timeout(time_left, attempt()) => match tried {
                Ok(Ok(value)) => return Ok(Some(value)),
                Ok(Err(error)) => error,
                Err(_) => {
                    return Err(GaveUp {
                        error: None,
                        attempts,
                        elapsed_ms: elapsed_ms(started.elapsed()),
                    })
                }
            },
        };
        let elapsed = started.elapsed();
        if !may_pass(&error) || elapsed + wait > retry.total {
            return Err(GaveUp {
                error: Some(error),
                attempts,
                elapsed_ms: elapsed_ms(elapsed),
            });
        }
        on_retry(&error, attempts, wait);
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(retry.max);
    }
}

/// [`retry`] for a step of an unfinished upgrade's recovery: every error may
/// pass, each retry logged (upgrade, what, attempt, wait, error chain); an
/// error that outlasts `retry.total` is [`ServiceError::Recovery`], naming
/// the upgrade, with the last error as its source.
pub(crate) async fn retrying<T, F, Fut>(
    stop: &tokio_util::sync::CancellationToken,
    policy: Retry,
    upgrade: &str,
    what: &'static str,
    attempt: F,
) -> Result<Option<T>, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ServiceError>>,
{
    let log = |error: &ServiceError, attempt: u32, wait: Duration| {
        tracing::warn!(
            %upgrade,
            what,
            attempt,
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %super::anyhow_chain(error),
            "recovery of an upgrade failed; trying again"
        )
    };
    retry(stop, policy, |_| true, log, attempt)
        .await
        .map_err(|gave_up| ServiceError::Recovery {
            upgrade: upgrade.to_string(),
            what,
            attempts: gave_up.attempts,
            elapsed_ms: gave_up.elapsed_ms,
            source: Box::new(gave_up.last_error(what, policy)),
        })
}

impl Loop {
    async fn run(mut self) -> Result<(), ServiceError> {
        let result = self.serve().await;
        self.shared.registry.release(&self.upgrade);
        if let Err(err) = &result {
            // Fail closed: the log is the truth; without it nobody may act.
            tracing::error!(upgrade = %self.upgrade, error = %super::anyhow_chain(err), "stopping the service");
            self.shared.shutdown.cancel();
        }
        result
    }

    async fn serve(&mut self) -> Result<(), ServiceError> {
        // After a refused tick (a clock past what the core accepts), the wake-up
        // stays in the past: wait a second between tries rather than spin.
        let mut retry_tick_at: Option<tokio::time::Instant> = self.ticks_from.take();
        // Commands taken in a row while the wake-up was due (see the select).
        let mut taken_while_due = 0usize;
        loop {
            let wake = self.state.next_wakeup_ms();
            let mut sleep = wake
                .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
                .unwrap_or(Duration::from_secs(3600));
            if let Some(at) = retry_tick_at {
                sleep = sleep.max(at.saturating_duration_since(tokio::time::Instant::now()));
            }
            let due = wake.is_some() && sleep.is_zero();
            if !due {
                taken_while_due = 0;
            }
            // Biased, in this order. Shutdown first: once cancelled, no more input is acted on. Then a queued
            // command before a timer that is due: a result already delivered is the evidence of what the step
            // did, and must be decided on before a tick that would find the step past its deadline (an
            // `unknown` to re-observe, a retry) or a poll that asks again what the result already says; an
            // operator's pause or abort likewise goes before the next timed action. The timer is not starved:
            // after TIMER_AFTER commands in a row with the wake-up due, it goes first once.
            let timer_first = due && taken_while_due >= TIMER_AFTER;
            tokio::select! {
                biased;
                _ = self.shared.shutdown.cancelled() => return Ok(()),
                command = self.rx.recv(), if !timer_first => match command {
                    None => return Ok(()),
                    Some(command) => {
                        if due {
                            taken_while_due += 1;
                        }
                        self.handle(command).await?
                    }
                },
                _ = tokio::time::sleep(sleep), if wake.is_some() => {
                    taken_while_due = 0;
                    let now = now_ms();
                    retry_tick_at = match self.apply(Input::Tick { now_ms: now }).await? {
                        Ok(_) => None,
                        Err(rejection) => {
                            tracing::error!(upgrade = %self.upgrade, now_ms = now, %rejection, "the core refused a tick (is this host's clock right?); trying again in 1 s");
                            Some(tokio::time::Instant::now() + Duration::from_secs(1))
                        }
                    };
                }
            }
            if self.state.is_terminal() {
                tracing::info!(upgrade = %self.upgrade, status = ?self.state.status(), "upgrade ended");
                return Ok(());
            }
        }
    }

    async fn handle(&mut self, command: Command) -> Result<(), ServiceError> {
        match command {
            Command::Result {
                result,
                signer,
                message,
            } => {
                // An executor answers only for the steps sent to its group.
                // (Whether or not its result is already in: a late forgery is refused as such.)
                let sent_to = self
                    .state
                    .step(result.step)
                    .map(|r| &r.scheduled)
                    .filter(|s| s.attempt == result.attempt)
                    .map(|s| (s.group.clone(), s.node.clone()));
                if let Some((group, node)) = &sent_to {
                    if *group != signer.group || *node != result.node {
                        tracing::warn!(
                            upgrade = %self.upgrade,
                            step = result.step,
                            attempt = result.attempt,
                            executor = %signer.name,
                            executor_group = %signer.group,
                            step_group = %group,
                            step_node = %node,
                            result_node = %result.node,
                            "refused a result from an executor that was not sent this step"
                        );
                        let _ = message.ack_with(jetstream::AckKind::Term).await;
                        return Ok(());
                    }
                }
                let mut input = input_of_result(&result, now_ms());
                if let Input::StepFinished { executor, .. } = &mut input {
                    // The log names the executor by its pinned key's name.
                    *executor = signer.name.clone();
                }
                let ran = RanAt {
                    step: result.step,
                    attempt: result.attempt,
                    started_ms: result.started_ms,
                    finished_ms: result.finished_ms,
                };
                match self.apply_ran(input, Some(ran)).await? {
                    Ok(_) => {}
                    Err(rejection @ Rejection::ClockOutOfRange { .. }) => {
                        // Not the result's fault: keep it for when the clock is right.
                        tracing::error!(
                            upgrade = %self.upgrade,
                            step = result.step,
                            attempt = result.attempt,
                            %rejection,
                            "the core refused a result for this host's clock; it is redelivered in 1 s"
                        );
                        if let Err(err) = message
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await
                        {
                            tracing::warn!(upgrade = %self.upgrade, error = %err, "nak of a result failed; it is redelivered after the ack wait");
                        }
                        return Ok(());
                    }
                    Err(rejection) => tracing::info!(
                        upgrade = %self.upgrade,
                        step = result.step,
                        attempt = result.attempt,
                        %rejection,
                        "result not taken"
                    ),
                }
                // Only now is the result in the log (or known to be stale).
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(upgrade = %self.upgrade, error = %err, "ack of a result failed; it will be redelivered and ignored");
                }
            }
            Command::Input { input, reply } => {
                let answer = self.apply(*input).await?;
                let _ = reply.send(answer.map(|_| ()));
            }
            Command::Snapshot { reply } => {
                let _ = reply.send((self.state.clone(), self.head));
            }
        }
        Ok(())
    }

    /// decide -> append + flush -> evolve -> publish steps -> mirror events.
    /// Answers the events appended (none for a duplicate or a no-op tick).
    async fn apply(&mut self, input: Input) -> Result<Result<Vec<Event>, Rejection>, ServiceError> {
        self.apply_ran(input, None).await
    }

    /// [`Loop::apply`] for a result whose executor times are `ran`.
    async fn apply_ran(
        &mut self,
        input: Input,
        ran: Option<RanAt>,
    ) -> Result<Result<Vec<Event>, Rejection>, ServiceError> {
        let events = match core::decide(&self.state, &input) {
            Ok(events) => events,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if events.is_empty() {
            return Ok(Ok(events));
        }
        let msg_id =
            match &input {
                Input::StepFinished { step, attempt, .. } => Some(
                    protocol::messages::result_msg_id(&self.upgrade, *step, *attempt),
                ),
                _ => None,
            };
        let records: Vec<NewRecord> = events
            .iter()
            .enumerate()
            .map(|(i, event)| {
                let bytes = serde_json::to_vec(event).expect("events always serialise");
                match (&msg_id, i) {
                    (Some(id), 0) => NewRecord::with_msg_id(id.clone(), bytes),
                    _ => NewRecord::new(bytes),
                }
            })
            .collect();
        let fail_closed = |err| match err {
            ServiceError::Store(source) => ServiceError::FailClosed {
                upgrade: self.upgrade.clone(),
                source,
            },
            other => other,
        };
        let outcome = {
            let _gate = self.shared.append_gate.read().await;
            // Answered once the flush that covers it is done (group commit
            // with every other loop's appends).
            self.shared
                .committer
                .append(self.stream, self.head, records)
                .await
                .map_err(fail_closed)?
        };
        let appended: Vec<_> = outcome.appended().cloned().collect();
        if appended.len() != events.len() {
            // The core dedupes results itself; a duplicate here means the log
            // and the state disagree. Stop rather than guess.
            return Err(ServiceError::Internal(format!(
                "upgrade {}: the log refused {} of {} events as duplicates",
                self.upgrade,
                events.len() - appended.len(),
                events.len()
            )));
        }
        for event in &events {
            self.state = core::evolve(std::mem::take(&mut self.state), event);
        }
        self.head += events.len() as u64;
        // Durable and folded in: `list` and `status` show it from now on.
        self.tracker.fold(&events);
        self.shared
            .summaries
            .update(&self.upgrade, &self.tracker, &self.state);
        self.measure(&events, input.now_ms(), ran);
        let last = appended.last().expect("events is not empty");
        if super::checkpoint::due(self.head, self.checkpointed, self.state.is_terminal()) {
            let head = store::Head {
                seq: last.seq,
                hash: last.hash,
            };
            super::checkpoint::record(&self.shared, self.stream, head).await?;
            self.checkpointed = head.seq;
        }
        for scheduled in events.iter().filter_map(Event::scheduled_step) {
            self.publish_step(&scheduled).await;
        }
        let batch: Vec<(u64, store::Hash, &Event)> = appended
            .iter()
            .zip(&events)
            .map(|(record, event)| (record.seq, record.hash, event))
            .collect();
        mirror_batch(&self.shared, &self.upgrade, &batch, None).await?;
        Ok(Ok(events))
    }

    /// Counts what `events` (just appended and folded in, decided at
    /// `decided_ms`) did: steps ended, their durations, the upgrade's status.
    fn measure(&mut self, events: &[Event], decided_ms: u64, ran: Option<RanAt>) {
        let metrics = &self.shared.metrics;
        for event in events {
            match event {
                Event::StepScheduled { step, attempt, .. } => {
                    self.decided.insert((*step, *attempt), decided_ms);
                }
                Event::StepResultRecorded {
                    step,
                    attempt,
                    outcome,
                    at_ms,
                    ..
                } => {
                    let decided = self.decided.remove(&(*step, *attempt));
                    let action = self.action_of(*step);
                    metrics.step_ended(action, outcome_label(*outcome));
                    let times = ran
                        .filter(|r| (r.step, r.attempt) == (*step, *attempt))
                        .and_then(|r| Some((decided?, r.started_ms?, r.finished_ms?)));
                    if let Some((decided_ms, started_ms, finished_ms)) = times {
                        metrics.step_timed(
                            action,
                            StepTimes {
                                decided_ms,
                                started_ms,
                                finished_ms,
                                received_ms: *at_ms,
                            },
                        );
                    }
                }
                Event::StepDeadlinePassed { step, attempt, .. } => {
                    self.decided.remove(&(*step, *attempt));
                    metrics.step_ended(self.action_of(*step), "deadline_passed");
                }
                _ => {}
            }
        }
        let status = status_label(&self.state.status());
        if self.counted != Some(status) {
            if let Some(old) = self.counted {
                metrics.upgrade_left(old);
            }
            metrics.upgrade_entered(status);
            self.counted = Some(status);
        }
    }

    /// The action of a scheduled step (its name in the log).
    fn action_of(&self, step: u64) -> &'static str {
        self.state
            .step(step)
            .map_or("unknown", |record| record.scheduled.action.as_str())
    }

    /// Publishes a step request and waits for JetStream's ack, retrying while
    /// NATS is away. Gives up only on shutdown: the step is in the log and the
    /// next start re-publishes it under the same id.
    async fn publish_step(&self, step: &ScheduledStep) {
        if let Err(err) = self.publish_step_within(step, None).await {
            // Not reached: without a patience only a shutdown ends the tries, and that is not an error.
            tracing::error!(upgrade = %self.upgrade, error = %super::anyhow_chain(&err), "step publish gave up");
        }
    }

    /// [`Worker::publish_step`], giving up once its tries have failed for `patience` (recovery's re-published
    /// steps).
    async fn publish_step_within(
        &self,
        step: &ScheduledStep,
        patience: Option<Duration>,
    ) -> Result<(), ServiceError> {
        let profile_sha256 = self.state.profile_sha256().map(str::to_string);
        let request = protocol::StepRequest {
            // An executor too old to check the hash refuses version 2 rather than run the step unchecked.
            v: if profile_sha256.is_some() {
                protocol::PROFILE_FILE_PROTOCOL_VERSION
            } else {
                protocol::PROTOCOL_VERSION
            },
            upgrade: self.upgrade.clone(),
            step: step.step,
            attempt: step.attempt,
            epoch: self.shared.epoch,
            node: step.node.clone(),
            group: step.group.clone(),
            action: step.action.as_str().to_string(),
            argv: step.argv.clone(),
            env: step.env.clone(),
            timeout_ms: step.timeout_ms,
            deadline_ms: step.deadline_ms,
            // From the plan (the submitted text's hash, computed by the core, covered by the plan hash), never
            // from a field of the submission: executors refuse a step planned with another profile than theirs.
            profile_sha256,
        };
        let what = format!("step {} attempt {}", step.step, step.attempt);
        let (headers, payload) = request.signed(&self.shared.identity);
        super::publish_patiently(
            &self.shared,
            &self.upgrade,
            request.subject(),
            headers,
            payload,
            &what,
            patience,
        )
        .await?;
        if self.shared.shutdown.is_cancelled() {
            return Ok(());
        }
        tracing::info!(
            upgrade = %self.upgrade,
            step = step.step,
            attempt = step.attempt,
            node = %step.node,
            action = step.action.as_str(),
            profile_sha256 = request.profile_sha256.as_deref().unwrap_or("built-in"),
            "step published"
        );
        Ok(())
    }

    /// After a restart: mirrors the events that `BATON_EVENTS` does not have, each publish tried for at most
    /// `Config::recovery_patience`.
    async fn remirror(
        &self,
        events: &[(store::Record, Event)],
        missing: impl Fn(u64) -> bool,
    ) -> Result<(), ServiceError> {
        let patience = Some(self.shared.recovery_patience);
        remirror_where(&self.shared, &self.upgrade, events, missing, patience).await
    }
}

/// Mirrors a batch of events of `upgrade` to `BATON_EVENTS`, pipelined: every
/// publish is sent first, then the acks are awaited, so a batch costs one
/// round trip to JetStream rather than one per event. An event whose publish or
/// ack failed is sent again by the retrying path (its message id dedupes a copy
/// that did land). The mirror is keyed by seq (`mirror.rs`), so a retried event
/// that lands after a later one is still where a reader looks for it.
///
/// The retries give up after `patience` (recovery's), else only on shutdown.
async fn mirror_batch(
    shared: &Shared,
    upgrade: &str,
    batch: &[(u64, store::Hash, &Event)],
    patience: Option<Duration>,
) -> Result<(), ServiceError> {
    let messages: Vec<(u64, async_nats::HeaderMap, Vec<u8>)> = batch
        .iter()
        .map(|(seq, hash, event)| {
            let (headers, payload) = mirror_message(shared, upgrade, *seq, hash, event);
            (*seq, headers, payload)
        })
        .collect();
    let subject = protocol::subjects::event(upgrade);
    let mut acks = Vec::with_capacity(messages.len());
    for (_, headers, payload) in &messages {
        let sent = shared
            .js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone().into())
            .await;
        acks.push(sent.ok());
    }
    for ((seq, headers, payload), ack) in messages.into_iter().zip(acks) {
        let acked = match ack {
            Some(ack) => ack.await.is_ok(),
            None => false,
        };
        if !acked {
            // Given up on shutdown (the next start mirrors what is missing): not one more try per event.
            if shared.shutdown.is_cancelled() {
                return Ok(());
            }
            super::publish_patiently(
                shared,
                upgrade,
                subject.clone(),
                headers,
                payload,
                &format!("event {seq}"),
                patience,
            )
            .await?;
        }
    }
    Ok(())
}

/// One event's mirror message: its headers (the message id) and body.
fn mirror_message(
    shared: &Shared,
    upgrade: &str,
    seq: u64,
    hash: &store::Hash,
    event: &Event,
) -> (async_nats::HeaderMap, Vec<u8>) {
    let body = serde_json::json!({
        "upgrade": upgrade,
        "seq": seq,
        "hash": hex::encode(hash),
        "event": event,
    });
    // The epoch keeps a re-mirroring after a restart from being dropped as a
    // duplicate of a message since purged (JetStream remembers ids for its
    // duplicate window, purge or not); retries within one epoch still
    // deduplicate.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        protocol::messages::MSG_ID_HEADER,
        format!("{upgrade}:event:{seq}:{}", shared.epoch).as_str(),
    );
    (headers, body.to_string().into_bytes())
}

/// Mirrors the events of `upgrade` whose seq is `missing`, pipelined in
/// batches of at most [`REMIRROR_BATCH`] (bounded in flight).
async fn remirror_where(
    shared: &Shared,
    upgrade: &str,
    events: &[(store::Record, Event)],
    missing: impl Fn(u64) -> bool,
    patience: Option<Duration>,
) -> Result<(), ServiceError> {
    let wanted: Vec<(u64, store::Hash, &Event)> = events
        .iter()
        .filter(|(r, _)| missing(r.seq))
        .map(|(r, e)| (r.seq, r.hash, e))
        .collect();
    for chunk in wanted.chunks(REMIRROR_BATCH) {
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        mirror_batch(shared, upgrade, chunk, patience).await?;
    }
    Ok(())
}

/// The most mirror publishes a re-mirroring has in flight at once.
const REMIRROR_BATCH: usize = 256;

/// A finished upgrade whose last events were appended but not mirrored (the
/// service stopped in between): mirrors that tail. One by-subject read per
/// finished upgrade; its events are read from the log only when a tail is
/// missing.
async fn remirror_tail(shared: &Shared, stream: StreamId, head: u64) -> Result<(), ServiceError> {
    if head == 0 {
        return Ok(());
    }
    let upgrade = &stream.to_string();
    let last = match shared
        .events
        .get_last_raw_message_by_subject(&protocol::subjects::event(upgrade))
        .await
    {
        Ok(message) => serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v["seq"].as_u64())
            .unwrap_or(0),
        Err(err) if err.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => 0,
        Err(err) => return Err(ServiceError::Nats(format!("reading BATON_EVENTS: {err}"))),
    };
    if last < head {
        tracing::info!(%upgrade, mirrored = last, head, "mirroring a finished upgrade's last events");
        let events = load_events(shared, stream)?;
        remirror_where(
            shared,
            upgrade,
            &events,
            |seq| seq > last,
            Some(shared.recovery_patience),
        )
        .await?;
    }
    Ok(())
}

/// When each step attempt without a recorded end was decided: the time of the
/// last timed event before its `StepScheduled` (the recorded input of the
/// decision that scheduled it), as [`Loop::measure`] notes it live.
fn decided_times<'e>(events: impl Iterator<Item = &'e Event>) -> BTreeMap<(u64, u32), u64> {
    let mut decided = BTreeMap::new();
    let mut last_ms = 0;
    for event in events {
        match event {
            Event::StepScheduled { step, attempt, .. } => {
                decided.insert((*step, *attempt), last_ms);
            }
            Event::StepResultRecorded { step, attempt, .. }
            | Event::StepDeadlinePassed { step, attempt, .. } => {
                decided.remove(&(*step, *attempt));
            }
            _ => {}
        }
        last_ms = event.at_ms().unwrap_or(last_ms);
    }
    decided
}

/// The core's input for an executor's result.
fn input_of_result(result: &protocol::StepResult, now_ms: u64) -> Input {
    use protocol::Outcome as Wire;
    let outcome = match result.outcome {
        Wire::Succeeded => core::Outcome::Succeeded,
        Wire::Failed => core::Outcome::Failed,
        Wire::TimedOut => core::Outcome::TimedOut,
        Wire::Unknown => core::Outcome::Unknown,
        Wire::Rejected => core::Outcome::Rejected,
    };
    Input::StepFinished {
        step: result.step,
        attempt: result.attempt,
        outcome,
        exit_code: result.exit_code,
        stdout: result.stdout_tail.clone(),
        stderr: result.stderr_tail.clone(),
        reason: result.reason.clone(),
        executor: result.executor.clone(),
        now_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{retrying, Retry, ServiceError};

    const QUICK: Retry = Retry {
        first: Duration::from_millis(1),
        max: Duration::from_millis(4),
        total: Duration::from_millis(200),
        bound_tries: true,
    };

    fn refused() -> ServiceError {
        ServiceError::Nats("reading BATON_EVENTS: maximum consumers limit reached".into())
    }

    /// [`retrying`] under [`QUICK`], never cancelled, as upgrade u1's mirror read.
    async fn quickly<T, F, Fut>(attempt: F) -> Result<Option<T>, ServiceError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ServiceError>>,
    {
        let stop = CancellationToken::new();
        retrying(&stop, QUICK, "u1", "reading its mirror", attempt).await
    }

    #[tokio::test]
    async fn a_transient_error_is_tried_again_until_it_passes() {
        let tries = AtomicU32::new(0);
        let got = quickly(|| async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(refused()),
                _ => Ok(7),
            }
        })
        .await
        .unwrap();
        assert_eq!(got, Some(7));
        assert_eq!(tries.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_error_that_lasts_fails_naming_the_upgrade_and_its_cause_within_the_total() {
        let started = std::time::Instant::now();
        let tries = AtomicU32::new(0);
        let err = quickly(|| async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(refused())
        })
        .await
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let ServiceError::Recovery { attempts, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(*attempts, tries.load(Ordering::SeqCst));
        // 1 + 2 + 4 + 4 + ... ms of waits within 200 ms: many tries, not one.
        assert!(*attempts > 5, "{attempts}");
        let chain = crate::service::anyhow_chain(&err);
        assert!(
            chain.starts_with("upgrade u1: reading its mirror failed"),
            "{chain}"
        );
        assert!(
            chain.ends_with("maximum consumers limit reached"),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn a_try_that_never_ends_is_abandoned_when_the_total_is_spent_and_the_error_says_so() {
        let started = std::time::Instant::now();
        let tries = AtomicU32::new(0);
        let retried = quickly(|| async {
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                return Err(refused());
            }
            std::future::pending::<Result<(), ServiceError>>().await
        });
        let err = tokio::time::timeout(Duration::from_secs(10), retried)
            .await
            .expect("a try that never ends does not stretch the total (200 ms) past 10 s")
            .unwrap_err();
        let took = started.elapsed();
        assert!(took >= QUICK.total, "{took:?}");
        // The total, plus scheduling on a loaded machine.
        assert!(took < QUICK.total + Duration::from_secs(3), "{took:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 2);
        let ServiceError::Recovery {
            attempts, source, ..
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*attempts, 2);
        assert!(
            matches!(
                **source,
                ServiceError::OutOfTime {
                    what: "reading its mirror",
                    attempt: 2,
                    total_ms: 200
                }
            ),
            "{source:?}"
        );
        let chain = crate::service::anyhow_chain(&err);
        assert!(
            chain.ends_with(
                "reading its mirror: try 2 had not ended when the 200 ms allowed for all tries were spent; it was abandoned"
            ),
            "{chain}"
        );
    }

    #[tokio::test]
    async fn without_bound_tries_a_try_longer_than_the_total_is_waited_for() {
        let unbounded = Retry {
            bound_tries: false,
            ..QUICK
        };
        let stop = CancellationToken::new();
        let got = retrying(&stop, unbounded, "u1", "waiting as a standby", || async {
            // The simulated try itself (a standby's wait for the lease), not a wait of the test's.
            tokio::time::sleep(QUICK.total * 2).await;
            Ok::<_, ServiceError>(7)
        })
        .await
        .unwrap();
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn a_cancelled_token_ends_the_retries_at_once() {
        let stop = CancellationToken::new();
        let slow = Retry {
            first: Duration::from_secs(3600),
            ..QUICK
        };
        let slow = Retry {
            total: Duration::from_secs(7200),
            ..slow
        };
        let tries = AtomicU32::new(0);
        let retried = retrying(&stop, slow, "u1", "reading its mirror", || async {
            if tries.fetch_add(1, Ordering::SeqCst) == 0 {
                stop.cancel();
            }
            Err::<(), _>(refused())
        });
        let got = tokio::time::timeout(Duration::from_secs(10), retried)
            .await
            .expect("a cancelled retry does not wait out its hour");
        assert!(matches!(got, Ok(None)), "{got:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 1);
    }
}
