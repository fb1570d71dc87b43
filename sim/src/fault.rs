//! Fault injection: what can be made to go wrong on a node, and how faults are named on the command line.
//!
//! Faults are per node and stored in the state, so every process acting as that node sees them.

use serde::{Deserialize, Serialize};

/// Faults injected into one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// The node's sync never completes (it stays `syncing`).
    pub sync_never: bool,
    /// `chef-backend-ctl start` (and the start inside restart/upgrade) fails; services stay down.
    pub start_fails: bool,
    /// Package installation fails (post-install script error); the installed version is unchanged.
    pub install_fails: bool,
    /// `demote` on this node carries out the demotion but the command hangs until its timeout and fails,
    /// so the caller cannot know the outcome (the case where a blind retry would demote the new leader).
    pub demote_times_out: bool,
    /// Elections that replace this node as leader (demote of it, or its loss) elect nobody.
    pub election_elects_nobody: bool,
    /// `status` hangs this many seconds before answering (0: no hang).
    pub status_hang_s: u64,
    /// Every command on this node is delayed by a random 0..=N ms (0: none).
    pub latency_ms: u64,
}

/// One fault, as named on the command line (`sync-never`, `status-hang=5`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    SyncNever,
    StartFails,
    InstallFails,
    DemoteTimesOut,
    ElectionElectsNobody,
    StatusHangs(u64),
    Latency(u64),
}

/// Fault names accepted on the command line.
pub const FAULT_NAMES: &str =
    "sync-never, start-fails, install-fails, demote-timeout, election-nobody, status-hang SECONDS, latency MAX_MS";

impl Fault {
    /// Parses a fault kind and its argument (required for `status-hang` and `latency`).
    pub fn parse(kind: &str, arg: Option<&str>) -> Result<Fault, String> {
        let num = |what: &str| -> Result<u64, String> {
            let a = arg.ok_or_else(|| format!("fault {kind} needs {what}"))?;
            a.parse::<u64>()
                .map_err(|_| format!("fault {kind}: {what} must be a whole number, got {a:?}"))
        };
        Ok(match kind {
            "sync-never" => Fault::SyncNever,
            "start-fails" => Fault::StartFails,
            "install-fails" => Fault::InstallFails,
            "demote-timeout" => Fault::DemoteTimesOut,
            "election-nobody" => Fault::ElectionElectsNobody,
            "status-hang" => Fault::StatusHangs(num("SECONDS")?),
            "latency" => Fault::Latency(num("MAX_MS")?),
            other => return Err(format!("unknown fault {other:?} (known: {FAULT_NAMES})")),
        })
    }

    /// The command-line name of the fault kind.
    pub fn name(self) -> &'static str {
        match self {
            Fault::SyncNever => "sync-never",
            Fault::StartFails => "start-fails",
            Fault::InstallFails => "install-fails",
            Fault::DemoteTimesOut => "demote-timeout",
            Fault::ElectionElectsNobody => "election-nobody",
            Fault::StatusHangs(_) => "status-hang",
            Fault::Latency(_) => "latency",
        }
    }

    /// Sets (`on`) or clears the fault in `f`.
    pub(crate) fn apply(self, f: &mut Faults, on: bool) {
        match self {
            Fault::SyncNever => f.sync_never = on,
            Fault::StartFails => f.start_fails = on,
            Fault::InstallFails => f.install_fails = on,
            Fault::DemoteTimesOut => f.demote_times_out = on,
            Fault::ElectionElectsNobody => f.election_elects_nobody = on,
            Fault::StatusHangs(s) => f.status_hang_s = if on { s } else { 0 },
            Fault::Latency(ms) => f.latency_ms = if on { ms } else { 0 },
        }
    }
}
