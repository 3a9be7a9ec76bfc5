"""The CJ client's Prometheus metrics, on a registry the caller injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from cj_client.batching import LLMBatchingMode


class CjMetrics:
    """`cj_llm_requests_total` and `cj_llm_batches_started_total`, labelled by batching mode.

    Every mode's series exists at 0 from the start, so the first wave counts in `increase()`.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cj_llm_requests_total",
            "Total CJ LLM requests by batching mode",
            ["batching_mode"],
            registry=registry,
        )
        self.batches_started = Counter(
            "cj_llm_batches_started_total",
            "Total CJ batches started by batching mode",
            ["batching_mode"],
            registry=registry,
        )
        self._started: set[str] = set()
        for mode in LLMBatchingMode:
            self.requests.labels(batching_mode=mode.value)
            self.batches_started.labels(batching_mode=mode.value)

    def requests_submitted(self, mode: LLMBatchingMode, count: int) -> None:
        """Count `count` submitted comparison requests."""
        self.requests.labels(batching_mode=mode.value).inc(count)

    def batch_started(self, cj_batch_id: str, mode: LLMBatchingMode) -> None:
        """Count a logical CJ batch once, however many waves, retries or continuations it has."""
        if cj_batch_id in self._started:
            return
        self._started.add(cj_batch_id)
        self.batches_started.labels(batching_mode=mode.value).inc()
