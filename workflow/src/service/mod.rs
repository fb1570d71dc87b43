//! The workflow service: owns the log, drives every upgrade.
//!
//! Shape (after tokio's mini-redis): [`run`] takes its configuration and a
//! shutdown token, and owns three kinds of tasks, all joined before it returns:
//! - one single-writer loop per active upgrade ([`upgrade`]): it turns inputs
//!   (API requests, step results, timers) into `decide` calls, appends the
//!   resulting events durably, then publishes the steps they schedule, mirrors
//!   the events to `BATON_EVENTS`, and only then acks or answers the input;
//! - the results pump: pulls `BATON_RESULTS` and routes each result to its
//!   upgrade's loop (which acks it once it is in the log);
//! - the API server on `baton.api.*` ([`handlers`]);
//! - and, on a thread of its own, the log's one writer ([`committer`]): every
//!   append and flush of the log goes through it, so that no two ever overlap
//!   (sled 0.34 deadlocks otherwise) and concurrent loops share one flush.
//!
//! On start the service bumps and logs its epoch (a stream of its own), replays
//! every upgrade in the log, restarts the loops of unfinished ones, re-arms
//! their timers from the recorded times and re-publishes their steps that have
//! no recorded outcome, under the same ids. Recovery is streamed
//! (`upgrade::recover_all`): each upgrade is resumed as soon as it is replayed
//! and its mirror checked, and results are pulled from the start, each taken
//! by its upgrade's loop once that one runs.

pub mod api;
mod api_guard;
pub mod checkpoint;
pub mod committer;
mod handlers;
mod history;
pub mod lease;
pub mod metrics;
pub mod mirror;
mod presence;
mod registry;
mod upgrade;
pub mod view;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use store::{NewRecord, Store, StreamId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use registry::Registry;

/// The stream that records the service's own starts (its epochs).
pub const SERVICE_STREAM: StreamId = StreamId([0; 16]);

/// Everything the service needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory of the sled log.
    pub db: PathBuf,
    /// NATS connection settings (URL, authentication, TLS).
    pub nats: protocol::connect::NatsConfig,
    /// The service's signing key: it signs every step request and API reply.
    pub identity: protocol::sign::Identity,
    /// The pinned keys: executors (whose results and presence are accepted,
    /// for their group only) and operators (whose API requests are accepted,
    /// within their role).
    pub trust: Arc<protocol::sign::Trust>,
    /// How far an API request's signed time may be from ours (replay window).
    pub api_skew: Duration,
    /// The lease that makes this the only service on this NATS account.
    pub lease: lease::LeaseOptions,
    /// JetStream tunables (tests shorten them) and the replica count of
    /// every stream and bucket (the lease's too).
    pub protocol: protocol::Options,
    /// Where the service counts what it does and says whether it is ready;
    /// the caller registers it in its own registry to serve it
    /// (`docs/metrics.md`).
    pub metrics: Arc<metrics::ServiceMetrics>,
    /// How many unfinished upgrades recovery resumes at once (their mirror
    /// reads, re-mirroring and re-published steps): [`RECOVER_AT_ONCE`] by
    /// default; at least 1.
    pub recover_at_once: usize,
    /// How long recovery keeps trying one publish that fails (a re-mirrored event, a re-published step) before
    /// the start fails: [`RECOVERY_PATIENCE`] by default. Once recovered, a loop's publishes are tried until
    /// shutdown.
    pub recovery_patience: Duration,
    /// A hidden setting, for tests: how many commands may queue for one upgrade's loop ([`LOOP_QUEUE`] by
    /// default; at least 1). A small queue makes the results pump hand results back (`pump_results`).
    pub loop_queue: usize,
}

pub use upgrade::{LOOP_QUEUE, RECOVER_AT_ONCE};

/// [`Config::recovery_patience`]'s default: far past a NATS restart or a stream leader's election, short enough
/// that a publish that cannot succeed (a `BATON_EVENTS` full with `discard: new`, a permission missing) fails the
/// start and is reported, rather than the service holding the lease without serving.
pub const RECOVERY_PATIENCE: Duration = Duration::from_secs(120);

