//! How a failed command reports itself on stderr: one line of text (the
//! error, each cause once, the command to run next), or under `--output json`
//! one JSON object and nothing else:
//!
//! ```json
//! {"error": {"message": "...", "causes": ["..."], "kind": "not_found", "exit_code": 3, "hint": "baton list"}}
//! ```
//!
//! `kind` is one of `usage`, `rejected`, `not_found`, `infrastructure`,
//! `upgrade_failed`, `verify_failed` (see [`crate::client::Class`]).

use std::process::ExitCode;

use crate::client::{self, Class};

/// A failed command's error, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub message: String,
    pub causes: Vec<String>,
    pub kind: &'static str,
    pub exit_code: u8,
    pub hint: Option<String>,
}

impl Report {
    /// The report of a command's error.
    pub fn of(err: &anyhow::Error) -> Report {
        let class = client::class_of(err);
        let (message, causes) = message_and_causes(err);
        Report {
            message,
            causes,
            kind: class.name(),
            exit_code: class.code(),
            hint: client::hint_of(err),
        }
    }

    /// The report of the command line `args` that clap refused (exit code
    /// 2). `None` for `--help` and `--version`, which are not errors.
    pub fn of_clap(err: &clap::Error, args: &[String]) -> Option<Report> {
        use clap::error::ErrorKind;
        if matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            return None;
        }
        let hint = format!("{} --help", subcommand_path(args));
        if err.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            // `baton audit`: clap prints the help; as an error it says what is missing.
            return Some(Report {
                message: "a subcommand is required".to_string(),
                causes: Vec::new(),
                kind: Class::Usage.name(),
                exit_code: Class::Usage.code(),
                hint: Some(hint),
            });
        }
        // The rendered text without styles: "error: ...", a blank line,
        // tips, "Usage: baton CMD ...", "For more information, try '--help'."
        let text = err.render().to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or("invalid command line");
        let message = first.strip_prefix("error: ").unwrap_or(first).to_string();
        let mut causes = Vec::new();
        for line in lines {
            if !line.starts_with("Usage: ") && !line.starts_with("For more information") {
                causes.push(line.to_string());
            }
        }
        Some(Report {
            message,
            causes,
            kind: Class::Usage.name(),
            exit_code: Class::Usage.code(),
            hint: Some(hint),
        })
    }

    /// The report as one line of text: the message, each cause once, the
    /// command to run next.
    pub fn line(&self) -> String {
        let mut line = self.message.clone();
        for cause in &self.causes {
            line.push_str(": ");
            line.push_str(cause);
        }
        if let Some(hint) = &self.hint {
            line.push_str("; next: ");
            line.push_str(hint);
        }
        line
    }

    /// The report as the JSON object of `--output json`.
    pub fn json(&self) -> String {
        serde_json::json!({ "error": self }).to_string()
    }

    /// Prints the report on stderr (JSON or one line) and returns its exit code.
    pub fn print(&self, json: bool) -> ExitCode {
        if json {
            eprintln!("{}", self.json());
        } else {
            eprintln!("baton: error: {}", self.line());
        }
        ExitCode::from(self.exit_code)
    }
}

/// `baton` and the subcommands named in `args` (`baton audit verify`): the
/// command whose `--help` explains what was refused.
fn subcommand_path(args: &[String]) -> String {
    let mut command = <crate::Cli as clap::CommandFactory>::command();
    let mut path = vec!["baton".to_string()];
    for arg in args.iter().skip(1) {
        if arg == "--" {
            break;
        }
        if let Some(sub) = command.find_subcommand(arg).cloned() {
            path.push(sub.get_name().to_string());
            command = sub;
        }
    }
    path.join(" ")
}

/// An error's message and its causes, each once: a cause whose text the
/// line so far already ends with (libraries often repeat their source in
/// their own message) is left out, and so is an empty one.
pub fn message_and_causes(err: &anyhow::Error) -> (String, Vec<String>) {
    let mut line = String::new();
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        parts.push(text);
    }
    let mut parts = parts.into_iter();
    let message = parts.next().unwrap_or_else(|| "failed".to_string());
    (message, parts.collect())
}

