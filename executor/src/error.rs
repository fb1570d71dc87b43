//! The crate's one error type: infrastructure failures that stop the executor.
//! A refused request is not an error; it is answered with a `rejected` result.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The configuration is unusable.
    #[error("invalid executor configuration: {0}")]
    Config(String),

    /// The ledger could not be opened, read or written.
    #[error("executor ledger at {path}: could not {action}")]
    Ledger {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: sled::Error,
    },

    /// A ledger record could not be decoded (disk damage or a foreign file).
    #[error("executor ledger at {path}: record {key:?} is unreadable")]
    LedgerRecord {
        path: PathBuf,
        key: String,
        #[source]
        source: serde_json::Error,
    },

    /// Streams, consumers or buckets could not be set up.
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),

    /// A NATS call that the executor cannot work without failed.
    #[error("NATS: could not {action}")]
    Nats {
        action: &'static str,
        #[source]
        source: async_nats::Error,
    },
}
