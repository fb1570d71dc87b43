//! The service lease: one workflow service acts per NATS account (issue 11).
//!
//! Two services on one NATS account would both publish steps, both consume
//! results and both answer the API. The lease makes that impossible: a service
//! acts only while it holds the key [`LEASE_KEY`] of the KV bucket
//! [`LEASE_BUCKET`], whose value is its [`Holder`] record.
//!
//! - **Acquire** ([`Lease::acquire`]) is a revision-checked `create`: it
//!   succeeds only if the key is absent (never written, deleted, or expired).
//! - **Renew** ([`Lease::run`]) is a revision-checked `update` every
//!   `renew_every`. The bucket's `max_age` is the lease TTL, so a holder that
//!   stops renewing (crashed, frozen, cut off) loses the key `ttl` after its
//!   last renewal, and a standby can create it again.
//! - **Fail closed:** a renewal refused because the revision moved or the key
//!   is gone means someone else may hold the lease now: [`Lease::run`] returns
//!   [`LeaseError::Lost`] and the service must stop acting. A renewal that
//!   cannot reach NATS is retried, but only until `ttl` has passed since the
//!   last renewal that succeeded: after that the key may have expired on the
//!   server and been taken, so `run` returns `Lost` too. The clock starts when
//!   the renewal was *sent*, which is before the server stamped it, so the
//!   local deadline comes no later than the server's expiry.
//! - **Release:** on shutdown the key is deleted, but only if its revision is
//!   still ours (a lease already taken by someone else is left alone).
//!
//! ## Taking over from a dead holder of the same log
//!
//! If the key names the same host *and* the same log (database path) as the
//! caller, [`Lease::acquire`] takes it over at once with `update(key, value,
//! revision)`, without waiting for the TTL. This is sound because the caller
//! already holds sled's exclusive lock on that log (`Store::open` takes it):
//! a process that still held the lease for that log would still hold that
//! lock, so the old holder is necessarily dead (a restart after a crash).
//! The reasoning rests on host names being unique among the machines and
//! containers that share the NATS account: two containers given the same
//! host name and each its own volume at the same path would look like one
//! log. Even then the lease stays safe, only slower to notice: the old
//! holder's next renewal finds the revision moved and stops it (`Lost`), so
//! both act for at most `renew_every`.
//!
//! ## The epoch is tied to the lease
//!
//! The service writes its epoch (the fencing number executors compare, bumped
//! in the log at every start) into the holder record. A service must acquire
//! the lease before it publishes anything and stop publishing as soon as
//! [`Lease::run`] returns an error: a service that cannot hold the lease
//! cannot publish under any epoch, so an executor never sees two services'
//! epochs interleaved. Epochs are per log, and upgrades belong to one log, so
//! a standby with another log never publishes for the first service's
//! upgrades.
//!
//! Anyone who can write the bucket can also delete or overwrite the key; with
//! NATS authentication only the service's user may write `$KV.baton_lease.>`.

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use protocol::subjects::{LEASE_BUCKET, LEASE_KEY};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a lease lives without renewal unless configured otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// After this many lost races for the key in a row (it changed between two
/// reads), wait a poll interval before trying again.
const MAX_RACES: u32 = 10;

/// How the service holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseOptions {
    /// How long the lease outlives its last renewal (the bucket's `max_age`).
    /// If the bucket already exists with another `max_age`, the bucket's
    /// value wins (the first creator sets tunables, as in `protocol::setup`).
    pub ttl: Duration,
    /// How often the holder renews; less than `ttl`, so that a renewal can
    /// fail and be retried before the lease expires.
    pub renew_every: Duration,
    /// Wait for the lease when another service holds it, instead of refusing
    /// to start.
    pub standby: bool,
    /// How many servers of a NATS cluster keep the lease bucket: the
    /// service sets it from its streams' count (`protocol::Options::replicas`),
    /// so that one setting places everything. An existing bucket with another
    /// count is refused.
    pub replicas: usize,
}

