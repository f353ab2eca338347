#!/usr/bin/env bash
# Issue 13, goals 2-4: redis-entraid-tokio side by side with redis-rs's own `entra-id` feature,
# in one process against one emulator (its https Entra endpoint with a client secret, its
# expiry-enforcing Redis proxy over a real redis-server). Prints the harness's tables and a
# table of ratios (ours / theirs, ours / floor) with a verdict per goal, then runs
# scripts/footprint.sh (goals 1 and 5) when it exists.
#
# Usage: bash scripts/bench-peers.sh [--connections N] [--rotations N] [--skip-economy]
#        [--rtt-ms MS]
# (defaults 1000 connections, 5 rotations: about 8 minutes of measuring after the build;
# --rtt-ms puts a relay adding MS per round trip between every client and Redis, a network
# instead of loopback).
# Needs cargo and redis-server (installed from the distribution when missing). The harness is
# its own cargo workspace (bench/peers, lock file committed) and builds into
# bench/peers/target (gitignored; BENCH_TARGET_DIR overrides it), so the library crates'
# lock file and target directory never see redis-rs's azure_identity dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "command: bash scripts/bench-peers.sh $*"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "machine: nproc $(nproc), kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | sed 's/^ *//' || echo 'cpu unknown')"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

if ! command -v cargo >/dev/null 2>&1; then
    echo "bench-peers: cargo is required" >&2
    exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
    bash .ci/install-redis.sh
fi
# redis-rs's `entra-id` feature pulls azure_core with its default reqwest + native-tls
# client, which links OpenSSL (openssl-sys finds it through pkg-config): a build dependency
# of theirs that ours does not have.
if ! pkg-config --exists openssl 2>/dev/null; then
    echo "OpenSSL headers or pkg-config missing (needed by redis-rs entra-id's native-tls); installing"
    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends libssl-dev pkg-config
fi

export CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$PWD/bench/peers/target}"
echo "building the harness (release) in $CARGO_TARGET_DIR"
build_start=$(date +%s)
cargo build --release --locked --manifest-path bench/peers/Cargo.toml
echo "build took $(( $(date +%s) - build_start )) s"

echo
echo "running (the numbers are read on the emulator's clock; see BENCHMARKS.md for how)"
status=0
"$CARGO_TARGET_DIR/release/redis-entraid-bench-peers" "$@" || status=$?
if [ "$status" != "0" ]; then
    echo "bench-peers: the harness failed (exit $status)" >&2
    exit "$status"
fi
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a)"

echo
if [ -f scripts/footprint.sh ]; then
    bash scripts/footprint.sh
else
    echo "scripts/footprint.sh is missing: goals 1 and 5 (footprint, build cost) are not measured by this run"
fi
