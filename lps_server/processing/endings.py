"""How requests that never reach a provider end: expired, unreadable or abandoned.

The dispatcher, the sweeper, the batch path and the shutdown all end requests this way, under
the token of the lease that holds them, and count each ending once: only the complete that stored
the result first records it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from lps_server.core.domain import (
    BundleFacts,
    ErrorCode,
    Failure,
    ProcessingMode,
    QueuedRequest,
)
from lps_server.observability.metrics import LpsMetrics
from lps_server.processing.results import expired, failed, unreadable
from lps_server.queue.base import Lease, QueueBackend, UnreadableRequest

log = logging.getLogger(__name__)


def take_out_expired(lease: Lease, *, now: float) -> None:
    """Move the items of `lease` whose TTL passed by `now` (while their bundle filled) to its
    `expired`: they end EXPIRED instead of being sent. A retried item has cost a call and is sent
    however late."""
    late = {
        q.request_id
        for q in lease.items
        if q.is_expired(now) and not lease.attempts.get(q.request_id)
    }
    if late:
        lease.expired.extend(q for q in lease.items if q.request_id in late)
        lease.items[:] = [q for q in lease.items if q.request_id not in late]


class RequestEndings:
    """Ends requests without a provider call, storing their results and counting them.

    Args:
        queue: the queue backend the results are stored in.
        metrics: where expiries and unreadable requests are counted.
        clock: Unix time source.
        mode: the processing mode the results report.
    """

    def __init__(
        self,
        *,
        queue: QueueBackend,
        metrics: LpsMetrics,
        clock: Callable[[], float],
        mode: ProcessingMode,
    ) -> None:
        self._queue = queue
        self._metrics = metrics
        self._clock = clock
        self._mode = mode

    async def expire(
        self, requests: Sequence[QueuedRequest], *, reason: str, token: str = ""
    ) -> None:
        """End requests found past their deadline (held under `token`) as EXPIRED and record
        why (`ttl`, `cleanup`)."""
        if not requests:
            return
        now = self._clock()
        done = [(q, expired(q, now, self._mode)) for q in requests]
        stored = await self._queue.complete(done, token=token)
        for queued, first in zip(requests, stored, strict=True):
            if first:
                self._metrics.record_expiry(
                    provider=queued.route.provider.value,
                    mode=self._mode,
                    reason=reason,
                    age_s=now - queued.enqueued_at,
                )

    async def end_unreadable(self, requests: Sequence[UnreadableRequest], *, token: str) -> None:
        """End requests whose payload cannot be read as FAILED (UNREADABLE_REQUEST), and count
        them: one bad payload ends one request, never the loop that met it."""
        if not requests:
            return
        now = self._clock()
        stored = await self._queue.complete(
            [unreadable(u, now, self._mode) for u in requests], token=token
        )
        for request, first in zip(requests, stored, strict=True):
            if not first:
                continue
            reason = "undecodable" if request.routable else "unroutable"
            self._metrics.unreadable_requests.labels(reason=reason).inc()
            log.error(
                "ended request %s FAILED: %s",
                request.request_id,
                request.reason,
                extra={"request_id": request.request_id, "error_code": "unreadable_request"},
            )

    async def abandon(
        self, requests: Sequence[QueuedRequest], reason: str, *, token: str = ""
    ) -> None:
        """End requests that will never be processed as FAILED: those still queued at the
        shutdown of an in-process queue, or (with their `token`) a bundle that failed."""
        now = self._clock()
        failure = Failure(ErrorCode.INTERNAL, reason, retryable=True)
        facts = BundleFacts(mode=self._mode)
        done = [(q, failed(q, failure, now, facts)) for q in requests]
        await self._queue.complete(done, token=token)
