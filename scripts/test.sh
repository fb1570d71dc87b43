#!/usr/bin/env bash
# The test command of the README: installs what the tests need (the pinned
# nats-server), then runs formatting, lints and every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-nats-server.sh
export BATON_NATS_SERVER="$root/.tools/bin/nats-server"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The pure core builds and passes its tests without any I/O crate.
cargo clippy -p workflow --no-default-features --all-targets --locked -- -D warnings
cargo test -p workflow --no-default-features --locked
# The integration tests run the workspace's binaries (baton, baton-sim) as processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked
