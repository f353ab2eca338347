#!/usr/bin/env bash
# What redis-entraid adds to an application's build, next to redis-rs's own `entra-id` feature.
#
# usage: scripts/footprint.sh [--build-cost] [--list] [--no-check]
#
# Writes minimal applications into a throwaway directory (path dependencies on this checkout's
# crates; crates.io for the rest, resolved fresh, as a new user would get them), and prints one
# markdown table per measure on stdout (progress goes to stderr):
#
# - crates: unique crates (name + version) in `cargo tree -e normal` of each app (host target,
#   proc-macros included, build-dependencies not counted, the app itself not counted), how many
#   its base app does not have, duplicates (one name, several versions) and pre-release versions.
#   Bases: redis 1.x + tokio + rustls (ring) for the async apps, redis + rustls + r2d2 for the
#   blocking one, redis (smol) + smol + rustls for async-std.
# - with --list: the added crates of each app, one line per app (what to cut next).
# - with --build-cost: clean `cargo build --release` time (fresh target directory, crates
#   downloaded beforehand) and the binary's size as built and stripped, for redis-rs
#   `entra-id`, ours on tokio and ours blocking (BUILD_APPS overrides the list).
#
# Exits non-zero (unless --no-check) when one of OUR apps has a pre-release crate, or a
# duplicate that its base does not have and that is not in KNOWN_DUPLICATES below. Needs only
# cargo (and `strip` for the stripped size, reported as n/a without it).
set -euo pipefail

# FOOTPRINT_ROOT measures another checkout (e.g. to compare with main).
ROOT=${FOOTPRINT_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
BUILD_COST=0
LIST=0
CHECK=1
for arg in "$@"; do
    case "$arg" in
        --build-cost) BUILD_COST=1 ;;
        --list) LIST=1 ;;
        --no-check) CHECK=0 ;;
        -h | --help)
            sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done
BUILD_APPS=${BUILD_APPS:-"redis-rs-entra-id ours-tokio ours-blocking"}

# Duplicates we know of in our graphs and cannot remove from here, with the reason. A new one
# fails the check; remove an entry as soon as its reason is gone. (None today.)
KNOWN_DUPLICATES=""

WORK=$(mktemp -d "${TMPDIR:-/tmp}/redis-entraid-footprint.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '%s\n' "$*" >&2; }

RUSTLS='rustls = { version = "0.23", default-features = false, features = ["ring", "std", "tls12", "logging"] }'
REDIS_TOKIO='"tokio-comp", "tokio-rustls-comp"'
TOKIO='tokio = { version = "1", features = ["rt-multi-thread", "macros"] }'

# app NAME BASE DEPENDENCIES MAIN
APPS=()
declare -A BASE_OF
app() {
    local name=$1 base=$2 deps=$3 main=$4
    mkdir -p "$WORK/$name/src"
    cat >"$WORK/$name/Cargo.toml" <<EOF
[package]
name = "$name"
version = "0.0.0"
edition = "2021"
publish = false

# Its own workspace: resolved alone, as a separate application would be.
[workspace]

[dependencies]
$deps
EOF
    printf '%s\n' "$main" >"$WORK/$name/src/main.rs"
    APPS+=("$name")
    BASE_OF[$name]=$base
}

app base-tokio "" "redis = { version = \"1\", features = [$REDIS_TOKIO] }
$TOKIO
$RUSTLS" '#[tokio::main]
async fn main() -> redis::RedisResult<()> {
    let client = redis::Client::open("rediss://my-cache.redis.azure.net:10000")?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await?;
    Ok(())
}'

app base-sync "" "redis = { version = \"1\", features = [\"tls-rustls\", \"r2d2\"] }
r2d2 = \"0.8\"
$RUSTLS" 'fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = redis::Client::open("rediss://my-cache.redis.azure.net:10000")?;
    let pool = r2d2::Pool::builder().build(client)?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut *pool.get()?)?;
    Ok(())
}'

app base-smol "" "redis = { version = \"1\", features = [\"smol-comp\", \"smol-rustls-comp\"] }
smol = \"2\"
$RUSTLS" 'fn main() -> redis::RedisResult<()> {
    smol::block_on(async {
        let client = redis::Client::open("rediss://my-cache.redis.azure.net:10000")?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await?;
        Ok(())
    })
}'

app redis-rs-entra-id base-tokio "redis = { version = \"1\", features = [$REDIS_TOKIO, \"entra-id\"] }
$TOKIO
$RUSTLS" 'use redis::{AsyncConnectionConfig, Client, EntraIdCredentialsProvider, RetryConfig};

#[tokio::main]
async fn main() -> redis::RedisResult<()> {
    let mut provider = EntraIdCredentialsProvider::new_system_assigned_managed_identity()?;
    provider.start(RetryConfig::default());
    let client = Client::open("rediss://my-cache.redis.azure.net:10000")?;
    let config = AsyncConnectionConfig::new().set_credentials_provider(provider);
    let mut con = client.get_multiplexed_async_connection_with_config(&config).await?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await?;
    Ok(())
}'

app ours-tokio base-tokio "redis = { version = \"1\", features = [$REDIS_TOKIO] }
$TOKIO
$RUSTLS
redis-entraid-tokio = { path = \"$ROOT/runtime-tokio\", features = [\"redis\"] }" 'use redis_entraid_tokio::{redis_async::EntraClient, Provider};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = Provider::from_env().await?;
    let client = EntraClient::new(
        redis::Client::open("rediss://my-cache.redis.azure.net:10000")?,
        provider,
    );
    let mut con = client.get_multiplexed_connection().await?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query_async(&mut con).await?;
    Ok(())
}'

