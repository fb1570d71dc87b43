//! Creates or checks every stream, consumer and bucket Baton uses, in one place.
//!
//! The workflow service calls [`ensure`] at start: it creates what is missing
//! and checks what exists. Existing objects are checked for the options the
//! protocol depends on (retention, storage, subjects) and for their replica
//! count ([`Options::replicas`], the deployment's choice of how many NATS
//! servers may fail) and refused with [`ProtocolError::Incompatible`] when
//! they differ; tunables (duplicate windows, ages, TTLs) are left as the
//! first creator set them, so two processes with different tunables do not
//! fight over the configuration.
//!
//! An executor calls [`attach_executor`] instead: least privilege. It only
//! looks up the steps stream and the two buckets (never creates or updates a
//! stream, never touches the workflow consumer) and creates or gets its own
//! group's consumer, so the NATS permissions of an executor can be this
//! narrow (`{g}` its group, `{name}` its trust-file name):
//!
//! - `$JS.API.INFO`; `$JS.API.STREAM.INFO.{BATON_STEPS,KV_baton_executors,KV_baton_claims}`;
//! - `$JS.API.CONSUMER.INFO.BATON_STEPS.exec-{g}` and
//!   `$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-{g}.baton.step.{g}`;
//! - `$JS.API.CONSUMER.MSG.NEXT.BATON_STEPS.exec-{g}`, `$JS.ACK.BATON_STEPS.exec-{g}.>`;
//! - `baton.result.>`; `$KV.baton_executors.{name}`; `$KV.baton_claims.{g}.>`
//!   with `$JS.API.DIRECT.GET.KV_baton_claims.$KV.baton_claims.{g}.>` (reading a claim);
//! - subscribe `_INBOX_<its key>.>`, its own inbox (replies to all of the above).

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    kv,
    stream::{self, RetentionPolicy, StorageType},
    ErrorCode,
};

use crate::error::ProtocolError;
use crate::subjects;

/// The most replicas a JetStream stream may have (nats-server's limit).
pub const MAX_REPLICAS: usize = 5;

/// The oldest nats-server we accept (work-queue streams with per-subject
/// consumers, KV TTLs, `Nats-Msg-Id` de-duplication as we use them).
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// Tunables of the streams, consumers and buckets. Defaults suit production;
/// tests shorten the timers.
#[derive(Debug, Clone)]
pub struct Options {
    /// Storage of every stream and bucket (file: survives a server restart).
    pub storage: StorageType,
    /// How many servers of a NATS cluster keep a copy of every stream and
    /// bucket (and, as they inherit it, of the consumers): 1 on a single
    /// server; 3 (or 5) on a cluster, so that one (or two) servers may fail
    /// with nothing lost. 1 to [`MAX_REPLICAS`], at most the cluster's size
    /// (nats-server refuses more). An existing stream or bucket with another
    /// count is refused, not silently kept.
    pub replicas: usize,
    /// How long `BATON_STEPS` remembers `Nats-Msg-Id`s for de-duplication.
    pub steps_duplicate_window: Duration,
    /// How long `BATON_RESULTS` remembers `Nats-Msg-Id`s.
    pub results_duplicate_window: Duration,
    /// How long results are kept (zero: forever).
    pub results_max_age: Duration,
    /// How long events are kept (zero: forever; they anchor the audit chain).
    pub events_max_age: Duration,
    /// How long a presence record lives without a heartbeat.
    pub presence_ttl: Duration,
    /// How long step claims are kept. A request redelivered after its claim
    /// expired could run twice across executors of a group: keep it longer
    /// than any step can wait in the queue.
    pub claims_max_age: Duration,
    /// How long an executor may hold a step without acking or sending progress
    /// before JetStream redelivers it.
    pub executor_ack_wait: Duration,
    /// How long the workflow service may hold a result before redelivery.
    pub workflow_ack_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            storage: StorageType::File,
            replicas: 1,
            steps_duplicate_window: Duration::from_secs(120),
            results_duplicate_window: Duration::from_secs(120),
            results_max_age: Duration::from_secs(30 * 24 * 3600),
            events_max_age: Duration::ZERO,
            presence_ttl: Duration::from_secs(30),
            claims_max_age: Duration::from_secs(7 * 24 * 3600),
            // Executors send progress every third of it while a step runs, so
            // a short wait only shortens how long a dead executor's step sits
            // before redelivery (where the ledger and claims answer it).
            executor_ack_wait: Duration::from_secs(10),
            // The service acks a result within milliseconds (append, flush,
            // publish); after a crash its unacked results come back this soon.
            workflow_ack_wait: Duration::from_secs(5),
        }
    }
}

