//! Crash survival: a real child process (`store-crash-child`) appends batches and flushes in a loop; the test
//! SIGKILLs it at 50 random moments. After each kill, every head the child reported as flushed must still be in
//! the log with the same hash, and the whole log must verify.

use crate::support::wait_unlocked;
use rand::{Rng, SeedableRng};
use std::io::BufRead;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use store::{Hash, Store, StreamId};

/// A head the child reported after a flush.
struct Flushed {
    stream: StreamId,
    seq: u64,
    hash: Hash,
}

fn parse(line: &str) -> Flushed {
    let parts: Vec<&str> = line.split(' ').collect();
    assert_eq!(parts.len(), 4, "bad child line {line:?}");
    assert_eq!(parts[0], "flushed", "bad child line {line:?}");
    let mut hash = [0u8; 32];
    hex::decode_to_slice(parts[3], &mut hash).unwrap();
    Flushed {
        stream: parts[1].parse().unwrap(),
        seq: parts[2].parse().unwrap(),
        hash,
    }
}

#[test]
fn every_flushed_record_survives_sigkill_and_the_chain_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xBA70);
    let mut flushed: Vec<Flushed> = Vec::new();
    let mut killed_with_output = 0;

    for round in 0..50 {
        // The previous round's store handle must have let go of the log before the child opens it.
        wait_unlocked(dir.path());
        let mut child = Command::new(env!("CARGO_BIN_EXE_store-crash-child"))
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::sync_channel::<String>(1 << 16);
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });

        // Kill after a random number of reported flushes (0 kills it while it opens the log), plus a random
        // delay so the kill also lands inside appends and flushes, not only between batches.
        let wait_for = rng.random_range(0..=6);
        let mut lines = Vec::new();
        while lines.len() < wait_for {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("round {round}: child reported nothing for 30 s: {e}"));
            lines.push(line);
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        child.kill().unwrap(); // SIGKILL on Unix
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "round {round}: the child did not die of SIGKILL: {status}"
        );
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        if !lines.is_empty() {
            killed_with_output += 1;
        }
        flushed.extend(lines.iter().map(|l| parse(l)));

        let store = Store::open(dir.path()).unwrap();
        let report = store
            .verify()
            .unwrap_or_else(|e| panic!("round {round}: the log does not verify: {e:#}"));
        assert!(
            report.is_clean(),
            "round {round}: torn tails {:?}",
            report.torn_tails
        );
        for f in &flushed {
            let head = store
                .head(f.stream)
                .unwrap()
                .expect("a flushed stream has a head");
            assert!(
                head.seq >= f.seq,
                "round {round}: {} lost seq {} (head {})",
                f.stream,
                f.seq,
                head.seq
            );
            let record = store
                .read(f.stream, f.seq)
                .unwrap()
                .next()
                .unwrap()
                .unwrap();
            assert_eq!(record.seq, f.seq);
            assert_eq!(
                record.hash, f.hash,
                "round {round}: {} seq {} changed",
                f.stream, f.seq
            );
        }
    }
    assert!(
        flushed.len() >= 50,
        "only {} flushes were reported",
        flushed.len()
    );
    assert!(
        killed_with_output >= 25,
        "only {killed_with_output} rounds saw a flush"
    );
}
