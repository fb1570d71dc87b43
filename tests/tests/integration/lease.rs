//! Integration tests: the service lease (`workflow::service::lease`) against a
//! real nats-server. One service per NATS account: a second service is
//! refused, naming the holder; a restart of the same log takes over at once;
//! a standby takes over when the holder releases or stops renewing; a holder
//! whose key is overwritten, deleted, or that cannot renew for a ttl stops
//! (fail closed); a nats-server restart shorter than the ttl is survived.
//!
//! Short ttls (1.5 s) keep the tests fast; timings are asserted against the
//! ttl and `renew_every`, with slack for a loaded machine.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use protocol::subjects::{LEASE_BUCKET, LEASE_KEY};
use tests::{wait_until_async, NatsServer};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use workflow::service::lease::{Holder, Lease, LeaseError, LeaseOptions};

const TTL: Duration = Duration::from_millis(1500);
/// Scheduling and NATS round trips on a busy test machine.
const SLACK: Duration = Duration::from_millis(700);
/// Bound for things that should happen well within it.
const SOON: Duration = Duration::from_secs(15);

fn options() -> LeaseOptions {
    LeaseOptions::with_ttl(TTL)
}

fn standby() -> LeaseOptions {
    LeaseOptions {
        standby: true,
        ..options()
    }
}

fn holder(host: &str, db: &str, pid: u32) -> Holder {
    Holder {
        service_key: protocol::sign::Identity::generate().public_key(),
        host: host.into(),
        pid,
        db: db.into(),
        epoch: u64::from(pid),
        acquired_ms: 0,
    }
}

async fn connect(nats: &NatsServer) -> jetstream::Context {
    jetstream::new(
        async_nats::connect(nats.url())
            .await
            .expect("test client connects"),
    )
}

async fn acquire(js: &jetstream::Context, me: Holder, options: LeaseOptions) -> Lease {
    let token = CancellationToken::new();
    timeout(SOON, Lease::acquire(js, me, options, &token))
        .await
        .expect("acquire answers")
        .expect("acquire succeeds")
        .expect("not shut down")
}

/// The lease key as the server has it now (retrying while reconnecting).
async fn entry(js: &jetstream::Context) -> Option<kv::Entry> {
    let deadline = Instant::now() + SOON;
    loop {
        match try_entry(js).await {
            Ok(entry) => return entry,
            Err(e) if Instant::now() >= deadline => panic!("cannot read the lease key: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn try_entry(js: &jetstream::Context) -> Result<Option<kv::Entry>, async_nats::Error> {
    Ok(js
        .get_key_value(LEASE_BUCKET)
        .await?
        .entry(LEASE_KEY)
        .await?)
}

/// A lease renewing in a task of the test, stopped through its token.
struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), LeaseError>>,
}

impl Running {
    fn start(lease: Lease) -> Running {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lease.run(shutdown.clone()));
        Running { shutdown, task }
    }

    /// What `run` returned, if it returns within `within`.
    async fn ended_within(&mut self, within: Duration) -> Option<Result<(), LeaseError>> {
        timeout(within, &mut self.task)
            .await
            .ok()
            .map(|joined| joined.expect("the lease task does not panic"))
    }

    async fn stop(mut self) -> Result<(), LeaseError> {
        self.shutdown.cancel();
        self.ended_within(SOON)
            .await
            .expect("run returns on shutdown")
    }
}

