//! Migration of a `baton-log-v1` log (five trees) to `baton-log-v2` (one tree) when it is opened: every record
//! keeps its bytes, seq, hash and global position, the indexes still work, and a crash at any step of the
//! migration (a real child process that aborts right after the step) leaves a log the next open migrates.

use crate::support::{copy_dir, event, open_released, stream, wait_unlocked};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use store::layout::{self, v1};
use store::{chain_hash, Head, NewRecord, Record, StoreError, StreamId, ZERO_HASH};

/// Builds a v1 log as the v1 store wrote it: five trees, one sled transaction per append writing the records,
/// their global and dedupe entries, the head and `next_global` (the v1 `append`, without its checks). Returns
/// every record written, in append order.
fn build_v1(path: &Path, appends: &[(StreamId, Vec<NewRecord>)]) -> Vec<Record> {
    use sled::Transactional;
    let db = sled::open(path).unwrap();
    let trees: Vec<sled::Tree> = v1::TREES.iter().map(|n| db.open_tree(n).unwrap()).collect();
    let (records, heads, global, dedupe, meta) =
        (&trees[0], &trees[1], &trees[2], &trees[3], &trees[4]);
    meta.insert(v1::META_FORMAT, v1::FORMAT_TAG.as_slice())
        .unwrap();
    meta.insert(v1::META_NEXT_GLOBAL, &1u64.to_be_bytes()[..])
        .unwrap();
    let mut written = Vec::new();
    for (stream, batch) in appends {
        let result: sled::transaction::TransactionResult<Vec<Record>, ()> = (
            records, heads, global, dedupe, meta,
        )
            .transaction(|(records, heads, global, dedupe, meta)| {
                let head = heads
                    .get(stream.as_bytes())?
                    .map(|v| layout::decode_head(&v).unwrap());
                let (mut seq, mut prev) = head.map_or((0, ZERO_HASH), |h| (h.seq, h.hash));
                let mut pos =
                    layout::decode_u64(&meta.get(v1::META_NEXT_GLOBAL)?.unwrap()).unwrap();
                let mut out = Vec::new();
                for r in batch {
                    seq += 1;
                    let hash = chain_hash(stream, seq, &prev, &r.bytes);
                    let key = layout::record_key(stream, seq);
                    records.insert(
                        &key[..],
                        layout::encode_record(&hash, &prev, pos, r.msg_id.as_deref(), &r.bytes),
                    )?;
                    global.insert(&pos.to_be_bytes()[..], &key[..])?;
                    if let Some(id) = &r.msg_id {
                        dedupe.insert(id.as_bytes(), &key[..])?;
                    }
                    out.push(Record {
                        stream: *stream,
                        seq,
                        hash,
                        prev_hash: prev,
                        global_pos: pos,
                        msg_id: r.msg_id.clone(),
                        bytes: r.bytes.clone(),
                    });
                    prev = hash;
                    pos += 1;
                }
                heads.insert(
                    stream.as_bytes(),
                    &layout::encode_head(&Head { seq, hash: prev })[..],
                )?;
                meta.insert(v1::META_NEXT_GLOBAL, &pos.to_be_bytes()[..])?;
                Ok(out)
            });
        written.extend(result.unwrap());
    }
    db.flush().unwrap();
    written
}

/// `batches` appends of up to 64 records over five streams: JSON events, message ids on half, some non-UTF-8.
fn appends(batches: u64) -> Vec<(StreamId, Vec<NewRecord>)> {
    let mut n = 0u64;
    (0..batches)
        .map(|b| {
            let s = stream((b % 5) as u8 + 1);
            let size = 1 + (b * 37) % 64;
            let batch = (0..size)
                .map(|_| {
                    n += 1;
                    match n % 4 {
                        0 => NewRecord::with_msg_id(format!("m-{n}"), event(n)),
                        1 => NewRecord::new(event(n)),
                        2 => NewRecord::with_msg_id(format!("m-{n}"), vec![0xff, 0x00, n as u8]),
                        _ => NewRecord::new(format!("plain text {n}")),
                    }
                })
                .collect();
            (s, batch)
        })
        .collect()
}

/// The v1 trees left in the database in `path`, and whether its v2 tree holds the v2 format tag.
fn state(path: &Path) -> (Vec<String>, bool) {
    wait_unlocked(path);
    let db = sled::open(path).unwrap();
    let names = db.tree_names();
    let left: Vec<String> = v1::TREES
        .iter()
        .filter(|n| names.iter().any(|x| x.as_ref() == n.as_bytes()))
        .map(|n| n.to_string())
        .collect();
    let complete = names.iter().any(|x| x.as_ref() == layout::TREE.as_bytes())
        && layout::open_tree(&db)
            .unwrap()
            .get(layout::META_FORMAT)
            .unwrap()
            .is_some_and(|f| f.as_ref() == layout::FORMAT_TAG);
    drop(db);
    wait_unlocked(path);
    (left, complete)
}

