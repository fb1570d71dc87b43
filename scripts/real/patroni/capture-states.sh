#!/usr/bin/env bash
# Drives a fresh cluster (cluster.sh up ROOT: pg1 leads, all on the old prefix) through every state
# tests/fixtures/patroni/ holds, saving each with capture-fixtures.sh:
#
#   capture-states.sh ROOT
#
#   healthy            as it came up
#   stopped-unpaused   pg2 stopped (member.sh stop) while not paused; pg2 started again after
#   paused             member.sh pause
#   stopped            paused, pg2 stopped: captured at once, while its DCS key lives (ttl)
#   mixed              pg2 installed and started on the new prefix
#   after-switchover   pg3 upgraded the same way, then POST /switchover pg1 -> pg2: the moment it returns,
#                      topology-immediate.json (GET /cluster from pg2) and pg1.node-immediate.json (pg1's
#                      GET /patroni); then, once every member is in service again, the whole state
#
# Leaves the cluster paused with pg2 leading (cluster.sh down ROOT stops it).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
[ "$#" = 1 ] || { echo "usage: capture-states.sh ROOT" >&2; exit 1; }
root="$(cd "$1" && pwd)"
new_prefix="$(sed -n 's/^new_prefix=//p' "$root/env")"
venv="$(sed -n 's/^venv=//p' "$root/env")"
m() { "$here/member.sh" "$root/members/$1" "${@:2}" >/dev/null; }
api() { echo "http://127.0.0.1:$(sed -n 's/^rest_port=//p' "$root/members/$1/member.conf")"; }
capture() { "$here/capture-fixtures.sh" "$root" "$1" >/dev/null && echo "captured $1"; }
# Waits until GET /cluster (from pg1) satisfies the Python condition COND over `members` (name -> member).
wait_for() {
  local cond="$1" deadline=$((SECONDS + 60))
  until curl -fsS --max-time 2 "$(api pg1)/cluster" 2>/dev/null | "$venv/bin/python" -c "
import json, sys
members = {m['name']: m for m in json.load(sys.stdin)['members']}
sys.exit(0 if ($cond) else 1)" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "capture-states.sh: timed out waiting for: $cond" >&2; exit 1; }
    sleep 0.1
  done
}
settled='members["pg1"]["state"] == "running" and all(members.get(n, {}).get("state") == "streaming" for n in ("pg2", "pg3"))'

wait_for "$settled"
capture healthy
m pg2 stop
wait_for 'members.get("pg2", {}).get("state") == "stopped"'
capture stopped-unpaused
m pg2 start
wait_for "$settled"
m pg1 pause
capture paused
m pg2 stop
capture stopped
m pg2 install "$new_prefix"
m pg2 start
wait_for "$settled"
capture mixed
m pg3 stop
m pg3 install "$new_prefix"
m pg3 start
wait_for "$settled"
out="$repo/tests/fixtures/patroni/after-switchover"
mkdir -p "$out"
# POST /switchover, as member.sh switchover sends it (without its check, to capture the moment it returns).
curl -fsS --max-time 60 -X POST -H 'Content-Type: application/json' -d '{"leader": "pg1", "candidate": "pg2"}' \
  "$(api pg1)/switchover" >/dev/null
curl -fsS --max-time 2 "$(api pg2)/cluster" >"$out/topology-immediate.json"
curl -fsS --max-time 2 "$(api pg1)/patroni" >"$out/pg1.node-immediate.json"
wait_for 'members["pg2"]["role"] == "leader" and all(members.get(n, {}).get("state") == "streaming" for n in ("pg1", "pg3"))'
capture after-switchover
