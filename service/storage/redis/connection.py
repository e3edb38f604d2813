"""Where Redis is: clients for a --redis-url (its grammar: service.redis_url).

The password never comes from the URL (service.redis_url refuses one): it comes from
PROCESS_STATUS_REDIS_PASSWORD or --redis-password-file, and is passed to redis-py
separately, so the URL as configured can always be logged.

Clients are built without redis-py's automatic retries: a write that fails is
answered 503 (safe to retry), and the follower reconnects with its own backoff.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from service import redis_url


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
        return redis_url.redacted(self.url)


def parse(url: str, password: str | None) -> Target:
    """The Target of a URL (ValueError for one config would have refused)."""
    parsed = redis_url.parse(url)
    return Target(parsed.url, password, parsed.sentinels, parsed.master, parsed.db,
                  parsed.username, parsed.tls)