/// Handles to everything [`ensure`] created or checked.
#[derive(Debug, Clone)]
pub struct Handles {
    pub steps: stream::Stream,
    pub results: stream::Stream,
    pub events: stream::Stream,
    /// `BATON_CHECKPOINTS`: the service's signed checkpoints, append-only.
    pub checkpoints: stream::Stream,
    /// The workflow service's durable consumer on `BATON_RESULTS`.
    pub workflow_consumer: jetstream::consumer::PullConsumer,
    /// The presence bucket.
    pub presence: kv::Store,
    /// The step claims bucket.
    pub claims: kv::Store,
}

/// Check the server, then create or check all streams, the workflow
/// consumer and the presence and claims buckets.
pub async fn ensure(js: &jetstream::Context, opts: &Options) -> Result<Handles, ProtocolError> {
    check_server(js).await?;
    let steps = ensure_stream(
        js,
        stream::Config {
            name: subjects::STEPS_STREAM.into(),
            subjects: vec![subjects::STEPS_WILDCARD.into()],
            retention: RetentionPolicy::WorkQueue,
            storage: opts.storage,
            num_replicas: opts.replicas,
            duplicate_window: opts.steps_duplicate_window,
            ..Default::default()
        },
    )
    .await?;
    let results = ensure_stream(
        js,
        stream::Config {
            name: subjects::RESULTS_STREAM.into(),
            subjects: vec![subjects::RESULTS_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            storage: opts.storage,
            num_replicas: opts.replicas,
            duplicate_window: opts.results_duplicate_window,
            max_age: opts.results_max_age,
            ..Default::default()
        },
    )
    .await?;
    let events = ensure_stream(
        js,
        stream::Config {
            name: subjects::EVENTS_STREAM.into(),
            subjects: vec![subjects::EVENTS_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            storage: opts.storage,
            num_replicas: opts.replicas,
            max_age: opts.events_max_age,
            ..Default::default()
        },
    )
    .await?;
    let checkpoints = ensure_stream(
        js,
        stream::Config {
            name: subjects::CHECKPOINTS_STREAM.into(),
            subjects: vec![subjects::CHECKPOINTS_WILDCARD.into()],
            retention: RetentionPolicy::Limits,
            storage: opts.storage,
            num_replicas: opts.replicas,
            // Kept forever, and nobody (the service included) may delete or
            // purge a message: an insider who rewrites the log cannot take
            // back the heads the service signed before.
            deny_delete: true,
            deny_purge: true,
            ..Default::default()
        },
    )
    .await?;
    let workflow_consumer = ensure_consumer(
        &results,
        pull::Config {
            durable_name: Some(subjects::WORKFLOW_CONSUMER.into()),
            filter_subject: subjects::RESULTS_WILDCARD.into(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: opts.workflow_ack_wait,
            max_deliver: -1,
            ..Default::default()
        },
    )
    .await?;
    let presence = ensure_bucket(
        js,
        kv::Config {
            bucket: subjects::PRESENCE_BUCKET.into(),
            description: "Baton executors: presence records expiring without heartbeat".into(),
            history: 1,
            max_age: opts.presence_ttl,
            storage: opts.storage,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    let claims = ensure_bucket(
        js,
        kv::Config {
            bucket: subjects::CLAIMS_BUCKET.into(),
            description: "Baton step claims: which executor may run a step attempt".into(),
            history: 1,
            max_age: opts.claims_max_age,
            storage: opts.storage,
            num_replicas: opts.replicas,
            ..Default::default()
        },
    )
    .await?;
    Ok(Handles {
        steps,
        results,
        events,
        checkpoints,
        workflow_consumer,
        presence,
        claims,
    })
}

/// Create or check the durable pull consumer `exec-<group>` on `BATON_STEPS`,
/// filtered to `baton.step.<group>`. Every executor of the group binds it.
pub async fn ensure_group_consumer(
    js: &jetstream::Context,
    group: &str,
    opts: &Options,
) -> Result<jetstream::consumer::PullConsumer, ProtocolError> {
    subjects::check_name("executor group", group)?;
    let steps = js
        .get_stream(subjects::STEPS_STREAM)
        .await
        .map_err(|e| setup_error("get stream", subjects::STEPS_STREAM, e))?;
    ensure_consumer(&steps, group_consumer_config(group, opts)).await
}

/// The group consumer's configuration.
fn group_consumer_config(group: &str, opts: &Options) -> pull::Config {
    pull::Config {
        durable_name: Some(subjects::group_consumer(group)),
        filter_subject: subjects::step(group),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: opts.executor_ack_wait,
        // Never drop a step: the executor ledger makes redelivery harmless.
        max_deliver: -1,
        ..Default::default()
    }
}

/// What an executor works with, from [`attach_executor`].
#[derive(Debug, Clone)]
pub struct ExecutorHandles {
    /// Its group's durable consumer `exec-<group>` on `BATON_STEPS`.
    pub consumer: jetstream::consumer::PullConsumer,
    /// The presence bucket.
    pub presence: kv::Store,
    /// How long a presence record lives without a heartbeat (the bucket's
    /// max age, as the service created it; zero: forever).
    pub presence_ttl: Duration,
    /// The step claims bucket.
    pub claims: kv::Store,
}

/// Attach an executor of `group` with least privilege: check the server,
/// look up (never create or update) `BATON_STEPS` and the presence and
/// claims buckets, and create or get only the group consumer `exec-<group>`
/// (with `opts.executor_ack_wait` when it creates it). The calls it makes are
/// listed in this module's documentation.
///
/// [`ProtocolError::NotCreated`] while the workflow service has not created
/// the streams yet: wait and call again.
pub async fn attach_executor(
    js: &jetstream::Context,
    group: &str,
    opts: &Options,
) -> Result<ExecutorHandles, ProtocolError> {
    subjects::check_name("executor group", group)?;
    check_server(js).await?;
    let steps = find_stream(js, "stream", subjects::STEPS_STREAM).await?;
    check_semantics(
        &steps,
        RetentionPolicy::WorkQueue,
        &[subjects::STEPS_WILDCARD.to_string()],
    )?;
    let presence_stream = find_stream(
        js,
        "KV bucket",
        &format!("KV_{}", subjects::PRESENCE_BUCKET),
    )
    .await?;
    let presence_ttl = presence_stream.cached_info().config.max_age;
    let presence = open_bucket(js, subjects::PRESENCE_BUCKET).await?;
    find_stream(js, "KV bucket", &format!("KV_{}", subjects::CLAIMS_BUCKET)).await?;
    let claims = open_bucket(js, subjects::CLAIMS_BUCKET).await?;
    let consumer = ensure_consumer(&steps, group_consumer_config(group, opts)).await?;
    Ok(ExecutorHandles {
        consumer,
        presence,
        presence_ttl,
        claims,
    })
}

/// Look a stream up: [`ProtocolError::NotCreated`] when it does not exist.
async fn find_stream(
    js: &jetstream::Context,
    kind: &'static str,
    name: &str,
) -> Result<stream::Stream, ProtocolError> {
    match js.get_stream(name).await {
        Ok(found) => Ok(found),
        Err(e) if is_not_found(&e) => Err(ProtocolError::NotCreated {
            kind,
            name: name.to_string(),
        }),
        Err(e) => Err(setup_error("get stream", name, e)),
    }
}

async fn open_bucket(js: &jetstream::Context, bucket: &str) -> Result<kv::Store, ProtocolError> {
    js.get_key_value(bucket)
        .await
        .map_err(|e| setup_error("open KV bucket", bucket, e))
}

/// Refuse a stream whose retention or subjects are not the contract's.
fn check_semantics(
    existing: &stream::Stream,
    retention: RetentionPolicy,
    subjects: &[String],
) -> Result<(), ProtocolError> {
    let have = &existing.cached_info().config;
    incompatible_if_any(&have.name, semantic_problems(have, retention, subjects))
}

/// Refuse servers older than [`MIN_SERVER_VERSION`] and servers or accounts
/// without JetStream.
pub async fn check_server(js: &jetstream::Context) -> Result<(), ProtocolError> {
    let version = js.client().server_info().version;
    if !version_at_least(&version, MIN_SERVER_VERSION) {
        return Err(ProtocolError::ServerTooOld {
            found: if version.is_empty() {
                "(unknown)".into()
            } else {
                version
            },
            needed: "2.10",
        });
    }
    js.query_account()
        .await
        .map_err(|source| ProtocolError::JetStreamUnavailable { source })?;
    Ok(())
}

/// Whether a `major.minor.patch[-suffix]` version is at least `min`.
fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

fn setup_error(
    action: &'static str,
    name: &str,
    source: impl Into<async_nats::Error>,
) -> ProtocolError {
    ProtocolError::Setup {
        action,
        name: name.to_string(),
        source: source.into(),
    }
}

fn is_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<stream::Stream, ProtocolError> {
    match js.get_stream(&want.name).await {
        Ok(existing) => check_stream(existing, &want),
        Err(e) if is_not_found(&e) => match js.create_stream(want.clone()).await {
            Ok(created) => Ok(created),
            // Another process (the service, a sibling executor) may have
            // created it meanwhile, perhaps with other tunables: check theirs.
            Err(create_err) => match js.get_stream(&want.name).await {
                Ok(existing) => check_stream(existing, &want),
                Err(_) => Err(setup_error("create stream", &want.name, create_err)),
            },
        },
        Err(e) => Err(setup_error("get stream", &want.name, e)),
    }
}

/// Accept an existing stream whose semantics match `want`.
fn check_stream(
    existing: stream::Stream,
    want: &stream::Config,
) -> Result<stream::Stream, ProtocolError> {
    let have = &existing.cached_info().config;
    let mut problems = semantic_problems(have, want.retention, &want.subjects);
    problems.extend(replica_problem(have, want.num_replicas));
    if have.storage != want.storage {
        problems.push(format!(
            "storage {:?}, expected {:?}",
            have.storage, want.storage
        ));
    }
    // An append-only stream that someone made deletable is no anchor.
    if (want.deny_delete && !have.deny_delete) || (want.deny_purge && !have.deny_purge) {
        problems.push(format!(
            "deny_delete {} and deny_purge {}, expected both true",
            have.deny_delete, have.deny_purge
        ));
    }
    incompatible_if_any(&want.name, problems)?;
    Ok(existing)
}

/// Where a stream's retention or subjects differ from the contract's.
fn semantic_problems(
    have: &stream::Config,
    retention: RetentionPolicy,
    subjects: &[String],
) -> Vec<String> {
    let mut problems = Vec::new();
    if have.retention != retention {
        problems.push(format!(
            "retention {:?}, expected {retention:?}",
            have.retention
        ));
    }
    if have.subjects != subjects {
        problems.push(format!(
            "subjects {:?}, expected {subjects:?}",
            have.subjects
        ));
    }
    problems
}

/// Where an existing stream's (or bucket's) replica count is not the one
/// wanted. A stream created without one has 1 (the server's default).
fn replica_problem(have: &stream::Config, want: usize) -> Option<String> {
    let have = have.num_replicas.max(1);
    (have != want.max(1)).then(|| {
        format!(
            "{have} replicas, expected {want} (the workflow service's --nats-replicas; \
             give it the count the streams have, or change theirs with `nats stream edit --replicas`)"
        )
    })
}

fn incompatible_if_any(name: &str, problems: Vec<String>) -> Result<(), ProtocolError> {
    if problems.is_empty() {
        return Ok(());
    }
    Err(ProtocolError::Incompatible {
        kind: "stream",
        name: name.to_string(),
        detail: problems.join(", "),
    })
}

async fn ensure_consumer(
    stream: &stream::Stream,
    want: pull::Config,
) -> Result<jetstream::consumer::PullConsumer, ProtocolError> {
    let name = want.durable_name.clone().unwrap_or_default();
    let consumer: jetstream::consumer::PullConsumer =
        match stream.get_or_create_consumer(&name, want.clone()).await {
            Ok(consumer) => consumer,
            // Created by another process meanwhile (perhaps with another
            // ack_wait): use theirs if its semantics match.
            Err(create_err) => stream
                .get_consumer(&name)
                .await
                .map_err(|_| setup_error("create or get consumer", &name, create_err))?,
        };
    let have = &consumer.cached_info().config;
    // max_deliver too: a consumer made elsewhere with a finite one would drop a step or a result for good after
    // that many deliveries (a result handed back while the service recovers is delivered again and again).
    if have.filter_subject != want.filter_subject
        || have.ack_policy != want.ack_policy
        || have.max_deliver != want.max_deliver
    {
        return Err(ProtocolError::Incompatible {
            kind: "consumer",
            name,
            detail: format!(
                "filter {:?} ack policy {:?} max deliver {}, expected filter {:?} ack policy {:?} max deliver {}",
                have.filter_subject,
                have.ack_policy,
                have.max_deliver,
                want.filter_subject,
                want.ack_policy,
                want.max_deliver
            ),
        });
    }
    Ok(consumer)
}

async fn ensure_bucket(
    js: &jetstream::Context,
    want: kv::Config,
) -> Result<kv::Store, ProtocolError> {
    let bucket = want.bucket.clone();
    let stream_name = format!("KV_{bucket}");
    let open = || async {
        js.get_key_value(&bucket)
            .await
            .map_err(|e| setup_error("open KV bucket", &bucket, e))
    };
    match js.get_stream(&stream_name).await {
        Ok(existing) => {
            let have = &existing.cached_info().config;
            if let Some(detail) = replica_problem(have, want.num_replicas) {
                return Err(ProtocolError::Incompatible {
                    kind: "KV bucket",
                    name: bucket,
                    detail,
                });
            }
            open().await
        }
        Err(e) if is_not_found(&e) => match js.create_key_value(want).await {
            Ok(store) => Ok(store),
            // Created by another process meanwhile: use theirs.
            Err(create_err) => match open().await {
                Ok(store) => Ok(store),
                Err(_) => Err(setup_error("create KV bucket", &bucket, create_err)),
            },
        },
        Err(e) => Err(setup_error("get KV bucket stream", &stream_name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_compared_by_major_and_minor() {
        assert!(version_at_least("2.12.8", (2, 10)));
        assert!(version_at_least("2.10.0-beta.1", (2, 10)));
        assert!(version_at_least("3.0.0", (2, 10)));
        assert!(!version_at_least("2.9.10", (2, 10)));
        assert!(!version_at_least("", (2, 10)));
        assert!(!version_at_least("garbage", (2, 10)));
    }

    #[test]
    fn a_replica_count_other_than_the_wanted_one_is_a_problem_that_names_the_flag() {
        let with = |n| stream::Config {
            num_replicas: n,
            ..Default::default()
        };
        assert_eq!(replica_problem(&with(3), 3), None);
        // Created without a count: the server's default, 1.
        assert_eq!(replica_problem(&with(0), 1), None);
        let problem = replica_problem(&with(1), 3).unwrap();
        assert!(problem.starts_with("1 replicas, expected 3"), "{problem}");
        assert!(problem.contains("--nats-replicas"), "{problem}");
        assert!(replica_problem(&with(3), 1).is_some());
    }
}
