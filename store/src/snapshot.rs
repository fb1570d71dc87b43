//! sled 0.34.7 leaves a half-written snapshot behind when its process dies while writing one, and then refuses to
//! open the log (spacejam/sled#1387, #1527, #1533: "empty/corrupt snapshot file found", then
//! `Corruption { at: None }`).
//!
//! sled writes a snapshot in two moves: into `snap.<LSN>.generating`, synced, then renamed to `snap.<LSN>`; only
//! after the rename does it remove older snapshots and zero the log segments the new snapshot made free. At open
//! it reads the snapshot file whose name sorts last, and a `.generating` file sorts after the finished snapshot
//! of the same or a lower LSN. A `.generating` file is therefore always a leftover of a writer that died before
//! its rename, and nothing was freed on its account: removing it leaves the log as it was before that open,
//! readable from the older snapshot and the log. Baton hit this when the service was SIGKILLed during recovery,
//! which is when sled writes its snapshot.
//!
//! Removing files from under a live sled would break its rename, so the leftovers are removed only while this
//! process holds the lock sled itself takes (an exclusive `flock` on the `db` file); if another process holds
//! it, nothing is touched and sled's own open reports the lock.

use std::fs::File;
use std::path::Path;

use fs4::fs_std::FileExt as _;

/// Removes every `snap.*.generating` file in the log folder `path` if no other process holds the log.
pub(crate) fn remove_unfinished(path: &Path) -> std::io::Result<()> {
    let db = match File::open(path.join("db")) {
        Ok(db) => db,
        // No log yet: nothing to clean.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !db.try_lock_exclusive()? {
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
        }
    }
    // The lock goes with `db`'s descriptor; sled takes it again at once.
    db.unlock()
}
