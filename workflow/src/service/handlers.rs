//! The API on `baton.api.<verb>`: decode the request, hand it to the right
//! upgrade loop (or read the log), reply with an [`ApiReply`].
//!
//! Malformed requests are answered with a rejection and counted; they never
//! stop the service.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use ulid::Ulid;

use super::api::{
    ApiReply, ErrorKind, EventsPage, EventsRequest, ExecutorView, ExecutorsRequest, ListPage,
    ListRequest, LoggedEvent, OperatorRequest, StatusView, SubmitRequest, UpgradeRef,
    MAX_REQUEST_BYTES, PAGE_BYTES,
};
use super::api_guard::Caller;
use super::history;
use super::registry::NodeIdentity;
use super::upgrade::{self, Command};
use super::{now_ms, view, ServiceError, Shared, SERVICE_STREAM};
use crate::core::{self, ClusterFile, Gate, Input, Resolution, State};

/// At most this many API requests are handled at once (authenticated,
/// decided, answered); past it the next request waits on the subscription
/// until one is answered. Reads run side by side; writes are ordered per
/// upgrade by [`Lanes`].
pub(crate) const MAX_IN_FLIGHT: usize = 64;

/// How long a stopping service waits for the requests in flight to be
/// answered (the loops stop at once, so a write answers "stopping") before it
/// drops them unanswered.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Refused requests since the service started, for the logs.
#[derive(Default)]
struct Refusals {
    malformed: AtomicU64,
    unauthenticated: AtomicU64,
}

impl Refusals {
    fn malformed(&self) -> u64 {
        self.malformed.fetch_add(1, Ordering::Relaxed) + 1
    }
    fn unauthenticated(&self) -> u64 {
        self.unauthenticated.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Answers API requests until shutdown, up to [`MAX_IN_FLIGHT`] at once.
///
/// Ordering: requests are taken from the subscription in the order NATS
/// delivers them. Reads (`status`, `list`, `events`, `executors`, `audit`,
/// `checkpoints`, `mirror`) run concurrently and read what is durable.
/// Writes keep the order in which they arrived, per upgrade: a write waits
/// until the previous write to the same upgrade is in that upgrade's loop
/// queue (or refused) before it enqueues its own input, so the loop applies
/// them in arrival order; submissions (`submit`, `plan`) likewise claim their
/// cluster and nodes in arrival order, then wait for their loops side by side.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut requests: async_nats::Subscriber,
) -> Result<(), ServiceError> {
    let refusals = Arc::new(Refusals::default());
    let mut in_flight: JoinSet<()> = JoinSet::new();
    let mut lanes = Lanes::default();
    let result = loop {
        while let Some(done) = in_flight.try_join_next() {
            if let Err(join) = done {
                break_on_panic(join)?;
            }
        }
        if in_flight.len() >= MAX_IN_FLIGHT {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break Ok(()),
                Some(done) = in_flight.join_next() => {
                    if let Err(join) = done {
                        break_on_panic(join)?;
                    }
                }
            }
            continue;
        }
        let message = tokio::select! {
            _ = shared.shutdown.cancelled() => break Ok(()),
            message = requests.next() => match message {
                Some(message) => message,
                None => break Ok(()),
            },
        };
        let Some(reply_to) = message.reply.clone() else {
            let malformed = refusals.malformed();
            tracing::warn!(subject = %message.subject, malformed, "API request without a reply subject ignored");
            continue;
        };
        let verb = message
            .subject
            .as_str()
            .strip_prefix("baton.api.")
            .unwrap_or_default()
            .to_string();
        if let Err(reason) = super::api_guard::check_reply_subject(&message) {
            // The service answers only into the signer's own inbox: anything else
            // would let a caller make the service publish where it chose.
            let unauthenticated = refusals.unauthenticated();
            tracing::warn!(%verb, reply_to = %reply_to, %reason, unauthenticated, "API request refused and not answered: reply subject not the signer's inbox");
            continue;
        }
        // Taken here, in arrival order; passed once the write is queued.
        let turn = lanes.turn(&verb, &message.payload);
        in_flight.spawn(answer(
            shared.clone(),
            refusals.clone(),
            message,
            verb,
            turn,
        ));
    };
    // Let the requests in flight answer (briefly), then drop the rest.
    let drained = tokio::time::timeout(DRAIN, async {
        while in_flight.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = in_flight.len(),
            "API requests still in flight at shutdown were dropped unanswered"
        );
        in_flight.shutdown().await;
    }
    result
}

