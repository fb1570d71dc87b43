//! The optional config file of `baton server` and `baton executor` (TOML; docs/config.md).
//!
//! Every key is a flag of the command, spelled with `_` for `-` (`lease_ttl_ms` is
//! `--lease-ttl-ms`), and its value is what the flag would be given: a string or a
//! number, `true`/`false` for a switch, a list for a repeatable flag. The file only
//! fills clap's defaults, so clap itself keeps the order: a flag beats its environment
//! variable, which beats the file, which beats the built-in default. Each value is
//! checked by the flag's own parser before anything starts, and every error names the
//! file, the line and the key, as the cluster file's do (`workflow::core::cluster`).
//!
//! Which flags a file may set is the tables below: adding one is one line there (and
//! its entry in docs/config.md, which a test keeps complete).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, Parser};
use toml::{Spanned, Value};

use crate::client::{Class, Exit};
use crate::Cli;

/// Where a command looks for its file when `--config` is not given: `<dir>/<command>.toml`.
pub const DEFAULT_DIR: &str = "/etc/baton";

/// How large a config file may be.
const MAX_BYTES: u64 = 1024 * 1024;

/// The NATS connection and logging flags (global flags), which both commands take.
const CONNECTION: &[&str] = &[
    "nats",
    "key",
    "trust",
    "nats_creds",
    "nats_nkey",
    "nats_user",
    "nats_password",
    "nats_token",
    "nats_ca",
    "nats_cert",
    "nats_cert_key",
    "nats_tls",
    "log_format",
];

/// `baton server`'s own flags a file may set.
const SERVER: &[&str] = &[
    "db",
    "api_skew_s",
    "standby",
    "lease_ttl_ms",
    "http",
    "nats_replicas",
    "recover_at_once",
    "recovery_patience_s",
];

/// `baton executor`'s own flags a file may set.
const EXECUTOR: &[&str] = &[
    "group",
    "http",
    "state_dir",
    "allow_relative_state_dir",
    "cluster",
    "nodes",
    "installer",
    "procedure",
    "id",
    "max_output",
    "runner",
    "ssh_program",
    "ssh_user",
    "ssh_sudo",
    "ssh_option",
    "ssh_address",
    "heartbeat_ms",
    "ack_wait_ms",
    "fetch_wait_ms",
    "progress_ms",
    "serve",
    "node_bin_dir",
];

/// The commands that read a config file, with the keys each may set besides [`CONNECTION`].
const COMMANDS: &[(&str, &[&str])] = &[("server", SERVER), ("executor", EXECUTOR)];

/// `--config`, flattened into the arguments of the commands that read a file.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// A TOML file of settings, one key per flag of this command (docs/config.md); flags
    /// and environment variables override it. Default: /etc/baton/<command>.toml, when
    /// that file exists.
    #[arg(id = "config", long = "config", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

/// Why the command line could not be read.
#[derive(Debug)]
pub enum ParseError {
    /// clap refused the command line (or was asked for `--help` / `--version`).
    Clap(clap::Error),
    /// The config file is missing, unreadable or wrong (a usage error).
    Config(anyhow::Error),
}

/// Parses the command line `args`, with the config file of `baton server` or `baton
/// executor` (if any) as defaults.
pub fn parse_from(args: Vec<OsString>) -> Result<Cli, ParseError> {
    parse_in(args, Path::new(DEFAULT_DIR))
}

/// [`parse_from`], looking for default files in `default_dir`.
fn parse_in(args: Vec<OsString>, default_dir: &Path) -> Result<Cli, ParseError> {
    let Some((command, path)) = config_of(&args, default_dir) else {
        return Cli::try_parse_from(args).map_err(ParseError::Clap);
    };
    let text = read(&path, command).map_err(ParseError::Config)?;
    let root = Cli::command();
    let settings =
        load(&path.display().to_string(), &text, &root, command).map_err(ParseError::Config)?;
    let matches = with_defaults(root, command, &settings)
        .try_get_matches_from(args)
        .map_err(ParseError::Clap)?;
    Cli::from_arg_matches(&matches).map_err(ParseError::Clap)
}

