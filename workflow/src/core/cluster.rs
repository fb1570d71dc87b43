//! The cluster file (TOML): the cluster's name and profile, its nodes, and the upgrade options. Parsing keeps
//! toml's spans so that every error names the file, the line and the field.
//!
//! ```toml
//! [cluster]
//! name = "prod-backend"
//! profile = "chef-backend"
//!
//! [[nodes]]
//! name = "backend-1"
//! address = "192.168.33.215"
//! executor = "backend-1"
//! vars = { ssh_user = "ops" }
//!
//! [upgrade]
//! package = "/var/tmp/chef-backend_3.1.0-1_amd64.deb"
//! installer = "dpkg"            # or "yum"
//! procedure = "runbook"         # or "upgrade-command"
//! gates = ["before-switchover"] # or "after-first-follower"
//! [upgrade.timeouts_ms]
//! install = 600000
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::builtin::{self, Installer};
use super::error::CoreError;
use super::profile::{Action, Procedure};

/// Check that `value` may be a node name or an executor group: one NATS subject token, spelled conservatively
/// as `[A-Za-z0-9_-]{1,128}` (no whitespace, `.`, `*`, `>`, control or non-ASCII characters). The same rule as
/// `protocol::subjects::validate_token` (the pure core cannot depend on the wire crate; a test keeps them equal):
/// groups become subjects (`baton.step.<group>`) and consumer names, and node names travel in step requests
/// that executors check with that rule.
pub fn check_name(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("empty");
    }
    if value.len() > 128 {
        return Err("longer than 128 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("only ASCII letters, digits, '-' and '_' are allowed");
    }
    Ok(())
}

/// An approval gate: the upgrade waits at it until an operator approves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// After the first follower is upgraded and synced (a canary).
    AfterFirstFollower,
    /// Before the switchover away from the leader.
    BeforeSwitchover,
}

impl Gate {
    /// The name used in files, on the command line and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::AfterFirstFollower => "after-first-follower",
            Gate::BeforeSwitchover => "before-switchover",
        }
    }

    /// The gate named `name`, if any.
    pub fn from_name(name: &str) -> Option<Gate> {
        [Gate::AfterFirstFollower, Gate::BeforeSwitchover]
            .into_iter()
            .find(|g| g.as_str() == name)
    }
}

impl fmt::Display for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed and validated cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The cluster's name.
    pub name: String,
    /// The profile name (`chef-backend` is the only built-in one).
    pub profile: String,
    /// The nodes, in file order (followers are upgraded in this order).
    pub nodes: Vec<NodeSpec>,
    /// How to upgrade.
    pub upgrade: UpgradeOptions,
    /// The text of the profile file `profile` names (`None` for a built-in profile). A cluster file never
    /// holds it: whoever submits reads the profile file beside the cluster file and sends it along, so the log
    /// holds exactly the profile the upgrade ran and the plan hash covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile_text: Option<String>,
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Name as `cluster-status` shows it.
    pub name: String,
    /// Address (for `{address}` and for the operator).
    pub address: String,
    /// The executor group whose executors run this node's steps.
    pub executor: String,
    /// Free variables for `{var.NAME}`.
    pub vars: BTreeMap<String, String>,
}

/// Upgrade options; every field has a default except the package, which `baton submit` may also give.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeOptions {
    /// Path of the package on the nodes.
    pub package: Option<String>,
    /// Target version `X.Y.Z-R`; by default the version named by the package file.
    pub target_version: Option<String>,
    /// The package tool.
    pub installer: Installer,
    /// The documented procedure to follow.
    pub procedure: Procedure,
    /// Per-action timeout overrides, by action name.
    pub timeouts_ms: BTreeMap<Action, u64>,
    /// How long to wait between health polls.
    pub poll_interval_ms: u64,
    /// How long a node may take to become healthy and synced (also bounds the switchover checks).
    pub sync_timeout_ms: u64,
    /// How long after a step's own timeout its result may still arrive before it counts as unknown.
    pub result_grace_ms: u64,
    /// How long the cluster may show no leader before Baton, if it has failover blocked, re-enables failover at
    /// once and halts (S3's emergency exit). chef-backend's leader TTL is 10 s.
    #[serde(default = "default_election_window_ms")]
    pub election_window_ms: u64,
    /// The cluster file names a profile file and does not set `election_window_ms`: the profile's
    /// `election_ms` applies (`Submission::election_window_ms`). Recorded only when true, so a built-in
    /// profile's submissions (and every log recorded before it existed) keep their exact form.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub election_window_from_profile: bool,
    /// Retries for idempotent steps (0 = no retry).
    pub retries: u32,
    /// First retry delay; it doubles on each further retry.
    pub backoff_ms: u64,
    /// Approval gates.
    pub gates: Vec<Gate>,
}

