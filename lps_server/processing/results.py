"""Builders for the final result of a queued request: completed, failed or expired."""

from __future__ import annotations

from dataclasses import replace

from lps_server.core.bundling import enrich_metadata
from lps_server.core.domain import (
    BundleFacts,
    ComparisonRequest,
    ComparisonResult,
    ErrorCode,
    Essay,
    Failure,
    ProcessingMode,
    ProviderName,
    QueuedRequest,
    RequestStatus,
    Route,
)
from lps_server.providers.base import ItemSuccess
from lps_server.queue.base import UnreadableRequest


def _base(queued: QueuedRequest, mode: ProcessingMode, status: RequestStatus) -> ComparisonResult:
    request = queued.request
    return ComparisonResult(
        request_id=queued.request_id,
        status=status,
        correlation_id=request.correlation_id,
        provider=queued.route.provider,
        model=queued.route.model,
        requested_at=queued.enqueued_at,
        metadata=enrich_metadata(request.metadata, route=queued.route, mode=mode),
    )


def completed(
    queued: QueuedRequest,
    outcome: ItemSuccess,
    *,
    now: float,
    response_time_s: float,
    facts: BundleFacts,
    trace_id: str,
) -> ComparisonResult:
    """The result of a request the provider judged."""
    return replace(
        _base(queued, facts.mode, RequestStatus.COMPLETED),
        judgement=outcome.judgement,
        token_usage=outcome.usage,
        cost_usd=outcome.cost_usd,
        response_time_s=response_time_s,
        completed_at=now,
        trace_id=trace_id,
        bundle=facts,
    )


def failed(
    queued: QueuedRequest,
    failure: Failure,
    now: float,
    facts: BundleFacts,
    *,
    trace_id: str = "",
    response_time_s: float = 0.0,
) -> ComparisonResult:
    """The result of a request that ended without a judgement."""
    return replace(
        _base(queued, facts.mode, RequestStatus.FAILED),
        failure=failure,
        completed_at=now,
        trace_id=trace_id,
        response_time_s=response_time_s,
        bundle=facts,
    )


def expired(queued: QueuedRequest, now: float, mode: ProcessingMode) -> ComparisonResult:
    """The result of a request whose TTL passed before any provider call."""
    waited = now - queued.enqueued_at
    failure = Failure(
        ErrorCode.EXPIRED,
        f"request expired after waiting {waited:.1f}s in the queue (its TTL passed "
        "before a provider was called)",
        retryable=True,
    )
    return replace(
        _base(queued, mode, RequestStatus.EXPIRED),
        failure=failure,
        completed_at=now,
    )


def unreadable(
    request: UnreadableRequest, now: float, mode: ProcessingMode
) -> tuple[QueuedRequest, ComparisonResult]:
    """The FAILED result of a request whose stored payload cannot be read, with a stand-in for
    the queued request that carries only what `complete` needs of it: the id and the channels."""
    stand_in = QueuedRequest(
        request=ComparisonRequest(
            request_id=request.request_id,
            essay_a=Essay("", ""),
            essay_b=Essay("", ""),
            correlation_id=request.correlation_id,
            result_channel=request.result_channel,
        ),
        # Never used to route: the request ends here.
        route=Route(ProviderName.MOCK, ""),
        group="",
        bundle_limit=1,
        enqueued_at=request.enqueued_at,
        reply_to=request.reply_to,
    )
    failure = Failure(
        ErrorCode.UNREADABLE_REQUEST,
        f"this server cannot process the stored request: {request.reason}",
    )
    result = ComparisonResult(
        request_id=request.request_id,
        status=RequestStatus.FAILED,
        correlation_id=request.correlation_id,
        failure=failure,
        requested_at=request.enqueued_at,
        completed_at=now,
        bundle=BundleFacts(mode=mode),
    )
    return stand_in, result


def lost(request_id: str, now: float) -> ComparisonResult:
    """The result of an accepted request the queue no longer knows (its backend lost its data):
    FAILED, retryable, so that the client submits it again (safe under the same id)."""
    failure = Failure(
        ErrorCode.REQUEST_LOST,
        f"the queue no longer knows request {request_id}: it lost its data (for example Redis "
        "restarted without persistence) after accepting it; submit it again",
        retryable=True,
    )
    return ComparisonResult(
        request_id=request_id,
        status=RequestStatus.FAILED,
        failure=failure,
        requested_at=now,
        completed_at=now,
    )
