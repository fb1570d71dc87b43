//! The optional HTTP listener of `baton server --http ADDR` and `baton
//! executor --http ADDR`: `/healthz`, `/readyz` and `/metrics`
//! (`docs/metrics.md`).
//!
//! - `/healthz`: 200 `ok` while the process answers at all.
//! - `/readyz`: 200 `ready` when the service or executor can act, else 503
//!   with the reason in plain text (the service's or executor's own
//!   `readiness`).
//! - `/metrics`: the caller's registry in the OpenMetrics text format.
//!
//! Plain hyper (HTTP/1.1), no framework: three fixed routes need no router.
//! The listener is bound before the service starts (a bad address fails the
//! command at once, naming it), serves until the command's shutdown token is
//! cancelled, and is joined: every connection runs in a `JoinSet` that is
//! drained before [`serve`] returns. At most [`MAX_CONNECTIONS`] at once;
//! a client must send its request head within [`HEADER_TIMEOUT`], and a
//! connection is dropped after [`CONNECTION_LIFETIME`] (a client that never
//! reads its answers would otherwise hold its slot for ever).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one connection may last, requests and answers included: a
/// scraper's request takes milliseconds, and hyper closes an idle
/// keep-alive connection after [`HEADER_TIMEOUT`].
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// The content type `prometheus-client`'s text encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints show: the metrics and the readiness check.
pub struct Endpoints {
    pub registry: Registry,
    pub ready: Box<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Binds `addr`; the error names it (and the flag).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {addr} (--http)"))
}

/// With `--http ADDR`: binds it now and serves `endpoints` until
/// `shutdown`. The caller awaits the handle after its service returned and
/// the token is cancelled.
pub async fn start(
    addr: Option<SocketAddr>,
    endpoints: impl FnOnce() -> Endpoints,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = bind(addr).await?;
    Ok(Some(tokio::spawn(serve(
        listener,
        Arc::new(endpoints()),
        shutdown.clone(),
    ))))
}

/// Waits for the listener [`start`] started (after cancelling its token).
pub async fn join(listener: Option<tokio::task::JoinHandle<()>>) {
    if let Some(listener) = listener {
        if let Err(err) = listener.await {
            tracing::warn!(error = %err, "the HTTP listener failed");
        }
    }
}

/// Serves `endpoints` on `listener` until `shutdown`; returns once every
/// connection has ended.
pub async fn serve(listener: TcpListener, endpoints: Arc<Endpoints>, shutdown: CancellationToken) {
    serve_with(listener, endpoints, shutdown, Limits::default()).await;
}

/// What one client may hold of the listener.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once.
    connections: usize,
    /// To send a request head.
    header: Duration,
    /// A connection's whole life: a client that stops reading its answers
    /// stalls hyper's writes, which no other timeout covers.
    lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: MAX_CONNECTIONS,
            header: HEADER_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
        }
    }
}

async fn serve_with(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    tracing::info!(addr = %local, "HTTP listener serving /healthz, /readyz, /metrics");
    let mut connections = JoinSet::new();
    loop {
        let room = connections.len() < limits.connections;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if room => match accepted {
                Ok((stream, _peer)) => {
                    let endpoints = endpoints.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(connection(stream, endpoints, shutdown, limits));
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(addr = %local, error = %err, "HTTP accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            },
        }
    }
    while connections.join_next().await.is_some() {}
    tracing::info!(addr = %local, "HTTP listener stopped");
}

/// One connection, until it ends or `shutdown` (then it finishes the request in hand).
async fn connection(
    stream: tokio::net::TcpStream,
    endpoints: Arc<Endpoints>,
    shutdown: CancellationToken,
    limits: Limits,
) {
    let service = hyper::service::service_fn(move |request| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, Infallible>(answer(&endpoints, &request)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = tokio::time::sleep(limits.lifetime) => {
            // Dropped, not shut down gracefully: a client that stopped
            // reading would stall a graceful end as well.
            tracing::debug!("HTTP connection closed at the end of its lifetime");
            return;
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(limits.header, conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(err) = ended {
        tracing::debug!(error = %err, "HTTP connection ended with an error");
    }
}

/// The response to one request.
fn answer<B>(endpoints: &Endpoints, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match (endpoints.ready)() {
            Ok(()) => text(StatusCode::OK, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, &endpoints.registry) {
                Ok(()) => response(StatusCode::OK, OPENMETRICS, body),
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not encode the metrics\n",
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /healthz, /readyz and /metrics are served\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", body.to_string())
}

fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(ready: Result<(), String>) -> Endpoints {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        counter.inc();
        registry.register("probe", "A test counter", counter);
        Endpoints {
            registry,
            ready: Box::new(move || ready.clone()),
        }
    }

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    fn body(response: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn the_routes_answer_with_the_codes_load_balancers_expect() {
        let up = endpoints(Ok(()));
        assert_eq!(answer(&up, &get("/healthz")).status(), StatusCode::OK);
        assert_eq!(answer(&up, &get("/readyz")).status(), StatusCode::OK);
        let down = endpoints(Err("NATS is not connected".into()));
        let response = answer(&down, &get("/readyz"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(response), "not ready: NATS is not connected\n");
        assert_eq!(answer(&down, &get("/healthz")).status(), StatusCode::OK);
        assert_eq!(answer(&up, &get("/nope")).status(), StatusCode::NOT_FOUND);
        let post = Request::post("/metrics").body(()).unwrap();
        assert_eq!(answer(&up, &post).status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn metrics_are_openmetrics_text() {
        let response = answer(&endpoints(Ok(())), &get("/metrics"));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[hyper::header::CONTENT_TYPE], OPENMETRICS);
        let text = body(response);
        assert!(text.contains("probe_total 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    /// A client that pipelines requests and never reads the answers stalls
    /// hyper's writes; such connections must not hold the listener's slots
    /// for ever (a scraper behind them would never be answered).
    #[test]
    fn clients_that_never_read_do_not_lock_out_the_rest() {
        use std::io::{Read as _, Write as _};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let mut endpoints = endpoints(Ok(()));
        workflow::service::metrics::ServiceMetrics::default().register(&mut endpoints.registry);
        let server = runtime.spawn(serve_with(
            listener,
            Arc::new(endpoints),
            shutdown.clone(),
            Limits {
                connections: 4,
                header: HEADER_TIMEOUT,
                lifetime: Duration::from_millis(500),
            },
        ));
        // Each of these sends 4,000 pipelined requests (about 200 KB) and
        // reads nothing: the answers (about 20 MB) fill both socket buffers.
        let request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4_000);
        let mut stalled = Vec::new();
        for _ in 0..4 {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            let mut sent = 0;
            // Write what the kernel takes; the rest does not matter.
            while sent < request.len() {
                match stream.write(&request.as_bytes()[sent..]) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            stalled.push(stream);
        }
        let mut probe = std::net::TcpStream::connect(addr).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let read = probe.read_to_string(&mut answer);
        assert!(
            read.is_ok() && answer.starts_with("HTTP/1.1 200"),
            "the probe was not answered: {read:?} {answer:?}"
        );
        shutdown.cancel();
        runtime.block_on(server).unwrap();
        drop(stalled);
    }
}
