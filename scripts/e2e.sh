#!/usr/bin/env bash
# The end-to-end suites alone (every runtime, through the emulator over a real redis-server),
# with their reports (fan-out latency per rotation, margins, counters) on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/install-redis.sh ]; then
    bash .ci/install-redis.sh >/dev/null
fi
cargo test --all-features \
    -p redis-entraid-tokio --test end_to_end --test recovery \
    -p redis-entraid-async-std --test recovery \
    -p redis-entraid-blocking --test redis_sync \
    -p redis-entraid-tests --test tokio_e2e --test async_std_e2e --test blocking_e2e \
    "$@" -- --nocapture
