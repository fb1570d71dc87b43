//! The built-in HTTP probe: a profile's `[probes.NAME.http]` is answered by the executor itself, with plain
//! HTTP/1.1 requests to every endpoint at once, instead of starting a process. A look at etcd through its HTTP
//! gateway then costs about a millisecond instead of an `etcdctl` start (tens of ms on a loaded host).
//!
//! The argv (rendered from the profile, signed by the service and checked by the allow list like any other) is
//! `[HTTP_PROGRAM, METHOD, ENDPOINTS, PATH, BODY, ENDPOINT_TIMEOUT_MS, CA_FILE, CERT_FILE, KEY_FILE]`
//! ([`HTTP_PROGRAM`]). With CA_FILE, every endpoint is asked over TLS (rustls), its certificate verified against
//! that CA for the endpoint's host name or IP address; with CERT_FILE and KEY_FILE too, the executor shows that
//! client certificate (etcd's `--client-cert-auth`). The files are PEM, read at each run (a renewed certificate is
//! picked up). What it prints, for the profile's parser to read:
//!
//! - stdout: a JSON array with one element per endpoint, in the order given: `{"endpoint": E, "status": 200,
//!   "body": B}` (B is the body's JSON, or its text when it is not JSON), or `{"endpoint": E, "error": "..."}`
//!   when no answer came (refused, no connection or no answer within ENDPOINT_TIMEOUT_MS, a broken answer);
//! - stderr: one line per endpoint that failed or answered other than 2xx;
//! - exit code 0 when every endpoint answered 2xx; 1 when some did not but at least one gave an HTTP answer; 2
//!   when none gave any (the executor reached nobody: a topology must not read that as "no leader"). A profile
//!   says which it reads with `read_exit_codes`.
//!
//! Asked from the executor's own host, so only the local runner answers an HTTP probe (`RunnerConfig::run_http`;
//! an SSH executor serving one is refused at start). No process is started, so nothing is left behind by a
//! timeout. TLS is said by the program's name ([`HTTPS_PROGRAM`]), never by whether the CA file rendered empty.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::http::uri::Authority;
use hyper_util::rt::TokioIo;
use protocol::Outcome;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
pub use workflow::core::profile_file::{is_http_program, HTTPS_PROGRAM, HTTP_PROGRAM};

use super::Ran;
use crate::now_ms;

/// One parsed HTTP probe argv.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request<'a> {
    method: hyper::Method,
    endpoints: Vec<&'a str>,
    path: &'a str,
    body: &'a str,
    each: Duration,
    /// Asked over TLS: the program is [`HTTPS_PROGRAM`].
    tls: bool,
    /// CA_FILE, CERT_FILE, KEY_FILE (empty: plain HTTP, no client certificate).
    ca: &'a str,
    cert: &'a str,
    key: &'a str,
}

fn parse(argv: &[String]) -> Result<Request<'_>, String> {
    let [program, method, endpoints, path, body, each, ca, cert, key] = argv else {
        return Err(format!(
            "an HTTP probe's argv has 9 elements ({HTTP_PROGRAM}|{HTTPS_PROGRAM} METHOD ENDPOINTS PATH BODY \
             ENDPOINT_TIMEOUT_MS CA_FILE CERT_FILE KEY_FILE), not {}",
            argv.len()
        ));
    };
    if !is_http_program(program) {
        return Err(format!("not an HTTP probe: {program:?}"));
    }
    let tls = program == HTTPS_PROGRAM;
    let method = match method.as_str() {
        "GET" => hyper::Method::GET,
        "POST" => hyper::Method::POST,
        other => return Err(format!("method {other:?}: expected GET or POST")),
    };
    let endpoints: Vec<&str> = endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("no endpoint to ask".into());
    }
    if !path.starts_with('/') {
        return Err(format!("path {path:?} does not start with `/`"));
    }
    let each = each
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("endpoint timeout {each:?} is not a number of ms"))?;
    // TLS is what the program says, never what a file name rendered to: a blank var must not turn it off.
    if tls && ca.trim().is_empty() {
        return Err(format!(
            "{HTTPS_PROGRAM} asks over TLS, but its CA file rendered empty (a blank node var?): not asked"
        ));
    }
    let names_files = !(ca.is_empty() && cert.is_empty() && key.is_empty());
    if !tls && names_files {
        return Err(format!(
            "{HTTP_PROGRAM} asks in plain HTTP, but names a CA or client certificate file"
        ));
    }
    if cert.trim().is_empty() != key.trim().is_empty() {
        return Err("a client certificate needs both CERT_FILE and KEY_FILE".into());
    }
    Ok(Request {
        method,
        endpoints,
        path,
        body,
        each,
        tls,
        ca,
        cert,
        key,
    })
}

