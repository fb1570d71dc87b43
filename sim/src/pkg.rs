//! The package tools: `dpkg -i`, `dpkg-query -W`, `yum install`, `rpm -U` / `rpm -q`.
//!
//! The installed version is taken from the package file name (`chef-backend_3.1.0-1_amd64.deb`,
//! `chef-backend-3.1.0-1.el7.x86_64.rpm`); the file must exist. Installing changes the installed version
//! only; the running version changes when the services (re)start. Messages mimic the real tools.
//! `yum install` without `-y` fails like yum does when nobody answers its prompt.

use std::path::Path;

use crate::model::PkgState;
use crate::store::Sim;
use crate::{Error, Output};

/// A parsed package file name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    /// `X.Y.Z-R`
    pub version: String,
    /// rpm dist tag (`el7`), empty for debs.
    pub dist: String,
    pub arch: String,
}

/// Checks a version is `X.Y.Z-R` (all numeric).
pub fn check_version(v: &str) -> Result<(), String> {
    let ok = v.split_once('-').is_some_and(|(up, rel)| {
        let parts: Vec<&str> = up.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            && !rel.is_empty()
            && rel.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(format!("version {v:?} is not X.Y.Z-R (e.g. 3.1.0-1)"))
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Parses `chef-backend_3.1.0-1_amd64.deb`.
pub fn parse_deb(path: &str) -> Option<Package> {
    let rest = file_name(path)
        .strip_prefix("chef-backend_")?
        .strip_suffix(".deb")?;
    let (version, arch) = rest.split_once('_')?;
    check_version(version).ok()?;
    (!arch.is_empty()).then(|| Package {
        version: version.into(),
        dist: String::new(),
        arch: arch.into(),
    })
}

/// Parses `chef-backend-3.1.0-1.el7.x86_64.rpm`.
pub fn parse_rpm(path: &str) -> Option<Package> {
    let rest = file_name(path)
        .strip_prefix("chef-backend-")?
        .strip_suffix(".rpm")?;
    let (vr, arch) = rest.rsplit_once('.')?;
    let (upstream, release) = vr.split_once('-')?;
    let (rel, dist) = release.split_once('.').unwrap_or((release, ""));
    let version = format!("{upstream}-{rel}");
    check_version(&version).ok()?;
    (!arch.is_empty()).then(|| Package {
        version,
        dist: dist.into(),
        arch: arch.into(),
    })
}

/// Installs `pkg` on `node` unless the install fault fires. Returns the previous version, or the error
/// reason when the fault fired.
fn install(
    sim: &Sim,
    node: &str,
    pkg: &Package,
) -> Result<Result<(String, String), String>, Error> {
    sim.transact(|tx, now| {
        let i = tx
            .cluster
            .index(node)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
        let old = (
            tx.cluster.nodes[i].installed.clone(),
            tx.cluster.nodes[i].dist.clone(),
        );
        let dist = if pkg.dist.is_empty() {
            old.1.clone()
        } else {
            pkg.dist.clone()
        };
        if tx.cluster.nodes[i].faults.install_fails {
            let reason = "post-installation script subprocess returned error exit status 1";
            tx.install_failed(i, now, &pkg.version, &dist, reason);
            return Ok(Err(reason.to_string()));
        }
        tx.install(i, now, &pkg.version, &dist);
        Ok(Ok(old))
    })?
}

fn installed(sim: &Sim, node: &str) -> Result<(String, String), Error> {
    let (v, d, _) = installed_state(sim, node)?;
    Ok((v, d))
}

fn installed_state(sim: &Sim, node: &str) -> Result<(String, String, PkgState), Error> {
    let c = sim.state()?;
    let i = c
        .index(node)
        .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
    let n = &c.nodes[i];
    Ok((n.installed.clone(), n.dist.clone(), n.pkg))
}

/// `dpkg --configure -a` / `dpkg --configure chef-backend`.
fn dpkg_configure(sim: &Sim, node: &str, rest: &[String]) -> Result<Output, Error> {
    let Some(what) = rest.first() else {
        return Ok(Output::fail(2, "dpkg: error: --configure needs at least one package name argument\n\nType dpkg --help for help about installing and deinstalling packages [*];\n"));
    };
    if what != "-a" && what != "--pending" && what != "chef-backend" {
        return Ok(Output::fail(
            1,
            format!("dpkg: error processing package {what} (--configure):\n package {what} is not installed and no information is available\nErrors were encountered while processing:\n {what}\n"),
        ));
    }
    sim.transact(|tx, now| {
        let i = tx
            .cluster
            .index(node)
            .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
        let n = &tx.cluster.nodes[i];
        let version = n.installed.clone();
        if n.pkg == PkgState::Installed {
            return Ok(if what == "chef-backend" {
                Output::fail(1, "dpkg: error processing package chef-backend (--configure):\n package chef-backend is already installed and configured\nErrors were encountered while processing:\n chef-backend\n")
            } else {
                Output::ok("")
            });
        }
        let setting_up = format!("Setting up chef-backend ({version}) ...\n");
        if tx.configure(i, now) {
            Ok(Output::ok(setting_up))
        } else {
            Ok(Output {
                stdout: setting_up,
                stderr: "dpkg: error processing package chef-backend (--configure):\n installed chef-backend package post-installation script subprocess returned error exit status 1\nErrors were encountered while processing:\n chef-backend\n".into(),
                code: 1,
            })
        }
    })?
}

/// `dpkg -i FILE`.
pub fn dpkg(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let (Some(action), rest) = (args.first(), args.get(1..).unwrap_or(&[])) else {
        return Ok(Output::fail(2, "dpkg: error: need an action option\n\nType dpkg --help for help about installing and deinstalling packages [*];\n"));
    };
    if action == "--configure" {
        return dpkg_configure(sim, node, rest);
    }
    if action != "-i" && action != "--install" {
        return Ok(Output::fail(2, format!("dpkg: error: unknown option {action}\n\nType dpkg --help for help about installing and deinstalling packages [*];\n")));
    }
    let Some(path) = rest.first() else {
        return Ok(Output::fail(2, "dpkg: error: --install needs at least one package archive file argument\n\nType dpkg --help for help about installing and deinstalling packages [*];\n"));
    };
    if !Path::new(path).is_file() {
        return Ok(Output::fail(
            2,
            format!("dpkg: error: cannot access archive '{path}': No such file or directory\n"),
        ));
    }
    let Some(pkg) = parse_deb(path) else {
        return Ok(Output::fail(1, format!(
            "dpkg-deb: error: '{path}' is not a Debian format archive\ndpkg: error processing archive {path} (--install):\n dpkg-deb --control subprocess returned error exit status 2\nErrors were encountered while processing:\n {path}\n"
        )));
    };
    let (old, _) = installed(sim, node)?;
    let mut stdout = format!(
        "(Reading database ... 18231 files and directories currently installed.)\nPreparing to unpack {path} ...\nUnpacking chef-backend ({}) over ({old}) ...\n",
        pkg.version
    );
    match install(sim, node, &pkg)? {
        Ok(_) => {
            stdout.push_str(&format!("Setting up chef-backend ({}) ...\n", pkg.version));
            Ok(Output::ok(stdout))
        }
        Err(reason) => Ok(Output {
            stdout: stdout + &format!("Setting up chef-backend ({}) ...\n", pkg.version),
            stderr: format!("dpkg: error processing package chef-backend (--install):\n installed chef-backend package {reason}\nErrors were encountered while processing:\n chef-backend\n"),
            code: 1,
        }),
    }
}

fn expand_escapes(fmt: &str) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Expands a dpkg-query `--showformat`: escapes, then `${Field}` and `${Field;width}` (unknown fields
/// expand to nothing, as dpkg-query does).
fn dpkg_format(fmt: &str, field: impl Fn(&str) -> Option<String>) -> String {
    let fmt = expand_escapes(fmt);
    let mut out = String::new();
    let mut rest = fmt.as_str();
    while let Some(k) = rest.find("${") {
        out.push_str(&rest[..k]);
        let after = &rest[k + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[k..]);
            return out;
        };
        let spec = &after[..end];
        let (name, width) = match spec.split_once(';') {
            Some((n, w)) => (n, w.parse::<i64>().ok()),
            None => (spec, None),
        };
        let value = field(name).unwrap_or_default();
        match width {
            Some(w) if w < 0 => out.push_str(&format!("{value:<w$}", w = (-w) as usize)),
            Some(w) => out.push_str(&format!("{value:>w$}", w = w as usize)),
            None => out.push_str(&value),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `dpkg-query -W [-f=FORMAT] chef-backend`.
pub fn dpkg_query(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let mut show = false;
    let mut format = "${Package}\t${Version}\n".to_string();
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-W" || a == "--show" {
            show = true;
        } else if let Some(f) = a
            .strip_prefix("-f=")
            .or_else(|| a.strip_prefix("--showformat="))
        {
            format = f.to_string();
        } else if a == "-f" || a == "--showformat" {
            format = it.next().cloned().unwrap_or_default();
        } else if let Some(f) = a.strip_prefix("-f") {
            format = f.to_string();
        } else {
            names.push(a.clone());
        }
    }
    if !show {
        return Ok(Output::fail(2, "dpkg-query: error: need an action option\n\nUse --help for help about querying packages.\n"));
    }
    let (version, _, state) = installed_state(sim, node)?;
    let mut out = Output::ok("");
    for name in names {
        if name != "chef-backend" {
            out.stderr
                .push_str(&format!("dpkg-query: no packages found matching {name}\n"));
            out.code = 1;
            continue;
        }
        let line = dpkg_format(&format, |f| {
            Some(match f {
                "Package" | "binary:Package" => "chef-backend".to_string(),
                "Version" => version.clone(),
                "Architecture" => "amd64".to_string(),
                "Status" => format!("install ok {}", state.status_word()),
                "db:Status-Want" => "install".to_string(),
                "db:Status-Eflag" => "ok".to_string(),
                "db:Status-Status" => state.status_word().to_string(),
                "db:Status-Abbrev" => state.abbrev().to_string(),
                _ => return None,
            })
        });
        out.stdout.push_str(&line);
    }
    Ok(out)
}

/// Opens `path` for reading as dpkg-deb and rpm do; the error text is the OS's (`No such file or
/// directory`, `Permission denied`).
fn readable(path: &str) -> Result<(), String> {
    match std::fs::File::open(path) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => Err("Is a directory".to_string()),
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::NotFound => "No such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "Permission denied".to_string(),
            _ => {
                let s = e.to_string();
                s.split(" (os error").next().unwrap_or(&s).to_string()
            }
        }),
    }
}

/// `dpkg-deb --field FILE [FIELD...]` (also `-f`): control fields of a package file, the version taken
/// from its name as `dpkg -i` does. One field prints its bare value; several print `Field: value` lines.
pub fn dpkg_deb(args: &[String]) -> Result<Output, Error> {
    let usage = "dpkg-deb: error: need an action option\n\nType dpkg-deb --help for help about manipulating *.deb files;\nType dpkg --help for help about installing and deinstalling packages.\n";
    let Some(action) = args.first() else {
        return Ok(Output::fail(2, usage));
    };
    if action != "--field" && action != "-f" {
        return Ok(Output::fail(
            2,
            format!("dpkg-deb: error: unknown option {action}\n\nType dpkg-deb --help for help about manipulating *.deb files;\n"),
        ));
    }
    let Some(path) = args.get(1) else {
        return Ok(Output::fail(
            2,
            "dpkg-deb: error: --field needs an archive filename argument\n",
        ));
    };
    if let Err(why) = readable(path) {
        return Ok(Output::fail(
            2,
            format!("dpkg-deb: error: failed to read archive '{path}': {why}\n"),
        ));
    }
    let Some(pkg) = parse_deb(path) else {
        return Ok(Output::fail(
            2,
            format!("dpkg-deb: error: '{path}' is not a Debian format archive\n"),
        ));
    };
    let fields: Vec<(&str, String)> = vec![
        ("Package", "chef-backend".to_string()),
        ("Version", pkg.version.clone()),
        ("Architecture", pkg.arch.clone()),
        (
            "Maintainer",
            "Chef Software, Inc. <maintainers@chef.io>".to_string(),
        ),
    ];
    let wanted = &args[2..];
    let mut out = String::new();
    if wanted.is_empty() {
        for (k, v) in &fields {
            out.push_str(&format!("{k}: {v}\n"));
        }
    } else {
        for w in wanted {
            let Some((k, v)) = fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(w)) else {
                continue;
            };
            if wanted.len() == 1 {
                out.push_str(&format!("{v}\n"));
            } else {
                out.push_str(&format!("{k}: {v}\n"));
            }
        }
    }
    Ok(Output::ok(out))
}

