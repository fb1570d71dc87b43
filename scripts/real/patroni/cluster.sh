#!/usr/bin/env bash
# A real 3-member Patroni + PostgreSQL 15 cluster on loopback, etcd as its DCS:
#
#   cluster.sh up ROOT     one etcd and members pg1, pg2, pg3 on free loopback ports, every
#                          member on the OLD PostgreSQL prefix; waits until one leads and
#                          two stream; writes ROOT/cluster.toml (a Baton cluster file
#                          naming profiles/patroni.toml) and ROOT/env (ports, paths)
#   cluster.sh down ROOT   stops every member (Patroni and PostgreSQL) and etcd; fails if a
#                          process of ROOT is left
#
# Needs scripts/real/install-patroni.sh first. Runs as root (members run as postgres).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
# Where install-patroni.sh put the tools (a system folder when postgres cannot reach the clone).
tools="$(cat "$repo/.tools/patroni.location" 2>/dev/null || echo "$repo/.tools/patroni")"
venv="$tools/venv"
OLD="${PATRONI_PG_OLD:-15.18}"
NEW="${PATRONI_PG_NEW:-15.20}"
MEMBERS=(pg1 pg2 pg3)
SCOPE=baton

die() {
  echo "cluster.sh: $*" >&2
  exit 1
}

[ "$#" = 2 ] || die "usage: cluster.sh up ROOT | down ROOT"
cmd="$1"
root="$2"

up() {
  [ "$(id -u)" = 0 ] || die "run as root (members run as postgres)"
  for v in "$OLD" "$NEW"; do
    [ -x "$tools/pg/$v/usr/lib/postgresql/15/bin/postgres" ] ||
      die "PostgreSQL $v is not in $tools/pg: run scripts/real/install-patroni.sh"
  done
  [ -x "$venv/bin/patroni" ] || die "no Patroni in $venv: run scripts/real/install-patroni.sh"
  command -v etcd >/dev/null || die "etcd is missing: apt-get install -y etcd-server etcd-client"
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
  [ ! -e "$root/env" ] || die "$root already holds a cluster (cluster.sh down $root first)"
  chmod 755 "$root"
  setpriv --reuid=postgres --regid=postgres --init-groups test -x "$root" ||
    die "the postgres user cannot reach $root (every parent directory needs o+x)"

  # Free loopback ports: 2 for etcd, 2 per member.
  local ports
  read -r -a ports < <("$venv/bin/python" -c '
import socket
socks = []
for _ in range(8):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))')
  local etcd_client="${ports[0]}" etcd_peer="${ports[1]}"

  mkdir -p "$root/etcd"
  setsid etcd --name dcs --data-dir "$root/etcd/data" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "dcs=http://127.0.0.1:$etcd_peer" --initial-cluster-state new \
    </dev/null >"$root/etcd/etcd.log" 2>&1 &
  echo $! >"$root/etcd/etcd.pid"
  local deadline=$((SECONDS + 30))
  until ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$etcd_client" endpoint health >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || die "etcd did not become healthy; see $root/etcd/etcd.log"
    sleep 0.1
  done

  {
    echo "etcd_client=$etcd_client"
    echo "venv=$venv"
    echo "old_prefix=$tools/pg/$OLD"
    echo "new_prefix=$tools/pg/$NEW"
    echo "members=${MEMBERS[*]}"
  } >"$root/env.part"

  local i=0 m
  for m in "${MEMBERS[@]}"; do
    local pg_port="${ports[$((2 + 2 * i))]}" rest_port="${ports[$((3 + 2 * i))]}"
    local d="$root/members/$m"
    mkdir -p "$d"
    printf 'name=%s\npg_port=%s\nrest_port=%s\nvenv=%s\n' "$m" "$pg_port" "$rest_port" "$venv" >"$d/member.conf"
    echo "$tools/pg/$OLD" >"$d/installed-prefix"
    sed -e "s|@NAME@|$m|g" -e "s|@DIR@|$d|g" -e "s|@PG_PORT@|$pg_port|g" -e "s|@REST_PORT@|$rest_port|g" \
      -e "s|@ETCD@|127.0.0.1:$etcd_client|g" -e "s|@SCOPE@|$SCOPE|g" \
      "$here/patroni.yml.in" >"$d/patroni.yml.in"
    echo "$m=127.0.0.1:$pg_port,127.0.0.1:$rest_port" >>"$root/env.part"
    i=$((i + 1))
  done
  chown -R postgres:postgres "$root/members"
  chmod 700 "$root/members"/*
  chmod 755 "$root/members"

  # The first member bootstraps; the others copy it with pg_basebackup.
  "$here/member.sh" "$root/members/${MEMBERS[0]}" start >/dev/null
  local pids=()
  for m in "${MEMBERS[@]:1}"; do
    "$here/member.sh" "$root/members/$m" start >/dev/null &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || die "a member did not start; see $root/members/*/patroni.log"; done

  {
    echo "# A Baton cluster file for the real Patroni cluster made by scripts/real/patroni/cluster.sh."
    echo "[cluster]"
    echo "name = \"patroni-$SCOPE\""
    echo "profile = \"$repo/profiles/patroni.toml\""
    for m in "${MEMBERS[@]}"; do
      local d="$root/members/$m" conf pg_port rest_port
      pg_port="$(sed -n 's/^pg_port=//p' "$d/member.conf")"
      rest_port="$(sed -n 's/^rest_port=//p' "$d/member.conf")"
      echo
      echo "[[nodes]]"
      echo "name = \"$m\""
      echo "address = \"127.0.0.1:$pg_port\""
      echo "executor = \"$m\""
      echo "vars = { ctl = \"$here/member.sh\", dir = \"$d\", patronictl = \"$venv/bin/patronictl\", config = \"$d/patroni.yml\", api = \"http://127.0.0.1:$rest_port\" }"
    done
    echo
    echo "[upgrade]"
    echo "package = \"$tools/pg/$NEW\""
    # The version PostgreSQL reports (a profile file cannot read it from the prefix's path).
    echo "target_version = \"$NEW\""
    # How often Baton re-asks a member that is not yet healthy and caught up: every 100 ms, as the manual
    # baseline (manual-upgrade.sh) re-reads GET /cluster. A member shows "streaming" in the DCS at its Patroni's
    # next HA cycle (loop_wait 2 s), so a slower poll only adds its own wait on top (500 ms cost 6.5 s of poll
    # waits in a 35 s upgrade); each round is a handful of curl calls of about 50 ms.
    echo "poll_interval_ms = 100"
  } >"$root/cluster.toml"
  mv "$root/env.part" "$root/env"
  echo "$root/cluster.toml"
}