impl LeaseOptions {
    /// `ttl`, renewing every third of it, not standby.
    pub fn with_ttl(ttl: Duration) -> LeaseOptions {
        LeaseOptions {
            ttl,
            renew_every: ttl / 3,
            standby: false,
            replicas: 1,
        }
    }

    fn check(&self) -> Result<(), LeaseError> {
        if self.ttl < Duration::from_millis(100) {
            return Err(LeaseError::Options(format!(
                "the lease ttl is {:?}; it must be at least 100 ms",
                self.ttl
            )));
        }
        if self.renew_every.is_zero() || self.renew_every >= self.ttl {
            return Err(LeaseError::Options(format!(
                "renew_every is {:?}; it must be above zero and below the ttl ({:?})",
                self.renew_every, self.ttl
            )));
        }
        Ok(())
    }
}

impl Default for LeaseOptions {
    fn default() -> Self {
        LeaseOptions::with_ttl(DEFAULT_TTL)
    }
}

/// Who holds the lease: the JSON value of the lease key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The service's public key (`U...`).
    pub service_key: String,
    pub host: String,
    pub pid: u32,
    /// Absolute path of the service's log (the sled directory).
    pub db: String,
    /// The service's epoch (see the module docs).
    pub epoch: u64,
    /// When this holder acquired the lease (unix ms); [`Lease::acquire`]
    /// sets it to the moment it takes the key.
    pub acquired_ms: u64,
}

impl Holder {
    /// This process: its host name (`/proc/sys/kernel/hostname`, else
    /// `unknown`), its pid, and `db` made absolute (canonical if it exists),
    /// so that two spellings of one log compare equal.
    pub fn this_process(service_key: String, db: &Path, epoch: u64) -> Holder {
        let db = std::fs::canonicalize(db)
            .or_else(|_| std::path::absolute(db))
            .unwrap_or_else(|_| db.to_path_buf());
        Holder {
            service_key,
            host: host_name(),
            pid: std::process::id(),
            db: db.display().to_string(),
            epoch,
            acquired_ms: now_ms(),
        }
    }

    /// Whether `other` names the same log on the same host.
    fn same_log(&self, other: &Holder) -> bool {
        self.host == other.host && self.db == other.db
    }

    /// Whether `other` is this holder's own record: the same service key, host, pid, log and epoch (a new epoch at
    /// every start of a log), stamped no earlier than `since` (when this start made its record, before its first
    /// try). Found in the key, it is a create of this very start whose reply was lost (tried again), not a dead
    /// service's: a service that died before it recorded its start, restarted with the same pid (pid 1 of a
    /// container) and so the same epoch, stamped its record before this start made its own.
    fn is_own(&self, other: &Holder, since: u64) -> bool {
        self.same_log(other)
            && self.pid == other.pid
            && self.epoch == other.epoch
            && self.service_key == other.service_key
            && other.acquired_ms >= since
    }

    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a Holder always serialises"))
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {}, pid {}, log {}, service key {}, epoch {}, since {}",
            self.host,
            self.pid,
            self.db,
            self.service_key,
            self.epoch,
            utc(self.acquired_ms)
        )
    }
}