/// `yum install [-y] FILE` (also `localinstall`).
pub fn yum(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let assume_yes = args.iter().any(|a| a == "-y" || a == "--assumeyes");
    let words: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let Some(cmd) = words.first() else {
        return Ok(Output::fail(
            1,
            "You need to give some command\nusage: yum [options] COMMAND\n",
        ));
    };
    if cmd.as_str() != "install" && cmd.as_str() != "localinstall" {
        return Ok(Output::fail(
            1,
            format!("No such command: {cmd}. Please use /usr/bin/yum --help\n"),
        ));
    }
    let Some(path) = words.get(1) else {
        return Ok(Output::fail(
            1,
            "Error: Need to pass a list of pkgs to install\n",
        ));
    };
    let header = "Loaded plugins: fastestmirror\n";
    if !Path::new(path.as_str()).is_file() {
        return Ok(Output {
            stdout: format!("{header}Cannot open: {path}. Skipping.\n"),
            stderr: "Error: Nothing to do\n".into(),
            code: 1,
        });
    }
    let Some(pkg) = parse_rpm(path) else {
        return Ok(Output {
            stdout: header.to_string(),
            stderr: format!(
                "Cannot open: {path}. Skipping.\nError: {path}: not a chef-backend rpm package\n"
            ),
            code: 1,
        });
    };
    let (old, old_dist, state) = installed_state(sim, node)?;
    let full = format!("chef-backend-{}.{}.{}", pkg.version, pkg.dist, pkg.arch);
    let repair = state != PkgState::Installed && version_key(&pkg.version) == version_key(&old);
    if version_key(&pkg.version) <= version_key(&old) && !repair {
        return Ok(Output::ok(format!(
            "{header}Examining {path}: {full}\n{path}: does not update installed package.\nNothing to do\n"
        )));
    }
    let mut stdout = format!(
        "{header}Examining {path}: {full}\nMarking {path} as an update to chef-backend-{old}.{old_dist}.{arch}\nResolving Dependencies\n--> Running transaction check\n---> Package chef-backend.{arch} 0:{old}.{old_dist} will be updated\n---> Package chef-backend.{arch} 0:{new}.{dist} will be an update\n--> Finished Dependency Resolution\n",
        arch = pkg.arch,
        new = pkg.version,
        dist = pkg.dist
    );
    if !assume_yes {
        stdout.push_str("Is this ok [y/d/N]: ");
        return Ok(Output { stdout, stderr: "Exiting on user command\nYour transaction was saved, rerun it with:\n yum load-transaction /tmp/yum_save_tx.yumtx\n".into(), code: 1 });
    }
    stdout.push_str("Running transaction\n");
    match install(sim, node, &pkg)? {
        Ok(_) => {
            stdout.push_str(&format!("\nUpdated:\n  chef-backend.{} 0:{}.{}\n\nComplete!\n", pkg.arch, pkg.version, pkg.dist));
            Ok(Output::ok(stdout))
        }
        Err(reason) => Ok(Output {
            stdout,
            stderr: format!("error: %post(chef-backend-{}.{}.{}) scriptlet failed, exit status 1\nError in POSTIN scriptlet in rpm package chef-backend ({reason})\n", pkg.version, pkg.dist, pkg.arch),
            code: 1,
        }),
    }
}

