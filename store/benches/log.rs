//! The store's benchmark (`cargo bench -p store`): durable appends per second with one flush per record and with
//! batches of 64, replay and verify speed, on a log of 1,000,000 records, next to raw sled inserts (no hashing,
//! no indexes, no transaction) measured in the same run. Prints a Markdown table; `BENCHMARKS.md` keeps the
//! figures and the method. `BATON_BENCH_RECORDS` changes the log size (for a quick try).

use anyhow::Context;
use sled::Transactional;
use std::time::{Duration, Instant};
use store::{NewRecord, Store, StreamId};

const STREAMS: u64 = 100;
const BATCH: u64 = 64;
const SINGLE_FLUSH_RECORDS: u64 = 5_000;

/// A workflow-like JSON event of about 200 bytes.
fn event(stream: u64, n: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"StepResultObserved","stream":{stream},"step":{n},"node":"backend-{}","exit":0,"output":"{}"}}"#,
        n % 3,
        "ok ".repeat(40)
    )
    .into_bytes()
}

/// Every other record carries a message id, as results received over NATS do.
fn record(stream: u64, n: u64) -> NewRecord {
    if n.is_multiple_of(2) {
        NewRecord::with_msg_id(format!("{stream}:{n}"), event(stream, n))
    } else {
        NewRecord::new(event(stream, n))
    }
}

fn stream_id(n: u64) -> StreamId {
    StreamId((u128::from(n) + (1u128 << 100)).to_be_bytes())
}

fn rate(n: u64, d: Duration) -> String {
    format!("{:.0}", n as f64 / d.as_secs_f64())
}

