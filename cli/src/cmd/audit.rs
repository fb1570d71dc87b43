//! `baton audit`: verify the log's hash chains, export an upgrade as JSON
//! lines. Through the service by default; offline with `--db` (a log no
//! service holds, e.g. a copy) or `--file` (an export).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use workflow::service::api::LoggedEvent;

use crate::client::{Client, Exit, EXIT_VERIFY_FAILED};
use crate::{Global, Output};

#[derive(clap::Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every hash chain and cross-check the log's indexes.
    Verify {
        /// Verify this log directory directly (no service may hold it).
        #[arg(long, conflicts_with = "file")]
        db: Option<PathBuf>,
        /// Verify an exported JSON-lines file instead.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write an upgrade's events as JSON lines (verifiable offline).
    Export {
        /// The upgrade id.
        upgrade: String,
        /// Read this log directory directly (no service may hold it).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(global: Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    match command {
        AuditCommand::Verify { db: Some(db), .. } => match open_offline(&db)?.verify() {
            Ok(report) => print_verify(&global, report.is_clean(), &format!("{report:?}")),
            Err(err @ store::StoreError::Corruption { .. }) => {
                print_verify(&global, false, &format!("{:#}", anyhow::Error::from(err)))
            }
            Err(err) => Err(err.into()),
        },
        AuditCommand::Verify {
            file: Some(file), ..
        } => {
            let text = std::fs::File::open(&file)
                .with_context(|| format!("opening {}", file.display()))?;
            match store::verify_export(std::io::BufReader::new(text)) {
                Ok(report) => print_verify(
                    &global,
                    true,
                    &format!(
                        "{} records in {} streams",
                        report.records,
                        report.streams.len()
                    ),
                ),
                Err(err) => {
                    print_verify(&global, false, &format!("{:#}", anyhow::Error::from(err)))
                }
            }
        }
        AuditCommand::Verify { .. } => runtime.block_on(async {
            let client = Client::connect(&global).await?;
            if verify_via_service(&client, &global).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(Exit::new(EXIT_VERIFY_FAILED, "the log does not verify").into())
            }
        }),
        AuditCommand::Export { upgrade, db, out } => {
            let events = runtime.block_on(super::replay::load(&global, &upgrade, &db, &None))?;
            let mut sink: Box<dyn Write> = match &out {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("creating {}", path.display()))?,
                )),
                None => Box::new(std::io::stdout().lock()),
            };
            for event in &events {
                writeln!(sink, "{}", serde_json::to_string(event)?)?;
            }
            sink.flush()?;
            if let Some(path) = out {
                eprintln!("exported {} events to {}", events.len(), path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_verify(global: &Global, clean: bool, detail: &str) -> anyhow::Result<ExitCode> {
    if global.output == Output::Json {
        println!("{}", serde_json::json!({"clean": clean, "detail": detail}));
    } else if clean {
        println!("audit verify: OK ({detail})");
    } else {
        println!("audit verify: FAILED ({detail})");
    }
    if clean {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Exit::new(EXIT_VERIFY_FAILED, "the log does not verify").into())
    }
}

/// Verifies the whole log inside the service, then recomputes every
/// upgrade's chain here from the events the service returns, so the answer
/// does not rest on the service's word alone. Prints the result.
pub async fn verify_via_service(client: &Client, global: &Global) -> anyhow::Result<bool> {
    let server: serde_json::Value = client.call("audit", &serde_json::json!({})).await?;
    let server_clean = server.get("clean").and_then(|c| c.as_bool()) == Some(true);
    let views = super::ops::list_all(client, true).await?;
    let mut lines = String::new();
    let mut records = 0;
    for view in &views {
        let events: Vec<LoggedEvent> = super::replay::fetch(client, &view.upgrade).await?;
        records += events.len();
        for event in &events {
            lines.push_str(&serde_json::to_string(event)?);
            lines.push('\n');
        }
    }
    let local = store::verify_export(lines.as_bytes());
    let clean = server_clean && local.is_ok();
    let detail = match &local {
        Ok(_) => format!(
            "service: {}; recomputed here: {records} records of {} upgrades chain correctly",
            server.get("report").and_then(|r| r.as_str()).unwrap_or("?"),
            views.len()
        ),
        Err(err) => format!("recomputing the chains here failed: {err}"),
    };
    print_verify(global, clean, &detail)
        .map(|_| clean)
        .or(Ok(false))
}

/// Opens a log directory that no service holds.
pub fn open_offline(db: &Path) -> anyhow::Result<store::Store> {
    if !db.exists() {
        anyhow::bail!("no log at {}", db.display());
    }
    store::Store::open(db).with_context(|| {
        format!(
            "opening the log {} (if a `baton server` holds it, omit --db to go through the service, or use a copy)",
            db.display()
        )
    })
}
