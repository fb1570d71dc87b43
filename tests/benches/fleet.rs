//! The fleet benchmark: N simulated 3-node chef-backend clusters upgraded at
//! once on one service (`tests::fleet`; method and results in tests/FLEET.md).
//!
//! ```sh
//! cargo build --release --workspace --bins      # the binaries it runs
//! cargo bench -p tests --bench fleet
//! BATON_FLEET_CLUSTERS=1,10,30 BATON_FLEET_TIMINGS=zero,demo BATON_FLEET_REPEAT=2 cargo bench -p tests --bench fleet
//! ```
//!
//! Settings (environment): `BATON_FLEET_CLUSTERS` (comma-separated N, default
//! 10), `BATON_FLEET_TIMINGS` (`zero` and/or `demo`, default `zero`),
//! `BATON_FLEET_REPEAT` (runs of each, default 1), `BATON_FLEET_EXECUTORS`
//! (`per-node`: one executor process per node, or `one`: one process serving
//! every node; both may be given, default `per-node`), `BATON_FLEET_BIN_DIR`
//! (where `baton` and `baton-sim` are; default the bench's own profile
//! directory, `target/release`), `BATON_FLEET_RESULTS` (the markdown file the
//! table is appended to; default `target/fleet-results.md`),
//! `BATON_FLEET_RECOVERY` (a share, 0..1: SIGKILL `baton server` once that
//! share of the run's steps were published, start it again on the same log,
//! and print the time from the restart to the first re-dispatched step and to
//! every loop running again; default: no kill), `BATON_FLEET_KEEP_LOGS` (a
//! directory: each run's service, executor and nats-server logs are copied
//! into a new `fleet-<unix ms>/` in it). Exits non-zero
//! when a run fails, an upgrade does not complete or a verdict is not SAFE,
//! and stops there (the runs after it would not say more).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tests::fleet::{self, Bins, Executors, Outcome, Timings};

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("fleet bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn run() -> anyhow::Result<bool> {
    let sizes: Vec<usize> = setting("BATON_FLEET_CLUSTERS", "10")
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .context("BATON_FLEET_CLUSTERS: a comma-separated list of numbers")
        })
        .collect::<anyhow::Result<_>>()?;
    let timings: Vec<Timings> = setting("BATON_FLEET_TIMINGS", "zero")
        .split(',')
        .map(|t| Timings::parse(t.trim()))
        .collect::<anyhow::Result<_>>()?;
    let modes: Vec<Executors> = setting("BATON_FLEET_EXECUTORS", "per-node")
        .split(',')
        .map(|m| Executors::parse(m.trim()))
        .collect::<anyhow::Result<_>>()?;
    let repeat: usize = setting("BATON_FLEET_REPEAT", "1")
        .parse()
        .context("BATON_FLEET_REPEAT: a number")?;
    let kill_at: Option<f64> = std::env::var("BATON_FLEET_RECOVERY")
        .ok()
        .map(|v| v.parse().context("BATON_FLEET_RECOVERY: a share, 0..1"))
        .transpose()?;
    let bins = match std::env::var_os("BATON_FLEET_BIN_DIR") {
        Some(dir) => Bins::in_dir(&PathBuf::from(dir))?,
        None => Bins::beside_current_exe()?,
    };
    let results = match std::env::var_os("BATON_FLEET_RESULTS") {
        Some(path) => PathBuf::from(path),
        None => bins
            .baton
            .parent()
            .and_then(|p| p.parent())
            .context("the binaries live in target/<profile>")?
            .join("fleet-results.md"),
    };
    let header = format!(
        "\n## {} ({} binaries, nats-server {}, {} cores)\n\n{}\n{}\n",
        utc_now(),
        bins.profile(),
        tests::nats::server_binary().display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        "| N | timings | executors | run | wall | steps | steps/s | events/s | overhead p50 / p99 / mean | service RSS (peak) | executors RSS (each) | executors RSS per node (peak) | CPU s: service / executors / commands / nats | load before → after | verdicts |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    );
    print!("{header}");
    append(&results, &header)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for &mode in &modes {
        for &timing in &timings {
            for &n in &sizes {
                for round in 1..=repeat {
                    eprintln!(
                        "fleet bench: N = {n}, {} timings, executors {}, run {round} of {repeat}",
                        timing.name(),
                        mode.name()
                    );
                    let outcome = runtime.block_on(async {
                        // Ctrl-C ends the run through the fleet's drop: children stopped, dirs removed.
                        tokio::select! {
                            outcome = fleet::run_with(&bins, n, timing, mode, kill_at) => outcome,
                            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
                        }
                    });
                    let outcome = match outcome {
                        Ok(outcome) => outcome,
                        Err(err) => {
                            let line = format!(
                                "| {n} | {} | {} | {round} | failed: {} |\n",
                                timing.name(),
                                mode.name(),
                                format!("{err:#}").lines().next().unwrap_or("")
                            );
                            print!("{line}");
                            append(&results, &line)?;
                            return Err(err);
                        }
                    };
                    let line = row(&outcome, round);
                    print!("{line}");
                    append(&results, &line)?;
                    let ms = |q: f64| {
                        outcome
                            .submit_quantile(q)
                            .map_or("-".into(), |v| format!("{v} ms"))
                    };
                    let line = format!(
                        "submits (N = {n}, run {round}): {} `baton submit --detach` processes started at once, each from its spawn to its exit: p50 {}, p90 {}, slowest {}\n",
                        outcome.submit_ms.len(),
                        ms(0.5),
                        ms(0.9),
                        ms(1.0),
                    );
                    print!("{line}");
                    append(&results, &line)?;
                    if let Some(r) = &outcome.recovery {
                        let ms = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} ms"));
                        let line = format!(
                            "recovery (N = {n}, run {round}): {} upgrades in flight, {} steps published before the SIGKILL; from the restart: log verified {}, lease held {}, first step re-dispatched {}, ready (every loop running) {}; {} loops recovered, {} steps re-dispatched before ready\n",
                            r.in_flight,
                            r.published_before_kill,
                            ms(r.to_verified_ms),
                            ms(r.to_lease_ms),
                            ms(r.to_first_step_ms),
                            ms(r.to_ready_ms),
                            r.loops,
                            r.republished,
                        );
                        print!("{line}");
                        append(&results, &line)?;
                        let line = format!(
                            "recovery split (N = {n}, run {round}): JetStream set up {}, checkpoints reconciled {} ({} read, {} signed), first loop's mirror checked {}, every loop recovered {}; summed over the loops: replay {:.1} ms, mirror read {:.1} ms ({} messages, {} events mirrored again)\n",
                            ms(r.to_jetstream_ms),
                            ms(r.to_reconciled_ms),
                            r.checkpoints_read,
                            r.checkpoints_signed,
                            ms(r.to_first_loop_ms),
                            ms(r.to_recovered_ms),
                            r.replay_ms_sum,
                            r.mirror_read_ms_sum,
                            r.mirror_messages,
                            r.remirrored,
                        );
                        print!("{line}");
                        append(&results, &line)?;
                    }
                    print_verdicts(&outcome);
                    if !outcome.runs_repeated.is_empty() {
                        let line = format!(
                            "fleet bench: N = {n}, run {round}: {} step attempts started more than once: {:?}\n",
                            outcome.runs_repeated.len(),
                            outcome.runs_repeated
                        );
                        eprint!("{line}");
                        append(&results, &line)?;
                        return Ok(false);
                    }
                    if !outcome.failures().is_empty() {
                        for end in outcome.failures() {
                            eprintln!(
                                "fleet bench: {} ({}) ended {}, verdict {}\n{}",
                                end.cluster,
                                end.upgrade,
                                end.status,
                                end.verdict,
                                end.report.as_deref().unwrap_or("")
                            );
                        }
                        return Ok(false);
                    }
                }
            }
        }
    }
    eprintln!("fleet bench: results appended to {}", results.display());
    Ok(true)
}