fn break_on_panic(join: tokio::task::JoinError) -> Result<(), ServiceError> {
    if join.is_panic() {
        return Err(ServiceError::Internal(format!(
            "an API request's task panicked: {join}"
        )));
    }
    Ok(())
}

/// Authenticates one request, handles it and sends the signed reply.
async fn answer(
    shared: Arc<Shared>,
    refusals: Arc<Refusals>,
    message: async_nats::Message,
    verb: String,
    turn: Turn,
) {
    let Some(reply_to) = message.reply.clone() else {
        return;
    };
    let (reply, request_sig) = match super::api_guard::authenticate(
        &shared,
        &message,
        &verb,
        now_ms(),
    ) {
        Err(refused) if refused.sig.is_empty() => {
            // Unsigned or forged: not answered at all. An answer would be the
            // service publishing, under its own permissions, to a subject the
            // sender chose (the reply subject).
            let unauthenticated = refusals.unauthenticated();
            tracing::warn!(%verb, reason = %refused.reason, reply_to = %reply_to, unauthenticated, "API request refused and not answered: no valid signature");
            return;
        }
        Err(refused) => {
            let unauthenticated = refusals.unauthenticated();
            tracing::warn!(%verb, reason = %refused.reason, reply_to = %reply_to, unauthenticated, "API request refused: not an authenticated operator allowed to do this");
            (
                ApiReply::error(
                    ErrorKind::Rejected,
                    format!("not allowed: {}", refused.reason),
                ),
                refused.sig,
            )
        }
        Ok((caller, sig)) => {
            let reply = match handle(&shared, &verb, &caller, &message.payload, turn).await {
                Ok(reply) => reply,
                Err(HandlerError::BadRequest(reason)) => {
                    let malformed = refusals.malformed();
                    tracing::warn!(%verb, %reason, malformed, "malformed API request rejected");
                    ApiReply::error(ErrorKind::Rejected, reason)
                }
                Err(HandlerError::Service(err)) => {
                    let text = super::anyhow_chain(&err);
                    tracing::error!(%verb, error = %text, "API request failed");
                    if matches!(err, ServiceError::FailClosed { .. }) {
                        shared.shutdown.cancel();
                    }
                    ApiReply::error(ErrorKind::Internal, text)
                }
            };
            (reply, sig)
        }
    };
    let payload = serde_json::to_vec(&reply).unwrap_or_default();
    let headers =
        super::api_guard::reply_headers(&shared, reply_to.as_str(), &request_sig, &payload);
    if let Err(err) = shared
        .nats
        .publish_with_headers(reply_to, headers, payload.into())
        .await
    {
        tracing::warn!(%verb, error = %err, "could not send an API reply");
    }
}

/// The order of writes, per upgrade (and one lane for submissions): each
/// write takes a [`Turn`] in arrival order, behind the previous write of its
/// lane. Holds at most one pending entry per request in flight.
#[derive(Default)]
struct Lanes {
    last: HashMap<String, oneshot::Receiver<()>>,
}

/// The lane of submissions (no upgrade id yet; they claim clusters and nodes).
const SUBMISSIONS: &str = "submit";

impl Lanes {
    /// The turn of a request on `verb` whose payload is `payload`: reads need
    /// none; a write queues behind its lane's last.
    fn turn(&mut self, verb: &str, payload: &[u8]) -> Turn {
        #[derive(serde::Deserialize)]
        struct Names {
            upgrade: String,
        }
        let lane = match verb {
            "submit" | "plan" => SUBMISSIONS.to_string(),
            "pause" | "resume" | "abort" | "approve" | "resolve" => {
                match serde_json::from_slice::<Names>(payload) {
                    Ok(names) => names.upgrade,
                    // Refused as malformed before it reaches a loop.
                    Err(_) => return Turn::default(),
                }
            }
            _ => return Turn::default(),
        };
        if self.last.len() > 2 * MAX_IN_FLIGHT {
            // A lane whose last write has passed its turn is idle.
            self.last.retain(|_, passed| {
                matches!(passed.try_recv(), Err(oneshot::error::TryRecvError::Empty))
            });
        }
        let (done, passed) = oneshot::channel();
        Turn {
            after: self.last.insert(lane, passed),
            done: Some(done),
        }
    }
}

