//! The executor's durable ledger (sled): what it started and how it ended.
//!
//! Keys are `<upgrade>:<step>:<attempt>`; an entry is `started` before the command runs and `finished` (with
//! the full result) before the result is published. The highest epoch seen per upgrade is kept beside them
//! for fencing.
//!
//! Each entry also keeps the digest of the request it was made for ([`digest`]: node, group, action, argv,
//! env), so a later request that re-uses the step id for another command is refused as a conflict, never
//! answered from the ledger as if it were the same step. Entries written before digests existed have none
//! and match any request, as they did.
//!
//! # What is flushed, and why
//!
//! sled buffers writes in user space (and flushes them by itself every half second): a write is seen at once
//! by this process, but one not yet flushed is lost if the process is killed. How long a write waits is its
//! [`Durability`], chosen by what the step does to its node ([`crate::slots::StepKind`]).
//!
//! An **action** (a step that may change its node) waits for two flushes:
//!
//! 1. `started`, before its command runs. It protects at most once: a restarted executor that finds
//!    `started` without `finished` answers the redelivered request `unknown` and never runs the command again;
//!    without the flush it could find nothing and run a `stop` or a `demote` a second time. The same flush
//!    makes an epoch this step raised durable, so the fence never goes back after a crash.
//! 2. `finished`, before the result is published. It protects the answer: a redelivered request (the service
//!    restarted before acking the request, or the ack was lost) gets the same outcome, not `unknown`. It stays
//!    before the publish: a published result is only as durable as JetStream makes it (nats-server syncs its
//!    store every 2 minutes by default; a PubAck is not an fsync), and an `unknown` for an action that ran
//!    costs the core a re-observation and, for a non-idempotent action, can halt the upgrade for an operator.
//!
//! A **probe** (the core's `Action::is_probe`: a read-only command that changes nothing) writes the same
//! entries without waiting ([`Durability::Lazy`]), except a `started` that raises its upgrade's highest epoch
//! (the first step of an upgrade, or of a new service epoch, on this executor): that one is flushed before the
//! probe runs, so the fence is as durable as an action's. The entries are still written because they are
//! still useful in this process: the digest check against a step id re-used for another command, and the
//! answer to a redelivery of a probe that finished (from the entry, without running it again). What a probe
//! still needs, and what covers it across a crash that lost its entries:
//!
//! - At most once is moot: running a probe again changes nothing. A restarted executor that finds `started`
//!   without `finished`, or nothing and the dead process's claim, runs the probe again instead of answering
//!   `unknown` (`crate::service`).
//! - Epoch fencing: the raise is flushed (above); a probe that does not raise the epoch does not move it.
//! - The digest check: the group-wide claim (`baton_claims`, in NATS, written before the probe runs) keeps
//!   the digest, and a request re-using the step id for another command is refused as a conflict through it.
//! - A consistent answer: a probe run again after a crash may answer differently from its first run (the node
//!   changed meanwhile, or the request's deadline passed: `rejected`). No second answer reaches the core's
//!   decisions: the core records one result per step attempt, the first it takes (`decide` gives no events for
//!   a result of a step that has an outcome, and the service's log refuses a second record under the result's
//!   id `<upgrade>:<step>:<attempt>:result`), and results are pulled in the order they were published. Only
//!   if the service also restarted with the first answer pulled but not yet logged can the second be taken
//!   first; either one is a real run of the same read-only command made after the step was scheduled, so
//!   either is a true observation.
//!
//! So per step the executor flushes twice for an action and not at all for a probe (besides an epoch raise).
//! Flushes are grouped ([`Ledger`]): concurrent steps share them.

use std::path::{Path, PathBuf};

use protocol::StepResult;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::ExecutorError;

/// How long a ledger write waits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed before the call returns: an action's entries.
    Flushed,
    /// Written, not waited for (sled flushes it within half a second); a `started` that raises its upgrade's
    /// highest epoch is still flushed: a probe's entries.
    Lazy,
}

