#!/bin/sh
# Install Debian packages without leaving their services running or enabled.
#
#   deploy/install-quietly.sh "PACKAGE ..." "SERVICE ..."
#
# Packages such as nginx, caddy, redis-server, prometheus or postgresql start a system
# service on install (nginx and caddy on port 80, Redis on 6379...). The tests and the
# examples start their own instances on loopback ports, so service start-up is blocked
# during the install with a temporary policy-rc.d (exit 101), and the SERVICEs are
# disabled and stopped afterwards in case one got started anyway. Packages already
# installed are skipped; apt is retried three times on a registry hiccup, then fails
# loudly. Used by deploy/gateways/install.sh and .ci/install-services.sh.
set -eu

packages=$1
services=${2:-}
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

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
        printf '#!/bin/sh\n# added by deploy/install-quietly.sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
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

# Nothing may be left listening or started at boot.
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