/// The largest cluster file accepted, in bytes (hundreds of nodes fit).
pub const MAX_CLUSTER_FILE_BYTES: usize = 64 * 1024;

/// The longest any timing option of the cluster file may be: 7 days in ms.
/// Every deadline is also computed with saturating arithmetic, so even a
/// replayed log with larger values cannot overflow.
pub const MAX_DURATION_MS: u64 = 7 * 24 * 3600 * 1000;

fn default_election_window_ms() -> u64 {
    10_000
}

impl Default for UpgradeOptions {
    fn default() -> Self {
        UpgradeOptions {
            package: None,
            target_version: None,
            installer: Installer::Dpkg,
            procedure: Procedure::Runbook,
            timeouts_ms: BTreeMap::new(),
            poll_interval_ms: 2_000,
            sync_timeout_ms: 600_000,
            result_grace_ms: 10_000,
            election_window_ms: default_election_window_ms(),
            election_window_from_profile: false,
            retries: 2,
            backoff_ms: 1_000,
            gates: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
    upgrade: Option<Spanned<RawUpgrade>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    #[serde(default)]
    profile: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    address: Spanned<String>,
    executor: Spanned<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpgrade {
    package: Option<Spanned<String>>,
    target_version: Option<Spanned<String>>,
    installer: Option<Spanned<String>>,
    procedure: Option<Spanned<String>>,
    #[serde(default)]
    timeouts_ms: BTreeMap<Spanned<String>, Spanned<u64>>,
    poll_interval_ms: Option<Spanned<u64>>,
    sync_timeout_ms: Option<Spanned<u64>>,
    result_grace_ms: Option<Spanned<u64>>,
    election_window_ms: Option<Spanned<u64>>,
    retries: Option<Spanned<u32>>,
    backoff_ms: Option<Spanned<u64>>,
    #[serde(default)]
    gates: Vec<Spanned<String>>,
}

/// Locates a TOML error by file, line and key (the cluster file's and profile files' loaders).
pub(super) struct Locator<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl Locator<'_> {
    /// The `[table]` header nearest above `span` (a key's table), if any.
    pub(super) fn table_at(&self, span: &Range<usize>) -> Option<String> {
        let end = span.start.min(self.text.len());
        self.text[..end].lines().rev().find_map(|line| {
            let line = line.trim();
            let inner = line.strip_prefix('[')?.strip_suffix(']')?;
            Some(inner.trim_matches(['[', ']']).trim().to_string())
        })
    }

    /// The 1-based line of `span`; an error at the very end of a file that
    /// ends in a newline (an unterminated string) is on its last line, not
    /// one past it (found by the 1,000,000-input fuzz run).
    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        let line = self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        line.min(self.text.lines().count().max(1))
    }

    pub(super) fn err(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> CoreError {
        CoreError::Config {
            file: self.file.to_string(),
            line: span.map(|s| self.line(&s)),
            field: field.into(),
            message: message.into(),
        }
    }

    fn non_empty(&self, value: &Spanned<String>, field: &str) -> Result<String, CoreError> {
        let text = value.get_ref().trim();
        if text.is_empty() {
            return Err(self.err(Some(value.span()), field, "must not be empty"));
        }
        Ok(text.to_string())
    }

    /// A node name or executor group must be one NATS subject token ([`check_name`]).
    fn name(&self, value: &Spanned<String>, text: &str, field: &str) -> Result<(), CoreError> {
        check_name(text).map_err(|reason| {
            self.err(
                Some(value.span()),
                field,
                format!("invalid name `{text}`: {reason} (it is used as a NATS subject token)"),
            )
        })
    }

    fn positive(
        &self,
        value: &Option<Spanned<u64>>,
        field: &str,
        default: u64,
    ) -> Result<u64, CoreError> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() == 0 => {
                Err(self.err(Some(v.span()), field, "must be greater than 0"))
            }
            Some(v) if *v.get_ref() > MAX_DURATION_MS => Err(self.err(
                Some(v.span()),
                field,
                format!("must be at most {MAX_DURATION_MS} (7 days, in ms)"),
            )),
            Some(v) => Ok(*v.get_ref()),
        }
    }
}

