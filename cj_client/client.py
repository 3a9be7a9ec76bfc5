"""`LpsClient`: an async client with one method per LPS RPC."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable
from contextlib import aclosing
from dataclasses import replace
from types import TracebackType

from opentelemetry.propagate import inject

from cj_client.backoff import Backoff, is_retryable
from cj_client.errors import (
    DeadlineExceededError,
    LpsClientError,
    ResourceExhaustedError,
    UnavailableError,
    error_from_ack,
)
from cj_client.models import Ack, ComparisonOutcome, ComparisonSubmission, QueueStatsView
from cj_client.transport import LpsCalls, Metadata

DEFAULT_TARGET = "127.0.0.1:50051"
STREAM_CHUNK = 64


class LpsClient:
    """An async LPS client; use as `async with LpsClient(target=...) as client:`.

    Args:
        target: host:port of the server.
        timeout: deadline in seconds for unary calls.
        token: bearer token sent as `authorization` metadata, when the server requires one.
        tls: use TLS with the system's root certificates.
        tls_ca: CA bundle to verify the server (implies TLS).
        tls_cert: client certificate for mutual TLS.
        tls_key: the client certificate's key.
    """

    def __init__(
        self,
        *,
        target: str = DEFAULT_TARGET,
        timeout: float = 30.0,
        token: str | None = None,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._metadata: Metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._calls = LpsCalls(target, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)

    def _call_metadata(self) -> Metadata:
        """Auth plus the caller's trace context (`traceparent`), so LPS joins the caller's trace."""
        carrier: dict[str, str] = {}
        inject(carrier)
        return self._metadata + tuple(carrier.items())

    async def __aenter__(self) -> LpsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._calls.close()

    async def submit(self, submission: ComparisonSubmission) -> tuple[str, str]:
        """Enqueue one comparison; returns (request_id, status).

        Raises:
            InvalidRequestError, QueueFullError, LimitExceededError, UnavailableError,
            LpsClientError.
        """
        return await self._calls.submit(
            submission, timeout=self._timeout, metadata=self._call_metadata()
        )

    async def submit_many(
        self, submissions: Iterable[ComparisonSubmission], *, chunk: int = STREAM_CHUNK
    ) -> AsyncGenerator[Ack | ComparisonOutcome, None]:
        """Stream submissions; yields an Ack per submission, then each accepted one's result.

        The call ends when every accepted submission has its result.
        """
        subs = list(submissions)
        chunks = [subs[start : start + chunk] for start in range(0, len(subs), chunk)]
        # Closed explicitly, so that a caller who stops reading ends the call at once.
        async with aclosing(
            self._calls.submit_many(chunks, metadata=self._call_metadata())
        ) as calls:
            async for event in calls:
                yield event

    async def submit_and_wait(
        self,
        submission: ComparisonSubmission,
        *,
        timeout: float,
        on_retry: Callable[[LpsClientError], None] | None = None,
    ) -> ComparisonOutcome:
        """Submit one comparison and wait at most `timeout` seconds for its final result.

        A submission without a request id gets a new UUID first, so that every retry is the same
        request: an unreachable or busy server (UNAVAILABLE, RESOURCE_EXHAUSTED, a broken
        stream) is tried again with backoff until the deadline, and never pays twice;
        `on_retry` hears of the first failure of each run of them.

        Raises:
            DeadlineExceededError: no result within `timeout` (naming the last failure).
            InvalidRequestError, UnauthenticatedError, AlreadyExistsError, LpsClientError: the
                server refused the request in a way retrying cannot cure.
        """
        sub = (
            submission
            if submission.request_id
            else replace(submission, request_id=str(uuid.uuid4()))
        )
        backoff = Backoff()
        last: LpsClientError | None = None
        attempt = 0
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        async with aclosing(self.submit_many([sub])) as events:
                            async for event in events:
                                if isinstance(event, Ack) and not event.accepted:
                                    raise error_from_ack(event)
                                if isinstance(event, ComparisonOutcome):
                                    return event
                        last = UnavailableError(
                            "the stream ended without a result", code="UNAVAILABLE"
                        )
                    except LpsClientError as exc:
                        if not is_retryable(exc.code):
                            raise
                        if on_retry is not None and attempt == 0:
                            on_retry(exc)
                        last = exc
                    wait = last.retry_after if isinstance(last, ResourceExhaustedError) else 0.0
                    await asyncio.sleep(backoff.delay(attempt, wait))
                    attempt += 1
        except TimeoutError:
            cause = f"; last error {last.code}: {last}" if last is not None else ""
            message = f"no result for {sub.request_id!r} within {timeout:g} s{cause}"
            raise DeadlineExceededError(message, code="DEADLINE_EXCEEDED") from None

    async def stream_results(
        self, result_channel: str, *, cursor: str = ""
    ) -> AsyncIterator[tuple[str, ComparisonOutcome]]:
        """Follow a result channel from `cursor`; yields (cursor, outcome) until cancelled."""
        async for entry in self._calls.stream_results(
            result_channel, cursor=cursor, metadata=self._call_metadata()
        ):
            yield entry

    async def get(self, request_id: str) -> ComparisonOutcome:
        """Status and, once ended, the result of one request.

        Raises:
            NotFoundError: the id is unknown.
        """
        return await self._calls.get(
            request_id, timeout=self._timeout, metadata=self._call_metadata()
        )

    async def queue_stats(self) -> QueueStatsView:
        """Queue depth by status, oldest age and processing mode."""
        return await self._calls.queue_stats(timeout=self._timeout, metadata=self._call_metadata())
