//! The operator's commands that talk to the workflow service: submit, plan,
//! watch, status, list, pause, resume, abort, approve, resolve.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use workflow::service::api::{
    EventsPage, EventsRequest, ExecutorView, ExecutorsRequest, ListPage, ListRequest,
    OperatorRequest, StatusView, SubmitRequest, UpgradeRef, UpgradeSummary,
};

use crate::client::{Class, Client, Exit, EXIT_UPGRADE_FAILED};
use crate::render::{self, Timeline};
use crate::{Command, Global, Output};

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The cluster file (TOML).
    #[arg(long, value_parser = crate::args::readable_file)]
    pub cluster: PathBuf,
    /// Path of the package on the nodes (overrides the cluster file's).
    #[arg(long)]
    pub package: Option<String>,
    /// Target version (default: the version the package file names).
    #[arg(long)]
    pub target_version: Option<String>,
    /// Wait for approval before this gate (before-switchover, after-first-follower); repeatable.
    #[arg(long)]
    pub approve_before: Vec<String>,
    /// Refuse to start unless the live plan has this hash (from `baton plan`: 64 hex digits).
    #[arg(long, value_parser = parse_plan_hash)]
    pub plan_hash: Option<String>,
    /// Return once submitted instead of following the upgrade.
    #[arg(long)]
    pub detach: bool,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The cluster file (TOML).
    #[arg(long, value_parser = crate::args::readable_file)]
    pub cluster: PathBuf,
    /// Path of the package on the nodes (overrides the cluster file's).
    #[arg(long)]
    pub package: Option<String>,
    /// Target version (default: the version the package file names).
    #[arg(long)]
    pub target_version: Option<String>,
    /// Plan with an approval wait before this gate, as `submit --approve-before` will (gates are part of the
    /// plan and its hash); repeatable.
    #[arg(long)]
    pub approve_before: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct UpgradeArg {
    /// The upgrade id (a ULID, as `submit` and `list` print it).
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
}

#[derive(clap::Args, Debug)]
pub struct ReasonArgs {
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// Why (recorded in the log).
    #[arg(long, default_value = "")]
    pub reason: String,
}

#[derive(clap::Args, Debug)]
pub struct AbortArgs {
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// Why (recorded in the log).
    #[arg(long)]
    pub reason: String,
}

#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// The gate (`baton status` names the one the upgrade waits at).
    #[arg(value_parser = ["before-switchover", "after-first-follower"])]
    pub gate: String,
}

#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    #[arg(value_parser = crate::args::upgrade_id)]
    pub upgrade: String,
    /// The step that needs verification.
    pub step: u64,
    /// What the operator found: succeeded, failed or retry.
    #[arg(long = "as", value_parser = ["succeeded", "failed", "retry"])]
    pub resolution: String,
    /// Why (recorded in the log).
    #[arg(long)]
    pub why: String,
}

pub fn run(global: Global, command: Command) -> anyhow::Result<ExitCode> {
    super::runtime()?.block_on(async move {
        let client = Client::connect(&global).await?;
        match command {
            Command::Submit(args) => submit(&client, &global, args).await,
            Command::Plan(args) => plan(&client, &global, args).await,
            Command::Watch(args) => follow(&client, &global, &args.upgrade, false).await,
            Command::Status(args) => {
                let view = status(&client, &args.upgrade).await?;
                print_view(&global, &view)?;
                Ok(ExitCode::SUCCESS)
            }
            Command::List(args) => list(&client, &global, args).await,
            Command::Executors => executors(&client, &global).await,
            Command::Pause(args) => {
                operator(
                    &client,
                    &global,
                    "pause",
                    args.upgrade,
                    Some(args.reason),
                    None,
                )
                .await
            }
            Command::Resume(args) => {
                operator(&client, &global, "resume", args.upgrade, None, None).await
            }
            Command::Abort(args) => {
                operator(
                    &client,
                    &global,
                    "abort",
                    args.upgrade,
                    Some(args.reason),
                    None,
                )
                .await
            }
            Command::Approve(args) => {
                operator(
                    &client,
                    &global,
                    "approve",
                    args.upgrade,
                    None,
                    Some(args.gate),
                )
                .await
            }
            Command::Resolve(args) => {
                let request = OperatorRequest {
                    upgrade: args.upgrade,
                    by: String::new(), // the service records the name the trust file gives our key
                    reason: Some(args.why),
                    gate: None,
                    step: Some(args.step),
                    resolution: Some(args.resolution),
                };
                let view: StatusView = client.call("resolve", &request).await?;
                print_view(&global, &view)?;
                Ok(ExitCode::SUCCESS)
            }
            _ => unreachable!("dispatched in cmd::run"),
        }
    })
}

