//! The executor's metrics and readiness (`baton executor --http`; every
//! name, type and label is listed in `docs/metrics.md`).
//!
//! The caller owns the registry: it registers an [`ExecutorMetrics`] in its
//! own [`Registry`] ([`ExecutorMetrics::register`]) and hands it to the
//! executor in [`crate::Config::metrics`]. Nothing here is global, and nothing
//! here serves HTTP. Counters count what this process did since it started.
//!
//! - **steps run**: step attempts whose command this executor started, by
//!   action and outcome, counted when the command ended (answers from the
//!   ledger and refusals are not runs).
//! - **refused**: requests answered `rejected` or terminated without running,
//!   by reason: `wrong_target`, `not_allowed`, `stale`, `conflict` (the
//!   executor's checks, `crate::allow::RefusalKind`), `malformed` (does not
//!   decode), `unsigned` (not signed by the service).
//! - **runner errors**: commands started whose runner brought back no exit
//!   status and no timeout: the command could not be spawned (or, over SSH,
//!   its wrapper not built), or a signal ended it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// A step's action and its outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub action: String,
    pub outcome: &'static str,
}

/// Why a request was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Everything the executor measures; share it in an `Arc`.
#[derive(Debug, Default)]
pub struct ExecutorMetrics {
    steps_run: Family<RunLabels, Counter>,
    refused: Family<ReasonLabel, Counter>,
    in_flight: Gauge,
    last_heartbeat: Gauge,
    runner_errors: Counter,
    nats_connected: Gauge,
    consumer_bound: Gauge,
    /// Per served group: (NATS connected, consumer bound); the two gauges
    /// count the groups for which each holds.
    groups: std::sync::Mutex<std::collections::BTreeMap<String, (bool, bool)>>,
}

