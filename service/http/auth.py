"""Bearer tokens: who may write, who may read. Comparisons take constant time."""

from __future__ import annotations

import enum
import hashlib
import hmac
from collections.abc import Iterable


class Access(enum.Enum):
    OPEN = "open"  # health, readiness, the spec
    READ = "read"
    WRITE = "write"


class Authenticator:
    def __init__(self, write_tokens: Iterable[str], read_tokens: Iterable[str]) -> None:
        # Comparing fixed-size digests keeps the time independent of the token length
        # and of how much of a guess matches.
        self._write = [_digest(token) for token in write_tokens]
        read_only = [_digest(token) for token in read_tokens]
        self._read = read_only + self._write
        self.reads_need_token = bool(read_only)
        self.writes_need_token = bool(self._write)

    def needs_token(self, access: Access) -> bool:
        if access is Access.WRITE:
            return self.writes_need_token
        return access is Access.READ and self.reads_need_token

    def allows(self, access: Access, token: str | None) -> bool:
        if not self.needs_token(access):
            return True
        if not token:
            return False
        digest = _digest(token)
        accepted = self._write if access is Access.WRITE else self._read
        matched = False
        for candidate in accepted:
            matched |= hmac.compare_digest(digest, candidate)
        return matched


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
