"""Settings: one frozen object built from flags and PROCESS_STATUS_* env vars.

Every flag `--some-flag` has the env var `PROCESS_STATUS_SOME_FLAG`; a flag given
on the command line wins over the env var, which wins over the default. Values
are validated once, here; a bad one is a `ConfigError` whose message names the
flag, the env var and what would be accepted.
"""

from __future__ import annotations

import argparse
import enum
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from service import redis_url
from service.positions import POSITION_HEADER

ENV_PREFIX = "PROCESS_STATUS_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(ValueError):
    pass


class Durability(enum.StrEnum):
    """When a write counts as durable: see docs/durability.md for what each can lose."""

    FSYNC = "fsync"
    BATCH = "batch"
    SNAPSHOT = "snapshot"


class BackendKind(enum.StrEnum):
    """Where writes are made durable: see docs/scale-out.md."""

    LOCAL = "local"
    REDIS = "redis"


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


# -- parsers: each takes the raw string and returns the typed value or raises ValueError


def _address(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    return Address(host, int(port))


def _optional_address(text: str) -> Address | None:
    return None if text.lower() in ("off", "none", "") else _address(text)


def _whole(text: str, floor: int) -> int:
    """A whole number >= floor; the message says what is accepted, never Python's."""
    stripped = text.strip()
    if not (stripped.isascii() and stripped.isdigit()) or int(stripped) < floor:
        raise ValueError(f"must be a whole number >= {floor}, e.g. {max(floor, 1)}")
    return int(stripped)


def _seconds(text: str, floor_included: bool) -> float:
    """A finite number of seconds, > 0 (or >= 0 when `floor_included`)."""
    bound = ">= 0" if floor_included else "> 0"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 if floor_included else value > 0) or value == float("inf"):
        raise ValueError(f"must be a number of seconds {bound}, e.g. 0.1 or 30 (no unit)")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole(text, 0)


def _positive_float(text: str) -> float:
    return _seconds(text, floor_included=False)


def _non_negative_float(text: str) -> float:
    return _seconds(text, floor_included=True)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.lower()

    return parse


def _redis_url(text: str) -> str:
    redis_url.parse(text)  # the one grammar; the backend parses the same text again
    return text


def _duration(text: str) -> float:
    """Seconds, or milliseconds with an `ms` suffix: 0.1, 0.1s and 100ms are the same."""
    lowered = text.strip().lower()
    scale, number = (1000, lowered[:-2]) if lowered.endswith("ms") else \
        (1, lowered.removesuffix("s"))
    try:
        value = float(number) / scale
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a duration > 0: seconds (0.1, 0.1s) or milliseconds (100ms)")
    return value


def _gate_status(text: str) -> int:
    if text not in ("425", "503"):
        raise ValueError("must be 425 (Too Early) or 503 (for clients that cannot handle 425)")
    return int(text)


def _header_name(text: str) -> str:
    if not text or any(not (c.isalnum() or c in "-_") for c in text):
        raise ValueError("must be an HTTP header name of letters, digits, '-' and '_'")
    return text


def _readable_file(text: str) -> str:
    try:
        with open(text, "rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror}") from None
    return text


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


@dataclass(frozen=True)
class Option:
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = ""
    is_switch: bool = False
    tokens_env: str | None = None
    """A `*-tokens-file` flag: tokens come from the file and from ENV_PREFIX + this
    (comma-separated), both at once."""
    secret_env: str | None = None
    """A secret's file flag: the secret comes from the file, or else ENV_PREFIX + this."""
    setting: str = ""
    """The Settings field it fills (the field it is declared on)."""

    @property
    def dest(self) -> str:
        """The argparse destination (from the flag)."""
        return self.flag.removeprefix("--").replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.dest.upper()


