//! chef-backend's built-in profile: `profiles/chef-backend.toml` compiled in (the runbook with dpkg), with the
//! cluster file's variants applied on top: the package tool ([`Installer`]: yum's install and version
//! commands) and the procedure (the newer docs' `upgrade` commands).

use serde::{Deserialize, Serialize};

use crate::core::profile::{Action, ActionSpec, Procedure, Profile, RunsOn};
use crate::core::profile_file::ProfileFile;

/// Which package tool installs the new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Installer {
    /// Debian/Ubuntu: `dpkg -i PATH`, versions from `dpkg-query`.
    #[default]
    Dpkg,
    /// RedHat/CentOS: `yum install -y PATH`, versions from `rpm -q`.
    Yum,
}

impl Installer {
    /// The package tool a cluster file's `upgrade.installer` names; `Err` says which names there are.
    pub fn from_name(name: &str) -> Result<Installer, String> {
        match name {
            "dpkg" => Ok(Installer::Dpkg),
            "yum" => Ok(Installer::Yum),
            other => Err(format!(
                "unknown installer `{other}` (expected dpkg or yum)"
            )),
        }
    }
}

/// chef-backend's profile file, compiled in: `profile = "chef-backend"` runs what it says.
pub const CHEF_BACKEND_PROFILE: &str = include_str!("../../../../../profiles/chef-backend.toml");

fn spec(argv: &[&str], runs_on: RunsOn, idempotent: bool, timeout_ms: u64) -> ActionSpec {
    ActionSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        runs_on,
        idempotent,
        timeout_ms,
    }
}

