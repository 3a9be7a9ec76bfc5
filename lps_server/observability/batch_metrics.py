"""The metrics of provider batch jobs, registered on the server's registry beside `LpsMetrics`.

Labels come from bounded sets: the provider, LPS's job states and the batch outcomes. Every series
a replica can produce exists at 0 from its start.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from lps_server.core.domain import ProcessingMode, ProviderName
from lps_server.observability.metrics import EXPIRY_REASONS, PROCESSED_STATUSES, LpsMetrics

#: LPS's states of an open job (`llm_provider_batch_jobs{state}`).
JOB_STATES = ("recorded", "creating", "submitted", "collecting")
#: How a job ended (`llm_provider_batch_jobs_ended_total{outcome}`): as the provider's batch
#: ended, or `failed` also when it could not be created.
JOB_OUTCOMES = ("completed", "failed", "expired", "cancelled")
# A job holds up to 50,000 requests.
PER_JOB_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000)
# Batches end within 24 h; most take minutes to hours.
RESULT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)


class BatchMetrics:
    """Batch-job metrics; `jobs` is set from the shared job store (every replica reads the same
    figures with Redis: aggregate with `max`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.jobs = Gauge(
            "llm_provider_batch_jobs",
            "Open provider batch jobs by state (read from the queue backend, shared by replicas)",
            ["provider", "state"],
            registry=registry,
        )
        self.jobs_ended = Counter(
            "llm_provider_batch_jobs_ended_total",
            "Provider batch jobs ended, by outcome",
            ["provider", "outcome"],
            registry=registry,
        )
        self.lines_per_job = Histogram(
            "llm_provider_batch_lines_per_job",
            "Lines (provider requests) in each batch job submitted",
            ["provider"],
            buckets=PER_JOB_BUCKETS,
            registry=registry,
        )
        self.items_per_job = Histogram(
            "llm_provider_batch_items_per_job",
            "Comparison requests in each batch job submitted",
            ["provider"],
            buckets=PER_JOB_BUCKETS,
            registry=registry,
        )
        self.result_seconds = Histogram(
            "llm_provider_batch_result_seconds",
            "Time from a batch job's submission to its results being stored",
            ["provider"],
            buckets=RESULT_BUCKETS,
            registry=registry,
        )
        self.polls = Counter(
            "llm_provider_batch_polls_total",
            "Status requests this replica made to providers' batch APIs",
            ["provider"],
            registry=registry,
        )
        self._providers: list[str] = []

    def initialise(
        self, providers: Iterable[ProviderName], *, lps: LpsMetrics, also_per_request: bool
    ) -> None:
        """Create every series of the batch providers at 0, and the `batch_api` series of the
        request metrics labelled by processing mode (expiry, queue wait), which the replica's
        own mode did not create; with `also_per_request` (a `batch_api` replica, which serves
        requests that cannot wait for a batch one per call) the `per_request` ones too."""
        mode = ProcessingMode.BATCH_API.value
        self._providers = [p.value for p in providers]
        for provider in providers:
            name = provider.value
            for state in JOB_STATES:
                self.jobs.labels(provider=name, state=state).set(0)
            for outcome in JOB_OUTCOMES:
                self.jobs_ended.labels(provider=name, outcome=outcome)
            self.lines_per_job.labels(provider=name)
            self.items_per_job.labels(provider=name)
            self.result_seconds.labels(provider=name)
            self.polls.labels(provider=name)
            for reason in EXPIRY_REASONS:
                lps.queue_expiry.labels(
                    provider=name, queue_processing_mode=mode, expiry_reason=reason
                )
            lps.queue_expiry_age.labels(provider=name, queue_processing_mode=mode)
        modes = [mode, ProcessingMode.PER_REQUEST.value] if also_per_request else [mode]
        for status in PROCESSED_STATUSES:
            for label in modes:
                lps.queue_wait.labels(queue_processing_mode=label, result=status)

    def set_jobs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Publish the open jobs by state (from `BatchJobStore.counts`), of the providers this
        replica uses and of any other a job in the store names."""
        names = dict.fromkeys([*self._providers, *(p for p, _ in counts)])
        for name in names:
            for state in JOB_STATES:
                value = counts.get((name, state), 0)
                self.jobs.labels(provider=name, state=state).set(max(0, value))

    def submitted(self, provider: ProviderName, *, lines: int, items: int) -> None:
        """Count one job the provider accepted."""
        self.lines_per_job.labels(provider=provider.value).observe(lines)
        self.items_per_job.labels(provider=provider.value).observe(items)

    def ended(self, provider: ProviderName, outcome: str, *, result_s: float | None) -> None:
        """Count one job ended (`result_s`: seconds from submission, when it was submitted)."""
        self.jobs_ended.labels(provider=provider.value, outcome=outcome).inc()
        if result_s is not None:
            self.result_seconds.labels(provider=provider.value).observe(max(0.0, result_s))
