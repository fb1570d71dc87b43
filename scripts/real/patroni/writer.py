"""A client writing to the Patroni cluster through the whole upgrade.

    writer.py --hosts 127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3 --log FILE [--report FILE]
              [--interval-ms 5] [--gap-threshold-ms 100] [--stop-file FILE] [--ready-file FILE]
              [--max-seconds 600]

Connects with multi-host libpq and target_session_attrs=read-write (so always to the
current leader), commits one INSERT every interval, and logs each attempt (one JSON line:
`acked_ms` or `failed_ms` since the start). It stops on SIGTERM or SIGINT, when --stop-file
exists, or after --max-seconds, then reads every row back from the leader of that moment
and prints a report (one JSON object, also written to --report).

The interface is scripts/real/etcd/writer.py's, and the report (scripts/real/writer_report.py,
read by tests::real::writer) is the same.
"""

import argparse
import json
import os
import signal
import sys
import time

import psycopg

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import writer_report  # noqa: E402  (scripts/real/writer_report.py, shared with the etcd writer)


def conninfo(hosts: str) -> str:
    pairs = [h.rsplit(":", 1) for h in hosts.split(",")]
    return (
        f"host={','.join(h for h, _ in pairs)} port={','.join(p for _, p in pairs)} "
        "user=postgres dbname=postgres target_session_attrs=read-write connect_timeout=2 "
        "options='-c statement_timeout=5000'"
    )


def connect(info: str, deadline: float):
    """Connects to the read-write member, retrying until the deadline (monotonic seconds)."""
    last = None
    while time.monotonic() < deadline:
        try:
            return psycopg.connect(info, autocommit=True)
        except psycopg.Error as e:
            last = e
            time.sleep(0.01)
    raise SystemExit(f"writer: no read-write member before the deadline: {last}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", required=True)
    ap.add_argument("--log", required=True, help="JSON lines: one per attempt")
    ap.add_argument("--report")
    ap.add_argument("--interval-ms", type=float, default=5.0)
    ap.add_argument("--gap-threshold-ms", type=float, default=100.0)
    ap.add_argument("--stop-file")
    ap.add_argument("--ready-file")
    ap.add_argument("--max-seconds", type=float, default=600.0)
    args = ap.parse_args()
    info = conninfo(args.hosts)

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    conn = connect(info, time.monotonic() + 30.0)
    conn.execute("CREATE TABLE IF NOT EXISTS baton_writes (id bigint PRIMARY KEY, acked boolean)")
    run_id = conn.execute("SELECT coalesce(max(id), 0) FROM baton_writes").fetchone()[0]
    start_unix = time.time()
    start = time.monotonic()

    def now_ms() -> float:
        return (time.monotonic() - start) * 1000.0

    next_id = run_id + 1
    acks = []  # (id, ms since start)
    failures = 0
    ready = False
    with open(args.log, "w", buffering=1) as log:
        while not stop and now_ms() < args.max_seconds * 1000.0:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            sent = now_ms()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(info, autocommit=True)
                conn.execute("INSERT INTO baton_writes (id, acked) VALUES (%s, true)", (next_id,))
                done = now_ms()
                acks.append((next_id, done))
                log.write(json.dumps({"seq": next_id, "port": conn.info.port, "sent_ms": round(sent, 3),
                                      "acked_ms": round(done, 3)}) + "\n")
                if not ready and args.ready_file:
                    open(args.ready_file, "w").close()
                    ready = True
            except psycopg.Error as e:
                # The outcome of a failed commit is unknown: the row may or may not be there.
                failures += 1
                log.write(json.dumps({"seq": next_id, "sent_ms": round(sent, 3), "failed_ms": round(now_ms(), 3),
                                      "error": str(e).strip()[:200]}) + "\n")
                if conn is not None:
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                conn = None
            next_id += 1
            rest = args.interval_ms - (now_ms() - sent)
            if rest > 0:
                time.sleep(rest / 1000.0)
    end = now_ms()

    if conn is None or conn.closed:
        conn = connect(info, time.monotonic() + 60.0)
    present = {
        r[0]
        for r in conn.execute("SELECT id FROM baton_writes WHERE id > %s", (run_id,)).fetchall()
    }
    conn.close()

    acked_ids = [i for i, _ in acks]
    writer_report.write(args.report, attempts=next_id - run_id - 1, acknowledged=len(acks), failed=failures,
                        lost_keys=sorted(set(acked_ids) - present), failed_but_present=len(present - set(acked_ids)),
                        ack_times=[t for _, t in acks], end=end, start_unix=start_unix,
                        gap_threshold_ms=args.gap_threshold_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
