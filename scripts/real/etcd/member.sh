#!/usr/bin/env bash
# Controls one etcd member of a loopback test cluster (see docs/real-clusters.md). Argv interface, nothing from
# the member's files is evaluated as code:
#   member.sh DIR stop                  SIGTERM, wait until the process is gone; nothing to do if it is stopped
#   member.sh DIR start                 start on DIR/current's binaries (if not running), wait until it answers
#   member.sh DIR install PACKAGE       point DIR/current at PACKAGE (a directory with bin/etcd, bin/etcdctl): what
#                                       the next start runs. Never restarts the member.
#   member.sh DIR installed-version     `etcd --version` of DIR/current (what the next start runs)
#   member.sh DIR package-version PACKAGE  `etcd --version` of PACKAGE
#   member.sh DIR running-version       `etcdctl endpoint status -w json` of this member: the version it runs now
#   member.sh DIR status                "running PID" or "stopped"
#   member.sh DIR endpoint-status ENDPOINT,...  `etcdctl endpoint status -w json` of the members whose port
#                                       takes a TCP connection (tried all at once, 1 s at most): the same JSON as
#                                       one etcdctl over all the endpoints, but a stopped member is left out at
#                                       once instead of costing etcdctl's whole command timeout. Exit 1 when any
#                                       member is left out. ENDPOINT: HOST:PORT, [IPV6]:PORT, either after
#                                       http:// or https:// (passed to etcdctl as given; TLS flags are not).
# DIR holds member.conf (name, client_url, peer_url, initial_cluster, cluster_token; written by cluster.sh),
# data/ (etcd's data dir), pid, etcd.log, current (a symlink to the installed package) and actions.log: one line
# per action that changed something ("UNIX_MS stop PID", "UNIX_MS install VERSION", "UNIX_MS start PID VERSION"),
# so that a test can check who was upgraded, how often and in which order, whoever drove the upgrade.
# Timeouts (seconds): MEMBER_START_TIMEOUT (60), MEMBER_STOP_TIMEOUT (30).
set -euo pipefail

die() { echo "member.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: member.sh DIR stop|start|install PACKAGE|installed-version|package-version PACKAGE|running-version|status"
dir="$1"
cmd="$2"
[ -d "$dir" ] || die "$dir: no such member directory"
dir="$(cd "$dir" && pwd)"

name="" client_url="" peer_url="" initial_cluster="" cluster_token=""
read_conf() {
  [ -f "$dir/member.conf" ] || die "$dir/member.conf is missing (cluster.sh writes it)"
  local k v
  while IFS='=' read -r k v; do
    case "$k" in
      name) name="$v" ;;
      client_url) client_url="$v" ;;
      peer_url) peer_url="$v" ;;
      initial_cluster) initial_cluster="$v" ;;
      cluster_token) cluster_token="$v" ;;
      ''|'#'*) ;;
      *) die "$dir/member.conf: unknown key '$k'" ;;
    esac
  done <"$dir/member.conf"
  for k in name client_url peer_url initial_cluster cluster_token; do
    [ -n "${!k}" ] || die "$dir/member.conf: '$k' is missing"
  done
}

# The member's pid when its etcd process is alive (not a zombie, and it is the etcd of this data dir).
# Bash builtins only (no cat, sed, cut): every probe and action of the profile asks it.
running_pid() {
  [ -f "$dir/pid" ] || return 1
  local pid stat state
  read -r pid <"$dir/pid" || [ -n "$pid" ] || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [ -r "/proc/$pid/stat" ] || return 1
  read -r stat <"/proc/$pid/stat" 2>/dev/null || [ -n "$stat" ] || return 1
  # "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the state follows its last ") ".
  state="${stat##*) }"
  state="${state%% *}"
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ] || return 1
  local args=()
  mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
  local a
  for a in "${args[@]}"; do
    [ "$a" = "--data-dir=$dir/data" ] && { echo "$pid"; return 0; }
  done
  return 1
}

journal() { echo "$(date +%s%3N) $*" >>"$dir/actions.log"; }

