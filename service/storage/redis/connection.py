"""Where Redis is: the --redis-url forms, clients for them, and a URL safe to log.

* ``redis://[user@]host:port[/db]`` and ``rediss://...`` (TLS), ``unix:///path``:
  redis-py's own URL forms (query options such as ``?ssl_cert_reqs=none`` pass through).
* ``redis+sentinel://[user@]host:port,host:port,.../mastername[/db]`` (and
  ``rediss+sentinel://`` for TLS to the servers): ask those Sentinels for the master
  of ``mastername``; after a failover the next connection goes to the new master.

The password never comes from a flag (flags show in `ps`): it comes from
PROCESS_STATUS_REDIS_PASSWORD or --redis-password-file, and is passed to redis-py
separately, so the URL as configured can always be logged (`redacted` strips any
password typed into it anyway).

Clients are built without redis-py's automatic retries: a write that fails is
answered 503 (safe to retry), and the follower reconnects with its own backoff.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)


class UrlError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    password: str | None = field(default=None, repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    tls: bool = False

    def client(self, *, socket_timeout: float, connect_timeout: float = 2.0,
               max_connections: int = 4) -> Redis:
        """A new client with its own pool (redis-py's pool raises past max_connections)."""
        options: dict[str, Any] = {
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": connect_timeout,
            "retry": Retry(NoBackoff(), 0),
            "max_connections": max_connections,
            "health_check_interval": 0,
        }
        if self.password is not None:
            options["password"] = self.password
        if not self.sentinels:
            client: Redis = Redis.from_url(self.url, **options)
            return client
        if self.username is not None:
            options["username"] = self.username
        master: Redis = self.sentinel(connect_timeout).master_for(
            self.master, db=self.db, ssl=self.tls, **options)
        return master

    def sentinel(self, timeout: float = 2.0) -> Sentinel:
        """A client of the Sentinels of a redis+sentinel:// URL."""
        assert self.sentinels, "not a redis+sentinel:// target"
        sentinel: Sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(self.sentinels), socket_timeout=timeout, socket_connect_timeout=timeout)
        return sentinel

    @property
    def redacted(self) -> str:
        return redacted(self.url)


def parse(url: str, password: str | None) -> Target:
    """Check `url` and return the Target; UrlError says what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise UrlError(f"scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    if parts.scheme not in SENTINEL_SCHEMES:
        if parts.scheme != "unix" and not parts.hostname:
            raise UrlError("no host: expected redis://HOST:PORT[/DB]")
        return Target(url, password)
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise UrlError(f"sentinel {item!r} is not HOST:PORT")
        sentinels.append((host.strip("[]"), int(port)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise UrlError("expected redis+sentinel://HOST:PORT,HOST:PORT/MASTERNAME[/DB]")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    if parts.password:
        password = urllib.parse.unquote(parts.password)
    return Target(url, password, tuple(sentinels), path[0],
                  int(path[1]) if len(path) == 2 else 0, username,
                  parts.scheme == "rediss+sentinel")


def redacted(url: str) -> str:
    """`url` with any password replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
