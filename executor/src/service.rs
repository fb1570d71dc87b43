//! The executor service: connect, attach, serve the groups' steps, shut down.
//!
//! One process serves one or more executor groups ([`Config::served`]), each
//! with its own key, NATS connection, durable consumer, presence record and
//! claim identity; one ledger serves them all (its keys are step ids, unique
//! across upgrades).
//!
//! Per node, one action at a time, alone, or up to [`MAX_PROBES_PER_NODE`]
//! read-only probes side by side ([`crate::slots`]: an action waits until the
//! node's probes are done, probes wait while an action runs); steps of
//! different nodes at once. Each group's dispatcher pulls one message at a
//! time, and only while one of its nodes could start a step, so a step never
//! waits in this process's buffer while another runs (it would outlive its
//! `ack_wait` there and be redelivered to a sibling). A step that may not start
//! on its node now goes back to the consumer at once (a nak with a short
//! delay): the dispatcher never waits on one node, so a node with a backlog
//! cannot hold up the others, and JetStream stays the only queue. A step gives
//! its slot back as soon as it is answered, before its result is published, so
//! the node's next step (sent by the service once it has that result) finds it
//! free. Several processes in a group share its work through the one durable
//! consumer.
//!
//! A probe and an action differ in what the ledger and the claim guarantee
//! ([`crate::ledger`] says what each flush protects): an action is run at most
//! once (its `started` and `finished` flushed; a redelivery after a crash mid-run
//! is answered `unknown`, as is one whose claim another executor holds), while a
//! probe, which changes nothing, is written to the ledger without waiting for a
//! flush (but an epoch raise) and, when its outcome was lost, is run again
//! rather than answered `unknown`. Epoch fencing, the signature and allow-list
//! checks and the request digest's conflict check (in the ledger and in the
//! group-wide claim) are the same for both.
//!
//! Every step request must carry the service's signature for the subject it
//! arrived on ([`protocol::sign`]), checked before the request is even
//! decoded. One that does not is terminated: no result (a `rejected` result
//! under a forged step id could pass for the answer to the real step), no
//! ledger entry (only a signed request may raise the epoch fence), counted
//! (`unsigned`) and logged. Results and the presence record are signed with
//! the group's executor key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, kv, AckKind};
use futures::StreamExt;
use protocol::setup::ExecutorHandles;
use protocol::sign::{self, Identity, Kind, Trust};
use protocol::{
    decode_request, DecodeError, Outcome, Presence, ProtocolError, RequestIds, StepRequest,
    StepResult, PROTOCOL_VERSION,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::allow::{Allowlist, Refusal, RefusalKind};
use crate::config::{host_name, Config, Served};
use crate::error::ExecutorError;
use crate::ledger::{self, Durability, Entry, Ledger};
use crate::now_ms;
use crate::presence::{self, Stats};
use crate::slots::{self, SharedSlots, Slot, StepKind};

pub use crate::slots::MAX_PROBES_PER_NODE;

/// Run an executor until `shutdown` is cancelled.
///
/// On shutdown it stops taking work, lets the running steps finish (or time
/// out), reports them, removes its presence records and returns `Ok(())`.
/// Errors are infrastructure failures it cannot serve through: an unusable
/// configuration (a key the trust file does not list as an executor of its
/// group among them), an unwritable ledger, NATS credentials the server
/// refuses, a NATS server that cannot host the protocol. An error in one
/// group stops the others too (their running steps finish and report).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), ExecutorError> {
    config.validate()?;
    let served = config.served();
    let ids = served
        .iter()
        .map(|one| one.id(&config.trust))
        .collect::<Result<Vec<_>, _>>()?;
    let ledger = Arc::new(Ledger::open(&config.state_dir)?);
    // Cancelled on shutdown, or by a group that fails.
    let stop = shutdown.child_token();
    for one in &served {
        config.metrics.serving(&one.group);
    }
    if served.len() > 1 {
        tracing::info!(
            groups = served.len(),
            nodes = served.iter().map(|s| s.nodes.len()).sum::<usize>(),
            state_dir = %config.state_dir.display(),
            "executor serving several groups"
        );
    }
    let config = Arc::new(config);
    let mut groups = JoinSet::new();
    for (one, id) in served.into_iter().zip(ids) {
        let span = tracing::info_span!("group", group = %one.group);
        groups.spawn(
            serve_group(config.clone(), one, id, ledger.clone(), stop.clone()).instrument(span),
        );
    }
    let mut failed = None;
    while let Some(joined) = groups.join_next().await {
        let served = match joined {
            Ok(served) => served,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => {
                tracing::warn!(error = %e, "a group's task was cancelled");
                Ok(())
            }
        };
        if let Err(e) = served {
            tracing::error!(error = %e, "a group failed; stopping the others");
            stop.cancel();
            failed.get_or_insert(e);
        }
    }
    tracing::info!("executor stopped");
    failed.map_or(Ok(()), Err)
}