etcd_version() { # PACKAGE
  [ -x "$1/bin/etcd" ] || die "$1/bin/etcd: not an executable (a package is a directory with bin/etcd and bin/etcdctl)"
  "$1/bin/etcd" --version
}

healthy() {
  "$dir/current/bin/etcdctl" --endpoints "$client_url" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1
}

# etcdctl waits its whole --command-timeout for a member whose port refuses connections (it retries the dial until
# the deadline, and asks the endpoints one after another), so `endpoint-status` first tries every member's port,
# all at once: a refused connection fails at once, one that does not open within 1 s (a host that drops packets,
# a partition) is given up then (by `timeout`, which signals only its own process group: SIGTERM, SIGKILL 1 s
# later if need be), no later than etcdctl would have. Only the members that took a connection are
# asked; one that accepts but does not answer (hung) is still timed out by etcdctl itself after 1 s, and left
# out. Sets `up` (comma-separated) and `down` (space-separated) from the endpoints given.
# An endpoint is HOST:PORT, [IPV6]:PORT, or either after http:// or https:// (etcdctl's forms); `tcp_target`
# prints HOST/PORT for bash's /dev/tcp (brackets dropped), or nothing for anything else (left out: down).
tcp_target() { # ENDPOINT
  local ep="$1" host port v6='^\[([0-9A-Fa-f:.]+)\]:([0-9]+)$' plain='^([^]:/[]+):([0-9]+)$'
  ep="${ep#http://}"
  ep="${ep#https://}"
  ep="${ep%/}"
  if [[ "$ep" =~ $v6 ]]; then
    host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}"
  elif [[ "$ep" =~ $plain ]]; then
    host="${BASH_REMATCH[1]}" port="${BASH_REMATCH[2]}"
  else
    return 0
  fi
  echo "$host/$port"
}

