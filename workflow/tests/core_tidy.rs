//! Tidy: the workflow core stays pure. Its source must not use I/O crates, the clock or randomness, so that
//! `decide` is a function of its inputs and `replay --verify` can re-derive every decision.

use std::path::{Path, PathBuf};

/// Names that would make the core impure, with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime / I/O"),
    ("async_nats", "NATS I/O"),
    ("sled", "storage I/O"),
    ("SystemTime", "reads the clock"),
    ("Instant::now", "reads the clock"),
    ("Instant", "reads the clock"),
    ("rand", "randomness"),
    ("getrandom", "randomness"),
    ("thread_rng", "randomness"),
    ("RandomState", "randomly seeded hashing (iteration order)"),
    ("HashMap", "iteration order depends on a random seed"),
    ("HashSet", "iteration order depends on a random seed"),
    ("std::fs", "file I/O"),
    ("std::net", "network I/O"),
    ("std::process", "spawns processes"),
    ("std::env", "reads the environment"),
    ("std::thread", "threads and sleeping"),
    ("println", "libraries never print"),
    ("eprintln", "libraries never print"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("core directory is readable") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `code` without a trailing `//` comment; a `//` inside a string literal (`"a //{}"`) is code.
fn without_comment(code: &str) -> &str {
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in code.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            '/' if !in_string && code[i..].starts_with("//") => return &code[..i],
            _ => {}
        }
    }
    code
}

/// Whether `word` occurs in `line` as a whole identifier path (not inside a longer identifier).
fn mentions(line: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut start = 0;
    while let Some(pos) = line[start..].find(word) {
        let at = start + pos;
        let before = line[..at].chars().last();
        let after = line[at + word.len()..].chars().next();
        if !before.is_some_and(ident) && !after.is_some_and(ident) {
            return true;
        }
        start = at + word.len();
    }
    false
}

fn offences(text: &str) -> Vec<String> {
    offences_of(text, FORBIDDEN)
}

