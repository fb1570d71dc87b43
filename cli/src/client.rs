//! The CLI's side of the `baton.api.*` request/reply API, and the mapping of
//! errors to exit codes.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::{de::DeserializeOwned, Serialize};
use workflow::service::api::{self, ApiReply, ErrorKind};

use crate::Global;
use futures::StreamExt;
use protocol::sign::{Identity, Kind};

/// What kind of failure an error is: it decides the exit code (README "Exit
/// codes") and the `kind` of the JSON error under `--output json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// NATS, the service or the log failed (or anything not classified): 1.
    Infrastructure,
    /// A bad flag or argument, a malformed id, or a file or setting named
    /// on the command line that is missing or unusable: 2.
    Usage,
    /// The service understood the request and refused it: 3.
    Rejected,
    /// The service has no such upgrade: 3.
    NotFound,
    /// The upgrade (or the plan's preflight) ended halted or aborted: 4.
    UpgradeFailed,
    /// A verification found the log or the decisions wrong: 5.
    VerifyFailed,
}

impl Class {
    /// The process exit code of this class.
    pub fn code(self) -> u8 {
        match self {
            Class::Infrastructure => EXIT_FAILURE,
            Class::Usage => EXIT_USAGE,
            Class::Rejected | Class::NotFound => EXIT_REJECTED,
            Class::UpgradeFailed => EXIT_UPGRADE_FAILED,
            Class::VerifyFailed => EXIT_VERIFY_FAILED,
        }
    }

    /// Its name in a JSON error.
    pub fn name(self) -> &'static str {
        match self {
            Class::Infrastructure => "infrastructure",
            Class::Usage => "usage",
            Class::Rejected => "rejected",
            Class::NotFound => "not_found",
            Class::UpgradeFailed => "upgrade_failed",
            Class::VerifyFailed => "verify_failed",
        }
    }

    fn of_code(code: u8) -> Class {
        match code {
            EXIT_USAGE => Class::Usage,
            EXIT_REJECTED => Class::Rejected,
            EXIT_UPGRADE_FAILED => Class::UpgradeFailed,
            EXIT_VERIFY_FAILED => Class::VerifyFailed,
            _ => Class::Infrastructure,
        }
    }
}

/// An error that carries its own class (and so its exit code, see
/// `main.rs`), and the command to run next where there is one.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub class: Class,
    pub message: String,
    pub hint: Option<String>,
}

impl Exit {
    /// An error with exit code `code` (its class follows from it).
    pub fn new(code: u8, message: impl Into<String>) -> Exit {
        Exit::of(Class::of_code(code), message)
    }

    pub fn of(class: Class, message: impl Into<String>) -> Exit {
        Exit {
            class,
            message: message.into(),
            hint: None,
        }
    }

    /// The same error, naming the command to run next.
    pub fn hint(mut self, next: impl Into<String>) -> Exit {
        self.hint = Some(next.into());
        self
    }
}

pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REJECTED: u8 = 3;
pub const EXIT_UPGRADE_FAILED: u8 = 4;
pub const EXIT_VERIFY_FAILED: u8 = 5;

/// The class of an error: its own if it carries one; a key, trust file or
/// NATS setting that cannot be used is a usage error; anything else is an
/// infrastructure failure.
pub fn class_of(err: &anyhow::Error) -> Class {
    for cause in err.chain() {
        if let Some(exit) = cause.downcast_ref::<Exit>() {
            return exit.class;
        }
        if let Some(
            protocol::ProtocolError::Key { .. }
            | protocol::ProtocolError::Trust { .. }
            | protocol::ProtocolError::Connect(_),
        ) = cause.downcast_ref::<protocol::ProtocolError>()
        {
            return Class::Usage;
        }
    }
    Class::Infrastructure
}

/// The exit code for an error (see [`class_of`]).
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    class_of(err).code()
}

/// The command to run next, if the error names one.
pub fn hint_of(err: &anyhow::Error) -> Option<String> {
    err.chain()
        .find_map(|cause| cause.downcast_ref::<Exit>())
        .and_then(|exit| exit.hint.clone())
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
        let timeout = Duration::from_secs(global.api_timeout);
        let (options, addrs) = config.options("baton-cli").await?;
        // `call` waits for its reply itself, up to `timeout` (the NATS client's
        // own request timeout, 10 s by default, never applies to it); the
        // client's is set too, so that no request made through it stops at 10 s.
        let nats = options
            .request_timeout(Some(timeout))
            .connect(addrs)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        Ok(Client {
            nats,
            timeout,
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
            ApiReply::Err(err) => Err(match err.kind {
                ErrorKind::Rejected => Exit::of(Class::Rejected, err.message),
                ErrorKind::NotFound => Exit::of(Class::NotFound, err.message).hint("baton list"),
                ErrorKind::Internal => Exit::of(Class::Infrastructure, err.message),
            }
            .into()),
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