/// Serve one group until `stop` is cancelled: connect with its key, attach
/// to its consumer, keep its presence record, dispatch its steps.
async fn serve_group(
    config: Arc<Config>,
    served: Served,
    id: String,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) -> Result<(), ExecutorError> {
    let group = served.group.clone();
    let allowlist = served.allowlist(&config.runner)?;
    let Some(client) = connect(&config, &served, &id, &stop).await? else {
        return Ok(());
    };
    let js = jetstream::new(client.clone());
    let Some(handles) = attach(&js, &config, &group, &stop).await? else {
        return Ok(());
    };
    if !handles.presence_ttl.is_zero() && config.heartbeat >= handles.presence_ttl {
        return Err(ExecutorError::Config(format!(
            "heartbeat {:?} must be shorter than the presence TTL {:?} the service set",
            config.heartbeat, handles.presence_ttl
        )));
    }
    let consumer = handles.consumer;
    config.metrics.set_consumer_bound(&group, true);
    let ack_wait = consumer.cached_info().config.ack_wait;
    let progress = config
        .progress_interval
        .unwrap_or(ack_wait / 3)
        .max(Duration::from_millis(50));
    tracing::info!(
        group = %group,
        id = %id,
        key = %served.identity.public_key(),
        nodes = ?served.nodes,
        addresses = ?served.addresses,
        installer = ?served.installer,
        procedure = ?served.procedure,
        profile = %allowlist.profile().name,
        profile_sha256 = allowlist.profile().source_sha256.as_deref().unwrap_or("built-in"),
        state_dir = %config.state_dir.display(),
        ack_wait_ms = ack_wait.as_millis() as u64,
        "executor serving"
    );

    let stats = Arc::new(Stats::default());
    let base = Presence {
        v: PROTOCOL_VERSION,
        id: id.clone(),
        group: group.clone(),
        nodes: served.nodes.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        host: host_name(),
        pid: std::process::id(),
        started_ms: now_ms(),
        heartbeat_ms: 0,
        executed: 0,
        rejected: 0,
        not_allowed: 0,
        conflicts: 0,
        malformed: 0,
        unsigned: 0,
        running: None,
        profile: Some(protocol::presence::ServedProfile {
            name: allowlist.profile().name.clone(),
            sha256: allowlist.profile().source_sha256.clone(),
        }),
    };
    let stop_presence = CancellationToken::new();
    let heartbeat = tokio::spawn(
        presence::heartbeat(
            handles.presence,
            base,
            served.identity.clone(),
            stats.clone(),
            config.metrics.clone(),
            config.heartbeat,
            stop_presence.clone(),
        )
        .in_current_span(),
    );

    let claim_token = format!("{id}/{}/{}", std::process::id(), now_ms());
    let metrics = config.metrics.clone();
    let worker = Arc::new(Worker {
        allowlist,
        identity: served.identity.clone(),
        trust: config.trust.clone(),
        id,
        config,
        served,
        js,
        claims: handles.claims,
        claim_token,
        ledger,
        stats,
        progress,
        shutdown: stop,
    });
    let result = worker.serve(&consumer).await;
    metrics.set_consumer_bound(&group, false);
    stop_presence.cancel();
    if let Err(e) = heartbeat.await {
        tracing::warn!(error = %e, "presence task failed");
    }
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "could not flush the NATS connection");
    }
    tracing::info!(group = %group, "group stopped");
    result
}

