"""The RPCs of `lps.v1.LlmProviderService` in the client's models, errors translated once."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import grpc

from cj_client.models import Ack, ComparisonOutcome, ComparisonSubmission, QueueStatsView
from cj_client.transport.channel import open_channel
from cj_client.transport.convert import (
    ack_from_pb,
    outcome_from_pb,
    stats_from_pb,
    submission_to_pb,
)
from cj_client.transport.status import translate
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from generated.lps.v1 import llm_provider_service_pb2_grpc as svc_grpc

Metadata = tuple[tuple[str, str], ...]


class LpsCalls:
    """One channel to LPS and a method per RPC; every failure raises an LpsClientError.

    Args:
        target: host:port of the server.
        tls, tls_ca, tls_cert, tls_key: as for `open_channel`.
    """

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        self._channel = open_channel(
            target, tls=tls, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key
        )
        self._stub = svc_grpc.LlmProviderServiceStub(self._channel)

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    async def submit(
        self, submission: ComparisonSubmission, *, timeout: float, metadata: Metadata
    ) -> tuple[str, str]:
        """SubmitComparison: (request_id, status)."""
        request = svc.SubmitComparisonRequest(request=submission_to_pb(submission))
        try:
            response = await self._stub.SubmitComparison(
                request, timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        status = pb.RequestStatus.Name(response.status).removeprefix("REQUEST_STATUS_").lower()
        return response.request_id, status

    async def submit_many(
        self, chunks: Sequence[Sequence[ComparisonSubmission]], *, metadata: Metadata
    ) -> AsyncGenerator[Ack | ComparisonOutcome, None]:
        """SubmitComparisons, one stream message per chunk: acks, then results."""
        messages = [[submission_to_pb(s) for s in chunk] for chunk in chunks]

        async def requests() -> AsyncIterator[svc.SubmitComparisonsRequest]:
            for chunk in messages:
                yield svc.SubmitComparisonsRequest(requests=chunk)

        call = self._stub.SubmitComparisons(requests(), metadata=metadata)
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
        self, result_channel: str, *, cursor: str, metadata: Metadata
    ) -> AsyncIterator[tuple[str, ComparisonOutcome]]:
        """StreamResults: (cursor, outcome) pairs until cancelled."""
        request = svc.StreamResultsRequest(result_channel=result_channel, cursor=cursor)
        call = self._stub.StreamResults(request, metadata=metadata)
        try:
            async for event in call:
                yield event.cursor, outcome_from_pb(event.result)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()

    async def get(
        self, request_id: str, *, timeout: float, metadata: Metadata
    ) -> ComparisonOutcome:
        """GetComparison."""
        try:
            response = await self._stub.GetComparison(
                svc.GetComparisonRequest(request_id=request_id),
                timeout=timeout,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        return outcome_from_pb(response.result)

    async def queue_stats(self, *, timeout: float, metadata: Metadata) -> QueueStatsView:
        """GetQueueStats."""
        try:
            response = await self._stub.GetQueueStats(
                svc.GetQueueStatsRequest(), timeout=timeout, metadata=metadata
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        return stats_from_pb(response)
