#!/usr/bin/env bash
# CI smoke run: every cargo-fuzz target for a few seconds (default 10), via scripts/fuzz.sh
# (same build, corpora and per-target settings as the long runs).
set -euo pipefail
exec bash "$(dirname "$0")/fuzz.sh" "${1:-10}"
