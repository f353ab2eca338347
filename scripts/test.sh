#!/usr/bin/env bash
# The test command: every crate, every feature, unit + scenario + property + end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f .ci/install-redis.sh ]; then
    bash .ci/install-redis.sh
fi
cargo test --workspace --all-features "$@"
