#!/usr/bin/env bash
# The seed's runbook as a plain shell script, against a simulated cluster:
# the baseline that `baton dev` is timed against (same simulator timings).
#   bash scripts/runbook-by-hand.sh            # creates its own cluster in a temp dir
# Prints the wall time and the simulator's report; exits non-zero when the report is UNSAFE.
# BATON_SIM overrides the baton-sim binary; BATON_SIM_INIT_ARGS adds `baton-sim init` flags (timings).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sim="${BATON_SIM:-$root/target/release/baton-sim}"
[ -x "$sim" ] || sim="$root/target/debug/baton-sim"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
# shellcheck disable=SC2086 # BATON_SIM_INIT_ARGS is a list of flags
"$sim" init --dir "$dir/sim" --nodes 3 --version 3.0.0-1 ${BATON_SIM_INIT_ARGS:-} >/dev/null
pkg="$dir/chef-backend_3.1.0-1_amd64.deb"
echo package > "$pkg"
on() { local node=$1; shift; PATH="$dir/sim/nodes/$node/bin:$PATH" "$@"; }
wait_synced() { # poll `status` on the node until postgresql shows one leader and every other node synced
  local node=$1
  until on "$node" chef-backend-ctl status | grep -Eq "^postgresql .*leader: 1; .*synced: 2$"; do sleep 0.2; done
}
role_of() { # the Role column (4th) of `cluster-status` on $1 for node $2
  on "$1" chef-backend-ctl cluster-status | awk -v n="$2" '$1 == n { print $4 }'
}
start=$(date +%s.%N)
on backend-1 chef-backend-ctl set-cluster-failover off
for node in backend-2 backend-3; do
  on "$node" chef-backend-ctl stop
  on "$node" dpkg -i "$pkg"
  on "$node" chef-backend-ctl start
  wait_synced "$node"
done
on backend-1 chef-backend-ctl set-cluster-failover on
on backend-1 chef-backend-ctl demote
on backend-1 chef-backend-ctl set-cluster-failover off
leader=$(on backend-2 chef-backend-ctl cluster-status | awk '$4 == "leader" { print $1 }')
[ -n "$leader" ] && [ "$leader" != backend-1 ] || { echo "no new leader after demote" >&2; exit 1; }
# The deposed leader must be a follower by its Role column (its PG column says `follower` at once) and the
# new leader must see every other node synced: after a leader change the other follower re-syncs too.
until [ "$(role_of "$leader" backend-1)" = follower ]; do sleep 0.2; done
wait_synced "$leader"
on backend-1 chef-backend-ctl stop
on backend-1 dpkg -i "$pkg"
on backend-1 chef-backend-ctl start
wait_synced backend-1
on backend-1 chef-backend-ctl set-cluster-failover on
on backend-1 chef-backend-ctl status
end=$(date +%s.%N)
code=0
"$sim" report --dir "$dir/sim" || code=$?
echo "runbook by hand: $(echo "$end - $start" | bc) s"
exit "$code"
