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
//! a client must send its request head within [`HEADER_TIMEOUT`].

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
    let local = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    tracing::info!(addr = %local, "HTTP listener serving /healthz, /readyz, /metrics");
    let mut connections = JoinSet::new();
    loop {
        let room = connections.len() < MAX_CONNECTIONS;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept(), if room => match accepted {
                Ok((stream, _peer)) => {
                    let endpoints = endpoints.clone();
                    let shutdown = shutdown.clone();
                    connections.spawn(connection(stream, endpoints, shutdown));
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
) {
    let service = hyper::service::service_fn(move |request| {
        let endpoints = endpoints.clone();
        async move { Ok::<_, Infallible>(answer(&endpoints, &request)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(HEADER_TIMEOUT, conn.as_mut())
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
}
