//! The cost of the largest inputs the service can be sent (`cargo bench -p workflow --bench inputs`), issue 12:
//! what one hostile result costs the service, measured here rather than in a timed test.
//!
//! - **Refused**: a result of 1 MB (cluster-status lines in `stdout_tail`), signed by a real executor. The
//!   service's results pump checks its signature (SHA-256 over the payload, one ed25519 verify) and decodes the
//!   JSON, which refuses it (`MAX_OUTPUT` characters per field) before the core sees it.
//! - **Accepted at the bound**: a result whose tails hold `MAX_OUTPUT` characters each: signature check and
//!   decode, then the core's parsers on that text (`parse_cluster_status`, `parse_status`), the most any result
//!   can make the core parse.
//! - For scale, the parsers on 1 MB: what a refused result would have cost had it been read.
//!
//! Each case is timed call by call after a warm-up; the table gives the median and p99.
//! `BATON_BENCH_ITERATIONS` changes the number of timed calls (for a quick try).

use std::hint::black_box;
use std::time::{Duration, Instant};

use protocol::sign::{verify_headers, Identity, Kind};
use protocol::{decode_result, Outcome, StepResult, MAX_OUTPUT, PROTOCOL_VERSION};
use workflow::core::builtin::chef_backend::{parse_cluster_status, parse_status};

const WARM_UP: usize = 20;

/// `chef-backend-ctl cluster-status`: a header, then distinct node rows up to `chars` characters.
fn cluster_status(chars: usize) -> String {
    let mut text = String::from(
        "Name       IP              GUID                              Role      PG        ES\n",
    );
    for n in 1.. {
        let row = format!("backend-{n}  192.168.33.215  dc0c6ea77a751f94037cd950{n:08x}  follower  follower  not_master\n");
        if text.len() + row.len() > chars {
            break;
        }
        text.push_str(&row);
    }
    text
}

/// `chef-backend-ctl status` lines cycled to `chars` characters.
fn status(chars: usize) -> String {
    let line = "Service       Local Status        Time in State  Distributed Node Status\n\
                leaderl       running (pid 6881)  1d 2h 43m 35s  leader: 1; waiting: 0; follower: 2; total: 3\n\
                epmd          running (pid 6833)  1d 2h 43m 41s  running: 3; down: 0; total: 3\n";
    line.chars().cycle().take(chars).collect()
}

fn result(stdout: String) -> StepResult {
    StepResult {
        v: PROTOCOL_VERSION,
        upgrade: "01JZ8Q4N6W3YH2M5V7C9XKD0RT".into(),
        step: 9,
        attempt: 1,
        epoch: 3,
        node: "backend-1".into(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        stdout_tail: stdout,
        stderr_tail: String::new(),
        reason: None,
        started_ms: Some(1_767_000_000_000),
        finished_ms: Some(1_767_000_000_150),
        executor: "backend-1".into(),
    }
}

fn time(iterations: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..WARM_UP {
        f();
    }
    let mut samples: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[(samples.len() * 99 / 100).min(samples.len() - 1)],
    )
}

fn main() {
    let iterations: usize = std::env::var("BATON_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let identity = Identity::generate();

    let mut rows: Vec<(String, (Duration, Duration))> = Vec::new();
    let mut receive = |name: &str, res: &StepResult, accepted: bool| {
        let (headers, payload) = res.signed(&identity);
        let subject = res.subject();
        let timing = time(iterations, || {
            let verified =
                verify_headers(Some(&headers), Kind::Result, &subject, black_box(&payload));
            assert!(verified.is_ok());
            assert_eq!(decode_result(black_box(&payload)).is_ok(), accepted);
        });
        rows.push((
            format!(
                "{name} ({} KiB payload): verify + decode",
                payload.len() / 1024
            ),
            timing,
        ));
    };
    receive(
        "1 MB result, refused",
        &result(cluster_status(1_000_000)),
        false,
    );
    receive(
        "MAX_OUTPUT result, accepted",
        &result(cluster_status(MAX_OUTPUT)),
        true,
    );
    for (chars, label) in [
        (MAX_OUTPUT, "MAX_OUTPUT chars"),
        (1_000_000, "1 MB (never reaches it)"),
    ] {
        let text = cluster_status(chars);
        rows.push((
            format!("parse_cluster_status, {label}"),
            time(iterations, || {
                black_box(parse_cluster_status(black_box(&text)).ok());
            }),
        ));
        let text = status(chars);
        rows.push((
            format!("parse_status, {label}"),
            time(iterations, || {
                black_box(parse_status(black_box(&text)).ok());
            }),
        ));
    }
    println!("{iterations} timed calls per case after {WARM_UP} warm-up calls");
    println!("{:<62} {:>10} {:>10}", "case", "p50", "p99");
    for (name, (p50, p99)) in rows {
        println!(
            "{name:<62} {:>8.3}ms {:>8.3}ms",
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3
        );
    }
}
