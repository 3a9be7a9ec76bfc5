"""The service's domain: plain frozen dataclasses and enums, independent of gRPC and Redis."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class ProviderName(StrEnum):
    """An LLM provider the server can call."""

    MOCK = "mock"
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    OPENAI_COMPATIBLE = "openai_compatible"


class RequestStatus(StrEnum):
    """Where a request stands; the last three are end states."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def is_final(self) -> bool:
        """True for COMPLETED, FAILED and EXPIRED."""
        return self in _FINAL


_FINAL = frozenset({RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.EXPIRED})


class ProcessingMode(StrEnum):
    """How queued requests become provider calls (`LPS_QUEUE_PROCESSING_MODE`)."""

    PER_REQUEST = "per_request"
    SERIAL_BUNDLE = "serial_bundle"
    BATCH_API = "batch_api"


class Winner(StrEnum):
    """The essay a judge preferred."""

    ESSAY_A = "essay_a"
    ESSAY_B = "essay_b"


class ErrorCode(StrEnum):
    """Why a comparison has no judgement."""

    RATE_LIMITED = "rate_limited"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    TIMEOUT = "timeout"
    INVALID_RESPONSE = "invalid_response"
    PROVIDER_ERROR = "provider_error"
    EXPIRED = "expired"
    CONFIGURATION = "configuration"
    INTERNAL = "internal"
    # The stored request could not be decoded or routed (corrupt, or from a newer release).
    UNREADABLE_REQUEST = "unreadable_request"
    # The queue no longer knows an accepted request (its backend lost its data): submit it again.
    REQUEST_LOST = "request_lost"


class CircuitState(StrEnum):
    """Where a provider's circuit stands."""

    CLOSED = "closed"
    HALF_OPEN = "half_open"
    OPEN = "open"

    @property
    def gauge_value(self) -> int:
        """0 closed, 1 half-open, 2 open: the value for `llm_provider_circuit_state`."""
        return _GAUGE[self]


_GAUGE = {CircuitState.CLOSED: 0, CircuitState.HALF_OPEN: 1, CircuitState.OPEN: 2}


@dataclass(frozen=True, slots=True)
class Essay:
    """One essay of a pair."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class Overrides:
    """Per-request provider settings; None or empty means the server's default."""

    provider: ProviderName | None = None
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    system_prompt: str = ""


@dataclass(frozen=True, slots=True)
class ComparisonRequest:
    """A request to judge which of two essays is better, as the client sent it."""

    request_id: str
    essay_a: Essay
    essay_b: Essay
    correlation_id: str = ""
    instructions: str = ""
    overrides: Overrides = field(default_factory=Overrides)
    metadata: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0
    ttl_seconds: float | None = None
    result_channel: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """The provider and model a request resolved to."""

    provider: ProviderName
    model: str


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request accepted into the queue, with what the server decided at intake.

    Attributes:
        route: the resolved provider and model.
        group: the compatibility key; only requests with equal keys share a bundle.
        bundle_limit: the most requests a bundle led by this request may hold.
        enqueued_at: Unix time of acceptance.
        deadline: Unix time after which the request must not reach a provider, or None.
        reply_to: an internal channel (one per streaming call) that also receives the result.
        trace_context: W3C trace-context carrier, so processing joins the submitter's trace.
    """

    request: ComparisonRequest
    route: Route
    group: str
    bundle_limit: int
    enqueued_at: float
    deadline: float | None = None
    reply_to: str = ""
    trace_context: Mapping[str, str] = field(default_factory=dict)

    @property
    def request_id(self) -> str:
        """The request's id."""
        return self.request.request_id

    def is_expired(self, now: float) -> bool:
        """True when the deadline has passed."""
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True, slots=True)
class Judgement:
    """A judge's verdict."""

    winner: Winner
    justification: str
    confidence: int


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a comparison ended without a judgement."""

    code: ErrorCode
    message: str
    retryable: bool = False
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens attributed to one comparison.

    `prompt_tokens` counts every input token, cached ones included; `cache_read_tokens` (read
    from the provider's prompt cache) and `cache_write_tokens` (written to it) are the parts of
    `prompt_tokens` priced differently, so no token is counted twice.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens at the plain input price: the prompt less what the cache read or wrote."""
        return max(0, self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens)


@dataclass(frozen=True, slots=True)
class BundleFacts:
    """Where a request sat in the provider call that answered it."""

    bundle_id: str = ""
    index: int = 0
    size: int = 1
    mode: ProcessingMode = ProcessingMode.PER_REQUEST


@dataclass(frozen=True, slots=True)
class BatchJobView:
    """Where the provider batch job a request waits in stands, as a status query shows it.

    `state` is LPS's (`recorded`, `creating`, `submitted`, `collecting`, `ended`), while
    `provider_state` and `provider_counts` are the provider's own words and tallies.
    """

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
class ComparisonResult:
    """What the server knows about a request: its status and, once ended, its outcome."""

    request_id: str
    status: RequestStatus
    correlation_id: str = ""
    judgement: Judgement | None = None
    failure: Failure | None = None
    provider: ProviderName | None = None
    model: str = ""
    token_usage: TokenUsage = field(default_factory=TokenUsage)
    cost_usd: float = 0.0
    response_time_s: float = 0.0
    requested_at: float = 0.0
    completed_at: float = 0.0
    trace_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    bundle: BundleFacts | None = None
    # Only on a status query while the request waits in a provider batch job; never stored.
    batch_job: BatchJobView | None = None
