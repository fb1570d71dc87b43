#!/usr/bin/env bash
# Controls one Patroni member (its Patroni process and the PostgreSQL it runs),
# as a node's control command for Baton's profiles/patroni.toml:
#
#   member.sh DIR stop                 stop Patroni and its PostgreSQL (idempotent; also
#                                      under `patronictl pause`, where stopping Patroni
#                                      alone leaves PostgreSQL running)
#   member.sh DIR start                start Patroni on the installed prefix (idempotent);
#                                      waits until the member runs (leader) or streams
#                                      (replica); under pause it asks Patroni to start
#                                      PostgreSQL (Patroni does not start it when paused)
#   member.sh DIR install PREFIX       make PREFIX (an extracted postgresql-15 package)
#                                      the member's bin_dir from its next start on;
#                                      the running member is left alone
#   member.sh DIR installed-version    `postgres --version` of the installed prefix
#   member.sh DIR package-version PREFIX   `postgres --version` of PREFIX
#   member.sh DIR running-version      `SHOW server_version` of the running PostgreSQL
#   member.sh DIR status               Patroni's own view of the member (GET /patroni, JSON)
#   member.sh DIR node-status          the node probe: GET /patroni as `status`; when Patroni does
#                                      not answer but the member's PostgreSQL runs as (or may be) a
#                                      primary, that instead (an orphan primary: see below)
#   member.sh DIR pause|resume         what `patronictl pause|resume --wait` does, through this
#                                      member's REST API (PATCH /config, then every member that
#                                      answers shows it in GET /patroni), idempotent (patronictl
#                                      itself fails with "Cluster is already paused" / "is not
#                                      paused")
#   member.sh DIR switchover LEADER CANDIDATE
#                                      what `patronictl switchover --leader LEADER --candidate
#                                      CANDIDATE --force` does (POST /switchover to this member's
#                                      REST API), then fails unless CANDIDATE leads (GET /cluster):
#                                      non-zero on any HTTP status but 200; patronictl itself exits
#                                      0 when the switchover fails ("Switchover failed, details:
#                                      503, ...") and when its API call fails it falls back to
#                                      writing the request into the DCS and still exits 0
# (Both through curl rather than patronictl: a patronictl call is a Python start-up that took
# 1.5-7 s on the loaded test machine, against about 10 ms for curl; the harness's REST API has
# no credentials. A production wrapper with restapi.authentication gives curl the credentials
# in a file (--config FILE or --netrc-file FILE), never in its argv.)
#
# Every change is journalled in DIR/actions.log, one line each: `UNIX_MS stop PID`,
# `UNIX_MS start PID VERSION`, `UNIX_MS install VERSION`, `UNIX_MS install-unchanged VERSION`,
# `UNIX_MS pause`, `UNIX_MS resume`, `UNIX_MS switchover LEADER CANDIDATE` (the record a test
# judges an upgrade by, whoever ran it; the format of scripts/real/etcd/member.sh).
#
# DIR holds member.conf (written by cluster.sh: name, pg_port, rest_port, venv),
# patroni.yml.in (the config with @BIN_DIR@), installed-prefix, data/, patroni.log.
# Patroni and PostgreSQL run as `postgres` (PostgreSQL refuses root). No value
# read from a file is evaluated: member.conf is parsed key by key.
set -euo pipefail
PG_BIN_SUBDIR="usr/lib/postgresql/15/bin"
START_TIMEOUT_S="${MEMBER_START_TIMEOUT_S:-90}"
STOP_TIMEOUT_S="${MEMBER_STOP_TIMEOUT_S:-60}"

die() {
  echo "member.sh: $*" >&2
  exit 1
}

[ "$#" -ge 2 ] || die "usage: member.sh DIR stop|start|install PREFIX|installed-version|package-version PREFIX|running-version|status"
dir="$(cd "$1" && pwd)" || die "no member directory $1"
cmd="$2"
shift 2
[ -f "$dir/member.conf" ] || die "$dir/member.conf is missing (made by scripts/real/patroni/cluster.sh up)"

name="" pg_port="" rest_port="" venv=""
while IFS='=' read -r key value; do
  case "$key" in
    name) name="$value" ;;
    pg_port) pg_port="$value" ;;
    rest_port) rest_port="$value" ;;
    venv) venv="$value" ;;
    '' | '#'*) ;;
    *) die "$dir/member.conf: unknown key $key" ;;
  esac