/// What can go wrong with the lease.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another service holds the lease (and this one is not a standby).
    #[error(
        "another workflow service holds the lease (KV {LEASE_BUCKET}/{LEASE_KEY}): {holder}. \
         Only one service may act per NATS account: stop that service first, or start this one \
         as a standby to take over when that one stops. If that service is dead, its lease \
         expires on its own once its ttl has passed since its last renewal."
    )]
    Held { holder: Holder },
    /// The lease was taken by another service, or could not be renewed
    /// within its ttl: the service must stop acting (fail closed).
    #[error("{}", lost_message(by.as_ref()))]
    Lost { by: Option<Holder> },
    /// The lease key holds something that is not a holder record.
    #[error(
        "the lease key {LEASE_BUCKET}/{LEASE_KEY} (revision {revision}) is not a Baton holder \
         record ({reason}); if no workflow service runs, delete it \
         (`nats kv del {LEASE_BUCKET} {LEASE_KEY}`), or wait for it to expire"
    )]
    Unreadable { revision: u64, reason: String },
    /// The bucket exists with options the lease cannot work with.
    #[error(
        "KV bucket {LEASE_BUCKET} exists with incompatible options: {detail}; delete it \
         (`nats kv rm {LEASE_BUCKET}`) and let the service create it"
    )]
    Bucket { detail: String },
    /// The lease options are unusable.
    #[error("lease options: {0}")]
    Options(String),
    /// A NATS call failed.
    #[error("could not {action}")]
    Nats {
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

fn lost_message(by: Option<&Holder>) -> String {
    match by {
        Some(holder) => format!(
            "the service lease was taken by another service ({holder}); this service stopped \
             acting (fail closed)"
        ),
        None => "the service lease was lost: it could not be renewed within its ttl, or its key \
                 was deleted or expired; this service stopped acting (fail closed)"
            .to_string(),
    }
}

fn nats(action: &'static str, source: impl Into<async_nats::Error>) -> LeaseError {
    LeaseError::Nats {
        action,
        source: source.into(),
    }
}

/// A held lease. Call [`Lease::run`] right away: the first renewal is due
/// `renew_every` after the acquisition.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    holder: Holder,
    /// The holder record exactly as written (renewals write it again).
    value: Bytes,
    revision: u64,
    ttl: Duration,
    renew_every: Duration,
    /// When the last write that succeeded was sent.
    renewed_at: Instant,
    previous: Option<Holder>,
}

/// One attempt at taking the key.
enum Take {
    Taken {
        revision: u64,
        value: Bytes,
        sent: Instant,
        previous: Option<Holder>,
        /// The key held this start's own record: a create whose reply was lost ([`Holder::is_own`]).
        reply_lost: bool,
    },
    Held(Holder),
    Unreadable {
        revision: u64,
        reason: String,
    },
    /// The key changed between two calls; try again.
    Raced,
}

/// Why a renewal did not succeed.
enum RenewError {
    Lost(Option<Holder>),
    Transient(String),
}

impl Lease {
    /// Take the lease for `me`, creating the bucket if missing.
    ///
    /// - The key is absent: create it (only if absent).
    /// - It names the same host and log as `me`: take it over at once (see
    ///   the module docs for why the old holder is dead).
    /// - Another service holds it: [`LeaseError::Held`], or, with
    ///   `options.standby`, log once and wait until the key is deleted or
    ///   expires (a watch wakes it on a delete, a poll every `ttl / 3`
    ///   notices an expiry), then take it.
    ///
    /// `Ok(None)` if `shutdown` came first. A standby retries NATS errors
    /// while it waits; otherwise they are returned.
    pub async fn acquire(
        js: &jetstream::Context,
        mut me: Holder,
        options: LeaseOptions,
        shutdown: &CancellationToken,
    ) -> Result<Option<Lease>, LeaseError> {
        options.check()?;
        let Some(opened) =
            cancellable(shutdown, open_bucket(js, options.ttl, options.replicas)).await
        else {
            return Ok(None);
        };
        let (kv, ttl) = opened?;
        let renew_every = if ttl == options.ttl {
            options.renew_every
        } else {
            tracing::warn!(
                wanted_ttl_ms = options.ttl.as_millis() as u64,
                bucket_ttl_ms = ttl.as_millis() as u64,
                "the lease bucket exists with another max_age; using the bucket's as the lease ttl"
            );
            options.renew_every.min(ttl / 3)
        };
        let poll = ttl / 3;
        let mut watch: Option<kv::Watch> = None;
        let mut logged: Option<Holder> = None;
        let mut races = 0u32;
        loop {
            if shutdown.is_cancelled() {
                return Ok(None);
            }
            let attempt = cancellable(shutdown, try_take(&kv, &mut me)).await;
            let Some(attempt) = attempt else {
                return Ok(None);
            };
            match attempt {
                Ok(Take::Taken {
                    revision,
                    value,
                    sent,
                    previous,
                    reply_lost,
                }) => {
                    log_taken(&me, revision, ttl, previous.as_ref(), reply_lost);
                    return Ok(Some(Lease {
                        kv,
                        holder: me,
                        value,
                        revision,
                        ttl,
                        renew_every,
                        renewed_at: sent,
                        previous: previous.or(logged),
                    }));
                }
                Ok(Take::Raced) => {
                    races += 1;
                    if races < MAX_RACES {
                        continue;
                    }
                }
                Ok(Take::Held(holder)) => {
                    if !options.standby {
                        return Err(LeaseError::Held { holder });
                    }
                    if logged.as_ref() != Some(&holder) {
                        tracing::info!(
                            host = %holder.host,
                            pid = holder.pid,
                            db = %holder.db,
                            service_key = %holder.service_key,
                            epoch = holder.epoch,
                            since = %utc(holder.acquired_ms),
                            ttl_ms = ttl.as_millis() as u64,
                            "another workflow service holds the lease; waiting as a standby"
                        );
                        logged = Some(holder);
                    }
                }
                Ok(Take::Unreadable { revision, reason }) => {
                    if !options.standby {
                        return Err(LeaseError::Unreadable { revision, reason });
                    }
                    tracing::warn!(revision, %reason, "the lease key is not a holder record; waiting for it to expire");
                }
                Err(err) => {
                    if !options.standby {
                        return Err(err);
                    }
                    tracing::warn!(error = %chain(&err), "lease check failed; retrying");
                }
            }
            races = 0;
            if !wait_for_change(&kv, &mut watch, poll, shutdown).await {
                return Ok(None);
            }
        }
    }

