//! `baton profile check`: validate a profile file and, on request, run its probes and show what they parsed.
//!
//! Validation alone needs nothing but the file. With `--cluster FILE --run-here`, every probe runs on this
//! machine for every node of the cluster file (argv rendered with the node's address and vars, never a shell
//! string), the way a local executor would run it, and the parsed observation (or the parse error with the
//! output) is printed. That is how a new profile is tried against a live cluster before any upgrade.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use executor::runner::http;
use executor::runner::local::{self, Stdin};
use serde::Serialize;
use workflow::core::cluster::{ClusterFile, NodeSpec};
use workflow::core::profile_file::{
    parse_failover, parse_node, parse_topology, parse_version, render_argv, Parser, Placeholders,
    ProbeDef, ProfileFile,
};

use crate::client::{Exit, EXIT_USAGE, EXIT_VERIFY_FAILED};
use crate::Output;

#[derive(clap::Subcommand, Debug)]
pub enum ProfileCommand {
    /// Validate a profile file (errors name the line and key); with --cluster and --run-here, also run its
    /// probes on this machine for every node and print what they parsed (exit 5 if any did not).
    Check {
        /// The profile file (TOML, docs/profiles.md).
        file: PathBuf,
        /// A cluster file whose nodes (addresses, vars) the probes are rendered for.
        #[arg(long)]
        cluster: Option<PathBuf>,
        /// Run the probes here, as a local executor would (the nodes' commands must work from this machine).
        #[arg(long, requires = "cluster")]
        run_here: bool,
        /// `{package}` for the package probe (default: the cluster file's `upgrade.package`).
        #[arg(long)]
        package: Option<String>,
        /// The executors' `--max-output`: a probe whose output is longer fails here, because an executor would
        /// send only its last bytes.
        #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u64).range(1..=executor::MAX_OUTPUT as u64))]
        max_output: u64,
    },
}

pub fn run(output: Output, command: ProfileCommand) -> anyhow::Result<ExitCode> {
    let ProfileCommand::Check {
        file,
        cluster,
        run_here,
        package,
        max_output,
    } = command;
    let profile = load_profile(&file)?;
    let cluster = cluster.as_deref().map(load_cluster).transpose()?;
    let mut report = Report {
        profile: file.display().to_string(),
        name: profile.name.clone(),
        description: profile.description.clone(),
        follower: profile.procedure.follower.clone(),
        leader: profile.procedure.leader.clone(),
        switchover: profile.procedure.switchover.clone(),
        failover_fence: profile.procedure.failover_fence,
        switchover_keeps_fence: profile.procedure.switchover_keeps_fence,
        election_ms: profile.procedure.election_ms,
        quorum: profile.procedure.quorum,
        probes: Vec::new(),
    };
    if let (Some(cluster), true) = (&cluster, run_here) {
        let package = package
            .or_else(|| cluster.upgrade.package.clone())
            .unwrap_or_default();
        let rt = super::runtime()?;
        report.probes = rt.block_on(run_probes(&profile, cluster, &package, max_output as usize));
    }
    let failed = report.probes.iter().filter(|p| p.error.is_some()).count();
    match output {
        Output::Json => outln!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print_text(&report, cluster.is_some() && run_here),
    }
    if failed > 0 {
        return Err(Exit::new(
            EXIT_VERIFY_FAILED,
            format!(
                "{failed} of {} probes did not give an observation",
                report.probes.len()
            ),
        )
        .into());
    }
    Ok(ExitCode::SUCCESS)
}

fn load_profile(path: &Path) -> anyhow::Result<ProfileFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Exit::new(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?;
    ProfileFile::parse(&path.display().to_string(), &text)
        .map_err(|e| Exit::new(EXIT_USAGE, e.to_string()).into())
}

fn load_cluster(path: &Path) -> anyhow::Result<ClusterFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Exit::new(EXIT_USAGE, format!("cannot read {}: {e}", path.display())))?;
    ClusterFile::parse(&path.display().to_string(), &text)
        .map_err(|e| Exit::new(EXIT_USAGE, e.to_string()).into())
}

#[derive(Debug, Serialize)]
struct Report {
    profile: String,
    name: String,
    description: String,
    follower: Vec<String>,
    leader: Vec<String>,
    switchover: String,
    failover_fence: bool,
    switchover_keeps_fence: bool,
    election_ms: u64,
    quorum: workflow::core::profile_file::Quorum,
    probes: Vec<ProbeRun>,
}

