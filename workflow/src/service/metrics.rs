//! The service's metrics and readiness (`baton server --http`; every name,
//! type and label is listed in `docs/metrics.md`).
//!
//! The caller owns the registry: it makes a [`ServiceMetrics`], registers it
//! in its own [`Registry`] ([`ServiceMetrics::register`]) and passes it to the
//! service in [`super::Config`]. Nothing here is global, and nothing here
//! serves HTTP: the CLI encodes the registry and asks [`ServiceMetrics::readiness`].
//! Unregistered metrics still count (cheap atomics), so code paths need no
//! `Option`.
//!
//! Counters and histograms count what *this process* did since it started
//! (the Prometheus convention: a restart resets them; `rate()` copes). The
//! gauges describe the present: `baton_upgrades` is every upgrade in the log
//! by its current status, recovery included.
//!
//! # The three durations of a step
//!
//! Observed once per step attempt whose result is recorded in the log and
//! carries the executor's `started_ms` and `finished_ms` (a result refused
//! before it ran has neither), labelled with the step's action:
//! - **decided**: the time of the input whose decision scheduled the attempt
//!   (the service's clock, as recorded in the log: a tick, a result, a request);
//! - **received**: when the service's loop took the result (the `at_ms` of
//!   its `StepResultRecorded` event);
//! - `baton_step_queue_wait_seconds` = `started_ms - decided`: publishing,
//!   JetStream, the executor's pull and its checks before it spawned the
//!   command. It spans two clocks (service, executor): their offset is in it.
//! - `baton_step_run_seconds` = `finished_ms - started_ms`: the command
//!   itself, on the executor's clock.
//! - `baton_step_overhead_seconds` = `(received - decided) - run`:
//!   everything Baton added around the command (the queue wait above plus the
//!   result's way back: publish, JetStream, the service's pull, signature
//!   check and routing). Both ends of `received - decided` are on the service's
//!   clock and the run time is a duration, so no clock offset enters it.
//!
//! Negative differences (clocks apart) count as zero.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::core::Status;

/// The label of an upgrade's status (the `status` field of `baton status --output json`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

/// A step's action (`Action::as_str`) and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub action: String,
    /// `succeeded`, `failed`, `timed_out`, `unknown`, `rejected` (the
    /// executor's outcome), or `deadline_passed` (no result in time).
    pub outcome: &'static str,
}

/// A step's action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Step durations: 5 ms to about 11 min, doubling.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

/// The log's writer (the committer is its only user): appends, flushes, size.
#[derive(Debug, Clone)]
pub struct LogMetrics {
    /// Appends applied (one per caller's batch of records; refused ones not counted).
    pub appends: Counter,
    /// Records appended.
    pub records_appended: Counter,
    /// Time of each flush (sled's fsync), which every append of its batch waited for.
    pub flush: Histogram,
    /// Records in the log (all streams), set at start and counted up by the committer.
    pub records: Gauge,
    /// Bytes the log takes on disk, sampled after each flush.
    pub bytes: Gauge,
}

impl Default for LogMetrics {
    fn default() -> Self {
        LogMetrics {
            appends: Counter::default(),
            records_appended: Counter::default(),
            // 50 µs to about 1.6 s, doubling.
            flush: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            records: Gauge::default(),
            bytes: Gauge::default(),
        }
    }
}

/// Everything the service measures. Cheap to clone the handles out of; share it in an `Arc`.
#[derive(Debug)]
pub struct ServiceMetrics {
    upgrades: Family<StatusLabel, Gauge>,
    steps: Family<StepLabels, Counter>,
    queue_wait: HistogramFamily<ActionLabel>,
    run_time: HistogramFamily<ActionLabel>,
    overhead: HistogramFamily<ActionLabel>,
    /// Handed to the committer.
    pub log: LogMetrics,
    epoch: Gauge,
    nats_connected: Gauge,
    lease_held: Gauge,
    log_verified: Gauge,
    /// Recovery done and the API subscribed (not a metric: readiness only).
    serving: std::sync::atomic::AtomicBool,
}

