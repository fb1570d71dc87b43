#!/usr/bin/env python3
"""A test client for the real etcd cluster: writes one record every few milliseconds through etcd's v3 JSON
gateway (etcd's own HTTP/JSON client interface, POST /v3/kv/put and /v3/kv/range, served by every member of 3.4
and 3.5), logs each acknowledged write with its timestamps, and when told to stop reads everything back and
prints a report (one JSON object) on stdout.

Why the gateway: it is etcd's own client API, needs nothing but Python's standard library (no grpcio build), and
one kept-alive HTTP connection writes in about a millisecond, so the writer measures the cluster and not process
start-ups (etcdctl per write costs ~15 ms).

A write is acknowledged when the gateway answers 200 with a header revision: etcd answers only after the entry is
committed by a quorum and applied. A write that errors or times out counts as failed: its outcome is unknown (it may
be present). The client moves to the next endpoint after any failure, as etcd's own clients do.

Stops on SIGTERM/SIGINT, when --stop-file exists, or after --duration seconds.

The report's fields: scripts/real/writer_report.py (shared with the Patroni writer).
"""
import argparse
import base64
import http.client
import json
import os
import signal
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import writer_report  # noqa: E402  (scripts/real/writer_report.py, shared with the Patroni writer)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def unb64(text):
    return base64.b64decode(text).decode()


class Gateway:
    """One kept-alive HTTP connection to one member at a time; the next member after any failure."""

    def __init__(self, endpoints, timeout_s):
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.index = 0
        self.conn = None

    @property
    def endpoint(self):
        return self.endpoints[self.index]

    def next_endpoint(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.index = (self.index + 1) % len(self.endpoints)

    def post(self, path, body):
        if self.conn is None:
            host, port = self.endpoint.rsplit(":", 1)
            self.conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout_s)
        try:
            self.conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            resp = self.conn.getresponse()
            data = resp.read()
        except Exception as e:  # refused, reset, timed out: the outcome is unknown
            self.next_endpoint()
            raise RuntimeError("%s: %s" % (type(e).__name__, e)) from None
        if resp.status != 200:
            self.next_endpoint()
            raise RuntimeError("HTTP %d: %s" % (resp.status, data[:200].decode(errors="replace")))
        return json.loads(data)


def prefix_end(prefix):
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", required=True, help="host:port,host:port,... (client URLs without scheme)")
    ap.add_argument("--log", required=True, help="JSON lines: one per attempt")
    ap.add_argument("--prefix", help="key prefix; default: baton-writer/START_UNIX_MS/ (one per run)")
    ap.add_argument("--interval-ms", type=float, default=5.0, help="pause after each write")
    ap.add_argument("--timeout-ms", type=float, default=2000.0, help="one request's timeout")
    ap.add_argument("--gap-threshold-ms", type=float, default=100.0)
    ap.add_argument("--stop-file")
    ap.add_argument("--ready-file", help="created after the first acknowledged write")
    ap.add_argument("--duration", type=float, help="seconds; default: until stopped")
    ap.add_argument("--report", help="also write the report here")
    args = ap.parse_args()
    endpoints = [e for e in args.endpoints.split(",") if e]
    if not endpoints:
        ap.error("--endpoints is empty")

    stop = {"now": False}

    def on_signal(_sig, _frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    gw = Gateway(endpoints, args.timeout_ms / 1000.0)
    start_unix = time.time()
    if not args.prefix:
        args.prefix = "baton-writer/%d/" % round(start_unix * 1000)
    start = time.monotonic()

    def now_ms():
        return (time.monotonic() - start) * 1000.0

    acked = {}  # key -> value
    ack_times = []
    attempts = failed = 0
    ready = False
    with open(args.log, "w", buffering=1) as log:
        seq = 0
        while not stop["now"]:
            if args.stop_file and os.path.exists(args.stop_file):
                break
            if args.duration is not None and now_ms() >= args.duration * 1000.0:
                break
            seq += 1
            key = "%s%08d" % (args.prefix, seq)
            value = "%d@%.3f" % (seq, start_unix + now_ms() / 1000.0)
            endpoint = gw.endpoint
            sent = now_ms()
            attempts += 1
            try:
                resp = gw.post("/v3/kv/put", {"key": b64(key), "value": b64(value)})
                done = now_ms()
                acked[key] = value
                ack_times.append(done)
                log.write(json.dumps({"seq": seq, "key": key, "endpoint": endpoint, "sent_ms": round(sent, 3),
                                      "acked_ms": round(done, 3),
                                      "revision": resp.get("header", {}).get("revision")}) + "\n")
                if not ready and args.ready_file:
                    open(args.ready_file, "w").close()
                    ready = True
            except RuntimeError as e:
                done = now_ms()
                failed += 1
                log.write(json.dumps({"seq": seq, "key": key, "endpoint": endpoint, "sent_ms": round(sent, 3),
                                      "failed_ms": round(done, 3), "error": str(e)}) + "\n")
            if args.interval_ms > 0:
                time.sleep(args.interval_ms / 1000.0)
    end = now_ms()

    # Read everything back (linearizable range), from whichever member answers.
    present = None
    deadline = time.monotonic() + 30.0
    last_error = None
    while present is None and time.monotonic() < deadline:
        try:
            resp = gw.post("/v3/kv/range", {"key": b64(args.prefix), "range_end": b64(prefix_end(args.prefix))})
            present = {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in resp.get("kvs", [])}
        except RuntimeError as e:
            last_error = str(e)
            time.sleep(0.2)
    if present is None:
        print("writer.py: could not read back from any of %s: %s" % (endpoints, last_error), file=sys.stderr)
        return 2
    lost_keys = sorted(k for k, v in acked.items() if present.get(k) != v)
    failed_but_present = len(set(present) - set(acked))

    writer_report.write(args.report, attempts=attempts, acknowledged=len(acked), failed=failed, lost_keys=lost_keys,
                        failed_but_present=failed_but_present, ack_times=ack_times, end=end, start_unix=start_unix,
                        gap_threshold_ms=args.gap_threshold_ms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