/// CPU seconds (user + system) this process has used so far, sled's threads included: less sensitive than wall
/// time to the other work on a shared machine.
fn cpu_seconds() -> f64 {
    // Fields 14 and 15 of /proc/self/stat (after the parenthesised command name), in clock ticks (100 per s).
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.split_whitespace().collect::<Vec<_>>();
            let utime: f64 = rest.get(11)?.parse().ok()?;
            let stime: f64 = rest.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// A timer for one row: wall time and CPU time.
struct Timer {
    wall: Instant,
    cpu: f64,
}

impl Timer {
    fn start() -> Timer {
        Timer {
            wall: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// `N records/s (W s, C s CPU)`.
    fn rate(&self, n: u64) -> String {
        let d = self.wall.elapsed();
        format!(
            "{} records/s ({:.2} s, {:.2} s CPU)",
            rate(n, d),
            d.as_secs_f64(),
            cpu_seconds() - self.cpu
        )
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let total: u64 = match std::env::var("BATON_BENCH_RECORDS") {
        Ok(v) => v.parse().context("BATON_BENCH_RECORDS")?,
        Err(_) => 1_000_000,
    };
    let root = tempfile::tempdir()?;
    println!(
        "records: {total} in {STREAMS} streams, ~{} bytes each",
        event(0, 0).len()
    );
    println!("load average at start: {}", loadavg());
    let mut rows: Vec<(String, String)> = Vec::new();

    // --- The store ---------------------------------------------------------------------------------------
    let store = Store::open(root.path().join("store"))?;
    let mut heads = vec![0u64; STREAMS as usize];
    let started = Timer::start();
    let mut appended = 0u64;
    while appended < total {
        let s = (appended / BATCH) % STREAMS;
        let n = BATCH.min(total - appended);
        let batch: Vec<NewRecord> = (0..n)
            .map(|i| record(s, heads[s as usize] + i + 1))
            .collect();
        store.append(stream_id(s), heads[s as usize], &batch)?;
        store.flush()?;
        heads[s as usize] += n;
        appended += n;
    }
    rows.push((
        format!("store: durable appends, batches of {BATCH}, one flush per batch (building the {total}-record log)"),
        started.rate(total),
    ));

    let mut latencies = Vec::with_capacity(SINGLE_FLUSH_RECORDS as usize);
    let started = Timer::start();
    for i in 0..SINGLE_FLUSH_RECORDS {
        let s = i % STREAMS;
        let t = Instant::now();
        store.append(
            stream_id(s),
            heads[s as usize],
            &[record(s, heads[s as usize] + 1)],
        )?;
        store.flush()?;
        latencies.push(t.elapsed());
        heads[s as usize] += 1;
    }
    latencies.sort();
    rows.push((
        format!("store: durable appends, one flush per record ({SINGLE_FLUSH_RECORDS} records on top of the log)"),
        format!(
            "{}, p50 {} µs, p99 {} µs",
            started.rate(SINGLE_FLUSH_RECORDS),
            latencies[latencies.len() / 2].as_micros(),
            latencies[latencies.len() * 99 / 100].as_micros()
        ),
    ));
    let in_log = total + SINGLE_FLUSH_RECORDS;
    // For a profiler: verify (and replay) this many times more, then stop.
    if let Ok(n) = std::env::var("BATON_BENCH_PROFILE_READS") {
        for _ in 0..n.parse::<u32>().context("BATON_BENCH_PROFILE_READS")? {
            let started = Instant::now();
            let report = store.verify()?;
            println!("verify: {report} in {:?}", started.elapsed());
            let started = Instant::now();
            let mut n = 0u64;
            for (stream, _) in store.streams()? {
                for r in store.read(stream, 1)? {
                    std::hint::black_box(r?);
                    n += 1;
                }
            }
            println!("replay: {n} records in {:?}", started.elapsed());
        }
        return Ok(());
    }

    let started = Timer::start();
    let mut replayed = 0u64;
    let mut bytes = 0u64;
    for (stream, _) in store.streams()? {
        for r in store.read(stream, 1)? {
            bytes += r?.bytes.len() as u64;
            replayed += 1;
        }
    }
    anyhow::ensure!(
        replayed == in_log,
        "replayed {replayed} of {in_log} records"
    );
    rows.push((
        format!(
            "store: replay every stream ({replayed} records, {} MB of events)",
            bytes / 1_000_000
        ),
        started.rate(replayed),
    ));

    // The same replay with the streams dealt out to one thread per core (as a recovery reading many upgrades
    // at once would).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let streams = store.streams()?;
    let started = Timer::start();
    let counts: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (store, streams) = (&store, &streams);
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut n = 0u64;
                    for (stream, _) in streams.iter().skip(t).step_by(threads) {
                        for r in store.read(*stream, 1)? {
                            std::hint::black_box(r?.bytes.len());
                            n += 1;
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replay thread"))
            .collect()
    });
    let replayed: u64 = counts.into_iter().sum::<anyhow::Result<u64>>()?;
    anyhow::ensure!(
        replayed == in_log,
        "replayed {replayed} of {in_log} records"
    );
    rows.push((
        format!("store: replay every stream, {threads} threads ({replayed} records)"),
        started.rate(replayed),
    ));

    let started = Timer::start();
    let report = store.verify_sequential()?;
    anyhow::ensure!(
        report.is_clean() && report.records == in_log,
        "unexpected report {report:?}"
    );
    rows.push((
        format!(
            "store: verify, sequential walk (one thread, index lookups per record; {} records)",
            report.records
        ),
        started.rate(report.records),
    ));

    let started = Timer::start();
    let report = store.verify()?;
    anyhow::ensure!(
        report.is_clean() && report.records == in_log,
        "unexpected report {report:?}"
    );
    rows.push((
        format!(
            "store: verify (chains, heads, global index, dedupe; {threads} threads; {} records)",
            report.records
        ),
        started.rate(report.records),
    ));
    drop(store);
    rows.push((
        "store: size on disk".into(),
        format!("{} MB", dir_size(&root.path().join("store")) / 1_000_000),
    ));

    // --- Raw sled, same keys and bytes, no hashing, no indexes, no transaction -------------------------------
    let db = sled::open(root.path().join("raw"))?;
    let tree = db.open_tree("raw")?;
    let mut heads = vec![0u64; STREAMS as usize];
    let started = Timer::start();
    let mut inserted = 0u64;
    while inserted < total {
        let s = (inserted / BATCH) % STREAMS;
        let n = BATCH.min(total - inserted);
        for i in 0..n {
            let seq = heads[s as usize] + i + 1;
            tree.insert(store::layout::record_key(&stream_id(s), seq), event(s, seq))?;
        }
        db.flush()?;
        heads[s as usize] += n;
        inserted += n;
    }
    rows.push((
        format!("raw sled: inserts, batches of {BATCH}, one flush per batch ({total} records)"),
        started.rate(total),
    ));

    let started = Timer::start();
    for i in 0..SINGLE_FLUSH_RECORDS {
        let s = i % STREAMS;
        let seq = heads[s as usize] + 1;
        tree.insert(store::layout::record_key(&stream_id(s), seq), event(s, seq))?;
        db.flush()?;
        heads[s as usize] = seq;
    }
    rows.push((
        format!("raw sled: inserts, one flush per record ({SINGLE_FLUSH_RECORDS} records)"),
        started.rate(SINGLE_FLUSH_RECORDS),
    ));

    let started = Timer::start();
    let mut scanned = 0u64;
    for kv in tree.iter() {
        let (_, v) = kv?;
        std::hint::black_box(v.len());
        scanned += 1;
    }
    rows.push((
        format!("raw sled: full scan ({scanned} records)"),
        started.rate(scanned),
    ));

    // The same scan cut into one range per thread at stream boundaries.
    let started = Timer::start();
    let counts: Vec<sled::Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                let tree = &tree;
                s.spawn(move || -> sled::Result<u64> {
                    let per = STREAMS.div_ceil(threads as u64);
                    let from = stream_id(t * per).as_bytes().to_vec();
                    let to = stream_id(((t + 1) * per).min(STREAMS)).as_bytes().to_vec();
                    let range = if (t + 1) * per >= STREAMS {
                        tree.range(from..)
                    } else {
                        tree.range(from..to)
                    };
                    let mut n = 0u64;
                    for kv in range {
                        let (_, v) = kv?;
                        std::hint::black_box(v.len());
                        n += 1;
                    }
                    Ok(n)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scan thread"))
            .collect()
    });
    let scanned: u64 = counts.into_iter().sum::<sled::Result<u64>>()?;
    rows.push((
        format!("raw sled: full scan, {threads} threads ({scanned} records)"),
        started.rate(scanned),
    ));

    drop(tree);
    drop(db);

    // --- Raw sled, the store's entries in one transaction per batch, no hashing ------------------------------
    // Separates the cost of the transaction and the index entries from the cost of hashing and checks.
    let db = sled::open(root.path().join("raw-tx"))?;
    let trees: Vec<sled::Tree> = ["records", "heads", "global", "dedupe", "meta"]
        .iter()
        .map(|name| db.open_tree(name))
        .collect::<Result<_, _>>()?;
    let (records, head_tree, global, dedupe, meta) =
        (&trees[0], &trees[1], &trees[2], &trees[3], &trees[4]);
    let mut heads = vec![0u64; STREAMS as usize];
    let started = Timer::start();
    let mut inserted = 0u64;
    while inserted < total {
        let s = (inserted / BATCH) % STREAMS;
        let n = BATCH.min(total - inserted);
        let first = heads[s as usize] + 1;
        let batch: Vec<NewRecord> = (0..n).map(|i| record(s, first + i)).collect();
        let stream = stream_id(s);
        let result: sled::transaction::TransactionResult<(), ()> = (
            records, head_tree, global, dedupe, meta,
        )
            .transaction(|(records, head_tree, global, dedupe, meta)| {
                for (i, r) in batch.iter().enumerate() {
                    let seq = first + i as u64;
                    let pos = inserted + i as u64 + 1;
                    let key = store::layout::record_key(&stream, seq);
                    let value = store::layout::encode_record(
                        &[0; 32],
                        &[0; 32],
                        pos,
                        r.msg_id.as_deref(),
                        &r.bytes,
                    );
                    records.insert(&key[..], value)?;
                    global.insert(&pos.to_be_bytes()[..], &key[..])?;
                    if let Some(id) = r.msg_id.as_deref() {
                        dedupe.insert(id.as_bytes(), &key[..])?;
                    }
                }
                head_tree.insert(stream.as_bytes(), &(first + n - 1).to_be_bytes()[..])?;
                meta.insert(&b"next_global"[..], &(inserted + n + 1).to_be_bytes()[..])?;
                Ok(())
            });
        result.map_err(|e| anyhow::anyhow!("raw transaction failed: {e:?}"))?;
        db.flush()?;
        heads[s as usize] += n;
        inserted += n;
    }
    rows.push((
        format!("raw sled: the store's entries in one transaction per batch of {BATCH}, no hashing ({total} records)"),
        started.rate(total),
    ));

    drop(trees);
    drop(db);

    // --- Raw sled, the store's entries in one batch on one tree per batch, no hashing -------------------------
    // What the store's v2 layout writes per append, without reads, hashing or checks.
    let db = sled::open(root.path().join("raw-batch"))?;
    let tree = store::layout::open_tree(&db)?;
    let mut heads = vec![0u64; STREAMS as usize];
    let started = Timer::start();
    let mut inserted = 0u64;
    while inserted < total {
        let s = (inserted / BATCH) % STREAMS;
        let n = BATCH.min(total - inserted);
        let first = heads[s as usize] + 1;
        let stream = stream_id(s);
        let mut batch = sled::Batch::default();
        for i in 0..n {
            let r = record(s, first + i);
            let seq = first + i;
            let pos = inserted + i + 1;
            let key = store::layout::record_key(&stream, seq);
            let value = store::layout::encode_record(
                &[0; 32],
                &[0; 32],
                pos,
                r.msg_id.as_deref(),
                &r.bytes,
            );
            batch.insert(&store::layout::record_entry_key(&stream, seq)[..], value);
            if let Some(id) = r.msg_id.as_deref() {
                batch.insert(store::layout::dedupe_entry_key(id), &key[..]);
            }
        }
        let run = store::layout::GlobalRun {
            stream,
            seq: first,
            count: n,
        };
        batch.insert(
            &store::layout::global_entry_key(inserted + 1)[..],
            &store::layout::encode_global_run(&run)[..],
        );
        batch.insert(
            &store::layout::head_entry_key(&stream)[..],
            &(first + n - 1).to_be_bytes()[..],
        );
        batch.insert(
            store::layout::META_NEXT_GLOBAL,
            &(inserted + n + 1).to_be_bytes()[..],
        );
        tree.apply_batch(batch)?;
        db.flush()?;
        heads[s as usize] += n;
        inserted += n;
    }
    rows.push((
        format!("raw sled: the store's entries in one batch on one tree per batch of {BATCH}, no hashing ({total} records)"),
        started.rate(total),
    ));

    println!("load average at end: {}", loadavg());
    println!();
    println!("| measurement | result |");
    println!("|---|---|");
    for (what, result) in rows {
        println!("| {what} | {result} |");
    }
    Ok(())
}
