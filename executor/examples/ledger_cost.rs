//! What the ledger costs per step, an action's two flushed writes against a probe's two lazy ones
//! (`cargo run -p executor --example ledger_cost [STEPS] [CONCURRENT]`): prints one line per kind.

use std::sync::Arc;
use std::time::Instant;

use executor::ledger::{Durability, Ledger};
use protocol::RequestIds;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let steps: u64 = args
        .next()
        .map_or(400, |a| a.parse().expect("STEPS is a number"));
    let concurrent: u64 = args
        .next()
        .map_or(1, |a| a.parse().expect("CONCURRENT is a number"));
    for (name, durability) in [("action", Durability::Flushed), ("probe", Durability::Lazy)] {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ledger = Arc::new(Ledger::open(dir.path()).expect("the ledger opens"));
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrent {
            let ledger = ledger.clone();
            tasks.spawn(async move {
                for i in 0..steps / concurrent {
                    let step = worker * 1_000_000 + i;
                    let key = format!("U:{step}:1");
                    ledger
                        .record_started(&key, "U", 1, 0, "ex", "d", durability)
                        .await
                        .expect("written");
                    let ids = RequestIds {
                        upgrade: "U".into(),
                        step,
                        attempt: 1,
                        epoch: 1,
                        node: "n".into(),
                    };
                    ledger
                        .record_finished(&ids.rejected("done", "ex"), "d", durability)
                        .await
                        .expect("written");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a writer ends");
        }
        let elapsed = started.elapsed();
        println!(
            "{name}: {steps} steps, {concurrent} at once: {:.3} ms per step, {} flushes",
            elapsed.as_secs_f64() * 1000.0 / steps as f64,
            ledger.flushes()
        );
    }
}
