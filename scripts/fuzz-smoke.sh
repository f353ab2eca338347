#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for a few seconds (default 10).
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-10}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo fuzz build
for target in $(cargo fuzz list); do
    echo "fuzz: $target for ${seconds}s"
    if cargo fuzz run "$target" -- -max_total_time="$seconds" >"$log" 2>&1; then
        grep -E '^Done' "$log" || true
    else
        tail -n 60 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
done
