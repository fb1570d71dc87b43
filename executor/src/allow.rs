//! The executor's allow list: it runs nothing it was not built to run.
//!
//! An executor is told, by its own flags, its profile (the built-in chef-backend profile for one installer and
//! one procedure, [`workflow::core::Profile`]) and its nodes with their addresses. A step request is run only
//! if all of these hold; otherwise it is refused (outcome `rejected`, with the reason, counted), whoever sent it:
//! - its node is one of this executor's nodes;
//! - its `action` names an action or probe of this executor's profile, and its argv is exactly that action's
//!   template rendered by the core's own [`workflow::core::profile::render`] for that node (its configured
//!   address for `{address}`, no node variables): a template is written once, in the core, and the executor
//!   checks the very rendering the service makes;
//! - the one free parameter, `{package}`, is an absolute path (so no leading `-`), with no `..` component, no
//!   `://` (no URL: yum would fetch it), no control characters, whose file name the installer accepts (`*.deb`
//!   for dpkg, `*.rpm` for yum) and, with the local runner, an existing regular file (the ssh runner cannot look
//!   at the node's file system before running anything, so there the file is not looked at);
//! - its env keys are in [`ALLOWED_ENV`] and its values are plain ([`env_value_ok`]). `BATON_NODE_ADDRESS` is
//!   not among them: a node's address comes only from this executor's own `--nodes`.
//!
//! An executor given a cluster file that names a profile file (`--cluster`, with the profile file beside it)
//! serves that profile instead ([`Allowlist::for_profile_file`]): a request is run only if its argv is exactly a
//! rendering of the profile's action or probe for its node, with
//! - `{node}`, `{address}` and `{var.NAME}` from this executor's own view of the node (the cluster file's vars,
//!   its address unless `--nodes` overrides it), never from the request;
//! - `{target}`, `{target.address}`, `{target.var.NAME}` (the switchover's target) from another node of the
//!   cluster file, any one of them;
//! - `{package}` and `{version}` the two free parameters, taken from the request's argv where the template has
//!   them and then checked: the package as above but with no file-name rule (a profile's package may be a
//!   directory, as etcd's is) and, with the local runner, an existing file or directory; the version a plain
//!   token starting with a number ([`version_ok`]). The version is free like the package rather than pinned to
//!   the cluster file's `target_version`, because a submission may name both (`--package`,
//!   `--target-version`) and the executor must run what the service approved without being redeployed; neither
//!   can become an option or a path outside the node's files.
//!
//! Before any of that, the request's `profile_sha256` must be this executor's profile's
//! ([`Allowlist::check_profile_sha256`]): the SHA-256 of its profile file's text, or absent for the built-in
//! profile. The service reads a step's output with the parsers of the profile that came with the submission, so
//! a submitted profile with this executor's commands and other parsers would pass every argv check.
//!
//! This holds even for a request that is otherwise perfectly formed and comes from the real service: it is a
//! defence in depth, not a replacement for authenticating the sender (see THREATS.md).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use protocol::StepRequest;
use workflow::core::profile::render;
use workflow::core::profile_file::{is_http_program, version_numbers};
use workflow::core::{Action, ClusterFile, Installer, NodeSpec, Procedure, Profile, RenderContext};

/// The only env keys a step request may set: locale and time zone, which change how a command formats its
/// output and nothing else. The workflow service itself sends none today.
pub const ALLOWED_ENV: [&str; 3] = ["LANG", "LC_ALL", "TZ"];

/// Why a request was refused, and which rule refused it (a log field and a counter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub reason: String,
}

/// Which rule refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The request is for another group or another node.
    WrongTarget,
    /// The argv, action, package or env is not allowed by this executor's profile.
    NotAllowed,
    /// A stale epoch or a passed deadline.
    Stale,
    /// The step id was already used (claimed or recorded) for another command.
    Conflict,
    /// The request was planned with another profile than this executor's (its `profile_sha256` is not the
    /// hash of this executor's profile file, or it names one while this executor serves a built-in profile).
    WrongProfile,
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::WrongTarget => "wrong_target",
            RefusalKind::NotAllowed => "not_allowed",
            RefusalKind::Stale => "stale",
            RefusalKind::Conflict => "conflict",
            RefusalKind::WrongProfile => "wrong_profile",
        }
    }
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Refusal {
    pub fn new(kind: RefusalKind, reason: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            reason: reason.into(),
        }
    }
}

/// Whether the package file can be looked at before the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageCheck {
    /// The command runs on this machine: the file must exist and be a regular file.
    Local,
    /// The command runs elsewhere (ssh): only the path itself is checked.
    PathOnly,
}

/// What this executor may run.
#[derive(Debug, Clone)]
pub struct Allowlist {
    profile: Profile,
    /// Node -> the address `{address}` renders to (the configured one, else the node name).
    nodes: BTreeMap<String, String>,
    package_check: PackageCheck,
    /// A profile file's: the cluster file's nodes (each node's vars, and the switchover's possible targets).
    /// `None`: the built-in chef-backend profile, rendered without vars.
    cluster_nodes: Option<Vec<NodeSpec>>,
}

/// Stands for the version while a template element is rendered (a profile file's `{version}`).
const VERSION_SENTINEL: &str = "\u{0}version\u{0}";

/// Stands for the package while a template element is rendered, to find where the package sits in it. It
/// cannot occur in a real argv element (exec refuses NUL bytes), and the rendering is compared in full anyway.
const SENTINEL: &str = "\u{0}package\u{0}";

impl Allowlist {
    pub fn new(
        installer: Installer,
        procedure: Procedure,
        nodes: BTreeMap<String, String>,
        package_check: PackageCheck,
    ) -> Allowlist {
        Allowlist {
            profile: Profile::chef_backend(installer, procedure),
            nodes,
            package_check,
            cluster_nodes: None,
        }
    }

