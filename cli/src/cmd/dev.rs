//! `baton dev`: the demo in one command. Starts a local nats-server (the
//! pinned one), the workflow service, a simulated chef-backend cluster and one
//! executor per node, all in a temp dir; submits an upgrade and shows it live;
//! then prints the replayed timeline, the audit verification and the
//! simulator's report. Every child runs in its own process group and is
//! stopped on exit, error or Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use protocol::natsconf;
use protocol::sign::{Role, Trust};

use crate::client::{Client, Exit, EXIT_UPGRADE_FAILED, EXIT_VERIFY_FAILED};
use crate::cmd::ops;
use crate::procs::{self, Children};
use crate::Global;

#[derive(clap::Args, Clone, Debug)]
pub struct DevArgs {
    /// Nodes in the simulated cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Version the simulated cluster runs before the upgrade.
    #[arg(long, default_value = "3.0.0-1")]
    pub from_version: String,
    /// Version of the package to upgrade to.
    #[arg(long, default_value = "3.1.0-1")]
    pub to_version: String,
    /// Use the newer `chef-backend-ctl upgrade` procedure instead of the runbook's.
    #[arg(long)]
    pub upgrade_command: bool,
    /// Keep the temp dir (logs, log db, simulator journal) and print its path.
    #[arg(long)]
    pub keep: bool,
    /// Work in this directory instead of a new temp dir (it is created).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Start everything but submit nothing: write `env.sh` (the settings an
    /// operator's shell needs) and the cluster file into the directory, and
    /// keep running until Ctrl-C, so you can plan, submit, approve, pause and
    /// abort upgrades yourself (docs/walkthrough.md).
    #[arg(long)]
    pub serve: bool,
    /// Also write the upgrade's HTML timeline here (what `baton report` writes), once it has ended
    /// (nothing with --serve, which submits nothing).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(global: Global, args: DevArgs) -> anyhow::Result<ExitCode> {
    if global.nats != crate::DEFAULT_NATS_URL {
        // The demo's nats-server is its own (TLS, least privilege, a free port): say so rather than
        // silently connect elsewhere than asked.
        eprintln!(
            "baton dev: starts its own nats-server on a free loopback port; --nats / BATON_NATS_URL ({}) is not used",
            global.nats_config().map(|c| c.redacted_url()).unwrap_or_default()
        );
    }
    let temp = tempfile::Builder::new().prefix("baton-dev-").tempdir()?;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            // Children (the executors' state dirs) need absolute paths.
            std::path::absolute(dir)?
        }
        None => temp.path().to_path_buf(),
    };
    let mut children = Children::default();
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        // The children have process groups of their own, so no signal of the
        // terminal reaches them: every way of stopping this process (Ctrl-C,
        // `kill`, the terminal closing) must go through `stop_all` below.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let stopped = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
                _ = hangup.recv() => "SIGHUP",
            }
        };
        tokio::select! {
            result = demo(&global, &args, &dir, &mut children) => result,
            why = stopped => if args.serve {
                eprintln!("baton dev: {why}: stopping everything");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(anyhow::anyhow!("interrupted ({why}): stopping everything"))
            },
        }
    });
    children.stop_all(Duration::from_secs(5));
    if args.keep || args.dir.is_some() {
        let kept = temp.keep();
        let shown = args.dir.clone().unwrap_or(kept);
        eprintln!("baton dev: files kept in {}", shown.display());
    }
    outcome
}