/// A write's place in its lane: wait for the previous write, pass (or drop)
/// once this one is queued.
#[derive(Default)]
pub(super) struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits until the previous write of the lane passed its turn.
    async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            // Passed or dropped: either way it is queued or refused.
            let _ = previous.await;
        }
    }

    /// Lets the next write of the lane go on (dropping the turn does too).
    fn pass(&mut self) {
        self.done.take();
    }
}

pub(super) enum HandlerError {
    BadRequest(String),
    Service(ServiceError),
}

impl From<ServiceError> for HandlerError {
    fn from(err: ServiceError) -> Self {
        HandlerError::Service(err)
    }
}

impl From<store::StoreError> for HandlerError {
    fn from(err: store::StoreError) -> Self {
        HandlerError::Service(err.into())
    }
}

fn decode<T: serde::de::DeserializeOwned>(verb: &str, payload: &[u8]) -> Result<T, HandlerError> {
    serde_json::from_slice(payload)
        .map_err(|err| HandlerError::BadRequest(format!("malformed `{verb}` request: {err}")))
}

async fn handle(
    shared: &Arc<Shared>,
    verb: &str,
    caller: &Caller,
    payload: &[u8],
    mut turn: Turn,
) -> Result<ApiReply, HandlerError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(HandlerError::BadRequest(format!(
            "the `{verb}` request is {} bytes; the limit is {MAX_REQUEST_BYTES} bytes",
            payload.len()
        )));
    }
    match verb {
        "submit" | "plan" => submit(shared, verb, caller, decode(verb, payload)?, turn).await,
        "status" => {
            let request: UpgradeRef = decode(verb, payload)?;
            check_upgrade_id(&request.upgrade)?;
            Ok(match status(shared, &request.upgrade).await? {
                Some(view) => ApiReply::ok(&*view),
                None => not_found(&request.upgrade),
            })
        }
        "list" => Ok(ApiReply::ok(&list(shared, decode(verb, payload)?)?)),
        "pause" | "resume" | "abort" | "approve" | "resolve" => {
            let request: OperatorRequest = decode(verb, payload)?;
            check_upgrade_id(&request.upgrade)?;
            turn.wait().await;
            operator(shared, verb, caller, request, turn).await
        }
        "events" => {
            let request: EventsRequest = decode(verb, payload)?;
            check_upgrade_id(&request.upgrade)?;
            // A page reads up to PAGE_BYTES from the log: off the runtime's threads.
            let shared = shared.clone();
            tokio::task::spawn_blocking(move || events(&shared, request))
                .await
                .map_err(|err| ServiceError::Internal(format!("events task failed: {err}")))?
        }
        "executors" => {
            // Older clients send `{}` or nothing readable: the group names.
            let request: ExecutorsRequest = serde_json::from_slice(payload).unwrap_or_default();
            Ok(if request.detail {
                ApiReply::ok(&executors_detail(shared).await)
            } else {
                ApiReply::ok(&executors_online(shared).await)
            })
        }
        "checkpoints" => Ok(ApiReply::ok(
            &stream_page(
                shared,
                protocol::subjects::CHECKPOINTS_STREAM,
                decode(verb, payload)?,
            )
            .await?,
        )),
        "mirror" => Ok(ApiReply::ok(
            &stream_page(
                shared,
                protocol::subjects::EVENTS_STREAM,
                decode(verb, payload)?,
            )
            .await?,
        )),
        "audit" => {
            let _quiet = shared.append_gate.write().await;
            let store = shared.store.clone();
            let key = shared.trust.service.key.clone();
            let verified = tokio::task::spawn_blocking(move || {
                store.verify().map(|report| {
                    let checkpoints =
                        super::checkpoint::verify_log(&store, SERVICE_STREAM, Some(&key));
                    (report, checkpoints)
                })
            })
            .await
            .map_err(|err| ServiceError::Internal(format!("verify task failed: {err}")))?;
            Ok(match verified {
                Ok((report, Ok(summary))) => {
                    let mut view = view::verify_view(&report);
                    view["report"] = format!("{report}; {summary}").into();
                    ApiReply::ok(&view)
                }
                Ok((_, Err(bad))) => ApiReply::ok(&serde_json::json!({
                    "clean": false,
                    "report": bad.to_string(),
                })),
                // Corruption is an answer, not a service failure.
                Err(err @ store::StoreError::Corruption { .. }) => ApiReply::ok(&serde_json::json!({
                    "clean": false,
                    "report": super::anyhow_chain(&err),
                })),
                Err(err) => return Err(err.into()),
            })
        }
        other => Err(HandlerError::BadRequest(format!(
            "unknown API verb `{other}` (known: submit, plan, status, list, pause, resume, abort, approve, resolve, events, executors, audit, checkpoints, mirror)"
        ))),
    }
}

