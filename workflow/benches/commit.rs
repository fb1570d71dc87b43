//! The log's write path under concurrent writers (`cargo bench -p workflow --bench commit`): the service's old
//! path (every writer runs `Store::append` then `Store::flush_async` on its own, concurrently with the others)
//! against the committer (every writer hands its batch to the one writer thread and waits for the flush that
//! covers it). For 1, 10 and 100 writers it prints records/s, the per-batch latency (hand-over to durable answer)
//! p50/p99, the flushes made, and, for the old path, whether it hung (sled issue 1308): no batch finished for
//! [`HANG_AFTER`]. `store/BENCHMARKS.md` ("Concurrent writers") keeps the figures and the method.
//!
//! Each configuration runs in a child process (this binary again, with arguments): a hung sled cannot be
//! cancelled, and its global lock would hang every later configuration of the same process.
//!
//! - `BATON_BENCH_BATCHES` (default 6000): batches per configuration, split evenly over the writers.
//! - `BATON_BENCH_RUNS` (default 3): runs per configuration.
//! - `BATON_BENCH_WRITERS` (default `1,10,100`): the writer counts.
//! - `commit <old|committer> <writers> <batches per writer>`: one run, one line on stdout.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::{NewRecord, Store, StreamId};
use workflow::service::committer::Committer;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A run in which no batch finished for this long has hung.
const HANG_AFTER: Duration = Duration::from_secs(10);

/// Records per batch: a decision's events (a step finished, an observation, the next step scheduled).
const RECORDS_PER_BATCH: u64 = 3;

/// A workflow-like JSON event of about 200 bytes.
fn event(writer: u64, n: u64) -> Vec<u8> {
    format!(
        r#"{{"type":"StepFinished","writer":{writer},"n":{n},"node":"backend-{}","exit":0,"output":"{}"}}"#,
        n % 3,
        "ok ".repeat(40)
    )
    .into_bytes()
}

fn stream_id(writer: u64) -> StreamId {
    StreamId((u128::from(writer) + (1u128 << 100)).to_be_bytes())
}

fn batch(writer: u64, head: u64) -> Vec<NewRecord> {
    (1..=RECORDS_PER_BATCH)
        .map(|i| NewRecord::with_msg_id(format!("{writer}:{}", head + i), event(writer, head + i)))
        .collect()
}

fn main() -> Result<(), Error> {
    // `cargo bench` passes `--bench`.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.as_slice() {
        [] => parent(),
        [mode, writers, batches] => child(mode, writers.parse()?, batches.parse()?),
        _ => Err("usage: commit [<old|committer> <writers> <batches per writer>]".into()),
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Runs every configuration in a child process and prints a Markdown table.
fn parent() -> Result<(), Error> {
    let batches: u64 = env_or("BATON_BENCH_BATCHES", "6000").parse()?;
    let runs: u64 = env_or("BATON_BENCH_RUNS", "3").parse()?;
    let writers: Vec<u64> = env_or("BATON_BENCH_WRITERS", "1,10,100")
        .split(',')
        .map(|w| w.trim().parse())
        .collect::<Result<_, _>>()?;
    let exe = std::env::current_exe()?;
    println!(
        "{batches} batches of {RECORDS_PER_BATCH} records per run, {runs} runs per row; load average at start: {}",
        loadavg()
    );
    println!();
    println!("| path | writers | run | result | records/s | batch latency p50 | p99 | flushes |");
    println!("|---|---|---|---|---|---|---|---|");
    for &n in &writers {
        for mode in ["committer", "old"] {
            for run in 1..=runs {
                let out = Command::new(&exe)
                    .args([mode, &n.to_string(), &(batches / n).max(1).to_string()])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .output()?;
                let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
                println!("| {mode} | {n} | {run} | {line} |");
            }
        }
    }
    println!();
    println!("load average at end: {}", loadavg());
    Ok(())
}

/// One run: `writers` tasks, each appending `per_writer` batches to its own stream, then every chain verified.
fn child(mode: &str, writers: u64, per_writer: u64) -> Result<(), Error> {
    let old = match mode {
        "old" => true,
        "committer" => false,
        other => return Err(format!("unknown path {other:?}").into()),
    };
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let done = Arc::new(AtomicU64::new(0));
    let total = writers * per_writer;
    {
        // The watchdog: a hung sled cannot be cancelled; report it and end the process.
        let done = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut last, mut since) = (0, Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let now = done.load(Ordering::Relaxed);
                if now == total {
                    return;
                }
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() >= HANG_AFTER {
                    println!(
                        "HUNG: no batch finished for {} s; {now} of {total} batches done after {:.1} s | | | |",
                        HANG_AFTER.as_secs(),
                        started.elapsed().as_secs_f64()
                    );
                    std::process::exit(2);
                }
            }
        });
    }
    // The service's runtime: multi-thread, one worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (elapsed, mut latencies, flushes) = runtime.block_on(async {
        let committer = (!old)
            .then(|| Committer::start(store.clone()))
            .transpose()?;
        let committer = Arc::new(committer);
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..writers {
            let (store, committer, done) = (store.clone(), committer.clone(), done.clone());
            tasks.spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer as usize);
                let mut head = 0;
                for _ in 0..per_writer {
                    let records = batch(w, head);
                    let t = Instant::now();
                    match committer.as_ref() {
                        Some(committer) => {
                            committer.append(stream_id(w), head, records).await?;
                        }
                        None => {
                            store.append(stream_id(w), head, &records)?;
                            store.flush_async().await?;
                        }
                    }
                    latencies.push(t.elapsed());
                    head += RECORDS_PER_BATCH;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(latencies)
            });
        }
        let mut latencies = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            latencies.extend(joined??);
        }
        let elapsed = started.elapsed();
        let flushes = match committer.as_ref() {
            Some(c) => {
                c.close().await?;
                c.stats().flushes.to_string()
            }
            None => total.to_string(),
        };
        Ok::<_, Error>((elapsed, latencies, flushes))
    })?;
    // Nothing lost, nothing doubled, every chain intact.
    for w in 0..writers {
        let head = store.head(stream_id(w))?.map_or(0, |h| h.seq);
        if head != per_writer * RECORDS_PER_BATCH {
            return Err(format!(
                "writer {w}: head {head}, expected {}",
                per_writer * RECORDS_PER_BATCH
            )
            .into());
        }
    }
    let report = store.verify()?;
    if !report.is_clean() || report.records != total * RECORDS_PER_BATCH {
        return Err(format!("the log does not verify: {report:?}").into());
    }
    latencies.sort();
    let pct = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "ok, {:.2} s | {:.0} | {} µs | {} µs | {flushes}",
        elapsed.as_secs_f64(),
        (total * RECORDS_PER_BATCH) as f64 / elapsed.as_secs_f64(),
        pct(50).as_micros(),
        pct(99).as_micros(),
    );
    Ok(())
}
