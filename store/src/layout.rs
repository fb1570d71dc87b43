//! How the log is laid out in sled: one tree, keys and values. Public so that auditors and the corruption
//! test can read (or damage) a copy of a log directly; everything else goes through [`crate::Store`].
//!
//! Format `baton-log-v2`: every entry lives in the one tree [`TREE`] (`log`); the first byte of a key says which
//! table it belongs to, so that one append is one [`sled::Tree::apply_batch`] on one tree (atomic, also across a
//! crash) instead of a transaction over five trees:
//!
//! | prefix | table     | rest of the key              | value                                                         |
//! |--------|-----------|------------------------------|---------------------------------------------------------------|
//! | `r`    | records   | stream (16) ++ seq (u64 BE)  | hash (32) ++ prev hash (32) ++ global pos (u64 BE) ++ msg id ++ bytes |
//! | `h`    | heads     | stream (16)                  | seq (u64 BE) ++ hash (32)                                     |
//! | `g`    | global    | first global pos (u64 BE)    | stream (16) ++ first seq (u64 BE) ++ count (u64 BE): a *run*  |
//! | `d`    | dedupe    | msg id (UTF-8)               | stream (16) ++ seq (u64 BE)                                   |
//! | `m`    | meta      | `format`                     | `baton-log-v2`                                                |
//! | `m`    | meta      | `next_global`                | next global position (u64 BE), 1 in an empty log              |
//!
//! A global run says that positions `pos .. pos + count` hold seqs `seq .. seq + count` of `stream`: the records
//! one append stores get consecutive positions and consecutive seqs, so an append writes one run, not one entry
//! per record (format v1 had one entry per record; the migration turns each into a run of 1). Runs never overlap
//! and have `1 <= count <=` [`MAX_RUN`]. No key starts with any other byte (`verify` checks it). The message id in a record value is one byte `0`
//! (none) or `1` followed by its length (u32 BE) and its UTF-8 bytes; the record's bytes run to the end of the
//! value. The values are those of format `baton-log-v1` (module [`v1`]: five trees, one per table, same keys
//! without the prefix, same values but the format tag); `Store::open` migrates a v1 log (see `migrate.rs`).
//! A record's hash does not depend on the layout: the chain's domain tag stays [`crate::DOMAIN_TAG`].

use crate::error::StoreError;
use crate::types::{Hash, Head, StreamId};

/// The one tree of a `baton-log-v2` log.
pub const TREE: &str = "log";
/// The format tag stored under [`META_FORMAT`].
pub const FORMAT_TAG: &[u8; 12] = b"baton-log-v2";

/// Key prefix of the records table.
pub const RECORDS: u8 = b'r';
/// Key prefix of the heads table.
pub const HEADS: u8 = b'h';
/// Key prefix of the global index.
pub const GLOBAL: u8 = b'g';
/// Key prefix of the dedupe table.
pub const DEDUPE: u8 = b'd';
/// Key prefix of the meta table.
pub const META: u8 = b'm';
/// The known prefixes, in key order.
pub const PREFIXES: [u8; 5] = [DEDUPE, GLOBAL, HEADS, META, RECORDS];
/// The key of the format tag.
pub const META_FORMAT: &[u8] = b"mformat";
/// The key of the next global position.
pub const META_NEXT_GLOBAL: &[u8] = b"mnext_global";

/// Format `baton-log-v1`: five trees, one per table, keys without prefix. Only read (by the migration) and
/// written by tests that build a v1 log.
pub mod v1 {
    pub const RECORDS: &str = "records";
    pub const HEADS: &str = "heads";
    pub const GLOBAL: &str = "global";
    pub const DEDUPE: &str = "dedupe";
    pub const META: &str = "meta";
    /// The trees, in the order the migration copies them (meta last).
    pub const TREES: [&str; 5] = [RECORDS, HEADS, GLOBAL, DEDUPE, META];
    pub const META_FORMAT: &[u8] = b"format";
    pub const META_NEXT_GLOBAL: &[u8] = b"next_global";
    pub const FORMAT_TAG: &[u8; 12] = b"baton-log-v1";

    /// The v2 prefix of each v1 tree's entries.
    pub fn prefix_of(tree: &str) -> Option<u8> {
        match tree {
            RECORDS => Some(super::RECORDS),
            HEADS => Some(super::HEADS),
            GLOBAL => Some(super::GLOBAL),
            DEDUPE => Some(super::DEDUPE),
            META => Some(super::META),
            _ => None,
        }
    }
}

/// Opens the log's tree in a raw sled database (for auditors and tests working on a copy).
pub fn open_tree(db: &sled::Db) -> sled::Result<sled::Tree> {
    db.open_tree(TREE)
}

