//! `baton audit`: verify the log's hash chains, export an upgrade as JSON
//! lines. Through the service by default; offline with `--db` (a log no
//! service holds, e.g. a copy) or `--file` (an export).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use store::StreamId;
use workflow::service::api::LoggedEvent;
use workflow::service::{checkpoint, mirror, SERVICE_STREAM};

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
        #[arg(long, value_parser = crate::args::readable_file)]
        file: Option<PathBuf>,
        /// Also compare the log with its mirror in BATON_EVENTS (through the
        /// service) and report every difference.
        #[arg(long)]
        mirror: bool,
        /// Also check the log against these checkpoints (as `baton audit
        /// checkpoint export` writes them): each must be on the log's chain.
        #[arg(long, value_parser = crate::args::readable_file)]
        anchor: Option<PathBuf>,
    },
    /// The service's signed checkpoints (BATON_CHECKPOINTS).
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Write an upgrade's events as JSON lines (verifiable offline).
    Export {
        /// The upgrade id.
        #[arg(value_parser = crate::args::upgrade_id)]
        upgrade: String,
        /// Read this log directory directly (no service may hold it).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum CheckpointCommand {
    /// Write every checkpoint in BATON_CHECKPOINTS as JSON lines, to keep
    /// off-box and check a log against later (`audit verify --anchor FILE`).
    Export {
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(global: Global, command: AuditCommand) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    match command {
        AuditCommand::Verify {
            db: Some(db),
            anchor,
            mirror,
            ..
        } => {
            let store = open_offline(&db)?;
            if mirror {
                let differences = runtime.block_on(async {
                    let client = Client::connect(&global).await?;
                    mirror_differences(&client, |s, q| checkpoint::hash_in(&store, s, q)).await
                })?;
                if !differences.is_empty() {
                    return print_verify(&global, false, &differences.join("; "));
                }
            }
            let report = match store.verify() {
                Ok(report) if report.is_clean() => report,
                Ok(report) => return print_verify(&global, false, &report.to_string()),
                Err(err @ store::StoreError::Corruption { .. }) => {
                    return print_verify(&global, false, &format!("{:#}", anyhow::Error::from(err)))
                }
                Err(err) => return Err(err.into()),
            };
            let key = service_key(&global)?;
            let lookup = |s, q| checkpoint::hash_in(&store, s, q);
            let checked =
                checkpoint::verify_log(&store, SERVICE_STREAM, key.as_deref()).and_then(|logged| {
                    let anchored = anchors(&anchor, key.as_deref(), lookup)?;
                    Ok(format!("{report}; {logged}{anchored}"))
                });
            match checked {
                Ok(detail) => print_verify(&global, true, &detail),
                Err(bad) => print_verify(&global, false, &bad.to_string()),
            }
        }
        AuditCommand::Verify {
            file: Some(file),
            anchor,
            ..
        } => {
            let text =
                std::fs::read(&file).with_context(|| format!("opening {}", file.display()))?;
            let report = match store::verify_export(text.as_slice()) {
                Ok(report) => report,
                Err(err) => {
                    return print_verify(&global, false, &format!("{:#}", anyhow::Error::from(err)))
                }
            };
            let key = service_key(&global)?;
            let (chain, logged) = chain_of_export(&text);
            let lookup = |s: StreamId, q: u64| Ok(chain_lookup(&chain, s, q));
            let checked = checkpoint::check(logged, key.as_deref(), lookup).and_then(|logged| {
                let anchored = anchors(&anchor, key.as_deref(), lookup)?;
                Ok(format!(
                    "{} records in {} streams; {logged}{anchored}",
                    report.records,
                    report.streams.len()
                ))
            });
            match checked {
                Ok(detail) => print_verify(&global, true, &detail),
                Err(bad) => print_verify(&global, false, &bad.to_string()),
            }
        }
        AuditCommand::Verify { anchor, mirror, .. } => runtime.block_on(async {
            let client = Client::connect(&global).await?;
            if mirror {
                // The mirror first, then the log: an upgrade still running
                // appends before it mirrors, so every mirrored event is in
                // the log read after, and only its tail may be missing.
                // Which upgrades had ended is taken before the mirror is read:
                // one that ends meanwhile keeps the running upgrade's leeway.
                let finished: std::collections::BTreeSet<String> =
                    super::ops::list_all(&client, true)
                        .await?
                        .into_iter()
                        .filter(|view| {
                            matches!(
                                view.status.as_str(),
                                "completed" | "halted" | "aborted" | "planned"
                            )
                        })
                        .map(|view| view.upgrade)
                        .collect();
                let messages = fetch_stream(&client, "mirror").await?;
                let mut chain = Chain::new();
                for view in super::ops::list_all(&client, true).await? {
                    let events: Vec<LoggedEvent> =
                        super::replay::fetch(&client, &view.upgrade).await?;
                    let lines: Vec<u8> = events
                        .iter()
                        .flat_map(|e| {
                            let mut line = serde_json::to_vec(e).unwrap_or_default();
                            line.push(b'\n');
                            line
                        })
                        .collect();
                    chain.extend(chain_of_export(&lines).0);
                }
                let differences: Vec<String> = mirror::differences(
                    messages,
                    |s, q| Ok(chain_lookup(&chain, s, q)),
                    |s| finished.contains(&s.to_string()),
                )
                .iter()
                .map(ToString::to_string)
                .collect();
                if !differences.is_empty() {
                    print_verify(&global, false, &differences.join("; "))?;
                }
            }
            if verify_via_service(&client, &global, anchor.as_deref()).await? {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(Exit::new(EXIT_VERIFY_FAILED, "the log does not verify").into())
            }
        }),
        AuditCommand::Checkpoint(CheckpointCommand::Export { out }) => runtime.block_on(async {
            let client = Client::connect(&global).await?;
            let messages = fetch_stream(&client, "checkpoints").await?;
            let count = messages.len();
            let mut lines = String::new();
            for cp in &messages {
                lines.push_str(&serde_json::to_string(cp)?);
                lines.push('\n');
            }
            match &out {
                Some(path) => {
                    std::fs::write(path, &lines)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("exported {count} checkpoints to {}", path.display());
                }
                None => out!("{lines}"),
            }
            Ok(ExitCode::SUCCESS)
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
        outln!("{}", serde_json::json!({"clean": clean, "detail": detail}));
    } else if clean {
        outln!("audit verify: OK ({detail})");
    } else {
        outln!("audit verify: FAILED ({detail})");
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
pub async fn verify_via_service(
    client: &Client,
    global: &Global,
    anchor: Option<&Path>,
) -> anyhow::Result<bool> {
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
    let (chain, _) = chain_of_export(lines.as_bytes());
    let key = service_key(global)?;
    let anchored = anchors(&anchor.map(Path::to_path_buf), key.as_deref(), |s, q| {
        Ok(chain_lookup(&chain, s, q))
    });
    let clean = server_clean && local.is_ok() && anchored.is_ok();
    let detail = match (&local, &anchored) {
        (Ok(_), Ok(anchored)) => format!(
            "service: {}; recomputed here from the events it sent: the {records} records of the {} upgrade \
             streams chain correctly (the rest are the service's own stream: starts and checkpoints){anchored}",
            server.get("report").and_then(|r| r.as_str()).unwrap_or("?"),
            views.len()
        ),
        (Err(err), _) => format!("recomputing the chains here failed: {err}"),
        (_, Err(bad)) => bad.to_string(),
    };
    print_verify(global, clean, &detail)
        .map(|_| clean)
        .or(Ok(false))
}

/// Every message of a JetStream stream the service pages out (`checkpoints`
/// or `mirror`).
pub(crate) async fn fetch_stream(
    client: &Client,
    verb: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let page: serde_json::Value = client
            .call(verb, &serde_json::json!({ "after": after }))
            .await?;
        out.extend(page["messages"].as_array().into_iter().flatten().cloned());
        match page["next_after"].as_u64() {
            Some(next) if next > after => after = next,
            _ => return Ok(out),
        }
    }
}

/// Compares BATON_EVENTS with a copy of the log (`workflow::service::mirror`),
/// all of it: every difference, worded for the report.
async fn mirror_differences(
    client: &Client,
    lookup: impl FnMut(StreamId, u64) -> Result<checkpoint::At, String>,
) -> anyhow::Result<Vec<String>> {
    let messages = fetch_stream(client, "mirror").await?;
    Ok(mirror::differences(messages, lookup, |_| true)
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// The trust file's service key, if a trust file is given (without one,
/// checkpoint signatures are reported as not checked).
pub(crate) fn service_key(global: &Global) -> anyhow::Result<Option<String>> {
    match &global.trust {
        None => Ok(None),
        Some(_) => Ok(Some(global.trust("audit verify")?.service.key)),
    }
}

/// Checks the checkpoints of an anchor file, if one is given; the text to
/// add to the report.
fn anchors(
    anchor: &Option<PathBuf>,
    key: Option<&str>,
    lookup: impl FnMut(StreamId, u64) -> Result<checkpoint::At, String>,
) -> Result<String, checkpoint::BadCheckpoint> {
    let Some(path) = anchor else {
        return Ok(String::new());
    };
    let file = std::fs::File::open(path).map_err(|err| checkpoint::BadCheckpoint {
        stream: "(anchor file)".into(),
        seq: 0,
        reason: format!("cannot read {}: {err}", path.display()),
    })?;
    let summary = checkpoint::check(
        checkpoint::read_jsonl(std::io::BufReader::new(file)),
        key,
        lookup,
    )?;
    Ok(format!("; anchor {}: {summary}", path.display()))
}

/// The chain hashes of an export's lines, `stream -> seq -> hash`, and the
/// checkpoints it holds (records of the service stream).
pub(crate) type Chain =
    std::collections::BTreeMap<StreamId, std::collections::BTreeMap<u64, store::Hash>>;

pub(crate) fn chain_of_export(
    text: &[u8],
) -> (
    Chain,
    Vec<Result<checkpoint::Checkpoint, checkpoint::BadCheckpoint>>,
) {
    #[derive(serde::Deserialize)]
    struct Line {
        stream: String,
        seq: u64,
        hash: String,
        #[serde(default)]
        event: Option<Box<serde_json::value::RawValue>>,
    }
    let mut chain = Chain::new();
    let mut logged = Vec::new();
    for line in text.split(|b| *b == b'\n') {
        let Ok(line) = serde_json::from_slice::<Line>(line) else {
            continue;
        };
        let (Ok(stream), Ok(hash)) = (line.stream.parse::<StreamId>(), hex::decode(&line.hash))
        else {
            continue;
        };
        if let Ok(hash) = store::Hash::try_from(hash.as_slice()) {
            chain.entry(stream).or_default().insert(line.seq, hash);
        }
        if stream == SERVICE_STREAM {
            if let Some(cp) = line
                .event
                .and_then(|e| checkpoint::Checkpoint::from_record(e.get().as_bytes()))
            {
                logged.push(cp.map_err(|reason| checkpoint::BadCheckpoint {
                    stream: stream.to_string(),
                    seq: line.seq,
                    reason,
                }));
            }
        }
    }
    (chain, logged)
}

pub(crate) fn chain_lookup(chain: &Chain, stream: StreamId, seq: u64) -> checkpoint::At {
    match chain.get(&stream) {
        None => checkpoint::At::NotHere,
        Some(records) => records
            .get(&seq)
            .map_or(checkpoint::At::Missing, |h| checkpoint::At::Hash(*h)),
    }
}

/// Opens a log directory that no service holds. A path that holds no log
/// (missing, or a directory without sled's `conf` and `db` files) is a usage
/// error: opening it would create an empty log there, which verifies "OK".
pub fn open_offline(db: &Path) -> anyhow::Result<store::Store> {
    if !db.join("conf").is_file() || !db.join("db").is_file() {
        return Err(Exit::of(
            crate::client::Class::Usage,
            format!(
                "no log at {} (a log directory holds the files `conf` and `db`: --db names the service's --db, or a copy of it)",
                db.display()
            ),
        )
        .into());
    }
    store::Store::open(db).with_context(|| {
        format!(
            "opening the log {} (if a `baton server` holds it, omit --db to go through the service, or use a copy)",
            db.display()
        )
    })
}