async fn submit(client: &Client, global: &Global, args: SubmitArgs) -> anyhow::Result<ExitCode> {
    let request = SubmitRequest {
        package: args.package.clone(),
        target_version: args.target_version.clone(),
        approve_before: args.approve_before.clone(),
        plan_hash: args.plan_hash.clone(),
        ..submit_request(&args.cluster)?
    };
    let reply: UpgradeRef = client.call("submit", &request).await?;
    if args.detach {
        if global.output == Output::Json {
            outln!("{}", serde_json::to_string(&reply)?);
        } else {
            outln!("{}", reply.upgrade);
        }
        return Ok(ExitCode::SUCCESS);
    }
    follow(client, global, &reply.upgrade, true).await
}

/// Watch until the upgrade ends; on Ctrl-C, say that the upgrade goes on in
/// the service and how to follow or stop it (exit 130).
async fn follow(
    client: &Client,
    global: &Global,
    upgrade: &str,
    submitted: bool,
) -> anyhow::Result<ExitCode> {
    // Installed before anything is printed, so a Ctrl-C right after "submitted" is ours.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // Under --output json stderr is for the JSON error only; the events on stdout name the upgrade.
    if submitted && global.output == Output::Text {
        eprintln!("submitted upgrade {upgrade}");
    }
    tokio::select! {
        view = watch(client, global, upgrade) => finished(&view?),
        _ = interrupt.recv() => {
            eprintln!(
                "\ninterrupted: only this watch stopped; upgrade {upgrade} goes on in the service.\n\
                 follow it again: baton watch {upgrade}\n\
                 stop it:         baton pause {upgrade} --reason R   or   baton abort {upgrade} --reason R"
            );
            Ok(ExitCode::from(130))
        }
    }
}

/// A plan hash as `baton plan` prints it: 64 lower-case hex digits (SHA-256).
fn parse_plan_hash(s: &str) -> Result<String, String> {
    let hash = s.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a plan hash: `baton plan` prints 64 hex digits"
        ));
    }
    Ok(hash)
}

/// Submits a cluster file as it is (used by `baton dev`); returns the upgrade id.
pub async fn submit_file(
    client: &Client,
    cluster: &Path,
    package: Option<String>,
) -> anyhow::Result<String> {
    let request = SubmitRequest {
        package,
        ..submit_request(cluster)?
    };
    let reply: UpgradeRef = client.call("submit", &request).await?;
    Ok(reply.upgrade)
}

fn submit_request(cluster: &Path) -> anyhow::Result<SubmitRequest> {
    let text = std::fs::read_to_string(cluster).map_err(|err| {
        Exit::of(
            Class::Usage,
            format!("cannot read the cluster file {}: {err}", cluster.display()),
        )
    })?;
    // A cluster file that names a profile file goes with that file's text; a cluster file that does not parse is
    // sent as it is, for the service to say where it is wrong.
    let profile_text =
        match workflow::core::ClusterFile::parse(&cluster.display().to_string(), &text) {
            Ok(parsed) => super::profile::profile_text_of(cluster, &parsed)?,
            Err(_) => None,
        };
    Ok(SubmitRequest {
        cluster_file: cluster.display().to_string(),
        cluster_toml: text,
        profile_text,
        package: None,
        target_version: None,
        approve_before: Vec::new(),
        plan_hash: None,
        plan_only: false,
        requested_by: String::new(), // the service records the name the trust file gives our key
    })
}