/// An upgrade id that enters through the API must be one NATS subject token (it becomes `baton.result.<id>`
/// and `baton.event.<id>`) and a ULID (the service makes them so); anything else is a rejection, counted and
/// logged by `serve` as a malformed request, before it reaches a loop or the log.
fn check_upgrade_id(upgrade: &str) -> Result<(), HandlerError> {
    protocol::subjects::validate_token(upgrade).map_err(|reason| {
        HandlerError::BadRequest(format!(
            "invalid upgrade id {upgrade:?}: {reason} (upgrade ids are ULIDs, as `baton list` shows them)"
        ))
    })?;
    if upgrade::stream_of(upgrade).is_none() {
        return Err(HandlerError::BadRequest(format!(
            "invalid upgrade id {upgrade:?}: not a ULID (upgrade ids are ULIDs, as `baton list` shows them)"
        )));
    }
    Ok(())
}

fn not_found(upgrade: &str) -> ApiReply {
    ApiReply::error(
        ErrorKind::NotFound,
        format!("no upgrade {upgrade} in the log"),
    )
}

async fn submit(
    shared: &Arc<Shared>,
    verb: &str,
    caller: &Caller,
    request: SubmitRequest,
    mut turn: Turn,
) -> Result<ApiReply, HandlerError> {
    // Clusters and nodes are claimed in the order submissions arrived.
    turn.wait().await;
    let mut cluster = match ClusterFile::parse(&request.cluster_file, &request.cluster_toml) {
        Ok(cluster) => cluster,
        Err(err) => return Ok(ApiReply::error(ErrorKind::Rejected, err.to_string())),
    };
    if let Err(why) = attach_profile(&mut cluster, request.profile_text) {
        return Ok(ApiReply::error(ErrorKind::Rejected, why));
    }
    if let Some(why) = executors_serving_another_profile(&cluster, &presence_records(shared).await)
    {
        return Ok(ApiReply::error(ErrorKind::Rejected, why));
    }
    let mut gates = Vec::new();
    for name in &request.approve_before {
        match Gate::from_name(name) {
            Some(gate) => gates.push(gate),
            None => {
                return Ok(ApiReply::error(
                    ErrorKind::Rejected,
                    format!("unknown gate `{name}` (the gates are after-first-follower and before-switchover)"),
                ))
            }
        }
    }
    let upgrade = Ulid::new().to_string();
    let cluster_name = cluster.name.clone();
    // The lock is on node identity (address, executor group), then on the name.
    let nodes: Vec<NodeIdentity> = cluster.nodes.iter().map(NodeIdentity::from).collect();
    if let Err(held) = shared.registry.claim_nodes(&upgrade, &cluster_name, &nodes) {
        return Ok(ApiReply::error(
            ErrorKind::Rejected,
            format!("cluster {cluster_name} overlaps an upgrade in progress: {held}; wait for it, or abort it first"),
        ));
    }
    let handle = match upgrade::start_new(shared, &upgrade, &cluster_name).await {
        Ok(handle) => handle,
        Err(holder) => {
            shared.registry.release(&upgrade);
            return Ok(ApiReply::error(
                ErrorKind::Rejected,
                format!("cluster {cluster_name} already has upgrade {holder} in progress; wait for it, or abort it first"),
            ));
        }
    };
    // Claimed: the next submission may claim (presence and the loop's
    // decision, below, run side by side with other submissions').
    turn.pass();
    let input = Input::Submit {
        upgrade: upgrade.clone(),
        cluster,
        package: request.package.unwrap_or_default(),
        target_version: request.target_version,
        gates,
        plan_only: request.plan_only || verb == "plan",
        expected_plan_hash: request.plan_hash,
        executors_online: executors_online(shared).await,
        requested_by: caller.name.clone(),
        now_ms: now_ms(),
    };
    let (tx, rx) = oneshot::channel();
    let sent = handle
        .send(Command::Input {
            input: Box::new(input),
            reply: tx,
        })
        .await;
    let answer = match (sent, rx.await) {
        (Ok(()), Ok(answer)) => answer,
        _ => {
            shared.registry.release(&upgrade);
            return Ok(ApiReply::error(
                ErrorKind::Internal,
                "the service is stopping",
            ));
        }
    };
    match answer {
        Ok(()) => Ok(ApiReply::ok(&UpgradeRef { upgrade })),
        Err(rejection) => {
            shared.registry.release(&upgrade);
            Ok(ApiReply::error(ErrorKind::Rejected, rejection.to_string()))
        }
    }
}

