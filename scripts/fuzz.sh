#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each in turn for SECONDS (default 30), keeping its
# corpus under fuzz/corpus/<target> (gitignored except the seed-* files committed on purpose),
# then prints executions, executions per second and coverage per target.
# A crash or leak stops the run: the log tail is printed and the input is in fuzz/artifacts/.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 enables them on the stable toolchain.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-30}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# libFuzzer's default -max_len is 4 KiB; the JWT reader must see tokens past its 64 KiB cap.
max_len() {
    case "$1" in
        jwt_claims) echo 66000 ;;
        *) echo 0 ;; # 0: libFuzzer's default (4 KiB, or the largest corpus file)
    esac
}

cargo fuzz build
rows=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len="$(max_len "$target")" -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz target $target failed"
        exit 1
    fi
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log")
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log")
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | awk '{print $2}')
    files=$(find "corpus/$target" -type f | wc -l)
    rows+=("$(printf '| %s | %s | %s | %s | %s |' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$files")")
done
echo
echo "fuzz: ${seconds}s per target, $(date -u +%F)"
echo "| target | executions | exec/s | coverage (edges) | corpus files |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
