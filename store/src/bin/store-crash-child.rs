//! `store-crash-child DIR`: the victim of the store's crash test. Opens the log in DIR and appends batches of 1 to
//! 64 records to three streams in a loop, forever; after each flush it prints `flushed STREAM SEQ HASH` (the
//! stream's head, hash in hex) on stdout. The test SIGKILLs it at random moments and checks that every head it
//! reported survived.
//!
//! `store-crash-child migrate DIR POINT`: the victim of the migration's crash test. Opens (migrates) the log in
//! DIR and aborts right after the migration step POINT (`cleared`, `copied-1`, `copied-2`, `complete`), after
//! printing `crashing after POINT`; exits normally if the migration never reaches POINT.

use anyhow::Context;
use std::io::Write;
use store::{NewRecord, Store, StreamId};

fn main() -> anyhow::Result<()> {
    let dir = std::env::args_os()
        .nth(1)
        .context("usage: store-crash-child DIR | store-crash-child migrate DIR POINT")?;
    if dir == "migrate" {
        return migrate();
    }
    let store = Store::open(&dir).with_context(|| format!("opening the log in {dir:?}"))?;
    let streams: Vec<StreamId> = (1..=3u8).map(|n| StreamId([n; 16])).collect();
    // Message ids must be unique across children: the pid is, while they run one after another.
    let pid = std::process::id();
    let mut rng = XorShift(u64::from(pid) | 1);
    let mut out = std::io::stdout().lock();
    for n in 0u64.. {
        let stream = streams[(rng.next() % 3) as usize];
        let size = 1 + rng.next() % 64;
        let batch: Vec<NewRecord> = (0..size)
            .map(|i| {
                let bytes = format!(
                    r#"{{"child":{pid},"batch":{n},"i":{i},"pad":"{}"}}"#,
                    "x".repeat((rng.next() % 200) as usize)
                );
                if i % 2 == 0 {
                    NewRecord::with_msg_id(format!("{pid}:{n}:{i}"), bytes)
                } else {
                    NewRecord::new(bytes)
                }
            })
            .collect();
        let expected = store.head(stream)?.map_or(0, |h| h.seq);
        let outcome = store.append(stream, expected, &batch)?;
        store.flush()?;
        let head = outcome.head.context("a non-empty append leaves a head")?;
        writeln!(
            out,
            "flushed {stream} {} {}",
            head.seq,
            hex::encode(head.hash)
        )?;
        out.flush()?;
    }
    Ok(())
}

/// A tiny PRNG: the binary needs no dependency for picking sizes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The `migrate` mode (see the module docs).
fn migrate() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(2);
    let (Some(dir), Some(point)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: store-crash-child migrate DIR POINT");
    };
    let point = point.to_string_lossy().into_owned();
    let mut copied = 0;
    let mut hook = |step: store::MigrationStep| {
        let name = match step {
            store::MigrationStep::Cleared => "cleared".to_string(),
            store::MigrationStep::Copied { .. } => {
                copied += 1;
                format!("copied-{copied}")
            }
            store::MigrationStep::Complete => "complete".to_string(),
            store::MigrationStep::Dropped => "dropped".to_string(),
        };
        if name == point {
            println!("crashing after {point}");
            // No destructor runs and sled flushes nothing more: the log stays as this step left it on disk.
            std::process::abort();
        }
    };
    Store::open_with_migration_hook(&dir, &mut hook)
        .with_context(|| format!("opening the log in {dir:?}"))?;
    Ok(())
}
