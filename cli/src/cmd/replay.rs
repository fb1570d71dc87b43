//! `baton replay`: an upgrade's timeline and its state at any event, read
//! through the service, offline from a log directory, or from an exported
//! JSON-lines file; `--verify` feeds the recorded inputs to today's `decide`
//! and reports every divergence from the recorded decisions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use workflow::core::{self, Event, State};
use workflow::service::api::{EventsPage, EventsRequest, LoggedEvent};
use workflow::service::view;

use crate::client::{Client, Exit, EXIT_VERIFY_FAILED};
use crate::render::{self, Timeline};
use crate::{Global, Output};

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// The upgrade id.
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// Show the state right after this event (default: the last).
    #[arg(long)]
    pub at: Option<u64>,
    /// Read the log directory directly (the service must not be running on it; use a copy).
    #[arg(long, conflicts_with = "file")]
    pub db: Option<PathBuf>,
    /// Read an exported JSON-lines file (`baton audit export`).
    #[arg(long, value_parser = crate::args::readable_file)]
    pub file: Option<PathBuf>,
    /// Re-run today's `decide` on the recorded inputs and compare its decisions with the log.
    #[arg(long)]
    pub verify: bool,
    /// Print JSON (same as --output json).
    #[arg(long)]
    pub json: bool,
}

pub fn run(global: Global, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let logged = super::runtime()?.block_on(load(&global, &args.upgrade, &args.db, &args.file))?;
    if logged.is_empty() {
        bail!("no events for upgrade {}", args.upgrade);
    }
    let events = decode_all(&logged)?;
    let json = args.json || global.output == Output::Json;
    if args.verify {
        return report_verification(&args.upgrade, &events, json);
    }
    let at = args
        .at
        .unwrap_or(events.len() as u64)
        .min(events.len() as u64);
    let upto = &events[..at as usize];
    let state: State = core::replay(upto.iter());
    let view = view::status_view(&args.upgrade, &state, at);
    if json {
        outln!(
            "{}",
            serde_json::json!({"events": &logged[..at as usize], "state": view})
        );
    } else {
        let mut timeline = Timeline::default();
        for entry in &logged[..at as usize] {
            if let Some(line) = timeline.line(entry) {
                outln!("{line}");
            }
        }
        outln!("--- state after event {at} of {} ---", events.len());
        // Ages as they were at that event, not as they are today.
        let at = view.updated_ms.unwrap_or_else(render::now_ms);
        out!("{}", render::status_block_at(&view, at));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the timeline of an upgrade read through the service (`baton dev`).
pub async fn print_timeline_via_service(
    client: &Client,
    _global: &Global,
    upgrade: &str,
) -> anyhow::Result<()> {
    let logged = fetch(client, upgrade).await?;
    let mut timeline = Timeline::default();
    for entry in &logged {
        if let Some(line) = timeline.line(entry) {
            outln!("{line}");
        }
    }
    let events = decode_all(&logged)?;
    report_verification(upgrade, &events, false).map(|_| ())
}

/// Runs [`core::verify`] on the events and prints the outcome; exit code 5
/// (as an error) on a divergence.
fn report_verification(upgrade: &str, events: &[Event], json: bool) -> anyhow::Result<ExitCode> {
    let divergence = divergence(events);
    if json {
        outln!(
            "{}",
            serde_json::json!({"upgrade": upgrade, "events": events.len(), "divergence": divergence})
        );
    } else if let Some(divergence) = &divergence {
        outln!("DIVERGENCE {divergence}");
    } else {
        outln!(
            "replay --verify: {} events; today's decide makes exactly the recorded decisions",
            events.len()
        );
    }
    match divergence {
        None => Ok(ExitCode::SUCCESS),
        Some(_) => Err(Exit::new(
            EXIT_VERIFY_FAILED,
            "the log and today's decide diverge (a log written by another version of Baton, or an altered one)",
        )
        .into()),
    }
}

/// Where today's `decide`, fed the recorded inputs, first departs from the
/// recorded decisions ([`core::verify`]), worded for people; `None`: nowhere.
pub fn divergence(events: &[Event]) -> Option<String> {
    core::verify(events).err().map(|mismatch| {
        format!(
            "at event {} ({}): {}",
            mismatch.index + 1,
            events.get(mismatch.index).map(kind).unwrap_or_default(),
            mismatch.message
        )
    })
}

/// Every event of an upgrade, from wherever the arguments say.
pub async fn load(
    global: &Global,
    upgrade: &str,
    db: &Option<PathBuf>,
    file: &Option<PathBuf>,
) -> anyhow::Result<Vec<LoggedEvent>> {
    if let Some(db) = db {
        return read_offline(&super::audit::open_offline(db)?, upgrade);
    }
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // A file whose chain does not verify is a failed verification (exit 5), not shown.
        store::verify_export(text.as_bytes()).map_err(|err| {
            Exit::new(
                EXIT_VERIFY_FAILED,
                format!("{} does not verify: {err}", file.display()),
            )
        })?;
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: LoggedEvent = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not an exported event", file.display(), i + 1))?;
            if entry.stream == upgrade {
                out.push(entry);
            }
        }
        return Ok(out);
    }
    let client = Client::connect(global).await?;
    fetch(&client, upgrade).await
}

/// Every event of an upgrade, read from a log opened offline (`--db`).
pub fn read_offline(store: &store::Store, upgrade: &str) -> anyhow::Result<Vec<LoggedEvent>> {
    let stream: store::StreamId = upgrade
        .parse()
        .map_err(|_| anyhow::anyhow!("`{upgrade}` is not an upgrade id (a ULID)"))?;
    let mut out = Vec::new();
    for record in store.read(stream, 1)? {
        let record = record?;
        out.push(LoggedEvent {
            stream: upgrade.to_string(),
            seq: record.seq,
            prev: hex::encode(record.prev_hash),
            hash: hex::encode(record.hash),
            event: serde_json::value::RawValue::from_string(String::from_utf8(record.bytes)?)?,
        });
    }
    Ok(out)
}

/// Every event of an upgrade, through the service's `events` API.
pub async fn fetch(client: &Client, upgrade: &str) -> anyhow::Result<Vec<LoggedEvent>> {
    let mut out = Vec::new();
    let mut from_seq = 1;
    loop {
        let page: EventsPage = client
            .call(
                "events",
                &EventsRequest {
                    upgrade: upgrade.to_string(),
                    from_seq,
                    limit: 500,
                },
            )
            .await?;
        out.extend(page.events);
        match page.next_seq {
            Some(next) => from_seq = next,
            None => return Ok(out),
        }
    }
}

pub fn decode_all(logged: &[LoggedEvent]) -> anyhow::Result<Vec<Event>> {
    logged
        .iter()
        .map(|entry| {
            serde_json::from_str(entry.event.get())
                .with_context(|| format!("event {} does not decode as a Baton event", entry.seq))
        })
        .collect()
}

fn kind(event: &Event) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".into())
}
