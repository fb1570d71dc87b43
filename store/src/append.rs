//! Appending: one sled transaction writes the records, the head, the global index, the dedupe table and the next
//! global position together, so a reader (or a crash) sees all of them or none of them.

use crate::error::StoreError;
use crate::hash::{chain_hash, ZERO_HASH};
use crate::layout::{self, decode_head, decode_record, decode_record_key, decode_u64};
use crate::types::{AppendOutcome, AppendedRecord, Head, NewRecord, StreamId};
use crate::Store;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use std::collections::HashMap;

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

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
        let t = &self.trees;
        let result = (&t.records, &t.heads, &t.global, &t.dedupe, &t.meta).transaction(
            |(recs, heads, global, dedupe, meta)| {
                append_tx(
                    recs,
                    heads,
                    global,
                    dedupe,
                    meta,
                    stream,
                    expected_seq,
                    records,
                )
            },
        );
        match result {
            Ok(outcome) => Ok(outcome),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
    }

    /// Several appends, in order, in **one** sled transaction (a group commit's batch: the transaction's fixed cost
    /// is paid once). Each append is judged exactly as [`Store::append`] judges it, against the log as the earlier
    /// appends of the same call left it; one refused (a conflict, a torn tail) gets its error in its place and
    /// writes nothing, the others are unaffected. The outer error (sled failed) means nothing at all was written.
    ///
    /// Nothing is flushed.
    pub fn append_many(
        &self,
        appends: &[(StreamId, u64, &[NewRecord])],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let t = &self.trees;
        let result = (&t.records, &t.heads, &t.global, &t.dedupe, &t.meta).transaction(
            |(recs, heads, global, dedupe, meta)| {
                let mut out = Vec::with_capacity(appends.len());
                for &(stream, expected_seq, records) in appends {
                    // `append_tx` checks everything before it writes: an abort wrote nothing.
                    match append_tx(
                        recs,
                        heads,
                        global,
                        dedupe,
                        meta,
                        stream,
                        expected_seq,
                        records,
                    ) {
                        Ok(outcome) => out.push(Ok(outcome)),
                        Err(ConflictableTransactionError::Abort(refused)) => out.push(Err(refused)),
                        Err(other) => return Err(other),
                    }
                }
                Ok(out)
            },
        );
        match result {
            Ok(out) => Ok(out),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(StoreError::Sled(e)),
        }
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

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// The transaction body. sled may run it several times: it only reads and writes the transactional trees.
#[allow(clippy::too_many_arguments)]
fn append_tx(
    recs: &TransactionalTree,
    heads: &TransactionalTree,
    global: &TransactionalTree,
    dedupe: &TransactionalTree,
    meta: &TransactionalTree,
    stream: StreamId,
    expected_seq: u64,
    records: &[NewRecord],
) -> TxResult<AppendOutcome> {
    let head = match heads.get(stream.as_bytes())? {
        None => None,
        Some(v) => match decode_head(&v) {
            Some(h) => Some(h),
            None => return abort(StoreError::corrupt_stream(stream, "malformed head")),
        },
    };
    let (mut seq, mut prev) = head.map_or((0, ZERO_HASH), |h| (h.seq, h.hash));

    // Decide for each record whether it is new or a duplicate, before writing anything.
    let mut plans: Vec<Plan> = Vec::with_capacity(records.len());
    let mut in_batch: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        let Some(id) = r.msg_id.as_deref() else {
            plans.push(Plan::New);
            continue;
        };
        if let Some(&first) = in_batch.get(id) {
            plans.push(Plan::DuplicateInBatch(first));
            continue;
        }
        match dedupe.get(id.as_bytes())? {
            Some(v) => plans.push(Plan::Duplicate(lookup_existing(recs, id, &v)?)),
            None => {
                in_batch.insert(id, i);
                plans.push(Plan::New);
            }
        }
    }

    let all_duplicates = !records.is_empty() && plans.iter().all(|p| !matches!(p, Plan::New));
    if !all_duplicates && seq != expected_seq {
        return abort(StoreError::Conflict {
            stream,
            expected: expected_seq,
            actual: seq,
        });
    }
    if !all_duplicates && recs.get(layout::record_key(&stream, seq + 1))?.is_some() {
        return abort(StoreError::corrupt(
            stream,
            seq + 1,
            "a record exists beyond the head (torn tail); run repair_torn_tail",
        ));
    }

    let mut next_global = match meta
        .get(layout::META_NEXT_GLOBAL)?
        .as_deref()
        .map(decode_u64)
    {
        Some(Some(n)) => n,
        _ => {
            return abort(StoreError::corrupt_index(
                "meta next_global missing or malformed",
            ))
        }
    };
    let mut out: Vec<AppendedRecord> = Vec::with_capacity(records.len());
    for (r, plan) in records.iter().zip(plans) {
        match plan {
            Plan::Duplicate(d) => {
                out.push(d);
                continue;
            }
            Plan::DuplicateInBatch(first) => {
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
        let value = layout::encode_record(&hash, &prev, next_global, r.msg_id.as_deref(), &r.bytes);
        recs.insert(&key[..], value)?;
        global.insert(&next_global.to_be_bytes()[..], &key[..])?;
        if let Some(id) = r.msg_id.as_deref() {
            dedupe.insert(id.as_bytes(), &key)?;
        }
        out.push(AppendedRecord {
            stream,
            seq,
            hash,
            global_pos: next_global,
            duplicate: false,
        });
        prev = hash;
        next_global += 1;
    }

    let new_head = if seq == 0 {
        None
    } else {
        Some(Head { seq, hash: prev })
    };
    if out.iter().any(|r| !r.duplicate) {
        heads.insert(
            stream.as_bytes(),
            &layout::encode_head(&Head { seq, hash: prev })[..],
        )?;
        meta.insert(layout::META_NEXT_GLOBAL, &next_global.to_be_bytes()[..])?;
    }
    Ok(AppendOutcome {
        records: out,
        head: new_head,
    })
}

/// What `append` does with one record.
enum Plan {
    New,
    /// The message id is already in the log.
    Duplicate(AppendedRecord),
    /// The message id appeared earlier in this batch, at this index.
    DuplicateInBatch(usize),
}

/// The record a dedupe entry points at, as a duplicate answer.
fn lookup_existing(recs: &TransactionalTree, id: &str, v: &[u8]) -> TxResult<AppendedRecord> {
    let Some((stream, seq)) = decode_record_key(v) else {
        return abort(StoreError::corrupt_index(format!(
            "dedupe entry {id:?} is malformed"
        )));
    };
    let Some(rv) = recs.get(v)? else {
        return abort(StoreError::corrupt(
            stream,
            seq,
            format!("dedupe entry {id:?} points at a missing record"),
        ));
    };
    match decode_record(&rv) {
        Ok(r) => Ok(AppendedRecord {
            stream,
            seq,
            hash: r.hash,
            global_pos: r.global_pos,
            duplicate: true,
        }),
        Err(what) => abort(StoreError::corrupt(stream, seq, what)),
    }
}
