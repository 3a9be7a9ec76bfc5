"""The server's Prometheus metrics, registered on an injected CollectorRegistry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lps_server.core.domain import CircuitState, ProcessingMode, ProviderName, RequestStatus

BUNDLE_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
EXPIRY_AGE_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Where a bundle found that it had lost a lease: before its provider call, or after it (the
#: provider's answer was dropped).
LEASE_LOST_STAGES = ("before_call", "after_call")
UNREADABLE_REASONS = ("undecodable", "unroutable")
PROCESSOR_LOOPS = ("dispatch", "sweep")
# Queued work can wait as long as its TTL (an hour by default), far past any call's latency.
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class LpsMetrics:
    """Every LPS metric; labels come only from bounded sets (enums, configured models)."""

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
        self.queue_depth = Gauge(
            "llm_provider_queue_depth",
            "Requests in the queue by status",
            ["status"],
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
            "Tokens used by provider calls",
            ["provider", "model", "token_type"],
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
        self.lease_lost = Counter(
            "llm_provider_lease_lost_total",
            "Leased requests another holder took over before this replica stored their result; "
            "stage after_call means the provider's answer was dropped",
            ["provider", "stage"],
            registry=registry,
        )
        self.unreadable_requests = Counter(
            "llm_provider_unreadable_requests_total",
            "Queued requests ended FAILED because their stored payload cannot be decoded "
            "(undecodable) or names a provider unknown to this release (unroutable)",
            ["reason"],
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

    def set_circuit_state(self, provider: ProviderName, state: CircuitState) -> None:
        """Publish a provider's circuit-breaker state."""
        self.circuit_state.labels(provider=provider.value).set(state.gauge_value)

    def set_depth(self, depth: dict[RequestStatus, int]) -> None:
        """Publish the queue depth by status."""
        for status, count in depth.items():
            self.queue_depth.labels(status=status.value).set(count)
