//! The cluster directory: `state.json`, `journal.jsonl`, `lock`, and one `nodes/<name>/bin/` per node.
//!
//! Concurrency: several executors call the simulator at once, each as a short-lived process. Every state
//! change is a read-modify-write of `state.json` done while holding an exclusive `flock` (fs4) on `lock`,
//! and the journal lines produced by that change are appended under the same lock, so the journal order
//! is the order in which changes happened. A file lock was chosen over a tiny local server because it
//! needs no daemon to start, supervise or clean up in tests and demos, survives crashes (the kernel
//! drops the lock with the process), and the critical sections are microseconds long. The state file is
//! replaced by rename, so a crash never leaves a half-written state.
//!
//! Commands that must wait (demote waiting for the election, `upgrade` waiting for the re-sync, the
//! `status-hang` fault, latency) never sleep while holding the lock: they release it, sleep, and
//! re-acquire it to re-check, so the other nodes keep running.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use fs4::fs_std::FileExt;

use crate::journal::{Entry, Event, ORCHESTRATOR};
use crate::model::{Cluster, Emitted, Fault, Timings, Tx};
use crate::{Error, Output};

/// Tools every node's bin folder provides.
pub const TOOLS: [&str; 6] = [
    "chef-backend-ctl",
    "dpkg",
    "dpkg-query",
    "dpkg-deb",
    "yum",
    "rpm",
];

/// Wall-clock unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A simulated cluster on disk, acted on by one actor (`orchestrator` unless [`Sim::with_actor`]).
#[derive(Clone, Debug)]
pub struct Sim {
    dir: PathBuf,
    actor: String,
}