/// One probe run on one node.
#[derive(Debug, Serialize)]
struct ProbeRun {
    probe: &'static str,
    node: String,
    argv: Vec<String>,
    exit_code: Option<i32>,
    /// The parsed observation.
    #[serde(skip_serializing_if = "Option::is_none")]
    observed: Option<serde_json::Value>,
    /// Why there is none: the command failed, or its output did not parse.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

async fn run_probes(
    profile: &ProfileFile,
    cluster: &ClusterFile,
    package: &str,
    max_output: usize,
) -> Vec<ProbeRun> {
    let probes = &profile.probes;
    let mut plan: Vec<(&'static str, &ProbeDef, &NodeSpec)> = Vec::new();
    // The topology from every node: each must tell the same story (a node that disagrees is worth seeing).
    for node in &cluster.nodes {
        plan.push(("topology", &probes.topology, node));
    }
    for node in &cluster.nodes {
        plan.push(("node", &probes.node, node));
        plan.push(("version", &probes.version, node));
        if let Some(p) = &probes.running_version {
            plan.push(("running_version", p, node));
        }
        if let (Some(p), false) = (&probes.package, package.is_empty()) {
            plan.push(("package", p, node));
        }
        if let Some(p) = &probes.failover {
            plan.push(("failover", p, node));
        }
    }
    let mut out = Vec::with_capacity(plan.len());
    for (probe, def, node) in plan {
        out.push(run_probe(probe, def, node, cluster, package, max_output).await);
    }
    out
}

async fn run_probe(
    probe: &'static str,
    def: &ProbeDef,
    node: &NodeSpec,
    cluster: &ClusterFile,
    package: &str,
    max_output: usize,
) -> ProbeRun {
    let mut run = ProbeRun {
        probe,
        node: node.name.clone(),
        argv: Vec::new(),
        exit_code: None,
        observed: None,
        error: None,
    };
    let placeholders = Placeholders {
        node,
        package,
        version: cluster.upgrade.target_version.as_deref().unwrap_or(""),
        target: None,
    };
    match render_argv(&def.argv, &placeholders) {
        Ok(argv) => run.argv = argv,
        Err(e) => {
            run.error = Some(e.to_string());
            return run;
        }
    }
    let timeout = Duration::from_millis(def.timeout_ms);
    // More than an executor keeps, to tell a longer output (4: a tail may start past a cut character).
    let keep = max_output + 4;
    // An HTTP probe by its template, never by what a var rendered.
    let ran = if def.argv.first().is_some_and(|p| http::is_http_program(p)) {
        // An HTTP probe, answered here as the executor answers it (no process).
        http::run(&run.argv, timeout, keep).await
    } else {
        local::run(&run.argv, &BTreeMap::new(), timeout, keep, Stdin::Null).await
    };
    run.exit_code = ran.exit_code;
    // Output is read when the command ran to its end with an exit code the profile reads (`read_exit_codes`).
    let readable = ran
        .exit_code
        .is_some_and(|c| def.read_exit_codes.contains(&c));
    if !readable {
        run.error = Some(format!(
            "{} (exit code {}): {}",
            ran.reason.as_deref().unwrap_or("the command failed"),
            ran.exit_code.map_or("none".to_string(), |c| c.to_string()),
            tail(&format!("{}{}", ran.stdout_tail, ran.stderr_tail))
        ));
        return run;
    }
    if ran.stdout_tail.len() > max_output {
        run.error = Some(format!(
            "its output is longer than {max_output} bytes, the most an executor with --max-output {max_output} \
             sends (it keeps the last bytes): raise the executors' --max-output or make the probe print less"
        ));
        return run;
    }
    let parsed = match probe {
        "topology" => parse_topology(def, &ran.stdout_tail, &cluster.nodes)
            .map(|t| serde_json::to_value(t).unwrap_or_default()),
        "node" => {
            parse_node(def, &ran.stdout_tail).map(|h| serde_json::to_value(h).unwrap_or_default())
        }
        "failover" => parse_failover(def, &ran.stdout_tail)
            .map(|blocked| serde_json::json!({ "blocked": blocked })),
        _ => parse_version(def, &ran.stdout_tail).map(serde_json::Value::String),
    };
    match parsed {
        Ok(v) => run.observed = Some(v),
        Err(e) => {
            let format = match def.parse {
                Parser::Json(_) => "json",
                Parser::Regex { .. } => "regex",
                Parser::Builtin { .. } => "built-in",
            };
            run.error = Some(format!(
                "{e} ({format} parser; output: {})",
                tail(&ran.stdout_tail)
            ))
        }
    }
    run
}

/// The last 400 characters of `text`, on one line.
fn tail(text: &str) -> String {
    let one_line = text.trim().replace('\n', " | ");
    let chars: Vec<char> = one_line.chars().collect();
    let start = chars.len().saturating_sub(400);
    let kept: String = chars[start..].iter().collect();
    if start > 0 {
        format!("...{kept}")
    } else {
        kept
    }
}

fn print_text(report: &Report, ran: bool) {
    outln!("{}: profile `{}` is valid", report.profile, report.name);
    if !report.description.is_empty() {
        outln!("  {}", report.description);
    }
    outln!("  each follower:  {}", report.follower.join(" -> "));
    outln!("  switchover:     {} (on the leader)", report.switchover);
    outln!("  the old leader: {}", report.leader.join(" -> "));
    outln!(
        "  failover fence: {}",
        match (report.failover_fence, report.switchover_keeps_fence) {
            (true, true) =>
                "block_failover before, unblock_failover after (kept up across the switchover)",
            (true, false) => {
                "block_failover before, unblock_failover after (lifted for the switchover, set again after)"
            }
            (false, _) => "none (the system has no automatic-failover setting)",
        }
    );
    outln!(
        "  no leader:      {} ms of it while fenced is an emergency (unless the cluster file sets election_window_ms)",
        report.election_ms
    );
    outln!(
        "  quorum:         {}",
        match report.quorum {
            workflow::core::profile_file::Quorum::Majority => {
                "majority (the members are the consensus: at least 3 members)"
            }
            workflow::core::profile_file::Quorum::External => {
                "external (the consensus lives elsewhere: 2 members can roll)"
            }
        }
    );
    if !ran {
        outln!("(probes not run: give --cluster FILE --run-here to run them on this machine)");
        return;
    }
    for p in &report.probes {
        match (&p.observed, &p.error) {
            (Some(v), _) => outln!("ok    {:<16} {:<12} {}", p.probe, p.node, v),
            (None, Some(e)) => outln!(
                "FAIL  {:<16} {:<12} {} -- argv {:?}",
                p.probe,
                p.node,
                e,
                p.argv
            ),
            (None, None) => {}
        }
    }
}

/// The text of the profile file a cluster file names, read relative to the cluster file's directory (an
/// absolute `profile` is read as it is); `None` for a built-in profile. `baton submit`, `baton plan` and `baton
/// executor --cluster` send or load exactly this text, so the service, the log and the executors see the same
/// profile. Errors name both paths.
pub(crate) fn profile_text_of(
    cluster_path: &Path,
    cluster: &ClusterFile,
) -> anyhow::Result<Option<String>> {
    use std::io::Read as _;
    use workflow::core::profile_file::MAX_PROFILE_FILE_BYTES;
    if !cluster.profile_is_file() {
        return Ok(None);
    }
    let path = profile_path(cluster_path, &cluster.profile);
    let read = |path: &Path| -> std::io::Result<String> {
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(MAX_PROFILE_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)?;
        Ok(text)
    };
    let text = read(&path).map_err(|e| {
        Exit::new(
            EXIT_USAGE,
            format!(
                "cannot read profile file {} (named by `profile = \"{}\"` in cluster file {}, read relative to \
                 its directory): {e}",
                path.display(),
                cluster.profile,
                cluster_path.display()
            ),
        )
    })?;
    if text.len() > MAX_PROFILE_FILE_BYTES {
        return Err(Exit::new(
            EXIT_USAGE,
            format!(
                "profile file {} (named by cluster file {}) is larger than {MAX_PROFILE_FILE_BYTES} bytes, the \
                 limit of a profile file",
                path.display(),
                cluster_path.display()
            ),
        )
        .into());
    }
    Ok(Some(text))
}

/// Where a cluster file's `profile` is: relative to the cluster file's directory, unless absolute.
pub(crate) fn profile_path(cluster_path: &Path, profile: &str) -> PathBuf {
    let profile = Path::new(profile);
    if profile.is_absolute() {
        return profile.to_path_buf();
    }
    cluster_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join(profile)
}

#[cfg(test)]
mod tests {
    use super::tail;

    #[test]
    fn a_tail_is_one_line_and_keeps_the_end() {
        assert_eq!(tail("a\nb\n"), "a | b");
        let long = format!("{}END", "x".repeat(1000));
        let t = tail(&long);
        assert!(
            t.starts_with("...") && t.ends_with("END") && t.chars().count() == 403,
            "{t}"
        );
    }
}
