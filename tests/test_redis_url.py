"""The one --redis-url grammar: what config accepts is what the backend connects to."""

from __future__ import annotations

import pytest

from service.redis_url import RedisUrl, parse, redacted
from service.storage.redis.connection import parse as target


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", RedisUrl("redis://127.0.0.1:6379/0")),
    ("rediss://cache.internal:6380/2", RedisUrl("rediss://cache.internal:6380/2", db=2,
                                                tls=True)),
    ("redis://app@h:1", RedisUrl("redis://app@h:1", username="app")),
    ("unix:///run/redis.sock", RedisUrl("unix:///run/redis.sock")),
    ("redis+sentinel://10.0.0.5:26379,[::1]:26380/mymaster/3",
     RedisUrl("redis+sentinel://10.0.0.5:26379,[::1]:26380/mymaster/3",
              (("10.0.0.5", 26379), ("::1", 26380)), "mymaster", 3)),
])
def test_accepted_forms_and_what_they_name(url: str, expected: RedisUrl) -> None:
    assert parse(url) == expected
    built = target(url, "secret")  # the backend's clients come from the same fields
    assert (built.sentinels, built.master, built.db, built.password) == \
        (expected.sentinels, expected.master, expected.db, "secret")


@pytest.mark.parametrize(("url", "says"), [
    ("redis:///0", "no host"),
    ("redis://h:notaport/0", "accepted forms"),
    ("redis://h/zero", "is not a number"),
    ("redis://user:hunter2@h:1/0", "no password in the URL"),
    ("unix://", "no socket path"),
    ("http://h:1", "expected redis://"),
    ("127.0.0.1:6379", "expected redis://"),
    ("redis+sentinel://a:1,b/mymaster", "is not HOST:PORT"),
    ("redis+sentinel://a:1", "MASTERNAME"),
])
def test_refused_forms_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse(url)


def test_a_password_from_elsewhere_is_redacted() -> None:
    assert redacted("redis://app:hunter2@h:1/0") == "redis://app:***@h:1/0"
    assert redacted("redis://h:1/0") == "redis://h:1/0"
