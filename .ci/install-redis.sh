#!/usr/bin/env bash
# Installs redis-server (needed by the redis-entraid-emulator tests) from the distribution's
# packages when it is missing. Idempotent.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server present: $(redis-server --version)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends redis-server
redis-server --version
