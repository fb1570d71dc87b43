//! Integration tests: the nats-server configuration `protocol::natsconf`
//! renders from the trust file, enforced by a real nats-server.
//!
//! Each test starts a server with `NatsServer::start_secured` (nkey users,
//! TLS with client certificates) and shows that the *server itself* refuses
//! each role what belongs to the others, and lets each role do its own work.
//! A refusal is the server's permissions-violation error on the refused
//! connection (async-nats delivers it as `Event::ServerError`); each one is
//! awaited with a timeout, so a permission that were granted would fail the
//! test (no error arrives), and the same operation is shown to succeed for
//! the role that should have it.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream, AckKind};
use futures::StreamExt as _;
use protocol::natsconf::{API_QUEUE_GROUP, LEASE_BUCKET};
use protocol::subjects;
use tests::{NatsServer, Secure, ServerErrors};

/// How long a refusal may take to reach the client (it is immediate).
const REFUSED: Duration = Duration::from_secs(5);
/// Bound for anything that should take well under a second.
const SOON: Duration = Duration::from_secs(10);
/// JetStream request timeout for requests the server drops (no reply comes).
const DROPPED: Duration = Duration::from_secs(1);

struct Bus {
    secure: Secure,
    nats: NatsServer,
}

async fn bus() -> Bus {
    let secure = Secure::new(&["g1", "g2"]).expect("keys, trust file and certificates");
    let nats = NatsServer::start_secured(&secure)
        .await
        .expect("secured nats-server starts");
    Bus { secure, nats }
}

/// Short timers, so the tests never wait on production values.
fn setup_options() -> protocol::Options {
    protocol::Options {
        storage: stream::StorageType::Memory,
        ..Default::default()
    }
}

impl Bus {
    fn url(&self) -> String {
        self.nats.url()
    }

    async fn as_service(&self) -> (async_nats::Client, ServerErrors) {
        self.secure
            .connect_watched(&self.url(), Some(&self.secure.service_key))
            .await
            .expect("the service connects")
    }

    async fn as_executor(&self, group: &str) -> (async_nats::Client, ServerErrors) {
        self.secure
            .connect_watched(&self.url(), Some(self.secure.executor_key(group)))
            .await
            .unwrap_or_else(|e| panic!("executor {group} connects: {e}"))
    }

    async fn as_operator(&self, name: &str) -> (async_nats::Client, ServerErrors) {
        self.secure
            .connect_watched(&self.url(), Some(self.secure.operator_key(name)))
            .await
            .unwrap_or_else(|e| panic!("operator {name} connects: {e}"))
    }

    /// The service's JetStream context after it ran `protocol::ensure`.
    async fn service_ensured(&self) -> (jetstream::Context, protocol::setup::Handles) {
        let (client, errors) = self.as_service().await;
        let js = jetstream::new(client);
        let handles = protocol::ensure(&js, &setup_options())
            .await
            .expect("the service creates the streams, consumer and buckets");
        assert_eq!(errors.all(), Vec::<String>::new());
        (js, handles)
    }
}

fn publish_denied(subject: &str) -> String {
    format!("Permissions Violation for Publish to \"{subject}\"")
}

fn subscribe_denied(subject: &str) -> String {
    format!("Permissions Violation for Subscription to \"{subject}\"")
}

/// The server refused something on this connection with an error naming `needle`.
async fn refused(errors: &ServerErrors, needle: &str) {
    assert!(
        errors.wait_for(needle, REFUSED).await,
        "the server did not refuse {needle:?}; its errors: {:?}",
        errors.all()
    );
}

/// A JetStream context whose requests give up soon (refused requests get no reply).
fn short_js(client: &async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(DROPPED)
        .build(client.clone())
}

/// Publish `subject` (plain NATS) and flush.
async fn publish(client: &async_nats::Client, subject: &str) {
    client
        .publish(subject.to_string(), "x".into())
        .await
        .expect("published");
    client.flush().await.expect("flushed");
}

