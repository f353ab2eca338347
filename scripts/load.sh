#!/usr/bin/env bash
# Runs a command while two busy processes saturate the CPU (one per core on the 2-core
# machine), then stops them, whatever the command's outcome. Used to prove the end-to-end
# suites pass on a loaded machine:
#
#   bash scripts/load.sh bash scripts/e2e.sh
#   bash scripts/load.sh cargo test -p redis-entraid-tokio --all-features --test end_to_end
#
# LOAD_PROCESSES overrides the number of busy processes (default: 2).
set -euo pipefail
cd "$(dirname "$0")/.."
n="${LOAD_PROCESSES:-2}"
pids=()
stop() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM
for _ in $(seq 1 "$n"); do
    # A pure busy loop: no I/O, no memory growth, nice 0 like the tests themselves.
    ( while :; do :; done ) &
    pids+=("$!")
done
echo "load.sh: $n busy processes (${pids[*]}) while running: $*" >&2
status=0
"$@" || status=$?
echo "load.sh: command exited with $status" >&2
exit "$status"
