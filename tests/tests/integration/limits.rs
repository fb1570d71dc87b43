//! Issue 12's bounded inputs, against a running deployment: an oversized
//! request, an oversized cluster file and a huge timeout are refused with an
//! error naming the limit; finished plans are kept out of `list` unless asked;
//! and the upgrade in progress is unharmed throughout.

use super::e2e::{Env, Setup, UPGRADE_TIMEOUT};

#[tokio::test(flavor = "multi_thread")]
async fn inputs_over_their_limits_are_refused_by_name_and_the_upgrade_goes_on() {
    let env = Env::start(Setup::default()).await;
    let upgrade = env.submit(&["--approve-before", "before-switchover"]);
    let cluster = std::fs::read_to_string(&env.cluster_file).unwrap();
    let write = |name: &str, text: String| {
        let path = env.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let cases = [
        (
            write(
                "huge.toml",
                format!("{cluster}\n# {}\n", "x".repeat(300 * 1024)),
            ),
            "the limit is 262144 bytes",
        ),
        (
            write(
                "big.toml",
                format!("{cluster}\n# {}\n", "x".repeat(100 * 1024)),
            ),
            "a cluster file may have at most 65536",
        ),
        (
            write(
                "slow.toml",
                cluster.replace(
                    "sync_timeout_ms = 60000",
                    "sync_timeout_ms = 18446744073709551615",
                ),
            ),
            "upgrade.sync_timeout_ms: must be at most 604800000",
        ),
    ];
    for (file, needle) in &cases {
        let out = env.baton(&["plan", "--cluster", file]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: {stderr}");
    }

    // The upgrade is where it was, and goes on.
    env.wait_status(&upgrade, &["waiting_approval"], UPGRADE_TIMEOUT)
        .await;
    env.baton_ok(&["approve", &upgrade, "before-switchover"]);
    env.expect_completed_safely(&upgrade).await;

    // A finished plan is kept out of `list` unless asked for.
    let out = env.baton_ok(&["plan", "--cluster", &env.cluster_file.display().to_string()]);
    assert!(!out.is_empty());
    let list = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["--output", "json", "list"];
        all.extend_from_slice(args);
        let out = env.baton_ok(&all);
        let views: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        views
            .iter()
            .map(|v| v["status"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(list(&[]), vec!["completed"]);
    let with_plans = list(&["--plans"]);
    assert_eq!(with_plans.len(), 2, "{with_plans:?}");
    assert!(
        with_plans.contains(&"planned".to_string()),
        "{with_plans:?}"
    );
}
