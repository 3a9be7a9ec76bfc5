"""Intake: turns validated requests into queued requests (routing, bundle key, deadline)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence

from lps_server.core.bundling import bundle_limit, compatibility_key
from lps_server.core.config import Settings
from lps_server.core.domain import ComparisonRequest, QueuedRequest
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
        route = self._providers.resolve(request.overrides)
        limit = bundle_limit(
            request.metadata,
            mode=self._settings.queue_processing_mode,
            max_per_call=self._settings.serial_bundle_max_requests_per_call,
        )
        ttl = request.ttl_seconds
        if ttl is None:
            ttl = self._settings.queue_default_ttl_seconds
        return QueuedRequest(
            request=request,
            route=route,
            group=compatibility_key(route, request.overrides, request.metadata, limit=limit),
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
