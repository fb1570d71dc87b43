//! Issue 14's exit codes and errors, as a table: every subcommand of the real
//! `baton` binary on its error paths (usage, a missing file, a malformed id,
//! an unknown upgrade, a refusal by the service, the service or NATS away, a
//! failed verification, an upgrade that ends halted or aborted) and on cheap
//! success paths. Each failing row is run twice: as text (one line, each
//! cause once, no Debug text) and under `--output json` (stderr is exactly
//! one JSON object, with the same exit code and the kind of its class).
//! The codes are the README's ("Exit codes:"); `readme_exit_codes_are_these`
//! pins the README to this table.

use std::path::Path;
use std::process::{Command, Output};

use tests::workspace_bin;

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

/// One row: the arguments, extra environment, the exit code, and a fragment
/// that stderr (a failure) or stdout (a success) must contain.
struct Case {
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    fragment: String,
}

fn case(args: &[&str], code: i32, fragment: &str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        env: Vec::new(),
        code,
        fragment: fragment.to_string(),
    }
}

impl Case {
    fn env(mut self, name: &str, value: &str) -> Case {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
}

/// The JSON error's `kind` for an exit code.
fn kinds(code: i32) -> &'static [&'static str] {
    match code {
        1 => &["infrastructure"],
        2 => &["usage"],
        3 => &["rejected", "not_found"],
        4 => &["upgrade_failed"],
        5 => &["verify_failed"],
        _ => &[],
    }
}

/// Runs every row with `base` (a `baton` command with its environment) and
/// returns every mismatch, so that one run shows them all.
fn check(base: &dyn Fn() -> Command, cases: &[Case]) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let run = |json: bool| -> Output {
            let mut cmd = base();
            if json {
                cmd.args(["--output", "json"]);
            }
            cmd.args(&case.args);
            for (name, value) in &case.env {
                cmd.env(name, value);
            }
            cmd.output().expect("baton runs")
        };
        let out = run(false);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let what = format!("baton {:?}", case.args);
        if out.status.code() != Some(case.code) {
            wrong.push(format!(
                "{what}: exit {:?}, want {}; stderr: {stderr}",
                out.status.code(),
                case.code
            ));
            continue;
        }
        if case.code == 0 {
            if !stdout.contains(&case.fragment) {
                wrong.push(format!(
                    "{what}: stdout lacks {:?}: {stdout}",
                    case.fragment
                ));
            }
            continue;
        }
        if !stderr.contains(&case.fragment) {
            wrong.push(format!(
                "{what}: stderr lacks {:?}: {stderr}",
                case.fragment
            ));
        }
        for debug in ["Some(", "None", "Os {", " { ", "kind: "] {
            if stderr.contains(debug) {
                wrong.push(format!("{what}: Debug text {debug:?} in {stderr}"));
            }
        }
        // Ours: one line. Clap's usage errors keep clap's layout (exit code 2):
        // the error and the usage, or the help when a subcommand is missing.
        let clap =
            case.code == 2 && (stderr.starts_with("error: ") || stderr.contains("Usage: baton"));
        let one_line =
            stderr.starts_with("baton: error: ") && stderr.trim_end().lines().count() == 1;
        if !(clap || one_line) {
            wrong.push(format!("{what}: not one `baton: error:` line: {stderr}"));
        }
        let out = run(true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(case.code) {
            wrong.push(format!(
                "{what} --output json: exit {:?}, want {}",
                out.status.code(),
                case.code
            ));
        }
        let value: serde_json::Value = match serde_json::from_str(stderr.trim()) {
            Ok(value) => value,
            Err(err) => {
                wrong.push(format!(
                    "{what} --output json: stderr is not one JSON object ({err}): {stderr}"
                ));
                continue;
            }
        };
        let error = &value["error"];
        let text = format!("{} {}", error["message"], error["causes"]);
        if error["exit_code"] != case.code
            || !kinds(case.code).contains(&error["kind"].as_str().unwrap_or_default())
            || !(error["hint"].is_null() || error["hint"].is_string())
            || !error["causes"].is_array()
        {
            wrong.push(format!("{what} --output json: {value}"));
        }
        // JSON escapes quotes; compare the fragment's words.
        if !case
            .fragment
            .split_whitespace()
            .all(|word| text.contains(word.trim_matches('"')))
        {
            wrong.push(format!(
                "{what} --output json: lacks {:?}: {value}",
                case.fragment
            ));
        }
    }
    wrong
}

