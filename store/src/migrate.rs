//! Opening a log of format `baton-log-v1` (five trees) migrates it to `baton-log-v2` (one tree, see [`layout`]).
//!
//! The v1 trees are only read until the copy is complete, so a crash at any point is safe:
//! 1. the v2 tree is cleared (it may hold a copy cut short by a crash) and flushed;
//! 2. the entries of the v1 trees are copied with their prefix, in batches of [`COPY_BATCH`] entries, each one
//!    atomic ([`sled::Tree::apply_batch`]) and flushed;
//! 3. the **last** batch holds the meta entries, the format tag `baton-log-v2` among them: the tag is the mark of
//!    a complete copy, written atomically with its last entries and flushed;
//! 4. the v1 trees are dropped and the database flushed.
//!
//! On open: a v2 tree with its format tag means the copy is complete (a crash after step 3 left v1 trees behind:
//! they are dropped again); v1 trees without the v2 tag mean the copy did not complete (or never started): it is
//! redone from step 1. Keys and values are copied byte for byte (only the prefix is added, the format tag's
//! value changes, and each v1 global entry becomes a run of one record), so every record keeps its hash and
//! `verify` checks the migrated log as any other.

use crate::error::StoreError;
use crate::layout::{self, v1};

/// Entries per migration batch.
pub const COPY_BATCH: usize = 8192;

/// How far a migration got; reported to the hook of [`crate::Store::open_with_migration_hook`] (the crash test
/// uses it to crash at each step).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationStep {
    /// The v2 tree was cleared and flushed.
    Cleared,
    /// A batch of entries was copied and flushed; `entries` copied so far.
    Copied { entries: u64 },
    /// The last batch (meta and the v2 format tag) was written and flushed.
    Complete,
    /// The v1 trees were dropped and the database flushed.
    Dropped,
}

/// Migrates a v1 log found in `db` into `tree`, or finishes a migration a crash interrupted; does nothing when
/// `db` holds no v1 tree.
pub(crate) fn run(
    db: &sled::Db,
    tree: &sled::Tree,
    hook: &mut dyn FnMut(MigrationStep),
) -> Result<(), StoreError> {
    let names = db.tree_names();
    let present: Vec<&str> = v1::TREES
        .into_iter()
        .filter(|n| names.iter().any(|x| x.as_ref() == n.as_bytes()))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    match tree.get(layout::META_FORMAT)? {
        Some(f) if f.as_ref() == layout::FORMAT_TAG => return drop_v1(db, &present, hook),
        Some(f) => {
            return Err(StoreError::corrupt_index(format!(
                "meta format is {:?}, expected {:?}",
                String::from_utf8_lossy(&f),
                String::from_utf8_lossy(layout::FORMAT_TAG)
            )))
        }
        None => {}
    }
    let trees: Vec<(u8, sled::Tree)> = present
        .iter()
        .map(|name| {
            let prefix = v1::prefix_of(name).expect("a v1 tree name");
            Ok((prefix, db.open_tree(name)?))
        })
        .collect::<Result<_, StoreError>>()?;
    let v1_format = match trees.iter().find(|(p, _)| *p == layout::META) {
        Some((_, meta)) => meta.get(v1::META_FORMAT)?,
        None => None,
    };
    match v1_format {
        Some(f) if f.as_ref() == v1::FORMAT_TAG => {}
        Some(f) => {
            return Err(StoreError::corrupt_index(format!(
                "v1 meta format is {:?}, expected {:?}",
                String::from_utf8_lossy(&f),
                String::from_utf8_lossy(v1::FORMAT_TAG)
            )))
        }
        None if trees.iter().all(|(_, t)| t.is_empty()) => return drop_v1(db, &present, hook),
        None => {
            return Err(StoreError::corrupt_index(
                "a baton-log-v1 log without its format tag: not migrated",
            ))
        }
    }

    tree.clear()?;
    db.flush()?;
    hook(MigrationStep::Cleared);
    let mut batch = sled::Batch::default();
    let mut in_batch = 0usize;
    let mut copied = 0u64;
    // Meta last: its format tag marks the copy complete.
    for (prefix, t) in trees.iter().filter(|(p, _)| *p != layout::META) {
        for kv in t.iter() {
            let (k, v) = kv?;
            if *prefix == layout::GLOBAL && v.len() == 24 {
                // A v1 global entry is a run of one record; anything else is copied as it is (and `verify`
                // reports it).
                let mut run = v.to_vec();
                run.extend_from_slice(&1u64.to_be_bytes());
                batch.insert(layout::prefixed(*prefix, &k), run);
            } else {
                batch.insert(layout::prefixed(*prefix, &k), v);
            }
            in_batch += 1;
            if in_batch == COPY_BATCH {
                tree.apply_batch(std::mem::take(&mut batch))?;
                db.flush()?;
                copied += in_batch as u64;
                in_batch = 0;
                hook(MigrationStep::Copied { entries: copied });
            }
        }
    }
    if let Some((_, meta)) = trees.iter().find(|(p, _)| *p == layout::META) {
        for kv in meta.iter() {
            let (k, v) = kv?;
            if k.as_ref() != v1::META_FORMAT {
                batch.insert(layout::prefixed(layout::META, &k), v);
            }
        }
    }
    batch.insert(layout::META_FORMAT, layout::FORMAT_TAG.as_slice());
    tree.apply_batch(batch)?;
    db.flush()?;
    hook(MigrationStep::Complete);
    drop(trees);
    drop_v1(db, &present, hook)
}

fn drop_v1(
    db: &sled::Db,
    present: &[&str],
    hook: &mut dyn FnMut(MigrationStep),
) -> Result<(), StoreError> {
    for name in present {
        db.drop_tree(name)?;
    }
    db.flush()?;
    hook(MigrationStep::Dropped);
    Ok(())
}
