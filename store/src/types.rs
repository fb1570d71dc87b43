//! The values the store takes and gives back: stream ids, records, heads and append outcomes.

use std::fmt;
use std::str::FromStr;

/// A SHA-256 hash of a record (see [`crate::chain_hash`]).
pub type Hash = [u8; 32];

/// The id of a stream (one per upgrade): the 16 bytes of a ULID, big-endian, so streams sort by creation time.
/// Displayed and parsed as the ULID's 26-character string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub [u8; 16]);

impl StreamId {
    /// The 16 bytes used in keys and hashes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The stream id as a ULID.
    pub fn to_ulid(self) -> ulid::Ulid {
        ulid::Ulid::from_bytes(self.0)
    }
}

impl From<ulid::Ulid> for StreamId {
    fn from(u: ulid::Ulid) -> StreamId {
        StreamId(u.to_bytes())
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_ulid())
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", self.to_ulid())
    }
}

impl FromStr for StreamId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<StreamId, Self::Err> {
        Ok(ulid::Ulid::from_string(s)?.into())
    }
}

/// The last committed record of a stream. A stream that was never appended to has no head; `append` takes
/// `expected_seq = 0` for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: Hash,
}

/// A record to append: the exact bytes to store and hash, and an optional message id for de-duplication
/// (for example the `Nats-Msg-Id` of the message the event came from). Message ids are unique across the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    pub msg_id: Option<String>,
    pub bytes: Vec<u8>,
}

impl NewRecord {
    /// A record without a message id.
    pub fn new(bytes: impl Into<Vec<u8>>) -> NewRecord {
        NewRecord {
            msg_id: None,
            bytes: bytes.into(),
        }
    }

    /// A record with a message id.
    pub fn with_msg_id(msg_id: impl Into<String>, bytes: impl Into<Vec<u8>>) -> NewRecord {
        NewRecord {
            msg_id: Some(msg_id.into()),
            bytes: bytes.into(),
        }
    }
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub stream: StreamId,
    /// Position in the stream, from 1.
    pub seq: u64,
    /// `chain_hash(stream, seq, prev_hash, bytes)`.
    pub hash: Hash,
    /// The hash of record `seq - 1`, or [`crate::ZERO_HASH`] for seq 1.
    pub prev_hash: Hash,
    /// Position in the log's global order, from 1; increasing with commit order, not necessarily contiguous
    /// (a repaired torn tail leaves a gap).
    pub global_pos: u64,
    pub msg_id: Option<String>,
    pub bytes: Vec<u8>,
}

/// One entry of the global order: record `seq` of `stream` was committed at position `pos`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalEntry {
    pub pos: u64,
    pub stream: StreamId,
    pub seq: u64,
}

/// What `append` did with one of the records it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendedRecord {
    /// Where the record lives. For a duplicate, this is the record appended earlier with the same message id
    /// (possibly in another stream, or earlier in the same batch).
    pub stream: StreamId,
    pub seq: u64,
    pub hash: Hash,
    pub global_pos: u64,
    /// True when the message id was already in the log and nothing new was stored for this record.
    pub duplicate: bool,
}

/// The answer of `append`: one entry per record given, in the same order, and the stream's head afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub records: Vec<AppendedRecord>,
    /// The stream's head after the append (`None` when the stream is still empty).
    pub head: Option<Head>,
}

impl AppendOutcome {
    /// The records this append stored (not the duplicates).
    pub fn appended(&self) -> impl Iterator<Item = &AppendedRecord> {
        self.records.iter().filter(|r| !r.duplicate)
    }

    /// The first seq this append stored, if it stored anything.
    pub fn first_seq(&self) -> Option<u64> {
        self.appended().map(|r| r.seq).next()
    }

    /// The last seq this append stored, if it stored anything.
    pub fn last_seq(&self) -> Option<u64> {
        self.appended().map(|r| r.seq).last()
    }

    /// True when every record given was a duplicate (and the batch was not empty).
    pub fn all_duplicates(&self) -> bool {
        !self.records.is_empty() && self.records.iter().all(|r| r.duplicate)
    }
}
