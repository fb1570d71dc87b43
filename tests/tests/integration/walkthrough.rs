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
        "(install), exit 0",
        "is in service (healthy and synced)",
        "audit verify: OK",
    ] {
        assert!(written.contains(needle), "{needle}\n{written}");
    }
    // Three installs by the completed upgrade, one by the aborted one, none by the refused plan: the
    // simulator's count after part 3.
    let installs = written
        .lines()
        .rfind(|l| l.starts_with("Installs per node:"))
        .expect("the simulator's install count");
    let total: u32 = installs
        .split(',')
        .filter_map(|part| part.split_whitespace().last()?.parse::<u32>().ok())
        .sum();
    assert_eq!(total, 4, "{installs}");
}