def _setting(default: Any, flag: str, parse: Callable[[str], Any], help: str,
             metavar: str = "", *, is_switch: bool = False, tokens_env: str | None = None,
             secret_env: str | None = None) -> Any:
    """A Settings field and its Option in one declaration; tokens and secrets stay out of
    the repr (logs, tracebacks, debuggers)."""
    secret = tokens_env is not None or secret_env is not None
    return field(default=default, repr=not secret, metadata={"option": Option(
        flag, parse, help, metavar, is_switch, tokens_env, secret_env)})


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting, declared once: its default, then its flag (and so its env var), how the
    flag's text is parsed, its help and metavar."""

    bind: Address = _setting(
        Address("127.0.0.1", 8080),
        "--bind", _address, "API address HOST:PORT", "HOST:PORT")
    metrics_bind: Address | None = _setting(
        Address("127.0.0.1", 9464),
        "--metrics-bind", _optional_address, "Prometheus /metrics address, or 'off'",
        "HOST:PORT")
    data_dir: str = _setting(
        "./data",
        "--data-dir", str, "directory for the snapshot and journal", "DIR")
    durability: Durability = _setting(
        Durability.FSYNC,
        "--durability", lambda text: Durability(_choice(*Durability)(text)),
        "fsync | batch | snapshot (docs/durability.md)", "MODE")
    fsync_interval: float = _setting(
        1.0,
        "--fsync-interval", _positive_float, "batch mode: seconds between journal fsyncs",
        "SECONDS")
    snapshot_interval: float = _setting(
        10.0,
        "--snapshot-interval", _positive_float, "seconds between snapshots (when changed)",
        "SECONDS")
    journal_max_bytes: int = _setting(
        64 * 1024 * 1024,
        "--journal-max-bytes", _positive_int, "snapshot early once the journal passes this",
        "BYTES")
    write_tokens: tuple[str, ...] = _setting(
        (),
        "--write-tokens-file", str, "file with one write token per line", "FILE",
        tokens_env="WRITE_TOKENS")
    read_tokens: tuple[str, ...] = _setting(
        (),
        "--read-tokens-file", str, "file with one read token per line (makes reads need a "
        "token)", "FILE",
        tokens_env="READ_TOKENS")
    allow_anonymous_writes: bool = _setting(
        False,
        "--allow-anonymous-writes", _bool, "allow writes without a token on a non-loopback "
        "address", is_switch=True)
    allow_reset: bool = _setting(
        False,
        "--allow-reset", _bool, "enable DELETE /status (wipes everything; for tests)",
        is_switch=True)
    max_entities: int = _setting(
        1_000_000,
        "--max-entities", _positive_int, "entities the store may hold", "N")
    max_batch: int = _setting(
        10_000,
        "--max-batch", _positive_int, "entries one POST /status may carry", "N")
    max_body_bytes: int = _setting(
        4 * 1024 * 1024,
        "--max-body-bytes", _positive_int, "largest request body accepted", "BYTES")
    entity_metrics_limit: int = _setting(
        1000,
        "--entity-metrics-limit", _non_negative_int, "entities exported as per-entity "
        "metrics", "N")
    max_wait: float = _setting(
        30.0,
        "--max-wait", _non_negative_float, "longest ?wait= a client may ask for", "SECONDS")
    max_waiters: int = _setting(
        10_000,
        "--max-waiters", _positive_int, "requests that may wait at once (long-polls and the "
        "gate)", "N")
    gate_wait: float = _setting(
        0.1,
        "--gate-wait", _non_negative_float, "how long the gate waits before answering 425",
        "SECONDS")
    retry_after: int = _setting(
        1,
        "--retry-after", _non_negative_int, "Retry-After seconds on a gate 425", "SECONDS")
    token_header: str = _setting(
        POSITION_HEADER,
        "--token-header", _header_name, "header carrying entity/ts tokens", "NAME")
    gate_status: int = _setting(
        425,
        "--gate-status", _gate_status, "status when not processed: 425 or 503", "STATUS")
    gate_cache_seconds: int = _setting(
        5,
        "--gate-cache-seconds", _non_negative_int, "max-age of the gate's 200 (a processed "
        "position stays processed); 0 = no-store", "SECONDS")
    keep_alive: float = _setting(
        75.0,
        "--keep-alive", _positive_float, "idle keep-alive seconds (raise behind a pooling "
        "proxy)", "SECONDS")
    header_timeout: float = _setting(
        10.0,
        "--header-timeout", _positive_float, "seconds a request's headers may take to "
        "arrive (then 408)", "SECONDS")
    body_timeout: float = _setting(
        10.0,
        "--body-timeout", _positive_float, "seconds a request body may take to arrive "
        "(then 408)", "SECONDS")
    max_connections: int = _setting(
        10_000,
        "--max-connections", _positive_int, "open API connections; at the limit the oldest "
        "idle one is closed, else the new one gets 503", "N")
    backlog: int = _setting(
        2048,
        "--backlog", _positive_int, "listen backlog of the API socket", "N")
    tls_cert: str | None = _setting(
        None,
        "--tls-cert", _readable_file, "PEM certificate (chain) to serve the API over HTTPS",
        "FILE")
    tls_key: str | None = _setting(
        None,
        "--tls-key", _readable_file, "PEM private key of --tls-cert", "FILE")
    metrics_tokens: tuple[str, ...] = _setting(
        (),
        "--metrics-tokens-file", str, "file with one token per line that /metrics then "
        "requires", "FILE",
        tokens_env="METRICS_TOKENS")
    workers: int = _setting(
        0,
        "--workers", _non_negative_int, "worker processes, each a full replica (redis "
        "backend only; 0: one per available CPU with redis, 1 with local)", "N")
    """0: one with the local backend, one per available CPU with Redis (see web.server)."""
    shutdown_timeout: float = _setting(
        5.0,
        "--shutdown-timeout", _positive_float, "seconds in-flight requests get on SIGTERM",
        "SECONDS")
    log_level: str = _setting(
        "info",
        "--log-level", _choice(*LOG_LEVELS), " | ".join(LOG_LEVELS), "LEVEL")
    access_log: bool = _setting(
        False,
        "--access-log", _bool, "log every request (costs over half the throughput)",
        is_switch=True)
    backend: BackendKind = _setting(
        BackendKind.LOCAL,
        "--backend", lambda text: BackendKind(_choice(*BackendKind)(text)),
        "local | redis (docs/scale-out.md)", "KIND")
    redis_url: str = _setting(
        "redis://127.0.0.1:6379/0",
        "--redis-url", _redis_url, "redis://, rediss:// or redis+sentinel://H:P,H:P/MASTER",
        "URL")
    redis_password: str | None = _setting(
        None,
        "--redis-password-file", str, "file holding the Redis password (also "
        f"{ENV_PREFIX}REDIS_PASSWORD)", "FILE",
        secret_env="REDIS_PASSWORD")
    redis_wait_replicas: int = _setting(
        0,
        "--redis-wait-replicas", _non_negative_int, "acknowledge a write only once this many "
        "Redis replicas have it (WAIT)", "N")
    redis_wait_timeout: float = _setting(
        0.1,
        "--redis-wait-timeout", _duration, "how long WAIT may take: seconds, or 100ms",
        "DURATION")
    redis_stream_maxlen: int = _setting(
        100_000,
        "--redis-stream-maxlen", _positive_int, "stream entries Redis keeps (MAXLEN ~); a "
        "replica further behind resyncs", "N")

    @property
    def graceful_timeout(self) -> float:
        """What gunicorn must allow the worker after SIGTERM before it SIGKILLs it.

        aiohttp waits shutdown_timeout for handlers, cancels them and waits again,
        then our cleanup writes the final snapshot (a million entities take about
        a second here; the margin covers slow disks).
        """
        return 2 * self.shutdown_timeout + 1 + 30


