#!/usr/bin/env bash
# The seed's runbook as a plain shell script, against a simulated cluster:
# the baseline that `baton dev` is timed against (same simulator timings).
#   bash scripts/runbook-by-hand.sh            # creates its own cluster in a temp dir
# Prints the wall time and the simulator's report.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
sim="$root/target/release/baton-sim"
[ -x "$sim" ] || sim="$root/target/debug/baton-sim"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
"$sim" init --dir "$dir/sim" --nodes 3 --version 3.0.0-1 >/dev/null
pkg="$dir/chef-backend_3.1.0-1_amd64.deb"
echo package > "$pkg"
on() { local node=$1; shift; PATH="$dir/sim/nodes/$node/bin:$PATH" "$@"; }
wait_synced() { # poll `status` on the node until postgresql shows every follower synced
  local node=$1
  until on "$node" chef-backend-ctl status | grep -q "synced: 2"; do sleep 0.2; done
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
until on backend-2 chef-backend-ctl cluster-status | grep -q "backend-1 .* follower "; do sleep 0.2; done
on backend-1 chef-backend-ctl stop
on backend-1 dpkg -i "$pkg"
on backend-1 chef-backend-ctl start
wait_synced backend-1
on backend-1 chef-backend-ctl set-cluster-failover on
on backend-1 chef-backend-ctl status
end=$(date +%s.%N)
"$sim" report --dir "$dir/sim"
echo "runbook by hand: $(echo "$end - $start" | bc) s"