/// The field path of a serde error message like "unknown field `x`, expected one of ..." is in the message;
/// toml's own message also names the key, so it is kept whole.
pub(super) fn toml_field(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some(end) = rest.find('`') {
            return rest[..end].to_string();
        }
    }
    "(file)".to_string()
}

impl ClusterFile {
    /// Parses and validates a cluster file; `file_name` is only used in error messages.
    pub fn parse(file_name: &str, text: &str) -> Result<ClusterFile, CoreError> {
        let loc = Locator {
            file: file_name,
            text,
        };
        if text.len() > MAX_CLUSTER_FILE_BYTES {
            return Err(loc.err(
                None,
                "(file)",
                format!(
                    "the file is {} bytes; a cluster file may have at most {MAX_CLUSTER_FILE_BYTES}",
                    text.len()
                ),
            ));
        }
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            loc.err(e.span(), toml_field(&message), message)
        })?;

        let cluster = raw.cluster.get_ref();
        let name = loc.non_empty(&cluster.name, "cluster.name")?;
        let profile = match &cluster.profile {
            None => builtin::DEFAULT.to_string(),
            Some(p) if builtin::NAMES.contains(&p.get_ref().as_str()) => p.get_ref().clone(),
            // A profile file (docs/profiles.md), relative to the cluster file; its reader loads it.
            Some(p) if p.get_ref().ends_with(".toml") && !p.get_ref().trim().is_empty() => {
                p.get_ref().clone()
            }
            Some(p) => {
                return Err(loc.err(
                    Some(p.span()),
                    "cluster.profile",
                    format!(
                        "unknown profile `{}` (built in: {}; or a profile file's path, ending in .toml)",
                        p.get_ref(),
                        builtin::NAMES.join(", ")
                    ),
                ))
            }
        };

        if raw.nodes.is_empty() {
            return Err(loc.err(
                Some(raw.cluster.span()),
                "nodes",
                "at least one [[nodes]] entry is required",
            ));
        }
        let mut nodes = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, node) in raw.nodes.iter().enumerate() {
            let n = node.get_ref();
            let field = |f: &str| format!("nodes[{}].{f}", i + 1);
            let name = loc.non_empty(&n.name, &field("name"))?;
            if !seen.insert(name.clone()) {
                return Err(loc.err(
                    Some(n.name.span()),
                    field("name"),
                    format!("duplicate node name `{name}`"),
                ));
            }
            loc.name(&n.name, &name, &field("name"))?;
            let address = loc.non_empty(&n.address, &field("address"))?;
            let executor = loc.non_empty(&n.executor, &field("executor"))?;
            loc.name(&n.executor, &executor, &field("executor"))?;
            let vars = n
                .vars
                .iter()
                .map(|(k, v)| (k.clone(), v.get_ref().clone()))
                .collect();
            nodes.push(NodeSpec {
                name,
                address,
                executor,
                vars,
            });
        }

        let mut upgrade = UpgradeOptions::default();
        if let Some(raw_up) = &raw.upgrade {
            let u = raw_up.get_ref();
            if let Some(p) = &u.package {
                upgrade.package = Some(loc.non_empty(p, "upgrade.package")?);
            }
            if let Some(v) = &u.target_version {
                let version = loc.non_empty(v, "upgrade.target_version")?;
                // A profile file's system numbers its versions its own way (etcd 3.5.17, PostgreSQL 15.20):
                // only the leading dotted numbers are compared. chef-backend's are UPSTREAM-RELEASE.
                if profile.ends_with(".toml") {
                    if super::profile_file::version_numbers(&version).is_none() {
                        return Err(loc.err(
                            Some(v.span()),
                            "upgrade.target_version",
                            "expected a version starting with a number, like 3.5.17",
                        ));
                    }
                    upgrade.target_version = Some(version.trim().to_string());
                } else {
                    if super::version::normalize_version(&version).is_none() {
                        return Err(loc.err(
                            Some(v.span()),
                            "upgrade.target_version",
                            "expected a version like 3.1.0-1",
                        ));
                    }
                    upgrade.target_version = super::version::normalize_version(&version);
                }
            }
            if let Some(i) = &u.installer {
                upgrade.installer = Installer::from_name(i.get_ref())
                    .map_err(|why| loc.err(Some(i.span()), "upgrade.installer", why))?;
            }
            if let Some(p) = &u.procedure {
                upgrade.procedure = match p.get_ref().as_str() {
                    "runbook" => Procedure::Runbook,
                    "upgrade-command" => Procedure::UpgradeCommand,
                    other => {
                        return Err(loc.err(
                            Some(p.span()),
                            "upgrade.procedure",
                            format!(
                                "unknown procedure `{other}` (expected runbook or upgrade-command)"
                            ),
                        ))
                    }
                };
            }
            for (key, value) in &u.timeouts_ms {
                let field = format!("upgrade.timeouts_ms.{}", key.get_ref());
                let Some(action) = Action::from_name(key.get_ref()) else {
                    let names: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                    return Err(loc.err(
                        Some(key.span()),
                        field,
                        format!("unknown action (expected one of {})", names.join(", ")),
                    ));
                };
                if *value.get_ref() == 0 {
                    return Err(loc.err(Some(value.span()), field, "must be greater than 0"));
                }
                if *value.get_ref() > MAX_DURATION_MS {
                    return Err(loc.err(
                        Some(value.span()),
                        field,
                        format!("must be at most {MAX_DURATION_MS} (7 days, in ms)"),
                    ));
                }
                upgrade.timeouts_ms.insert(action, *value.get_ref());
            }
            let d = UpgradeOptions::default();
            upgrade.poll_interval_ms = loc.positive(
                &u.poll_interval_ms,
                "upgrade.poll_interval_ms",
                d.poll_interval_ms,
            )?;
            upgrade.sync_timeout_ms = loc.positive(
                &u.sync_timeout_ms,
                "upgrade.sync_timeout_ms",
                d.sync_timeout_ms,
            )?;
            upgrade.result_grace_ms = loc.positive(
                &u.result_grace_ms,
                "upgrade.result_grace_ms",
                d.result_grace_ms,
            )?;
            upgrade.election_window_ms = loc.positive(
                &u.election_window_ms,
                "upgrade.election_window_ms",
                d.election_window_ms,
            )?;
            upgrade.backoff_ms = loc.positive(&u.backoff_ms, "upgrade.backoff_ms", d.backoff_ms)?;
            if let Some(r) = &u.retries {
                if *r.get_ref() > 10 {
                    return Err(loc.err(Some(r.span()), "upgrade.retries", "must be at most 10"));
                }
                upgrade.retries = *r.get_ref();
            }
            for (i, g) in u.gates.iter().enumerate() {
                let Some(gate) = Gate::from_name(g.get_ref()) else {
                    return Err(loc.err(
                        Some(g.span()),
                        format!("upgrade.gates[{}]", i + 1),
                        format!("unknown gate `{}` (expected after-first-follower or before-switchover)", g.get_ref()),
                    ));
                };
                if !upgrade.gates.contains(&gate) {
                    upgrade.gates.push(gate);
                }
            }
        }
        // Also without an `[upgrade]` table (package and target given at submit).
        upgrade.election_window_from_profile = profile.ends_with(".toml")
            && raw
                .upgrade
                .as_ref()
                .is_none_or(|u| u.get_ref().election_window_ms.is_none());

        Ok(ClusterFile {
            name,
            profile,
            nodes,
            upgrade,
            profile_text: None,
        })
    }

    /// Whether `profile` names a profile file rather than a built-in profile.
    pub fn profile_is_file(&self) -> bool {
        self.profile.ends_with(".toml")
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_at_the_end_of_the_file_is_on_its_last_line() {
        let text = format!("{GOOD}\nnote = \"\"\"\n");
        let last = text.lines().count();
        match ClusterFile::parse("c.toml", &text) {
            Err(CoreError::Config { line, .. }) => assert_eq!(line, Some(last), "{text}"),
            other => panic!("an unterminated string is a located error: {other:?}"),
        }
    }

    const GOOD: &str = r#"
[cluster]
name = "prod"
profile = "chef-backend"

[[nodes]]
name = "backend-1"
address = "10.0.0.1"
executor = "g1"
vars = { ssh_user = "ops" }

[[nodes]]
name = "backend-2"
address = "10.0.0.2"
executor = "g2"

[upgrade]
package = "/tmp/chef-backend_3.1.0-1_amd64.deb"
procedure = "upgrade-command"
installer = "yum"
poll_interval_ms = 500
gates = ["before-switchover", "after-first-follower"]
[upgrade.timeouts_ms]
install = 1234
"#;

    #[test]
    fn parses_a_complete_file() {
        let c = ClusterFile::parse("cluster.toml", GOOD).unwrap();
        assert_eq!(c.name, "prod");
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[0].vars["ssh_user"], "ops");
        assert_eq!(c.upgrade.procedure, Procedure::UpgradeCommand);
        assert_eq!(c.upgrade.installer, Installer::Yum);
        assert_eq!(c.upgrade.poll_interval_ms, 500);
        assert_eq!(c.upgrade.timeouts_ms[&Action::Install], 1234);
        assert_eq!(
            c.upgrade.gates,
            vec![Gate::BeforeSwitchover, Gate::AfterFirstFollower]
        );
        assert_eq!(c.upgrade.retries, 2);
    }

    fn error_of(text: &str) -> String {
        ClusterFile::parse("cluster.toml", text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn validation_errors_name_file_line_and_field() {
        let text = GOOD.replace("executor = \"g2\"", "executor = \"  \"");
        assert_eq!(
            error_of(&text),
            "cluster.toml:15: nodes[2].executor: must not be empty"
        );
        let text = GOOD.replace("name = \"backend-2\"", "name = \"backend-1\"");
        assert_eq!(
            error_of(&text),
            "cluster.toml:13: nodes[2].name: duplicate node name `backend-1`"
        );
        let text = GOOD.replace("install = 1234", "instal = 1234");
        assert!(error_of(&text)
            .starts_with("cluster.toml:24: upgrade.timeouts_ms.instal: unknown action"));
        let text = GOOD.replace("\"after-first-follower\"", "\"after-lunch\"");
        assert!(error_of(&text)
            .starts_with("cluster.toml:22: upgrade.gates[2]: unknown gate `after-lunch`"));
        let text = GOOD.replace("\"yum\"", "\"apt\"");
        assert!(error_of(&text)
            .starts_with("cluster.toml:20: upgrade.installer: unknown installer `apt`"));
    }

    #[test]
    fn node_names_and_executor_groups_must_be_subject_tokens() {
        let text = GOOD.replace("executor = \"g2\"", "executor = \"x y\"");
        assert_eq!(
            error_of(&text),
            "cluster.toml:15: nodes[2].executor: invalid name `x y`: only ASCII letters, digits, '-' and '_' are \
             allowed (it is used as a NATS subject token)"
        );
        for bad in ["g.2", "g*", "g>", "g\\t2", "ü"] {
            let text = GOOD.replace("executor = \"g2\"", &format!("executor = \"{bad}\""));
            assert!(
                error_of(&text).starts_with("cluster.toml:15: nodes[2].executor: invalid name"),
                "{bad:?}: {}",
                error_of(&text)
            );
        }
        let text = GOOD.replace("name = \"backend-2\"", "name = \"backend-2.example.com\"");
        assert!(error_of(&text).starts_with("cluster.toml:13: nodes[2].name: invalid name"));
        let text = GOOD.replace("name = \"backend-2\"", "name = \"backend 2\"");
        assert!(error_of(&text).starts_with("cluster.toml:13: nodes[2].name: invalid name"));
    }

    /// The core's rule and the wire crate's are the same rule.
    #[test]
    fn timing_options_are_bounded_naming_the_limit() {
        let e = error_of(&GOOD.replace(
            "poll_interval_ms = 500",
            "poll_interval_ms = 18446744073709551615",
        ));
        assert!(
            e.contains("upgrade.poll_interval_ms: must be at most 604800000"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("install = 1234", "install = 604800001"));
        assert!(
            e.contains("upgrade.timeouts_ms.install: must be at most 604800000"),
            "{e}"
        );
        assert!(ClusterFile::parse(
            "c.toml",
            &GOOD.replace("poll_interval_ms = 500", "poll_interval_ms = 604800000")
        )
        .is_ok());
    }

    /// The profile's `election_ms` applies when a profile-file cluster leaves `election_window_ms` unset, with
    /// or without an `[upgrade]` table; never for the built-in profile (its recorded form is unchanged).
    #[test]
    fn the_election_window_comes_from_the_profile_only_when_a_profile_file_cluster_leaves_it_unset()
    {
        let nodes = "[[nodes]]\nname = \"a\"\naddress = \"a:1\"\nexecutor = \"a\"\n";
        let flag = |profile: &str, upgrade: &str| {
            let text =
                format!("[cluster]\nname = \"c\"\nprofile = \"{profile}\"\n{nodes}{upgrade}");
            ClusterFile::parse("c.toml", &text)
                .unwrap()
                .upgrade
                .election_window_from_profile
        };
        assert!(flag("etcd.toml", ""));
        assert!(flag("etcd.toml", "[upgrade]\npoll_interval_ms = 100\n"));
        assert!(!flag(
            "etcd.toml",
            "[upgrade]\nelection_window_ms = 10000\n"
        ));
        assert!(!flag("chef-backend", ""));
        assert!(!flag("chef-backend", "[upgrade]\npoll_interval_ms = 100\n"));
    }

    #[test]
    fn an_oversized_cluster_file_is_refused_naming_the_limit() {
        let big = format!("{GOOD}\n# {}\n", "x".repeat(MAX_CLUSTER_FILE_BYTES));
        let e = error_of(&big);
        assert!(e.contains("a cluster file may have at most 65536"), "{e}");
    }

    #[cfg(feature = "service")]
    #[test]
    fn check_name_agrees_with_the_protocol_crate() {
        let long = "a".repeat(129);
        for sample in [
            "",
            "a",
            "backend-1",
            "g_2",
            "A-z_0",
            "a b",
            "a.b",
            "*",
            ">",
            "a\tb",
            "a\u{7f}",
            "ü",
            "a:b",
            "a/b",
            &long[..128],
            &long,
        ] {
            assert_eq!(
                check_name(sample).is_ok(),
                protocol::subjects::validate_token(sample).is_ok(),
                "{sample:?}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let text = GOOD.replace("address = \"10.0.0.2\"", "adress = \"10.0.0.2\"");
        let e = error_of(&text);
        assert!(e.starts_with("cluster.toml:"), "{e}");
        assert!(e.contains("adress"), "{e}");
        let e = error_of(&GOOD.replace("poll_interval_ms", "poll_interval"));
        assert!(e.contains("cluster.toml:21: poll_interval"), "{e}");
    }

    #[test]
    fn syntax_errors_carry_a_line() {
        let e = error_of("[cluster]\nname = \"x\"\n[[nodes]]\nname = \n");
        assert!(e.starts_with("cluster.toml:4:"), "{e}");
        let e = error_of("[[nodes]]\nname = \"a\"\naddress = \"b\"\nexecutor = \"c\"\n");
        assert!(e.contains("cluster"), "{e}");
    }
}
