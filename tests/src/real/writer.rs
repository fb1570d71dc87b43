//! The writer both real clusters are judged by: a small client of the system's own (scripts/real/etcd/writer.py
//! through etcd's JSON gateway, scripts/real/patroni/writer.py through libpq) that writes and acknowledges one
//! record every few milliseconds until told to stop, then reads everything back. Both take the same options
//! (`--log`, `--stop-file`, `--ready-file`, `--report`) and print the same report, read here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::process::Proc;

/// The writer's report (the writers' docstrings document each field).
#[derive(Debug, Clone)]
pub struct WriterReport {
    pub attempts: u64,
    pub acknowledged: u64,
    pub failed: u64,
    /// Acknowledged writes missing or different on read-back: must be 0.
    pub lost: u64,
    pub failed_but_present: u64,
    pub duration_ms: f64,
    pub longest_gap_ms: f64,
    pub longest_gap_from_unix_ms: u64,
    pub longest_gap_to_unix_ms: u64,
    /// The sum of the gaps between acknowledgements longer than `gap_threshold_ms`.
    pub unavailable_ms: f64,
    pub availability: f64,
    pub gap_threshold_ms: f64,
    /// Each gap above the threshold: (from, to) in Unix ms.
    pub gaps: Vec<(u64, u64)>,
    pub writes_per_s: f64,
    pub lost_keys: Vec<String>,
    /// When the writer started, in Unix ms (its log's times count from there).
    pub started_unix_ms: u64,
    /// Its log: one JSON line per write attempt.
    pub log: PathBuf,
    /// The report as the writer printed it.
    pub raw: String,
}

impl WriterReport {
    /// How many writes were acknowledged between two instants (Unix ms), from the writer's log.
    pub fn acknowledged_between(
        &self,
        from_unix_ms: u64,
        to_unix_ms: u64,
    ) -> anyhow::Result<usize> {
        let text = std::fs::read_to_string(&self.log)
            .with_context(|| format!("{}", self.log.display()))?;
        let mut n = 0;
        for line in text.lines() {
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}: not JSON: {line}", self.log.display()))?;
            if let Some(acked) = v["acked_ms"].as_f64() {
                let at = self.started_unix_ms as f64 + acked;
                if at >= from_unix_ms as f64 && at <= to_unix_ms as f64 {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    fn parse(raw: &str, log: PathBuf) -> anyhow::Result<WriterReport> {
        let v: Value = serde_json::from_str(raw).context("the writer's report is not JSON")?;
        let u = |k: &str| v[k].as_u64().ok_or_else(|| anyhow!("report: no {k}"));
        let f = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("report: no {k}"));
        let gaps = v["gaps"]
            .as_array()
            .ok_or_else(|| anyhow!("report: no gaps"))?
            .iter()
            .map(|g| Some((g["from_unix_ms"].as_u64()?, g["to_unix_ms"].as_u64()?)))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| anyhow!("report: bad gaps"))?;
        Ok(WriterReport {
            attempts: u("attempts")?,
            acknowledged: u("acknowledged")?,
            failed: u("failed")?,
            lost: u("lost")?,
            failed_but_present: u("failed_but_present")?,
            duration_ms: f("duration_ms")?,
            longest_gap_ms: f("longest_gap_ms")?,
            longest_gap_from_unix_ms: u("longest_gap_from_unix_ms")?,
            longest_gap_to_unix_ms: u("longest_gap_to_unix_ms")?,
            unavailable_ms: f("unavailable_ms")?,
            availability: f("availability")?,
            gap_threshold_ms: f("gap_threshold_ms")?,
            gaps,
            writes_per_s: f("writes_per_s")?,
            lost_keys: v["lost_keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            started_unix_ms: u("started_unix_ms")?,
            log,
            raw: raw.to_string(),
        })
    }
}

impl std::fmt::Display for WriterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes acknowledged of {} ({} failed, {} lost), availability {:.4}, longest gap {:.0} ms, \
             unavailable {:.0} ms in {:.1} s, {:.0} writes/s",
            self.acknowledged,
            self.attempts,
            self.failed,
            self.lost,
            self.availability,
            self.longest_gap_ms,
            self.unavailable_ms,
            self.duration_ms / 1000.0,
            self.writes_per_s
        )
    }
}

/// The running writer; killed on drop if not stopped.
pub struct Writer {
    proc: Proc,
    stop_file: PathBuf,
    report_file: PathBuf,
    log: PathBuf,
}

impl Writer {
    /// Starts `cmd` (a writer with its system's options) in `dir` with the shared options added, and waits until
    /// its first write is acknowledged (up to `timeout`).
    pub fn start(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Writer> {
        let stop_file = dir.join("stop");
        let ready_file = dir.join("ready");
        let report_file = dir.join("report.json");
        let log = dir.join("writes.jsonl");
        cmd.arg("--log")
            .arg(&log)
            .arg("--stop-file")
            .arg(&stop_file)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--report")
            .arg(&report_file);
        let mut proc = Proc::spawn(name, cmd, &dir.join("writer.out"))?;
        let ready = super::poll(timeout, || {
            if ready_file.exists() {
                return Some(true);
            }
            proc.wait_exit(Duration::ZERO).map(|_| false)
        });
        if ready != Some(true) {
            let log = proc.log();
            proc.kill();
            bail!("the writer acknowledged no write in {timeout:?}: {log}");
        }
        Ok(Writer {
            proc,
            stop_file,
            report_file,
            log,
        })
    }

    /// Tells the writer to stop, waits for its read-back and returns its report.
    pub fn stop(mut self) -> anyhow::Result<WriterReport> {
        std::fs::write(&self.stop_file, b"")?;
        let status = self
            .proc
            .wait_exit(Duration::from_secs(90))
            .ok_or_else(|| anyhow!("the writer did not finish in 90 s: {}", self.proc.log()))?;
        if !status.success() {
            bail!("the writer failed ({status}): {}", self.proc.log());
        }
        WriterReport::parse(
            std::fs::read_to_string(&self.report_file)?.trim(),
            self.log.clone(),
        )
    }
}
