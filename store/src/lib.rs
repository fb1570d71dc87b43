//! Baton's append-only, hash-chained event log on sled.
//!
//! The log is the only source of truth of every upgrade. It knows nothing of NATS or the workflow: it stores
//! opaque event bytes with an optional message id, in *streams* (one per upgrade, identified by a ULID), chains
//! each stream's records with SHA-256, and keeps a global order across streams.
//!
//! # API at a glance
//! - [`Store::open`] opens (or creates) a log in a directory. sled locks it: one process at a time; other
//!   processes read through the service or open a copy.
//! - [`Store::append`] appends a batch of [`NewRecord`]s to a stream if its head is still at `expected_seq`
//!   (optimistic concurrency: [`StoreError::Conflict`] otherwise). A record whose message id was already appended
//!   is answered as a duplicate in the [`AppendOutcome`], never stored twice and never an error.
//! - [`Store::append_many`] applies several appends (to any streams) in order in one atomic batch, each judged
//!   as `append` judges it; a group commit's batch.
//! - [`Store::flush`] / [`Store::flush_async`] make every earlier append of every stream durable;
//!   [`Store::append_durable`] is append + flush.
//! - [`Store::read`], [`Store::head`], [`Store::streams`], [`Store::global`] read the log back.
//! - [`Store::verify`] recomputes every chain and cross-checks every index; [`Store::repair_torn_tail`] removes
//!   records written beyond a head (never committed); damage anywhere else is refused.
//! - [`Store::export_jsonl`], [`Store::import_jsonl`] and [`verify_export`] move streams in and out as JSON lines
//!   and let an auditor check an exported file offline.
//!
//! # What is durable when
//! - `append` returns once the records, the head, the global index and the dedupe table are committed together
//!   in one sled batch on the log's one tree (`Tree::apply_batch`: applied atomically, and recovered all or
//!   nothing after a crash): every reader in this process sees all of them or none of them.
//! - That commit lives in sled's in-memory write buffer until a flush. **Unflushed appends are lost when the
//!   process dies**, even without a power loss. sled also flushes in the background (every 500 ms by default);
//!   never rely on it.
//! - After `flush` (or `append_durable`) returns, the appends made before it survive a process crash (SIGKILL,
//!   panic, OOM kill); the crash test proves this. sled's flush uses `sync_file_range` on Linux, which does not
//!   flush the disk's volatile write cache: against power loss, the data is safe only on disks with power-loss
//!   protection (or with write caching disabled).
//! - Rule for callers: flush before anything derived from an appended event becomes visible outside (a published
//!   command, an acknowledged result, an API answer).
//!
//! # Group commit
//! A flush costs a disk round trip (about 0.1-0.2 ms here) whatever it covers. Callers therefore put every event
//! they have at hand into one `append` per stream, and call `flush` **once** after appending to all the streams
//! touched in a batch (for example once per batch of NATS messages handled): one flush covers all earlier appends
//! of all streams. See `BENCHMARKS.md` for the figures.
//!
//! # One writer at a time
//! An append reads the heads, the dedupe table and `next_global`, decides, and writes one batch. The reads stay
//! valid until the batch is applied because nothing else writes in between: every `Store` method that writes
//! (`append`, `append_many`, `repair_torn_tail`; `import_jsonl` writes through `append`) and the blocking
//! [`Store::flush`] hold the store's writer mutex (shared by all clones of a `Store`) from their first read to
//! their last write. Another
//! process cannot write either: sled locks the database for one process.
//!
//! sled 0.34 can deadlock for good when flushes run concurrently with transactions *or batches* from other
//! threads (upstream issue 1308): `Tree::apply_batch` takes sled's global concurrency lock exclusively, exactly
//! as a transaction does (sled 0.34.7 `tree.rs`, `concurrency_control::write()`), while a flush holds it shared
//! while it waits for its I/O (`pagecache/iobuf.rs`, `flush`). Since `flush` takes the writer mutex too, a batch
//! and a flush made through this API never overlap. [`Store::flush_async`] cannot hold a mutex across its
//! `.await` (its work runs on sled's threads): a process with concurrent writers must still funnel every append
//! and flush through one writer that does them one after the other; the workflow service's committer does
//! (`workflow/src/service/committer.rs`, with the blocking `flush`). Reads may run concurrently with it.