/// The TLS files of a request over TLS, owned, to be read off the async threads ([`tls_config`]).
#[derive(Debug, Clone)]
struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

/// Refuses a path that is not a regular file (a FIFO or a device would block the read, or never end).
fn regular(what: &str, path: &str) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(format!("{what} {path}: not a regular file")),
        Err(e) => Err(format!("{what} {path}: {e}")),
    }
}

/// The TLS client configuration of a request over TLS: its CA as the only root, and its client certificate if it
/// has one. Blocking file reads: run on a blocking thread, under the step's timeout ([`run`]). An unreadable,
/// empty or irregular file is an error naming it.
fn tls_config(req: &TlsFiles) -> Result<Arc<ClientConfig>, String> {
    let ca_err = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", req.ca);
    regular("CA file", &req.ca)?;
    if !req.cert.is_empty() {
        regular("certificate file", &req.cert)?;
        regular("key file", &req.key)?;
    }
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&req.ca).map_err(|e| ca_err(&e))? {
        roots
            .add(cert.map_err(|e| ca_err(&e))?)
            .map_err(|e| ca_err(&e))?;
    }
    if roots.is_empty() {
        return Err(ca_err(&"no certificate in it"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {}", chain(&e)))?
        .with_root_certificates(roots);
    let config = if req.cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = CertificateDer::pem_file_iter(&req.cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("certificate file {}: {e}", req.cert))?;
        if chain.is_empty() {
            return Err(format!(
                "certificate file {}: no certificate in it",
                req.cert
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&req.key)
            .map_err(|e| format!("key file {}: {e}", req.key))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("client certificate {} with key {}: {e}", req.cert, req.key))?
    };
    Ok(Arc::new(config))
}

/// `HOST:PORT` of an endpoint written `HOST:PORT`, `http://HOST:PORT` (plain HTTP only) or `https://HOST:PORT`
/// (TLS only), a trailing `/` allowed.
fn authority(endpoint: &str, tls: bool) -> Result<Authority, String> {
    let bare = match (
        endpoint.strip_prefix("https://"),
        endpoint.strip_prefix("http://"),
    ) {
        (Some(_), _) if !tls => {
            return Err(
                "https:// endpoint, but the probe has no CA file (ca_file) to verify it with"
                    .into(),
            )
        }
        (_, Some(_)) if tls => {
            return Err("http:// endpoint, but the probe asks over TLS (it has a ca_file)".into())
        }
        (Some(bare), _) | (_, Some(bare)) => bare,
        (None, None) => endpoint,
    };
    let bare = bare.strip_suffix('/').unwrap_or(bare);
    let authority: Authority = bare.parse().map_err(|e| format!("not HOST:PORT: {e}"))?;
    if authority.port_u16().is_none() || bare.contains('@') || bare.contains('/') {
        return Err("not HOST:PORT".into());
    }
    Ok(authority)
}

/// One request to one endpoint (over TLS with `tls`): its status and body (at most `limit` bytes).
async fn ask(
    req: &Request<'_>,
    tls: Option<&Arc<ClientConfig>>,
    endpoint: &str,
    limit: usize,
) -> Result<(u16, Bytes), String> {
    let authority = authority(endpoint, tls.is_some())?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().expect("checked");
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // Small requests and answers: no Nagle delay.
    let _ = stream.set_nodelay(true);
    match tls {
        None => exchange(req, &authority, stream, limit).await,
        Some(config) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("TLS: {host:?} is not a server name: {e}"))?;
            let stream = TlsConnector::from(Arc::clone(config))
                .connect(name, stream)
                .await
                .map_err(|e| format!("TLS: {}", chain(&e)))?;
            exchange(req, &authority, stream, limit).await
        }
    }
}

