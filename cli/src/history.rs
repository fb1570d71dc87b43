//! What `baton list` (the history) and `baton executors` print: a table with
//! a header for people, the service's bounded rows as JSON for scripts; and
//! the `--since` argument (a duration back from now, or an RFC 3339 time).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use workflow::service::api::{ExecutorView, UpgradeSummary};

use crate::render::terminal_safe;

/// The longest reason a history line shows (the JSON has the service's 200
/// characters, `baton status` all of it).
const REASON_CHARS: usize = 72;

/// `--since`: `2h`, `90m`, `1d 6h` (back from now) or an RFC 3339 time in
/// UTC (`2026-11-29T08:00:00Z`, `2026-11-29 08:00:00`); unix milliseconds.
pub fn parse_since(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if let Ok(back) = humantime::parse_duration(text) {
        let at = SystemTime::now()
            .checked_sub(back)
            .ok_or_else(|| format!("{s:?} reaches back before 1970"))?;
        return Ok(unix_ms(at));
    }
    match humantime::parse_rfc3339_weak(text) {
        Ok(at) => Ok(unix_ms(at)),
        Err(_) => Err(format!(
            "{s:?} is neither a duration back from now (2h, 90m, 1d 6h) nor an RFC 3339 time in UTC \
             (2026-11-29T08:00:00Z)"
        )),
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A time as the tables show it: `2026-11-29 08:00:01` (UTC), or `-`.
pub fn utc(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
            .replace('T', " ")
            .trim_end_matches('Z')
            .to_string(),
        None => "-".to_string(),
    }
}

/// A short duration: `850ms`, `42s`, `3m12s`, `2h05m`, `3d04h`.
pub fn short(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// The history as text: the upgrades under a header, then (with `--plans`)
/// the plan runs apart, under their own.
pub fn list_text(rows: &[UpgradeSummary]) -> String {
    let (plans, upgrades): (Vec<&UpgradeSummary>, Vec<&UpgradeSummary>) =
        rows.iter().partition(|r| r.kind == "plan");
    let mut out = String::new();
    if upgrades.is_empty() {
        out.push_str("no upgrades in the log\n");
    } else {
        out.push_str(&table("UPGRADE", &upgrades));
    }
    if !plans.is_empty() {
        out.push('\n');
        out.push_str(&table("PLAN RUN", &plans));
    }
    out
}

fn table(first: &str, rows: &[&UpgradeSummary]) -> String {
    let columns = [
        first,
        "CLUSTER",
        "STATUS",
        "REQUESTED BY",
        "STARTED (UTC)",
        "ENDED (UTC)",
        "TOOK",
        "TARGET",
        "REASON",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let took = match (r.started_ms, r.ended_ms) {
                (Some(start), Some(end)) => short(end.saturating_sub(start)),
                _ => "-".to_string(),
            };
            vec![
                r.upgrade.clone(),
                r.cluster.clone(),
                r.status.clone(),
                r.requested_by.clone(),
                utc(r.started_ms),
                utc(r.ended_ms),
                took,
                r.target_version.clone().unwrap_or_else(|| "-".into()),
                cut(r.reason.as_deref().unwrap_or(""), REASON_CHARS),
            ]
        })
        .collect();
    aligned(&columns, &cells)
}

/// The executors online as text, one line each under a header.
pub fn executors_text(executors: &[ExecutorView]) -> String {
    if executors.is_empty() {
        return "no executor is online (none with a presence record signed by a key the trust file pins)\n"
            .to_string();
    }
    let columns = [
        "GROUP",
        "EXECUTOR",
        "NODES",
        "VERSION",
        "HOST",
        "PID",
        "UP",
        "HEARTBEAT",
        "RUNNING",
    ];
    let cells: Vec<Vec<String>> = executors
        .iter()
        .map(|e| {
            vec![
                e.group.clone(),
                e.name.clone(),
                if e.nodes.is_empty() {
                    "(any)".to_string()
                } else {
                    e.nodes.join(",")
                },
                e.version.clone(),
                e.host.clone(),
                e.pid.to_string(),
                // Up until its last heartbeat, and since.
                short(
                    e.heartbeat_ms
                        .saturating_sub(e.started_ms)
                        .saturating_add(e.heartbeat_age_ms),
                ),
                format!("{} ago", short(e.heartbeat_age_ms)),
                e.running.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    aligned(&columns, &cells)
}

/// Columns padded to their widest cell; every cell made [`terminal_safe`].
fn aligned(columns: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| terminal_safe(c)).collect())
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        format!("{}\n", text.trim_end())
    };
    let mut out = line(columns.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, kind: &str, status: &str, ended_ms: Option<u64>) -> UpgradeSummary {
        UpgradeSummary {
            upgrade: id.into(),
            kind: kind.into(),
            cluster: "prod\u{1b}[31m".into(),
            status: status.into(),
            reason: Some("x".repeat(300)),
            requested_by: "alice".into(),
            target_version: Some("3.1.0-1".into()),
            started_ms: Some(1_764_403_200_000),
            ended_ms,
            events: 9,
        }
    }

    #[test]
    fn the_history_has_a_header_times_and_plans_apart() {
        let text = list_text(&[
            row("01A", "upgrade", "completed", Some(1_764_403_392_000)),
            row("01B", "plan", "planned", Some(1_764_403_201_000)),
            row("01C", "upgrade", "running", None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("UPGRADE") && lines[0].contains("REQUESTED BY"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("01A") && lines[1].contains("2025-11-29 08:00:00"),
            "{text}"
        );
        assert!(
            lines[1].contains("2025-11-29 08:03:12") && lines[1].contains("3m12s"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("01C") && lines[2].contains(" - "),
            "{text}"
        );
        assert_eq!(lines[3], "", "{text}");
        assert!(
            lines[4].starts_with("PLAN RUN") && lines[5].starts_with("01B"),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "control characters escaped: {text}"
        );
        assert!(lines[1].chars().count() < 250, "{}", lines[1]);
        assert_eq!(list_text(&[]), "no upgrades in the log\n");
    }

    #[test]
    fn since_takes_a_duration_or_an_rfc3339_time() {
        let now = unix_ms(SystemTime::now());
        let two_hours = parse_since("2h").unwrap();
        assert!(now - two_hours >= 7_200_000 && now - two_hours < 7_260_000);
        assert_eq!(
            parse_since("2025-11-29T08:00:00Z").unwrap(),
            1_764_403_200_000
        );
        assert_eq!(
            parse_since("2025-11-29 08:00:00").unwrap(),
            1_764_403_200_000
        );
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn executors_show_group_nodes_version_and_heartbeat_age() {
        let executor = ExecutorView {
            name: "backend-1".into(),
            id: "backend-1@host".into(),
            group: "backend-1".into(),
            nodes: vec!["backend-1".into()],
            version: "0.1.0".into(),
            host: "host".into(),
            pid: 42,
            started_ms: 1_000,
            heartbeat_ms: 61_000,
            heartbeat_age_ms: 2_500,
            running: Some("01J:7:1".into()),
            executed: 3,
            rejected: 0,
        };
        let text = executors_text(&[executor]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("GROUP") && lines[0].contains("HEARTBEAT"),
            "{text}"
        );
        assert!(lines[1].starts_with("backend-1"), "{text}");
        for cell in ["0.1.0", "1m02s", "2s ago", "01J:7:1"] {
            assert!(lines[1].contains(cell), "{cell}: {text}");
        }
        assert!(executors_text(&[]).starts_with("no executor is online"));
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short(850), "850ms");
        assert_eq!(short(42_000), "42s");
        assert_eq!(short(192_000), "3m12s");
        assert_eq!(short(7_500_000), "2h05m");
        assert_eq!(short(273_600_000), "3d04h");
    }
}
