//! The running upgrade loops: who handles which upgrade, which cluster and
//! which nodes have an upgrade in progress, and the join handles of every loop.
//!
//! The one-upgrade-per-cluster lock is on node identity, not on the cluster
//! file's name: a node is held by its address and by its executor group, so
//! the same nodes under another cluster name (or one node shared by two
//! cluster files) cannot be upgraded twice at once.

use std::collections::HashMap;
use std::fmt;
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

/// What identifies a node across cluster files.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum NodeKey {
    Address(String),
    Executor(String),
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeKey::Address(address) => write!(f, "address {address}"),
            NodeKey::Executor(group) => write!(f, "executor group {group}"),
        }
    }
}

/// The upgrade that holds a node key, and under which names.
#[derive(Clone, Debug)]
struct Holder {
    upgrade: String,
    cluster: String,
    node: String,
}

/// One node of a submission: its name in the cluster file, its address and its
/// executor group.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    pub name: String,
    pub address: String,
    pub executor: String,
}

impl From<&crate::core::NodeSpec> for NodeIdentity {
    fn from(spec: &crate::core::NodeSpec) -> Self {
        NodeIdentity {
            name: spec.name.clone(),
            address: spec.address.clone(),
            executor: spec.executor.clone(),
        }
    }
}

/// Nodes of a submission held by upgrades in progress.
#[derive(Clone, Debug)]
pub struct NodesHeld {
    /// (node of the submission, the key it shares, the holder).
    clashes: Vec<(String, NodeKey, Holder)>,
}

impl fmt::Display for NodesHeld {
    /// One clause per upgrade holding nodes, each node once with every key
    /// it shares: `upgrade U in progress (cluster prod) holds node backend-1
    /// (address 10.0.0.1, executor group backend-1), node x (address
    /// 10.0.0.2) as node backend-2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // (holder upgrade, its cluster) -> [(node, holder's node name, keys)], in order of appearance.
        type Held<'a> = Vec<(&'a str, &'a str, Vec<&'a NodeKey>)>;
        let mut by_holder: Vec<((&str, &str), Held)> = Vec::new();
        for (node, key, holder) in &self.clashes {
            let id = (holder.upgrade.as_str(), holder.cluster.as_str());
            let index = match by_holder.iter().position(|(h, _)| *h == id) {
                Some(index) => index,
                None => {
                    by_holder.push((id, Vec::new()));
                    by_holder.len() - 1
                }
            };
            let nodes = &mut by_holder[index].1;
            match nodes
                .iter_mut()
                .find(|(n, theirs, _)| *n == node && *theirs == holder.node)
            {
                Some((_, _, keys)) => keys.push(key),
                None => nodes.push((node, &holder.node, vec![key])),
            }
        }
        for (i, ((upgrade, cluster), nodes)) in by_holder.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "upgrade {upgrade} in progress (cluster {cluster}) holds "
            )?;
            for (j, (node, theirs, keys)) in nodes.iter().enumerate() {
                if j > 0 {
                    f.write_str(", ")?;
                }
                let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
                write!(f, "node {node} ({})", keys.join(", "))?;
                if node != theirs {
                    write!(f, " as node {theirs}")?;
                }
            }
        }
        Ok(())
    }
}

#[derive(Default)]
struct Inner {
    by_upgrade: HashMap<String, Handle>,
    by_cluster: HashMap<String, String>,
    by_node: HashMap<NodeKey, Holder>,
}

impl Inner {
    fn clashes(&self, nodes: &[NodeIdentity]) -> Vec<(String, NodeKey, Holder)> {
        let mut clashes = Vec::new();
        for node in nodes {
            for key in keys(node) {
                if let Some(holder) = self.by_node.get(&key) {
                    clashes.push((node.name.clone(), key, holder.clone()));
                }
            }
        }
        clashes
    }
}

fn keys(node: &NodeIdentity) -> [NodeKey; 2] {
    [
        NodeKey::Address(node.address.trim().to_ascii_lowercase()),
        NodeKey::Executor(node.executor.clone()),
    ]
}

/// Shared by the API handlers, the results pump and the loops themselves.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
    loops: Arc<tokio::sync::Mutex<Loops>>,
}

/// The loops' tasks, and the first error of one reaped before `join_all` (kept for it: a loop that failed
/// closed must fail the service's exit, however its end was noticed).
#[derive(Default)]
struct Loops {
    tasks: JoinSet<Result<(), ServiceError>>,
    reaped_error: Option<ServiceError>,
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

    /// Claims every node of `nodes` (by address and by executor group) for
    /// `upgrade` of `cluster`, all or none; fails naming each node already
    /// held and the upgrade holding it.
    pub fn claim_nodes(
        &self,
        upgrade: &str,
        cluster: &str,
        nodes: &[NodeIdentity],
    ) -> Result<(), NodesHeld> {
        let mut inner = self.lock();
        let clashes: Vec<_> = inner
            .clashes(nodes)
            .into_iter()
            .filter(|(_, _, holder)| holder.upgrade != upgrade)
            .collect();
        if !clashes.is_empty() {
            return Err(NodesHeld { clashes });
        }
        for node in nodes {
            for key in keys(node) {
                inner.by_node.insert(
                    key,
                    Holder {
                        upgrade: upgrade.to_string(),
                        cluster: cluster.to_string(),
                        node: node.name.clone(),
                    },
                );
            }
        }
        Ok(())
    }

