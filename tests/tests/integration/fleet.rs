//! The fleet benchmark's core (`tests::fleet`, run by `cargo bench -p tests
//! --bench fleet`) at N = 2 with zero-time commands, so the benchmark cannot
//! rot: both upgrades complete, both simulator verdicts are SAFE, and the
//! figures it reports are there.

use tests::fleet::{self, Bins, Timings};

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_bench_upgrades_two_clusters_at_once_safely() {
    let bins = Bins::beside_current_exe().expect("the workspace's binaries are built");
    let outcome = fleet::run(&bins, 2, Timings::Zero)
        .await
        .expect("the fleet runs");
    assert_eq!(outcome.ends.len(), 2);
    for end in &outcome.ends {
        assert_eq!(end.status, "completed", "{end:#?}");
        assert_eq!(end.verdict, "SAFE", "{end:#?}");
    }
    assert_ne!(outcome.ends[0].upgrade, outcome.ends[1].upgrade);
    // Every step's result is in the log, and each executor reported its run time.
    assert!(outcome.steps >= 2 * 3, "{outcome:#?}");
    assert!(outcome.events > outcome.steps, "{outcome:#?}");
    assert_eq!(outcome.steps_untimed, 0, "{outcome:#?}");
    assert_eq!(outcome.overhead_ms.len(), outcome.steps);
    assert_eq!(outcome.executor_count, 6);
    assert!(
        outcome.service.rss_kb > 0 && outcome.executors.rss_kb > 0,
        "{outcome:#?}"
    );
    assert!(outcome.wall_ms > 0, "{outcome:#?}");
}
