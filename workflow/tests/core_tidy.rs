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

fn offences_of(text: &str, forbidden: &[(&'static str, &'static str)]) -> Vec<String> {
    findings(text, forbidden, &[])
        .into_iter()
        .map(|f| f.to_string())
        .collect()
}

/// One name found on one line of code.
struct Finding {
    /// 1-based.
    line: usize,
    /// The line, trimmed.
    code: String,
    word: &'static str,
    why: &'static str,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}: `{}` ({}): {}",
            self.line, self.word, self.why, self.code
        )
    }
}

/// The names of `forbidden` (whole identifiers; a name with a `-` anywhere) and the `stems` (anywhere, in any
/// case) on the lines of code of `text`, up to its test module.
fn findings(
    text: &str,
    forbidden: &[(&'static str, &'static str)],
    stems: &[(&'static str, &'static str)],
) -> Vec<Finding> {
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
        let lower = code.to_ascii_lowercase();
        let hits = forbidden
            .iter()
            .filter(|(word, _)| mentions(code, word) || (word.contains('-') && code.contains(word)))
            .chain(stems.iter().filter(|(stem, _)| lower.contains(stem)));
        for (word, why) in hits {
            found.push(Finding {
                line: n + 1,
                code: line.trim().to_string(),
                word,
                why,
            });
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

/// Names of one system (chef-backend: its tool, its services, its tables) that the core outside the system's own
/// directory must not use: every safety rule is stated on the abstract observations (`core::observe`), so that it
/// holds for every profile, and the rest of the core reaches a built-in system only through the `builtin` seam.
const SYSTEM_NAMES: &[(&str, &str)] = &[
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
    (
        "parse_status",
        "chef-backend's reader: `builtin::read_probe`",
    ),
    (
        "parse_cluster_status",
        "chef-backend's reader: `builtin::read_probe`",
    ),
    ("Role", "chef-backend's leaderl role: read `MemberRole`"),
    ("dpkg", "a package tool belongs to the profile"),
];

/// Stems matched anywhere in code, in any case: `chef` is the system's name in every spelling, its module
/// (`chef_backend`, so a path, a glob import or an alias into its directory), `CHEF_BACKEND_PROFILE`,
/// `Profile::chef_backend` and the string "chef-backend" alike.
const SYSTEM_STEMS: &[(&str, &str)] = &[(
    "chef",
    "chef-backend's own code is reached through the `builtin` seam, by name",
)];

/// The directories, under `src/core`, that are one system's own: the only places its names may appear.
const SYSTEM_DIRS: &[&str] = &["builtin/chef_backend/"];

/// Every line outside the systems' directories that may still name a system: (file under `src/core`, the exact
/// line, why). Each must still be there (a stale exception fails the test), and none may be in a rule module.
const PERMITTED: &[(&str, &str, &str)] = &[
    (
        "builtin/mod.rs",
        "pub mod chef_backend;",
        "the seam declares the built-in system's directory",
    ),
    (
        "builtin/mod.rs",
        "pub use chef_backend::{Installer, RecordedFailover, RecordedNodeStatus, RecordedTopology};",
        "the seam names, for the rest of the core, the cluster file's package-tool variant (`upgrade.installer`) \
         and the payloads of the three observations recorded logs hold (`Observation::ClusterStatus`, \
         `NodeStatus`, `Failover`): the log keeps chef-backend's tables, so their serialized shape stays",
    ),
    (
        "builtin/mod.rs",
        "const BUILTINS: [&Builtin; 1] = [&chef_backend::BUILTIN];",
        "the seam's registry: the one place the rest of the core reaches chef-backend's code, by name",
    ),
];

/// The modules where the rules live: no exception may be in one.
const RULE_MODULES: &[&str] = &[
    "decide.rs",
    "guard.rs",
    "health.rs",
    "state.rs",
    "plan.rs",
    "observe.rs",
    "observed.rs",
];

fn core_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core")
}

/// Every `.rs` file of the core: (path under `src/core` with `/`, text).
fn core_sources() -> Vec<(String, String)> {
    let dir = core_dir();
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    files.sort();
    files
        .iter()
        .map(|file| {
            let rel = file.strip_prefix(&dir).expect("under the core");
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(file).expect("core source is readable");
            (rel, text)
        })
        .collect()
}

/// What the system scan finds in `sources` outside the systems' directories and not permitted, and the
/// permitted lines no longer there.
fn system_report(sources: &[(String, String)]) -> Vec<String> {
    let mut report = Vec::new();
    let mut used = vec![false; PERMITTED.len()];
    for (rel, text) in sources {
        if SYSTEM_DIRS.iter().any(|d| rel.starts_with(d)) {
            continue;
        }
        for f in findings(text, SYSTEM_NAMES, SYSTEM_STEMS) {
            let permitted = PERMITTED
                .iter()
                .position(|(file, line, _)| file == rel && *line == f.code);
            match permitted {
                Some(i) => used[i] = true,
                None => report.push(format!("{rel}: {f}")),
            }
        }
    }
    for ((file, line, _), used) in PERMITTED.iter().zip(used) {
        if !used {
            report.push(format!(
                "{file}: the permitted line `{line}` is gone: drop it from PERMITTED"
            ));
        }
    }
    report
}

#[test]
fn the_core_names_no_system_outside_its_directory() {
    let sources = core_sources();
    let has = |rel: &str| sources.iter().any(|(r, _)| r == rel);
    // The scan covers the rules, the seam and the neutral modules, and skips a directory that is there.
    for rel in RULE_MODULES.iter().chain(&[
        "mod.rs",
        "event.rs",
        "profile.rs",
        "profile_file.rs",
        "cluster.rs",
        "version.rs",
        "builtin/mod.rs",
        "builtin/chef_backend/reader.rs",
        "builtin/chef_backend/profile.rs",
    ]) {
        assert!(has(rel), "expected src/core/{rel}");
    }
    let report = system_report(&sources);
    assert!(
        report.is_empty(),
        "outside its directory (src/core/{}), the core reaches a system only through the `builtin` seam and \
         its rules read the abstract observations only (core::observe):\n{}",
        SYSTEM_DIRS.join(", src/core/"),
        report.join("\n")
    );
}

#[test]
fn the_permitted_lines_are_outside_the_rules() {
    for (file, line, why) in PERMITTED {
        assert!(
            !RULE_MODULES.contains(file),
            "{file}: `{line}` ({why}): a rule module names no system"
        );
        assert!(!why.is_empty() && !line.is_empty());
    }
}

#[test]
fn the_system_scan_catches_what_it_looks_for() {
    let offences_of = |text: &str| {
        findings(text, SYSTEM_NAMES, SYSTEM_STEMS)
            .into_iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
    };
    // "chef-backend" as a name, and the stem.
    assert_eq!(
        offences_of(r#"if cluster.profile != "chef-backend" {"#).len(),
        2
    );
    assert_eq!(offences_of("for name in KNOWN_SERVICES {").len(), 1);
    assert_eq!(offences_of("m.role == Role::Leader").len(), 1);
    assert!(offences_of("m.role == MemberRole::Leader").is_empty());
    assert!(offences_of("// etcd keeps a majority").is_empty());
    assert!(offences_of("let x = 1; // etcd keeps a majority").is_empty());
    // A test-only item before the code does not end the scan: only the test module does.
    assert_eq!(
        offences_of("#[cfg(test)]\nuse super::x;\nfor name in KNOWN_SERVICES {").len(),
        1
    );
    assert!(offences_of("#[cfg(test)]\nmod tests {\nfor name in KNOWN_SERVICES {").is_empty());
    // `//` inside a string literal does not start a comment.
    assert_eq!(
        offences_of(r#"let s = format!("a //{}", KNOWN_SERVICES.len());"#).len(),
        1
    );
    assert_eq!(offences_of(r#"p.push("etcd: down".into());"#).len(), 1);
    // Reaching chef-backend's code around the seam: a path, a glob import, an alias, its profile, in any case.
    for line in [
        "use super::builtin::chef_backend::reader;",
        "use super::builtin::chef_backend::*;",
        "use super::builtin::chef_backend as b;",
        "let p = Profile::chef_backend(i, p);",
        "let t = CHEF_BACKEND_PROFILE;",
    ] {
        assert_eq!(offences_of(line).len(), 1, "{line}");
    }
    // Through the seam, by name: nothing to report.
    assert!(offences_of("use super::builtin::{self, Installer};").is_empty());
    assert!(offences_of("let o = builtin::read_probe(&profile.name, a, o, out, err);").is_empty());
    assert!(offences_of("use super::version::version_key;").is_empty());
}

#[test]
fn the_system_scan_fails_on_a_name_planted_in_a_neutral_file() {
    let sources = core_sources();
    assert!(system_report(&sources).is_empty());
    let planted = |rel: &str, edit: &dyn Fn(&str) -> String| -> Vec<String> {
        let mut changed = sources.clone();
        let (_, text) = changed
            .iter_mut()
            .find(|(r, _)| r == rel)
            .unwrap_or_else(|| panic!("src/core/{rel}"));
        *text = edit(text);
        system_report(&changed)
    };
    let prepend = |line: &'static str| move |text: &str| format!("{line}\n{text}");
    // A neutral module that imports chef-backend's reader, or names its tables, fails.
    for rel in [
        "profile.rs",
        "event.rs",
        "version.rs",
        "mod.rs",
        "decide.rs",
    ] {
        let report = planted(
            rel,
            &prepend("use super::builtin::chef_backend::reader::StatusReport;"),
        );
        assert_eq!(report.len(), 2, "{rel}: {report:?}");
        assert!(report.iter().all(|r| r.starts_with(rel)), "{report:?}");
    }
    // A permitted line is permitted in its own file only.
    let report = planted("cluster.rs", &prepend("pub mod chef_backend;"));
    assert_eq!(report.len(), 1, "{report:?}");
    // A second registry line in the seam is not the permitted one.
    let report = planted(
        "builtin/mod.rs",
        &prepend("const MORE: [&Builtin; 1] = [&chef_backend::BUILTIN];"),
    );
    assert_eq!(report.len(), 1, "{report:?}");
    // A permitted line that is gone is reported, so the exceptions stay exactly what the code needs.
    let report = planted("builtin/mod.rs", &|text: &str| {
        text.replace("pub mod chef_backend;", "pub mod elsewhere;")
    });
    assert_eq!(report.len(), 1, "{report:?}");
    assert!(report[0].contains("is gone"), "{report:?}");
    // chef-backend's own directory may name it.
    let report = planted(
        "builtin/chef_backend/reader.rs",
        &prepend("use super::reader::StatusReport; // chef-backend"),
    );
    assert!(report.is_empty(), "{report:?}");
}
