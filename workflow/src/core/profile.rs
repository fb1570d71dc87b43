//! Profiles: everything cluster-specific as data. An action or probe is an argv template whose elements are
//! rendered one by one (never joined into a shell string), plus where it runs, whether it is idempotent and its
//! default timeout. A built-in system's profile (chef-backend's, with both of its documented procedures) comes
//! from the `builtin` seam, by name.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::builtin::{self, Installer};
use super::cluster::NodeSpec;
use super::error::CoreError;
use super::profile_file::{Parser, ProbeSet, ProfileFile, Shows, VersionChange};

/// Which shape of procedure the upgrade follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Procedure {
    /// The runbook: stop, install, start each node; demote (a switchover) before the leader's turn.
    #[default]
    Runbook,
    /// Install while running, then one `upgrade` action per node (`upgrade_leader` on the leader, which also
    /// hands leadership over).
    UpgradeCommand,
}

/// The actions and probes a profile defines. The serialized name is the wire `action` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Disable automatic failover for the cluster.
    BlockFailover,
    /// Re-enable automatic failover.
    UnblockFailover,
    /// Stop the node's services (takes it out of service).
    Stop,
    /// Install the package on the node.
    Install,
    /// Start the node's services.
    Start,
    /// Demote the leader so that a follower is elected (not idempotent).
    Demote,
    /// Newer procedure on a follower: restart onto the installed version and rejoin.
    Upgrade,
    /// Newer procedure on the leader: demote, restart, rejoin (not idempotent).
    UpgradeLeader,
    /// Probe: cluster topology (`cluster-status`).
    ProbeClusterStatus,
    /// Probe: the node's local services and distributed counts (`status`).
    ProbeStatus,
    /// Probe: the installed package version (and its state, where the package tool shows one).
    ProbeVersion,
    /// Probe: the cluster's and each node's failover settings (`cluster-status --json`).
    ProbeFailover,
    /// Probe: the version inside the package file on the node (it also shows that the file is readable).
    ProbePackage,
    /// Probe: the version the node's process runs now (a profile file's `running_version`): the installed
    /// version shows only what the next start runs.
    ProbeRunningVersion,
}

impl Action {
    /// Every action, in a fixed order.
    pub const ALL: [Action; 14] = [
        Action::BlockFailover,
        Action::UnblockFailover,
        Action::Stop,
        Action::Install,
        Action::Start,
        Action::Demote,
        Action::Upgrade,
        Action::UpgradeLeader,
        Action::ProbeClusterStatus,
        Action::ProbeStatus,
        Action::ProbeVersion,
        Action::ProbeFailover,
        Action::ProbePackage,
        Action::ProbeRunningVersion,
    ];

    /// The name used on the wire, in cluster files and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::BlockFailover => "block_failover",
            Action::UnblockFailover => "unblock_failover",
            Action::Stop => "stop",
            Action::Install => "install",
            Action::Start => "start",
            Action::Demote => "demote",
            Action::Upgrade => "upgrade",
            Action::UpgradeLeader => "upgrade_leader",
            Action::ProbeClusterStatus => "probe_cluster_status",
            Action::ProbeStatus => "probe_status",
            Action::ProbeVersion => "probe_version",
            Action::ProbeFailover => "probe_failover",
            Action::ProbePackage => "probe_package",
            Action::ProbeRunningVersion => "probe_running_version",
        }
    }

    /// The action named `name`, if any.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Probes only observe; they never change the cluster.
    pub fn is_probe(self) -> bool {
        matches!(
            self,
            Action::ProbeClusterStatus
                | Action::ProbeStatus
                | Action::ProbeVersion
                | Action::ProbeFailover
                | Action::ProbePackage
                | Action::ProbeRunningVersion
        )
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which node an action runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunsOn {
    /// The current leader.
    Leader,
    /// The node being upgraded or observed.
    TheNode,
    /// Any node that is in service (cluster-wide commands).
    AnyNode,
}

/// One action or probe of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// argv template; placeholders `{package}`, `{node}`, `{address}`, `{var.NAME}`; `{{`/`}}` are literal braces.
    pub argv: Vec<String>,
    /// Where it runs.
    pub runs_on: RunsOn,
    /// Whether running it twice is harmless (only idempotent steps are retried blindly).
    pub idempotent: bool,
    /// Default timeout; the cluster file may override it per action.
    pub timeout_ms: u64,
}

