//! The public API: appends, conflicts, duplicates, reads, global order, torn tails and their repair.

use crate::support::{event, open_released, small_log, stream, wait_unlocked};
use store::{chain_hash, NewRecord, Store, StoreError, ZERO_HASH};

#[test]
fn appends_chain_records_and_move_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = stream(1);
    assert_eq!(store.head(s).unwrap(), None);

    let out = store
        .append(s, 0, &[NewRecord::new(event(1)), NewRecord::new(event(2))])
        .unwrap();
    assert_eq!((out.first_seq(), out.last_seq()), (Some(1), Some(2)));
    let h1 = chain_hash(&s, 1, &ZERO_HASH, &event(1));
    let h2 = chain_hash(&s, 2, &h1, &event(2));
    assert_eq!(out.records[0].hash, h1);
    assert_eq!(out.records[1].hash, h2);
    assert_eq!(out.head.unwrap().seq, 2);
    assert_eq!(out.head.unwrap().hash, h2);

    let out = store
        .append_durable(s, 2, &[NewRecord::new(event(3))])
        .unwrap();
    assert_eq!(out.first_seq(), Some(3));
    let records: Vec<_> = store.read(s, 1).unwrap().map(Result::unwrap).collect();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(records[1].prev_hash, h1);
    assert_eq!(records[2].prev_hash, h2);
    assert_eq!(records[2].bytes, event(3));
    let from_two: Vec<_> = store.read(s, 2).unwrap().map(|r| r.unwrap().seq).collect();
    assert_eq!(from_two, [2, 3]);
    assert_eq!(store.read(s, 4).unwrap().count(), 0);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn a_stale_expected_seq_is_a_conflict_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = stream(1);
    store.append(s, 0, &[NewRecord::new(event(1))]).unwrap();
    let err = store.append(s, 0, &[NewRecord::new(event(2))]).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 0,
                actual: 1,
                ..
            }
        ),
        "{err:#}"
    );
    assert_eq!(store.head(s).unwrap().unwrap().seq, 1);
    assert_eq!(store.global(1).count(), 1);
}

#[test]
fn a_known_message_id_is_answered_as_a_duplicate_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (stream(1), stream(2));
    let first = store
        .append(a, 0, &[NewRecord::with_msg_id("x", event(1))])
        .unwrap();

    // A retry with the same id and a stale head gets the original answer, not a conflict.
    let retry = store
        .append(a, 0, &[NewRecord::with_msg_id("x", event(1))])
        .unwrap();
    assert!(retry.all_duplicates());
    assert_eq!(retry.records[0].seq, 1);
    assert_eq!(retry.records[0].hash, first.records[0].hash);
    assert_eq!(retry.head, first.head);

    // Mixed batch on another stream: the known id and the repeat inside the batch are duplicates.
    let mixed = store
        .append(
            b,
            0,
            &[
                NewRecord::with_msg_id("x", event(9)),
                NewRecord::with_msg_id("y", event(2)),
                NewRecord::with_msg_id("y", event(3)),
                NewRecord::new(event(4)),
            ],
        )
        .unwrap();
    let dups: Vec<_> = mixed.records.iter().map(|r| r.duplicate).collect();
    assert_eq!(dups, [true, false, true, false]);
    assert_eq!((mixed.records[0].stream, mixed.records[0].seq), (a, 1));
    assert_eq!((mixed.records[2].stream, mixed.records[2].seq), (b, 1));
    assert_eq!((mixed.first_seq(), mixed.last_seq()), (Some(1), Some(2)));
    assert_eq!(store.head(b).unwrap().unwrap().seq, 2);
    assert_eq!(store.global(1).count(), 3);
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn streams_and_global_order_list_everything_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .append(stream(2), 0, &[NewRecord::new(event(1))])
        .unwrap();
    store
        .append(stream(1), 0, &[NewRecord::new(event(2))])
        .unwrap();
    store
        .append(stream(2), 1, &[NewRecord::new(event(3))])
        .unwrap();
    let streams: Vec<_> = store
        .streams()
        .unwrap()
        .into_iter()
        .map(|(s, h)| (s, h.seq))
        .collect();
    assert_eq!(streams, [(stream(1), 1), (stream(2), 2)]);
    let global: Vec<_> = store
        .global(1)
        .map(|g| g.unwrap())
        .map(|g| (g.pos, g.stream, g.seq))
        .collect();
    assert_eq!(
        global,
        [(1, stream(2), 1), (2, stream(1), 1), (3, stream(2), 2)]
    );
    assert_eq!(store.global(3).count(), 1);
}

