//! `docker-compose.yml` cannot run here (no Docker engine), so this test
//! keeps it honest by reading: every service's command must be one the CLI
//! accepts, and every executor must serve a node the simulated cluster has;
//! a second `docker compose up` must find every one-shot service idempotent
//! and the long-running ones restarting; the operator signs as an operator
//! the keys service makes; the build context leaves the target folder out.

use clap::Parser;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{Cli, Command};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    merged(
        &YamlLoader::load_from_str(&text)
            .expect("docker-compose.yml is valid YAML")
            .remove(0),
    )
}

/// `y` with YAML merge keys (`<<: *anchor`) applied, as Compose applies them
/// (yaml-rust2 leaves them as a `<<` key): the keys written beside `<<` win.
fn merged(y: &Yaml) -> Yaml {
    match y {
        Yaml::Hash(map) => {
            let mut out = yaml_rust2::yaml::Hash::new();
            let merge_key = Yaml::String("<<".into());
            if let Some(base) = map.get(&merge_key) {
                let bases = match base {
                    Yaml::Array(list) => list.clone(),
                    other => vec![other.clone()],
                };
                for base in bases {
                    if let Yaml::Hash(base) = merged(&base) {
                        out.extend(base);
                    }
                }
            }
            for (k, v) in map {
                if *k != merge_key {
                    out.insert(k.clone(), merged(v));
                }
            }
            Yaml::Hash(out)
        }
        Yaml::Array(list) => Yaml::Array(list.iter().map(merged).collect()),
        other => other.clone(),
    }
}

fn command_of(service: &Yaml) -> Option<Vec<String>> {
    service["command"].as_vec().map(|argv| {
        argv.iter()
            .map(|a| {
                a.as_str()
                    .expect("command elements are strings")
                    .to_string()
            })
            .collect()
    })
}

#[test]
fn compose_commands_match_the_cli() {
    let doc = compose();
    let services = doc["services"].as_hash().expect("services is a map");
    let mut baton_commands = 0;
    let mut sim_nodes = 0;
    let mut executor_groups = Vec::new();
    let mut key_groups = Vec::new();
    let mut key_operators = Vec::new();
    let mut operator_keys = Vec::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let argv = command_of(service)
            .unwrap_or_else(|| panic!("service {name}: command must be an argv list"));
        let restart = service["restart"].as_str();
        let kind = lifetime(name, &argv);
        match kind {
            Lifetime::OneShot => assert_eq!(
                restart,
                Some("no"),
                "service {name}: a one-shot service runs once per `up`"
            ),
            Lifetime::Service => assert_eq!(
                restart,
                Some("unless-stopped"),
                "service {name}: a long-running service restarts"
            ),
            Lifetime::OnDemand => {
                assert!(
                    service["profiles"].as_vec().is_some(),
                    "service {name}: `docker compose run` only"
                );
                assert_eq!(restart, None, "service {name}");
            }
        }
        // Whatever waits for a one-shot service waits for it to succeed.
        if let Some(deps) = service["depends_on"].as_hash() {
            for (dep, how) in deps {
                let dep = dep.as_str().unwrap();
                let dep_argv = command_of(&doc["services"][dep])
                    .unwrap_or_else(|| panic!("service {name} depends on unknown {dep}"));
                let want = match lifetime(dep, &dep_argv) {
                    Lifetime::OneShot => "service_completed_successfully",
                    _ => "service_started",
                };
                assert_eq!(how["condition"].as_str(), Some(want), "{name} -> {dep}");
            }
        }
        match argv[0].as_str() {
            "baton" => {
                baton_commands += 1;
                let cli = Cli::try_parse_from(&argv)
                    .unwrap_or_else(|err| panic!("service {name}: `{}`: {err}", argv.join(" ")));
                let env = |key: &str| service["environment"][key].as_str().map(str::to_string);
                let key_file = match &cli.command {
                    Command::Server(_) => Some("/keys/service.seed".to_string()),
                    Command::Executor(args) => Some(format!("/keys/executor-{}.seed", args.group)),
                    Command::Keys(_) => None,
                    _ => Some("/keys/operator-admin.seed".to_string()),
                };
                if let Some(key_file) = key_file {
                    // Signs with its own key and authenticates to NATS with it.
                    assert_eq!(
                        env("BATON_KEY"),
                        Some(key_file.clone()),
                        "service {name}: BATON_KEY"
                    );
                    assert_eq!(
                        env("BATON_NATS_NKEY"),
                        Some(key_file),
                        "service {name}: BATON_NATS_NKEY"
                    );
                }
                // Run again by every `up`: each keeps what it made.
                match &cli.command {
                    Command::Keys(crate::cmd::keys::KeysCommand::Init {
                        groups,
                        operators,
                        if_absent,
                        ..
                    }) => {
                        assert!(if_absent, "service {name}: --if-absent");
                        key_groups = groups.clone();
                        key_operators = operators.clone();
                    }
                    Command::Keys(crate::cmd::keys::KeysCommand::DevTls { if_absent, .. }) => {
                        assert!(if_absent, "service {name}: --if-absent");
                    }
                    _ => {}
                }
                if !matches!(cli.command, Command::Keys(_)) {
                    // Every signing process pins the same trust file.
                    assert_eq!(
                        env("BATON_TRUST").as_deref(),
                        Some("/keys/trust.toml"),
                        "service {name}: BATON_TRUST"
                    );
                }
                if kind == Lifetime::OnDemand {
                    operator_keys.push(env("BATON_KEY").unwrap_or_default());
                }
                if let Command::Executor(args) = cli.command {
                    let path = service["environment"]["PATH"].as_str().unwrap_or_default();
                    assert!(
                        path.starts_with(&format!("/sim/nodes/{}/bin:", args.group)),
                        "service {name}: the executor for {} must put that node's bin folder first in PATH, got {path}",
                        args.group
                    );
                    executor_groups.push(args.group);
                }
            }
            "baton-sim" => {
                let cli = sim::cli::Cli::try_parse_from(&argv)
                    .unwrap_or_else(|err| panic!("service {name}: `{}`: {err}", argv.join(" ")));
                match cli.cmd {
                    sim::cli::Cmd::Init {
                        nodes,
                        dir,
                        if_absent,
                        ..
                    } => {
                        assert!(
                            if_absent,
                            "service {name}: a second `up` must keep the cluster (--if-absent)"
                        );
                        assert_eq!(
                            dir,
                            std::path::Path::new("/sim"),
                            "service {name}: the shared volume"
                        );
                        sim_nodes = nodes;
                    }
                    _ => panic!("service {name}: only `baton-sim init` is expected"),
                }
            }
            "-c" => {
                assert_eq!(name, "nats", "only the nats service runs nats-server flags");
                assert_eq!(
                    argv[1], "/keys/nats-server.conf",
                    "the configuration `nats-config` writes"
                );
            }
            other => panic!("service {name}: unknown program {other}"),
        }
    }
    assert!(
        baton_commands >= 3,
        "server, executors and cli are all baton commands"
    );
    executor_groups.sort();
    let expected: Vec<String> = (1..=sim_nodes).map(|i| format!("backend-{i}")).collect();
    assert_eq!(executor_groups, expected, "one executor per simulated node");
    assert_eq!(
        key_groups, expected,
        "`keys` makes a key for every executor"
    );
    // The operator's identity: the `cli` service signs with the key of an operator
    // that `keys` makes, with the role to approve gates.
    let made: Vec<String> = key_operators
        .iter()
        .filter(|(_, role)| *role == protocol::sign::Role::Approver)
        .map(|(op, _)| format!("/keys/operator-{op}.seed"))
        .collect();
    assert!(!operator_keys.is_empty(), "a service for operator commands");
    for key in &operator_keys {
        assert!(
            made.contains(key),
            "{key} is not an approver `keys` makes: {made:?}"
        );
    }
}

