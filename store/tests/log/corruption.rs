//! Corruption detection: at least 1,000 random mutations (truncate, flip a bit, swap, delete, insert, edit a head,
//! rewrite a chain) are applied straight to the sled tree of copies of a small log, table by table (the tables
//! are key prefixes of the one tree, see `store::layout`); `verify` must notice every one, either as an error or
//! as a torn tail (records beyond a head), never as a clean log.

use crate::support::{copy_dir, open_released, small_log, wait_unlocked};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::Path;
use store::layout::{
    self, decode_head, decode_record, decode_record_key, encode_head, encode_record, record_key,
};
use store::{chain_hash, Head, Store, StoreError, StreamId};

const MUTATIONS: usize = 1_200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Truncate,
    FlipBit,
    Swap,
    Delete,
    Insert,
    EditHead,
    Rechain,
}
const KINDS: [Kind; 7] = [
    Kind::Truncate,
    Kind::FlipBit,
    Kind::Swap,
    Kind::Delete,
    Kind::Insert,
    Kind::EditHead,
    Kind::Rechain,
];

/// Every entry of every tree, to tell whether a mutation changed anything.
type Snapshot = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

fn snapshot(db: &sled::Db) -> Snapshot {
    let mut out = BTreeMap::new();
    for name in db.tree_names() {
        for kv in db.open_tree(&name).unwrap().iter() {
            let (k, v) = kv.unwrap();
            out.insert((name.to_vec(), k.to_vec()), v.to_vec());
        }
    }
    out
}

/// One table of the log's tree: the entries with one key prefix, keys given and returned without it.
struct Table {
    tree: sled::Tree,
    prefix: u8,
    name: &'static str,
}

impl Table {
    fn key(&self, k: &[u8]) -> Vec<u8> {
        layout::prefixed(self.prefix, k)
    }

    fn get(&self, k: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        self.tree.get(self.key(k.as_ref()))
    }

    fn insert(
        &self,
        k: impl AsRef<[u8]>,
        v: impl Into<sled::IVec>,
    ) -> sled::Result<Option<sled::IVec>> {
        self.tree.insert(self.key(k.as_ref()), v)
    }

    fn remove(&self, k: impl AsRef<[u8]>) -> sled::Result<Option<sled::IVec>> {
        self.tree.remove(self.key(k.as_ref()))
    }

    fn name(&self) -> &'static str {
        self.name
    }

    /// The keys with `prefix` (after the table's own).
    fn keys_with(&self, prefix: &[u8]) -> Vec<sled::IVec> {
        self.tree
            .scan_prefix(self.key(prefix))
            .keys()
            .map(|k| sled::IVec::from(&k.unwrap()[1..]))
            .collect()
    }
}

/// The tables of a copy, opened without the store.
struct Raw {
    records: Table,
    heads: Table,
    global: Table,
    dedupe: Table,
    meta: Table,
}

impl Raw {
    fn open(db: &sled::Db) -> Raw {
        let tree = layout::open_tree(db).unwrap();
        let table = |prefix, name| Table {
            tree: tree.clone(),
            prefix,
            name,
        };
        Raw {
            records: table(layout::RECORDS, "records"),
            heads: table(layout::HEADS, "heads"),
            global: table(layout::GLOBAL, "global"),
            dedupe: table(layout::DEDUPE, "dedupe"),
            meta: table(layout::META, "meta"),
        }
    }

    fn tree(&self, rng: &mut StdRng) -> &Table {
        // Records hold most of the bytes: damage them most often.
        match rng.random_range(0..10) {
            0..=4 => &self.records,
            5 | 6 => &self.heads,
            7 => &self.global,
            8 => &self.dedupe,
            _ => &self.meta,
        }
    }

    fn streams(&self) -> Vec<(StreamId, Head)> {
        self.heads
            .tree
            .scan_prefix([layout::HEADS])
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (
                    StreamId(k[1..].try_into().unwrap()),
                    decode_head(&v).unwrap(),
                )
            })
            .collect()
    }

    fn stream_keys(&self, stream: &StreamId) -> Vec<sled::IVec> {
        self.records.keys_with(stream.as_bytes())
    }
}