impl Default for ServiceMetrics {
    fn default() -> Self {
        ServiceMetrics {
            upgrades: Family::default(),
            steps: Family::default(),
            queue_wait: Family::new_with_constructor(step_histogram),
            run_time: Family::new_with_constructor(step_histogram),
            overhead: Family::new_with_constructor(step_histogram),
            log: LogMetrics::default(),
            epoch: Gauge::default(),
            nats_connected: Gauge::default(),
            lease_held: Gauge::default(),
            log_verified: Gauge::default(),
            serving: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl ServiceMetrics {
    /// Registers every metric under the `baton_` prefix (names in `docs/metrics.md`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("baton");
        r.register(
            "upgrades",
            "Upgrades in the log, by current status",
            self.upgrades.clone(),
        );
        r.register(
            "steps",
            "Step attempts whose end this service recorded, by action and outcome",
            self.steps.clone(),
        );
        r.register_with_unit(
            "step_queue_wait",
            "From the decision that scheduled a step to the executor starting its command",
            Unit::Seconds,
            self.queue_wait.clone(),
        );
        r.register_with_unit(
            "step_run",
            "A step's command, from start to end, on the executor",
            Unit::Seconds,
            self.run_time.clone(),
        );
        r.register_with_unit(
            "step_overhead",
            "A step's time from decision to recorded result, less its command's run time",
            Unit::Seconds,
            self.overhead.clone(),
        );
        r.register(
            "log_appends",
            "Appends applied by the log's writer (one per batch of records handed to it)",
            self.log.appends.clone(),
        );
        r.register(
            "log_records_appended",
            "Records appended to the log",
            self.log.records_appended.clone(),
        );
        r.register_with_unit(
            "log_flush",
            "Time of each flush of the log (every append of its batch waits for it)",
            Unit::Seconds,
            self.log.flush.clone(),
        );
        r.register(
            "log_records",
            "Records in the log, all streams",
            self.log.records.clone(),
        );
        r.register_with_unit(
            "log_size",
            "Size of the log on disk",
            Unit::Bytes,
            self.log.bytes.clone(),
        );
        r.register(
            "service_epoch",
            "This service's epoch (bumped at each start)",
            self.epoch.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the service's NATS connection is up",
            self.nats_connected.clone(),
        );
        r.register(
            "lease_held",
            "1 while this service holds the service lease",
            self.lease_held.clone(),
        );
        r.register(
            "log_verified",
            "1 once the log's chains and checkpoints verified at start",
            self.log_verified.clone(),
        );
    }

    /// `Ok` when the service can act: NATS connected, the log verified, the
    /// lease held and its upgrades recovered with the API answering;
    /// otherwise why not (every reason that holds, in that order).
    pub fn readiness(&self) -> Result<(), String> {
        let mut not = Vec::new();
        if self.nats_connected.get() != 1 {
            not.push("NATS is not connected".to_string());
        }
        if self.log_verified.get() != 1 {
            not.push("the log is not verified yet".to_string());
        }
        if self.lease_held.get() != 1 {
            not.push("this service does not hold the service lease".to_string());
        } else if !self.serving.load(std::sync::atomic::Ordering::SeqCst) {
            not.push("the service is starting (recovering upgrades) or stopping".to_string());
        }
        if not.is_empty() {
            Ok(())
        } else {
            Err(not.join("; "))
        }
    }

    pub(crate) fn set_epoch(&self, epoch: u64) {
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
    }

    /// The NATS connection went up or down.
    pub fn set_nats_connected(&self, up: bool) {
        self.nats_connected.set(i64::from(up));
    }

    pub(crate) fn set_lease_held(&self, held: bool) {
        self.lease_held.set(i64::from(held));
    }

    /// Recovery is done and the API answers (`true`), or shutdown began (`false`).
    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving
            .store(serving, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn set_log_verified(&self) {
        self.log_verified.set(1);
    }

    /// An upgrade entered `status` (counted once per upgrade: pair with [`Self::upgrade_left`]).
    pub(crate) fn upgrade_entered(&self, status: &'static str) {
        self.upgrades.get_or_create(&StatusLabel { status }).inc();
    }

    pub(crate) fn upgrade_left(&self, status: &'static str) {
        self.upgrades.get_or_create(&StatusLabel { status }).dec();
    }

    /// A step attempt's end was recorded.
    pub(crate) fn step_ended(&self, action: &str, outcome: &'static str) {
        self.steps
            .get_or_create(&StepLabels {
                action: action.to_string(),
                outcome,
            })
            .inc();
    }

    /// The three durations of one recorded result (see the module docs).
    pub(crate) fn step_timed(&self, action: &str, times: StepTimes) {
        let label = ActionLabel {
            action: action.to_string(),
        };
        let run = times.finished_ms.saturating_sub(times.started_ms);
        let queue = times.started_ms.saturating_sub(times.decided_ms);
        let total = times.received_ms.saturating_sub(times.decided_ms);
        self.queue_wait
            .get_or_create(&label)
            .observe(seconds(queue));
        self.run_time.get_or_create(&label).observe(seconds(run));
        self.overhead
            .get_or_create(&label)
            .observe(seconds(total.saturating_sub(run)));
    }
}

/// The four instants of a step attempt (unix ms; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StepTimes {
    pub decided_ms: u64,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub received_ms: u64,
}

fn seconds(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

/// The metric label of a status: its `status` tag in JSON.
pub(crate) fn status_label(status: &Status) -> &'static str {
    match status {
        Status::NotSubmitted => "not_submitted",
        Status::Planning => "planning",
        Status::Running => "running",
        Status::Paused { .. } => "paused",
        Status::WaitingApproval { .. } => "waiting_approval",
        Status::NeedsVerification { .. } => "needs_verification",
        Status::WindingDown { .. } => "winding_down",
        Status::Planned => "planned",
        Status::Completed => "completed",
        Status::Halted { .. } => "halted",
        Status::Aborted { .. } => "aborted",
    }
}

/// The metric label of an outcome: its name in JSON.
pub(crate) fn outcome_label(outcome: crate::core::Outcome) -> &'static str {
    use crate::core::Outcome;
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::TimedOut => "timed_out",
        Outcome::Unknown => "unknown",
        Outcome::Rejected => "rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn text(metrics: &ServiceMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn upgrades_move_between_statuses() {
        let m = ServiceMetrics::default();
        m.upgrade_entered("planning");
        m.upgrade_left("planning");
        m.upgrade_entered("running");
        m.upgrade_entered("completed");
        let out = text(&m);
        assert!(
            out.contains("baton_upgrades{status=\"planning\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_upgrades{status=\"running\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_upgrades{status=\"completed\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("# TYPE baton_upgrades gauge"), "{out}");
    }

    #[test]
    fn steps_are_counted_by_action_and_outcome() {
        let m = ServiceMetrics::default();
        m.step_ended("stop", "succeeded");
        m.step_ended("stop", "succeeded");
        m.step_ended("install", "failed");
        let out = text(&m);
        assert!(out.contains("# TYPE baton_steps counter"), "{out}");
        assert!(
            out.contains("baton_steps_total{action=\"stop\",outcome=\"succeeded\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_steps_total{action=\"install\",outcome=\"failed\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn the_three_durations_partition_a_step() {
        let m = ServiceMetrics::default();
        // Decided at 1000, started at 1250, ran 2 s, received 500 ms after it ended.
        m.step_timed(
            "install",
            StepTimes {
                decided_ms: 1_000,
                started_ms: 1_250,
                finished_ms: 3_250,
                received_ms: 3_750,
            },
        );
        let out = text(&m);
        assert!(
            out.contains("baton_step_queue_wait_seconds_sum{action=\"install\"} 0.25\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_step_run_seconds_sum{action=\"install\"} 2.0\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_step_overhead_seconds_sum{action=\"install\"} 0.75\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_step_run_seconds_count{action=\"install\"} 1\n"),
            "{out}"
        );
        // Clocks apart: an executor clock behind the service's gives no negative wait.
        m.step_timed(
            "stop",
            StepTimes {
                decided_ms: 5_000,
                started_ms: 4_000,
                finished_ms: 4_100,
                received_ms: 5_300,
            },
        );
        let out = text(&m);
        assert!(
            out.contains("baton_step_queue_wait_seconds_sum{action=\"stop\"} 0.0\n"),
            "{out}"
        );
        assert!(
            out.contains("baton_step_overhead_seconds_sum{action=\"stop\"} 0.2\n"),
            "{out}"
        );
    }

    #[test]
    fn readiness_names_every_missing_condition() {
        let m = ServiceMetrics::default();
        let why = m.readiness().unwrap_err();
        assert_eq!(
            why,
            "NATS is not connected; the log is not verified yet; this service does not hold the service lease"
        );
        m.set_nats_connected(true);
        m.set_log_verified();
        m.set_lease_held(true);
        m.set_epoch(7);
        // The lease is held from before recovery: not ready until the API answers.
        assert_eq!(
            m.readiness().unwrap_err(),
            "the service is starting (recovering upgrades) or stopping"
        );
        m.set_serving(true);
        assert_eq!(m.readiness(), Ok(()));
        let out = text(&m);
        assert!(out.contains("baton_service_epoch 7\n"), "{out}");
        assert!(out.contains("baton_lease_held 1\n"), "{out}");
        m.set_nats_connected(false);
        assert_eq!(m.readiness().unwrap_err(), "NATS is not connected");
        assert!(text(&m).contains("baton_nats_connected 0\n"));
    }

    #[test]
    fn the_log_metrics_are_registered_with_units() {
        let m = ServiceMetrics::default();
        m.log.appends.inc();
        m.log.records_appended.inc_by(3);
        m.log.flush.observe(0.002);
        m.log.records.set(3);
        m.log.bytes.set(4096);
        let out = text(&m);
        for line in [
            "baton_log_appends_total 1\n",
            "baton_log_records_appended_total 3\n",
            "baton_log_flush_seconds_count 1\n",
            "baton_log_records 3\n",
            "baton_log_size_bytes 4096\n",
        ] {
            assert!(out.contains(line), "{line} missing from {out}");
        }
    }
}