fn offences_of(text: &str, forbidden: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (n, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        // Comments may name what the core avoids; only code counts.
        if code.starts_with("//") {
            continue;
        }
        let code = without_comment(code);
        // Tests may use a system's real output as data: the scan ends at the test module, not at any
        // test-only item (a `#[cfg(test)] use` early in a file would otherwise hide the rest of it).
        if code.starts_with("#[cfg(test)]")
            && lines[n + 1..]
                .iter()
                .map(|l| l.trim_start())
                .find(|l| !l.is_empty())
                .is_some_and(|l| l.starts_with("mod ") || l.starts_with("pub mod "))
        {
            break;
        }
        for (word, why) in forbidden {
            if mentions(code, word) || (word.contains('-') && code.contains(word)) {
                found.push(format!("line {}: `{word}` ({why}): {}", n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn core_uses_no_io_clock_or_randomness() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    assert!(
        files.len() >= 5,
        "expected the core's modules under {}",
        dir.display()
    );
    let mut report = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("core source is readable");
        for o in offences(&text) {
            report.push(format!("{}: {o}", file.display()));
        }
    }
    assert!(
        report.is_empty(),
        "the core must stay pure:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_scan_catches_what_it_looks_for() {
    // The check itself must be able to fail.
    assert_eq!(offences("use tokio::time;").len(), 1);
    assert_eq!(offences("let t = std::time::SystemTime::now();").len(), 1);
    assert_eq!(offences("let t = Instant::now();").len(), 2);
    assert_eq!(offences("let x: u8 = rand::random();").len(), 1);
    assert_eq!(offences("use async_nats::Client;").len(), 1);
    assert_eq!(offences("let db = sled::open(p);").len(), 1);
    assert!(offences("// tokio is not used here").is_empty());
    assert!(offences("let operand = brand_new;").is_empty());
}

#[test]
fn core_builds_without_io_dependencies() {
    // The crate's pure build must not pull the service's I/O crates in as non-optional dependencies.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("manifest");
    let mut in_deps = false;
    for line in manifest.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_deps = t == "[dependencies]";
            continue;
        }
        if !in_deps || t.is_empty() || t.starts_with('#') {
            continue;
        }
        for io in ["tokio", "tokio-util", "async-nats", "sled", "store", "rand"] {
            if t.starts_with(&format!("{io} "))
                || t.starts_with(&format!("{io}."))
                || t.starts_with(&format!("{io}="))
            {
                assert!(
                    t.contains("optional = true"),
                    "`{t}` must be optional (service feature only)"
                );
            }
        }
    }
}

/// Names of one system (chef-backend: its tool, its services, its tables) that the rules must not use: every
/// safety rule is stated on the abstract observations (`core::observe`), so that it holds for every profile.
const SYSTEM_NAMES: &[(&str, &str)] = &[
    (
        "chef",
        "the system's name belongs to its profile and reader",
    ),
    (
        "chef-backend",
        "the system's name belongs to its profile and reader",
    ),
    (
        "chef-backend-ctl",
        "the system's tool belongs to its profile",
    ),
    ("leaderl", "a chef-backend service"),
    ("etcd", "a chef-backend service"),
    ("postgresql", "a chef-backend service"),
    ("elasticsearch", "a chef-backend service"),
    ("KNOWN_SERVICES", "chef-backend's service list"),
    (
        "StatusReport",
        "chef-backend's `status` table: read `NodeHealth`",
    ),
    (
        "ClusterMember",
        "chef-backend's `cluster-status` row: read `Topology`",
    ),
    (
        "Distributed",
        "chef-backend's status column: read `NodeHealth`",
    ),
    (
        "ServiceState",
        "chef-backend's service column: read `NodeHealth`",
    ),
    ("parse_status", "chef-backend's reader: `parse::read_probe`"),
    (
        "parse_cluster_status",
        "chef-backend's reader: `parse::read_probe`",
    ),
    ("Role", "chef-backend's leaderl role: read `MemberRole`"),
    ("dpkg", "a package tool belongs to the profile"),
    (
        "parse::*",
        "a glob import of chef-backend's reader brings its names in unnamed: import items by name",
    ),
    (
        "parse as",
        "an alias of chef-backend's reader hides which of its items a rule uses",
    ),
];

/// The modules where the rules live. The readers and profiles of systems (`parse.rs`: chef-backend's
/// built-in reader; `profile.rs`: its built-in profile; `profile_file.rs`: profile files), the cluster file
/// (which names a profile) and the event types (which keep chef-backend's recorded observations readable) are
/// where system names belong.
const RULE_MODULES: &[&str] = &[
    "decide.rs",
    "guard.rs",
    "health.rs",
    "state.rs",
    "plan.rs",
    "observe.rs",
    "observed.rs",
];

#[test]
fn the_rules_name_no_system() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut report = Vec::new();
    for name in RULE_MODULES {
        let file = dir.join(name);
        let text = std::fs::read_to_string(&file).expect("core source is readable");
        for o in offences_of(&text, SYSTEM_NAMES) {
            report.push(format!("{}: {o}", file.display()));
        }
    }
    assert!(
        report.is_empty(),
        "the core's rules must read the abstract observations only (core::observe), never one system:\n{}",
        report.join("\n")
    );
}

#[test]
fn the_system_scan_catches_what_it_looks_for() {
    assert_eq!(
        offences_of(r#"if cluster.profile != "chef-backend" {"#, SYSTEM_NAMES).len(),
        2
    );
    assert_eq!(
        offences_of("for name in KNOWN_SERVICES {", SYSTEM_NAMES).len(),
        1
    );
    assert_eq!(offences_of("m.role == Role::Leader", SYSTEM_NAMES).len(), 1);
    assert!(offences_of("m.role == MemberRole::Leader", SYSTEM_NAMES).is_empty());
    assert!(offences_of("// etcd keeps a majority", SYSTEM_NAMES).is_empty());
    assert!(offences_of("let x = 1; // etcd keeps a majority", SYSTEM_NAMES).is_empty());
    // A test-only item before the code does not end the scan: only the test module does.
    assert_eq!(
        offences_of(
            "#[cfg(test)]\nuse super::x;\nfor name in KNOWN_SERVICES {",
            SYSTEM_NAMES
        )
        .len(),
        1
    );
    assert!(offences_of(
        "#[cfg(test)]\nmod tests {\nfor name in KNOWN_SERVICES {",
        SYSTEM_NAMES
    )
    .is_empty());
    // `//` inside a string literal does not start a comment.
    assert_eq!(
        offences_of(
            r#"let s = format!("a //{}", KNOWN_SERVICES.len());"#,
            SYSTEM_NAMES
        )
        .len(),
        1
    );
    assert_eq!(
        offences_of(r#"p.push("etcd: down".into());"#, SYSTEM_NAMES).len(),
        1
    );
    // Reaching chef-backend's reader around the names: a glob import or an alias.
    assert_eq!(offences_of("use super::parse::*;", SYSTEM_NAMES).len(), 1);
    assert_eq!(offences_of("use super::parse as p;", SYSTEM_NAMES).len(), 1);
    assert!(offences_of("use super::parse::{version_key};", SYSTEM_NAMES).is_empty());
}
