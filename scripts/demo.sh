#!/usr/bin/env bash
# The README's main job: installs the pinned nats-server, builds Baton and
# runs `baton dev` (a simulated 3-node chef-backend cluster upgraded end to
# end: live progress, the replayed timeline, the audit and the simulator's
# verdict). Extra arguments go to `baton dev` (e.g. --nodes 5, --keep).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/install-nats-server.sh
export BATON_NATS_SERVER="$root/.tools/bin/nats-server"
cargo build --release --locked --bins
# The HTML timeline of the upgrade (`baton report`) goes to tmp/ (git-ignored); open it in a browser.
mkdir -p tmp
exec ./target/release/baton dev --report "$root/tmp/demo-report.html" "$@"
