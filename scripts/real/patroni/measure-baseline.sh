#!/usr/bin/env bash
# Measures the manual baseline as RESULTS.md records it: for each run, a fresh cluster
# (cluster.sh up), the writer, manual-upgrade.sh timed while the writer runs, the
# writer's report, cluster.sh down. Prints one line per run.
#   measure-baseline.sh RUNS [--switchover-unpaused]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
runs="${1:?usage: measure-baseline.sh RUNS [--switchover-unpaused]}"
shift
for i in $(seq 1 "$runs"); do
  root="$(mktemp -d /tmp/patroni-baseline.XXXXXX)"
  trap 'bash "$here/cluster.sh" down "$root" >/dev/null 2>&1 || true' EXIT
  bash "$here/cluster.sh" up "$root" >/dev/null
  venv="$(sed -n 's/^venv=//p' "$root/env")"
  hosts="$(sed -n 's/^pg[0-9]*=\([^,]*\),.*/\1/p' "$root/env" | paste -sd,)"
  "$venv/bin/python" "$here/writer.py" --hosts "$hosts" --log "$root/writes.jsonl" --report "$root/writer.json" \
    --ready-file "$root/writer.ready" \
    --max-seconds 300 >/dev/null 2>"$root/writer.err" &
  writer=$!
  until [ -f "$root/writer.ready" ]; do kill -0 "$writer" || { cat "$root/writer.err" >&2; exit 1; }; sleep 0.05; done
  sleep 1 # a second of writes before the upgrade
  result="$(bash "$here/manual-upgrade.sh" "$root" "$@" | tail -1)"
  sleep 1 # and after it
  kill -TERM "$writer"
  wait "$writer"
  echo "run $i: $result writer=$(cat "$root/writer.json")"
  bash "$here/cluster.sh" down "$root" >/dev/null
  trap - EXIT
  rm -rf "$root"
done
