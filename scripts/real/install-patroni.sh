#!/usr/bin/env bash
# Installs what the real Patroni + PostgreSQL cluster needs (scripts/real/patroni,
# tests real_patroni), idempotently:
#   - Debian packages: postgresql-15 (its libraries and the `postgres` user), curl,
#     etcd-server and etcd-client (etcd is Patroni's DCS), python3-venv;
#   - .tools/patroni/venv: a venv from Debian's /usr/bin/python3 (outside root's
#     home, so the `postgres` user can run it) with Patroni and psycopg pinned;
#   - .tools/patroni/pg/<VERSION>: the pinned postgresql-15 and postgresql-client-15
#     packages of each version, extracted with `dpkg-deb -x` (one prefix per
#     version; a member's bin_dir is <prefix>/usr/lib/postgresql/15/bin).
# Runs as root (CI does); as another user it fails with the command to run.
# A pinned version that apt cannot download fails with a message naming it.
set -euo pipefail
PATRONI_VERSION="${PATRONI_VERSION:-4.1.5}"
PSYCOPG_VERSION="${PSYCOPG_VERSION:-3.3.9}"
# The upgrade rolls PostgreSQL 15.18 -> 15.20 (Debian bookworm and bookworm-security).
PG_OLD="${PG_OLD:-15.18-0+deb12u1}"
PG_NEW="${PG_NEW:-15.20-0+deb12u1}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/.tools/patroni"

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "install-patroni.sh: $1 is missing; as root: $2" >&2
    exit 1
  fi
}

missing=()
for pkg in postgresql-15 etcd-server etcd-client python3-venv curl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  need_root "${missing[*]}" "apt-get update && apt-get install -y ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Members run as `postgres`, which must reach the venv and the prefixes: a clone under a 0700 home (/root)
# is not reachable, so the tools then go to a system folder instead. cluster.sh reads the choice.
mkdir -p "$root/.tools"
# (Only root can ask as postgres, and only root runs the cluster: others keep the default.)
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$root/.tools" 2>/dev/null; then
  tools=/var/lib/baton-tests/patroni
  echo "install-patroni.sh: the postgres user cannot reach $root; installing into $tools" >&2
fi
echo "$tools" >"$root/.tools/patroni.location"

# The venv: Debian's Python (pyenv or a python in root's home is not reachable by `postgres`).
venv="$tools/venv"
want="patroni==$PATRONI_VERSION psycopg==$PSYCOPG_VERSION"
if [ ! -f "$venv/.pinned" ] || [ "$(cat "$venv/.pinned")" != "$want" ]; then
  rm -rf "$venv"
  mkdir -p "$tools"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    "patroni[etcd3]==$PATRONI_VERSION" "psycopg[binary]==$PSYCOPG_VERSION"
  echo "$want" >"$venv/.pinned"
fi
chmod -R a+rX "$tools"

# One prefix per pinned PostgreSQL version.
for version in "$PG_OLD" "$PG_NEW"; do
  upstream="${version%%-*}"
  prefix="$tools/pg/$upstream"
  bin="$prefix/usr/lib/postgresql/15/bin"
  if [ -x "$bin/postgres" ] && "$bin/postgres" --version | grep -qF "(Debian $version)"; then
    continue
  fi
  tmp="$(mktemp -d)"
  if ! (cd "$tmp" && apt-get download -qq "postgresql-15=$version" "postgresql-client-15=$version" >/dev/null 2>"$tmp/err"); then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      (cd "$tmp" && apt-get download -qq "postgresql-15=$version" "postgresql-client-15=$version" >/dev/null 2>"$tmp/err") || {
        echo "install-patroni.sh: apt cannot download the pinned postgresql-15=$version and postgresql-client-15=$version:" >&2
        cat "$tmp/err" >&2
        echo "(apt-cache policy postgresql-15 lists what this machine can get; update PG_OLD/PG_NEW in $0 and the fixtures if Debian moved on)" >&2
        rm -rf "$tmp"
        exit 1
      }
    else
      echo "install-patroni.sh: cannot download postgresql-15=$version; as root: apt-get update" >&2
      cat "$tmp/err" >&2
      rm -rf "$tmp"
      exit 1
    fi
  fi
  rm -rf "$prefix.part"
  mkdir -p "$prefix.part"
  for deb in "$tmp"/*.deb; do
    dpkg-deb -x "$deb" "$prefix.part"
  done
  rm -rf "$tmp" "$prefix"
  mv "$prefix.part" "$prefix"
  "$bin/postgres" --version | grep -qF "(Debian $version)" || {
    echo "install-patroni.sh: $bin/postgres does not report $version" >&2
    exit 1
  }
done
chmod -R a+rX "$tools"
echo "patroni $PATRONI_VERSION, psycopg $PSYCOPG_VERSION, PostgreSQL prefixes: $(ls "$tools/pg" | tr '\n' ' ')in $tools" >&2
