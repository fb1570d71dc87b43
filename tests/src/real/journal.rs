//! The members' own action journals: the harnesses' member.sh (scripts/real/etcd, scripts/real/patroni) append
//! one line per change to `DIR/actions.log`, `UNIX_MS ACTION ARGS...`, whoever ran it (Baton or the manual
//! baseline): the record an upgrade is judged by.

use std::path::Path;

use anyhow::{bail, Context};

/// One line of a member's `actions.log`: what changed on it, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub at_unix_ms: u64,
    pub node: String,
    /// `stop`, `start`, `install`, `install-unchanged`; Patroni's also `pause`, `resume`, `switchover`.
    pub action: String,
    /// The version installed or started (empty for the others).
    pub version: String,
}

impl Action {
    /// Whether this action changed the member itself (stop, install, start), not the cluster around it.
    pub fn is_member_change(&self) -> bool {
        ["stop", "install", "install-unchanged", "start"].contains(&self.action.as_str())
    }
}

/// The journals of `nodes` (name, directory holding `actions.log`), merged in time order.
pub fn read<'a>(
    nodes: impl IntoIterator<Item = (&'a str, &'a Path)>,
) -> anyhow::Result<Vec<Action>> {
    let mut all = Vec::new();
    for (node, dir) in nodes {
        let path = dir.join("actions.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (at, action) = match f.as_slice() {
                [at, action, ..] => (at.parse::<u64>()?, action.to_string()),
                _ => bail!("{}: bad line {line:?}", path.display()),
            };
            let version = match action.as_str() {
                "start" => f.get(3),
                "install" | "install-unchanged" => f.get(2),
                _ => None,
            };
            all.push(Action {
                at_unix_ms: at,
                node: node.to_string(),
                action,
                version: version.map(|v| v.to_string()).unwrap_or_default(),
            });
        }
    }
    all.sort_by_key(|a| a.at_unix_ms);
    Ok(all)
}

/// The first instant after the last journalled action (0 for none): what a test's own actions come after.
pub fn after_last(actions: &[Action]) -> u64 {
    actions.last().map_or(0, |a| a.at_unix_ms + 1)
}
