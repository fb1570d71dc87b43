//! The `baton` Debian package (cli/Cargo.toml `[package.metadata.deb]`, built by
//! `scripts/package-deb.sh` with the pinned cargo-deb): built from the binary this
//! suite has just built (`--profile dev --no-build`: no second build), its contents
//! checked (files, modes, owners, conffiles, maintainer scripts), its systemd units
//! checked (`systemd-analyze verify` where installed, and always: each command line
//! parses, the writable path is the unit's state directory, the user is the one the
//! package makes), then installed with `dpkg -i` into a throwaway root, where
//! `baton --version` runs from the installed file and the shipped config files load.
//!
//! The root is throwaway: `dpkg --root DIR --force-script-chrootless` runs the
//! maintainer scripts on this machine with `DPKG_ROOT=DIR` (the Debian convention
//! for installing into another root), so the postinst makes the user in that root's
//! own `etc/passwd` (`useradd --prefix`) and leaves this machine's systemd alone.
//! The root holds no libc6 package, so the dependency on it is forced
//! (`--force-depends`); the binary runs on this machine's libc. Needs root (CI runs
//! as root), dpkg and useradd, like any Debian machine.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tests::{workspace_bin, workspace_root};

const CONFFILES: [&str; 2] = ["/etc/baton/server.toml", "/etc/baton/executor.toml"];
const UNITS: [&str; 3] = [
    "baton-server.service",
    "baton-executor@.service",
    "baton-executor-ssh@.service",
];

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the package from the suite's own `baton` into `out`; its path.
fn build_package(out: &Path) -> PathBuf {
    let baton = workspace_bin("baton");
    let profile_dir = baton.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev",
        other => other,
    };
    let started = std::time::Instant::now();
    run(Command::new("bash")
        .arg(workspace_root().join("scripts/package-deb.sh"))
        .args(["--profile", profile, "--no-build", "--out"])
        .arg(out)
        .env("CARGO_TARGET_DIR", target_dir));
    eprintln!("package built in {:?}", started.elapsed());
    let debs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package: {debs:?}");
    debs.into_iter().next().unwrap()
}

/// `dpkg-deb --contents`: each regular file's mode, owner and path.
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let listing = text(&run(Command::new("dpkg-deb").arg("--contents").arg(deb)));
    listing
        .lines()
        .filter(|l| l.starts_with('-'))
        .map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let path = fields[5].trim_start_matches('.').to_string();
            (path, (fields[0].to_string(), fields[1].to_string()))
        })
        .collect()
}

fn check_contents(deb: &Path) {
    let field = |name: &str| {
        text(&run(Command::new("dpkg-deb")
            .arg("--field")
            .arg(deb)
            .arg(name)))
        .trim()
        .to_string()
    };
    assert_eq!(field("Package"), "baton");
    assert_eq!(field("Version"), format!("{}-1", env!("CARGO_PKG_VERSION")));
    let arch = text(&run(Command::new("dpkg").arg("--print-architecture")));
    assert_eq!(field("Architecture"), arch.trim());
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));

    let files = contents(deb);
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut add = |path: &str, mode: &str| {
        expected.insert(path.to_string(), (mode.to_string(), "0/0".to_string()));
    };
    add("/usr/bin/baton", "-rwxr-xr-x");
    for unit in UNITS {
        add(&format!("/usr/lib/systemd/system/{unit}"), "-rw-r--r--");
    }
    for conf in CONFFILES {
        // Readable by the baton group once the postinst gave it the file.
        add(conf, "-rw-r-----");
    }
    for doc in [
        "README.md",
        "config.md",
        "real-cluster.md",
        "cluster-file.md",
        "copyright",
    ] {
        add(&format!("/usr/share/doc/baton/{doc}"), "-rw-r--r--");
    }
    assert_eq!(files, expected, "the package's files, modes and owners");

    let control = tempfile::tempdir().unwrap();
    let dir = control.path().join("DEBIAN");
    run(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&dir));
    let conffiles = std::fs::read_to_string(dir.join("conffiles")).unwrap();
    let mut listed: Vec<&str> = conffiles.lines().collect();
    listed.sort();
    let mut want = CONFFILES.to_vec();
    want.sort();
    assert_eq!(listed, want, "conffiles");
    for script in ["postinst", "prerm", "postrm"] {
        let path = dir.join(script);
        let packaged = std::fs::read(&path).unwrap();
        let source = std::fs::read(workspace_root().join("packaging/debian").join(script)).unwrap();
        assert_eq!(packaged, source, "{script} is packaging/debian/{script}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{script}");
        run(Command::new("sh").arg("-n").arg(&path));
    }
    assert!(
        !dir.join("preinst").exists(),
        "no preinst: the user is made at configure"
    );
}