/// `rpm -U[vh] FILE`, `rpm -i[vh] FILE`, `rpm -q [--qf FORMAT] chef-backend`.
pub fn rpm(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let Some(mode) = args.first() else {
        return Ok(Output::fail(1, "rpm: no operation specified\n"));
    };
    if mode.starts_with("-q") || mode == "--query" {
        let package_file = (mode.starts_with("-q") && mode[2..].contains('p'))
            || args[1..].iter().any(|a| a == "-p" || a == "--package");
        if package_file {
            return Ok(rpm_query_file(&args[1..]));
        }
        return rpm_query(sim, node, &args[1..]);
    }
    let install_mode = mode == "--upgrade"
        || mode == "--install"
        || mode.starts_with("-U")
        || mode.starts_with("-i");
    if !install_mode {
        return Ok(Output::fail(1, format!("rpm: unknown option {mode}\n")));
    }
    let verbose = mode.contains('v');
    let Some(path) = args[1..].iter().find(|a| !a.starts_with('-')) else {
        return Ok(Output::fail(1, "rpm: no packages given for install\n"));
    };
    if !Path::new(path).is_file() {
        return Ok(Output::fail(
            1,
            format!("error: open of {path} failed: No such file or directory\n"),
        ));
    }
    let Some(pkg) = parse_rpm(path) else {
        return Ok(Output::fail(
            1,
            format!("error: {path}: not an rpm package (or package manifest)\n"),
        ));
    };
    let (old, old_dist, state) = installed_state(sim, node)?;
    let full = format!("chef-backend-{}.{}.{}", pkg.version, pkg.dist, pkg.arch);
    let repair = state != PkgState::Installed && version_key(&pkg.version) == version_key(&old);
    if version_key(&pkg.version) == version_key(&old) && !repair {
        return Ok(Output::fail(
            1,
            format!("\tpackage {full} is already installed\n"),
        ));
    }
    if version_key(&pkg.version) < version_key(&old) {
        return Ok(Output::fail(1, format!("\tpackage chef-backend-{old}.{old_dist}.{} (which is newer than {full}) is already installed\n", pkg.arch)));
    }
    let bar = "################################# [100%]";
    let mut stdout = if verbose {
        format!("Preparing...                          {bar}\nUpdating / installing...\n   1:chef-backend-{}.{}       {bar}\n", pkg.version, pkg.dist)
    } else {
        String::new()
    };
    match install(sim, node, &pkg)? {
        Ok(_) => {
            if verbose {
                stdout.push_str(&format!(
                    "Cleaning up / removing...\n   2:chef-backend-{old}.{old_dist}       {bar}\n"
                ));
            }
            Ok(Output::ok(stdout))
        }
        Err(_) => Ok(Output {
            stdout,
            stderr: format!("warning: %post({full}) scriptlet failed, exit status 1\n"),
            code: 1,
        }),
    }
}

