//! Issue 14's "tried as a new user would": `scripts/walkthrough.sh` runs the
//! documented walk-through for real (a plan, an upgrade with a gate, an
//! aborted upgrade, a missing package refused at plan) and fails if any
//! command exits otherwise than the page shows. Here it runs against the
//! workspace's debug binaries, and the commands of the transcript it writes
//! must be exactly those of `docs/walkthrough.md`: the page cannot drift from
//! what works.

use std::process::Command;

fn commands(markdown: &str) -> Vec<&str> {
    markdown
        .lines()
        .filter_map(|line| line.strip_prefix("$ "))
        .collect()
}

#[test]
fn the_documented_walkthrough_runs_as_shown() {
    let root = tests::process::workspace_root();
    let bin_dir = tests::process::workspace_bin("baton")
        .parent()
        .expect("the binaries' folder")
        .to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("walkthrough.md");
    let run = Command::new("bash")
        .arg(root.join("scripts/walkthrough.sh"))
        .arg(&out)
        .env("BATON_BIN_DIR", &bin_dir)
        .output()
        .expect("running scripts/walkthrough.sh");
    assert!(
        run.status.success(),
        "the walk-through failed ({}):\n{}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let written = std::fs::read_to_string(&out).unwrap();
    let documented = std::fs::read_to_string(root.join("docs/walkthrough.md")).unwrap();
    assert!(commands(&written).len() >= 15, "{written}");
    assert_eq!(
        commands(&written),
        commands(&documented),
        "docs/walkthrough.md shows other commands than the walk-through runs: regenerate it with `bash scripts/walkthrough.sh`"
    );
    // What each part is there to show.
    for needle in [
        "WAITING_APPROVAL",
        "gate before-switchover approved by",
        "upgrade COMPLETED",
        "abort requested by",
        "maintenance window closed",
        "upgrade ABORTED",
        "Verdict: SAFE",
        "preflight refused",
        "Installs per node: backend-1 2, backend-2 1, backend-3 1",
        "audit verify: OK",
    ] {
        assert!(written.contains(needle), "{needle}\n{written}");
    }
}
