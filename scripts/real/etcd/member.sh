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
# Cost: Baton asks this script for a probe or an action about 40 times per upgrade, so each process start counts
# (each is 2-10 ms idle, several times that on a loaded machine). What it checks is done with bash builtins (no
# subshell, no date, sed, sleep or timeout), and the command whose output is the answer (etcdctl, etcd) is run with
# `exec` when nothing is left to do after it. cluster.sh's `ctl` sources this file rather than running it.
set -euo pipefail

die() { echo "member.sh: $*" >&2; exit 1; }
[ $# -ge 2 ] || die "usage: member.sh DIR stop|start|install PACKAGE|installed-version|package-version PACKAGE|running-version|status"
dir="$1"
cmd="$2"
[ -d "$dir" ] || die "$dir: no such member directory"
# Absolute, without "." or ".." components, repeated or trailing slashes: `cd DIR && pwd`, without its subshell.
absolute() { # PATH: sets REPLY
  case "$1" in
    /*/ | *//* | */./* | */../* | */. | */..) REPLY="$(cd "$1" && pwd)" ;;
    /*) REPLY="$1" ;;
    *) REPLY="$(cd "$1" && pwd)" ;;
  esac
}
absolute "$dir"
dir="$REPLY"

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

# Whether the member's etcd process is alive (not a zombie, and it is the etcd of this data dir); sets member_pid.
# Bash builtins only (no cat, sed, cut, and no subshell: callers do not use $(...)).
member_pid=""
running_pid() {
  [ -f "$dir/pid" ] || return 1
  # Initialised: a read that fails (etcd reaped between the test and the read) must leave "" behind, or `set -u`
  # stops the script at the `[ -n ... ]` below even inside a condition.
  local pid="" stat="" state=""
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
    [ "$a" = "--data-dir=$dir/data" ] && { member_pid="$pid"; return 0; }
  done
  return 1
}

# Unix time in ms from bash's clock ($EPOCHREALTIME: seconds, the locale's decimal point, 6 decimals).
journal() {
  local t="$EPOCHREALTIME"
  echo "${t%[.,]*}${t: -6:3} $*" >>"$dir/actions.log"
}

# Microseconds since the epoch, into REPLY.
now_us() {
  local t="$EPOCHREALTIME"
  REPLY=$((${t%[.,]*} * 1000000 + 10#${t: -6}))
}

# Waits SECONDS (fractions allowed) without a sleep process: a read with a timeout on a pipe no one writes to.
nap_fd=""
nap() { # SECONDS
  [ -n "$nap_fd" ] || exec {nap_fd}<> <(:)
  read -r -t "$1" -u "$nap_fd" _ || true
}

etcd_check() { # PACKAGE
  [ -x "$1/bin/etcd" ] || die "$1/bin/etcd: not an executable (a package is a directory with bin/etcd and bin/etcdctl)"
}

# The version `etcd --version` of PACKAGE prints ("etcd Version: 3.5.1"), into REPLY (empty if none).
read_version() { # PACKAGE
  local out="" re='etcd Version: ([^[:space:]]+)'
  REPLY=""
  out="$("$1/bin/etcd" --version)" || true
  if [[ "$out" =~ $re ]]; then REPLY="${BASH_REMATCH[1]}"; fi
}

etcd_version() { # PACKAGE
  etcd_check "$1"
  read_version "$1"
  [ -n "$REPLY" ] || die "$1/bin/etcd --version did not print its version"
}

healthy() {
  "$dir/current/bin/etcdctl" --endpoints "$client_url" --dial-timeout=1s --command-timeout=2s \
    endpoint health >/dev/null 2>&1
}

# etcdctl waits its whole --command-timeout for a member whose port refuses connections (it retries the dial until
# the deadline, and asks the endpoints one after another), so `endpoint-status` first tries every member's port,
# all at once: a refused connection fails at once, one that does not open within 1 s (a host that drops packets,
# a partition) is given up then (its connecting subshell is killed with SIGKILL), no later than etcdctl would
# have. Only the members that took a connection are asked; one that accepts but does not answer (hung) is still
# timed out by etcdctl itself after 1 s, and left out. Sets `up` (comma-separated) and `down` (space-separated)
# from the endpoints given.
# An endpoint is HOST:PORT, [IPV6]:PORT, or either after http:// or https:// (etcdctl's forms); `tcp_target`
# sets REPLY to HOST/PORT for bash's /dev/tcp (brackets dropped), or to nothing for anything else (left out: down).
tcp_target() { # ENDPOINT
  local ep="$1" v6='^\[([0-9A-Fa-f:.]+)\]:([0-9]+)$' plain='^([^]:/[]+):([0-9]+)$'
  REPLY=""
  ep="${ep#http://}"
  ep="${ep#https://}"
  ep="${ep%/}"
  if [[ "$ep" =~ $v6 ]] || [[ "$ep" =~ $plain ]]; then
    REPLY="${BASH_REMATCH[1]}/${BASH_REMATCH[2]}"
  fi
}

# The connection check: one forked subshell per endpoint (no exec), all at once, each writing "+I" (connected)
# or "-I" (refused, unreachable) into a pipe this shell holds open both ways; this shell reads the answers until
# every subshell has answered or 1 s has passed, then kills the subshells that have not (still in connect()).
# Costs one fork per endpoint and one for the pipe; no `timeout`, no second bash.
reachable() { # ENDPOINT...
  local i line fd start left
  local -a eps=("$@") pids=()
  local -A answered=() connected=()
  up="" down=""
  exec {fd}<> <(:)
  for i in "${!eps[@]}"; do
    tcp_target "${eps[$i]}"
    if [ -z "$REPLY" ]; then
      answered[$i]=1
      continue
    fi
    (if true 3<>"/dev/tcp/$REPLY"; then echo "+$i"; else echo "-$i"; fi) 2>/dev/null >&"$fd" &
    pids[$i]=$!
  done
  now_us
  start=$REPLY
  while [ "${#answered[@]}" -lt "${#eps[@]}" ]; do
    now_us
    left=$((1000000 - (REPLY - start)))
    [ "$left" -gt 0 ] || break
    printf -v left '%d.%06d' $((left / 1000000)) $((left % 1000000))
    read -r -t "$left" -u "$fd" line || break
    i="${line#[+-]}"
    [[ "$i" =~ ^[0-9]+$ ]] || continue
    answered[$i]=1
    if [ "${line:0:1}" = + ]; then connected[$i]=1; fi
  done
  exec {fd}>&-
  for i in "${!pids[@]}"; do
    if [ -z "${answered[$i]:-}" ]; then
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
  done
  if [ "${#pids[@]}" -gt 0 ]; then wait "${pids[@]}" 2>/dev/null || true; fi
  for i in "${!eps[@]}"; do
    if [ -n "${connected[$i]:-}" ]; then
      up+="${up:+,}${eps[$i]}"
    else
      down+="${down:+ }${eps[$i]}"
    fi
  done
}

case "$cmd" in
  endpoint-status)
    [ $# -eq 3 ] || die "usage: member.sh DIR endpoint-status HOST:PORT,HOST:PORT,..."
    IFS=',' read -r -a eps <<<"$3"
    [ "${#eps[@]}" -ge 1 ] || die "endpoint-status: no endpoints"
    reachable "${eps[@]}"
    if [ -z "$down" ]; then
      # etcdctl exits 1 (and leaves the member out of its JSON) when a member it asks does not answer.
      exec "$dir/current/bin/etcdctl" --endpoints "$up" --dial-timeout=1s --command-timeout=1s \
        endpoint status -w json
    fi
    for ep in $down; do
      echo "Failed to get the status of endpoint $ep (no TCP connection within 1 s)" >&2
    done
    if [ -z "$up" ]; then
      echo "[]"
      exit 1
    fi
    "$dir/current/bin/etcdctl" --endpoints "$up" --dial-timeout=1s --command-timeout=1s \
      endpoint status -w json || true
    exit 1
    ;;
  status)
    if running_pid; then echo "running $member_pid"; else echo "stopped"; fi
    ;;
  stop)
    [ $# -eq 2 ] || die "usage: member.sh DIR stop"
    if ! running_pid; then
      rm -f "$dir/pid"
      echo "stopped (was not running)"
      exit 0
    fi
    pid="$member_pid"
    kill -TERM "$pid" 2>/dev/null || true
    now_us
    deadline=$((REPLY + ${MEMBER_STOP_TIMEOUT:-30} * 1000000))
    # Looked at every 10 ms: running_pid reads two files of /proc, no process.
    while running_pid; do
      now_us
      if [ "$REPLY" -ge "$deadline" ]; then
        echo "member.sh: $dir: etcd (pid $pid) did not stop on SIGTERM in ${MEMBER_STOP_TIMEOUT:-30} s; SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
        nap 0.5
        ! running_pid || die "$dir: etcd (pid $pid) survived SIGKILL"
        break
      fi
      nap 0.01
    done
    rm -f "$dir/pid"
    journal stop "$pid"
    echo "stopped (pid $pid)"
    ;;
  start)
    [ $# -eq 2 ] || die "usage: member.sh DIR start"
    read_conf
    [ -x "$dir/current/bin/etcd" ] || die "$dir/current: no version installed (member.sh $dir install PACKAGE)"
    if running_pid; then
      pid="$member_pid"
    else
      [ -d "$dir/data" ] || mkdir -m 700 "$dir/data"
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
      # (`etcd --version` runs while the member starts.)
      read_version "$dir/current"
      journal start "$pid" "$REPLY"
    fi
    # Until it answers `endpoint health` (a quorum read). etcd takes connections on its client port early and
    # answers once it has joined the cluster, so etcdctl is asked only once the port takes a connection (looked at
    # every 10 ms with bash's /dev/tcp, no process), and then waits for the answer itself.
    tcp_target "$client_url"
    client_tcp="$REPLY"
    now_us
    deadline=$((REPLY + ${MEMBER_START_TIMEOUT:-60} * 1000000))
    # `true`, not `:`: with POSIXLY_CORRECT a special builtin's failed redirection would end the script. A
    # client_url this cannot read as host:port is asked with etcdctl directly (no port check).
    until { [ -z "$client_tcp" ] || { true 3<>"/dev/tcp/$client_tcp"; } 2>/dev/null; } && healthy; do
      if ! running_pid; then
        tail -n 20 "$dir/etcd.log" >&2 || true
        die "$dir: etcd exited while starting (log: $dir/etcd.log)"
      fi
      now_us
      [ "$REPLY" -lt "$deadline" ] || die "$dir: etcd (pid $pid) not healthy after ${MEMBER_START_TIMEOUT:-60} s"
      nap 0.01
    done
    echo "running (pid $pid)"
    ;;
  install)
    [ $# -eq 3 ] || die "usage: member.sh DIR install PACKAGE"
    [ -d "$3" ] || die "$3: no such package directory"
    absolute "$3"
    pkg="$REPLY"
    etcd_version "$pkg"
    version="$REPLY"
    [ -x "$pkg/bin/etcdctl" ] || die "$pkg/bin/etcdctl: not an executable"
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
    etcd_check "$dir/current"
    exec "$dir/current/bin/etcd" --version
    ;;
  package-version)
    [ $# -eq 3 ] || die "usage: member.sh DIR package-version PACKAGE"
    etcd_check "$3"
    exec "$3/bin/etcd" --version
    ;;
  running-version)
    [ $# -eq 2 ] || die "usage: member.sh DIR running-version"
    read_conf
    running_pid || die "$dir: etcd is not running"
    exec "$dir/current/bin/etcdctl" --endpoints "$client_url" --dial-timeout=2s --command-timeout=5s \
      endpoint status -w json
    ;;
  *) die "unknown command '$cmd' (stop|start|install PACKAGE|installed-version|package-version PACKAGE|running-version|status)" ;;
esac