/// Why the executors of this cluster's groups would refuse its steps, if their presence records say they serve
/// another profile than the submission's (another file, another version of it, or built-in against a file):
/// a clear refusal before anything is recorded or run, instead of a halt at the first step. Executors whose
/// records do not say (built before the field) are not judged here; each still refuses such steps itself.
fn executors_serving_another_profile(
    cluster: &ClusterFile,
    online: &[(protocol::Presence, String)],
) -> Option<String> {
    // A profile that does not load is the core's to refuse, with its own words.
    let ours = crate::core::Profile::of_cluster(cluster).ok()?;
    let groups: std::collections::BTreeSet<&str> =
        cluster.nodes.iter().map(|n| n.executor.as_str()).collect();
    let describe = |name: &str, sha: Option<&str>| match sha {
        Some(sha) => format!("profile `{name}` (sha256 {sha})"),
        None => format!("the built-in profile `{name}`"),
    };
    let mismatched: Vec<String> = online
        .iter()
        .filter(|(p, _)| groups.contains(p.group.as_str()))
        .filter_map(|(p, _)| {
            let served = p.profile.as_ref()?;
            (served.sha256.as_deref() != ours.source_sha256.as_deref()).then(|| {
                format!(
                    "executor {} (group {}) serves {}",
                    p.id,
                    p.group,
                    describe(&served.name, served.sha256.as_deref())
                )
            })
        })
        .collect();
    if mismatched.is_empty() {
        return None;
    }
    Some(format!(
        "this submission's profile is {}, but {}: they would refuse every step of it (the service reads a step's \
         output with the submission's parsers, so executors run only steps planned with their own profile). \
         Submit with the profile file the executors serve, or restart them with this one.",
        describe(&cluster.profile, ours.source_sha256.as_deref()),
        mismatched.join("; ")
    ))
}

/// Puts the profile file's text that came with a submission into its cluster file (the core loads the profile
/// from it and refuses a profile file without it, saying so). Refused: a text over the profile file's size limit,
/// and a text for a cluster file that names a built-in profile (it would be recorded and never used).
fn attach_profile(cluster: &mut ClusterFile, text: Option<String>) -> Result<(), String> {
    use crate::core::profile_file::MAX_PROFILE_FILE_BYTES;
    let Some(text) = text else {
        return Ok(());
    };
    if text.len() > MAX_PROFILE_FILE_BYTES {
        return Err(format!(
            "the profile file's text is {} bytes; a profile file may have at most {MAX_PROFILE_FILE_BYTES}",
            text.len()
        ));
    }
    if !cluster.profile_is_file() {
        return Err(format!(
            "a profile file's text came with the submission, but the cluster file names the built-in profile `{}`",
            cluster.profile
        ));
    }
    cluster.profile_text = Some(text);
    Ok(())
}