/// A throwaway root with a dpkg database and a user database that has only root.
fn throwaway_root(root: &Path) {
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    for (file, text, mode) in [
        ("var/lib/dpkg/status", "", 0o644),
        ("var/lib/dpkg/available", "", 0o644),
        ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
        ("etc/shadow", "root:*:19000:0:99999:7:::\n", 0o600),
        ("etc/gshadow", "root:*::\n", 0o600),
    ] {
        let path = root.join(file);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

fn dpkg(root: &Path) -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"]);
    cmd
}

/// `name`'s fields in the root's `etc/passwd` (or `etc/group`), if any.
fn entry(root: &Path, file: &str, name: &str) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(root.join(file)).unwrap();
    let found: Vec<Vec<String>> = text
        .lines()
        .map(|l| l.split(':').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f[0] == name)
        .collect();
    assert!(found.len() <= 1, "{name} is in {file} once: {text}");
    found.into_iter().next()
}

fn mode_owner(path: &Path) -> (u32, u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

/// What the postinst made: the system user, the state directory, the config's group.
fn check_installed(root: &Path) -> (u32, u32) {
    let user = entry(root, "etc/passwd", "baton").expect("the postinst made the user baton");
    let uid: u32 = user[2].parse().unwrap();
    let gid: u32 = user[3].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "a system user: {user:?}");
    assert_eq!(user[5], "/var/lib/baton", "home: {user:?}");
    assert_eq!(user[6], "/usr/sbin/nologin", "no login: {user:?}");
    let group = entry(root, "etc/group", "baton").expect("and its group");
    assert_eq!(group[2].parse::<u32>().unwrap(), gid);
    assert!(
        entry(root, "etc/shadow", "baton").is_some(),
        "useradd wrote the root's shadow"
    );
    assert_eq!(mode_owner(&root.join("var/lib/baton")), (0o700, uid, gid));
    assert_eq!(mode_owner(&root.join("etc/baton")), (0o750, 0, gid));
    for conf in CONFFILES {
        let path = root.join(conf.trim_start_matches('/'));
        assert_eq!(mode_owner(&path), (0o640, 0, gid), "{conf}");
    }
    assert_eq!(mode_owner(&root.join("usr/bin/baton")).0, 0o755);
    (uid, gid)
}