/// A standby acquiring in a task of the test.
fn spawn_standby(
    js: &jetstream::Context,
    me: Holder,
    shutdown: &CancellationToken,
) -> JoinHandle<Result<Option<Lease>, LeaseError>> {
    let (js, shutdown) = (js.clone(), shutdown.clone());
    tokio::spawn(async move { Lease::acquire(&js, me, standby(), &shutdown).await })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_service_with_another_log_is_refused_naming_the_holder() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let first = acquire(&js, holder("host-a", "/srv/baton/log", 101), options()).await;
    let recorded = first.holder().clone();
    assert!(recorded.acquired_ms > 0, "acquire stamps the time");
    let running = Running::start(first);

    for (host, db) in [
        ("host-a", "/srv/baton/other-log"),
        ("host-b", "/srv/baton/log"),
    ] {
        let token = CancellationToken::new();
        let refused = Lease::acquire(&js, holder(host, db, 202), options(), &token).await;
        let err = match refused {
            Err(err) => err,
            Ok(_) => panic!("{host}:{db} acquired a lease that host-a holds"),
        };
        let text = err.to_string();
        match err {
            LeaseError::Held { holder } => assert_eq!(holder, recorded),
            other => panic!("expected Held, got {other:?}"),
        }
        for part in [
            "host host-a",
            "pid 101",
            "log /srv/baton/log",
            recorded.service_key.as_str(),
            "standby",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text:?}");
        }
    }
    // Still the first holder's record.
    let value = entry(&js).await.expect("the key exists").value;
    assert_eq!(serde_json::from_slice::<Holder>(&value).unwrap(), recorded);
    running.stop().await.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_of_the_same_log_on_the_same_host_takes_over_at_once() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    // The first service crashes right after acquiring: its lease is never
    // renewed or released, and would stay for a whole ttl.
    let crashed = acquire(&js, holder("host-a", "/srv/baton/log", 101), options()).await;
    let (old, old_revision) = (crashed.holder().clone(), crashed.revision());
    drop(crashed);

    let started = Instant::now();
    let restarted = acquire(&js, holder("host-a", "/srv/baton/log", 102), options()).await;
    let took = started.elapsed();
    eprintln!("takeover by a restart of the same log: {took:?}");
    assert!(
        took < TTL / 4,
        "took {took:?}: a restart of the same log must not wait for the ttl ({TTL:?})"
    );
    assert_eq!(restarted.previous(), Some(&old));
    assert!(restarted.revision() > old_revision);
    assert_eq!(restarted.holder().pid, 102);
    let value = entry(&js).await.expect("the key exists").value;
    assert_eq!(
        serde_json::from_slice::<Holder>(&value).unwrap(),
        *restarted.holder()
    );
    Running::start(restarted).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_that_finds_its_own_record_acquires_rather_than_takes_over() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let me = holder("host-a", "/srv/baton/log", 101);
    // A first acquire whose create went through but whose reply was lost: the key holds this very start's record
    // (its time stamp aside). A bucket as `acquire` makes it, then the create as `acquire` sends it.
    drop(acquire(&js, holder("host-z", "/srv/z", 9), options()).await);
    let kv = js.get_key_value(LEASE_BUCKET).await.unwrap();
    kv.purge(LEASE_KEY).await.unwrap();
    let created = kv
        .create(LEASE_KEY, serde_json::to_vec(&me).unwrap().into())
        .await
        .unwrap();

    let started = Instant::now();
    let again = acquire(&js, me.clone(), options()).await;
    assert!(
        started.elapsed() < TTL / 4,
        "waited {:?}: its own record is not waited out",
        started.elapsed()
    );
    assert_eq!(
        again.previous(),
        None,
        "its own record is not a dead service's lease it took over"
    );
    assert!(again.revision() > created);
    assert_eq!(again.holder().pid, me.pid);
    assert_eq!(again.holder().epoch, me.epoch);
    let value = entry(&js).await.expect("the key exists").value;
    assert_eq!(
        serde_json::from_slice::<Holder>(&value).unwrap(),
        *again.holder()
    );
    Running::start(again).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_when_the_holder_shuts_down() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let first = acquire(&js, holder("host-a", "/srv/a", 101), options()).await;
    let first_holder = first.holder().clone();
    let running = Running::start(first);

    let shutdown = CancellationToken::new();
    let mut standby = spawn_standby(&js, holder("host-b", "/srv/b", 202), &shutdown);
    // Renewals keep the lease well past its ttl.
    assert!(
        timeout(TTL * 2, &mut standby).await.is_err(),
        "the standby acquired a lease that is renewed"
    );

    let released = Instant::now();
    running.stop().await.expect("a clean stop");
    let second = timeout(SOON, &mut standby)
        .await
        .expect("the standby acquires")
        .unwrap()
        .expect("acquire succeeds")
        .expect("not shut down");
    let took = released.elapsed();
    eprintln!("standby acquired {took:?} after the release");
    // Faster than any expiry (at least a ttl after the last renewal): the
    // standby saw the release.
    assert!(took < TTL, "took {took:?} after the release (ttl {TTL:?})");
    assert_eq!(second.holder().host, "host-b");
    assert_eq!(second.previous(), Some(&first_holder));
    Running::start(second).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_once_the_holder_stops_renewing() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let before_write = Instant::now();
    // Acquired and never renewed: a holder frozen or cut off right away.
    let frozen = acquire(&js, holder("host-a", "/srv/a", 101), options()).await;
    drop(frozen);

    let shutdown = CancellationToken::new();
    let standby = spawn_standby(&js, holder("host-b", "/srv/b", 202), &shutdown);
    let second = timeout(SOON, standby)
        .await
        .expect("the standby acquires")
        .unwrap()
        .expect("acquire succeeds")
        .expect("not shut down");
    let after_write = before_write.elapsed();
    eprintln!("standby acquired {after_write:?} after the last write (ttl {TTL:?})");
    // Not before the key expired (ttl after the server stamped the write),
    // and soon after: one poll (ttl / 3) at most, plus slack.
    assert!(
        after_write >= TTL,
        "acquired {after_write:?} after the last write: before the ttl ({TTL:?})"
    );
    assert!(
        after_write <= TTL + TTL / 3 + SLACK,
        "acquired {after_write:?} after the last write (ttl {TTL:?})"
    );
    assert_eq!(second.holder().host, "host-b");
    Running::start(second).stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_stops_waiting_on_shutdown() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let running = Running::start(acquire(&js, holder("host-a", "/srv/a", 101), options()).await);
    let shutdown = CancellationToken::new();
    let mut standby = spawn_standby(&js, holder("host-b", "/srv/b", 202), &shutdown);
    assert!(timeout(TTL / 2, &mut standby).await.is_err());
    shutdown.cancel();
    let answer = timeout(SOON, standby)
        .await
        .expect("acquire returns")
        .unwrap();
    assert!(matches!(answer, Ok(None)), "{answer:?}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_key_is_overwritten_stops_within_renew_every() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let lease = acquire(&js, holder("host-a", "/srv/a", 101), options()).await;
    let renew_every = options().renew_every;
    let mut running = Running::start(lease);

    let intruder = holder("host-b", "/srv/b", 202);
    let bucket = js.get_key_value(LEASE_BUCKET).await.unwrap();
    bucket
        .put(LEASE_KEY, serde_json::to_vec(&intruder).unwrap().into())
        .await
        .unwrap();
    let overwritten = Instant::now();
    let ended = running
        .ended_within(renew_every + SLACK)
        .await
        .unwrap_or_else(|| {
            panic!(
                "still running {:?} after the overwrite",
                overwritten.elapsed()
            )
        });
    eprintln!(
        "lost {:?} after the overwrite (renew_every {renew_every:?})",
        overwritten.elapsed()
    );
    match ended {
        Err(LeaseError::Lost { by: Some(by) }) => assert_eq!(by, intruder),
        other => panic!("expected Lost by the intruder, got {other:?}"),
    }
    // Fail closed, and no release of a key that is not ours.
    let value = entry(&js).await.expect("the key exists").value;
    assert_eq!(serde_json::from_slice::<Holder>(&value).unwrap(), intruder);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_whose_key_is_deleted_stops_within_renew_every() {
    let nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let lease = acquire(&js, holder("host-a", "/srv/a", 101), options()).await;
    let mut running = Running::start(lease);
    let bucket = js.get_key_value(LEASE_BUCKET).await.unwrap();
    bucket.delete(LEASE_KEY).await.unwrap();
    let ended = running
        .ended_within(options().renew_every + SLACK)
        .await
        .expect("run stops");
    assert!(
        matches!(ended, Err(LeaseError::Lost { by: None })),
        "{ended:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_holder_that_cannot_renew_for_a_ttl_stops() {
    let mut nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let lease = acquire(&js, holder("host-a", "/srv/a", 101), options()).await;
    let renew_every = options().renew_every;
    let mut running = Running::start(lease);
    let bucket = js.get_key_value(LEASE_BUCKET).await.unwrap();
    let first = entry(&js).await.unwrap().revision;
    // Wait for one renewal, so that the last one is at most renew_every old.
    assert!(
        wait_until_async(SOON, || async {
            matches!(bucket.entry(LEASE_KEY).await, Ok(Some(e)) if e.revision > first)
        })
        .await
    );
    nats.stop();
    let stopped = Instant::now();
    let ended = running
        .ended_within(TTL + SLACK)
        .await
        .expect("run gives up once the ttl has passed without renewal");
    let took = stopped.elapsed();
    eprintln!("lost {took:?} after NATS went away (ttl {TTL:?})");
    assert!(
        matches!(ended, Err(LeaseError::Lost { by: None })),
        "{ended:?}"
    );
    // Retried until the ttl had passed since the last renewal, not sooner.
    assert!(
        took + renew_every + Duration::from_millis(50) >= TTL,
        "gave up {took:?} after NATS went away; the last renewal was at most {renew_every:?} before"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_survives_a_nats_server_restart_shorter_than_the_ttl() {
    // A longer ttl than the others, renewed more often: an outage of three
    // renewal periods makes one renewal attempt time out (its budget is one
    // period) and still fits in the ttl with room for the client's reconnect.
    let ttl = Duration::from_secs(4);
    let options = LeaseOptions {
        renew_every: Duration::from_millis(500),
        ..LeaseOptions::with_ttl(ttl)
    };
    let mut nats = NatsServer::start().await.unwrap();
    let js = connect(&nats).await;
    let lease = acquire(&js, holder("host-a", "/srv/a", 101), options.clone()).await;
    let me = lease.holder().clone();
    let mut running = Running::start(lease);

    // A crash of nats-server, down long enough that a renewal attempt falls
    // due and times out while it is down: the length of the fault, not a wait.
    let outage = options.renew_every * 3;
    let down = Instant::now();
    nats.stop();
    tokio::time::sleep(outage).await;
    nats.restart().await.unwrap();
    let downtime = down.elapsed();
    eprintln!("nats-server was down {downtime:?} (ttl {ttl:?})");
    assert!(
        downtime < ttl / 2,
        "nats-server was down {downtime:?}: too long for this test's ttl ({ttl:?})"
    );
    // Renewals go on: the revision moves twice more, the key stays ours, and
    // `run` never gave up.
    let revision = std::cell::Cell::new(entry(&js).await.expect("the key survived").revision);
    for _ in 0..2 {
        let last = revision.get();
        assert!(
            wait_until_async(options.renew_every * 3, || async {
                revision.set(entry(&js).await.map_or(0, |e| e.revision));
                revision.get() > last
            })
            .await,
            "no renewal after the restart (revision {last})"
        );
    }
    let value = entry(&js).await.expect("the key exists").value;
    assert_eq!(serde_json::from_slice::<Holder>(&value).unwrap(), me);
    assert!(
        running.ended_within(Duration::ZERO).await.is_none(),
        "run stopped across a restart shorter than the ttl"
    );
    running.stop().await.expect("a clean stop");
    assert!(
        wait_until_async(SOON, || async {
            entry(&js)
                .await
                .is_none_or(|e| e.operation != kv::Operation::Put)
        })
        .await,
        "the key was not released"
    );
}

/// The service whose lease key is deleted mid-upgrade (an operator's mistake, or another service's takeover seen
/// late) stops acting and exits with an error naming the lease, not 0: a supervisor restarts it, and the restart
/// takes the lease again and resumes. (The lease's task cancels the service's token itself, and the service reports
/// the loss however its watch noticed the stop.)
#[tokio::test(flavor = "multi_thread")]
async fn a_service_whose_lease_key_is_deleted_mid_upgrade_exits_with_an_error_naming_the_lease() {
    let mut env = super::e2e::Env::start(super::e2e::Setup {
        nats_auth: false,
        sync_ms: 800,
        ..super::e2e::Setup::default()
    })
    .await;
    let upgrade = env.submit(&[]);
    env.wait_installed("backend-2").await;
    let js = jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let bucket = js.get_key_value(LEASE_BUCKET).await.unwrap();
    bucket.delete(LEASE_KEY).await.unwrap();
    let server = env.server.as_mut().unwrap();
    // The service renews every third of its 15 s ttl: it sees the deletion within 5 s.
    let status = server
        .wait_exit(Duration::from_secs(20))
        .expect("the service stops once its lease is gone");
    let log = server.log();
    assert!(!status.success(), "exit {status:?}\n{log}");
    assert!(
        log.contains("lost the service lease: stopping at once (fail closed)"),
        "{log}"
    );
    env.start_server();
    env.expect_completed_safely(&upgrade).await;
}
