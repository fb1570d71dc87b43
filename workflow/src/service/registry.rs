//! The running upgrade loops: who handles which upgrade, which cluster has an
//! upgrade in progress, and the join handles of every loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::upgrade::Command;
use super::ServiceError;

/// A handle on one upgrade loop.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::Sender<Command>,
    pub cluster: String,
}

impl Handle {
    pub async fn send(&self, command: Command) -> Result<(), mpsc::error::SendError<Command>> {
        self.tx.send(command).await
    }
}

#[derive(Default)]
struct Inner {
    by_upgrade: HashMap<String, Handle>,
    by_cluster: HashMap<String, String>,
}

/// Shared by the API handlers, the results pump and the loops themselves.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    loops: Arc<tokio::sync::Mutex<JoinSet<Result<(), ServiceError>>>>,
}

impl Registry {
    /// The loop of `upgrade`, if it runs.
    pub fn get(&self, upgrade: &str) -> Option<Handle> {
        self.lock().by_upgrade.get(upgrade).cloned()
    }

    /// Claims `cluster` for `upgrade`; fails with the upgrade that holds it.
    pub fn claim(&self, upgrade: &str, handle: Handle) -> Result<(), String> {
        let mut inner = self.lock();
        if let Some(holder) = inner.by_cluster.get(&handle.cluster) {
            return Err(holder.clone());
        }
        inner
            .by_cluster
            .insert(handle.cluster.clone(), upgrade.to_string());
        inner.by_upgrade.insert(upgrade.to_string(), handle);
        Ok(())
    }

    /// Forgets `upgrade` (it ended, or its submission was refused).
    pub fn release(&self, upgrade: &str) {
        let mut inner = self.lock();
        if let Some(handle) = inner.by_upgrade.remove(upgrade) {
            if inner.by_cluster.get(&handle.cluster).map(String::as_str) == Some(upgrade) {
                inner.by_cluster.remove(&handle.cluster);
            }
        }
    }

    /// Ids of the running upgrades.
    pub fn running(&self) -> Vec<String> {
        self.lock().by_upgrade.keys().cloned().collect()
    }

    /// Keeps the loop's join handle so that shutdown waits for it.
    pub async fn track(
        &self,
        task: impl std::future::Future<Output = Result<(), ServiceError>> + Send + 'static,
    ) {
        let mut loops = self.loops.lock().await;
        // Reap the loops that already ended, surfacing their errors in the logs.
        while let Some(done) = loops.try_join_next() {
            if let Ok(Err(err)) = done {
                tracing::error!(error = %super::anyhow_chain(&err), "an upgrade loop failed");
            }
        }
        loops.spawn(task);
    }

    /// Waits for every loop to end; returns the first error.
    pub async fn join_all(&self) -> Result<(), ServiceError> {
        let mut loops = self.loops.lock().await;
        let mut first = Ok(());
        while let Some(done) = loops.join_next().await {
            if let Ok(Err(err)) = done {
                if first.is_ok() {
                    first = Err(err);
                }
            }
        }
        first
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
