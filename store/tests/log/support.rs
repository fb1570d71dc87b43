//! Helpers shared by the store tests: stream ids and small logs.

use std::path::Path;
use std::time::{Duration, Instant};
use store::{NewRecord, Store, StoreError, StreamId};

/// Waits until no sled handle holds the log in `path`: sled's background threads release its lock a moment
/// after the last handle is dropped, so a test that closes a log and reopens (or copies) it waits here first.
pub fn wait_unlocked(path: &Path) {
    use fs4::fs_std::FileExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    let Ok(file) = std::fs::File::open(path.join("db")) else {
        return; // Not created yet.
    };
    while !file.try_lock_exclusive().unwrap() {
        assert!(
            Instant::now() < deadline,
            "{path:?} still locked after 10 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    file.unlock().unwrap();
}

/// Opens a log once the handles this process dropped have released it.
pub fn open_released(path: &Path) -> Result<Store, StoreError> {
    wait_unlocked(path);
    Store::open(path)
}

/// A fixed stream id, distinct per `n`.
pub fn stream(n: u8) -> StreamId {
    let mut b = [0u8; 16];
    b[0] = 1;
    b[15] = n;
    StreamId(b)
}

/// A JSON event like the workflow's.
pub fn event(n: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"StepScheduled","n":{n},"node":"backend-{}"}}"#,
        n % 3
    )
    .into_bytes()
}

/// Builds a small log with three streams: JSON events, message ids on some, non-UTF-8 and plain text bytes.
pub fn small_log(store: &Store) {
    let mut n = 0;
    for round in 0..4u64 {
        for s in 1..=3u8 {
            let head = store.head(stream(s)).unwrap().map_or(0, |h| h.seq);
            let mut batch = Vec::new();
            for i in 0..(1 + (round + s as u64) % 3) {
                n += 1;
                batch.push(match (n + i) % 4 {
                    0 => NewRecord::with_msg_id(format!("m-{n}"), event(n)),
                    1 => NewRecord::new(event(n)),
                    2 => NewRecord::with_msg_id(format!("m-{n}"), vec![0xff, 0x00, n as u8, 0x80]),
                    _ => NewRecord::new(format!("plain text {n}\nwith a newline")),
                });
            }
            store.append(stream(s), head, &batch).unwrap();
        }
    }
    store.flush().unwrap();
}

/// Copies a (closed) log directory.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