/// Answer every API request received in the service's queue group with "ok".
async fn serve_api(service: async_nats::Client) -> tokio::task::JoinHandle<()> {
    let mut sub = service
        .queue_subscribe(subjects::API_WILDCARD, API_QUEUE_GROUP.to_string())
        .await
        .expect("the service subscribes to the API in its queue group");
    service.flush().await.expect("flushed");
    tokio::spawn(async move {
        while let Some(request) = sub.next().await {
            if let Some(reply) = request.reply {
                let _ = service.publish(reply, "ok".into()).await;
            }
        }
    })
}

#[tokio::test]
async fn connections_need_tls_a_client_certificate_and_a_known_key() {
    let bus = bus().await;
    let url = bus.url();
    let secure = &bus.secure;

    // Every role connects with its key, the CA and the client certificate.
    let mut keys = vec![secure.service_key.clone()];
    keys.extend(secure.executor_keys.values().cloned());
    keys.extend(secure.operator_keys.values().cloned());
    for key in &keys {
        let client = secure.connect(&url, Some(key)).await;
        assert!(client.is_ok(), "{}: {:?}", key.display(), client.err());
    }

    // No key: no anonymous user.
    let err = secure.connect(&url, None).await.unwrap_err().to_string();
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // A valid key that is no user.
    let err = secure
        .connect(&url, Some(&secure.outsider_key))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("authorization"), "{err}");
    // The service's key, TLS, but no client certificate.
    let config = protocol::connect::NatsConfig {
        cert: None,
        cert_key: None,
        ..secure.nats_config(&url, Some(&secure.service_key))
    };
    assert!(
        tests::secure::connect_config(&config, None).await.is_err(),
        "a client without a certificate was accepted"
    );

    // Plain text: the server announces TLS and answers nothing in clear.
    let port = bus.nats.port();
    let reply = tokio::task::spawn_blocking(move || {
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(SOON)).unwrap();
        let mut info = [0u8; 4096];
        let n = tcp.read(&mut info).unwrap();
        let info = String::from_utf8_lossy(&info[..n]).into_owned();
        let _ = tcp.write_all(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false}\r\nPING\r\n",
        );
        let mut rest = Vec::new();
        let read = tcp.read_to_end(&mut rest);
        (
            info,
            read.is_ok(),
            String::from_utf8_lossy(&rest).into_owned(),
        )
    })
    .await
    .unwrap();
    let (info, closed, rest) = reply;
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(closed, "the server kept a plain-text connection open");
    assert!(!rest.contains("PONG"), "answered in plain text: {rest:?}");
}

#[tokio::test]
async fn an_operator_only_sends_api_requests() {
    let bus = bus().await;
    let (js, handles) = bus.service_ensured().await;
    let (service, service_errors) = bus.as_service().await;
    let api = serve_api(service).await;

    for (name, _) in tests::secure::OPERATORS {
        let (operator, errors) = bus.as_operator(name).await;
        // Its own job: an API request, answered by the service (allow_responses).
        let reply =
            tokio::time::timeout(SOON, operator.request(subjects::api("status"), "{}".into()))
                .await
                .expect("answered in time")
                .expect("the service answers an operator's request");
        assert_eq!(&reply.payload[..], b"ok");

        // Steps and results are not its to publish.
        publish(&operator, &subjects::step("g1")).await;
        refused(&errors, &publish_denied("baton.step.g1")).await;
        publish(&operator, &subjects::result("x")).await;
        refused(&errors, &publish_denied("baton.result.x")).await;
        publish(&operator, &subjects::event("x")).await;
        refused(&errors, &publish_denied("baton.event.x")).await;
    }

    let (operator, errors) = bus.as_operator("alice").await;
    // It may not listen to the API, in or out of the service's queue group.
    let _plain = operator.subscribe(subjects::API_WILDCARD).await.unwrap();
    refused(&errors, &subscribe_denied("baton.api.>")).await;
    let _queue = operator
        .queue_subscribe(subjects::API_WILDCARD, API_QUEUE_GROUP.to_string())
        .await
        .unwrap();
    refused(&errors, "using queue \"baton-workflow\"").await;
    // Nor read steps or results directly.
    let _steps = operator.subscribe(subjects::STEPS_WILDCARD).await.unwrap();
    refused(&errors, &subscribe_denied("baton.step.>")).await;
    // Nor use JetStream at all.
    let op_js = short_js(&operator);
    assert!(op_js.query_account().await.is_err());
    refused(&errors, &publish_denied("$JS.API.INFO")).await;
    assert!(op_js.get_stream(subjects::STEPS_STREAM).await.is_err());
    refused(&errors, &publish_denied("$JS.API.STREAM.INFO.BATON_STEPS")).await;

    // Nothing an operator published reached a stream.
    let mut steps = js.get_stream(subjects::STEPS_STREAM).await.unwrap();
    assert_eq!(steps.info().await.unwrap().state.messages, 0);
    let mut results = handles.results.clone();
    assert_eq!(results.info().await.unwrap().state.messages, 0);
    assert_eq!(service_errors.all(), Vec::<String>::new());
    api.abort();
}

