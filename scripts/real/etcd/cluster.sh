#!/usr/bin/env bash
# A 3-member etcd cluster on loopback for the real-cluster tests (see docs/real-clusters.md).
#   cluster.sh up ROOT [BASEPORT]   members m1..m3 in ROOT/m1..m3 on the old version (versions.env), client ports
#                                   BASEPORT..BASEPORT+2 and peer ports BASEPORT+3..+5 (free ports when no BASEPORT);
#                                   writes ROOT/cluster.toml (a Baton cluster file naming profiles/etcd.toml, with
#                                   the new version's package and target_version) and
#                                   ROOT/cluster.env (KEY=VALUE lines for scripts and tests). Prints the cluster file.
#   cluster.sh down ROOT            stops every member of ROOT (idempotent); leaves the files.
# Needs scripts/real/install-etcd.sh to have run (it says so otherwise).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
die() { echo "cluster.sh: $*" >&2; exit 1; }
conf_get() { # FILE KEY
  local k v
  while IFS='=' read -r k v; do [ "$k" = "$2" ] && { echo "$v"; return 0; }; done <"$1"
  die "$1: no $2"
}
old_version="$(conf_get "$here/versions.env" ETCD_OLD_VERSION)"
new_version="$(conf_get "$here/versions.env" ETCD_NEW_VERSION)"
old_pkg="$repo/.tools/etcd/$old_version"
new_pkg="$repo/.tools/etcd/$new_version"
members=(m1 m2 m3)

[ $# -ge 2 ] || die "usage: cluster.sh up ROOT [BASEPORT] | down ROOT"
cmd="$1"
mkdir -p "$2"
root="$(cd "$2" && pwd)"
case "$root" in *[\"\\,=\ ]*) die "$root: the root path may not contain quotes, backslashes, commas, '=' or spaces" ;; esac

down() {
  local m rc=0
  for m in "${members[@]}"; do
    if [ -f "$root/$m/member.conf" ]; then "$here/member.sh" "$root/$m" stop >/dev/null || rc=1; fi
  done
  return $rc
}

case "$cmd" in
  down)
    [ $# -eq 2 ] || die "usage: cluster.sh down ROOT"
    down
    ;;
  up)
    [ $# -le 3 ] || die "usage: cluster.sh up ROOT [BASEPORT]"
    for pkg in "$old_pkg" "$new_pkg"; do
      [ -x "$pkg/bin/etcd" ] || die "$pkg/bin/etcd is missing: run bash scripts/real/install-etcd.sh"
    done
    [ ! -e "$root/cluster.toml" ] || die "$root already holds a cluster (cluster.sh down $root, then remove it)"
    if [ $# -eq 3 ]; then
      [[ "$3" =~ ^[0-9]+$ ]] && [ "$3" -ge 1024 ] && [ "$3" -le 65530 ] || die "BASEPORT must be 1024..65530"
      ports=($3 $(($3 + 1)) $(($3 + 2)) $(($3 + 3)) $(($3 + 4)) $(($3 + 5)))
    else
      command -v python3 >/dev/null || die "needs python3 to find free ports: apt-get install python3 (or give BASEPORT)"
      # Six ports the kernel hands out as free, all bound at once so that they differ.
      read -r -a ports <<<"$(python3 -c '
import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
    fi
    token="baton-$(basename "$root")-$$-$RANDOM"
    initial=""
    endpoints=""
    for i in 0 1 2; do
      initial+="${initial:+,}${members[$i]}=http://127.0.0.1:${ports[$((i + 3))]}"
      endpoints+="${endpoints:+,}127.0.0.1:${ports[$i]}"
    done
    trap 'down || true' ERR
    for i in 0 1 2; do
      m="${members[$i]}"
      mkdir -p "$root/$m"
      printf '%s\n' "name=$m" "client_url=http://127.0.0.1:${ports[$i]}" \
        "peer_url=http://127.0.0.1:${ports[$((i + 3))]}" "initial_cluster=$initial" \
        "cluster_token=$token" >"$root/$m/member.conf"
      # The node's control command (the profile's {var.ctl}): member.sh bound to this member's directory. It
      # sources member.sh in the bash running this script: one process start per call, not three (sh, env, bash).
      printf '#!%s\n. %q %q "$@"\n' "$BASH" "$here/member.sh" "$root/$m" >"$root/$m/ctl"
      chmod +x "$root/$m/ctl"
      "$here/member.sh" "$root/$m" install "$old_pkg" >/dev/null
    done
    # The members start together: none answers before a quorum is up.
    pids=()
    for m in "${members[@]}"; do
      "$here/member.sh" "$root/$m" start >"$root/$m/start.out" 2>&1 &
      pids+=($!)
    done
    failed=0
    for i in 0 1 2; do
      wait "${pids[$i]}" || { failed=1; cat "$root/${members[$i]}/start.out" >&2; }
    done
    [ $failed = 0 ] || { down || true; die "the cluster in $root did not come up"; }
    # Member IDs (hex, as move-leader takes them) from `member list`: ID, status, name, peer URLs, client URLs, learner.
    declare -A ids=()
    while IFS=', ' read -r id _status name _rest; do
      ids[$name]="$id"
    done < <("$old_pkg/bin/etcdctl" --endpoints "$endpoints" member list)
    {
      echo "# Written by scripts/real/etcd/cluster.sh: a 3-member etcd $old_version cluster on loopback."
      echo "[cluster]"
      echo "name = \"etcd-loopback\""
      echo "profile = \"$repo/profiles/etcd.toml\""
      for i in 0 1 2; do
        m="${members[$i]}"
        [ -n "${ids[$m]:-}" ] || die "member list did not show $m"
        echo
        echo "[[nodes]]"
        echo "name = \"$m\""
        echo "address = \"127.0.0.1:${ports[$i]}\""
        echo "executor = \"$m\""
        echo "vars = { ctl = \"$root/$m/ctl\", dir = \"$root/$m\", etcdctl = \"$root/$m/current/bin/etcdctl\", endpoints = \"$endpoints\", member_id = \"${ids[$m]}\" }"
      done
      echo
      echo "[upgrade]"
      echo "package = \"$new_pkg\""
      # etcd's versions are its own (3.5.1): a profile file cannot read them from the package's name.
      echo "target_version = \"$new_version\""
      # How often Baton re-asks a member that is not yet healthy and caught up: a quarter of etcd's 1 s election
      # timeout; each probe is one etcdctl call of a few ms on loopback.
      echo "poll_interval_ms = 250"
    } >"$root/cluster.toml"
    printf '%s\n' "endpoints=$endpoints" "members=${members[*]}" "old_package=$old_pkg" "new_package=$new_pkg" \
      "old_version=$old_version" "new_version=$new_version" \
      "m1_id=${ids[m1]}" "m2_id=${ids[m2]}" "m3_id=${ids[m3]}" >"$root/cluster.env"
    echo "$root/cluster.toml"
    ;;
  *) die "unknown command '$cmd' (up ROOT [BASEPORT] | down ROOT)" ;;
esac