app ours-blocking base-sync "redis = { version = \"1\", features = [\"tls-rustls\", \"r2d2\"] }
r2d2 = \"0.8\"
$RUSTLS
redis-entraid-blocking = { path = \"$ROOT/runtime-blocking\", features = [\"redis\"] }" 'use redis_entraid_blocking::redis_sync::{EntraClient, EntraConnectionManager};
use redis_entraid_blocking::Provider;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = Provider::from_env()?;
    let client = EntraClient::new(
        redis::Client::open("rediss://my-cache.redis.azure.net:10000")?,
        provider,
    );
    let pool = r2d2::Pool::builder().build(EntraConnectionManager::new(client))?;
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut *pool.get()?)?;
    Ok(())
}'

app ours-async-std base-smol "redis = { version = \"1\", features = [\"smol-comp\", \"smol-rustls-comp\"] }
smol = \"2\"
$RUSTLS
redis-entraid-async-std = { path = \"$ROOT/runtime-async-std\", features = [\"redis\"] }" 'fn main() {
    // Counted, not built by default (BUILD_APPS); names the crate so it would be linked.
    println!("{}", std::any::type_name::<redis_entraid_async_std::Provider>());
}'

# The crate list of an app: "name version" per line, sorted, the app itself left out.
crates() {
    (cd "$WORK/$1" && cargo tree -q -e normal --prefix none --format '{p}') |
        tail -n +2 | awk '{ print $1, $2 }' | sort -u
}
dups() { awk '{ print $1 }' "$WORK/$1.crates" | uniq -d | tr '\n' ' ' | sed 's/ $//'; }
prerelease() { awk '$2 ~ /-/ { print $1 "@" substr($2, 2) }' "$WORK/$1.crates" | tr '\n' ' ' | sed 's/ $//'; }

for name in "${APPS[@]}"; do
    log "resolving $name"
    crates "$name" >"$WORK/$name.crates"
done

count() { wc -l <"$WORK/$1.crates" | tr -d ' '; }
added() { comm -13 "$WORK/$2.crates" "$WORK/$1.crates" | wc -l | tr -d ' '; }

failures=()
entra_added=$(added redis-rs-entra-id base-tokio)
echo "## Crates ($(date -u +%Y-%m-%d), cargo tree -e normal, $(rustc -vV | sed -n 's/^host: //p'))"
echo
echo "| app | unique crates | added over its base | duplicates | pre-release |"
echo "|---|---|---|---|---|"
for name in "${APPS[@]}"; do
    base=${BASE_OF[$name]}
    if [ -n "$base" ]; then
        add=$(added "$name" "$base")
        case "$name" in ours-*) add="$add (goal ≤ $((entra_added / 2)))" ;; esac
    else
        add="(base)"
    fi
    d=$(dups "$name")
    p=$(prerelease "$name")
    echo "| $name | $(count "$name") | $add | ${d:--} | ${p:--} |"
    case "$name" in ours-*) ;; *) continue ;; esac
    [ -z "$p" ] || failures+=("$name has pre-release crates: $p")
    base_dups=" $(dups "$base") "
    for dup in $d; do
        case "$base_dups" in *" $dup "*) continue ;; esac
        case " $KNOWN_DUPLICATES " in *" $name:$dup "*) continue ;; esac
        failures+=("$name has two versions of $dup: $(awk -v n="$dup" '$1 == n { print $2 }' "$WORK/$name.crates" | tr '\n' ' ')")
    done
done
echo
echo "Added = crates of the app that its base does not have (another version of a base crate counts)."
echo "Known duplicates allowed in our graphs: ${KNOWN_DUPLICATES:-none} (reasons in scripts/footprint.sh)."

if [ "$LIST" = 1 ]; then
    echo
    echo "## Added crates"
    echo
    for name in "${APPS[@]}"; do
        base=${BASE_OF[$name]}
        [ -n "$base" ] || continue
        echo "- $name: $(comm -13 "$WORK/$base.crates" "$WORK/$name.crates" | awk '{ print $1 }' | tr '\n' ' ' | sed 's/ $//')"
    done
fi

if [ "$BUILD_COST" = 1 ]; then
    strip_cmd=$(command -v strip || true)
    echo
    echo "## Build cost (clean \`cargo build --release\`, $(nproc) CPUs)"
    echo
    echo "| app | clean build | binary | stripped |"
    echo "|---|---|---|---|"
    for name in $BUILD_APPS; do
        target="$WORK/target-$name"
        (cd "$WORK/$name" && cargo fetch -q)
        log "building $name (release, fresh target directory)"
        start=$(date +%s)
        (cd "$WORK/$name" && CARGO_TARGET_DIR="$target" cargo build -q --release)
        secs=$(($(date +%s) - start))
        bin="$target/release/$name"
        size=$(wc -c <"$bin")
        stripped=n/a
        if [ -n "$strip_cmd" ]; then
            cp "$bin" "$WORK/$name.stripped"
            "$strip_cmd" "$WORK/$name.stripped"
            stripped="$(awk -v b="$(wc -c <"$WORK/$name.stripped")" 'BEGIN { printf "%.1f MiB", b / 1048576 }')"
        fi
        echo "| $name | $((secs / 60))m $((secs % 60))s | $(awk -v b="$size" 'BEGIN { printf "%.1f MiB", b / 1048576 }') | $stripped |"
        # One target directory at a time: a release tree is a few hundred MB.
        rm -rf "$target"
    done
fi

if [ "$CHECK" = 1 ] && [ "${#failures[@]}" -gt 0 ]; then
    printf 'footprint check failed: %s\n' "${failures[@]}" >&2
    exit 1
fi
