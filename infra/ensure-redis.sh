#!/usr/bin/env bash
# Make sure a redis-server binary exists: the limiter's Redis tests and benchmarks start their
# own on a free port. Installs Debian's package when it is missing and we are root.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    # The package starts a system server on 6379; the tests never use it.
    exit 0
fi
echo "redis-server is missing: install it (Debian: apt-get install redis-server)" >&2
exit 1
