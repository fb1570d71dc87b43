#!/usr/bin/env bash
# Builds the `baton` Debian package (cli/Cargo.toml [package.metadata.deb]) with
# the pinned cargo-deb (scripts/install-cargo-deb.sh, into $CARGO_HOME/bin),
# and prints its path.
#
#   bash scripts/package-deb.sh                      # release build, into target/debian
#   bash scripts/package-deb.sh --out DIR            # somewhere else
#   bash scripts/package-deb.sh --profile dev --no-build
#       # package the binary already built by `cargo build` (what the packaging
#       # test does: it packages the binary the suite has just built)
#
# The binary is taken from $CARGO_TARGET_DIR (default target/) for the profile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile=release
build=yes
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --no-build) build=no; shift ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--profile PROFILE] [--no-build] [--out DIR]" >&2; exit 2 ;;
  esac
done
bash scripts/install-cargo-deb.sh
if [ "$build" = yes ]; then
  cargo build --locked --profile "$profile" -p cli --bin baton
fi
# --no-build: cargo-deb packages what is there (never a second build).
# -Z gz --fast: gzip in-process at level 1 (cargo-deb is built without xz; see
# install-cargo-deb.sh); --strip: no debug info in the installed binary.
args=(-p cli --no-build --locked --profile "$profile" -Z gz --fast --strip)
if [ -n "$out" ]; then
  mkdir -p "$out"
  args+=(-o "$out")
fi
"${CARGO_HOME:-$HOME/.cargo}/bin/cargo-deb" "${args[@]}"
