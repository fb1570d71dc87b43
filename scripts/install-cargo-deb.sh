#!/usr/bin/env bash
# Installs the pinned cargo-deb (the .deb builder of scripts/package-deb.sh)
# into $CARGO_HOME/bin with its own lock file, where it outlives a clone: a CI
# run in a fresh clone on the same machine finds it there. Idempotent: does
# nothing when the pinned version is already there (a different one is
# replaced). Built without its default features, which are in-process xz (a C
# library built from source) and ELF debug ids, neither of which the package
# needs: the package is gzip-compressed by the pure-Rust `gzip` feature.
# Measured on the 2-core machine: 2 min 13 s to install, once.
set -euo pipefail
CARGO_DEB_VERSION="${CARGO_DEB_VERSION:-3.8.0}"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
bin="$cargo_home/bin/cargo-deb"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "cargo-deb $CARGO_DEB_VERSION" ]; then
  exit 0
fi
# Its own target folder, thrown away: not the workspace's.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cargo install --quiet --locked --force --no-default-features --features gzip \
  --root "$cargo_home" --target-dir "$tmp" "cargo-deb@$CARGO_DEB_VERSION"
"$bin" --version >&2
