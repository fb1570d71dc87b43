#!/usr/bin/env bash
# The new operator's walk-through, run for real: a simulated 3-node cluster
# (`baton dev --serve`), then, as an operator would type them, a plan, an
# upgrade with an approval gate, an aborted upgrade, and an upgrade refused at
# plan because its package is missing. Writes the transcript as Markdown
# (default docs/walkthrough.md; the first argument overrides) and exits
# non-zero if any command's exit code is not the documented one.
#
#   bash scripts/walkthrough.sh [OUT.md]
#
# BATON_BIN_DIR picks the binaries (default: builds target/release).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/docs/walkthrough.md}"
cd "$root"
bash scripts/install-nats-server.sh >/dev/null
export BATON_NATS_SERVER="$root/.tools/bin/nats-server"
if [ -z "${BATON_BIN_DIR:-}" ]; then
  cargo build --release --locked --bins -q
  BATON_BIN_DIR="$root/target/release"
fi
export PATH="$BATON_BIN_DIR:$PATH"
export NO_COLOR=1
unset BATON_OUTPUT

work="$(mktemp -d /tmp/baton-walkthrough.XXXXXX)"
dev_pid=""
cleanup() {
  if [ -n "$dev_pid" ]; then
    kill -INT "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
  fi
  if [ -n "${BATON_WALKTHROUGH_KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

transcript="$work/transcript.md"
: >"$transcript"
say() { printf '%s\n\n' "$*" >>"$transcript"; }
# run EXPECTED_EXIT COMMAND: shows the command as typed (variables unexpanded), runs it, records its output
# (the walk-through's temp dir shown as $DIR) and checks its exit code.
run() {
  local expected="$1" command="$2" code=0
  printf '```console\n$ %s\n' "$command" >>"$transcript"
  bash -c "$command" >"$work/out" 2>&1 || code=$?
  sed "s|$work/dev|\$DIR|g" "$work/out" >>"$transcript"
  if [ "$code" != 0 ]; then printf '(exit code %s)\n' "$code" >>"$transcript"; fi
  printf '```\n\n' >>"$transcript"
  if [ "$code" != "$expected" ]; then
    echo "walkthrough: \`$command\` exited $code, the walk-through says $expected:" >&2
    cat "$work/out" >&2
    exit 1
  fi
}
# wait_status UPGRADE STATUS...: polls `baton status` (not shown) until one of the statuses.
wait_status() {
  local upgrade="$1" status
  shift
  for _ in $(seq 600); do
    status="$(baton --output json status "$upgrade" | sed -n 's/^  "status": "\(.*\)",$/\1/p')"
    for want in "$@"; do
      if [ "$status" = "$want" ]; then return 0; fi
    done
    sleep 0.1
  done
  echo "walkthrough: upgrade $upgrade is $status, not $* after 60 s" >&2
  exit 1
}
# wait_event UPGRADE TEXT: polls the upgrade's timeline (not shown) until it shows TEXT.
wait_event() {
  for _ in $(seq 600); do
    if baton replay "$1" 2>/dev/null | grep -q "$2"; then return 0; fi
    sleep 0.1
  done
  echo "walkthrough: upgrade $1 never showed '$2'" >&2
  exit 1
}

baton dev --serve --dir "$work/dev" >"$work/dev.log" 2>&1 &
dev_pid=$!
for _ in $(seq 600); do
  [ -f "$work/dev/env.sh" ] && break
  if ! kill -0 "$dev_pid" 2>/dev/null; then cat "$work/dev.log" >&2; exit 1; fi
  sleep 0.1
done
[ -f "$work/dev/env.sh" ] || { cat "$work/dev.log" >&2; exit 1; }
# shellcheck disable=SC1091
. "$work/dev/env.sh"
export DIR="$work/dev"

cat >>"$transcript" <<'EOF'
# Walk-through: a new operator's first hour

This page is a real run (`bash scripts/walkthrough.sh` writes it; `walkthrough::` in the tests runs it again
and checks that every command still exits as shown). Nothing here needs a real cluster: `baton dev --serve`
starts a local nats-server (TLS, least-privilege users), the workflow service, a simulated 3-node chef-backend
cluster and one executor per node, writes the operator's settings to `$DIR/env.sh`, and waits for you.

EOF
say "## Setting up"
say "In one shell (it keeps running; Ctrl-C stops everything):"
printf '```console\n$ baton dev --serve --dir $DIR\n' >>"$transcript"
sed "s|$work/dev|\$DIR|g" "$work/dev.log" >>"$transcript"
printf '```\n\n' >>"$transcript"
say 'In another, load the settings (`CLUSTER` is the cluster file, `SIM` the simulator) and check who is online:'
printf '```console\n$ . $DIR/env.sh\n```\n\n' >>"$transcript"
run 0 'baton executors'
run 0 'cat "$CLUSTER"'

say "## 1. An upgrade with an approval gate"
say 'First the plan: what Baton will do, node by node, with an approval wait before the leader is switched over, and the plan'"'"'s hash. Nothing runs yet (the plan only observes the cluster).'
run 0 'baton plan --cluster "$CLUSTER" --approve-before before-switchover'
hash="$(baton --output json plan --cluster "$CLUSTER" --approve-before before-switchover | sed -n 's/^  "plan_hash": "\(.*\)",\{0,1\}$/\1/p')"
[ -n "$hash" ] || { echo "walkthrough: no plan hash" >&2; exit 1; }
export HASH="$hash"
say 'Submit exactly that plan (`$HASH` is the hash printed above; a plan that differs, because the cluster or the options changed, is refused before anything runs). `--detach` returns at once; `baton watch` follows it.'
upgrade="$(baton submit --cluster "$CLUSTER" --plan-hash "$HASH" --approve-before before-switchover --detach 2>"$work/submit.err")"
printf '```console\n$ baton submit --cluster "$CLUSTER" --plan-hash "$HASH" --approve-before before-switchover --detach\n%s\n' "$upgrade" >>"$transcript"
sed "s|$work/dev|\$DIR|g" "$work/submit.err" >>"$transcript"
printf '```\n\n' >>"$transcript"
export UP="$upgrade"
wait_status "$UP" waiting_approval
say 'Both followers are upgraded; the upgrade waits at the gate (`$UP` is the id `submit` printed):'
run 0 'baton status "$UP"'
say 'Two numberings meet here: `item 10` is the plan'"'"'s item (the numbers `baton plan` printed), and at run time every command Baton sends, probes included, is a step with its own id: `step 75.1` is step 75, attempt 1. `status` shows the item being worked on and the step in flight; the timeline below lists steps.'
run 0 'baton approve "$UP" before-switchover'
run 0 'baton watch "$UP"'
say 'The simulator judges the run from its own journal, not from Baton:'
run 0 'baton-sim report --dir "$SIM"'

say "## 2. An aborted upgrade"
say 'A second package (3.1.1-1) appears, and the upgrade to it is submitted without a gate; the operator aborts it while the first follower is being upgraded. Baton finishes the step in flight, brings the node back, turns failover back on, and stops.'
run 0 'cp $DIR/chef-backend_3.1.0-1_amd64.deb $DIR/chef-backend_3.1.1-1_amd64.deb && sed "s/3.1.0-1/3.1.1-1/" "$CLUSTER" > $DIR/next.toml'
upgrade="$(baton submit --cluster "$DIR/next.toml" --detach 2>"$work/submit.err")"
printf '```console\n$ baton submit --cluster $DIR/next.toml --detach\n%s\n' "$upgrade" >>"$transcript"
sed "s|$work/dev|\$DIR|g" "$work/submit.err" >>"$transcript"
printf '```\n\n' >>"$transcript"
export UP2="$upgrade"
wait_event "$UP2" "(install), exit"
say '(`$UP2` is the id it printed.)'
run 0 'baton abort "$UP2" --reason "maintenance window closed"'
wait_status "$UP2" aborted
run 4 'baton watch "$UP2"'
run 0 'baton-sim report --dir "$SIM"'

say "## 3. A missing package, refused at plan"
say 'The cluster file names a package that is not on the nodes. Preflight probes every node before anything is planned, so the plan is refused (exit code 4) and no node is touched: the simulator counts no new install.'
run 0 'sed "s/3.1.0-1/3.2.0-1/" "$CLUSTER" > $DIR/missing.toml'
run 4 'baton plan --cluster $DIR/missing.toml'
run 0 'baton-sim report --dir "$SIM" | grep -E "Verdict|Installs per node"'

say "## 4. Afterwards"
run 0 'baton list'
run 0 'baton audit verify'

mkdir -p "$(dirname "$out")"
cp "$transcript" "$out"
echo "walkthrough: wrote $out"
