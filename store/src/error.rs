//! The store's one error type. A conflict is a normal answer to optimistic concurrency and says nothing about the
//! log's health; corruption means the log on disk disagrees with itself; I/O and sled errors are infrastructure.
//! Duplicates are not errors at all: [`crate::AppendOutcome`] reports them.

use crate::types::StreamId;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first: its head is at `actual`, not at `expected`. Re-read the
    /// stream, decide again and retry with the new head.
    #[error("append conflict on stream {stream}: expected head seq {expected}, found {actual}")]
    Conflict {
        stream: StreamId,
        expected: u64,
        actual: u64,
    },

    /// The log disagrees with itself (a chain, a head or an index is wrong). `stream` and `seq` locate the damage
    /// when it belongs to a record; `what` says what was found.
    #[error("log corruption{}: {what}", locate(.stream, .seq))]
    Corruption {
        stream: Option<StreamId>,
        seq: Option<u64>,
        what: String,
    },

    /// A JSON-lines export is malformed or does not verify: `line` is 1-based, `field` names the JSON field.
    #[error("export line {line}, field `{field}`: {reason}")]
    InvalidExport {
        line: usize,
        field: String,
        reason: String,
    },

    /// `import_jsonl` refuses to overwrite: the stream already holds records.
    #[error("cannot import stream {stream}: it already exists in this log")]
    StreamExists { stream: StreamId },

    /// Another process (or another open handle in this one, until sled's background threads stop) holds the
    /// log's lock. Read through the process that holds it, or open a copy.
    #[error("the log in {path} is locked by another process")]
    Locked { path: std::path::PathBuf },

    /// Reading an export or writing one failed.
    #[error("export I/O failed")]
    Io(#[from] std::io::Error),

    /// sled failed (I/O, a database held by another process, ...).
    #[error("sled failed")]
    Sled(#[from] sled::Error),
}

impl StoreError {
    /// Builds a corruption error located at a record.
    pub(crate) fn corrupt(stream: StreamId, seq: u64, what: impl Into<String>) -> StoreError {
        StoreError::Corruption {
            stream: Some(stream),
            seq: Some(seq),
            what: what.into(),
        }
    }

    /// Builds a corruption error located at a stream as a whole.
    pub(crate) fn corrupt_stream(stream: StreamId, what: impl Into<String>) -> StoreError {
        StoreError::Corruption {
            stream: Some(stream),
            seq: None,
            what: what.into(),
        }
    }

    /// Builds a corruption error that belongs to no single stream (global index, dedupe table, meta).
    pub(crate) fn corrupt_index(what: impl Into<String>) -> StoreError {
        StoreError::Corruption {
            stream: None,
            seq: None,
            what: what.into(),
        }
    }
}

/// A copy of an error, for handing one failure to several callers (a group commit answers every caller of a
/// failed flush with it). An I/O error is copied as its kind and message, as sled copies its own.
impl Clone for StoreError {
    fn clone(&self) -> StoreError {
        match self {
            StoreError::Conflict {
                stream,
                expected,
                actual,
            } => StoreError::Conflict {
                stream: *stream,
                expected: *expected,
                actual: *actual,
            },
            StoreError::Corruption { stream, seq, what } => StoreError::Corruption {
                stream: *stream,
                seq: *seq,
                what: what.clone(),
            },
            StoreError::InvalidExport {
                line,
                field,
                reason,
            } => StoreError::InvalidExport {
                line: *line,
                field: field.clone(),
                reason: reason.clone(),
            },
            StoreError::StreamExists { stream } => StoreError::StreamExists { stream: *stream },
            StoreError::Locked { path } => StoreError::Locked { path: path.clone() },
            StoreError::Io(e) => StoreError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StoreError::Sled(e) => StoreError::Sled(e.clone()),
        }
    }
}

fn locate(stream: &Option<StreamId>, seq: &Option<u64>) -> String {
    match (stream, seq) {
        (Some(s), Some(n)) => format!(" in stream {s} at seq {n}"),
        (Some(s), None) => format!(" in stream {s}"),
        (None, Some(n)) => format!(" at seq {n}"),
        (None, None) => String::new(),
    }
}