impl ExecutorMetrics {
    /// Registers every metric under the `baton_executor_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("baton_executor");
        r.register(
            "steps_run",
            "Steps whose command this executor ran, by action and outcome",
            self.steps_run.clone(),
        );
        r.register(
            "refused",
            "Step requests refused without running, by reason",
            self.refused.clone(),
        );
        r.register(
            "steps_in_flight",
            "Steps whose command is running now",
            self.in_flight.clone(),
        );
        r.register_with_unit(
            "last_heartbeat_timestamp",
            "When the presence record was last written (unix time)",
            Unit::Seconds,
            self.last_heartbeat.clone(),
        );
        r.register(
            "runner_errors",
            "Commands started that ended with no exit status and no timeout (spawn failure, signal)",
            self.runner_errors.clone(),
        );
        r.register(
            "nats_connected",
            "Served groups whose NATS connection is up (1 for an executor of one group)",
            self.nats_connected.clone(),
        );
        r.register(
            "consumer_bound",
            "Served groups whose durable consumer the executor is bound to (1 for one group)",
            self.consumer_bound.clone(),
        );
    }

    /// `Ok` when the executor can take steps: for every group it serves,
    /// NATS connected and the group's consumer bound; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        let groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        let mut not = Vec::new();
        let down: Vec<&str> = groups
            .iter()
            .filter(|(_, (up, _))| !up)
            .map(|(g, _)| g.as_str())
            .collect();
        let unbound: Vec<&str> = groups
            .iter()
            .filter(|(_, (_, bound))| !bound)
            .map(|(g, _)| g.as_str())
            .collect();
        let named = |what: &str, which: &[&str]| {
            if groups.len() > 1 {
                format!("{what} (groups {})", which.join(", "))
            } else {
                what.to_string()
            }
        };
        if groups.is_empty() || !down.is_empty() {
            not.push(named("NATS is not connected", &down));
        }
        if groups.is_empty() || !unbound.is_empty() {
            not.push(named("the group's consumer is not bound yet", &unbound));
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(not.join("; "))
        }
    }

    /// Count `group` among those the executor serves (not connected, not bound yet).
    pub(crate) fn serving(&self, group: &str) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        groups.entry(group.to_string()).or_default();
    }

    fn update(&self, group: &str, change: impl FnOnce(&mut (bool, bool))) {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        change(groups.entry(group.to_string()).or_default());
        let count = |f: fn(&(bool, bool)) -> bool| groups.values().filter(|v| f(v)).count() as i64;
        self.nats_connected.set(count(|v| v.0));
        self.consumer_bound.set(count(|v| v.1));
    }

    pub(crate) fn set_nats_connected(&self, group: &str, up: bool) {
        self.update(group, |v| v.0 = up);
    }

    pub(crate) fn set_consumer_bound(&self, group: &str, bound: bool) {
        self.update(group, |v| v.1 = bound);
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub(crate) fn started(&self) {
        self.in_flight.inc();
    }

    /// A command this executor started ended: `exit_code` and `timed_out`
    /// tell a runner error apart.
    pub(crate) fn ran(&self, action: &str, outcome: protocol::Outcome, exit_code: Option<i32>) {
        self.in_flight.dec();
        self.steps_run
            .get_or_create(&RunLabels {
                action: action.to_string(),
                outcome: outcome.as_str(),
            })
            .inc();
        if exit_code.is_none() && outcome != protocol::Outcome::TimedOut {
            self.runner_errors.inc();
        }
    }

    pub(crate) fn heartbeat_at(&self, unix_ms: u64) {
        self.last_heartbeat
            .set(i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use protocol::Outcome;

    fn text(metrics: &ExecutorMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn runs_are_counted_by_action_and_outcome_and_runner_errors_apart() {
        let m = ExecutorMetrics::default();
        m.started();
        assert!(text(&m).contains("baton_executor_steps_in_flight 1\n"));
        m.ran("stop", Outcome::Succeeded, Some(0));
        m.started();
        m.ran("install", Outcome::Failed, Some(1));
        m.started();
        m.ran("install", Outcome::TimedOut, None);
        m.started();
        m.ran("start", Outcome::Failed, None);
        let out = text(&m);
        for line in [
            "baton_executor_steps_in_flight 0\n",
            "baton_executor_steps_run_total{action=\"stop\",outcome=\"succeeded\"} 1\n",
            "baton_executor_steps_run_total{action=\"install\",outcome=\"failed\"} 1\n",
            "baton_executor_steps_run_total{action=\"install\",outcome=\"timed_out\"} 1\n",
            "baton_executor_runner_errors_total 1\n",
        ] {
            assert!(out.contains(line), "{line} missing from {out}");
        }
    }

    #[test]
    fn refusals_are_counted_by_reason() {
        let m = ExecutorMetrics::default();
        m.refused("stale");
        m.refused("stale");
        m.refused("unsigned");
        let out = text(&m);
        assert!(
            out.contains("baton_executor_refused_total{reason=\"stale\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_executor_refused_total{reason=\"unsigned\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn readiness_needs_nats_and_the_consumer() {
        let m = ExecutorMetrics::default();
        assert_eq!(
            m.readiness().unwrap_err(),
            "NATS is not connected; the group's consumer is not bound yet"
        );
        m.serving("g1");
        m.set_nats_connected("g1", true);
        assert_eq!(
            m.readiness().unwrap_err(),
            "the group's consumer is not bound yet"
        );
        m.set_consumer_bound("g1", true);
        assert_eq!(m.readiness(), Ok(()));
        m.heartbeat_at(1_700_000_000_500);
        let out = text(&m);
        assert!(
            out.contains("baton_executor_last_heartbeat_timestamp_seconds 1700000000\n"),
            "{out}"
        );
        assert!(out.contains("baton_executor_consumer_bound 1\n"), "{out}");
    }

    #[test]
    fn an_executor_of_several_groups_is_ready_when_every_group_is() {
        let m = ExecutorMetrics::default();
        for g in ["g1", "g2"] {
            m.serving(g);
            m.set_nats_connected(g, true);
        }
        m.set_consumer_bound("g1", true);
        assert_eq!(
            m.readiness().unwrap_err(),
            "the group's consumer is not bound yet (groups g2)"
        );
        m.set_consumer_bound("g2", true);
        assert_eq!(m.readiness(), Ok(()));
        assert!(text(&m).contains("baton_executor_consumer_bound 2\n"));
        m.set_nats_connected("g1", false);
        assert_eq!(
            m.readiness().unwrap_err(),
            "NATS is not connected (groups g1)"
        );
        assert!(text(&m).contains("baton_executor_nats_connected 1\n"));
    }
}