done <"$dir/member.conf"
[[ "$name" =~ ^[A-Za-z0-9_-]+$ ]] || die "$dir/member.conf: bad name '$name'"
[[ "$pg_port" =~ ^[0-9]+$ ]] || die "$dir/member.conf: bad pg_port '$pg_port'"
[[ "$rest_port" =~ ^[0-9]+$ ]] || die "$dir/member.conf: bad rest_port '$rest_port'"
[ -x "$venv/bin/patroni" ] || die "no Patroni in $venv: run scripts/real/install-patroni.sh"

# Runs argv as the postgres user, with a clean environment (exec_as_postgres: in place of this shell).
as_postgres() { (exec_as_postgres "$@"); }
exec_as_postgres() {
  local env=(env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/var/lib/postgresql LANG=C.UTF-8 LC_ALL=C.UTF-8)
  # From the member's own directory: the caller's (a clone under a 0700 /root) may be out of postgres's reach,
  # and Patroni's worker processes chdir back into the directory they were started from.
  cd "$dir" || die "cannot enter $dir"
  if [ "$(id -un)" = postgres ]; then
    exec "${env[@]}" "$@"
  elif [ "$(id -u)" = 0 ]; then
    exec "${env[@]}" setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    die "run as root or as postgres (members run as postgres)"
  fi
}

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

journal() { echo "$(date +%s%3N) $*" >>"$dir/actions.log"; }

# `15.20` from `postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)`.
version_of() { "$(bin_of "$1")/postgres" --version | sed -n 's/^postgres (PostgreSQL) \([0-9.]*\).*/\1/p'; }

patroni_pid() {
  local pid=""
  [ -f "$dir/patroni.pid" ] && read -r pid <"$dir/patroni.pid" || true
  # Only a Patroni process of this member counts (a pid may have been reused).
  if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$dir/patroni.yml"; then
    echo "$pid"
  fi
}

postmaster_pid() {
  local pid=""
  [ -f "$dir/data/postmaster.pid" ] && read -r pid <"$dir/data/postmaster.pid" || true
  if [[ "$pid" =~ ^[0-9]+$ ]] && alive "$pid"; then
    echo "$pid"
  fi
}

bin_of() { echo "$1/$PG_BIN_SUBDIR"; }

installed_prefix() {
  local prefix
  [ -f "$dir/installed-prefix" ] || die "$dir/installed-prefix is missing"
  read -r prefix <"$dir/installed-prefix"
  echo "$prefix"
}