impl Durability {
    /// The durability of the entries of a step of `kind`.
    pub fn of(kind: crate::slots::StepKind) -> Durability {
        match kind {
            crate::slots::StepKind::Action => Durability::Flushed,
            crate::slots::StepKind::Probe => Durability::Lazy,
        }
    }
}

/// What the ledger knows about one step attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Entry {
    /// The command was (about to be) started; its outcome is not recorded.
    Started {
        started_ms: u64,
        executor: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// The step ended (or was refused) with this result.
    Finished {
        result: StepResult,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
}

impl Entry {
    /// The digest of the request this entry was made for, if it was recorded.
    pub fn digest(&self) -> Option<&str> {
        match self {
            Entry::Started { digest, .. } | Entry::Finished { digest, .. } => digest.as_deref(),
        }
    }
}

/// What a step id stands for: SHA-256 (hex) over the request's node, group, action, argv and env, as JSON.
/// Two requests with the same step id and the same digest ask for the same command.
pub fn digest(req: &protocol::StepRequest) -> String {
    let canonical = serde_json::json!({
        "node": req.node,
        "group": req.group,
        "action": req.action,
        "argv": req.argv,
        "env": req.env,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

/// The ledger of one executor state directory (one per process, shared by
/// every group and node it serves: keys are step ids, unique across upgrades).
///
/// Flushes are grouped: a write that finds a flush under way waits for it and
/// then for one more that covers it, so concurrent steps of different nodes
/// share their fsyncs, and only one flush runs at a time. (Steps calling
/// `flush_async` concurrently on one sled hung a fleet run of one executor
/// for 30 nodes: tests/FLEET.md.)
pub struct Ledger {
    path: PathBuf,
    db: sled::Db,
    steps: sled::Tree,
    epochs: sled::Tree,
    /// Writes made so far (counted after each write).
    written: std::sync::atomic::AtomicU64,
    /// How many writes the last completed flush covers; held while flushing.
    flushed: tokio::sync::Mutex<u64>,
    /// Flushes run so far (each one fsync or more).
    flushes: std::sync::atomic::AtomicU64,
}

/// The epoch stored as 8 big-endian bytes.
fn epoch_of(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Create `dir` (and parents) and give it `mode` (0700: the owner's only).
fn private(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// sled creates files with the umask: make the ledger's folder 0700 and its files 0600.
fn private_tree(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            private_tree(&entry.path())?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl Ledger {
    /// Open (or create) the ledger under `dir`. Fails if another process holds it.
    pub fn open(dir: &Path) -> Result<Ledger, ExecutorError> {
        let path = dir.join("ledger");
        let err = |action| {
            let path = path.clone();
            move |source| ExecutorError::Ledger {
                path,
                action,
                source,
            }
        };
        private(dir, 0o700).map_err(|e| err("create its directory (0700)")(sled::Error::Io(e)))?;
        let db = sled::open(&path)
            .map_err(err("open it (is another executor using this --state-dir?)"))?;
        private_tree(&path).map_err(|e| err("make its files 0600")(sled::Error::Io(e)))?;
        let steps = db.open_tree("steps").map_err(err("open tree steps"))?;
        let epochs = db.open_tree("epochs").map_err(err("open tree epochs"))?;
        Ok(Ledger {
            path,
            db,
            steps,
            epochs,
            written: std::sync::atomic::AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
            flushes: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn error(&self, action: &'static str, source: sled::Error) -> ExecutorError {
        ExecutorError::Ledger {
            path: self.path.clone(),
            action,
            source,
        }
    }

    /// What is recorded for `key`, if anything.
    pub fn get(&self, key: &str) -> Result<Option<Entry>, ExecutorError> {
        let Some(bytes) = self
            .steps
            .get(key)
            .map_err(|e| self.error("read a step", e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ExecutorError::LedgerRecord {
                path: self.path.clone(),
                key: key.to_string(),
                source,
            })
    }

    /// The highest epoch accepted for `upgrade`.
    pub fn highest_epoch(&self, upgrade: &str) -> Result<Option<u64>, ExecutorError> {
        let v = self
            .epochs
            .get(upgrade)
            .map_err(|e| self.error("read an epoch", e))?;
        Ok(v.and_then(|b| epoch_of(&b)))
    }

    /// Record that `key` is starting under `epoch` (raising the upgrade's highest epoch), before anything
    /// runs: flushed for [`Durability::Flushed`], and for [`Durability::Lazy`] only when it raised the epoch.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_started(
        &self,
        key: &str,
        upgrade: &str,
        epoch: u64,
        started_ms: u64,
        executor: &str,
        digest: &str,
        durability: Durability,
    ) -> Result<(), ExecutorError> {
        let entry = Entry::Started {
            started_ms,
            executor: executor.to_string(),
            digest: Some(digest.to_string()),
        };
        self.steps
            .insert(
                key,
                serde_json::to_vec(&entry).expect("an entry serialises"),
            )
            .map_err(|e| self.error("write a step", e))?;
        // Written only to raise it (most steps do not), and then atomically: two steps of one upgrade starting
        // at once under different epochs (a service failing over) leave the higher one, whichever writes last.
        let raised = self.highest_epoch(upgrade)?.is_none_or(|h| epoch > h) && {
            let before = self
                .epochs
                .fetch_and_update(upgrade, |old| {
                    let highest = old.and_then(epoch_of).map_or(epoch, |h| h.max(epoch));
                    Some(highest.to_be_bytes().to_vec())
                })
                .map_err(|e| self.error("write an epoch", e))?;
            before
                .as_deref()
                .and_then(epoch_of)
                .is_none_or(|h| epoch > h)
        };
        match durability {
            Durability::Lazy if !raised => {
                self.count_write();
                Ok(())
            }
            _ => self.flush().await,
        }
    }

    /// Record a step's final result, with the digest of the request it answers: flushed for
    /// [`Durability::Flushed`], not waited for with [`Durability::Lazy`].
    pub async fn record_finished(
        &self,
        result: &StepResult,
        digest: &str,
        durability: Durability,
    ) -> Result<(), ExecutorError> {
        let entry = Entry::Finished {
            result: result.clone(),
            digest: Some(digest.to_string()),
        };
        self.steps
            .insert(
                result.request_key(),
                serde_json::to_vec(&entry).expect("an entry serialises"),
            )
            .map_err(|e| self.error("write a step", e))?;
        match durability {
            Durability::Flushed => self.flush().await,
            Durability::Lazy => {
                self.count_write();
                Ok(())
            }
        }
    }

    /// How many flushes this ledger has run (each one fsync of sled's files or more).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count a write no caller waits for: the next flush covers it like any other.
    fn count_write(&self) {
        self.written
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Make every write made so far durable (group commit: one flush at a
    /// time, and a flush that began after this write covers it).
    async fn flush(&self) -> Result<(), ExecutorError> {
        use std::sync::atomic::Ordering;
        let mine = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= mine {
            return Ok(());
        }
        // Every write counted up to here was made before this flush starts.
        let covers = self.written.load(Ordering::SeqCst);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.db
            .flush_async()
            .await
            .map_err(|e| self.error("flush", e))?;
        *flushed = covers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Outcome, RequestIds};

    #[test]
    fn the_ledger_folder_is_0700_and_its_files_0600() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let _ledger = Ledger::open(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("ledger")), 0o700);
        let files: Vec<_> = std::fs::read_dir(state.join("ledger"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(!files.is_empty());
        for file in files {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }

    #[tokio::test]
    async fn entries_and_epochs_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let l = Ledger::open(dir.path()).unwrap();
            assert_eq!(l.get("U:1:1").unwrap(), None);
            l.record_started("U:1:1", "U", 5, 10, "ex", "d1", Durability::Flushed)
                .await
                .unwrap();
            l.record_started("U:2:1", "U", 3, 11, "ex", "d2", Durability::Flushed)
                .await
                .unwrap();
            let ids = RequestIds {
                upgrade: "U".into(),
                step: 2,
                attempt: 1,
                epoch: 3,
                node: "n".into(),
            };
            l.record_finished(&ids.rejected("why", "ex"), "d2", Durability::Flushed)
                .await
                .unwrap();
        }
        // sled releases its file lock when its flusher thread lets go of the
        // dropped database, a moment after the drop: wait for it, as a
        // restarted executor (a new process) never has to.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let l = loop {
            match Ledger::open(dir.path()) {
                Ok(l) => break l,
                Err(err) if std::time::Instant::now() < deadline => {
                    assert!(
                        format!("{err:?}").contains("could not acquire lock"),
                        "{err:?}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(err) => panic!("the ledger did not reopen: {err:?}"),
            }
        };
        assert_eq!(
            l.get("U:1:1").unwrap(),
            Some(Entry::Started {
                started_ms: 10,
                executor: "ex".into(),
                digest: Some("d1".into()),
            })
        );
        match l.get("U:2:1").unwrap() {
            Some(Entry::Finished { result, digest }) => {
                assert_eq!(result.outcome, Outcome::Rejected);
                assert_eq!(digest.as_deref(), Some("d2"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A lower epoch never lowers the recorded highest.
        assert_eq!(l.highest_epoch("U").unwrap(), Some(5));
        assert_eq!(l.highest_epoch("other").unwrap(), None);
    }

    #[tokio::test]
    async fn a_probe_waits_for_no_flush_unless_it_raises_the_epoch_and_an_action_for_two() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let finished = |step: u64, epoch: u64| {
            RequestIds {
                upgrade: "U".into(),
                step,
                attempt: 1,
                epoch,
                node: "n".into(),
            }
            .rejected("done", "ex")
        };
        let lazy = Durability::Lazy;
        // The upgrade's first step raises its epoch from none: flushed, even for a probe.
        l.record_started("U:1:1", "U", 5, 1, "ex", "d1", lazy)
            .await
            .unwrap();
        assert_eq!(l.flushes(), 1);
        // Further probes under that epoch: written, seen at once, not flushed.
        l.record_finished(&finished(1, 5), "d1", lazy)
            .await
            .unwrap();
        l.record_started("U:2:1", "U", 5, 2, "ex", "d2", lazy)
            .await
            .unwrap();
        assert_eq!(l.flushes(), 1);
        assert!(matches!(
            l.get("U:1:1").unwrap(),
            Some(Entry::Finished { .. })
        ));
        assert!(matches!(
            l.get("U:2:1").unwrap(),
            Some(Entry::Started { .. })
        ));
        // A new epoch (the service failed over) raises the fence: flushed.
        l.record_started("U:3:1", "U", 6, 3, "ex", "d3", lazy)
            .await
            .unwrap();
        assert_eq!(l.flushes(), 2);
        // A lower epoch neither lowers the fence nor flushes.
        l.record_started("U:4:1", "U", 4, 4, "ex", "d4", lazy)
            .await
            .unwrap();
        assert_eq!(l.flushes(), 2);
        assert_eq!(l.highest_epoch("U").unwrap(), Some(6));
        // An action: both entries flushed.
        let flushed = Durability::Flushed;
        l.record_started("U:5:1", "U", 6, 5, "ex", "d5", flushed)
            .await
            .unwrap();
        l.record_finished(&finished(5, 6), "d5", flushed)
            .await
            .unwrap();
        assert_eq!(l.flushes(), 4);
    }

    #[test]
    fn entries_without_a_digest_still_read() {
        let old = br#"{"state":"started","started_ms":1,"executor":"ex"}"#;
        let e: Entry = serde_json::from_slice(old).unwrap();
        assert_eq!(e.digest(), None);
    }

    #[test]
    fn a_second_open_of_the_same_dir_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let _l = Ledger::open(dir.path()).unwrap();
        let err = match Ledger::open(dir.path()) {
            Ok(_) => panic!("second open succeeded"),
            Err(e) => e,
        };
        assert!(err.to_string().contains("another executor"), "{err}");
    }
}
