//! The fast path of [`Store::verify`]: the same checks, on every core, in bounded memory, with no lookup per
//! record.
//!
//! The sequential walk (`verify_sequential` in `verify.rs`) looks up each record's global index entry and dedupe
//! entry: two random B-tree reads per record, most of its time. Here the records tree is cut at stream
//! boundaries into parts walked side by side (each stream lies in one part, so its chain is checked exactly as in
//! the sequential walk), while the global index and the dedupe table are scanned in order, also in parts. The
//! one-to-one checks become multiset comparisons:
//!
//! - The sequential walk passes the global index iff the set `{(pos, record key)}` the records claim equals the
//!   set of positions the global runs cover, each with its `stream ++ seq` (each record's run points back at it,
//!   and the counts are equal; record keys are unique, and the runs are checked not to overlap, so both sides
//!   are sets). The same holds for `{(message id, record key)}`
//!   and the dedupe table.
//! - Each side of each comparison is summed, modulo 2^256, as `SHA-256(salt, len(key), key, value)` per element,
//!   with a salt drawn at random for each verification (so no log can be prepared to pass it). Two different
//!   sets (every coefficient of their difference is 1 or -1) have equal sums with probability about 2^-256.
//!
//! Memory: the heads (one entry per stream, as the sequential walk) and one small state per part; nothing per
//! record. Any disagreement at all makes the fast path give up, and `verify` runs the sequential walk, whose
//! first finding is the error reported: results (reports and errors) are the sequential walk's, word for word.

use crate::error::StoreError;
use crate::hash::chain_hash;
use crate::layout::{self, decode_record_key, decode_record_ref};
use crate::types::{Head, StreamId};
use crate::verify::{StreamWalk, TornTail, VerifyReport};
use crate::Store;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Parts of the records tree per worker thread: small enough to balance the threads.
const RECORD_PARTS_PER_THREAD: usize = 4;
/// Parts of the global index per worker thread.
const GLOBAL_PARTS_PER_THREAD: usize = 2;
/// At most this many worker threads.
const MAX_THREADS: usize = 8;

/// A sum modulo 2^256 of element digests (four little-endian 64-bit limbs).
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
struct Sum([u64; 4]);

impl Sum {
    fn add(&mut self, other: &Sum) {
        let mut carry = false;
        for (a, b) in self.0.iter_mut().zip(other.0) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(u64::from(carry));
            *a = s2;
            carry = c1 || c2;
        }
    }

    /// Adds the digest of the element `(key, value)`.
    fn add_element(&mut self, salt: &[u8; 16], key: &[u8], value: &[u8]) {
        let mut h = Sha256::new();
        h.update(salt);
        h.update((key.len() as u64).to_be_bytes());
        h.update(key);
        h.update(value);
        let d: [u8; 32] = h.finalize().into();
        let mut limbs = [0u64; 4];
        for (limb, chunk) in limbs.iter_mut().zip(d.chunks_exact(8)) {
            *limb = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        }
        self.add(&Sum(limbs));
    }
}

/// What a part of the records tree found.
#[derive(Default)]
struct RecordsPart {
    records: u64,
    with_msg_id: u64,
    /// Streams of this part that have a head.
    heads_seen: u64,
    max_committed_pos: u64,
    min_torn_pos: u64,
    torn: Vec<TornTail>,
    global: Sum,
    dedupe: Sum,
}

/// What a part of the global index or the dedupe table found.
#[derive(Default)]
struct IndexPart {
    /// Elements: dedupe entries, or positions covered by global runs.
    entries: u64,
    sum: Sum,
    /// Global runs only: the first position of the part's first run and the position after its last run
    /// (`None` for an empty part), to check that runs of neighbouring parts do not overlap.
    span: Option<(u64, u64)>,
}

enum Task {
    Records {
        index: usize,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
    },
    Global {
        index: usize,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
    },
    Dedupe,
}

/// Results gathered from the workers, in part order.
#[derive(Default)]
struct Gathered {
    records: Vec<Option<RecordsPart>>,
    global: Vec<Option<IndexPart>>,
    dedupe: Option<IndexPart>,
}

impl Store {
    /// The fast path: `Ok(Some(report))` when the log verifies (the report the sequential walk would give),
    /// `Ok(None)` when anything disagrees (the caller then runs the sequential walk for the exact finding).
    pub(crate) fn verify_fast(&self) -> Result<Option<VerifyReport>, StoreError> {
        let t = &self.tree;
        let next_global = self.verify_meta()?;
        let heads = self.verify_heads()?;
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_THREADS);
        let salt = salt();