    /// The revision of the key as last written by this holder.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The holder record this lease wrote.
    pub fn holder(&self) -> &Holder {
        &self.holder
    }

    /// The epoch written into the holder record.
    pub fn epoch(&self) -> u64 {
        self.holder.epoch
    }

    /// The lease ttl in force (the bucket's `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The holder seen before this one took the lease: the dead holder of
    /// the same log it took over, or the service it waited for as a standby.
    pub fn previous(&self) -> Option<&Holder> {
        self.previous.as_ref()
    }

    /// Renew the lease every `renew_every` until `shutdown`, then release it.
    ///
    /// Returns [`LeaseError::Lost`] when another service took the key, when
    /// the key is gone, or when no renewal succeeded for `ttl`: the service
    /// must then stop acting. Pass a token that is cancelled only once
    /// nothing acts under the lease any more (after the service's tasks are
    /// joined), so that a standby cannot start while this service still
    /// writes.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), LeaseError> {
        let retry_every = (self.renew_every / 4).max(Duration::from_millis(20));
        let mut next = self.renewed_at + self.renew_every;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
                _ = tokio::time::sleep_until(next) => {}
            }
            let deadline = self.renewed_at + self.ttl;
            let now = Instant::now();
            if now >= deadline {
                tracing::error!(
                    since_renewal_ms = (now - self.renewed_at).as_millis() as u64,
                    ttl_ms = self.ttl.as_millis() as u64,
                    "the service lease could not be renewed within its ttl; stopping (fail closed)"
                );
                return Err(LeaseError::Lost { by: None });
            }
            let budget = (deadline - now).min(self.renew_every);
            let outcome = tokio::time::timeout(budget, self.renew())
                .await
                .unwrap_or_else(|_| Err(RenewError::Transient("timed out".into())));
            match outcome {
                // After adopting an unacknowledged renewal `renewed_at` has
                // not moved: renew again soon, not at once.
                Ok(()) => {
                    next = (self.renewed_at + self.renew_every).max(Instant::now() + retry_every)
                }
                Err(RenewError::Lost(by)) => {
                    match &by {
                        Some(holder) => tracing::error!(
                            host = %holder.host,
                            pid = holder.pid,
                            db = %holder.db,
                            service_key = %holder.service_key,
                            epoch = holder.epoch,
                            "another workflow service took the lease; stopping (fail closed)"
                        ),
                        None => tracing::error!(
                            "the lease key was deleted or expired; stopping (fail closed)"
                        ),
                    }
                    return Err(LeaseError::Lost { by });
                }
                Err(RenewError::Transient(reason)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tracing::warn!(
                        %reason,
                        left_ms = left.as_millis() as u64,
                        "could not renew the service lease; retrying until its ttl"
                    );
                    next = (Instant::now() + retry_every).min(deadline);
                }
            }
        }
    }

    /// One revision-checked renewal.
    async fn renew(&mut self) -> Result<(), RenewError> {
        let sent = Instant::now();
        let err = match self
            .kv
            .update(LEASE_KEY, self.value.clone(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed_at = sent;
                return Ok(());
            }
            Err(err) => err,
        };
        if err.kind() != kv::UpdateErrorKind::WrongLastRevision {
            return Err(RenewError::Transient(chain(&err)));
        }
        // The revision moved: another writer, an expiry, or our own earlier
        // renewal whose acknowledgement was lost (a NATS restart). Only the
        // last one leaves our exact record in place: adopt its revision, and
        // keep the deadline where it was (we do not know when it landed).
        let entry = self
            .kv
            .entry(LEASE_KEY)
            .await
            .map_err(|e| RenewError::Transient(chain(&e)))?;
        match entry {
            Some(entry) if entry.operation == kv::Operation::Put && entry.value == self.value => {
                tracing::info!(
                    revision = entry.revision,
                    "a renewal had landed unacknowledged; adopting its revision"
                );
                self.revision = entry.revision;
                Ok(())
            }
            Some(entry) if entry.operation == kv::Operation::Put => Err(RenewError::Lost(
                serde_json::from_slice::<Holder>(&entry.value).ok(),
            )),
            _ => Err(RenewError::Lost(None)),
        }
    }

    /// Delete the key if it is still ours; a lease we cannot release expires
    /// within its ttl anyway.
    async fn release(&self) {
        let delete = self
            .kv
            .delete_expect_revision(LEASE_KEY, Some(self.revision));
        match tokio::time::timeout(self.renew_every, delete).await {
            Ok(Ok(())) => tracing::info!(revision = self.revision, "released the service lease"),
            Ok(Err(err)) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                tracing::warn!(
                    revision = self.revision,
                    "the lease is no longer ours; left as it is"
                )
            }
            Ok(Err(err)) => tracing::warn!(
                error = %chain(&err),
                ttl_ms = self.ttl.as_millis() as u64,
                "could not release the service lease; it expires after its ttl"
            ),
            Err(_) => tracing::warn!(
                ttl_ms = self.ttl.as_millis() as u64,
                "releasing the service lease timed out; it expires after its ttl"
            ),
        }
    }
}

