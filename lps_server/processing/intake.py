"""Intake: turns validated requests into queued requests (routing, bundle key, deadline)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from lps_server.core.bundling import (
    BATCH_COMPLETION_WINDOW_S,
    bundle_limit,
    compatibility_key,
    takes_batch_path,
)
from lps_server.core.config import Settings
from lps_server.core.domain import ComparisonRequest, ProcessingMode, QueuedRequest
from lps_server.core.errors import ShuttingDownError
from lps_server.providers import ProviderRegistry
from lps_server.queue.base import QueueBackend, SubmitOutcome


def new_request_id() -> str:
    """A server-assigned request id."""
    return str(uuid.uuid4())


class Intake:
    """Routes requests and enqueues them; refuses new work once closed for shutdown."""

    def __init__(
        self,
        *,
        queue: QueueBackend,
        providers: ProviderRegistry,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._providers = providers
        self._settings = settings
        self._clock = clock
        self._closed = False

    def close(self) -> None:
        """Refuse every later submission with ShuttingDownError."""
        self._closed = True

    def prepare(
        self,
        request: ComparisonRequest,
        *,
        reply_to: str = "",
        trace_context: Mapping[str, str] | None = None,
    ) -> QueuedRequest:
        """The queued form of a request: its route, compatibility key, bundle limit and deadline."""
        now = self._clock()
        settings = self._settings
        route = self._providers.resolve(request.overrides)
        batch = takes_batch_path(
            request.metadata,
            route.provider,
            mode=settings.queue_processing_mode,
            batch_providers=settings.batch_api_providers,
            ttl_s=request.ttl_seconds,
        )
        # A batch line carries a bundle as in serial mode; a request that cannot wait for a batch
        # in batch_api mode is served one per call.
        limit = bundle_limit(
            request.metadata,
            mode=ProcessingMode.SERIAL_BUNDLE if batch else settings.queue_processing_mode,
            max_per_call=settings.serial_bundle_max_requests_per_call,
        )
        ttl = request.ttl_seconds
        if ttl is None:
            ttl = settings.queue_default_ttl_seconds
            if batch:  # a batch may take its whole window: the default must not cut it short
                ttl = max(ttl, BATCH_COMPLETION_WINDOW_S + settings.batch_api_max_wait_ms / 1000)
        return QueuedRequest(
            request=request,
            route=route,
            group=compatibility_key(
                route, request.overrides, request.metadata, limit=limit, batch=batch
            ),
            bundle_limit=limit,
            enqueued_at=now,
            deadline=now + ttl,
            reply_to=reply_to,
            trace_context=dict(trace_context or {}),
        )

    async def submit(self, queued: Sequence[QueuedRequest]) -> list[SubmitOutcome]:
        """Enqueue prepared requests in one backend round trip.

        Raises:
            ShuttingDownError: the server is draining.
            QueueUnavailableError: the backend cannot be reached.
        """
        if self._closed:
            raise ShuttingDownError("server is shutting down and accepts no new work")
        if not queued:
            return []
        return await self._queue.submit(queued)
