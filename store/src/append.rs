//! Appending: the one writer reads what it needs (heads, dedupe entries, `next_global`), decides, and writes the
//! records, the head, the global index, the dedupe entries and the next global position in one
//! [`sled::Batch`] on the log's one tree, so a reader (or a crash) sees all of them or none of them.
//!
//! The reads are not part of the batch: they stay valid because every writer holds the store's writer mutex from
//! its first read to its batch (see "One writer at a time" in the crate docs). Within one `append_many`, later
//! appends see the earlier ones' writes through `Pending`'s overlay, as a transaction sees its own writes.

use crate::error::StoreError;
use crate::hash::{chain_hash, ZERO_HASH};
use crate::layout::{self, decode_head, decode_record, decode_record_key, decode_u64};
use crate::types::{AppendOutcome, AppendedRecord, Head, NewRecord, StreamId};
use crate::Store;
use std::collections::HashMap;

impl Store {
    /// Appends `records` to `stream` if its head is at `expected_seq` (0 for a stream never appended to).
    ///
    /// - A record whose message id is already in the log (in any stream, or earlier in this batch) is not stored
    ///   again: its entry in the outcome has `duplicate: true` and points at the existing record.
    /// - When every record is a duplicate, the outcome is returned whatever `expected_seq` is, so a writer that
    ///   retries after losing the answer gets the original result instead of a conflict.
    /// - Otherwise, a head other than `expected_seq` fails with [`StoreError::Conflict`] and stores nothing.
    /// - Records written beyond the head (a torn tail) make every append to that stream fail with
    ///   [`StoreError::Corruption`] until [`Store::repair_torn_tail`] runs.
    ///
    /// Nothing is flushed: call [`Store::flush`] once after appending everything at hand (see the crate docs).
    pub fn append(
        &self,
        stream: StreamId,
        expected_seq: u64,
        records: &[NewRecord],
    ) -> Result<AppendOutcome, StoreError> {
        let _writer = self.write_lock();
        let mut pending = Pending::new(&self.tree);
        let outcome = pending.append(stream, expected_seq, records)?;
        pending.apply()?;
        Ok(outcome)
    }

    /// Several appends, in order, in **one** atomic sled batch (a group commit's batch: the batch's fixed cost
    /// is paid once). Each append is judged exactly as [`Store::append`] judges it, against the log as the earlier
    /// appends of the same call left it; one refused (a conflict, a torn tail) gets its error in its place and
    /// writes nothing, the others are unaffected. The outer error (sled failed) means nothing at all was written.
    ///
    /// Nothing is flushed.
    pub fn append_many(
        &self,
        appends: &[(StreamId, u64, &[NewRecord])],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let _writer = self.write_lock();
        let mut pending = Pending::new(&self.tree);
        let mut out = Vec::with_capacity(appends.len());
        for &(stream, expected_seq, records) in appends {
            match pending.append(stream, expected_seq, records) {
                Ok(outcome) => out.push(Ok(outcome)),
                // A storage failure fails the whole call; nothing was applied yet.
                Err(StoreError::Sled(e)) => return Err(StoreError::Sled(e)),
                Err(refused) => out.push(Err(refused)),
            }
        }
        pending.apply()?;
        Ok(out)
    }

    /// [`Store::append`] followed by [`Store::flush`]: the records are durable when this returns.
    pub fn append_durable(
        &self,
        stream: StreamId,
        expected_seq: u64,
        records: &[NewRecord],
    ) -> Result<AppendOutcome, StoreError> {
        let outcome = self.append(stream, expected_seq, records)?;
        self.flush()?;
        Ok(outcome)
    }
}

/// The writes of one batch being prepared, and what they change, for the appends that follow in the same batch.
struct Pending<'t> {
    tree: &'t sled::Tree,
    batch: sled::Batch,
    /// Heads written by this batch.
    heads: HashMap<StreamId, Head>,
    /// Message ids stored by this batch, with the record they name.
    ids: HashMap<String, AppendedRecord>,
    /// `next_global` as this batch leaves it; read on first use.
    next_global: Option<u64>,
    /// Whether anything was written.
    dirty: bool,
}

/// What `append` does with one record.
enum Plan {
    New,
    /// The message id is already in the log (or stored earlier in this batch).
    Duplicate(AppendedRecord),
    /// The message id appeared earlier in this append, at this index.
    DuplicateInAppend(usize),
}