async fn demo(
    global: &Global,
    args: &DevArgs,
    dir: &Path,
    children: &mut Children,
) -> anyhow::Result<ExitCode> {
    // The logs hold argv, output tails and operator names: the owner's only.
    let logs = dir.join("logs");
    crate::cmd::keys::create_private_dir(&logs)?;
    let baton = std::env::current_exe()?;
    let sim = procs::sibling_binary("baton-sim")?;

    // 1. Keys for every process, the trust file, TLS files, and NATS with
    //    JetStream on a free loopback port, configured from the trust file:
    //    authentication, TLS and least-privilege permissions on, as in production.
    let nodes: Vec<String> = (1..=args.nodes).map(|i| format!("backend-{i}")).collect();
    let keys = dir.join("keys");
    // The operator is the person running the demo, as the user database names them.
    let operator = crate::identity::login_name();
    let trust_path = crate::cmd::keys::init(&keys, &nodes, &[(operator.clone(), Role::Approver)])?;
    let trust = Trust::load(&trust_path)?;
    let tls_dir = dir.join("tls");
    crate::cmd::keys::create_private_dir(&tls_dir)?;
    let tls = protocol::devtls::make(&tls_dir, &[])?;
    let nats_bin = procs::nats_server_binary()?;
    let port = procs::free_port()?;
    let nats_url = format!("nats://127.0.0.1:{port}");
    let conf = dir.join("nats-server.conf");
    std::fs::write(
        &conf,
        natsconf::render(
            &trust,
            &natsconf::ServerOptions {
                host: "127.0.0.1".into(),
                port,
                store_dir: dir.join("nats"),
                tls: Some(tls.server.clone()),
                monitor_port: None,
            },
        ),
    )?;
    let mut cmd = Command::new(&nats_bin);
    cmd.arg("-c").arg(&conf);
    children.spawn("nats-server", cmd, &logs.join("nats-server.log"))?;
    // What makes a process use `key` for signing and for NATS (nkey, TLS).
    let security = |key: &Path| -> Vec<(&'static str, PathBuf)> {
        vec![
            ("BATON_KEY", key.to_path_buf()),
            ("BATON_TRUST", trust_path.clone()),
            ("BATON_NATS_NKEY", key.to_path_buf()),
            ("BATON_NATS_CA", tls.server.ca.clone()),
            ("BATON_NATS_CERT", tls.client_cert.clone()),
            ("BATON_NATS_CERT_KEY", tls.client_key.clone()),
        ]
    };
    let operator_key = keys.join(format!("operator-{operator}.seed"));
    let global = Global {
        nats: nats_url.clone(),
        key: Some(operator_key.clone()),
        trust: Some(trust_path.clone()),
        auth: crate::NatsAuth {
            nats_nkey: Some(operator_key.clone()),
            nats_ca: Some(tls.server.ca.clone()),
            nats_cert: Some(tls.client_cert.clone()),
            nats_cert_key: Some(tls.client_key.clone()),
            nats_tls: true,
            ..crate::NatsAuth::default()
        },
        ..global.clone()
    };
    wait_for_nats(&global, children).await?;
    say(&format!(
        "nats-server {} on {nats_url} (TLS, nkey users with least-privilege permissions: {})",
        nats_bin.display(),
        conf.display()
    ));
    say(&format!(
        "keys and trust file in {} (service, one executor per node, operator `{operator}`)",
        keys.display()
    ));

    // 2. The simulated cluster and the package "copied to every node".
    let sim_dir = dir.join("sim");
    let status = Command::new(&sim)
        .args(["init", "--dir"])
        .arg(&sim_dir)
        .args([
            "--nodes",
            &args.nodes.to_string(),
            "--version",
            &args.from_version,
        ])
        .status()
        .context("running baton-sim init")?;
    if !status.success() {
        bail!("baton-sim init failed ({status})");
    }
    let package = dir.join(format!("chef-backend_{}_amd64.deb", args.to_version));
    std::fs::write(&package, b"simulated chef-backend package\n")?;
    let cluster_file = dir.join("cluster.toml");
    std::fs::write(
        &cluster_file,
        cluster_toml(&nodes, &package, args.upgrade_command),
    )?;
    say(&format!(
        "simulated {}-node chef-backend cluster at {} (version {})",
        args.nodes,
        sim_dir.display(),
        args.from_version
    ));

    // 3. The workflow service and one executor per node, each with an empty config
    // file: on a host where the package is installed, /etc/baton/*.toml (the
    // default) is the production one, not the demo's.
    let no_config = dir.join("empty.toml");
    std::fs::write(&no_config, "")
        .with_context(|| format!("could not write {}", no_config.display()))?;
    let mut cmd = Command::new(&baton);
    cmd.arg("server")
        .arg("--config")
        .arg(&no_config)
        .arg("--db")
        .arg(dir.join("baton.db"))
        .args(["--nats", &nats_url])
        .envs(security(&keys.join("service.seed")));
    children.spawn("workflow service", cmd, &logs.join("server.log"))?;
    let path = std::env::var("PATH").unwrap_or_default();
    for node in &nodes {
        let mut cmd = Command::new(&baton);
        cmd.args([
            "executor", "--group", node, "--nodes", node, "--nats", &nats_url,
        ])
        .arg("--config")
        .arg(&no_config)
        .args([
            "--procedure",
            if args.upgrade_command {
                "upgrade-command"
            } else {
                "runbook"
            },
        ])
        .arg("--state-dir")
        .arg(dir.join("executors").join(node))
        .envs(security(&keys.join(format!("executor-{node}.seed"))))
        .env(
            "PATH",
            format!(
                "{}:{path}",
                sim_dir.join("nodes").join(node).join("bin").display()
            ),
        );
        children.spawn(
            &format!("executor {node}"),
            cmd,
            &logs.join(format!("executor-{node}.log")),
        )?;
    }
    let client = Client::connect(&global).await?;
    wait_for_service_and_executors(&client, &nodes, children).await?;
    say(&format!(
        "workflow service and {} executors are up",
        nodes.len()
    ));

    if args.serve {
        return serve(dir, &global, &cluster_file, &sim_dir, children).await;
    }

    // 4. The upgrade, live.
    let started = Instant::now();
    let upgrade = ops::submit_file(&client, &cluster_file, None).await?;
    say(&format!("submitted upgrade {upgrade}"));
    let view = ops::watch(&client, &global, &upgrade).await?;
    let wall = started.elapsed();
    say(&format!(
        "upgrade {upgrade} {} in {:.1} s",
        view.status,
        wall.as_secs_f64()
    ));

    // 5. What anybody can check afterwards.
    say("replayed timeline (from the log, through the service)");
    crate::cmd::replay::print_timeline_via_service(&client, &global, &upgrade).await?;
    say("audit verification");
    let verified = crate::cmd::audit::verify_via_service(&client, &global, None).await?;
    say("simulator's report (computed from its journal, not from Baton)");
    let report = sim_report(&sim, &sim_dir)?;
    out!("{}", report.render());
    let safe = report.verdict == sim::Verdict::Safe;
    let mut drawn_ok = true;
    if let Some(out) = &args.report {
        let report_args = crate::cmd::report::ReportArgs {
            upgrade: upgrade.clone(),
            out: out.clone(),
            db: None,
            file: None,
            anchor: None,
        };
        let drawn = crate::cmd::report::fetch_via_service(&client, &upgrade).await?;
        let summary = crate::cmd::report::draw(&global, &report_args, drawn)?;
        say(&summary.line(&report_args));
        drawn_ok = summary.verified;
    }

    if view.status != "completed" {
        return Err(Exit::new(
            EXIT_UPGRADE_FAILED,
            format!("the upgrade ended {}", view.status),
        )
        .into());
    }
    if !verified || !safe || !drawn_ok {
        return Err(Exit::new(EXIT_VERIFY_FAILED, "verification failed (see above)").into());
    }
    Ok(ExitCode::SUCCESS)
}

