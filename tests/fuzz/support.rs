//! The fuzz tests' runner and input generators, shared by the `fuzz_*` test files of the protocol, workflow and store crates
//! (each includes it with `#[path]`): runs one decoder's property over `BATON_FUZZ_CASES` inputs (10,000 unless
//! set) and measures what `tests/FUZZ.md` reports: inputs, wall time, the slowest input, and the growth of the
//! process's peak resident memory (`VmHWM`) over the run and over any one input.
//!
//! A panic in the decoder fails the test: proptest catches it, shrinks the input and prints it. With
//! `BATON_FUZZ_REPORT=FILE` set, each decoder appends one line of figures to FILE.

#![allow(dead_code)]

use std::fmt::Debug;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Inputs per decoder: `BATON_FUZZ_CASES`, or 10,000.
pub fn cases() -> u32 {
    std::env::var("BATON_FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(10_000)
}

/// The process's peak resident set so far, in KiB (Linux `VmHWM`; 0 elsewhere).
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// An input as the report shows it: its `Debug`, cut at 160 bytes.
fn shown(input: &impl Debug) -> String {
    let mut s = format!("{input:?}");
    if s.len() > 160 {
        let mut cut = 160;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Runs `check` on `cases()` inputs drawn from `strategy` and prints (and appends to `BATON_FUZZ_REPORT`) the
/// figures of the run. Panics (fails the test) on the first input whose check fails or panics, after shrinking.
pub fn fuzz<S>(decoder: &str, strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug + Clone,
{
    let n = cases();
    let mut runner = TestRunner::new(Config {
        cases: n,
        // Generated inputs are mostly invalid on purpose: never give up on rejects.
        max_global_rejects: u32::MAX,
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..Config::default()
    });
    let slowest = std::cell::RefCell::new((Duration::ZERO, String::new()));
    let worst_rss = std::cell::Cell::new(0u64);
    let inputs = std::cell::Cell::new(0u64);
    let rss_start = peak_rss_kib();
    let started = Instant::now();
    let outcome = runner.run(&strategy, |input| {
        let kept = input.clone();
        // The peak RSS is read from /proc (costly): around one input in 16.
        let sample = inputs.get().is_multiple_of(16);
        let before = if sample { peak_rss_kib() } else { 0 };
        let t = Instant::now();
        let result = check(input);
        let took = t.elapsed();
        if sample {
            worst_rss.set(worst_rss.get().max(peak_rss_kib().saturating_sub(before)));
        }
        inputs.set(inputs.get() + 1);
        let mut s = slowest.borrow_mut();
        if took > s.0 {
            *s = (took, shown(&kept));
        }
        result
    });
    let wall = started.elapsed();
    let (slow, slow_input) = slowest.into_inner();
    let line = format!(
        "fuzz {decoder}: {} inputs in {:.2} s ({:.1} us/input), panics 0, slowest {:.2} ms, \
         peak RSS +{} KiB over the run, +{} KiB at most for one sampled input (1 in 16); slowest input: {slow_input}",
        inputs.get(),
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e6 / inputs.get().max(1) as f64,
        slow.as_secs_f64() * 1e3,
        peak_rss_kib().saturating_sub(rss_start),
        worst_rss.get(),
    );
    if let Err(e) = outcome {
        panic!("fuzz {decoder}: {e}");
    }
    eprintln!("{line}");
    if let Ok(path) = std::env::var("BATON_FUZZ_REPORT") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Bytes that show as text in a report.
#[derive(Clone)]
pub struct Bytes(pub Vec<u8>);

impl Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Arbitrary bytes, up to `max` long, half of them printable ASCII (JSON- and TOML-ish punctuation is common).
pub fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    use proptest::prelude::*;
    let byte = prop_oneof![
        any::<u8>(),
        proptest::sample::select(b"{}[]\":,=\n .-0123456789aeflnrstux\\".to_vec()),
    ];
    proptest::collection::vec(byte, 0..max).prop_map(Bytes)
}

/// The numbers the decoders' arithmetic is most likely to trip on.
pub fn boundary_number(pick: u64) -> serde_json::Value {
    use serde_json::json;
    match pick % 14 {
        0 => json!(0),
        1 => json!(1),
        2 => json!(u64::MAX),
        3 => json!(u32::MAX),
        4 => json!(u64::from(u32::MAX) + 1),
        5 => json!(u64::MAX - 1),
        6 => json!(-1),
        7 => json!(i64::MIN),
        8 => json!(i64::MAX),
        9 => json!(0.5),
        10 => json!(1e308),
        11 => json!(u16::MAX),
        12 => json!(u64::MAX / 2),
        _ => json!(pick),
    }
}

/// Any boundary value: numbers, odd strings, and values of the wrong type.
pub fn boundary_value(pick: u64, text: &str) -> serde_json::Value {
    use serde_json::json;
    match pick % 12 {
        0..=4 => boundary_number(pick / 12),
        5 => json!(null),
        6 => json!(true),
        7 => json!([]),
        8 => json!({}),
        9 => json!(text),
        10 => json!(["", text, 0]),
        _ => json!(
            ["", "a b", "x.y", "*", ">", "\u{0}", "é😀", "-", "a=b"][(pick / 12 % 9) as usize]
        ),
    }
}

/// One structure-aware edit of a JSON value: `at` picks a node (in depth-first order), `kind` what to do to
/// it, `pick` and `text` the value put there.
#[derive(Clone, Debug)]
pub struct Edit {
    pub at: u32,
    pub kind: u8,
    pub pick: u64,
    pub text: String,
}

pub fn edit() -> impl Strategy<Value = Edit> {
    use proptest::prelude::*;
    (any::<u32>(), 0u8..8, any::<u64>(), "[ -~é\u{0}]{0,12}").prop_map(|(at, kind, pick, text)| {
        Edit {
            at,
            kind,
            pick,
            text,
        }
    })
}

fn count_nodes(v: &serde_json::Value) -> u32 {
    1 + match v {
        serde_json::Value::Array(a) => a.iter().map(count_nodes).sum(),
        serde_json::Value::Object(o) => o.values().map(count_nodes).sum(),
        _ => 0,
    }
}

fn node_mut(v: &mut serde_json::Value, mut i: u32) -> Option<&mut serde_json::Value> {
    fn walk<'a>(v: &'a mut serde_json::Value, i: &mut u32) -> Option<&'a mut serde_json::Value> {
        if *i == 0 {
            return Some(v);
        }
        *i -= 1;
        match v {
            serde_json::Value::Array(a) => a.iter_mut().find_map(|c| walk(c, i)),
            serde_json::Value::Object(o) => o.values_mut().find_map(|c| walk(c, i)),
            _ => None,
        }
    }
    walk(v, &mut i)
}

/// Replaces every number under `v` with a boundary number (rotating from `pick`).
fn boundary_numbers(v: &mut serde_json::Value, pick: &mut u64) {
    match v {
        serde_json::Value::Number(_) => {
            *v = boundary_number(*pick);
            *pick = pick.wrapping_add(1);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(|c| boundary_numbers(c, pick)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|c| boundary_numbers(c, pick)),
        _ => {}
    }
}

/// Applies one edit to `v`.
pub fn apply(v: &mut serde_json::Value, e: &Edit) {
    use serde_json::Value;
    let n = count_nodes(v);
    let Some(node) = node_mut(v, e.at % n) else {
        return;
    };
    match (e.kind, node) {
        // Favour numbers: every number of the node becomes a boundary number.
        (0 | 1, node) => boundary_numbers(node, &mut e.pick.clone()),
        (2, Value::Object(o)) if !o.is_empty() => {
            let key = o.keys().nth((e.pick % o.len() as u64) as usize).cloned();
            if let Some(key) = key {
                o.remove(&key);
            }
        }
        (2, Value::Array(a)) if !a.is_empty() => {
            a.remove((e.pick % a.len() as u64) as usize);
        }
        (3, Value::Object(o)) => {
            o.insert(e.text.clone(), boundary_value(e.pick, &e.text));
        }
        (3, Value::Array(a)) if !a.is_empty() => {
            let i = (e.pick % a.len() as u64) as usize;
            let copy = a[i].clone();
            a.insert(i, copy);
        }
        (4, Value::String(s)) => match e.pick % 4 {
            0 => *s = e.text.clone(),
            1 => s.push_str(&e.text),
            2 => s.truncate(
                s.char_indices()
                    .nth(e.pick as usize % 8)
                    .map_or(0, |(i, _)| i),
            ),
            _ => *s = s.repeat(1 + (e.pick as usize >> 2) % 64),
        },
        (_, node) => *node = boundary_value(e.pick, &e.text),
    }
}

/// One byte-level edit of encoded bytes: flip a bit, cut, insert or delete a byte.
pub fn byte_edit(bytes: &mut Vec<u8>, at: usize, kind: u8, byte: u8) {
    if bytes.is_empty() {
        bytes.push(byte);
        return;
    }
    let i = at % bytes.len();
    match kind % 4 {
        0 => bytes[i] ^= 1 << (byte % 8),
        1 => bytes.truncate(i),
        2 => bytes.insert(i, byte),
        _ => {
            bytes.remove(i);
        }
    }
}

/// Valid JSON documents mutated: structure-aware edits, then sometimes a byte-level edit of the encoding.
pub fn mutated_json(valid: Vec<serde_json::Value>) -> impl Strategy<Value = Bytes> {
    use proptest::prelude::*;
    (
        proptest::sample::select(valid),
        proptest::collection::vec(edit(), 0..4),
        proptest::option::weighted(0.3, (any::<usize>(), any::<u8>(), any::<u8>())),
    )
        .prop_map(|(mut v, edits, bytes)| {
            for e in &edits {
                apply(&mut v, e);
            }
            let mut out = serde_json::to_vec(&v).expect("a JSON value encodes");
            if let Some((at, kind, byte)) = bytes {
                byte_edit(&mut out, at, kind, byte);
            }
            Bytes(out)
        })
}

/// Text documents (TOML, command output) mutated line- and byte-wise: a line dropped, duplicated or replaced by
/// `text`, a number replaced by a boundary number, a byte edit.
pub fn mutated_text(valid: Vec<String>) -> impl Strategy<Value = String> {
    use proptest::prelude::*;
    (
        proptest::sample::select(valid),
        proptest::collection::vec(
            (any::<usize>(), 0u8..6, any::<u64>(), "[ -~é\t]{0,20}"),
            0..4,
        ),
    )
        .prop_map(|(text, edits)| {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            for (at, kind, pick, t) in edits {
                if lines.is_empty() {
                    lines.push(t);
                    continue;
                }
                let i = at % lines.len();
                match kind {
                    0 => {
                        lines.remove(i);
                    }
                    1 => lines.insert(i, lines[i].clone()),
                    2 => lines[i] = t,
                    3 => {
                        // A number in the line becomes a boundary number.
                        let digits: Vec<usize> = lines[i]
                            .match_indices(|c: char| c.is_ascii_digit())
                            .map(|(j, _)| j)
                            .collect();
                        if let Some(&j) = digits.get(pick as usize % digits.len().max(1)) {
                            let end = lines[i][j..]
                                .find(|c: char| !c.is_ascii_digit())
                                .map_or(lines[i].len(), |k| j + k);
                            let n = boundary_number(pick).to_string();
                            lines[i].replace_range(j..end, &n);
                        }
                    }
                    4 => {
                        let mut b = lines[i].clone().into_bytes();
                        byte_edit(&mut b, pick as usize, (pick >> 8) as u8, (pick >> 16) as u8);
                        lines[i] = String::from_utf8_lossy(&b).into_owned();
                    }
                    _ => lines[i].push_str(&t),
                }
            }
            let mut out = lines.join("\n");
            out.push('\n');
            out
        })
}