/// Opens the log in `path` (migrating it) and checks it holds exactly `expected`, and verifies.
fn check_migrated(path: &Path, expected: &[Record]) {
    let store = open_released(path).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.records, expected.len() as u64);
    let mut streams: Vec<StreamId> = expected.iter().map(|r| r.stream).collect();
    streams.sort();
    streams.dedup();
    assert_eq!(
        store
            .streams()
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>(),
        streams
    );
    for s in streams {
        let want: Vec<&Record> = expected.iter().filter(|r| r.stream == s).collect();
        let got: Vec<Record> = store.read(s, 1).unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), want.len(), "stream {s}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, *w, "stream {s} seq {}", w.seq);
        }
        let last = want.last().unwrap();
        assert_eq!(
            store.head(s).unwrap(),
            Some(Head {
                seq: last.seq,
                hash: last.hash
            })
        );
    }
    let global: Vec<(u64, StreamId, u64)> = store
        .global(1)
        .map(|e| e.map(|e| (e.pos, e.stream, e.seq)).unwrap())
        .collect();
    let mut want: Vec<(u64, StreamId, u64)> = expected
        .iter()
        .map(|r| (r.global_pos, r.stream, r.seq))
        .collect();
    want.sort();
    assert_eq!(global, want);
    drop(store);
    let (left, complete) = state(path);
    assert!(
        left.is_empty(),
        "v1 trees left after the migration: {left:?}"
    );
    assert!(complete);
}

#[test]
fn a_v1_log_is_migrated_on_open_with_every_hash_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let expected = build_v1(&path, &appends(40));
    wait_unlocked(&path);
    check_migrated(&path, &expected);

    // The migrated log works as any other: a message id from v1 is a duplicate, appends continue its chain
    // and global order.
    let store = open_released(&path).unwrap();
    let old = expected.iter().find(|r| r.msg_id.is_some()).unwrap();
    let s = stream(1);
    let head = store.head(s).unwrap().unwrap();
    let outcome = store
        .append(
            s,
            head.seq,
            &[
                NewRecord::with_msg_id(old.msg_id.clone().unwrap(), b"again".to_vec()),
                NewRecord::with_msg_id("after-migration", b"new".to_vec()),
            ],
        )
        .unwrap();
    assert!(outcome.records[0].duplicate);
    assert_eq!(
        (
            outcome.records[0].stream,
            outcome.records[0].seq,
            outcome.records[0].hash
        ),
        (old.stream, old.seq, old.hash)
    );
    let new = &outcome.records[1];
    assert_eq!(new.seq, head.seq + 1);
    assert_eq!(
        new.global_pos,
        expected.iter().map(|r| r.global_pos).max().unwrap() + 1
    );
    assert!(matches!(
        store.append(s, head.seq, &[NewRecord::new(b"late".to_vec())]),
        Err(StoreError::Conflict { .. })
    ));
    store.flush().unwrap();
    assert!(store.verify().unwrap().is_clean());
}

/// The crash points of the child: after the v2 tree was cleared, after the first and the second copied batch,
/// and after the complete copy (before the v1 trees are dropped).
const CRASH_POINTS: [&str; 4] = ["cleared", "copied-1", "copied-2", "complete"];

#[test]
fn a_migration_cut_short_by_a_crash_at_any_step_is_completed_by_the_next_open() {
    let root = tempfile::tempdir().unwrap();
    let base = root.path().join("base");
    // More than two copy batches of entries (each record writes one or two index entries besides itself).
    let expected = build_v1(&base, &appends(300));
    assert!(expected.len() * 2 > 2 * store::MIGRATION_COPY_BATCH);
    wait_unlocked(&base);

    for point in CRASH_POINTS {
        // A crash in an earlier attempt, then another crash at this point in the redo.
        for attempt in 0..2 {
            let copy = root.path().join(format!("{point}-{attempt}"));
            copy_dir(&base, &copy);
            if attempt == 1 {
                crash_child(&copy, "copied-1");
            }
            crash_child(&copy, point);
            let (left, complete) = state(&copy);
            assert_eq!(
                left.len(),
                5,
                "{point}: the v1 trees are dropped only after the copy: {left:?}"
            );
            assert_eq!(
                complete,
                point == "complete",
                "{point}: the format tag marks a complete copy"
            );
            check_migrated(&copy, &expected);
        }
    }
}

/// Runs the child that opens (migrates) the log in `path` and aborts right after the migration step `point`.
fn crash_child(path: &Path, point: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
        .args(["migrate".as_ref(), path.as_os_str(), point.as_ref()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(6),
        "{point}: the child did not abort: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("crashing after {point}")
    );
}