impl Profile {
    /// The built-in chef-backend profile for the given package tool and procedure: `profiles/chef-backend.toml`
    /// (the runbook with dpkg), with the cluster file's variant applied on top: yum's install and package
    /// commands, or the newer docs' `upgrade` commands.
    pub fn chef_backend(installer: Installer, procedure: Procedure) -> Profile {
        use RunsOn::*;
        static BASE: std::sync::OnceLock<Profile> = std::sync::OnceLock::new();
        let mut profile = BASE
            .get_or_init(|| {
                let file = ProfileFile::parse("profiles/chef-backend.toml", CHEF_BACKEND_PROFILE)
                    .unwrap_or_else(|e| panic!("the compiled-in chef-backend profile loads: {e}"));
                let mut p = Profile::from_file(&file, "")
                    .unwrap_or_else(|e| panic!("the compiled-in chef-backend profile runs: {e}"));
                p.source_sha256 = None;
                // The built-in profile's emergency window is the cluster file's (its default is leaderl's 10 s).
                p.election_ms = None;
                p
            })
            .clone();
        const CTL: &str = "chef-backend-ctl";
        if installer == Installer::Yum {
            profile.actions.insert(
                Action::Install,
                spec(
                    &["yum", "install", "-y", "{package}"],
                    TheNode,
                    true,
                    900_000,
                ),
            );
            profile.actions.insert(
                Action::ProbeVersion,
                spec(
                    &[
                        "rpm",
                        "-q",
                        "--qf",
                        "%{{VERSION}}-%{{RELEASE}}",
                        "chef-backend",
                    ],
                    TheNode,
                    true,
                    30_000,
                ),
            );
            profile.actions.insert(
                Action::ProbePackage,
                spec(
                    &[
                        "rpm",
                        "-qp",
                        "--qf",
                        "%{{VERSION}}-%{{RELEASE}}",
                        "{package}",
                    ],
                    TheNode,
                    true,
                    30_000,
                ),
            );
            profile.hints.fix_package = "yum-complete-transaction".into();
        }
        if procedure == Procedure::UpgradeCommand {
            profile.actions.insert(
                Action::Upgrade,
                spec(&[CTL, "upgrade"], TheNode, true, 1_800_000),
            );
            profile.actions.insert(
                Action::UpgradeLeader,
                spec(&[CTL, "upgrade", "--failover"], Leader, false, 1_800_000),
            );
        }
        profile.installer = installer;
        profile.procedure = procedure;
        profile
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::core::profile::Hints;

    const CTL: &str = "chef-backend-ctl";

    /// chef-backend's profile as the code said it before it became a file: the oracle for "exactly today's
    /// behaviour".
    fn chef_backend_as_coded(installer: Installer, procedure: Procedure) -> Profile {
        use RunsOn::*;
        let mut actions = BTreeMap::new();
        actions.insert(
            Action::BlockFailover,
            spec(&[CTL, "set-cluster-failover", "off"], AnyNode, true, 60_000),
        );
        actions.insert(
            Action::UnblockFailover,
            spec(&[CTL, "set-cluster-failover", "on"], AnyNode, true, 60_000),
        );
        actions.insert(Action::Stop, spec(&[CTL, "stop"], TheNode, true, 300_000));
        actions.insert(Action::Start, spec(&[CTL, "start"], TheNode, true, 300_000));
        let install: &[&str] = match installer {
            Installer::Dpkg => &["dpkg", "-i", "{package}"],
            Installer::Yum => &["yum", "install", "-y", "{package}"],
        };
        actions.insert(Action::Install, spec(install, TheNode, true, 900_000));
        actions.insert(
            Action::Demote,
            spec(&[CTL, "demote"], Leader, false, 300_000),
        );
        if procedure == Procedure::UpgradeCommand {
            actions.insert(
                Action::Upgrade,
                spec(&[CTL, "upgrade"], TheNode, true, 1_800_000),
            );
            actions.insert(
                Action::UpgradeLeader,
                spec(&[CTL, "upgrade", "--failover"], Leader, false, 1_800_000),
            );
        }
        actions.insert(
            Action::ProbeClusterStatus,
            spec(&[CTL, "cluster-status"], AnyNode, true, 30_000),
        );
        actions.insert(
            Action::ProbeStatus,
            spec(&[CTL, "status"], TheNode, true, 30_000),
        );
        let version: &[&str] = match installer {
            // The state shows a package that a failed `dpkg -i` left half-configured.
            Installer::Dpkg => &[
                "dpkg-query",
                "-W",
                "-f=${{db:Status-Status}} ${{Version}}\\n",
                "chef-backend",
            ],
            Installer::Yum => &[
                "rpm",
                "-q",
                "--qf",
                "%{{VERSION}}-%{{RELEASE}}",
                "chef-backend",
            ],
        };
        actions.insert(Action::ProbeVersion, spec(version, TheNode, true, 30_000));
        actions.insert(
            Action::ProbeFailover,
            spec(&[CTL, "cluster-status", "--json"], AnyNode, true, 30_000),
        );
        let package: &[&str] = match installer {
            Installer::Dpkg => &["dpkg-deb", "--field", "{package}", "Version"],
            Installer::Yum => &[
                "rpm",
                "-qp",
                "--qf",
                "%{{VERSION}}-%{{RELEASE}}",
                "{package}",
            ],
        };
        actions.insert(Action::ProbePackage, spec(package, TheNode, true, 30_000));
        let fix_package = match installer {
            Installer::Dpkg => "dpkg --configure -a",
            Installer::Yum => "yum-complete-transaction",
        };
        Profile {
            name: "chef-backend".into(),
            system: "chef-backend".into(),
            hints: Hints {
                node_failover_on: format!("{CTL} set-node-failover on, on that node"),
                cluster_failover_on: format!("{CTL} set-cluster-failover on"),
                fix_package: fix_package.into(),
                major_change: "chef-backend's down-for-upgrade".into(),
                quorum:
                    "etcd loses its quorum (a majority of the nodes) as soon as one node is stopped"
                        .into(),
            },
            procedure,
            installer,
            actions,
            reader: None,
            fence: true,
            switchover_keeps_fence: false,
            min_members: 3,
            probe_rounds: false,
            election_ms: None,
            version_change: None,
            source_sha256: None,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn chef_backend_runs_from_its_profile_file_exactly_as_it_was_coded() {
        for installer in [Installer::Dpkg, Installer::Yum] {
            for procedure in [Procedure::Runbook, Procedure::UpgradeCommand] {
                assert_eq!(
                    Profile::chef_backend(installer, procedure),
                    chef_backend_as_coded(installer, procedure),
                    "{installer:?} {procedure:?}"
                );
            }
        }
        // The file is what runs: an edit to it changes the profile (the comparison above can fail).
        let edited = CHEF_BACKEND_PROFILE.replace("timeout_ms = 900000", "timeout_ms = 900001");
        let file = ProfileFile::parse("chef-backend.toml", &edited).unwrap();
        let mut p = Profile::from_file(&file, "").unwrap();
        p.source_sha256 = None;
        assert_ne!(
            p,
            chef_backend_as_coded(Installer::Dpkg, Procedure::Runbook)
        );
    }

    #[test]
    fn chef_backend_covers_both_procedures() {
        let runbook = Profile::chef_backend(Installer::Dpkg, Procedure::Runbook);
        assert!(runbook.action(Action::Upgrade).is_none());
        assert!(!runbook.action(Action::Demote).unwrap().idempotent);
        let newer = Profile::chef_backend(Installer::Yum, Procedure::UpgradeCommand);
        assert_eq!(
            newer.action(Action::UpgradeLeader).unwrap().argv,
            strings(&[CTL, "upgrade", "--failover"])
        );
        assert!(!newer.action(Action::UpgradeLeader).unwrap().idempotent);
        assert!(newer.action(Action::Upgrade).unwrap().idempotent);
        assert_eq!(
            newer.action(Action::Install).unwrap().argv[..2],
            strings(&["yum", "install"])
        );
        for action in Action::ALL {
            assert_eq!(Action::from_name(action.as_str()), Some(action));
        }
    }
}