/// What an operator runs by hand where a reason asks them to, in the system's own commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hints {
    /// Turns one node's own failover setting back on (run on that node).
    pub node_failover_on: String,
    /// Turns the cluster's automatic failover back on.
    pub cluster_failover_on: String,
    /// Repairs a package a failed install left half done.
    pub fix_package: String,
    /// How the system changes a major version instead (with downtime).
    pub major_change: String,
    /// Why a cluster needs at least three nodes to roll.
    pub quorum: String,
}

/// A profile: the actions and probes for one kind of cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Profile name, e.g. `chef-backend`.
    pub name: String,
    /// The system's name in reasons (`chef-backend`).
    pub system: String,
    /// The system's own commands, for reasons that ask an operator to act.
    pub hints: Hints,
    /// The procedure this instance follows.
    pub procedure: Procedure,
    /// The package tool this instance uses.
    pub installer: Installer,
    /// Actions and probes by name.
    pub actions: BTreeMap<Action, ActionSpec>,
    /// How the probes' output is read: `None` for the built-in reader named like the profile (`builtin`), else a
    /// profile file's JSON and regex parsers.
    pub reader: Option<FileReader>,
    /// Whether the system has an automatic-failover fence that the upgrade blocks and restores.
    pub fence: bool,
    /// Whether the switchover runs with the fence up (no unblock before it, no block after it).
    pub switchover_keeps_fence: bool,
    /// The fewest members a rolling upgrade needs (the profile's `quorum` rule; 3 for chef-backend).
    pub min_members: usize,
    /// A profile file's `probe_rounds`: read-only probes that do not depend on each other are asked side by
    /// side (`decide::round_of`); `false` for a built-in profile (one step at a time, as always).
    pub probe_rounds: bool,
    /// A profile file's `election_ms`: how long the cluster may show no leader before that is an emergency,
    /// unless the cluster file sets `election_window_ms` (`None` for a built-in profile: the cluster file's
    /// value or its default).
    pub election_ms: Option<u64>,
    /// Which version changes may roll, for a profile file (chef-backend's rule: the major version stays).
    pub version_change: Option<VersionChange>,
    /// The SHA-256 of the profile file's text (hex); the plan records it, so the plan hash covers the profile.
    pub source_sha256: Option<String>,
}

/// A profile file's probes, shared (they are read on every probe result). Compared by value.
#[derive(Debug, Clone)]
pub struct FileReader(pub Arc<ProbeSet>);

impl PartialEq for FileReader {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

// A profile is loaded from text and never holds a NaN (`max_lag` is checked on load), so equality is total.
impl Eq for FileReader {}

impl Profile {
    /// The built-in profile a cluster file names (`builtin::NAMES`), for its package tool and procedure; `None`
    /// for a name that is not built in (a profile file's path: not run by the upgrade loop yet).
    pub fn builtin(name: &str, installer: Installer, procedure: Procedure) -> Option<Profile> {
        builtin::profile(name, installer, procedure)
    }