fn keys(table: &Table) -> Vec<sled::IVec> {
    table.keys_with(b"")
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn flip_bit(rng: &mut StdRng, bytes: &mut [u8]) {
    let bit = rng.random_range(0..bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

/// Applies one mutation of `kind` and describes it.
fn mutate(raw: &Raw, kind: Kind, rng: &mut StdRng) -> String {
    let streams = raw.streams();
    let (stream, head) = *pick(rng, &streams);
    let stream_keys = raw.stream_keys(&stream);
    match kind {
        Kind::Truncate => {
            let n = rng.random_range(1..=stream_keys.len().min(3));
            for k in &stream_keys[stream_keys.len() - n..] {
                raw.records.remove(k).unwrap();
            }
            format!("truncated the last {n} records of {stream}")
        }
        Kind::FlipBit => {
            let tree = raw.tree(rng);
            let all = keys(tree);
            let k = pick(rng, &all).clone();
            let mut v = tree.get(&k).unwrap().unwrap().to_vec();
            if rng.random_bool(0.3) || v.is_empty() {
                // Any bit of the whole key, its table prefix included.
                let mut k2 = tree.key(&k);
                flip_bit(rng, &mut k2);
                tree.remove(&k).unwrap();
                tree.tree.insert(k2, v).unwrap();
                format!("flipped a bit in a key of {:?}", tree.name())
            } else {
                flip_bit(rng, &mut v);
                tree.insert(&k, v).unwrap();
                format!("flipped a bit in a value of {:?}", tree.name())
            }
        }
        Kind::Swap => {
            let (tree, all) = if rng.random_bool(0.8) {
                (&raw.records, keys(&raw.records))
            } else {
                (&raw.global, keys(&raw.global))
            };
            let i = rng.random_range(0..all.len());
            // Half of the swaps exchange neighbours (a reorder inside a stream), half any two entries.
            let j = if rng.random_bool(0.5) && i + 1 < all.len() {
                i + 1
            } else {
                (i + rng.random_range(1..all.len())) % all.len()
            };
            let (a, b) = (
                tree.get(&all[i]).unwrap().unwrap(),
                tree.get(&all[j]).unwrap().unwrap(),
            );
            tree.insert(&all[i], b).unwrap();
            tree.insert(&all[j], a).unwrap();
            format!("swapped entries {i} and {j} of {:?}", tree.name())
        }
        Kind::Delete => {
            let tree = raw.tree(rng);
            let all = keys(tree);
            let k = pick(rng, &all);
            tree.remove(k).unwrap();
            format!("deleted an entry of {:?}", tree.name())
        }
        Kind::Insert => insert(raw, rng, stream, head, &stream_keys),
        Kind::EditHead => edit_head(raw, rng, stream, head, &stream_keys),
        Kind::Rechain => {
            // Edit one record's bytes and recompute every later hash consistently, leaving the head alone:
            // only the head (and an external anchor) can tell.
            let p = rng.random_range(0..stream_keys.len());
            let mut prev = match p {
                0 => store::ZERO_HASH,
                _ => {
                    decode_record(&raw.records.get(&stream_keys[p - 1]).unwrap().unwrap())
                        .unwrap()
                        .hash
                }
            };
            for (i, k) in stream_keys.iter().enumerate().skip(p) {
                let (_, seq) = decode_record_key(k).unwrap();
                let mut r = decode_record(&raw.records.get(k).unwrap().unwrap()).unwrap();
                if i == p {
                    r.bytes.push(b' ');
                }
                let hash = chain_hash(&stream, seq, &prev, &r.bytes);
                raw.records
                    .insert(
                        k,
                        encode_record(&hash, &prev, r.global_pos, r.msg_id.as_deref(), &r.bytes),
                    )
                    .unwrap();
                prev = hash;
            }
            format!(
                "edited record {} of {stream} and re-chained the rest",
                p + 1
            )
        }
    }
}

fn insert(
    raw: &Raw,
    rng: &mut StdRng,
    stream: StreamId,
    head: Head,
    stream_keys: &[sled::IVec],
) -> String {
    let some_value = |tree: &Table, rng: &mut StdRng| {
        let all = keys(tree);
        tree.get(pick(rng, &all)).unwrap().unwrap()
    };
    match rng.random_range(0..6) {
        0 => {
            // A well-formed record after the head, with its index entries: a torn tail.
            let next_global = layout::decode_u64(
                &raw.meta
                    .get(&layout::META_NEXT_GLOBAL[1..])
                    .unwrap()
                    .unwrap(),
            )
            .unwrap();
            let seq = head.seq + 1;
            let bytes = b"{\"forged\":true}";
            let hash = chain_hash(&stream, seq, &head.hash, bytes);
            let key = record_key(&stream, seq);
            raw.records
                .insert(
                    key,
                    encode_record(&hash, &head.hash, next_global, None, bytes),
                )
                .unwrap();
            if rng.random_bool(0.5) {
                let run = layout::GlobalRun {
                    stream,
                    seq,
                    count: 1,
                };
                raw.global
                    .insert(
                        next_global.to_be_bytes(),
                        &layout::encode_global_run(&run)[..],
                    )
                    .unwrap();
                raw.meta
                    .insert(
                        &layout::META_NEXT_GLOBAL[1..],
                        &(next_global + 1).to_be_bytes()[..],
                    )
                    .unwrap();
            }
            format!("appended a chained record beyond the head of {stream}")
        }
        1 => {
            // A record in the middle: later records move up one seq.
            let p = rng.random_range(0..stream_keys.len());
            for k in stream_keys[p..].iter().rev() {
                let (_, seq) = decode_record_key(k).unwrap();
                let v = raw.records.get(k).unwrap().unwrap();
                raw.records.insert(record_key(&stream, seq + 1), v).unwrap();
            }
            let forged = some_value(&raw.records, rng);
            raw.records.insert(&stream_keys[p], forged).unwrap();
            format!("inserted a record at seq {} of {stream}", p + 1)
        }
        2 => {
            let mut other = [0u8; 16];
            rng.fill(&mut other);
            let v = some_value(&raw.records, rng);
            raw.records
                .insert(record_key(&StreamId(other), 1), v)
                .unwrap();
            "inserted a record of an unknown stream".to_string()
        }
        3 => {
            let pos: u64 = rng.random_range(1..200);
            let v = some_value(&raw.global, rng);
            let old = raw.global.insert(pos.to_be_bytes(), v.clone()).unwrap();
            if old.as_ref() == Some(&v) {
                raw.global.insert((pos + 1000).to_be_bytes(), v).unwrap();
            }
            format!("inserted global entry {pos}")
        }
        4 => {
            let v = some_value(&raw.dedupe, rng);
            raw.dedupe
                .insert(format!("forged-{}", rng.random::<u32>()), v)
                .unwrap();
            "inserted a dedupe entry".to_string()
        }
        _ => {
            let mut other = [0u8; 16];
            rng.fill(&mut other);
            let v = some_value(&raw.heads, rng);
            raw.heads.insert(other, v).unwrap();
            "inserted a head for an unknown stream".to_string()
        }
    }
}

fn edit_head(
    raw: &Raw,
    rng: &mut StdRng,
    stream: StreamId,
    head: Head,
    stream_keys: &[sled::IVec],
) -> String {
    let record_hash = |seq: u64| {
        decode_record(
            &raw.records
                .get(&stream_keys[(seq - 1) as usize])
                .unwrap()
                .unwrap(),
        )
        .unwrap()
        .hash
    };
    let new = match rng.random_range(0..5) {
        0 => Head {
            seq: head.seq + rng.random_range(1..4),
            ..head
        },
        1 if head.seq > 1 => Head {
            seq: rng.random_range(1..head.seq),
            ..head
        },
        // Rolled back consistently: the hash is the right one for the lower seq.
        2 if head.seq > 1 => {
            let seq = rng.random_range(1..head.seq);
            Head {
                seq,
                hash: record_hash(seq),
            }
        }
        3 if head.seq > 1 => Head {
            seq: head.seq,
            hash: record_hash(rng.random_range(1..head.seq)),
        },
        _ => Head {
            seq: head.seq,
            hash: rng.random(),
        },
    };
    raw.heads
        .insert(stream.as_bytes(), &encode_head(&new)[..])
        .unwrap();
    format!(
        "edited the head of {stream} from {} to {}",
        head.seq, new.seq
    )
}

/// Opens the mutated copy through the store and tells whether it noticed.
fn detected(dir: &Path) -> Result<String, String> {
    let store = match open_released(dir) {
        Ok(s) => s,
        Err(e @ StoreError::Corruption { .. }) => return Ok(format!("open: {e:#}")),
        Err(e) => return Err(format!("open failed with a non-corruption error: {e:#}")),
    };
    match store.verify() {
        Ok(report) if report.is_clean() => Err("verify found nothing".into()),
        Ok(report) => Ok(format!("torn tails {:?}", report.torn_tails)),
        Err(e @ StoreError::Corruption { .. }) => Ok(format!("{e:#}")),
        Err(e) => Err(format!("verify failed with a non-corruption error: {e:#}")),
    }
}

#[test]
fn every_random_mutation_of_a_log_is_detected() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    {
        let store = Store::open(&base).unwrap();
        small_log(&store);
        assert!(store.verify().unwrap().is_clean());
    }
    wait_unlocked(&base);
    let original = snapshot(&sled::open(&base).unwrap());
    wait_unlocked(&base);

    let mut rng = StdRng::seed_from_u64(0x5EED_0003);
    let mut per_kind: BTreeMap<Kind, usize> = BTreeMap::new();
    let mut done = 0;
    while done < MUTATIONS {
        let kind = KINDS[done % KINDS.len()];
        let copy = root.path().join(format!("copy-{done}"));
        copy_dir(&base, &copy);
        let what = {
            let db = sled::open(&copy).unwrap();
            let what = mutate(&Raw::open(&db), kind, &mut rng);
            db.flush().unwrap();
            if snapshot(&db) == original {
                // A mutation that changed nothing (a swap of equal values...) proves nothing: draw another.
                None
            } else {
                Some(what)
            }
        };
        if let Some(what) = what {
            if let Err(miss) = detected(&copy) {
                panic!("mutation #{done} ({kind:?}: {what}) went undetected: {miss}");
            }
            *per_kind.entry(kind).or_default() += 1;
            done += 1;
        }
        wait_unlocked(&copy);
        std::fs::remove_dir_all(&copy).unwrap();
    }
    for kind in KINDS {
        assert!(
            per_kind[&kind] >= 100,
            "{kind:?}: only {} mutations",
            per_kind[&kind]
        );
    }
}