/// A `baton` with no Baton setting from the test's own environment.
fn bare() -> Command {
    let mut cmd = Command::new(workspace_bin("baton"));
    for (name, _) in std::env::vars() {
        if name.starts_with("BATON_") {
            cmd.env_remove(&name);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// What needs no service: usage errors of every subcommand, missing files,
/// malformed ids and settings, NATS away; and the local successes.
#[test]
fn every_command_exits_as_the_readme_says_without_a_service() {
    let secure = tests::Secure::new(&["g1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = path(&dir.path().join("missing.toml"));
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(&cluster, "[cluster]\nname = \"c\"\n").unwrap();
    let cluster = path(&cluster);
    let id = "01KB0000000000000000000000";
    let key = path(secure.operator_key("alice"));
    let trust = path(&secure.trust_path);
    let new_key = path(&dir.path().join("new.seed"));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let empty = path(&empty);
    let keyed = |c: Case| {
        c.env("BATON_KEY", &key)
            .env("BATON_TRUST", &trust)
            .env("BATON_NATS_URL", "nats://127.0.0.1:1")
    };
    let cases = vec![
        // Usage errors (2), one or more per subcommand.
        case(&["server"], 2, "--db"),
        case(
            &["server", "--db", &path(dir.path())],
            2,
            "needs a signing key",
        ),
        case(&["executor", "--nodes", "a=b"], 2, "--group"),
        case(&["submit"], 2, "--cluster"),
        case(&["submit", "--cluster", &missing], 2, "no such file"),
        case(
            &["submit", "--cluster", &cluster, "--plan-hash", "garbage"],
            2,
            "is not a plan hash",
        ),
        case(&["plan", "--cluster", &missing], 2, "no such file"),
        case(&["profile", "check", &missing], 2, "cannot read"),
        case(
            &["profile", "check", &cluster],
            2,
            "this looks like a cluster file",
        ),
        case(
            &["profile", "check", &missing, "--run-here"],
            2,
            "--cluster",
        ),
        case(&["watch", "9999"], 2, "is not an upgrade id"),
        case(&["status", "x"], 2, "is not an upgrade id"),
        case(&["list", "--bogus"], 2, "--bogus"),
        case(&["list", "--status", "done"], 2, "done"),
        case(&["list", "--since", "yesterday"], 2, "RFC 3339"),
        case(&["executors", "extra"], 2, "extra"),
        case(&["pause", "x"], 2, "is not an upgrade id"),
        case(&["resume", "x"], 2, "is not an upgrade id"),
        case(&["abort", id], 2, "--reason"),
        case(&["approve", id, "typo"], 2, "before-switchover"),
        case(
            &["resolve", id, "one", "--as", "retry", "--why", "w"],
            2,
            "one",
        ),
        case(
            &["resolve", id, "1", "--as", "maybe", "--why", "w"],
            2,
            "maybe",
        ),
        case(&["replay", "x"], 2, "is not an upgrade id"),
        case(&["replay", id, "--file", &missing], 2, "no such file"),
        case(&["audit", "verify", "--file", &missing], 2, "no such file"),
        case(
            &["audit", "verify", "--anchor", &missing],
            2,
            "no such file",
        ),
        case(&["audit", "export", "x"], 2, "is not an upgrade id"),
        // A --db that holds no log is named, not opened: opening an empty
        // directory created a log there and verified it "OK (0 records)".
        case(&["audit", "verify", "--db", &missing], 2, "no log at"),
        case(&["audit", "verify", "--db", &empty], 2, "no log at"),
        case(&["replay", id, "--db", &empty], 2, "no log at"),
        case(
            &["report", "x", "--out", &missing],
            2,
            "is not an upgrade id",
        ),
        case(&["report", id], 2, "--out"),
        case(
            &["report", id, "--out", &missing, "--db", &empty],
            2,
            "no log at",
        ),
        case(
            &["report", id, "--out", &missing, "--file", &missing],
            2,
            "no such file",
        ),
        case(&["audit", "checkpoint", "export", "--bogus"], 2, "--bogus"),
        case(&["audit"], 2, "subcommand"),
        case(&["keys", "gen"], 2, "--out"),
        case(&["keys", "show", &missing], 2, "cannot read"),
        case(&["keys", "check", &missing], 2, "cannot read"),
        case(&["keys", "init", "--dir", &path(dir.path())], 2, "--groups"),
        case(&["completions", "tcsh"], 2, "tcsh"),
        case(&["man", "extra"], 2, "extra"),
        case(&["dev", "--nodes", "many"], 2, "many"),
        case(&["nosuch"], 2, "nosuch"),
        // Settings: no key, no trust file, a malformed NATS URL, a bad timeout.
        case(&["list"], 2, "needs a signing key").env("BATON_TRUST", &trust),
        case(&["list"], 2, "needs the trust file").env("BATON_KEY", &key),
        keyed(case(&["--nats", "bad://x", "list"], 2, "is not a NATS URL")),
        keyed(case(&["--api-timeout", "0", "list"], 2, "--api-timeout")),
        keyed(case(&["status", id], 2, "key file")).env("BATON_KEY", &missing),
        // NATS away (1), for the commands that call the service.
        keyed(case(&["list"], 1, "connecting to NATS")),
        keyed(case(&["executors"], 1, "connecting to NATS")),
        keyed(case(&["status", id], 1, "connecting to NATS")),
        keyed(case(
            &["submit", "--cluster", &cluster],
            1,
            "connecting to NATS",
        )),
        keyed(case(&["audit", "verify"], 1, "connecting to NATS")),
        // Local successes (0).
        case(&["completions", "bash"], 0, "_baton"),
        case(&["man"], 0, ".TH baton"),
        case(&["--version"], 0, "commit"),
        case(&["keys", "gen", "--out", &new_key], 0, "U"),
        case(&["keys", "show", &key], 0, "U"),
        case(&["keys", "check", &trust], 0, "alice"),
    ];
    let wrong = check(&bare, &cases);
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// What needs the service: rejections and unknown upgrades (3), a refused
/// plan and a halted or aborted upgrade (4), a failed verification (5), the
/// service away (1), and the successes of every command that calls it.
#[tokio::test(flavor = "multi_thread")]
async fn every_command_exits_as_the_readme_says_against_a_service() {
    let mut env = Env::start(Setup::default()).await;
    let dir = env.dir.path().to_path_buf();
    let cluster = path(&env.cluster_file);
    let text = std::fs::read_to_string(&env.cluster_file).unwrap();
    let write = |name: &str, text: &str| {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        path(&file)
    };
    let bad_toml = write("bad.toml", "[cluster\nname = ");
    let no_package = write(
        "no-package.toml",
        &text.replace("chef-backend_3.1.0-1", "missing/chef-backend_3.1.0-1"),
    );
    let unknown = "01KB0000000000000000000000";
    let rita = path(env.secure.operator_key("rita"));
    let page = path(&dir.join("report.html"));

    // A plan (0), then the upgrade that follows it, stopped at its gate.
    let out = env.baton_ok(&["plan", "--cluster", &cluster]);
    assert!(out.contains("--plan-hash"), "{out}");
    let rows = list_json(&env, &["--plans"]);
    let plan = rows
        .iter()
        .find(|r| r["kind"] == "plan")
        .and_then(|r| r["upgrade"].as_str())
        .unwrap_or_else(|| panic!("no plan run listed: {rows:?}"))
        .to_string();
    // Preflight refuses a plan (4) before anything changes.
    let wrong = check(
        &|| env.baton_cmd(),
        &[case(&["plan", "--cluster", &no_package], 4, "no plan")],
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;

    let cases = vec![
        // Rejected by the service (3).
        case(
            &["submit", "--cluster", &bad_toml, "--detach"],
            3,
            "bad.toml",
        ),
        case(&["plan", "--cluster", &bad_toml], 3, "bad.toml"),
        case(
            &["submit", "--cluster", &cluster, "--detach"],
            3,
            "in progress",
        ),
        case(
            &["submit", "--cluster", &cluster, "--detach"],
            3,
            "not allowed",
        )
        .env("BATON_KEY", &rita)
        .env("BATON_NATS_NKEY", &rita),
        case(
            &["resolve", &upgrade, "999", "--as", "retry", "--why", "w"],
            3,
            "999",
        ),
        case(&["pause", &plan, "--reason", "r"], 3, "planned"),
        case(&["resume", &plan], 3, "planned"),
        case(&["abort", &plan, "--reason", "r"], 3, "planned"),
        case(&["approve", &plan, "before-switchover"], 3, "planned"),
        // No such upgrade (3).
        case(&["status", unknown], 3, "no upgrade"),
        case(&["watch", unknown], 3, "no upgrade"),
        case(&["pause", unknown], 3, "no upgrade"),
        case(&["resume", unknown], 3, "no upgrade"),
        case(&["abort", unknown, "--reason", "r"], 3, "no upgrade"),
        case(&["approve", unknown, "before-switchover"], 3, "no upgrade"),
        case(
            &["resolve", unknown, "1", "--as", "retry", "--why", "w"],
            3,
            "no upgrade",
        ),
        case(&["replay", unknown], 3, "no upgrade"),
        case(&["audit", "export", unknown], 3, "no upgrade"),
        case(&["report", unknown, "--out", &page], 3, "no upgrade"),
        // Successes (0).
        case(&["status", &plan], 0, "PLANNED"),
        case(&["watch", &plan], 0, "PLANNED"),
        case(&["list"], 0, &upgrade),
        case(&["list", "--plans"], 0, "PLAN RUN"),
        case(
            &["list", "--status", "waiting_approval", "--since", "1h"],
            0,
            &upgrade,
        ),
        case(&["executors"], 0, "HEARTBEAT"),
        case(&["replay", &plan], 0, "state after event"),
        case(
            &["replay", &plan, "--verify"],
            0,
            "exactly the recorded decisions",
        ),
        case(&["audit", "verify"], 0, "audit verify: OK"),
        case(&["audit", "checkpoint", "export"], 0, ""),
        case(&["report", &plan, "--out", &page], 0, "written to"),
        case(&["pause", &upgrade, "--reason", "r"], 0, "PAUSED"),
        case(&["resume", &upgrade], 0, &upgrade),
    ];
    let wrong = check(&|| env.baton_cmd(), &cases);
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Success output is for people too: no Debug text.
    let audit = env.baton_ok(&["audit", "verify"]);
    assert!(
        !audit.contains("VerifyReport") && !audit.contains(" { "),
        "{audit}"
    );

    // The history's rows are bounded (no plan, no nodes), say who and when,
    // and are filtered by the service; executors say version and heartbeat.
    let rows = list_json(&env, &[]);
    assert_eq!(rows.len(), 1, "plan runs are kept apart: {rows:?}");
    let row = rows[0].as_object().unwrap();
    assert_eq!(row["upgrade"], upgrade.as_str());
    assert_eq!(row["requested_by"], "alice", "{row:?}");
    assert!(
        row["started_ms"].is_u64() && row["ended_ms"].is_null(),
        "{row:?}"
    );
    assert!(
        !row.contains_key("plan") && !row.contains_key("nodes"),
        "{row:?}"
    );
    assert!(list_json(&env, &["--cluster", "other"]).is_empty());
    assert!(list_json(&env, &["--status", "completed"]).is_empty());
    let executors: Vec<serde_json::Value> =
        serde_json::from_str(&env.baton_ok(&["--output", "json", "executors"])).unwrap();
    for node in &env.nodes {
        let executor = executors
            .iter()
            .find(|e| e["group"] == node.as_str())
            .unwrap_or_else(|| panic!("no executor of {node}: {executors:?}"));
        assert_eq!(executor["nodes"][0], node.as_str(), "{executor}");
        assert!(
            executor["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{executor}"
        );
        assert!(
            executor["heartbeat_age_ms"]
                .as_u64()
                .is_some_and(|age| age < 60_000),
            "{executor}"
        );
    }

    // An upgrade that ends halted or aborted (4): `watch` of the refused
    // plan, then the upgrade aborted at its gate.
    let refused = list_json(&env, &["--plans", "--status", "halted"]);
    let refused = refused
        .first()
        .and_then(|r| r["upgrade"].as_str())
        .unwrap_or_else(|| panic!("the refused plan is not listed as halted"))
        .to_string();
    env.baton_ok(&["abort", &upgrade, "--reason", "exit-code test"]);
    env.wait_status(&upgrade, &["aborted"], UPGRADE_TIMEOUT)
        .await;
    let ended = vec![
        case(&["watch", &refused], 4, "halted"),
        case(&["watch", &upgrade], 4, "aborted"),
        case(&["list", "--status", "aborted"], 0, &upgrade),
    ];
    let rows = list_json(&env, &["--since", "1h"]);
    assert!(
        rows.iter()
            .any(|r| r["upgrade"] == upgrade.as_str() && r["ended_ms"].is_u64()),
        "{rows:?}"
    );
    let wrong = check(&|| env.baton_cmd(), &ended);
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // A tampered export does not verify (5); the untouched one does (0).
    let export = dir.join("export.jsonl");
    env.baton_ok(&["audit", "export", &upgrade, "--out", &path(&export)]);
    let good = std::fs::read_to_string(&export).unwrap();
    let tampered = write(
        "tampered.jsonl",
        &good.replacen("exit-code test", "exit-code TEST", 1),
    );
    assert_ne!(good, std::fs::read_to_string(&tampered).unwrap());
    let verify = vec![
        case(&["audit", "verify", "--file", &path(&export)], 0, "OK"),
        case(&["audit", "verify", "--file", &tampered], 5, ""),
        case(
            &["replay", &upgrade, "--file", &tampered, "--verify"],
            5,
            "",
        ),
    ];
    let wrong = check(&|| env.baton_cmd(), &verify);
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The service away, NATS up (1).
    if let Some(mut server) = env.server.take() {
        server.kill();
    }
    let away = vec![
        case(&["--api-timeout", "2", "list"], 1, "baton server"),
        case(
            &["--api-timeout", "2", "status", &upgrade],
            1,
            "baton server",
        ),
        case(&["--api-timeout", "2", "executors"], 1, "baton server"),
    ];
    let wrong = check(&|| env.baton_cmd(), &away);
    assert!(
        wrong.is_empty(),
        "{} mismatches:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

fn list_json(env: &Env, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["--output", "json", "list"];
    all.extend_from_slice(args);
    serde_json::from_str(&env.baton_ok(&all)).unwrap()
}

/// The README's "Exit codes:" line names each code this table checks.
#[test]
fn readme_exit_codes_are_these() {
    let readme = std::fs::read_to_string(tests::workspace_root().join("README.md")).unwrap();
    let line = readme
        .split("\n\n")
        .find(|p| p.starts_with("Exit codes:"))
        .expect("the README has an `Exit codes:` paragraph")
        .replace('\n', " ");
    for needle in [
        "0 success",
        "1 failure",
        "2 usage error",
        "malformed upgrade id",
        "3 the service rejected",
        "no such upgrade",
        "4 the upgrade ended halted or aborted",
        "5 verification failed",
        "--output json",
    ] {
        assert!(
            line.contains(needle),
            "README exit codes lack {needle:?}: {line}"
        );
    }
}
