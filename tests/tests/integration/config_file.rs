//! The config file of `baton server` and `baton executor` (docs/config.md), as a
//! process sees it: a flag beats its environment variable, which beats the file,
//! which beats the default. What the process ends up using is visible before it
//! connects to anything: it names the key file it could not read.

use std::process::{Command, Output};

use tests::workspace_bin;

/// `baton ARGS` with no `BATON_*` variable but `env`.
fn baton(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(workspace_bin("baton"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("BATON_") {
            cmd.env_remove(name);
        }
    }
    cmd.args(args).envs(env.iter().copied()).output().unwrap()
}

/// The key file a failed start named.
fn key_named(out: &Output) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let start = err
        .find("key file ")
        .unwrap_or_else(|| panic!("no key file named: {err}"));
    err[start + "key file ".len()..]
        .split(':')
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn flags_beat_the_environment_which_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let file = dir.path().join("baton.toml");
    std::fs::write(
        &file,
        format!("key = \"{d}/file.seed\"\ndb = \"{d}/log.db\"\n"),
    )
    .unwrap();
    let config = file.display().to_string();
    let flag = format!("{d}/flag.seed");
    let env = format!("{d}/env.seed");
    for command in [
        vec!["server"],
        vec!["executor", "--group", "g", "--nodes", "n"],
    ] {
        let with = |extra: &[&str]| -> Vec<String> {
            command
                .iter()
                .chain(["--config", config.as_str()].iter())
                .chain(extra)
                .map(|s| s.to_string())
                .collect()
        };
        let run = |args: Vec<String>, env: &[(&str, &str)]| {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            key_named(&baton(&args, env))
        };
        let name = command[0];
        if name == "executor" {
            // `db` is a server key: the executor's file must not have it.
            std::fs::write(&file, format!("key = \"{d}/file.seed\"\n")).unwrap();
        }
        assert_eq!(
            run(with(&[]), &[]),
            format!("{d}/file.seed"),
            "{name}: the file"
        );
        assert_eq!(
            run(with(&[]), &[("BATON_KEY", &env)]),
            env,
            "{name}: the environment beats the file"
        );
        assert_eq!(
            run(with(&["--key", &flag]), &[("BATON_KEY", &env)]),
            flag,
            "{name}: a flag beats both"
        );
    }
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    std::fs::write(&file, "db = \"/x\"\n# the port\nlease_ttl_ms = 10\n").unwrap();
    let path = file.display().to_string();
    let out = baton(&["server", "--config", &path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{path}:3: lease_ttl_ms: ")), "{err}");

    let out = baton(&["--output", "json", "server", "--config", &path], &[]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(json["error"]["kind"], "usage", "{json}");

    let missing = dir.path().join("absent.toml").display().to_string();
    let out = baton(&["server", "--db", "/x", "--config", &missing], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&missing));
}