/// The installed binary, its version, and the shipped config files, which it loads.
fn check_binary(root: &Path) {
    let baton = root.join("usr/bin/baton");
    let version = text(&run(Command::new(&baton).arg("--version")));
    assert!(
        version.starts_with(&format!("baton {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // With no BATON_* variable set, the shipped server.toml is what names the key: the
    // command gets as far as reading it (absent here), so the file parsed and was used.
    let clean = |cmd: &mut Command| -> Output {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("BATON_") {
                cmd.env_remove(name);
            }
        }
        cmd.output().unwrap()
    };
    let conf = |name: &str| root.join("etc/baton").join(name);
    let tmp = tempfile::tempdir().unwrap();
    let out = clean(
        Command::new(&baton)
            .arg("server")
            .arg("--config")
            .arg(conf("server.toml"))
            .arg("--db")
            .arg(tmp.path().join("log.db")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/etc/baton/keys/service.seed"),
        "server.toml names the key: {err}"
    );
    let out = clean(
        Command::new(&baton)
            .args(["executor", "--group", "g", "--nodes", "n", "--config"])
            .arg(conf("executor.toml")),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("needs a signing key") && !err.contains("executor.toml"),
        "executor.toml loads, and leaves the key to each group: {err}"
    );
}

/// The installed units: each command line parses with the installed binary (config
/// paths into the root), the path it writes is its state directory (the sandbox makes
/// everything else read-only), the service runs as the package's user, and
/// `systemd-analyze verify` (where installed) has nothing to say.
fn check_units(root: &Path) {
    let baton = root.join("usr/bin/baton");
    let analyze = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !analyze {
        eprintln!("systemd-analyze is not installed: the units are checked without it");
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in UNITS {
        let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system").join(name)).unwrap();
        let value = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{name} has no {key}"))
                .to_string()
        };
        let exec = value("ExecStart");
        let mut args: Vec<String> = exec
            .split_whitespace()
            .filter(|a| *a != "$BATON_EXECUTOR_ARGS")
            .map(|a| a.replace("%i", "pool"))
            .collect();
        assert_eq!(
            args.remove(0),
            "/usr/bin/baton",
            "{name}: the packaged binary"
        );
        let state = format!("/var/lib/{}", value("StateDirectory").replace("%i", "pool"));
        let writes = args
            .iter()
            .position(|a| a == "--db" || a == "--state-dir")
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{name}: no --db or --state-dir"));
        assert!(
            Path::new(&writes).starts_with(&state),
            "{name}: {writes} is outside its StateDirectory {state}"
        );
        assert_eq!(value("StateDirectoryMode"), "0700", "{name}");
        if name != "baton-executor@.service" {
            assert_eq!(value("User"), "baton", "{name}: the package's user");
        }
        let config = args
            .iter()
            .position(|a| a == "--config")
            .map(|i| args[i + 1].clone())
            .unwrap_or_else(|| panic!("{name}: no --config"));
        assert!(
            CONFFILES.contains(&config.as_str()),
            "{name}: --config {config} is a shipped file"
        );
        let local: Vec<String> = args
            .iter()
            .map(|a| match a.strip_prefix("/etc/baton/") {
                Some(rest) => root.join("etc/baton").join(rest).display().to_string(),
                None => a.clone(),
            })
            .collect();
        run(Command::new(&baton).args(&local).arg("--help"));
        if analyze {
            let copy = tmp.path().join(name.replace("@.service", "@pool.service"));
            std::fs::write(
                &copy,
                unit.replace("/usr/bin/baton", &baton.display().to_string()),
            )
            .unwrap();
            let out = Command::new("systemd-analyze")
                .arg("verify")
                .arg(&copy)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            let unit_name = copy.file_name().unwrap().to_string_lossy().into_owned();
            let about: Vec<&str> = said.lines().filter(|l| l.contains(&unit_name)).collect();
            assert!(
                out.status.success() && about.is_empty(),
                "systemd-analyze verify {name}: {said}"
            );
        }
    }
}

#[test]
fn the_deb_builds_installs_into_a_throwaway_root_and_runs() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "dpkg -i into a root needs root (CI runs as root)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let deb = build_package(&tmp.path().join("out"));
    check_contents(&deb);

    let root = tmp.path().join("root");
    throwaway_root(&root);
    run(dpkg(&root).arg("-i").arg(&deb));
    let (uid, gid) = check_installed(&root);
    check_binary(&root);
    check_units(&root);

    // Installing again (what an upgrade runs) keeps the user and its ids.
    run(dpkg(&root).arg("-i").arg(&deb));
    assert_eq!(check_installed(&root), (uid, gid));

    // A purge removes the files, the conffiles and the units' enablement links,
    // and keeps the log's directory and the user.
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants).unwrap();
    let link = wants.join("baton-executor@g1.service");
    std::os::unix::fs::symlink("/usr/lib/systemd/system/baton-executor@.service", &link).unwrap();
    run(dpkg(&root).args(["--purge", "baton"]));
    assert!(!root.join("usr/bin/baton").exists());
    assert!(!root.join("etc/baton").exists(), "conffiles purged");
    assert!(link.symlink_metadata().is_err(), "enablement link removed");
    assert_eq!(mode_owner(&root.join("var/lib/baton")), (0o700, uid, gid));
    assert!(entry(&root, "etc/passwd", "baton").is_some());
}
