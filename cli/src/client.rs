//! The CLI's side of the `baton.api.*` request/reply API, and the mapping of
//! errors to exit codes.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::{de::DeserializeOwned, Serialize};
use workflow::service::api::{self, ApiReply, ErrorKind};

use crate::Global;
use futures::StreamExt;
use protocol::sign::{Identity, Kind};

/// An error that carries its own exit code (see `main.rs`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit {
            code,
            message: message.into(),
        }
    }
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_REJECTED: u8 = 3;
pub const EXIT_UPGRADE_FAILED: u8 = 4;
pub const EXIT_VERIFY_FAILED: u8 = 5;

/// The exit code for an error: its own if it carries one, else 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Exit>())
        .map(|exit| exit.code)
        .unwrap_or(EXIT_FAILURE)
}

/// A connection to NATS for API calls: requests signed with the operator's
/// key, replies verified against the service key the trust file pins.
pub struct Client {
    pub nats: async_nats::Client,
    timeout: Duration,
    identity: Identity,
    service_key: String,
}

impl Client {
    pub async fn connect(global: &Global) -> anyhow::Result<Client> {
        let identity = global.identity("calling the workflow service")?;
        let trust = global.trust("calling the workflow service")?;
        let config = global.nats_config()?;
        let url = config.redacted_url();
        let (options, addrs) = config.options("baton-cli").await?;
        let nats = options
            .connect(addrs)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(Client {
            nats,
            timeout: Duration::from_secs(global.api_timeout),
            identity,
            service_key: trust.service.key,
        })
    }

    /// Calls `baton.api.<verb>` and decodes the body of a successful reply.
    /// A rejection becomes an [`Exit`] with code 3.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        verb: &str,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        let payload = serde_json::to_vec(request)?;
        let subject = api::subject(verb);
        let mut headers = async_nats::HeaderMap::new();
        let request_sig = self.identity.sign_headers(
            &mut headers,
            Kind::ApiRequest,
            &subject,
            &format!("t={}", now_ms()),
            &payload,
        );
        let inbox = self.nats.new_inbox();
        let mut replies = self
            .nats
            .subscribe(inbox.clone())
            .await
            .with_context(|| format!("subscribing to the reply of `{verb}`"))?;
        self.nats
            .publish_with_reply_and_headers(subject, inbox.clone(), headers, payload.into())
            .await
            .with_context(|| format!("calling `{verb}` on the workflow service"))?;
        // Only a reply the pinned service signed for this request counts;
        // anything else on the inbox is dropped and named if no good one comes.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut refused: Vec<String> = Vec::new();
        let reply = loop {
            let next = tokio::time::timeout_at(deadline, replies.next()).await;
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => {
                    let mut text = format!(
                        "the workflow service did not answer `{verb}` within {:?} (is `baton server` running?)",
                        self.timeout
                    );
                    if !refused.is_empty() {
                        text.push_str(&format!("; replies refused: {}", refused.join("; ")));
                    }
                    return Err(anyhow::anyhow!(text));
                }
            };
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                bail!("calling `{verb}`: no responders on NATS (is `baton server` running?)");
            }
            match verify_reply(&message, &inbox, &request_sig, &self.service_key) {
                Ok(()) => break message,
                Err(reason) => refused.push(reason),
            }
        };
        let reply: ApiReply = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("decoding the service's reply to `{verb}`"))?;
        match reply {
            ApiReply::Ok(body) => serde_json::from_str(body.get())
                .with_context(|| format!("decoding the body of the reply to `{verb}`")),
            ApiReply::Err(err) => {
                let code = match err.kind {
                    ErrorKind::Rejected | ErrorKind::NotFound => EXIT_REJECTED,
                    ErrorKind::Internal => EXIT_FAILURE,
                };
                Err(Exit::new(code, err.message).into())
            }
        }
    }
}

/// A reply counts only if the pinned service signed it, for our inbox, bound
/// to our request's signature.
fn verify_reply(
    message: &async_nats::Message,
    inbox: &str,
    request_sig: &str,
    service_key: &str,
) -> Result<(), String> {
    let verified = protocol::sign::verify_headers(
        message.headers.as_ref(),
        Kind::ApiReply,
        inbox,
        &message.payload,
    )
    .map_err(|e| format!("a reply was refused: {}", e.reason))?;
    if verified.key != service_key {
        return Err(format!(
            "a reply was signed by {}, not by the service key the trust file pins ({service_key})",
            verified.key
        ));
    }
    if verified.context != format!("re={request_sig}") {
        return Err("a reply signed by the service answers another request (replayed)".into());
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (the signed time of a request).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
