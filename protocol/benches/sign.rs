//! The cost of signatures per step (`cargo bench -p protocol --bench sign`), issue 11: what the crypto adds to
//! each step, measured here rather than in a timed test. A step is four operations: the service signs a
//! realistic step request (`StepRequest::signed`), the executor verifies it (`sign::verify_headers`), the
//! executor signs a step result carrying 8 KiB of output (`StepResult::signed`), and the service verifies that.
//! Each operation is timed call by call after a warm-up; the table gives the median and p99 of each, their sum
//! per step, and that sum as a share of the measured per-step overhead of the whole system (1.78 ms at p50,
//! issue 16). `signed()` also encodes the JSON; the encode alone is timed too, so the signature's own share
//! shows. `BATON_BENCH_ITERATIONS` changes the number of timed calls per operation (for a quick try).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use protocol::sign::{verify_headers, Identity, Kind};
use protocol::{Outcome, StepRequest, StepResult, PROTOCOL_VERSION};

/// The per-step overhead measured end to end (p50, issue 16), in microseconds.
const STEP_OVERHEAD_P50_US: f64 = 1780.0;
const OUTPUT_BYTES: usize = 8 * 1024;
const WARM_UP: usize = 1_000;

/// A step request as the service publishes it for an install (the longest argv of the chef-backend profile).
fn request() -> StepRequest {
    StepRequest {
        v: PROTOCOL_VERSION,
        upgrade: "01JZ8Q4N6W3YH2M5V7C9XKD0RT".into(),
        step: 17,
        attempt: 1,
        epoch: 3,
        node: "backend-2".into(),
        group: "backend-1".into(),
        action: "install".into(),
        argv: vec![
            "dpkg".into(),
            "-i".into(),
            "/var/cache/baton/packages/chef-backend_3.1.1-1_amd64.deb".into(),
        ],
        env: BTreeMap::from([
            ("DEBIAN_FRONTEND".into(), "noninteractive".into()),
            ("LC_ALL".into(), "C".into()),
        ]),
        timeout_ms: 600_000,
        deadline_ms: 1_767_000_000_000,
        profile_sha256: None,
    }
}

/// Its result with a full output tail: 8 KiB of dpkg-like lines on stdout.
fn result() -> StepResult {
    let line = "Setting up chef-backend (3.1.1-1) ... Unpacking replacement files into /opt/chef-backend\n";
    let stdout: String = line.chars().cycle().take(OUTPUT_BYTES).collect();
    StepResult {
        v: PROTOCOL_VERSION,
        upgrade: "01JZ8Q4N6W3YH2M5V7C9XKD0RT".into(),
        step: 17,
        attempt: 1,
        epoch: 3,
        node: "backend-2".into(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        stdout_tail: stdout,
        stderr_tail: "dpkg: warning: downgrading is not what this is\n".into(),
        reason: None,
        started_ms: Some(1_767_000_000_000),
        finished_ms: Some(1_767_000_041_500),
        executor: "backend-1-a".into(),
    }
}

/// Median and p99 of `iterations` timed calls of `op`, after a warm-up.
fn measure<T>(iterations: usize, mut op: impl FnMut() -> T) -> (Duration, Duration) {
    for _ in 0..WARM_UP {
        black_box(op());
    }
    let mut times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        black_box(op());
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 99 / 100])
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let iterations: usize = std::env::var("BATON_BENCH_ITERATIONS")
        .ok()
        .map(|v| v.parse().expect("BATON_BENCH_ITERATIONS is a number"))
        .unwrap_or(20_000);
    let service = Identity::generate();
    let executor = Identity::generate();
    let req = request();
    let res = result();
    let (req_headers, req_payload) = req.signed(&service);
    let (res_headers, res_payload) = res.signed(&executor);
    let (req_subject, res_subject) = (req.subject(), res.subject());
    // What is measured must also be right: both signatures verify, and a changed byte does not.
    verify_headers(Some(&req_headers), Kind::Step, &req_subject, &req_payload)
        .expect("the request verifies");
    verify_headers(Some(&res_headers), Kind::Result, &res_subject, &res_payload)
        .expect("the result verifies");
    let mut tampered = res_payload.clone();
    tampered[OUTPUT_BYTES / 2] ^= 1;
    assert!(
        verify_headers(Some(&res_headers), Kind::Result, &res_subject, &tampered).is_err(),
        "a changed result must not verify"
    );

    println!("CPU: {}", cpu());
    println!("load average at start: {}", loadavg());
    println!(
        "{iterations} timed calls per operation after {WARM_UP} warm-up calls; request payload {} bytes, result payload {} bytes",
        req_payload.len(),
        res_payload.len()
    );

    let sign_request = measure(iterations, || req.signed(&service));
    let encode_request = measure(iterations, || req.encode());
    let verify_request = measure(iterations, || {
        verify_headers(Some(&req_headers), Kind::Step, &req_subject, &req_payload)
    });
    let sign_result = measure(iterations, || res.signed(&executor));
    let encode_result = measure(iterations, || res.encode());
    let verify_result = measure(iterations, || {
        verify_headers(Some(&res_headers), Kind::Result, &res_subject, &res_payload)
    });

    let steps = [
        (
            "service signs the step request (`StepRequest::signed`)",
            sign_request,
        ),
        ("executor verifies it (`verify_headers`)", verify_request),
        (
            "executor signs the result, 8 KiB output (`StepResult::signed`)",
            sign_result,
        ),
        ("service verifies it (`verify_headers`)", verify_result),
    ];
    let p50: Duration = steps.iter().map(|(_, (p50, _))| *p50).sum();
    let p99: Duration = steps.iter().map(|(_, (_, p99))| *p99).sum();
    // Without the JSON encode, which the service and executor did before signatures existed.
    let crypto_p50 = p50.saturating_sub(encode_request.0 + encode_result.0);
    let share = |d: Duration| d.as_secs_f64() * 1e6 / STEP_OVERHEAD_P50_US * 100.0;

    println!();
    println!("| operation | median (µs) | p99 (µs) |");
    println!("|---|---:|---:|");
    for (name, (p50, p99)) in steps {
        println!("| {name} | {} | {} |", us(p50), us(p99));
    }
    println!(
        "| per step, the four above (sum of medians; sum of p99s, pessimistic) | {} | {} |",
        us(p50),
        us(p99)
    );
    println!(
        "| of which JSON encoding inside `signed()` (request + result) | {} | {} |",
        us(encode_request.0 + encode_result.0),
        us(encode_request.1 + encode_result.1)
    );
    println!(
        "| per step, signatures only (sum minus encoding) | {} | |",
        us(crypto_p50)
    );
    println!();
    println!(
        "Against the measured per-step overhead of {:.2} ms (p50, issue 16): signatures add {:.1} % at the \
         median ({:.1} % without the JSON encoding, which steps paid before); the sum of the p99s is {:.1} % of it.",
        STEP_OVERHEAD_P50_US / 1000.0,
        share(p50),
        share(crypto_p50),
        share(p99)
    );
}
