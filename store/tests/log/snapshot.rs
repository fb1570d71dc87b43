//! A process killed while sled writes its snapshot (sled writes one while it opens a log, so a SIGKILL during the
//! service's recovery can land there) leaves `snap.<LSN>.generating` behind, half written. sled 0.34.7 then picks
//! that file as the newest snapshot and refuses to open the log (`empty/corrupt snapshot file found`, then
//! `Corruption { at: None }`; seen in CI's chaos test). `Store::open` removes such leftovers first, unless
//! another process holds the log.

use crate::support::{open_released, small_log, stream, wait_unlocked};
use std::path::Path;
use store::{Store, StoreError};

/// A closed log holding `small_log`, and the heads of its three streams.
fn closed_log(path: &Path) -> Vec<u64> {
    let store = Store::open(path).unwrap();
    small_log(&store);
    let heads = (1..=3)
        .map(|s| store.head(stream(s)).unwrap().unwrap().seq)
        .collect();
    drop(store);
    wait_unlocked(path);
    // A second open and close, so that sled has written a finished snapshot too.
    drop(open_released(path).unwrap());
    wait_unlocked(path);
    heads
}

/// What a writer killed mid-snapshot leaves: the file under the name sled gives it, sorting after every finished
/// snapshot, with `bytes` of content.
fn leave_unfinished_snapshot(path: &Path, bytes: &[u8]) -> std::path::PathBuf {
    let file = path.join("snap.7FFFFFFFFFFFFFFF.generating");
    std::fs::write(&file, bytes).unwrap();
    file
}

fn snapshots(path: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .collect();
    names.sort();
    names
}

#[test]
fn a_snapshot_left_half_written_by_a_killed_process_does_not_stop_the_log_from_opening() {
    // Empty, cut inside sled's 12-byte trailer, and long enough to be read but with a wrong checksum.
    let leftovers: [&[u8]; 3] = [b"", b"\x01\x02\x03\x04\x05", &[0xAB; 4096]];
    for bytes in leftovers {
        let dir = tempfile::tempdir().unwrap();
        let heads = closed_log(dir.path());
        assert!(
            snapshots(dir.path())
                .iter()
                .any(|n| !n.ends_with(".generating")),
            "the log should hold a finished snapshot: {:?}",
            snapshots(dir.path())
        );

        // The failure this guards against, straight from sled: it picks the leftover and refuses the log.
        let file = leave_unfinished_snapshot(dir.path(), bytes);
        let refused = sled::Config::new().path(dir.path()).open();
        assert!(
            matches!(refused, Err(sled::Error::Corruption { .. })),
            "sled itself should refuse a log with an unfinished snapshot of {} bytes: {:?}",
            bytes.len(),
            refused.map(|_| ())
        );
        wait_unlocked(dir.path());

        let store = open_released(dir.path()).unwrap();
        assert!(!file.exists(), "the leftover is removed");
        for (s, head) in (1..=3).zip(heads) {
            assert_eq!(store.head(stream(s)).unwrap().unwrap().seq, head);
        }
        assert!(store.verify().unwrap().is_clean());
    }
}

#[test]
fn a_log_held_by_another_handle_keeps_its_files_and_is_refused_as_locked() {
    use fs4::fs_std::FileExt as _;
    let dir = tempfile::tempdir().unwrap();
    closed_log(dir.path());
    let file = leave_unfinished_snapshot(dir.path(), b"");
    // The lock sled takes, held here as another process would hold it.
    let holder = std::fs::File::open(dir.path().join("db")).unwrap();
    assert!(holder.try_lock_exclusive().unwrap());

    let refused = Store::open(dir.path());
    assert!(
        matches!(refused, Err(StoreError::Locked { .. })),
        "{:?}",
        refused.map(|_| ())
    );
    assert!(file.exists(), "nothing is removed from under a live holder");
    holder.unlock().unwrap();
}