    /// Forgets `upgrade` (it ended, or its submission was refused): its
    /// loop, its cluster name and its nodes.
    pub fn release(&self, upgrade: &str) {
        let mut inner = self.lock();
        if let Some(handle) = inner.by_upgrade.remove(upgrade) {
            if inner.by_cluster.get(&handle.cluster).map(String::as_str) == Some(upgrade) {
                inner.by_cluster.remove(&handle.cluster);
            }
        }
        inner.by_node.retain(|_, holder| holder.upgrade != upgrade);
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
        // Reap the loops that already ended, surfacing their errors in the logs; the first is kept for
        // `join_all`.
        while let Some(done) = loops.tasks.try_join_next() {
            if let Ok(Err(err)) = done {
                tracing::error!(error = %super::anyhow_chain(&err), "an upgrade loop failed");
                loops.reaped_error.get_or_insert(err);
            }
        }
        loops.tasks.spawn(task);
    }

    /// Waits for every loop to end; returns the first error (one reaped by `track` first).
    pub async fn join_all(&self) -> Result<(), ServiceError> {
        let mut loops = self.loops.lock().await;
        let mut first = loops.reaped_error.take().map_or(Ok(()), Err);
        while let Some(done) = loops.tasks.join_next().await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, address: &str, executor: &str) -> NodeIdentity {
        NodeIdentity {
            name: name.into(),
            address: address.into(),
            executor: executor.into(),
        }
    }

    fn three(prefix: &str, net: &str) -> Vec<NodeIdentity> {
        (1..=3)
            .map(|i| {
                node(
                    &format!("backend-{i}"),
                    &format!("{net}.{i}"),
                    &format!("{prefix}-{i}"),
                )
            })
            .collect()
    }

    #[test]
    fn the_same_nodes_under_another_name_are_refused_naming_node_and_holder() {
        let registry = Registry::default();
        registry
            .claim_nodes("U1", "prod", &three("b", "10.0.0"))
            .unwrap();
        let held = registry
            .claim_nodes("U2", "prod-again", &three("b", "10.0.0"))
            .unwrap_err();
        let text = held.to_string();
        assert_eq!(
            text,
            "upgrade U1 in progress (cluster prod) holds \
             node backend-1 (address 10.0.0.1, executor group b-1), \
             node backend-2 (address 10.0.0.2, executor group b-2), \
             node backend-3 (address 10.0.0.3, executor group b-3)"
        );
        // Refused all or none: U2 holds nothing.
        registry.release("U1");
        registry
            .claim_nodes("U3", "prod", &three("b", "10.0.0"))
            .unwrap();
    }

    #[test]
    fn one_shared_address_or_executor_group_is_enough_to_refuse() {
        let registry = Registry::default();
        registry
            .claim_nodes("U1", "a", &three("a", "10.0.0"))
            .unwrap();
        let by_address = vec![node("x", "10.0.0.2", "x")];
        let text = registry
            .claim_nodes("U2", "b", &by_address)
            .unwrap_err()
            .to_string();
        assert!(text.contains("node x (address 10.0.0.2)"), "{text}");
        assert!(text.contains("node backend-2"), "{text}");
        let by_group = vec![node("y", "10.9.9.9", "a-3")];
        let text = registry
            .claim_nodes("U2", "b", &by_group)
            .unwrap_err()
            .to_string();
        assert!(text.contains("node y (executor group a-3)"), "{text}");
        // Other addresses and groups run side by side.
        registry
            .claim_nodes("U2", "b", &three("b", "10.0.1"))
            .unwrap();
    }

    /// Hostile review 9 #2: a loop that failed closed and was reaped by a later `track` (a resume during recovery)
    /// still fails `join_all`, so that the service exits non-zero rather than 0.
    #[tokio::test]
    async fn a_loop_error_reaped_by_track_is_still_returned_by_join_all() {
        let registry = Registry::default();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        registry
            .track(async move {
                let _ = done_tx.send(());
                Err(ServiceError::Internal(
                    "the log could not be written".into(),
                ))
            })
            .await;
        done_rx.await.unwrap();
        // Another loop tracked once the failed one has ended reaps it (as a resume does during recovery).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            registry.track(async { Ok(()) }).await;
            if registry.loops.lock().await.reaped_error.is_some() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failing loop was never reaped"
            );
            tokio::task::yield_now().await;
        }
        let joined = registry.join_all().await;
        assert!(
            matches!(&joined, Err(ServiceError::Internal(m)) if m.contains("could not be written")),
            "{joined:?}"
        );
    }
}