#[test]
fn flushed_appends_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        small_log(&store);
    }
    let store = open_released(dir.path()).unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_clean());
    assert_eq!(report.streams, 3);
    assert_eq!(report.records, store.global(1).count() as u64);
}

/// Writes a record beyond the head of the last written stream, as a crash between the record and its head would.
fn tear_the_tail(dir: &std::path::Path) -> (store::StreamId, u64) {
    wait_unlocked(dir);
    let db = sled::open(dir).unwrap();
    let log = store::layout::open_tree(&db).unwrap();
    let s = stream(3);
    let head =
        store::layout::decode_head(&log.get(store::layout::head_entry_key(&s)).unwrap().unwrap())
            .unwrap();
    let pos =
        store::layout::decode_u64(&log.get(store::layout::META_NEXT_GLOBAL).unwrap().unwrap())
            .unwrap();
    let seq = head.seq + 1;
    let bytes = event(1000);
    let hash = chain_hash(&s, seq, &head.hash, &bytes);
    log.insert(
        store::layout::record_entry_key(&s, seq),
        store::layout::encode_record(&hash, &head.hash, pos, None, &bytes),
    )
    .unwrap();
    let run = store::layout::GlobalRun {
        stream: s,
        seq,
        count: 1,
    };
    log.insert(
        store::layout::global_entry_key(pos),
        &store::layout::encode_global_run(&run)[..],
    )
    .unwrap();
    log.insert(
        store::layout::META_NEXT_GLOBAL,
        &(pos + 1).to_be_bytes()[..],
    )
    .unwrap();
    db.flush().unwrap();
    (s, seq)
}

#[test]
fn a_torn_tail_is_reported_blocks_appends_and_is_repaired_explicitly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        small_log(&store);
    }
    let (s, torn_seq) = tear_the_tail(dir.path());
    let store = open_released(dir.path()).unwrap();
    let report = store.verify().unwrap();
    assert_eq!(report.torn_tails.len(), 1);
    assert_eq!(report.torn_tails[0].stream, s);
    assert_eq!(report.torn_tails[0].first_seq, torn_seq);
    assert_eq!(report.torn_tails[0].head_seq, torn_seq - 1);
    // Reads stop at the head; appends refuse to build on a torn tail.
    assert_eq!(store.read(s, 1).unwrap().count() as u64, torn_seq - 1);
    let err = store
        .append(s, torn_seq - 1, &[NewRecord::new(event(1))])
        .unwrap_err();
    assert!(matches!(err, StoreError::Corruption { .. }), "{err:#}");

    let repaired = store.repair_torn_tail().unwrap();
    assert_eq!(repaired, report.torn_tails);
    assert!(store.verify().unwrap().is_clean());
    let out = store
        .append(s, torn_seq - 1, &[NewRecord::new(event(1))])
        .unwrap();
    assert_eq!(out.first_seq(), Some(torn_seq));
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn damage_in_the_middle_is_refused_by_repair() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        small_log(&store);
    }
    {
        wait_unlocked(dir.path());
        let db = sled::open(dir.path()).unwrap();
        store::layout::open_tree(&db)
            .unwrap()
            .remove(store::layout::record_entry_key(&stream(2), 2))
            .unwrap();
        db.flush().unwrap();
    }
    let store = open_released(dir.path()).unwrap();
    for err in [
        store.verify().unwrap_err(),
        store.repair_torn_tail().unwrap_err(),
    ] {
        match err {
            StoreError::Corruption { stream: s, seq, .. } => {
                assert_eq!((s, seq), (Some(stream(2)), Some(2)));
            }
            other => panic!("expected corruption, got {other:#}"),
        }
    }
    // Reading through the hole fails instead of skipping it.
    assert!(store.read(stream(2), 1).unwrap().any(|r| r.is_err()));
}

