//! Verification and torn-tail repair.
//!
//! `verify` walks every record once, in key order, and checks:
//! - each stream's records are numbered 1, 2, 3... without gaps, each stores its predecessor's hash, and each
//!   stored hash equals the recomputed [`crate::chain_hash`] (bit flips, edits, reorders, insertions, deletions);
//! - each head points at an existing record with that hash, and no head lacks records (truncation, edited heads);
//! - the global index and the dedupe table map one-to-one onto the records that claim them;
//! - the meta entries (format tag, next global position) agree with the rest.
//!
//! Records beyond a stream's head chain correctly but were never committed: a *torn tail*. It is reported (not
//! an error) when those records are the last ones written to the whole log, which is the only place a crash can
//! leave them; [`Store::repair_torn_tail`] then removes them. Anything else is [`StoreError::Corruption`] and is
//! never repaired automatically.

use crate::error::StoreError;
use crate::hash::{chain_hash, ZERO_HASH};
use crate::layout::{
    self, decode_head, decode_record, decode_record_key, decode_stream, decode_u64,
};
use crate::types::{Hash, Head, StreamId};
use crate::Store;
use std::collections::BTreeMap;

/// The result of a verification that found no damage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Streams with a head.
    pub streams: u64,
    /// Records checked, torn tails included.
    pub records: u64,
    /// Records written beyond a head (never committed), one entry per stream.
    pub torn_tails: Vec<TornTail>,
    /// The highest global position of a committed record (0 in an empty log).
    pub(crate) max_committed_pos: u64,
    /// `next_global` as read from meta.
    pub(crate) next_global: u64,
}

impl VerifyReport {
    /// True when the log verified and has no torn tail.
    pub fn is_clean(&self) -> bool {
        self.torn_tails.is_empty()
    }
}

impl std::fmt::Display for VerifyReport {
    /// `596 records in 2 streams, every chain intact` (and the torn tails, if any).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} records in {} streams, every chain intact",
            self.records, self.streams
        )?;
        for t in &self.torn_tails {
            write!(
                f,
                "; stream {}: records {}..={} beyond its head {} (never committed)",
                t.stream, t.first_seq, t.last_seq, t.head_seq
            )?;
        }
        Ok(())
    }
}

/// Records `first_seq..=last_seq` of `stream` exist beyond its head `head_seq` (0 when it has no head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub stream: StreamId,
    pub head_seq: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Where the walk is inside the current stream.
pub(crate) struct StreamWalk {
    pub stream: StreamId,
    pub head: Option<Head>,
    pub next: u64,
    pub prev: Hash,
    pub torn: Option<TornTail>,
}

impl StreamWalk {
    pub fn new(stream: StreamId, head: Option<Head>) -> StreamWalk {
        StreamWalk {
            stream,
            head,
            next: 1,
            prev: ZERO_HASH,
            torn: None,
        }
    }

    pub fn head_seq(&self) -> u64 {
        self.head.map_or(0, |h| h.seq)
    }

    /// Checks the end of the stream: its head must not lie beyond its last record.
    pub fn finish(self, torn: &mut Vec<TornTail>) -> Result<(), StoreError> {
        let last = self.next - 1;
        if self.head_seq() > last {
            return Err(StoreError::corrupt_stream(
                self.stream,
                format!(
                    "head is at seq {} but the last record is seq {last} (truncated)",
                    self.head_seq()
                ),
            ));
        }
        torn.extend(self.torn);
        Ok(())
    }
}