//! # Hash chain (format `baton-log-v1`)
//! The hash of record `n` of a stream is
//!
//! ```text
//! h_n = SHA-256( "baton-log-v1"          12 ASCII bytes, the domain tag
//!             || stream                  16 bytes (the ULID, big-endian)
//!             || n                       u64 big-endian (the first record of a stream has n = 1)
//!             || h_{n-1}                 32 bytes (32 zero bytes for n = 1)
//!             || len(bytes)              u64 big-endian
//!             || bytes )                 the record's bytes, exactly as stored and exported
//! ```
//!
//! Only `bytes` has a variable length, and its length prefix makes the encoding unambiguous. The message id and
//! the global position are not hashed (an auditor holding only the events can verify them); `verify` protects them
//! by cross-checking them against the dedupe table and the global index, which hold the same facts.
//!
//! The domain tag names the hash encoding, not the layout: it stays `baton-log-v1` in format `baton-log-v2`.
//!
//! # Layout in sled (see [`layout`]; format `baton-log-v2`)
//! One tree, `log`, whose keys start with a table prefix: records (`r ++ stream ++ seq` → hash, prev hash,
//! global position, message id, bytes), heads (`h ++ stream` → last seq, last hash), global (`g ++ first global
//! position` → `stream ++ first seq ++ count`: one run per append), dedupe (`d ++ message id` → `stream ++ seq`)
//! and meta (format tag, next global position).
//! A log of format `baton-log-v1` (five trees, one per table) is migrated when it is opened (`migrate.rs`).

mod append;
mod error;
mod export;
mod hash;
pub mod layout;
mod migrate;
mod read;
mod snapshot;
mod types;
mod verify;
mod verify_fast;

pub use error::StoreError;
pub use export::{verify_export, ExportReport};
pub use hash::{chain_hash, DOMAIN_TAG, ZERO_HASH};
#[doc(hidden)]
pub use migrate::{MigrationStep, COPY_BATCH as MIGRATION_COPY_BATCH};
pub use read::StreamReader;
pub use types::{
    AppendOutcome, AppendedRecord, GlobalEntry, Hash, Head, NewRecord, Record, StreamId,
};
pub use verify::{TornTail, VerifyReport};

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// The log: a handle on one sled database. Cheap to clone; clones share the database and its writer mutex.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    /// The log's one tree (see [`layout`]).
    tree: sled::Tree,
    /// Held by every write and by `flush` (see "One writer at a time").
    writer: Arc<Mutex<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the log stored in directory `path`, creating it if needed.
    ///
    /// Fails with [`StoreError::Locked`] when another process holds the database, and with
    /// [`StoreError::Corruption`] when the directory holds a database of another format.
    ///
    /// A log of format `baton-log-v1` is migrated to `baton-log-v2` first (crash-safe: see `migrate.rs`).
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with_migration_hook(path, &mut |_| {})
    }

    /// [`Store::open`], calling `hook` after each step of a migration (for the migration's crash test).
    #[doc(hidden)]
    pub fn open_with_migration_hook(
        path: impl AsRef<Path>,
        hook: &mut dyn FnMut(MigrationStep),
    ) -> Result<Store, StoreError> {
        let path = path.as_ref();
        private_dir(path)?;
        snapshot::remove_unfinished(path).map_err(|e| StoreError::from(sled::Error::Io(e)))?;
        let db = match sled::Config::new().path(path).open() {
            Ok(db) => db,
            // sled reports its lock only through the message of an I/O error.
            Err(sled::Error::Io(e)) if e.to_string().starts_with("could not acquire lock") => {
                return Err(StoreError::Locked {
                    path: path.to_owned(),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let tree = layout::open_tree(&db)?;
        // Before `init_meta`: a v1 log's v2 tree is empty, and a format tag written there first would mark its
        // copy complete.
        migrate::run(&db, &tree, hook)?;
        layout::init_meta(&tree)?;
        private_files(path)?;
        Ok(Store {
            db,
            tree,
            writer: Arc::new(Mutex::new(())),
        })
    }

    /// The writer mutex (see "One writer at a time"). A panic while holding it cannot leave a half-written
    /// batch (a batch is applied whole or not at all), so a poisoned mutex is taken as it is.
    pub(crate) fn write_lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes every append made before this call durable (see the crate docs for what durable means), for all
    /// streams at once. Returns the number of bytes sled wrote.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let _writer = self.write_lock();
        Ok(self.db.flush()?)
    }

    /// Like [`Store::flush`], for async callers: the write happens on sled's own threads. Never call it
    /// concurrently with appends or other flushes (see "One writer at a time" in the crate docs).
    pub async fn flush_async(&self) -> Result<usize, StoreError> {
        Ok(self.db.flush_async().await?)
    }

    /// The bytes the log takes on disk (sled's data file and its blob files): a `stat` and a directory
    /// listing, no read of the data.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.db.size_on_disk()?)
    }
}

/// The log's folder is its owner's only (0700): created so, or tightened if
/// it exists. Nobody else may read the history or write into it.
fn private_dir(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| StoreError::from(sled::Error::Io(e)))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| StoreError::from(sled::Error::Io(e)))
}

/// sled creates its files with the process's umask; tighten them to 0600
/// (folders 0700). Files sled makes later are inside the 0700 folder.
fn private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |e: std::io::Error| StoreError::from(sled::Error::Io(e));
    for entry in std::fs::read_dir(path).map_err(io)? {
        let entry = entry.map_err(io)?;
        let mode = if entry.file_type().map_err(io)?.is_dir() {
            private_files(&entry.path())?;
            0o700
        } else {
            0o600
        };
        std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    Ok(())
}