/// The `--qf FORMAT` and the other words of an rpm query.
fn rpm_query_args(args: &[String]) -> (String, Vec<String>) {
    let mut format = "%{NAME}-%{VERSION}-%{RELEASE}.%{ARCH}\\n".to_string();
    let mut names = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--qf" || a == "--queryformat" {
            format = it.next().cloned().unwrap_or_default();
        } else if let Some(f) = a
            .strip_prefix("--qf=")
            .or_else(|| a.strip_prefix("--queryformat="))
        {
            format = f.to_string();
        } else if a == "-p" || a == "--package" {
            continue;
        } else {
            names.push(a.clone());
        }
    }
    (format, names)
}

fn rpm_line(format: &str, version: &str, dist: &str, arch: &str) -> String {
    let (upstream, rel) = version.split_once('-').unwrap_or((version, ""));
    let release = if dist.is_empty() {
        rel.to_string()
    } else {
        format!("{rel}.{dist}")
    };
    expand_escapes(format)
        .replace("%{NAME}", "chef-backend")
        .replace("%{VERSION}", upstream)
        .replace("%{RELEASE}", &release)
        .replace("%{ARCH}", arch)
}

/// `rpm -qp [--qf FORMAT] FILE`: the package file's version, from its name as `yum install` reads it.
fn rpm_query_file(args: &[String]) -> Output {
    let (format, files) = rpm_query_args(args);
    if files.is_empty() {
        return Output::fail(1, "rpm: no arguments given for query\n");
    }
    let mut out = Output::ok("");
    for path in files {
        if let Err(why) = readable(&path) {
            out.stderr
                .push_str(&format!("error: open of {path} failed: {why}\n"));
            out.code = 1;
            continue;
        }
        match parse_rpm(&path) {
            Some(p) => out
                .stdout
                .push_str(&rpm_line(&format, &p.version, &p.dist, &p.arch)),
            None => {
                out.stderr.push_str(&format!(
                    "error: {path}: not an rpm package (or package manifest)\n"
                ));
                out.code = 1;
            }
        }
    }
    out
}

