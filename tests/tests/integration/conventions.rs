//! Issue 14's conventions, run as an operator runs them: `--version` names the
//! commit, completions and the man page come from the CLI definition, and the
//! services can log JSON lines for a collector.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use tests::workspace_bin;

fn baton(args: &[&str]) -> String {
    let out = Command::new(workspace_bin("baton"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baton {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_completions_and_man_page_come_from_the_cli_itself() {
    let version = baton(&["--version"]);
    assert!(
        version.starts_with("baton 0.") && version.contains("(commit "),
        "{version}"
    );
    let bash = baton(&["completions", "bash"]);
    assert!(
        bash.contains("complete -F _baton") && bash.contains("approve"),
        "{bash}"
    );
    for shell in ["zsh", "fish"] {
        let text = baton(&["completions", shell]);
        assert!(
            text.contains("submit") && text.contains("plan-hash"),
            "{shell}: {text}"
        );
    }
    let man = baton(&["man"]);
    assert!(
        man.contains(".TH baton 1") && man.contains("submit"),
        "{man}"
    );
    // A reader that stops early is not an error.
    let mut child = Command::new(workspace_bin("baton"))
        .args(["completions", "zsh"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_server_logs_json_lines_when_asked() {
    let secure = tests::Secure::new(&["g1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(workspace_bin("baton"));
    // A port nothing listens on: the server logs that it retries.
    cmd.args(["--log-format", "json", "server", "--db"])
        .arg(dir.path().join("db"))
        .env("BATON_NATS_URL", "nats://127.0.0.1:1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (name, value) in secure.env_signing_only(&secure.service_key) {
        cmd.env(name, value);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let value: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(
        value["level"].is_string() && value["fields"].is_object(),
        "{line}"
    );
}

/// A reader that stopped early (`baton ... | head`) ends a command quietly
/// with success, not with a panic: here stdout is a pipe whose reader is
/// already gone, so the first write fails with EPIPE.
#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("op.seed");
    let key = key.to_str().unwrap();
    let out = Command::new(workspace_bin("baton"))
        .args(["keys", "gen", "--out", key])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    let out = Command::new(workspace_bin("baton"))
        .args(["keys", "show", key])
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// A usage error is one line on stderr, like every other error, with the
/// command to run next; a bare group command still shows its help.
#[test]
fn a_usage_error_is_one_line_with_the_next_command() {
    for (args, needle) in [
        (
            &["plan", "--clusterr", "x"][..],
            "a similar argument exists: '--cluster'",
        ),
        (&["frobnicate"][..], "unrecognized subcommand 'frobnicate'"),
    ] {
        let out = Command::new(workspace_bin("baton"))
            .args(args)
            .env_remove("BATON_OUTPUT")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("; next: baton"),
            "{args:?}: {stderr}"
        );
    }
    let out = Command::new(workspace_bin("baton"))
        .arg("audit")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: baton audit"));
}