    /// The allow list of a cluster file that names a profile file, whose text is in `cluster.profile_text`:
    /// the renderings of that profile's actions and probes for `nodes` (node -> address; each must be in the
    /// cluster file). `Err` says why the profile cannot be served.
    pub fn for_profile_file(
        cluster: &ClusterFile,
        nodes: BTreeMap<String, String>,
        package_check: PackageCheck,
    ) -> Result<Allowlist, String> {
        if !cluster.profile_is_file() {
            return Err(format!(
                "profile `{}` is a built-in profile, not a profile file",
                cluster.profile
            ));
        }
        let profile = Profile::of_cluster(cluster)?;
        if let Some(node) = nodes.keys().find(|n| cluster.node(n).is_none()) {
            return Err(format!(
                "node {node} is not in the cluster file, whose profile file gives its vars"
            ));
        }
        Ok(Allowlist {
            profile,
            nodes,
            package_check,
            cluster_nodes: Some(cluster.nodes.clone()),
        })
    }

    /// The profile this executor serves.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Whether `action` (a wire name) is one of this profile's HTTP probes: a probe whose template is an `http`
    /// table ([`is_http_program`]). The executor answers such a step with its HTTP runner; it decides this from its
    /// own profile, never from a request's argv.
    pub fn is_http_probe(&self, action: &str) -> bool {
        Action::from_name(action).is_some_and(|a| {
            a.is_probe()
                && self
                    .profile
                    .action(a)
                    .is_some_and(|spec| spec.argv.first().is_some_and(|p| is_http_program(p)))
        })
    }

