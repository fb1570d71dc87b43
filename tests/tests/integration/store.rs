//! Integration tests: the store used the way the workflow service uses it, from another crate: several writers
//! racing on one stream with optimistic concurrency, group commit across streams with one async flush, and the
//! exclusive lock that sends other readers through the service.
//!
//! The SIGKILL crash test and the corruption test live in the store's own test binary (`store/tests/log/`),
//! because the crash child is a binary of the store package, found there through `CARGO_BIN_EXE_*`.

use std::collections::BTreeSet;
use store::{NewRecord, Store, StoreError, StreamId};

fn stream(n: u8) -> StreamId {
    StreamId::from(ulid::Ulid::from_parts(
        1_700_000_000_000 + u64::from(n),
        u128::from(n),
    ))
}

#[test]
fn racing_writers_lose_no_event_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let s = stream(1);
    let writers = 4;
    let per_writer = 50;
    let conflicts: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let store = store.clone();
                scope.spawn(move || {
                    let mut conflicts = 0;
                    for i in 0..per_writer {
                        let rec = NewRecord::with_msg_id(
                            format!("w{w}:{i}"),
                            format!(r#"{{"w":{w},"i":{i}}}"#),
                        );
                        loop {
                            let head = store.head(s).unwrap().map_or(0, |h| h.seq);
                            match store.append(s, head, std::slice::from_ref(&rec)) {
                                Ok(out) => {
                                    assert!(!out.records[0].duplicate);
                                    break;
                                }
                                Err(StoreError::Conflict { .. }) => conflicts += 1,
                                Err(e) => panic!("writer {w}: {e:#}"),
                            }
                        }
                    }
                    conflicts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    store.flush().unwrap();

    let total = (writers * per_writer) as u64;
    assert_eq!(store.head(s).unwrap().unwrap().seq, total);
    let ids: BTreeSet<String> = store
        .read(s, 1)
        .unwrap()
        .map(|r| r.unwrap().msg_id.unwrap())
        .collect();
    assert_eq!(
        ids.len() as u64,
        total,
        "an event was lost or stored twice ({conflicts} conflicts)"
    );
    let report = store.verify().unwrap();
    assert!(report.is_clean());
    assert_eq!(report.records, total);
}

#[tokio::test]
async fn one_flush_commits_appends_to_several_streams() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for n in 1..=3 {
        let batch: Vec<NewRecord> = (0..10)
            .map(|i| NewRecord::new(format!(r#"{{"i":{i}}}"#)))
            .collect();
        store.append(stream(n), 0, &batch).unwrap();
    }
    store.flush_async().await.unwrap();
    let heads: Vec<(StreamId, u64)> = store
        .streams()
        .unwrap()
        .into_iter()
        .map(|(s, h)| (s, h.seq))
        .collect();
    assert_eq!(heads, [(stream(1), 10), (stream(2), 10), (stream(3), 10)]);
    let order: Vec<(StreamId, u64)> = store
        .global(1)
        .map(|g| g.unwrap())
        .map(|g| (g.stream, g.seq))
        .collect();
    assert_eq!(order.len(), 30);
    assert_eq!(order[0], (stream(1), 1));
    assert_eq!(order[29], (stream(3), 10));
}

#[test]
fn a_second_open_of_a_held_log_is_refused_as_locked() {
    let dir = tempfile::tempdir().unwrap();
    let _held = Store::open(dir.path()).unwrap();
    match Store::open(dir.path()) {
        Err(StoreError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
}