OPTIONS: tuple[Option, ...] = tuple(replace(item.metadata["option"], setting=item.name)
                                     for item in fields(Settings))
"""Every flag, in the order of the Settings fields (and so of `--help`)."""
DEFAULTS = Settings()


def option(flag: str) -> Option:
    """The Option for `flag` (e.g. "--data-dir")."""
    return next(candidate for candidate in OPTIONS if candidate.flag == flag)


def shown_default(option: Option) -> str:
    """The default as `--help` and docs/configuration.md show it."""
    default = getattr(DEFAULTS, option.setting)
    # `is`, not `in`: 0 == False, and a 0 default (--workers) is a number, not "off".
    if default is False:
        return "off"
    return "none" if default is None or default == () else str(default)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option in OPTIONS:
        help_text = f"{option.help} [env {option.env}; default {shown_default(option)}]"
        if option.is_switch:
            parser.add_argument(option.flag, action="store_const", const="true", default=None,
                                help=help_text)
        else:
            parser.add_argument(option.flag, metavar=option.metavar, default=None, help=help_text)


def from_sources(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Build Settings from parsed flags (None = not given) and the environment."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        raw = getattr(args, option.dest, None)
        source = option.flag
        if raw is None and option.env in environ:
            raw, source = environ[option.env], option.env
        parsed = None
        if raw is not None:
            try:
                parsed = option.parse(raw)
            except ValueError as exc:
                raise ConfigError(
                    f"{source}={raw!r} is invalid: {exc} (flag {option.flag}, env {option.env})"
                ) from None
        if option.tokens_env is not None:
            values[option.setting] = _tokens(environ, option.tokens_env, parsed, option.flag)
        elif option.secret_env is not None:
            values[option.setting] = _secret(environ, option.secret_env, parsed, option.flag)
        elif raw is not None:
            values[option.setting] = parsed
    settings = Settings(**values)
    _check(settings)
    return settings


def _tokens(
    environ: Mapping[str, str], name: str, path: str | None, flag: str
) -> tuple[str, ...]:
    """Tokens from the comma-separated env var and the file (one per line, # comments)."""
    tokens = [token.strip() for token in environ.get(ENV_PREFIX + name, "").split(",")]
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                tokens += [line.strip() for line in handle]
        except OSError as exc:
            raise ConfigError(f"{flag} {path!r} cannot be read: {exc.strerror}") from None
    found = tuple(token for token in tokens if token and not token.startswith("#"))
    for token in found:
        if len(token) < 16 or any(c.isspace() or c == "," for c in token):
            raise ConfigError(
                f"a token from {ENV_PREFIX + name} or {flag} is too weak or malformed: use at "
                "least 16 characters with no spaces or commas,"
                " e.g. the output of `openssl rand -hex 32`"
            )
    return found


def _secret(environ: Mapping[str, str], name: str, path: str | None, flag: str) -> str | None:
    """A secret from the file (first line) or else the env var; never echoed in errors."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.readline().strip() or None
        except OSError as exc:
            raise ConfigError(f"{flag} {path!r} cannot be read: {exc.strerror}") from None
    return environ.get(ENV_PREFIX + name) or None


def _check(settings: Settings) -> None:
    if not settings.bind.is_loopback and not settings.write_tokens and \
            not settings.allow_anonymous_writes:
        raise ConfigError(
            f"refusing to serve writes without a token on non-loopback address {settings.bind}: "
            f"set {ENV_PREFIX}WRITE_TOKENS (comma-separated) or --write-tokens-file, bind "
            "127.0.0.1, or pass --allow-anonymous-writes if the network is trusted"
        )
    if settings.metrics_bind is not None and settings.metrics_bind == settings.bind and \
            settings.bind.port != 0:
        raise ConfigError("--metrics-bind must differ from --bind: metrics have their own port")
    if settings.workers > 1 and settings.backend is BackendKind.LOCAL:
        raise ConfigError(
            f"--workers {settings.workers} needs --backend redis: the local backend keeps its "
            "state in one process (one data dir, one lock); use --workers 1, or share the "
            "state through Redis"
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("--tls-cert and --tls-key go together: give both (PEM files), or "
                          "neither and terminate TLS in front of the service")
    if settings.token_header.lower() in ("authorization", "x-process-status-token"):
        raise ConfigError("--token-header must not be Authorization or X-Process-Status-Token")
