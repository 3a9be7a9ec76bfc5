"""Conversion between LPS messages (`generated/`) and the client's models."""

from __future__ import annotations

from cj_client.models import (
    PROVIDER_NAMES,
    Ack,
    BatchJobView,
    ComparisonOutcome,
    ComparisonSubmission,
    FieldViolation,
    QueueStatsView,
)
from generated.lps.v1 import comparison_pb2 as pb
from generated.lps.v1 import llm_provider_service_pb2 as svc

# Keyed by the names in models.PROVIDER_NAMES.
PROVIDERS = {
    "mock": pb.PROVIDER_MOCK,
    "openai": pb.PROVIDER_OPENAI,
    "anthropic": pb.PROVIDER_ANTHROPIC,
    "openai_compatible": pb.PROVIDER_OPENAI_COMPATIBLE,
}
_PROVIDER_NAMES = {v: k for k, v in PROVIDERS.items()}
assert sorted(PROVIDERS) == sorted(PROVIDER_NAMES), "models.PROVIDER_NAMES is out of date"


def _enum_name(enum: object, number: int, prefix: str) -> str:
    name: str = enum.Name(number)  # type: ignore[attr-defined]
    return name.removeprefix(prefix).lower()


def submission_to_pb(sub: ComparisonSubmission) -> pb.ComparisonRequest:
    """The wire form of a submission."""
    if sub.provider not in PROVIDERS:
        raise ValueError(f"unknown provider {sub.provider!r}; choose one of {sorted(PROVIDERS)}")
    overrides = pb.LlmOverrides(
        provider=PROVIDERS[sub.provider], model=sub.model, system_prompt=sub.system_prompt
    )
    if sub.temperature is not None:
        overrides.temperature = sub.temperature
    if sub.max_tokens is not None:
        overrides.max_tokens = sub.max_tokens
    msg = pb.ComparisonRequest(
        request_id=sub.request_id,
        correlation_id=sub.correlation_id,
        essay_a=pb.Essay(id=sub.essay_a.id, text=sub.essay_a.text),
        essay_b=pb.Essay(id=sub.essay_b.id, text=sub.essay_b.text),
        instructions=sub.instructions,
        overrides=overrides,
        metadata=dict(sub.metadata),
        priority=sub.priority,
        result_channel=sub.result_channel,
    )
    if sub.ttl_seconds is not None:
        msg.ttl.FromNanoseconds(int(sub.ttl_seconds * 1e9))
    return msg


def outcome_from_pb(msg: pb.ComparisonResult) -> ComparisonOutcome:
    """The client form of a result."""
    judged = msg.HasField("judgement")
    failed = msg.HasField("error")
    usage = msg.token_usage
    return ComparisonOutcome(
        request_id=msg.request_id,
        status=_enum_name(pb.RequestStatus, msg.status, "REQUEST_STATUS_"),
        correlation_id=msg.correlation_id,
        winner=_enum_name(pb.Winner, msg.judgement.winner, "WINNER_") if judged else None,
        justification=msg.judgement.justification,
        confidence=msg.judgement.confidence,
        error_code=_enum_name(pb.ErrorCode, msg.error.code, "ERROR_CODE_") if failed else "",
        error_message=msg.error.message,
        provider=_PROVIDER_NAMES.get(msg.provider, ""),
        model=msg.model,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        cache_write_tokens=usage.cache_write_tokens,
        cost_usd=msg.cost_estimate_usd,
        response_time_s=msg.response_time.ToNanoseconds() / 1e9,
        trace_id=msg.trace_id,
        metadata=dict(msg.request_metadata),
        bundle_id=msg.bundle_id,
        bundle_index=msg.bundle_index,
        bundle_size=msg.bundle_size,
        processing_mode=_enum_name(
            pb.QueueProcessingMode, msg.queue_processing_mode, "QUEUE_PROCESSING_MODE_"
        ),
        batch_job=_batch_job(msg.batch_job) if msg.HasField("batch_job") else None,
    )


def _batch_job(msg: pb.BatchJobStatus) -> BatchJobView:
    return BatchJobView(
        job_id=msg.job_id,
        state=msg.state,
        provider_batch_id=msg.provider_batch_id,
        provider_state=msg.provider_state,
        requests=msg.requests,
        lines=msg.lines,
        recorded_at=msg.recorded_at.ToNanoseconds() / 1e9,
        submitted_at=msg.submitted_at.ToNanoseconds() / 1e9,
        provider_counts=dict(msg.provider_counts),
    )


def ack_from_pb(msg: svc.SubmissionAck) -> Ack:
    """The client form of an acknowledgement."""
    err = msg.error
    return Ack(
        request_id=msg.request_id,
        accepted=msg.accepted,
        status=_enum_name(pb.RequestStatus, msg.status, "REQUEST_STATUS_") if msg.accepted else "",
        error_code=err.code,
        error_message=err.message,
        violations=tuple(FieldViolation(v.field, v.description) for v in err.field_violations),
        retry_after=err.retry_after.ToNanoseconds() / 1e9,
    )


def stats_from_pb(msg: svc.GetQueueStatsResponse) -> QueueStatsView:
    """The client form of queue statistics."""
    return QueueStatsView(
        queued=msg.queued,
        processing=msg.processing,
        completed=msg.completed,
        failed=msg.failed,
        expired=msg.expired,
        oldest_queued_age_s=msg.oldest_queued_age.ToNanoseconds() / 1e9,
        processing_mode=_enum_name(
            pb.QueueProcessingMode, msg.processing_mode, "QUEUE_PROCESSING_MODE_"
        ),
        backend=msg.backend,
        max_size=msg.max_size,
        metrics_port=msg.metrics_port,
    )