/// `--serve`: writes the operator's settings and waits (Ctrl-C ends it, in
/// `run`), failing if a child dies.
async fn serve(
    dir: &Path,
    global: &Global,
    cluster_file: &Path,
    sim_dir: &Path,
    children: &mut Children,
) -> anyhow::Result<ExitCode> {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let some = |p: &Option<PathBuf>| p.as_deref().map(quote).unwrap_or_default();
    let env = [
        ("BATON_NATS_URL", format!("'{}'", global.nats)),
        ("BATON_KEY", some(&global.key)),
        ("BATON_TRUST", some(&global.trust)),
        ("BATON_NATS_NKEY", some(&global.auth.nats_nkey)),
        ("BATON_NATS_CA", some(&global.auth.nats_ca)),
        ("BATON_NATS_CERT", some(&global.auth.nats_cert)),
        ("BATON_NATS_CERT_KEY", some(&global.auth.nats_cert_key)),
        ("BATON_NATS_TLS", "true".to_string()),
        ("CLUSTER", quote(cluster_file)),
        ("SIM", quote(sim_dir)),
    ];
    let operator = crate::identity::login_name();
    let mut text = format!(
        "# Written by `baton dev --serve`: the settings of operator `{operator}` (an approver).\n"
    );
    for (name, value) in env {
        text.push_str(&format!("export {name}={value}\n"));
    }
    let env_file = dir.join("env.sh");
    std::fs::write(&env_file, text).with_context(|| format!("writing {}", env_file.display()))?;
    say(&format!(
        "ready: in another shell, `. {}`, then for example `baton plan --cluster \"$CLUSTER\"` \
         (docs/walkthrough.md); `baton-sim report --dir \"$SIM\"` judges the cluster; Ctrl-C here stops everything",
        env_file.display()
    ));
    loop {
        children.check_alive()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn say(line: &str) {
    outln!("==> {line}");
}

/// The demo's cluster file: one executor group per node.
fn cluster_toml(nodes: &[String], package: &Path, upgrade_command: bool) -> String {
    let mut text = String::from("[cluster]\nname = \"demo\"\nprofile = \"chef-backend\"\n\n");
    for (i, node) in nodes.iter().enumerate() {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{node}\"\naddress = \"192.168.33.{}\"\nexecutor = \"{node}\"\n\n",
            215 + i
        ));
    }
    text.push_str(&format!(
        "[upgrade]\npackage = \"{}\"\ninstaller = \"dpkg\"\nprocedure = \"{}\"\npoll_interval_ms = 200\n\
         # the simulator elects within 800 ms: a lost leader with failover blocked is acted on after 1 s\n\
         election_window_ms = 1000\n",
        package.display(),
        if upgrade_command { "upgrade-command" } else { "runbook" }
    ));
    text
}

async fn wait_for_nats(global: &Global, children: &mut Children) -> anyhow::Result<()> {
    let config = global.nats_config()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        children.check_alive()?;
        let (options, addrs) = config.options("baton-dev").await?;
        if options.connect(addrs).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "nats-server did not accept connections on {} within 20 s",
                config.redacted_url()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_service_and_executors(
    client: &Client,
    nodes: &[String],
    children: &mut Children,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        children.check_alive()?;
        if let Ok(online) = ops::executors_online(client).await {
            if nodes.iter().all(|node| online.contains(node)) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the workflow service and the executors were not all up within 60 s (see the logs)"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The simulator's report, computed by `baton-sim report` from its journal.
fn sim_report(sim: &Path, dir: &Path) -> anyhow::Result<sim::Report> {
    let output = Command::new(sim)
        .args(["report", "--json", "--dir"])
        .arg(dir)
        .output()
        .context("running baton-sim report")?;
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "baton-sim report gave no report ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}