impl Store {
    /// Recomputes every chain and cross-checks heads, global index, dedupe table and meta (see the module docs).
    /// Returns the first damage found as [`StoreError::Corruption`]; a torn tail alone is reported in the
    /// [`VerifyReport`].
    ///
    /// sled has no snapshots: run this while nothing appends (the service at startup, an auditor on a copy).
    /// An append racing with it can be reported as a torn tail or as an index count mismatch.
    ///
    /// It runs on every core in bounded memory (`verify_fast.rs`); when that finds anything wrong, the
    /// sequential walk runs again to name the first damage, so reports and errors are the walk's.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        match self.verify_fast() {
            Ok(Some(report)) => Ok(report),
            Ok(None) | Err(StoreError::Corruption { .. }) => self.verify_sequential(),
            Err(other) => Err(other),
        }
    }

    /// The sequential walk: every record in key order on one thread, its index entries looked up one by one.
    /// Its first finding is the error [`Store::verify`] reports; it gives the same results, slower (the store's
    /// benchmark compares the two).
    pub fn verify_sequential(&self) -> Result<VerifyReport, StoreError> {
        let t = &self.tree;
        let next_global = self.verify_meta()?;
        let mut heads = self.verify_heads()?;
        let (global_entries, max_pos) = self.verify_global_runs()?;
        let streams = heads.len() as u64;

        let mut records = 0u64;
        let mut with_msg_id = 0u64;
        let mut max_committed_pos = 0u64;
        let mut min_torn_pos = u64::MAX;
        let mut torn = Vec::new();
        let mut walk: Option<StreamWalk> = None;
        for kv in layout::scan_table(t, layout::RECORDS) {
            let (k, v) = kv?;
            let k = &k[1..];
            let (stream, seq) = decode_record_key(k).ok_or_else(|| {
                StoreError::corrupt_index(format!("malformed record key {}", hex::encode(k)))
            })?;
            if walk.as_ref().is_none_or(|w| w.stream != stream) {
                if let Some(w) = walk.take() {
                    w.finish(&mut torn)?;
                }
                walk = Some(StreamWalk::new(stream, heads.remove(&stream)));
            }
            let w = walk.as_mut().expect("set above");
            if seq != w.next {
                return Err(StoreError::corrupt(
                    stream,
                    w.next,
                    format!("record missing (the next record present is seq {seq})"),
                ));
            }
            let r = decode_record(&v).map_err(|what| StoreError::corrupt(stream, seq, what))?;
            if r.prev_hash != w.prev {
                return Err(StoreError::corrupt(
                    stream,
                    seq,
                    "stored previous hash does not match the previous record",
                ));
            }
            if chain_hash(&stream, seq, &w.prev, &r.bytes) != r.hash {
                return Err(StoreError::corrupt(
                    stream,
                    seq,
                    "hash does not match the record's contents",
                ));
            }
            if self.global_run_at(r.global_pos)? != Some((stream, seq)) {
                return Err(StoreError::corrupt(
                    stream,
                    seq,
                    format!(
                        "global index entry {} does not point back at this record",
                        r.global_pos
                    ),
                ));
            }
            if let Some(id) = &r.msg_id {
                if t.get(layout::dedupe_entry_key(id))?.as_deref() != Some(k) {
                    return Err(StoreError::corrupt(
                        stream,
                        seq,
                        format!("dedupe entry {id:?} does not point back at this record"),
                    ));
                }
                with_msg_id += 1;
            }
            let head_seq = w.head_seq();
            if seq <= head_seq {
                max_committed_pos = max_committed_pos.max(r.global_pos);
                if seq == head_seq && w.head.is_some_and(|h| h.hash != r.hash) {
                    return Err(StoreError::corrupt(
                        stream,
                        seq,
                        "head hash disagrees with the record",
                    ));
                }
            } else {
                min_torn_pos = min_torn_pos.min(r.global_pos);
                let tail = w.torn.get_or_insert(TornTail {
                    stream,
                    head_seq,
                    first_seq: seq,
                    last_seq: seq,
                });
                tail.last_seq = seq;
            }
            w.prev = r.hash;
            w.next += 1;
            records += 1;
        }
        if let Some(w) = walk.take() {
            w.finish(&mut torn)?;
        }
        if let Some((stream, head)) = heads.into_iter().next() {
            return Err(StoreError::corrupt_stream(
                stream,
                format!("head at seq {} but the stream has no records", head.seq),
            ));
        }

        // Every record maps to its own global and dedupe entry (checked above; the runs do not overlap, so a
        // position has one entry); equal counts make the maps one-to-one, so no entry points nowhere.
        if global_entries != records {
            return Err(StoreError::corrupt_index(format!(
                "global index has {global_entries} entries for {records} records"
            )));
        }
        let dedupe_entries = layout::scan_table(t, layout::DEDUPE).count() as u64;
        if dedupe_entries != with_msg_id {
            return Err(StoreError::corrupt_index(format!(
                "dedupe table has {dedupe_entries} entries for {with_msg_id} records with a message id"
            )));
        }
        if next_global != max_pos + 1 {
            return Err(StoreError::corrupt_index(format!(
                "meta next_global is {next_global} but the last global position is {max_pos}"
            )));
        }
        if let Some(first) = torn.first() {
            if min_torn_pos <= max_committed_pos {
                return Err(StoreError::corrupt(
                    first.stream,
                    first.first_seq,
                    "records beyond the head were written before committed records (not a torn tail)",
                ));
            }
        }
        Ok(VerifyReport {
            streams,
            records,
            torn_tails: torn,
            max_committed_pos,
            next_global,
        })
    }

    /// Removes the torn tails `verify` reports (records beyond a head, never committed) with their index entries,
    /// flushes, and returns what it removed. Refuses (with the verification error) when the log has any other
    /// damage. Run it while nothing appends, for example when the service starts: it fails with
    /// [`StoreError::Corruption`] if the log changed since its own verification.
    ///
    /// A head deleted from the most recently written stream looks exactly like a torn tail; compare the heads
    /// with an external anchor (the published events) before repairing if that matters.
    pub fn repair_torn_tail(&self) -> Result<Vec<TornTail>, StoreError> {
        let report = self.verify()?;
        if report.torn_tails.is_empty() {
            return Ok(Vec::new());
        }
        let _writer = self.write_lock();
        let now = self.tree.get(layout::META_NEXT_GLOBAL)?;
        if now.as_deref().and_then(decode_u64) != Some(report.next_global) {
            return Err(StoreError::corrupt_index(
                "the log changed during repair_torn_tail; run it again",
            ));
        }
        let mut batch = sled::Batch::default();
        for tail in &report.torn_tails {
            for seq in tail.first_seq..=tail.last_seq {
                let key = layout::record_entry_key(&tail.stream, seq);
                let Some(v) = self.tree.get(key)? else {
                    continue;
                };
                let r = decode_record(&v)
                    .map_err(|what| StoreError::corrupt(tail.stream, seq, what))?;
                batch.remove(&key[..]);
                if let Some(id) = r.msg_id {
                    batch.remove(layout::dedupe_entry_key(&id));
                }
            }
        }
        // All torn records sit above every committed one (verify checked): the positions above the last committed
        // one are exactly theirs. Runs above it go, a run across it is cut.
        let last = report.max_committed_pos;
        let below = self
            .tree
            .range(vec![layout::GLOBAL]..=layout::global_entry_key(last).to_vec())
            .next_back();
        let above = self
            .tree
            .range(layout::global_entry_key(last + 1).to_vec()..vec![layout::GLOBAL + 1]);
        for kv in below.into_iter().chain(above) {
            let (k, v) = kv?;
            let (Some(first), Some(run)) = (decode_u64(&k[1..]), layout::decode_global_run(&v))
            else {
                return Err(StoreError::corrupt_index("malformed global entry"));
            };
            if first > last {
                batch.remove(k);
            } else if first + run.count - 1 > last {
                let cut = layout::GlobalRun {
                    count: last + 1 - first,
                    ..run
                };
                batch.insert(k, &layout::encode_global_run(&cut)[..]);
            }
        }
        // Their positions are free again.
        batch.insert(
            layout::META_NEXT_GLOBAL,
            &(report.max_committed_pos + 1).to_be_bytes()[..],
        );
        self.tree.apply_batch(batch)?;
        // The writer mutex is held: flush the database directly (`Store::flush` would wait for the mutex).
        self.db.flush()?;
        Ok(report.torn_tails)
    }

    /// Checks that every key has a known table prefix, checks the meta table, and returns `next_global`.
    pub(crate) fn verify_meta(&self) -> Result<u64, StoreError> {
        let t = &self.tree;
        // The gaps between the tables: `..d`, `e..g`, `i..m`, `n..r`, `s..`.
        let mut from: Option<[u8; 1]> = None;
        for p in layout::PREFIXES.into_iter().map(Some).chain([None]) {
            let stray = match (from, p) {
                (None, Some(p)) => t.range(..[p]).next(),
                (Some(f), Some(p)) => t.range(f..[p]).next(),
                (Some(f), None) => t.range(f..).next(),
                (None, None) => None,
            };
            if let Some(kv) = stray {
                let (k, _) = kv?;
                return Err(StoreError::corrupt_index(format!(
                    "key {} belongs to no table",
                    hex::encode(&k)
                )));
            }
            from = p.map(|p| [p + 1]);
        }
        if t.get(layout::META_FORMAT)?.as_deref() != Some(layout::FORMAT_TAG.as_slice()) {
            return Err(StoreError::corrupt_index(
                "meta format tag missing or wrong",
            ));
        }
        let next = t
            .get(layout::META_NEXT_GLOBAL)?
            .as_deref()
            .and_then(decode_u64)
            .ok_or_else(|| StoreError::corrupt_index("meta next_global missing or malformed"))?;
        let meta_entries = layout::scan_table(t, layout::META).count();
        if meta_entries != 2 {
            return Err(StoreError::corrupt_index(format!(
                "meta has {meta_entries} entries, expected 2"
            )));
        }
        Ok(next)
    }

    /// The last position of the global index (0 when it is empty).
    pub(crate) fn last_global_pos(&self) -> Result<u64, StoreError> {
        match layout::scan_table(&self.tree, layout::GLOBAL).next_back() {
            None => Ok(0),
            Some(kv) => {
                let (k, v) = kv?;
                match (decode_u64(&k[1..]), layout::decode_global_run(&v)) {
                    (Some(first), Some(run)) => Ok(first + run.count - 1),
                    _ => Err(StoreError::corrupt_index("malformed global entry")),
                }
            }
        }
    }

    /// Scans the global index: every run well-formed and after the one before it. Returns the number of
    /// positions the runs cover and the last one (0 when there is none).
    fn verify_global_runs(&self) -> Result<(u64, u64), StoreError> {
        let mut entries = 0u64;
        let mut next_free = 0u64;
        for kv in layout::scan_table(&self.tree, layout::GLOBAL) {
            let (k, v) = kv?;
            let first = decode_u64(&k[1..]).ok_or_else(|| {
                StoreError::corrupt_index(format!("malformed global key {}", hex::encode(&k)))
            })?;
            let run = layout::decode_global_run(&v).ok_or_else(|| {
                StoreError::corrupt_index(format!("malformed global entry at position {first}"))
            })?;
            if first < next_free {
                return Err(StoreError::corrupt_index(format!(
                    "global entry at position {first} overlaps the one before it"
                )));
            }
            next_free = first.checked_add(run.count).ok_or_else(|| {
                StoreError::corrupt_index("global entry beyond the last position")
            })?;
            entries += run.count;
        }
        Ok((entries, next_free.saturating_sub(1)))
    }

    /// The record the global index holds at position `pos`.
    fn global_run_at(&self, pos: u64) -> Result<Option<(StreamId, u64)>, StoreError> {
        let found = self
            .tree
            .range(vec![layout::GLOBAL]..=layout::global_entry_key(pos).to_vec())
            .next_back();
        let Some(kv) = found else { return Ok(None) };
        let (k, v) = kv?;
        Ok(match (decode_u64(&k[1..]), layout::decode_global_run(&v)) {
            (Some(first), Some(run)) => run.seq_at(first, pos).map(|seq| (run.stream, seq)),
            _ => None,
        })
    }

    pub(crate) fn verify_heads(&self) -> Result<BTreeMap<StreamId, Head>, StoreError> {
        let mut heads = BTreeMap::new();
        for kv in layout::scan_table(&self.tree, layout::HEADS) {
            let (k, v) = kv?;
            let stream = decode_stream(&k[1..]).ok_or_else(|| {
                StoreError::corrupt_index(format!("malformed head key {}", hex::encode(&k)))
            })?;
            let head = decode_head(&v)
                .ok_or_else(|| StoreError::corrupt_stream(stream, "malformed head"))?;
            if head.seq == 0 {
                return Err(StoreError::corrupt_stream(stream, "head at seq 0"));
            }
            heads.insert(stream, head);
        }
        Ok(heads)
    }
}