#[tokio::test]
async fn an_executor_reaches_only_its_own_group() {
    let bus = bus().await;
    let (js, _handles) = bus.service_ensured().await;
    let opts = setup_options();
    // g2's executor binds its consumer: it exists for g1 to try.
    let (g2, g2_errors) = bus.as_executor("g2").await;
    protocol::ensure_group_consumer(&jetstream::new(g2), "g2", &opts)
        .await
        .expect("g2 binds its own consumer");
    assert_eq!(g2_errors.all(), Vec::<String>::new());

    let (g1, errors) = bus.as_executor("g1").await;
    let g1_js = short_js(&g1);
    let steps = g1_js
        .get_stream(subjects::STEPS_STREAM)
        .await
        .expect("g1 may read the steps stream's info");

    // Another group's consumer: not readable, not pullable, not creatable.
    assert!(steps.get_consumer::<pull::Config>("exec-g2").await.is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.CONSUMER.INFO.BATON_STEPS.exec-g2"),
    )
    .await;
    g1.publish_with_reply(
        "$JS.API.CONSUMER.MSG.NEXT.BATON_STEPS.exec-g2",
        g1.new_inbox(),
        "1".into(),
    )
    .await
    .unwrap();
    refused(
        &errors,
        &publish_denied("$JS.API.CONSUMER.MSG.NEXT.BATON_STEPS.exec-g2"),
    )
    .await;
    assert!(protocol::ensure_group_consumer(&g1_js, "g2", &opts)
        .await
        .is_err());
    let other = |name: &str, filter: &str| pull::Config {
        durable_name: Some(name.to_string()),
        filter_subject: filter.to_string(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    assert!(steps
        .create_consumer(other("exec-g2-copy", "baton.step.g2"))
        .await
        .is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-g2-copy.baton.step.g2"),
    )
    .await;
    // Its own consumer, re-pointed at another group's steps: the subject
    // carries the filter and is refused...
    assert!(steps
        .create_consumer(other("exec-g1", "baton.step.g2"))
        .await
        .is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-g1.baton.step.g2"),
    )
    .await;
    // ...and its own subject with another filter in the body is refused by
    // JetStream (10131: the body's filter must match the subject's; 10137:
    // several filters cannot use the subject form).
    for (body, code) in [
        (
            r#"{"stream_name":"BATON_STEPS","config":{"durable_name":"exec-g1","filter_subject":"baton.step.g2","ack_policy":"explicit"}}"#,
            "\"err_code\":10131",
        ),
        (
            r#"{"stream_name":"BATON_STEPS","config":{"durable_name":"exec-g1","filter_subjects":["baton.step.g2"],"ack_policy":"explicit"}}"#,
            "\"err_code\":10137",
        ),
    ] {
        let reply = tokio::time::timeout(
            SOON,
            g1.request(
                "$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-g1.baton.step.g1",
                body.into(),
            ),
        )
        .await
        .expect("JetStream answers")
        .expect("a reply");
        let reply = String::from_utf8_lossy(&reply.payload).into_owned();
        assert!(reply.contains(code), "{body}: {reply}");
    }
    // The other creation forms, whose body may name any filter, are refused.
    for subject in [
        "$JS.API.CONSUMER.CREATE.BATON_STEPS.exec-g1",
        "$JS.API.CONSUMER.DURABLE.CREATE.BATON_STEPS.exec-g1",
        "$JS.API.CONSUMER.CREATE.BATON_STEPS",
    ] {
        publish(&g1, subject).await;
        refused(&errors, &publish_denied(subject)).await;
    }

    // Steps, API requests, events: not its to publish; steps not its to read directly.
    for subject in ["baton.step.g1", "baton.api.list", "baton.event.u1"] {
        publish(&g1, subject).await;
        refused(&errors, &publish_denied(subject)).await;
    }
    let _sub = g1.subscribe(subjects::STEPS_WILDCARD).await.unwrap();
    refused(&errors, &subscribe_denied("baton.step.>")).await;

    // Another executor's presence key.
    let presence = g1_js
        .get_key_value(subjects::PRESENCE_BUCKET)
        .await
        .expect("g1 may bind the presence bucket");
    assert!(presence.put("g2", "forged".into()).await.is_err());
    refused(&errors, &publish_denied("$KV.baton_executors.g2")).await;

    // No stream administration.
    assert!(g1_js.delete_stream(subjects::STEPS_STREAM).await.is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.STREAM.DELETE.BATON_STEPS"),
    )
    .await;
    assert!(steps.purge().await.is_err());
    refused(&errors, &publish_denied("$JS.API.STREAM.PURGE.BATON_STEPS")).await;
    let mut config = steps.cached_info().config.clone();
    config.max_messages = 1;
    assert!(g1_js.update_stream(config).await.is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.STREAM.UPDATE.BATON_STEPS"),
    )
    .await;
    assert!(g1_js
        .create_stream(stream::Config {
            name: "STOLEN".into(),
            subjects: vec!["baton.api.>".into()],
            ..Default::default()
        })
        .await
        .is_err());
    refused(&errors, &publish_denied("$JS.API.STREAM.CREATE.STOLEN")).await;

    // Results and events are the service's.
    assert!(g1_js.get_stream(subjects::RESULTS_STREAM).await.is_err());
    refused(
        &errors,
        &publish_denied("$JS.API.STREAM.INFO.BATON_RESULTS"),
    )
    .await;
    for subject in [
        "$JS.API.CONSUMER.MSG.NEXT.BATON_RESULTS.baton-workflow",
        "$JS.API.CONSUMER.CREATE.BATON_EVENTS",
    ] {
        publish(&g1, subject).await;
        refused(&errors, &publish_denied(subject)).await;
    }

    // Nothing changed: the service still sees each group's consumer as it was.
    let mut steps = js.get_stream(subjects::STEPS_STREAM).await.unwrap();
    for group in ["g1", "g2"] {
        let info = steps
            .consumer_info(subjects::group_consumer(group))
            .await
            .map(|i| i.config.filter_subject);
        if group == "g1" {
            // g1 never created its consumer in this test.
            assert!(info.is_err(), "{info:?}");
        } else {
            assert_eq!(info.unwrap(), subjects::step(group));
        }
    }
    assert!(steps.consumer_info("exec-g2-copy").await.is_err());
    assert!(js.get_stream("STOLEN").await.is_err());
    assert_eq!(steps.info().await.unwrap().config.max_messages, -1);
}

#[tokio::test]
async fn an_executor_can_do_its_work() {
    let bus = bus().await;
    let (js, handles) = bus.service_ensured().await;
    let opts = setup_options();
    let (g1, errors) = bus.as_executor("g1").await;
    let g1_js = jetstream::new(g1.clone());

    // What an executor binds at start (a narrower `ensure`).
    protocol::setup::check_server(&g1_js)
        .await
        .expect("account info");
    g1_js
        .get_stream(subjects::STEPS_STREAM)
        .await
        .expect("the steps stream");
    let presence = g1_js
        .get_key_value(subjects::PRESENCE_BUCKET)
        .await
        .expect("the presence bucket");
    let claims = g1_js
        .get_key_value(subjects::CLAIMS_BUCKET)
        .await
        .expect("the claims bucket");
    let consumer = protocol::ensure_group_consumer(&g1_js, "g1", &opts)
        .await
        .expect("creates its group's consumer");
    protocol::ensure_group_consumer(&g1_js, "g1", &opts)
        .await
        .expect("binds it again once it exists");

    // A step the service publishes: pulled, progress reported, acked.
    js.publish(subjects::step("g1"), "step".into())
        .await
        .unwrap()
        .await
        .expect("the service publishes a step");
    let mut batch = consumer
        .batch()
        .max_messages(1)
        .expires(SOON)
        .messages()
        .await
        .expect("pull");
    let step = batch.next().await.expect("a step arrives").expect("a step");
    assert_eq!(&step.payload[..], b"step");
    step.ack_with(AckKind::Progress).await.expect("progress");
    step.double_ack().await.expect("the ack is confirmed");
    let mut steps = js.get_stream(subjects::STEPS_STREAM).await.unwrap();
    assert_eq!(steps.info().await.unwrap().state.messages, 0, "acked away");

    // A claim: created, read back, refused a second time.
    claims
        .create("g1.u1.1.1", "mine".into())
        .await
        .expect("claims a step");
    let claim = claims.get("g1.u1.1.1").await.expect("reads the claim");
    assert_eq!(claim.as_deref(), Some(&b"mine"[..]));
    let again = claims
        .create("g1.u1.1.1", "again".into())
        .await
        .unwrap_err();
    assert_eq!(again.kind(), kv::CreateErrorKind::AlreadyExists);

    // Its presence: put, seen by the service, deleted.
    presence
        .put("g1", "here".into())
        .await
        .expect("puts its presence");
    let mut keys = handles
        .presence
        .keys()
        .await
        .expect("the service lists presence");
    assert_eq!(
        keys.next().await.transpose().unwrap().as_deref(),
        Some("g1")
    );
    presence.delete("g1").await.expect("deletes its presence");

    // A result, stored and consumed by the service.
    g1_js
        .publish(subjects::result("u1"), "result".into())
        .await
        .unwrap()
        .await
        .expect("the result is stored");
    let mut results = handles
        .workflow_consumer
        .batch()
        .max_messages(1)
        .expires(SOON)
        .messages()
        .await
        .expect("the service pulls results");
    let result = results.next().await.expect("a result").expect("a result");
    assert_eq!(&result.payload[..], b"result");
    result.double_ack().await.expect("the service acks it");

    assert_eq!(errors.all(), Vec::<String>::new());
}

#[tokio::test]
async fn the_service_does_everything_its_role_needs() {
    let bus = bus().await;
    let (service, errors) = bus.as_service().await;
    let js = jetstream::new(service.clone());
    protocol::ensure(&js, &setup_options())
        .await
        .expect("creates the streams, its consumer and the buckets");
    protocol::ensure(&js, &setup_options())
        .await
        .expect("checks them once they exist");

    // The lease bucket.
    let lease = js
        .create_key_value(kv::Config {
            bucket: LEASE_BUCKET.into(),
            history: 1,
            storage: stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("creates the lease bucket");
    lease
        .create("holder", "service-1".into())
        .await
        .expect("takes the lease");
    let holder = lease.get("holder").await.expect("reads the lease");
    assert_eq!(holder.as_deref(), Some(&b"service-1"[..]));

    // Steps and events.
    for subject in [subjects::step("g1"), subjects::event("u1")] {
        js.publish(subject.clone(), "x".into())
            .await
            .unwrap()
            .await
            .unwrap_or_else(|e| panic!("publishes {subject}: {e}"));
    }

    // The API, in its queue group, answered to an operator.
    let api = serve_api(service.clone()).await;
    let (operator, _) = bus.as_operator("rita").await;
    let reply = tokio::time::timeout(SOON, operator.request("baton.api.list", "{}".into()))
        .await
        .expect("answered in time")
        .expect("answered");
    assert_eq!(&reply.payload[..], b"ok");
    assert_eq!(errors.all(), Vec::<String>::new());

    // Least privilege holds for it too: the API only in its queue group, no results.
    let _plain = service.subscribe(subjects::API_WILDCARD).await.unwrap();
    refused(&errors, &subscribe_denied("baton.api.>")).await;
    publish(&service, "baton.result.u1").await;
    refused(&errors, &publish_denied("baton.result.u1")).await;
    api.abort();
}

/// Issue 11 hardening: claim keys start with the group
/// (`subjects::claim_key`), and nats-server lets an executor of g1 create,
/// read and delete only `g1.` claims: it cannot pre-claim, read or remove a
/// claim of g2 (nor one without a group), while g2's claim stays as g2 made
/// it.
#[tokio::test]
async fn an_executor_claims_only_its_own_groups_step_attempts() {
    let bus = bus().await;
    let (js, _handles) = bus.service_ensured().await;

    // g2 claims one of its step attempts: allowed.
    let (g2, g2_errors) = bus.as_executor("g2").await;
    let g2_claims = jetstream::new(g2)
        .get_key_value(subjects::CLAIMS_BUCKET)
        .await
        .expect("g2 binds the claims bucket");
    let g2_key = subjects::claim_key("g2", "u1", 1, 1);
    g2_claims
        .create(&g2_key, "g2's".into())
        .await
        .expect("g2 claims its own step attempt");
    assert_eq!(
        g2_claims
            .get(&g2_key)
            .await
            .expect("g2 reads it")
            .as_deref(),
        Some(&b"g2's"[..])
    );

    let (g1, errors) = bus.as_executor("g1").await;
    let claims = short_js(&g1)
        .get_key_value(subjects::CLAIMS_BUCKET)
        .await
        .expect("g1 binds the claims bucket");
    // Pre-claiming another group's step attempt, or one without a group.
    for key in [subjects::claim_key("g2", "u1", 2, 1), "u1.2.1".to_string()] {
        assert!(claims.create(&key, "g1's".into()).await.is_err(), "{key}");
        refused(&errors, &publish_denied(&format!("$KV.baton_claims.{key}"))).await;
    }
    // Reading g2's claim.
    assert!(claims.get(&g2_key).await.is_err());
    refused(
        &errors,
        &publish_denied(&format!(
            "$JS.API.DIRECT.GET.KV_baton_claims.$KV.baton_claims.{g2_key}"
        )),
    )
    .await;
    // Deleting (and purging) it: one subject for every write.
    let before = errors.all().len();
    assert!(claims.delete(&g2_key).await.is_err());
    assert!(claims.purge(&g2_key).await.is_err());
    assert!(
        tests::wait_until(REFUSED, || {
            errors.all()[before..]
                .iter()
                .filter(|e| {
                    e.to_lowercase().contains(
                        &publish_denied(&format!("$KV.baton_claims.{g2_key}")).to_lowercase(),
                    )
                })
                .count()
                == 2
        })
        .await,
        "{:?}",
        errors.all()
    );

    // Its own group's claims: created, read, refused twice, deleted.
    let errors_before = errors.all();
    let own = subjects::claim_key("g1", "u1", 1, 1);
    claims
        .create(&own, "g1's".into())
        .await
        .expect("g1 claims its own step attempt");
    assert_eq!(
        claims.get(&own).await.expect("g1 reads it").as_deref(),
        Some(&b"g1's"[..])
    );
    let again = claims.create(&own, "again".into()).await.unwrap_err();
    assert_eq!(again.kind(), kv::CreateErrorKind::AlreadyExists);
    claims.delete(&own).await.expect("g1 deletes its own claim");
    assert_eq!(errors.all(), errors_before, "its own claims were refused");

    // As the service sees the bucket: g2's claim untouched, nothing pre-claimed.
    let service_claims = js.get_key_value(subjects::CLAIMS_BUCKET).await.unwrap();
    assert_eq!(
        service_claims.get(&g2_key).await.unwrap().as_deref(),
        Some(&b"g2's"[..])
    );
    for key in [subjects::claim_key("g2", "u1", 2, 1), "u1.2.1".to_string()] {
        assert_eq!(service_claims.get(&key).await.unwrap(), None, "{key}");
    }
    assert_eq!(service_claims.get(&own).await.unwrap(), None, "deleted");
    assert_eq!(g2_errors.all(), Vec::<String>::new());
}

/// Issue 11 hardening: every identity has its own inbox,
/// `_INBOX_<public key>`, and may subscribe only to it. An operator (and an
/// executor) cannot subscribe to `_INBOX.>` nor to another identity's inbox,
/// while its own requests (plain, and with a reply subject it subscribed to
/// itself) are answered; a client left on async-nats's default `_INBOX`
/// prefix gets no reply at all.
#[tokio::test]
async fn each_identity_reads_only_its_own_inbox() {
    let bus = bus().await;
    let _ = bus.service_ensured().await;
    let (service, service_errors) = bus.as_service().await;
    let api = serve_api(service).await;
    let secure = &bus.secure;
    let public = |key: &std::path::Path| secure.identity(key).public_key();
    let mut inboxes = vec![(
        "service".to_string(),
        subjects::inbox_prefix(&public(&secure.service_key)),
    )];
    for (group, key) in &secure.executor_keys {
        inboxes.push((
            format!("executor {group}"),
            subjects::inbox_prefix(&public(key)),
        ));
    }
    for (name, key) in &secure.operator_keys {
        inboxes.push((
            format!("operator {name}"),
            subjects::inbox_prefix(&public(key)),
        ));
    }

    let alice_key = secure.operator_key("alice");
    let g1_key = secure.executor_key("g1");
    for (who, key, client_errors) in [
        ("operator alice", alice_key, bus.as_operator("alice").await),
        ("executor g1", g1_key, bus.as_executor("g1").await),
    ] {
        let (client, errors) = client_errors;
        let own = subjects::inbox_prefix(&public(key));
        assert!(client.new_inbox().starts_with(&format!("{own}.")), "{who}");
        // Everybody's replies at once.
        let _all = client.subscribe("_INBOX.>").await.unwrap();
        refused(&errors, &subscribe_denied("_INBOX.>")).await;
        // Each other identity's.
        for (_, prefix) in inboxes.iter().filter(|(other, _)| other != who) {
            let subject = format!("{prefix}.>");
            let _sub = client.subscribe(subject.clone()).await.unwrap();
            refused(&errors, &subscribe_denied(&subject)).await;
        }
    }

    // The operator's own requests are answered, on its own inbox.
    let (alice, errors) = bus.as_operator("alice").await;
    let reply = tokio::time::timeout(SOON, alice.request(subjects::api("status"), "{}".into()))
        .await
        .expect("answered in time")
        .expect("the service answers alice");
    assert_eq!(&reply.payload[..], b"ok");
    // A reply subject it subscribed to itself, under its own prefix.
    let mine = alice.new_inbox();
    let mut sub = alice.subscribe(mine.clone()).await.unwrap();
    alice
        .publish_with_reply(subjects::api("list"), mine, "{}".into())
        .await
        .unwrap();
    let reply = tokio::time::timeout(SOON, sub.next())
        .await
        .expect("answered in time")
        .expect("a reply");
    assert_eq!(&reply.payload[..], b"ok");
    assert_eq!(errors.all(), Vec::<String>::new());

    // On the default prefix, its reply subscription is refused: no answer.
    let config = protocol::connect::NatsConfig {
        inbox_prefix: None,
        ..secure.nats_config(&bus.url(), Some(alice_key))
    };
    let errors = ServerErrors::default();
    let plain = tests::secure::connect_config(&config, Some(errors.clone()))
        .await
        .expect("alice connects");
    let answered =
        tokio::time::timeout(DROPPED, plain.request(subjects::api("status"), "{}".into())).await;
    assert!(
        !matches!(answered, Ok(Ok(_))),
        "answered on _INBOX: {answered:?}"
    );
    refused(
        &errors,
        "Permissions Violation for Subscription to \"_INBOX.",
    )
    .await;
    // And the service itself may not answer there: it publishes only into
    // operators' own inboxes (no allow_responses).
    refused(
        &service_errors,
        "Permissions Violation for Publish to \"_INBOX.",
    )
    .await;
    api.abort();
}
