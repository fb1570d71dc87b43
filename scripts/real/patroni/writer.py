"""A client writing to the Patroni cluster through the whole upgrade.

    writer.py --hosts 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 --report FILE [--interval-ms 5]
              [--ready FILE] [--acks FILE] [--max-seconds 600]

Connects with multi-host libpq and target_session_attrs=read-write (so always to the
current leader), commits one INSERT every interval, and records the time of each
acknowledged commit. It stops on SIGTERM or SIGINT (or after --max-seconds), then reads
every row back from the leader of that moment and writes a JSON report:
acknowledged, lost (acknowledged but missing: must be 0), availability (the share of
100 ms windows of the run holding at least one acknowledged commit), the longest gap
between acknowledged commits (and when it began), attempts that failed.
"""

import argparse
import json
import os
import signal
import sys
import time

import psycopg

WINDOW_MS = 100


def now_ms() -> float:
    return time.monotonic() * 1000.0


def conninfo(hosts: str) -> str:
    pairs = [h.rsplit(":", 1) for h in hosts.split(",")]
    return (
        f"host={','.join(h for h, _ in pairs)} port={','.join(p for _, p in pairs)} "
        "user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2 "
        "options='-c statement_timeout=5000'"
    )


def connect(info: str, deadline_ms: float):
    """Connects to the read-write member, retrying until the deadline."""
    last = None
    while now_ms() < deadline_ms:
        try:
            return psycopg.connect(info, autocommit=True)
        except psycopg.Error as e:
            last = e
            time.sleep(0.01)
    raise SystemExit(f"writer: no read-write member before the deadline: {last}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--report", required=True)
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--ready")
    ap.add_argument("--acks")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    info = conninfo(args.hosts)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    conn = connect(info, now_ms() + 30_000)
    conn.execute("CREATE TABLE IF NOT EXISTS baton_writes (id bigint PRIMARY KEY, acked boolean)")
    start = now_ms()
    run_id = conn.execute("SELECT coalesce(max(id), 0) FROM baton_writes").fetchone()[0]
    next_id = run_id + 1
    acks = []  # (id, ms since start)
    failures = 0
    reconnects = 0
    if args.ready:
        with open(args.ready, "w") as f:
            f.write("ready\n")
    end_by = start + args.max_seconds * 1000.0
    while not stop and now_ms() < end_by:
        began = now_ms()
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(info, autocommit=True)
                reconnects += 1
            conn.execute("INSERT INTO baton_writes (id, acked) VALUES (%s, true)", (next_id,))
            acks.append((next_id, now_ms() - start))
        except psycopg.Error:
            # The outcome of a failed commit is unknown: the row may or may not be there.
            failures += 1
            if conn is not None:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
            conn = None
        next_id += 1
        rest = args.interval_ms - (now_ms() - began)
        if rest > 0:
            time.sleep(rest / 1000.0)
    end = now_ms() - start

    if conn is None or conn.closed:
        conn = connect(info, now_ms() + 60_000)
    present = {
        r[0]
        for r in conn.execute("SELECT id FROM baton_writes WHERE id > %s", (run_id,)).fetchall()
    }
    leader_port = conn.info.port
    conn.close()

    acked_ids = [i for i, _ in acks]
    lost = sorted(set(acked_ids) - present)
    times = [0.0] + [t for _, t in acks] + [end]
    gaps = [(b - a, a) for a, b in zip(times, times[1:])]
    longest_gap_ms, gap_at_ms = max(gaps) if gaps else (end, 0.0)
    windows = max(1, int(end // WINDOW_MS))
    covered = {int(t // WINDOW_MS) for _, t in acks if t < windows * WINDOW_MS}
    report = {
        "acknowledged": len(acks),
        "attempts": next_id - run_id - 1,
        "failed_attempts": failures,
        "reconnects": reconnects,
        "lost": len(lost),
        "lost_ids": lost[:20],
        "present_unacknowledged": len(present - set(acked_ids)),
        "duration_ms": round(end),
        "availability": round(len(covered) / windows, 4),
        "longest_gap_ms": round(longest_gap_ms),
        "longest_gap_at_ms": round(gap_at_ms),
        "read_back_from_port": leader_port,
    }
    if args.acks:
        with open(args.acks, "w") as f:
            for i, t in acks:
                f.write(f"{i} {t:.1f}\n")
    with open(args.report + ".part", "w") as f:
        json.dump(report, f)

    os.replace(args.report + ".part", args.report)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
