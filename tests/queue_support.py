"""Queued requests and results for queue tests, and the factory behind the `queue` fixtures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lps_server.core.bundling import limit_of
from lps_server.core.config import Settings
from lps_server.core.domain import (
    ComparisonRequest,
    ComparisonResult,
    ErrorCode,
    Essay,
    Failure,
    Judgement,
    ProviderName,
    QueuedRequest,
    RequestStatus,
    Route,
    Winner,
)
from lps_server.queue.base import QueueBackend
from lps_server.queue.local import LocalQueue
from lps_server.queue.redis_queue import RedisQueue

T0 = 1_000_000.0
QueueFactory = Callable[..., QueueBackend]


def make_queued(
    rid: str,
    *,
    priority: int = 0,
    at: float = T0,
    group: str = "1:solo",
    deadline: float | None = None,
    channel: str = "",
    reply_to: str = "",
    text: str = "an essay",
) -> QueuedRequest:
    """A queued request with the facts the queue reads set explicitly."""
    request = ComparisonRequest(
        request_id=rid,
        essay_a=Essay("a", text),
        essay_b=Essay("b", text),
        correlation_id=f"corr-{rid}",
        metadata={"cj_batch_id": "b1"},
        priority=priority,
        result_channel=channel,
    )
    return QueuedRequest(
        request=request,
        route=Route(ProviderName.MOCK, "mock-judge-1"),
        group=group,
        bundle_limit=limit_of(group),
        enqueued_at=at,
        deadline=deadline,
        reply_to=reply_to,
    )


def judged(queued: QueuedRequest, *, now: float = T0 + 5) -> ComparisonResult:
    """A COMPLETED result for `queued`."""
    return ComparisonResult(
        request_id=queued.request_id,
        status=RequestStatus.COMPLETED,
        correlation_id=queued.request.correlation_id,
        judgement=Judgement(Winner.ESSAY_B, "b is better", 4),
        provider=ProviderName.MOCK,
        requested_at=queued.enqueued_at,
        completed_at=now,
        metadata={"cj_batch_id": "b1"},
    )


def expired_result(queued: QueuedRequest, *, now: float) -> ComparisonResult:
    """An EXPIRED result for `queued`."""
    return ComparisonResult(
        request_id=queued.request_id,
        status=RequestStatus.EXPIRED,
        failure=Failure(ErrorCode.EXPIRED, "ttl passed", retryable=True),
        completed_at=now,
    )


def redis_settings(url: str, **overrides: Any) -> Settings:
    """Settings for a RedisQueue on `url` under the test prefix."""
    values: dict[str, Any] = {"queue_backend": "redis", "redis_url": url, "redis_prefix": "t"}
    return Settings(**{**values, **overrides}).validated()


def build_queue(backend: str, redis_url: str, **settings: Any) -> QueueBackend:
    """A queue of `backend` ("local" or "redis") with `settings`."""
    if backend == "redis":
        return RedisQueue.from_settings(redis_settings(redis_url, **settings))
    config = Settings(**settings)
    return LocalQueue(
        max_size=config.queue_max_size,
        max_bytes=config.queue_max_bytes,
        priority_aging_s=config.queue_priority_aging_seconds,
        retention_s=config.result_retention_seconds,
    )
