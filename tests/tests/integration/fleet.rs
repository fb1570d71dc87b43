//! The fleet benchmark's core (`tests::fleet`, run by `cargo bench -p tests
//! --bench fleet`) at N = 2 with zero-time commands, so the benchmark cannot
//! rot: both upgrades complete, both simulator verdicts are SAFE, and the
//! figures it reports are there.

use tests::fleet::{self, Bins, Executors, Timings};

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_bench_upgrades_two_clusters_at_once_safely() {
    let bins = Bins::beside_current_exe().expect("the workspace's binaries are built");
    let outcome = fleet::run(&bins, 2, Timings::Zero, Executors::PerNode)
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

/// One `baton executor` process serves all six nodes of two simulated
/// clusters (six groups: the first by flags, five `serve` entries of its
/// config file, each with its own key, cluster file and simulator tools):
/// both upgrades complete, both verdicts SAFE, and that one process reported
/// the run time of every step.
#[tokio::test(flavor = "multi_thread")]
async fn one_executor_serving_every_node_upgrades_two_clusters_safely() {
    let bins = Bins::beside_current_exe().expect("the workspace's binaries are built");
    let outcome = fleet::run(&bins, 2, Timings::Zero, Executors::One)
        .await
        .expect("the fleet runs");
    assert_eq!(outcome.ends.len(), 2);
    for end in &outcome.ends {
        assert_eq!(end.status, "completed", "{end:#?}");
        assert_eq!(end.verdict, "SAFE", "{end:#?}");
    }
    assert_eq!(outcome.executor_count, 1, "{outcome:#?}");
    assert_eq!(outcome.nodes, 6);
    assert!(outcome.steps >= 2 * 3, "{outcome:#?}");
    assert_eq!(outcome.steps_untimed, 0, "{outcome:#?}");
    assert!(outcome.executor_rss_per_node_kb() > 0, "{outcome:#?}");
}
