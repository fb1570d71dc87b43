//! The crate's one error type.

use crate::decode::DecodeError;

/// What can go wrong while speaking the protocol or setting up JetStream.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// A message could not be decoded (see [`DecodeError`] for the field).
    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// A name that must be a single NATS subject token was not one.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// The server runs a NATS version without the features we rely on.
    #[error("nats-server {found} is too old: Baton needs nats-server >= {needed} (JetStream work-queue streams, KV with TTL)")]
    ServerTooOld { found: String, needed: &'static str },

    /// The server answered, but JetStream is not enabled for this account.
    #[error("JetStream is not available on the server (start nats-server with -js, or enable JetStream for this account)")]
    JetStreamUnavailable {
        #[source]
        source: async_nats::jetstream::context::AccountError,
    },

    /// A stream, consumer or bucket exists with options that contradict the contract.
    #[error("{kind} {name} exists with incompatible options: {detail}; delete it or fix the server configuration")]
    Incompatible {
        kind: &'static str,
        name: String,
        detail: String,
    },

    /// A stream or bucket that the workflow service creates does not exist
    /// yet: an executor (which may not create them) waits and retries.
    #[error("{kind} {name} does not exist yet: the workflow service creates it (is `baton server` running on this NATS?)")]
    NotCreated { kind: &'static str, name: String },

    /// A JetStream administrative call failed.
    #[error("could not {action} {name}")]
    Setup {
        action: &'static str,
        name: String,
        #[source]
        source: async_nats::Error,
    },

    /// A key file could not be used.
    #[error("key file {}: {reason}", path.display())]
    Key {
        path: std::path::PathBuf,
        reason: String,
    },

    /// The trust file is malformed; names the file, line and field.
    #[error("{file}:{line}: {field}: {reason}")]
    Trust {
        file: String,
        line: usize,
        field: String,
        reason: String,
    },

    /// The NATS connection settings are unusable (a file missing, a malformed URL).
    #[error("NATS connection settings: {0}")]
    Connect(String),

    /// Serialising a message failed (a bug: our types always serialise).
    #[error("could not encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}