/// What can stop the service. Rejections of requests are not errors: they are
/// answered on the API.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the log failed")]
    Store(#[from] store::StoreError),
    #[error("setting up JetStream")]
    Protocol(#[from] protocol::ProtocolError),
    #[error("the log does not verify, refusing to start: {0}")]
    Unverified(String),
    #[error("a signed checkpoint does not hold, refusing to start: {0}")]
    BadCheckpoint(String),
    #[error("NATS: {0}")]
    Nats(String),
    #[error("the service lease")]
    Lease(#[from] lease::LeaseError),
    #[error("the service's key is not the trust file's service key ({key}); refusing to start: executors and operators would refuse everything it signs")]
    NotTrusted { key: String },
    /// A bug or a broken invariant (a task panicked, the log and the state
    /// disagree): the service stops rather than guess.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("the log holds an event that does not decode: upgrade {upgrade}, seq {seq}")]
    UndecodableEvent {
        upgrade: String,
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    /// A NATS error that outlasted its retries while an unfinished upgrade
    /// was recovered (`upgrade::retrying`).
    #[error("upgrade {upgrade}: {what} failed {attempts} times in {elapsed_ms} ms; the service does not start without it")]
    Recovery {
        upgrade: String,
        what: &'static str,
        attempts: u32,
        elapsed_ms: u64,
        #[source]
        source: Box<ServiceError>,
    },
    /// A try of a retried call (`upgrade::retry`) had not ended when the time allowed for all tries was spent; it
    /// was abandoned.
    #[error("{what}: try {attempt} had not ended when the {total_ms} ms allowed for all tries were spent; it was abandoned")]
    OutOfTime {
        what: &'static str,
        attempt: u32,
        total_ms: u64,
    },
    /// The NATS server refused a JetStream call at start for want of a permission (`JetStreamRefused`).
    #[error("the NATS server refused the service a JetStream call ({refusal}): give the service's NATS user the service's permissions (`baton keys nats-config` writes them; README, \"nats-server\")")]
    JetStreamRefused {
        refusal: String,
        #[source]
        source: Box<ServiceError>,
    },
    /// The NATS server refused the service a publish at start for want of a permission, not to the JetStream API
    /// (the lease key, an event mirrored again, a step published again, a checkpoint; `JetStreamRefused`).
    #[error("the NATS server refused the service a publish to {subject} ({refusal}): allow the service's NATS user to publish to {subject} (`baton keys nats-config` writes the service's permissions; README, \"nats-server\")")]
    PublishRefused {
        subject: String,
        refusal: String,
        #[source]
        source: Box<ServiceError>,
    },
    /// A publish of recovery's (`Config::recovery_patience`) that kept failing.
    #[error("upgrade {upgrade}: publishing {what} to JetStream failed {attempts} times in {elapsed_ms} ms while the service recovered it; the service does not start without it (the next start publishes it again)")]
    PublishGaveUp {
        upgrade: String,
        what: String,
        attempts: u32,
        elapsed_ms: u64,
        #[source]
        source: async_nats::Error,
    },
    #[error("upgrade {upgrade}: the log could not be written; the service stopped acting on it")]
    FailClosed {
        upgrade: String,
        #[source]
        source: store::StoreError,
    },
}

/// What the service's tasks share (behind an `Arc`).
pub(crate) struct Shared {
    /// For reads only: every append and flush goes through `committer`.
    pub store: Store,
    /// The log's one writer (appends in order, one flush per batch).
    pub committer: committer::Committer,
    pub js: jetstream::Context,
    /// `BATON_EVENTS`, the mirror (looked up once, at start).
    pub events: jetstream::stream::Stream,
    pub nats: async_nats::Client,
    pub presence: jetstream::kv::Store,
    /// The live presence records, kept from a watch of `presence` (`presence.rs`).
    pub presence_view: Arc<presence::PresenceView>,
    pub epoch: u64,
    pub identity: protocol::sign::Identity,
    pub trust: Arc<protocol::sign::Trust>,
    /// Signatures of API requests seen within the replay window.
    pub seen_requests: std::sync::Mutex<api_guard::Seen>,
    /// When this service started (unix ms): API requests signed earlier are refused.
    pub started_ms: u64,
    pub api_skew: Duration,
    pub registry: Registry,
    /// True until every unfinished upgrade of the log is claimed again at
    /// start: a result for an upgrade the registry lacks meanwhile may be
    /// for one not replayed yet, and is handed back rather than dropped.
    pub recovering: std::sync::atomic::AtomicBool,
    /// Every upgrade's `list` row and `status` view, kept as events are appended.
    pub summaries: history::Summaries,
    pub shutdown: CancellationToken,
    /// Appends hold it shared (from before they are handed to the committer
    /// until it answers); `verify` holds it exclusively, because the store's
    /// verify needs a log nobody appends to (it has no snapshot).
    pub append_gate: tokio::sync::RwLock<()>,
    /// Held by whoever appends to the service stream (upgrade loops
    /// checkpoint concurrently).
    pub service_log: tokio::sync::Mutex<()>,
    pub metrics: Arc<metrics::ServiceMetrics>,
    /// `Config::recover_at_once`.
    pub recover_at_once: usize,
    /// `Config::recovery_patience`.
    pub recovery_patience: Duration,
    /// `Config::loop_queue`.
    pub loop_queue: usize,
    /// The first publish the NATS server refused the service (recovery's publishes give up at once on one).
    pub refused: JetStreamRefused,
}

/// Runs the workflow service until `shutdown` is cancelled or a fatal error.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ServiceError> {
    if !config.trust.is_service(&config.identity.public_key()) {
        return Err(ServiceError::NotTrusted {
            key: config.identity.public_key(),
        });
    }
    let store = Store::open(&config.db)?;
    // Refuse to act on a log that does not verify: decisions made from a
    // damaged history could be wrong (`baton audit verify --db` shows why).
    let report = store.verify().map_err(|err| match err {
        store::StoreError::Corruption { .. } => ServiceError::Unverified(anyhow_chain(&err)),
        other => ServiceError::Store(other),
    })?;
    if !report.is_clean() {
        return Err(ServiceError::Unverified(format!("{report:?}")));
    }
    // The chains verify alone; a rewrite re-sealed without the key shows as
    // a checkpoint the chain no longer passes through.
    let anchored = checkpoint::verify_log(&store, SERVICE_STREAM, Some(&config.trust.service.key))
        .map_err(|bad| ServiceError::BadCheckpoint(bad.to_string()))?;
    tracing::info!(checkpoints = anchored.checked, "the log's checkpoints hold");
    let metrics = config.metrics.clone();
    metrics.set_log_verified();
    let epoch = next_epoch(&store)?;
    let records: u64 = store.streams()?.iter().map(|(_, head)| head.seq).sum();
    metrics
        .log
        .records
        .set(i64::try_from(records).unwrap_or(i64::MAX));
    if let Ok(bytes) = store.size_on_disk() {
        metrics
            .log
            .bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
    // From here on, only the committer writes the log (it flushes and stops
    // when dropped, on every early return below).
    let committer = committer::Committer::start_measured(store.clone(), metrics.log.clone())?;
    let started_ms = now_ms();

    let nats_config = config.nats.with_own_inbox(&config.identity.public_key());
    let refused = JetStreamRefused::default();
    let Some(nats) = connect(&nats_config, &metrics, &refused, &shutdown).await? else {
        return Ok(());
    };
    let js = jetstream::new(nats.clone());
    // One service per NATS account: hold the lease before anything is
    // published, and stop acting the moment it is lost. The epoch is written
    // into the lease, so only the lease holder ever publishes under an epoch.
    let me = lease::Holder::this_process(config.identity.public_key(), &config.db, epoch);
    // The lease bucket is placed like the streams: one setting for all.
    let lease_options = lease::LeaseOptions {
        replicas: config.protocol.replicas,
        ..config.lease.clone()
    };
    // A server or account without JetStream is refused at once (`JETSTREAM_LASTING`); a cluster whose JetStream is
    // still forming is waited for (`JETSTREAM_FORMING`).
    let may_pass = |err: &protocol::ProtocolError| setup_may_pass(err, &js) && !refused.seen();
    let checked = while_jetstream_forms(
        &shutdown,
        JETSTREAM_FORMING,
        "check the server",
        may_pass,
        || protocol::setup::check_server(&js),
    )
    .await
    .map_err(|err| refused.or(err))?;
    if checked.is_none() {
        return Ok(());
    }
    let lease_passes = |err: &lease::LeaseError| lease_may_pass(err) && !refused.seen();
    // A standby's wait for the holder to go is one try of any length: not cut short at the 2 minutes.
    let lease_forming = upgrade::Retry {
        bound_tries: !lease_options.standby,
        ..JETSTREAM_FORMING
    };
    let acquired = while_jetstream_forms(
        &shutdown,
        lease_forming,
        "take the service lease",
        lease_passes,
        || lease::Lease::acquire(&js, me.clone(), lease_options.clone(), &shutdown),
    )
    .await
    .map_err(|err| refused.or(err))?;
    let Some(lease) = acquired.flatten() else {
        return Ok(());
    };
    metrics.set_lease_held(true);
    let lease_revision = lease.revision();
    let release = CancellationToken::new();
    // A lease that ends before it is released (lost, or its task failed) cancels the service's token itself: every
    // loop stops acting at once, even while the watch below is busy (a long synchronous stretch of recovery).
    let mut lease_task = tokio::spawn({
        let release = release.clone();
        let shutdown = shutdown.clone();
        let renewal = lease.run(release.clone());
        async move {
            let ended = renewal.await;
            if !release.is_cancelled() {
                shutdown.cancel();
            }
            ended
        }
    });
    let mut lease_done = false;
    if let Err(err) = record_start(&store, &committer, epoch, lease_revision).await {
        return Err(released(&metrics, release, lease_task, err).await);
    }
    metrics.set_epoch(epoch);
    tracing::info!(epoch, lease_revision, db = %config.db.display(), "workflow service starting");

    let set_up = std::time::Instant::now();
    let ensured = while_jetstream_forms(
        &shutdown,
        JETSTREAM_FORMING,
        "create or check the streams and buckets",
        may_pass,
        || protocol::ensure(&js, &config.protocol),
    )
    .await;
    let handles = match ensured {
        Ok(Some(handles)) => handles,
        // Shut down (a signal, or the lease lost) while waiting: the orderly stop releases the lease.
        Ok(None) => return stopped_before_serving(&metrics, release, lease_task).await,
        Err(err) => {
            let err = refused.or(err);
            return Err(released(&metrics, release, lease_task, err).await);
        }
    };
    tracing::info!(
        elapsed_ms = elapsed_ms(set_up),
        "JetStream streams and buckets ready"
    );

    let shared = Arc::new(Shared {
        store,
        committer,
        js,
        events: handles.events.clone(),
        nats: nats.clone(),
        presence: handles.presence.clone(),
        presence_view: Arc::new(presence::PresenceView::default()),
        epoch,
        identity: config.identity.clone(),
        trust: config.trust.clone(),
        seen_requests: std::sync::Mutex::new(api_guard::Seen::default()),
        started_ms,
        api_skew: config.api_skew,
        registry: Registry::default(),
        recovering: std::sync::atomic::AtomicBool::new(true),
        summaries: history::Summaries::default(),
        shutdown: shutdown.clone(),
        append_gate: tokio::sync::RwLock::new(()),
        service_log: tokio::sync::Mutex::new(()),
        metrics: metrics.clone(),
        recover_at_once: config.recover_at_once,
        recovery_patience: config.recovery_patience,
        loop_queue: config.loop_queue.max(1),
        refused: refused.clone(),
    });
    // Refuse to act on a log that BATON_CHECKPOINTS contradicts.
    let reconciling = std::time::Instant::now();
    let checkpointed = match checkpoint::reconcile(&shared, &handles.checkpoints).await {
        Ok(checkpointed) => checkpointed,
        Err(err) => return Err(released(&metrics, release, lease_task, err).await),
    };
    tracing::info!(
        elapsed_ms = elapsed_ms(reconciling),
        "checkpoints reconciled"
    );

    let mut tasks: JoinSet<Result<(), ServiceError>> = JoinSet::new();
    // Results are pulled from the start of recovery: each upgrade's loop
    // takes them once it is recovered (its mirror complete, its steps
    // re-published), while later upgrades are still being recovered; one
    // for an upgrade not claimed yet is handed back for later.
    {
        let shared = shared.clone();
        let consumer = handles.workflow_consumer.clone();
        tasks.spawn(async move { pump_results(shared, consumer).await });
    }
    // Recovery runs inside the watch below, beside the lease and the pump: a
    // SIGTERM, a lost lease or a failed task stops it (it looks at the token
    // between upgrades and in its waits), and whatever ends it, the service
    // stops by the one orderly path after the loop.
    let recovery = upgrade::recover_all(&shared, &checkpointed);
    let mut recovery = std::pin::pin!(recovery);
    let mut recovering = true;
    let mut result = Ok(());
    loop {
        tokio::select! {
            // Biased, the lease first: its task cancels the token when the lease is lost, and the loss, not the
            // token, must be what this loop reports.
            biased;
            ended = &mut lease_task => {
                lease_done = true;
                metrics.set_lease_held(false);
                let err = match ended {
                    Ok(Err(lost)) => ServiceError::Lease(lost),
                    Ok(Ok(())) => ServiceError::Internal("the lease task ended".into()),
                    Err(join) => ServiceError::Internal(format!("the lease task failed: {join}")),
                };
                tracing::error!(error = %anyhow_chain(&err), "lost the service lease: stopping at once (fail closed)");
                result = Err(err);
                break;
            }
            recovered = &mut recovery, if recovering => {
                recovering = false;
                match recovered {
                    Ok(upgrade::Recovered::All) => {
                        if let Err(err) = serve(&shared, &nats, &handles, &config, &mut tasks).await {
                            tracing::error!(error = %anyhow_chain(&err), "could not start serving, stopping");
                            result = Err(err);
                            break;
                        }
                    }
                    // Only a cancelled token stops a recovery without an error; it said why.
                    Ok(upgrade::Recovered::Stopped) => break,
                    // `recover_all` logged it, and cancelled the token.
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
            _ = shutdown.cancelled(), if !recovering => break,
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(()))) => continue,
                Some(Ok(Err(err))) => {
                    tracing::error!(error = %format!("{:#}", anyhow_chain(&err)), "fatal error, stopping");
                    result = Err(err);
                    break;
                }
                Some(Err(join)) => {
                    tracing::error!(error = %join, "a service task panicked, stopping");
                    result = Err(ServiceError::Internal(format!("task failed: {join}")));
                    break;
                }
                None => break,
            }
        }
    }
    metrics.set_serving(false);
    shutdown.cancel();
    if recovering {
        // Stopped by a lost lease or a failed task: recovery sees the token,
        // joins what it started and ends.
        match recovery.await {
            Ok(_) => {}
            Err(err) if result.is_ok() => result = Err(err),
            Err(err) => {
                tracing::warn!(error = %anyhow_chain(&err), "recovery failed while the service stopped")
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if let Err(err) = shared.registry.join_all().await {
        if result.is_ok() {
            result = Err(err);
        }
    }
    // Everything the loops appended is durable already (each was answered
    // after its flush); this applies anything still queued, flushes and ends
    // the writer.
    if let Err(err) = shared.committer.close().await {
        tracing::warn!(error = %anyhow_chain(&err), "closing the log");
    }
    // Only now, with nothing acting under it, is the lease released.
    release.cancel();
    if !lease_done {
        match lease_task.await {
            // `run` ends with an error only when the lease was lost (a release reports its own trouble): lost
            // while the loop above was ending for another reason.
            Ok(Err(lost)) if result.is_ok() => {
                tracing::error!(error = %anyhow_chain(&lost), "lost the service lease: stopping at once (fail closed)");
                result = Err(ServiceError::Lease(lost));
            }
            Ok(Err(err)) => tracing::warn!(error = %anyhow_chain(&err), "the lease was lost too"),
            Err(join) => tracing::warn!(error = %join, "the lease task failed"),
            Ok(Ok(())) => {}
        }
    }
    metrics.set_lease_held(false);
    tracing::info!(epoch, "workflow service stopped");
    result
}

/// An error before recovery (setting JetStream up, reconciling the
/// checkpoints), when nothing acts yet but the lease's renewal: the lease is
/// released and its task joined, as at any other stop, before `err` is
/// reported (the log's writer flushes and ends when dropped).
async fn released(
    metrics: &metrics::ServiceMetrics,
    release: CancellationToken,
    lease_task: tokio::task::JoinHandle<Result<(), lease::LeaseError>>,
    err: ServiceError,
) -> ServiceError {
    tracing::error!(error = %anyhow_chain(&err), "could not start; releasing the lease");
    release.cancel();
    match lease_task.await {
        Ok(Err(lease)) => tracing::warn!(error = %anyhow_chain(&lease), "releasing the lease"),
        Err(join) => tracing::warn!(error = %join, "the lease task failed"),
        Ok(Ok(())) => {}
    }
    metrics.set_lease_held(false);
    err
}

/// Shut down while the service was still setting up (a signal, or the lease lost, while JetStream was not usable):
/// release the lease. A lost lease makes the error: the lease's task ends with one only when the lease was lost,
/// before or while it was released (its task cancels the service's token itself).
async fn stopped_before_serving(
    metrics: &metrics::ServiceMetrics,
    release: CancellationToken,
    lease_task: tokio::task::JoinHandle<Result<(), lease::LeaseError>>,
) -> Result<(), ServiceError> {
    release.cancel();
    let ended = lease_task.await;
    metrics.set_lease_held(false);
    match ended {
        Ok(Err(lost)) => Err(lost.into()),
        Err(join) => Err(ServiceError::Internal(format!(
            "the lease task failed: {join}"
        ))),
        Ok(Ok(())) => Ok(()),
    }
}

/// Once every unfinished upgrade is recovered: results for unknown upgrades
/// are strays from now on, the API is subscribed (nothing was answered
/// before recovery) and served, presence is watched, and the service is ready.
async fn serve(
    shared: &Arc<Shared>,
    nats: &async_nats::Client,
    handles: &protocol::setup::Handles,
    config: &Config,
    tasks: &mut JoinSet<Result<(), ServiceError>>,
) -> Result<(), ServiceError> {
    shared
        .recovering
        .store(false, std::sync::atomic::Ordering::Release);
    let api = nats
        .queue_subscribe(
            protocol::subjects::API_WILDCARD,
            "baton-workflow".to_string(),
        )
        .await
        .map_err(|err| ServiceError::Nats(format!("subscribing to the API: {err}")))?;
    {
        let shared = shared.clone();
        tasks.spawn(async move { handlers::serve(shared, api).await });
    }
    {
        let (bucket, view, trust) = (
            handles.presence.clone(),
            shared.presence_view.clone(),
            shared.trust.clone(),
        );
        let (ttl, stop) = (config.protocol.presence_ttl, shared.shutdown.clone());
        tasks.spawn(async move {
            presence::watch(bucket, view, ttl, trust, stop, handlers::presence_refused).await;
            Ok(())
        });
    }
    shared.metrics.set_serving(true);
    tracing::info!(epoch = shared.epoch, "workflow service ready");
    Ok(())
}

/// How long JetStream calls at start are tried again while they fail in a way that passes: a NATS cluster that is
/// still forming has no meta leader yet, or does not know every peer yet ("no suitable peers for placement, peer
/// offline" when a replicated bucket is created), for seconds after its servers answer clients. The service is often
/// started beside its NATS (docker-compose, a reboot); two minutes is far past a cluster's forming and short enough
/// that a NATS whose JetStream stays unusable is reported, not waited on for ever.
const JETSTREAM_FORMING: upgrade::Retry = upgrade::Retry {
    first: Duration::from_millis(200),
    max: Duration::from_secs(5),
    total: Duration::from_secs(120),
    bound_tries: true,
};

/// JetStream's answers that waiting does not change (nats-server's error codes): JetStream not enabled for the
/// account (10039) or at all (10076), replicas on a server that is not clustered (10074), a stream name in use
/// with another configuration (10058), subjects overlapping another stream's (10065), an invalid stream
/// configuration (10052), the account's stream or storage limits reached (10027, 10047). A failed call that says
/// none of these (a timeout, no responders, "JetStream system temporarily unavailable" 10008, "no suitable peers
/// for placement" 10005) may pass while a cluster forms. A permission the service's user lacks shows only as a
/// timeout here; the server's refusal itself is caught on the connection (`JetStreamRefused`).
const JETSTREAM_LASTING: &[u16] = &[10039, 10076, 10074, 10058, 10065, 10052, 10027, 10047];

/// Whether an error's chain carries one of [`JETSTREAM_LASTING`]'s codes (async-nats renders them as "error code
/// N" in its messages, whatever the call's error type).
fn jetstream_lasting(err: &(dyn std::error::Error + 'static)) -> bool {
    let chain = anyhow_chain(err);
    JETSTREAM_LASTING
        .iter()
        .any(|code| chain.contains(&format!("error code {code}")))
}

/// A lease error that may pass by itself: a failed NATS call (not a bucket with other options, not another holder,
/// not a lasting JetStream answer).
fn lease_may_pass(err: &lease::LeaseError) -> bool {
    matches!(err, lease::LeaseError::Nats { .. }) && !jetstream_lasting(err)
}

/// A set-up error that may pass by itself: a failed JetStream call, or JetStream not answering yet on a server that
/// has it (not a server started without `-js`, a lasting JetStream answer, an incompatible stream, a server too
/// old, a bad name).
fn setup_may_pass(err: &protocol::ProtocolError, js: &jetstream::Context) -> bool {
    let may_pass = match err {
        protocol::ProtocolError::Setup { .. } => true,
        protocol::ProtocolError::JetStreamUnavailable { .. } => js.client().server_info().jetstream,
        _ => false,
    };
    may_pass && !jetstream_lasting(err)
}

/// [`upgrade::retry`] under `policy` ([`JETSTREAM_FORMING`]) for a JetStream call at start: each retry logged with
/// what failed and why; the last error once it does not pass (`may_pass`) or the time is spent
/// ([`ServiceError::OutOfTime`] if the last try was still running then). `Ok(None)` once `shutdown` is cancelled.
async fn while_jetstream_forms<T, E, F, Fut>(
    shutdown: &CancellationToken,
    policy: upgrade::Retry,
    what: &'static str,
    may_pass: impl Fn(&E) -> bool,
    attempt: F,
) -> Result<Option<T>, ServiceError>
where
    E: std::error::Error + Into<ServiceError> + 'static,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let log = |error: &E, attempt: u32, wait: Duration| {
        tracing::warn!(
            what,
            attempt,
            retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            error = %anyhow_chain(error),
            "JetStream is not usable yet (a NATS cluster still forming?); trying again"
        )
    };
    upgrade::retry(shutdown, policy, may_pass, log, attempt)
        .await
        .map_err(|gave_up| {
            if gave_up.attempts > 1 {
                tracing::error!(
                    what,
                    attempts = gave_up.attempts,
                    elapsed_ms = gave_up.elapsed_ms,
                    "JetStream did not become usable; giving up"
                );
            }
            gave_up.last_error(what, policy)
        })
}

/// The first publish the NATS server refused the service for want of a permission (its `-ERR 'Permissions
/// Violation for Publish to "SUBJECT"'`, seen by the connection's event callback): a JetStream API call
/// (`$JS.API....`), or a publish to a stream or bucket (the lease key, an event, a step, a checkpoint). Such a
/// publish only times out on the caller's side, which the wait for a forming cluster (`while_jetstream_forms`) and
/// recovery's patient publishes (`publish_patiently`) would take for a passing failure; once a refusal is seen, the
/// start fails at once, naming it.
#[derive(Clone, Default)]
pub(crate) struct JetStreamRefused(Arc<std::sync::Mutex<Option<String>>>);

/// The start of the server's refusal of a publish; the subject follows, quoted.
const PUBLISH_REFUSED: &str = "Permissions Violation for Publish to ";

impl JetStreamRefused {
    /// Keeps `error` if it is the first refusal of a publish; whether it is one.
    fn note(&self, error: &str) -> bool {
        let refusal = error.contains(PUBLISH_REFUSED);
        if refusal {
            let mut first = self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            first.get_or_insert_with(|| error.to_string());
        }
        refusal
    }

    fn seen(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }

    /// `err`, or, once a refusal was seen, [`ServiceError::JetStreamRefused`] (a JetStream API call) or
    /// [`ServiceError::PublishRefused`] (another subject) naming it (the call's own error, a timeout, says nothing
    /// of the cause).
    fn or(&self, err: ServiceError) -> ServiceError {
        let first = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(refusal) = first else {
            return err;
        };
        let subject = refused_subject(&refusal);
        if subject.starts_with("$JS.API") {
            ServiceError::JetStreamRefused {
                refusal,
                source: Box::new(err),
            }
        } else {
            ServiceError::PublishRefused {
                subject,
                refusal,
                source: Box::new(err),
            }
        }
    }
}

/// The subject of a refused publish (the server's refusal quotes it), or the refusal itself if it does not.
fn refused_subject(refusal: &str) -> String {
    refusal
        .split_once(PUBLISH_REFUSED)
        .and_then(|(_, quoted)| quoted.strip_prefix('"'))
        .and_then(|rest| rest.split_once('"'))
        .map_or_else(|| refusal.to_string(), |(subject, _)| subject.to_string())
}

/// Connects to NATS, retrying until it answers (the service may start before
/// the broker). `None` if shutdown came first; an error if the settings are
/// unusable (a missing file, a malformed URL).
async fn connect(
    config: &protocol::connect::NatsConfig,
    metrics: &Arc<metrics::ServiceMetrics>,
    refused: &JetStreamRefused,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::Client>, ServiceError> {
    let url = config.redacted_url();
    let mut backoff = Duration::from_millis(100);
    loop {
        let (options, addrs) = config.options("baton-workflow").await?;
        // The connection's state, for `baton_nats_connected` and readiness.
        let watched = metrics.clone();
        let refusals = refused.clone();
        let options = options.event_callback(move |event| {
            let metrics = watched.clone();
            let refused = refusals.clone();
            async move {
                match event {
                    async_nats::Event::ServerError(async_nats::ServerError::Other(error))
                        if refused.note(&error) =>
                    {
                        tracing::error!(%error, "the NATS server refused a publish: the service's NATS user lacks a permission")
                    }
                    async_nats::Event::Connected => {
                        metrics.set_nats_connected(true);
                        tracing::info!("connected to NATS");
                    }
                    async_nats::Event::Disconnected => {
                        metrics.set_nats_connected(false);
                        tracing::warn!("disconnected from NATS; reconnecting");
                    }
                    other => tracing::info!(event = %other, "NATS connection event"),
                }
            }
        });
        match options.connect(addrs).await {
            Ok(client) => {
                metrics.set_nats_connected(
                    client.connection_state() == async_nats::connection::State::Connected,
                );
                return Ok(Some(client));
            }
            Err(err) => {
                tracing::warn!(%url, error = %err, "cannot reach NATS yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Publishes to JetStream and waits for the stream's ack, retrying while NATS is away (backoff to 5 s). What is
/// published is already in the log, and the next start publishes it again under the same id, so it gives up on
/// shutdown (`Ok`), and with a `patience` (the start's publishes: `Config::recovery_patience`) with
/// [`ServiceError::PublishGaveUp`] once no try would start within `patience` of the first.
pub(crate) async fn publish_patiently(
    shared: &Shared,
    upgrade: &str,
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Vec<u8>,
    what: &str,
    patience: Option<Duration>,
) -> Result<(), ServiceError> {
    let started = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        // Not one more try once the service stops (a lost lease: another service may act under a newer epoch).
        // What is not published is published again at the next start (steps re-published, the mirror completed).
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        let attempt = async {
            shared
                .js
                .publish_with_headers(subject.clone(), headers.clone(), payload.clone().into())
                .await?
                .await
                .map(|_| ())
        };
        attempts += 1;
        let attempted = tokio::select! {
            biased;
            _ = shared.shutdown.cancelled() => return Ok(()),
            attempted = attempt => attempted,
        };
        let err = match attempted {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        let elapsed = started.elapsed();
        // At start, a publish the server refused the service's user does not pass by waiting: fail at once.
        let refused = patience.is_some() && shared.refused.seen();
        if refused || patience.is_some_and(|patience| elapsed + backoff > patience) {
            return Err(shared.refused.or(ServiceError::PublishGaveUp {
                upgrade: upgrade.to_string(),
                what: what.to_string(),
                attempts,
                elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                source: err.into(),
            }));
        }
        tracing::warn!(%upgrade, what, attempt = attempts, error = %err, "publish failed; retrying");
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Formats an error with its sources, for logs.
pub(crate) fn anyhow_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The epoch of this start (1, 2, ...): one more than the starts in the log
/// (the service stream also holds checkpoints, so its head is not a count).
fn next_epoch(store: &Store) -> Result<u64, ServiceError> {
    let mut starts = 0;
    for record in store.read(SERVICE_STREAM, 1)? {
        let record = record?;
        let value: serde_json::Value = serde_json::from_slice(&record.bytes).unwrap_or_default();
        if value.get("type").and_then(|t| t.as_str()) == Some("ServiceStarted") {
            starts += 1;
        }
    }
    Ok(starts + 1)
}

/// Records this start, with the lease it holds, in the service stream.
async fn record_start(
    store: &Store,
    committer: &committer::Committer,
    epoch: u64,
    lease_revision: u64,
) -> Result<(), ServiceError> {
    let head = store.head(SERVICE_STREAM)?.map_or(0, |h| h.seq);
    let record = serde_json::json!({
        "type": "ServiceStarted",
        "epoch": epoch,
        "lease_revision": lease_revision,
        "at_ms": now_ms(),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    committer
        .append(
            SERVICE_STREAM,
            head,
            vec![NewRecord::new(record.to_string())],
        )
        .await?;
    Ok(())
}

/// How long a result for an upgrade not recovered yet waits before it is
/// delivered again the first time (doubling with each delivery, up to 16 times this).
const RECOVERING_RETRY: Duration = Duration::from_millis(250);

/// How long a result first waits before it comes round again when its upgrade's loop queue is full.
const BUSY_RETRY: Duration = Duration::from_millis(500);

/// A handed-back result's delay: `base`, doubling with each delivery up to 16 times `base` (a large fleet's results
/// must not come round several times a second each while recovery runs or a loop is stuck).
fn handback_delay(base: Duration, delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 4)).unwrap_or(4);
    base * 2u32.pow(doublings)
}

/// Pulls results and routes each to its upgrade's loop; the loop acks it once
/// it is in the log. Results for unknown or finished upgrades are acked and
/// counted (they can only be duplicates or strays).
async fn pump_results(
    shared: Arc<Shared>,
    consumer: jetstream::consumer::PullConsumer,
) -> Result<(), ServiceError> {
    let mut stray: u64 = 0;
    let mut malformed: u64 = 0;
    let mut unsigned: u64 = 0;
    let mut busy: u64 = 0;
    loop {
        let mut messages = match consumer.messages().await {
            Ok(messages) => messages,
            Err(err) => {
                tracing::warn!(error = %err, "cannot pull results; retrying");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        loop {
            let next = tokio::select! {
                _ = shared.shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "error pulling results; re-subscribing");
                    break;
                }
                None => break,
            };
            // Only a result signed by a pinned executor is read at all; which
            // group it may answer for is checked by the upgrade's loop.
            let signer = match protocol::sign::verify_headers(
                message.headers.as_ref(),
                protocol::sign::Kind::Result,
                message.subject.as_str(),
                &message.payload,
            )
            .map_err(|e| e.reason)
            .and_then(|verified| {
                shared
                    .trust
                    .executor(&verified.key)
                    .cloned()
                    .ok_or_else(|| {
                        format!(
                            "signed by key {}, which is not an executor of the trust file",
                            verified.key
                        )
                    })
            }) {
                Ok(signer) => signer,
                Err(reason) => {
                    unsigned += 1;
                    tracing::warn!(subject = %message.subject, %reason, unsigned, "refused a step result that no pinned executor signed");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                    continue;
                }
            };
            let result = match protocol::decode_result(&message.payload) {
                Ok(result) => result,
                Err(err) => {
                    malformed += 1;
                    tracing::warn!(error = %err, malformed, "rejected a malformed step result");
                    let _ = message.ack_with(jetstream::AckKind::Term).await;
                    continue;
                }
            };
            // Read before the registry: once it is false, every upgrade
            // recovery will run is in the registry already.
            let recovering = shared.recovering.load(std::sync::atomic::Ordering::Acquire);
            match shared.registry.get(&result.upgrade) {
                None if recovering => {
                    // The delay doubles with each delivery (250 ms up to 4 s): a large fleet's results must not come
                    // round four times a second each for as long as recovery runs.
                    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                    let delay = handback_delay(RECOVERING_RETRY, delivered);
                    tracing::debug!(upgrade = %result.upgrade, delivered, delay_ms = delay.as_millis() as u64, "result for an upgrade not recovered yet; handed back");
                    let _ = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await;
                }
                // Never waits on a loop: a loop that is not taking commands (claimed in recovery, its loop not
                // started while its mirror is written again; or busy) must not hold up every other upgrade's
                // results behind its full queue. Its result is handed back instead, and comes round again.
                Some(handle) => {
                    let upgrade = result.upgrade.clone();
                    let command = upgrade::Command::Result {
                        result: Box::new(result),
                        signer: Box::new(signer),
                        message: Box::new(message),
                    };
                    match handle.tx.try_send(command) {
                        Ok(()) => {}
                        Err(tokio::sync::mpsc::error::TrySendError::Full(
                            upgrade::Command::Result { message, .. },
                        )) => {
                            busy += 1;
                            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                            let delay = handback_delay(BUSY_RETRY, delivered);
                            tracing::debug!(%upgrade, busy, delivered, delay_ms = delay.as_millis() as u64, "the upgrade's loop queue is full; result handed back");
                            let _ = message.ack_with(jetstream::AckKind::Nak(Some(delay))).await;
                        }
                        // The loop ended (shutdown); the result is redelivered later.
                        Err(_) => {
                            tracing::debug!(%upgrade, "upgrade loop gone; leaving the result for redelivery")
                        }
                    }
                }
                None => {
                    stray += 1;
                    tracing::info!(
                        upgrade = %result.upgrade,
                        step = result.step,
                        attempt = result.attempt,
                        stray,
                        "result for an upgrade that is not running; acked and ignored"
                    );
                    let _ = message.double_ack().await;
                }
            }
        }
    }
}

/// Whole milliseconds since `since` (for the timings the service logs).
pub(crate) fn elapsed_ms(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch: the only clock of the service.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{handback_delay, JetStreamRefused, ServiceError, BUSY_RETRY, RECOVERING_RETRY};

    #[test]
    fn a_handed_back_result_waits_twice_as_long_each_delivery_up_to_16_times_the_base() {
        for base in [BUSY_RETRY, RECOVERING_RETRY, Duration::from_millis(1)] {
            let delays: Vec<Duration> = (1..=8).map(|d| handback_delay(base, d)).collect();
            let times = [1, 2, 4, 8, 16, 16, 16, 16].map(|t: u32| base * t);
            assert_eq!(delays, times, "{base:?}");
            // A delivery count the server did not give (or a nonsense one) waits the base; a huge one, the cap.
            assert_eq!(handback_delay(base, 0), base);
            assert_eq!(handback_delay(base, -3), base);
            assert_eq!(handback_delay(base, i64::MAX), base * 16);
        }
    }

    #[test]
    fn a_refused_publish_is_named_with_its_subject_and_a_refused_jetstream_call_as_one() {
        let timeout = || ServiceError::Nats("timed out".into());
        let refused = JetStreamRefused::default();
        assert!(!refused.note("Slow Consumer Detected"));
        assert!(!refused.seen());
        assert!(matches!(refused.or(timeout()), ServiceError::Nats(_)));
        assert!(refused.note(r#"Permissions Violation for Publish to "$KV.baton_lease.service""#));
        // The first refusal is the one named.
        assert!(refused.note(r#"Permissions Violation for Publish to "baton.steps.g1""#));
        let err = refused.or(timeout());
        let ServiceError::PublishRefused { subject, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(subject, "$KV.baton_lease.service");
        let text = err.to_string();
        assert!(
            text.contains("allow the service's NATS user to publish to $KV.baton_lease.service"),
            "{text}"
        );

        let refused = JetStreamRefused::default();
        assert!(refused.note(r#"Permissions Violation for Publish to "$JS.API.INFO""#));
        let err = refused.or(timeout());
        assert!(
            matches!(&err, ServiceError::JetStreamRefused { refusal, .. } if refusal.contains("$JS.API.INFO")),
            "{err:?}"
        );
    }
}