reachable() { # ENDPOINT...
  local ep valid=() line target
  local -A connected=()
  up="" down=""
  for ep in "$@"; do
    target="$(tcp_target "$ep")"
    if [ -n "$target" ]; then valid+=("$ep" "$target"); fi
  done
  if [ "${#valid[@]}" -gt 0 ]; then
    # One shell under `timeout`, one forked subshell per endpoint (no exec each): a subshell prints its endpoint
    # once the connection opened. At 1 s timeout signals its whole process group, the subshells still in
    # connect() included. Arguments come in pairs: the endpoint as given, then its HOST/PORT.
    while IFS= read -r line; do
      connected[$line]=1
    done < <(timeout -k 1 1 bash -c '
      while [ $# -ge 2 ]; do
        (exec 3<>"/dev/tcp/$2" && echo "$1") 2>/dev/null &
        shift 2
      done
      wait' _ "${valid[@]}" 2>/dev/null)
  fi
  for ep in "$@"; do
    if [ -n "${connected[$ep]:-}" ]; then
      up+="${up:+,}$ep"
    else
      down+="${down:+ }$ep"
    fi
  done
}

case "$cmd" in
  endpoint-status)
    [ $# -eq 3 ] || die "usage: member.sh DIR endpoint-status HOST:PORT,HOST:PORT,..."
    IFS=',' read -r -a eps <<<"$3"
    [ "${#eps[@]}" -ge 1 ] || die "endpoint-status: no endpoints"
    reachable "${eps[@]}"
    rc=0
    for ep in $down; do
      echo "Failed to get the status of endpoint $ep (no TCP connection within 1 s)" >&2
      rc=1
    done
    if [ -z "$up" ]; then
      echo "[]"
      exit 1
    fi
    # etcdctl exits 1 (and leaves the member out of its JSON) when a member it asks does not answer.
    "$dir/current/bin/etcdctl" --endpoints "$up" --dial-timeout=1s --command-timeout=1s \
      endpoint status -w json || rc=1
    exit $rc
    ;;
  status)
    if pid="$(running_pid)"; then echo "running $pid"; else echo "stopped"; fi
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: member.sh DIR stop"
    if ! pid="$(running_pid)"; then
      rm -f "$dir/pid"
      echo "stopped (was not running)"
      exit 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + ${MEMBER_STOP_TIMEOUT:-30}))
    while running_pid >/dev/null; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        echo "member.sh: $dir: etcd (pid $pid) did not stop on SIGTERM in ${MEMBER_STOP_TIMEOUT:-30} s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
        running_pid >/dev/null && die "$dir: etcd (pid $pid) survived SIGKILL"
        break
      fi
      sleep 0.05
    done
    rm -f "$dir/pid"
    journal stop "$pid"
    echo "stopped (pid $pid)"
    ;;
  start)
    [ $# -eq 2 ] || die "usage: member.sh DIR start"
    read_conf
    [ -x "$dir/current/bin/etcd" ] || die "$dir/current: no version installed (member.sh $dir install PACKAGE)"
    if ! pid="$(running_pid)"; then
      mkdir -p "$dir/data"
      chmod 700 "$dir/data"
      # A session of its own, so that killing the process group of the command that started it (a timed-out
      # action) does not kill the member; `stop` and cluster.sh's `down` stop it by its pid.
      setsid "$dir/current/bin/etcd" \
        --name="$name" --data-dir="$dir/data" \
        --listen-client-urls="$client_url" --advertise-client-urls="$client_url" \
        --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
        --initial-cluster="$initial_cluster" --initial-cluster-state=new \
        --initial-cluster-token="$cluster_token" --logger=zap --log-outputs=stderr \
        </dev/null >>"$dir/etcd.log" 2>&1 &
      pid=$!
      echo "$pid" >"$dir/pid"
      journal start "$pid" "$(etcd_version "$dir/current" | sed -n 's/^etcd Version: //p')"
    fi
    deadline=$((SECONDS + ${MEMBER_START_TIMEOUT:-60}))
    until healthy; do
      if ! running_pid >/dev/null; then
        tail -n 20 "$dir/etcd.log" >&2 || true
        die "$dir: etcd exited while starting (log: $dir/etcd.log)"
      fi
      [ "$SECONDS" -lt "$deadline" ] || die "$dir: etcd (pid $pid) not healthy after ${MEMBER_START_TIMEOUT:-60} s"
      sleep 0.1
    done
    echo "running (pid $pid)"
    ;;
  install)
    [ $# -eq 3 ] || die "usage: member.sh DIR install PACKAGE"
    [ -d "$3" ] || die "$3: no such package directory"
    pkg="$(cd "$3" && pwd)"
    etcd_version "$pkg" >/dev/null
    [ -x "$pkg/bin/etcdctl" ] || die "$pkg/bin/etcdctl: not an executable"
    version="$(etcd_version "$pkg" | sed -n 's/^etcd Version: //p')"
    if [ "$(readlink "$dir/current" 2>/dev/null || true)" = "$pkg" ]; then
      journal install-unchanged "$version"
      echo "installed $version (already)"
      exit 0
    fi
    ln -sfn "$pkg" "$dir/current.new"
    mv -T "$dir/current.new" "$dir/current"
    journal install "$version"
    echo "installed $version"
    ;;
  installed-version)
    [ $# -eq 2 ] || die "usage: member.sh DIR installed-version"
    [ -e "$dir/current" ] || die "$dir/current: no version installed"
    etcd_version "$dir/current"
    ;;
  package-version)
    [ $# -eq 3 ] || die "usage: member.sh DIR package-version PACKAGE"
    etcd_version "$3"
    ;;
  running-version)
    [ $# -eq 2 ] || die "usage: member.sh DIR running-version"
    read_conf
    running_pid >/dev/null || die "$dir: etcd is not running"
    "$dir/current/bin/etcdctl" --endpoints "$client_url" --dial-timeout=2s --command-timeout=5s \
      endpoint status -w json
    ;;
  *) die "unknown command '$cmd' (stop|start|install PACKAGE|installed-version|package-version PACKAGE|running-version|status)" ;;
esac
