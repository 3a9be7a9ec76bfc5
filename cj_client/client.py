"""`LpsClient`: an async client with one method per LPS RPC."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType

import grpc
from opentelemetry.propagate import inject

from cj_client.models import Ack, ComparisonOutcome, ComparisonSubmission, QueueStatsView
from cj_client.transport import (
    ack_from_pb,
    open_channel,
    outcome_from_pb,
    stats_from_pb,
    submission_to_pb,
    translate,
)
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc

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
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._channel = open_channel(
            target, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
        )
        self._stub = svc_grpc.LlmProviderServiceStub(self._channel)

    def _call_metadata(self) -> tuple[tuple[str, str], ...]:
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
        await self._channel.close(None)

    async def submit(self, submission: ComparisonSubmission) -> tuple[str, str]:
        """Enqueue one comparison; returns (request_id, status).

        Raises:
            InvalidRequestError, QueueFullError, LimitExceededError, UnavailableError,
            LpsClientError.
        """
        request = svc.SubmitComparisonRequest(request=submission_to_pb(submission))
        try:
            response = await self._stub.SubmitComparison(
                request, timeout=self._timeout, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        status = pb.RequestStatus.Name(response.status).removeprefix("REQUEST_STATUS_").lower()
        return response.request_id, status

    async def submit_many(
        self, submissions: Iterable[ComparisonSubmission], *, chunk: int = STREAM_CHUNK
    ) -> AsyncIterator[Ack | ComparisonOutcome]:
        """Stream submissions; yields an Ack per submission, then each accepted one's result.

        The call ends when every accepted submission has its result.
        """
        messages = [submission_to_pb(s) for s in submissions]

        async def requests() -> AsyncIterator[svc.SubmitComparisonsRequest]:
            for start in range(0, len(messages), chunk):
                yield svc.SubmitComparisonsRequest(requests=messages[start : start + chunk])

        call = self._stub.SubmitComparisons(requests(), metadata=self._call_metadata())
        try:
            async for event in call:
                if event.HasField("ack"):
                    yield ack_from_pb(event.ack)
                else:
                    yield outcome_from_pb(event.result)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()

    async def stream_results(
        self, result_channel: str, *, cursor: str = ""
    ) -> AsyncIterator[tuple[str, ComparisonOutcome]]:
        """Follow a result channel from `cursor`; yields (cursor, outcome) until cancelled."""
        request = svc.StreamResultsRequest(result_channel=result_channel, cursor=cursor)
        call = self._stub.StreamResults(request, metadata=self._call_metadata())
        try:
            async for event in call:
                yield event.cursor, outcome_from_pb(event.result)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()

    async def get(self, request_id: str) -> ComparisonOutcome:
        """Status and, once ended, the result of one request.

        Raises:
            NotFoundError: the id is unknown.
        """
        try:
            response = await self._stub.GetComparison(
                svc.GetComparisonRequest(request_id=request_id),
                timeout=self._timeout,
                metadata=self._call_metadata(),
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        return outcome_from_pb(response.result)

    async def queue_stats(self) -> QueueStatsView:
        """Queue depth by status, oldest age and processing mode."""
        try:
            response = await self._stub.GetQueueStats(
                svc.GetQueueStatsRequest(), timeout=self._timeout, metadata=self._call_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        return stats_from_pb(response)
