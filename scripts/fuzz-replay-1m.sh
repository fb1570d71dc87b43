#!/usr/bin/env bash
# The 1,000,000-input run of the replay property (`fuzz_replay_verify_decide` in workflow/tests/fuzz_core.rs:
# exported events -> replay -> verify -> decide), as chunks of 10,000 inputs with one seed each, so a run
# gives figures chunk by chunk (the runner prints only at the end of a run) and can stop at any chunk's end.
# tests/FUZZ.md ("1,000,000-input run") has the figures of the last run and what they mean.
#
#   scripts/fuzz-replay-1m.sh [OUT_DIR]        (default: fuzz-replay-1m)
#
# Environment: FIRST_SEED (20261200), CHUNKS (100), CASES (inputs per chunk, 10000), JOBS (chunk loops run
# in parallel, one per core: 2), CHUNK_TIMEOUT (seconds; a chunk that takes longer is killed and logged as a
# hang: 3600), NICE (19). Chunk k (0-based) uses PROPTEST_RNG_SEED=FIRST_SEED+k; loop j runs the chunks
# with k % JOBS == j. Touch OUT_DIR/STOP to stop every loop after its current chunk.
#
# Writes into OUT_DIR: results.txt (each chunk's figure line, BATON_FUZZ_REPORT), status.txt (one line per
# chunk: chunk, seed, exit status, wall and CPU seconds, max RSS; exit 124 is a hang), chunk-K.log (the
# test's output and /usr/bin/time's), and prints a summary when every loop is done.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$(mkdir -p "${1:-fuzz-replay-1m}" && cd "${1:-fuzz-replay-1m}" && pwd)"
first=${FIRST_SEED:-20261200}
chunks=${CHUNKS:-100}
cases=${CASES:-10000}
jobs=${JOBS:-2}
limit=${CHUNK_TIMEOUT:-3600}
niceness=${NICE:-19}

# Build the test binary once; the loops run it directly, so no chunk rebuilds.
bin=$(cargo test --release -p workflow --no-default-features --test fuzz_core --no-run \
    --message-format=json 2>/dev/null |
    jq -r 'select(.profile.test == true and .target.name == "fuzz_core") | .executable')
[ -x "$bin" ] || { echo "no fuzz_core test binary" >&2; exit 1; }
# A copy, so a rebuild in the same target dir while the loops run does not swap the binary under them.
cp "$bin" "$out/fuzz_core"
bin="$out/fuzz_core"
echo "binary $bin, commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- workflow tests || echo ' (+ local changes)')" |
    tee -a "$out/status.txt"

loop() {
    local j=$1 k seed rc t0 t1
    for ((k = j; k < chunks; k += jobs)); do
        [ -e "$out/STOP" ] && break
        seed=$((first + k))
        t0=$(date +%s.%N)
        set +e
        PROPTEST_RNG_SEED=$seed BATON_FUZZ_CASES=$cases BATON_FUZZ_REPORT="$out/results.txt" \
            /usr/bin/time -f 'time: wall %e s, user %U s, sys %S s, max RSS %M KiB' \
            timeout "$limit" nice -n "$niceness" "$bin" fuzz_replay_verify_decide --exact --nocapture --test-threads 1 \
            >"$out/chunk-$k.log" 2>&1
        rc=$?
        set -e
        t1=$(date +%s.%N)
        echo "chunk $k seed $seed exit $rc started $(date -u -d "@$t0" +%H:%M:%S) wall $(echo "$t1 - $t0" | bc) s; $(grep '^time:' "$out/chunk-$k.log" || echo 'time: none')" \
            >>"$out/status.txt"
    done
}

for ((j = 0; j < jobs; j++)); do
    loop "$j" &
done
wait

ok=$(grep -c ' exit 0 ' "$out/status.txt" || true)
bad=$(grep -c '^chunk .* exit [1-9]' "$out/status.txt" || true)
echo "chunks passed: $ok ($((ok * cases)) inputs); chunks failed or hung: $bad" | tee -a "$out/status.txt"
