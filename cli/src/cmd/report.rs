//! `baton report`: an upgrade's timeline as one self-contained HTML page
//! (`crate::report` draws it). The events come the way `baton replay` gets
//! them (through the service, offline from a log directory with `--db`, or
//! from an export with `--file`) and are verified before they are drawn: the
//! hash chain recomputed here (`store::verify_export`), today's `decide` on
//! the recorded inputs (`replay --verify`), and the service's signed
//! checkpoints of the stream (`audit verify`'s check), from wherever the
//! source keeps them. The page is written whatever the verification found
//! (it says so at the top); a failed check then ends the command with exit
//! code 5.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use workflow::service::api::LoggedEvent;
use workflow::service::checkpoint::{self, BadCheckpoint, Checkpoint};
use workflow::service::SERVICE_STREAM;

use super::{audit, replay};
use crate::client::{Client, Exit, EXIT_VERIFY_FAILED};
use crate::report::{self, Finding, SignedHead, Verdict, Verification};
use crate::{Global, Output};

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The upgrade id.
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// Write the HTML page here.
    #[arg(long)]
    pub out: PathBuf,
    /// Read the log directory directly (the service must not be running on it; use a copy).
    #[arg(long, conflicts_with = "file")]
    pub db: Option<PathBuf>,
    /// Read an exported JSON-lines file (`baton audit export`).
    #[arg(long, value_parser = crate::args::readable_file)]
    pub file: Option<PathBuf>,
    /// Also check the upgrade's checkpoints in this file (`baton audit checkpoint export`): an
    /// export holds no checkpoint of its own.
    #[arg(long, value_parser = crate::args::readable_file)]
    pub anchor: Option<PathBuf>,
}

/// The events, the checkpoints the source keeps, and the source's name.
pub type Drawn = (
    Vec<LoggedEvent>,
    Vec<Result<Checkpoint, BadCheckpoint>>,
    &'static str,
);

pub fn run(global: Global, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let runtime = super::runtime()?;
    let (logged, checkpoints, source): Drawn = match (&args.db, &args.file) {
        (Some(db), _) => {
            let store = audit::open_offline(db)?;
            let logged = replay::read_offline(&store, &args.upgrade)?;
            let checkpoints = checkpoint::in_log(&store, SERVICE_STREAM)?;
            (logged, checkpoints, "the log's service stream")
        }
        (None, Some(file)) => {
            let logged =
                runtime.block_on(replay::load(&global, &args.upgrade, &None, &args.file))?;
            let text =
                std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            (logged, audit::chain_of_export(&text).1, "the export file")
        }
        (None, None) => runtime.block_on(async {
            let client = Client::connect(&global).await?;
            fetch_via_service(&client, &args.upgrade).await
        })?,
    };
    let summary = draw(&global, &args, (logged, checkpoints, source))?;
    if global.output == Output::Json {
        outln!(
            "{}",
            serde_json::json!({
                "upgrade": args.upgrade,
                "out": args.out,
                "status": summary.status,
                "steps": summary.steps,
                "nodes": summary.nodes,
                "events": summary.events,
                "verified": summary.verified,
            })
        );
    } else {
        outln!("{}", summary.line(&args));
    }
    if summary.verified {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(Exit::new(
            EXIT_VERIFY_FAILED,
            format!(
                "the log of upgrade {} does not verify (the report at {} says where)",
                args.upgrade,
                args.out.display()
            ),
        )
        .into())
    }
}

/// What a written report shows, in brief.
pub struct Summary {
    pub status: String,
    pub steps: usize,
    pub nodes: usize,
    pub events: usize,
    pub verified: bool,
}

impl Summary {
    /// The one line `baton report` prints.
    pub fn line(&self, args: &ReportArgs) -> String {
        format!(
            "report of upgrade {} ({}; {} steps on {} nodes; log {}) written to {}",
            args.upgrade,
            self.status,
            self.steps,
            self.nodes,
            if self.verified {
                "verified"
            } else {
                "DOES NOT VERIFY"
            },
            args.out.display()
        )
    }
}

/// An upgrade's events and the service's checkpoints, through the service (also `baton dev`'s report).
pub async fn fetch_via_service(client: &Client, upgrade: &str) -> anyhow::Result<Drawn> {
    let logged = replay::fetch(client, upgrade).await?;
    let checkpoints = audit::fetch_stream(client, "checkpoints")
        .await?
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            serde_json::from_value(value).map_err(|err| BadCheckpoint {
                stream: "BATON_CHECKPOINTS".into(),
                seq: i as u64 + 1,
                reason: format!("malformed checkpoint: {err}"),
            })
        })
        .collect();
    Ok((logged, checkpoints, "BATON_CHECKPOINTS"))
}