# Pids of processes whose command line names ROOT (Patroni, PostgreSQL, etcd of this cluster).
strays() {
  local p
  for p in /proc/[0-9]*; do
    tr '\0' ' ' 2>/dev/null <"$p/cmdline" | grep -qF "$root/" && echo "${p#/proc/}"
  done | grep -vx "$$" || true
}

down() {
  [ -d "$root" ] || die "no cluster at $root"
  root="$(cd "$root" && pwd)"
  # Pause first (when etcd is up) so stopping a leader does not start a failover.
  if [ -f "$root/members/${MEMBERS[0]}/patroni.yml" ]; then
    timeout 10 "$venv/bin/patronictl" -c "$root/members/${MEMBERS[0]}/patroni.yml" pause >/dev/null 2>&1 || true
  fi
  local m pids=() failed=0
  for m in "${MEMBERS[@]}"; do
    if [ -f "$root/members/$m/member.conf" ]; then
      "$here/member.sh" "$root/members/$m" stop >/dev/null &
      pids+=($!)
    fi
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
  local epid=""
  [ -f "$root/etcd/etcd.pid" ] && read -r epid <"$root/etcd/etcd.pid"
  if [[ "$epid" =~ ^[0-9]+$ ]] && kill -0 "$epid" 2>/dev/null; then
    kill -TERM "$epid"
    local deadline=$((SECONDS + 20))
    while kill -0 "$epid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    kill -0 "$epid" 2>/dev/null && kill -KILL "$epid"
  fi
  rm -f "$root/etcd/etcd.pid" "$root/env"
  local left
  left="$(strays)"
  if [ -n "$left" ]; then
    echo "cluster.sh: processes of $root were left running, killing them: $left" >&2
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
    failed=1
  fi
  [ "$failed" = 0 ] || die "the cluster at $root did not stop cleanly"
}

case "$cmd" in
  up) up ;;
  down) down ;;
  *) die "usage: cluster.sh up ROOT | down ROOT" ;;
esac
