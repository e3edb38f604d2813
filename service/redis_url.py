"""The --redis-url grammar, in one place: config validates with it at start, and the Redis
backend builds its clients from what it returns. Standard library only.

* ``redis://[user@]host:port[/db]`` and ``rediss://...`` (TLS), ``unix:///path[?db=N]``:
  redis-py's own URL forms (query options such as ``?ssl_cert_reqs=none`` pass through).
* ``redis+sentinel://[user@]host:port,host:port,.../mastername[/db]`` (and
  ``rediss+sentinel://`` for TLS to the servers): ask those Sentinels for the master of
  ``mastername``.

Never a password: URLs show in logs and in `ps`; it comes from PROCESS_STATUS_REDIS_PASSWORD
or --redis-password-file.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES)
FORMS = ("redis://HOST:PORT[/DB], rediss://... (TLS), unix:///PATH or "
         "redis+sentinel://HOST:PORT,HOST:PORT/MASTERNAME[/DB]")


@dataclass(frozen=True, slots=True)
class RedisUrl:
    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    tls: bool = False


def parse(url: str) -> RedisUrl:
    """Check `url`; ValueError says what is wrong and what is accepted."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in SENTINEL_SCHEMES:
            parts.port  # noqa: B018 -- a port that is not a number raises here
    except ValueError:
        raise ValueError(f"not a URL of the accepted forms: {FORMS}") from None
    if parts.scheme not in SCHEMES or "://" not in url:
        raise ValueError(f"expected {FORMS}")
    if parts.password is not None:
        raise ValueError("put no password in the URL (it would show in logs and `ps`): use "
                         "PROCESS_STATUS_REDIS_PASSWORD or --redis-password-file")
    username = urllib.parse.unquote(parts.username) if parts.username else None
    if parts.scheme == "unix":
        if not parts.path or parts.path == "/":
            raise ValueError("no socket path: expected unix:///PATH")
        return RedisUrl(url, username=username)
    if parts.scheme not in SENTINEL_SCHEMES:
        if not parts.hostname:
            raise ValueError("no host: expected redis://HOST:PORT[/DB]")
        database = parts.path.strip("/")
        if database and not database.isdigit():
            raise ValueError(f"database {database!r} is not a number: expected "
                             "redis://HOST:PORT[/DB]")
        return RedisUrl(url, db=int(database or 0), username=username,
                        tls=parts.scheme == "rediss")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, sep, number = item.rpartition(":")
        if not sep or not host or not number.isdigit():
            raise ValueError(f"sentinel {item!r} is not HOST:PORT")
        sentinels.append((host.strip("[]"), int(number)))
    path = [piece for piece in parts.path.split("/") if piece]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("expected redis+sentinel://HOST:PORT,HOST:PORT/MASTERNAME[/DB]")
    return RedisUrl(url, tuple(sentinels), path[0], int(path[1]) if len(path) == 2 else 0,
                    username, parts.scheme == "rediss+sentinel")


def redacted(url: str) -> str:
    """`url` with any password replaced by `***` (for URLs from elsewhere than config)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.netloc.rpartition('@')[2]}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