async fn operator(
    shared: &Arc<Shared>,
    verb: &str,
    caller: &Caller,
    request: OperatorRequest,
    mut turn: Turn,
) -> Result<ApiReply, HandlerError> {
    let now_ms = now_ms();
    let by = caller.name.clone();
    let input = match verb {
        "pause" => Input::Pause {
            by,
            reason: request.reason.unwrap_or_default(),
            now_ms,
        },
        "resume" => Input::Resume { by, now_ms },
        "abort" => Input::Abort {
            by,
            reason: request
                .reason
                .ok_or_else(|| HandlerError::BadRequest("abort needs a reason".into()))?,
            now_ms,
        },
        "approve" => {
            let name = request
                .gate
                .ok_or_else(|| HandlerError::BadRequest("approve needs a gate".into()))?;
            let gate = Gate::from_name(&name)
                .ok_or_else(|| {
                    HandlerError::BadRequest(format!(
                        "unknown gate `{name}` (the gates are after-first-follower and before-switchover)"
                    ))
                })?;
            Input::Approve { gate, by, now_ms }
        }
        "resolve" => {
            let step = request
                .step
                .ok_or_else(|| HandlerError::BadRequest("resolve needs a step".into()))?;
            let resolution = match request.resolution.as_deref() {
                Some("succeeded") => Resolution::Succeeded,
                Some("failed") => Resolution::Failed,
                Some("retry") => Resolution::Retry,
                other => {
                    return Err(HandlerError::BadRequest(format!(
                        "resolve needs --as succeeded|failed|retry, got {other:?}"
                    )))
                }
            };
            Input::Resolve {
                step,
                resolution,
                by,
                why: request.reason.unwrap_or_default(),
                now_ms,
            }
        }
        _ => unreachable!("operator verbs are matched by the caller"),
    };
    let Some(handle) = shared.registry.get(&request.upgrade) else {
        return Ok(match status(shared, &request.upgrade).await? {
            Some(view) => ApiReply::error(
                ErrorKind::Rejected,
                format!("upgrade {} is {}", request.upgrade, view.status),
            ),
            None => not_found(&request.upgrade),
        });
    };
    let (tx, rx) = oneshot::channel();
    let sent = handle
        .send(Command::Input {
            input: Box::new(input),
            reply: tx,
        })
        .await;
    // In the loop's queue (which it works in order): the next write to this
    // upgrade may go.
    turn.pass();
    if sent.is_err() {
        return Ok(ApiReply::error(
            ErrorKind::Internal,
            "the upgrade's loop has stopped",
        ));
    }
    Ok(match rx.await {
        Ok(Ok(())) => match status(shared, &request.upgrade).await? {
            Some(view) => ApiReply::ok(&*view),
            None => not_found(&request.upgrade),
        },
        Ok(Err(rejection)) => ApiReply::error(ErrorKind::Rejected, rejection.to_string()),
        Err(_) => ApiReply::error(ErrorKind::Internal, "the upgrade's loop has stopped"),
    })
}

/// The view of an upgrade: the one kept as its events were appended
/// (`history::Summaries`); else, for a loop that has appended nothing yet, its
/// state; else (a finished upgrade whose view was let go) its log.
pub(super) async fn status(
    shared: &Arc<Shared>,
    upgrade: &str,
) -> Result<Option<Arc<StatusView>>, HandlerError> {
    if let Some(view) = shared.summaries.view(upgrade) {
        return Ok(Some(view));
    }
    if let Some(handle) = shared.registry.get(upgrade) {
        let (tx, rx) = oneshot::channel();
        if handle.send(Command::Snapshot { reply: tx }).await.is_ok() {
            if let Ok((state, head)) = rx.await {
                return Ok(Some(Arc::new(view::status_view(upgrade, &state, head))));
            }
        }
    }
    let Some(stream) = upgrade::stream_of(upgrade) else {
        return Err(HandlerError::BadRequest(format!(
            "`{upgrade}` is not an upgrade id (a ULID)"
        )));
    };
    if stream == SERVICE_STREAM {
        return Ok(None);
    }
    let events = upgrade::load_events(shared, stream)?;
    if events.is_empty() {
        return Ok(None);
    }
    let state: State = core::replay(events.iter().map(|(_, e)| e));
    Ok(Some(Arc::new(view::status_view(
        upgrade,
        &state,
        events.len() as u64,
    ))))
}

/// A page of the history, oldest first, filtered by the service (see
/// [`history::page`]), from the kept rows (`history::Summaries`).
fn list(shared: &Arc<Shared>, request: ListRequest) -> Result<ListPage, HandlerError> {
    let filter = history::Filter::of(&request).map_err(HandlerError::BadRequest)?;
    Ok(shared.summaries.page(&request, &filter))
}