fn rpm_query(sim: &Sim, node: &str, args: &[String]) -> Result<Output, Error> {
    let (format, names) = rpm_query_args(args);
    if names.is_empty() {
        return Ok(Output::fail(1, "rpm: no arguments given for query\n"));
    }
    let (version, dist) = installed(sim, node)?;
    let mut out = Output::ok("");
    for name in names {
        if name != "chef-backend" {
            out.stdout
                .push_str(&format!("package {name} is not installed\n"));
            out.code = 1;
            continue;
        }
        out.stdout
            .push_str(&rpm_line(&format, &version, &dist, "x86_64"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_package_names() {
        let d = parse_deb("/tmp/chef-backend_3.1.0-1_amd64.deb").unwrap();
        assert_eq!((d.version.as_str(), d.arch.as_str()), ("3.1.0-1", "amd64"));
        let r = parse_rpm("chef-backend-3.1.0-1.el7.x86_64.rpm").unwrap();
        assert_eq!(
            (r.version.as_str(), r.dist.as_str(), r.arch.as_str()),
            ("3.1.0-1", "el7", "x86_64")
        );
    }

    #[test]
    fn rejects_bad_package_names() {
        for bad in [
            "chef-backend_3.1_amd64.deb",
            "chef-server_3.1.0-1_amd64.deb",
            "chef-backend_3.1.0-1.deb",
            "x.deb",
        ] {
            assert_eq!(parse_deb(bad), None, "{bad}");
        }
        for bad in [
            "chef-backend-3.1.0.el7.x86_64.rpm",
            "chef-backend-3.1.0-1.el7.x86_64.deb",
            "chef-backend-a.b.c-1.el7.x86_64.rpm",
        ] {
            assert_eq!(parse_rpm(bad), None, "{bad}");
        }
    }

    #[test]
    fn version_check() {
        assert!(check_version("3.0.0-1").is_ok());
        assert!(check_version("3.0-1").is_err());
        assert!(check_version("3.0.0").is_err());
    }
}