impl<'t> Pending<'t> {
    fn new(tree: &'t sled::Tree) -> Pending<'t> {
        Pending {
            tree,
            batch: sled::Batch::default(),
            heads: HashMap::new(),
            ids: HashMap::new(),
            next_global: None,
            dirty: false,
        }
    }

    /// Writes the batch (when anything was appended).
    fn apply(self) -> Result<(), StoreError> {
        if self.dirty {
            self.tree.apply_batch(self.batch)?;
        }
        Ok(())
    }

    fn head(&self, stream: StreamId) -> Result<Option<Head>, StoreError> {
        if let Some(h) = self.heads.get(&stream) {
            return Ok(Some(*h));
        }
        match self.tree.get(layout::head_entry_key(&stream))? {
            None => Ok(None),
            Some(v) => decode_head(&v)
                .map(Some)
                .ok_or_else(|| StoreError::corrupt_stream(stream, "malformed head")),
        }
    }

    fn next_global(&mut self) -> Result<u64, StoreError> {
        if let Some(n) = self.next_global {
            return Ok(n);
        }
        match self
            .tree
            .get(layout::META_NEXT_GLOBAL)?
            .as_deref()
            .map(decode_u64)
        {
            Some(Some(n)) => {
                self.next_global = Some(n);
                Ok(n)
            }
            _ => Err(StoreError::corrupt_index(
                "meta next_global missing or malformed",
            )),
        }
    }

    /// The record a message id names, if it is in the log or in this batch.
    fn existing(&self, id: &str) -> Result<Option<AppendedRecord>, StoreError> {
        if let Some(r) = self.ids.get(id) {
            return Ok(Some(AppendedRecord {
                duplicate: true,
                ..r.clone()
            }));
        }
        let Some(v) = self.tree.get(layout::dedupe_entry_key(id))? else {
            return Ok(None);
        };
        let Some((stream, seq)) = decode_record_key(&v) else {
            return Err(StoreError::corrupt_index(format!(
                "dedupe entry {id:?} is malformed"
            )));
        };
        let Some(rv) = self.tree.get(layout::record_entry_key(&stream, seq))? else {
            return Err(StoreError::corrupt(
                stream,
                seq,
                format!("dedupe entry {id:?} points at a missing record"),
            ));
        };
        match decode_record(&rv) {
            Ok(r) => Ok(Some(AppendedRecord {
                stream,
                seq,
                hash: r.hash,
                global_pos: r.global_pos,
                duplicate: true,
            })),
            Err(what) => Err(StoreError::corrupt(stream, seq, what)),
        }
    }

    /// One append, judged against the log as this batch leaves it: everything is checked before anything is
    /// added to the batch, so an error adds nothing.
    fn append(
        &mut self,
        stream: StreamId,
        expected_seq: u64,
        records: &[NewRecord],
    ) -> Result<AppendOutcome, StoreError> {
        let head = self.head(stream)?;
        let (mut seq, mut prev) = head.map_or((0, ZERO_HASH), |h| (h.seq, h.hash));

        // Decide for each record whether it is new or a duplicate, before writing anything.
        let mut plans: Vec<Plan> = Vec::with_capacity(records.len());
        let mut in_append: HashMap<&str, usize> = HashMap::new();
        for (i, r) in records.iter().enumerate() {
            let Some(id) = r.msg_id.as_deref() else {
                plans.push(Plan::New);
                continue;
            };
            if let Some(&first) = in_append.get(id) {
                plans.push(Plan::DuplicateInAppend(first));
                continue;
            }
            match self.existing(id)? {
                Some(d) => plans.push(Plan::Duplicate(d)),
                None => {
                    in_append.insert(id, i);
                    plans.push(Plan::New);
                }
            }
        }

        let all_duplicates = !records.is_empty() && plans.iter().all(|p| !matches!(p, Plan::New));
        if !all_duplicates && seq != expected_seq {
            return Err(StoreError::Conflict {
                stream,
                expected: expected_seq,
                actual: seq,
            });
        }
        // This batch never writes beyond a head, so the tree alone tells.
        if !all_duplicates
            && self
                .tree
                .contains_key(layout::record_entry_key(&stream, seq + 1))?
        {
            return Err(StoreError::corrupt(
                stream,
                seq + 1,
                "a record exists beyond the head (torn tail); run repair_torn_tail",
            ));
        }
        let mut next_global = if all_duplicates || records.is_empty() {
            0
        } else {
            self.next_global()?
        };

        let (first_seq, first_pos) = (seq + 1, next_global);
        let mut out: Vec<AppendedRecord> = Vec::with_capacity(records.len());
        for (r, plan) in records.iter().zip(plans) {
            match plan {
                Plan::Duplicate(d) => {
                    out.push(d);
                    continue;
                }
                Plan::DuplicateInAppend(first) => {
                    let d = AppendedRecord {
                        duplicate: true,
                        ..out[first].clone()
                    };
                    out.push(d);
                    continue;
                }
                Plan::New => {}
            }
            seq += 1;
            let hash = chain_hash(&stream, seq, &prev, &r.bytes);
            let key = layout::record_key(&stream, seq);
            let value =
                layout::encode_record(&hash, &prev, next_global, r.msg_id.as_deref(), &r.bytes);
            self.batch
                .insert(&layout::record_entry_key(&stream, seq)[..], value);
            let appended = AppendedRecord {
                stream,
                seq,
                hash,
                global_pos: next_global,
                duplicate: false,
            };
            if let Some(id) = r.msg_id.as_deref() {
                self.batch.insert(layout::dedupe_entry_key(id), &key[..]);
                self.ids.insert(id.to_owned(), appended.clone());
            }
            out.push(appended);
            prev = hash;
            next_global += 1;
        }

        let new_head = if seq == 0 {
            None
        } else {
            Some(Head { seq, hash: prev })
        };
        if out.iter().any(|r| !r.duplicate) {
            // The new records have consecutive seqs and positions: one run of the global index (or more, of at
            // most MAX_RUN records each).
            let count = seq + 1 - first_seq;
            let mut done = 0;
            while done < count {
                let run = layout::GlobalRun {
                    stream,
                    seq: first_seq + done,
                    count: (count - done).min(layout::MAX_RUN),
                };
                self.batch.insert(
                    &layout::global_entry_key(first_pos + done)[..],
                    &layout::encode_global_run(&run)[..],
                );
                done += run.count;
            }
            let h = Head { seq, hash: prev };
            self.batch.insert(
                &layout::head_entry_key(&stream)[..],
                &layout::encode_head(&h)[..],
            );
            self.heads.insert(stream, h);
            self.batch
                .insert(layout::META_NEXT_GLOBAL, &next_global.to_be_bytes()[..]);
            self.next_global = Some(next_global);
            self.dirty = true;
        }
        Ok(AppendOutcome {
            records: out,
            head: new_head,
        })
    }
}
