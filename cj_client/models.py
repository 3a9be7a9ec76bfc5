"""Plain dataclasses of the client's API, free of protobuf."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

#: The providers a submission may name (`ComparisonSubmission.provider`).
PROVIDER_NAMES = ("anthropic", "mock", "openai", "openai_compatible")


@dataclass(frozen=True, slots=True)
class EssayInput:
    """An essay to compare."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class ComparisonSubmission:
    """One comparison to submit; empty `request_id` lets the server assign one."""

    essay_a: EssayInput
    essay_b: EssayInput
    request_id: str = ""
    correlation_id: str = ""
    instructions: str = ""
    provider: str = "mock"
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    ttl_seconds: float | None = None
    result_channel: str = ""


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field named by the server."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The server's acknowledgement of one streamed submission."""

    request_id: str
    accepted: bool
    status: str = ""
    error_code: str = ""
    error_message: str = ""
    violations: tuple[FieldViolation, ...] = ()
    retry_after: float = 0.0


@dataclass(frozen=True, slots=True)
class BatchJobView:
    """The provider batch job a request waits in, as LPS reports it: LPS's `state` (`recorded`,
    `creating`, `submitted`, `collecting`), the provider's own state and tallies."""

    job_id: str
    state: str
    provider_batch_id: str = ""
    provider_state: str = ""
    requests: int = 0
    lines: int = 0
    recorded_at: float = 0.0
    submitted_at: float = 0.0
    provider_counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ComparisonOutcome:
    """A result: `status` is queued, processing, completed, failed or expired."""

    request_id: str
    status: str
    correlation_id: str = ""
    winner: str | None = None
    justification: str = ""
    confidence: int = 0
    error_code: str = ""
    error_message: str = ""
    provider: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Parts of prompt_tokens the provider's prompt cache read and wrote (priced apart).
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    response_time_s: float = 0.0
    trace_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    bundle_id: str = ""
    bundle_index: int = 0
    bundle_size: int = 0
    processing_mode: str = ""
    # Only while the request waits in a provider batch job (a status query's answer).
    batch_job: BatchJobView | None = None

    @property
    def is_final(self) -> bool:
        """True once the request has ended."""
        return self.status in ("completed", "failed", "expired")


@dataclass(frozen=True, slots=True)
class QueueStatsView:
    """Queue depth by status, oldest queued age and processing mode."""

    queued: int
    processing: int
    completed: int
    failed: int
    expired: int
    oldest_queued_age_s: float
    processing_mode: str
    backend: str
    max_size: int
    metrics_port: int = 0
