"""create_backend(settings, ...) -> Backend: --backend local or redis, with its collector.

Storage's own front door: the web layer asks for a Backend and knows nothing of which.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from service.config import BackendKind, Settings
from service.storage.backend import Backend
from service.storage.files import Files
from service.storage.local import LocalBackend, LocalOptions
from service.storage.redis import connection
from service.storage.redis.backend import RedisBackend, RedisOptions
from service.storage.redis.stats import RedisCollector
from service.storage.stats import StorageCollector
from service.store import StatusStore


def create_backend(
    settings: Settings, store: StatusStore, registry: CollectorRegistry, files: Files | None,
    service_pid: int | None = None,
) -> Backend:
    if settings.backend is BackendKind.REDIS:
        target = connection.parse(settings.redis_url, settings.redis_password)
        redis = RedisBackend(
            RedisOptions(target=target, wait_replicas=settings.redis_wait_replicas,
                         wait_timeout=settings.redis_wait_timeout,
                         stream_maxlen=settings.redis_stream_maxlen),
            store,
        )
        registry.register(RedisCollector(redis.stats))
        return redis
    local = LocalBackend(
        LocalOptions(data_dir=settings.data_dir, durability=settings.durability,
                     snapshot_interval=settings.snapshot_interval,
                     fsync_interval=settings.fsync_interval,
                     journal_max_bytes=settings.journal_max_bytes, service_pid=service_pid),
        store, files,
    )
    registry.register(StorageCollector(local.stats))
    return local
