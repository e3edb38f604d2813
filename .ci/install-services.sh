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
# Installing these packages normally starts their system services (Redis on :6379,
# Sentinel on :26379, Prometheus on :9090 and a node exporter). The tests start their own
# instances on free loopback ports, so -- as deploy/gateways/install.sh does -- this
# blocks service start-up during the install with a temporary policy-rc.d (exit 101)
# and afterwards stops and disables the units in case they got started anyway. A
# registry hiccup is retried three times; running it again is a no-op.
set -eu

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

packages="redis-server redis-sentinel prometheus systemd postgresql-15"
services="redis-server redis-sentinel prometheus prometheus-node-exporter postgresql"
missing=""
for p in $packages; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -n "$missing" ]; then
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# added by .ci/install-services.sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        created_policy=1
    fi
    cleanup() {
        if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi
    }
    trap cleanup EXIT INT TERM

    attempt=1
    while :; do
        # shellcheck disable=SC2086
        if $sudo apt-get update -qq \
            && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
                --no-install-recommends $missing; then
            break
        fi
        if [ "$attempt" -ge 3 ]; then
            echo "ERROR: apt-get install$missing failed 3 times" >&2
            exit 1
        fi
        attempt=$((attempt + 1))
        echo "apt-get install$missing failed; retrying in 10 s (attempt $attempt of 3)" >&2
        sleep 10
    done
fi

# Nothing may be left listening or started at boot: the tests run their own.
for svc in $services; do
    if command -v systemctl >/dev/null 2>&1; then
        # Works without a running systemd too (it only edits the symlinks).
        $sudo systemctl disable "$svc" >/dev/null 2>&1 || true
        if [ -d /run/systemd/system ]; then
            $sudo systemctl stop "$svc" >/dev/null 2>&1 || true
        fi
    fi
    if [ -x "/etc/init.d/$svc" ]; then
        $sudo "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        if command -v update-rc.d >/dev/null 2>&1; then
            $sudo update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
    fi
done

echo "installed:"
for b in redis-server redis-sentinel redis-cli prometheus promtool systemd-analyze; do
    printf '  %-16s %s\n' "$b" "$(command -v "$b" || echo MISSING)"
done
printf '  %-16s %s\n' initdb "$(ls /usr/lib/postgresql/15/bin/initdb 2>/dev/null || echo MISSING)"