        let record_cuts = stream_cuts(&heads, threads * RECORD_PARTS_PER_THREAD);
        let global_cuts = position_cuts(next_global, threads * GLOBAL_PARTS_PER_THREAD);
        // The dedupe table (one part: its keys' spread is unknown) first, so it is not the last one left.
        let mut tasks = vec![Task::Dedupe];
        for (index, (from, to)) in ranges(layout::RECORDS, &record_cuts)
            .into_iter()
            .enumerate()
        {
            tasks.push(Task::Records { index, from, to });
        }
        for (index, (from, to)) in ranges(layout::GLOBAL, &global_cuts).into_iter().enumerate() {
            tasks.push(Task::Global { index, from, to });
        }
        let gathered = Mutex::new(Gathered {
            records: (0..=record_cuts.len()).map(|_| None).collect(),
            global: (0..=global_cuts.len()).map(|_| None).collect(),
            dedupe: None,
        });
        let next_task = AtomicUsize::new(0);
        // Set by a part that found a disagreement (the others stop early) or an error.
        let failed = AtomicBool::new(false);
        let error: Mutex<Option<StoreError>> = Mutex::new(None);

        let work = || loop {
            if failed.load(Ordering::Relaxed) {
                return;
            }
            let i = next_task.fetch_add(1, Ordering::Relaxed);
            let Some(task) = tasks.get(i) else { return };
            let outcome = match task {
                Task::Records { index, from, to } => {
                    let range = t.range::<Vec<u8>, _>((from.clone(), to.clone()));
                    walk_records(range, &heads, &salt, &failed).map(|part| {
                        let ok = part.is_some();
                        lock(&gathered).records[*index] = part;
                        ok
                    })
                }
                Task::Global { index, from, to } => {
                    let range = t.range::<Vec<u8>, _>((from.clone(), to.clone()));
                    scan_global(range, &salt, &failed).map(|part| {
                        let ok = part.is_some();
                        lock(&gathered).global[*index] = part;
                        ok
                    })
                }
                Task::Dedupe => scan_index(layout::scan_table(t, layout::DEDUPE), &salt, &failed)
                    .map(|part| {
                        let ok = part.is_some();
                        lock(&gathered).dedupe = part;
                        ok
                    }),
            };
            match outcome {
                Ok(true) => {}
                Ok(false) => failed.store(true, Ordering::Relaxed),
                Err(e) => {
                    failed.store(true, Ordering::Relaxed);
                    lock(&error).get_or_insert(e);
                }
            }
        };
        std::thread::scope(|s| {
            for _ in 1..threads {
                s.spawn(work);
            }
            work();
        });
        if let Some(e) = lock(&error).take() {
            return Err(e);
        }
        if failed.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let gathered = gathered.into_inner().unwrap_or_else(|p| p.into_inner());
        let (Some(records_parts), Some(global_parts), Some(dedupe)) = (
            gathered.records.into_iter().collect::<Option<Vec<_>>>(),
            gathered.global.into_iter().collect::<Option<Vec<_>>>(),
            gathered.dedupe,
        ) else {
            return Ok(None);
        };