/// How long a service's process lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// Makes something and exits (keys, TLS files, nats-server's configuration, the simulated cluster).
    OneShot,
    /// Runs until stopped (nats-server, the workflow service, executors).
    Service,
    /// An operator command, for `docker compose run`.
    OnDemand,
}

fn lifetime(name: &str, argv: &[String]) -> Lifetime {
    match (argv[0].as_str(), argv.get(1).map(String::as_str)) {
        ("baton", Some("keys")) | ("baton-sim", Some("init")) => Lifetime::OneShot,
        ("baton", Some("server" | "executor")) => Lifetime::Service,
        ("-c", _) if name == "nats" => Lifetime::Service,
        _ => Lifetime::OnDemand,
    }
}

/// The Docker build context (`build: .`) is the sources: no target folder (it was
/// gigabytes), no tools, nothing the build needs left out.
#[test]
fn the_build_context_leaves_the_target_folder_out() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ignore = std::fs::read_to_string(format!("{root}/.dockerignore")).expect(".dockerignore");
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_start_matches('/'))
        .collect();
    for out in ["target", ".tools"] {
        assert!(
            patterns.contains(&out),
            ".dockerignore must leave out {out}"
        );
    }
    let manifest = std::fs::read_to_string(format!("{root}/Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&manifest).unwrap();
    let members = manifest["workspace"]["members"].as_array().unwrap();
    let needed =
        members
            .iter()
            .map(|m| m.as_str().unwrap())
            .chain(["Cargo.toml", "Cargo.lock", ".git"]);
    for path in needed {
        for pattern in &patterns {
            let first = path.split('/').next().unwrap();
            assert!(
                *pattern != first
                    && !(pattern.ends_with('*')
                        && first.starts_with(pattern.trim_end_matches('*'))),
                ".dockerignore pattern {pattern} leaves out {path}, which the build needs"
            );
        }
    }
}

#[test]
fn a_wrong_compose_command_would_be_caught() {
    // The check above must be able to fail: a misspelt flag is refused.
    assert!(Cli::try_parse_from(["baton", "server", "--database", "/x"]).is_err());
    assert!(Cli::try_parse_from(["baton", "executor", "--nodes", "backend-1"]).is_err());
    assert!(sim::cli::Cli::try_parse_from(["baton-sim", "init", "--dir", "/sim"]).is_err());
    // And a one-shot service or a restart policy out of place is named.
    let argv = |line: &str| line.split(' ').map(str::to_string).collect::<Vec<_>>();
    assert_eq!(
        lifetime("keys", &argv("baton keys init")),
        Lifetime::OneShot
    );
    assert_eq!(
        lifetime("sim-init", &argv("baton-sim init")),
        Lifetime::OneShot
    );
    assert_eq!(lifetime("w", &argv("baton server")), Lifetime::Service);
    assert_eq!(lifetime("nats", &argv("-c /x")), Lifetime::Service);
    assert_eq!(lifetime("cli", &argv("baton list")), Lifetime::OnDemand);
}