/// Create the key if absent, or take it over from a dead holder of the same
/// log; otherwise say who holds it.
async fn try_take(kv: &kv::Store, me: &mut Holder) -> Result<Take, LeaseError> {
    // This start's record was stamped no later than this (`Holder::this_process`, or the previous try).
    let since = me.acquired_ms;
    me.acquired_ms = now_ms();
    let value = me.encode();
    let sent = Instant::now();
    match kv.create(LEASE_KEY, value.clone()).await {
        Ok(revision) => {
            return Ok(Take::Taken {
                revision,
                value,
                sent,
                previous: None,
                reply_lost: false,
            })
        }
        Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
        Err(err) => return Err(nats("create the lease key", err)),
    }
    let entry = kv
        .entry(LEASE_KEY)
        .await
        .map_err(|e| nats("read the lease key", e))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(Take::Raced);
    };
    let holder: Holder = match serde_json::from_slice(&entry.value) {
        Ok(holder) => holder,
        Err(err) => {
            return Ok(Take::Unreadable {
                revision: entry.revision,
                reason: err.to_string(),
            })
        }
    };
    if !holder.same_log(me) {
        return Ok(Take::Held(holder));
    }
    // Same host, same log, and we hold the log's exclusive lock: the holder
    // is dead (module docs), or it is this very start, whose create went
    // through but whose reply was lost. Take the key over without waiting for
    // its ttl (written again: the record as this try stamped it).
    let reply_lost = me.is_own(&holder, since);
    let sent = Instant::now();
    match kv.update(LEASE_KEY, value.clone(), entry.revision).await {
        Ok(revision) => Ok(Take::Taken {
            revision,
            value,
            sent,
            previous: (!reply_lost).then_some(holder),
            reply_lost,
        }),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(Take::Raced),
        Err(err) => Err(nats("take over the lease key", err)),
    }
}

