#!/usr/bin/env bash
# What a switchover does while the cluster is paused (Patroni maintenance mode), measured on the
# cluster at ROOT (cluster.sh up), with the writer committing throughout:
#
#   paused-switchover.sh ROOT [CANDIDATE]
#
# Pauses (member.sh pause, i.e. `patronictl pause --wait`), starts writer.py, runs the checked
# switchover through member.sh (`patronictl switchover --leader OLD --candidate CANDIDATE --force`,
# then fails unless CANDIDATE leads), then follows every member's REST API (GET /patroni, GET
# /cluster) until the old leader streams from the new one, and prints, in ms since the switchover
# command started: when it returned, when the new leader's /patroni said `primary` and `running`,
# when the old leader's said `replica` + `streaming` (a replica of the new leader, by itself), whether
# the cluster was still paused at the end (GET /cluster `pause`), and the writer's report (longest
# gap, acknowledged, lost). Leaves the cluster paused, as a Baton upgrade with the fence up would.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "$#" -ge 1 ] || { echo "usage: paused-switchover.sh ROOT [CANDIDATE]" >&2; exit 1; }
root="$(cd "$1" && pwd)"
venv="$(sed -n 's/^venv=//p' "$root/env")"
read -r -a members <<<"$(sed -n 's/^members=//p' "$root/env")"
api() { echo "http://127.0.0.1:$(sed -n 's/^rest_port=//p' "$root/members/$1/member.conf")"; }
pg() { sed -n "s/^$1=\([^,]*\),.*/\1/p" "$root/env"; }
py="$venv/bin/python"
field() { # field MEMBER PYEXPR: evaluates PYEXPR over s = GET /patroni of MEMBER
  curl -fsS --max-time 2 "$(api "$1")/patroni" 2>/dev/null | "$py" -c "import json, sys; s = json.load(sys.stdin); print($2)" 2>/dev/null || echo down
}
now() { date +%s%3N; }

old=""
for m in "${members[@]}"; do
  [ "$(field "$m" 's.get("role")')" = primary ] && old="$m"
done
[ -n "$old" ] || { echo "paused-switchover.sh: no primary" >&2; exit 1; }
candidate="${2:-}"
if [ -z "$candidate" ]; then
  for m in "${members[@]}"; do [ "$m" != "$old" ] && { candidate="$m"; break; }; done
fi
"$here/member.sh" "$root/members/$old" pause >/dev/null
echo "paused: $(curl -fsS --max-time 2 "$(api "$old")/cluster" | "$py" -c 'import json, sys; print(json.load(sys.stdin).get("pause", False))')"

hosts=""
for m in "${members[@]}"; do hosts="${hosts:+$hosts,}$(pg "$m")"; done
work="$(mktemp -d)"
"$py" "$here/writer.py" --hosts "$hosts" --log "$work/writer.log" --report "$work/report.json" \
  --ready-file "$work/ready" --max-seconds 120 >"$work/writer.out" 2>&1 &
writer=$!
until [ -f "$work/ready" ]; do kill -0 "$writer" || { cat "$work/writer.out"; exit 1; }; sleep 0.05; done
sleep 1

t0="$(now)"
echo "switchover $old -> $candidate under pause: member.sh $root/members/$old switchover $old $candidate"
"$here/member.sh" "$root/members/$old" switchover "$old" "$candidate"
returned=$(($(now) - t0))
new_primary="" old_streams=""
deadline=$((SECONDS + 60))
while [ -z "$new_primary" ] || [ -z "$old_streams" ]; do
  [ "$SECONDS" -lt "$deadline" ] || break
  if [ -z "$new_primary" ] && [ "$(field "$candidate" 's.get("role"), s.get("state")')" = "primary running" ]; then
    new_primary=$(($(now) - t0))
  fi
  if [ -z "$old_streams" ] && [ "$(field "$old" 's.get("role"), s.get("replication_state")')" = "replica streaming" ]; then
    old_streams=$(($(now) - t0))
  fi
  sleep 0.05
done
sleep 1
kill -TERM "$writer"
wait "$writer" || true
echo "returned after ${returned} ms; $candidate primary+running by ${new_primary:-never} ms; $old replica+streaming by ${old_streams:-never} ms"
echo "GET /cluster from $candidate after:"
curl -fsS --max-time 2 "$(api "$candidate")/cluster" | "$py" -c '
import json, sys
c = json.load(sys.stdin)
print("  pause:", c.get("pause", False))
for m in c["members"]:
    print("  ", m["name"], m["role"], m["state"], "TL", m.get("timeline"), "replay_lag", m.get("replay_lag"))'
echo "$old's own view: $(curl -fsS --max-time 2 "$(api "$old")/patroni")"
"$py" -c '
import json, sys
r = json.load(open(sys.argv[1]))
t0 = int(sys.argv[2])
print("writer: %d acknowledged, %d failed, %d lost; longest gap %.0f ms, from %+d ms to %+d ms after the switchover command started"
      % (r["acknowledged"], r["failed"], r["lost"], r["longest_gap_ms"], r["longest_gap_from_unix_ms"] - t0, r["longest_gap_to_unix_ms"] - t0))
' "$work/report.json" "$t0"
rm -rf "$work"