        let mut all = RecordsPart {
            min_torn_pos: u64::MAX,
            ..RecordsPart::default()
        };
        for p in records_parts {
            all.records += p.records;
            all.with_msg_id += p.with_msg_id;
            all.heads_seen += p.heads_seen;
            all.max_committed_pos = all.max_committed_pos.max(p.max_committed_pos);
            all.min_torn_pos = all.min_torn_pos.min(p.min_torn_pos);
            // Parts are in stream order, as the sequential walk lists torn tails.
            all.torn.extend(p.torn);
            all.global.add(&p.global);
            all.dedupe.add(&p.dedupe);
        }
        let mut global = IndexPart::default();
        let mut next_free = 0u64;
        for p in global_parts {
            global.entries += p.entries;
            global.sum.add(&p.sum);
            if let Some((first, end)) = p.span {
                // Parts are in position order; each part checked its own runs.
                if first < next_free {
                    return Ok(None);
                }
                next_free = end;
            }
        }
        // A head without records, an index that does not match the records one to one.
        if all.heads_seen != heads.len() as u64
            || global.entries != all.records
            || global.sum != all.global
            || dedupe.entries != all.with_msg_id
            || dedupe.sum != all.dedupe
        {
            return Ok(None);
        }
        let max_pos = self.last_global_pos()?;
        if next_global != max_pos + 1 {
            return Ok(None);
        }
        if !all.torn.is_empty() && all.min_torn_pos <= all.max_committed_pos {
            return Ok(None);
        }
        Ok(Some(VerifyReport {
            streams: heads.len() as u64,
            records: all.records,
            torn_tails: all.torn,
            max_committed_pos: all.max_committed_pos,
            next_global,
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Walks the records of one part (whole streams) as the sequential walk does; `None` at the first
/// disagreement, or when another part failed.
fn walk_records(
    range: sled::Iter,
    heads: &BTreeMap<StreamId, Head>,
    salt: &[u8; 16],
    failed: &AtomicBool,
) -> Result<Option<RecordsPart>, StoreError> {
    let mut part = RecordsPart {
        min_torn_pos: u64::MAX,
        ..RecordsPart::default()
    };
    let mut walk: Option<StreamWalk> = None;
    for kv in range {
        let (k, v) = kv?;
        let k = &k[1..];
        let Some((stream, seq)) = decode_record_key(k) else {
            return Ok(None);
        };
        if walk.as_ref().is_none_or(|w| w.stream != stream) {
            if let Some(w) = walk.take() {
                if !finish(w, &mut part.torn) {
                    return Ok(None);
                }
                if failed.load(Ordering::Relaxed) {
                    return Ok(None);
                }
            }
            let head = heads.get(&stream).copied();
            part.heads_seen += u64::from(head.is_some());
            walk = Some(StreamWalk::new(stream, head));
        }
        let w = walk.as_mut().expect("set above");
        if seq != w.next {
            return Ok(None);
        }
        let Ok(r) = decode_record_ref(&v) else {
            return Ok(None);
        };
        if r.prev_hash != w.prev || chain_hash(&stream, seq, &w.prev, r.bytes) != r.hash {
            return Ok(None);
        }
        part.global
            .add_element(salt, &r.global_pos.to_be_bytes(), k);
        if let Some(id) = r.msg_id {
            part.dedupe.add_element(salt, id.as_bytes(), k);
            part.with_msg_id += 1;
        }
        let head_seq = w.head_seq();
        if seq <= head_seq {
            part.max_committed_pos = part.max_committed_pos.max(r.global_pos);
            if seq == head_seq && w.head.is_some_and(|h| h.hash != r.hash) {
                return Ok(None);
            }
        } else {
            part.min_torn_pos = part.min_torn_pos.min(r.global_pos);
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
        part.records += 1;
    }
    if let Some(w) = walk.take() {
        if !finish(w, &mut part.torn) {
            return Ok(None);
        }
    }
    Ok(Some(part))
}

/// The end of a stream: false when its head lies beyond its last record.
fn finish(w: StreamWalk, torn: &mut Vec<TornTail>) -> bool {
    w.finish(torn).is_ok()
}

/// Sums the entries of a part of an index tree; `None` when another part failed.
fn scan_index(
    range: sled::Iter,
    salt: &[u8; 16],
    failed: &AtomicBool,
) -> Result<Option<IndexPart>, StoreError> {
    let mut part = IndexPart::default();
    for kv in range {
        let (k, v) = kv?;
        part.sum.add_element(salt, &k[1..], &v);
        part.entries += 1;
        if part.entries.is_multiple_of(4096) && failed.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    Ok(Some(part))
}

/// Sums the positions of a part of the global index (each run expanded into its `(pos, stream ++ seq)`
/// elements, as the records claim them); `None` when a run is malformed or overlaps the one before it, or when
/// another part failed.
fn scan_global(
    range: sled::Iter,
    salt: &[u8; 16],
    failed: &AtomicBool,
) -> Result<Option<IndexPart>, StoreError> {
    let mut part = IndexPart::default();
    let mut runs = 0u64;
    for kv in range {
        let (k, v) = kv?;
        let (Some(first), Some(run)) = (layout::decode_u64(&k[1..]), layout::decode_global_run(&v))
        else {
            return Ok(None);
        };
        let Some(end) = first.checked_add(run.count) else {
            return Ok(None);
        };
        match &mut part.span {
            None => part.span = Some((first, end)),
            Some((_, next_free)) if first >= *next_free => *next_free = end,
            Some(_) => return Ok(None),
        }
        for i in 0..run.count {
            part.sum.add_element(
                salt,
                &(first + i).to_be_bytes(),
                &layout::record_key(&run.stream, run.seq + i),
            );
        }
        part.entries += run.count;
        runs += 1;
        if runs.is_multiple_of(1024) && failed.load(Ordering::Relaxed) {
            return Ok(None);
        }
    }
    Ok(Some(part))
}

/// Stream ids at which to cut the records tree into about `parts` parts of similar record counts (by the heads'
/// seqs). Every cut is a stream id: a stream's records never straddle two parts.
fn stream_cuts(heads: &BTreeMap<StreamId, Head>, parts: usize) -> Vec<Vec<u8>> {
    let total: u64 = heads.values().map(|h| h.seq).sum();
    let per_part = (total / parts.max(1) as u64).max(1);
    let mut cuts = Vec::new();
    let mut acc = 0u64;
    for (stream, head) in heads {
        if acc >= per_part {
            cuts.push(stream.as_bytes().to_vec());
            acc = 0;
        }
        acc += head.seq;
    }
    cuts
}

/// Global positions at which to cut the global index into `parts` parts.
fn position_cuts(next_global: u64, parts: usize) -> Vec<Vec<u8>> {
    let per_part = (next_global / parts.max(1) as u64).max(1);
    (1..parts as u64)
        .map(|i| i * per_part)
        .filter(|&p| p > 1 && p < next_global)
        .map(|p| p.to_be_bytes().to_vec())
        .collect()
}

/// A range of keys of one tree, as `sled::Tree::range` takes it.
type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// The ranges of table `prefix` between cuts (keys without the prefix): `..c1`, `c1..c2`, ..., `cn..`; together
/// they cover every key of the table once.
fn ranges(prefix: u8, cuts: &[Vec<u8>]) -> Vec<KeyRange> {
    let mut out = Vec::with_capacity(cuts.len() + 1);
    let mut from = Bound::Included(vec![prefix]);
    for cut in cuts {
        let cut = layout::prefixed(prefix, cut);
        out.push((from, Bound::Excluded(cut.clone())));
        from = Bound::Included(cut);
    }
    out.push((from, Bound::Excluded(vec![prefix + 1])));
    out
}

/// 16 unpredictable bytes: from the kernel, or, failing that, from std's randomly keyed hasher.
fn salt() -> [u8; 16] {
    use std::io::Read;
    let mut salt = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .is_ok()
    {
        return salt;
    }
    use std::hash::{BuildHasher, Hasher};
    for (i, chunk) in salt.chunks_exact_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewRecord;

    fn stream(n: u8) -> StreamId {
        StreamId([n; 16])
    }

    fn log_with(streams: u8, per_stream: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("log")).unwrap();
        for round in 0..per_stream {
            for s in 1..=streams {
                let bytes = format!("event {round} of {s}").into_bytes();
                let r = if round % 2 == 0 {
                    NewRecord::with_msg_id(format!("{s}:{round}"), bytes)
                } else {
                    NewRecord::new(bytes)
                };
                store.append(stream(s), round, &[r]).unwrap();
            }
        }
        (dir, store)
    }

    #[test]
    fn the_fast_path_gives_the_sequential_report_on_a_sound_log() {
        let (_dir, store) = log_with(37, 23);
        let fast = store.verify_fast().unwrap().expect("a sound log passes");
        assert_eq!(fast, store.verify_sequential().unwrap());
        assert_eq!(fast.records, 37 * 23);
        assert_eq!(fast.streams, 37);
    }

    #[test]
    fn the_fast_path_gives_up_on_an_index_that_does_not_match() {
        let (_dir, store) = log_with(5, 8);
        // A dedupe entry pointing at another record of the same stream: counts still match.
        let key = layout::record_key(&stream(3), 2);
        store
            .tree
            .insert(layout::dedupe_entry_key("3:0"), &key[..])
            .unwrap();
        assert!(store.verify_fast().unwrap().is_none());
        assert!(store.verify_sequential().is_err());
        let (_dir, store) = log_with(5, 8);
        // Two global entries swapped.
        let (k3, k4) = (layout::global_entry_key(3), layout::global_entry_key(4));
        let a = store.tree.get(k3).unwrap().unwrap();
        let b = store.tree.get(k4).unwrap().unwrap();
        store.tree.insert(k3, b).unwrap();
        store.tree.insert(k4, a).unwrap();
        assert!(store.verify_fast().unwrap().is_none());
        assert!(store.verify_sequential().is_err());
    }

    #[test]
    fn cuts_cover_every_key_once() {
        let r = ranges(layout::GLOBAL, &[vec![2], vec![5]]);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].0, Bound::Included(vec![layout::GLOBAL]));
        assert_eq!(r[2].1, Bound::Excluded(vec![layout::GLOBAL + 1]));
        assert_eq!(position_cuts(1, 4), Vec::<Vec<u8>>::new());
        assert_eq!(position_cuts(101, 4).len(), 3);
        let heads: BTreeMap<StreamId, Head> = (1..=10u8)
            .map(|n| {
                (
                    stream(n),
                    Head {
                        seq: 10,
                        hash: [0; 32],
                    },
                )
            })
            .collect();
        let cuts = stream_cuts(&heads, 5);
        assert_eq!(cuts.len(), 4);
        assert_eq!(cuts[0], stream(3).as_bytes().to_vec());
    }

    #[test]
    fn element_sums_do_not_depend_on_order() {
        let salt = [7; 16];
        let (mut a, mut b) = (Sum::default(), Sum::default());
        a.add_element(&salt, b"k1", b"v1");
        a.add_element(&salt, b"k2", b"v2");
        b.add_element(&salt, b"k2", b"v2");
        b.add_element(&salt, b"k1", b"v1");
        assert_eq!(a, b);
        let mut c = Sum::default();
        c.add_element(&salt, b"k1v", b"1");
        c.add_element(&salt, b"k2", b"v2");
        assert_ne!(a, c);
    }
}
