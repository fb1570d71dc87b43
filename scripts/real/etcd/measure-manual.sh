#!/usr/bin/env bash
# Measures the manual baseline RUNS times (default 3), each on a fresh loopback cluster: cluster.sh up, writer.py
# until its first acknowledged write, manual-upgrade.sh (timed by itself: from its first health check to the old
# leader caught up on the new version), writer stopped 1 s later and its read-back, cluster.sh down.
# Prints one Markdown table row per run (the table of tests/fixtures/etcd/RESULTS.md).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:-3}"
bash "$here/../install-etcd.sh"
echo "| run | wall (s) | writes acked | failed (unknown outcome) | lost | availability | longest gap (ms) | unavailable (ms) | writes/s | order (leader last) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for run in $(seq 1 "$runs"); do
  root="$(mktemp -d /tmp/etcd-measure-XXXXXX)"
  trap '"$here/cluster.sh" down "$root" >/dev/null 2>&1 || true; [ -n "${writer:-}" ] && kill "$writer" 2>/dev/null || true' EXIT
  "$here/cluster.sh" up "$root" >/dev/null
  endpoints="$(sed -n 's/^endpoints=//p' "$root/cluster.env")"
  python3 "$here/writer.py" --endpoints "$endpoints" --log "$root/writes.jsonl" --stop-file "$root/stop" \
    --ready-file "$root/ready" --report "$root/report.json" >/dev/null &
  writer=$!
  for _ in $(seq 1 200); do [ -e "$root/ready" ] && break; sleep 0.1; done
  [ -e "$root/ready" ] || { echo "run $run: the writer acknowledged nothing in 20 s" >&2; exit 1; }
  done_line="$("$here/manual-upgrade.sh" "$root" | tee "$root/manual.out" | sed -n 's/^done //p')"
  sleep 1
  touch "$root/stop"
  wait "$writer"
  writer=""
  python3 - "$run" "$root/report.json" "$done_line" <<'PY'
import json, sys
run, path, done = sys.argv[1], sys.argv[2], sys.argv[3]
r = json.load(open(path))
wall_ms = int(done.split()[0])
fields = dict(f.split("=", 1) for f in done.split()[1:])
print("| %s | %.2f | %d | %d | %d | %.4f | %.0f | %.0f | %.0f | %s (%s -> %s) |" % (
    run, wall_ms / 1000, r["acknowledged"], r["failed"], r["lost"], r["availability"], r["longest_gap_ms"],
    r["unavailable_ms"], r["writes_per_s"], fields["order"], fields["leader"], fields["target"]))
PY
  "$here/cluster.sh" down "$root" >/dev/null
  rm -rf "$root"
  trap - EXIT
done
