//! The CLI's side of the `baton.api.*` request/reply API, and the mapping of
//! errors to exit codes.

use std::time::Duration;

use anyhow::Context;
use serde::{de::DeserializeOwned, Serialize};
use workflow::service::api::{self, ApiReply, ErrorKind};

use crate::Global;

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

/// A connection to NATS for API calls.
pub struct Client {
    pub nats: async_nats::Client,
    timeout: Duration,
}

impl Client {
    pub async fn connect(global: &Global) -> anyhow::Result<Client> {
        let nats = async_nats::ConnectOptions::new()
            .name("baton-cli")
            .connect(&global.nats)
            .await
            .with_context(|| format!("connecting to NATS at {}", global.nats))?;
        Ok(Client {
            nats,
            timeout: Duration::from_secs(global.api_timeout),
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
        let reply = tokio::time::timeout(
            self.timeout,
            self.nats.request(api::subject(verb), payload.into()),
        )
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the workflow service did not answer `{verb}` within {:?} (is `baton server` running?)",
                self.timeout
            )
        })?
        .map_err(|err| {
            anyhow::anyhow!("calling `{verb}` on the workflow service: {err} (is `baton server` running?)")
        })?;
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