/// The request and its answer over `io`, a connection to `authority`.
async fn exchange<S>(
    req: &Request<'_>,
    authority: &Authority,
    io: S,
    limit: usize,
) -> Result<(u16, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {}", chain(&e)))?;
    let mut request = hyper::Request::builder()
        .method(req.method.clone())
        .uri(req.path)
        .header(hyper::header::HOST, authority.as_str());
    if !req.body.is_empty() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(req.body.as_bytes())))
        .map_err(|e| format!("request: {}", chain(&e)))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {}", chain(&e)))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {}", chain(&*e)))?
            .to_bytes();
        Ok((status, body))
    };
    // The connection is driven here, beside the exchange (no task spawned): it ends once the exchange has.
    tokio::pin!(exchange, connection);
    tokio::select! {
        biased;
        answer = &mut exchange => answer,
        closed = &mut connection => match closed {
            Err(e) => Err(format!("connection: {}", chain(&e))),
            Ok(()) => exchange.await,
        },
    }
}

/// An error and its causes, `outer: inner: ...`: hyper's own message ("error writing a body to connection") says
/// less than what is under it ("received fatal alert: BadCertificate", a server refusing the client certificate).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Runs an HTTP probe's argv (see the module docs) within `timeout`, keeping answers up to `max_output` bytes.
pub async fn run(argv: &[String], timeout: Duration, max_output: usize) -> Ran {
    let started_ms = now_ms();
    // One deadline for the whole probe: reading the TLS files and asking the endpoints share `timeout`.
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |reason: String| Ran::failed(started_ms, reason);
    let req = match parse(argv) {
        Ok(req) => req,
        Err(why) => return failed(format!("HTTP probe: {why}")),
    };
    let tls = if req.tls {
        let files = TlsFiles {
            ca: req.ca.to_string(),
            cert: req.cert.to_string(),
            key: req.key.to_string(),
        };
        // Off the async threads, and under the step's timeout: a file on a hung mount must not hold the executor.
        // A read still blocked after the timeout ends with its file; its thread is then returned to the pool.
        let reading = tokio::task::spawn_blocking(move || tls_config(&files));
        match tokio::time::timeout_at(deadline, reading).await {
            Ok(Ok(Ok(config))) => Some(config),
            Ok(Ok(Err(why))) => return failed(format!("HTTP probe: {why}")),
            Ok(Err(e)) => return failed(format!("HTTP probe: reading the TLS files: {e}")),
            Err(_) => {
                return failed(format!(
                    "HTTP probe: its TLS files were not read within its timeout of {} ms",
                    timeout.as_millis()
                ))
            }
        }
    } else {
        None
    };
    let each = req
        .each
        .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
    let answers = futures::future::join_all(req.endpoints.iter().map(|endpoint| {
        let (req, tls) = (&req, tls.as_ref());
        async move {
            let answer = match tokio::time::timeout(each, ask(req, tls, endpoint, max_output)).await
            {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {} ms", each.as_millis())),
            };
            (*endpoint, answer)
        }
    }))
    .await;
    let (mut out, mut errors, mut answered) = (Vec::new(), Vec::new(), false);
    for (endpoint, answer) in answers {
        match answer {
            Ok((status, body)) => {
                answered = true;
                let body = serde_json::from_slice::<Value>(&body)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
                if !(200..300).contains(&status) {
                    errors.push(format!(
                        "{} {endpoint}{}: HTTP status {status}",
                        req.method, req.path
                    ));
                }
                out.push(json!({ "endpoint": endpoint, "status": status, "body": body }));
            }
            Err(why) => {
                errors.push(format!("{} {endpoint}{}: {why}", req.method, req.path));
                out.push(json!({ "endpoint": endpoint, "error": why }));
            }
        }
    }
    let stdout = Value::Array(out).to_string();
    if stdout.len() > max_output {
        return failed(format!(
            "HTTP probe: the answers take {} bytes, over the {max_output} kept",
            stdout.len()
        ));
    }
    let code = match (errors.is_empty(), answered) {
        (true, _) => 0,
        (false, true) => 1,
        (false, false) => 2,
    };
    let mut stderr = errors.join("\n");
    if !stderr.is_empty() {
        stderr.push('\n');
    }
    Ran {
        outcome: if code == 0 {
            Outcome::Succeeded
        } else {
            Outcome::Failed
        },
        exit_code: Some(code),
        stdout_tail: stdout,
        stderr_tail: last_bytes(stderr, max_output),
        reason: None,
        started_ms,
        finished_ms: now_ms(),
    }
}

