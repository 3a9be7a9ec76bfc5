"""`LpsClient`: an async client with one method per LPS RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType

from opentelemetry.propagate import inject

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
    ) -> AsyncIterator[Ack | ComparisonOutcome]:
        """Stream submissions; yields an Ack per submission, then each accepted one's result.

        The call ends when every accepted submission has its result.
        """
        subs = list(submissions)
        chunks = [subs[start : start + chunk] for start in range(0, len(subs), chunk)]
        async for event in self._calls.submit_many(chunks, metadata=self._call_metadata()):
            yield event

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
