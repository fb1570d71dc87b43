//! `baton server`: the workflow service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: crate::config::ConfigArg,
    /// Directory of the log (sled). One service per log.
    #[arg(long, env = "BATON_DB")]
    pub db: PathBuf,
    /// How far (seconds) an API request's signed time may be from the service's clock;
    /// a request is accepted once within this window (replay protection).
    #[arg(long, env = "BATON_API_SKEW_S", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub api_skew_s: u64,
    /// If another service holds the lease (another log on this NATS account), wait for it
    /// as a standby instead of refusing to start.
    #[arg(long, env = "BATON_STANDBY")]
    pub standby: bool,
    /// How long the service lease outlives its last renewal, in milliseconds (renewed every third).
    #[arg(long, env = "BATON_LEASE_TTL_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(1_000..=3_600_000))]
    pub lease_ttl_ms: u64,
    /// Serve /healthz, /readyz and /metrics over HTTP on this address (e.g. 127.0.0.1:9600;
    /// docs/metrics.md). Off by default.
    #[arg(long, env = "BATON_HTTP", value_name = "ADDR")]
    pub http: Option<std::net::SocketAddr>,
    /// How many servers of a NATS cluster keep each of Baton's streams and buckets: 1 on a
    /// single server; on a cluster 3 (one server may fail) or 5 (two may), at most the
    /// cluster's size. Odd counts are the useful ones (a majority must be up). Fixed when the
    /// streams are created: a service started with another count than theirs refuses to start.
    #[arg(long, env = "BATON_NATS_REPLICAS", default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=protocol::setup::MAX_REPLICAS as i64))]
    pub nats_replicas: u8,
    /// How many unfinished upgrades the service resumes at once when it starts (each one's mirror read,
    /// re-mirroring and re-published steps; their replays stay one at a time).
    #[arg(long, env = "BATON_RECOVER_AT_ONCE", default_value_t = workflow::service::RECOVER_AT_ONCE as u16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub recover_at_once: u16,
    /// How long (seconds) recovery keeps trying one publish that fails (a re-mirrored event, a re-published
    /// step) before the start fails, naming the upgrade and the cause. Running upgrades retry until shutdown.
    #[arg(long, env = "BATON_RECOVERY_PATIENCE_S",
          default_value_t = workflow::service::RECOVERY_PATIENCE.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub recovery_patience_s: u64,
    /// Hidden, for tests: how many commands may queue for one upgrade's loop (a small queue makes the service
    /// hand results back while a loop is busy).
    #[arg(long, env = "BATON_LOOP_QUEUE", hide = true, default_value_t = workflow::service::LOOP_QUEUE as u16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub loop_queue: u16,
}

pub fn run(global: &crate::Global, args: ServerArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signals = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("signal received, shutting down");
                shutdown.cancel();
            })
        };
        if args.nats_replicas.is_multiple_of(2) {
            tracing::warn!(
                nats_replicas = args.nats_replicas,
                "an even replica count survives no more server failures than the odd count below it"
            );
        }
        let config = workflow::service::Config {
            db: args.db.clone(),
            // The identity first: a missing key is named for the service.
            identity: global.identity("the workflow service")?,
            nats: global.nats_config()?,
            trust: std::sync::Arc::new(global.trust("the workflow service")?),
            api_skew: std::time::Duration::from_secs(args.api_skew_s),
            lease: workflow::service::lease::LeaseOptions {
                ttl: std::time::Duration::from_millis(args.lease_ttl_ms),
                renew_every: std::time::Duration::from_millis(args.lease_ttl_ms / 3),
                standby: args.standby,
                // The service places the lease bucket like its streams (`protocol.replicas`).
                ..workflow::service::lease::LeaseOptions::default()
            },
            protocol: protocol::Options {
                replicas: usize::from(args.nats_replicas),
                ..protocol::Options::default()
            },
            metrics: std::sync::Arc::default(),
            recover_at_once: usize::from(args.recover_at_once),
            recovery_patience: std::time::Duration::from_secs(args.recovery_patience_s),
            loop_queue: usize::from(args.loop_queue),
        };
        let metrics = config.metrics.clone();
        let listener = crate::http::start(
            args.http,
            || {
                let mut registry = prometheus_client::registry::Registry::default();
                metrics.register(&mut registry);
                crate::http::Endpoints {
                    registry,
                    ready: Box::new(move || metrics.readiness()),
                }
            },
            &shutdown,
        )
        .await?;
        let result = workflow::service::run(config, shutdown.clone()).await;
        shutdown.cancel();
        crate::http::join(listener).await;
        signals.abort();
        let _ = signals.await;
        result.with_context(|| format!("workflow service (log {})", args.db.display()))
    })?;
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
