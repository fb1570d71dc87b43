#!/usr/bin/env bash
# The manual baseline: what an operator does by hand to roll the cluster at ROOT (made by
# cluster.sh up) to the new PostgreSQL prefix, leader last:
#
#   pause (member.sh pause: PATCH /config, as `patronictl pause --wait`)
#   each replica, one at a time: member.sh stop, install NEW, start; wait until it
#     streams with lag 0 (GET /cluster)
#   switchover from OLD to the first upgraded replica, still paused (member.sh switchover: POST /switchover,
#     as `patronictl switchover --candidate --force`); wait until the candidate leads and every other member
#     streams
#   the old leader: stop, install NEW, start; wait as for a replica
#   resume (member.sh resume)
#
# These are the commands profiles/patroni.toml gives Baton (Patroni's REST API with curl), so the baseline and
# Baton run the same steps with the same tools. `patronictl` does the same through Python and took 1.5-7 s a
# call on the loaded test machine: with it, this script took 66-72 s where it now takes about half.
#
#   manual-upgrade.sh ROOT [--switchover-unpaused]
#
# --switchover-unpaused resumes before the switchover and pauses again after it (to
# measure whether the pause should wrap the switchover). Prints one line per step with
# its time since the start, then `wall_ms=N order=a,b,c leader_before=X leader_after=Y`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ "$#" -ge 1 ] || { echo "usage: manual-upgrade.sh ROOT [--switchover-unpaused]" >&2; exit 1; }
root="$(cd "$1" && pwd)"
unpaused_switchover=0
[ "${2:-}" = "--switchover-unpaused" ] && unpaused_switchover=1
[ -f "$root/env" ] || { echo "manual-upgrade.sh: no cluster at $root" >&2; exit 1; }
venv="$(sed -n 's/^venv=//p' "$root/env")"
new_prefix="$(sed -n 's/^new_prefix=//p' "$root/env")"
read -r -a members <<<"$(sed -n 's/^members=//p' "$root/env")"
WAIT_S="${MANUAL_WAIT_S:-60}"
t0=$(date +%s%N)
log() { echo "$(( ($(date +%s%N) - t0) / 1000000 ))ms $*"; }

# GET /cluster from the first member whose Patroni answers (the DCS's view: every member's role, state, lag).
topology() {
  local m port
  for m in "${members[@]}"; do
    port="$(sed -n 's/^rest_port=//p' "$root/members/$m/member.conf")"
    curl -fsS --connect-timeout 2 --max-time 5 "http://127.0.0.1:$port/cluster" 2>/dev/null && return 0
  done
  return 1
}
query() { # query EXPR: evaluates EXPR over `members` (the parsed list) and prints it
  topology | "$venv/bin/python" -c "import json, sys; members = json.load(sys.stdin)['members']; print($1)"
}
leader() { query '",".join(m["name"] for m in members if m["role"] == "leader")'; }

# Waits until LEADER leads (running) and every other member streams with lag 0.
wait_settled() {
  local want="$1" deadline=$((SECONDS + WAIT_S))
  until [ "$(query "all((m['role'] == 'leader' and m['state'] == 'running') if m['name'] == '$want' else (m['state'] == 'streaming' and m.get('receive_lag') == 0 and m.get('replay_lag') == 0) for m in members) and len(members) == ${#members[@]}" 2>/dev/null)" = True ]; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "manual-upgrade.sh: the cluster did not settle with $want leading in ${WAIT_S}s" >&2; topology >&2; exit 1; }
    sleep 0.1
  done
}

roll() {
  local m="$1"
  "$here/member.sh" "$root/members/$m" stop >/dev/null
  "$here/member.sh" "$root/members/$m" install "$new_prefix" >/dev/null
  "$here/member.sh" "$root/members/$m" start >/dev/null
  wait_settled "$2"
  log "upgraded $m"
}

old_leader="$(leader)"
[ -n "$old_leader" ] && [[ "$old_leader" != *,* ]] || { echo "manual-upgrade.sh: no single leader ($old_leader)" >&2; exit 1; }
wait_settled "$old_leader"
log "settled, $old_leader leads"
"$here/member.sh" "$root/members/$old_leader" pause >/dev/null
log "paused"
order=()
candidate=""
for m in "${members[@]}"; do
  [ "$m" = "$old_leader" ] && continue
  roll "$m" "$old_leader"
  order+=("$m")
  [ -n "$candidate" ] || candidate="$m"
done
if [ "$unpaused_switchover" = 1 ]; then
  "$here/member.sh" "$root/members/$old_leader" resume >/dev/null
  log "resumed for the switchover"
fi
"$here/member.sh" "$root/members/$old_leader" switchover "$old_leader" "$candidate" >/dev/null
log "switchover to $candidate returned"
wait_settled "$candidate"
log "switched over to $candidate"
if [ "$unpaused_switchover" = 1 ]; then
  "$here/member.sh" "$root/members/$candidate" pause >/dev/null
  log "paused again"
fi
roll "$old_leader" "$candidate"
order+=("$old_leader")
"$here/member.sh" "$root/members/$candidate" resume >/dev/null
log "resumed"
new_leader="$(leader)"
(IFS=,; echo "wall_ms=$(( ($(date +%s%N) - t0) / 1000000 )) order=${order[*]} leader_before=$old_leader leader_after=$new_leader")