check_prefix() {
  local prefix="$1"
  [[ "$prefix" = /* ]] || die "the prefix must be an absolute path: $prefix"
  [ -x "$(bin_of "$prefix")/postgres" ] || die "no PostgreSQL in $prefix ($(bin_of "$prefix")/postgres is missing)"
  as_postgres test -x "$(bin_of "$prefix")/postgres" || die "the postgres user cannot run $(bin_of "$prefix")/postgres"
  "$(bin_of "$prefix")/postgres" --version | grep -q '(PostgreSQL) 15\.' || die "$prefix is not PostgreSQL 15"
}

# Patroni's view of this member: GET /patroni on its REST API.
rest_status() {
  curl -fsS --max-time 2 "http://127.0.0.1:$rest_port/patroni"
}

# What start waits for: the member runs PostgreSQL as the leader, or as a streaming replica.
member_ready() {
  local json
  json="$(rest_status 2>/dev/null)" || return 1
  "$venv/bin/python" -c '
import json, sys
s = json.loads(sys.argv[1])
ok = s.get("state") == "running" and (s.get("role") == "primary" or s.get("replication_state") == "streaming")
sys.exit(0 if ok else 1)' "$json"
}

member_state() {
  rest_status 2>/dev/null | "$venv/bin/python" -c 'import json, sys; s = json.load(sys.stdin); print(s.get("state", ""), "paused" if s.get("pause") else "")' 2>/dev/null || true
}

# The DCS's view through this member's Patroni: GET /cluster (every member's role, state, api_url; "pause").
rest_cluster() {
  curl -fsS --connect-timeout 2 --max-time 5 "http://127.0.0.1:$rest_port/cluster"
}

# Who leads per GET /cluster (comma-separated; empty when nobody does).
cluster_leaders() {
  rest_cluster 2>/dev/null | "$venv/bin/python" -c '
import json, sys
print(",".join(m["name"] for m in json.load(sys.stdin)["members"] if m["role"] == "leader"))'
}

# Whether the DCS's configuration says paused (true/false).
cluster_paused() {
  rest_cluster 2>/dev/null | "$venv/bin/python" -c '
import json, sys
print("true" if json.load(sys.stdin).get("pause") else "false")' || die "Patroni of $name does not answer GET /cluster"
}

# The members (per GET /cluster) whose own GET /patroni does not yet show pause WANT (true/false), one line.
# A member whose Patroni refuses the connection is not waited for: no Patroni runs there, so it decides nothing,
# and it reads the setting from the DCS when it starts (its key may outlive it by up to ttl). Any other failure
# (a timeout: a hung or cut-off Patroni, which may still act on the old setting; an error answer) keeps the
# member pending, so the wait fails closed rather than reporting a fence that one member may not have seen.
# Fails when GET /cluster does not answer.
members_not_showing_pause() {
  local json
  json="$(rest_cluster)" || return 1
  "$venv/bin/python" -c '
import json, sys, urllib.error, urllib.request
want = sys.argv[2] == "true"
pending = []
for m in json.loads(sys.argv[1])["members"]:
    try:
        with urllib.request.urlopen(m["api_url"], timeout=2) as r:
            shown = bool(json.load(r).get("pause"))
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            continue
        pending.append(m["name"] + " (no answer: " + str(e.reason) + ")")
        continue
    except ConnectionRefusedError:
        continue
    except Exception as e:
        pending.append(m["name"] + " (no answer: " + type(e).__name__ + ")")
        continue
    if shown is not want:
        pending.append(m["name"])
print(" ".join(pending))' "$json" "$1"
}

do_stop() {
  local pid deadline pm
  pid="$(patroni_pid)"
  pm="$(postmaster_pid)"
  [ -n "$pid$pm" ] || { echo "stopped $name (was not running)"; return; }
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.05; done
    if alive "$pid"; then
      echo "member.sh: Patroni ($pid) did not stop in ${STOP_TIMEOUT_S}s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.05; done
    fi
  fi
  rm -f "$dir/patroni.pid"
  # Under pause Patroni leaves PostgreSQL running when it stops: stop it here.
  pm="$(postmaster_pid)"
  if [ -n "$pm" ]; then
    local pg_ctl
    pg_ctl="$(bin_of "$(tr -d '\n' <"$dir/running-prefix" 2>/dev/null || installed_prefix)")/pg_ctl"
    as_postgres "$pg_ctl" stop -D "$dir/data" -m fast -w -t "$STOP_TIMEOUT_S" >/dev/null ||
      die "pg_ctl stop failed for $dir/data"
  fi
  journal stop "${pid:-$pm}"
  echo "stopped $name"
}

do_start() {
  local prefix pid deadline state
  prefix="$(installed_prefix)"
  check_prefix "$prefix"
  pid="$(patroni_pid)"
  if [ -z "$pid" ]; then
    sed "s|@BIN_DIR@|$(bin_of "$prefix")|" "$dir/patroni.yml.in" >"$dir/patroni.yml.part"
    chown postgres:postgres "$dir/patroni.yml.part" 2>/dev/null || true
    mv "$dir/patroni.yml.part" "$dir/patroni.yml"
    printf '%s\n' "$prefix" >"$dir/running-prefix"
    # Its own session, every descriptor on the log: it outlives this command and its process group.
    exec_as_postgres setsid "$venv/bin/patroni" "$dir/patroni.yml" </dev/null >>"$dir/patroni.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/patroni.pid"
    journal start "$pid" "$(version_of "$prefix")"
  fi
  deadline=$((SECONDS + START_TIMEOUT_S))
  local restarted=0
  until member_ready; do
    alive "$pid" || die "Patroni exited; see $dir/patroni.log"
    [ "$SECONDS" -lt "$deadline" ] || die "$name did not become running/streaming in ${START_TIMEOUT_S}s; see $dir/patroni.log"
    state="$(member_state)"
    # Paused: Patroni does not start a stopped PostgreSQL by itself; a restart through its API does.
    if [ "$restarted" = 0 ] && [ "$state" = "stopped paused" ]; then
      curl -fsS --max-time 60 -X POST -H 'Content-Type: application/json' -d '{}' \
        "http://127.0.0.1:$rest_port/restart" >/dev/null || die "Patroni refused to start PostgreSQL (POST /restart)"
      restarted=1
    fi
    sleep 0.1
  done
  echo "started $name"
}

case "$cmd" in
  stop) do_stop ;;
  start) do_start ;;
  install)
    [ "$#" = 1 ] || die "usage: member.sh DIR install PREFIX"
    prefix="$(cd "$1" 2>/dev/null && pwd)" || die "no prefix $1"
    check_prefix "$prefix"
    if [ "$(installed_prefix)" = "$prefix" ]; then
      journal install-unchanged "$(version_of "$prefix")"
      echo "installed $("$(bin_of "$prefix")/postgres" --version) on $name already"
      exit 0
    fi
    printf '%s\n' "$prefix" >"$dir/installed-prefix.part"
    mv "$dir/installed-prefix.part" "$dir/installed-prefix"
    journal install "$(version_of "$prefix")"
    echo "installed $("$(bin_of "$prefix")/postgres" --version) on $name for its next start"
    ;;
  installed-version) "$(bin_of "$(installed_prefix)")/postgres" --version ;;
  package-version)
    [ "$#" = 1 ] || die "usage: member.sh DIR package-version PREFIX"
    check_prefix "$1"
    "$(bin_of "$1")/postgres" --version
    ;;
  running-version)
    [ -n "$(postmaster_pid)" ] || die "PostgreSQL of $name is not running"
    as_postgres "$(bin_of "$(installed_prefix)")/psql" -X -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres \
      -c 'SHOW server_version'
    ;;
  pause | resume)
    # What `patronictl pause|resume --wait` does, through this member's REST API with curl (no Python start-up:
    # patronictl took 1.5-7 s a call on the loaded test machine): PATCH /config {"pause": true|null}, then wait
    # until every member the DCS lists shows it in its own GET /patroni ("pause": true, absent when not paused).
    # patronictl waits for the same on the members' DCS keys and gives up after loop_wait + 1 s with exit 0;
    # this fails instead (MEMBER_PAUSE_WAIT_S, 30 s). A member whose Patroni does not answer in time counts as
    # not yet showing it (only a refused connection, no Patroni running, is skipped). No extra loop_wait after
    # all show it: an HA cycle that began before a member saw the pause can only act on a missing leader key,
    # and the upgrade's first action after the fence is up (stopping a follower, behind the guard's fresh look at
    # a healthy leader) removes no leader key.
    want=true
    [ "$cmd" = resume ] && want=false
    # Already so in the DCS (a retry after an attempt that set it and then gave up waiting): no PATCH, but the
    # same wait, so success still means every answering member shows it.
    already=""
    if [ "$(cluster_paused)" = "$want" ]; then
      already=1
    else
      body='{"pause": true}'
      [ "$want" = false ] && body='{"pause": null}'
      curl -fsS --connect-timeout 2 --max-time 10 -X PATCH -H 'Content-Type: application/json' -d "$body" \
        "http://127.0.0.1:$rest_port/config" >/dev/null || die "PATCH /config $body failed on $name"
    fi
    deadline=$((SECONDS + ${MEMBER_PAUSE_WAIT_S:-30}))
    until pending="$(members_not_showing_pause "$want")" && [ -z "$pending" ]; do
      [ "$SECONDS" -lt "$deadline" ] ||
        die "the $cmd was not applied by every member in ${MEMBER_PAUSE_WAIT_S:-30}s (not yet: ${pending:-unknown})"
      sleep 0.1
    done
    if [ -n "$already" ]; then
      echo "Cluster is $([ "$want" = true ] && echo already || echo not) paused"
    else
      journal "$cmd"
      echo "Success: cluster management is $([ "$want" = true ] && echo paused || echo resumed)"
    fi
    ;;
  switchover)
    [ "$#" = 2 ] || die "usage: member.sh DIR switchover LEADER CANDIDATE"
    [[ "$1" =~ ^[A-Za-z0-9_-]+$ ]] && [[ "$2" =~ ^[A-Za-z0-9_-]+$ ]] || die "bad member names '$1' '$2'"
    # What `patronictl switchover --leader L --candidate C --force` does, without its Python start-up: POST
    # /switchover to this member's REST API (the leader's: the profile runs this on the leader). Patroni answers
    # once the DCS shows another leader (200, polling each second), or refuses (412: not possible, e.g. the
    # candidate is not healthy; 503: failed or unknown). Allowed while paused, because the candidate is named.
    # The names were checked above, so the JSON body is built from safe text.
    # curl's 30 s and the 15 s check below stay inside the profile's 60 s timeout for the action, so this
    # script, not the executor's timeout, says what happened.
    rc=0
    out="$(curl -sS --connect-timeout 2 --max-time 30 -X POST -H 'Content-Type: application/json' \
      -d "{\"leader\": \"$1\", \"candidate\": \"$2\"}" -w '\n%{http_code}' \
      "http://127.0.0.1:$rest_port/switchover" 2>&1)" || rc=$?
    code="${out##*$'\n'}"
    echo "${out%$'\n'*}"
    # Refused before anything was sent (curl 7: nothing listens), or by Patroni (412: not possible now): nothing
    # happened. Any other failure (HTTP 503 "status unknown", a timeout or a reset after the request went out)
    # leaves the outcome unknown: Patroni may still carry it out, so look before saying anything.
    [ "$rc" = 7 ] && die "POST /switchover to $name failed (curl exit 7: nothing listens); nothing happened"
    [ "$rc" = 0 ] && [ "$code" = 412 ] && die "the switchover to $2 was refused: HTTP 412; nothing happened"
    unknown=""
    if [ "$rc" != 0 ]; then
      unknown="curl exit $rc"
    elif [ "$code" != 200 ]; then
      unknown="HTTP $code"
    fi
    # 200 also covers "Switched over to X instead of C": only the candidate leading counts.
    deadline=$((SECONDS + ${MEMBER_SWITCHOVER_CHECK_S:-15}))
    until leaders="$(cluster_leaders)" && [ "$leaders" = "$2" ]; do
      if [ "$SECONDS" -ge "$deadline" ]; then
        [ -n "$unknown" ] &&
          die "the switchover to $2: outcome unknown ($unknown), and $2 does not lead after ${MEMBER_SWITCHOVER_CHECK_S:-15}s (leader: '${leaders:-none}'); Patroni may still carry it out"
        die "the switchover to $2 did not happen: $2 does not lead after ${MEMBER_SWITCHOVER_CHECK_S:-15}s (leader: '${leaders:-none}')"
      fi
      sleep 0.2
    done
    journal switchover "$1" "$2"
    echo "$2 leads"
    ;;
  status) rest_status || die "Patroni of $name does not answer on 127.0.0.1:$rest_port" ;;
  node-status)
    # The profile's node probe, and the emergency exit's "does the expected leader say it leads". GET /patroni
    # as `status`, but no answer from Patroni is not yet "nobody leads here": a Patroni process that died (a
    # crash, an OOM kill, kill -9) or hangs leaves its PostgreSQL running, and a primary keeps taking writes.
    # Lifting the fence then lets the replicas elect a second primary beside it (split brain). So when Patroni
    # does not answer (any curl failure) while this member's postmaster runs, ask PostgreSQL itself
    # (pg_is_in_recovery() on its own port, as postgres):
    #   - a primary, or a postmaster that does not answer (crash recovery, shutting down, no free connection)
    #     and has no standby.signal: {"state": "no patroni", "role": "primary", ...}, which the profile reads as
    #     not in service and leading (the fence stays up; an interrupted stop is not taken as done);
    #   - a replica: exit 1, as when nothing runs (no leader here, and not in service).
    # Only when no postmaster of this member runs does the probe fail as before.
    rc=0
    out="$(curl -fsS --connect-timeout 2 --max-time 5 "http://127.0.0.1:$rest_port/patroni" 2>&1)" || rc=$?
    if [ "$rc" = 0 ]; then
      printf '%s\n' "$out"
      exit 0
    fi
    rc_curl="$rc"
    why="Patroni of $name does not answer on 127.0.0.1:$rest_port (curl exit $rc_curl: $out)"
    pm="$(postmaster_pid)"
    # The postmaster of this member's data directory (a pid in a stale postmaster.pid may have been reused).
    if [ -z "$pm" ] || ! tr '\0' ' ' <"/proc/$pm/cmdline" 2>/dev/null | grep -qF -- "$dir/data"; then
      die "$why, and PostgreSQL of $name is not running"
    fi
    err="$(mktemp)"
    rc=0
    in_recovery="$(as_postgres timeout 5 "$(bin_of "$(installed_prefix)")/psql" -X -At -h 127.0.0.1 -p "$pg_port" \
      -U postgres -d "dbname=postgres connect_timeout=2" -c 'SELECT pg_is_in_recovery()' 2>"$err")" || rc=$?
    psql_err="$(tr '\n' ' ' <"$err")"
    rm -f "$err"
    if [ "$rc" = 0 ] && [ "$in_recovery" = t ]; then
      die "$why; its PostgreSQL runs as a replica"
    elif [ "$rc" = 0 ] && [ "$in_recovery" = f ]; then
      printf '{"state": "no patroni", "role": "primary", "source": "postgresql", "patroni": "%s"}\n' "curl exit $rc_curl"
    elif [ -e "$dir/data/standby.signal" ]; then
      die "$why; its PostgreSQL runs (pid $pm, a standby: standby.signal) but does not answer: $psql_err"
    else
      # Fails safe: a postmaster that may be a primary is taken as one.
      printf '{"state": "no patroni", "role": "primary", "source": "postmaster without standby.signal", "patroni": "%s"}\n' "curl exit $rc_curl"
    fi
    ;;
  *) die "unknown command $cmd" ;;
esac