/// The command that reads a file and that file's path: `--config`, else the default
/// file if it exists. `None` for other commands, and for a command line clap refuses
/// (or `--help`), which the plain parse then reports.
fn config_of(args: &[OsString], default_dir: &Path) -> Option<(&'static str, PathBuf)> {
    let lenient = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(args)
        .ok()?;
    let (name, sub) = lenient.subcommand()?;
    let command = COMMANDS.iter().map(|(c, _)| *c).find(|c| *c == name)?;
    match sub.get_one::<PathBuf>("config") {
        Some(path) => Some((command, path.clone())),
        None => {
            let path = default_dir.join(format!("{command}.toml"));
            path.exists().then_some((command, path))
        }
    }
}

fn read(path: &Path, command: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    let usage = |what: String| Exit::of(Class::Usage, what).hint(format!("baton {command} --help"));
    let file = std::fs::File::open(path).map_err(|e| {
        usage(format!(
            "could not open config file {}: {e}",
            path.display()
        ))
    })?;
    let mut text = String::new();
    file.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| {
            usage(format!(
                "could not read config file {}: {e}",
                path.display()
            ))
        })?;
    if text.len() as u64 > MAX_BYTES {
        return Err(usage(format!(
            "config file {} is larger than {MAX_BYTES} bytes",
            path.display()
        ))
        .into());
    }
    Ok(text)
}

/// One key of the file: the flag it sets and the values to give it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    /// clap's id of the flag.
    id: String,
    /// Whether the flag is a global one (defined on the root command).
    global: bool,
    values: Vec<String>,
}

/// The flag a key names, among `command`'s own and the global ones: `(arg, global)`.
fn flag_of<'c>(root: &'c clap::Command, command: &str, key: &str) -> Option<(&'c Arg, bool)> {
    let allowed = COMMANDS.iter().find(|(c, _)| *c == command)?.1;
    let long = key.replace('_', "-");
    let find = |cmd: &'c clap::Command| cmd.get_arguments().find(|a| a.get_long() == Some(&long));
    if allowed.contains(&key) {
        find(root.find_subcommand(command)?).map(|a| (a, false))
    } else if CONNECTION.contains(&key) {
        find(root).map(|a| (a, true))
    } else {
        None
    }
}

/// The keys `command`'s file may set, in table order.
fn keys_of(command: &str) -> Vec<&'static str> {
    let own = COMMANDS
        .iter()
        .find(|(c, _)| *c == command)
        .map_or(&[][..], |(_, keys)| *keys);
    CONNECTION.iter().chain(own).copied().collect()
}

/// Reads and checks `text`, the config file `file` of `command`.
fn load(
    file: &str,
    text: &str,
    root: &clap::Command,
    command: &str,
) -> anyhow::Result<Vec<Setting>> {
    let located = |span: Option<Range<usize>>, key: &str, message: String| -> anyhow::Error {
        let line = span.map_or_else(|| "?".to_string(), |s| line_of(text, s.start).to_string());
        Exit::of(Class::Usage, format!("{file}:{line}: {key}: {message}"))
            .hint(format!("baton {command} --help"))
            .into()
    };
    let table: BTreeMap<Spanned<String>, Spanned<Value>> = toml::from_str(text)
        .map_err(|e| located(e.span(), "(file)", e.message().trim().to_string()))?;
    let mut settings = Vec::new();
    for (key, value) in &table {
        let name = key.get_ref().as_str();
        let Some((arg, global)) = flag_of(root, command, name) else {
            return Err(located(
                Some(key.span()),
                name,
                format!(
                    "unknown key; `baton {command}` takes: {}",
                    keys_of(command).join(", ")
                ),
            ));
        };
        let values = values_of(arg, value.get_ref())
            .and_then(|values| check(arg, &values).map(|()| values))
            .map_err(|message| located(Some(value.span()), name, message))?;
        settings.push(Setting {
            id: arg.get_id().to_string(),
            global,
            values,
        });
    }
    Ok(settings)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The values a TOML value gives `arg`, as they would be written after the flag.
fn values_of(arg: &Arg, value: &Value) -> Result<Vec<String>, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Ok(s.clone()),
        Value::Integer(n) => Ok(n.to_string()),
        other => Err(format!(
            "expected a string or a number, found {}",
            other.type_str()
        )),
    };
    match (arg.get_action(), value) {
        (ArgAction::SetTrue, Value::Boolean(b)) => Ok(vec![b.to_string()]),
        (ArgAction::SetTrue, other) => Err(format!(
            "expected true or false, found {}",
            other.type_str()
        )),
        (ArgAction::Append, Value::Array(items)) => items.iter().map(scalar).collect(),
        (_, Value::Array(_)) => Err("takes one value, not a list".to_string()),
        (_, other) => scalar(other).map(|v| vec![v]),
    }
}

