"""The server's Prometheus metrics, registered on an injected CollectorRegistry."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lps_server.core.domain import CircuitState, ErrorCode, ProcessingMode, ProviderName

# Every size up to the default bundle of 8 is its own bucket, so a histogram of bundle sizes
# shows exactly how full bundles are (with 1, 2, 4, 8 a run of 8s read as a p50 of 6).
BUNDLE_SIZE_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 48, 64)
EXPIRY_AGE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Where a bundle found that it had lost a lease: before its provider call, or after it (the
#: provider's answer was dropped).
LEASE_LOST_STAGES = ("before_call", "after_call")
#: Why leased, admitted requests were not sent to their provider: their `called` mark could not
#: be written (`unmarked`, they go back to the queue), or their leases could not be confirmed
#: before the call (`unconfirmed`, they lapse and are reclaimed). Either way nothing was spent.
WITHHELD_REASONS = ("unmarked", "unconfirmed")
UNREADABLE_REASONS = ("undecodable", "unroutable")
PROCESSOR_LOOPS = ("dispatch", "sweep", "batch")
# Queued work can wait as long as its TTL (an hour by default), far past any call's latency.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

#: Final statuses of processed requests (`llm_provider_requests_total{status}`).
PROCESSED_STATUSES = ("completed", "failed")
#: Where an expired request was found: leasing it (`ttl`) or by the periodic sweep (`cleanup`).
EXPIRY_REASONS = ("ttl", "cleanup")
#: Token kinds of `llm_provider_tokens_used_total{type}`.
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")
#: What a rate budget limits (`llm_provider_rate_limit_budget*{limit}`): core.rates.RATE_KINDS.
BUDGET_LIMITS = ("requests", "tokens", "input_tokens", "output_tokens")
# Waiting for budget lasts from nothing to a whole limit period (a minute) and beyond.
BUDGET_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Why a submitted request was refused (`llm_provider_submissions_rejected_total{reason}`).
REJECTION_REASONS = (
    "invalid_request",
    "rate_limited",
    "queue_full",
    "unavailable",
    "already_exists",
    "unauthenticated",
    "internal",
)


@dataclass(frozen=True, slots=True)
class LabelSpace:
    """The bounded label values one replica can produce, known when it starts.

    Attributes:
        models: each configured provider's model labels (its known models and `other`).
        mode: the replica's processing mode.
        retry_codes: the failure codes that are retried.
        circuits: the current circuit state of every provider that has a circuit breaker.
    """

    models: Mapping[ProviderName, Sequence[str]]
    mode: ProcessingMode
    retry_codes: Iterable[ErrorCode] = ()
    circuits: Mapping[ProviderName, CircuitState] = field(default_factory=dict)


class LpsMetrics:
    """Every LPS metric; labels come only from bounded sets (enums, configured models).

    Queue depth and oldest age are not here: `QueueGauges` reads them when scraped.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.serial_bundle_calls = Counter(
            "llm_provider_serial_bundle_calls_total",
            "Total serial-bundle comparison calls",
            ["provider", "model"],
            registry=registry,
        )
        self.serial_bundle_items = Histogram(
            "llm_provider_serial_bundle_items_per_call",
            "Number of items per serial-bundle call",
            ["provider", "model"],
            buckets=BUNDLE_SIZE_BUCKETS,
            registry=registry,
        )
        self.queue_expiry = Counter(
            "llm_provider_queue_expiry_total",
            "Queued requests that expired before reaching a provider",
            ["provider", "queue_processing_mode", "expiry_reason"],
            registry=registry,
        )
        self.queue_expiry_age = Histogram(
            "llm_provider_queue_expiry_age_seconds",
            "Age of requests when found expired",
            ["provider", "queue_processing_mode"],
            buckets=EXPIRY_AGE_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "llm_provider_queue_wait_time_seconds",
            "Time from enqueue to the end of processing, by outcome",
            ["queue_processing_mode", "result"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "llm_provider_requests_total",
            "Comparison requests processed, by final status",
            ["provider", "model", "status"],
            registry=registry,
        )
        self.response_duration = Histogram(
            "llm_provider_response_duration_seconds",
            "Duration of provider calls",
            ["provider", "model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "llm_provider_tokens_used_total",
            "Tokens used by provider calls, by kind",
            ["provider", "model", "type"],
            registry=registry,
        )
        self.cost = Counter(
            "llm_provider_cost_dollars_total",
            "Estimated provider cost in US dollars",
            ["provider", "model"],
            registry=registry,
        )
        self.provider_retries = Counter(
            "llm_provider_retries_total",
            "Provider attempts retried after a retryable failure",
            ["provider", "model", "error_code"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "llm_provider_circuit_state",
            "Circuit breaker state per provider: 0 closed, 1 half-open, 2 open",
            ["provider"],
            registry=registry,
        )
        self.submissions_rejected = Counter(
            "llm_provider_submissions_rejected_total",
            "Submitted requests refused, unary or inside a stream, by reason",
            ["reason"],
            registry=registry,
        )
        self.lease_lost = Counter(
            "llm_provider_lease_lost_total",
            "Leased requests another holder took over before this replica stored their result; "
            "stage after_call means the provider's answer was dropped",
            ["provider", "stage"],
            registry=registry,
        )
        self.requests_withheld = Counter(
            "llm_provider_requests_withheld_total",
            "Leased requests not sent to their provider because the queue could not record the "
            "call (unmarked) or confirm their leases (unconfirmed); nothing was spent on them",
            ["provider", "reason"],
            registry=registry,
        )
        self.unreadable_requests = Counter(
            "llm_provider_unreadable_requests_total",
            "Queued requests ended FAILED because their stored payload cannot be decoded "
            "(undecodable) or names a provider unknown to this release (unroutable)",
            ["reason"],
            registry=registry,
        )
        self.rate_limited = Counter(
            "llm_provider_rate_limited_total",
            "Provider responses with HTTP 429 (rate limited)",
            ["provider", "model"],
            registry=registry,
        )
        self.budget_wait = Histogram(
            "llm_provider_rate_limit_wait_seconds",
            "Time a bundle waited for rate budget before its call was granted (0: no wait)",
            ["provider", "model"],
            buckets=BUDGET_WAIT_BUCKETS,
            registry=registry,
        )
        self.budget_use = Gauge(
            "llm_provider_rate_limit_budget_use_ratio",
            "Share of the rate budget granted in the current window, per limited kind",
            ["provider", "model", "limit"],
            registry=registry,
        )
        self.budget_limit = Gauge(
            "llm_provider_rate_limit_budget",
            "The rate budget in force per window (configured or announced by the provider; "
            "0: none)",
            ["provider", "model", "limit"],
            registry=registry,
        )
        self.processor_restarts = Counter(
            "llm_provider_processor_restarts_total",
            "Restarts of a processing loop after it failed unexpectedly",
            ["loop"],
            registry=registry,
        )
        # Series that alerts compare against exist from the start, at 0.
        for provider in ProviderName:
            for stage in LEASE_LOST_STAGES:
                self.lease_lost.labels(provider=provider.value, stage=stage)
            for reason in WITHHELD_REASONS:
                self.requests_withheld.labels(provider=provider.value, reason=reason)
        for reason in UNREADABLE_REASONS:
            self.unreadable_requests.labels(reason=reason)
        for loop in PROCESSOR_LOOPS:
            self.processor_restarts.labels(loop=loop)
        self.grpc_requests = Counter(
            "llm_provider_grpc_requests_total",
            "gRPC calls handled, by method and status code",
            ["method", "code"],
            registry=registry,
        )
        self.grpc_latency = Histogram(
            "llm_provider_grpc_request_duration_seconds",
            "gRPC call duration, by method and status code",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        for reason in REJECTION_REASONS:
            self.submissions_rejected.labels(reason=reason)

    def initialise(self, space: LabelSpace) -> None:
        """Create every labelled series of this replica at 0, so that the first event counts.

        A counter that first appears with the value 1 gives `rate()` and `increase()` nothing to
        compare it with: the first burst after a start would be invisible. Bundle metrics exist
        only in `serial_bundle` mode, which alone records them.
        """
        mode = space.mode.value
        for provider, models in space.models.items():
            name = provider.value
            for reason in EXPIRY_REASONS:
                self.queue_expiry.labels(
                    provider=name, queue_processing_mode=mode, expiry_reason=reason
                )
            self.queue_expiry_age.labels(provider=name, queue_processing_mode=mode)
            for model in models:
                labels = {"provider": name, "model": model}
                for status in PROCESSED_STATUSES:
                    self.requests.labels(status=status, **labels)
                for kind in TOKEN_TYPES:
                    self.tokens.labels(type=kind, **labels)
                for code in space.retry_codes:
                    self.provider_retries.labels(error_code=code.value, **labels)
                self.response_duration.labels(**labels)
                self.cost.labels(**labels)
                self.rate_limited.labels(**labels)
                self.budget_wait.labels(**labels)
                for limit in BUDGET_LIMITS:
                    self.budget_use.labels(limit=limit, **labels)
                    self.budget_limit.labels(limit=limit, **labels)
                if space.mode == ProcessingMode.SERIAL_BUNDLE:
                    self.serial_bundle_calls.labels(**labels)
                    self.serial_bundle_items.labels(**labels)
        for status in PROCESSED_STATUSES:
            self.queue_wait.labels(queue_processing_mode=mode, result=status)
        for provider, state in space.circuits.items():
            self.set_circuit_state(provider, state)

    def initialise_grpc(self, methods: Iterable[str], codes: Iterable[str]) -> None:
        """Create the call counters of every method and code, and each method's OK latency, at 0."""
        codes = list(codes)
        for method in methods:
            for code in codes:
                self.grpc_requests.labels(method=method, code=code)
            self.grpc_latency.labels(method=method, code="OK")

    def record_bundle_call(self, *, provider: str, model: str, size: int) -> None:
        """Count one successful serial-bundle provider call of `size` items."""
        self.serial_bundle_calls.labels(provider=provider, model=model).inc()
        self.serial_bundle_items.labels(provider=provider, model=model).observe(size)

    def record_expiry(
        self, *, provider: str, mode: ProcessingMode, reason: str, age_s: float
    ) -> None:
        """Count one request that expired (`reason`: ttl at dequeue, cleanup by the sweep)."""
        self.queue_expiry.labels(
            provider=provider, queue_processing_mode=mode.value, expiry_reason=reason
        ).inc()
        self.queue_expiry_age.labels(provider=provider, queue_processing_mode=mode.value).observe(
            age_s
        )

    def record_tokens(
        self,
        labels: Mapping[str, str],
        *,
        input: int,
        output: int,
        cache_read: int = 0,
        cache_write: int = 0,
    ) -> None:
        """Count tokens by kind for one provider and model (`labels`)."""
        for kind, count in (
            ("input", input),
            ("output", output),
            ("cache_read", cache_read),
            ("cache_write", cache_write),
        ):
            if count:
                self.tokens.labels(type=kind, **labels).inc(count)

    def record_budget(
        self, labels: Mapping[str, str], *, used: Sequence[int], limits: Sequence[int]
    ) -> None:
        """Publish a rate budget's window: the budget per kind and the share of it granted."""
        for kind, count, limit in zip(BUDGET_LIMITS, used, limits, strict=True):
            self.budget_limit.labels(limit=kind, **labels).set(limit)
            self.budget_use.labels(limit=kind, **labels).set(count / limit if limit else 0.0)

    def record_rejection(self, reason: str) -> None:
        """Count one refused submission (`reason` from REJECTION_REASONS)."""
        self.submissions_rejected.labels(reason=reason).inc()

    def set_circuit_state(self, provider: ProviderName, state: CircuitState) -> None:
        """Publish a provider's circuit-breaker state."""
        self.circuit_state.labels(provider=provider.value).set(state.gauge_value)