/// Connect with `served`'s key, retrying until connected or shut down (`None`).
/// Settings that cannot work (a missing creds file) and credentials the server
/// refuses are errors, not retried. Only the redacted URL is ever logged.
async fn connect(
    config: &Config,
    served: &Served,
    id: &str,
    shutdown: &CancellationToken,
) -> Result<Option<async_nats::Client>, ExecutorError> {
    let nats = served_nats(config, served).with_own_inbox(&served.identity.public_key());
    let url = nats.redacted_url();
    tracing::info!(url = %url, auth = nats.has_auth(), "connecting to NATS");
    loop {
        let (options, addrs) = nats.options(&format!("baton-executor {id}")).await?;
        let watched = config.metrics.clone();
        let group = served.group.clone();
        let options = options.event_callback(move |event| {
            let metrics = watched.clone();
            let group = group.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        metrics.set_nats_connected(&group, true);
                        tracing::info!(group = %group, "connected to NATS")
                    }
                    async_nats::Event::Disconnected => {
                        metrics.set_nats_connected(&group, false);
                        tracing::warn!(group = %group, "disconnected from NATS; reconnecting")
                    }
                    other => {
                        tracing::info!(group = %group, event = %other, "NATS connection event")
                    }
                }
            }
        });
        match options.connect(addrs.as_slice()).await {
            Ok(client) => {
                config.metrics.set_nats_connected(
                    &served.group,
                    client.connection_state() == async_nats::connection::State::Connected,
                );
                return Ok(Some(client));
            }
            Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation => {
                return Err(ExecutorError::Nats {
                    action: "authenticate (the server refused this executor's NATS credentials)",
                    source: e.into(),
                });
            }
            Err(e) => {
                tracing::warn!(url = %url, error = %e, "could not connect to NATS; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// The NATS settings of a served group: the process's; when the process
/// authenticates with its key (nkey), a further group authenticates with its
/// own key and uses its own inbox, as each group's key is a NATS user of its
/// own (`protocol::natsconf`). Other settings (TLS, creds, a user) are shared.
fn served_nats(config: &Config, served: &Served) -> protocol::connect::NatsConfig {
    let mut nats = config.nats.clone();
    if served.group != config.group && nats.nkey.is_some() {
        if let Some(path) = served.identity.path.as_ref() {
            nats.nkey = Some(path.clone());
            nats.inbox_prefix = Some(protocol::subjects::inbox_prefix(
                &served.identity.public_key(),
            ));
        }
    }
    nats
}

/// Attach to the group's consumer and the buckets, waiting (with backoff)
/// while the workflow service has not created the streams yet; `None` when
/// shut down meanwhile. An executor never creates streams or buckets.
async fn attach(
    js: &jetstream::Context,
    config: &Config,
    group: &str,
    shutdown: &CancellationToken,
) -> Result<Option<ExecutorHandles>, ExecutorError> {
    let mut backoff = Duration::from_millis(200);
    loop {
        match protocol::setup::attach_executor(js, group, &config.setup).await {
            Ok(handles) => return Ok(Some(handles)),
            Err(ProtocolError::NotCreated { kind, name }) => tracing::info!(
                kind,
                name = %name,
                retry_ms = backoff.as_millis() as u64,
                "waiting for the workflow service to create the streams"
            ),
            // A JetStream call that failed (a timeout, no responders, a stream leader not elected yet: a NATS
            // cluster just formed or restarting) is tried again, not the end of the executor; it exited here and
            // never served (seen in CI's clustered-NATS starts). Incompatible streams, names and keys still stop it.
            Err(e @ ProtocolError::Setup { .. }) => tracing::warn!(
                group,
                error = %e,
                cause = %std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default(),
                retry_ms = backoff.as_millis() as u64,
                "attaching to the streams failed; trying again"
            ),
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Why a step request is not the service's: not signed, a bad signature
/// (forged, altered, or signed for another subject), or another key.
struct Unsigned {
    reason: String,
    /// The key the request claims or was signed with, if any.
    signer: Option<String>,
}

/// A claim's holder as it may appear in a result's reason (recorded in the log
/// and printed on operators' terminals): at most 128 characters of
/// `[A-Za-z0-9_./:-]`, anything else replaced by `?`.
fn printable(token: &str) -> String {
    token
        .chars()
        .take(128)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_./:-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Whether this executor may run a step attempt.
enum Claim {
    /// It holds the claim.
    Won,
    /// Another executor (named) holds it, for the same command.
    Lost(String),
    /// Another executor (named) holds it for another command.
    Conflict(String),
    /// NATS could not say; try again later.
    Undecided,
}

/// The value of a claim: who claimed the step id, for which command ([`ledger::digest`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct ClaimValue {
    token: String,
    digest: String,
}

/// One served group: its identity, allow list, consumer's dispatcher and steps.
struct Worker {
    config: Arc<Config>,
    /// The group, its nodes and their settings.
    served: Served,
    /// This group's executor id: the trust file's name for its key.
    id: String,
    /// Signs results.
    identity: Identity,
    /// Whose signature a step request needs: the service's.
    trust: Arc<Trust>,
    /// What this group's executor may run.
    allowlist: Allowlist,
    js: jetstream::Context,
    /// The group-wide claims bucket: the first executor to claim a step
    /// attempt is the only one that may run it.
    claims: kv::Store,
    /// What this process writes into a claim: id, pid and start time, so a
    /// claim whose ack was lost can be recognised as its own.
    claim_token: String,
    /// The process's one ledger, shared by every group it serves.
    ledger: Arc<Ledger>,
    stats: Arc<Stats>,
    progress: Duration,
    /// Cancelled on shutdown or when any group of the process fails.
    shutdown: CancellationToken,
}

/// How long a step for a busy node stays out of the consumer before it is
/// offered again: longer the more often it came back, at most a second.
fn busy_delay(delivered: i64) -> Duration {
    Duration::from_millis(50 * delivered.clamp(1, 20) as u64)
}

impl Worker {
    /// Pull and dispatch the group's steps until shut down: per node one
    /// action or a few probes at a time, steps of different nodes at once (see
    /// the module docs); then wait for the running steps to finish and report.
    async fn serve(self: &Arc<Self>, consumer: &PullConsumer) -> Result<(), ExecutorError> {
        let mut steps: JoinSet<Result<(), ExecutorError>> = JoinSet::new();
        let busy = SharedSlots::default();
        let mut failed: Option<ExecutorError> = None;
        let mut backoff = Duration::from_millis(100);
        while !self.shutdown.is_cancelled() {
            while let Some(joined) = steps.try_join_next() {
                self.ended(joined, &mut failed);
            }
            if slots::lock(&busy).full(&self.served.nodes) {
                // No node can start a step: wait for one to end.
                tokio::select! {
                    joined = steps.join_next() => if let Some(joined) = joined {
                        self.ended(joined, &mut failed);
                    },
                    _ = self.shutdown.cancelled() => {}
                }
                continue;
            }
            let batch = consumer
                .batch()
                .max_messages(1)
                .expires(self.config.fetch_wait)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(error = %e, "could not pull steps; retrying");
                    self.pause(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            while let Some(item) = batch.next().await {
                match item {
                    Ok(msg) if self.shutdown.is_cancelled() => {
                        // Pulled as the shutdown began: hand it back at once
                        // rather than let it wait for ack_wait.
                        if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
                            tracing::debug!(error = %e, "could not nak a step at shutdown");
                        }
                    }
                    Ok(msg) => {
                        if let Err(e) = self.dispatch(msg, &mut steps, &busy).await {
                            failed.get_or_insert(e);
                            self.shutdown.cancel();
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "pull request failed"),
                }
            }
        }
        // Shutting down: the running steps finish (or time out) and report.
        while let Some(joined) = steps.join_next().await {
            self.ended(joined, &mut failed);
        }
        failed.map_or(Ok(()), Err)
    }

    /// A step task ended (its slot was given back when it answered): an error stops the process.
    fn ended(
        &self,
        joined: Result<Result<(), ExecutorError>, tokio::task::JoinError>,
        failed: &mut Option<ExecutorError>,
    ) {
        match joined {
            Ok(done) => {
                if let Err(e) = done {
                    failed.get_or_insert(e);
                    self.shutdown.cancel();
                }
            }
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => tracing::warn!(error = %e, "a step task was cancelled"),
        }
    }

    /// Check and route one pulled request: unsigned and malformed ones are
    /// answered here; one for a node this group does not serve is refused
    /// here; one its node may start now ([`Slots`]) starts on its own task;
    /// any other goes back to the consumer.
    async fn dispatch(
        self: &Arc<Self>,
        msg: jetstream::Message,
        steps: &mut JoinSet<Result<(), ExecutorError>>,
        busy: &SharedSlots,
    ) -> Result<(), ExecutorError> {
        if let Err(unsigned) = self.check_signature(&msg) {
            self.terminate_unsigned(&msg, unsigned).await;
            return Ok(());
        }
        let delivered = msg.info().map(|i| i.delivered).unwrap_or(0);
        let req = match decode_request(&msg.payload) {
            Ok(req) => req,
            Err(e) => return self.malformed(msg, e).await,
        };
        let span = tracing::info_span!(
            "step",
            key = %req.msg_id(),
            node = %req.node,
            action = %req.action,
            epoch = req.epoch,
            delivered,
        );
        if !self.served.nodes.contains(&req.node) {
            // Refused (wrong target) or answered from the ledger: nothing runs.
            return self
                .handle(req, msg, StepKind::Action, None)
                .instrument(span)
                .await;
        }
        let kind = StepKind::of(&req.action);
        let Some(slot) = Slot::take(busy, &req.node, kind) else {
            let delay = busy_delay(delivered);
            tracing::debug!(parent: &span, kind = ?kind, delay_ms = delay.as_millis() as u64, "node busy with steps this one may not run beside; handed back for later");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
                tracing::debug!(parent: &span, error = %e, "could not nak the step");
            }
            return Ok(());
        };
        let worker = self.clone();
        steps
            .spawn(async move { worker.handle(req, msg, kind, Some(slot)).await }.instrument(span));
        Ok(())
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    /// Answer one signed, well-formed request of `kind`: from the ledger, by
    /// refusing it, or by running it. Its `slot` on its node is given back
    /// once it is answered, before the result is published ([`Slot`]).
    async fn handle(
        &self,
        req: StepRequest,
        msg: jetstream::Message,
        kind: StepKind,
        slot: Option<Slot>,
    ) -> Result<(), ExecutorError> {
        let answer = self.answer(&req, &msg, kind).await?;
        drop(slot);
        match answer {
            Some(result) => self.report(&result, &msg).await,
            None => {
                // Could not tell whether it may run: hand it back for later.
                if let Err(e) = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
                {
                    tracing::debug!(error = %e, "could not nak the step");
                }
            }
        }
        Ok(())
    }

    /// Whether the service signed this request for the subject it arrived on.
    fn check_signature(&self, msg: &jetstream::Message) -> Result<(), Unsigned> {
        let claimed = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(sign::KEY_HEADER))
            .map(|v| v.as_str().to_string());
        let verified =
            sign::verify_headers(msg.headers.as_ref(), Kind::Step, &msg.subject, &msg.payload)
                .map_err(|e| Unsigned {
                    reason: e.reason,
                    signer: claimed,
                })?;
        if self.trust.is_service(&verified.key) {
            return Ok(());
        }
        let who = if let Some(e) = self.trust.executor(&verified.key) {
            format!("executor {} of group {}", e.name, e.group)
        } else if let Some(o) = self.trust.operator(&verified.key) {
            format!("operator {} ({})", o.name, o.role.as_str())
        } else {
            "a key that is not in the trust file".to_string()
        };
        Err(Unsigned {
            reason: format!("signed by {who}; only the service's key may sign step requests"),
            signer: Some(verified.key),
        })
    }

    /// Refuse a request the service did not sign: terminate it (no
    /// redelivery), publish nothing, record nothing, count and log it.
    async fn terminate_unsigned(&self, msg: &jetstream::Message, unsigned: Unsigned) {
        Stats::count(&self.stats.unsigned);
        self.config.metrics.refused("unsigned");
        tracing::warn!(
            subject = %msg.subject,
            reason = %unsigned.reason,
            signer = %unsigned.signer.as_deref().unwrap_or("(none)"),
            bytes = msg.payload.len(),
            "refused a step request the service did not sign: terminated, nothing run, no result"
        );
        if let Err(e) = msg.ack_with(AckKind::Term).await {
            tracing::warn!(error = %e, "could not terminate an unsigned step request");
        }
    }

    /// The result to report, or `None` when it cannot be decided now.
    ///
    /// An action found `started` but not `finished` (this or another executor
    /// stopped mid-run), or claimed by another executor, is answered `unknown`
    /// and not run; a probe in that case is run again (it changes nothing).
    async fn answer(
        &self,
        req: &StepRequest,
        msg: &jetstream::Message,
        kind: StepKind,
    ) -> Result<Option<StepResult>, ExecutorError> {
        let key = req.msg_id();
        // Held until this copy's answer is recorded: a second copy delivered meanwhile (its ack was late, or a
        // clustered consumer changed leader) would otherwise find no `finished` entry and our own claim, and run
        // the probe beside this one (seen in CI). It is handed back and answered from the ledger later.
        let Some(_in_hand) = self.stats.take(&key) else {
            tracing::debug!("another copy of this step is being answered here now; this one is handed back for later");
            return Ok(None);
        };
        let digest = ledger::digest(req);
        let entry = self.ledger.get(&key)?;
        if let Some(recorded) = entry.as_ref().and_then(Entry::digest) {
            if recorded != digest {
                // Not answered from the ledger: that answer is about another command.
                return Ok(Some(self.refuse(
                    req,
                    Refusal::new(
                        RefusalKind::Conflict,
                        format!(
                            "step id {key} was already used here for another command (request digest {recorded}, \
                             this one {digest}); refused, nothing run: a replay or a forged request"
                        ),
                    ),
                )));
            }
        }
        match entry {
            Some(Entry::Finished { mut result, .. }) => {
                tracing::info!(outcome = %result.outcome, recorded_by = %result.executor, "redelivered step already answered; replying from the ledger");
                // Signed by this executor's key, so named by its trust-file
                // name: the state dir may have served under another name
                // (before keys, or a renamed executor).
                result.executor = self.id.clone();
                Ok(Some(result))
            }
            Some(Entry::Started {
                started_ms,
                executor,
                ..
            }) if kind == StepKind::Action => {
                tracing::warn!(
                    started_ms,
                    by = %executor,
                    "step was started but its outcome was never recorded; answering unknown, not running it again"
                );
                let mut result = self.result(req, Outcome::Unknown);
                result.started_ms = Some(started_ms);
                result.reason = Some(format!(
                    "started at {started_ms} (unix ms) by executor {executor}, which stopped before recording the outcome; not run again: observe the node before deciding"
                ));
                self.ledger
                    .record_finished(&result, &digest, Durability::Flushed)
                    .await?;
                Ok(Some(result))
            }
            // Nothing recorded, or a probe started and never finished (run again: see the docs above).
            None | Some(Entry::Started { .. }) => {
                if let Some(Entry::Started {
                    started_ms,
                    executor,
                    ..
                }) = &entry
                {
                    tracing::info!(
                        started_ms,
                        by = %executor,
                        "probe was started but its outcome was never recorded; a probe changes nothing: running it again"
                    );
                }
                if let Some(refusal) = self.refusal(req)? {
                    // Not recorded, like a malformed request: a refusal must not occupy the step id that the
                    // real request may still come with. Nothing is lost: a redelivery is checked again, and
                    // what refused it (an epoch already seen, a passed deadline, what it asks) still holds.
                    return Ok(Some(self.refuse(req, refusal)));
                }
                match self.claim(req, &digest).await {
                    Claim::Won => self.execute(req, msg, &digest, kind).await.map(Some),
                    Claim::Lost(holder) if kind == StepKind::Probe => {
                        tracing::info!(holder = %holder, "probe was claimed by another executor that never reported it; a probe changes nothing: running it here");
                        self.execute(req, msg, &digest, kind).await.map(Some)
                    }
                    Claim::Undecided => Ok(None),
                    Claim::Conflict(holder) => Ok(Some(self.refuse(
                        req,
                        Refusal::new(
                            RefusalKind::Conflict,
                            format!(
                                "step id {key} was already claimed by executor {holder} for another command; \
                                 refused, nothing run: a replay or a forged request"
                            ),
                        ),
                    ))),
                    Claim::Lost(holder) => {
                        tracing::warn!(holder = %holder, "step was claimed by another executor that never reported it; answering unknown, not running it");
                        let mut result = self.result(req, Outcome::Unknown);
                        result.reason = Some(format!(
                            "already claimed by executor {holder}, which did not report an outcome; not run here: observe the node before deciding"
                        ));
                        self.ledger
                            .record_finished(&result, &digest, Durability::Flushed)
                            .await?;
                        Ok(Some(result))
                    }
                }
            }
        }
    }

    /// Count and log a refusal; the `rejected` result that reports it.
    fn refuse(&self, req: &StepRequest, refusal: Refusal) -> StepResult {
        Stats::count(&self.stats.rejected);
        self.config.metrics.refused(refusal.kind.as_str());
        match refusal.kind {
            // Presence has one count for "not this executor's profile": its commands or its hash.
            RefusalKind::NotAllowed | RefusalKind::WrongProfile => {
                Stats::count(&self.stats.not_allowed)
            }
            RefusalKind::Conflict => Stats::count(&self.stats.conflicts),
            RefusalKind::WrongTarget | RefusalKind::Stale => {}
        }
        tracing::warn!(
            kind = %refusal.kind,
            reason = %refusal.reason,
            argv = ?req.argv,
            env = ?req.env,
            request_profile_sha256 = req.profile_sha256.as_deref().unwrap_or("(none)"),
            profile_sha256 = self.allowlist.profile().source_sha256.as_deref().unwrap_or("built-in"),
            "rejected a step request"
        );
        req.ids().rejected(refusal.reason, &self.id)
    }

    /// Claim the step attempt group-wide, so that a redelivery to a sibling
    /// executor (the first one died or stalled past `ack_wait`) never runs
    /// it a second time.
    ///
    /// The claim names the command it was made for (its digest), so that a
    /// request re-using the step id for another command is refused.
    async fn claim(&self, req: &StepRequest, digest: &str) -> Claim {
        let key = req.claim_key();
        let value = ClaimValue {
            token: self.claim_token.clone(),
            digest: digest.to_string(),
        };
        let value = serde_json::to_vec(&value).expect("a claim serialises");
        match self.claims.create(&key, value.into()).await {
            Ok(_) => Claim::Won,
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                match self.claims.get(&key).await {
                    Ok(Some(v)) => match serde_json::from_slice::<ClaimValue>(&v) {
                        // Our own claim whose acknowledgement was lost: the
                        // ledger has no start, so nothing ran yet.
                        Ok(c) if c.token == self.claim_token && c.digest == digest => Claim::Won,
                        Ok(c) if c.digest != digest => Claim::Conflict(printable(&c.token)),
                        Ok(c) => Claim::Lost(printable(&c.token)),
                        // Not a claim any executor writes (claims are keyed by group now, so
                        // none predates the digest): a forgery, refused as a conflict; its
                        // bytes never reach the result's reason.
                        Err(_) => {
                            tracing::warn!(key = %key, bytes = v.len(), "the step's claim is not a claim an executor writes; refusing the step as a conflict");
                            Claim::Conflict("(an unreadable claim value)".into())
                        }
                    },
                    Ok(None) => Claim::Lost("(expired claim)".into()),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the step's claim; retrying later");
                        Claim::Undecided
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not claim the step; retrying later");
                Claim::Undecided
            }
        }
    }

    /// Why this request must not run, if it must not.
    fn refusal(&self, req: &StepRequest) -> Result<Option<Refusal>, ExecutorError> {
        if req.group != self.served.group {
            return Ok(Some(Refusal::new(
                RefusalKind::WrongTarget,
                format!(
                    "request for group {:?} reached an executor of group {:?}",
                    req.group, self.served.group
                ),
            )));
        }
        if let Err(refusal) = self.allowlist.check(req) {
            return Ok(Some(refusal));
        }
        if let Some(highest) = self.ledger.highest_epoch(&req.upgrade)? {
            if req.epoch < highest {
                return Ok(Some(Refusal::new(
                    RefusalKind::Stale,
                    format!(
                        "stale epoch {}: epoch {highest} was already seen for upgrade {}",
                        req.epoch, req.upgrade
                    ),
                )));
            }
        }
        let now = now_ms();
        if now > req.deadline_ms {
            return Ok(Some(Refusal::new(
                RefusalKind::Stale,
                format!(
                    "deadline passed {} ms ago before the step could start",
                    now - req.deadline_ms
                ),
            )));
        }
        Ok(None)
    }

    /// Run the step, recording it in the ledger before and after (flushed for
    /// an action, not waited for a probe: [`Durability::of`]).
    async fn execute(
        &self,
        req: &StepRequest,
        msg: &jetstream::Message,
        digest: &str,
        kind: StepKind,
    ) -> Result<StepResult, ExecutorError> {
        let key = req.msg_id();
        let started_ms = now_ms();
        let durability = Durability::of(kind);
        // Shown as running in presence from before the ledger write. A copy delivered again meanwhile is kept out
        // by `answer`'s hold on the step (its flush took 10 s under the fleet's load: tests/FLEET.md).
        self.stats.set_running(&key, true);
        if let Err(e) = self
            .ledger
            .record_started(
                &key,
                &req.upgrade,
                req.epoch,
                started_ms,
                &self.id,
                digest,
                durability,
            )
            .await
        {
            self.stats.set_running(&key, false);
            return Err(e);
        }
        Stats::count(&self.stats.executed);
        self.config.metrics.started();
        tracing::info!(argv = ?req.argv, timeout_ms = req.timeout_ms, "step started");

        let address = self
            .allowlist
            .address(&req.node)
            .expect("the allow list checked the node")
            .to_string();
        let bin_dir = self.served.bin_dir(&req.node);
        let runner = &self.config.runner;
        let max_output = self.config.max_output;
        let run = async {
            if self.allowlist.is_http_probe(&req.action) {
                runner.run_http(req, max_output).await
            } else {
                runner
                    .run(req, &address, max_output, bin_dir.as_deref())
                    .await
            }
        };
        tokio::pin!(run);
        let mut progress =
            tokio::time::interval_at(tokio::time::Instant::now() + self.progress, self.progress);
        let ran = loop {
            tokio::select! {
                ran = &mut run => break ran,
                _ = progress.tick() => {
                    // Keeps JetStream from redelivering a long step; a failure
                    // (e.g. while the server restarts) is harmless: the ledger
                    // answers a redelivery.
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "could not send progress");
                    }
                }
            }
        };
        self.stats.set_running(&key, false);
        self.config
            .metrics
            .ran(&req.action, ran.outcome, ran.exit_code);

        let mut result = self.result(req, ran.outcome);
        result.exit_code = ran.exit_code;
        result.stdout_tail = ran.stdout_tail;
        result.stderr_tail = ran.stderr_tail;
        result.reason = ran.reason;
        result.started_ms = Some(ran.started_ms);
        result.finished_ms = Some(ran.finished_ms);
        self.ledger
            .record_finished(&result, digest, durability)
            .await?;
        tracing::info!(
            outcome = %result.outcome,
            exit_code = result.exit_code,
            elapsed_ms = ran.finished_ms.saturating_sub(ran.started_ms),
            "step finished"
        );
        Ok(result)
    }

    fn result(&self, req: &StepRequest, outcome: Outcome) -> StepResult {
        StepResult {
            v: PROTOCOL_VERSION,
            upgrade: req.upgrade.clone(),
            step: req.step,
            attempt: req.attempt,
            epoch: req.epoch,
            node: req.node.clone(),
            outcome,
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            reason: None,
            started_ms: None,
            finished_ms: None,
            executor: self.id.clone(),
        }
    }

    /// Refuse a request that cannot be decoded: answer `rejected` when its
    /// ids can be read, otherwise terminate it so it is not redelivered.
    async fn malformed(
        &self,
        msg: jetstream::Message,
        e: DecodeError,
    ) -> Result<(), ExecutorError> {
        Stats::count(&self.stats.malformed);
        self.config.metrics.refused("malformed");
        match RequestIds::peek(&msg.payload) {
            Some(ids) => {
                tracing::warn!(key = %ids.key(), error = %e, "rejected a malformed step request");
                // Not written to the ledger: a well-formed request with the
                // same ids must still be able to run.
                let result = ids.rejected(e.to_string(), &self.id);
                self.report(&result, &msg).await;
            }
            None => {
                tracing::warn!(subject = %msg.subject, error = %e, "terminated an unreadable step request");
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(error = %e, "could not terminate an unreadable step request");
                }
            }
        }
        Ok(())
    }

    /// Publish the result (waiting for its PubAck), then acknowledge the request.
    async fn report(&self, result: &StepResult, msg: &jetstream::Message) {
        if !self.publish(result).await {
            tracing::error!(
                "result not published before shutdown; the request stays unacknowledged and its redelivery will be answered from the ledger"
            );
            return;
        }
        for attempt in 1..=3 {
            match msg.double_ack().await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(attempt, error = %e, "could not acknowledge the step request");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        tracing::warn!(
            "step request left unacknowledged; its redelivery will be answered from the ledger"
        );
    }

    /// Publish, signed with this executor's key, until the stream
    /// acknowledges it; after a shutdown request, give up after
    /// `shutdown_publish_timeout`.
    async fn publish(&self, result: &StepResult) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut give_up_at: Option<Instant> = None;
        let (headers, payload) = result.signed(&self.identity);
        loop {
            let sent = self
                .js
                .publish_with_headers(result.subject(), headers.clone(), payload.clone().into())
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => {
                        tracing::debug!(
                            seq = ack.sequence,
                            duplicate = ack.duplicate,
                            "result published"
                        );
                        return true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "result not acknowledged by the stream; retrying")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "could not publish the result; retrying"),
            }
            if self.shutdown.is_cancelled() {
                let at = *give_up_at
                    .get_or_insert_with(|| Instant::now() + self.config.shutdown_publish_timeout);
                if Instant::now() >= at {
                    return false;
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn claim_holders_are_printable_and_bounded() {
        assert_eq!(
            super::printable("ex-a/123/1700000000000"),
            "ex-a/123/1700000000000"
        );
        assert_eq!(super::printable("x\u{1b}]0;pwned\u{7}"), "x??0?pwned?");
        assert_eq!(super::printable(&"a".repeat(500)).len(), 128);
    }
}
