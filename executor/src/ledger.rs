//! The executor's durable ledger (sled): what it started and how it ended.
//!
//! Keys are `<upgrade>:<step>:<attempt>`. A step is recorded `started` and
//! flushed before its command runs, and `finished` (with the full result) and
//! flushed before the result is published. sled buffers writes in user space,
//! so without the flushes a killed executor would forget a step it ran.
//! The highest epoch seen per upgrade is kept beside them for fencing.
//!
//! Each entry also keeps the digest of the request it was made for ([`digest`]: node, group, action, argv,
//! env), so a later request that re-uses the step id for another command is refused as a conflict, never
//! answered from the ledger as if it were the same step. Entries written before digests existed have none
//! and match any request, as they did.

use std::path::{Path, PathBuf};

use protocol::StepResult;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::ExecutorError;

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
        Ok(v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok().map(u64::from_be_bytes)))
    }

    /// Record that `key` is starting under `epoch` (raising the upgrade's
    /// highest epoch), durably, before anything runs.
    pub async fn record_started(
        &self,
        key: &str,
        upgrade: &str,
        epoch: u64,
        started_ms: u64,
        executor: &str,
        digest: &str,
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
        if self.highest_epoch(upgrade)?.is_none_or(|h| epoch > h) {
            self.epochs
                .insert(upgrade, &epoch.to_be_bytes())
                .map_err(|e| self.error("write an epoch", e))?;
        }
        self.flush().await
    }

    /// Record a step's final result durably, with the digest of the request it answers.
    pub async fn record_finished(
        &self,
        result: &StepResult,
        digest: &str,
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
        self.flush().await
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
            l.record_started("U:1:1", "U", 5, 10, "ex", "d1")
                .await
                .unwrap();
            l.record_started("U:2:1", "U", 3, 11, "ex", "d2")
                .await
                .unwrap();
            let ids = RequestIds {
                upgrade: "U".into(),
                step: 2,
                attempt: 1,
                epoch: 3,
                node: "n".into(),
            };
            l.record_finished(&ids.rejected("why", "ex"), "d2")
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
