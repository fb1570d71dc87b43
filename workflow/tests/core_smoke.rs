//! Smoke: a whole upgrade against the fake cluster, both procedures.

mod common;

use common::*;
use workflow::core::{replay, verify, Status};

#[test]
fn runbook_upgrade_completes() {
    for procedure in ["runbook", "upgrade-command"] {
        let mut fake = FakeCluster::new("3.0.0-1");
        let mut run = Run::new();
        run.input(submit(cluster(procedure, ""), run.now)).unwrap();
        run.run_to_rest(&mut fake, 500);
        assert_eq!(
            run.state.status(),
            Status::Completed,
            "{procedure}: {:#?}",
            run.history.last()
        );
        assert!(
            fake.violations.list.is_empty(),
            "{:?}",
            fake.violations.list
        );
        assert!(fake.all_at_target(), "{:?}", fake.nodes);
        assert!(fake.failover);
        assert!(!run.state.failover_blocked());
        assert_eq!(replay(&run.history), run.state);
        verify(&run.history).unwrap();
        eprintln!("{procedure}: {:?}", actions_of(&run.history));
    }
}