fn events(shared: &Arc<Shared>, request: EventsRequest) -> Result<ApiReply, HandlerError> {
    let Some(stream) = upgrade::stream_of(&request.upgrade) else {
        return Err(HandlerError::BadRequest(format!(
            "`{}` is not an upgrade id (a ULID)",
            request.upgrade
        )));
    };
    if shared.store.head(stream)?.is_none() {
        return Ok(not_found(&request.upgrade));
    }
    let limit = request.limit.clamp(1, 1000);
    let mut page = Vec::new();
    let mut next_seq = None;
    let mut bytes = 0;
    for record in shared.store.read(stream, request.from_seq.max(1))? {
        let record = record?;
        if page.len() == limit || bytes > PAGE_BYTES {
            next_seq = Some(record.seq);
            break;
        }
        let text_len = record.bytes.len();
        let text = String::from_utf8(record.bytes).map_err(|_| {
            HandlerError::Service(ServiceError::Internal(format!(
                "upgrade {}, seq {}: the stored event is not UTF-8",
                request.upgrade, record.seq
            )))
        })?;
        let event = serde_json::value::RawValue::from_string(text).map_err(|source| {
            HandlerError::Service(ServiceError::UndecodableEvent {
                upgrade: request.upgrade.clone(),
                seq: record.seq,
                source,
            })
        })?;
        bytes += text_len;
        page.push(LoggedEvent {
            stream: request.upgrade.clone(),
            seq: record.seq,
            prev: hex::encode(record.prev_hash),
            hash: hex::encode(record.hash),
            event,
        });
    }
    Ok(ApiReply::ok(&EventsPage {
        upgrade: request.upgrade,
        events: page,
        next_seq,
    }))
}

/// Presence records refused since the service started (not signed by a pinned executor of the group it
/// names, undecodable, or naming a group or node that is not a valid subject token).
static PRESENCE_REFUSED: AtomicU64 = AtomicU64::new(0);

/// A page of `BATON_CHECKPOINTS` (for `baton audit checkpoint export`) or
/// `BATON_EVENTS` (for `baton audit verify --mirror`): operators may not
/// read JetStream themselves.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamPageRequest {
    /// The stream sequence to start after (0: from the start).
    #[serde(default)]
    after: u64,
}

async fn stream_page(
    shared: &Shared,
    name: &str,
    request: StreamPageRequest,
) -> Result<serde_json::Value, HandlerError> {
    const PAGE: u64 = 256;
    let nats = |err: String| HandlerError::from(ServiceError::Nats(format!("{name}: {err}")));
    let stream = shared
        .js
        .get_stream(name)
        .await
        .map_err(|err| nats(err.to_string()))?;
    let info = stream
        .get_info()
        .await
        .map_err(|err| nats(err.to_string()))?;
    let last = info.state.last_sequence;
    let from = request
        .after
        .saturating_add(1)
        .max(info.state.first_sequence);
    let to = last.min(from.saturating_add(PAGE - 1));
    let mut messages = Vec::new();
    // The page is one NATS message: it ends past PAGE_BYTES (a mirrored
    // event may be hundreds of KiB), always with at least one message.
    let mut bytes = 0;
    let mut read_to = to;
    if info.state.messages > 0 {
        for seq in from..=to {
            if bytes > PAGE_BYTES {
                read_to = seq - 1;
                break;
            }
            let Ok(message) = stream.get_raw_message(seq).await else {
                continue;
            };
            let value = match message
                .subject
                .as_str()
                .strip_prefix(protocol::subjects::event("").as_str())
            {
                // A mirrored event, as the service's start check keeps it: a
                // message that is not JSON or names another upgrade than its
                // subject is reported malformed, not left out.
                Some(upgrade) if name == protocol::subjects::EVENTS_STREAM => {
                    super::mirror::kept(upgrade, &message.payload)
                }
                _ => match serde_json::from_slice::<serde_json::Value>(&message.payload) {
                    Ok(value) => value,
                    Err(_) => continue,
                },
            };
            bytes += value.to_string().len();
            messages.push(value);
        }
    }
    Ok(serde_json::json!({
        "messages": messages,
        "next_after": (read_to < last).then_some(read_to),
    }))
}