    /// The profile a cluster file names: a built-in one, or the profile file whose text came with the
    /// submission (`ClusterFile::profile_text`). `Err` says why there is none.
    pub fn of_cluster(cluster: &super::cluster::ClusterFile) -> Result<Profile, String> {
        let upgrade = &cluster.upgrade;
        if let Some(p) = Profile::builtin(&cluster.profile, upgrade.installer, upgrade.procedure) {
            return Ok(p);
        }
        let Some(text) = &cluster.profile_text else {
            return Err(format!(
                "profile `{}` is a profile file, and its text did not come with the submission (`baton \
                 submit` and `baton plan` read it beside the cluster file)",
                cluster.profile
            ));
        };
        let file = ProfileFile::parse(&cluster.profile, text).map_err(|e| e.to_string())?;
        let sha256 = {
            use sha2::{Digest, Sha256};
            Sha256::digest(text.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        Profile::from_file(&file, &sha256)
            .map_err(|e| format!("profile `{}`: {e}", cluster.profile))
    }

    /// A profile with no actions (a submission the core refused never gets further than its plan).
    pub fn without_actions(name: &str) -> Profile {
        Profile {
            name: name.to_string(),
            system: name.to_string(),
            hints: Hints {
                node_failover_on: String::new(),
                cluster_failover_on: String::new(),
                fix_package: String::new(),
                major_change: String::new(),
                quorum: String::new(),
            },
            procedure: Procedure::default(),
            installer: Installer::default(),
            actions: BTreeMap::new(),
            reader: None,
            fence: false,
            switchover_keeps_fence: false,
            min_members: 3,
            probe_rounds: false,
            election_ms: None,
            version_change: None,
            source_sha256: None,
        }
    }

    /// The spec of `action`, if this profile defines it.
    pub fn action(&self, action: Action) -> Option<&ActionSpec> {
        self.actions.get(&action)
    }

    /// The profile a profile file describes, as the upgrade loop runs it. `sha256` is the file text's hash.
    ///
    /// The loop runs one shape of procedure so far, the runbook's: on each follower and then on the old leader
    /// an action that takes the node out (`shows = "stopped"`), one that installs (`"installed"`) and one that
    /// brings it back (`"running"`), the same actions for both; a switchover that moves leadership to a named
    /// target (`"leader_moved"`, on the leader); with a fence, `block_failover` and `unblock_failover`. A file
    /// with another shape loads and validates (`baton profile check`) but is refused here, saying why.
    pub fn from_file(file: &ProfileFile, sha256: &str) -> Result<Profile, String> {
        let procedure = &file.procedure;
        let def = |name: &str| {
            file.actions
                .get(name)
                .ok_or_else(|| format!("procedure names `{name}`, which [actions] does not define"))
        };
        let spec_of = |name: &str| -> Result<ActionSpec, String> {
            let d = def(name)?;
            Ok(ActionSpec {
                argv: d.argv.clone(),
                runs_on: d.runs_on,
                idempotent: d.idempotent,
                timeout_ms: d.timeout_ms,
            })
        };
        let shape = [Shows::Stopped, Shows::Installed, Shows::Running];
        let shows: Vec<Shows> = procedure
            .follower
            .iter()
            .map(|n| def(n).map(|d| d.shows))
            .collect::<Result<_, _>>()?;
        if shows != shape || procedure.leader != procedure.follower {
            return Err(format!(
                "procedure: the upgrade loop runs one shape so far: follower = leader = [an action that shows \
                 stopped, one that shows installed, one that shows running] (this file has follower = {:?}, \
                 leader = {:?})",
                procedure.follower, procedure.leader
            ));
        }
        let mut actions = BTreeMap::new();
        for (action, name) in [Action::Stop, Action::Install, Action::Start]
            .into_iter()
            .zip(&procedure.follower)
        {
            let spec = spec_of(name)?;
            if spec.runs_on != RunsOn::TheNode {
                return Err(format!(
                    "actions.{name}: a step of a node's upgrade runs on the node (runs_on = \"the_node\")"
                ));
            }
            actions.insert(action, spec);
        }
        let switchover = def(&procedure.switchover)?;
        if switchover.shows != Shows::LeaderMoved || switchover.runs_on != RunsOn::Leader {
            return Err(format!(
                "actions.{}: the switchover runs on the leader and shows the leader moved",
                procedure.switchover
            ));
        }
        actions.insert(Action::Demote, spec_of(&procedure.switchover)?);
        if procedure.failover_fence {
            actions.insert(Action::BlockFailover, spec_of("block_failover")?);
            actions.insert(Action::UnblockFailover, spec_of("unblock_failover")?);
        }
        let probe = |p: &super::profile_file::ProbeDef| ActionSpec {
            argv: p.argv.clone(),
            runs_on: p.runs_on,
            idempotent: true,
            timeout_ms: p.timeout_ms,
        };
        let probes = &file.probes;
        actions.insert(Action::ProbeClusterStatus, probe(&probes.topology));
        actions.insert(Action::ProbeStatus, probe(&probes.node));
        actions.insert(Action::ProbeVersion, probe(&probes.version));
        if let Some(p) = &probes.package {
            actions.insert(Action::ProbePackage, probe(p));
        }
        if let Some(p) = &probes.failover {
            actions.insert(Action::ProbeFailover, probe(p));
        }
        if let Some(p) = &probes.running_version {
            actions.insert(Action::ProbeRunningVersion, probe(p));
        }
        let unblock = format!("the {} profile's unblock_failover action", file.name);
        let hint = |key: &str, default: String| file.hints.get(key).cloned().unwrap_or(default);
        // Probes read by a named built-in reader (chef-backend's tables) are all read by it, with its own
        // observations and version rule; a mix of built-in and field-path parsers is not a system we know.
        let all: Vec<&super::profile_file::ProbeDef> = [
            Some(&probes.topology),
            Some(&probes.node),
            Some(&probes.version),
            probes.package.as_ref(),
            probes.failover.as_ref(),
            probes.running_version.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let builtin: Vec<&str> = all
            .iter()
            .filter_map(|p| match &p.parse {
                Parser::Builtin { reader } => Some(reader.as_str()),
                _ => None,
            })
            .collect();
        let reader = if builtin.is_empty() {
            Some(FileReader(Arc::new(probes.clone())))
        } else if builtin.len() == all.len() && builtin.iter().all(|r| *r == file.name) {
            None
        } else {
            return Err(format!(
                "probes: a built-in reader reads every probe of its own system (reader = \"{}\" in each), \
                 or none",
                file.name
            ));
        };
        Ok(Profile {
            name: file.name.clone(),
            system: file.name.clone(),
            hints: Hints {
                node_failover_on: hint("node_failover_on", unblock.clone()),
                cluster_failover_on: hint("cluster_failover_on", unblock),
                fix_package: hint(
                    "fix_package",
                    format!("the {} profile's install action, by hand", file.name),
                ),
                major_change: hint(
                    "major_change",
                    format!("{}'s own procedure for a major change", file.name),
                ),
                quorum: hint(
                    "quorum",
                    match procedure.quorum {
                        super::profile_file::Quorum::Majority => {
                            "a consensus needs a majority of its members running while one is out"
                        }
                        super::profile_file::Quorum::External => {
                            "one member must keep serving while another is out"
                        }
                    }
                    .into(),
                ),
            },
            procedure: Procedure::Runbook,
            installer: Installer::default(),
            actions,
            fence: procedure.failover_fence,
            switchover_keeps_fence: procedure.switchover_keeps_fence,
            min_members: procedure.quorum.min_members(),
            probe_rounds: procedure.probe_rounds,
            election_ms: Some(procedure.election_ms),
            version_change: reader.is_some().then_some(procedure.version_change),
            reader,
            source_sha256: Some(sha256.to_string()),
        })
    }

    /// Whether a member's node probe says whether it leads (a profile file's node probe with `leader_when`):
    /// the emergency exit asks every member's own word before it lifts the fence (`decide`,
    /// `emergency_word`).
    pub fn node_probe_says_leader(&self) -> bool {
        let Some(reader) = &self.reader else {
            return false;
        };
        let fields = match &reader.0.node.parse {
            super::profile_file::Parser::Json(f) => f,
            super::profile_file::Parser::Regex { fields, .. } => fields,
            super::profile_file::Parser::Builtin { .. } => return false,
        };
        fields.leader_when.is_some()
    }

    /// Whether the switchover names its target (a profile file's `{target...}` placeholders).
    pub fn switchover_has_target(&self) -> bool {
        self.action(Action::Demote)
            .is_some_and(|s| s.argv.iter().any(|e| e.contains("{target")))
    }
}

/// Values for template placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderContext<'a> {
    /// `{package}`: the package path on the node.
    pub package: &'a str,
    /// `{node}`: the node's name.
    pub node: &'a str,
    /// `{address}`: the node's address.
    pub address: &'a str,
    /// `{var.NAME}`: the node's free variables.
    pub vars: Option<&'a BTreeMap<String, String>>,
    /// `{version}`: the target version (profile files).
    pub version: &'a str,
    /// `{target}`, `{target.address}`, `{target.var.NAME}`: the switchover's target (profile files).
    pub target: Option<&'a NodeSpec>,
}

/// Renders each argv element on its own; a placeholder without a value is an error naming it.
pub fn render(argv: &[String], ctx: &RenderContext<'_>) -> Result<Vec<String>, CoreError> {
    argv.iter()
        .map(|element| render_one(element, ctx))
        .collect()
}

fn render_one(template: &str, ctx: &RenderContext<'_>) -> Result<String, CoreError> {
    render_element(template, &|name| match name {
        "package" => Ok(ctx.package.to_string()),
        "node" => Ok(ctx.node.to_string()),
        "address" => Ok(ctx.address.to_string()),
        "version" => Ok(ctx.version.to_string()),
        "target" | "target.address" => ctx
            .target
            .map(|t| {
                if name == "target" {
                    t.name.clone()
                } else {
                    t.address.clone()
                }
            })
            .ok_or_else(|| format!("placeholder {{{name}}}: this step has no target")),
        _ if name.starts_with("target.var.") => {
            let var = &name["target.var.".len()..];
            let target = ctx
                .target
                .ok_or_else(|| format!("placeholder {{{name}}}: this step has no target"))?;
            target.vars.get(var).cloned().ok_or_else(|| {
                format!(
                    "placeholder {{{name}}}: node {} has no variable `{var}`",
                    target.name
                )
            })
        }
        _ => match name.strip_prefix("var.") {
            Some(var) => ctx
                .vars
                .and_then(|vars| vars.get(var))
                .cloned()
                .ok_or_else(|| format!("placeholder {{{name}}}: node has no variable `{var}`")),
            None => Err(format!("unknown placeholder {{{name}}}")),
        },
    })
}

/// Renders one template element: `{{`/`}}` are literal braces, `{NAME}` is `value_of(NAME)` (whose error
/// names the placeholder). Shared by the built-in profile and profile files.
pub(crate) fn render_element(
    template: &str,
    value_of: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, CoreError> {
    let err = |message: String| CoreError::Template {
        template: template.to_string(),
        message,
    };
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(pos) = rest.find(['{', '}']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(after) = tail.strip_prefix("{{") {
            out.push('{');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("}}") {
            out.push('}');
            rest = after;
        } else if tail.starts_with('}') {
            return Err(err("unmatched `}` (write `}}` for a literal brace)".into()));
        } else {
            let Some(end) = tail.find('}') else {
                return Err(err(
                    "unterminated placeholder (write `{{` for a literal brace)".into(),
                ));
            };
            out.push_str(&value_of(&tail[1..end]).map_err(err)?);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn renders_each_element_without_a_shell() {
        let mut vars = BTreeMap::new();
        vars.insert("user".to_string(), "ops; rm -rf /".to_string());
        let ctx = RenderContext {
            package: "/tmp/a b.deb",
            node: "backend-1",
            address: "10.0.0.1",
            vars: Some(&vars),
            ..RenderContext::default()
        };
        let argv = render(
            &strings(&[
                "dpkg",
                "-i",
                "{package}",
                "--as={var.user}",
                "{node}@{address}",
            ]),
            &ctx,
        )
        .unwrap();
        assert_eq!(
            argv,
            strings(&[
                "dpkg",
                "-i",
                "/tmp/a b.deb",
                "--as=ops; rm -rf /",
                "backend-1@10.0.0.1"
            ])
        );
    }

    #[test]
    fn literal_braces_are_escaped() {
        let ctx = RenderContext::default();
        let argv = render(
            &strings(&["-f=${{Version}}", "%{{VERSION}}-%{{RELEASE}}"]),
            &ctx,
        )
        .unwrap();
        assert_eq!(argv, strings(&["-f=${Version}", "%{VERSION}-%{RELEASE}"]));
    }

    #[test]
    fn missing_variable_names_the_placeholder() {
        let ctx = RenderContext::default();
        let err = render(&strings(&["{var.port}"]), &ctx).unwrap_err();
        assert!(err.to_string().contains("{var.port}"), "{err}");
        let err = render(&strings(&["{pkg}"]), &ctx).unwrap_err();
        assert!(
            err.to_string().contains("unknown placeholder {pkg}"),
            "{err}"
        );
        assert!(render(&strings(&["{node"]), &ctx).is_err());
        assert!(render(&strings(&["node}"]), &ctx).is_err());
    }
}
