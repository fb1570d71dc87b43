//! Reading the log back: one stream from a seq, the heads of all streams, and the global order.
//! Reads see committed records only (up to the head at the time of the call), never a torn tail.

use crate::error::StoreError;
use crate::layout::{
    self, decode_head, decode_record, decode_record_key, decode_stream, decode_u64,
};
use crate::types::{GlobalEntry, Head, Record, StreamId};
use crate::Store;

impl Store {
    /// The head of `stream`, or `None` when nothing was ever appended to it.
    pub fn head(&self, stream: StreamId) -> Result<Option<Head>, StoreError> {
        match self.tree.get(layout::head_entry_key(&stream))? {
            None => Ok(None),
            Some(v) => decode_head(&v)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt_stream(stream, "malformed head")),
        }
    }

    /// Every stream with its head, in stream id order (that is, creation order for ULIDs).
    pub fn streams(&self) -> Result<Vec<(StreamId, Head)>, StoreError> {
        let mut out = Vec::new();
        for kv in layout::scan_table(&self.tree, layout::HEADS) {
            let (k, v) = kv?;
            let stream = decode_stream(&k[1..])
                .ok_or_else(|| StoreError::corrupt_index("malformed key in heads"))?;
            let head = decode_head(&v)
                .ok_or_else(|| StoreError::corrupt_stream(stream, "malformed head"))?;
            out.push((stream, head));
        }
        Ok(out)
    }

    /// The committed records of `stream` from `from_seq` (1 for all) up to its head, in order. The iterator is
    /// lazy; it fails with [`StoreError::Corruption`] on a missing or malformed record. It checks no hashes:
    /// that is [`Store::verify`]'s job.
    pub fn read(&self, stream: StreamId, from_seq: u64) -> Result<StreamReader, StoreError> {
        let last = self.head(stream)?.map_or(0, |h| h.seq);
        let next = from_seq.max(1);
        let start = layout::record_entry_key(&stream, next);
        // An empty range would make sled panic; `next > last` never reads anyway.
        let end = layout::record_entry_key(&stream, last.max(next));
        Ok(StreamReader {
            inner: self.tree.range(start..=end),
            stream,
            next,
            last,
        })
    }

    /// The global order from position `from` (1 for all): which record was committed at each position. Lazy;
    /// positions are increasing but may have gaps (see [`Record::global_pos`]).
    pub fn global(&self, from: u64) -> impl Iterator<Item = Result<GlobalEntry, StoreError>> {
        // Start at the run that covers `from`, if one does: runs are keyed by their first position.
        let mut start = layout::global_entry_key(from).to_vec();
        if let Some(Ok((k, v))) = self
            .tree
            .range(vec![layout::GLOBAL]..=start.clone())
            .next_back()
        {
            let first = decode_u64(&k[1..]);
            let run = layout::decode_global_run(&v);
            if let (Some(first), Some(run)) = (first, run) {
                if run.seq_at(first, from).is_some() {
                    start = k.to_vec();
                }
            }
        }
        self.tree
            .range(start..vec![layout::GLOBAL + 1])
            .flat_map(move |kv| match expand_run(kv) {
                Ok(entries) => entries
                    .into_iter()
                    .filter(|e| e.pos >= from)
                    .map(Ok)
                    .collect::<Vec<_>>(),
                Err(e) => vec![Err(e)],
            })
    }
}

/// The entries of one run of the global index.
fn expand_run(kv: sled::Result<(sled::IVec, sled::IVec)>) -> Result<Vec<GlobalEntry>, StoreError> {
    let (k, v) = kv?;
    let pos =
        decode_u64(&k[1..]).ok_or_else(|| StoreError::corrupt_index("malformed global key"))?;
    let run = layout::decode_global_run(&v).ok_or_else(|| {
        StoreError::corrupt_index(format!("malformed global entry at position {pos}"))
    })?;
    Ok((0..run.count)
        .map(|i| GlobalEntry {
            pos: pos + i,
            stream: run.stream,
            seq: run.seq + i,
        })
        .collect())
}

/// The iterator returned by [`Store::read`].
pub struct StreamReader {
    inner: sled::Iter,
    stream: StreamId,
    /// The seq the next record must have.
    next: u64,
    /// The head when reading started; reading stops there.
    last: u64,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream", &self.stream)
            .field("next", &self.next)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

impl Iterator for StreamReader {
    type Item = Result<Record, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.last {
            return None;
        }
        let item = match self.inner.next() {
            None => Err(StoreError::corrupt(
                self.stream,
                self.next,
                "record missing",
            )),
            Some(kv) => decode_stream_item(kv, self.stream, self.next),
        };
        // Stop after an error: the rest of the stream cannot be trusted to be in order.
        self.next = if item.is_ok() {
            self.next + 1
        } else {
            u64::MAX
        };
        Some(item)
    }
}

fn decode_stream_item(
    kv: sled::Result<(sled::IVec, sled::IVec)>,
    stream: StreamId,
    expected: u64,
) -> Result<Record, StoreError> {
    let (k, v) = kv?;
    let seq = match decode_record_key(&k[1..]) {
        Some((s, seq)) if s == stream => seq,
        _ => {
            return Err(StoreError::corrupt(
                stream,
                expected,
                "malformed record key",
            ))
        }
    };
    if seq != expected {
        return Err(StoreError::corrupt(stream, expected, "record missing"));
    }
    let r = decode_record(&v).map_err(|what| StoreError::corrupt(stream, seq, what))?;
    Ok(Record {
        stream,
        seq,
        hash: r.hash,
        prev_hash: r.prev_hash,
        global_pos: r.global_pos,
        msg_id: r.msg_id,
        bytes: r.bytes,
    })
}