async fn plan(client: &Client, global: &Global, args: PlanArgs) -> anyhow::Result<ExitCode> {
    let request = SubmitRequest {
        package: args.package.clone(),
        target_version: args.target_version.clone(),
        approve_before: args.approve_before.clone(),
        plan_only: true,
        ..submit_request(&args.cluster)?
    };
    let reply: UpgradeRef = client.call("plan", &request).await?;
    let view = wait_terminal(client, &reply.upgrade).await?;
    let json = global.output == Output::Json;
    if json {
        outln!("{}", serde_json::to_string_pretty(&view)?);
    }
    match (&view.plan, &view.plan_hash) {
        (Some(_), Some(_)) if view.status == "planned" && json => Ok(ExitCode::SUCCESS),
        (Some(plan), Some(hash)) if view.status == "planned" => {
            let plan: workflow::core::Plan = serde_json::from_value(plan.clone())?;
            out!("{}", render::plan_block(&plan, hash));
            // The same options, or the plan (and its hash) differs.
            let mut same = String::new();
            if let Some(package) = &args.package {
                same.push_str(&format!(" --package {package}"));
            }
            if let Some(version) = &args.target_version {
                same.push_str(&format!(" --target-version {version}"));
            }
            for gate in &args.approve_before {
                same.push_str(&format!(" --approve-before {gate}"));
            }
            outln!(
                "submit exactly this plan with: baton submit --cluster {}{same} --plan-hash {hash}",
                args.cluster.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            if !json {
                out!("{}", render::status_block(&view));
            }
            Err(Exit::new(
                EXIT_UPGRADE_FAILED,
                format!(
                    "no plan: preflight {} ({})",
                    view.status,
                    crate::render::terminal_safe(&view.reason.unwrap_or_default())
                ),
            )
            .hint(format!("baton replay {}", view.upgrade))
            .into())
        }
    }
}

async fn operator(
    client: &Client,
    global: &Global,
    verb: &str,
    upgrade: String,
    reason: Option<String>,
    gate: Option<String>,
) -> anyhow::Result<ExitCode> {
    let request = OperatorRequest {
        upgrade,
        by: String::new(), // the service records the name the trust file gives our key
        reason,
        gate,
        step: None,
        resolution: None,
    };
    let view: StatusView = client.call(verb, &request).await?;
    print_view(global, &view)?;
    Ok(ExitCode::SUCCESS)
}

fn print_view(global: &Global, view: &StatusView) -> anyhow::Result<()> {
    if global.output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(view)?);
    } else {
        out!("{}", render::status_block(view));
    }
    Ok(())
}

/// Exit code for a finished upgrade: 0 if it completed (or planned), 4 otherwise.
fn finished(view: &StatusView) -> anyhow::Result<ExitCode> {
    match view.status.as_str() {
        "completed" | "planned" => Ok(ExitCode::SUCCESS),
        other => Err(Exit::new(
            EXIT_UPGRADE_FAILED,
            format!(
                "upgrade {} {other}: {}",
                view.upgrade,
                crate::render::terminal_safe(&view.reason.clone().unwrap_or_default())
            ),
        )
        .hint(format!("baton replay {}", view.upgrade))
        .into()),
    }
}

fn is_terminal(status: &str) -> bool {
    matches!(status, "completed" | "halted" | "aborted" | "planned")
}

