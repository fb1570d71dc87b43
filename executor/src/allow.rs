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
//! This holds even for a request that is otherwise perfectly formed and comes from the real service: it is a
//! defence in depth, not a replacement for authenticating the sender (see THREATS.md).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path};

use protocol::StepRequest;
use workflow::core::profile::render;
use workflow::core::{Action, Installer, Procedure, Profile, RenderContext};

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
}

impl RefusalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalKind::WrongTarget => "wrong_target",
            RefusalKind::NotAllowed => "not_allowed",
            RefusalKind::Stale => "stale",
            RefusalKind::Conflict => "conflict",
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
}

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
        }
    }

    /// The address of `node` as this executor knows it (the configured one, else the node name).
    pub fn address(&self, node: &str) -> Option<&str> {
        self.nodes.get(node).map(String::as_str)
    }

    fn describe(&self) -> String {
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

/// A value for an allowed env key: at most 128 characters of `[A-Za-z0-9_.:/@+-]`, not starting with `-`.
pub fn env_value_ok(value: &str) -> bool {
    value.len() <= 128
        && !value.starts_with('-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/@+-".contains(&b))
}

/// Why `package` may not be handed to the installer, if it may not.
pub fn check_package(
    package: &str,
    installer: Installer,
    check: PackageCheck,
) -> Result<(), String> {
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
}