/// Executor groups with a live, valid presence record. A record whose group is not a valid subject token
/// (say `x y`) is refused, counted and logged, and never becomes a group the core may publish to.
pub(crate) async fn executors_online(shared: &Shared) -> Vec<String> {
    let mut groups: Vec<String> = presence_records(shared)
        .await
        .into_iter()
        .map(|(presence, _)| presence.group)
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

/// Every live executor with a valid presence record, by group, then name, then id.
async fn executors_detail(shared: &Shared) -> Vec<ExecutorView> {
    let now = now_ms();
    let mut views: Vec<ExecutorView> = presence_records(shared)
        .await
        .into_iter()
        .map(|(p, name)| ExecutorView {
            name,
            id: p.id,
            group: p.group,
            nodes: p.nodes,
            version: p.version,
            host: p.host,
            pid: p.pid,
            started_ms: p.started_ms,
            heartbeat_ms: p.heartbeat_ms,
            heartbeat_age_ms: now.saturating_sub(p.heartbeat_ms),
            running: p.running,
            executed: p.executed,
            rejected: p.rejected,
        })
        .collect();
    views.sort_by(|a, b| (&a.group, &a.name, &a.id).cmp(&(&b.group, &b.name, &b.id)));
    views
}

/// The presence records that open (signed by a pinned executor of the group they name, well formed), with
/// the executor's trusted name; the others are refused, counted and logged. From the watched view
/// (`presence.rs`); read from the bucket directly only until the watch has caught up after a start.
async fn presence_records(shared: &Shared) -> Vec<(protocol::Presence, String)> {
    if let Some(live) = shared.presence_view.live(now_ms()) {
        return live;
    }
    let mut records = Vec::new();
    let Ok(mut keys) = shared.presence.keys().await else {
        return records;
    };
    while let Some(Ok(key)) = keys.next().await {
        if let Ok(Some(value)) = shared.presence.get(&key).await {
            match protocol::presence::open(&value, &key, &shared.trust) {
                Ok(record) => records.push(record),
                Err(err) => presence_refused(&key, &err),
            }
        }
    }
    records
}

/// Counts and logs a presence record that does not open.
pub(crate) fn presence_refused(key: &str, err: &protocol::DecodeError) {
    let refused = PRESENCE_REFUSED.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::warn!(
        %key,
        field = %err.field,
        reason = %err.reason,
        refused,
        "presence record refused"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_ids_from_the_api_must_be_ulid_subject_tokens() {
        assert!(check_upgrade_id(&Ulid::new().to_string()).is_ok());
        for bad in ["", "x y", "a.b", "*", ">", "01J\n", "not-a-ulid"] {
            match check_upgrade_id(bad) {
                Err(HandlerError::BadRequest(reason)) => {
                    assert!(reason.starts_with("invalid upgrade id"), "{reason}")
                }
                _ => panic!("{bad:?} was accepted"),
            }
        }
    }

    #[test]
    fn a_profile_files_text_is_attached_bounded_and_refused_for_a_built_in_profile() {
        use crate::core::profile_file::MAX_PROFILE_FILE_BYTES;
        let file = |profile: &str| {
            ClusterFile::parse(
                "c.toml",
                &format!(
                    "[cluster]\nname = \"c\"\nprofile = \"{profile}\"\n\n[[nodes]]\nname = \"a\"\n\
                     address = \"a\"\nexecutor = \"a\"\n"
                ),
            )
            .unwrap()
        };
        let mut etcd = file("etcd.toml");
        assert_eq!(attach_profile(&mut etcd, None), Ok(()));
        assert_eq!(etcd.profile_text, None);
        let why =
            attach_profile(&mut etcd, Some("#".repeat(MAX_PROFILE_FILE_BYTES + 1))).unwrap_err();
        assert!(
            why.contains(&format!("at most {MAX_PROFILE_FILE_BYTES}")),
            "{why}"
        );
        assert_eq!(attach_profile(&mut etcd, Some("x".into())), Ok(()));
        assert_eq!(etcd.profile_text.as_deref(), Some("x"));
        let mut chef = file("chef-backend");
        let why = attach_profile(&mut chef, Some("x".into())).unwrap_err();
        assert!(why.contains("built-in profile `chef-backend`"), "{why}");
        // Without the text, the core's refusal tells the operator where it comes from.
        let missing = crate::core::Profile::of_cluster(&file("etcd.toml")).unwrap_err();
        assert!(
            missing.contains("`baton submit` and `baton plan` read it"),
            "{missing}"
        );
    }
}