    /// This profile's HTTP probes, by wire name.
    pub fn http_probes(&self) -> Vec<&'static str> {
        Action::ALL
            .iter()
            .filter(|a| self.is_http_probe(a.as_str()))
            .map(|a| a.as_str())
            .collect()
    }

    /// The address of `node` as this executor knows it (the configured one, else the node name).
    pub fn address(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(String::as_str)
    }

    fn describe(&self) -> String {
        if let Some(sha) = &self.profile.source_sha256 {
            return format!("profile file {} (sha256 {sha})", self.profile.name);
        }
        format!(
            "profile {} (installer {}, procedure {})",
            self.profile.name,
            match self.profile.installer {
                Installer::Dpkg => "dpkg",
                Installer::Yum => "yum",
            },
            match self.profile.procedure {
                Procedure::Runbook => "runbook",
                Procedure::UpgradeCommand => "upgrade-command",
            }
        )
    }

    /// `Ok` if `req` was planned with this executor's profile: its `profile_sha256` is the SHA-256 of this
    /// executor's profile file text (the very bytes `baton submit` sends, read by the same function), or absent
    /// when this executor serves a built-in profile. The argv alone cannot show it: the service reads a probe's
    /// output with the parsers of the profile that came with the submission, so a submitted profile whose
    /// commands are this executor's but whose parsers differ would pass every argv check.
    pub fn check_profile_sha256(&self, req: &StepRequest) -> Result<(), Refusal> {
        let ours = self.profile.source_sha256.as_deref();
        let theirs = req.profile_sha256.as_deref();
        if ours == theirs {
            return Ok(());
        }
        let step = format!("step {} for node {}", req.action, req.node);
        let reason = match (theirs, ours) {
            (Some(theirs), Some(ours)) => format!(
                "{step} was planned with profile sha256 {theirs}, but this executor serves profile file {} with \
                 sha256 {ours}: the service would read the step's output with another profile's parsers; refused, \
                 nothing run",
                self.profile.name
            ),
            (None, Some(ours)) => format!(
                "{step} carries no profile sha256 (a built-in profile's step), but this executor serves profile \
                 file {} with sha256 {ours}; refused, nothing run",
                self.profile.name
            ),
            (Some(theirs), None) => format!(
                "{step} was planned with profile sha256 {theirs}, but this executor serves the built-in {} (no \
                 profile file); refused, nothing run",
                self.describe()
            ),
            (None, None) => return Ok(()),
        };
        Err(Refusal::new(RefusalKind::WrongProfile, reason))
    }

    /// `Ok` if this executor may run `req`, else why not.
    pub fn check(&self, req: &StepRequest) -> Result<(), Refusal> {
        let Some(address) = self.nodes.get(&req.node) else {
            let served: Vec<&str> = self.nodes.keys().map(String::as_str).collect();
            return Err(Refusal::new(
                RefusalKind::WrongTarget,
                format!(
                    "node {:?} is not served by this executor (it serves {})",
                    req.node,
                    served.join(", ")
                ),
            ));
        };
        self.check_profile_sha256(req)?;
        let not_allowed = |reason: String| Refusal::new(RefusalKind::NotAllowed, reason);
        for (key, value) in &req.env {
            if !ALLOWED_ENV.contains(&key.as_str()) {
                let why = if key == crate::runner::ssh::ADDRESS_ENV {
                    " (a node's address comes only from the executor's own --nodes)"
                } else {
                    ""
                };
                return Err(not_allowed(format!(
                    "env key {key:?} is not allowed{why}; allowed: {}",
                    ALLOWED_ENV.join(", ")
                )));
            }
            if !env_value_ok(value) {
                return Err(not_allowed(format!(
                    "env {key}: value {value:?} is not allowed (at most 128 of A-Z a-z 0-9 _ . : / @ + -, not \
                     starting with '-')"
                )));
            }
        }
        let Some(action) = Action::from_name(&req.action) else {
            return Err(not_allowed(format!("unknown action {:?}", req.action)));
        };
        let Some(spec) = self.profile.action(action) else {
            return Err(not_allowed(format!(
                "action {action} is not in this executor's {}",
                self.describe()
            )));
        };
        // The HTTP runner's name is a program only for a profile's HTTP probe: never for an action, nor for a
        // probe whose command renders to it (a node var), which would otherwise reach the HTTP runner.
        let http_template =
            action.is_probe() && spec.argv.first().is_some_and(|p| is_http_program(p));
        if let Some(program) = req.argv.first().filter(|p| is_http_program(p)) {
            if !http_template {
                return Err(not_allowed(format!(
                    "step {action} names `{program}` as its program, which is reserved for a profile's HTTP \
                     probes (a node var rendered to it?); refused, nothing run"
                )));
            }
        }
        if let Some(cluster_nodes) = &self.cluster_nodes {
            return self.check_profile_file(cluster_nodes, action, &spec.argv, req, address);
        }
        let package = self.package_of(&spec.argv, &req.argv, req, address)?;
        if let Some(package) = &package {
            check_package(package, self.profile.installer, self.package_check)
                .map_err(|why| not_allowed(format!("package {package:?}: {why}")))?;
        }
        let ctx = RenderContext {
            package: package.as_deref().unwrap_or_default(),
            node: &req.node,
            address,
            vars: None,
            ..RenderContext::default()
        };
        let expected = render(&spec.argv, &ctx).map_err(|e| {
            not_allowed(format!(
                "action {action}: its template cannot be rendered here: {e}"
            ))
        })?;
        if expected != req.argv {
            return Err(not_allowed(format!(
                "argv {:?} is not action {action}'s template for node {} (expected {expected:?})",
                req.argv, req.node
            )));
        }
        Ok(())
    }

    /// A profile file's check: the request's argv is the template rendered for its node (the cluster file's
    /// vars, this executor's address), with a target among the other nodes of the cluster file where the
    /// template names one, and the free `{package}` and `{version}` as the argv carries them, checked.
    fn check_profile_file(
        &self,
        cluster_nodes: &[NodeSpec],
        action: Action,
        template: &[String],
        req: &StepRequest,
        address: &str,
    ) -> Result<(), Refusal> {
        let not_allowed = |reason: String| Refusal::new(RefusalKind::NotAllowed, reason);
        let node = cluster_nodes
            .iter()
            .find(|n| n.name == req.node)
            .ok_or_else(|| not_allowed(format!("node {} is not in the cluster file", req.node)))?;
        let targets: Vec<Option<&NodeSpec>> = if template.iter().any(|e| e.contains("{target")) {
            cluster_nodes
                .iter()
                .filter(|n| n.name != req.node)
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        let mut expected_first: Option<Vec<String>> = None;
        let mut last_error: Option<String> = None;
        for target in &targets {
            let ctx = RenderContext {
                node: &req.node,
                address,
                vars: Some(&node.vars),
                target: *target,
                ..RenderContext::default()
            };
            let free = match free_values(template, &req.argv, &ctx) {
                Ok(free) => free,
                Err(why) => {
                    last_error = Some(why);
                    continue;
                }
            };
            if let Some(package) = &free.package {
                check_package_path(package, self.package_check)
                    .map_err(|why| not_allowed(format!("package {package:?}: {why}")))?;
            }
            if let Some(version) = &free.version {
                if !version_ok(version) {
                    return Err(not_allowed(format!(
                        "version {version:?} is not a version (a number first, then at most 64 of A-Z a-z \
                         0-9 . + ~ _ -)"
                    )));
                }
            }
            let ctx = RenderContext {
                package: free.package.as_deref().unwrap_or_default(),
                version: free.version.as_deref().unwrap_or_default(),
                ..ctx
            };
            match render(template, &ctx) {
                Ok(expected) if expected == req.argv => return Ok(()),
                Ok(expected) => {
                    expected_first.get_or_insert(expected);
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        let targets_named = if targets.iter().any(Option::is_some) {
            let names: Vec<&str> = targets.iter().flatten().map(|t| t.name.as_str()).collect();
            format!(" with a target among {}", names.join(", "))
        } else {
            String::new()
        };
        Err(not_allowed(match expected_first {
            Some(expected) => format!(
                "argv {:?} is not action {action}'s template for node {}{targets_named} (expected {expected:?})",
                req.argv, req.node
            ),
            None => format!(
                "argv {:?} is not action {action}'s template {template:?} for node {}{targets_named}: {}",
                req.argv,
                req.node,
                last_error.unwrap_or_default()
            ),
        }))
    }

    /// The package the request's argv carries where the template has `{package}`, if the template has one.
    fn package_of(
        &self,
        template: &[String],
        argv: &[String],
        req: &StepRequest,
        address: &str,
    ) -> Result<Option<String>, Refusal> {
        let mismatch = || {
            Refusal::new(
                RefusalKind::NotAllowed,
                format!(
                    "argv {:?} is not action {}'s template {:?}",
                    req.argv, req.action, template
                ),
            )
        };
        let ctx = RenderContext {
            package: SENTINEL,
            node: &req.node,
            address,
            vars: None,
            ..RenderContext::default()
        };
        let mut found: Option<String> = None;
        let mut uses_package = false;
        for (i, element) in template.iter().enumerate() {
            let Ok(rendered) = render(std::slice::from_ref(element), &ctx) else {
                continue; // reported by the full rendering
            };
            let parts: Vec<&str> = rendered[0].split(SENTINEL).collect();
            if parts.len() < 2 {
                continue;
            }
            uses_package = true;
            let Some(given) = argv.get(i) else {
                return Err(mismatch());
            };
            // The first occurrence's text; the full rendering is compared afterwards.
            let rest = given.strip_prefix(parts[0]).ok_or_else(mismatch)?;
            let candidate = if parts.len() == 2 {
                rest.strip_suffix(parts[1]).ok_or_else(mismatch)?
            } else {
                rest.split(parts[1]).next().unwrap_or_default()
            };
            match &found {
                Some(p) if p != candidate => return Err(mismatch()),
                Some(_) => {}
                None => found = Some(candidate.to_string()),
            }
        }
        if uses_package && found.is_none() {
            return Err(mismatch());
        }
        Ok(found)
    }
}

/// The free parameters of a profile file's template as one request's argv carries them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Free {
    package: Option<String>,
    version: Option<String>,
}

/// One piece of a template element rendered with sentinels: text, or where a free parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Package,
    Version,
}

/// The values `{package}` and `{version}` take in `argv`, element by element, where `template` has them
/// (`ctx` gives every other placeholder). `Err` when the argv does not have the template's shape there or two
/// elements disagree; the full rendering is compared by the caller anyway.
fn free_values(
    template: &[String],
    argv: &[String],
    ctx: &RenderContext<'_>,
) -> Result<Free, String> {
    if template.len() != argv.len() {
        return Err(format!(
            "{} elements, the template has {}",
            argv.len(),
            template.len()
        ));
    }
    let ctx = RenderContext {
        package: SENTINEL,
        version: VERSION_SENTINEL,
        ..ctx.clone()
    };
    let mut free = Free::default();
    for (element, given) in template.iter().zip(argv) {
        let rendered = render(std::slice::from_ref(element), &ctx).map_err(|e| e.to_string())?;
        let pieces = pieces(&rendered[0]);
        if pieces.len() == 1 {
            continue; // no free parameter in this element
        }
        let mut found = Vec::new();
        if !match_pieces(&pieces, given, &mut found) {
            return Err(format!("{given:?} does not have the shape of {element:?}"));
        }
        for (piece, value) in found {
            let slot = match piece {
                Piece::Package => &mut free.package,
                _ => &mut free.version,
            };
            match slot {
                Some(known) if *known != value => {
                    return Err(format!(
                        "two different values for one placeholder: {known:?}, {value:?}"
                    ))
                }
                Some(_) => {}
                None => *slot = Some(value),
            }
        }
    }
    Ok(free)
}

/// `rendered` cut at the sentinels.
fn pieces(rendered: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = rendered;
    loop {
        let next = [
            (SENTINEL, Piece::Package),
            (VERSION_SENTINEL, Piece::Version),
        ]
        .into_iter()
        .filter_map(|(s, p)| rest.find(s).map(|at| (at, s.len(), p)))
        .min_by_key(|(at, _, _)| *at);
        match next {
            Some((at, len, piece)) => {
                out.push(Piece::Text(&rest[..at]));
                out.push(piece);
                rest = &rest[at + len..];
            }
            None => {
                out.push(Piece::Text(rest));
                return out;
            }
        }
    }
}

/// Whether `given` is `pieces` with some non-empty value for each free parameter; the values found, in order.
fn match_pieces<'p>(
    pieces: &[Piece<'p>],
    given: &str,
    found: &mut Vec<(Piece<'p>, String)>,
) -> bool {
    match pieces.split_first() {
        None => given.is_empty(),
        Some((Piece::Text(text), rest)) => given
            .strip_prefix(text)
            .is_some_and(|tail| match_pieces(rest, tail, found)),
        Some((free, rest)) => {
            for (end, _) in given.char_indices().skip(1).chain([(given.len(), ' ')]) {
                let mark = found.len();
                found.push((*free, given[..end].to_string()));
                if match_pieces(rest, &given[end..], found) {
                    return true;
                }
                found.truncate(mark);
            }
            false
        }
    }
}

/// A version for a profile file's `{version}`: a number first, then at most 64 of `[A-Za-z0-9.+~_-]`.
pub fn version_ok(version: &str) -> bool {
    version.len() <= 64
        && version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".+~_-".contains(&b))
        && version_numbers(version).is_some()
}

/// A value for an allowed env key: at most 128 characters of `[A-Za-z0-9_.:/@+-]`, not starting with `-`.
pub fn env_value_ok(value: &str) -> bool {
    value.len() <= 128
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/@+-".contains(&b))
}

/// Why `package` may not be handed to a profile file's actions, if it may not: the path rules of
/// [`check_package`] without its installer's file name, and with the local runner an existing file or
/// directory (etcd's package is a directory of binaries).
pub fn check_package_path(package: &str, check: PackageCheck) -> Result<(), String> {
    path_rules(package)?;
    if check == PackageCheck::Local {
        if let Err(e) = std::fs::metadata(package) {
            return Err(format!("cannot be read: {e}"));
        }
    }
    Ok(())
}

/// The rules every package path follows: absolute, no `..`, no URL, no control character, not an option.
fn path_rules(package: &str) -> Result<(), String> {
    if package.is_empty() {
        return Err("empty".into());
    }
    if package.starts_with('-') {
        return Err("starts with '-' (the installer would read it as an option)".into());
    }
    if package.contains("://") {
        return Err("a URL; only a local file may be installed".into());
    }
    if package.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let path = Path::new(package);
    if !path.is_absolute() {
        return Err("not an absolute path".into());
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("has a `..` component".into());
    }
    Ok(())
}

/// Why `package` may not be handed to the installer, if it may not.
pub fn check_package(
    package: &str,
    installer: Installer,
    check: PackageCheck,
) -> Result<(), String> {
    path_rules(package)?;
    let path = Path::new(package);
    let extension = match installer {
        Installer::Dpkg => ".deb",
        Installer::Yum => ".rpm",
    };
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    if name.len() <= extension.len() || !name.ends_with(extension) {
        return Err(format!(
            "the file name must end in {extension} for this executor's installer"
        ));
    }
    if check == PackageCheck::Local {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err("not a regular file".into()),
            Err(e) => return Err(format!("cannot be read: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(dir: &Path, installer: Installer, procedure: Procedure) -> Allowlist {
        let _ = dir;
        Allowlist::new(
            installer,
            procedure,
            BTreeMap::from([
                ("backend-1".to_string(), "10.0.0.1".to_string()),
                ("backend-2".to_string(), "backend-2".to_string()),
            ]),
            PackageCheck::Local,
        )
    }

    fn req(action: &str, argv: &[&str]) -> StepRequest {
        StepRequest {
            v: 1,
            upgrade: "U".into(),
            step: 1,
            attempt: 1,
            epoch: 1,
            node: "backend-1".into(),
            group: "g1".into(),
            action: action.into(),
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            timeout_ms: 1000,
            deadline_ms: u64::MAX,
            profile_sha256: None,
        }
    }

    fn refused(list: &Allowlist, r: &StepRequest) -> Refusal {
        list.check(r).expect_err("should be refused")
    }

    #[test]
    fn every_rendering_of_the_profile_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("chef-backend_3.1.0-1_amd64.deb");
        let rpm = dir.path().join("chef-backend-3.1.0-1.el7.x86_64.rpm");
        std::fs::write(&deb, b"x").unwrap();
        std::fs::write(&rpm, b"x").unwrap();
        for (installer, package) in [(Installer::Dpkg, &deb), (Installer::Yum, &rpm)] {
            for procedure in [Procedure::Runbook, Procedure::UpgradeCommand] {
                let l = list(dir.path(), installer, procedure);
                let profile = Profile::chef_backend(installer, procedure);
                for (action, spec) in &profile.actions {
                    let ctx = RenderContext {
                        package: package.to_str().unwrap(),
                        node: "backend-1",
                        address: "10.0.0.1",
                        vars: None,
                        ..RenderContext::default()
                    };
                    let argv = render(&spec.argv, &ctx).unwrap();
                    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                    let mut r = req(action.as_str(), &argv);
                    l.check(&r).unwrap_or_else(|e| panic!("{action}: {e:?}"));
                    r.env.insert("LANG".into(), "C.UTF-8".into());
                    assert!(l.check(&r).is_ok());
                }
            }
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("chef-backend_3.1.0-1_amd64.deb");
        std::fs::write(&deb, b"x").unwrap();
        std::fs::create_dir(dir.path().join("dir.deb")).unwrap();
        let l = list(dir.path(), Installer::Dpkg, Procedure::Runbook);
        let deb = deb.to_str().unwrap();

        let r = refused(&l, &req("stop", &["sh", "-c", "id > /tmp/x"]));
        assert_eq!(r.kind, RefusalKind::NotAllowed);
        assert!(r.reason.contains("not action stop's template"), "{r:?}");
        // The label must match the template rendered.
        let r = refused(&l, &req("probe_status", &["chef-backend-ctl", "stop"]));
        assert!(
            r.reason
                .contains("expected [\"chef-backend-ctl\", \"status\"]"),
            "{r:?}"
        );
        assert!(refused(&l, &req("test", &["true"]))
            .reason
            .contains("unknown action"));
        // Not in the runbook profile.
        let r = refused(&l, &req("upgrade", &["chef-backend-ctl", "upgrade"]));
        assert!(r.reason.contains("procedure runbook"), "{r:?}");
        // Extra or missing arguments.
        assert!(l
            .check(&req("stop", &["chef-backend-ctl", "stop", "--all"]))
            .is_err());
        assert!(l.check(&req("install", &["dpkg", "-i"])).is_err());
        assert!(l.check(&req("install", &["dpkg", "-i", deb])).is_ok());

        let hostile = [
            ("-x.deb", "starts with '-'"),
            ("--force-all", "starts with '-'"),
            ("http://evil.example/p.deb", "a URL"),
            ("file:///tmp/p.deb", "a URL"),
            ("relative/p.deb", "not an absolute path"),
            (
                "/nonexistent/chef-backend_3.1.0-1_amd64.deb",
                "cannot be read",
            ),
            ("/tmp/../etc/p.deb", "`..`"),
            ("/tmp/p.rpm", "must end in .deb"),
            ("/tmp/.deb", "must end in .deb"),
            ("/tmp/a\n.deb", "control character"),
        ];
        for (package, why) in hostile {
            let r = refused(&l, &req("install", &["dpkg", "-i", package]));
            assert_eq!(r.kind, RefusalKind::NotAllowed);
            assert!(r.reason.contains(why), "{package:?}: {r:?}");
            let r = refused(
                &l,
                &req(
                    "probe_package",
                    &["dpkg-deb", "--field", package, "Version"],
                ),
            );
            assert!(r.reason.contains(why), "{package:?}: {r:?}");
        }
        let dir_deb = dir.path().join("dir.deb");
        let r = refused(
            &l,
            &req("install", &["dpkg", "-i", dir_deb.to_str().unwrap()]),
        );
        assert!(r.reason.contains("not a regular file"), "{r:?}");

        // Env keys from the allow list only; no address from the request.
        for key in ["-S", "LD_PRELOAD", "PATH", "BATON_NODE_ADDRESS"] {
            let mut r = req("stop", &["chef-backend-ctl", "stop"]);
            r.env.insert(key.into(), "x".into());
            let refusal = refused(&l, &r);
            assert!(refusal.reason.contains("is not allowed"), "{refusal:?}");
        }
        let mut r = req("stop", &["chef-backend-ctl", "stop"]);
        r.env.insert("TZ".into(), "-S x".into());
        assert!(refused(&l, &r).reason.contains("value"));

        // Another node.
        let mut r = req("stop", &["chef-backend-ctl", "stop"]);
        r.node = "backend-9".into();
        let refusal = refused(&l, &r);
        assert_eq!(refusal.kind, RefusalKind::WrongTarget);
        assert!(
            refusal.reason.contains("backend-1, backend-2"),
            "{refusal:?}"
        );
    }

    #[test]
    fn yum_packages_must_be_rpm_files_and_the_ssh_runner_checks_the_path_only() {
        let l = Allowlist::new(
            Installer::Yum,
            Procedure::UpgradeCommand,
            BTreeMap::from([("backend-1".to_string(), "h".to_string())]),
            PackageCheck::PathOnly,
        );
        assert!(l
            .check(&req(
                "install",
                &["yum", "install", "-y", "/remote/only/p.rpm"]
            ))
            .is_ok());
        let r = refused(
            &l,
            &req("install", &["yum", "install", "-y", "https://x/p.rpm"]),
        );
        assert!(r.reason.contains("a URL"), "{r:?}");
        let r = refused(&l, &req("install", &["yum", "install", "-y", "/tmp/p.deb"]));
        assert!(r.reason.contains("must end in .rpm"), "{r:?}");
        assert!(l
            .check(&req(
                "upgrade_leader",
                &["chef-backend-ctl", "upgrade", "--failover"]
            ))
            .is_ok());
    }

    /// The shipped etcd profile, with a cluster file as scripts/real/etcd/cluster.sh writes it.
    fn etcd_cluster(root: &Path) -> ClusterFile {
        let mut toml =
            String::from("[cluster]\nname = \"etcd\"\nprofile = \"profiles/etcd.toml\"\n");
        for (i, id) in ["8e9e05c52164694d", "91bc3c398fb3c146", "fd422379fda50e48"]
            .iter()
            .enumerate()
        {
            let m = format!("m{}", i + 1);
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"{m}\"\naddress = \"127.0.0.1:{}\"\nexecutor = \"{m}\"\n\
                 vars = {{ ctl = \"{r}/{m}/ctl\", etcdctl = \"{r}/{m}/current/bin/etcdctl\", \
                 endpoints = \"127.0.0.1:2379,127.0.0.1:2380,127.0.0.1:2381\", member_id = \"{id}\" }}\n",
                2379 + i,
                r = root.display()
            ));
        }
        toml.push_str("\n[upgrade]\ntarget_version = \"3.5.1\"\n");
        let mut cluster = ClusterFile::parse("cluster.toml", &toml).unwrap();
        cluster.profile_text = Some(include_str!("../../profiles/etcd.toml").to_string());
        cluster
    }

    fn etcd_list(cluster: &ClusterFile, nodes: &[&str]) -> Allowlist {
        let nodes = nodes
            .iter()
            .map(|n| (n.to_string(), cluster.node(n).unwrap().address.clone()))
            .collect();
        Allowlist::for_profile_file(cluster, nodes, PackageCheck::Local).unwrap()
    }

    /// The SHA-256 of `text`, as `sha256sum` prints it.
    fn sha256_of(text: &str) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    const ETCD_PROFILE: &str = include_str!("../../profiles/etcd.toml");
    const ETCD_HTTP_PROFILE: &str = include_str!("../../profiles/etcd-http.toml");

    /// An HTTP probe's argv passes only as the executor's own profile renders it for the node: a request that
    /// points it at another host, port, path or body, or that adds an endpoint, is refused, so a request cannot
    /// make the executor send HTTP anywhere its profile and cluster file do not.
    #[test]
    fn an_http_probe_is_allowed_only_as_its_own_profile_renders_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = etcd_cluster(dir.path());
        cluster.profile_text = Some(ETCD_HTTP_PROFILE.to_string());
        let l = etcd_list(&cluster, &["m1"]);
        let m1 = cluster.node("m1").unwrap();
        let ctx = RenderContext {
            node: "m1",
            address: &m1.address,
            vars: Some(&m1.vars),
            ..RenderContext::default()
        };
        let req = |action: Action, argv: Vec<String>| StepRequest {
            profile_sha256: Some(sha256_of(ETCD_HTTP_PROFILE)),
            ..etcd_req("m1", action, argv)
        };
        for probe in [
            Action::ProbeClusterStatus,
            Action::ProbeStatus,
            Action::ProbeRunningVersion,
        ] {
            let argv = render(&l.profile().action(probe).unwrap().argv, &ctx).unwrap();
            assert_eq!(
                argv[0],
                crate::runner::http::HTTP_PROGRAM,
                "{probe}: {argv:?}"
            );
            assert!(
                l.check(&req(probe, argv.clone())).is_ok(),
                "{probe}: {argv:?}"
            );
            for (i, forged) in [
                (2, "127.0.0.1:2379,169.254.169.254:80"),
                (2, "10.0.0.1:2379"),
                (3, "/v3/kv/deleterange"),
                (4, "{\"key\":\"AA==\"}"),
                (5, "600000"),
                (1, "DELETE"),
                (6, "/tmp/another-ca.pem"),
                (8, "/etc/ssl/private/key.pem"),
            ] {
                let mut bad = argv.clone();
                bad[i] = forged.to_string();
                let r = l.check(&req(probe, bad.clone())).unwrap_err();
                assert_eq!(r.kind, RefusalKind::NotAllowed, "{probe} {bad:?}: {r:?}");
            }
            // Another probe's request under this probe's name.
            let other = if probe == Action::ProbeStatus {
                Action::ProbeRunningVersion
            } else {
                Action::ProbeStatus
            };
            let theirs = render(&l.profile().action(other).unwrap().argv, &ctx).unwrap();
            assert!(l.check(&req(probe, theirs)).is_err(), "{probe}");
        }
    }

    /// A step of the shipped etcd profile, planned with it (its hash).
    fn etcd_req(node: &str, action: Action, argv: Vec<String>) -> StepRequest {
        StepRequest {
            node: node.into(),
            group: node.into(),
            action: action.as_str().into(),
            argv,
            profile_sha256: Some(sha256_of(ETCD_PROFILE)),
            ..req("x", &[])
        }
    }

    /// The issue-13 review's attack: an operator submits a profile whose commands are the executor's but whose
    /// parsers lie (a member that does not answer its health check counts as up, and nobody is ever behind the
    /// leader). Every argv of it passes the argv checks; the hash of the text the service reads the output with
    /// does not, and the refusal names the step, its node and both hashes.
    #[test]
    fn a_step_planned_with_another_profile_text_is_refused_naming_both_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = etcd_cluster(dir.path());
        let l = etcd_list(&cluster, &["m1"]);
        let ours = sha256_of(ETCD_PROFILE);
        assert_eq!(l.profile().source_sha256.as_deref(), Some(ours.as_str()));
        let lying = ETCD_PROFILE
            .replace(
                r#"up_when = { pointer = "/0/health", in = [true] }"#,
                r#"up_when = { pointer = "/0/health", in = [true, false] }"#,
            )
            .replace(
                r#"behind_leader = ["/Status/raftAppliedIndex", "/Status/raftIndex"]"#,
                "",
            )
            .replace("max_lag = 100\n", "");
        assert_ne!(lying, ETCD_PROFILE);
        let mut submitted = cluster.clone();
        submitted.profile_text = Some(lying.clone());
        let theirs = Profile::of_cluster(&submitted).expect("the lying profile is a valid profile");
        assert_eq!(
            theirs.source_sha256.as_deref(),
            Some(sha256_of(&lying).as_str())
        );
        // Same commands: the service's rendering of the lying profile passes the argv checks.
        let m1 = cluster.node("m1").unwrap();
        let ctx = RenderContext {
            node: "m1",
            address: &m1.address,
            vars: Some(&m1.vars),
            ..RenderContext::default()
        };
        for probe in [Action::ProbeClusterStatus, Action::ProbeStatus] {
            let argv = render(&theirs.action(probe).unwrap().argv, &ctx).unwrap();
            assert_eq!(
                argv,
                render(&l.profile().action(probe).unwrap().argv, &ctx).unwrap()
            );
            let honest = etcd_req("m1", probe, argv.clone());
            assert!(l.check(&honest).is_ok(), "{probe}");
            let forged = StepRequest {
                profile_sha256: theirs.source_sha256.clone(),
                ..honest.clone()
            };
            let r = l.check(&forged).unwrap_err();
            assert_eq!(r.kind, RefusalKind::WrongProfile, "{r:?}");
            for needle in [
                format!("step {probe} for node m1"),
                format!("planned with profile sha256 {}", sha256_of(&lying)),
                format!("serves profile file etcd with sha256 {ours}"),
                "refused, nothing run".to_string(),
            ] {
                assert!(r.reason.contains(&needle), "{needle}: {r:?}");
            }
            // No hash at all (a built-in profile's step, or a service that does not send one) is refused too.
            let bare = StepRequest {
                profile_sha256: None,
                ..honest
            };
            let r = l.check(&bare).unwrap_err();
            assert_eq!(r.kind, RefusalKind::WrongProfile, "{r:?}");
            assert!(r.reason.contains("carries no profile sha256"), "{r:?}");
            assert!(r.reason.contains(&ours), "{r:?}");
            assert!(
                r.reason.contains(&format!("step {probe} for node m1")),
                "{r:?}"
            );
        }
    }

    #[test]
    fn a_built_in_profiles_executor_refuses_a_step_that_names_a_profile_file() {
        let dir = tempfile::tempdir().unwrap();
        let l = list(dir.path(), Installer::Dpkg, Procedure::Runbook);
        let spec = l.profile().action(Action::ProbeStatus).unwrap();
        let ctx = RenderContext {
            node: "backend-1",
            address: "10.0.0.1",
            ..RenderContext::default()
        };
        let argv = render(&spec.argv, &ctx).unwrap();
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let status = req(Action::ProbeStatus.as_str(), &argv);
        l.check(&status).unwrap();
        let sha = sha256_of(ETCD_PROFILE);
        let r = l
            .check(&StepRequest {
                profile_sha256: Some(sha.clone()),
                ..status
            })
            .unwrap_err();
        assert_eq!(r.kind, RefusalKind::WrongProfile, "{r:?}");
        for needle in [
            "step probe_status for node backend-1".to_string(),
            format!("planned with profile sha256 {sha}"),
            "serves the built-in profile chef-backend (installer dpkg, procedure runbook)"
                .to_string(),
        ] {
            assert!(r.reason.contains(&needle), "{needle}: {r:?}");
        }
    }

    #[test]
    fn every_rendering_of_a_profile_files_plan_and_probes_is_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("etcd-3.5.1");
        std::fs::create_dir(&package).unwrap();
        let package = package.to_str().unwrap();
        let cluster = etcd_cluster(dir.path());
        let profile = Profile::of_cluster(&cluster).unwrap();
        let l = etcd_list(&cluster, &["m1", "m2", "m3"]);
        // The plan the service makes, for each leader: its switchover names a target.
        let mut seen_switchover = 0;
        for leader in ["m1", "m2", "m3"] {
            let plan = workflow::core::compute_plan(&workflow::core::PlanInputs {
                cluster: &cluster,
                profile: &profile,
                package,
                target_version: "3.5.1",
                gates: &[],
                leader,
                guids: BTreeMap::new(),
                versions: BTreeMap::new(),
                running: BTreeMap::new(),
            })
            .unwrap();
            for item in &plan.items {
                if let workflow::core::PlanItem::Run {
                    node, action, argv, ..
                } = item
                {
                    if *action == Action::Demote {
                        seen_switchover += 1;
                        assert!(
                            argv.last().unwrap().len() == 16 && !argv.last().unwrap().contains('{'),
                            "{argv:?}"
                        );
                    }
                    l.check(&etcd_req(node, *action, argv.clone()))
                        .unwrap_or_else(|e| panic!("{action} on {node}: {e:?}"));
                }
            }
        }
        assert_eq!(seen_switchover, 3);
        // Every action and probe as the core renders it at schedule time (no target), and the switchover
        // to every other node.
        for node in &cluster.nodes {
            for (action, spec) in &profile.actions {
                let targets: Vec<Option<&NodeSpec>> =
                    if spec.argv.iter().any(|e| e.contains("{target")) {
                        cluster
                            .nodes
                            .iter()
                            .filter(|t| t.name != node.name)
                            .map(Some)
                            .collect()
                    } else {
                        vec![None]
                    };
                for target in targets {
                    let ctx = RenderContext {
                        package,
                        node: &node.name,
                        address: &node.address,
                        vars: Some(&node.vars),
                        version: "3.5.1",
                        target,
                    };
                    let argv = render(&spec.argv, &ctx).unwrap();
                    l.check(&etcd_req(&node.name, *action, argv))
                        .unwrap_or_else(|e| panic!("{action} on {}: {e:?}", node.name));
                }
            }
        }
    }

    #[test]
    fn a_profile_files_allow_list_refuses_a_changed_var_a_foreign_target_and_an_extra_element() {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("etcd-3.5.1");
        std::fs::create_dir(&package).unwrap();
        let package = package.to_str().unwrap().to_string();
        let cluster = etcd_cluster(dir.path());
        let l = etcd_list(&cluster, &["m1", "m2"]);
        let m1 = cluster.node("m1").unwrap();
        let ctl = m1.vars["ctl"].clone();
        let ok = |action: Action, argv: &[&str]| {
            etcd_req("m1", action, argv.iter().map(|s| s.to_string()).collect())
        };
        assert!(l.check(&ok(Action::Stop, &[&ctl, "stop"])).is_ok());
        assert!(l
            .check(&ok(Action::Install, &[&ctl, "install", &package]))
            .is_ok());

        let refused_with = |r: &StepRequest, needle: &str| {
            let refusal = l.check(r).expect_err("should be refused");
            assert_eq!(refusal.kind, RefusalKind::NotAllowed, "{refusal:?}");
            assert!(refusal.reason.contains(needle), "{needle}: {refusal:?}");
        };
        // Another node's var (m2's ctl on m1), a changed var, an extra or a missing element.
        let m2_ctl = cluster.node("m2").unwrap().vars["ctl"].clone();
        refused_with(
            &ok(Action::Stop, &[&m2_ctl, "stop"]),
            "not action stop's template",
        );
        refused_with(&ok(Action::Stop, &["/bin/sh", "stop"]), "expected");
        refused_with(&ok(Action::Stop, &[&ctl, "stop", "--now"]), "3 elements");
        refused_with(&ok(Action::Start, &[&ctl]), "1 elements");
        refused_with(
            &ok(Action::Stop, &[&ctl, "start"]),
            "not action stop's template",
        );
        // A free parameter that is not a package path.
        for (bad, why) in [
            ("-rf", "starts with '-'"),
            ("relative/etcd", "not an absolute path"),
            ("/tmp/../etc", "`..`"),
            ("http://x/etcd", "a URL"),
            ("/nonexistent/etcd-3.5.1", "cannot be read"),
        ] {
            refused_with(&ok(Action::Install, &[&ctl, "install", bad]), why);
        }
        // The switchover: to another node of the cluster file (m3 is served by another executor) is allowed;
        // to itself, to a member ID not in the cluster file, or with another member's endpoints is not.
        let spec = l.profile().action(Action::Demote).unwrap().clone();
        let switchover = |target: &NodeSpec| {
            let ctx = RenderContext {
                node: "m1",
                address: &m1.address,
                vars: Some(&m1.vars),
                target: Some(target),
                ..RenderContext::default()
            };
            render(&spec.argv, &ctx).unwrap()
        };
        let to_m3 = switchover(cluster.node("m3").unwrap());
        assert!(l
            .check(&etcd_req("m1", Action::Demote, to_m3.clone()))
            .is_ok());
        let to_self = switchover(m1);
        refused_with(
            &etcd_req("m1", Action::Demote, to_self),
            "with a target among m2, m3",
        );
        let mut foreign = to_m3.clone();
        *foreign.last_mut().unwrap() = "1234567890abcdef".into();
        refused_with(
            &etcd_req("m1", Action::Demote, foreign),
            "not action demote's template",
        );
        let mut extra = to_m3;
        extra.push("--insecure-skip-tls-verify".into());
        refused_with(&etcd_req("m1", Action::Demote, extra), "elements");
        // An action the profile does not have (no fence), and a node this executor does not serve.
        refused_with(
            &ok(Action::BlockFailover, &[&ctl, "stop"]),
            "not in this executor's profile file etcd",
        );
        let r = l
            .check(&etcd_req("m3", Action::Stop, vec![m2_ctl, "stop".into()]))
            .unwrap_err();
        assert_eq!(r.kind, RefusalKind::WrongTarget, "{r:?}");
    }

    #[test]
    fn a_version_placeholder_is_a_free_parameter_checked_as_a_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = etcd_cluster(dir.path());
        let text = cluster.profile_text.take().unwrap().replace(
            r#"argv = ["{var.ctl}", "install", "{package}"]"#,
            r#"argv = ["{var.ctl}", "install", "{package}/etcd-v{version}-linux", "--version={version}"]"#,
        );
        assert!(text.contains("--version={version}"));
        cluster.profile_text = Some(text);
        let l = etcd_list(&cluster, &["m1"]);
        let ctl = cluster.node("m1").unwrap().vars["ctl"].clone();
        let install = |p: &str, v: &str| {
            etcd_req(
                "m1",
                Action::Install,
                vec![
                    ctl.clone(),
                    "install".into(),
                    p.into(),
                    format!("--version={v}"),
                ],
            )
        };
        let install = |p: &str, v: &str| StepRequest {
            profile_sha256: l.profile().source_sha256.clone(),
            ..install(p, v)
        };
        let pkg = dir.path().join("etcd-v3.5.1-linux");
        std::fs::create_dir(&pkg).unwrap();
        let root = dir.path().to_str().unwrap();
        assert!(l.check(&install(pkg.to_str().unwrap(), "3.5.1")).is_ok());
        // The two occurrences of {version} must agree, and a version is a version.
        let r = l
            .check(&install(pkg.to_str().unwrap(), "3.5.2"))
            .unwrap_err();
        assert!(r.reason.contains("two different values"), "{r:?}");
        let odd = dir.path().join("etcd-v-x-linux");
        std::fs::create_dir(&odd).unwrap();
        let r = l.check(&install(odd.to_str().unwrap(), "-x")).unwrap_err();
        assert!(r.reason.contains("is not a version"), "{r:?}");
        let r = l
            .check(&install(&format!("{root}/etcd-3.5.1"), "3.5.1"))
            .unwrap_err();
        assert!(r.reason.contains("does not have the shape"), "{r:?}");
    }

    /// Hostile review 14 (P3): `baton:http` is reserved so that only a profile's `http = { ... }` probe reaches
    /// the executor's HTTP runner ("a plain argv may not name it"), but the loader checks the template's first
    /// element as written, and the runner dispatches on the rendered `argv[0]`. A node var makes any action's
    /// program the reserved name: the shipped etcd profile's `stop` (`["{var.ctl}", "stop"]`) with
    /// `ctl = "baton:http"` passes the allow list, and the executor then answers that action with its HTTP runner
    /// (here a malformed HTTP probe; with a 6-element action, requests made by an action). Fix: the allow list
    /// (and the core's rendering) refuse a rendered program equal to `HTTP_PROGRAM` unless the template's first
    /// element is literally it and the action is a probe; better, the runner dispatches on the matched template
    /// being an HTTP probe, never on the request's argv[0].
    #[tokio::test]
    async fn review14_an_action_whose_program_renders_to_the_reserved_http_name_is_refused() {
        use workflow::core::profile_file::HTTP_PROGRAM;
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = etcd_cluster(dir.path());
        for node in &mut cluster.nodes {
            node.vars.insert("ctl".into(), HTTP_PROGRAM.into());
        }
        let l = etcd_list(&cluster, &["m1"]);
        let stop = etcd_req("m1", Action::Stop, vec![HTTP_PROGRAM.into(), "stop".into()]);
        // What the executor does with it once allowed: its HTTP runner answers the action.
        let ran = crate::runner::RunnerConfig::Local
            .run(&stop, "127.0.0.1:2379", 1024, None)
            .await;
        let allowed = l.check(&stop);
        assert!(
            allowed.is_err(),
            "action stop rendered to the reserved {HTTP_PROGRAM:?} was allowed; the runner answered it as an \
             HTTP probe: {:?}",
            ran.reason
        );
    }

    #[test]
    fn a_profile_file_allow_list_needs_the_profile_text_and_its_nodes_in_the_cluster_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut cluster = etcd_cluster(dir.path());
        let nodes = BTreeMap::from([("m9".to_string(), "h".to_string())]);
        let why = Allowlist::for_profile_file(&cluster, nodes, PackageCheck::Local).unwrap_err();
        assert!(why.contains("node m9 is not in the cluster file"), "{why}");
        cluster.profile_text = None;
        let why = Allowlist::for_profile_file(&cluster, BTreeMap::new(), PackageCheck::Local)
            .unwrap_err();
        assert!(why.contains("did not come with the submission"), "{why}");
    }
}