/// The last `max` bytes of `text` (at a character boundary), as the process runners keep their output's tail.
fn last_bytes(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    fn argv(method: &str, endpoints: &str, path: &str, body: &str, each_ms: u64) -> Vec<String> {
        [
            HTTP_PROGRAM,
            method,
            endpoints,
            path,
            body,
            &each_ms.to_string(),
            "",
            "",
            "",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// A one-shot HTTP server on loopback: answers each connection with `answer` (a whole HTTP response) after
    /// reading the request head and its body; `None` accepts and never answers. Returns its address and the
    /// requests it read.
    async fn server(answer: Option<&'static str>) -> (String, tokio::sync::mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    loop {
                        let n = socket.read(&mut buf[read..]).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        read += n;
                        let text = String::from_utf8_lossy(&buf[..read]).to_string();
                        if let Some(head_end) = text.find("\r\n\r\n") {
                            let length = text[..head_end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if read >= head_end + 4 + length {
                                let _ = tx.send(text).await;
                                break;
                            }
                        }
                    }
                    match answer {
                        Some(answer) => {
                            let _ = socket.write_all(answer.as_bytes()).await;
                        }
                        None => std::future::pending::<()>().await,
                    }
                });
            }
        });
        (addr, rx)
    }

    const OK_JSON: &str = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"health\":\"true\"}";
    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
    const UNAVAILABLE: &str = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\ndown";

    #[tokio::test]
    async fn every_endpoint_is_asked_and_its_answer_read_in_the_order_given() {
        let (a, mut seen_a) = server(Some(OK_JSON)).await;
        let (b, _) = server(Some(CHUNKED)).await;
        let ran = run(
            &argv(
                "POST",
                &format!("{a},http://{b}/"),
                "/v3/status",
                "{}",
                1000,
            ),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Succeeded, "{ran:?}");
        assert_eq!(ran.exit_code, Some(0));
        let out: Value = serde_json::from_str(&ran.stdout_tail).unwrap();
        assert_eq!(
            out,
            json!([
                {"endpoint": a, "status": 200, "body": {"health": "true"}},
                {"endpoint": format!("http://{b}/"), "status": 200, "body": {"a": 1}},
            ])
        );
        let request = seen_a.recv().await.unwrap();
        assert!(
            request.starts_with("POST /v3/status HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.to_ascii_lowercase().contains(&format!("host: {a}")),
            "{request}"
        );
        assert!(request.ends_with("\r\n\r\n{}"), "{request}");
    }

    #[tokio::test]
    async fn a_refused_a_silent_and_a_failing_endpoint_are_named_and_the_others_still_read() {
        let (good, _) = server(Some(OK_JSON)).await;
        let (silent, _) = server(None).await;
        let (bad, _) = server(Some(UNAVAILABLE)).await;
        // A port nobody listens on: bound, then closed.
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let started = std::time::Instant::now();
        let ran = run(
            &argv(
                "GET",
                &format!("{good},{refused},{silent},{bad}"),
                "/health",
                "",
                300,
            ),
            Duration::from_secs(10),
            64 * 1024,
        )
        .await;
        let waited = started.elapsed();
        assert_eq!(ran.outcome, Outcome::Failed, "{ran:?}");
        assert_eq!(ran.exit_code, Some(1), "{ran:?}");
        assert!(
            waited < Duration::from_secs(5),
            "the silent one is given up after its own timeout: {waited:?}"
        );
        let out: Value = serde_json::from_str(&ran.stdout_tail).unwrap();
        assert_eq!(
            out[0],
            json!({"endpoint": good, "status": 200, "body": {"health": "true"}})
        );
        assert_eq!(out[1]["endpoint"], json!(refused));
        assert!(
            out[1]["error"].as_str().unwrap().contains("connect"),
            "{out}"
        );
        assert_eq!(out[2]["error"], json!("no answer within 300 ms"));
        assert_eq!(
            out[3],
            json!({"endpoint": bad, "status": 503, "body": "down"})
        );
        let lines: Vec<&str> = ran.stderr_tail.lines().collect();
        assert_eq!(lines.len(), 3, "{}", ran.stderr_tail);
        assert!(
            lines[0].starts_with(&format!("GET {refused}/health: connect")),
            "{lines:?}"
        );
        assert_eq!(
            lines[1],
            format!("GET {silent}/health: no answer within 300 ms")
        );
        assert_eq!(lines[2], format!("GET {bad}/health: HTTP status 503"));
    }

    /// A one-connection-at-a-time HTTPS server on loopback with `files`' server certificate, requiring a client
    /// certificate signed by their CA; it answers `OK_JSON` to whoever completes the handshake.
    async fn tls_server(files: &protocol::devtls::DevTls) -> String {
        use tokio_rustls::rustls::server::WebPkiClientVerifier;
        use tokio_rustls::rustls::ServerConfig;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&files.server.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .unwrap();
        let chain = CertificateDer::pem_file_iter(&files.server.cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(&files.server.key).unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while !String::from_utf8_lossy(&buf[..read]).contains("\r\n\r\n") {
                        match tls.read(&mut buf[read..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => read += n,
                        }
                    }
                    let _ = tls.write_all(OK_JSON.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        addr
    }

    fn tls_argv(endpoint: &str, ca: &Path, cert: Option<(&Path, &Path)>) -> Vec<String> {
        let mut argv = argv("GET", endpoint, "/health", "", 2000);
        argv[0] = HTTPS_PROGRAM.to_string();
        argv[6] = ca.display().to_string();
        if let Some((cert, key)) = cert {
            argv[7] = cert.display().to_string();
            argv[8] = key.display().to_string();
        }
        argv
    }

    use std::path::Path;

    #[tokio::test]
    async fn over_tls_the_server_is_verified_against_the_ca_file_and_shown_the_client_certificate()
    {
        let dir = tempfile::tempdir().unwrap();
        let files = protocol::devtls::make(dir.path(), &[]).unwrap();
        let addr = tls_server(&files).await;
        let client = Some((files.client_cert.as_path(), files.client_key.as_path()));
        for endpoint in [addr.clone(), format!("https://{addr}/")] {
            let ran = run(
                &tls_argv(&endpoint, &files.server.ca, client),
                Duration::from_secs(5),
                64 * 1024,
            )
            .await;
            assert_eq!(ran.exit_code, Some(0), "{endpoint}: {ran:?}");
            let out: Value = serde_json::from_str(&ran.stdout_tail).unwrap();
            assert_eq!(
                out,
                json!([{"endpoint": endpoint, "status": 200, "body": {"health": "true"}}])
            );
        }
        // Without the client certificate the server refuses the connection.
        let ran = run(
            &tls_argv(&addr, &files.server.ca, None),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert_eq!(ran.exit_code, Some(2), "{ran:?}");
        assert!(ran.stdout_tail.contains("\"error\""), "{ran:?}");
        // Named for what it is (the server's alert, under hyper's own message), not only "connection closed".
        assert!(
            ran.stderr_tail
                .contains("received fatal alert: CertificateRequired"),
            "{ran:?}"
        );
        // A server whose certificate another CA signed is not trusted.
        let other = tempfile::tempdir().unwrap();
        let others = protocol::devtls::make(other.path(), &[]).unwrap();
        let ran = run(
            &tls_argv(
                &addr,
                &others.server.ca,
                Some((&others.client_cert, &others.client_key)),
            ),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert_eq!(ran.exit_code, Some(2), "{ran:?}");
        assert!(
            ran.stderr_tail.contains("TLS: invalid peer certificate"),
            "{ran:?}"
        );
        // Plain http:// with a CA file is a contradiction, refused before connecting.
        let ran = run(
            &tls_argv(&format!("http://{addr}"), &files.server.ca, client),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert!(
            ran.stderr_tail
                .contains("http:// endpoint, but the probe asks over TLS"),
            "{ran:?}"
        );
        // An unreadable CA file fails the probe, naming the file; nothing is asked.
        let missing = dir.path().join("missing.pem");
        let ran = run(
            &tls_argv(&addr, &missing, client),
            Duration::from_secs(5),
            1024,
        )
        .await;
        assert_eq!(ran.exit_code, None, "{ran:?}");
        let reason = ran.reason.unwrap();
        assert!(
            reason.contains(&format!("CA file {}", missing.display())),
            "{reason}"
        );
        // TLS is the program's word: a CA file that rendered empty is not asked at all, and a plain-HTTP program
        // with a CA file is malformed (hostile review 14b).
        let mut blank = tls_argv(&addr, &files.server.ca, client);
        blank[6] = " ".into();
        let ran = run(&blank, Duration::from_secs(5), 1024).await;
        assert!(ran.reason.unwrap().contains("CA file rendered empty"));
        let mut plain = tls_argv(&addr, &files.server.ca, client);
        plain[0] = HTTP_PROGRAM.into();
        let ran = run(&plain, Duration::from_secs(5), 1024).await;
        assert!(ran
            .reason
            .unwrap()
            .contains("asks in plain HTTP, but names a CA"));
        // A key without its certificate is refused as malformed.
        let mut lone = tls_argv(&addr, &files.server.ca, client);
        lone[7] = String::new();
        let ran = run(&lone, Duration::from_secs(5), 1024).await;
        assert!(ran.reason.unwrap().contains("needs both"));
    }

    /// Hostile review 14b (P3): the loader's `endpoint_shape` (workflow profile_file.rs) is meant to refuse "an
    /// endpoint the executor always refuses" at load (review 14), but it checks only that a literal ends in
    /// `:DIGITS` and has no `@` or `/`; the runner's `authority` parses it with `http::uri::Authority` and needs a
    /// u16 port. So a port over 65535, an unbracketed IPv6 address and a host with a space load, are planned and
    /// approved, and then every look fails ("not HOST:PORT"), a topology that never shows a member. Fix: check
    /// the literal endpoint at load with the same parse (`Authority` + `port_u16`, no `@`/`/`), e.g. by moving
    /// `authority` into the workflow core (http's `Authority` is pure) and calling it from both.
    #[tokio::test]
    async fn review14b_a_literal_endpoint_that_loads_is_one_the_runner_can_ask() {
        use workflow::core::profile_file::ProfileFile;
        let shipped = include_str!("../../../profiles/etcd-http.toml");
        let from = "[probes.node.http]\nendpoints = \"{address}\"\n";
        assert!(shipped.contains(from), "etcd-http.toml's node probe moved");
        let mut both = Vec::new();
        for literal in ["127.0.0.1:65536", "::1:2379", "etcd 1:2379"] {
            let text = shipped.replacen(
                from,
                &format!("[probes.node.http]\nendpoints = \"{literal}\"\n"),
                1,
            );
            let Ok(profile) = ProfileFile::parse("etcd-http.toml", &text) else {
                continue; // refused at load: consistent
            };
            // No placeholder in the node probe now: its template is its rendering.
            let ran = run(&profile.probes.node.argv, Duration::from_secs(2), 64 * 1024).await;
            if ran.stdout_tail.contains("not HOST:PORT") {
                both.push(format!(
                    "{literal}: loads, and the runner answers {}",
                    ran.stdout_tail
                ));
            }
        }
        assert!(
            both.is_empty(),
            "literal endpoints accepted at load that the runner refuses at every run:\n{}",
            both.join("\n")
        );
    }

    /// Hostile review 14b (P3, docs): since 850e819 the SSH runner answers no HTTP probe (`run_http` refuses, and
    /// an `--runner ssh` executor serving one is refused at start), but docs/profiles.md's "Limits" still says an
    /// HTTP probe is "sent from the executor's host (with the SSH runner too: it does not go through SSH)", and
    /// this module's own docs say "with the SSH runner the request does not go through SSH", i.e. that it works.
    /// And since exit 2 (no endpoint answered), etcd-http.toml's comments on its one-endpoint node and
    /// running-version probes still say a member that does not answer gives exit 1 (it gives 2:
    /// `no_endpoint_answering_exits_2`). Fix: say that an HTTP probe needs the local runner (an executor on each
    /// node), as THREATS.md now does, and exit 2 in those two comments.
    #[test]
    fn review14b_no_document_says_the_ssh_runner_answers_http_probes() {
        let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        // This module's own docs: its `//!` lines.
        let module: String = include_str!("http.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        let mut untrue = Vec::new();
        for (doc, text, claim) in [
            (
                "docs/profiles.md",
                flat(include_str!("../../../docs/profiles.md")),
                "with the SSH runner too: it does not go through SSH",
            ),
            (
                "executor/src/runner/http.rs (module docs)",
                flat(&module),
                "with the SSH runner the request does not go through SSH",
            ),
            // A node or running-version probe asks one endpoint: one that does not answer is exit 2 now.
            (
                "profiles/etcd-http.toml (node probe)",
                flat(include_str!("../../../profiles/etcd-http.toml")),
                r#"Stopped: [{"endpoint":"...","error":"connect: ..."}] and exit 1"#,
            ),
            (
                "profiles/etcd-http.toml (running_version probe)",
                flat(include_str!("../../../profiles/etcd-http.toml")),
                "exit 1 (unreadable) when it does not answer",
            ),
        ] {
            if text.contains(claim) {
                untrue.push(format!("{doc}: \"{claim}\""));
            }
        }
        assert!(
            untrue.is_empty(),
            "documents that say what HTTP probes no longer do (the SSH runner answers them; exit 1 for no answer):\n{}",
            untrue.join("\n")
        );
    }

    /// Hostile review 14b (P3): the CA, certificate and key files are read with blocking file I/O inside the async
    /// `run`, before any timeout applies (`tls_config` runs outside `tokio::time::timeout`), so a file that does
    /// not answer (a FIFO, a hung NFS mount, `/dev/stdin`) holds the executor's worker thread and the step past its
    /// `timeout_ms` and the progress acks beside it, forever. Fix: read the files with `tokio::fs` (or
    /// `spawn_blocking`) under the step's timeout, and refuse a path that is not a regular file.
    #[test]
    fn review14b_a_ca_file_that_never_answers_does_not_outlast_the_step_timeout() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("ca.pem");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let mut probe = argv("GET", "127.0.0.1:1", "/health", "", 200);
        probe[0] = HTTPS_PROGRAM.to_string();
        probe[6] = fifo.display().to_string();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let worker = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let ran = rt.block_on(run(&probe, Duration::from_millis(500), 1024));
            let _ = tx.send(ran);
        });
        let answered = rx.recv_timeout(Duration::from_secs(5));
        // Let a reader still blocked in open(2) go (non-blocking: no reader left is not waited for).
        let _writer = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&fifo);
        drop(_writer);
        worker.join().unwrap();
        assert!(
            answered.is_ok(),
            "an HTTP probe whose CA file is a FIFO with no writer had not answered 5 s after its 500 ms timeout"
        );
    }

    /// Reaching nobody is not the same as a cluster whose members are down: exit 2, not 1 (hostile review 14).
    #[tokio::test]
    async fn no_endpoint_answering_exits_2() {
        let refused = |_: usize| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let endpoints: Vec<String> = (0..3).map(refused).collect();
        let ran = run(
            &argv("GET", &endpoints.join(","), "/health", "", 300),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert_eq!(
            (ran.outcome, ran.exit_code),
            (Outcome::Failed, Some(2)),
            "{ran:?}"
        );
        let out: Value = serde_json::from_str(&ran.stdout_tail).unwrap();
        assert_eq!(
            out.as_array().unwrap().len(),
            3,
            "every endpoint listed with its error: {out}"
        );
        // One 503 is an answer: exit 1.
        let (bad, _) = server(Some(UNAVAILABLE)).await;
        let ran = run(
            &argv(
                "GET",
                &format!("{},{bad}", endpoints[0]),
                "/health",
                "",
                300,
            ),
            Duration::from_secs(5),
            64 * 1024,
        )
        .await;
        assert_eq!(ran.exit_code, Some(1), "{ran:?}");
    }

    #[tokio::test]
    async fn a_malformed_argv_or_endpoint_fails_saying_why_and_asks_nothing() {
        let bad = |argv: Vec<String>| async move { run(&argv, Duration::from_secs(1), 1024).await };
        let r = bad(vec![HTTP_PROGRAM.into(), "GET".into()]).await;
        assert!(r.reason.unwrap().contains("9 elements"));
        let r = bad(argv("DELETE", "127.0.0.1:1", "/x", "", 100)).await;
        assert!(r.reason.unwrap().contains("expected GET or POST"));
        let r = bad(argv("GET", "127.0.0.1:1", "x", "", 100)).await;
        assert!(r.reason.unwrap().contains("does not start with `/`"));
        let r = bad(argv("GET", " , ", "/x", "", 100)).await;
        assert!(r.reason.unwrap().contains("no endpoint"));
        let r = bad(argv("GET", "127.0.0.1:1", "/x", "", 0)).await;
        assert!(r.reason.unwrap().contains("not a number of ms"));
        for endpoint in [
            "https://127.0.0.1:1",
            "127.0.0.1",
            "user@127.0.0.1:1",
            "127.0.0.1:1/x",
        ] {
            let r = bad(argv("GET", endpoint, "/x", "", 100)).await;
            assert_eq!(r.exit_code, Some(2), "{endpoint}: {r:?}");
            let out: Value = serde_json::from_str(&r.stdout_tail).unwrap();
            assert!(out[0]["error"].is_string(), "{endpoint}: {out}");
        }
    }

    #[tokio::test]
    async fn an_answer_over_the_output_limit_fails_the_probe() {
        let (a, _) = server(Some(OK_JSON)).await;
        let ran = run(
            &argv("GET", &a, "/health", "", 1000),
            Duration::from_secs(5),
            10,
        )
        .await;
        assert_eq!(ran.outcome, Outcome::Failed, "{ran:?}");
        assert_eq!(ran.exit_code, None, "{ran:?}");
        assert!(
            ran.reason.as_deref().unwrap().contains("over the 10 kept"),
            "{ran:?}"
        );
    }
}