/// Whether the command line or the environment asks for JSON output, read
/// without clap (for a command line clap refused).
pub fn json_requested<I: IntoIterator<Item = std::ffi::OsString>>(
    args: I,
    env: Option<std::ffi::OsString>,
) -> bool {
    let mut from_args = None;
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let arg = arg.to_string_lossy().into_owned();
        if arg == "--" {
            break;
        }
        if arg == "--output" {
            from_args = args.next().map(|v| v.to_string_lossy() == "json");
        } else if let Some(value) = arg.strip_prefix("--output=") {
            from_args = Some(value == "json");
        }
    }
    from_args.unwrap_or_else(|| env.is_some_and(|v| v == "json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Exit;

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        );
        #[derive(Debug, thiserror::Error)]
        #[error("{0}")]
        struct Repeats(#[source] std::io::Error);
        let err =
            anyhow::Error::new(Repeats(io)).context("connecting to NATS at nats://127.0.0.1:1");
        let report = Report::of(&err);
        assert_eq!(
            report.line(),
            "connecting to NATS at nats://127.0.0.1:1: Connection refused (os error 111)"
        );
        assert_eq!(report.kind, "infrastructure");
        assert_eq!(report.exit_code, 1);
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(Report::of(&plain).line(), "outer: inner");
        assert_eq!(Report::of(&plain).causes, vec!["inner".to_string()]);
    }

    #[test]
    fn an_error_keeps_its_class_and_hint_through_context() {
        let err = anyhow::Error::new(
            Exit::of(Class::NotFound, "no upgrade X in the log").hint("baton list"),
        )
        .context("status");
        let report = Report::of(&err);
        assert_eq!(
            (report.kind, report.exit_code),
            ("not_found", 3),
            "{report:?}"
        );
        assert_eq!(
            report.line(),
            "status: no upgrade X in the log; next: baton list"
        );
        let value: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(value["error"]["hint"], "baton list");
        assert_eq!(value["error"]["causes"][0], "no upgrade X in the log");
        // A key file that cannot be used is a usage error.
        let key = anyhow::Error::new(protocol::ProtocolError::Key {
            path: "/k".into(),
            reason: "cannot read it".into(),
        });
        assert_eq!(Report::of(&key).exit_code, 2);
    }

    #[test]
    fn clap_errors_become_usage_reports_naming_the_help_to_read() {
        use clap::Parser as _;
        let args = ["baton", "--output", "json", "list", "--bogus"];
        let Err(err) = crate::Cli::try_parse_from(args) else {
            panic!("--bogus was accepted");
        };
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let report = Report::of_clap(&err, &args).unwrap();
        assert_eq!((report.kind, report.exit_code), ("usage", 2));
        assert!(report.message.contains("--bogus"), "{report:?}");
        assert_eq!(report.hint.as_deref(), Some("baton list --help"));
        let Err(help) = crate::Cli::try_parse_from(["baton", "--help"]) else {
            panic!("--help parsed as a command");
        };
        assert!(Report::of_clap(&help, &[]).is_none());
        let args = ["baton", "audit", "export", "x"];
        let Err(err) = crate::Cli::try_parse_from(args) else {
            panic!("a malformed id was accepted");
        };
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let report = Report::of_clap(&err, &args).unwrap();
        assert!(
            report.message.contains("is not an upgrade id"),
            "{report:?}"
        );
        assert_eq!(report.hint.as_deref(), Some("baton audit export --help"));
    }

    #[test]
    fn json_is_asked_by_flag_or_environment() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(json_requested(
            args(&["baton", "--output", "json", "x"]),
            None
        ));
        assert!(json_requested(args(&["baton", "x", "--output=json"]), None));
        assert!(json_requested(args(&["baton", "x"]), Some("json".into())));
        assert!(!json_requested(
            args(&["baton", "--output", "text"]),
            Some("json".into())
        ));
        assert!(!json_requested(args(&["baton", "x"]), None));
    }
}
