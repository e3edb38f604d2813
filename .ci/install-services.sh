#!/bin/sh
# Install the real servers and tools the tests drive, from Debian, without starting them:
#
#   redis-server, redis-sentinel -> the Redis backend's tests (tests/e2e/test_redis_*.py,
#                                   tests/storage/redis/, tests/web on both backends)
#   prometheus (with promtool)   -> tests/e2e/test_prometheus.py: `promtool check/test
#                                   rules` and a real Prometheus scraping a real `serve`
#   systemd                      -> `systemd-analyze verify` of deploy/systemd
#   postgresql-15                -> the Postgres kit's tests and the posts example
#                                   (integrations/postgres/, examples/posts/): each runs its
#                                   own initdb cluster as the `postgres` user
#
# Usage: .ci/install-services.sh        (root, or a user with sudo)
#
# Through deploy/install-quietly.sh, as deploy/gateways/install.sh: their services (Redis
# on :6379, Sentinel on :26379, Prometheus on :9090, a node exporter, PostgreSQL on :5432)
# are neither left running nor enabled; the tests start their own on free loopback ports.
# A registry hiccup is retried three times; running it again is a no-op.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
sh "$here/../deploy/install-quietly.sh" \
    "redis-server redis-sentinel prometheus systemd postgresql-15" \
    "redis-server redis-sentinel prometheus prometheus-node-exporter postgresql"

echo "installed:"
for b in redis-server redis-sentinel redis-cli prometheus promtool systemd-analyze; do
    printf '  %-16s %s\n' "$b" "$(command -v "$b" || echo MISSING)"
done
printf '  %-16s %s\n' initdb "$(ls /usr/lib/postgresql/15/bin/initdb 2>/dev/null || echo MISSING)"
