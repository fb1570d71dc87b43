//! `baton-sim`: create a simulated chef-backend cluster, inject faults, read its report, and act as a
//! node's `chef-backend-ctl` / `dpkg` / `dpkg-query` / `dpkg-deb` / `yum` / `rpm`.
//!
//! `BATON_SIM_ACTOR` names who acts (journalled with every command and the changes it causes): node
//! tools default to `orchestrator`, `crash` / `restart` / `fault` to `environment`.
//!
//! Acting as a tool: `baton-sim --dir D --node X --as TOOL ARGS...` (what the per-node bin wrappers run),
//! or invoked under a tool's name with `BATON_SIM_DIR` and `BATON_SIM_NODE` set.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sim::cli::{Cli, Cmd};
use sim::{Fault, Sim, Timings};

const ALL_FAULTS: [Fault; 7] = [
    Fault::SyncNever,
    Fault::StartFails,
    Fault::InstallFails,
    Fault::DemoteTimesOut,
    Fault::ElectionElectsNobody,
    Fault::StatusHangs(0),
    Fault::Latency(0),
];

fn parse_fault_spec(spec: &str) -> Result<(String, Fault)> {
    let (node, kind) = spec
        .split_once(':')
        .with_context(|| format!("--fault {spec:?}: expected NODE:KIND[=ARG]"))?;
    let (kind, arg) = match kind.split_once('=') {
        Some((k, a)) => (k, Some(a)),
        None => (kind, None),
    };
    let fault = Fault::parse(kind, arg)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("--fault {spec:?}"))?;
    Ok((node.to_string(), fault))
}

fn print(out: &sim::Output) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c.clamp(0, 255)).unwrap_or(1))
}

/// `BATON_SIM_ACTOR`, or `default` when unset or empty.
fn actor(default: &str) -> String {
    std::env::var("BATON_SIM_ACTOR")
        .ok()
        .filter(|a| !a.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn act(dir: PathBuf, node: &str, tool: &str, args: &[String]) -> Result<ExitCode> {
    let sim = Sim::open(&dir)?.with_actor(actor(sim::ORCHESTRATOR));
    let out = sim::run(&sim, node, tool, args)?;
    print(&out);
    Ok(code(out.code))
}

/// `--dir D --node X --as TOOL ARGS...` (the wrappers' form), if that is how we were called.
fn tool_mode(args: &[String]) -> Result<Option<ExitCode>> {
    let argv0 = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_string())
        .unwrap_or_default();
    if sim::store::TOOLS.contains(&argv0.as_str()) {
        let dir = std::env::var("BATON_SIM_DIR")
            .context("invoked as a node tool: BATON_SIM_DIR is not set")?;
        let node = std::env::var("BATON_SIM_NODE")
            .context("invoked as a node tool: BATON_SIM_NODE is not set")?;
        return act(dir.into(), &node, &argv0, &args[1..]).map(Some);
    }
    if !matches!(
        args.get(1).map(|s| s.as_str()),
        Some("--dir" | "--node" | "--as")
    ) {
        return Ok(None);
    }
    let (mut dir, mut node, mut tool) = (None, None, None);
    let mut k = 1;
    while tool.is_none() {
        let (Some(flag), Some(value)) = (args.get(k), args.get(k + 1)) else {
            bail!("usage: baton-sim --dir D --node X --as TOOL [ARGS...]");
        };
        match flag.as_str() {
            "--dir" => dir = Some(PathBuf::from(value)),
            "--node" => node = Some(value.clone()),
            "--as" => tool = Some(value.clone()),
            other => {
                bail!("unexpected {other:?}; usage: baton-sim --dir D --node X --as TOOL [ARGS...]")
            }
        }
        k += 2;
    }
    let (Some(dir), Some(node), Some(tool)) = (dir, node, tool) else {
        bail!("usage: baton-sim --dir D --node X --as TOOL [ARGS...] (--dir and --node come before --as)");
    };
    act(dir, &node, &tool, &args[k..]).map(Some)
}

fn main_inner() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(c) = tool_mode(&args)? {
        return Ok(c);
    }
    match Cli::parse().cmd {
        Cmd::Init {
            dir,
            nodes,
            version,
            sync_ms,
            election_ms,
            demote_timeout_ms,
            upgrade_timeout_ms,
            start_ms,
            leaderless_tolerance_ms,
            faults,
            if_absent,
        } => {
            let faults = faults
                .iter()
                .map(|s| parse_fault_spec(s))
                .collect::<Result<Vec<_>>>()?;
            let timings = Timings {
                sync_ms,
                election_ms,
                demote_timeout_ms,
                upgrade_timeout_ms,
                start_ms,
                leaderless_tolerance_ms,
            };
            let exe = std::env::current_exe().context("locating the baton-sim binary")?;
            let sim = match Sim::init(&dir, nodes, &version, timings, &faults, &exe) {
                Err(sim::Error::Exists(dir)) if if_absent => {
                    println!(
                        "{} already holds a simulated cluster: left as it is.",
                        dir.display()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                other => other?,
            };
            println!("Created a {nodes}-node chef-backend cluster at {} (version {version}, leader backend-1, failover on).", sim.dir().display());
            println!(
                "Act as a node:  PATH={}:$PATH chef-backend-ctl status",
                sim.bin_dir("backend-1").display()
            );
            println!(
                "Read the verdict: baton-sim report --dir {}",
                sim.dir().display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Fault {
            dir,
            node,
            clear,
            kind,
            arg,
        } => {
            let sim = Sim::open(&dir)?.with_actor(actor(sim::ENVIRONMENT));
            if kind == "all" {
                if !clear {
                    bail!("`all` only makes sense with --clear");
                }
                for f in ALL_FAULTS {
                    sim.set_fault(&node, f, false)?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            // Clearing needs no argument; parse with a placeholder so `--clear status-hang` works.
            let arg = if clear && arg.is_none() {
                Some("0".to_string())
            } else {
                arg
            };
            let fault = Fault::parse(&kind, arg.as_deref()).map_err(anyhow::Error::msg)?;
            sim.set_fault(&node, fault, !clear)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Crash { dir, node } => {
            let out = Sim::open(&dir)?
                .with_actor(actor(sim::ENVIRONMENT))
                .crash(&node)?;
            print(&out);
            Ok(code(out.code))
        }
        Cmd::Restart { dir, node } => {
            let out = Sim::open(&dir)?
                .with_actor(actor(sim::ENVIRONMENT))
                .restart(&node)?;
            print(&out);
            Ok(code(out.code))
        }
        Cmd::Report { dir, json } => {
            let report = Sim::open(&dir)?.report()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(if report.verdict == sim::Verdict::Safe {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Cmd::State { dir } => {
            println!(
                "{}",
                serde_json::to_string_pretty(&Sim::open(&dir)?.state()?)?
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match main_inner() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("baton-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}