fn log_taken(
    me: &Holder,
    revision: u64,
    ttl: Duration,
    previous: Option<&Holder>,
    reply_lost: bool,
) {
    match previous {
        Some(old) => tracing::warn!(
            revision,
            epoch = me.epoch,
            old_pid = old.pid,
            old_epoch = old.epoch,
            old_since = %utc(old.acquired_ms),
            db = %me.db,
            "took over the service lease of a dead service of this log on this host"
        ),
        None if reply_lost => tracing::info!(
            revision,
            epoch = me.epoch,
            ttl_ms = ttl.as_millis() as u64,
            "acquired the service lease (the reply to this service's create was lost; the key held its own record)"
        ),
        None => tracing::info!(
            revision,
            epoch = me.epoch,
            ttl_ms = ttl.as_millis() as u64,
            "acquired the service lease"
        ),
    }
}

/// Wait until the key may have become free: a delete seen by the watch, or
/// `poll` elapsed (an expiry is silent). `false` if shutdown came first.
async fn wait_for_change(
    kv: &kv::Store,
    watch: &mut Option<kv::Watch>,
    poll: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let until = Instant::now() + poll;
    if watch.is_none() {
        // Without a watch, polling alone still finds the key free.
        let started = tokio::time::timeout_at(until, kv.watch(LEASE_KEY)).await;
        *watch = started.ok().and_then(Result::ok);
    }
    loop {
        let event = async {
            match watch.as_mut() {
                Some(w) => Some(w.next().await),
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(until) => return true,
            event = event => event,
        };
        match event.flatten() {
            Some(Ok(entry)) if entry.operation != kv::Operation::Put => return true,
            // A renewal or a new holder: keep waiting.
            Some(Ok(_)) => {}
            // The watch broke (a NATS restart): poll, and watch again next time.
            Some(Err(_)) | None => *watch = None,
        }
    }
}

/// Open the lease bucket, creating it with `max_age = ttl` and `replicas`
/// if missing; returns it with the ttl in force (its `max_age`).
async fn open_bucket(
    js: &jetstream::Context,
    ttl: Duration,
    replicas: usize,
) -> Result<(kv::Store, Duration), LeaseError> {
    let kv = match js.get_key_value(LEASE_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => {
            let created = js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.into(),
                    description:
                        "Baton service lease: the one workflow service acting on this account"
                            .into(),
                    history: 1,
                    max_age: ttl,
                    storage: jetstream::stream::StorageType::File,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(kv) => kv,
                // Another service may have created it meanwhile: use theirs.
                Err(create_err) => js
                    .get_key_value(LEASE_BUCKET)
                    .await
                    .map_err(|_| nats("create the lease bucket", create_err))?,
            }
        }
    };
    let status = kv
        .status()
        .await
        .map_err(|e| nats("read the lease bucket's status", e))?;
    let max_age = status.max_age();
    let storage = status.info.config.storage;
    if max_age.is_zero() {
        return Err(LeaseError::Bucket {
            detail: "no max_age, so a dead holder's lease would never expire".into(),
        });
    }
    let have = status.info.config.num_replicas.max(1);
    if have != replicas.max(1) {
        return Err(LeaseError::Bucket {
            detail: format!(
                "{have} replicas, expected {replicas} (the service's --nats-replicas; \
                 give it the count the bucket has)"
            ),
        });
    }
    if storage != jetstream::stream::StorageType::File {
        return Err(LeaseError::Bucket {
            detail: format!(
                "storage {storage:?}, expected File (a restart of nats-server would drop the lease)"
            ),
        });
    }
    Ok((kv, max_age))
}

