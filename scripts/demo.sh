#!/usr/bin/env bash
# The main job: a blocking Redis client on the local Azure emulator, through token rotations.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/install-redis.sh
cargo run --quiet -p redis-entraid-blocking --features redis --example demo