/// Writes the meta entries of a new log, and refuses a database of another format. A log with entries but no
/// format tag is left alone: `verify` reports it.
pub(crate) fn init_meta(tree: &sled::Tree) -> Result<(), StoreError> {
    match tree.get(META_FORMAT)? {
        Some(f) if f.as_ref() == FORMAT_TAG => Ok(()),
        Some(f) => Err(StoreError::corrupt_index(format!(
            "meta format is {:?}, expected {:?}",
            String::from_utf8_lossy(&f),
            String::from_utf8_lossy(FORMAT_TAG)
        ))),
        None if tree.is_empty() => {
            // One batch, so a crash never leaves a format tag without its counter.
            let mut batch = sled::Batch::default();
            batch.insert(META_FORMAT, FORMAT_TAG.as_slice());
            batch.insert(META_NEXT_GLOBAL, &1u64.to_be_bytes()[..]);
            tree.apply_batch(batch)?;
            Ok(())
        }
        None => Ok(()),
    }
}

/// `prefix ++ rest`: the key of any entry.
pub fn prefixed(prefix: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest);
    k
}

/// The key of record `seq` of `stream` in the tree: `r ++ stream ++ seq`.
pub fn record_entry_key(stream: &StreamId, seq: u64) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[0] = RECORDS;
    k[1..17].copy_from_slice(stream.as_bytes());
    k[17..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The key of the head of `stream`: `h ++ stream`.
pub fn head_entry_key(stream: &StreamId) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = HEADS;
    k[1..].copy_from_slice(stream.as_bytes());
    k
}

/// The key of global position `pos`: `g ++ pos`.
pub fn global_entry_key(pos: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = GLOBAL;
    k[1..].copy_from_slice(&pos.to_be_bytes());
    k
}

/// The longest run: an append of more records writes several runs. Bounds the work a (damaged) run can cause.
pub const MAX_RUN: u64 = 4096;

/// A run of the global index: positions `pos .. pos + count` hold seqs `seq .. seq + count` of `stream` (the key
/// holds `pos`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalRun {
    pub stream: StreamId,
    pub seq: u64,
    pub count: u64,
}

impl GlobalRun {
    /// The seq at position `pos` of a run starting at `first_pos`, if the run covers it.
    pub fn seq_at(&self, first_pos: u64, pos: u64) -> Option<u64> {
        let i = pos.checked_sub(first_pos)?;
        (i < self.count).then(|| self.seq + i)
    }
}

pub fn encode_global_run(run: &GlobalRun) -> [u8; 32] {
    let mut v = [0u8; 32];
    v[..16].copy_from_slice(run.stream.as_bytes());
    v[16..24].copy_from_slice(&run.seq.to_be_bytes());
    v[24..].copy_from_slice(&run.count.to_be_bytes());
    v
}

/// Decodes a run; `None` when the length is wrong or the count is 0 or above [`MAX_RUN`].
pub fn decode_global_run(v: &[u8]) -> Option<GlobalRun> {
    if v.len() != 32 {
        return None;
    }
    let (stream, seq) = decode_record_key(&v[..24])?;
    let count = decode_u64(&v[24..])?;
    (count > 0 && count <= MAX_RUN).then_some(GlobalRun { stream, seq, count })
}

/// The key of the dedupe entry of message id `id`: `d ++ id`.
pub fn dedupe_entry_key(id: &str) -> Vec<u8> {
    prefixed(DEDUPE, id.as_bytes())
}

/// The keys of one table: from `prefix` (included) to `prefix + 1` (excluded).
pub fn table_range(prefix: u8) -> std::ops::Range<[u8; 1]> {
    [prefix]..[prefix + 1]
}

/// Every key of `table`'s entries in `tree`, with its prefix; a helper for tests and auditors.
pub fn scan_table(tree: &sled::Tree, prefix: u8) -> sled::Iter {
    tree.range(table_range(prefix))
}