/// Checks `values` with `arg`'s own parser, as if they had been given as flags.
fn check(arg: &Arg, values: &[String]) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Ok(());
    }
    let long = arg.get_long().unwrap_or_default();
    let mut probe = Arg::new(arg.get_id().clone())
        .long(long.to_string())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone())
        .value_names(arg.get_value_names().unwrap_or_default().to_vec());
    if let Some(delimiter) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(delimiter);
    }
    let argv = values.iter().map(|v| format!("--{long}={v}"));
    clap::Command::new("baton")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(probe)
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|err| {
            let text = err.render().to_string();
            let first = text.lines().next().unwrap_or("invalid value");
            first.strip_prefix("error: ").unwrap_or(first).to_string()
        })
}

/// `root` with the file's values as the defaults of their flags. A flag the file sets
/// is no longer required: the file gave it.
fn with_defaults(mut root: clap::Command, command: &str, settings: &[Setting]) -> clap::Command {
    for setting in settings {
        let values = setting.values.clone();
        let fill = move |arg: Arg| {
            arg.default_values(values)
                .required(false)
                .required_unless_present(clap::builder::Resettable::Reset)
        };
        root = if setting.global {
            root.mut_arg(&setting.id, fill)
        } else {
            root.mut_subcommand(command, |sub| sub.mut_arg(&setting.id, fill))
        };
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Command;

    fn args(line: &[&str]) -> Vec<OsString> {
        line.iter().map(OsString::from).collect()
    }

    /// Parses `line` with `text` as the file given by `--config`.
    fn parse(text: &str, line: &[&str]) -> Result<Cli, ParseError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(&path, text).unwrap();
        let mut argv = args(line);
        argv.push("--config".into());
        argv.push(path.into());
        parse_in(argv, Path::new("/nonexistent"))
    }

    fn config_error(text: &str, line: &[&str]) -> String {
        match parse(text, line) {
            Err(ParseError::Config(err)) => {
                let exit = err.downcast_ref::<Exit>().expect("a usage error");
                assert_eq!(exit.class, Class::Usage);
                err.to_string()
            }
            Err(ParseError::Clap(err)) => panic!("clap refused it, not the config: {err}"),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    fn server(cli: Cli) -> crate::cmd::server::ServerArgs {
        match cli.command {
            Command::Server(args) => args,
            _ => panic!("not a server"),
        }
    }

    #[test]
    fn every_key_is_a_flag_of_its_command() {
        let root = Cli::command();
        for (command, _) in COMMANDS {
            for key in keys_of(command) {
                let (arg, _) = flag_of(&root, command, key)
                    .unwrap_or_else(|| panic!("{command}: key {key} is no flag"));
                assert!(!arg.is_positional(), "{command}: {key}");
            }
        }
        assert!(
            flag_of(&root, "server", "group").is_none(),
            "an executor flag"
        );
        assert!(
            flag_of(&root, "server", "output").is_none(),
            "not in the tables"
        );
    }

    #[test]
    fn the_file_fills_flags_the_command_line_does_not_give() {
        let text = "db = \"/srv/baton/log.db\"\nstandby = true\nnats = \"nats://a:4222\"\nlease_ttl_ms = 9000\n";
        let cli = parse(text, &["baton", "server"]).unwrap();
        assert_eq!(cli.global.nats, "nats://a:4222");
        let args = server(cli);
        assert_eq!(args.db, PathBuf::from("/srv/baton/log.db"));
        assert!(args.standby);
        assert_eq!(args.lease_ttl_ms, 9000);
        assert_eq!(args.api_skew_s, 60, "unset keys keep their default");

        // A flag beats the file.
        let cli = parse(
            text,
            &[
                "baton",
                "--nats",
                "nats://b:4222",
                "server",
                "--lease-ttl-ms",
                "2000",
            ],
        )
        .unwrap();
        assert_eq!(cli.global.nats, "nats://b:4222");
        assert_eq!(server(cli).lease_ttl_ms, 2000);
    }

    #[test]
    fn lists_fill_repeatable_flags() {
        let text = "nodes = [\"backend-1\", \"backend-2=10.0.0.2\"]\nssh_option = [\"IdentityFile=/etc/baton/id\", \"Port=2222\"]\nrunner = \"ssh\"\nssh_sudo = true\n";
        let cli = parse(text, &["baton", "executor", "--group", "g"]).unwrap();
        let Command::Executor(args) = cli.command else {
            panic!("not an executor")
        };
        assert_eq!(
            args.nodes,
            vec![
                ("backend-1".to_string(), None),
                ("backend-2".to_string(), Some("10.0.0.2".to_string()))
            ]
        );
        assert_eq!(
            args.ssh_options,
            ["IdentityFile=/etc/baton/id", "Port=2222"]
        );
        assert!(args.ssh_sudo);

        // A repeated flag replaces the file's list (docs/config.md says so).
        let cli = parse(
            text,
            &[
                "baton",
                "executor",
                "--group",
                "g",
                "--ssh-option",
                "Port=2",
            ],
        )
        .unwrap();
        let Command::Executor(args) = cli.command else {
            panic!("not an executor")
        };
        assert_eq!(args.ssh_options, ["Port=2"]);
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let line = ["baton", "server", "--db", "/x"];
        let err = config_error("db = \"/x\"\n\nmystery = 1\n", &line);
        assert!(err.contains("baton.toml:3: mystery: unknown key"), "{err}");
        assert!(err.contains("lease_ttl_ms"), "lists the keys: {err}");

        let err = config_error("# skew\napi_skew_s = 99999\n", &line);
        assert!(err.contains("baton.toml:2: api_skew_s: "), "{err}");
        assert!(err.contains("99999"), "{err}");

        let err = config_error("standby = \"yes\"\n", &line);
        assert!(err.contains(":1: standby: expected true or false"), "{err}");
        let err = config_error("db = [\"/a\", \"/b\"]\n", &line);
        assert!(err.contains(":1: db: takes one value"), "{err}");
        let err = config_error("[server]\ndb = \"/a\"\n", &line);
        assert!(err.contains(":1: server: unknown key"), "{err}");
        let err = config_error("log_format = \"xml\"\n", &line);
        assert!(err.contains(":1: log_format: "), "{err}");
        let err = config_error("db = \"/a\"\ndb = \"/b\"\n", &line);
        assert!(err.contains(":2: (file): duplicate key"), "{err}");
        // An executor's key in a server's file.
        let err = config_error("group = \"g\"\n", &line);
        assert!(err.contains(":1: group: unknown key"), "{err}");
        // A value that looks like a flag is a value.
        let err = config_error(
            "heartbeat_ms = \"--help\"\n",
            &["baton", "executor", "--group", "g", "--nodes", "n"],
        );
        assert!(err.contains(":1: heartbeat_ms: "), "{err}");
    }

    #[test]
    fn a_missing_config_file_is_a_usage_error_and_a_missing_default_is_none() {
        let err = match parse_in(
            args(&[
                "baton",
                "server",
                "--db",
                "/x",
                "--config",
                "/nonexistent/s.toml",
            ]),
            Path::new("/nonexistent"),
        ) {
            Err(ParseError::Config(err)) => err.to_string(),
            _ => panic!("a missing --config file must be refused"),
        };
        assert!(err.contains("/nonexistent/s.toml"), "{err}");
        assert!(parse_in(
            args(&["baton", "server", "--db", "/x"]),
            Path::new("/nonexistent")
        )
        .is_ok());
    }

    #[test]
    fn the_default_file_is_read_when_present_and_only_by_its_command() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("server.toml"), "db = \"/from/file\"\n").unwrap();
        let cli = parse_in(args(&["baton", "server"]), dir.path()).unwrap();
        assert_eq!(server(cli).db, PathBuf::from("/from/file"));
        // The executor has no file there; other commands never read one.
        assert!(config_of(&args(&["baton", "executor", "--group", "g"]), dir.path()).is_none());
        assert!(config_of(&args(&["baton", "list"]), dir.path()).is_none());
    }

    #[test]
    fn docs_config_md_names_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/config.md");
        let doc = std::fs::read_to_string(path).expect("docs/config.md");
        for (command, _) in COMMANDS {
            for key in keys_of(command) {
                assert!(
                    doc.contains(&format!("`{key}`")),
                    "docs/config.md: `{key}` ({command})"
                );
            }
        }
    }
}