fn row(o: &Outcome, round: usize) -> String {
    let mb = |kb: u64| kb as f64 / 1024.0;
    let ms = |q: f64| o.overhead_quantile(q).map_or("-".into(), |v| v.to_string());
    let safe = o.ends.iter().filter(|e| e.verdict == "SAFE").count();
    let completed = o.ends.iter().filter(|e| e.status == "completed").count();
    format!(
        "| {} | {} | {} | {round} | {:.2} s | {} | {:.0} | {:.0} | {} / {} / {:.2} ms{} | {:.1} MB ({:.1}) | {:.0} MB ({:.1}, {} processes) | {:.2} MB ({:.2}) | {:.1} / {:.1} / {:.1} / {:.1} | {} → {} | {safe} SAFE of {}, {completed} completed |\n",
        o.clusters,
        o.timings.name(),
        o.mode.name(),
        o.wall_ms as f64 / 1000.0,
        o.steps,
        o.steps_per_s(),
        o.events_per_s(),
        ms(0.5),
        ms(0.99),
        o.overhead_mean().unwrap_or(0.0),
        if o.steps_untimed > 0 { format!(" ({} untimed)", o.steps_untimed) } else { String::new() },
        mb(o.service.rss_kb),
        mb(o.service.peak_rss_kb),
        mb(o.executors.rss_kb),
        mb(o.executors.rss_kb) / o.executor_count.max(1) as f64,
        o.executor_count,
        mb(o.executor_rss_per_node_kb()),
        mb(o.executors.peak_rss_kb) / o.nodes.max(1) as f64,
        o.cpu_s.service,
        o.cpu_s.executors,
        o.cpu_s.commands,
        o.cpu_s.nats,
        o.load_before,
        o.load_after,
        o.ends.len(),
    )
}

/// Every cluster's verdict, ten to a line.
fn print_verdicts(o: &Outcome) {
    for chunk in o.ends.chunks(10) {
        let line: Vec<String> = chunk
            .iter()
            .map(|e| format!("{} {} {}", e.cluster, e.status, e.verdict))
            .collect();
        eprintln!("  {}", line.join(", "));
    }
}

fn append(path: &PathBuf, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
