#!/usr/bin/env bash
# The manual baseline: a rolling upgrade of the loopback etcd cluster in ROOT (cluster.sh up ROOT) done by hand, the
# way an operator would script it, to compare Baton with:
#   1. each follower in turn: stop, install PACKAGE, start (member.sh waits until it answers), then wait until it
#      has applied everything the leader had committed when it came back, and every member is healthy;
#   2. etcdctl move-leader to the first upgraded follower; wait until the cluster shows it leading;
#   3. the old leader: stop, install, start, caught up, healthy.
# PACKAGE defaults to the new version of versions.env. Prints one line per step ("UNIX_MS STEP NODE ...") and at
# the end "done WALL_MS leader=OLD_LEADER target=NEW_LEADER order=M,M,M".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
die() { echo "manual-upgrade.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: manual-upgrade.sh ROOT [PACKAGE]"
root="$(cd "$1" && pwd)"
[ -f "$root/cluster.env" ] || die "$root/cluster.env is missing (cluster.sh up $root)"
declare -A env=()
while IFS='=' read -r k v; do [ -n "$k" ] && env[$k]="$v"; done <"$root/cluster.env"
pkg="${2:-${env[new_package]}}"
endpoints="${env[endpoints]}"
read -r -a members <<<"${env[members]}"
IFS=',' read -r -a eps <<<"$endpoints"
declare -A endpoint_of=()
for i in "${!members[@]}"; do endpoint_of[${members[$i]}]="${eps[$i]}"; done
# The operator's etcdctl: the new version's (it speaks to 3.4 and 3.5 members alike).
etcdctl="$pkg/bin/etcdctl"
[ -x "$etcdctl" ] || die "$etcdctl is missing"
TIMEOUT="${MANUAL_STEP_TIMEOUT:-60}"

now_ms() { date +%s%3N; }
say() { echo "$(now_ms) $*"; }

# `endpoint status` of one member, as simple fields: ID VERSION IS_LEADER RAFT_INDEX APPLIED_INDEX.
status_of() { # MEMBER
  local line
  line="$("$etcdctl" --endpoints "${endpoint_of[$1]}" --dial-timeout=1s --command-timeout=2s endpoint status 2>/dev/null)" ||
    return 1
  # ENDPOINT, ID, VERSION, DB SIZE, IS LEADER, IS LEARNER, RAFT TERM, RAFT INDEX, RAFT APPLIED INDEX, ERRORS
  IFS=',' read -r _ep id version _size leader _learner _term index applied _errors <<<"$line"
  echo "$id $version $leader $index $applied" | tr -s ' '
}

leader() { # prints the member that every reachable member names as leader
  local m fields
  for m in "${members[@]}"; do
    if fields="$(status_of "$m")"; then
      set -- $fields
      [ "$3" = true ] && { echo "$m"; return 0; }
    fi
  done
  return 1
}

wait_for() { # DESCRIPTION COMMAND...
  local what="$1" deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "timed out after $TIMEOUT s waiting for $what"
    sleep 0.05
  done
}

all_healthy() { "$etcdctl" --endpoints "$endpoints" --dial-timeout=1s --command-timeout=2s endpoint health >/dev/null 2>&1; }

applied_at_least() { # MEMBER INDEX
  local fields
  fields="$(status_of "$1")" || return 1
  set -- $fields "$2"
  [ "$5" -ge "$6" ]
}

upgrade_member() { # MEMBER
  local m="$1" ldr fields
  say stop "$m"
  "$root/$m/ctl" stop >/dev/null
  say install "$m"
  "$root/$m/ctl" install "$pkg" >/dev/null
  say start "$m"
  "$root/$m/ctl" start >/dev/null
  # Caught up: it has applied what the leader had committed once it answered.
  wait_for "a leader" leader >/dev/null
  ldr="$(leader)"
  fields="$(status_of "$ldr")" || die "the leader $ldr did not answer"
  set -- $fields
  wait_for "$m to apply index $4" applied_at_least "$m" "$4"
  wait_for "every member healthy" all_healthy
  say caught_up "$m"
}

start_ms="$(now_ms)"
wait_for "every member healthy" all_healthy
wait_for "a leader" leader >/dev/null
old_leader="$(leader)"
say leader "$old_leader"
order=()
target=""
for m in "${members[@]}"; do
  [ "$m" = "$old_leader" ] && continue
  upgrade_member "$m"
  order+=("$m")
  [ -n "$target" ] || target="$m"
done
read -r target_id _ <<<"$(status_of "$target")"
[ -n "$target_id" ] || die "$target did not answer"
say move_leader "$old_leader" "$target"
"$etcdctl" --endpoints "$endpoints" --dial-timeout=2s --command-timeout=10s move-leader "$target_id" >/dev/null
is_leader() { [ "$(leader 2>/dev/null)" = "$1" ]; }
wait_for "$target to lead" is_leader "$target"
say leader "$target"
upgrade_member "$old_leader"
order+=("$old_leader")
wall=$(($(now_ms) - start_ms))
joined="$(IFS=','; echo "${order[*]}")"
echo "done $wall leader=$old_leader target=$target order=$joined"