/// Issue 12: the log is its owner's only: folder 0700, files 0600, also when
/// the folder existed with looser permissions.
#[test]
fn the_log_folder_is_0700_and_its_files_0600() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.db");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = Store::open(&path).unwrap();
    store
        .append(stream(1), 0, &[NewRecord::new(event(1))])
        .unwrap();
    store.flush().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o700);
    let mut files = 0;
    for entry in std::fs::read_dir(&path).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
            files += 1;
        }
    }
    assert!(files > 0, "sled wrote no file");
}

#[test]
fn append_many_judges_each_append_against_the_ones_before_it_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (stream(1), stream(2));
    let first = [
        NewRecord::with_msg_id("m-1", event(1)),
        NewRecord::new(event(2)),
    ];
    let stale = [NewRecord::new(event(99))];
    let next = [NewRecord::new(event(3))];
    let again = [NewRecord::with_msg_id("m-1", event(1))];
    let other = [NewRecord::new(event(4))];
    let results = store
        .append_many(&[
            (a, 0, &first[..]),
            // Expects the head the first append has just moved: refused alone, nothing written.
            (a, 0, &stale[..]),
            // Sees the first append's head.
            (a, 2, &next[..]),
            // Sees the first append's message id: a duplicate, pointing at it.
            (b, 0, &again[..]),
            (b, 0, &other[..]),
        ])
        .unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(results[0].as_ref().unwrap().last_seq(), Some(2));
    match &results[1] {
        Err(StoreError::Conflict {
            stream,
            expected: 0,
            actual: 2,
        }) => assert_eq!(*stream, a),
        other => panic!("expected a conflict at head 2, got {other:?}"),
    }
    assert_eq!(results[2].as_ref().unwrap().last_seq(), Some(3));
    let dup = &results[3].as_ref().unwrap().records[0];
    assert!(dup.duplicate);
    assert_eq!((dup.stream, dup.seq), (a, 1));
    assert_eq!(results[4].as_ref().unwrap().last_seq(), Some(1));

    let bytes: Vec<Vec<u8>> = store
        .read(a, 1)
        .unwrap()
        .map(|r| r.unwrap().bytes)
        .collect();
    assert_eq!(bytes, [event(1), event(2), event(3)]);
    assert_eq!(store.head(b).unwrap().unwrap().seq, 1);
    // The global order is the order of the call.
    let order: Vec<_> = store
        .global(1)
        .map(|g| g.unwrap())
        .map(|g| (g.stream, g.seq))
        .collect();
    assert_eq!(order, [(a, 1), (a, 2), (a, 3), (b, 1)]);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records, 4);
}

/// A long append is stored as several runs of the global index (at most `MAX_RUN` records each); the global
/// order lists every record once, from any starting position, and the log verifies.
#[test]
fn a_long_append_is_listed_once_per_record_in_the_global_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let n = store::layout::MAX_RUN * 2 + 5;
    store
        .append(stream(1), 0, &[NewRecord::new(event(0))])
        .unwrap();
    let batch: Vec<NewRecord> = (0..n).map(|i| NewRecord::new(event(i))).collect();
    store.append(stream(2), 0, &batch).unwrap();
    let all: Vec<_> = store.global(1).map(Result::unwrap).collect();
    assert_eq!(all.len() as u64, n + 1);
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e.pos, i as u64 + 1);
    }
    assert_eq!((all[1].stream, all[1].seq), (stream(2), 1));
    assert_eq!(all.last().unwrap().seq, n);
    // From the middle of a run.
    let from = store::layout::MAX_RUN + 7;
    let tail: Vec<_> = store.global(from).map(Result::unwrap).collect();
    assert_eq!(tail.len() as u64, n + 2 - from);
    assert_eq!((tail[0].pos, tail[0].seq), (from, from - 1));
    let report = store.verify().unwrap();
    assert_eq!(report.records, n + 1);
    assert_eq!(store.verify_sequential().unwrap(), report);
}
