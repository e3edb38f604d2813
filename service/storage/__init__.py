"""Storage: what makes a write durable. One `Backend` seam, the local backend behind it."""

from service.storage.backend import Backend, StartFailed, WriteFailed
from service.storage.local import LocalBackend, LocalOptions

__all__ = ["Backend", "LocalBackend", "LocalOptions", "StartFailed", "WriteFailed"]