/// Runs `work` unless `shutdown` comes first.
async fn cancellable<T>(
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        _ = shutdown.cancelled() => None,
        out = work => Some(out),
    }
}

fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    super::anyhow_chain(err)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn now_ms() -> u64 {
    super::now_ms()
}

/// Unix ms as `YYYY-MM-DDTHH:MM:SSZ` (UTC), for messages.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> Holder {
        Holder {
            service_key: "UABC".into(),
            host: "h1".into(),
            pid: 42,
            db: "/var/lib/baton/log".into(),
            epoch: 7,
            acquired_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_825_600_000), "2000-02-29T12:00:00Z");
        assert_eq!(utc(4_107_542_399_999), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn held_names_the_holder_and_what_to_do() {
        let text = LeaseError::Held { holder: holder() }.to_string();
        for part in [
            "host h1",
            "pid 42",
            "log /var/lib/baton/log",
            "service key UABC",
            "epoch 7",
            "since 2023-11-14T22:13:20Z",
            "stop that service",
            "standby",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
        let lost = LeaseError::Lost { by: Some(holder()) }.to_string();
        assert!(
            lost.contains("pid 42") && lost.contains("fail closed"),
            "{lost}"
        );
    }

    #[test]
    fn the_holder_record_round_trips_and_only_host_and_log_make_the_same_log() {
        let h = holder();
        let back: Holder = serde_json::from_slice(&h.encode()).unwrap();
        assert_eq!(back, h);
        let mut other = h.clone();
        other.pid = 43;
        other.epoch = 8;
        other.service_key = "UDEF".into();
        assert!(h.same_log(&other));
        other.host = "h2".into();
        assert!(!h.same_log(&other));
        let mut other = h.clone();
        other.db = "/var/lib/baton/other".into();
        assert!(!h.same_log(&other));
    }

    #[test]
    fn only_this_start_s_own_record_but_its_time_stamp_is_its_own() {
        let me = holder();
        let since = me.acquired_ms;
        let mut lost_reply = me.clone();
        lost_reply.acquired_ms += 1500;
        assert!(me.is_own(&lost_reply, since));
        assert!(me.is_own(&me, since));
        let changes: [fn(&mut Holder); 6] = [
            // Stamped before this start made its record: a dead service's of the same pid and epoch.
            |h| h.acquired_ms -= 1,
            |h| h.pid += 1,
            |h| h.epoch += 1,
            |h| h.service_key = "UDEF".into(),
            |h| h.host = "h2".into(),
            |h| h.db = "/var/lib/baton/other".into(),
        ];
        for change in changes {
            let mut other = me.clone();
            change(&mut other);
            assert!(!me.is_own(&other, since), "{other}");
        }
    }

    #[test]
    fn options_refuse_renewing_no_faster_than_the_ttl() {
        assert!(LeaseOptions::default().check().is_ok());
        assert_eq!(LeaseOptions::default().renew_every, Duration::from_secs(5));
        let mut o = LeaseOptions::with_ttl(Duration::from_secs(2));
        o.renew_every = Duration::from_secs(2);
        assert!(matches!(o.check(), Err(LeaseError::Options(_))));
        o.renew_every = Duration::ZERO;
        assert!(o.check().is_err());
        assert!(LeaseOptions::with_ttl(Duration::from_millis(10))
            .check()
            .is_err());
    }

    #[test]
    fn this_process_makes_the_log_path_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let h = Holder::this_process("U".into(), dir.path(), 1);
        assert!(Path::new(&h.db).is_absolute());
        assert_eq!(h.pid, std::process::id());
        let relative = Holder::this_process("U".into(), Path::new("some/log"), 1);
        assert!(Path::new(&relative.db).is_absolute(), "{}", relative.db);
    }
}
