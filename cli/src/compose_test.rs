//! `docker-compose.yml` cannot run here (no Docker engine), so this test
//! keeps it honest by reading: every service's command must be one the CLI
//! accepts, and every executor must serve a node the simulated cluster has.

use clap::Parser;
use yaml_rust2::{Yaml, YamlLoader};

use crate::{Cli, Command};

fn compose() -> Yaml {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    YamlLoader::load_from_str(&text)
        .expect("docker-compose.yml is valid YAML")
        .remove(0)
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
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let argv = command_of(service)
            .unwrap_or_else(|| panic!("service {name}: command must be an argv list"));
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
                if let Command::Keys(crate::cmd::keys::KeysCommand::Init { groups, .. }) =
                    &cli.command
                {
                    key_groups = groups.clone();
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
                    sim::cli::Cmd::Init { nodes, dir, .. } => {
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
}

#[test]
fn a_wrong_compose_command_would_be_caught() {
    // The check above must be able to fail: a misspelt flag is refused.
    assert!(Cli::try_parse_from(["baton", "server", "--database", "/x"]).is_err());
    assert!(Cli::try_parse_from(["baton", "executor", "--nodes", "backend-1"]).is_err());
    assert!(sim::cli::Cli::try_parse_from(["baton-sim", "init", "--dir", "/sim"]).is_err());
}