/// Follows an upgrade from its first event until it ends (works mid-upgrade
/// and after the end). On a terminal (text output), a live display redrawn in
/// place: the status block with the per-node table, the current step with its
/// elapsed time and timeout, then the latest timeline lines. Otherwise the
/// timeline as appended lines, and the status block whenever the status
/// changes. Returns the final view.
pub async fn watch(client: &Client, global: &Global, upgrade: &str) -> anyhow::Result<StatusView> {
    let live =
        global.output == Output::Text && std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut screen = live.then(render::LiveScreen::new);
    let mut timeline = Timeline::default();
    let mut lines: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut next_seq = 1;
    let mut last_status = String::new();
    let mut away = false;
    loop {
        let request = EventsRequest {
            upgrade: upgrade.to_string(),
            from_seq: next_seq,
            limit: 500,
        };
        let page: EventsPage = reattaching(&mut away, || client.call("events", &request)).await?;
        for logged in &page.events {
            next_seq = logged.seq + 1;
            if global.output == Output::Json {
                outln!("{}", serde_json::to_string(logged)?);
            } else if let Some(line) = timeline.line(logged) {
                if screen.is_some() {
                    lines.push_back(line);
                    if lines.len() > render::LiveScreen::KEPT_LINES {
                        lines.pop_front();
                    }
                } else {
                    outln!("{line}");
                }
            }
        }
        if page.next_seq.is_some() {
            continue;
        }
        let view = reattaching(&mut away, || status(client, upgrade)).await?;
        let done = is_terminal(&view.status) && view.events < next_seq;
        if let Some(screen) = &mut screen {
            screen.draw(&view, lines.make_contiguous(), render::now_ms())?;
            if done {
                screen.finish()?;
            }
        } else if view.status != last_status {
            last_status = view.status.clone();
            if global.output == Output::Text {
                out!("{}", render::status_block(&view));
            }
        }
        if done {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Calls `call` until it answers: while the service does not answer (it
/// restarts, NATS is away), says so once and retries every second; a
/// rejection (exit code 3) is returned at once.
async fn reattaching<T, F, Fut>(away: &mut bool, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        match call().await {
            Ok(answer) => {
                if std::mem::take(away) {
                    eprintln!("the workflow service answers again; following on");
                }
                return Ok(answer);
            }
            Err(err) if crate::client::exit_code_of(&err) == crate::client::EXIT_REJECTED => {
                return Err(err)
            }
            Err(err) => {
                if !*away {
                    eprintln!(
                        "the workflow service does not answer ({err:#}); the upgrade goes on without this \
                         watch; retrying every second (Ctrl-C stops watching)"
                    );
                    *away = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Polls `status` until the upgrade ends.
async fn wait_terminal(client: &Client, upgrade: &str) -> anyhow::Result<StatusView> {
    loop {
        let view = status(client, upgrade).await?;
        if is_terminal(&view.status) {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service's view of one upgrade.
async fn status(client: &Client, upgrade: &str) -> anyhow::Result<StatusView> {
    client
        .call(
            "status",
            &UpgradeRef {
                upgrade: upgrade.to_string(),
            },
        )
        .await
}

/// Every upgrade in the log, page by page (`plans`: also `plan` runs).
pub async fn list_all(client: &Client, plans: bool) -> anyhow::Result<Vec<UpgradeSummary>> {
    list_filtered(
        client,
        ListRequest {
            include_plans: plans,
            ..ListRequest::default()
        },
    )
    .await
}

/// The upgrades `filter` keeps (the service filters), page by page.
pub async fn list_filtered(
    client: &Client,
    filter: ListRequest,
) -> anyhow::Result<Vec<UpgradeSummary>> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page: ListPage = client
            .call(
                "list",
                &ListRequest {
                    after: after.clone(),
                    limit: Some(500),
                    ..filter.clone()
                },
            )
            .await?;
        rows.extend(page.upgrades);
        match page.next_after {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            _ => return Ok(rows),
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Also list `baton plan` runs (apart, after the upgrades).
    #[arg(long)]
    pub plans: bool,
    /// Only upgrades of this cluster (its name in the cluster file).
    #[arg(long)]
    pub cluster: Option<String>,
    /// Only upgrades in these statuses, comma separated.
    #[arg(long, value_delimiter = ',',
          value_parser = clap::builder::PossibleValuesParser::new(workflow::service::api::STATUSES))]
    pub status: Vec<String>,
    /// Only upgrades still going at or after this time: a duration back from now
    /// (`2h`, `90m`, `1d 6h`) or an RFC 3339 time in UTC (`2026-11-29T08:00:00Z`).
    #[arg(long, value_parser = crate::history::parse_since)]
    pub since: Option<u64>,
}

/// `baton list`: the history, filtered by the service; a table with a header,
/// or the bounded rows as JSON.
async fn list(client: &Client, global: &Global, args: ListArgs) -> anyhow::Result<ExitCode> {
    let rows = list_filtered(
        client,
        ListRequest {
            include_plans: args.plans,
            cluster: args.cluster,
            status: args.status,
            since_ms: args.since,
            ..ListRequest::default()
        },
    )
    .await?;
    if global.output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        out!("{}", crate::history::list_text(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton executors`: who is online, from their signed presence records.
async fn executors(client: &Client, global: &Global) -> anyhow::Result<ExitCode> {
    let executors: Vec<ExecutorView> = client
        .call("executors", &ExecutorsRequest { detail: true })
        .await?;
    if global.output == Output::Json {
        outln!("{}", serde_json::to_string_pretty(&executors)?);
    } else {
        out!("{}", crate::history::executors_text(&executors));
    }
    Ok(ExitCode::SUCCESS)
}

/// Executor groups with a live executor, as the service sees them.
pub async fn executors_online(client: &Client) -> anyhow::Result<Vec<String>> {
    client.call("executors", &ExecutorsRequest::default()).await
}
