#!/usr/bin/env bash
# Saves the real output of every probe in profiles/patroni.toml, run against the cluster
# at ROOT, as tests/fixtures/patroni/STATE/: topology.json (GET /cluster from the first
# member whose Patroni answers), and per member: <m>.node.json (GET /patroni),
# <m>.version.txt, <m>.running_version.txt, <m>.package.txt (exit code appended when
# non-zero, as `# exit N`).
#   capture-fixtures.sh ROOT STATE
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
[ "$#" = 2 ] || { echo "usage: capture-fixtures.sh ROOT STATE" >&2; exit 1; }
root="$1"
out="$repo/tests/fixtures/patroni/$2"
mkdir -p "$out"
new_prefix="$(sed -n 's/^new_prefix=//p' "$root/env")"
read -r -a members <<<"$(sed -n 's/^members=//p' "$root/env")"
run() { # FILE ARGV...: stdout to FILE; a non-zero exit is noted with stderr
  local file="$1" rc=0
  shift
  "$@" >"$file" 2>"$file.err" || rc=$?
  if [ "$rc" != 0 ]; then
    { cat "$file.err"; echo "# exit $rc"; } >>"$file"
  fi
  rm -f "$file.err"
}
topology=""
for m in "${members[@]}"; do
  d="$root/members/$m"
  api="$(sed -n 's/^rest_port=//p' "$d/member.conf")"
  # The topology from the first member whose Patroni answers (as Baton asks another member when one fails).
  if [ -z "$topology" ] && curl -fsS --max-time 2 "http://127.0.0.1:$api/cluster" >/dev/null 2>&1; then
    run "$out/topology.json" curl -fsS --max-time 2 "http://127.0.0.1:$api/cluster"
    topology="$m"
  fi
  run "$out/$m.node.json" curl -fsS --max-time 2 "http://127.0.0.1:$api/patroni"
  run "$out/$m.version.txt" "$here/member.sh" "$d" installed-version
  run "$out/$m.running_version.txt" "$here/member.sh" "$d" running-version
  run "$out/$m.package.txt" "$here/member.sh" "$d" package-version "$new_prefix"
done
echo "$out"