/// Verifies what was fetched and writes the page to `args.out` (whatever the verification found).
pub fn draw(global: &Global, args: &ReportArgs, drawn: Drawn) -> anyhow::Result<Summary> {
    let (logged, mut checkpoints, source) = drawn;
    if logged.is_empty() {
        bail!("no events for upgrade {}", args.upgrade);
    }
    // Only this upgrade's checkpoints: a record about another stream (or one
    // that does not read) says nothing about this one.
    checkpoints.retain(|cp| matches!(cp, Ok(cp) if cp.stream == args.upgrade));
    if let Some(anchor) = &args.anchor {
        let file =
            std::fs::File::open(anchor).with_context(|| format!("reading {}", anchor.display()))?;
        checkpoints.extend(
            checkpoint::read_jsonl(std::io::BufReader::new(file))
                .into_iter()
                .filter(|cp| !matches!(cp, Ok(cp) if cp.stream != args.upgrade)),
        );
    }
    let events = replay::decode_all(&logged)?;
    let key = audit::service_key(global)?;
    let verification = verify(&logged, &events, checkpoints, key.as_deref(), source)?;
    let timeline = report::Timeline::of(&args.upgrade, &events);
    let page = report::html(&timeline, &verification);
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    let (status, _) = timeline.end();
    Ok(Summary {
        status: status.to_string(),
        steps: timeline.bars.len(),
        nodes: timeline.nodes.len(),
        events: events.len(),
        verified: !verification.failed(),
    })
}

/// The chain recomputed from the events as drawn, the recorded decisions
/// re-derived, and the stream's checkpoints checked against that chain.
fn verify(
    logged: &[LoggedEvent],
    events: &[workflow::core::Event],
    checkpoints: Vec<Result<Checkpoint, BadCheckpoint>>,
    key: Option<&str>,
    source: &str,
) -> anyhow::Result<Verification> {
    let mut lines = Vec::new();
    for entry in logged {
        serde_json::to_writer(&mut lines, entry)?;
        lines.push(b'\n');
    }
    let head = logged.last().map_or(0, |e| e.seq);
    let chain = match store::verify_export(lines.as_slice()) {
        Ok(_) => Finding {
            what: "chain",
            verdict: Verdict::Ok,
            detail: format!(
                "the {} events chain from event 1 to event {head} (recomputed here; head hash {})",
                logged.len(),
                logged.last().map_or("", |e| e.hash.as_str())
            ),
        },
        Err(err) => Finding {
            what: "chain",
            verdict: Verdict::Failed,
            detail: format!("{:#}", anyhow::Error::from(err)),
        },
    };
    let decisions = match replay::divergence(events) {
        None => Finding {
            what: "decisions",
            verdict: Verdict::Ok,
            detail: "today's decide, fed the recorded inputs, makes exactly the recorded decisions"
                .into(),
        },
        Some(divergence) => Finding {
            what: "decisions",
            verdict: Verdict::Failed,
            detail: format!("the log and today's decide diverge {divergence}"),
        },
    };
    let latest = checkpoints
        .iter()
        .filter_map(|cp| cp.as_ref().ok())
        .max_by_key(|cp| cp.seq)
        .cloned();
    let count = checkpoints.len();
    let chain_hashes = audit::chain_of_export(&lines).0;
    let checked = checkpoint::check(checkpoints, key, |stream, seq| {
        Ok(audit::chain_lookup(&chain_hashes, stream, seq))
    });
    let (checkpoint_finding, signed) = match (checked, latest) {
        (Err(bad), _) => (
            Finding {
                what: "checkpoint",
                verdict: Verdict::Failed,
                detail: bad.to_string(),
            },
            None,
        ),
        (Ok(_), None) => (
            Finding {
                what: "checkpoint",
                verdict: Verdict::Partial,
                detail: format!(
                    "no signed checkpoint of this upgrade in {source}{}",
                    if source == "the export file" {
                        " (an export holds only the upgrade's events: --anchor FILE from `baton audit checkpoint export`)"
                    } else {
                        ""
                    }
                ),
            },
            None,
        ),
        (Ok(_), Some(cp)) => {
            let sealed = if cp.seq == head {
                format!("the latest seals the head (event {head})")
            } else {
                format!(
                    "the latest seals event {} of {head}; the events after it are not sealed yet",
                    cp.seq
                )
            };
            let verdict = if key.is_some() {
                Verdict::Ok
            } else {
                Verdict::Partial
            };
            let signature = if key.is_some() {
                "signed by the trust file's service key"
            } else {
                "signatures NOT checked (no trust file: --trust or BATON_TRUST)"
            };
            (
                Finding {
                    what: "checkpoint",
                    verdict,
                    detail: format!(
                        "{count} signed checkpoints in {source} lie on the chain; {sealed}; {signature}"
                    ),
                },
                Some(SignedHead {
                    seq: cp.seq,
                    hash: cp.hash,
                    key: cp.key,
                    at_ms: cp.at_ms,
                    epoch: cp.epoch,
                    signature_checked: key.is_some(),
                }),
            )
        }
    };
    Ok(Verification {
        findings: vec![chain, decisions, checkpoint_finding],
        checkpoint: signed,
    })
}
