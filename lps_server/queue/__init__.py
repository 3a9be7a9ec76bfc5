"""Queue backends: `local` (in-process, the default) and `redis` (durable, shared by replicas)."""

from __future__ import annotations

from lps_server.core.config import Settings
from lps_server.queue.base import QueueBackend
from lps_server.queue.local import LocalQueue


def make_queue(settings: Settings) -> QueueBackend:
    """The backend LPS_QUEUE_BACKEND names."""
    if settings.queue_backend == "redis":
        from lps_server.queue.redis_queue import RedisQueue  # redis is only needed here

        return RedisQueue.from_settings(settings)
    return LocalQueue(
        max_size=settings.queue_max_size,
        max_bytes=settings.queue_max_bytes,
        priority_aging_s=settings.queue_priority_aging_seconds,
        retention_s=settings.result_retention_seconds,
        reply_ttl_s=settings.reply_channel_ttl_seconds,
    )


__all__ = ["LocalQueue", "QueueBackend", "make_queue"]