fn entries(events: Vec<Emitted>) -> impl Iterator<Item = Entry> {
    events
        .into_iter()
        .map(|(at_ms, actor, event)| Entry::Event {
            at_ms,
            event,
            actor,
        })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Sim {
    /// Opens an existing cluster directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Sim, Error> {
        let sim = Sim {
            dir: dir.as_ref().to_path_buf(),
            actor: ORCHESTRATOR.to_string(),
        };
        if !sim.state_path().exists() {
            return Err(Error::NoCluster(sim.dir));
        }
        Ok(sim)
    }

    /// Creates a cluster of `nodes` nodes at `version` (leader `backend-1`) and the per-node bin folders
    /// whose wrappers exec `exe` (the `baton-sim` binary).
    pub fn init(
        dir: impl AsRef<Path>,
        nodes: usize,
        version: &str,
        timings: Timings,
        faults: &[(String, Fault)],
        exe: &Path,
    ) -> Result<Sim, Error> {
        if nodes == 0 {
            return Err(Error::Invalid("--nodes must be at least 1".into()));
        }
        crate::pkg::check_version(version).map_err(Error::Invalid)?;
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(io(dir))?;
        let dir = dir.canonicalize().map_err(io(dir))?;
        let sim = Sim {
            dir,
            actor: ORCHESTRATOR.to_string(),
        };
        if sim.state_path().exists() {
            return Err(Error::Exists(sim.dir));
        }
        let now = now_ms();
        let tolerance = timings.leaderless_tolerance();
        let mut cluster = Cluster::new(nodes, version, timings, now);
        let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
        let mut events = vec![(
            now,
            None,
            Event::ClusterCreated {
                nodes: names.clone(),
                version: version.to_string(),
                leader: names[0].clone(),
                failover: true,
                leaderless_tolerance_ms: Some(tolerance),
            },
        )];
        {
            let mut tx = Tx::new(&mut cluster);
            for (node, fault) in faults {
                let i = tx
                    .cluster
                    .index(node)
                    .ok_or_else(|| Error::UnknownNode(node.clone()))?;
                tx.set_fault(i, now, *fault, true);
            }
            events.append(&mut tx.events);
        }
        for name in &names {
            sim.write_wrappers(name, exe)?;
        }
        let _lock = sim.lock()?;
        sim.write_state(&cluster)?;
        sim.append(entries(events))?;
        Ok(sim)
    }

    fn write_wrappers(&self, node: &str, exe: &Path) -> Result<(), Error> {
        let bin = self.bin_dir(node);
        fs::create_dir_all(&bin).map_err(io(&bin))?;
        for tool in TOOLS {
            let path = bin.join(tool);
            let script = format!(
                "#!/bin/sh\nexec {} --dir {} --node {} --as {} \"$@\"\n",
                sh_quote(&exe.to_string_lossy()),
                sh_quote(&self.dir.to_string_lossy()),
                sh_quote(node),
                tool
            );
            fs::write(&path, script).map_err(io(&path))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io(&path))?;
        }
        Ok(())
    }

    /// The same cluster, acted on by `actor` (what `BATON_SIM_ACTOR` sets): every command and every
    /// change it causes is journalled with it.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Sim {
        self.actor = actor.into();
        self
    }

    /// Who acts on the cluster through this handle.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `D/nodes/<node>/bin`: put it first in PATH to act as that node.
    pub fn bin_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node).join("bin")
    }

    /// `D/nodes/<node>`: a convenient place to copy packages to.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("journal.jsonl")
    }

    fn lock(&self) -> Result<File, Error> {
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        FileExt::lock_exclusive(&f).map_err(io(&path))?;
        // The lock is released when the file is closed (dropped).
        Ok(f)
    }

    fn read_state(&self) -> Result<Cluster, Error> {
        let path = self.state_path();
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        serde_json::from_str(&text).map_err(|source| Error::State { path, source })
    }

    fn write_state(&self, c: &Cluster) -> Result<(), Error> {
        let path = self.state_path();
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(c).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        fs::write(&tmp, text).map_err(io(&tmp))?;
        fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn append(&self, entries: impl IntoIterator<Item = Entry>) -> Result<(), Error> {
        let path = self.journal_path();
        let mut text = String::new();
        for e in entries {
            // Serialising our own enum cannot fail (no maps with non-string keys, no floats).
            text.push_str(&serde_json::to_string(&e).unwrap_or_default());
            text.push('\n');
        }
        if text.is_empty() {
            return Ok(());
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(text.as_bytes()).map_err(io(&path))
    }

    /// Runs `f` on the cluster under the lock, after materialising every transition due by now; saves the
    /// state and journals the events. `f` gets the transaction and `now` (never earlier than any time the
    /// cluster has seen).
    pub fn transact<R>(&self, f: impl FnOnce(&mut Tx, u64) -> R) -> Result<R, Error> {
        let _lock = self.lock()?;
        let mut cluster = self.read_state()?;
        let now = now_ms().max(cluster.last_ms);
        let before = cluster.clone();
        let (r, events) = {
            let mut tx = Tx::new(&mut cluster);
            tx.advance(now);
            tx.actor = Some(self.actor.clone());
            let r = f(&mut tx, now);
            (r, std::mem::take(&mut tx.events))
        };
        if cluster != before {
            self.write_state(&cluster)?;
        }
        self.append(entries(events))?;
        Ok(r)
    }

    /// The current state (with due transitions materialised).
    pub fn state(&self) -> Result<Cluster, Error> {
        self.transact(|tx, _| tx.cluster.clone())
    }

    /// Journals a command invocation.
    pub fn record_command(
        &self,
        node: &str,
        argv: &[String],
        exit_code: i32,
        started_ms: u64,
    ) -> Result<(), Error> {
        let _lock = self.lock()?;
        let finished_ms = now_ms();
        self.append([Entry::Command {
            node: node.to_string(),
            argv: argv.to_vec(),
            exit_code,
            started_ms,
            finished_ms,
            actor: self.actor.clone(),
        }])
    }

    /// Reads the whole journal.
    pub fn journal(&self) -> Result<Vec<Entry>, Error> {
        let path = self.journal_path();
        let f = File::open(&path).map_err(io(&path))?;
        let mut out = Vec::new();
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(io(&path))?;
            if line.trim().is_empty() {
                continue;
            }
            let e = serde_json::from_str(&line).map_err(|source| Error::Journal {
                path: path.clone(),
                line: n + 1,
                source,
            })?;
            out.push(e);
        }
        Ok(out)
    }

    /// Computes the report from the journal, first materialising transitions due by now.
    pub fn report(&self) -> Result<crate::Report, Error> {
        let state = self.state()?;
        let journal = self.journal()?;
        Ok(crate::report::Report::from_journal(&journal, state.last_ms))
    }

    /// `baton-sim crash`: the node's services die at once, like a power loss (no clean stop). The node
    /// stays down until `chef-backend-ctl start`. A crashed leader is replaced after the election delay
    /// only if cluster failover is on and etcd keeps its quorum. Journalled as a command of this actor.
    pub fn crash(&self, node: &str) -> Result<Output, Error> {
        let started = now_ms();
        let out = self.transact(|tx, now| {
            let i = tx
                .cluster
                .index(node)
                .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
            let was_up = tx.cluster.nodes[i].up;
            tx.stop(i, now, "crash");
            Ok::<_, Error>(Output::ok(if was_up {
                format!(
                    "{node}: services crashed (power loss); down until `chef-backend-ctl start`\n"
                )
            } else {
                format!("{node}: services were already down\n")
            }))
        })??;
        self.record_command(
            node,
            &["baton-sim".into(), "crash".into()],
            out.code,
            started,
        )?;
        Ok(out)
    }

    /// `baton-sim restart`: a crash, then the services start at once (the node comes back like after
    /// `chef-backend-ctl start` and re-syncs). Fails (exit 1) when the services cannot start.
    pub fn restart(&self, node: &str) -> Result<Output, Error> {
        let started = now_ms();
        let out = self.transact(|tx, now| {
            let i = tx
                .cluster
                .index(node)
                .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
            tx.stop(i, now, "crash");
            let blocker = tx.start_blocker(i);
            Ok::<_, Error>(if tx.start(i, now, "boot") {
                Output::ok(format!("{node}: services crashed and started again\n"))
            } else {
                Output::fail(
                    1,
                    format!(
                        "{node}: services crashed and could not start again: {}\n",
                        blocker.unwrap_or_default()
                    ),
                )
            })
        })??;
        self.record_command(
            node,
            &["baton-sim".into(), "restart".into()],
            out.code,
            started,
        )?;
        Ok(out)
    }

    /// Sets (or clears) a fault on a node.
    pub fn set_fault(&self, node: &str, fault: Fault, on: bool) -> Result<(), Error> {
        self.transact(|tx, now| {
            let i = tx
                .cluster
                .index(node)
                .ok_or_else(|| Error::UnknownNode(node.to_string()))?;
            tx.set_fault(i, now, fault, on);
            Ok(())
        })?
    }
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