/// `stream ++ seq`: the key of a record, and the value of global and dedupe entries.
pub fn record_key(stream: &StreamId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(stream.as_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Decodes `stream ++ seq`; `None` when the length is wrong.
pub fn decode_record_key(k: &[u8]) -> Option<(StreamId, u64)> {
    if k.len() != 24 {
        return None;
    }
    let stream = StreamId(k[..16].try_into().ok()?);
    Some((stream, u64::from_be_bytes(k[16..].try_into().ok()?)))
}

/// Decodes a stream id key (heads tree).
pub fn decode_stream(k: &[u8]) -> Option<StreamId> {
    Some(StreamId(k.try_into().ok()?))
}

/// Decodes a big-endian u64 (global keys, `next_global`).
pub fn decode_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub fn encode_head(head: &Head) -> [u8; 40] {
    let mut v = [0u8; 40];
    v[..8].copy_from_slice(&head.seq.to_be_bytes());
    v[8..].copy_from_slice(&head.hash);
    v
}

pub fn decode_head(v: &[u8]) -> Option<Head> {
    if v.len() != 40 {
        return None;
    }
    Some(Head {
        seq: u64::from_be_bytes(v[..8].try_into().ok()?),
        hash: v[8..].try_into().ok()?,
    })
}

/// The stored part of a record (the key holds stream and seq).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordValue {
    pub hash: Hash,
    pub prev_hash: Hash,
    pub global_pos: u64,
    pub msg_id: Option<String>,
    pub bytes: Vec<u8>,
}

pub fn encode_record(
    hash: &Hash,
    prev: &Hash,
    global_pos: u64,
    msg_id: Option<&str>,
    bytes: &[u8],
) -> Vec<u8> {
    let id_len = msg_id.map_or(0, |m| 4 + m.len());
    let mut v = Vec::with_capacity(73 + id_len + bytes.len());
    v.extend_from_slice(hash);
    v.extend_from_slice(prev);
    v.extend_from_slice(&global_pos.to_be_bytes());
    match msg_id {
        None => v.push(0),
        Some(m) => {
            v.push(1);
            v.extend_from_slice(&(m.len() as u32).to_be_bytes());
            v.extend_from_slice(m.as_bytes());
        }
    }
    v.extend_from_slice(bytes);
    v
}

/// Decodes a record value; the error says which part is malformed.
pub fn decode_record(v: &[u8]) -> Result<RecordValue, &'static str> {
    let r = decode_record_ref(v)?;
    Ok(RecordValue {
        hash: r.hash,
        prev_hash: r.prev_hash,
        global_pos: r.global_pos,
        msg_id: r.msg_id.map(str::to_owned),
        bytes: r.bytes.to_vec(),
    })
}

/// A record value decoded in place: what [`decode_record`] gives, borrowed from the value (no allocation, for
/// the verification's walk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordRef<'a> {
    pub hash: Hash,
    pub prev_hash: Hash,
    pub global_pos: u64,
    pub msg_id: Option<&'a str>,
    pub bytes: &'a [u8],
}

/// [`decode_record`] without copying: the same checks and the same errors.
pub(crate) fn decode_record_ref(v: &[u8]) -> Result<RecordRef<'_>, &'static str> {
    if v.len() < 73 {
        return Err("record value too short");
    }
    let hash: Hash = v[..32].try_into().map_err(|_| "hash")?;
    let prev_hash: Hash = v[32..64].try_into().map_err(|_| "prev hash")?;
    let global_pos = u64::from_be_bytes(v[64..72].try_into().map_err(|_| "global pos")?);
    let (msg_id, rest) = match v[72] {
        0 => (None, &v[73..]),
        1 => {
            let len_bytes: [u8; 4] = v
                .get(73..77)
                .ok_or("message id length truncated")?
                .try_into()
                .map_err(|_| "message id length")?;
            let len = u32::from_be_bytes(len_bytes) as usize;
            let id = v
                .get(77..77 + len)
                .ok_or("message id longer than the record")?;
            let id = std::str::from_utf8(id).map_err(|_| "message id is not UTF-8")?;
            (Some(id), &v[77 + len..])
        }
        _ => return Err("bad message id marker"),
    };
    Ok(RecordRef {
        hash,
        prev_hash,
        global_pos,
        msg_id,
        bytes: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_round_trip() {
        for id in [None, Some(""), Some("u:s:1")] {
            let v = encode_record(&[1; 32], &[2; 32], 42, id, b"\x00bytes\xff");
            let d = decode_record(&v).unwrap();
            assert_eq!(d.hash, [1; 32]);
            assert_eq!(d.prev_hash, [2; 32]);
            assert_eq!(d.global_pos, 42);
            assert_eq!(d.msg_id.as_deref(), id);
            assert_eq!(d.bytes, b"\x00bytes\xff");
        }
    }

    #[test]
    fn malformed_record_values_are_refused() {
        assert!(decode_record(&[0; 10]).is_err());
        let mut v = encode_record(&[1; 32], &[2; 32], 42, Some("abc"), b"");
        v[72] = 7;
        assert!(decode_record(&v).is_err());
        v[72] = 1;
        v[76] = 200;
        assert!(decode_record(&v).is_err());
    }

    #[test]
    fn keys_round_trip() {
        let s = StreamId([5; 16]);
        assert_eq!(decode_record_key(&record_key(&s, 9)), Some((s, 9)));
        assert_eq!(decode_record_key(&[0; 23]), None);
        let h = Head {
            seq: 3,
            hash: [4; 32],
        };
        assert_eq!(decode_head(&encode_head(&h)), Some(h));
        assert_eq!(&record_entry_key(&s, 9)[1..], &record_key(&s, 9)[..]);
        assert_eq!(&head_entry_key(&s)[1..], s.as_bytes());
        let run = GlobalRun {
            stream: s,
            seq: 7,
            count: 3,
        };
        assert_eq!(decode_global_run(&encode_global_run(&run)), Some(run));
        assert_eq!(run.seq_at(10, 12), Some(9));
        assert_eq!(run.seq_at(10, 13), None);
        assert_eq!(run.seq_at(10, 9), None);
        assert_eq!(
            decode_global_run(&encode_global_run(&GlobalRun { count: 0, ..run })),
            None
        );
    }
}
