//! How the log is laid out in sled: tree names, keys and values. Public so that auditors and the corruption
//! test can read (or damage) a copy of a log directly; everything else goes through [`crate::Store`].
//!
//! | tree      | key                          | value                                                         |
//! |-----------|------------------------------|---------------------------------------------------------------|
//! | `records` | stream (16) ++ seq (u64 BE)  | hash (32) ++ prev hash (32) ++ global pos (u64 BE) ++ msg id ++ bytes |
//! | `heads`   | stream (16)                  | seq (u64 BE) ++ hash (32)                                     |
//! | `global`  | global pos (u64 BE)          | stream (16) ++ seq (u64 BE)                                   |
//! | `dedupe`  | msg id (UTF-8)               | stream (16) ++ seq (u64 BE)                                   |
//! | `meta`    | `format`                     | `baton-log-v1`                                                |
//! | `meta`    | `next_global`                | next global position (u64 BE), 1 in an empty log              |
//!
//! The message id in a record value is one byte `0` (none) or `1` followed by its length (u32 BE) and its UTF-8
//! bytes; the record's bytes run to the end of the value.

use crate::error::StoreError;
use crate::hash::DOMAIN_TAG;
use crate::types::{Hash, Head, StreamId};

pub const RECORDS: &str = "records";
pub const HEADS: &str = "heads";
pub const GLOBAL: &str = "global";
pub const DEDUPE: &str = "dedupe";
pub const META: &str = "meta";
pub const META_FORMAT: &[u8] = b"format";
pub const META_NEXT_GLOBAL: &[u8] = b"next_global";

/// The five trees of a log.
#[derive(Clone)]
pub(crate) struct Trees {
    pub records: sled::Tree,
    pub heads: sled::Tree,
    pub global: sled::Tree,
    pub dedupe: sled::Tree,
    pub meta: sled::Tree,
}

impl Trees {
    pub fn open(db: &sled::Db) -> Result<Trees, StoreError> {
        Ok(Trees {
            records: db.open_tree(RECORDS)?,
            heads: db.open_tree(HEADS)?,
            global: db.open_tree(GLOBAL)?,
            dedupe: db.open_tree(DEDUPE)?,
            meta: db.open_tree(META)?,
        })
    }

    /// Writes the meta entries of a new log, and refuses a database of another format. A log with records but
    /// no meta is left alone: `verify` reports it.
    pub fn init_meta(&self) -> Result<(), StoreError> {
        match self.meta.get(META_FORMAT)? {
            Some(f) if f.as_ref() == DOMAIN_TAG => Ok(()),
            Some(f) => Err(StoreError::corrupt_index(format!(
                "meta format is {:?}, expected {:?}",
                String::from_utf8_lossy(&f),
                String::from_utf8_lossy(DOMAIN_TAG)
            ))),
            None if self.is_empty() => {
                // One batch, so a crash never leaves a format tag without its counter.
                let mut batch = sled::Batch::default();
                batch.insert(META_FORMAT, DOMAIN_TAG.as_slice());
                batch.insert(META_NEXT_GLOBAL, &1u64.to_be_bytes()[..]);
                self.meta.apply_batch(batch)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.heads.is_empty()
            && self.global.is_empty()
            && self.dedupe.is_empty()
            && self.meta.is_empty()
    }
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
    }
}
