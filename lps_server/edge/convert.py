"""Conversion between the gRPC messages in `generated/` and the domain dataclasses."""

from __future__ import annotations

from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc
from lps_server.core.domain import (
    ComparisonRequest,
    ComparisonResult,
    ErrorCode,
    Essay,
    Overrides,
    ProcessingMode,
    ProviderName,
    RequestStatus,
    Winner,
)
from lps_server.edge.wire_time import duration_pb, timestamp_pb
from lps_server.queue.base import QueueStats

PROVIDER_FROM_PB = {
    pb.PROVIDER_MOCK: ProviderName.MOCK,
    pb.PROVIDER_OPENAI: ProviderName.OPENAI,
    pb.PROVIDER_ANTHROPIC: ProviderName.ANTHROPIC,
    pb.PROVIDER_OPENAI_COMPATIBLE: ProviderName.OPENAI_COMPATIBLE,
}
PROVIDER_TO_PB = {v: k for k, v in PROVIDER_FROM_PB.items()}
STATUS_TO_PB = {
    RequestStatus.QUEUED: pb.REQUEST_STATUS_QUEUED,
    RequestStatus.PROCESSING: pb.REQUEST_STATUS_PROCESSING,
    RequestStatus.COMPLETED: pb.REQUEST_STATUS_COMPLETED,
    RequestStatus.FAILED: pb.REQUEST_STATUS_FAILED,
    RequestStatus.EXPIRED: pb.REQUEST_STATUS_EXPIRED,
}
MODE_TO_PB = {
    ProcessingMode.PER_REQUEST: pb.QUEUE_PROCESSING_MODE_PER_REQUEST,
    ProcessingMode.SERIAL_BUNDLE: pb.QUEUE_PROCESSING_MODE_SERIAL_BUNDLE,
    ProcessingMode.BATCH_API: pb.QUEUE_PROCESSING_MODE_BATCH_API,
}
WINNER_TO_PB = {Winner.ESSAY_A: pb.WINNER_ESSAY_A, Winner.ESSAY_B: pb.WINNER_ESSAY_B}
ERROR_TO_PB = {
    ErrorCode.RATE_LIMITED: pb.ERROR_CODE_RATE_LIMITED,
    ErrorCode.PROVIDER_UNAVAILABLE: pb.ERROR_CODE_PROVIDER_UNAVAILABLE,
    ErrorCode.TIMEOUT: pb.ERROR_CODE_TIMEOUT,
    ErrorCode.INVALID_RESPONSE: pb.ERROR_CODE_INVALID_RESPONSE,
    ErrorCode.PROVIDER_ERROR: pb.ERROR_CODE_PROVIDER_ERROR,
    ErrorCode.EXPIRED: pb.ERROR_CODE_EXPIRED,
    ErrorCode.CONFIGURATION: pb.ERROR_CODE_CONFIGURATION,
    ErrorCode.INTERNAL: pb.ERROR_CODE_INTERNAL,
    ErrorCode.UNREADABLE_REQUEST: pb.ERROR_CODE_UNREADABLE_REQUEST,
    ErrorCode.REQUEST_LOST: pb.ERROR_CODE_REQUEST_LOST,
}


def request_from_pb(msg: pb.ComparisonRequest, *, request_id: str) -> ComparisonRequest:
    """The domain request of a validated message; `request_id` is the client's or a new UUID."""
    o = msg.overrides
    overrides = Overrides(
        provider=PROVIDER_FROM_PB.get(o.provider),
        model=o.model,
        temperature=o.temperature if o.HasField("temperature") else None,
        max_tokens=o.max_tokens if o.HasField("max_tokens") else None,
        system_prompt=o.system_prompt,
    )
    return ComparisonRequest(
        request_id=request_id,
        correlation_id=msg.correlation_id,
        essay_a=Essay(msg.essay_a.id, msg.essay_a.text),
        essay_b=Essay(msg.essay_b.id, msg.essay_b.text),
        instructions=msg.instructions,
        overrides=overrides,
        metadata=dict(msg.metadata),
        priority=msg.priority,
        ttl_seconds=msg.ttl.ToTimedelta().total_seconds() if msg.HasField("ttl") else None,
        result_channel=msg.result_channel,
    )


def result_to_pb(result: ComparisonResult) -> pb.ComparisonResult:
    """The wire form of a result."""
    msg = pb.ComparisonResult(
        request_id=result.request_id,
        correlation_id=result.correlation_id,
        status=STATUS_TO_PB[result.status],
        model=result.model,
        cost_estimate_usd=result.cost_usd,
        trace_id=result.trace_id,
        request_metadata=dict(result.metadata),
    )
    if result.provider is not None:
        msg.provider = PROVIDER_TO_PB[result.provider]
    if result.judgement is not None:
        j = result.judgement
        msg.judgement.CopyFrom(
            pb.Judgement(
                winner=WINNER_TO_PB[j.winner],
                justification=j.justification,
                confidence=j.confidence,
            )
        )
    if result.failure is not None:
        f = result.failure
        msg.error.CopyFrom(
            pb.ComparisonError(
                code=ERROR_TO_PB[f.code],
                message=f.message,
                retryable=f.retryable,
                attempts=f.attempts,
            )
        )
    usage = result.token_usage
    if usage.total_tokens:
        msg.token_usage.CopyFrom(
            pb.TokenUsage(
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        )
    if result.response_time_s:
        msg.response_time.CopyFrom(duration_pb(result.response_time_s))
    if result.requested_at:
        msg.requested_at.CopyFrom(timestamp_pb(result.requested_at))
    if result.completed_at:
        msg.completed_at.CopyFrom(timestamp_pb(result.completed_at))
    if result.bundle is not None:
        msg.bundle_id = result.bundle.bundle_id
        msg.bundle_index = result.bundle.index
        msg.bundle_size = result.bundle.size
        msg.queue_processing_mode = MODE_TO_PB[result.bundle.mode]
    if result.batch_job is not None:
        job = result.batch_job
        msg.batch_job.CopyFrom(
            pb.BatchJobStatus(
                job_id=job.job_id,
                state=job.state,
                provider_batch_id=job.provider_batch_id,
                provider_state=job.provider_state,
                requests=job.requests,
                lines=job.lines,
                provider_counts=dict(job.provider_counts),
            )
        )
        if job.recorded_at:
            msg.batch_job.recorded_at.CopyFrom(timestamp_pb(job.recorded_at))
        if job.submitted_at:
            msg.batch_job.submitted_at.CopyFrom(timestamp_pb(job.submitted_at))
    return msg


def stats_to_pb(
    stats: QueueStats, *, mode: ProcessingMode, backend: str, max_size: int, metrics_port: int = 0
) -> svc.GetQueueStatsResponse:
    """The wire form of queue statistics."""
    return svc.GetQueueStatsResponse(
        queued=stats.queued,
        processing=stats.processing,
        completed=stats.completed,
        failed=stats.failed,
        expired=stats.expired,
        oldest_queued_age=duration_pb(stats.oldest_queued_age_s),
        processing_mode=MODE_TO_PB[mode],
        backend=backend,
        max_size=max_size,
        metrics_port=metrics_port,
    )
